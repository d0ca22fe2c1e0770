//! Inputs the fuzzers found, kept as tests. Each must decode to an error or to a node that
//! re-encodes to a fixed point.

use wire::decode::{DecodeError, decode};
use wire::encode::encode;

/// Every accepted input re-encodes to bytes that decode to the same node.
fn assert_fixed_point(input: &[u8]) -> Result<(), DecodeError> {
    let node = decode(input)?;
    let bytes = encode(&node).expect("a decoded node encodes");
    assert_eq!(decode(&bytes).expect("canonical bytes decode"), node);
    Ok(())
}

#[test]
fn empty_packed_string_is_refused() {
    // decode_payload crash-f08713ee: content NIBBLE_8 (body offset 3) whose zero-length header
    // (offset 4) read as Str(""),
    // which re-encodes as raw bytes.
    let input = [0x00, 0xf8, 0x02, 0x02, 0xff, 0x00];
    assert_eq!(assert_fixed_point(&input), Err(DecodeError::InvalidPacked { offset: 4, byte: 0 }));
    assert!(matches!(
        assert_fixed_point(&[0x00, 0xf8, 0x02, 0x02, 0xfb, 0x80]),
        Err(DecodeError::InvalidPacked { .. })
    ));
}

#[test]
fn packed_strings_longer_than_encoders_write_are_refused() {
    // decode_payload crash-7a2fdd4d (found in a 10-million-run campaign): content HEX_8 with 70
    // packed bytes (140 characters) decoded as Str, but encoders pack at most 127 characters, so
    // it re-encoded raw and decoded as Bytes.
    let input = [
        0x00, 0xf8, 0x04, 0x40, 0x0f, 0x04, 0xfb, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46,
        0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46,
        0x46, 0x46, 0x46, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x02, 0x46, 0x46,
        0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x44, 0x46, 0x46, 0x46, 0x46, 0x07, 0x66,
        0x20, 0x6d, 0x6d, 0x73, 0x6f, 0x70,
    ];
    assert_eq!(assert_fixed_point(&input), Err(DecodeError::PackedTooLong { offset: 6, chars: 140 }));
    // 127 characters (64 bytes, the last one padded) is the longest packed string encoders write.
    let mut longest = vec![0x00, 0xf8, 0x02, 0x0f, 0xfb, 0xc0];
    longest.extend([0x46; 63]);
    longest.push(0x4f);
    assert!(assert_fixed_point(&longest).is_ok());
}
