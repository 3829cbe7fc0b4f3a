//! The AMQP side of the gateway: destinations, publishing, consumers and the
//! fan-out of broadcast messages to local subscribers, all through one
//! fixed-size plane of channels and queues per replica ([`plane`]).
//!
//! Two conventions hold for the whole crate and live here because this
//! module has most of the code they concern:
//!
//! - **Reconnecting**: every loop that waits before trying the broker again
//!   (the pool's connections, the plane's shards, a session's `/queue`
//!   consumers) waits with one [`Backoff`]: capped, exponential, jittered.
//! - **Poisoned locks**: every `std::sync::Mutex`/`RwLock` is taken with
//!   `.lock().unwrap_or_else(PoisonError::into_inner)` (likewise `read()`,
//!   `write()`). A lock is poisoned only when a thread panicked while holding
//!   it; the critical sections are short updates of maps and sets whose data
//!   stay usable, so the lock is taken anyway rather than panicking again, or
//!   skipping the work (a route never removed, a waiter never answered).

pub mod bindings;
pub mod control;
pub mod fanout;
pub mod history;
pub mod matcher;
pub mod plane;
pub mod pool;
pub mod properties;
pub mod resume;
pub mod seam;
pub mod session_broker;
pub mod vhosts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

pub use seam::{BrokerSession, Confirm};
pub use session_broker::{Inbound, SessionBroker};

/// Why the broker side could not do what a session asked.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("broker unavailable")]
    Unavailable,
    #[error("broker refused: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error("publish was rejected by the broker")]
    Nacked,
}

/// Capped exponential backoff with jitter, for every reconnect loop of the
/// bridge: 100 ms doubling up to 2 s (or the cap given), each wait drawn
/// from 0.5x..1.5x.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    pub fn new() -> Backoff {
        Backoff::with_max(Self::MAX)
    }

    /// Doubling up to `max` (at least the first wait).
    pub fn with_max(max: Duration) -> Backoff {
        Backoff {
            next: Self::FIRST,
            max: max.max(Self::FIRST),
        }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The next wait (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0.5..1.5);
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// What all sessions of the process share on the AMQP side.
#[derive(Debug)]
pub struct Bridge {
    pub pool: Arc<pool::Pool>,
    pub plane: Arc<plane::Plane>,
    next_session: AtomicU64,
}

impl Bridge {
    /// Creates the bridge and starts connecting to `urls` (one node, or a
    /// cluster's nodes); `exchanges` are declared (durable topic exchanges)
    /// on every (re)connection.
    pub fn start(
        urls: Vec<String>,
        connections: usize,
        exchanges: Vec<String>,
        plane: plane::PlaneConfig,
    ) -> Arc<Bridge> {
        Bridge::start_with(urls, connections, exchanges, plane, true)
    }

    /// As [`Bridge::start`], for a vhost other than the default one: its
    /// pool does not set the `stompgate_amqp_connections_up` gauge, which
    /// counts the default vhost's connections (those `/readyz` judges).
    pub fn start_quiet(
        urls: Vec<String>,
        connections: usize,
        exchanges: Vec<String>,
        plane: plane::PlaneConfig,
    ) -> Arc<Bridge> {
        Bridge::start_with(urls, connections, exchanges, plane, false)
    }

    fn start_with(
        urls: Vec<String>,
        connections: usize,
        exchanges: Vec<String>,
        mut plane: plane::PlaneConfig,
        report: bool,
    ) -> Arc<Bridge> {
        plane.topic_exchanges.extend(exchanges.iter().cloned());
        let pool = pool::Pool::new(urls, connections, exchanges);
        pool.report_metrics(report);
        pool.set_reconnect_max(plane.reconnect_max);
        pool.start();
        let plane = plane::Plane::start(Arc::clone(&pool), plane);
        Arc::new(Bridge {
            pool,
            plane,
            next_session: AtomicU64::new(1),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.pool.is_ready()
    }

    /// RabbitMQ blocks publishing (memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.pool.is_blocked()
    }

    /// Broker state for a new session.
    pub fn session(&self) -> SessionBroker {
        let key = self.next_session.fetch_add(1, Ordering::Relaxed);
        SessionBroker::new(Arc::clone(&self.plane), key)
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(3));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
        let mut short = Backoff::with_max(Duration::from_millis(200));
        for _ in 0..10 {
            assert!(short.next_delay() <= Duration::from_millis(300));
        }
    }
}
