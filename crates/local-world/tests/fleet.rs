//! Fleet operations in-process over real loopback sockets: the WebSocket edge, PROXY headers on
//! the edge from trusted sources only, overload shedding with retry hints, the per-IP connection
//! rate limit, `POST /drain` and limit reloads. The simulator's observation API is the oracle.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use edge::ws::WsStream;
use futures_util::SinkExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wire::{Jid, Node, Server};
use wire_io::{ClientError, EdgeClient};

fn ping(id: &str) -> Node {
    Node::new("iq").attr("id", id).attr("xmlns", "w:p").attr("type", "get").attr("to", Jid::server(Server::Whatsapp))
}

/// Opens a WebSocket to the proxy and logs in, sending the login frame cut into odd pieces.
async fn ws_login(
    addr: SocketAddr,
    path: &str,
    who: &Enlisted,
    forwarded_for: Option<&str>,
) -> EdgeClient<WsStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(xff) = forwarded_for {
        request.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut frame = Vec::new();
    wire::frame::encode_frame(&local_world::demo::login_frame(&who.user, &who.jid, &who.token).unwrap(), &mut frame)
        .unwrap();
    let (a, rest) = frame.split_at(2);
    let (b, c) = rest.split_at(rest.len() / 3);
    for piece in [a, b, c] {
        ws.send(Message::binary(piece.to_vec())).await.unwrap();
    }
    let mut client = EdgeClient::new(WsStream::new(ws));
    let first = client.recv(WAIT).await.unwrap();
    assert_eq!(first.tag, "success", "{first:?}");
    client.recv_tag("ib", WAIT).await.unwrap();
    client
}

#[tokio::test]
async fn websocket_clients_log_in_and_exchange_a_message_with_the_forwarded_ip() {
    let p = start(|c| c.edge.websocket = Some(websocket_listener(&["127.0.0.0/8"]))).await;
    let ws_addr = p.ws_addr.unwrap();
    let (alice, bob) = (enlisted(&p, "wsalice").await, enlisted(&p, "wsbob").await);
    let mut a = ws_login(ws_addr, "/ws/chat", &alice, Some("203.0.113.66, 198.51.100.23")).await;
    let mut b = ws_login(ws_addr, "/ws/chat", &bob, None).await;

    a.send(&ping("wsping")).await.unwrap();
    assert_eq!(a.recv_tag("iq", WAIT).await.unwrap().0.get_str("id"), Some("wsping"));
    let ciphertext: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    a.send(&message(&bob.jid, "WS1", &ciphertext)).await.unwrap();
    assert_eq!(a.recv_tag("ack", WAIT).await.unwrap().0.get("error"), None);
    let (got, _) = b.recv_tag("message", WAIT).await.unwrap();
    assert_eq!(got.get("from").unwrap().to_string(), alice.jid.to_string());
    assert_eq!(got.child("enc").unwrap().content, wire::Content::Bytes(ciphertext), "ciphertext untouched");
    b.send(&ack_for(&got)).await.unwrap();

    // The trusted peer's X-Forwarded-For names the client: the right-most entry, the one the
    // trusted hop appended (the client wrote 203.0.113.66).
    assert_eq!(observed(&p, &alice.jid).await["client_ips"], serde_json::json!(["198.51.100.23"]));
    assert_eq!(observed(&p, &bob.jid).await["client_ips"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(metric(&p, "waproxy_edge_connections_total{listener=\"ws\"}").await, 2.0);

    // Another path: 404, no session.
    let wrong = tokio_tungstenite::connect_async(format!("ws://{ws_addr}/other")).await;
    assert!(wrong.is_err(), "upgrade on another path is refused");

    // A proxy that does not trust loopback ignores the header.
    let q = start(|c| c.edge.websocket = Some(websocket_listener(&["10.0.0.0/8"]))).await;
    let carol = enlisted(&q, "wscarol").await;
    let _c = ws_login(q.ws_addr.unwrap(), "/ws/chat", &carol, Some("198.51.100.24")).await;
    assert_eq!(observed(&q, &carol.jid).await["client_ips"], serde_json::json!(["127.0.0.1"]));
}

fn proxy_v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 10.0.0.1 40000 5222\r\n").into_bytes()
}

#[tokio::test]
async fn proxy_header_from_a_trusted_source_is_forwarded_and_other_connections_are_refused() {
    let p = start(|c| {
        c.edge.proxy_protocol = true;
        c.edge.proxy_protocol_trusted_cidrs = vec!["127.0.0.0/8".into()];
    })
    .await;
    let addr = p.tcp_addr.unwrap();
    let (dora, eve, finn) = (enlisted(&p, "ppdora").await, enlisted(&p, "ppeve").await, enlisted(&p, "ppfinn").await);

    // v1 header and the login in one write.
    let mut d = EdgeClient::connect(addr, None).await.unwrap();
    let mut bytes = proxy_v1("198.51.100.7");
    wire::frame::encode_frame(&local_world::demo::login_frame(&dora.user, &dora.jid, &dora.token).unwrap(), &mut bytes)
        .unwrap();
    d.stream_mut().write_all(&bytes).await.unwrap();
    assert_eq!(d.recv(WAIT).await.unwrap().tag, "success");
    assert_eq!(observed(&p, &dora.jid).await["client_ips"], serde_json::json!(["198.51.100.7"]));

    // v2 header (IPv6 source) in its own write, then the login.
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        ("[2001:db8::7]:1234".parse::<SocketAddr>().unwrap(), "[2001:db8::1]:5222".parse::<SocketAddr>().unwrap()),
    )
    .build()
    .unwrap();
    let mut e = EdgeClient::connect(addr, None).await.unwrap();
    e.stream_mut().write_all(&v2).await.unwrap();
    e.send_payload(&local_world::demo::login_frame(&eve.user, &eve.jid, &eve.token).unwrap()).await.unwrap();
    assert_eq!(e.recv(WAIT).await.unwrap().tag, "success");
    assert_eq!(observed(&p, &eve.jid).await["client_ips"], serde_json::json!(["2001:db8::7"]));

    // No header from a trusted source: closed without an answer, nothing upstream.
    let mut f = connect_with(&p, &finn, &finn.token, None).await;
    assert!(matches!(f.recv(WAIT).await, Err(ClientError::Closed | ClientError::Io(_))));
    assert_eq!(metric(&p, "waproxy_proxy_protocol_refused_total{reason=\"invalid\"}").await, 1.0);

    // A proxy that trusts only 10.0.0.0/8 refuses loopback peers even with a valid header.
    let q = start(|c| {
        c.edge.proxy_protocol = true;
        c.edge.proxy_protocol_trusted_cidrs = vec!["10.0.0.0/8".into()];
    })
    .await;
    let gus = enlisted(&q, "ppgus").await;
    let mut g = EdgeClient::connect(q.tcp_addr.unwrap(), None).await.unwrap();
    let mut bytes = proxy_v1("198.51.100.8");
    wire::frame::encode_frame(&local_world::demo::login_frame(&gus.user, &gus.jid, &gus.token).unwrap(), &mut bytes)
        .unwrap();
    let _ = g.stream_mut().write_all(&bytes).await;
    assert!(matches!(g.recv(WAIT).await, Err(ClientError::Closed | ClientError::Io(_))));
    assert_eq!(metric(&q, "waproxy_proxy_protocol_refused_total{reason=\"untrusted\"}").await, 1.0);
    assert_eq!(observed(&q, &gus.jid).await["total"], 0, "nothing reached chatd");
    assert_eq!(metric(&q, "waproxy_logins_total{result=\"forwarded\"}").await, 0.0);
}

fn retry_after(n: &Node) -> u32 {
    assert_eq!((n.tag.as_str(), n.get_str("reason")), ("failure", Some("429")), "{n:?}");
    n.get_str("retry_after").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no retry_after: {n:?}"))
}

#[tokio::test]
async fn overload_sheds_new_logins_with_a_retry_hint_while_sessions_keep_working() {
    let p = start(|c| c.limits.max_sessions = 2).await;
    let users = [enlisted(&p, "ovl0").await, enlisted(&p, "ovl1").await, enlisted(&p, "ovl2").await];
    let mut a = logged_in(&p, &users[0]).await;
    let _b = logged_in(&p, &users[1]).await;
    let mut hints = Vec::new();
    for _ in 0..5 {
        let mut c = connect_with(&p, &users[2], &users[2].token, None).await;
        hints.push(retry_after(&c.recv(WAIT).await.unwrap()));
        assert!(matches!(c.recv(WAIT).await, Err(ClientError::Closed)));
    }
    println!("retry_after hints at max_sessions: {hints:?}");
    assert!(hints.iter().all(|h| (10..=20).contains(h)), "{hints:?}");
    a.send(&ping("still-served")).await.unwrap();
    assert_eq!(a.recv_tag("iq", WAIT).await.unwrap().0.get_str("id"), Some("still-served"));
    assert_eq!(metric(&p, "waproxy_logins_total{result=\"overloaded\"}").await, 5.0);
    assert_eq!(observed(&p, &users[2].jid).await["total"], 0, "shed logins never reach chatd");

    // Reload with a higher limit: the next login is admitted, nothing established was touched.
    let mut config = proxy::config::Config::local();
    config.limits.max_sessions = 3;
    p.reload(Ok(&config)).unwrap();
    logged_in(&p, &users[2]).await;
    a.send(&ping("after-reload")).await.unwrap();
    assert_eq!(a.recv_tag("iq", WAIT).await.unwrap().0.get_str("id"), Some("after-reload"));
    assert_eq!(metric(&p, "waproxy_config_reloads_total{result=\"ok\"}").await, 1.0);
}

#[tokio::test]
async fn logins_beyond_the_concurrent_handshake_limit_are_shed() {
    // chatd that accepts and never answers: the first login stays in its handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let p = start(|c| {
        c.limits.max_concurrent_handshakes = 1;
        c.upstream = Some(proxy::config::UpstreamSection {
            addr: silent_addr.to_string(),
            proxy_protocol: proxy::config::ProxyProtocolVersion::V1,
            root_public_key: Some("11".repeat(32)),
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 10_000,
            noise_ik: true,
        });
    })
    .await;
    let (hal, ida) = (enlisted(&p, "hshal").await, enlisted(&p, "hsida").await);
    let _stuck = connect_with(&p, &hal, &hal.token, None).await;
    let start = tokio::time::Instant::now();
    while metric(&p, "waproxy_handshakes_in_flight").await < 1.0 {
        assert!(start.elapsed() < WAIT, "the first login never reached its handshake");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut shed = connect_with(&p, &ida, &ida.token, None).await;
    let hint = retry_after(&shed.recv(WAIT).await.unwrap());
    assert!((2..=4).contains(&hint), "{hint}");
    assert_eq!(metric(&p, "waproxy_handshakes_in_flight").await, 1.0);
    assert_eq!(metric(&p, "waproxy_logins_total{result=\"overloaded\"}").await, 1.0);
    hold.abort();
}

#[tokio::test]
async fn per_ip_rate_limit_refuses_a_burst_and_spares_other_sources() {
    let p = start(|c| c.limits.per_ip_connections_per_sec = 5).await;
    let addr = p.tcp_addr.unwrap();
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(EdgeClient::connect(addr, None).await.unwrap());
    }
    let mut refused = 0;
    for c in &mut conns {
        match c.recv(Duration::from_millis(300)).await {
            Ok(n) => {
                let hint = retry_after(&n);
                assert!((1..=3).contains(&hint), "{hint}");
                refused += 1;
            }
            Err(ClientError::Timeout(_)) => {} // admitted: waiting for its login frame
            Err(e) => panic!("{e}"),
        }
    }
    println!("20 connections at once from one IP, 5/s burst 10: {refused} refused");
    assert!((8..=10).contains(&refused), "burst of 10 admitted, the rest refused: {refused}");
    assert_eq!(metric(&p, "waproxy_connections_rate_limited_total").await, refused as f64);
    // Another source address is unaffected.
    let jo = enlisted(&p, "ratejo").await;
    let mut j = connect_with(&p, &jo, &jo.token, Some("127.0.0.2".parse().unwrap())).await;
    assert_eq!(j.recv(WAIT).await.unwrap().tag, "success");
}

async fn post_drain(admin: SocketAddr, from: Option<std::net::IpAddr>) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let mut s = socket.connect(admin).await.unwrap();
    s.write_all(b"POST /drain HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn post_drain_from_loopback_drains_and_stops_accepting() {
    let p = start(|c| c.drain.window_secs = 1).await;
    let kai = enlisted(&p, "drkai").await;
    let mut k = logged_in(&p, &kai).await;
    let (status, _) = get_text(&format!("http://{}/readyz", p.admin_addr)).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&p, "waproxy_draining").await, 0.0);
    assert_eq!(post_drain(p.admin_addr, None).await, 202);
    let (status, body) = get_text(&format!("http://{}/readyz", p.admin_addr)).await;
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    assert_eq!(metric(&p, "waproxy_draining").await, 1.0);
    let (err, _) = k.recv_tag("stream:error", WAIT).await.unwrap();
    assert_eq!((err.get_str("code"), err.get_str("text")), (Some("503"), Some("draining")));
    assert!(matches!(k.recv(WAIT).await, Err(ClientError::Closed)));
    tokio::time::timeout(WAIT, p.drained()).await.unwrap();
    // The listener is closed: new connections are refused by the kernel.
    assert!(tokio::net::TcpStream::connect(p.tcp_addr.unwrap()).await.is_err());
}

#[tokio::test]
async fn post_drain_from_a_non_loopback_peer_is_forbidden() {
    // A local non-loopback address, if the machine has one.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let local = probe.connect("10.255.255.255:9").ok().and_then(|_| probe.local_addr().ok()).map(|a| a.ip());
    let Some(ip) = local.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()) else {
        println!("no non-loopback address on this machine; skipped");
        return;
    };
    let p = start(|c| c.admin.listen = "0.0.0.0:0".parse().unwrap()).await;
    let admin = SocketAddr::new(ip, p.admin_addr.port());
    assert_eq!(post_drain(admin, Some(ip)).await, 403);
    let (status, _) = get_text(&format!("http://127.0.0.1:{}/readyz", p.admin_addr.port())).await;
    assert_eq!(status, 200, "still ready");
}
