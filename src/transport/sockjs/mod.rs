//! SockJS: STOMP for browsers without WebSocket.
//!
//! Old browsers (IE 7-9) and corporate proxies that break WebSocket are
//! why teams still pick Comet. SockJS is the de-facto standard that carries
//! a WebSocket-like stream over whatever works: `sockjs-client` falls back
//! to xhr-streaming, eventsource, htmlfile (IE's hidden document), xhr
//! polling and JSONP polling, and `@stomp/stompjs` runs over it through
//! `webSocketFactory`. This module is a SockJS server (protocol 0.3, as
//! sockjs-protocol's test suite and sockjs-client 1.6 define it) on the
//! gateway's port, under `sockjs.prefix`.
//!
//! The parts, pure ones first:
//! - [`frame`]: frames (`o`, `h`, `a[...]`, `c[...]`), SockJS' JSON string
//!   encoding, and how each transport wraps a frame (script-safe for
//!   `htmlfile` and `jsonp`);
//! - [`body`]: parsing what clients send, bounded;
//! - [`pages`]: `/info`, `/iframe.html` (ETag), the `htmlfile` prelude;
//! - [`session`]: one HTTP session as a state machine driven by time
//!   (buffer, one receiver at a time, response limit, heartbeats, expiry);
//! - [`writer`]: the STOMP session's outbound queue into SockJS messages;
//! - [`registry`]: this replica's sessions and the task that runs each;
//! - [`http`] and [`ws`]: the axum endpoints;
//! - [`glue`]: the seam to the STOMP session driver;
//! - [`relay`] (pure) and [`forward`]: no sticky sessions. A request for a
//!   session held by another replica is forwarded to it over RabbitMQ.
//!
//! Operators who control their load balancer can make every request of a
//! session land on one replica instead (HAProxy `balance uri` on the
//! session segment: deploy/haproxy-sockjs.cfg); forwarding then costs
//! nothing but one binding per session.

pub mod body;
pub mod forward;
pub mod frame;
pub mod glue;
pub mod http;
pub mod pages;
pub mod registry;
pub mod relay;
pub mod session;
pub mod writer;
pub mod ws;

pub use http::router;
