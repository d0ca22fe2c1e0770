//! Test support shared by the crates that test against the chatd simulator: a Partner's JWKS, a
//! simulator, device keys, enlistment and provisioning, a real chat client (Noise initiator over
//! TCP), and HTTP helpers. Everything runs on loopback sockets; panics are test failures.

pub mod fault;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use chatd_sim::{ChatdSim, Config, RunningSim};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jwks::{JwksServer, PartnerClaims, RunningJwksServer, SigningKeys};
use prost::Message as _;
use tokio::net::TcpStream;
use wire::connect::{ClientConnect, ConnectConfig};
use wire::decode::Decoder;
use wire::noise::{HandshakePattern, StaticKeypair, Transport};
use wire::proto::{AppVersion, ClientPayload};
use wire::{Node, Value};
use wire_io::EdgeClient;
use wire_io::net::DialOptions;

pub const WAIT: Duration = Duration::from_secs(5);

/// A Partner: signing keys published on a loopback JWKS server.
pub struct Partner {
    pub keys: Arc<SigningKeys>,
    pub jwks: RunningJwksServer,
    pub id: u16,
}

impl Partner {
    pub async fn start(id: u16) -> Partner {
        let keys = Arc::new(SigningKeys::generate().unwrap());
        let jwks =
            JwksServer::start("127.0.0.1:0".parse().unwrap(), "/.well-known/oauth/openid/jwks", Arc::clone(&keys))
                .await
                .unwrap();
        Partner { keys, jwks, id }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.jwks.local_addr())
    }

    pub fn token(&self, user: &str) -> String {
        self.keys.sign(&PartnerClaims::new(self.base_url(), "whatsapp", user, Duration::from_secs(600), None)).unwrap()
    }

    pub fn integrator(&self) -> chatd_sim::config::IntegratorConfig {
        chatd_sim::config::IntegratorConfig {
            id: self.id,
            base_url: self.base_url(),
            issuer: self.base_url(),
            audience: "whatsapp".into(),
        }
    }
}

/// A simulator with one Partner configured.
pub async fn sim_with(partner: &Partner, edit: impl FnOnce(&mut Config)) -> RunningSim {
    let mut config = Config::local();
    config.integrators.push(partner.integrator());
    config.push.initial_backoff_ms = 20;
    edit(&mut config);
    ChatdSim::start(config).await.unwrap()
}

/// A device's keys: Noise static, Signal identity and signed prekey.
pub struct Device {
    pub noise: [u8; 32],
    pub identity_private: [u8; 32],
    pub signed_prekey: [u8; 32],
}

pub fn random32() -> [u8; 32] {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).unwrap();
    k
}

impl Default for Device {
    fn default() -> Self {
        Device::new()
    }
}

impl Device {
    pub fn new() -> Device {
        Device { noise: random32(), identity_private: random32(), signed_prekey: random32() }
    }

    pub fn noise_public(&self) -> [u8; 32] {
        StaticKeypair::from_private(&self.noise).unwrap().public()
    }

    pub fn identity(&self) -> [u8; 32] {
        wire::xeddsa::public_key(&self.identity_private)
    }

    pub fn skey_signature(&self) -> [u8; 64] {
        let mut msg = vec![5u8];
        msg.extend_from_slice(&self.signed_prekey);
        wire::xeddsa::sign_with_os_rng(&self.identity_private, &msg).unwrap()
    }

    /// The seed's enlistment arguments, as pairs.
    pub fn enlist_form(&self, integrator: u16, user: &str, token: &str) -> Vec<(String, String)> {
        let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        vec![
            ("authkey".into(), e(&self.noise_public())),
            ("e_keytype".into(), e(&[5])),
            ("e_regid".into(), e(&[0, 0, 0x30, 0x39])),
            ("e_ident".into(), e(&self.identity())),
            ("e_skey_id".into(), e(&[0, 0, 1])),
            ("e_skey_val".into(), e(&self.signed_prekey)),
            ("e_skey_sig".into(), e(&self.skey_signature())),
            ("integrator_id".into(), integrator.to_string()),
            ("user_identifier".into(), user.into()),
            ("token".into(), token.into()),
        ]
    }
}

/// HTTP or HTTPS (the platform's roots, and the local CA of an embedded proxy in this process).
pub fn http() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    tls_config::https_client(&tls_config::ClientTls::default()).expect("a TLS client on the platform's roots")
}

pub async fn request(method: &str, url: &str, content_type: &str, body: Vec<u8>) -> (u16, Bytes) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, http().request(req)).await.expect("http timeout").expect("http request");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

pub async fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = request("GET", url, "application/json", Vec::new()).await;
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

pub async fn post_json(url: &str, v: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, body) = request("POST", url, "application/json", v.to_string().into_bytes()).await;
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

pub async fn enlist_raw(sim: &RunningSim, form: &[(String, String)]) -> serde_json::Value {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let (status, body) = request(
        "POST",
        &format!("{}/3p/interop_reg", sim.http_url()),
        "application/x-www-form-urlencoded",
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Enlists a Partner user; returns the login JID and the account id.
pub async fn enlist(sim: &RunningSim, partner: &Partner, device: &Device, user: &str) -> (String, u64) {
    let answer = enlist_raw(sim, &device.enlist_form(partner.id, user, &partner.token(user))).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let login = answer["login"].as_str().unwrap().to_owned();
    let id = login.split_once('-').unwrap().1.trim_end_matches("@interop").parse().unwrap();
    (login, id)
}

/// Provisions a WhatsApp-side user through the admin API.
pub async fn provision_wa_user(sim: &RunningSim, phone: u64, device: &Device) -> String {
    let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let (status, v) = post_json(
        &format!("{}/admin/wa-users", sim.http_url()),
        serde_json::json!({
            "phone": phone,
            "device": 1,
            "noise_public": e(&device.noise_public()),
            "registration_id": 7,
            "identity": e(&device.identity()),
            "signed_prekey": {"id": 1, "public": e(&device.signed_prekey), "signature": e(&device.skey_signature())},
            "prekeys": [{"id": 1, "public": e(&random32())}, {"id": 2, "public": e(&random32())}],
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["jid"].as_str().unwrap().to_owned()
}

pub fn interop_payload(account_id: u64, token: &str) -> ClientPayload {
    ClientPayload::interop_login(account_id, token.as_bytes().to_vec(), AppVersion::new(2, 3000, 1))
}

pub fn web_payload(phone: u64) -> ClientPayload {
    ClientPayload::web_login(phone, 1, AppVersion::new(2, 3000, 1))
}

/// A connected, handshaken chat client.
pub struct ChatClient {
    frames: EdgeClient<TcpStream>,
    transport: Transport,
    decoder: Decoder<'static>,
}

/// How to reach chatd.
pub struct Dial<'a> {
    pub addr: SocketAddr,
    pub root: [u8; 32],
    /// Bind the client socket to this loopback address (to check the recorded IP).
    pub from: Option<std::net::IpAddr>,
    /// Bytes sent before the `WA` header (a PROXY header).
    pub preamble: Option<&'a [u8]>,
}

impl<'a> Dial<'a> {
    pub fn to(sim: &RunningSim) -> Dial<'a> {
        Dial { addr: sim.chat_addr, root: sim.root_public_key(), from: None, preamble: None }
    }
}

impl ChatClient {
    /// Connects and logs in; returns the client and chatd's first stanza (`<success>` or
    /// `<failure>`).
    pub async fn login(dial: Dial<'_>, noise_private: &[u8; 32], payload: &ClientPayload) -> (ChatClient, Node) {
        let config = ConnectConfig::new(dial.root);
        let (client, first, _) = Self::resume(dial, noise_private, payload, &config).await;
        (client, first)
    }

    /// Like [`login`](Self::login), with `config`'s certificate cache (its root, not `dial.root`):
    /// Noise IK when the cache holds chatd's chain from an earlier login, XX otherwise. Returns the
    /// pattern that completed as well.
    pub async fn resume(
        dial: Dial<'_>,
        noise_private: &[u8; 32],
        payload: &ClientPayload,
        config: &ConnectConfig,
    ) -> (ChatClient, Node, HandshakePattern) {
        let mut stream =
            wire_io::net::dial(dial.addr, DialOptions { from: dial.from, keepalive: false }).await.unwrap();
        let key = StaticKeypair::from_private(noise_private).unwrap();
        let start = ClientConnect::resume(
            key,
            &payload.encode_to_vec(),
            config,
            dial.preamble.unwrap_or_default(),
            wire_io::clock::unix_now(),
        )
        .unwrap();
        let done = tokio::time::timeout(WAIT, wire_io::handshake::connect(&mut stream, start)).await.unwrap().unwrap();
        let pattern = done.pattern;
        let frames = EdgeClient::with_buffered(stream, done.leftover);
        let mut client = ChatClient { frames, transport: done.transport, decoder: Decoder::default() };
        let first = client.recv().await.expect("chatd's first stanza");
        (client, first, pattern)
    }

    pub async fn send(&mut self, node: &Node) {
        let mut buf = BytesMut::from(&wire::encode::encode(node).unwrap()[..]);
        self.transport.seal(&mut buf).unwrap();
        self.frames.send_payload(&buf).await.unwrap();
    }

    /// The next stanza, or `None` when chatd closed the connection or nothing came in time.
    pub async fn recv(&mut self) -> Option<Node> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Option<Node> {
        let mut frame = self.frames.recv_payload(wait).await.ok()?;
        let plain = self.transport.open(&mut frame).unwrap();
        Some(self.decoder.decode_payload(plain).unwrap().to_owned())
    }

    /// Receives until a stanza with tag `tag` arrives (others are returned too, in order).
    pub async fn recv_tag(&mut self, tag: &str) -> (Node, Vec<Node>) {
        let mut skipped = Vec::new();
        loop {
            let node = self.recv().await.unwrap_or_else(|| panic!("no <{tag}> (skipped {skipped:?})"));
            if node.tag == tag {
                return (node, skipped);
            }
            skipped.push(node);
        }
    }

    /// Sends an IQ and returns its result.
    pub async fn iq(&mut self, iq: Node) -> Node {
        let id = iq.get_str("id").unwrap().to_owned();
        self.send(&iq).await;
        loop {
            let (node, _) = self.recv_tag("iq").await;
            if node.get_str("id") == Some(&id) {
                return node;
            }
        }
    }

    /// Acks a delivered stanza as clients do.
    pub async fn ack(&mut self, stanza: &Node) {
        let mut ack = Node::new("ack").attr("class", stanza.tag.as_str()).attr("id", stanza.get_str("id").unwrap());
        if let Some(from) = stanza.get("from") {
            ack = ack.attr("to", from.clone());
        }
        self.send(&ack).await;
    }
}

pub fn jid(s: &str) -> Value {
    Value::from_text(s)
}

pub fn message(to: &str, id: &str, ciphertext: &[u8]) -> Node {
    Node::new("message")
        .attr("to", jid(to))
        .attr("id", id)
        .attr("type", "text")
        .children(vec![Node::new("enc").attr("v", "2").attr("type", "msg").bytes(ciphertext.to_vec())])
}

pub async fn observed(sim: &RunningSim, account: &str) -> serde_json::Value {
    get_json(&format!("{}/admin/accounts/{}/connections", sim.http_url(), account)).await
}
