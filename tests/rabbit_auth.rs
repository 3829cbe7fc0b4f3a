//! Issue 10, items 9 and 10: virtual hosts selected by CONNECT's `host`, and
//! (auth.mode = "rabbitmq") credentials and permissions from RabbitMQ itself,
//! against the real RabbitMQ on 127.0.0.1:5672. Users and vhosts are made
//! with `rabbitmqctl` under unique names and deleted at the end (also when a
//! test fails: the guards delete them when dropped).

mod common;

use common::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use stompgate::stomp::{Command, Frame};

/// `rabbitmqctl args...` on the machine's broker, which must succeed.
fn ctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("rabbitmqctl (scripts/ensure-rabbitmq.sh installs it)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost of the test's own, deleted when dropped.
struct TestVhost(String);

impl TestVhost {
    /// Creates it and gives `guest` (the gateway's own user) every permission.
    fn new(prefix: &str) -> TestVhost {
        let name = unique(prefix);
        ctl(&["add_vhost", &name]);
        let vhost = TestVhost(name);
        ctl(&["set_permissions", "-p", &vhost.0, "guest", ".*", ".*", ".*"]);
        vhost
    }

    fn amqp_url(&self) -> String {
        stompgate::bridge::vhosts::url_for_vhost(AMQP_URL, &self.0).expect("url")
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

async fn connect_host(url: &str, host: &str) -> StompClient {
    let mut client = StompClient::open(url, &["v12.stomp"]).await;
    client
        .connect_with(
            Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("host", host)
                .with_header("heart-beat", "0,0"),
        )
        .await;
    client
}

// ---- item 9: virtual hosts --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_host_selects_the_vhost() {
    let a = TestVhost::new("vh-a");
    let b = TestVhost::new("vh-b");
    let gw = start_gateway(|c| c.amqp.vhosts = vec![a.0.clone(), b.0.clone()]).await;
    let topic = unique("vt");
    let destination = format!("/topic/{topic}");

    let mut on_a = connect_host(&gw.ws_url(), &a.0).await;
    let mut on_b = connect_host(&gw.ws_url(), &b.0).await;
    on_a.subscribe("s", &destination, &[]).await;
    on_b.subscribe("s", &destination, &[]).await;

    // A SEND on vhost A reaches A's subscriber...
    on_a.send(&send_frame(&destination, "sent on A")).await;
    let got = on_a.expect(Command::Message).await;
    assert_eq!(body(&got), "sent on A");

    // ...and a backend publishing in vhost B reaches B's subscriber, which
    // saw nothing of A's message before it.
    let backend = Connection::connect(&b.amqp_url(), ConnectionProperties::default())
        .await
        .expect("AMQP connection to vhost B");
    let ch = confirm_channel(&backend).await;
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"published in B",
        BasicProperties::default(),
    )
    .await;
    let got = on_b.expect(Command::Message).await;
    assert_eq!(body(&got), "published in B", "B's first message");
    let _ = backend.close(200, "done".into()).await;

    // A vhost the gateway does not serve gets Web-STOMP's ERROR.
    let mut other = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    other
        .send(
            &Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("host", "no-such-vhost"),
        )
        .await;
    let error = other
        .expect_error("Virtual host 'no-such-vhost' access denied")
        .await;
    assert_eq!(error.header("message").as_deref(), Some("Bad CONNECT"));

    on_a.disconnect().await;
    on_b.disconnect().await;
}

// ---- item 10: credentials and permissions from RabbitMQ -------------------

/// A RabbitMQ user of the test's own, deleted when dropped.
struct TestUser {
    name: String,
    password: String,
}

impl TestUser {
    fn new(prefix: &str) -> TestUser {
        let user = TestUser {
            name: unique(prefix),
            password: unique("pw"),
        };
        ctl(&["add_user", &user.name, &user.password]);
        user
    }

    /// `set_permissions -p vhost user configure write read`.
    fn permit(&self, vhost: &str, configure: &str, write: &str, read: &str) {
        ctl(&[
            "set_permissions",
            "-p",
            vhost,
            &self.name,
            configure,
            write,
            read,
        ]);
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// A gateway whose users are RabbitMQ's, with `ttl_ms` of caching.
async fn rabbit_gateway(ttl_ms: u64, vhosts: Vec<String>) -> TestGateway {
    start_gateway(|c| {
        c.auth.mode = stompgate::config::AuthMode::Rabbitmq;
        c.auth.anonymous = false;
        c.auth.rabbitmq.cache_ttl_ms = ttl_ms;
        c.amqp.vhosts = vhosts;
    })
    .await
}

fn connect_frame(login: &str, passcode: &str, host: &str) -> Frame {
    Frame::new(Command::Connect)
        .with_header("accept-version", "1.2")
        .with_header("host", host)
        .with_header("login", login)
        .with_header("passcode", passcode)
        .with_header("heart-beat", "0,0")
}

async fn login(gw: &TestGateway, user: &TestUser) -> StompClient {
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client
        .connect_with(connect_frame(&user.name, &user.password, "/"))
        .await;
    client
}

/// Sends `frame` on a fresh session of `user` and expects Web-STOMP's
/// access_refused ERROR with exactly `body`.
async fn refused(gw: &TestGateway, user: &TestUser, frame: Frame, body_text: &str) {
    let mut client = login(gw, user).await;
    client.send(&frame).await;
    let error = client.expect_error(body_text).await;
    assert_eq!(error.header("message").as_deref(), Some("access_refused"));
    assert_eq!(body(&error), body_text);
}

fn subscribe_frame(id: &str, destination: &str) -> Frame {
    Frame::new(Command::Subscribe)
        .with_header("id", id)
        .with_header("destination", destination)
        .with_header("receipt", "r")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_checks_the_credentials_and_the_vhost() {
    let closed = TestVhost::new("vh-closed");
    let user = TestUser::new("u-login");
    user.permit("/", ".*", ".*", ".*");
    let gw = rabbit_gateway(5_000, vec![closed.0.clone()]).await;

    let client = login(&gw, &user).await;
    client.disconnect().await;

    // A wrong passcode: Web-STOMP's ERROR.
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client.send(&connect_frame(&user.name, "wrong", "/")).await;
    let error = client
        .expect_error(&format!("Access refused for user '{}'", user.name))
        .await;
    assert_eq!(error.header("message").as_deref(), Some("Bad CONNECT"));
    assert_eq!(
        body(&error),
        format!("Access refused for user '{}'\n", user.name)
    );

    // Good credentials, but no permissions in that vhost.
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client
        .send(&connect_frame(&user.name, &user.password, &closed.0))
        .await;
    let error = client
        .expect_error(&format!("Virtual host '{}' access denied", closed.0))
        .await;
    assert_eq!(error.header("message").as_deref(), Some("Bad CONNECT"));

    // No login at all.
    let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    client
        .send(
            &Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("host", "/"),
        )
        .await;
    client
        .expect_error("Missing login or passcode header(s)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_permissions_are_enforced_on_subscribe_and_send() {
    let user = TestUser::new("u-perm");
    let ok = unique("ok");
    let no = unique("no");
    user.permit(
        "/",
        "^(ok-.*|stomp-subscription-.*)$",
        "^(amq\\.topic|amq\\.default|ok-.*|stomp-subscription-.*)$",
        "^(ok-.*|stomp-subscription-.*|amq\\.topic)$",
    );
    let gw = rabbit_gateway(5_000, Vec::new()).await;
    let name = user.name.clone();

    // Allowed: a /queue of the pattern, a /topic, a SEND to both.
    let mut client = login(&gw, &user).await;
    client.subscribe("q", &format!("/queue/{ok}"), &[]).await;
    client.subscribe("t", "/topic/news.1", &[]).await;
    client
        .send(&send_frame(&format!("/queue/{ok}"), "to the queue"))
        .await;
    let got = client.expect(Command::Message).await;
    assert_eq!(body(&got), "to the queue");
    client
        .send(&send_frame("/topic/news.1", "to the topic"))
        .await;
    let got = client.expect(Command::Message).await;
    assert_eq!(body(&got), "to the topic");
    client.disconnect().await;

    // configure refused on the queue a /queue SUBSCRIBE declares.
    refused(
        &gw,
        &user,
        subscribe_frame("s", &format!("/queue/{no}")),
        &format!("ACCESS_REFUSED - access to queue '{no}' in vhost '/' refused for user '{name}'"),
    )
    .await;
    // read refused on the exchange an /exchange SUBSCRIBE binds to.
    refused(
        &gw,
        &user,
        subscribe_frame("s", "/exchange/amq.direct/k"),
        &format!(
            "ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '/' refused for user '{name}'"
        ),
    )
    .await;
    // write refused on the exchange a SEND publishes to.
    refused(
        &gw,
        &user,
        send_frame("/exchange/amq.fanout", "x"),
        &format!(
            "ACCESS_REFUSED - access to exchange 'amq.fanout' in vhost '/' refused for user '{name}'"
        ),
    )
    .await;
    // read refused on an existing queue (/amq/queue is only consumed).
    refused(
        &gw,
        &user,
        subscribe_frame("s", &format!("/amq/queue/{no}")),
        &format!("ACCESS_REFUSED - access to queue '{no}' in vhost '/' refused for user '{name}'"),
    )
    .await;
    delete_queue(&ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_are_enforced_on_routing_keys() {
    let user = TestUser::new("u-topic");
    user.permit("/", ".*", ".*", ".*");
    ctl(&[
        "set_topic_permissions",
        "-p",
        "/",
        &user.name,
        "amq.topic",
        "^{username}\\.",
        "^public\\.",
    ]);
    let gw = rabbit_gateway(5_000, Vec::new()).await;
    let name = user.name.clone();

    let mut client = login(&gw, &user).await;
    client.subscribe("p", "/topic/public.news", &[]).await;
    let own = format!("/topic/{name}.status");
    client
        .send(&send_frame(&own, "mine").with_header("receipt", "sent"))
        .await;
    let receipt = client.expect(Command::Receipt).await;
    assert_eq!(receipt.header("receipt-id").as_deref(), Some("sent"));
    client.disconnect().await;

    refused(
        &gw,
        &user,
        send_frame("/topic/other.status", "x"),
        &format!(
            "ACCESS_REFUSED - access to topic 'other.status' in exchange 'amq.topic' in vhost '/' refused for user '{name}'"
        ),
    )
    .await;
    // Web-STOMP checks a /topic SUBSCRIBE itself, before declaring
    // anything, and writes the bare text.
    refused(
        &gw,
        &user,
        subscribe_frame("s", "/topic/secret.news"),
        &format!(
            "access to topic 'secret.news' in exchange 'amq.topic' in vhost '/' refused for user '{name}'"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_permission_takes_effect_within_the_ttl() {
    let user = TestUser::new("u-revoke");
    user.permit("/", ".*", ".*", ".*");
    let gw = rabbit_gateway(300, Vec::new()).await;
    let mut client = login(&gw, &user).await;
    client
        .send(&send_frame("/topic/revoke.me", "allowed").with_header("receipt", "r0"))
        .await;
    client.expect(Command::Receipt).await;

    // Write taken away: the same session is refused within the TTL (and
    // the refresh), polled with bounded waits.
    user.permit("/", ".*", "^$", ".*");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut n = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked write permission was still in force after 15 s"
        );
        n += 1;
        client
            .send(&send_frame("/topic/revoke.me", "again").with_header("receipt", &format!("r{n}")))
            .await;
        let frame = client.recv().await;
        match frame.command {
            Command::Receipt => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Command::Error => {
                assert_eq!(frame.header("message").as_deref(), Some("access_refused"));
                assert_eq!(
                    body(&frame),
                    format!(
                        "ACCESS_REFUSED - access to exchange 'amq.topic' in vhost '/' refused for user '{}'",
                        user.name
                    )
                );
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_spares_the_broker_a_second_login_within_the_ttl() {
    let user = TestUser::new("u-cache");
    user.permit("/", ".*", ".*", ".*");
    let gw = rabbit_gateway(60_000, Vec::new()).await;
    let auth = gw.gateway.rabbit_auth.clone().expect("rabbitmq mode");

    for _ in 0..3 {
        login(&gw, &user).await.disconnect().await;
    }
    assert_eq!(auth.logins_made(), 1, "one AMQP login for three CONNECTs");
    assert_eq!(auth.fetches_made(), 1, "one permission fetch");

    // Refusals are cached too.
    for _ in 0..2 {
        let mut client = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
        client.send(&connect_frame(&user.name, "wrong", "/")).await;
        client.expect_error("Access refused for user").await;
    }
    assert_eq!(
        auth.logins_made(),
        2,
        "one more login for two bad passcodes"
    );
}
