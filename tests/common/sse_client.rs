//! A plain HTTP client for the gateway's Server-Sent Events endpoint, with
//! a strict SSE parser (no browser): tests/sse.rs and tests/history.rs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What an SSE stream holds, as the HTML spec's parser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event {
        id: Option<String>,
        event: Option<String>,
        data: String,
    },
    Comment(String),
    Retry(u64),
}

/// A strict SSE parser: the spec's algorithm (lines end in LF, which is
/// all the gateway writes), and it fails on anything the spec would
/// ignore silently (an unknown field, a field without `: `), so that the
/// gateway's field syntax is checked.
#[derive(Debug, Default)]
pub struct Parser {
    pub text: String,
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.text
            .push_str(std::str::from_utf8(bytes).expect("the event stream is UTF-8"));
    }

    pub fn next(&mut self) -> Option<Item> {
        loop {
            let end = self.text.find('\n')?;
            let line: String = self.text.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            assert!(!line.contains('\r'), "a CR in line {line:?}");
            if line.is_empty() {
                let id = self.id.take();
                let event = self.event.take();
                match self.data.take() {
                    Some(mut data) => {
                        data.pop();
                        return Some(Item::Event { id, event, data });
                    }
                    None => {
                        assert!(id.is_none() && event.is_none(), "id/event without data");
                        continue;
                    }
                }
            }
            if let Some(comment) = line.strip_prefix(':') {
                return Some(Item::Comment(comment.trim_start().to_owned()));
            }
            let (field, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("not `field: value`: {line:?}"));
            match field {
                "data" => {
                    let data = self.data.get_or_insert_with(String::new);
                    data.push_str(value);
                    data.push('\n');
                }
                "id" => {
                    assert!(!value.contains('\0'));
                    self.id = Some(value.to_owned());
                }
                "event" => self.event = Some(value.to_owned()),
                "retry" => return Some(Item::Retry(value.parse().expect("retry is digits"))),
                other => panic!("unknown field {other:?} in {line:?}"),
            }
        }
    }
}

/// An HTTP/1.1 client of one event stream (chunked body).
pub struct EventStream {
    pub tcp: TcpStream,
    pub raw: Vec<u8>,
    pub parser: Parser,
    pub head: String,
}

/// What a request that did not start a stream got.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub head: String,
    pub body: String,
}

pub async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<EventStream, Refused> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let head_end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                return at;
            }
            let mut buf = [0u8; 4096];
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the response head");
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response head within 20 s");
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let raw = raw[head_end + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut stream = EventStream {
        tcp,
        raw,
        parser: Parser::default(),
        head,
    };
    if status == 200 {
        assert!(
            stream
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/event-stream")),
            "{}",
            stream.head
        );
        return Ok(stream);
    }
    // A refusal has a complete body (content-length).
    let length: usize = stream
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while stream.raw.len() < length {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.tcp.read(&mut buf))
            .await
            .expect("body in time")
            .expect("read");
        if n == 0 {
            break;
        }
        stream.raw.extend_from_slice(&buf[..n]);
    }
    Err(Refused {
        status,
        head: stream.head.clone(),
        body: String::from_utf8_lossy(&stream.raw).into_owned(),
    })
}

impl EventStream {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// Moves complete chunks of the body into the parser; `false` at the
    /// last chunk.
    pub fn dechunk(&mut self) -> bool {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if size == 0 {
                return false;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return true;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.parser.push(&data);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next item within `timeout`; `None` on timeout or at the end.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let open = self.dechunk();
            if let Some(item) = self.parser.next() {
                return Some(item);
            }
            if !open {
                return None;
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The next event (comments and `retry` skipped), which must come.
    pub async fn event(&mut self) -> (Option<String>, Option<String>, String) {
        loop {
            match self.next_within(Duration::from_secs(10)).await {
                Some(Item::Event { id, event, data }) => return (id, event, data),
                Some(_) => continue,
                None => panic!("no event within 10 s"),
            }
        }
    }

    /// No event within `within` (comments are fine).
    pub async fn no_event(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Item::Event { id, event, data }) => {
                    panic!("unexpected event {id:?} {event:?} {data:?}")
                }
                Some(_) => continue,
                None => return,
            }
        }
    }
}
