//! Who may connect, subscribe and send, against the real RabbitMQ: JWT
//! sessions of two merchants, token expiry and refresh, `/user/` push across
//! two gateway processes.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use lapin::BasicProperties;
use stompgate::config::JwtConfig;
use stompgate::stomp::{Command, Frame};

const SECRET: &str = "auth-test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn token(claims: serde_json::Value) -> String {
    jwt_hs256(SECRET, claims)
}

fn merchant_token(merchant: u32, ttl: u64) -> String {
    token(serde_json::json!({
        "sub": format!("merchant-{merchant}"),
        "merchant_id": merchant,
        "exp": now() + ttl,
    }))
}

/// A gateway that requires a JWT and allows each merchant its own topic.
async fn merchant_gateway(prefix: &str) -> TestGateway {
    let pattern = format!("/topic/{prefix}.merchant.{{claims.merchant_id}}.orders");
    start_gateway(move |c| {
        c.auth.anonymous = false;
        c.auth.jwt = Some(JwtConfig {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        });
        c.auth.rules = vec![rule(&["subscribe", "send"], &pattern, &[])];
    })
    .await
}

async fn connect_with_token(url: &str, token: &str) -> StompClient {
    let mut client = StompClient::open(url, &["v12.stomp"]).await;
    client
        .connect_with(
            Frame::new(Command::Connect)
                .with_header("accept-version", "1.2")
                .with_header("heart-beat", "0,0")
                .with_header("passcode", token),
        )
        .await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_cannot_reach_another_merchants_orders() {
    let prefix = unique("shop");
    let gw = merchant_gateway(&prefix).await;
    let own = |m: u32| format!("/topic/{prefix}.merchant.{m}.orders");

    let mut b = connect_with_token(&gw.ws_url(), &merchant_token(2, 600)).await;
    b.subscribe("orders", &own(2), &[]).await;

    // A may subscribe to its own orders...
    let mut a = connect_with_token(&gw.ws_url(), &merchant_token(1, 600)).await;
    a.subscribe("orders", &own(1), &[]).await;
    // ...but not to B's: ERROR, and the session ends.
    let mut spy = connect_with_token(&gw.ws_url(), &merchant_token(1, 600)).await;
    spy.send(
        &Frame::new(Command::Subscribe)
            .with_header("id", "x")
            .with_header("destination", &own(2)),
    )
    .await;
    spy.expect_error("access_refused").await;
    // Nor send there.
    let mut forger = connect_with_token(&gw.ws_url(), &merchant_token(1, 600)).await;
    forger
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", &own(2))
                .with_header("receipt", "r")
                .with_body("fake order"),
        )
        .await;
    let error = forger.expect_error("access_refused").await;
    assert_eq!(error.header("receipt-id").as_deref(), Some("r"));
    assert_eq!(
        b.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout,
        "nothing delivered to B"
    );

    // The backend's orders reach their merchant only.
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let key = |m: u32| format!("{prefix}.merchant.{m}.orders");
    publish(
        &ch,
        "amq.topic",
        &key(2),
        b"order for B",
        BasicProperties::default(),
    )
    .await;
    publish(
        &ch,
        "amq.topic",
        &key(1),
        b"order for A",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(&b.expect(Command::Message).await.body[..], b"order for B");
    assert_eq!(&a.expect(Command::Message).await.body[..], b"order for A");
    assert_eq!(
        a.recv_within(Duration::from_millis(300)).await,
        Recv::Timeout
    );
    assert_eq!(
        b.recv_within(Duration::from_millis(300)).await,
        Recv::Timeout
    );
    a.disconnect().await;
    b.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_and_checked() {
    let gw = start_gateway(|c| {
        c.auth.anonymous = false;
        c.auth.jwt = Some(JwtConfig {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        });
        c.auth.users = vec![stompgate::config::UserConfig {
            login: "ops".into(),
            passcode: "s3cret".into(),
        }];
    })
    .await;
    let attempt = |headers: Vec<(&'static str, String)>| {
        let url = gw.ws_url();
        async move {
            let mut c = StompClient::open(&url, &[]).await;
            let mut frame = Frame::new(Command::Connect).with_header("accept-version", "1.2");
            for (n, v) in &headers {
                frame.push_header(n, v);
            }
            c.send(&frame).await;
            c
        }
    };
    attempt(vec![])
        .await
        .expect_error("authentication required")
        .await;
    attempt(vec![("login", "ops".into()), ("passcode", "wrong".into())])
        .await
        .expect_error("bad login or passcode")
        .await;
    let expired = merchant_token(1, 0);
    let expired = {
        // exp in the past
        let _ = expired;
        token(serde_json::json!({"sub": "m", "exp": now() - 60}))
    };
    attempt(vec![("passcode", expired)])
        .await
        .expect_error("token expired")
        .await;
    let mut ok = attempt(vec![("login", "ops".into()), ("passcode", "s3cret".into())]).await;
    ok.expect(Command::Connected).await;
    ok.disconnect().await;

    // A token in the handshake (header or query) instead of the passcode.
    let t = merchant_token(5, 600);
    let mut by_query = StompClient::open(&format!("{}?access_token={t}", gw.ws_url()), &[]).await;
    by_query
        .connect_with(Frame::new(Command::Connect).with_header("accept-version", "1.2"))
        .await;
    by_query.subscribe("u", "/user/queue/inbox", &[]).await;
    by_query.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_the_session_unless_refreshed() {
    let prefix = unique("exp");
    let gw = merchant_gateway(&prefix).await;
    let own = format!("/topic/{prefix}.merchant.3.orders");

    let mut expiring = connect_with_token(&gw.ws_url(), &merchant_token(3, 2)).await;
    expiring.subscribe("o", &own, &[]).await;
    let mut refreshed = connect_with_token(&gw.ws_url(), &merchant_token(3, 2)).await;
    refreshed.subscribe("o", &own, &[]).await;
    refreshed
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", "/stompgate/token")
                .with_header("receipt", "refresh")
                .with_body(merchant_token(3, 600)),
        )
        .await;
    refreshed.expect(Command::Receipt).await;
    // Another merchant's token is no refresh.
    let mut thief = connect_with_token(&gw.ws_url(), &merchant_token(3, 600)).await;
    thief
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", "/stompgate/token")
                .with_body(merchant_token(4, 600)),
        )
        .await;
    thief.expect_error("token refresh refused").await;

    let error = expiring.expect(Command::Error).await;
    assert_eq!(
        error.header("message").as_deref(),
        Some("Credential expired")
    );
    expiring.expect_closed().await;

    // Well past the first token's expiry, the refreshed session still works.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(
        &ch,
        "amq.topic",
        &format!("{prefix}.merchant.3.orders"),
        b"still here",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        &refreshed.expect(Command::Message).await.body[..],
        b"still here"
    );
    refreshed.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_push_reaches_every_session_of_the_user_on_every_gateway_process() {
    let env = [
        ("STOMPGATE_AUTH__ANONYMOUS", "false"),
        ("STOMPGATE_AUTH__JWT__HS256_SECRET", SECRET),
    ];
    let gw1 = GatewayProcess::spawn(AMQP_URL, &env);
    let gw2 = GatewayProcess::spawn(AMQP_URL, &env);
    assert!(gw1.wait_ready(Duration::from_secs(15)).await);
    assert!(gw2.wait_ready(Duration::from_secs(15)).await);
    let user = unique("user.42");
    let other = unique("user.43");
    let t = |u: &str| token(serde_json::json!({"sub": u, "exp": now() + 600}));

    let mut tab1 = connect_with_token(&gw1.ws_url(), &t(&user)).await;
    let mut tab2 = connect_with_token(&gw2.ws_url(), &t(&user)).await;
    let mut stranger = connect_with_token(&gw1.ws_url(), &t(&other)).await;
    tab1.subscribe("n", "/user/queue/notifications", &[]).await;
    tab2.subscribe("n", "/user/queue/notifications", &[]).await;
    stranger
        .subscribe("n", "/user/queue/notifications", &[])
        .await;

    // The backend: one publish, to the user exchange, key <user>.<name>
    // with the user percent-encoded ('.' is %2E).
    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    let key = format!("{}.notifications", user.replace('.', "%2E"));
    publish(
        &ch,
        "stompgate.user",
        &key,
        b"login confirmed",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        &tab1.expect(Command::Message).await.body[..],
        b"login confirmed"
    );
    assert_eq!(
        &tab2.expect(Command::Message).await.body[..],
        b"login confirmed"
    );
    assert_eq!(
        stranger.recv_within(Duration::from_millis(500)).await,
        Recv::Timeout
    );

    // Sending to another user's queue needs a rule: none here.
    stranger
        .send(
            &Frame::new(Command::Send)
                .with_header(
                    "destination",
                    &format!("/user/{}/queue/notifications", user.replace('.', "%2E")),
                )
                .with_body("spoof"),
        )
        .await;
    stranger.expect_error("access_refused").await;
    assert_eq!(
        tab1.recv_within(Duration::from_millis(300)).await,
        Recv::Timeout
    );
    tab1.disconnect().await;
    tab2.disconnect().await;
}
