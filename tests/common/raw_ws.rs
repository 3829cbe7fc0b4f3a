//! A WebSocket client written for the byte-level tests
//! (tests/websocket_protocol.rs, tests/websocket_hostile.rs): HTTP/1.1
//! upgrade request, hand-built client frames, a hand-written parser for
//! server frames, so that nothing between a test and the server's bytes is
//! forgiving. Every wait is bounded ([`WAIT`]).
use std::io;
use std::net::SocketAddr;

use base64::Engine;
use bytes::BytesMut;
use sha1::{Digest, Sha1};
use stompgate::stomp::{Command, Frame, FrameLimits, Inbound, StompCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// Bound on every read (and on the wait for a connection to close).
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// RFC 6455 §1.3: the GUID appended to the key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
pub fn accept_for(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// An HTTP/1.1 upgrade request, with what a test may leave out or change.
pub struct Upgrade {
    pub path: String,
    /// `Sec-WebSocket-Key` (none: the header is left out).
    pub key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub version: String,
    /// `Sec-WebSocket-Protocol` (none: the header is left out).
    pub protocols: Option<String>,
    /// `Upgrade: websocket` and `Connection: Upgrade` (false: a plain GET).
    pub upgrade_headers: bool,
}

impl Upgrade {
    /// A valid request for `path` with a fresh key and no subprotocol.
    pub fn new(path: &str) -> Upgrade {
        Upgrade {
            path: path.to_owned(),
            key: Some(new_key()),
            version: "13".to_owned(),
            protocols: None,
            upgrade_headers: true,
        }
    }

    pub fn protocols(mut self, protocols: &str) -> Upgrade {
        self.protocols = Some(protocols.to_owned());
        self
    }

    pub fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut request = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\n", self.path);
        if self.upgrade_headers {
            request.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\n");
        }
        if let Some(key) = &self.key {
            request.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
        }
        request.push_str(&format!("Sec-WebSocket-Version: {}\r\n", self.version));
        if let Some(protocols) = &self.protocols {
            request.push_str(&format!("Sec-WebSocket-Protocol: {protocols}\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    }
}

/// A client frame, built by hand: by default final, RSV 0, masked with a
/// random key.
#[derive(Debug, Clone)]
pub struct ClientFrame {
    pub fin: bool,
    /// RSV1..RSV3 as the three bits 0b100 (RSV1), 0b010, 0b001.
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

impl ClientFrame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> ClientFrame {
        ClientFrame {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some(rand::random()),
            payload: payload.into(),
        }
    }

    pub fn text(payload: impl Into<Vec<u8>>) -> ClientFrame {
        ClientFrame::new(TEXT, payload)
    }

    pub fn binary(payload: impl Into<Vec<u8>>) -> ClientFrame {
        ClientFrame::new(BINARY, payload)
    }

    pub fn continuation(payload: impl Into<Vec<u8>>) -> ClientFrame {
        ClientFrame::new(CONTINUATION, payload)
    }

    pub fn ping(payload: impl Into<Vec<u8>>) -> ClientFrame {
        ClientFrame::new(PING, payload)
    }

    pub fn pong(payload: impl Into<Vec<u8>>) -> ClientFrame {
        ClientFrame::new(PONG, payload)
    }

    /// A close frame with a status code and a reason.
    pub fn close(code: u16, reason: &str) -> ClientFrame {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        ClientFrame::new(CLOSE, payload)
    }

    /// FIN = 0: more fragments follow.
    pub fn not_final(mut self) -> ClientFrame {
        self.fin = false;
        self
    }

    pub fn rsv(mut self, bits: u8) -> ClientFrame {
        self.rsv = bits;
        self
    }

    /// Not masked (which a client must never do).
    pub fn unmasked(mut self) -> ClientFrame {
        self.mask = None;
        self
    }

    /// The frame on the wire, with the shortest length form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0x0f));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xffff {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match self.mask {
            Some(mask) => {
                out.extend_from_slice(&mask);
                out.extend(
                    self.payload
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[i % 4]),
                );
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// Several frames back to back (for one TCP write).
pub fn concat(frames: &[ClientFrame]) -> Vec<u8> {
    frames.iter().flat_map(ClientFrame::encode).collect()
}

/// Which of the three payload length encodings a frame used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthForm {
    /// 7-bit length (0..=125).
    Short,
    /// 126 and a 16-bit length.
    Extended16,
    /// 127 and a 64-bit length.
    Extended64,
}

/// A frame as the server sent it.
#[derive(Debug, Clone)]
pub struct ServerFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub form: LengthForm,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The status code of a close frame (`None`: empty payload).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        assert_ne!(
            self.payload.len(),
            1,
            "a close payload is empty or starts with a 2-byte code"
        );
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn is_data(&self) -> bool {
        matches!(self.opcode, TEXT | BINARY | CONTINUATION)
    }

    /// The STOMP frames of a (complete, unfragmented) data frame,
    /// heart-beats skipped; the payload must hold whole frames only.
    pub fn stomp(&self) -> Vec<Frame> {
        assert!(self.is_data() && self.fin, "not a whole message: {self:?}");
        let mut codec = StompCodec::new(FrameLimits {
            max_frame_bytes: 64 * 1024 * 1024,
            max_headers: 1000,
            max_header_line: 1024 * 1024,
        });
        let mut buf = BytesMut::from(&self.payload[..]);
        let mut frames = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Inbound::Frame(frame))) => frames.push(frame),
                Ok(Some(Inbound::Heartbeat)) => {}
                Ok(None) => break,
                Err(e) => panic!("server sent a bad STOMP frame ({e}): {self:?}"),
            }
        }
        assert!(
            buf.is_empty(),
            "a partial STOMP frame at the end of a message: {:?}",
            String::from_utf8_lossy(&buf)
        );
        frames
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Orderly: read returned 0 (FIN).
    Eof,
    /// ECONNRESET (the server closed with our bytes unread).
    Reset,
}

/// What one read gave.
#[derive(Debug)]
pub enum Read {
    Frame(ServerFrame),
    Closed(End),
}

/// Everything the server sent until it closed the TCP connection.
#[derive(Debug)]
pub struct Closing {
    pub frames: Vec<ServerFrame>,
    pub end: End,
}

impl Closing {
    /// `None`: no close frame; `Some(code)`: a close frame with that
    /// code (`Some(None)`: an empty one).
    pub fn close_frame(&self) -> Option<Option<u16>> {
        let close = self.frames.iter().position(|f| f.opcode == CLOSE)?;
        assert_eq!(
            close,
            self.frames.len() - 1,
            "frames after the close frame: {:?}",
            self.frames
        );
        Some(self.frames[close].close_code())
    }

    /// The STOMP frames in the data frames.
    pub fn stomp(&self) -> Vec<Frame> {
        self.frames
            .iter()
            .filter(|f| f.is_data())
            .flat_map(ServerFrame::stomp)
            .collect()
    }
}

/// Status and headers of an HTTP response.
#[derive(Debug)]
pub struct HttpHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl HttpHead {
    /// A header's value (names compared case-insensitively); the header
    /// must be there at most once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let value = values.next();
        assert!(values.next().is_none(), "{name} more than once: {self:?}");
        value
    }
}

/// A TCP connection to the gateway and what was read but not used yet.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        Conn::from_stream(stream)
    }

    /// A connection over a stream the caller opened (e.g. with a small
    /// receive buffer).
    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` in one write call, which must succeed within [`WAIT`].
    pub async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// As [`Conn::write`], for bytes the server may stop reading half
    /// way (it closes the connection): a failed write is fine.
    pub async fn write_lenient(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(WAIT, self.stream.write_all(bytes)).await;
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.write(&frame.encode()).await;
    }

    /// Reads more bytes; `Some(end)` when the connection is closed.
    async fn fill(&mut self, deadline: Instant) -> Result<Option<End>, ()> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) => Ok(Some(End::Eof)),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(None)
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Some(End::Reset)),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }

    /// The HTTP response head (bytes after it stay for the frames).
    pub async fn read_http_head(&mut self) -> HttpHead {
        let deadline = Instant::now() + WAIT;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match self.fill(deadline).await {
                Err(()) => panic!("no HTTP response within {WAIT:?}"),
                Ok(Some(end)) => panic!(
                    "connection closed ({end:?}) before a full HTTP response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(None) => {}
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("HTTP head is text");
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.split_whitespace();
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.trim().to_owned(), value.trim().to_owned())
            })
            .collect();
        HttpHead { status, headers }
    }

    /// One whole frame off the front of the buffer, if there is one.
    fn parse(&mut self) -> Option<ServerFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let rsv = (b[0] >> 4) & 0b111;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (form, len, mut at) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return None;
                }
                let len = u16::from_be_bytes([b[2], b[3]]) as u64;
                assert!(
                    len >= 126,
                    "16-bit length form for {len} bytes (not minimal)"
                );
                (LengthForm::Extended16, len, 4)
            }
            127 => {
                if b.len() < 10 {
                    return None;
                }
                let len = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
                assert!(len >> 63 == 0, "64-bit length with the top bit set");
                assert!(
                    len > 0xffff,
                    "64-bit length form for {len} bytes (not minimal)"
                );
                (LengthForm::Extended64, len, 10)
            }
            len => (LengthForm::Short, u64::from(len), 2),
        };
        let mask = if masked {
            if b.len() < at + 4 {
                return None;
            }
            let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(mask)
        } else {
            None
        };
        let len = usize::try_from(len).expect("frame length fits usize");
        if b.len() < at + len {
            return None;
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(mask) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        self.buf.drain(..at + len);
        Some(ServerFrame {
            fin,
            rsv,
            opcode,
            masked,
            form,
            payload,
        })
    }

    /// The next frame, or how the connection ended; `None` when
    /// nothing came by `deadline`.
    pub async fn read_until(&mut self, deadline: Instant) -> Option<Read> {
        loop {
            if let Some(frame) = self.parse() {
                return Some(Read::Frame(frame));
            }
            match self.fill(deadline).await {
                Err(()) => return None,
                Ok(Some(end)) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed ({end:?}) inside a frame: {} bytes left",
                        self.buf.len()
                    );
                    return Some(Read::Closed(end));
                }
                Ok(None) => {}
            }
        }
    }

    /// The next frame (server pings skipped: the gateway pings idle
    /// clients), which must come within [`WAIT`].
    pub async fn frame(&mut self) -> ServerFrame {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read_until(deadline).await {
                None => panic!("no frame within {WAIT:?}"),
                Some(Read::Closed(end)) => {
                    panic!("connection closed ({end:?}), expected a frame")
                }
                Some(Read::Frame(f)) if f.opcode == PING => continue,
                Some(Read::Frame(f)) => return f,
            }
        }
    }

    /// The next frame, which must be a whole text or binary message,
    /// decoded into its STOMP frames.
    pub async fn stomp(&mut self) -> Vec<Frame> {
        let frame = self.frame().await;
        assert!(
            matches!(frame.opcode, TEXT | BINARY) && frame.fin,
            "expected a whole data message, got {frame:?}"
        );
        frame.stomp()
    }

    /// Reads until the server closes the TCP connection, which must
    /// happen within [`WAIT`]; everything it sent on the way.
    pub async fn until_closed(&mut self) -> Closing {
        let deadline = Instant::now() + WAIT;
        let mut frames = Vec::new();
        loop {
            match self.read_until(deadline).await {
                None => panic!(
                    "the connection was still open after {WAIT:?}; frames so far: {frames:?}"
                ),
                Some(Read::Closed(end)) => return Closing { frames, end },
                Some(Read::Frame(f)) => frames.push(f),
            }
        }
    }
}

/// Expects the next message to be exactly one STOMP frame of `command`.
pub async fn expect_one(conn: &mut Conn, command: Command) -> Frame {
    let mut frames = conn.stomp().await;
    assert_eq!(frames.len(), 1, "expected one {command}, got {frames:?}");
    let frame = frames.remove(0);
    assert_eq!(
        frame.command,
        command,
        "expected {command}, got {frame:?} ({:?})",
        frame.header("message")
    );
    frame
}

/// Expects STOMP frames until one of each `commands` came (in any order,
/// however they are spread over messages); returns them in that order.
pub async fn expect_all(conn: &mut Conn, commands: &[Command]) -> Vec<Frame> {
    let mut got: Vec<Option<Frame>> = vec![None; commands.len()];
    while got.iter().any(Option::is_none) {
        for frame in conn.stomp().await {
            let slot = commands
                .iter()
                .zip(got.iter())
                .position(|(c, g)| *c == frame.command && g.is_none())
                .unwrap_or_else(|| panic!("unexpected {frame:?} waiting for {commands:?}"));
            got[slot] = Some(frame);
        }
    }
    got.into_iter().map(|f| f.expect("all came")).collect()
}
