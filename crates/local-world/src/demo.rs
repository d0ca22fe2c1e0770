//! The built-in demo: Partner users behind the proxy and a WhatsApp-side user exchange end-to-end
//! encrypted text and media through the client SDK. The helpers below (keys, enlistment, tokens,
//! login frames) are also what the proxy's end-to-end tests (in this crate) use to drive the edge
//! at the frame level.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use client::client::{enlist_partner, register_whatsapp};
use client::services::Services;
use client::{Client, Content, Event, Route, Store};
use prost::Message as _;
use wire::Jid;
use wire::proto::{AppVersion, ClientPayload};

const WAIT: Duration = Duration::from_secs(10);

/// Where the demo's parties are.
pub struct DemoTargets {
    pub partner_url: String,
    pub sim_url: String,
    pub edge_addr: SocketAddr,
    /// The CA the HTTPS services' certificates chain to, besides the platform's roots (the
    /// embedded default's local CA).
    pub ca_file: Option<PathBuf>,
}

impl DemoTargets {
    fn services(&self) -> Result<Services, DemoError> {
        step("TLS settings", Services::with_ca_file(self.ca_file.as_deref()))
    }

    /// A new device store that trusts `ca_file` for the HTTPS services.
    fn store(&self) -> Result<Store, DemoError> {
        let mut store = step("device", Store::create(None))?;
        let mut endpoints = store.endpoints().clone();
        endpoints.ca_file = self.ca_file.clone();
        store.set_endpoints(endpoints);
        Ok(store)
    }
}

/// Which step of the demo went wrong, and why (the source, when a call failed).
#[derive(Debug, thiserror::Error)]
#[error("demo: {step}")]
pub struct DemoError {
    step: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DemoError {
    fn new(step: String) -> DemoError {
        DemoError { step, source: None }
    }
}

fn err(step: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DemoError {
    DemoError { step: step.to_owned(), source: Some(e.into()) }
}

/// A Partner user's device (the client SDK's store), with its private keys at hand for tests
/// that drive the edge frame by frame.
pub struct User {
    pub name: String,
    pub noise: [u8; 32],
    pub identity_private: [u8; 32],
    pub store: Store,
}

impl User {
    /// A user with fresh random keys.
    pub fn new(name: &str) -> Result<User, DemoError> {
        let store = step("device", Store::create(None))?;
        let identity_private = *store.identity().private_key().serialize();
        Ok(User { name: name.to_owned(), noise: *store.noise_private(), identity_private, store })
    }
}

/// A Partner JWT for `user` from the partner server, bound to `account` when given.
pub async fn token(targets: &DemoTargets, user: &str, account: Option<&str>) -> Result<String, DemoError> {
    step("token", targets.services()?.token(&targets.partner_url, user, account).await)
}

/// Enlists `user` (the seed's Part 1 request) and returns its interop JID.
pub async fn enlist(targets: &DemoTargets, user: &User) -> Result<Jid, DemoError> {
    let services = targets.services()?;
    let token = token(targets, &user.name, None).await?;
    let enlisted = step("enlisting", services.enlist(&targets.sim_url, &user.store, 1, &user.name, &token).await)?;
    Jid::parse(&enlisted.jid).map_err(|e| err("login JID", e))
}

/// The edge login frame for `user` with `token`.
pub fn login_frame(user: &User, jid: &Jid, token: &str) -> Result<Vec<u8>, DemoError> {
    let account_id = jid.user.parse().map_err(|e| err("account id", e))?;
    let payload = ClientPayload::interop_login(account_id, token.as_bytes().to_vec(), AppVersion::new(2, 3000, 1));
    Ok(wire::login::build(jid, &user.noise, &payload.encode_to_vec()))
}

fn step<T, E: Into<Box<dyn std::error::Error + Send + Sync>>>(what: &str, r: Result<T, E>) -> Result<T, DemoError> {
    r.map_err(|e| err(what, e))
}

/// Events until one matches `want`; every event is printed for `who`.
async fn until(who: &str, c: &mut Client, want: impl Fn(&Event) -> bool) -> Result<Event, DemoError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match step(who, c.next_event(left).await)? {
            Some(e) => {
                print_event(who, &e);
                if want(&e) {
                    return Ok(e);
                }
            }
            None => return Err(DemoError::new(format!("{who}: nothing arrived within {WAIT:?}"))),
        }
    }
}

fn print_event(who: &str, e: &Event) {
    match e {
        Event::Message { from, content: Content::Text(t), .. } => println!("  {who:<5} <- {from}: \"{t}\""),
        Event::Message { from, content: Content::Media(m), .. } => {
            println!("  {who:<5} <- {from}: {} ({})", m.summary(), m.mimetype)
        }
        Event::Delivered { peer, id } => println!("  {who:<5}    delivery receipt from {peer} for {id}"),
        other => println!("  {who:<5}    {other:?}"),
    }
}

/// A file the demo sends, and how the sending app presents it.
enum Outgoing<'a> {
    /// An image or document: MIME type, file name, bytes.
    File(&'a str, &'a str, &'a [u8]),
    /// A recorded voice message (Ogg/Opus).
    VoiceNote(&'a [u8]),
    /// An MP4 video with a caption and its length in seconds.
    Video(&'a [u8], &'a str, u32),
}

impl Outgoing<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::File(_, _, b) | Outgoing::VoiceNote(b) | Outgoing::Video(b, _, _) => b,
        }
    }

    async fn send(&self, from: &mut Client, to: &str) -> Result<String, client::ClientError> {
        match *self {
            Outgoing::File(mime, name, bytes) => from.send_media(to, bytes, mime, Some(name.into())).await,
            Outgoing::VoiceNote(bytes) => from.send_voice_note(to, bytes).await,
            Outgoing::Video(bytes, caption, seconds) => {
                from.send_video(to, bytes, Some(caption.into()), Some(seconds)).await
            }
        }
    }
}

/// `from` sends `file` to `to`, which downloads, decrypts and checks it; then `from` waits for
/// the delivery receipt.
async fn media_exchange(
    (from_name, from): (&str, &mut Client),
    (to_name, to): (&str, &mut Client),
    to_jid: &str,
    file: Outgoing<'_>,
) -> Result<(), DemoError> {
    let bytes = file.bytes();
    step(from_name, file.send(from, to_jid).await)?;
    let got = until(to_name, to, |e| matches!(e, Event::Message { content: Content::Media(_), .. })).await?;
    if let Event::Message { content: Content::Media(m), .. } = got {
        let downloaded = step(to_name, to.download(&m).await)?;
        // The path's first two segments say where it came from; the rest is a download capability.
        let source: Vec<&str> = m.direct_path.split('/').take(3).collect();
        println!(
            "  {to_name:<5}    downloaded {} bytes from {}/..., decrypted, hashes match: {}",
            downloaded.len(),
            source.join("/"),
            downloaded == bytes
        );
        if downloaded != bytes {
            return Err(DemoError::new(format!("{to_name}: the downloaded file differs from what {from_name} sent")));
        }
    }
    until(from_name, from, |e| matches!(e, Event::Delivered { .. })).await?;
    Ok(())
}

/// The client's test fixtures, shared so the demo sends what the suites and the conformance
/// check send: 3 s of Ogg/Opus silence with valid page CRCs, and an MP4 `ftyp` header with filler.
const VOICE_NOTE: &[u8] = include_bytes!("../../client/tests/fixtures/voice-3s.ogg");
const VIDEO: &[u8] = include_bytes!("../../client/tests/fixtures/clip.mp4");

/// The full story on the embedded default: two Partner users behind the proxy and one
/// WhatsApp-side user (directly on chatd) exchange end-to-end encrypted text and media with
/// receipts. Only ciphertext crosses the proxy. `show_metrics` runs while the sessions are up.
pub async fn run(targets: &DemoTargets, chat_addr: SocketAddr, show_metrics: &dyn Fn()) -> Result<(), DemoError> {
    let (chatd, partner) = (targets.sim_url.as_str(), targets.partner_url.as_str());
    println!("demo: two Partner users enlist over HTTPS (Signal keys made on the device); one WhatsApp user registers");
    let mut devices = Vec::new();
    for name in ["alice", "bob"] {
        let mut store = targets.store()?;
        let jid = step("enlisting", enlist_partner(&mut store, chatd, partner, 1, name).await)?;
        println!("  {name:<5} enlisted as {jid}");
        devices.push(store);
    }
    let mut wa_store = targets.store()?;
    let wa_jid = step("registering", register_whatsapp(&mut wa_store, chatd, 15550001234).await)?;
    println!("  wa    registered as {wa_jid} (a WhatsApp-side user of the simulator)");

    println!("demo: alice and bob log in through the proxy at {}; wa connects to chatd directly", targets.edge_addr);
    let edge = Route::Edge { addr: targets.edge_addr, tls: None };
    let root = step("chatd root key", targets.services()?.chatd_root(chatd).await)?;
    let bob_store = devices.pop().ok_or_else(|| DemoError::new("no device".into()))?;
    let alice_store = devices.pop().ok_or_else(|| DemoError::new("no device".into()))?;
    let mut alice = Client::login(alice_store, &edge).await.map_err(|f| err("alice login", f.error))?;
    let mut bob = Client::login(bob_store, &edge).await.map_err(|f| err("bob login", f.error))?;
    let mut wa = Client::login(wa_store, &Route::Direct { addr: chat_addr, root })
        .await
        .map_err(|f| err("wa login", f.error))?;
    let (alice_jid, bob_jid) = (alice.jid().to_owned(), bob.jid().to_owned());

    println!("demo: alice -> wa, text (X3DH from wa's published keys, then a pkmsg through the proxy)");
    step("alice sends", alice.send_text(&wa_jid, "Hi from a Partner app!").await)?;
    until("wa", &mut wa, |e| matches!(e, Event::Message { .. })).await?;
    until("alice", &mut alice, |e| matches!(e, Event::Delivered { .. })).await?;

    println!("demo: wa -> bob, text; bob -> wa, reply");
    step("wa sends", wa.send_text(&bob_jid, "Hello bob, from WhatsApp").await)?;
    until("bob", &mut bob, |e| matches!(e, Event::Message { .. })).await?;
    until("wa", &mut wa, |e| matches!(e, Event::Delivered { .. })).await?;
    step("bob sends", bob.send_text(&wa_jid, "Hey! Interop works.").await)?;
    until("wa", &mut wa, |e| matches!(e, Event::Message { .. })).await?;
    until("bob", &mut bob, |e| matches!(e, Event::Delivered { .. })).await?;

    println!("demo: bob -> wa, an image: encrypted on bob's device, hosted by the partner server");
    let picture: Vec<u8> = (0..48_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let image = Outgoing::File("image/png", "sunset.png", &picture);
    media_exchange(("bob", &mut bob), ("wa", &mut wa), &wa_jid, image).await?;

    println!("demo: wa -> alice, a document uploaded to the WhatsApp media host");
    let doc = b"%PDF-1.7 minutes of the interop meeting".repeat(100);
    let document = Outgoing::File("application/pdf", "minutes.pdf", &doc);
    media_exchange(("wa", &mut wa), ("alice", &mut alice), &alice_jid, document).await?;

    println!("demo: alice -> wa, a voice note (Ogg/Opus, ptt); wa -> bob, a video");
    media_exchange(("alice", &mut alice), ("wa", &mut wa), &wa_jid, Outgoing::VoiceNote(VOICE_NOTE)).await?;
    let video = Outgoing::Video(VIDEO, "the interop launch", 7);
    media_exchange(("wa", &mut wa), ("bob", &mut bob), &bob_jid, video).await?;

    println!("proxy metrics with alice and bob connected:");
    show_metrics();
    alice.close().await;
    bob.close().await;
    wa.close().await;
    println!(
        "demo: done: text, images, documents, a voice note and a video crossed the proxy end-to-end encrypted, with receipts"
    );
    Ok(())
}
