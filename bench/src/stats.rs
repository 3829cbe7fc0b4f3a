//! What receivers record: per subscriber a [`Tracker`] (sequence state,
//! counts, latencies waiting to be flushed) and, shared by all, per phase a
//! [`PhaseAgg`] they flush into. Latencies go into a few sharded histograms
//! (one histogram per subscriber would cost ~150 KiB each).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::util::latency_histogram;

/// Phases of one connection set (e.g. max rate, then fixed rate).
pub const MAX_PHASES: usize = 4;
const SHARDS: usize = 16;
/// Missing sequence numbers remembered per subscriber (to tell a late
/// message from a duplicate).
const MAX_MISSING: usize = 100_000;
const LATENCY_BATCH: usize = 256;

/// Totals of one phase over all subscribers.
pub struct PhaseAgg {
    pub received: AtomicU64,
    pub unique: AtomicU64,
    pub duplicates: AtomicU64,
    pub reorders: AtomicU64,
    pub malformed: AtomicU64,
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for PhaseAgg {
    fn default() -> Self {
        PhaseAgg {
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            reorders: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
        }
    }
}

impl PhaseAgg {
    /// All latencies recorded so far, merged.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }
}

#[derive(Default, Clone, Copy)]
struct Delta {
    received: u64,
    unique: u64,
    duplicates: u64,
    reorders: u64,
    malformed: u64,
    first_ns: u64,
    last_ns: u64,
}

/// One subscriber's view of the stream.
pub struct Tracker {
    shard: usize,
    /// One past the highest sequence number seen.
    next: u64,
    missing: HashSet<u64>,
    missing_overflow: bool,
    deltas: [Delta; MAX_PHASES],
    latencies: Vec<(u8, u32)>,
}

impl Tracker {
    pub fn new(index: usize) -> Tracker {
        Tracker {
            shard: index % SHARDS,
            next: 0,
            missing: HashSet::new(),
            missing_overflow: false,
            deltas: [Delta::default(); MAX_PHASES],
            latencies: Vec::new(),
        }
    }

    /// One past the highest sequence number seen (the publisher's window
    /// uses it).
    pub fn progress(&self) -> u64 {
        self.next
    }

    /// Records a message; `aggs` receives a latency batch when one is full.
    pub fn record(&mut self, phase: u8, seq: u64, sent_ns: u64, now_ns: u64, aggs: &[PhaseAgg]) {
        let p = (phase as usize).min(MAX_PHASES - 1);
        let d = &mut self.deltas[p];
        d.received += 1;
        if d.first_ns == 0 {
            d.first_ns = now_ns;
        }
        d.last_ns = now_ns;
        let fresh = if seq >= self.next {
            if seq > self.next {
                let gap = seq - self.next;
                if !self.missing_overflow && self.missing.len() as u64 + gap <= MAX_MISSING as u64 {
                    self.missing.extend(self.next..seq);
                } else {
                    self.missing_overflow = true;
                }
            }
            self.next = seq + 1;
            true
        } else if self.missing.remove(&seq) {
            d.reorders += 1;
            true
        } else if self.missing_overflow {
            // Cannot tell late from duplicate any more: count it as late.
            d.reorders += 1;
            true
        } else {
            d.duplicates += 1;
            false
        };
        if fresh {
            d.unique += 1;
            let us = now_ns.saturating_sub(sent_ns) / 1000;
            self.latencies
                .push((p as u8, us.min(u32::MAX as u64) as u32));
            if self.latencies.len() >= LATENCY_BATCH {
                self.flush_latencies(aggs);
            }
        }
    }

    /// A MESSAGE whose body is not a benchmark body.
    pub fn malformed(&mut self, phase_hint: u8) {
        self.deltas[(phase_hint as usize).min(MAX_PHASES - 1)].malformed += 1;
    }

    fn flush_latencies(&mut self, aggs: &[PhaseAgg]) {
        if self.latencies.is_empty() {
            return;
        }
        // Lock each phase's shard once per batch.
        let mut i = 0;
        while i < self.latencies.len() {
            let phase = self.latencies[i].0 as usize;
            let Ok(mut h) = aggs[phase].shards[self.shard].lock() else {
                return;
            };
            while i < self.latencies.len() && self.latencies[i].0 as usize == phase {
                h.saturating_record(self.latencies[i].1.max(1) as u64);
                i += 1;
            }
        }
        self.latencies.clear();
    }

    /// Adds everything recorded since the last flush to `aggs`.
    pub fn flush(&mut self, aggs: &[PhaseAgg]) {
        self.flush_latencies(aggs);
        for (p, d) in self.deltas.iter_mut().enumerate() {
            if d.received == 0 && d.malformed == 0 {
                continue;
            }
            let a = &aggs[p];
            a.received.fetch_add(d.received, Ordering::Relaxed);
            a.unique.fetch_add(d.unique, Ordering::Relaxed);
            a.duplicates.fetch_add(d.duplicates, Ordering::Relaxed);
            a.reorders.fetch_add(d.reorders, Ordering::Relaxed);
            a.malformed.fetch_add(d.malformed, Ordering::Relaxed);
            if d.first_ns != 0 {
                a.first_ns.fetch_min(d.first_ns, Ordering::Relaxed);
            }
            a.last_ns.fetch_max(d.last_ns, Ordering::Relaxed);
            *d = Delta::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_and_reorders() {
        let aggs: Vec<PhaseAgg> = (0..MAX_PHASES).map(|_| PhaseAgg::default()).collect();
        let mut t = Tracker::new(0);
        for seq in [0u64, 1, 3, 2, 3, 4, 4, 1] {
            t.record(0, seq, 1_000, 2_000_000, &aggs);
        }
        t.flush(&aggs);
        let a = &aggs[0];
        assert_eq!(a.received.load(Ordering::Relaxed), 8);
        assert_eq!(a.unique.load(Ordering::Relaxed), 5);
        assert_eq!(a.duplicates.load(Ordering::Relaxed), 3);
        assert_eq!(a.reorders.load(Ordering::Relaxed), 1);
        assert_eq!(t.progress(), 5);
        let h = a.histogram();
        assert_eq!(h.len(), 5);
        assert!(h.value_at_quantile(0.5) >= 1998 && h.value_at_quantile(0.5) <= 2000);
    }
}
