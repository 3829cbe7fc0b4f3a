//! Micro-benchmarks of broadcast fan-out: encoding a message once for all
//! recipients (`SharedMessage::encode`) and what is done per recipient.
//!
//! The per-recipient step is the body of the private
//! `transport::websocket::to_ws`, reproduced inline here: join the
//! subscription's prefix, the optional `ack` line and the shared tail into one
//! buffer, then check it is UTF-8 to send it as a text WebSocket message.
//!
//! `cargo bench --bench fanout`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stompgate::bridge::fanout::SharedMessage;
use stompgate::stomp::{encode_header, Escaping};

fn headers() -> Vec<(String, String)> {
    [
        ("destination", "/topic/merchant.42.orders"),
        ("content-type", "application/json"),
        ("redelivered", "false"),
        ("correlation-id", "c-6f1e2d"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .collect()
}

/// `MESSAGE\nsubscription:<id>\n`, as `fanout::Subscriber::new` builds it.
fn prefix(id: &str) -> Bytes {
    let mut prefix = BytesMut::with_capacity(24 + id.len());
    prefix.put_slice(b"MESSAGE\n");
    encode_header("subscription", id, Escaping::V12, &mut prefix);
    prefix.freeze()
}

/// What `to_ws` does for a broadcast entry (inline: it is private).
fn assemble(
    prefix: &Bytes,
    ack_header: bool,
    escaping: Escaping,
    message: &SharedMessage,
) -> Bytes {
    let tail = message.tail(escaping);
    let ack_len = if ack_header {
        message.ack_line.len()
    } else {
        0
    };
    let mut buf = BytesMut::with_capacity(prefix.len() + ack_len + tail.len());
    buf.put_slice(prefix);
    if ack_header {
        buf.put_slice(&message.ack_line);
    }
    buf.put_slice(tail);
    buf.freeze()
}

fn to_ws(
    prefix: &Bytes,
    ack_header: bool,
    escaping: Escaping,
    message: &SharedMessage,
) -> WsMessage {
    let bytes = assemble(prefix, ack_header, escaping, message);
    if message.binary {
        return WsMessage::Binary(bytes);
    }
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => WsMessage::Text(text),
        Err(_) => WsMessage::Binary(bytes),
    }
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("shared_message_encode");
    let headers = headers();
    for size in [100usize, 4096] {
        let body = Bytes::from(vec![b'x'; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            let mut seq = 0u64;
            b.iter(|| {
                seq += 1;
                black_box(SharedMessage::encode(seq, black_box(&headers), body))
            })
        });
    }
    group.finish();
}

fn bench_per_recipient(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_recipient");
    let headers = headers();
    let prefix = prefix("sub-0");
    for size in [100usize, 4096] {
        let message = Arc::new(SharedMessage::encode(
            7,
            &headers,
            &Bytes::from(vec![b'x'; size]),
        ));
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("assemble", size), &message, |b, m| {
            b.iter(|| black_box(assemble(&prefix, false, Escaping::V12, m)))
        });
        group.bench_with_input(BenchmarkId::new("assemble_ack", size), &message, |b, m| {
            b.iter(|| black_box(assemble(&prefix, true, Escaping::V12, m)))
        });
        group.bench_with_input(BenchmarkId::new("to_ws", size), &message, |b, m| {
            b.iter(|| black_box(to_ws(&prefix, false, Escaping::V12, m)))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_encode, bench_per_recipient
}
criterion_main!(benches);
