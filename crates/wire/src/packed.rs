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

/// Nibble code of a character, if it has one.
#[inline(always)]
fn nibble_code(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'-' => Some(10),
        b'.' => Some(11),
        _ => None,
    }
}

#[inline(always)]
fn hex_code(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const NIBBLE_CHARS: &[u8; 16] = b"0123456789-.\0\0\0\0";
const HEX_CHARS: &[u8; 16] = b"0123456789ABCDEF";

/// Which packing, if any, the canonical encoder uses for `s`: nibble first, then hex.
#[inline]
pub(crate) fn packing_for(s: &[u8]) -> Option<Packing> {
    if s.is_empty() || s.len() > PACKED_MAX_CHARS {
        return None;
    }
    // One pass: track whether every byte so far fits each alphabet.
    let (mut nibble, mut hex) = (true, true);
    for &c in s {
        let digit = c.is_ascii_digit();
        nibble &= digit || c == b'-' || c == b'.';
        hex &= digit || (b'A'..=b'F').contains(&c);
        if !(nibble || hex) {
            return None;
        }
    }
    Some(if nibble { Packing::Nibble } else { Packing::Hex })
}

/// Appends the header byte and packed bytes of `s`, which `packing_for` accepted.
#[inline]
pub(crate) fn pack(s: &[u8], packing: Packing, out: &mut Vec<u8>) {
    let code = match packing {
        Packing::Nibble => nibble_code,
        Packing::Hex => hex_code,
    };
    let packed_len = s.len().div_ceil(2);
    out.reserve(packed_len + 1);
    out.push(packed_len as u8 | if s.len() % 2 == 1 { 0x80 } else { 0 });
    let mut pairs = s.chunks_exact(2);
    for pair in &mut pairs {
        let hi = code(pair[0]).unwrap_or(0);
        let lo = code(pair[1]).unwrap_or(0);
        out.push(hi << 4 | lo);
    }
    if let [last] = pairs.remainder() {
        out.push(code(*last).unwrap_or(0) << 4 | 0x0F);
    }
}

/// Error from unpacking: the offending byte value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadNibble(pub u8);

/// Unpacks `bytes` (after the header byte) into `out`. `odd` drops the final padding nibble.
#[inline]
pub(crate) fn unpack(bytes: &[u8], odd: bool, packing: Packing, out: &mut Vec<u8>) -> Result<(), BadNibble> {
    let table = match packing {
        Packing::Nibble => NIBBLE_CHARS,
        Packing::Hex => HEX_CHARS,
    };
    out.reserve(bytes.len() * 2);
    let last = bytes.len().wrapping_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        let hi = table[usize::from(b >> 4)];
        if hi == 0 {
            return Err(BadNibble(b));
        }
        out.push(hi);
        let lo_code = b & 0x0F;
        if odd && i == last {
            // The padding nibble must be 0xF: anything else is a different, non-canonical string.
            if lo_code != 0x0F {
                return Err(BadNibble(b));
            }
            break;
        }
        let lo = table[usize::from(lo_code)];
        if lo == 0 {
            return Err(BadNibble(b));
        }
        out.push(lo);
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
