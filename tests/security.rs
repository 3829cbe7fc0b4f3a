//! The HTTP-side abuse limits and TLS: the Origin allow-list, the connection
//! limits (gateway-wide and per client address), the handshake timeout, TLS
//! (`wss://`), and `stompgate_rejected_total{reason}`.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (scripts/ensure-rabbitmq.sh).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lapin::BasicProperties;
use stompgate::stomp::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::Connector;

// ---- helpers -------------------------------------------------------------------

/// The handshake request for `url`, with `Origin: origin` when given.
fn request(url: &str, origin: Option<&str>) -> Request {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v12.stomp".parse().expect("header"),
    );
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header"));
    }
    request
}

/// Opens a WebSocket; `Ok` with a STOMP client, or `Err` with the HTTP
/// status and body of a refused handshake.
async fn open(url: &str, origin: Option<&str>) -> Result<StompClient, (u16, String)> {
    let result = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request(url, origin)),
    )
    .await
    .expect("handshake timed out");
    match result {
        Ok((ws, response)) => {
            assert_eq!(response.status().as_u16(), 101);
            Ok(StompClient::from_websocket(ws, &response))
        }
        Err(WsError::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                content_type.starts_with("text/plain"),
                "refusal content-type {content_type:?}"
            );
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("handshake failed otherwise: {e}"),
    }
}

/// `stompgate_rejected_total{reason="<reason>"}` in a /metrics text (0 if absent).
fn rejected(text: &str, reason: &str) -> f64 {
    let series = format!("stompgate_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Reads until the server closes the connection (EOF or reset), bounded
/// by `limit` from `opened`; returns how long after `opened` that was, or
/// `None` if it stayed open.
async fn closed_within(
    stream: &mut TcpStream,
    opened: Instant,
    limit: Duration,
) -> Option<Duration> {
    let started = opened;
    let mut buf = [0u8; 1024];
    loop {
        match timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {} // a response (e.g. 408) before the close is fine
        }
    }
}

// ---- Origin --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list() {
    let gw = start_gateway(|c| {
        c.security.allowed_origins = vec!["https://app.example".to_owned()];
    })
    .await;
    let before = rejected(&metrics_text(gw.addr).await, "origin");

    let refused = open(&gw.ws_url(), Some("https://evil.example")).await;
    assert_eq!(
        refused.err(),
        Some((403, "origin not allowed".to_owned())),
        "a foreign Origin is refused"
    );
    let refused = open(&gw.ws_url(), Some("null")).await;
    assert_eq!(refused.err().map(|(s, _)| s), Some(403));

    let mut allowed = open(&gw.ws_url(), Some("https://app.example"))
        .await
        .expect("the listed Origin is accepted");
    allowed.stomp_connect().await;

    let mut no_origin = open(&gw.ws_url(), None)
        .await
        .expect("no Origin (non-browser client) is accepted");
    no_origin.stomp_connect().await;

    let after = rejected(&metrics_text(gw.addr).await, "origin");
    assert!(
        after - before >= 2.0,
        "origin rejections {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_when_the_list_is_empty() {
    let gw = start_gateway(|_| {}).await;
    let mut client = open(&gw.ws_url(), Some("https://anywhere.example"))
        .await
        .expect("accepted");
    client.stomp_connect().await;
}

// ---- connection limits ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_wide_connection_limit() {
    let gw = start_gateway(|c| c.security.max_connections = 2).await;
    let before = rejected(&metrics_text(gw.addr).await, "max_connections");

    let (first, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    let (_second, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    assert_eq!(
        open(&gw.ws_url(), None).await.err(),
        Some((503, "too many connections".to_owned()))
    );
    // Plain HTTP is not counted.
    let text = metrics_text(gw.addr).await;
    let after = rejected(&text, "max_connections");
    assert!(after - before >= 1.0, "max_connections {before} -> {after}");

    first.disconnect().await;
    // The slot frees once the server side of the session ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut third = loop {
        match open(&gw.ws_url(), None).await {
            Ok(client) => break client,
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("no slot freed after a close: {other:?}"),
        }
    };
    third.stomp_connect().await;
    assert_eq!(gw.gateway.admitted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_connection_limit() {
    let gw = start_gateway(|c| c.security.max_connections_per_ip = 1).await;
    let before = rejected(&metrics_text(gw.addr).await, "per_ip");

    let (_first, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    assert_eq!(
        open(&gw.ws_url(), None).await.err(),
        Some((429, "too many connections from this address".to_owned()))
    );

    // Another address (all of 127.0.0.0/8 is loopback) has its own count.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let stream = timeout(Duration::from_secs(5), socket.connect(gw.addr))
        .await
        .expect("connect timed out")
        .expect("connect from 127.0.0.2");
    let (ws, response) = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(
            request(&gw.ws_url(), None),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        ),
    )
    .await
    .expect("handshake timed out")
    .expect("127.0.0.2 is admitted");
    assert_eq!(response.status().as_u16(), 101);
    let mut other = StompClient::from_websocket(ws, &response);
    other.stomp_connect().await;

    let after = rejected(&metrics_text(gw.addr).await, "per_ip");
    assert!(after - before >= 1.0, "per_ip {before} -> {after}");
}

// ---- handshake timeout ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_slow_clients() {
    let gw = start_gateway(|c| c.security.handshake_timeout_ms = 500).await;
    let before = rejected(&metrics_text(gw.addr).await, "handshake_timeout");

    let opened = Instant::now();
    // An unfinished request head.
    let mut partial = TcpStream::connect(gw.addr).await.expect("connect");
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Nothing at all.
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");

    for (what, stream) in [("partial head", &mut partial), ("silent", &mut silent)] {
        let took = closed_within(stream, opened, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("{what}: not closed within 3 s"));
        assert!(
            took >= Duration::from_millis(300) && took <= Duration::from_secs(2),
            "{what}: closed after {took:?}"
        );
    }

    let after = rejected(&metrics_text(gw.addr).await, "handshake_timeout");
    assert!(
        after - before >= 2.0,
        "handshake_timeout {before} -> {after}"
    );

    // A WebSocket session outlives the handshake timeout.
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .subscribe("s", &format!("/topic/{}", unique("slow")), &[])
        .await;
    client.disconnect().await;
}

// ---- TLS -----------------------------------------------------------------------

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM
/// files into a fresh directory: (cert file, key file, DER certificate).
fn self_signed() -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed certificate");
    let dir = std::env::temp_dir().join(unique("stompgate-tls"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, signing_key.serialize_pem()).expect("write key");
    (cert_file, key_file, cert.der().to_vec())
}

fn client_tls(cert_der: Vec<u8>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der))
        .expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end() {
    let (cert_file, key_file, cert_der) = self_signed();
    let gw = start_gateway(|c| {
        c.tls.cert_file = Some(cert_file.clone());
        c.tls.key_file = Some(key_file.clone());
        c.security.handshake_timeout_ms = 2_000;
    })
    .await;
    assert!(gw.gateway.tls_enabled());
    let metrics = stompgate::metrics::install().expect("recorder");
    let tls_before = rejected(&metrics.render(), "tls");

    let url = format!("wss://localhost:{}/ws", gw.addr.port());
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (ws, response) = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async_tls_with_config(
            request(&url, None),
            stream,
            None,
            Some(Connector::Rustls(client_tls(cert_der))),
        ),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("wss:// handshake");
    assert_eq!(response.status().as_u16(), 101);
    let mut client = StompClient::from_websocket(ws, &response);
    client.stomp_connect().await;
    let topic = unique("tls-topic");
    client.subscribe("t", &format!("/topic/{topic}"), &[]).await;

    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(
        &ch,
        "amq.topic",
        &topic,
        b"over tls",
        BasicProperties::default(),
    )
    .await;
    let message = client.expect(Command::Message).await;
    assert_eq!(message.header("subscription").as_deref(), Some("t"));
    assert_eq!(&message.body[..], b"over tls");
    let _ = conn.close(200, "bye".into()).await;

    // Plain ws:// to the TLS port fails.
    let plain = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request(&gw.ws_url(), None)),
    )
    .await
    .expect("plain handshake neither failed nor succeeded within 5 s");
    assert!(plain.is_err(), "plain ws:// must not work on a TLS port");
    // The rejection is counted once the server saw the bad handshake.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rejected(&metrics.render(), "tls") <= tls_before {
        assert!(Instant::now() < deadline, "tls rejection not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A client that never starts the TLS handshake is closed after the
    // handshake timeout.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    let took = closed_within(&mut silent, opened, Duration::from_secs(5))
        .await
        .expect("silent TLS client not closed within 5 s");
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    let _ = std::fs::remove_dir_all(cert_file.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_fail_at_startup() {
    let (cert_file, key_file, _) = self_signed();
    let dir = cert_file.parent().expect("dir").to_owned();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").expect("write");
    let missing = dir.join("missing.pem");
    // Another certificate's key.
    let (other_cert, other_key, _) = self_signed();

    let start = |cert: &std::path::Path, key: &std::path::Path| {
        let mut config = stompgate::config::Config::default();
        config.amqp.url = AMQP_URL.to_owned();
        config.auth.anonymous = true;
        config.tls.cert_file = Some(cert.to_owned());
        config.tls.key_file = Some(key.to_owned());
        stompgate::server::Gateway::start(config)
            .err()
            .map(|e| e.to_string())
    };
    let cases = [
        (&missing, &key_file, "tls.cert_file"),
        (&garbage, &key_file, "tls.cert_file"),
        (&cert_file, &missing, "tls.key_file"),
        (&cert_file, &garbage, "tls.key_file"),
        // A certificate where the key should be.
        (&cert_file, &cert_file, "tls.key_file"),
        (&cert_file, &other_key, "do not make a server identity"),
    ];
    for (cert, key, needle) in cases {
        let error = start(cert, key).unwrap_or_else(|| {
            panic!("cert {} key {} was accepted", cert.display(), key.display())
        });
        assert!(error.contains(needle), "error {error:?} names {needle}");
    }
    // The files themselves are fine.
    assert!(start(&cert_file, &key_file).is_none());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(other_cert.parent().expect("dir"));
}
