//! The STOMP frame: a command, an ordered list of headers and a body.
//!
//! Header names and values are kept as they came off the wire (still escaped)
//! and unescaped only when somebody asks for them: most headers of most frames
//! are never read, so eager unescaping would be wasted work. The decoder has
//! already checked that every header is valid UTF-8 and that every escape
//! sequence is legal, so reading a header cannot fail.

use std::borrow::Cow;

use bytes::Bytes;

/// Every command of STOMP 1.0, 1.1 and 1.2, client and server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command, client and server side.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL). Commands are case-sensitive.
    pub fn parse(line: &[u8]) -> Option<Command> {
        Some(match line {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// CONNECT, STOMP and CONNECTED never escape their headers (STOMP 1.2 spec),
    /// so that a 1.0 peer can read them whatever version is negotiated.
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How header octets are escaped on the wire, which depends on the version
/// negotiated and on the command (see [`Command::escapes_headers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escaping {
    /// STOMP 1.0, and CONNECT/CONNECTED frames: octets are taken literally.
    None,
    /// STOMP 1.1: `\\`, `\n` and `\c`.
    V11,
    /// STOMP 1.2: 1.1 plus `\r`.
    #[default]
    V12,
}

/// One header as it stands on the wire: name and value still escaped, but
/// known to be valid UTF-8 with legal escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub name: Bytes,
    pub value: Bytes,
}

/// A STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    /// How `headers` are escaped; frames built in code use [`Escaping::None`]
    /// (their headers are stored unescaped) and the encoder escapes them.
    pub escaping: Escaping,
    pub headers: Vec<RawHeader>,
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body, for building in code.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            escaping: Escaping::None,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (unescaped text); builder style.
    pub fn with_header(mut self, name: &str, value: &str) -> Frame {
        self.push_header(name, value);
        self
    }

    /// Sets the body; builder style.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// Appends a header given as plain (unescaped) text. Only valid on frames
    /// built in code (`escaping == Escaping::None`).
    pub fn push_header(&mut self, name: &str, value: &str) {
        debug_assert_eq!(self.escaping, Escaping::None);
        self.headers.push(RawHeader {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        });
    }

    /// The value of the first header called `name` (STOMP: the first of
    /// repeated headers wins), unescaped.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let escaping = self.effective_escaping();
        self.headers
            .iter()
            .find(|h| unescape(&h.name, escaping).as_ref() == name)
            .map(|h| unescape(&h.value, escaping))
    }

    /// All headers, first occurrence of each name only, unescaped, in order.
    pub fn headers(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
        let escaping = self.effective_escaping();
        let mut seen: Vec<Cow<'_, str>> = Vec::new();
        self.headers.iter().filter_map(move |h| {
            let name = unescape(&h.name, escaping);
            if seen.contains(&name) {
                return None;
            }
            seen.push(name.clone());
            Some((name, unescape(&h.value, escaping)))
        })
    }

    fn effective_escaping(&self) -> Escaping {
        if self.command.escapes_headers() {
            self.escaping
        } else {
            Escaping::None
        }
    }
}

/// Unescapes a header name or value. The decoder has validated UTF-8 and the
/// escape sequences, so invalid input here can only come from a frame built by
/// hand; it is then replaced lossily rather than panicking.
pub fn unescape(raw: &[u8], escaping: Escaping) -> Cow<'_, str> {
    if escaping == Escaping::None || memchr::memchr(b'\\', raw).is_none() {
        return String::from_utf8_lossy(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'c') => out.push(b':'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') if escaping == Escaping::V12 => out.push(b'\r'),
            Some(&other) => {
                out.push(b'\\');
                out.push(other);
            }
            None => out.push(b'\\'),
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A STOMP protocol version (the one negotiated on CONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// How headers are escaped under this version.
    pub fn escaping(self) -> Escaping {
        match self {
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::V11,
            Version::V1_2 => Escaping::V12,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_header_wins_and_unescapes_lazily() {
        let frame = Frame {
            command: Command::Send,
            escaping: Escaping::V12,
            headers: vec![
                RawHeader {
                    name: Bytes::from_static(b"a\\cb"),
                    value: Bytes::from_static(b"x\\ny\\r"),
                },
                RawHeader {
                    name: Bytes::from_static(b"a:b"),
                    value: Bytes::from_static(b"second"),
                },
            ],
            body: Bytes::new(),
        };
        assert_eq!(frame.header("a:b").as_deref(), Some("x\ny\r"));
        assert_eq!(frame.headers().count(), 1);
    }

    #[test]
    fn connect_headers_are_literal() {
        let frame = Frame {
            command: Command::Connect,
            escaping: Escaping::V12,
            headers: vec![RawHeader {
                name: Bytes::from_static(b"passcode"),
                value: Bytes::from_static(b"a\\nb"),
            }],
            body: Bytes::new(),
        };
        assert_eq!(frame.header("passcode").as_deref(), Some("a\\nb"));
    }

    #[test]
    fn commands_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.as_str().as_bytes()), Some(c));
        }
        assert_eq!(Command::parse(b"send"), None);
    }
}
