//! The per-connection STOMP state machine, without I/O.
//!
//! A [`Session`] takes decoded frames (and deliveries from the broker) and
//! returns [`Action`]s: frames to write, subscriptions to set up, messages to
//! publish, acks to forward, receipts to send once the broker confirmed what
//! came before. It never blocks and never touches a socket, so every rule of
//! the protocol is tested here with plain function calls; the WebSocket and
//! AMQP adapters only carry out what it decides.
//!
//! Any protocol violation yields an ERROR frame whose `message` header says
//! what was wrong, followed by [`Action::Close`]; after that the session
//! ignores further input.

mod action;
mod confirms;
pub mod heartbeat;
mod timers;

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;

pub use action::{
    AckMode, Action, CloseReason, Negotiated, PublishRequest, ReplyTo, SubscribeRequest, Version,
};
pub use timers::Expired;

use std::time::{Duration, Instant};

use confirms::Confirms;
use timers::Timers;

use crate::auth::permissions::{self, Operation};
use crate::auth::rabbit::{AuthRequest, RabbitRefusal};
use crate::auth::user::UserDestination;
use crate::auth::{Auth, Identity, Verb};
use crate::config::{AuthMode, HeartbeatConfig, Limits, UnknownHost};
use crate::stomp::destination::{
    temp_queue_name, temp_queue_subscription, webstomp_subscription_queue, Destination,
};
use crate::stomp::{Command, DecodeError, Frame};

/// Settings a session needs, taken from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The `server` header of CONNECTED.
    pub server: String,
    pub limits: Limits,
    pub heartbeat: HeartbeatConfig,
    pub allowed_hosts: Vec<String>,
    /// The vhost of a CONNECT without `host` (the AMQP URL's).
    pub default_vhost: String,
    /// Every vhost CONNECT's `host` may select, the default one included.
    pub vhosts: Vec<String>,
    /// What a `host` that is neither a served vhost nor allowed gets.
    pub unknown_host: UnknownHost,
    pub default_prefetch: u16,
    pub auto_ack_prefetch: u16,
    /// Largest `prefetch-count` a SUBSCRIBE may ask for; larger is capped.
    pub max_prefetch: u16,
    pub auth: std::sync::Arc<Auth>,
}

impl SessionConfig {
    pub fn from_config(
        config: &crate::config::Config,
    ) -> Result<SessionConfig, crate::auth::AuthConfigError> {
        Ok(SessionConfig {
            server: format!("stompgate/{}", env!("CARGO_PKG_VERSION")),
            limits: config.limits.clone(),
            heartbeat: config.heartbeat.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
            default_vhost: default_vhost(config),
            vhosts: served_vhosts(config),
            unknown_host: config.unknown_host,
            default_prefetch: config.amqp.default_prefetch,
            auto_ack_prefetch: config.amqp.auto_ack_prefetch,
            max_prefetch: config.amqp.max_prefetch,
            auth: Auth::from_config(&config.auth)?,
        })
    }
}

impl Default for SessionConfig {
    /// The default limits with open access (anyone may do anything).
    fn default() -> Self {
        let config = crate::config::Config::default();
        let (default_vhost, vhosts) = (default_vhost(&config), served_vhosts(&config));
        SessionConfig {
            server: format!("stompgate/{}", env!("CARGO_PKG_VERSION")),
            limits: config.limits,
            heartbeat: config.heartbeat,
            default_vhost,
            vhosts,
            unknown_host: config.unknown_host,
            allowed_hosts: config.allowed_hosts,
            default_prefetch: config.amqp.default_prefetch,
            auto_ack_prefetch: config.amqp.auto_ack_prefetch,
            max_prefetch: config.amqp.max_prefetch,
            auth: Auth::open(),
        }
    }
}

/// The vhost of the gateway's AMQP URL (the first node's, for a cluster).
fn default_vhost(config: &crate::config::Config) -> String {
    if config.amqp.urls.is_empty() {
        crate::config::default_vhost(std::slice::from_ref(&config.amqp.url))
    } else {
        crate::config::default_vhost(&config.amqp.urls)
    }
}

/// The default vhost and `amqp.vhosts`.
fn served_vhosts(config: &crate::config::Config) -> Vec<String> {
    let mut all = vec![default_vhost(config)];
    for vhost in &config.amqp.vhosts {
        if !all.contains(vhost) {
            all.push(vhost.clone());
        }
    }
    all
}

/// The reserved destination a client SENDs a fresh token to (in the body,
/// or in a `passcode` header) before the current one expires.
pub const TOKEN_REFRESH_DESTINATION: &str = "/stompgate/token";

/// A message from the broker, already mapped to STOMP headers by the bridge
/// (`destination` and properties); the session adds the per-subscription
/// headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    /// CONNECT waits for RabbitMQ's answer ([`Action::Authenticate`]);
    /// frames that come meanwhile are held until it is known.
    Authenticating,
    Connected,
    Closed,
}

#[derive(Debug)]
struct Subscription {
    ack: AckMode,
    /// Served by the gateway's shared fan-out queue: the broker side is
    /// already acknowledged, client ACKs are accepted and have no effect.
    fanout: bool,
    /// Delivery tags sent to the client and not yet acked (client modes).
    pending: BTreeSet<u64>,
    /// Generation of the broker consumer (see [`GENERATION_SHIFT`]).
    generation: u64,
    /// Which subscription of this session this is (see
    /// [`INCARNATION_SHIFT`]): a reused id is a new incarnation.
    incarnation: u64,
}

#[derive(Debug, Default)]
struct Transaction {
    frames: Vec<Frame>,
    bytes: usize,
}

/// Prefix of the `message-id` of messages that the broker delivered to this
/// session's own consumer: `T_<subscription>@@<delivery tag>`.
const OWN_PREFIX: &str = "T_";
/// Delivery tags handed to [`Session::deliver`] carry the generation of the
/// subscription's consumer above this bit: when the broker connection is lost
/// and the consumer re-established, tags restart on the new channel, and acks
/// for messages of the dead channel (which the broker redelivers anyway) must
/// be told apart and ignored.
pub const GENERATION_SHIFT: u32 = 40;
/// Generations wrap within these bits (12: 4,096 consumer restarts).
pub const GENERATION_MASK: u64 = (1 << (INCARNATION_SHIFT - GENERATION_SHIFT)) - 1;
/// The tag in a `message-id` also carries, above this bit, the incarnation
/// of its subscription: an id reused after UNSUBSCRIBE is a new incarnation,
/// and an ACK of a message of the old one never settles a message of the new
/// one (whose broker tags may be the same numbers on a shared channel).
pub const INCARNATION_SHIFT: u32 = 52;

/// Prefix of the `message-id` of fanned-out messages.
pub const FANOUT_PREFIX: &str = "B_";
/// The SUBSCRIBE header naming where a resumable subscription resumes
/// (src/bridge/resume.rs); passed to the broker side of fan-out
/// subscriptions only, never a queue argument.
pub const RESUME_HEADER: &str = "x-resume-from";

pub use crate::stomp::destination::DURABLE_QUEUE_PREFIX;

/// How many reply queues (`reply-to` of received messages) a session
/// remembers as targets it may SEND to.
const MAX_REPLY_TARGETS: usize = 256;

/// The header in which the gateway stamps the sender's authenticated
/// identity on every SEND (whatever the client put there is dropped).
pub const SENDER_HEADER: &str = "stompgate-user";

/// Identity headers a client may not set on SEND: dropped, and
/// [`SENDER_HEADER`] is stamped by the gateway.
const IDENTITY_HEADERS: [&str; 3] = ["user-id", SENDER_HEADER, "jmsxuserid"];

/// The state of one STOMP session.
#[derive(Debug)]
pub struct Session {
    config: std::sync::Arc<SessionConfig>,
    id: String,
    phase: Phase,
    version: Version,
    /// CONNECT was accepted at some point (the session may be closed since).
    negotiated: bool,
    subscriptions: HashMap<String, Subscription>,
    transactions: HashMap<String, Transaction>,
    /// Who the session is, once CONNECT was accepted.
    identity: Option<Identity>,
    /// A token from the WebSocket handshake (header or query parameter).
    handshake_token: Option<String>,
    /// Subscriptions made so far (see [`INCARNATION_SHIFT`]).
    incarnations: u64,
    /// Broker-named reply queues seen in the `reply-to` of messages this
    /// session received (newest last): the only `/reply-queue/` names it
    /// may SEND to without a rule.
    reply_targets: std::collections::VecDeque<String>,
    /// Every deadline of the session, and its notion of `now`.
    timers: Timers,
    /// Publishes awaiting confirms, and the receipts waiting behind them.
    confirms: Confirms,
    /// The gateway drains: no more input; the session ends once its
    /// receipts are out.
    draining: bool,
    /// Why the session ended, once it did.
    close_reason: Option<CloseReason>,
    /// The driver does not read input for now (see [`Session::input_paused`]).
    input_paused: bool,
    /// The virtual host CONNECT selected.
    vhost: Option<String>,
    /// CONNECT awaiting RabbitMQ's answer.
    pending_connect: Option<PendingConnect>,
    /// Frames received while authenticating.
    held: Vec<Frame>,
}

/// What CONNECT negotiated while RabbitMQ checks the credentials.
#[derive(Debug)]
struct PendingConnect {
    version: Version,
    client_heartbeat: (u64, u64),
    vhost: String,
    login: String,
    receipt: Option<String>,
}

/// Frames a client may send between CONNECT and CONNECTED (while RabbitMQ
/// checks its credentials) before it is refused.
const MAX_HELD_FRAMES: usize = 64;

impl Session {
    fn next_incarnation(&mut self) -> u64 {
        self.incarnations += 1;
        self.incarnations - 1
    }

    /// A session awaiting CONNECT; `id` is the `session` header of CONNECTED.
    /// `now` starts the session's clock; `unix_now` is the Unix time (in
    /// seconds) at that moment, for token times.
    pub fn new(
        config: std::sync::Arc<SessionConfig>,
        id: String,
        now: Instant,
        unix_now: u64,
    ) -> Session {
        let timers = Timers::new(now, unix_now, config.limits.connect_timeout());
        Session {
            timers,
            confirms: Confirms::default(),
            draining: false,
            close_reason: None,
            input_paused: false,
            config,
            id,
            phase: Phase::AwaitingConnect,
            version: Version::V1_2,
            negotiated: false,
            subscriptions: HashMap::new(),
            transactions: HashMap::new(),
            identity: None,
            handshake_token: None,
            incarnations: 0,
            reply_targets: std::collections::VecDeque::new(),
            vhost: None,
            pending_connect: None,
            held: Vec::new(),
        }
    }

    /// A token the WebSocket handshake carried (`Authorization: Bearer` or
    /// `access_token`), used when CONNECT brings none.
    pub fn set_handshake_token(&mut self, token: Option<String>) {
        self.handshake_token = token;
    }

    /// The virtual host CONNECT selected, once connected.
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_deref()
    }

    /// Who the session is, once connected.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The credentials expired: end the session.
    fn token_expired(&mut self, out: &mut Vec<Action>) {
        if self.phase == Phase::Connected {
            self.fail(
                CloseReason::TokenExpired,
                "Credential expired",
                "The credential used to authenticate this connection has expired",
                None,
                out,
            );
        }
    }

    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<Version> {
        self.negotiated.then_some(self.version)
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Input arrived from the client at `now` (a heart-beat counts).
    pub fn received(&mut self, now: Instant) {
        self.timers.input(now);
    }

    /// The transport pings clients that negotiated no heart-beats every
    /// `every` (WebSocket pings); a client answering nothing for two
    /// intervals is then judged gone.
    pub fn set_keepalive(&mut self, every: Option<Duration>) {
        self.timers.set_keepalive(every);
    }

    /// When the driver must call [`Session::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        self.timers.next(
            self.phase == Phase::Connected,
            self.phase == Phase::AwaitingConnect,
        )
    }

    /// Time passed: acts on whatever deadline is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.timers.advance(now);
        let expired = self.timers.expired(
            now,
            self.phase == Phase::Connected,
            self.phase == Phase::AwaitingConnect,
        );
        match expired {
            None => {}
            Some(Expired::Token) => self.token_expired(out),
            Some(Expired::Connect) => {
                let ms = self.config.limits.connect_timeout_ms;
                self.close_with(
                    CloseReason::Timeout,
                    &format!("no CONNECT frame within {ms} ms"),
                    out,
                );
            }
            Some(Expired::Heartbeat(within)) => self.close_with(
                CloseReason::Timeout,
                &format!(
                    "no heart-beat from the client within {} ms",
                    within.as_millis()
                ),
                out,
            ),
            Some(Expired::Keepalive(within)) => self.close_with(
                CloseReason::Timeout,
                &format!(
                    "no answer to WebSocket pings within {} ms",
                    within.as_millis()
                ),
                out,
            ),
            Some(Expired::Drain) => {
                self.timers.stop_drain_timer();
                self.draining = true;
                self.finish_drain(out);
            }
        }
    }

    /// The gateway drains: at `at` this session stops reading, sends the
    /// receipts still owed, then ends with an ERROR.
    pub fn drain_at(&mut self, at: Instant) {
        self.timers.drain_at(at);
    }

    fn finish_drain(&mut self, out: &mut Vec<Action>) {
        if self.draining && self.confirms.unconfirmed() == 0 && self.phase != Phase::Closed {
            self.fail(CloseReason::Shutdown, "server shutting down", "", None, out);
        }
    }

    /// The broker confirmed the oldest publish still awaiting its confirm:
    /// the receipts due now follow as [`Action::Receipt`].
    pub fn publish_confirmed(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.timers.advance(now);
        let mut due = Vec::new();
        self.confirms.confirmed(&mut due);
        out.extend(due.into_iter().map(Action::Receipt));
        self.update_pause();
        self.finish_drain(out);
    }

    /// Whether a message just delivered on `subscription` is acknowledged
    /// to the broker by the gateway at once: `ack:auto` subscriptions on a
    /// queue of their own (and replies to temp queues). Broadcast
    /// (fan-out) messages never reach the session's own consumers.
    pub fn acks_on_delivery(&self, subscription: &str) -> bool {
        self.subscriptions
            .get(subscription)
            .is_some_and(|s| s.ack == AckMode::Auto && !s.fanout)
    }

    /// Publishes of this session awaiting the broker's confirm.
    pub fn unconfirmed(&self) -> usize {
        self.confirms.unconfirmed()
    }

    /// Whether the driver should read the client's input: not once the
    /// session ended or drains, nor while too many publishes await
    /// confirms (back-pressure: TCP then slows the client down, as
    /// RabbitMQ's credit flow does).
    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Closed && !self.draining && !self.back_pressured()
    }

    fn back_pressured(&self) -> bool {
        self.confirms.unconfirmed() >= self.config.limits.max_unconfirmed_publishes
    }

    fn update_pause(&mut self) {
        let paused = self.back_pressured() || self.input_paused;
        self.timers.pause(paused);
    }

    /// The driver stops (or resumes) reading input for a reason of its own
    /// (it waits for room in the client's outbound queue): while paused,
    /// the client's silence is not judged.
    pub fn input_paused(&mut self, paused: bool) {
        self.input_paused = paused;
        self.update_pause();
    }

    /// The session is over and owes nothing more: the driver may end it.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Closed && self.confirms.unconfirmed() == 0
    }

    /// Why the session ended (`None` while it runs, or when the client
    /// simply went away).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    /// A receipt the frame asked for: due now, or once the publishes ahead
    /// of it are confirmed.
    fn push_receipt(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        let Some(receipt) = frame.header("receipt") else {
            return Ok(());
        };
        let limit = self.config.limits.max_pending_receipts;
        match self.confirms.receipt(receipt.into_owned(), limit) {
            Ok(Some(due)) => out.push(Action::Receipt(due)),
            Ok(None) => {}
            Err(confirms::TooManyReceipts) => {
                return Err(Refusal::new(format!(
                    "too many receipts pending (limit {limit})"
                )))
            }
        }
        Ok(())
    }

    /// Handles one frame from the client.
    pub fn handle(&mut self, frame: Frame, out: &mut Vec<Action>) {
        let result = match self.phase {
            Phase::Closed => return,
            Phase::AwaitingConnect => match frame.command {
                Command::Connect | Command::Stomp => self.connect(&frame, out),
                other => Err(Refusal::rabbit(
                    "Illegal command",
                    format!("You must log in using CONNECT first (got {other})\n"),
                )),
            },
            Phase::Connected => self.dispatch(&frame, out),
            Phase::Authenticating => {
                if self.held.len() >= MAX_HELD_FRAMES {
                    Err(Refusal::new(format!(
                        "more than {MAX_HELD_FRAMES} frames before CONNECTED"
                    )))
                } else {
                    self.held.push(detach(&frame));
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(refusal) => {
                let receipt = frame.header("receipt").map(|r| r.into_owned());
                self.fail(
                    refusal.reason,
                    &refusal.message,
                    &refusal.detail,
                    receipt.as_deref(),
                    out,
                );
            }
        }
    }

    /// The transport could not decode the input (malformed frame, limit).
    pub fn protocol_error(&mut self, message: &str, out: &mut Vec<Action>) {
        self.close_with(CloseReason::Protocol, message, out);
    }

    /// The codec could not decode the input: an unknown command is
    /// RabbitMQ's `Bad command` (`rabbit_stomp_processor`: message header
    /// `Bad command`, body `Could not interpret command "<command>"`), or
    /// before CONNECT its `Illegal command`, as any frame then; anything
    /// else a [`Session::protocol_error`] with the codec's text.
    pub fn decode_error(&mut self, error: &DecodeError, out: &mut Vec<Action>) {
        match error {
            // Before CONNECT, as any other frame then.
            DecodeError::UnknownCommand(command) if self.phase == Phase::AwaitingConnect => {
                let detail = format!("You must log in using CONNECT first (got {command})\n");
                self.fail(CloseReason::Protocol, "Illegal command", &detail, None, out);
            }
            DecodeError::UnknownCommand(command) if self.phase != Phase::Closed => {
                let detail = format!("Could not interpret command \"{command}\"\n");
                self.fail(CloseReason::Protocol, "Bad command", &detail, None, out);
            }
            other => self.protocol_error(&other.to_string(), out),
        }
    }

    /// Ends the session with an ERROR saying `message`, for `reason`.
    pub fn close_with(&mut self, reason: CloseReason, message: &str, out: &mut Vec<Action>) {
        if self.phase != Phase::Closed {
            self.fail(reason, message, "", None, out);
        }
    }

    /// The broker refused what this session asked (a declaration, a bind,
    /// a publish) or the session's broker resources failed.
    pub fn broker_error(&mut self, message: &str, out: &mut Vec<Action>) {
        self.broker_error_for(message, None, out);
    }

    /// As [`Session::broker_error`], for the frame that asked for `receipt`.
    pub fn broker_error_for(
        &mut self,
        message: &str,
        receipt: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Closed {
            let (header, detail) = broker_error_texts(message);
            // Nothing queued behind a refusal may be confirmed.
            self.confirms.clear();
            self.fail(CloseReason::Broker, &header, &detail, receipt, out);
        }
    }

    /// The broker consumer of `subscription` was re-established after a loss
    /// with `generation`: what the client had not acked will be redelivered,
    /// and acks for the old deliveries are ignored.
    pub fn restart_subscription(&mut self, subscription: &str, generation: u64) {
        if let Some(sub) = self.subscriptions.get_mut(subscription) {
            sub.generation = generation;
            sub.pending.clear();
        }
    }

    /// A message the broker delivered to this session's own consumer of
    /// `subscription` with `tag`. Returns the MESSAGE frame, or `None` when
    /// the subscription is gone (the adapter then leaves it unacked, and the
    /// broker requeues it when the channel closes).
    pub fn deliver(&mut self, subscription: &str, tag: u64, message: Message) -> Option<Frame> {
        if self.phase != Phase::Connected {
            return None;
        }
        let version = self.version;
        let sub = self.subscriptions.get_mut(subscription)?;
        let tag = (tag & ((1 << INCARNATION_SHIFT) - 1))
            | ((sub.incarnation & 0xFFF) << INCARNATION_SHIFT);
        let message_id = format!("{OWN_PREFIX}{subscription}@@{tag}");
        let mut frame = Frame::new(Command::Message);
        frame.push_header("subscription", subscription);
        frame.push_header("message-id", &message_id);
        if sub.ack.ack_header(version) {
            frame.push_header("ack", &message_id);
        }
        if sub.ack != AckMode::Auto {
            sub.pending.insert(tag);
        }
        for (name, value) in &message.headers {
            if name == "reply-to" {
                if let Some(queue) = value.strip_prefix("/reply-queue/") {
                    remember_reply_target(&mut self.reply_targets, queue);
                }
            }
            frame.push_header(name, value);
        }
        frame.body = message.body;
        Some(frame)
    }

    fn dispatch(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        match frame.command {
            Command::Connect | Command::Stomp => Err(Refusal::new("already connected")),
            Command::Send => self.send(frame, out, false),
            Command::Subscribe => self.subscribe(frame, out),
            Command::Unsubscribe => self.unsubscribe(frame, out),
            Command::Ack => self.ack(frame, out, false, false),
            Command::Nack => self.ack(frame, out, true, false),
            Command::Begin => self.begin(frame, out),
            Command::Commit => self.commit(frame, out),
            Command::Abort => self.abort(frame, out),
            Command::Disconnect => {
                self.push_receipt(frame, out)?;
                out.push(Action::Close);
                self.phase = Phase::Closed;
                self.close_reason = Some(CloseReason::Disconnect);
                Ok(())
            }
            other @ (Command::Connected | Command::Message | Command::Receipt | Command::Error) => {
                Err(Refusal::rabbit(
                    "Bad command",
                    format!("Could not interpret command \"{other}\" (a server frame)\n"),
                ))
            }
        }
    }

    fn connect(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        let version = match frame.header("accept-version") {
            None => Version::V1_0,
            Some(list) => list
                .split(',')
                .filter_map(|v| match v.trim() {
                    "1.0" => Some(Version::V1_0),
                    "1.1" => Some(Version::V1_1),
                    "1.2" => Some(Version::V1_2),
                    _ => None,
                })
                .max()
                .ok_or_else(|| {
                    Refusal::rabbit("Version mismatch", "Supported versions are 1.0,1.1,1.2\n")
                })?,
        };
        let vhost = self.select_vhost(frame.header("host").as_deref())?;
        // Read in 1.0 too, as RabbitMQ does (a 1.0 client that does not
        // know the header does not send it).
        let client_heartbeat = match frame.header("heart-beat") {
            None => (0, 0),
            // A 1.0 client may use the header for something else.
            Some(value) if version == Version::V1_0 => heartbeat::parse(&value).unwrap_or((0, 0)),
            Some(value) => heartbeat::parse(&value)
                .ok_or_else(|| Refusal::new(format!("malformed heart-beat header '{value}'")))?,
        };
        if self.config.auth.mode == AuthMode::Rabbitmq {
            // RabbitMQ checks the credentials: the transport asks it and
            // calls `authenticated` with the answer.
            // Each missing header falls back to the configured default
            // user, as in RabbitMQ's STOMP plugin (`creds/3`).
            let auth = &self.config.auth;
            let login = frame
                .header("login")
                .map(|l| l.into_owned())
                .or_else(|| auth.rabbit_default_login.clone());
            let passcode = frame
                .header("passcode")
                .map(|p| p.into_owned())
                .or_else(|| auth.rabbit_default_passcode.clone());
            let (Some(login), Some(passcode)) = (login, passcode) else {
                return Err(Refusal::rabbit(
                    "Bad CONNECT",
                    "Missing login or passcode header(s)",
                ));
            };
            self.phase = Phase::Authenticating;
            self.pending_connect = Some(PendingConnect {
                version,
                client_heartbeat,
                vhost: vhost.clone(),
                login: login.clone(),
                receipt: frame.header("receipt").map(|r| r.into_owned()),
            });
            out.push(Action::Authenticate(AuthRequest {
                login,
                passcode,
                vhost,
            }));
            return Ok(());
        }
        let identity = self
            .config
            .auth
            .authenticate(
                frame.header("login").as_deref(),
                frame.header("passcode").as_deref(),
                self.handshake_token.as_deref(),
                self.timers.unix_now(),
            )
            .map_err(|e| {
                let login = frame
                    .header("login")
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                Refusal::rabbit(
                    "Bad CONNECT",
                    format!("Access refused for user '{login}'\n{e}\n"),
                )
                .auth()
            })?;
        self.establish(version, client_heartbeat, vhost, identity, out);
        Ok(())
    }

    /// RabbitMQ's answer to [`Action::Authenticate`]: CONNECTED (and the
    /// frames held meanwhile), or the ERROR Web-STOMP writes, and the close.
    pub fn authenticated(
        &mut self,
        result: Result<Identity, RabbitRefusal>,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Authenticating {
            return;
        }
        let Some(pending) = self.pending_connect.take() else {
            return;
        };
        self.phase = Phase::AwaitingConnect;
        match result {
            Ok(identity) => {
                self.establish(
                    pending.version,
                    pending.client_heartbeat,
                    pending.vhost,
                    identity,
                    out,
                );
                for frame in std::mem::take(&mut self.held) {
                    self.handle(frame, out);
                }
            }
            Err(refusal) => {
                self.held.clear();
                let detail = match refusal {
                    RabbitRefusal::BadCredentials => {
                        format!("Access refused for user '{}'\n", pending.login)
                    }
                    RabbitRefusal::VhostDenied => {
                        format!("Virtual host '{}' access denied", pending.vhost)
                    }
                    RabbitRefusal::Unavailable(why) => {
                        format!("Access refused for user '{}'\n{why}\n", pending.login)
                    }
                };
                self.fail(
                    CloseReason::AccessRefused,
                    "Bad CONNECT",
                    &detail,
                    pending.receipt.as_deref(),
                    out,
                );
            }
        }
    }

    /// CONNECT accepted for `identity` on `vhost`: CONNECTED.
    fn establish(
        &mut self,
        version: Version,
        client_heartbeat: (u64, u64),
        vhost: String,
        identity: Identity,
        out: &mut Vec<Action>,
    ) {
        let hb = heartbeat::negotiate(client_heartbeat, &self.config.heartbeat);
        self.version = version;
        self.negotiated = true;
        self.phase = Phase::Connected;
        let mut connected = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("server", &self.config.server)
            .with_header("session", &self.id);
        // Every version, 1.0 included, as RabbitMQ writes it.
        connected.push_header(
            "heart-beat",
            &format!("{},{}", hb.server_header.0, hb.server_header.1),
        );
        out.push(Action::Established(Negotiated {
            version,
            send_every: hb.send_every,
            expect_within: hb.expect_within,
        }));
        self.timers.expect_within = hb.expect_within;
        self.timers.expires_at = identity
            .expires_at
            .and_then(|at| self.timers.instant_of(at));
        self.identity = Some(identity);
        self.vhost = Some(vhost);
        out.push(Action::Send(connected));
    }

    /// The vhost CONNECT's `host` selects, as RabbitMQ's STOMP plugin does
    /// (none: the default one), within what the gateway serves.
    fn select_vhost(&self, host: Option<&str>) -> Result<String, Refusal> {
        let config = &self.config;
        let refuse = |host: &str| {
            Refusal::rabbit(
                "Bad CONNECT",
                format!("Virtual host '{host}' access denied"),
            )
            .auth()
        };
        match host {
            None if config.allowed_hosts.is_empty() => Ok(config.default_vhost.clone()),
            None => Err(refuse("")),
            Some(host) if config.vhosts.iter().any(|v| v == host) => Ok(host.to_owned()),
            Some(host) if config.allowed_hosts.iter().any(|a| a == host) => {
                Ok(config.default_vhost.clone())
            }
            Some(_)
                if config.unknown_host == UnknownHost::Default
                    && config.allowed_hosts.is_empty() =>
            {
                Ok(config.default_vhost.clone())
            }
            Some(host) => Err(refuse(host)),
        }
    }

    /// SEND to [`TOKEN_REFRESH_DESTINATION`]: a fresh token for the same user.
    fn refresh_token(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        let token = match frame.header("passcode") {
            Some(p) => p.into_owned(),
            None => String::from_utf8_lossy(&frame.body).trim().to_owned(),
        };
        let current = self
            .identity
            .as_ref()
            .ok_or_else(|| Refusal::new("not connected"))?;
        let next = self
            .config
            .auth
            .refresh(current, &token, self.timers.unix_now())
            .map_err(|e| Refusal::new(format!("token refresh refused: {e}")))?;
        self.timers.expires_at = next.expires_at.and_then(|at| self.timers.instant_of(at));
        self.identity = Some(next);
        self.push_receipt(frame, out)?;
        Ok(())
    }

    /// Parses the destination of `frame`, resolves `/user/` forms to the
    /// user exchange, and checks that the session may do `verb` there.
    fn authorized_destination(
        &self,
        frame: &Frame,
        verb: Verb,
        arguments: &[&str],
    ) -> Result<Destination, Refusal> {
        let written = frame.header("destination").ok_or_else(|| {
            Refusal::rabbit(
                "Missing destination",
                format!(
                    "\"{}\" must include a 'destination' header\n",
                    frame.command
                ),
            )
        })?;
        let anonymous = Identity::anonymous();
        let identity = self.identity.as_ref().unwrap_or(&anonymous);
        let destination = match UserDestination::parse(&written) {
            None => Destination::parse(&written)
                .map_err(|e| Refusal::rabbit(e.message(), e.to_string()))?,
            Some(Err(message)) => {
                return Err(Refusal::rabbit(
                    "Invalid destination",
                    format!("{message}\n"),
                ))
            }
            Some(Ok(user_destination)) => {
                let routing_key = match (&user_destination, &identity.user) {
                    (UserDestination::Own { .. }, None) => {
                        return Err(access_refused("anonymous sessions have no /user/ queue"))
                    }
                    (_, user) => user_destination.routing_key(user.as_deref().unwrap_or("")),
                };
                Destination::Exchange {
                    exchange: self.config.auth.user_exchange.clone(),
                    routing_key,
                }
            }
        };
        // A reply queue handed to this session (the reply-to of a message
        // it received) needs no rule; any other goes through the rules.
        if let Destination::ReplyQueue { name } = &destination {
            if verb == Verb::Send
                && !name.starts_with(DURABLE_QUEUE_PREFIX)
                && self.reply_targets.iter().any(|t| t == name)
            {
                return Ok(destination);
            }
        }
        self.config
            .auth
            .authorize(verb, &written, &destination, identity, arguments)
            .map_err(|e| access_refused(e.to_string().trim_start_matches("access refused: ")))?;
        Ok(destination)
    }

    /// `auth.mode = "rabbitmq"`: refuses `op` as RabbitMQ would refuse it
    /// to a connection of the session's user (its current permissions).
    fn check_rabbit_permissions(&self, op: &Operation<'_>) -> Result<(), Refusal> {
        let Some(handle) = self.identity.as_ref().and_then(|i| i.permissions.as_ref()) else {
            return Ok(());
        };
        handle
            .current()
            .check_all(&permissions::checks(op))
            .map_err(|refused| Refusal::rabbit("access_refused", refused.body()))
    }

    /// Checks a SEND's `reply-to` other than `/temp-queue/`: a reply queue
    /// handed to this session (or allowed by a rule), or a destination the
    /// session may SUBSCRIBE to (where it can read the replies). Anything
    /// else would let a client make a backend answer into any queue.
    fn check_reply_to(&self, value: &str) -> Result<ReplyTo, Refusal> {
        let refused = || {
            access_refused(&format!(
                "reply-to '{}' is not a reply queue of this session",
                value.chars().take(100).collect::<String>()
            ))
        };
        let probe = Frame::new(Command::Send).with_header("destination", value);
        if let Some(queue) = value.strip_prefix("/reply-queue/") {
            self.authorized_destination(&probe, Verb::Send, &[])
                .map_err(|_| refused())?;
            return Ok(ReplyTo::Plain(queue.to_owned()));
        }
        if UserDestination::parse(value).is_some() || Destination::parse(value).is_err() {
            return Err(refused());
        }
        self.authorized_destination(&probe, Verb::Subscribe, &[])
            .map_err(|_| refused())?;
        Ok(ReplyTo::Plain(value.to_owned()))
    }

    fn send(&mut self, frame: &Frame, out: &mut Vec<Action>, replay: bool) -> Result<(), Refusal> {
        if frame.header("destination").as_deref() == Some(TOKEN_REFRESH_DESTINATION) {
            return self.refresh_token(frame, out);
        }
        // Checked before the destination, as RabbitMQ does
        // (`ensure_no_headers(?HEADERS_NOT_ON_SEND, ...)`).
        if frame.header("message-id").is_some() {
            return Err(Refusal::rabbit(
                "Invalid header",
                "'message-id' is not allowed on 'SEND'.\n",
            ));
        }
        let destination = self.authorized_destination(frame, Verb::Send, &[])?;
        if let Destination::TempQueue { .. } = destination {
            return Err(Refusal::rabbit(
                "Invalid destination",
                format!(
                    "'{}' is not a valid destination for 'SEND' (use it as reply-to)\n",
                    frame.header("destination").unwrap_or_default()
                ),
            ));
        }
        if !replay && self.buffer_in_transaction(frame, out)? {
            return Ok(());
        }
        let mut new_reply_queue = false;
        let reply_to = match frame.header("reply-to") {
            None => None,
            Some(value) => {
                if let Some(name) = temp_queue_name(&value) {
                    if name.is_empty() {
                        return Err(Refusal::rabbit(
                            "Invalid destination",
                            "'/' is not a valid temp_queue destination\n",
                        ));
                    }
                    let sub_id = temp_queue_subscription(name);
                    if !self.subscriptions.contains_key(&sub_id) {
                        new_reply_queue = true;
                        self.check_subscription_limit()?;
                        let incarnation = self.next_incarnation();
                        self.subscriptions.insert(
                            sub_id,
                            Subscription {
                                ack: AckMode::Auto,
                                fanout: false,
                                pending: BTreeSet::new(),
                                generation: 0,
                                incarnation,
                            },
                        );
                    }
                    Some(ReplyTo::Temp(name.to_owned()))
                } else {
                    Some(self.check_reply_to(&value)?)
                }
            }
        };
        self.check_rabbit_permissions(&Operation {
            verb: Verb::Send,
            destination: &destination,
            subscription_queue: None,
            new_reply_queue,
        })?;
        let mut headers: Vec<(String, String)> = frame
            .headers()
            .filter(|(name, _)| {
                !matches!(
                    name.as_ref(),
                    "destination" | "receipt" | "transaction" | "content-length" | "reply-to"
                ) && !IDENTITY_HEADERS
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h))
                    // No header name a STOMP 1.0 reader would split
                    // differently (1.0 has no escaping).
                    && !name.contains([':', '\n', '\r'])
            })
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        if let Some(user) = self.identity.as_ref().and_then(|i| i.user.as_deref()) {
            headers.push((SENDER_HEADER.to_owned(), user.to_owned()));
        }
        out.push(Action::Publish(PublishRequest {
            destination,
            headers,
            reply_to,
            receipt: frame.header("receipt").map(|r| r.into_owned()),
            body: frame.body.clone(),
        }));
        self.confirms.publish();
        self.update_pause();
        // Also when replayed by COMMIT: a SEND's RECEIPT follows the
        // broker's confirm of that very publish (as RabbitMQ does).
        self.push_receipt(frame, out)?;
        Ok(())
    }

    fn subscribe(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        require_durable_id(frame)?;
        let durable = parse_bool(frame, "durable")?.unwrap_or(false)
            || parse_bool(frame, "persistent")?.unwrap_or(false);
        // `x-resume-from` is a position, not a queue argument (see
        // src/bridge/resume.rs): rules on queue arguments do not see it.
        let mut arguments: Vec<String> = frame
            .headers()
            .filter(|(n, _)| n.starts_with("x-") && n != RESUME_HEADER)
            .map(|(n, _)| n.into_owned())
            .collect();
        if durable {
            arguments.push("durable".to_owned());
        }
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let destination = self.authorized_destination(frame, Verb::Subscribe, &arguments)?;
        if matches!(
            destination,
            Destination::TempQueue { .. } | Destination::ReplyQueue { .. }
        ) {
            return Err(Refusal::rabbit(
                "Invalid destination",
                format!("'{destination}' is not a valid destination for 'SUBSCRIBE' (temporary queues are subscribed by SEND with reply-to)\n"),
            ));
        }
        let id = match frame.header("id") {
            Some(id) => id.into_owned(),
            // 1.0: the destination, as written, names the subscription (so
            // that UNSUBSCRIBE by destination finds it).
            None if self.version == Version::V1_0 => frame
                .header("destination")
                .map(|d| d.into_owned())
                .unwrap_or_default(),
            None => {
                return Err(Refusal::rabbit(
                    "Missing header",
                    "SUBSCRIBE must include an 'id' header in STOMP 1.1 and 1.2\n",
                ))
            }
        };
        if temp_queue_name(&id).is_some() {
            return Err(Refusal::rabbit(
                "Invalid id",
                "SUBSCRIBE 'id' may not start with /temp-queue/\n",
            ));
        }
        if self.subscriptions.contains_key(&id) {
            return Err(Refusal::rabbit(
                "Duplicated subscription identifier",
                format!("A subscription identified by '{OWN_PREFIX}{id}' already exists."),
            ));
        }
        self.check_subscription_limit()?;
        let ack = match frame.header("ack").as_deref() {
            None | Some("auto") => AckMode::Auto,
            Some("client") => AckMode::Client,
            Some("client-individual") => AckMode::ClientIndividual,
            Some(other) => {
                return Err(Refusal::rabbit(
                    "Invalid header",
                    format!(
                        "invalid ack mode '{other}': expected auto, client or client-individual\n"
                    ),
                ))
            }
        };
        let default_prefetch = if ack == AckMode::Auto {
            self.config.auto_ack_prefetch
        } else {
            self.config.default_prefetch
        };
        let prefetch = match frame.header("prefetch-count") {
            None => default_prefetch,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(0) => default_prefetch,
                Ok(n) => n.min(self.config.max_prefetch.max(1)),
                Err(_) => {
                    return Err(Refusal::rabbit(
                        "Invalid header",
                        format!("invalid prefetch-count '{v}': expected 1 to 65535\n"),
                    ))
                }
            },
        };
        // The flags of a broadcast subscription's queue of its own, as
        // RabbitMQ's STOMP plugin sets them: `auto-delete` and `exclusive`
        // headers, else auto-delete, and exclusive unless durable (a named
        // transient queue is the subscription's alone; RabbitMQ 4 refuses
        // transient queues that are not exclusive).
        let auto_delete = parse_bool(frame, "auto-delete")?.unwrap_or(true);
        let exclusive = parse_bool(frame, "exclusive")?.unwrap_or(!durable);
        let mut queue_name = frame.header("x-queue-name").map(|q| q.into_owned());
        if queue_name
            .as_deref()
            .is_some_and(|q| q.is_empty() || q.len() > 255)
        {
            return Err(Refusal::rabbit(
                "Invalid header",
                "x-queue-name must be 1 to 255 bytes\n",
            ));
        }
        if queue_name
            .as_deref()
            .is_some_and(|q| q.starts_with(DURABLE_QUEUE_PREFIX) || q.starts_with("amq."))
        {
            return Err(access_refused(&format!(
                "x-queue-name may not start with {DURABLE_QUEUE_PREFIX} or amq."
            )));
        }
        if durable && queue_name.is_none() && destination.is_broadcast() {
            queue_name = Some(self.durable_queue_name(&destination, &id)?);
        }
        let queue_arguments: Vec<(String, String)> = frame
            .headers()
            .filter(|(n, _)| n.starts_with("x-") && n != "x-queue-name" && n != RESUME_HEADER)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        // auth.mode = "rabbitmq": what RabbitMQ would check for the
        // declare, consume and bind Web-STOMP makes. A session's own
        // `/user/` queue is the gateway's, not a RabbitMQ resource.
        let written = frame.header("destination").unwrap_or_default();
        if !matches!(
            UserDestination::parse(&written),
            Some(Ok(UserDestination::Own { .. }))
        ) {
            let subscription_queue = destination.is_broadcast().then(|| {
                queue_name
                    .clone()
                    .unwrap_or_else(|| permissions::transient_subscription_queue(&written, &id))
            });
            self.check_rabbit_permissions(&Operation {
                verb: Verb::Subscribe,
                destination: &destination,
                subscription_queue,
                new_reply_queue: false,
            })?;
        }
        let request = SubscribeRequest {
            id: id.clone(),
            destination,
            ack,
            prefetch,
            durable,
            auto_delete,
            exclusive,
            queue_name,
            queue_arguments,
        };
        // A resume position goes to the broker side of a fan-out
        // subscription only (it is never declared as a queue argument).
        let mut request = request;
        if request.is_fanout() {
            if let Some(position) = frame.header(RESUME_HEADER) {
                request
                    .queue_arguments
                    .push((RESUME_HEADER.to_owned(), position.into_owned()));
            }
        }
        let incarnation = self.next_incarnation();
        self.subscriptions.insert(
            id,
            Subscription {
                ack,
                fanout: request.is_fanout(),
                pending: BTreeSet::new(),
                generation: 0,
                incarnation,
            },
        );
        out.push(Action::Subscribe(request));
        self.push_receipt(frame, out)?;
        Ok(())
    }

    /// The queue of durable subscription `id` to `destination`.
    ///
    /// With `auth.mode = "rabbitmq"`, RabbitMQ's own name
    /// ([`webstomp_subscription_queue`]): the users are RabbitMQ's and so
    /// are the permissions that decide who may declare, consume or share
    /// that queue, as on Web-STOMP. Otherwise (users of the gateway's own,
    /// JWTs, anonymous) `stomp-subscription-<user>.<id>`, both
    /// percent-encoded as for `/user/` (so no two (user, id) pairs give one
    /// name; anonymous sessions are `%anonymous`, a name no encoded user
    /// can take): two users with stompjs' default id `sub-0` never share a
    /// queue.
    fn durable_queue_name(&self, destination: &Destination, id: &str) -> Result<String, Refusal> {
        if self.config.auth.mode == AuthMode::Rabbitmq {
            let (_, key) = destination.publish_target();
            return Ok(webstomp_subscription_queue(key, id));
        }
        let user = match self.identity.as_ref().and_then(|i| i.user.as_deref()) {
            Some(user) => crate::auth::user::encode_user(user),
            None => "%anonymous".to_owned(),
        };
        let name = format!(
            "{DURABLE_QUEUE_PREFIX}{user}.{}",
            crate::auth::user::encode_user(id)
        );
        if name.len() > 255 {
            return Err(Refusal::new(
                "durable subscription: user and id make a queue name longer than 255 bytes",
            ));
        }
        Ok(name)
    }

    fn unsubscribe(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        require_durable_id(frame)?;
        let id = match (frame.header("id"), self.version) {
            (Some(id), _) => id.into_owned(),
            (None, Version::V1_0) => frame
                .header("destination")
                .map(|d| d.into_owned())
                .ok_or_else(missing_unsubscribe_id)?,
            (None, _) => return Err(missing_unsubscribe_id()),
        };
        if temp_queue_name(&id).is_some() {
            return Err(Refusal::rabbit(
                "Invalid id",
                "UNSUBSCRIBE 'id' may not start with /temp-queue/\n",
            ));
        }
        if self.subscriptions.remove(&id).is_none() {
            return Err(Refusal::rabbit(
                "No subscription found",
                format!(
                    "UNSUBSCRIBE must refer to an existing subscription.\nSubscription to id='{id}' not found.\n"
                ),
            ));
        }
        // As RabbitMQ: a plain UNSUBSCRIBE keeps a durable subscription's
        // queue (it collects messages until the client comes back); one with
        // `durable:true` (or the legacy `persistent:true`) deletes it.
        let delete = parse_bool(frame, "durable")?.unwrap_or(false)
            || parse_bool(frame, "persistent")?.unwrap_or(false);
        if delete {
            out.push(Action::DeleteDurable { id: id.clone() });
        }
        out.push(Action::Unsubscribe { id });
        self.push_receipt(frame, out)?;
        Ok(())
    }

    fn ack(
        &mut self,
        frame: &Frame,
        out: &mut Vec<Action>,
        nack: bool,
        replay: bool,
    ) -> Result<(), Refusal> {
        // NACK in 1.0 is RabbitMQ's extension, with `message-id` as in 1.1.
        let verb = if nack { "NACK" } else { "ACK" };
        // The header RabbitMQ reads: `id` in 1.2, `message-id` before (the
        // other one is accepted too before 1.2).
        let header = if self.version == Version::V1_2 {
            "id"
        } else {
            "message-id"
        };
        let id = match self.version {
            Version::V1_2 => frame.header("id"),
            _ => frame.header("message-id").or_else(|| frame.header("id")),
        }
        .ok_or_else(|| {
            Refusal::rabbit(
                "Missing header",
                format!("\"{verb}\" must include the \"{header}\" header\n"),
            )
        })?
        .into_owned();
        // As RabbitMQ: true/false in any case; anything else is the default.
        let requeue = !frame
            .header("requeue")
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));
        if !replay && self.buffer_in_transaction(frame, out)? {
            return Ok(());
        }
        if id.starts_with(FANOUT_PREFIX) {
            // Broadcast messages are acknowledged to the broker on arrival.
            if !replay {
                self.push_receipt(frame, out)?;
            }
            return Ok(());
        }
        let unknown = || {
            Refusal::rabbit(
                "Message not found",
                format!("{verb} for unknown message id '{id}'\n"),
            )
        };
        let (sub_id, tag) = id
            .strip_prefix(OWN_PREFIX)
            .and_then(|rest| rest.rsplit_once("@@"))
            .and_then(|(sub, tag)| Some((sub, tag.parse::<u64>().ok()?)))
            .ok_or_else(|| {
                Refusal::rabbit(
                    "Invalid header",
                    format!("\"{verb}\" must include a valid \"{header}\" header\n('{id}' is not a message id of this session)\n"),
                )
            })?;
        let sub = self.subscriptions.get_mut(sub_id).ok_or_else(unknown)?;
        match sub.ack {
            AckMode::Auto => {}
            _ if sub.fanout => {}
            // A message of an earlier subscription with the same id: the
            // bridge requeued it when that one ended; nothing to settle here.
            _ if tag >> INCARNATION_SHIFT != sub.incarnation & 0xFFF => {}
            // A delivery of a consumer lost with its channel: the broker
            // redelivers it; the ack has nothing left to settle.
            _ if (tag >> GENERATION_SHIFT) & GENERATION_MASK
                != sub.generation & GENERATION_MASK => {}
            mode => {
                if !sub.pending.contains(&tag) {
                    return Err(unknown());
                }
                let multiple = mode == AckMode::Client;
                if multiple {
                    sub.pending = sub.pending.split_off(&(tag + 1));
                } else {
                    sub.pending.remove(&tag);
                }
                let subscription = sub_id.to_owned();
                let tag = tag & ((1 << INCARNATION_SHIFT) - 1);
                out.push(if nack {
                    Action::Nack {
                        subscription,
                        tag,
                        multiple,
                        requeue,
                    }
                } else {
                    Action::Ack {
                        subscription,
                        tag,
                        multiple,
                    }
                });
            }
        }
        if !replay {
            self.push_receipt(frame, out)?;
        }
        Ok(())
    }

    fn begin(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        let tx = transaction_name(frame)?;
        if self.transactions.contains_key(&tx) {
            return Err(Refusal::rabbit(
                "Bad transaction",
                format!("Transaction '{tx}' is already open\n"),
            ));
        }
        if self.transactions.len() >= self.config.limits.max_open_transactions {
            return Err(Refusal::rabbit(
                "Transaction limit exceeded",
                format!(
                    "Too many concurrent transactions (limit {})",
                    self.config.limits.max_open_transactions
                ),
            ));
        }
        self.transactions.insert(tx, Transaction::default());
        self.push_receipt(frame, out)?;
        Ok(())
    }

    fn commit(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        let tx = transaction_name(frame)?;
        let transaction = self
            .transactions
            .remove(&tx)
            .ok_or_else(|| bad_transaction(&tx))?;
        // All or nothing: the replay goes to a scratch list that is used
        // only if every buffered frame is valid.
        let mut applied = Vec::new();
        for buffered in &transaction.frames {
            match buffered.command {
                Command::Send => self.send(buffered, &mut applied, true)?,
                Command::Ack => self.ack(buffered, &mut applied, false, true)?,
                Command::Nack => self.ack(buffered, &mut applied, true, true)?,
                _ => {}
            }
        }
        out.append(&mut applied);
        self.push_receipt(frame, out)?;
        Ok(())
    }

    fn abort(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Result<(), Refusal> {
        let tx = transaction_name(frame)?;
        self.transactions
            .remove(&tx)
            .ok_or_else(|| bad_transaction(&tx))?;
        self.push_receipt(frame, out)?;
        Ok(())
    }

    /// Buffers `frame` if it names a transaction; `Ok(true)` when buffered.
    fn buffer_in_transaction(
        &mut self,
        frame: &Frame,
        out: &mut Vec<Action>,
    ) -> Result<bool, Refusal> {
        let Some(tx) = frame.header("transaction") else {
            return Ok(false);
        };
        let limits = &self.config.limits;
        let transaction = self
            .transactions
            .get_mut(tx.as_ref())
            .ok_or_else(|| bad_transaction(&tx))?;
        if transaction.frames.len() >= limits.max_transaction_frames {
            return Err(Refusal::rabbit(
                "Transaction too large",
                format!(
                    "Too many actions in transaction (limit {})",
                    limits.max_transaction_frames
                ),
            ));
        }
        let size = frame.body.len()
            + frame
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len() + 2)
                .sum::<usize>();
        if transaction.bytes + size > limits.max_frame_bytes {
            return Err(Refusal::rabbit(
                "Transaction too large",
                format!(
                    "transaction '{tx}' exceeds {} bytes",
                    limits.max_frame_bytes
                ),
            ));
        }
        transaction.bytes += size;
        // The frame's parts are slices of the buffer the codec read them
        // from (up to a whole WebSocket message): copied, so that what is
        // held is what was counted.
        transaction.frames.push(detach(frame));
        // A SEND's RECEIPT waits for COMMIT and the broker's confirm (see
        // `send`); ACK and NACK are acknowledged at once, as RabbitMQ does.
        if frame.command != Command::Send {
            self.push_receipt(frame, out)?;
        }
        Ok(true)
    }

    fn check_subscription_limit(&self) -> Result<(), Refusal> {
        if self.subscriptions.len() >= self.config.limits.max_subscriptions {
            return Err(Refusal::new(format!(
                "too many subscriptions (limit {})",
                self.config.limits.max_subscriptions
            )));
        }
        Ok(())
    }

    fn fail(
        &mut self,
        reason: CloseReason,
        message: &str,
        detail: &str,
        receipt: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        self.close_reason = Some(reason);
        // After an ERROR nothing more is written: receipts still owed are
        // not sent, and nothing waits for their confirms.
        self.confirms.clear();
        // The message header must stay on one line whatever the escaping,
        // and say something.
        let message = if message.trim().is_empty() {
            "error"
        } else {
            message
        };
        let message: String = message
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        let mut error = Frame::new(Command::Error).with_header("message", &message);
        if let Some(receipt) = receipt {
            error.push_header("receipt-id", receipt);
        }
        // Every ERROR lists the versions spoken, as RabbitMQ's
        // (`rabbit_stomp_processor:send_error_frame`).
        error.push_header("version", "1.0,1.1,1.2");
        error.push_header("content-type", "text/plain");
        error.body = Bytes::from(if detail.is_empty() {
            message.clone()
        } else {
            detail.to_owned()
        });
        out.push(Action::Send(error));
        out.push(Action::Close);
        self.phase = Phase::Closed;
    }
}

/// Why a frame was refused.
#[derive(Debug)]
struct Refusal {
    message: String,
    detail: String,
    reason: CloseReason,
}

impl Refusal {
    /// A refusal whose body repeats the message.
    fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            detail: String::new(),
            reason: CloseReason::Refused,
        }
    }

    /// A refusal as RabbitMQ's STOMP plugin writes it: a short `message`
    /// header and the details in the body.
    fn rabbit(message: &str, detail: impl Into<String>) -> Refusal {
        Refusal {
            message: message.to_owned(),
            detail: detail.into(),
            reason: CloseReason::Refused,
        }
    }

    /// The same refusal, counted as an authentication or authorization one.
    fn auth(mut self) -> Refusal {
        self.reason = CloseReason::AccessRefused;
        self
    }
}

fn access_refused(why: &str) -> Refusal {
    Refusal::rabbit("access_refused", format!("ACCESS_REFUSED - {why}\n")).auth()
}

fn bad_transaction(tx: &str) -> Refusal {
    Refusal::rabbit(
        "Bad transaction",
        format!("Invalid transaction identifier: \"{tx}\"\n"),
    )
}

fn missing_unsubscribe_id() -> Refusal {
    Refusal::rabbit(
        "Missing destination or id",
        "UNSUBSCRIBE must include a 'destination' or 'id' header",
    )
}

/// The AMQP reply codes RabbitMQ names in its STOMP ERROR frames.
const AMQP_ERRORS: [&str; 8] = [
    "NOT_FOUND",
    "PRECONDITION_FAILED",
    "ACCESS_REFUSED",
    "RESOURCE_LOCKED",
    "NOT_ALLOWED",
    "RESOURCE_ERROR",
    "INTERNAL_ERROR",
    "COMMAND_INVALID",
];

/// `message` header and body for a broker refusal, as RabbitMQ's STOMP
/// plugin writes them (`amqp_death`): the AMQP error name in lower case
/// (`not_found`) and the broker's explanation (`NOT_FOUND - no exchange
/// 'x' in vhost '/'`) in the body. Other texts pass unchanged.
fn broker_error_texts(message: &str) -> (String, String) {
    for name in AMQP_ERRORS {
        if let Some(at) = message.find(name) {
            let explanation = message[at..].trim_end();
            let rest = explanation[name.len()..]
                .trim_start_matches([':', ' ', '-'])
                .trim_start();
            let detail = if rest.is_empty() {
                name.to_owned()
            } else {
                format!("{name} - {rest}")
            };
            return (name.to_ascii_lowercase(), detail);
        }
    }
    (message.to_owned(), String::new())
}

fn transaction_name(frame: &Frame) -> Result<String, Refusal> {
    frame
        .header("transaction")
        .map(|t| t.into_owned())
        .ok_or_else(|| {
            Refusal::rabbit(
                "Missing transaction",
                format!(
                    "\"{}\" must include a 'transaction' header\n",
                    frame.command
                ),
            )
        })
}

/// RabbitMQ's STOMP plugin refuses a SUBSCRIBE or UNSUBSCRIBE with
/// `durable:true` (or `persistent:true`) and no `id`, in every version
/// (`rabbit_stomp_processor:validate_frame`), before anything else.
fn require_durable_id(frame: &Frame) -> Result<(), Refusal> {
    let durable = |name| frame.header(name).as_deref() == Some("true");
    if frame.header("id").is_none() && (durable("durable") || durable("persistent")) {
        return Err(Refusal::rabbit(
            "Missing Header",
            "Header 'id' is required for durable subscriptions",
        ));
    }
    Ok(())
}

/// A boolean header as RabbitMQ reads one: `true`, `false`, `True`, `False`
/// (what Python clients send for `True`/`False`).
fn parse_bool(frame: &Frame, name: &str) -> Result<Option<bool>, Refusal> {
    match frame.header(name).as_deref() {
        None => Ok(None),
        Some("true" | "True") => Ok(Some(true)),
        Some("false" | "False") => Ok(Some(false)),
        Some(other) => Err(Refusal::rabbit(
            "Invalid header",
            format!("invalid {name} header '{other}': expected true or false\n"),
        )),
    }
}

/// A copy of `frame` that shares no buffer with the input.
fn detach(frame: &Frame) -> Frame {
    let mut copy = frame.clone();
    for header in &mut copy.headers {
        header.name = Bytes::copy_from_slice(&header.name);
        header.value = Bytes::copy_from_slice(&header.value);
    }
    copy.body = Bytes::copy_from_slice(&frame.body);
    copy
}

/// Remembers a reply queue this session was handed (bounded, oldest out).
fn remember_reply_target(targets: &mut std::collections::VecDeque<String>, queue: &str) {
    if queue.is_empty() || targets.iter().any(|t| t == queue) {
        return;
    }
    if targets.len() >= MAX_REPLY_TARGETS {
        targets.pop_front();
    }
    targets.push_back(queue.to_owned());
}

#[cfg(test)]
mod tests;
