//! The HTTP listener: the WebSocket endpoint and the health endpoints, all on
//! one port.

use std::future::Future;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

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
}

impl Gateway {
    /// Creates the gateway and starts connecting to the broker.
    pub fn start(config: Config) -> Arc<Gateway> {
        let bridge = Bridge::start(&config.amqp.url, config.amqp.connections);
        Arc::new(Gateway {
            session_config: Arc::new(SessionConfig::from_config(&config)),
            config,
            bridge,
        })
    }
}

/// The HTTP routes of a gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(&gateway.config.ws_path, get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
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
pub async fn serve_gateway(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn upgrade(State(gateway): State<Arc<Gateway>>, ws: WebSocketUpgrade) -> Response {
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
    if gateway.bridge.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "AMQP connection down\n")
    }
}
