//! The session driver: runs one STOMP session over any transport.
//!
//! A transport (WebSocket today, HTTP fallbacks next) gives the driver
//! (a) the client's input as a stream of [`Incoming`] chunks of STOMP bytes,
//! (b) the client's bounded outbound queue, a [`ClientLink`] that the
//! transport's own writer drains, (c) the session's broker side, anything
//! that implements [`BrokerSession`], and (d) the clock, through tokio's
//! time (paused in tests). The driver decodes frames, feeds them to the
//! [`Session`] state machine and carries out the [`Action`]s it returns;
//! every protocol decision (deadlines, receipt order, back-pressure, why a
//! session ended) is the session's. The driver only sleeps until
//! [`Session::poll_timeout`], moves bytes, and calls the broker.
//!
//! The driver gets a narrow [`Context`] (settings and the drain signal),
//! not the whole gateway: it knows nothing of HTTP or the server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::outbound::{ClientLink, Outbound};
use super::rate_limit::RateLimit;
use crate::auth::rabbit::{RabbitAuth, RabbitRefusal};
use crate::bridge::fanout::{Recipient, Subscriber};
use crate::bridge::{BrokerSession, Inbound};
use crate::config::Limits;
use crate::metrics::ErrorKind;
use crate::session::{Action, CloseReason, Session, SessionConfig};
use crate::stomp::{self, Escaping, Frame, FrameLimits, StompCodec};

/// What a transport hands the driver from the client.
#[derive(Debug)]
pub enum Incoming {
    /// Bytes of STOMP (one WebSocket message, one SockJS message, ...);
    /// frames may span chunks and a chunk may hold several frames.
    Data(Bytes),
    /// The client showed it is alive without sending STOMP (a WebSocket
    /// pong): counts as input for the session's silence deadlines.
    Alive,
    /// The client went away.
    Closed,
}

/// What every session of a gateway shares: settings and the drain signal.
#[derive(Debug, Clone)]
pub struct Context {
    pub session: Arc<SessionConfig>,
    pub limits: Limits,
    /// `security.max_frames_per_second` (0: no limit).
    pub max_frames_per_second: u32,
    /// `security.rate_limit_policy = "throttle"`: wait for the rate rather
    /// than close the session.
    pub throttle: bool,
    /// Cancelled when the gateway starts draining.
    pub drain: CancellationToken,
    /// Sessions close at a random moment within this window of the drain.
    pub drain_window: Duration,
    /// `auth.mode = "rabbitmq"`: RabbitMQ checks CONNECT's credentials.
    pub rabbit_auth: Option<Arc<RabbitAuth>>,
}

/// Per-session options a transport knows from its handshake.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// A token from the handshake (`Authorization: Bearer`, `access_token`).
    pub token: Option<String>,
    /// The transport pings clients that negotiate no heart-beats this often.
    pub keepalive: Option<Duration>,
}

/// How a session ended, for the transport's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The session ended: flush what is queued, then close.
    Ended,
    /// The client could not keep up (queue full under the `disconnect`
    /// policy, or no write progress): drop it without flushing.
    SlowClient,
}

/// A publish refused by the broker: the error, and the receipt the SEND asked for.
type Refused = (String, Option<String>);

type PendingConfirm = BoxFuture<'static, Result<(), Refused>>;

/// No publish awaits its confirm.
fn no_confirms(confirms: &Option<FuturesOrdered<PendingConfirm>>) -> bool {
    confirms.as_ref().is_none_or(|c| c.is_empty())
}

/// The next confirm (in publish order); the list goes once empty.
async fn next_confirm(
    confirms: &mut Option<FuturesOrdered<PendingConfirm>>,
) -> Option<Result<(), Refused>> {
    let result = confirms.as_mut()?.next().await;
    if no_confirms(confirms) {
        *confirms = None;
    }
    result
}

/// Runs one session until it ends, the client goes away or it is cut off.
///
/// Not an `async fn`: the session's state is built here, once, on the heap,
/// and the returned future holds only a pointer to it. (An `async fn`
/// keeps a slot for each argument and local, beside the state they move
/// into, for the whole life of the session: about 2 KiB more per idle
/// session.)
pub fn run<'a, B, I>(
    ctx: &'a Context,
    broker: B,
    input: I,
    link: Arc<ClientLink>,
    options: Options,
) -> impl std::future::Future<Output = Outcome> + Send + 'a
where
    B: BrokerSession + 'a,
    I: Stream<Item = Incoming> + Unpin + Send + 'a,
{
    let driver = Box::new(Driver::start(ctx, broker, &link, options));
    drive(ctx, driver, input, link)
}

impl<B: BrokerSession> Driver<B> {
    /// A session's state before its first input.
    fn start(ctx: &Context, broker: B, link: &Arc<ClientLink>, options: Options) -> Driver<B> {
        let session_id = format!("session-{}-{:08x}", broker.key(), rand::random::<u32>());
        let mut session = Session::new(
            Arc::clone(&ctx.session),
            session_id,
            Instant::now().into_std(),
            crate::auth::unix_now(),
        );
        session.set_handshake_token(options.token);
        session.set_keepalive(options.keepalive);
        let limits = &ctx.limits;
        Driver {
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
            link: Arc::clone(link),
            escaping: Escaping::None,
            rate: RateLimit::new(ctx.max_frames_per_second),
            throttle: ctx.throttle,
            confirms: None,
            limit_before_connect: limits.max_frame_bytes_before_connect,
            cut_off: false,
            reported: false,
            drain: ctx.drain.clone(),
            rabbit_auth: ctx.rabbit_auth.clone(),
            followups: Vec::new(),
        }
    }
}

/// The session's loop: input, broker, confirms, deadlines, drain.
async fn drive<B, I>(
    ctx: &Context,
    mut driver: Box<Driver<B>>,
    mut input: I,
    link: Arc<ClientLink>,
) -> Outcome
where
    B: BrokerSession,
    I: Stream<Item = Incoming> + Unpin,
{
    let metrics = crate::metrics::get();
    let mut drain_seen = false;
    let outcome = loop {
        if driver.cut_off {
            break Outcome::SlowClient;
        }
        if driver.session.is_finished()
            || (driver.session.is_closed() && no_confirms(&driver.confirms))
        {
            break Outcome::Ended;
        }
        let deadline = driver.session.poll_timeout().map(Instant::from_std);
        // Biased: input already waiting is read before a deadline is
        // judged, so a session that was busy is not mistaken for a silent
        // client.
        let event = tokio::select! {
            biased;
            item = input.next(), if driver.session.wants_input() => Event::Input(item),
            item = driver.broker.next_inbound(), if !driver.session.is_closed() => Event::Inbound(item),
            Some(result) = next_confirm(&mut driver.confirms), if !no_confirms(&driver.confirms) => Event::Confirmed(result),
            () = link.overflowed() => Event::Overflow,
            () = sleep_until_some(deadline) => Event::Deadline,
            () = ctx.drain.cancelled(), if !drain_seen => Event::DrainStarted,
        };
        match event {
            Event::Input(Some(Incoming::Data(data))) => {
                driver.session.received(Instant::now().into_std());
                metrics.bytes_in.increment(data.len() as u64);
                driver.receive(&data).await;
                // Time spent throttled or waiting for outbound room is not
                // client silence.
                driver.session.received(Instant::now().into_std());
            }
            Event::Input(Some(Incoming::Alive)) => {
                driver.session.received(Instant::now().into_std());
            }
            Event::Input(Some(Incoming::Closed) | None) => break Outcome::Ended,
            Event::Inbound(item) => Box::pin(driver.inbound(item)).await,
            Event::Confirmed(Ok(())) => {
                let mut actions = Vec::new();
                driver
                    .session
                    .publish_confirmed(Instant::now().into_std(), &mut actions);
                driver.execute(actions).await;
            }
            Event::Confirmed(Err((message, receipt))) => {
                driver.broker_refused(message, receipt).await;
            }
            Event::Overflow => {
                if link.stalled() {
                    tracing::info!("client stalled: no write progress, closing");
                    metrics.slow_client_stalled.increment(1);
                } else {
                    tracing::info!("client too slow: outbound queue full, disconnecting");
                    metrics.slow_client_disconnected.increment(1);
                }
                break Outcome::SlowClient;
            }
            Event::DrainStarted => {
                drain_seen = true;
                let spread = ctx.drain_window.mul_f64(rand::random::<f64>());
                driver
                    .session
                    .drain_at((Instant::now() + spread).into_std());
            }
            Event::Deadline => {
                let mut actions = Vec::new();
                driver
                    .session
                    .handle_timeout(Instant::now().into_std(), &mut actions);
                driver.execute(actions).await;
            }
        }
        driver.report_close();
    };
    driver.report_close();
    if let Some(version) = driver.session.version() {
        metrics.session(version).decrement(1.0);
    }
    driver.broker.close().await;
    outcome
}

enum Event {
    Input(Option<Incoming>),
    Inbound(Inbound),
    Confirmed(Result<(), Refused>),
    Overflow,
    Deadline,
    DrainStarted,
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The error metric of a session that ended for `reason`.
fn error_kind(reason: CloseReason) -> Option<ErrorKind> {
    match reason {
        CloseReason::Disconnect | CloseReason::Shutdown => None,
        CloseReason::Protocol => Some(ErrorKind::Protocol),
        CloseReason::Refused => Some(ErrorKind::Session),
        CloseReason::AccessRefused | CloseReason::TokenExpired => Some(ErrorKind::Auth),
        CloseReason::Timeout => Some(ErrorKind::Timeout),
        CloseReason::RateLimit => Some(ErrorKind::RateLimit),
        CloseReason::Broker => Some(ErrorKind::Broker),
    }
}

struct Driver<B> {
    session: Session,
    codec: StompCodec,
    full_limits: FrameLimits,
    buffer: BytesMut,
    broker: B,
    link: Arc<ClientLink>,
    escaping: Escaping,
    rate: RateLimit,
    throttle: bool,
    /// Publishes awaiting their confirm, in order; `None` until the first
    /// (an empty `FuturesOrdered` allocates, and most sessions only listen).
    confirms: Option<FuturesOrdered<PendingConfirm>>,
    /// `limits.max_frame_bytes_before_connect`: bytes buffered before CONNECT.
    limit_before_connect: usize,
    /// The client was cut off while the driver waited to queue a frame.
    cut_off: bool,
    /// The close reason's metric was counted.
    reported: bool,
    /// The gateway's drain signal (also while waiting for outbound room).
    drain: CancellationToken,
    rabbit_auth: Option<Arc<RabbitAuth>>,
    /// Actions an action produced (the session's answer to
    /// [`Action::Authenticate`]), carried out next.
    followups: Vec<Action>,
}

impl<B: BrokerSession> Driver<B> {
    /// Counts the session's end in the error metrics, once.
    fn report_close(&mut self) {
        if self.reported || !self.session.is_closed() {
            return;
        }
        self.reported = true;
        if let Some(kind) = self.session.close_reason().and_then(error_kind) {
            crate::metrics::get().error(kind);
        }
    }

    /// Feeds one chunk of input and handles the complete frames in it.
    async fn receive(&mut self, data: &[u8]) {
        if self.session.is_closed() {
            return;
        }
        if !self.session.is_connected() {
            // Before CONNECT only the small limit holds, whatever the
            // transport accepted as one message.
            let limit = self.limit_before_connect;
            if self.buffer.len().saturating_add(data.len()) > limit.saturating_add(2) {
                let mut actions = Vec::new();
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
        let metrics = crate::metrics::get();
        loop {
            let mut actions = Vec::new();
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(stomp::Inbound::Frame(frame))) => {
                    metrics.frame_in(frame.command);
                    if self.throttle {
                        let wait = self.rate.wait(Instant::now());
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    } else if !self.rate.allow(Instant::now()) {
                        self.session.close_with(
                            CloseReason::RateLimit,
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
                }
                Ok(Some(stomp::Inbound::Heartbeat)) => continue,
                Ok(None) => break,
                Err(error) => {
                    self.session.decode_error(&error, &mut actions);
                }
            }
            self.execute(actions).await;
            if self.session.is_closed() || self.cut_off {
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
                if self.session.acks_on_delivery(&subscription) {
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

    /// The broker refused a publish (or another operation): nothing queued
    /// behind it may be confirmed, and the session ends with an ERROR.
    async fn broker_refused(&mut self, message: String, receipt: Option<String>) {
        self.confirms = None;
        let mut actions = Vec::new();
        self.session
            .broker_error_for(&message, receipt.as_deref(), &mut actions);
        self.execute(actions).await;
    }

    /// Carries out the session's actions in order; a broker refusal turns
    /// the rest into the session's ERROR and close.
    async fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            if self.cut_off {
                return;
            }
            // Boxed: the futures of broker operations are large, and this
            // task's future is held for the whole life of every session.
            let result = Box::pin(self.apply(action)).await;
            if !self.followups.is_empty() {
                let mut next = std::mem::take(&mut self.followups);
                next.extend(queue);
                queue = next.into();
            }
            if let Err((message, receipt)) = result {
                self.confirms = None;
                let mut error = Vec::new();
                self.session
                    .broker_error_for(&message, receipt.as_deref(), &mut error);
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
                self.queue(Outbound::SetHeartbeat(negotiated.send_every))
                    .await;
                // CONNECT's `host` selected a vhost: the broker side moves
                // there before anything is subscribed.
                if let Some(vhost) = self.session.vhost().map(str::to_owned) {
                    self.broker
                        .select_vhost(&vhost)
                        .await
                        .map_err(|e| (e.to_string(), None))?;
                }
            }
            Action::Authenticate(request) => {
                let result = match &self.rabbit_auth {
                    Some(auth) => auth.authenticate(&request).await,
                    None => Err(RabbitRefusal::Unavailable(
                        "auth.mode = \"rabbitmq\" is not set up".into(),
                    )),
                };
                self.session.authenticated(result, &mut self.followups);
            }
            Action::Send(frame) => self.write(&frame).await,
            Action::Receipt(receipt) => {
                let frame = Frame::new(stomp::Command::Receipt).with_header("receipt-id", &receipt);
                self.write(&frame).await;
            }
            Action::Subscribe(request) => {
                let ack_header = self
                    .session
                    .version()
                    .is_some_and(|v| request.ack.ack_header(v));
                let recipient: Arc<dyn Recipient> = Arc::clone(&self.link) as Arc<dyn Recipient>;
                let subscriber = Subscriber::new(
                    self.broker.key(),
                    &request.id,
                    self.escaping,
                    ack_header,
                    recipient,
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
                let confirms = self.confirms.get_or_insert_with(FuturesOrdered::new);
                confirms.push_back(Box::pin(async move {
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
                    result.map_err(|e| (e.to_string(), receipt))
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
            // The loop ends the session once nothing more is owed.
            Action::Close => {}
        }
        Ok(())
    }

    /// Encodes a frame for this session's version and queues it.
    async fn write(&mut self, frame: &Frame) {
        crate::metrics::get().frame_out(frame.command);
        let mut buf = BytesMut::with_capacity(64 + frame.body.len());
        stomp::encode_frame(frame, self.escaping, &mut buf);
        let binary = std::str::from_utf8(&frame.body).is_err();
        self.queue(Outbound::Frame {
            bytes: buf.freeze(),
            binary,
        })
        .await;
    }

    /// Queues an entry, waiting for room in the client's queue. While it
    /// waits, the driver reads no input (so the client's silence is not
    /// judged), but a client cut off (queue overflow, or no write progress
    /// within the write timeout) ends the wait and the session, and so do
    /// the session's other deadlines (token expiry, drain): nothing keeps a
    /// session alive behind a client that stopped reading.
    async fn queue(&mut self, item: Outbound) {
        if self.cut_off {
            return;
        }
        self.session.input_paused(true);
        let deadline = self.session.poll_timeout().map(Instant::from_std);
        let link = Arc::clone(&self.link);
        tokio::select! {
            biased;
            sent = link.send(item) => {
                if !sent {
                    // The writer is gone: the client is.
                    self.cut_off = true;
                }
            }
            () = link.overflowed() => self.cut_off = true,
            () = self.drain.cancelled() => self.cut_off = true,
            () = sleep_until_some(deadline) => {
                // A deadline passed with the client not reading: its ERROR
                // could not be delivered either.
                let mut ignored = Vec::new();
                self.session.handle_timeout(Instant::now().into_std(), &mut ignored);
                self.cut_off = true;
            }
        }
        self.session.input_paused(false);
    }
}

#[cfg(test)]
mod tests;
