//! End-to-end: WhatsApp-flavour initiator <-> responder over an in-memory pipe with the real
//! framing and a simulator-issued certificate chain, plus every failure a peer or a careless
//! caller can cause.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Framed, FramedRead, FramedWrite};
use wire::cert::{CertError, CertIssuer, CertVerifier, ChainParams, VerifiedChain};
use wire::frame::{FrameCodec, MAX_FRAME_LEN};
use wire::noise::{
    ClientFinished, Flavour, HandshakeStage, Initiator, MAX_PLAINTEXT_LEN, NoiseError, RecvCipher, Responder,
    SendCipher, StaticKeypair, TAG_LEN, Transport, WA_CONN_HEADER,
};
use wire::proto::{AppVersion, ClientPayload, HandshakeMessage, Product};
use wire::testing::TestServer;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// A simulated chatd identity, valid now.
fn server() -> TestServer {
    TestServer::generate(now())
}

fn login() -> Vec<u8> {
    ClientPayload::interop_login(10853634039893, b"eyJhbGciOiJSUzI1NiJ9.test.sig".to_vec(), AppVersion::new(1, 0, 0))
        .encode_to_vec()
}

fn initiator() -> Initiator {
    Initiator::new(StaticKeypair::generate().unwrap(), Flavour::WhatsApp).unwrap()
}

/// Runs messages 1 and 2: returns the initiator (waiting for the ServerHello), the ServerHello
/// bytes and the responder (waiting for the ClientFinish).
fn up_to_server_hello(srv: &TestServer) -> (Initiator, Vec<u8>, Responder) {
    let mut i = initiator();
    let mut r = srv.responder();
    r.read_client_hello(&i.client_hello().unwrap()).unwrap();
    let hello = r.server_hello().unwrap();
    (i, hello, r)
}

/// The whole handshake without I/O: the client's transport and what the server got.
fn handshake(srv: &TestServer, payload: &[u8]) -> (Transport, ClientFinished) {
    let (mut i, hello, r) = up_to_server_hello(srv);
    i.read_server_hello_verified(&hello, &CertVerifier::new(srv.root), now()).unwrap();
    let (finish, transport) = i.client_finish(payload).unwrap();
    (transport, r.read_client_finish(&finish).unwrap())
}

fn sealed(t: &mut Transport, plain: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(plain.len() + TAG_LEN);
    buf.extend_from_slice(plain);
    t.seal(&mut buf).unwrap();
    buf
}

/// An edit of one field of a handshake message.
type Tamper = fn(&mut HandshakeMessage);

/// Decodes a handshake message, edits it, re-encodes it.
fn edit(msg: &[u8], f: impl FnOnce(&mut HandshakeMessage)) -> Vec<u8> {
    let mut m = HandshakeMessage::decode(msg).unwrap();
    f(&mut m);
    m.encode_to_vec()
}

async fn client_side(
    mut io: DuplexStream,
    root: [u8; 32],
    payload: Vec<u8>,
) -> (Transport, VerifiedChain, Framed<DuplexStream, FrameCodec>) {
    let mut i = initiator();
    // The header goes raw, before the first frame.
    io.write_all(&WA_CONN_HEADER).await.unwrap();
    let mut framed = Framed::new(io, FrameCodec::new());
    framed.send(i.client_hello().unwrap()).await.unwrap();
    let server_hello = framed.next().await.unwrap().unwrap();
    let chain = i.read_server_hello_verified(&server_hello, &CertVerifier::new(root), now()).unwrap();
    let (finish, transport) = i.client_finish(&payload).unwrap();
    framed.send(finish).await.unwrap();
    (transport, chain, framed)
}

async fn server_side(mut io: DuplexStream, srv: &TestServer) -> (ClientFinished, Framed<DuplexStream, FrameCodec>) {
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await.unwrap();
    assert_eq!(header, WA_CONN_HEADER, "the client must open with the WA header");
    let mut framed = Framed::new(io, FrameCodec::new());
    let mut r = srv.responder();
    r.read_client_hello(&framed.next().await.unwrap().unwrap()).unwrap();
    framed.send(r.server_hello().unwrap()).await.unwrap();
    let finish = framed.next().await.unwrap().unwrap();
    (r.read_client_finish(&finish).unwrap(), framed)
}

#[tokio::test]
async fn handshake_over_a_pipe_then_transport_both_ways() {
    let srv = server();
    let payload = login();
    let (client_io, server_io) = tokio::io::duplex(16 * 1024);
    let ((mut ct, chain, mut c_io), (finished, mut s_io)) =
        tokio::join!(client_side(client_io, srv.root, payload.clone()), server_side(server_io, &srv));

    assert_eq!((chain.intermediate.serial, chain.leaf.serial, chain.leaf.key), (1, 2, srv.key.public()));
    assert_eq!(&finished.client_payload[..], &payload[..]);
    assert_eq!(ClientPayload::decode(&finished.client_payload[..]).unwrap().product(), Product::Interop);
    assert!(!format!("{finished:?}").contains("eyJ"), "the token stays out of Debug");
    let mut st = finished.transport;
    assert_eq!(ct.handshake_hash(), st.handshake_hash());

    for n in 0..5u64 {
        let up = format!("stanza up {n}");
        c_io.send(sealed(&mut ct, up.as_bytes())).await.unwrap();
        let mut frame = s_io.next().await.unwrap().unwrap();
        assert_eq!(st.open(&mut frame).unwrap(), up.as_bytes());

        let down = format!("stanza down {n}");
        s_io.send(sealed(&mut st, down.as_bytes())).await.unwrap();
        let mut frame = c_io.next().await.unwrap().unwrap();
        assert_eq!(ct.open(&mut frame).unwrap(), down.as_bytes());

        assert_eq!([ct.send_counter(), ct.recv_counter(), st.send_counter(), st.recv_counter()], [n + 1; 4]);
    }
}

async fn write_frames(mut tx: SendCipher, io: impl AsyncWrite + Unpin, tag: &'static str, count: u64) -> u64 {
    let mut sink = FramedWrite::new(io, FrameCodec::new());
    for n in 0..count {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(format!("{tag} {n}").as_bytes());
        tx.seal(&mut buf).unwrap();
        sink.send(buf).await.unwrap();
    }
    tx.counter()
}

async fn read_frames(mut rx: RecvCipher, io: impl AsyncRead + Unpin, tag: &'static str, count: u64) -> u64 {
    let mut stream = FramedRead::new(io, FrameCodec::new());
    for n in 0..count {
        let mut frame = stream.next().await.unwrap().unwrap();
        assert_eq!(rx.open(&mut frame).unwrap(), format!("{tag} {n}").as_bytes());
    }
    rx.counter()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_serve_separate_reader_and_writer_tasks() {
    const N: u64 = 300;
    let srv = server();
    let (ct, finished) = handshake(&srv, &login());
    let (c_send, c_recv) = ct.split();
    let (s_send, s_recv) = finished.transport.split();
    let (client_io, server_io) = tokio::io::duplex(4 * 1024);
    let (c_read, c_write) = tokio::io::split(client_io);
    let (s_read, s_write) = tokio::io::split(server_io);
    let tasks = [
        tokio::spawn(write_frames(c_send, c_write, "up", N)),
        tokio::spawn(read_frames(s_recv, s_read, "up", N)),
        tokio::spawn(write_frames(s_send, s_write, "down", N)),
        tokio::spawn(read_frames(c_recv, c_read, "down", N)),
    ];
    for task in tasks {
        assert_eq!(task.await.unwrap(), N);
    }
}

#[test]
fn replayed_and_reordered_frames_fail_to_open() {
    let srv = server();
    let (mut ct, finished) = handshake(&srv, &login());
    let mut st = finished.transport;

    let first = sealed(&mut ct, b"first");
    let second = sealed(&mut ct, b"second");

    // Reordered: the second frame arrives first and fails; nothing advances.
    let mut early = second.clone();
    assert!(matches!(st.open(&mut early), Err(NoiseError::Open { counter: 0 })));
    assert_eq!(st.recv_counter(), 0);

    let mut f = first.clone();
    assert_eq!(st.open(&mut f).unwrap(), b"first");
    // Replayed: the first frame again.
    let mut replay = first.clone();
    assert!(matches!(st.open(&mut replay), Err(NoiseError::Open { counter: 1 })));
    let mut f = second.clone();
    assert_eq!(st.open(&mut f).unwrap(), b"second");
    assert_eq!(st.recv_counter(), 2);
}

#[test]
fn tampered_transport_frame_is_rejected() {
    let srv = server();
    let (mut ct, finished) = handshake(&srv, &login());
    let mut st = finished.transport;
    let frame = sealed(&mut ct, b"<iq type='get'/>");
    for i in [0, 7, frame.len() - TAG_LEN, frame.len() - 1] {
        let mut bad = frame.clone();
        bad[i] ^= 0x01;
        let err = st.open(&mut bad).unwrap_err();
        assert!(matches!(err, NoiseError::Open { counter: 0 }), "{err}");
    }
    let mut short = BytesMut::from(&frame[..TAG_LEN - 1]);
    assert!(matches!(st.open(&mut short), Err(NoiseError::FrameTooShort { len: 15 })));
    // Directions use different keys: a client frame does not open on the client.
    let mut own = frame.clone();
    assert!(matches!(ct.open(&mut own), Err(NoiseError::Open { .. })));
    let mut good = frame.clone();
    assert_eq!(st.open(&mut good).unwrap(), b"<iq type='get'/>");
}

#[test]
fn tampered_server_hello_is_rejected() {
    let srv = server();
    let cases: [(&str, Tamper, HandshakeStage); 3] = [
        (
            "ephemeral",
            |m| m.server_hello.as_mut().unwrap().ephemeral.as_mut().unwrap()[3] ^= 1,
            HandshakeStage::ServerHelloStatic,
        ),
        (
            "static",
            |m| m.server_hello.as_mut().unwrap().r#static.as_mut().unwrap()[10] ^= 1,
            HandshakeStage::ServerHelloStatic,
        ),
        (
            "payload",
            |m| m.server_hello.as_mut().unwrap().payload.as_mut().unwrap()[0] ^= 1,
            HandshakeStage::ServerHelloPayload,
        ),
    ];
    for (what, tamper, stage) in cases {
        let (mut i, hello, _) = up_to_server_hello(&srv);
        let err = i.read_server_hello(&edit(&hello, tamper)).unwrap_err();
        assert!(matches!(err, NoiseError::Decrypt { stage: s } if s == stage), "{what}: {err}");
        // A failed initiator stays failed.
        assert!(matches!(i.client_finish(b""), Err(NoiseError::OutOfOrder { call: "client_finish", .. })));
    }

    let (mut i, hello, _) = up_to_server_hello(&srv);
    let err = i.read_server_hello(&hello[..hello.len() - 1]).unwrap_err();
    assert!(matches!(err, NoiseError::Protobuf { message: "ServerHello", .. }), "{err}");

    let (mut i, hello, _) = up_to_server_hello(&srv);
    let no_payload = edit(&hello, |m| m.server_hello.as_mut().unwrap().payload = None);
    assert!(matches!(
        i.read_server_hello(&no_payload),
        Err(NoiseError::MissingField { message: "ServerHello", field: "payload" })
    ));
}

#[test]
fn tampered_client_finish_is_rejected() {
    let srv = server();
    let cases: [(&str, Tamper, HandshakeStage); 2] = [
        (
            "static",
            |m| m.client_finish.as_mut().unwrap().r#static.as_mut().unwrap()[0] ^= 1,
            HandshakeStage::ClientFinishStatic,
        ),
        (
            "payload",
            |m| m.client_finish.as_mut().unwrap().payload.as_mut().unwrap()[5] ^= 1,
            HandshakeStage::ClientFinishPayload,
        ),
    ];
    for (what, tamper, stage) in cases {
        let (mut i, hello, r) = up_to_server_hello(&srv);
        i.read_server_hello_verified(&hello, &CertVerifier::new(srv.root), now()).unwrap();
        let (finish, _) = i.client_finish(&login()).unwrap();
        let err = r.read_client_finish(&edit(&finish, tamper)).unwrap_err();
        assert!(matches!(err, NoiseError::Decrypt { stage: s } if s == stage), "{what}: {err}");
        assert!(err.to_string().contains("ClientFinish"), "{err}");
    }
}

#[test]
fn wrong_root_and_bad_chains_are_rejected_by_the_initiator() {
    let srv = server();
    let other_root = CertIssuer::generate().unwrap().public_key();
    for verifier in [CertVerifier::whatsapp(), CertVerifier::new(other_root)] {
        let (mut i, hello, _) = up_to_server_hello(&srv);
        let err = i.read_server_hello_verified(&hello, &verifier, now()).unwrap_err();
        assert!(matches!(err, NoiseError::Cert(CertError::BadIntermediateSignature { .. })), "{err}");
        // The client cannot go on to log in after a rejected chain.
        assert!(matches!(i.client_finish(&login()), Err(NoiseError::OutOfOrder { .. })));
    }

    // A valid chain, read at a time outside its window.
    let (mut i, hello, _) = up_to_server_hello(&srv);
    let err = i.read_server_hello_verified(&hello, &CertVerifier::new(srv.root), now() + 7200).unwrap_err();
    assert!(matches!(err, NoiseError::Cert(CertError::Expired { .. })), "{err}");

    // A chain that certifies some other key than the one the server proves.
    let issuer = CertIssuer::generate().unwrap();
    let t = now();
    let mut imposter = server();
    imposter.chain = issuer.issue(&[7; 32], &ChainParams::new(1, 2, t - 60, t + 60)).unwrap();
    imposter.root = issuer.public_key();
    let (mut i, hello, _) = up_to_server_hello(&imposter);
    let err = i.read_server_hello_verified(&hello, &CertVerifier::new(imposter.root), now()).unwrap_err();
    assert!(matches!(err, NoiseError::Cert(CertError::LeafKeyMismatch { .. })), "{err}");
}

#[tokio::test]
async fn largest_frame_seals_frames_and_opens() {
    let srv = server();
    let (mut ct, finished) = handshake(&srv, &login());
    let mut st = finished.transport;

    assert_eq!(MAX_PLAINTEXT_LEN, MAX_FRAME_LEN - TAG_LEN);
    let plain: Vec<u8> = (0..MAX_PLAINTEXT_LEN).map(|i| (i % 251) as u8).collect();
    let body = sealed(&mut ct, &plain);
    assert_eq!(body.len(), MAX_FRAME_LEN);

    let (a, b) = tokio::io::duplex(256 * 1024);
    let mut tx = Framed::new(a, FrameCodec::new());
    let mut rx = Framed::new(b, FrameCodec::new());
    let (sent, received) = tokio::join!(tx.send(body), rx.next());
    sent.unwrap();
    let mut frame = received.unwrap().unwrap();
    assert_eq!(frame.len(), MAX_FRAME_LEN);
    assert!(st.open(&mut frame).unwrap() == &plain[..], "16 MiB plaintext round-trips");

    // One byte more cannot be framed, so it is refused before a nonce is spent.
    let mut too_big = BytesMut::zeroed(MAX_PLAINTEXT_LEN + 1);
    let err = ct.seal(&mut too_big).unwrap_err();
    assert!(
        matches!(err, NoiseError::PayloadTooLarge { len, max } if len == MAX_PLAINTEXT_LEN + 1 && max == MAX_PLAINTEXT_LEN),
        "{err}"
    );
    assert_eq!(ct.send_counter(), 1);
}

#[test]
fn out_of_order_calls_are_typed_errors() {
    let srv = server();

    let mut i = initiator();
    let err = i.read_server_hello(b"").unwrap_err();
    assert!(matches!(err, NoiseError::OutOfOrder { call: "read_server_hello", .. }), "{err}");
    assert!(err.to_string().contains("has not sent its ClientHello"), "{err}");
    assert!(matches!(initiator().client_finish(b"x"), Err(NoiseError::OutOfOrder { call: "client_finish", .. })));
    // A caller's mistake does not poison the state: the handshake still completes.
    let hello = i.client_hello().unwrap();
    assert!(matches!(i.client_hello(), Err(NoiseError::OutOfOrder { call: "client_hello", .. })));
    assert!(matches!(i.client_hello_raw(), Err(NoiseError::OutOfOrder { .. })));

    let mut r = srv.responder();
    assert!(matches!(r.server_hello(), Err(NoiseError::OutOfOrder { call: "server_hello", .. })));
    assert!(matches!(
        srv.responder().read_client_finish(b""),
        Err(NoiseError::OutOfOrder { call: "read_client_finish", .. })
    ));
    r.read_client_hello(&hello).unwrap();
    assert!(matches!(r.read_client_hello(&hello), Err(NoiseError::OutOfOrder { call: "read_client_hello", .. })));
    let server_hello = r.server_hello().unwrap();
    assert!(matches!(r.server_hello(), Err(NoiseError::OutOfOrder { .. })));

    i.read_server_hello_verified(&server_hello, &CertVerifier::new(srv.root), now()).unwrap();
    assert!(matches!(i.read_server_hello(&server_hello), Err(NoiseError::OutOfOrder { .. })));
    let (finish, mut ct) = i.client_finish(b"payload").unwrap();
    let mut st = r.read_client_finish(&finish).unwrap().transport;
    let mut f = sealed(&mut ct, b"still fine");
    assert_eq!(st.open(&mut f).unwrap(), b"still fine");

    // After a peer-caused failure, every later step refuses.
    let (mut i, hello, _) = up_to_server_hello(&srv);
    assert!(i.read_server_hello(b"\x1a\x00").is_err());
    let err = i.read_server_hello(&hello).unwrap_err();
    assert!(matches!(err, NoiseError::OutOfOrder { .. }) && err.to_string().contains("failed"), "{err}");
}
