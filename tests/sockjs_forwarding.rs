//! SockJS without sticky sessions: two gateway replicas in this process, a
//! session opened on replica A, and its requests sent through replica B,
//! which forwards them over RabbitMQ (the replicas' control queues on the
//! real broker at 127.0.0.1:5672). Everything B answers must be what A
//! would have answered itself.
//!
//! `cargo test --test sockjs_forwarding -- --ignored --nocapture latency`
//! prints the extra latency of a forwarded send and poll.

mod common;

use std::time::{Duration, Instant};

use common::sockjs_http::*;
use common::{start_gateway, unique, TestGateway};
use lapin::BasicProperties;
use stompgate::config::Config;

const EXCHANGE: &str = "stompgate.sockjs";

async fn replica(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    start_gateway(|c| {
        c.sockjs.enabled = true;
        c.sockjs.heartbeat_ms = 25_000;
        c.sockjs.disconnect_delay_ms = 1_000;
        tweak(c);
    })
    .await
}

fn control_queue(gw: &TestGateway) -> String {
    gw.gateway
        .host
        .forwarding
        .as_ref()
        .and_then(|c| c.queue())
        .expect("control queue up")
}

/// Waits (bounded) until the broker binds `id` to exactly `queues`.
async fn bound_to(id: &str, queues: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bound = common::queues_bound(EXCHANGE, id);
        if bound == queues {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} bound to {bound:?}, expected {queues:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn poll(gw: &TestGateway, url: &str) -> String {
    let (status, body) = body_of(post(gw.addr, &format!("{url}/xhr"), "").await).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn send(gw: &TestGateway, url: &str, frame: &str) {
    let sent = post(gw.addr, &format!("{url}/xhr_send"), &stomp(frame)).await;
    assert_eq!(sent.status, 204);
}

/// Polls through `gw` until the text seen holds every one of `needles`.
async fn poll_until(gw: &TestGateway, url: &str, needles: &[&str]) -> String {
    let deadline = Instant::now() + LIMIT;
    let mut seen = String::new();
    while !needles.iter().all(|n| seen.contains(n)) {
        assert!(Instant::now() < deadline, "no {needles:?} in {seen:?}");
        seen.push_str(&poll(gw, url).await);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_one_replica_is_served_through_the_other() {
    let a = replica(|_| {}).await;
    let b = replica(|_| {}).await;
    let id = unique("fwd");
    let url = format!("/sockjs/000/{id}");

    // Opened on A: its id is bound to A's control queue, and A alone.
    assert_eq!(poll(&a, &url).await, "o\n");
    bound_to(&id, &[control_queue(&a)]).await;

    // STOMP through B: CONNECT, SUBSCRIBE and SEND with receipts, polls.
    send(
        &b,
        &url,
        "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0",
    )
    .await;
    assert!(poll(&b, &url).await.starts_with("a[\"CONNECTED\\n"));
    let topic = unique("fwd");
    send(
        &b,
        &url,
        &format!("SUBSCRIBE\nid:s1\ndestination:/topic/{topic}\nreceipt:r1\n\n\0"),
    )
    .await;
    poll_until(&b, &url, &["receipt-id:r1"]).await;

    // A message published on AMQP reaches the poll waiting on B.
    let conn = common::amqp().await;
    let ch = common::confirm_channel(&conn).await;
    let waiting = {
        let (addr, url) = (b.addr, url.clone());
        tokio::spawn(async move { body_of(post(addr, &format!("{url}/xhr"), "").await).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    common::publish(
        &ch,
        "amq.topic",
        &topic,
        "pushed </script> \u{2028}".as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let (status, got) = waiting.await.expect("poll");
    assert_eq!(status, 200);
    assert!(
        got.starts_with("a[\"MESSAGE\\n") && got.contains("pushed </script> \\u2028"),
        "{got}"
    );
    send(
        &b,
        &url,
        &format!("SEND\ndestination:/topic/{topic}\nreceipt:r2\n\nback\0"),
    )
    .await;
    poll_until(&b, &url, &["receipt-id:r2", "back"]).await;

    // A stream through B: the prelude and frames as A would write them.
    let mut stream = request(
        b.addr,
        "POST",
        &format!("{url}/xhr_streaming"),
        &[("Origin", "http://example.test")],
        b"",
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert_eq!(
        stream.header("access-control-allow-origin"),
        Some("http://example.test")
    );
    assert_eq!(
        stream.read(2049).await,
        [&[b'h'; 2048][..], b"\n"].concat(),
        "prelude"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The stream is the session's receiver: a second one gets 2010, both
    // through A (local) and through B (forwarded).
    let another = r#"c[2010,"Another connection still open"]"#;
    assert_eq!(poll(&a, &url).await, format!("{another}\n"));
    assert_eq!(poll(&b, &url).await, format!("{another}\n"));

    common::publish(
        &ch,
        "amq.topic",
        &topic,
        b"streamed",
        BasicProperties::default(),
    )
    .await;
    let seen = until(&mut stream, "streamed").await;
    assert!(seen.contains("a[\"MESSAGE\\n"), "{seen}");

    // DISCONNECT through B: the receipt, the close frame, the end.
    send(&b, &url, "DISCONNECT\nreceipt:bye\n\n\0").await;
    until(&mut stream, "receipt-id:bye").await;
    until(&mut stream, "c[3000,\"Go away!\"]\n").await;
    assert!(stream.ended_within(Duration::from_secs(2)).await);

    // The session ends (disconnect delay) and its binding goes.
    bound_to(&id, &[]).await;
    assert_eq!(
        post_to(&b, &url, "xhr_send", &stomp("x")).await,
        404,
        "a send to the ended session, through B"
    );
    let _ = conn.close(200, "bye".into()).await;
}

/// A POST to `<url>/<transport>`; its status.
async fn post_to(gw: &TestGateway, url: &str, transport: &str, body: &str) -> u16 {
    post(gw.addr, &format!("{url}/{transport}"), body)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sessions_and_second_receivers_through_the_other_replica() {
    let a = replica(|_| {}).await;
    let b = replica(|_| {}).await;

    // No replica holds it: 404, exactly as a replica alone answers.
    let nowhere = format!("/sockjs/000/{}", unique("nowhere"));
    assert_eq!(post_to(&b, &nowhere, "xhr_send", &stomp("x")).await, 404);
    let form = request(
        b.addr,
        "POST",
        &format!("{nowhere}/jsonp_send"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"d=%5B%22x%22%5D",
    )
    .await;
    assert_eq!(form.status, 404);
    let metrics = common::metrics_text(b.addr).await;
    let returned = metrics
        .lines()
        .find(|l| {
            l.starts_with("stompgate_sockjs_forwarded_total{")
                && l.contains("transport=\"xhr_send\"")
                && l.contains("outcome=\"returned\"")
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(returned >= 1.0, "{metrics}");

    // A receiving request for an unknown id opens the session where it
    // lands (B), bound to B's control queue.
    let id = unique("fwd");
    let url = format!("/sockjs/000/{id}");
    assert_eq!(poll(&b, &url).await, "o\n");
    bound_to(&id, &[control_queue(&b)]).await;

    // A local stream on B is the receiver; a poll and an eventsource
    // arriving through A get 2010, in their own wire.
    let mut stream = post(b.addr, &format!("{url}/xhr_streaming"), "").await;
    stream.read(2049).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let another = r#"c[2010,"Another connection still open"]"#;
    assert_eq!(poll(&a, &url).await, format!("{another}\n"));
    let (status, body) = body_of(get(a.addr, &format!("{url}/eventsource")).await).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("\r\ndata: {another}\r\n\r\n"));
    // The stream still works: a send through A reaches B's session.
    send(
        &a,
        &url,
        "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0",
    )
    .await;
    until(&mut stream, "CONNECTED").await;
}

/// Median and 99th percentile of `samples`, in microseconds.
fn summary(samples: &mut [Duration]) -> (u128, u128) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_micros();
    (at(0.5), at(0.99))
}

/// The extra latency of a forwarded send and poll, printed (echo service:
/// a send comes back as the next poll's message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --test sockjs_forwarding -- --ignored --nocapture latency"]
async fn latency_of_forwarded_send_and_poll() {
    let echo = |c: &mut Config| c.sockjs.echo = true;
    let a = replica(echo).await;
    let b = replica(echo).await;
    let url = format!("/sockjs/000/{}", unique("lat"));
    assert_eq!(poll(&a, &url).await, "o\n");
    const N: usize = 300;
    let mut results = Vec::new();
    for (name, via) in [("local", &a), ("forwarded", &b)] {
        let mut sends = Vec::with_capacity(N);
        let mut polls = Vec::with_capacity(N);
        for i in 0..N + 20 {
            let t = Instant::now();
            assert_eq!(
                post_to(via, &url, "xhr_send", &stomp(&format!("m{i}"))).await,
                204
            );
            let sent = t.elapsed();
            let t = Instant::now();
            let got = poll(via, &url).await;
            let polled = t.elapsed();
            assert_eq!(got, format!("a[\"m{i}\"]\n"));
            // The first rounds warm up connections and caches.
            if i >= 20 {
                sends.push(sent);
                polls.push(polled);
            }
        }
        let (send_p50, send_p99) = summary(&mut sends);
        let (poll_p50, poll_p99) = summary(&mut polls);
        println!(
            "{name:>9}: xhr_send p50 {send_p50} us p99 {send_p99} us; xhr poll (message waiting) p50 {poll_p50} us p99 {poll_p99} us ({N} each)"
        );
        results.push((send_p50, poll_p50));
    }
    println!(
        "forwarding adds (p50): xhr_send {} us, xhr poll {} us",
        results[1].0 as i128 - results[0].0 as i128,
        results[1].1 as i128 - results[0].1 as i128
    );
}

/// The other wires through a forwarding replica, heartbeats relayed, and a
/// client that aborts a forwarded stream ending the session as a local
/// abort does (echo service: each send comes back as a message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wires_heartbeats_and_aborts_through_the_other_replica() {
    let echo = |c: &mut Config| {
        c.sockjs.echo = true;
        c.sockjs.heartbeat_ms = 300;
    };
    let a = replica(echo).await;
    let b = replica(echo).await;
    let id = unique("fwd");
    let url = format!("/sockjs/000/{id}");
    assert_eq!(poll(&a, &url).await, "o\n");
    bound_to(&id, &[control_queue(&a)]).await;

    // jsonp: a send through B (form-encoded), the poll through B.
    let sent = request(
        b.addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"d=%5B%22%3C%2Fscript%3E%22%5D",
    )
    .await;
    assert_eq!(body_of(sent).await, (200, "ok".into()));
    let mut jsonp = get(b.addr, &format!("{url}/jsonp?c=cb")).await;
    assert_eq!(jsonp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        jsonp.rest().await,
        "/**/cb(\"a[\\\"\\u003c/script\\u003e\\\"]\");\r\n"
    );

    // htmlfile through B: B's prelude (with the callback), A's frames, and
    // A's heartbeats while nothing else comes.
    let mut html = get(b.addr, &format!("{url}/htmlfile?c=cb")).await;
    assert_eq!(html.status, 200);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=UTF-8")
    );
    let prelude = until(&mut html, "var c = parent.cb;").await;
    assert!(prelude.starts_with("<!doctype html>"), "{prelude}");
    until(&mut html, "<script>\np(\"h\");\n</script>\r\n").await;
    assert_eq!(post_to(&a, &url, "xhr_send", &stomp("via A")).await, 204);
    until(&mut html, "via A").await;
    drop(html);

    // An aborted forwarded receiver ends the session at once, as a local
    // one does: it is forgotten, and unbound.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post_to(&a, &url, "xhr_send", &stomp("x")).await, 404);
    assert_eq!(post_to(&b, &url, "xhr_send", &stomp("x")).await, 404);
    bound_to(&id, &[]).await;
}

/// A client cannot make a replica forward without bound: at
/// `sockjs.max_forwarded_requests` open forwarded requests, the next one is
/// 503 at once; bodies are bounded before anything is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_bounded() {
    let a = replica(|c| c.sockjs.echo = true).await;
    let b = replica(|c| {
        c.sockjs.echo = true;
        c.sockjs.max_forwarded_requests = 1;
        c.sockjs.max_body_bytes = 64;
    })
    .await;
    let url = format!("/sockjs/000/{}", unique("fwd"));
    assert_eq!(poll(&a, &url).await, "o\n");

    // One forwarded poll waits on A for a message: B's only slot.
    let waiting = {
        let (addr, url) = (b.addr, url.clone());
        tokio::spawn(async move { body_of(post(addr, &format!("{url}/xhr"), "").await).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post_to(&b, &url, "xhr_send", &stomp("x")).await, 503);
    let big = stomp(&"x".repeat(100));
    assert_eq!(post_to(&b, &url, "xhr_send", &big).await, 413);

    // Through A (local), the message ends the forwarded poll; B's slot is
    // free again.
    assert_eq!(post_to(&a, &url, "xhr_send", &stomp("m")).await, 204);
    assert_eq!(waiting.await.expect("poll"), (200, "a[\"m\"]\n".to_owned()));
    assert_eq!(post_to(&b, &url, "xhr_send", &stomp("n")).await, 204);
    assert_eq!(poll(&b, &url).await, "a[\"n\"]\n");
}

/// A home that does not answer: a queue of this test bound with a session
/// id plays it. No answer in `forward_timeout_ms`: 503. A stream the home
/// started and then left silent beyond a heartbeat period plus that
/// timeout ends with `c[1006,"Session home not answering"]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_that_does_not_answer() {
    use futures_util::StreamExt;
    let b = replica(|c| {
        c.sockjs.echo = true;
        c.sockjs.heartbeat_ms = 300;
        c.sockjs.forward_timeout_ms = 500;
    })
    .await;
    let id = unique("mute");
    let url = format!("/sockjs/000/{id}");
    let conn = common::amqp().await;
    let ch = common::confirm_channel(&conn).await;
    let queue = ch
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("queue");
    let queue = queue.name().as_str().to_owned();
    ch.queue_bind(
        queue.as_str().into(),
        EXCHANGE.into(),
        id.as_str().into(),
        Default::default(),
        Default::default(),
    )
    .await
    .expect("bind");

    let started = Instant::now();
    assert_eq!(post_to(&b, &url, "xhr_send", &stomp("x")).await, 503);
    assert_eq!(
        post(b.addr, &format!("{url}/xhr"), "").await.status,
        503,
        "a poll"
    );
    assert!(started.elapsed() >= Duration::from_millis(1000));

    // Now the fake home answers a stream once ("attached"), then nothing.
    let mut requests = common::consume_no_ack(&ch, &queue, "").await;
    // (The response head waits for the home's first reply.)
    let stream = {
        let (addr, url) = (b.addr, url.clone());
        tokio::spawn(async move { post(addr, &format!("{url}/xhr_streaming"), "").await })
    };
    let request = loop {
        let delivery = tokio::time::timeout(LIMIT, requests.next())
            .await
            .expect("a forwarded request")
            .expect("consumer")
            .expect("delivery");
        // The send and poll above wait in the queue too.
        if String::from_utf8_lossy(&delivery.data).contains("xhr_streaming") {
            break delivery;
        }
    };
    let reply_to = request.properties.reply_to().clone().expect("reply_to");
    let correlation = request
        .properties
        .correlation_id()
        .clone()
        .expect("correlation id");
    common::publish(
        &ch,
        "",
        reply_to.as_str(),
        b"",
        BasicProperties::default()
            .with_type("attached".into())
            .with_correlation_id(correlation),
    )
    .await;
    let mut stream = stream.await.expect("stream");
    assert_eq!(stream.status, 200);
    stream.read(2049).await;
    let started = Instant::now();
    assert_eq!(
        stream.rest().await,
        "c[1006,\"Session home not answering\"]\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
    let _ = conn.close(200, "bye".into()).await;
}
