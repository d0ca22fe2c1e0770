//! Stanza heads, sans-IO: what the relay needs to know about a payload without decoding it, and
//! the few stanzas the proxy writes itself.
//!
//! The relay forwards payloads byte for byte; it only looks at the root node's tag of what chatd
//! sends, to notice the end of the stream (`<stream:error>`, `<xmlstreamend/>`). [`classify`]
//! reads the flags byte, the list header and the tag item, resolving a token through the
//! dictionary: a handful of byte reads, no allocation. Of a zlib payload (flags `0x02`, which no
//! reference server sends) only the first [`HEAD_PREFIX`] bytes are inflated, so a compression
//! bomb from chatd costs the relay a few hundred bytes, not the 16 MiB it would inflate to.

use bytes::Bytes;
use wire::Node;
use wire::dict::{Dictionary, tag};
use wire::encode::Encoder;

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

fn encode(node: &Node) -> Bytes {
    let mut out = Vec::with_capacity(32);
    // These nodes are fixed and valid, so encoding cannot fail; an empty payload would be refused
    // by every reader rather than misread.
    match Encoder::default().encode_payload(node, &mut out) {
        Ok(()) => Bytes::from(out),
        Err(_) => Bytes::new(),
    }
}

/// `<stream:error><conflict type="replaced"/></stream:error>`: what chatd itself sends a
/// replaced connection; the proxy sends it to a client whose session a newer login replaced.
pub fn replaced() -> Bytes {
    encode(&Node::new("stream:error").children(vec![Node::new("conflict").attr("type", "replaced")]))
}

/// `<stream:error code="503" text="draining"/>`: the proxy is draining; reconnect (elsewhere).
/// Code 503 is what reference clients treat as "service unavailable, reconnect".
pub fn draining() -> Bytes {
    encode(&Node::new("stream:error").attr("code", "503").attr("text", "draining"))
}

/// `<failure reason="{reason}"/>`: the proxy's own login refusal (e.g. `"503"` when chatd is
/// unreachable), in chatd's shape.
pub fn failure(reason: &str) -> Bytes {
    encode(&Node::new("failure").attr("reason", reason))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn own_stanzas_decode_to_their_shape() {
        let n = wire::decode::decode(&replaced()).unwrap();
        assert_eq!(n.tag, "stream:error");
        assert_eq!(n.child("conflict").unwrap().get_str("type"), Some("replaced"));
        let n = wire::decode::decode(&draining()).unwrap();
        assert_eq!((n.tag.as_str(), n.get_str("code")), ("stream:error", Some("503")));
        let n = wire::decode::decode(&failure("503")).unwrap();
        assert_eq!((n.tag.as_str(), n.get_str("reason")), ("failure", Some("503")));
        assert_eq!(classify(&replaced()), StanzaKind::StreamError);
    }
}
