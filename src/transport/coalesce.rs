//! Joining queued frames into few, large writes.
//!
//! A client that fell behind has many frames queued when its writer wakes.
//! STOMP allows several frames in one WebSocket message (stompjs and
//! stomp.py read them), and a SockJS message can hold several too, so the
//! writer joins whatever is queued into chunks of up to [`COALESCE_BYTES`]:
//! one write instead of one per frame, and nothing kept buffered once
//! written. Transport-neutral: a chunk is bytes plus whether a body in it
//! was not UTF-8 (a WebSocket sends such a chunk as a binary message).

use bytes::{BufMut, Bytes, BytesMut};

use super::outbound::Outbound;

/// Largest chunk the coalescer makes by joining queued frames.
pub const COALESCE_BYTES: usize = 64 * 1024;

/// Frames joined so far, and whether any of them was binary.
#[derive(Debug, Default)]
pub struct Coalescer {
    buf: BytesMut,
    binary: bool,
}

/// A run of joined frames, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub bytes: Bytes,
    /// A frame's body in it is not UTF-8.
    pub binary: bool,
}

impl Coalescer {
    /// Adds the frame of an outbound entry (control entries add nothing);
    /// returns a full chunk to write first when the frame does not fit.
    pub fn add(&mut self, item: &Outbound) -> Option<Chunk> {
        let (parts, binary) = item.frame_parts()?;
        self.add_parts(&parts, binary)
    }

    /// Adds one frame given as consecutive parts.
    pub fn add_parts(&mut self, parts: &[&[u8]], binary: bool) -> Option<Chunk> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let flushed = if !self.buf.is_empty() && self.buf.len() + len > COALESCE_BYTES {
            self.take()
        } else {
            None
        };
        if self.buf.is_empty() {
            self.buf.reserve(len.max(256));
        }
        for part in parts {
            self.buf.put_slice(part);
        }
        self.binary |= binary;
        flushed
    }

    /// The frames joined since the last chunk, if any.
    pub fn take(&mut self) -> Option<Chunk> {
        if self.buf.is_empty() {
            return None;
        }
        Some(Chunk {
            bytes: std::mem::take(&mut self.buf).freeze(),
            binary: std::mem::take(&mut self.binary),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, binary: bool) -> Outbound {
        Outbound::Frame {
            bytes: Bytes::from(vec![b'x'; len]),
            binary,
        }
    }

    #[test]
    fn joins_until_the_limit_then_starts_a_new_chunk() {
        let mut c = Coalescer::default();
        assert_eq!(c.add(&frame(40_000, false)), None);
        assert_eq!(c.add(&frame(20_000, false)), None);
        let first = c.add(&frame(10_000, true)).expect("over the limit");
        assert_eq!((first.bytes.len(), first.binary), (60_000, false));
        let second = c.take().expect("the rest");
        assert_eq!((second.bytes.len(), second.binary), (10_000, true));
        assert_eq!(c.take(), None);
        assert_eq!(c.add(&Outbound::Close), None);
        assert_eq!(c.take(), None);
    }

    #[test]
    fn a_frame_larger_than_the_limit_is_one_chunk() {
        let mut c = Coalescer::default();
        assert_eq!(c.add(&frame(COALESCE_BYTES * 2, false)), None);
        assert_eq!(c.take().map(|c| c.bytes.len()), Some(COALESCE_BYTES * 2));
    }
}
