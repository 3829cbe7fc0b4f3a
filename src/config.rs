//! Gateway configuration: a TOML file, overridden by `STOMPGATE_*` environment
//! variables, overridden by command-line flags.
//!
//! Nested keys map to variables with `__` between levels, e.g.
//! `limits.max_frame_bytes` is `STOMPGATE_LIMITS__MAX_FRAME_BYTES`. The two
//! settings everyone changes also have plain variables and flags:
//! `STOMPGATE_LISTEN` / `--listen` and `STOMPGATE_AMQP_URL` / `--amqp-url`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Everything the gateway can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP/WebSocket listener.
    pub listen: SocketAddr,
    /// Path of the WebSocket endpoint.
    pub ws_path: String,
    /// Serve `/metrics` (with `/healthz` and `/readyz`) on this address
    /// only, not on `listen` (which faces the internet); unset: `/metrics`
    /// is on `listen`, as the other endpoints.
    pub metrics_listen: Option<SocketAddr>,
    pub amqp: AmqpConfig,
    pub limits: Limits,
    pub heartbeat: HeartbeatConfig,
    /// Other names CONNECT's `host` may give for the default virtual host
    /// (the vhost of `amqp.url`), e.g. the gateway's own hostname. When set,
    /// a CONNECT without `host` is refused (as before virtual hosts were
    /// selected by `host`). A served vhost (`amqp.vhosts`) is always accepted.
    pub allowed_hosts: Vec<String>,
    /// What a CONNECT whose `host` is neither a served vhost nor in
    /// `allowed_hosts` gets: `refuse` (ERROR `Virtual host '<host>' access
    /// denied`, as RabbitMQ's Web-STOMP) or `default` (the default vhost:
    /// `host` ignored, as stompgate did before virtual hosts; only when
    /// `allowed_hosts` is empty).
    pub unknown_host: UnknownHost,
    /// On SIGTERM, sessions are closed at random moments spread over this
    /// window (ms), so that clients do not all reconnect at the same instant.
    pub drain_window_ms: u64,
    pub auth: AuthConfig,
    pub security: SecurityConfig,
    pub tls: TlsConfig,
    pub demo: DemoConfig,
    pub sockjs: SockjsConfig,
    pub sse: SseConfig,
    /// Resumable broadcast destinations backed by RabbitMQ streams (see
    /// docs/protocol.md, "Resuming after a reconnect").
    pub history: HistoryConfig,
}

/// Who may connect and what they may do (see docs/security.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Who checks credentials: `gateway` (the user list, JWTs, anonymous
    /// access, as configured here) or `rabbitmq` (CONNECT's login and
    /// passcode are checked by RabbitMQ, and the user's permissions there
    /// are enforced on every SUBSCRIBE and SEND; see `[auth.rabbitmq]`).
    pub mode: AuthMode,
    /// Settings of `mode = "rabbitmq"`.
    pub rabbitmq: RabbitAuthConfig,
    /// Let clients in without credentials. Off unless set: a gateway with
    /// no JWT keys, no users and this off refuses every CONNECT.
    pub anonymous: bool,
    /// JWT verification; tokens come from CONNECT's `passcode`, an
    /// `Authorization: Bearer` header or an `access_token` query parameter.
    pub jwt: Option<JwtConfig>,
    /// A fixed login/passcode list, for simple setups.
    pub users: Vec<UserConfig>,
    /// Per-destination rules. When any is configured, whatever no rule
    /// allows is denied.
    pub rules: Vec<RuleConfig>,
    /// Topic exchange of `/user/` destinations: a session of user U
    /// subscribing to `/user/queue/<name>` receives what is published there
    /// with routing key `<U>.<name>` (U percent-encoded). Declared (durable)
    /// by the gateway.
    pub user_exchange: String,
}

/// See [`AuthConfig::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Gateway,
    Rabbitmq,
}

/// `auth.mode = "rabbitmq"`: credentials checked by RabbitMQ (a short AMQP
/// login), permissions read from its management API.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitAuthConfig {
    /// Base URL of the management API (`http://` only), reached with the
    /// gateway's own credentials below.
    pub management_url: String,
    /// A management user that may read every user's permissions (tag
    /// `administrator`).
    pub management_user: String,
    pub management_password: String,
    /// How long a login result (good or bad) and a permission record are
    /// used before RabbitMQ is asked again; a revoked permission takes
    /// effect within this time.
    pub cache_ttl_ms: u64,
    /// Entries of each cache (logins, permission records not in use).
    pub cache_max_entries: usize,
    /// Bound on one login or one management API request.
    pub timeout_ms: u64,
    /// Login and passcode used when CONNECT has no `login` (or no
    /// `passcode`) header, as Web-STOMP's `stomp.default_user` /
    /// `stomp.default_pass` (RabbitMQ's default there is guest/guest).
    /// Unset (the default): such a CONNECT is refused.
    pub default_login: Option<String>,
    pub default_passcode: Option<String>,
}

impl std::fmt::Debug for RabbitAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitAuthConfig")
            .field("management_url", &self.management_url)
            .field("management_user", &self.management_user)
            .field("management_password", &"<hidden>")
            .field("cache_ttl_ms", &self.cache_ttl_ms)
            .field("cache_max_entries", &self.cache_max_entries)
            .field("timeout_ms", &self.timeout_ms)
            .field("default_login", &self.default_login)
            .field(
                "default_passcode",
                &self.default_passcode.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

impl Default for RabbitAuthConfig {
    fn default() -> Self {
        RabbitAuthConfig {
            management_url: "http://127.0.0.1:15672".to_owned(),
            management_user: "guest".to_owned(),
            management_password: "guest".to_owned(),
            cache_ttl_ms: 5_000,
            cache_max_entries: 10_000,
            timeout_ms: 5_000,
            default_login: None,
            default_passcode: None,
        }
    }
}

/// JWT keys and checks.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// PEM file with an RSA public key (RS256).
    pub rs256_public_key_file: Option<std::path::PathBuf>,
    /// PEM file with an EC P-256 public key (ES256).
    pub es256_public_key_file: Option<std::path::PathBuf>,
    /// A JWKS file (JSON Web Key Set); keys are chosen by the token's `kid`.
    pub jwks_file: Option<std::path::PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of), when set.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// The claim that names the user (for `/user/` destinations and rules).
    pub user_claim: Option<String>,
}

/// One login/passcode pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub login: String,
    pub passcode: String,
}

/// One authorization rule: `verbs` on destinations matching `destination`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `subscribe`, `send`, or both.
    pub verbs: Vec<String>,
    /// A destination pattern: `*` matches any run of characters except `/`;
    /// `{user}`, `{sub}` and `{claims.NAME}` are replaced by the session's
    /// values (a value holding `*`, `#` or `/` makes the rule not apply).
    pub destination: String,
    /// Queue arguments (`x-*` headers, and `durable` / `x-queue-name` for
    /// queues of their own) a SUBSCRIBE allowed by this rule may set.
    #[serde(default)]
    pub queue_arguments: Vec<String>,
}

/// Abuse limits on the HTTP side.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Allowed `Origin` values of the WebSocket handshake (cross-site
    /// WebSocket hijacking); empty allows any. A handshake without Origin
    /// (non-browser clients) is allowed.
    pub allowed_origins: Vec<String>,
    /// Open connections per gateway (0: unlimited); beyond, HTTP 503.
    pub max_connections: usize,
    /// Open connections per client IP (0: unlimited); beyond, HTTP 429.
    /// This is the TCP peer address: behind a load balancer every client
    /// shares the balancer's, so keep it 0 there.
    pub max_connections_per_ip: usize,
    /// Time from accepting a TCP connection to the end of the HTTP request
    /// head of the handshake.
    pub handshake_timeout_ms: u64,
    /// Frames per second one session may send (0: unlimited), with bursts
    /// of twice that; beyond, `rate_limit_policy` applies.
    pub max_frames_per_second: u32,
    /// What happens to a session sending faster than
    /// `max_frames_per_second`: `throttle` (the gateway reads its socket
    /// more slowly, nothing is lost) or `disconnect` (ERROR and close).
    pub rate_limit_policy: RateLimitPolicy,
    /// Sessions without heart-beats (STOMP 1.0, or `heart-beat:0,0`) get a
    /// WebSocket ping whenever nothing was written for this long, and are
    /// closed when nothing (not even a pong) arrives for twice as long:
    /// half-open connections do not stay forever. 0: no pings.
    pub ws_ping_interval_ms: u64,
}

impl SecurityConfig {
    pub fn ws_ping_interval(&self) -> Option<Duration> {
        (self.ws_ping_interval_ms > 0).then(|| Duration::from_millis(self.ws_ping_interval_ms))
    }
}

/// See [`SecurityConfig::rate_limit_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitPolicy {
    Throttle,
    Disconnect,
}

/// TLS (`wss://`), on when both files are set.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key.
    pub key_file: Option<std::path::PathBuf>,
}

/// The demo pages under `/demo/` (README, "The demos"). Off unless set:
/// production gateways serve no pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo pages (`/demo/...`, from `dir`) and `/demo/config.json`.
    pub enabled: bool,
    /// Directory holding the pages' files (the repository's `demo/`);
    /// relative paths are from the working directory.
    pub dir: std::path::PathBuf,
    /// Base URL of the demo backend's HTTP API (`examples/demo-backend`),
    /// which the pages call cross-origin; the pages learn it from
    /// `/demo/config.json`.
    pub backend_url: String,
}

/// The SockJS server (HTTP fallbacks for browsers without WebSocket; see
/// docs/configuration.md and `src/transport/sockjs/`). Off unless set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SockjsConfig {
    /// Serve SockJS under `prefix`.
    pub enabled: bool,
    /// Base path of the SockJS service (what clients pass to `new SockJS`).
    pub prefix: String,
    /// Offer the `websocket` transport (`/info` says `websocket:false`
    /// otherwise, and the client falls back to HTTP at once).
    pub websocket: bool,
    /// A receiver that wrote nothing for this long gets an `h` frame.
    pub heartbeat_ms: u64,
    /// A session without a receiving request is closed after this long.
    pub disconnect_delay_ms: u64,
    /// Bytes after which a streaming response (xhr_streaming, eventsource,
    /// htmlfile) ends and the client opens the next one.
    pub response_limit_bytes: usize,
    /// HTTP (non-WebSocket) SockJS sessions open at once; beyond, 503.
    pub max_sessions: usize,
    /// Receiving requests (polls and streams) open at once; beyond, 503.
    pub max_concurrent_polls: usize,
    /// Largest `xhr_send` / `jsonp_send` body; beyond, 413.
    pub max_body_bytes: usize,
    /// Bytes of messages one session buffers while no receiver takes them
    /// (beyond, the client's outbound queue fills and
    /// `limits.slow_client_policy` applies).
    pub max_buffered_bytes: usize,
    /// URL of the sockjs-client bundle that `/iframe.html` loads. Unset:
    /// `<prefix>/sockjs.min.js`, served by the gateway from `client_file`.
    pub client_url: Option<String>,
    /// The sockjs-client bundle (`dist/sockjs.min.js` of the npm package)
    /// served at `<prefix>/sockjs.min.js`. Unset: that path is 404.
    pub client_file: Option<std::path::PathBuf>,
    /// Set a `JSESSIONID` cookie on session requests (`/info` then says
    /// `cookie_needed:true`), for load balancers that stick on it. Off:
    /// IE 8/9 can use XDomainRequest, which sends no cookies.
    pub jsessionid: bool,
    /// Forward requests for sessions held by another replica over RabbitMQ
    /// (no sticky sessions needed: a per-replica control queue, one binding
    /// per session; see docs/protocol.md). Off: such requests get 404, and
    /// the load balancer must keep a session on one replica
    /// (deploy/haproxy-sockjs.cfg).
    pub forward: bool,
    /// The direct exchange the gateway declares for forwarding.
    pub forward_exchange: String,
    /// How long a forwarded request waits for the session's replica to
    /// answer (503 when it does not; a response already started ends with
    /// `c[1006,"Session home not answering"]` after a heartbeat period plus
    /// this).
    pub forward_timeout_ms: u64,
    /// Forwarded requests open at once, in each direction (this replica's
    /// requests waiting for another, and requests run for others); beyond,
    /// 503.
    pub max_forwarded_requests: usize,
    /// Run SockJS' echo service instead of STOMP (what the SockJS protocol
    /// test suite needs). For conformance testing only.
    pub echo: bool,
}

/// The native Server-Sent Events endpoint for pages that only listen (see
/// docs/protocol.md, "Server-Sent Events", and `src/transport/sse.rs`).
/// Off unless set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Serve `GET <path>?destination=...` as `text/event-stream`.
    pub enabled: bool,
    /// Path of the endpoint.
    pub path: String,
    /// A stream that wrote nothing for this long gets a `: ping` comment
    /// (proxies cut silent responses; a dead client is found by the write).
    pub heartbeat_ms: u64,
    /// The `retry:` the stream opens with: how long `EventSource` waits
    /// before it reconnects after the stream ends.
    pub retry_ms: u64,
    /// SSE streams open at once (0: unlimited); beyond, 503. They also
    /// count under `security.max_connections` and
    /// `security.max_connections_per_ip`, as WebSocket sessions do.
    pub max_sessions: usize,
}

/// Resumable subscriptions (`[history]`): broadcast destinations matching
/// a pattern also land in a RabbitMQ stream that the replica reads; their
/// MESSAGEs carry a position and a SUBSCRIBE with `x-resume-from` gets what
/// it missed (src/bridge/history.rs). Off while `patterns` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// `[[history.patterns]]`: one stream each.
    pub patterns: Vec<HistoryPattern>,
    /// Most stream messages one resume may span (from its position to the
    /// live point); beyond, the subscription starts live with
    /// `x-resumed:false`.
    pub max_resume_messages: u64,
    /// Messages of each stream the replica keeps in memory (resumes within
    /// them never touch the broker), bounded by count...
    pub memory_messages: usize,
    /// ... and by bytes (bodies and headers).
    pub memory_bytes: usize,
    /// `basic.qos` of the live stream consumer and of a catch-up read.
    pub prefetch: u16,
    /// A catch-up read that gets nothing for this long has reached the end
    /// of the stream.
    pub read_idle_ms: u64,
    /// Most subscriptions waiting for one catch-up read of a stream.
    pub max_waiting: usize,
}

/// One resumable destination pattern and its stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryPattern {
    /// The stream is `stompgate.history.<name>`.
    pub name: String,
    /// A `/topic/<key>` or `/exchange/<topic exchange>/<key>` destination;
    /// the key may hold `*` and `#` as binding keys do.
    pub destination: String,
    /// `x-max-age` of the stream (e.g. `1h`, `7D`).
    #[serde(default = "default_history_max_age")]
    pub max_age: String,
    /// `x-max-length-bytes` of the stream.
    #[serde(default = "default_history_max_bytes")]
    pub max_length_bytes: u64,
    /// `x-stream-max-segment-size-bytes` (before the epoch's share, see
    /// docs/operations.md).
    #[serde(default = "default_history_segment_bytes")]
    pub max_segment_bytes: u64,
}

fn default_history_max_age() -> String {
    "1h".to_owned()
}

fn default_history_max_bytes() -> u64 {
    1_000_000_000
}

fn default_history_segment_bytes() -> u64 {
    100_000_000
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            patterns: Vec::new(),
            max_resume_messages: 1_000,
            memory_messages: 1_000,
            memory_bytes: 4 * 1024 * 1024,
            prefetch: 500,
            read_idle_ms: 500,
            max_waiting: 100_000,
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            enabled: false,
            path: "/sse".to_owned(),
            heartbeat_ms: 15_000,
            retry_ms: 3_000,
            max_sessions: 10_000,
        }
    }
}

impl Default for SockjsConfig {
    fn default() -> Self {
        SockjsConfig {
            enabled: false,
            prefix: "/sockjs".to_owned(),
            websocket: true,
            heartbeat_ms: 25_000,
            disconnect_delay_ms: 5_000,
            response_limit_bytes: 128 * 1024,
            max_sessions: 10_000,
            max_concurrent_polls: 10_000,
            max_body_bytes: 1024 * 1024,
            max_buffered_bytes: 1024 * 1024,
            client_url: None,
            client_file: None,
            jsessionid: false,
            forward: true,
            forward_exchange: "stompgate.sockjs".to_owned(),
            forward_timeout_ms: 5_000,
            max_forwarded_requests: 1_000,
            echo: false,
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: false,
            dir: std::path::PathBuf::from("demo"),
            backend_url: "http://127.0.0.1:15690".to_owned(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Gateway,
            rabbitmq: RabbitAuthConfig::default(),
            anonymous: false,
            jwt: None,
            users: Vec::new(),
            rules: Vec::new(),
            user_exchange: "stompgate.user".to_owned(),
        }
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            allowed_origins: Vec::new(),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            handshake_timeout_ms: 10_000,
            max_frames_per_second: 1_000,
            rate_limit_policy: RateLimitPolicy::Throttle,
            ws_ping_interval_ms: 30_000,
        }
    }
}

/// The AMQP side.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub url: String,
    /// The nodes of a RabbitMQ cluster (each an `amqp://` URL); when set,
    /// `url` is ignored and connections are spread over these, moving to the
    /// others when a node goes away.
    pub urls: Vec<String>,
    /// Virtual hosts served besides the one of `url` (the default, for a
    /// CONNECT without `host`): CONNECT's `host` selects one of them. Each
    /// gets its own connections and plane (opened on first use), so the
    /// broker resources of a replica are fixed by this list.
    pub vhosts: Vec<String>,
    /// AMQP connections the gateway opens (per served vhost); channels are
    /// spread over them.
    pub connections: usize,
    /// The replica's own broadcast queues: every `/topic`, `/exchange` and
    /// `/user/` subscription is a binding of one of these (chosen by a hash
    /// of the binding), routed to local subscribers in the gateway.
    pub plane_queues: usize,
    /// Unacknowledged deliveries per plane queue (basic.qos): bounds what
    /// the broker pushes ahead of the routing.
    pub plane_prefetch: u16,
    /// Confirm-mode channels shared by all sessions for SEND.
    pub publish_channels: usize,
    /// Channels shared by all queue subscriptions (`/queue`, `/amq/queue`,
    /// `/temp-queue`, durable topic subscriptions), many consumers each.
    pub consumer_channels: usize,
    /// Bound on every broker operation (channel open, declare, bind, consume).
    pub broker_timeout_ms: u64,
    /// `prefetch-count` for client/client-individual subscriptions that do
    /// not give one (bounded, unlike RabbitMQ's unlimited default, so that a
    /// client that never acks cannot make the gateway buffer a whole queue).
    pub default_prefetch: u16,
    /// Prefetch of `ack:auto` queue subscriptions: the gateway acks each
    /// message once it is queued for the client, so this bounds what sits
    /// in memory per subscription.
    pub auto_ack_prefetch: u16,
    /// Largest `prefetch-count` a SUBSCRIBE may ask for; a larger one is
    /// capped to this (what the gateway may hold per subscription).
    pub max_prefetch: u16,
    /// How plane queues are bound for topic and fanout exchanges:
    /// `per-key` (a binding per distinct key), `wildcard` (one catch-all
    /// binding per exchange, exact filtering in the gateway) or `auto`
    /// (wildcard while the exchange's rate is at most `auto_max_rate`).
    /// Direct exchanges are always per key. See docs/operations.md.
    pub binding_mode: BindingMode,
    /// Exchanges always bound with one catch-all binding.
    pub wildcard_exchanges: Vec<String>,
    /// Exchanges always bound per key.
    pub per_key_exchanges: Vec<String>,
    /// `auto`: messages per second of one exchange above which it is bound
    /// per key.
    pub auto_max_rate: u32,
    /// `auto`: the window that rate is measured over.
    pub auto_window_ms: u64,
    /// Longest wait between two attempts to reconnect to the broker (the
    /// first is 100 ms, doubling, jittered): bounds how long after a broker
    /// restart the gateway notices it is back.
    pub reconnect_max_ms: u64,
}

/// How plane queues are bound for an exchange (see
/// `crate::bridge::bindings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BindingMode {
    #[default]
    PerKey,
    Wildcard,
    Auto,
}

/// See [`Config::unknown_host`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownHost {
    Refuse,
    Default,
}

/// Bounds on what one client may make the gateway hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame (command, headers and body) once CONNECT is accepted.
    pub max_frame_bytes: usize,
    /// Largest frame before CONNECT is accepted.
    pub max_frame_bytes_before_connect: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest header line (and command line), in bytes.
    pub max_header_line: usize,
    /// Most subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Most frames one open transaction may buffer.
    pub max_transaction_frames: usize,
    /// Most transactions one session may have open.
    pub max_open_transactions: usize,
    /// Frames queued for one client before the slow-client policy applies.
    pub outbound_queue_frames: usize,
    /// What to do with a broadcast message for a client whose outbound queue
    /// is full: `disconnect` (ERROR and close) or `drop` (skip the message).
    pub slow_client_policy: SlowClientPolicy,
    /// Time for the WebSocket handshake and the CONNECT frame.
    pub connect_timeout_ms: u64,
    /// Publishes of one session awaiting the broker's confirm beyond which
    /// the gateway stops reading that session's socket until confirms come
    /// back (credit-flow style back-pressure, as RabbitMQ applies it): a
    /// fast publisher is slowed to the broker's pace, never cut off.
    pub max_unconfirmed_publishes: usize,
    /// Bytes queued for one client (frames, control frames such as RECEIPT
    /// and ERROR included) before the slow-client policy applies; one frame
    /// always fits an empty queue.
    pub outbound_queue_bytes: usize,
    /// A write to the client that makes no progress for this long closes
    /// the session (a client that stopped reading): its broker resources
    /// are released and its unacked queue messages redelivered.
    pub write_timeout_ms: u64,
    /// RECEIPTs waiting for publisher confirms, per session; beyond, ERROR.
    pub max_pending_receipts: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowClientPolicy {
    Disconnect,
    Drop,
}

/// Heart-beat bounds. The gateway follows what the client asks in CONNECT's
/// `heart-beat` (as RabbitMQ's STOMP plugin does), clamped to these.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Smallest interval the gateway sends heart-beats at, in ms.
    pub min_send_ms: u64,
    /// Smallest interval the gateway asks the client to send heart-beats
    /// at, in ms (0: the gateway never expects client heart-beats).
    pub want_receive_ms: u64,
    /// Largest interval the gateway sends heart-beats at when the client
    /// asks for them, in ms (0: no cap, the client's value).
    pub offer_send_ms: u64,
    /// A silent client is closed after this many intervals (grace margin).
    pub grace_factor: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 15674)),
            ws_path: "/ws".to_owned(),
            metrics_listen: None,
            amqp: AmqpConfig::default(),
            limits: Limits::default(),
            heartbeat: HeartbeatConfig::default(),
            allowed_hosts: Vec::new(),
            unknown_host: UnknownHost::Refuse,
            drain_window_ms: 5_000,
            auth: AuthConfig::default(),
            security: SecurityConfig::default(),
            tls: TlsConfig::default(),
            demo: DemoConfig::default(),
            sockjs: SockjsConfig::default(),
            sse: SseConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://127.0.0.1:5672/%2f".to_owned(),
            urls: Vec::new(),
            vhosts: Vec::new(),
            connections: 2,
            plane_queues: 4,
            plane_prefetch: 1000,
            publish_channels: 4,
            consumer_channels: 8,
            broker_timeout_ms: 15_000,
            default_prefetch: 100,
            auto_ack_prefetch: 256,
            max_prefetch: 1000,
            binding_mode: BindingMode::PerKey,
            wildcard_exchanges: Vec::new(),
            per_key_exchanges: Vec::new(),
            auto_max_rate: 200,
            auto_window_ms: 2_000,
            reconnect_max_ms: 250,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 32 * 1024 * 1024,
            max_frame_bytes_before_connect: 64 * 1024,
            max_headers: 128,
            max_header_line: 8 * 1024,
            max_subscriptions: 256,
            max_transaction_frames: 1024,
            max_open_transactions: 16,
            outbound_queue_frames: 1024,
            slow_client_policy: SlowClientPolicy::Disconnect,
            connect_timeout_ms: 10_000,
            max_unconfirmed_publishes: 256,
            outbound_queue_bytes: 8 * 1024 * 1024,
            write_timeout_ms: 30_000,
            max_pending_receipts: 4096,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            min_send_ms: 1_000,
            want_receive_ms: 1_000,
            offer_send_ms: 0,
            grace_factor: 2.0,
        }
    }
}

impl Limits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `file` (if given), then `STOMPGATE_*` variables
    /// from `env` (a list of (name, value) pairs, normally `std::env::vars()`).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let mut vars: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("STOMPGATE_"))
            .collect();
        // The two plain variables are the same keys as the nested form.
        if let Some(url) = vars.remove("STOMPGATE_AMQP_URL") {
            vars.insert("STOMPGATE_AMQP__URL".to_owned(), url);
        }
        builder = builder.add_source(
            config::Environment::with_prefix("STOMPGATE")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("allowed_hosts")
                .with_list_parse_key("amqp.urls")
                .with_list_parse_key("amqp.vhosts")
                .with_list_parse_key("security.allowed_origins")
                .with_list_parse_key("auth.jwt.audience")
                .source(Some(vars.into_iter().collect())),
        );
        let config: Config = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::Invalid("ws_path must start with '/'".into()));
        }
        let sockjs = &self.sockjs;
        if sockjs.enabled {
            let prefix = &sockjs.prefix;
            if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(['{', '}', '*'])
            {
                return Err(ConfigError::Invalid(
                    "sockjs.prefix must start with '/', not end with one, and hold no '{', '}' or '*'"
                        .into(),
                ));
            }
            if sockjs.heartbeat_ms == 0 || sockjs.disconnect_delay_ms == 0 {
                return Err(ConfigError::Invalid(
                    "sockjs.heartbeat_ms and sockjs.disconnect_delay_ms must be at least 1".into(),
                ));
            }
            if sockjs.forward
                && (sockjs.forward_timeout_ms == 0
                    || sockjs.max_forwarded_requests == 0
                    || sockjs.forward_exchange.is_empty()
                    || sockjs.forward_exchange.len() > 255
                    || sockjs.forward_exchange.starts_with("amq."))
            {
                return Err(ConfigError::Invalid(
                    "sockjs.forward needs forward_timeout_ms and max_forwarded_requests of at least 1 and a forward_exchange name (not amq.*)"
                        .into(),
                ));
            }
        }
        let sse = &self.sse;
        if sse.enabled {
            let path = &sse.path;
            let taken = [self.ws_path.as_str(), "/healthz", "/readyz", "/metrics"];
            let under_sockjs = self.sockjs.enabled
                && (path == &self.sockjs.prefix
                    || path.starts_with(&format!("{}/", self.sockjs.prefix)));
            if !path.starts_with('/')
                || path.contains(['{', '}', '*'])
                || taken.contains(&path.as_str())
                || under_sockjs
            {
                return Err(ConfigError::Invalid(
                    "sse.path must start with '/', hold no '{', '}' or '*', and be no other endpoint's path"
                        .into(),
                ));
            }
            if sse.heartbeat_ms == 0 {
                return Err(ConfigError::Invalid(
                    "sse.heartbeat_ms must be at least 1".into(),
                ));
            }
        }
        for p in &self.history.patterns {
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return Err(ConfigError::Invalid(format!(
                    "history.patterns: name '{}' must be 1 to 64 of [A-Za-z0-9._-]",
                    p.name
                )));
            }
            if !(p.destination.starts_with("/topic/") || p.destination.starts_with("/exchange/")) {
                return Err(ConfigError::Invalid(format!(
                    "history.patterns: destination '{}' must be /topic/<key> or /exchange/<name>/<key>",
                    p.destination
                )));
            }
            if p.max_segment_bytes < 1024 || p.max_length_bytes == 0 {
                return Err(ConfigError::Invalid(
                    "history.patterns: max_segment_bytes must be at least 1024 and max_length_bytes at least 1".into(),
                ));
            }
        }
        if !self.history.patterns.is_empty()
            && (self.history.prefetch == 0 || self.history.read_idle_ms == 0)
        {
            return Err(ConfigError::Invalid(
                "history.prefetch and history.read_idle_ms must be at least 1".into(),
            ));
        }
        if self.amqp.connections == 0 {
            return Err(ConfigError::Invalid(
                "amqp.connections must be at least 1".into(),
            ));
        }
        for (name, value) in [
            ("amqp.plane_queues", self.amqp.plane_queues),
            ("amqp.publish_channels", self.amqp.publish_channels),
            ("amqp.consumer_channels", self.amqp.consumer_channels),
            ("amqp.plane_prefetch", self.amqp.plane_prefetch as usize),
            (
                "amqp.broker_timeout_ms",
                self.amqp.broker_timeout_ms as usize,
            ),
            ("amqp.auto_max_rate", self.amqp.auto_max_rate as usize),
            ("amqp.auto_window_ms", self.amqp.auto_window_ms as usize),
            ("amqp.reconnect_max_ms", self.amqp.reconnect_max_ms as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        for url in std::iter::once(&self.amqp.url).chain(&self.amqp.urls) {
            if !self.amqp.vhosts.is_empty() {
                url_for_vhost(url, "/").map_err(|e| {
                    ConfigError::Invalid(format!(
                        "amqp.vhosts needs URLs the gateway can parse: {e}"
                    ))
                })?;
            }
        }
        if self.limits.max_frame_bytes_before_connect > self.limits.max_frame_bytes {
            return Err(ConfigError::Invalid(
                "limits.max_frame_bytes_before_connect exceeds limits.max_frame_bytes".into(),
            ));
        }
        if self.limits.outbound_queue_frames == 0 {
            return Err(ConfigError::Invalid(
                "limits.outbound_queue_frames must be at least 1".into(),
            ));
        }
        if self.limits.max_unconfirmed_publishes == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_unconfirmed_publishes must be at least 1".into(),
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert_file and tls.key_file go together".into(),
            ));
        }
        if self.auth.user_exchange.is_empty() || self.auth.user_exchange.starts_with("amq.") {
            return Err(ConfigError::Invalid(
                "auth.user_exchange must be a name of its own (not empty, not amq.*)".into(),
            ));
        }
        for rule in &self.auth.rules {
            for verb in &rule.verbs {
                if verb != "subscribe" && verb != "send" {
                    return Err(ConfigError::Invalid(format!(
                        "auth.rules: unknown verb '{verb}' (subscribe or send)"
                    )));
                }
            }
        }
        if self.auth.mode == AuthMode::Rabbitmq {
            if !self.auth.rabbitmq.management_url.starts_with("http://") {
                return Err(ConfigError::Invalid(
                    "auth.rabbitmq.management_url must be an http:// URL".into(),
                ));
            }
            if self.auth.rabbitmq.cache_max_entries == 0 || self.auth.rabbitmq.timeout_ms == 0 {
                return Err(ConfigError::Invalid(
                    "auth.rabbitmq.cache_max_entries and auth.rabbitmq.timeout_ms must be at least 1"
                        .into(),
                ));
            }
        }
        if self.demo.enabled
            && !(self.demo.backend_url.starts_with("http://")
                || self.demo.backend_url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(
                "demo.backend_url must be an http:// or https:// URL".into(),
            ));
        }
        let grace = self.heartbeat.grace_factor;
        // NaN fails `is_finite`, and every comparison.
        if !grace.is_finite() || grace < 1.0 {
            return Err(ConfigError::Invalid(format!(
                "heartbeat.grace_factor must be a finite number of at least 1.0 (got {})",
                self.heartbeat.grace_factor
            )));
        }
        for (key, value) in [
            ("limits.connect_timeout_ms", self.limits.connect_timeout_ms),
            ("limits.write_timeout_ms", self.limits.write_timeout_ms),
            (
                "security.handshake_timeout_ms",
                self.security.handshake_timeout_ms,
            ),
            ("heartbeat.min_send_ms", self.heartbeat.min_send_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be more than 0 ms"
                )));
            }
        }
        if self.limits.outbound_queue_bytes == 0 || self.limits.max_pending_receipts == 0 {
            return Err(ConfigError::Invalid(
                "limits.outbound_queue_bytes and limits.max_pending_receipts must be at least 1"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The vhost named by the first of `urls` (`/` when none parses): the
/// gateway's default vhost.
pub fn default_vhost(urls: &[String]) -> String {
    use std::str::FromStr;
    urls.first()
        .and_then(|url| lapin::uri::AMQPUri::from_str(url).ok())
        .map(|uri| uri.vhost)
        .unwrap_or_else(|| "/".to_owned())
}

/// `url` with its vhost replaced by `vhost`.
pub fn url_for_vhost(url: &str, vhost: &str) -> Result<String, String> {
    use std::str::FromStr;
    let mut uri = lapin::uri::AMQPUri::from_str(url).map_err(|e| format!("'{url}': {e}"))?;
    uri.vhost = vhost.to_owned();
    Ok(uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::load(None, Vec::new()).expect("defaults load");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 15674)));
        assert_eq!(c.ws_path, "/ws");
        assert_eq!(c.limits.max_frame_bytes, 32 * 1024 * 1024);
        assert_eq!(c.limits.max_unconfirmed_publishes, 256);
        assert_eq!(c.security.max_frames_per_second, 1_000);
        assert_eq!(c.security.rate_limit_policy, RateLimitPolicy::Throttle);
        assert_eq!(c.heartbeat.min_send_ms, 1_000);
        assert_eq!(c.heartbeat.want_receive_ms, 1_000);
        assert_eq!(c.heartbeat.offer_send_ms, 0);
        assert_eq!(c.limits.max_frame_bytes_before_connect, 64 * 1024);
        assert!(!c.demo.enabled, "the demo pages are off unless set");
    }

    #[test]
    fn binding_modes_from_the_environment() {
        let env = vec![("STOMPGATE_AMQP__BINDING_MODE".to_owned(), "auto".to_owned())];
        let c = Config::load(None, env).expect("load");
        assert_eq!(c.amqp.binding_mode, BindingMode::Auto);
        assert_eq!(Config::default().amqp.binding_mode, BindingMode::PerKey);
        let bad = vec![(
            "STOMPGATE_AMQP__BINDING_MODE".to_owned(),
            "hashed".to_owned(),
        )];
        assert!(Config::load(None, bad).is_err());
        let zero = vec![("STOMPGATE_AMQP__AUTO_MAX_RATE".to_owned(), "0".to_owned())];
        assert!(Config::load(None, zero).is_err());
    }

    #[test]
    fn demo_keys_from_the_environment() {
        let env = vec![
            ("STOMPGATE_DEMO__ENABLED".to_owned(), "true".to_owned()),
            ("STOMPGATE_DEMO__DIR".to_owned(), "/srv/demo".to_owned()),
            (
                "STOMPGATE_DEMO__BACKEND_URL".to_owned(),
                "http://127.0.0.1:9".to_owned(),
            ),
        ];
        let c = Config::load(None, env).expect("load");
        assert!(c.demo.enabled);
        assert_eq!(c.demo.dir, std::path::PathBuf::from("/srv/demo"));
        assert_eq!(c.demo.backend_url, "http://127.0.0.1:9");
        let bad = vec![
            ("STOMPGATE_DEMO__ENABLED".to_owned(), "true".to_owned()),
            (
                "STOMPGATE_DEMO__BACKEND_URL".to_owned(),
                "127.0.0.1:9".to_owned(),
            ),
        ];
        assert!(Config::load(None, bad).is_err());
    }

    #[test]
    fn file_then_env_override() {
        let dir = std::env::temp_dir().join(format!("stompgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "ws_path = \"/stomp\"\n[limits]\nmax_subscriptions = 5\n[amqp]\nurl = \"amqp://file\"\n",
        )
        .expect("write");
        let env = vec![
            ("STOMPGATE_LISTEN".to_owned(), "127.0.0.1:9999".to_owned()),
            ("STOMPGATE_AMQP_URL".to_owned(), "amqp://env".to_owned()),
            (
                "STOMPGATE_LIMITS__MAX_SUBSCRIPTIONS".to_owned(),
                "7".to_owned(),
            ),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let c = Config::load(Some(&path), env).expect("load");
        assert_eq!(c.ws_path, "/stomp");
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.amqp.url, "amqp://env");
        assert_eq!(c.limits.max_subscriptions, 7);
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let env = vec![("STOMPGATE_AUTH__ANONYMOUS".to_owned(), "true".to_owned())];
        let c = Config::load(None, env).expect("load");
        assert!(c.auth.anonymous);
        assert_eq!(c.auth.user_exchange, "stompgate.user");
    }

    #[test]
    fn the_documented_file_is_the_defaults() {
        let doc = include_str!("../docs/configuration.md");
        let start = doc.find("```toml\n").expect("toml block") + 8;
        let end = start + doc[start..].find("```").expect("end of block");
        let dir = std::env::temp_dir().join(format!("stompgate-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("documented.toml");
        std::fs::write(&path, &doc[start..end]).expect("write");
        let loaded = Config::load(Some(&path), Vec::new()).expect("documented file loads");
        assert_eq!(format!("{loaded:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn nan_or_zero_timings_are_refused() {
        for (key, value) in [
            ("STOMPGATE_HEARTBEAT__GRACE_FACTOR", "NaN"),
            ("STOMPGATE_HEARTBEAT__GRACE_FACTOR", "inf"),
            ("STOMPGATE_LIMITS__CONNECT_TIMEOUT_MS", "0"),
            ("STOMPGATE_LIMITS__WRITE_TIMEOUT_MS", "0"),
            ("STOMPGATE_SECURITY__HANDSHAKE_TIMEOUT_MS", "0"),
            ("STOMPGATE_HEARTBEAT__MIN_SEND_MS", "0"),
        ] {
            let error = Config::load(None, vec![(key.to_owned(), value.to_owned())])
                .expect_err(key)
                .to_string();
            let name = key
                .trim_start_matches("STOMPGATE_")
                .to_lowercase()
                .replace("__", ".");
            assert!(error.contains(&name), "{key}={value}: {error}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = std::env::temp_dir().join(format!("stompgate-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "lissen = \"x\"\n").expect("write");
        assert!(Config::load(Some(&path), Vec::new()).is_err());
    }
}
