//! What clients send: the bodies of `xhr_send` and `jsonp_send` (a JSON
//! array of strings, each string one chunk of the application's data), and
//! the messages of the `websocket` transport.
//!
//! Errors carry the texts of the SockJS protocol ("Payload expected.",
//! "Broken JSON encoding."), which its test suite looks for in the 500
//! responses. Sizes are bounded before anything is parsed (the HTTP layer
//! refuses larger bodies); strings holding lone UTF-16 surrogates, which
//! no UTF-8 chunk can carry, are broken JSON here.

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Empty, or valid JSON that is not an array of strings.
    #[error("Payload expected.")]
    PayloadExpected,
    /// Not JSON.
    #[error("Broken JSON encoding.")]
    BrokenJson,
    /// Larger than the configured limit.
    #[error("Payload too large.")]
    TooLarge,
}

/// Parses a JSON array of strings.
pub fn parse_messages(json: &[u8]) -> Result<Vec<String>, BodyError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::PayloadExpected);
    }
    match serde_json::from_slice::<Vec<String>>(json) {
        Ok(messages) => Ok(messages),
        Err(_) if serde_json::from_slice::<serde_json::Value>(json).is_ok() => {
            Err(BodyError::PayloadExpected)
        }
        Err(_) => Err(BodyError::BrokenJson),
    }
}

/// Parses an `xhr_send` body (any content type).
pub fn parse_xhr_send(body: &[u8], limit: usize) -> Result<Vec<String>, BodyError> {
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    parse_messages(body)
}

/// Parses a `jsonp_send` body: form-encoded `d=<json>` when the content
/// type says so, else the JSON itself.
pub fn parse_jsonp_send(
    content_type: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<Vec<String>, BodyError> {
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    let form = content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return parse_messages(body);
    }
    let d = body
        .split(|&b| b == b'&')
        .find_map(|pair| pair.strip_prefix(b"d="))
        .ok_or(BodyError::PayloadExpected)?;
    parse_messages(&form_decode(d))
}

/// Parses one message of the `websocket` transport: a JSON array of
/// strings, or one JSON string; an empty message holds nothing.
pub fn parse_websocket(text: &str) -> Result<Vec<String>, BodyError> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.starts_with('[') {
        return parse_messages(text.as_bytes());
    }
    serde_json::from_str::<String>(text)
        .map(|s| vec![s])
        .map_err(|_| BodyError::BrokenJson)
}

/// Decodes `application/x-www-form-urlencoded` bytes (`+` is a space,
/// `%XX` a byte; a malformed escape is kept as it is).
pub fn form_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < value.len() => match (hex(value[i + 1]), hex(value[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xhr_send_bodies() {
        assert_eq!(parse_xhr_send(b"[\"a\"]", 100), Ok(vec!["a".to_owned()]));
        assert_eq!(parse_xhr_send(b"[]", 100), Ok(vec![]));
        assert_eq!(
            parse_xhr_send(br#"["a","\u2028",  "b\n"]"#, 100),
            Ok(vec!["a".into(), "\u{2028}".into(), "b\n".into()])
        );
        assert_eq!(parse_xhr_send(b"", 100), Err(BodyError::PayloadExpected));
        assert_eq!(parse_xhr_send(b"  ", 100), Err(BodyError::PayloadExpected));
        assert_eq!(parse_xhr_send(b"[\"x", 100), Err(BodyError::BrokenJson));
        assert_eq!(parse_xhr_send(b"{}", 100), Err(BodyError::PayloadExpected));
        assert_eq!(
            parse_xhr_send(b"\"a\"", 100),
            Err(BodyError::PayloadExpected)
        );
        assert_eq!(parse_xhr_send(b"[1]", 100), Err(BodyError::PayloadExpected));
        assert_eq!(
            parse_xhr_send(b"[\"\\ud800\"]", 100),
            Err(BodyError::BrokenJson)
        );
        assert_eq!(parse_xhr_send(&[b' '; 101], 100), Err(BodyError::TooLarge));
        assert_eq!(parse_xhr_send(b"\xff\xfe", 100), Err(BodyError::BrokenJson));
    }

    #[test]
    fn jsonp_send_bodies() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(
            parse_jsonp_send(form, b"d=%5B%22x%22%5D", 100),
            Ok(vec!["x".to_owned()])
        );
        assert_eq!(
            parse_jsonp_send(
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                b"i=1&d=%5B%22a+b%22%5D",
                100
            ),
            Ok(vec!["a b".to_owned()])
        );
        assert_eq!(
            parse_jsonp_send(form, b"d=%5B%22x", 100),
            Err(BodyError::BrokenJson)
        );
        for empty in [&b""[..], b"d=", b"p=p"] {
            assert_eq!(
                parse_jsonp_send(form, empty, 100),
                Err(BodyError::PayloadExpected)
            );
        }
        assert_eq!(
            parse_jsonp_send(Some("text/plain"), b"[\"%61bc\"]", 100),
            Ok(vec!["%61bc".to_owned()])
        );
        assert_eq!(
            parse_jsonp_send(None, b"[\"a\"]", 100),
            Ok(vec!["a".to_owned()])
        );
        assert_eq!(
            parse_jsonp_send(form, &[b'd'; 101], 100),
            Err(BodyError::TooLarge)
        );
    }

    #[test]
    fn websocket_messages() {
        assert_eq!(parse_websocket(""), Ok(vec![]));
        assert_eq!(parse_websocket("[]"), Ok(vec![]));
        assert_eq!(parse_websocket("[\"a\"]"), Ok(vec!["a".into()]));
        assert_eq!(parse_websocket("\"a\""), Ok(vec!["a".into()]));
        assert_eq!(parse_websocket("[\"a"), Err(BodyError::BrokenJson));
        assert_eq!(parse_websocket("a"), Err(BodyError::BrokenJson));
    }

    #[test]
    fn form_decoding_never_panics() {
        assert_eq!(form_decode(b"%"), b"%");
        assert_eq!(form_decode(b"%4"), b"%4");
        assert_eq!(form_decode(b"%41"), b"A");
        assert_eq!(form_decode(b"%zz+"), b"%zz ");
        assert_eq!(form_decode(b"a%2"), b"a%2");
    }
}
