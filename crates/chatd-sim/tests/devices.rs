//! WhatsApp's multi-device model over real sockets: a phone and its companion registered with
//! their own keys, online at once, each with its own mailbox and prekeys; per-device fan-out of
//! the `<participants>` shape (the sender's other devices included); the stale-list error; the
//! `<keys>` of a retry receipt; read receipts withheld under `readreceipts` = `none`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatd_sim::RunningSim;
use testkit::*;
use wire::{Content, Jid, Node, Server, Value};

const PHONE: u64 = 15557770001;
const QUIET: Duration = Duration::from_millis(300);

/// Registers device `device` of `PHONE` with its own keys, prekeys `prekey_ids` and optionally a
/// device identity; returns the answer.
async fn register(
    sim: &RunningSim,
    device: u16,
    keys: &Device,
    prekey_ids: &[u32],
    device_identity: Option<&[u8]>,
) -> (u16, serde_json::Value) {
    let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let mut body = serde_json::json!({
        "phone": PHONE,
        "device": device,
        "noise_public": e(&keys.noise_public()),
        "registration_id": 100 + u32::from(device),
        "identity": e(&keys.identity()),
        "signed_prekey": {"id": 1, "public": e(&keys.signed_prekey), "signature": e(&keys.skey_signature())},
        "prekeys": prekey_ids.iter().map(|id| serde_json::json!({"id": id, "public": e(&random32())})).collect::<Vec<_>>(),
    });
    if let Some(identity) = device_identity {
        body["device_identity"] = e(identity).into();
    }
    post_json(&format!("{}/admin/wa-users", sim.http_url()), body).await
}

fn phone_jid() -> String {
    format!("{PHONE}@s.whatsapp.net")
}

fn device_of_phone(device: u16) -> Value {
    Value::Jid(Jid::with_device(PHONE.to_string(), Server::Whatsapp, device))
}

async fn login_device(sim: &RunningSim, keys: &Device, device: u32) -> ChatClient {
    let payload = wire::proto::ClientPayload::web_login(PHONE, device, wire::proto::AppVersion::new(2, 3000, 1));
    let (c, first) = ChatClient::login(Dial::to(sim), &keys.noise, &payload).await;
    assert_eq!(first.tag, "success", "device {device}: {first:?}");
    c
}

fn enc(body: &[u8]) -> Node {
    Node::new("enc").attr("v", "2").attr("type", "msg").bytes(body.to_vec())
}

fn to(jid: Value, body: &[u8]) -> Node {
    Node::new("to").attr("jid", jid).children(vec![enc(body)])
}

fn fanned(to_account: &str, id: &str, targets: Vec<Node>) -> Node {
    Node::new("message")
        .attr("to", jid(to_account))
        .attr("id", id)
        .attr("type", "text")
        .children(vec![Node::new("participants").children(targets)])
}

fn iq(id: &str, xmlns: &str, kind: &str, children: Vec<Node>) -> Node {
    Node::new("iq")
        .attr("id", id)
        .attr("xmlns", xmlns)
        .attr("type", kind)
        .attr("to", Value::Jid(Jid::server(Server::Whatsapp)))
        .children(children)
}

/// Every stanza that arrives until the connection has been quiet for a while.
async fn drain(client: &mut ChatClient) -> Vec<Node> {
    let mut got = Vec::new();
    while let Some(n) = client.recv_within(QUIET).await {
        got.push(n);
    }
    got
}

fn tags(nodes: &[Node]) -> Vec<&str> {
    nodes.iter().map(|n| n.tag.as_str()).collect()
}

fn enc_body(msg: &Node) -> Vec<u8> {
    match &msg.child("enc").expect("an <enc>").content {
        Content::Bytes(b) => b.clone(),
        other => panic!("enc content {other:?}"),
    }
}

/// A Partner user (alice, logged in) and a phone with device 0 and companion 2, both logged in.
struct World {
    _partner: Partner,
    sim: RunningSim,
    alice: ChatClient,
    alice_jid: String,
    phone_keys: Device,
    companion_keys: Device,
    phone: ChatClient,
    companion: ChatClient,
}

async fn world() -> World {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice_keys = Device::new();
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice_keys, "alice").await;
    let (phone_keys, companion_keys) = (Device::new(), Device::new());
    let (status, answer) = register(&sim, 0, &phone_keys, &[1, 2], None).await;
    assert_eq!((status, answer["jid"].as_str()), (200, Some(phone_jid().as_str())), "{answer}");
    // A second device for the same phone adds a companion; it does not replace the account.
    let (status, answer) = register(&sim, 2, &companion_keys, &[1], None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["device"], format!("{PHONE}:2@s.whatsapp.net"));
    let (alice, first) =
        ChatClient::login(Dial::to(&sim), &alice_keys.noise, &interop_payload(alice_id, &partner.token("alice"))).await;
    assert_eq!(first.tag, "success");
    let phone = login_device(&sim, &phone_keys, 0).await;
    let companion = login_device(&sim, &companion_keys, 2).await;
    World { _partner: partner, sim, alice, alice_jid, phone_keys, companion_keys, phone, companion }
}

#[tokio::test]
async fn a_phone_and_its_companion_are_online_at_once_each_with_its_own_keys_and_enc() {
    let mut w = world().await;
    assert_eq!(observed(&w.sim, &phone_jid()).await["current"], 2, "both devices connected");
    // Each device logs in with its own Noise key only.
    let wrong = wire::proto::ClientPayload::web_login(PHONE, 2, wire::proto::AppVersion::new(2, 3000, 1));
    let (_c, f) = ChatClient::login(Dial::to(&w.sim), &w.phone_keys.noise, &wrong).await;
    assert_eq!(f.get_str("reason"), Some("401"), "the phone's key is not the companion's");
    let missing = wire::proto::ClientPayload::web_login(PHONE, 3, wire::proto::AppVersion::new(2, 3000, 1));
    let (_c, f) = ChatClient::login(Dial::to(&w.sim), &w.companion_keys.noise, &missing).await;
    assert_eq!(f.get_str("reason"), Some("401"), "no device 3");

    // usync lists both devices, the companion with its key index.
    let query = Node::new("usync").attr("sid", "s").attr("mode", "query").attr("context", "message").children(vec![
        Node::new("query").children(vec![Node::new("devices").attr("version", "2")]),
        Node::new("list").children(vec![Node::new("user").attr("jid", jid(&phone_jid()))]),
    ]);
    let res = w.alice.iq(iq("u1", "usync", "get", vec![query])).await;
    let user = res.child("usync").unwrap().child("list").unwrap().child_nodes()[0].clone();
    let devices: Vec<(Option<String>, Option<String>)> = user
        .child("devices")
        .unwrap()
        .child("device-list")
        .unwrap()
        .child_nodes()
        .iter()
        .map(|d| (d.get_str("id").map(str::to_owned), d.get_str("key-index").map(str::to_owned)))
        .collect();
    assert_eq!(devices, [(Some("0".into()), None), (Some("2".into()), Some("2".into()))]);

    // A prekey fetch returns the named device's bundle; the bare account is the phone.
    let users = vec![
        Node::new("user").attr("jid", jid(&phone_jid())),
        Node::new("user").attr("jid", device_of_phone(2)),
        Node::new("user").attr("jid", device_of_phone(5)),
    ];
    let res = w.alice.iq(iq("k1", "encrypt", "get", vec![Node::new("key").children(users)])).await;
    let list = res.child("list").unwrap().child_nodes().to_vec();
    let identity = |u: &Node| u.child("identity").map(|i| i.content.clone());
    assert_eq!(identity(&list[0]), Some(Content::Bytes(w.phone_keys.identity().to_vec())));
    assert_eq!(identity(&list[1]), Some(Content::Bytes(w.companion_keys.identity().to_vec())));
    assert_eq!(list[1].child("registration").unwrap().content, Content::Bytes(102u32.to_be_bytes().to_vec()));
    assert_eq!(list[2].child("error").and_then(|e| e.get_str("code")), Some("404"), "no device 5");
    // Each device counts its own one-time prekeys: the phone had 2 (one used), the companion 1.
    let count = |res: Node| res.child("count").and_then(|c| c.get_str("value")).map(str::to_owned);
    assert_eq!(count(w.phone.iq(iq("c0", "encrypt", "get", vec![Node::new("count")])).await), Some("1".into()));
    assert_eq!(count(w.companion.iq(iq("c2", "encrypt", "get", vec![Node::new("count")])).await), Some("0".into()));

    // The fan-out: each device gets only its own <enc>, from alice.
    let msg = fanned(
        &phone_jid(),
        "3EB0M1",
        vec![to(device_of_phone(0), b"for the phone"), to(device_of_phone(2), b"for the companion")],
    );
    w.alice.send(&msg).await;
    let (ack, _) = w.alice.recv_tag("ack").await;
    assert_eq!(ack.get("error"), None, "{ack:?}");
    for (client, body) in [(&mut w.phone, &b"for the phone"[..]), (&mut w.companion, &b"for the companion"[..])] {
        let (got, _) = client.recv_tag("message").await;
        assert_eq!(got.get("from").unwrap().to_string(), w.alice_jid);
        assert_eq!(got.child_nodes().len(), 1, "only its own <enc>: {got:?}");
        assert_eq!(enc_body(&got), body);
        client.send(&Node::new("receipt").attr("id", "3EB0M1").attr("to", jid(&w.alice_jid))).await;
    }

    // A list missing a device that exists is stale; nothing is delivered.
    w.alice.send(&fanned(&phone_jid(), "3EB0M2", vec![to(device_of_phone(0), b"phone only")])).await;
    let (ack, _) = w.alice.recv_tag("ack").await;
    assert_eq!((ack.get_str("id"), ack.get_str("error")), (Some("3EB0M2"), Some("406")));

    // The direct shape (one ciphertext) goes to the phone only.
    w.alice.send(&message(&phone_jid(), "3EB0M3", b"direct")).await;
    let (got, _) = w.phone.recv_tag("message").await;
    assert_eq!((got.get_str("id"), enc_body(&got)), (Some("3EB0M3"), b"direct".to_vec()));
    w.phone.send(&Node::new("receipt").attr("id", "3EB0M3").attr("to", jid(&w.alice_jid))).await;
    // Addressed to the companion's JID, it goes to the companion only.
    let mut direct = message(&phone_jid(), "3EB0M4", b"to the companion");
    direct.attrs.retain(|(k, _)| k != "to");
    direct.attrs.push(("to".into(), device_of_phone(2)));
    w.alice.send(&direct).await;
    let (got, _) = w.companion.recv_tag("message").await;
    assert_eq!(got.get_str("id"), Some("3EB0M4"), "not 3EB0M2 nor 3EB0M3");
    let rest = drain(&mut w.phone).await;
    assert!(!tags(&rest).contains(&"message"), "the phone got no other message: {rest:?}");

    // Mailboxes are per device: the companion leaves 3EB0M4 unacked, reconnects, and gets it again
    // (marked offline); its second login replaces only its own connection.
    let mut companion = login_device(&w.sim, &w.companion_keys, 2).await;
    let (got, _) = companion.recv_tag("message").await;
    assert_eq!((got.get_str("id"), got.get_str("offline")), (Some("3EB0M4"), Some("1")));
    let (replaced, _) = w.companion.recv_tag("stream:error").await;
    assert_eq!(replaced.child("conflict").and_then(|c| c.get_str("type")), Some("replaced"));
    let pong = w.phone.iq(iq("p1", "w:p", "get", vec![])).await;
    assert_eq!(pong.get_str("type"), Some("result"), "the phone stays connected");
    companion.send(&Node::new("receipt").attr("id", "3EB0M4").attr("to", jid(&w.alice_jid))).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mailbox = get_json(&format!("{}/admin/accounts/{}/mailbox", w.sim.http_url(), phone_jid())).await;
    assert_eq!(mailbox["entries"], 0, "every device cleared its own mailbox");
}

#[tokio::test]
async fn the_senders_other_device_gets_its_copy_with_recipient_and_receipts_reach_devices() {
    let mut w = world().await;
    // The companion sends to alice, listing alice's device and its own phone (Baileys' shape).
    let alice_device = Value::Jid(Jid::parse(&w.alice_jid).unwrap());
    let msg = fanned(
        &w.alice_jid,
        "3EB0S1",
        vec![to(alice_device.clone(), b"for alice"), to(device_of_phone(0), b"device sent message")],
    );
    w.companion.send(&msg).await;
    let (ack, _) = w.companion.recv_tag("ack").await;
    assert_eq!(ack.get("error"), None, "{ack:?}");
    let (got, _) = w.alice.recv_tag("message").await;
    assert_eq!(got.get("from").unwrap().to_string(), format!("{PHONE}:2@s.whatsapp.net"));
    assert_eq!((got.get("recipient"), enc_body(&got)), (None, b"for alice".to_vec()));
    let (copy, _) = w.phone.recv_tag("message").await;
    assert_eq!(copy.get("from").unwrap().to_string(), format!("{PHONE}:2@s.whatsapp.net"), "from the sending device");
    assert_eq!(copy.get("recipient").map(|r| r.to_string()), Some(w.alice_jid.clone()), "recipient = the peer");
    assert_eq!(enc_body(&copy), b"device sent message");
    // The phone acknowledges its copy with a `sender` receipt to its own account.
    w.phone
        .send(
            &Node::new("receipt")
                .attr("id", "3EB0S1")
                .attr("to", jid(&phone_jid()))
                .attr("type", "sender")
                .attr("recipient", jid(&w.alice_jid)),
        )
        .await;

    // Leaving out the sender's own other device is stale too.
    w.companion.send(&fanned(&w.alice_jid, "3EB0S2", vec![to(alice_device, b"x")])).await;
    let (ack, mut before) = w.companion.recv_tag("ack").await;
    assert_eq!((ack.get_str("id"), ack.get_str("error")), (Some("3EB0S2"), Some("406")));

    // alice's receipt to the sending device reaches that device only; the phone's `sender` receipt
    // reaches the companion (every other device of the account).
    w.alice.send(&Node::new("receipt").attr("id", "3EB0S1").attr("to", device_of_phone(2))).await;
    before.extend(drain(&mut w.companion).await);
    let receipts: Vec<Node> = before.into_iter().filter(|n| n.tag == "receipt").collect();
    let mut seen: Vec<(String, Option<&str>)> =
        receipts.iter().map(|r| (r.get("from").unwrap().to_string(), r.get_str("type"))).collect();
    seen.sort();
    let mut want = vec![(w.alice_jid.clone(), None), (phone_jid(), Some("sender"))];
    want.sort();
    assert_eq!(seen, want);
    for r in &receipts {
        w.companion.ack(r).await;
    }
    let to_phone = drain(&mut w.phone).await;
    assert!(!tags(&to_phone).contains(&"receipt"), "the receipt to device 2 is not the phone's: {to_phone:?}");
    // A receipt to the account reaches every device.
    w.alice.send(&Node::new("receipt").attr("id", "3EB0S1").attr("to", jid(&phone_jid())).attr("type", "played")).await;
    for client in [&mut w.phone, &mut w.companion] {
        let (r, _) = client.recv_tag("receipt").await;
        assert_eq!((r.get_str("id"), r.get_str("type")), (Some("3EB0S1"), Some("played")));
        client.ack(&r).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mailbox = get_json(&format!("{}/admin/accounts/{}/mailbox", w.sim.http_url(), phone_jid())).await;
    assert_eq!(mailbox["entries"], 0, "the phone's `sender` receipt cleared its copy, acks the receipts");
}

#[tokio::test]
async fn a_retry_receipt_on_a_devices_behalf_carries_its_keys() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice_keys = Device::new();
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice_keys, "alice").await;
    let companion_keys = Device::new();
    let (status, _) = register(&sim, 2, &companion_keys, &[7], Some(b"signed device identity")).await;
    assert_eq!(status, 200);
    let (mut alice, _) =
        ChatClient::login(Dial::to(&sim), &alice_keys.noise, &interop_payload(alice_id, &partner.token("alice"))).await;
    let mut companion = login_device(&sim, &companion_keys, 2).await;

    for (id, one_time_left) in [("3EB0R1", true), ("3EB0R2", false)] {
        alice.send(&message(&phone_jid(), id, b"cannot decrypt")).await;
        let (msg, _) = companion.recv_tag("message").await;
        let nack = Node::new("ack").attr("class", "message").attr("id", id).attr("to", jid(&alice_jid));
        companion.send(&nack.attr("error", "487")).await;
        let (retry, _) = alice.recv_tag("receipt").await;
        assert_eq!((retry.get_str("id"), retry.get_str("type")), (Some(id), Some("retry")));
        assert_eq!(retry.child("retry").unwrap().get_str("t"), msg.get_str("t"));
        assert_eq!(retry.child("registration").unwrap().content, Content::Bytes(102u32.to_be_bytes().to_vec()));
        // Read back as Baileys' `extractE2ESessionFromRetryReceipt` reads it.
        let keys = retry.child("keys").expect("<keys>");
        let tags: Vec<&str> = keys.child_nodes().iter().map(|c| c.tag.as_str()).collect();
        let want: &[&str] = if one_time_left {
            &["type", "identity", "key", "skey", "device-identity"]
        } else {
            &["type", "identity", "skey", "device-identity"]
        };
        assert_eq!(tags, want, "{id}");
        assert_eq!(keys.child("type").unwrap().content, Content::Bytes(vec![5]));
        assert_eq!(keys.child("identity").unwrap().content, Content::Bytes(companion_keys.identity().to_vec()));
        if let Some(key) = keys.child("key") {
            assert_eq!(key.child("id").unwrap().content, Content::Bytes(vec![0, 0, 7]));
            assert!(matches!(&key.child("value").unwrap().content, Content::Bytes(v) if v.len() == 32));
        }
        let skey = keys.child("skey").unwrap();
        assert_eq!(skey.child("id").unwrap().content, Content::Bytes(vec![0, 0, 1]));
        assert_eq!(skey.child("value").unwrap().content, Content::Bytes(companion_keys.signed_prekey.to_vec()));
        let Content::Bytes(signature) = &skey.child("signature").unwrap().content else { panic!("signature") };
        let signed = [&[5u8][..], &companion_keys.signed_prekey].concat();
        assert!(
            wire::xeddsa::verify(&companion_keys.identity(), &signed, signature.as_slice().try_into().unwrap()).is_ok()
        );
        assert_eq!(keys.child("device-identity").unwrap().content, Content::Bytes(b"signed device identity".to_vec()));
        alice.ack(&retry).await;
    }
    // The one-time prekey the first retry receipt carried was used up.
    let res = companion.iq(iq("c1", "encrypt", "get", vec![Node::new("count")])).await;
    assert_eq!(res.child("count").and_then(|c| c.get_str("value")), Some("0"));
}

async fn set_read_receipts(client: &mut ChatClient, value: &str) {
    let privacy =
        Node::new("privacy").children(vec![Node::new("category").attr("name", "readreceipts").attr("value", value)]);
    let res = client.iq(iq(&format!("rr-{value}"), "privacy", "set", vec![privacy])).await;
    assert_eq!(res.get_str("type"), Some("result"));
}

#[tokio::test]
async fn read_receipts_are_withheld_both_ways_while_either_side_has_them_off() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice_keys = Device::new();
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice_keys, "alice").await;
    let wa_keys = Device::new();
    let wa_jid = provision_wa_user(&sim, 4915112345678, &wa_keys).await;
    let (mut alice, _) =
        ChatClient::login(Dial::to(&sim), &alice_keys.noise, &interop_payload(alice_id, &partner.token("alice"))).await;
    let (mut wa, _) = ChatClient::login(Dial::to(&sim), &wa_keys.noise, &web_payload(4915112345678)).await;
    let read = |id: &str, to: &str| Node::new("receipt").attr("id", id).attr("to", jid(to)).attr("type", "read");

    set_read_receipts(&mut wa, "none").await;
    // wa reads alice's message: the read receipt is acked and clears wa's mailbox, but alice never
    // sees it; a `played` receipt still goes through.
    alice.send(&message(&wa_jid, "3EB0P1", b"hi")).await;
    wa.recv_tag("message").await;
    wa.send(&read("3EB0P1", &alice_jid)).await;
    let (ack, _) = wa.recv_tag("ack").await;
    assert_eq!((ack.get_str("class"), ack.get_str("type"), ack.get("error")), (Some("receipt"), Some("read"), None));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mailbox = get_json(&format!("{}/admin/accounts/{wa_jid}/mailbox", sim.http_url())).await;
    assert_eq!(mailbox["entries"], 0, "the read receipt still acknowledged the message");
    wa.send(&Node::new("receipt").attr("id", "3EB0P1").attr("to", jid(&alice_jid)).attr("type", "played")).await;
    let (r, _) = alice.recv_tag("receipt").await;
    assert_eq!(r.get_str("type"), Some("played"), "no read receipt came before it");
    alice.ack(&r).await;
    // Nor does wa see alice's read receipts while its own are off.
    wa.send(&message(&alice_jid, "3EB0P2", b"hello")).await;
    alice.recv_tag("message").await;
    alice.send(&read("3EB0P2", &wa_jid)).await;
    let (ack, _) = alice.recv_tag("ack").await;
    assert_eq!((ack.get_str("type"), ack.get("error")), (Some("read"), None));
    let at_wa = drain(&mut wa).await;
    assert!(!tags(&at_wa).contains(&"receipt"), "alice's read receipt withheld: {at_wa:?}");

    // Turned back on, read receipts flow again.
    set_read_receipts(&mut wa, "all").await;
    alice.send(&read("3EB0P2", &wa_jid)).await;
    let (r, _) = wa.recv_tag("receipt").await;
    assert_eq!((r.get_str("id"), r.get_str("type")), (Some("3EB0P2"), Some("read")));
}
