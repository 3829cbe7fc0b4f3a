//! The native Server-Sent Events endpoint (`sse.path`), against a real
//! gateway and the real RabbitMQ on 127.0.0.1:5672, read by a plain HTTP
//! client with a strict SSE parser (no browser): messages published over
//! AMQP arrive as events, heartbeat comments, refusals as HTTP errors,
//! `/user/` isolation, limits, and `Last-Event-ID` (resumed on a stream
//! queue, ignored on a topic, as docs/protocol.md says).

mod common;

use std::time::Duration;

use common::sse_client::*;
use common::*;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use stompgate::config::{Config, JwtConfig};

const SECRET: &str = "sse-test-secret-0123456789";

fn sse_on(c: &mut Config) {
    c.sse.enabled = true;
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jwt_hs256(SECRET, serde_json::json!({ "sub": sub, "exp": exp }))
}

/// A gateway that requires a JWT (no anonymous access).
fn with_jwt(c: &mut Config) {
    c.sse.enabled = true;
    c.auth.anonymous = false;
    c.auth.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.into()),
        ..Default::default()
    });
}

/// Waits (bounded) until `probe` holds.
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if probe().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_published_message_arrives_as_an_event() {
    let gw = start_gateway(sse_on).await;
    let topic = unique("sse.topic");
    let path = format!("/sse?destination={}", enc(&format!("/topic/{topic}")));
    let mut text = open(gw.addr, &path, &[]).await.expect("stream");
    assert_eq!(
        text.next_within(Duration::from_secs(5)).await,
        Some(Item::Retry(3000)),
        "the stream opens with retry"
    );
    assert!(text
        .header("cache-control")
        .is_some_and(|c| c.contains("no-cache")));
    let mut json = open(gw.addr, &format!("{path}&envelope=json"), &[])
        .await
        .expect("stream");

    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let props = BasicProperties::default().with_content_type("text/plain".into());
    publish(&ch, "amq.topic", &topic, b"hello\nworld", props.clone()).await;
    let mut named = FieldTable::default();
    named.insert("sse-event".into(), AMQPValue::LongString("login".into()));
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"second",
        props.clone().with_headers(named),
    )
    .await;
    publish(&ch, "amq.topic", &topic, &[0xff, 0xfe, 0x00], props).await;

    let (id, event, data) = text.event().await;
    assert_eq!(data, "hello\nworld");
    assert_eq!(event, None, "no sse-event header: the page's onmessage");
    assert!(id.is_some_and(|id| !id.is_empty()), "an id");
    let (_, event, data) = text.event().await;
    assert_eq!((event.as_deref(), data.as_str()), (Some("login"), "second"));
    let (_, event, data) = text.event().await;
    assert_eq!((event.as_deref(), data.as_str()), (Some("binary"), "//4A"));

    // The JSON envelope: one line, the page-useful headers with the body.
    let (_, _, data) = json.event().await;
    let value: serde_json::Value = serde_json::from_str(&data).expect("JSON data");
    assert_eq!(value["body"], "hello\nworld");
    assert_eq!(value["headers"]["destination"], format!("/topic/{topic}"));
    assert_eq!(value["headers"]["content-type"], "text/plain");
    let (_, event, _) = json.event().await;
    assert_eq!(event.as_deref(), Some("login"));
    let (_, event, data) = json.event().await;
    assert_eq!(event, None);
    let value: serde_json::Value = serde_json::from_str(&data).expect("JSON data");
    assert_eq!(value["body_base64"], "//4A");

    // The same session as WebSocket ones: counted there and here.
    assert!(metric(gw.addr, "stompgate_sse_sessions").await >= 2.0);
    assert!(metric(gw.addr, "stompgate_sessions{version=\"1.2\"}").await >= 2.0);
    assert!(metric(gw.addr, "stompgate_sse_events_total{kind=\"message\"}").await >= 4.0);
    assert!(metric(gw.addr, "stompgate_sse_events_total{kind=\"binary\"}").await >= 1.0);
    assert!(metric(gw.addr, "stompgate_sse_bytes_out_total").await > 0.0);

    // A client that goes away ends its session and releases its admission.
    drop(text);
    drop(json);
    let gateway = std::sync::Arc::clone(&gw.gateway);
    eventually("sessions released", async || gateway.admitted() == 0).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_comments_arrive() {
    let gw = start_gateway(|c| {
        c.sse.enabled = true;
        c.sse.heartbeat_ms = 200;
        c.sse.retry_ms = 1234;
    })
    .await;
    let path = format!(
        "/sse?destination={}",
        enc(&format!("/topic/{}", unique("hb")))
    );
    let mut stream = open(gw.addr, &path, &[]).await.expect("stream");
    assert_eq!(
        stream.next_within(Duration::from_secs(5)).await,
        Some(Item::Retry(1234))
    );
    for _ in 0..3 {
        assert_eq!(
            stream.next_within(Duration::from_secs(2)).await,
            Some(Item::Comment("ping".into()))
        );
    }
    assert!(metric(gw.addr, "stompgate_sse_events_total{kind=\"ping\"}").await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_invalid_token_is_refused() {
    let gw = start_gateway(with_jwt).await;
    let dest = enc(&format!("/topic/{}", unique("auth")));
    let path = format!("/sse?destination={dest}");

    let refused = open(gw.addr, &path, &[]).await.err().expect("refused");
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("Bad CONNECT"), "{refused:?}");
    assert!(
        refused
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{refused:?}"
    );

    let bad = format!("{path}&access_token=not.a.jwt");
    let refused = open(gw.addr, &bad, &[]).await.err().expect("refused");
    assert_eq!(refused.status, 401, "{refused:?}");

    let forged = jwt_hs256(
        "another-secret-0123456789",
        serde_json::json!({ "sub": "alice", "exp": 4_000_000_000u64 }),
    );
    let refused = open(gw.addr, &format!("{path}&access_token={forged}"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401, "{refused:?}");

    // A valid one, in the query or as a bearer token.
    open(
        gw.addr,
        &format!("{path}&access_token={}", token("alice")),
        &[],
    )
    .await
    .expect("query token accepted");
    let bearer = format!("Bearer {}", token("alice"));
    open(gw.addr, &path, &[("Authorization", &bearer)])
        .await
        .expect("bearer token accepted");

    // No destination at all.
    let refused = open(gw.addr, "/sse", &[]).await.err().expect("refused");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(metric(gw.addr, "stompgate_sse_refused_total{reason=\"auth\"}").await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_destination_is_403_and_a_malformed_one_400() {
    let prefix = unique("rules");
    let pattern = format!("/topic/{prefix}.{{sub}}");
    let gw = start_gateway(move |c| {
        with_jwt(c);
        c.auth.rules = vec![rule(&["subscribe"], &pattern, &[])];
    })
    .await;
    let t = token("alice");
    let own = enc(&format!("/topic/{prefix}.alice"));
    let other = enc(&format!("/topic/{prefix}.bob"));
    open(
        gw.addr,
        &format!("/sse?destination={own}&access_token={t}"),
        &[],
    )
    .await
    .expect("own topic allowed");
    let refused = open(
        gw.addr,
        &format!("/sse?destination={other}&access_token={t}"),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.starts_with("access_refused\n"), "{refused:?}");

    let refused = open(
        gw.addr,
        &format!("/sse?destination={}&access_token={t}", enc("/nowhere/x")),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.starts_with("Unknown destination"),
        "{refused:?}"
    );
    assert!(metric(gw.addr, "stompgate_sse_refused_total{reason=\"forbidden\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_destination_gets_only_its_users_messages() {
    let gw = start_gateway(with_jwt).await;
    let alice = unique("alice");
    let bob = unique("bob");
    let path = |user: &str| {
        format!(
            "/sse?destination={}&access_token={}",
            enc("/user/queue/login"),
            token(user)
        )
    };
    let mut a = open(gw.addr, &path(&alice), &[]).await.expect("alice");
    let mut b = open(gw.addr, &path(&bob), &[]).await.expect("bob");

    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    // The backend publishes to the user exchange, key <user>.<queue> (the
    // user percent-encoded for '.', '*', '#', '/', '%': none in these).
    let key_of = |user: &str| format!("{user}.login");
    publish(
        &ch,
        "stompgate.user",
        &key_of(&alice),
        b"for alice",
        BasicProperties::default(),
    )
    .await;
    publish(
        &ch,
        "stompgate.user",
        &key_of(&bob),
        b"for bob",
        BasicProperties::default(),
    )
    .await;

    assert_eq!(a.event().await.2, "for alice");
    assert_eq!(b.event().await.2, "for bob");
    a.no_event(Duration::from_millis(500)).await;
    b.no_event(Duration::from_millis(100)).await;

    // Another user's queue by name needs a rule: none here.
    let refused = open(
        gw.addr,
        &format!(
            "/sse?destination={}&access_token={}",
            enc(&format!("/user/{alice}/queue/login")),
            token(&bob)
        ),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 403, "{refused:?}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded() {
    let gw = start_gateway(|c| {
        c.sse.enabled = true;
        c.sse.max_sessions = 1;
    })
    .await;
    let path = format!(
        "/sse?destination={}",
        enc(&format!("/topic/{}", unique("lim")))
    );
    let first = open(gw.addr, &path, &[]).await.expect("first");
    let refused = open(gw.addr, &path, &[]).await.err().expect("refused");
    assert_eq!(refused.status, 503, "{refused:?}");
    drop(first);
    let gateway = std::sync::Arc::clone(&gw.gateway);
    eventually("the first stream released", async || {
        gateway.admitted() == 0
    })
    .await;
    open(gw.addr, &path, &[]).await.expect("room again");

    // The connection limits count SSE streams as WebSocket sessions.
    let gw = start_gateway(|c| {
        c.sse.enabled = true;
        c.security.max_connections_per_ip = 1;
    })
    .await;
    let (_ws, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let refused = open(gw.addr, &path, &[]).await.err().expect("refused");
    assert_eq!(refused.status, 429, "{refused:?}");

    // Allowed origins: others are refused; listed ones get CORS with
    // credentials (EventSource's withCredentials).
    let gw = start_gateway(|c| {
        c.sse.enabled = true;
        c.security.allowed_origins = vec!["https://shop.example".into()];
    })
    .await;
    let refused = open(gw.addr, &path, &[("Origin", "https://evil.example")])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403, "{refused:?}");
    let ok = open(gw.addr, &path, &[("Origin", "https://shop.example")])
        .await
        .expect("allowed origin");
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    assert_eq!(
        ok.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off() {
    // A client that stops reading: its queue (bytes) fills under the
    // disconnect policy and the session ends, releasing its admission.
    let gw = start_gateway(|c| {
        c.sse.enabled = true;
        c.limits.outbound_queue_bytes = 64 * 1024;
    })
    .await;
    let topic = unique("slow");
    let path = format!("/sse?destination={}", enc(&format!("/topic/{topic}")));
    let stalled = open(gw.addr, &path, &[]).await.expect("stream");
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let body = vec![b'x'; 64 * 1024];
    let gateway = std::sync::Arc::clone(&gw.gateway);
    let mut cut = false;
    for _ in 0..400 {
        publish(&ch, "amq.topic", &topic, &body, BasicProperties::default()).await;
        if gateway.admitted() == 0 {
            cut = true;
            break;
        }
    }
    if !cut {
        eventually("the stalled stream cut off", async || {
            gateway.admitted() == 0
        })
        .await;
    }
    assert!(
        metric(
            gw.addr,
            "stompgate_slow_client_total{action=\"disconnect\"}"
        )
        .await
            >= 1.0
    );
    drop(stalled);
    let _ = conn.close(200, "bye".into()).await;
}

/// A stream queue of the test's own, deleted when dropped.
async fn declare_stream(name: &str) -> lapin::Connection {
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("declare the stream");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_a_stream_queue_and_is_ignored_on_a_topic() {
    let gw = start_gateway(sse_on).await;
    let stream = unique("sse-stream");
    let conn = declare_stream(&stream).await;
    let ch = confirm_channel(&conn).await;
    for n in 0..5 {
        publish(
            &ch,
            "",
            &stream,
            format!("m{n}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // A new stream's offsets start at 0: Last-Event-ID 1 resumes at m2.
    let path = format!("/sse?destination={}", enc(&format!("/amq/queue/{stream}")));
    let mut s = open(gw.addr, &path, &[("Last-Event-ID", "1")])
        .await
        .expect("stream");
    for n in 2..5 {
        let (id, _, data) = s.event().await;
        assert_eq!(
            (id.as_deref(), data.as_str()),
            (Some(n.to_string().as_str()), format!("m{n}").as_str())
        );
    }
    drop(s);
    // Published while the page was away; the reconnect names the last id
    // it saw, as EventSource does.
    publish(&ch, "", &stream, b"m5", BasicProperties::default()).await;
    let mut s = open(gw.addr, &path, &[("Last-Event-ID", "4")])
        .await
        .expect("stream");
    let (id, _, data) = s.event().await;
    assert_eq!((id.as_deref(), data.as_str()), (Some("5"), "m5"));
    drop(s);
    // The first connection of a page may pass it as a query parameter.
    let mut s = open(gw.addr, &format!("{path}&last_event_id=3"), &[])
        .await
        .expect("stream");
    assert_eq!(s.event().await.2, "m4");
    drop(s);

    // A topic keeps nothing: what was published while the page was away
    // is not replayed, whatever Last-Event-ID says.
    let topic = unique("sse.gone");
    let tpath = format!("/sse?destination={}", enc(&format!("/topic/{topic}")));
    let mut t = open(gw.addr, &tpath, &[]).await.expect("stream");
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"seen",
        BasicProperties::default(),
    )
    .await;
    let (id, _, _) = t.event().await;
    drop(t);
    let gateway = std::sync::Arc::clone(&gw.gateway);
    eventually("the topic stream closed", async || gateway.admitted() == 0).await;
    // Published while the page is away; let it pass through the replica's
    // plane (which may hold the binding a moment longer) before it is back.
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"missed",
        BasicProperties::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = id.expect("an id");
    let mut t = open(gw.addr, &tpath, &[("Last-Event-ID", &id)])
        .await
        .expect("stream");
    t.no_event(Duration::from_millis(500)).await;
    publish(&ch, "amq.topic", &topic, b"new", BasicProperties::default()).await;
    assert_eq!(t.event().await.2, "new");

    // Closing a stream consumer settled its in-flight deliveries without
    // basic.nack (which RabbitMQ answers on a stream with a connection
    // error, NOT_IMPLEMENTED, that would have closed every session's
    // channels): the gateway's AMQP connections never went down.
    assert_eq!(
        metric(gw.addr, "stompgate_amqp_reconnects_total").await,
        0.0
    );

    let _ = ch
        .queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
}

/// `[history]` for `/topic/<prefix>.*`; the stream is deleted when the
/// returned guard is dropped.
fn history_on(prefix: &str, name: &str) -> impl FnOnce(&mut Config) {
    let (prefix, name) = (prefix.to_owned(), name.to_owned());
    move |c: &mut Config| {
        sse_on(c);
        c.history.patterns.push(stompgate::config::HistoryPattern {
            name,
            destination: format!("/topic/{prefix}.*"),
            max_age: "1h".into(),
            max_length_bytes: 10_000_000,
            max_segment_bytes: 1_000_000,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_a_history_topic_with_every_order_in_order() {
    let prefix = unique("merchant").replace('.', "_");
    let name = unique("sse").replace(['-', ':', '.'], "_");
    let stream = format!("stompgate.history.{name}");
    let _cleanup = QueueCleanup(stream.clone());
    let gw = start_gateway(history_on(&prefix, &name)).await;
    eventually("the replica consumes its history stream", async || {
        queue_stat(&stream, "consumers").is_some_and(|n| n >= 1)
    })
    .await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let key = format!("{prefix}.m1");
    let order = |n: u32| format!("order-{n}");
    let path = format!("/sse?destination={}", enc(&format!("/topic/{key}")));
    let mut s = open(gw.addr, &path, &[]).await.expect("stream");
    for n in 1..=5 {
        publish(
            &ch,
            "amq.topic",
            &key,
            order(n).as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let mut last = None;
    for n in 1..=5 {
        let (id, _, data) = s.event().await;
        assert_eq!(data, order(n));
        let id = id.expect("an id");
        assert!(
            stompgate::bridge::resume::Position::parse(&id).is_some(),
            "id {id} is <epoch>:<offset>"
        );
        last = Some(id);
    }
    drop(s);
    // The page is away: 100 orders.
    for n in 6..=105 {
        publish(
            &ch,
            "amq.topic",
            &key,
            order(n).as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // EventSource reconnects with the last id it saw.
    let last = last.expect("a last id");
    let mut s = open(gw.addr, &path, &[("Last-Event-ID", &last)])
        .await
        .expect("stream");
    let mut ids = Vec::new();
    for n in 6..=105 {
        let (id, _, data) = s.event().await;
        assert_eq!(data, order(n), "in order, no gap");
        ids.push(id.expect("an id"));
    }
    s.no_event(Duration::from_millis(500)).await;
    publish(
        &ch,
        "amq.topic",
        &key,
        order(106).as_bytes(),
        BasicProperties::default(),
    )
    .await;
    assert_eq!(s.event().await.2, order(106));
    let unique_ids: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique_ids.len(), 100, "no duplicate");
    drop(s);
    // The JSON envelope shows the outcome of the resume: a position of
    // another epoch is not resumed, and says so.
    let jpath = format!("{path}&envelope=json");
    let mut s = open(gw.addr, &jpath, &[("Last-Event-ID", "1:0")])
        .await
        .expect("stream");
    publish(
        &ch,
        "amq.topic",
        &key,
        order(107).as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let (_, _, data) = s.event().await;
    let json: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(json["body"], order(107));
    assert_eq!(json["headers"]["x-resumed"], "false");
    s.no_event(Duration::from_millis(300)).await;
    let _ = conn.close(200, "bye".into()).await;
}
