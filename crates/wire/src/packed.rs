//! Nibble (`0-9 - .`) and hex (`0-9 A-F`) packing: two characters per byte, first character in
//! the high nibble, an odd length padded with 0xF and flagged by bit 7 of the header byte.

/// Encoders pack strings of at most this many characters (64 bytes); decoders accept a header
/// announcing up to 127 packed bytes.
pub(crate) const PACKED_MAX_CHARS: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packing {
    Nibble,
    Hex,
}

/// Per-byte codes: high nibble = nibble code (0xF = none), low nibble = hex code (0xF = none, but
/// 'F' itself is hex 15, so hex validity is read from `HEX_OK`).
const fn code_table() -> [u8; 256] {
    let mut t = [0xFFu8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let nib = match b {
            b'0'..=b'9' => b - b'0',
            b'-' => 10,
            b'.' => 11,
            _ => 0xF,
        };
        let hex = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'F' => b - b'A' + 10,
            _ => 0xF,
        };
        t[c] = nib << 4 | hex;
        c += 1;
    }
    t
}

/// Bit 0: the byte is nibble-packable; bit 1: hex-packable.
const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let nibble = b.is_ascii_digit() || b == b'-' || b == b'.';
        let hex = b.is_ascii_digit() || (b >= b'A' && b <= b'F');
        t[c] = nibble as u8 | (hex as u8) << 1;
        c += 1;
    }
    t
}

static CODES: [u8; 256] = code_table();
static CLASS: [u8; 256] = class_table();

/// For each packed byte, its two characters; 0 marks an invalid nibble.
const fn pair_table(chars: &[u8; 16]) -> [[u8; 2]; 256] {
    let mut t = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [chars[b >> 4], chars[b & 0xF]];
        b += 1;
    }
    t
}

static NIBBLE_PAIRS: [[u8; 2]; 256] = pair_table(b"0123456789-.\0\0\0\0");
static HEX_PAIRS: [[u8; 2]; 256] = pair_table(b"0123456789ABCDEF");

/// Which packing, if any, the canonical encoder uses for `s`: nibble first, then hex.
#[inline]
pub(crate) fn packing_for(s: &[u8]) -> Option<Packing> {
    if s.is_empty() || s.len() > PACKED_MAX_CHARS {
        return None;
    }
    let class = s.iter().fold(3u8, |acc, &c| acc & CLASS[usize::from(c)]);
    match class {
        0 => None,
        c if c & 1 != 0 => Some(Packing::Nibble),
        _ => Some(Packing::Hex),
    }
}

/// Appends the header byte and packed bytes of `s`, which `packing_for` accepted.
#[inline]
pub(crate) fn pack(s: &[u8], packing: Packing, out: &mut Vec<u8>) {
    let code = |c: u8| {
        let both = CODES[usize::from(c)];
        match packing {
            Packing::Nibble => both >> 4,
            Packing::Hex => both & 0x0F,
        }
    };
    let packed_len = s.len().div_ceil(2);
    out.reserve(packed_len + 1);
    out.push(packed_len as u8 | if s.len() % 2 == 1 { 0x80 } else { 0 });
    let mut pairs = s.chunks_exact(2);
    for pair in &mut pairs {
        out.push(code(pair[0]) << 4 | code(pair[1]));
    }
    if let [last] = pairs.remainder() {
        out.push(code(*last) << 4 | 0x0F);
    }
}

/// Error from unpacking: the offending byte value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadNibble(pub u8);

/// Unpacks `bytes` (after the header byte) into `out`. `odd` drops the final padding nibble.
#[inline]
pub(crate) fn unpack(bytes: &[u8], odd: bool, packing: Packing, out: &mut Vec<u8>) -> Result<(), BadNibble> {
    let table = match packing {
        Packing::Nibble => &NIBBLE_PAIRS,
        Packing::Hex => &HEX_PAIRS,
    };
    let (full, last) = match (odd, bytes.split_last()) {
        (true, Some((&last, full))) => (full, Some(last)),
        _ => (bytes, None),
    };
    out.reserve(bytes.len() * 2);
    for &b in full {
        let pair = table[usize::from(b)];
        if pair[0] == 0 || pair[1] == 0 {
            return Err(BadNibble(b));
        }
        out.extend_from_slice(&pair);
    }
    if let Some(b) = last {
        // The padding nibble must be 0xF: anything else is a different, non-canonical string.
        let hi = table[usize::from(b)][0];
        if hi == 0 || b & 0x0F != 0x0F {
            return Err(BadNibble(b));
        }
        out.push(hi);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(s: &str) -> Vec<u8> {
        let p = packing_for(s.as_bytes()).unwrap();
        let mut out = Vec::new();
        pack(s.as_bytes(), p, &mut out);
        let mut back = Vec::new();
        unpack(&out[1..], out[0] & 0x80 != 0, p, &mut back).unwrap();
        assert_eq!(back, s.as_bytes());
        out
    }

    #[test]
    fn seed_values_pack_as_the_reference_clients_do() {
        assert_eq!(round("123456"), [0x03, 0x12, 0x34, 0x56]);
        assert_eq!(round("14155551001"), [0x86, 0x14, 0x15, 0x55, 0x51, 0x00, 0x1F]);
        assert_eq!(round("3EB0A1"), [0x03, 0x3E, 0xB0, 0xA1]);
        assert_eq!(round("1.5-2"), [0x83, 0x1B, 0x5A, 0x2F]);
    }

    #[test]
    fn choice_of_packing() {
        assert_eq!(packing_for(b"0123"), Some(Packing::Nibble));
        assert_eq!(packing_for(b"ABC1"), Some(Packing::Hex));
        assert_eq!(packing_for(b"abc"), None, "lowercase hex goes out raw");
        assert_eq!(packing_for(b"A-1"), None);
        assert_eq!(packing_for(b"-A1"), None);
        assert_eq!(packing_for(b""), None);
        assert_eq!(packing_for(&[b'1'; 127]), Some(Packing::Nibble));
        assert_eq!(packing_for(&[b'1'; 128]), None);
    }

    #[test]
    fn invalid_nibbles_are_errors() {
        let mut out = Vec::new();
        assert_eq!(unpack(&[0xC0], false, Packing::Nibble, &mut out), Err(BadNibble(0xC0)));
        assert_eq!(unpack(&[0x1E], true, Packing::Nibble, &mut out), Err(BadNibble(0x1E)), "bad padding");
        assert_eq!(unpack(&[0x1F], false, Packing::Nibble, &mut out), Err(BadNibble(0x1F)), "pad mid-string");
    }
}
