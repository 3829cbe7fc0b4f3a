//! Fuzzes the STOMP decoder with arbitrary bytes fed in arbitrary pieces,
//! and checks that every frame it accepts survives `encode_frame` and a
//! second decode (for the codec's escaping, and for the two others where the
//! frame's headers are representable there).
//!
//! Input layout:
//! * byte 0: bits 0-1 pick the codec's escaping (None, V11, V12; 3 wraps to
//!   V12), bit 2 picks tiny limits instead of the small ones, so that every
//!   limit check is reachable with short inputs;
//! * byte 1: how many chunk sizes follow (0-3, i.e. bits 0-1; 0 means
//!   "everything at once");
//! * then that many bytes, each a chunk size (value + 1), used cyclically;
//! * the rest is the stream.
//!
//! Checked:
//! * no panic, no hang (libFuzzer's timeout), no excessive allocation;
//! * decoding in chunks yields the same frames (consecutive heart-beats
//!   merged) as decoding all at once, and fails if and only if it fails
//!   (the error itself may differ: limits are checked as early as possible);
//! * round trip: command, body, headers (`Frame::headers()` and the complete
//!   unescaped list) are preserved, minus `content-length`, which the
//!   encoder writes itself (with the true body length, when the body is not
//!   empty).
#![no_main]

use std::borrow::Cow;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stompgate::stomp::frame::unescape;
use stompgate::stomp::{encode_frame, Escaping, Frame, FrameLimits, Inbound, StompCodec};
use tokio_util::codec::Decoder;

const CONTENT_LENGTH: &str = "content-length";

const SMALL: FrameLimits = FrameLimits {
    max_frame_bytes: 64 * 1024,
    max_headers: 32,
    max_header_line: 1024,
};

const TINY: FrameLimits = FrameLimits {
    max_frame_bytes: 200,
    max_headers: 4,
    max_header_line: 40,
};

/// For the second decode: re-encoding may legitimately grow a frame (escapes
/// added, `content-length` written), so the original limits do not apply.
const LARGE: FrameLimits = FrameLimits {
    max_frame_bytes: 1 << 30,
    max_headers: 1 << 20,
    max_header_line: 1 << 30,
};

const ESCAPINGS: [Escaping; 3] = [Escaping::None, Escaping::V11, Escaping::V12];

fn escaping_from(byte: u8) -> Escaping {
    match byte & 3 {
        0 => Escaping::None,
        1 => Escaping::V11,
        _ => Escaping::V12,
    }
}

fn codec(limits: FrameLimits, escaping: Escaping) -> StompCodec {
    let mut c = StompCodec::new(limits);
    c.set_escaping(escaping);
    c
}

/// What a whole decode produced: the items (consecutive heart-beats merged)
/// and whether it ended in an error.
struct Outcome {
    items: Vec<Inbound>,
    failed: bool,
}

fn push_item(items: &mut Vec<Inbound>, item: Inbound) {
    if item == Inbound::Heartbeat && items.last() == Some(&Inbound::Heartbeat) {
        return;
    }
    items.push(item);
}

/// Feeds `input` in pieces of the given sizes (cyclically; empty: all at
/// once), decoding after each piece until `Ok(None)` or `Err`.
fn decode(limits: FrameLimits, escaping: Escaping, input: &[u8], chunks: &[usize]) -> Outcome {
    let mut c = codec(limits, escaping);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < input.len() {
        let n = if chunks.is_empty() {
            input.len()
        } else {
            chunks[k % chunks.len()]
        };
        k += 1;
        let end = (at + n).min(input.len());
        buf.extend_from_slice(&input[at..end]);
        at = end;
        loop {
            let before = buf.len();
            match c.decode(&mut buf) {
                Ok(Some(item)) => {
                    // Progress: an item always consumes input.
                    assert!(
                        buf.len() < before,
                        "decode yielded {item:?} without consuming"
                    );
                    push_item(&mut items, item);
                }
                Ok(None) => break,
                Err(_) => {
                    return Outcome {
                        items,
                        failed: true,
                    }
                }
            }
        }
    }
    // The end of the stream: must not panic whatever is left.
    let _ = c.decode_eof(&mut buf);
    Outcome {
        items,
        failed: false,
    }
}

fn frames(items: &[Inbound]) -> Vec<&Frame> {
    items
        .iter()
        .filter_map(|i| match i {
            Inbound::Frame(f) => Some(f),
            Inbound::Heartbeat => None,
        })
        .collect()
}

/// How `frame`'s stored headers are escaped (CONNECT, STOMP and CONNECTED
/// never escape theirs).
fn stored_escaping(frame: &Frame) -> Escaping {
    if frame.command.escapes_headers() {
        frame.escaping
    } else {
        Escaping::None
    }
}

/// Every header, repeats included, unescaped, `content-length` left out.
fn all_headers(frame: &Frame) -> Vec<(String, String)> {
    let esc = stored_escaping(frame);
    frame
        .headers
        .iter()
        .map(|h| {
            (
                unescape(&h.name, esc).into_owned(),
                unescape(&h.value, esc).into_owned(),
            )
        })
        .filter(|(n, _)| n != CONTENT_LENGTH)
        .collect()
}

/// `Frame::headers()` (first occurrence of each name), `content-length` left out.
fn first_headers(frame: &Frame) -> Vec<(String, String)> {
    frame
        .headers()
        .filter(|(n, _)| n != CONTENT_LENGTH)
        .map(|(n, v): (Cow<str>, Cow<str>)| (n.into_owned(), v.into_owned()))
        .collect()
}

/// Whether `encode_frame(frame, wire)` can carry every header of `frame`
/// exactly (see `encode_header`'s notes in src/stomp/codec.rs):
/// * without escaping (1.0, and CONNECT/STOMP/CONNECTED always) a name
///   cannot hold ':' (the first ':' ends the name) and no text can hold LF
///   (written as U+FFFD);
/// * without CR escaping (1.0 and 1.1) a value cannot end with CR: it is
///   read back as part of the EOL;
/// * NUL is never representable (written as U+FFFD); the decoder never
///   accepts one in a header, so it cannot occur here.
fn representable(headers: &[(String, String)], command_escapes: bool, wire: Escaping) -> bool {
    let effective = if command_escapes {
        wire
    } else {
        Escaping::None
    };
    headers.iter().all(|(name, value)| {
        if name.contains('\0') || value.contains('\0') {
            return false;
        }
        if effective == Escaping::None
            && (name.contains(':') || name.contains('\n') || value.contains('\n'))
        {
            return false;
        }
        if effective != Escaping::V12 && value.ends_with('\r') {
            return false;
        }
        true
    })
}

/// Encodes `frame` for `wire`, decodes it with a `wire` codec and checks the
/// result against the original.
fn round_trip(frame: &Frame, wire: Escaping) {
    let headers = all_headers(frame);
    if !representable(&headers, frame.command.escapes_headers(), wire) {
        return;
    }
    let mut encoded = BytesMut::new();
    encode_frame(frame, wire, &mut encoded);
    let wire_bytes = encoded.to_vec();
    let mut c = codec(LARGE, wire);
    let item = match c.decode(&mut encoded) {
        Ok(Some(item)) => item,
        other => panic!(
            "re-encoded frame does not decode ({wire:?}): {other:?}\noriginal: {frame:?}\nwire: {:?}",
            String::from_utf8_lossy(&wire_bytes)
        ),
    };
    assert!(
        encoded.is_empty(),
        "re-encoded frame decodes with {} octets left over ({wire:?})",
        encoded.len()
    );
    let Inbound::Frame(again) = item else {
        panic!("re-encoded frame decodes as a heart-beat ({wire:?})");
    };
    assert_eq!(again.command, frame.command, "command ({wire:?})");
    assert_eq!(again.body, frame.body, "body ({wire:?})");
    assert_eq!(
        all_headers(&again),
        headers,
        "headers ({wire:?})\noriginal: {frame:?}\nagain: {again:?}\nwire: {:?}",
        String::from_utf8_lossy(&wire_bytes)
    );
    assert_eq!(
        first_headers(&again),
        first_headers(frame),
        "Frame::headers() ({wire:?})"
    );
    // The encoder writes the true content-length, and only for a body.
    let length = again.header(CONTENT_LENGTH);
    if frame.body.is_empty() {
        assert_eq!(length, None, "content-length for an empty body ({wire:?})");
    } else {
        assert_eq!(
            length.as_deref(),
            Some(frame.body.len().to_string().as_str()),
            "content-length ({wire:?})"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let escaping = escaping_from(mode);
    let limits = if mode & 4 != 0 { TINY } else { SMALL };
    let Some((&count, rest)) = rest.split_first() else {
        return;
    };
    let count = usize::from(count & 3).min(rest.len());
    let (sizes, input) = rest.split_at(count);
    let chunks: Vec<usize> = sizes.iter().map(|&s| usize::from(s) + 1).collect();

    let whole = decode(limits, escaping, input, &[]);
    let pieces = if chunks.is_empty() {
        // Still exercise partial input: one octet at a time.
        decode(limits, escaping, input, &[1])
    } else {
        decode(limits, escaping, input, &chunks)
    };
    if whole.failed {
        // A heart-beat just before a malformed EOL ("\n\rx") is reported
        // when the input is cut between the two, and not when the error is
        // found in the same call: compare frames only.
        assert_eq!(
            frames(&whole.items),
            frames(&pieces.items),
            "decoding in pieces {chunks:?} differs from decoding at once"
        );
    } else {
        assert_eq!(
            whole.items, pieces.items,
            "decoding in pieces {chunks:?} differs from decoding at once"
        );
    }
    assert_eq!(
        whole.failed, pieces.failed,
        "decoding in pieces {chunks:?} fails differently from decoding at once"
    );

    for item in &whole.items {
        let Inbound::Frame(frame) = item else {
            continue;
        };
        let expected = if frame.command.escapes_headers() {
            escaping
        } else {
            Escaping::None
        };
        assert_eq!(
            frame.escaping, expected,
            "escaping of a decoded {}",
            frame.command
        );
        for wire in ESCAPINGS {
            round_trip(frame, wire);
        }
    }
});
