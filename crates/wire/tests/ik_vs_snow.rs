//! IK against snow's stock `Noise_IK_25519_AESGCM_SHA256`, both roles.
//!
//! Every IK step encrypts under a key, so WhatsApp's one deviation (no `MixHash` of a payload
//! sent before any key) never applies: our WhatsApp-flavour IK must be stock IK, with equal
//! handshake hashes and working transport. Our messages are `HandshakeMessage` protobufs; snow's
//! are the raw concatenation (`e || Enc(s) || Enc(payload)`, then `e || Enc(payload)`), which is
//! how consonance builds its IK ClientHello from dissononce's output (32, 48, rest).

use bytes::BytesMut;
use prost::Message;
use wire::noise::{
    Flavour, IkInitiator, IkServerHello, ServerStart, StaticKeypair, WA_CONN_HEADER, accept_client_hello,
};
use wire::proto::{ClientHello, HandshakeMessage, ServerHello};

const PATTERN: &str = "Noise_IK_25519_AESGCM_SHA256";
const CERT: &[u8] = b"an encoded CertChain would go here";
const LOGIN: &[u8] = b"an encoded ClientPayload would go here";

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).unwrap();
    k
}

fn snow_builder(private: &[u8; 32]) -> snow::Builder<'_> {
    snow::Builder::new(PATTERN.parse().unwrap()).prologue(&WA_CONN_HEADER).unwrap().local_private_key(private).unwrap()
}

#[test]
fn our_ik_initiator_completes_against_snow_responder() {
    for _ in 0..4 {
        let (i_priv, r_priv) = (random_key(), random_key());
        let i_key = StaticKeypair::from_private(&i_priv).unwrap();
        let r_pub = StaticKeypair::from_private(&r_priv).unwrap().public();
        let mut snow_r = snow_builder(&r_priv).build_responder().unwrap();
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
        let mut snow_i = snow_builder(&i_priv).remote_public_key(&r_key.public()).unwrap().build_initiator().unwrap();
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
