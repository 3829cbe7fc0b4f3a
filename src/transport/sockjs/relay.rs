//! What replicas say to each other about a SockJS session, pure: the
//! requests a replica forwards to the session's home replica and the
//! replies it gets back, as control-queue messages
//! ([`crate::bridge::control::Message`]: an AMQP `type` and a body).
//!
//! Requests (`type`, body):
//! - `send`: `{"t":"xhr_send","m":["chunk",...]}`, the messages the
//!   forwarding replica already parsed (and bounded) from the client's body;
//! - `receive`: `{"t":"xhr"}` (`"c":"callback"` for `jsonp`/`htmlfile`),
//!   a receiving request to attach to the session;
//! - `abort`: the client of an earlier `receive` (same correlation id)
//!   went away.
//!
//! Replies: `done` (a send was handed to the session), `attached` (a
//! receiver is attached, frames follow), `data` / `end` (frames already
//! wrapped for the client's transport by the home's state machine, so the
//! forwarding replica writes them as they are; `end` is the last),
//! `unknown` (no such session here: 404), `busy` (a bound was reached:
//! 503). A decoder never trusts the other side: anything malformed is an
//! error, callbacks are checked again.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::frame::{self, Wire};
use super::session::Kind;
use crate::bridge::control::{Message, BUSY};
use crate::metrics::SockjsTransport;

/// A request for the session's home replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Send {
        transport: SockjsTransport,
        messages: Vec<String>,
    },
    Receive {
        transport: SockjsTransport,
        /// The `jsonp` / `htmlfile` callback.
        callback: Option<String>,
    },
    Abort,
}

/// A reply from the session's home replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    Attached,
    Data(Bytes),
    End(Bytes),
    Unknown,
    Busy,
}

/// A message that is not a valid request or reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed forwarded SockJS message: {0}")]
pub struct Malformed(&'static str);

#[derive(Serialize, Deserialize)]
struct SendBody {
    t: String,
    m: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ReceiveBody {
    t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<String>,
}

fn transport(name: &str) -> Result<SockjsTransport, Malformed> {
    SockjsTransport::ALL
        .into_iter()
        .find(|t| t.as_str() == name)
        .ok_or(Malformed("unknown transport"))
}

fn message(kind: &str, body: impl Into<Bytes>) -> Message {
    Message {
        kind: kind.to_owned(),
        body: body.into(),
    }
}

/// How a receiving transport answers: its kind and its wire, the callback
/// checked. `None` for transports that do not receive.
pub fn receiver_of(
    transport: SockjsTransport,
    callback: Option<&str>,
) -> Result<(Kind, Wire), Malformed> {
    let callback = || -> Result<String, Malformed> {
        match callback {
            Some(name) if frame::valid_callback(name) => Ok(name.to_owned()),
            _ => Err(Malformed("invalid callback")),
        }
    };
    Ok(match transport {
        SockjsTransport::Xhr => (Kind::Polling, Wire::Xhr),
        SockjsTransport::XhrStreaming => (Kind::Streaming, Wire::Xhr),
        SockjsTransport::Eventsource => (Kind::Streaming, Wire::EventSource),
        // The callback is in the prelude, which the forwarding replica
        // writes.
        SockjsTransport::Htmlfile => (Kind::Streaming, Wire::HtmlFile),
        SockjsTransport::Jsonp => (
            Kind::Polling,
            Wire::Jsonp {
                callback: callback()?,
            },
        ),
        _ => return Err(Malformed("not a receiving transport")),
    })
}

impl Request {
    pub fn encode(&self) -> Message {
        match self {
            Request::Send {
                transport,
                messages,
            } => {
                let body = SendBody {
                    t: transport.as_str().to_owned(),
                    m: messages.clone(),
                };
                message("send", serde_json::to_vec(&body).unwrap_or_default())
            }
            Request::Receive {
                transport,
                callback,
            } => {
                let body = ReceiveBody {
                    t: transport.as_str().to_owned(),
                    c: callback.clone(),
                };
                message("receive", serde_json::to_vec(&body).unwrap_or_default())
            }
            Request::Abort => message("abort", Bytes::new()),
        }
    }

    pub fn decode(message: &Message) -> Result<Request, Malformed> {
        match message.kind.as_str() {
            "send" => {
                let body: SendBody =
                    serde_json::from_slice(&message.body).map_err(|_| Malformed("send body"))?;
                let transport = transport(&body.t)?;
                if !matches!(
                    transport,
                    SockjsTransport::XhrSend | SockjsTransport::JsonpSend
                ) {
                    return Err(Malformed("not a sending transport"));
                }
                Ok(Request::Send {
                    transport,
                    messages: body.m,
                })
            }
            "receive" => {
                let body: ReceiveBody =
                    serde_json::from_slice(&message.body).map_err(|_| Malformed("receive body"))?;
                let transport = transport(&body.t)?;
                receiver_of(transport, body.c.as_deref())?;
                Ok(Request::Receive {
                    transport,
                    callback: body.c,
                })
            }
            "abort" => Ok(Request::Abort),
            _ => Err(Malformed("unknown request type")),
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Message {
        match self {
            Reply::Done => message("done", Bytes::new()),
            Reply::Attached => message("attached", Bytes::new()),
            Reply::Data(data) => message("data", data.clone()),
            Reply::End(data) => message("end", data.clone()),
            Reply::Unknown => message("unknown", Bytes::new()),
            Reply::Busy => message(BUSY, Bytes::new()),
        }
    }

    pub fn decode(message: Message) -> Result<Reply, Malformed> {
        Ok(match message.kind.as_str() {
            "done" => Reply::Done,
            "attached" => Reply::Attached,
            "data" => Reply::Data(message.body),
            "end" => Reply::End(message.body),
            "unknown" => Reply::Unknown,
            BUSY => Reply::Busy,
            _ => return Err(Malformed("unknown reply type")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Send {
                transport: SockjsTransport::XhrSend,
                messages: vec!["CONNECT\n\n\0".into(), "\u{2028}</script>".into()],
            },
            Request::Send {
                transport: SockjsTransport::JsonpSend,
                messages: vec![],
            },
            Request::Receive {
                transport: SockjsTransport::XhrStreaming,
                callback: None,
            },
            Request::Receive {
                transport: SockjsTransport::Jsonp,
                callback: Some("cb".into()),
            },
            Request::Abort,
        ] {
            assert_eq!(Request::decode(&request.encode()), Ok(request));
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Done,
            Reply::Attached,
            Reply::Data(Bytes::from_static(b"a[\"x\"]\n")),
            Reply::End(Bytes::new()),
            Reply::Unknown,
            Reply::Busy,
        ] {
            assert_eq!(Reply::decode(reply.encode()), Ok(reply));
        }
        assert!(Reply::decode(message("other", Bytes::new())).is_err());
    }

    #[test]
    fn hostile_requests_are_refused() {
        let bad = [
            message("send", &b"not json"[..]),
            message("send", &br#"{"t":"xhr","m":[]}"#[..]),
            message("receive", &br#"{"t":"xhr_send"}"#[..]),
            message("receive", &br#"{"t":"nope"}"#[..]),
            // A callback that would break out of the script context.
            message("receive", &br#"{"t":"jsonp","c":"a);alert(1"}"#[..]),
            message("delete", Bytes::new()),
        ];
        for m in bad {
            assert!(Request::decode(&m).is_err(), "{m:?}");
        }
    }

    #[test]
    fn receivers_by_transport() {
        assert_eq!(
            receiver_of(SockjsTransport::Xhr, None),
            Ok((Kind::Polling, Wire::Xhr))
        );
        assert_eq!(
            receiver_of(SockjsTransport::Eventsource, None),
            Ok((Kind::Streaming, Wire::EventSource))
        );
        assert_eq!(
            receiver_of(SockjsTransport::Jsonp, Some("cb")),
            Ok((
                Kind::Polling,
                Wire::Jsonp {
                    callback: "cb".into()
                }
            ))
        );
        assert!(receiver_of(SockjsTransport::XhrSend, None).is_err());
    }
}
