//! A small pool of AMQP connections, kept connected by a supervisor.
//!
//! A lapin connection costs an I/O loop and two large buffers, so the gateway
//! opens a few (`amqp.connections`) and spreads channels over them instead of
//! opening one per browser. When a connection is lost the supervisor
//! reconnects with the bridge's [`Backoff`] (capped, exponential, with
//! jitter); the gateway reports not ready (`/readyz`) until every connection
//! is back.
//!
//! With a cluster (`amqp.urls`), connection `i` starts on node `i mod n` and
//! moves to the next node whenever its node is lost or refuses it, so a dead
//! node's connections come back on the others.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Notify;

use super::{Backoff, BridgeError};

/// The AMQP connections of one gateway process.
#[derive(Debug)]
pub struct Pool {
    urls: Vec<String>,
    slots: Vec<RwLock<Option<Arc<Connection>>>>,
    next: AtomicUsize,
    /// Woken whenever a connection comes up, so that waiters can retry.
    connected: Notify,
    /// Topic exchanges the gateway itself needs (the `/user/` exchange),
    /// declared durable on every connection.
    exchanges: Vec<String>,
    /// Sets the connection gauge (the default vhost's pool only).
    report: AtomicBool,
    /// Longest wait between reconnect attempts, in ms.
    reconnect_max_ms: AtomicU64,
}

impl Pool {
    pub fn new(urls: Vec<String>, connections: usize, exchanges: Vec<String>) -> Arc<Pool> {
        Arc::new(Pool {
            urls,
            slots: (0..connections.max(1)).map(|_| RwLock::new(None)).collect(),
            next: AtomicUsize::new(0),
            connected: Notify::new(),
            exchanges,
            report: AtomicBool::new(true),
            reconnect_max_ms: AtomicU64::new(250),
        })
    }

    /// Longest wait between two reconnect attempts (`amqp.reconnect_max_ms`;
    /// set before [`Pool::start`]). A refused TCP connect costs the broker
    /// nothing, and this wait is most of the time a restarted broker stays
    /// unused: the bridge's general 2 s cap made it 3.6 s.
    pub fn set_reconnect_max(&self, max: Duration) {
        self.reconnect_max_ms
            .store(max.as_millis() as u64, Ordering::Relaxed);
    }

    /// Waits (at most `timeout`) until the connection `hint` prefers (slot
    /// `hint % n`, as [`Pool::connection`] tries first) is up: the plane's
    /// shards, which pass their index, then spread over the connections
    /// (and a cluster's nodes) again after an outage instead of all taking
    /// the first connection back.
    pub async fn wait_connection(&self, hint: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let wake = self.connected.notified();
            let up = self.slots[hint % self.slots.len()]
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| c.status().connected());
            if up || tokio::time::timeout_at(deadline, wake).await.is_err() {
                return;
            }
        }
    }

    /// Whether this pool sets `stompgate_amqp_connections_up` and counts
    /// reconnects (on by default).
    pub fn report_metrics(&self, on: bool) {
        self.report.store(on, Ordering::Relaxed);
    }

    /// Starts one supervisor task per connection.
    pub fn start(self: &Arc<Self>) {
        for index in 0..self.slots.len() {
            let pool = Arc::clone(self);
            tokio::spawn(async move { pool.supervise(index).await });
        }
    }

    /// True while every connection of the pool is up.
    pub fn is_ready(&self) -> bool {
        self.slots.iter().all(|slot| {
            slot.read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| c.status().connected())
        })
    }

    /// True while RabbitMQ blocks publishing on one of the connections
    /// (`connection.blocked`: a memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| c.status().blocked())
        })
    }

    /// Waits (bounded by `timeout`) until the pool is ready.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return true;
            }
            let wake = self.connected.notified();
            if tokio::time::timeout_at(deadline, wake).await.is_err() {
                return self.is_ready();
            }
        }
    }

    /// A live connection, preferring slot `hint` (mod the pool size).
    pub fn connection(&self, hint: usize) -> Option<Arc<Connection>> {
        let n = self.slots.len();
        (0..n).find_map(|i| {
            self.slots[(hint + i) % n]
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .filter(|c| c.status().connected())
        })
    }

    /// Opens a channel on the next live connection.
    pub async fn channel(&self) -> Result<Channel, BridgeError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        match self.connection(start) {
            Some(conn) => Ok(conn.create_channel().await?),
            None => Err(BridgeError::Unavailable),
        }
    }

    fn publish_state(&self) {
        if !self.report.load(Ordering::Relaxed) {
            return;
        }
        let up = self
            .slots
            .iter()
            .filter(|slot| {
                slot.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .is_some_and(|c| c.status().connected())
            })
            .count();
        crate::metrics::get().amqp_connections_up.set(up as f64);
    }

    async fn declare_exchanges(&self, conn: &Connection) -> Result<(), BridgeError> {
        if self.exchanges.is_empty() {
            return Ok(());
        }
        let channel = conn.create_channel().await?;
        for name in &self.exchanges {
            channel
                .exchange_declare(
                    super::properties::short("exchange name", name)?,
                    lapin::ExchangeKind::Topic,
                    lapin::options::ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await?;
        }
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    async fn supervise(&self, index: usize) {
        let mut backoff = Backoff::with_max(Duration::from_millis(
            self.reconnect_max_ms.load(Ordering::Relaxed),
        ));
        let mut first = true;
        // Which node this connection tries next (cluster: one after another).
        let mut node = index;
        loop {
            let props = ConnectionProperties::default()
                .with_connection_name(format!("stompgate-{}-{index}", std::process::id()).into());
            let url = &self.urls[node % self.urls.len().max(1)];
            node += 1;
            match Connection::connect(url, props).await {
                Ok(conn) => {
                    tracing::info!(connection = index, "AMQP connection up");
                    if let Err(error) = self.declare_exchanges(&conn).await {
                        tracing::warn!(%error, "declaring the gateway's exchanges failed");
                    }
                    let conn = Arc::new(conn);
                    *self.slots[index]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&conn));
                    self.connected.notify_waiters();
                    self.publish_state();
                    if !first {
                        crate::metrics::get().amqp_reconnects.increment(1);
                    }
                    first = false;
                    backoff.reset();
                    // Stay on this node while it is up.
                    node -= 1;
                    while conn.status().connected() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    tracing::warn!(connection = index, "AMQP connection lost");
                    node += 1;
                    *self.slots[index]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                    self.publish_state();
                }
                Err(error) => {
                    tracing::warn!(connection = index, %error, "AMQP connect failed");
                }
            }
            backoff.sleep().await;
        }
    }
}
