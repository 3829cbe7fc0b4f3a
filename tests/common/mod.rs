//! Shared test harness: an in-process gateway on an ephemeral port, a raw
//! STOMP-over-WebSocket client built on our own codec, and AMQP helpers that
//! talk to the real RabbitMQ on 127.0.0.1:5672.
#![allow(dead_code)]

pub mod process;
pub mod raw_ws;
pub mod sockjs_http;
pub mod sse_client;

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
    // SockJS forwarding: the replica's control queue too.
    if let Some(control) = &gw.gateway.host.forwarding {
        assert!(
            control.wait_ready(Duration::from_secs(15)).await,
            "the SockJS control queue did not come up"
        );
    }
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

/// The protocols [`StompClient::connect`] offers.
const STOMP_PROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// A STOMP 1.2 CONNECT without credentials or heart-beats.
fn connect_frame(accept_version: &str) -> Frame {
    Frame::new(Command::Connect)
        .with_header("accept-version", accept_version)
        .with_header("host", "/")
        .with_header("heart-beat", "0,0")
}

impl StompClient {
    /// Opens the WebSocket, offering `protocols` (none when empty).
    pub async fn open(url: &str, protocols: &[&str]) -> StompClient {
        StompClient::try_open(url, protocols, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`StompClient::open`], for tests in which connections are expected
    /// to fail: the handshake is bounded by `timeout`, a failure is a value.
    pub async fn try_open(
        url: &str,
        protocols: &[&str],
        timeout: Duration,
    ) -> Result<StompClient, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
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
            timeout,
            tokio_tungstenite::connect_async_with_config(request, Some(config), false),
        )
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
        Ok(StompClient::from_websocket(ws, &response))
    }

    /// A client over a WebSocket opened by the caller (TLS, a chosen local
    /// address, ...); `response` is the handshake's.
    pub fn from_websocket(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        response: &tokio_tungstenite::tungstenite::handshake::client::Response,
    ) -> StompClient {
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
        let mut client = StompClient::open(url, &STOMP_PROTOCOLS).await;
        let frame = client.connect_with(connect_frame(accept_version)).await;
        (client, frame)
    }

    /// As [`StompClient::connect`] for STOMP 1.2, with the handshake, the
    /// CONNECT and the wait for CONNECTED each bounded by `timeout`, and a
    /// failure returned rather than a panic.
    pub async fn try_connect(url: &str, timeout: Duration) -> Result<StompClient, String> {
        let mut client = StompClient::try_open(url, &STOMP_PROTOCOLS, timeout).await?;
        client.try_send(&connect_frame("1.2"), timeout).await?;
        match client.recv_within(timeout).await {
            Recv::Frame(f) if f.command == Command::Connected => {
                client.set_version(&f);
                Ok(client)
            }
            Recv::Frame(f) => Err(format!(
                "expected CONNECTED, got {} {:?}",
                f.command,
                f.header("message")
            )),
            other => Err(format!("expected CONNECTED, got {other:?}")),
        }
    }

    /// Sends a STOMP 1.2 CONNECT (no credentials, no heart-beats) on an
    /// open WebSocket and expects CONNECTED.
    pub async fn stomp_connect(&mut self) -> Frame {
        self.connect_with(connect_frame("1.2")).await
    }

    /// Sends a CONNECT frame and expects CONNECTED.
    pub async fn connect_with(&mut self, frame: Frame) -> Frame {
        self.send(&frame).await;
        let connected = self.expect(Command::Connected).await;
        self.set_version(&connected);
        connected
    }

    /// Escapes and decodes headers as the version `connected` names.
    fn set_version(&mut self, connected: &Frame) {
        self.escaping = match connected.header("version").as_deref() {
            Some("1.0") | None => Escaping::None,
            Some("1.1") => Escaping::V11,
            _ => Escaping::V12,
        };
        self.codec.set_escaping(self.escaping);
    }

    pub async fn send(&mut self, frame: &Frame) {
        let mut buf = BytesMut::new();
        encode_frame(frame, self.escaping, &mut buf);
        self.send_bytes(buf.freeze(), false).await;
    }

    /// Sends `frame` (text), bounded by `timeout`; a failure is a value.
    pub async fn try_send(&mut self, frame: &Frame, timeout: Duration) -> Result<(), String> {
        let mut buf = BytesMut::new();
        encode_frame(frame, self.escaping, &mut buf);
        let text = String::from_utf8(buf.to_vec()).map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, self.ws.send(Message::Text(text.into())))
            .await
            .map_err(|_| "send timed out".to_owned())?
            .map_err(|e| format!("send: {e}"))
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
        self.send(&subscribe_frame(id, destination, extra)).await;
        let receipt = self.expect(Command::Receipt).await;
        assert_eq!(
            receipt.header("receipt-id").as_deref(),
            Some(format!("sub-{id}").as_str())
        );
    }

    /// As [`StompClient::subscribe`], with each wait bounded by `timeout` and
    /// a failure returned; MESSAGE frames that arrive before the receipt
    /// are returned for the caller to handle.
    pub async fn try_subscribe(
        &mut self,
        id: &str,
        destination: &str,
        extra: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Vec<Frame>, String> {
        self.try_send(&subscribe_frame(id, destination, extra), timeout)
            .await?;
        let mut early = Vec::new();
        loop {
            match self.recv_within(timeout).await {
                Recv::Frame(f) if f.command == Command::Receipt => return Ok(early),
                Recv::Frame(f) if f.command == Command::Message => early.push(f),
                Recv::Frame(f) => {
                    return Err(format!(
                        "SUBSCRIBE answered with {} {:?}",
                        f.command,
                        f.header("message")
                    ))
                }
                other => return Err(format!("SUBSCRIBE answered with {other:?}")),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(&Frame::new(Command::Disconnect).with_header("receipt", "bye"))
            .await;
        let receipt = self.expect(Command::Receipt).await;
        assert_eq!(receipt.header("receipt-id").as_deref(), Some("bye"));
        self.expect_closed().await;
    }
}

/// SUBSCRIBE `id` to `destination` with receipt `sub-<id>` and `extra` headers.
fn subscribe_frame(id: &str, destination: &str, extra: &[(&str, &str)]) -> Frame {
    let mut frame = Frame::new(Command::Subscribe)
        .with_header("id", id)
        .with_header("destination", destination)
        .with_header("receipt", &format!("sub-{id}"));
    for (n, v) in extra {
        frame.push_header(n, v);
    }
    frame
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

/// An AMQP consumer on `queue` (tag `tag`, empty for a broker-named one)
/// that acknowledges nothing: `no_ack`, as a backend that only reads.
pub async fn consume_no_ack(ch: &Channel, queue: &str, tag: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        lapin::options::BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("consume")
}

/// `rabbitmqctl <what> -q --no-table-headers <columns>` on the test broker,
/// which must succeed: one row a line, the columns split at tabs (a
/// column may be empty, e.g. the default exchange's name).
pub fn rabbitmqctl_list(what: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([what, "-q", "--no-table-headers"])
        .args(columns)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("rabbitmqctl (install rabbitmq-server: scripts/ensure-rabbitmq.sh)");
    assert!(out.status.success(), "rabbitmqctl {what} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect::<Vec<_>>())
        .filter(|row| row.len() == columns.len())
        .collect()
}

/// `rabbitmqctl list_queues name consumers`, as (name, consumers).
pub fn list_queues() -> Vec<(String, u64)> {
    rabbitmqctl_list("list_queues", &["name", "consumers"])
        .into_iter()
        .filter_map(|row| Some((row[0].clone(), row[1].trim().parse().ok()?)))
        .collect()
}

/// One numeric column of `rabbitmqctl list_queues` (`consumers`,
/// `messages`, ...) for `queue`; `None` when the queue is not listed.
pub fn queue_stat(queue: &str, column: &str) -> Option<u64> {
    rabbitmqctl_list("list_queues", &["name", column])
        .into_iter()
        .find(|row| row[0] == queue)
        .and_then(|row| row[1].trim().parse().ok())
}

/// Deletes a queue when dropped (with `rabbitmqctl`, so that it also runs
/// when the test panics, outside any runtime).
pub struct QueueCleanup(pub String);

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_queue", "-q", &self.0])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Declares `queue` durable, as `/queue/<name>` does, so that it exists
/// before the first subscriber.
pub async fn declare_durable_queue(queue: &str) {
    let options = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(queue, options, "declare queue").await;
}

/// `queue.declare` with `options` on a connection of its own; `what` says
/// what failed.
async fn declare_queue(
    queue: &str,
    options: lapin::options::QueueDeclareOptions,
    what: &str,
) -> lapin::Queue {
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let declared = ch
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .expect(what);
    let _ = conn.close(200, "done".into()).await;
    declared
}

/// Sends SIGKILL to process `pid`, which must exist.
pub fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {pid}");
}

/// Waits (bounded by `timeout`) until process `pid` is gone.
pub fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} still there after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An HTTP response: status, head (status line and headers) and body
/// (de-chunked).
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One `GET path` over a fresh HTTP/1.1 connection (`Connection: close`),
/// bounded by `timeout`; what went wrong otherwise.
pub async fn try_http_get(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {path}: no response within {timeout:?}"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: incomplete response {text:?}"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        status,
        head: head.to_owned(),
        body,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// `GET path` within 10 s, which must answer: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = try_http_get(addr, path, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (response.status, response.body)
}

/// Status code of `GET path` on 127.0.0.1:`port`, or `None` when nothing
/// answers within 2 s.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    try_http_get(addr, path, Duration::from_secs(2))
        .await
        .ok()
        .map(|r| r.status)
}

/// The text of `GET /metrics`, which must answer 200.
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics on {addr}: {text}");
    text
}

/// The value of one series (e.g. `stompgate_connections` or
/// `stompgate_messages_delivered_total{kind="queue"}`) in /metrics; 0 when
/// absent.
pub async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    metrics_text(addr)
        .await
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| name.trim() == series)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `rabbitmqctl list_bindings` as (source exchange, routing key, destination).
pub fn list_bindings() -> Vec<(String, String, String)> {
    // The management API answers in milliseconds; `rabbitmqctl` boots an
    // Erlang VM per call (a second or more on a loaded machine), too slow
    // for bindings that live about a second (a SockJS session's
    // disconnect delay in tests/sockjs_forwarding.rs).
    if let Some(bindings) = management_bindings() {
        return bindings;
    }
    rabbitmqctl_list(
        "list_bindings",
        &["source_name", "routing_key", "destination_name"],
    )
    .into_iter()
    .map(|row| (row[0].clone(), row[1].clone(), row[2].clone()))
    .collect()
}

/// `GET /api/bindings/%2f` of the machine's broker (guest/guest on
/// 127.0.0.1:15672, enabled by scripts/ensure-rabbitmq.sh), if it answers.
fn management_bindings() -> Option<Vec<(String, String, String)>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 15672)),
        Duration::from_secs(2),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /api/bindings/%2f HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(body).ok()?;
    Some(
        rows.iter()
            .map(|b| {
                let field = |name: &str| b[name].as_str().unwrap_or_default().to_owned();
                (field("source"), field("routing_key"), field("destination"))
            })
            .collect(),
    )
}

/// The distinct queues bound to `exchange` with `key`, sorted.
pub fn queues_bound(exchange: &str, key: &str) -> Vec<String> {
    let mut queues: Vec<String> = list_bindings()
        .into_iter()
        .filter(|(source, k, _)| source == exchange && k == key)
        .map(|(_, _, queue)| queue)
        .collect();
    queues.sort();
    queues.dedup();
    queues
}

/// An HS256 JWT with `claims`, signed with `secret`.
pub fn jwt_hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// An authorization rule: `verbs` on `destination`, with the queue
/// arguments it allows.
pub fn rule(
    verbs: &[&str],
    destination: &str,
    queue_arguments: &[&str],
) -> stompgate::config::RuleConfig {
    stompgate::config::RuleConfig {
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        destination: destination.to_owned(),
        queue_arguments: queue_arguments.iter().map(|v| v.to_string()).collect(),
    }
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
        PrivateNode::start_with(name, amqp_port, &[])
    }

    /// As [`PrivateNode::start`] with `plugins` (comma-separated); with
    /// `rabbitmq_management`, its API is on [`PrivateNode::management_port`].
    pub fn start_with_plugins(name: &str, amqp_port: u16, plugins: &str) -> PrivateNode {
        PrivateNode::start_with(name, amqp_port, &[("PRIVATE_RABBIT_PLUGINS", plugins)])
    }

    /// As [`PrivateNode::start`], with more of the script's settings in
    /// `env` (they win over the derived ports and the default plugins:
    /// `PRIVATE_RABBIT_TLS_DIR`, `PRIVATE_RABBIT_NO_STOMP`,
    /// `PRIVATE_RABBIT_PLUGINS`, ...). A node of that name left by an
    /// interrupted run is stopped first.
    pub fn start_with(name: &str, amqp_port: u16, env: &[(&str, &str)]) -> PrivateNode {
        let _ = std::process::Command::new("bash")
            .args(["scripts/private-rabbitmq.sh", "stop", name])
            .stdin(std::process::Stdio::null())
            .output();
        let out = std::process::Command::new("bash")
            .args(["scripts/private-rabbitmq.sh", "start", name])
            .env(
                "PRIVATE_RABBIT_PLUGINS",
                "rabbitmq_stomp,rabbitmq_web_stomp",
            )
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
            .envs(env.iter().copied())
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
/// A SEND of `body` to `destination`.
pub fn send_frame(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", destination)
        .with_body(body.to_owned())
}

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
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    declare_queue(queue, options, "queue exists")
        .await
        .message_count()
}

/// A session subscribed to `/topic/<prefix>.<session>.<i>` for every `i`
/// below `per_session` (ids `s<i>`; the last SUBSCRIBE asks for a receipt,
/// which is awaited): many topics, as in the rebinding tests.
pub async fn subscribed_to_numbered_topics(
    url: &str,
    prefix: &str,
    session: usize,
    per_session: usize,
) -> StompClient {
    let (mut client, _) = StompClient::connect(url, "1.2").await;
    for i in 0..per_session {
        let mut frame = Frame::new(Command::Subscribe)
            .with_header("id", &format!("s{i}"))
            .with_header("destination", &format!("/topic/{prefix}.{session}.{i}"));
        if i + 1 == per_session {
            frame.push_header("receipt", "all");
        }
        client.send(&frame).await;
    }
    client.expect(Command::Receipt).await;
    client
}
