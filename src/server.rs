//! The HTTP listener: the WebSocket endpoint and the health endpoints, all on
//! one port (and the demo pages when `demo.enabled`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::config::Config;
use crate::session::SessionConfig;
use crate::transport::host::{BrokerFactory, Host};
use crate::transport::{driver, listener, websocket};

/// What every connection of the process shares.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub session_config: Arc<SessionConfig>,
    /// What the transports share: the driver's context, admission,
    /// connection tracking, broker sessions.
    pub host: Arc<Host>,
    /// The default vhost's bridge (the one `/readyz` judges).
    pub bridge: Arc<Bridge>,
    /// The bridges of every served vhost (CONNECT's `host` selects one).
    pub vhosts: Arc<crate::bridge::vhosts::Vhosts>,
    /// `auth.mode = "rabbitmq"`: credentials and permissions from RabbitMQ.
    pub rabbit_auth: Option<Arc<crate::auth::rabbit::RabbitAuth>>,
    prometheus: Option<PrometheusHandle>,
    /// Cancelled when the graceful drain starts.
    pub draining: CancellationToken,
    /// The TLS configuration, when `tls.cert_file` and `tls.key_file` are set.
    tls: Option<Arc<rustls::ServerConfig>>,
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
        let rabbit_auth = (config.auth.mode == crate::config::AuthMode::Rabbitmq).then(|| {
            crate::auth::rabbit::RabbitAuth::start(config.auth.rabbitmq.clone(), urls.clone())
        });
        let vhosts = crate::bridge::vhosts::Vhosts::start(
            crate::bridge::vhosts::BridgeSpec {
                urls,
                connections: config.amqp.connections,
                exchanges: vec![config.auth.user_exchange.clone()],
                plane: crate::bridge::plane::PlaneConfig {
                    shards: config.amqp.plane_queues,
                    prefetch: config.amqp.plane_prefetch,
                    publish_channels: config.amqp.publish_channels,
                    consumer_channels: config.amqp.consumer_channels,
                    timeout: std::time::Duration::from_millis(config.amqp.broker_timeout_ms),
                    topic_exchanges: Vec::new(),
                    bindings: crate::bridge::bindings::BindingPolicy {
                        default: config.amqp.binding_mode,
                        wildcard: config.amqp.wildcard_exchanges.clone(),
                        per_key: config.amqp.per_key_exchanges.clone(),
                        auto_max_rate: f64::from(config.amqp.auto_max_rate),
                        auto_window: std::time::Duration::from_millis(config.amqp.auto_window_ms),
                    },
                    reconnect_max: std::time::Duration::from_millis(config.amqp.reconnect_max_ms),
                },
            },
            &config.amqp.vhosts,
        );
        let bridge = Arc::clone(vhosts.default_bridge());
        // Resumable destinations: on the default vhost only.
        if let Some(history) = crate::bridge::history::History::start(
            Arc::clone(&bridge.pool),
            &config.history,
            Duration::from_millis(config.amqp.broker_timeout_ms),
        ) {
            bridge.plane.set_history(history);
        }
        let session_config = Arc::new(session_config);
        let draining = CancellationToken::new();
        let driver = driver::Context {
            session: Arc::clone(&session_config),
            limits: config.limits.clone(),
            max_frames_per_second: config.security.max_frames_per_second,
            throttle: config.security.rate_limit_policy == crate::config::RateLimitPolicy::Throttle,
            drain: draining.clone(),
            drain_window: Duration::from_millis(config.drain_window_ms),
            rabbit_auth: rabbit_auth.clone(),
        };
        let brokers: BrokerFactory = {
            let bridge = Arc::clone(&bridge);
            let vhosts = Arc::clone(&vhosts);
            let timeout = Duration::from_millis(config.amqp.broker_timeout_ms);
            Box::new(move || bridge.session().with_vhosts(Arc::clone(&vhosts), timeout))
        };
        let mut host = Host::new(config.clone(), driver, draining.clone(), brokers);
        // SockJS without sticky sessions: the replica's control queue
        // (src/bridge/control.rs) on the default vhost's connections.
        let sockjs = &config.sockjs;
        if sockjs.enabled && sockjs.forward {
            let limit = sockjs.max_forwarded_requests;
            let (control, requests) = crate::bridge::control::Control::start(
                Arc::clone(&bridge.pool),
                crate::bridge::control::ControlConfig {
                    exchange: sockjs.forward_exchange.clone(),
                    timeout: Duration::from_millis(sockjs.forward_timeout_ms),
                    max_pending: limit,
                    max_incoming: limit,
                    // A streaming response ends at the response limit.
                    max_reply_bytes: sockjs.response_limit_bytes.saturating_add(64 * 1024),
                    max_message_bytes: sockjs
                        .max_body_bytes
                        .max(sockjs.response_limit_bytes)
                        .saturating_add(64 * 1024),
                    prefetch: 256,
                },
            );
            host = host.with_forwarding(control, requests);
        }
        let host = Arc::new(host);
        Ok(Arc::new(Gateway {
            session_config,
            host,
            config,
            bridge,
            vhosts,
            rabbit_auth,
            prometheus,
            draining,
            tls,
        }))
    }

    /// Open connections (sessions running in a driver).
    pub fn connections(&self) -> usize {
        self.host.connections()
    }

    /// Whether the listener speaks TLS (`wss://`).
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Sessions admitted under the connection limits, not yet released.
    pub fn admitted(&self) -> usize {
        self.host.admitted()
    }

    /// Starts the graceful drain: not ready any more, and every session
    /// closes at a random moment within the drain window.
    pub fn begin_drain(&self) {
        crate::metrics::get().draining.set(1.0);
        self.draining.cancel();
    }

    /// Waits until every connection closed, at most `limit`.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        self.host.wait_drained(limit).await
    }
}

/// The HTTP routes of a gateway (`/metrics` only when no
/// `metrics_listen` is configured).
pub fn router(gateway: Arc<Gateway>) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let mut router = if gateway.config.metrics_listen.is_none() {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    // The resumable-subscription helper for @stomp/stompjs
    // (assets/stompgate-resume.js; docs/protocol.md, "Resuming").
    router = router.route(RESUME_JS_PATH, get(resume_js));
    // The demo pages (src/demo.rs), only when `demo.enabled`.
    if gateway.config.demo.enabled {
        router = router.merge(crate::demo::router(&gateway.config));
    }
    // The transports' routes, over what the host lends them.
    let mut transports = websocket::router(&gateway.host);
    // SockJS fallbacks (src/transport/sockjs/), only when `sockjs.enabled`.
    if gateway.config.sockjs.enabled {
        transports = transports.merge(crate::transport::sockjs::router(&gateway.host));
    }
    // Server-Sent Events (src/transport/sse.rs), only when `sse.enabled`.
    if gateway.config.sse.enabled {
        transports = transports.merge(crate::transport::sse::router(&gateway.host));
    }
    router.with_state(gateway).merge(transports)
}

/// Where the gateway serves the resume helper.
pub const RESUME_JS_PATH: &str = "/stompgate-resume.js";

async fn resume_js() -> impl axum::response::IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/stompgate-resume.js"),
    )
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

async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    if gateway.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if gateway.bridge.is_blocked() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "broker blocks publishing (memory or disk alarm)\n",
        )
    } else if !gateway.bridge.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "AMQP connection down\n")
    } else if gateway
        .host
        .forwarding
        .as_ref()
        .is_some_and(|control| control.queue().is_none())
    {
        // Sessions of other replicas cannot be reached from here.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "SockJS control queue down\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
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
