//! Transports: how STOMP frames reach the gateway. Today WebSocket; HTTP
//! fallbacks would be further adapters around the same session.

pub mod coalesce;
pub mod driver;
pub mod listener;
pub mod outbound;
pub mod sockjs;
pub mod websocket;
