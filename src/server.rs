//! The HTTP listener: the WebSocket endpoint and the health endpoints, all on
//! one port (and the demo pages when `demo.enabled`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::config::Config;
use crate::metrics::RejectReason;
use crate::session::SessionConfig;
use crate::transport::{driver, listener, websocket};

/// What every connection of the process shares.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub session_config: Arc<SessionConfig>,
    /// What the session driver of every connection shares.
    pub driver: driver::Context,
    pub bridge: Arc<Bridge>,
    prometheus: Option<PrometheusHandle>,
    /// Cancelled when the graceful drain starts.
    pub draining: CancellationToken,
    connections: AtomicUsize,
    all_closed: Notify,
    /// WebSocket sessions admitted under `security.max_connections` and
    /// `security.max_connections_per_ip`.
    admitted: Mutex<Admitted>,
    /// The TLS configuration, when `tls.cert_file` and `tls.key_file` are set.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Sessions admitted, in all and per client address.
#[derive(Debug, Default)]
struct Admitted {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why [`Gateway::admit`] turned a WebSocket session away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// `security.max_connections` sessions are open.
    MaxConnections,
    /// `security.max_connections_per_ip` sessions are open from this address.
    PerIp,
}

impl Gateway {
    /// Creates the gateway and starts connecting to the broker.
    pub fn start(config: Config) -> std::io::Result<Arc<Gateway>> {
        let session_config = SessionConfig::from_config(&config).map_err(std::io::Error::other)?;
        let tls = listener::load_tls(&config.tls)?;
        let prometheus = crate::metrics::install();
        let urls = if config.amqp.urls.is_empty() {
            vec![config.amqp.url.clone()]
        } else {
            config.amqp.urls.clone()
        };
        let bridge = Bridge::start(
            urls,
            config.amqp.connections,
            vec![config.auth.user_exchange.clone()],
            crate::bridge::plane::PlaneConfig {
                shards: config.amqp.plane_queues,
                prefetch: config.amqp.plane_prefetch,
                publish_channels: config.amqp.publish_channels,
                consumer_channels: config.amqp.consumer_channels,
                timeout: std::time::Duration::from_millis(config.amqp.broker_timeout_ms),
                topic_exchanges: Vec::new(),
            },
        );
        let session_config = Arc::new(session_config);
        let draining = CancellationToken::new();
        let driver = driver::Context {
            session: Arc::clone(&session_config),
            limits: config.limits.clone(),
            max_frames_per_second: config.security.max_frames_per_second,
            throttle: config.security.rate_limit_policy == crate::config::RateLimitPolicy::Throttle,
            drain: draining.clone(),
            drain_window: Duration::from_millis(config.drain_window_ms),
        };
        Ok(Arc::new(Gateway {
            session_config,
            driver,
            config,
            bridge,
            prometheus,
            draining,
            connections: AtomicUsize::new(0),
            all_closed: Notify::new(),
            admitted: Mutex::new(Admitted::default()),
            tls,
        }))
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Counts a connection for as long as the guard lives.
    pub fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        crate::metrics::get().connections.increment(1.0);
        ConnectionGuard(Arc::clone(self))
    }

    /// Whether the listener speaks TLS (`wss://`).
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Admits one WebSocket session from `ip` under the connection limits
    /// (`security.max_connections`, `security.max_connections_per_ip`; 0 is
    /// unlimited). The session counts until the returned guard is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, AdmitError> {
        let ip = ip.to_canonical();
        let security = &self.config.security;
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        if security.max_connections != 0 && admitted.total >= security.max_connections {
            return Err(AdmitError::MaxConnections);
        }
        let from_ip = admitted.per_ip.get(&ip).copied().unwrap_or(0);
        if security.max_connections_per_ip != 0 && from_ip >= security.max_connections_per_ip {
            return Err(AdmitError::PerIp);
        }
        admitted.total += 1;
        admitted.per_ip.insert(ip, from_ip + 1);
        Ok(Admission {
            gateway: Arc::clone(self),
            ip,
        })
    }

    /// Sessions admitted by [`Gateway::admit`] and not yet released.
    pub fn admitted(&self) -> usize {
        self.admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Starts the graceful drain: not ready any more, and every session
    /// closes at a random moment within the drain window.
    pub fn begin_drain(&self) {
        crate::metrics::get().draining.set(1.0);
        self.draining.cancel();
    }

    /// Waits until every connection closed, at most `limit`.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.all_closed.notified();
            if self.connections() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.connections() == 0;
            }
        }
    }
}

/// Keeps a connection counted; see [`Gateway::track_connection`].
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Gateway>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        crate::metrics::get().connections.decrement(1.0);
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Keeps a session admitted; see [`Gateway::admit`].
#[derive(Debug)]
pub struct Admission {
    gateway: Arc<Gateway>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut admitted = self
            .gateway
            .admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        admitted.total = admitted.total.saturating_sub(1);
        if let Some(n) = admitted.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                admitted.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The HTTP routes of a gateway (`/metrics` only when no
/// `metrics_listen` is configured).
pub fn router(gateway: Arc<Gateway>) -> Router {
    let router = Router::new()
        .route(&gateway.config.ws_path, get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let mut router = if gateway.config.metrics_listen.is_none() {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    // The demo pages (src/demo.rs), only when `demo.enabled`.
    if gateway.config.demo.enabled {
        router = router.merge(crate::demo::router(&gateway.config));
    }
    // SockJS fallbacks (src/transport/sockjs/), only when `sockjs.enabled`.
    if gateway.config.sockjs.enabled {
        router = router.merge(crate::transport::sockjs::router(&gateway));
    }
    router.with_state(gateway)
}

/// The routes of the separate `metrics_listen` address.
fn metrics_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gateway = Gateway::start(config)?;
    serve_gateway(listener, gateway, shutdown).await
}

/// Serves an existing gateway (tests use this to look inside it).
///
/// Each TCP connection gets `security.handshake_timeout_ms` to finish its
/// TLS handshake (when `tls` is configured: TLS only) and its first HTTP
/// request head; see [`listener::run`].
///
/// When `shutdown` resolves the gateway drains: it stops accepting, reports
/// not ready, lets every session finish its pending receipts and closes it
/// with `ERROR message:server shutting down` at a random moment within the
/// drain window; it returns once all are closed (or the window plus a grace
/// period passed).
pub async fn serve_gateway(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Bound before anything is served: a wrong address fails the start.
    let metrics_server = match gateway.config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("metrics_listen {addr}: {e}"))
            })?;
            let app = metrics_router(Arc::clone(&gateway));
            Some(tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::warn!(%error, "metrics listener failed");
                }
            }))
        }
        None => None,
    };
    let timeout_ms = gateway.config.security.handshake_timeout_ms;
    let config = listener::ListenerConfig {
        handshake_timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        tls: gateway.tls.clone(),
        draining: gateway.draining.clone(),
    };
    listener::run(listener, router(Arc::clone(&gateway)), config, shutdown).await;
    tracing::info!(connections = gateway.connections(), "draining");
    gateway.begin_drain();
    let limit = Duration::from_millis(gateway.config.drain_window_ms) + Duration::from_secs(10);
    if !gateway.wait_drained(limit).await {
        tracing::warn!(
            connections = gateway.connections(),
            "drain window over, exiting anyway"
        );
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    Ok(())
}

pub(crate) async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if gateway.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let metrics = crate::metrics::get();
    if !origin_allowed(&gateway.config.security.allowed_origins, &headers) {
        metrics.rejected(RejectReason::Origin);
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let admission = match gateway.admit(peer.ip()) {
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
    let handshake = websocket::Handshake {
        token: handshake_token(&headers, &uri),
        ping_every: gateway.config.security.ws_ping_interval(),
    };
    let limits = &gateway.config.limits;
    // The codec enforces STOMP's limits; the WebSocket layer only needs to
    // bound one message (a frame may span several, and one may hold several).
    let max_message = limits.max_frame_bytes + 64 * 1024;
    ws.protocols(websocket::SUBPROTOCOLS)
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            // Admitted until the session ends (or the upgrade fails, which
            // drops this closure unrun).
            let _admission = admission;
            let _connection = gateway.track_connection();
            let broker = gateway.bridge.session();
            websocket::run(socket, &gateway.driver, broker, handshake).await;
        })
}

/// A refused handshake: `status` with a `text/plain` reason.
fn refuse(status: StatusCode, reason: &'static str) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        reason,
    )
        .into_response()
}

/// Whether the handshake's `Origin` (every one, if repeated) is in
/// `allowed`; an empty list allows any, and no `Origin` (non-browser
/// clients) is allowed. Compared ASCII case-insensitively, without a
/// trailing `/`.
pub(crate) fn origin_allowed(allowed: &[String], headers: &axum::http::HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    headers
        .get_all(axum::http::header::ORIGIN)
        .iter()
        .all(|origin| match origin.to_str() {
            Ok(origin) => {
                let origin = origin.trim().trim_end_matches('/');
                allowed
                    .iter()
                    .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(origin))
            }
            Err(_) => false,
        })
}

/// A token from `Authorization: Bearer <token>` or `?access_token=<token>`
/// (browsers cannot set headers on a WebSocket handshake).
pub(crate) fn handshake_token(
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> Option<String> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Some(token.trim().to_owned());
        }
    }
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "access_token").then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes (and `+` as space) of a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    if gateway.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if gateway.bridge.is_blocked() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "broker blocks publishing (memory or disk alarm)\n",
        )
    } else if gateway.bridge.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "AMQP connection down\n")
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    match &gateway.prometheus {
        Some(handle) => (
            [("content-type", "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response(),
    }
}
