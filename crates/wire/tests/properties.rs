//! Property tests: canonical nodes of every content and JID kind survive encode -> decode (and the
//! text forms) unchanged, and the decoder returns an error rather than panicking on any bytes.

use proptest::prelude::*;
use wire::decode::{Decoder, decode};
use wire::dict::Dictionary;
use wire::encode::{EncodeOptions, Encoder, encode};
use wire::text::{XmlStyle, from_json, from_xml, to_json, to_xml};
use wire::{Content, Jid, Node, Server, Value};

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u8..=235).prop_map(|i| Dictionary::V3.single(i).unwrap().to_owned()),
        (0u8..4, any::<u8>()).prop_map(|(d, i)| Dictionary::V3.double(d, i).unwrap().to_owned()),
    ]
}

/// Strings the canonical encoder writes as a token or packed, so they decode as strings.
fn packed_or_token() -> impl Strategy<Value = String> {
    prop_oneof![token(), "[0-9.-]{1,127}", "[0-9A-F]{1,127}"]
}

/// Any string: tokens, packable and raw text (including non-ASCII), and long raw strings.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![4 => packed_or_token(), 4 => any::<String>(), 1 => "[a-z]{200,300}"]
}

fn xml_name() -> impl Strategy<Value = String> {
    prop_oneof![
        token().prop_filter("XML name", |s| s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
            && s.starts_with(|c: char| c.is_ascii_alphabetic())),
        "[a-z][a-z0-9_-]{0,12}"
    ]
}

fn user() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9]{1,20}", "[a-z0-9]{1,12}", token()]
}

fn jid() -> impl Strategy<Value = Jid> {
    let pair_servers = prop::sample::select(vec![
        Server::Whatsapp,
        Server::Lid,
        Server::Group,
        Server::Broadcast,
        Server::Newsletter,
        Server::Legacy,
        Server::Bot,
        Server::Call,
    ]);
    let agent = any::<u8>().prop_filter("agent", |a| !matches!(a, 1 | 128 | 129));
    prop_oneof![
        // JID_PAIR, including the empty-user server JID.
        (prop_oneof![Just(String::new()), user()], pair_servers).prop_map(|(u, s)| Jid::new(u, s)),
        // AD_JID on s.whatsapp.net (with agent), lid, hosted and hosted.lid.
        (user(), 1u16..=255, agent).prop_map(|(u, d, a)| Jid { agent: a, ..Jid::with_device(u, Server::Whatsapp, d) }),
        (user(), 1u16..=255).prop_map(|(u, d)| Jid::with_device(u, Server::Lid, d)),
        (user(), 0u16..=255, prop::sample::select(vec![Server::Hosted, Server::HostedLid]))
            .prop_map(|(u, d, s)| Jid::with_device(u, s, d)),
        // FB_JID and INTEROP_JID.
        (user(), any::<u16>()).prop_map(|(u, d)| Jid::with_device(u, Server::Messenger, d)),
        (any::<u16>(), user(), any::<u16>()).prop_map(|(i, u, d)| Jid::interop(i, u, d)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![any_string().prop_map(Value::Str), jid().prop_map(Value::Jid)]
}

/// Canonical nodes: what decoding canonical bytes yields.
fn node_with(
    name: BoxedStrategy<String>,
    value: BoxedStrategy<Value>,
    jid: BoxedStrategy<Jid>,
) -> impl Strategy<Value = Node> {
    let leaf_content = prop_oneof![
        Just(Content::None),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Content::Bytes),
        packed_or_token().prop_map(Content::Str),
        jid.prop_map(Content::Jid),
        Just(Content::Nodes(Vec::new())),
    ];
    let attrs = prop::collection::vec((name.clone(), value), 0..6);
    let leaf =
        (name.clone(), attrs.clone(), leaf_content).prop_map(|(tag, attrs, content)| Node { tag, attrs, content });
    leaf.prop_recursive(5, 64, 8, move |inner| {
        (name.clone(), attrs.clone(), prop::collection::vec(inner, 1..8)).prop_map(|(tag, attrs, children)| Node {
            tag,
            attrs,
            content: Content::Nodes(children),
        })
    })
}

fn node() -> impl Strategy<Value = Node> {
    node_with(any_string().boxed(), value().boxed(), jid().boxed())
}

/// Nodes whose text form is exact: XML names, and string values that do not read as JIDs.
fn text_node() -> impl Strategy<Value = Node> {
    // A user part holding ':', '.', '-' or '@' prints as text that parses as another JID.
    let jid = jid().prop_filter("text form parses back", |j| Jid::parse(&j.to_string()).as_ref() == Ok(j)).boxed();
    let value = prop_oneof![
        any_string().prop_filter("not a JID", |s| Jid::parse(s).is_err()).prop_map(Value::Str),
        jid.clone().prop_map(Value::Jid),
    ];
    node_with(xml_name().boxed(), value.boxed(), jid)
        .prop_map(unique_keys)
        .prop_filter("string content that reads as a JID", no_jid_like_text)
}

/// Text forms type `s.whatsapp.net` and the like as JIDs, by design.
fn no_jid_like_text(n: &Node) -> bool {
    match &n.content {
        Content::Str(s) => Jid::parse(s).is_err(),
        Content::Nodes(children) => children.iter().all(no_jid_like_text),
        _ => true,
    }
}

/// XML and JSON objects cannot repeat a key (the binary format can): keep the first of each.
fn unique_keys(mut n: Node) -> Node {
    let mut seen = std::collections::HashSet::new();
    n.attrs.retain(|(k, _)| seen.insert(k.clone()));
    if let Content::Nodes(children) = n.content {
        n.content = Content::Nodes(children.into_iter().map(unique_keys).collect());
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(n in node()) {
        let bytes = encode(&n).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), n.clone());
        let mut compressed = Vec::new();
        Encoder::new(&Dictionary::V3, EncodeOptions { compress: true }).encode_payload(&n, &mut compressed).unwrap();
        prop_assert_eq!(compressed[0], 0x02);
        prop_assert_eq!(decode(&compressed).unwrap(), n);
    }

    #[test]
    fn borrowed_view_agrees_with_owned(n in node()) {
        let bytes = encode(&n).unwrap();
        let mut decoder = Decoder::default();
        let root = decoder.decode_payload(&bytes).unwrap();
        prop_assert_eq!(root.tag(), n.tag.as_str());
        prop_assert_eq!(root.attrs().len(), n.attrs.len());
        prop_assert_eq!(root.children().len(), n.child_nodes().len());
        for (k, v) in &n.attrs {
            prop_assert_eq!(root.attr(k).map(|v| v.to_owned()), n.get(k).cloned(), "{} = {}", k, v);
        }
    }

    #[test]
    fn xml_and_json_forms_are_exact(n in text_node()) {
        for style in [XmlStyle::Compact, XmlStyle::Pretty] {
            let xml = to_xml(&n, style);
            let back = from_xml(&xml).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
            prop_assert_eq!(encode(&back).unwrap(), encode(&n).unwrap(), "{}", xml);
        }
        let json = to_json(&n, false);
        prop_assert_eq!(encode(&from_json(&json).unwrap()).unwrap(), encode(&n).unwrap(), "{}", json);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let mut d = Decoder::default();
        let _ = d.decode_node(&bytes).map(|n| n.to_owned());
    }

    #[test]
    fn decoder_never_panics_on_mutated_stanzas(n in node(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
        let mut bytes = encode(&n).unwrap();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode(&bytes).map(|n| to_xml(&n, XmlStyle::Pretty));
        let end = cut.index(bytes.len() + 1);
        let _ = decode(&bytes[..end]);
    }

    /// Issue 13: an interop JID reads as one account however a client writes it: INTEROP_JID, a
    /// JID_PAIR `{integrator}-{number}@interop` (packed or raw), or (with a device) an AD_JID of
    /// domain 0 with user `{integrator}-{number}`; each decode is a fixed point of encode.
    #[test]
    fn interop_jid_spellings_agree(integrator in any::<u16>(), number in any::<u64>(), device in any::<u8>(), packed in any::<bool>()) {
        let want = Jid::interop(integrator, number.to_string(), u16::from(device));
        let user = format!("{integrator}-{number}");
        let user_bytes = if packed {
            // NIBBLE_8: digits are 0-9, '-' is 10; odd lengths end with the 0xF filler.
            let nib: Vec<u8> = user.bytes().map(|b| if b == b'-' { 10 } else { b - b'0' }).collect();
            let mut v = vec![0xff, (nib.len().div_ceil(2) as u8) | if nib.len() % 2 == 1 { 0x80 } else { 0 }];
            v.extend(nib.chunks(2).map(|c| c[0] << 4 | c.get(1).copied().unwrap_or(0x0f)));
            v
        } else {
            let mut v = vec![0xfc, user.len() as u8];
            v.extend_from_slice(user.as_bytes());
            v
        };
        let mut jid_bytes = Vec::new();
        if device == 0 {
            jid_bytes.push(0xfa);
            jid_bytes.extend(&user_bytes);
            jid_bytes.extend([0xfc, 7]);
            jid_bytes.extend_from_slice(b"interop");
        } else {
            jid_bytes.extend([0xf7, 0, device]);
            jid_bytes.extend(&user_bytes);
        }
        let mut input = vec![0x00, 0xf8, 0x03, 0xfc, 7];
        input.extend_from_slice(b"message");
        input.extend([0xfc, 2]);
        input.extend_from_slice(b"to");
        input.extend(jid_bytes);
        let node = decode(&input).unwrap();
        prop_assert_eq!(node.attrs[0].1.as_jid(), Some(&want));
        let again = decode(&encode(&node).unwrap()).unwrap();
        prop_assert_eq!(again, node.clone());
        prop_assert_eq!(decode(&encode(&Node::new("message").attr("to", want)).unwrap()).unwrap(), node);
    }
}
