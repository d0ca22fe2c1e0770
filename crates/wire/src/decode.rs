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
use zeroize::Zeroize as _;

use crate::dict::{Dictionary, tag};
use crate::encode::DEFAULT_MAX_DEPTH;
use crate::jid::{Jid, Server, write_jid};
use crate::node::{Content, Node, Value};
use crate::packed::{self, Packing};
use crate::payload::{self, MAX_PAYLOAD_LEN, PayloadError};

/// Bounds on what one decode may produce, so the cost of a hostile stanza is set by these numbers
/// and by its own size, never by what it claims to contain.
///
/// Memory: the inflated body (at most `max_inflated`, and at most `max_inflate_ratio` times the
/// compressed body) plus the arenas (about 40 bytes a node and 24 an attribute, so at most
/// `40 * max_nodes + 24 * max_attrs`). CPU: linear in the inflated size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of nodes (the root is depth 0). Default 64: real stanzas nest under 10.
    pub max_depth: usize,
    /// Most nodes in one stanza. Default 100,000: a prekey upload of 812 keys is ~2,500.
    pub max_nodes: usize,
    /// Most attributes in one stanza, over all its nodes. Default 200,000.
    pub max_attrs: usize,
    /// Most bytes a zlib body may inflate to. Default: the frame limit.
    pub max_inflated: usize,
    /// A zlib body may inflate to at most this many times its own size (and at least
    /// [`MIN_INFLATE_ALLOWANCE`] bytes). Default 64: stanzas compress 2-10x; deflate's worst case is
    /// about 1,000x, which is how a 17 KB bomb becomes 16 MiB.
    pub max_inflate_ratio: usize,
}

/// What any zlib body may inflate to regardless of its size (a tiny body is never a threat).
pub const MIN_INFLATE_ALLOWANCE: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_nodes: 100_000,
            max_attrs: 200_000,
            max_inflated: MAX_PAYLOAD_LEN,
            max_inflate_ratio: 64,
        }
    }
}

impl Limits {
    /// Most bytes a zlib body of `compressed` bytes may inflate to under these limits.
    pub fn inflate_allowance(&self, compressed: usize) -> usize {
        compressed.saturating_mul(self.max_inflate_ratio).max(MIN_INFLATE_ALLOWANCE).min(self.max_inflated)
    }
}

/// Why bytes are not a stanza.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
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
    #[error("byte {offset}: a packed string of {chars} characters; encoders pack at most 127 (longer ones go raw)")]
    PackedTooLong { offset: usize, chars: usize },
    #[error("byte {offset}: JID server {name:?} is not a known WhatsApp server")]
    UnknownServer { offset: usize, name: String },
    #[error("byte {offset}: {count} {what} announced but only {remaining} bytes remain")]
    CountExceedsInput { offset: usize, what: &'static str, count: usize, remaining: usize },
    #[error("nodes nest deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("more than {max} nodes in one stanza")]
    TooManyNodes { max: usize },
    #[error("more than {max} attributes in one stanza")]
    TooManyAttributes { max: usize },
}

/// Where a decoded string lives, in 8 bytes: the top two bits of `len_kind` say where, the rest
/// is the length. Tokens store their code in `start` (index, or 256 + dictionary * 256 + index).
#[derive(Debug, Clone, Copy)]
struct StrLoc {
    start: u32,
    len_kind: u32,
}

const KIND_SHIFT: u32 = 30;
const LEN_MASK: u32 = (1 << KIND_SHIFT) - 1;
/// Raw UTF-8 in the input (validated when decoded).
const KIND_INPUT: u32 = 0;
/// Unpacked nibble/hex text in the arena.
const KIND_TEXT: u32 = 1;
const KIND_TOKEN: u32 = 2;

impl StrLoc {
    const EMPTY: StrLoc = StrLoc { start: 0, len_kind: 0 };
    /// Returned by `scalar` for JID and list tags: keeps its result in two registers.
    const NOT_SCALAR: StrLoc = StrLoc { start: 0, len_kind: u32::MAX };

    fn is_scalar(self) -> bool {
        self.len_kind != u32::MAX
    }

    fn input(start: usize, len: usize) -> StrLoc {
        StrLoc { start: start as u32, len_kind: len as u32 }
    }
    fn text(start: usize, len: usize) -> StrLoc {
        StrLoc { start: start as u32, len_kind: KIND_TEXT << KIND_SHIFT | len as u32 }
    }
    fn token(code: u32) -> StrLoc {
        StrLoc { start: code, len_kind: KIND_TOKEN << KIND_SHIFT }
    }
}

/// Marks a value that is a string, not a JID.
const NOT_JID: u8 = u8::MAX;

/// A string or a JID, in 16 bytes.
#[derive(Debug, Clone, Copy)]
struct RawValue {
    s: StrLoc,
    /// `Server` discriminant, or `NOT_JID`.
    server: u8,
    agent: u8,
    device: u16,
    integrator: u16,
}

impl RawValue {
    fn string(s: StrLoc) -> RawValue {
        RawValue { s, server: NOT_JID, agent: 0, device: 0, integrator: 0 }
    }
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

const PLACEHOLDER: RawNode = RawNode { tag: StrLoc::EMPTY, attrs_start: 0, attrs_len: 0, content: RawContent::None };

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
        let allowance = self.limits.inflate_allowance(payload.len().saturating_sub(1));
        let body = payload::body(payload, &mut self.inflated, allowance)?;
        decode_into(&mut self.arena, self.dict, &self.limits, body)
    }

    /// Decodes a bare binary node (no flags byte).
    pub fn decode_node<'a>(&'a mut self, body: &'a [u8]) -> Result<NodeRef<'a>, DecodeError> {
        decode_into(&mut self.arena, self.dict, &self.limits, body)
    }

    /// Gives back the arenas' memory, for a connection going idle.
    pub fn release_buffers(&mut self) {
        self.arena = Arena::default();
        self.inflated.zeroize();
        self.inflated = Vec::new();
    }
}

/// An inflated body may have held a login's private key or token: wiped, not just freed.
impl Drop for Decoder<'_> {
    fn drop(&mut self) {
        self.inflated.zeroize();
    }
}

/// Decodes a payload into an owned node with dictionary v3 and default limits.
pub fn decode(payload: &[u8]) -> Result<Node, DecodeError> {
    Decoder::default().decode_payload(payload).map(|n| n.to_owned())
}

fn decode_into<'a>(
    arena: &'a mut Arena,
    dict: &'a Dictionary,
    limits: &Limits,
    input: &'a [u8],
) -> Result<NodeRef<'a>, DecodeError> {
    arena.nodes.clear();
    arena.attrs.clear();
    arena.text.clear();
    arena.nodes.push(PLACEHOLDER);
    let mut r = Reader { input, pos: 0, dict, limits, arena };
    r.node(0, 0).map_err(|e| *e)?;
    if r.pos != input.len() {
        return Err(DecodeError::TrailingBytes { offset: r.pos, remaining: input.len() - r.pos });
    }
    Ok(NodeRef { arena, input, dict, idx: 0 })
}

/// Reader results carry a boxed error: the `Ok` side then travels in registers, and the box is
/// only built on the (cold) error path.
type R<T> = Result<T, Box<DecodeError>>;

#[cold]
#[inline(never)]
fn fail(e: DecodeError) -> Box<DecodeError> {
    Box::new(e)
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

/// Single-byte tokens that name JID servers, so the common JIDs skip the string compare.
fn server_token(b: u8) -> Option<Server> {
    match b {
        3 => Some(Server::Whatsapp),
        28 => Some(Server::Group),
        13 => Some(Server::Broadcast),
        118 => Some(Server::Lid),
        204 => Some(Server::Messenger),
        _ => None,
    }
}

impl Reader<'_, '_> {
    #[inline]
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    #[inline]
    fn byte(&mut self) -> R<u8> {
        match self.input.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(fail(DecodeError::UnexpectedEnd { offset: self.pos, needed: 1 })),
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> R<usize> {
        if self.remaining() < n {
            return Err(fail(DecodeError::UnexpectedEnd { offset: self.pos, needed: n - self.remaining() }));
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    #[inline]
    fn u16(&mut self) -> R<u16> {
        let at = self.take(2)?;
        Ok(u16::from_be_bytes([self.input[at], self.input[at + 1]]))
    }

    fn node(&mut self, slot: usize, depth: usize) -> R<()> {
        if depth >= self.limits.max_depth {
            return Err(fail(DecodeError::TooDeep { max: self.limits.max_depth }));
        }
        let at = self.pos;
        let n = match self.byte()? {
            tag::LIST_8 => usize::from(self.byte()?),
            tag::LIST_16 => usize::from(self.u16()?),
            byte => return Err(fail(DecodeError::InvalidNodeHeader { offset: at, byte })),
        };
        if n == 0 {
            return Err(fail(DecodeError::EmptyNode { offset: at }));
        }
        let tag = self.string(Ctx::Tag)?;
        let n_attrs = (n - 1) / 2;
        // Each attribute takes at least two bytes: checked before the arena grows for them.
        if n_attrs * 2 > self.remaining() {
            return Err(fail(DecodeError::CountExceedsInput {
                offset: at,
                what: "attributes",
                count: n_attrs,
                remaining: self.remaining(),
            }));
        }
        let attrs_start = self.arena.attrs.len();
        if attrs_start + n_attrs > self.limits.max_attrs {
            return Err(fail(DecodeError::TooManyAttributes { max: self.limits.max_attrs }));
        }
        self.arena.attrs.reserve(n_attrs);
        for _ in 0..n_attrs {
            let key = self.string(Ctx::Key)?;
            let value = self.value()?;
            self.arena.attrs.push(RawAttr { key, value });
        }
        let content = if n % 2 == 0 { self.content(depth)? } else { RawContent::None };
        self.arena.nodes[slot] = RawNode { tag, attrs_start: attrs_start as u32, attrs_len: n_attrs as u32, content };
        Ok(())
    }

    fn content(&mut self, depth: usize) -> R<RawContent> {
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
            return Err(fail(DecodeError::CountExceedsInput {
                offset: at,
                what: "child nodes",
                count,
                remaining: self.remaining(),
            }));
        }
        let first = self.arena.nodes.len();
        if first + count > self.limits.max_nodes {
            return Err(fail(DecodeError::TooManyNodes { max: self.limits.max_nodes }));
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
    fn binary(&mut self, b: u8) -> R<(usize, usize)> {
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
    #[inline]
    fn string(&mut self, ctx: Ctx) -> R<StrLoc> {
        let at = self.pos;
        let b = self.byte()?;
        let s = self.scalar(at, b)?;
        if s.is_scalar() && (b != tag::LIST_EMPTY || matches!(ctx, Ctx::JidUser)) {
            Ok(s)
        } else {
            Err(fail(DecodeError::ExpectedString { offset: at, found: tag_name(b), context: ctx.name() }))
        }
    }

    /// A token, packed or raw string, or `LIST_EMPTY` as the empty string; `NOT_SCALAR` for JID
    /// and list tags.
    #[inline(always)]
    fn scalar(&mut self, at: usize, b: u8) -> R<StrLoc> {
        Ok(match b {
            tag::LIST_EMPTY => StrLoc::EMPTY,
            1..=235 => {
                if self.dict.single(b).is_none() {
                    return Err(fail(DecodeError::UnknownToken { offset: at, dict: "single-byte", index: b }));
                }
                StrLoc::token(u32::from(b))
            }
            tag::DICTIONARY_0..=tag::DICTIONARY_3 => {
                let index = self.byte()?;
                let d = b - tag::DICTIONARY_0;
                if self.dict.double(d, index).is_none() {
                    const NAMES: [&str; 4] = ["0", "1", "2", "3"];
                    return Err(fail(DecodeError::UnknownToken { offset: at, dict: NAMES[usize::from(d)], index }));
                }
                StrLoc::token(256 + u32::from(d) * 256 + u32::from(index))
            }
            tag::NIBBLE_8 => self.packed(Packing::Nibble)?,
            tag::HEX_8 => self.packed(Packing::Hex)?,
            tag::BINARY_8 | tag::BINARY_20 | tag::BINARY_32 => {
                let (start, len) = self.binary(b)?;
                if std::str::from_utf8(&self.input[start..start + len]).is_err() {
                    return Err(fail(DecodeError::InvalidUtf8 { offset: start }));
                }
                StrLoc::input(start, len)
            }
            tag::LIST_8 | tag::LIST_16 | tag::JID_PAIR | tag::AD_JID | tag::FB_JID | tag::INTEROP_JID => {
                StrLoc::NOT_SCALAR
            }
            _ => return Err(fail(DecodeError::UnknownTag { offset: at, byte: b })),
        })
    }

    fn packed(&mut self, packing: Packing) -> R<StrLoc> {
        let at = self.pos;
        let header = self.byte()?;
        let n = usize::from(header & 0x7F);
        let odd = header & 0x80 != 0;
        // No encoder packs an empty string (it goes out as `BINARY_8 0`) or one longer than 127
        // characters (it goes out raw): refusing those forms keeps every accepted input a fixed
        // point of decode -> encode -> decode.
        if n == 0 {
            return Err(fail(DecodeError::InvalidPacked { offset: at, byte: header }));
        }
        let chars = 2 * n - usize::from(odd);
        if chars > packed::PACKED_MAX_CHARS {
            return Err(fail(DecodeError::PackedTooLong { offset: at, chars }));
        }
        let start = self.take(n)?;
        let text_start = self.arena.text.len();
        let packed = &self.input[start..start + n];
        if let Err(bad) = packed::unpack(packed, odd, packing, &mut self.arena.text) {
            let offset = start + packed.iter().position(|&x| x == bad.0).unwrap_or(0);
            return Err(fail(DecodeError::InvalidPacked { offset, byte: bad.0 }));
        }
        Ok(StrLoc::text(text_start, self.arena.text.len() - text_start))
    }

    /// An attribute value or scalar content: a string or a JID.
    #[inline(always)]
    fn value(&mut self) -> R<RawValue> {
        let at = self.pos;
        let b = self.byte()?;
        let (s, server, agent, device, integrator) = match b {
            tag::JID_PAIR => {
                let user = self.string(Ctx::JidUser)?;
                let server = self.server(None)?;
                // WhatsApp Web clients (Baileys) write an interop JID as a pair whose user is
                // `{integrator}-{number}` on `interop`: the same account as INTEROP_JID.
                match (server == Server::Interop).then(|| self.split_interop_user(user)).flatten() {
                    Some((integrator, number)) => (number, server, 0, 0, integrator),
                    None => (user, server, 0, 0, 0),
                }
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
                // Baileys writes a device-qualified interop JID (`1-N:0@interop`) as an AD_JID of
                // domain 0, losing the server; no phone number holds a `-`, so `{integrator}-{number}`
                // there is the interop device.
                match (domain == 0).then(|| self.split_interop_user(user)).flatten() {
                    Some((integrator, number)) => (number, Server::Interop, 0, device, integrator),
                    None => (user, server, agent, device, 0),
                }
            }
            tag::FB_JID => {
                let user = self.string(Ctx::JidUser)?;
                let device = self.u16()?;
                let server = self.server(Some(Server::Messenger))?;
                (user, server, 0, device, 0)
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
                (user, Server::Interop, 0, device, integrator)
            }
            _ => {
                let s = self.scalar(at, b)?;
                if !s.is_scalar() {
                    return Err(fail(DecodeError::ExpectedString { offset: at, found: tag_name(b), context: "value" }));
                }
                return Ok(RawValue::string(s));
            }
        };
        Ok(RawValue { s, server: server as u8, agent, device, integrator })
    }

    /// A JID user `{integrator}-{number}` (a canonical u16, a dash, canonical decimal digits):
    /// the integrator and the number's location. Anything else (including a dictionary token) is
    /// not split, so the decode of a JID the canonical encoder wrote is unchanged.
    fn split_interop_user(&self, user: StrLoc) -> Option<(u16, StrLoc)> {
        let kind = user.len_kind >> KIND_SHIFT;
        if kind != KIND_INPUT && kind != KIND_TEXT {
            return None;
        }
        let text = resolve(user, self.input, &self.arena.text, self.dict);
        let (integrator, number) = text.split_once('-')?;
        let canonical =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        if !canonical(integrator) || !canonical(number) {
            return None;
        }
        let integrator: u16 = integrator.parse().ok()?;
        let skip = text.len() - number.len();
        let len = number.len() as u32;
        Some((integrator, StrLoc { start: user.start + skip as u32, len_kind: kind << KIND_SHIFT | len }))
    }

    fn server(&mut self, expected: Option<Server>) -> R<Server> {
        let at = self.pos;
        let found = match self.input.get(at).copied().and_then(server_token) {
            Some(s) => {
                self.pos += 1;
                Some(s)
            }
            None => {
                let loc = self.string(Ctx::JidServer)?;
                Server::from_name(resolve(loc, self.input, &self.arena.text, self.dict))
            }
        };
        match found {
            Some(s) if expected.is_none_or(|e| e == s) => Ok(s),
            _ => {
                self.pos = at;
                let loc = self.string(Ctx::JidServer)?;
                let name = resolve(loc, self.input, &self.arena.text, self.dict);
                Err(fail(DecodeError::UnknownServer { offset: at, name: name.chars().take(64).collect() }))
            }
        }
    }
}

#[inline]
fn resolve<'a>(loc: StrLoc, input: &'a [u8], text: &'a [u8], dict: &'a Dictionary) -> &'a str {
    let len = (loc.len_kind & LEN_MASK) as usize;
    let start = loc.start as usize;
    let buf = match loc.len_kind >> KIND_SHIFT {
        KIND_INPUT => input,
        KIND_TEXT => text,
        _ => {
            let code = loc.start;
            let token =
                if code < 256 { dict.single(code as u8) } else { dict.double(((code - 256) >> 8) as u8, code as u8) };
            return token.unwrap_or_default();
        }
    };
    // Validated (or ASCII by construction) when decoded; the fallback is unreachable.
    buf.get(start..start + len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
}

/// A decoded node, borrowing the decoder's arenas and the input.
#[derive(Clone, Copy)]
pub struct NodeRef<'a> {
    arena: &'a Arena,
    input: &'a [u8],
    dict: &'a Dictionary,
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
    dict: &'a Dictionary,
    next: u32,
    end: u32,
}

impl<'a> Iterator for Children<'a> {
    type Item = NodeRef<'a>;

    fn next(&mut self) -> Option<NodeRef<'a>> {
        (self.next < self.end).then(|| {
            self.next += 1;
            NodeRef { arena: self.arena, input: self.input, dict: self.dict, idx: self.next - 1 }
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
        resolve(loc, self.input, &self.arena.text, self.dict)
    }

    fn value(&self, v: RawValue) -> ValueRef<'a> {
        match Server::ALL.get(usize::from(v.server)) {
            None => ValueRef::Str(self.str(v.s)),
            Some(&server) => ValueRef::Jid(JidRef {
                user: self.str(v.s),
                server,
                device: v.device,
                agent: v.agent,
                integrator: v.integrator,
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
        Children { arena: self.arena, input: self.input, dict: self.dict, next: first, end: first + count }
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
