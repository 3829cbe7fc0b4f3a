//! Every bad input gets an ERROR frame whose `message` says what was wrong,
//! then a clean close, and does not disturb the other sessions of the
//! gateway: each test keeps a "bystander" client connected (and subscribed)
//! before the bad client arrives, and checks afterwards that it still
//! receives a message published over AMQP.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use stompgate::stomp::{Command, Frame};

/// A well-behaved client connected to the same gateway before the bad one.
struct Bystander {
    client: StompClient,
    topic: String,
}

impl Bystander {
    async fn connect(gw: &TestGateway) -> Bystander {
        let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
        let topic = unique("bystander");
        client
            .subscribe("bystander", &format!("/topic/{topic}"), &[])
            .await;
        Bystander { client, topic }
    }

    /// Publishes over AMQP (after the bad client was closed) and expects the
    /// bystander to receive it, then disconnects it cleanly.
    async fn still_works(mut self) {
        let conn = amqp().await;
        let ch = confirm_channel(&conn).await;
        let body = format!("still alive {}", self.topic);
        publish(
            &ch,
            "amq.topic",
            &self.topic,
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
        let msg = self.client.expect(Command::Message).await;
        assert_eq!(msg.header("subscription").as_deref(), Some("bystander"));
        assert_eq!(&msg.body[..], body.as_bytes());
        self.client.disconnect().await;
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// Opens a WebSocket and sends a 1.2 CONNECT, expecting CONNECTED.
async fn connected(gw: &TestGateway) -> StompClient {
    let (client, connected) = StompClient::connect(&gw.ws_url(), "1.2").await;
    assert_eq!(connected.header("version").as_deref(), Some("1.2"));
    client
}

/// With a bystander around: a connected 1.2 client sends `raw` in one
/// WebSocket message and must get an ERROR containing `needle`, then the
/// close; the bystander keeps working.
async fn refused_after_connect(gw: &TestGateway, raw: &[u8], binary: bool, needle: &str) -> Frame {
    let bystander = Bystander::connect(gw).await;
    let mut bad = connected(gw).await;
    bad.send_bytes(raw.to_vec(), binary).await;
    let error = bad.expect_error(needle).await;
    bystander.still_works().await;
    error
}

/// Same as [`refused_after_connect`], for a client that sends a frame (built
/// in code) after CONNECT.
async fn frame_refused_after_connect(gw: &TestGateway, frame: Frame, needle: &str) -> Frame {
    let bystander = Bystander::connect(gw).await;
    let mut bad = connected(gw).await;
    bad.send(&frame).await;
    let error = bad.expect_error(needle).await;
    bystander.still_works().await;
    error
}

/// With a bystander around: a client that has not sent CONNECT sends `raw`.
async fn refused_before_connect(gw: &TestGateway, raw: &[u8], binary: bool, needle: &str) -> Frame {
    let bystander = Bystander::connect(gw).await;
    let mut bad = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    bad.send_bytes(raw.to_vec(), binary).await;
    let error = bad.expect_error(needle).await;
    bystander.still_works().await;
    error
}

fn error_message(frame: &Frame) -> String {
    frame
        .header("message")
        .map(|m| m.into_owned())
        .unwrap_or_default()
}

/// The body of an ERROR: RabbitMQ's details.
fn error_body(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.body).into_owned()
}

// ---- malformed frames ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_line_without_colon_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let bystander = Bystander::connect(&gw).await;
    let mut bad = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    bad.send_bytes(&b"CONNECT\naccept-version:1.2\n\n\0"[..], false)
        .await;
    let connected = bad.expect(Command::Connected).await;
    assert_eq!(connected.header("version").as_deref(), Some("1.2"));
    bad.send_bytes(&b"SEND\ndestination /queue/x\n\nbody\0"[..], false)
        .await;
    let error = bad.expect_error("malformed header line (no ':')").await;
    assert_eq!(error.header("content-type").as_deref(), Some("text/plain"));
    bystander.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_is_refused() {
    let gw = start_gateway(|_| {}).await;
    // As RabbitMQ (its suite's parsing.test_bad_command).
    let error = refused_after_connect(
        &gw,
        b"WRONGCOMMAND\ndestination:a\nexchange:amq.fanout\n\n\0",
        false,
        "Could not interpret command \"WRONGCOMMAND\"\n",
    )
    .await;
    assert_eq!(error_message(&error), "Bad command");
    assert_eq!(error.header("version").as_deref(), Some("1.0,1.1,1.2"));
    // Before CONNECT, as any other command then.
    let error = refused_before_connect(
        &gw,
        b"FOO\n\n\0",
        false,
        "You must log in using CONNECT first (got FOO)",
    )
    .await;
    assert_eq!(error_message(&error), "Illegal command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_octets_between_frames_are_skipped() {
    // RabbitMQ's suite, parsing.test_newline_after_nul_and_leading_nul.
    let gw = start_gateway(|_| {}).await;
    let mut c = connected(&gw).await;
    let name = unique("leading-nul");
    let _cleanup = QueueCleanup(name.clone());
    let queue = format!("/queue/{name}");
    let frames = format!(
        "\n\0SUBSCRIBE\nid:s\ndestination:{queue}\nreceipt:r\n\n\0\n\0SEND\ndestination:{queue}\ncontent-type:text/plain\n\nhello\n\0\n"
    );
    c.send_bytes(frames.into_bytes(), false).await;
    c.expect(Command::Receipt).await;
    let m = c.expect(Command::Message).await;
    assert_eq!(&m.body[..], b"hello\n");
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_escape_in_a_1_2_header_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("esc");
    let raw = format!("SEND\ndestination:/topic/{topic}\nx-h:a\\tb\n\nbody\0");
    let error =
        refused_after_connect(&gw, raw.as_bytes(), false, "invalid escape sequence '\\t'").await;
    assert!(error_message(&error).contains("in header"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_that_is_not_utf8_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("utf8");
    let mut raw = format!("SEND\ndestination:/topic/{topic}\nx-h:").into_bytes();
    raw.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    raw.extend_from_slice(b"\n\nbody\0");
    refused_after_connect(&gw, &raw, true, "header is not valid UTF-8").await;
}

// ---- missing or wrong headers ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_without_destination_is_refused() {
    let gw = start_gateway(|_| {}).await;
    frame_refused_after_connect(
        &gw,
        Frame::new(Command::Send)
            .with_header("receipt", "r1")
            .with_body("no where"),
        "Missing destination",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_destination_is_refused() {
    let gw = start_gateway(|_| {}).await;
    frame_refused_after_connect(
        &gw,
        Frame::new(Command::Subscribe).with_header("id", "s1"),
        "\"SUBSCRIBE\" must include a 'destination' header",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_id_in_1_2_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("noid");
    frame_refused_after_connect(
        &gw,
        Frame::new(Command::Subscribe).with_header("destination", &format!("/topic/{topic}")),
        "SUBSCRIBE must include an 'id' header",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_form_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let error = frame_refused_after_connect(
        &gw,
        Frame::new(Command::Send)
            .with_header("destination", "/foo/bar")
            .with_body("x"),
        "'/foo/bar' is not a valid destination.",
    )
    .await;
    assert_eq!(error_message(&error), "Unknown destination");
    let error = frame_refused_after_connect(
        &gw,
        Frame::new(Command::Subscribe)
            .with_header("id", "s1")
            .with_header("destination", "/foo/bar"),
        "Unknown destination",
    )
    .await;
    assert!(error_body(&error).contains("Valid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/."));
}

/// Issue 10: the invalid forms RabbitMQ refuses, with its texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_destination_forms_are_refused_as_rabbitmq_does() {
    let gw = start_gateway(|_| {}).await;
    for (destination, body) in [
        (
            "/queue/bah/baz",
            "'/bah/baz' is not a valid queue destination\n",
        ),
        (
            "/topic/bah/baz",
            "'/bah/baz' is not a valid topic destination\n",
        ),
        (
            "/exchange//foo",
            "'//foo' is not a valid exchange destination\n",
        ),
    ] {
        let error = frame_refused_after_connect(
            &gw,
            Frame::new(Command::Subscribe)
                .with_header("id", "s1")
                .with_header("destination", destination),
            "Invalid destination",
        )
        .await;
        assert_eq!(error_message(&error), "Invalid destination");
        assert_eq!(error_body(&error), body, "{destination}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_connect_are_refused() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("early");
    let send = format!("SEND\ndestination:/topic/{topic}\n\nhello\0");
    let error = refused_before_connect(
        &gw,
        send.as_bytes(),
        false,
        "You must log in using CONNECT first",
    )
    .await;
    assert_eq!(error_message(&error), "Illegal command");
    assert!(error_body(&error).contains("SEND"));
    // Before CONNECT the ERROR says which versions the server speaks.
    assert_eq!(error.header("version").as_deref(), Some("1.0,1.1,1.2"));

    let subscribe = format!("SUBSCRIBE\nid:s1\ndestination:/topic/{topic}\n\n\0");
    let error = refused_before_connect(
        &gw,
        subscribe.as_bytes(),
        false,
        "You must log in using CONNECT first",
    )
    .await;
    assert!(error_body(&error).contains("SUBSCRIBE"));
}

// ---- limits ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_the_limit_is_refused() {
    let gw = start_gateway(|c| c.limits.max_frame_bytes = 64 * 1024).await;
    let topic = unique("big");
    frame_refused_after_connect(
        &gw,
        Frame::new(Command::Send)
            .with_header("destination", &format!("/topic/{topic}"))
            .with_body(vec![b'a'; 100 * 1024]),
        "frame exceeds the limit of 65536 bytes",
    )
    .await;
    // The same without content-length: the limit applies while the body is
    // still looking for its NUL.
    let mut raw = format!("SEND\ndestination:/topic/{topic}\n\n").into_bytes();
    raw.extend(std::iter::repeat_n(b'a', 100 * 1024));
    raw.push(0);
    refused_after_connect(&gw, &raw, false, "frame exceeds the limit of 65536 bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frame_before_connect_is_refused_with_the_pre_connect_limit() {
    // Default limits: 4 MiB once connected, 64 KiB before.
    let gw = start_gateway(|_| {}).await;
    assert_eq!(
        gw.gateway.config.limits.max_frame_bytes_before_connect,
        64 * 1024
    );

    // A CONNECT with a 70 KiB body (content-length given).
    let mut raw = b"CONNECT\naccept-version:1.2\ncontent-length:71680\n\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 70 * 1024));
    raw.push(0);
    refused_before_connect(&gw, &raw, false, "frame exceeds the limit of 65536 bytes").await;

    // A CONNECT with a 70 KiB body and no content-length.
    let mut raw = b"CONNECT\naccept-version:1.2\n\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 70 * 1024));
    raw.push(0);
    refused_before_connect(&gw, &raw, false, "frame exceeds the limit of 65536 bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_connect_header_is_refused_before_connect() {
    // A huge header before CONNECT is refused, by whichever limit it hits
    // first (the header line limit is raised so that the frame limit does).
    let gw = start_gateway(|c| c.limits.max_header_line = 1024 * 1024).await;
    let mut raw = b"CONNECT\naccept-version:1.2\nlogin:".to_vec();
    raw.extend(std::iter::repeat_n(b'u', 70 * 1024));
    raw.extend_from_slice(b"\n\n\0");
    refused_before_connect(&gw, &raw, false, "frame exceeds the limit of 65536 bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_are_refused() {
    let gw = start_gateway(|c| c.limits.max_headers = 8).await;
    let topic = unique("headers");
    let mut frame =
        Frame::new(Command::Send).with_header("destination", &format!("/topic/{topic}"));
    for i in 0..10 {
        frame.push_header(&format!("x-h{i}"), "v");
    }
    frame_refused_after_connect(&gw, frame.with_body("b"), "too many headers (limit 8)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_line_too_long_is_refused() {
    let gw = start_gateway(|_| {}).await;
    assert_eq!(gw.gateway.config.limits.max_header_line, 8 * 1024);
    let topic = unique("longline");
    let value = "v".repeat(9000);
    frame_refused_after_connect(
        &gw,
        Frame::new(Command::Send)
            .with_header("destination", &format!("/topic/{topic}"))
            .with_header("x-long", &value)
            .with_body("b"),
        "header line exceeds 8192 bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_content_length_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("liar");
    let raw = format!("SEND\ndestination:/topic/{topic}\ncontent-length:3\n\nhello\0");
    refused_after_connect(
        &gw,
        raw.as_bytes(),
        false,
        "frame body not terminated by NUL after content-length bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_are_refused() {
    let gw = start_gateway(|c| c.limits.max_subscriptions = 2).await;
    let bystander = Bystander::connect(&gw).await;
    let mut bad = connected(&gw).await;
    bad.subscribe("s1", &format!("/topic/{}", unique("t1")), &[])
        .await;
    bad.subscribe("s2", &format!("/topic/{}", unique("t2")), &[])
        .await;
    bad.send(
        &Frame::new(Command::Subscribe)
            .with_header("id", "s3")
            .with_header("destination", &format!("/topic/{}", unique("t3")))
            .with_header("receipt", "sub-s3"),
    )
    .await;
    let error = bad.expect_error("too many subscriptions").await;
    assert!(error_message(&error).contains("limit 2"));
    // The refused frame asked for a receipt: the ERROR names it.
    assert_eq!(error.header("receipt-id").as_deref(), Some("sub-s3"));
    bystander.still_works().await;
}

// ---- broker refusals -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_nonexistent_exchange_gets_error_not_receipt() {
    let gw = start_gateway(|_| {}).await;
    let bystander = Bystander::connect(&gw).await;
    let mut bad = connected(&gw).await;
    let exchange = unique("no-such-exchange");
    bad.send(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/exchange/{exchange}/k"))
            .with_header("receipt", "r-missing")
            .with_body("into the void"),
    )
    .await;
    let error = bad.expect(Command::Error).await;
    let message = error_message(&error);
    // As RabbitMQ writes it: the AMQP error's name, the broker's text.
    assert_eq!(message, "not_found");
    assert!(
        error_body(&error).starts_with("NOT_FOUND - no exchange"),
        "ERROR body {:?} does not say the exchange is missing",
        error_body(&error)
    );
    assert_eq!(error.header("receipt-id").as_deref(), Some("r-missing"));
    // Nothing after the ERROR (in particular no RECEIPT), then the close.
    match bad.recv_within(Duration::from_secs(10)).await {
        Recv::Closed => {}
        Recv::Frame(f) => panic!(
            "after ERROR {message:?} expected the close, got {} {:?}",
            f.command,
            f.headers().collect::<Vec<_>>()
        ),
        Recv::Timeout => panic!("connection was not closed"),
    }
    bystander.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_nonexistent_exchange_gets_error() {
    // Without a receipt: the ERROR alone says the exchange does not exist.
    let gw = start_gateway(|_| {}).await;
    let bystander = Bystander::connect(&gw).await;
    let mut bad = connected(&gw).await;
    let exchange = unique("no-such-exchange");
    bad.send(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/exchange/{exchange}/k"))
            .with_body("into the void"),
    )
    .await;
    let error = bad.expect_error("not_found").await;
    assert_eq!(error_message(&error), "not_found");
    assert!(error_body(&error).contains("no exchange"));
    bystander.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_nonexistent_exchange_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let exchange = unique("no-such-exchange");
    let error = frame_refused_after_connect(
        &gw,
        Frame::new(Command::Subscribe)
            .with_header("id", "s1")
            .with_header("destination", &format!("/exchange/{exchange}"))
            .with_header("receipt", "r-sub"),
        "not_found",
    )
    .await;
    assert!(error_body(&error).contains(&exchange));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_queue_with_different_arguments_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("preconditions");
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare the queue with x-max-length 10");

    let gw = Arc::new(gw);
    let q = queue.clone();
    let gw2 = Arc::clone(&gw);
    // Run the STOMP part in a task so that the queue is deleted even when an
    // assertion fails.
    let outcome = tokio::spawn(async move {
        frame_refused_after_connect(
            &gw2,
            Frame::new(Command::Subscribe)
                .with_header("id", "s1")
                .with_header("destination", &format!("/queue/{q}"))
                .with_header("x-max-length", "20"),
            "precondition_failed",
        )
        .await
    })
    .await;

    let cleanup = conn.create_channel().await.expect("channel");
    cleanup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the queue");
    let _ = conn.close(200, "bye".into()).await;
    match outcome {
        Ok(error) => {
            assert_eq!(error_message(&error), "precondition_failed");
            assert!(error_body(&error).contains("x-max-length"));
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_nonexistent_amq_queue_is_refused() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("no-such-queue");
    let error = frame_refused_after_connect(
        &gw,
        Frame::new(Command::Subscribe)
            .with_header("id", "s1")
            .with_header("destination", &format!("/amq/queue/{queue}")),
        "not_found",
    )
    .await;
    assert!(error_body(&error).contains(&queue));
    // The gateway declared nothing.
    assert!(!list_queues().iter().any(|(name, _)| name == &queue));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_while_the_broker_is_unreachable_is_refused() {
    // A gateway whose AMQP URL points at a closed port: clients can connect,
    // but anything that needs the broker gets an ERROR.
    let gw = start_gateway_unready(|c| c.amqp.url = "amqp://127.0.0.1:1/%2f".to_owned()).await;
    let addr = gw.addr;
    let url = format!("ws://{addr}/ws");
    let (mut client, _) = StompClient::connect(&url, "1.2").await;
    client
        .send(
            &Frame::new(Command::Subscribe)
                .with_header("id", "s1")
                .with_header("destination", &format!("/topic/{}", unique("down"))),
        )
        .await;
    client.expect_error("broker unavailable").await;
}

// ---- acknowledgements ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_unknown_message_id_is_refused() {
    let gw = start_gateway(|_| {}).await;
    frame_refused_after_connect(
        &gw,
        Frame::new(Command::Ack).with_header("id", "T_nope@@42"),
        "ACK for unknown message id 'T_nope@@42'",
    )
    .await;
    frame_refused_after_connect(
        &gw,
        Frame::new(Command::Ack).with_header("id", "garbage"),
        "'garbage' is not a message id of this session",
    )
    .await;
    // Issue 10: without the id header (1.2), an ERROR (not silence).
    let error = frame_refused_after_connect(&gw, Frame::new(Command::Nack), "Missing header").await;
    assert_eq!(
        error_body(&error),
        "\"NACK\" must include the \"id\" header\n"
    );
}

// ---- timeouts --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_gets_connect_timeout() {
    let gw = start_gateway(|c| c.limits.connect_timeout_ms = 500).await;
    let bystander = Bystander::connect(&gw).await;
    let started = Instant::now();
    let mut silent = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    let error = silent.expect(Command::Error).await;
    let message = error_message(&error);
    assert_eq!(message, "no CONNECT frame within 500 ms");
    let at_error = started.elapsed();
    assert!(
        at_error >= Duration::from_millis(400),
        "ERROR came too early: {at_error:?}"
    );
    match silent.recv_within(Duration::from_secs(3)).await {
        Recv::Closed => {}
        other => panic!("expected the close within 3 s of the ERROR, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );
    // The connected bystander is not subject to the CONNECT timeout.
    bystander.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_too_fast_is_cut_off() {
    let gw = start_gateway(|c| {
        c.security.max_frames_per_second = 20;
        c.security.rate_limit_policy = stompgate::config::RateLimitPolicy::Disconnect;
    })
    .await;
    let bystander = Bystander::connect(&gw).await;
    let mut flood = connected(&gw).await;
    // The bucket holds a burst of 40; 200 frames in one go overflow it.
    let mut burst = Vec::new();
    for _ in 0..200 {
        burst.extend_from_slice(b"BEGIN\ntransaction:t\n\n\0ABORT\ntransaction:t\n\n\0");
    }
    flood.send_bytes(burst, false).await;
    let error = flood.expect(Command::Error).await;
    let message = error_message(&error);
    assert!(message.contains("rate limit exceeded"), "{message}");
    flood.expect_closed().await;
    // A client within the rate is not affected.
    let mut calm = connected(&gw).await;
    for i in 0..10 {
        calm.send(
            &Frame::new(Command::Begin)
                .with_header("transaction", &format!("t{i}"))
                .with_header("receipt", &format!("r{i}")),
        )
        .await;
        calm.expect(Command::Receipt).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    bystander.still_works().await;
}
