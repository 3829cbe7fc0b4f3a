//! RabbitMQ's permissions, evaluated in the gateway exactly as the broker
//! evaluates them (`auth.mode = "rabbitmq"`).
//!
//! The gateway publishes and consumes on its own AMQP connections, so the
//! broker never sees the browser's user: the gateway has to ask, for every
//! SUBSCRIBE and SEND, what RabbitMQ would have asked on a connection of
//! that user. [`checks`] lists those questions for each STOMP destination
//! form: the resource checks that the AMQP operations of RabbitMQ's own
//! STOMP plugin (`rabbit_stomp_processor`, `rabbit_routing_util`) trigger in
//! `rabbit_channel`, in the order it makes them. [`Permissions::check`]
//! answers them as `rabbit_auth_backend_internal` does: an unanchored
//! regular-expression match (`re:run`), an empty pattern meaning `^$`, the
//! default exchange checked as `amq.default`, topic permissions only on
//! topic exchanges and allowed when none is defined for that exchange, with
//! `{username}` and `{vhost}` expanded in topic patterns (STOMP's variable
//! map: `{client_id}` is MQTT's and stays as written). Refusals carry the
//! text RabbitMQ writes.
//!
//! Pure code: the records come from the management API (see
//! [`super::rabbit`]) and are swapped in a shared [`PermissionsHandle`] that
//! sessions read on every frame, so a revoked permission takes effect for
//! the next frame after the refresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use regex::Regex;

use super::Verb;
use crate::stomp::destination::Destination;

/// RabbitMQ's three permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Configure,
    Write,
    Read,
}

/// The kinds of resource a permission is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Queue,
    Exchange,
}

impl ResourceKind {
    fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Exchange => "exchange",
        }
    }
}

/// One question RabbitMQ would ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `check_resource_access` on a queue or exchange.
    Resource {
        kind: ResourceKind,
        name: String,
        permission: Permission,
    },
    /// `check_topic_access` of a routing key on an exchange (write on
    /// publish, read on bind). `explicit`: the check Web-STOMP makes itself
    /// before a `/topic` SUBSCRIBE, whose refusal it reports without the
    /// `ACCESS_REFUSED - ` prefix of a channel error.
    Topic {
        exchange: String,
        routing_key: String,
        permission: Permission,
        explicit: bool,
    },
}

/// A user's vhost permission patterns, as RabbitMQ stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhostPatterns {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's topic permission on one exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicPatterns {
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// A compiled pattern; `None` never matches (RabbitMQ fails the check when
/// `re:run` cannot compile the pattern).
#[derive(Debug, Clone)]
struct Pattern(Option<Regex>);

impl Pattern {
    fn new(pattern: &str) -> Pattern {
        // As rabbit_auth_backend_internal: <<"">> is <<"^$">>.
        let pattern = if pattern.is_empty() { "^$" } else { pattern };
        Pattern(Regex::new(&pcre_braces(pattern)).ok())
    }

    /// Unanchored, as `re:run(Subject, Pattern, [{capture, none}])`.
    fn matches(&self, subject: &str) -> bool {
        self.0.as_ref().is_some_and(|re| re.is_match(subject))
    }
}

/// PCRE (RabbitMQ's `re`) reads a `{` that does not start a quantifier
/// (`{2}`, `{2,}`, `{2,5}`) as a literal brace, as in a topic pattern whose
/// `{client_id}` is not expanded; Rust's regex refuses it. Such braces are
/// escaped so that the pattern means what it means to RabbitMQ.
fn pcre_braces(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            }
            '{' if !is_quantifier(&pattern[at + 1..]) => out.push_str("\\{"),
            '}' => {
                // A quantifier's closing brace was pushed with it below.
                out.push_str("\\}");
            }
            '{' => {
                // `{n}`, `{n,}` or `{n,m}`: copied as it is.
                out.push('{');
                for (_, q) in chars.by_ref() {
                    out.push(q);
                    if q == '}' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `rest` (after a `{`) is `n}`, `n,}` or `n,m}`.
fn is_quantifier(rest: &str) -> bool {
    let Some(end) = rest.find('}') else {
        return false;
    };
    let body = &rest[..end];
    let (min, max) = match body.split_once(',') {
        Some((min, max)) => (min, Some(max)),
        None => (body, None),
    };
    !min.is_empty()
        && min.bytes().all(|b| b.is_ascii_digit())
        && max.is_none_or(|m| m.bytes().all(|b| b.is_ascii_digit()))
}

/// The permissions of one user in one vhost, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Permissions {
    user: String,
    vhost: String,
    /// `None`: the user has no permissions in the vhost (every check fails).
    vhost_patterns: Option<[Pattern; 3]>,
    /// Exchange -> (write, read), expanded and compiled.
    topic: HashMap<String, (Pattern, Pattern)>,
    /// Exchanges known to be of type topic (topic permissions apply only
    /// to those).
    topic_exchanges: HashSet<String>,
}

impl Permissions {
    /// `topic_exchanges`: which exchanges that have topic permissions are of
    /// type topic (`amq.topic` always is).
    pub fn new(
        user: &str,
        vhost: &str,
        vhost_patterns: Option<&VhostPatterns>,
        topic: &[TopicPatterns],
        topic_exchanges: impl IntoIterator<Item = String>,
    ) -> Permissions {
        let expand = |pattern: &str| {
            // binary:replace, as expand_topic_permission: no escaping.
            pattern
                .replace("{username}", user)
                .replace("{vhost}", vhost)
        };
        let mut exchanges: HashSet<String> = topic_exchanges.into_iter().collect();
        exchanges.insert("amq.topic".to_owned());
        Permissions {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            vhost_patterns: vhost_patterns.map(|p| {
                [
                    Pattern::new(&p.configure),
                    Pattern::new(&p.write),
                    Pattern::new(&p.read),
                ]
            }),
            topic: topic
                .iter()
                .map(|t| {
                    (
                        t.exchange.clone(),
                        (
                            Pattern::new(&expand(&t.write)),
                            Pattern::new(&expand(&t.read)),
                        ),
                    )
                })
                .collect(),
            topic_exchanges: exchanges,
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Answers one check; `Err` holds RabbitMQ's refusal text.
    pub fn check(&self, check: &Check) -> Result<(), Refused> {
        match check {
            Check::Resource {
                kind,
                name,
                permission,
            } => {
                // check_resource_access: the default exchange is amq.default.
                let name = if *kind == ResourceKind::Exchange && name.is_empty() {
                    "amq.default"
                } else {
                    name.as_str()
                };
                let allowed = self.vhost_patterns.as_ref().is_some_and(|p| {
                    let index = match permission {
                        Permission::Configure => 0,
                        Permission::Write => 1,
                        Permission::Read => 2,
                    };
                    p[index].matches(name)
                });
                if allowed {
                    Ok(())
                } else {
                    Err(Refused {
                        text: format!(
                            "access to {} '{name}' in vhost '{}' refused for user '{}'",
                            kind.as_str(),
                            self.vhost,
                            self.user
                        ),
                        channel_error: true,
                    })
                }
            }
            Check::Topic {
                exchange,
                routing_key,
                permission,
                explicit,
            } => {
                if !self.topic_exchanges.contains(exchange) {
                    return Ok(());
                }
                let Some((write, read)) = self.topic.get(exchange) else {
                    return Ok(());
                };
                let pattern = if *permission == Permission::Read {
                    read
                } else {
                    write
                };
                if pattern.matches(routing_key) {
                    Ok(())
                } else {
                    Err(Refused {
                        text: format!(
                            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
                            self.vhost, self.user
                        ),
                        channel_error: !explicit,
                    })
                }
            }
        }
    }

    /// Answers `checks` in order; the first refusal wins.
    pub fn check_all(&self, checks: &[Check]) -> Result<(), Refused> {
        checks.iter().try_for_each(|c| self.check(c))
    }
}

/// A refused check: RabbitMQ's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub text: String,
    /// Reported by Web-STOMP as a channel error (`ACCESS_REFUSED - ` before
    /// the text); otherwise the bare text.
    pub channel_error: bool,
}

impl Refused {
    /// The body of the ERROR frame (its `message` is `access_refused`).
    pub fn body(&self) -> String {
        if self.channel_error {
            format!("ACCESS_REFUSED - {}", self.text)
        } else {
            self.text.clone()
        }
    }
}

/// The permissions a session enforces, replaced in place when they are
/// fetched again (shared by the sessions of one user in one vhost).
#[derive(Clone)]
pub struct PermissionsHandle(Arc<RwLock<Arc<Permissions>>>);

impl PermissionsHandle {
    pub fn new(permissions: Permissions) -> PermissionsHandle {
        PermissionsHandle(Arc::new(RwLock::new(Arc::new(permissions))))
    }

    /// The permissions as last fetched.
    pub fn current(&self) -> Arc<Permissions> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn replace(&self, permissions: Permissions) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(permissions);
    }

    /// Whether anything besides the cache holds this handle (a session).
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

impl std::fmt::Debug for PermissionsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current();
        write!(f, "PermissionsHandle({}@{})", current.user, current.vhost)
    }
}

impl PartialEq for PermissionsHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a SUBSCRIBE or SEND does, as far as permissions go.
#[derive(Debug, Clone)]
pub struct Operation<'a> {
    pub verb: Verb,
    pub destination: &'a Destination,
    /// SUBSCRIBE to `/topic` or `/exchange`: the queue Web-STOMP declares,
    /// binds and consumes (`x-queue-name`, the durable subscription's
    /// queue, or a `stomp-subscription-*` name).
    pub subscription_queue: Option<String>,
    /// SEND with `reply-to:/temp-queue/...` that creates the reply queue
    /// (a server-named `amq.gen-*` queue, declared and consumed).
    pub new_reply_queue: bool,
}

/// The checks RabbitMQ makes for `op` on a connection of the user, in its
/// order (see docs/security.md for the table).
pub fn checks(op: &Operation<'_>) -> Vec<Check> {
    let queue = |name: &str, permission| Check::Resource {
        kind: ResourceKind::Queue,
        name: name.to_owned(),
        permission,
    };
    let exchange = |name: &str, permission| Check::Resource {
        kind: ResourceKind::Exchange,
        name: name.to_owned(),
        permission,
    };
    let topic = |exchange: &str, key: &str, permission, explicit| Check::Topic {
        exchange: exchange.to_owned(),
        routing_key: key.to_owned(),
        permission,
        explicit,
    };
    let mut out = Vec::new();
    match (op.verb, op.destination) {
        (Verb::Subscribe, Destination::Queue { name }) => {
            out.push(queue(name, Permission::Configure));
            out.push(queue(name, Permission::Read));
        }
        (Verb::Subscribe, Destination::AmqQueue { name }) => {
            out.push(queue(name, Permission::Read));
        }
        (Verb::Subscribe, Destination::Topic { .. } | Destination::Exchange { .. }) => {
            let (x, key) = match op.destination {
                Destination::Topic { key } => ("amq.topic", key.as_str()),
                Destination::Exchange {
                    exchange,
                    routing_key,
                } => (exchange.as_str(), routing_key.as_str()),
                _ => ("", ""),
            };
            if matches!(op.destination, Destination::Topic { .. }) {
                // check_subscription_access, before anything is declared.
                out.push(topic(x, key, Permission::Read, true));
            }
            let q = op
                .subscription_queue
                .as_deref()
                .unwrap_or("stomp-subscription-");
            // queue.declare, basic.consume, then queue.bind.
            out.push(queue(q, Permission::Configure));
            out.push(queue(q, Permission::Read));
            out.push(queue(q, Permission::Write));
            out.push(exchange(x, Permission::Read));
            out.push(topic(x, key, Permission::Read, false));
        }
        (Verb::Subscribe, Destination::TempQueue { .. } | Destination::ReplyQueue { .. }) => {}
        (Verb::Send, destination) => {
            // ensure_endpoint(dest, ...): /queue is declared.
            if let Destination::Queue { name } = destination {
                out.push(queue(name, Permission::Configure));
            }
            // ensure_reply_to: a new reply queue is declared and consumed.
            if op.new_reply_queue {
                out.push(queue(REPLY_QUEUE_PLACEHOLDER, Permission::Configure));
                out.push(queue(REPLY_QUEUE_PLACEHOLDER, Permission::Read));
            }
            // basic.publish.
            let (x, key) = match destination {
                Destination::Exchange {
                    exchange,
                    routing_key,
                } => (exchange.as_str(), routing_key.as_str()),
                Destination::Topic { key } => ("amq.topic", key.as_str()),
                Destination::Queue { name }
                | Destination::AmqQueue { name }
                | Destination::ReplyQueue { name }
                | Destination::TempQueue { name } => ("", name.as_str()),
            };
            out.push(exchange(x, Permission::Write));
            out.push(topic(x, key, Permission::Write, false));
        }
    }
    out
}

/// The name a reply queue is checked under: RabbitMQ names it
/// `amq.gen-<random>`, unknown before it is declared.
pub const REPLY_QUEUE_PLACEHOLDER: &str = "amq.gen-stompgate";

/// A `stomp-subscription-*` name for the queue Web-STOMP would declare for
/// a non-durable `/topic` or `/exchange` subscription (random there; a
/// digest of the destination and id here, so patterns such as
/// `^stomp-subscription-` match it as they match RabbitMQ's).
pub fn transient_subscription_queue(destination: &str, id: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (destination, id).hash(&mut hasher);
    format!("stomp-subscription-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(configure: &str, write: &str, read: &str) -> Permissions {
        Permissions::new(
            "alice",
            "/",
            Some(&VhostPatterns {
                configure: configure.into(),
                write: write.into(),
                read: read.into(),
            }),
            &[],
            [],
        )
    }

    fn resource(kind: ResourceKind, name: &str, permission: Permission) -> Check {
        Check::Resource {
            kind,
            name: name.into(),
            permission,
        }
    }

    fn topic(exchange: &str, key: &str, permission: Permission) -> Check {
        Check::Topic {
            exchange: exchange.into(),
            routing_key: key.into(),
            permission,
            explicit: false,
        }
    }

    #[test]
    fn patterns_match_unanchored_as_re_run() {
        let p = perms("", "orders", "^q-");
        let q = |name| resource(ResourceKind::Queue, name, Permission::Read);
        let x = |name| resource(ResourceKind::Exchange, name, Permission::Write);
        assert!(p.check(&x("orders")).is_ok());
        assert!(p.check(&x("my-orders-2")).is_ok(), "unanchored");
        assert!(p.check(&x("order")).is_err());
        assert!(p.check(&q("q-1")).is_ok());
        assert!(p.check(&q("a-q-1")).is_err(), "anchored by the pattern");
    }

    #[test]
    fn braces_that_are_not_quantifiers_are_literal_as_in_pcre() {
        assert_eq!(pcre_braces("^{client_id}$"), "^\\{client_id\\}$");
        assert_eq!(pcre_braces("^a{2,3}b{2}c{1,}$"), "^a{2,3}b{2}c{1,}$");
        assert_eq!(pcre_braces("\\{x"), "\\{x");
        let p = perms(".*", "^q{2}$", "^{x}$");
        let x = |name| resource(ResourceKind::Exchange, name, Permission::Write);
        assert!(p.check(&x("qq")).is_ok());
        assert!(p.check(&x("q")).is_err());
        assert!(p
            .check(&resource(ResourceKind::Queue, "{x}", Permission::Read))
            .is_ok());
    }

    #[test]
    fn an_empty_pattern_is_caret_dollar() {
        let p = perms("", "", ".*");
        let configure = |name| resource(ResourceKind::Queue, name, Permission::Configure);
        assert!(p.check(&configure("q")).is_err());
        assert!(p.check(&configure("")).is_ok(), "^$ matches the empty name");
    }

    #[test]
    fn the_default_exchange_is_amq_default() {
        let p = perms(".*", "^amq\\.default$", ".*");
        assert!(p
            .check(&resource(ResourceKind::Exchange, "", Permission::Write))
            .is_ok());
        let refused = perms(".*", "^x$", ".*")
            .check(&resource(ResourceKind::Exchange, "", Permission::Write))
            .expect_err("refused");
        assert_eq!(
            refused.body(),
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'alice'"
        );
    }

    #[test]
    fn no_permissions_in_the_vhost_refuses_everything() {
        let p = Permissions::new("bob", "v", None, &[], []);
        let refused = p
            .check(&resource(ResourceKind::Queue, "q", Permission::Read))
            .expect_err("refused");
        assert_eq!(
            refused.text,
            "access to queue 'q' in vhost 'v' refused for user 'bob'"
        );
    }

    #[test]
    fn a_pattern_that_does_not_compile_refuses() {
        let p = perms(".*", "(", ".*");
        assert!(p
            .check(&resource(ResourceKind::Exchange, "(", Permission::Write))
            .is_err());
    }

    #[test]
    fn topic_permissions_expand_username_and_vhost_only() {
        let p = Permissions::new(
            "alice",
            "shop",
            Some(&VhostPatterns {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }),
            &[TopicPatterns {
                exchange: "amq.topic".into(),
                write: "^{username}\\.{vhost}\\.".into(),
                read: "^{client_id}$".into(),
            }],
            [],
        );
        assert!(p
            .check(&topic("amq.topic", "alice.shop.x", Permission::Write))
            .is_ok());
        let refused = p
            .check(&topic("amq.topic", "bob.shop.x", Permission::Write))
            .expect_err("refused");
        assert_eq!(
            refused.body(),
            "ACCESS_REFUSED - access to topic 'bob.shop.x' in exchange 'amq.topic' in vhost 'shop' refused for user 'alice'"
        );
        // {client_id} is not in STOMP's variable map: matched literally.
        assert!(p
            .check(&topic("amq.topic", "{client_id}", Permission::Read))
            .is_ok());
    }

    #[test]
    fn topic_permissions_only_on_topic_exchanges_and_only_where_defined() {
        let topic_perm = |exchange: &str| TopicPatterns {
            exchange: exchange.into(),
            write: "^a\\.".into(),
            read: "^a\\.".into(),
        };
        let p = Permissions::new(
            "u",
            "/",
            None,
            &[
                topic_perm("amq.topic"),
                topic_perm("events"),
                topic_perm("direct-x"),
            ],
            ["events".to_owned()],
        );
        assert!(p
            .check(&topic("amq.topic", "b.1", Permission::Read))
            .is_err());
        assert!(p.check(&topic("events", "b.1", Permission::Write)).is_err());
        assert!(p.check(&topic("events", "a.1", Permission::Write)).is_ok());
        // Not a topic exchange: topic permissions do not apply.
        assert!(p
            .check(&topic("direct-x", "b.1", Permission::Write))
            .is_ok());
        // No topic permission for this exchange: allowed.
        assert!(p.check(&topic("other", "b.1", Permission::Write)).is_ok());
    }

    #[test]
    fn the_explicit_topic_check_is_reported_without_the_channel_prefix() {
        let p = Permissions::new(
            "u",
            "/",
            None,
            &[TopicPatterns {
                exchange: "amq.topic".into(),
                write: "".into(),
                read: "".into(),
            }],
            [],
        );
        let check = Check::Topic {
            exchange: "amq.topic".into(),
            routing_key: "k".into(),
            permission: Permission::Read,
            explicit: true,
        };
        assert_eq!(
            p.check(&check).expect_err("refused").body(),
            "access to topic 'k' in exchange 'amq.topic' in vhost '/' refused for user 'u'"
        );
    }

    #[test]
    fn checks_follow_web_stomp_operations() {
        let q = |name: &str, permission| resource(ResourceKind::Queue, name, permission);
        let x = |name: &str, permission| resource(ResourceKind::Exchange, name, permission);
        use Permission::*;
        let sub = |d: &Destination, queue: Option<&str>| {
            checks(&Operation {
                verb: Verb::Subscribe,
                destination: d,
                subscription_queue: queue.map(str::to_owned),
                new_reply_queue: false,
            })
        };
        let send = |d: &Destination, reply: bool| {
            checks(&Operation {
                verb: Verb::Send,
                destination: d,
                subscription_queue: None,
                new_reply_queue: reply,
            })
        };
        let queue_d = Destination::Queue { name: "q".into() };
        assert_eq!(sub(&queue_d, None), vec![q("q", Configure), q("q", Read)]);
        assert_eq!(
            send(&queue_d, false),
            vec![q("q", Configure), x("", Write), topic("", "q", Write)]
        );
        let amq = Destination::AmqQueue { name: "q".into() };
        assert_eq!(sub(&amq, None), vec![q("q", Read)]);
        assert_eq!(send(&amq, false), vec![x("", Write), topic("", "q", Write)]);
        let t = Destination::Topic { key: "k".into() };
        let explicit = Check::Topic {
            exchange: "amq.topic".into(),
            routing_key: "k".into(),
            permission: Read,
            explicit: true,
        };
        assert_eq!(
            sub(&t, Some("stomp-subscription-1")),
            vec![
                explicit,
                q("stomp-subscription-1", Configure),
                q("stomp-subscription-1", Read),
                q("stomp-subscription-1", Write),
                x("amq.topic", Read),
                topic("amq.topic", "k", Read),
            ]
        );
        assert_eq!(
            send(&t, true),
            vec![
                q(REPLY_QUEUE_PLACEHOLDER, Configure),
                q(REPLY_QUEUE_PLACEHOLDER, Read),
                x("amq.topic", Write),
                topic("amq.topic", "k", Write),
            ]
        );
        let e = Destination::Exchange {
            exchange: "events".into(),
            routing_key: "a.b".into(),
        };
        assert_eq!(
            sub(&e, Some("s")),
            vec![
                q("s", Configure),
                q("s", Read),
                q("s", Write),
                x("events", Read),
                topic("events", "a.b", Read),
            ]
        );
        assert_eq!(
            send(&e, false),
            vec![x("events", Write), topic("events", "a.b", Write)]
        );
        let reply = Destination::ReplyQueue {
            name: "amq.gen-1".into(),
        };
        assert_eq!(
            send(&reply, false),
            vec![x("", Write), topic("", "amq.gen-1", Write)]
        );
    }
}
