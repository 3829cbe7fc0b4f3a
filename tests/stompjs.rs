//! Runs the JavaScript tests in tests/js (the real @stomp/stompjs client,
//! under node's test runner) against a gateway started in this process on an
//! ephemeral port, bridged to the RabbitMQ at 127.0.0.1:5672 (or
//! `STOMPGATE_AMQP_URL`).
//!
//! Needs node and tests/js/node_modules: `scripts/ensure-node.sh` (run by
//! `scripts/test.sh`) installs both. Without them this test fails; it does not
//! skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use common::try_http_get;

mod common;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// HS256 key of the JWT tests.
const JWT_SECRET: &str = "stompjs-test-secret-0123456789";
const NODE_TIMEOUT: Duration = Duration::from_secs(90);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// The test files node runs: every `*.test.mjs` / `*.test.js` in tests/js.
fn js_test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".test.mjs") || n.ends_with(".test.js"))
        })
        .collect();
    files.sort();
    files
}

/// Fails (does not skip) when node or the npm dependencies are missing.
async fn check_node(dir: &Path) -> String {
    let version = match Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!(
            "`node --version` failed ({}): {}; run scripts/ensure-node.sh",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "node is not installed or not on PATH ({e}): run scripts/ensure-node.sh \
             (scripts/test.sh runs it) to install Node.js and the tests/js dependencies"
        ),
    };
    let stompjs = dir.join("node_modules").join("@stomp").join("stompjs");
    assert!(
        stompjs.is_dir(),
        "{} is missing: run scripts/ensure-node.sh (npm ci in tests/js)",
        stompjs.display()
    );
    version
}

/// Polls `/readyz` until it answers 200 (the AMQP connection is up).
async fn wait_ready(
    addr: std::net::SocketAddr,
    server: &tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    loop {
        assert!(
            !server.is_finished(),
            "the gateway stopped before it was ready (last /readyz: {last})"
        );
        match try_http_get(addr, "/readyz", Duration::from_secs(2)).await {
            Ok(response) if response.status == 200 => return,
            Ok(response) => last = format!("HTTP {}", response.status),
            Err(e) => last = format!("error: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET http://{addr}/readyz did not answer 200 within {READY_TIMEOUT:?} \
             (last: {last}); is RabbitMQ running on 127.0.0.1:5672? \
             Run scripts/ensure-rabbitmq.sh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes the durable queues the JS tests used (names listed in `log`, one a
/// line), so reruns leave nothing behind in RabbitMQ. Best effort, bounded.
async fn delete_queues(amqp_url: &str, log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let _ = std::fs::remove_file(log);
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if names.is_empty() {
        return;
    }
    let cleanup = async {
        let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        for name in &names {
            if let Err(e) = channel
                .queue_delete(
                    (*name).into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
            {
                return Err(format!("delete queue {name}: {e}"));
            }
        }
        let _ = conn.close(200, "done".into()).await;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), cleanup).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: cleaning up the JS tests' queues: {e}"),
        Err(_) => eprintln!("warning: cleaning up the JS tests' queues timed out"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_client_against_gateway() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }

    let dir = js_dir();
    let node_version = check_node(&dir).await;
    let files = js_test_files(&dir);
    assert!(
        !files.is_empty(),
        "no *.test.mjs files in {}",
        dir.display()
    );

    let mut config = stompgate::config::Config::default();
    // Anonymous sessions for the plain tests, and a JWT key for the JWT ones.
    config.auth.anonymous = true;
    config.auth.jwt = Some(stompgate::config::JwtConfig {
        hs256_secret: Some(JWT_SECRET.to_owned()),
        ..Default::default()
    });
    let jwt_user = format!("js-user-{}", std::process::id());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": jwt_user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encode token");
    if let Ok(url) = std::env::var("STOMPGATE_AMQP_URL") {
        config.amqp.url = url;
    }
    let amqp_url = config.amqp.url.clone();
    let ws_path = config.ws_path.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let server = tokio::spawn(stompgate::server::serve(
        listener,
        config,
        std::future::pending::<()>(),
    ));
    wait_ready(addr, &server).await;

    let url = format!("ws://{addr}{ws_path}");
    let queue_log = std::env::temp_dir().join(format!(
        "stompgate-js-queues-{}-{}.txt",
        std::process::id(),
        addr.port()
    ));
    let _ = std::fs::remove_file(&queue_log);
    eprintln!("running node {node_version} --test against {url}");
    let child = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .args(&files)
        .current_dir(&dir)
        .env("STOMPGATE_URL", &url)
        .env("STOMPGATE_JWT", &jwt)
        .env("STOMPGATE_JWT_USER", &jwt_user)
        .env("STOMPGATE_JS_QUEUE_LOG", &queue_log)
        .env("NO_COLOR", "1")
        .env_remove("FORCE_COLOR")
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a timeout also ends the per-file
        // processes node's test runner starts.
        .process_group(0)
        .spawn()
        .expect("spawn node");
    let (status, out, err) = common::process::wait_bounded(child, NODE_TIMEOUT).await;
    server.abort();
    delete_queues(&amqp_url, &queue_log).await;

    println!("----- node --test stdout -----\n{out}");
    println!("----- node --test stderr -----\n{err}");
    match status {
        None => panic!("node --test did not finish within {NODE_TIMEOUT:?}; output above"),
        Some(status) => assert!(
            status.success(),
            "node --test failed ({status}); its output is above"
        ),
    }
}
