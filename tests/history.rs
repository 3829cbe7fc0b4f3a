//! Resumable subscriptions backed by RabbitMQ streams (`[history]`,
//! src/bridge/history.rs), with real `stompgate` replicas behind HAProxy
//! and the real RabbitMQ on 127.0.0.1:5672: a merchant's client loses its
//! socket (or its replica is SIGKILLed), a backend publishes 100 orders
//! over AMQP meanwhile, and the client resubscribes with `x-resume-from`
//! (the position of the last MESSAGE it had) through HAProxy: it gets the
//! 100 orders, in order, once each, then live traffic. When the history no
//! longer reaches back it is told `x-resumed:false` and gets live traffic
//! only: nothing invented.
//!
//! Each test declares its own stream (`stompgate.history.<unique>`) and
//! deletes it at the end. Needs `haproxy` (`scripts/ensure-haproxy.sh`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use stompgate::stomp::{Command, Frame};

use common::process::{spawn_haproxy, wait_ready, ChildGuard, Replica};
use common::sse_client::{enc, open};
use common::*;

/// One test at a time: each starts three processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const TEST_BUDGET: Duration = Duration::from_secs(90);
const ORDERS: u32 = 100;

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique("stompgate-history"));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("history: logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A replica with the test's configuration file, logging what the history
/// streams do.
fn spawn_replica(name: &str, dir: &Path, config: &Path) -> Replica {
    Replica::spawn(name, dir, |c| {
        c.arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn,stompgate::bridge::history=info");
    })
}

/// Two replicas with `[history]` for `/topic/<prefix>.*` and HAProxy in
/// front of them (deploy/haproxy-local.cfg.in).
struct Setup {
    dir: Scratch,
    prefix: String,
    replicas: Vec<Replica>,
    haproxy_port: u16,
    _haproxy: ChildGuard,
    _cleanup: StreamCleanup,
}

impl Setup {
    async fn start(history: &str, retention: &str) -> Setup {
        let dir = Scratch::new();
        let name = unique("t").replace(['-', ':'], "_");
        let prefix = unique("merchant").replace('.', "_");
        let cleanup = StreamCleanup(format!("stompgate.history.{name}"));
        let config = dir.0.join("stompgate.toml");
        std::fs::write(
            &config,
            format!(
                "[sockjs]\nenabled = true\n[sse]\nenabled = true\n[history]\n{history}\n[[history.patterns]]\nname = \"{name}\"\ndestination = \"/topic/{prefix}.*\"\n{retention}\n"
            ),
        )
        .expect("config");
        let mut replicas = vec![
            spawn_replica("gw1", &dir.0, &config),
            spawn_replica("gw2", &dir.0, &config),
        ];
        for r in replicas.iter_mut() {
            let log = dir.0.join(format!("{}.log", r.name));
            wait_ready(r.addr, &mut r.process, READY_TIMEOUT, &log).await;
        }
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy-local.cfg.in"),
        )
        .expect("haproxy template");
        let port = free_port();
        let backends: Vec<String> = replicas
            .iter()
            .map(|r| {
                format!(
                    "    server {} {} check inter 300ms fall 1 rise 1",
                    r.name, r.addr
                )
            })
            .collect();
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            template
                .replace("@FRONTEND_PORT@", &port.to_string())
                .replace("@BACKENDS@", &backends.join("\n")),
        )
        .expect("haproxy.cfg");
        let mut haproxy = spawn_haproxy(&cfg, &dir.0.join("haproxy.log"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_ready(
            addr,
            &mut haproxy,
            READY_TIMEOUT,
            &dir.0.join("haproxy.log"),
        )
        .await;
        let setup = Setup {
            dir,
            prefix,
            replicas,
            haproxy_port: port,
            _haproxy: haproxy,
            _cleanup: cleanup,
        };
        setup.wait_stream().await;
        setup
    }

    fn haproxy_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.haproxy_port)
    }

    fn haproxy_addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.haproxy_port).parse().unwrap()
    }

    fn replica_url(&self, i: usize) -> String {
        format!("ws://{}/ws", self.replicas[i].addr)
    }

    fn destination(&self, merchant: &str) -> String {
        format!("/topic/{}.{merchant}", self.prefix)
    }

    fn key(&self, merchant: &str) -> String {
        format!("{}.{merchant}", self.prefix)
    }

    /// Waits until both replicas consume the stream (their log says so).
    async fn wait_stream(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let consumed = self.replicas.iter().all(|r| {
                std::fs::read_to_string(self.dir.0.join(format!("{}.log", r.name)))
                    .unwrap_or_default()
                    .contains("history stream consumed")
            });
            if consumed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas did not consume the stream"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{}.log", self.replicas[i].name)))
            .unwrap_or_default()
    }

    /// Which replica holds `n` sessions now (by their metrics).
    async fn holder(&self) -> Option<usize> {
        for (i, r) in self.replicas.iter().enumerate() {
            if metric(r.addr, "stompgate_connections").await >= 1.0 {
                return Some(i);
            }
        }
        None
    }
}

/// Deletes the test's own stream, also when the test fails early.
struct StreamCleanup(String);

impl Drop for StreamCleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(name: &str, test: F) {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_BUDGET, test)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within {TEST_BUDGET:?}"));
}

/// A backend publishing orders over AMQP.
struct Backend {
    _conn: lapin::Connection,
    ch: lapin::Channel,
}

impl Backend {
    async fn new() -> Backend {
        let conn = amqp().await;
        let ch = confirm_channel(&conn).await;
        Backend { _conn: conn, ch }
    }

    async fn orders(&self, key: &str, range: std::ops::RangeInclusive<u32>) {
        for n in range {
            publish(
                &self.ch,
                "amq.topic",
                key,
                format!("order-{n}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
    }
}

fn position(frame: &Frame) -> String {
    format!(
        "{}:{}",
        frame.header("x-stream-epoch").expect("x-stream-epoch"),
        frame.header("x-stream-offset").expect("x-stream-offset")
    )
}

fn order(frame: &Frame) -> u32 {
    body(frame)
        .strip_prefix("order-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an order: {}", body(frame)))
}

/// Receives `n` MESSAGEs (each within 10 s).
async fn messages(client: &mut StompClient, n: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    while out.len() < n {
        match client.recv_within(Duration::from_secs(10)).await {
            Recv::Frame(f) if f.command == Command::Message => out.push(f),
            Recv::Frame(f) => panic!("unexpected {} {:?}", f.command, f.header("message")),
            other => panic!("{other:?} after {} of {n} messages", out.len()),
        }
    }
    out
}

/// Nothing more arrives within half a second (a duplicate would).
async fn nothing_more(client: &mut StompClient) {
    match client.recv_within(Duration::from_millis(500)).await {
        Recv::Timeout => {}
        Recv::Frame(f) => panic!("unexpected {} with body {:?}", f.command, body(&f)),
        Recv::Closed => panic!("connection closed"),
    }
}

/// Subscribes through `url`, gets orders 1..=5 live, and returns the
/// position of the last one and the client.
async fn first_session(
    setup: &Setup,
    url: &str,
    backend: &Backend,
    merchant: &str,
) -> (StompClient, String) {
    let (mut client, _) = StompClient::connect(url, "1.2").await;
    client
        .subscribe("orders", &setup.destination(merchant), &[])
        .await;
    backend.orders(&setup.key(merchant), 1..=5).await;
    let got = messages(&mut client, 5).await;
    assert_eq!(
        got.iter().map(order).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(
        got[0].header("x-resumed").is_none(),
        "a plain SUBSCRIBE is not a resume"
    );
    let pos = position(&got[4]);
    (client, pos)
}

/// Resubscribes through `url` after `pos` and checks orders 6..=105 arrive
/// in order, once each, the first saying `x-resumed:true`, then live 106.
async fn resumed_session(setup: &Setup, url: &str, backend: &Backend, merchant: &str, pos: &str) {
    let (mut client, _) = StompClient::connect(url, "1.2").await;
    let early = client
        .try_subscribe(
            "orders",
            &setup.destination(merchant),
            &[("x-resume-from", pos)],
            Duration::from_secs(10),
        )
        .await
        .expect("resume subscribe");
    let mut got = early;
    let rest = messages(
        &mut client,
        ORDERS as usize - got.len().min(ORDERS as usize),
    )
    .await;
    got.extend(rest);
    assert_eq!(got[0].header("x-resumed").as_deref(), Some("true"));
    assert!(got[1..].iter().all(|f| f.header("x-resumed").is_none()));
    let orders: Vec<u32> = got.iter().map(order).collect();
    assert_eq!(
        orders,
        (6..6 + ORDERS).collect::<Vec<_>>(),
        "in order, no gap, no duplicate"
    );
    let offsets: Vec<u64> = got
        .iter()
        .map(|f| f.header("x-stream-offset").unwrap().parse().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    // Then live, once.
    backend
        .orders(&setup.key(merchant), 6 + ORDERS..=6 + ORDERS)
        .await;
    let live = messages(&mut client, 1).await;
    assert_eq!(order(&live[0]), 6 + ORDERS);
    nothing_more(&mut client).await;
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_socket_resumes_every_order_through_haproxy_and_on_the_other_replica() {
    bounded("lost_socket", async {
        let setup = Setup::start("", "").await;
        let backend = Backend::new().await;
        // Client A reconnects through HAProxy (any replica); client B
        // directly on the replica that did not hold it (memory of another
        // replica, same stream positions).
        let (a, pos_a) = first_session(&setup, &setup.haproxy_url(), &backend, "m1").await;
        let held_a = setup.holder().await.expect("a replica holds A");
        let (b, pos_b) = first_session(&setup, &setup.replica_url(0), &backend, "m2").await;
        drop(a);
        drop(b);
        backend.orders(&setup.key("m1"), 6..=5 + ORDERS).await;
        backend.orders(&setup.key("m2"), 6..=5 + ORDERS).await;
        resumed_session(&setup, &setup.haproxy_url(), &backend, "m1", &pos_a).await;
        println!(
            "lost_socket: A was on gw{}, resumed through HAProxy",
            held_a + 1
        );
        resumed_session(&setup, &setup.replica_url(1), &backend, "m2", &pos_b).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_replica_loses_no_order_and_catch_up_reads_the_stream() {
    // A small memory: the resume on the surviving replica reads the stream.
    bounded("sigkill", async {
        let mut setup = Setup::start("memory_messages = 10", "").await;
        let backend = Backend::new().await;
        let (client, pos) = first_session(&setup, &setup.haproxy_url(), &backend, "m1").await;
        let held = setup.holder().await.expect("a replica holds the client");
        setup.replicas[held].process.kill();
        drop(client);
        backend.orders(&setup.key("m1"), 6..=5 + ORDERS).await;
        // HAProxy sends the reconnect to the survivor.
        resumed_session(&setup, &setup.haproxy_url(), &backend, "m1", &pos).await;
        // The survivor's memory (10 messages) did not reach back: it read
        // the stream.
        let log = setup.log(1 - held);
        assert!(log.contains("catch-up read"), "no stream read:\n{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_history_says_x_resumed_false_and_invents_nothing() {
    // Memory of 10 messages; retention keeps about 6,000 bytes.
    bounded("trimmed", async {
        // Small segments so that retention trims within the test.
        let setup = Setup::start(
            "memory_messages = 10",
            "max_segment_bytes = 2048\nmax_length_bytes = 6000",
        )
        .await;
        let backend = Backend::new().await;
        let (client, pos) = first_session(&setup, &setup.haproxy_url(), &backend, "m1").await;
        drop(client);
        // 100 orders of 200 bytes: far more than retention keeps.
        let key = setup.key("m1");
        for n in 6..=5 + ORDERS {
            publish(
                &backend.ch,
                "amq.topic",
                &key,
                format!("order-{n}-{}", "x".repeat(200)).as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        let (mut client, _) = StompClient::connect(&setup.haproxy_url(), "1.2").await;
        let early = client
            .try_subscribe(
                "orders",
                &setup.destination("m1"),
                &[("x-resume-from", &pos)],
                Duration::from_secs(10),
            )
            .await
            .expect("subscribe");
        assert!(
            early.is_empty(),
            "nothing of a trimmed history is delivered"
        );
        nothing_more(&mut client).await;
        backend.orders(&key, 1000..=1001).await;
        let live = messages(&mut client, 2).await;
        assert_eq!(live[0].header("x-resumed").as_deref(), Some("false"));
        assert_eq!(live.iter().map(order).collect::<Vec<_>>(), vec![1000, 1001]);
        nothing_more(&mut client).await;
        client.disconnect().await;
        let logs = setup.log(0) + &setup.log(1);
        assert!(
            logs.contains("history trimmed"),
            "retention did not trim:\n{logs}"
        );
        // Garbage, negative, huge and foreign-epoch positions: live, told
        // so. (A replica's stream consumer may still bring an order
        // published just before the SUBSCRIBE: a real one.)
        for (i, bad) in ["garbage", "1:-5", "1:99999999999999999999", "0:3"]
            .into_iter()
            .enumerate()
        {
            let n = 2000 + i as u32;
            let (mut c, _) = StompClient::connect(&setup.haproxy_url(), "1.2").await;
            let mut got = c
                .try_subscribe(
                    "orders",
                    &setup.destination("m1"),
                    &[("x-resume-from", bad)],
                    Duration::from_secs(10),
                )
                .await
                .expect("subscribe");
            backend.orders(&key, n..=n).await;
            while got.last().map(order) != Some(n) {
                got.extend(messages(&mut c, 1).await);
            }
            assert_eq!(
                got[0].header("x-resumed").as_deref(),
                Some("false"),
                "{bad}"
            );
            let orders: Vec<u32> = got.iter().map(order).collect();
            assert!(
                orders.iter().all(|o| (2000..=n).contains(o)),
                "{bad}: {orders:?}"
            );
            assert!(orders.windows(2).all(|w| w[0] < w[1]), "{bad}: {orders:?}");
            nothing_more(&mut c).await;
            c.disconnect().await;
        }
    })
    .await;
}

/// A STOMP session over SockJS xhr-polling (through HAProxy): frames out
/// by `xhr_send`, in by polling `xhr`.
struct Polling {
    addr: SocketAddr,
    url: String,
    buf: String,
}

impl Polling {
    async fn open(addr: SocketAddr) -> Polling {
        let url = format!("/sockjs/000/{}", unique("s"));
        let mut p = Polling {
            addr,
            url,
            buf: String::new(),
        };
        assert_eq!(p.poll_raw().await, "o\n");
        p.send("CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0")
            .await;
        assert_eq!(p.frame().await.0, "CONNECTED");
        p
    }

    async fn poll_raw(&self) -> String {
        let path = format!("{}/xhr", self.url);
        common::sockjs_http::body_of(common::sockjs_http::post(self.addr, &path, "").await)
            .await
            .1
    }

    async fn send(&self, frame: &str) {
        let path = format!("{}/xhr_send", self.url);
        let body = common::sockjs_http::stomp(frame);
        assert_eq!(
            common::sockjs_http::post(self.addr, &path, &body)
                .await
                .status,
            204
        );
    }

    /// The next STOMP frame: (command, headers, body).
    async fn frame(&mut self) -> (String, Vec<(String, String)>, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let trimmed = self.buf.trim_start_matches('\n');
            if let Some(end) = trimmed.find('\0') {
                let text = trimmed[..end].to_owned();
                self.buf = trimmed[end + 1..].to_owned();
                let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
                let mut lines = head.lines();
                let command = lines.next().unwrap_or_default().to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                return (command, headers, body.to_owned());
            }
            assert!(Instant::now() < deadline, "no frame within 15 s");
            let got = self.poll_raw().await;
            match got.strip_prefix('a') {
                Some(array) => {
                    let parts: Vec<String> = serde_json::from_str(array.trim()).expect("a[...]");
                    for part in parts {
                        self.buf.push_str(&part);
                    }
                }
                None if got.starts_with('h') => {}
                None => panic!("session ended: {got}"),
            }
        }
    }

    /// The next `n` MESSAGEs: (headers, body).
    async fn messages(&mut self, n: usize) -> Vec<(Vec<(String, String)>, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            let (command, headers, body) = self.frame().await;
            assert!(command == "MESSAGE" || command == "RECEIPT", "{command}");
            if command == "MESSAGE" {
                out.push((headers, body));
            }
        }
        out
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_xhr_polling_resumes_every_order_through_haproxy() {
    bounded("sockjs_polling", async {
        let setup = Setup::start("", "").await;
        let backend = Backend::new().await;
        let key = setup.key("m1");
        let mut p = Polling::open(setup.haproxy_addr()).await;
        p.send(&format!(
            "SUBSCRIBE\nid:orders\ndestination:{}\nreceipt:r1\n\n\0",
            setup.destination("m1")
        ))
        .await;
        assert_eq!(p.frame().await.0, "RECEIPT");
        backend.orders(&key, 1..=5).await;
        let got = p.messages(5).await;
        let last = &got[4].0;
        let pos = format!(
            "{}:{}",
            header(last, "x-stream-epoch").expect("epoch"),
            header(last, "x-stream-offset").expect("offset")
        );
        // The page stops polling (its session times out on its own).
        drop(p);
        backend.orders(&key, 6..=5 + ORDERS).await;
        let mut p = Polling::open(setup.haproxy_addr()).await;
        p.send(&format!(
            "SUBSCRIBE\nid:orders\ndestination:{}\nx-resume-from:{pos}\n\n\0",
            setup.destination("m1")
        ))
        .await;
        let got = p.messages(ORDERS as usize).await;
        assert_eq!(header(&got[0].0, "x-resumed"), Some("true"));
        let orders: Vec<String> = got.iter().map(|(_, b)| b.clone()).collect();
        let want: Vec<String> = (6..6 + ORDERS).map(|n| format!("order-{n}")).collect();
        assert_eq!(orders, want, "in order, no gap, no duplicate");
        backend.orders(&key, 6 + ORDERS..=6 + ORDERS).await;
        let live = p.messages(1).await;
        assert_eq!(live[0].1, format!("order-{}", 6 + ORDERS));
        p.send("DISCONNECT\nreceipt:bye\n\n\0").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_resumes_every_order_on_another_replica_after_a_sigkill() {
    bounded("sse", async {
        let mut setup = Setup::start("", "").await;
        let backend = Backend::new().await;
        let key = setup.key("m1");
        let path = format!("/sse?destination={}", enc(&setup.destination("m1")));
        // The page's EventSource is on replica gw1.
        let mut stream = open(setup.replicas[0].addr, &path, &[])
            .await
            .expect("event stream");
        backend.orders(&key, 1..=5).await;
        let mut last = String::new();
        for n in 1..=5 {
            let (id, _, data) = stream.event().await;
            assert_eq!(data, format!("order-{n}"));
            last = id.expect("an event id");
        }
        // gw1 dies; orders go on; EventSource reconnects through HAProxy
        // (to gw2) with the last id it saw as Last-Event-ID.
        setup.replicas[0].kill();
        drop(stream);
        backend.orders(&key, 6..=5 + ORDERS).await;
        let mut stream = open(setup.haproxy_addr(), &path, &[("Last-Event-ID", &last)])
            .await
            .expect("event stream");
        let got: Vec<String> = {
            let mut got = Vec::new();
            for _ in 0..ORDERS {
                got.push(stream.event().await.2);
            }
            got
        };
        let want: Vec<String> = (6..6 + ORDERS).map(|n| format!("order-{n}")).collect();
        assert_eq!(got, want, "in order, no gap, no duplicate");
        backend.orders(&key, 6 + ORDERS..=6 + ORDERS).await;
        assert_eq!(stream.event().await.2, format!("order-{}", 6 + ORDERS));
        stream.no_event(Duration::from_millis(300)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_the_outage_reads_the_stream_to_its_end() {
    // The new replica has seen no live message: it does not know where
    // live is, reads to the end of the stream, then serves live.
    bounded("fresh_replica", async {
        let setup = Setup::start("", "").await;
        let backend = Backend::new().await;
        let (client, pos) = first_session(&setup, &setup.replica_url(0), &backend, "m1").await;
        drop(client);
        backend.orders(&setup.key("m1"), 6..=5 + ORDERS).await;
        let config = setup.dir.0.join("stompgate.toml");
        let mut fresh = spawn_replica("gw3", &setup.dir.0, &config);
        let log = setup.dir.0.join("gw3.log");
        wait_ready(fresh.addr, &mut fresh.process, READY_TIMEOUT, &log).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(setup.dir.0.join("gw3.log"))
            .unwrap_or_default()
            .contains("history stream consumed")
        {
            assert!(Instant::now() < deadline, "gw3 did not consume the stream");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = format!("ws://{}/ws", fresh.addr);
        resumed_session(&setup, &url, &backend, "m1", &pos).await;
        let log = std::fs::read_to_string(setup.dir.0.join("gw3.log")).unwrap_or_default();
        assert!(log.contains("catch-up read"), "no stream read:\n{log}");
    })
    .await;
}
