//! End-to-end messaging through the real RabbitMQ: AMQP publish -> MESSAGE,
//! SEND -> AMQP consume, receipts, acknowledgements, transactions.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use stompgate::stomp::{Command, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_reaches_topic_subscriber_with_properties() {
    let gw = start_gateway(|_| {}).await;
    let (mut client, connected) = StompClient::connect(&gw.ws_url(), "1.0,1.1,1.2").await;
    assert_eq!(connected.header("version").as_deref(), Some("1.2"));
    let topic = unique("prices");
    client
        .subscribe("s1", &format!("/topic/{topic}"), &[])
        .await;

    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let mut table = FieldTable::default();
    table.insert("x-shop".into(), AMQPValue::LongString("42".into()));
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("corr-1".into())
        .with_message_id("m-1".into())
        .with_headers(table);
    publish(&ch, "amq.topic", &topic, br#"{"eur":1.08}"#, props).await;

    let msg = client.expect(Command::Message).await;
    assert_eq!(msg.header("subscription").as_deref(), Some("s1"));
    assert_eq!(
        msg.header("destination").as_deref(),
        Some(format!("/topic/{topic}").as_str())
    );
    assert_eq!(
        msg.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(msg.header("correlation-id").as_deref(), Some("corr-1"));
    assert_eq!(msg.header("amqp-message-id").as_deref(), Some("m-1"));
    assert_eq!(msg.header("x-shop").as_deref(), Some("42"));
    assert!(msg.header("message-id").is_some());
    assert_eq!(&msg.body[..], br#"{"eur":1.08}"#);
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_consumed_over_amqp_with_headers_and_receipt() {
    let gw = start_gateway(|_| {}).await;
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let exchange = unique("orders");
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    ch.queue_bind(
        queue.name().clone(),
        exchange.as_str().into(),
        "merchant.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let mut consumer = consume_no_ack(&ch, queue.name().as_str(), "").await;

    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    client
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", &format!("/exchange/{exchange}/merchant.7"))
                .with_header("content-type", "text/plain")
                .with_header("persistent", "true")
                .with_header("priority", "3")
                .with_header("x-order", "a:b\\c")
                .with_header("receipt", "r1")
                .with_body("new order\0with NUL"),
        )
        .await;
    let receipt = client.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("r1"));

    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("delivery in time")
        .expect("stream")
        .expect("delivery");
    assert_eq!(delivery.routing_key.as_str(), "merchant.7");
    assert_eq!(&delivery.data[..], b"new order\0with NUL");
    let props = &delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(props.priority(), &Some(3));
    let table = props.headers().as_ref().expect("headers table");
    match table.inner().get("x-order") {
        Some(AMQPValue::LongString(s)) => assert_eq!(s.as_bytes(), b"a:b\\c"),
        other => panic!("x-order header: {other:?}"),
    }
    client.disconnect().await;
}

/// Publishes `n` messages "m0".."m{n-1}" to queue `queue` over AMQP.
async fn fill_queue(queue: &str, n: usize) {
    declare_durable_queue(queue).await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    for i in 0..n {
        publish(
            &ch,
            "",
            queue,
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_individual_ack_and_nack_follow_the_broker() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("jobs");
    fill_queue(&queue, 3).await;

    let (mut a, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    a.subscribe(
        "q",
        &format!("/queue/{queue}"),
        &[("ack", "client-individual"), ("prefetch-count", "10")],
    )
    .await;
    let m0 = a.expect(Command::Message).await;
    let m1 = a.expect(Command::Message).await;
    let m2 = a.expect(Command::Message).await;
    assert_eq!(
        (body(&m0), body(&m1), body(&m2)),
        ("m0".into(), "m1".into(), "m2".into())
    );
    let ack_id = |m: &Frame| {
        m.header("ack")
            .expect("1.2 client mode has ack")
            .into_owned()
    };
    // ACK m0 and m2, NACK m1 without requeue (dropped), then disconnect.
    a.send(&Frame::new(Command::Ack).with_header("id", &ack_id(&m0)))
        .await;
    a.send(&Frame::new(Command::Ack).with_header("id", &ack_id(&m2)))
        .await;
    a.send(
        &Frame::new(Command::Nack)
            .with_header("id", &ack_id(&m1))
            .with_header("requeue", "false")
            .with_header("receipt", "n1"),
    )
    .await;
    a.expect(Command::Receipt).await;
    a.disconnect().await;

    // Nothing is left: a new consumer gets nothing.
    let (mut b, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    b.subscribe(
        "q",
        &format!("/queue/{queue}"),
        &[("ack", "client-individual")],
    )
    .await;
    assert_eq!(
        b.recv_within(Duration::from_millis(700)).await,
        Recv::Timeout
    );
    b.disconnect().await;
    delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_redelivered_after_nack_and_disconnect() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("redeliver");
    fill_queue(&queue, 2).await;

    let (mut a, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    a.subscribe(
        "q",
        &format!("/queue/{queue}"),
        &[("ack", "client-individual")],
    )
    .await;
    let m0 = a.expect(Command::Message).await;
    let m1 = a.expect(Command::Message).await;
    // NACK m0 with requeue (default): it comes back, marked redelivered.
    a.send(&Frame::new(Command::Nack).with_header("id", &m0.header("ack").expect("ack")))
        .await;
    let again = a.expect(Command::Message).await;
    assert_eq!(body(&again), "m0");
    assert_eq!(again.header("redelivered").as_deref(), Some("true"));
    // m1 and the redelivered m0 stay unacked; the session ends abruptly.
    drop(a);
    let _ = m1;

    let (mut b, _) = StompClient::connect(&gw.ws_url(), "1.1").await;
    b.subscribe("q", &format!("/queue/{queue}"), &[("ack", "client")])
        .await;
    let mut got = [
        b.expect(Command::Message).await,
        b.expect(Command::Message).await,
    ];
    got.sort_by_key(body);
    assert_eq!(body(&got[0]), "m0");
    assert_eq!(body(&got[1]), "m1");
    assert!(got
        .iter()
        .all(|m| m.header("redelivered").as_deref() == Some("true")));
    // 1.1 has no ack header; cumulative ACK by message-id + subscription.
    assert!(got[0].header("ack").is_none());
    let last = got
        .iter()
        .max_by_key(|m| {
            m.header("message-id")
                .and_then(|id| id.rsplit("@@").next().and_then(|t| t.parse::<u64>().ok()))
        })
        .expect("two messages");
    b.send(
        &Frame::new(Command::Ack)
            .with_header("message-id", &last.header("message-id").expect("id"))
            .with_header("subscription", "q")
            .with_header("receipt", "a"),
    )
    .await;
    b.expect(Command::Receipt).await;
    b.disconnect().await;

    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("q", &format!("/queue/{queue}"), &[]).await;
    assert_eq!(
        c.recv_within(Duration::from_millis(700)).await,
        Recv::Timeout
    );
    c.disconnect().await;
    delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_messages_are_shared_between_competing_consumers() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("work");
    let (mut a, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let (mut b, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    a.subscribe("w", &format!("/queue/{queue}"), &[]).await;
    b.subscribe("w", &format!("/queue/{queue}"), &[]).await;
    let (mut s, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    for i in 0..10 {
        s.send(
            &Frame::new(Command::Send)
                .with_header("destination", &format!("/queue/{queue}"))
                .with_body(format!("job{i}")),
        )
        .await;
    }
    s.send(&Frame::new(Command::Disconnect).with_header("receipt", "done"))
        .await;
    s.expect(Command::Receipt).await;
    let mut seen = Vec::new();
    for client in [&mut a, &mut b] {
        while let Recv::Frame(m) = client.recv_within(Duration::from_millis(700)).await {
            seen.push(body(&m));
        }
    }
    seen.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("job{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected, "each message exactly once across consumers");
    a.disconnect().await;
    b.disconnect().await;
    delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_publish_and_ack_only_on_commit() {
    let gw = start_gateway(|_| {}).await;
    let queue = unique("tx");
    fill_queue(&queue, 1).await;
    let topic = unique("txtopic");
    let (mut listener, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    listener
        .subscribe("t", &format!("/topic/{topic}"), &[])
        .await;

    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe(
        "q",
        &format!("/queue/{queue}"),
        &[("ack", "client-individual")],
    )
    .await;
    let job = c.expect(Command::Message).await;
    c.send(&Frame::new(Command::Begin).with_header("transaction", "tx1"))
        .await;
    c.send(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/topic/{topic}"))
            .with_header("transaction", "tx1")
            .with_body("in-tx"),
    )
    .await;
    c.send(
        &Frame::new(Command::Ack)
            .with_header("id", &job.header("ack").expect("ack"))
            .with_header("transaction", "tx1"),
    )
    .await;
    // Nothing published before COMMIT.
    assert_eq!(
        listener.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    );
    // An aborted transaction publishes nothing at all.
    c.send(&Frame::new(Command::Begin).with_header("transaction", "tx2"))
        .await;
    c.send(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/topic/{topic}"))
            .with_header("transaction", "tx2")
            .with_body("aborted"),
    )
    .await;
    c.send(&Frame::new(Command::Abort).with_header("transaction", "tx2"))
        .await;
    c.send(
        &Frame::new(Command::Commit)
            .with_header("transaction", "tx1")
            .with_header("receipt", "c1"),
    )
    .await;
    let receipt = c.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("c1"));
    let got = listener.expect(Command::Message).await;
    assert_eq!(body(&got), "in-tx");
    assert_eq!(
        listener.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    );
    c.disconnect().await;
    // The ACK was applied at COMMIT: the job is gone.
    let (mut d, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    d.subscribe("q", &format!("/queue/{queue}"), &[]).await;
    assert_eq!(
        d.recv_within(Duration::from_millis(700)).await,
        Recv::Timeout
    );
    d.disconnect().await;
    listener.disconnect().await;
    delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_queue_request_reply_with_an_amqp_backend() {
    let gw = start_gateway(|_| {}).await;
    let requests = unique("rpc");
    // The backend: a plain AMQP consumer that replies to reply_to.
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        requests.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let mut consumer = consume_no_ack(&ch, &requests, "").await;
    let backend = tokio::spawn(async move {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("request in time")
            .expect("stream")
            .expect("delivery");
        let reply_to = delivery
            .properties
            .reply_to()
            .clone()
            .expect("reply_to set");
        assert!(
            !reply_to.as_str().starts_with('/'),
            "AMQP reply_to is a bare queue name"
        );
        let pch = confirm_channel(&conn).await;
        publish(
            &pch,
            "",
            reply_to.as_str(),
            b"pong",
            BasicProperties::default().with_correlation_id("c-9".into()),
        )
        .await;
        conn
    });

    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.send(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/amq/queue/{requests}"))
            .with_header("reply-to", "/temp-queue/answers")
            .with_header("correlation-id", "c-9")
            .with_body("ping"),
    )
    .await;
    let reply = c.expect(Command::Message).await;
    assert_eq!(
        reply.header("subscription").as_deref(),
        Some("/temp-queue/answers")
    );
    assert_eq!(body(&reply), "pong");
    assert_eq!(reply.header("correlation-id").as_deref(), Some("c-9"));
    backend.await.expect("backend");
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_responder_replies_through_reply_queue() {
    let gw = start_gateway(|_| {}).await;
    let service = unique("svc");
    let (mut server, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    server
        .subscribe("in", &format!("/queue/{service}"), &[])
        .await;
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    client
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", &format!("/queue/{service}"))
                .with_header("reply-to", "/temp-queue/r")
                .with_body("question"),
        )
        .await;
    let request = server.expect(Command::Message).await;
    let reply_to = request.header("reply-to").expect("reply-to").into_owned();
    assert!(reply_to.starts_with("/reply-queue/"), "{reply_to}");
    server
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", &reply_to)
                .with_body("answer"),
        )
        .await;
    let answer = client.expect(Command::Message).await;
    assert_eq!(body(&answer), "answer");
    assert_eq!(
        answer.header("subscription").as_deref(),
        Some("/temp-queue/r")
    );
    client.disconnect().await;
    server.disconnect().await;
    delete_queue(&service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topic_subscription_keeps_messages_while_away() {
    // x-queue-name only where a rule allows it (docs/security.md).
    let gw = start_gateway(|c| {
        c.auth.rules = vec![stompgate::config::RuleConfig {
            verbs: vec!["subscribe".into()],
            destination: "/topic/*".into(),
            queue_arguments: vec!["durable".into(), "x-queue-name".into()],
        }]
    })
    .await;
    let topic = unique("durable");
    let queue = unique("stomp-durable");
    let headers = [
        ("durable", "true"),
        ("auto-delete", "false"),
        ("x-queue-name", queue.as_str()),
        ("ack", "client-individual"),
    ];
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("d", &format!("/topic/{topic}"), &headers).await;
    // A queue of its own, named as asked, not the shared fan-out queue.
    assert!(list_queues().iter().any(|(name, _)| name == &queue));
    assert_eq!(gw.gateway.bridge.plane.bindings(), 0);
    c.disconnect().await;

    // Published while nobody is connected: kept in the durable queue.
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"while away",
        BasicProperties::default(),
    )
    .await;

    let (mut again, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    again
        .subscribe("d", &format!("/topic/{topic}"), &headers)
        .await;
    let m = again.expect(Command::Message).await;
    assert_eq!(body(&m), "while away");
    again
        .send(
            &Frame::new(Command::Ack)
                .with_header("id", &m.header("ack").expect("ack"))
                .with_header("receipt", "a"),
        )
        .await;
    again.expect(Command::Receipt).await;
    again.disconnect().await;
    delete_queue(&queue).await;
}
