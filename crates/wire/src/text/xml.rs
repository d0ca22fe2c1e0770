//! The XML form. Byte content that is not shown as text is written as a processing instruction,
//! `<enc v="2" type="msg"><?base64 AAECAw==?></enc>`, which stays well-formed XML and cannot be
//! mistaken for text.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
#[cfg(feature = "text")]
use quick_xml::events::Event;

use super::bytes_show_as_text;
#[cfg(feature = "text")]
use super::{TextError, content_from_text};
use crate::node::{Content, Node, Value};

/// Layout of the XML output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmlStyle {
    /// One line.
    Compact,
    /// Children indented by two spaces, one element per line.
    Pretty,
}

/// Renders a node as XML.
pub fn to_xml(node: &Node, style: XmlStyle) -> String {
    let mut out = String::new();
    write_node(&mut out, node, style, 0);
    out
}

fn write_node(out: &mut String, node: &Node, style: XmlStyle, depth: usize) {
    if style == XmlStyle::Pretty && depth > 0 {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    out.push('<');
    escape(out, &node.tag, true);
    for (key, value) in &node.attrs {
        out.push(' ');
        escape(out, key, true);
        out.push_str("=\"");
        match value {
            Value::Str(s) => escape(out, s, true),
            Value::Jid(j) => escape(out, &j.to_string(), true),
        }
        out.push('"');
    }
    match &node.content {
        Content::None => {
            out.push_str("/>");
            return;
        }
        Content::Nodes(children) => {
            out.push('>');
            for child in children {
                write_node(out, child, style, depth + 1);
            }
            if style == XmlStyle::Pretty && !children.is_empty() {
                out.push('\n');
                out.extend(std::iter::repeat_n("  ", depth));
            }
        }
        Content::Str(s) => {
            out.push('>');
            escape(out, s, false);
        }
        Content::Jid(j) => {
            out.push('>');
            escape(out, &j.to_string(), false);
        }
        Content::Bytes(b) => {
            out.push('>');
            match bytes_show_as_text(b, false) {
                Some(s) => escape(out, s, false),
                None => {
                    out.push_str("<?base64 ");
                    B64.encode_string(b, out);
                    out.push_str("?>");
                }
            }
        }
    }
    out.push_str("</");
    escape(out, &node.tag, true);
    out.push('>');
}

fn escape(out: &mut String, s: &str, attr: bool) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attr => out.push_str("&quot;"),
            // Parsers normalise raw whitespace and line ends in attributes; references survive.
            '\n' | '\t' if attr => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\r' => out.push_str("&#13;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Parses the XML form (as written by [`to_xml`], or by hand: either quote style, comments and an
/// XML declaration allowed) into a node.
#[cfg(feature = "text")]
pub fn from_xml(xml: &str) -> Result<Node, TextError> {
    let err = |e: &dyn std::fmt::Display| TextError::Xml(e.to_string());
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    // Each open element: the node so far, its text, and whether it had a base64 instruction.
    struct Open {
        node: Node,
        children: Vec<Node>,
        text: String,
        bytes: Option<Vec<u8>>,
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let pos = reader.buffer_position();
        let event = reader.read_event().map_err(|e| TextError::Xml(format!("at byte {pos}: {e}")))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => return Err(TextError::MultipleRoots),
            Event::Start(e) => {
                stack.push(Open { node: start_node(&e)?, children: Vec::new(), text: String::new(), bytes: None });
            }
            Event::Empty(e) => {
                let node = start_node(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => match stack.last_mut() {
                Some(open) => open.text.push_str(&t.xml10_content()),
                None if t.trim().is_empty() => {}
                None => return Err(TextError::Xml(format!("text outside the root element at byte {pos}"))),
            },
            Event::CData(t) => match stack.last_mut() {
                Some(open) => open.text.push_str(&t.xml10_content()),
                None => return Err(TextError::Xml(format!("CDATA outside the root element at byte {pos}"))),
            },
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| err(&e))? {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&r)
                        .ok_or_else(|| TextError::Xml(format!("unknown entity &{};", &*r)))?
                        .to_owned(),
                };
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&resolved),
                    None => return Err(TextError::Xml(format!("reference outside the root element at byte {pos}"))),
                }
            }
            Event::PI(pi) if pi.target() == "base64" => {
                let open = stack.last_mut().ok_or_else(|| TextError::Xml("<?base64?> outside an element".into()))?;
                if open.bytes.is_some() {
                    return Err(TextError::Xml(format!("<{}> has two <?base64?> contents", open.node.tag)));
                }
                open.bytes = Some(B64.decode(pi.content().trim())?);
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else { return Err(TextError::Xml("unbalanced end tag".into())) };
                let node = finish(open.node, open.children, open.text, open.bytes)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::DocType(_) => return Err(TextError::Xml("DOCTYPE is not supported".into())),
        }
    }
    if !stack.is_empty() {
        return Err(TextError::Xml("input ends inside an element".into()));
    }
    root.ok_or(TextError::NoRoot)
}

#[cfg(feature = "text")]
fn start_node(e: &quick_xml::events::BytesStart<'_>) -> Result<Node, TextError> {
    let mut node = Node::new(e.name().as_ref());
    for attr in e.attributes().with_checks(true) {
        let attr = attr.map_err(|e| TextError::Xml(e.to_string()))?;
        let value =
            attr.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|e| TextError::Xml(e.to_string()))?;
        node.attrs.push((attr.key.as_ref().to_owned(), Value::from_text(&value)));
    }
    Ok(node)
}

/// Settles an element's content from what was inside it.
#[cfg(feature = "text")]
fn finish(mut node: Node, children: Vec<Node>, text: String, bytes: Option<Vec<u8>>) -> Result<Node, TextError> {
    let has_text = !text.is_empty();
    node.content = match (bytes, children.is_empty()) {
        (Some(_), false) => return Err(TextError::MixedContent(node.tag)),
        (Some(_), true) if !text.trim().is_empty() => return Err(TextError::MixedContent(node.tag)),
        (Some(b), true) => Content::Bytes(b),
        // Whitespace between child elements is layout, not content.
        (None, false) if text.trim().is_empty() => Content::Nodes(children),
        (None, false) => return Err(TextError::MixedContent(node.tag)),
        (None, true) if has_text => content_from_text(&text),
        // `<x></x>`: an empty child list (`<x/>` is no content at all).
        (None, true) => Content::Nodes(Vec::new()),
    };
    Ok(node)
}
