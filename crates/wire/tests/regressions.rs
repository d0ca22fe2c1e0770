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
