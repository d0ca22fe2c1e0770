//! Test support: the proxy on its embedded default (chatd-sim and partner-server in-process), on
//! ephemeral loopback ports, with helpers to enlist users and log them in through the edge.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use local_world::LocalWorld;
use local_world::demo::{DemoTargets, User, enlist, login_frame, token};
use proxy::config::Config;
use tokio::net::TcpStream;
use wire::{Jid, Node};
use wire_io::EdgeClient;

pub const WAIT: Duration = Duration::from_secs(5);

pub async fn start(edit: impl FnOnce(&mut Config)) -> LocalWorld {
    let mut config = Config::local();
    config.edge.listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    edit(&mut config);
    local_world::start(config).await.unwrap()
}

pub fn targets(p: &LocalWorld) -> DemoTargets {
    let e = p.embedded.as_ref().unwrap();
    DemoTargets {
        partner_url: e.partner.base_url().to_owned(),
        sim_url: e.sim.http_url(),
        edge_addr: p.tcp_addr.unwrap(),
        ca_file: Some(e.ca_file.clone()),
    }
}

/// A user enlisted with the simulator, and a token bound to its account.
pub struct Enlisted {
    pub user: User,
    pub jid: Jid,
    pub token: String,
}

pub async fn enlisted(p: &LocalWorld, name: &str) -> Enlisted {
    enlisted_at(&targets(p), name).await
}

/// Like [`enlisted`], against a proxy running as a separate process.
pub async fn enlisted_at(t: &DemoTargets, name: &str) -> Enlisted {
    let user = User::new(name).unwrap();
    let jid = enlist(t, &user).await.unwrap();
    let token = token(t, name, Some(&jid.to_string())).await.unwrap();
    Enlisted { user, jid, token }
}

/// Connects to the edge (from `from` when given) and sends the login frame with `token`.
pub async fn connect_with(p: &LocalWorld, who: &Enlisted, token: &str, from: Option<IpAddr>) -> EdgeClient<TcpStream> {
    let mut c = EdgeClient::connect(p.tcp_addr.unwrap(), from).await.unwrap();
    c.send_payload(&login_frame(&who.user, &who.jid, token).unwrap()).await.unwrap();
    c
}

/// Logs in and expects `<success>` (and the offline marker after it).
pub async fn logged_in(p: &LocalWorld, who: &Enlisted) -> EdgeClient<TcpStream> {
    let mut c = connect_with(p, who, &who.token, None).await;
    let first = c.recv(WAIT).await.unwrap();
    assert_eq!(first.tag, "success", "{first:?}");
    c.recv_tag("ib", WAIT).await.unwrap();
    c
}

/// HTTP or HTTPS; trusts the platform's roots and this process's embedded local CA (the
/// simulator's admin API is on HTTPS like the rest of its HTTP side).
pub fn https_client() -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
> {
    tls_config::https_client(&tls_config::ClientTls::default()).unwrap()
}

pub async fn get_json(url: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    let client = https_client();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

pub async fn get_text(url: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let client = https_client();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    (status, String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
}

/// What the simulator saw for an account.
pub async fn observed(p: &LocalWorld, jid: &Jid) -> serde_json::Value {
    get_json(&format!("{}/admin/accounts/{}/connections", targets(p).sim_url, jid)).await
}

/// Polls the simulator until `current` for `jid` is `want`; returns how long that took.
pub async fn wait_current(p: &LocalWorld, jid: &Jid, want: u64, limit: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        if observed(p, jid).await["current"] == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "current never reached {want} for {jid}: {}", observed(p, jid).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn message(to: &Jid, id: &str, enc: &[u8]) -> Node {
    Node::new("message")
        .attr("to", to.clone())
        .attr("id", id)
        .attr("type", "text")
        .children(vec![Node::new("enc").attr("v", "2").attr("type", "msg").bytes(enc.to_vec())])
}

pub fn ack_for(stanza: &Node) -> Node {
    let mut ack = Node::new("ack").attr("class", stanza.tag.as_str()).attr("id", stanza.get_str("id").unwrap());
    if let Some(from) = stanza.get("from") {
        ack = ack.attr("to", from.clone());
    }
    ack
}

/// The value of a metric line (first match) from the proxy's /metrics.
pub async fn metric(p: &LocalWorld, prefix: &str) -> f64 {
    let (_, text) = get_text(&format!("http://{}/metrics", p.admin_addr)).await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The tags of the stanzas `c` receives until nothing more comes within `quiet` (or it closes).
pub async fn tags_until_quiet<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut c: EdgeClient<S>,
    quiet: Duration,
) -> Vec<String> {
    let mut tags = Vec::new();
    while let Ok(n) = c.recv(quiet).await {
        tags.push(n.tag);
    }
    tags
}

/// Pings through an established session and expects the pong: the session is unaffected.
pub async fn assert_pings<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(c: &mut EdgeClient<S>, id: &str) {
    c.send(&wire::keepalive::ping(id)).await.unwrap_or_else(|e| panic!("ping {id}: {e}"));
    let (pong, _) = c.recv_tag("iq", WAIT).await.unwrap_or_else(|e| panic!("pong {id}: {e}"));
    assert_eq!(pong.get_str("id"), Some(id));
}

/// The simulator's `/admin/stats` at `sim_url`.
pub async fn sim_stats(sim_url: &str) -> serde_json::Value {
    get_json(&format!("{sim_url}/admin/stats")).await
}

/// Decodes the stanzas in a raw byte stream read from the edge (whole frames only).
pub fn decode_frames(mut bytes: &[u8]) -> Vec<Node> {
    let mut out = Vec::new();
    let mut decoder = wire::decode::Decoder::default();
    while bytes.len() >= 3 {
        let len = ((bytes[0] as usize) << 16) | ((bytes[1] as usize) << 8) | bytes[2] as usize;
        if bytes.len() < 3 + len {
            break;
        }
        if let Ok(n) = decoder.decode_payload(&bytes[3..3 + len]) {
            out.push(n.to_owned());
        }
        bytes = &bytes[3 + len..];
    }
    out
}

/// Reads what the proxy sends until it closes (or `limit` passes): the stanzas, whether it
/// closed, and when.
pub async fn read_until_close<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> (Vec<Node>, bool, Duration) {
    use tokio::io::AsyncReadExt;
    let start = tokio::time::Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at(start + limit, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (decode_frames(&bytes), closed, start.elapsed())
}

/// `(tag, reason)` of a stanza, for compact assertions.
pub fn tag_reason(n: &Node) -> (String, Option<String>) {
    (n.tag.clone(), n.get_str("reason").map(str::to_owned))
}

/// The addresses `interop-local` prints at start (its banner), read from its stdout until its
/// last line (`serving`, after the embedded demo when there is one).
#[derive(Debug, Default)]
pub struct Banner {
    pub tcp: Option<std::net::SocketAddr>,
    pub tls: Option<std::net::SocketAddr>,
    pub ws: Option<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    pub sim: Option<String>,
    pub partner: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// The embedded simulator's WebSocket chat listener (for WhatsApp Web client libraries).
    pub sim_ws: Option<std::net::SocketAddr>,
}

pub fn read_banner(stdout: impl std::io::BufRead) -> Banner {
    let mut b = Banner::default();
    let addr = |line: &str, prefix: &str| line.rsplit(prefix).next().and_then(|a| a.split('/').next()?.parse().ok());
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.starts_with("clients connect to   tcp://") {
            b.tcp = addr(&line, "tcp://");
        } else if line.starts_with("clients connect to   tls://") {
            b.tls = addr(&line, "tls://");
        } else if line.starts_with("clients connect to   ws://") {
            b.ws = addr(&line, "ws://");
        } else if line.starts_with("metrics at") {
            b.admin = addr(&line, "http://");
        } else if line.starts_with("embedded chatd-sim") {
            b.sim = line.split(" https ").nth(1).map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("local CA") {
            b.ca_file = rest.split_whitespace().next().map(Into::into);
            // The process's own HTTPS clients (get_json, get_text) trust that process's CA too.
            if let Some(ca) = &b.ca_file {
                tls_config::trust_ca_file_in_this_process(ca).unwrap();
            }
        } else if line.starts_with("whatsapp web clients ws://") {
            b.sim_ws = addr(&line, "ws://");
        } else if line.starts_with("embedded partner") {
            b.partner = line.split_whitespace().last().map(str::to_owned);
        } else if line == "serving" {
            break;
        }
    }
    b
}

/// A self-signed certificate for `localhost`, written to `dir/cert.pem` and `dir/key.pem` (the
/// TLS edge's files).
pub fn self_signed(dir: &std::path::Path) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    cert
}

/// A TLS 1.3 client that trusts only `trust`.
pub fn tls_connector(trust: &rcgen::CertifiedKey<rcgen::KeyPair>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A WebSocket edge listener on an ephemeral loopback port at `/ws/chat`, taking the client's
/// address from `X-Forwarded-For` when the peer is in `trusted`.
pub fn websocket_listener(trusted: &[&str]) -> proxy::config::WebSocketSection {
    proxy::config::WebSocketSection {
        listen: "127.0.0.1:0".parse().unwrap(),
        path: "/ws/chat".into(),
        trusted_forwarded_cidrs: trusted.iter().map(|c| (*c).to_owned()).collect(),
        forwarded_header: "x-forwarded-for".into(),
    }
}
