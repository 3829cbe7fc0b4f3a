//! Transports: how STOMP frames reach the gateway. WebSocket
//! ([`websocket`]) and SockJS' HTTP fallbacks ([`sockjs`]), thin adapters
//! around the same session [`driver`].

pub mod coalesce;
pub mod driver;
pub mod host;
pub mod listener;
pub mod outbound;
pub mod rate_limit;
pub mod sockjs;
pub mod websocket;
