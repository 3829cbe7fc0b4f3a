//! Who may connect, and what they may do.
//!
//! Authentication happens on CONNECT, from (in this order) a login/passcode
//! pair of the configured user list, a JWT (in CONNECT's `passcode`, as
//! RabbitMQ's OAuth 2 support takes it, or from the WebSocket handshake's
//! `Authorization: Bearer` header or `access_token` query parameter), or
//! anonymously when that is explicitly enabled. Authorization is a list of
//! rules per verb and destination pattern, evaluated against the session's
//! identity; when any rule is configured, whatever no rule allows is denied.
//!
//! All of it is pure computation (signature checks, pattern matching), so
//! the session state machine calls it directly, except `auth.mode =
//! "rabbitmq"` ([`rabbit`]): there RabbitMQ checks the credentials over the
//! network, which the transport does when the session asks for it, and the
//! session enforces the user's RabbitMQ permissions ([`permissions`], pure)
//! on top of the rules.

mod jwt;
pub mod permissions;
pub mod rabbit;
mod rules;
pub mod user;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{AuthConfig, AuthMode, UserConfig};
use crate::stomp::destination::Destination;

pub use jwt::JwtVerifier;
pub use rules::{Rules, Verb};

/// Who a session is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The user's name; `None` for anonymous sessions.
    pub user: Option<String>,
    /// The token's claims (none for users from the login list or RabbitMQ:
    /// their `sub` is `user`, see [`Identity::claim_text`]).
    pub claims: Map<String, Value>,
    /// `sub` is the user's name (login-list and RabbitMQ users), without a
    /// claims map per session (a one-entry map costs about 600 bytes).
    pub sub_is_user: bool,
    /// When the credentials expire (seconds since the Unix epoch).
    pub expires_at: Option<u64>,
    /// `auth.mode = "rabbitmq"`: the user's RabbitMQ permissions in the
    /// session's vhost, enforced on every SUBSCRIBE and SEND.
    pub permissions: Option<permissions::PermissionsHandle>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            user: None,
            claims: Map::new(),
            sub_is_user: false,
            expires_at: None,
            permissions: None,
        }
    }

    /// A user from the login list or RabbitMQ: its `sub` is its name.
    pub fn login(user: &str) -> Identity {
        Identity {
            user: Some(user.to_owned()),
            sub_is_user: true,
            ..Identity::anonymous()
        }
    }

    /// A claim as text (strings and numbers; `None` for other values and
    /// missing claims).
    pub fn claim_text(&self, name: &str) -> Option<String> {
        match self.claims.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => None,
            None if name == "sub" && self.sub_is_user => self.user.clone(),
            None => None,
        }
    }
}

/// Why a client was refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("access refused: authentication required")]
    Required,
    #[error("access refused: bad login or passcode")]
    BadLogin,
    #[error("access refused: token expired")]
    Expired,
    #[error("access refused: invalid token ({0})")]
    InvalidToken(String),
    #[error("access refused: {verb} on '{destination}' is not allowed")]
    Forbidden {
        verb: &'static str,
        destination: String,
    },
    #[error("access refused: queue argument '{0}' is not allowed")]
    ArgumentForbidden(String),
}

/// Why the auth configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[error("auth configuration: {0}")]
pub struct AuthConfigError(pub String);

/// Authentication and authorization, built once from the configuration.
#[derive(Debug)]
pub struct Auth {
    /// `auth.mode`: who checks credentials.
    pub mode: AuthMode,
    anonymous: bool,
    jwt: Option<JwtVerifier>,
    users: Vec<UserConfig>,
    rules: Rules,
    /// Exchange of `/user/` destinations.
    pub user_exchange: String,
    /// `auth.rabbitmq.default_login` / `default_passcode`: the credentials
    /// of a CONNECT that has none (mode `rabbitmq` only).
    pub rabbit_default_login: Option<String>,
    pub rabbit_default_passcode: Option<String>,
}

impl Auth {
    pub fn from_config(config: &AuthConfig) -> Result<Arc<Auth>, AuthConfigError> {
        let jwt = config
            .jwt
            .as_ref()
            .map(JwtVerifier::from_config)
            .transpose()?;
        Ok(Arc::new(Auth {
            mode: config.mode,
            anonymous: config.anonymous,
            jwt,
            users: config.users.clone(),
            rules: Rules::from_config(&config.rules),
            user_exchange: config.user_exchange.clone(),
            rabbit_default_login: config.rabbitmq.default_login.clone(),
            rabbit_default_passcode: config.rabbitmq.default_passcode.clone(),
        }))
    }

    /// Anyone may connect and do anything (tests, the demo).
    pub fn open() -> Arc<Auth> {
        Arc::new(Auth {
            mode: AuthMode::Gateway,
            anonymous: true,
            jwt: None,
            users: Vec::new(),
            rules: Rules::default(),
            user_exchange: "stompgate.user".to_owned(),
            rabbit_default_login: None,
            rabbit_default_passcode: None,
        })
    }

    /// Authenticates a CONNECT at `now` (seconds since the Unix epoch).
    pub fn authenticate(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        handshake_token: Option<&str>,
        now: u64,
    ) -> Result<Identity, AuthError> {
        if let Some(login) = login.filter(|l| !l.is_empty()) {
            if let Some(user) = self.users.iter().find(|u| u.login == login) {
                return if constant_time_eq(
                    user.passcode.as_bytes(),
                    passcode.unwrap_or("").as_bytes(),
                ) {
                    Ok(Identity::login(login))
                } else {
                    Err(AuthError::BadLogin)
                };
            }
        }
        if let Some(jwt) = &self.jwt {
            let token = passcode
                .filter(|p| looks_like_jwt(p))
                .or(handshake_token.filter(|t| !t.is_empty()));
            if let Some(token) = token {
                return jwt.verify(token, now);
            }
        }
        if self.anonymous {
            return Ok(Identity::anonymous());
        }
        if login.is_some_and(|l| !l.is_empty()) || passcode.is_some_and(|p| !p.is_empty()) {
            return Err(AuthError::BadLogin);
        }
        Err(AuthError::Required)
    }

    /// Verifies a refreshed token for a connected session at `now`.
    pub fn refresh(
        &self,
        current: &Identity,
        token: &str,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let jwt = self
            .jwt
            .as_ref()
            .ok_or_else(|| AuthError::InvalidToken("no JWT keys configured".into()))?;
        let next = jwt.verify(token, now)?;
        if next.user != current.user {
            return Err(AuthError::InvalidToken(
                "the new token names another user".into(),
            ));
        }
        Ok(next)
    }

    /// May `identity` do `verb` on `destination` (as the client wrote it,
    /// and parsed), setting the queue arguments `arguments`?
    pub fn authorize(
        &self,
        verb: Verb,
        written: &str,
        destination: &Destination,
        identity: &Identity,
        arguments: &[&str],
    ) -> Result<(), AuthError> {
        // The user exchange is reached only through `/user/` forms (which
        // the session resolves to it, with the user's own routing key),
        // whatever the rules say.
        if let Destination::Exchange { exchange, .. } = destination {
            if self.reserved_exchange(exchange) && user::UserDestination::parse(written).is_none() {
                return Err(AuthError::Forbidden {
                    verb: verb.as_str(),
                    destination: written.chars().take(100).collect(),
                });
            }
        }
        // With RabbitMQ's users, RabbitMQ's permissions decide which queue
        // `x-queue-name` may name (checked by the session as Web-STOMP's
        // declare, bind and consume would be); rules, when there are any,
        // still have to list it.
        if self.mode == AuthMode::Rabbitmq && self.rules.is_empty() {
            let arguments: Vec<&str> = arguments
                .iter()
                .copied()
                .filter(|a| *a != "x-queue-name")
                .collect();
            return self
                .rules
                .authorize(verb, written, destination, identity, &arguments);
        }
        self.rules
            .authorize(verb, written, destination, identity, arguments)
    }

    /// Exchanges the gateway reserves for itself: the `/user/` exchange.
    pub fn reserved_exchange(&self, exchange: &str) -> bool {
        exchange == self.user_exchange
    }
}

/// Seconds since the Unix epoch, from the wall clock (the callers of
/// [`Auth::authenticate`] pass it in; tests pass their own).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Three base64url parts separated by dots.
fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && s.len() > 20
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
