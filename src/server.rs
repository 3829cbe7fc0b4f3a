//! The HTTP listener: the WebSocket endpoint and the health endpoints, all on
//! one port.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
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
use crate::session::SessionConfig;
use crate::transport::websocket;

/// What every connection of the process shares.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub session_config: Arc<SessionConfig>,
    pub bridge: Arc<Bridge>,
    prometheus: Option<PrometheusHandle>,
    /// Cancelled when the graceful drain starts.
    pub draining: CancellationToken,
    connections: AtomicUsize,
    all_closed: Notify,
}

impl Gateway {
    /// Creates the gateway and starts connecting to the broker.
    pub fn start(config: Config) -> Arc<Gateway> {
        let prometheus = crate::metrics::install();
        let bridge = Bridge::start(&config.amqp.url, config.amqp.connections);
        Arc::new(Gateway {
            session_config: Arc::new(SessionConfig::from_config(&config)),
            config,
            bridge,
            prometheus,
            draining: CancellationToken::new(),
            connections: AtomicUsize::new(0),
            all_closed: Notify::new(),
        })
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

/// The HTTP routes of a gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(&gateway.config.ws_path, get(upgrade))
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
    let gateway = Gateway::start(config);
    serve_gateway(listener, gateway, shutdown).await
}

/// Serves an existing gateway (tests use this to look inside it).
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
    let drain = Arc::clone(&gateway);
    axum::serve(listener, router(Arc::clone(&gateway)))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!(connections = drain.connections(), "draining");
            drain.begin_drain();
        })
        .await?;
    let limit = Duration::from_millis(gateway.config.drain_window_ms) + Duration::from_secs(10);
    if !gateway.wait_drained(limit).await {
        tracing::warn!(
            connections = gateway.connections(),
            "drain window over, exiting anyway"
        );
    }
    Ok(())
}

async fn upgrade(State(gateway): State<Arc<Gateway>>, ws: WebSocketUpgrade) -> Response {
    if gateway.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let limits = &gateway.config.limits;
    // The codec enforces STOMP's limits; the WebSocket layer only needs to
    // bound one message (a frame may span several, and one may hold several).
    let max_message = limits.max_frame_bytes + 64 * 1024;
    ws.protocols(websocket::SUBPROTOCOLS)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| websocket::run(socket, gateway))
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    if gateway.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
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
