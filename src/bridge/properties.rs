//! STOMP headers to AMQP properties and back, as RabbitMQ's STOMP plugin maps
//! them, so that a backend publishing with any AMQP library and a browser
//! using stomp.js see the same message.
//!
//! | STOMP header        | AMQP                         |
//! |---------------------|------------------------------|
//! | `content-type`      | content-type                 |
//! | `content-encoding`  | content-encoding             |
//! | `correlation-id`    | correlation-id               |
//! | `reply-to`          | reply-to                     |
//! | `expiration`        | expiration                   |
//! | `priority`          | priority (0-255)             |
//! | `persistent`        | delivery-mode 2 when `true`  |
//! | `amqp-message-id`   | message-id (`message-id` on SEND too) |
//! | `type`              | type                         |
//! | `app-id`            | app-id                       |
//! | `timestamp`         | timestamp (seconds)          |
//! | anything else       | the headers table            |
//!
//! On MESSAGE the STOMP `message-id` is the gateway's acknowledgement id, so
//! the AMQP message-id is shown as `amqp-message-id`. An AMQP reply-to that
//! names a bare queue is shown as `/reply-queue/<queue>` so that a STOMP
//! client can SEND the reply to it.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use super::BridgeError;
use crate::stomp::destination::Destination;

/// AMQP properties for a SEND's headers (`reply_to` already resolved).
pub fn properties_from_stomp(
    headers: &[(String, String)],
    reply_to: Option<&str>,
) -> Result<BasicProperties, BridgeError> {
    let mut props = BasicProperties::default();
    let mut table = FieldTable::default();
    let mut message_id: Option<&str> = None;
    for (name, value) in headers {
        let v = value.as_str();
        props = match name.as_str() {
            "content-type" => props.with_content_type(short(name, v)?),
            "content-encoding" => props.with_content_encoding(short(name, v)?),
            "correlation-id" => props.with_correlation_id(short(name, v)?),
            "expiration" => props.with_expiration(short(name, v)?),
            "priority" => props.with_priority(number(name, v)?),
            "persistent" => {
                if v == "true" {
                    props.with_delivery_mode(2)
                } else {
                    props
                }
            }
            "amqp-message-id" => {
                message_id = Some(v);
                props
            }
            "message-id" => {
                message_id = message_id.or(Some(v));
                props
            }
            "type" => props.with_type(short(name, v)?),
            "app-id" => props.with_app_id(short(name, v)?),
            "timestamp" => props.with_timestamp(number(name, v)?),
            _ => {
                table.insert(
                    short("header name", name)?,
                    AMQPValue::LongString(LongString::from(v)),
                );
                props
            }
        };
    }
    if let Some(id) = message_id {
        props = props.with_message_id(short("message-id", id)?);
    }
    if let Some(reply_to) = reply_to {
        props = props.with_reply_to(short("reply-to", reply_to)?);
    }
    if !table.inner().is_empty() {
        props = props.with_headers(table);
    }
    Ok(props)
}

/// STOMP headers for a message delivered from `exchange` with `routing_key`:
/// `destination` first, then the properties, then the headers table.
pub fn stomp_headers_from_amqp(
    exchange: &str,
    routing_key: &str,
    redelivered: bool,
    props: &BasicProperties,
) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(4);
    out.push((
        "destination".to_owned(),
        Destination::of_delivery(exchange, routing_key),
    ));
    let mut put = |name: &str, value: Option<&ShortString>| {
        if let Some(v) = value {
            out.push((name.to_owned(), v.as_str().to_owned()));
        }
    };
    put("content-type", props.content_type().as_ref());
    put("content-encoding", props.content_encoding().as_ref());
    put("correlation-id", props.correlation_id().as_ref());
    put("expiration", props.expiration().as_ref());
    put("amqp-message-id", props.message_id().as_ref());
    put("type", props.kind().as_ref());
    put("app-id", props.app_id().as_ref());
    put("user-id", props.user_id().as_ref());
    if let Some(reply_to) = props.reply_to() {
        let r = reply_to.as_str();
        let shown = if r.starts_with('/') {
            r.to_owned()
        } else {
            format!("/reply-queue/{r}")
        };
        out.push(("reply-to".to_owned(), shown));
    }
    if let Some(p) = props.priority() {
        out.push(("priority".to_owned(), p.to_string()));
    }
    if let Some(mode) = props.delivery_mode() {
        out.push(("persistent".to_owned(), (*mode == 2).to_string()));
    }
    if let Some(ts) = props.timestamp() {
        out.push(("timestamp".to_owned(), ts.to_string()));
    }
    // Always present, `true` or `false`, as RabbitMQ's STOMP plugin sends it.
    out.push(("redelivered".to_owned(), redelivered.to_string()));
    if let Some(table) = props.headers() {
        for (name, value) in table.inner() {
            let name = name.as_str();
            // Never let the table override what the gateway itself sets.
            if matches!(
                name,
                "destination"
                    | "message-id"
                    | "subscription"
                    | "ack"
                    | "content-length"
                    | "receipt"
                    | "redelivered"
            ) || out.iter().any(|(n, _)| n == name)
            {
                continue;
            }
            if let Some(text) = value_text(value) {
                out.push((name.to_owned(), text));
            }
        }
    }
    out
}

fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::ByteArray(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::DecimalValue(_)
        | AMQPValue::Void => return None,
    })
}

/// An AMQP short string from client text, refused (not panicking) when over
/// 255 bytes.
pub fn short(what: &str, value: &str) -> Result<ShortString, BridgeError> {
    ShortString::try_new(value)
        .map_err(|_| BridgeError::Invalid(format!("{what} is longer than 255 bytes")))
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, BridgeError> {
    value
        .trim()
        .parse()
        .map_err(|_| BridgeError::Invalid(format!("invalid {name} header '{value}'")))
}

/// How RabbitMQ's STOMP plugin types a queue-argument header
/// (`rabbit_stomp_util:build_argument`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgumentType {
    /// AMQP `long` (a signed 64-bit integer, `l` on the wire).
    Integer,
    /// A long string.
    Text,
    /// Not a queue argument: a consumer argument (`x-priority`,
    /// `x-stream-offset`, ...) or the gateway's own (`x-queue-name`).
    NotQueueArgument,
}

fn argument_type(name: &str) -> ArgumentType {
    match name {
        "x-expires"
        | "x-message-ttl"
        | "x-max-length"
        | "x-max-length-bytes"
        | "x-max-priority"
        | "x-stream-max-segment-size-bytes"
        | "x-stream-filter-size-bytes"
        | "x-delivery-limit"
        | "x-quorum-initial-group-size"
        | "x-initial-cluster-size" => ArgumentType::Integer,
        "x-dead-letter-exchange"
        | "x-dead-letter-routing-key"
        | "x-max-age"
        | "x-queue-type"
        | "x-overflow"
        | "x-queue-mode"
        | "x-queue-master-locator"
        | "x-queue-leader-locator"
        | "x-dead-letter-strategy"
        | "x-single-active-consumer" => ArgumentType::Text,
        "x-queue-name"
        | "x-priority"
        | "x-stream-offset"
        | "x-stream-filter"
        | "x-stream-match-unfiltered" => ArgumentType::NotQueueArgument,
        _ => ArgumentType::Text,
    }
}

/// Queue arguments from `x-*` SUBSCRIBE headers, typed as RabbitMQ's STOMP
/// plugin types them: `x-expires`, `x-message-ttl`, `x-max-length`,
/// `x-max-length-bytes`, `x-max-priority` (and the other numeric ones) are
/// integers (AMQP `long`), so that a queue declared by Web-STOMP or by a
/// backend with the same values is equivalent; `x-queue-type` (`quorum`,
/// `stream`), `x-dead-letter-*`, `x-max-age`, `x-overflow`, ... are strings
/// (`x-single-active-consumer` is a boolean); consumer arguments
/// (`x-priority`, `x-stream-*`) are not queue arguments and are left out.
/// Other `x-*` headers pass as strings. A numeric argument that is not a
/// number is refused.
pub fn queue_arguments(args: &[(String, String)]) -> Result<FieldTable, BridgeError> {
    let mut table = FieldTable::default();
    for (name, value) in args {
        let value = value.trim();
        let v = match argument_type(name) {
            ArgumentType::NotQueueArgument => continue,
            ArgumentType::Integer => {
                AMQPValue::LongLongInt(value.parse::<i64>().map_err(|_| {
                    BridgeError::Invalid(format!(
                        "invalid {name} header '{value}': expected an integer"
                    ))
                })?)
            }
            ArgumentType::Text if name == "x-single-active-consumer" => {
                AMQPValue::Boolean(value.eq_ignore_ascii_case("true"))
            }
            ArgumentType::Text => AMQPValue::LongString(LongString::from(value)),
        };
        table.insert(short("queue argument name", name)?, v);
    }
    Ok(table)
}

/// The queue arguments a SEND to `/queue/<name>` declares a missing queue
/// with: the `x-*` headers of RabbitMQ's STOMP plugin's list
/// (`?HEADER_ARGUMENTS`, `rabbit_stomp_util:build_arguments`), typed as
/// [`queue_arguments`] types them. Other `x-*` headers of a SEND are the
/// message's own headers, not arguments.
pub fn send_queue_arguments(headers: &[(String, String)]) -> Result<FieldTable, BridgeError> {
    const SEND_ARGUMENTS: [&str; 11] = [
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-expires",
        "x-max-length",
        "x-max-age",
        "x-stream-max-segment-size-bytes",
        "x-max-length-bytes",
        "x-max-priority",
        "x-message-ttl",
        "x-queue-type",
        "x-stream-filter-size-bytes",
    ];
    let args: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| SEND_ARGUMENTS.contains(&name.as_str()))
        .cloned()
        .collect();
    queue_arguments(&args)
}

/// Consumer arguments from `x-*` SUBSCRIBE headers, as RabbitMQ's STOMP
/// plugin passes them: `x-stream-offset` (where a consumer of a stream
/// queue starts: an offset, as a long, or `first`, `last`, `next`, or an
/// interval such as `1h`, as a string). Other headers are not consumer
/// arguments.
pub fn consumer_arguments(args: &[(String, String)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in args {
        if name != "x-stream-offset" {
            continue;
        }
        let value = value.trim();
        let v = match value.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(LongString::from(value)),
        };
        table.insert("x-stream-offset".into(), v);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_of_every_mapped_header() {
        let headers = h(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("correlation-id", "c1"),
            ("expiration", "60000"),
            ("priority", "5"),
            ("persistent", "true"),
            ("amqp-message-id", "m1"),
            ("type", "order.created"),
            ("app-id", "shop"),
            ("timestamp", "1700000000"),
            ("x-custom", "v:1"),
        ]);
        let props = properties_from_stomp(&headers, Some("amq.gen-1")).expect("valid");
        assert_eq!(props.delivery_mode(), &Some(2));
        let back = stomp_headers_from_amqp("amq.topic", "orders.1", false, &props);
        let get = |n: &str| back.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("destination"), Some("/topic/orders.1"));
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("content-encoding"), Some("gzip"));
        assert_eq!(get("correlation-id"), Some("c1"));
        assert_eq!(get("expiration"), Some("60000"));
        assert_eq!(get("priority"), Some("5"));
        assert_eq!(get("persistent"), Some("true"));
        assert_eq!(get("amqp-message-id"), Some("m1"));
        assert_eq!(get("type"), Some("order.created"));
        assert_eq!(get("app-id"), Some("shop"));
        assert_eq!(get("timestamp"), Some("1700000000"));
        assert_eq!(get("x-custom"), Some("v:1"));
        assert_eq!(get("reply-to"), Some("/reply-queue/amq.gen-1"));
        assert_eq!(get("redelivered"), Some("false"));
    }

    #[test]
    fn bad_values_are_refused_not_panicking() {
        let long = "x".repeat(300);
        assert!(properties_from_stomp(&h(&[("content-type", &long)]), None).is_err());
        assert!(properties_from_stomp(&h(&[(&long, "v")]), None).is_err());
        assert!(properties_from_stomp(&h(&[("priority", "high")]), None).is_err());
        assert!(properties_from_stomp(&h(&[("priority", "300")]), None).is_err());
    }

    #[test]
    fn table_cannot_override_gateway_headers() {
        let mut table = FieldTable::default();
        table.insert("subscription".into(), AMQPValue::LongString("evil".into()));
        table.insert("n".into(), AMQPValue::LongInt(7));
        let props = BasicProperties::default().with_headers(table);
        let back = stomp_headers_from_amqp("", "q", true, &props);
        assert!(back.iter().all(|(k, _)| k != "subscription"));
        assert!(back.contains(&("n".to_owned(), "7".to_owned())));
        assert!(back.contains(&("redelivered".to_owned(), "true".to_owned())));
        assert!(back.contains(&("destination".to_owned(), "/queue/q".to_owned())));
    }

    #[test]
    fn a_send_declares_with_rabbitmq_s_typed_arguments_only() {
        // RabbitMQ's suite, queue_properties.test_send: the queue a SEND
        // declares must be equivalent to pika's declaration with the same
        // values (integers as integers), and other x-* headers are not
        // arguments.
        let table = send_queue_arguments(&h(&[
            ("x-expires", "70000"),
            ("x-message-ttl", " 60000"),
            ("x-max-priority", "6"),
            ("x-dead-letter-exchange", "dlx"),
            ("x-custom-header-1", "value1"),
            ("content-type", "text/plain"),
        ]))
        .expect("valid");
        let get = |k: &str| table.inner().get(k).cloned();
        assert_eq!(get("x-expires"), Some(AMQPValue::LongLongInt(70000)));
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(60000)));
        assert_eq!(get("x-max-priority"), Some(AMQPValue::LongLongInt(6)));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(AMQPValue::LongString("dlx".into()))
        );
        assert_eq!(table.inner().len(), 4, "{table:?}");
        assert!(send_queue_arguments(&h(&[("x-expires", "soon")])).is_err());
    }

    #[test]
    fn stream_offsets_are_consumer_arguments() {
        let table = consumer_arguments(&h(&[("x-stream-offset", " 42"), ("x-max-length", "10")]));
        let get = |n: &str| table.inner().get(n).cloned();
        assert_eq!(get("x-stream-offset"), Some(AMQPValue::LongLongInt(42)));
        assert_eq!(get("x-max-length"), None);
        let table = consumer_arguments(&h(&[("x-stream-offset", "first")]));
        assert_eq!(
            table.inner().get("x-stream-offset").cloned(),
            Some(AMQPValue::LongString(LongString::from("first")))
        );
    }

    #[test]
    fn queue_arguments_have_rabbitmqs_types() {
        let table = queue_arguments(&h(&[
            ("x-expires", "70000"),
            ("x-message-ttl", " 60000"),
            ("x-max-length", "10"),
            ("x-max-length-bytes", "1048576"),
            ("x-max-priority", "9"),
            ("x-queue-type", "quorum"),
            ("x-dead-letter-exchange", "dlx"),
            ("x-max-age", "1D"),
            ("x-single-active-consumer", "true"),
            ("x-priority", "5"),
            ("x-queue-name", "q"),
            ("x-custom", "42"),
        ]))
        .expect("valid");
        let get = |n: &str| table.inner().get(n).cloned();
        assert_eq!(get("x-expires"), Some(AMQPValue::LongLongInt(70000)));
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(60000)));
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(10)));
        assert_eq!(
            get("x-max-length-bytes"),
            Some(AMQPValue::LongLongInt(1_048_576))
        );
        assert_eq!(get("x-max-priority"), Some(AMQPValue::LongLongInt(9)));
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(AMQPValue::LongString("dlx".into()))
        );
        assert_eq!(get("x-max-age"), Some(AMQPValue::LongString("1D".into())));
        assert_eq!(
            get("x-single-active-consumer"),
            Some(AMQPValue::Boolean(true))
        );
        // Consumer arguments and the gateway's own header are not queue arguments.
        assert_eq!(get("x-priority"), None);
        assert_eq!(get("x-queue-name"), None);
        assert_eq!(get("x-custom"), Some(AMQPValue::LongString("42".into())));
        assert!(queue_arguments(&h(&[("x-expires", "soon")])).is_err());
    }
}
