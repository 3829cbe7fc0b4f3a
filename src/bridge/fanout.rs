//! What fan-out hands to local subscribers, and through what.
//!
//! A message from the plane's queues (see [`super::plane`]) is mapped to
//! STOMP headers and encoded once into a [`SharedMessage`]; every local
//! subscriber it matches receives a [`Delivery`]: a reference to it plus its
//! own pre-encoded `subscription` prefix, so nothing per recipient is
//! allocated on this path.
//!
//! Fan-out meets a client's outbound queue through one narrow seam owned
//! here, [`Recipient`]: an offer that never waits (the transport's queue
//! applies its slow-client policy). The bridge therefore knows nothing of
//! transports, and the transport implements the trait for its queue.

use std::sync::Arc;

use bytes::Bytes;

use crate::session::FANOUT_PREFIX;
use crate::stomp::message::{message_prefix, SharedMessage};
use crate::stomp::Escaping;

/// An exchange and binding key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    pub exchange: String,
    pub routing_key: String,
}

/// One broadcast message addressed to one subscription: its frame is
/// `prefix` + (`message.ack_line` when `ack_header`) + `message.tail(escaping)`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub prefix: Bytes,
    pub ack_header: bool,
    pub escaping: Escaping,
    pub message: Arc<SharedMessage>,
}

impl Delivery {
    /// Bytes the frame takes on the wire.
    pub fn len(&self) -> usize {
        self.prefix.len()
            + if self.ack_header {
                self.message.ack_line.len()
            } else {
                0
            }
            + self.message.tail(self.escaping).len()
    }

    /// Never empty: a frame has at least its command and NUL.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frame's parts, in order.
    pub fn parts(&self) -> [&[u8]; 3] {
        let ack: &[u8] = if self.ack_header {
            &self.message.ack_line
        } else {
            &[]
        };
        [&self.prefix, ack, self.message.tail(self.escaping)]
    }
}

/// Consecutive messages of one burst for one subscription: what
/// [`Recipient::offer_batch`] takes, borrowed (nothing is cloned unless it
/// has to wait in a queue).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub prefix: &'a Bytes,
    pub ack_header: bool,
    pub escaping: Escaping,
    pub messages: &'a [Arc<SharedMessage>],
}

impl<'a> Batch<'a> {
    /// The parts of message `i`'s frame, in order.
    pub fn parts(&self, i: usize) -> [&'a [u8]; 3] {
        let message = &self.messages[i];
        let ack: &[u8] = if self.ack_header {
            &message.ack_line
        } else {
            &[]
        };
        [self.prefix, ack, message.tail(self.escaping)]
    }

    /// Message `i` as a queue entry.
    pub fn delivery(&self, i: usize) -> Delivery {
        Delivery {
            prefix: self.prefix.clone(),
            ack_header: self.ack_header,
            escaping: self.escaping,
            message: Arc::clone(&self.messages[i]),
        }
    }
}

/// Where fan-out puts a delivery for one subscriber (a client's outbound
/// queue). `offer` must not wait: when the recipient is full, its own
/// policy drops the delivery or cuts the client off.
///
/// `offer` does not wake the recipient's writer: fan-out routes every
/// message that has already arrived first, then calls [`Recipient::wake`]
/// once for each recipient whose `offer` answered `true` (its queue was
/// empty until then), so a writer wakes, and writes, once per burst of
/// messages rather than once per message. A recipient that can write
/// without waiting writes the burst in `wake` itself, on the fan-out's
/// thread, and wakes its writer only when the socket is full.
pub trait Recipient: Send + Sync + std::fmt::Debug {
    /// Queues `delivery` (or applies the slow-client policy): whether the
    /// queue was empty before (the writer must be woken), and the bytes
    /// queued (0 when dropped), which [`Wakes::flush`] adds to
    /// `stompgate_outbound_queued_bytes` once per burst.
    fn offer(&self, delivery: Delivery) -> Offered;
    /// Offers several messages for one subscription at once, in order: a
    /// recipient that can write without waiting writes them now, in one
    /// write, when nothing is queued before them.
    fn offer_batch(&self, batch: Batch<'_>) -> Offered {
        let mut offered = Offered {
            wake: false,
            bytes: 0,
        };
        for i in 0..batch.messages.len() {
            let one = self.offer(batch.delivery(i));
            offered.wake |= one.wake;
            offered.bytes += one.bytes;
        }
        offered
    }
    /// Writes, or wakes the writer for, what `offer` queued; returns the
    /// bytes written at once (taken off the queue again), which
    /// [`Wakes::flush`] nets against those offered.
    fn wake(&self) -> usize;
}

/// What [`Recipient::offer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    pub wake: bool,
    pub bytes: usize,
}

/// Recipients to wake once the current burst of deliveries is routed.
#[derive(Debug, Default)]
pub struct Wakes {
    pending: Vec<Arc<dyn Recipient>>,
    /// Bytes queued by the burst (one update of the gauge per burst).
    bytes: usize,
}

impl Wakes {
    /// Recipients waiting for their wake-up.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Offers `delivery` to `recipient`, whose writer is woken at the
    /// next flush (if the offer asks for a wake-up).
    pub fn offer(&mut self, recipient: &Arc<dyn Recipient>, delivery: Delivery) {
        let offered = recipient.offer(delivery);
        self.bytes += offered.bytes;
        if offered.wake {
            self.pending.push(Arc::clone(recipient));
        }
    }

    /// Offers a batch of messages for one subscription to `recipient`.
    pub fn offer_batch(&mut self, recipient: &Arc<dyn Recipient>, batch: Batch<'_>) {
        let offered = recipient.offer_batch(batch);
        self.bytes += offered.bytes;
        if offered.wake {
            self.pending.push(Arc::clone(recipient));
        }
    }

    /// Wakes every recipient queued since the last flush.
    pub fn flush(&mut self) {
        let mut written = 0;
        for recipient in self.pending.drain(..) {
            written += recipient.wake();
        }
        let queued = std::mem::take(&mut self.bytes);
        let gauge = &crate::metrics::get().outbound_bytes;
        if queued > written {
            gauge.increment((queued - written) as f64);
        } else if written > queued {
            gauge.decrement((written - queued) as f64);
        }
        // A burst to many recipients must not keep a large list for ever.
        if self.pending.capacity() > 4096 {
            self.pending = Vec::new();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.flush();
    }
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
    pub recipient: Arc<dyn Recipient>,
}

impl Subscriber {
    pub fn new(
        session: u64,
        id: &str,
        escaping: Escaping,
        ack_header: bool,
        recipient: Arc<dyn Recipient>,
    ) -> Subscriber {
        Subscriber {
            session,
            id: Arc::from(id),
            prefix: message_prefix(id, escaping),
            escaping,
            ack_header,
            recipient,
        }
    }

    /// Offers `message` to this subscriber; its writer is woken by
    /// `wakes.flush()`.
    pub fn offer(&self, message: &Arc<SharedMessage>, wakes: &mut Wakes) {
        wakes.offer(
            &self.recipient,
            Delivery {
                prefix: self.prefix.clone(),
                ack_header: self.ack_header,
                escaping: self.escaping,
                message: Arc::clone(message),
            },
        );
    }
}

impl Subscriber {
    /// Offers consecutive messages of a burst to this subscriber at once.
    pub fn offer_batch(&self, messages: &[Arc<SharedMessage>], wakes: &mut Wakes) {
        wakes.offer_batch(
            &self.recipient,
            Batch {
                prefix: &self.prefix,
                ack_header: self.ack_header,
                escaping: self.escaping,
                messages,
            },
        );
    }
}

/// Encodes a broadcast message under the fan-out's message id `B_<seq>`.
pub fn encode(seq: u64, headers: &[(String, String)], body: &Bytes) -> SharedMessage {
    SharedMessage::encode(&format!("{FANOUT_PREFIX}{seq}"), headers, body)
}
