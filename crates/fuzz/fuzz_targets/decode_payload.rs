//! The stanza decoder on arbitrary payloads: it must return, never panic or run away, and whatever
//! it accepts must re-encode to bytes that decode to the same node (the encoder is canonical, so
//! the re-encoded bytes are a fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::decode::Decoder;
use wire::encode::{EncodeError, encode};
use wire::text::{XmlStyle, to_json, to_xml};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::default();
    let Ok(node) = decoder.decode_payload(data).map(|n| n.to_owned()) else { return };
    let _ = to_xml(&node, XmlStyle::Pretty);
    let _ = to_json(&node, false);
    // Everything decoded re-encodes, except a zlib payload whose plain form passes the frame limit.
    match encode(&node) {
        Ok(bytes) => {
            let again = Decoder::default().decode_payload(&bytes).expect("canonical bytes decode").to_owned();
            assert_eq!(again, node, "decode(encode(decode(x))) != decode(x)");
            assert_eq!(encode(&again).expect("re-encodes"), bytes, "canonical bytes are a fixed point");
        }
        Err(e) => assert!(matches!(e, EncodeError::PayloadTooLarge { .. }), "{e}"),
    }
});
