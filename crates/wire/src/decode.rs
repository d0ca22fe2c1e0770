//! The decoder: binary node bytes to a borrowed tree.
//!
//! A [`Decoder`] owns reusable arenas (nodes, attributes, unpacked text), so decoding a stream of
//! stanzas allocates nothing once the arenas have grown to the working size. The result is a
//! [`NodeRef`] that borrows the arenas and the input: binary content such as an `<enc>` payload is
//! a slice of the input, never a copy. [`NodeRef::to_owned`] gives an owned [`Node`].
//!
//! Every length and count is checked against the bytes that remain before anything is reserved
//! for it, nesting is bounded, the node count is bounded, and bytes left after the root node are
//! an error. Malformed input is a [`DecodeError`] carrying the byte offset; nothing panics.

use std::fmt;

use thiserror::Error;

use crate::dict::{Dictionary, tag};
use crate::encode::DEFAULT_MAX_DEPTH;
use crate::jid::{Jid, Server, write_jid};
use crate::node::{Content, Node, Value};
use crate::packed::{self, Packing};
use crate::payload::{self, MAX_PAYLOAD_LEN, PayloadError};

/// Bounds on what one decode may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of nodes (the root is depth 0). Default 64: real stanzas nest under 10.
    pub max_depth: usize,
    /// Most nodes in one stanza. Default 500,000: a prekey upload of 812 keys is ~2,500.
    pub max_nodes: usize,
    /// Most bytes a zlib body may inflate to. Default: the frame limit.
    pub max_inflated: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: DEFAULT_MAX_DEPTH, max_nodes: 500_000, max_inflated: MAX_PAYLOAD_LEN }
    }
}

/// Why bytes are not a stanza.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("input ends at byte {offset}; {needed} more bytes were announced")]
    UnexpectedEnd { offset: usize, needed: usize },
    #[error("{remaining} bytes left over after the node, from byte {offset}")]
    TrailingBytes { offset: usize, remaining: usize },
    #[error("byte {offset}: 0x{byte:02x} is not a list header, so no node starts here")]
    InvalidNodeHeader { offset: usize, byte: u8 },
    #[error("byte {offset}: a node needs at least a tag, but its list is empty")]
    EmptyNode { offset: usize },
    #[error("byte {offset}: tag byte 0x{byte:02x} is not assigned")]
    UnknownTag { offset: usize, byte: u8 },
    #[error("byte {offset}: no token {index} in dictionary {dict}")]
    UnknownToken { offset: usize, dict: &'static str, index: u8 },
    #[error("byte {offset}: a {found} where a string is required ({context})")]
    ExpectedString { offset: usize, found: &'static str, context: &'static str },
    #[error("byte {offset}: packed byte 0x{byte:02x} holds an invalid nibble or padding")]
    InvalidPacked { offset: usize, byte: u8 },
    #[error("byte {offset}: string is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error("byte {offset}: JID server {name:?} is not a known WhatsApp server")]
    UnknownServer { offset: usize, name: String },
    #[error("byte {offset}: {count} {what} announced but only {remaining} bytes remain")]
    CountExceedsInput { offset: usize, what: &'static str, count: usize, remaining: usize },
    #[error("nodes nest deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("more than {max} nodes in one stanza")]
    TooManyNodes { max: usize },
}

/// Where a decoded string lives.
#[derive(Debug, Clone, Copy)]
enum StrLoc {
    Token(&'static str),
    /// Raw UTF-8 in the input (validated when decoded).
    Input { start: u32, len: u32 },
    /// Unpacked nibble/hex text in the arena.
    Text { start: u32, len: u32 },
}

#[derive(Debug, Clone, Copy)]
struct RawJid {
    user: StrLoc,
    server: Server,
    agent: u8,
    device: u16,
    integrator: u16,
}

#[derive(Debug, Clone, Copy)]
enum RawValue {
    Str(StrLoc),
    Jid(RawJid),
}

#[derive(Debug, Clone, Copy)]
struct RawAttr {
    key: StrLoc,
    value: RawValue,
}

#[derive(Debug, Clone, Copy)]
enum RawContent {
    None,
    Bytes { start: u32, len: u32 },
    Value(RawValue),
    Nodes { first: u32, count: u32 },
}

#[derive(Debug, Clone, Copy)]
struct RawNode {
    tag: StrLoc,
    attrs_start: u32,
    attrs_len: u32,
    content: RawContent,
}

const PLACEHOLDER: RawNode =
    RawNode { tag: StrLoc::Token(""), attrs_start: 0, attrs_len: 0, content: RawContent::None };

#[derive(Debug, Default)]
struct Arena {
    nodes: Vec<RawNode>,
    attrs: Vec<RawAttr>,
    text: Vec<u8>,
}

/// Decodes stanzas with one dictionary, reusing its buffers from one stanza to the next.
#[derive(Debug)]
pub struct Decoder<'d> {
    dict: &'d Dictionary,
    limits: Limits,
    arena: Arena,
    inflated: Vec<u8>,
}

impl Default for Decoder<'static> {
    fn default() -> Self {
        Decoder::new(&Dictionary::V3, Limits::default())
    }
}

impl<'d> Decoder<'d> {
    pub fn new(dict: &'d Dictionary, limits: Limits) -> Self {
        Decoder { dict, limits, arena: Arena::default(), inflated: Vec::new() }
    }

    /// Decodes a stanza payload: flags byte, then the node (inflated first when flagged zlib).
    pub fn decode_payload<'a>(&'a mut self, payload: &'a [u8]) -> Result<NodeRef<'a>, DecodeError> {
        let body = payload::body(payload, &mut self.inflated, self.limits.max_inflated)?;
        decode_into(&mut self.arena, self.dict, &self.limits, body)
    }

    /// Decodes a bare binary node (no flags byte).
    pub fn decode_node<'a>(&'a mut self, body: &'a [u8]) -> Result<NodeRef<'a>, DecodeError> {
        decode_into(&mut self.arena, self.dict, &self.limits, body)
    }

    /// Gives back the arenas' memory, for a connection going idle.
    pub fn release_buffers(&mut self) {
        self.arena = Arena::default();
        self.inflated = Vec::new();
    }
}

/// Decodes a payload into an owned node with dictionary v3 and default limits.
pub fn decode(payload: &[u8]) -> Result<Node, DecodeError> {
    Decoder::default().decode_payload(payload).map(|n| n.to_owned())
}

fn decode_into<'a>(
    arena: &'a mut Arena,
    dict: &Dictionary,
    limits: &Limits,
    input: &'a [u8],
) -> Result<NodeRef<'a>, DecodeError> {
    arena.nodes.clear();
    arena.attrs.clear();
    arena.text.clear();
    arena.nodes.push(PLACEHOLDER);
    let mut r = Reader { input, pos: 0, dict, limits, arena };
    r.node(0, 0)?;
    if r.pos != input.len() {
        return Err(DecodeError::TrailingBytes { offset: r.pos, remaining: input.len() - r.pos });
    }
    Ok(NodeRef { arena, input, idx: 0 })
}

struct Reader<'i, 'r> {
    input: &'i [u8],
    pos: usize,
    dict: &'r Dictionary,
    limits: &'r Limits,
    arena: &'r mut Arena,
}

/// Which part of a node a string is read for, so errors can say.
#[derive(Clone, Copy)]
enum Ctx {
    Tag,
    Key,
    JidUser,
    JidServer,
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::Tag => "node tag",
            Ctx::Key => "attribute key",
            Ctx::JidUser => "JID user",
            Ctx::JidServer => "JID server",
        }
    }
}

fn tag_name(b: u8) -> &'static str {
    match b {
        tag::LIST_EMPTY => "empty list",
        tag::LIST_8 | tag::LIST_16 => "list",
        tag::JID_PAIR | tag::AD_JID | tag::FB_JID | tag::INTEROP_JID => "JID",
        _ => "non-string",
    }
}

impl Reader<'_, '_> {
    #[inline]
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.input.get(self.pos).ok_or(DecodeError::UnexpectedEnd { offset: self.pos, needed: 1 })?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<usize, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd { offset: self.pos, needed: n - self.remaining() });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    #[inline]
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let at = self.take(2)?;
        Ok(u16::from_be_bytes([self.input[at], self.input[at + 1]]))
    }

    fn node(&mut self, slot: usize, depth: usize) -> Result<(), DecodeError> {
        if depth >= self.limits.max_depth {
            return Err(DecodeError::TooDeep { max: self.limits.max_depth });
        }
        let at = self.pos;
        let n = match self.byte()? {
            tag::LIST_8 => usize::from(self.byte()?),
            tag::LIST_16 => usize::from(self.u16()?),
            byte => return Err(DecodeError::InvalidNodeHeader { offset: at, byte }),
        };
        if n == 0 {
            return Err(DecodeError::EmptyNode { offset: at });
        }
        let tag = self.string(Ctx::Tag)?;
        let n_attrs = (n - 1) / 2;
        // Each attribute takes at least two bytes: checked before the arena grows for them.
        if n_attrs * 2 > self.remaining() {
            return Err(DecodeError::CountExceedsInput {
                offset: at,
                what: "attributes",
                count: n_attrs,
                remaining: self.remaining(),
            });
        }
        let attrs_start = self.arena.attrs.len();
        for _ in 0..n_attrs {
            let key = self.string(Ctx::Key)?;
            let value = self.value()?;
            self.arena.attrs.push(RawAttr { key, value });
        }
        let content = if n % 2 == 0 { self.content(depth)? } else { RawContent::None };
        self.arena.nodes[slot] =
            RawNode { tag, attrs_start: attrs_start as u32, attrs_len: n_attrs as u32, content };
        Ok(())
    }

    fn content(&mut self, depth: usize) -> Result<RawContent, DecodeError> {
        let at = self.pos;
        let b = self.byte()?;
        let count = match b {
            tag::LIST_EMPTY => 0,
            tag::LIST_8 => usize::from(self.byte()?),
            tag::LIST_16 => usize::from(self.u16()?),
            tag::BINARY_8 | tag::BINARY_20 | tag::BINARY_32 => {
                let (start, len) = self.binary(b)?;
                return Ok(RawContent::Bytes { start: start as u32, len: len as u32 });
            }
            _ => {
                self.pos = at;
                return Ok(RawContent::Value(self.value()?));
            }
        };
        // A child is at least three bytes (list header and tag).
        if count * 3 > self.remaining() {
            return Err(DecodeError::CountExceedsInput {
                offset: at,
                what: "child nodes",
                count,
                remaining: self.remaining(),
            });
        }
        let first = self.arena.nodes.len();
        if first + count > self.limits.max_nodes {
            return Err(DecodeError::TooManyNodes { max: self.limits.max_nodes });
        }
        // Siblings get adjacent slots, filled as each child is read; grandchildren go after them.
        self.arena.nodes.resize(first + count, PLACEHOLDER);
        for i in 0..count {
            self.node(first + i, depth + 1)?;
        }
        Ok(RawContent::Nodes { first: first as u32, count: count as u32 })
    }

    /// Reads the length of a `BINARY_*` item whose tag byte was `b`; returns (start, len).
    #[inline]
    fn binary(&mut self, b: u8) -> Result<(usize, usize), DecodeError> {
        let len = match b {
            tag::BINARY_8 => usize::from(self.byte()?),
            tag::BINARY_20 => {
                let at = self.take(3)?;
                let l = &self.input[at..at + 3];
                usize::from(l[0] & 0x0F) << 16 | usize::from(l[1]) << 8 | usize::from(l[2])
            }
            _ => {
                let at = self.take(4)?;
                let l = &self.input[at..at + 4];
                u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize
            }
        };
        Ok((self.take(len)?, len))
    }

    /// A string in a position where JIDs and lists are not allowed.
    fn string(&mut self, ctx: Ctx) -> Result<StrLoc, DecodeError> {
        let at = self.pos;
        let b = self.byte()?;
        match self.scalar(at, b)? {
            Some(s) if b != tag::LIST_EMPTY || matches!(ctx, Ctx::JidUser) => Ok(s),
            _ => Err(DecodeError::ExpectedString { offset: at, found: tag_name(b), context: ctx.name() }),
        }
    }

    /// A token, packed or raw string, or `LIST_EMPTY` as the empty string; `None` for JID and
    /// list tags.
    #[inline]
    fn scalar(&mut self, at: usize, b: u8) -> Result<Option<StrLoc>, DecodeError> {
        Ok(Some(match b {
            tag::LIST_EMPTY => StrLoc::Token(""),
            1..=235 => StrLoc::Token(self.dict.single(b).ok_or(DecodeError::UnknownToken {
                offset: at,
                dict: "single-byte",
                index: b,
            })?),
            tag::DICTIONARY_0..=tag::DICTIONARY_3 => {
                let index = self.byte()?;
                const NAMES: [&str; 4] = ["0", "1", "2", "3"];
                let d = b - tag::DICTIONARY_0;
                StrLoc::Token(self.dict.double(d, index).ok_or(DecodeError::UnknownToken {
                    offset: at,
                    dict: NAMES[usize::from(d)],
                    index,
                })?)
            }
            tag::NIBBLE_8 => self.packed(Packing::Nibble)?,
            tag::HEX_8 => self.packed(Packing::Hex)?,
            tag::BINARY_8 | tag::BINARY_20 | tag::BINARY_32 => {
                let (start, len) = self.binary(b)?;
                if std::str::from_utf8(&self.input[start..start + len]).is_err() {
                    return Err(DecodeError::InvalidUtf8 { offset: start });
                }
                StrLoc::Input { start: start as u32, len: len as u32 }
            }
            tag::LIST_8 | tag::LIST_16 | tag::JID_PAIR | tag::AD_JID | tag::FB_JID | tag::INTEROP_JID => {
                return Ok(None);
            }
            _ => return Err(DecodeError::UnknownTag { offset: at, byte: b }),
        }))
    }

    fn packed(&mut self, packing: Packing) -> Result<StrLoc, DecodeError> {
        let at = self.pos;
        let header = self.byte()?;
        let n = usize::from(header & 0x7F);
        let odd = header & 0x80 != 0;
        if odd && n == 0 {
            return Err(DecodeError::InvalidPacked { offset: at, byte: header });
        }
        let start = self.take(n)?;
        let text_start = self.arena.text.len();
        packed::unpack(&self.input[start..start + n], odd, packing, &mut self.arena.text).map_err(|bad| {
            let offset = start + self.input[start..start + n].iter().position(|&x| x == bad.0).unwrap_or(0);
            DecodeError::InvalidPacked { offset, byte: bad.0 }
        })?;
        Ok(StrLoc::Text { start: text_start as u32, len: (self.arena.text.len() - text_start) as u32 })
    }

    /// An attribute value or scalar content: a string or a JID.
    fn value(&mut self) -> Result<RawValue, DecodeError> {
        let at = self.pos;
        let b = self.byte()?;
        let jid = match b {
            tag::JID_PAIR => {
                let user = self.string(Ctx::JidUser)?;
                let server = self.server(None)?;
                RawJid { user, server, agent: 0, device: 0, integrator: 0 }
            }
            tag::AD_JID => {
                let domain = self.byte()?;
                let device = u16::from(self.byte()?);
                let user = self.string(Ctx::JidUser)?;
                let (server, agent) = match domain {
                    1 => (Server::Lid, 0),
                    128 => (Server::Hosted, 0),
                    129 => (Server::HostedLid, 0),
                    agent => (Server::Whatsapp, agent),
                };
                RawJid { user, server, agent, device, integrator: 0 }
            }
            tag::FB_JID => {
                let user = self.string(Ctx::JidUser)?;
                let device = self.u16()?;
                let server = self.server(Some(Server::Messenger))?;
                RawJid { user, server, agent: 0, device, integrator: 0 }
            }
            tag::INTEROP_JID => {
                let user = self.string(Ctx::JidUser)?;
                let device = self.u16()?;
                let integrator = self.u16()?;
                // The trailing server is optional: WA Web's writer omits it, whatsmeow's writes it.
                const TRAILING: &[u8] = b"\xfc\x07interop";
                if self.input[self.pos..].starts_with(TRAILING) {
                    self.pos += TRAILING.len();
                }
                RawJid { user, server: Server::Interop, agent: 0, device, integrator }
            }
            _ => {
                return match self.scalar(at, b)? {
                    Some(s) => Ok(RawValue::Str(s)),
                    None => Err(DecodeError::ExpectedString { offset: at, found: tag_name(b), context: "value" }),
                };
            }
        };
        Ok(RawValue::Jid(jid))
    }

    fn server(&mut self, expected: Option<Server>) -> Result<Server, DecodeError> {
        let at = self.pos;
        let loc = self.string(Ctx::JidServer)?;
        let name = resolve(loc, self.input, &self.arena.text);
        match Server::from_name(name) {
            Some(s) if expected.is_none_or(|e| e == s) => Ok(s),
            _ => Err(DecodeError::UnknownServer { offset: at, name: name.chars().take(64).collect() }),
        }
    }
}

#[inline]
fn resolve<'a>(loc: StrLoc, input: &'a [u8], text: &'a [u8]) -> &'a str {
    let (buf, start, len) = match loc {
        StrLoc::Token(s) => return s,
        StrLoc::Input { start, len } => (input, start, len),
        StrLoc::Text { start, len } => (text, start, len),
    };
    // Validated (or ASCII by construction) when decoded; the fallback is unreachable.
    std::str::from_utf8(&buf[start as usize..(start + len) as usize]).unwrap_or_default()
}

/// A decoded node, borrowing the decoder's arenas and the input.
#[derive(Clone, Copy)]
pub struct NodeRef<'a> {
    arena: &'a Arena,
    input: &'a [u8],
    idx: u32,
}

/// A borrowed JID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JidRef<'a> {
    pub user: &'a str,
    pub server: Server,
    pub device: u16,
    pub agent: u8,
    pub integrator: u16,
}

impl JidRef<'_> {
    pub fn to_owned(&self) -> Jid {
        Jid {
            user: self.user.to_owned(),
            server: self.server,
            device: self.device,
            agent: self.agent,
            integrator: self.integrator,
        }
    }
}

impl fmt::Display for JidRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_jid(f, self.user, self.server, self.device, self.agent, self.integrator)
    }
}

/// A borrowed attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRef<'a> {
    Str(&'a str),
    Jid(JidRef<'a>),
}

impl<'a> ValueRef<'a> {
    /// The value when it is a string.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            ValueRef::Str(s) => Some(s),
            ValueRef::Jid(_) => None,
        }
    }

    /// The value when it is a JID.
    pub fn as_jid(&self) -> Option<JidRef<'a>> {
        match self {
            ValueRef::Jid(j) => Some(*j),
            ValueRef::Str(_) => None,
        }
    }

    pub fn to_owned(&self) -> Value {
        match self {
            ValueRef::Str(s) => Value::Str((*s).to_owned()),
            ValueRef::Jid(j) => Value::Jid(j.to_owned()),
        }
    }
}

impl fmt::Display for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueRef::Str(s) => f.write_str(s),
            ValueRef::Jid(j) => j.fmt(f),
        }
    }
}

/// Borrowed node content.
#[derive(Clone, Copy)]
pub enum ContentRef<'a> {
    None,
    Bytes(&'a [u8]),
    Str(&'a str),
    Jid(JidRef<'a>),
    Nodes(Children<'a>),
}

/// The child nodes of a node, in order.
#[derive(Clone, Copy)]
pub struct Children<'a> {
    arena: &'a Arena,
    input: &'a [u8],
    next: u32,
    end: u32,
}

impl<'a> Iterator for Children<'a> {
    type Item = NodeRef<'a>;

    fn next(&mut self) -> Option<NodeRef<'a>> {
        (self.next < self.end).then(|| {
            self.next += 1;
            NodeRef { arena: self.arena, input: self.input, idx: self.next - 1 }
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.end - self.next) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Children<'_> {}

impl<'a> NodeRef<'a> {
    fn raw(&self) -> &'a RawNode {
        &self.arena.nodes[self.idx as usize]
    }

    fn str(&self, loc: StrLoc) -> &'a str {
        resolve(loc, self.input, &self.arena.text)
    }

    fn value(&self, v: RawValue) -> ValueRef<'a> {
        match v {
            RawValue::Str(s) => ValueRef::Str(self.str(s)),
            RawValue::Jid(j) => ValueRef::Jid(JidRef {
                user: self.str(j.user),
                server: j.server,
                device: j.device,
                agent: j.agent,
                integrator: j.integrator,
            }),
        }
    }

    /// The node's tag.
    pub fn tag(&self) -> &'a str {
        self.str(self.raw().tag)
    }

    /// The attributes in wire order.
    pub fn attrs(&self) -> impl ExactSizeIterator<Item = (&'a str, ValueRef<'a>)> + use<'a> {
        let raw = self.raw();
        let this = *self;
        self.arena.attrs[raw.attrs_start as usize..(raw.attrs_start + raw.attrs_len) as usize]
            .iter()
            .map(move |a| (this.str(a.key), this.value(a.value)))
    }

    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<ValueRef<'a>> {
        self.attrs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The value of attribute `key` when it is a string.
    pub fn attr_str(&self, key: &str) -> Option<&'a str> {
        self.attr(key).and_then(|v| v.as_str())
    }

    /// The node's content.
    pub fn content(&self) -> ContentRef<'a> {
        match self.raw().content {
            RawContent::None => ContentRef::None,
            RawContent::Bytes { start, len } => ContentRef::Bytes(&self.input[start as usize..(start + len) as usize]),
            RawContent::Value(v) => match self.value(v) {
                ValueRef::Str(s) => ContentRef::Str(s),
                ValueRef::Jid(j) => ContentRef::Jid(j),
            },
            RawContent::Nodes { first, count } => ContentRef::Nodes(self.children_from(first, count)),
        }
    }

    fn children_from(&self, first: u32, count: u32) -> Children<'a> {
        Children { arena: self.arena, input: self.input, next: first, end: first + count }
    }

    /// The child nodes (none when the content is not a list).
    pub fn children(&self) -> Children<'a> {
        match self.raw().content {
            RawContent::Nodes { first, count } => self.children_from(first, count),
            _ => self.children_from(0, 0),
        }
    }

    /// The first child with tag `tag`.
    pub fn child(&self, tag: &str) -> Option<NodeRef<'a>> {
        self.children().find(|c| c.tag() == tag)
    }

    /// The byte content, when the content is bytes.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.content() {
            ContentRef::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// An owned copy of this node and everything under it.
    pub fn to_owned(&self) -> Node {
        let content = match self.content() {
            ContentRef::None => Content::None,
            ContentRef::Bytes(b) => Content::Bytes(b.to_vec()),
            ContentRef::Str(s) => Content::Str(s.to_owned()),
            ContentRef::Jid(j) => Content::Jid(j.to_owned()),
            ContentRef::Nodes(children) => Content::Nodes(children.map(|c| c.to_owned()).collect()),
        };
        Node {
            tag: self.tag().to_owned(),
            attrs: self.attrs().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            content,
        }
    }
}

impl fmt::Debug for NodeRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::to_xml(&self.to_owned(), crate::text::XmlStyle::Compact))
    }
}
