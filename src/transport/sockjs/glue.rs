//! The seam between SockJS and the STOMP session, kept in one small file
//! so that it follows the session driver (issue 12) when that changes.
//!
//! SockJS hands the session what the client sent as chunks of STOMP bytes
//! (each string of an `xhr_send` array, each message of the `websocket`
//! transport, is one chunk; the channel closing is "client closed"), and
//! takes what the session writes from its [`ClientLink`], as the WebSocket
//! writer does.
//!
//! The session runs in the transport-agnostic driver
//! ([`crate::transport::driver`]), as WebSocket sessions do: same session
//! state machine, limits, auth and metrics. The echo service
//! (`sockjs.echo`, for the SockJS protocol tests) sends every chunk back
//! instead.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::transport::driver::{self, Incoming, Options, Outcome};
use crate::transport::host::{Admission, Host};
use crate::transport::outbound::{ClientLink, Outbound};
use crate::transport::websocket::Handshake;

/// Chunks of STOMP bytes from the client; closed when the client is gone.
pub type Chunks = mpsc::Receiver<Bytes>;

/// Runs the session of one SockJS connection until it ends. The task
/// returns `true` when the session ended normally and queued
/// [`Outbound::Close`] after its last frame (the writer flushes up to it),
/// `false` when the client was cut off (nothing more to write).
pub fn spawn_session(
    host: &Arc<Host>,
    handshake: Handshake,
    chunks: Chunks,
    link: Arc<ClientLink>,
    admission: Option<Admission>,
) -> JoinHandle<bool> {
    if host.config.sockjs.echo {
        return tokio::spawn(echo(chunks, link));
    }
    let host = Arc::clone(host);
    tokio::spawn(async move {
        // Admitted (and counted) until the STOMP session ends.
        let _admission = admission;
        let _connection = host.track_connection();
        let broker = host.broker();
        let input = futures_util::stream::unfold(chunks, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            Some((Incoming::Data(chunk), chunks))
        })
        .chain(futures_util::stream::once(async { Incoming::Closed }));
        let options = Options {
            token: handshake.token,
            keepalive: None,
        };
        let outcome = driver::run(
            &host.driver,
            broker,
            Box::pin(input),
            Arc::clone(&link),
            options,
        )
        .await;
        if outcome == Outcome::SlowClient {
            link.close();
            return false;
        }
        link.send(Outbound::Close).await
    })
}

/// SockJS' echo service: every chunk goes back as one message.
async fn echo(mut chunks: Chunks, link: Arc<ClientLink>) -> bool {
    while let Some(chunk) = chunks.recv().await {
        if !link
            .send(Outbound::Frame {
                bytes: chunk,
                binary: false,
            })
            .await
        {
            return false;
        }
    }
    link.send(Outbound::Close).await
}

/// Appends the bytes `item` puts on the wire; `Some(binary)` for frames,
/// `None` for control entries.
pub fn append_bytes(item: &Outbound, out: &mut Vec<u8>) -> Option<bool> {
    let (parts, binary) = item.frame_parts()?;
    for part in parts {
        out.extend_from_slice(part);
    }
    Some(binary)
}
