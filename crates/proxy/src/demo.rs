//! The built-in demo: two Partner users enlist with the simulator, log in through the proxy, and
//! exchange a message and a receipt through it. Every stanza is printed, so the run shows real
//! traffic crossing the proxy.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use edge::client::EdgeClient;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use wire::noise::StaticKeypair;
use wire::proto::{AppVersion, ClientPayload};
use wire::text::{XmlStyle, to_xml};
use wire::{Jid, Node, Value};

const WAIT: Duration = Duration::from_secs(10);

/// Where the demo's parties are.
pub struct DemoTargets {
    pub partner_url: String,
    pub sim_url: String,
    pub edge_addr: SocketAddr,
}

/// What went wrong, in words for the console.
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

fn err(context: &str, e: impl std::fmt::Display) -> DemoError {
    DemoError(format!("{context}: {e}"))
}

/// A Partner user's device keys.
pub struct User {
    pub name: String,
    pub noise: [u8; 32],
    pub identity_private: [u8; 32],
    pub signed_prekey: [u8; 32],
}

impl User {
    /// A user with fresh random keys.
    pub fn new(name: &str) -> Result<User, DemoError> {
        Ok(User {
            name: name.to_owned(),
            noise: random32()?,
            identity_private: random32()?,
            signed_prekey: random32()?,
        })
    }
}

fn random32() -> Result<[u8; 32], DemoError> {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).map_err(|_| DemoError("no OS randomness".into()))?;
    Ok(k)
}

async fn http(method: &str, url: &str, content_type: &str, body: Vec<u8>) -> Result<serde_json::Value, DemoError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| err(url, e))?;
    let resp =
        tokio::time::timeout(WAIT, client.request(req)).await.map_err(|e| err(url, e))?.map_err(|e| err(url, e))?;
    let body = resp.into_body().collect().await.map_err(|e| err(url, e))?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| err(url, e))
}

/// A Partner JWT for `user` from the partner server, bound to `account` when given.
pub async fn token(targets: &DemoTargets, user: &str, account: Option<&str>) -> Result<String, DemoError> {
    let mut req = serde_json::json!({ "user_identifier": user });
    if let Some(a) = account {
        req["wa_account"] = a.into();
    }
    let v =
        http("POST", &format!("{}/oauth/token", targets.partner_url), "application/json", req.to_string().into_bytes())
            .await?;
    v["access_token"].as_str().map(str::to_owned).ok_or_else(|| DemoError(format!("no token for {user}: {v}")))
}

/// Enlists `user` (the seed's Part 1 request) and returns its interop JID.
pub async fn enlist(targets: &DemoTargets, user: &User) -> Result<Jid, DemoError> {
    let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let noise_public = StaticKeypair::from_private(&user.noise).map_err(|e| err("noise key", e))?.public();
    let mut signed = vec![5u8];
    signed.extend_from_slice(&user.signed_prekey);
    let signature = wire::xeddsa::sign_with_os_rng(&user.identity_private, &signed).map_err(|e| err("signing", e))?;
    let token = token(targets, &user.name, None).await?;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("authkey", &e(&noise_public))
        .append_pair("e_keytype", &e(&[5]))
        .append_pair("e_regid", &e(&[0, 0, 0x30, 0x39]))
        .append_pair("e_ident", &e(&wire::xeddsa::public_key(&user.identity_private)))
        .append_pair("e_skey_id", &e(&[0, 0, 1]))
        .append_pair("e_skey_val", &e(&user.signed_prekey))
        .append_pair("e_skey_sig", &e(&signature))
        .append_pair("integrator_id", "1")
        .append_pair("user_identifier", &user.name)
        .append_pair("token", &token)
        .finish();
    let v = http(
        "POST",
        &format!("{}/3p/interop_reg", targets.sim_url),
        "application/x-www-form-urlencoded",
        form.into_bytes(),
    )
    .await?;
    let login = v["login"].as_str().ok_or_else(|| DemoError(format!("enlisting {}: {v}", user.name)))?;
    Jid::parse(login).map_err(|e| err("login JID", e))
}

fn show(who: &str, arrow: &str, node: &Node) {
    println!("  {who:<5} {arrow} {}", to_xml(node, XmlStyle::Compact));
}

/// The edge login frame for `user` with `token`.
pub fn login_frame(user: &User, jid: &Jid, token: &str) -> Result<Vec<u8>, DemoError> {
    let account_id = jid.user.parse().map_err(|e| err("account id", e))?;
    let payload = ClientPayload::interop_login(account_id, token.as_bytes().to_vec(), AppVersion::new(2, 3000, 1));
    Ok(edge::login::build(jid, &user.noise, &payload.encode_to_vec()))
}

/// Logs `user` in through the proxy and returns the connection.
async fn login(targets: &DemoTargets, user: &User, jid: &Jid) -> Result<EdgeClient<tokio::net::TcpStream>, DemoError> {
    let token = token(targets, &user.name, Some(&jid.to_string())).await?;
    let mut client =
        EdgeClient::connect(targets.edge_addr, None).await.map_err(|e| err("connecting to the proxy", e))?;
    client.send_payload(&login_frame(user, jid, &token)?).await.map_err(|e| err("login", e))?;
    println!("  {:<5} -> <login jid=\"{jid}\"> (static key and ClientPayload, sent to the proxy only)", user.name);
    let first = client.recv(WAIT).await.map_err(|e| err("login answer", e))?;
    show(&user.name, "<-", &first);
    if first.tag != "success" {
        return Err(DemoError(format!("{} was not logged in", user.name)));
    }
    let (offline, _) = client.recv_tag("ib", WAIT).await.map_err(|e| err("offline marker", e))?;
    show(&user.name, "<-", &offline);
    Ok(client)
}

/// Runs the demo once.
pub async fn run(targets: &DemoTargets) -> Result<(), DemoError> {
    let users = [User::new("alice")?, User::new("bob")?];
    println!("demo: enlisting two Partner users with the simulator");
    let mut jids = Vec::new();
    for u in &users {
        let jid = enlist(targets, u).await?;
        println!("  {:<5} enlisted as {jid}", u.name);
        jids.push(jid);
    }
    println!("demo: logging in through the proxy at {}", targets.edge_addr);
    let mut alice = login(targets, &users[0], &jids[0]).await?;
    let mut bob = login(targets, &users[1], &jids[1]).await?;

    println!("demo: alice sends bob a message (the <enc> bytes stand for Signal ciphertext)");
    let message = Node::new("message")
        .attr("to", Value::Jid(jids[1].clone()))
        .attr("id", "3EB0DEMO0001")
        .attr("type", "text")
        .children(vec![Node::new("enc").attr("v", "2").attr("type", "msg").bytes(random32()?.to_vec())]);
    show("alice", "->", &message);
    alice.send(&message).await.map_err(|e| err("sending", e))?;
    let (ack, _) = alice.recv_tag("ack", WAIT).await.map_err(|e| err("server ack", e))?;
    show("alice", "<-", &ack);
    let (received, _) = bob.recv_tag("message", WAIT).await.map_err(|e| err("delivery", e))?;
    show("bob", "<-", &received);
    if received.child("enc") != message.child("enc") {
        return Err(DemoError("the ciphertext changed on the way".into()));
    }
    let bob_ack =
        Node::new("ack").attr("class", "message").attr("id", "3EB0DEMO0001").attr("to", Value::Jid(jids[0].clone()));
    bob.send(&bob_ack).await.map_err(|e| err("ack", e))?;
    show("bob", "->", &bob_ack);
    let receipt = Node::new("receipt").attr("to", Value::Jid(jids[0].clone())).attr("id", "3EB0DEMO0001");
    bob.send(&receipt).await.map_err(|e| err("receipt", e))?;
    show("bob", "->", &receipt);
    let (delivered, _) = alice.recv_tag("receipt", WAIT).await.map_err(|e| err("receipt delivery", e))?;
    show("alice", "<-", &delivered);
    let ack =
        Node::new("ack").attr("class", "receipt").attr("id", "3EB0DEMO0001").attr("to", Value::Jid(jids[1].clone()));
    alice.send(&ack).await.map_err(|e| err("ack", e))?;
    println!("demo: done: the message crossed the proxy with its ciphertext byte for byte");
    Ok(())
}
