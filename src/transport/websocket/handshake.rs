//! The HTTP side of a WebSocket upgrade (RFC 6455 section 4.2): which
//! requests are upgrades, the `Sec-WebSocket-Accept` answer, and the STOMP
//! subprotocol chosen. Pure functions over headers; the refusals and their
//! texts are those axum's `WebSocketUpgrade` gave before the gateway wrote
//! its own WebSocket layer, so clients see no change.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 for the accept key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request is not a WebSocket upgrade: a status and a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnUpgrade {
    pub status: StatusCode,
    pub text: &'static str,
}

/// An upgrade request's key and the subprotocol chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub accept: String,
    pub protocol: Option<&'static str>,
}

/// Checks an upgrade request and picks the first of `protocols` (in the
/// gateway's order of preference) that the client offered.
pub fn check(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    protocols: &[&'static str],
) -> Result<Upgrade, NotAnUpgrade> {
    let refuse = |status, text| Err(NotAnUpgrade { status, text });
    if version > Version::HTTP_11 {
        return refuse(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.1 only");
    }
    if method != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method must be `GET`",
        );
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !connection_upgrade {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        );
    }
    if !header_is(headers, header::UPGRADE, "websocket") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Upgrade` header did not include 'websocket'",
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        );
    };
    if !header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        );
    }
    let offered: Vec<&[u8]> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let protocol = protocols
        .iter()
        .copied()
        .find(|p| offered.contains(&p.as_bytes()));
    Ok(Upgrade {
        accept: accept_key(key.as_bytes()),
        protocol,
    })
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(value.as_bytes())
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// The `101 Switching Protocols` answer's headers.
pub fn response_headers(upgrade: &Upgrade) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&upgrade.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = upgrade.protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn the_rfc_example_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn picks_the_gateways_preferred_protocol_among_those_offered() {
        let protos = ["v12.stomp", "v11.stomp", "v10.stomp"];
        let mut pairs = GOOD.to_vec();
        pairs.push(("sec-websocket-protocol", "v10.stomp, v11.stomp"));
        pairs.push(("sec-websocket-protocol", "v12.stomp"));
        let up = check(&Method::GET, Version::HTTP_11, &request(&pairs), &protos).unwrap();
        assert_eq!(up.protocol, Some("v12.stomp"));
        let up = check(&Method::GET, Version::HTTP_11, &request(&GOOD), &protos).unwrap();
        assert_eq!(up.protocol, None);
        let headers = response_headers(&up);
        assert_eq!(
            headers[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(headers.get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn refusals() {
        let without = |name: &str| -> HeaderMap {
            request(
                &GOOD
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != name)
                    .collect::<Vec<_>>(),
            )
        };
        let status = |m: Method, h: HeaderMap| {
            check(&m, Version::HTTP_11, &h, &["v12.stomp"])
                .map(|_| ())
                .map_err(|e| e.status)
        };
        assert_eq!(
            status(Method::POST, request(&GOOD)),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        for name in [
            "connection",
            "upgrade",
            "sec-websocket-key",
            "sec-websocket-version",
        ] {
            assert_eq!(
                status(Method::GET, without(name)),
                Err(StatusCode::BAD_REQUEST),
                "{name}"
            );
        }
        let mut v8 = GOOD.to_vec();
        v8[3] = ("sec-websocket-version", "8");
        assert_eq!(
            status(Method::GET, request(&v8)),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(status(Method::GET, request(&GOOD)), Ok(()));
    }
}
