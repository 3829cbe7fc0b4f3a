//! Several gateway replicas (real `stompgate` processes) behind HAProxy
//! (`deploy/haproxy-local.cfg.in`), against the real RabbitMQ on
//! 127.0.0.1:5672: broadcasts reach every client once whichever replica holds
//! it, queue messages are shared across replicas, and losing a replica loses
//! nothing that was not acked.
//!
//! Needs `haproxy` (`scripts/ensure-haproxy.sh`) and `rabbitmqctl`.
//! Everything listens on ephemeral loopback ports; every child process is
//! killed (and reaped) when its guard is dropped, also when a test panics or
//! times out. The tests take a lock so that they run one at a time: each
//! starts four processes and hundreds of connections, which on a small
//! machine would otherwise distort each other's timings.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use stompgate::stomp::{Command, Frame};
use tokio::sync::{mpsc, watch, Semaphore};

use common::process::{spawn_haproxy, tail, ChildGuard, Replica};
use common::*;

/// One test at a time (see the module comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound on each test's own work (after it got the lock).
const TEST_BUDGET: Duration = Duration::from_secs(50);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Child processes

/// A scratch directory for configs and logs. [`ScratchDir::finish`] removes
/// it; when a test panics or times out before that, it is kept for its logs.
struct ScratchDir(PathBuf, bool);

impl ScratchDir {
    fn new(prefix: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir, false)
    }

    fn finish(mut self) {
        self.1 = true;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("replicas: configs and logs kept in {}", self.0.display());
        }
    }
}

/// Starts `n` replicas and waits (bounded) until each answers 200 on /readyz.
/// A replica whose port was taken in the meantime is started again elsewhere.
async fn start_replicas(n: usize, dir: &Path) -> Vec<Replica> {
    let mut replicas: Vec<Replica> = (1..=n)
        .map(|i| Replica::spawn(&format!("gw{i}"), dir, |_| {}))
        .collect();
    for replica in replicas.iter_mut() {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match wait_http_ready(replica.addr, "/readyz", &mut replica.process).await {
                Ok(()) => break,
                Err(e) if attempts < 3 && replica.process.exited().is_some() => {
                    eprintln!(
                        "replicas: {} exited early ({e}); starting it again",
                        replica.name
                    );
                    *replica = Replica::spawn(&replica.name, dir, |_| {});
                }
                Err(e) => panic!(
                    "replica {} at {} not ready: {e}\nits log:\n{}",
                    replica.name,
                    replica.addr,
                    tail(&dir.join(format!("{}.log", replica.name)), 20)
                ),
            }
        }
    }
    replicas
}

/// Polls `GET path` until it answers 200, the process exits, or 15 s pass.
async fn wait_http_ready(
    addr: SocketAddr,
    path: &str,
    process: &mut ChildGuard,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = process.exited() {
            return Err(format!("{} exited with {status}", process.name));
        }
        let last = match try_http_get(addr, path, Duration::from_secs(3)).await {
            Ok(response) if response.status == 200 => return Ok(()),
            Ok(response) => format!("HTTP {}", response.status),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{path} not 200 within {READY_TIMEOUT:?} (last: {last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HAProxy in the foreground in front of `replicas`.
struct Haproxy {
    port: u16,
    _process: ChildGuard,
}

impl Haproxy {
    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

/// deploy/haproxy-local.cfg.in with its placeholders filled in.
fn haproxy_config(port: u16, replicas: &[Replica]) -> String {
    let template_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy-local.cfg.in");
    let template = std::fs::read_to_string(&template_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", template_path.display()));
    for placeholder in ["@FRONTEND_PORT@", "@BACKENDS@"] {
        assert!(
            template.contains(placeholder),
            "{} lacks the placeholder {placeholder}",
            template_path.display()
        );
    }
    let backends: Vec<String> = replicas
        .iter()
        .map(|r| {
            format!(
                "    server {} {} check inter 500ms fall 2 rise 1",
                r.name, r.addr
            )
        })
        .collect();
    template
        .replace("@FRONTEND_PORT@", &port.to_string())
        .replace("@BACKENDS@", &backends.join("\n"))
}

/// Starts HAProxy (`haproxy -db -f FILE`) and waits until it routes
/// `GET /readyz` to a replica.
async fn start_haproxy(replicas: &[Replica], dir: &Path) -> Haproxy {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = free_port();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(port, replicas)).expect("write haproxy.cfg");
        let log_path = dir.join("haproxy.log");
        let mut process = spawn_haproxy(&cfg, &log_path);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        match wait_http_ready(addr, "/readyz", &mut process).await {
            Ok(()) => {
                return Haproxy {
                    port,
                    _process: process,
                }
            }
            Err(e) if attempts < 3 && process.exited().is_some() => {
                eprintln!("replicas: haproxy exited early ({e}); trying another port");
            }
            Err(e) => panic!("haproxy not ready: {e}\nits log:\n{}", tail(&log_path, 20)),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP and metrics

async fn metric_per_replica(replicas: &[Replica], series: &str) -> Vec<f64> {
    let mut values = Vec::new();
    for r in replicas {
        values.push(metric(r.addr, series).await);
    }
    values
}

// ---------------------------------------------------------------------------
// One test at a time

/// Runs a test body under the lock and the time budget.
async fn bounded<F: std::future::Future<Output = ()>>(name: &str, test: F) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    tokio::time::timeout(TEST_BUDGET, test)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within {TEST_BUDGET:?}"));
    println!(
        "{name}: finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// 1. Broadcast

const BROADCAST_CLIENTS: usize = 300;
const BROADCAST_MESSAGES: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_through_haproxy_reaches_every_client_exactly_once() {
    bounded("broadcast_through_haproxy", async {
        let dir = ScratchDir::new("stompgate-replicas");
        let replicas = start_replicas(3, &dir.0).await;
        let haproxy = start_haproxy(&replicas, &dir.0).await;
        let topic = unique("fanout");
        let destination = format!("/topic/{topic}");

        // 300 clients through HAProxy, at most 50 handshakes at a time; each
        // reports once subscribed, then collects what it receives.
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(BROADCAST_CLIENTS);
        let connecting = Arc::new(Semaphore::new(50));
        let mut clients = Vec::new();
        for i in 0..BROADCAST_CLIENTS {
            let (url, destination) = (haproxy.ws_url(), destination.clone());
            let (ready_tx, connecting) = (ready_tx.clone(), Arc::clone(&connecting));
            clients.push(tokio::spawn(async move {
                let permit = connecting.acquire_owned().await.expect("semaphore");
                let (mut client, _) = StompClient::connect(&url, "1.2").await;
                client.subscribe("t", &destination, &[]).await;
                drop(permit);
                ready_tx.send(()).await.expect("ready");
                let mut seqs = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while seqs.len() < BROADCAST_MESSAGES as usize {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match client.recv_within(left).await {
                        Recv::Frame(f) if f.command == Command::Message => {
                            seqs.push(body(&f).parse::<u32>().expect("sequence number"))
                        }
                        Recv::Frame(f) => panic!("client {i}: unexpected {} frame", f.command),
                        other => panic!("client {i}: {other:?} after {} messages", seqs.len()),
                    }
                }
                // Anything more would be a duplicate.
                match client.recv_within(Duration::from_millis(500)).await {
                    Recv::Timeout => {}
                    Recv::Frame(f) => seqs.push(body(&f).parse().unwrap_or(u32::MAX)),
                    Recv::Closed => panic!("client {i}: connection closed"),
                }
                client.disconnect().await;
                seqs
            }));
        }
        drop(ready_tx);
        let wait_ready = async {
            for _ in 0..BROADCAST_CLIENTS {
                ready_rx.recv().await.expect("a client task ended early");
            }
        };
        let connect_started = Instant::now();
        tokio::time::timeout(Duration::from_secs(25), wait_ready)
            .await
            .expect("300 clients did not connect and subscribe within 25 s");
        println!(
            "broadcast: {BROADCAST_CLIENTS} clients connected and subscribed in {:.2} s",
            connect_started.elapsed().as_secs_f64()
        );

        // The clients really are spread over the replicas.
        let connections = metric_per_replica(&replicas, "stompgate_connections").await;
        println!("broadcast: connections per replica {connections:?}");
        assert!(
            connections.iter().all(|&c| c > 0.0),
            "HAProxy did not spread the clients: connections per replica {connections:?}"
        );
        assert_eq!(
            connections.iter().sum::<f64>(),
            BROADCAST_CLIENTS as f64,
            "connections per replica {connections:?}"
        );
        // Each replica's plane holds its configured queues (default 4), and
        // the topic is one binding (one routing key) on one of them.
        let plane_queues =
            metric_per_replica(&replicas, "stompgate_amqp_queues{kind=\"broadcast\"}").await;
        assert_eq!(
            plane_queues,
            vec![4.0; replicas.len()],
            "the plane's queues per replica"
        );
        let routing_keys = metric_per_replica(&replicas, "stompgate_routing_keys").await;
        assert_eq!(
            routing_keys,
            vec![1.0; replicas.len()],
            "one binding per replica for the topic"
        );
        // RabbitMQ holds one queue per replica for the topic, not one per client.
        let bound = queues_bound("amq.topic", &topic);
        assert_eq!(
            bound.len(),
            replicas.len(),
            "queues bound to amq.topic/{topic}: {bound:?}"
        );

        let conn = amqp().await;
        let ch = confirm_channel(&conn).await;
        for seq in 0..BROADCAST_MESSAGES {
            publish(
                &ch,
                "amq.topic",
                &topic,
                seq.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        let expected: Vec<u32> = (0..BROADCAST_MESSAGES).collect();
        for (i, client) in clients.into_iter().enumerate() {
            let seqs = client.await.unwrap_or_else(|e| panic!("client {i}: {e}"));
            assert_eq!(seqs, expected, "client {i} received {seqs:?}");
        }
        let delivered = metric_per_replica(
            &replicas,
            "stompgate_messages_delivered_total{kind=\"broadcast\"}",
        )
        .await;
        println!("broadcast: MESSAGE frames per replica {delivered:?}");
        assert_eq!(
            delivered.iter().sum::<f64>(),
            (BROADCAST_CLIENTS as u32 * BROADCAST_MESSAGES) as f64
        );
        let _ = conn.close(200, "done".into()).await;
        dir.finish();
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Competing consumers on replicas

const SHARED_CLIENTS: usize = 30;
const SHARED_MESSAGES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_messages_are_shared_across_replicas_without_loss_or_duplicates() {
    bounded("queue_messages_shared", async {
        let dir = ScratchDir::new("stompgate-replicas");
        let replicas = start_replicas(3, &dir.0).await;
        let haproxy = start_haproxy(&replicas, &dir.0).await;
        let queue = unique("shared");
        let _cleanup = QueueCleanup(queue.clone());
        declare_durable_queue(&queue).await;

        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(SHARED_CLIENTS);
        let (stop_tx, stop_rx) = watch::channel(false);
        let received = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        for i in 0..SHARED_CLIENTS {
            let (url, destination) = (haproxy.ws_url(), format!("/queue/{queue}"));
            let (ready_tx, stop_rx, received) =
                (ready_tx.clone(), stop_rx.clone(), Arc::clone(&received));
            clients.push(tokio::spawn(async move {
                let (mut client, _) = StompClient::connect(&url, "1.2").await;
                client
                    .subscribe("q", &destination, &[("ack", "client-individual")])
                    .await;
                ready_tx.send(()).await.expect("ready");
                let mut bodies = Vec::new();
                loop {
                    match client.recv_within(Duration::from_millis(100)).await {
                        Recv::Frame(f) if f.command == Command::Message => {
                            let ack = f.header("ack").expect("ack header").into_owned();
                            bodies.push(body(&f));
                            received.fetch_add(1, Ordering::SeqCst);
                            client
                                .send(&Frame::new(Command::Ack).with_header("id", &ack))
                                .await;
                        }
                        Recv::Frame(f) => panic!("client {i}: unexpected {} frame", f.command),
                        Recv::Closed => panic!("client {i}: connection closed"),
                        Recv::Timeout if *stop_rx.borrow() => break,
                        Recv::Timeout => {}
                    }
                }
                // DISCONNECT's receipt comes after every ACK was handled.
                client.disconnect().await;
                bodies
            }));
        }
        drop(ready_tx);
        tokio::time::timeout(Duration::from_secs(15), async {
            for _ in 0..SHARED_CLIENTS {
                ready_rx.recv().await.expect("a client task ended early");
            }
        })
        .await
        .expect("30 clients did not subscribe within 15 s");
        let consumers =
            metric_per_replica(&replicas, "stompgate_amqp_queues{kind=\"consumer\"}").await;
        println!("queue: consumers per replica {consumers:?}");
        assert!(consumers.iter().all(|&c| c > 0.0), "{consumers:?}");

        let conn = amqp().await;
        let ch = confirm_channel(&conn).await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        for i in 0..SHARED_MESSAGES {
            publish(
                &ch,
                "",
                &queue,
                format!("m{i:04}").as_bytes(),
                persistent.clone(),
            )
            .await;
        }
        // Everything arrives, then 1 s more for anything delivered twice.
        let deadline = Instant::now() + Duration::from_secs(20);
        while received.load(Ordering::SeqCst) < SHARED_MESSAGES {
            assert!(
                Instant::now() < deadline,
                "only {} of {SHARED_MESSAGES} messages arrived",
                received.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(true).expect("stop");

        let mut all = Vec::new();
        let mut per_client = Vec::new();
        for (i, client) in clients.into_iter().enumerate() {
            let bodies = client.await.unwrap_or_else(|e| panic!("client {i}: {e}"));
            per_client.push(bodies.len());
            all.extend(bodies);
        }
        let distinct: HashSet<&String> = all.iter().collect();
        let expected: HashSet<String> = (0..SHARED_MESSAGES).map(|i| format!("m{i:04}")).collect();
        assert_eq!(all.len(), SHARED_MESSAGES, "deliveries (duplicates?)");
        assert_eq!(distinct.len(), SHARED_MESSAGES, "distinct bodies");
        assert!(
            all.iter().all(|b| expected.contains(b)),
            "unexpected bodies"
        );
        let delivered = metric_per_replica(
            &replicas,
            "stompgate_messages_delivered_total{kind=\"queue\"}",
        )
        .await;
        println!("queue: messages per client {per_client:?}");
        println!("queue: MESSAGE frames per replica {delivered:?}");
        assert_eq!(delivered.iter().sum::<f64>(), SHARED_MESSAGES as f64);
        assert!(
            delivered.iter().filter(|&&d| d > 0.0).count() > 1,
            "only one replica delivered: {delivered:?}"
        );
        let _ = conn.close(200, "done".into()).await;
        dir.finish();
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Losing a replica

const LOSS_CLIENTS: usize = 30;
const LOSS_MESSAGES: usize = 600;
const PUBLISH_EVERY: Duration = Duration::from_millis(5); // ~200 messages/s
const PROCESSING: Duration = Duration::from_millis(50);
const RECEIPT_EVERY: u64 = 5;
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// Shared between the consumers and the test.
struct Progress {
    base: Instant,
    /// Milliseconds after `base` of the last MESSAGE any consumer received.
    last_delivery_ms: AtomicU64,
    resubscribed: AtomicUsize,
}

impl Progress {
    fn delivered(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_delivery_ms.fetch_max(ms, Ordering::SeqCst);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_delivery_ms.load(Ordering::SeqCst));
        self.base.elapsed().saturating_sub(last)
    }
}

/// One MESSAGE a consumer received.
#[derive(Debug, Clone)]
struct Delivery {
    body: String,
    /// Which of the consumer's connections (0 = the first).
    connection: usize,
    redelivered: bool,
    /// When the ACK was sent (written to the WebSocket).
    acked: Option<Instant>,
    /// A RECEIPT after the ACK arrived: the gateway handled the ACK.
    confirmed: bool,
}

#[derive(Debug, Default)]
struct ConsumerLog {
    deliveries: Vec<Delivery>,
    /// When each connection dropped, and when the next one was subscribed.
    drops: Vec<Instant>,
    resubscribed: Vec<Instant>,
    failed_attempts: usize,
    errors: Vec<String>,
}

/// Bound on each step of a loss consumer's connection (handshake, CONNECT,
/// SUBSCRIBE, a send): its connections are expected to die.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);

async fn connect_and_subscribe(
    url: &str,
    destination: &str,
) -> Result<(StompClient, Vec<Frame>), String> {
    let mut peer = StompClient::try_connect(url, STEP_TIMEOUT).await?;
    let early = peer
        .try_subscribe(
            "q",
            destination,
            &[("ack", "client-individual"), ("prefetch-count", "5")],
            STEP_TIMEOUT,
        )
        .await?;
    Ok((peer, early))
}

/// A consumer that ACKs each message after "processing" it, asks for a
/// receipt on every 5th ACK, and reconnects like stompjs (200 ms, then again
/// through the load balancer) when its connection drops.
async fn loss_consumer(
    url: String,
    destination: String,
    progress: Arc<Progress>,
    ready: mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<ConsumerLog, String> {
    let mut log = ConsumerLog::default();
    let (mut peer, mut early) = connect_and_subscribe(&url, &destination).await?;
    ready.send(()).await.map_err(|e| e.to_string())?;
    let mut connection = 0;
    let mut acks_sent = 0u64;
    loop {
        // Deliveries of this connection whose ACK is not confirmed yet, by
        // index in `log.deliveries`, with the ACK's sequence number.
        let mut unconfirmed: Vec<(usize, u64)> = Vec::new();
        let mut pending_frames: std::collections::VecDeque<Frame> = early.drain(..).collect();
        loop {
            let frame = match pending_frames.pop_front() {
                Some(f) => f,
                None => {
                    if *stop.borrow_and_update() {
                        // DISCONNECT's receipt: every ACK before it was handled.
                        let bye = Frame::new(Command::Disconnect).with_header("receipt", "bye");
                        peer.try_send(&bye, STEP_TIMEOUT).await?;
                        loop {
                            match peer.recv_within(Duration::from_secs(5)).await {
                                Recv::Frame(f) if f.command == Command::Receipt => {
                                    if f.header("receipt-id").as_deref() == Some("bye") {
                                        for (i, _) in unconfirmed.drain(..) {
                                            log.deliveries[i].confirmed = true;
                                        }
                                        return Ok(log);
                                    }
                                    confirm(&mut log, &mut unconfirmed, &f);
                                }
                                Recv::Frame(f) if f.command == Command::Message => {
                                    log.errors
                                        .push(format!("MESSAGE {} after DISCONNECT", body(&f)));
                                    log.deliveries.push(Delivery {
                                        body: body(&f),
                                        connection,
                                        redelivered: f.header("redelivered").as_deref()
                                            == Some("true"),
                                        acked: None,
                                        confirmed: false,
                                    });
                                }
                                other => return Err(format!("no DISCONNECT receipt: {other:?}")),
                            }
                        }
                    }
                    match peer.recv_within(Duration::from_millis(100)).await {
                        Recv::Frame(f) => f,
                        Recv::Timeout => continue,
                        Recv::Closed => break,
                    }
                }
            };
            match frame.command {
                Command::Message => {
                    progress.delivered();
                    let ack_id = frame.header("ack").ok_or("MESSAGE without ack")?;
                    let index = log.deliveries.len();
                    log.deliveries.push(Delivery {
                        body: body(&frame),
                        connection,
                        redelivered: frame.header("redelivered").as_deref() == Some("true"),
                        acked: None,
                        confirmed: false,
                    });
                    tokio::time::sleep(PROCESSING).await;
                    acks_sent += 1;
                    let mut ack = Frame::new(Command::Ack).with_header("id", &ack_id);
                    if acks_sent.is_multiple_of(RECEIPT_EVERY) {
                        ack.push_header("receipt", &format!("ack-{acks_sent}"));
                    }
                    if let Err(e) = peer.try_send(&ack, STEP_TIMEOUT).await {
                        log.errors.push(e);
                        break;
                    }
                    log.deliveries[index].acked = Some(Instant::now());
                    unconfirmed.push((index, acks_sent));
                }
                Command::Receipt => confirm(&mut log, &mut unconfirmed, &frame),
                Command::Error => {
                    log.errors.push(format!(
                        "ERROR {:?}",
                        frame.header("message").map(|m| m.into_owned())
                    ));
                    break;
                }
                other => return Err(format!("unexpected {other} frame")),
            }
        }
        log.drops.push(Instant::now());
        // Reconnect through HAProxy, bounded.
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(RECONNECT_DELAY).await;
            match connect_and_subscribe(&url, &destination).await {
                Ok((p, e)) => {
                    peer = p;
                    early = e;
                    break;
                }
                Err(e) if Instant::now() < give_up => {
                    log.failed_attempts += 1;
                    log.errors.push(format!("reconnect: {e}"));
                }
                Err(e) => return Err(format!("could not reconnect within 20 s: {e}")),
            }
        }
        log.resubscribed.push(Instant::now());
        progress.resubscribed.fetch_add(1, Ordering::SeqCst);
        connection += 1;
    }
}

#[derive(Debug, Default)]
struct LossStats {
    deliveries: usize,
    redelivered_header: usize,
    cut_unacked: usize,
    cut_acked_after_kill: usize,
    cut_acked_before_kill_redelivered: usize,
    cut_acked_before_kill_landed: usize,
}

/// Waits (bounded, 5 s) until `queue` holds no message, ready or unacked;
/// returns what it last held.
async fn wait_queue_empty(queue: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held = queue_stat(queue, "messages").expect("the queue is listed");
        if held == 0 || Instant::now() >= deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A RECEIPT `ack-N` confirms every ACK up to the N-th of the connection.
fn confirm(log: &mut ConsumerLog, unconfirmed: &mut Vec<(usize, u64)>, receipt: &Frame) {
    let Some(n) = receipt
        .header("receipt-id")
        .and_then(|r| r.strip_prefix("ack-").and_then(|n| n.parse::<u64>().ok()))
    else {
        return;
    };
    unconfirmed.retain(|&(index, seq)| {
        if seq <= n {
            log.deliveries[index].confirmed = true;
            false
        } else {
            true
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_loss_loses_nothing_acked() {
    bounded("replica_loss", async {
        let dir = ScratchDir::new("stompgate-replicas");
        let mut replicas = start_replicas(3, &dir.0).await;
        let haproxy = start_haproxy(&replicas, &dir.0).await;
        let queue = unique("loss");
        let _cleanup = QueueCleanup(queue.clone());
        declare_durable_queue(&queue).await;

        let progress = Arc::new(Progress {
            base: Instant::now(),
            last_delivery_ms: AtomicU64::new(0),
            resubscribed: AtomicUsize::new(0),
        });
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(LOSS_CLIENTS);
        let (stop_tx, stop_rx) = watch::channel(false);
        let consumers: Vec<_> = (0..LOSS_CLIENTS)
            .map(|_| {
                tokio::spawn(loss_consumer(
                    haproxy.ws_url(),
                    format!("/queue/{queue}"),
                    Arc::clone(&progress),
                    ready_tx.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        drop(ready_tx);
        tokio::time::timeout(Duration::from_secs(15), async {
            for _ in 0..LOSS_CLIENTS {
                ready_rx.recv().await.expect("a consumer failed to subscribe");
            }
        })
        .await
        .expect("30 consumers did not subscribe within 15 s");

        let connections = metric_per_replica(&replicas, "stompgate_connections").await;
        println!("loss: connections per replica before the kill {connections:?}");
        assert!(connections.iter().all(|&c| c > 0.0), "{connections:?}");
        let victim = (0..replicas.len())
            .max_by(|&a, &b| connections[a].total_cmp(&connections[b]))
            .unwrap();
        let affected = connections[victim] as usize;

        // ~200 persistent messages a second; confirms collected at the end.
        let publisher = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let conn = amqp().await;
                let ch = confirm_channel(&conn).await;
                let persistent = BasicProperties::default().with_delivery_mode(2);
                let mut ticker = tokio::time::interval(PUBLISH_EVERY);
                let mut confirms = Vec::with_capacity(LOSS_MESSAGES);
                for i in 0..LOSS_MESSAGES {
                    ticker.tick().await;
                    let confirm = ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            format!("m{i:04}").as_bytes(),
                            persistent.clone(),
                        )
                        .await
                        .expect("publish");
                    confirms.push(confirm);
                }
                for confirm in confirms {
                    assert!(confirm.await.expect("confirm").is_ack(), "broker nacked");
                }
                let _ = conn.close(200, "done".into()).await;
            })
        };
        let publish_started = Instant::now();

        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed_at = Instant::now();
        replicas[victim].kill();
        let reaped_at = Instant::now();
        println!(
            "loss: SIGKILL {} ({} of {LOSS_CLIENTS} consumers) {:.2} s after publishing began",
            replicas[victim].name,
            affected,
            publish_started.elapsed().as_secs_f64()
        );

        tokio::time::timeout(Duration::from_secs(15), publisher)
            .await
            .expect("publisher did not finish within 15 s")
            .expect("publisher");
        println!(
            "loss: {LOSS_MESSAGES} messages published and confirmed in {:.2} s",
            publish_started.elapsed().as_secs_f64()
        );
        // Every affected consumer is back, and nothing arrived for 2 s.
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress.resubscribed.load(Ordering::SeqCst) < affected
            || progress.quiet_for() < Duration::from_secs(2)
        {
            assert!(
                Instant::now() < deadline,
                "{} of {affected} consumers re-subscribed; last delivery {:?} ago",
                progress.resubscribed.load(Ordering::SeqCst),
                progress.quiet_for()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // RabbitMQ sees the 30 consumers again (the dead replica's are gone).
        let consumers_deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = queue_stat(&queue, "consumers");
            if now == Some(LOSS_CLIENTS as u64) {
                break;
            }
            assert!(
                Instant::now() < consumers_deadline,
                "RabbitMQ lists {now:?} consumers on {queue}, expected {LOSS_CLIENTS}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop_tx.send(true).expect("stop");
        let mut logs = Vec::new();
        for (i, consumer) in consumers.into_iter().enumerate() {
            let log = tokio::time::timeout(Duration::from_secs(10), consumer)
                .await
                .unwrap_or_else(|_| panic!("consumer {i} did not stop"))
                .unwrap_or_else(|e| panic!("consumer {i}: {e}"))
                .unwrap_or_else(|e| panic!("consumer {i}: {e}"));
            logs.push(log);
        }

        // Who dropped, and how fast they were back.
        let dropped: Vec<&ConsumerLog> = logs.iter().filter(|l| !l.drops.is_empty()).collect();
        for (i, log) in logs.iter().enumerate() {
            assert!(
                log.drops.len() <= 1 && log.drops.iter().all(|&t| t >= killed_at),
                "consumer {i} dropped at unexpected times ({} drops)",
                log.drops.len()
            );
        }
        let detect: Vec<Duration> = dropped.iter().map(|l| l.drops[0] - killed_at).collect();
        let back: Vec<Duration> = dropped
            .iter()
            .map(|l| l.resubscribed[0] - killed_at)
            .collect();
        let failed_attempts: usize = dropped.iter().map(|l| l.failed_attempts).sum();
        println!(
            "loss: {} consumers dropped; drop seen after {:?}..{:?}; all re-subscribed {:?} after the kill \
             (first {:?}; {} failed reconnection attempts)",
            dropped.len(),
            detect.iter().min().unwrap_or(&Duration::ZERO),
            detect.iter().max().unwrap_or(&Duration::ZERO),
            back.iter().max().unwrap_or(&Duration::ZERO),
            back.iter().min().unwrap_or(&Duration::ZERO),
            failed_attempts,
        );
        for log in &logs {
            for e in &log.errors {
                println!("loss: consumer note: {e}");
            }
        }
        assert_eq!(
            dropped.len(),
            affected,
            "exactly the consumers of the killed replica reconnect"
        );

        // Nothing lost: every message was ACKed, and RabbitMQ holds nothing
        // (no message ready, none unacked) once every consumer is gone.
        let mut by_body: BTreeMap<&str, Vec<(usize, &Delivery)>> = BTreeMap::new();
        for (consumer, log) in logs.iter().enumerate() {
            for d in &log.deliveries {
                by_body
                    .entry(d.body.as_str())
                    .or_default()
                    .push((consumer, d));
            }
        }
        let expected: Vec<String> = (0..LOSS_MESSAGES).map(|i| format!("m{i:04}")).collect();
        let never_acked: Vec<&String> = expected
            .iter()
            .filter(|b| {
                !by_body
                    .get(b.as_str())
                    .is_some_and(|ds| ds.iter().any(|(_, d)| d.acked.is_some()))
            })
            .collect();
        assert!(
            never_acked.is_empty(),
            "{} messages never ACKed: {:?}",
            never_acked.len(),
            &never_acked[..never_acked.len().min(20)]
        );
        assert_eq!(by_body.len(), LOSS_MESSAGES, "unexpected bodies");
        let left = wait_queue_empty(&queue).await;
        assert_eq!(left, 0, "messages still in {queue} (ready or unacked)");

        // A delivery is "cut" when its connection died before a RECEIPT
        // confirmed its ACK: only those may be delivered again. An ACK written
        // after the killed replica was reaped cannot have reached RabbitMQ, so
        // such a message must have come again.
        let was_cut = |consumer: usize, d: &Delivery| {
            !d.confirmed && d.connection < logs[consumer].drops.len()
        };
        let landed_possibly =
            |c: usize, d: &Delivery| !was_cut(c, d) || d.acked.is_some_and(|t| t < reaped_at);
        let mut stats = LossStats::default();
        let mut unexplained: Vec<String> = Vec::new();
        for (b, ds) in &by_body {
            stats.deliveries += ds.len();
            stats.redelivered_header += ds.iter().filter(|(_, d)| d.redelivered).count();
            let cut: Vec<&Delivery> = ds
                .iter()
                .filter(|(c, d)| was_cut(*c, d))
                .map(|(_, d)| *d)
                .collect();
            let again = ds.len() > cut.len() || cut.len() > 1;
            for d in &cut {
                match d.acked {
                    None => stats.cut_unacked += 1,
                    Some(t) if t >= killed_at => stats.cut_acked_after_kill += 1,
                    Some(_) if again => stats.cut_acked_before_kill_redelivered += 1,
                    Some(_) => stats.cut_acked_before_kill_landed += 1,
                }
            }
            // At most one delivery not cut (a confirmed ACK is final), and
            // at least one whose ACK may have reached the broker.
            let kept = ds.len() - cut.len();
            if kept > 1 || !ds.iter().any(|(c, d)| landed_possibly(*c, d)) {
                unexplained.push(format!(
                    "{b}: {:#?}",
                    ds.iter()
                        .map(|(c, d)| format!(
                            "consumer {c} connection {} (drops {}) redelivered {} acked {:?} after the kill, confirmed {}",
                            d.connection,
                            logs[*c].drops.len(),
                            d.redelivered,
                            d.acked.map(|t| t.saturating_duration_since(killed_at)),
                            d.confirmed
                        ))
                        .collect::<Vec<_>>()
                ));
            }
        }
        let redeliveries = stats.deliveries - LOSS_MESSAGES;
        println!(
            "loss: {} deliveries of {LOSS_MESSAGES} messages: {redeliveries} redeliveries \
             ({} with redelivered:true); {} deliveries cut by the kill: {} not yet ACKed, \
             {} ACKed after the kill, {} ACKed before it without a receipt ({} of them \
             redelivered, {} not: their ACK had reached RabbitMQ)",
            stats.deliveries,
            stats.redelivered_header,
            stats.cut_unacked
                + stats.cut_acked_after_kill
                + stats.cut_acked_before_kill_redelivered
                + stats.cut_acked_before_kill_landed,
            stats.cut_unacked,
            stats.cut_acked_after_kill,
            stats.cut_acked_before_kill_redelivered + stats.cut_acked_before_kill_landed,
            stats.cut_acked_before_kill_redelivered,
            stats.cut_acked_before_kill_landed,
        );
        assert!(
            unexplained.is_empty(),
            "{} messages delivered again after a confirmed ACK, or lost with an ACK that \
             cannot have arrived: {unexplained:#?}",
            unexplained.len()
        );
        assert!(
            redeliveries
                <= stats.cut_unacked
                    + stats.cut_acked_after_kill
                    + stats.cut_acked_before_kill_redelivered,
            "more redeliveries than deliveries cut by the kill"
        );
        dir.finish();
    })
    .await;
}
