//! What the gateway lends its transports, and nothing more.
//!
//! Transports (WebSocket, SockJS) need the settings, the session driver's
//! [`Context`], admission under the connection limits, connection tracking
//! for the drain, and a fresh broker session per STOMP session. The server
//! builds one [`Host`] holding exactly that and hands it to the transports'
//! HTTP handlers; transports never see the server (no import cycle), and a
//! test can build a host of its own. The HTTP handshake helpers every
//! transport shares (`Origin` check, token from the handshake) live here too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::driver::Context;
use crate::bridge::control::{Control, Incoming};
use crate::bridge::SessionBroker;
use crate::config::Config;

/// Makes the broker side of a new session.
pub type BrokerFactory = Box<dyn Fn() -> SessionBroker + Send + Sync>;

/// What every transport of a gateway shares.
pub struct Host {
    pub config: Config,
    /// What the session driver of every connection shares.
    pub driver: Context,
    /// Cancelled when the graceful drain starts.
    pub draining: CancellationToken,
    brokers: BrokerFactory,
    connections: AtomicUsize,
    all_closed: Notify,
    /// Sessions admitted under `security.max_connections` and
    /// `security.max_connections_per_ip`.
    admitted: Mutex<Admitted>,
    /// The replica's control queue (SockJS forwarding), when on.
    pub forwarding: Option<Arc<Control>>,
    /// Requests other replicas forward here; taken by the transport that
    /// serves them.
    forwarded: Mutex<Option<tokio::sync::mpsc::Receiver<Incoming>>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("connections", &self.connections())
            .field("admitted", &self.admitted())
            .finish_non_exhaustive()
    }
}

/// Sessions admitted, in all and per client address.
#[derive(Debug, Default)]
struct Admitted {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why [`Host::admit`] turned a session away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// `security.max_connections` sessions are open.
    MaxConnections,
    /// `security.max_connections_per_ip` sessions are open from this address.
    PerIp,
}

impl Host {
    pub fn new(
        config: Config,
        driver: Context,
        draining: CancellationToken,
        brokers: BrokerFactory,
    ) -> Host {
        Host {
            config,
            driver,
            draining,
            brokers,
            connections: AtomicUsize::new(0),
            all_closed: Notify::new(),
            admitted: Mutex::new(Admitted::default()),
            forwarding: None,
            forwarded: Mutex::new(None),
        }
    }

    /// Lends the transports the replica's control queue and the requests
    /// it receives (see [`crate::bridge::control`]).
    pub fn with_forwarding(
        mut self,
        control: Arc<Control>,
        requests: tokio::sync::mpsc::Receiver<Incoming>,
    ) -> Host {
        self.forwarding = Some(control);
        self.forwarded = Mutex::new(Some(requests));
        self
    }

    /// The requests forwarded to this replica, once (the transport that
    /// serves them takes them).
    pub fn take_forwarded(&self) -> Option<tokio::sync::mpsc::Receiver<Incoming>> {
        self.forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The broker side of a new session.
    pub fn broker(&self) -> SessionBroker {
        (self.brokers)()
    }

    /// Open connections (sessions running in a driver).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Counts a connection for as long as the guard lives.
    pub fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        crate::metrics::get().connections.increment(1.0);
        ConnectionGuard(Arc::clone(self))
    }

    /// Admits one session from `ip` under the connection limits
    /// (`security.max_connections`, `security.max_connections_per_ip`; 0 is
    /// unlimited). The session counts until the returned guard is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, AdmitError> {
        let ip = ip.to_canonical();
        let security = &self.config.security;
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        if security.max_connections != 0 && admitted.total >= security.max_connections {
            return Err(AdmitError::MaxConnections);
        }
        let from_ip = admitted.per_ip.get(&ip).copied().unwrap_or(0);
        if security.max_connections_per_ip != 0 && from_ip >= security.max_connections_per_ip {
            return Err(AdmitError::PerIp);
        }
        admitted.total += 1;
        admitted.per_ip.insert(ip, from_ip + 1);
        Ok(Admission {
            host: Arc::clone(self),
            ip,
        })
    }

    /// [`Host::admit`], or the HTTP refusal to answer instead (counted in
    /// `stompgate_connections_rejected_total`).
    pub fn admit_or_refuse(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Box<Response>> {
        let metrics = crate::metrics::get();
        self.admit(ip).map_err(|error| match error {
            AdmitError::MaxConnections => {
                metrics.rejected(crate::metrics::RejectReason::MaxConnections);
                Box::new(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections",
                ))
            }
            AdmitError::PerIp => {
                metrics.rejected(crate::metrics::RejectReason::PerIp);
                Box::new(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                ))
            }
        })
    }

    /// Sessions admitted by [`Host::admit`] and not yet released.
    pub fn admitted(&self) -> usize {
        self.admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Waits until every connection closed, at most `limit`.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.all_closed.notified();
            if self.connections() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.connections() == 0;
            }
        }
    }
}

/// Keeps a connection counted; see [`Host::track_connection`].
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Host>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        crate::metrics::get().connections.decrement(1.0);
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Keeps a session admitted; see [`Host::admit`].
#[derive(Debug)]
pub struct Admission {
    host: Arc<Host>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut admitted = self
            .host
            .admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        admitted.total = admitted.total.saturating_sub(1);
        if let Some(n) = admitted.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                admitted.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A refused handshake: `status` with a `text/plain` reason.
pub fn refuse(status: StatusCode, reason: &'static str) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        reason,
    )
        .into_response()
}

/// Whether the handshake's `Origin` (every one, if repeated) is in
/// `allowed`; an empty list allows any, and no `Origin` (non-browser
/// clients) is allowed. Compared ASCII case-insensitively, without a
/// trailing `/`.
pub fn origin_allowed(allowed: &[String], headers: &axum::http::HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    headers
        .get_all(axum::http::header::ORIGIN)
        .iter()
        .all(|origin| match origin.to_str() {
            Ok(origin) => {
                let origin = origin.trim().trim_end_matches('/');
                allowed
                    .iter()
                    .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(origin))
            }
            Err(_) => false,
        })
}

/// A token from `Authorization: Bearer <token>` or `?access_token=<token>`
/// (browsers cannot set headers on a WebSocket handshake).
pub fn handshake_token(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Some(token.trim().to_owned());
        }
    }
    query_value(uri, "access_token")
}

/// The value of query parameter `name` (the first), percent-decoded.
pub fn query_value(uri: &axum::http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes (and `+` as space) of a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
