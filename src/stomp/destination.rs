//! STOMP destinations, in the forms RabbitMQ's STOMP plugin understands, so
//! that clients written for it move over unchanged.
//!
//! | destination                      | SUBSCRIBE                                   | SEND                                  |
//! |----------------------------------|---------------------------------------------|---------------------------------------|
//! | `/exchange/<name>[/<key>]`       | binds to `<name>` with `<key>` (a pattern)  | publishes to `<name>` with `<key>`     |
//! | `/topic/<key>`                   | binds to `amq.topic` with `<key>`           | publishes to `amq.topic` with `<key>`  |
//! | `/queue/<name>`                  | declares durable queue `<name>`, consumes   | declares it, publishes to it           |
//! | `/amq/queue/<name>`              | consumes existing queue `<name>`            | publishes to existing queue `<name>`   |
//! | `/temp-queue/<name>`             | (only as `reply-to` on SEND)                | (only as `reply-to` on SEND)           |
//! | `/reply-queue/<name>`            | —                                           | publishes to queue `<name>`            |
//!
//! This module is pure: it parses and describes, the AMQP adapter acts.

use std::fmt;

/// Prefix of the queues of durable subscriptions, which the session names
/// `stomp-subscription-<user>.<id>` (both percent-encoded as for `/user/`:
/// never shared between identities) with the gateway's own users, and as
/// RabbitMQ does ([`webstomp_subscription_queue`]) with RabbitMQ's users.
/// Reserved: no `/queue/`, `/amq/queue/`, `/reply-queue/` or `x-queue-name`
/// may name them.
pub const DURABLE_QUEUE_PREFIX: &str = "stomp-subscription-";
/// Prefix of `/temp-queue/<name>` destinations, and of the subscription
/// id under which a session receives the replies to temp queue `<name>`.
pub const TEMP_QUEUE_PREFIX: &str = "/temp-queue/";

/// The subscription id of the replies to temp queue `name`.
pub fn temp_queue_subscription(name: &str) -> String {
    format!("{TEMP_QUEUE_PREFIX}{name}")
}

/// The temp queue name a `/temp-queue/<name>` destination or subscription
/// id stands for.
pub fn temp_queue_name(id: &str) -> Option<&str> {
    id.strip_prefix(TEMP_QUEUE_PREFIX)
}

/// The queue RabbitMQ's STOMP plugin (3.x to 4.2, Web-STOMP included)
/// declares for a durable subscription `id` to a `/topic/<key>` or
/// `/exchange/<name>/<key>` destination without `x-queue-name`
/// (`rabbit_stomp_util:subscription_queue_name`): `stomp-subscription-`
/// and the MD5 digest of the Erlang term `{Key, Id}` (both strings, as its
/// parser keeps them: lists of bytes), base64url without padding. A client
/// moving over from Web-STOMP finds its durable queues, and what they kept,
/// under the same names.
pub fn webstomp_subscription_queue(key: &str, id: &str) -> String {
    use base64::Engine as _;
    use md5::Digest as _;
    // External term format, version 131: a 2-tuple of two strings.
    let mut term = vec![131u8, 104, 2];
    for s in [key, id] {
        let bytes = s.as_bytes();
        match u16::try_from(bytes.len()) {
            // `[]` is NIL_EXT.
            Ok(0) => term.push(106),
            // STRING_EXT: a list of bytes, 2-byte length.
            Ok(len) => {
                term.push(107);
                term.extend_from_slice(&len.to_be_bytes());
                term.extend_from_slice(bytes);
            }
            // LIST_EXT of SMALL_INTEGER_EXT, then NIL_EXT (never reached:
            // names and ids are bounded far below 65,536 bytes).
            Err(_) => {
                term.push(108);
                term.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                for b in bytes {
                    term.extend_from_slice(&[97, *b]);
                }
                term.push(106);
            }
        }
    }
    let digest = md5::Md5::digest(&term);
    format!(
        "{DURABLE_QUEUE_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// Longest AMQP short string: exchange, queue and routing-key names.
const MAX_NAME: usize = 255;

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Exchange {
        exchange: String,
        routing_key: String,
    },
    Topic {
        key: String,
    },
    Queue {
        name: String,
    },
    AmqQueue {
        name: String,
    },
    TempQueue {
        name: String,
    },
    ReplyQueue {
        name: String,
    },
}

/// Why a destination string was refused; the texts are those of RabbitMQ's
/// STOMP plugin (`rabbit_stomp_processor`, `rabbit_routing_parser`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Not one of the known prefixes.
    #[error("'{0}' is not a valid destination.\nValid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n")]
    UnknownForm(String),
    /// A known prefix with a name that is empty or has several segments
    /// (`/queue/bah/baz`, `/exchange//foo`): `content` is what follows the
    /// prefix, `kind` RabbitMQ's name of the form.
    #[error("'{content}' is not a valid {kind} destination\n")]
    Invalid { kind: &'static str, content: String },
    #[error("'{0}' has a name longer than 255 bytes\n")]
    NameTooLong(String),
}

impl DestinationError {
    /// The ERROR frame's `message` header for this refusal (the Display
    /// text is its body).
    pub fn message(&self) -> &'static str {
        match self {
            DestinationError::UnknownForm(_) => "Unknown destination",
            DestinationError::Invalid { .. } | DestinationError::NameTooLong(_) => {
                "Invalid destination"
            }
        }
    }
}

/// `%2F` in a destination segment stands for `/` (RabbitMQ's escaping).
fn unescape(segment: &str) -> String {
    segment.replace("%2F", "/")
}

/// The single, non-empty segment after a prefix (`kind` names the form in
/// errors).
fn one_segment(whole: &str, kind: &'static str, rest: &str) -> Result<String, DestinationError> {
    if rest.is_empty() || rest.contains('/') {
        return Err(DestinationError::Invalid {
            kind,
            content: truncate(&whole[whole.len() - rest.len() - 1..]),
        });
    }
    let name = unescape(rest);
    check_len(whole, &name)?;
    Ok(name)
}

impl Destination {
    /// Parses a destination header value, as RabbitMQ's STOMP plugin does:
    /// names are one segment (`%2F` stands for a `/` inside one), an
    /// exchange destination has at most a name and a routing key.
    pub fn parse(s: &str) -> Result<Destination, DestinationError> {
        let dest = if let Some(rest) = s.strip_prefix("/exchange/") {
            let parts: Vec<&str> = rest.split('/').collect();
            let invalid = || DestinationError::Invalid {
                kind: "exchange",
                content: truncate(&s["/exchange".len()..]),
            };
            let (exchange, routing_key) = match parts.as_slice() {
                [name] if !name.is_empty() => (unescape(name), String::new()),
                [name, key] if !name.is_empty() => (unescape(name), unescape(key)),
                _ => return Err(invalid()),
            };
            check_len(s, &exchange)?;
            check_len(s, &routing_key)?;
            Destination::Exchange {
                exchange,
                routing_key,
            }
        } else if let Some(key) = s.strip_prefix("/topic/") {
            Destination::Topic {
                key: one_segment(s, "topic", key)?,
            }
        } else if let Some(name) = s.strip_prefix("/queue/") {
            Destination::Queue {
                name: one_segment(s, "queue", name)?,
            }
        } else if let Some(name) = s.strip_prefix("/amq/queue/") {
            Destination::AmqQueue {
                name: one_segment(s, "amqqueue", name)?,
            }
        } else if let Some(name) = temp_queue_name(s) {
            Destination::TempQueue {
                name: one_segment(s, "temp_queue", name)?,
            }
        } else if let Some(name) = s.strip_prefix("/reply-queue/") {
            // Reply queue names may hold slashes: everything after the prefix.
            if name.is_empty() {
                return Err(DestinationError::Invalid {
                    kind: "reply_queue",
                    content: String::new(),
                });
            }
            check_len(s, name)?;
            Destination::ReplyQueue {
                name: name.to_owned(),
            }
        } else {
            let kind = match s {
                "/exchange" => Some("exchange"),
                "/topic" => Some("topic"),
                "/queue" => Some("queue"),
                "/amq/queue" => Some("amqqueue"),
                "/temp-queue" => Some("temp_queue"),
                _ => None,
            };
            return Err(match kind {
                Some(kind) => DestinationError::Invalid {
                    kind,
                    content: String::new(),
                },
                None => DestinationError::UnknownForm(truncate(s)),
            });
        };
        Ok(dest)
    }

    /// Whether subscribers share messages by fan-out (every subscriber gets
    /// every message) rather than compete for them.
    pub fn is_broadcast(&self) -> bool {
        matches!(
            self,
            Destination::Exchange { .. } | Destination::Topic { .. }
        )
    }

    /// Exchange and routing key a SEND to this destination publishes with.
    pub fn publish_target(&self) -> (&str, &str) {
        match self {
            Destination::Exchange {
                exchange,
                routing_key,
            } => (exchange, routing_key),
            Destination::Topic { key } => ("amq.topic", key),
            Destination::Queue { name }
            | Destination::AmqQueue { name }
            | Destination::ReplyQueue { name }
            | Destination::TempQueue { name } => ("", name),
        }
    }

    /// The destination a message delivered from `exchange` with
    /// `routing_key` is shown under, as RabbitMQ's STOMP plugin does.
    pub fn of_delivery(exchange: &str, routing_key: &str) -> String {
        match exchange {
            "" => format!("/queue/{routing_key}"),
            "amq.topic" => format!("/topic/{routing_key}"),
            _ if routing_key.is_empty() => format!("/exchange/{exchange}"),
            _ => format!("/exchange/{exchange}/{routing_key}"),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Exchange {
                exchange,
                routing_key,
            } if routing_key.is_empty() => write!(f, "/exchange/{exchange}"),
            Destination::Exchange {
                exchange,
                routing_key,
            } => write!(f, "/exchange/{exchange}/{routing_key}"),
            Destination::Topic { key } => write!(f, "/topic/{key}"),
            Destination::Queue { name } => write!(f, "/queue/{name}"),
            Destination::AmqQueue { name } => write!(f, "/amq/queue/{name}"),
            Destination::TempQueue { name } => write!(f, "/temp-queue/{name}"),
            Destination::ReplyQueue { name } => write!(f, "/reply-queue/{name}"),
        }
    }
}

fn check_len(whole: &str, name: &str) -> Result<(), DestinationError> {
    if name.len() > MAX_NAME {
        return Err(DestinationError::NameTooLong(truncate(whole)));
    }
    Ok(())
}

/// Destinations are echoed in errors; keep those short.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(100);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_queue_names_are_those_of_rabbitmq_s_stomp_plugin() {
        // Names Web-STOMP 3.10.8 declared (python suite, destinations.py).
        for (key, id, name) in [
            (
                "durable-separate",
                "test.subscription",
                "stomp-subscription-j7FLeUn7ehTatYVNiBy6UA",
            ),
            (
                "durable-separate",
                "other.id",
                "stomp-subscription-eWSXV2ty1R7VqfsnULKEkA",
            ),
            (
                "durable-shared",
                "test.subscription",
                "stomp-subscription-As-CQ37wutHLc9H0PmjIPw",
            ),
        ] {
            assert_eq!(webstomp_subscription_queue(key, id), name);
        }
        // `/exchange/x` without a key: the empty list.
        assert_ne!(
            webstomp_subscription_queue("", "a"),
            webstomp_subscription_queue("a", "")
        );
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Destination::parse("/exchange/orders/merchant.1.#"),
            Ok(Destination::Exchange {
                exchange: "orders".into(),
                routing_key: "merchant.1.#".into()
            })
        );
        assert_eq!(
            Destination::parse("/exchange/fan"),
            Ok(Destination::Exchange {
                exchange: "fan".into(),
                routing_key: "".into()
            })
        );
        assert_eq!(
            Destination::parse("/exchange/e/a%2Fb"),
            Ok(Destination::Exchange {
                exchange: "e".into(),
                routing_key: "a/b".into()
            })
        );
        assert_eq!(
            Destination::parse("/topic/prices.eur"),
            Ok(Destination::Topic {
                key: "prices.eur".into()
            })
        );
        assert_eq!(
            Destination::parse("/queue/jobs"),
            Ok(Destination::Queue {
                name: "jobs".into()
            })
        );
        assert_eq!(
            Destination::parse("/amq/queue/existing"),
            Ok(Destination::AmqQueue {
                name: "existing".into()
            })
        );
        assert_eq!(
            Destination::parse("/temp-queue/r"),
            Ok(Destination::TempQueue { name: "r".into() })
        );
        assert_eq!(
            Destination::parse("/reply-queue/amq.gen-x"),
            Ok(Destination::ReplyQueue {
                name: "amq.gen-x".into()
            })
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "/exchange/orders/a.b",
            "/exchange/fan",
            "/topic/t",
            "/queue/q",
            "/amq/queue/q",
            "/temp-queue/t",
            "/reply-queue/r",
        ] {
            let d = Destination::parse(s).expect("valid");
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_forms() {
        assert!(matches!(
            Destination::parse("/foo/bar"),
            Err(DestinationError::UnknownForm(_))
        ));
        assert!(matches!(
            Destination::parse("queue/x"),
            Err(DestinationError::UnknownForm(_))
        ));
        let invalid = |d: &str| match Destination::parse(d) {
            Err(e @ DestinationError::Invalid { .. }) => (e.message(), e.to_string()),
            other => panic!("{d}: {other:?}"),
        };
        assert_eq!(
            invalid("/queue/bah/baz"),
            (
                "Invalid destination",
                "'/bah/baz' is not a valid queue destination\n".to_owned()
            )
        );
        assert_eq!(
            invalid("/topic/bah/baz").1,
            "'/bah/baz' is not a valid topic destination\n"
        );
        assert_eq!(
            invalid("/exchange//foo").1,
            "'//foo' is not a valid exchange destination\n"
        );
        assert_eq!(
            invalid("/exchange/a/b/c").1,
            "'/a/b/c' is not a valid exchange destination\n"
        );
        invalid("/queue/");
        invalid("/queue");
        let unknown = Destination::parse("/bah/baz").expect_err("unknown");
        assert_eq!(unknown.message(), "Unknown destination");
        assert!(unknown
            .to_string()
            .starts_with("'/bah/baz' is not a valid destination.\n"));
        let long = format!("/topic/{}", "x".repeat(256));
        assert!(matches!(
            Destination::parse(&long),
            Err(DestinationError::NameTooLong(_))
        ));
    }

    #[test]
    fn targets_and_delivery_names() {
        let d = Destination::parse("/topic/a.b").expect("valid");
        assert_eq!(d.publish_target(), ("amq.topic", "a.b"));
        assert!(d.is_broadcast());
        let q = Destination::parse("/queue/jobs").expect("valid");
        assert_eq!(q.publish_target(), ("", "jobs"));
        assert!(!q.is_broadcast());
        assert_eq!(Destination::of_delivery("", "jobs"), "/queue/jobs");
        assert_eq!(Destination::of_delivery("amq.topic", "a"), "/topic/a");
        assert_eq!(Destination::of_delivery("x", "k"), "/exchange/x/k");
        assert_eq!(Destination::of_delivery("x", ""), "/exchange/x");
    }
}
