//! RabbitMQ's back-pressure is seen: under a memory alarm the broker blocks
//! publishing connections (`connection.blocked`); `/readyz` says so, and a
//! SEND gets an ERROR after `amqp.broker_timeout_ms` instead of hanging its
//! session, never a RECEIPT. A private node (its own ports) raises the
//! alarm; the machine's broker is never touched.

mod common;

use std::time::Duration;

use common::*;
use stompgate::stomp::{Command, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_is_reported_and_sends_fail_in_bounded_time() {
    let node = PrivateNode::start("stompgate-alarm", 5731);
    let gw = start_gateway_unready(|c| {
        c.amqp.url = node.amqp_url();
        c.amqp.broker_timeout_ms = 2_000;
    })
    .await;
    assert!(
        gw.gateway
            .bridge
            .pool
            .wait_ready(Duration::from_secs(30))
            .await
    );
    let port = gw.addr.port();
    assert_eq!(http_status(port, "/readyz").await, Some(200));
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let queue = unique("alarm");
    // Before the alarm a SEND is confirmed.
    c.send(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/queue/{queue}"))
            .with_header("receipt", "before"),
    )
    .await;
    c.expect(Command::Receipt).await;

    node.ctl(&["set_vm_memory_high_watermark", "0.000001"]);
    // The alarm is raised at the broker's next memory check: SEND until a
    // publish is not confirmed, which must then fail in bounded time.
    let mut n = 0;
    let (error, started) = loop {
        n += 1;
        assert!(n < 100, "the alarm never blocked publishing");
        let receipt = format!("during-{n}");
        let started = std::time::Instant::now();
        c.send(
            &Frame::new(Command::Send)
                .with_header("destination", &format!("/queue/{queue}"))
                .with_header("receipt", &receipt),
        )
        .await;
        match c.recv_within(Duration::from_secs(20)).await {
            Recv::Frame(f) if f.command == Command::Receipt => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Recv::Frame(f) if f.command == Command::Error => {
                assert_eq!(f.header("receipt-id").as_deref(), Some(receipt.as_str()));
                break (f, started);
            }
            other => panic!("expected RECEIPT or ERROR, got {other:?}"),
        }
    };
    let message = error.header("message").unwrap_or_default().into_owned();
    assert!(
        message.contains("blocks publishing") || message.contains("no publisher confirm"),
        "{message}"
    );
    let waited = started.elapsed();
    println!(
        "alarm: SEND refused after {:.1} s: {message}",
        waited.as_secs_f64()
    );
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while http_status(port, "/readyz").await != Some(503) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never reported the alarm"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The alarm clears: ready again, and SENDs are confirmed.
    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while http_status(port, "/readyz").await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed 503");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.send(
        &Frame::new(Command::Send)
            .with_header("destination", &format!("/queue/{queue}"))
            .with_header("receipt", "after"),
    )
    .await;
    c.expect(Command::Receipt).await;
    c.disconnect().await;
}
