//! Issue 10: the behaviours clients written for RabbitMQ's Web-STOMP rely
//! on, against the real RabbitMQ on 127.0.0.1:5672 (tests/stomppy.rs runs the
//! same cases with stomp.py; scripts/compare-webstomp.sh runs them against
//! Web-STOMP itself).

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use stompgate::stomp::{encode_frame, Command, Escaping, Frame};
use tokio_tungstenite::tungstenite::Message;

// ---- item 1: heart-beats ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_beats_follow_what_the_client_asks() {
    let gw = start_gateway(|_| {}).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url())
        .await
        .expect("handshake");
    ws.send(Message::Text(
        "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:1000,1000\n\n\0".into(),
    ))
    .await
    .expect("send");
    let connected = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected CONNECTED, got {other:?}"),
    };
    assert!(
        connected.contains("\nheart-beat:1000,1000\n"),
        "as Web-STOMP, 1000,1000 is answered 1000,1000: {connected:?}"
    );
    // About one heart-beat a second from the gateway, while the client
    // keeps sending its own.
    let started = Instant::now();
    let mut beats = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        ws.send(Message::Text("\n".into())).await.expect("beat");
        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "\n" => beats += 1,
            Ok(other) => panic!("expected heart-beats only, got {other:?}"),
        }
    }
    assert!((2..=5).contains(&beats), "{beats} heart-beats in 3.5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_states_heart_beats_in_every_version() {
    let gw = start_gateway(|_| {}).await;
    for version in ["1.0", "1.1", "1.2"] {
        let (client, connected) = StompClient::connect(&gw.ws_url(), version).await;
        assert_eq!(
            connected.header("heart-beat").as_deref(),
            Some("0,0"),
            "{version}"
        );
        client.disconnect().await;
    }
}

// ---- item 3: NACK -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_accepted_in_stomp_1_0_with_message_id() {
    let gw = start_gateway(|_| {}).await;
    let queue = format!("/queue/{}", unique("nack10"));
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.0").await;
    c.escaping = Escaping::None;
    c.subscribe("s", &queue, &[("ack", "client")]).await;
    c.send(&send_frame(&queue, "again")).await;
    let first = c.expect(Command::Message).await;
    assert_eq!(first.header("redelivered").as_deref(), Some("false"));
    let id = first.header("message-id").expect("message-id").into_owned();
    c.send(&Frame::new(Command::Nack).with_header("message-id", &id))
        .await;
    let again = c.expect(Command::Message).await;
    assert_eq!(body(&again), "again");
    assert_eq!(again.header("redelivered").as_deref(), Some("true"));
    let id = again.header("message-id").expect("message-id").into_owned();
    c.send(&Frame::new(Command::Ack).with_header("message-id", &id))
        .await;
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_in_client_mode_redelivers_all_earlier_and_requeue_is_case_insensitive() {
    let gw = start_gateway(|_| {}).await;
    let queue = format!("/queue/{}", unique("nackmulti"));
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("s", &queue, &[("ack", "client"), ("prefetch-count", "5")])
        .await;
    for i in 0..3 {
        c.send(&send_frame(&queue, &format!("m{i}"))).await;
    }
    let mut acks = Vec::new();
    for i in 0..3 {
        let m = c.expect(Command::Message).await;
        assert_eq!(body(&m), format!("m{i}"));
        assert_eq!(m.header("redelivered").as_deref(), Some("false"));
        acks.push(m.header("ack").expect("ack").into_owned());
    }
    // Cumulative: a NACK of the last one gives back all three.
    c.send(&Frame::new(Command::Nack).with_header("id", &acks[2]))
        .await;
    let mut again = Vec::new();
    for _ in 0..3 {
        let m = c.expect(Command::Message).await;
        assert_eq!(m.header("redelivered").as_deref(), Some("true"));
        again.push((body(&m), m.header("ack").expect("ack").into_owned()));
    }
    again.sort();
    assert_eq!(
        again.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    // requeue:False (RabbitMQ reads it in any case) drops them.
    let last = again.iter().map(|(_, a)| a).max_by_key(|a| {
        a.rsplit("@@")
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    });
    c.send(
        &Frame::new(Command::Nack)
            .with_header("id", last.expect("an ack id"))
            .with_header("requeue", "False")
            .with_header("receipt", "dropped"),
    )
    .await;
    let receipt = c.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("dropped"));
    assert!(matches!(
        c.recv_within(Duration::from_millis(800)).await,
        Recv::Timeout
    ));
    c.disconnect().await;
}

// ---- item 6: redelivered ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_is_always_present() {
    let gw = start_gateway(|_| {}).await;
    let queue = format!("/queue/{}", unique("redeliv"));
    let topic = format!("/topic/{}", unique("redeliv"));
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("q", &queue, &[]).await;
    c.subscribe("t", &topic, &[]).await;
    c.send(&send_frame(&queue, "q")).await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.header("redelivered").as_deref(), Some("false"));
    c.send(&send_frame(&topic, "t")).await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.header("redelivered").as_deref(), Some("false"));
    c.disconnect().await;
}

// ---- item 7: transactions ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_receipt_in_a_transaction_waits_for_commit_and_confirm() {
    let gw = start_gateway(|_| {}).await;
    let queue = format!("/queue/{}", unique("txr"));
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("s", &queue, &[]).await;
    c.send(&Frame::new(Command::Begin).with_header("transaction", "t"))
        .await;
    c.send(
        &send_frame(&queue, "in tx")
            .with_header("transaction", "t")
            .with_header("receipt", "r-send"),
    )
    .await;
    match c.recv_within(Duration::from_millis(700)).await {
        Recv::Timeout => {}
        Recv::Frame(f) => panic!(
            "nothing may come before COMMIT, got {} {:?}",
            f.command,
            f.header("receipt-id")
        ),
        Recv::Closed => panic!("closed"),
    }
    c.send(
        &Frame::new(Command::Commit)
            .with_header("transaction", "t")
            .with_header("receipt", "r-commit"),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let f = c.recv().await;
        seen.push(match f.command {
            Command::Receipt => f.header("receipt-id").unwrap_or_default().into_owned(),
            Command::Message => format!("MESSAGE {}", body(&f)),
            other => panic!("unexpected {other}"),
        });
    }
    seen.sort();
    assert_eq!(seen, ["MESSAGE in tx", "r-commit", "r-send"]);
    c.disconnect().await;
}

// ---- item 8: queue arguments ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declared_by_a_backend_with_x_expires_is_equivalent() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("backend-args");
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    // As a Java or Python backend declares them: 32-bit integers.
    args.insert("x-expires".into(), AMQPValue::LongInt(70_000));
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare");
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe(
        "s",
        &format!("/queue/{queue}"),
        &[("x-expires", "70000"), ("x-max-length", "10")],
    )
    .await;
    c.send(&send_frame(&format!("/amq/queue/{queue}"), "typed"))
        .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(body(&m), "typed");
    c.disconnect().await;
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_a_send_declares_has_the_send_s_arguments() {
    // RabbitMQ's suite, queue_properties.test_send: a SEND with x-* queue
    // headers to a missing /queue/ declares it with those arguments, typed,
    // so that a backend declaring it with the same values (pika: 32-bit
    // integers) is equivalent. Other x-* headers are not arguments.
    let gw = start_gateway(|_| {}).await;
    let queue = unique("send-args");
    let _cleanup = QueueCleanup(queue.clone());
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let mut send = send_frame(&format!("/queue/{queue}"), "test1")
        .with_header("x-message-ttl", "60000")
        .with_header("x-expires", "70000")
        .with_header("x-max-length", "10")
        .with_header("x-max-length-bytes", "20000")
        .with_header("x-dead-letter-exchange", "dead-letter-exchange")
        .with_header("x-dead-letter-routing-key", "dead-letter-routing-key")
        .with_header("x-max-priority", "6")
        .with_header("x-custom-header-1", "value1")
        .with_header("receipt", "r");
    send.push_header("content-type", "text/plain");
    c.send(&send).await;
    let receipt = c.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("r"));
    c.disconnect().await;

    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    args.insert("x-expires".into(), AMQPValue::LongInt(70_000));
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongInt(20_000));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dead-letter-exchange".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("dead-letter-routing-key".into()),
    );
    args.insert("x-max-priority".into(), AMQPValue::LongInt(6));
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("the backend's declaration is equivalent to the SEND's");
    assert_eq!(declared.message_count(), 1);
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_raw_1_0_subscribers_of_an_amq_topic_key_both_get_the_message() {
    // RabbitMQ's suite, parsing.test_broadcast, without its wait for one
    // binding per subscriber (stompgate binds a topic once per replica,
    // docs/protocol.md): what the test then checks.
    let gw = start_gateway(|_| {}).await;
    let key = unique("da9d4779").replace('-', "");
    let connect = "CONNECT\nlogin:guest\npasscode:guest\n\n\n\0";
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = StompClient::open(&gw.ws_url(), &["v10.stomp", "v11.stomp", "v12.stomp"]).await;
        c.send_bytes(connect.as_bytes().to_vec(), false).await;
        let connected = c.expect(Command::Connected).await;
        assert_eq!(connected.header("version").as_deref(), Some("1.0"));
        c.escaping = Escaping::None;
        clients.push(c);
    }
    for c in &mut clients[1..] {
        // As the suite sends it: no receipt, an id with a leading space.
        let subscribe = format!(
            "SUBSCRIBE\nid: XsKNhAf\ndestination:/exchange/amq.topic/{key}\nreceipt:sub\n\n\0"
        );
        c.send_bytes(subscribe.into_bytes(), false).await;
        c.expect(Command::Receipt).await;
    }
    let send = format!(
        "SEND\ncontent-type:text/plain\ndestination:/exchange/amq.topic/{key}\n\nmessage\n\0"
    );
    clients[0].send_bytes(send.into_bytes(), false).await;
    for c in &mut clients[1..] {
        let m = c.expect(Command::Message).await;
        assert_eq!(
            m.header("destination").as_deref(),
            Some(format!("/topic/{key}").as_str())
        );
        assert_eq!(m.header("redelivered").as_deref(), Some("false"));
        assert_eq!(m.header("content-type").as_deref(), Some("text/plain"));
        assert_eq!(m.header("content-length").as_deref(), Some("8"));
        assert_eq!(&m.body[..], b"message\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_by_x_queue_type() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("quorum");
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe(
        "s",
        &format!("/queue/{queue}"),
        &[("x-queue-type", "quorum"), ("ack", "client-individual")],
    )
    .await;
    c.send(&send_frame(&format!("/amq/queue/{queue}"), "q"))
        .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(body(&m), "q");
    c.send(&Frame::new(Command::Ack).with_header("id", &m.header("ack").expect("ack")))
        .await;
    c.disconnect().await;
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

// ---- item 11: large messages ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mib_reach_two_topic_subscribers_with_default_limits() {
    let gw = start_gateway(|_| {}).await;
    let topic = format!("/topic/{}", unique("large"));
    let (mut a, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let (mut b, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    a.subscribe("s", &topic, &[]).await;
    b.subscribe("s", &topic, &[]).await;
    let (mut p, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let big = "x".repeat(16 * 1024 * 1024);
    p.send(&send_frame(&topic, &big).with_header("receipt", "big"))
        .await;
    let r = p.expect(Command::Receipt).await;
    assert_eq!(r.header("receipt-id").as_deref(), Some("big"));
    for c in [&mut a, &mut b] {
        let m = c.expect(Command::Message).await;
        assert_eq!(m.body.len(), 16 * 1024 * 1024);
    }
}

// ---- item 12: fast publishers ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sends_then_disconnect_are_all_published() {
    let gw = start_gateway(|_| {}).await;
    let queue = format!("/queue/{}", unique("fast"));
    let (mut counter, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    counter.subscribe("c", &queue, &[]).await;
    let (mut p, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    // As fast as it can: 100 WebSocket messages of 100 SENDs, then DISCONNECT.
    for batch in 0..100 {
        let mut buf = bytes::BytesMut::new();
        for i in 0..100 {
            encode_frame(
                &send_frame(&queue, &format!("m{}", batch * 100 + i)),
                Escaping::V12,
                &mut buf,
            );
        }
        p.send_bytes(buf.freeze(), false).await;
    }
    p.send(&Frame::new(Command::Disconnect).with_header("receipt", "bye"))
        .await;
    // At the default 1000 frames/s (bursts of 2000) the gateway reads the
    // 10,000 SENDs in about 8 s: slowed, not cut off.
    let receipt = match p.recv_within(Duration::from_secs(90)).await {
        Recv::Frame(f) => f,
        other => panic!("expected DISCONNECT's receipt, got {other:?}"),
    };
    assert_eq!(receipt.command, Command::Receipt);
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("bye"));
    p.expect_closed().await;
    let mut got = 0;
    while got < 10_000 {
        match counter.recv_within(Duration::from_secs(20)).await {
            Recv::Frame(f) if f.command == Command::Message => got += 1,
            other => panic!("after {got} messages: {other:?}"),
        }
    }
    counter.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_then_disconnect_in_one_message_is_published_and_receipted() {
    let gw = start_gateway(|_| {}).await;
    let queue = format!("/queue/{}", unique("lastword"));
    let (mut counter, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    counter.subscribe("c", &queue, &[]).await;
    let (mut p, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let mut buf = bytes::BytesMut::new();
    encode_frame(
        &send_frame(&queue, "last words").with_header("receipt", "last"),
        Escaping::V12,
        &mut buf,
    );
    encode_frame(
        &Frame::new(Command::Disconnect).with_header("receipt", "bye"),
        Escaping::V12,
        &mut buf,
    );
    p.send_bytes(buf.freeze(), false).await;
    let r = p.expect(Command::Receipt).await;
    assert_eq!(r.header("receipt-id").as_deref(), Some("last"));
    let r = p.expect(Command::Receipt).await;
    assert_eq!(r.header("receipt-id").as_deref(), Some("bye"));
    p.expect_closed().await;
    let m = counter.expect(Command::Message).await;
    assert_eq!(body(&m), "last words");
    counter.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_client_is_throttled_by_default_not_cut_off() {
    let gw = start_gateway(|c| c.security.max_frames_per_second = 50).await;
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let mut burst = Vec::new();
    for _ in 0..100 {
        burst.extend_from_slice(b"BEGIN\ntransaction:t\n\n\0ABORT\ntransaction:t\n\n\0");
    }
    let started = Instant::now();
    c.send_bytes(burst, false).await;
    c.send(
        &Frame::new(Command::Begin)
            .with_header("transaction", "x")
            .with_header("receipt", "done"),
    )
    .await;
    let r = c.expect(Command::Receipt).await;
    assert_eq!(r.header("receipt-id").as_deref(), Some("done"));
    // 201 frames at 50/s with a burst of 100: about 2 s, not an ERROR.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not throttled: {:?}",
        started.elapsed()
    );
    c.disconnect().await;
}

// ---- items 9 and 10, side by side with Web-STOMP ------------------------------

/// What a client saw after `connect` and, once connected, `then`.
async fn observe(url: &str, connect: &Frame, then: Option<&Frame>) -> String {
    let mut client = StompClient::open(url, &["v12.stomp"]).await;
    client.send(connect).await;
    let describe = |r: Recv| match r {
        Recv::Frame(f) if f.command == Command::Error => format!(
            "ERROR message={:?} body={:?}",
            f.header("message").unwrap_or_default(),
            body(&f)
        ),
        Recv::Frame(f) => f.command.to_string(),
        Recv::Closed => "closed without ERROR".to_owned(),
        Recv::Timeout => "nothing within 5 s".to_owned(),
    };
    let first = client.recv_within(Duration::from_secs(5)).await;
    let connected = matches!(&first, Recv::Frame(f) if f.command == Command::Connected);
    let (Some(then), true) = (then, connected) else {
        return describe(first);
    };
    client.send(then).await;
    describe(client.recv_within(Duration::from_secs(5)).await)
}

/// The vhost and permission scenarios against RabbitMQ's own Web-STOMP (a
/// private node with the management plugin) and against stompgate in
/// `auth.mode = "rabbitmq"` on the same node: the ERRORs must be the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_and_permission_errors_are_web_stomp_s() {
    let node = PrivateNode::start_with_plugins(
        "stompgate-vhauth",
        5741,
        "rabbitmq_stomp,rabbitmq_web_stomp,rabbitmq_management",
    );
    node.ctl(&["add_vhost", "closed"]);
    node.ctl(&["set_permissions", "-p", "closed", "guest", ".*", ".*", ".*"]);
    node.ctl(&["add_user", "limited", "pw"]);
    node.ctl(&[
        "set_permissions",
        "-p",
        "/",
        "limited",
        "^(ok-.*|stomp-subscription-.*)$",
        "^(ok-.*|stomp-subscription-.*)$",
        "^(ok-.*|stomp-subscription-.*|amq\\.topic)$",
    ]);
    node.ctl(&["add_user", "topical", "pw"]);
    node.ctl(&["set_permissions", "-p", "/", "topical", ".*", ".*", ".*"]);
    node.ctl(&[
        "set_topic_permissions",
        "-p",
        "/",
        "topical",
        "amq.topic",
        "^{username}\\.",
        "^public\\.",
    ]);
    let amqp_url = node.amqp_url();
    let management = format!("http://127.0.0.1:{}", node.management_port());
    let gw = start_gateway(|c| {
        c.amqp.url = amqp_url;
        c.amqp.vhosts = vec!["closed".into()];
        c.auth.mode = stompgate::config::AuthMode::Rabbitmq;
        c.auth.anonymous = false;
        c.auth.rabbitmq.management_url = management;
    })
    .await;

    let connect = |login: &str, passcode: &str, host: &str| {
        Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", host)
            .with_header("login", login)
            .with_header("passcode", passcode)
            .with_header("heart-beat", "0,0")
    };
    let subscribe = |destination: &str| {
        Frame::new(Command::Subscribe)
            .with_header("id", "s")
            .with_header("destination", destination)
            .with_header("receipt", "r")
    };
    let send = |destination: &str| {
        Frame::new(Command::Send)
            .with_header("destination", destination)
            .with_header("receipt", "r")
            .with_body("x")
    };
    let scenarios: Vec<(&str, Frame, Option<Frame>)> = vec![
        ("good login", connect("guest", "guest", "/"), None),
        ("bad passcode", connect("guest", "wrong", "/"), None),
        (
            "unknown vhost",
            connect("guest", "guest", "no-such-vhost"),
            None,
        ),
        (
            "vhost without permissions",
            connect("limited", "pw", "closed"),
            None,
        ),
        (
            "SUBSCRIBE /queue, configure refused",
            connect("limited", "pw", "/"),
            Some(subscribe("/queue/not-ok")),
        ),
        (
            "SUBSCRIBE /queue, allowed",
            connect("limited", "pw", "/"),
            Some(subscribe("/queue/ok-compat")),
        ),
        (
            "SUBSCRIBE /exchange, read on the exchange refused",
            connect("limited", "pw", "/"),
            Some(subscribe("/exchange/amq.direct/k")),
        ),
        (
            "SEND /topic, write refused",
            connect("limited", "pw", "/"),
            Some(send("/topic/k")),
        ),
        (
            "SUBSCRIBE /topic, topic read refused",
            connect("topical", "pw", "/"),
            Some(subscribe("/topic/secret.news")),
        ),
        (
            "SUBSCRIBE /topic, topic read allowed",
            connect("topical", "pw", "/"),
            Some(subscribe("/topic/public.news")),
        ),
        (
            "SEND /topic, topic write refused",
            connect("topical", "pw", "/"),
            Some(send("/topic/other.status")),
        ),
        (
            "SEND /topic, topic write allowed",
            connect("topical", "pw", "/"),
            Some(send("/topic/topical.status")),
        ),
    ];
    let mut differences = Vec::new();
    for (name, connect, then) in &scenarios {
        let web_stomp = observe(&node.web_stomp_url(), connect, then.as_ref()).await;
        let stompgate = observe(&gw.ws_url(), connect, then.as_ref()).await;
        println!("{name}:\n  Web-STOMP: {web_stomp}\n  stompgate: {stompgate}");
        // Kept difference (docs/protocol.md): Web-STOMP 3.10 drops the
        // connection on a refused permission before its ERROR goes out;
        // stompgate sends that ERROR (the text RabbitMQ logs), then closes.
        let improvement = web_stomp == "closed without ERROR"
            && stompgate.starts_with("ERROR message=\"access_refused\" body=")
            && stompgate.contains("refused for user");
        if web_stomp != stompgate && !improvement {
            differences.push(format!(
                "{name}: Web-STOMP {web_stomp} / stompgate {stompgate}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "differences from Web-STOMP:\n{}",
        differences.join("\n")
    );
}
