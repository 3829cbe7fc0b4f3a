//! Micro-benchmarks of broadcast fan-out: encoding a message once for all
//! recipients (`SharedMessage::encode`) and what is done per recipient.
//!
//! The per-recipient step is the real writer path: each broadcast entry
//! ([`Outbound::Broadcast`]) goes through the transport's [`Coalescer`]
//! (its parts copied into the connection's buffer), and each batch of joined
//! frames becomes one WebSocket message ([`websocket::chunk_message`], one
//! UTF-8 check). `join` is the per-recipient copy, `message_of_1` a batch of
//! one frame (the whole cost when a client gets one message at a time),
//! `message_of_16` sixteen frames (per batch: divide by 16 for the cost per
//! frame).
//!
//! `cargo bench --bench fanout`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stompgate::bridge::fanout::Delivery;
use stompgate::stomp::message::{message_prefix, SharedMessage};
use stompgate::stomp::Escaping;
use stompgate::transport::coalesce::{Coalescer, COALESCE_BYTES};
use stompgate::transport::outbound::Outbound;
use stompgate::transport::websocket::chunk_message;

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

fn entry(message: &Arc<SharedMessage>, prefix: &Bytes, ack_header: bool) -> Outbound {
    Outbound::Broadcast(Delivery {
        prefix: prefix.clone(),
        ack_header,
        escaping: Escaping::V12,
        message: Arc::clone(message),
    })
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
                black_box(stompgate::bridge::fanout::encode(
                    seq,
                    black_box(&headers),
                    body,
                ))
            })
        });
    }
    group.finish();
}

fn bench_per_recipient(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_recipient");
    let headers = headers();
    let prefix = message_prefix("sub-0", Escaping::V12);
    for size in [100usize, 4096] {
        let message = Arc::new(stompgate::bridge::fanout::encode(
            7,
            &headers,
            &Bytes::from(vec![b'x'; size]),
        ));
        let plain = entry(&message, &prefix, false);
        let acked = entry(&message, &prefix, true);
        group.throughput(Throughput::Elements(1));
        // The copy into a buffer that is already there (mid-batch).
        for (name, item) in [("join", &plain), ("join_ack", &acked)] {
            group.bench_with_input(BenchmarkId::new(name, size), item, |b, item| {
                let mut coalescer = Coalescer::default();
                let mut joined = 0usize;
                b.iter(|| {
                    if joined > COALESCE_BYTES / 2 {
                        black_box(coalescer.take());
                        joined = 0;
                    }
                    joined += size;
                    black_box(coalescer.add(item))
                })
            });
        }
        group.bench_with_input(BenchmarkId::new("message_of_1", size), &plain, |b, item| {
            let mut coalescer = Coalescer::default();
            b.iter(|| {
                let _ = coalescer.add(item);
                black_box(coalescer.take().map(chunk_message))
            })
        });
        group.bench_with_input(
            BenchmarkId::new("message_of_16", size),
            &plain,
            |b, item| {
                let mut coalescer = Coalescer::default();
                b.iter(|| {
                    for _ in 0..16 {
                        if let Some(full) = coalescer.add(item) {
                            black_box(chunk_message(full));
                        }
                    }
                    black_box(coalescer.take().map(chunk_message))
                })
            },
        );
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
