//! The proxy over real sockets against the simulator: login and relay, the client's IP at chatd,
//! one upstream per account, lifecycle mirroring, backpressure, and documented closes for
//! hostile input. The simulator's observation API is the oracle.

mod support;

use std::time::Duration;

use support::*;
use wire::{Jid, Node, Server};
use wire_io::{ClientError, EdgeClient};

#[tokio::test]
async fn login_ping_and_messages_both_ways_with_the_client_ip_forwarded() {
    let p = start(|_| {}).await;
    let (alice, bob) = (enlisted(&p, "alice").await, enlisted(&p, "bob").await);
    let mut a = connect_with(&p, &alice, &alice.token, Some("127.0.0.7".parse().unwrap())).await;
    assert_eq!(a.recv(WAIT).await.unwrap().tag, "success");
    a.recv_tag("ib", WAIT).await.unwrap();
    let mut b = logged_in(&p, &bob).await;

    let ping = Node::new("iq")
        .attr("id", "ping1")
        .attr("xmlns", "w:p")
        .attr("type", "get")
        .attr("to", Jid::server(Server::Whatsapp));
    a.send(&ping).await.unwrap();
    let (pong, _) = a.recv_tag("iq", WAIT).await.unwrap();
    assert_eq!((pong.get_str("id"), pong.get_str("type")), (Some("ping1"), Some("result")));

    exchange(&mut a, &mut b, &alice.jid, &bob.jid, "AB1").await;
    exchange(&mut b, &mut a, &bob.jid, &alice.jid, "BA1").await;
    assert_eq!(observed(&p, &alice.jid).await["client_ips"], serde_json::json!(["127.0.0.7"]));
    assert_eq!(observed(&p, &bob.jid).await["client_ips"], serde_json::json!(["127.0.0.1"]));
}

/// One message from `from` to `to`, checked to arrive with its ciphertext untouched.
async fn exchange(
    from: &mut EdgeClient<tokio::net::TcpStream>,
    to: &mut EdgeClient<tokio::net::TcpStream>,
    from_jid: &Jid,
    to_jid: &Jid,
    id: &str,
) {
    let ciphertext: Vec<u8> = (0..4096u32).map(|i| (i * 31 + id.len() as u32) as u8).collect();
    from.send(&message(to_jid, id, &ciphertext)).await.unwrap();
    assert_eq!(from.recv_tag("ack", WAIT).await.unwrap().0.get("error"), None);
    let (got, _) = to.recv_tag("message", WAIT).await.unwrap();
    assert_eq!(got.get("from").unwrap().to_string(), from_jid.to_string());
    assert_eq!(got.child("enc").unwrap().content, wire::Content::Bytes(ciphertext), "ciphertext untouched");
    to.send(&ack_for(&got)).await.unwrap();
}

#[tokio::test]
async fn bad_expired_unbound_and_foreign_tokens_never_reach_chatd() {
    let p = start(|_| {}).await;
    let (carol, dave) = (enlisted(&p, "carol").await, enlisted(&p, "dave").await);
    let partner = &p.embedded.as_ref().unwrap().partner;
    let now = jwks::unix_now();
    let claims = |exp: u64, account: Option<String>| jwks::PartnerClaims {
        iss: partner.issuer().to_owned(),
        aud: partner.audience().to_owned(),
        sub: "carol".into(),
        exp,
        iat: now - 3600,
        wa_account: account,
    };
    let stranger = jwks::SigningKeys::generate().unwrap();
    let tokens = [
        ("foreign: dave's token", dave.token.clone()),
        ("unbound", local_world::demo::token(&targets(&p), "carol", None).await.unwrap()),
        ("expired", partner.signing_keys().sign(&claims(now - 600, Some(carol.jid.to_string()))).unwrap()),
        ("forged", stranger.sign(&claims(now + 600, Some(carol.jid.to_string()))).unwrap()),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &tokens {
        let mut c = connect_with(&p, &carol, token, None).await;
        let answer = c.recv(WAIT).await.unwrap();
        assert_eq!((answer.tag.as_str(), answer.get_str("reason")), ("failure", Some("401")), "{what}");
        assert!(matches!(c.recv(WAIT).await, Err(ClientError::Closed)), "{what}: closed after the failure");
    }
    assert_eq!(observed(&p, &carol.jid).await["total"], 0, "no upstream connection was ever opened for carol");
    assert_eq!(metric(&p, "waproxy_logins_total{result=\"unauthorized\"}").await, tokens.len() as f64);
    // Carol's own token still works.
    logged_in(&p, &carol).await;
    assert_eq!(observed(&p, &carol.jid).await["total"], 1);
}

#[tokio::test]
async fn repeated_and_concurrent_double_logins_never_hold_two_upstreams() {
    let p = start(|_| {}).await;
    let erin = enlisted(&p, "erin").await;
    let mut old = logged_in(&p, &erin).await;
    for round in 0..5 {
        let new = logged_in(&p, &erin).await;
        let (err, _) = old.recv_tag("stream:error", WAIT).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(err.child("conflict").and_then(|c| c.get_str("type")), Some("replaced"));
        assert!(matches!(old.recv(WAIT).await, Err(ClientError::Closed)));
        old = new;
    }
    // Eight logins at once: they serialize on the account, the last one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = connect_with(&p, &erin, &erin.token, None).await;
        tasks.push(tokio::spawn(tags_until_quiet(c, Duration::from_secs(3))));
    }
    let mut survivors = 0;
    for t in tasks {
        let seen = t.await.unwrap();
        if !seen.iter().any(|t| t == "stream:error") {
            survivors += 1;
        }
    }
    assert!(survivors <= 1, "at most one concurrent login keeps its session");
    let seen = observed(&p, &erin.jid).await;
    assert_eq!(seen["max_concurrent"], 1, "never two upstreams for one account: {seen}");
}

#[tokio::test]
async fn the_proxys_later_upstream_logins_resume_with_noise_ik() {
    let p = start(|_| {}).await;
    let kim = enlisted(&p, "kim").await;
    for _ in 0..3 {
        let mut c = logged_in(&p, &kim).await;
        assert_pings(&mut c, "ik").await;
        drop(c);
        wait_current(&p, &kim.jid, 0, WAIT).await;
    }
    let stats = sim_stats(&targets(&p).sim_url).await;
    assert_eq!(stats["handshakes"], serde_json::json!({"XX": 1, "IK": 2, "XXfallback": 0}), "{stats}");
}

#[tokio::test]
async fn a_login_for_another_account_cannot_replace_a_session() {
    let p = start(|_| {}).await;
    let (frank, gina) = (enlisted(&p, "frank").await, enlisted(&p, "gina").await);
    let mut f = logged_in(&p, &frank).await;
    // Gina's valid token, presented for Frank's account.
    let mut intruder = connect_with(&p, &frank, &gina.token, None).await;
    assert_eq!(intruder.recv(WAIT).await.unwrap().get_str("reason"), Some("401"));
    let ping = Node::new("iq").attr("id", "still-here").attr("xmlns", "w:p").attr("type", "get");
    f.send(&ping).await.unwrap();
    assert_eq!(f.recv_tag("iq", WAIT).await.unwrap().0.get_str("id"), Some("still-here"));
    let seen = observed(&p, &frank.jid).await;
    assert_eq!((seen["current"].as_u64(), seen["total"].as_u64()), (Some(1), Some(1)));
}

#[tokio::test]
async fn client_fin_and_rst_close_the_upstream_at_once() {
    let p = start(|_| {}).await;
    let hank = enlisted(&p, "hank").await;
    let c = logged_in(&p, &hank).await;
    wait_current(&p, &hank.jid, 1, WAIT).await;
    drop(c); // FIN
    let fin = wait_current(&p, &hank.jid, 0, Duration::from_secs(2)).await;

    let mut c = logged_in(&p, &hank).await;
    wait_current(&p, &hank.jid, 1, WAIT).await;
    c.stream_mut().set_zero_linger().unwrap();
    drop(c); // RST
    let rst = wait_current(&p, &hank.jid, 0, Duration::from_secs(2)).await;
    println!("client gone -> upstream gone, as seen by chatd: FIN {fin:?}, RST {rst:?}");
    assert!(fin < Duration::from_millis(500) && rst < Duration::from_millis(500));
}

#[tokio::test]
async fn a_silent_client_loses_its_upstream_after_the_idle_timeout() {
    let p = start(|c| c.session.idle_timeout_secs = 1).await;
    let ivy = enlisted(&p, "ivy").await;
    let mut c = logged_in(&p, &ivy).await;
    let idle = wait_current(&p, &ivy.jid, 0, Duration::from_secs(5)).await;
    assert!(idle >= Duration::from_millis(700), "not before the timeout: {idle:?}");
    let mut end = c.recv(WAIT).await;
    while let Ok(n) = end {
        end = c.recv(WAIT).await.map(|_| n);
    }
    assert!(matches!(end, Err(ClientError::Closed)), "{end:?}");
}

#[tokio::test]
async fn chatd_stream_error_reaches_the_client_which_is_then_closed() {
    let p = start(|_| {}).await;
    let jack = enlisted(&p, "jack").await;
    let mut c = logged_in(&p, &jack).await;
    // Someone logs in to chatd directly as Jack: chatd replaces the proxy's upstream.
    let e = p.embedded.as_ref().unwrap();
    let payload = wire::proto::ClientPayload::interop_login(
        jack.jid.user.parse().unwrap(),
        jack.token.clone().into_bytes(),
        wire::proto::AppVersion::new(2, 3000, 1),
    );
    let request = session::LoginRequest {
        account: jack.jid.to_string(),
        static_key: wire::noise::StaticKeypair::from_private(&jack.user.noise).unwrap(),
        client_payload: zeroize::Zeroizing::new(prost::Message::encode_to_vec(&payload)),
        client_addr: "127.0.0.1:1".parse().unwrap(),
        local_addr: "127.0.0.1:2".parse().unwrap(),
    };
    let direct = session::connect(&session::UpstreamConfig::new(e.sim.chat_addr, e.sim.root_public_key()), request)
        .await
        .unwrap();
    assert!(matches!(direct, session::UpstreamLogin::Accepted { .. }));
    let (err, _) = c.recv_tag("stream:error", WAIT).await.unwrap();
    assert_eq!(err.child("conflict").and_then(|n| n.get_str("type")), Some("replaced"));
    assert!(matches!(c.recv(WAIT).await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_backpressured_not_buffered() {
    let max = 64 * 1024;
    let p = start(|c| c.session.max_buffered_bytes = max).await;
    let (kim, lee) = (enlisted(&p, "kim").await, enlisted(&p, "lee").await);
    // Kim logs in with a tiny receive buffer and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(p.tcp_addr.unwrap()).await.unwrap();
    let mut k = EdgeClient::new(stream);
    k.send_payload(&local_world::demo::login_frame(&kim.user, &kim.jid, &kim.token).unwrap()).await.unwrap();
    assert_eq!(k.recv(WAIT).await.unwrap().tag, "success");
    let mut l = logged_in(&p, &lee).await;
    let chunk = vec![0x5a; 16 * 1024];
    for i in 0..800 {
        l.send(&message(&kim.jid, &format!("F{i}"), &chunk)).await.unwrap();
    }
    // Lee's acks show chatd took everything; the proxy must not hold it for Kim.
    for _ in 0..800 {
        l.recv_tag("ack", Duration::from_secs(30)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let buffered = metric(&p, "waproxy_relay_buffered_bytes{direction=\"to_client\"}").await;
    let stalls = metric(&p, "waproxy_relay_backpressure_stalls_total{direction=\"to_client\"}").await;
    println!("13 MB sent to a non-reading client: proxy holds {buffered} bytes toward it, {stalls} stalls");
    assert!(buffered <= (max + 16 * 1024 + 64) as f64, "bounded by max_buffered_bytes (plus one frame): {buffered}");
    assert!(stalls >= 1.0, "the relay stopped reading chatd");
    drop(k);
}

#[tokio::test]
async fn hostile_input_gets_documented_closes_and_the_proxy_stays_healthy() {
    let p = start(|c| c.edge.login_timeout_secs = 1).await;
    let addr = p.tcp_addr.unwrap();
    async fn answer(addr: std::net::SocketAddr, bytes: &[u8]) -> (Option<Node>, bool) {
        let mut c = EdgeClient::connect(addr, None).await.unwrap();
        use tokio::io::AsyncWriteExt;
        c.stream_mut().write_all(bytes).await.unwrap();
        let first = c.recv(Duration::from_secs(3)).await.ok();
        let closed = matches!(c.recv(Duration::from_secs(3)).await, Err(ClientError::Closed));
        (first, closed)
    }
    let reason = |n: &Option<Node>| n.as_ref().and_then(|n| n.get_str("reason").map(str::to_owned));
    for (what, bytes, want) in [
        ("junk before login", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "400"),
        ("TLS hello on the plain port", vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01], "400"),
        ("oversize login frame", vec![0x10, 0x00, 0x00, 1, 2, 3], "400"),
        ("frame that is no stanza", vec![0, 0, 3, 9, 9, 9], "400"),
        (
            "stanza that is no login",
            wire::encode::encode(&Node::new("iq"))
                .map(|b| {
                    let mut f = Vec::new();
                    wire::frame::encode_frame(&b, &mut f).unwrap();
                    f
                })
                .unwrap(),
            "400",
        ),
        ("nothing at all (login timeout)", vec![], "408"),
    ] {
        let (first, closed) = answer(addr, &bytes).await;
        assert_eq!(reason(&first).as_deref(), Some(want), "{what}: {first:?}");
        assert!(closed, "{what}: closed after the failure");
    }
    let (status, _) = get_text(&format!("http://{}/livez", p.admin_addr)).await;
    assert_eq!(status, 200);
    let (status, _) = get_text(&format!("http://{}/readyz", p.admin_addr)).await;
    assert_eq!(status, 200);
    let mona = enlisted(&p, "mona").await;
    logged_in(&p, &mona).await;
    assert_eq!(metric(&p, "waproxy_logins_total{result=\"bad_login\"}").await, 5.0);
    assert_eq!(metric(&p, "waproxy_logins_total{result=\"timeout\"}").await, 1.0);
}

#[tokio::test]
async fn tls_edge_serves_logins_and_drops_garbage() {
    let dir = std::env::temp_dir().join(format!("proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = self_signed(&dir);
    let p = start(|c| {
        c.edge.tls = Some(proxy::config::TlsSection {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        })
    })
    .await;
    let tls_addr = p.tls_addr.unwrap();

    // Garbage on the TLS port: closed, nothing else happens.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        s.write_all(b"\x00\x00\x05hello this is not TLS").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert!(n < 64, "no stanza answer to TLS garbage");
    }

    let nina = enlisted(&p, "nina").await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let mut c = EdgeClient::new(tls);
    c.send_payload(&local_world::demo::login_frame(&nina.user, &nina.jid, &nina.token).unwrap()).await.unwrap();
    assert_eq!(c.recv(WAIT).await.unwrap().tag, "success");
    assert_eq!(metric(&p, "waproxy_edge_connections_total{listener=\"tls\"}").await, 2.0);
}
