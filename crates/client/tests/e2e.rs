//! The seed's required features end to end over real sockets: Partner users behind the proxy
//! (on its embedded default: chatd simulator and partner server in-process) and WhatsApp-side
//! users logged in directly to the simulator, all through this crate's client. Partner clients
//! reach the proxy through a recording tap, so the tests can search what crossed for plaintext.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::client::{enlist_partner, register_whatsapp};
use client::listen::{ListenOptions, PushOptions, Status, listen};
use client::media::MediaKind;
use client::message::MediaRef;
use client::ogg::OggError;
use client::reconnect::ServerClose;
use client::{Client, ClientError, Content, Event, Route, Store};
use local_world::LocalWorld;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);
/// A 3-second Ogg/Opus voice note (silence; CRCs valid) and an MP4 header with filler.
const VOICE: &[u8] = include_bytes!("fixtures/voice-3s.ogg");
const CLIP: &[u8] = include_bytes!("fixtures/clip.mp4");

/// A TCP relay that records every byte in both directions.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    async fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else { continue };
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pump(ir, ow, record.clone()));
                tokio::spawn(pump(or, iw, record.clone()));
            }
        });
        Tap { addr, seen }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.seen.lock().unwrap().windows(needle.len()).any(|w| w == needle)
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

struct World {
    proxy: LocalWorld,
    tap: Tap,
}

impl World {
    async fn start() -> World {
        let mut config = proxy::config::Config::local();
        config.edge.listen = Some("127.0.0.1:0".parse().unwrap());
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        let proxy = local_world::start(config).await.unwrap();
        let tap = Tap::start(proxy.tcp_addr.unwrap()).await;
        World { proxy, tap }
    }

    fn sim(&self) -> &chatd_sim::RunningSim {
        &self.proxy.embedded.as_ref().unwrap().sim
    }

    fn partner_url(&self) -> String {
        self.proxy.embedded.as_ref().unwrap().partner.base_url().to_owned()
    }

    fn edge(&self) -> Route {
        Route::Edge { addr: self.tap.addr, tls: None }
    }

    fn direct(&self) -> Route {
        Route::Direct { addr: self.sim().chat_addr, root: self.sim().root_public_key() }
    }

    /// A Partner user enlisted and logged in through the tap and the proxy.
    async fn partner(&self, user: &str) -> Client {
        let mut store = Store::create(None).unwrap();
        enlist_partner(&mut store, &self.sim().http_url(), &self.partner_url(), 1, user).await.unwrap();
        Client::login(store, &self.edge()).await.map_err(|e| e.error).unwrap()
    }

    /// A WhatsApp-side user logged in directly to the simulator.
    async fn whatsapp(&self, phone: u64) -> Client {
        let mut store = Store::create(None).unwrap();
        register_whatsapp(&mut store, &self.sim().http_url(), phone).await.unwrap();
        Client::login(store, &self.direct()).await.map_err(|e| e.error).unwrap()
    }
}

/// Events until `want` matches one (returned with those before it); fails after `WAIT`.
async fn until(c: &mut Client, want: impl Fn(&Event) -> bool) -> (Event, Vec<Event>) {
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_event(left).await.unwrap() {
            Some(e) if want(&e) => return (e, before),
            Some(e) => before.push(e),
            None => panic!("timed out; got {before:?}"),
        }
    }
}

fn text_from(e: &Event) -> Option<(&str, &str)> {
    match e {
        Event::Message { from, content: Content::Text(t), .. } => Some((from.as_str(), t.as_str())),
        _ => None,
    }
}

fn media_of(e: &Event) -> Option<&MediaRef> {
    match e {
        Event::Message { content: Content::Media(m), .. } => Some(m),
        _ => None,
    }
}

#[tokio::test]
async fn text_media_and_receipts_both_ways_with_only_ciphertext_crossing() {
    let w = World::start().await;
    let mut alice = w.partner("alice").await;
    let mut wa = w.whatsapp(15551230001).await;
    let (alice_jid, wa_jid) = (alice.jid().to_owned(), wa.jid().to_owned());

    // Partner -> WhatsApp: text, then the delivery receipt shown to alice.
    let secret_out = "the eagle lands at dawn (alice to wa)";
    let id = alice.send_text(&wa_jid, secret_out).await.unwrap();
    let (got, _) = until(&mut wa, |e| text_from(e).is_some()).await;
    assert_eq!(text_from(&got), Some((alice_jid.as_str(), secret_out)));
    let (delivered, _) = until(&mut alice, |e| matches!(e, Event::Delivered { .. })).await;
    assert_eq!(delivered, Event::Delivered { peer: wa_jid.clone(), id });

    // WhatsApp -> Partner: text and receipt.
    let secret_in = "meet me by the old mill (wa to alice)";
    let id = wa.send_text(&alice_jid, secret_in).await.unwrap();
    let (got, _) = until(&mut alice, |e| text_from(e).is_some()).await;
    assert_eq!(text_from(&got), Some((wa_jid.as_str(), secret_in)));
    let (delivered, _) = until(&mut wa, |e| matches!(e, Event::Delivered { .. })).await;
    assert_eq!(delivered, Event::Delivered { peer: alice_jid.clone(), id });

    // Partner -> WhatsApp media: hosted by the partner server, fetched through chatd's
    // /interop/whatsapp/download path, decrypted and hash-checked by the recipient.
    let photo: Vec<u8> = b"PNG-ish picture bytes that must stay secret ".repeat(300);
    alice.send_media(&wa_jid, &photo, "image/png", Some("holiday".into())).await.unwrap();
    let (got, _) = until(&mut wa, |e| matches!(e, Event::Message { content: Content::Media(_), .. })).await;
    let Event::Message { content: Content::Media(media), .. } = got else { unreachable!() };
    assert!(media.direct_path.starts_with("/interop/whatsapp/download/1/"), "{}", media.direct_path);
    assert_eq!(media.label.as_deref(), Some("holiday"));
    assert_eq!(wa.download(&media).await.unwrap(), photo);

    // WhatsApp -> Partner media: uploaded to the WhatsApp media host (/v/t...).
    let doc: Vec<u8> = b"%PDF-1.7 confidential quarterly numbers ".repeat(200);
    wa.send_media(&alice_jid, &doc, "application/pdf", Some("q3.pdf".into())).await.unwrap();
    let (got, _) = until(&mut alice, |e| matches!(e, Event::Message { content: Content::Media(_), .. })).await;
    let Event::Message { content: Content::Media(media), .. } = got else { unreachable!() };
    assert!(media.direct_path.starts_with("/v/t"), "{}", media.direct_path);
    assert_eq!(alice.download(&media).await.unwrap(), doc);
    // A tampered download is refused, not shown.
    let mut wrong = media.clone();
    wrong.media_key[0] ^= 1;
    assert!(matches!(alice.download(&wrong).await, Err(ClientError::Media(_))));

    // What crossed the proxy's edge (plaintext frames around ciphertext) never held a body.
    assert!(w.tap.len() > 2_000, "the tap saw the traffic ({} bytes)", w.tap.len());
    for needle in [secret_out.as_bytes(), secret_in.as_bytes(), &photo[..40], &doc[..40]] {
        assert!(!w.tap.contains(needle), "plaintext crossed the proxy: {:?}", String::from_utf8_lossy(needle));
    }
    // Nor is it in what chatd holds: the mailboxes and the media it serves.
    let mailbox = testkit::get_json(&format!("{}/admin/accounts/{}/mailbox", w.sim().http_url(), alice_jid)).await;
    assert!(!mailbox.to_string().contains("old mill"));
    let served = client::services::Services::default().download(&w.sim().http_url(), &media.direct_path).await.unwrap();
    assert!(!served.windows(20).any(|x| x == &doc[..20]));
}

#[tokio::test]
async fn identity_change_shows_a_notice_and_the_next_message_reaches_the_new_device() {
    let w = World::start().await;
    let mut wa = w.whatsapp(15551230002).await;
    let mut bob = w.partner("bob").await;
    let bob_jid = bob.jid().to_owned();
    wa.send_text(&bob_jid, "before").await.unwrap();
    until(&mut bob, |e| text_from(e).is_some()).await;
    bob.close().await;

    // Bob reinstalls: a new device with new keys enlists the same Partner user.
    let mut store = Store::create(None).unwrap();
    let jid2 = enlist_partner(&mut store, &w.sim().http_url(), &w.partner_url(), 1, "bob").await.unwrap();
    assert_eq!(jid2, bob_jid, "the same Partner user keeps its account");
    let mut bob2 = Client::login(store, &w.edge()).await.map_err(|e| e.error).unwrap();

    let (notice, _) = until(&mut wa, |e| matches!(e, Event::IdentityChanged { .. })).await;
    assert_eq!(notice, Event::IdentityChanged { peer: bob_jid.clone() });
    wa.send_text(&bob_jid, "after the change").await.unwrap();
    let (got, _) = until(&mut bob2, |e| text_from(e).is_some()).await;
    assert_eq!(text_from(&got).unwrap().1, "after the change");
}

#[tokio::test]
async fn retry_receipts_recover_a_lost_session() {
    let w = World::start().await;
    let mut alice = w.partner("carol").await;
    let mut wa = w.whatsapp(15551230003).await;
    let (alice_jid, wa_jid) = (alice.jid().to_owned(), wa.jid().to_owned());
    alice.send_text(&wa_jid, "one").await.unwrap();
    until(&mut wa, |e| text_from(e).is_some()).await;
    wa.send_text(&alice_jid, "two").await.unwrap();
    until(&mut alice, |e| text_from(e).is_some()).await;

    // The WhatsApp device loses its session with alice; her next message cannot be decrypted.
    wa.forget_session(&alice_jid).unwrap();
    let id = alice.send_text(&wa_jid, "three, after the loss").await.unwrap();
    let (failed, _) = until(&mut wa, |e| matches!(e, Event::Undecryptable { .. })).await;
    assert!(matches!(&failed, Event::Undecryptable { id: i, .. } if *i == id), "{failed:?}");
    // Alice honours the retry receipt: a fresh session from its keys, the same message again.
    let (resent, _) = until(&mut alice, |e| matches!(e, Event::Resent { .. })).await;
    assert_eq!(resent, Event::Resent { peer: wa_jid.clone(), id: id.clone(), fresh_session: true });
    let (got, _) = until(&mut wa, |e| text_from(e).is_some()).await;
    assert!(matches!(&got, Event::Message { id: i, .. } if *i == id));
    assert_eq!(text_from(&got).unwrap().1, "three, after the loss");
    // And the conversation goes on in both directions.
    wa.send_text(&alice_jid, "four").await.unwrap();
    assert_eq!(text_from(&until(&mut alice, |e| text_from(e).is_some()).await.0).unwrap().1, "four");
}

#[tokio::test]
async fn offline_messages_arrive_once_after_a_push_wakes_the_sleeping_client() {
    let w = World::start().await;
    let mut wa = w.whatsapp(15551230004).await;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(Some(dir.path())).unwrap();
    let dave = enlist_partner(&mut store, &w.sim().http_url(), &w.partner_url(), 1, "dave").await.unwrap();
    // Log in once so chatd holds dave's one-time prekeys, then hand the device to the loop.
    let store = Client::login(store, &w.edge()).await.map_err(|e| e.error).unwrap().close().await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let status_tx = tx.clone();
    let mut opts = ListenOptions::new(w.edge());
    opts.duration = Some(Duration::from_secs(12));
    opts.push = Some(PushOptions { idle: Duration::from_millis(300) });
    let listener = tokio::spawn(listen(
        store,
        opts,
        move |e| drop(tx.send(Ok(e.clone()))),
        move |s| drop(status_tx.send(Err(s.clone()))),
    ));
    // Wait until the device has gone to sleep (disconnected, waiting for a push).
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Err(Status::Sleeping) => break,
            _ => continue,
        }
    }
    let sent: Vec<String> = ["first", "second", "third"].iter().map(|s| s.to_string()).collect();
    for s in &sent {
        wa.send_text(&dave, s).await.unwrap();
    }
    let mut woken = false;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Err(Status::WokenByPush) => woken = true,
            Ok(Event::Message { content: Content::Text(t), .. }) => got.push(t),
            _ => {}
        }
    }
    assert!(woken, "the push record woke the client");
    assert_eq!(got, sent, "every offline message, in order");
    // The loop runs out its time; nothing more (no duplicate) reaches the user meanwhile.
    let store = listener.await.unwrap().unwrap();
    while let Ok(item) = rx.try_recv() {
        assert!(!matches!(item, Ok(Event::Message { .. })), "duplicate shown: {item:?}");
    }
    // The device state on disk has the thread: three messages in.
    let thread = std::fs::read_to_string(dir.path().join("thread.jsonl")).unwrap();
    assert_eq!(thread.lines().filter(|l| l.contains("\"dir\":\"in\"")).count(), 3, "{thread}");
    drop(store);
    // Every delivery receipt reached the sender.
    for _ in 0..3 {
        until(&mut wa, |e| matches!(e, Event::Delivered { .. })).await;
    }
}

#[tokio::test]
async fn blocking_unblocking_enlistment_checks_and_deletion() {
    let w = World::start().await;
    let mut erin = w.partner("erin").await;
    let mut wa = w.whatsapp(15551230005).await;
    let (erin_jid, wa_jid) = (erin.jid().to_owned(), wa.jid().to_owned());

    erin.set_blocked(&wa_jid, true).await.unwrap();
    assert_eq!(erin.blocklist().await.unwrap(), vec![wa_jid.clone()]);
    let e = wa.send_text(&erin_jid, "can you hear me?").await.unwrap_err();
    assert!(matches!(&e, ClientError::Rejected { why, .. } if why.contains("blocked")), "{e}");
    let e = erin.send_text(&wa_jid, "nor me").await.unwrap_err();
    assert!(matches!(e, ClientError::Rejected { .. }), "{e}");
    erin.set_blocked(&wa_jid, false).await.unwrap();
    assert!(erin.blocklist().await.unwrap().is_empty());
    wa.send_text(&erin_jid, "now?").await.unwrap();
    assert_eq!(text_from(&until(&mut erin, |e| text_from(e).is_some()).await.0).unwrap().1, "now?");

    // Identifier verification: a token for one user cannot enlist another.
    let services = client::services::Services::default();
    let token = services.token(&w.partner_url(), "mallory", None).await.unwrap();
    let store = Store::create(None).unwrap();
    let e = services.enlist(&w.sim().http_url(), &store, 1, "erin", &token).await.unwrap_err();
    assert!(e.to_string().contains("enlist") || e.to_string().contains("401"), "{e}");

    // Deletion: the account is gone at chatd, and the device knows it.
    let store = erin.delete_account().await.unwrap();
    assert!(store.account().is_none());
    let e = wa.send_text(&erin_jid, "hello?").await.unwrap_err();
    assert!(matches!(e, ClientError::Rejected { .. } | ClientError::NoSuchUser { .. }), "{e}");
    // An old device state logging in again is refused with the documented reason.
    let mut stale = Store::create(None).unwrap();
    stale.set_account(Some(client::Account::Partner {
        jid: erin_jid.clone(),
        account_id: erin_jid.split_once('-').unwrap().1.trim_end_matches("@interop").parse().unwrap(),
        integrator: 1,
        user: "erin".into(),
    }));
    stale.set_endpoints(client::Endpoints {
        chatd_http: w.sim().http_url(),
        partner: Some(w.partner_url()),
        ca_file: None,
    });
    let failed = Client::login(stale, &w.edge()).await.err().unwrap();
    assert!(matches!(failed.error, ClientError::Refused(ServerClose::Unauthorized)), "{}", failed.error);
}

#[tokio::test]
async fn the_tls_edge_carries_the_same_conversation_and_a_wrong_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let mut config = proxy::config::Config::local();
    config.edge.listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.edge.tls = Some(proxy::config::TlsSection {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    });
    let proxy = local_world::start(config).await.unwrap();
    let tap = Tap::start(proxy.tls_addr.unwrap()).await;
    let w = World { proxy, tap };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = |name: &str| client::conn::TlsSettings { server_name: name.into(), roots: Arc::new(roots.clone()) };

    let mut store = Store::create(None).unwrap();
    enlist_partner(&mut store, &w.sim().http_url(), &w.partner_url(), 1, "tina").await.unwrap();
    let wrong = Route::Edge { addr: w.tap.addr, tls: Some(tls("not-the-proxy.example")) };
    let failed = Client::login(store, &wrong).await.err().unwrap();
    assert!(matches!(failed.error, ClientError::Conn(client::conn::ConnError::Tls(_))), "{}", failed.error);

    let route = Route::Edge { addr: w.tap.addr, tls: Some(tls("localhost")) };
    let mut tina = Client::login(failed.store, &route).await.map_err(|e| e.error).unwrap();
    let mut wa = w.whatsapp(15551230006).await;
    tina.send_text(wa.jid(), "over TLS, end to end").await.unwrap();
    assert_eq!(text_from(&until(&mut wa, |e| text_from(e).is_some()).await.0).unwrap().1, "over TLS, end to end");
    until(&mut tina, |e| matches!(e, Event::Delivered { .. })).await;
    assert!(!w.tap.contains(b"over TLS"), "the TLS edge saw only TLS records");
}

#[tokio::test]
async fn a_listener_replaced_by_another_login_stops_instead_of_ping_ponging() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(Some(dir.path())).unwrap();
    enlist_partner(&mut store, &w.sim().http_url(), &w.partner_url(), 1, "fred").await.unwrap();
    let jid = store.account().unwrap().jid().to_owned();
    drop(store);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opts = ListenOptions::new(w.edge());
    opts.duration = Some(Duration::from_secs(20));
    let listener =
        tokio::spawn(listen(Store::open(dir.path()).unwrap(), opts, |_| {}, move |s| drop(tx.send(s.clone()))));
    assert_eq!(tokio::time::timeout(WAIT, rx.recv()).await.unwrap(), Some(Status::Connected));

    // The same device logs in again elsewhere: the listener is told it was replaced and stops.
    let second = Client::login(Store::open(dir.path()).unwrap(), &w.edge()).await.map_err(|e| e.error).unwrap();
    let outcome = tokio::time::timeout(WAIT, listener).await.expect("the listener stopped at once").unwrap();
    assert!(matches!(outcome, Err(ClientError::Closed(ServerClose::Replaced))), "{outcome:?}");
    assert!(rx.try_recv().is_err(), "no reconnect attempt after being replaced");
    let seen = testkit::get_json(&format!("{}/admin/accounts/{jid}/connections", w.sim().http_url())).await;
    assert_eq!(seen["current"], 1, "{seen}");
    assert_eq!(seen["max_concurrent"], 1, "the proxy closed the old upstream before the new: {seen}");
    second.close().await;
}

#[tokio::test]
async fn a_message_with_no_ciphertext_for_this_device_is_never_lost_silently() {
    // Issue 13: a `<message>` with no `<enc>` for this device used to be acked and dropped with
    // nothing shown. Now the sender gets a retry receipt and the application an event.
    let w = World::start().await;
    let mut alice = w.partner("dora").await;
    let alice_jid = alice.jid().to_owned();
    let wa = testkit::Device::new();
    testkit::provision_wa_user(w.sim(), 15551230009, &wa).await;
    let (mut raw, first) =
        testkit::ChatClient::login(testkit::Dial::to(w.sim()), &wa.noise, &testkit::web_payload(15551230009)).await;
    assert_eq!(first.tag, "success");
    let empty = wire::Node::new("message")
        .attr("to", testkit::jid(&alice_jid))
        .attr("id", "3EB0NOENC")
        .attr("type", "text")
        .children(vec![wire::Node::new("unavailable").attr("type", "view_once")]);
    raw.send(&empty).await;
    let (failed, _) = until(&mut alice, |e| matches!(e, Event::Undecryptable { .. })).await;
    assert_eq!(
        failed,
        Event::Undecryptable {
            from: "15551230009@s.whatsapp.net".into(),
            id: "3EB0NOENC".into(),
            reason: "no <enc> for this device".into()
        }
    );
    let (retry, _) = raw.recv_tag("receipt").await;
    assert_eq!((retry.get_str("id"), retry.get_str("type")), (Some("3EB0NOENC"), Some("retry")));
    assert!(retry.child("retry").is_some() && retry.child("registration").is_some(), "{retry:?}");
    let count_of = |r: &wire::Node| r.child("retry").and_then(|c| c.get_str("count")).map(str::to_owned);
    assert_eq!(count_of(&retry).as_deref(), Some("1"));

    // A sender that keeps sending what cannot be shown gets at most MAX_RETRIES retry receipts
    // for that message (WhatsApp clients stop asking too); each copy is still an event.
    for round in 2..=client::retry::MAX_RETRIES + 2 {
        raw.send(&empty).await;
        let (failed, _) = until(&mut alice, |e| matches!(e, Event::Undecryptable { .. })).await;
        let Event::Undecryptable { reason, .. } = failed else { unreachable!() };
        if round <= client::retry::MAX_RETRIES {
            assert_eq!(reason, "no <enc> for this device");
            let (retry, _) = raw.recv_tag("receipt").await;
            assert_eq!(count_of(&retry), Some(round.to_string()), "{retry:?}");
        } else {
            assert_eq!(reason, "no <enc> for this device (gave up after 3 retry receipts)");
        }
    }
    while let Some(late) = raw.recv_within(Duration::from_millis(300)).await {
        assert_ne!(late.get_str("type"), Some("retry"), "a retry receipt past the limit: {late:?}");
    }
}

#[tokio::test]
async fn voice_notes_and_videos_both_ways_with_whatsapps_fields() {
    let w = World::start().await;
    let mut alice = w.partner("alice-av").await;
    let mut wa = w.whatsapp(15551230010).await;
    let (alice_jid, wa_jid) = (alice.jid().to_owned(), wa.jid().to_owned());
    let voice = |m: &MediaRef| (m.kind, m.mimetype.clone(), m.seconds, m.label.clone());

    // Partner -> WhatsApp, through the proxy: a voice note (length read from the Ogg stream)
    // and a video with a caption and length, each downloaded and checked by the recipient.
    alice.send_voice_note(&wa_jid, VOICE).await.unwrap();
    let (got, _) = until(&mut wa, |e| media_of(e).is_some()).await;
    let m = media_of(&got).unwrap();
    assert_eq!(voice(m), (MediaKind::VoiceNote, "audio/ogg; codecs=opus".into(), Some(3), None));
    assert!(m.direct_path.starts_with("/interop/whatsapp/download/1/"), "{}", m.direct_path);
    assert_eq!(wa.download(m).await.unwrap(), VOICE);
    alice.send_video(&wa_jid, CLIP, Some("the view".into()), Some(7)).await.unwrap();
    let (got, _) = until(&mut wa, |e| media_of(e).is_some()).await;
    let m = media_of(&got).unwrap();
    assert_eq!(voice(m), (MediaKind::Video, "video/mp4".into(), Some(7), Some("the view".into())));
    assert_eq!(wa.download(m).await.unwrap(), CLIP);

    // WhatsApp -> Partner: uploaded to the WhatsApp media host (/mms/audio, /mms/video).
    wa.send_voice_note(&alice_jid, VOICE).await.unwrap();
    let (got, _) = until(&mut alice, |e| media_of(e).is_some()).await;
    let m = media_of(&got).unwrap();
    assert_eq!(voice(m), (MediaKind::VoiceNote, "audio/ogg; codecs=opus".into(), Some(3), None));
    assert!(m.direct_path.starts_with("/v/t"), "{}", m.direct_path);
    assert_eq!(alice.download(m).await.unwrap(), VOICE);
    wa.send_video(&alice_jid, CLIP, None, None).await.unwrap();
    let (got, _) = until(&mut alice, |e| media_of(e).is_some()).await;
    let m = media_of(&got).unwrap();
    assert_eq!(voice(m), (MediaKind::Video, "video/mp4".into(), None, None));
    assert_eq!(alice.download(m).await.unwrap(), CLIP);
    // An audio file sent as a file is audio, not a voice note.
    wa.send_media(&alice_jid, VOICE, "audio/ogg", None).await.unwrap();
    let (got, _) = until(&mut alice, |e| media_of(e).is_some()).await;
    assert_eq!(media_of(&got).unwrap().kind, MediaKind::Audio);

    // What is not Ogg/Opus or MP4 is refused before anything is uploaded or sent.
    let err = alice.send_voice_note(&wa_jid, b"ID3\x04 an mp3").await.unwrap_err();
    assert!(matches!(err, ClientError::VoiceNote(OggError::NotOgg)), "{err}");
    assert!(err.to_string().contains("Ogg/Opus"), "{err}");
    assert!(matches!(alice.send_voice_note(&wa_jid, &VOICE[..100]).await, Err(ClientError::VoiceNote(_))));
    assert!(matches!(alice.send_video(&wa_jid, VOICE, None, None).await, Err(ClientError::NotMp4)));
    // The voice note's bytes never crossed the proxy in the clear.
    assert!(!w.tap.contains(&VOICE[VOICE.len() - 64..]));
}

/// Events until `want`; none of those before it may be a read receipt.
async fn no_read_before(c: &mut Client, want: impl Fn(&Event) -> bool) {
    let (_, before) = until(c, want).await;
    assert!(!before.iter().any(|e| matches!(e, Event::Read { .. })), "{before:?}");
}

#[tokio::test]
async fn read_receipts_follow_the_users_setting_both_ways() {
    let w = World::start().await;
    let mut wa = w.whatsapp(15551230011).await;
    let wa_jid = wa.jid().to_owned();

    // On (the default): the listen loop shows wa's message and answers with a read receipt.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(Some(dir.path())).unwrap();
    let alice_jid = enlist_partner(&mut store, &w.sim().http_url(), &w.partner_url(), 1, "alice-rr").await.unwrap();
    let store = Client::login(store, &w.edge()).await.map_err(|e| e.error).unwrap().close().await;
    assert!(store.settings().read_receipts, "on by default");
    let mut opts = ListenOptions::new(w.edge());
    opts.duration = Some(Duration::from_secs(4));
    opts.mark_read = true;
    let listener = tokio::spawn(listen(store, opts, |_| {}, |_| {}));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let id = wa.send_text(&alice_jid, "read me").await.unwrap();
    let (read, _) = until(&mut wa, |e| matches!(e, Event::Read { .. })).await;
    assert_eq!(read, Event::Read { peer: alice_jid.clone(), id });
    let store = listener.await.unwrap().unwrap();
    let mut alice = Client::login(store, &w.edge()).await.map_err(|e| e.error).unwrap();

    // ... and alice is shown wa's read receipts.
    let id = alice.send_text(&wa_jid, "and you read mine").await.unwrap();
    let (got, _) = until(&mut wa, |e| text_from(e).is_some()).await;
    let Event::Message { id: got_id, .. } = got else { unreachable!() };
    assert!(wa.mark_read(&alice_jid, &[got_id]).await.unwrap());
    let (read, _) = until(&mut alice, |e| matches!(e, Event::Read { .. })).await;
    assert_eq!(read, Event::Read { peer: wa_jid.clone(), id });

    // Off: alice sends none ...
    alice.set_read_receipts(false).unwrap();
    wa.send_text(&alice_jid, "will she read it?").await.unwrap();
    let (got, _) = until(&mut alice, |e| text_from(e).is_some()).await;
    let Event::Message { id: got_id, .. } = got else { unreachable!() };
    assert!(!alice.mark_read(&wa_jid, &[got_id]).await.unwrap(), "nothing sent");
    alice.send_text(&wa_jid, "marker to wa").await.unwrap();
    no_read_before(&mut wa, |e| text_from(e).is_some_and(|(_, t)| t == "marker to wa")).await;
    // ... and is shown none, though wa (setting on) sends them.
    let id = alice.send_text(&wa_jid, "read but not shown").await.unwrap();
    until(&mut wa, |e| text_from(e).is_some_and(|(_, t)| t == "read but not shown")).await;
    assert!(wa.mark_read(&alice_jid, &[id]).await.unwrap());
    wa.send_text(&alice_jid, "marker to alice").await.unwrap();
    no_read_before(&mut alice, |e| text_from(e).is_some_and(|(_, t)| t == "marker to alice")).await;
    // The setting is the device's: kept across logins.
    assert!(!alice.close().await.settings().read_receipts);
}

#[tokio::test]
async fn a_dialer_resumes_its_direct_connections_with_noise_ik() {
    use client::conn::{Connection, Dialer};
    use std::sync::atomic::Ordering::Relaxed;
    let w = World::start().await;
    let phone = 15551230077;
    let mut store = Store::create(None).unwrap();
    let jid = register_whatsapp(&mut store, &w.sim().http_url(), phone).await.unwrap();
    let jid = wire::Jid::parse(&jid).unwrap();
    let (a, b, c) = client::client::APP_VERSION;
    let payload = wire::proto::ClientPayload::web_login(phone, 0, wire::proto::AppVersion::new(a, b, c));
    let dialer = Dialer::default();
    for _ in 0..2 {
        let mut conn =
            Connection::open(&dialer, &w.direct(), &jid, store.noise_private(), &payload, WAIT).await.unwrap();
        assert_eq!(conn.recv(WAIT).await.unwrap().tag, "success");
        conn.close().await;
    }
    let totals = &w.sim().sim.totals;
    assert_eq!((totals.handshakes_xx.load(Relaxed), totals.handshakes_ik.load(Relaxed)), (1, 1));
}
