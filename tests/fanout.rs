//! Fan-out in the gateway: broadcast subscribers on one replica share one
//! AMQP queue per binding, and every one of them gets every message.

mod common;

use std::time::Duration;

use common::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use stompgate::stomp::{Command, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_share_one_amqp_queue() {
    const N: usize = 1000;
    let gw = start_gateway(|_| {}).await;
    let topic = unique("fan");
    let destination = format!("/topic/{topic}");
    let mut clients = Vec::with_capacity(N);
    for chunk in 0..N / 100 {
        let mut opened = Vec::new();
        for i in 0..100 {
            let url = gw.ws_url();
            let destination = destination.clone();
            opened.push(tokio::spawn(async move {
                let (mut c, _) = StompClient::connect(&url, "1.2").await;
                c.subscribe(&format!("s{}", chunk * 100 + i), &destination, &[])
                    .await;
                c
            }));
        }
        for handle in opened {
            clients.push(handle.await.expect("client"));
        }
    }
    let bound = queues_bound("amq.topic", &topic);
    assert_eq!(
        bound.len(),
        1,
        "one queue for {N} subscribers, got {bound:?}"
    );
    assert_eq!(gw.gateway.bridge.plane.bindings(), 1);

    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"tick",
        BasicProperties::default(),
    )
    .await;
    let mut received = 0;
    let mut readers = Vec::new();
    for mut c in clients {
        readers.push(tokio::spawn(async move {
            let m = c.expect(Command::Message).await;
            assert_eq!(&m.body[..], b"tick");
            c
        }));
    }
    let mut clients = Vec::new();
    for r in readers {
        clients.push(r.await.expect("reader"));
        received += 1;
    }
    assert_eq!(received, N);

    // The last subscriber out deletes the shared queue.
    for c in clients.iter_mut() {
        c.send(&Frame::new(Command::Disconnect)).await;
    }
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if queues_bound("amq.topic", &topic).is_empty() && gw.gateway.bridge.plane.bindings() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shared queue not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_gets_its_own_escaping_and_ack_header() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("esc");
    let destination = format!("/topic/{topic}");
    let (mut v10, _) = StompClient::connect(&gw.ws_url(), "1.0").await;
    let (mut v11, _) = StompClient::connect(&gw.ws_url(), "1.1").await;
    let (mut v12, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    v10.subscribe("a", &destination, &[]).await;
    v11.subscribe("b", &destination, &[]).await;
    v12.subscribe("c", &destination, &[("ack", "client")]).await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let mut table = FieldTable::default();
    table.insert("x-note".into(), AMQPValue::LongString("a:b\\c".into()));
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"x",
        BasicProperties::default().with_headers(table),
    )
    .await;
    let m10 = v10.expect(Command::Message).await;
    let m11 = v11.expect(Command::Message).await;
    let m12 = v12.expect(Command::Message).await;
    assert_eq!(m10.header("x-note").as_deref(), Some("a:b\\c"));
    assert_eq!(m11.header("x-note").as_deref(), Some("a:b\\c"));
    assert_eq!(m12.header("x-note").as_deref(), Some("a:b\\c"));
    assert_eq!(m10.header("subscription").as_deref(), Some("a"));
    assert_eq!(m11.header("subscription").as_deref(), Some("b"));
    assert_eq!(m12.header("subscription").as_deref(), Some("c"));
    assert!(m11.header("ack").is_none());
    let ack = m12
        .header("ack")
        .expect("1.2 client-mode ack header")
        .into_owned();
    assert_eq!(Some(ack.as_str()), m12.header("message-id").as_deref());
    // Acking a broadcast message is accepted (the broker side is settled).
    v12.send(
        &Frame::new(Command::Ack)
            .with_header("id", &ack)
            .with_header("receipt", "k"),
    )
    .await;
    v12.expect(Command::Receipt).await;
    for c in [v10, v11, v12] {
        c.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_bindings_get_distinct_queues_and_unsubscribe_releases_them() {
    let gw = start_gateway(|_| {}).await;
    let a = unique("ta");
    let b = unique("tb");
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("1", &format!("/topic/{a}"), &[]).await;
    c.subscribe("2", &format!("/topic/{a}"), &[]).await;
    c.subscribe("3", &format!("/exchange/amq.topic/{b}"), &[])
        .await;
    assert_eq!(queues_bound("amq.topic", &a).len(), 1);
    assert_eq!(queues_bound("amq.topic", &b).len(), 1);
    // Two subscriptions of one session to one topic: the message twice.
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(&ch, "amq.topic", &a, b"twice", BasicProperties::default()).await;
    let mut subs = vec![
        c.expect(Command::Message)
            .await
            .header("subscription")
            .expect("sub")
            .into_owned(),
        c.expect(Command::Message)
            .await
            .header("subscription")
            .expect("sub")
            .into_owned(),
    ];
    subs.sort();
    assert_eq!(subs, vec!["1".to_owned(), "2".to_owned()]);
    c.send(
        &Frame::new(Command::Unsubscribe)
            .with_header("id", "3")
            .with_header("receipt", "u"),
    )
    .await;
    c.expect(Command::Receipt).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !queues_bound("amq.topic", &b).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue of {b} not released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queues_bound("amq.topic", &a).len(), 1);
    c.disconnect().await;
}
