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

/// Why a destination string was refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("unknown destination '{0}': expected /exchange/, /topic/, /queue/, /amq/queue/, /temp-queue/ or /reply-queue/")]
    UnknownForm(String),
    #[error("destination '{0}' has an empty name")]
    EmptyName(String),
    #[error("destination '{0}' has a name longer than 255 bytes")]
    NameTooLong(String),
}

impl Destination {
    /// Parses a destination header value.
    pub fn parse(s: &str) -> Result<Destination, DestinationError> {
        let dest = if let Some(rest) = s.strip_prefix("/exchange/") {
            let (exchange, routing_key) = match rest.split_once('/') {
                Some((e, k)) => (e, k),
                None => (rest, ""),
            };
            check_name(s, exchange)?;
            check_len(s, routing_key)?;
            Destination::Exchange {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }
        } else if let Some(key) = s.strip_prefix("/topic/") {
            check_name(s, key)?;
            Destination::Topic {
                key: key.to_owned(),
            }
        } else if let Some(name) = s.strip_prefix("/queue/") {
            check_name(s, name)?;
            Destination::Queue {
                name: name.to_owned(),
            }
        } else if let Some(name) = s.strip_prefix("/amq/queue/") {
            check_name(s, name)?;
            Destination::AmqQueue {
                name: name.to_owned(),
            }
        } else if let Some(name) = s.strip_prefix("/temp-queue/") {
            check_name(s, name)?;
            Destination::TempQueue {
                name: name.to_owned(),
            }
        } else if let Some(name) = s.strip_prefix("/reply-queue/") {
            check_name(s, name)?;
            Destination::ReplyQueue {
                name: name.to_owned(),
            }
        } else {
            return Err(DestinationError::UnknownForm(truncate(s)));
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

fn check_name(whole: &str, name: &str) -> Result<(), DestinationError> {
    if name.is_empty() {
        return Err(DestinationError::EmptyName(truncate(whole)));
    }
    check_len(whole, name)
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
            Destination::parse("/exchange/e/a/b"),
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
        assert!(matches!(
            Destination::parse("/queue/"),
            Err(DestinationError::EmptyName(_))
        ));
        assert!(matches!(
            Destination::parse("/exchange//key"),
            Err(DestinationError::EmptyName(_))
        ));
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
