//! The token dictionary: the strings a binary stanza can name by one or two bytes.
//!
//! A [`Dictionary`] is a value, not a global, so a future dictionary version can sit beside v3 and
//! a connection can pick the one its header announced. [`Dictionary::V3`] is the public WhatsApp
//! Web dictionary, version 3, compiled in from `data/wa-dictionary-v3.json`.

include!(concat!(env!("OUT_DIR"), "/dictionary_v3.rs"));
include!("dict_hash.rs");

/// Tag bytes of the binary node format (the byte before each string, list or JID).
pub mod tag {
    /// Empty list, absent value, empty JID user.
    pub const LIST_EMPTY: u8 = 0;
    /// First of the four double-byte dictionary tags (236..=239).
    pub const DICTIONARY_0: u8 = 236;
    pub const DICTIONARY_3: u8 = 239;
    pub const INTEROP_JID: u8 = 245;
    pub const FB_JID: u8 = 246;
    pub const AD_JID: u8 = 247;
    pub const LIST_8: u8 = 248;
    pub const LIST_16: u8 = 249;
    pub const JID_PAIR: u8 = 250;
    pub const HEX_8: u8 = 251;
    pub const BINARY_8: u8 = 252;
    pub const BINARY_20: u8 = 253;
    pub const BINARY_32: u8 = 254;
    pub const NIBBLE_8: u8 = 255;
}

/// One slot of the encoder's lookup table: the token's identifying words, length and code
/// (1..=235 single-byte; 256 + dictionary * 256 + index double-byte). `len == 0` marks an empty slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenSlot {
    head: u64,
    tail: u64,
    len: u16,
    code: u16,
}

/// How a dictionary names a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// A single-byte token, 1..=235.
    Single(u8),
    /// A double-byte token: dictionary 0..=3 (tag byte 236 + dictionary) and index.
    Double(u8, u8),
}

/// One version of the token dictionary.
#[derive(Debug)]
pub struct Dictionary {
    version: u8,
    single: &'static [&'static str],
    double: &'static [[&'static str; 256]; 4],
    lookup: &'static [TokenSlot],
    lookup_bits: u32,
    max_token_len: usize,
}

impl Dictionary {
    /// WhatsApp Web dictionary version 3: 235 single-byte tokens and four 256-entry double-byte
    /// dictionaries, the one the `WA 6 3` connection header announces.
    pub const V3: Dictionary = Dictionary {
        version: 3,
        single: &V3_SINGLE,
        double: &V3_DOUBLE,
        lookup: &V3_LOOKUP,
        lookup_bits: V3_LOOKUP_BITS,
        max_token_len: V3_MAX_TOKEN_LEN,
    };

    /// The version byte of the connection header that selects this dictionary.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The string of single-byte token `index`; `None` for 0 and out-of-range indexes.
    #[inline]
    pub fn single(&self, index: u8) -> Option<&'static str> {
        match self.single.get(usize::from(index)) {
            Some(s) if index != 0 => Some(s),
            _ => None,
        }
    }

    /// The string of double-byte token `index` in dictionary `dict` (0..=3).
    #[inline]
    pub fn double(&self, dict: u8, index: u8) -> Option<&'static str> {
        self.double.get(usize::from(dict)).map(|d| d[usize::from(index)])
    }

    /// The string a token names.
    pub fn token_str(&self, token: Token) -> Option<&'static str> {
        match token {
            Token::Single(i) => self.single(i),
            Token::Double(d, i) => self.double(d, i),
        }
    }

    /// The token naming `s`, if the dictionary has one.
    #[inline]
    pub fn lookup(&self, s: &str) -> Option<Token> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > self.max_token_len {
            return None;
        }
        let (head, tail) = token_words(b);
        let mask = (1usize << self.lookup_bits) - 1;
        let mut slot = (token_hash(head, tail, b.len()) >> (64 - self.lookup_bits)) as usize;
        loop {
            let entry = self.lookup.get(slot)?;
            if entry.len == 0 {
                return None;
            }
            if entry.head == head && entry.tail == tail && usize::from(entry.len) == b.len() {
                let token = if entry.code < 256 {
                    Token::Single(entry.code as u8)
                } else {
                    let c = entry.code - 256;
                    Token::Double((c >> 8) as u8, c as u8)
                };
                // Words cover strings of up to 16 bytes; longer ones are compared in full.
                if b.len() <= 16 || self.token_str(token).is_some_and(|t| t.as_bytes() == b) {
                    return Some(token);
                }
            }
            slot = (slot + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_looks_up_to_its_first_code() {
        let d = &Dictionary::V3;
        for i in 1..=235u8 {
            let s = d.single(i).unwrap();
            assert_eq!(d.lookup(s), Some(Token::Single(i)), "{s}");
        }
        for dict in 0..4u8 {
            for i in 0..=255u8 {
                let s = d.double(dict, i).unwrap();
                let found = d.lookup(s).unwrap();
                assert_eq!(d.token_str(found), Some(s));
            }
        }
    }

    #[test]
    fn known_tokens_and_misses() {
        let d = &Dictionary::V3;
        assert_eq!(d.lookup("message"), Some(Token::Single(19)));
        assert_eq!(d.lookup("s.whatsapp.net"), Some(Token::Single(3)));
        assert_eq!(d.lookup("body"), Some(Token::Double(1, 117)));
        assert_eq!(d.lookup("failure"), Some(Token::Double(2, 60)));
        for miss in ["", "interop", "ib", "Message", "message ", "a-very-long-string-that-is-no-token-at-all"] {
            assert_eq!(d.lookup(miss), None, "{miss}");
        }
        assert_eq!(d.single(0), None);
        assert_eq!(d.single(236), None);
    }
}
