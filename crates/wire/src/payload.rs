//! The stanza payload: one flags byte, then the binary node, zlib-compressed when flag 0x02 is set.

use std::io::Read as _;

use thiserror::Error;

use crate::frame::MAX_FRAME_LEN;

/// Flag bit: the body is zlib-compressed (RFC 1950).
pub const FLAG_ZLIB: u8 = 0x02;
/// Flag bit: "segmented", which no current client sends; refused.
pub const FLAG_SEGMENTED: u8 = 0x01;

/// A payload must fit in one frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN;

/// A payload whose body cannot be had.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    #[error("empty payload: no flags byte")]
    Empty,
    #[error("unsupported payload flags 0x{0:02x} (only 0x00 and 0x02 = zlib are defined)")]
    UnsupportedFlags(u8),
    #[error("zlib body does not inflate: {0}")]
    Inflate(String),
    #[error("zlib body inflates past the {max}-byte limit")]
    InflatedTooLarge { max: usize },
}

/// The node bytes of `payload`: borrowed when uncompressed, else inflated into `scratch` (cleared
/// first) up to `max_inflated` bytes, so a compression bomb costs at most that much memory.
pub fn body<'a>(payload: &'a [u8], scratch: &'a mut Vec<u8>, max_inflated: usize) -> Result<&'a [u8], PayloadError> {
    let (&flags, rest) = payload.split_first().ok_or(PayloadError::Empty)?;
    match flags {
        0 => Ok(rest),
        FLAG_ZLIB => {
            scratch.clear();
            let limit = u64::try_from(max_inflated).unwrap_or(u64::MAX).saturating_add(1);
            flate2::read::ZlibDecoder::new(rest)
                .take(limit)
                .read_to_end(scratch)
                .map_err(|e| PayloadError::Inflate(e.to_string()))?;
            if scratch.len() > max_inflated {
                return Err(PayloadError::InflatedTooLarge { max: max_inflated });
            }
            Ok(scratch)
        }
        other => Err(PayloadError::UnsupportedFlags(other)),
    }
}

/// The first `n` bytes (or fewer) of `payload`'s body, for reading a stanza's head without
/// inflating the rest: a zlib body costs at most `n` bytes of output and the input it takes to
/// produce them, however far it would inflate.
pub fn body_prefix<'a>(payload: &'a [u8], scratch: &'a mut Vec<u8>, n: usize) -> Result<&'a [u8], PayloadError> {
    let (&flags, rest) = payload.split_first().ok_or(PayloadError::Empty)?;
    match flags {
        0 => Ok(&rest[..rest.len().min(n)]),
        FLAG_ZLIB => {
            scratch.clear();
            let limit = u64::try_from(n).unwrap_or(u64::MAX);
            flate2::read::ZlibDecoder::new(rest)
                .take(limit)
                .read_to_end(scratch)
                .map_err(|e| PayloadError::Inflate(e.to_string()))?;
            Ok(scratch)
        }
        other => Err(PayloadError::UnsupportedFlags(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(vec![FLAG_ZLIB], flate2::Compression::best());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn plain_and_compressed_bodies() {
        let mut scratch = Vec::new();
        assert_eq!(body(&[0, 1, 2], &mut scratch, 100).unwrap(), &[1, 2]);
        assert_eq!(body(&zlib(b"hello"), &mut scratch, 100).unwrap(), b"hello");
    }

    #[test]
    fn bad_payloads() {
        let mut scratch = Vec::new();
        assert_eq!(body(&[], &mut scratch, 100), Err(PayloadError::Empty));
        assert_eq!(body(&[1, 0], &mut scratch, 100), Err(PayloadError::UnsupportedFlags(1)));
        assert_eq!(body(&[0x80], &mut scratch, 100), Err(PayloadError::UnsupportedFlags(0x80)));
        assert!(matches!(body(&[2, 1, 2, 3], &mut scratch, 100), Err(PayloadError::Inflate(_))));
    }

    #[test]
    fn a_prefix_inflates_no_further_than_asked() {
        let mut scratch = Vec::new();
        assert_eq!(body_prefix(&[0, 1, 2, 3], &mut scratch, 2).unwrap(), &[1, 2]);
        assert_eq!(body_prefix(&zlib(b"hello"), &mut scratch, 3).unwrap(), b"hel");
        let bomb = zlib(&vec![7u8; 1 << 24]);
        assert_eq!(body_prefix(&bomb, &mut scratch, 256).unwrap(), &[7u8; 256][..]);
        assert!(scratch.capacity() < 4096, "stopped at the prefix: {}", scratch.capacity());
        assert!(matches!(body_prefix(&[2, 1, 2, 3], &mut scratch, 8), Err(PayloadError::Inflate(_))));
    }

    #[test]
    fn compression_bomb_is_capped() {
        let bomb = zlib(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 2048);
        let mut scratch = Vec::new();
        assert_eq!(body(&bomb, &mut scratch, 4096), Err(PayloadError::InflatedTooLarge { max: 4096 }));
        assert!(scratch.capacity() < 64 * 1024, "inflation stopped near the limit");
    }
}
