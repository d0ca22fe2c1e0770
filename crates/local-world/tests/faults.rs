//! Fault injection over real loopback sockets: `testkit::fault::FaultProxy` sits between the
//! proxy and the chatd simulator (the proxy's `upstream.addr` points at it; the PROXY header
//! passes through unchanged), or between a client and the proxy, and drops, delays, resets or
//! blackholes the traffic. For each fault: the client gets a documented answer or close, the proxy
//! never reconnects on its own, nothing is left open, the simulator's lifecycle invariants hold
//! (`max_concurrent` <= 1, `current` back to 0), and no stanza a client sent is silently lost:
//! each one was delivered to its recipient, or its sender got no ack and a close.
//!
//! The rig: `base` is a proxy on the embedded default (simulator + partner server); its own edge
//! serves the recipients directly. `proxy` is a second proxy on the same simulator and partner,
//! whose upstream is the fault proxy.

mod support;

use std::time::Duration;

use local_world::LocalWorld;
use local_world::demo::login_frame;
use support::*;
use testkit::fault::{FaultProxy, Mode};
use tokio::net::TcpStream;
use wire::Jid;
use wire_io::{ClientError, EdgeClient};

/// Points a non-embedded proxy's upstream at `fault` (in front of a simulator with `root`), with
/// short dial and handshake timeouts, and its token checks at `partner`.
fn upstream_via(
    c: &mut proxy::config::Config,
    fault: &FaultProxy,
    root: [u8; 32],
    partner: &partner_server::RunningPartnerServer,
) {
    c.embedded = false;
    c.upstream = Some(proxy::config::UpstreamSection {
        addr: fault.addr().to_string(),
        proxy_protocol: proxy::config::ProxyProtocolVersion::V1,
        root_public_key: Some(hex::encode(root)),
        connect_timeout_ms: 1_000,
        handshake_timeout_ms: 1_500,
        noise_ik: true,
    });
    c.auth = Some(proxy::config::AuthSection {
        jwks_url: partner.jwks_url(),
        jwks_ca_file: None,
        issuer: partner.issuer().to_owned(),
        audience: partner.audience().to_owned(),
        account_claim: "wa_account".into(),
        jwks_refresh_secs: 300,
        jwks_min_refetch_secs: 1,
        token_cache_entries: 65_536,
    });
}

struct Rig {
    base: LocalWorld,
    proxy: LocalWorld,
    fault: FaultProxy,
}

impl Rig {
    async fn start(edit: impl FnOnce(&mut proxy::config::Config)) -> Rig {
        let base = start(|_| {}).await;
        let e = base.embedded.as_ref().unwrap();
        let fault = FaultProxy::start(e.sim.chat_addr).await;
        let proxy = start(|c| {
            upstream_via(c, &fault, e.sim.root_public_key(), &e.partner);
            edit(c);
        })
        .await;
        Rig { base, proxy, fault }
    }

    /// Connects through the faulty path and sends the login.
    async fn connect(&self, who: &Enlisted) -> EdgeClient<TcpStream> {
        let mut c = EdgeClient::connect(self.proxy.tcp_addr.unwrap(), None).await.unwrap();
        c.send_payload(&login_frame(&who.user, &who.jid, &who.token).unwrap()).await.unwrap();
        c
    }

    async fn logged_in(&self, who: &Enlisted) -> EdgeClient<TcpStream> {
        let mut c = self.connect(who).await;
        assert_eq!(c.recv(WAIT).await.unwrap().tag, "success");
        c.recv_tag("ib", WAIT).await.unwrap();
        c
    }

    /// The simulator's lifecycle invariants for `jid`: never two upstreams, none left.
    async fn assert_lifecycle(&self, jid: &Jid) -> serde_json::Value {
        wait_current(&self.base, jid, 0, WAIT).await;
        let seen = observed(&self.base, jid).await;
        assert!(seen["max_concurrent"].as_u64().unwrap() <= 1, "two upstreams for {jid}: {seen}");
        seen
    }
}

/// Whether a client's connection ended (close or error) within `wait`, skipping stanzas.
async fn ends(c: &mut EdgeClient<TcpStream>, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match c.recv(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Ok(_) => continue,
            Err(ClientError::Timeout(_)) => return false,
            Err(_) => return true,
        }
    }
}

/// What became of one stanza sent by a client.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Acked to the sender without an error.
    Acked,
    /// The sender's connection ended before any ack.
    ClosedUnacked,
    /// Neither within the wait: the sender does not know. Never acceptable in the end.
    Unknown,
}

async fn send_and_settle(c: &mut EdgeClient<TcpStream>, to: &Jid, id: &str, wait: Duration) -> Fate {
    if c.send(&message(to, id, id.as_bytes())).await.is_err() {
        return Fate::ClosedUnacked;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match c.recv(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Ok(n) if n.tag == "ack" && n.get_str("id") == Some(id) => {
                assert_eq!(n.get("error"), None, "{id} acked with an error");
                return Fate::Acked;
            }
            Ok(_) => continue,
            Err(ClientError::Timeout(_)) => return Fate::Unknown,
            Err(_) => return Fate::ClosedUnacked,
        }
    }
}

/// The ids of the messages `c` receives within `wait` (each acked).
async fn drain_messages(c: &mut EdgeClient<TcpStream>, wait: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(n) = c.recv(wait).await {
        if n.tag == "message" {
            ids.push(n.get_str("id").unwrap_or_default().to_owned());
            c.send(&ack_for(&n)).await.unwrap();
        }
    }
    ids
}

/// No stanza silently lost: every acked id was delivered; every other one was answered with a
/// close; none is left unknown.
fn assert_none_lost(fates: &[(String, Fate)], delivered: &[String]) {
    for (id, fate) in fates {
        match fate {
            Fate::Acked => assert!(delivered.contains(id), "{id} was acked but never delivered: {delivered:?}"),
            Fate::ClosedUnacked => {}
            Fate::Unknown => panic!("{id}: the sender got neither an ack nor a close"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_handshake_gets_the_client_a_503_and_leaves_nothing_open() {
    let rig = Rig::start(|_| {}).await;
    let alice = enlisted(&rig.base, "fhalice").await;
    let mut figures = Vec::new();
    for (what, mode) in [
        ("drop after 30 bytes (in the PROXY header)", Mode::DropAfter(30)),
        ("drop after 70 bytes (in the Noise hello)", Mode::DropAfter(70)),
        ("drop after 150 bytes (in the server hello)", Mode::DropAfter(150)),
        ("reset at accept", Mode::Reset),
        ("blackhole (handshake timeout 1.5 s)", Mode::Blackhole),
    ] {
        rig.fault.set(mode);
        let before = rig.fault.accepted();
        let started = tokio::time::Instant::now();
        let mut c = rig.connect(&alice).await;
        let answer = c.recv(Duration::from_secs(4)).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(tag_reason(&answer), ("failure".into(), Some("503".into())), "{what}");
        assert!(matches!(c.recv(WAIT).await, Err(ClientError::Closed)), "{what}: closed after the 503");
        let took = started.elapsed();
        // The proxy closed its side of the upstream connection, and did not dial again.
        let gone = rig.fault.wait_downstream_open(0, WAIT).await;
        assert!(gone.is_some(), "{what}: the proxy's upstream socket was left open");
        assert_eq!(rig.fault.accepted(), before + 1, "{what}: one dial, no retry");
        rig.assert_lifecycle(&alice.jid).await;
        figures.push(format!("{what}: 503 after {took:?}"));
    }
    // The path heals: the next login works, and the session is the only upstream.
    rig.fault.set(Mode::Pass);
    let mut c = rig.logged_in(&alice).await;
    assert_pings(&mut c, "healed").await;
    drop(c);
    let seen = rig.assert_lifecycle(&alice.jid).await;
    println!("upstream dying mid-handshake: {figures:#?}; chatd saw {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_session_closes_the_client_and_the_proxy_never_reconnects() {
    let rig = Rig::start(|_| {}).await;
    let bob = enlisted(&rig.base, "fsbob").await;
    let mut b = logged_in(&rig.base, &bob).await; // directly, not through the fault
    let mut fates = Vec::new();
    for (round, mode) in [Mode::Reset, Mode::DropAfter(0)].into_iter().enumerate() {
        let alice = enlisted(&rig.base, &format!("fsalice{round}")).await;
        rig.fault.set(Mode::Pass);
        let mut a = rig.logged_in(&alice).await;
        let id = format!("r{round}-before");
        fates.push((id.clone(), send_and_settle(&mut a, &bob.jid, &id, WAIT).await));
        rig.fault.set(mode);
        if mode == Mode::Reset {
            assert!(ends(&mut a, WAIT).await, "reset upstream: the client is closed");
        } else {
            // The next bytes kill the connection: the sender must learn it.
            for i in 0..3 {
                let id = format!("r{round}-during{i}");
                fates.push((id.clone(), send_and_settle(&mut a, &bob.jid, &id, WAIT).await));
            }
            assert!(ends(&mut a, WAIT).await, "dropped upstream: the client is closed");
        }
        let accepted = rig.fault.accepted();
        let total = observed(&rig.base, &alice.jid).await["total"].clone();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rig.fault.accepted(), accepted, "the proxy never reconnects on its own");
        assert_eq!(observed(&rig.base, &alice.jid).await["total"], total, "chatd saw no new connection");
        rig.assert_lifecycle(&alice.jid).await;
    }
    let delivered = drain_messages(&mut b, Duration::from_millis(800)).await;
    println!("upstream dying mid-session: fates {fates:?}, delivered {delivered:?}");
    assert_none_lost(&fates, &delivered);
    assert_pings(&mut b, "recipient-fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_simulator_is_reached_again_only_when_the_client_reconnects() {
    let base = start(|_| {}).await;
    let partner = &base.embedded.as_ref().unwrap().partner;
    let sim_config = |chat: std::net::SocketAddr| {
        let mut c = chatd_sim::Config::local();
        c.chat.listen = chat;
        c.http.listen = "127.0.0.1:0".parse().unwrap();
        c.keys.root_private_key = Some("21".repeat(32));
        c.keys.server_static_private_key = Some("43".repeat(32));
        c.integrators.push(chatd_sim::config::IntegratorConfig {
            id: 1,
            base_url: partner.base_url().to_owned(),
            issuer: partner.issuer().to_owned(),
            audience: partner.audience().to_owned(),
        });
        c
    };
    let sim1 = chatd_sim::ChatdSim::start(sim_config("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let chat_addr = sim1.chat_addr;
    // The simulator in-process outlives its listener's shutdown per connection; a fault proxy in
    // front lets "the process died" also cut the connections, as a real crash would.
    let fault = FaultProxy::start(chat_addr).await;
    let p = start(|c| upstream_via(c, &fault, sim1.root_public_key(), partner)).await;
    let t1 = local_world::demo::DemoTargets {
        partner_url: partner.base_url().to_owned(),
        sim_url: sim1.http_url(),
        edge_addr: p.tcp_addr.unwrap(),
        ca_file: None,
    };
    let user = local_world::demo::User::new("rsalice").unwrap();
    let jid = local_world::demo::enlist(&t1, &user).await.unwrap();
    let tok = local_world::demo::token(&t1, "rsalice", Some(&jid.to_string())).await.unwrap();
    let mut a = EdgeClient::connect(p.tcp_addr.unwrap(), None).await.unwrap();
    a.send_payload(&login_frame(&user, &jid, &tok).unwrap()).await.unwrap();
    assert_eq!(a.recv(WAIT).await.unwrap().tag, "success");
    assert_pings(&mut a, "before-restart").await;

    // Stop: the listener goes and every connection is cut.
    sim1.shutdown().await;
    fault.set(Mode::Reset);
    assert!(ends(&mut a, WAIT).await, "the client is closed when chatd dies");
    // Start again on the same port, same keys; the enlistment is gone with the old process.
    let sim2 = chatd_sim::ChatdSim::start(sim_config(chat_addr)).await.unwrap();
    fault.set(Mode::Pass);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = sim_stats(&sim2.http_url()).await;
    assert_eq!(stats["connections_accepted"], 0, "the proxy did not reconnect by itself: {stats}");

    // The client reconnects (after enlisting again with the new simulator).
    let t2 = local_world::demo::DemoTargets { sim_url: sim2.http_url(), ..t1 };
    let jid2 = local_world::demo::enlist(&t2, &user).await.unwrap();
    let tok2 = local_world::demo::token(&t2, "rsalice", Some(&jid2.to_string())).await.unwrap();
    let mut a = EdgeClient::connect(p.tcp_addr.unwrap(), None).await.unwrap();
    a.send_payload(&login_frame(&user, &jid2, &tok2).unwrap()).await.unwrap();
    assert_eq!(a.recv(WAIT).await.unwrap().tag, "success");
    assert_pings(&mut a, "after-restart").await;
    drop(a);
    let url = format!("{}/admin/accounts/{jid2}/connections", sim2.http_url());
    let start = tokio::time::Instant::now();
    while get_json(&url).await["current"] != 0 {
        assert!(start.elapsed() < WAIT, "upstream left open after the client left");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = get_json(&url).await;
    println!("simulator restart: new simulator saw no connection until the client came back; then {seen}");
    assert_eq!((seen["max_concurrent"].as_u64(), seen["total"].as_u64()), (Some(1), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_upstream_ends_the_session_by_the_idle_timeout_and_nothing_leaks() {
    let rig = Rig::start(|c| c.session.idle_timeout_secs = 1).await;
    let (alice, bob) = (enlisted(&rig.base, "fbalice").await, enlisted(&rig.base, "fbbob").await);
    let mut b = logged_in(&rig.base, &bob).await;
    let mut a = rig.logged_in(&alice).await;
    let mut fates = vec![("bh-before".to_owned(), send_and_settle(&mut a, &bob.jid, "bh-before", WAIT).await)];
    rig.fault.set(Mode::Blackhole);
    let started = tokio::time::Instant::now();
    // Sent into the blackhole: no ack can come; the session then idles out (the client says
    // nothing more), and the client is closed.
    fates.push(("bh-lost".to_owned(), send_and_settle(&mut a, &bob.jid, "bh-lost", Duration::from_secs(5)).await));
    let closed_after = started.elapsed();
    assert_eq!(fates[1].1, Fate::ClosedUnacked, "the sender learns by the close");
    assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");
    // The proxy closed its upstream socket (the simulator cannot see it through the blackhole).
    assert!(rig.fault.wait_downstream_open(0, WAIT).await.is_some(), "upstream socket left open");
    let accepted = rig.fault.accepted();
    // The path heals (the blackhole ends, its sockets close): chatd's side is released too.
    rig.fault.set(Mode::Pass);
    let Rig { base, proxy, fault } = rig;
    drop(fault);
    let rig_base = base;
    wait_current(&rig_base, &alice.jid, 0, WAIT).await;
    let seen = observed(&rig_base, &alice.jid).await;
    assert!(seen["max_concurrent"].as_u64().unwrap() <= 1, "{seen}");
    assert_eq!(accepted, 1, "no reconnect by the proxy");
    let delivered = drain_messages(&mut b, Duration::from_millis(800)).await;
    println!("blackholed upstream: client closed after {closed_after:?} (idle timeout 1 s); fates {fates:?}; {seen}");
    assert_none_lost(&fates, &delivered);
    assert_eq!(metric(&proxy, "waproxy_session_closes_total{reason=\"client_idle\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_without_a_fin_lose_their_upstream() {
    let p = start(|c| c.session.idle_timeout_secs = 1).await;
    let alice = enlisted(&p, "fvalice").await;
    let client_side = FaultProxy::start(p.tcp_addr.unwrap()).await;
    let via = |who: &Enlisted| {
        let (addr, frame) = (client_side.addr(), login_frame(&who.user, &who.jid, &who.token).unwrap());
        async move {
            let mut c = EdgeClient::connect(addr, None).await.unwrap();
            c.send_payload(&frame).await.unwrap();
            assert_eq!(c.recv(WAIT).await.unwrap().tag, "success");
            c
        }
    };

    // RST: the path resets both ends; chatd's connection goes at once.
    let _a = via(&alice).await;
    wait_current(&p, &alice.jid, 1, WAIT).await;
    client_side.set(Mode::Reset);
    let rst = wait_current(&p, &alice.jid, 0, Duration::from_secs(2)).await;

    // Blackholed client: the proxy hears nothing more; its idle timeout closes the upstream.
    client_side.set(Mode::Pass);
    let mut a = via(&alice).await;
    assert_pings(&mut a, "before-blackhole").await;
    client_side.set(Mode::Blackhole);
    let idle = wait_current(&p, &alice.jid, 0, Duration::from_secs(5)).await;
    assert!(idle >= Duration::from_millis(600), "not before the idle timeout: {idle:?}");
    let seen = observed(&p, &alice.jid).await;
    println!("clients vanishing: RST -> upstream gone in {rst:?}; blackholed client -> gone in {idle:?}; {seen}");
    assert!(rst < Duration::from_millis(500));
    assert_eq!((seen["max_concurrent"].as_u64(), seen["total"].as_u64()), (Some(1), Some(2)));
    assert_eq!(metric(&p, "waproxy_session_closes_total{reason=\"client_idle\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_delays_but_loses_nothing() {
    let rig = Rig::start(|_| {}).await;
    let (alice, bob) = (enlisted(&rig.base, "fdalice").await, enlisted(&rig.base, "fdbob").await);
    let mut b = logged_in(&rig.base, &bob).await;
    rig.fault.set(Mode::Delay(Duration::from_millis(40)));
    let started = tokio::time::Instant::now();
    let mut a = rig.logged_in(&alice).await;
    let login = started.elapsed();
    let mut fates = Vec::new();
    for i in 0..15 {
        let id = format!("slow{i}");
        fates.push((id.clone(), send_and_settle(&mut a, &bob.jid, &id, WAIT).await));
    }
    assert_pings(&mut a, "slow-ping").await;
    let delivered = drain_messages(&mut b, Duration::from_millis(800)).await;
    assert!(fates.iter().all(|(_, f)| *f == Fate::Acked), "{fates:?}");
    assert_none_lost(&fates, &delivered);
    drop(a);
    let seen = rig.assert_lifecycle(&alice.jid).await;
    println!("40 ms per chunk upstream: login in {login:?}, 15/15 messages acked and delivered; {seen}");
}
