//! The broker resources of one STOMP session: its publishing channel (with
//! publisher confirms), the consumers of its queue subscriptions, its
//! temporary reply queues, and its places in the fan-out hub.
//!
//! Queue subscriptions (`/queue`, `/amq/queue`, durable topics) each get a
//! channel of their own, so that acks, nacks, prefetch and redelivery are the
//! broker's: closing the channel (UNSUBSCRIBE, disconnect) requeues whatever
//! the client had not acked. Channels come from the shared pool of
//! connections; a session that only listens to broadcasts holds none.
//!
//! When the broker goes away, a queue consumer is re-established on a new
//! channel once it is back, without the client doing anything: RabbitMQ
//! redelivers what the client had not acked, and acks for deliveries of the
//! dead channel are recognised by their generation and dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, PublisherConfirm};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::destination::Destination;
use super::fanout::{Binding, Hub, Subscriber};
use super::pool::Pool;
use super::properties::{properties_from_stomp, queue_arguments, short, stomp_headers_from_amqp};
use super::BridgeError;
use crate::session::{
    AckMode, Message, PublishRequest, ReplyTo, SubscribeRequest, GENERATION_SHIFT,
};

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
    /// loss) and consumes again on a new channel.
    Restarted {
        subscription: Arc<str>,
        generation: u64,
        channel: Channel,
        queue: String,
    },
    /// The consumer ended for good (queue deleted, access refused) while the
    /// broker is up.
    Lost {
        subscription: Arc<str>,
        reason: String,
    },
}

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
    /// by `x-queue-name`), bound to the exchange.
    Own {
        name: String,
        durable: bool,
        auto_delete: bool,
        args: Vec<(String, String)>,
        exchange: String,
        key: String,
    },
    /// A temporary reply queue: exclusive, server-named.
    Temp,
}

#[derive(Debug, Clone)]
struct ConsumeSpec {
    id: Arc<str>,
    plan: QueuePlan,
    /// basic.qos prefetch; 0 for none.
    prefetch: u16,
}

#[derive(Debug)]
struct OwnConsumer {
    channel: Channel,
    generation: u64,
    ack: AckMode,
    task: JoinHandle<()>,
}

/// Per-session AMQP state.
#[derive(Debug)]
pub struct SessionBroker {
    pool: Arc<Pool>,
    hub: Arc<Hub>,
    key: u64,
    publisher: Option<Channel>,
    declared: HashSet<String>,
    own: HashMap<String, OwnConsumer>,
    fanout: HashMap<String, Binding>,
    /// `/temp-queue/<name>` name -> the broker's queue name.
    temp: HashMap<String, String>,
    /// Where this session's own consumers deliver; made with the first of
    /// them (a session that only listens to broadcasts has none, and an
    /// idle session should cost as little memory as possible).
    inbound: Option<(mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>)>,
}

impl SessionBroker {
    pub fn new(pool: Arc<Pool>, hub: Arc<Hub>, key: u64) -> SessionBroker {
        SessionBroker {
            pool,
            hub,
            key,
            publisher: None,
            declared: HashSet::new(),
            own: HashMap::new(),
            fanout: HashMap::new(),
            temp: HashMap::new(),
            inbound: None,
        }
    }

    /// The next message from this session's own consumers; pending forever
    /// while it has none.
    pub async fn next_inbound(&mut self) -> Inbound {
        match &mut self.inbound {
            Some((_, rx)) => match rx.recv().await {
                Some(item) => item,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Key of this session in the fan-out hub.
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
            let (exchange, routing_key) = req.destination.publish_target();
            let binding = Binding {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            };
            self.hub.subscribe(binding.clone(), subscriber).await?;
            self.fanout.insert(req.id.clone(), binding);
            crate::metrics::get().subscriptions.increment(1.0);
            return Ok(());
        }
        let plan = match &req.destination {
            Destination::Queue { name } => QueuePlan::Shared {
                name: name.clone(),
                args: req.queue_arguments.clone(),
            },
            Destination::AmqQueue { name } => QueuePlan::Existing { name: name.clone() },
            Destination::Topic { .. } | Destination::Exchange { .. } => {
                let (exchange, key) = req.destination.publish_target();
                QueuePlan::Own {
                    name: req
                        .queue_name
                        .clone()
                        .unwrap_or_else(|| format!("stomp-subscription-{}", req.id)),
                    durable: req.durable,
                    auto_delete: req.auto_delete,
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
        };
        self.start_consumer(spec, req.ack).await?;
        Ok(())
    }

    /// Opens the consumer and its forwarding task; returns the queue name.
    async fn start_consumer(
        &mut self,
        spec: ConsumeSpec,
        ack: AckMode,
    ) -> Result<String, BridgeError> {
        let (channel, consumer, queue) = open_consumer(&self.pool, &spec).await?;
        let id = spec.id.to_string();
        let task = tokio::spawn(run_consumer(
            Arc::clone(&self.pool),
            spec,
            consumer,
            self.inbound
                .get_or_insert_with(|| mpsc::channel(16))
                .0
                .clone(),
        ));
        self.own.insert(
            id,
            OwnConsumer {
                channel,
                generation: 0,
                ack,
                task,
            },
        );
        let metrics = crate::metrics::get();
        metrics.subscriptions.increment(1.0);
        metrics.amqp_consumers.increment(1.0);
        Ok(queue)
    }

    /// A consumer came back on a new channel (see [`Inbound::Restarted`]).
    pub fn restarted(
        &mut self,
        subscription: &str,
        generation: u64,
        channel: Channel,
        queue: String,
    ) {
        if let Some(own) = self.own.get_mut(subscription) {
            own.channel = channel;
            own.generation = generation;
        }
        if let Some(name) = subscription.strip_prefix("/temp-queue/") {
            self.temp.insert(name.to_owned(), queue);
        }
    }

    /// Cancels a subscription; unacked messages of a queue subscription go
    /// back to the queue.
    pub async fn unsubscribe(&mut self, id: &str) {
        let metrics = crate::metrics::get();
        if let Some(binding) = self.fanout.remove(id) {
            self.hub.unsubscribe(&binding, self.key, id);
            metrics.subscriptions.decrement(1.0);
        }
        if let Some(own) = self.own.remove(id) {
            metrics.subscriptions.decrement(1.0);
            metrics.amqp_consumers.decrement(1.0);
            own.task.abort();
            let _ = own.channel.close(200, "unsubscribed".into()).await;
        }
    }

    /// Whether the gateway must ack a message of `subscription` itself once
    /// it is queued for the client (`ack:auto` queue subscriptions).
    pub fn acks_for_client(&self, subscription: &str) -> bool {
        self.own
            .get(subscription)
            .is_some_and(|o| o.ack == AckMode::Auto)
    }

    /// basic.ack of `tag` (with its generation, see [`Inbound::Delivery`]).
    /// Acks for deliveries of a lost channel are dropped: the broker
    /// redelivers those messages on the new one.
    pub async fn ack(
        &self,
        subscription: &str,
        tag: u64,
        multiple: bool,
    ) -> Result<(), BridgeError> {
        if let Some((channel, tag)) = self.live_tag(subscription, tag) {
            channel.basic_ack(tag, BasicAckOptions { multiple }).await?;
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
        if let Some((channel, tag)) = self.live_tag(subscription, tag) {
            channel
                .basic_nack(tag, BasicNackOptions { multiple, requeue })
                .await?;
        }
        Ok(())
    }

    /// The channel and broker tag for `tag`, unless it belongs to a channel
    /// that is gone.
    fn live_tag(&self, subscription: &str, tag: u64) -> Option<(&Channel, u64)> {
        let own = self.own.get(subscription)?;
        let live = tag >> GENERATION_SHIFT == own.generation && own.channel.status().connected();
        live.then_some((&own.channel, tag & ((1 << GENERATION_SHIFT) - 1)))
    }

    /// Publishes; the returned confirm resolves when the broker took it.
    pub async fn publish(&mut self, req: &PublishRequest) -> Result<PublisherConfirm, BridgeError> {
        let channel = self.publisher().await?;
        if let Destination::Queue { name } = &req.destination {
            if !self.declared.contains(name) {
                declare_shared_queue(&channel, name, &[]).await?;
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
        let confirm = channel
            .basic_publish(
                short("exchange name", exchange)?,
                short("routing key", routing_key)?,
                BasicPublishOptions::default(),
                &req.body,
                props,
            )
            .await?;
        Ok(confirm)
    }

    async fn publisher(&mut self) -> Result<Channel, BridgeError> {
        if let Some(ch) = &self.publisher {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let channel = self.pool.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.publisher = Some(channel.clone());
        Ok(channel)
    }

    /// The broker's name of temp queue `name`, declared and consumed on first use.
    async fn temp_queue(&mut self, name: &str) -> Result<String, BridgeError> {
        if let Some(queue) = self.temp.get(name) {
            return Ok(queue.clone());
        }
        let spec = ConsumeSpec {
            id: Arc::from(format!("/temp-queue/{name}").as_str()),
            plan: QueuePlan::Temp,
            prefetch: 0,
        };
        let queue = self.start_consumer(spec, AckMode::Auto).await?;
        self.temp.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }

    /// Releases everything; unacked queue messages are requeued by the broker.
    pub async fn close(&mut self) {
        let metrics = crate::metrics::get();
        metrics
            .subscriptions
            .decrement((self.fanout.len() + self.own.len()) as f64);
        metrics.amqp_consumers.decrement(self.own.len() as f64);
        for (id, binding) in self.fanout.drain() {
            self.hub.unsubscribe(&binding, self.key, &id);
        }
        for (_, own) in self.own.drain() {
            own.task.abort();
            let _ = own.channel.close(200, "session closed".into()).await;
        }
        if let Some(ch) = self.publisher.take() {
            let _ = ch.close(200, "session closed".into()).await;
        }
    }
}

async fn declare_shared_queue(
    channel: &Channel,
    name: &str,
    args: &[(String, String)],
) -> Result<(), BridgeError> {
    channel
        .queue_declare(
            short("queue name", name)?,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(args)?,
        )
        .await?;
    Ok(())
}

/// Opens a channel, (re)declares the queue as planned and consumes it.
async fn open_consumer(
    pool: &Pool,
    spec: &ConsumeSpec,
) -> Result<(Channel, lapin::Consumer, String), BridgeError> {
    let channel = pool.channel().await?;
    match declare_and_consume(&channel, spec).await {
        Ok((consumer, queue)) => Ok((channel, consumer, queue)),
        Err(error) => {
            let _ = channel.close(200, "subscribe failed".into()).await;
            Err(error)
        }
    }
}

async fn declare_and_consume(
    channel: &Channel,
    spec: &ConsumeSpec,
) -> Result<(lapin::Consumer, String), BridgeError> {
    if spec.prefetch > 0 {
        channel
            .basic_qos(spec.prefetch, BasicQosOptions::default())
            .await?;
    }
    let queue = match &spec.plan {
        QueuePlan::Shared { name, args } => {
            declare_shared_queue(channel, name, args).await?;
            name.clone()
        }
        QueuePlan::Existing { name } => name.clone(),
        QueuePlan::Own {
            name,
            durable,
            auto_delete,
            args,
            exchange,
            key,
        } => {
            channel
                .queue_declare(
                    short("queue name", name)?,
                    QueueDeclareOptions {
                        durable: *durable,
                        auto_delete: *auto_delete,
                        ..QueueDeclareOptions::default()
                    },
                    queue_arguments(args)?,
                )
                .await?;
            channel
                .queue_bind(
                    short("queue name", name)?,
                    short("exchange name", exchange)?,
                    short("routing key", key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            name.clone()
        }
        QueuePlan::Temp => super::fanout::declare_private_queue(channel).await?,
    };
    let consumer = channel
        .basic_consume(
            short("queue name", &queue)?,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((consumer, queue))
}

/// Forwards a consumer's deliveries to the session, and re-establishes the
/// consumer on a new channel when it is lost while the broker is away.
async fn run_consumer(
    pool: Arc<Pool>,
    spec: ConsumeSpec,
    mut consumer: lapin::Consumer,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut generation = 0u64;
    loop {
        let reason = loop {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let headers = stomp_headers_from_amqp(
                        delivery.exchange.as_str(),
                        delivery.routing_key.as_str(),
                        delivery.redelivered,
                        &delivery.properties,
                    );
                    let item = Inbound::Delivery {
                        subscription: Arc::clone(&spec.id),
                        tag: (generation << GENERATION_SHIFT) | delivery.delivery_tag,
                        message: Message {
                            headers,
                            body: bytes::Bytes::from(delivery.data),
                        },
                    };
                    if inbound.send(item).await.is_err() {
                        return;
                    }
                }
                Some(Err(error)) => break error.to_string(),
                None => break "consumer cancelled by the broker".to_owned(),
            }
        };
        tracing::debug!(subscription = %spec.id, %reason, "queue consumer lost");
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            match open_consumer(&pool, &spec).await {
                Ok((channel, next, queue)) => {
                    generation += 1;
                    consumer = next;
                    let restarted = Inbound::Restarted {
                        subscription: Arc::clone(&spec.id),
                        generation,
                        channel,
                        queue,
                    };
                    if inbound.send(restarted).await.is_err() {
                        return;
                    }
                    break;
                }
                // The broker is away: keep trying until it is back.
                Err(BridgeError::Unavailable) => continue,
                Err(_) if !pool.is_ready() => continue,
                Err(error) => {
                    let lost = Inbound::Lost {
                        subscription: Arc::clone(&spec.id),
                        reason: format!("{reason}; re-subscribing failed: {error}"),
                    };
                    let _ = inbound.send(lost).await;
                    return;
                }
            }
        }
    }
}
