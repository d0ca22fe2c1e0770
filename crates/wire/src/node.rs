//! The owned node: what callers build and encode. The decoder's borrowed view is
//! [`crate::decode::NodeRef`]; [`crate::decode::NodeRef::to_owned`] converts.

use crate::jid::Jid;

/// An attribute value: a string or a typed JID. The encoder writes a `Jid` in a JID shape and a
/// `Str` as a string, never re-parsing a string that contains `@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Str(String),
    Jid(Jid),
}

impl Value {
    /// The value as a string when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Jid(_) => None,
        }
    }

    /// The value as a JID when it is one.
    pub fn as_jid(&self) -> Option<&Jid> {
        match self {
            Value::Jid(j) => Some(j),
            Value::Str(_) => None,
        }
    }

    /// Text-form typing: a value that parses as a JID on a known server is a JID, anything else
    /// stays a string.
    pub fn from_text(s: &str) -> Value {
        match Jid::parse(s) {
            Ok(j) => Value::Jid(j),
            Err(_) => Value::Str(s.to_owned()),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Jid(j) => j.fmt(f),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<Jid> for Value {
    fn from(j: Jid) -> Value {
        Value::Jid(j)
    }
}

/// What a node carries after its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Content {
    /// Nothing: the node's list header counts no content slot.
    #[default]
    None,
    /// Raw bytes (`BINARY_8/20/32`), such as an `<enc>` ciphertext.
    Bytes(Vec<u8>),
    /// A string written as a token or packed (text that goes out raw decodes as `Bytes`).
    Str(String),
    /// A JID.
    Jid(Jid),
    /// Child nodes; an empty list is written as `LIST_EMPTY`.
    Nodes(Vec<Node>),
}

/// An owned stanza node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub tag: String,
    /// Attributes in wire order (the canonical encoder keeps the order it is given).
    pub attrs: Vec<(String, Value)>,
    pub content: Content,
}

/// A 1-4 byte big-endian number, as key stanzas carry registration and prekey ids.
pub fn be_number(b: &[u8]) -> Option<u32> {
    (!b.is_empty() && b.len() <= 4).then(|| b.iter().fold(0u32, |n, &x| n << 8 | u32::from(x)))
}

/// The last `len` (1-4) big-endian bytes of `n`: 3-byte prekey ids, 4-byte registration ids.
pub fn be_bytes(n: u32, len: usize) -> Vec<u8> {
    n.to_be_bytes()[4 - len.clamp(1, 4)..].to_vec()
}

impl Node {
    /// A node with no attributes and no content.
    pub fn new(tag: impl Into<String>) -> Node {
        Node { tag: tag.into(), attrs: Vec::new(), content: Content::None }
    }

    /// Adds an attribute (builder style).
    pub fn attr(mut self, key: impl Into<String>, value: impl Into<Value>) -> Node {
        self.attrs.push((key.into(), value.into()));
        self
    }

    /// Sets child nodes (builder style).
    pub fn children(mut self, children: Vec<Node>) -> Node {
        self.content = Content::Nodes(children);
        self
    }

    /// Sets byte content (builder style).
    pub fn bytes(mut self, bytes: impl Into<Vec<u8>>) -> Node {
        self.content = Content::Bytes(bytes.into());
        self
    }

    /// Sets text content (builder style). Text that is neither a token nor packable goes out as
    /// raw bytes and decodes as [`Content::Bytes`].
    pub fn text(mut self, text: impl Into<String>) -> Node {
        self.content = Content::Str(text.into());
        self
    }

    /// The value of attribute `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of attribute `key` when it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The child nodes (empty when the content is not a list).
    pub fn child_nodes(&self) -> &[Node] {
        match &self.content {
            Content::Nodes(n) => n,
            _ => &[],
        }
    }

    /// The first child with tag `tag`.
    pub fn child(&self, tag: &str) -> Option<&Node> {
        self.child_nodes().iter().find(|c| c.tag == tag)
    }
}
