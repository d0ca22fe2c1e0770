//! The canonical encoder: the bytes the reference clients write for a node.
//!
//! Strings go out as a single-byte token, else a double-byte token, else nibble-packed, else
//! hex-packed, else raw (`BINARY_8/20/32`, the shortest that fits). Typed JIDs go out as
//! `JID_PAIR`, `AD_JID`, `FB_JID` or `INTEROP_JID` (with the trailing `interop` server); a plain
//! string containing `@` stays a string.

use std::io::Write as _;

use thiserror::Error;

use crate::dict::{Dictionary, Token, tag};
use crate::jid::{Jid, Server, WireKind};
use crate::node::{Content, Node, Value};
use crate::packed::{self, Packing};
use crate::payload::{FLAG_ZLIB, MAX_PAYLOAD_LEN};

/// Deepest nesting the encoder writes; the decoder's default limit is the same.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// A node that has no canonical encoding.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("<{tag}> has {count} attributes and children slots; a list holds at most 65535")]
    ListTooLong { tag: String, count: usize },
    #[error("nesting deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("JID {jid} cannot be written: {why}")]
    UnrepresentableJid { jid: String, why: &'static str },
    #[error("{len} bytes of raw content exceed the 32-bit length field")]
    TooLong { len: usize },
    #[error("encoded payload of {len} bytes exceeds the {max}-byte frame limit")]
    PayloadTooLarge { len: usize, max: usize },
}

/// Encoder settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodeOptions {
    /// zlib-compress the body and set flag 0x02 (reference clients never do; servers may).
    pub compress: bool,
}

/// Writes nodes as stanza payloads with one dictionary.
#[derive(Debug, Clone, Copy)]
pub struct Encoder<'d> {
    dict: &'d Dictionary,
    options: EncodeOptions,
    max_depth: usize,
}

impl Default for Encoder<'static> {
    fn default() -> Self {
        Encoder::new(&Dictionary::V3, EncodeOptions::default())
    }
}

impl<'d> Encoder<'d> {
    pub fn new(dict: &'d Dictionary, options: EncodeOptions) -> Self {
        Encoder { dict, options, max_depth: DEFAULT_MAX_DEPTH }
    }

    /// Appends a stanza payload (flags byte, then the node, compressed if configured) to `out`.
    pub fn encode_payload(&self, node: &Node, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        if self.options.compress {
            let mut body = Vec::new();
            self.encode_node(node, &mut body)?;
            out.push(FLAG_ZLIB);
            let mut z = flate2::write::ZlibEncoder::new(&mut *out, flate2::Compression::default());
            z.write_all(&body).expect("writing to a Vec cannot fail");
            z.finish().expect("writing to a Vec cannot fail");
        } else {
            out.push(0);
            self.encode_node(node, out)?;
        }
        let len = out.len() - start;
        if len > MAX_PAYLOAD_LEN {
            out.truncate(start);
            return Err(EncodeError::PayloadTooLarge { len, max: MAX_PAYLOAD_LEN });
        }
        Ok(())
    }

    /// Appends the binary node alone (no flags byte) to `out`.
    pub fn encode_node(&self, node: &Node, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut w = Writer { dict: self.dict, out, max_depth: self.max_depth };
        w.node(node, 0)
    }
}

/// Encodes `node` as an uncompressed payload with dictionary v3.
pub fn encode(node: &Node) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    Encoder::default().encode_payload(node, &mut out)?;
    Ok(out)
}

struct Writer<'a, 'd> {
    dict: &'d Dictionary,
    out: &'a mut Vec<u8>,
    max_depth: usize,
}

impl Writer<'_, '_> {
    fn node(&mut self, node: &Node, depth: usize) -> Result<(), EncodeError> {
        if depth >= self.max_depth {
            return Err(EncodeError::TooDeep { max: self.max_depth });
        }
        let has_content = !matches!(node.content, Content::None);
        let n = 1 + 2 * node.attrs.len() + usize::from(has_content);
        self.list_start(n, &node.tag)?;
        self.string(&node.tag);
        for (key, value) in &node.attrs {
            self.string(key);
            match value {
                Value::Str(s) => self.string(s),
                Value::Jid(j) => self.jid(j)?,
            }
        }
        match &node.content {
            Content::None => {}
            Content::Bytes(b) => self.raw(b)?,
            Content::Str(s) => self.string(s),
            Content::Jid(j) => self.jid(j)?,
            Content::Nodes(children) if children.is_empty() => self.out.push(tag::LIST_EMPTY),
            Content::Nodes(children) => {
                self.list_start(children.len(), &node.tag)?;
                for child in children {
                    self.node(child, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    fn list_start(&mut self, n: usize, node_tag: &str) -> Result<(), EncodeError> {
        match n {
            0..=255 => self.out.extend_from_slice(&[tag::LIST_8, n as u8]),
            256..=65535 => {
                let [hi, lo] = (n as u16).to_be_bytes();
                self.out.extend_from_slice(&[tag::LIST_16, hi, lo]);
            }
            _ => return Err(EncodeError::ListTooLong { tag: node_tag.to_owned(), count: n }),
        }
        Ok(())
    }

    #[inline]
    fn string(&mut self, s: &str) {
        let b = s.as_bytes();
        if b.is_empty() {
            self.out.extend_from_slice(&[tag::BINARY_8, 0]);
        } else if let Some(token) = self.dict.lookup(s) {
            match token {
                Token::Single(i) => self.out.push(i),
                Token::Double(d, i) => self.out.extend_from_slice(&[tag::DICTIONARY_0 + d, i]),
            }
        } else if let Some(p) = packed::packing_for(b) {
            self.out.push(match p {
                Packing::Nibble => tag::NIBBLE_8,
                Packing::Hex => tag::HEX_8,
            });
            packed::pack(b, p, self.out);
        } else {
            // Strings are bounded by the frame size long before the 32-bit length field.
            let _ = self.raw(b);
        }
    }

    fn raw(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let len = b.len();
        if len < 256 {
            self.out.reserve(len + 2);
            self.out.extend_from_slice(&[tag::BINARY_8, len as u8]);
        } else if len < 1 << 20 {
            self.out.reserve(len + 4);
            self.out.extend_from_slice(&[tag::BINARY_20, (len >> 16) as u8 & 0x0F, (len >> 8) as u8, len as u8]);
        } else {
            let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLong { len })?;
            self.out.reserve(len + 5);
            self.out.push(tag::BINARY_32);
            self.out.extend_from_slice(&len32.to_be_bytes());
        }
        self.out.extend_from_slice(b);
        Ok(())
    }

    fn jid(&mut self, j: &Jid) -> Result<(), EncodeError> {
        let bad = |why| Err(EncodeError::UnrepresentableJid { jid: j.to_string(), why });
        match j.wire_kind() {
            WireKind::Pair => {
                if j.device != 0 || j.agent != 0 || j.integrator != 0 {
                    return bad("this server's JIDs carry no device, agent or integrator");
                }
                self.out.push(tag::JID_PAIR);
                if j.user.is_empty() {
                    self.out.push(tag::LIST_EMPTY);
                } else {
                    self.string(&j.user);
                }
                self.string(j.server.as_str());
            }
            WireKind::Ad => {
                let Ok(device) = u8::try_from(j.device) else {
                    return bad("AD_JID devices are one byte");
                };
                let domain = match (j.server, j.agent) {
                    (Server::Whatsapp, agent) if !matches!(agent, 1 | 128 | 129) => agent,
                    (_, 0) => j.server.ad_domain().unwrap_or(0),
                    _ => return bad("an agent is only allowed on s.whatsapp.net, and not 1, 128 or 129"),
                };
                self.out.extend_from_slice(&[tag::AD_JID, domain, device]);
                self.string(&j.user);
            }
            WireKind::Fb | WireKind::Interop => {
                if j.agent != 0 || (j.server == Server::Messenger && j.integrator != 0) {
                    return bad("Messenger and interop JIDs carry no agent; Messenger ones no integrator");
                }
                let interop = j.server == Server::Interop;
                self.out.push(if interop { tag::INTEROP_JID } else { tag::FB_JID });
                self.string(&j.user);
                self.out.extend_from_slice(&j.device.to_be_bytes());
                if interop {
                    self.out.extend_from_slice(&j.integrator.to_be_bytes());
                }
                self.string(j.server.as_str());
            }
        }
        Ok(())
    }
}
