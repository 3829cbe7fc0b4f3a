//! The demo pages end to end in headless Chromium (`demo/`, served by the
//! gateway when `demo.enabled`), with the demo backend
//! (`examples/demo-backend/backend.rs`, run in this process) and the
//! RabbitMQ at 127.0.0.1:5672 (or `STOMPGATE_AMQP_URL`):
//!
//! - the merchant page shows orders placed by the order simulator within a
//!   second, only its own merchant's, and keeps working across a gateway
//!   restart (stompjs reconnects): the orders placed while the gateway was
//!   down reach the page by its resumed subscription (`[history]`,
//!   /stompgate-resume.js), without the page asking the backend;
//! - the QR login page turns to "logged in" once the phone page confirms; an
//!   expired or used login id is refused;
//! - no page logs a console error (apart from the ones a step expects);
//! - the screenshots of both pages (docs/demo-*.png) are taken here.
//!
//! The browser side is tests/browser/demo.mjs (puppeteer-core driving
//! /usr/bin/chromium, or `DEMO_CHROMIUM`). `scripts/ensure-chromium.sh`
//! (run by `scripts/test.sh`) installs Chromium and the npm packages; without
//! them this test fails, it does not skip.
//!
//! Screenshots go to `target/demo-screenshots/`, or to
//! `DEMO_SCREENSHOTS` (`DEMO_SCREENSHOTS=docs` refreshes
//! the README's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use common::try_http_get;
use stompgate::config::Config;

mod common;

#[path = "../examples/demo-backend/backend.rs"]
#[allow(dead_code)]
mod backend;

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const NODE_TIMEOUT: Duration = Duration::from_secs(150);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn amqp_url() -> String {
    std::env::var("STOMPGATE_AMQP_URL").unwrap_or_else(|_| Config::default().amqp.url)
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// One HTTP/1.1 GET: (status, headers and body as text).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let response = try_http_get(addr, path, Duration::from_secs(10)).await?;
    let text = format!("{}\r\n\r\n{}", response.head, response.body);
    Ok((response.status, text))
}

async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(response) = try_http_get(addr, "/readyz", Duration::from_secs(2)).await {
            if response.status == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway on {addr} was not ready within {READY_TIMEOUT:?}; \
             is RabbitMQ running on 127.0.0.1:5672? Run scripts/ensure-rabbitmq.sh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway served in this process until `stop`.
struct RunningGateway {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start_gateway(listener: TcpListener, config: Config) -> RunningGateway {
    let addr = listener.local_addr().expect("local_addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stompgate::server::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    wait_ready(addr).await;
    RunningGateway { stop, task }
}

impl RunningGateway {
    async fn shut_down(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the gateway did not shut down cleanly: {other:?}"),
        }
    }
}

/// The gateway configuration scripts/run.sh uses (demo/stompgate.toml and
/// the shared JWT secret), on free ports.
fn demo_config(secret: &str, backend: SocketAddr) -> Config {
    let file = repo().join("demo").join("stompgate.toml");
    let mut config = Config::load(
        Some(&file),
        vec![(
            "STOMPGATE_AUTH__JWT__HS256_SECRET".to_owned(),
            secret.to_owned(),
        )],
    )
    .expect("demo/stompgate.toml loads");
    assert!(config.demo.enabled, "demo/stompgate.toml enables the demo");
    config.demo.dir = repo().join("demo");
    assert!(config.sockjs.enabled, "demo/stompgate.toml enables SockJS");
    config.sockjs.client_file =
        Some(repo().join("tests/browser/node_modules/sockjs-client/dist/sockjs.min.js"));
    config.demo.backend_url = format!("http://{backend}");
    config.amqp.url = amqp_url();
    config.drain_window_ms = 200;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pages_are_served_only_when_enabled() {
    // Off by default.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::default();
    config.amqp.url = amqp_url();
    config.demo.dir = repo().join("demo");
    let gateway = start_gateway(listener, config).await;
    for path in ["/demo/", "/demo/merchant/", "/demo/config.json", "/demo"] {
        let (status, _) = http_get(addr, path).await.expect("GET");
        assert_eq!(status, 404, "GET {path} with demo.enabled = false");
    }
    gateway.shut_down().await;

    // On: the pages, their assets, the configuration.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = demo_config("0123456789abcdef0123", "127.0.0.1:9".parse().unwrap());
    let gateway = start_gateway(listener, config).await;
    for (path, content_type) in [
        ("/demo/", "text/html"),
        ("/demo/merchant/", "text/html"),
        ("/demo/qr-login/", "text/html"),
        ("/demo/qr-login/phone?id=x", "text/html"),
        ("/demo/common.js", "text/javascript"),
        ("/demo/vendor/stompjs/stomp.umd.min.js", "text/javascript"),
        ("/demo/vendor/qrcode-generator/qrcode.js", "text/javascript"),
        ("/demo/config.json", "application/json"),
    ] {
        let (status, text) = http_get(addr, path).await.expect("GET");
        assert_eq!(status, 200, "GET {path}: {text:.300}");
        assert!(
            text.to_ascii_lowercase()
                .contains(&format!("content-type: {content_type}")),
            "GET {path} is {content_type}: {text:.300}"
        );
    }
    let (_, text) = http_get(addr, "/demo/config.json").await.expect("GET");
    assert!(
        text.contains(r#""backend_url":"http://127.0.0.1:9""#)
            && text.contains(r#""ws_path":"/ws""#),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or_default(),
    )
    .expect("config.json is JSON");
    assert_eq!(
        json["sockjs"],
        serde_json::json!({"path": "/sockjs", "client_url": "/sockjs/sockjs.min.js"}),
        "{text}"
    );
    let (status, text) = http_get(addr, "/demo/merchant").await.expect("GET");
    assert_eq!(status, 308, "{text:.300}");
    assert!(text.contains("location: /demo/merchant/"), "{text:.300}");
    for path in [
        "/demo/../Cargo.toml",
        "/demo/%2e%2e/Cargo.toml",
        "/demo/stompgate.toml",
        "/demo/vendor/README.md",
        "/demo/nothing.html",
        "/demo/.hidden",
    ] {
        let (status, _) = http_get(addr, path).await.expect("GET");
        assert_eq!(status, 404, "GET {path}");
    }
    gateway.shut_down().await;
}

#[test]
fn the_backend_uses_the_gateways_routing_keys() {
    for user in ["merchant-1", "alice.smith", "a*b#c/d%e", "qr-00ff"] {
        assert_eq!(
            backend::user_routing_key(user, "orders"),
            format!("{}.orders", stompgate::auth::user::encode_user(user)),
            "{user}"
        );
    }
}

#[test]
fn vendored_assets_are_the_locked_npm_files() {
    let modules = repo().join("tests").join("browser").join("node_modules");
    for (vendored, source) in [
        (
            "demo/vendor/stompjs/stomp.umd.min.js",
            "@stomp/stompjs/bundles/stomp.umd.min.js",
        ),
        (
            "demo/vendor/qrcode-generator/qrcode.js",
            "qrcode-generator/dist/qrcode.js",
        ),
    ] {
        let ours = std::fs::read(repo().join(vendored)).expect(vendored);
        let theirs = std::fs::read(modules.join(source)).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/ensure-chromium.sh (npm ci in tests/browser)",
                modules.join(source).display()
            )
        });
        assert!(
            ours == theirs,
            "{vendored} differs from the npm package's {source}: copy it again (demo/vendor/README.md)"
        );
    }
}

fn chromium() -> PathBuf {
    std::env::var_os("DEMO_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn check_tools(dir: &Path) {
    let browser = chromium();
    assert!(
        browser.is_file(),
        "{} is missing: run scripts/ensure-chromium.sh (scripts/test.sh runs it)",
        browser.display()
    );
    assert!(
        dir.join("node_modules").join("puppeteer-core").is_dir(),
        "{}/node_modules/puppeteer-core is missing: run scripts/ensure-chromium.sh",
        dir.display()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pages_in_chromium() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let started = Instant::now();
    let dir = repo().join("tests").join("browser");
    check_tools(&dir);
    let secret = random_hex(24);

    // The demo backend: three merchants, an order every 300 ms.
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_addr = backend_listener.local_addr().expect("addr");
    let mut backend_config = backend::BackendConfig::new(amqp_url(), secret.clone());
    backend_config.merchants = 3;
    backend_config.order_interval = Duration::from_millis(300);
    let (stop_backend, backend_stopped) = oneshot::channel::<()>();
    let backend_task = tokio::spawn(backend::run(backend_listener, backend_config, async move {
        let _ = backend_stopped.await;
    }));

    // The gateway, as scripts/run.sh configures it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = demo_config(&secret, backend_addr);
    let mut gateway = Some(start_gateway(listener, config.clone()).await);

    let shots = std::env::var_os("DEMO_SCREENSHOTS")
        .map(|d| {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo().join(d)
            }
        })
        .unwrap_or_else(|| repo().join("target").join("demo-screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let mut child = Command::new("node")
        .arg("demo.mjs")
        .current_dir(&dir)
        .env("DEMO_BASE_URL", format!("http://{addr}"))
        .env("DEMO_BACKEND_URL", format!("http://{backend_addr}"))
        .env("DEMO_CHROMIUM", chromium())
        .env("DEMO_SCREENSHOTS", &shots)
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

    // demo.mjs asks for the gateway restart on its stdout; everything else
    // it prints is its log.
    let drive = async {
        let mut log = String::new();
        while let Some(line) = lines.next_line().await.expect("read node stdout") {
            println!("demo.mjs: {line}");
            log.push_str(&line);
            log.push('\n');
            let answer: &[u8] = match line.trim() {
                "CONTROL stop-gateway" => {
                    gateway.take().expect("gateway").shut_down().await;
                    b"stopped\n"
                }
                "CONTROL start-gateway" => {
                    let listener = TcpListener::bind(addr)
                        .await
                        .expect("bind the same port again");
                    gateway = Some(start_gateway(listener, config.clone()).await);
                    b"started\n"
                }
                _ => continue,
            };
            stdin.write_all(answer).await.expect("write to node");
            stdin.flush().await.expect("flush");
        }
        child.wait().await.expect("wait for node")
    };
    let status = match tokio::time::timeout(NODE_TIMEOUT, drive).await {
        Ok(status) => Some(status),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &format!("-{pid}")])
                    .status();
            }
            None
        }
    };
    if let Some(gateway) = gateway.take() {
        gateway.shut_down().await;
    }
    let _ = stop_backend.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), backend_task).await;
    println!(
        "demo_pages_in_chromium took {:?}; screenshots in {}",
        started.elapsed(),
        shots.display()
    );
    match status {
        None => panic!("demo.mjs did not finish within {NODE_TIMEOUT:?}; its log is above"),
        Some(status) => assert!(
            status.success(),
            "demo.mjs failed ({status}); its log is above"
        ),
    }
}
