//! Binding modes of the plane (`amqp.binding_mode`, src/bridge/bindings.rs):
//! a replica binds one catch-all per wildcard exchange whatever the number
//! of keys, clients still get exactly what their own binding key selects
//! (and what the rules allow), an `auto` exchange switches to per-key
//! bindings at runtime without loss, duplicates or reordering, and after a
//! broker restart (SIGKILL, on a private node) every subscription is served
//! again, after one bind per exchange in wildcard mode.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use stompgate::config::BindingMode;
use stompgate::stomp::{Command, Frame};

async fn declare_exchange(ch: &lapin::Channel, name: &str, kind: lapin::ExchangeKind) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare exchange");
}

/// The broker's bindings whose source is `exchange`, as (key, queue).
fn bindings_of(rows: &[(String, String, String)], exchange: &str) -> Vec<(String, String)> {
    let mut out: Vec<_> = rows
        .iter()
        .filter(|(source, _, _)| source == exchange)
        .map(|(_, key, queue)| (key.clone(), queue.clone()))
        .collect();
    out.sort();
    out
}

/// Waits (bounded) until `exchange` has exactly the binding keys `want`.
async fn wait_keys(exchange: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|k| k.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<String> = bindings_of(&list_bindings(), exchange)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if keys == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bindings of {exchange}: {keys:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wildcard mode: one binding per topic or fanout exchange whatever the
/// keys (direct ones stay per key), and each client receives exactly what
/// its own key selects: the catch-all leaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_mode_binds_once_per_exchange_and_routes_exactly() {
    const SESSIONS: usize = 60;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let (topic, fanout, direct) = (unique("bw-t"), unique("bw-f"), unique("bw-d"));
    declare_exchange(&ch, &topic, lapin::ExchangeKind::Topic).await;
    declare_exchange(&ch, &fanout, lapin::ExchangeKind::Fanout).await;
    declare_exchange(&ch, &direct, lapin::ExchangeKind::Direct).await;
    let gw = start_gateway(|c| c.amqp.binding_mode = BindingMode::Wildcard).await;
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
        c.subscribe("own", &format!("/exchange/{topic}/m{i}.orders"), &[])
            .await;
        clients.push(c);
    }
    clients[0]
        .subscribe("star", &format!("/exchange/{topic}/*.orders"), &[])
        .await;
    clients[1]
        .subscribe("m1", &format!("/exchange/{topic}/m1.#"), &[])
        .await;
    clients[1]
        .subscribe("d", &format!("/exchange/{direct}/k1"), &[])
        .await;
    clients[1]
        .subscribe("fa", &format!("/exchange/{fanout}/a"), &[])
        .await;
    clients[1]
        .subscribe("fb", &format!("/exchange/{fanout}/b"), &[])
        .await;
    let rows = list_bindings();
    let t = bindings_of(&rows, &topic);
    assert_eq!(t.len(), 1, "one catch-all for {SESSIONS} keys: {t:?}");
    assert_eq!(t[0].0, "#");
    let f = bindings_of(&rows, &fanout);
    assert_eq!(f.len(), 1, "fanout: {f:?}");
    let d = bindings_of(&rows, &direct);
    assert_eq!(d.len(), 1, "direct stays per key: {d:?}");
    assert_eq!(d[0].0, "k1");
    assert!(gw.gateway.bridge.plane.bindings() >= SESSIONS + 4);

    for i in 0..SESSIONS {
        let key = format!("m{i}.orders");
        publish(
            &ch,
            &topic,
            &key,
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // Matched by nobody here: received through the catch-all, filtered out.
    publish(&ch, &topic, "other.thing", b"x", BasicProperties::default()).await;
    publish(
        &ch,
        &topic,
        "m1.orders.late",
        b"late",
        BasicProperties::default(),
    )
    .await;
    publish(&ch, &direct, "k2", b"k2", BasicProperties::default()).await;
    publish(&ch, &direct, "k1", b"k1", BasicProperties::default()).await;
    publish(&ch, &fanout, "zz", b"f", BasicProperties::default()).await;

    let mut got: HashMap<usize, Vec<String>> = HashMap::new();
    let expected: HashMap<usize, usize> = (0..SESSIONS)
        .map(|i| match i {
            0 => (0, 1 + SESSIONS),
            1 => (1, 1 + 2 + 1 + 2),
            i => (i, 1),
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in 0..expected[&i] {
            let m = c.expect(Command::Message).await;
            got.entry(i).or_default().push(format!(
                "{}={}",
                m.header("subscription").expect("subscription"),
                body(&m)
            ));
        }
        assert!(
            matches!(
                c.recv_within(Duration::from_millis(30)).await,
                Recv::Timeout
            ),
            "session {i} got more than its keys select"
        );
    }
    for i in 2..SESSIONS {
        assert_eq!(got[&i], vec![format!("own=m{i}.orders")]);
    }
    let mut one = got[&1].clone();
    one.sort();
    assert_eq!(
        one,
        vec![
            "d=k1",
            "fa=f",
            "fb=f",
            "m1=late",
            "m1=m1.orders",
            "own=m1.orders"
        ]
    );
    let star = got[&0].iter().filter(|s| s.starts_with("star=")).count();
    assert_eq!(star, SESSIONS);

    for c in clients {
        c.disconnect().await;
    }
    // The last subscription gone, so is the catch-all.
    wait_keys(&topic, &[]).await;
    wait_keys(&fanout, &[]).await;
    for name in [&topic, &fanout, &direct] {
        let _ = ch
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Auto mode: an exchange above `auto_max_rate` moves from its catch-all
/// to per-key bindings while messages flow; every subscriber receives its
/// topic's messages once each and in order across the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_switches_to_per_key_without_loss_duplicates_or_reordering() {
    const TOPICS: usize = 10;
    const ROUNDS: usize = 150;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let topic = unique("ba-t");
    declare_exchange(&ch, &topic, lapin::ExchangeKind::Topic).await;
    let gw = start_gateway(|c| {
        c.amqp.binding_mode = BindingMode::Auto;
        c.amqp.auto_max_rate = 100;
        c.amqp.auto_window_ms = 300;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..TOPICS {
        let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
        c.subscribe("s", &format!("/exchange/{topic}/t{i}"), &[])
            .await;
        clients.push(c);
    }
    wait_keys(&topic, &["#"]).await;
    // About 1,000 messages/s for 1.5 s: the switch happens mid-stream.
    let publisher = {
        let ch = ch.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for r in 0..ROUNDS {
                for i in 0..TOPICS {
                    publish(
                        &ch,
                        &topic,
                        &format!("t{i}"),
                        format!("{r}").as_bytes(),
                        BasicProperties::default(),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for (i, c) in clients.iter_mut().enumerate() {
        for r in 0..ROUNDS {
            let m = c.expect(Command::Message).await;
            assert_eq!(
                body(&m),
                r.to_string(),
                "topic t{i}: loss, duplicate or reordering"
            );
        }
    }
    publisher.await.expect("publisher");
    let keys: Vec<String> = (0..TOPICS).map(|i| format!("t{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    wait_keys(&topic, &keys).await;
    for c in clients.iter_mut() {
        assert!(matches!(
            c.recv_within(Duration::from_millis(100)).await,
            Recv::Timeout
        ));
    }
    for c in clients {
        c.disconnect().await;
    }
    wait_keys(&topic, &[]).await;
    let _ = ch
        .exchange_delete(topic.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

const NODE: &str = "sg-bind";
const NODE_AMQP_PORT: u16 = 5754;

/// A broker SIGKILLed and restarted under a gateway, per-key, wildcard,
/// then auto: after it accepts connections again every one of 2,000 topics
/// is served again (wildcard and auto: after one bind per exchange), and a
/// message to each reaches exactly its subscriber. Prints the times (figures for
/// docs/benchmarks.md; not asserted). One test: both use the one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_serves_every_topic_again_exactly() {
    restart_case(BindingMode::PerKey).await;
    restart_case(BindingMode::Wildcard).await;
    // Auto: the 2,000 messages before the kill move amq.topic to per-key
    // bindings, and the kill comes while they are being bound; after the
    // restart it is on its catch-all again, and the messages after it move
    // it to per-key again while they flow.
    restart_case(BindingMode::Auto).await;
}

async fn restart_case(mode: BindingMode) {
    const SESSIONS: usize = 200;
    const PER_SESSION: usize = 10;
    let node = PrivateNode::start_with(NODE, NODE_AMQP_PORT, &[("PRIVATE_RABBIT_PLUGINS", "")]);
    let url = node.amqp_url();
    let gw = start_gateway_unready(|c| {
        c.amqp.url = url.clone();
        c.amqp.binding_mode = mode;
        c.amqp.auto_window_ms = 500;
    })
    .await;
    assert!(
        gw.gateway
            .bridge
            .pool
            .wait_ready(Duration::from_secs(30))
            .await
    );
    let prefix = unique("brs");
    let mut clients = Vec::new();
    for s in 0..SESSIONS {
        clients.push(subscribed_to_numbered_topics(&gw.ws_url(), &prefix, s, PER_SESSION).await);
    }
    let plane = &gw.gateway.bridge.plane;
    let bound = plane.bound();
    match mode {
        BindingMode::PerKey => assert_eq!(bound, SESSIONS * PER_SESSION),
        _ => assert_eq!(bound, 1, "one catch-all for amq.topic"),
    }

    async fn round(url: &str, prefix: &str, tag: &str, clients: &mut [StompClient]) {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .expect("amqp");
        let ch = confirm_channel(&conn).await;
        for s in 0..SESSIONS {
            for i in 0..PER_SESSION {
                publish(
                    &ch,
                    "amq.topic",
                    &format!("{prefix}.{s}.{i}"),
                    format!("{tag}:{s}.{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await;
            }
        }
        // A key nobody has: filtered out, never delivered.
        publish(
            &ch,
            "amq.topic",
            &format!("{prefix}.x.y"),
            b"stray",
            BasicProperties::default(),
        )
        .await;
        for (s, c) in clients.iter_mut().enumerate() {
            let mut seen = Vec::new();
            for _ in 0..PER_SESSION {
                let m = c.expect(Command::Message).await;
                let sub = m.header("subscription").expect("subscription").into_owned();
                let i: usize = sub[1..].parse().expect("id");
                assert_eq!(body(&m), format!("{tag}:{s}.{i}"), "misrouted");
                seen.push(i);
            }
            seen.sort();
            assert_eq!(seen, (0..PER_SESSION).collect::<Vec<_>>());
            assert!(matches!(
                c.recv_within(Duration::from_millis(5)).await,
                Recv::Timeout
            ));
        }
        let _ = conn.close(200, "done".into()).await;
    }
    if mode == BindingMode::Auto {
        // A burst for nobody moves amq.topic to per-key bindings; the kill
        // comes while they are being bound (both the catch-all and some
        // keys are on the broker).
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("amqp");
        let ch = confirm_channel(&conn).await;
        for i in 0..500 {
            publish(
                &ch,
                "amq.topic",
                &format!("{prefix}.nobody.{i}"),
                b"x",
                BasicProperties::default(),
            )
            .await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while plane.bound() < 50 {
            assert!(Instant::now() < deadline, "auto did not switch to per-key");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = conn.close(200, "done".into()).await;
    } else {
        round(&url, &prefix, "before", &mut clients).await;
    }
    let bound_at_kill = plane.bound();

    // SIGKILL, then start again with its data (as after a crash).
    sigkill(node.pid);
    wait_gone(node.pid, Duration::from_secs(30));
    let down = Instant::now();
    while gw.gateway.bridge.is_ready() {
        assert!(down.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::mem::forget(node);
    let restart = tokio::task::spawn_blocking(|| {
        PrivateNode::start_with(
            NODE,
            NODE_AMQP_PORT,
            &[
                ("PRIVATE_RABBIT_PLUGINS", ""),
                ("PRIVATE_RABBIT_KEEP_DATA", "1"),
            ],
        )
    });
    // When does the broker accept connections again?
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", NODE_AMQP_PORT))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "broker did not come back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accepting = Instant::now();
    while plane.bound() < bound || !gw.gateway.bridge.is_ready() {
        assert!(
            accepting.elapsed() < Duration::from_secs(60),
            "not re-bound"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rebound = accepting.elapsed();
    let _node = restart.await.expect("restart");
    println!(
        "restart ({mode:?}): {bound_at_kill} bindings at the kill; broker accepting connections -> all {} topics served again after {:.3} s ({} bindings)",
        SESSIONS * PER_SESSION,
        rebound.as_secs_f64(),
        plane.bound()
    );
    round(&url, &prefix, "after", &mut clients).await;
    for c in clients {
        c.disconnect().await;
    }
    drop(gw);
    drop(_node);
}

/// With a catch-all on amq.topic, the rules still decide: a SUBSCRIBE the
/// rules refuse gets an ERROR, and an allowed subscription receives its own
/// key's messages only, though the replica's queue receives them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_all_leaks_nothing_past_the_rules() {
    let prefix = unique("bperm");
    let allowed = format!("/topic/{prefix}.allowed.*");
    let gw = start_gateway(|c| {
        c.amqp.binding_mode = BindingMode::Wildcard;
        c.auth.rules = vec![rule(&["subscribe"], &allowed, &[])];
    })
    .await;
    let (mut a, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    a.subscribe("a", &format!("/topic/{prefix}.allowed.a"), &[])
        .await;
    assert_eq!(gw.gateway.bridge.plane.bound(), 1, "one catch-all");
    let (mut spy, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    spy.send(
        &Frame::new(Command::Subscribe)
            .with_header("id", "x")
            .with_header("destination", &format!("/topic/{prefix}.secret")),
    )
    .await;
    spy.expect(Command::Error).await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    for key in ["secret", "allowed.b", "allowed.a", "allowed.a.deeper"] {
        publish(
            &ch,
            "amq.topic",
            &format!("{prefix}.{key}"),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let m = a.expect(Command::Message).await;
    assert_eq!(body(&m), "allowed.a");
    assert!(matches!(
        a.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    ));
    a.disconnect().await;
}
