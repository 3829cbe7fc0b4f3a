//! The SockJS endpoints under `sockjs.prefix`: axum handlers that parse
//! requests, apply the limits, and hand everything else to the pure parts
//! ([`super::session`], [`super::frame`], [`super::body`], [`super::pages`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::body::{self, BodyError};
use super::forward::{ForwardError, Forwarding, Remote};
use super::frame::{self, Wire};
use super::pages;
use super::registry::{self, Entry, PollGuard, Registry};
use super::session::{Attach, Kind, ReceiverId, SessionState, Settings};
use crate::metrics::{RejectReason, SockjsRefusal, SockjsTransport};
use crate::transport::host::{AdmitError, Host};
use crate::transport::outbound::ClientLink;
use crate::transport::websocket::Handshake;

/// One year, in seconds: how long cacheable answers may be kept.
const YEAR: u64 = 365 * 24 * 3600;

/// Chunks waiting for the STOMP session, per session.
const INBOUND_CHUNKS: usize = 64;

/// Longest session id (it is a routing key when forwarding; sockjs-client
/// makes 8 random characters).
const MAX_SESSION_ID: usize = 128;

const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const TEXT: &str = "text/plain; charset=UTF-8";
const JAVASCRIPT: &str = "application/javascript; charset=UTF-8";

/// What the SockJS handlers share.
#[derive(Debug)]
pub struct Sockjs {
    pub host: Arc<Host>,
    pub registry: Arc<Registry>,
    pub settings: Settings,
    /// Forwarding to and from other replicas (`sockjs.forward`).
    pub forwarding: Option<Arc<Forwarding>>,
    iframe: String,
    iframe_etag: String,
}

/// The SockJS routes, for [`crate::server::router`] to merge.
pub fn router<S: Clone + Send + Sync + 'static>(host: &Arc<Host>) -> Router<S> {
    let config = &host.config.sockjs;
    let prefix = config.prefix.clone();
    let client_url = config
        .client_url
        .clone()
        .unwrap_or_else(|| format!("{prefix}/sockjs.min.js"));
    let iframe = pages::iframe_html(&client_url);
    let forwarding = host.forwarding.as_ref().map(|control| {
        Arc::new(Forwarding::new(
            Arc::clone(control),
            Duration::from_millis(config.forward_timeout_ms),
        ))
    });
    let ctx = Arc::new(Sockjs {
        host: Arc::clone(host),
        registry: Arc::new(Registry::new(config.max_sessions)),
        settings: Settings {
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            disconnect_delay: Duration::from_millis(config.disconnect_delay_ms),
            response_limit: config.response_limit_bytes,
            max_buffered_bytes: config.max_buffered_bytes,
        },
        forwarding: forwarding.clone(),
        iframe_etag: pages::etag(iframe.as_bytes()),
        iframe,
    });
    // Requests other replicas forward for this replica's sessions.
    if let (Some(forwarding), Some(requests)) = (forwarding, host.take_forwarded()) {
        tokio::spawn(super::forward::serve(
            Arc::clone(&ctx),
            forwarding,
            requests,
        ));
    }
    Router::new()
        .route(&prefix, get(greeting))
        .route(&format!("{prefix}/"), get(greeting))
        .route(&format!("{prefix}/info"), any(info))
        .route(&format!("{prefix}/websocket"), any(super::ws::raw))
        .route(&format!("{prefix}/{{file}}"), get(file))
        .route(
            &format!("{prefix}/{{server}}/{{session}}/{{transport}}"),
            any(session),
        )
        .with_state(ctx)
}

async fn greeting() -> Response {
    ([(header::CONTENT_TYPE, TEXT)], "Welcome to SockJS!\n").into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        "404 Error: Page not found\n",
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT)], message.into()).into_response()
}

/// A request turned away: a status and a short text.
#[derive(Debug, Clone, Copy)]
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, allow)]).into_response()
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// CORS as SockJS clients need it: the request's `Origin` echoed with
/// credentials allowed (`*` without one), requested headers echoed.
fn cors(request: &HeaderMap, response: &mut HeaderMap) {
    match request.get(header::ORIGIN) {
        Some(origin) => {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        None => {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    response.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(requested) = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| !v.is_empty())
    {
        response.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
}

fn no_cache(response: &mut HeaderMap) {
    response.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
}

/// `Cache-Control: public, max-age` and `Expires` one year ahead.
fn cache_for_a_year(response: &mut HeaderMap) {
    set(
        response,
        header::CACHE_CONTROL,
        &format!("public, max-age={YEAR}"),
    );
    let expires = SystemTime::now() + Duration::from_secs(YEAR);
    set(response, header::EXPIRES, &http_date(expires));
}

/// The CORS preflight answer: cacheable for a year.
fn options(request: &HeaderMap, methods: &'static str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    cache_for_a_year(headers);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    set(headers, header::ACCESS_CONTROL_MAX_AGE, &YEAR.to_string());
    cors(request, headers);
    response
}

/// `JSESSIONID`, when `sockjs.jsessionid`: the client's own value when it
/// is a plain token, else `dummy` (the balancer sets its own).
fn jsessionid(ctx: &Sockjs, request: &HeaderMap, response: &mut HeaderMap) {
    if !ctx.host.config.sockjs.jsessionid {
        return;
    }
    let existing = request
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.split_once('=')?;
            (name.trim() == "JSESSIONID").then(|| value.trim().to_owned())
        })
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
        })
        .unwrap_or_else(|| "dummy".to_owned());
    set(
        response,
        header::SET_COOKIE,
        &format!("JSESSIONID={existing}; path=/"),
    );
}

/// An RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn info(State(ctx): State<Arc<Sockjs>>, method: Method, headers: HeaderMap) -> Response {
    crate::metrics::get()
        .sockjs
        .request(SockjsTransport::Static);
    match method {
        Method::GET => {
            let config = &ctx.host.config.sockjs;
            let body = pages::info_json(config.websocket, config.jsessionid, rand::random());
            let mut response = (
                [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
                body,
            )
                .into_response();
            no_cache(response.headers_mut());
            cors(&headers, response.headers_mut());
            response
        }
        Method::OPTIONS => options(&headers, "OPTIONS, GET"),
        _ => method_not_allowed("GET, OPTIONS"),
    }
}

/// `/iframe*.html` and the sockjs-client bundle.
async fn file(
    State(ctx): State<Arc<Sockjs>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    crate::metrics::get()
        .sockjs
        .request(SockjsTransport::Static);
    if pages::is_iframe_name(&file) {
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == ctx.iframe_etag));
        if matches {
            return StatusCode::NOT_MODIFIED.into_response();
        }
        let mut response = (
            [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
            ctx.iframe.clone(),
        )
            .into_response();
        cache_for_a_year(response.headers_mut());
        set(response.headers_mut(), header::ETAG, &ctx.iframe_etag);
        return response;
    }
    if file == "sockjs.min.js" {
        if let Some(path) = &ctx.host.config.sockjs.client_file {
            let path = path.clone();
            let read = tokio::task::spawn_blocking({
                let path = path.clone();
                move || std::fs::read(path)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            return match read {
                Ok(bundle) => {
                    let mut response =
                        ([(header::CONTENT_TYPE, JAVASCRIPT)], bundle).into_response();
                    set(
                        response.headers_mut(),
                        header::CACHE_CONTROL,
                        "public, max-age=3600",
                    );
                    response
                }
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "sockjs.client_file unreadable");
                    not_found()
                }
            };
        }
    }
    not_found()
}

/// The session URL segments are any non-empty text without dots.
fn valid_segment(segment: &str) -> bool {
    !segment.is_empty() && !segment.contains('.')
}

/// The `c` or `callback` query parameter, checked.
fn callback(uri: &axum::http::Uri) -> Result<String, Refusal> {
    let value = uri.query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == "c" || k == "callback").then(|| body::form_decode(v.as_bytes()))
        })
    });
    let Some(value) = value else {
        return Err(Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "\"callback\" parameter required",
        ));
    };
    match String::from_utf8(value) {
        Ok(name) if frame::valid_callback(&name) => Ok(name),
        _ => Err(Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "invalid \"callback\" parameter",
        )),
    }
}

async fn session(
    State(ctx): State<Arc<Sockjs>>,
    Path((server, session, transport)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    if !valid_segment(&server) || !valid_segment(&session) || session.len() > MAX_SESSION_ID {
        return not_found();
    }
    let method = request.method().clone();
    let metrics = &crate::metrics::get().sockjs;
    let (kind, wire_kind, allowed) = match transport.as_str() {
        "websocket" => {
            if method != Method::GET {
                return method_not_allowed("GET");
            }
            metrics.request(SockjsTransport::Websocket);
            return super::ws::session(ctx, request).await;
        }
        "xhr" => (SockjsTransport::Xhr, Kind::Polling, Method::POST),
        "xhr_streaming" => (SockjsTransport::XhrStreaming, Kind::Streaming, Method::POST),
        "xhr_send" => (SockjsTransport::XhrSend, Kind::Polling, Method::POST),
        "eventsource" => (SockjsTransport::Eventsource, Kind::Streaming, Method::GET),
        "htmlfile" => (SockjsTransport::Htmlfile, Kind::Streaming, Method::GET),
        "jsonp" => (SockjsTransport::Jsonp, Kind::Polling, Method::GET),
        "jsonp_send" => (SockjsTransport::JsonpSend, Kind::Polling, Method::POST),
        _ => return not_found(),
    };
    let xhr = matches!(
        kind,
        SockjsTransport::Xhr | SockjsTransport::XhrStreaming | SockjsTransport::XhrSend
    );
    if method == Method::OPTIONS && xhr {
        metrics.request(SockjsTransport::Static);
        return options(request.headers(), "OPTIONS, POST");
    }
    if method != allowed {
        return method_not_allowed(if allowed == Method::GET {
            "GET"
        } else if xhr {
            "OPTIONS, POST"
        } else {
            "POST"
        });
    }
    metrics.request(kind);
    let headers = request.headers().clone();
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let mut response = match kind {
        SockjsTransport::XhrSend | SockjsTransport::JsonpSend => {
            send(&ctx, &session, kind, request).await
        }
        _ => {
            let (wire, prelude) = match kind {
                SockjsTransport::Xhr => (Wire::Xhr, Vec::new()),
                SockjsTransport::XhrStreaming => (Wire::Xhr, frame::xhr_streaming_prelude()),
                SockjsTransport::Eventsource => {
                    (Wire::EventSource, frame::EVENTSOURCE_PRELUDE.to_vec())
                }
                SockjsTransport::Htmlfile => match callback(request.uri()) {
                    Ok(name) => {
                        let prelude = pages::htmlfile_prelude(&name);
                        (Wire::HtmlFile, prelude)
                    }
                    Err(refusal) => return refusal.into_response(),
                },
                _ => match callback(request.uri()) {
                    Ok(name) => (Wire::Jsonp { callback: name }, Vec::new()),
                    Err(refusal) => return refusal.into_response(),
                },
            };
            receive(
                &ctx,
                &session,
                kind,
                wire_kind,
                wire,
                prelude,
                request.headers(),
                request.uri(),
                peer,
            )
            .await
        }
    };
    let out = response.headers_mut();
    if !out.contains_key(header::CACHE_CONTROL) {
        no_cache(out);
    }
    if xhr || kind == SockjsTransport::Eventsource {
        cors(&headers, out);
    }
    jsessionid(&ctx, &headers, out);
    response
}

/// Whether a new session may start: not draining, `Origin` allowed.
fn admissible(ctx: &Sockjs, headers: &HeaderMap) -> Result<(), Refusal> {
    if ctx.host.draining.is_cancelled() {
        return Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, "draining\n"));
    }
    if !crate::transport::host::origin_allowed(&ctx.host.config.security.allowed_origins, headers) {
        crate::metrics::get().rejected(crate::metrics::RejectReason::Origin);
        return Err(Refusal(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    Ok(())
}

/// Starts the STOMP session and the session task of a new SockJS session;
/// with forwarding on, the session's id is bound to this replica's control
/// queue before the first response goes out (so that the client's next
/// request finds it from any replica).
async fn start(
    ctx: &Arc<Sockjs>,
    id: &str,
    transport: SockjsTransport,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    peer: Option<std::net::IpAddr>,
) -> Result<Arc<Entry>, Refusal> {
    // A new session counts under the same connection limits as a WebSocket
    // (`security.max_connections`, `max_connections_per_ip`), for as long
    // as its STOMP session runs.
    let admission = match peer.map(|ip| ctx.host.admit(ip)) {
        None => None,
        Some(Ok(admission)) => Some(admission),
        Some(Err(AdmitError::MaxConnections)) => {
            crate::metrics::get().rejected(RejectReason::MaxConnections);
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections",
            ));
        }
        Some(Err(AdmitError::PerIp)) => {
            crate::metrics::get().rejected(RejectReason::PerIp);
            return Err(Refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            ));
        }
    };
    let mut started = None;
    let result = ctx.registry.get_or_create(id, || {
        let (tx, rx) = mpsc::channel(INBOUND_CHUNKS);
        let state = SessionState::new(ctx.settings, std::time::Instant::now());
        let entry = Arc::new(Entry::new(state, tx, transport));
        started = Some((Arc::clone(&entry), rx));
        entry
    });
    let entry = match result {
        Ok((entry, _)) => entry,
        Err(registry::Full) => {
            crate::metrics::get()
                .sockjs
                .refused(SockjsRefusal::MaxSessions);
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sessions",
            ));
        }
    };
    if let Some((entry, chunks)) = started {
        let limits = &ctx.host.config.limits;
        let link = ClientLink::bounded(
            limits.outbound_queue_frames,
            limits.outbound_queue_bytes,
            limits.slow_client_policy,
        );
        let handshake = Handshake {
            token: crate::transport::host::handshake_token(headers, uri),
            ping_every: None,
        };
        let driver =
            super::glue::spawn_session(&ctx.host, handshake, chunks, Arc::clone(&link), admission);
        let control = ctx.forwarding.as_ref().map(|f| Arc::clone(&f.control));
        tokio::spawn(registry::run(
            Arc::clone(&ctx.registry),
            id.to_owned(),
            Arc::clone(&entry),
            link,
            driver,
            control.clone(),
        ));
        if let Some(control) = control {
            match control.bind(id).await {
                Ok(()) => {}
                // The control queue is down: bound when it is back.
                Err(crate::bridge::BridgeError::Unavailable) => {}
                // The session still works through this replica (a sticky
                // balancer); other replicas answer 404 until it is bound.
                Err(error) => tracing::warn!(%error, "SockJS session not bound for forwarding"),
            }
        }
    }
    Ok(entry)
}

/// A receiving request: attaches to (or opens) the session and streams
/// what the state machine gives it. A session held by another replica is
/// reached through it (see [`super::forward`]).
#[allow(clippy::too_many_arguments)]
async fn receive(
    ctx: &Arc<Sockjs>,
    id: &str,
    transport: SockjsTransport,
    kind: Kind,
    wire: Wire,
    prelude: Vec<u8>,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    peer: Option<std::net::IpAddr>,
) -> Response {
    let content_type = match transport {
        SockjsTransport::Eventsource => "text/event-stream",
        SockjsTransport::Htmlfile => "text/html; charset=UTF-8",
        _ => JAVASCRIPT,
    };
    let Some(poll) = ctx
        .registry
        .begin_poll(ctx.host.config.sockjs.max_concurrent_polls)
    else {
        crate::metrics::get()
            .sockjs
            .refused(SockjsRefusal::MaxPolls);
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many open requests");
    };
    let entry = ctx.registry.get(id);
    let mut remote = None;
    if let (None, Some(forwarding)) = (&entry, &ctx.forwarding) {
        match forwarding
            .receive(id, transport, &wire, ctx.settings.heartbeat)
            .await
        {
            Ok(found) => remote = Some(found),
            // Nobody holds it: a new session, here.
            Err(ForwardError::NotFound) => {}
            Err(ForwardError::Unavailable(reason)) => {
                tracing::debug!(%reason, "forwarded receive failed");
                return error(StatusCode::SERVICE_UNAVAILABLE, "session unavailable\n");
            }
        }
    }
    let mut response = if let Some(remote) = remote {
        remote_response(remote, transport, prelude, poll)
    } else {
        let entry = match entry {
            Some(entry) => entry,
            None => {
                if let Err(refusal) = admissible(ctx, headers) {
                    return refusal.into_response();
                }
                match start(ctx, id, transport, headers, uri, peer).await {
                    Ok(entry) => entry,
                    Err(refusal) => return refusal.into_response(),
                }
            }
        };
        local_response(entry, transport, kind, wire, prelude, poll)
    };
    set(response.headers_mut(), header::CONTENT_TYPE, content_type);
    if matches!(transport, SockjsTransport::Jsonp) {
        set(
            response.headers_mut(),
            header::X_CONTENT_TYPE_OPTIONS,
            "nosniff",
        );
    }
    response
}

/// The body of a receiving request on a local session.
fn local_response(
    entry: Arc<Entry>,
    transport: SockjsTransport,
    kind: Kind,
    wire: Wire,
    prelude: Vec<u8>,
    poll: PollGuard,
) -> Response {
    let attached = entry
        .lock()
        .attach(kind, wire.clone(), std::time::Instant::now());
    match attached {
        Attach::AnotherStillOpen(close) => {
            let mut data = prelude;
            wire.wrap(&close, &mut data);
            crate::metrics::get()
                .sockjs
                .bytes_out(transport, data.len());
            Response::new(Body::from(data))
        }
        Attach::Attached(receiver) => {
            entry.to_task.notify_one();
            let stream = ReceiverStream::new(entry, receiver, transport, Some(prelude), poll, true);
            Response::new(Body::from_stream(futures_util::stream::unfold(
                stream,
                |mut stream| async move {
                    let data = stream.next().await?;
                    Some((Ok::<Bytes, Infallible>(data), stream))
                },
            )))
        }
    }
}

/// The body of a receiving request forwarded to the session's replica:
/// the prelude, then the frames as they come.
fn remote_response(
    remote: Remote,
    transport: SockjsTransport,
    prelude: Vec<u8>,
    poll: PollGuard,
) -> Response {
    let state = (remote, Some(prelude), poll);
    Response::new(Body::from_stream(futures_util::stream::unfold(
        state,
        move |(mut remote, mut prelude, poll)| async move {
            let mut data = Vec::new();
            match prelude.take() {
                // The first write: the prelude and what came with the
                // home's first reply, at once.
                Some(prelude) => {
                    data = prelude;
                    data.extend_from_slice(&remote.take_first());
                    if data.is_empty() {
                        data.extend_from_slice(&remote.next().await.unwrap_or_default());
                    }
                }
                None => {
                    if let Some(frames) = remote.next().await {
                        data.extend_from_slice(&frames);
                    }
                }
            }
            if data.is_empty() {
                return None;
            }
            crate::metrics::get()
                .sockjs
                .bytes_out(transport, data.len());
            Some((
                Ok::<Bytes, Infallible>(Bytes::from(data)),
                (remote, None, poll),
            ))
        },
    )))
}

/// The body of a receiving request.
pub(super) struct ReceiverStream {
    entry: Arc<Entry>,
    receiver: ReceiverId,
    transport: SockjsTransport,
    /// The prelude, sent with the first frames.
    first: Option<Vec<u8>>,
    /// The state machine ended the response.
    done: bool,
    /// Count the bytes as written to a client here (not for a remote
    /// receiver: the forwarding replica counts them).
    count: bool,
    _poll: PollGuard,
}

impl ReceiverStream {
    pub(super) fn new(
        entry: Arc<Entry>,
        receiver: ReceiverId,
        transport: SockjsTransport,
        prelude: Option<Vec<u8>>,
        poll: PollGuard,
        count: bool,
    ) -> ReceiverStream {
        ReceiverStream {
            entry,
            receiver,
            transport,
            first: prelude,
            done: false,
            count,
            _poll: poll,
        }
    }

    /// Whether the state machine ended the response.
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    pub(super) async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let output = self
                .entry
                .lock()
                .take_output(self.receiver, std::time::Instant::now());
            let Some(output) = output else {
                self.done = true;
                return None;
            };
            if output.end || !output.data.is_empty() {
                // Room in the buffer, or a new deadline.
                self.entry.to_task.notify_one();
            }
            self.done = output.end;
            let mut data = self.first.take().unwrap_or_default();
            data.extend_from_slice(&output.data);
            if !data.is_empty() {
                if self.count {
                    crate::metrics::get()
                        .sockjs
                        .bytes_out(self.transport, data.len());
                }
                return Some(Bytes::from(data));
            }
            if self.done {
                return None;
            }
            self.entry.to_receiver.notified().await;
        }
    }
}

impl Drop for ReceiverStream {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the response ended.
            self.entry
                .lock()
                .detach(self.receiver, true, std::time::Instant::now());
            self.entry.to_task.notify_one();
        }
    }
}

/// Hands what a client sent to its session's STOMP session (nothing once
/// the session is closed).
pub(super) async fn deliver(entry: &Entry, messages: Vec<String>) {
    if entry.lock().is_closed() {
        return;
    }
    if let Some(inbound) = entry.inbound() {
        for message in messages.into_iter().filter(|m| !m.is_empty()) {
            if inbound.send(Bytes::from(message)).await.is_err() {
                break;
            }
        }
    }
}

/// `xhr_send` and `jsonp_send`: the messages go to the STOMP session, here
/// or on the replica that holds it.
async fn send(ctx: &Sockjs, id: &str, transport: SockjsTransport, request: Request) -> Response {
    let metrics = &crate::metrics::get().sockjs;
    let entry = ctx.registry.get(id);
    if entry.is_none() && ctx.forwarding.is_none() {
        metrics.refused(SockjsRefusal::UnknownSession);
        return error(StatusCode::NOT_FOUND, "session not found");
    }
    let limit = ctx.host.config.sockjs.max_body_bytes;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(body) = axum::body::to_bytes(request.into_body(), limit).await else {
        metrics.refused(SockjsRefusal::BodyTooLarge);
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooLarge.to_string(),
        );
    };
    metrics.bytes_in(transport, body.len());
    let parsed = if transport == SockjsTransport::JsonpSend {
        body::parse_jsonp_send(content_type.as_deref(), &body, limit)
    } else {
        body::parse_xhr_send(&body, limit)
    };
    let messages = match parsed {
        Ok(messages) => messages,
        Err(BodyError::TooLarge) => {
            metrics.refused(SockjsRefusal::BodyTooLarge);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::TooLarge.to_string(),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match (entry, &ctx.forwarding) {
        (Some(entry), _) => deliver(&entry, messages).await,
        (None, Some(forwarding)) => match forwarding.send(id, transport, messages).await {
            Ok(()) => {}
            Err(ForwardError::NotFound) => {
                metrics.refused(SockjsRefusal::UnknownSession);
                return error(StatusCode::NOT_FOUND, "session not found");
            }
            Err(ForwardError::Unavailable(reason)) => {
                tracing::debug!(%reason, "forwarded send failed");
                return error(StatusCode::SERVICE_UNAVAILABLE, "session unavailable\n");
            }
        },
        (None, None) => {}
    }
    if transport == SockjsTransport::JsonpSend {
        ([(header::CONTENT_TYPE, TEXT)], "ok").into_response()
    } else {
        let mut response = StatusCode::NO_CONTENT.into_response();
        set(response.headers_mut(), header::CONTENT_TYPE, TEXT);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    #[test]
    fn segments() {
        assert!(valid_segment("000"));
        assert!(valid_segment("abcdefgh_i-j%20"));
        assert!(!valid_segment(""));
        assert!(!valid_segment("a."));
    }
}
