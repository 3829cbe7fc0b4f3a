//! SockJS over WebSocket: the raw `/websocket` endpoint (plain STOMP over
//! WebSocket, the gateway's own endpoint under the SockJS prefix) and the
//! `/<server>/<session>/websocket` transport, which frames like the HTTP
//! transports (`o`, `a[...]`, `h`, `c[...]`) but needs no session table:
//! the session lives exactly as long as its socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::body;
use super::frame;
use super::http::Sockjs;
use super::writer::{self, Encoded};
use crate::metrics::SockjsTransport;
use crate::transport::host::AdmitError;
use crate::transport::outbound::ClientLink;
use crate::transport::websocket::Handshake;

/// `<prefix>/websocket`: STOMP over a plain WebSocket, as at `ws_path`.
pub async fn raw(
    State(ctx): State<Arc<Sockjs>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if !ctx.host.config.sockjs.websocket {
        return StatusCode::NOT_FOUND.into_response();
    }
    crate::metrics::get()
        .sockjs
        .request(SockjsTransport::Websocket);
    crate::transport::websocket::upgrade(State(Arc::clone(&ctx.host)), ConnectInfo(peer), request)
        .await
}

/// `<prefix>/<server>/<session>/websocket`.
pub async fn session(ctx: Arc<Sockjs>, request: Request) -> Response {
    if !ctx.host.config.sockjs.websocket {
        return StatusCode::NOT_FOUND.into_response();
    }
    let headers = request.headers().clone();
    let uri = request.uri().clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ws = match WebSocketUpgrade::from_request(request, &()).await {
        Ok(ws) => ws,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "Can \"Upgrade\" only to \"WebSocket\".",
            )
                .into_response()
        }
    };
    if ctx.host.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !crate::transport::host::origin_allowed(&ctx.host.config.security.allowed_origins, &headers)
    {
        crate::metrics::get().rejected(crate::metrics::RejectReason::Origin);
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let ip = peer.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |p| p.ip());
    let admission = match ctx.host.admit(ip) {
        Ok(admission) => admission,
        Err(AdmitError::MaxConnections) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response()
        }
        Err(AdmitError::PerIp) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            )
                .into_response()
        }
    };
    let handshake = Handshake {
        token: crate::transport::host::handshake_token(&headers, &uri),
        ping_every: None,
    };
    let max_message = ctx.host.config.limits.max_frame_bytes.saturating_mul(2) + 64 * 1024;
    ws.max_message_size(max_message)
        .on_upgrade(move |socket| async move {
            let _admission = admission;
            run(socket, ctx, handshake).await;
        })
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes one text message within `timeout`; `false` when the socket failed.
async fn send_text(
    sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
    text: Vec<u8>,
    timeout: Duration,
) -> bool {
    crate::metrics::get()
        .sockjs
        .bytes_out(SockjsTransport::Websocket, text.len());
    let Ok(text) = Utf8Bytes::try_from(Bytes::from(text)) else {
        return false;
    };
    matches!(
        tokio::time::timeout(timeout, sink.send(WsMessage::Text(text))).await,
        Ok(Ok(()))
    )
}

// `last_write` is set by every write, also the last one.
#[allow(unused_assignments)]
async fn run(socket: WebSocket, ctx: Arc<Sockjs>, handshake: Handshake) {
    let metrics = &crate::metrics::get().sockjs;
    let gauge = metrics.sessions(SockjsTransport::Websocket);
    gauge.increment(1.0);
    let limits = &ctx.host.config.limits;
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let (mut sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let link = ClientLink::bounded(
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        limits.slow_client_policy,
    );
    // Admitted above, for the life of this socket.
    let mut driver = super::glue::spawn_session(&ctx.host, handshake, rx, Arc::clone(&link), None);
    let mut driver_done = false;
    let heartbeat = ctx.settings.heartbeat;
    let mut last_write = Instant::now();
    let mut last_message = Instant::now();
    let mut stomp_heartbeat: Option<Duration> = None;
    let mut batch = VecDeque::new();
    macro_rules! write {
        ($text:expr, $label:lifetime) => {{
            if !send_text(&mut sink, $text, write_timeout).await {
                break $label;
            }
            last_write = Instant::now();
        }};
    }
    let mut closing = false;
    'session: loop {
        if closing {
            write!(frame::close(3000, "Go away!"), 'session);
            break;
        }
        write!(frame::OPEN.to_vec(), 'session);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(WsMessage::Text(text))) => {
                        metrics.bytes_in(SockjsTransport::Websocket, text.len());
                        let Ok(messages) = body::parse_websocket(text.as_str()) else {
                            // Broken framing: SockJS ends the connection.
                            break 'session;
                        };
                        for message in messages.into_iter().filter(|m| !m.is_empty()) {
                            if tx.send(Bytes::from(message)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(WsMessage::Binary(_) | WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Ok(WsMessage::Close(_)) | Err(_)) | None => break 'session,
                },
                () = link.take_all(&mut batch) => {
                    let mut encoded = Encoded::default();
                    writer::encode(&mut batch, &mut encoded);
                    if let Some(every) = encoded.heartbeat {
                        stomp_heartbeat = every;
                        last_message = Instant::now();
                    }
                    if !encoded.messages.is_empty() {
                        write!(frame::messages(encoded.messages.iter().map(Vec::as_slice)), 'session);
                        last_message = Instant::now();
                    }
                    if encoded.close {
                        closing = true;
                        continue 'session;
                    }
                }
                () = tokio::time::sleep_until(last_write + heartbeat) => {
                    write!(frame::HEARTBEAT.to_vec(), 'session);
                }
                () = sleep_until_some(stomp_heartbeat.map(|every| last_message + every)) => {
                    write!(frame::messages([&writer::stomp_heartbeat()[..]]), 'session);
                    last_message = Instant::now();
                }
                flushed = &mut driver, if !driver_done => {
                    driver_done = true;
                    // Normally the close arrives through the link after
                    // the last frame; a client cut off gets nothing more.
                    if !matches!(flushed, Ok(true)) {
                        closing = true;
                        continue 'session;
                    }
                }
            }
        }
    }
    let _ = tokio::time::timeout(write_timeout, async {
        let _ = sink.send(WsMessage::Close(None)).await;
        let _ = sink.close().await;
    })
    .await;
    drop(tx);
    link.close();
    gauge.decrement(1.0);
    if !driver_done
        && tokio::time::timeout(Duration::from_secs(10), &mut driver)
            .await
            .is_err()
    {
        driver.abort();
    }
}
