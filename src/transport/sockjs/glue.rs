//! The seam between SockJS and the STOMP session, kept in one small file
//! so that it follows the session driver (issue 12) when that changes.
//!
//! SockJS hands the session what the client sent as chunks of STOMP bytes
//! (each string of an `xhr_send` array, each message of the `websocket`
//! transport, is one chunk; the channel closing is "client closed"), and
//! takes what the session writes from its [`ClientLink`], as the WebSocket
//! writer does.
//!
//! Until the transport-agnostic driver is on main, the STOMP side answers
//! the first chunk with an ERROR and closes: HTTP fallbacks carry no STOMP
//! session yet. The echo service (`sockjs.echo`, for the SockJS protocol
//! tests) sends every chunk back.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::server::Gateway;
use crate::stomp::{self, Escaping, Frame};
use crate::transport::outbound::{ClientLink, Outbound};
use crate::transport::websocket::Handshake;

/// Chunks of STOMP bytes from the client; closed when the client is gone.
pub type Chunks = mpsc::Receiver<Bytes>;

/// Runs the session of one SockJS connection until it ends.
pub fn spawn_session(
    gateway: &Arc<Gateway>,
    handshake: Handshake,
    chunks: Chunks,
    link: Arc<ClientLink>,
) -> JoinHandle<()> {
    if gateway.config.sockjs.echo {
        return tokio::spawn(echo(chunks, link));
    }
    let gateway = Arc::clone(gateway);
    tokio::spawn(async move {
        let _guard = gateway.track_connection();
        let _ = handshake;
        stomp_placeholder(chunks, link).await;
    })
}

/// Stands in for the session driver until it lands (see the module docs).
async fn stomp_placeholder(mut chunks: Chunks, link: Arc<ClientLink>) {
    if chunks.recv().await.is_none() {
        return;
    }
    let frame = Frame::new(stomp::Command::Error).with_header(
        "message",
        "STOMP over SockJS HTTP transports needs the session driver (not in this build)",
    );
    let mut buf = BytesMut::new();
    stomp::encode_frame(&frame, Escaping::None, &mut buf);
    link.send(Outbound::Frame {
        bytes: buf.freeze(),
        binary: false,
    })
    .await;
    link.send(Outbound::Close).await;
}

/// SockJS' echo service: every chunk goes back as one message.
async fn echo(mut chunks: Chunks, link: Arc<ClientLink>) {
    while let Some(chunk) = chunks.recv().await {
        if !link
            .send(Outbound::Frame {
                bytes: chunk,
                binary: false,
            })
            .await
        {
            return;
        }
    }
}

/// Appends the bytes `item` puts on the wire; `Some(binary)` for frames,
/// `None` for control entries.
pub fn append_bytes(item: &Outbound, out: &mut Vec<u8>) -> Option<bool> {
    match item {
        Outbound::Frame { bytes, binary } => {
            out.extend_from_slice(bytes);
            Some(*binary)
        }
        Outbound::Broadcast {
            prefix,
            ack_header,
            escaping,
            message,
        } => {
            out.extend_from_slice(prefix);
            if *ack_header {
                out.extend_from_slice(&message.ack_line);
            }
            out.extend_from_slice(message.tail(*escaping));
            Some(message.binary)
        }
        Outbound::SetHeartbeat(_) | Outbound::Close => None,
    }
}
