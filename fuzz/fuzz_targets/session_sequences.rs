//! Fuzzes the session state machine with sequences of operations: client
//! frames built from a small vocabulary (commands, destinations, headers and
//! values that mean something to the session, plus arbitrary text, put
//! through the codec so that they hold only what a client can send), raw
//! bytes decoded the way the transport does, broker deliveries, publisher
//! confirms, broker and protocol errors, consumer restarts, and time passing
//! on the session's clock (token expiry, heart-beat and connect deadlines).
//!
//! Invariants checked after every step:
//! * no panic;
//! * after `Action::Close`, nothing: `handle` and the error entry points
//!   produce no action, `deliver` returns `None`, `is_closed()` holds; only
//!   after a DISCONNECT (no ERROR), a confirm may still bring a receipt the
//!   client asked for before it;
//! * `Close` is the last action of its batch, at most one ever; an ERROR
//!   frame is immediately followed by `Close`; at most one ERROR ever;
//! * every ERROR has a `message` header, non-empty (unless the caller of
//!   `protocol_error`/`broker_error` passed an empty text) and on one line
//!   (no LF, no CR);
//! * `Action::Receipt` (and an ERROR's `receipt-id`) only for a receipt a
//!   handled frame asked for and that was not answered yet, each once; a
//!   receipt owed behind unconfirmed publishes comes with a later confirm;
//! * `Established` at most once, only for CONNECT/STOMP, with CONNECTED;
//! * `Ack`/`Nack` only for a (subscription, tag) that `deliver` delivered;
//! * `Subscribe` never reuses an active id, `Unsubscribe` only names an
//!   active one, active subscriptions stay within `max_subscriptions`;
//! * `Publish` never targets a temp queue;
//! * every frame the session writes (CONNECTED, RECEIPT is the transport's,
//!   ERROR, and MESSAGE from `deliver`) encodes for the negotiated version
//!   into something the decoder reads back as one frame of that command.
#![no_main]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use stompgate::stomp::destination::Destination;
use stompgate::config::{AuthConfig, RuleConfig, UserConfig};
use stompgate::session::{Action, Message, Session, SessionConfig};
use stompgate::stomp::frame::unescape;
use stompgate::stomp::{encode_frame, Command, Escaping, Frame, FrameLimits, Inbound, StompCodec};
use tokio_util::codec::Decoder;

const MAX_OPS: usize = 64;

const COMMANDS: [Command; 15] = Command::ALL;

const DESTINATIONS: &[&str] = &[
    "/topic/a",
    "/topic/b.c",
    "/queue/q",
    "/exchange/e/k",
    "/exchange/e",
    "/amq/queue/x",
    "/temp-queue/t",
    "/reply-queue/r",
    "/user/queue/n",
    "/user/bob/queue/n",
    "/stompgate/token",
    "/topic/",
    "/queue/",
    "/user/queue/",
    "/user/bob",
    "/temp-queue/",
    "/nowhere",
    "",
    "topic/a",
];

const HEADER_NAMES: &[&str] = &[
    "destination",
    "id",
    "ack",
    "receipt",
    "transaction",
    "message-id",
    "subscription",
    "accept-version",
    "heart-beat",
    "host",
    "login",
    "passcode",
    "prefetch-count",
    "durable",
    "persistent",
    "auto-delete",
    "x-queue-name",
    "x-message-ttl",
    "requeue",
    "reply-to",
    "content-type",
    "content-length",
    "",
];

const SUBSCRIPTION_IDS: &[&str] = &[
    "0",
    "1",
    "sub-1",
    "/topic/a",
    "/queue/q",
    "/temp-queue/t",
    "",
];

const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "2",
    "true",
    "false",
    "auto",
    "client",
    "client-individual",
    "1.0",
    "1.1",
    "1.2",
    "1.0,1.1,1.2",
    "1.2,1.1",
    "2.0",
    "0,0",
    "10000,10000",
    "1,1",
    "18446744073709551615,18446744073709551615",
    "10000",
    "x,y",
    "65535",
    "65536",
    "-1",
    "tx1",
    "tx2",
    "r1",
    "r2",
    "/",
    "localhost",
    "bob",
    "pw",
    "text/plain",
    "B_1",
    "T_0@@1",
    "T_0@@x",
    "T_@@1",
];

const CONFIGS: usize = 3;

/// Open access, default limits.
fn open_config() -> SessionConfig {
    SessionConfig::default()
}

/// Open access, tiny limits.
fn tiny_config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.limits.max_subscriptions = 2;
    c.limits.max_transaction_frames = 2;
    c.limits.max_open_transactions = 1;
    c.limits.max_frame_bytes = 512;
    c.limits.max_frame_bytes_before_connect = 256;
    c.limits.max_headers = 8;
    c.limits.max_header_line = 128;
    c
}

/// A user list, anonymous access, rules and virtual hosts.
fn users_config() -> SessionConfig {
    let rule = |verbs: &[&str], destination: &str, args: &[&str]| RuleConfig {
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        destination: destination.to_owned(),
        queue_arguments: args.iter().map(|a| a.to_string()).collect(),
    };
    let both = ["subscribe", "send"];
    let auth = AuthConfig {
        anonymous: true,
        users: vec![UserConfig {
            login: "bob".into(),
            passcode: "pw".into(),
        }],
        rules: vec![
            rule(&both, "/topic/*", &[]),
            rule(
                &both,
                "/queue/*",
                &["x-queue-name", "durable", "x-message-ttl"],
            ),
            rule(&both, "/exchange/e/*", &[]),
            rule(&["send"], "/temp-queue/*", &[]),
            rule(&["send"], "/reply-queue/*", &[]),
            rule(&both, "/user/queue/*", &[]),
            rule(&["send"], "/user/*/queue/*", &[]),
            rule(&["subscribe"], "/amq/queue/{user}", &[]),
        ],
        ..AuthConfig::default()
    };
    let mut c = SessionConfig::default();
    c.auth = stompgate::auth::Auth::from_config(&auth).expect("valid auth config");
    c.allowed_hosts = vec!["/".into(), "localhost".into()];
    c
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: u8,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Frame(FrameSpec),
    /// A well-formed frame of a common flow (so that deep states, such as an
    /// ACK of a delivered message inside a transaction, are reached quickly).
    Typical(Typical),
    /// Bytes through a codec set up as the transport does, frames handed to
    /// the session, a decode error reported with `decode_error`.
    Wire(Vec<u8>),
    Deliver {
        sub: Name,
        tag: Tag,
        headers: Vec<(Text, Text)>,
        body: Vec<u8>,
    },
    BrokerError(Text),
    ProtocolError(Text),
    RestartSubscription {
        sub: Name,
        generation: u8,
    },
    /// The broker confirms the oldest unconfirmed publish.
    Confirm,
    /// Time passes on the session's clock (seconds), then the driver calls
    /// `handle_timeout` as it would when `poll_timeout` is reached.
    Advance(u16),
}

#[derive(Debug, Arbitrary)]
enum Typical {
    Connect {
        version: u8,
        heart_beat: bool,
        login: bool,
    },
    Subscribe {
        destination: u8,
        id: u8,
        ack: u8,
        receipt: bool,
    },
    Unsubscribe {
        id: u8,
        receipt: bool,
    },
    Ack {
        delivered: u8,
        nack: bool,
        transaction: Option<u8>,
        receipt: bool,
    },
    Send {
        destination: u8,
        transaction: Option<u8>,
        reply_to: bool,
        receipt: bool,
    },
    Transaction {
        verb: u8,
        transaction: u8,
        receipt: bool,
    },
    Disconnect {
        receipt: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct FrameSpec {
    command: u8,
    destination: Option<Dest>,
    headers: Vec<(HeaderName, Value)>,
    body: Vec<u8>,
    /// Keep the frame as decoded (stored headers escaped for the version)
    /// rather than rebuilt in code (stored headers plain); see `realistic`.
    via_wire: bool,
}

#[derive(Debug, Arbitrary)]
enum Dest {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum HeaderName {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Known(u8),
    Destination(Dest),
    Subscription(u8),
    MessageId {
        sub: u8,
        tag: Tag,
    },
    /// The `message-id` of one of the MESSAGEs delivered so far.
    Delivered(u8),
    /// One of the subscription ids in use.
    Active(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    /// One of the subscription ids in use.
    Active(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Tag {
    Small { generation: u8, seq: u8 },
    Any(u64),
}

#[derive(Debug, Arbitrary)]
enum Text {
    Known(u8),
    Other(String),
}

impl Dest {
    fn text(&self) -> String {
        match self {
            Dest::Known(i) => pick(DESTINATIONS, *i).to_owned(),
            Dest::Other(s) => s.clone(),
        }
    }
}

impl HeaderName {
    fn text(&self) -> String {
        match self {
            HeaderName::Known(i) => pick(HEADER_NAMES, *i).to_owned(),
            HeaderName::Other(s) => s.clone(),
        }
    }
}

impl Tag {
    fn value(&self) -> u64 {
        match self {
            Tag::Small { generation, seq } => {
                (u64::from(generation % 4) << 40) | u64::from(seq % 8)
            }
            Tag::Any(t) => *t,
        }
    }
}

impl Name {
    fn text(&self, model: &Model) -> String {
        match self {
            Name::Known(i) => pick(SUBSCRIPTION_IDS, *i).to_owned(),
            Name::Active(i) => model.active_id(*i),
            Name::Other(s) => s.clone(),
        }
    }
}

impl Value {
    fn text(&self, model: &Model) -> String {
        match self {
            Value::Known(i) => pick(VALUES, *i).to_owned(),
            Value::Destination(d) => d.text(),
            Value::Subscription(i) => pick(SUBSCRIPTION_IDS, *i).to_owned(),
            Value::MessageId { sub, tag } => {
                format!("T_{}@@{}", pick(SUBSCRIPTION_IDS, *sub), tag.value())
            }
            Value::Delivered(i) => match model.message_ids.len() {
                0 => "T_0@@0".to_owned(),
                n => model.message_ids[usize::from(*i) % n].clone(),
            },
            Value::Active(i) => model.active_id(*i),
            Value::Other(s) => s.clone(),
        }
    }
}

impl Text {
    fn text(&self) -> String {
        const TEXTS: &[&str] = &[
            "frame exceeds the limit of 65536 bytes",
            "unknown command 'X'",
            "broker refused: NOT_FOUND - no exchange 'e'",
            "line\none",
            "cr\rhere",
            "content-type",
            "destination",
            "message-id",
            "subscription",
            "ack",
            "",
        ];
        match self {
            Text::Known(i) => pick(TEXTS, *i).to_owned(),
            Text::Other(s) => s.clone(),
        }
    }
}

/// Everything the harness knows about the session so far.
struct Model {
    session: Session,
    config: Arc<SessionConfig>,
    closed: bool,
    errors: usize,
    established: bool,
    /// (subscription, tag) pairs `deliver` turned into a MESSAGE.
    delivered: HashSet<(String, u64)>,
    /// Subscription ids of `Action::Subscribe` not yet unsubscribed.
    active: HashSet<String>,
    /// `message-id`s of the MESSAGEs delivered, in order.
    message_ids: Vec<String>,
    /// Receipt ids handed out by `Op::Typical`.
    receipts: u32,
    /// Receipts asked for by handled frames and not answered yet.
    owed: HashSet<String>,
    /// The session's clock.
    now: Instant,
    /// The transport's codec and input buffer, for `Op::Wire`.
    codec: StompCodec,
    buf: BytesMut,
}

/// What caused a batch of actions.
#[derive(Clone, Copy)]
enum Cause<'a> {
    Frame(&'a Frame),
    /// `protocol_error` / `broker_error` with this text.
    Error(&'a str),
    /// The broker confirmed the oldest publish.
    Confirm,
    Other,
}

fn wire_escaping(session: &Session) -> Escaping {
    session
        .version()
        .map(|v| v.escaping())
        .unwrap_or(Escaping::V12)
}

fn large_limits() -> FrameLimits {
    FrameLimits {
        max_frame_bytes: 1 << 30,
        max_headers: 1 << 20,
        max_header_line: 1 << 30,
    }
}

/// Encodes `frame` for `escaping` and decodes it again; it must come back as
/// exactly one frame of the same command with the same body.
fn reencode(frame: &Frame, escaping: Escaping) -> Frame {
    let mut wire = BytesMut::new();
    encode_frame(frame, escaping, &mut wire);
    let copy = wire.clone();
    let mut codec = StompCodec::new(large_limits());
    codec.set_escaping(escaping);
    let again = match codec.decode(&mut wire) {
        Ok(Some(Inbound::Frame(f))) => f,
        other => panic!(
            "encoded {} does not decode ({escaping:?}): {other:?}\nwire: {:?}",
            frame.command,
            String::from_utf8_lossy(&copy)
        ),
    };
    assert!(
        wire.is_empty(),
        "encoded {} leaves octets over",
        frame.command
    );
    assert_eq!(again.command, frame.command);
    assert_eq!(again.body, frame.body);
    again
}

impl Model {
    fn new(config: SessionConfig) -> Model {
        let config = Arc::new(config);
        let limits = FrameLimits {
            max_frame_bytes: config.limits.max_frame_bytes_before_connect,
            max_headers: config.limits.max_headers,
            max_header_line: config.limits.max_header_line,
        };
        let now = Instant::now();
        Model {
            session: Session::new(config.clone(), "fuzz-session".into(), now, 1_700_000_000),
            now,
            config,
            closed: false,
            errors: 0,
            established: false,
            delivered: HashSet::new(),
            active: HashSet::new(),
            owed: HashSet::new(),
            message_ids: Vec::new(),
            receipts: 0,
            codec: StompCodec::new(limits),
            buf: BytesMut::new(),
        }
    }

    /// One of the active subscription ids (in a stable order), or "0".
    fn active_id(&self, i: u8) -> String {
        let mut ids: Vec<&String> = self.active.iter().collect();
        ids.sort();
        match ids.len() {
            0 => "0".to_owned(),
            n => ids[usize::from(i) % n].clone(),
        }
    }

    fn check(&mut self, cause: Cause<'_>, out: &[Action]) {
        if self.closed {
            assert!(self.session.is_closed());
            // After DISCONNECT (no ERROR), the receipts still owed behind
            // unconfirmed publishes come with their confirms; nothing else.
            for action in out {
                match action {
                    Action::Receipt(r) if self.errors == 0 && matches!(cause, Cause::Confirm) => {
                        assert!(self.owed.remove(r), "receipt {r:?} after Close not owed");
                    }
                    _ => panic!("actions after Close: {out:?}"),
                }
            }
            return;
        }
        let receipt = match cause {
            Cause::Frame(f) => f.header("receipt").map(|r| r.into_owned()),
            _ => None,
        };
        if let Some(r) = &receipt {
            self.owed.insert(r.clone());
        }
        for (i, action) in out.iter().enumerate() {
            match action {
                Action::Close => {
                    assert_eq!(i + 1, out.len(), "Close is not last: {out:?}");
                    self.closed = true;
                }
                Action::Send(frame) => {
                    if frame.command == Command::Error {
                        self.check_error(frame, &cause, receipt.as_deref());
                        assert!(
                            matches!(out.get(i + 1), Some(Action::Close)),
                            "ERROR not followed by Close: {out:?}"
                        );
                    }
                    if frame.command == Command::Connected {
                        assert!(
                            matches!(out.first(), Some(Action::Established(_))),
                            "CONNECTED without Established: {out:?}"
                        );
                    }
                    reencode(frame, wire_escaping(&self.session));
                }
                Action::Established(_) => {
                    assert!(!self.established, "Established twice");
                    self.established = true;
                    match cause {
                        Cause::Frame(f) => assert!(
                            matches!(f.command, Command::Connect | Command::Stomp),
                            "Established for {}",
                            f.command
                        ),
                        _ => panic!("Established without a frame"),
                    }
                    assert!(
                        out.iter().any(
                            |a| matches!(a, Action::Send(f) if f.command == Command::Connected)
                        ),
                        "Established without CONNECTED: {out:?}"
                    );
                }
                Action::Receipt(r) => {
                    assert!(
                        self.owed.remove(r),
                        "receipt {r:?} not asked for, or answered twice: {out:?}"
                    );
                }
                Action::Ack {
                    subscription, tag, ..
                }
                | Action::Nack {
                    subscription, tag, ..
                } => {
                    assert!(
                        self.delivered.contains(&(subscription.clone(), *tag)),
                        "ack of something never delivered: {action:?}"
                    );
                }
                Action::Subscribe(req) => {
                    assert!(
                        self.active.insert(req.id.clone()),
                        "subscription id reused: {req:?}"
                    );
                    assert!(
                        self.active.len() <= self.config.limits.max_subscriptions,
                        "more subscriptions than the limit"
                    );
                }
                Action::Unsubscribe { id } => {
                    assert!(self.active.remove(id), "unsubscribe of unknown id {id:?}");
                }
                Action::Publish(req) => {
                    assert!(
                        !matches!(req.destination, Destination::TempQueue { .. }),
                        "publish to a temp queue: {req:?}"
                    );
                    if let Some(r) = &req.receipt {
                        assert!(self.owed.contains(r), "publish names receipt {r:?}");
                    }
                }
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        assert_eq!(self.session.is_closed(), self.closed, "is_closed disagrees");
    }

    fn check_error(&mut self, frame: &Frame, cause: &Cause<'_>, receipt: Option<&str>) {
        self.errors += 1;
        assert!(self.errors <= 1, "a second ERROR frame");
        let message = frame.header("message").expect("ERROR without message");
        let empty_allowed = matches!(cause, Cause::Error(text) if text.is_empty());
        assert!(
            !message.is_empty() || empty_allowed,
            "ERROR with an empty message: {frame:?}"
        );
        assert!(
            !message.contains('\n') && !message.contains('\r'),
            "ERROR message on several lines: {message:?}"
        );
        if let Some(id) = frame.header("receipt-id") {
            assert!(
                self.owed.contains(id.as_ref()) || Some(id.as_ref()) == receipt,
                "ERROR receipt-id not asked for"
            );
        }
    }

    fn handle(&mut self, frame: Frame) {
        let mut out = Vec::new();
        self.session.handle(frame.clone(), &mut out);
        self.check(Cause::Frame(&frame), &out);
        if !out.is_empty() {
            self.after_batch(&out);
        }
    }

    /// What the transport does with a batch: apply the negotiated version
    /// and limits to its codec.
    fn after_batch(&mut self, out: &[Action]) {
        for action in out {
            if let Action::Established(n) = action {
                self.codec.set_escaping(n.version.escaping());
                self.codec.set_limits(FrameLimits {
                    max_frame_bytes: self.config.limits.max_frame_bytes,
                    max_headers: self.config.limits.max_headers,
                    max_header_line: self.config.limits.max_header_line,
                });
            }
        }
    }

    fn wire(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Inbound::Frame(frame))) => self.handle(frame),
                Ok(Some(Inbound::Heartbeat)) => {}
                Ok(None) => break,
                Err(e) => {
                    // As the transport's driver reports it.
                    let mut out = Vec::new();
                    self.session.decode_error(&e, &mut out);
                    self.check(Cause::Error(&e.to_string()), &out);
                    // The transport closes; the codec's state is unspecified
                    // after an error, so later bytes go to a fresh one.
                    let mut fresh = StompCodec::new(large_limits());
                    fresh.set_escaping(self.codec.escaping());
                    self.codec = fresh;
                    self.buf.clear();
                    break;
                }
            }
        }
    }

    fn protocol_error(&mut self, text: &str) {
        let mut out = Vec::new();
        self.session.protocol_error(text, &mut out);
        self.check(Cause::Error(text), &out);
    }

    fn broker_error(&mut self, text: &str) {
        let mut out = Vec::new();
        self.session.broker_error(text, &mut out);
        self.check(Cause::Error(text), &out);
    }

    fn deliver(&mut self, sub: &str, tag: u64, message: Message) {
        let frame = self.session.deliver(sub, tag, message);
        if self.closed {
            assert!(frame.is_none(), "deliver after Close");
            return;
        }
        let Some(frame) = frame else { return };
        assert_eq!(frame.command, Command::Message);
        assert_eq!(frame.header("subscription").as_deref(), Some(sub));
        self.delivered.insert((sub.to_owned(), tag));
        if let Some(id) = frame.header("message-id") {
            self.message_ids.push(id.into_owned());
        }
        let again = reencode(&frame, wire_escaping(&self.session));
        // The headers the client acks with survive the trip.
        assert_eq!(
            again.header("message-id"),
            frame.header("message-id"),
            "message-id changed on the wire"
        );
    }

    fn confirm(&mut self) {
        let mut out = Vec::new();
        self.session.publish_confirmed(self.now, &mut out);
        self.check(Cause::Confirm, &out);
    }

    fn advance(&mut self, seconds: u16) {
        self.now += Duration::from_secs(u64::from(seconds));
        let mut out = Vec::new();
        self.session.handle_timeout(self.now, &mut out);
        if self.closed {
            assert!(out.is_empty(), "actions after Close: {out:?}");
            return;
        }
        self.check(Cause::Other, &out);
        if let Some(at) = self.session.poll_timeout() {
            assert!(at > self.now, "a deadline that handle_timeout left due");
        }
    }

    fn restart(&mut self, sub: &str, generation: u64) {
        self.session.restart_subscription(sub, generation);
    }
}

fn typical_frame(t: &Typical, model: &mut Model) -> Frame {
    const VERSIONS: &[&str] = &["1.2", "1.1", "1.0", "1.0,1.1,1.2", "1.1,1.0"];
    const ACKS: &[&str] = &["client", "client-individual", "auto"];
    const TRANSACTIONS: &[&str] = &["tx1", "tx2"];
    const VERBS: [Command; 3] = [Command::Begin, Command::Commit, Command::Abort];
    model.receipts += 1;
    let receipt = format!("r{}", model.receipts);
    let (mut frame, wants_receipt) = match t {
        Typical::Connect {
            version,
            heart_beat,
            login,
        } => {
            let mut f = Frame::new(Command::Connect)
                .with_header("accept-version", pick(VERSIONS, *version))
                .with_header("host", "/");
            if *heart_beat {
                f.push_header("heart-beat", "10000,10000");
            }
            if *login {
                f.push_header("login", "bob");
                f.push_header("passcode", "pw");
            }
            (f, false)
        }
        Typical::Subscribe {
            destination,
            id,
            ack,
            receipt,
        } => (
            Frame::new(Command::Subscribe)
                .with_header("destination", pick(DESTINATIONS, *destination))
                .with_header("id", pick(SUBSCRIPTION_IDS, *id))
                .with_header("ack", pick(ACKS, *ack)),
            *receipt,
        ),
        Typical::Unsubscribe { id, receipt } => (
            Frame::new(Command::Unsubscribe).with_header("id", &model.active_id(*id)),
            *receipt,
        ),
        Typical::Ack {
            delivered,
            nack,
            transaction,
            receipt,
        } => {
            let id = match model.message_ids.len() {
                0 => "T_0@@0".to_owned(),
                n => model.message_ids[usize::from(*delivered) % n].clone(),
            };
            let mut f =
                Frame::new(if *nack { Command::Nack } else { Command::Ack }).with_header("id", &id);
            if let Some(tx) = transaction {
                f.push_header("transaction", pick(TRANSACTIONS, *tx));
            }
            (f, *receipt)
        }
        Typical::Send {
            destination,
            transaction,
            reply_to,
            receipt,
        } => {
            let mut f = Frame::new(Command::Send)
                .with_header("destination", pick(DESTINATIONS, *destination))
                .with_body(&b"hello"[..]);
            if let Some(tx) = transaction {
                f.push_header("transaction", pick(TRANSACTIONS, *tx));
            }
            if *reply_to {
                f.push_header("reply-to", "/temp-queue/t");
            }
            (f, *receipt)
        }
        Typical::Transaction {
            verb,
            transaction,
            receipt,
        } => (
            Frame::new(VERBS[usize::from(*verb) % VERBS.len()])
                .with_header("transaction", pick(TRANSACTIONS, *transaction)),
            *receipt,
        ),
        Typical::Disconnect { receipt } => (Frame::new(Command::Disconnect), *receipt),
    };
    if wants_receipt {
        frame.push_header("receipt", &receipt);
    }
    frame
}

/// What a client could actually send: `frame` encoded for the session's
/// version and decoded again, as the transport would hand it over. (Text
/// built in code may hold octets no client can put in a header, such as NUL,
/// or LF in 1.0: the encoder writes U+FFFD for those. Feeding the session
/// such frames directly made it echo a NUL subscription id in `message-id`,
/// which no client can have sent.) With `as_decoded` the decoded frame is
/// kept (stored headers escaped for the version), otherwise it is rebuilt in
/// code with the same plain headers (stored headers unescaped).
fn realistic(frame: &Frame, escaping: Escaping, as_decoded: bool) -> Frame {
    let decoded = reencode(frame, escaping);
    if as_decoded {
        return decoded;
    }
    let mut plain = Frame::new(decoded.command);
    let stored = if decoded.command.escapes_headers() {
        decoded.escaping
    } else {
        Escaping::None
    };
    for h in &decoded.headers {
        plain.push_header(&unescape(&h.name, stored), &unescape(&h.value, stored));
    }
    plain.body = decoded.body.clone();
    plain
}

fn build_frame(spec: &FrameSpec, model: &Model) -> Frame {
    let command = COMMANDS[usize::from(spec.command) % COMMANDS.len()];
    let mut frame = Frame::new(command);
    if let Some(d) = &spec.destination {
        frame.push_header("destination", &d.text());
    }
    for (name, value) in &spec.headers {
        frame.push_header(&name.text(), &value.text(model));
    }
    frame.body = Bytes::copy_from_slice(&spec.body);
    frame
}

fuzz_target!(|input: Input| {
    let config = match usize::from(input.config) % CONFIGS {
        0 => open_config(),
        1 => tiny_config(),
        _ => users_config(),
    };
    let mut model = Model::new(config);
    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            Op::Frame(spec) => {
                let frame = build_frame(spec, &model);
                let frame = realistic(&frame, wire_escaping(&model.session), spec.via_wire);
                model.handle(frame);
            }
            Op::Typical(t) => {
                let frame = typical_frame(t, &mut model);
                model.handle(frame);
            }
            Op::Wire(bytes) => model.wire(bytes),
            Op::Deliver {
                sub,
                tag,
                headers,
                body,
            } => {
                let message = Message {
                    headers: headers.iter().map(|(n, v)| (n.text(), v.text())).collect(),
                    body: Bytes::copy_from_slice(body),
                };
                let sub = sub.text(&model);
                model.deliver(&sub, tag.value(), message);
            }
            Op::BrokerError(text) => model.broker_error(&text.text()),
            Op::ProtocolError(text) => model.protocol_error(&text.text()),
            Op::RestartSubscription { sub, generation } => {
                let sub = sub.text(&model);
                model.restart(&sub, u64::from(*generation % 4))
            }
            Op::Confirm => model.confirm(),
            Op::Advance(seconds) => model.advance(*seconds),
        }
    }
});
