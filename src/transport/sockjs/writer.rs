//! Turns what the STOMP session queued for its client (its
//! [`ClientLink`](crate::transport::outbound::ClientLink) entries) into SockJS messages.
//!
//! Frames already queued together become one SockJS message (a JSON
//! string), up to [`COALESCE_BYTES`], as the WebSocket writer joins them
//! into one WebSocket message: STOMP clients read several frames from one
//! message.
//!
//! SockJS carries text only: JSON strings of Unicode characters. A frame
//! whose body is not valid UTF-8 cannot reach the client intact, and a
//! replacement character would silently change it (and break its
//! `content-length`). Such a frame is not sent; the client gets a STOMP
//! ERROR saying why instead, and the session closes (docs/protocol.md).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;

use super::frame;
use super::glue::append_bytes;
use crate::stomp::{self, Escaping, Frame};
use crate::transport::outbound::Outbound;

/// Largest SockJS message made by joining queued frames.
pub const COALESCE_BYTES: usize = 64 * 1024;

/// The ERROR text for a frame SockJS cannot carry.
pub const NOT_UTF8: &str = "a message body is not valid UTF-8, which SockJS cannot carry";

/// What a batch of outbound entries amounts to.
#[derive(Debug, Default)]
pub struct Encoded {
    /// SockJS messages, each encoded with [`frame::quote`].
    pub messages: Vec<Vec<u8>>,
    /// A new STOMP heart-beat interval (`Some(None)`: none).
    pub heartbeat: Option<Option<Duration>>,
    /// The session wrote its last frame: close the SockJS session.
    pub close: bool,
}

/// Encodes `batch` (drained) into `out`. Nothing after a close counts.
pub fn encode(batch: &mut VecDeque<Outbound>, out: &mut Encoded) {
    let mut text: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    let flush = |text: &mut Vec<u8>, out: &mut Encoded| {
        if !text.is_empty() {
            // Checked UTF-8 when appended.
            let s = String::from_utf8_lossy(text);
            let mut quoted = Vec::with_capacity(text.len() + 16);
            frame::quote(&s, &mut quoted);
            out.messages.push(quoted);
            text.clear();
        }
    };
    for item in batch.drain(..) {
        if out.close {
            continue;
        }
        match item {
            Outbound::SetHeartbeat(every) => out.heartbeat = Some(every),
            Outbound::Close => out.close = true,
            item => {
                scratch.clear();
                let binary = append_bytes(&item, &mut scratch).unwrap_or(false);
                if binary || std::str::from_utf8(&scratch).is_err() {
                    let frame = Frame::new(stomp::Command::Error).with_header("message", NOT_UTF8);
                    let mut buf = BytesMut::new();
                    stomp::encode_frame(&frame, Escaping::None, &mut buf);
                    if !text.is_empty() && text.len() + buf.len() > COALESCE_BYTES {
                        flush(&mut text, out);
                    }
                    text.extend_from_slice(&buf);
                    out.close = true;
                    continue;
                }
                if !text.is_empty() && text.len() + scratch.len() > COALESCE_BYTES {
                    flush(&mut text, out);
                }
                text.extend_from_slice(&scratch);
            }
        }
    }
    flush(&mut text, out);
}

/// A STOMP heart-beat (an EOL) as a SockJS message.
pub fn stomp_heartbeat() -> Vec<u8> {
    b"\"\\n\"".to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn text(bytes: &'static [u8]) -> Outbound {
        Outbound::Frame {
            bytes: Bytes::from_static(bytes),
            binary: false,
        }
    }

    #[test]
    fn queued_frames_join_into_one_message() {
        let mut batch: VecDeque<Outbound> = [
            Outbound::SetHeartbeat(Some(Duration::from_secs(1))),
            text(b"MESSAGE\n\nA\0"),
            text(b"RECEIPT\nreceipt-id:1\n\n\0"),
        ]
        .into();
        let mut out = Encoded::default();
        encode(&mut batch, &mut out);
        assert!(batch.is_empty());
        assert_eq!(out.heartbeat, Some(Some(Duration::from_secs(1))));
        assert!(!out.close);
        assert_eq!(
            out.messages,
            vec![br#""MESSAGE\n\nA\u0000RECEIPT\nreceipt-id:1\n\n\u0000""#.to_vec()]
        );
    }

    #[test]
    fn large_batches_split() {
        let big: &'static [u8] = Box::leak(vec![b'x'; COALESCE_BYTES - 10].into_boxed_slice());
        let mut batch: VecDeque<Outbound> = [text(big), text(b"0123456789AB"), text(b"C")].into();
        let mut out = Encoded::default();
        encode(&mut batch, &mut out);
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.messages[1], b"\"0123456789ABC\"".to_vec());
    }

    #[test]
    fn binary_bodies_become_an_error_and_close() {
        let mut batch: VecDeque<Outbound> = [
            text(b"MESSAGE\n\nok\0"),
            Outbound::Frame {
                bytes: Bytes::from_static(b"MESSAGE\n\n\xff\0"),
                binary: true,
            },
            text(b"MESSAGE\n\nnot sent\0"),
            Outbound::Close,
        ]
        .into();
        let mut out = Encoded::default();
        encode(&mut batch, &mut out);
        assert!(out.close);
        assert_eq!(out.messages.len(), 1);
        let s = String::from_utf8(out.messages[0].clone()).expect("utf-8");
        assert!(
            s.starts_with(
                r#""MESSAGE\n\nok\u0000ERROR\nmessage:a message body is not valid UTF-8"#
            ),
            "{s}"
        );
        assert!(!s.contains("not sent"));
    }

    #[test]
    fn close_alone() {
        let mut batch: VecDeque<Outbound> = [Outbound::Close].into();
        let mut out = Encoded::default();
        encode(&mut batch, &mut out);
        assert!(out.close);
        assert!(out.messages.is_empty());
        assert_eq!(stomp_heartbeat(), b"\"\\n\"");
    }
}
