//! What fan-out hands to local subscribers: a broadcast message encoded
//! once, and each subscriber's pre-encoded part.
//!
//! A message from the plane's queues (see [`super::plane`]) is mapped to
//! STOMP headers and encoded once into a [`SharedMessage`]; every local
//! subscriber it matches receives a reference to it plus its own
//! pre-encoded `subscription` prefix, so nothing per recipient is allocated
//! on this path.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::session::FANOUT_PREFIX;
use crate::stomp::{encode_header, Escaping};
use crate::transport::outbound::ClientLink;

/// An exchange and binding key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    pub exchange: String,
    pub routing_key: String,
}

/// One local subscription to a broadcast binding.
#[derive(Debug)]
pub struct Subscriber {
    /// (session key, subscription id): unique within the process.
    pub session: u64,
    pub id: Arc<str>,
    /// `MESSAGE\nsubscription:<id>\n`, escaped for the session's version.
    pub prefix: Bytes,
    pub escaping: Escaping,
    /// STOMP 1.2 with a client ack mode: MESSAGE carries an `ack` header.
    pub ack_header: bool,
    pub link: Arc<ClientLink>,
}

impl Subscriber {
    pub fn new(
        session: u64,
        id: &str,
        escaping: Escaping,
        ack_header: bool,
        link: Arc<ClientLink>,
    ) -> Subscriber {
        let mut prefix = BytesMut::with_capacity(24 + id.len());
        prefix.put_slice(b"MESSAGE\n");
        encode_header("subscription", id, escaping, &mut prefix);
        Subscriber {
            session,
            id: Arc::from(id),
            prefix: prefix.freeze(),
            escaping,
            ack_header,
            link,
        }
    }
}

/// A broadcast message encoded once for all its recipients.
#[derive(Debug)]
pub struct SharedMessage {
    /// `ack:<message-id>\n`, for subscribers that need it.
    pub ack_line: Bytes,
    /// The rest of the frame (headers from `message-id` on, blank line, body,
    /// NUL), per escaping: index 0 for none (1.0), 1 for 1.1, 2 for 1.2.
    /// The three are the same buffer when no header needs escaping.
    tails: [Bytes; 3],
    /// The body is not UTF-8: the frame must go in a binary WebSocket message.
    pub binary: bool,
}

impl SharedMessage {
    /// Encodes `headers` and `body` under message id `B_<seq>`.
    pub fn encode(seq: u64, headers: &[(String, String)], body: &Bytes) -> SharedMessage {
        let id = format!("{FANOUT_PREFIX}{seq}");
        let needs_escaping = headers
            .iter()
            .any(|(n, v)| has_escapable(n) || has_escapable(v));
        let encode = |escaping: Escaping| {
            let size = 32
                + headers
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 2)
                    .sum::<usize>();
            let mut buf = BytesMut::with_capacity(size + body.len());
            encode_header("message-id", &id, escaping, &mut buf);
            for (name, value) in headers {
                encode_header(name, value, escaping, &mut buf);
            }
            if !body.is_empty() {
                encode_header(
                    "content-length",
                    &body.len().to_string(),
                    escaping,
                    &mut buf,
                );
            }
            buf.put_u8(b'\n');
            buf.put_slice(body);
            buf.put_u8(0);
            buf.freeze()
        };
        let v12 = encode(Escaping::V12);
        let tails = if needs_escaping {
            [encode(Escaping::None), encode(Escaping::V11), v12]
        } else {
            [v12.clone(), v12.clone(), v12]
        };
        let mut ack_line = BytesMut::with_capacity(id.len() + 5);
        encode_header("ack", &id, Escaping::V12, &mut ack_line);
        SharedMessage {
            ack_line: ack_line.freeze(),
            tails,
            binary: std::str::from_utf8(body).is_err(),
        }
    }

    /// The encoded tail for a session using `escaping`.
    pub fn tail(&self, escaping: Escaping) -> &Bytes {
        match escaping {
            Escaping::None => &self.tails[0],
            Escaping::V11 => &self.tails[1],
            Escaping::V12 => &self.tails[2],
        }
    }
}

fn has_escapable(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b':'))
}
