//! One STOMP-over-WebSocket client connection: TCP from a chosen loopback
//! source address (so that more than one address's worth of ephemeral ports
//! is available), the WebSocket handshake, CONNECT and SUBSCRIBE.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::wire::{self, FrameView, Split};

pub type Ws = WebSocketStream<TcpStream>;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub login: String,
    pub passcode: String,
    /// CONNECT's `host` header (RabbitMQ: the virtual host).
    pub vhost: String,
    /// Read buffer of each client WebSocket (small: there may be 15,000).
    pub read_buffer: usize,
}

impl Target {
    pub async fn resolve(
        url: &str,
        login: &str,
        passcode: &str,
        vhost: &str,
    ) -> Result<Target, String> {
        let request = url
            .into_client_request()
            .map_err(|e| format!("invalid URL {url}: {e}"))?;
        let uri = request.uri();
        let host = uri
            .host()
            .ok_or_else(|| format!("no host in {url}"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{host} resolves to nothing"))?;
        Ok(Target {
            url: url.to_owned(),
            addr,
            login: login.to_owned(),
            passcode: passcode.to_owned(),
            vhost: vhost.to_owned(),
            read_buffer: 8 * 1024,
        })
    }
}

/// A control frame, owned (setup and receipts, not the hot path).
#[derive(Debug, Clone)]
pub struct Control {
    pub command: String,
    pub receipt_id: Option<String>,
    pub description: String,
}

/// A STOMP session over a WebSocket, with a buffer for frames split across
/// WebSocket messages.
pub struct StompConn {
    pub ws: Ws,
    buf: Vec<u8>,
    pending: VecDeque<Control>,
}

/// Opens TCP from `local` (when the server is IPv4) and does the WebSocket
/// handshake, offering the STOMP subprotocols.
pub async fn open_ws(target: &Target, local: Ipv4Addr) -> Result<Ws, String> {
    let stream = if target.addr.is_ipv4() {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(local), 0))
            .map_err(|e| format!("bind {local}: {e}"))?;
        socket
            .connect(target.addr)
            .await
            .map_err(|e| format!("connect {} from {local}: {e}", target.addr))?
    } else {
        TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?
    };
    let _ = stream.set_nodelay(true);
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v12.stomp, v11.stomp, v10.stomp"
            .parse()
            .expect("static header value"),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(target.read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20));
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| format!("websocket handshake with {}: {e}", target.url))?;
    Ok(ws)
}

impl StompConn {
    /// Opens the WebSocket and does CONNECT/CONNECTED.
    pub async fn connect(
        target: &Target,
        local: Ipv4Addr,
        within: Duration,
    ) -> Result<StompConn, String> {
        let ws = open_ws(target, local).await?;
        let mut conn = StompConn {
            ws,
            buf: Vec::new(),
            pending: VecDeque::new(),
        };
        conn.send_text(wire::connect_frame(
            &target.login,
            &target.passcode,
            &target.vhost,
        ))
        .await?;
        let frame = conn.recv_control(within).await?;
        if frame.command != "CONNECTED" {
            return Err(format!("expected CONNECTED, got {}", frame.description));
        }
        Ok(conn)
    }

    /// SUBSCRIBE with a receipt, waiting for it.
    pub async fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        within: Duration,
    ) -> Result<(), String> {
        let receipt = format!("sub-{id}");
        self.send_text(wire::subscribe_frame(id, destination, &receipt))
            .await?;
        loop {
            let frame = self.recv_control(within).await?;
            match frame.command.as_str() {
                "RECEIPT" if frame.receipt_id.as_deref() == Some(receipt.as_str()) => return Ok(()),
                "RECEIPT" | "MESSAGE" => continue,
                _ => return Err(format!("SUBSCRIBE {destination}: {}", frame.description)),
            }
        }
    }

    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), String> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| format!("websocket send: {e}"))
    }

    /// Queues a frame without flushing.
    pub async fn feed_bytes(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        let message = match String::from_utf8(bytes) {
            Ok(text) => Message::Text(text.into()),
            Err(e) => Message::Binary(e.into_bytes().into()),
        };
        self.ws
            .feed(message)
            .await
            .map_err(|e| format!("websocket send: {e}"))
    }

    pub async fn flush(&mut self) -> Result<(), String> {
        self.ws
            .flush()
            .await
            .map_err(|e| format!("websocket flush: {e}"))
    }

    /// The next non-MESSAGE frame, within `within`.
    pub async fn recv_control(&mut self, within: Duration) -> Result<Control, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(frame);
            }
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(format!("no answer within {} ms", within.as_millis())),
                Ok(None) => return Err("connection closed".to_owned()),
                Ok(Some(Err(e))) => return Err(format!("websocket: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            let pending = &mut self.pending;
            let mut on_frame = |f: FrameView<'_>| {
                if !f.is("MESSAGE") {
                    pending.push_back(Control {
                        command: String::from_utf8_lossy(f.command).into_owned(),
                        receipt_id: f.header_str("receipt-id"),
                        description: f.describe_error(),
                    });
                }
            };
            match message {
                Message::Text(t) => feed(&mut self.buf, t.as_bytes(), &mut on_frame)?,
                Message::Binary(b) => feed(&mut self.buf, &b, &mut on_frame)?,
                Message::Close(c) => return Err(format!("closed by the server: {c:?}")),
                _ => {}
            }
        }
    }

    /// Feeds the bytes of one WebSocket message to `on_frame`, frame by frame.
    pub fn feed(
        &mut self,
        data: &[u8],
        on_frame: &mut impl FnMut(FrameView<'_>),
    ) -> Result<(), String> {
        feed(&mut self.buf, data, on_frame)
    }

    /// Best-effort DISCONNECT and close, bounded.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.send_text(wire::DISCONNECT).await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }
}

/// Splits `data` (appended to what `buf` holds from before) into frames.
/// Whole frames are read in place when nothing is buffered.
fn feed(
    buf: &mut Vec<u8>,
    data: &[u8],
    on_frame: &mut impl FnMut(FrameView<'_>),
) -> Result<(), String> {
    if buf.is_empty() {
        let used = consume(data, on_frame)?;
        if used < data.len() {
            buf.extend_from_slice(&data[used..]);
        }
    } else {
        buf.extend_from_slice(data);
        let used = consume(buf, on_frame)?;
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
    }
    Ok(())
}

fn consume(data: &[u8], on_frame: &mut impl FnMut(FrameView<'_>)) -> Result<usize, String> {
    let mut pos = 0;
    loop {
        match wire::split(&data[pos..]) {
            Split::Frame(frame, used) => {
                on_frame(frame);
                pos += used;
            }
            Split::Heartbeats(used) => pos += used,
            Split::Incomplete => return Ok(pos),
            Split::Invalid(why) => return Err(format!("server sent an invalid frame: {why}")),
        }
    }
}
