//! Transports: how STOMP frames reach the gateway. WebSocket
//! ([`websocket`]), SockJS' HTTP fallbacks ([`sockjs`]) and Server-Sent
//! Events for pages that only listen ([`sse`]), thin adapters around the
//! same session [`driver`].

pub mod driver;
pub mod host;
pub mod listener;
pub mod outbound;
pub mod rate_limit;
pub mod sockjs;
pub mod sse;
pub mod websocket;
