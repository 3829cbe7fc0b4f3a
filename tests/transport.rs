//! The WebSocket side and the framing: subprotocol negotiation, the three
//! STOMP versions, several frames per WebSocket message and one frame over
//! several, heart-beats, text versus binary messages, the health endpoints
//! and DISCONNECT.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use stompgate::stomp::{encode_frame, Command, Escaping, Frame};
use tokio_tungstenite::tungstenite::Message;

/// Publishes `body` to `amq.topic` with routing key `key` over a fresh AMQP
/// connection, with `props`.
async fn publish_to_topic(key: &str, body: &[u8], props: BasicProperties) {
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(&ch, "amq.topic", key, body, props).await;
    let _ = conn.close(200, "bye".into()).await;
}

// ---- subprotocol negotiation -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_is_one_of_those_offered() {
    let gw = start_gateway(|_| {}).await;
    let offered = ["v12.stomp", "v11.stomp", "v10.stomp"];
    let client = StompClient::open(&gw.ws_url(), &offered).await;
    let protocol = client.protocol.clone().expect("a Sec-WebSocket-Protocol");
    assert!(
        offered.contains(&protocol.as_str()),
        "unexpected protocol {protocol:?}"
    );
    drop(client);

    let client = StompClient::open(&gw.ws_url(), &["v11.stomp"]).await;
    assert_eq!(client.protocol.as_deref(), Some("v11.stomp"));
    drop(client);

    let client = StompClient::open(&gw.ws_url(), &["v10.stomp"]).await;
    assert_eq!(client.protocol.as_deref(), Some("v10.stomp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subprotocol_and_stomp_py_style_connect_negotiates_1_1() {
    // unknown_host = "default": `host` is ignored (Web-STOMP, and stompgate
    // by default, would refuse a vhost named after the machine).
    let gw = start_gateway(|c| c.unknown_host = stompgate::config::UnknownHost::Default).await;
    let mut client = StompClient::open(&gw.ws_url(), &[]).await;
    assert_eq!(client.protocol, None);
    // stomp.py 1.1 sends the machine's hostname as `host`.
    let connected = client
        .connect_with(
            Frame::new(Command::Connect)
                .with_header("accept-version", "1.0,1.1")
                .with_header("host", "myhost.local")
                .with_header("heart-beat", "0,0"),
        )
        .await;
    assert_eq!(connected.header("version").as_deref(), Some("1.1"));
    assert!(connected.header("session").is_some());
    assert!(connected.header("heart-beat").is_some());
    let topic = unique("py");
    client
        .subscribe("s1", &format!("/topic/{topic}"), &[])
        .await;
    publish_to_topic(&topic, b"hello 1.1", BasicProperties::default()).await;
    let msg = client.expect(Command::Message).await;
    assert_eq!(&msg.body[..], b"hello 1.1");
    client.disconnect().await;
}

// ---- STOMP 1.0 -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_1_0_client() {
    let gw = start_gateway(|_| {}).await;
    let mut client = StompClient::open(&gw.ws_url(), &["v10.stomp"]).await;
    let connected = client
        .connect_with(Frame::new(Command::Connect).with_header("login", "guest"))
        .await;
    assert_eq!(connected.header("version").as_deref(), Some("1.0"));
    assert_eq!(client.escaping, Escaping::None);

    // SUBSCRIBE without id: the destination is the subscription's id.
    let topic = unique("one-oh");
    let destination = format!("/topic/{topic}");
    client
        .send(
            &Frame::new(Command::Subscribe)
                .with_header("destination", &destination)
                .with_header("receipt", "sub"),
        )
        .await;
    let receipt = client.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("sub"));

    publish_to_topic(&topic, b"from amqp", BasicProperties::default()).await;
    let msg = client.expect(Command::Message).await;
    assert_eq!(
        msg.header("destination").as_deref(),
        Some(destination.as_str())
    );
    assert_eq!(
        msg.header("subscription").as_deref(),
        Some(destination.as_str())
    );
    assert_eq!(&msg.body[..], b"from amqp");

    // A ':' in a header value travels raw in 1.0, both ways.
    let raw = format!(
        "SEND\ndestination:{destination}\nx-url:http://example.com:8080/a\nreceipt:r1\n\nraw colons\0"
    );
    client.send_bytes(raw.into_bytes(), false).await;
    let mut got_receipt = false;
    let mut got_message = None;
    while !(got_receipt && got_message.is_some()) {
        let frame = client.recv().await;
        match frame.command {
            Command::Receipt => {
                assert_eq!(frame.header("receipt-id").as_deref(), Some("r1"));
                got_receipt = true;
            }
            Command::Message => got_message = Some(frame),
            other => panic!("unexpected {other}"),
        }
    }
    let msg = got_message.expect("message");
    assert_eq!(
        msg.header("x-url").as_deref(),
        Some("http://example.com:8080/a")
    );
    assert_eq!(&msg.body[..], b"raw colons");

    // UNSUBSCRIBE by destination (1.0 has no id): nothing more arrives.
    client
        .send(
            &Frame::new(Command::Unsubscribe)
                .with_header("destination", &destination)
                .with_header("receipt", "unsub"),
        )
        .await;
    let receipt = client.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("unsub"));
    publish_to_topic(&topic, b"too late", BasicProperties::default()).await;
    match client.recv_within(Duration::from_millis(500)).await {
        Recv::Timeout => {}
        other => panic!("expected nothing after UNSUBSCRIBE, got {other:?}"),
    }
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_1_0_headers_are_written_unescaped() {
    // What the 1.0 client gets on the wire: "a:b" raw, no "\c".
    let gw = start_gateway(|_| {}).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url())
        .await
        .expect("handshake");
    ws.send(Message::Text("CONNECT\nlogin:guest\n\n\0".into()))
        .await
        .expect("send");
    let connected = next_text(&mut ws).await;
    assert!(connected.starts_with("CONNECTED\n"), "{connected:?}");
    assert!(connected.contains("version:1.0\n"), "{connected:?}");
    let topic = unique("raw10");
    ws.send(Message::Text(
        format!("SUBSCRIBE\nid:s1\ndestination:/topic/{topic}\nreceipt:r\n\n\0").into(),
    ))
    .await
    .expect("send");
    let receipt = next_text(&mut ws).await;
    assert!(receipt.starts_with("RECEIPT\n"), "{receipt:?}");
    let mut table = FieldTable::default();
    table.insert("x-h".into(), AMQPValue::LongString("a:b".into()));
    publish_to_topic(&topic, b"x", BasicProperties::default().with_headers(table)).await;
    let message = next_text(&mut ws).await;
    assert!(message.starts_with("MESSAGE\n"), "{message:?}");
    assert!(message.contains("\nx-h:a:b\n"), "{message:?}");
}

/// The next non-heart-beat text message of a raw WebSocket, within 10 s.
async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no message within 10 s"),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "\n" => continue,
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_owned(),
            Ok(other) => panic!("expected a text message, got {other:?}"),
        }
    }
}

// ---- STOMP 1.1 escaping --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_1_1_header_escaping_round_trip() {
    let gw = start_gateway(|_| {}).await;
    let (mut client, connected) = StompClient::connect(&gw.ws_url(), "1.1").await;
    assert_eq!(connected.header("version").as_deref(), Some("1.1"));
    assert_eq!(client.escaping, Escaping::V11);
    let topic = unique("esc11");
    client
        .subscribe("s1", &format!("/topic/{topic}"), &[])
        .await;
    let mut table = FieldTable::default();
    table.insert("x-tricky".into(), AMQPValue::LongString("a:b\nc".into()));
    table.insert("x-back".into(), AMQPValue::LongString("c:\\d".into()));
    publish_to_topic(
        &topic,
        b"escaped",
        BasicProperties::default().with_headers(table),
    )
    .await;
    let msg = client.expect(Command::Message).await;
    assert_eq!(msg.header("x-tricky").as_deref(), Some("a:b\nc"));
    assert_eq!(msg.header("x-back").as_deref(), Some("c:\\d"));
    // The escaped form is what went over the wire.
    let raw = msg
        .headers
        .iter()
        .find(|h| &h.name[..] == b"x-tricky")
        .expect("x-tricky");
    assert_eq!(&raw.value[..], b"a\\cb\\nc");

    // And back: a 1.1 SEND with the same header reaches a subscriber intact.
    client
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", &format!("/topic/{topic}"))
                .with_header("x-tricky", "a:b\nc")
                .with_body("back"),
        )
        .await;
    let msg = client.expect(Command::Message).await;
    assert_eq!(&msg.body[..], b"back");
    assert_eq!(msg.header("x-tricky").as_deref(), Some("a:b\nc"));
    client.disconnect().await;
}

// ---- framing over WebSocket messages -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_frames_in_one_websocket_message() {
    let gw = start_gateway(|_| {}).await;
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let topic = unique("batched");
    let destination = format!("/topic/{topic}");
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::new(Command::Subscribe)
            .with_header("id", "s1")
            .with_header("destination", &destination)
            .with_header("receipt", "r-sub"),
        Escaping::V12,
        &mut buf,
    );
    // EOLs between frames are heart-beats, allowed in the same message.
    buf.extend_from_slice(b"\n\r\n");
    encode_frame(
        &Frame::new(Command::Send)
            .with_header("destination", &destination)
            .with_header("receipt", "r-send")
            .with_body("in the same message"),
        Escaping::V12,
        &mut buf,
    );
    let before = client.text_messages;
    client.send_bytes(buf.freeze(), false).await;
    let mut receipts = Vec::new();
    let mut message = None;
    while receipts.len() < 2 || message.is_none() {
        let frame = client.recv().await;
        match frame.command {
            Command::Receipt => receipts.push(
                frame
                    .header("receipt-id")
                    .map(|r| r.into_owned())
                    .unwrap_or_default(),
            ),
            Command::Message => message = Some(frame),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(receipts, ["r-sub", "r-send"]);
    let message = message.expect("message");
    assert_eq!(message.header("subscription").as_deref(), Some("s1"));
    assert_eq!(&message.body[..], b"in the same message");
    assert!(client.text_messages > before);
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_split_over_several_websocket_messages() {
    let gw = start_gateway(|_| {}).await;
    let (mut subscriber, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let topic = unique("split");
    let destination = format!("/topic/{topic}");
    subscriber.subscribe("s1", &destination, &[]).await;

    let (mut sender, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let body: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::new(Command::Send)
            .with_header("destination", &destination)
            .with_header("receipt", "r-split")
            .with_body(body.clone()),
        Escaping::V12,
        &mut buf,
    );
    let bytes = buf.freeze();
    let chunks = bytes.chunks(1024).count();
    assert!(chunks >= 10);
    for chunk in bytes.chunks(1024) {
        sender.send_bytes(chunk.to_vec(), false).await;
    }
    let receipt = sender.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("r-split"));

    let msg = subscriber.expect(Command::Message).await;
    assert_eq!(msg.body.len(), body.len());
    assert_eq!(&msg.body[..], body.as_bytes());
    sender.disconnect().await;
    subscriber.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_line_endings_are_accepted() {
    let gw = start_gateway(|_| {}).await;
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client
        .send_bytes(
            &b"CONNECT\r\naccept-version:1.2\r\nhost:/\r\n\r\n\0"[..],
            false,
        )
        .await;
    let connected = client.expect(Command::Connected).await;
    assert_eq!(connected.header("version").as_deref(), Some("1.2"));
    let topic = unique("crlf");
    let raw = format!(
        "SUBSCRIBE\r\nid:s1\r\ndestination:/topic/{topic}\r\nreceipt:r1\r\n\r\n\0\
         SEND\r\ndestination:/topic/{topic}\r\nx-h:v\r\n\r\ncrlf body\0"
    );
    client.send_bytes(raw.into_bytes(), false).await;
    let receipt = client.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("r1"));
    let msg = client.expect(Command::Message).await;
    assert_eq!(msg.header("x-h").as_deref(), Some("v"));
    assert_eq!(&msg.body[..], b"crlf body");
    client.disconnect().await;
}

// ---- heart-beats -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sends_heartbeats() {
    let gw = start_gateway(|c| {
        c.heartbeat.offer_send_ms = 1000;
        c.heartbeat.min_send_ms = 500;
    })
    .await;
    // A raw WebSocket: the harness client skips heart-beats.
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url())
        .await
        .expect("handshake");
    ws.send(Message::Text(
        "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,1000\n\n\0".into(),
    ))
    .await
    .expect("send");
    let connected = next_text(&mut ws).await;
    assert!(connected.starts_with("CONNECTED\n"), "{connected:?}");
    assert!(
        connected.contains("\nheart-beat:1000,"),
        "CONNECTED does not offer 1000 ms: {connected:?}"
    );

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(3500);
    let mut heartbeats = 0;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "\n" => heartbeats += 1,
            Ok(other) => panic!("expected only heart-beats, got {other:?}"),
        }
    }
    assert!(
        (2..=4).contains(&heartbeats),
        "{heartbeats} heart-beats in 3.5 s at 1000 ms"
    );
    ws.send(Message::Text("DISCONNECT\nreceipt:bye\n\n\0".into()))
        .await
        .expect("send");
    let receipt = next_text(&mut ws).await;
    assert!(receipt.starts_with("RECEIPT\n"), "{receipt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_heartbeat_timeout() {
    let gw = start_gateway(|c| {
        c.heartbeat.want_receive_ms = 500;
        c.heartbeat.grace_factor = 2.0;
    })
    .await;
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    let connected = client
        .connect_with(
            Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("heart-beat", "500,0"),
        )
        .await;
    let started = Instant::now();
    assert!(
        connected
            .header("heart-beat")
            .is_some_and(|h| h.ends_with(",500")),
        "CONNECTED heart-beat {:?}",
        connected.header("heart-beat")
    );
    let error = client.expect(Command::Error).await;
    let message = error
        .header("message")
        .map(|m| m.into_owned())
        .unwrap_or_default();
    assert!(message.contains("no heart-beat"), "{message:?}");
    match client.recv_within(Duration::from_secs(3)).await {
        Recv::Closed => {}
        other => panic!("expected the close, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sending_heartbeats_is_kept() {
    let gw = start_gateway(|c| {
        c.heartbeat.want_receive_ms = 500;
        c.heartbeat.grace_factor = 2.0;
    })
    .await;
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client
        .connect_with(
            Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("heart-beat", "500,0"),
        )
        .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        client.send_bytes(&b"\n"[..], false).await;
        match client.recv_within(Duration::from_millis(300)).await {
            Recv::Timeout => {}
            other => panic!(
                "client sending heart-beats got {other:?} after {:?}",
                started.elapsed()
            ),
        }
    }
    client.disconnect().await;
}

// ---- text and binary messages ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_body_arrives_in_binary_message_and_utf8_in_text() {
    let gw = start_gateway(|_| {}).await;
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let topic = unique("bin");
    client
        .subscribe("s1", &format!("/topic/{topic}"), &[])
        .await;

    let (text0, binary0) = (client.text_messages, client.binary_messages);
    publish_to_topic(&topic, &[0xff, 0x00, 0xfe], BasicProperties::default()).await;
    let msg = client.expect(Command::Message).await;
    assert_eq!(&msg.body[..], &[0xff, 0x00, 0xfe]);
    assert_eq!(msg.header("content-length").as_deref(), Some("3"));
    assert_eq!(client.binary_messages, binary0 + 1);
    assert_eq!(client.text_messages, text0);

    let utf8 = "héllo wörld €";
    publish_to_topic(&topic, utf8.as_bytes(), BasicProperties::default()).await;
    let msg = client.expect(Command::Message).await;
    assert_eq!(&msg.body[..], utf8.as_bytes());
    assert_eq!(client.binary_messages, binary0 + 1);
    assert_eq!(client.text_messages, text0 + 1);

    // A client SEND of a non-UTF-8 body (in a binary WebSocket message)
    // reaches a subscriber byte-exact, in a binary message too.
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/topic/{topic}"))
            .with_body(vec![0x80, 0x00, 0x81, 0xc3]),
        Escaping::V12,
        &mut buf,
    );
    client.send_bytes(buf.freeze(), true).await;
    let msg = client.expect(Command::Message).await;
    assert_eq!(&msg.body[..], &[0x80, 0x00, 0x81, 0xc3]);
    assert_eq!(client.binary_messages, binary0 + 2);
    client.disconnect().await;
}

// ---- health endpoints --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_when_the_broker_is_up() {
    let gw = start_gateway(|_| {}).await;
    let (status, body) = http_get(gw.addr, "/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains("ok"), "{body:?}");
    let (status, body) = http_get(gw.addr, "/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("ready"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_when_the_broker_is_unreachable() {
    // Built by hand: start_gateway waits for readiness.
    let gw = start_gateway_unready(|c| c.amqp.url = "amqp://127.0.0.1:1/%2f".to_owned()).await;
    let (addr, gateway) = (gw.addr, &gw.gateway);
    // Give the pool a few connection attempts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!gateway.bridge.is_ready());
    let (status, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503);
    // Liveness does not depend on the broker.
    let (status, _) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
}

// ---- DISCONNECT ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_with_receipt_gets_receipt_then_close() {
    let gw = start_gateway(|_| {}).await;
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let topic = unique("bye");
    client
        .subscribe("s1", &format!("/topic/{topic}"), &[])
        .await;
    client
        .send(&Frame::new(Command::Disconnect).with_header("receipt", "see-you"))
        .await;
    let receipt = client.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("see-you"));
    client.expect_closed().await;

    // A SEND right before DISCONNECT is confirmed before the RECEIPT.
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let (mut watcher, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    watcher
        .subscribe("w", &format!("/topic/{topic}"), &[])
        .await;
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/topic/{topic}"))
            .with_body("last words"),
        Escaping::V12,
        &mut buf,
    );
    encode_frame(
        &Frame::new(Command::Disconnect).with_header("receipt", "bye"),
        Escaping::V12,
        &mut buf,
    );
    client.send_bytes(buf.freeze(), false).await;
    let receipt = client.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("bye"));
    client.expect_closed().await;
    let msg = watcher.expect(Command::Message).await;
    assert_eq!(&msg.body[..], b"last words");
    watcher.disconnect().await;
}
