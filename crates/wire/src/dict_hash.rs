// Shared by build.rs and src/dict.rs (via `include!`), so the table built at compile time and the
// lookup at run time hash identically. Keep it free of crate paths.

/// The two words that identify a token candidate: overlapping loads from its start and end. For
/// strings of up to 16 bytes they cover every byte, so equal words and length mean equal strings
/// and the lookup needs no byte compare.
#[inline(always)]
fn token_words(b: &[u8]) -> (u64, u64) {
    let len = b.len();
    if len >= 8 {
        let h = &b[..8];
        let t = &b[len - 8..];
        (
            u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]),
            u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]),
        )
    } else if len >= 4 {
        let h = &b[..4];
        let t = &b[len - 4..];
        (u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]])), u64::from(u32::from_le_bytes([t[0], t[1], t[2], t[3]])))
    } else if len > 0 {
        (u64::from(b[0]) | u64::from(b[len / 2]) << 8 | u64::from(b[len - 1]) << 16, 0)
    } else {
        (0, 0)
    }
}

/// Slot index bits from the words and the length.
#[inline(always)]
fn token_hash(head: u64, tail: u64, len: usize) -> u64 {
    (head ^ tail.rotate_left(29) ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}
