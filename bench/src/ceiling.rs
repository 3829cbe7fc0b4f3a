//! The ceiling: a minimal STOMP-over-WebSocket broadcast server, "the best
//! any STOMP-over-WS server could do" on this machine.
//!
//! No broker, no per-subscriber work beyond the write itself: CONNECT gets a
//! fixed CONNECTED, SUBSCRIBE puts the connection on the destination's list
//! (RECEIPT when asked), and the SEND frames found in one read from the
//! publisher are each encoded once into a complete WebSocket message holding
//! a MESSAGE frame (constant `subscription:sub-0`); then, per subscriber, all
//! of them are written with ONE non-blocking write from the publisher's task
//! (no task wake-up, no copy per recipient). Only when a socket cannot take
//! everything does the rest go to that connection's queue and its writer
//! task. With `coalesce`, the frames of one batch go in one WebSocket message.
//!
//! The WebSocket layer is hand-written (handshake via tungstenite's
//! accept-key helper, masked client frames, unmasked server frames) so that
//! the server frame bytes can be shared by all recipients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use stompgate::stomp::{Command, DecodeError, FrameLimits, Inbound, StompCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::codec::Decoder;

#[derive(Debug, Clone)]
pub struct CeilingConfig {
    pub listen: SocketAddr,
    /// Bytes queued for a connection that cannot keep up before it misses
    /// messages.
    pub max_pending: usize,
    /// Join the frames of one batch into one WebSocket message.
    pub coalesce: bool,
}

struct Conn {
    id: u64,
    stream: TcpStream,
    /// What could not be written yet, in order; written by the writer task.
    pending: Mutex<BytesMut>,
    wake: Notify,
    closed: AtomicBool,
}

struct State {
    topics: RwLock<HashMap<String, Vec<Arc<Conn>>>>,
    max_pending: usize,
    coalesce: bool,
    next_conn: AtomicU64,
    next_message: AtomicU64,
    dropped: AtomicU64,
}

/// Decodes one frame with the gateway's codec.
pub fn decode_one(
    codec: &mut StompCodec,
    buf: &mut BytesMut,
) -> Result<Option<Inbound>, DecodeError> {
    codec.decode(buf)
}

pub async fn run_ceiling(cfg: CeilingConfig) -> std::io::Result<()> {
    let listener = TcpListener::bind(cfg.listen).await?;
    eprintln!(
        "ceiling: listening on ws://{}/ws (max pending {} KiB per connection, coalesce {})",
        listener.local_addr()?,
        cfg.max_pending / 1024,
        cfg.coalesce
    );
    let state = Arc::new(State {
        topics: RwLock::new(HashMap::new()),
        max_pending: cfg.max_pending.max(64 * 1024),
        coalesce: cfg.coalesce,
        next_conn: AtomicU64::new(0),
        next_message: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    let reporter = Arc::clone(&state);
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let dropped = reporter.dropped.load(Ordering::Relaxed);
            if dropped != last {
                eprintln!("ceiling: {dropped} frames dropped for slow subscribers so far");
                last = dropped;
            }
        }
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                eprintln!("ceiling: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let conn = Arc::new(Conn {
                id: state.next_conn.fetch_add(1, Ordering::Relaxed),
                stream,
                pending: Mutex::new(BytesMut::new()),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            });
            let writer = tokio::spawn(write_loop(Arc::clone(&conn)));
            let subscribed = serve(&conn, &state).await;
            conn.closed.store(true, Ordering::Release);
            conn.wake.notify_one();
            if let Some(destination) = subscribed {
                unsubscribe(&state, &destination, conn.id);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        });
    }
}

fn unsubscribe(state: &State, destination: &str, id: u64) {
    let mut topics = state.topics.write().unwrap_or_else(|p| p.into_inner());
    if let Some(list) = topics.get_mut(destination) {
        if let Some(i) = list.iter().position(|c| c.id == id) {
            list.swap_remove(i);
        }
        if list.is_empty() {
            topics.remove(destination);
        }
    }
}

impl Conn {
    /// Writes `bytes` now if the socket takes them and nothing is queued;
    /// queues the rest (bounded) for the writer task.
    fn send(&self, bytes: &[u8], state: &State) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut written = 0;
        if pending.is_empty() {
            while written < bytes.len() {
                match self.stream.try_write(&bytes[written..]) {
                    Ok(0) => return,
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.closed.store(true, Ordering::Release);
                        return;
                    }
                }
            }
        }
        if written < bytes.len() {
            if pending.len() + bytes.len() - written > state.max_pending {
                state.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            pending.extend_from_slice(&bytes[written..]);
            drop(pending);
            self.wake.notify_one();
        }
    }
}

/// Drains what `send` could not write, waiting for the socket.
async fn write_loop(conn: Arc<Conn>) {
    loop {
        conn.wake.notified().await;
        loop {
            if conn.closed.load(Ordering::Acquire) {
                return;
            }
            let blocked = {
                let mut pending = conn.pending.lock().unwrap_or_else(|p| p.into_inner());
                if pending.is_empty() {
                    break;
                }
                match conn.stream.try_write(&pending) {
                    Ok(n) => {
                        pending.advance(n);
                        if pending.is_empty() && pending.capacity() > 256 * 1024 {
                            *pending = BytesMut::new();
                        }
                        false
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                    Err(_) => {
                        conn.closed.store(true, Ordering::Release);
                        return;
                    }
                }
            };
            if blocked && conn.stream.writable().await.is_err() {
                return;
            }
        }
    }
}

/// A server WebSocket frame (FIN, unmasked) around `payload`.
fn ws_frame(opcode: u8, payload: &[u8], out: &mut BytesMut) {
    out.reserve(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n < 65536 => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

fn text_or_binary(payload: &[u8]) -> u8 {
    if std::str::from_utf8(payload).is_ok() {
        0x1
    } else {
        0x2
    }
}

/// Reads until the end of the HTTP upgrade request and answers it; returns
/// whatever followed the request.
async fn handshake(conn: &Conn) -> Result<BytesMut, String> {
    let mut buf = BytesMut::with_capacity(2048);
    let end = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err("request headers too long".into());
        }
        read_some(conn, &mut buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let key = header("Sec-WebSocket-Key").ok_or("not a WebSocket upgrade")?;
    let offered = header("Sec-WebSocket-Protocol").unwrap_or_default();
    let protocol = ["v12.stomp", "v11.stomp", "v10.stomp"]
        .into_iter()
        .find(|p| offered.split(',').any(|o| o.trim() == *p));
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(p) = protocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    response.push_str("\r\n");
    write_all(conn, response.as_bytes()).await?;
    Ok(buf)
}

async fn read_some(conn: &Conn, buf: &mut BytesMut) -> Result<(), String> {
    loop {
        conn.stream.readable().await.map_err(|e| e.to_string())?;
        buf.reserve(4096);
        match conn.stream.try_read_buf(buf) {
            Ok(0) => return Err("closed".into()),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn write_all(conn: &Conn, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        conn.stream.writable().await.map_err(|e| e.to_string())?;
        match conn.stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// One client WebSocket frame, unmasked, if `buf` holds all of it.
fn take_ws_frame(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if len > 64 << 20 {
        return Err("WebSocket frame too large".into());
    }
    let mut mask = [0u8; 4];
    if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        mask.copy_from_slice(&buf[pos..pos + 4]);
        pos += 4;
    }
    if buf.len() < pos + len {
        return Ok(None);
    }
    buf.advance(pos);
    let mut payload = buf.split_to(len);
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }
    Ok(Some((opcode, payload)))
}

/// Serves one connection; returns the destination it was subscribed to.
async fn serve(conn: &Arc<Conn>, state: &State) -> Option<String> {
    let mut input = handshake(conn).await.ok()?;
    let mut codec = StompCodec::new(FrameLimits::default());
    let mut stomp = BytesMut::new();
    let mut subscribed: Option<String> = None;
    loop {
        // Every whole WebSocket frame read so far.
        let mut close = false;
        loop {
            match take_ws_frame(&mut input) {
                Ok(Some((0x0..=0x2, payload))) => stomp.extend_from_slice(&payload),
                Ok(Some((0x8, _))) => close = true,
                Ok(Some((0x9, payload))) => {
                    let mut pong = BytesMut::new();
                    ws_frame(0xA, &payload, &mut pong);
                    conn.send(&pong, state);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => close = true,
            }
            if close {
                break;
            }
        }
        // Every whole STOMP frame; SENDs are broadcast together afterwards.
        let mut replies = BytesMut::new();
        let mut batch: Vec<(String, Bytes)> = Vec::new();
        loop {
            let frame = match decode_one(&mut codec, &mut stomp) {
                Ok(Some(Inbound::Frame(f))) => f,
                Ok(Some(Inbound::Heartbeat)) => continue,
                Ok(None) => break,
                Err(e) => {
                    ws_frame(
                        0x1,
                        format!("ERROR\nmessage:{e}\n\n\0").as_bytes(),
                        &mut replies,
                    );
                    close = true;
                    break;
                }
            };
            match frame.command {
                Command::Connect | Command::Stomp => ws_frame(
                    0x1,
                    b"CONNECTED\nversion:1.2\nheart-beat:0,0\nserver:stompgate-bench-ceiling\n\n\0",
                    &mut replies,
                ),
                Command::Subscribe => {
                    let destination = frame
                        .header("destination")
                        .map(|d| d.into_owned())
                        .unwrap_or_default();
                    if let Some(old) = subscribed.take() {
                        unsubscribe(state, &old, conn.id);
                    }
                    state
                        .topics
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(destination.clone())
                        .or_default()
                        .push(Arc::clone(conn));
                    subscribed = Some(destination);
                }
                Command::Unsubscribe => {
                    if let Some(old) = subscribed.take() {
                        unsubscribe(state, &old, conn.id);
                    }
                }
                Command::Send => {
                    let destination = frame
                        .header("destination")
                        .map(|d| d.into_owned())
                        .unwrap_or_default();
                    let id = state.next_message.fetch_add(1, Ordering::Relaxed);
                    let mut message = Vec::with_capacity(frame.body.len() + 128);
                    message.extend_from_slice(b"MESSAGE\nsubscription:sub-0\ndestination:");
                    message.extend_from_slice(destination.as_bytes());
                    message.extend_from_slice(
                        format!(
                            "\nmessage-id:c-{id}\ncontent-length:{}\n\n",
                            frame.body.len()
                        )
                        .as_bytes(),
                    );
                    message.extend_from_slice(&frame.body);
                    message.push(0);
                    batch.push((destination, Bytes::from(message)));
                }
                Command::Disconnect => close = true,
                _ => {}
            }
            if let Some(receipt) = frame.header("receipt") {
                ws_frame(
                    0x1,
                    format!("RECEIPT\nreceipt-id:{receipt}\n\n\0").as_bytes(),
                    &mut replies,
                );
            }
            if close {
                break;
            }
        }
        if !batch.is_empty() {
            broadcast(state, batch);
        }
        if !replies.is_empty() {
            conn.send(&replies, state);
        }
        if close || conn.closed.load(Ordering::Relaxed) {
            if close {
                let mut bye = BytesMut::new();
                ws_frame(0x8, &[], &mut bye);
                conn.send(&bye, state);
                // Let the writer flush what is queued.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return subscribed;
        }
        if read_some(conn, &mut input).await.is_err() {
            return subscribed;
        }
    }
}

/// Encodes the batch's MESSAGE frames once per destination and writes them
/// to every subscriber in one go.
fn broadcast(state: &State, batch: Vec<(String, Bytes)>) {
    let mut by_destination: Vec<(String, Vec<Bytes>)> = Vec::new();
    for (destination, message) in batch {
        match by_destination.iter_mut().find(|(d, _)| *d == destination) {
            Some((_, list)) => list.push(message),
            None => by_destination.push((destination, vec![message])),
        }
    }
    let topics = state.topics.read().unwrap_or_else(|p| p.into_inner());
    for (destination, messages) in by_destination {
        let Some(subscribers) = topics.get(&destination) else {
            continue;
        };
        let mut wire = BytesMut::new();
        if state.coalesce {
            let joined: Vec<u8> = messages.concat();
            ws_frame(text_or_binary(&joined), &joined, &mut wire);
        } else {
            for m in &messages {
                ws_frame(text_or_binary(m), m, &mut wire);
            }
        }
        for conn in subscribers {
            conn.send(&wire, state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_unmasked() {
        let payload = b"SEND\n\nhi\0";
        let mask = [1u8, 2, 3, 4];
        let mut wire = BytesMut::new();
        wire.put_u8(0x81);
        wire.put_u8(0x80 | payload.len() as u8);
        wire.put_slice(&mask);
        for (i, b) in payload.iter().enumerate() {
            wire.put_u8(b ^ mask[i & 3]);
        }
        wire.put_u8(0x81); // the start of a next frame
        let (op, p) = take_ws_frame(&mut wire).unwrap().unwrap();
        assert_eq!(op, 1);
        assert_eq!(&p[..], payload);
        assert_eq!(wire.len(), 1);
        assert!(take_ws_frame(&mut wire).unwrap().is_none());
    }

    #[test]
    fn server_frame_lengths() {
        let mut out = BytesMut::new();
        ws_frame(1, &[b'x'; 125], &mut out);
        assert_eq!(&out[..2], &[0x81, 125]);
        out.clear();
        ws_frame(1, &[b'x'; 300], &mut out);
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        assert_eq!(out.len(), 304);
    }
}
