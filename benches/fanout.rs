//! Micro-benchmarks of broadcast fan-out: encoding a message once for all
//! recipients (`SharedMessage::encode`) and what is done per recipient.
//!
//! The per-recipient step lives in private code of
//! `transport::websocket` (the writer's `Pending` buffer), reproduced inline
//! here: each broadcast entry's parts (the subscription's prefix, the
//! optional `ack` line, the shared tail) are copied into the connection's
//! coalescing buffer, and each batch of joined frames becomes one WebSocket
//! message after one UTF-8 check. `join` is the per-recipient copy,
//! `message_of_1` a batch of one frame (the whole cost when a client gets one
//! message at a time), `message_of_16` sixteen frames (per batch: divide by
//! 16 for the cost per frame).
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

/// As the writer's `COALESCE_BYTES`: a batch becomes a message at this size.
const COALESCE_BYTES: usize = 64 * 1024;

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

/// The writer's coalescing buffer (inline copy of the private `Pending`).
#[derive(Default)]
struct Pending {
    buf: BytesMut,
    binary: bool,
}

impl Pending {
    /// Copies one broadcast entry in: prefix, optional ack line, tail.
    fn add(
        &mut self,
        prefix: &Bytes,
        ack_header: bool,
        escaping: Escaping,
        m: &SharedMessage,
    ) -> Option<WsMessage> {
        let ack: &[u8] = if ack_header { &m.ack_line } else { &[] };
        let parts = [&prefix[..], ack, &m.tail(escaping)[..]];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let flushed = if !self.buf.is_empty() && self.buf.len() + len > COALESCE_BYTES {
            self.take()
        } else {
            None
        };
        if self.buf.is_empty() {
            self.buf.reserve(len.max(256));
        }
        for part in parts {
            self.buf.put_slice(part);
        }
        self.binary |= m.binary;
        flushed
    }

    /// The joined frames as one WebSocket message.
    fn take(&mut self) -> Option<WsMessage> {
        if self.buf.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.buf).freeze();
        let binary = std::mem::take(&mut self.binary);
        Some(if binary {
            WsMessage::Binary(bytes)
        } else {
            match Utf8Bytes::try_from(bytes.clone()) {
                Ok(text) => WsMessage::Text(text),
                Err(_) => WsMessage::Binary(bytes),
            }
        })
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
        // The copy into a buffer that is already there (mid-batch).
        group.bench_with_input(BenchmarkId::new("join", size), &message, |b, m| {
            let mut pending = Pending::default();
            b.iter(|| {
                if pending.buf.len() > COALESCE_BYTES / 2 {
                    pending.buf.clear();
                }
                black_box(pending.add(&prefix, false, Escaping::V12, m))
            })
        });
        group.bench_with_input(BenchmarkId::new("join_ack", size), &message, |b, m| {
            let mut pending = Pending::default();
            b.iter(|| {
                if pending.buf.len() > COALESCE_BYTES / 2 {
                    pending.buf.clear();
                }
                black_box(pending.add(&prefix, true, Escaping::V12, m))
            })
        });
        group.bench_with_input(BenchmarkId::new("message_of_1", size), &message, |b, m| {
            let mut pending = Pending::default();
            b.iter(|| {
                let _ = pending.add(&prefix, false, Escaping::V12, m);
                black_box(pending.take())
            })
        });
        group.bench_with_input(BenchmarkId::new("message_of_16", size), &message, |b, m| {
            let mut pending = Pending::default();
            b.iter(|| {
                for _ in 0..16 {
                    if let Some(full) = pending.add(&prefix, false, Escaping::V12, m) {
                        black_box(full);
                    }
                }
                black_box(pending.take())
            })
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
