//! STOMP over WebSocket: a thin adapter between one socket and the
//! session driver ([`super::driver`]).
//!
//! Two tasks per connection. The reader turns WebSocket messages into the
//! driver's [`Incoming`] chunks (a frame may span messages and a message
//! may hold several frames: the driver's codec buffers across them) and
//! runs the driver. The writer drains the client's bounded outbound queue,
//! joining whatever is already queued into one flush ([`Coalescer`]), and
//! sends heart-beats (or, with none negotiated, WebSocket pings) when it
//! has written nothing for the interval.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};

use super::coalesce::{Chunk, Coalescer};
use super::driver::{self, Context, Incoming, Options, Outcome};
use super::host::{handshake_token, origin_allowed, refuse, AdmitError, Host};
use super::outbound::{ClientLink, Outbound};
use crate::bridge::BrokerSession;
use crate::metrics::RejectReason;

/// The protocols offered in the WebSocket handshake.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// What the HTTP handshake told about a connection.
#[derive(Debug, Default, Clone)]
pub struct Handshake {
    /// A token from `Authorization: Bearer` or `?access_token=`.
    pub token: Option<String>,
    /// `security.ws_ping_interval_ms`: pings for clients without heart-beats.
    pub ping_every: Option<Duration>,
}

/// The WebSocket route (`ws_path`), over what the host lends.
pub fn router<S: Clone + Send + Sync + 'static>(host: &Arc<Host>) -> Router<S> {
    Router::new()
        .route(&host.config.ws_path, get(upgrade))
        .with_state(Arc::clone(host))
}

/// The WebSocket handshake: refused while draining, for a foreign
/// `Origin`, or beyond the connection limits; otherwise upgraded and run
/// until it closes.
pub async fn upgrade(
    State(host): State<Arc<Host>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if host.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let metrics = crate::metrics::get();
    if !origin_allowed(&host.config.security.allowed_origins, &headers) {
        metrics.rejected(RejectReason::Origin);
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let admission = match host.admit(peer.ip()) {
        Ok(admission) => admission,
        Err(AdmitError::MaxConnections) => {
            metrics.rejected(RejectReason::MaxConnections);
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
        }
        Err(AdmitError::PerIp) => {
            metrics.rejected(RejectReason::PerIp);
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            );
        }
    };
    let handshake = Handshake {
        token: handshake_token(&headers, &uri),
        ping_every: host.config.security.ws_ping_interval(),
    };
    let limits = &host.config.limits;
    // The codec enforces STOMP's limits; the WebSocket layer only needs to
    // bound one message (a frame may span several, and one may hold several).
    let max_message = limits.max_frame_bytes + 64 * 1024;
    ws.protocols(SUBPROTOCOLS)
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            // The socket is split and its writer started right here, so
            // that the session's future does not keep a slot for it.
            let (link, writer, input) = start(socket, &host.driver.limits, handshake.ping_every);
            let options = Options {
                token: handshake.token,
                keepalive: handshake.ping_every,
            };
            async move {
                // Admitted until the session ends (or the upgrade fails,
                // which drops this closure unrun).
                let _admission = admission;
                let _connection = host.track_connection();
                let broker = host.broker();
                let session = driver::run(&host.driver, broker, input, Arc::clone(&link), options);
                finish(session, link, writer).await;
            }
        })
}

/// What [`start`] makes of a socket: the client's queue, its writer task,
/// and the client's input for the driver.
type Started = (
    Arc<ClientLink>,
    AbortOnDrop,
    futures_util::stream::Map<
        futures_util::stream::SplitStream<WebSocket>,
        fn(Result<WsMessage, axum::Error>) -> Incoming,
    >,
);

/// Splits the socket, makes the client's queue and starts its writer.
fn start(
    socket: WebSocket,
    limits: &crate::config::Limits,
    ping_every: Option<Duration>,
) -> Started {
    let (sink, stream) = socket.split();
    let link = ClientLink::bounded(
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        limits.slow_client_policy,
    );
    let writer = AbortOnDrop(tokio::spawn(write_loop(
        sink,
        Arc::clone(&link),
        Duration::from_millis(limits.write_timeout_ms),
        ping_every,
    )));
    let input = stream.map(incoming as fn(_) -> _);
    (link, writer, input)
}

/// A WebSocket message as the driver's input.
fn incoming(message: Result<WsMessage, axum::Error>) -> Incoming {
    match message {
        Ok(WsMessage::Text(text)) => Incoming::Data(bytes::Bytes::from(text)),
        Ok(WsMessage::Binary(data)) => Incoming::Data(data),
        Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => Incoming::Alive,
        Ok(WsMessage::Close(_)) => Incoming::Closed,
        Err(error) => {
            tracing::debug!(%error, "websocket read failed");
            Incoming::Closed
        }
    }
}

/// Serves one upgraded WebSocket until it closes.
pub async fn run(
    socket: WebSocket,
    ctx: &Context,
    broker: impl BrokerSession,
    handshake: Handshake,
) {
    let (link, writer, input) = start(socket, &ctx.limits, handshake.ping_every);
    let options = Options {
        token: handshake.token,
        keepalive: handshake.ping_every,
    };
    let session = driver::run(ctx, broker, input, Arc::clone(&link), options);
    finish(session, link, writer).await;
}

/// Runs the session, then lets the writer flush and close.
async fn finish(
    session: impl std::future::Future<Output = Outcome>,
    link: Arc<ClientLink>,
    mut writer: AbortOnDrop,
) {
    let outcome = session.await;
    if outcome == Outcome::SlowClient {
        writer.0.abort();
        let _ = (&mut writer.0).await;
        return;
    }
    // Bounded: a full queue of a client that stopped reading must not hold
    // the session here.
    let _ = tokio::time::timeout(Duration::from_secs(1), link.send(Outbound::Close)).await;
    drop(link);
    // The writer never outlives its session: it gets a moment to flush
    // and close, then it is ended, and with it the socket.
    if tokio::time::timeout(Duration::from_secs(5), &mut writer.0)
        .await
        .is_err()
    {
        writer.0.abort();
        let _ = (&mut writer.0).await;
    }
}

/// The writer task, aborted when dropped: whatever ends the session (a
/// panic included) ends its writer, and with it the socket.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Payload size of a WebSocket message.
fn ws_len(message: &WsMessage) -> u64 {
    (match message {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) | WsMessage::Ping(b) | WsMessage::Pong(b) => b.len(),
        WsMessage::Close(_) => 0,
    }) as u64
}

/// A chunk of joined frames as one WebSocket message: text unless a body
/// in it was not UTF-8.
pub fn chunk_message(chunk: Chunk) -> WsMessage {
    if chunk.binary {
        return WsMessage::Binary(chunk.bytes);
    }
    match Utf8Bytes::try_from(chunk.bytes.clone()) {
        Ok(text) => WsMessage::Text(text),
        Err(_) => WsMessage::Binary(chunk.bytes),
    }
}

/// Drains the outbound queue into the socket. Frames already queued when
/// the writer wakes go out together: joined into WebSocket messages of up to
/// [`COALESCE_BYTES`](super::coalesce::COALESCE_BYTES) (STOMP allows several frames in one message, and
/// stompjs reads them), so a client that fell behind costs one write, not
/// one per frame; nothing is kept buffered once written.
///
/// Every write to the socket is bounded by `write_timeout`: a client that
/// stops reading (zero window) is found and its session ended
/// ([`ClientLink::stall`]), which releases its broker resources. With no
/// heart-beat negotiated, an idle writer sends a WebSocket ping every
/// `ping_every` (the reader closes a client that answers nothing).
async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    link: Arc<ClientLink>,
    write_timeout: Duration,
    ping_every: Option<Duration>,
) {
    let metrics = crate::metrics::get();
    let mut heartbeat: Option<Duration> = None;
    let mut batch: VecDeque<Outbound> = VecDeque::new();
    let mut pending = Coalescer::default();
    // One socket operation within the write timeout: `Err` ends the writer
    // (the link is closed, or marked stalled on a timeout).
    macro_rules! io {
        ($op:expr) => {
            match tokio::time::timeout(write_timeout, $op).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    link.close();
                    return;
                }
                Err(_) => {
                    link.stall();
                    return;
                }
            }
        };
    }
    loop {
        match heartbeat.or(ping_every) {
            Some(every) => {
                if tokio::time::timeout(every, link.take_all(&mut batch))
                    .await
                    .is_err()
                {
                    if heartbeat.is_some() {
                        io!(sink.send(WsMessage::Text(Utf8Bytes::from_static("\n"))));
                    } else {
                        io!(sink.send(WsMessage::Ping(bytes::Bytes::new())));
                    }
                    continue;
                }
            }
            None => link.take_all(&mut batch).await,
        }
        let mut close = false;
        for item in batch.drain(..) {
            match item {
                Outbound::SetHeartbeat(every) => heartbeat = every,
                Outbound::Close => {
                    close = true;
                    break;
                }
                frame => {
                    if let Some(chunk) = pending.add(&frame) {
                        let message = chunk_message(chunk);
                        metrics.bytes_out.increment(ws_len(&message));
                        io!(sink.feed(message));
                    }
                }
            }
        }
        if let Some(chunk) = pending.take() {
            let message = chunk_message(chunk);
            metrics.bytes_out.increment(ws_len(&message));
            io!(sink.feed(message));
        }
        // Keep the batch's allocation only while more is queued: an idle
        // session holds none (the queue gets this one at the next take).
        if batch.capacity() > 64 || link.is_empty() {
            batch = VecDeque::new();
        }
        io!(sink.flush());
        if close {
            let _ = tokio::time::timeout(write_timeout, async {
                let _ = sink.send(WsMessage::Close(None)).await;
                let _ = sink.close().await;
            })
            .await;
            link.close();
            return;
        }
    }
}
