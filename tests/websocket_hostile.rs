//! Hostile clients on the WebSocket endpoint (`/ws`): what a client that
//! does not play by the rules can make the gateway do, each case bounded in
//! time and able to fail.
//!
//! 1. A ping flood from a client that never reads: the pongs cannot be
//!    written, the client's queue must stay within its byte bound, and the
//!    connection must end (queue overflow, or the write timeout), under both
//!    slow-client policies.
//! 2. A subscriber that never reads while a backend publishes a lot to its
//!    topic: it is cut off (or its messages dropped and then it is closed),
//!    while a reading subscriber of the same topic gets every message, in
//!    order.
//! 3. A frame header announcing a payload of 2^40 bytes: refused at once
//!    with close code 1009, without waiting for (or buffering) the payload.
//! 4. A message in 1-byte fragments up to the size limit (processed) and
//!    one byte over it (1009); a flood of empty continuation frames of an
//!    unfinished message, during which other clients still get in.
//!
//! Slowloris on the upgrade request (an unfinished request head) is covered
//! by tests/security.rs (`handshake_timeout_closes_slow_clients`).
//!
//! The client is the raw one of tests/common/raw_ws.rs: hand-built frames
//! on a plain TCP socket, so that the test controls exactly what is sent
//! and what is (not) read. The tests run one at a time ([`SERIAL`]): they
//! read `stompgate_outbound_queued_bytes`, which every gateway of this
//! process shares, and they load the machine.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (scripts/ensure-rabbitmq.sh).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::raw_ws as wire;
use common::*;
use stompgate::config::SlowClientPolicy;
use stompgate::stomp::Command;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use wire::{expect_all, expect_one, ClientFrame, Conn, End, Read, Upgrade, WAIT};

/// One test at a time (see the module doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The smallest STOMP 1.2 CONNECT (no heart-beats, no credentials).
const CONNECT: &[u8] = b"CONNECT\naccept-version:1.2\nhost:/\n\n\0";

const QUEUED_BYTES: &str = "stompgate_outbound_queued_bytes";
const DROPPED: &str = "stompgate_slow_client_total{action=\"drop\"}";
const DISCONNECTED: &str = "stompgate_slow_client_total{action=\"disconnect\"}";
const STALLED: &str = "stompgate_slow_client_total{action=\"stalled\"}";

/// What the queued-bytes gauge may show beyond `limits.outbound_queue_bytes`
/// for one client (one write's worth of spill, 64 KiB and a header, and
/// change).
const SPILL_SLACK: f64 = 70.0 * 1024.0;

// ---- helpers ----------------------------------------------------------------

/// An upgraded WebSocket on `/ws` (`v12.stomp`), over a socket whose
/// receive buffer is `rcvbuf` bytes when given (a small one makes a client
/// that stops reading stall the gateway's writes at once).
async fn open(gw: &TestGateway, rcvbuf: Option<u32>) -> Conn {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let stream = tokio::time::timeout(WAIT, socket.connect(gw.addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    let mut conn = Conn::from_stream(stream);
    let upgrade = Upgrade::new("/ws").protocols("v12.stomp");
    conn.write(&upgrade.to_bytes(gw.addr)).await;
    let head = conn.read_http_head().await;
    assert_eq!(head.status, 101, "upgrade refused: {head:?}");
    conn
}

/// As [`open`], with a STOMP 1.2 session.
async fn connected(gw: &TestGateway, rcvbuf: Option<u32>) -> Conn {
    let mut conn = open(gw, rcvbuf).await;
    conn.send(&ClientFrame::text(CONNECT)).await;
    expect_one(&mut conn, Command::Connected).await;
    conn
}

/// SUBSCRIBE `id` to `/topic/<topic>` with a receipt, which must come.
async fn subscribe(conn: &mut Conn, id: &str, topic: &str) {
    conn.send(&ClientFrame::text(format!(
        "SUBSCRIBE\nid:{id}\ndestination:/topic/{topic}\nreceipt:sub-{id}\n\n\0"
    )))
    .await;
    let receipt = expect_one(conn, Command::Receipt).await;
    assert_eq!(
        receipt.header("receipt-id").as_deref(),
        Some(format!("sub-{id}").as_str())
    );
}

/// Reads (and drops) whatever comes until the server ends the TCP
/// connection, or `deadline`: how it ended, `None` if it did not.
async fn read_to_end(stream: &mut TcpStream, deadline: Instant) -> Option<End> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) => return Some(End::Eof),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Some(End::Reset),
        }
    }
}

/// Waits (at most `within`) until the gateway holds `n` connections; how
/// many it holds then.
async fn connections_down_to(gw: &TestGateway, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    while gw.gateway.connections() > n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.gateway.connections()
}

/// Waits (at most `within`) until the queued-bytes gauge is back to
/// `value`; what it shows then.
async fn queued_back_to(gw: &TestGateway, value: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let now = metric(gw.addr, QUEUED_BYTES).await;
        if (now - value).abs() < 0.5 || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples the queued-bytes gauge every 20 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl Sampler {
    fn start(addr: std::net::SocketAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    samples.push(metric(addr, QUEUED_BYTES).await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                samples
            }
        });
        Sampler { stop, task }
    }

    /// The samples taken.
    async fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler")
    }
}

/// The largest of `samples` (0 for none).
fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(0.0, f64::max)
}

// ---- 1. ping flood from a client that never reads -----------------------------

/// How a flood ended.
#[derive(Debug)]
struct Flood {
    /// Frames written completely.
    frames: usize,
    /// When (since the flood began) and how a write failed: the server
    /// ended the connection.
    failed: Option<(Duration, std::io::ErrorKind)>,
}

/// Writes `batch` (`per_batch` frames) over and over without waiting for
/// the socket (a writable socket is written at once; a full one is waited
/// for 50 ms at most) and without reading anything, until `max_frames`
/// frames are out; then one `trickle` frame every 50 ms, which notices the
/// connection's end without reading. Stops at `until` or when a write
/// fails.
async fn flood(
    stream: &TcpStream,
    batch: &[u8],
    per_batch: usize,
    max_frames: usize,
    trickle: &[u8],
    until: Instant,
) -> Flood {
    let began = Instant::now();
    let mut frames = 0;
    let (mut current, mut count): (&[u8], usize) = (batch, per_batch);
    let mut at = 0;
    while Instant::now() < until {
        match stream.try_write(&current[at..]) {
            Ok(n) => {
                at += n;
                if at == current.len() {
                    frames += count;
                    at = 0;
                    if frames >= max_frames {
                        (current, count) = (trickle, 1);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = tokio::time::timeout(Duration::from_millis(50), stream.writable()).await;
            }
            Err(e) => {
                return Flood {
                    frames,
                    failed: Some((began.elapsed(), e.kind())),
                }
            }
        }
    }
    Flood {
        frames,
        failed: None,
    }
}

/// A gateway whose outbound queue holds `queue_bytes`, with `policy` for
/// broadcasts that do not fit and a `write_timeout_ms` write timeout (no
/// keep-alive pings of its own).
async fn slow_client_gateway(
    queue_bytes: usize,
    write_timeout_ms: u64,
    policy: SlowClientPolicy,
) -> TestGateway {
    start_gateway(|c| {
        c.limits.write_timeout_ms = write_timeout_ms;
        c.limits.outbound_queue_bytes = queue_bytes;
        c.limits.outbound_queue_frames = 1_000_000;
        c.limits.slow_client_policy = policy;
        c.security.ws_ping_interval_ms = 0;
    })
    .await
}

/// A client floods pings (125-byte payloads, so 127-byte pongs) and reads
/// nothing, with `policy`: the pongs fill its socket and then its queue
/// (the byte bound is the one that binds here), and the connection must
/// end (TCP reset or closed) within a bound. The queued-bytes gauge stays
/// within the queue's bound while it lasts and is back where it was after.
async fn ping_flood_is_cut_off(policy: SlowClientPolicy) {
    let _serial = SERIAL.lock().await;
    const QUEUE_BYTES: usize = 256 * 1024;
    const WRITE_TIMEOUT_MS: u64 = 1000;
    const MAX_PINGS: usize = 200_000;
    let gw = slow_client_gateway(QUEUE_BYTES, WRITE_TIMEOUT_MS, policy).await;
    let queued_before = metric(gw.addr, QUEUED_BYTES).await;
    let dropped_before = metric(gw.addr, DROPPED).await;
    let disconnected_before = metric(gw.addr, DISCONNECTED).await;
    let stalled_before = metric(gw.addr, STALLED).await;

    let mut conn = connected(&gw, Some(4096)).await;
    assert_eq!(gw.gateway.connections(), 1);
    let sampler = Sampler::start(gw.addr);
    const PER_BATCH: usize = 500;
    let ping = ClientFrame::ping(vec![b'p'; 125]);
    let batch = wire::concat(&vec![ping; PER_BATCH]);
    let trickle = ClientFrame::ping(&b"t"[..]).encode();
    // The bound: the write timeout after the socket is full (which is at
    // once), and room for a loaded machine.
    let bound = Duration::from_millis(WRITE_TIMEOUT_MS) + Duration::from_secs(4);
    let flooded = flood(
        &conn.stream,
        &batch,
        PER_BATCH,
        MAX_PINGS,
        &trickle,
        Instant::now() + bound,
    )
    .await;
    let samples = sampler.finish().await;
    let end = match flooded.failed {
        Some(_) => None,
        // Not noticed by writing: does a read see the end?
        None => read_to_end(&mut conn.stream, Instant::now() + Duration::from_secs(3)).await,
    };
    let left = connections_down_to(&gw, 0, Duration::from_secs(3)).await;
    let queued_after = queued_back_to(&gw, queued_before, Duration::from_secs(3)).await;
    let dropped = metric(gw.addr, DROPPED).await - dropped_before;
    let disconnected = metric(gw.addr, DISCONNECTED).await - disconnected_before;
    let stalled = metric(gw.addr, STALLED).await - stalled_before;
    eprintln!(
        "ping flood ({policy:?}): {flooded:?}; end seen by reading afterwards: {end:?}; \
         gateway connections left {left}; queued-bytes gauge: {} samples, max {} over {queued_before} \
         (bound {QUEUE_BYTES} + {SPILL_SLACK}), after {queued_after}; slow-client counters: \
         drop +{dropped}, disconnect +{disconnected}, stalled +{stalled}",
        samples.len(),
        max(&samples) - queued_before,
    );

    let (took, _) = flooded.failed.unwrap_or_else(|| {
        panic!(
            "the flooding connection was not ended within {bound:?} \
             ({} pings written; a read afterwards saw {end:?})",
            flooded.frames
        )
    });
    assert!(took <= bound, "ended after {took:?}");
    assert_eq!(left, 0, "the gateway still holds the connection");
    // (`disconnect` may end it within a few samples.)
    assert!(!samples.is_empty(), "no gauge sample while flooding");
    assert!(
        max(&samples) - queued_before <= QUEUE_BYTES as f64 + SPILL_SLACK,
        "queued bytes beyond the bound: {samples:?} (before: {queued_before})"
    );
    assert!(
        (queued_after - queued_before).abs() < 0.5,
        "queued-bytes gauge {queued_after} after the connection ended, {queued_before} before"
    );
    match policy {
        SlowClientPolicy::Disconnect => assert!(
            disconnected + stalled >= 1.0,
            "the session did not end as a slow client"
        ),
        SlowClientPolicy::Drop => {
            assert!(dropped >= 1.0, "no pong counted as dropped");
            assert!(
                stalled >= 1.0,
                "the session did not end by the write timeout"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_of_a_client_that_never_reads_ends_it_disconnect_policy() {
    ping_flood_is_cut_off(SlowClientPolicy::Disconnect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_of_a_client_that_never_reads_ends_it_drop_policy() {
    ping_flood_is_cut_off(SlowClientPolicy::Drop).await;
}

// ---- 2. a subscriber that never reads next to one that does ---------------------

/// A message body of 1 KiB starting with its sequence number.
fn numbered_body(i: usize) -> Vec<u8> {
    let mut body = format!("{i:08}:").into_bytes();
    body.resize(1024, b'x');
    body
}

/// A subscriber that stops reading and one that reads, on one topic, while
/// a backend publishes `COUNT` 1-KiB messages to it over AMQP: the reader
/// gets every message in order, the other one is cut off (`disconnect`) or
/// has messages dropped and is closed by the write timeout (`drop`), and
/// the queued-bytes gauge stays bounded.
async fn slow_subscriber_does_not_hold_back_a_fast_one(policy: SlowClientPolicy) {
    let _serial = SERIAL.lock().await;
    const QUEUE_BYTES: usize = 2 * 1024 * 1024;
    const WRITE_TIMEOUT_MS: u64 = 2000;
    const COUNT: usize = 20_000;
    let gw = slow_client_gateway(QUEUE_BYTES, WRITE_TIMEOUT_MS, policy).await;
    let topic = unique("hostile-slow");
    let queued_before = metric(gw.addr, QUEUED_BYTES).await;
    let dropped_before = metric(gw.addr, DROPPED).await;
    let disconnected_before = metric(gw.addr, DISCONNECTED).await;
    let stalled_before = metric(gw.addr, STALLED).await;

    let mut slow = connected(&gw, Some(4096)).await;
    subscribe(&mut slow, "slow", &topic).await;
    let mut fast = connected(&gw, None).await;
    subscribe(&mut fast, "fast", &topic).await;
    // From here on `slow` reads nothing.

    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut next = 0usize;
        while next < COUNT {
            for frame in fast.stomp().await {
                assert_eq!(frame.command, Command::Message, "{frame:?}");
                let seq: usize = std::str::from_utf8(&frame.body[..8])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("body without a number: {frame:?}"));
                assert_eq!(
                    seq, next,
                    "the reading subscriber lost or reordered messages"
                );
                assert_eq!(frame.body.len(), 1024);
                next += 1;
            }
        }
        (fast, started.elapsed())
    });
    let sampler = Sampler::start(gw.addr);
    let amqp = amqp().await;
    let ch = confirm_channel(&amqp).await;
    let mut confirms = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        let confirm = ch
            .basic_publish(
                "amq.topic".into(),
                topic.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &numbered_body(i),
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.await.expect("confirm");
    }
    let published = started.elapsed();
    let (mut fast, all_read) = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .expect("the reading subscriber did not get every message within 15 s")
        .expect("reader");
    // The slow one: ended within the write timeout (and some room).
    let left = connections_down_to(
        &gw,
        1,
        Duration::from_millis(WRITE_TIMEOUT_MS) + Duration::from_secs(5),
    )
    .await;
    let samples = sampler.finish().await;
    let slow_end = read_to_end(&mut slow.stream, Instant::now() + Duration::from_secs(5)).await;
    let dropped = metric(gw.addr, DROPPED).await - dropped_before;
    let disconnected = metric(gw.addr, DISCONNECTED).await - disconnected_before;
    let stalled = metric(gw.addr, STALLED).await - stalled_before;
    eprintln!(
        "slow subscriber ({policy:?}): {COUNT} x 1 KiB published in {published:?}, all read by the \
         fast one after {all_read:?}; connections left {left}; slow one's end {slow_end:?}; \
         queued-bytes gauge: {} samples, max {} over {queued_before} (one queue's bound \
         {QUEUE_BYTES} + {SPILL_SLACK}); slow-client counters: drop +{dropped}, \
         disconnect +{disconnected}, stalled +{stalled}",
        samples.len(),
        max(&samples) - queued_before,
    );
    assert_eq!(left, 1, "the subscriber that never reads was not cut off");
    assert!(
        slow_end.is_some(),
        "the slow subscriber's TCP connection was not closed"
    );
    assert!(
        max(&samples) - queued_before <= QUEUE_BYTES as f64 + SPILL_SLACK,
        "queued bytes beyond the bound: {samples:?} (before: {queued_before})"
    );
    match policy {
        SlowClientPolicy::Disconnect => assert!(
            disconnected + stalled >= 1.0,
            "the slow subscriber did not end as a slow client"
        ),
        SlowClientPolicy::Drop => {
            assert!(dropped >= 1.0, "no message counted as dropped");
            assert!(
                stalled >= 1.0,
                "the slow subscriber was not closed by the write timeout"
            );
        }
    }
    // The fast one is fine, and the gauge is back where it was once it is
    // gone too.
    fast.send(&ClientFrame::text("DISCONNECT\nreceipt:bye\n\n\0"))
        .await;
    expect_one(&mut fast, Command::Receipt).await;
    assert_eq!(connections_down_to(&gw, 0, Duration::from_secs(5)).await, 0);
    let queued_after = queued_back_to(&gw, queued_before, Duration::from_secs(3)).await;
    assert!(
        (queued_after - queued_before).abs() < 0.5,
        "queued-bytes gauge {queued_after} after both connections ended, {queued_before} before"
    );
    let _ = amqp.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_cut_off_and_the_fast_one_gets_everything_disconnect_policy() {
    slow_subscriber_does_not_hold_back_a_fast_one(SlowClientPolicy::Disconnect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_cut_off_and_the_fast_one_gets_everything_drop_policy() {
    slow_subscriber_does_not_hold_back_a_fast_one(SlowClientPolicy::Drop).await;
}

// ---- 3. a header announcing a huge payload ---------------------------------------

/// The header of a masked frame announcing `length` bytes in the 64-bit
/// form; no payload follows.
fn huge_header(first_byte: u8, length: u64) -> Vec<u8> {
    let mut header = vec![first_byte, 0x80 | 127];
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&rand::random::<[u8; 4]>());
    header
}

/// Reads until the connection ends, within `within`: the close code of the
/// close frame that must come first (after nothing but pings), and that the
/// TCP connection then ends too.
async fn close_code_within(conn: &mut Conn, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    let code = loop {
        match conn.read_until(deadline).await {
            None => panic!("no close frame within {within:?}"),
            Some(Read::Closed(end)) => panic!("connection ended ({end:?}) without a close frame"),
            Some(Read::Frame(f)) if f.opcode == wire::PING => continue,
            Some(Read::Frame(f)) if f.opcode == wire::CLOSE => break f.close_code(),
            Some(Read::Frame(f)) => panic!("a frame before the close frame: {f:?}"),
        }
    };
    match conn.read_until(deadline).await {
        Some(Read::Closed(_)) => code,
        other => panic!("after the close frame, expected the end of the connection: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_announcing_a_huge_payload_is_refused_at_once_with_1009() {
    let _serial = SERIAL.lock().await;
    let gw = start_gateway(|c| c.security.ws_ping_interval_ms = 0).await;
    // 2^40 bytes: binary after CONNECT, text before it, and a continuation
    // of a started message.
    for (what, mut conn, header) in [
        (
            "binary frame after CONNECT",
            connected(&gw, None).await,
            huge_header(0x82, 1 << 40),
        ),
        (
            "text frame before CONNECT",
            open(&gw, None).await,
            huge_header(0x81, 1 << 40),
        ),
        ("continuation frame", connected(&gw, None).await, {
            let mut bytes = ClientFrame::text(&b"SEND\n"[..]).not_final().encode();
            bytes.extend(huge_header(0x80, 1 << 40));
            bytes
        }),
    ] {
        let sent = Instant::now();
        conn.write(&header).await;
        let code = close_code_within(&mut conn, Duration::from_secs(2)).await;
        assert_eq!(code, Some(1009), "{what}");
        eprintln!("2^40-byte {what}: close 1009 after {:?}", sent.elapsed());
    }
    // The top bit set (which RFC 6455 forbids): refused as well, at once.
    let mut conn = connected(&gw, None).await;
    conn.write(&huge_header(0x82, u64::MAX)).await;
    let code = close_code_within(&mut conn, Duration::from_secs(2)).await;
    assert!(
        matches!(code, Some(1002 | 1009)),
        "length with the top bit set: close {code:?}"
    );
    eprintln!("length u64::MAX: close {code:?}");
    // And the gateway is none the worse for it.
    let mut conn = connected(&gw, None).await;
    conn.send(&ClientFrame::close(1000, "")).await;
    assert_eq!(
        close_code_within(&mut conn, Duration::from_secs(2)).await,
        Some(1000)
    );
}

// ---- 4. fragments of one byte, and empty ones ------------------------------------

/// `limits.max_frame_bytes` of the fragment tests; the WebSocket message
/// limit is that plus 64 KiB (src/transport/websocket/mod.rs).
const SMALL_MAX_FRAME: usize = 4096;
const SMALL_MAX_MESSAGE: usize = SMALL_MAX_FRAME + 64 * 1024;

/// A message of exactly `size` bytes: heart-beat EOLs (which STOMP
/// ignores, so only the WebSocket limit can refuse them) and then a SEND
/// to `topic` with a receipt.
fn padded_send(topic: &str, size: usize) -> Vec<u8> {
    let send = format!("SEND\ndestination:/topic/{topic}\nreceipt:big\n\nin 1-byte fragments\0");
    let mut message = vec![b'\n'; size - send.len()];
    message.extend_from_slice(send.as_bytes());
    message
}

/// `message` as a text frame of its first byte and continuation frames of
/// one byte each, the last one final: all the frames' bytes.
fn one_byte_fragments(message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(message.len() * 7);
    let last = message.len() - 1;
    for (i, byte) in message.iter().enumerate() {
        let frame = if i == 0 {
            ClientFrame::text(vec![*byte])
        } else {
            ClientFrame::continuation(vec![*byte])
        };
        let frame = if i == last { frame } else { frame.not_final() };
        bytes.extend(frame.encode());
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_fragments_up_to_the_limit_are_processed_and_one_more_is_refused_with_1009() {
    let _serial = SERIAL.lock().await;
    let gw = start_gateway(|c| {
        c.limits.max_frame_bytes = SMALL_MAX_FRAME;
        c.limits.max_frame_bytes_before_connect = SMALL_MAX_FRAME;
        c.security.ws_ping_interval_ms = 0;
    })
    .await;
    let topic = unique("hostile-frag");

    // Exactly the limit, in 69,632 frames of one byte.
    let mut conn = connected(&gw, None).await;
    subscribe(&mut conn, "s", &topic).await;
    let sent = Instant::now();
    conn.write(&one_byte_fragments(&padded_send(&topic, SMALL_MAX_MESSAGE)))
        .await;
    let frames = expect_all(&mut conn, &[Command::Receipt, Command::Message]).await;
    assert_eq!(frames[0].header("receipt-id").as_deref(), Some("big"));
    assert_eq!(&frames[1].body[..], b"in 1-byte fragments");
    eprintln!(
        "{SMALL_MAX_MESSAGE} one-byte fragments: answered after {:?}",
        sent.elapsed()
    );

    // One byte over: refused when the byte beyond the limit is announced,
    // with nothing processed.
    let mut conn = connected(&gw, None).await;
    conn.write_lenient(&one_byte_fragments(&padded_send(
        &topic,
        SMALL_MAX_MESSAGE + 1,
    )))
    .await;
    let closing = conn.until_closed().await;
    assert!(
        closing.stomp().is_empty(),
        "STOMP processed after the limit: {:?}",
        closing.stomp()
    );
    assert_eq!(closing.close_frame(), Some(Some(1009)), "{closing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_continuation_flood_does_not_stall_the_gateway() {
    let _serial = SERIAL.lock().await;
    let gw = start_gateway(|c| c.security.ws_ping_interval_ms = 0).await;
    let topic = unique("hostile-empty");
    let mut flooder = connected(&gw, None).await;
    subscribe(&mut flooder, "s", &topic).await;
    // A SEND started and never finished: 100,000 empty continuation frames,
    // in writes of 1,000, paced so that the flood lasts while other clients
    // connect.
    const FRAMES: usize = 100_000;
    const PER_WRITE: usize = 1_000;
    flooder
        .send(
            &ClientFrame::text(format!(
                "SEND\ndestination:/topic/{topic}\nreceipt:flood\n\n"
            ))
            .not_final(),
        )
        .await;
    let chunk = wire::concat(&vec![
        ClientFrame::continuation(Vec::new()).not_final();
        PER_WRITE
    ]);
    let done = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let began = Instant::now();
            for _ in 0..FRAMES / PER_WRITE {
                flooder.write(&chunk).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done.store(true, Ordering::Relaxed);
            (flooder, began.elapsed())
        }
    });
    // Other clients get in while it lasts, each within 2 s.
    let mut probes = Vec::new();
    tokio::time::sleep(Duration::from_millis(50)).await;
    while !done.load(Ordering::Relaxed) || probes.is_empty() {
        let began = Instant::now();
        let client = StompClient::try_connect(&gw.ws_url(), Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("a client could not connect during the flood: {e}"));
        let took = began.elapsed();
        assert!(took <= Duration::from_secs(2), "CONNECTED after {took:?}");
        probes.push((took, done.load(Ordering::Relaxed)));
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        probes.iter().any(|(_, over)| !over),
        "no client connected while the flood lasted: {probes:?}"
    );
    let (mut flooder, flood_took) = tokio::time::timeout(Duration::from_secs(20), flooding)
        .await
        .expect("the flood did not go out within 20 s (the gateway stopped reading?)")
        .expect("flood");
    // The flooding connection is still there and its message completes.
    flooder
        .send(&ClientFrame::continuation(&b"after the flood\0"[..]))
        .await;
    let frames = expect_all(&mut flooder, &[Command::Receipt, Command::Message]).await;
    assert_eq!(frames[0].header("receipt-id").as_deref(), Some("flood"));
    assert_eq!(&frames[1].body[..], b"after the flood");
    eprintln!(
        "{FRAMES} empty continuation frames in {flood_took:?}; probes (CONNECTED after, flood \
         over by then): {probes:?}; the flooding connection stayed open and its message completed"
    );
}
