//! The broker side of one STOMP session, on the replica's shared plane:
//! its places in the plane's routing tables (broadcast subscriptions), its
//! queue consumers (on the plane's shared consumer channels), its temporary
//! reply queues, and its publishes (on the plane's shared confirm channels).
//!
//! A session holds no channel of its own. That makes two rules essential,
//! because several sessions' consumers share one channel and its delivery
//! tags:
//! - the gateway settles only tags it knows: each consumer keeps the set of
//!   tags it handed to its session and not yet settled; an ack for an
//!   unknown tag never reaches the broker (it would close the channel for
//!   everyone), a tag is acked or nacked at most once, and a STOMP
//!   cumulative ACK/NACK settles that subscription's tags one by one,
//!   never with `multiple=true`;
//! - cancelling a consumer does not requeue its unacked messages (closing a
//!   channel would), so UNSUBSCRIBE and disconnect nack them with requeue.
//!
//! When the broker goes away, a queue consumer is re-established on a shared
//! channel once it is back, without the client doing anything: RabbitMQ
//! redelivers what the client had not acked, and acks for deliveries of the
//! dead channel are recognised by their generation and dropped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, PublisherConfirm};
use tokio::sync::mpsc;

use super::fanout::{Binding, Subscriber};
use super::plane::{timed, Plane, Shard};
use super::properties::{
    consumer_arguments, properties_from_stomp, queue_arguments, send_queue_arguments, short,
    stomp_headers_from_amqp,
};
use super::{Backoff, BridgeError};
use crate::session::{
    Message, PublishRequest, ReplyTo, SubscribeRequest, GENERATION_MASK, GENERATION_SHIFT,
};
use crate::stomp::destination::{temp_queue_name, temp_queue_subscription, Destination};

/// A message for the session from one of its own consumers.
#[derive(Debug)]
pub enum Inbound {
    Delivery {
        subscription: Arc<str>,
        /// The broker's delivery tag, with the consumer's generation above
        /// [`GENERATION_SHIFT`].
        tag: u64,
        message: Message,
    },
    /// The consumer was lost with its channel (broker restart, connection
    /// loss) and consumes again on another channel.
    Restarted {
        subscription: Arc<str>,
        generation: u64,
        queue: String,
    },
    /// The consumer ended for good (queue deleted, access refused) while the
    /// broker is up.
    Lost {
        subscription: Arc<str>,
        reason: String,
    },
}

/// What the forwarding task sends: an [`Inbound`] and the serial of the
/// consumer it comes from (a reused subscription id gets a new consumer,
/// and what the old one sent is dropped).
type Item = (u64, Inbound);

/// How to (re)create the queue a subscription consumes.
#[derive(Debug, Clone)]
enum QueuePlan {
    /// `/queue/<name>`: a durable queue shared by competing consumers.
    Shared {
        name: String,
        args: Vec<(String, String)>,
    },
    /// `/amq/queue/<name>`: exists already, never declared.
    Existing { name: String },
    /// A broadcast subscription with a queue of its own (durable, or named
    /// by `x-queue-name`), bound to the exchange, with the flags RabbitMQ's
    /// STOMP plugin gives it. An exclusive one is declared and bound on the
    /// consumer channel (it belongs to that channel's connection), after a
    /// trial declaration on the check channel.
    Own {
        name: String,
        durable: bool,
        auto_delete: bool,
        exclusive: bool,
        args: Vec<(String, String)>,
        exchange: String,
        key: String,
    },
    /// A temporary reply queue: exclusive, server-named.
    Temp,
    /// A transient broadcast subscription in a client ack mode: an
    /// exclusive, server-named queue of its own, bound to the exchange.
    Transient { exchange: String, key: String },
}

#[derive(Debug, Clone)]
struct ConsumeSpec {
    id: Arc<str>,
    plan: QueuePlan,
    /// basic.qos prefetch of this consumer; 0 for none.
    prefetch: u16,
    /// basic.consume arguments (`x-stream-offset`).
    arguments: FieldTable,
}

/// The broker state of one consumer, shared by the session and the task
/// that forwards its deliveries.
#[derive(Debug)]
struct Tracker {
    channel: Channel,
    consumer_tag: String,
    generation: u64,
    /// Broker tags handed to the session (current generation), not settled.
    unacked: BTreeSet<u64>,
    /// UNSUBSCRIBE or disconnect: deliveries still arriving are requeued.
    closing: bool,
    /// The queue is a stream (its deliveries carry `x-stream-offset`):
    /// nothing is nacked there, see [`give_back`].
    stream: bool,
}

#[derive(Debug)]
struct OwnConsumer {
    serial: u64,
    /// The queue UNSUBSCRIBE with `durable:true` deletes: the queue of its
    /// own of a `/topic` subscription, as RabbitMQ's plugin does (not of an
    /// `/exchange` one).
    deletable: Option<String>,
    /// A named exclusive queue this session claimed on the plane, and
    /// whether it is auto-delete (else the gateway deletes it when the
    /// subscription ends).
    exclusive: Option<(String, bool)>,
    tracker: Arc<Mutex<Tracker>>,
}

/// A broadcast subscription: a binding of the plane, or a destination
/// served by a history stream (src/bridge/history.rs; the subscription
/// ends when dropped).
#[derive(Debug)]
enum Broadcast {
    Plane(Binding, Arc<Shard>),
    History {
        _subscription: super::history::Subscription,
    },
}

/// Per-session AMQP state.
#[derive(Debug)]
pub struct SessionBroker {
    plane: Arc<Plane>,
    key: u64,
    declared: HashSet<String>,
    own: HashMap<String, OwnConsumer>,
    /// Broadcast subscriptions by id. A list, not a map: a session has
    /// few (bounded by `max_subscriptions`), and an idle session's one
    /// entry takes 80 bytes instead of a 4-slot table.
    fanout: Vec<(String, Broadcast)>,
    /// `/temp-queue/<name>` name -> the broker's queue name.
    temp: HashMap<String, String>,
    /// Where this session's own consumers deliver; made with the first of
    /// them (a session that only listens to broadcasts has none, and an
    /// idle session should cost as little memory as possible).
    inbound: Option<(mpsc::Sender<Item>, mpsc::Receiver<Item>)>,
    next_serial: u64,
    /// The served vhosts, when CONNECT may move the session to another
    /// one than its bridge's (see [`SessionBroker::with_vhosts`]).
    vhosts: Option<(Arc<super::vhosts::Vhosts>, std::time::Duration)>,
}

impl SessionBroker {
    pub fn new(plane: Arc<Plane>, key: u64) -> SessionBroker {
        SessionBroker {
            plane,
            key,
            declared: HashSet::new(),
            own: HashMap::new(),
            fanout: Vec::new(),
            temp: HashMap::new(),
            inbound: None,
            next_serial: 1,
            vhosts: None,
        }
    }

    /// A session that starts on the default vhost's bridge and moves to
    /// the vhost CONNECT selects ([`SessionBroker::select_vhost`]), waiting
    /// at most `timeout` for a vhost's bridge started just then.
    pub fn with_vhosts(
        mut self,
        vhosts: Arc<super::vhosts::Vhosts>,
        timeout: std::time::Duration,
    ) -> SessionBroker {
        self.vhosts = Some((vhosts, timeout));
        self
    }

    /// CONNECT selected `vhost`: before anything was subscribed, the
    /// session's broker state moves to that vhost's bridge.
    pub async fn select_vhost(&mut self, vhost: &str) -> Result<(), BridgeError> {
        let Some((vhosts, timeout)) = self.vhosts.clone() else {
            return Ok(());
        };
        if vhost == vhosts.default_vhost() {
            return Ok(());
        }
        *self = vhosts.session(vhost, timeout).await?;
        Ok(())
    }

    /// The next message from this session's own consumers; pending forever
    /// while it has none. Items of consumers that are gone are dropped.
    pub async fn next_inbound(&mut self) -> Inbound {
        loop {
            let item = match &mut self.inbound {
                Some((_, rx)) => rx.recv().await,
                None => None,
            };
            let Some((serial, item)) = item else {
                return std::future::pending().await;
            };
            let subscription = match &item {
                Inbound::Delivery { subscription, .. }
                | Inbound::Restarted { subscription, .. }
                | Inbound::Lost { subscription, .. } => subscription,
            };
            if self
                .own
                .get(&**subscription)
                .is_some_and(|o| o.serial == serial)
            {
                return item;
            }
        }
    }

    /// Key of this session on the plane.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Whether `id` is a live subscription of this session's own consumers.
    pub fn has_own(&self, id: &str) -> bool {
        self.own.contains_key(id)
    }

    /// Sets up a subscription; `subscriber` is used for fan-out ones.
    pub async fn subscribe(
        &mut self,
        req: &SubscribeRequest,
        subscriber: Subscriber,
    ) -> Result<(), BridgeError> {
        if req.is_fanout() {
            let subscriber = match self.plane.history() {
                Some(history) => match history.subscribe(req, subscriber)? {
                    Ok(subscription) => {
                        self.fanout.reserve_exact(1);
                        self.fanout.push((
                            req.id.clone(),
                            Broadcast::History {
                                _subscription: subscription,
                            },
                        ));
                        crate::metrics::get().subscriptions.increment(1.0);
                        return Ok(());
                    }
                    Err(subscriber) => subscriber,
                },
                None => subscriber,
            };
            let (exchange, routing_key) = req.destination.publish_target();
            let binding = Binding {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            };
            let shard = self.plane.subscribe(binding.clone(), subscriber).await?;
            if let Some(i) = self.fanout.iter().position(|(id, ..)| *id == req.id) {
                self.fanout.swap_remove(i);
            }
            self.fanout.reserve_exact(1);
            self.fanout
                .push((req.id.clone(), Broadcast::Plane(binding, shard)));
            crate::metrics::get().subscriptions.increment(1.0);
            return Ok(());
        }
        let plan = match &req.destination {
            Destination::Queue { name } => QueuePlan::Shared {
                name: name.clone(),
                args: req.queue_arguments.clone(),
            },
            Destination::AmqQueue { name } => QueuePlan::Existing { name: name.clone() },
            Destination::Topic { .. } | Destination::Exchange { .. }
                if !req.durable && req.queue_name.is_none() =>
            {
                let (exchange, key) = req.destination.publish_target();
                QueuePlan::Transient {
                    exchange: exchange.to_owned(),
                    key: key.to_owned(),
                }
            }
            Destination::Topic { .. } | Destination::Exchange { .. } => {
                let (exchange, key) = req.destination.publish_target();
                // The session names durable queues: no fallback here.
                let Some(name) = req.queue_name.clone() else {
                    return Err(BridgeError::Invalid(
                        "a durable subscription needs a queue name".into(),
                    ));
                };
                if req.exclusive && !self.plane.claim_exclusive(&name, self.key) {
                    return Err(BridgeError::Refused(format!(
                        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}': \
                         it is the exclusive queue of another subscription"
                    )));
                }
                QueuePlan::Own {
                    name,
                    durable: req.durable,
                    auto_delete: req.auto_delete,
                    exclusive: req.exclusive,
                    args: req.queue_arguments.clone(),
                    exchange: exchange.to_owned(),
                    key: key.to_owned(),
                }
            }
            Destination::TempQueue { .. } | Destination::ReplyQueue { .. } => {
                return Err(BridgeError::Invalid(
                    "temporary queues cannot be subscribed to".into(),
                ))
            }
        };
        let spec = ConsumeSpec {
            id: Arc::from(req.id.as_str()),
            plan,
            prefetch: req.prefetch,
            arguments: consumer_arguments(&req.queue_arguments),
        };
        let claimed = match &spec.plan {
            QueuePlan::Own {
                name,
                exclusive: true,
                ..
            } => Some(name.clone()),
            _ => None,
        };
        if let Err(e) = self.start_consumer(spec).await {
            if let Some(name) = claimed {
                self.plane.release_exclusive(&name, self.key);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Opens the consumer and its forwarding task; returns the queue name.
    async fn start_consumer(&mut self, spec: ConsumeSpec) -> Result<String, BridgeError> {
        let (channel, consumer, queue) = open_consumer(&self.plane, &spec).await?;
        let serial = self.next_serial;
        self.next_serial += 1;
        let tracker = Arc::new(Mutex::new(Tracker {
            channel,
            consumer_tag: consumer.tag().as_str().to_owned(),
            generation: 0,
            unacked: BTreeSet::new(),
            closing: false,
            stream: false,
        }));
        let id = spec.id.to_string();
        let (deletable, exclusive) = match &spec.plan {
            QueuePlan::Own {
                name,
                exchange,
                exclusive,
                auto_delete,
                ..
            } => (
                (exchange == "amq.topic").then(|| name.clone()),
                exclusive.then(|| (name.clone(), *auto_delete)),
            ),
            _ => (None, None),
        };
        let sender = self
            .inbound
            .get_or_insert_with(|| mpsc::channel(16))
            .0
            .clone();
        tokio::spawn(run_consumer(
            Arc::clone(&self.plane),
            spec,
            consumer,
            Arc::clone(&tracker),
            sender,
            serial,
        ));
        if let Some(old) = self.own.insert(
            id,
            OwnConsumer {
                serial,
                deletable,
                exclusive,
                tracker,
            },
        ) {
            self.finish(&old).await;
        }
        let metrics = crate::metrics::get();
        metrics.subscriptions.increment(1.0);
        metrics.amqp_consumers.increment(1.0);
        Ok(queue)
    }

    /// A consumer came back on another channel (see [`Inbound::Restarted`]).
    pub fn restarted(&mut self, subscription: &str, queue: String) {
        if let Some(name) = temp_queue_name(subscription) {
            self.temp.insert(name.to_owned(), queue);
        }
    }

    /// Cancels a subscription; unacked messages of a queue subscription go
    /// back to the queue.
    pub async fn unsubscribe(&mut self, id: &str) {
        let metrics = crate::metrics::get();
        if let Some(i) = self.fanout.iter().position(|(sub, ..)| sub == id) {
            // A history subscription ends when dropped.
            if let (_, Broadcast::Plane(binding, shard)) = self.fanout.swap_remove(i) {
                self.plane.unsubscribe(&shard, &binding, self.key, id);
            }
            metrics.subscriptions.decrement(1.0);
        }
        if let Some(own) = self.own.remove(id) {
            metrics.subscriptions.decrement(1.0);
            metrics.amqp_consumers.decrement(1.0);
            self.finish(&own).await;
        }
    }

    /// Ends an own consumer: cancels it, requeues what the client had not
    /// settled, and lets go of its exclusive queue (deleted here unless
    /// auto-delete did it: RabbitMQ's plugin deletes it with its connection).
    async fn finish(&self, own: &OwnConsumer) {
        release(own).await;
        if let Some((name, auto_delete)) = &own.exclusive {
            if !auto_delete {
                let channel = own
                    .tracker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .channel
                    .clone();
                delete_on(&channel, name, self.plane.config().timeout).await;
            }
            self.plane.release_exclusive(name, self.key);
        }
    }

    /// UNSUBSCRIBE with `durable:true`: cancels the subscription and, for a
    /// `/topic` subscription with a queue of its own (durable or named),
    /// deletes that queue, as RabbitMQ's plugin does: the queue is the
    /// subscription's, never one the frame names.
    pub async fn delete_durable(&mut self, id: &str) -> Result<(), BridgeError> {
        let queue = self
            .own
            .get(id)
            .and_then(|o| o.deletable.clone().map(|q| (q, o.exclusive.is_some())));
        self.unsubscribe(id).await;
        match queue {
            // Exclusive: gone with its consumer, or deleted by `finish`.
            Some((_, true)) | None => {}
            Some((queue, false)) => self.plane.delete_queue(&queue).await?,
        }
        Ok(())
    }

    /// basic.ack of `tag` (with its generation, see [`Inbound::Delivery`]);
    /// `multiple` settles every earlier unsettled tag of this subscription
    /// too, one by one. Unknown tags and tags of a lost channel are dropped.
    pub async fn ack(
        &self,
        subscription: &str,
        tag: u64,
        multiple: bool,
    ) -> Result<(), BridgeError> {
        let Some((channel, tags)) = self.take_tags(subscription, tag, multiple) else {
            return Ok(());
        };
        for t in tags {
            settle(&channel, channel.basic_ack(t, BasicAckOptions::default())).await?;
        }
        Ok(())
    }

    /// basic.nack; see [`SessionBroker::ack`].
    pub async fn nack(
        &self,
        subscription: &str,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), BridgeError> {
        let stream = self.own.get(subscription).is_some_and(|own| {
            own.tracker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stream
        });
        let Some((channel, tags)) = self.take_tags(subscription, tag, multiple) else {
            return Ok(());
        };
        for t in tags {
            if stream {
                settle(&channel, give_back(&channel, t, true)).await?;
                continue;
            }
            let options = BasicNackOptions {
                multiple: false,
                requeue,
            };
            settle(&channel, channel.basic_nack(t, options)).await?;
        }
        Ok(())
    }

    /// Removes from the unsettled set the tags an ack of `tag` settles.
    fn take_tags(
        &self,
        subscription: &str,
        tag: u64,
        multiple: bool,
    ) -> Option<(Channel, Vec<u64>)> {
        let own = self.own.get(subscription)?;
        let mut tracker = own.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        if (tag >> GENERATION_SHIFT) & GENERATION_MASK != tracker.generation & GENERATION_MASK {
            return None;
        }
        let raw = tag & ((1 << GENERATION_SHIFT) - 1);
        let tags = if multiple {
            let later = tracker.unacked.split_off(&(raw + 1));
            std::mem::replace(&mut tracker.unacked, later)
                .into_iter()
                .collect()
        } else if tracker.unacked.remove(&raw) {
            vec![raw]
        } else {
            Vec::new()
        };
        Some((tracker.channel.clone(), tags))
    }

    /// Publishes; the returned confirm resolves when the broker took it.
    pub async fn publish(&mut self, req: &PublishRequest) -> Result<PublisherConfirm, BridgeError> {
        if let Destination::Queue { name } = &req.destination {
            if !self.declared.contains(name) {
                // Passively first: a queue that exists (whatever its
                // arguments) is all a SEND needs; declared when missing.
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                let exists = self
                    .plane
                    .check_queue(name, passive, FieldTable::default())
                    .await
                    .is_ok();
                // Declared with the SEND's queue arguments (`x-expires`,
                // ...), as Web-STOMP declares it: a backend's later
                // declaration with the same values is then equivalent.
                let declared = if exists {
                    Ok(())
                } else {
                    self.plane
                        .check_queue(
                            name,
                            QueueDeclareOptions {
                                durable: true,
                                ..QueueDeclareOptions::default()
                            },
                            send_queue_arguments(&req.headers)?,
                        )
                        .await
                };
                match declared {
                    Ok(()) => {}
                    // The queue exists with other arguments: it is there,
                    // which is all a SEND needs.
                    Err(BridgeError::Amqp(e)) if e.to_string().contains("PRECONDITION_FAILED") => {}
                    Err(e) => return Err(e),
                }
                self.declared.insert(name.clone());
            }
        }
        let reply_to = match &req.reply_to {
            None => None,
            Some(ReplyTo::Plain(r)) => Some(r.clone()),
            Some(ReplyTo::Temp(name)) => Some(self.temp_queue(name).await?),
        };
        let props = properties_from_stomp(&req.headers, reply_to.as_deref())?;
        let (exchange, routing_key) = req.destination.publish_target();
        self.plane.check_exchange(exchange).await?;
        // A memory or disk alarm: wait a bounded time for it to clear rather
        // than queue publishes the broker will not read.
        let timeout = self.plane.config().timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.plane.is_blocked() {
            if tokio::time::Instant::now() >= deadline {
                return Err(BridgeError::Refused(format!(
                    "the broker blocks publishing (memory or disk alarm) for more than {} ms",
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let channel = self.plane.publisher(self.key).await?;
        timed(
            timeout,
            "basic.publish",
            channel.basic_publish(
                short("exchange name", exchange)?,
                short("routing key", routing_key)?,
                BasicPublishOptions::default(),
                &req.body,
                props,
            ),
        )
        .await
    }

    /// How long a publish may wait for its confirm.
    pub fn confirm_timeout(&self) -> std::time::Duration {
        self.plane.config().timeout
    }

    /// The broker's name of temp queue `name`, declared and consumed on first use.
    async fn temp_queue(&mut self, name: &str) -> Result<String, BridgeError> {
        if let Some(queue) = self.temp.get(name) {
            return Ok(queue.clone());
        }
        let spec = ConsumeSpec {
            id: Arc::from(temp_queue_subscription(name).as_str()),
            plan: QueuePlan::Temp,
            prefetch: 0,
            arguments: FieldTable::default(),
        };
        let queue = self.start_consumer(spec).await?;
        self.temp.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }

    /// Releases everything; unacked queue messages are requeued.
    pub async fn close(&mut self) {
        let metrics = crate::metrics::get();
        metrics
            .subscriptions
            .decrement((self.fanout.len() + self.own.len()) as f64);
        metrics.amqp_consumers.decrement(self.own.len() as f64);
        for (id, broadcast) in self.fanout.drain(..) {
            if let Broadcast::Plane(binding, shard) = broadcast {
                self.plane.unsubscribe(&shard, &binding, self.key, &id);
            }
        }
        let own: Vec<OwnConsumer> = self.own.drain().map(|(_, o)| o).collect();
        for own in own {
            self.finish(&own).await;
        }
    }
}

/// Deletes an exclusive queue of this gateway on the channel of the
/// connection that owns it (best effort: a lost connection took it along).
async fn delete_on(channel: &Channel, name: &str, timeout: std::time::Duration) {
    let Ok(queue) = short("queue name", name) else {
        return;
    };
    if channel.status().connected() {
        let _ = tokio::time::timeout(
            timeout,
            channel.queue_delete(queue, lapin::options::QueueDeleteOptions::default()),
        )
        .await;
    }
}

/// An ack or nack: refused only while its channel is up (on a lost channel
/// the broker requeues everything anyway).
async fn settle(
    channel: &Channel,
    op: impl std::future::Future<Output = Result<(), lapin::Error>>,
) -> Result<(), BridgeError> {
    match op.await {
        Ok(()) => Ok(()),
        Err(_) if !channel.status().connected() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Cancels a consumer and requeues what its session had not settled; what
/// still arrives for it is requeued by its forwarding task.
async fn release(own: &OwnConsumer) {
    let (channel, tag) = {
        let t = own.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        (t.channel.clone(), t.consumer_tag.clone())
    };
    if channel.status().connected() {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
    }
    let (tags, stream) = {
        let mut t = own.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        t.closing = true;
        (std::mem::take(&mut t.unacked), t.stream)
    };
    for t in tags {
        let _ = give_back(&channel, t, stream).await;
    }
}

/// Gives a delivery back to its queue: basic.nack with requeue, except on
/// a stream queue, which has no requeue (a message stays in the stream
/// whatever its consumers do) and answers basic.nack with a connection
/// error (NOT_IMPLEMENTED) that would close the channels of every session
/// on that connection: there basic.ack, which only returns the consumer's
/// credit.
async fn give_back(channel: &Channel, tag: u64, stream: bool) -> lapin::Result<()> {
    if stream {
        return channel.basic_ack(tag, BasicAckOptions::default()).await;
    }
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    channel.basic_nack(tag, options).await
}

/// Checks or declares the queue as planned (on the plane's check channel,
/// where a refusal closes nothing shared), then consumes it on a shared
/// consumer channel with the subscription's own prefetch.
async fn open_consumer(
    plane: &Plane,
    spec: &ConsumeSpec,
) -> Result<(Channel, lapin::Consumer, String), BridgeError> {
    let timeout = plane.config().timeout;
    let mut exclusive_declaration = None;
    let queue = match &spec.plan {
        QueuePlan::Shared { name, args } => {
            plane
                .check_queue(
                    name,
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    queue_arguments(args)?,
                )
                .await?;
            Some(name.clone())
        }
        QueuePlan::Existing { name } => {
            plane
                .check_queue(
                    name,
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Some(name.clone())
        }
        QueuePlan::Own {
            name,
            durable,
            auto_delete,
            exclusive,
            args,
            exchange,
            key,
        } => {
            let options = QueueDeclareOptions {
                durable: *durable,
                auto_delete: *auto_delete,
                exclusive: *exclusive,
                ..QueueDeclareOptions::default()
            };
            let arguments = queue_arguments(args)?;
            if *exclusive {
                // Whatever RabbitMQ would refuse (a missing exchange,
                // arguments an exclusive queue cannot have, a name another
                // connection holds or a backend's queue has) is refused on
                // the check channel, where it closes nothing shared; the
                // trial queue, the check connection's own, goes at once.
                plane.check_exchange(exchange).await?;
                plane.check_queue(name, options, arguments.clone()).await?;
                plane.delete_queue(name).await?;
                exclusive_declaration = Some((options, arguments));
            } else {
                plane.check_queue(name, options, arguments).await?;
                plane.check_bind(name, exchange, key).await?;
            }
            Some(name.clone())
        }
        QueuePlan::Transient { exchange, .. } => {
            // Checked where a missing exchange closes nothing shared.
            plane.check_exchange(exchange).await?;
            None
        }
        QueuePlan::Temp => None,
    };
    let slot = plane.consumer_channel().await?;
    let channel = slot.as_ref().cloned().ok_or(BridgeError::Unavailable)?;
    let queue = match queue {
        Some(q) => q,
        // Exclusive queues belong to a connection: declared on the channel
        // that consumes it (a server-named declaration is not refused).
        None => timed(
            timeout,
            "declaring a reply queue",
            channel.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?
        .name()
        .as_str()
        .to_owned(),
    };
    if let Some((options, arguments)) = exclusive_declaration {
        timed(
            timeout,
            "declaring an exclusive queue",
            channel.queue_declare(short("queue name", &queue)?, options, arguments),
        )
        .await?;
    }
    let bind_here = match &spec.plan {
        QueuePlan::Transient { exchange, key }
        | QueuePlan::Own {
            exclusive: true,
            exchange,
            key,
            ..
        } => Some((exchange, key)),
        _ => None,
    };
    if let Some((exchange, key)) = bind_here {
        timed(
            timeout,
            "queue.bind",
            channel.queue_bind(
                short("queue name", &queue)?,
                short("exchange name", exchange)?,
                short("routing key", key)?,
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    timed(
        timeout,
        "basic.qos",
        channel.basic_qos(spec.prefetch, BasicQosOptions { global: false }),
    )
    .await?;
    let consumer = timed(
        timeout,
        "basic.consume",
        channel.basic_consume(
            short("queue name", &queue)?,
            "".into(),
            BasicConsumeOptions::default(),
            spec.arguments.clone(),
        ),
    )
    .await?;
    drop(slot);
    Ok((channel, consumer, queue))
}

/// Forwards a consumer's deliveries to the session, and re-establishes the
/// consumer on a shared channel when it is lost while the broker is away.
async fn run_consumer(
    plane: Arc<Plane>,
    spec: ConsumeSpec,
    mut consumer: lapin::Consumer,
    tracker: Arc<Mutex<Tracker>>,
    inbound: mpsc::Sender<Item>,
    serial: u64,
) {
    let mut session_gone = false;
    loop {
        let reason = loop {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let raw = delivery.delivery_tag;
                    let from_stream = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .is_some_and(|h| h.inner().contains_key("x-stream-offset"));
                    let (forward, generation, channel, stream) = {
                        let mut t = tracker.lock().unwrap_or_else(PoisonError::into_inner);
                        t.stream |= from_stream;
                        let forward = !t.closing && !session_gone;
                        if forward {
                            t.unacked.insert(raw);
                        }
                        (forward, t.generation, t.channel.clone(), t.stream)
                    };
                    if !forward {
                        // Never handed to the session: requeue it here.
                        let _ = give_back(&channel, raw, stream).await;
                        continue;
                    }
                    let headers = stomp_headers_from_amqp(
                        delivery.exchange.as_str(),
                        delivery.routing_key.as_str(),
                        delivery.redelivered,
                        &delivery.properties,
                    );
                    let item = Inbound::Delivery {
                        subscription: Arc::clone(&spec.id),
                        tag: ((generation & GENERATION_MASK) << GENERATION_SHIFT) | raw,
                        message: Message {
                            headers,
                            body: bytes::Bytes::from(delivery.data),
                        },
                    };
                    if inbound.send((serial, item)).await.is_err() {
                        // The session is gone: stop the consumer, settle
                        // what the session never saw (unless its close did).
                        if !session_gone {
                            session_gone = true;
                            let tag = tracker
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .consumer_tag
                                .clone();
                            let _ = channel
                                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                                .await;
                        }
                        let mine = tracker
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .unacked
                            .remove(&raw);
                        if mine {
                            let _ = give_back(&channel, raw, stream).await;
                        }
                    }
                }
                Some(Err(error)) => break error.to_string(),
                None => break "consumer cancelled by the broker".to_owned(),
            }
        };
        if session_gone
            || tracker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .closing
        {
            return;
        }
        tracing::debug!(subscription = %spec.id, %reason, "queue consumer lost");
        let mut backoff = Backoff::new();
        loop {
            backoff.sleep().await;
            if tracker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .closing
            {
                return;
            }
            match open_consumer(&plane, &spec).await {
                Ok((channel, next, queue)) => {
                    let generation = {
                        let mut t = tracker.lock().unwrap_or_else(PoisonError::into_inner);
                        t.generation += 1;
                        t.channel = channel;
                        t.consumer_tag = next.tag().as_str().to_owned();
                        t.unacked.clear();
                        t.generation
                    };
                    consumer = next;
                    let restarted = Inbound::Restarted {
                        subscription: Arc::clone(&spec.id),
                        generation,
                        queue,
                    };
                    if inbound.send((serial, restarted)).await.is_err() {
                        session_gone = true;
                    }
                    break;
                }
                // The broker is away: keep trying until it is back.
                Err(BridgeError::Unavailable) => continue,
                Err(_) if !plane.is_ready() => continue,
                Err(error) => {
                    let lost = Inbound::Lost {
                        subscription: Arc::clone(&spec.id),
                        reason: format!("{reason}; re-subscribing failed: {error}"),
                    };
                    let _ = inbound.send((serial, lost)).await;
                    return;
                }
            }
        }
    }
}
