//! Unit tests of the STOMP codec: bytes in, frames and heart-beats out; frames
//! in, bytes out; limits, escaping and input arriving in pieces.

use bytes::Bytes;

use super::*;

// ---- helpers ---------------------------------------------------------

fn codec() -> StompCodec {
    StompCodec::new(FrameLimits::default())
}

fn codec_with(escaping: Escaping) -> StompCodec {
    let mut c = codec();
    c.set_escaping(escaping);
    c
}

fn limits(max_frame_bytes: usize, max_headers: usize, max_header_line: usize) -> FrameLimits {
    FrameLimits {
        max_frame_bytes,
        max_headers,
        max_header_line,
    }
}

/// Decodes everything decodable from `buf`, stopping at the first error.
fn drain(codec: &mut StompCodec, buf: &mut BytesMut) -> Result<Vec<Inbound>, DecodeError> {
    let mut out = Vec::new();
    while let Some(item) = codec.decode(buf)? {
        out.push(item);
    }
    Ok(out)
}

/// Decodes `input` given all at once; returns the items and what is left.
fn decode_all(
    codec: &mut StompCodec,
    input: &[u8],
) -> Result<(Vec<Inbound>, BytesMut), DecodeError> {
    let mut buf = BytesMut::from(input);
    let items = drain(codec, &mut buf)?;
    Ok((items, buf))
}

/// Decodes `input` fed `chunk` octets at a time.
fn decode_chunked(
    codec: &mut StompCodec,
    input: &[u8],
    chunk: usize,
) -> Result<(Vec<Inbound>, BytesMut), DecodeError> {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        items.extend(drain(codec, &mut buf)?);
    }
    Ok((items, buf))
}

/// Consecutive heart-beats merged: how many EOLs make one heart-beat
/// depends on how the input was cut.
fn collapse(items: Vec<Inbound>) -> Vec<Inbound> {
    let mut out: Vec<Inbound> = Vec::new();
    for item in items {
        if item == Inbound::Heartbeat && out.last() == Some(&Inbound::Heartbeat) {
            continue;
        }
        out.push(item);
    }
    out
}

fn frames(items: Vec<Inbound>) -> Vec<Frame> {
    items
        .into_iter()
        .filter_map(|i| match i {
            Inbound::Frame(f) => Some(f),
            Inbound::Heartbeat => None,
        })
        .collect()
}

/// Decodes exactly one frame from `input` with a 1.2 codec.
fn one(input: &[u8]) -> Frame {
    one_with(&mut codec(), input)
}

fn one_with(codec: &mut StompCodec, input: &[u8]) -> Frame {
    let (items, rest) = decode_all(codec, input).expect("decodes");
    assert!(rest.is_empty(), "left over: {rest:?}");
    match <[Inbound; 1]>::try_from(items) {
        Ok([Inbound::Frame(f)]) => f,
        other => panic!("expected one frame, got {other:?}"),
    }
}

fn err(input: &[u8]) -> DecodeError {
    err_with(&mut codec(), input)
}

fn err_with(codec: &mut StompCodec, input: &[u8]) -> DecodeError {
    decode_all(codec, input).expect_err("must fail")
}

fn encode(frame: &Frame, escaping: Escaping) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode_frame(frame, escaping, &mut dst);
    dst.to_vec()
}

/// Headers unescaped, all of them (repeats included), in order.
fn plain_headers(frame: &Frame) -> Vec<(String, String)> {
    let escaping = if frame.command.escapes_headers() {
        frame.escaping
    } else {
        Escaping::None
    };
    frame
        .headers
        .iter()
        .map(|h| {
            (
                unescape(&h.name, escaping).into_owned(),
                unescape(&h.value, escaping).into_owned(),
            )
        })
        .collect()
}

fn raw(name: &'static [u8], value: &'static [u8]) -> RawHeader {
    RawHeader {
        name: Bytes::from_static(name),
        value: Bytes::from_static(value),
    }
}

// ---- clients in the wild -----------------------------------------------

#[test]
fn decodes_stompjs_connect() {
    let f = one(b"CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\n\n\0");
    assert_eq!(f.command, Command::Connect);
    assert_eq!(f.escaping, Escaping::None, "CONNECT headers are literal");
    assert_eq!(f.header("accept-version").as_deref(), Some("1.2,1.1,1.0"));
    assert_eq!(f.header("heart-beat").as_deref(), Some("10000,10000"));
    assert!(f.body.is_empty());
}

#[test]
fn decodes_stompjs_session_frames() {
    let input: &[u8] = b"SUBSCRIBE\nid:sub-0\ndestination:/topic/prices\nack:client-individual\n\n\0\
        SEND\ndestination:/queue/orders\ncontent-type:application/json\ncontent-length:13\n\n{\"qty\":12345}\0\
        ACK\nid:T_sub-0@@1\nsubscription:sub-0\nx-custom:anything at all\n\n\0\
        \n\
        DISCONNECT\nreceipt:close-1\n\n\0";
    let got = frames(decode_all(&mut codec(), input).unwrap().0);
    let commands: Vec<Command> = got.iter().map(|f| f.command).collect();
    assert_eq!(
        commands,
        [
            Command::Subscribe,
            Command::Send,
            Command::Ack,
            Command::Disconnect
        ]
    );
    assert_eq!(
        got[0].header("destination").as_deref(),
        Some("/topic/prices")
    );
    assert_eq!(&got[1].body[..], b"{\"qty\":12345}");
    assert_eq!(got[2].header("id").as_deref(), Some("T_sub-0@@1"));
    assert_eq!(
        got[2].header("x-custom").as_deref(),
        Some("anything at all")
    );
    assert_eq!(got[2].escaping, Escaping::V12);
    assert_eq!(got[3].header("receipt").as_deref(), Some("close-1"));
}

#[test]
fn crlf_line_endings() {
    let f = one(b"SEND\r\ndestination:/queue/a\r\nfoo:bar\r\n\r\nhello\0");
    assert_eq!(f.command, Command::Send);
    assert_eq!(
        plain_headers(&f),
        [
            ("destination".into(), "/queue/a".into()),
            ("foo".into(), "bar".into())
        ]
    );
    assert_eq!(&f.body[..], b"hello");
}

#[test]
fn empty_names_values_and_bodies_are_fine() {
    let f = one(b"SEND\ndestination:\n:novalue\n\n\0");
    assert_eq!(
        plain_headers(&f),
        [
            ("destination".into(), String::new()),
            (String::new(), "novalue".into())
        ]
    );
    assert!(f.body.is_empty());
    let f = one(b"DISCONNECT\n\n\0");
    assert!(f.headers.is_empty());
}

// ---- escaping ------------------------------------------------------------

#[test]
fn escaping_v12_wire_form_and_round_trip() {
    let frame = Frame::new(Command::Message)
        .with_header("a:b", "x\\y\nz:w\rv")
        .with_header("plain", "text");
    let wire = encode(&frame, Escaping::V12);
    assert_eq!(
        wire,
        b"MESSAGE\na\\cb:x\\\\y\\nz\\cw\\rv\nplain:text\n\n\0".to_vec()
    );
    let back = one_with(&mut codec_with(Escaping::V12), &wire);
    assert_eq!(back.escaping, Escaping::V12);
    assert_eq!(back.header("a:b").as_deref(), Some("x\\y\nz:w\rv"));
    assert_eq!(back.header("plain").as_deref(), Some("text"));
}

#[test]
fn escaping_v11_writes_cr_raw_and_round_trips() {
    let frame = Frame::new(Command::Message).with_header("a:b", "x\\y\nz:w\rv");
    let wire = encode(&frame, Escaping::V11);
    assert_eq!(wire, b"MESSAGE\na\\cb:x\\\\y\\nz\\cw\rv\n\n\0".to_vec());
    let back = one_with(&mut codec_with(Escaping::V11), &wire);
    assert_eq!(back.escaping, Escaping::V11);
    assert_eq!(back.header("a:b").as_deref(), Some("x\\y\nz:w\rv"));
}

#[test]
fn escaping_none_writes_raw() {
    let frame = Frame::new(Command::Message).with_header("destination", "/queue/a\\b:c\rd");
    let wire = encode(&frame, Escaping::None);
    assert_eq!(
        wire,
        b"MESSAGE\ndestination:/queue/a\\b:c\rd\n\n\0".to_vec()
    );
    let back = one_with(&mut codec_with(Escaping::None), &wire);
    assert_eq!(back.escaping, Escaping::None);
    assert_eq!(
        back.header("destination").as_deref(),
        Some("/queue/a\\b:c\rd")
    );
}

#[test]
fn connect_stomp_connected_are_never_escaped() {
    for command in [Command::Connect, Command::Stomp, Command::Connected] {
        let frame = Frame::new(command).with_header("passcode", "a:b\\c");
        for escaping in [Escaping::None, Escaping::V11, Escaping::V12] {
            let wire = encode(&frame, escaping);
            let expected = format!("{command}\npasscode:a:b\\c\n\n\0");
            assert_eq!(wire, expected.as_bytes());
            // Backslashes that are not escapes are fine in these frames.
            let back = one_with(&mut codec_with(escaping), &wire);
            assert_eq!(back.escaping, Escaping::None);
            assert_eq!(back.header("passcode").as_deref(), Some("a:b\\c"));
        }
    }
    // A CONNECT as sent by a client whose password has a backslash.
    let f = one(b"CONNECT\nlogin:u\npasscode:p\\t\n\n\0");
    assert_eq!(f.header("passcode").as_deref(), Some("p\\t"));
}

#[test]
fn decoder_keeps_headers_escaped() {
    let f = one(b"SEND\ndestination:/queue/a\\cb\n\n\0");
    assert_eq!(&f.headers[0].value[..], b"/queue/a\\cb");
    assert_eq!(f.header("destination").as_deref(), Some("/queue/a:b"));
}

#[test]
fn cr_escape_is_illegal_in_v11_and_legal_in_v12() {
    let input = b"SEND\nx:a\\rb\n\n\0";
    assert_eq!(
        err_with(&mut codec_with(Escaping::V11), input),
        DecodeError::InvalidEscape("\\r".into())
    );
    let f = one_with(&mut codec_with(Escaping::V12), input);
    assert_eq!(f.header("x").as_deref(), Some("a\rb"));
}

#[test]
fn invalid_escapes_are_rejected() {
    for escaping in [Escaping::V11, Escaping::V12] {
        let c = || codec_with(escaping);
        assert_eq!(
            err_with(&mut c(), b"SEND\nx:a\\tb\n\n\0"),
            DecodeError::InvalidEscape("\\t".into())
        );
        assert_eq!(
            err_with(&mut c(), b"SEND\nx\\q:v\n\n\0"),
            DecodeError::InvalidEscape("\\q".into())
        );
        assert_eq!(
            err_with(&mut c(), b"SEND\nx:trailing\\\n\n\0"),
            DecodeError::InvalidEscape("\\".into())
        );
        assert_eq!(
            err_with(&mut c(), "SEND\nx:\\é\n\n\0".as_bytes()),
            DecodeError::InvalidEscape("\\é".into())
        );
        // An escaped backslash followed by a letter is fine.
        let f = one_with(&mut c(), b"SEND\nx:\\\\t\\\\\n\n\0");
        assert_eq!(f.header("x").as_deref(), Some("\\t\\"));
    }
    assert_eq!(
        err(b"SEND\nx:a\\tb\n\n\0").to_string(),
        "invalid escape sequence '\\t' in header"
    );
}

#[test]
fn escapes_are_not_checked_in_v10() {
    let f = one_with(&mut codec_with(Escaping::None), b"SEND\nx:a\\tb\\\n\n\0");
    assert_eq!(f.escaping, Escaping::None);
    assert_eq!(f.header("x").as_deref(), Some("a\\tb\\"));
}

#[test]
fn raw_colon_in_value_is_tolerated() {
    for escaping in [Escaping::None, Escaping::V11, Escaping::V12] {
        let f = one_with(
            &mut codec_with(escaping),
            b"SEND\ndestination:/queue/a:b\nurl:http://x:80/\n\n\0",
        );
        assert_eq!(f.header("destination").as_deref(), Some("/queue/a:b"));
        assert_eq!(f.header("url").as_deref(), Some("http://x:80/"));
    }
}

#[test]
fn escaping_is_taken_from_the_codec_when_the_command_line_is_read() {
    let mut c = codec();
    assert_eq!(c.escaping(), Escaping::V12);
    c.set_escaping(Escaping::V11);
    assert_eq!(c.escaping(), Escaping::V11);
    let f = one_with(&mut c, b"SEND\n\n\0");
    assert_eq!(f.escaping, Escaping::V11);
    c.set_escaping(Escaping::None);
    let f = one_with(&mut c, b"SEND\n\n\0");
    assert_eq!(f.escaping, Escaping::None);
}

// ---- bodies and content-length ---------------------------------------------

#[test]
fn nul_inside_body_with_content_length() {
    let f = one(b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0");
    assert_eq!(&f.body[..], b"a\0b\0c");
}

#[test]
fn body_without_content_length_stops_at_first_nul() {
    let (items, rest) = decode_all(&mut codec(), b"SEND\n\nabc\0def").unwrap();
    let got = frames(items);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"abc");
    // What follows the NUL is the start of the next frame.
    assert_eq!(&rest[..], b"def");
}

#[test]
fn content_length_zero() {
    let f = one(b"SEND\ncontent-length:0\n\n\0");
    assert!(f.body.is_empty());
    assert_eq!(
        err(b"SEND\ncontent-length:0\n\nx\0"),
        DecodeError::BodyNotTerminated
    );
}

#[test]
fn two_frames_in_one_buffer() {
    let input = b"SEND\ncontent-length:3\n\nab\0\0SEND\n\nxyz\0";
    let got = frames(decode_all(&mut codec(), input).unwrap().0);
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].body[..], b"ab\0");
    assert_eq!(&got[1].body[..], b"xyz");

    let input = b"SEND\n\none\0SEND\n\ntwo\0";
    let got = frames(decode_all(&mut codec(), input).unwrap().0);
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].body[..], b"one");
    assert_eq!(&got[1].body[..], b"two");
}

#[test]
fn content_length_shorter_than_body_is_an_error() {
    let e = err(b"SEND\ncontent-length:2\n\nhello\0");
    assert_eq!(e, DecodeError::BodyNotTerminated);
    assert_eq!(
        e.to_string(),
        "frame body not terminated by NUL after content-length bytes"
    );
}

#[test]
fn content_length_longer_than_body_waits_then_fails() {
    let mut c = codec();
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:10\n\nabc\0"[..]);
    assert_eq!(c.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"SEND\n\nxy\0");
    assert_eq!(c.decode(&mut buf), Err(DecodeError::BodyNotTerminated));
}

#[test]
fn invalid_content_length() {
    for (value, shown) in [
        (&b"x"[..], "x"),
        (b"", ""),
        (b"-1", "-1"),
        (b" 5", " 5"),
        (b"5 ", "5 "),
        (b"+5", "+5"),
        (b"0x10", "0x10"),
    ] {
        let mut input = b"SEND\ncontent-length:".to_vec();
        input.extend_from_slice(value);
        input.extend_from_slice(b"\n\n\0");
        let e = err(&input);
        assert_eq!(e, DecodeError::InvalidContentLength(shown.into()));
        assert_eq!(e.to_string(), format!("invalid content-length '{shown}'"));
    }
    // Too big for any integer type: over the limit.
    assert_eq!(
        err(b"SEND\ncontent-length:99999999999999999999999999\n\n\0"),
        DecodeError::FrameTooLarge(4 * 1024 * 1024)
    );
}

#[test]
fn first_content_length_wins() {
    let f = one(b"SEND\ncontent-length:3\ncontent-length:1\n\na\0b\0");
    assert_eq!(&f.body[..], b"a\0b");
    // Later ones are not even parsed.
    let f = one(b"SEND\ncontent-length:1\ncontent-length:nope\n\na\0");
    assert_eq!(&f.body[..], b"a");
    // The name is compared raw and case-sensitively.
    let f = one(b"SEND\nContent-Length:1\n\nabc\0");
    assert_eq!(&f.body[..], b"abc");
}

#[test]
fn first_duplicate_header_wins() {
    let f = one(b"SEND\ndestination:/queue/first\ndestination:/queue/second\n\n\0");
    assert_eq!(f.header("destination").as_deref(), Some("/queue/first"));
    assert_eq!(f.headers.len(), 2, "repeats are kept, in order");
    assert_eq!(&f.headers[1].value[..], b"/queue/second");
}

#[test]
fn decoded_frames_are_zero_copy() {
    let mut buf = BytesMut::from(&b"SEND\ndestination:/q\ncontent-length:4\n\nbody\0"[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let f = match codec().decode(&mut buf) {
        Ok(Some(Inbound::Frame(f))) => f,
        other => panic!("{other:?}"),
    };
    for ptr in [
        f.body.as_ptr(),
        f.headers[0].name.as_ptr(),
        f.headers[0].value.as_ptr(),
    ] {
        assert!(range.contains(&(ptr as usize)), "copied");
    }
}

// ---- heart-beats and partial input -----------------------------------------

#[test]
fn heartbeats_between_and_after_frames() {
    let input = b"\n\r\n\nSEND\n\na\0\n\nSEND\n\nb\0\r\n\n";
    let (items, rest) = decode_all(&mut codec(), input).unwrap();
    assert!(rest.is_empty());
    let b = |body: &'static [u8]| {
        Inbound::Frame(Frame {
            command: Command::Send,
            escaping: Escaping::V12,
            headers: vec![],
            body: Bytes::from_static(body),
        })
    };
    assert_eq!(
        items,
        [
            Inbound::Heartbeat,
            b(b"a"),
            Inbound::Heartbeat,
            b(b"b"),
            Inbound::Heartbeat
        ]
    );
}

#[test]
fn lone_cr_waits_then_must_be_followed_by_lf() {
    let mut c = codec();
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(c.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"\n");
    assert_eq!(c.decode(&mut buf), Ok(Some(Inbound::Heartbeat)));
    assert!(buf.is_empty());

    assert_eq!(err(b"\rSEND\n\n\0"), DecodeError::StrayCarriageReturn);
    assert_eq!(err(b"\n\rX"), DecodeError::StrayCarriageReturn);
}

#[test]
fn nul_between_frames_is_noise_as_in_rabbitmq() {
    // RabbitMQ's parser skips NUL and EOL between frames
    // (rabbit_stomp_frame: `noise ::= *(NUL | eol)`); RabbitMQ's suite
    // (parsing.test_newline_after_nul_and_leading_nul) sends `\n\0SUBSCRIBE`.
    let input = b"\n\0SEND\n\na\0\n\0\0SEND\n\nb\0\0";
    let (items, rest) = decode_all(&mut codec(), input).unwrap();
    assert!(rest.is_empty());
    let bodies: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            Inbound::Frame(f) => Some(f.body.clone()),
            Inbound::Heartbeat => None,
        })
        .collect();
    assert_eq!(bodies, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    assert_eq!(items.last(), Some(&Inbound::Heartbeat));
    // A NUL inside the command line is still refused.
    assert_eq!(err(b"SE\0ND\n\n\0"), DecodeError::MalformedCommandLine);
}

#[test]
fn byte_by_byte_equals_all_at_once() {
    let input: &[u8] = b"\n\nCONNECT\r\naccept-version:1.2\r\nhost:h\r\n\r\n\0\r\n\
        SEND\ndestination:/q\\c1\ncontent-length:4\n\n\0\0\0\0\0\n\
        SEND\r\ndestination:/q\r\n\r\nno length\0\
        MESSAGE\nsubscription:s\nmessage-id:1\ndestination:/q\n\n\0\n\n\r\n\
        DISCONNECT\nreceipt:r\n\n\0";
    let (whole, rest) = decode_all(&mut codec(), input).unwrap();
    assert!(rest.is_empty());
    assert_eq!(frames(whole.clone()).len(), 5);
    for chunk in [1, 2, 3, 5, 7, 16, 64] {
        let (pieces, rest) = decode_chunked(&mut codec(), input, chunk).unwrap();
        assert!(rest.is_empty());
        assert_eq!(collapse(pieces), collapse(whole.clone()), "chunk {chunk}");
    }
}

#[test]
fn partial_frame_waits_for_more() {
    let input = b"SEND\ndestination:/q\ncontent-length:3\n\nabc\0";
    for cut in 0..input.len() {
        let mut c = codec();
        let mut buf = BytesMut::from(&input[..cut]);
        assert_eq!(c.decode(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut, "nothing consumed");
        buf.extend_from_slice(&input[cut..]);
        let f = match c.decode(&mut buf) {
            Ok(Some(Inbound::Frame(f))) => f,
            other => panic!("cut at {cut}: {other:?}"),
        };
        assert_eq!(&f.body[..], b"abc");
        assert!(buf.is_empty());
    }
}

#[test]
fn large_frame_in_small_chunks_is_linear() {
    let limits = FrameLimits::default();
    for with_length in [false, true] {
        let body = vec![b'x'; limits.max_frame_bytes - 100];
        let mut input = b"SEND\ndestination:/queue/big\n".to_vec();
        if with_length {
            input.extend_from_slice(format!("content-length:{}\n", body.len()).as_bytes());
        }
        input.push(b'\n');
        input.extend_from_slice(&body);
        input.push(0);
        assert!(input.len() <= limits.max_frame_bytes);

        let mut c = StompCodec::new(limits);
        let (items, rest) = decode_chunked(&mut c, &input, 1024).unwrap();
        assert!(rest.is_empty());
        let got = frames(items);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body.len(), body.len());
        // Every octet is searched at most once.
        assert!(
            c.scanned() <= input.len() as u64,
            "scanned {} for {}",
            c.scanned(),
            input.len()
        );
    }
}

#[test]
fn long_header_line_byte_by_byte_is_linear() {
    let mut input = b"SEND\nx:".to_vec();
    input.extend(std::iter::repeat_n(b'v', 8000));
    input.extend_from_slice(b"\n\nbody\0");
    let mut c = codec();
    let (items, _) = decode_chunked(&mut c, &input, 1).unwrap();
    assert_eq!(frames(items).len(), 1);
    assert!(c.scanned() <= input.len() as u64);
}

#[test]
fn decode_eof() {
    let mut c = codec();
    let mut buf = BytesMut::from(&b"SEND\n\na\0\n"[..]);
    assert!(matches!(
        c.decode_eof(&mut buf),
        Ok(Some(Inbound::Frame(_)))
    ));
    assert_eq!(c.decode_eof(&mut buf), Ok(Some(Inbound::Heartbeat)));
    assert_eq!(c.decode_eof(&mut buf), Ok(None));

    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(codec().decode_eof(&mut buf), Ok(None));

    let mut buf = BytesMut::from(&b"SEND\ndest"[..]);
    assert_eq!(codec().decode_eof(&mut buf), Err(DecodeError::Truncated));
}

// ---- malformed input ---------------------------------------------------------

#[test]
fn unknown_command() {
    let e = err(b"FOO\n\n\0");
    assert_eq!(e, DecodeError::UnknownCommand("FOO".into()));
    assert_eq!(e.to_string(), "unknown command 'FOO'");
    // Case-sensitive.
    assert_eq!(
        err(b"send\n\n\0"),
        DecodeError::UnknownCommand("send".into())
    );
    assert_eq!(
        err(b"SEND \n\n\0"),
        DecodeError::UnknownCommand("SEND ".into())
    );
    // Long, binary or control-laden text is cut and made printable.
    let long = [b'A'; 100];
    let mut input = long.to_vec();
    input.extend_from_slice(b"\n\n\0");
    assert_eq!(
        err(&input),
        DecodeError::UnknownCommand(format!("{}...", "A".repeat(32)))
    );
    assert_eq!(
        err(b"S\xffND\tX\n\n\0"),
        DecodeError::UnknownCommand("S\u{FFFD}ND\\tX".into())
    );
    // An unknown command is reported as soon as its line is complete.
    assert_eq!(
        err(b"GET / HTTP/1.1\r\n"),
        DecodeError::UnknownCommand("GET / HTTP/1.1".into())
    );
}

#[test]
fn nul_before_end_of_headers() {
    assert_eq!(err(b"SEND\0"), DecodeError::MalformedCommandLine);
    assert_eq!(err(b"SEND\ndestination:/q\0"), DecodeError::NulInHeaders);
    assert_eq!(err(b"SEND\ndestination:/q\n\0"), DecodeError::NulInHeaders);
}

#[test]
fn missing_colon() {
    let e = err(b"SEND\ndestination\n\n\0");
    assert_eq!(e, DecodeError::MalformedHeader);
    assert_eq!(e.to_string(), "malformed header line (no ':')");
}

#[test]
fn invalid_utf8_in_header() {
    for input in [
        &b"SEND\nna\xffme:v\n\n\0"[..],
        b"SEND\nname:v\xc3\n\n\0",
        b"CONNECT\nlogin:\xfe\n\n\0",
    ] {
        let e = err(input);
        assert_eq!(e, DecodeError::HeaderNotUtf8);
        assert_eq!(e.to_string(), "header is not valid UTF-8");
    }
    // Non-UTF-8 bodies are fine.
    assert_eq!(&one(b"SEND\n\n\xff\xfe\0").body[..], b"\xff\xfe");
}

// ---- limits ------------------------------------------------------------------

#[test]
fn limit_content_length_fails_as_soon_as_headers_are_read() {
    let mut c = StompCodec::new(limits(1024, 128, 8192));
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:2000\n\n"[..]);
    let e = c.decode(&mut buf).unwrap_err();
    assert_eq!(e, DecodeError::FrameTooLarge(1024));
    assert_eq!(e.to_string(), "frame exceeds the limit of 1024 bytes");

    // The limit counts the whole frame, NUL included.
    let head = b"SEND\ncontent-length:1000\n\n";
    let fits = limits(head.len() + 1000 + 1, 128, 8192);
    let mut input = head.to_vec();
    input.extend(std::iter::repeat_n(b'x', 1000));
    input.push(0);
    assert_eq!(
        one_with(&mut StompCodec::new(fits), &input).body.len(),
        1000
    );
    let too_small = FrameLimits {
        max_frame_bytes: fits.max_frame_bytes - 1,
        ..fits
    };
    assert_eq!(
        err_with(&mut StompCodec::new(too_small), head),
        DecodeError::FrameTooLarge(too_small.max_frame_bytes)
    );
}

#[test]
fn limit_fails_while_waiting_for_nul() {
    let lim = limits(1024, 128, 8192);
    let mut c = StompCodec::new(lim);
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    assert_eq!(c.decode(&mut buf), Ok(None));
    let mut failed = false;
    for _ in 0..100 {
        buf.extend_from_slice(&[b'x'; 100]);
        match c.decode(&mut buf) {
            Ok(None) => assert!(buf.len() < 1024),
            Err(e) => {
                assert_eq!(e, DecodeError::FrameTooLarge(1024));
                assert!(buf.len() < 1024 + 100, "failed late");
                failed = true;
                break;
            }
            Ok(Some(item)) => panic!("{item:?}"),
        }
    }
    assert!(failed);
    // All at once, NUL present but too far.
    let mut input = b"SEND\n\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 2000));
    input.push(0);
    assert_eq!(
        err_with(&mut StompCodec::new(lim), &input),
        DecodeError::FrameTooLarge(1024)
    );
    // Exactly at the limit is fine.
    let mut input = b"SEND\n\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1024 - 7));
    input.push(0);
    assert_eq!(input.len(), 1024);
    assert_eq!(
        one_with(&mut StompCodec::new(lim), &input).body.len(),
        1024 - 7
    );
}

#[test]
fn limit_header_count() {
    let build = |n: usize| {
        let mut input = b"SEND\n".to_vec();
        for i in 0..n {
            input.extend_from_slice(format!("h{i}:v\n").as_bytes());
        }
        input.extend_from_slice(b"\n\0");
        input
    };
    assert_eq!(one(&build(128)).headers.len(), 128);
    let e = err(&build(129));
    assert_eq!(e, DecodeError::TooManyHeaders(128));
    assert_eq!(e.to_string(), "too many headers (limit 128)");
}

#[test]
fn limit_header_line_length() {
    let line = |len: usize| {
        let mut input = b"SEND\nx:".to_vec();
        input.extend(std::iter::repeat_n(b'v', len - 2));
        input.extend_from_slice(b"\r\n\n\0");
        input
    };
    assert_eq!(one(&line(8192)).headers.len(), 1);
    let e = err(&line(8193));
    assert_eq!(e, DecodeError::HeaderLineTooLong(8192));
    assert_eq!(e.to_string(), "header line exceeds 8192 bytes");
    // The command line counts too.
    let lim = limits(1 << 20, 128, 8);
    assert_eq!(
        err_with(&mut StompCodec::new(lim), b"SUBSCRIBE\n\n\0"),
        DecodeError::HeaderLineTooLong(8)
    );
    assert_eq!(
        one_with(&mut StompCodec::new(lim), b"SEND\nabc:1234\n\n\0")
            .headers
            .len(),
        1
    );
}

#[test]
fn limit_partial_line_fails_before_its_eol() {
    let mut c = codec();
    let mut buf = BytesMut::from(&b"SEND\nx:"[..]);
    assert_eq!(c.decode(&mut buf), Ok(None));
    let mut fed = 0;
    let e = loop {
        buf.extend_from_slice(&[b'v'; 512]);
        fed += 512;
        match c.decode(&mut buf) {
            Ok(None) => assert!(fed <= 8192),
            Err(e) => break e,
            Ok(Some(item)) => panic!("{item:?}"),
        }
    };
    assert_eq!(e, DecodeError::HeaderLineTooLong(8192));
    assert!(fed <= 8192 + 512);

    // A partial command line too (a client that never sends an EOL).
    let mut c = codec();
    let mut buf = BytesMut::from(&[b'A'; 9000][..]);
    assert_eq!(
        c.decode(&mut buf),
        Err(DecodeError::HeaderLineTooLong(8192))
    );

    // A CR waiting for its LF does not count.
    let mut input = b"SEND\nx:".to_vec();
    input.extend(std::iter::repeat_n(b'v', 8190));
    input.push(b'\r');
    let mut buf = BytesMut::from(&input[..]);
    let mut c = codec();
    assert_eq!(c.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"\n\n\0");
    assert!(matches!(c.decode(&mut buf), Ok(Some(Inbound::Frame(_)))));
}

#[test]
fn limit_partial_headers_over_frame_limit() {
    // Many short header lines, never ending: the frame limit stops them.
    let mut c = StompCodec::new(limits(256, 1000, 8192));
    let mut buf = BytesMut::from(&b"SEND\n"[..]);
    let e = loop {
        buf.extend_from_slice(b"h:v\n");
        match c.decode(&mut buf) {
            Ok(None) => assert!(buf.len() < 256),
            Err(e) => break e,
            Ok(Some(item)) => panic!("{item:?}"),
        }
    };
    assert_eq!(e, DecodeError::FrameTooLarge(256));
    // And a partial line of a partial frame.
    let mut c = StompCodec::new(limits(256, 1000, 8192));
    let mut input = b"SEND\nx:".to_vec();
    input.extend(std::iter::repeat_n(b'v', 300));
    assert_eq!(err_with(&mut c, &input), DecodeError::FrameTooLarge(256));
}

#[test]
fn set_limits_raises_the_limit() {
    let small = limits(64, 4, 32);
    let mut c = StompCodec::new(small);
    let connect = b"CONNECT\naccept-version:1.2\nhost:/\n\n\0";
    assert_eq!(one_with(&mut c, connect).command, Command::Connect);
    let mut big = b"SEND\ndestination:/q\ncontent-length:100\n\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100));
    big.push(0);
    c.set_limits(FrameLimits::default());
    assert_eq!(one_with(&mut c, &big).body.len(), 100);
    assert_eq!(
        err_with(&mut StompCodec::new(small), &big),
        DecodeError::FrameTooLarge(64)
    );
}

// ---- encoder -------------------------------------------------------------------

#[test]
fn encode_writes_true_content_length_and_drops_a_wrong_one() {
    let frame = Frame::new(Command::Message)
        .with_header("content-length", "1")
        .with_header("destination", "/q")
        .with_header("content-length", "999")
        .with_body(&b"a\0b"[..]);
    let wire = encode(&frame, Escaping::V12);
    assert_eq!(
        wire,
        b"MESSAGE\ndestination:/q\ncontent-length:3\n\na\0b\0".to_vec()
    );
    assert_eq!(&one(&wire).body[..], b"a\0b");

    // No body, no content-length.
    let frame = Frame::new(Command::Receipt)
        .with_header("receipt-id", "r1")
        .with_header("content-length", "5");
    assert_eq!(
        encode(&frame, Escaping::V12),
        b"RECEIPT\nreceipt-id:r1\n\n\0".to_vec()
    );
}

#[test]
fn encode_reescapes_decoded_frames() {
    // Decoded as 1.2, forwarded to a 1.1 and a 1.0 client.
    let f = one(b"SEND\nk\\cey:a\\\\b\\nc\\rd:e\n\nbody\0");
    assert_eq!(f.escaping, Escaping::V12);
    assert_eq!(
        encode(&f, Escaping::V11),
        b"SEND\nk\\cey:a\\\\b\\nc\rd\\ce\ncontent-length:4\n\nbody\0".to_vec()
    );
    assert_eq!(
        encode(&f, Escaping::V12),
        b"SEND\nk\\cey:a\\\\b\\nc\\rd\\ce\ncontent-length:4\n\nbody\0".to_vec()
    );
    // A stored content-length is recognised after unescaping too.
    let f = Frame {
        command: Command::Message,
        escaping: Escaping::V12,
        headers: vec![raw(b"content-length", b"7"), raw(b"x", b"1\\c2")],
        body: Bytes::from_static(b"ab"),
    };
    assert_eq!(
        encode(&f, Escaping::None),
        b"MESSAGE\nx:1:2\ncontent-length:2\n\nab\0".to_vec()
    );
}

#[test]
fn encoder_never_writes_framing_octets_raw() {
    let frame = Frame::new(Command::Message).with_header("evil", "a\0b\nc");
    assert_eq!(
        encode(&frame, Escaping::V12),
        "MESSAGE\nevil:a\u{FFFD}b\\nc\n\n\0".as_bytes()
    );
    assert_eq!(
        encode(&frame, Escaping::None),
        "MESSAGE\nevil:a\u{FFFD}b\u{FFFD}c\n\n\0".as_bytes()
    );
    let connected = Frame::new(Command::Connected).with_header("server", "x\ny");
    assert_eq!(
        encode(&connected, Escaping::V12),
        "CONNECTED\nserver:x\u{FFFD}y\n\n\0".as_bytes()
    );
}

#[test]
fn encode_header_alone() {
    let mut dst = BytesMut::new();
    encode_header("a:b", "c\\d\r\n", Escaping::V12, &mut dst);
    encode_header("a:b", "c\\d\r\n", Escaping::V11, &mut dst);
    encode_header("a", "c\\d\r", Escaping::None, &mut dst);
    assert_eq!(
        &dst[..],
        b"a\\cb:c\\\\d\\r\\n\na\\cb:c\\\\d\r\\n\na:c\\d\r\n"
    );
}

#[test]
fn encoder_trait_uses_the_codec_escaping() {
    let frame = Frame::new(Command::Message).with_header("k", "a:b");
    let mut c = codec();
    let mut dst = BytesMut::new();
    c.encode(&frame, &mut dst).unwrap();
    c.set_escaping(Escaping::None);
    c.encode(&frame, &mut dst).unwrap();
    assert_eq!(&dst[..], b"MESSAGE\nk:a\\cb\n\n\0MESSAGE\nk:a:b\n\n\0");
}

// ---- round trip of generated frames ------------------------------------------

/// A tiny deterministic generator (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n
    }

    fn text(&mut self, max_len: usize) -> String {
        const ALPHABET: &[char] = &[
            'a', 'b', 'z', '0', '9', '-', '/', ' ', ':', '\n', '\r', '\\', 'c', 'n', 'r', 'é', '€',
        ];
        (0..self.below(max_len + 1))
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }
}

/// Makes header text representable when headers are not escaped (1.0, or
/// CONNECT and friends) or CR is not (1.1): no LF, no ':' in names, no CR
/// ending a value (it would read as part of the EOL).
fn representable(text: String, is_name: bool, escaping: Escaping) -> String {
    let mut text = text;
    if escaping == Escaping::None {
        text = text
            .chars()
            .map(|c| match c {
                '\n' => 'L',
                ':' if is_name => 'C',
                c => c,
            })
            .collect();
    }
    if escaping != Escaping::V12 && !is_name {
        while text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

#[test]
fn encode_decode_round_trip_generated_frames() {
    const COMMANDS: [Command; 15] = Command::ALL;
    let mut rng = Lcg(0x5eed);
    for escaping in [Escaping::None, Escaping::V11, Escaping::V12] {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..500 {
            let command = COMMANDS[rng.below(COMMANDS.len())];
            let header_escaping = if command.escapes_headers() {
                escaping
            } else {
                Escaping::None
            };
            let mut frame = Frame::new(command);
            for _ in 0..rng.below(6) {
                let mut name = representable(rng.text(8), true, header_escaping);
                if name == CONTENT_LENGTH {
                    name.push('x');
                }
                let value = representable(rng.text(12), false, header_escaping);
                frame.push_header(&name, &value);
            }
            let body: Vec<u8> = (0..rng.below(40))
                .map(|_| [0u8, b'\n', b'x', 0xff, b'\r'][rng.below(5)])
                .collect();
            frame.body = Bytes::from(body);
            if rng.below(4) == 0 {
                wire.extend_from_slice([&b"\n"[..], b"\r\n"][rng.below(2)]);
            }
            let mut dst = BytesMut::new();
            encode_frame(&frame, escaping, &mut dst);
            wire.extend_from_slice(&dst);
            expected.push(frame);
        }
        let chunk = 1 + rng.below(50);
        for (items, rest) in [
            decode_all(&mut codec_with(escaping), &wire).unwrap(),
            decode_chunked(&mut codec_with(escaping), &wire, chunk).unwrap(),
        ] {
            assert!(rest.is_empty());
            let got = frames(items);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(g.command, e.command);
                assert_eq!(g.body, e.body);
                let mut want = plain_headers(e);
                if !e.body.is_empty() {
                    want.push((CONTENT_LENGTH.into(), e.body.len().to_string()));
                }
                assert_eq!(plain_headers(g), want, "{escaping:?} {g:?}");
            }
        }
    }
}

/// Garbage must never panic, whatever the cut.
#[test]
fn arbitrary_input_never_panics() {
    let mut rng = Lcg(42);
    const PIECES: &[&[u8]] = &[
        b"SEND",
        b"CONNECT",
        b"\n",
        b"\r",
        b"\r\n",
        b"\0",
        b":",
        b"\\",
        b"\\c",
        b"\\r",
        b"x",
        b"content-length:",
        b"3",
        b"99999999999999999999999",
        b"\xff",
        b"\xc3",
    ];
    for round in 0..2000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(30) {
            input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
        let lim = limits(1 + rng.below(200), 1 + rng.below(5), 1 + rng.below(40));
        let mut c = StompCodec::new(lim);
        c.set_escaping([Escaping::None, Escaping::V11, Escaping::V12][round % 3]);
        let _ = decode_chunked(&mut c, &input, 1 + rng.below(8));
        let mut buf = BytesMut::from(&input[..]);
        let _ = StompCodec::new(lim).decode_eof(&mut buf);
    }
}
