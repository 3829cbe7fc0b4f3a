//! The AMQP plane of one replica: a fixed set of channels and queues,
//! whatever the number of sessions, subscriptions, topics and users.
//!
//! - **Broadcast** (`/topic`, `/exchange`, `/user/`): `amqp.plane_queues`
//!   exclusive, auto-delete queues of the replica (a *shard* each, with a
//!   consumer channel and a control channel on one connection). A binding
//!   (exchange, key) lives on the shard its hash picks (a wildcard or auto
//!   exchange, whole on the shard of its name: [`super::bindings`], which
//!   also decides whether the broker gets each key or one catch-all), so one
//!   topic's messages come through one queue, in order. The first local subscriber
//!   of a binding binds it, the last one unbinds it (reference counted);
//!   binds are pipelined on the control channel. A delivery carries its
//!   exchange and routing key, and [`super::matcher`] finds the local
//!   bindings it matched (topic, direct, fanout rules); the message is
//!   encoded once and offered to every subscriber of those bindings.
//!   Exchanges whose type the gateway cannot match (headers, plugins' types,
//!   or a type it may not probe) get a *dedicated* shard per binding, as
//!   before the plane: documented in docs/operations.md.
//! - **Queue subscriptions** (`/queue`, `/amq/queue`, `/temp-queue`, durable
//!   subscriptions): consumers spread over `amqp.consumer_channels` shared
//!   channels, with a per-consumer `basic.qos`. Declarations that may fail
//!   (arguments that differ, a missing queue or exchange) run first on a
//!   separate *check* channel, whose failure closes nothing that sessions
//!   share.
//! - **Publishing**: `amqp.publish_channels` confirm channels; a session
//!   always publishes on the same one (its order is kept) and its confirms
//!   come back through the returned [`lapin::PublisherConfirm`]. Exchanges
//!   are checked to exist (cached) before a publish, so a SEND to a missing
//!   exchange does not close a channel that other sessions publish on.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::bindings::{self, BindingPolicy, Cover, Covers, Step};
use super::fanout::{self, Binding, Subscriber};
use super::matcher::{ExchangeKind, ExchangeRoutes};
use super::pool::Pool;
use super::properties::{short, stomp_headers_from_amqp};
use super::BridgeError;
use crate::stomp::message::SharedMessage;

/// Sizes of the plane (from `[amqp]`).
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    pub shards: usize,
    pub prefetch: u16,
    pub publish_channels: usize,
    pub consumer_channels: usize,
    pub timeout: Duration,
    /// Exchanges whose type the gateway knows without asking (its own).
    pub topic_exchanges: Vec<String>,
    /// Per-key, wildcard or auto bindings, by exchange ([`super::bindings`]).
    pub bindings: BindingPolicy,
    /// Longest wait between reconnect attempts (`amqp.reconnect_max_ms`).
    pub reconnect_max: Duration,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        PlaneConfig {
            shards: 4,
            prefetch: 1000,
            publish_channels: 4,
            consumer_channels: 8,
            timeout: Duration::from_secs(15),
            topic_exchanges: Vec::new(),
            bindings: BindingPolicy::default(),
            reconnect_max: Duration::from_millis(250),
        }
    }
}

/// Most bind/unbind operations in flight on one control channel. Deep
/// enough to run at the broker's pace (15,000 keys re-bound in 10.7 s after a
/// restart, about 1,450 binds/s: `cargo test --test resilience -- --ignored
/// rebind`); 2,048 in flight per channel stalled the re-bind entirely.
const BIND_BATCH: usize = 256;
/// Most deliveries of one shard routed before the writers they went to
/// are woken (fewer when fewer have arrived).
const BURST: usize = 64;
/// How long a checked exchange is taken to exist without asking again.
const EXCHANGE_TTL: Duration = Duration::from_secs(5);

/// Runs a broker operation with the plane's time bound.
pub(super) async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BridgeError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BridgeError::Refused(format!(
            "{what}: no answer from the broker within {} ms",
            limit.as_millis()
        ))),
    }
}

/// The deliveries of one burst, in the order they were routed: the entry
/// each went to, and its message.
#[derive(Default)]
struct Burst<'a> {
    entries: Vec<&'a Entry>,
    messages: Vec<Arc<SharedMessage>>,
}

impl<'a> Burst<'a> {
    fn push(&mut self, entry: &'a Entry, message: Arc<SharedMessage>) {
        self.entries.push(entry);
        self.messages.push(message);
    }

    /// Offers the burst to its subscribers: each run of consecutive
    /// messages for one entry (a burst on one topic is one run) goes to
    /// each of its subscribers at once, so a client gets one write per
    /// run rather than one per message, and each client's messages keep
    /// the order they were routed in. Writers that could not write at once
    /// are woken at the end.
    fn deliver(&self) {
        let mut wakes = fanout::Wakes::default();
        let mut start = 0;
        while start < self.entries.len() {
            let entry = self.entries[start];
            let mut end = start + 1;
            while end < self.entries.len() && std::ptr::eq(self.entries[end], entry) {
                end += 1;
            }
            for s in &entry.subscribers {
                s.offer_batch(&self.messages[start..end], &mut wakes);
            }
            start = end;
        }
    }
}

/// What is bound with one key, on one shard.
#[derive(Debug, Default)]
struct Entry {
    subscribers: Vec<Subscriber>,
}

/// The broker side of a shard while it is established.
#[derive(Debug, Clone)]
struct ShardLink {
    control: Channel,
    queue: String,
}

#[derive(Debug, Default)]
struct BindState {
    link: Option<ShardLink>,
    /// Bindings the broker has for this shard's queue.
    bound: HashSet<Binding>,
    /// Bindings whose wanted state may differ from `bound`.
    dirty: HashSet<Binding>,
    /// Bindings with a bind or unbind in flight.
    inflight: HashSet<Binding>,
    /// Subscribers waiting for their binding to be on the broker.
    waiters: HashMap<Binding, Vec<oneshot::Sender<Result<(), String>>>>,
    /// Wildcard and auto exchanges of this queue ([`super::bindings`]).
    covers: Covers,
}

/// One of the replica's broadcast queues and its routing table.
#[derive(Debug)]
pub struct Shard {
    index: usize,
    /// For an exchange the gateway cannot match: the one binding of this
    /// queue; every delivery goes to its subscribers.
    dedicated: Option<Binding>,
    routes: RwLock<HashMap<String, ExchangeRoutes<Entry>>>,
    state: Mutex<BindState>,
    /// Covers measuring their exchange's rate (auto mode): when 0, a
    /// delivery costs no bookkeeping.
    measuring: AtomicUsize,
    /// Keys of the routing table no confirmed binding serves (counted when
    /// the binder goes idle).
    waiting: AtomicUsize,
    wake: Notify,
    stop: CancellationToken,
}

impl Shard {
    fn new(index: usize, dedicated: Option<Binding>) -> Arc<Shard> {
        Arc::new(Shard {
            index,
            dedicated,
            routes: RwLock::new(HashMap::new()),
            state: Mutex::new(BindState::default()),
            measuring: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Whether the broker should have `binding` on this queue (`covers`:
    /// the shard's, from its locked state).
    fn wants(&self, covers: &Covers, binding: &Binding) -> bool {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let Some(table) = routes.get(&binding.exchange) else {
            return false;
        };
        let has_key = table.contains(&binding.routing_key);
        match covers.get(&binding.exchange) {
            Some(cover) => cover.wants(&binding.routing_key, has_key),
            None => has_key,
        }
    }

    fn all_wanted(&self, covers: &Covers) -> Vec<Binding> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (exchange, table) in routes.iter() {
            let cover = covers.get(exchange);
            if let Some(c) = cover.filter(|c| c.wildcard) {
                out.push(Binding {
                    exchange: exchange.clone(),
                    routing_key: c.catch_all.to_owned(),
                });
            }
            if cover.is_some_and(|c| !c.per_key) {
                continue;
            }
            for key in table.keys() {
                if cover.is_some_and(|c| c.wildcard && **key == *c.catch_all) {
                    continue;
                }
                out.push(Binding {
                    exchange: exchange.clone(),
                    routing_key: key.to_string(),
                });
            }
        }
        out
    }

    /// The keys of `exchange` in the routing table.
    fn keys_of(&self, exchange: &str) -> Vec<Binding> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        routes
            .get(exchange)
            .map(|table| {
                table
                    .keys()
                    .map(|k| Binding {
                        exchange: exchange.to_owned(),
                        routing_key: k.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn count_measuring(&self, covers: &Covers) {
        self.measuring.store(
            covers.values().filter(|c| c.measuring()).count(),
            Ordering::Relaxed,
        );
    }

    /// Counts the keys that no confirmed binding serves (their own, or
    /// their exchange's catch-all); `state` is the shard's, locked.
    fn count_waiting(&self, state: &BindState) {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let mut waiting = 0;
        if state.link.is_none() {
            waiting = routes.values().map(|t| t.len()).sum();
        } else if self.dedicated.is_none() {
            for (exchange, table) in routes.iter() {
                let catch_all = state.covers.get(exchange).filter(|c| {
                    c.wildcard
                        && state.bound.contains(&Binding {
                            exchange: exchange.clone(),
                            routing_key: c.catch_all.to_owned(),
                        })
                });
                if catch_all.is_some() {
                    continue;
                }
                let mut probe = Binding {
                    exchange: exchange.clone(),
                    routing_key: String::new(),
                };
                for key in table.keys() {
                    probe.routing_key.clear();
                    probe.routing_key.push_str(key);
                    if !state.bound.contains(&probe) {
                        waiting += 1;
                    }
                }
            }
        }
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    /// Number of binding keys in the routing table.
    fn keys(&self) -> usize {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|e| e.len())
            .sum()
    }
}

/// The AMQP plane of the replica.
#[derive(Debug)]
pub struct Plane {
    pool: Arc<Pool>,
    config: PlaneConfig,
    shards: Vec<Arc<Shard>>,
    dedicated: Mutex<HashMap<Binding, Arc<Shard>>>,
    /// Exchange name -> how the gateway routes it (`None`: dedicated queue).
    kinds: Mutex<HashMap<String, Option<ExchangeKind>>>,
    /// Exchanges seen to exist, and when.
    exchanges_seen: Mutex<HashMap<String, Instant>>,
    /// The check channel: declarations that may fail run here.
    check: tokio::sync::Mutex<Option<Channel>>,
    publishers: Vec<tokio::sync::Mutex<Option<Channel>>>,
    consumers: Vec<tokio::sync::Mutex<Option<Channel>>>,
    next_consumer: AtomicUsize,
    seq: AtomicU64,
    /// Named exclusive queues held by this replica's sessions, and which
    /// session holds each (see [`Plane::claim_exclusive`]).
    exclusive: Mutex<HashMap<String, u64>>,
    /// Resumable destinations (src/bridge/history.rs), when configured.
    history: std::sync::OnceLock<Arc<super::history::History>>,
}

impl Plane {
    /// Creates the plane and starts its shards (they connect when the pool does).
    pub fn start(pool: Arc<Pool>, config: PlaneConfig) -> Arc<Plane> {
        let mut kinds = HashMap::new();
        for (name, kind) in [
            ("amq.topic", Some(ExchangeKind::Topic)),
            ("amq.direct", Some(ExchangeKind::Direct)),
            ("amq.fanout", Some(ExchangeKind::Fanout)),
            ("amq.headers", None),
            ("amq.match", None),
        ] {
            kinds.insert(name.to_owned(), kind);
        }
        for name in &config.topic_exchanges {
            kinds.insert(name.clone(), Some(ExchangeKind::Topic));
        }
        let plane = Arc::new(Plane {
            pool,
            shards: (0..config.shards.max(1))
                .map(|i| Shard::new(i, None))
                .collect(),
            dedicated: Mutex::new(HashMap::new()),
            kinds: Mutex::new(kinds),
            exchanges_seen: Mutex::new(HashMap::new()),
            check: tokio::sync::Mutex::new(None),
            publishers: (0..config.publish_channels.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            consumers: (0..config.consumer_channels.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_consumer: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            exclusive: Mutex::new(HashMap::new()),
            history: std::sync::OnceLock::new(),
            config,
        });
        for shard in &plane.shards {
            plane.spawn_shard(Arc::clone(shard));
        }
        plane
    }

    fn spawn_shard(self: &Arc<Self>, shard: Arc<Shard>) {
        let plane = Arc::clone(self);
        let s = Arc::clone(&shard);
        tokio::spawn(async move { plane.run_shard(s).await });
        let plane = Arc::clone(self);
        tokio::spawn(async move { plane.run_binder(shard).await });
    }

    pub fn config(&self) -> &PlaneConfig {
        &self.config
    }

    /// Serves destinations matching `[history]` patterns from streams
    /// (set once, at start).
    pub fn set_history(&self, history: Arc<super::history::History>) {
        let _ = self.history.set(history);
    }

    pub fn history(&self) -> Option<&Arc<super::history::History>> {
        self.history.get()
    }

    /// Bindings the broker has confirmed for the plane's shared queues.
    pub fn bound(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .bound
                    .len()
            })
            .sum()
    }

    /// The broker's names of the plane's broadcast queues now established
    /// (dedicated ones excluded).
    pub fn queue_names(&self) -> Vec<String> {
        self.shards
            .iter()
            .filter_map(|s| {
                s.state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .link
                    .as_ref()
                    .map(|l| l.queue.clone())
            })
            .collect()
    }

    /// Whether RabbitMQ blocks publishing (memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.pool.is_blocked()
    }

    /// Whether every AMQP connection is up.
    pub fn is_ready(&self) -> bool {
        self.pool.is_ready()
    }

    /// Distinct bindings this replica wants on the broker (all shards).
    pub fn bindings(&self) -> usize {
        let dedicated = self
            .dedicated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        self.shards.iter().map(|s| s.keys()).sum::<usize>() + dedicated
    }

    /// Channels the plane holds open now (a channel busy being set up may
    /// be missed: this is for gauges and tests).
    pub fn channels(&self) -> usize {
        let live = |slot: &tokio::sync::Mutex<Option<Channel>>| {
            slot.try_lock()
                .map(|c| c.as_ref().is_some_and(|c| c.status().connected()))
                .unwrap_or(true) as usize
        };
        let shards = |s: &Arc<Shard>| {
            if s.state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .link
                .is_some()
            {
                2
            } else {
                0
            }
        };
        let dedicated: usize = self
            .dedicated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(shards)
            .sum();
        self.shards.iter().map(shards).sum::<usize>()
            + dedicated
            + self.publishers.iter().map(live).sum::<usize>()
            + self.consumers.iter().map(live).sum::<usize>()
            + live(&self.check)
    }

    fn publish_gauges(&self) {
        let metrics = crate::metrics::get();
        metrics.amqp_channels.set(self.channels() as f64);
        metrics.routing_keys.set(self.bindings() as f64);
        let bound = self.bound();
        let dedicated = self
            .dedicated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        metrics.amqp_bindings.set((bound + dedicated) as f64);
        metrics.routing_keys_waiting.set(
            self.shards
                .iter()
                .map(|s| s.waiting.load(Ordering::Relaxed))
                .sum::<usize>() as f64,
        );
        metrics
            .amqp_broadcast_queues
            .set((self.shards.len() + dedicated) as f64);
    }

    // ----- broadcast subscriptions -------------------------------------

    /// Adds a local subscriber of `binding`; resolves once the binding is on
    /// the broker. Returns the shard, needed to unsubscribe.
    pub async fn subscribe(
        self: &Arc<Self>,
        binding: Binding,
        subscriber: Subscriber,
    ) -> Result<Arc<Shard>, BridgeError> {
        if self.pool.connection(0).is_none() {
            return Err(BridgeError::Unavailable);
        }
        let kind = self.exchange_kind(&binding.exchange).await?;
        let (session, id) = (subscriber.session, Arc::clone(&subscriber.id));
        let mode = kind.map(|k| self.config.bindings.mode(&binding.exchange, k));
        let shard = match kind {
            Some(_) => {
                // A wildcard or auto exchange lives on one queue whole (see
                // super::bindings: what makes switching exact).
                let mut h = std::collections::hash_map::DefaultHasher::new();
                if mode == Some(bindings::BindingMode::PerKey) {
                    binding.hash(&mut h);
                } else {
                    binding.exchange.hash(&mut h);
                }
                Arc::clone(&self.shards[(h.finish() as usize) % self.shards.len()])
            }
            None => {
                let mut dedicated = self
                    .dedicated
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match dedicated.get(&binding) {
                    Some(s) => Arc::clone(s),
                    None => {
                        let s = Shard::new(usize::MAX, Some(binding.clone()));
                        dedicated.insert(binding.clone(), Arc::clone(&s));
                        self.spawn_shard(Arc::clone(&s));
                        s
                    }
                }
            }
        };
        let route_kind = kind.unwrap_or(ExchangeKind::Fanout);
        {
            let mut routes = shard.routes.write().unwrap_or_else(PoisonError::into_inner);
            routes
                .entry(binding.exchange.clone())
                .or_insert_with(|| ExchangeRoutes::new(route_kind))
                .entry(&binding.routing_key, Entry::default)
                .subscribers
                .push(subscriber);
        }
        let wait = {
            let mut state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
            let state = &mut *state;
            if let (Some(kind), Some(mode)) = (kind, mode) {
                if !state.covers.contains_key(&binding.exchange) {
                    if let Some(cover) = Cover::new(mode, kind, Instant::now()) {
                        state.covers.insert(binding.exchange.clone(), cover);
                        shard.count_measuring(&state.covers);
                    }
                }
            }
            let settled = |b: &Binding| {
                state.bound.contains(b) && !state.dirty.contains(b) && !state.inflight.contains(b)
            };
            let cover = state.covers.get(&binding.exchange);
            let catch_all = cover.filter(|c| c.wildcard).map(|c| Binding {
                exchange: binding.exchange.clone(),
                routing_key: c.catch_all.to_owned(),
            });
            let per_key = cover.is_none_or(|c| c.per_key);
            let covered = catch_all.as_ref().is_some_and(settled) || (per_key && settled(&binding));
            if covered {
                None
            } else {
                // Answered when its key, or the catch-all, is bound.
                let (tx, rx) = oneshot::channel();
                state.waiters.entry(binding.clone()).or_default().push(tx);
                if per_key {
                    state.dirty.insert(binding.clone());
                }
                if let Some(c) = catch_all {
                    state.dirty.insert(c);
                }
                Some(rx)
            }
        };
        shard.wake.notify_one();
        self.publish_gauges();
        let Some(rx) = wait else {
            return Ok(shard);
        };
        let outcome = match tokio::time::timeout(self.config.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(BridgeError::Refused(message)),
            Ok(Err(_)) => Err(BridgeError::Unavailable),
            Err(_) => Err(BridgeError::Refused(format!(
                "binding to exchange '{}' not confirmed by the broker within {} ms",
                binding.exchange,
                self.config.timeout.as_millis()
            ))),
        };
        match outcome {
            Ok(()) => Ok(shard),
            Err(error) => {
                self.unsubscribe(&shard, &binding, session, &id);
                Err(error)
            }
        }
    }

    /// Removes a local subscriber; the last one of a binding unbinds it.
    pub fn unsubscribe(&self, shard: &Arc<Shard>, binding: &Binding, session: u64, id: &str) {
        let mut exchange_unused = false;
        let emptied = {
            let mut routes = shard.routes.write().unwrap_or_else(PoisonError::into_inner);
            let Some(table) = routes.get_mut(&binding.exchange) else {
                return;
            };
            let Some(entry) = table.get_mut(&binding.routing_key) else {
                return;
            };
            entry
                .subscribers
                .retain(|s| !(s.session == session && &*s.id == id));
            let emptied = entry.subscribers.is_empty();
            if emptied {
                table.remove(&binding.routing_key);
                if table.is_empty() {
                    routes.remove(&binding.exchange);
                    exchange_unused = true;
                }
            }
            emptied
        };
        // After the write lock is released: this reads every shard's table.
        if exchange_unused {
            self.forget_kind(&binding.exchange);
            self.drop_cover(shard, &binding.exchange);
        }
        if !emptied {
            return;
        }
        if let Some(dedicated) = &shard.dedicated {
            // A dedicated queue goes with its last subscriber.
            let mut map = self
                .dedicated
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if map.get(dedicated).is_some_and(|s| Arc::ptr_eq(s, shard)) {
                map.remove(dedicated);
            }
            drop(map);
            shard.stop.cancel();
        } else {
            shard
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .dirty
                .insert(binding.clone());
            shard.wake.notify_one();
        }
        self.publish_gauges();
    }

    /// Forgets the probed type of an exchange nobody here is bound to any
    /// more (it may be deleted and declared again with another type); the
    /// built-in and the gateway's own exchanges stay known.
    fn forget_kind(&self, exchange: &str) {
        if exchange.starts_with("amq.") || self.config.topic_exchanges.iter().any(|e| e == exchange)
        {
            return;
        }
        let still_bound = self.shards.iter().any(|s| {
            s.routes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(exchange)
        });
        if !still_bound {
            self.kinds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(exchange);
        }
    }

    /// How the gateway routes messages of `exchange`: asked of the broker
    /// once (on the check channel) and cached.
    async fn exchange_kind(&self, exchange: &str) -> Result<Option<ExchangeKind>, BridgeError> {
        if let Some(kind) = self
            .kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exchange)
        {
            return Ok(*kind);
        }
        let kind = self.probe_exchange_kind(exchange).await?;
        self.kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(exchange.to_owned(), kind);
        Ok(kind)
    }

    /// AMQP has no way to ask an exchange's type: after a passive declare
    /// (does it exist?), an active declare as `topic` either succeeds or
    /// fails on the first field RabbitMQ compares, the type, naming the
    /// real one ("received 'topic' but current is 'direct'"). Any other
    /// refusal means the type was `topic`. Both run on the check channel.
    async fn probe_exchange_kind(
        &self,
        exchange: &str,
    ) -> Result<Option<ExchangeKind>, BridgeError> {
        self.exchange_exists(exchange).await?;
        let name = short("exchange name", exchange)?;
        let active = self
            .on_check(|ch| {
                let name = name.clone();
                async move {
                    ch.exchange_declare(
                        name,
                        lapin::ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                }
            })
            .await;
        Ok(match active {
            Ok(()) => Some(ExchangeKind::Topic),
            Err(BridgeError::Amqp(error)) => {
                let text = error.to_string();
                match text.split("current is '").nth(1) {
                    Some(rest) if text.contains("inequivalent arg 'type'") => {
                        let current = rest.split('\'').next().unwrap_or("");
                        ExchangeKind::from_type_name(current)
                    }
                    // Refused on another field (durable, arguments): the
                    // type was the one asked for.
                    _ if text.contains("inequivalent arg") => Some(ExchangeKind::Topic),
                    // Not allowed to ask (no configure permission): route
                    // through a queue of its own, which needs no type.
                    _ => None,
                }
            }
            Err(_) => None,
        })
    }

    /// Runs `op` on the check channel, opening it when needed; a failure
    /// closes only that channel.
    async fn on_check<T, F, Fut>(&self, op: F) -> Result<T, BridgeError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        let mut slot = self.check.lock().await;
        let channel = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(c) => c.clone(),
            None => {
                let c = self.open_channel(None).await?;
                *slot = Some(c.clone());
                c
            }
        };
        let result = timed(self.config.timeout, "broker check", op(channel.clone())).await;
        if result.is_err() && !channel.status().connected() {
            *slot = None;
        }
        result
    }

    /// A passive declare of `exchange` on the check channel: refused
    /// (`NOT_FOUND`) when it does not exist.
    async fn exchange_exists(&self, exchange: &str) -> Result<(), BridgeError> {
        let name = short("exchange name", exchange)?;
        self.on_check(|ch| async move {
            ch.exchange_declare(
                name,
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        })
        .await
    }

    /// Checks (at most every few seconds) that `exchange` exists, so that a
    /// publish to a missing one is refused here rather than by closing a
    /// shared publishing channel.
    pub async fn check_exchange(&self, exchange: &str) -> Result<(), BridgeError> {
        if exchange.is_empty() || exchange.starts_with("amq.") {
            return Ok(());
        }
        if self
            .exchanges_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exchange)
            .is_some_and(|t| t.elapsed() < EXCHANGE_TTL)
        {
            return Ok(());
        }
        self.exchange_exists(exchange).await?;
        let mut seen = self
            .exchanges_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.len() > 10_000 {
            seen.retain(|_, t| t.elapsed() < EXCHANGE_TTL);
        }
        seen.insert(exchange.to_owned(), Instant::now());
        Ok(())
    }

    /// Declares (or checks) a queue on the check channel.
    pub async fn check_queue(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        args: FieldTable,
    ) -> Result<(), BridgeError> {
        let queue = short("queue name", name)?;
        self.on_check(|ch| async move { ch.queue_declare(queue, options, args).await })
            .await
            .map(|_| ())
    }

    /// Session `session` takes named exclusive queue `name`; false when a
    /// subscription of this replica holds it (another session's, or another
    /// of this session's: one exclusive queue, one subscription). RabbitMQ
    /// keeps exclusive queues to one *connection*, and sessions share the
    /// replica's connections: without this, a second session could declare
    /// and read the first one's queue, as no Web-STOMP connection can.
    pub fn claim_exclusive(&self, name: &str, session: u64) -> bool {
        let mut held = self
            .exclusive
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.contains_key(name) {
            return false;
        }
        held.insert(name.to_owned(), session);
        true
    }

    /// Session `session` no longer holds exclusive queue `name`.
    pub fn release_exclusive(&self, name: &str, session: u64) {
        let mut held = self
            .exclusive
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.get(name) == Some(&session) {
            held.remove(name);
        }
    }

    /// Deletes a queue (a durable subscription's) on the check channel.
    pub async fn delete_queue(&self, name: &str) -> Result<(), BridgeError> {
        let queue = short("queue name", name)?;
        self.on_check(|ch| async move { ch.queue_delete(queue, Default::default()).await })
            .await
            .map(|_| ())
    }

    /// Binds a (durable subscription's) queue on the check channel.
    pub async fn check_bind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), BridgeError> {
        let (q, e, k) = (
            short("queue name", queue)?,
            short("exchange name", exchange)?,
            short("routing key", key)?,
        );
        self.on_check(|ch| async move {
            ch.queue_bind(q, e, k, QueueBindOptions::default(), FieldTable::default())
                .await
        })
        .await
    }

    // ----- shared channels ---------------------------------------------

    /// The publishing channel of a session (by its key). Publishing channel
    /// `i` is opened on connection `i` (mod their number), as consumer
    /// channels are, so that publishing is spread over the connections (a
    /// cluster's nodes) and a lost node stops only its share of it.
    pub async fn publisher(&self, session: u64) -> Result<Channel, BridgeError> {
        let index = (session as usize) % self.publishers.len();
        let mut slot = self.publishers[index].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let channel = self.open_channel(Some(index)).await?;
        timed(
            self.config.timeout,
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// A channel for one more queue consumer, locked until the consumer is
    /// set up (so that its `basic.qos` applies to it alone).
    pub async fn consumer_channel(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Channel>>, BridgeError> {
        let i = self.next_consumer.fetch_add(1, Ordering::Relaxed) % self.consumers.len();
        let mut slot = self.consumers[i].lock().await;
        if slot.as_ref().is_some_and(|c| c.status().connected()) {
            return Ok(slot);
        }
        let channel = self.open_channel(Some(i)).await?;
        *slot = Some(channel);
        Ok(slot)
    }

    async fn open_channel(&self, hint: Option<usize>) -> Result<Channel, BridgeError> {
        let conn = match hint {
            Some(h) => self.pool.connection(h),
            None => self
                .pool
                .connection(self.next_consumer.load(Ordering::Relaxed)),
        }
        .ok_or(BridgeError::Unavailable)?;
        self.channel_on(&conn).await
    }

    async fn channel_on(&self, conn: &Connection) -> Result<Channel, BridgeError> {
        timed(
            self.config.timeout,
            "opening a channel",
            conn.create_channel(),
        )
        .await
    }

    async fn close_channel(&self, channel: &Channel, why: &str) {
        if channel.status().connected() {
            let _ = tokio::time::timeout(self.config.timeout, channel.close(200, why.into())).await;
        }
    }

    // ----- shard tasks ---------------------------------------------------

    /// Declares the shard's queue and consumes it; routes deliveries; when
    /// the broker goes away, starts over (queue and bindings) once it is back.
    async fn run_shard(self: Arc<Self>, shard: Arc<Shard>) {
        let mut backoff = super::Backoff::new();
        loop {
            if shard.stop.is_cancelled() {
                return;
            }
            let established = tokio::select! {
                _ = shard.stop.cancelled() => return,
                r = self.establish_shard(&shard) => r,
            };
            match established {
                Ok((consumer_channel, consumer, link)) => {
                    backoff.reset();
                    {
                        let mut state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
                        state.bound.clear();
                        state.link = Some(link.clone());
                        shard.waiting.store(shard.keys(), Ordering::Relaxed);
                        let now = Instant::now();
                        for cover in state.covers.values_mut() {
                            cover.restart(now);
                        }
                        shard.count_measuring(&state.covers);
                        let wanted = shard.all_wanted(&state.covers);
                        state.dirty.extend(wanted);
                        if let Some(b) = &shard.dedicated {
                            state.dirty.insert(b.clone());
                        }
                    }
                    shard.wake.notify_one();
                    self.publish_gauges();
                    self.consume_shard(&shard, &consumer_channel, consumer, &link)
                        .await;
                    // The control channel may have been replaced meanwhile.
                    let current = {
                        let mut state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
                        state.bound.clear();
                        shard.waiting.store(shard.keys(), Ordering::Relaxed);
                        state.link.take()
                    };
                    let stopped = shard.stop.is_cancelled();
                    if stopped {
                        let _ = tokio::time::timeout(
                            self.config.timeout,
                            link.control
                                .queue_delete(link.queue.as_str().into(), Default::default()),
                        )
                        .await;
                    }
                    self.close_channel(&consumer_channel, "plane shard done")
                        .await;
                    self.close_channel(&link.control, "plane shard done").await;
                    if let Some(current) = current {
                        self.close_channel(&current.control, "plane shard done")
                            .await;
                    }
                    self.publish_gauges();
                    if stopped {
                        return;
                    }
                }
                Err(error) => {
                    tracing::debug!(shard = shard.index, %error, "plane queue not established");
                    if matches!(error, BridgeError::Unavailable)
                        && self.pool.connection(0).is_none()
                    {
                        // No connection: start again as soon as the pool
                        // has this shard's connection back (half a second
                        // at most, then any), not after a backoff of our
                        // own (which grew while the broker was away).
                        let bound = backoff.next_delay().min(Duration::from_millis(500));
                        tokio::select! {
                            _ = shard.stop.cancelled() => return,
                            _ = self.pool.wait_connection(shard.index, bound) => {}
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = shard.stop.cancelled() => return,
                _ = backoff.sleep() => {}
            }
        }
    }

    async fn establish_shard(
        &self,
        shard: &Shard,
    ) -> Result<(Channel, lapin::Consumer, ShardLink), BridgeError> {
        let hint = if shard.dedicated.is_some() {
            self.next_consumer.load(Ordering::Relaxed)
        } else {
            shard.index
        };
        let conn = self.pool.connection(hint).ok_or(BridgeError::Unavailable)?;
        let consumer_channel = self.channel_on(&conn).await?;
        let control = match self.channel_on(&conn).await {
            Ok(c) => c,
            Err(e) => {
                self.close_channel(&consumer_channel, "plane shard failed")
                    .await;
                return Err(e);
            }
        };
        let setup = async {
            let queue = timed(
                self.config.timeout,
                "declaring the plane queue",
                control.queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            let queue = queue.name().as_str().to_owned();
            timed(
                self.config.timeout,
                "basic.qos",
                consumer_channel.basic_qos(self.config.prefetch, BasicQosOptions::default()),
            )
            .await?;
            let consumer = timed(
                self.config.timeout,
                "consuming the plane queue",
                consumer_channel.basic_consume(
                    queue.as_str().into(),
                    format!("stompgate-plane-{}", shard.index).as_str().into(),
                    BasicConsumeOptions {
                        exclusive: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok::<_, BridgeError>((consumer, queue))
        };
        match setup.await {
            Ok((consumer, queue)) => Ok((consumer_channel, consumer, ShardLink { control, queue })),
            Err(e) => {
                self.close_channel(&consumer_channel, "plane shard failed")
                    .await;
                self.close_channel(&control, "plane shard failed").await;
                Err(e)
            }
        }
    }

    /// Routes the shard's deliveries until its consumer ends or it stops.
    /// Deliveries are acked in groups (multiple=true is fine here: this
    /// channel carries this queue alone).
    async fn consume_shard(
        &self,
        shard: &Shard,
        channel: &Channel,
        mut consumer: lapin::Consumer,
        link: &ShardLink,
    ) {
        let ack_every = (self.config.prefetch as u64 / 4).max(1);
        let mut unacked: u64 = 0;
        let mut last_tag: u64 = 0;
        let mut lag_probe = tokio::time::interval(Duration::from_secs(5));
        lag_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let idle = tokio::time::sleep(Duration::from_millis(20));
            let next = tokio::select! {
                _ = shard.stop.cancelled() => return,
                next = consumer.next() => next,
                _ = idle, if unacked > 0 => {
                    let _ = channel.basic_ack(last_tag, BasicAckOptions { multiple: true }).await;
                    unacked = 0;
                    continue;
                }
                _ = lag_probe.tick(), if shard.dedicated.is_none() => {
                    if let Ok(Ok(q)) = tokio::time::timeout(
                        self.config.timeout,
                        link.control.queue_declare(
                            link.queue.as_str().into(),
                            QueueDeclareOptions { passive: true, ..Default::default() },
                            FieldTable::default(),
                        ),
                    ).await {
                        crate::metrics::get().plane_lag.set(q.message_count() as f64);
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    // Route every delivery that is already here before
                    // waking the writers (at most BURST): a client's writer
                    // then wakes, and writes, once per burst, not once per
                    // message. `wakes` wakes them when dropped, whatever
                    // happens below.
                    let mut next = Some(Some(Ok(delivery)));
                    {
                        let routes = shard.routes.read().unwrap_or_else(PoisonError::into_inner);
                        let mut burst = Burst::default();
                        let mut count = 0;
                        while let Some(item) = next.take() {
                            let Some(Ok(delivery)) = item else {
                                next = Some(item);
                                break;
                            };
                            last_tag = delivery.delivery_tag;
                            if shard.measuring.load(Ordering::Relaxed) > 0 {
                                self.observe(shard, delivery.exchange.as_str());
                            }
                            self.route(shard, &routes, delivery, &mut burst);
                            unacked += 1;
                            count += 1;
                            if count < BURST {
                                next = consumer.next().now_or_never();
                            }
                        }
                        burst.deliver();
                    }
                    if unacked >= ack_every {
                        let _ = channel
                            .basic_ack(last_tag, BasicAckOptions { multiple: true })
                            .await;
                        unacked = 0;
                    }
                    match next {
                        Some(Some(Err(error))) => {
                            tracing::warn!(shard = shard.index, %error, "plane consumer failed");
                            return;
                        }
                        Some(None) => return,
                        _ => {}
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(shard = shard.index, %error, "plane consumer failed");
                    return;
                }
                None => return,
            }
        }
    }

    /// Adds one delivery to the burst for every local subscription it
    /// matches, encoded once; nothing per recipient is allocated.
    fn route<'a>(
        &self,
        shard: &Shard,
        routes: &'a HashMap<String, ExchangeRoutes<Entry>>,
        delivery: lapin::message::Delivery,
        burst: &mut Burst<'a>,
    ) {
        let metrics = crate::metrics::get();
        let mut message: Option<Arc<SharedMessage>> = None;
        let mut recipients = 0u64;
        // The body moves into the encoded message (once, on the first match).
        let mut data = Some(delivery.data);
        let mut encode = |message: &mut Option<Arc<SharedMessage>>| -> Arc<SharedMessage> {
            Arc::clone(message.get_or_insert_with(|| {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let headers = stomp_headers_from_amqp(
                    delivery.exchange.as_str(),
                    delivery.routing_key.as_str(),
                    delivery.redelivered,
                    &delivery.properties,
                );
                Arc::new(fanout::encode(
                    seq,
                    &headers,
                    &Bytes::from(data.take().unwrap_or_default()),
                ))
            }))
        };
        let mut deliver = |entry: &'a Entry| {
            if entry.subscribers.is_empty() {
                return;
            }
            let shared = encode(&mut message);
            recipients += entry.subscribers.len() as u64;
            burst.push(entry, shared);
        };
        let matched = if shard.dedicated.is_some() {
            // A queue of one binding: everything in it is for its subscribers.
            let mut n = 0;
            for table in routes.values() {
                n += table.route_all(&mut deliver);
            }
            n
        } else {
            match routes.get(delivery.exchange.as_str()) {
                Some(table) => table.route(delivery.routing_key.as_str(), &mut deliver),
                None => 0,
            }
        };
        if matched == 0 {
            metrics.plane_unmatched.increment(1);
        } else {
            metrics.plane_routed.increment(1);
        }
        metrics.delivered_broadcast.increment(recipients);
        metrics.frames_out(crate::stomp::Command::Message, recipients);
    }

    /// Keeps the broker's bindings of the shard's queue equal to what its
    /// routing table wants. Bindings whose wanted state changed are marked
    /// dirty; this task takes them as they come and binds or unbinds them,
    /// up to [`BIND_BATCH`] operations in flight on the control channel at
    /// once (pipelined, never one awaited call per subscriber), at most one
    /// per binding, so that a bind and an unbind of one key never race.
    async fn run_binder(self: Arc<Self>, shard: Arc<Shard>) {
        type Op = futures_util::future::BoxFuture<
            'static,
            (Binding, bool, String, Result<(), BridgeError>),
        >;
        let mut ops: futures_util::stream::FuturesUnordered<Op> = Default::default();
        let mut failed: Vec<(Binding, bool, String, BridgeError)> = Vec::new();
        loop {
            // Intake: start what is dirty and not already in flight.
            let mut settled = Vec::new();
            {
                let mut state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(link) = state.link.clone() {
                    if ops.is_empty() && state.dirty.is_empty() {
                        self.finish_switches(&shard, &mut state);
                    }
                    let room = BIND_BATCH.saturating_sub(ops.len());
                    let take: Vec<Binding> = state
                        .dirty
                        .iter()
                        .filter(|b| !state.inflight.contains(*b))
                        .take(room)
                        .cloned()
                        .collect();
                    for binding in take {
                        state.dirty.remove(&binding);
                        let wanted = shard.wants(&state.covers, &binding);
                        if wanted == state.bound.contains(&binding) {
                            settled.push((binding, wanted));
                            continue;
                        }
                        state.inflight.insert(binding.clone());
                        let (control, queue, timeout) = (
                            link.control.clone(),
                            link.queue.clone(),
                            self.config.timeout,
                        );
                        ops.push(Box::pin(async move {
                            let result = bind_op(timeout, &control, &queue, &binding, wanted).await;
                            (binding, wanted, queue, result)
                        }));
                    }
                }
            }
            // Entries settled without an operation leave room: take more
            // before waiting (what is dirty must not wait for a wake-up).
            let more = !settled.is_empty();
            for (binding, wanted) in settled {
                self.settle(&shard, &binding, Ok(()), wanted);
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            if ops.is_empty() && failed.is_empty() && shard.waiting.load(Ordering::Relaxed) > 0 {
                // Only after a (re)establish: new subscriptions wait on
                // their own binding, and counting is O(keys).
                let state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.dirty.is_empty() {
                    shard.count_waiting(&state);
                    drop(state);
                    self.publish_gauges();
                }
            }
            if ops.is_empty() && !failed.is_empty() {
                self.retry_failed(&shard, std::mem::take(&mut failed)).await;
                self.publish_gauges();
                continue;
            }
            tokio::select! {
                _ = shard.stop.cancelled() => {
                    self.fail_waiters(&shard, "subscription cancelled");
                    return;
                }
                _ = shard.wake.notified() => {}
                Some((binding, bind, queue, result)) = ops.next(), if !ops.is_empty() => {
                    shard
                        .state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .inflight
                        .remove(&binding);
                    match result {
                        Ok(()) => self.settle(&shard, &binding, Ok(()), bind),
                        Err(error) => failed.push((binding, bind, queue, error)),
                    }
                    if ops.is_empty() {
                        self.publish_gauges();
                    }
                }
            }
        }
    }

    /// A refusal closes the control channel, failing whatever was in flight
    /// with it: retry each failed operation on a fresh channel, one at a
    /// time, so that only the binding the broker refuses is refused.
    async fn retry_failed(&self, shard: &Shard, failed: Vec<(Binding, bool, String, BridgeError)>) {
        let link = shard
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .link
            .clone();
        let Some(link) = link else {
            // The shard is being re-established: it re-binds everything.
            return;
        };
        let Some(conn) = self.pool.connection(shard.index) else {
            self.requeue(shard, failed.into_iter().map(|(b, _, _, _)| b));
            return;
        };
        let mut control = link.control.clone();
        for (binding, bind, queue, first_error) in failed {
            let wanted = {
                let state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
                shard.wants(&state.covers, &binding)
            };
            if queue != link.queue || wanted != bind {
                // Of an earlier queue, or wanted otherwise by now.
                self.requeue(shard, std::iter::once(binding));
                continue;
            }
            if !control.status().connected() {
                match self.channel_on(&conn).await {
                    Ok(c) => control = c,
                    Err(_) => {
                        self.requeue(shard, std::iter::once(binding));
                        continue;
                    }
                }
            }
            match bind_op(self.config.timeout, &control, &link.queue, &binding, bind).await {
                Ok(()) => self.settle(shard, &binding, Ok(()), bind),
                Err(error) => {
                    tracing::warn!(?binding, %error, first = %first_error, "binding refused");
                    self.settle(shard, &binding, Err(error.to_string()), false);
                }
            }
        }
        if !control.status().connected() {
            if let Ok(c) = self.channel_on(&conn).await {
                control = c;
            }
        }
        if let Some(l) = shard
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .link
            .as_mut()
        {
            if l.queue == link.queue {
                l.control = control;
            }
        }
        shard.wake.notify_one();
    }

    fn requeue(&self, shard: &Shard, bindings: impl Iterator<Item = Binding>) {
        shard
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dirty
            .extend(bindings);
    }

    /// Records a binding's broker state and answers its waiters.
    fn settle(&self, shard: &Shard, binding: &Binding, result: Result<(), String>, bound: bool) {
        let mut state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
        if result.is_ok() {
            if bound {
                state.bound.insert(binding.clone());
            } else {
                state.bound.remove(binding);
            }
        }
        if self.settle_catch_all(shard, &mut state, binding, &result, bound) {
            return;
        }
        // Waiters are answered once the binding is bound (or refused); an
        // unbind leaves them for the rebind that their subscription queued.
        if bound || result.is_err() {
            if let Some(waiters) = state.waiters.remove(binding) {
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        }
    }

    /// The catch-all of a wildcard or auto exchange was bound or refused:
    /// bound, it serves every waiting subscription of the exchange (and a
    /// switch to it unbinds the keys); refused, the exchange falls back to
    /// one binding per key. True when it was such a catch-all.
    fn settle_catch_all(
        &self,
        shard: &Shard,
        state: &mut BindState,
        binding: &Binding,
        result: &Result<(), String>,
        bound: bool,
    ) -> bool {
        let Some(cover) = state
            .covers
            .get_mut(&binding.exchange)
            .filter(|c| c.wildcard && binding.routing_key == c.catch_all)
        else {
            return false;
        };
        match result {
            Ok(()) if bound => {
                if cover.catch_all_bound() == Step::UnbindKeys {
                    let keys: Vec<Binding> = state
                        .bound
                        .iter()
                        .filter(|b| b.exchange == binding.exchange && *b != binding)
                        .cloned()
                        .collect();
                    state.dirty.extend(keys);
                    shard.wake.notify_one();
                }
                let served: Vec<Binding> = state
                    .waiters
                    .keys()
                    .filter(|b| b.exchange == binding.exchange)
                    .cloned()
                    .collect();
                for b in served {
                    for w in state.waiters.remove(&b).unwrap_or_default() {
                        let _ = w.send(Ok(()));
                    }
                }
                true
            }
            Err(error) => {
                tracing::warn!(
                    exchange = %binding.exchange,
                    %error,
                    "catch-all binding refused: this exchange is bound per key"
                );
                if cover.refused() == Step::BindKeys {
                    state.dirty.extend(shard.keys_of(&binding.exchange));
                }
                shard.count_measuring(&state.covers);
                shard.wake.notify_one();
                // The waiters stay for their keys' own bindings.
                true
            }
            Ok(()) => false,
        }
    }

    /// Counts a delivery of `exchange` on a measuring (auto) cover; starts
    /// the switch to per-key bindings when its rate is above the bound.
    fn observe(&self, shard: &Shard, exchange: &str) {
        let policy = &self.config.bindings;
        let mut state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        let Some(cover) = state.covers.get_mut(exchange) else {
            return;
        };
        if cover.observe(Instant::now(), policy.auto_window, policy.auto_max_rate) == Step::BindKeys
        {
            tracing::info!(
                exchange,
                "auto bindings: rate above amqp.auto_max_rate, binding per key"
            );
            shard.count_measuring(&state.covers);
            state.dirty.extend(shard.keys_of(exchange));
            shard.wake.notify_one();
        }
    }

    /// Ends the switches to per-key bindings whose keys are all bound: the
    /// catch-all goes (called by the binder when nothing is in flight).
    fn finish_switches(&self, shard: &Shard, state: &mut BindState) {
        let switching: Vec<String> = state
            .covers
            .iter()
            .filter(|(_, c)| c.switching_to_keys())
            .map(|(e, _)| e.clone())
            .collect();
        for exchange in switching {
            if !shard
                .keys_of(&exchange)
                .iter()
                .all(|b| state.bound.contains(b))
            {
                continue;
            }
            if let Some(cover) = state.covers.get_mut(&exchange) {
                if cover.keys_bound() == Step::UnbindCatchAll {
                    state.dirty.insert(Binding {
                        exchange,
                        routing_key: cover.catch_all.to_owned(),
                    });
                }
            }
        }
    }

    /// The last local subscription of `exchange` on this queue is gone: its
    /// cover goes and its catch-all is unbound.
    fn drop_cover(&self, shard: &Shard, exchange: &str) {
        let mut state = shard.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cover) = state.covers.remove(exchange) {
            state.dirty.insert(Binding {
                exchange: exchange.to_owned(),
                routing_key: cover.catch_all.to_owned(),
            });
            shard.count_measuring(&state.covers);
            shard.wake.notify_one();
        }
    }

    fn fail_waiters(&self, shard: &Shard, why: &str) {
        for (_, waiters) in shard
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiters
            .drain()
        {
            for w in waiters {
                let _ = w.send(Err(why.to_owned()));
            }
        }
    }
}

/// One bind or unbind of the plane queue `queue`.
async fn bind_op(
    timeout: Duration,
    control: &Channel,
    queue: &str,
    binding: &Binding,
    bind: bool,
) -> Result<(), BridgeError> {
    let exchange = short("exchange name", &binding.exchange)?;
    let key = short("routing key", &binding.routing_key)?;
    if bind {
        timed(
            timeout,
            "queue.bind",
            control.queue_bind(
                queue.into(),
                exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    } else {
        timed(
            timeout,
            "queue.unbind",
            control.queue_unbind(queue.into(), exchange, key, FieldTable::default()),
        )
        .await
    }
}
