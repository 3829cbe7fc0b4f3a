//! A raw HTTP/1.1 client for the SockJS tests: responses read as they
//! arrive (streaming bodies, chunked or not), and STOMP over SockJS helpers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const LIMIT: Duration = Duration::from_secs(10);

/// An HTTP response head, and a body read as it arrives.
pub struct Http {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    length: Option<usize>,
    buffered: Vec<u8>,
    eof: bool,
}

impl Http {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads more of the body into `buffered`; `false` at its end.
    pub async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        if self.chunked {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                self.eof = true;
                return false;
            }
            let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                self.eof = true;
                return false;
            }
            self.buffered.extend_from_slice(&chunk[..size]);
            return true;
        }
        if let Some(left) = self.length {
            if left == 0 {
                self.eof = true;
                return false;
            }
            let mut data = vec![0; left];
            self.reader.read_exact(&mut data).await.expect("body");
            self.length = Some(0);
            self.buffered.extend_from_slice(&data);
            return true;
        }
        let mut data = vec![0; 8192];
        let n = self.reader.read(&mut data).await.unwrap_or(0);
        if n == 0 {
            self.eof = true;
            return false;
        }
        self.buffered.extend_from_slice(&data[..n]);
        true
    }

    /// The next `n` bytes of the body (fewer at its end).
    pub async fn read(&mut self, n: usize) -> Vec<u8> {
        while self.buffered.len() < n {
            let more = tokio::time::timeout(LIMIT, self.fill())
                .await
                .expect("body in time");
            if !more {
                break;
            }
        }
        let n = n.min(self.buffered.len());
        self.buffered.drain(..n).collect()
    }

    /// Asserts that the body continues with `expected`.
    pub async fn expect(&mut self, expected: &str) {
        let got = self.read(expected.len()).await;
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }

    /// The rest of the body.
    pub async fn rest(&mut self) -> String {
        while tokio::time::timeout(LIMIT, self.fill())
            .await
            .expect("body end in time")
        {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buffered)).into_owned()
    }

    /// Whether the body ended (within `within`) with nothing more.
    pub async fn ended_within(&mut self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.fill()).await {
            Ok(more) => !more && self.buffered.is_empty(),
            Err(_) => false,
        }
    }
}

/// Sends a request and reads the response head.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Http {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut reader = BufReader::new(stream);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let stream = reader.get_mut();
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut status_line = String::new();
    tokio::time::timeout(LIMIT, reader.read_line(&mut status_line))
        .await
        .expect("response in time")
        .expect("read");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut http = Http {
        status,
        headers,
        reader,
        chunked: false,
        length: None,
        buffered: Vec::new(),
        eof: method == "HEAD",
    };
    http.chunked = http
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    http.length = http.header("content-length").and_then(|v| v.parse().ok());
    if status == 204 || status == 304 {
        http.eof = true;
    }
    http
}

pub async fn get(addr: SocketAddr, path: &str) -> Http {
    request(addr, "GET", path, &[], b"").await
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Http {
    request(addr, "POST", path, &[], body.as_bytes()).await
}

pub async fn body_of(mut http: Http) -> (u16, String) {
    let status = http.status;
    (status, http.rest().await)
}

pub fn stomp(frame: &str) -> String {
    serde_json::to_string(&[frame]).expect("json")
}

/// Reads the body until it holds `needle`; returns the text seen.
pub async fn until(stream: &mut Http, needle: &str) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(&seen)
        );
        let data = stream.read(1).await;
        assert!(
            !data.is_empty(),
            "stream ended; seen {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&data);
    }
    String::from_utf8_lossy(&seen).into_owned()
}
