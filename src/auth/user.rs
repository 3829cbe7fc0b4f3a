//! `/user/` destinations: push to a user, wherever their sessions are.
//!
//! A session of user U that subscribes to `/user/queue/<name>` is bound
//! (through the gateway's fan-out, one queue per replica) to the user
//! exchange with routing key `<U>.<name>`. A backend that wants to reach U
//! publishes there; every session of U on every replica receives it, and no
//! registry of who is connected where exists. In routing keys and in
//! `/user/<U>/queue/<name>` (SEND, by rule only) U is percent-encoded for
//! `.`, `*`, `#`, `/` and `%`.

/// A parsed `/user/` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDestination {
    /// `/user/queue/<name>`: the session's own user queue (SUBSCRIBE).
    Own { name: String },
    /// `/user/<user>/queue/<name>`: another user's queue (SEND); `user`
    /// as written (percent-encoded).
    Other { user: String, name: String },
}

impl UserDestination {
    /// `None` when `s` is not a `/user/` destination; `Some(Err)` when it is
    /// one but malformed.
    pub fn parse(s: &str) -> Option<Result<UserDestination, String>> {
        let rest = s.strip_prefix("/user/")?;
        let bad = || {
            format!("malformed user destination '{s}': expected /user/queue/<name> or /user/<user>/queue/<name>")
        };
        if let Some(name) = rest.strip_prefix("queue/") {
            if name.is_empty() || name.contains('/') {
                return Some(Err(bad()));
            }
            return Some(Ok(UserDestination::Own {
                name: name.to_owned(),
            }));
        }
        let Some((user, tail)) = rest.split_once('/') else {
            return Some(Err(bad()));
        };
        match tail.strip_prefix("queue/") {
            Some(name) if !user.is_empty() && !name.is_empty() && !name.contains('/') => {
                Some(Ok(UserDestination::Other {
                    user: user.to_owned(),
                    name: name.to_owned(),
                }))
            }
            _ => Some(Err(bad())),
        }
    }

    /// The routing key on the user exchange, for the session's `user`.
    pub fn routing_key(&self, own_user: &str) -> String {
        match self {
            UserDestination::Own { name } => format!("{}.{name}", encode_user(own_user)),
            UserDestination::Other { user, name } => format!("{user}.{name}"),
        }
    }
}

/// Percent-encodes the characters that mean something in routing keys and
/// destinations.
pub fn encode_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for c in user.chars() {
        match c {
            '.' => out.push_str("%2E"),
            '*' => out.push_str("%2A"),
            '#' => out.push_str("%23"),
            '/' => out.push_str("%2F"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            UserDestination::parse("/user/queue/orders"),
            Some(Ok(UserDestination::Own {
                name: "orders".into()
            }))
        );
        assert_eq!(
            UserDestination::parse("/user/alice%2Eb/queue/orders"),
            Some(Ok(UserDestination::Other {
                user: "alice%2Eb".into(),
                name: "orders".into()
            }))
        );
        assert_eq!(UserDestination::parse("/topic/x"), None);
        assert!(matches!(
            UserDestination::parse("/user/queue/"),
            Some(Err(_))
        ));
        assert!(matches!(UserDestination::parse("/user/bob"), Some(Err(_))));
        assert!(matches!(
            UserDestination::parse("/user/bob/topic/x"),
            Some(Err(_))
        ));
    }

    #[test]
    fn routing_keys_encode_the_user() {
        let own = UserDestination::Own { name: "n".into() };
        assert_eq!(own.routing_key("a.b*c#d/e%f"), "a%2Eb%2Ac%23d%2Fe%25f.n");
        let other = UserDestination::Other {
            user: "x%2Ey".into(),
            name: "n".into(),
        };
        assert_eq!(other.routing_key("ignored"), "x%2Ey.n");
    }
}
