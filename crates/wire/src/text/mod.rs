//! Readable text forms of a node: XML (the seed's "binary <-> XML translation") and JSON.
//!
//! Both forms type values the same way: a value that parses as a JID on a known server is a JID,
//! anything else is a string. Byte content is shown as text when that text would encode back to
//! the same bytes (valid, printable UTF-8 that is not a token, not packable and not a JID), and
//! as base64 otherwise, so text -> binary -> text and binary -> text -> binary are exact for
//! everything the canonical encoder writes.
//!
//! The XML writer is always here (a [`crate::NodeRef`]'s `Debug` output is its XML); the XML
//! parser (quick-xml) and the JSON form (serde_json) come with the `text` feature, which the
//! proxy leaves off.

#[cfg(feature = "text")]
mod json;
mod xml;

#[cfg(feature = "text")]
pub use json::{from_json, from_json_value, to_json, to_json_value};
#[cfg(feature = "text")]
pub use xml::from_xml;
pub use xml::{XmlStyle, to_xml};

use crate::dict::Dictionary;
use crate::jid::Jid;
#[cfg(feature = "text")]
use crate::node::{Content, Value};
use crate::packed;

/// Text that does not convert to a node.
#[cfg(feature = "text")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    #[error("XML: {0}")]
    Xml(String),
    #[error("JSON: {0}")]
    Json(String),
    #[error("base64 content")]
    Base64(#[from] base64::DecodeError),
    #[error("no root element")]
    NoRoot,
    #[error("more than one root element")]
    MultipleRoots,
    #[error("<{0}> mixes text and child elements; a node has one kind of content")]
    MixedContent(String),
}

/// Whether `bytes` can be shown as text in a text form and still encode back to `bytes` raw.
pub(crate) fn bytes_show_as_text(bytes: &[u8], allow_control: bool) -> Option<&str> {
    let s = std::str::from_utf8(bytes).ok()?;
    let printable = s.chars().all(|c| !c.is_control() || (allow_control && c != '\r') || c == '\n' || c == '\t');
    let encodes_raw = !s.is_empty()
        && Dictionary::V3.lookup(s).is_none()
        && packed::packing_for(bytes).is_none()
        && Jid::parse(s).is_err();
    (printable && encodes_raw).then_some(s)
}

/// Content from a text form's text: typed like attribute values.
#[cfg(feature = "text")]
pub(crate) fn content_from_text(s: &str) -> Content {
    match Value::from_text(s) {
        Value::Jid(j) => Content::Jid(j),
        Value::Str(s) => Content::Str(s),
    }
}
