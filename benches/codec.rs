//! Micro-benchmarks of the STOMP codec: decoding the frames a gateway reads
//! most (a typical SEND, a CONNECT, a 4 KiB body) and encoding a MESSAGE.
//!
//! `cargo bench --bench codec`

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stompgate::stomp::{encode_frame, Command, Escaping, Frame, FrameLimits, Inbound, StompCodec};
use tokio_util::codec::Decoder;

fn send_frame(body_len: usize) -> Vec<u8> {
    let body = vec![b'x'; body_len];
    let mut out = format!(
        "SEND\ndestination:/topic/merchant.42.orders\ncontent-type:application/json\nreceipt:r-1234\ncontent-length:{body_len}\n\n"
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out.push(0);
    out
}

const CONNECT: &[u8] =
    b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:10000,10000\n\n\0";

/// Decodes `wire` once with a fresh codec, as a session does per frame.
fn decode(codec: &mut StompCodec, wire: &[u8]) -> Frame {
    let mut buf = BytesMut::from(wire);
    match codec.decode(&mut buf) {
        Ok(Some(Inbound::Frame(f))) => f,
        other => panic!("not a frame: {other:?}"),
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let cases: [(&str, Vec<u8>); 3] = [
        ("send_100b_4_headers", send_frame(100)),
        ("connect", CONNECT.to_vec()),
        ("send_4kib_body", send_frame(4096)),
    ];
    for (name, wire) in &cases {
        group.throughput(Throughput::Bytes(wire.len() as u64));
        let mut codec = StompCodec::new(FrameLimits::default());
        // The frame must decode before it is measured.
        let _ = decode(&mut codec, wire);
        group.bench_function(*name, |b| {
            b.iter(|| black_box(decode(&mut codec, black_box(wire))))
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let message = Frame::new(Command::Message)
        .with_header("subscription", "sub-0")
        .with_header("message-id", "T_sub-0@@1234")
        .with_header("destination", "/topic/merchant.42.orders")
        .with_header("content-type", "application/json")
        .with_header("redelivered", "false")
        .with_header("correlation-id", "c-6f1e2d")
        .with_header("app-id", "orders")
        .with_header("x-tenant", "merchant:42")
        .with_body(vec![b'x'; 100]);
    let mut buf = BytesMut::with_capacity(512);
    group.bench_function("message_8_headers_100b", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(black_box(&message), Escaping::V12, &mut buf);
            black_box(buf.len())
        })
    });
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
    targets = bench_decode, bench_encode
}
criterion_main!(benches);
