//! End-to-end messaging through the real RabbitMQ: AMQP publish -> MESSAGE,
//! SEND -> AMQP consume, receipts, acknowledgements, transactions.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use stompgate::stomp::{Command, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_reaches_topic_subscriber_with_properties() {
    let gw = start_gateway(|_| {}).await;
    let (mut client, connected) = StompClient::connect(&gw.ws_url(), "1.0,1.1,1.2").await;
    assert_eq!(connected.header("version").as_deref(), Some("1.2"));
    let topic = unique("prices");
    client.subscribe("s1", &format!("/topic/{topic}"), &[]).await;

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
    assert_eq!(msg.header("destination").as_deref(), Some(format!("/topic/{topic}").as_str()));
    assert_eq!(msg.header("content-type").as_deref(), Some("application/json"));
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
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");

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
    assert_eq!(props.content_type().as_ref().map(|s| s.as_str()), Some("text/plain"));
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(props.priority(), &Some(3));
    let table = props.headers().as_ref().expect("headers table");
    match table.inner().get("x-order") {
        Some(AMQPValue::LongString(s)) => assert_eq!(s.as_bytes(), b"a:b\\c"),
        other => panic!("x-order header: {other:?}"),
    }
    client.disconnect().await;
}
