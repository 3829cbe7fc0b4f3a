//! stompgate: a stateless gateway that terminates STOMP 1.0/1.1/1.2 over
//! WebSocket and bridges it onto AMQP 0-9-1 in RabbitMQ.
//!
//! The layers, from the wire inwards:
//! - [`stomp`]: the frame codec, pure code over byte buffers;
//! - [`session`]: the per-connection protocol state machine, pure code that
//!   turns frames into [`session::Action`]s for the layers around it;
//! - [`transport`]: the WebSocket adapter that feeds bytes in and writes
//!   frames out, with heart-beats and an outbound queue bounded per client;
//! - [`bridge`]: the AMQP side: the replica's fixed *plane* of channels and
//!   queues (broadcast subscriptions are bindings, routed to local
//!   subscribers in the gateway with RabbitMQ's matching rules; shared
//!   publishing and consumer channels), destinations, per-session state;
//! - [`auth`]: who may connect (JWT, login list) and do what (rules);
//! - [`server`]: the HTTP listener that ties it together (WebSocket upgrade,
//!   `/healthz`, `/readyz`, `/metrics`), with [`demo`]'s pages when enabled.

pub mod auth;
pub mod bridge;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod server;
pub mod session;
pub mod stomp;
pub mod transport;
