//! Real processes, real failures: a broker killed and restarted under a
//! running gateway, and the graceful drain on SIGTERM.
//!
//! The broker outage test runs its own private RabbitMQ node (started by
//! scripts/private-rabbitmq.sh on its own ports) so that it can SIGKILL it;
//! the machine's broker is never touched.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use stompgate::stomp::{Command as Stomp, Frame};

const NODE: &str = "stompgate-outage";
const NODE_AMQP_PORT: u16 = 5674;

/// A private RabbitMQ node, stopped when dropped.
struct PrivateBroker;

impl PrivateBroker {
    /// Starts the node (`keep_data`: as after a crash) and returns its pid.
    fn start(keep_data: bool) -> u32 {
        let mut cmd = Command::new("bash");
        cmd.args(["scripts/private-rabbitmq.sh", "start", NODE])
            .env("PRIVATE_RABBIT_AMQP_PORT", NODE_AMQP_PORT.to_string())
            .env("PRIVATE_RABBIT_WEB_STOMP_PORT", "15676")
            .env("PRIVATE_RABBIT_DIST_PORT", "25674")
            .env("PRIVATE_RABBIT_STOMP_PORT", "61615")
            .stdin(Stdio::null());
        if keep_data {
            cmd.env("PRIVATE_RABBIT_KEEP_DATA", "1");
        }
        let out = cmd.output().expect("run scripts/private-rabbitmq.sh");
        assert!(
            out.status.success(),
            "private broker did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("pid=")?.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
    }

    fn stop() {
        let _ = Command::new("bash")
            .args(["scripts/private-rabbitmq.sh", "stop", NODE])
            .stdin(Stdio::null())
            .output();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        PrivateBroker::stop();
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_survived_without_losing_what_the_broker_accepted() {
    let _broker = PrivateBroker;
    let pid = PrivateBroker::start(false);
    let amqp_url = format!("amqp://127.0.0.1:{NODE_AMQP_PORT}/%2f");
    let mut gateway = GatewayProcess::spawn(&amqp_url, &[]);
    assert!(
        gateway.wait_ready(Duration::from_secs(40)).await,
        "gateway not ready"
    );

    let topic = unique("outage-topic");
    let queue = unique("outage-queue");
    let (mut listener, _) = StompClient::connect(&gateway.ws_url(), "1.2").await;
    listener
        .subscribe("t", &format!("/topic/{topic}"), &[])
        .await;
    let (mut worker, _) = StompClient::connect(&gateway.ws_url(), "1.2").await;
    worker
        .subscribe(
            "q",
            &format!("/queue/{queue}"),
            &[("ack", "client-individual")],
        )
        .await;
    let (mut sender, _) = StompClient::connect(&gateway.ws_url(), "1.2").await;

    let conn = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("amqp to private node");
    let ch = confirm_channel(&conn).await;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue declared by the gateway");
    publish(
        &ch,
        "",
        &queue,
        b"job-1",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    let job = worker.expect(Stomp::Message).await;
    assert_eq!(body(&job), "job-1");
    let job_ack = job.header("ack").expect("ack header").into_owned();
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"before",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(body(&listener.expect(Stomp::Message).await), "before");
    drop(ch);
    drop(conn);

    // The broker dies.
    sigkill(pid);
    wait_gone(pid, Duration::from_secs(10));
    let killed = Instant::now();
    let not_ready = wait_until(Duration::from_secs(10), || async {
        http_status(gateway.port, "/readyz").await == Some(503)
    })
    .await
    .expect("/readyz reports not ready while the broker is gone");
    println!("readyz went 503 {not_ready:?} after the kill");

    // A SEND now gets an ERROR, never a RECEIPT.
    sender
        .send(
            &Frame::new(Stomp::Send)
                .with_header("destination", &format!("/topic/{topic}"))
                .with_header("receipt", "during-outage")
                .with_body("lost?"),
        )
        .await;
    let error = sender.expect(Stomp::Error).await;
    assert_eq!(error.header("receipt-id").as_deref(), Some("during-outage"));
    sender.expect_closed().await;

    // An ACK of a delivery of the dead channel is handled without error.
    worker
        .send(
            &Frame::new(Stomp::Ack)
                .with_header("id", &job_ack)
                .with_header("receipt", "stale-ack"),
        )
        .await;
    let receipt = worker.expect(Stomp::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("stale-ack"));

    // The broker comes back with its data.
    let _pid = PrivateBroker::start(true);
    let back = Instant::now();
    println!("broker was down for {:?}", back - killed);
    let ready_after = wait_until(Duration::from_secs(15), || async {
        http_status(gateway.port, "/readyz").await == Some(200)
    })
    .await
    .expect("/readyz ready again");
    println!("readyz 200 again {ready_after:?} after the broker was back");

    // Broadcast resumes without the client doing anything, within 5 s.
    let conn = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("amqp after restart");
    let ch = confirm_channel(&conn).await;
    let mut resumed = None;
    for i in 0..100 {
        publish(
            &ch,
            "amq.topic",
            &topic,
            format!("after-{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
        if let Recv::Frame(m) = listener.recv_within(Duration::from_millis(100)).await {
            assert!(body(&m).starts_with("after-"), "{}", body(&m));
            resumed = Some(back.elapsed());
            break;
        }
    }
    let resumed = resumed.expect("broadcast traffic resumed");
    println!("broadcast resumed {resumed:?} after the broker was back");
    assert!(
        resumed <= Duration::from_secs(5),
        "resumed after {resumed:?}"
    );

    // The unacked job is redelivered on the re-established subscription.
    let again = worker.expect(Stomp::Message).await;
    assert_eq!(body(&again), "job-1");
    assert_eq!(again.header("redelivered").as_deref(), Some("true"));
    worker
        .send(
            &Frame::new(Stomp::Ack)
                .with_header("id", &again.header("ack").expect("ack"))
                .with_header("receipt", "fresh-ack"),
        )
        .await;
    worker.expect(Stomp::Receipt).await;
    assert_eq!(
        worker.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    );

    assert!(
        gateway.child.try_wait().expect("status").is_none(),
        "the gateway never exits"
    );
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    listener.disconnect().await;
    worker.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_over_the_window_and_exits_zero() {
    const CLIENTS: usize = 40;
    let mut gateway = GatewayProcess::spawn(AMQP_URL, &[("STOMPGATE_DRAIN_WINDOW_MS", "2000")]);
    assert!(
        gateway.wait_ready(Duration::from_secs(15)).await,
        "gateway not ready"
    );
    let topic = unique("drain");
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (mut c, _) = StompClient::connect(&gateway.ws_url(), "1.2").await;
        c.subscribe(&format!("s{i}"), &format!("/topic/{topic}"), &[])
            .await;
        clients.push(c);
    }
    // A publish whose receipt is still pending when the drain starts.
    clients[0]
        .send(
            &Frame::new(Stomp::Send)
                .with_header("destination", &format!("/topic/{topic}"))
                .with_header("receipt", "last-words")
                .with_body("bye"),
        )
        .await;
    let term = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_ne!(
        http_status(gateway.port, "/readyz").await,
        Some(200),
        "not ready while draining"
    );

    let mut readers = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            let mut got_receipt = false;
            loop {
                match c.recv_within(Duration::from_secs(10)).await {
                    Recv::Frame(f) if f.command == Stomp::Receipt => got_receipt = true,
                    Recv::Frame(f) if f.command == Stomp::Message => {}
                    Recv::Frame(f) if f.command == Stomp::Error => {
                        assert_eq!(f.header("message").as_deref(), Some("server shutting down"));
                        let at = term.elapsed();
                        c.expect_closed().await;
                        return (i, at, got_receipt);
                    }
                    other => panic!("client {i}: expected ERROR, got {other:?}"),
                }
            }
        }));
    }
    let mut times = Vec::new();
    for r in readers {
        let (i, at, got_receipt) = r.await.expect("reader");
        if i == 0 {
            assert!(
                got_receipt,
                "pending receipt sent before the shutdown ERROR"
            );
        }
        times.push(at);
    }
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    println!("sessions closed between {first:?} and {last:?} after SIGTERM");
    assert!(
        last <= Duration::from_millis(3500),
        "all closed within the window"
    );
    assert!(
        last - first >= Duration::from_millis(500),
        "closes spread over the window, not all at once ({first:?}..{last:?})"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = gateway.child.try_wait().expect("status") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
}

/// Measurement (run by hand: `cargo test --release --test resilience --
/// --ignored --nocapture rebind`): how long the plane takes to re-bind
/// 15,000 distinct topic keys after its broker restarts. The binds are
/// pipelined on each plane queue's control channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rebind_time_of_15000_keys_after_a_broker_restart() {
    let keys_env = std::env::var("REBIND_KEYS")
        .ok()
        .and_then(|v| v.parse().ok());
    #[allow(non_snake_case)]
    let KEYS: usize = keys_env.unwrap_or(15_000);
    const PER_SESSION: usize = 250;
    let _broker = PrivateBroker;
    PrivateBroker::start(false);
    let url = format!("amqp://127.0.0.1:{NODE_AMQP_PORT}/%2f");
    let gw = start_gateway_unready(|c| c.amqp.url = url.clone()).await;
    assert!(
        gw.gateway
            .bridge
            .pool
            .wait_ready(Duration::from_secs(30))
            .await
    );
    let prefix = unique("rebind");
    let started = Instant::now();
    let mut clients = Vec::new();
    for s in 0..KEYS / PER_SESSION {
        clients.push(subscribed_to_numbered_topics(&gw.ws_url(), &prefix, s, PER_SESSION).await);
    }
    let plane = &gw.gateway.bridge.plane;
    assert_eq!(plane.bound(), KEYS);
    println!(
        "rebind: {KEYS} keys subscribed (first binds) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Restart the broker (its data kept, as after a crash).
    PrivateBroker::stop();
    let down = Instant::now();
    while gw.gateway.bridge.is_ready() {
        assert!(down.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    PrivateBroker::start(true);
    let up = Instant::now();
    assert!(
        gw.gateway
            .bridge
            .pool
            .wait_ready(Duration::from_secs(60))
            .await
    );
    let connected = up.elapsed();
    while plane.bound() < KEYS {
        assert!(
            up.elapsed() < Duration::from_secs(120),
            "bound {}",
            plane.bound()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rebound = up.elapsed();
    println!(
        "rebind: broker back; connections up after {:.2} s, all {KEYS} keys re-bound after {:.2} s ({:.0} binds/s)",
        connected.as_secs_f64(),
        rebound.as_secs_f64(),
        KEYS as f64 / (rebound - connected).as_secs_f64()
    );
    drop(clients);
}
