//! Issue 13 over real sockets: acknowledgement as WhatsApp clients do it (a receipt clears the
//! mailbox, a nack is never redelivered, `offline` on queued stanzas), the `<digest/>` IQ, usync
//! answering the protocols asked, LID, and per-device fan-out of the `<participants>` shape.

use std::time::Duration;

use chatd_sim::RunningSim;
use testkit::*;
use wire::{Content, Jid, Node, Server, Value};

const PHONE: u64 = 4915112345678;

async fn mailbox_entries(sim: &RunningSim, jid: &str) -> serde_json::Value {
    get_json(&format!("{}/admin/accounts/{jid}/mailbox", sim.http_url())).await["entries"].clone()
}

/// A Partner user (alice) and a WhatsApp-side user (device 1), both enlisted, neither logged in.
struct World {
    partner: Partner,
    sim: RunningSim,
    alice: Device,
    alice_jid: String,
    alice_id: u64,
    wa: Device,
    wa_jid: String,
}

async fn world() -> World {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice = Device::new();
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let wa = Device::new();
    let wa_jid = provision_wa_user(&sim, PHONE, &wa).await;
    World { partner, sim, alice, alice_jid, alice_id, wa, wa_jid }
}

impl World {
    async fn alice(&self) -> (ChatClient, Node) {
        ChatClient::login(
            Dial::to(&self.sim),
            &self.alice.noise,
            &interop_payload(self.alice_id, &self.partner.token("alice")),
        )
        .await
    }
    async fn wa(&self) -> (ChatClient, Node) {
        ChatClient::login(Dial::to(&self.sim), &self.wa.noise, &web_payload(PHONE)).await
    }
}

fn iq(id: &str, xmlns: &str, kind: &str, children: Vec<Node>) -> Node {
    Node::new("iq")
        .attr("id", id)
        .attr("xmlns", xmlns)
        .attr("type", kind)
        .attr("to", Value::Jid(Jid::server(Server::Whatsapp)))
        .children(children)
}

#[tokio::test]
async fn a_delivery_receipt_clears_the_mailbox_and_queued_stanzas_carry_offline() {
    let w = world().await;
    let (mut a, _) = w.alice().await;
    a.send(&message(&w.wa_jid, "3EB0C1", b"queued")).await;
    let (ack, _) = a.recv_tag("ack").await;
    assert_eq!(ack.get("error"), None);

    let (mut b, success) = w.wa().await;
    assert_eq!(success.tag, "success");
    let lid = success.get("lid").and_then(|v| v.as_jid()).cloned().expect("<success lid>");
    assert_eq!(lid.server, Server::Lid);
    let (msg, _) = b.recv_tag("message").await;
    assert_eq!((msg.get_str("id"), msg.get_str("offline")), (Some("3EB0C1"), Some("1")));
    // Baileys acknowledges with a receipt only (type "inactive"), never `<ack class="message">`.
    b.send(&Node::new("receipt").attr("id", "3EB0C1").attr("to", jid(&w.alice_jid)).attr("type", "inactive")).await;
    let (ack, _) = b.recv_tag("ack").await;
    assert_eq!((ack.get_str("class"), ack.get_str("type")), (Some("receipt"), Some("inactive")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mailbox_entries(&w.sim, &w.wa_jid).await, 0);
    let (receipt, _) = a.recv_tag("receipt").await;
    assert_eq!(receipt.get_str("type"), Some("inactive"));

    // A message sent while connected carries no `offline`; the next login gets nothing again.
    a.send(&message(&w.wa_jid, "3EB0C2", b"live")).await;
    let (msg, _) = b.recv_tag("message").await;
    assert_eq!((msg.get_str("id"), msg.get_str("offline")), (Some("3EB0C2"), None));
    b.send(&Node::new("receipt").attr("id", "3EB0C2").attr("to", jid(&w.alice_jid))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(b);
    let (mut b, _) = w.wa().await;
    let (ib, _) = b.recv_tag("ib").await;
    assert_eq!(ib.child("offline").unwrap().get_str("count"), Some("0"));
    assert!(b.recv_within(Duration::from_millis(300)).await.is_none(), "nothing redelivered");
}

#[tokio::test]
async fn a_nack_is_never_redelivered_and_a_decrypt_failure_sends_the_sender_a_retry_receipt() {
    let w = world().await;
    let (mut a, _) = w.alice().await;
    let (mut b, _) = w.wa().await;
    a.send(&message(&w.wa_jid, "3EB0D1", b"undecryptable")).await;
    let (msg, _) = b.recv_tag("message").await;
    let t: u64 = msg.get_str("t").unwrap().parse().unwrap();
    b.send(
        &Node::new("ack")
            .attr("class", "message")
            .attr("id", "3EB0D1")
            .attr("to", jid(&w.alice_jid))
            .attr("error", "487"),
    )
    .await;
    let (retry, _) = a.recv_tag("receipt").await;
    assert_eq!((retry.get_str("id"), retry.get_str("type")), (Some("3EB0D1"), Some("retry")));
    assert_eq!(retry.get("from").unwrap().to_string(), w.wa_jid);
    let r = retry.child("retry").unwrap();
    assert_eq!((r.get_str("count"), r.get_str("id"), r.get_str("v")), (Some("1"), Some("3EB0D1"), Some("1")));
    assert_eq!(r.get_str("t").unwrap().parse::<u64>().unwrap(), t);
    assert_eq!(retry.child("registration").unwrap().content, Content::Bytes(7u32.to_be_bytes().to_vec()));
    a.ack(&retry).await;

    // 496 (old counter: a duplicate) and 500 (Baileys: unhandled, after its own retry receipt or
    // for a sender it does not route) only drop the entry.
    for (id, code) in [("3EB0D2", "496"), ("3EB0D3", "500")] {
        a.send(&message(&w.wa_jid, id, b"dup")).await;
        a.recv_tag("ack").await;
        b.recv_tag("message").await;
        b.send(
            &Node::new("ack").attr("class", "message").attr("id", id).attr("to", jid(&w.alice_jid)).attr("error", code),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(mailbox_entries(&w.sim, &w.wa_jid).await, 0, "{code}");
        assert!(a.recv_within(Duration::from_millis(300)).await.is_none(), "no retry receipt after {code}");
    }
    drop(b);
    let (mut b, _) = w.wa().await;
    let (ib, _) = b.recv_tag("ib").await;
    assert_eq!(ib.child("offline").unwrap().get_str("count"), Some("0"), "nacked entries are not redelivered");
}

#[tokio::test]
async fn digest_usync_protocols_and_lid_addressing() {
    let w = world().await;
    let (mut a, _) = w.alice().await;
    let (mut b, success) = w.wa().await;
    let wa_lid = success.get("lid").unwrap().to_string();

    // §3.12 digest.
    let res = b.iq(iq("d1", "encrypt", "get", vec![Node::new("digest")])).await;
    assert_eq!(res.get_str("type"), Some("result"));
    let d = res.child("digest").expect("<digest>");
    assert_eq!(d.child("registration").unwrap().content, Content::Bytes(7u32.to_be_bytes().to_vec()));
    assert_eq!(d.child("type").unwrap().content, Content::Bytes(vec![5]));
    assert_eq!(d.child("identity").unwrap().content, Content::Bytes(w.wa.identity().to_vec()));
    assert!(d.child("skey").unwrap().child("signature").is_some());
    assert_eq!(d.child("list").unwrap().child_nodes().iter().count(), 2);
    assert!(matches!(&d.child("hash").unwrap().content, Content::Bytes(h) if h.len() == 20));

    // usync: what Baileys asks, `<devices version="2"/><lid/>`, for the Partner user as it writes it.
    let usync = |id: &str, query: Vec<Node>, users: Vec<Node>| {
        iq(
            id,
            "usync",
            "get",
            vec![
                Node::new("usync")
                    .attr("sid", id)
                    .attr("mode", "query")
                    .attr("context", "message")
                    .children(vec![Node::new("query").children(query), Node::new("list").children(users)]),
            ],
        )
    };
    let user = |j: &str| Node::new("user").attr("jid", jid(j));
    let res = b
        .iq(usync(
            "u1",
            vec![Node::new("devices").attr("version", "2"), Node::new("lid")],
            vec![user(&w.alice_jid), user("999@s.whatsapp.net")],
        ))
        .await;
    let list: Vec<Node> = res.child("usync").unwrap().child("list").unwrap().child_nodes().to_vec();
    assert_eq!(list.len(), 2);
    let alice = &list[0];
    let tags: Vec<&str> = alice.child_nodes().iter().map(|c| c.tag.as_str()).collect();
    assert_eq!(tags, ["devices", "lid"], "only the protocols asked, in order");
    let devices: Vec<Option<&str>> = alice
        .child("devices")
        .unwrap()
        .child("device-list")
        .unwrap()
        .child_nodes()
        .iter()
        .map(|d| d.get_str("id"))
        .collect();
    assert_eq!(devices, [Some("0")]);
    let alice_lid = alice.child("lid").unwrap().get("val").unwrap().to_string();
    assert!(alice_lid.ends_with("@lid"));
    assert_eq!(list[1].child_nodes().iter().count(), 0, "an unknown user has no devices and no LID");
    // `<contact/>` alone; the WhatsApp-side user lists device 1 with its key index.
    let res = a
        .iq(usync(
            "u2",
            vec![Node::new("contact"), Node::new("devices").attr("version", "2")],
            vec![user(&w.wa_jid), user("999@s.whatsapp.net")],
        ))
        .await;
    let list: Vec<Node> = res.child("usync").unwrap().child("list").unwrap().child_nodes().to_vec();
    assert_eq!(list[0].child("contact").unwrap().get_str("type"), Some("in"));
    let dev =
        list[0].child("devices").unwrap().child("device-list").unwrap().child_nodes().iter().next().cloned().unwrap();
    assert_eq!((dev.get_str("id"), dev.get_str("key-index")), (Some("1"), Some("1")));
    assert_eq!(list[1].child("contact").unwrap().get_str("type"), Some("out"));

    // Baileys' background LID sync names the interop user as `{integrator}-{number}@s.whatsapp.net`.
    let as_phone = w.alice_jid.replace("@interop", "@s.whatsapp.net");
    let res = b.iq(usync("u3", vec![Node::new("lid")], vec![user(&as_phone)])).await;
    let u = res.child("usync").unwrap().child("list").unwrap().child_nodes()[0].clone();
    assert_eq!(u.child("lid").and_then(|l| l.get("val")).map(|v| v.to_string()), Some(alice_lid.clone()));

    // Prekey fetch by LID routes to the account.
    let res = b.iq(iq("k1", "encrypt", "get", vec![Node::new("key").children(vec![user(&alice_lid)])])).await;
    let u = res.child("list").unwrap().child_nodes().iter().next().cloned().unwrap();
    assert!(u.child("identity").is_some(), "{u:?}");

    // A message and a receipt addressed by LID reach the account.
    b.send(&message(&alice_lid, "3EB0E1", b"by lid")).await;
    let (ack, _) = b.recv_tag("ack").await;
    assert_eq!(ack.get("error"), None, "{ack:?}");
    let (msg, _) = a.recv_tag("message").await;
    assert_eq!(msg.get_str("id"), Some("3EB0E1"));
    a.send(&Node::new("receipt").attr("id", "3EB0E1").attr("to", jid(&wa_lid))).await;
    let (r, _) = b.recv_tag("receipt").await;
    assert_eq!(r.get_str("id"), Some("3EB0E1"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mailbox_entries(&w.sim, &w.alice_jid).await, 0, "the receipt by LID cleared alice's mailbox");
}

#[tokio::test]
async fn participants_are_fanned_out_per_device_in_the_incoming_shape() {
    let w = world().await;
    let (mut a, _) = w.alice().await;
    let (mut b, _) = w.wa().await;
    let enc = |kind: &str, body: &[u8]| Node::new("enc").attr("v", "2").attr("type", kind).bytes(body.to_vec());
    // As Baileys writes it: the Partner device as JID_PAIR-decoded interop, and the device
    // identity. The sender's phone (device 0) is not registered, so it is not listed.
    let alice_device = Jid::parse(&w.alice_jid).unwrap();
    let phone0 = Jid::with_device(PHONE.to_string(), Server::Whatsapp, 0);
    let to_alice = Node::new("to").attr("jid", Value::Jid(alice_device)).children(vec![enc("pkmsg", b"for alice")]);
    let msg =
        Node::new("message").attr("to", jid(&w.alice_jid)).attr("id", "3EB0F1").attr("type", "text").children(vec![
            Node::new("participants").children(vec![to_alice.clone()]),
            Node::new("device-identity").bytes(b"adv".to_vec()),
        ]);
    b.send(&msg).await;
    let (ack, _) = b.recv_tag("ack").await;
    assert_eq!(ack.get("error"), None, "{ack:?}");
    let (got, _) = a.recv_tag("message").await;
    assert_eq!(
        got.get("from").unwrap().to_string(),
        format!("{PHONE}:1@s.whatsapp.net"),
        "from keeps the sending device"
    );
    let tags: Vec<&str> = got.child_nodes().iter().map(|c| c.tag.as_str()).collect();
    assert_eq!(tags, ["enc", "device-identity"]);
    let e = got.child("enc").unwrap();
    assert_eq!((e.get_str("type"), &e.content), (Some("pkmsg"), &Content::Bytes(b"for alice".to_vec())));

    // A list naming no device the recipient has is refused (stale device list).
    let stale =
        Node::new("message").attr("to", jid(&w.alice_jid)).attr("id", "3EB0F2").attr("type", "text").children(vec![
            Node::new("participants").children(vec![
                Node::new("to").attr("jid", Value::Jid(Jid::interop(1, "1", 3))).children(vec![enc("msg", b"x")]),
            ]),
        ]);
    b.send(&stale).await;
    let (ack, _) = b.recv_tag("ack").await;
    assert_eq!((ack.get_str("id"), ack.get_str("error")), (Some("3EB0F2"), Some("406")));
    // So is a list naming a device that does not exist (the sender's unregistered phone), and
    // nothing of it is delivered.
    let stale =
        Node::new("message").attr("to", jid(&w.alice_jid)).attr("id", "3EB0F4").attr("type", "text").children(vec![
            Node::new("participants").children(vec![
                to_alice,
                Node::new("to").attr("jid", Value::Jid(phone0)).children(vec![enc("msg", b"for my phone")]),
            ]),
        ]);
    b.send(&stale).await;
    let (ack, _) = b.recv_tag("ack").await;
    assert_eq!((ack.get_str("id"), ack.get_str("error")), (Some("3EB0F4"), Some("406")));
    // The direct `<enc>` shape keeps working.
    b.send(&message(&w.alice_jid, "3EB0F3", b"direct")).await;
    let (got, _) = a.recv_tag("message").await;
    assert_eq!(got.get_str("id"), Some("3EB0F3"), "the refused lists delivered nothing");
    assert_eq!(got.child("enc").unwrap().content, Content::Bytes(b"direct".to_vec()));
}
