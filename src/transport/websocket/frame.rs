//! WebSocket framing (RFC 6455) without I/O: client frames in, messages
//! out; server frame headers for the writer.
//!
//! The gateway speaks only what STOMP needs: no extensions (RSV bits must
//! be clear), text and binary messages, possibly fragmented, with control
//! frames (ping, pong, close) allowed between the fragments. Every rule a
//! client can break ends the connection with the close code the RFC gives
//! for it ([`ProtocolError::code`]); a message larger than `max_message`
//! (fragments added up) is refused before any of it is buffered beyond the
//! limit.

use bytes::{Buf, Bytes, BytesMut};

/// Frame opcodes.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes the gateway sends.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Largest payload of a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What the client sent, one event per complete frame or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text or binary message (fragments joined).
    Message { data: Bytes, text: bool },
    /// A ping; the reply is a pong with the same payload.
    Ping(Bytes),
    /// A pong (unsolicited ones included).
    Pong,
    /// The client closes, with its status code when it gave one.
    Close(Option<u16>),
}

/// A rule of RFC 6455 the client broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("client frame not masked")]
    Unmasked,
    #[error("reserved bits set (no extension was negotiated)")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControl,
    #[error("continuation frame with no message started")]
    StrayContinuation,
    #[error("new message while a fragmented one is not finished")]
    Interleaved,
    #[error("message larger than {0} bytes")]
    TooBig(usize),
    #[error("text message is not UTF-8")]
    NotUtf8,
    #[error("malformed close frame")]
    BadClose,
}

impl ProtocolError {
    /// The close code for this error.
    pub fn code(&self) -> u16 {
        match self {
            ProtocolError::TooBig(_) => CLOSE_TOO_BIG,
            ProtocolError::NotUtf8 => CLOSE_INVALID_DATA,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// Reassembles client frames into [`Event`]s.
#[derive(Debug)]
pub struct FrameReader {
    max_message: usize,
    /// A fragmented message in progress: its opcode and what came so far.
    partial: Option<(u8, BytesMut)>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes before the payload.
    len: usize,
    payload: usize,
}

impl FrameReader {
    pub fn new(max_message: usize) -> FrameReader {
        FrameReader {
            max_message,
            partial: None,
        }
    }

    /// The next event from the bytes in `buf` (consumed as frames
    /// complete), `Ok(None)` when more bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        loop {
            let Some(header) = self.header(buf)? else {
                return Ok(None);
            };
            if buf.len() < header.len + header.payload {
                // Reserve for the rest of this frame at once (it is within
                // the message limit, checked by `header`).
                buf.reserve(header.len + header.payload - buf.len());
                return Ok(None);
            }
            buf.advance(header.len);
            let mut payload = buf.split_to(header.payload);
            unmask(&mut payload, header.mask);
            match header.opcode {
                OP_PING => return Ok(Some(Event::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Event::Pong)),
                OP_CLOSE => return close_event(&payload).map(Some),
                OP_CONTINUATION => {
                    let Some((_, data)) = self.partial.as_mut() else {
                        return Err(ProtocolError::StrayContinuation);
                    };
                    data.extend_from_slice(&payload);
                    if header.fin {
                        let Some((opcode, data)) = self.partial.take() else {
                            return Err(ProtocolError::StrayContinuation);
                        };
                        return message(opcode, data).map(Some);
                    }
                }
                opcode => {
                    if self.partial.is_some() {
                        return Err(ProtocolError::Interleaved);
                    }
                    if header.fin {
                        return message(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
            }
        }
    }

    /// Parses and checks the header at the front of `buf`.
    fn header(&self, buf: &BytesMut) -> Result<Option<Header>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::Reserved);
        }
        let opcode = b0 & 0x0f;
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(ProtocolError::Opcode(opcode));
        }
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Unmasked);
        }
        let (payload, mut len) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x8 != 0;
        if control && (!fin || payload > MAX_CONTROL_PAYLOAD as u64) {
            return Err(ProtocolError::BadControl);
        }
        let so_far = match (&self.partial, opcode) {
            (Some((_, data)), OP_CONTINUATION) => data.len() as u64,
            _ => 0,
        };
        if !control && so_far.saturating_add(payload) > self.max_message as u64 {
            return Err(ProtocolError::TooBig(self.max_message));
        }
        if buf.len() < len + 4 {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[len..len + 4]);
        len += 4;
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len,
            // Within the message limit (or 125), so it fits a usize.
            payload: payload as usize,
        }))
    }
}

/// A complete data message; text must be UTF-8.
fn message(opcode: u8, data: BytesMut) -> Result<Event, ProtocolError> {
    let text = opcode == OP_TEXT;
    if text && std::str::from_utf8(&data).is_err() {
        return Err(ProtocolError::NotUtf8);
    }
    // A copy: the payload shares the connection's read buffer, which a
    // piece of it kept by the session (a subscription's id, say) would
    // otherwise keep alive whole.
    Ok(Event::Message {
        data: Bytes::copy_from_slice(&data),
        text,
    })
}

/// A close frame: empty, or a status code and a UTF-8 reason.
fn close_event(payload: &[u8]) -> Result<Event, ProtocolError> {
    match payload.len() {
        0 => Ok(Event::Close(None)),
        1 => Err(ProtocolError::BadClose),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid_code = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid_code {
                return Err(ProtocolError::BadClose);
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(ProtocolError::NotUtf8);
            }
            Ok(Event::Close(Some(code)))
        }
    }
}

/// XORs `data` with the client's mask, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(b) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        // The remainder starts at a multiple of 8, so of 4.
        *b ^= mask[i & 3];
    }
}

/// The header of an unmasked server frame with FIN set: its bytes and
/// length (2, 4 or 10).
pub fn server_header(opcode: u8, payload: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if payload < 126 {
        h[1] = payload as u8;
        (h, 2)
    } else if payload <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
        (h, 10)
    }
}

/// A complete server control frame (payload of at most 125 bytes).
pub fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut out = Vec::with_capacity(2 + payload.len());
    out.push(0x80 | opcode);
    out.push(payload.len() as u8);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A server close frame: empty, or with a status code.
pub fn close_frame(code: Option<u16>) -> Bytes {
    match code {
        None => Bytes::from_static(&[0x80 | OP_CLOSE, 0]),
        Some(code) => control_frame(OP_CLOSE, &code.to_be_bytes()),
    }
}

#[cfg(test)]
mod tests;
