//! STOMP over every SockJS transport in real headless Chromium (Debian's
//! `chromium`, driven by puppeteer-core from tests/browser/sockjs.mjs),
//! against two gateway replicas (real `stompgate` processes) behind HAProxy
//! and the RabbitMQ at 127.0.0.1:5672.
//!
//! The page (tests/browser/sockjs.html, served by the gateways as a demo
//! page) loads sockjs-client from the gateway (`sockjs.client_file` pointing
//! at the locked npm package in tests/browser/node_modules) and
//! @stomp/stompjs (the locked npm bundle, copied next to the page). For each
//! transport, forced with `transports: [name]`: CONNECT, SUBSCRIBE to a
//! `/queue/` with client-individual acks and prefetch 5, messages
//! published over AMQP by this test arrive once, in order and unchanged
//! (bodies holding `</script>`, `<!--`, U+2028/U+2029 and non-ASCII text),
//! every one acked (the queue is empty afterwards, ready and unacked), a
//! SEND with a receipt reaches its queue.
//!
//! Two HAProxy set-ups (deploy/haproxy-sockjs-local.cfg.in, the local twin
//! of the shipped example deploy/haproxy-sockjs.cfg):
//! - `balance uri depth 3`: every request of a session to one replica (the
//!   cheap sticky option);
//! - round-robin, no stickiness: each request lands on either replica, and
//!   those for a session held by the other are forwarded to it over
//!   RabbitMQ (`sockjs.forward`).
//!
//! `SOCKJS_BROWSER_TRANSPORTS=xhr-polling,jsonp-polling` runs only those.
//! Needs Chromium, node, the npm packages of tests/browser
//! (`scripts/ensure-chromium.sh`) and HAProxy (`scripts/ensure-haproxy.sh`);
//! without them these tests fail, they do not skip.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use common::process::{haproxy_bin, spawn_haproxy, wait_ready, ChildGuard, Replica};
use common::*;

/// Every transport sockjs-client 1.6 has in a browser, in the order tried.
const TRANSPORTS: [&str; 8] = [
    "xhr-streaming",
    "xhr-polling",
    "iframe-htmlfile",
    "jsonp-polling",
    "eventsource",
    "iframe-eventsource",
    "iframe-xhr-polling",
    "websocket",
];

/// Messages published per transport (more than the prefetch of 5).
const MESSAGES: usize = 20;

const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one run of tests/browser/sockjs.mjs (all transports).
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// One browser test at a time (each starts Chromium, two gateways, HAProxy).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn browser_dir() -> PathBuf {
    repo().join("tests").join("browser")
}

/// The sockjs-client bundle the gateways serve (never committed: npm ci).
fn sockjs_bundle() -> PathBuf {
    browser_dir().join("node_modules/sockjs-client/dist/sockjs.min.js")
}

fn transports() -> Vec<String> {
    match std::env::var("SOCKJS_BROWSER_TRANSPORTS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|t| t.trim().to_owned()).collect()
        }
        _ => TRANSPORTS.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// What the page expects: the same text as `messageBody` in sockjs.mjs.
fn message_body(queue: &str, i: usize) -> String {
    format!("{i} {queue} </script><!-- \u{2028}\u{2029} é ☃ \"q\" \\")
}

fn chromium() -> PathBuf {
    std::env::var_os("DEMO_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn check_tools() {
    let browser = chromium();
    assert!(
        browser.is_file(),
        "{} is missing: run scripts/ensure-chromium.sh (scripts/test.sh runs it)",
        browser.display()
    );
    for package in ["puppeteer-core", "sockjs-client", "@stomp/stompjs"] {
        assert!(
            browser_dir().join("node_modules").join(package).is_dir(),
            "tests/browser/node_modules/{package} is missing: run scripts/ensure-chromium.sh (npm ci in tests/browser)"
        );
    }
    assert!(
        sockjs_bundle().is_file(),
        "{} is missing",
        sockjs_bundle().display()
    );
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is missing: run scripts/ensure-node.sh ({node:?})"
    );
}

// ---------------------------------------------------------------------------
// Processes

/// Configs, logs and the page; removed by [`Scratch::finish`], kept (for
/// the logs) when a test fails.
struct Scratch(PathBuf, bool);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique("sockjs-browser"));
        std::fs::create_dir_all(dir.join("page")).expect("scratch dir");
        Scratch(dir, false)
    }

    fn finish(mut self) {
        self.1 = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!(
                "sockjs_browser: configs and logs kept in {}",
                self.0.display()
            );
        }
    }
}

/// The page and its stompjs bundle, as the gateways serve them (demo.dir).
fn write_page(dir: &Path) {
    let page = dir.join("page");
    std::fs::copy(browser_dir().join("sockjs.html"), page.join("sockjs.html")).expect("copy page");
    std::fs::copy(
        browser_dir().join("node_modules/@stomp/stompjs/bundles/stomp.umd.min.js"),
        page.join("stomp.umd.min.js"),
    )
    .expect("copy the stompjs bundle");
}

/// A replica serving SockJS and the test page (demo.dir).
fn spawn_replica(name: &str, dir: &Path) -> Replica {
    Replica::spawn(name, dir, |c| {
        c.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("STOMPGATE_SOCKJS__ENABLED", "true")
        .env("STOMPGATE_SOCKJS__CLIENT_FILE", sockjs_bundle())
        .env("STOMPGATE_DEMO__ENABLED", "true")
        .env("STOMPGATE_DEMO__DIR", dir.join("page"));
    })
}

const STICKY: &str = "    balance uri depth 3\n";
const ROUND_ROBIN: &str = "    balance roundrobin\n";

/// deploy/haproxy-sockjs-local.cfg.in filled in; `sticky: false` replaces
/// the session hashing with round-robin.
fn haproxy_config(port: u16, replicas: &[Replica], sticky: bool) -> String {
    let path = repo().join("deploy/haproxy-sockjs-local.cfg.in");
    let template = std::fs::read_to_string(&path).expect("deploy/haproxy-sockjs-local.cfg.in");
    assert!(
        template.contains(STICKY),
        "{} lacks {STICKY:?}",
        path.display()
    );
    let backends: Vec<String> = replicas
        .iter()
        .map(|r| {
            format!(
                "    server {} {} check inter 500ms fall 2 rise 1",
                r.name, r.addr
            )
        })
        .collect();
    let config = template
        .replace("@FRONTEND_PORT@", &port.to_string())
        .replace("@BACKENDS@", &backends.join("\n"));
    if sticky {
        config
    } else {
        config.replace(STICKY, ROUND_ROBIN)
    }
}

/// HAProxy in the foreground; its port.
async fn start_haproxy(replicas: &[Replica], dir: &Path, sticky: bool) -> (u16, ChildGuard) {
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(port, replicas, sticky)).expect("write haproxy.cfg");
    let log_path = dir.join("haproxy.log");
    let mut process = spawn_haproxy(&cfg, &log_path);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_ready(addr, &mut process, READY_TIMEOUT, &log_path).await;
    (port, process)
}

/// The sum of a counter family's series on one replica.
async fn family_total(addr: SocketAddr, family: &str) -> f64 {
    metrics_text(addr)
        .await
        .lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// The broker side of the page's steps

/// `CONTROL publish QUEUE N`: N messages to QUEUE through the default
/// exchange, with publisher confirms.
async fn publish_messages(queue: &str, n: usize) -> String {
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    for i in 0..n {
        publish(
            &ch,
            "",
            queue,
            message_body(queue, i).as_bytes(),
            BasicProperties::default().with_content_type("text/plain".into()),
        )
        .await;
    }
    let _ = conn.close(200, "done".into()).await;
    "published".to_owned()
}

/// `CONTROL check QUEUE OUT TRANSPORT`: QUEUE holds nothing (every message
/// was acked, none is left unacked), OUT holds the page's SEND. Deletes
/// both.
async fn check_broker(queue: &str, out: &str, transport: &str) -> String {
    let _cleanup = (QueueCleanup(queue.to_owned()), QueueCleanup(out.to_owned()));
    // The session's end settles what was left unacked: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let q = queue.to_owned();
        let left = tokio::task::spawn_blocking(move || queue_stat(&q, "messages"))
            .await
            .expect("rabbitmqctl");
        if left == Some(0) || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if left != Some(0) {
        return format!("fail: {queue} holds {left:?} messages (ready + unacked): the client acks did not all reach RabbitMQ");
    }
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get(out.into(), lapin::options::BasicGetOptions { no_ack: true })
        .await;
    let _ = conn.close(200, "done".into()).await;
    let expected = format!("sent over {transport}: </script> \u{2028} ☃");
    match got {
        Ok(Some(message)) if message.delivery.data == expected.as_bytes() => "ok".to_owned(),
        Ok(Some(message)) => format!(
            "fail: {out} holds {:?}, not {expected:?}",
            String::from_utf8_lossy(&message.delivery.data)
        ),
        Ok(None) => format!("fail: the SEND did not reach {out}"),
        Err(e) => format!("fail: basic.get {out}: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The run

/// Two replicas behind HAProxy (`sticky`: `balance uri`), then
/// tests/browser/sockjs.mjs over every transport; the transports that
/// failed, with why.
async fn run_in_chromium(sticky: bool) {
    let _serial = SERIAL.lock().await;
    check_tools();
    let started = Instant::now();
    let scratch = Scratch::new();
    let dir = scratch.0.clone();
    write_page(&dir);
    let mut replicas = vec![spawn_replica("gw1", &dir), spawn_replica("gw2", &dir)];
    for r in replicas.iter_mut() {
        let log = dir.join(format!("{}.log", r.name));
        wait_ready(r.addr, &mut r.process, READY_TIMEOUT, &log).await;
    }
    let (port, _haproxy) = start_haproxy(&replicas, &dir, sticky).await;
    let run = unique("sockjs-br");
    let transports = transports();
    println!(
        "sockjs_browser: replicas {} and {} behind HAProxy 127.0.0.1:{port} ({}); transports {}",
        replicas[0].addr,
        replicas[1].addr,
        if sticky {
            "balance uri depth 3"
        } else {
            "round-robin"
        },
        transports.join(", ")
    );

    let mut child = Command::new("node")
        .arg("sockjs.mjs")
        .current_dir(browser_dir())
        .env("SOCKJS_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("SOCKJS_TRANSPORTS", transports.join(","))
        .env("SOCKJS_RUN", &run)
        .env("SOCKJS_MESSAGES", MESSAGES.to_string())
        .env("DEMO_CHROMIUM", chromium())
        .env("NO_COLOR", "1")
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        // Its own process group: a timeout also ends Chromium.
        .process_group(0)
        .spawn()
        .expect("spawn node");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut results: Vec<(String, String)> = Vec::new();
    let drive = async {
        while let Some(line) = lines.next_line().await.expect("read node stdout") {
            println!("sockjs.mjs: {line}");
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["CONTROL", "publish", queue, n] => {
                    Some(publish_messages(queue, n.parse().expect("N")).await)
                }
                ["CONTROL", "check", queue, out, transport] => {
                    Some(check_broker(queue, out, transport).await)
                }
                ["RESULT", transport, verdict, ..] => {
                    let why = line.splitn(4, ' ').nth(3).unwrap_or_default();
                    let verdict = if *verdict == "ok" { "ok" } else { why };
                    results.push(((*transport).to_owned(), verdict.to_owned()));
                    None
                }
                _ => None,
            };
            if let Some(answer) = answer {
                stdin
                    .write_all(format!("{answer}\n").as_bytes())
                    .await
                    .expect("write to node");
                stdin.flush().await.expect("flush");
            }
        }
        child.wait().await.expect("wait for node")
    };
    let status = tokio::time::timeout(NODE_TIMEOUT, drive).await;
    if status.is_err() {
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &format!("-{pid}")])
                .status();
        }
    }
    // Requests one replica ran for the other (forwarded over RabbitMQ).
    let mut ran_for_the_other = 0.0;
    for r in &replicas {
        let received: f64 = metrics_text(r.addr)
            .await
            .lines()
            .filter(|l| {
                l.starts_with("stompgate_sockjs_forwarded_total")
                    && l.contains("outcome=\"received\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum();
        ran_for_the_other += received;
        println!(
            "sockjs_browser: {} served {} SockJS requests, {received} of them for the other replica",
            r.name,
            family_total(r.addr, "stompgate_sockjs_requests_total").await
        );
    }
    println!(
        "sockjs_browser: {} transports in {:?}: {results:?}",
        results.len(),
        started.elapsed()
    );
    let failed: Vec<&(String, String)> = results.iter().filter(|(_, v)| v != "ok").collect();
    match status {
        Err(_) => panic!("sockjs.mjs did not finish within {NODE_TIMEOUT:?}; its log is above"),
        Ok(status) => {
            assert!(
                failed.is_empty(),
                "transports that failed: {failed:?}; logs above"
            );
            assert!(
                status.success(),
                "sockjs.mjs failed ({status}); its log is above"
            );
            assert_eq!(
                results.len(),
                transports.len(),
                "a result for every transport: {results:?}"
            );
            if sticky {
                assert_eq!(
                    ran_for_the_other, 0.0,
                    "balance uri keeps each session on one replica: nothing forwarded"
                );
            } else {
                assert!(
                    ran_for_the_other > 0.0,
                    "round-robin: requests reached their session through the other replica"
                );
            }
        }
    }
    drop(replicas);
    scratch.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sockjs_transport_in_chromium_behind_haproxy_balance_uri() {
    run_in_chromium(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sockjs_transport_in_chromium_behind_haproxy_round_robin() {
    run_in_chromium(false).await;
}

/// The shipped example and the test's template route SockJS alike.
#[test]
fn the_shipped_haproxy_example_matches_the_tested_template() {
    let routing = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        text.lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("acl sockjs_session")
                    || l.starts_with("use_backend sockjs_sessions")
                    || l.starts_with("balance uri")
                    || l.starts_with("hash-type")
                    || l.starts_with("backend ")
            })
            .map(str::to_owned)
            .collect()
    };
    let example = routing("deploy/haproxy-sockjs.cfg");
    assert_eq!(example, routing("deploy/haproxy-sockjs-local.cfg.in"));
    assert!(example.contains(&STICKY.trim().to_owned()), "{example:?}");
    let check = Process::new(haproxy_bin())
        .args(["-c", "-f"])
        .arg(repo().join("deploy/haproxy-sockjs.cfg"))
        .stdin(Stdio::null())
        .output()
        .expect("haproxy -c");
    assert!(
        check.status.success(),
        "haproxy rejects deploy/haproxy-sockjs.cfg: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
