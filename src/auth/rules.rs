//! Authorization rules: which verbs on which destinations, per identity.
//!
//! Some things are refused whatever the rules say: exchanges named
//! `amq.rabbitmq.*` (the broker's own: tracing, events), and queues named
//! `amq.*` (reserved by AMQP). With no rule configured everything else is
//! allowed, except SEND to another user's `/user/` queue; with rules, only
//! what a rule allows is.

use super::user::{encode_user, UserDestination};
use super::{AuthError, Identity};
use crate::config::RuleConfig;
use crate::stomp::destination::Destination;

/// What a client wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Subscribe,
    Send,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Subscribe => "SUBSCRIBE",
            Verb::Send => "SEND",
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    subscribe: bool,
    send: bool,
    pattern: String,
    queue_arguments: Vec<String>,
}

/// The configured rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    pub fn from_config(config: &[RuleConfig]) -> Rules {
        Rules {
            rules: config
                .iter()
                .map(|r| Rule {
                    subscribe: r.verbs.iter().any(|v| v == "subscribe"),
                    send: r.verbs.iter().any(|v| v == "send"),
                    pattern: r.destination.clone(),
                    queue_arguments: r.queue_arguments.clone(),
                })
                .collect(),
        }
    }

    /// No rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn authorize(
        &self,
        verb: Verb,
        written: &str,
        destination: &Destination,
        identity: &Identity,
        arguments: &[&str],
    ) -> Result<(), AuthError> {
        let forbidden = || AuthError::Forbidden {
            verb: verb.as_str(),
            destination: written.to_owned(),
        };
        if reserved(destination) {
            return Err(forbidden());
        }
        // Reply queues the session was handed are allowed before the rules
        // (see the session); any other needs a rule, even with none configured.
        if matches!(destination, Destination::ReplyQueue { .. })
            && verb == Verb::Send
            && self.rules.is_empty()
        {
            return Err(forbidden());
        }
        // Naming a queue picks whose messages one reads: only by rule.
        if self.rules.is_empty() && arguments.contains(&"x-queue-name") {
            return Err(AuthError::ArgumentForbidden("x-queue-name".to_owned()));
        }
        // Subscribing to one's own user queue needs no rule; anonymous
        // sessions have none.
        match UserDestination::parse(written) {
            Some(Ok(UserDestination::Own { .. })) if verb == Verb::Subscribe => {
                return if identity.user.is_some() && arguments.is_empty() {
                    Ok(())
                } else {
                    Err(forbidden())
                };
            }
            // SEND into one's own user queue harms no one.
            Some(Ok(UserDestination::Other { user, .. }))
                if verb == Verb::Send
                    && self.rules.is_empty()
                    && identity.user.as_deref().map(encode_user).as_deref()
                        == Some(user.as_str()) =>
            {
                return Ok(());
            }
            Some(_) if self.rules.is_empty() => return Err(forbidden()),
            _ => {}
        }
        if self.rules.is_empty() {
            return Ok(());
        }
        let mut matched = false;
        for rule in &self.rules {
            let applies = match verb {
                Verb::Subscribe => rule.subscribe,
                Verb::Send => rule.send,
            };
            if !applies {
                continue;
            }
            let Some(pattern) = expand(&rule.pattern, identity) else {
                continue;
            };
            if !glob_match(&pattern, written) {
                continue;
            }
            matched = true;
            if let Some(arg) = arguments
                .iter()
                .find(|a| !rule.queue_arguments.iter().any(|r| r == *a))
            {
                // Another rule may allow the argument; remember and go on.
                let _ = arg;
                continue;
            }
            return Ok(());
        }
        match (matched, arguments.first()) {
            (true, Some(arg)) => Err(AuthError::ArgumentForbidden((*arg).to_owned())),
            _ => Err(forbidden()),
        }
    }
}

/// The broker's own exchanges, AMQP's reserved queue names and the queues
/// of durable subscriptions (named by the session after its identity).
fn reserved(destination: &Destination) -> bool {
    match destination {
        Destination::Exchange { exchange, .. } => exchange.starts_with("amq.rabbitmq."),
        Destination::Queue { name } | Destination::AmqQueue { name } => {
            name.starts_with("amq.")
                || name.starts_with(crate::stomp::destination::DURABLE_QUEUE_PREFIX)
        }
        Destination::ReplyQueue { name } => {
            name.starts_with(crate::stomp::destination::DURABLE_QUEUE_PREFIX)
        }
        _ => false,
    }
}

/// Replaces `{user}`, `{sub}` and `{claims.NAME}`; `None` when a value is
/// missing or holds a wildcard or a `/` (it could widen the pattern).
fn expand(pattern: &str, identity: &Identity) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        let name = &rest[open + 1..close];
        let value = match name {
            "user" => identity.user.as_deref().map(encode_user)?,
            "sub" => identity.claim_text("sub")?,
            _ => identity.claim_text(name.strip_prefix("claims.")?)?,
        };
        if value.is_empty() || value.contains(['*', '#', '/']) {
            return None;
        }
        out.push_str(&value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `*` matches any run of characters except `/`.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the star take one more character, unless that is a '/'.
            if t[st] == b'/' {
                return false;
            }
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_stops_at_slash() {
        assert!(glob_match("/topic/news.*", "/topic/news.eu"));
        assert!(glob_match("/topic/news.*", "/topic/news."));
        assert!(glob_match("/exchange/orders/u1.*", "/exchange/orders/u1.*"));
        assert!(glob_match("/a/*/c", "/a/b/c"));
        assert!(!glob_match("/a/*/c", "/a/b/x/c"));
        assert!(!glob_match("/topic/news.*", "/topic/sports"));
        assert!(glob_match("/topic/*", "/topic/x"));
        assert!(!glob_match("/topic/*", "/topic/x/y"));
        assert!(glob_match("*", "abc"));
        assert!(!glob_match("abc", "abcd"));
    }

    /// Login-list and RabbitMQ users keep no claims map: their `sub` is
    /// their name, as when it was a claim.
    #[test]
    fn a_login_users_sub_is_its_name() {
        let id = Identity::login("bob");
        assert!(id.claims.is_empty());
        assert_eq!(expand("/x/{sub}", &id).as_deref(), Some("/x/bob"));
        assert_eq!(expand("/x/{claims.sub}", &id).as_deref(), Some("/x/bob"));
        assert_eq!(expand("/x/{claims.other}", &id), None);
        let mut token = Identity::anonymous();
        token.user = Some("bob".into());
        assert_eq!(expand("/x/{sub}", &token), None, "a token without sub");
    }

    #[test]
    fn expansion_refuses_widening_values() {
        let mut id = Identity::anonymous();
        id.user = Some("u.1".into());
        id.claims
            .insert("merchant_id".into(), serde_json::Value::from(42));
        id.claims
            .insert("sub".into(), serde_json::Value::from("u.1"));
        id.claims
            .insert("evil".into(), serde_json::Value::from("#"));
        assert_eq!(
            expand("/topic/merchant.{claims.merchant_id}.orders", &id).as_deref(),
            Some("/topic/merchant.42.orders")
        );
        assert_eq!(expand("/x/{user}", &id).as_deref(), Some("/x/u%2E1"));
        assert_eq!(expand("/x/{sub}", &id).as_deref(), Some("/x/u.1"));
        assert_eq!(expand("/x/{claims.evil}", &id), None);
        assert_eq!(expand("/x/{claims.missing}", &id), None);
        assert_eq!(expand("/x/{unknown}", &id), None);
    }
}
