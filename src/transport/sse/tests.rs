//! The event encoding, without sockets.

use super::*;

fn message(headers: &[(&str, &str)], body: &[u8]) -> Frame {
    let mut frame = Frame::new(Command::Message).with_body(Bytes::copy_from_slice(body));
    for (name, value) in headers {
        frame.push_header(name, value);
    }
    frame
}

fn text(out: &[u8]) -> &str {
    std::str::from_utf8(out).expect("events are UTF-8")
}

#[test]
fn a_text_body_is_one_data_line_per_line() {
    let frame = message(
        &[
            ("subscription", "sse"),
            ("destination", "/topic/a"),
            ("message-id", "T_sse@@1"),
        ],
        b"one\ntwo\r\nthree\rfour\n",
    );
    let mut out = Vec::new();
    assert_eq!(
        message_event(&frame, Envelope::Text, &mut out),
        SseEvent::Message
    );
    assert_eq!(
        text(&out),
        "id: T_sse@@1\ndata: one\ndata: two\ndata: three\ndata: four\ndata: \n\n"
    );
}

#[test]
fn an_empty_body_is_still_an_event() {
    let mut out = Vec::new();
    message_event(&message(&[], b""), Envelope::Text, &mut out);
    // One `data:` line: the data buffer is "\n", so the browser dispatches
    // an event whose data is "".
    assert_eq!(text(&out), "data: \n\n");
}

#[test]
fn a_backend_names_the_event() {
    let mut out = Vec::new();
    message_event(
        &message(&[("message-id", "m"), ("sse-event", "login")], b"alice"),
        Envelope::Text,
        &mut out,
    );
    assert_eq!(text(&out), "id: m\nevent: login\ndata: alice\n\n");
    // A name that would break the field syntax is left out.
    let mut out = Vec::new();
    message_event(
        &message(&[("sse-event", "a\nb")], b"x"),
        Envelope::Text,
        &mut out,
    );
    assert_eq!(text(&out), "data: x\n\n");
}

#[test]
fn a_binary_body_is_base64() {
    let mut out = Vec::new();
    let kind = message_event(
        &message(
            &[("message-id", "m"), ("sse-event", "ignored")],
            &[0xff, 0x00, 0x41],
        ),
        Envelope::Text,
        &mut out,
    );
    assert_eq!(kind, SseEvent::Binary);
    assert_eq!(text(&out), "id: m\nevent: binary\ndata: /wBB\n\n");
    let mut out = Vec::new();
    message_event(&message(&[], &[0xff]), Envelope::Json, &mut out);
    assert_eq!(
        text(&out),
        "data: {\"body_base64\":\"/w==\",\"headers\":{}}\n\n"
    );
}

#[test]
fn the_json_envelope_is_one_line_with_the_headers() {
    let mut out = Vec::new();
    message_event(
        &message(
            &[
                ("subscription", "sse"),
                ("ack", "x"),
                ("destination", "/topic/a"),
                ("content-type", "application/json"),
                ("message-id", "m"),
            ],
            b"{\"a\":\n1}",
        ),
        Envelope::Json,
        &mut out,
    );
    let out = text(&out);
    assert!(out.starts_with("id: m\ndata: {"), "{out}");
    assert!(out.ends_with("}\n\n"), "{out}");
    let data = out
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    let value: serde_json::Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(value["body"], "{\"a\":\n1}");
    assert_eq!(value["headers"]["destination"], "/topic/a");
    assert_eq!(value["headers"]["content-type"], "application/json");
    assert!(value["headers"].get("subscription").is_none());
    assert!(value["headers"].get("ack").is_none());
}

#[test]
fn a_stream_message_is_identified_by_its_offset() {
    let frame = message(&[("message-id", "m"), ("x-stream-offset", "41")], b"x");
    assert_eq!(event_id(&frame).as_deref(), Some("41"));
    assert_eq!(resume_offset("/amq/queue/s", Some("41")), Some(42));
    assert_eq!(resume_offset("/queue/s", Some(" 7 ")), Some(8));
    // Broadcast destinations cannot replay; message-ids are not offsets.
    assert_eq!(resume_offset("/topic/s", Some("41")), None);
    assert_eq!(resume_offset("/amq/queue/s", Some("T_sse@@3")), None);
    assert_eq!(resume_offset("/amq/queue/s", None), None);
    assert_eq!(
        resume_offset("/amq/queue/s", Some(&u64::MAX.to_string())),
        None
    );
}

#[test]
fn the_error_event_ends_the_stream() {
    let frame = Frame::new(Command::Error)
        .with_header("message", "Token expired")
        .with_body(&b"the token expired\n"[..]);
    let mut out = Vec::new();
    error_event(&frame, Envelope::Text, &mut out);
    assert_eq!(
        text(&out),
        "event: stomp-error\ndata: Token expired\ndata: the token expired\n\n"
    );
    let mut out = Vec::new();
    error_event(&frame, Envelope::Json, &mut out);
    assert_eq!(
        text(&out),
        "event: stomp-error\ndata: {\"body\":\"the token expired\\n\",\"message\":\"Token expired\"}\n\n"
    );
}

#[test]
fn refusals_map_to_statuses() {
    let error = |message: &str| Frame::new(Command::Error).with_header("message", message);
    assert_eq!(
        refusal_of(&error("Bad CONNECT"), false).status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refusal_of(&error("access_refused"), true).status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        refusal_of(&error("not_found"), true).status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        refusal_of(&error("Unknown destination"), true).status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        refusal_of(&error("channel_error"), true).status,
        StatusCode::BAD_GATEWAY
    );
}

#[test]
fn the_opening_frames_are_escaped() {
    let params = Params {
        destination: "/topic/a\nreceipt:x".to_owned(),
        envelope: Envelope::Text,
        vhost: None,
        last_event_id: Some("5".to_owned()),
    };
    let (connect, subscribe) = opening_frames(&params);
    assert!(connect.starts_with(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n"));
    let subscribe = std::str::from_utf8(&subscribe).expect("utf-8");
    assert!(
        subscribe.contains("destination:/topic/a\\nreceipt\\cx\n"),
        "{subscribe}"
    );
    assert!(!subscribe.contains("x-stream-offset"), "{subscribe}");
}
