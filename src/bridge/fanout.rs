//! Fan-out of broadcast destinations inside the gateway.
//!
//! Every distinct binding (exchange, routing key) that local clients
//! subscribe to gets ONE exclusive, auto-delete AMQP queue per gateway
//! process, whatever the number of subscribers: broker cost grows with the
//! number of distinct topics, not with the number of browsers. Each message
//! from that queue is mapped to STOMP headers and encoded once into a
//! [`SharedMessage`]; every local subscriber receives a reference to it plus
//! its own pre-encoded `subscription` prefix, so nothing per recipient is
//! allocated on this path.
//!
//! If the queue's consumer ends (connection lost, queue deleted), the topic
//! task declares, binds and consumes again once the broker is back, without
//! the clients doing anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use super::properties::{short, stomp_headers_from_amqp};
use super::BridgeError;
use crate::session::FANOUT_PREFIX;
use crate::stomp::{encode_header, Escaping};
use crate::transport::outbound::{ClientLink, Outbound};

/// An exchange and binding key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    pub exchange: String,
    pub routing_key: String,
}

/// One local subscription to a broadcast binding.
#[derive(Debug)]
pub struct Subscriber {
    /// (session key, subscription id): unique within the process.
    pub session: u64,
    pub id: Arc<str>,
    /// `MESSAGE\nsubscription:<id>\n`, escaped for the session's version.
    pub prefix: Bytes,
    pub escaping: Escaping,
    /// STOMP 1.2 with a client ack mode: MESSAGE carries an `ack` header.
    pub ack_header: bool,
    pub link: Arc<ClientLink>,
}

impl Subscriber {
    pub fn new(
        session: u64,
        id: &str,
        escaping: Escaping,
        ack_header: bool,
        link: Arc<ClientLink>,
    ) -> Subscriber {
        let mut prefix = BytesMut::with_capacity(24 + id.len());
        prefix.put_slice(b"MESSAGE\n");
        encode_header("subscription", id, escaping, &mut prefix);
        Subscriber {
            session,
            id: Arc::from(id),
            prefix: prefix.freeze(),
            escaping,
            ack_header,
            link,
        }
    }
}

/// A broadcast message encoded once for all its recipients.
#[derive(Debug)]
pub struct SharedMessage {
    /// `ack:<message-id>\n`, for subscribers that need it.
    pub ack_line: Bytes,
    /// The rest of the frame (headers from `message-id` on, blank line, body,
    /// NUL), per escaping: index 0 for none (1.0), 1 for 1.1, 2 for 1.2.
    /// The three are the same buffer when no header needs escaping.
    tails: [Bytes; 3],
    /// The body is not UTF-8: the frame must go in a binary WebSocket message.
    pub binary: bool,
}

impl SharedMessage {
    /// Encodes `headers` and `body` under message id `B_<seq>`.
    pub fn encode(seq: u64, headers: &[(String, String)], body: &Bytes) -> SharedMessage {
        let id = format!("{FANOUT_PREFIX}{seq}");
        let needs_escaping = headers
            .iter()
            .any(|(n, v)| has_escapable(n) || has_escapable(v));
        let encode = |escaping: Escaping| {
            let size = 32
                + headers
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 2)
                    .sum::<usize>();
            let mut buf = BytesMut::with_capacity(size + body.len());
            encode_header("message-id", &id, escaping, &mut buf);
            for (name, value) in headers {
                encode_header(name, value, escaping, &mut buf);
            }
            if !body.is_empty() {
                encode_header(
                    "content-length",
                    &body.len().to_string(),
                    escaping,
                    &mut buf,
                );
            }
            buf.put_u8(b'\n');
            buf.put_slice(body);
            buf.put_u8(0);
            buf.freeze()
        };
        let v12 = encode(Escaping::V12);
        let tails = if needs_escaping {
            [encode(Escaping::None), encode(Escaping::V11), v12]
        } else {
            [v12.clone(), v12.clone(), v12]
        };
        let mut ack_line = BytesMut::with_capacity(id.len() + 5);
        encode_header("ack", &id, Escaping::V12, &mut ack_line);
        SharedMessage {
            ack_line: ack_line.freeze(),
            tails,
            binary: std::str::from_utf8(body).is_err(),
        }
    }

    /// The encoded tail for a session using `escaping`.
    pub fn tail(&self, escaping: Escaping) -> &Bytes {
        match escaping {
            Escaping::None => &self.tails[0],
            Escaping::V11 => &self.tails[1],
            Escaping::V12 => &self.tails[2],
        }
    }
}

fn has_escapable(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b':'))
}

/// The shared queue of one binding and its local subscribers.
#[derive(Debug)]
struct Topic {
    binding: Binding,
    subscribers: RwLock<Vec<Subscriber>>,
    /// Outcome of the first declaration; later ones are the task's business.
    started: OnceCell<Result<(), String>>,
    stop: CancellationToken,
}

/// All broadcast bindings of this gateway process.
#[derive(Debug)]
pub struct Hub {
    pool: Arc<Pool>,
    topics: Mutex<HashMap<Binding, Arc<Topic>>>,
    seq: AtomicU64,
}

impl Hub {
    pub fn new(pool: Arc<Pool>) -> Arc<Hub> {
        Arc::new(Hub {
            pool,
            topics: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        })
    }

    /// Number of bindings with a shared queue (for tests and metrics).
    pub fn bindings(&self) -> usize {
        self.topics.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Adds a subscriber to `binding`, declaring its queue if it is the first.
    pub async fn subscribe(
        self: &Arc<Self>,
        binding: Binding,
        subscriber: Subscriber,
    ) -> Result<(), BridgeError> {
        let (session, id) = (subscriber.session, Arc::clone(&subscriber.id));
        let topic = {
            let mut topics = self.topics.lock().map_err(|_| BridgeError::Poisoned)?;
            let topic = topics
                .entry(binding.clone())
                .or_insert_with(|| {
                    Arc::new(Topic {
                        binding: binding.clone(),
                        subscribers: RwLock::new(Vec::new()),
                        started: OnceCell::new(),
                        stop: CancellationToken::new(),
                    })
                })
                .clone();
            topic
                .subscribers
                .write()
                .map_err(|_| BridgeError::Poisoned)?
                .push(subscriber);
            topic
        };
        let started = topic
            .started
            .get_or_init(|| async {
                let hub = Arc::clone(self);
                let topic = Arc::clone(&topic);
                hub.start(topic).await.map_err(|e| e.to_string())
            })
            .await;
        match started {
            Ok(()) => Ok(()),
            Err(message) => {
                let message = message.clone();
                self.unsubscribe(&binding, session, &id);
                // Forget the failed topic so that a later subscribe retries.
                if let Ok(mut topics) = self.topics.lock() {
                    if topics.get(&binding).is_some_and(|t| Arc::ptr_eq(t, &topic)) {
                        topics.remove(&binding);
                        topic.stop.cancel();
                    }
                }
                Err(BridgeError::Refused(message))
            }
        }
    }

    /// Removes a subscriber; the last one out deletes the shared queue.
    pub fn unsubscribe(&self, binding: &Binding, session: u64, id: &str) {
        let Ok(mut topics) = self.topics.lock() else {
            return;
        };
        let Some(topic) = topics.get(binding) else {
            return;
        };
        let empty = match topic.subscribers.write() {
            Ok(mut subs) => {
                subs.retain(|s| !(s.session == session && &*s.id == id));
                subs.is_empty()
            }
            Err(_) => false,
        };
        if empty {
            if let Some(topic) = topics.remove(binding) {
                topic.stop.cancel();
            }
            crate::metrics::get()
                .amqp_broadcast_queues
                .set(topics.len() as f64);
        }
    }

    /// Declares, binds and consumes the topic's queue, then hands the
    /// consumer to a task that fans out and re-establishes it when lost.
    async fn start(self: Arc<Self>, topic: Arc<Topic>) -> Result<(), BridgeError> {
        let (channel, consumer) = establish(&self.pool, &topic.binding).await?;
        crate::metrics::get()
            .amqp_broadcast_queues
            .set(self.bindings() as f64);
        tokio::spawn(async move { self.run(topic, channel, consumer).await });
        Ok(())
    }

    async fn run(
        self: Arc<Self>,
        topic: Arc<Topic>,
        mut channel: Channel,
        mut consumer: lapin::Consumer,
    ) {
        loop {
            loop {
                let next = tokio::select! {
                    _ = topic.stop.cancelled() => {
                        // Closing the channel cancels the consumer, and the
                        // auto-delete queue goes with it.
                        let _ = channel.close(200, "unsubscribed".into()).await;
                        return;
                    }
                    next = consumer.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => self.fan_out(&topic, delivery),
                    Some(Err(error)) => {
                        tracing::warn!(?topic.binding, %error, "broadcast consumer failed");
                        break;
                    }
                    None => break,
                }
            }
            // Lost: re-establish with capped backoff until stopped.
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = topic.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match establish(&self.pool, &topic.binding).await {
                    Ok((ch, co)) => {
                        tracing::info!(?topic.binding, "broadcast queue re-established");
                        channel = ch;
                        consumer = co;
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(?topic.binding, %error, "re-establishing broadcast queue");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    fn fan_out(&self, topic: &Topic, delivery: lapin::message::Delivery) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let headers = stomp_headers_from_amqp(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            delivery.redelivered,
            &delivery.properties,
        );
        let body = Bytes::from(delivery.data);
        let message = Arc::new(SharedMessage::encode(seq, &headers, &body));
        let Ok(subscribers) = topic.subscribers.read() else {
            return;
        };
        let metrics = crate::metrics::get();
        metrics
            .delivered_broadcast
            .increment(subscribers.len() as u64);
        metrics.frames_out(crate::stomp::Command::Message, subscribers.len() as u64);
        for s in subscribers.iter() {
            s.link.offer(Outbound::Broadcast {
                prefix: s.prefix.clone(),
                ack_header: s.ack_header,
                escaping: s.escaping,
                message: Arc::clone(&message),
            });
        }
    }
}

/// Declares an exclusive, auto-delete queue with a broker-made name (a
/// broadcast binding's shared queue, or a session's temporary reply queue);
/// it goes away with its consumer or its connection.
pub(super) async fn declare_private_queue(channel: &Channel) -> Result<String, BridgeError> {
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
    Ok(queue.name().as_str().to_owned())
}

async fn establish(
    pool: &Pool,
    binding: &Binding,
) -> Result<(Channel, lapin::Consumer), BridgeError> {
    let channel = pool.channel().await?;
    let queue = declare_private_queue(&channel).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            short("exchange name", &binding.exchange)?,
            short("routing key", &binding.routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}
