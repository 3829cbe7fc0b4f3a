//! Shared test harness: an in-process gateway on an ephemeral port, a raw
//! STOMP-over-WebSocket client built on our own codec, and AMQP helpers that
//! talk to the real RabbitMQ on 127.0.0.1:5672.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use stompgate::config::Config;
use stompgate::server::Gateway;
use stompgate::stomp::{encode_frame, Command, Escaping, Frame, FrameLimits, Inbound, StompCodec};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::Decoder;

pub const AMQP_URL: &str = "amqp://127.0.0.1:5672/%2f";

/// A gateway running inside the test process.
pub struct TestGateway {
    pub addr: std::net::SocketAddr,
    pub gateway: Arc<Gateway>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl TestGateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// Starts a gateway with the default configuration (anonymous access on)
/// changed by `tweak`, and waits (bounded) until its AMQP connections are up.
pub async fn start_gateway(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let gw = start_gateway_unready(tweak).await;
    assert!(
        gw.gateway
            .bridge
            .pool
            .wait_ready(Duration::from_secs(15))
            .await,
        "gateway did not connect to RabbitMQ on 127.0.0.1:5672 (run scripts/ensure-rabbitmq.sh)"
    );
    gw
}

/// As [`start_gateway`], without waiting for the broker (for gateways
/// pointed at a broker that is not there).
pub async fn start_gateway_unready(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let mut config = Config::default();
    config.amqp.url = AMQP_URL.to_owned();
    config.auth.anonymous = true;
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gateway = Gateway::start(config).expect("gateway configuration");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(stompgate::server::serve_gateway(
        listener,
        Arc::clone(&gateway),
        async move {
            let _ = rx.await;
        },
    ));
    TestGateway {
        addr,
        gateway,
        _shutdown: tx,
    }
}

/// A unique name for queues, topics and exchanges of one test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// What a client saw instead of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    Frame(Frame),
    Closed,
    Timeout,
}

/// A STOMP client speaking over a real WebSocket.
pub struct StompClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    codec: StompCodec,
    buf: BytesMut,
    pub escaping: Escaping,
    /// Number of WebSocket messages received, by kind.
    pub text_messages: usize,
    pub binary_messages: usize,
    pub protocol: Option<String>,
}

impl StompClient {
    /// Opens the WebSocket, offering `protocols` (none when empty).
    pub async fn open(url: &str, protocols: &[&str]) -> StompClient {
        let mut request = url.into_client_request().expect("request");
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                protocols.join(", ").parse().expect("header"),
            );
        }
        // No message or frame size limit of its own: the gateway's are tested.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (ws, response) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async_with_config(request, Some(config), false),
        )
        .await
        .expect("handshake timed out")
        .expect("handshake");
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        StompClient {
            ws,
            codec: StompCodec::new(FrameLimits {
                max_frame_bytes: 64 * 1024 * 1024,
                max_headers: 1000,
                max_header_line: 1024 * 1024,
            }),
            buf: BytesMut::new(),
            escaping: Escaping::V12,
            text_messages: 0,
            binary_messages: 0,
            protocol,
        }
    }

    /// Opens and sends CONNECT for `accept_version` (e.g. "1.2"), returning CONNECTED.
    pub async fn connect(url: &str, accept_version: &str) -> (StompClient, Frame) {
        let mut client = StompClient::open(url, &["v12.stomp", "v11.stomp", "v10.stomp"]).await;
        let frame = client
            .connect_with(
                Frame::new(Command::Connect)
                    .with_header("accept-version", accept_version)
                    .with_header("host", "/")
                    .with_header("heart-beat", "0,0"),
            )
            .await;
        (client, frame)
    }

    /// Sends a CONNECT frame and expects CONNECTED.
    pub async fn connect_with(&mut self, frame: Frame) -> Frame {
        self.send(&frame).await;
        let connected = self.expect(Command::Connected).await;
        self.escaping = match connected.header("version").as_deref() {
            Some("1.0") | None => Escaping::None,
            Some("1.1") => Escaping::V11,
            _ => Escaping::V12,
        };
        self.codec.set_escaping(self.escaping);
        connected
    }

    pub async fn send(&mut self, frame: &Frame) {
        let mut buf = BytesMut::new();
        encode_frame(frame, self.escaping, &mut buf);
        self.send_bytes(buf.freeze(), false).await;
    }

    /// Sends raw bytes in one WebSocket message (text unless `binary`).
    pub async fn send_bytes(&mut self, bytes: impl Into<Bytes>, binary: bool) {
        let bytes = bytes.into();
        let message = if binary {
            Message::Binary(bytes)
        } else {
            Message::Text(
                String::from_utf8(bytes.to_vec())
                    .expect("text frames must be UTF-8")
                    .into(),
            )
        };
        self.ws.send(message).await.expect("ws send");
    }

    /// The next frame, skipping heart-beats; bounded by `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Inbound::Frame(frame))) => return Recv::Frame(frame),
                Ok(Some(Inbound::Heartbeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("client could not decode server output: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Recv::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Recv::Closed,
                Ok(Some(Ok(message))) => match message {
                    Message::Text(t) => {
                        self.text_messages += 1;
                        self.buf.extend_from_slice(t.as_bytes());
                    }
                    Message::Binary(b) => {
                        self.binary_messages += 1;
                        self.buf.extend_from_slice(&b);
                    }
                    Message::Close(_) => return Recv::Closed,
                    _ => {}
                },
            }
        }
    }

    /// The next frame within 10 s; panics otherwise.
    pub async fn recv(&mut self) -> Frame {
        match self.recv_within(Duration::from_secs(10)).await {
            Recv::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame, which must be `command`.
    pub async fn expect(&mut self, command: Command) -> Frame {
        let frame = self.recv().await;
        assert_eq!(
            frame.command,
            command,
            "expected {command}, got {} {:?} body {:?}",
            frame.command,
            frame.headers().collect::<Vec<_>>(),
            String::from_utf8_lossy(&frame.body)
        );
        frame
    }

    /// Expects an ERROR whose `message` header or body (RabbitMQ's short
    /// message, then the details) contains `needle`, then the close.
    pub async fn expect_error(&mut self, needle: &str) -> Frame {
        let frame = self.expect(Command::Error).await;
        let message = format!(
            "{}\n{}",
            frame.header("message").unwrap_or_default(),
            String::from_utf8_lossy(&frame.body)
        );
        assert!(
            message.contains(needle),
            "ERROR {message:?} does not contain {needle:?}"
        );
        self.expect_closed().await;
        frame
    }

    /// Expects the server to close the connection within 10 s.
    pub async fn expect_closed(&mut self) {
        match self.recv_within(Duration::from_secs(10)).await {
            Recv::Closed => {}
            Recv::Timeout => panic!("connection was not closed"),
            Recv::Frame(f) => panic!("expected close, got {} frame", f.command),
        }
    }

    /// SUBSCRIBE with a receipt, waiting for it.
    pub async fn subscribe(&mut self, id: &str, destination: &str, extra: &[(&str, &str)]) {
        let mut frame = Frame::new(Command::Subscribe)
            .with_header("id", id)
            .with_header("destination", destination)
            .with_header("receipt", &format!("sub-{id}"));
        for (n, v) in extra {
            frame.push_header(n, v);
        }
        self.send(&frame).await;
        let receipt = self.expect(Command::Receipt).await;
        assert_eq!(
            receipt.header("receipt-id").as_deref(),
            Some(format!("sub-{id}").as_str())
        );
    }

    pub async fn disconnect(mut self) {
        self.send(&Frame::new(Command::Disconnect).with_header("receipt", "bye"))
            .await;
        let receipt = self.expect(Command::Receipt).await;
        assert_eq!(receipt.header("receipt-id").as_deref(), Some("bye"));
        self.expect_closed().await;
    }
}

/// An AMQP connection to the test broker.
pub async fn amqp() -> Connection {
    Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ on 127.0.0.1:5672")
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm");
    ch
}

/// Publishes and waits for the broker's confirm.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

/// `rabbitmqctl list_queues name consumers`, as (name, consumers).
pub fn list_queues() -> Vec<(String, u64)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "consumers",
        ])
        .output()
        .expect("rabbitmqctl (install rabbitmq-server: scripts/ensure-rabbitmq.sh)");
    assert!(out.status.success(), "rabbitmqctl failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?.to_owned();
            let consumers = parts.next()?.parse().ok()?;
            Some((name, consumers))
        })
        .collect()
}

/// A gateway process, killed when dropped.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl GatewayProcess {
    /// Spawns the `stompgate` binary on a free port with `amqp_url` and
    /// extra environment (anonymous access is on unless `env` says otherwise).
    pub fn spawn(amqp_url: &str, env: &[(&str, &str)]) -> GatewayProcess {
        let port = free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stompgate"));
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--amqp-url",
            amqp_url,
        ])
        .env("RUST_LOG", "warn")
        .env("STOMPGATE_AUTH__ANONYMOUS", "true")
        .stdin(std::process::Stdio::null());
        // The gateway's own log only when asked for: STOMPGATE_TEST_LOG=1.
        if std::env::var_os("STOMPGATE_TEST_LOG").is_none() {
            cmd.stderr(std::process::Stdio::null());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn stompgate");
        GatewayProcess { child, port }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if http_status(self.port, "/readyz").await == Some(200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Status code of `GET path`, or `None` when nothing answers.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `rabbitmqctl list_bindings` as (source exchange, routing key, destination).
pub fn list_bindings() -> Vec<(String, String, String)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "routing_key",
            "destination_name",
        ])
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split('\t').collect();
            (parts.len() == 3).then(|| {
                (
                    parts[0].to_owned(),
                    parts[1].to_owned(),
                    parts[2].to_owned(),
                )
            })
        })
        .collect()
}

/// Queues bound to `exchange` with `key`.
pub fn queues_bound(exchange: &str, key: &str) -> Vec<String> {
    list_bindings()
        .into_iter()
        .filter(|(source, k, _)| source == exchange && k == key)
        .map(|(_, _, queue)| queue)
        .collect()
}

/// A private RabbitMQ node of the test's own (scripts/private-rabbitmq.sh),
/// on its own ports, stopped when dropped; the machine's broker is never
/// touched.
pub struct PrivateNode {
    pub name: String,
    pub amqp_port: u16,
    pub pid: u32,
}

impl PrivateNode {
    /// Starts node `name` with AMQP on `amqp_port` (its other listeners on
    /// ports derived from it), waiting until it answers.
    pub fn start(name: &str, amqp_port: u16) -> PrivateNode {
        PrivateNode::start_with_plugins(name, amqp_port, "rabbitmq_stomp,rabbitmq_web_stomp")
    }

    /// As [`PrivateNode::start`] with `plugins` (comma-separated); with
    /// `rabbitmq_management`, its API is on [`PrivateNode::management_port`].
    pub fn start_with_plugins(name: &str, amqp_port: u16, plugins: &str) -> PrivateNode {
        let out = std::process::Command::new("bash")
            .args(["scripts/private-rabbitmq.sh", "start", name])
            .env("PRIVATE_RABBIT_PLUGINS", plugins)
            .env(
                "PRIVATE_RABBIT_MANAGEMENT_PORT",
                (amqp_port + 11_000).to_string(),
            )
            .env("PRIVATE_RABBIT_AMQP_PORT", amqp_port.to_string())
            .env(
                "PRIVATE_RABBIT_WEB_STOMP_PORT",
                (amqp_port + 10_000).to_string(),
            )
            .env("PRIVATE_RABBIT_DIST_PORT", (amqp_port + 20_000).to_string())
            .env(
                "PRIVATE_RABBIT_STOMP_PORT",
                (amqp_port + 56_000).to_string(),
            )
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run scripts/private-rabbitmq.sh");
        assert!(
            out.status.success(),
            "private broker {name} did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid = stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("pid=")?.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {stdout:?}"));
        PrivateNode {
            name: name.to_owned(),
            amqp_port,
            pid,
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The Web-STOMP endpoint (`ws://`), when the plugin is enabled.
    pub fn web_stomp_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.amqp_port + 10_000)
    }

    /// The management API's port, when the plugin is enabled.
    pub fn management_port(&self) -> u16 {
        self.amqp_port + 11_000
    }

    /// `rabbitmqctl -n <node> args...`, which must succeed.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-n", &format!("{}@localhost", self.name)])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("rabbitmqctl");
        assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args(["scripts/private-rabbitmq.sh", "stop", &self.name])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// A frame's body as text.
pub fn body(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.body).into_owned()
}

/// Deletes `queue` on the test broker (ignoring errors).
pub async fn delete_queue(queue: &str) {
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let _ = ch
        .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
}

/// Messages ready in `queue` (passive declare; the queue must exist).
pub async fn ready(queue: &str) -> u32 {
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}
