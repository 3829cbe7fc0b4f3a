//! The AMQP plane of a replica against the real RabbitMQ: a fixed set of
//! queues and channels whatever the subscriptions, churn that leaves
//! nothing behind, shared consumer channels whose acks stay per
//! subscription, and per-topic routing in the gateway.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use stompgate::stomp::{Command, Frame};

/// Waits (bounded) until the plane has established all its queues.
async fn plane_queues(gw: &TestGateway) -> Vec<String> {
    let want = gw.gateway.config.amqp.plane_queues;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let names = gw.gateway.bridge.plane.queue_names();
        if names.len() == want {
            return names;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "plane queues not established: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 10,000 subscribe + unsubscribe cycles over 100 topics: the replica's
/// queues stay the same four, every topic is bound to one of them at most,
/// and no binding is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_churn_changes_no_queue_and_leaves_no_binding() {
    const CLIENTS: usize = 4;
    const CYCLES: usize = 2_500; // per client: 10,000 in all
    const TOPICS: usize = 100;
    let gw = start_gateway(|_| {}).await;
    let before = plane_queues(&gw).await;
    let prefix = unique("churn");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = gw.ws_url();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let (mut client, _) = StompClient::connect(&url, "1.2").await;
            for i in 0..CYCLES {
                let topic = format!("/topic/{prefix}.{}", (i * CLIENTS + c) % TOPICS);
                let id = format!("c{c}-{i}");
                let mut sub = Frame::new(Command::Subscribe)
                    .with_header("id", &id)
                    .with_header("destination", &topic);
                let mut unsub = Frame::new(Command::Unsubscribe).with_header("id", &id);
                // A receipt now and then keeps the client in step.
                if i % 250 == 249 {
                    sub.push_header("receipt", &format!("s{i}"));
                    unsub.push_header("receipt", &format!("u{i}"));
                }
                client.send(&sub).await;
                client.send(&unsub).await;
                if i % 250 == 249 {
                    for want in [format!("s{i}"), format!("u{i}")] {
                        match client.recv_within(Duration::from_secs(60)).await {
                            Recv::Frame(r) if r.command == Command::Receipt => {
                                assert_eq!(r.header("receipt-id").as_deref(), Some(&*want))
                            }
                            other => panic!("client {c}: expected RECEIPT {want}, got {other:?}"),
                        }
                    }
                }
            }
            client.disconnect().await;
        }));
    }
    // Meanwhile, every binding of these topics is on one of the plane's
    // queues, never on a queue of its own.
    let mut seen_queues = HashSet::new();
    while !tasks.iter().all(|t| t.is_finished()) {
        for (source, key, queue) in list_bindings() {
            if source == "amq.topic" && key.starts_with(&prefix) {
                seen_queues.insert(queue);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for t in tasks {
        t.await.expect("client");
    }
    let plane: HashSet<String> = before.iter().cloned().collect();
    let extra: Vec<_> = seen_queues.difference(&plane).collect();
    assert!(
        extra.is_empty(),
        "bindings on queues outside the plane: {extra:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<_> = list_bindings()
            .into_iter()
            .filter(|(source, key, _)| source == "amq.topic" && key.starts_with(&prefix))
            .collect();
        if left.is_empty() && gw.gateway.bridge.plane.bindings() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bindings left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        gw.gateway.bridge.plane.queue_names(),
        before,
        "the plane's queues changed"
    );
    println!(
        "churn: {} cycles over {TOPICS} topics in {:.1} s, {} plane queues used, channels now {}",
        CLIENTS * CYCLES,
        started.elapsed().as_secs_f64(),
        seen_queues.len(),
        gw.gateway.bridge.plane.channels()
    );
}

/// Many sessions, each on a topic of its own, and patterns: each message
/// reaches exactly the subscriptions whose binding matches, once per
/// subscription, through the plane's few queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_routing_delivers_to_exactly_the_matching_subscriptions() {
    const SESSIONS: usize = 200;
    let gw = start_gateway(|_| {}).await;
    let prefix = unique("route");
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
        c.subscribe("own", &format!("/topic/{prefix}.m{i}.orders"), &[])
            .await;
        clients.push(c);
    }
    // Session 0 also listens with patterns that overlap: `*` and `#`, and
    // the same topic twice under two ids.
    clients[0]
        .subscribe("star", &format!("/topic/{prefix}.*.orders"), &[])
        .await;
    clients[0]
        .subscribe("hash", &format!("/exchange/amq.topic/{prefix}.#"), &[])
        .await;
    clients[0]
        .subscribe("again", &format!("/topic/{prefix}.m0.orders"), &[])
        .await;
    assert!(
        gw.gateway.bridge.plane.channels() <= 4 * 2 + 4 + 8 + 1,
        "channels: {}",
        gw.gateway.bridge.plane.channels()
    );
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    for i in 0..SESSIONS {
        publish(
            &ch,
            "amq.topic",
            &format!("{prefix}.m{i}.orders"),
            format!("order-{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // A key no subscription of the others matches; only `#` gets it.
    publish(
        &ch,
        "amq.topic",
        &format!("{prefix}.other.thing.x"),
        b"other",
        BasicProperties::default(),
    )
    .await;
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        let m = c.expect(Command::Message).await;
        assert_eq!(body(&m), format!("order-{i}"), "session {i}");
        assert_eq!(m.header("subscription").as_deref(), Some("own"));
        assert_eq!(
            m.header("destination").as_deref(),
            Some(&*format!("/topic/{prefix}.m{i}.orders"))
        );
        assert!(
            matches!(
                c.recv_within(Duration::from_millis(20)).await,
                Recv::Timeout
            ),
            "session {i} got more than its own order"
        );
    }
    // Session 0: its own order on `own` and `again`, every order on `star`
    // and `hash`, and the other key on `hash` only.
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    let expected = 2 + SESSIONS * 2 + 1;
    for _ in 0..expected {
        let m = clients[0].expect(Command::Message).await;
        got.entry(m.header("subscription").expect("sub").into_owned())
            .or_default()
            .push(body(&m));
    }
    assert!(matches!(
        clients[0].recv_within(Duration::from_millis(300)).await,
        Recv::Timeout
    ));
    assert_eq!(got["own"], vec!["order-0"]);
    assert_eq!(got["again"], vec!["order-0"]);
    assert_eq!(got["star"].len(), SESSIONS);
    assert_eq!(got["hash"].len(), SESSIONS + 1);
    let star: HashSet<_> = got["star"].iter().collect();
    assert_eq!(star.len(), SESSIONS, "each order once on `*`");
    for c in clients {
        c.disconnect().await;
    }
}

/// On a shared consumer channel, a STOMP cumulative ACK settles that
/// subscription's messages only: another session's unacked deliveries on
/// the same channel (earlier tags) stay unacked and come back when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_ack_on_a_shared_channel_settles_only_its_subscription() {
    let gw = start_gateway(|c| c.amqp.consumer_channels = 1).await;
    let (qa, qb) = (unique("cum-a"), unique("cum-b"));
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    // B subscribes and receives first: its tags are the lower ones.
    let (mut b, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    b.subscribe(
        "b",
        &format!("/queue/{qb}"),
        &[("ack", "client-individual")],
    )
    .await;
    for i in 0..3 {
        publish(
            &ch,
            "",
            &qb,
            format!("b{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    for _ in 0..3 {
        b.expect(Command::Message).await;
    }
    let (mut a, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    a.subscribe("a", &format!("/queue/{qa}"), &[("ack", "client")])
        .await;
    for i in 0..3 {
        publish(
            &ch,
            "",
            &qa,
            format!("a{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let mut last = None;
    for _ in 0..3 {
        last = Some(a.expect(Command::Message).await);
    }
    let last_ack = last
        .and_then(|m| m.header("ack").map(|v| v.into_owned()))
        .expect("ack");
    a.send(
        &Frame::new(Command::Ack)
            .with_header("id", &last_ack)
            .with_header("receipt", "acked"),
    )
    .await;
    a.expect(Command::Receipt).await;
    a.disconnect().await;
    // B leaves without acking: its three messages go back to its queue.
    b.disconnect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ready(&qb).await != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's unacked messages were not requeued: {} ready",
            ready(&qb).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready(&qa).await, 0, "A's cumulative ACK settled its three");
    delete_queue(&qa).await;
    delete_queue(&qb).await;
}

/// Reusing a subscription id after UNSUBSCRIBE (issue: stale deliveries
/// relabelled and acked by tag): every message is consumed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_subscription_id_consumes_every_message_exactly_once() {
    let gw = start_gateway(|_| {}).await;
    let q = unique("reuse");
    let destination = format!("/queue/{q}");
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("s1", &destination, &[("ack", "client-individual")])
        .await;
    for i in 0..3 {
        publish(
            &ch,
            "",
            &q,
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let mut consumed = Vec::new();
    let mut old_ids = Vec::new();
    for i in 0..3 {
        let m = c.expect(Command::Message).await;
        let id = m.header("ack").expect("ack").into_owned();
        if i < 2 {
            c.send(&Frame::new(Command::Ack).with_header("id", &id))
                .await;
            consumed.push(body(&m));
        } else {
            old_ids.push(id);
        }
    }
    c.send(
        &Frame::new(Command::Unsubscribe)
            .with_header("id", "s1")
            .with_header("receipt", "u"),
    )
    .await;
    c.expect(Command::Receipt).await;
    c.subscribe("s1", &destination, &[("ack", "client-individual")])
        .await;
    publish(&ch, "", &q, b"m3", BasicProperties::default()).await;
    // The old incarnation's unacked message comes again, and the new one.
    let again = [
        c.expect(Command::Message).await,
        c.expect(Command::Message).await,
    ];
    // Acking the stale id first settles nothing of the new subscription.
    for old in &old_ids {
        c.send(&Frame::new(Command::Ack).with_header("id", old))
            .await;
    }
    for m in &again {
        let id = m.header("ack").expect("ack").into_owned();
        assert!(
            !old_ids.contains(&id),
            "a new delivery reused an old message id"
        );
        c.send(
            &Frame::new(Command::Ack)
                .with_header("id", &id)
                .with_header("receipt", &id),
        )
        .await;
        c.expect(Command::Receipt).await;
        consumed.push(body(m));
    }
    assert!(matches!(
        c.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    ));
    c.disconnect().await;
    consumed.sort();
    assert_eq!(consumed, vec!["m0", "m1", "m2", "m3"]);
    assert_eq!(ready(&q).await, 0);
    delete_queue(&q).await;
}

/// Queue subscriptions of many sessions share the plane's consumer channels
/// (each with its own prefetch), and a refused declaration (a queue that
/// exists with other arguments) closes nothing that other sessions use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_declaration_does_not_disturb_other_sessions_consumers() {
    let gw = start_gateway(|c| c.amqp.consumer_channels = 1).await;
    let q = unique("steady");
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let (mut steady, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    steady
        .subscribe("s", &format!("/queue/{q}"), &[("ack", "client-individual")])
        .await;
    publish(&ch, "", &q, b"one", BasicProperties::default()).await;
    let first = steady.expect(Command::Message).await;
    // Another session asks for a queue that exists with other arguments.
    let (mut bad, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    bad.send(
        &Frame::new(Command::Subscribe)
            .with_header("id", "x")
            .with_header("destination", &format!("/queue/{q}"))
            .with_header("x-max-length", "5"),
    )
    .await;
    let error = bad.expect(Command::Error).await;
    assert!(
        error.header("message").is_some_and(
            |m| m.to_lowercase().contains("precondition_failed") || m.contains("inequivalent")
        ),
        "{:?}",
        error.header("message")
    );
    // The steady session's consumer and its unacked message are untouched.
    steady
        .send(
            &Frame::new(Command::Ack)
                .with_header("id", &first.header("ack").expect("ack"))
                .with_header("receipt", "k"),
        )
        .await;
    steady.expect(Command::Receipt).await;
    publish(&ch, "", &q, b"two", BasicProperties::default()).await;
    let second = steady.expect(Command::Message).await;
    assert_eq!(body(&second), "two");
    assert_eq!(
        second.header("redelivered").as_deref().unwrap_or("false"),
        "false"
    );
    steady.disconnect().await;
    delete_queue(&q).await;
}

/// A transient `/topic` subscription in a client ack mode behaves as on
/// Web-STOMP (a queue of its own): at most `prefetch-count` unacked
/// messages, NACK with requeue redelivers (`redelivered:true`), NACK
/// without requeue drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ack_topic_subscription_has_prefetch_and_redelivery() {
    let gw = start_gateway(|_| {}).await;
    let topic = unique("acked");
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe(
        "t",
        &format!("/topic/{topic}"),
        &[("ack", "client-individual"), ("prefetch-count", "2")],
    )
    .await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    for i in 0..4 {
        publish(
            &ch,
            "amq.topic",
            &topic,
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let first = c.expect(Command::Message).await;
    let second = c.expect(Command::Message).await;
    assert_eq!((body(&first), body(&second)), ("m0".into(), "m1".into()));
    assert_eq!(
        first.header("redelivered").as_deref().unwrap_or("false"),
        "false"
    );
    assert!(
        matches!(
            c.recv_within(Duration::from_millis(500)).await,
            Recv::Timeout
        ),
        "more than prefetch-count unacked messages"
    );
    // NACK with requeue: m0 comes again, redelivered.
    c.send(&Frame::new(Command::Nack).with_header("id", &first.header("ack").expect("ack")))
        .await;
    let again = c.expect(Command::Message).await;
    assert_eq!(body(&again), "m0");
    assert_eq!(again.header("redelivered").as_deref(), Some("true"));
    // NACK without requeue drops m1; ACK m0: m2 and m3 follow, nothing else.
    c.send(
        &Frame::new(Command::Nack)
            .with_header("id", &second.header("ack").expect("ack"))
            .with_header("requeue", "false"),
    )
    .await;
    c.send(&Frame::new(Command::Ack).with_header("id", &again.header("ack").expect("ack")))
        .await;
    let mut rest = Vec::new();
    for _ in 0..2 {
        let m = c.expect(Command::Message).await;
        c.send(&Frame::new(Command::Ack).with_header("id", &m.header("ack").expect("ack")))
            .await;
        rest.push(body(&m));
    }
    assert_eq!(rest, vec!["m2", "m3"]);
    assert!(matches!(
        c.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    ));
    c.disconnect().await;
}

/// Durable topic subscriptions as RabbitMQ defines them: a plain
/// UNSUBSCRIBE keeps the queue (messages published meanwhile wait there and
/// come when the client subscribes again with the same id); UNSUBSCRIBE
/// with `durable:true` deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscription_survives_unsubscribe_until_durable_unsubscribe() {
    let gw = start_gateway(|_| {}).await;
    let plane: HashSet<String> = plane_queues(&gw).await.into_iter().collect();
    let topic = unique("dur");
    let destination = format!("/topic/{topic}");
    let headers = [
        ("durable", "true"),
        ("auto-delete", "false"),
        ("ack", "client-individual"),
    ];
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("d1", &destination, &headers).await;
    let bound: Vec<String> = queues_bound("amq.topic", &topic)
        .into_iter()
        .filter(|q| !plane.contains(q))
        .collect();
    assert_eq!(bound.len(), 1, "one durable queue: {bound:?}");
    let queue = bound[0].clone();
    c.send(
        &Frame::new(Command::Unsubscribe)
            .with_header("id", "d1")
            .with_header("receipt", "u1"),
    )
    .await;
    c.expect(Command::Receipt).await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"while away",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(ready(&queue).await, 1, "kept by the durable queue");
    c.subscribe("d1", &destination, &headers).await;
    let m = c.expect(Command::Message).await;
    assert_eq!(body(&m), "while away");
    c.send(&Frame::new(Command::Ack).with_header("id", &m.header("ack").expect("ack")))
        .await;
    c.send(
        &Frame::new(Command::Unsubscribe)
            .with_header("id", "d1")
            .with_header("durable", "true")
            .with_header("receipt", "u2"),
    )
    .await;
    c.expect(Command::Receipt).await;
    assert!(
        !list_queues().iter().any(|(name, _)| name == &queue),
        "UNSUBSCRIBE durable:true deletes the queue"
    );
    c.disconnect().await;
}

/// The gateway learns a user exchange's type (AMQP cannot be asked
/// directly: see `Plane::probe_exchange_kind`) and routes as RabbitMQ does:
/// direct by exact key, fanout to every binding; a headers exchange, which
/// it cannot match, gets a queue of its own for the binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_exchanges_are_routed_by_their_type() {
    use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
    let gw = start_gateway(|_| {}).await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let (direct, fanout, headers) = (unique("x-direct"), unique("x-fanout"), unique("x-headers"));
    for (name, kind) in [
        (&direct, lapin::ExchangeKind::Direct),
        (&fanout, lapin::ExchangeKind::Fanout),
        (&headers, lapin::ExchangeKind::Headers),
    ] {
        ch.exchange_declare(
            name.as_str().into(),
            kind,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    }
    let (mut c, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    c.subscribe("d1", &format!("/exchange/{direct}/k1"), &[])
        .await;
    c.subscribe("d2", &format!("/exchange/{direct}/k.*"), &[])
        .await;
    c.subscribe("f1", &format!("/exchange/{fanout}/a"), &[])
        .await;
    c.subscribe("f2", &format!("/exchange/{fanout}/b"), &[])
        .await;
    c.subscribe("h", &format!("/exchange/{headers}"), &[]).await;
    // Direct: exact key only (`k.*` is no pattern there).
    publish(&ch, &direct, "k1", b"d", BasicProperties::default()).await;
    publish(&ch, &direct, "k.x", b"nobody", BasicProperties::default()).await;
    // Fanout: every binding, whatever the key.
    publish(&ch, &fanout, "zzz", b"f", BasicProperties::default()).await;
    // Headers: through the binding's own queue.
    publish(&ch, &headers, "", b"h", BasicProperties::default()).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = c.expect(Command::Message).await;
        got.push(format!(
            "{}={}",
            m.header("subscription").expect("sub"),
            body(&m)
        ));
    }
    got.sort();
    assert_eq!(got, vec!["d1=d", "f1=f", "f2=f", "h=h"]);
    assert!(matches!(
        c.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    ));
    c.disconnect().await;
    for name in [&direct, &fanout, &headers] {
        let _ = ch
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
