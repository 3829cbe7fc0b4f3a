//! `auth.mode = "rabbitmq"`: credentials and permissions from RabbitMQ
//! itself, as RabbitMQ's Web-STOMP plugin has them.
//!
//! - **Credentials**: CONNECT's login and passcode open a short-lived AMQP
//!   connection to the selected vhost, closed at once. The broker checks
//!   them with whatever auth backends it has (internal, LDAP, HTTP) and
//!   checks the user's access to the vhost; the gateway never holds a user
//!   list. A refused login is `ACCESS_REFUSED` (bad credentials), a refused
//!   vhost `NOT_ALLOWED`.
//! - **Permissions**: the user's configure/write/read patterns and topic
//!   permissions in the vhost, read from the management HTTP API with the
//!   gateway's own management credentials, and evaluated by
//!   [`super::permissions`] on every SUBSCRIBE and SEND.
//! - **Caches**: login results (good and bad, keyed by login, a salted
//!   SHA-256 of the passcode, and vhost) and permission records are used for
//!   `cache_ttl_ms`, so a reconnect storm costs the broker one login per
//!   user and vhost per TTL. Permission records held by connected sessions
//!   are fetched again every TTL by a background task and swapped in place,
//!   so a revoked permission takes effect for new frames within the TTL.
//!   Both caches are bounded (`cache_max_entries`; records in use by
//!   sessions are never dropped, they cost what the sessions cost anyway).
//!
//! This module does network I/O: the transport calls it when the session
//! asks for it ([`crate::session::Action::Authenticate`]); the session
//! itself stays free of I/O.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use lapin::uri::AMQPUri;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::permissions::{Permissions, PermissionsHandle, TopicPatterns, VhostPatterns};
use super::Identity;
use crate::config::RabbitAuthConfig;

/// What the session asks the transport to check (see
/// [`crate::session::Action::Authenticate`]).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub login: String,
    pub passcode: String,
    pub vhost: String,
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRequest")
            .field("login", &self.login)
            .field("passcode", &"<hidden>")
            .field("vhost", &self.vhost)
            .finish()
    }
}

/// Why RabbitMQ did not let a CONNECT in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RabbitRefusal {
    /// The broker refused the login (`ACCESS_REFUSED`).
    #[error("bad login or passcode")]
    BadCredentials,
    /// The user may not use the vhost, or it does not exist (`NOT_ALLOWED`).
    #[error("no access to the virtual host")]
    VhostDenied,
    /// The broker or its management API could not be asked (not cached).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of one AMQP login, as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    Accepted,
    BadCredentials,
    VhostDenied,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LoginKey {
    login: String,
    passcode_digest: [u8; 32],
    vhost: String,
}

/// Credentials and permissions from RabbitMQ, with their caches.
#[derive(Debug)]
pub struct RabbitAuth {
    config: RabbitAuthConfig,
    /// The broker's AMQP URLs (the gateway's); credentials and vhost are
    /// replaced for each login.
    amqp_urls: Vec<String>,
    salt: [u8; 16],
    logins: Mutex<HashMap<LoginKey, (Instant, Login)>>,
    permissions: Mutex<HashMap<(String, String), (Instant, PermissionsHandle)>>,
    logins_made: AtomicU64,
    fetches_made: AtomicU64,
}

impl RabbitAuth {
    /// The service, and its background refresh of permission records in
    /// use (which ends when the service is dropped).
    pub fn start(config: RabbitAuthConfig, amqp_urls: Vec<String>) -> Arc<RabbitAuth> {
        let auth = Arc::new(RabbitAuth {
            config,
            amqp_urls,
            salt: rand::random(),
            logins: Mutex::new(HashMap::new()),
            permissions: Mutex::new(HashMap::new()),
            logins_made: AtomicU64::new(0),
            fetches_made: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&auth);
        let every = auth.ttl().max(Duration::from_millis(100)) / 2;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(auth) = weak.upgrade() else { return };
                auth.refresh().await;
            }
        });
        auth
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.cache_ttl_ms)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// AMQP logins made so far (cache misses).
    pub fn logins_made(&self) -> u64 {
        self.logins_made.load(Ordering::Relaxed)
    }

    /// Permission records fetched so far.
    pub fn fetches_made(&self) -> u64 {
        self.fetches_made.load(Ordering::Relaxed)
    }

    /// Checks `request` with RabbitMQ (or the cache) and returns the
    /// session's identity, with the permissions it must enforce.
    pub async fn authenticate(&self, request: &AuthRequest) -> Result<Identity, RabbitRefusal> {
        let key = LoginKey {
            login: request.login.clone(),
            passcode_digest: Sha256::new()
                .chain_update(self.salt)
                .chain_update(request.passcode.as_bytes())
                .finalize()
                .into(),
            vhost: request.vhost.clone(),
        };
        let cached = lock(&self.logins)
            .get(&key)
            .filter(|(at, _)| at.elapsed() < self.ttl())
            .map(|(_, outcome)| *outcome);
        let outcome = match cached {
            Some(outcome) => outcome,
            None => {
                let outcome = self.login(request).await?;
                let mut logins = lock(&self.logins);
                if logins.len() >= self.config.cache_max_entries {
                    let ttl = self.ttl();
                    logins.retain(|_, (at, _)| at.elapsed() < ttl);
                    if logins.len() >= self.config.cache_max_entries {
                        logins.clear();
                    }
                }
                logins.insert(key, (Instant::now(), outcome));
                outcome
            }
        };
        match outcome {
            Login::Accepted => {}
            Login::BadCredentials => return Err(RabbitRefusal::BadCredentials),
            Login::VhostDenied => return Err(RabbitRefusal::VhostDenied),
        }
        let permissions = self
            .permissions_of(&request.login, &request.vhost)
            .await
            .map_err(RabbitRefusal::Unavailable)?;
        Ok(Identity {
            permissions: Some(permissions),
            ..Identity::login(&request.login)
        })
    }

    /// One AMQP login with the client's credentials, closed at once.
    async fn login(&self, request: &AuthRequest) -> Result<Login, RabbitRefusal> {
        let mut last = String::from("no AMQP URL");
        for url in &self.amqp_urls {
            let mut uri = AMQPUri::from_str(url).map_err(RabbitRefusal::Unavailable)?;
            uri.authority.userinfo.username = request.login.clone();
            uri.authority.userinfo.password = request.passcode.clone();
            uri.vhost = request.vhost.clone();
            self.logins_made.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().rabbitmq_logins.increment(1);
            let props = lapin::ConnectionProperties::default()
                .with_connection_name("stompgate-auth-check".into());
            let attempt =
                tokio::time::timeout(self.timeout(), lapin::Connection::connect_uri(uri, props))
                    .await;
            match attempt {
                Ok(Ok(connection)) => {
                    let _ = connection.close(200, "stompgate login check".into()).await;
                    return Ok(Login::Accepted);
                }
                Ok(Err(error)) => {
                    let text = format!("{error} {error:?}");
                    if text.contains("ACCESS_REFUSED") || text.contains("403") {
                        return Ok(Login::BadCredentials);
                    }
                    if text.contains("NOT_ALLOWED") || text.contains("530") {
                        return Ok(Login::VhostDenied);
                    }
                    tracing::warn!(%error, "RabbitMQ login check failed");
                    last = error.to_string();
                }
                Err(_) => last = format!("no answer within {} ms", self.config.timeout_ms),
            }
        }
        Err(RabbitRefusal::Unavailable(last))
    }

    /// The shared permission record of `user` in `vhost`, fetched when
    /// there is none younger than the TTL.
    async fn permissions_of(&self, user: &str, vhost: &str) -> Result<PermissionsHandle, String> {
        let key = (user.to_owned(), vhost.to_owned());
        if let Some((at, handle)) = lock(&self.permissions).get(&key) {
            if at.elapsed() < self.ttl() {
                return Ok(handle.clone());
            }
        }
        let fresh = self.fetch(user, vhost).await?;
        let mut records = lock(&self.permissions);
        if let Some((at, handle)) = records.get_mut(&key) {
            // Sessions already hold this record: update it in place.
            handle.replace(fresh);
            *at = Instant::now();
            return Ok(handle.clone());
        }
        if records.len() >= self.config.cache_max_entries {
            records.retain(|_, (_, handle)| handle.in_use());
        }
        let handle = PermissionsHandle::new(fresh);
        records.insert(key, (Instant::now(), handle.clone()));
        Ok(handle)
    }

    /// Fetches again the records sessions hold whose TTL ran out; forgets
    /// the others once they are stale.
    async fn refresh(&self) {
        let ttl = self.ttl();
        let due: Vec<(String, String)> = {
            let mut records = lock(&self.permissions);
            records.retain(|_, (at, handle)| handle.in_use() || at.elapsed() < ttl);
            records
                .iter()
                .filter(|(_, (at, handle))| handle.in_use() && at.elapsed() >= ttl)
                .map(|(key, _)| key.clone())
                .collect()
        };
        for (user, vhost) in due {
            match self.fetch(&user, &vhost).await {
                Ok(fresh) => {
                    if let Some((at, handle)) = lock(&self.permissions).get_mut(&(user, vhost)) {
                        handle.replace(fresh);
                        *at = Instant::now();
                    }
                }
                // The old record stays in force until the API answers.
                Err(error) => tracing::warn!(%error, "refreshing RabbitMQ permissions failed"),
            }
        }
    }

    /// Reads the user's permissions in `vhost` from the management API.
    async fn fetch(&self, user: &str, vhost: &str) -> Result<Permissions, String> {
        self.fetches_made.fetch_add(1, Ordering::Relaxed);
        crate::metrics::get()
            .rabbitmq_permission_fetches
            .increment(1);
        let (v, u) = (encode_segment(vhost), encode_segment(user));
        let vhost_patterns = self
            .get(&format!("/api/permissions/{v}/{u}"))
            .await?
            .map(|value| VhostPatterns {
                configure: string_field(&value, "configure"),
                write: string_field(&value, "write"),
                read: string_field(&value, "read"),
            });
        let topic: Vec<TopicPatterns> =
            match self.get(&format!("/api/topic-permissions/{v}/{u}")).await? {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| TopicPatterns {
                        exchange: string_field(item, "exchange"),
                        write: string_field(item, "write"),
                        read: string_field(item, "read"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
        // Topic permissions apply to topic exchanges only: ask the types of
        // the (few) exchanges that have some.
        let mut topic_exchanges = Vec::new();
        for t in &topic {
            if t.exchange == "amq.topic" {
                continue;
            }
            let path = format!("/api/exchanges/{v}/{}", encode_segment(&t.exchange));
            if let Some(x) = self.get(&path).await? {
                if x.get("type").and_then(Value::as_str) == Some("topic") {
                    topic_exchanges.push(t.exchange.clone());
                }
            }
        }
        Ok(Permissions::new(
            user,
            vhost,
            vhost_patterns.as_ref(),
            &topic,
            topic_exchanges,
        ))
    }

    /// `GET path` on the management API: the JSON body, `None` for 404.
    async fn get(&self, path: &str) -> Result<Option<Value>, String> {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.config.management_user, self.config.management_password
        ));
        tokio::time::timeout(
            self.timeout(),
            http_get(&self.config.management_url, path, &credentials),
        )
        .await
        .map_err(|_| {
            format!(
                "management API: no answer within {} ms",
                self.config.timeout_ms
            )
        })?
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn string_field(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Percent-encodes a path segment (everything but RFC 3986's unreserved
/// characters): the vhost `/` is `%2F`.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal HTTP/1.1 GET (`Connection: close`) with Basic credentials:
/// the management API is a local, plain-HTTP service, and this avoids a
/// full HTTP client for three requests.
async fn http_get(base: &str, path: &str, credentials: &str) -> Result<Option<Value>, String> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("management URL '{base}' is not http://"))?;
    let (authority, prefix) = match rest.split_once('/') {
        Some((authority, prefix)) => (authority, format!("/{}", prefix.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let prefix = if prefix == "/" { String::new() } else { prefix };
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| format!("management API at {address}: {e}"))?;
    let request = format!(
        "GET {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Basic {credentials}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("management API: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("management API: {e}"))?;
    parse_response(&response)
}

/// Status and JSON body of an HTTP/1.1 response (`Content-Length`, chunked,
/// or up to the close).
fn parse_response(response: &[u8]) -> Result<Option<Value>, String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("management API: truncated response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let mut body = &response[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("management API: no status")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let decoded;
    if chunked {
        decoded = dechunk(body)?;
        body = &decoded;
    }
    match status {
        200 => serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| format!("management API: bad JSON: {e}")),
        404 => Ok(None),
        401 | 403 => Err(format!(
            "management API refused the gateway's credentials (HTTP {status})"
        )),
        other => Err(format!("management API: HTTP {other}")),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("management API: bad chunk")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "management API: bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("management API: truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("/"), "%2F");
        assert_eq!(encode_segment("a b/c.d"), "a%20b%2Fc.d");
    }

    #[test]
    fn responses_with_length_chunks_or_404() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n{\"read\":\".*\"}";
        assert_eq!(
            parse_response(plain).unwrap(),
            Some(serde_json::json!({"read": ".*"}))
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            Some(serde_json::json!([1, 2]))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n{}").unwrap(),
            None
        );
        assert!(parse_response(b"HTTP/1.1 401 Unauthorized\r\n\r\n").is_err());
    }
}
