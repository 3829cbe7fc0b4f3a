//! Writing a client's queue to its WebSocket: framing and the socket
//! writes, without copying the shared parts of a delivery.
//!
//! Everything queued for a client when a write happens goes out as one
//! WebSocket message (STOMP allows several frames in one message; stompjs
//! and stomp.py read them) of up to [`COALESCE_BYTES`], in one write. The
//! message is assembled in a scratch buffer of the writing thread (reused,
//! so nothing is allocated per write): its frame header, then each
//! delivery's parts (its subscription's prefix, the ack line, and the
//! message's headers and body, which every recipient shares). Copying a
//! few hundred bytes per delivery there is cheaper than handing the kernel
//! two or three small pieces per delivery in a vectored write: measured,
//! the kernel's per-piece cost made `writev` of the shared parts cost
//! more in all than the copy (see docs/benchmarks.md).
//!
//! Over plain TCP ([`TcpWire`]) the write is made by whoever queued the
//! entries, without waiting; only the part the socket did not take is
//! kept, in the queue's spill. Over anything else (TLS) the writer task
//! frames into one buffer ([`frame_into`]) and writes it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

use super::frame::{close_frame, server_header, OP_BINARY, OP_TEXT};
use crate::bridge::fanout::Batch;
use crate::transport::outbound::{Outbound, Wire, WireWrite};

/// What the reader, the writer task and the wire of one connection share.
#[derive(Debug)]
pub struct Shared {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last write that put bytes on the
    /// socket (the writer's heart-beat timer starts from it).
    last_write: AtomicU64,
    /// Negotiated STOMP heart-beat interval in ms (0: none).
    heartbeat_ms: AtomicU64,
    /// The close code to send: the client's (echoed) or a protocol
    /// error's; 0 for an empty close frame.
    close_code: AtomicU16,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            last_write: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
            close_code: AtomicU16::new(0),
        })
    }

    /// When bytes were last written.
    pub fn last_write(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_write.load(Ordering::Relaxed))
    }

    pub fn wrote(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.last_write.store(now, Ordering::Relaxed);
    }

    /// The STOMP heart-beat interval negotiated, if any.
    pub fn heartbeat(&self) -> Option<Duration> {
        match self.heartbeat_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub fn set_heartbeat(&self, every: Option<Duration>) {
        let ms = every.map_or(0, |d| d.as_millis().clamp(1, u128::from(u64::MAX)) as u64);
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Sets the close code unless one is set already (the first reason
    /// to close wins).
    pub fn set_close_code(&self, code: u16) {
        let _ = self
            .close_code
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Relaxed) {
            0 => None,
            code => Some(code),
        }
    }
}

/// The plain-TCP wire: writes from the caller's thread with non-blocking
/// vectored writes.
#[derive(Debug)]
pub struct TcpWire {
    pub stream: Arc<TcpStream>,
    pub shared: Arc<Shared>,
}

/// Largest WebSocket message made by joining queued frames (a single
/// larger frame is one message of its own).
pub const COALESCE_BYTES: usize = 64 * 1024;

/// Room for the longest frame header before the payload.
const HEADER_ROOM: usize = 10;

/// One outgoing WebSocket message being assembled.
struct Scratch {
    /// `HEADER_ROOM` bytes for the header, then the payload.
    buf: Vec<u8>,
    binary: bool,
}

thread_local! {
    /// Each thread's scratch message (writes never nest).
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            buf: Vec::new(),
            binary: false,
        })
    };
}

impl Scratch {
    fn start(&mut self) {
        self.buf.clear();
        self.buf.resize(HEADER_ROOM, 0);
        self.binary = false;
    }

    fn payload(&self) -> usize {
        self.buf.len() - HEADER_ROOM
    }

    /// Adds a frame of `len` bytes if the message has room for it (an
    /// empty message always has).
    fn add(&mut self, parts: [&[u8]; 3], binary: bool) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.payload() > 0 && self.payload() + len > COALESCE_BYTES {
            return false;
        }
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.binary |= binary;
        true
    }

    /// The complete message: header and payload.
    fn finish(&mut self) -> &[u8] {
        let opcode = if self.binary { OP_BINARY } else { OP_TEXT };
        let (header, len) = server_header(opcode, self.payload());
        let start = HEADER_ROOM - len;
        self.buf[start..HEADER_ROOM].copy_from_slice(&header[..len]);
        &self.buf[start..]
    }

    /// Gives back the memory of an unusually large message.
    fn trim(&mut self) {
        if self.buf.capacity() > 4 * COALESCE_BYTES {
            self.buf = Vec::new();
        }
    }
}

/// Frames entries from the front of `items` into one message (at least
/// one frame entry, however large); how many were taken (0 when the front
/// entry is not a frame).
fn frame_run(items: &VecDeque<Outbound>, scratch: &mut Scratch) -> usize {
    scratch.start();
    let mut taken = 0;
    for item in items {
        let Some((parts, binary)) = item.frame_parts() else {
            break;
        };
        if !scratch.add(parts, binary) {
            break;
        }
        taken += 1;
    }
    taken
}

impl Wire for TcpWire {
    fn write_batch(&self, batch: &Batch<'_>, spill: &mut BytesMut) -> io::Result<usize> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let count = batch.messages.len();
            let mut taken = 0;
            let result = loop {
                if taken == count {
                    break Ok(taken);
                }
                scratch.start();
                let mut end = taken;
                while end < count && scratch.add(batch.parts(end), batch.messages[end].binary) {
                    end += 1;
                }
                match self.try_write(scratch.finish(), spill) {
                    Ok(Some(_)) => taken = end,
                    Ok(None) => break Ok(taken),
                    Err(e) => break Err(e),
                }
                if !spill.is_empty() {
                    break Ok(taken);
                }
            };
            scratch.trim();
            result
        })
    }

    fn write_now(
        &self,
        items: &mut VecDeque<Outbound>,
        spill: &mut BytesMut,
    ) -> io::Result<WireWrite> {
        let mut done = WireWrite::default();
        let metrics = crate::metrics::get();
        while !spill.is_empty() {
            match self.stream.try_write(spill) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    spill.advance(n);
                    metrics.bytes_out.increment(n as u64);
                    self.shared.wrote();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(done),
                Err(e) => return Err(e),
            }
        }
        if spill.capacity() > 2 * COALESCE_BYTES {
            *spill = BytesMut::new();
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let result = self.write_items(items, spill, &mut scratch, &mut done);
            scratch.trim();
            result.map(|()| done)
        })
    }
}

impl TcpWire {
    /// [`Wire::write_now`] once the spill is written.
    fn write_items(
        &self,
        items: &mut VecDeque<Outbound>,
        spill: &mut BytesMut,
        scratch: &mut Scratch,
        done: &mut WireWrite,
    ) -> io::Result<()> {
        loop {
            let single = match items.front() {
                None => return Ok(()),
                Some(Outbound::SetHeartbeat(every)) => {
                    self.shared.set_heartbeat(*every);
                    items.pop_front();
                    continue;
                }
                Some(Outbound::Close) => Some(close_frame(self.shared.close_code())),
                Some(Outbound::Control(bytes)) => Some(bytes.clone()),
                Some(_) => None,
            };
            let entries = match &single {
                Some(bytes) => {
                    if self.try_write(bytes, spill)?.is_none() {
                        return Ok(());
                    }
                    1
                }
                None => {
                    let entries = frame_run(items, scratch);
                    if self.try_write(scratch.finish(), spill)?.is_none() {
                        return Ok(());
                    }
                    entries
                }
            };
            let close = matches!(items.front(), Some(Outbound::Close));
            for item in items.drain(..entries) {
                done.removed += item.size();
            }
            if close {
                done.closed = true;
                done.removed += items.iter().map(Outbound::size).sum::<usize>();
                items.clear();
                return Ok(());
            }
            if !spill.is_empty() {
                return Ok(());
            }
        }
    }

    /// One write of `bytes`; what the socket did not take is copied to
    /// `spill`. `None` when the socket took nothing (would block).
    fn try_write(&self, bytes: &[u8], spill: &mut BytesMut) -> io::Result<Option<usize>> {
        let written = match self.stream.try_write(bytes) {
            Ok(0) if !bytes.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        crate::metrics::get().bytes_out.increment(written as u64);
        self.shared.wrote();
        spill.extend_from_slice(&bytes[written..]);
        Ok(Some(written))
    }
}

/// Frames the entries of `batch` into `out` for a writer without a wire:
/// frame entries joined into messages as [`TcpWire`] does, control
/// entries as they are. Returns whether the close frame was reached.
pub fn frame_into(batch: &mut VecDeque<Outbound>, out: &mut BytesMut, shared: &Shared) -> bool {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let close = loop {
            match batch.front() {
                None => break false,
                Some(Outbound::SetHeartbeat(every)) => shared.set_heartbeat(*every),
                Some(Outbound::Control(bytes)) => out.extend_from_slice(bytes),
                Some(Outbound::Close) => {
                    out.extend_from_slice(&close_frame(shared.close_code()));
                    batch.clear();
                    break true;
                }
                Some(_) => {
                    let entries = frame_run(batch, &mut scratch);
                    out.extend_from_slice(scratch.finish());
                    batch.drain(..entries);
                    continue;
                }
            }
            batch.pop_front();
        };
        scratch.trim();
        close
    })
}
