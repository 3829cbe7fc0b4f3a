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

use super::destination::Destination;
use super::BridgeError;

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
    if redelivered {
        out.push(("redelivered".to_owned(), "true".to_owned()));
    }
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

/// Queue arguments from `x-*` SUBSCRIBE headers: numbers stay numbers (as
/// RabbitMQ wants for `x-max-length`, `x-message-ttl`, ...).
pub fn queue_arguments(args: &[(String, String)]) -> Result<FieldTable, BridgeError> {
    let mut table = FieldTable::default();
    for (name, value) in args {
        let v = match value.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(LongString::from(value.as_str())),
        };
        table.insert(short("queue argument name", name)?, v);
    }
    Ok(table)
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
        assert_eq!(get("redelivered"), None);
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
}
