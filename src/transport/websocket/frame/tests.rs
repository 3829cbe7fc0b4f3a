use super::*;

/// A masked client frame.
fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_with(if fin { 0x80 } else { 0 } | opcode, payload, true)
}

fn client_with(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 65535 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn events(reader: &mut FrameReader, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(event) = reader.next(&mut buf)? {
        out.push(event);
    }
    Ok(out)
}

fn text(s: &str) -> Event {
    Event::Message {
        data: Bytes::copy_from_slice(s.as_bytes()),
        text: true,
    }
}

#[test]
fn a_text_and_a_binary_message() {
    let mut r = FrameReader::new(1024);
    let mut wire = client(true, OP_TEXT, b"CONNECT\n\n\0");
    wire.extend(client(true, OP_BINARY, &[0xff, 0]));
    assert_eq!(
        events(&mut r, &wire).unwrap(),
        vec![
            text("CONNECT\n\n\0"),
            Event::Message {
                data: Bytes::from_static(&[0xff, 0]),
                text: false
            }
        ]
    );
}

#[test]
fn every_split_of_the_input_gives_the_same_events() {
    let mut wire = client(false, OP_TEXT, b"SEND\ndestination:/topic/a\n\n");
    wire.extend(client(true, OP_PING, b"p"));
    wire.extend(client(true, OP_CONTINUATION, &[b'x'; 300]));
    wire.extend(client(true, OP_BINARY, &vec![7u8; 70_000]));
    wire.extend(client(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
    let mut whole = FrameReader::new(100_000);
    let expected = events(&mut whole, &wire).unwrap();
    assert_eq!(expected.len(), 4);
    for split in [1, 2, 3, 5, 9, 14, 100, 333, 4096] {
        let mut r = FrameReader::new(100_000);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            while let Some(event) = r.next(&mut buf).unwrap() {
                got.push(event);
            }
        }
        assert_eq!(got, expected, "split {split}");
        assert!(buf.is_empty());
    }
    let mut joined = b"SEND\ndestination:/topic/a\n\n".to_vec();
    joined.extend([b'x'; 300]);
    assert_eq!(expected[0], Event::Ping(Bytes::from_static(b"p")));
    assert_eq!(expected[1], text(std::str::from_utf8(&joined).unwrap()));
    assert_eq!(expected[3], Event::Close(Some(1000)));
}

#[test]
fn pong_and_empty_close() {
    let mut r = FrameReader::new(10);
    let mut wire = client(true, OP_PONG, b"x");
    wire.extend(client(true, OP_CLOSE, b""));
    assert_eq!(
        events(&mut r, &wire).unwrap(),
        vec![Event::Pong, Event::Close(None)]
    );
}

#[test]
fn protocol_errors() {
    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (client_with(0x81, b"hi", false), ProtocolError::Unmasked),
        (client_with(0xC1, b"hi", true), ProtocolError::Reserved),
        (client_with(0x83, b"hi", true), ProtocolError::Opcode(3)),
        (client(true, OP_PING, &[0; 126]), ProtocolError::BadControl),
        (client(false, OP_PING, b""), ProtocolError::BadControl),
        (
            client(true, OP_CONTINUATION, b"x"),
            ProtocolError::StrayContinuation,
        ),
        (
            [client(false, OP_TEXT, b"a"), client(true, OP_TEXT, b"b")].concat(),
            ProtocolError::Interleaved,
        ),
        (client(true, OP_TEXT, &[0xff]), ProtocolError::NotUtf8),
        (client(true, OP_CLOSE, &[3]), ProtocolError::BadClose),
        (
            client(true, OP_CLOSE, &[0x03, 0xed]),
            ProtocolError::BadClose,
        ),
        (
            client(true, OP_CLOSE, &[0x03, 0xe8, 0xff]),
            ProtocolError::NotUtf8,
        ),
    ];
    for (wire, expected) in cases {
        let mut r = FrameReader::new(1024);
        assert_eq!(events(&mut r, &wire), Err(expected.clone()), "{expected}");
    }
}

#[test]
fn size_limit_applies_to_frames_and_to_fragments_added_up() {
    let mut r = FrameReader::new(100);
    assert!(events(&mut r, &client(true, OP_TEXT, &[b'a'; 100])).is_ok());
    let mut r = FrameReader::new(100);
    assert_eq!(
        events(&mut r, &client(true, OP_TEXT, &[b'a'; 101])),
        Err(ProtocolError::TooBig(100))
    );
    // Refused from the header alone: nothing of the payload is needed.
    let mut r = FrameReader::new(100);
    let header_only = &client(true, OP_BINARY, &[0; 70_000])[..14];
    assert_eq!(events(&mut r, header_only), Err(ProtocolError::TooBig(100)));
    let mut r = FrameReader::new(100);
    let wire = [
        client(false, OP_TEXT, &[b'a'; 60]),
        client(true, OP_CONTINUATION, &[b'a'; 41]),
    ]
    .concat();
    assert_eq!(events(&mut r, &wire), Err(ProtocolError::TooBig(100)));
    assert_eq!(ProtocolError::TooBig(1).code(), CLOSE_TOO_BIG);
    assert_eq!(ProtocolError::NotUtf8.code(), CLOSE_INVALID_DATA);
    assert_eq!(ProtocolError::Unmasked.code(), CLOSE_PROTOCOL_ERROR);
}

#[test]
fn a_64_bit_length_beyond_memory_is_refused() {
    let mut r = FrameReader::new(1 << 20);
    let mut wire = vec![0x82, 0x80 | 127];
    wire.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(events(&mut r, &wire), Err(ProtocolError::TooBig(1 << 20)));
}

#[test]
fn unmasking_matches_the_byte_rule_at_every_length() {
    let mask = [1u8, 2, 3, 4];
    for len in 0..40 {
        let mut data: Vec<u8> = (0..len as u8).collect();
        unmask(&mut data, mask);
        let expected: Vec<u8> = (0..len as u8).map(|b| b ^ mask[b as usize % 4]).collect();
        assert_eq!(data, expected);
    }
}

#[test]
fn server_headers_use_the_shortest_length_form() {
    assert_eq!(
        server_header(OP_TEXT, 125),
        ([0x81, 125, 0, 0, 0, 0, 0, 0, 0, 0], 2)
    );
    let (h, n) = server_header(OP_BINARY, 126);
    assert_eq!((&h[..n], n), (&[0x82, 126, 0, 126][..], 4));
    let (h, n) = server_header(OP_TEXT, 65_535);
    assert_eq!(&h[..n], &[0x81, 126, 0xff, 0xff]);
    let (h, n) = server_header(OP_TEXT, 65_536);
    assert_eq!(&h[..n], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(&close_frame(None)[..], &[0x88, 0]);
    assert_eq!(&close_frame(Some(1002))[..], &[0x88, 2, 0x03, 0xea]);
    assert_eq!(
        &control_frame(OP_PONG, b"abc")[..],
        &[0x8a, 3, b'a', b'b', b'c']
    );
}
