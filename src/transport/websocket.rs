//! STOMP over WebSocket: the adapter between one socket, the session state
//! machine and the session's broker resources.
//!
//! Two tasks per connection. The reader decodes frames (several per
//! WebSocket message, or one frame split over several messages: the codec
//! buffers across messages), runs them through the [`Session`] and carries
//! out its actions. The writer drains the client's bounded outbound queue,
//! coalescing whatever is already queued into one flush, and sends
//! heart-beats when it has written nothing for the negotiated interval.
//!
//! Receipts are honest: each RECEIPT waits until RabbitMQ confirmed every
//! publish that came before it on this session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket};
use bytes::{BufMut, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, SplitSink};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::outbound::{ClientLink, Outbound};
use crate::auth::rabbit::{RabbitAuth, RabbitRefusal};
use crate::bridge::fanout::Subscriber;
use crate::bridge::vhosts::Vhosts;
use crate::bridge::{Inbound, SessionBroker};
use crate::config::RateLimitPolicy;
use crate::metrics::ErrorKind;
use crate::server::Gateway;
use crate::session::{AckMode, Action, Session, Version};
use crate::stomp::{self, Escaping, Frame, FrameLimits, StompCodec};

/// The protocols offered in the WebSocket handshake.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// A publish refused by the broker: the error, and the receipt the SEND asked for.
type Refused = (String, Option<String>);

type Confirm = BoxFuture<'static, Result<Option<String>, Refused>>;

/// What the HTTP handshake told about a connection.
#[derive(Debug, Default, Clone)]
pub struct Handshake {
    /// A token from `Authorization: Bearer` or `?access_token=`.
    pub token: Option<String>,
}

/// Serves one upgraded WebSocket until it closes.
pub async fn run(socket: WebSocket, gateway: Arc<Gateway>, handshake: Handshake) {
    let _guard = gateway.track_connection();
    let metrics = crate::metrics::get();
    let limits = &gateway.config.limits;
    let (sink, mut stream) = socket.split();
    let link = ClientLink::bounded(
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        limits.slow_client_policy,
    );
    let ping_every = gateway.config.security.ws_ping_interval();
    let mut writer = AbortOnDrop(tokio::spawn(write_loop(
        sink,
        Arc::clone(&link),
        Duration::from_millis(limits.write_timeout_ms),
        ping_every,
    )));
    let broker = gateway.bridge.session();
    let session_id = format!("session-{}-{:08x}", broker.key(), rand::random::<u32>());
    let mut session = Session::new(Arc::clone(&gateway.session_config), session_id);
    session.set_handshake_token(handshake.token);
    let mut conn = Connection {
        session,
        codec: StompCodec::new(FrameLimits {
            max_frame_bytes: limits.max_frame_bytes_before_connect,
            max_headers: limits.max_headers,
            max_header_line: limits.max_header_line,
        }),
        full_limits: FrameLimits {
            max_frame_bytes: limits.max_frame_bytes,
            max_headers: limits.max_headers,
            max_header_line: limits.max_header_line,
        },
        buffer: BytesMut::new(),
        broker,
        link: Arc::clone(&link),
        escaping: Escaping::None,
        expect_within: None,
        expires_at: None,
        rate: RateLimit::new(gateway.config.security.max_frames_per_second),
        throttle: gateway.config.security.rate_limit_policy == RateLimitPolicy::Throttle,
        last_read: Instant::now(),
        closing: false,
        confirms: FuturesOrdered::new(),
        codec_limit_before_connect: limits.max_frame_bytes_before_connect,
        max_pending_receipts: limits.max_pending_receipts,
        vhosts: Arc::clone(&gateway.vhosts),
        broker_timeout: Duration::from_millis(gateway.config.amqp.broker_timeout_ms),
        rabbit_auth: gateway.rabbit_auth.clone(),
        followups: Vec::new(),
    };
    let connect_deadline = Instant::now() + limits.connect_timeout();
    let connect_timeout_ms = limits.connect_timeout_ms;
    let max_unconfirmed = limits.max_unconfirmed_publishes;
    let drain_window = Duration::from_millis(gateway.config.drain_window_ms);
    // Set when the gateway drains: this session closes at that moment.
    let mut drain_at: Option<Instant> = None;
    let mut shutting_down = false;

    loop {
        let deadline = if !conn.session.is_connected() && !conn.session.is_closed() {
            connect_deadline
        } else if conn.confirms.len() >= max_unconfirmed {
            // Back-pressured: the socket is not read, so the client's
            // silence is not judged (its clock restarts when reading does).
            conn.last_read = Instant::now();
            Instant::now() + Duration::from_secs(3600)
        } else if let Some(within) = conn.expect_within {
            conn.last_read + within
        } else if let Some(ping) = ping_every {
            // No heart-beats (1.0, or 0,0): the writer pings; a client
            // that answers nothing for two intervals is gone (half-open).
            conn.last_read + ping * 2
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        let deadline = match conn.expires_at {
            Some(at) => deadline.min(at),
            None => deadline,
        };
        // Biased: input already waiting on the socket is read before the
        // heart-beat deadline is judged, so a session that was busy writing
        // is not mistaken for a silent client.
        let event = tokio::select! {
            biased;
            // Back-pressure: while too many publishes await the broker's
            // confirm, the socket is not read (TCP then slows the client).
            message = stream.next(), if !conn.closing && conn.confirms.len() < max_unconfirmed => Event::Socket(message),
            item = conn.broker.next_inbound(), if !conn.closing => Event::Inbound(item),
            Some(result) = conn.confirms.next(), if !conn.confirms.is_empty() => Event::Confirmed(result),
            () = link.overflowed() => Event::Overflow,
            () = tokio::time::sleep_until(deadline), if !conn.closing => Event::Deadline,
            () = gateway.draining.cancelled(), if drain_at.is_none() => Event::DrainStarted,
            () = sleep_until_some(drain_at), if !conn.closing => Event::DrainNow,
        };
        match event {
            Event::Socket(Some(Ok(message))) => {
                conn.last_read = Instant::now();
                metrics.bytes_in.increment(ws_len(&message));
                match message {
                    WsMessage::Text(text) => conn.receive(text.as_str().as_bytes()).await,
                    WsMessage::Binary(data) => conn.receive(&data).await,
                    WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                    WsMessage::Close(_) => break,
                }
                // Time spent throttled is not client silence.
                conn.last_read = Instant::now();
            }
            Event::Socket(Some(Err(error))) => {
                tracing::debug!(%error, "websocket read failed");
                break;
            }
            Event::Socket(None) => break,
            Event::Inbound(item) => Box::pin(conn.inbound(item)).await,
            Event::Confirmed(Ok(Some(receipt))) => {
                let frame = Frame::new(stomp::Command::Receipt).with_header("receipt-id", &receipt);
                conn.write(&frame).await;
            }
            Event::Confirmed(Ok(None)) => {}
            Event::Confirmed(Err((message, receipt))) => {
                // Nothing queued behind a refused publish may be confirmed.
                conn.confirms = FuturesOrdered::new();
                let mut actions = Vec::new();
                conn.session
                    .broker_error_for(&message, receipt.as_deref(), &mut actions);
                metrics.error(ErrorKind::Broker);
                conn.execute(actions).await;
            }
            Event::Overflow => {
                if link.stalled() {
                    tracing::info!("client stalled: no write progress, closing");
                    metrics.slow_client_stalled.increment(1);
                } else {
                    tracing::info!("client too slow: outbound queue full, disconnecting");
                    metrics.slow_client_disconnected.increment(1);
                }
                writer.0.abort();
                let _ = (&mut writer.0).await;
                Box::pin(conn.finish()).await;
                return;
            }
            Event::DrainStarted => {
                let spread = drain_window.mul_f64(rand::random::<f64>());
                drain_at = Some(Instant::now() + spread);
            }
            Event::DrainNow => {
                // Stop reading; pending receipts go out first, then the ERROR.
                conn.closing = true;
                shutting_down = true;
            }
            Event::Deadline => {
                let mut actions = Vec::new();
                if conn.expires_at.is_some_and(|at| at <= Instant::now()) {
                    conn.session.token_expired(&mut actions);
                    metrics.error(ErrorKind::Auth);
                } else if !conn.session.is_connected() {
                    conn.session.protocol_error(
                        &format!("no CONNECT frame within {connect_timeout_ms} ms"),
                        &mut actions,
                    );
                } else if let (None, Some(ping)) = (conn.expect_within, ping_every) {
                    conn.session.protocol_error(
                        &format!(
                            "no answer to WebSocket pings within {} ms",
                            (ping * 2).as_millis()
                        ),
                        &mut actions,
                    );
                } else {
                    let within = conn.expect_within.unwrap_or_default();
                    conn.session.protocol_error(
                        &format!(
                            "no heart-beat from the client within {} ms",
                            within.as_millis()
                        ),
                        &mut actions,
                    );
                }
                metrics.error(ErrorKind::Timeout);
                conn.execute(actions).await;
            }
        }
        if conn.closing && conn.confirms.is_empty() {
            break;
        }
    }
    if shutting_down && !conn.session.is_closed() {
        let mut actions = Vec::new();
        conn.session
            .broker_error("server shutting down", &mut actions);
        conn.execute(actions).await;
    }
    Box::pin(conn.finish()).await;
    // Bounded: a full queue of a client that stopped reading must not hold
    // the session here.
    let _ = tokio::time::timeout(Duration::from_secs(1), link.send(Outbound::Close)).await;
    drop(link);
    drop(conn);
    // The writer never outlives its session: it gets a moment to flush
    // and close, then it is ended, and with it the socket.
    if tokio::time::timeout(Duration::from_secs(5), &mut writer.0)
        .await
        .is_err()
    {
        writer.0.abort();
        let _ = (&mut writer.0).await;
    }
}

/// The writer task, aborted when dropped: whatever ends the session (a
/// panic included) ends its writer, and with it the socket.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Event {
    Socket(Option<Result<WsMessage, axum::Error>>),
    Inbound(Inbound),
    Confirmed(Result<Option<String>, Refused>),
    Overflow,
    Deadline,
    DrainStarted,
    DrainNow,
}

/// Payload size of a WebSocket message.
fn ws_len(message: &WsMessage) -> u64 {
    (match message {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) | WsMessage::Ping(b) | WsMessage::Pong(b) => b.len(),
        WsMessage::Close(_) => 0,
    }) as u64
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Connection {
    session: Session,
    codec: StompCodec,
    full_limits: FrameLimits,
    buffer: BytesMut,
    broker: SessionBroker,
    link: Arc<ClientLink>,
    escaping: Escaping,
    expect_within: Option<Duration>,
    /// When the session's credentials expire.
    expires_at: Option<Instant>,
    rate: RateLimit,
    /// `rate_limit_policy = "throttle"`: wait for the rate instead of closing.
    throttle: bool,
    last_read: Instant,
    /// The session ended: stop reading, drain receipts, then close.
    closing: bool,
    confirms: FuturesOrdered<Confirm>,
    /// `limits.max_frame_bytes_before_connect`: bytes buffered before CONNECT.
    codec_limit_before_connect: usize,
    /// `limits.max_pending_receipts`.
    max_pending_receipts: usize,
    /// The vhosts' bridges (a session on another vhost than the default
    /// one takes its broker state from there once CONNECT is accepted).
    vhosts: Arc<Vhosts>,
    /// `amqp.broker_timeout_ms`: bound on waiting for a vhost's plane.
    broker_timeout: Duration,
    /// `auth.mode = "rabbitmq"`: RabbitMQ checks the credentials.
    rabbit_auth: Option<Arc<RabbitAuth>>,
    /// Actions an action produced (the session's answer to
    /// [`Action::Authenticate`]), carried out next.
    followups: Vec<Action>,
}

impl Connection {
    /// Feeds bytes from one WebSocket message and handles complete frames.
    async fn receive(&mut self, data: &[u8]) {
        if self.session.is_closed() {
            return;
        }
        if !self.session.is_connected() {
            // Before CONNECT only the small limit holds, whatever the
            // WebSocket layer accepted as one message.
            let limit = self.codec_limit_before_connect;
            if self.buffer.len().saturating_add(data.len()) > limit.saturating_add(2) {
                let mut actions = Vec::new();
                crate::metrics::get().error(ErrorKind::Protocol);
                self.session.protocol_error(
                    &format!("frame exceeds the limit of {limit} bytes (before CONNECT)"),
                    &mut actions,
                );
                self.execute(actions).await;
                self.buffer = BytesMut::new();
                return;
            }
        }
        self.buffer.extend_from_slice(data);
        loop {
            let mut actions = Vec::new();
            let metrics = crate::metrics::get();
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(stomp::Inbound::Frame(frame))) => {
                    metrics.frame_in(frame.command);
                    if self.throttle {
                        let wait = self.rate.wait(Instant::now());
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    } else if !self.rate.allow(Instant::now()) {
                        metrics.error(ErrorKind::RateLimit);
                        self.session.protocol_error(
                            &format!(
                                "rate limit exceeded: more than {} frames per second",
                                self.rate.per_second
                            ),
                            &mut actions,
                        );
                        self.execute(actions).await;
                        break;
                    }
                    self.session.handle(frame, &mut actions);
                    if self.session.is_closed() {
                        let refusal = actions.iter().find_map(|a| match a {
                            Action::Send(f) if f.command == stomp::Command::Error => f
                                .header("message")
                                .map(|m| matches!(m.as_ref(), "access_refused" | "Bad CONNECT")),
                            _ => None,
                        });
                        match refusal {
                            Some(true) => metrics.error(ErrorKind::Auth),
                            Some(false) => metrics.error(ErrorKind::Session),
                            None => {}
                        }
                    }
                }
                Ok(Some(stomp::Inbound::Heartbeat)) => continue,
                Ok(None) => break,
                Err(error) => {
                    metrics.error(ErrorKind::Protocol);
                    self.session
                        .protocol_error(&error.to_string(), &mut actions);
                }
            }
            self.execute(actions).await;
            if self.session.is_closed() {
                self.buffer.clear();
                break;
            }
        }
        // Hold no buffer between frames: most sessions are idle most of the
        // time, and a large frame's memory goes back once it is consumed.
        if self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
    }

    async fn inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Delivery {
                subscription,
                tag,
                message,
            } => {
                let Some(frame) = self.session.deliver(&subscription, tag, message) else {
                    return;
                };
                crate::metrics::get().delivered_queue.increment(1);
                self.write(&frame).await;
                if self.broker.acks_for_client(&subscription) {
                    if let Err(error) = self.broker.ack(&subscription, tag, false).await {
                        tracing::debug!(%error, "auto-ack failed");
                    }
                }
            }
            Inbound::Restarted {
                subscription,
                generation,
                queue,
            } => {
                tracing::info!(%subscription, generation, "queue subscription re-established");
                self.session.restart_subscription(&subscription, generation);
                self.broker.restarted(&subscription, queue);
            }
            Inbound::Lost {
                subscription,
                reason,
            } => {
                if self.broker.has_own(&subscription) {
                    let mut actions = Vec::new();
                    self.session.broker_error(
                        &format!("subscription '{subscription}' ended: {reason}"),
                        &mut actions,
                    );
                    self.execute(actions).await;
                }
            }
        }
    }

    /// Carries out the session's actions in order; a broker refusal turns
    /// the rest into the session's ERROR and close.
    async fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            // Boxed: the futures of broker operations are large, and this
            // task's future is held for the whole life of every session.
            let result = Box::pin(self.apply(action)).await;
            if !self.followups.is_empty() {
                let mut next = std::mem::take(&mut self.followups);
                next.extend(queue);
                queue = next.into();
            }
            if let Err((message, receipt)) = result {
                // Nothing queued behind a refusal may be confirmed.
                self.confirms = FuturesOrdered::new();
                let mut error = Vec::new();
                self.session
                    .broker_error_for(&message, receipt.as_deref(), &mut error);
                crate::metrics::get().error(ErrorKind::Broker);
                queue = error.into();
            }
        }
    }

    async fn apply(&mut self, action: Action) -> Result<(), Refused> {
        match action {
            Action::Established(negotiated) => {
                crate::metrics::get()
                    .session(negotiated.version)
                    .increment(1.0);
                self.escaping = negotiated.version.escaping();
                self.codec.set_escaping(self.escaping);
                self.codec.set_limits(self.full_limits);
                self.expect_within = negotiated.expect_within;
                self.link
                    .send(Outbound::SetHeartbeat(negotiated.send_every))
                    .await;
                // CONNECT's `host` selected another vhost than the default
                // one (whose broker state the session started with).
                if let Some(vhost) = self.session.vhost() {
                    if vhost != self.vhosts.default_vhost() {
                        self.broker = self
                            .vhosts
                            .session(vhost, self.broker_timeout)
                            .await
                            .map_err(|e| (e.to_string(), None))?;
                    }
                }
            }
            Action::Send(frame) => self.write(&frame).await,
            Action::Expiry(at) => {
                // An absurd `exp` (1e19) is "never", not an overflow.
                self.expires_at = at.and_then(|at| {
                    let left = at.saturating_sub(crate::auth::unix_now());
                    Instant::now().checked_add(Duration::from_secs(left))
                });
            }
            Action::Subscribe(request) => {
                let ack_header =
                    self.session.version() == Some(Version::V1_2) && request.ack != AckMode::Auto;
                let subscriber = Subscriber::new(
                    self.broker.key(),
                    &request.id,
                    self.escaping,
                    ack_header,
                    Arc::clone(&self.link),
                );
                self.broker
                    .subscribe(&request, subscriber)
                    .await
                    .map_err(|e| (e.to_string(), None))?;
            }
            Action::Unsubscribe { id } => self.broker.unsubscribe(&id).await,
            Action::DeleteDurable { id } => self
                .broker
                .delete_durable(&id)
                .await
                .map_err(|e| (e.to_string(), None))?,
            Action::Publish(request) => {
                let started = Instant::now();
                let receipt = request.receipt.clone();
                let confirm = self
                    .broker
                    .publish(&request)
                    .await
                    .map_err(|e| (e.to_string(), receipt.clone()))?;
                let limit = self.broker.confirm_timeout();
                self.confirms.push_back(Box::pin(async move {
                    let Ok(result) = tokio::time::timeout(limit, confirm).await else {
                        return Err((
                            format!(
                                "no publisher confirm from the broker within {} ms",
                                limit.as_millis()
                            ),
                            receipt,
                        ));
                    };
                    crate::metrics::get()
                        .publish_confirm_seconds
                        .record(started.elapsed().as_secs_f64());
                    match result {
                        Ok(c) if c.is_ack() => Ok(None),
                        Ok(_) => Err(("publish was rejected by the broker".to_owned(), receipt)),
                        Err(e) => Err((format!("broker refused: {e}"), receipt)),
                    }
                }));
            }
            Action::Ack {
                subscription,
                tag,
                multiple,
            } => self
                .broker
                .ack(&subscription, tag, multiple)
                .await
                .map_err(|e| (e.to_string(), None))?,
            Action::Nack {
                subscription,
                tag,
                multiple,
                requeue,
            } => self
                .broker
                .nack(&subscription, tag, multiple, requeue)
                .await
                .map_err(|e| (e.to_string(), None))?,
            Action::Receipt(receipt) => {
                if self.confirms.len() >= self.max_pending_receipts {
                    return Err((
                        format!(
                            "too many receipts pending (limit {})",
                            self.max_pending_receipts
                        ),
                        Some(receipt),
                    ));
                }
                if self.confirms.is_empty() {
                    let frame =
                        Frame::new(stomp::Command::Receipt).with_header("receipt-id", &receipt);
                    self.write(&frame).await;
                } else {
                    self.confirms
                        .push_back(Box::pin(async move { Ok(Some(receipt)) }));
                }
            }
            Action::Close => self.closing = true,
            Action::Authenticate(request) => {
                let result = match &self.rabbit_auth {
                    Some(auth) => auth.authenticate(&request).await,
                    None => Err(RabbitRefusal::Unavailable(
                        "auth.mode = \"rabbitmq\" is not set up".into(),
                    )),
                };
                if result.is_err() {
                    crate::metrics::get().error(ErrorKind::Auth);
                }
                self.session.authenticated(result, &mut self.followups);
            }
        }
        Ok(())
    }

    /// Encodes a frame for this session's version and queues it.
    /// Releases the broker side and the session's gauges.
    async fn finish(&mut self) {
        if let Some(version) = self.session.version() {
            crate::metrics::get().session(version).decrement(1.0);
        }
        self.broker.close().await;
    }

    async fn write(&mut self, frame: &Frame) {
        crate::metrics::get().frame_out(frame.command);
        let mut buf = BytesMut::with_capacity(64 + frame.body.len());
        stomp::encode_frame(frame, self.escaping, &mut buf);
        let binary = std::str::from_utf8(&frame.body).is_err();
        self.link
            .send(Outbound::Frame {
                bytes: buf.freeze(),
                binary,
            })
            .await;
    }
}

/// A token bucket of frames per second, with bursts of twice the rate.
#[derive(Debug)]
struct RateLimit {
    per_second: u32,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            tokens: 2.0 * per_second as f64,
            last: Instant::now(),
        }
    }

    /// Takes one token, possibly borrowed from the future: how long to wait
    /// before the frame may be handled (zero within the rate).
    fn wait(&mut self, now: Instant) -> Duration {
        if self.per_second == 0 {
            return Duration::ZERO;
        }
        let rate = self.per_second as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Takes one token; `false` when the client sends too fast.
    fn allow(&mut self, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = self.per_second as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Largest WebSocket message the writer makes by joining queued frames.
const COALESCE_BYTES: usize = 64 * 1024;

/// Drains the outbound queue into the socket. Frames already queued when
/// the writer wakes go out together: joined into WebSocket messages of up to
/// [`COALESCE_BYTES`] (STOMP allows several frames in one message, and
/// stompjs reads them), so a client that fell behind costs one write, not
/// one per frame; nothing is kept buffered once written.
///
/// Every write to the socket is bounded by `write_timeout`: a client that
/// stops reading (zero window) is found and its session ended
/// ([`ClientLink::stall`]), which releases its broker resources. With no
/// heart-beat negotiated, an idle writer sends a WebSocket ping every
/// `ping_every` (the reader closes a client that answers nothing).
async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    link: Arc<ClientLink>,
    write_timeout: Duration,
    ping_every: Option<Duration>,
) {
    let metrics = crate::metrics::get();
    let mut heartbeat: Option<Duration> = None;
    let mut batch: VecDeque<Outbound> = VecDeque::new();
    let mut pending = Pending::default();
    // One socket operation within the write timeout: `Err` ends the writer
    // (the link is closed, or marked stalled on a timeout).
    macro_rules! io {
        ($op:expr) => {
            match tokio::time::timeout(write_timeout, $op).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    link.close();
                    return;
                }
                Err(_) => {
                    link.stall();
                    return;
                }
            }
        };
    }
    loop {
        match heartbeat.or(ping_every) {
            Some(every) => {
                if tokio::time::timeout(every, link.take_all(&mut batch))
                    .await
                    .is_err()
                {
                    if heartbeat.is_some() {
                        io!(sink.send(WsMessage::Text(Utf8Bytes::from_static("\n"))));
                    } else {
                        io!(sink.send(WsMessage::Ping(bytes::Bytes::new())));
                    }
                    continue;
                }
            }
            None => link.take_all(&mut batch).await,
        }
        let mut close = false;
        for item in batch.drain(..) {
            match item {
                Outbound::SetHeartbeat(every) => heartbeat = every,
                Outbound::Close => {
                    close = true;
                    break;
                }
                Outbound::Frame { bytes, binary } => {
                    if let Some(message) = pending.add(&bytes, binary) {
                        metrics.bytes_out.increment(ws_len(&message));
                        io!(sink.feed(message));
                    }
                }
                Outbound::Broadcast {
                    prefix,
                    ack_header,
                    escaping,
                    message,
                } => {
                    let ack: &[u8] = if ack_header { &message.ack_line } else { &[] };
                    let parts = [&prefix[..], ack, &message.tail(escaping)[..]];
                    if let Some(message) = pending.add_parts(&parts, message.binary) {
                        metrics.bytes_out.increment(ws_len(&message));
                        io!(sink.feed(message));
                    }
                }
            }
        }
        if let Some(message) = pending.take() {
            metrics.bytes_out.increment(ws_len(&message));
            io!(sink.feed(message));
        }
        if batch.capacity() > 64 {
            batch = VecDeque::new();
        }
        io!(sink.flush());
        if close {
            let _ = tokio::time::timeout(write_timeout, async {
                let _ = sink.send(WsMessage::Close(None)).await;
                let _ = sink.close().await;
            })
            .await;
            link.close();
            return;
        }
    }
}

/// Frames being joined into one WebSocket message.
#[derive(Debug, Default)]
struct Pending {
    buf: BytesMut,
    binary: bool,
}

impl Pending {
    /// Adds a frame; returns a full message to send first when the frame
    /// does not fit.
    fn add(&mut self, frame: &[u8], binary: bool) -> Option<WsMessage> {
        self.add_parts(&[frame], binary)
    }

    fn add_parts(&mut self, parts: &[&[u8]], binary: bool) -> Option<WsMessage> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let flushed = if !self.buf.is_empty() && self.buf.len() + len > COALESCE_BYTES {
            self.take()
        } else {
            None
        };
        if self.buf.is_empty() {
            self.buf.reserve(len.max(256));
        }
        for part in parts {
            self.buf.put_slice(part);
        }
        self.binary |= binary;
        flushed
    }

    /// The joined frames as one message, text unless a body was binary.
    fn take(&mut self) -> Option<WsMessage> {
        if self.buf.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.buf).freeze();
        let binary = std::mem::take(&mut self.binary);
        Some(if binary {
            WsMessage::Binary(bytes)
        } else {
            match Utf8Bytes::try_from(bytes.clone()) {
                Ok(text) => WsMessage::Text(text),
                Err(_) => WsMessage::Binary(bytes),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    /// Every session's reader task holds its future for the whole life of
    /// the session: the large futures of broker operations are boxed so
    /// that an idle session stays small (docs/benchmarks.md).
    #[tokio::test]
    async fn session_futures_stay_small() {
        use super::*;
        fn size<F>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let pool = crate::bridge::pool::Pool::new(vec!["amqp://x".into()], 1, vec![]);
        let plane = crate::bridge::plane::Plane::start(pool, Default::default());
        let vhosts = Vhosts::start(
            crate::bridge::vhosts::BridgeSpec {
                urls: vec!["amqp://x".into()],
                connections: 1,
                exchanges: Vec::new(),
                plane: Default::default(),
            },
            &[],
        );
        let link = ClientLink::new(8, crate::config::SlowClientPolicy::Drop);
        let mut conn = Connection {
            session: Session::new(Arc::new(Default::default()), "s".into()),
            codec: StompCodec::new(FrameLimits::default()),
            full_limits: FrameLimits::default(),
            buffer: BytesMut::new(),
            broker: SessionBroker::new(plane, 1),
            link,
            escaping: Escaping::None,
            expect_within: None,
            expires_at: None,
            rate: RateLimit::new(0),
            throttle: true,
            last_read: Instant::now(),
            closing: false,
            confirms: FuturesOrdered::new(),
            codec_limit_before_connect: 65536,
            max_pending_receipts: 16,
            vhosts,
            broker_timeout: Duration::from_secs(1),
            rabbit_auth: None,
            followups: Vec::new(),
        };
        assert!(size(&conn.execute(Vec::new())) <= 512);
        assert!(size(&conn.receive(&[])) <= 1024);
        assert!(size(&conn.finish()) <= 1024);
    }
}
