//! The client's side of the STOMP wire: a fast, zero-copy frame splitter for
//! what servers send (MESSAGE bodies are read straight out of the WebSocket
//! message), the few frames the bench writes, and the benchmark body format.
//!
//! The splitter does not unescape or validate headers: it only needs the
//! command, `content-length`, `receipt-id` and `message`, and it must keep up
//! with a server that delivers hundreds of thousands of frames per second on
//! the same two cores.

use memchr::memchr;

/// One frame found in a buffer; slices borrow from it.
#[derive(Debug, Clone, Copy)]
pub struct FrameView<'a> {
    pub command: &'a [u8],
    /// The header lines, each ending with EOL.
    pub headers: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> FrameView<'a> {
    /// The first header called `name` (raw, still escaped).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        let mut rest = self.headers;
        while !rest.is_empty() {
            let end = memchr(b'\n', rest).unwrap_or(rest.len());
            let mut line = &rest[..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.len() > name.len() && line.starts_with(name) && line[name.len()] == b':' {
                return Some(&line[name.len() + 1..]);
            }
            rest = &rest[(end + 1).min(rest.len())..];
        }
        None
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn is(&self, command: &str) -> bool {
        self.command == command.as_bytes()
    }

    /// `ERROR message: body` for reports.
    pub fn describe_error(&self) -> String {
        let message = self.header_str("message").unwrap_or_default();
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned();
        let body = body.trim();
        let command = String::from_utf8_lossy(self.command);
        if body.is_empty() || body == message.trim() {
            format!("{command}: {message}")
        } else {
            format!("{command}: {message} ({body})")
        }
    }
}

/// Result of looking for one frame at the start of a buffer.
#[derive(Debug)]
pub enum Split<'a> {
    /// A frame and the number of bytes it used (heart-beat EOLs before it
    /// included).
    Frame(FrameView<'a>, usize),
    /// Only heart-beat EOLs (this many bytes) and nothing else yet.
    Heartbeats(usize),
    /// Not a whole frame yet.
    Incomplete,
    Invalid(&'static str),
}

/// Finds the first frame in `buf`.
pub fn split(buf: &[u8]) -> Split<'_> {
    // Heart-beats (and the EOLs some servers put after a frame's NUL).
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\n' || buf[start] == b'\r') {
        start += 1;
    }
    if start == buf.len() {
        return if start == 0 {
            Split::Incomplete
        } else {
            Split::Heartbeats(start)
        };
    }
    let rest = &buf[start..];
    let Some(cmd_end) = memchr(b'\n', rest) else {
        return Split::Incomplete;
    };
    let mut command = &rest[..cmd_end];
    if command.last() == Some(&b'\r') {
        command = &command[..command.len() - 1];
    }
    let headers_start = cmd_end + 1;
    let mut pos = headers_start;
    let mut content_length: Option<usize> = None;
    let body_start = loop {
        let Some(nl) = memchr(b'\n', &rest[pos..]) else {
            return Split::Incomplete;
        };
        let mut line = &rest[pos..pos + nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.is_empty() {
            break pos + nl + 1;
        }
        if content_length.is_none() {
            if let Some(v) = line.strip_prefix(b"content-length:") {
                match parse_decimal(v) {
                    Some(n) => content_length = Some(n),
                    None => return Split::Invalid("invalid content-length"),
                }
            }
        }
        pos += nl + 1;
    };
    let headers = &rest[headers_start..body_start];
    let body_end = match content_length {
        Some(len) => {
            if rest.len() <= body_start + len {
                return Split::Incomplete;
            }
            if rest[body_start + len] != 0 {
                return Split::Invalid("no NUL after content-length bytes");
            }
            body_start + len
        }
        None => match memchr(0, &rest[body_start..]) {
            Some(i) => body_start + i,
            None => return Split::Incomplete,
        },
    };
    Split::Frame(
        FrameView {
            command,
            headers,
            body: &rest[body_start..body_end],
        },
        start + body_end + 1,
    )
}

fn parse_decimal(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 {
        return None;
    }
    let mut n = 0usize;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as usize;
    }
    Some(n)
}

/// CONNECT for STOMP 1.2 without heart-beats.
pub fn connect_frame(login: &str, passcode: &str, host: &str) -> String {
    format!(
        "CONNECT\naccept-version:1.2\nhost:{host}\nlogin:{login}\npasscode:{passcode}\nheart-beat:0,0\n\n\0"
    )
}

/// SUBSCRIBE in auto-ack mode, with a receipt.
pub fn subscribe_frame(id: &str, destination: &str, receipt: &str) -> String {
    format!("SUBSCRIBE\nid:{id}\ndestination:{destination}\nack:auto\nreceipt:{receipt}\n\n\0")
}

/// SEND with a body; `receipt` when given.
pub fn send_frame(destination: &str, receipt: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + destination.len() + body.len());
    out.extend_from_slice(b"SEND\ndestination:");
    out.extend_from_slice(destination.as_bytes());
    out.extend_from_slice(b"\ncontent-type:text/plain\n");
    if let Some(r) = receipt {
        out.extend_from_slice(b"receipt:");
        out.extend_from_slice(r.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(format!("content-length:{}\n\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out.push(0);
    out
}

pub const DISCONNECT: &str = "DISCONNECT\n\n\0";

/// Smallest body that holds the benchmark header.
pub const MIN_BODY: usize = BODY_HEADER;
const BODY_HEADER: usize = 36;

/// The benchmark body: `P:SSSSSSSSSSSSSSSS:TTTTTTTTTTTTTTTT:` (phase, sequence
/// number and send time in ns, all hex) padded with `.` to `size` bytes. ASCII,
/// so servers that always send text WebSocket messages (Web-STOMP) carry it
/// as it is.
pub fn encode_body(out: &mut Vec<u8>, phase: u8, seq: u64, sent_ns: u64, size: usize) {
    out.clear();
    out.push(HEX[(phase & 0xf) as usize]);
    out.push(b':');
    push_hex(out, seq);
    out.push(b':');
    push_hex(out, sent_ns);
    out.push(b':');
    if size > out.len() {
        out.resize(size, b'.');
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut Vec<u8>, v: u64) {
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// (phase, seq, sent_ns) of a benchmark body.
pub fn decode_body(body: &[u8]) -> Option<(u8, u64, u64)> {
    if body.len() < BODY_HEADER || body[1] != b':' || body[18] != b':' || body[35] != b':' {
        return None;
    }
    let phase = hex_digit(body[0])?;
    let seq = parse_hex(&body[2..18])?;
    let ts = parse_hex(&body[19..35])?;
    Some((phase, seq, ts))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &b in s {
        v = (v << 4) | hex_digit(b)? as u64;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trip() {
        let mut b = Vec::new();
        encode_body(&mut b, 3, 0x1234, u64::MAX - 5, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(decode_body(&b), Some((3, 0x1234, u64::MAX - 5)));
        encode_body(&mut b, 0, 1, 2, 10);
        assert_eq!(b.len(), MIN_BODY);
        assert_eq!(decode_body(&b), Some((0, 1, 2)));
        assert_eq!(decode_body(b"short"), None);
    }

    #[test]
    fn splits_frames_with_and_without_content_length() {
        let data = b"\nMESSAGE\nsubscription:sub-0\ncontent-length:3\n\na\0b\0\n\nRECEIPT\r\nreceipt-id:r1\r\n\r\n\0";
        let Split::Frame(f, used) = split(data) else {
            panic!("no frame")
        };
        assert!(f.is("MESSAGE"));
        assert_eq!(f.body, b"a\0b");
        assert_eq!(f.header("subscription"), Some(&b"sub-0"[..]));
        let rest = &data[used..];
        let Split::Frame(f, used2) = split(rest) else {
            panic!("no second frame")
        };
        assert!(f.is("RECEIPT"));
        assert_eq!(f.header_str("receipt-id").as_deref(), Some("r1"));
        assert_eq!(used2, rest.len());
        assert!(matches!(split(b"\n\n"), Split::Heartbeats(2)));
        assert!(matches!(split(b"MESSAGE\nx:y\n"), Split::Incomplete));
        assert!(matches!(
            split(b"MESSAGE\ncontent-length:2\n\nabc\0"),
            Split::Invalid(_)
        ));
    }

    #[test]
    fn send_frame_is_decodable_by_the_gateway_codec() {
        use stompgate::stomp::{Command, FrameLimits, Inbound, StompCodec};
        use tokio_util::codec::Decoder;
        let bytes = send_frame("/topic/x", Some("r-1"), b"hello");
        let mut codec = StompCodec::new(FrameLimits::default());
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        match codec.decode(&mut buf) {
            Ok(Some(Inbound::Frame(f))) => {
                assert_eq!(f.command, Command::Send);
                assert_eq!(f.header("receipt").as_deref(), Some("r-1"));
                assert_eq!(&f.body[..], b"hello");
            }
            other => panic!("{other:?}"),
        }
    }
}
