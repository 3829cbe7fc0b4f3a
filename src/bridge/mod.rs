//! The AMQP side of the gateway: destinations, publishing, consumers and the
//! fan-out of broadcast messages to local subscribers.

pub mod destination;
pub mod fanout;
pub mod pool;
pub mod properties;
pub mod session_broker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    #[error("internal lock poisoned")]
    Poisoned,
}

/// What all sessions of the process share on the AMQP side.
#[derive(Debug)]
pub struct Bridge {
    pub pool: Arc<pool::Pool>,
    pub hub: Arc<fanout::Hub>,
    next_session: AtomicU64,
}

impl Bridge {
    /// Creates the bridge and starts connecting to `url`; `exchanges` are
    /// declared (durable topic exchanges) on every (re)connection.
    pub fn start(url: &str, connections: usize, exchanges: Vec<String>) -> Arc<Bridge> {
        let pool = pool::Pool::new(url.to_owned(), connections, exchanges);
        pool.start();
        let hub = fanout::Hub::new(Arc::clone(&pool));
        Arc::new(Bridge {
            pool,
            hub,
            next_session: AtomicU64::new(1),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.pool.is_ready()
    }

    /// Broker state for a new session.
    pub fn session(&self) -> SessionBroker {
        let key = self.next_session.fetch_add(1, Ordering::Relaxed);
        SessionBroker::new(Arc::clone(&self.pool), Arc::clone(&self.hub), key)
    }
}
