//! What the session state machine asks of the adapters around it.

use std::time::Duration;

use bytes::Bytes;

use crate::stomp::destination::Destination;
use crate::stomp::Frame;
pub use crate::stomp::Version;

/// The subscription acknowledgement modes of STOMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    /// Cumulative: an ACK acknowledges that message and all earlier ones.
    Client,
    ClientIndividual,
}

impl AckMode {
    /// Whether MESSAGE frames of a subscription in this mode carry an
    /// `ack` header: STOMP 1.2 client-ack modes only. The one rule for the
    /// session's own deliveries and the fan-out's shared encoding.
    pub fn ack_header(self, version: Version) -> bool {
        version == Version::V1_2 && self != AckMode::Auto
    }
}

/// What was agreed on CONNECT; the transport applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: Version,
    /// The gateway sends a heart-beat when it has written nothing for this long.
    pub send_every: Option<Duration>,
    /// The client is considered gone when silent for this long (grace included).
    pub expect_within: Option<Duration>,
}

/// A subscription the bridge must set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub id: String,
    pub destination: Destination,
    pub ack: AckMode,
    /// `prefetch-count` (client modes), already defaulted by the session.
    pub prefetch: u16,
    /// `durable` header: a named, durable queue that outlives the session.
    pub durable: bool,
    /// Flags of a broadcast subscription's queue of its own (durable or
    /// named), as RabbitMQ's STOMP plugin sets them: the `auto-delete`
    /// header, else true.
    pub auto_delete: bool,
    /// The `exclusive` header, else true unless `durable`: the queue
    /// belongs to the session (declared on the connection that consumes it).
    pub exclusive: bool,
    /// `x-queue-name` header: the name of the queue to declare.
    pub queue_name: Option<String>,
    /// Other `x-*` headers, passed as queue arguments on declaration.
    pub queue_arguments: Vec<(String, String)>,
}

impl SubscribeRequest {
    /// Broadcast subscriptions in `auto` mode without a queue of their own
    /// are bindings of the replica's plane, fanned out locally. In a client
    /// ack mode a broadcast subscription gets an exclusive queue of its own
    /// (as on RabbitMQ Web-STOMP), so that prefetch, NACK and redelivery
    /// are the broker's.
    pub fn is_fanout(&self) -> bool {
        self.destination.is_broadcast()
            && !self.durable
            && self.queue_name.is_none()
            && self.ack == AckMode::Auto
    }
}

/// Where replies to a SEND go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// `/temp-queue/<name>`: a private queue of this session, created on
    /// first use; replies arrive on subscription `/temp-queue/<name>`.
    Temp(String),
    /// Anything else, passed on as it is (`/reply-queue/<q>` becomes `<q>`).
    Plain(String),
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub destination: Destination,
    /// The frame's headers that map to AMQP properties or the headers table
    /// (`destination`, `receipt`, `transaction`, `content-length` and
    /// `reply-to` removed).
    pub headers: Vec<(String, String)>,
    pub reply_to: Option<ReplyTo>,
    /// The SEND's `receipt`, named in the ERROR if the broker refuses it
    /// (the RECEIPT itself follows as [`Action::Receipt`]).
    pub receipt: Option<String>,
    pub body: Bytes,
}

/// One step for the adapters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// CONNECT accepted: apply version, heart-beats and the full frame limit.
    Established(Negotiated),
    /// Write this frame to the client.
    Send(Frame),
    Subscribe(SubscribeRequest),
    Unsubscribe {
        id: String,
    },
    /// Cancel durable subscription `id` and delete its queue (UNSUBSCRIBE
    /// with `durable:true`); the [`Action::Unsubscribe`] that follows then
    /// has nothing left to do.
    DeleteDurable {
        id: String,
    },
    Publish(PublishRequest),
    /// basic.ack of `tag` on subscription `subscription`'s channel.
    Ack {
        subscription: String,
        tag: u64,
        multiple: bool,
    },
    /// basic.nack.
    Nack {
        subscription: String,
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
    /// Write RECEIPT `receipt-id` now: the session emits it once every
    /// earlier publish was confirmed ([`super::Session::publish_confirmed`]).
    Receipt(String),
    /// Flush what is queued for the client, then close the connection.
    Close,
    /// `auth.mode = "rabbitmq"`: ask RabbitMQ about these credentials and
    /// give the answer to [`crate::session::Session::authenticated`]; the
    /// session handles no frame until then.
    Authenticate(crate::auth::rabbit::AuthRequest),
}

/// Why a session ended: typed, so that metrics and logs read the reason
/// instead of parsing an ERROR's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    Disconnect,
    /// Malformed input or a codec limit.
    Protocol,
    /// A frame the session refused (missing header, unknown id, a limit).
    Refused,
    /// Authentication or authorization refused.
    AccessRefused,
    /// The session's credentials expired.
    TokenExpired,
    /// No CONNECT in time, no heart-beat, or no answer to pings.
    Timeout,
    /// The client sent frames faster than allowed.
    RateLimit,
    /// The broker refused something or failed.
    Broker,
    /// The gateway drained.
    Shutdown,
}
