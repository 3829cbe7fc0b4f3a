//! The SockJS server, tested from the SockJS protocol description
//! (sockjs-protocol's `sockjs-protocol.py`): plain HTTP over 127.0.0.1
//! against an in-process gateway with small timeouts. Most tests run the
//! echo service (`sockjs.echo`), as the protocol's own suite does; the last
//! ones carry STOMP end to end, through RabbitMQ, over xhr-streaming and
//! xhr-polling.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::sockjs_http::*;
use common::{start_gateway, unique};
use lapin::BasicProperties;
use stompgate::config::Config;

async fn echo_gateway(tweak: impl FnOnce(&mut Config)) -> common::TestGateway {
    start_gateway(|c| {
        c.sockjs.enabled = true;
        c.sockjs.echo = true;
        c.sockjs.heartbeat_ms = 25_000;
        c.sockjs.disconnect_delay_ms = 5_000;
        c.sockjs.response_limit_bytes = 4096;
        tweak(c);
    })
    .await
}

fn session_url() -> String {
    format!("/sockjs/000/{}", unique("s"))
}

const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";

#[tokio::test]
async fn greeting_info_and_options() {
    let gw = echo_gateway(|_| {}).await;
    for path in ["/sockjs", "/sockjs/"] {
        assert_eq!(
            body_of(get(gw.addr, path).await).await,
            (200, "Welcome to SockJS!\n".into())
        );
    }
    for path in ["/sockjs/a", "/sockjs/a.html", "/sockjs/a/a", "/sockjs/a/a/"] {
        assert_eq!(get(gw.addr, path).await.status, 404, "{path}");
    }
    let mut info = request(gw.addr, "GET", "/sockjs/info", &[("Origin", "test")], b"").await;
    assert_eq!(info.status, 200);
    assert_eq!(
        info.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert_eq!(info.header("cache-control"), Some(NO_CACHE));
    assert_eq!(info.header("access-control-allow-origin"), Some("test"));
    assert_eq!(
        info.header("access-control-allow-credentials"),
        Some("true")
    );
    assert!(info.header("set-cookie").is_none());
    assert!(info.header("expires").is_none());
    let data: serde_json::Value = serde_json::from_str(&info.rest().await).expect("json");
    assert_eq!(data["websocket"], true);
    assert_eq!(data["cookie_needed"], false);
    assert_eq!(data["origins"], serde_json::json!(["*:*"]));
    let again: serde_json::Value =
        serde_json::from_str(&get(gw.addr, "/sockjs/info").await.rest().await).expect("json");
    assert!(data["entropy"].is_u64());
    assert_ne!(data["entropy"], again["entropy"]);

    for origin in ["test", "null"] {
        let options = request(
            gw.addr,
            "OPTIONS",
            "/sockjs/info",
            &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
            b"",
        )
        .await;
        assert_eq!(options.status, 204);
        assert_eq!(
            options.header("cache-control"),
            Some("public, max-age=31536000")
        );
        assert!(options
            .header("expires")
            .is_some_and(|e| e.ends_with(" GMT")));
        assert_eq!(options.header("access-control-max-age"), Some("31536000"));
        assert_eq!(
            options.header("access-control-allow-methods"),
            Some("OPTIONS, GET")
        );
        assert_eq!(options.header("access-control-allow-origin"), Some(origin));
    }
}

#[tokio::test]
async fn iframe_is_cacheable_with_an_etag() {
    let gw = echo_gateway(|_| {}).await;
    let mut first = get(gw.addr, "/sockjs/iframe.html").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("content-type"),
        Some("text/html; charset=UTF-8")
    );
    assert_eq!(
        first.header("cache-control"),
        Some("public, max-age=31536000")
    );
    assert!(first.header("expires").is_some());
    assert!(first.header("last-modified").is_none());
    let etag = first.header("etag").expect("etag").to_owned();
    let page = first.rest().await;
    assert!(
        page.contains(r#"<script src="/sockjs/sockjs.min.js"></script>"#),
        "{page}"
    );
    assert!(page.contains("SockJS.bootstrap_iframe();"));
    for path in ["/sockjs/iframe-a.html", "/sockjs/iframe-0.1.2.html?t=1234"] {
        let other = get(gw.addr, path).await;
        assert_eq!(other.status, 200, "{path}");
        assert_eq!(other.header("etag"), Some(etag.as_str()));
    }
    let cached = request(
        gw.addr,
        "GET",
        "/sockjs/iframe.html",
        &[("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(cached.status, 304);
    assert!(cached.header("content-type").is_none());
    for path in [
        "/sockjs/iframe.htm",
        "/sockjs/IFRAME.HTML",
        "/sockjs/iframe.xml",
        "/sockjs/iframe-/.html",
    ] {
        assert_eq!(get(gw.addr, path).await.status, 404, "{path}");
    }
    // The bundle's path is 404 until `sockjs.client_file` is set.
    assert_eq!(get(gw.addr, "/sockjs/sockjs.min.js").await.status, 404);
}

#[tokio::test]
async fn client_bundle_is_served_from_the_configured_file() {
    let dir = std::env::temp_dir().join(unique("sockjs-bundle"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("sockjs.min.js");
    std::fs::write(&file, "/* bundle */").expect("write");
    let gw = echo_gateway(|c| {
        c.sockjs.client_file = Some(file.clone());
        c.sockjs.client_url = Some("https://static.example/sockjs.js".into());
    })
    .await;
    let mut bundle = get(gw.addr, "/sockjs/sockjs.min.js").await;
    assert_eq!(bundle.status, 200);
    assert_eq!(
        bundle.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert_eq!(bundle.rest().await, "/* bundle */");
    let page = get(gw.addr, "/sockjs/iframe.html").await.rest().await;
    assert!(page.contains(r#"<script src="https://static.example/sockjs.js"></script>"#));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn xhr_polling_session() {
    let gw = echo_gateway(|_| {}).await;
    let url = session_url();
    let mut open = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr"),
        &[("Origin", "test")],
        b"",
    )
    .await;
    assert_eq!(open.status, 200);
    assert_eq!(
        open.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert_eq!(open.header("cache-control"), Some(NO_CACHE));
    assert_eq!(open.header("access-control-allow-origin"), Some("test"));
    assert_eq!(open.rest().await, "o\n");

    let sent = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr_send"),
        &[("Origin", "test")],
        b"[\"x\"]",
    )
    .await;
    assert_eq!(sent.status, 204);
    assert_eq!(
        sent.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    assert_eq!(sent.header("cache-control"), Some(NO_CACHE));
    assert_eq!(sent.header("access-control-allow-origin"), Some("test"));
    assert_eq!(
        body_of(post(gw.addr, &format!("{url}/xhr"), "").await).await,
        (200, "a[\"x\"]\n".into())
    );

    // Broken and empty bodies.
    let (status, text) = body_of(post(gw.addr, &format!("{url}/xhr_send"), "[\"x").await).await;
    assert_eq!(status, 500);
    assert!(text.contains("Broken JSON encoding."));
    let (status, text) = body_of(post(gw.addr, &format!("{url}/xhr_send"), "").await).await;
    assert_eq!(status, 500);
    assert!(text.contains("Payload expected."));
    assert_eq!(
        post(gw.addr, &format!("{url}/xhr_send"), "[]").await.status,
        204
    );

    // Any content type.
    for ct in [
        "text/plain",
        "T",
        "application/json",
        "application/xml",
        "text/xml; charset=utf-8",
    ] {
        let r = request(
            gw.addr,
            "POST",
            &format!("{url}/xhr_send"),
            &[("Content-Type", ct)],
            b"[\"a\"]",
        )
        .await;
        assert_eq!(r.status, 204, "{ct}");
    }
    assert_eq!(
        body_of(post(gw.addr, &format!("{url}/xhr"), "").await)
            .await
            .1,
        "a[\"a\",\"a\",\"a\",\"a\",\"a\"]\n"
    );

    // One receiver at a time.
    let mut waiting = post(gw.addr, &format!("{url}/xhr"), "").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        body_of(post(gw.addr, &format!("{url}/xhr"), "").await).await,
        (200, "c[2010,\"Another connection still open\"]\n".into())
    );
    post(gw.addr, &format!("{url}/xhr_send"), "[\"late\"]").await;
    waiting.expect("a[\"late\"]\n").await;

    // The server id is ignored; unknown sessions are 404; bad paths too.
    let other_server = url.replacen("/000/", "/999/", 1);
    post(gw.addr, &format!("{other_server}/xhr_send"), "[\"b\"]").await;
    assert_eq!(
        body_of(post(gw.addr, &format!("{url}/xhr"), "").await)
            .await
            .1,
        "a[\"b\"]\n"
    );
    assert_eq!(
        post(gw.addr, "/sockjs/000/nosuch/xhr_send", "[\"x\"]")
            .await
            .status,
        404
    );
    for bad in [
        "/sockjs/a./a/xhr",
        "/sockjs/a/a./xhr",
        "/sockjs/a/a/nothing",
    ] {
        assert_eq!(post(gw.addr, bad, "").await.status, 404, "{bad}");
    }
    // Methods.
    assert_eq!(get(gw.addr, &format!("{url}/xhr")).await.status, 405);

    for path in ["xhr", "xhr_send", "xhr_streaming"] {
        let options = request(
            gw.addr,
            "OPTIONS",
            &format!("/sockjs/abc/abc/{path}"),
            &[
                ("Origin", "test"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "a, b, c"),
            ],
            b"",
        )
        .await;
        assert_eq!(options.status, 204);
        assert_eq!(
            options.header("access-control-allow-methods"),
            Some("OPTIONS, POST")
        );
        assert_eq!(
            options.header("access-control-allow-headers"),
            Some("a, b, c")
        );
        assert_eq!(
            options.header("access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(options.header("access-control-max-age"), Some("31536000"));
    }
    // No Origin: `*`, no credentials.
    let r = post(gw.addr, &format!("{}/xhr", session_url()), "").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());
    assert!(r.header("set-cookie").is_none());
}

#[tokio::test]
async fn xhr_streaming_prelude_and_response_limit() {
    let gw = echo_gateway(|_| {}).await;
    let url = session_url();
    let mut stream = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr_streaming"),
        &[("Origin", "test")],
        b"",
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert_eq!(stream.header("cache-control"), Some(NO_CACHE));
    assert_eq!(stream.header("access-control-allow-origin"), Some("test"));
    stream.expect(&format!("{}\n", "h".repeat(2048))).await;
    stream.expect("o\n").await;
    let msg = format!("\"{}\"", "x".repeat(128));
    for _ in 0..31 {
        assert_eq!(
            post(gw.addr, &format!("{url}/xhr_send"), &format!("[{msg}]"))
                .await
                .status,
            204
        );
        stream.expect(&format!("a[{msg}]\n")).await;
    }
    assert!(
        stream.ended_within(Duration::from_secs(2)).await,
        "closed after 4096 bytes"
    );

    // A second streaming receiver gets the prelude and 2010, and ends.
    let url = session_url();
    let mut first = post(gw.addr, &format!("{url}/xhr_streaming"), "").await;
    first.read(2049).await;
    first.expect("o\n").await;
    let mut second = post(gw.addr, &format!("{url}/xhr_streaming"), "").await;
    second.read(2049).await;
    assert_eq!(
        second.rest().await,
        "c[2010,\"Another connection still open\"]\n"
    );
}

#[tokio::test]
async fn heartbeat_disconnect_delay_and_abort() {
    let gw = echo_gateway(|c| {
        c.sockjs.heartbeat_ms = 300;
        c.sockjs.disconnect_delay_ms = 400;
    })
    .await;
    let url = session_url();
    let mut stream = post(gw.addr, &format!("{url}/xhr_streaming"), "").await;
    stream.read(2049).await;
    stream.expect("o\n").await;
    let started = Instant::now();
    stream.expect("h\n").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    drop(stream);
    // The client went away mid-response: the session ends, and a send is 404
    // once it is forgotten.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        post(gw.addr, &format!("{url}/xhr_send"), "[\"x\"]")
            .await
            .status,
        404
    );

    // Without any receiver the session lives `disconnect_delay` more.
    let url = session_url();
    assert_eq!(
        body_of(post(gw.addr, &format!("{url}/xhr"), "").await)
            .await
            .1,
        "o\n"
    );
    assert_eq!(
        post(gw.addr, &format!("{url}/xhr_send"), "[\"x\"]")
            .await
            .status,
        204
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        post(gw.addr, &format!("{url}/xhr_send"), "[\"x\"]")
            .await
            .status,
        404
    );

    // A poll with nothing to say ends with `h` after the heartbeat delay.
    let url = session_url();
    post(gw.addr, &format!("{url}/xhr"), "").await.rest().await;
    assert_eq!(
        body_of(post(gw.addr, &format!("{url}/xhr"), "").await)
            .await
            .1,
        "h\n"
    );
}

#[tokio::test]
async fn eventsource_transport() {
    let gw = echo_gateway(|_| {}).await;
    let url = session_url();
    let mut es = get(gw.addr, &format!("{url}/eventsource")).await;
    assert_eq!(es.status, 200);
    assert_eq!(es.header("content-type"), Some("text/event-stream"));
    assert_eq!(es.header("cache-control"), Some(NO_CACHE));
    es.expect("\r\n").await;
    es.expect("data: o\r\n\r\n").await;
    post(gw.addr, &format!("{url}/xhr_send"), "[\"x\"]").await;
    es.expect("data: a[\"x\"]\r\n\r\n").await;
    post(
        gw.addr,
        &format!("{url}/xhr_send"),
        r#"["  \u0000\n\r 100%"]"#,
    )
    .await;
    es.expect("data: a[\"  \\u0000\\n\\r 100%25\"]\r\n\r\n")
        .await;
}

/// A message holding `</script>`, `<!--`, U+2028 and U+2029 stays inside
/// the script of `htmlfile` and `jsonp` responses.
#[tokio::test]
async fn htmlfile_and_jsonp_cannot_be_broken_out_of() {
    let gw = echo_gateway(|_| {}).await;
    let hostile = "</script><script>alert(1)</script><!-- \u{2028}\u{2029}";
    let payload = serde_json::to_string(&[hostile]).expect("json");

    let url = session_url();
    let mut html = get(gw.addr, &format!("{url}/htmlfile?c=%63allback")).await;
    assert_eq!(html.status, 200);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=UTF-8")
    );
    assert_eq!(html.header("cache-control"), Some(NO_CACHE));
    let prelude = html.read(1024).await;
    let prelude = String::from_utf8_lossy(&prelude);
    assert!(prelude.starts_with("<!doctype html>"));
    assert!(prelude.contains("var c = parent.callback;"));
    while html.read(1).await != b"\n" {}
    html.read(2).await; // the prelude's final "\r\n"
    html.expect("<script>\np(\"o\");\n</script>\r\n").await;
    post(gw.addr, &format!("{url}/xhr_send"), &payload).await;
    let script = until(&mut html, "</script>\r\n").await;
    assert!(
        script.starts_with("<script>\np(\"a[") && script.ends_with(");\n</script>\r\n"),
        "{script}"
    );
    let inner = &script["<script>".len()..script.len() - "</script>\r\n".len()];
    assert!(!inner.contains('<') && !inner.contains('>'), "{inner}");
    assert!(!inner.contains('\u{2028}') && !inner.contains('\u{2029}'));
    let frame: String =
        serde_json::from_str(&inner["\np(".len()..inner.len() - ");\n".len()]).expect("string");
    let messages: Vec<String> = serde_json::from_str(&frame[1..]).expect("array");
    assert_eq!(messages, vec![hostile.to_owned()]);

    let url = session_url();
    let mut first = get(gw.addr, &format!("{url}/jsonp?c=cb")).await;
    assert_eq!(
        first.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert_eq!(first.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(first.header("cache-control"), Some(NO_CACHE));
    assert_eq!(first.rest().await, "/**/cb(\"o\");\r\n");
    let form = format!("d={}", percent(&payload));
    let sent = request(
        gw.addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    assert_eq!(
        sent.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    assert_eq!(body_of(sent).await, (200, "ok".into()));
    let script = get(gw.addr, &format!("{url}/jsonp?c=cb"))
        .await
        .rest()
        .await;
    let inner = script
        .strip_prefix("/**/cb(")
        .and_then(|s| s.strip_suffix(");\r\n"))
        .expect("jsonp call");
    assert!(
        !inner.contains('<') && !inner.contains('\u{2028}'),
        "{inner}"
    );
    let frame: String = serde_json::from_str(inner).expect("string");
    let messages: Vec<String> = serde_json::from_str(&frame[1..]).expect("array");
    assert_eq!(messages, vec![hostile.to_owned()]);

    for transport in ["htmlfile", "jsonp"] {
        let (status, text) = body_of(get(gw.addr, &format!("/sockjs/a/a/{transport}")).await).await;
        assert_eq!(status, 500);
        assert!(text.contains("\"callback\" parameter required"));
        for bad in ["%20", "*", "abc(", "abc%28", "a%3Cscript"] {
            let (status, text) =
                body_of(get(gw.addr, &format!("/sockjs/a/a/{transport}?c={bad}")).await).await;
            assert_eq!(status, 500, "{bad}");
            assert!(text.contains("invalid \"callback\" parameter"));
        }
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn limits_and_cookies() {
    let gw = echo_gateway(|c| {
        c.sockjs.max_sessions = 1;
        c.sockjs.max_body_bytes = 64;
        c.sockjs.jsessionid = true;
    })
    .await;
    let url = session_url();
    let open = post(gw.addr, &format!("{url}/xhr"), "").await;
    assert_eq!(open.header("set-cookie"), Some("JSESSIONID=dummy; path=/"));
    let mine = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr_send"),
        &[("Cookie", "JSESSIONID=abcdef")],
        b"[]",
    )
    .await;
    assert_eq!(mine.header("set-cookie"), Some("JSESSIONID=abcdef; path=/"));
    let info: serde_json::Value =
        serde_json::from_str(&get(gw.addr, "/sockjs/info").await.rest().await).expect("json");
    assert_eq!(info["cookie_needed"], true);
    // One session at most.
    assert_eq!(
        post(gw.addr, &format!("{}/xhr", session_url()), "")
            .await
            .status,
        503
    );
    // Bodies are bounded.
    let big = format!("[\"{}\"]", "x".repeat(100));
    assert_eq!(
        post(gw.addr, &format!("{url}/xhr_send"), &big).await.status,
        413
    );
}

// STOMP end to end, through RabbitMQ.

/// `frame` to the session at `url` through `xhr_send` (204 expected).
async fn xhr_send(addr: SocketAddr, url: &str, frame: &str) {
    let path = format!("{url}/xhr_send");
    assert_eq!(post(addr, &path, &stomp(frame)).await.status, 204);
}

/// A new session receiving over `xhr_streaming`, STOMP-connected and
/// subscribed (with a receipt) to a fresh topic: (stream, url, topic).
async fn subscribed_stream(addr: SocketAddr) -> (Http, String, String) {
    let url = session_url();
    let mut stream = post(addr, &format!("{url}/xhr_streaming"), "").await;
    stream.read(2049).await;
    stream.expect("o\n").await;
    xhr_send(
        addr,
        &url,
        "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0",
    )
    .await;
    until(&mut stream, "CONNECTED").await;
    let topic = unique("sockjs");
    xhr_send(
        addr,
        &url,
        &format!("SUBSCRIBE\nid:s1\ndestination:/topic/{topic}\nreceipt:r1\n\n\0"),
    )
    .await;
    until(&mut stream, "receipt-id:r1").await;
    (stream, url, topic)
}

#[tokio::test]
async fn stomp_over_xhr_streaming() {
    let gw = start_gateway(|c| c.sockjs.enabled = true).await;
    let (mut stream, url, topic) = subscribed_stream(gw.addr).await;
    let conn = common::amqp().await;
    let ch = common::confirm_channel(&conn).await;
    common::publish(
        &ch,
        "amq.topic",
        &topic,
        "héllo </script> \u{2028}".as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let seen = until(&mut stream, "MESSAGE").await;
    let seen = seen + &until(&mut stream, "\\u0000").await;
    assert!(seen.contains("héllo </script> \\u2028"), "{seen}");
    xhr_send(
        gw.addr,
        &url,
        &format!("SEND\ndestination:/topic/{topic}\nreceipt:r2\n\nback\0"),
    )
    .await;
    let seen = until(&mut stream, "receipt-id:r2").await;
    assert!(seen.contains("back") || until(&mut stream, "back").await.contains("back"));
    xhr_send(gw.addr, &url, "DISCONNECT\nreceipt:bye\n\n\0").await;
    until(&mut stream, "receipt-id:bye").await;
    until(&mut stream, "c[3000,\"Go away!\"]\n").await;
    assert!(stream.ended_within(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn stomp_over_xhr_polling() {
    let gw = start_gateway(|c| c.sockjs.enabled = true).await;
    let url = session_url();
    let poll = || {
        let path = format!("{url}/xhr");
        async move { body_of(post(gw.addr, &path, "").await).await.1 }
    };
    let send = |frame: &str| {
        let body = stomp(frame);
        let path = format!("{url}/xhr_send");
        async move { assert_eq!(post(gw.addr, &path, &body).await.status, 204) }
    };
    assert_eq!(poll().await, "o\n");
    send("CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0").await;
    assert!(poll().await.starts_with("a[\"CONNECTED\\n"));
    let topic = unique("sockjs");
    send(&format!(
        "SUBSCRIBE\nid:s1\ndestination:/topic/{topic}\nreceipt:r1\n\n\0"
    ))
    .await;
    assert!(poll().await.contains("receipt-id:r1"));
    let conn = common::amqp().await;
    let ch = common::confirm_channel(&conn).await;
    let waiting = tokio::spawn(poll());
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::publish(
        &ch,
        "amq.topic",
        &topic,
        b"pushed",
        BasicProperties::default(),
    )
    .await;
    let got = waiting.await.expect("poll");
    assert!(
        got.starts_with("a[\"MESSAGE\\n") && got.contains("pushed"),
        "{got}"
    );
    send(&format!(
        "SEND\ndestination:/topic/{topic}\nreceipt:r2\n\nback\0"
    ))
    .await;
    let mut seen = String::new();
    while !(seen.contains("receipt-id:r2") && seen.contains("back")) {
        seen.push_str(&poll().await);
    }
    // An ERROR ends the STOMP session and with it the SockJS session.
    send("BOGUS\n\n\0").await;
    let mut seen = String::new();
    while !seen.contains("c[3000,\"Go away!\"]") {
        seen.push_str(&poll().await);
    }
    assert!(seen.contains("ERROR"), "{seen}");
}

#[tokio::test]
async fn non_utf8_bodies_end_the_session_with_an_error() {
    let gw = start_gateway(|c| c.sockjs.enabled = true).await;
    let (mut stream, _url, topic) = subscribed_stream(gw.addr).await;
    let conn = common::amqp().await;
    let ch = common::confirm_channel(&conn).await;
    common::publish(
        &ch,
        "amq.topic",
        &topic,
        b"\xff\xfe",
        BasicProperties::default(),
    )
    .await;
    let seen = until(&mut stream, "c[3000,\"Go away!\"]").await;
    assert!(seen.contains("not valid UTF-8"), "{seen}");
}

/// The token of a SockJS session can ride on its URLs (`access_token`),
/// as on the WebSocket handshake: a CONNECT without passcode is then
/// authenticated by it; without it, refused.
#[tokio::test]
async fn access_token_on_the_session_url_authenticates_the_session() {
    const SECRET: &str = "sockjs-url-token-secret";
    let gw = start_gateway(|c| {
        c.sockjs.enabled = true;
        c.auth.anonymous = false;
        c.auth.jwt = Some(stompgate::config::JwtConfig {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        });
    })
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 600;
    let token = common::jwt_hs256(SECRET, serde_json::json!({"sub": "merchant-7", "exp": exp}));
    let connect = "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0";
    for (query, expected) in [
        (format!("?access_token={token}"), "CONNECTED"),
        (String::new(), "ERROR"),
    ] {
        let url = session_url();
        let poll = || {
            let path = format!("{url}/xhr{query}");
            async move { body_of(post(gw.addr, &path, "").await).await.1 }
        };
        assert_eq!(poll().await, "o\n");
        let path = format!("{url}/xhr_send{query}");
        assert_eq!(post(gw.addr, &path, &stomp(connect)).await.status, 204);
        let answer = poll().await;
        assert!(
            answer.starts_with(&format!("a[\"{expected}\\n")),
            "{query:?}: {answer}"
        );
    }
}

/// A drain reaches SockJS sessions too: the STOMP session ends with the
/// shutdown ERROR and the SockJS session with its close frame.
#[tokio::test]
async fn a_drain_ends_sockjs_sessions_with_the_shutdown_error() {
    let gw = start_gateway(|c| {
        c.sockjs.enabled = true;
        c.drain_window_ms = 200;
    })
    .await;
    let (mut stream, _url, _topic) = subscribed_stream(gw.addr).await;
    gw.gateway.begin_drain();
    let seen = until(&mut stream, "c[3000,\"Go away!\"]\n").await;
    assert!(seen.contains("server shutting down"), "{seen}");
    assert!(stream.ended_within(Duration::from_secs(2)).await);
}

/// HTTP SockJS sessions count under the connection limits as WebSockets
/// do: a client cannot open sessions beyond `max_connections_per_ip`.
#[tokio::test]
async fn new_sessions_count_under_the_per_ip_limit() {
    let gw = start_gateway(|c| {
        c.sockjs.enabled = true;
        c.security.max_connections_per_ip = 1;
    })
    .await;
    let first = session_url();
    let (status, body) = body_of(post(gw.addr, &format!("{first}/xhr"), "").await).await;
    assert_eq!((status, body.as_str()), (200, "o\n"));
    // The same session again is no new connection.
    let again = post(gw.addr, &format!("{first}/xhr"), "").await;
    assert_eq!(again.status, 200);
    let second = post(gw.addr, &format!("{}/xhr", session_url()), "").await;
    assert_eq!(second.status, 429, "a second session from the same address");
    assert_eq!(gw.gateway.admitted(), 1);
}
