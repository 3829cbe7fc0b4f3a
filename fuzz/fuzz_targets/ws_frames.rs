//! Fuzzes the WebSocket frame reader (`FrameReader`, RFC 6455 client
//! frames) with arbitrary bytes fed in arbitrary pieces, as a socket hands
//! them over.
//!
//! Input layout:
//! * byte 0: bits 0-1 pick the message limit (`max_message`): 4096 bytes,
//!   200, 1 or 0, so that the limit checks are reachable with short inputs;
//! * byte 1: how many chunk sizes follow (0-3, i.e. bits 0-1; 0 means
//!   "one byte at a time");
//! * then that many bytes, each a chunk size (value + 1), used cyclically;
//! * the rest is the stream of client frames.
//!
//! The stream is read twice, all at once and in the pieces, each time
//! calling `next` until it answers `Ok(None)` (more bytes needed) or an
//! error (after which the connection is closed: nothing more is read).
//!
//! Checked:
//! * no panic, no hang (libFuzzer's timeout), no allocation beyond what the
//!   input and the limit account for (no reservation for an announced
//!   payload over the limit);
//! * every event consumes input; a message is at most `max_message` bytes,
//!   a text message is UTF-8; a ping's payload is at most 125 bytes; a close
//!   code is one a client may send; an error's close code is 1002, 1007 or
//!   1009, and `TooBig` names the limit;
//! * reading in pieces gives the same events and the same error as reading
//!   at once.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stompgate::transport::websocket::frame::{Event, FrameReader, ProtocolError};

const LIMITS: [usize; 4] = [4096, 200, 1, 0];

/// Longest frame header: 2 bytes, a 64-bit length, a mask.
const MAX_HEADER: usize = 14;

/// Longest control frame payload, whatever the message limit.
const MAX_CONTROL: usize = 125;

/// What reading a whole stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    error: Option<ProtocolError>,
}

fn check_event(event: &Event, max_message: usize) {
    match event {
        Event::Message { data, text } => {
            assert!(
                data.len() <= max_message,
                "a message of {} bytes with a limit of {max_message}",
                data.len()
            );
            if *text {
                assert!(
                    std::str::from_utf8(data).is_ok(),
                    "a text message that is not UTF-8: {data:?}"
                );
            }
        }
        Event::Ping(payload) => assert!(payload.len() <= MAX_CONTROL, "ping of {}", payload.len()),
        Event::Pong => {}
        Event::Close(None) => {}
        Event::Close(Some(code)) => assert!(
            matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
            "close code {code} accepted"
        ),
    }
}

fn check_error(error: &ProtocolError, max_message: usize) {
    assert!(
        matches!(error.code(), 1002 | 1007 | 1009),
        "{error:?} closes with {}",
        error.code()
    );
    if let ProtocolError::TooBig(limit) = error {
        assert_eq!(*limit, max_message, "TooBig names another limit");
    }
}

/// Feeds `input` in pieces of the given sizes (cyclically; empty: all at
/// once), calling `next` after each piece until it needs more or fails.
fn read(max_message: usize, input: &[u8], chunks: &[usize]) -> Outcome {
    let mut reader = FrameReader::new(max_message);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    // Room the buffer may rightly take: the input itself, plus one frame
    // within the limit (or a control frame) reserved at once, doubled for
    // the growth policy.
    let room = 2 * (input.len() + max_message.max(MAX_CONTROL) + MAX_HEADER) + 64;
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
            match reader.next(&mut buf) {
                Ok(Some(event)) => {
                    assert!(buf.len() < before, "{event:?} without consuming input");
                    check_event(&event, max_message);
                    events.push(event);
                }
                Ok(None) => {
                    assert!(
                        buf.capacity() <= room,
                        "buffer of {} bytes for {} bytes of input (limit {max_message})",
                        buf.capacity(),
                        input.len()
                    );
                    break;
                }
                Err(error) => {
                    check_error(&error, max_message);
                    return Outcome {
                        events,
                        error: Some(error),
                    };
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let max_message = LIMITS[usize::from(mode & 3)];
    let Some((&count, rest)) = rest.split_first() else {
        return;
    };
    let count = usize::from(count & 3).min(rest.len());
    let (sizes, input) = rest.split_at(count);
    let mut chunks: Vec<usize> = sizes.iter().map(|&s| usize::from(s) + 1).collect();
    if chunks.is_empty() {
        chunks.push(1);
    }
    let whole = read(max_message, input, &[]);
    let pieces = read(max_message, input, &chunks);
    assert_eq!(
        whole, pieces,
        "reading in pieces {chunks:?} differs from reading at once"
    );
});
