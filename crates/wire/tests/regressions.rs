//! Inputs the fuzzers found, kept as tests. Each must decode to an error or to a node that
//! re-encodes to a fixed point.

use wire::decode::{DecodeError, decode};
use wire::encode::encode;

/// Every accepted input re-encodes to bytes that decode to the same node.
fn assert_fixed_point(input: &[u8]) -> Result<(), DecodeError> {
    let node = decode(input)?;
    let bytes = encode(&node).expect("a decoded node encodes");
    assert_eq!(decode(&bytes).expect("canonical bytes decode"), node);
    Ok(())
}

#[test]
fn empty_packed_string_is_refused() {
    // decode_payload crash-f08713ee: content NIBBLE_8 (body offset 3) whose zero-length header
    // (offset 4) read as Str(""),
    // which re-encodes as raw bytes.
    let input = [0x00, 0xf8, 0x02, 0x02, 0xff, 0x00];
    assert_eq!(assert_fixed_point(&input), Err(DecodeError::InvalidPacked { offset: 4, byte: 0 }));
    assert!(matches!(
        assert_fixed_point(&[0x00, 0xf8, 0x02, 0x02, 0xfb, 0x80]),
        Err(DecodeError::InvalidPacked { .. })
    ));
}

#[test]
fn packed_strings_longer_than_encoders_write_are_refused() {
    // decode_payload crash-7a2fdd4d (found in a 10-million-run campaign): content HEX_8 with 70
    // packed bytes (140 characters) decoded as Str, but encoders pack at most 127 characters, so
    // it re-encoded raw and decoded as Bytes.
    let input = [
        0x00, 0xf8, 0x04, 0x40, 0x0f, 0x04, 0xfb, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46,
        0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46,
        0x46, 0x46, 0x46, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x02, 0x46, 0x46,
        0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x46, 0x44, 0x46, 0x46, 0x46, 0x46, 0x07, 0x66,
        0x20, 0x6d, 0x6d, 0x73, 0x6f, 0x70,
    ];
    assert_eq!(assert_fixed_point(&input), Err(DecodeError::PackedTooLong { offset: 6, chars: 140 }));
    // 127 characters (64 bytes, the last one padded) is the longest packed string encoders write.
    let mut longest = vec![0x00, 0xf8, 0x02, 0x0f, 0xfb, 0xc0];
    longest.extend([0x46; 63]);
    longest.push(0x4f);
    assert!(assert_fixed_point(&longest).is_ok());
}

/// `<message to=JID/>` with every string raw (BINARY_8), the JID written by `jid_bytes`.
fn message_to(jid_bytes: &[u8]) -> Vec<u8> {
    fn raw(s: &str) -> Vec<u8> {
        let mut v = vec![0xfc, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }
    let mut v = vec![0x00, 0xf8, 0x03];
    v.extend(raw("message"));
    v.extend(raw("to"));
    v.extend_from_slice(jid_bytes);
    v
}

fn jid_pair(user: &str, server: &str) -> Vec<u8> {
    let mut v = vec![0xfa, 0xfc, user.len() as u8];
    v.extend_from_slice(user.as_bytes());
    v.extend([0xfc, server.len() as u8]);
    v.extend_from_slice(server.as_bytes());
    v
}

fn to_of(input: &[u8]) -> wire::Jid {
    let node = decode(input).expect("decodes");
    node.attrs.iter().find(|(k, _)| k == "to").and_then(|(_, v)| v.as_jid()).cloned().expect("a JID")
}

#[test]
fn interop_jid_pair_from_web_clients_is_the_interop_account() {
    // Issue 13: Baileys writes `1-10853634039893@interop` as JID_PAIR(user "1-10853634039893",
    // server "interop"); it was read as integrator 0 with user "1-10853634039893".
    let input = message_to(&jid_pair("1-10853634039893", "interop"));
    assert_eq!(to_of(&input), wire::Jid::interop(1, "10853634039893", 0));
    assert_eq!(to_of(&input).to_string(), "1-10853634039893@interop");
    assert!(assert_fixed_point(&input).is_ok());
    // Re-encoded, it is an INTEROP_JID (tag 245), never a pair again.
    let bytes = encode(&decode(&input).unwrap()).unwrap();
    assert!(bytes.contains(&wire::dict::tag::INTEROP_JID));
    // The same account as the INTEROP_JID form, with and without the trailing server.
    let mut tagged = vec![0xf5, 0xfc, 14];
    tagged.extend_from_slice(b"10853634039893");
    tagged.extend([0, 0, 0, 1]);
    assert_eq!(to_of(&message_to(&tagged)), wire::Jid::interop(1, "10853634039893", 0));
    tagged.extend([0xfc, 7]);
    tagged.extend_from_slice(b"interop");
    assert_eq!(to_of(&message_to(&tagged)), wire::Jid::interop(1, "10853634039893", 0));
}

#[test]
fn interop_jid_pairs_that_are_not_integrator_number_are_kept_whole() {
    for user in ["abc", "01-42", "1-042", "1-", "-42", "70000-42", "1-4a", "1-2-3"] {
        let input = message_to(&jid_pair(user, "interop"));
        let jid = to_of(&input);
        assert_eq!((jid.integrator, jid.user.as_str(), jid.device), (0, user, 0), "{user}");
        assert!(assert_fixed_point(&input).is_ok(), "{user}");
    }
    // Only on `interop`: a pair on s.whatsapp.net keeps its user.
    let jid = to_of(&message_to(&jid_pair("1-42", "s.whatsapp.net")));
    assert_eq!((jid.server, jid.user.as_str(), jid.integrator), (wire::Server::Whatsapp, "1-42", 0));
}

#[test]
fn device_qualified_interop_jid_as_ad_jid_is_the_interop_device() {
    // Baileys writes `1-42:3@interop` as AD_JID(domain 0, device 3, user "1-42"): the server is lost.
    let mut ad = vec![0xf7, 0, 3, 0xfc, 4];
    ad.extend_from_slice(b"1-42");
    let input = message_to(&ad);
    assert_eq!(to_of(&input), wire::Jid::interop(1, "42", 3));
    assert!(assert_fixed_point(&input).is_ok());
    // A phone-number AD_JID and an agent byte are untouched.
    let mut phone = vec![0xf7, 0, 3, 0xfc, 4];
    phone.extend_from_slice(b"1442");
    assert_eq!(to_of(&message_to(&phone)), wire::Jid::with_device("1442", wire::Server::Whatsapp, 3));
    let mut agent = vec![0xf7, 2, 3, 0xfc, 4];
    agent.extend_from_slice(b"1-42");
    assert_eq!(to_of(&message_to(&agent)).server, wire::Server::Whatsapp);
}
