//! `@stomp/stompjs` over the real `sockjs-client` (1.6, from npm, locked in
//! tests/js/package-lock.json) under Node, against a gateway with SockJS on,
//! for every transport sockjs-client has under Node: `websocket`,
//! `xhr-streaming`, `xhr-polling`, `eventsource` (htmlfile, jsonp-polling
//! and the iframe ones need a DOM: tests/browser/ runs them in Chromium).
//!
//! Per transport: m0..m4 are published to a queue of its own over AMQP
//! before node starts; the JS test (tests/js/sockjs-client.mjs) subscribes
//! with client-individual acks and receives them in order, sends with a
//! receipt to the same queue and receives that too. Afterwards every queue
//! must be empty: the acks reached RabbitMQ.
//!
//! Needs node and tests/js/node_modules (`scripts/ensure-node.sh`, run by
//! `scripts/test.sh`); fails, does not skip, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use lapin::BasicProperties;
use tokio::process::Command;

const TRANSPORTS: [&str; 4] = ["websocket", "xhr-streaming", "xhr-polling", "eventsource"];
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_over_sockjs_client_in_node() {
    let dir = js_dir();
    let module = dir.join("node_modules").join("sockjs-client");
    assert!(
        module.is_dir(),
        "{} is missing: run scripts/ensure-node.sh (npm ci in tests/js)",
        module.display()
    );
    let gw = start_gateway(|c| {
        c.sockjs.enabled = true;
        // Short enough that xhr-streaming's response limit is crossed
        // within the test: the client must open the next response.
        c.sockjs.response_limit_bytes = 256;
    })
    .await;

    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let mut queues = serde_json::Map::new();
    let mut cleanup = Vec::new();
    for transport in TRANSPORTS {
        let queue = unique(&format!("sockjs-node-{transport}"));
        declare_durable_queue(&queue).await;
        cleanup.push(QueueCleanup(queue.clone()));
        for n in 0..5 {
            let body = format!("m{n}");
            publish(&ch, "", &queue, body.as_bytes(), BasicProperties::default()).await;
        }
        queues.insert(transport.to_owned(), queue.into());
    }

    let url = format!("http://{}/sockjs", gw.addr);
    let child = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg("sockjs-client.mjs")
        .current_dir(&dir)
        .env("STOMPGATE_SOCKJS_URL", &url)
        .env(
            "STOMPGATE_SOCKJS_QUEUES",
            serde_json::Value::Object(queues.clone()).to_string(),
        )
        .env("NO_COLOR", "1")
        .env_remove("FORCE_COLOR")
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node ({e}): run scripts/ensure-node.sh"));
    let (status, out, err) = common::process::wait_bounded(child, NODE_TIMEOUT).await;
    println!("----- node --test stdout -----\n{out}");
    println!("----- node --test stderr -----\n{err}");
    match status {
        None => panic!("node did not finish within {NODE_TIMEOUT:?}; output above"),
        Some(status) => assert!(status.success(), "node failed ({status}); output above"),
    }
    for transport in TRANSPORTS {
        assert!(
            out.contains(&format!("stompjs over sockjs-client ({transport})")),
            "the {transport} test ran:\n{out}"
        );
    }

    // The streaming responses ended at the byte limit and the client
    // opened the next one.
    let streams = metric(
        gw.addr,
        "stompgate_sockjs_requests_total{transport=\"xhr_streaming\"}",
    )
    .await;
    assert!(streams >= 2.0, "xhr_streaming requests: {streams}");

    // Every message was acked by the client, over every transport.
    for (transport, queue) in &queues {
        let queue = queue.as_str().unwrap_or_default();
        let mut left = None;
        for _ in 0..50 {
            left = queue_stat(queue, "messages");
            if left == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(left, Some(0), "{transport}: messages left in {queue}");
    }
    let _ = conn.close(200, "bye".into()).await;
}
