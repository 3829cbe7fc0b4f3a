//! The STOMP 1.0/1.1/1.2 wire format: the frame type and the codec that turns
//! bytes into frames and frames into bytes (heart-beats, header escaping,
//! content-length, size limits). Pure code without I/O: the transport feeds
//! bytes in and takes bytes out.

pub mod codec;
pub mod destination;
pub mod frame;
pub mod message;

pub use codec::{
    encode_frame, encode_header, encode_rest, DecodeError, FrameLimits, Inbound, StompCodec,
};
pub use frame::{Command, Escaping, Frame, RawHeader, Version};
