//! The bounded queue of what is waiting to be written to one client.
//!
//! Broadcast messages arrive here from the fan-out task, which must never
//! wait for a slow browser: it offers each message and, when the queue is
//! full, the configured policy decides (drop the message for that client, or
//! cut the client off). Frames of the session itself (replies, messages of
//! its own queue subscriptions) wait for room instead, which pushes back on
//! the broker through the subscription's prefetch.
//!
//! A broadcast entry is two shared buffers: the subscription's prefix
//! (`MESSAGE` and `subscription:`) and the message's encoded headers and
//! body, shared by every recipient. The writer joins them when it writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::bridge::fanout::SharedMessage;
use crate::config::SlowClientPolicy;
use crate::stomp::Escaping;

/// One entry of the queue.
#[derive(Debug)]
pub enum Outbound {
    /// A complete encoded frame; `binary` when its body is not UTF-8.
    Frame { bytes: Bytes, binary: bool },
    /// A fanned-out message for one subscription.
    Broadcast {
        prefix: Bytes,
        ack_header: bool,
        escaping: Escaping,
        message: Arc<SharedMessage>,
    },
    /// Heart-beat interval negotiated (the writer sends EOLs when idle).
    SetHeartbeat(Option<std::time::Duration>),
    /// Write what is queued, then close the WebSocket.
    Close,
}

/// The sending side of a client's queue, shared by the session and the
/// fan-out subscriptions of that client.
#[derive(Debug)]
pub struct ClientLink {
    tx: mpsc::Sender<Outbound>,
    policy: SlowClientPolicy,
    overflowed: AtomicBool,
    overflow: Notify,
    dropped: AtomicU64,
}

impl ClientLink {
    /// A link and the receiving end for the writer, holding `capacity` entries.
    pub fn new(
        capacity: usize,
        policy: SlowClientPolicy,
    ) -> (Arc<ClientLink>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Arc::new(ClientLink {
                tx,
                policy,
                overflowed: AtomicBool::new(false),
                overflow: Notify::new(),
                dropped: AtomicU64::new(0),
            }),
            rx,
        )
    }

    /// Queues an entry, waiting for room. `false` when the writer is gone.
    pub async fn send(&self, item: Outbound) -> bool {
        self.tx.send(item).await.is_ok()
    }

    /// Offers a broadcast entry without waiting; applies the slow-client
    /// policy when the queue is full.
    pub fn offer(&self, item: Outbound) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => match self.policy {
                SlowClientPolicy::Drop => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::get().slow_client_dropped.increment(1);
                }
                SlowClientPolicy::Disconnect => {
                    if !self.overflowed.swap(true, Ordering::AcqRel) {
                        self.overflow.notify_one();
                    }
                }
            },
        }
    }

    /// Resolves once the queue overflowed under the `disconnect` policy.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.overflow.notified();
            if self.overflowed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Broadcast messages dropped for this client under the `drop` policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
