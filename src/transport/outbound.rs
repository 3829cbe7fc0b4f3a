//! The bounded queue of what is waiting to be written to one client.
//!
//! Broadcast messages arrive here from the fan-out task, which must never
//! wait for a slow browser: it offers each message and, when the queue is
//! full, the configured policy decides (drop the message for that client, or
//! cut the client off). Frames of the session itself (replies, messages of
//! its own queue subscriptions) wait for room instead, which pushes back on
//! the broker through the subscription's prefetch.
//!
//! A broadcast entry is a [`Delivery`]: the subscription's prefix
//! (`MESSAGE` and `subscription:`) and the message's encoded headers and
//! body, shared by every recipient. The writer joins them when it writes.
//! Fan-out reaches this queue only through [`Recipient`], the bridge's
//! narrow seam, which [`ClientLink`] implements.
//!
//! The queue is a `VecDeque` behind a mutex rather than a channel: an idle
//! client's queue holds no allocation at all (a channel preallocates a block
//! of slots per client), and the writer takes everything queued in one go.
//!
//! A transport that can write without waiting (the WebSocket over plain
//! TCP) gives the link a [`Wire`]: then whoever queued something (the
//! fan-out at the end of a burst, the session for its own frames) writes
//! it to the socket at once, under the queue's lock, and the transport's
//! writer task only takes over when the socket is full. That saves a task
//! wake-up and a copy per burst and recipient, which is most of what a
//! delivery costs beyond the kernel's own work.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::bridge::fanout::{Batch, Delivery, Offered, Recipient};
use crate::config::SlowClientPolicy;

/// One entry of the queue.
#[derive(Debug)]
pub enum Outbound {
    /// A complete encoded frame; `binary` when its body is not UTF-8.
    Frame { bytes: Bytes, binary: bool },
    /// A fanned-out message for one subscription.
    Broadcast(Delivery),
    /// Heart-beat interval negotiated (the writer sends EOLs when idle).
    SetHeartbeat(Option<std::time::Duration>),
    /// Write what is queued, then close the WebSocket.
    Close,
    /// Bytes of the transport's own protocol, written as they are (a
    /// WebSocket pong); only the transport that made them queues them.
    Control(Bytes),
}

#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Outbound>,
    /// Bytes of the entries in `items`.
    bytes: usize,
    /// The writer is gone: nothing will be written any more.
    closed: bool,
    /// Bytes a [`Wire`] framed but the socket did not take yet; written
    /// before anything in `items`. At most one write's worth.
    spill: BytesMut,
    /// The wire wrote the close: nothing more is queued.
    closing: bool,
    /// A sender waits for room.
    sender_waiting: bool,
}

/// A socket that takes bytes without waiting, for links whose queued
/// entries are written by whoever queued them ([`ClientLink::with_wire`]).
pub trait Wire: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes now, without waiting: first `spill`,
    /// then entries from the front of `items`, framed for the transport.
    /// Entries written are removed; when the socket took only part of a
    /// write, the rest of it goes to `spill` and its entries are removed
    /// too. An `Err` means the socket is unusable.
    fn write_now(
        &self,
        items: &mut VecDeque<Outbound>,
        spill: &mut BytesMut,
    ) -> std::io::Result<WireWrite>;

    /// Writes the messages of `batch`, in order, without waiting (only
    /// called when nothing is queued or spilled). Returns how many were
    /// taken: written, or the unwritten rest of the last write copied to
    /// `spill`; the others must be queued.
    fn write_batch(&self, batch: &Batch<'_>, spill: &mut BytesMut) -> std::io::Result<usize>;
}

/// What [`Wire::write_now`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireWrite {
    /// [`Outbound`] sizes of the entries removed from `items`.
    pub removed: usize,
    /// The [`Outbound::Close`] entry was reached: its close frame is
    /// written or in `spill`, and the entries after it were discarded.
    pub closed: bool,
}

/// Where a link with a [`Wire`] stands after a write attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireState {
    /// Everything queued is written.
    Idle,
    /// The socket is full: the writer task must wait until it is writable.
    Blocked,
    /// The close frame is written: the socket may be shut down.
    Closed,
    /// The link is closed (or the socket failed): nothing more to do.
    Gone,
}

impl Outbound {
    /// The parts of the frame this entry writes, in order (none for
    /// control entries), and whether its body must travel as binary data.
    pub fn frame_parts(&self) -> Option<([&[u8]; 3], bool)> {
        match self {
            Outbound::Frame { bytes, binary } => Some(([&bytes[..], &[], &[]], *binary)),
            Outbound::Broadcast(delivery) => Some((delivery.parts(), delivery.message.binary)),
            Outbound::SetHeartbeat(_) | Outbound::Close | Outbound::Control(_) => None,
        }
    }

    /// Bytes this entry will put on the wire (0 for control entries).
    pub fn size(&self) -> usize {
        match self {
            Outbound::Frame { bytes, .. } | Outbound::Control(bytes) => bytes.len(),
            Outbound::Broadcast(delivery) => delivery.len(),
            Outbound::SetHeartbeat(_) | Outbound::Close => 0,
        }
    }
}

impl Recipient for ClientLink {
    fn offer(&self, delivery: Delivery) -> Offered {
        self.offer_quietly(Outbound::Broadcast(delivery), false)
    }

    fn offer_batch(&self, batch: Batch<'_>) -> Offered {
        let nothing = Offered {
            wake: false,
            bytes: 0,
        };
        let mut queue = self.lock();
        if queue.closed || queue.closing {
            return nothing;
        }
        let mut first = 0;
        let mut writer_owed = false;
        if let Some(wire) = &self.wire {
            if queue.items.is_empty() && queue.spill.is_empty() {
                match wire.write_batch(&batch, &mut queue.spill) {
                    Ok(taken) => first = taken,
                    Err(error) => {
                        tracing::debug!(%error, "client socket write failed");
                        self.close_locked(&mut queue);
                        drop(queue);
                        self.room.notify_waiters();
                        return nothing;
                    }
                }
                if first == batch.messages.len() && queue.spill.is_empty() {
                    return nothing;
                }
                // The socket is full: the writer task takes over.
                writer_owed = true;
            }
        }
        let wake = !writer_owed && queue.items.is_empty() && queue.spill.is_empty();
        let mut bytes = 0;
        for i in first..batch.messages.len() {
            let item = Outbound::Broadcast(batch.delivery(i));
            let size = item.size();
            if self.fits(&queue, size) {
                queue.bytes += size;
                queue.items.push_back(item);
                bytes += size;
            } else {
                self.refused();
            }
        }
        drop(queue);
        if writer_owed {
            self.ready.notify_one();
        }
        Offered {
            wake: wake && bytes > 0,
            bytes,
        }
    }

    fn wake(&self) -> usize {
        if self.wire.is_none() {
            self.ready.notify_one();
            return 0;
        }
        let mut queue = self.lock();
        let before = queue.bytes;
        let state = self.write_locked(&mut queue);
        let removed = before - queue.bytes;
        drop(queue);
        if state != WireState::Idle {
            self.ready.notify_one();
        }
        removed
    }
}

/// A client's queue, shared by its session, its fan-out subscriptions and
/// its writer.
#[derive(Debug)]
pub struct ClientLink {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Bytes queued before the queue counts as full (one entry always fits
    /// an empty queue, whatever its size).
    max_bytes: usize,
    /// Wakes the writer when something was queued.
    ready: Notify,
    /// Wakes a sender waiting for room.
    room: Notify,
    policy: SlowClientPolicy,
    overflowed: AtomicBool,
    overflow: Notify,
    dropped: AtomicU64,
    /// A write to the client made no progress within the write timeout.
    stalled: AtomicBool,
    /// Writes queued entries at once (see the module doc), when set.
    wire: Option<Box<dyn Wire>>,
}

impl ClientLink {
    /// A link holding at most `capacity` entries.
    pub fn new(capacity: usize, policy: SlowClientPolicy) -> Arc<ClientLink> {
        ClientLink::bounded(capacity, usize::MAX, policy)
    }

    /// A link holding at most `capacity` entries and `max_bytes` bytes of
    /// frames (control frames such as RECEIPT and ERROR included).
    pub fn bounded(capacity: usize, max_bytes: usize, policy: SlowClientPolicy) -> Arc<ClientLink> {
        Arc::new(ClientLink::unshared(capacity, max_bytes, policy, None))
    }

    /// A bounded link whose entries are written to `wire` by whoever
    /// queues them; the transport's writer task calls
    /// [`ClientLink::write_wire`] when the socket is writable again.
    pub fn with_wire(
        capacity: usize,
        max_bytes: usize,
        policy: SlowClientPolicy,
        wire: Box<dyn Wire>,
    ) -> Arc<ClientLink> {
        Arc::new(ClientLink::unshared(
            capacity,
            max_bytes,
            policy,
            Some(wire),
        ))
    }

    fn unshared(
        capacity: usize,
        max_bytes: usize,
        policy: SlowClientPolicy,
        wire: Option<Box<dyn Wire>>,
    ) -> ClientLink {
        ClientLink {
            queue: Mutex::new(Queue::default()),
            max_bytes: max_bytes.max(1),
            capacity: capacity.max(1),
            ready: Notify::new(),
            room: Notify::new(),
            policy,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
            dropped: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            wire,
        }
    }

    /// Writes what is queued to the wire, without waiting, under the
    /// queue's lock (so that writes from the fan-out, the session and the
    /// writer task never interleave).
    fn write_locked(&self, queue: &mut Queue) -> WireState {
        let Some(wire) = &self.wire else {
            return WireState::Gone;
        };
        if queue.closed {
            return WireState::Gone;
        }
        let Queue {
            items,
            spill,
            bytes,
            ..
        } = queue;
        match wire.write_now(items, spill) {
            Ok(written) => {
                *bytes -= written.removed.min(*bytes);
                if written.closed {
                    queue.closing = true;
                    queue.items = VecDeque::new();
                    queue.bytes = 0;
                }
                if written.removed > 0 && std::mem::take(&mut queue.sender_waiting) {
                    self.room.notify_one();
                }
                if queue.items.is_empty() && queue.items.capacity() > 0 {
                    // An idle client's queue holds no allocation.
                    queue.items = VecDeque::new();
                }
                if !queue.spill.is_empty() || !queue.items.is_empty() {
                    WireState::Blocked
                } else if queue.closing {
                    WireState::Closed
                } else {
                    WireState::Idle
                }
            }
            Err(error) => {
                tracing::debug!(%error, "client socket write failed");
                self.close_locked(queue);
                self.room.notify_waiters();
                WireState::Gone
            }
        }
    }

    /// For the writer task of a link with a wire: writes what is queued,
    /// without waiting. The queued-bytes gauge is kept here.
    pub fn write_wire(&self) -> WireState {
        self.write_counted(self.lock())
    }

    /// [`ClientLink::write_locked`], then the lock released and the
    /// queued-bytes gauge lowered by what was written.
    fn write_counted(&self, mut queue: std::sync::MutexGuard<'_, Queue>) -> WireState {
        let before = queue.bytes;
        let state = self.write_locked(&mut queue);
        let removed = before.saturating_sub(queue.bytes);
        drop(queue);
        if removed > 0 {
            crate::metrics::get()
                .outbound_bytes
                .decrement(removed as f64);
        }
        state
    }

    /// For the writer task: waits until an entry was queued that nobody
    /// wrote (with a wire: until a write left something for the task).
    pub async fn queued(&self) {
        self.ready.notified().await;
    }

    /// The queue; a panic elsewhere while it was held leaves it usable
    /// (the crate's one rule for poisoned locks: take the data anyway).
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fits(&self, queue: &Queue, size: usize) -> bool {
        queue.items.len() < self.capacity
            && (queue.items.is_empty() || queue.bytes.saturating_add(size) <= self.max_bytes)
    }

    fn push(&self, queue: &mut Queue, item: Outbound) {
        let size = item.size();
        queue.bytes += size;
        crate::metrics::get().outbound_bytes.increment(size as f64);
        queue.items.push_back(item);
    }

    /// Queues an entry, waiting for room. `false` when the writer is gone.
    pub async fn send(&self, item: Outbound) -> bool {
        let mut item = Some(item);
        loop {
            let room = self.room.notified();
            {
                let mut queue = self.lock();
                if queue.closed {
                    return false;
                }
                // Control entries (close, heart-beat settings) always fit.
                let control = matches!(item, Some(Outbound::Close | Outbound::SetHeartbeat(_)));
                let size = item.as_ref().map_or(0, Outbound::size);
                if queue.closing {
                    return false;
                }
                if control || self.fits(&queue, size) {
                    if let Some(item) = item.take() {
                        self.push(&mut queue, item);
                    }
                    if self.wire.is_some() {
                        let state = self.write_counted(queue);
                        // A new heart-beat interval changes the writer's
                        // timer: it must look again.
                        if state != WireState::Idle || control {
                            self.ready.notify_one();
                        }
                        return true;
                    }
                    drop(queue);
                    self.ready.notify_one();
                    return true;
                }
                queue.sender_waiting = true;
            }
            room.await;
        }
    }

    /// Offers a broadcast entry without waiting; applies the slow-client
    /// policy when the queue is full.
    pub fn offer(&self, item: Outbound) {
        if self.offer_quietly(item, true).wake {
            let removed = Recipient::wake(self);
            if removed > 0 {
                crate::metrics::get()
                    .outbound_bytes
                    .decrement(removed as f64);
            }
        }
    }

    /// [`ClientLink::offer`] without waking the writer: `wake` when the
    /// entry went into an empty queue, so the caller must wake the writer
    /// ([`Recipient::wake`]). A non-empty queue has a wake-up owed already
    /// (whoever made it non-empty wakes the writer, which takes everything
    /// queued at once). Without `gauge`, the caller adds `bytes` to the
    /// queued-bytes gauge itself (fan-out does it once per burst).
    fn offer_quietly(&self, item: Outbound, gauge: bool) -> Offered {
        let mut queue = self.lock();
        if queue.closed || queue.closing {
            return Offered {
                wake: false,
                bytes: 0,
            };
        }
        let size = item.size();
        if self.fits(&queue, size) {
            let wake = queue.items.is_empty() && queue.spill.is_empty();
            queue.bytes += size;
            queue.items.push_back(item);
            drop(queue);
            if gauge {
                crate::metrics::get().outbound_bytes.increment(size as f64);
            }
            return Offered { wake, bytes: size };
        }
        drop(queue);
        self.refused();
        Offered {
            wake: false,
            bytes: 0,
        }
    }

    /// A broadcast entry did not fit: the slow-client policy decides.
    fn refused(&self) {
        match self.policy {
            SlowClientPolicy::Drop => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::get().slow_client_dropped.increment(1);
            }
            SlowClientPolicy::Disconnect => {
                if !self.overflowed.swap(true, Ordering::AcqRel) {
                    self.overflow.notify_one();
                }
            }
        }
    }

    /// For the writer: waits until something is queued and moves all of it
    /// into `batch` (which must be empty).
    pub async fn take_all(&self, batch: &mut VecDeque<Outbound>) {
        loop {
            let ready = self.ready.notified();
            {
                let mut queue = self.lock();
                if !queue.items.is_empty() {
                    std::mem::swap(&mut queue.items, batch);
                    crate::metrics::get()
                        .outbound_bytes
                        .decrement(std::mem::take(&mut queue.bytes) as f64);
                    drop(queue);
                    self.room.notify_one();
                    return;
                }
            }
            ready.await;
        }
    }

    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// The writer is gone: wake and refuse every sender from now on.
    pub fn close(&self) {
        self.close_locked(&mut self.lock());
        self.room.notify_waiters();
        self.room.notify_one();
    }

    fn close_locked(&self, queue: &mut Queue) {
        queue.closed = true;
        queue.items = VecDeque::new();
        queue.spill = BytesMut::new();
        crate::metrics::get()
            .outbound_bytes
            .decrement(std::mem::take(&mut queue.bytes) as f64);
    }

    /// The link was closed (by [`ClientLink::close`], a stall or a failed
    /// write).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
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

    /// The writer could not write within the write timeout: the session
    /// must end (signalled like an overflow).
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::Release);
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            self.overflow.notify_one();
        }
        self.close();
    }

    /// Whether [`ClientLink::stall`] ended this link.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// Broadcast messages dropped for this client under the `drop` policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Outbound {
        Outbound::Frame {
            bytes: Bytes::from(vec![n]),
            binary: false,
        }
    }

    #[tokio::test]
    async fn drop_policy_drops_beyond_capacity() {
        let link = ClientLink::new(2, SlowClientPolicy::Drop);
        for n in 0..5 {
            link.offer(frame(n));
        }
        assert_eq!(link.dropped(), 3);
        let mut batch = VecDeque::new();
        link.take_all(&mut batch).await;
        assert_eq!(batch.len(), 2);
    }

    #[tokio::test]
    async fn disconnect_policy_signals_overflow() {
        let link = ClientLink::new(1, SlowClientPolicy::Disconnect);
        link.offer(frame(0));
        link.offer(frame(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), link.overflowed())
            .await
            .expect("overflow signalled");
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_once_closed() {
        let link = ClientLink::new(1, SlowClientPolicy::Drop);
        assert!(link.send(frame(0)).await);
        let waiting = {
            let link = Arc::clone(&link);
            tokio::spawn(async move { link.send(frame(1)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room yet");
        let mut batch = VecDeque::new();
        link.take_all(&mut batch).await;
        assert!(waiting.await.expect("task"), "queued once there was room");
        link.close();
        assert!(!link.send(frame(2)).await);
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_too() {
        let link = ClientLink::bounded(100, 10, SlowClientPolicy::Drop);
        let big = || Outbound::Frame {
            bytes: Bytes::from(vec![0u8; 8]),
            binary: false,
        };
        link.offer(big());
        link.offer(big());
        assert_eq!(link.dropped(), 1, "8 + 8 bytes exceed 10");
        // One entry always fits an empty queue.
        let mut batch = VecDeque::new();
        link.take_all(&mut batch).await;
        link.offer(Outbound::Frame {
            bytes: Bytes::from(vec![0u8; 50]),
            binary: false,
        });
        assert_eq!(link.dropped(), 1);
    }

    #[test]
    fn an_idle_queue_holds_no_allocation() {
        let link = ClientLink::new(1024, SlowClientPolicy::Drop);
        let queue = link.lock();
        assert_eq!(queue.items.capacity(), 0);
    }
}
