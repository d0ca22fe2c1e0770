//! Sessions over real loopback sockets against an in-process chatd simulator, which is also the
//! oracle: it reports connections per account, the most at once, and the client IPs it saw.

mod support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use session::{
    CacheOutcome, CancelReason, CloseReason, Direction, EndReason, Established, FirstReply, ProxyProtocol, RelayConfig,
    SessionContext, SessionMetrics, UpstreamLogin, connect, run_session,
};
use support::*;
use wire::{Content, Node};

fn tag_of(payload: &[u8]) -> Node {
    wire::decode::decode(payload).unwrap()
}

#[tokio::test]
async fn login_is_accepted_and_a_bad_token_is_rejected_with_401() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice = Device::new();
    let (jid, id) = enlist(&sim, &partner, &alice, "alice").await;
    // XX every time: the cache's saving is the chain check (IK, which skips it, is tested below).
    let cfg = session::UpstreamConfig { noise_ik: false, ..upstream_config(&sim) };

    let login =
        connect(&cfg, login_request(&jid, &alice, &interop_payload(id, &partner.token("alice")))).await.unwrap();
    let UpstreamLogin::Accepted { first_payload, upstream, info } = login else { panic!("refused: {login:?}") };
    assert_eq!(tag_of(&first_payload).tag, "success");
    assert_eq!(info.cert_cache, CacheOutcome::Miss);
    assert_eq!(upstream.peer_addr(), sim.chat_addr);
    assert_eq!(sim.sim.observed(&jid).current, 1);
    drop(upstream);
    wait_current(&sim, &jid, 0).await;

    // A token for someone else: chatd's own 401, relayed as is; the connection is closed.
    let bad = interop_payload(id, &partner.token("mallory"));
    let login = connect(&cfg, login_request(&jid, &alice, &bad)).await.unwrap();
    let UpstreamLogin::Rejected { first_payload, info } = login else { panic!("accepted: {login:?}") };
    let failure = tag_of(&first_payload);
    assert_eq!((failure.tag.as_str(), failure.get_str("reason")), ("failure", Some("401")));
    assert_eq!(info.cert_cache, CacheOutcome::Hit, "the same chain: no second XEdDSA check");
    wait_current(&sim, &jid, 0).await;
    let seen = observed(&sim, &jid).await;
    assert_eq!((seen["total"].as_u64(), seen["max_concurrent"].as_u64()), (Some(2), Some(1)));
    assert_eq!(cfg.cert_cache.stats(), (1, 1));
}

#[tokio::test]
async fn later_logins_resume_with_ik_and_a_changed_chatd_key_falls_back_to_xx() {
    let partner = Partner::start(1).await;
    let root_private = [0x42u8; 32];
    let root_hex: String = root_private.iter().map(|b| format!("{b:02x}")).collect();
    let sim = sim_with(&partner, |c| c.keys.root_private_key = Some(root_hex)).await;
    let alice = Device::new();
    let (jid, id) = enlist(&sim, &partner, &alice, "alice").await;
    let cfg = upstream_config(&sim);
    assert!(cfg.noise_ik, "on by default");
    let login = |payload| connect(&cfg, login_request(&jid, &alice, &payload));
    let ok = interop_payload(id, &partner.token("alice"));

    let mut patterns = Vec::new();
    for _ in 0..3 {
        let UpstreamLogin::Accepted { first_payload, upstream, info } = login(ok.clone()).await.unwrap() else {
            panic!("refused")
        };
        assert_eq!(tag_of(&first_payload).tag, "success");
        patterns.push((info.pattern, info.cert_cache));
        drop(upstream);
        wait_current(&sim, &jid, 0).await;
    }
    use wire::noise::HandshakePattern::{Ik, Xx, XxFallback};
    assert_eq!(patterns, [(Xx, CacheOutcome::Miss), (Ik, CacheOutcome::Hit), (Ik, CacheOutcome::Hit)]);
    assert_eq!(cfg.cert_cache.stats(), (0, 1), "IK checks no chain: the server proved the cached key");

    // chatd's answer to a bad login over IK is relayed as over XX.
    let UpstreamLogin::Rejected { first_payload, info } =
        login(interop_payload(id, &partner.token("mallory"))).await.unwrap()
    else {
        panic!("accepted")
    };
    assert_eq!(tag_of(&first_payload).get_str("reason"), Some("401"));
    assert_eq!(info.pattern, Ik);

    // A proxy holding a chain for a key chatd no longer has: XXfallback, then IK to the new key.
    let stale = session::UpstreamConfig { cert_cache: session::CertCache::new(), ..upstream_config(&sim) };
    let old = wire::noise::StaticKeypair::generate().unwrap();
    let now = wire_io::clock::unix_now();
    let chain = wire::cert::CertIssuer::from_root_private(&root_private)
        .issue(&old.public(), &wire::cert::ChainParams::new(7, 8, now - 60, now + 3600))
        .unwrap();
    stale.cert_cache.verify(&wire::cert::CertVerifier::new(sim.root_public_key()), &chain, &old.public(), now).unwrap();
    for expected in [XxFallback, Ik] {
        let UpstreamLogin::Accepted { upstream, info, .. } =
            connect(&stale, login_request(&jid, &alice, &ok)).await.unwrap()
        else {
            panic!("refused")
        };
        assert_eq!(info.pattern, expected);
        drop(upstream);
        wait_current(&sim, &jid, 0).await;
    }
    let seen = observed(&sim, &jid).await;
    assert_eq!(seen["max_concurrent"].as_u64(), Some(1));
}

#[tokio::test]
async fn a_message_between_two_accounts_keeps_its_enc_bytes() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (alice, bob) = (Device::new(), Device::new());
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let (bob_jid, bob_id) = enlist(&sim, &partner, &bob, "bob").await;
    let ctx = context(&sim, relay_config());

    let (a_side, mut a) = duplex_client(64 * 1024);
    let (b_side, mut b) = duplex_client(64 * 1024);
    let a_task = {
        let (ctx, req) =
            (ctx.clone(), login_request(&alice_jid, &alice, &interop_payload(alice_id, &partner.token("alice"))));
        tokio::spawn(async move { run_session(&ctx, req, a_side, BytesMut::new()).await })
    };
    let b_task = {
        let (ctx, req) = (ctx.clone(), login_request(&bob_jid, &bob, &interop_payload(bob_id, &partner.token("bob"))));
        tokio::spawn(async move { run_session(&ctx, req, b_side, BytesMut::new()).await })
    };
    // Alice pings before chatd even answered: the proxy keeps those bytes for the relay.
    a.send(&ping("early")).await;
    assert_eq!(a.recv().await.unwrap().tag, "success");
    assert_eq!(b.recv().await.unwrap().tag, "success");
    assert_eq!(b.recv_tag("ib").await.child("offline").unwrap().get_str("count"), Some("0"));
    let early = a.recv_tag("iq").await;
    assert_eq!((early.get_str("id"), early.get_str("type")), (Some("early"), Some("result")));

    // Every byte value, in an <enc> long enough to span several reads.
    let ciphertext: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    a.send(&message(&bob_jid, "3EB0AA", &ciphertext)).await;
    let ack = a.recv_tag("ack").await;
    assert_eq!((ack.get_str("id"), ack.get("error")), (Some("3EB0AA"), None));
    let msg = b.recv_tag("message").await;
    assert_eq!(msg.get("from").unwrap().to_string(), alice_jid);
    assert_eq!(msg.child("enc").unwrap().content, Content::Bytes(ciphertext), "ciphertext untouched");

    // And back: a receipt through both relays.
    b.send(&Node::new("ack").attr("class", "message").attr("id", "3EB0AA").attr("to", jid(&alice_jid))).await;
    b.send(&Node::new("receipt").attr("to", jid(&alice_jid)).attr("id", "3EB0AA")).await;
    let receipt = a.recv_tag("receipt").await;
    assert_eq!(receipt.get("from").unwrap().to_string(), bob_jid);
    let pong = {
        a.send(&ping("p1")).await;
        a.recv_tag("iq").await
    };
    assert_eq!(pong.get_str("type"), Some("result"));

    drop((a, b));
    let (ao, bo) = (a_task.await.unwrap(), b_task.await.unwrap());
    for o in [&ao, &bo] {
        assert_eq!(o.reason, CloseReason::ClientClosed);
        assert!(matches!(o.first, FirstReply::Accepted));
    }
    let end = ao.relay.unwrap();
    // Alice sent two pings and the message; she got <ib>, two pongs, the ack and the receipt
    // (her <success> went out ahead of the relay's counts).
    assert_eq!(end.to_upstream.frames, 3, "{end:?}");
    assert!(end.to_client.frames >= 5, "{end:?}");
    assert_eq!(ctx.metrics.closes_with(CloseReason::ClientClosed), 2);
    assert_eq!(ctx.metrics.upstream_logins.with_label_values(&["accepted"]).get(), 2);
    assert!(ctx.registry.is_empty());
    for j in [&alice_jid, &bob_jid] {
        assert_eq!(observed(&sim, j).await["max_concurrent"], 1);
    }
}

#[tokio::test]
async fn proxy_headers_forward_the_client_ip() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "carol").await;
    let payload = interop_payload(id, &partner.token("carol"));
    let cases = [
        (ProxyProtocol::V1, "198.51.100.7:41000", "198.51.100.7"),
        (ProxyProtocol::V2, "198.51.100.8:41001", "198.51.100.8"),
        // An IPv6 client behind an IPv4 edge address: the header goes out as TCP6.
        (ProxyProtocol::V2, "[2001:db8::7]:41002", "2001:db8::7"),
        (ProxyProtocol::V1, "[2001:db8::8]:41003", "2001:db8::8"),
        // No header: chatd records the socket peer, the proxy itself.
        (ProxyProtocol::None, "198.51.100.9:41004", "127.0.0.1"),
    ];
    let mut want = Vec::new();
    for (protocol, client, recorded) in cases {
        let cfg = session::UpstreamConfig { proxy_protocol: protocol, ..upstream_config(&sim) };
        let mut req = login_request(&jid, &dev, &payload);
        req.client_addr = client.parse().unwrap();
        let login = connect(&cfg, req).await.unwrap();
        assert!(matches!(login, UpstreamLogin::Accepted { .. }), "{protocol:?}: {login:?}");
        drop(login);
        wait_current(&sim, &jid, 0).await;
        want.push(recorded);
        assert_eq!(observed(&sim, &jid).await["client_ips"], serde_json::json!(want), "{protocol:?}");
    }
}

#[tokio::test]
async fn client_eof_closes_the_upstream_within_milliseconds() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "dave").await;
    let ctx = context(&sim, relay_config());
    let mut delays = Vec::new();
    for round in 0..20 {
        let (side, mut client) = duplex_client(64 * 1024);
        let task = {
            let (ctx, req) = (ctx.clone(), login_request(&jid, &dev, &interop_payload(id, &partner.token("dave"))));
            tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await })
        };
        assert_eq!(client.recv().await.unwrap().tag, "success", "round {round}");
        client.send(&ping("p")).await;
        client.recv_tag("iq").await;
        assert_eq!(sim.sim.observed(&jid).current, 1);
        drop(client);
        delays.push(wait_current(&sim, &jid, 0).await);
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::ClientClosed);
    }
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "client EOF -> chatd saw the upstream closed: p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms over {} rounds",
        ms(delays[delays.len() / 2]),
        ms(delays[delays.len() * 95 / 100]),
        ms(delays[delays.len() - 1]),
        delays.len()
    );
    assert!(delays[delays.len() / 2] < Duration::from_millis(100), "{delays:?}");
    assert!(delays[delays.len() - 1] < Duration::from_secs(1), "{delays:?}");
    assert_eq!(observed(&sim, &jid).await["max_concurrent"], 1);
}

#[tokio::test]
async fn a_client_reset_closes_the_upstream_at_once() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "erin").await;
    let ctx = context(&sim, relay_config());
    let (side, mut client) = tcp_client().await;
    let task = {
        let (ctx, req) = (ctx.clone(), login_request(&jid, &dev, &interop_payload(id, &partner.token("erin"))));
        tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await })
    };
    assert_eq!(client.recv().await.unwrap().tag, "success");
    // SO_LINGER 0: closing sends an RST instead of a FIN.
    let stream = client.framed.into_inner();
    stream.set_zero_linger().unwrap();
    drop(stream);
    let delay = wait_current(&sim, &jid, 0).await;
    println!("client RST -> chatd saw the upstream closed: {:.2} ms", delay.as_secs_f64() * 1e3);
    assert_eq!(task.await.unwrap().reason, CloseReason::ClientClosed);
    assert!(delay < Duration::from_secs(1));
}

#[tokio::test]
async fn an_idle_client_gets_both_sides_closed() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "frank").await;
    let ctx = context(&sim, RelayConfig { idle_timeout: Duration::from_millis(400), ..relay_config() });
    let (side, mut client) = duplex_client(64 * 1024);
    let started = Instant::now();
    let task = {
        let (ctx, req) = (ctx.clone(), login_request(&jid, &dev, &interop_payload(id, &partner.token("frank"))));
        tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await })
    };
    assert_eq!(client.recv().await.unwrap().tag, "success");
    // Pings keep it alive past the timeout...
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.send(&ping(&format!("k{i}"))).await;
    }
    assert_eq!(sim.sim.observed(&jid).current, 1, "still open while pinging");
    // ...silence ends it.
    let silent = Instant::now();
    wait_current(&sim, &jid, 0).await;
    let closed_after = silent.elapsed();
    let tags = client.until_eof().await;
    assert!(!tags.contains(&"stream:error".to_owned()), "{tags:?}");
    let outcome = task.await.unwrap();
    assert_eq!(outcome.reason, CloseReason::ClientIdle);
    println!("idle timeout 400 ms: upstream closed {:.0} ms after the last ping", closed_after.as_secs_f64() * 1e3);
    assert!(closed_after >= Duration::from_millis(300) && closed_after < Duration::from_secs(2), "{closed_after:?}");
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test]
async fn chatd_conflict_is_relayed_then_the_client_sees_eof() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "gina").await;
    let ctx = context(&sim, relay_config());
    let payload = interop_payload(id, &partner.token("gina"));
    let (side, mut client) = duplex_client(64 * 1024);
    let task = {
        let (ctx, req) = (ctx.clone(), login_request(&jid, &dev, &payload));
        tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await })
    };
    assert_eq!(client.recv().await.unwrap().tag, "success");
    // The same account logs in elsewhere (another proxy of the fleet): chatd replaces us.
    let (_other, first) = ChatClient::login(Dial::to(&sim), &dev.noise, &payload).await;
    assert_eq!(first.tag, "success");
    let err = client.recv_tag("stream:error").await;
    assert_eq!(err.child("conflict").unwrap().get_str("type"), Some("replaced"));
    assert!(client.until_eof().await.is_empty(), "EOF right after the stream error");
    let outcome = task.await.unwrap();
    assert_eq!(outcome.reason, CloseReason::UpstreamStreamError);
    assert!(matches!(outcome.relay.unwrap().reason, EndReason::UpstreamStreamError));
    wait_current(&sim, &jid, 1).await;
}

#[tokio::test]
async fn concurrent_logins_for_one_account_never_hold_two_upstreams() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "hank").await;
    let ctx = context(&sim, relay_config());
    let payload = interop_payload(id, &partner.token("hank"));
    let spawn = |ctx: &SessionContext| {
        let (side, client) = duplex_client(64 * 1024);
        let (ctx, req) = (ctx.clone(), login_request(&jid, &dev, &payload));
        (tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await }), client)
    };
    let (mut live_task, mut live_client) = spawn(&ctx);
    assert_eq!(live_client.recv().await.unwrap().tag, "success");
    let rounds = 10;
    for round in 0..rounds {
        let (t1, c1) = spawn(&ctx);
        let (t2, c2) = spawn(&ctx);
        let mut contenders = vec![(t1, c1), (t2, c2)];
        // The previous session is replaced: chatd's conflict stanza from the proxy, then EOF.
        let tags = live_client.until_eof().await;
        assert_eq!(tags.last().map(String::as_str), Some("stream:error"), "round {round}: {tags:?}");
        let old = live_task.await.unwrap();
        assert_eq!(old.reason, CloseReason::Replaced, "round {round}");
        // Exactly one contender ends up live; the other was superseded or replaced.
        let mut winner = None;
        for (task, mut client) in contenders.drain(..) {
            let first = client.recv().await.expect("a first stanza");
            if first.tag == "success" && !task.is_finished() {
                match client.recv_within(Duration::from_millis(300)).await {
                    Some(n) if n.tag == "stream:error" => {
                        assert!(client.until_eof().await.is_empty());
                        let o = task.await.unwrap();
                        assert_eq!(o.reason, CloseReason::Replaced, "round {round}");
                        continue;
                    }
                    _ => {}
                }
                assert!(winner.is_none(), "round {round}: two winners");
                winner = Some((task, client));
            } else {
                assert_eq!(first.tag, "stream:error", "round {round}: {first:?}");
                assert_eq!(first.child("conflict").unwrap().get_str("type"), Some("replaced"));
                assert!(client.until_eof().await.is_empty());
                let o = task.await.unwrap();
                assert!(matches!(o.reason, CloseReason::Superseded | CloseReason::Replaced), "{:?}", o.reason);
            }
        }
        (live_task, live_client) = winner.unwrap_or_else(|| panic!("round {round}: no winner"));
        live_client.send(&ping("alive")).await;
        assert_eq!(live_client.recv_tag("iq").await.get_str("type"), Some("result"));
        assert_eq!(ctx.registry.len(), 1, "round {round}");
        assert_eq!(sim.sim.observed(&jid).max_concurrent, 1, "round {round}: two upstreams at once");
    }
    drop(live_client);
    live_task.await.unwrap();
    let seen = observed(&sim, &jid).await;
    println!("{rounds} rounds of two concurrent logins: chatd saw {seen}");
    assert_eq!(seen["max_concurrent"], 1);
    assert!(ctx.metrics.replacements.get() >= rounds);
}

#[tokio::test]
async fn a_slow_client_is_backpressured_within_max_buffered_bytes() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (alice, bob) = (Device::new(), Device::new());
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let (_, bob_id) = enlist(&sim, &partner, &bob, "bob").await;
    let limit = 32 * 1024;
    let ctx = context(&sim, RelayConfig { max_buffered_bytes: limit, ..relay_config() });
    // Alice's client reads nothing for now; her pipe holds 4 KiB.
    let (side, mut a) = duplex_client(4096);
    let task = {
        let (ctx, req) =
            (ctx.clone(), login_request(&alice_jid, &alice, &interop_payload(alice_id, &partner.token("alice"))));
        tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await })
    };
    wait_current(&sim, &alice_jid, 1).await;
    // Bob talks to chatd directly: a burst of 300 messages of 8 KB for Alice (2.4 MB).
    let (mut b, first) =
        ChatClient::login(Dial::to(&sim), &bob.noise, &interop_payload(bob_id, &partner.token("bob"))).await;
    assert_eq!(first.tag, "success");
    let count = 300;
    let mut peak = 0;
    for i in 0..count {
        let body: Vec<u8> = (0..8000u32).map(|x| (x as u8) ^ (i as u8)).collect();
        b.send(&message(&alice_jid, &format!("M{i}"), &body)).await;
        peak = peak.max(ctx.metrics.buffered_bytes(Direction::ToClient));
    }
    for _ in 0..count {
        b.recv_tag("ack").await;
    }
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        peak = peak.max(ctx.metrics.buffered_bytes(Direction::ToClient));
    }
    let stalls = ctx.metrics.stalls(Direction::ToClient);
    println!("slow client: relay held at most {peak} bytes (limit {limit}), {stalls} backpressure stalls");
    assert!(peak as usize <= limit, "{peak} > {limit}");
    assert!(stalls >= 1, "the relay stopped reading chatd");
    // Nothing was dropped: Alice now reads every message, in order.
    let mut got = 0;
    while got < count {
        let n = a.recv().await.expect("all messages arrive");
        if n.tag == "message" {
            assert_eq!(n.get_str("id"), Some(format!("M{got}").as_str()));
            let body: Vec<u8> = (0..8000u32).map(|x| (x as u8) ^ (got as u8)).collect();
            assert_eq!(n.child("enc").unwrap().content, Content::Bytes(body));
            got += 1;
        }
    }
    drop(a);
    let end = task.await.unwrap().relay.unwrap();
    println!("to_client: {:?}", end.to_client);
    assert!(end.to_client.max_buffered <= limit, "{:?}", end.to_client);
    assert!(end.to_client.frames >= count as u64);
}

#[tokio::test]
async fn frames_near_the_max_size_pass() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (alice, bob) = (Device::new(), Device::new());
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let (bob_jid, bob_id) = enlist(&sim, &partner, &bob, "bob").await;
    let ctx = context(&sim, relay_config());
    let (a_side, mut a) = duplex_client(256 * 1024);
    let (b_side, mut b) = duplex_client(256 * 1024);
    let spawn = |side, jid: &str, dev: &Device, id: u64, user: &str| {
        let (ctx, req) = (ctx.clone(), login_request(jid, dev, &interop_payload(id, &partner.token(user))));
        tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await })
    };
    let ta = spawn(a_side, &alice_jid, &alice, alice_id, "alice");
    let tb = spawn(b_side, &bob_jid, &bob, bob_id, "bob");
    assert_eq!(a.recv().await.unwrap().tag, "success");
    assert_eq!(b.recv().await.unwrap().tag, "success");

    // Alice's stanza fills a frame to 256 bytes short of the largest sealed frame; chatd's copy
    // for Bob (a `from` and a `t` instead of the `to`) stays within the limit too.
    let target = wire::noise::MAX_PLAINTEXT_LEN - 256;
    let overhead = wire::encode::encode(&message(&bob_jid, "BIG", &vec![0u8; 1 << 21])).unwrap().len() - (1 << 21);
    let ciphertext: Vec<u8> = (0..target - overhead).map(|i| (i % 251) as u8).collect();
    let node = message(&bob_jid, "BIG", &ciphertext);
    assert_eq!(wire::encode::encode(&node).unwrap().len(), target);
    let t = Instant::now();
    a.send(&node).await;
    let msg = b.recv_tag("message").await;
    println!("a {target}-byte stanza through two relays and chatd in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(msg.child("enc").unwrap().content, Content::Bytes(ciphertext));
    assert_eq!(a.recv_tag("ack").await.get("error"), None);
    drop((a, b));
    let (ea, eb) = (ta.await.unwrap().relay.unwrap(), tb.await.unwrap().relay.unwrap());
    assert!(ea.to_upstream.bytes as usize >= target);
    assert!(eb.to_client.bytes as usize >= target);
}

#[tokio::test]
async fn draining_spreads_farewells_and_closes_every_upstream() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let ctx = context(&sim, relay_config());
    let mut sessions = Vec::new();
    for i in 0..3 {
        let dev = Device::new();
        let user = format!("u{i}");
        let (jid, id) = enlist(&sim, &partner, &dev, &user).await;
        let (side, mut client) = duplex_client(64 * 1024);
        let (c, req) = (ctx.clone(), login_request(&jid, &dev, &interop_payload(id, &partner.token(&user))));
        let task = tokio::spawn(async move { run_session(&c, req, side, BytesMut::new()).await });
        assert_eq!(client.recv().await.unwrap().tag, "success");
        sessions.push((jid, dev, id, user, client, task));
    }
    assert_eq!(ctx.registry.len(), 3);
    let started = Instant::now();
    let registry = ctx.registry.clone();
    let drain = tokio::spawn(async move { registry.drain(Duration::from_millis(300)).await });
    for (jid, _, _, _, client, _) in &mut sessions {
        let tags = client.until_eof().await;
        assert_eq!(tags.last().map(String::as_str), Some("stream:error"), "{tags:?}");
        wait_current(&sim, jid, 0).await;
    }
    drain.await.unwrap();
    println!("drained 3 sessions over a 300 ms window in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    assert!(started.elapsed() >= Duration::from_millis(200));
    for (_, _, _, _, _, task) in sessions.drain(..).rev().take(1) {
        assert_eq!(task.await.unwrap().reason, CloseReason::Draining);
    }
    // New logins are refused with the same hint, before any upstream exists.
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "late").await;
    let (side, mut client) = duplex_client(4096);
    let outcome = run_session(
        &ctx,
        login_request(&jid, &dev, &interop_payload(id, &partner.token("late"))),
        side,
        BytesMut::new(),
    )
    .await;
    assert_eq!(outcome.reason, CloseReason::Draining);
    let n = client.recv().await.unwrap();
    assert_eq!((n.tag.as_str(), n.get_str("code")), ("stream:error", Some("503")));
    assert_eq!(observed(&sim, &jid).await["total"], 0, "no upstream was dialled");
    assert_eq!(ctx.metrics.closes_with(CloseReason::Draining), 4);
}

#[tokio::test]
async fn an_unreachable_or_untrusted_chatd_gets_the_client_a_503() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "ivan").await;
    let payload = interop_payload(id, &partner.token("ivan"));
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = SessionContext::new(
        session::UpstreamConfig::new(closed, sim.root_public_key()),
        relay_config(),
        SessionMetrics::new().unwrap(),
    );
    // The simulator, but trusting another root: the certificate chain fails.
    let untrusted = SessionContext::new(
        session::UpstreamConfig::new(sim.chat_addr, [9u8; 32]),
        relay_config(),
        SessionMetrics::new().unwrap(),
    );
    for (ctx, reason) in
        [(unreachable, CloseReason::UpstreamUnreachable), (untrusted, CloseReason::UpstreamHandshakeFailed)]
    {
        let (side, mut client) = duplex_client(4096);
        let outcome = run_session(&ctx, login_request(&jid, &dev, &payload), side, BytesMut::new()).await;
        assert_eq!(outcome.reason, reason, "{:?}", outcome.first);
        let n = client.recv().await.unwrap();
        assert_eq!((n.tag.as_str(), n.get_str("reason")), ("failure", Some("503")));
        assert!(client.until_eof().await.is_empty());
        assert!(ctx.registry.is_empty());
        assert_eq!(ctx.metrics.upstream_logins.with_label_values(&["failed"]).get(), 1);
    }
    assert_eq!(observed(&sim, &jid).await["total"], 0, "the untrusted chatd never saw the login");
}

#[tokio::test]
async fn a_client_leaving_during_the_login_leaves_no_upstream() {
    let partner = Partner::start(1).await;
    // A chatd that is slow to answer: hold the handshake by pointing at a listener that accepts
    // and never speaks.
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "judy").await;
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let accepted = tokio::spawn(async move {
        let (mut s, _) = mute.accept().await.unwrap();
        let mut sink = Vec::new();
        // Returns when the proxy closes the connection.
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
        sink.len()
    });
    let ctx = SessionContext::new(
        session::UpstreamConfig::new(mute_addr, sim.root_public_key()),
        relay_config(),
        SessionMetrics::new().unwrap(),
    );
    let (side, client) = duplex_client(4096);
    let task = {
        let (ctx, req) = (ctx.clone(), login_request(&jid, &dev, &interop_payload(id, &partner.token("judy"))));
        tokio::spawn(async move { run_session(&ctx, req, side, BytesMut::new()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(client);
    let outcome = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(outcome.reason, CloseReason::ClientClosed);
    let sent = tokio::time::timeout(WAIT, accepted).await.unwrap().unwrap();
    assert!(sent > 4, "the PROXY and WA headers went out, then the connection was closed");
    assert!(ctx.registry.is_empty());
}

#[tokio::test]
async fn idle_sessions_hold_no_relay_buffers() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "kim").await;
    let relay_cfg = RelayConfig { release_after: Duration::from_millis(100), ..relay_config() };
    let ctx = context(&sim, relay_cfg);
    let metrics = &ctx.metrics;
    let (side, mut client) = tcp_client().await;
    let req = login_request(&jid, &dev, &interop_payload(id, &partner.token("kim")));
    let establish = session::establish(&ctx, req, side, BytesMut::new(), || {});
    // The login stage's state: the edge awaits it in the connection's task, which ends once the
    // session is live.
    let login_state = std::mem::size_of_val(&establish);
    let Established::Live(live) = establish.await else { panic!("chatd refused the login") };
    let session_id = live.session_id();
    let handed_over = std::mem::size_of_val(&live);
    let fut = live.relay(&ctx);
    // What the edge spawns per live session is this future and a few words around it.
    let state = std::mem::size_of_val(&fut);
    let body = async {
        assert_eq!(client.recv().await.unwrap().tag, "success");
        for i in 0..5 {
            client.send(&ping(&format!("i{i}"))).await;
            client.recv_tag("iq").await;
        }
        let busy = metrics.relay_buffer_capacity.get();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = metrics.relay_buffer_capacity.get();
        println!(
            "live session state: {state} bytes (the login stage's, freed when it is answered: {login_state} bytes; \
             the LiveSession handed over: {handed_over} bytes); relay buffers: {busy} bytes while active, {idle} bytes idle"
        );
        assert!(busy > 0);
        assert_eq!(idle, 0);
        // And it wakes up fine.
        client.send(&ping("again")).await;
        client.recv_tag("iq").await;
        ctx.registry.shutdown_now();
    };
    let (outcome, ()) = tokio::join!(fut, body);
    assert_eq!(outcome.session_id, session_id);
    assert!(matches!(outcome.first, FirstReply::Accepted));
    assert!(matches!(outcome.relay.unwrap().reason, EndReason::Cancelled(CancelReason::Shutdown)));
    // 2,920 bytes when the session lived in the `run_session` future with the login stage's
    // space (3,664 with the upstream handshake inline); the relay as its own future is ~700.
    assert!(state <= 1_024, "the live session's state grew to {state} bytes");
    wait_current(&sim, &jid, 0).await;
}
