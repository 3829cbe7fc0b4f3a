//! Resumable broadcast destinations, backed by RabbitMQ streams.
//!
//! For every `[[history.patterns]]` entry the replica keeps one stream,
//! `stompgate.history.<name>`, bound to the pattern's exchange with the
//! pattern's key: whatever publishes to a matching destination (a STOMP
//! SEND, a backend over AMQP) lands in the stream too, without the gateway
//! in the publish path. The replica reads live traffic of those
//! destinations *from the stream* (one consumer per pattern, from `next`),
//! so every MESSAGE carries its position: `x-stream-offset` (RabbitMQ's)
//! and `x-stream-epoch` (see [`declare`]). Local subscriptions to such
//! destinations are routed here, not through the plane's queues.
//!
//! A SUBSCRIBE with `x-resume-from:<epoch>:<offset>` gets what it missed,
//! then live ([`super::resume`] decides and joins, pure):
//! - from the replica's memory (the last `history.memory_messages` of the
//!   stream), without touching the broker: most resumes after a short
//!   outage;
//! - older: from one catch-up read of the stream, shared by every
//!   subscription waiting at that time (one reader per stream; a
//!   subscription that arrives after the read passed its position waits
//!   for the next round), bounded by `history.max_resume_messages`;
//! - not at all (another epoch, trimmed, too far, garbage): live, and the
//!   first MESSAGE says `x-resumed:false`.
//!
//! Broker resources per replica: per pattern one stream (shared by all
//! replicas), one channel for the live consumer, at most one for a
//! catch-up read, and a short-lived one to declare the stream: fixed by
//! configuration, whatever the number of sessions or resumes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::fanout::{Delivery, Subscriber, Wakes};
use super::matcher::topic_matches;
use super::plane::timed;
use super::pool::Pool;
use super::properties::stomp_headers_from_amqp;
use super::resume::{
    plan, Gate, Kept, NotResumed, Plan, Ring, StreamView, EPOCH_HEADER, OFFSET_HEADER,
    RESUMED_HEADER, RESUME_HEADER,
};
use super::{Backoff, BridgeError};
use crate::config::{HistoryConfig, HistoryPattern};
use crate::session::{SubscribeRequest, FANOUT_PREFIX};
use crate::stomp::destination::Destination;
use crate::stomp::message::SharedMessage;

/// A message read from the stream: (offset, routing key, encoded).
type Read = (u64, Arc<str>, Arc<SharedMessage>);

/// The prefix of the streams' names.
pub const STREAM_PREFIX: &str = "stompgate.history.";

/// The replica's resumable destinations.
#[derive(Debug)]
pub struct History {
    pool: Arc<Pool>,
    streams: Vec<Arc<Stream>>,
}

/// Numbers every stream shares.
#[derive(Debug, Clone)]
struct Limits {
    max_resume: u64,
    prefetch: u16,
    read_idle: Duration,
    max_waiting: usize,
    timeout: Duration,
}

/// One pattern's stream and the local subscriptions it serves.
#[derive(Debug)]
struct Stream {
    index: usize,
    queue: String,
    exchange: String,
    pattern: String,
    spec: HistoryPattern,
    limits: Limits,
    state: Mutex<State>,
    wake_reader: Notify,
    stop: CancellationToken,
}

#[derive(Debug)]
struct State {
    epoch: Option<u64>,
    ring: Ring<Arc<SharedMessage>>,
    /// Live subscriptions by their (literal) routing key.
    exact: HashMap<Arc<str>, Vec<Arc<Sub>>>,
    /// Live subscriptions with a wildcard key.
    wild: Vec<Arc<Sub>>,
    /// Waiting for the next catch-up read.
    waiting: Vec<Arc<Sub>>,
    /// Served by the catch-up read that runs now.
    round: Vec<Arc<Sub>>,
    /// The offset the running read delivers next (`None`: no read runs).
    reading: Option<u64>,
}

/// One local subscription.
#[derive(Debug)]
struct Sub {
    subscriber: Subscriber,
    key: Arc<str>,
    wildcard: bool,
    gate: Mutex<Gate>,
}

impl Sub {
    fn matches(&self, routing_key: &str) -> bool {
        if self.wildcard {
            topic_matches(&self.key, routing_key)
        } else {
            *self.key == *routing_key
        }
    }

    /// Offers the message at `offset` unless the subscription had it.
    fn offer(&self, offset: u64, message: &Arc<SharedMessage>, wakes: &mut Wakes) -> bool {
        let announce = match self
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(offset)
        {
            None => return false,
            Some(a) => a,
        };
        match announce {
            None => self.subscriber.offer(message, wakes),
            Some(resumed) => {
                let s = &self.subscriber;
                let mut prefix = BytesMut::with_capacity(s.prefix.len() + 20);
                prefix.extend_from_slice(&s.prefix);
                prefix.extend_from_slice(RESUMED_HEADER.as_bytes());
                prefix.extend_from_slice(if resumed { b":true\n" } else { b":false\n" });
                wakes.offer(
                    &s.recipient,
                    Delivery {
                        prefix: prefix.freeze(),
                        ack_header: s.ack_header,
                        escaping: s.escaping,
                        message: Arc::clone(message),
                    },
                );
            }
        }
        true
    }
}

/// A subscription served by a stream; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    stream: Arc<Stream>,
    sub: Arc<Sub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.stream.lock();
        let gone = |list: &mut Vec<Arc<Sub>>| list.retain(|s| !Arc::ptr_eq(s, &self.sub));
        if let Some(list) = state.exact.get_mut(&self.sub.key) {
            gone(list);
            if list.is_empty() {
                state.exact.remove(&self.sub.key);
            }
        }
        gone(&mut state.wild);
        gone(&mut state.waiting);
        gone(&mut state.round);
    }
}

impl History {
    /// Starts one live consumer (and its reader) per pattern; they connect
    /// when the pool does. `None` without patterns.
    pub fn start(
        pool: Arc<Pool>,
        config: &HistoryConfig,
        timeout: Duration,
    ) -> Option<Arc<History>> {
        if config.patterns.is_empty() {
            return None;
        }
        let limits = Limits {
            max_resume: config.max_resume_messages,
            prefetch: config.prefetch.max(1),
            read_idle: Duration::from_millis(config.read_idle_ms.max(1)),
            max_waiting: config.max_waiting,
            timeout,
        };
        let mut streams = Vec::new();
        for (index, spec) in config.patterns.iter().enumerate() {
            let Ok(destination) = Destination::parse(&spec.destination) else {
                tracing::warn!(destination = %spec.destination, "history pattern is not a destination; ignored");
                continue;
            };
            let (exchange, pattern) = destination.publish_target();
            streams.push(Arc::new(Stream {
                index,
                queue: format!("{STREAM_PREFIX}{}", spec.name),
                exchange: exchange.to_owned(),
                pattern: pattern.to_owned(),
                spec: spec.clone(),
                limits: limits.clone(),
                state: Mutex::new(State {
                    epoch: None,
                    ring: Ring::new(config.memory_messages, config.memory_bytes),
                    exact: HashMap::new(),
                    wild: Vec::new(),
                    waiting: Vec::new(),
                    round: Vec::new(),
                    reading: None,
                }),
                wake_reader: Notify::new(),
                stop: CancellationToken::new(),
            }));
        }
        let history = Arc::new(History { pool, streams });
        for stream in &history.streams {
            let pool = Arc::clone(&history.pool);
            let s = Arc::clone(stream);
            tokio::spawn(async move { run_live(pool, s).await });
            let pool = Arc::clone(&history.pool);
            let s = Arc::clone(stream);
            tokio::spawn(async move { run_reader(pool, s).await });
        }
        Some(history)
    }

    /// Stops the streams' consumers.
    pub fn stop(&self) {
        for s in &self.streams {
            s.stop.cancel();
        }
    }

    /// The epoch of the stream serving `destination`'s (exchange, key),
    /// once known (tests, diagnostics).
    pub fn epoch(&self, exchange: &str, key: &str) -> Option<u64> {
        self.stream_for(exchange, key)
            .and_then(|(s, _)| s.lock().epoch)
    }

    fn stream_for(&self, exchange: &str, key: &str) -> Option<(&Arc<Stream>, bool)> {
        let wildcard = key.split('.').any(|w| w == "*" || w == "#");
        self.streams.iter().find_map(|s| {
            let covered = s.exchange == exchange
                && (key == s.pattern || (!wildcard && topic_matches(&s.pattern, key)));
            covered.then_some((s, wildcard))
        })
    }

    /// Serves a broadcast subscription from a stream when its destination
    /// matches a pattern; `Ok(Err(subscriber))` when none does (the plane
    /// serves it). Only the subscription's own destination is resumed:
    /// what the catch-up offers is filtered by its key, as live traffic is.
    pub fn subscribe(
        &self,
        request: &SubscribeRequest,
        subscriber: Subscriber,
    ) -> Result<Result<Subscription, Subscriber>, BridgeError> {
        if !request.is_fanout() {
            return Ok(Err(subscriber));
        }
        let (exchange, key) = request.destination.publish_target();
        let Some((stream, wildcard)) = self.stream_for(exchange, key) else {
            return Ok(Err(subscriber));
        };
        if self.pool.connection(0).is_none() {
            return Err(BridgeError::Unavailable);
        }
        let position = request
            .queue_arguments
            .iter()
            .find(|(n, _)| n == RESUME_HEADER)
            .map(|(_, v)| v.as_str());
        let sub = Arc::new(Sub {
            subscriber,
            key: Arc::from(key),
            wildcard,
            gate: Mutex::new(Gate::new(0, None)),
        });
        let mut state = stream.lock();
        let view = StreamView {
            epoch: state.epoch,
            ring_first: state.ring.first(),
            next: state.ring.next(),
        };
        let mut decided = plan(position, view, stream.limits.max_resume);
        if matches!(decided, Plan::Broker { .. })
            && state.waiting.len() + state.round.len() >= stream.limits.max_waiting
        {
            decided = Plan::Refused(NotResumed::Busy);
        }
        let gate = |from: u64, announce| {
            *sub.gate.lock().unwrap_or_else(PoisonError::into_inner) = Gate::new(from, announce);
        };
        match decided {
            Plan::Live => state.go_live(&sub),
            Plan::Refused(why) => {
                tracing::debug!(queue = %stream.queue, ?why, "resume refused: live");
                gate(0, Some(false));
                state.go_live(&sub);
            }
            Plan::Memory { from } => {
                gate(from, Some(true));
                state.catch_up_from_ring(&sub);
                state.go_live(&sub);
            }
            Plan::Broker { from } => {
                gate(from, Some(true));
                match state.reading {
                    Some(next) if from >= next => state.round.push(Arc::clone(&sub)),
                    _ => state.waiting.push(Arc::clone(&sub)),
                }
                stream.wake_reader.notify_one();
            }
        }
        drop(state);
        Ok(Ok(Subscription {
            stream: Arc::clone(stream),
            sub,
        }))
    }
}

impl Stream {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Encodes a delivery of this stream: RabbitMQ's headers (with
    /// `x-stream-offset`) plus `x-stream-epoch`.
    fn encode(
        &self,
        epoch: u64,
        offset: u64,
        delivery: lapin::message::Delivery,
    ) -> (Arc<str>, Arc<SharedMessage>, usize) {
        let mut headers = stomp_headers_from_amqp(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            false,
            &delivery.properties,
        );
        if !headers.iter().any(|(n, _)| n == OFFSET_HEADER) {
            headers.push((OFFSET_HEADER.to_owned(), offset.to_string()));
        }
        headers.retain(|(n, _)| n != EPOCH_HEADER && n != RESUMED_HEADER);
        headers.push((EPOCH_HEADER.to_owned(), epoch.to_string()));
        let body = Bytes::from(delivery.data);
        let bytes = body.len()
            + headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 2)
                .sum::<usize>();
        let message = SharedMessage::encode(
            &format!("{FANOUT_PREFIX}h{epoch}.{offset}"),
            &headers,
            &body,
        );
        (
            Arc::from(delivery.routing_key.as_str()),
            Arc::new(message),
            bytes + 64,
        )
    }
}

impl State {
    fn go_live(&mut self, sub: &Arc<Sub>) {
        if sub.wildcard {
            self.wild.push(Arc::clone(sub));
        } else {
            self.exact
                .entry(Arc::clone(&sub.key))
                .or_default()
                .push(Arc::clone(sub));
        }
    }

    fn catch_up_from_ring(&self, sub: &Sub) {
        let from = sub
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next();
        let mut n = 0u64;
        let mut wakes = Wakes::default();
        for kept in self.ring.since(from) {
            if sub.matches(&kept.routing_key) && sub.offer(kept.offset, &kept.message, &mut wakes) {
                n += 1;
            }
        }
        count(n);
    }

    /// Offers a live message to the live subscriptions it matches.
    fn route(&self, offset: u64, key: &str, message: &Arc<SharedMessage>) {
        let mut n = 0u64;
        let mut wakes = Wakes::default();
        if let Some(list) = self.exact.get(key) {
            for s in list {
                n += s.offer(offset, message, &mut wakes) as u64;
            }
        }
        for s in &self.wild {
            if s.matches(key) {
                n += s.offer(offset, message, &mut wakes) as u64;
            }
        }
        count(n);
    }

    /// Offers messages read from the stream to the running read's
    /// subscriptions (each takes what matches its key and is past its
    /// position).
    fn offer_round(&self, messages: Vec<Read>) {
        let mut n = 0u64;
        let mut wakes = Wakes::default();
        for (offset, key, message) in &messages {
            for sub in &self.round {
                if sub.matches(key) && sub.offer(*offset, message, &mut wakes) {
                    n += 1;
                }
            }
        }
        count(n);
    }

    /// The running read's subscriptions join live traffic: the ring from
    /// where each one is, then live (all under the stream's lock).
    fn join_round(&mut self) {
        let round = std::mem::take(&mut self.round);
        for sub in &round {
            self.catch_up_from_ring(sub);
            self.go_live(sub);
        }
        self.reading = None;
    }

    /// The stream now starts at `first`: subscriptions of the running
    /// read that wanted older messages cannot be resumed; they go live
    /// from the live point with `x-resumed:false`.
    fn trimmed(&mut self, first: u64) {
        tracing::info!(first, "catch-up read: history trimmed below {first}");
        let live = self.ring.next().unwrap_or(0);
        let (lost, kept): (Vec<Arc<Sub>>, Vec<Arc<Sub>>) = std::mem::take(&mut self.round)
            .into_iter()
            .partition(|s| s.gate.lock().unwrap_or_else(PoisonError::into_inner).next() < first);
        self.round = kept;
        for sub in lost {
            *sub.gate.lock().unwrap_or_else(PoisonError::into_inner) = Gate::new(live, Some(false));
            self.go_live(&sub);
        }
    }

    /// The read failed for good: what it serves goes live, said to be
    /// incomplete when nothing was delivered yet.
    fn abandon_round(&mut self) {
        for sub in &self.round {
            let mut gate = sub.gate.lock().unwrap_or_else(PoisonError::into_inner);
            // Not yet announced: tell the client the resume did not happen.
            if gate.announcing() {
                *gate = Gate::new(gate.next(), Some(false));
            }
        }
        self.join_round();
    }
}

fn count(n: u64) {
    if n > 0 {
        let metrics = crate::metrics::get();
        metrics.delivered_broadcast.increment(n);
        metrics.frames_out(crate::stomp::Command::Message, n);
    }
}

/// The stream offset RabbitMQ puts on a delivery.
fn offset_of(delivery: &lapin::message::Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(OFFSET_HEADER)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// Declares the stream and learns its epoch.
///
/// The epoch is the stream's `x-stream-max-segment-size-bytes`: the
/// replica that creates the stream sets it to the configured size plus a
/// random number (below an eighth of it, at most 2^24), so a stream
/// deleted and created again has another one. A replica finds it out by
/// declaring with its own candidate: RabbitMQ either accepts (same value:
/// it created the stream, or the values agree) or refuses with the
/// current value in the message ("inequivalent arg ... current is
/// '<value>'"), which is adopted; the same holds for retention arguments
/// that differ from the configuration (the stream's own are kept, with a
/// warning). Each refusal closes the declaring channel only.
async fn declare(pool: &Pool, stream: &Stream) -> Result<u64, BridgeError> {
    let spec = &stream.spec;
    let base = spec.max_segment_bytes;
    let spread = (base / 8).clamp(1024, 1 << 24);
    let candidate = base + rand::rng().random_range(0..spread);
    let mut args: Vec<(String, AMQPValue)> = vec![
        (
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        ),
        (
            "x-max-age".into(),
            AMQPValue::LongString(LongString::from(spec.max_age.as_str())),
        ),
        (
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(spec.max_length_bytes.min(i64::MAX as u64) as i64),
        ),
        (
            SEGMENT_ARG.into(),
            AMQPValue::LongLongInt(candidate.min(i64::MAX as u64) as i64),
        ),
    ];
    let timeout = stream.limits.timeout;
    for _ in 0..8 {
        let conn = pool
            .connection(stream.index)
            .ok_or(BridgeError::Unavailable)?;
        let channel = timed(timeout, "opening a channel", conn.create_channel()).await?;
        let mut table = FieldTable::default();
        for (n, v) in &args {
            table.insert(ShortString::from(n.as_str()), v.clone());
        }
        let result = timed(
            timeout,
            "declaring the history stream",
            channel.queue_declare(
                stream.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                table,
            ),
        )
        .await;
        match result {
            Ok(_) => {
                let bound = timed(
                    timeout,
                    "binding the history stream",
                    channel.queue_bind(
                        stream.queue.as_str().into(),
                        stream.exchange.as_str().into(),
                        stream.pattern.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await;
                if channel.status().connected() {
                    let _ =
                        tokio::time::timeout(timeout, channel.close(200, "declared".into())).await;
                }
                bound?;
                let epoch = args
                    .iter()
                    .find(|(n, _)| n == SEGMENT_ARG)
                    .and_then(|(_, v)| match v {
                        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
                        _ => None,
                    })
                    .unwrap_or(0);
                return Ok(epoch);
            }
            Err(error) => {
                let text = error.to_string();
                let Some((name, current)) = inequivalent(&text) else {
                    return Err(error);
                };
                if name != SEGMENT_ARG {
                    tracing::warn!(queue = %stream.queue, arg = %name, "the history stream exists with another value of this argument: kept");
                }
                args.retain(|(n, _)| *n != name);
                if let Some(value) = current {
                    let value = match value.parse::<i64>() {
                        Ok(n) => AMQPValue::LongLongInt(n),
                        Err(_) => AMQPValue::LongString(LongString::from(value.as_str())),
                    };
                    args.push((name, value));
                }
            }
        }
    }
    Err(BridgeError::Refused(format!(
        "could not agree on the arguments of stream '{}'",
        stream.queue
    )))
}

const SEGMENT_ARG: &str = "x-stream-max-segment-size-bytes";

/// Parses RabbitMQ's "inequivalent arg '<name>' for queue ...: received
/// ... but current is '<value>'" (or "the value '<v>' of type '<t>'", or
/// "none"): the argument and its current value (`None`: not set).
fn inequivalent(text: &str) -> Option<(String, Option<String>)> {
    let rest = text.split("inequivalent arg '").nth(1)?;
    let name = rest.split('\'').next()?.to_owned();
    let current = rest.split("but current is ").nth(1)?;
    if current.starts_with("none") {
        return Some((name, None));
    }
    let current = current.strip_prefix("the value ").unwrap_or(current);
    let value = current.strip_prefix('\'')?.split('\'').next()?.to_owned();
    Some((name, Some(value)))
}

/// Keeps the live consumer of `stream` running: declares (epoch), then
/// consumes from `next`, or right after the last offset seen when it comes
/// back with the same epoch (so local subscribers miss nothing across a
/// lost connection).
async fn run_live(pool: Arc<Pool>, stream: Arc<Stream>) {
    let mut backoff = Backoff::new();
    loop {
        if stream.stop.is_cancelled() {
            return;
        }
        let result = tokio::select! {
            _ = stream.stop.cancelled() => return,
            r = live_once(&pool, &stream) => r,
        };
        match result {
            Ok(()) => backoff.reset(),
            Err(error) => {
                tracing::debug!(queue = %stream.queue, %error, "history stream consumer not established")
            }
        }
        tokio::select! {
            _ = stream.stop.cancelled() => return,
            _ = backoff.sleep() => {}
        }
    }
}

async fn live_once(pool: &Pool, stream: &Stream) -> Result<(), BridgeError> {
    let epoch = declare(pool, stream).await?;
    let start = {
        let mut state = stream.lock();
        if state.epoch != Some(epoch) {
            if state.epoch.is_some() {
                tracing::warn!(queue = %stream.queue, epoch, "history stream created again: new epoch");
            }
            state.ring.clear();
            state.epoch = Some(epoch);
            // A read of the old stream is of no use any more.
            state.abandon_round();
        }
        state.ring.next()
    };
    let timeout = stream.limits.timeout;
    let conn = pool
        .connection(stream.index)
        .ok_or(BridgeError::Unavailable)?;
    let channel = timed(timeout, "opening a channel", conn.create_channel()).await?;
    let consumer = open_stream_consumer(
        &channel,
        stream,
        timeout,
        match start {
            Some(offset) => AMQPValue::LongLongInt(offset.min(i64::MAX as u64) as i64),
            None => AMQPValue::LongString("next".into()),
        },
        "live",
    )
    .await;
    let mut consumer = match consumer {
        Ok(c) => c,
        Err(e) => {
            close(&channel, timeout).await;
            return Err(e);
        }
    };
    tracing::info!(queue = %stream.queue, epoch, "history stream consumed");
    let ack_every = (stream.limits.prefetch as u64 / 4).max(1);
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    // Where a consumer that came back must go on; further means that
    // retention removed what it missed: the ring starts over.
    let mut expect = start;
    loop {
        let idle = tokio::time::sleep(Duration::from_millis(20));
        let next = tokio::select! {
            _ = stream.stop.cancelled() => break,
            next = consumer.next() => next,
            _ = idle, if unacked > 0 => {
                let _ = channel.basic_ack(last_tag, BasicAckOptions { multiple: true }).await;
                unacked = 0;
                continue;
            }
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(error)) => {
                tracing::warn!(queue = %stream.queue, %error, "history stream consumer failed");
                break;
            }
            None => break,
        };
        last_tag = delivery.delivery_tag;
        unacked += 1;
        if let Some(offset) = offset_of(&delivery) {
            let (key, message, bytes) = stream.encode(epoch, offset, delivery);
            let mut state = stream.lock();
            if expect.take().is_some_and(|e| offset > e) {
                tracing::warn!(queue = %stream.queue, offset, "history stream trimmed while its consumer was away");
                state.ring.clear();
            }
            if state.epoch == Some(epoch)
                && state.ring.push(Kept {
                    offset,
                    routing_key: Arc::clone(&key),
                    message: Arc::clone(&message),
                    bytes,
                })
            {
                state.route(offset, &key, &message);
            }
        }
        if unacked >= ack_every {
            let _ = channel
                .basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await;
            unacked = 0;
        }
    }
    close(&channel, timeout).await;
    Ok(())
}

async fn open_stream_consumer(
    channel: &Channel,
    stream: &Stream,
    timeout: Duration,
    offset: AMQPValue,
    what: &str,
) -> Result<lapin::Consumer, BridgeError> {
    timed(
        timeout,
        "basic.qos",
        channel.basic_qos(stream.limits.prefetch, BasicQosOptions::default()),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert(OFFSET_HEADER.into(), offset);
    timed(
        timeout,
        "consuming the history stream",
        channel.basic_consume(
            stream.queue.as_str().into(),
            format!("stompgate-history-{what}").as_str().into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
}

async fn close(channel: &Channel, timeout: Duration) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(timeout, channel.close(200, "history done".into())).await;
    }
}

/// Serves catch-up reads of `stream`, one at a time, each for every
/// subscription waiting when it starts.
async fn run_reader(pool: Arc<Pool>, stream: Arc<Stream>) {
    loop {
        let from = {
            let mut state = stream.lock();
            if state.waiting.is_empty() {
                None
            } else {
                let waiting = std::mem::take(&mut state.waiting);
                state.round.extend(waiting);
                let from = state
                    .round
                    .iter()
                    .map(|s| s.gate.lock().unwrap_or_else(PoisonError::into_inner).next())
                    .min();
                state.reading = from;
                from.map(|f| (f, state.epoch))
            }
        };
        let Some((from, epoch)) = from else {
            tokio::select! {
                _ = stream.stop.cancelled() => return,
                _ = stream.wake_reader.notified() => continue,
            }
        };
        let mut attempts = 0;
        let mut at = from;
        loop {
            match read_round(&pool, &stream, at, epoch).await {
                Ok(()) => break,
                Err(error) => {
                    attempts += 1;
                    let mut state = stream.lock();
                    if attempts >= 3 || state.reading.is_none() {
                        tracing::warn!(queue = %stream.queue, %error, "history read failed");
                        if state.reading.is_some() {
                            state.abandon_round();
                        }
                        break;
                    }
                    at = state.reading.unwrap_or(at);
                }
            }
            tokio::select! {
                _ = stream.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// One catch-up read from `from`, until it meets the ring (or the end of
/// the stream: nothing for `read_idle`), bounded in messages.
async fn read_round(
    pool: &Pool,
    stream: &Stream,
    from: u64,
    epoch: Option<u64>,
) -> Result<(), BridgeError> {
    let Some(epoch) = epoch else {
        stream.lock().abandon_round();
        return Ok(());
    };
    tracing::info!(queue = %stream.queue, from, subscriptions = stream.lock().round.len(), "catch-up read");
    let timeout = stream.limits.timeout;
    let conn = pool
        .connection(stream.index + 1)
        .ok_or(BridgeError::Unavailable)?;
    let channel = timed(timeout, "opening a channel", conn.create_channel()).await?;
    let consumer = open_stream_consumer(
        &channel,
        stream,
        timeout,
        AMQPValue::LongLongInt(from.min(i64::MAX as u64) as i64),
        "read",
    )
    .await;
    let mut consumer = match consumer {
        Ok(c) => c,
        Err(e) => {
            close(&channel, timeout).await;
            return Err(e);
        }
    };
    // The read may have to pass what arrives live while it runs.
    let budget = stream.limits.max_resume.saturating_mul(2) + stream.limits.prefetch as u64 + 1024;
    let mut read = 0u64;
    let ack_every = (stream.limits.prefetch as u64 / 4).max(1);
    let mut unacked = 0u64;
    // A replica that has seen no live message since it started does not
    // know where live is: what it reads is held (at most
    // `max_resume_messages`) until the read reaches the end or live
    // traffic, so that a resume spanning more is refused whole, never
    // delivered in part.
    let mut held: Option<Vec<Read>> = stream.lock().ring.next().is_none().then(Vec::new);
    let outcome = loop {
        let next = tokio::select! {
            _ = stream.stop.cancelled() => break Ok(()),
            n = tokio::time::timeout(stream.limits.read_idle, consumer.next()) => n,
        };
        let delivery = match next {
            // Nothing more: the end of the stream.
            Err(_) => {
                let mut state = stream.lock();
                if let Some(held) = held.take() {
                    state.offer_round(held);
                }
                state.join_round();
                break Ok(());
            }
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => break Err(BridgeError::Amqp(e)),
            Ok(None) => break Err(BridgeError::Unavailable),
        };
        read += 1;
        unacked += 1;
        let tag = delivery.delivery_tag;
        if let Some(offset) = offset_of(&delivery) {
            let (key, message, _) = stream.encode(epoch, offset, delivery);
            let mut state = stream.lock();
            if state.epoch != Some(epoch) || state.reading.is_none() {
                state.abandon_round();
                break Ok(());
            }
            if read == 1 && offset > from {
                // Retention removed the start of what was asked: those
                // who wanted it start live, told so; nothing is invented.
                state.trimmed(offset);
            }
            state.reading = Some(offset.saturating_add(1));
            match held.as_mut() {
                Some(list) if state.ring.next().is_none() => {
                    list.push((offset, key, message));
                    if list.len() as u64 > stream.limits.max_resume {
                        tracing::info!(queue = %stream.queue, "catch-up read: more than max_resume_messages to the end: not resumed");
                        state.abandon_round();
                        break Ok(());
                    }
                }
                Some(_) => {
                    // Live traffic arrived: what was held goes first.
                    if let Some(list) = held.take() {
                        state.offer_round(list);
                    }
                    state.offer_round(vec![(offset, key, message)]);
                }
                None => state.offer_round(vec![(offset, key, message)]),
            }
            let met = state
                .ring
                .first()
                .is_some_and(|f| f <= offset.saturating_add(1));
            if met || read >= budget {
                if !met {
                    tracing::warn!(queue = %stream.queue, read, "history read did not meet live traffic within its bound");
                }
                state.join_round();
                break Ok(());
            }
        }
        if unacked >= ack_every {
            let _ = channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await;
            unacked = 0;
        }
    };
    let _ = tokio::time::timeout(
        timeout,
        channel.basic_cancel(
            consumer.tag().as_str().into(),
            BasicCancelOptions::default(),
        ),
    )
    .await;
    close(&channel, timeout).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::inequivalent;

    #[test]
    fn inequivalent_arguments_are_parsed_from_rabbitmqs_refusal() {
        assert_eq!(
            inequivalent("PRECONDITION_FAILED - inequivalent arg 'x-stream-max-segment-size-bytes' for queue 'q' in vhost '/': received '1' but current is '1234567'"),
            Some(("x-stream-max-segment-size-bytes".into(), Some("1234567".into())))
        );
        assert_eq!(
            inequivalent("inequivalent arg 'x-max-age' for queue 'q' in vhost '/': received none but current is the value '7D' of type 'longstr'"),
            Some(("x-max-age".into(), Some("7D".into())))
        );
        assert_eq!(
            inequivalent("inequivalent arg 'x-max-age' for queue 'q' in vhost '/': received the value '1h' of type 'longstr' but current is none"),
            Some(("x-max-age".into(), None))
        );
        assert_eq!(inequivalent("NOT_FOUND - no queue"), None);
    }
}
