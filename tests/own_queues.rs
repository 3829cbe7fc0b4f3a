//! Issue 18, part B: broadcast subscriptions whose semantics the AMQP plane
//! cannot serve (durable, named, quorum or stream queues, client acks) get
//! a queue of their own, consumed on the plane's shared consumer channels,
//! as RabbitMQ's Web-STOMP gives them: the same flags and arguments, the
//! same UNSUBSCRIBE semantics, and with `auth.mode = "rabbitmq"` the same
//! queue names. Against the real RabbitMQ on 127.0.0.1:5672 (gateway users,
//! login guest/guest, rules that allow the queue arguments used), and the
//! last test against a private node with the management plugin (RabbitMQ's
//! users and permissions, as a Web-STOMP deployment has them; ports 5752
//! and 16752). Every queue has a unique name and is deleted at the end
//! (also when a test fails: [`QueueCleanup`]).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use lapin::BasicProperties;
use stompgate::stomp::destination::webstomp_subscription_queue;
use stompgate::stomp::{Command, Frame};

/// A gateway whose one user is guest/guest, with rules that allow the
/// destinations and queue arguments of these tests.
async fn rabbit_gateway(tweak: impl FnOnce(&mut stompgate::config::Config)) -> TestGateway {
    start_gateway(|c| {
        c.auth.anonymous = false;
        c.auth.users = vec![stompgate::config::UserConfig {
            login: "guest".into(),
            passcode: "guest".into(),
        }];
        let arguments = [
            "durable",
            "x-queue-name",
            "x-queue-type",
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-stream-filter-size-bytes",
            "x-stream-match-unfiltered",
        ];
        c.auth.rules = ["/topic/*", "/exchange/amq.direct/*"]
            .into_iter()
            .map(|destination| stompgate::config::RuleConfig {
                verbs: vec!["subscribe".into(), "send".into()],
                destination: destination.into(),
                queue_arguments: arguments.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        tweak(c);
    })
    .await
}

/// The queue of durable subscription `id` of user guest (gateway users:
/// `stomp-subscription-<user>.<id>`).
fn durable_queue(id: &str) -> String {
    format!("stomp-subscription-guest.{id}")
}

/// A session of `login`/`passcode` in STOMP `version`.
async fn login_as(gw: &TestGateway, version: &str, login: &str, passcode: &str) -> StompClient {
    let mut client = StompClient::open(&gw.ws_url(), &[]).await;
    let connected = client
        .connect_with(
            Frame::new(Command::Connect)
                .with_header("accept-version", version)
                .with_header("login", login)
                .with_header("passcode", passcode)
                .with_header("heart-beat", "0,0"),
        )
        .await;
    assert_eq!(connected.command, Command::Connected, "{connected:?}");
    client
}

async fn login(gw: &TestGateway, version: &str) -> StompClient {
    login_as(gw, version, "guest", "guest").await
}

/// (durable, auto_delete, exclusive, type) of `queue`, `None` when absent.
fn queue_flags(queue: &str) -> Option<(String, String, String, String)> {
    rabbitmqctl_list(
        "list_queues",
        &["name", "durable", "auto_delete", "exclusive", "type"],
    )
    .into_iter()
    .find(|row| row[0] == queue)
    .map(|row| {
        (
            row[1].clone(),
            row[2].clone(),
            row[3].clone(),
            row[4].clone(),
        )
    })
}

fn exists(queue: &str) -> bool {
    list_queues().iter().any(|(name, _)| name == queue)
}

/// Waits (bounded: 10 s) until `check` holds; false if it never did.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..20 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check()
}

async fn publish_to(exchange: &str, key: &str, body: &[u8]) {
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(&ch, exchange, key, body, BasicProperties::default()).await;
    let _ = conn.close(200, "done".into()).await;
}

fn unsubscribe(id: &str, receipt: &str) -> Frame {
    Frame::new(Command::Unsubscribe)
        .with_header("id", id)
        .with_header("receipt", receipt)
}

/// destinations.TestDurableSubscription (`do_test_durable_subscription`),
/// with what the suite leaves implicit checked too: the queue is the one
/// Web-STOMP declares (its name, durable, not auto-delete, not exclusive),
/// a plain UNSUBSCRIBE keeps it, UNSUBSCRIBE with `durable:true` (or the
/// legacy `persistent:true`) deletes it. The headers are what stomp.py sends
/// for Python booleans (`True`, `False`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topic_subscription_is_web_stomp_s() {
    let gw = rabbit_gateway(|_| {}).await;
    for legacy in [false, true] {
        let topic = unique("durable");
        let destination = format!("/topic/{topic}");
        let id = unique("test-subscription");
        let queue = durable_queue(&id);
        let _cleanup = QueueCleanup(queue.clone());
        let durable = if legacy { "persistent" } else { "durable" };
        let headers = [(durable, "True"), ("auto-delete", "False")];

        let mut c = login(&gw, "1.0").await;
        c.subscribe(&id, &destination, &headers).await;
        assert_eq!(
            queue_flags(&queue),
            Some((
                "true".into(),
                "false".into(),
                "false".into(),
                "classic".into()
            )),
            "Web-STOMP's queue for ({topic}, {id})"
        );
        assert_eq!(
            gw.gateway.bridge.plane.bindings(),
            0,
            "not a binding of the plane"
        );
        c.send(&send_frame(&destination, "first")).await;
        assert_eq!(body(&c.expect(Command::Message).await), "first");

        // A plain UNSUBSCRIBE keeps the queue: what comes meanwhile waits.
        c.send(&unsubscribe(&id, "u1")).await;
        c.expect(Command::Receipt).await;
        assert!(exists(&queue), "a plain UNSUBSCRIBE keeps the queue");
        c.send(&send_frame(&destination, "second")).await;
        c.subscribe(&id, &destination, &headers).await;
        assert_eq!(body(&c.expect(Command::Message).await), "second");

        // UNSUBSCRIBE with the durable header deletes it.
        c.send(&unsubscribe(&id, "u2").with_header(durable, "true"))
            .await;
        c.expect(Command::Receipt).await;
        assert!(!exists(&queue), "UNSUBSCRIBE {durable}:true deletes it");
        c.send(&send_frame(&destination, "third")).await;
        c.subscribe(&id, &destination, &headers).await;
        assert_eq!(
            c.recv_within(Duration::from_millis(1500)).await,
            Recv::Timeout,
            "nothing kept for a deleted subscription"
        );
        c.disconnect().await;
    }
}

/// UNSUBSCRIBE with `durable:true` deletes the queue of a `/topic`
/// subscription only: RabbitMQ's plugin leaves a durable `/exchange`
/// subscription's queue in place (`maybe_delete_durable_sub_queue`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_unsubscribe_keeps_an_exchange_subscription_s_queue() {
    let gw = rabbit_gateway(|_| {}).await;
    let id = unique("ex");
    let queue = durable_queue(&id);
    let _cleanup = QueueCleanup(queue.clone());
    let destination = format!("/exchange/amq.direct/{}", unique("k"));
    let mut c = login(&gw, "1.2").await;
    c.subscribe(
        &id,
        &destination,
        &[("durable", "true"), ("auto-delete", "false")],
    )
    .await;
    assert!(exists(&queue));
    c.send(&unsubscribe(&id, "u").with_header("durable", "true"))
        .await;
    c.expect(Command::Receipt).await;
    assert!(exists(&queue), "an /exchange subscription's queue stays");
    c.disconnect().await;
}

/// destinations.TestDurableSubscription.test_durable_subscribe_no_id:
/// `durable:true` (or `persistent:true`) without `id` is refused with
/// Web-STOMP's `Missing Header`, in 1.0 too (where `id` is optional).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscription_without_id_is_refused_as_web_stomp_does() {
    let gw = rabbit_gateway(|_| {}).await;
    for header in ["durable", "persistent"] {
        let mut c = login(&gw, "1.0").await;
        let topic = unique("durable-invalid");
        c.send(
            &Frame::new(Command::Subscribe)
                .with_header("destination", &format!("/topic/{topic}"))
                .with_header("ack", "auto")
                .with_header(header, "true"),
        )
        .await;
        let error = c.expect(Command::Error).await;
        assert_eq!(error.header("message").as_deref(), Some("Missing Header"));
        assert_eq!(
            body(&error),
            "Header 'id' is required for durable subscriptions"
        );
        assert!(
            !list_queues()
                .iter()
                .any(|(name, _)| name.contains(topic.as_str())),
            "nothing declared"
        );
    }
}

/// destinations.TestDurableSubscription.test_share_subscription: two
/// sessions subscribing durably with the same destination and id share
/// the queue (competing consumers): every message reaches one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_share_a_durable_subscription() {
    let gw = rabbit_gateway(|_| {}).await;
    let topic = unique("durable-shared");
    let destination = format!("/topic/{topic}");
    let id = unique("shared");
    let queue = durable_queue(&id);
    let _cleanup = QueueCleanup(queue.clone());
    // What the suite's stomp.py sends: `durable: 'true'`, `auto-delete: False`.
    let headers = [("durable", "true"), ("auto-delete", "False")];
    let mut a = login(&gw, "1.2").await;
    let mut b = login(&gw, "1.2").await;
    a.subscribe(&id, &destination, &headers).await;
    b.subscribe(&id, &destination, &headers).await;
    assert_eq!(
        queue_stat(&queue, "consumers"),
        Some(2),
        "one queue, two consumers"
    );
    let n = 40;
    for i in 0..n {
        publish_to("amq.topic", &topic, format!("m{i}").as_bytes()).await;
    }
    let mut seen = HashSet::new();
    let mut per_session = [0usize; 2];
    let mut idle_rounds = 0;
    while seen.len() < n && idle_rounds < 20 {
        let mut progressed = false;
        for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
            if let Recv::Frame(f) = c.recv_within(Duration::from_millis(300)).await {
                assert_eq!(f.command, Command::Message);
                assert!(seen.insert(body(&f)), "delivered twice: {}", body(&f));
                per_session[i] += 1;
                progressed = true;
            }
        }
        idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
    }
    assert_eq!(seen.len(), n, "every message reached one session");
    assert!(
        per_session.iter().all(|&k| k > 0),
        "both sessions consume the shared queue: {per_session:?}"
    );
    a.disconnect().await;
    b.disconnect().await;
}

/// x_queue_name.TestQueueName (`test_topic_dest`, `test_exchange_dest`):
/// `x-queue-name` on a `/topic` or `/exchange` subscription names the queue
/// the messages come through (a backend can publish to it by name). Not
/// durable: exclusive and auto-delete, so it is the subscription's alone (a
/// second session gets `resource_locked`, as a second Web-STOMP connection
/// does) and goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_queue_name_names_the_subscription_s_queue() {
    let gw = rabbit_gateway(|_| {}).await;
    for destination in [
        format!("/topic/{}", unique("test")),
        format!("/exchange/amq.direct/{}", unique("test")),
    ] {
        let queue = unique("my-user-generated-queue-name");
        let _cleanup = QueueCleanup(queue.clone());
        let mut c = login(&gw, "1.0").await;
        // 1.0 without id, as the suite subscribes.
        c.send(
            &Frame::new(Command::Subscribe)
                .with_header("destination", &destination)
                .with_header("x-queue-name", &queue)
                .with_header("receipt", "s"),
        )
        .await;
        c.expect(Command::Receipt).await;
        assert_eq!(
            queue_flags(&queue),
            Some((
                "false".into(),
                "true".into(),
                "true".into(),
                "classic".into()
            )),
            "{destination}: named, exclusive, auto-delete"
        );
        publish_to("", &queue, b"Hello World!").await;
        let m = c.expect(Command::Message).await;
        assert_eq!(body(&m), "Hello World!");

        // Another session may not take it over.
        let mut other = login(&gw, "1.2").await;
        other
            .send(
                &Frame::new(Command::Subscribe)
                    .with_header("id", "x")
                    .with_header("destination", &destination)
                    .with_header("x-queue-name", &queue),
            )
            .await;
        let error = other.expect(Command::Error).await;
        assert_eq!(error.header("message").as_deref(), Some("resource_locked"));
        // Nor a second subscription of the same session (it would delete
        // the first one's queue in the trial declaration).
        c.send(
            &Frame::new(Command::Subscribe)
                .with_header("id", "again")
                .with_header("destination", &destination)
                .with_header("x-queue-name", &queue),
        )
        .await;
        let error = c.expect(Command::Error).await;
        assert_eq!(error.header("message").as_deref(), Some("resource_locked"));
        // The ERROR ended the session: the queue goes with it.
        drop(c);
        assert!(
            eventually(|| !exists(&queue)).await,
            "gone with its session"
        );
    }
}

/// x_queue_type_quorum and x_queue_type_stream: the named queue is declared
/// with the type and arguments of the SUBSCRIBE headers (integers as
/// integers), durable as asked, and messages published to it by name come
/// through (the stream one in `client` ack mode with a prefetch, as stream
/// consumers need).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_and_stream_queues_are_declared_and_consumed() {
    let gw = rabbit_gateway(|_| {}).await;
    let quorum = unique("my-quorum-queue");
    let stream = unique("my-stream-queue");
    let _cleanup = (QueueCleanup(quorum.clone()), QueueCleanup(stream.clone()));
    let mut c = login(&gw, "1.0").await;
    c.subscribe(
        "1234",
        &format!("/topic/{}", unique("quorum-queue-test")),
        &[
            ("x-queue-name", &quorum),
            ("x-queue-type", "quorum"),
            ("durable", "True"),
            ("auto-delete", "False"),
        ],
    )
    .await;
    c.subscribe(
        "1235",
        &format!("/topic/{}", unique("stream-queue-test")),
        &[
            ("x-queue-name", &stream),
            ("x-queue-type", "stream"),
            ("x-max-age", "10h"),
            ("x-stream-max-segment-size-bytes", "1048576"),
            ("x-stream-filter-size-bytes", "32"),
            ("x-stream-match-unfiltered", "True"),
            ("durable", "True"),
            ("auto-delete", "False"),
            ("prefetch-count", "10"),
            ("ack", "client"),
        ],
    )
    .await;
    assert_eq!(
        queue_flags(&quorum).map(|f| (f.0, f.3)),
        Some(("true".into(), "quorum".into()))
    );
    assert_eq!(
        queue_flags(&stream).map(|f| (f.0, f.3)),
        Some(("true".into(), "stream".into()))
    );
    let arguments = rabbitmqctl_list("list_queues", &["name", "arguments"])
        .into_iter()
        .find(|row| row[0] == stream)
        .map(|row| row[1].clone())
        .unwrap_or_default();
    assert!(
        arguments.contains("{\"x-stream-max-segment-size-bytes\",1048576}")
            && arguments.contains("{\"x-max-age\",\"10h\"}"),
        "typed as RabbitMQ's plugin types them: {arguments}"
    );
    for queue in [&quorum, &stream] {
        publish_to("", queue, queue.as_bytes()).await;
    }
    let mut got = HashSet::new();
    for _ in 0..2 {
        let m = c.expect(Command::Message).await;
        got.insert(body(&m));
        if m.header("subscription").as_deref() == Some("1235") {
            c.send(
                &Frame::new(Command::Ack)
                    .with_header("message-id", &m.header("message-id").expect("id")),
            )
            .await;
        }
    }
    assert_eq!(got, HashSet::from([quorum.clone(), stream.clone()]));
    c.disconnect().await;
    assert!(exists(&quorum) && exists(&stream), "durable: they stay");
}

/// A client-ack durable subscription: acks go to the broker, and what the
/// client neither acked nor NACKed without requeue comes back, marked
/// `redelivered:true`, to the next subscriber of the queue (NACK with
/// requeue at once; disconnect on the next session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ack_durable_subscription_redelivers_to_the_next_subscriber() {
    let gw = rabbit_gateway(|_| {}).await;
    let topic = unique("durable-ack");
    let destination = format!("/topic/{topic}");
    let id = unique("d");
    let queue = durable_queue(&id);
    let _cleanup = QueueCleanup(queue.clone());
    let headers = [
        ("durable", "true"),
        ("auto-delete", "False"),
        ("ack", "client-individual"),
        ("prefetch-count", "5"),
    ];
    let mut c = login(&gw, "1.2").await;
    c.subscribe(&id, &destination, &headers).await;
    publish_to("amq.topic", &topic, b"one").await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.header("redelivered").as_deref(), Some("false"));
    c.send(&Frame::new(Command::Nack).with_header("id", &m.header("ack").expect("ack")))
        .await;
    let again = c.expect(Command::Message).await;
    assert_eq!(body(&again), "one");
    assert_eq!(again.header("redelivered").as_deref(), Some("true"));
    // Gone without acking: the next session on the queue gets it.
    drop(c);
    let mut next = login(&gw, "1.2").await;
    next.subscribe(&id, &destination, &headers).await;
    let m = next.expect(Command::Message).await;
    assert_eq!(body(&m), "one");
    assert_eq!(m.header("redelivered").as_deref(), Some("true"));
    next.send(
        &Frame::new(Command::Ack)
            .with_header("id", &m.header("ack").expect("ack"))
            .with_header("receipt", "a"),
    )
    .await;
    next.expect(Command::Receipt).await;
    next.disconnect().await;
    assert!(
        eventually(|| queue_stat(&queue, "messages") == Some(0)).await,
        "acked at the broker"
    );
}

/// Queues grow only with subscriptions that ask for one, and no further
/// than the per-session subscription cap: the cap counts them, and a
/// refused SUBSCRIBE declares nothing. Plain broadcast subscriptions stay
/// bindings of the plane. (A guard: the cap held before issue 18 too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_queues_count_against_the_subscription_cap() {
    let gw = rabbit_gateway(|c| c.limits.max_subscriptions = 3).await;
    let topic = unique("capped");
    let destination = format!("/topic/{topic}");
    let names: Vec<String> = (0..4)
        .map(|i| durable_queue(&format!("{topic}-s{i}")))
        .collect();
    let _cleanup: Vec<QueueCleanup> = names.iter().cloned().map(QueueCleanup).collect();
    let mut c = login(&gw, "1.2").await;
    c.subscribe("plain", &destination, &[]).await;
    assert_eq!(
        gw.gateway.bridge.plane.bindings(),
        1,
        "a plain one is a binding"
    );
    let durable = [("durable", "true"), ("auto-delete", "false")];
    c.subscribe(&format!("{topic}-s0"), &destination, &durable)
        .await;
    c.subscribe(&format!("{topic}-s1"), &destination, &durable)
        .await;
    c.send(
        &Frame::new(Command::Subscribe)
            .with_header("id", &format!("{topic}-s2"))
            .with_header("destination", &destination)
            .with_header("durable", "true")
            .with_header("auto-delete", "false"),
    )
    .await;
    c.expect_error("too many subscriptions").await;
    let declared: Vec<&String> = names.iter().filter(|n| exists(n)).collect();
    assert_eq!(declared, vec![&names[0], &names[1]]);
}

/// With RabbitMQ's users (`auth.mode = "rabbitmq"`, a private node with
/// the management plugin), as on Web-STOMP: a durable subscription's queue
/// has the name RabbitMQ's plugin gives it (a client moving over finds its
/// queue and what it kept), `x-queue-name` needs no rule (RabbitMQ's
/// permissions decide), two users with the same destination and id share
/// the queue when their permissions allow it, and a user without configure
/// permission on `stomp-subscription-*` gets no queue at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_users_get_web_stomp_s_queues_under_rabbitmq_s_permissions() {
    let node = PrivateNode::start_with_plugins("sg-ownq", 5752, "rabbitmq_management");
    let list = |node: &PrivateNode| -> Vec<Vec<String>> {
        node.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "consumers",
        ])
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
    };
    node.ctl(&["add_user", "alice", "alice-pw"]);
    node.ctl(&["set_permissions", "alice", ".*", ".*", ".*"]);
    node.ctl(&["add_user", "mallory", "mallory-pw"]);
    node.ctl(&["set_permissions", "mallory", "^mine-", ".*", ".*"]);
    let gw = start_gateway(|c| {
        c.amqp.url = node.amqp_url();
        c.auth.mode = stompgate::config::AuthMode::Rabbitmq;
        c.auth.anonymous = false;
        c.auth.rabbitmq.management_url = format!("http://127.0.0.1:{}", node.management_port());
        c.auth.rabbitmq.cache_ttl_ms = 0;
    })
    .await;
    let destination = "/topic/durable";
    let queue = webstomp_subscription_queue("durable", "test.subscription");
    // The name Web-STOMP 3.10.8 gave it (python suite, destinations.py).
    assert_eq!(queue, "stomp-subscription-tMbeqL30tjlgaXMmaFM6Ew");
    let headers = [("durable", "True"), ("auto-delete", "False")];
    let mut guest = login(&gw, "1.0").await;
    guest
        .subscribe("test.subscription", destination, &headers)
        .await;
    let mut alice = login_as(&gw, "1.2", "alice", "alice-pw").await;
    alice
        .subscribe("test.subscription", destination, &headers)
        .await;
    let row = list(&node)
        .into_iter()
        .find(|r| r[0] == queue)
        .unwrap_or_else(|| panic!("{queue} declared: {:?}", list(&node)));
    assert_eq!(row[1..], ["true", "false", "false", "2"], "{row:?}");

    // x-queue-name without a rule.
    let mut named = login(&gw, "1.0").await;
    named
        .subscribe(
            "n",
            "/exchange/amq.direct/test",
            &[("x-queue-name", "my-user-generated-queue-name-exchange")],
        )
        .await;
    assert!(list(&node)
        .iter()
        .any(|r| r[0] == "my-user-generated-queue-name-exchange"));

    // No configure permission on the queue: refused, nothing declared.
    let mut m = login_as(&gw, "1.2", "mallory", "mallory-pw").await;
    m.send(
        &Frame::new(Command::Subscribe)
            .with_header("id", "other.id")
            .with_header("destination", destination)
            .with_header("durable", "true")
            .with_header("auto-delete", "false"),
    )
    .await;
    let error = m.expect(Command::Error).await;
    assert_eq!(error.header("message").as_deref(), Some("access_refused"));
    let theirs = webstomp_subscription_queue("durable", "other.id");
    assert!(body(&error).contains(&theirs), "{}", body(&error));
    assert!(list(&node).iter().all(|r| r[0] != theirs));
    for c in [guest, alice, named] {
        c.disconnect().await;
    }
    drop(gw);
    drop(node);
}
