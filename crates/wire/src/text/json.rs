//! The JSON form: `{"tag": str, "attrs": {str: str}, "content": null | str | {"bytes_b64": str} |
//! [node, ...]}`, JIDs printed in their text form, attributes in wire order.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value as Json, json};

use super::{TextError, bytes_show_as_text, content_from_text};
use crate::node::{Content, Node, Value};

/// The JSON value of a node.
pub fn to_json_value(node: &Node) -> Json {
    let attrs: Map<String, Json> = node.attrs.iter().map(|(k, v)| (k.clone(), Json::String(v.to_string()))).collect();
    let content = match &node.content {
        Content::None => Json::Null,
        Content::Str(s) => Json::String(s.clone()),
        Content::Jid(j) => Json::String(j.to_string()),
        Content::Bytes(b) => match bytes_show_as_text(b, true) {
            Some(s) => Json::String(s.to_owned()),
            None => json!({ "bytes_b64": B64.encode(b) }),
        },
        Content::Nodes(children) => Json::Array(children.iter().map(to_json_value).collect()),
    };
    json!({ "tag": node.tag, "attrs": attrs, "content": content })
}

/// A node as JSON text (pretty when asked).
pub fn to_json(node: &Node, pretty: bool) -> String {
    let v = to_json_value(node);
    if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap_or_default()
}

/// Parses the JSON form.
pub fn from_json(text: &str) -> Result<Node, TextError> {
    let v: Json = serde_json::from_str(text).map_err(|e| TextError::Json(e.to_string()))?;
    from_json_value(&v)
}

/// Converts a JSON value of the documented shape to a node; a missing `attrs` or `content` is
/// empty, anything else out of shape is an error naming the field.
pub fn from_json_value(v: &Json) -> Result<Node, TextError> {
    from_json_at(v, 0)
}

fn from_json_at(v: &Json, depth: usize) -> Result<Node, TextError> {
    let bad = |what: &str| TextError::Json(what.to_owned());
    if depth >= crate::encode::DEFAULT_MAX_DEPTH {
        return Err(bad("nodes nest too deep"));
    }
    let obj = v.as_object().ok_or_else(|| bad("a node must be an object"))?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "tag" | "attrs" | "content")) {
        return Err(TextError::Json(format!("unknown node field {k:?}")));
    }
    let tag = obj.get("tag").and_then(Json::as_str).ok_or_else(|| bad("\"tag\" must be a string"))?;
    let mut node = Node::new(tag);
    match obj.get("attrs") {
        None | Some(Json::Null) => {}
        Some(Json::Object(attrs)) => {
            for (k, v) in attrs {
                let s = v.as_str().ok_or_else(|| TextError::Json(format!("attribute {k:?} must be a string")))?;
                node.attrs.push((k.clone(), Value::from_text(s)));
            }
        }
        Some(_) => return Err(bad("\"attrs\" must be an object of strings")),
    }
    node.content = match obj.get("content") {
        None | Some(Json::Null) => Content::None,
        Some(Json::String(s)) => content_from_text(s),
        Some(Json::Array(children)) => {
            Content::Nodes(children.iter().map(|c| from_json_at(c, depth + 1)).collect::<Result<_, _>>()?)
        }
        Some(Json::Object(o)) if o.len() == 1 => {
            let b64 =
                o.get("bytes_b64").and_then(Json::as_str).ok_or_else(|| bad("byte content is {\"bytes_b64\": str}"))?;
            Content::Bytes(B64.decode(b64)?)
        }
        Some(_) => return Err(bad("\"content\" must be null, a string, {\"bytes_b64\": str} or an array of nodes")),
    };
    Ok(node)
}
