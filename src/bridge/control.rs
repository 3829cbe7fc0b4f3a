//! The replica's control queue: request/reply between gateway replicas over
//! RabbitMQ, addressed by key.
//!
//! Some state lives on one replica only (a SockJS session over HTTP is the
//! case that needs it): a load balancer without stickiness sends its
//! requests to any replica, and the one that gets a request must reach the
//! one that holds the state. Each replica keeps **one** exclusive,
//! auto-delete queue on **one** channel, whatever the number of keys, and
//! binds it to a direct exchange (declared by the gateway) once per key it
//! holds: bindings are the only thing that grows, as for topics in the
//! plane.
//!
//! - [`Control::call`] publishes a request with the key as routing key,
//!   `mandatory`, `reply_to` = this replica's queue and a correlation id; a
//!   `basic.return` (nobody holds the key) comes back through the publisher
//!   confirm and is [`CallError::NoHome`]. Replies (one or several: a
//!   stream) arrive on this replica's queue through the default exchange and
//!   are handed to the caller's [`Call`] by correlation id.
//! - Requests for keys this replica holds come out of the receiver returned
//!   by [`Control::start`]; the holder answers with [`Control::reply`],
//!   which reports a reply queue that is gone (the caller's replica died) as
//!   `Ok(false)`, so that the holder stops working for nobody.
//!
//! Everything is bounded: calls pending at once (`max_pending`; beyond,
//! [`CallError::Busy`]), bytes of replies held per call
//! (`max_reply_bytes`: the call is dropped beyond), size of a message
//! accepted from the queue (`max_message_bytes`), requests waiting for the
//! handler (beyond, the caller gets [`BUSY`] at once), every broker
//! operation (`timeout`). The payloads are opaque here: what they mean is
//! the caller's business (SockJS: `crate::transport::sockjs::forward`).
//!
//! After a lost connection the supervisor declares a new queue and binds
//! every key again; calls in flight on the old queue fail (their replies
//! would go to a queue that no longer exists).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::mpsc;

use super::plane::timed;
use super::pool::Pool;
use super::properties::short;
use super::{Backoff, BridgeError};

/// The message type of the answer "too many requests waiting here".
pub const BUSY: &str = "busy";

/// Sizes and bounds of the control queue.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The direct exchange the keys are bound to.
    pub exchange: String,
    /// Every broker operation, and the publisher confirm of a request.
    pub timeout: Duration,
    /// Calls of this replica waiting for replies at once.
    pub max_pending: usize,
    /// Requests received and waiting for (or being run by) the handler.
    pub max_incoming: usize,
    /// Bytes of replies one call may hold before its caller reads them.
    pub max_reply_bytes: usize,
    /// Largest message taken from the queue (request or reply).
    pub max_message_bytes: usize,
    /// Unacknowledged deliveries of the queue.
    pub prefetch: u16,
}

/// Why a [`Control::call`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nobody holds the key: the broker returned the request.
    #[error("no replica holds this key")]
    NoHome,
    /// `max_pending` calls are waiting.
    #[error("too many forwarded requests pending")]
    Busy,
    /// The control queue is not established (broker down, reconnecting).
    #[error("control queue unavailable")]
    Unavailable,
    /// The broker refused or did not confirm the request in time.
    #[error("forwarding failed: {0}")]
    Failed(String),
}

/// A message from the control queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The AMQP `type` property.
    pub kind: String,
    pub body: Bytes,
}

/// Where the answer to a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub queue: String,
    pub correlation_id: String,
}

/// A request for a key this replica holds.
#[derive(Debug)]
pub struct Incoming {
    pub key: String,
    pub message: Message,
    pub reply_to: ReplyTo,
    /// Counts the request under `max_incoming` until dropped; `None` for a
    /// message that expects no reply (see [`Control::tell`]), which costs
    /// the handler nothing to keep.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The replies to one call, in order; ends when the control queue was lost
/// or the call exceeded `max_reply_bytes`. Dropping it forgets the call.
#[derive(Debug)]
pub struct Call {
    pub correlation_id: String,
    replies: mpsc::UnboundedReceiver<Message>,
    control: Arc<Control>,
}

impl Call {
    /// The next reply; `None` when no more can come.
    pub async fn next(&mut self) -> Option<Message> {
        let message = self.replies.recv().await?;
        if let Some(pending) = self.control.calls().get_mut(&self.correlation_id) {
            pending.bytes = pending.bytes.saturating_sub(message.body.len());
        }
        Some(message)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.control.calls().remove(&self.correlation_id);
    }
}

#[derive(Debug)]
struct Pending {
    tx: mpsc::UnboundedSender<Message>,
    /// Bytes received and not yet read by the caller.
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Link {
    channel: Channel,
    queue: String,
}

/// The control queue of the replica; see the module docs.
#[derive(Debug)]
pub struct Control {
    pool: Arc<Pool>,
    config: ControlConfig,
    link: Mutex<Option<Link>>,
    /// Keys this replica holds (bound again after a reconnect).
    wanted: Mutex<HashSet<String>>,
    calls: Mutex<HashMap<String, Pending>>,
    incoming: mpsc::Sender<Incoming>,
    incoming_permits: Arc<tokio::sync::Semaphore>,
    /// Makes correlation ids unique across replicas and restarts.
    instance: u64,
    seq: AtomicU64,
    /// Woken when the link comes up.
    up: tokio::sync::Notify,
}

impl Control {
    /// Creates the control queue of this replica; its supervisor connects
    /// when the pool does. Requests for held keys come out of the receiver.
    pub fn start(
        pool: Arc<Pool>,
        config: ControlConfig,
    ) -> (Arc<Control>, mpsc::Receiver<Incoming>) {
        // Room for every request holding a permit, and as many messages
        // that expect no reply (beyond, those are dropped).
        let (tx, rx) = mpsc::channel(config.max_incoming.max(1).saturating_mul(2));
        let control = Arc::new(Control {
            pool,
            incoming_permits: Arc::new(tokio::sync::Semaphore::new(config.max_incoming.max(1))),
            config,
            link: Mutex::new(None),
            wanted: Mutex::new(HashSet::new()),
            calls: Mutex::new(HashMap::new()),
            incoming: tx,
            instance: rand::random(),
            seq: AtomicU64::new(0),
            up: tokio::sync::Notify::new(),
        });
        let supervisor = Arc::clone(&control);
        tokio::spawn(async move { supervisor.supervise().await });
        (control, rx)
    }

    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    fn calls(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn link(&self) -> Option<Link> {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|l| l.channel.status().connected())
    }

    /// The name of this replica's control queue, once established.
    pub fn queue(&self) -> Option<String> {
        self.link().map(|l| l.queue)
    }

    /// Calls waiting for replies now.
    pub fn pending(&self) -> usize {
        self.calls().len()
    }

    /// Waits (bounded) until the control queue is established.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let up = self.up.notified();
            if self.link().is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, up).await.is_err() {
                return self.link().is_some();
            }
        }
    }

    /// Binds `key` to this replica's queue; resolves once the broker has the
    /// binding (or at once while the queue is down: it is bound when the
    /// queue comes back).
    pub async fn bind(&self, key: &str) -> Result<(), BridgeError> {
        let routing_key = short("control key", key)?;
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned());
        let Some(link) = self.link() else {
            return Err(BridgeError::Unavailable);
        };
        timed(
            self.config.timeout,
            "binding a control key",
            link.channel.queue_bind(
                link.queue.as_str().into(),
                self.config.exchange.as_str().into(),
                routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Unbinds `key` (in the background).
    pub fn unbind(self: &Arc<Self>, key: &str) {
        let removed = self
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        let Some(link) = self.link().filter(|_| removed) else {
            return;
        };
        let Ok(routing_key) = short("control key", key) else {
            return;
        };
        let control = Arc::clone(self);
        tokio::spawn(async move {
            let unbound = timed(
                control.config.timeout,
                "unbinding a control key",
                link.channel.queue_unbind(
                    link.queue.as_str().into(),
                    control.config.exchange.as_str().into(),
                    routing_key,
                    FieldTable::default(),
                ),
            )
            .await;
            if let Err(error) = unbound {
                // A binding left over is harmless: its requests are
                // answered "unknown" by the handler, and it goes with the
                // queue.
                tracing::debug!(%error, "unbinding a control key failed");
            }
        });
    }

    /// Keys bound (wanted) now.
    pub fn keys(&self) -> usize {
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Sends a request to the replica holding `key`; its replies come
    /// through the returned [`Call`].
    pub async fn call(self: &Arc<Self>, key: &str, message: Message) -> Result<Call, CallError> {
        let routing_key =
            short("control key", key).map_err(|e| CallError::Failed(e.to_string()))?;
        let link = self.link().ok_or(CallError::Unavailable)?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let correlation_id = format!("{:016x}-{seq:x}", self.instance);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut calls = self.calls();
            if calls.len() >= self.config.max_pending {
                return Err(CallError::Busy);
            }
            calls.insert(correlation_id.clone(), Pending { tx, bytes: 0 });
        }
        // From here on, dropping `call` forgets the pending entry.
        let call = Call {
            correlation_id: correlation_id.clone(),
            replies: rx,
            control: Arc::clone(self),
        };
        let properties = BasicProperties::default()
            .with_type(message.kind.as_str().into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(link.queue.as_str().into());
        let returned = self
            .publish(
                &link,
                self.config.exchange.as_str(),
                routing_key.as_str(),
                &message.body,
                properties,
            )
            .await
            .map_err(|e| CallError::Failed(e.to_string()))?;
        if returned {
            return Err(CallError::NoHome);
        }
        Ok(call)
    }

    /// A message about an earlier call (an abort, say) for the holder of
    /// `key`, without waiting for any answer.
    pub async fn tell(&self, key: &str, correlation_id: &str, message: Message) {
        let Some(link) = self.link() else {
            return;
        };
        let properties = BasicProperties::default()
            .with_type(message.kind.as_str().into())
            .with_correlation_id(correlation_id.into());
        let exchange = self.config.exchange.clone();
        if let Err(error) = self
            .publish(&link, &exchange, key, &message.body, properties)
            .await
        {
            tracing::debug!(%error, "control message not sent");
        }
    }

    /// Answers a request. `Ok(false)`: the reply queue is gone (the caller's
    /// replica lost it), nobody will read more replies.
    pub async fn reply(&self, to: &ReplyTo, message: Message) -> Result<bool, BridgeError> {
        let link = self.link().ok_or(BridgeError::Unavailable)?;
        let properties = BasicProperties::default()
            .with_type(message.kind.as_str().into())
            .with_correlation_id(to.correlation_id.as_str().into());
        let returned = self
            .publish(&link, "", &to.queue, &message.body, properties)
            .await?;
        Ok(!returned)
    }

    /// A mandatory publish on the control channel (confirm mode); `true`
    /// when the broker returned it (no queue bound).
    async fn publish(
        &self,
        link: &Link,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<bool, BridgeError> {
        let exchange = short("exchange name", exchange)?;
        let routing_key = short("control key", routing_key)?;
        let confirm = timed(
            self.config.timeout,
            "control publish",
            link.channel.basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            ),
        )
        .await?;
        let confirmation = timed(self.config.timeout, "control publish confirm", confirm).await?;
        if !confirmation.is_ack() {
            return Err(BridgeError::Nacked);
        }
        Ok(confirmation.take_message().is_some())
    }

    async fn supervise(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            match self.establish().await {
                Ok((link, consumer)) => {
                    backoff.reset();
                    *self.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
                    self.up.notify_waiters();
                    tracing::info!(queue = %link.queue, "SockJS control queue up");
                    self.consume(&link, consumer).await;
                    tracing::warn!("control queue lost");
                    *self.link.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    // Replies to the old queue can no longer come.
                    self.calls().clear();
                }
                Err(BridgeError::Unavailable) => {}
                Err(error) => tracing::warn!(%error, "control queue setup failed"),
            }
            backoff.sleep().await;
        }
    }

    async fn establish(&self) -> Result<(Link, lapin::Consumer), BridgeError> {
        let conn = self.pool.connection(0).ok_or(BridgeError::Unavailable)?;
        let channel = timed(
            self.config.timeout,
            "opening the control channel",
            conn.create_channel(),
        )
        .await?;
        let setup = async {
            let t = self.config.timeout;
            timed(
                t,
                "confirm.select",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
            timed(
                t,
                "declaring the control exchange",
                channel.exchange_declare(
                    short("exchange name", &self.config.exchange)?,
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            let queue = timed(
                t,
                "declaring the control queue",
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
            .await?;
            let queue = queue.name().as_str().to_owned();
            let keys: Vec<String> = self
                .wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            for key in keys {
                timed(
                    t,
                    "binding a control key",
                    channel.queue_bind(
                        queue.as_str().into(),
                        self.config.exchange.as_str().into(),
                        short("control key", &key)?,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            }
            timed(
                t,
                "basic.qos",
                channel.basic_qos(self.config.prefetch, BasicQosOptions::default()),
            )
            .await?;
            let consumer = timed(
                t,
                "consuming the control queue",
                channel.basic_consume(
                    queue.as_str().into(),
                    "stompgate-control".into(),
                    BasicConsumeOptions {
                        exclusive: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok::<_, BridgeError>((queue, consumer))
        };
        match setup.await {
            Ok((queue, consumer)) => Ok((Link { channel, queue }, consumer)),
            Err(error) => {
                let _ = channel.close(200, "control setup failed".into()).await;
                Err(error)
            }
        }
    }

    /// Hands requests to the handler and replies to their calls until the
    /// consumer ends.
    async fn consume(&self, link: &Link, mut consumer: lapin::Consumer) {
        while let Some(next) = consumer.next().await {
            let delivery = match next {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(%error, "control consumer failed");
                    break;
                }
            };
            let _ = link
                .channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                .await;
            if delivery.data.len() > self.config.max_message_bytes {
                tracing::debug!(
                    len = delivery.data.len(),
                    "oversized control message dropped"
                );
                continue;
            }
            let properties = &delivery.properties;
            let (Some(correlation_id), kind) = (
                properties.correlation_id().as_ref().map(|c| c.to_string()),
                properties
                    .kind()
                    .as_ref()
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
            ) else {
                continue;
            };
            let message = Message {
                kind,
                body: Bytes::from(delivery.data),
            };
            if delivery.exchange.as_str().is_empty() {
                self.deliver_reply(&correlation_id, message);
            } else {
                let reply_to = ReplyTo {
                    queue: properties
                        .reply_to()
                        .as_ref()
                        .map(|q| q.to_string())
                        .unwrap_or_default(),
                    correlation_id,
                };
                self.deliver_request(delivery.routing_key.to_string(), message, reply_to)
                    .await;
            }
        }
        let _ = link.channel.close(200, "control queue lost".into()).await;
    }

    fn deliver_reply(&self, correlation_id: &str, message: Message) {
        let mut calls = self.calls();
        let Some(pending) = calls.get_mut(correlation_id) else {
            return;
        };
        pending.bytes += message.body.len();
        if pending.bytes > self.config.max_reply_bytes || pending.tx.send(message).is_err() {
            // The caller does not keep up (or left): drop the call, its
            // replies end.
            calls.remove(correlation_id);
        }
    }

    async fn deliver_request(&self, key: String, message: Message, reply_to: ReplyTo) {
        if reply_to.queue.is_empty() {
            // A message about an earlier request (an abort): no work of its
            // own, so no permit; dropped when the handler is that far behind.
            let _ = self.incoming.try_send(Incoming {
                key,
                message,
                reply_to,
                permit: None,
            });
            return;
        }
        let permit = Arc::clone(&self.incoming_permits).try_acquire_owned();
        let Ok(permit) = permit else {
            let busy = Message {
                kind: BUSY.to_owned(),
                body: Bytes::new(),
            };
            let _ = self.reply(&reply_to, busy).await;
            return;
        };
        let incoming = Incoming {
            key,
            message,
            reply_to,
            permit: Some(permit),
        };
        // Cannot be full for a request with a permit unless the handler is
        // flooded with messages without one; then the caller times out.
        let _ = self.incoming.try_send(incoming);
    }
}
