//! Conformance against snow, an independent Noise implementation.
//!
//! With `Flavour::Standard` our handshake must interoperate with snow's stock
//! `Noise_XX_25519_AESGCM_SHA256` in both roles (same prologue, same static keys), with equal
//! handshake hashes after every message and working transport both ways. With
//! `Flavour::WhatsApp` it must fail at the first message that uses the hash as AEAD data, and the
//! hashes after message 1 must differ by exactly one `MixHash("")`: the only deviation.
//!
//! Messages use the raw (unwrapped) forms, and transport messages stay under snow's 65535-byte
//! cap.
//!
//! IK against snow's stock `Noise_IK_25519_AESGCM_SHA256`, both roles: every IK step encrypts
//! under a key, so WhatsApp's one deviation (no `MixHash` of a payload sent before any key) never
//! applies: our WhatsApp-flavour IK must be stock IK, with equal handshake hashes and working
//! transport. Our messages are `HandshakeMessage` protobufs; snow's are the raw concatenation
//! (`e || Enc(s) || Enc(payload)`, then `e || Enc(payload)`), which is how consonance builds its
//! IK ClientHello from dissononce's output (32, 48, rest).

use aws_lc_rs::digest::{SHA256, digest};
use bytes::BytesMut;
use prost::Message;
use wire::noise::{
    Flavour, HandshakeStage, IkInitiator, IkServerHello, Initiator, NoiseError, Responder, ServerStart, StaticKeypair,
    TAG_LEN, Transport, WA_CONN_HEADER, accept_client_hello,
};
use wire::proto::{ClientHello, HandshakeMessage, ServerHello};

const XX: &str = "Noise_XX_25519_AESGCM_SHA256";
const IK: &str = "Noise_IK_25519_AESGCM_SHA256";
/// snow's limit: 65535 bytes per message including the tag.
const SNOW_MAX_PAYLOAD: usize = 65535 - TAG_LEN;
const CERT: &[u8] = b"an encoded CertChain would go here";
const LOGIN: &[u8] = b"an encoded ClientPayload would go here";

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).unwrap();
    k
}

fn snow_builder<'a>(pattern: &str, private: &'a [u8; 32]) -> snow::Builder<'a> {
    snow::Builder::new(pattern.parse().unwrap()).prologue(&WA_CONN_HEADER).unwrap().local_private_key(private).unwrap()
}

/// `SHA-256(h || "")`: what a stock `MixHash` of an empty payload does to `h`.
fn mix_empty(h: &[u8]) -> Vec<u8> {
    digest(&SHA256, h).as_ref().to_vec()
}

fn transport_both_ways(ours: &mut Transport, theirs: &mut snow::TransportState) {
    let mut buf = vec![0u8; 65535];
    for (n, len) in [0usize, 1, 17, 1500, 16 * 1024, SNOW_MAX_PAYLOAD].into_iter().enumerate() {
        let plain: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();

        let mut frame = BytesMut::with_capacity(len + TAG_LEN);
        frame.extend_from_slice(&plain);
        ours.seal(&mut frame).unwrap();
        let got = theirs.read_message(&frame, &mut buf).unwrap();
        assert_eq!(&buf[..got], &plain[..], "ours -> snow, {len} bytes");

        let sent = theirs.write_message(&plain, &mut buf).unwrap();
        assert_eq!(sent, len + TAG_LEN);
        assert_eq!(ours.open(&mut buf[..sent]).unwrap(), &plain[..], "snow -> ours, {len} bytes");
    }
    assert_eq!((ours.send_counter(), ours.recv_counter()), (6, 6));
}

#[test]
fn standard_initiator_completes_against_snow_responder() {
    for _ in 0..8 {
        let (i_priv, r_priv) = (random_key(), random_key());
        let i_key = StaticKeypair::from_private(&i_priv).unwrap();
        let r_pub = StaticKeypair::from_private(&r_priv).unwrap().public();
        let mut snow_r = snow_builder(XX, &r_priv).build_responder().unwrap();
        let mut ours = Initiator::new(i_key.clone(), Flavour::Standard).unwrap();
        let mut buf = vec![0u8; 65535];

        let m1 = ours.client_hello_raw().unwrap();
        assert_eq!(m1.len(), 32);
        assert_eq!(snow_r.read_message(&m1, &mut buf).unwrap(), 0);
        assert_eq!(snow_r.get_handshake_hash(), &ours.handshake_hash()[..], "after message 1");

        let len = snow_r.write_message(CERT, &mut buf).unwrap();
        let info = ours.read_server_hello_raw(&buf[..len]).unwrap();
        assert_eq!(info.server_static, r_pub);
        assert_eq!(info.cert_chain, CERT);
        assert_eq!(snow_r.get_handshake_hash(), &ours.handshake_hash()[..], "after message 2");

        let (m3, mut transport) = ours.client_finish_raw(LOGIN).unwrap();
        let len = snow_r.read_message(&m3, &mut buf).unwrap();
        assert_eq!(&buf[..len], LOGIN);
        assert_eq!(snow_r.get_remote_static(), Some(&i_key.public()[..]));
        assert_eq!(snow_r.get_handshake_hash(), &transport.handshake_hash()[..], "final");

        let mut snow_t = snow_r.into_transport_mode().unwrap();
        transport_both_ways(&mut transport, &mut snow_t);
    }
}

#[test]
fn snow_initiator_completes_against_standard_responder() {
    for _ in 0..8 {
        let (i_priv, r_priv) = (random_key(), random_key());
        let i_pub = StaticKeypair::from_private(&i_priv).unwrap().public();
        let r_key = StaticKeypair::from_private(&r_priv).unwrap();
        let mut snow_i = snow_builder(XX, &i_priv).build_initiator().unwrap();
        let mut ours = Responder::new(r_key.clone(), CERT.to_vec(), Flavour::Standard).unwrap();
        let mut buf = vec![0u8; 65535];

        let len = snow_i.write_message(&[], &mut buf).unwrap();
        ours.read_client_hello_raw(&buf[..len]).unwrap();
        assert_eq!(snow_i.get_handshake_hash(), &ours.handshake_hash()[..], "after message 1");

        let m2 = ours.server_hello_raw().unwrap();
        let len = snow_i.read_message(&m2, &mut buf).unwrap();
        assert_eq!(&buf[..len], CERT);
        assert_eq!(snow_i.get_remote_static(), Some(&r_key.public()[..]));
        assert_eq!(snow_i.get_handshake_hash(), &ours.handshake_hash()[..], "after message 2");

        let len = snow_i.write_message(LOGIN, &mut buf).unwrap();
        let done = ours.read_client_finish_raw(&buf[..len]).unwrap();
        assert_eq!(done.client_static, i_pub);
        assert_eq!(&done.client_payload[..], LOGIN);
        let mut transport = done.transport;
        assert_eq!(snow_i.get_handshake_hash(), &transport.handshake_hash()[..], "final");

        let mut snow_t = snow_i.into_transport_mode().unwrap();
        transport_both_ways(&mut transport, &mut snow_t);
    }
}

#[test]
fn whatsapp_initiator_fails_against_snow_exactly_at_the_message_1_hash() {
    let (i_priv, r_priv) = (random_key(), random_key());
    let mut snow_r = snow_builder(XX, &r_priv).build_responder().unwrap();
    let mut ours = Initiator::new(StaticKeypair::from_private(&i_priv).unwrap(), Flavour::WhatsApp).unwrap();
    let mut buf = vec![0u8; 65535];

    // Message 1 bytes are identical in both flavours, so snow accepts it...
    let m1 = ours.client_hello_raw().unwrap();
    assert_eq!(snow_r.read_message(&m1, &mut buf).unwrap(), 0);
    // ...but the hashes now differ by exactly snow's MixHash of the empty payload.
    let ours_h = ours.handshake_hash();
    assert_ne!(snow_r.get_handshake_hash(), &ours_h[..]);
    assert_eq!(snow_r.get_handshake_hash(), &mix_empty(&ours_h)[..]);

    // Message 2: the DH keys agree, but the AEAD's associated data (h) does not.
    let len = snow_r.write_message(CERT, &mut buf).unwrap();
    let err = ours.read_server_hello_raw(&buf[..len]).unwrap_err();
    assert!(matches!(err, NoiseError::Decrypt { stage: HandshakeStage::ServerHelloStatic }), "{err}");
}

#[test]
fn snow_initiator_fails_against_whatsapp_responder_exactly_at_the_message_1_hash() {
    let (i_priv, r_priv) = (random_key(), random_key());
    let mut snow_i = snow_builder(XX, &i_priv).build_initiator().unwrap();
    let mut ours =
        Responder::new(StaticKeypair::from_private(&r_priv).unwrap(), CERT.to_vec(), Flavour::WhatsApp).unwrap();
    let mut buf = vec![0u8; 65535];

    let len = snow_i.write_message(&[], &mut buf).unwrap();
    ours.read_client_hello_raw(&buf[..len]).unwrap();
    assert_eq!(snow_i.get_handshake_hash(), &mix_empty(&ours.handshake_hash())[..]);

    let m2 = ours.server_hello_raw().unwrap();
    let err = snow_i.read_message(&m2, &mut buf).unwrap_err();
    assert!(matches!(err, snow::Error::Decrypt), "{err:?}");
}

#[test]
fn our_ik_initiator_completes_against_snow_responder() {
    for _ in 0..4 {
        let (i_priv, r_priv) = (random_key(), random_key());
        let i_key = StaticKeypair::from_private(&i_priv).unwrap();
        let r_pub = StaticKeypair::from_private(&r_priv).unwrap().public();
        let mut snow_r = snow_builder(IK, &r_priv).build_responder().unwrap();
        let mut ours = IkInitiator::new(i_key.clone(), r_pub, Flavour::WhatsApp).unwrap();
        let mut buf = vec![0u8; 65535];

        let hello = HandshakeMessage::decode(&ours.client_hello(LOGIN).unwrap()[..]).unwrap().client_hello.unwrap();
        let raw = [hello.ephemeral.unwrap(), hello.r#static.unwrap(), hello.payload.unwrap()].concat();
        let len = snow_r.read_message(&raw, &mut buf).unwrap();
        assert_eq!(&buf[..len], LOGIN);
        assert_eq!(snow_r.get_remote_static(), Some(&i_key.public()[..]));
        assert_eq!(snow_r.get_handshake_hash(), &ours.handshake_hash()[..], "after message 1");

        let len = snow_r.write_message(CERT, &mut buf).unwrap();
        let (e, payload) = buf[..len].split_at(32);
        let hello = ServerHello { ephemeral: Some(e.to_vec()), r#static: None, payload: Some(payload.to_vec()) };
        let msg = HandshakeMessage { server_hello: Some(hello), ..Default::default() }.encode_to_vec();
        let IkServerHello::Accepted { mut transport, payload } = ours.read_server_hello(&msg).unwrap() else {
            panic!("no static: accepted")
        };
        assert_eq!(payload, CERT);
        assert_eq!(snow_r.get_handshake_hash(), &transport.handshake_hash()[..], "final");

        let mut snow_t = snow_r.into_transport_mode().unwrap();
        let mut frame = BytesMut::from(&b"from ours"[..]);
        transport.seal(&mut frame).unwrap();
        let len = snow_t.read_message(&frame, &mut buf).unwrap();
        assert_eq!(&buf[..len], b"from ours");
        let len = snow_t.write_message(b"from snow", &mut buf).unwrap();
        assert_eq!(transport.open(&mut buf[..len]).unwrap(), b"from snow");
    }
}

#[test]
fn snow_ik_initiator_is_accepted_by_our_responder() {
    for _ in 0..4 {
        let (i_priv, r_priv) = (random_key(), random_key());
        let i_pub = StaticKeypair::from_private(&i_priv).unwrap().public();
        let r_key = StaticKeypair::from_private(&r_priv).unwrap();
        let mut snow_i =
            snow_builder(IK, &i_priv).remote_public_key(&r_key.public()).unwrap().build_initiator().unwrap();
        let mut buf = vec![0u8; 65535];

        let len = snow_i.write_message(LOGIN, &mut buf).unwrap();
        assert_eq!(len, 32 + 48 + LOGIN.len() + 16);
        let (e, rest) = buf[..len].split_at(32);
        let (s, payload) = rest.split_at(48);
        let hello =
            ClientHello { ephemeral: Some(e.to_vec()), r#static: Some(s.to_vec()), payload: Some(payload.to_vec()) };
        let msg = HandshakeMessage { client_hello: Some(hello), ..Default::default() }.encode_to_vec();
        let ServerStart::Resumed(resumed) = accept_client_hello(r_key, CERT.to_vec(), Flavour::WhatsApp, &msg).unwrap()
        else {
            panic!("snow encrypted to our key: accepted")
        };
        assert_eq!(resumed.finished.client_static, i_pub);
        assert_eq!(&resumed.finished.client_payload[..], LOGIN);

        let hello = HandshakeMessage::decode(&resumed.server_hello[..]).unwrap().server_hello.unwrap();
        assert!(hello.r#static.is_none());
        let raw = [hello.ephemeral.unwrap(), hello.payload.unwrap()].concat();
        let len = snow_i.read_message(&raw, &mut buf).unwrap();
        assert_eq!(&buf[..len], CERT);
        let mut transport = resumed.finished.transport;
        assert_eq!(snow_i.get_handshake_hash(), &transport.handshake_hash()[..], "final");

        let mut snow_t = snow_i.into_transport_mode().unwrap();
        let len = snow_t.write_message(b"from snow", &mut buf).unwrap();
        assert_eq!(transport.open(&mut buf[..len]).unwrap(), b"from snow");
        let mut frame = BytesMut::from(&b"from ours"[..]);
        transport.seal(&mut frame).unwrap();
        let len = snow_t.read_message(&frame, &mut buf).unwrap();
        assert_eq!(&buf[..len], b"from ours");
    }
}
