//! stompgate: a stateless gateway that terminates STOMP 1.0/1.1/1.2 over
//! WebSocket and SockJS and bridges it onto AMQP 0-9-1 in RabbitMQ.
//!
//! # A map of the crate
//!
//! From the wire inwards; each arrow below is the only direction in which
//! modules import each other (no cycles).
//!
//! ```text
//! server ──> transport ──> bridge ──> session ──> auth ──> stomp
//!   │            │            │          │         │
//!   └──> demo    └─────────── metrics, config (leaves, with stomp)
//! ```
//!
//! - [`stomp`]: the protocol's vocabulary, pure code without I/O.
//!   [`stomp::frame`] (frames, commands, escaping, versions),
//!   [`stomp::codec`] (bytes to frames and back, limits),
//!   [`stomp::message`] (a MESSAGE encoded once for many recipients, by the
//!   codec's own encoder), [`stomp::destination`] (RabbitMQ's destination
//!   forms).
//! - [`auth`]: who may connect and do what: JWT and login lists
//!   ([`auth::JwtVerifier`]), rules per verb, `/user/` destinations, and
//!   with `auth.mode = "rabbitmq"` credentials and permissions from RabbitMQ
//!   itself ([`auth::rabbit`], evaluated by [`auth::permissions`]).
//! - [`session`]: the per-connection STOMP state machine, pure: frames in,
//!   [`session::Action`]s out. It owns every protocol decision, time
//!   included: deadlines through `poll_timeout`/`handle_timeout(now)`,
//!   receipts after confirms, back-pressure, and why a session ended
//!   ([`session::CloseReason`]).
//! - [`bridge`]: the AMQP side. [`bridge::plane`] is the replica's fixed set
//!   of channels and queues (broadcast subscriptions are bindings, routed to
//!   local subscribers by [`bridge::matcher`] with RabbitMQ's rules and
//!   handed over by [`bridge::fanout`]; [`bridge::bindings`] decides per
//!   exchange between a binding per key and one catch-all binding, and
//!   switches between them without loss); [`bridge::session_broker`] is one
//!   session's consumers, acks and publishes; [`bridge::seam`] is the trait
//!   the driver runs against; [`bridge::pool`] the connections (cluster
//!   nodes), [`bridge::vhosts`] one plane per served vhost,
//!   [`bridge::properties`] STOMP headers to AMQP properties and back;
//!   [`bridge::control`] the replica's control queue (request/reply between
//!   replicas by key: SockJS sessions reached from any replica).
//! - [`transport`]: how STOMP reaches the gateway, as thin adapters over one
//!   session driver ([`transport::driver`]): [`transport::websocket`],
//!   [`transport::sockjs`] (long polling, streaming, htmlfile, JSONP,
//!   EventSource; requests for a session held by another replica are
//!   forwarded to it over the control queue), [`transport::sse`] (native
//!   Server-Sent Events for pages that only listen), the bounded per-client
//!   queue ([`transport::outbound`]), which a WebSocket over TCP writes
//!   from whoever filled it (its own RFC 6455 layer:
//!   [`transport::websocket::frame`]), what the gateway lends every
//!   transport ([`transport::host`]), and the TCP/TLS [`transport::listener`].
//! - [`server`]: builds the gateway from the [`config`], serves the HTTP
//!   routes (`/healthz`, `/readyz`, `/metrics`, the transports, [`demo`]
//!   pages when enabled) and drains on shutdown.
//! - [`config`]: the settings, from a TOML file and `STOMPGATE_*` variables,
//!   checked at start; [`metrics`]: the Prometheus series.
//!
//! Conventions across the crate: errors are types (`thiserror`) reported
//! once; nothing a client or the broker controls is unwrapped; a poisoned
//! lock is taken with `unwrap_or_else(PoisonError::into_inner)` (the data
//! stays consistent: no lock is held across a panic-prone step); every
//! reconnect loop waits with the one jittered [`bridge::Backoff`].

pub mod auth;
pub mod bridge;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod server;
pub mod session;
pub mod stomp;
pub mod transport;
