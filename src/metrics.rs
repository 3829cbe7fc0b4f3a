//! Prometheus metrics, served at `/metrics`.
//!
//! Handles to every series are created once and kept in [`Metrics`], so the
//! hot paths (fan-out, frame I/O) pay an atomic add, not a registry lookup.
//! Names and meanings are listed in docs/operations.md; the Grafana dashboard
//! in `grafana/` queries exactly these.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::stomp::{Command, Version};

fn command_index(command: Command) -> usize {
    Command::ALL.iter().position(|c| *c == command).unwrap_or(0)
}

/// Kinds of errors sent to clients, for `stompgate_errors_total{kind}`.
#[derive(Debug, Clone, Copy)]
pub enum ErrorKind {
    /// Malformed frames and limits enforced by the codec.
    Protocol,
    /// Frames the session refused (missing headers, unknown ids, ...).
    Session,
    /// The broker refused something or is unavailable.
    Broker,
    /// No CONNECT in time or no heart-beat from the client.
    Timeout,
    /// Authentication or authorization refused, or the token expired.
    Auth,
    /// The client sent frames faster than allowed.
    RateLimit,
}

/// Why a connection was turned away before it became a WebSocket session,
/// for `stompgate_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The handshake's `Origin` is not in `security.allowed_origins`.
    Origin,
    /// `security.max_connections` sessions are open (HTTP 503).
    MaxConnections,
    /// `security.max_connections_per_ip` sessions are open from the
    /// client's address (HTTP 429).
    PerIp,
    /// No complete request head (or TLS handshake) within
    /// `security.handshake_timeout_ms`.
    HandshakeTimeout,
    /// The TLS handshake failed.
    Tls,
}

impl RejectReason {
    /// Every reason, in the order used to index the series.
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Origin,
        RejectReason::MaxConnections,
        RejectReason::PerIp,
        RejectReason::HandshakeTimeout,
        RejectReason::Tls,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Origin => "origin",
            RejectReason::MaxConnections => "max_connections",
            RejectReason::PerIp => "per_ip",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::Tls => "tls",
        }
    }
}

/// SockJS transports and endpoints, for the `transport` label of the
/// `stompgate_sockjs_*` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockjsTransport {
    Websocket,
    Xhr,
    XhrStreaming,
    XhrSend,
    Eventsource,
    Htmlfile,
    Jsonp,
    JsonpSend,
    /// `/info`, `/iframe.html`, the client bundle, OPTIONS.
    Static,
}

impl SockjsTransport {
    /// Every transport, in the order used to index the series.
    pub const ALL: [SockjsTransport; 9] = [
        SockjsTransport::Websocket,
        SockjsTransport::Xhr,
        SockjsTransport::XhrStreaming,
        SockjsTransport::XhrSend,
        SockjsTransport::Eventsource,
        SockjsTransport::Htmlfile,
        SockjsTransport::Jsonp,
        SockjsTransport::JsonpSend,
        SockjsTransport::Static,
    ];

    /// The `transport` label (SockJS' URL segment).
    pub fn as_str(self) -> &'static str {
        match self {
            SockjsTransport::Websocket => "websocket",
            SockjsTransport::Xhr => "xhr",
            SockjsTransport::XhrStreaming => "xhr_streaming",
            SockjsTransport::XhrSend => "xhr_send",
            SockjsTransport::Eventsource => "eventsource",
            SockjsTransport::Htmlfile => "htmlfile",
            SockjsTransport::Jsonp => "jsonp",
            SockjsTransport::JsonpSend => "jsonp_send",
            SockjsTransport::Static => "static",
        }
    }
}

/// The `stompgate_sockjs_*` series, per transport.
#[derive(Debug)]
pub struct SockjsMetrics {
    sessions: [Gauge; 9],
    requests: [Counter; 9],
    bytes_out: [Counter; 9],
    bytes_in: [Counter; 9],
    /// Requests turned away: `max_sessions`, `max_concurrent_polls`,
    /// body too large, unknown session.
    refused: [Counter; 4],
    /// Requests forwarded between replicas: [transport][outcome].
    forwarded: [[Counter; 3]; 9],
}

/// What happened to a forwarded SockJS request, for the `outcome` label of
/// `stompgate_sockjs_forwarded_total`.
#[derive(Debug, Clone, Copy)]
pub enum Forwarded {
    /// This replica forwarded a request to the session's replica.
    Sent,
    /// This replica received a request for one of its sessions.
    Received,
    /// The broker returned a forwarded request: no replica holds the
    /// session (404, or a new session here for a receiving request).
    Returned,
}

/// Why a SockJS request was refused, for `stompgate_sockjs_refused_total`.
#[derive(Debug, Clone, Copy)]
pub enum SockjsRefusal {
    MaxSessions,
    MaxPolls,
    BodyTooLarge,
    UnknownSession,
}

impl SockjsMetrics {
    fn new() -> SockjsMetrics {
        let per = |name: &'static str| {
            SockjsTransport::ALL.map(|t| metrics::counter!(name, "transport" => t.as_str()))
        };
        SockjsMetrics {
            sessions: SockjsTransport::ALL
                .map(|t| metrics::gauge!("stompgate_sockjs_sessions", "transport" => t.as_str())),
            requests: per("stompgate_sockjs_requests_total"),
            bytes_out: per("stompgate_sockjs_bytes_out_total"),
            bytes_in: per("stompgate_sockjs_bytes_in_total"),
            refused: [
                "max_sessions",
                "max_concurrent_polls",
                "body_too_large",
                "unknown_session",
            ]
            .map(|r| metrics::counter!("stompgate_sockjs_refused_total", "reason" => r)),
            forwarded: SockjsTransport::ALL.map(|t| {
                ["sent", "received", "returned"].map(|o| {
                    metrics::counter!(
                        "stompgate_sockjs_forwarded_total",
                        "transport" => t.as_str(),
                        "outcome" => o
                    )
                })
            }),
        }
    }

    /// Open sessions that started on `transport`.
    pub fn sessions(&self, transport: SockjsTransport) -> &Gauge {
        &self.sessions[transport as usize]
    }

    pub fn request(&self, transport: SockjsTransport) {
        self.requests[transport as usize].increment(1);
    }

    pub fn bytes_out(&self, transport: SockjsTransport, n: usize) {
        self.bytes_out[transport as usize].increment(n as u64);
    }

    pub fn bytes_in(&self, transport: SockjsTransport, n: usize) {
        self.bytes_in[transport as usize].increment(n as u64);
    }

    pub fn refused(&self, reason: SockjsRefusal) {
        self.refused[reason as usize].increment(1);
    }

    pub fn forwarded(&self, transport: SockjsTransport, outcome: Forwarded) {
        self.forwarded[transport as usize][outcome as usize].increment(1);
    }
}

/// What an SSE stream wrote, for `stompgate_sse_events_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseEvent {
    /// A MESSAGE with a UTF-8 body.
    Message,
    /// A MESSAGE whose body is not UTF-8 (`event: binary`, base64).
    Binary,
    /// The session's ERROR (`event: stomp-error`), before the stream ends.
    Error,
    /// A heartbeat comment (`: ping`).
    Ping,
}

/// Why an SSE request was answered with an HTTP error, for
/// `stompgate_sse_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseRefusal {
    /// No `destination`, or one the session refused as malformed (400).
    Invalid,
    /// CONNECT refused: no token, or a bad one (401).
    Auth,
    /// The subscription is not allowed (403).
    Forbidden,
    /// `sse.max_sessions` streams are open (503).
    MaxSessions,
    /// The broker refused or did not answer in time (404, 502, 504).
    Failed,
}

/// The `stompgate_sse_*` series.
#[derive(Debug)]
pub struct SseMetrics {
    pub sessions: Gauge,
    events: [Counter; 4],
    pub bytes_out: Counter,
    refused: [Counter; 5],
}

impl SseMetrics {
    fn new() -> SseMetrics {
        SseMetrics {
            sessions: metrics::gauge!("stompgate_sse_sessions"),
            events: ["message", "binary", "error", "ping"]
                .map(|k| metrics::counter!("stompgate_sse_events_total", "kind" => k)),
            bytes_out: metrics::counter!("stompgate_sse_bytes_out_total"),
            refused: ["invalid", "auth", "forbidden", "max_sessions", "failed"]
                .map(|r| metrics::counter!("stompgate_sse_refused_total", "reason" => r)),
        }
    }

    pub fn event(&self, kind: SseEvent) {
        self.events[kind as usize].increment(1);
    }

    pub fn refused(&self, reason: SseRefusal) {
        self.refused[reason as usize].increment(1);
    }
}

/// The series of the gateway.
#[derive(Debug)]
pub struct Metrics {
    pub connections: Gauge,
    sessions: [Gauge; 3],
    pub subscriptions: Gauge,
    pub amqp_broadcast_queues: Gauge,
    pub amqp_consumers: Gauge,
    /// Channels the AMQP plane holds open (consumer queues, binds,
    /// publishing, queue consumers, checks).
    pub amqp_channels: Gauge,
    /// Bindings of the plane's queues on the broker.
    pub amqp_bindings: Gauge,
    /// Binding keys in the gateway's routing tables.
    pub routing_keys: Gauge,
    /// Of those, keys no confirmed binding serves yet (neither their own
    /// nor their exchange's catch-all): 0 once every subscription is live.
    pub routing_keys_waiting: Gauge,
    /// Deliveries of the plane's queues routed to local subscriptions, and
    /// those that matched none.
    pub plane_routed: Counter,
    pub plane_unmatched: Counter,
    /// Messages waiting in the plane's queues on the broker (sampled).
    pub plane_lag: Gauge,
    frames_in: Vec<Counter>,
    frames_out: Vec<Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub delivered_broadcast: Counter,
    pub delivered_queue: Counter,
    pub publish_confirm_seconds: Histogram,
    pub amqp_connections_up: Gauge,
    pub amqp_reconnects: Counter,
    /// `auth.mode = "rabbitmq"`: AMQP logins made to check credentials
    /// (cache misses).
    pub rabbitmq_logins: Counter,
    /// `auth.mode = "rabbitmq"`: permission records read from the
    /// management API.
    pub rabbitmq_permission_fetches: Counter,
    pub slow_client_dropped: Counter,
    pub slow_client_disconnected: Counter,
    /// Sessions closed because a write to the client made no progress
    /// within `limits.write_timeout_ms` (a client that stopped reading).
    pub slow_client_stalled: Counter,
    /// Bytes waiting in outbound queues, all clients together.
    pub outbound_bytes: Gauge,
    errors: [Counter; 6],
    rejected: [Counter; 5],
    pub draining: Gauge,
    pub sockjs: SockjsMetrics,
    pub sse: SseMetrics,
}

impl Metrics {
    fn new() -> Metrics {
        let per_command = |name: &'static str| {
            Command::ALL
                .iter()
                .map(|c| metrics::counter!(name, "command" => c.as_str()))
                .collect::<Vec<_>>()
        };
        Metrics {
            connections: metrics::gauge!("stompgate_connections"),
            sessions: [
                metrics::gauge!("stompgate_sessions", "version" => "1.0"),
                metrics::gauge!("stompgate_sessions", "version" => "1.1"),
                metrics::gauge!("stompgate_sessions", "version" => "1.2"),
            ],
            subscriptions: metrics::gauge!("stompgate_subscriptions"),
            amqp_broadcast_queues: metrics::gauge!("stompgate_amqp_queues", "kind" => "broadcast"),
            amqp_consumers: metrics::gauge!("stompgate_amqp_queues", "kind" => "consumer"),
            amqp_channels: metrics::gauge!("stompgate_amqp_channels"),
            amqp_bindings: metrics::gauge!("stompgate_amqp_bindings"),
            routing_keys: metrics::gauge!("stompgate_routing_keys"),
            routing_keys_waiting: metrics::gauge!("stompgate_routing_keys_waiting"),
            plane_routed: metrics::counter!("stompgate_plane_deliveries_total", "result" => "routed"),
            plane_unmatched: metrics::counter!("stompgate_plane_deliveries_total", "result" => "unmatched"),
            plane_lag: metrics::gauge!("stompgate_plane_lag_messages"),
            frames_in: per_command("stompgate_frames_in_total"),
            frames_out: per_command("stompgate_frames_out_total"),
            bytes_in: metrics::counter!("stompgate_bytes_in_total"),
            bytes_out: metrics::counter!("stompgate_bytes_out_total"),
            delivered_broadcast: metrics::counter!("stompgate_messages_delivered_total", "kind" => "broadcast"),
            delivered_queue: metrics::counter!("stompgate_messages_delivered_total", "kind" => "queue"),
            publish_confirm_seconds: metrics::histogram!("stompgate_publish_confirm_seconds"),
            amqp_connections_up: metrics::gauge!("stompgate_amqp_connections_up"),
            amqp_reconnects: metrics::counter!("stompgate_amqp_reconnects_total"),
            rabbitmq_logins: metrics::counter!("stompgate_rabbitmq_requests_total", "kind" => "login"),
            rabbitmq_permission_fetches: metrics::counter!("stompgate_rabbitmq_requests_total", "kind" => "permissions"),
            slow_client_dropped: metrics::counter!("stompgate_slow_client_total", "action" => "drop"),
            slow_client_disconnected: metrics::counter!("stompgate_slow_client_total", "action" => "disconnect"),
            slow_client_stalled: metrics::counter!("stompgate_slow_client_total", "action" => "stalled"),
            outbound_bytes: metrics::gauge!("stompgate_outbound_queued_bytes"),
            errors: [
                metrics::counter!("stompgate_errors_total", "kind" => "protocol"),
                metrics::counter!("stompgate_errors_total", "kind" => "session"),
                metrics::counter!("stompgate_errors_total", "kind" => "broker"),
                metrics::counter!("stompgate_errors_total", "kind" => "timeout"),
                metrics::counter!("stompgate_errors_total", "kind" => "auth"),
                metrics::counter!("stompgate_errors_total", "kind" => "rate_limit"),
            ],
            rejected: RejectReason::ALL
                .map(|r| metrics::counter!("stompgate_rejected_total", "reason" => r.as_str())),
            draining: metrics::gauge!("stompgate_draining"),
            sockjs: SockjsMetrics::new(),
            sse: SseMetrics::new(),
        }
    }

    pub fn session(&self, version: Version) -> &Gauge {
        match version {
            Version::V1_0 => &self.sessions[0],
            Version::V1_1 => &self.sessions[1],
            Version::V1_2 => &self.sessions[2],
        }
    }

    pub fn frame_in(&self, command: Command) {
        self.frames_in[command_index(command)].increment(1);
    }

    pub fn frame_out(&self, command: Command) {
        self.frames_out[command_index(command)].increment(1);
    }

    pub fn frames_out(&self, command: Command, n: u64) {
        self.frames_out[command_index(command)].increment(n);
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].increment(1);
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].increment(1);
    }
}

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle for rendering; `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("stompgate_publish_confirm_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// The gateway's series (the recorder is installed first if needed).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let _ = install();
        Metrics::new()
    })
}
