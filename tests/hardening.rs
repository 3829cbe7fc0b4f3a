//! Issue 11: each test performs one attack (or fault) of a hostile or stalled
//! client against a real gateway and the real RabbitMQ on 127.0.0.1:5672,
//! and checks that it fails. docs/security.md lists the threats and defences.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (scripts/ensure-rabbitmq.sh).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use stompgate::config::{Config, UserConfig};
use stompgate::stomp::{encode_frame, Command, Escaping, Frame};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

// ---- helpers -------------------------------------------------------------------

/// Login/passcode users `names` (passcode = name), anonymous access off.
fn users(config: &mut Config, names: &[&str]) {
    config.auth.anonymous = false;
    config.auth.users = names
        .iter()
        .map(|n| UserConfig {
            login: (*n).to_owned(),
            passcode: (*n).to_owned(),
        })
        .collect();
}

/// A STOMP 1.2 session logged in as `user` (passcode = user).
async fn login(gw: &TestGateway, user: &str) -> StompClient {
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client
        .connect_with(
            Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("host", "/")
                .with_header("heart-beat", "0,0")
                .with_header("login", user)
                .with_header("passcode", user),
        )
        .await;
    client
}

fn send(destination: &str, text: &str) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", destination)
        .with_body(text.to_owned())
}

fn consumers_of(queue: &str) -> Option<u64> {
    queue_stat(queue, "consumers")
}

/// Resident memory of this process (gateway included), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// TCP state (hex, as in /proc/net/tcp: 01 established) of the gateway's
/// side of the connection from local port `client_port` to `gateway_port`.
fn server_side_state(gateway_port: u16, client_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        (port(f.get(1)?)? == gateway_port && port(f.get(2)?)? == client_port)
            .then(|| f.get(3).map(|s| s.to_string()))
            .flatten()
    })
}

/// A WebSocket client over a socket with a tiny receive buffer, which
/// from some point on reads nothing: the gateway's writes then stall.
struct Stalling {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    local_port: u16,
}

impl Stalling {
    async fn open(gw: &TestGateway) -> Stalling {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(gw.addr).await.expect("connect");
        let local_port = stream.local_addr().expect("addr").port();
        let (ws, _) = tokio_tungstenite::client_async(gw.ws_url(), stream)
            .await
            .expect("handshake");
        Stalling { ws, local_port }
    }

    async fn send(&mut self, frame: &Frame) {
        let mut buf = BytesMut::new();
        encode_frame(frame, Escaping::V12, &mut buf);
        let text = String::from_utf8(buf.to_vec()).expect("UTF-8");
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Reads until a frame starting with `command` arrived (the frames this
    /// client waits for come alone, so a prefix check is enough).
    async fn wait_for(&mut self, command: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("frame in time")
                .expect("open")
                .expect("read");
            if let Message::Text(t) = message {
                if t.as_str().starts_with(command) {
                    return;
                }
            }
        }
    }
}

// ---- 1. SEND into arbitrary queues through /reply-queue/ -------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_queue_send_reaches_only_reply_queues_handed_to_the_session() {
    let gw = start_gateway(|_| {}).await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    // A backend work queue the client must not write into.
    let work = unique("payments.commands");
    ch.queue_declare(
        work.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");

    let (mut attacker, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    attacker
        .send(&send(&format!("/reply-queue/{work}"), "pay me").with_header("receipt", "r"))
        .await;
    attacker.expect_error("access_refused").await;
    assert_eq!(ready(&work).await, 0, "nothing reached the work queue");

    // The legitimate use: a backend request with reply-to its own
    // broker-named queue; the session answers there.
    let replies = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("server-named queue")
        .name()
        .to_string();
    assert!(replies.starts_with("amq.gen-"), "{replies}");
    let requests = unique("requests");
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    client
        .subscribe("s", &format!("/queue/{requests}"), &[])
        .await;
    publish(
        &ch,
        "",
        &requests,
        b"question",
        BasicProperties::default().with_reply_to(replies.as_str().into()),
    )
    .await;
    let request = client.expect(Command::Message).await;
    let reply_to = request.header("reply-to").expect("reply-to").into_owned();
    assert_eq!(reply_to, format!("/reply-queue/{replies}"));
    client
        .send(&send(&reply_to, "answer").with_header("receipt", "a"))
        .await;
    client.expect(Command::Receipt).await;
    let got = ch
        .basic_get(replies.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the answer arrived");
    assert_eq!(got.delivery.data, b"answer");
    // The reply-to header of a SEND is restricted the same way (item 8).
    client
        .send(&send(&format!("/queue/{requests}"), "x").with_header("reply-to", &work))
        .await;
    client.expect_error("reply-to").await;
    delete_queue(&work).await;
    delete_queue(&requests).await;
}

// ---- 2. durable subscriptions shared across users --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscriptions_are_never_shared_across_users() {
    let gw = start_gateway(|c| users(c, &["m7", "m42"])).await;
    // Durable queue names are fixed per user and id: start clean.
    delete_queue("stomp-subscription-m42.sub-0").await;
    delete_queue("stomp-subscription-m7.sub-0").await;
    let topic = unique("orders");
    let durable = [
        ("durable", "true"),
        ("auto-delete", "false"),
        ("ack", "client-individual"),
    ];
    let destination = format!("/topic/{topic}");
    // Merchant 42 subscribes durably with stompjs' default id, and leaves.
    let mut m42 = login(&gw, "m42").await;
    m42.subscribe("sub-0", &destination, &durable).await;
    m42.disconnect().await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"order of 42",
        BasicProperties::default(),
    )
    .await;

    // Merchant 7, same destination and id: a queue of its own.
    let mut m7 = login(&gw, "m7").await;
    m7.subscribe("sub-0", &destination, &durable).await;
    assert_eq!(
        m7.recv_within(Duration::from_millis(1500)).await,
        Recv::Timeout,
        "merchant 7 must not receive merchant 42's order"
    );
    // Nor reach 42's queue by name.
    let victim = "stomp-subscription-m42.sub-0";
    assert!(list_queues().iter().any(|(n, _)| n == victim));
    let mut probe = login(&gw, "m7").await;
    probe
        .send(
            &Frame::new(Command::Subscribe)
                .with_header("id", "x")
                .with_header("destination", &format!("/amq/queue/{victim}")),
        )
        .await;
    probe.expect_error("access_refused").await;
    let mut probe = login(&gw, "m7").await;
    probe
        .send(
            &Frame::new(Command::Subscribe)
                .with_header("id", "x")
                .with_header("destination", &destination)
                .with_header("x-queue-name", victim),
        )
        .await;
    probe.expect_error("access_refused").await;
    m7.disconnect().await;

    // 42 gets the order on return.
    let mut m42 = login(&gw, "m42").await;
    m42.subscribe("sub-0", &destination, &durable).await;
    let m = m42.expect(Command::Message).await;
    assert_eq!(body(&m), "order of 42");
    m42.disconnect().await;
    delete_queue(victim).await;
    delete_queue("stomp-subscription-m7.sub-0").await;
}

// ---- 3. /user/ privacy without rules ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_exchange_is_reachable_only_through_user_destinations() {
    for with_rules in [false, true] {
        let gw = start_gateway(|c| {
            users(c, &["alice", "bob"]);
            if with_rules {
                // Even a rule that would match it does not open it.
                c.auth.rules = vec![rule(&["subscribe", "send"], "/exchange/*/*", &[])];
            }
        })
        .await;
        let name = unique("inbox");
        let mut alice = login(&gw, "alice").await;
        alice
            .subscribe("mine", &format!("/user/queue/{name}"), &[])
            .await;

        let mut bob = login(&gw, "bob").await;
        bob.send(
            &Frame::new(Command::Subscribe)
                .with_header("id", "spy")
                .with_header("destination", "/exchange/stompgate.user/#"),
        )
        .await;
        bob.expect_error("access_refused").await;
        let mut bob = login(&gw, "bob").await;
        bob.send(&send(
            &format!("/exchange/stompgate.user/alice.{name}"),
            "planted",
        ))
        .await;
        bob.expect_error("access_refused").await;
        assert_eq!(
            alice.recv_within(Duration::from_millis(500)).await,
            Recv::Timeout,
            "nothing planted in alice's queue (rules: {with_rules})"
        );
        alice.disconnect().await;
    }
}

// ---- 4. a client that stops reading ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_is_closed_and_its_unacked_messages_redelivered() {
    let stall_ms = 2_000;
    let gw = start_gateway(|c| {
        c.limits.write_timeout_ms = stall_ms;
        c.security.ws_ping_interval_ms = 0;
    })
    .await;
    let queue = unique("stall");
    let count = 40u32;
    let mut client = Stalling::open(&gw).await;
    client
        .send(
            &Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("host", "/")
                .with_header("heart-beat", "0,0"),
        )
        .await;
    client.wait_for("CONNECTED").await;
    client
        .send(
            &Frame::new(Command::Subscribe)
                .with_header("id", "s")
                .with_header("destination", &format!("/queue/{queue}"))
                .with_header("ack", "client-individual")
                .with_header("prefetch-count", &count.to_string())
                .with_header("receipt", "sub"),
        )
        .await;
    client.wait_for("RECEIPT").await;
    let rss_before = rss_kib();
    // From here on the client reads nothing. 40 x 256 KiB: more than the
    // socket buffers hold, far less than the outbound queue's bounds.
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let payload = vec![b'x'; 256 * 1024];
    for _ in 0..count {
        publish(&ch, "", &queue, &payload, BasicProperties::default()).await;
    }
    let published = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_during = rss_kib();
    // Another consumer: nothing for it while the stalled client holds them all.
    let mut other = consume_no_ack(&ch, &queue, "other").await;
    let mut received = 0;
    let deadline = published + Duration::from_millis(stall_ms + 8_000);
    while received < count {
        match tokio::time::timeout_at(deadline, other.next()).await {
            Ok(Some(Ok(_))) => received += 1,
            _ => break,
        }
    }
    let closed_after = published.elapsed();
    assert_eq!(
        received, count,
        "every unacked message went to the other consumer"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.gateway.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.gateway.connections(),
        0,
        "the stalled session was closed"
    );
    let state = server_side_state(gw.addr.port(), client.local_port);
    assert_ne!(
        state.as_deref(),
        Some("01"),
        "the gateway's socket is closed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib();
    eprintln!(
        "stalled client: {count} x 256 KiB unacked; closed and redelivered {:.1} s after the last publish \
         (write timeout {:.1} s); RSS before {rss_before} KiB, during {rss_during} KiB, after {rss_after} KiB",
        closed_after.as_secs_f64(),
        stall_ms as f64 / 1000.0
    );
    drop(client);
    delete_queue(&queue).await;
}

// ---- 5. the writer never outlives its session ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_ends_with_its_session_and_frees_the_socket() {
    let gw = start_gateway(|c| {
        c.security.max_connections = 1;
        // Long: the stall timeout must not be what ends the writer here.
        c.limits.write_timeout_ms = 120_000;
        c.security.ws_ping_interval_ms = 0;
    })
    .await;
    let queue = unique("writer");
    let mut client = Stalling::open(&gw).await;
    client
        .send(
            &Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("host", "/")
                .with_header("heart-beat", "0,0"),
        )
        .await;
    client.wait_for("CONNECTED").await;
    client
        .send(
            &Frame::new(Command::Subscribe)
                .with_header("id", "s")
                .with_header("destination", &format!("/queue/{queue}"))
                .with_header("ack", "client-individual")
                .with_header("prefetch-count", "40")
                .with_header("receipt", "sub"),
        )
        .await;
    client.wait_for("RECEIPT").await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let payload = vec![b'x'; 256 * 1024];
    for _ in 0..40 {
        publish(&ch, "", &queue, &payload, BasicProperties::default()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The session ends (DISCONNECT) while its writer is stuck on the socket.
    client.send(&Frame::new(Command::Disconnect)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = server_side_state(gw.addr.port(), client.local_port);
        if gw.gateway.connections() == 0 && state.as_deref() != Some("01") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session gone but its socket still established ({state:?}, {} connections)",
            gw.gateway.connections()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // max_connections = 1 holds for the socket too: a new client gets in.
    let (c2, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c2.disconnect().await;
    drop(client);
    delete_queue(&queue).await;
}

// ---- 6. JWT edge cases -----------------------------------------------------------

const SECRET: &str = "hardening-secret-0123456789";

fn jwt(claims: serde_json::Value) -> String {
    jwt_hs256(SECRET, claims)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

async fn jwt_connect(gw: &TestGateway, token: &str) -> (StompClient, Frame) {
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client
        .send(
            &Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("host", "/")
                .with_header("heart-beat", "0,0")
                .with_header("passcode", token),
        )
        .await;
    let frame = client.recv().await;
    (client, frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_float_and_absurd_exp_and_missing_aud() {
    let gw = start_gateway(|c| {
        c.auth.anonymous = false;
        c.auth.jwt = Some(stompgate::config::JwtConfig {
            hs256_secret: Some(SECRET.into()),
            audience: vec!["stompgate".into()],
            ..Default::default()
        })
    })
    .await;
    let now = unix_now();
    // aud configured: a token without one is refused.
    let (_, f) = jwt_connect(
        &gw,
        &jwt(serde_json::json!({"sub": "u", "exp": now + 600.0})),
    )
    .await;
    assert_eq!(f.command, Command::Error, "token without aud accepted");
    // A float exp in the past is expired.
    let (_, f) = jwt_connect(
        &gw,
        &jwt(serde_json::json!({"sub": "u", "aud": "stompgate", "exp": now - 30.5})),
    )
    .await;
    assert_eq!(f.command, Command::Error);
    let text = format!(
        "{} {}",
        f.header("message").unwrap_or_default(),
        String::from_utf8_lossy(&f.body)
    );
    assert!(text.contains("expired"), "{text}");
    // A float exp in the future ends the session when it passes.
    let (mut c, f) = jwt_connect(
        &gw,
        &jwt(serde_json::json!({"sub": "u", "aud": "stompgate", "exp": now + 2.5})),
    )
    .await;
    assert_eq!(f.command, Command::Connected);
    match c.recv_within(Duration::from_secs(6)).await {
        Recv::Frame(e) => {
            assert_eq!(e.command, Command::Error);
            assert!(e
                .header("message")
                .unwrap_or_default()
                .to_lowercase()
                .contains("expired"));
        }
        other => panic!("float exp did not end the session: {other:?}"),
    }
    // exp = 1e19 (an integer that fits u64): a working session whose broker
    // resources are released on DISCONNECT (no panicked task leaking them).
    let queue = unique("absurd-exp");
    let token = jwt(
        serde_json::json!({"sub": "u", "aud": "stompgate", "exp": 10_000_000_000_000_000_000u64}),
    );
    let (mut c, f) = jwt_connect(&gw, &token).await;
    assert_eq!(f.command, Command::Connected, "{:?}", f.header("message"));
    c.subscribe("s", &format!("/queue/{queue}"), &[("ack", "client")])
        .await;
    assert_eq!(consumers_of(&queue), Some(1));
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        consumers_of(&queue),
        Some(0),
        "the session's channel was closed"
    );
    delete_queue(&queue).await;
}

// ---- 8. sender identity -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_identity_cannot_be_forged() {
    let gw = start_gateway(|c| users(c, &["alice"])).await;
    let queue = unique("inbox");
    let mut alice = login(&gw, "alice").await;
    alice
        .send(
            &send(&format!("/queue/{queue}"), "hello")
                .with_header("user-id", "admin")
                .with_header("stompgate-user", "admin")
                .with_header("JMSXUserID", "admin")
                .with_header("receipt", "r"),
        )
        .await;
    alice.expect(Command::Receipt).await;
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("message");
    let props = &got.delivery.properties;
    assert_eq!(props.user_id(), &None, "no AMQP user-id from a client");
    let table = props.headers().clone().unwrap_or_default();
    let text = |name: &str| match table.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    assert_eq!(text("stompgate-user").as_deref(), Some("alice"));
    assert_eq!(text("user-id"), None);
    assert_eq!(text("JMSXUserID"), None);
    alice.disconnect().await;
    delete_queue(&queue).await;
}

// ---- 10. memory bounds ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_connect_messages_are_bounded_and_prefetch_is_capped() {
    let gw = start_gateway(|c| c.amqp.max_prefetch = 5).await;
    // 1 MiB of EOLs before CONNECT: over the 64 KiB pre-CONNECT limit.
    let mut c = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    c.send_bytes(vec![b'\n'; 1024 * 1024], false).await;
    c.expect_error("before CONNECT").await;

    let queue = unique("prefetch");
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe(
        "s",
        &format!("/queue/{queue}"),
        &[("ack", "client-individual"), ("prefetch-count", "60000")],
    )
    .await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    for i in 0..10 {
        publish(
            &ch,
            "",
            &queue,
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    for _ in 0..5 {
        c.expect(Command::Message).await;
    }
    assert_eq!(
        c.recv_within(Duration::from_millis(700)).await,
        Recv::Timeout,
        "prefetch-count capped to 5"
    );
    c.disconnect().await;
    delete_queue(&queue).await;
}

/// `n` SENDs to `destination`, each asking for receipt `<prefix><i>`, in one
/// WebSocket message: the gateway handles them in one go, before any of
/// their publisher confirms is taken in, so their receipts all wait at once.
fn sends_with_receipts(destination: &str, prefix: &str, n: usize) -> BytesMut {
    let mut batch = BytesMut::new();
    for i in 0..n {
        let frame =
            send(destination, &format!("m{i}")).with_header("receipt", &format!("{prefix}{i}"));
        encode_frame(&frame, Escaping::V12, &mut batch);
    }
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_waiting_for_confirms_are_bounded() {
    const LIMIT: usize = 4;
    let gw = start_gateway(|c| c.limits.max_pending_receipts = LIMIT).await;
    let destination = format!("/topic/{}", unique("receipts"));

    // Below the limit: every receipt arrives, in order, batch after batch
    // (what was confirmed no longer counts).
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    for round in 0..3 {
        let prefix = format!("ok{round}-");
        c.send_bytes(sends_with_receipts(&destination, &prefix, 2), false)
            .await;
        for i in 0..2 {
            let receipt = c.expect(Command::Receipt).await;
            assert_eq!(
                receipt.header("receipt-id").as_deref(),
                Some(format!("{prefix}{i}").as_str())
            );
        }
    }
    c.disconnect().await;

    // Beyond it: ERROR naming the limit, no receipt, then the close.
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.send_bytes(sends_with_receipts(&destination, "r", 10), false)
        .await;
    c.expect_error(&format!("too many receipts pending (limit {LIMIT})"))
        .await;
}

// ---- 11. operations -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_move_to_their_own_address() {
    let port = free_port();
    let gw = start_gateway(|c| {
        c.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    })
    .await;
    assert_eq!(http_status(port, "/metrics").await, Some(200));
    assert_eq!(http_status(port, "/readyz").await, Some(200));
    assert_eq!(
        http_status(gw.addr.port(), "/metrics").await,
        Some(404),
        "not on the public listener any more"
    );
    // Default: on the public listener.
    let gw = start_gateway(|_| {}).await;
    assert_eq!(http_status(gw.addr.port(), "/metrics").await, Some(200));
}

#[test]
fn nan_or_zero_timing_settings_stop_the_start() {
    for (key, value, named) in [
        (
            "STOMPGATE_HEARTBEAT__GRACE_FACTOR",
            "NaN",
            "heartbeat.grace_factor",
        ),
        (
            "STOMPGATE_LIMITS__WRITE_TIMEOUT_MS",
            "0",
            "limits.write_timeout_ms",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env(key, value)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run stompgate");
        assert!(!out.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{key}={value}: {stderr}");
    }
}

#[test]
fn haproxy_logs_no_query_strings() {
    for path in ["deploy/haproxy.cfg", "deploy/haproxy-local.cfg.in"] {
        let cfg = std::fs::read_to_string(path).expect(path);
        let formats: Vec<&str> = cfg
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("log-format"))
            .collect();
        assert_eq!(
            formats.len(),
            1,
            "{path}: one log-format replaces httplog's"
        );
        let format = formats[0];
        // %r and %HU hold the query string (?access_token=...); %HP does not.
        for token in format.split([' ', '"', '\\']) {
            assert!(
                !matches!(token, "%r" | "%{+Q}r" | "%HU" | "%HQ" | "%{+Q}HU"),
                "{path} logs {token}"
            );
        }
        assert!(format.contains("%HP"), "{path}");
    }
}

// ---- 12. STOMP 1.0 output and half-open connections ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_10_output_carries_no_forged_headers() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("forge");
    let (mut old, _) = StompClient::connect(&gw.ws_url(), "1.0").await;
    old.subscribe("s", &format!("/topic/{topic}"), &[]).await;

    // From a STOMP 1.2 client: a name holding ':' (escaped \c) and a value
    // holding a newline (escaped \n).
    let (mut sender, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let mut raw = BytesMut::new();
    raw.extend_from_slice(
        format!(
            "SEND\ndestination:/topic/{topic}\nuser-id\\cforged:1\nx-v:ok\\nsubscription:forged\nreceipt:r\n\nbody\0"
        )
        .as_bytes(),
    );
    sender.send_bytes(raw.freeze(), false).await;
    sender.expect(Command::Receipt).await;
    let m = old.expect(Command::Message).await;
    let headers: Vec<(String, String)> = m
        .headers()
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        headers.iter().filter(|(n, _)| n == "subscription").count(),
        1,
        "{headers:?}"
    );
    assert!(headers.iter().all(|(n, _)| n != "user-id"), "{headers:?}");

    // From an AMQP backend: header table names holding ':' and newlines.
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let mut table = FieldTable::default();
    table.insert(
        "destination:/queue/evil".into(),
        AMQPValue::LongString(LongString::from("x")),
    );
    table.insert(
        "x-a\nmessage-id".into(),
        AMQPValue::LongString(LongString::from("forged")),
    );
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"from backend",
        BasicProperties::default().with_headers(table),
    )
    .await;
    let m = old.expect(Command::Message).await;
    assert_eq!(body(&m), "from backend");
    let headers: Vec<(String, String)> = m
        .headers()
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        headers.iter().filter(|(n, _)| n == "destination").count(),
        1,
        "{headers:?}"
    );
    assert_eq!(
        headers.iter().filter(|(n, _)| n == "message-id").count(),
        1,
        "{headers:?}"
    );
    old.disconnect().await;
    sender.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_without_heartbeats_is_closed_by_pings() {
    let gw = start_gateway(|c| c.security.ws_ping_interval_ms = 300).await;
    // A 1.0 session (no heart-beats) whose peer stops answering: it never
    // reads, so never answers the pings.
    let (mut gone, _) = StompClient::connect(&gw.ws_url(), "1.0").await;
    // A live one, reading (tungstenite answers pings while reading).
    let (mut live, _) = StompClient::connect(&gw.ws_url(), "1.0").await;
    let started = Instant::now();
    assert_eq!(
        live.recv_within(Duration::from_secs(2)).await,
        Recv::Timeout
    );
    let waited = started.elapsed();
    // The live session ends first: while the test reads `gone` below, `live`
    // reads nothing and so answers no pings (on a loaded machine that gap
    // could outlast two ping intervals). `gone`'s ERROR waits in its socket.
    live.disconnect().await;
    let e = gone.expect(Command::Error).await;
    assert!(
        e.header("message")
            .unwrap_or_default()
            .contains("WebSocket pings"),
        "{:?}",
        e.header("message")
    );
    gone.expect_closed().await;
    assert!(waited >= Duration::from_secs(2));
}

// ---- 11. amqps:// to a TLS-enabled RabbitMQ node ------------------------------------

fn rabbitmq_installed() -> bool {
    std::path::Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists()
        || std::process::Command::new("sh")
            .args(["-c", "command -v rabbitmq-server"])
            .output()
            .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_to_a_tls_rabbitmq_node() {
    if !rabbitmq_installed() {
        eprintln!("SKIPPED: RabbitMQ binaries are not installed (scripts/ensure-rabbitmq.sh)");
        return;
    }
    // A CA of our own, and the node's certificate signed by it.
    let dir = std::env::temp_dir().join(format!("sg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stompgate test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");

    let tls_dir = dir.display().to_string();
    let node = PrivateNode::start_with(
        "sg-tls",
        5690,
        &[
            ("PRIVATE_RABBIT_TLS_PORT", "5691"),
            ("PRIVATE_RABBIT_WEB_STOMP_PORT", "5692"),
            ("PRIVATE_RABBIT_STOMP_PORT", "5693"),
            ("PRIVATE_RABBIT_DIST_PORT", "25690"),
            ("PRIVATE_RABBIT_NO_STOMP", "1"),
            ("PRIVATE_RABBIT_TLS_DIR", tls_dir.as_str()),
        ],
    );

    // The gateway trusts our CA through SSL_CERT_FILE (rustls-native-certs).
    let ca_file = dir.join("ca.pem").display().to_string();
    let gateway = GatewayProcess::spawn(
        "amqps://guest:guest@localhost:5691/%2f",
        &[("SSL_CERT_FILE", ca_file.as_str())],
    );
    assert!(
        gateway.wait_ready(Duration::from_secs(30)).await,
        "the gateway did not connect over amqps://"
    );
    let queue = unique("tls");
    let (mut c, _) = StompClient::connect(&gateway.ws_url(), "1.2").await;
    c.subscribe("s", &format!("/queue/{queue}"), &[]).await;
    c.send(&send(&format!("/queue/{queue}"), "over TLS").with_header("receipt", "r"))
        .await;
    // The RECEIPT (after the confirm) and the MESSAGE, in either order.
    let (a, b) = (c.recv().await, c.recv().await);
    let (m, r) = if a.command == Command::Message {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(r.command, Command::Receipt);
    assert_eq!(m.command, Command::Message);
    assert_eq!(body(&m), "over TLS");
    // The node saw TLS connections, and only those, from the gateway.
    let listing = node.ctl(&["list_connections", "-q", "--no-table-headers", "ssl"]);
    assert!(listing.lines().any(|l| l.trim() == "true"), "{listing}");
    assert!(listing.lines().all(|l| l.trim() != "false"), "{listing}");
    c.disconnect().await;
    drop(gateway);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
