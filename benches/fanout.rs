//! Micro-benchmarks of broadcast fan-out: encoding a message once for all
//! recipients (`SharedMessage::encode`) and what is done per recipient.
//!
//! The per-recipient step is the WebSocket writer's framing: queued
//! broadcast entries ([`Outbound::Broadcast`]) joined into one WebSocket
//! message (`wire::frame_into`: the frame header, then each entry's parts
//! copied after it). `message_of_1` is a batch of one frame (the whole cost
//! when a client gets one message at a time), `message_of_16` sixteen
//! frames (per batch: divide by 16 for the cost per frame); both include
//! queueing the entries (the reference counts of the shared parts).
//!
//! `cargo bench --bench fanout`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stompgate::bridge::fanout::Delivery;
use stompgate::stomp::message::{message_prefix, SharedMessage};
use stompgate::stomp::Escaping;
use stompgate::transport::outbound::Outbound;
use stompgate::transport::websocket::wire::{frame_into, Shared};

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
        group.throughput(Throughput::Elements(1));
        for (name, frames, ack) in [
            ("message_of_1", 1, false),
            ("message_of_16", 16, false),
            ("message_of_16_ack", 16, true),
        ] {
            group.bench_with_input(BenchmarkId::new(name, size), &frames, |b, &frames| {
                let shared = Shared::new();
                let mut batch = VecDeque::new();
                let mut out = BytesMut::new();
                b.iter(|| {
                    for _ in 0..frames {
                        batch.push_back(entry(&message, &prefix, ack));
                    }
                    out.clear();
                    frame_into(&mut batch, &mut out, &shared);
                    black_box(out.len())
                })
            });
        }
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
