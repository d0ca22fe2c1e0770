//! The stanzas that end or refuse a chat connection, and the one table between their shape and
//! their meaning: the proxy writes them with [`Refusal::encode`], clients read any server's (the
//! proxy's or chatd's) with [`Refusal::parse`].
//!
//! | [`Refusal`] | stanza | written by |
//! |---|---|---|
//! | `Replaced` | `<stream:error><conflict type="replaced"/></stream:error>` | proxy, chatd: another login of the account |
//! | `Draining` | `<stream:error code="503" text="draining"/>` | proxy: draining, reconnect elsewhere |
//! | `BadLogin` | `<failure reason="400"/>` | proxy: the login frame is malformed |
//! | `Unauthorized` | `<failure reason="401"/>` (read also from `403` and `<stream:error code="401"/>`) | proxy, chatd |
//! | `Outdated` | `<failure reason="405"/>` | chatd: the app version is too old |
//! | `Timeout` | `<failure reason="408"/>` | proxy: no login in time |
//! | `Overloaded` | `<failure reason="429" retry_after="N"/>` | proxy: shed, retry after N seconds |
//! | `Unavailable` | `<failure reason="503"/>` | proxy: chatd unreachable |
//! | `Other(code)` | `<failure reason="code"/>` | anything else |
//! | `StreamEnd` | `<xmlstreamend/>` | an orderly end |
//!
//! A reason is read from a `<failure reason>` or a `<stream:error code>` alike; only
//! [`Refusal::Draining`] depends on the tag (and its `text`).

use bytes::Bytes;

use crate::Node;

/// Why a server ended or refused a chat connection, as its last stanza says it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    Replaced,
    Draining,
    BadLogin,
    Unauthorized,
    Outdated,
    Timeout,
    /// `retry_after_secs` is `None` when a reader finds no (numeric) `retry_after`.
    Overloaded {
        retry_after_secs: Option<u64>,
    },
    Unavailable,
    /// Any other code, as the stanza gives it (empty when it gives none).
    Other(String),
    StreamEnd,
}

impl Refusal {
    /// The numeric code the stanza carries (`""` for [`Refusal::Replaced`] and
    /// [`Refusal::StreamEnd`], which carry none).
    pub fn code(&self) -> &str {
        match self {
            Refusal::Replaced | Refusal::StreamEnd => "",
            Refusal::BadLogin => "400",
            Refusal::Unauthorized => "401",
            Refusal::Outdated => "405",
            Refusal::Timeout => "408",
            Refusal::Overloaded { .. } => "429",
            Refusal::Draining | Refusal::Unavailable => "503",
            Refusal::Other(code) => code,
        }
    }

    /// The stanza.
    pub fn to_node(&self) -> Node {
        match self {
            Refusal::Replaced => {
                Node::new("stream:error").children(vec![Node::new("conflict").attr("type", "replaced")])
            }
            Refusal::Draining => Node::new("stream:error").attr("code", "503").attr("text", "draining"),
            Refusal::StreamEnd => Node::new("xmlstreamend"),
            Refusal::Overloaded { retry_after_secs: Some(secs) } => {
                Node::new("failure").attr("reason", "429").attr("retry_after", secs.to_string())
            }
            other => Node::new("failure").attr("reason", other.code()),
        }
    }

    /// The stanza as a plaintext frame payload (flags byte + node).
    pub fn encode(&self) -> Bytes {
        // Every node above is a token tag with string attributes: encoding cannot fail, and an
        // empty payload would be refused by every reader rather than misread.
        crate::encode::encode(&self.to_node()).map(Bytes::from).unwrap_or_default()
    }

    /// What a `<failure>`, `<stream:error>` or `<xmlstreamend/>` says; `None` for any other
    /// stanza.
    pub fn parse(node: &Node) -> Option<Refusal> {
        let code = match node.tag.as_str() {
            "failure" => node.get_str("reason").unwrap_or_default(),
            "stream:error" => {
                if node.child("conflict").is_some() {
                    return Some(Refusal::Replaced);
                }
                let code = node.get_str("code").unwrap_or_default();
                if code == "503" && node.get_str("text") == Some("draining") {
                    return Some(Refusal::Draining);
                }
                code
            }
            "xmlstreamend" => return Some(Refusal::StreamEnd),
            _ => return None,
        };
        Some(match code {
            "400" => Refusal::BadLogin,
            "401" | "403" => Refusal::Unauthorized,
            "405" => Refusal::Outdated,
            "408" => Refusal::Timeout,
            "429" => Refusal::Overloaded { retry_after_secs: node.get_str("retry_after").and_then(|s| s.parse().ok()) },
            "503" => Refusal::Unavailable,
            other => Refusal::Other(other.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: &Refusal) -> Option<Refusal> {
        Refusal::parse(&crate::decode::decode(&r.encode()).unwrap())
    }

    #[test]
    fn every_written_refusal_reads_back_as_itself() {
        for r in [
            Refusal::Replaced,
            Refusal::Draining,
            Refusal::BadLogin,
            Refusal::Unauthorized,
            Refusal::Outdated,
            Refusal::Timeout,
            Refusal::Overloaded { retry_after_secs: Some(12) },
            Refusal::Overloaded { retry_after_secs: None },
            Refusal::Unavailable,
            Refusal::Other("418".into()),
            Refusal::StreamEnd,
        ] {
            assert_eq!(round_trip(&r).as_ref(), Some(&r), "{r:?}");
        }
    }

    /// The bytes clients and chatd's conformance suite already know.
    #[test]
    fn stanzas_have_their_documented_shape() {
        let n = crate::decode::decode(&Refusal::Replaced.encode()).unwrap();
        assert_eq!(n.tag, "stream:error");
        assert_eq!(n.child("conflict").unwrap().get_str("type"), Some("replaced"));
        let n = crate::decode::decode(&Refusal::Draining.encode()).unwrap();
        assert_eq!(
            (n.tag.as_str(), n.get_str("code"), n.get_str("text")),
            ("stream:error", Some("503"), Some("draining"))
        );
        let n = crate::decode::decode(&Refusal::Unavailable.encode()).unwrap();
        assert_eq!((n.tag.as_str(), n.get_str("reason"), n.attrs.len()), ("failure", Some("503"), 1));
        let n = crate::decode::decode(&Refusal::Overloaded { retry_after_secs: Some(7) }.encode()).unwrap();
        assert_eq!((n.get_str("reason"), n.get_str("retry_after")), (Some("429"), Some("7")));
        assert_eq!(
            &Refusal::Timeout.encode()[..],
            &crate::encode::encode(&Node::new("failure").attr("reason", "408")).unwrap()[..]
        );
    }

    #[test]
    fn reading_is_lenient_about_what_servers_send() {
        let read = |n: Node| Refusal::parse(&n);
        assert_eq!(read(Node::new("failure").attr("reason", "403")), Some(Refusal::Unauthorized));
        assert_eq!(read(Node::new("stream:error").attr("code", "401")), Some(Refusal::Unauthorized));
        assert_eq!(read(Node::new("stream:error").attr("code", "503")), Some(Refusal::Unavailable));
        // Any conflict child means another login took over.
        let conflict = Node::new("stream:error").children(vec![Node::new("conflict").attr("type", "other")]);
        assert_eq!(read(conflict), Some(Refusal::Replaced));
        assert_eq!(read(Node::new("failure")), Some(Refusal::Other(String::new())));
        let junk_retry = Node::new("failure").attr("reason", "429").attr("retry_after", "soon");
        assert_eq!(read(junk_retry), Some(Refusal::Overloaded { retry_after_secs: None }));
        let huge = Node::new("failure").attr("reason", "429").attr("retry_after", "99999999999");
        assert_eq!(read(huge), Some(Refusal::Overloaded { retry_after_secs: Some(99_999_999_999) }));
        assert_eq!(read(Node::new("success")), None);
        assert_eq!(read(Node::new("message").attr("id", "1")), None);
    }
}
