//! Stanza heads, sans-IO: what the relay needs to know about a payload without decoding it. (The
//! stanzas the proxy writes itself are `wire::refusal`'s.)
//!
//! The relay forwards payloads byte for byte; it only looks at the root node's tag of what chatd
//! sends, to notice the end of the stream (`<stream:error>`, `<xmlstreamend/>`). [`classify`]
//! reads the flags byte, the list header and the tag item, resolving a token through the
//! dictionary: a handful of byte reads, no allocation. Of a zlib payload (flags `0x02`, which no
//! reference server sends) only the first [`HEAD_PREFIX`] bytes are inflated, so a compression
//! bomb from chatd costs the relay a few hundred bytes, not the 16 MiB it would inflate to.

use wire::dict::{Dictionary, tag};

/// What a stanza is, as far as the session cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    /// `<success>`: chatd accepted the login.
    Success,
    /// `<failure>`: chatd refused the login.
    Failure,
    /// `<stream:error>`: chatd ends the stream (conflict, device removed, ...).
    StreamError,
    /// `<xmlstreamend/>`: an orderly end of stream.
    StreamEnd,
    /// Anything else.
    Other,
    /// Not a stanza (bad flags, no list header, unknown token).
    Undecodable,
}

impl StanzaKind {
    /// `true` for the stanzas after which chatd closes the connection.
    pub fn ends_stream(self) -> bool {
        matches!(self, StanzaKind::StreamError | StanzaKind::StreamEnd)
    }

    fn of_tag(tag: &str) -> StanzaKind {
        match tag {
            "success" => StanzaKind::Success,
            "failure" => StanzaKind::Failure,
            "stream:error" => StanzaKind::StreamError,
            "xmlstreamend" => StanzaKind::StreamEnd,
            _ => StanzaKind::Other,
        }
    }
}

/// Inflated bytes enough for a root tag the session cares about (list header plus a token or a
/// short raw string).
pub const HEAD_PREFIX: usize = 256;

/// Classifies a plaintext stanza payload (flags byte + node) by its root tag.
pub fn classify(payload: &[u8]) -> StanzaKind {
    match payload.first() {
        Some(0) => head_tag(&payload[1..], &Dictionary::V3).map_or(StanzaKind::Undecodable, StanzaKind::of_tag),
        Some(_) => {
            let mut scratch = Vec::new();
            match wire::payload::body_prefix(payload, &mut scratch, HEAD_PREFIX) {
                Ok(head) => head_tag(head, &Dictionary::V3).map_or(StanzaKind::Undecodable, StanzaKind::of_tag),
                Err(_) => StanzaKind::Undecodable,
            }
        }
        None => StanzaKind::Undecodable,
    }
}

/// The root tag of an uncompressed node body, read without decoding the rest.
pub fn head_tag<'a>(body: &'a [u8], dict: &Dictionary) -> Option<&'a str> {
    let (count, rest) = match body {
        [tag::LIST_8, n, rest @ ..] => (usize::from(*n), rest),
        [tag::LIST_16, hi, lo, rest @ ..] => (usize::from(*hi) << 8 | usize::from(*lo), rest),
        _ => return None,
    };
    if count == 0 {
        return None;
    }
    match rest {
        [t @ 1..=235, ..] => dict.single(*t),
        [t @ tag::DICTIONARY_0..=tag::DICTIONARY_3, i, ..] => dict.double(t - tag::DICTIONARY_0, *i),
        [tag::BINARY_8, n, raw @ ..] => raw.get(..usize::from(*n)).and_then(|s| std::str::from_utf8(s).ok()),
        [tag::BINARY_20, a, b, c, raw @ ..] => {
            let n = usize::from(*a & 0x0f) << 16 | usize::from(*b) << 8 | usize::from(*c);
            raw.get(..n).and_then(|s| std::str::from_utf8(s).ok())
        }
        // A packed (numeric) or 32-bit-length tag names no stanza the session cares about.
        [tag::NIBBLE_8 | tag::HEX_8 | tag::BINARY_32, ..] => Some(""),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Node;

    fn payload(node: &Node) -> Vec<u8> {
        wire::encode::encode(node).unwrap()
    }

    #[test]
    fn classifies_by_root_tag() {
        let cases = [
            (Node::new("success").attr("t", "1"), StanzaKind::Success),
            (Node::new("failure").attr("reason", "401"), StanzaKind::Failure),
            (Node::new("stream:error").children(vec![Node::new("conflict")]), StanzaKind::StreamError),
            (Node::new("xmlstreamend"), StanzaKind::StreamEnd),
            (Node::new("message").attr("id", "1"), StanzaKind::Other),
            (Node::new("not-a-token-tag"), StanzaKind::Other),
        ];
        for (node, kind) in cases {
            assert_eq!(classify(&payload(&node)), kind, "{node:?}");
            let zipped = wire::Encoder::new(&Dictionary::V3, wire::EncodeOptions { compress: true });
            let mut z = Vec::new();
            zipped.encode_payload(&node, &mut z).unwrap();
            assert_eq!(classify(&z), kind, "zlib {node:?}");
        }
        assert!(StanzaKind::StreamError.ends_stream() && StanzaKind::StreamEnd.ends_stream());
        assert!(!StanzaKind::Other.ends_stream());
    }

    #[test]
    fn a_compression_bomb_is_classified_from_its_head() {
        // 16 MiB of content behind a stream:error head, deflated to about 16 KB: only the head
        // is inflated.
        let bomb = Node::new("stream:error").bytes(vec![0; (1 << 24) - 64]);
        let mut z = Vec::new();
        wire::Encoder::new(&Dictionary::V3, wire::EncodeOptions { compress: true })
            .encode_payload(&bomb, &mut z)
            .unwrap();
        assert!(z.len() < 64 * 1024, "{}", z.len());
        assert_eq!(classify(&z), StanzaKind::StreamError);
    }

    #[test]
    fn garbage_is_undecodable_and_never_panics() {
        for bad in [&[][..], &[0], &[0, 248], &[0, 248, 0], &[0, 7, 1], &[9, 248, 1, 1], &[0, 252, 5, b'a']] {
            assert_eq!(classify(bad), StanzaKind::Undecodable, "{bad:?}");
        }
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = classify(&bytes);
        }
    }

    /// The proxy's own refusals (shapes tested in `wire::refusal`) read as the kinds they are.
    #[test]
    fn own_stanzas_classify_as_their_kind() {
        use wire::refusal::Refusal;
        assert_eq!(classify(&Refusal::Replaced.encode()), StanzaKind::StreamError);
        assert_eq!(classify(&Refusal::Draining.encode()), StanzaKind::StreamError);
        assert_eq!(classify(&Refusal::Unavailable.encode()), StanzaKind::Failure);
    }
}
