//! The broker resources of one STOMP session: its publishing channel (with
//! publisher confirms), the consumers of its queue subscriptions, its
//! temporary reply queues, and its places in the fan-out hub.
//!
//! Queue subscriptions (`/queue`, `/amq/queue`, durable topics) each get a
//! channel of their own, so that acks, nacks, prefetch and redelivery are the
//! broker's: closing the channel (UNSUBSCRIBE, disconnect) requeues whatever
//! the client had not acked. Channels come from the shared pool of
//! connections; a session that only listens to broadcasts holds none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

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
use crate::session::{AckMode, Message, PublishRequest, ReplyTo, SubscribeRequest};

/// A message for the session from one of its own consumers.
#[derive(Debug)]
pub enum Inbound {
    Delivery {
        subscription: Arc<str>,
        tag: u64,
        message: Message,
    },
    /// The consumer of a subscription ended (queue deleted, channel closed by
    /// the broker, connection lost).
    Lost {
        subscription: Arc<str>,
        reason: String,
    },
}

#[derive(Debug)]
struct OwnConsumer {
    channel: Channel,
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
    inbound: mpsc::Sender<Inbound>,
}

impl SessionBroker {
    pub fn new(
        pool: Arc<Pool>,
        hub: Arc<Hub>,
        key: u64,
        inbound: mpsc::Sender<Inbound>,
    ) -> SessionBroker {
        SessionBroker {
            pool,
            hub,
            key,
            publisher: None,
            declared: HashSet::new(),
            own: HashMap::new(),
            fanout: HashMap::new(),
            temp: HashMap::new(),
            inbound,
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
        let channel = self.pool.channel().await?;
        let result = self.consume_own(&channel, req).await;
        if result.is_err() {
            let _ = channel.close(200, "subscribe failed".into()).await;
        }
        result
    }

    async fn consume_own(
        &mut self,
        channel: &Channel,
        req: &SubscribeRequest,
    ) -> Result<(), BridgeError> {
        channel
            .basic_qos(req.prefetch, BasicQosOptions::default())
            .await?;
        let queue = match &req.destination {
            Destination::Queue { name } => {
                declare_shared_queue(channel, name, &req.queue_arguments).await?;
                name.clone()
            }
            Destination::AmqQueue { name } => name.clone(),
            Destination::Topic { .. } | Destination::Exchange { .. } => {
                // A queue of the subscription's own: durable and named, or
                // named by x-queue-name.
                let name = req
                    .queue_name
                    .clone()
                    .unwrap_or_else(|| format!("stomp-subscription-{}", req.id));
                channel
                    .queue_declare(
                        short("queue name", &name)?,
                        QueueDeclareOptions {
                            durable: req.durable,
                            auto_delete: req.auto_delete,
                            ..QueueDeclareOptions::default()
                        },
                        queue_arguments(&req.queue_arguments)?,
                    )
                    .await?;
                let (exchange, key) = req.destination.publish_target();
                channel
                    .queue_bind(
                        short("queue name", &name)?,
                        short("exchange name", exchange)?,
                        short("routing key", key)?,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                name
            }
            Destination::TempQueue { .. } | Destination::ReplyQueue { .. } => {
                return Err(BridgeError::Invalid(
                    "temporary queues cannot be subscribed to".into(),
                ))
            }
        };
        self.start_consumer(channel.clone(), &queue, &req.id, req.ack)
            .await
    }

    async fn start_consumer(
        &mut self,
        channel: Channel,
        queue: &str,
        id: &str,
        ack: AckMode,
    ) -> Result<(), BridgeError> {
        let consumer = channel
            .basic_consume(
                short("queue name", queue)?,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let subscription: Arc<str> = Arc::from(id);
        let inbound = self.inbound.clone();
        let task = tokio::spawn(forward(consumer, subscription, inbound));
        self.own
            .insert(id.to_owned(), OwnConsumer { channel, ack, task });
        let metrics = crate::metrics::get();
        metrics.subscriptions.increment(1.0);
        metrics.amqp_consumers.increment(1.0);
        Ok(())
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

    pub async fn ack(
        &self,
        subscription: &str,
        tag: u64,
        multiple: bool,
    ) -> Result<(), BridgeError> {
        if let Some(own) = self.own.get(subscription) {
            own.channel
                .basic_ack(tag, BasicAckOptions { multiple })
                .await?;
        }
        Ok(())
    }

    pub async fn nack(
        &self,
        subscription: &str,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), BridgeError> {
        if let Some(own) = self.own.get(subscription) {
            own.channel
                .basic_nack(tag, BasicNackOptions { multiple, requeue })
                .await?;
        }
        Ok(())
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
        let channel = self.pool.channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue_name = queue.name().as_str().to_owned();
        let id = format!("/temp-queue/{name}");
        self.start_consumer(channel, &queue_name, &id, AckMode::Auto)
            .await?;
        self.temp.insert(name.to_owned(), queue_name.clone());
        Ok(queue_name)
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

async fn forward(
    mut consumer: lapin::Consumer,
    subscription: Arc<str>,
    inbound: mpsc::Sender<Inbound>,
) {
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
                    subscription: Arc::clone(&subscription),
                    tag: delivery.delivery_tag,
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
    let _ = inbound
        .send(Inbound::Lost {
            subscription,
            reason,
        })
        .await;
}
