//! A MESSAGE frame encoded once for many recipients.
//!
//! Broadcast fan-out sends the same message to every matching subscription;
//! the frames differ only in their `subscription` header (and in whether a
//! STOMP 1.2 client-ack subscription needs an `ack` header). So the message
//! is encoded once, by the codec's own [`encode_rest`], into a shared tail
//! (headers from `message-id` on, blank line, body, NUL) per escaping, and
//! each recipient's frame is `MESSAGE\nsubscription:<id>\n` + optional
//! `ack` line + that tail: nothing per recipient is copied.

use bytes::{Bytes, BytesMut};

use super::codec::{encode_header, encode_rest};
use super::frame::Escaping;

/// A MESSAGE encoded once for all its recipients.
#[derive(Debug)]
pub struct SharedMessage {
    /// `ack:<message-id>\n`, for subscribers that need it.
    pub ack_line: Bytes,
    /// The rest of the frame (headers from `message-id` on, blank line, body,
    /// NUL), per escaping: index 0 for none (1.0), 1 for 1.1, 2 for 1.2.
    /// The three are the same buffer when no header needs escaping.
    tails: [Bytes; 3],
    /// The body is not UTF-8: the frame must travel as binary data.
    pub binary: bool,
}

impl SharedMessage {
    /// Encodes a message with `message_id`, `headers` and `body`.
    pub fn encode(message_id: &str, headers: &[(String, String)], body: &Bytes) -> SharedMessage {
        let needs_escaping = headers
            .iter()
            .any(|(n, v)| has_escapable(n) || has_escapable(v));
        let encode = |escaping: Escaping| {
            let size = 32
                + message_id.len()
                + headers
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 2)
                    .sum::<usize>();
            let mut buf = BytesMut::with_capacity(size + body.len());
            encode_header("message-id", message_id, escaping, &mut buf);
            encode_rest(
                headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                body,
                escaping,
                &mut buf,
            );
            buf.freeze()
        };
        let v12 = encode(Escaping::V12);
        let tails = if needs_escaping || has_escapable(message_id) {
            [encode(Escaping::None), encode(Escaping::V11), v12]
        } else {
            [v12.clone(), v12.clone(), v12]
        };
        let mut ack_line = BytesMut::with_capacity(message_id.len() + 5);
        encode_header("ack", message_id, Escaping::V12, &mut ack_line);
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

/// The start of a recipient's MESSAGE frame: `MESSAGE\nsubscription:<id>\n`.
pub fn message_prefix(subscription: &str, escaping: Escaping) -> Bytes {
    let mut prefix = BytesMut::with_capacity(24 + subscription.len());
    prefix.extend_from_slice(b"MESSAGE\n");
    encode_header("subscription", subscription, escaping, &mut prefix);
    prefix.freeze()
}

fn has_escapable(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stomp::{encode_frame, Command, Frame};

    /// The shared encoding is byte for byte what the codec writes for the
    /// same MESSAGE frame, for every escaping, with and without `ack`.
    #[test]
    fn shared_encoding_equals_the_codec() {
        let headers = vec![
            ("destination".to_owned(), "/topic/a:b".to_owned()),
            ("content-length".to_owned(), "999".to_owned()),
            ("x-line".to_owned(), "one\ntwo\\".to_owned()),
        ];
        for body in [Bytes::new(), Bytes::from_static(b"hello\0world")] {
            let shared = SharedMessage::encode("B_7", &headers, &body);
            for escaping in [Escaping::None, Escaping::V11, Escaping::V12] {
                for ack in [false, true] {
                    let mut frame = Frame::new(Command::Message).with_header("subscription", "s-1");
                    if ack {
                        frame.push_header("ack", "B_7");
                    }
                    frame.push_header("message-id", "B_7");
                    for (n, v) in &headers {
                        frame.push_header(n, v);
                    }
                    frame.body = body.clone();
                    let mut expected = BytesMut::new();
                    encode_frame(&frame, escaping, &mut expected);
                    let mut got = BytesMut::new();
                    got.extend_from_slice(&message_prefix("s-1", escaping));
                    if ack {
                        got.extend_from_slice(&shared.ack_line);
                    }
                    got.extend_from_slice(shared.tail(escaping));
                    assert_eq!(got, expected, "{escaping:?} ack={ack}");
                }
            }
        }
    }
}
