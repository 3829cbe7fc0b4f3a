//! The STOMP frame codec: bytes to [`Inbound`] items and [`Frame`]s to bytes.
//!
//! We have our own codec because the off-the-shelf STOMP crate mis-handled
//! the parts a gateway depends on: `content-length` (bodies containing NUL,
//! frames following a frame in the same buffer), input arriving in pieces,
//! and header escaping across versions. This codec follows the 1.2
//! specification, plus 1.0 and 1.1:
//!
//! * EOLs between frames are heart-beats and are reported as such; so are
//!   NUL octets there, which RabbitMQ's parser skips as noise between frames
//!   (`noise ::= *(NUL | eol)`; a client may end a frame with a NUL too many).
//! * `content-length`, when present, is trusted for the body (which may hold
//!   NUL) and checked: the octet after the body must be NUL. The encoder
//!   always writes the true length itself.
//! * Headers are checked (UTF-8, legal escapes for the negotiated version) but
//!   not unescaped; names, values and the body are zero-copy slices of the
//!   input buffer (see [`Frame`]).
//! * Partial input costs linear time: the decoder remembers how far it has
//!   scanned and never looks at the same octets twice.
//! * Every frame is bounded by [`FrameLimits`]: its total size (command line
//!   to NUL inclusive), its number of headers and the length of any header
//!   line (command line included, EOL excluded). Limits are enforced as early
//!   as possible, so a client cannot make the gateway buffer more than the
//!   limit: a too-large `content-length` fails as soon as the headers are
//!   read, a missing NUL or EOL as soon as the buffered part is over the
//!   limit. The gateway uses small limits until CONNECT is accepted.
//!
//! After a [`DecodeError`] the codec's state is unspecified: the caller sends
//! an ERROR frame (the error's text is meant for its `message` header) and
//! closes the connection.

use std::io;
use std::ops::Range;

use bytes::{Buf, BufMut, BytesMut};
use memchr::{memchr, memchr2};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{unescape, Command, Escaping, Frame, RawHeader};

const CONTENT_LENGTH: &str = "content-length";

/// How many characters of client text an error message echoes.
const ECHO_CHARS: usize = 32;

/// Size limits applied to every decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Whole frame, from the first octet of the command to the NUL inclusive
    /// (heart-beat EOLs before the command are not counted).
    pub max_frame_bytes: usize,
    /// Number of header lines (repeated headers count each time).
    pub max_headers: usize,
    /// Length of one header line or of the command line, EOL excluded.
    pub max_header_line: usize,
}

impl Default for FrameLimits {
    /// 4 MiB per frame, 128 headers, 8192 octets per header line.
    fn default() -> Self {
        FrameLimits {
            max_frame_bytes: 4 * 1024 * 1024,
            max_headers: 128,
            max_header_line: 8192,
        }
    }
}

/// What the decoder yields: a heart-beat (one or more EOLs between frames)
/// or a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Heartbeat,
    Frame(Frame),
}

/// Why a client's bytes are not a valid STOMP frame. The `Display` text is
/// meant to be sent verbatim as the `message` header of an ERROR frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The command line is not a STOMP command (commands are case-sensitive).
    /// Holds the first 32 characters of the line, lossily decoded, with
    /// control characters escaped.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// The command line holds a NUL octet.
    #[error("malformed command line")]
    MalformedCommandLine,
    /// A NUL octet came before the empty line that ends the headers.
    #[error("malformed frame (NUL before the end of the headers)")]
    NulInHeaders,
    /// A CR not followed by LF where an EOL was expected.
    #[error("malformed end of line (CR not followed by LF)")]
    StrayCarriageReturn,
    /// The frame is (or would become) larger than `max_frame_bytes`.
    #[error("frame exceeds the limit of {0} bytes")]
    FrameTooLarge(usize),
    /// More than `max_headers` header lines.
    #[error("too many headers (limit {0})")]
    TooManyHeaders(usize),
    /// A header line (or the command line) is longer than `max_header_line`.
    #[error("header line exceeds {0} bytes")]
    HeaderLineTooLong(usize),
    /// A header line without ':'.
    #[error("malformed header line (no ':')")]
    MalformedHeader,
    /// A header name or value is not valid UTF-8.
    #[error("header is not valid UTF-8")]
    HeaderNotUtf8,
    /// An escape sequence the negotiated version does not define, e.g. `\t`,
    /// `\r` in 1.1 or a trailing lone backslash. Holds the sequence as sent.
    #[error("invalid escape sequence '{0}' in header")]
    InvalidEscape(String),
    /// The first `content-length` header is not a decimal integer. Holds the
    /// value (first 32 characters).
    #[error("invalid content-length '{0}'")]
    InvalidContentLength(String),
    /// The octet after `content-length` octets of body is not NUL.
    #[error("frame body not terminated by NUL after content-length bytes")]
    BodyNotTerminated,
    /// The stream ended in the middle of a frame ([`Decoder::decode_eof`]).
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// An I/O error of the underlying stream (needed by [`Decoder`]; the
    /// decoder itself never produces it).
    #[error("i/o error: {0}")]
    Io(String),
}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        DecodeError::Io(e.to_string())
    }
}

/// Decoder and encoder of STOMP frames for one connection.
#[derive(Debug)]
pub struct StompCodec {
    limits: FrameLimits,
    escaping: Escaping,
    /// The frame being decoded, if its first octet has been seen.
    pending: Option<Pending>,
    /// Octets examined by searches so far; only read by tests, to prove that
    /// partial input is not rescanned.
    scanned: u64,
}

/// Decoding state of a frame that has not been completely received. All
/// offsets are relative to the start of the buffer, which is the first octet
/// of the command: the buffer is only advanced between frames.
#[derive(Debug)]
struct Pending {
    phase: Phase,
    /// Escaping of this frame's headers (none for CONNECT and friends).
    escaping: Escaping,
    /// Start of the line being read (command or header line).
    line_start: usize,
    /// Octets before this offset have been searched already (for an EOL
    /// while reading lines, for NUL while reading a body).
    scan: usize,
    headers: Vec<HeaderSpan>,
    /// Value of the first `content-length` header.
    content_length: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    CommandLine,
    Headers(Command),
    /// The headers are complete; the body starts at the given offset.
    Body(Command, usize),
}

#[derive(Debug)]
struct HeaderSpan {
    name: Range<usize>,
    value: Range<usize>,
}

impl Pending {
    fn new() -> Self {
        Pending {
            phase: Phase::CommandLine,
            escaping: Escaping::None,
            line_start: 0,
            scan: 0,
            headers: Vec::new(),
            content_length: None,
        }
    }
}

impl StompCodec {
    /// A codec for a new connection; headers are validated as STOMP 1.2 until
    /// [`StompCodec::set_escaping`] says otherwise.
    pub fn new(limits: FrameLimits) -> Self {
        StompCodec {
            limits,
            escaping: Escaping::V12,
            pending: None,
            scanned: 0,
        }
    }

    /// Changes the limits; they apply to the checks made from now on,
    /// including those on a frame that is partly received.
    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    /// Sets the escaping of the negotiated version (1.0: `None`, 1.1: `V11`,
    /// 1.2: `V12`), used to validate incoming and to escape outgoing headers.
    pub fn set_escaping(&mut self, escaping: Escaping) {
        self.escaping = escaping;
    }

    pub fn escaping(&self) -> Escaping {
        self.escaping
    }

    #[cfg(test)]
    fn scanned(&self) -> u64 {
        self.scanned
    }
}

/// What the buffer starts with when no frame is pending.
enum Lead {
    /// A run of EOLs (and NULs) of that many octets: a heart-beat.
    Eols(usize),
    /// Something else: the first octet of a command.
    Command,
    /// Nothing, or a CR that may be the start of a CRLF.
    NeedMore,
}

fn leading_eols(src: &[u8]) -> Result<Lead, DecodeError> {
    let mut i = 0;
    loop {
        match src.get(i) {
            Some(b'\n' | 0) => i += 1,
            Some(b'\r') => match src.get(i + 1) {
                Some(b'\n') => i += 2,
                Some(_) => return Err(DecodeError::StrayCarriageReturn),
                None => break,
            },
            Some(_) if i == 0 => return Ok(Lead::Command),
            Some(_) | None => break,
        }
    }
    Ok(if i == 0 {
        Lead::NeedMore
    } else {
        Lead::Eols(i)
    })
}

/// Reads the command line and the header lines. Once the empty line ending
/// the headers has been read (the phase is then `Body`), returns the command
/// and the offset of the body; `None` if more input is needed.
fn read_head(
    p: &mut Pending,
    src: &[u8],
    limits: &FrameLimits,
    codec_escaping: Escaping,
    scanned: &mut u64,
) -> Result<Option<(Command, usize)>, DecodeError> {
    loop {
        let command = match p.phase {
            Phase::Body(c, body_start) => return Ok(Some((c, body_start))),
            Phase::CommandLine => None,
            Phase::Headers(c) => Some(c),
        };
        let from = p.scan.max(p.line_start);
        let hay = src.get(from..).unwrap_or_default();
        let Some(off) = memchr2(b'\n', 0, hay) else {
            *scanned += hay.len() as u64;
            p.scan = src.len();
            let mut partial = src.len().saturating_sub(p.line_start);
            if src.last() == Some(&b'\r') {
                partial = partial.saturating_sub(1);
            }
            if partial > limits.max_header_line {
                return Err(DecodeError::HeaderLineTooLong(limits.max_header_line));
            }
            // The NUL is still to come, so the frame is longer than this.
            if src.len() >= limits.max_frame_bytes {
                return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
            }
            return Ok(None);
        };
        *scanned += off as u64 + 1;
        let eol = from + off;
        let start = p.line_start;
        let next = eol + 1;
        p.line_start = next;
        p.scan = next;
        if src.get(eol) == Some(&0) {
            return Err(match command {
                None => DecodeError::MalformedCommandLine,
                Some(_) => DecodeError::NulInHeaders,
            });
        }
        let line = src.get(start..eol).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > limits.max_header_line {
            return Err(DecodeError::HeaderLineTooLong(limits.max_header_line));
        }
        if next >= limits.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
        }
        match command {
            None => {
                let c =
                    Command::parse(line).ok_or_else(|| DecodeError::UnknownCommand(echo(line)))?;
                p.escaping = if c.escapes_headers() {
                    codec_escaping
                } else {
                    Escaping::None
                };
                p.phase = Phase::Headers(c);
            }
            Some(c) if line.is_empty() => {
                if let Some(len) = p.content_length {
                    let total = next.checked_add(len).and_then(|n| n.checked_add(1));
                    if total.is_none_or(|total| total > limits.max_frame_bytes) {
                        return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
                    }
                }
                p.phase = Phase::Body(c, next);
            }
            Some(_) => read_header(p, line, start, limits)?,
        }
    }
}

/// Checks one header line (without EOL) starting at offset `start` and
/// records it.
fn read_header(
    p: &mut Pending,
    line: &[u8],
    start: usize,
    limits: &FrameLimits,
) -> Result<(), DecodeError> {
    let colon = memchr(b':', line).ok_or(DecodeError::MalformedHeader)?;
    if p.headers.len() >= limits.max_headers {
        return Err(DecodeError::TooManyHeaders(limits.max_headers));
    }
    let (name, value) = line.split_at(colon);
    let value = value.get(1..).unwrap_or_default();
    let name_text = std::str::from_utf8(name).map_err(|_| DecodeError::HeaderNotUtf8)?;
    let value_text = std::str::from_utf8(value).map_err(|_| DecodeError::HeaderNotUtf8)?;
    if p.escaping != Escaping::None {
        check_escapes(name_text, p.escaping)?;
        check_escapes(value_text, p.escaping)?;
    }
    // The first occurrence of a repeated header wins.
    if p.content_length.is_none() && name == CONTENT_LENGTH.as_bytes() {
        p.content_length = Some(parse_content_length(value, limits)?);
    }
    let name_start = start;
    let value_start = start + colon + 1;
    p.headers.push(HeaderSpan {
        name: name_start..name_start + name.len(),
        value: value_start..value_start + value.len(),
    });
    Ok(())
}

/// Checks that every backslash starts an escape sequence defined by
/// `escaping` (which is `V11` or `V12`).
fn check_escapes(text: &str, escaping: Escaping) -> Result<(), DecodeError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = memchr(b'\\', bytes.get(i..).unwrap_or_default()) {
        let at = i + off;
        match bytes.get(at + 1) {
            Some(b'\\' | b'n' | b'c') => {}
            Some(b'r') if escaping == Escaping::V12 => {}
            _ => {
                let sequence: String = text.get(at..).unwrap_or_default().chars().take(2).collect();
                return Err(DecodeError::InvalidEscape(echo(sequence.as_bytes())));
            }
        }
        i = at + 2;
    }
    Ok(())
}

/// Parses a decimal `content-length`. A number too large for `usize` is
/// certainly over the limit.
fn parse_content_length(value: &[u8], limits: &FrameLimits) -> Result<usize, DecodeError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::InvalidContentLength(echo(value)));
    }
    value.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or(DecodeError::FrameTooLarge(limits.max_frame_bytes))
    })
}

/// Finds the NUL ending the body of a frame whose headers are complete.
/// Returns its offset, or `None` if more input is needed.
fn find_end(
    p: &mut Pending,
    body_start: usize,
    src: &[u8],
    limits: &FrameLimits,
    scanned: &mut u64,
) -> Result<Option<usize>, DecodeError> {
    if let Some(len) = p.content_length {
        // Cannot overflow: checked against the limit when the headers ended.
        let end = body_start + len;
        return match src.get(end) {
            None => Ok(None),
            Some(0) => Ok(Some(end)),
            Some(_) => Err(DecodeError::BodyNotTerminated),
        };
    }
    let from = p.scan.max(body_start);
    let hay = src.get(from..).unwrap_or_default();
    match memchr(0, hay) {
        Some(off) => {
            *scanned += off as u64 + 1;
            let end = from + off;
            if end >= limits.max_frame_bytes {
                return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
            }
            Ok(Some(end))
        }
        None => {
            *scanned += hay.len() as u64;
            p.scan = src.len();
            if src.len() >= limits.max_frame_bytes {
                return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
            }
            Ok(None)
        }
    }
}

/// Client text for an error message: lossy UTF-8, at most 32 characters,
/// control characters escaped.
fn echo(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == ECHO_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

impl Decoder for StompCodec {
    type Item = Inbound;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        let mut p = match self.pending.take() {
            Some(p) => p,
            None => match leading_eols(src)? {
                Lead::Eols(n) => {
                    src.advance(n);
                    return Ok(Some(Inbound::Heartbeat));
                }
                Lead::NeedMore => return Ok(None),
                Lead::Command => Pending::new(),
            },
        };
        let Some((command, body_start)) =
            read_head(&mut p, src, &self.limits, self.escaping, &mut self.scanned)?
        else {
            self.pending = Some(p);
            return Ok(None);
        };
        // No `reserve` for a known content-length: the buffer grows with what
        // actually arrives, so a few header octets cannot make us allocate
        // up to the frame limit.
        let Some(end) = find_end(&mut p, body_start, src, &self.limits, &mut self.scanned)? else {
            self.pending = Some(p);
            return Ok(None);
        };
        let buf = src.split_to(end + 1).freeze();
        let headers = p
            .headers
            .iter()
            .map(|h| RawHeader {
                name: buf.slice(h.name.clone()),
                value: buf.slice(h.value.clone()),
            })
            .collect();
        Ok(Some(Inbound::Frame(Frame {
            command,
            escaping: p.escaping,
            headers,
            body: buf.slice(body_start..end),
        })))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        // A CR left over from a heart-beat cut short is harmless.
        if buf.is_empty() || (self.pending.is_none() && buf[..] == b"\r"[..]) {
            buf.clear();
            Ok(None)
        } else {
            Err(DecodeError::Truncated)
        }
    }
}

impl Encoder<&Frame> for StompCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), io::Error> {
        encode_frame(frame, self.escaping, dst);
        Ok(())
    }
}

/// Appends the wire form of `frame` to `dst`, escaping headers per `escaping`
/// (none for CONNECT/STOMP/CONNECTED, see [`Command::escapes_headers`]).
///
/// If `frame.escaping != Escaping::None` the stored headers are escaped
/// already: they are unescaped with that escaping first, then escaped per
/// `escaping` (headers of CONNECT/STOMP/CONNECTED are always taken literally,
/// as [`Frame::header`] does). Any `content-length` header of the frame is
/// dropped and, when the body is non-empty, `content-length:<len>` is written
/// with the true body length, so a body may contain NUL and no header can lie
/// about the length. See [`encode_header`] for octets no escaping can carry.
pub fn encode_frame(frame: &Frame, escaping: Escaping, dst: &mut BytesMut) {
    let (stored, wire) = if frame.command.escapes_headers() {
        (frame.escaping, escaping)
    } else {
        (Escaping::None, Escaping::None)
    };
    let header_bytes: usize = frame
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 2)
        .sum();
    dst.reserve(frame.command.as_str().len() + header_bytes + frame.body.len() + 40);
    dst.extend_from_slice(frame.command.as_str().as_bytes());
    dst.put_u8(b'\n');
    let headers = frame
        .headers
        .iter()
        .map(|h| (unescape(&h.name, stored), unescape(&h.value, stored)));
    encode_rest(headers, &frame.body, wire, dst);
}

/// Appends the part of a frame after its command line (and after any
/// header the caller already wrote): `headers` escaped per `escaping`
/// (any `content-length` among them dropped), `content-length` with the
/// true length when the body is not empty, the blank line, the body and the
/// NUL. The one place a frame's end is encoded: [`encode_frame`] and the
/// fan-out's shared MESSAGE encoding ([`super::message`]) both use it.
pub fn encode_rest<N, V>(
    headers: impl IntoIterator<Item = (N, V)>,
    body: &[u8],
    escaping: Escaping,
    dst: &mut BytesMut,
) where
    N: AsRef<str>,
    V: AsRef<str>,
{
    for (name, value) in headers {
        if name.as_ref() == CONTENT_LENGTH {
            continue;
        }
        encode_header(name.as_ref(), value.as_ref(), escaping, dst);
    }
    if !body.is_empty() {
        dst.extend_from_slice(CONTENT_LENGTH.as_bytes());
        dst.put_u8(b':');
        put_decimal(body.len(), dst);
        dst.put_u8(b'\n');
    }
    dst.put_u8(b'\n');
    dst.extend_from_slice(body);
    dst.put_u8(0);
}

/// Appends `name:value\n` escaped per `escaping` (used by the fan-out path to
/// pre-encode shared header blocks).
///
/// 1.2 escapes `\`, LF, `:` and CR; 1.1 the same except CR, which 1.1 cannot
/// escape and is written raw (a CR ending a value is then read back as part
/// of the EOL). `Escaping::None` writes the text raw. Whatever the escaping,
/// octets that would break the framing and that it cannot escape are written
/// as U+FFFD: NUL always (it would end the frame early and let header text
/// forge frames), and LF when `escaping` is `None`; under `None` a header
/// whose name holds `:` is not written at all.
pub fn encode_header(name: &str, value: &str, escaping: Escaping, dst: &mut BytesMut) {
    // STOMP 1.0 cannot escape: a header named `user-id:admin` with value
    // `x` would be read as `user-id` with value `admin:x`, so a name holding
    // `:` is left out (LF is written as U+FFFD below; CR cannot end a line).
    if escaping == Escaping::None && name.contains(':') {
        return;
    }
    put_text(name, escaping, dst);
    dst.put_u8(b':');
    put_text(value, escaping, dst);
    dst.put_u8(b'\n');
}

fn put_text(text: &str, escaping: Escaping, dst: &mut BytesMut) {
    const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
    let bytes = text.as_bytes();
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match (b, escaping) {
            (0, _) | (b'\n', Escaping::None) => REPLACEMENT,
            (_, Escaping::None) => continue,
            (b'\\', _) => b"\\\\",
            (b'\n', _) => b"\\n",
            (b':', _) => b"\\c",
            (b'\r', Escaping::V12) => b"\\r",
            _ => continue,
        };
        dst.extend_from_slice(bytes.get(copied..i).unwrap_or_default());
        dst.extend_from_slice(replacement);
        copied = i + 1;
    }
    dst.extend_from_slice(bytes.get(copied..).unwrap_or_default());
}

fn put_decimal(n: usize, dst: &mut BytesMut) {
    use std::fmt::Write;
    // Writing into a BytesMut cannot fail: it grows as needed.
    let _ = write!(dst, "{n}");
}

#[cfg(test)]
mod tests;
