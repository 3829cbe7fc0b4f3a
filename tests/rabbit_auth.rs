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

fn send_frame(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", destination)
        .with_body(body.to_owned())
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
