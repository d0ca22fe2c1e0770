// Shared by build.rs and src/dict.rs (via `include!`), so the table built at compile time and the
// lookup at run time hash identically. Keep it free of crate paths.

/// Hash of a token candidate: its first and last (up to) 8 bytes and its length, multiplied into
/// the high bits. Two unaligned loads, no loop: dictionary tokens are short.
#[inline(always)]
fn token_hash(b: &[u8]) -> u64 {
    let len = b.len();
    let head = if len >= 8 {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    } else {
        let mut w = [0u8; 8];
        w[..len].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let tail = if len > 8 {
        let t = &b[len - 8..];
        u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]])
    } else {
        0
    };
    (head ^ tail.rotate_left(23) ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xD6E8_FEB8_6659_FD93)
}
