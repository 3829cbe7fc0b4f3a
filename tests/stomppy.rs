//! Runs the stomp.py scenarios of tests/py/stomp_scenarios.py (the real
//! stomp.py client over WebSocket, login guest/guest) against a gateway
//! started in this process, bridged to the RabbitMQ at 127.0.0.1:5672, and
//! checks that stompgate answers as RabbitMQ's Web-STOMP does (issue 10;
//! `scripts/compare-webstomp.sh` runs the same scenarios against both).
//!
//! Needs `scripts/ensure-python.sh` (run by `scripts/test.sh`, and by this
//! test when the virtualenv is missing): a virtualenv under target/ with
//! pinned stomp.py and websocket-client. Without Python this test fails; it
//! does not skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use stompgate::config::UserConfig;
use tokio::process::Command;

mod common;
use common::start_gateway;

const PYTHON_TIMEOUT: Duration = Duration::from_secs(240);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's python, installing it when missing (serialized: tests
/// of this file run in parallel).
async fn python() -> PathBuf {
    static LOCK: tokio::sync::Mutex<Option<PathBuf>> = tokio::sync::Mutex::const_new(None);
    let mut cached = LOCK.lock().await;
    if let Some(p) = cached.as_ref() {
        return p.clone();
    }
    let out = Command::new(root().join("scripts").join("ensure-python.sh"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run scripts/ensure-python.sh");
    assert!(
        out.status.success(),
        "scripts/ensure-python.sh failed ({}): install python3 and pip",
        out.status
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    assert!(path.exists(), "{} does not exist", path.display());
    *cached = Some(path.clone());
    path
}

/// Runs the named scenarios with `--check` against a fresh gateway whose
/// only user is guest/guest (as RabbitMQ's default user).
async fn check(scenarios: &[&str]) {
    let gw = start_gateway(|c| {
        c.auth.anonymous = false;
        c.auth.users = vec![UserConfig {
            login: "guest".into(),
            passcode: "guest".into(),
        }];
    })
    .await;
    let python = python().await;
    let script: &Path = &root().join("tests").join("py").join("stomp_scenarios.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--url")
        .arg(gw.ws_url())
        .arg("--check")
        .arg("--only")
        .args(scenarios)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PYTHON_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("stomp.py scenarios {scenarios:?} did not finish in time"))
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "stomp.py scenarios {scenarios:?} differ from Web-STOMP:\n{stdout}\n--- stderr ---\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_beats_follow_the_client() {
    check(&["heartbeats"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frames_read_as_rabbitmqs() {
    check(&["errors"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_in_every_version_and_redelivery() {
    check(&["nack", "redelivered"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_receipts_and_queue_arguments() {
    check(&["transaction_receipt", "queue_arguments"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_to_two_subscribers() {
    check(&["large"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_publisher_is_slowed_not_cut_off() {
    check(&["fast_publisher", "send_then_disconnect"]).await;
}
