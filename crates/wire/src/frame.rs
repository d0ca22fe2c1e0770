//! The frame layer: every message on a chat connection, both directions, is a 3-byte big-endian
//! length followed by that many bytes. The same framing carries handshake messages, sealed
//! transport frames upstream and plaintext stanza payloads on the proxy's edge.
//!
//! Two APIs over one rule: plain functions ([`encode_frame`], [`decode_frame`]) for sans-IO
//! callers, and (with the `codec` feature) `FrameCodec` for `tokio_util::codec::Framed`.

use bytes::BufMut;
#[cfg(feature = "codec")]
use bytes::{Buf, BytesMut};
use thiserror::Error;
#[cfg(feature = "codec")]
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 3;

/// Frame bodies must be shorter than 2^24 bytes: the largest length a 3-byte prefix can carry.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

/// A frame that cannot be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced (or the caller tried to send) a body above the configured limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame ({buffered} bytes of a partial frame buffered)")]
    Truncated { buffered: usize },
    /// The transport failed.
    #[error("i/o")]
    Io(#[from] std::io::Error),
}

/// Appends one frame (prefix and body) to `out`.
pub fn encode_frame(body: &[u8], out: &mut impl BufMut) -> Result<(), FrameError> {
    put_header(body.len(), MAX_FRAME_LEN, out)?;
    out.put_slice(body);
    Ok(())
}

/// Writes the 3-byte prefix for a body of `len` bytes.
pub fn put_header(len: usize, max: usize, out: &mut impl BufMut) -> Result<(), FrameError> {
    if len > max.min(MAX_FRAME_LEN) {
        return Err(FrameError::TooLarge { len, max: max.min(MAX_FRAME_LEN) });
    }
    out.put_uint(len as u64, HEADER_LEN);
    Ok(())
}

/// Reads the length a frame header announces, if the header is complete.
pub fn peek_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [a, b, c, ..] => Some(usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c)),
        _ => None,
    }
}

/// A frame body and the bytes after it.
pub type BodyAndRest<'a> = (&'a [u8], &'a [u8]);

/// Splits the first whole frame off `buf`.
///
/// Returns `Ok(None)` when more bytes are needed; the length is checked against `max` before
/// anything is buffered for the body, so a hostile prefix cannot make the caller allocate.
pub fn decode_frame(buf: &[u8], max: usize) -> Result<Option<BodyAndRest<'_>>, FrameError> {
    let Some(len) = peek_len(buf) else { return Ok(None) };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((&buf[HEADER_LEN..end], &buf[end..])))
}

/// `tokio_util` codec for the frame layer, with a configurable body limit.
#[cfg(feature = "codec")]
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_len: usize,
}

#[cfg(feature = "codec")]
impl FrameCodec {
    /// A codec accepting bodies up to the protocol maximum.
    pub fn new() -> Self {
        Self { max_len: MAX_FRAME_LEN }
    }

    /// A codec accepting bodies up to `max_len` (capped at the protocol maximum).
    pub fn with_max_len(max_len: usize) -> Self {
        Self { max_len: max_len.min(MAX_FRAME_LEN) }
    }

    /// The largest body this codec accepts.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(feature = "codec")]
impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "codec")]
impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(len) = peek_len(src) else {
            src.reserve(HEADER_LEN);
            return Ok(None);
        };
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        let end = HEADER_LEN + len;
        if src.len() < end {
            // Reserve only what this frame still needs: the limit above bounds it.
            src.reserve(end - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated { buffered: buf.len() }),
        }
    }
}

#[cfg(feature = "codec")]
impl<T: AsRef<[u8]>> Encoder<T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = body.as_ref();
        put_header(body.len(), self.max_len, dst)?;
        dst.extend_from_slice(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_input() {
        let mut out = Vec::new();
        encode_frame(b"hello", &mut out).unwrap();
        encode_frame(b"", &mut out).unwrap();
        assert_eq!(&out[..3], &[0, 0, 5]);
        let (first, rest) = decode_frame(&out, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(first, b"hello");
        let (second, rest) = decode_frame(rest, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(second, b"");
        assert!(rest.is_empty());
        for cut in 0..8 {
            assert!(decode_frame(&out[..cut], MAX_FRAME_LEN).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn oversize_is_rejected_before_buffering() {
        let mut codec = FrameCodec::with_max_len(10);
        let mut buf = BytesMut::from(&[0u8, 0, 11][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLarge { len: 11, max: 10 })));
        assert!(buf.capacity() < 64, "nothing reserved for a refused frame");
        let mut out = BytesMut::new();
        assert!(codec.encode([0u8; 11], &mut out).is_err());
        assert!(encode_frame(&vec![0u8; MAX_FRAME_LEN + 1], &mut Vec::new()).is_err());
    }

    #[test]
    fn largest_frame_fits_the_prefix() {
        let body = vec![7u8; MAX_FRAME_LEN];
        let mut out = BytesMut::new();
        FrameCodec::new().encode(&body, &mut out).unwrap();
        assert_eq!(&out[..3], &[0xff, 0xff, 0xff]);
        let frame = FrameCodec::new().decode(&mut out).unwrap().unwrap();
        assert_eq!(frame.len(), MAX_FRAME_LEN);
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&[0u8, 0, 4, 1, 2][..]);
        assert!(matches!(codec.decode_eof(&mut buf), Err(FrameError::Truncated { buffered: 5 })));
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }
}
