//! The fixed documents of a SockJS server: the `/info` answer, the
//! `/iframe.html` page (with its ETag) and the HTML prelude of `htmlfile`.
//!
//! `/iframe.html` is what transports without CORS (`iframe-htmlfile`,
//! `iframe-eventsource`, `iframe-xhr-polling`) load from the gateway's
//! origin; it runs a copy of sockjs-client. That copy comes from the URL in
//! `sockjs.client_url`, by default a file the gateway serves itself: a
//! CDN would make every page using the gateway run code from a third party.
//! The ETag is a hash of the page, the same on every replica, so that a
//! browser behind a round-robin balancer keeps its cached copy.

/// The `/info` answer: websocket support, whether the balancer needs a
/// `JSESSIONID` cookie, allowed origins (`*:*`, the SockJS clients ignore
/// the list) and a fresh random number for the client's entropy.
pub fn info_json(websocket: bool, cookie_needed: bool, entropy: u32) -> String {
    format!(
        r#"{{"websocket":{websocket},"origins":["*:*"],"cookie_needed":{cookie_needed},"entropy":{entropy}}}"#
    )
}

/// Escapes text for an HTML attribute value in double quotes.
fn html_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The iframe page, loading sockjs-client from `client_url`.
pub fn iframe_html(client_url: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"#,
        html_attribute(client_url)
    )
}

/// A strong ETag for `content`: FNV-1a (64 bits), quoted. Stable across
/// processes and versions (unlike `std`'s hasher), so that every replica
/// gives the same tag.
pub fn etag(content: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in content {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

/// Whether a `/iframe*.html` path segment is one the protocol serves:
/// `iframe.html`, or `iframe-<version>.html` with no `/` in the version.
pub fn is_iframe_name(segment: &str) -> bool {
    segment == "iframe.html"
        || segment
            .strip_prefix("iframe-")
            .and_then(|rest| rest.strip_suffix(".html"))
            .is_some_and(|version| !version.contains('/'))
}

/// The start of an `htmlfile` response: a page whose script hands each
/// frame to `parent.<callback>`, padded past 1 KiB (Safari and IE render
/// nothing of a streaming page before that). `callback` was checked with
/// [`super::frame::valid_callback`].
pub fn htmlfile_prelude(callback: &str) -> Vec<u8> {
    let mut page = format!(
        r#"<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{callback};
    c.start();
    function p(d) {{c.message(d);}};
    window.onload = function() {{c.stop();}};
  </script>
"#
    )
    .into_bytes();
    let padded = page.len().max(1024) + 13;
    page.resize(padded, b' ');
    page.extend_from_slice(b"\r\n\r\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_json() {
        let info: serde_json::Value =
            serde_json::from_str(&info_json(true, false, 4_294_967_295)).expect("json");
        assert_eq!(info["websocket"], true);
        assert_eq!(info["cookie_needed"], false);
        assert_eq!(info["origins"], serde_json::json!(["*:*"]));
        assert_eq!(info["entropy"], 4_294_967_295u64);
    }

    #[test]
    fn iframe_page() {
        let page = iframe_html("/sockjs/sockjs.min.js");
        assert!(page.contains(r#"<script src="/sockjs/sockjs.min.js"></script>"#));
        assert!(page.starts_with("<!DOCTYPE html>\n<html>"));
        assert!(page.ends_with("</html>"));
        let hostile = iframe_html(r#""></script><script>alert(1)</script>"#);
        assert!(!hostile.contains("<script>alert"));
        assert_eq!(etag(page.as_bytes()), etag(page.as_bytes()));
        assert_ne!(etag(page.as_bytes()), etag(hostile.as_bytes()));
        assert_eq!(etag(b"").len(), 18);
    }

    #[test]
    fn iframe_names() {
        for ok in [
            "iframe.html",
            "iframe-a.html",
            "iframe-.html",
            "iframe-0.1.2abc-dirty.2144.html",
        ] {
            assert!(is_iframe_name(ok), "{ok}");
        }
        for bad in [
            "iframe.htm",
            "iframe",
            "IFRAME.HTML",
            "iframe.HTML",
            "iframe.xml",
            "iframe-/.html",
        ] {
            assert!(!is_iframe_name(bad), "{bad}");
        }
    }

    #[test]
    fn htmlfile_prelude_is_padded() {
        let page = htmlfile_prelude("callback");
        assert!(page.len() > 1024);
        let text = String::from_utf8(page).expect("utf-8");
        assert!(text.contains("var c = parent.callback;"));
        assert!(text.ends_with("\r\n\r\n"));
        assert!(text.trim().ends_with("</script>"));
    }
}
