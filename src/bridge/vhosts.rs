//! One [`Bridge`] (connection pool and AMQP plane) per virtual host the
//! gateway serves.
//!
//! CONNECT's `host` header selects the vhost, as on RabbitMQ's Web-STOMP.
//! AMQP 0-9-1 binds a connection to one vhost, so each served vhost needs
//! connections, channels and plane queues of its own. They are made on the
//! first session of that vhost and kept for the life of the process, and
//! only for the vhosts listed in `amqp.vhosts` (plus the default one, the
//! vhost of `amqp.url`): what a replica costs the broker is fixed by its
//! configuration, never by the number of sessions or users.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::plane::PlaneConfig;
use super::{Bridge, BridgeError, SessionBroker};

/// What it takes to start the bridge of one more vhost.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    /// The broker URLs of the default vhost (one node, or a cluster's).
    pub urls: Vec<String>,
    pub connections: usize,
    /// Topic exchanges the gateway declares (the `/user/` exchange).
    pub exchanges: Vec<String>,
    pub plane: PlaneConfig,
}

/// The bridges of the served vhosts.
#[derive(Debug)]
pub struct Vhosts {
    default_vhost: String,
    default: Arc<Bridge>,
    /// Served vhosts other than the default one.
    served: Vec<String>,
    started: Mutex<HashMap<String, Arc<Bridge>>>,
    spec: BridgeSpec,
}

impl Vhosts {
    /// Starts the default vhost's bridge at once; the others on first use.
    pub fn start(spec: BridgeSpec, served: &[String]) -> Arc<Vhosts> {
        let default_vhost = default_vhost(&spec.urls);
        let default = Bridge::start(
            spec.urls.clone(),
            spec.connections,
            spec.exchanges.clone(),
            spec.plane.clone(),
        );
        let mut others: Vec<String> = served
            .iter()
            .filter(|v| **v != default_vhost)
            .cloned()
            .collect();
        others.sort();
        others.dedup();
        Arc::new(Vhosts {
            default_vhost,
            default,
            served: others,
            started: Mutex::new(HashMap::new()),
            spec,
        })
    }

    /// The vhost of a CONNECT without `host`: the one of the AMQP URL.
    pub fn default_vhost(&self) -> &str {
        &self.default_vhost
    }

    /// The default vhost's bridge (readiness, metrics).
    pub fn default_bridge(&self) -> &Arc<Bridge> {
        &self.default
    }

    /// Every vhost a session may select, the default one first.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.default_vhost.clone())
            .chain(self.served.iter().cloned())
            .collect()
    }

    /// The bridge of `vhost`, started if it was not yet; `None` when the
    /// gateway does not serve it.
    pub fn bridge(&self, vhost: &str) -> Option<Arc<Bridge>> {
        if vhost == self.default_vhost {
            return Some(Arc::clone(&self.default));
        }
        if !self.served.iter().any(|v| v == vhost) {
            return None;
        }
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bridge) = started.get(vhost) {
            return Some(Arc::clone(bridge));
        }
        let urls: Vec<String> = self
            .spec
            .urls
            .iter()
            .filter_map(|url| match url_for_vhost(url, vhost) {
                Ok(url) => Some(url),
                Err(error) => {
                    tracing::error!(%error, vhost, "cannot make the vhost's AMQP URL");
                    None
                }
            })
            .collect();
        if urls.is_empty() {
            return None;
        }
        tracing::info!(vhost, "starting the AMQP plane of a served vhost");
        let bridge = Bridge::start_quiet(
            urls,
            self.spec.connections,
            self.spec.exchanges.clone(),
            self.spec.plane.clone(),
        );
        started.insert(vhost.to_owned(), Arc::clone(&bridge));
        Some(bridge)
    }

    /// Broker state for a new session on `vhost`. A vhost started just now
    /// is waited for (bounded by `timeout`), so that the session's first
    /// SUBSCRIBE does not race its connections.
    pub async fn session(
        &self,
        vhost: &str,
        timeout: Duration,
    ) -> Result<SessionBroker, BridgeError> {
        let bridge = self
            .bridge(vhost)
            .ok_or_else(|| BridgeError::Invalid(format!("vhost '{vhost}' is not served")))?;
        if !bridge.is_ready() {
            bridge.pool.wait_ready(timeout).await;
        }
        Ok(bridge.session())
    }
}

/// The vhost named by the first of `urls` (`/` when none parses); defined
/// with the configuration, which the session reads it from too.
pub use crate::config::default_vhost;

/// `url` with its vhost replaced by `vhost`.
pub use crate::config::url_for_vhost;

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use lapin::uri::AMQPUri;

    use super::*;

    #[test]
    fn the_default_vhost_comes_from_the_url() {
        assert_eq!(default_vhost(&["amqp://127.0.0.1:5672/%2f".into()]), "/");
        assert_eq!(default_vhost(&["amqp://h/prod".into()]), "prod");
        assert_eq!(default_vhost(&["amqp://h".into()]), "/");
        assert_eq!(default_vhost(&[]), "/");
    }

    #[test]
    fn urls_for_other_vhosts_keep_the_rest() {
        let url = url_for_vhost("amqps://u:p%40ss@h:5671/%2f?heartbeat=10", "a/b c").unwrap();
        assert_eq!(
            AMQPUri::from_str(&url).unwrap().vhost,
            "a/b c",
            "percent-encoded: {url}"
        );
        assert!(url.starts_with("amqps://u:p%40ss@h:5671/"), "{url}");
        assert!(url.ends_with("?heartbeat=10"), "{url}");
    }
}
