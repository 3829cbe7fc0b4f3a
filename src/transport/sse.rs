//! Server-Sent Events: server push for pages that only listen, with the
//! browser's own `EventSource` and no library.
//!
//! A QR-login page or a dashboard never sends anything: loading a STOMP
//! client (or SockJS) just to receive is weight they do not need, and
//! `EventSource` is in every browser, reconnects by itself and passes
//! `Last-Event-ID` when it does. So `GET <sse.path>?destination=<dest>`
//! answers `text/event-stream`.
//!
//! It is one more thin adapter over the session driver
//! ([`super::driver`]), not a second implementation of the gateway: the
//! adapter plays a STOMP client that sends `CONNECT` (with the request's
//! token, as the WebSocket handshake passes it) and `SUBSCRIBE` to the
//! destination, and the same session state machine decides. Auth, rules,
//! `/user/` destinations, limits, the slow-client policy, drain and metrics
//! are therefore exactly those of a WebSocket session. What the session
//! writes to its [`ClientLink`] is decoded back into frames here, and each
//! MESSAGE becomes one event ([`message_event`]).
//!
//! The request is answered only once the subscription is in place (the
//! SUBSCRIBE carries a receipt): a refused token or destination is an HTTP
//! error (401, 403, ...), which makes `EventSource` stop, where an event
//! stream that ends would make it reconnect forever. An ERROR after that
//! (token expiry, a lost queue, the drain) is a final `stomp-error` event,
//! then the stream ends and the browser reconnects after `retry`.
//!
//! `Last-Event-ID` is honoured where the destination itself can replay
//! from a position: a RabbitMQ stream queue (`/amq/queue/<stream>`), where
//! an event's `id` is the message's stream offset and a reconnect resumes
//! after it (`x-stream-offset`), and a broadcast destination served by a
//! `[history]` stream, where the `id` is `<epoch>:<offset>` and a reconnect
//! subscribes with `x-resume-from` (src/bridge/history.rs). Everywhere else
//! it is ignored, for reasons given in docs/protocol.md ("Server-Sent
//! Events").
//!
//! Bounds: admission under the connection limits ([`Host::admit`]),
//! `sse.max_sessions`, the client's outbound queue (frames and bytes, with
//! `limits.slow_client_policy`), and a client that stops reading: the
//! stream writes at least a heartbeat every `sse.heartbeat_ms`, so a stream
//! that made no progress for that plus `limits.write_timeout_ms` belongs
//! to a client that stopped reading, and the session ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::driver::{self, Incoming, Options, Outcome};
use super::host::{handshake_token, origin_allowed, query_value, refuse, Host};
use super::outbound::{ClientLink, Outbound};
use crate::metrics::{RejectReason, SseEvent, SseRefusal};
use crate::stomp::destination::Destination;
use crate::stomp::{self, Command, Escaping, Frame, FrameLimits, StompCodec};

/// The subscription id of the adapter's one SUBSCRIBE.
const SUBSCRIPTION: &str = "sse";
/// The receipt the SUBSCRIBE asks for: the stream starts once it arrives.
const SUBSCRIBED: &str = "sse-subscribed";
/// The heartbeat comment.
const PING: &[u8] = b": ping\n\n";
/// The `event:` of a message whose body is not UTF-8 (data in base64).
pub const BINARY_EVENT: &str = "binary";
/// The `event:` of the session's ERROR.
pub const ERROR_EVENT: &str = "stomp-error";
/// The message header a backend sets to name an event (`event:`).
pub const EVENT_HEADER: &str = "sse-event";

/// How an event's `data` carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// The body, one `data:` line per line of it.
    Text,
    /// `{"headers":{...},"body":"..."}` on one line (`body_base64` for a
    /// body that is not UTF-8).
    Json,
}

/// What the SSE handler shares.
#[derive(Debug)]
struct Sse {
    host: Arc<Host>,
    /// Streams open, under `sse.max_sessions`.
    open: AtomicUsize,
}

/// The SSE route (`sse.path`), over what the host lends.
pub fn router<S: Clone + Send + Sync + 'static>(host: &Arc<Host>) -> Router<S> {
    let sse = Arc::new(Sse {
        host: Arc::clone(host),
        open: AtomicUsize::new(0),
    });
    Router::new()
        .route(&host.config.sse.path, get(open).options(preflight))
        .with_state(sse)
}

/// The CORS headers of an SSE answer. `EventSource` from another origin
/// needs `Access-Control-Allow-Origin`; with `withCredentials: true` it
/// needs the origin itself and `Access-Control-Allow-Credentials`, which
/// the gateway grants only to origins listed in
/// `security.allowed_origins` (an empty list allows every origin, without
/// credentials: `*`).
fn cors(allowed: &[String], request: &HeaderMap, response: &mut HeaderMap) {
    let Some(origin) = request.get(header::ORIGIN) else {
        return;
    };
    if allowed.is_empty() {
        response.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else if origin_allowed(allowed, request) {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        response.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The preflight of a `fetch`-based EventSource polyfill that sends
/// `Authorization` or `Last-Event-ID` itself.
async fn preflight(State(sse): State<Arc<Sse>>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    if let Some(requested) = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| !v.is_empty())
    {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    cors(&sse.host.config.security.allowed_origins, &headers, out);
    response
}

async fn open(
    State(sse): State<Arc<Sse>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let mut response = start(&sse, peer, &headers, &uri).await;
    cors(
        &sse.host.config.security.allowed_origins,
        &headers,
        response.headers_mut(),
    );
    response
}

/// What the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Params {
    destination: String,
    envelope: Envelope,
    /// CONNECT's `host` (the vhost).
    vhost: Option<String>,
    /// `Last-Event-ID`, or the `last_event_id` query parameter of a first
    /// connection.
    last_event_id: Option<String>,
}

fn params(headers: &HeaderMap, uri: &Uri) -> Result<Params, &'static str> {
    let destination = query_value(uri, "destination")
        .filter(|d| !d.is_empty())
        .ok_or("the destination query parameter is required\n")?;
    let envelope = match query_value(uri, "envelope").as_deref() {
        None | Some("text") => Envelope::Text,
        Some("json") => Envelope::Json,
        Some(_) => return Err("envelope must be text or json\n"),
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_value(uri, "last_event_id"))
        .filter(|id| !id.is_empty());
    Ok(Params {
        destination,
        envelope,
        vhost: query_value(uri, "host").filter(|h| !h.is_empty()),
        last_event_id,
    })
}

/// Where a reconnect resumes: after the stream offset `Last-Event-ID`
/// names, on a queue destination (the only kind that can be a stream).
/// `None`: nothing to resume (a broadcast destination, or an id that is
/// not an offset).
pub fn resume_offset(destination: &str, last_event_id: Option<&str>) -> Option<u64> {
    let offset: u64 = last_event_id?.trim().parse().ok()?;
    match Destination::parse(destination) {
        Ok(Destination::AmqQueue { .. } | Destination::Queue { .. }) => offset.checked_add(1),
        _ => None,
    }
}

/// Where a reconnect to a broadcast destination resumes: `Last-Event-ID`
/// `<epoch>:<offset>` (the `id:` of a message from a `[history]` stream)
/// becomes the SUBSCRIBE's `x-resume-from` (src/bridge/history.rs).
pub fn resume_position(destination: &str, last_event_id: Option<&str>) -> Option<String> {
    let position = crate::bridge::resume::Position::parse(last_event_id?)?;
    Destination::parse(destination)
        .ok()
        .filter(Destination::is_broadcast)
        .map(|_| position.to_string())
}

/// The CONNECT and SUBSCRIBE the adapter sends for `params`.
fn opening_frames(params: &Params) -> (Bytes, Bytes) {
    let mut connect = Frame::new(Command::Connect)
        .with_header("accept-version", "1.2")
        .with_header("heart-beat", "0,0");
    if let Some(vhost) = &params.vhost {
        connect.push_header("host", vhost);
    }
    let mut subscribe = Frame::new(Command::Subscribe)
        .with_header("id", SUBSCRIPTION)
        .with_header("destination", &params.destination)
        .with_header("ack", "auto")
        .with_header("receipt", SUBSCRIBED);
    if let Some(offset) = resume_offset(&params.destination, params.last_event_id.as_deref()) {
        subscribe.push_header("x-stream-offset", &offset.to_string());
    }
    if let Some(position) = resume_position(&params.destination, params.last_event_id.as_deref()) {
        subscribe.push_header(crate::session::RESUME_HEADER, &position);
    }
    let mut a = BytesMut::new();
    stomp::encode_frame(&connect, Escaping::None, &mut a);
    let mut b = BytesMut::new();
    stomp::encode_frame(&subscribe, Escaping::V12, &mut b);
    (a.freeze(), b.freeze())
}

/// Counts a stream under `sse.max_sessions` while it lives.
struct Slot(Arc<Sse>);

impl Slot {
    fn take(sse: &Arc<Sse>) -> Option<Slot> {
        let max = sse.host.config.sse.max_sessions;
        let mut open = sse.open.load(Ordering::Acquire);
        loop {
            if max != 0 && open >= max {
                return None;
            }
            match sse
                .open
                .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => open = now,
            }
        }
        crate::metrics::get().sse.sessions.increment(1.0);
        Some(Slot(Arc::clone(sse)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::get().sse.sessions.decrement(1.0);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When the stream last made progress (wrote something), for the watchdog.
#[derive(Debug)]
struct Progress {
    base: Instant,
    /// Milliseconds since `base`.
    last: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Release);
    }

    fn idle(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Acquire)))
    }
}

/// Ends the session of a client that stopped reading: the stream writes
/// at least every `heartbeat`, so no progress for `heartbeat + limit` means
/// the response is stuck behind a full socket.
async fn watchdog(
    progress: Arc<Progress>,
    link: Arc<ClientLink>,
    heartbeat: Duration,
    limit: Duration,
) {
    let allowed = heartbeat + limit;
    let step = (allowed / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(step).await;
        if progress.idle() > allowed {
            tracing::info!("sse client stalled: no write progress, closing");
            link.stall();
            return;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A refused request, counted.
fn refused(reason: SseRefusal, status: StatusCode, text: &'static str) -> Response {
    crate::metrics::get().sse.refused(reason);
    refuse(status, text)
}

async fn start(sse: &Arc<Sse>, peer: SocketAddr, headers: &HeaderMap, uri: &Uri) -> Response {
    let host = &sse.host;
    let metrics = crate::metrics::get();
    if host.draining.is_cancelled() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !origin_allowed(&host.config.security.allowed_origins, headers) {
        metrics.rejected(RejectReason::Origin);
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let params = match params(headers, uri) {
        Ok(params) => params,
        Err(why) => return refused(SseRefusal::Invalid, StatusCode::BAD_REQUEST, why),
    };
    let Some(slot) = Slot::take(sse) else {
        return refused(
            SseRefusal::MaxSessions,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams",
        );
    };
    let admission = match host.admit_or_refuse(peer.ip()) {
        Ok(admission) => admission,
        Err(refusal) => return *refusal,
    };
    let limits = &host.config.limits;
    let link = ClientLink::bounded(
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        limits.slow_client_policy,
    );
    // Cancelled when the response body is dropped (the client went away,
    // or the handshake failed): the driver's input then ends.
    let gone = CancellationToken::new();
    // Cancelled when the session task is done with the link.
    let ended = CancellationToken::new();
    let progress = Arc::new(Progress::new());
    let heartbeat = Duration::from_millis(host.config.sse.heartbeat_ms);
    let (connect, subscribe) = opening_frames(&params);
    let options = Options {
        token: handshake_token(headers, uri),
        keepalive: None,
    };
    {
        let host = Arc::clone(host);
        let link = Arc::clone(&link);
        let gone = gone.clone();
        let ended = ended.clone();
        let progress = Arc::clone(&progress);
        let write_timeout = Duration::from_millis(limits.write_timeout_ms);
        tokio::spawn(async move {
            let _slot = slot;
            let _admission = admission;
            let _connection = host.track_connection();
            let _watchdog = AbortOnDrop(tokio::spawn(watchdog(
                progress,
                Arc::clone(&link),
                heartbeat,
                write_timeout,
            )));
            let input =
                futures_util::stream::iter([Incoming::Data(connect), Incoming::Data(subscribe)])
                    .chain(futures_util::stream::once(async move {
                        gone.cancelled().await;
                        Incoming::Closed
                    }));
            let outcome = driver::run(
                &host.driver,
                host.broker(),
                Box::pin(input),
                Arc::clone(&link),
                options,
            )
            .await;
            if outcome == Outcome::SlowClient {
                link.close();
            } else {
                // Bounded: a full queue of a client that stopped reading
                // must not hold the session here.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), link.send(Outbound::Close)).await;
            }
            ended.cancel();
        });
    }
    let mut reader = Reader::new(link, ended, limits.max_frame_bytes, params.envelope);
    let guard = gone.drop_guard();
    let wait =
        Duration::from_millis(limits.connect_timeout_ms + host.config.amqp.broker_timeout_ms);
    match tokio::time::timeout(wait, reader.handshake()).await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return refusal.into_response(),
        Err(_) => {
            return refused(
                SseRefusal::Failed,
                StatusCode::GATEWAY_TIMEOUT,
                "the subscription was not in place in time",
            )
        }
    }
    let retry = format!("retry: {}\n\n", host.config.sse.retry_ms);
    let stream = EventStream {
        reader,
        heartbeat,
        progress,
        first: Some(Bytes::from(retry)),
        done: false,
        _gone: guard,
    };
    let body = Body::from_stream(futures_util::stream::unfold(
        stream,
        |mut stream| async move {
            let data = stream.next().await?;
            Some((Ok::<Bytes, Infallible>(data), stream))
        },
    ));
    let mut response = Response::new(body);
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, no-transform"),
    );
    // nginx and other buffering proxies: pass events on at once.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Why the stream did not start: the session's ERROR (or its end) before
/// the subscription was in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {text}")]
struct Refused {
    status: StatusCode,
    reason: SseRefusal,
    text: String,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        crate::metrics::get().sse.refused(self.reason);
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.text,
        )
            .into_response()
    }
}

/// The HTTP answer to an ERROR that came before the stream started:
/// CONNECT refused is 401; then by the ERROR's `message`.
fn refusal_of(error: &Frame, connected: bool) -> Refused {
    let message = error
        .header("message")
        .map(|m| m.into_owned())
        .unwrap_or_default();
    let (status, reason) = if !connected {
        (StatusCode::UNAUTHORIZED, SseRefusal::Auth)
    } else {
        match message.as_str() {
            "access_refused" => (StatusCode::FORBIDDEN, SseRefusal::Forbidden),
            "not_found" => (StatusCode::NOT_FOUND, SseRefusal::Failed),
            "Unknown destination"
            | "Invalid destination"
            | "Invalid header"
            | "Missing destination" => (StatusCode::BAD_REQUEST, SseRefusal::Invalid),
            _ => (StatusCode::BAD_GATEWAY, SseRefusal::Failed),
        }
    };
    let body = String::from_utf8_lossy(&error.body);
    let text = if body.trim().is_empty() {
        format!("{message}\n")
    } else {
        format!("{message}\n{}", body.trim_end())
    };
    Refused {
        status,
        reason,
        text,
    }
}

/// Reads the session's outbound queue back into frames.
struct Reader {
    link: Arc<ClientLink>,
    ended: CancellationToken,
    codec: StompCodec,
    buf: BytesMut,
    batch: VecDeque<Outbound>,
    /// Frames decoded and not yet turned into events.
    frames: VecDeque<Frame>,
    /// The session queued its close (or is gone).
    closed: bool,
    envelope: Envelope,
}

impl Reader {
    fn new(
        link: Arc<ClientLink>,
        ended: CancellationToken,
        max_frame_bytes: usize,
        envelope: Envelope,
    ) -> Reader {
        let mut codec = StompCodec::new(FrameLimits {
            max_frame_bytes: max_frame_bytes.saturating_add(1024 * 1024),
            max_headers: 100_000,
            max_header_line: usize::MAX / 2,
        });
        // Until CONNECTED, the session writes (its ERROR) unescaped.
        codec.set_escaping(Escaping::None);
        Reader {
            link,
            ended,
            codec,
            buf: BytesMut::new(),
            batch: VecDeque::new(),
            frames: VecDeque::new(),
            closed: false,
            envelope,
        }
    }

    /// Waits for more frames (`false`: the session is over and everything
    /// it wrote was read).
    async fn fill(&mut self) -> bool {
        if self.closed {
            return false;
        }
        tokio::select! {
            biased;
            () = self.link.take_all(&mut self.batch) => {}
            () = self.ended.cancelled() => {
                // Whatever the session queued before ending is still there.
                if self.link.take_all(&mut self.batch).now_or_never().is_none() {
                    self.closed = true;
                    return false;
                }
            }
        }
        for item in self.batch.drain(..) {
            if self.closed {
                break;
            }
            if matches!(item, Outbound::Close) {
                self.closed = true;
                continue;
            }
            let Some((parts, _binary)) = item.frame_parts() else {
                continue;
            };
            for part in parts {
                self.buf.extend_from_slice(part);
            }
            loop {
                match self.codec.decode(&mut self.buf) {
                    Ok(Some(stomp::Inbound::Frame(frame))) => {
                        if frame.command == Command::Connected {
                            self.codec.set_escaping(Escaping::V12);
                        }
                        self.frames.push_back(frame);
                    }
                    Ok(Some(stomp::Inbound::Heartbeat)) => continue,
                    Ok(None) => break,
                    Err(error) => {
                        // The gateway's own encoder wrote it: not expected.
                        tracing::warn!(%error, "sse: undecodable frame from the session");
                        self.buf.clear();
                        break;
                    }
                }
            }
        }
        if self.batch.capacity() > 64 {
            self.batch = VecDeque::new();
        }
        true
    }

    /// Reads until CONNECTED and the SUBSCRIBE's receipt: the stream may
    /// start. MESSAGEs that came before the receipt stay queued for it.
    async fn handshake(&mut self) -> Result<(), Refused> {
        let mut connected = false;
        let mut kept = VecDeque::new();
        loop {
            while let Some(frame) = self.frames.pop_front() {
                match frame.command {
                    Command::Connected => connected = true,
                    Command::Error => return Err(refusal_of(&frame, connected)),
                    Command::Receipt
                        if frame.header("receipt-id").as_deref() == Some(SUBSCRIBED) =>
                    {
                        kept.append(&mut self.frames);
                        self.frames = kept;
                        return Ok(());
                    }
                    _ => kept.push_back(frame),
                }
            }
            if !self.fill().await {
                break;
            }
        }
        Err(Refused {
            status: StatusCode::BAD_GATEWAY,
            reason: SseRefusal::Failed,
            text: "the session ended before the subscription was in place\n".to_owned(),
        })
    }
}

/// The body of a successful SSE response.
struct EventStream {
    reader: Reader,
    heartbeat: Duration,
    progress: Arc<Progress>,
    /// The `retry:` line, written first.
    first: Option<Bytes>,
    done: bool,
    /// Ends the session when the body is dropped.
    _gone: DropGuard,
}

impl EventStream {
    async fn next(&mut self) -> Option<Bytes> {
        let metrics = &crate::metrics::get().sse;
        if let Some(first) = self.first.take() {
            self.progress.touch();
            return Some(first);
        }
        loop {
            if self.done {
                return None;
            }
            let mut out = Vec::new();
            while let Some(frame) = self.reader.frames.pop_front() {
                match frame.command {
                    Command::Message => {
                        let kind = message_event(&frame, self.reader.envelope, &mut out);
                        metrics.event(kind);
                    }
                    Command::Error => {
                        error_event(&frame, self.reader.envelope, &mut out);
                        metrics.event(SseEvent::Error);
                        self.done = true;
                        break;
                    }
                    // RECEIPTs, and nothing else is expected.
                    _ => {}
                }
            }
            if out.is_empty() && !self.done {
                match tokio::time::timeout(self.heartbeat, self.reader.fill()).await {
                    Ok(true) => continue,
                    Ok(false) => self.done = true,
                    Err(_) => {
                        metrics.event(SseEvent::Ping);
                        out.extend_from_slice(PING);
                    }
                }
            }
            if !out.is_empty() {
                self.progress.touch();
                metrics.bytes_out.increment(out.len() as u64);
                crate::metrics::get().bytes_out.increment(out.len() as u64);
                return Some(Bytes::from(out));
            }
        }
    }
}

/// Whether `value` can stand in an `id:` or `event:` field.
fn field_safe(value: &str) -> bool {
    !value.is_empty() && !value.contains(['\r', '\n', '\0'])
}

/// Appends `data:` lines for `text`: one per line, as the SSE parser
/// splits lines on CR, LF and CRLF (a CRLF in a body arrives as LF).
fn data_lines(text: &str, out: &mut Vec<u8>) {
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest.as_bytes()[..end]);
        out.push(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

/// The `id:` of a MESSAGE: its stream offset on a stream queue, or
/// `<epoch>:<offset>` on a `[history]` destination (so that
/// `Last-Event-ID` resumes there), else its `message-id`.
pub fn event_id(frame: &Frame) -> Option<String> {
    if let Some(offset) = frame.header("x-stream-offset") {
        if let Ok(offset) = offset.trim().parse::<u64>() {
            // A `[history]` stream's message: `<epoch>:<offset>`.
            return Some(match frame.header("x-stream-epoch") {
                Some(epoch) if epoch.trim().parse::<u64>().is_ok() => {
                    format!("{}:{offset}", epoch.trim())
                }
                _ => offset.to_string(),
            });
        }
    }
    frame
        .header("message-id")
        .map(|m| m.into_owned())
        .filter(|m| field_safe(m))
}

/// Appends the event of one MESSAGE frame; returns its kind.
///
/// `id:` per [`event_id`]; `event:` from the message's `sse-event` header
/// when it has one (else none: the page's `onmessage`); `data:` per the
/// [`Envelope`]. A body that is not UTF-8 is base64 (standard alphabet,
/// padded): as `event: binary` in the text envelope, as `body_base64` in
/// the JSON one.
pub fn message_event(frame: &Frame, envelope: Envelope, out: &mut Vec<u8>) -> SseEvent {
    let text = std::str::from_utf8(&frame.body).ok();
    let kind = if text.is_some() {
        SseEvent::Message
    } else {
        SseEvent::Binary
    };
    if let Some(id) = event_id(frame) {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    let named = frame
        .header(EVENT_HEADER)
        .map(|e| e.into_owned())
        .filter(|e| field_safe(e));
    let event = match (envelope, text) {
        (Envelope::Text, None) => Some(BINARY_EVENT.to_owned()),
        _ => named,
    };
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    let base64 = || base64::engine::general_purpose::STANDARD.encode(&frame.body);
    match envelope {
        Envelope::Text => match text {
            Some(text) => data_lines(text, out),
            None => data_lines(&base64(), out),
        },
        Envelope::Json => {
            let mut headers = serde_json::Map::new();
            for (name, value) in frame.headers() {
                if name == "subscription" || name == "ack" {
                    continue;
                }
                headers
                    .entry(name.into_owned())
                    .or_insert_with(|| serde_json::Value::String(value.into_owned()));
            }
            let mut envelope = serde_json::Map::new();
            envelope.insert("headers".into(), serde_json::Value::Object(headers));
            match text {
                Some(text) => envelope.insert("body".into(), text.into()),
                None => envelope.insert("body_base64".into(), base64().into()),
            };
            // Compact JSON holds no raw line breaks: one data line.
            data_lines(&serde_json::Value::Object(envelope).to_string(), out);
        }
    }
    out.push(b'\n');
    kind
}

/// Appends the final `stomp-error` event for the session's ERROR: `data`
/// is its `message` header then its body (text envelope), or
/// `{"message":...,"body":...}` (JSON envelope).
pub fn error_event(frame: &Frame, envelope: Envelope, out: &mut Vec<u8>) {
    let message = frame
        .header("message")
        .map(|m| m.into_owned())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&frame.body);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(ERROR_EVENT.as_bytes());
    out.push(b'\n');
    match envelope {
        Envelope::Text => {
            let body = body.trim_end();
            if body.is_empty() {
                data_lines(&message, out);
            } else {
                data_lines(&format!("{message}\n{body}"), out);
            }
        }
        Envelope::Json => {
            let value = serde_json::json!({ "message": message, "body": body });
            data_lines(&value.to_string(), out);
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests;
