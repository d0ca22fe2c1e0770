//! The seed document's binary example, as the conformance vector in ../shared/vectors.

use wire::decode::{DecodeError, decode};
use wire::encode::encode;
use wire::text::{XmlStyle, from_xml, to_xml};
use wire::{Content, Jid, Server, Value};

const VECTOR: &str = include_str!("vectors/seed-message.json");

fn field(name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
    v[name].as_str().unwrap_or_else(|| panic!("vector field {name}")).to_owned()
}

fn hex(name: &str) -> Vec<u8> {
    hex::decode(field(name)).unwrap()
}

#[test]
fn the_repo_copy_matches_the_shared_vector() {
    // CI and developer checkouts have ../shared beside the repo; a bare clone does not.
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors/seed-message.json");
    match std::fs::read_to_string(shared) {
        Ok(s) => assert_eq!(s, VECTOR, "tests/vectors/seed-message.json is stale"),
        Err(e) => eprintln!("shared vectors not present ({e}); using the repo copy"),
    }
}

#[test]
fn encoding_the_xml_gives_the_canonical_bytes() {
    let node = from_xml(&field("xml")).unwrap();
    assert_eq!(hex::encode(encode(&node).unwrap()), field("canonical_hex"));
}

#[test]
fn both_byte_forms_decode_to_the_same_node() {
    let canonical = decode(&hex("canonical_hex")).unwrap();
    let seed_form = decode(&hex("seed_form_hex")).unwrap();
    assert_eq!(canonical, seed_form);
    assert_eq!(canonical, from_xml(&field("xml")).unwrap().with_raw_body());
    assert_eq!(canonical.tag, "message");
    assert_eq!(canonical.get("to"), Some(&Value::Jid(Jid::new("14155551001", Server::Whatsapp))));
    assert_eq!(canonical.get_str("id"), Some("123456"));
    assert_eq!(canonical.child("body").unwrap().content, Content::Bytes(b"Body text of message.".to_vec()));
}

#[test]
fn the_printed_seed_bytes_are_rejected_with_a_clear_error() {
    let body = hex("seed_as_printed_hex_without_flags");
    let mut printed = vec![0u8];
    printed.extend(&body);
    let err = decode(&printed).unwrap_err();
    // Offsets count from the start of the node body: "essage." is the last 7 bytes.
    let offset = body.len() - 7;
    assert_eq!(&body[offset..], b"essage.");
    assert_eq!(err, DecodeError::TrailingBytes { offset, remaining: 7 });
    assert_eq!(err.to_string(), format!("7 bytes left over after the node, from byte {offset}"));
    // Without the flags byte the first byte is taken as flags and refused.
    assert!(decode(&hex("seed_as_printed_hex_without_flags")).is_err());
}

#[test]
fn decoded_seed_prints_back_as_the_seed_xml() {
    let node = decode(&hex("canonical_hex")).unwrap();
    let xml = to_xml(&node, XmlStyle::Compact);
    assert_eq!(
        xml,
        r#"<message to="14155551001@s.whatsapp.net" from="14155551000@s.whatsapp.net" id="123456" type="text" notify="joe"><body>Body text of message.</body></message>"#
    );
    assert_eq!(encode(&from_xml(&xml).unwrap()).unwrap(), hex("canonical_hex"));
}

trait RawBody {
    fn with_raw_body(self) -> Self;
}

impl RawBody for wire::Node {
    /// Text that is neither a token nor packable goes out raw and decodes as bytes.
    fn with_raw_body(mut self) -> Self {
        if let Content::Nodes(children) = &mut self.content {
            for c in children {
                if let Content::Str(s) = &c.content {
                    c.content = Content::Bytes(s.clone().into_bytes());
                }
            }
        }
        self
    }
}
