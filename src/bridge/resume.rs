//! Resume positions and the join of a catch-up with live traffic: the pure
//! decisions of resumable subscriptions ([`super::history`] does the I/O).
//!
//! A position is `<epoch>:<offset>`: the offset of a message in its
//! RabbitMQ stream and the epoch of that stream (it changes when the
//! stream is deleted and created again, see docs/operations.md). A
//! SUBSCRIBE with `x-resume-from:<position>` wants every message after it,
//! then live, in order, no duplicate and no gap. Three pieces make that
//! hold without any lock-step between the live consumer and a catch-up:
//!
//! - [`Ring`]: the last messages of a stream the replica saw live, bounded
//!   by count and bytes, complete from its first offset on;
//! - [`plan`]: where a resume is served from (memory, a broker read, or
//!   not at all) from arithmetic alone, before anything is read;
//! - [`Gate`]: per subscription, the next offset it may receive. Every
//!   source (ring, catch-up read, live) offers in increasing order and the
//!   gate drops what is at or below what was delivered, so overlaps between
//!   the sources are harmless and the join is simply "offer the catch-up,
//!   then the ring, then register for live", under the stream's lock.

use std::collections::VecDeque;
use std::fmt;

pub use crate::session::RESUME_HEADER;
/// The header the first MESSAGE after a resume carries: `true` when
/// nothing was missed, `false` when the history did not reach back.
pub const RESUMED_HEADER: &str = "x-resumed";
/// The header with the stream offset of a MESSAGE (set by RabbitMQ).
pub const OFFSET_HEADER: &str = "x-stream-offset";
/// The header with the stream's epoch.
pub const EPOCH_HEADER: &str = "x-stream-epoch";

/// A message's place in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

impl Position {
    /// Parses `<epoch>:<offset>` (decimal, nothing else); `None` for
    /// anything else, never a panic or an error that leaves this module.
    pub fn parse(text: &str) -> Option<Position> {
        let (epoch, offset) = text.trim().split_once(':')?;
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(Position {
            epoch: number(epoch)?,
            offset: number(offset)?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// Why a resume starts live instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotResumed {
    /// `x-resume-from` is not a position.
    Invalid,
    /// The stream was created again since (or the replica does not know
    /// its epoch yet).
    EpochChanged,
    /// More than `max_resume_messages` were missed, or retention removed
    /// part of them.
    TooOld,
    /// The position is further than any replica can have delivered.
    Ahead,
    /// Too many subscriptions already wait for a read of this stream.
    Busy,
}

/// Where a resume is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// No `x-resume-from`: live, no `x-resumed` header.
    Live,
    /// From the replica's memory, then live.
    Memory { from: u64 },
    /// From a read of the stream starting at `from`, then memory, then live.
    Broker { from: u64 },
    /// Live with `x-resumed:false`.
    Refused(NotResumed),
}

/// What the replica knows of a stream when a resume arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamView {
    /// `None` until the stream is declared and its epoch known.
    pub epoch: Option<u64>,
    /// First offset the ring holds (complete from there on).
    pub ring_first: Option<u64>,
    /// Offset after the newest message seen live; `None` before the
    /// first one.
    pub next: Option<u64>,
}

/// Decides how a resume from `position` is served.
///
/// Nothing here reads: a resume may span at most `max_messages` offsets
/// (the live point minus the position), so a read it causes is bounded
/// before it starts. A position a little ahead of this replica's live
/// point (another replica's consumer was ahead) resumes live: the gate
/// skips what the client already has.
pub fn plan(position: Option<&str>, view: StreamView, max_messages: u64) -> Plan {
    let Some(text) = position else {
        return Plan::Live;
    };
    let Some(pos) = Position::parse(text) else {
        return Plan::Refused(NotResumed::Invalid);
    };
    if view.epoch != Some(pos.epoch) {
        return Plan::Refused(NotResumed::EpochChanged);
    }
    let Some(want) = pos.offset.checked_add(1) else {
        return Plan::Refused(NotResumed::Invalid);
    };
    let Some(next) = view.next else {
        // Nothing seen live here yet: the read finds where live is.
        return Plan::Broker { from: want };
    };
    if want > next {
        return if want - next > max_messages {
            Plan::Refused(NotResumed::Ahead)
        } else {
            Plan::Memory { from: want }
        };
    }
    if next - want > max_messages {
        return Plan::Refused(NotResumed::TooOld);
    }
    match view.ring_first {
        Some(first) if first <= want => Plan::Memory { from: want },
        // Nothing missed and nothing in memory (just started): live.
        None if want == next => Plan::Memory { from: want },
        _ => Plan::Broker { from: want },
    }
}

/// The next offset a subscription may receive, and whether its next
/// MESSAGE announces the outcome of its resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    next: u64,
    announce: Option<bool>,
}

impl Gate {
    /// A subscription that receives offsets from `next` on; `announce`:
    /// the `x-resumed` value its first MESSAGE carries (`None`: none).
    pub fn new(next: u64, announce: Option<bool>) -> Gate {
        Gate { next, announce }
    }

    /// Whether `offset` goes to the subscription (each offset at most
    /// once, increasing); `Some(announce)` when it does.
    pub fn admit(&mut self, offset: u64) -> Option<Option<bool>> {
        if offset < self.next {
            return None;
        }
        self.next = offset.saturating_add(1);
        Some(self.announce.take())
    }

    /// Whether the next admitted offset still carries the announce.
    pub fn announcing(&self) -> bool {
        self.announce.is_some()
    }

    /// The next offset it may receive.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// One message the replica keeps.
#[derive(Debug, Clone)]
pub struct Kept<M> {
    pub offset: u64,
    pub routing_key: std::sync::Arc<str>,
    pub message: M,
    pub bytes: usize,
}

/// The last messages of a stream seen live, bounded by count and bytes;
/// complete from its first offset on (the live consumer never skips: it
/// resumes after the last offset it saw when it reconnects, and the ring
/// is cleared when the stream's epoch changes).
#[derive(Debug)]
pub struct Ring<M> {
    entries: VecDeque<Kept<M>>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
    next: Option<u64>,
}

impl<M> Ring<M> {
    pub fn new(max_count: usize, max_bytes: usize) -> Ring<M> {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            max_count,
            max_bytes,
            next: None,
        }
    }

    /// Keeps `kept`; `false` (and nothing kept) when its offset is not
    /// after the newest one (seen already: a consumer that came back).
    pub fn push(&mut self, kept: Kept<M>) -> bool {
        if self.next.is_some_and(|n| kept.offset < n) {
            return false;
        }
        self.next = Some(kept.offset.saturating_add(1));
        self.bytes += kept.bytes;
        self.entries.push_back(kept);
        while self.entries.len() > self.max_count
            || (self.bytes > self.max_bytes && !self.entries.is_empty())
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.bytes;
            }
        }
        true
    }

    /// Forgets everything (the stream was created again).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.next = None;
    }

    pub fn first(&self) -> Option<u64> {
        self.entries.front().map(|k| k.offset)
    }

    pub fn next(&self) -> Option<u64> {
        self.next
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Kept messages from `offset` on, oldest first.
    pub fn since(&self, offset: u64) -> impl Iterator<Item = &Kept<M>> {
        let start = self.entries.partition_point(|k| k.offset < offset);
        self.entries.range(start..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn kept(offset: u64) -> Kept<u64> {
        Kept {
            offset,
            routing_key: Arc::from("merchant.1"),
            message: offset,
            bytes: 10,
        }
    }

    fn view(epoch: u64, first: Option<u64>, next: Option<u64>) -> StreamView {
        StreamView {
            epoch: Some(epoch),
            ring_first: first,
            next,
        }
    }

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(
            Position::parse("7:42"),
            Some(Position {
                epoch: 7,
                offset: 42
            })
        );
        assert_eq!(
            Position::parse("7:42").map(|p| p.to_string()),
            Some("7:42".into())
        );
        for bad in [
            "",
            "42",
            "7:",
            ":4",
            "7:-1",
            "-7:1",
            "7:4x",
            "7:1:2",
            "7: 1",
            "a:b",
            "1:99999999999999999999999",
            "1:18446744073709551616",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn plan_serves_from_memory_when_the_ring_reaches_back() {
        // Ring holds 100..=199, next is 200; the client saw 149.
        assert_eq!(
            plan(Some("5:149"), view(5, Some(100), Some(200)), 1000),
            Plan::Memory { from: 150 }
        );
        // Saw 99: the ring starts at 100, still complete.
        assert_eq!(
            plan(Some("5:99"), view(5, Some(100), Some(200)), 1000),
            Plan::Memory { from: 100 }
        );
        // Saw everything.
        assert_eq!(
            plan(Some("5:199"), view(5, Some(100), Some(200)), 1000),
            Plan::Memory { from: 200 }
        );
    }

    #[test]
    fn plan_reads_the_broker_below_the_ring_within_the_bound() {
        assert_eq!(
            plan(Some("5:49"), view(5, Some(100), Some(200)), 1000),
            Plan::Broker { from: 50 }
        );
        assert_eq!(
            plan(Some("5:49"), view(5, Some(100), Some(200)), 150),
            Plan::Broker { from: 50 }
        );
        assert_eq!(
            plan(Some("5:49"), view(5, Some(100), Some(200)), 149),
            Plan::Refused(NotResumed::TooOld)
        );
        // Nothing seen live yet: the read finds the live point.
        assert_eq!(
            plan(Some("5:49"), view(5, None, None), 10),
            Plan::Broker { from: 50 }
        );
    }

    #[test]
    fn plan_refuses_other_epochs_garbage_and_far_futures() {
        let v = view(5, Some(100), Some(200));
        assert_eq!(plan(None, v, 10), Plan::Live);
        assert_eq!(
            plan(Some("6:150"), v, 10),
            Plan::Refused(NotResumed::EpochChanged)
        );
        let unknown = StreamView {
            epoch: None,
            ring_first: None,
            next: None,
        };
        assert_eq!(
            plan(Some("5:150"), unknown, 10),
            Plan::Refused(NotResumed::EpochChanged)
        );
        assert_eq!(
            plan(Some("5:-1"), v, 10),
            Plan::Refused(NotResumed::Invalid)
        );
        assert_eq!(
            plan(Some("5:18446744073709551615"), v, 10),
            Plan::Refused(NotResumed::Invalid)
        );
        assert_eq!(
            plan(Some("5:9000000000000000000"), v, 10),
            Plan::Refused(NotResumed::Ahead)
        );
        // A little ahead: another replica delivered more than this one saw.
        assert_eq!(plan(Some("5:204"), v, 10), Plan::Memory { from: 205 });
    }

    #[test]
    fn gate_admits_each_offset_once_in_order_and_announces_once() {
        let mut g = Gate::new(10, Some(true));
        assert_eq!(g.admit(9), None);
        assert_eq!(g.admit(10), Some(Some(true)));
        assert_eq!(g.admit(10), None);
        assert_eq!(g.admit(11), Some(None));
        assert_eq!(g.admit(13), Some(None));
        assert_eq!(g.admit(12), None);
        assert_eq!(g.next(), 14);
    }

    #[test]
    fn ring_is_bounded_by_count_and_bytes_and_refuses_old_offsets() {
        let mut r = Ring::new(3, 1000);
        for o in 0..5 {
            assert!(r.push(kept(o)));
        }
        assert_eq!((r.first(), r.next(), r.len()), (Some(2), Some(5), 3));
        assert!(!r.push(kept(4)));
        assert!(!r.push(kept(1)));
        let mut r = Ring::new(100, 25);
        for o in 0..5 {
            r.push(kept(o));
        }
        assert_eq!((r.first(), r.len(), r.bytes()), (Some(3), 2, 20));
        assert_eq!(r.since(4).map(|k| k.offset).collect::<Vec<_>>(), vec![4]);
        assert_eq!(r.since(0).map(|k| k.offset).collect::<Vec<_>>(), vec![3, 4]);
        r.clear();
        assert_eq!((r.first(), r.next()), (None, None));
    }

    /// The join, played out: a client saw up to offset 4 of a stream. The
    /// catch-up read (from the broker) starts below the ring; live traffic
    /// keeps arriving while it runs and pushes the ring's start ahead of
    /// the read for a while; the read goes on until it meets the ring, and
    /// the check and the join happen at once (as under the stream's lock).
    /// The subscription gets 5..=29 once each, in order.
    #[test]
    fn join_of_read_ring_and_live_has_no_gap_and_no_duplicate() {
        let mut ring = Ring::new(4, 1 << 20);
        for o in 0..10 {
            ring.push(kept(o));
        }
        // Ring holds 6..10; the client resumes after 4.
        let v = view(1, ring.first(), ring.next());
        let Plan::Broker { from } = plan(Some("1:4"), v, 100) else {
            panic!("expected a broker read");
        };
        let mut gate = Gate::new(from, Some(true));
        let mut got: Vec<(u64, Option<bool>)> = Vec::new();
        let offer = |gate: &mut Gate, o: u64, got: &mut Vec<(u64, Option<bool>)>| {
            if let Some(a) = gate.admit(o) {
                got.push((o, a));
            }
        };
        let mut live = 10;
        let mut read = from;
        loop {
            // Two live messages for each one read: the ring runs ahead.
            if live < 26 {
                for _ in 0..2 {
                    ring.push(kept(live));
                    live += 1;
                }
            }
            offer(&mut gate, read, &mut got);
            if ring.first().is_some_and(|f| f <= read + 1) {
                // Join: the ring from where the gate is, then live.
                let rest: Vec<u64> = ring.since(gate.next()).map(|k| k.offset).collect();
                for o in rest {
                    offer(&mut gate, o, &mut got);
                }
                break;
            }
            read += 1;
            assert!(read < 100, "the read never met the ring");
        }
        // Live after the join; a late duplicate of the ring is dropped.
        offer(&mut gate, live - 1, &mut got);
        for o in live..30 {
            offer(&mut gate, o, &mut got);
        }
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (5..30).collect::<Vec<_>>());
        assert_eq!(got[0].1, Some(true));
        assert!(got[1..].iter().all(|(_, a)| a.is_none()));
    }
}
