//! A gateway on a 3-node RabbitMQ cluster (issue 9, item 8): one node is
//! SIGKILLed under load and the gateway moves to the others.
//!
//! The cluster is private (nodes sgc1..sgc3@localhost, AMQP 5721-5723,
//! distribution 25721-25723, no STOMP plugins), formed by
//! `scripts/private-rabbitmq.sh cluster-start` and stopped at the end, also
//! when the test fails. The machine's broker is never touched.
//!
//! Under load (a backend publishing to 16 topics on the node that survives,
//! 4 browsers subscribed to all of them; one browser consuming a quorum
//! queue in client-individual mode while another SENDs to it with receipts),
//! the node holding the queue's leader and a gateway connection is killed.
//! Shown: every broadcast stream resumes within 5 s, and every SEND that got
//! a RECEIPT is consumed (0 lost). `cargo test --test cluster -- --nocapture`
//! prints the figures.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use stompgate::stomp::{Command as Stomp, Frame};

const PREFIX: &str = "sgc";
const AMQP_PORTS: [u16; 3] = [5721, 5722, 5723];
/// The gateway's AMQP connections: connection i starts on node i.
const GATEWAY_CONNECTIONS: usize = 2;
/// Where the backend publishes: a node that holds no gateway connection at
/// first and is never killed.
const BACKEND_NODE: usize = 2;
const TOPICS: usize = 16;
const LISTENERS: usize = 4;
/// Clients SENDing to the queue (their sessions' publishing channels are
/// spread over the gateway's connections).
const SENDERS: u64 = 4;
/// The longest a broadcast stream may pause over the failover.
const MAX_GAP: Duration = Duration::from_secs(5);

fn node_name(i: usize) -> String {
    format!("{PREFIX}{}@localhost", i + 1)
}

fn amqp_url(i: usize) -> String {
    format!("amqp://127.0.0.1:{}/%2f", AMQP_PORTS[i])
}

/// The private cluster, stopped when dropped (also on a failed assertion).
struct Cluster {
    pids: Vec<u32>,
}

impl Cluster {
    fn script(cmd: &str) -> std::process::Output {
        Command::new("bash")
            .args(["scripts/private-rabbitmq.sh", cmd, PREFIX, "3"])
            .env(
                "PRIVATE_RABBIT_CLUSTER_AMQP_BASE",
                AMQP_PORTS[0].to_string(),
            )
            .env("PRIVATE_RABBIT_CLUSTER_DIST_BASE", "25721")
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/private-rabbitmq.sh")
    }

    /// Boots the 3 nodes and clusters them (bounded by the script).
    fn start(&mut self) {
        // Whatever an aborted earlier run left behind.
        let _ = Cluster::script("cluster-stop");
        let started = Instant::now();
        let out = Cluster::script("cluster-start");
        assert!(
            out.status.success(),
            "could not form the private 3-node RabbitMQ cluster (it needs rabbitmq-server: \
             scripts/ensure-rabbitmq.sh installs it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut pids = vec![0; AMQP_PORTS.len()];
        for line in stdout.lines() {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key).map(str::to_owned))
            };
            if let (Some(node), Some(pid)) = (field("node="), field("pid=")) {
                let i = (0..pids.len())
                    .find(|&i| node == node_name(i))
                    .unwrap_or_else(|| panic!("unknown node in {line:?}"));
                pids[i] = pid.parse().expect("pid");
            }
        }
        assert!(pids.iter().all(|&p| p > 0), "no pids in {stdout:?}");
        println!(
            "cluster of {} nodes formed in {:.1?}",
            pids.len(),
            started.elapsed()
        );
        self.pids = pids;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Cluster::script("cluster-stop");
    }
}

/// `rabbitmqctl -n <node> args…` (bounded), off the async runtime so that
/// the clients' timings are not disturbed.
async fn ctl(node: usize, args: &[&str]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "rabbitmqctl", "-n", &node_name(node), "-q"])
        .args(args)
        .stdin(Stdio::null());
    let what = format!("rabbitmqctl -n {} {}", node_name(node), args.join(" "));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node named in an Erlang pid (`<sgc1@localhost.1.2.3>`) or a node name.
fn node_of(text: &str) -> Option<usize> {
    (0..AMQP_PORTS.len()).find(|&i| text.contains(&node_name(i)))
}

/// A STOMP session, retried while the gateway refuses (bounded).
async fn connect(url: &str) -> StompClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match StompClient::try_connect(url, Duration::from_secs(5)).await {
            Ok(client) => return client,
            Err(e) => {
                assert!(Instant::now() < deadline, "no STOMP session: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What one listener received: (topic, publish sequence number, when).
type Arrivals = Vec<(usize, u64, Instant)>;

async fn listen(mut client: StompClient, stop: Arc<AtomicBool>) -> Arrivals {
    let mut got = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match client.recv_within(Duration::from_millis(200)).await {
            Recv::Frame(f) if f.command == Stomp::Message => {
                let at = Instant::now();
                let body = String::from_utf8_lossy(&f.body).into_owned();
                let (topic, seq) = body.split_once(':').expect("topic:seq");
                got.push((topic.parse().expect("topic"), seq.parse().expect("seq"), at));
            }
            Recv::Timeout => {}
            other => panic!("listener: unexpected {other:?}"),
        }
    }
    got
}

/// The backend: publishes `<topic>:<seq>` round-robin over the topics every
/// 5 ms on the surviving node; returns when each seq was published.
async fn publish_broadcast(topics: Vec<String>, stop: Arc<AtomicBool>) -> Vec<Instant> {
    let conn = Connection::connect(&amqp_url(BACKEND_NODE), ConnectionProperties::default())
        .await
        .expect("backend connection to the surviving node");
    let ch = conn.create_channel().await.expect("channel");
    let mut published = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let seq = published.len() as u64;
        let topic = (seq as usize) % topics.len();
        published.push(Instant::now());
        ch.basic_publish(
            "amq.topic".into(),
            topics[topic].as_str().into(),
            BasicPublishOptions::default(),
            format!("{topic}:{seq}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("backend publish on the surviving node");
    }
    published
}

/// What the queue's sender saw: receipted job numbers, and the jobs whose
/// SEND got an ERROR or no answer (in doubt: maybe delivered, maybe not).
#[derive(Debug, Default)]
struct Sent {
    receipted: Vec<u64>,
    in_doubt: Vec<u64>,
    sessions: usize,
}

/// Sender `id` numbers its jobs from `id * 1_000_000 + 1`.
async fn send_jobs(id: u64, url: String, queue: String, stop: Arc<AtomicBool>) -> Sent {
    let mut sent = Sent::default();
    let mut client = connect(&url).await;
    sent.sessions = 1;
    let mut job = id * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        job += 1;
        client
            .send(
                &Frame::new(Stomp::Send)
                    .with_header("destination", &format!("/queue/{queue}"))
                    .with_header("persistent", "true")
                    .with_header("receipt", &format!("r{job}"))
                    .with_body(format!("job-{job}")),
            )
            .await;
        match client.recv_within(Duration::from_secs(10)).await {
            Recv::Frame(f) if f.command == Stomp::Receipt => {
                assert_eq!(
                    f.header("receipt-id").as_deref(),
                    Some(format!("r{job}").as_str())
                );
                sent.receipted.push(job);
            }
            other => {
                // ERROR (the publish channel died with its node) or no
                // answer: the session is over; a new one goes on.
                if let Recv::Frame(f) = &other {
                    assert_eq!(f.command, Stomp::Error, "{other:?}");
                }
                sent.in_doubt.push(job);
                client = connect(&url).await;
                sent.sessions += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sent
}

/// What the queue's consumer saw: job number -> (redelivered flag, when),
/// one per delivery.
type Consumed = Arc<Mutex<BTreeMap<u64, Vec<(bool, Instant)>>>>;

async fn work(mut client: StompClient, consumed: Consumed, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match client.recv_within(Duration::from_millis(200)).await {
            Recv::Frame(f) if f.command == Stomp::Message => {
                let body = String::from_utf8_lossy(&f.body).into_owned();
                let job: u64 = body
                    .strip_prefix("job-")
                    .and_then(|n| n.parse().ok())
                    .expect("job-N");
                let redelivered = f.header("redelivered").as_deref() == Some("true");
                consumed
                    .lock()
                    .expect("lock")
                    .entry(job)
                    .or_default()
                    .push((redelivered, Instant::now()));
                let ack = f.header("ack").expect("ack header").into_owned();
                client
                    .send(&Frame::new(Stomp::Ack).with_header("id", &ack))
                    .await;
            }
            Recv::Timeout => {}
            other => panic!("queue consumer: unexpected {other:?}"),
        }
    }
}

/// Per (listener, topic) stream: the pause over the kill.
struct Gap {
    topic: usize,
    /// From the last message received before the kill to the first one
    /// published after it.
    gap: Duration,
    /// From the kill to that first message.
    resumed: Duration,
    /// Messages of the stream published but never received.
    missed: usize,
}

fn gaps(arrivals: &Arrivals, published: &[Instant], killed: Instant) -> Vec<Gap> {
    let mut out = Vec::new();
    for topic in 0..TOPICS {
        let stream: Vec<_> = arrivals.iter().filter(|a| a.0 == topic).collect();
        let last_before = stream
            .iter()
            .filter(|a| a.2 < killed)
            .map(|a| a.2)
            .max()
            .expect("messages before the kill");
        let first_after = stream
            .iter()
            .filter(|a| published[a.1 as usize] > killed)
            .map(|a| a.2)
            .min()
            .unwrap_or_else(|| panic!("topic {topic}: nothing published after the kill arrived"));
        let received: HashSet<u64> = stream.iter().map(|a| a.1).collect();
        let missed = (0..published.len() as u64)
            .filter(|s| (*s as usize) % TOPICS == topic && !received.contains(s))
            .count();
        out.push(Gap {
            topic,
            gap: first_after - last_before,
            resumed: first_after - killed,
            missed,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_under_load_loses_nothing_receipted() {
    let test_started = Instant::now();
    let mut cluster = Cluster { pids: Vec::new() };
    cluster.start();

    let urls: Vec<String> = (0..AMQP_PORTS.len()).map(amqp_url).collect();
    let urls = urls.join(",");
    let connections = GATEWAY_CONNECTIONS.to_string();
    let gateway = GatewayProcess::spawn(
        &urls[..urls.find(',').expect("urls")],
        &[
            ("STOMPGATE_AMQP__URLS", urls.as_str()),
            ("STOMPGATE_AMQP__CONNECTIONS", connections.as_str()),
        ],
    );
    assert!(
        gateway.wait_ready(Duration::from_secs(30)).await,
        "gateway not ready on the cluster"
    );
    let ws = gateway.ws_url();

    // The queue first: it is declared on the gateway's first connection.
    let queue = unique("cluster-jobs");
    let mut worker = connect(&ws).await;
    worker
        .subscribe(
            "jobs",
            &format!("/queue/{queue}"),
            &[
                ("x-queue-type", "quorum"),
                ("ack", "client-individual"),
                ("prefetch-count", "50"),
            ],
        )
        .await;
    let topics: Vec<String> = (0..TOPICS).map(|i| unique(&format!("t{i}"))).collect();
    let mut listeners = Vec::new();
    for _ in 0..LISTENERS {
        let mut client = connect(&ws).await;
        for (i, t) in topics.iter().enumerate() {
            client
                .subscribe(&format!("t{i}"), &format!("/topic/{t}"), &[])
                .await;
        }
        listeners.push(client);
    }

    // Load.
    let stop_backend = Arc::new(AtomicBool::new(false));
    let stop_clients = Arc::new(AtomicBool::new(false));
    let consumed: Consumed = Arc::default();
    let listening: Vec<_> = listeners
        .into_iter()
        .map(|c| tokio::spawn(listen(c, Arc::clone(&stop_clients))))
        .collect();
    let working = tokio::spawn(work(
        worker,
        Arc::clone(&consumed),
        Arc::clone(&stop_clients),
    ));
    let publishing = tokio::spawn(publish_broadcast(topics.clone(), Arc::clone(&stop_backend)));
    let sending: Vec<_> = (0..SENDERS)
        .map(|id| {
            tokio::spawn(send_jobs(
                id,
                ws.clone(),
                queue.clone(),
                Arc::clone(&stop_backend),
            ))
        })
        .collect();

    // Where things are: the gateway's connections, the queue's leader, the
    // node of each topic's plane queue (all asked of the backend's node).
    let gateway_tag = format!("stompgate-{}-", gateway.child.id());
    let (conns, queues, bindings) = tokio::join!(
        ctl(
            BACKEND_NODE,
            &[
                "list_connections",
                "--no-table-headers",
                "port",
                "client_properties"
            ]
        ),
        ctl(
            BACKEND_NODE,
            &["list_queues", "--no-table-headers", "name", "pid", "leader"]
        ),
        ctl(
            BACKEND_NODE,
            &[
                "list_bindings",
                "--no-table-headers",
                "source_name",
                "routing_key",
                "destination_name"
            ]
        ),
    );
    let gateway_nodes: Vec<usize> = conns
        .lines()
        .filter(|l| l.contains(&gateway_tag))
        .filter_map(|l| {
            let port: u16 = l.split_whitespace().next()?.parse().ok()?;
            AMQP_PORTS.iter().position(|&p| p == port)
        })
        .collect();
    assert_eq!(
        gateway_nodes.len(),
        GATEWAY_CONNECTIONS,
        "gateway connections: {conns}"
    );
    let mut queue_node = HashMap::new();
    let mut leader = None;
    for line in queues.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        if name == queue {
            leader = parts.next().and_then(node_of);
        } else if let Some(n) = node_of(pid) {
            queue_node.insert(name.to_owned(), n);
        }
    }
    let leader = leader.unwrap_or_else(|| panic!("no leader for {queue} in {queues}"));
    // Kill the leader's node when a gateway connection is on it (it is:
    // the gateway declared the queue there); else connection 0's node.
    let victim = if gateway_nodes.contains(&leader) {
        leader
    } else {
        0
    };
    assert_ne!(victim, BACKEND_NODE);
    let mut affected = HashSet::new();
    for line in bindings.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        if let [source, key, destination] = parts[..] {
            if source == "amq.topic" && queue_node.get(destination) == Some(&victim) {
                if let Some(t) = topics.iter().position(|t| t == key) {
                    affected.insert(t);
                }
            }
        }
    }
    println!(
        "gateway connections on {:?}; quorum queue leader on {}; {} of {TOPICS} topics \
         on plane queues of {}",
        gateway_nodes
            .iter()
            .map(|&n| node_name(n))
            .collect::<Vec<_>>(),
        node_name(leader),
        affected.len(),
        node_name(victim)
    );
    assert!(
        !affected.is_empty(),
        "no topic's plane queue is on the killed node: {bindings}"
    );

    // Let the load run a moment, then kill the node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumed_before = consumed.lock().expect("lock").len();
    assert!(
        consumed_before > 0,
        "the queue consumer got nothing before the kill"
    );
    sigkill(cluster.pids[victim]);
    let killed = Instant::now();
    println!(
        "SIGKILLed {} (pid {})",
        node_name(victim),
        cluster.pids[victim]
    );

    // Load goes on through the failover.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_status(gateway.port, "/readyz").await == Some(200) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unready = killed.elapsed();
    let back = gateway.wait_ready(Duration::from_secs(20)).await;
    println!(
        "gateway /readyz: 503 {unready:.2?} after the kill, 200 again {:.2?} after it",
        killed.elapsed()
    );
    assert!(back, "the gateway did not reconnect to the surviving nodes");
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop_backend.store(true, Ordering::Relaxed);
    let published = publishing.await.expect("backend");
    let mut sent = Sent::default();
    for s in sending {
        let s = s.await.expect("sender");
        sent.receipted.extend(s.receipted);
        sent.in_doubt.extend(s.in_doubt);
        sent.sessions += s.sessions;
    }

    // Every receipted job must reach the consumer (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = {
            let c = consumed.lock().expect("lock");
            sent.receipted.iter().filter(|j| !c.contains_key(j)).count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_clients.store(true, Ordering::Relaxed);
    let mut arrivals = Vec::new();
    for l in listening {
        arrivals.push(l.await.expect("listener"));
    }
    working.await.expect("consumer");

    // Broadcast figures.
    let mut worst: Option<Gap> = None;
    let mut missed_affected = 0;
    let mut missed_other = 0;
    for a in &arrivals {
        for g in gaps(a, &published, killed) {
            if affected.contains(&g.topic) {
                missed_affected += g.missed;
            } else {
                missed_other += g.missed;
            }
            if worst.as_ref().is_none_or(|w| g.gap > w.gap) {
                worst = Some(g);
            }
        }
    }
    let worst = worst.expect("streams");
    println!(
        "broadcast: {} messages published to {TOPICS} topics, {LISTENERS} listeners; \
         longest pause {:.2?} (topic {}{}), resumed {:.2?} after the kill; \
         missed: {missed_affected} on the {} topics of the killed node, {missed_other} on the others",
        published.len(),
        worst.gap,
        worst.topic,
        if affected.contains(&worst.topic) {
            ", on the killed node"
        } else {
            ""
        },
        worst.resumed,
        affected.len()
    );

    // Queue figures.
    let consumed = consumed.lock().expect("lock").clone();
    let lost: Vec<u64> = sent
        .receipted
        .iter()
        .copied()
        .filter(|j| !consumed.contains_key(j))
        .collect();
    let duplicates: Vec<(u64, &Vec<(bool, Instant)>)> = consumed
        .iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|(j, d)| (*j, d))
        .collect();
    let in_doubt_delivered = sent
        .in_doubt
        .iter()
        .filter(|j| consumed.contains_key(j))
        .count();
    let once = sent
        .receipted
        .iter()
        .filter(|j| consumed.get(j).is_some_and(|d| d.len() == 1))
        .count();
    println!(
        "quorum queue: {} SENDs receipted, {} consumed, messages lost: {}; {once} consumed \
         exactly once, {} twice (redelivered:true: their ACK was in flight on the killed \
         node's channel); \
         {} SENDs in doubt (ERROR when their channel died; {} of them delivered); \
         {SENDERS} senders, {} sessions",
        sent.receipted.len(),
        consumed.len(),
        lost.len(),
        duplicates.len(),
        sent.in_doubt.len(),
        in_doubt_delivered,
        sent.sessions
    );
    let remaining = ctl(
        BACKEND_NODE,
        &[
            "list_connections",
            "--no-table-headers",
            "port",
            "client_properties",
        ],
    )
    .await;
    // The queue must be empty (its counts lag a little behind the acks).
    let mut queue_line = String::new();
    for _ in 0..5 {
        let left = ctl(
            BACKEND_NODE,
            &[
                "list_queues",
                "--no-table-headers",
                "name",
                "messages",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
                "leader",
            ],
        )
        .await;
        queue_line = left
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue.as_str()))
            .unwrap_or_else(|| panic!("{queue} not in {left}"))
            .to_owned();
        if queue_line.split_whitespace().nth(1) == Some("0") {
            break;
        }
        println!("queue not empty yet: {queue_line}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let moved: Vec<usize> = remaining
        .lines()
        .filter(|l| l.contains(&gateway_tag))
        .filter_map(|l| {
            let port: u16 = l.split_whitespace().next()?.parse().ok()?;
            AMQP_PORTS.iter().position(|&p| p == port)
        })
        .collect();
    println!(
        "after: queue (name, messages, ready, unacked, consumers, leader) {queue_line}; gateway connections on {:?}; \
         test took {:.1?}",
        moved.iter().map(|&n| node_name(n)).collect::<Vec<_>>(),
        test_started.elapsed()
    );

    assert!(lost.is_empty(), "receipted but never consumed: {lost:?}");
    // A job comes twice only when the client's ACK of its first delivery
    // died with the node: that delivery came before the kill, and the
    // broker's second one says redelivered:true.
    for (job, deliveries) in &duplicates {
        assert!(
            deliveries[1..].iter().all(|d| d.0),
            "job {job} delivered again without redelivered:true"
        );
        assert!(
            deliveries[0].1 < killed + Duration::from_secs(1),
            "job {job} first delivered {:?} after the kill, yet delivered again",
            deliveries[0].1 - killed
        );
    }
    assert!(
        worst.gap <= MAX_GAP,
        "broadcast paused {:?} on topic {}",
        worst.gap,
        worst.topic
    );
    assert_eq!(
        missed_other, 0,
        "messages lost on topics of surviving nodes"
    );
    assert_eq!(
        queue_line.split_whitespace().nth(1),
        Some("0"),
        "messages left in the queue: {queue_line}"
    );
    assert_eq!(moved.len(), GATEWAY_CONNECTIONS, "{remaining}");
    assert!(!moved.contains(&victim));
    assert!(gateway.wait_ready(Duration::from_secs(1)).await);
}
