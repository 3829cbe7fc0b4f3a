//! STOMP over WebSocket: a thin adapter between one socket and the
//! session driver ([`super::driver`]), with a WebSocket layer of its own.
//!
//! The gateway does its own RFC 6455 framing ([`frame`]) over the raw
//! connection hyper hands over after the upgrade ([`handshake`]), rather
//! than use a WebSocket library, for one reason: fan-out. A library owns
//! the socket and takes whole messages, so every delivery to every client
//! would be copied into a message, then into the library's buffer, and
//! written by a task woken for it. Here a client's queue is written by
//! whoever filled it ([`wire`]): the fan-out, at the end of a burst, puts
//! one frame header and each delivery's shared parts into one vectored,
//! non-blocking write on its own thread, and the connection's writer task
//! only runs when the socket is full, for heart-beats, and to close.
//!
//! Two tasks per connection. The session task reads frames
//! ([`frame::FrameReader`]), answers pings, and runs the driver on the
//! messages (a STOMP frame may span messages and a message may hold
//! several: the driver's codec buffers across them). The writer task waits
//! for the socket when a write left bytes over (bounded by
//! `limits.write_timeout_ms`: a client that stops reading is cut off),
//! sends heart-beats (or, with none negotiated, pings) when nothing was
//! written for the interval, and closes. Over TLS the writer task frames
//! and writes everything itself (the fan-out cannot write to a TLS
//! stream without waiting).

pub mod frame;
pub mod handshake;
pub mod wire;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use self::frame::{control_frame, Event, FrameReader, OP_PONG};
use self::wire::{frame_into, Shared, TcpWire};
use super::driver::{self, Incoming, Options, Outcome};
use super::host::{handshake_token, origin_allowed, refuse, Admission, Host};
use super::outbound::{ClientLink, Outbound, WireState};
use crate::metrics::RejectReason;

/// The protocols offered in the WebSocket handshake.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// A STOMP heart-beat (an EOL) as a text message.
const HEARTBEAT: &[u8] = &[0x81, 0x01, b'\n'];
/// An empty ping.
const PING: &[u8] = &[0x89, 0x00];

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

/// The WebSocket handshake: refused when it is not one, while draining,
/// for a foreign `Origin`, or beyond the connection limits; otherwise
/// upgraded and run until it closes.
pub async fn upgrade(
    State(host): State<Arc<Host>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let upgrade = match handshake::check(
        request.method(),
        request.version(),
        request.headers(),
        &SUBPROTOCOLS,
    ) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return (refusal.status, refusal.text).into_response(),
    };
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        )
            .into_response();
    }
    if host.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let metrics = crate::metrics::get();
    let headers = request.headers();
    if !origin_allowed(&host.config.security.allowed_origins, headers) {
        metrics.rejected(RejectReason::Origin);
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let admission = match host.admit_or_refuse(peer.ip()) {
        Ok(admission) => admission,
        Err(refusal) => return *refusal,
    };
    let handshake = Handshake {
        token: handshake_token(headers, request.uri()),
        ping_every: host.config.security.ws_ping_interval(),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(host, admission, handshake, upgraded).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        handshake::response_headers(&upgrade),
    )
        .into_response()
}

/// Serves one upgraded connection until its session ends.
async fn serve(host: Arc<Host>, admission: Admission, handshake: Handshake, upgraded: Upgraded) {
    // Admitted until the session ends.
    let _admission = admission;
    let _connection = host.track_connection();
    let limits = &host.driver.limits;
    let (link, writer, input, socket) = start(upgraded, limits, handshake.ping_every);
    let options = Options {
        token: handshake.token,
        keepalive: handshake.ping_every,
    };
    let broker = host.broker();
    // Awaited here, not inside `finish`: the session's future and the
    // closing steps then share their place in this task's future.
    let outcome = driver::run(&host.driver, broker, input, Arc::clone(&link), options).await;
    finish(outcome, link, writer, socket).await;
}

/// Makes the client's queue and input of a connection and starts its
/// writer: over plain TCP with a [`TcpWire`], anything else through the
/// writer task alone.
fn start(
    upgraded: Upgraded,
    limits: &crate::config::Limits,
    ping_every: Option<Duration>,
) -> (Arc<ClientLink>, AbortOnDrop, Input, Option<Arc<TcpStream>>) {
    // The codec enforces STOMP's limits; the WebSocket layer only needs to
    // bound one message (a frame may span several, and one may hold several).
    let max_message = limits.max_frame_bytes + 64 * 1024;
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let shared = Shared::new();
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = Arc::new(parts.io.into_inner());
            let link = ClientLink::with_wire(
                limits.outbound_queue_frames,
                limits.outbound_queue_bytes,
                limits.slow_client_policy,
                Box::new(TcpWire {
                    stream: Arc::clone(&stream),
                    shared: Arc::clone(&shared),
                }),
            );
            let writer = AbortOnDrop(tokio::spawn(write_tcp(
                Arc::clone(&link),
                Arc::clone(&stream),
                Arc::clone(&shared),
                write_timeout,
                ping_every,
            )));
            let input = Input {
                source: Source::Tcp(Arc::clone(&stream)),
                buf: BytesMut::from(&parts.read_buf[..]),
                frames: FrameReader::new(max_message),
                link: Arc::clone(&link),
                shared,
                done: false,
            };
            (link, writer, input, Some(stream))
        }
        Err(upgraded) => {
            let (reader, sink) = tokio::io::split(TokioIo::new(upgraded));
            let link = ClientLink::bounded(
                limits.outbound_queue_frames,
                limits.outbound_queue_bytes,
                limits.slow_client_policy,
            );
            let writer = AbortOnDrop(tokio::spawn(write_io(
                sink,
                Arc::clone(&link),
                Arc::clone(&shared),
                write_timeout,
                ping_every,
            )));
            let input = Input {
                source: Source::Io(Box::new(reader)),
                buf: BytesMut::new(),
                frames: FrameReader::new(max_message),
                link: Arc::clone(&link),
                shared,
                done: false,
            };
            (link, writer, input, None)
        }
    }
}

/// After the session: lets the writer flush and close.
async fn finish(
    outcome: Outcome,
    link: Arc<ClientLink>,
    mut writer: AbortOnDrop,
    socket: Option<Arc<TcpStream>>,
) {
    if outcome != Outcome::SlowClient {
        // Bounded: a full queue of a client that stopped reading must not
        // hold the session here.
        let _ = tokio::time::timeout(Duration::from_secs(1), link.send(Outbound::Close)).await;
        // The writer never outlives its session: it gets a moment to flush
        // and close, then it is ended.
        if tokio::time::timeout(Duration::from_secs(5), &mut writer.0)
            .await
            .is_ok()
        {
            if let Some(socket) = &socket {
                linger(socket).await;
                shutdown(socket, std::net::Shutdown::Both);
            }
            return;
        }
    }
    writer.0.abort();
    let _ = (&mut writer.0).await;
    // What is still queued will never be written: release it, and its
    // bytes in the queued-bytes gauge, now (a fan-out may hold the link a
    // while longer, and must find it closed).
    link.close();
    // The socket is also held by the client's queue, which a fan-out may
    // hold a moment longer: the client must see the end now.
    if let Some(socket) = &socket {
        shutdown(socket, std::net::Shutdown::Both);
    }
}

/// After the close frame (and the write side's shutdown): reads and drops
/// what the client still sends, until it closes its side, for a moment at
/// most. Closing a socket with unread input makes the kernel reset the
/// connection, and a reset can destroy the close frame and the last
/// frames before the client read them (a lingering close, as web servers
/// do).
async fn linger(socket: &TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut left: usize = 256 * 1024;
        while left > 0 {
            if socket.readable().await.is_err() {
                return;
            }
            match discard(socket) {
                // The client closed its side.
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// Reads and drops what `socket` has (on the stack, so that the buffer is
/// not part of every session's future).
fn discard(socket: &TcpStream) -> std::io::Result<usize> {
    let mut sink = [0u8; READ_BYTES];
    socket.try_read(&mut sink)
}

fn shutdown(socket: &TcpStream, how: std::net::Shutdown) {
    let _ = socket2::SockRef::from(socket).shutdown(how);
}

/// The writer task, aborted when dropped: whatever ends the session (a
/// panic included) ends its writer, and with it the socket.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The writer task of a plain-TCP connection: everything is written by
/// whoever queued it ([`TcpWire`]) until the socket is full; then this
/// task waits for room (at most `write_timeout`, or the client is cut off)
/// and writes the rest. It also keeps an idle connection alive and, once
/// the close frame is out, shuts the socket down.
async fn write_tcp(
    link: Arc<ClientLink>,
    stream: Arc<TcpStream>,
    shared: Arc<Shared>,
    write_timeout: Duration,
    ping_every: Option<Duration>,
) {
    loop {
        match link.write_wire() {
            WireState::Idle => {
                let Some(every) = shared.heartbeat().or(ping_every) else {
                    link.queued().await;
                    continue;
                };
                let due = tokio::time::Instant::from_std(shared.last_write() + every);
                tokio::select! {
                    () = link.queued() => {}
                    () = tokio::time::sleep_until(due) => {
                        if shared.last_write() + every <= std::time::Instant::now() {
                            let beat = if shared.heartbeat().is_some() { HEARTBEAT } else { PING };
                            link.offer(Outbound::Control(Bytes::from_static(beat)));
                        }
                    }
                }
            }
            WireState::Blocked => {
                let writable = tokio::time::timeout(write_timeout, stream.writable()).await;
                if !carry_on(&link, writable) {
                    return;
                }
            }
            WireState::Closed => {
                shutdown(&stream, std::net::Shutdown::Write);
                link.close();
                return;
            }
            WireState::Gone => return,
        }
    }
}

/// The writer task of a connection without a wire (TLS): takes what is
/// queued, frames it into one buffer and writes it, each write within
/// `write_timeout`.
async fn write_io(
    mut sink: WriteHalf<TokioIo<Upgraded>>,
    link: Arc<ClientLink>,
    shared: Arc<Shared>,
    write_timeout: Duration,
    ping_every: Option<Duration>,
) {
    let metrics = crate::metrics::get();
    let mut batch: VecDeque<Outbound> = VecDeque::new();
    let mut out = BytesMut::new();
    loop {
        match shared.heartbeat().or(ping_every) {
            Some(every) => {
                if tokio::time::timeout(every, link.take_all(&mut batch))
                    .await
                    .is_err()
                {
                    let beat = if shared.heartbeat().is_some() {
                        HEARTBEAT
                    } else {
                        PING
                    };
                    out.extend_from_slice(beat);
                }
            }
            None => link.take_all(&mut batch).await,
        }
        let close = frame_into(&mut batch, &mut out, &shared);
        // Keep the batch's allocation only while more is queued.
        if batch.capacity() > 64 {
            batch = VecDeque::new();
        }
        let written = tokio::time::timeout(write_timeout, async {
            sink.write_all(&out).await?;
            sink.flush().await
        })
        .await;
        if !carry_on(&link, written) {
            return;
        }
        metrics.bytes_out.increment(out.len() as u64);
        out.clear();
        if out.capacity() > 256 * 1024 {
            out = BytesMut::new();
        }
        if close {
            let _ = tokio::time::timeout(write_timeout, sink.shutdown()).await;
            link.close();
            return;
        }
    }
}

/// Whether a writer goes on after a socket operation bounded by the write
/// timeout: on an error the link is closed, on a timeout it is marked
/// stalled (the session ends as for a client that stopped reading).
fn carry_on<E>(
    link: &ClientLink,
    result: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> bool {
    match result {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            link.close();
            false
        }
        Err(_) => {
            link.stall();
            false
        }
    }
}

/// Where a connection's bytes come from.
enum Source {
    Tcp(Arc<TcpStream>),
    Io(Box<ReadHalf<TokioIo<Upgraded>>>),
}

/// The client's side of a connection as the driver's input: WebSocket
/// messages as [`Incoming`] chunks; pings are answered here.
struct Input {
    source: Source,
    /// Bytes read and not yet a whole frame (no allocation while idle).
    buf: BytesMut,
    frames: FrameReader,
    link: Arc<ClientLink>,
    shared: Arc<Shared>,
    /// The client closed or broke the protocol: nothing more is read.
    done: bool,
}

/// Bytes asked of the socket per read.
const READ_BYTES: usize = 4096;

impl Input {
    /// The session ends: with the close code to send, if any.
    fn closed(&mut self, code: Option<u16>) -> Poll<Option<Incoming>> {
        if let Some(code) = code {
            self.shared.set_close_code(code);
        }
        self.done = true;
        Poll::Ready(Some(Incoming::Closed))
    }

    /// Reads more bytes into `buf`; `Ok(false)` at the end of the stream.
    fn poll_read(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<bool>> {
        match &mut self.source {
            Source::Tcp(stream) => loop {
                ready!(stream.poll_read_ready(cx))?;
                // Read on the stack, keep only what came: connections
                // take turns reading, and a read buffer of their own,
                // even freed after each frame, would fragment the heap
                // by thousands of idle sessions.
                let mut chunk = [0u8; READ_BYTES];
                match stream.try_read(&mut chunk) {
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        return Poll::Ready(Ok(n > 0));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Source::Io(reader) => {
                let mut chunk = [0u8; READ_BYTES];
                let mut read = ReadBuf::new(&mut chunk);
                ready!(Pin::new(reader.as_mut()).poll_read(cx, &mut read))?;
                self.buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(!read.filled().is_empty()))
            }
        }
    }
}

impl Stream for Input {
    type Item = Incoming;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Incoming>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.frames.next(&mut this.buf) {
                Ok(Some(Event::Message { data, .. })) => {
                    return Poll::Ready(Some(Incoming::Data(data)))
                }
                Ok(Some(Event::Ping(payload))) => {
                    this.link
                        .offer(Outbound::Control(control_frame(OP_PONG, &payload)));
                    continue;
                }
                Ok(Some(Event::Pong)) => return Poll::Ready(Some(Incoming::Alive)),
                Ok(Some(Event::Close(code))) => return this.closed(code),
                Err(error) => {
                    tracing::debug!(%error, "WebSocket protocol error");
                    return this.closed(Some(error.code()));
                }
                Ok(None) => {}
            }
            if this.buf.is_empty() && this.buf.capacity() > 0 {
                // An idle connection holds no read buffer.
                this.buf = BytesMut::new();
            }
            match ready!(this.poll_read(cx)) {
                Ok(true) => {}
                Ok(false) => return this.closed(None),
                Err(error) => {
                    tracing::debug!(%error, "WebSocket read failed");
                    return this.closed(None);
                }
            }
        }
    }
}

/// Every connection's task holds these futures for its whole life: they
/// must stay small (docs/benchmarks.md, memory per idle session). A buffer
/// kept across an await, or a future held twice, shows here first.
#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, F: Fn(A, B, C, D) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn connection_futures_stay_small() {
        let serve = future_size(serve);
        let finish = future_size(finish);
        let input = std::mem::size_of::<Input>();
        // Debug-build sizes (release ones are smaller); before the linger
        // buffer moved out of `finish`, it was 4,464 bytes and `serve`
        // 5,744.
        assert!(serve <= 1_600, "serve: {serve} bytes");
        assert!(finish <= 512, "finish: {finish} bytes");
        assert!(input <= 160, "Input: {input} bytes");
    }
}
