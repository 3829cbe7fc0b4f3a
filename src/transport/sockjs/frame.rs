//! SockJS framing: the frames the server sends (`o`, `h`, `a[...]`,
//! `c[code,"reason"]`), the JSON string encoding they use, and how each
//! HTTP transport wraps a frame on its wire.
//!
//! The JSON encoding is not serde_json's: the SockJS protocol asks servers
//! to escape, besides what JSON requires, the characters that browsers or
//! proxies mangle on the way (U+200C-U+200F, U+2028-U+202F, U+2060-U+206F,
//! U+FFF0-U+FFFF; sockjs-protocol's `escapable_by_server`). U+2028 and
//! U+2029 matter most: older JavaScript engines end a string literal there,
//! so a message holding one would break `jsonp` and `htmlfile` responses.
//!
//! `htmlfile` and `jsonp` put the frame into a script as a second, quoted
//! JavaScript string. There, the encoding also escapes `<`, `>` and `&`
//! (as `\u003c` ...), so that a message holding `</script>` or `<!--`
//! cannot end the script element or open an HTML comment in it: a server
//! that only JSON-encodes (as one reference server does) lets any
//! publisher inject script into every subscriber's page.
//!
//! Everything here is pure: bytes in, bytes out.

use std::fmt::Write as _;

/// The open frame.
pub const OPEN: &[u8] = b"o";
/// The heartbeat frame.
pub const HEARTBEAT: &[u8] = b"h";

/// Prelude of `xhr_streaming`: 2048 `h` and a newline, which Internet
/// Explorer needs before it hands a streaming response to the page.
pub fn xhr_streaming_prelude() -> Vec<u8> {
    let mut prelude = vec![b'h'; 2048];
    prelude.push(b'\n');
    prelude
}

/// Prelude of `eventsource` (Opera needed a newline first).
pub const EVENTSOURCE_PRELUDE: &[u8] = b"\r\n";

/// Longest `jsonp`/`htmlfile` callback name accepted.
pub const MAX_CALLBACK_LEN: usize = 32;

/// Whether `name` may be used as a `jsonp`/`htmlfile` callback: 1 to
/// [`MAX_CALLBACK_LEN`] characters of `[a-zA-Z0-9-_.]`, so that it is a
/// plain (possibly dotted) JavaScript name that cannot carry code.
pub fn valid_callback(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CALLBACK_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Characters the server escapes beyond JSON's own (sockjs-protocol's
/// `escapable_by_server`, above U+001F).
fn escapable_by_server(c: char) -> bool {
    matches!(c,
        '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}')
}

/// Where a quoted string will be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// JSON parsed by the client (`JSON.parse`).
    Json,
    /// A JavaScript string literal inside an HTML `<script>` or a script
    /// response: `<`, `>` and `&` are escaped too.
    Script,
}

fn quote_with(s: &str, context: Context, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            _ => None,
        };
        let needs_u = c < ' '
            || escapable_by_server(c)
            || (context == Context::Script && matches!(c, '<' | '>' | '&'));
        if escape.is_none() && !needs_u {
            continue;
        }
        out.extend_from_slice(&s.as_bytes()[plain_from..i]);
        plain_from = i + c.len_utf8();
        match escape {
            Some(e) => out.extend_from_slice(e.as_bytes()),
            None => {
                let mut u = String::with_capacity(6);
                // A char handled here is below U+10000: one UTF-16 unit.
                let _ = write!(u, "\\u{:04x}", c as u32);
                out.extend_from_slice(u.as_bytes());
            }
        }
    }
    out.extend_from_slice(&s.as_bytes()[plain_from..]);
    out.push(b'"');
}

/// Appends `s` as a JSON string the way SockJS wants it (see the module
/// docs): what is left unescaped is valid UTF-8 that browsers keep intact.
pub fn quote(s: &str, out: &mut Vec<u8>) {
    quote_with(s, Context::Json, out);
}

/// Appends `s` as a JavaScript string literal safe inside `<script>`.
pub fn quote_for_script(s: &str, out: &mut Vec<u8>) {
    quote_with(s, Context::Script, out);
}

/// `a[...]` from messages already encoded with [`quote`].
pub fn messages<'a>(quoted: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut frame = b"a[".to_vec();
    for (i, message) in quoted.into_iter().enumerate() {
        if i > 0 {
            frame.push(b',');
        }
        frame.extend_from_slice(message);
    }
    frame.push(b']');
    frame
}

/// `c[code,"reason"]`.
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut frame = format!("c[{code},").into_bytes();
    quote(reason, &mut frame);
    frame.push(b']');
    frame
}

/// How a receiving transport puts frames on its HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// `xhr`, `xhr_streaming`: the frame and a newline.
    Xhr,
    /// `eventsource`: `data: <frame>\r\n\r\n`, with `%`, CR, LF and NUL
    /// %-escaped (the client runs `decodeURI` on every event).
    EventSource,
    /// `htmlfile`: `<script>\np("<frame>");\n</script>\r\n`.
    HtmlFile,
    /// `jsonp`: `/**/<callback>("<frame>");\r\n`; the callback was checked
    /// with [`valid_callback`].
    Jsonp { callback: String },
}

impl Wire {
    /// Appends `frame` (ASCII or UTF-8 produced by this module) as this
    /// transport writes it.
    pub fn wrap(&self, frame: &[u8], out: &mut Vec<u8>) {
        // Frames are built here from `&str`s: always UTF-8.
        let text = String::from_utf8_lossy(frame);
        match self {
            Wire::Xhr => {
                out.extend_from_slice(frame);
                out.push(b'\n');
            }
            Wire::EventSource => {
                out.extend_from_slice(b"data: ");
                for &b in frame {
                    match b {
                        b'%' => out.extend_from_slice(b"%25"),
                        b'\r' => out.extend_from_slice(b"%0D"),
                        b'\n' => out.extend_from_slice(b"%0A"),
                        0 => out.extend_from_slice(b"%00"),
                        b => out.push(b),
                    }
                }
                out.extend_from_slice(b"\r\n\r\n");
            }
            Wire::HtmlFile => {
                out.extend_from_slice(b"<script>\np(");
                quote_for_script(&text, out);
                out.extend_from_slice(b");\n</script>\r\n");
            }
            Wire::Jsonp { callback } => {
                out.extend_from_slice(b"/**/");
                out.extend_from_slice(callback.as_bytes());
                out.push(b'(');
                quote_for_script(&text, out);
                out.extend_from_slice(b");\r\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> String {
        let mut out = Vec::new();
        quote(s, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn wrapped(wire: &Wire, frame: &[u8]) -> String {
        let mut out = Vec::new();
        wire.wrap(frame, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn quote_matches_json_for_plain_text() {
        for s in [
            "",
            "a",
            "héllo wörld",
            "CONNECTED\nversion:1.2\n\n\0",
            "\"\\/",
        ] {
            let ours: serde_json::Value = serde_json::from_str(&q(s)).expect("valid JSON");
            assert_eq!(ours, serde_json::Value::String(s.to_owned()));
        }
        assert_eq!(q("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(q("  \0\n\r "), r#""  \u0000\n\r ""#);
        assert_eq!(q("\u{1}\u{1f}\t\u{8}\u{c}"), r#""\u0001\u001f\t\b\f""#);
    }

    #[test]
    fn quote_escapes_what_sockjs_protocol_lists() {
        // sockjs-protocol's server_killer_string: every escapable char
        // from U+00FF up must come out as \uXXXX.
        for c in (0xff..=0xffffu32).filter_map(char::from_u32) {
            let escaped = q(&c.to_string());
            if escapable_by_server(c) {
                assert_eq!(escaped, format!("\"\\u{:04x}\"", c as u32));
            } else {
                assert_eq!(escaped, format!("\"{c}\""), "U+{:04X}", c as u32);
            }
        }
        assert_eq!(q("\u{2028}\u{2029}"), r#""\u2028\u2029""#);
        // Astral characters are left as UTF-8.
        assert_eq!(q("😀"), "\"😀\"");
    }

    #[test]
    fn json_context_leaves_html_alone() {
        assert_eq!(q("</script>"), "\"</script>\"");
    }

    #[test]
    fn frames() {
        assert_eq!(close(3000, "Go away!"), br#"c[3000,"Go away!"]"#);
        assert_eq!(
            close(2010, "Another connection still open"),
            br#"c[2010,"Another connection still open"]"#
        );
        let (a, b) = (q("a"), q("b\n"));
        assert_eq!(messages([a.as_bytes(), b.as_bytes()]), br#"a["a","b\n"]"#);
        assert_eq!(messages(std::iter::empty::<&[u8]>()), b"a[]");
        let prelude = xhr_streaming_prelude();
        assert_eq!(prelude.len(), 2049);
        assert!(prelude[..2048].iter().all(|&b| b == b'h'));
    }

    #[test]
    fn wires_follow_the_protocol_tests() {
        assert_eq!(wrapped(&Wire::Xhr, b"o"), "o\n");
        assert_eq!(wrapped(&Wire::EventSource, b"o"), "data: o\r\n\r\n");
        assert_eq!(
            wrapped(&Wire::EventSource, br#"a["  \u0000\n\r "]"#),
            "data: a[\"  \\u0000\\n\\r \"]\r\n\r\n"
        );
        assert_eq!(
            wrapped(&Wire::EventSource, b"a[\"100%\"]\r\n\0"),
            "data: a[\"100%25\"]%0D%0A%00\r\n\r\n"
        );
        assert_eq!(
            wrapped(&Wire::HtmlFile, br#"a["x"]"#),
            "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n"
        );
        let jsonp = Wire::Jsonp {
            callback: "callback".into(),
        };
        assert_eq!(wrapped(&jsonp, b"o"), "/**/callback(\"o\");\r\n");
        assert_eq!(
            wrapped(&jsonp, br#"c[3000,"Go away!"]"#),
            "/**/callback(\"c[3000,\\\"Go away!\\\"]\");\r\n"
        );
    }

    #[test]
    fn script_wires_cannot_be_broken_out_of() {
        let body = "</script><script>alert(1)</script><!-- \u{2028}\u{2029} & >";
        let mut message = Vec::new();
        quote(body, &mut message);
        let frame = messages([&message[..]]);
        for wire in [
            Wire::HtmlFile,
            Wire::Jsonp {
                callback: "c".into(),
            },
        ] {
            let out = wrapped(&wire, &frame);
            let inner = match &wire {
                Wire::HtmlFile => out
                    .strip_prefix("<script>\np(")
                    .and_then(|s| s.strip_suffix(");\n</script>\r\n")),
                _ => out
                    .strip_prefix("/**/c(")
                    .and_then(|s| s.strip_suffix(");\r\n")),
            }
            .expect("wrapped");
            assert!(!inner.contains('<'), "{inner}");
            assert!(!inner.contains('>'), "{inner}");
            assert!(!inner.contains('\u{2028}') && !inner.contains('\u{2029}'));
            // Both levels decode back to the message.
            let frame_back: String = serde_json::from_str(inner).expect("JS string");
            let array: Vec<String> =
                serde_json::from_str(frame_back.strip_prefix('a').expect("a frame"))
                    .expect("array");
            assert_eq!(array, vec![body.to_owned()]);
        }
    }

    #[test]
    fn callbacks() {
        for ok in ["callback", "a", "jQuery_1.2-3", &"x".repeat(32)] {
            assert!(valid_callback(ok), "{ok}");
        }
        for bad in [
            "",
            " ",
            "*",
            "abc(",
            "a b",
            "a;b",
            "<",
            &"x".repeat(33),
            "é",
        ] {
            assert!(!valid_callback(bad), "{bad}");
        }
    }
}
