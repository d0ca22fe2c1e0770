//! The simulator answers all three Noise patterns over real sockets: XX, IK resumption with the
//! key learnt in an earlier XX, XXfallback for a client holding a stale key; the login checks are
//! the same for each; hostile IK hellos are closed without a panic.

use prost::Message as _;
use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::cert::{CertIssuer, CertVerifier, ChainParams};
use wire::connect::{ClientConnect, ConnectConfig};
use wire::noise::{HandshakePattern, StaticKeypair, WA_CONN_HEADER};
use wire::proto::{ClientFinish, ClientHello, HandshakeMessage};

const ROOT_PRIVATE: [u8; 32] = [0x42; 32];

async fn stats(sim: &chatd_sim::RunningSim) -> serde_json::Value {
    get_json(&format!("{}/admin/stats", sim.http_url())).await
}

/// A simulator whose root private key the test knows, so it can sign a chain for another key.
async fn sim(partner: &Partner) -> chatd_sim::RunningSim {
    sim_with(partner, |c| c.keys.root_private_key = Some(hex::encode(ROOT_PRIVATE))).await
}

/// A partner server, the simulator, and alice enlisted with her login payload.
struct World {
    partner: Partner,
    sim: chatd_sim::RunningSim,
    alice: Device,
    id: u64,
    payload: wire::proto::ClientPayload,
}

async fn world() -> World {
    let partner = Partner::start(1).await;
    let sim = sim(&partner).await;
    let alice = Device::new();
    let (_, id) = enlist(&sim, &partner, &alice, "alice").await;
    let payload = interop_payload(id, &partner.token("alice"));
    World { partner, sim, alice, id, payload }
}

#[tokio::test]
async fn a_client_resumes_with_ik_after_xx_and_logs_in_the_same() {
    let World { partner, sim, alice, id, payload } = world().await;
    let config = ConnectConfig::new(sim.root_public_key());

    let (client, first, pattern) = ChatClient::resume(Dial::to(&sim), &alice.noise, &payload, &config).await;
    assert_eq!((first.tag.as_str(), pattern), ("success", HandshakePattern::Xx));
    drop(client);
    let (mut client, first, pattern) = ChatClient::resume(Dial::to(&sim), &alice.noise, &payload, &config).await;
    assert_eq!((first.tag.as_str(), pattern), ("success", HandshakePattern::Ik));
    let (ib, _) = client.recv_tag("ib").await;
    assert_eq!(ib.child("offline").unwrap().get_str("count"), Some("0"));
    let pong = client
        .iq(wire::Node::new("iq")
            .attr("id", "p1")
            .attr("xmlns", "w:p")
            .attr("type", "get")
            .attr("to", jid("s.whatsapp.net")))
        .await;
    assert_eq!(pong.get_str("type"), Some("result"));
    let s = stats(&sim).await;
    assert_eq!(s["handshakes"], serde_json::json!({"XX": 1, "IK": 1, "XXfallback": 0}), "{s}");

    // The login checks are the pattern's business no more than before: a device key that is not
    // the account's, or a token for another user, gets the same 401 over IK.
    let mallory = Device::new();
    let (_, first, pattern) = ChatClient::resume(Dial::to(&sim), &mallory.noise, &payload, &config).await;
    assert_eq!((first.tag.as_str(), first.get_str("reason"), pattern), ("failure", Some("401"), HandshakePattern::Ik));
    let wrong = interop_payload(id, &partner.token("bob"));
    let (_, first, pattern) = ChatClient::resume(Dial::to(&sim), &alice.noise, &wrong, &config).await;
    assert_eq!((first.tag.as_str(), first.get_str("reason"), pattern), ("failure", Some("401"), HandshakePattern::Ik));
}

#[tokio::test]
async fn a_stale_server_key_falls_back_to_xx_then_resumes_with_the_new_one() {
    let World { partner: _partner, sim, alice, payload, .. } = world().await;

    // The client cached a chain, under the simulator's root, for a key the simulator no longer has.
    let config = ConnectConfig::new(sim.root_public_key());
    let old = StaticKeypair::generate().unwrap();
    let now = wire_io::clock::unix_now();
    let chain = CertIssuer::from_root_private(&ROOT_PRIVATE)
        .issue(&old.public(), &ChainParams::new(7, 8, now - 60, now + 3600))
        .unwrap();
    config.cert_cache.verify(&CertVerifier::new(sim.root_public_key()), &chain, &old.public(), now).unwrap();

    let (client, first, pattern) = ChatClient::resume(Dial::to(&sim), &alice.noise, &payload, &config).await;
    assert_eq!((first.tag.as_str(), pattern), ("success", HandshakePattern::XxFallback));
    drop(client);
    let (_, first, pattern) = ChatClient::resume(Dial::to(&sim), &alice.noise, &payload, &config).await;
    assert_eq!((first.tag.as_str(), pattern), ("success", HandshakePattern::Ik), "the new key was learnt");
    let s = stats(&sim).await;
    assert_eq!(s["handshakes"], serde_json::json!({"XX": 0, "IK": 1, "XXfallback": 1}), "{s}");
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = WA_CONN_HEADER.to_vec();
    wire::frame::encode_frame(body, &mut out).unwrap();
    out
}

/// Reads until the simulator closes (EOF or reset) and returns what it sent; panics if it keeps
/// the connection open past `WAIT`.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("the simulator closes") {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn raw(sim: &chatd_sim::RunningSim) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(sim.chat_addr).await.unwrap()
}

#[tokio::test]
async fn hostile_ik_hellos_are_closed_cleanly() {
    let World { partner: _partner, sim, alice, payload, .. } = world().await;
    let config = ConnectConfig::new(sim.root_public_key());
    ChatClient::resume(Dial::to(&sim), &alice.noise, &payload, &config).await;

    // A real IK hello, cut short; and IK hellos with fields of the wrong size or missing.
    let mut ik = ClientConnect::resume(
        StaticKeypair::from_private(&alice.noise).unwrap(),
        &payload.encode_to_vec(),
        &config,
        b"",
        wire_io::clock::unix_now(),
    )
    .unwrap();
    let whole = ik.transmit().unwrap();
    let body = &whole[WA_CONN_HEADER.len() + 3..];
    let e = Some(StaticKeypair::generate().unwrap().public().to_vec());
    let hello = |h: ClientHello| HandshakeMessage { client_hello: Some(h), ..Default::default() }.encode_to_vec();
    let hostile = [
        framed(&body[..body.len() / 2]),
        framed(&hello(ClientHello { ephemeral: e.clone(), r#static: Some(vec![1; 47]), payload: Some(vec![0; 16]) })),
        framed(&hello(ClientHello { ephemeral: e.clone(), r#static: Some(vec![1; 48]), payload: None })),
        framed(&hello(ClientHello {
            ephemeral: Some(vec![0; 32]),
            r#static: Some(vec![1; 48]),
            payload: Some(vec![0; 16]),
        })),
        framed(&hello(ClientHello { ephemeral: None, r#static: Some(vec![1; 48]), payload: Some(vec![0; 16]) })),
    ];
    let failed_before = stats(&sim).await["handshakes_failed"].as_u64().unwrap();
    for bytes in &hostile {
        let mut stream = raw(&sim).await;
        stream.write_all(bytes).await.unwrap();
        assert!(until_closed(&mut stream).await.is_empty(), "no answer to a malformed hello");
    }

    // A garbage 48-byte static opens under no key: the XX answer, then a junk ClientFinish closes.
    let mut stream = raw(&sim).await;
    stream
        .write_all(&framed(&hello(ClientHello {
            ephemeral: e,
            r#static: Some(vec![1; 48]),
            payload: Some(vec![0; 16]),
        })))
        .await
        .unwrap();
    let mut len = [0u8; 3];
    tokio::time::timeout(WAIT, stream.read_exact(&mut len)).await.unwrap().unwrap();
    let mut server_hello = vec![0u8; usize::from(len[1]) << 8 | usize::from(len[2])];
    stream.read_exact(&mut server_hello).await.unwrap();
    let answer = HandshakeMessage::decode(&server_hello[..]).unwrap().server_hello.unwrap();
    assert_eq!(answer.r#static.map(|s| s.len()), Some(48), "XXfallback's ServerHello carries the key");
    let finish = ClientFinish { r#static: Some(vec![2; 48]), payload: Some(vec![3; 32]) };
    let finish = HandshakeMessage { client_finish: Some(finish), ..Default::default() }.encode_to_vec();
    let mut junk = Vec::new();
    wire::frame::encode_frame(&finish, &mut junk).unwrap();
    stream.write_all(&junk).await.unwrap();
    assert!(until_closed(&mut stream).await.is_empty());
    drop(stream);

    // After an accepted IK the next frame is sealed; a ClientFinish there ends the session.
    let mut stream = raw(&sim).await;
    stream.write_all(&whole).await.unwrap();
    let done = tokio::time::timeout(WAIT, wire_io::handshake::connect(&mut stream, ik)).await.unwrap().unwrap();
    assert_eq!(done.pattern, HandshakePattern::Ik);
    stream.write_all(&junk).await.unwrap();
    let sent = until_closed(&mut stream).await;
    assert!(!sent.is_empty() || !done.leftover.is_empty(), "the login was answered before the close");
    drop(stream);

    // Every one ended in an error the simulator counted (counted once its close is over).
    let expected = failed_before + hostile.len() as u64 + 2;
    let deadline = tokio::time::Instant::now() + WAIT;
    let s = loop {
        let s = stats(&sim).await;
        if s["handshakes_failed"].as_u64() == Some(expected) || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(s["handshakes_failed"].as_u64(), Some(expected), "{s}");
    assert_eq!(s["live_connections"], 0, "{s}");
    // And the simulator still logs people in.
    let (_, first, pattern) = ChatClient::resume(Dial::to(&sim), &alice.noise, &payload, &config).await;
    assert_eq!((first.tag.as_str(), pattern), ("success", HandshakePattern::Ik));
}
