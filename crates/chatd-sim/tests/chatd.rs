//! The simulator over real loopback sockets: enlistment, login, routing, mailbox, conflict,
//! blocklist, deletion, un-enlistment, identity changes and the observation API.

use std::net::IpAddr;

use testkit::*;
use wire::proto::AppVersion;
use wire::{Content, Node};

fn tag_of(n: &Option<Node>) -> &str {
    n.as_ref().map(|n| n.tag.as_str()).unwrap_or("<closed>")
}

#[tokio::test]
async fn enlist_login_ping_and_the_recorded_client_ip() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice = Device::new();
    let (login, id) = enlist(&sim, &partner, &alice, "alice").await;
    assert!(login.starts_with("1-") && login.ends_with("@interop"), "{login}");

    // Through a PROXY v1 header naming 127.0.0.7, from a socket bound to 127.0.0.9.
    let header = format!("PROXY TCP4 127.0.0.7 127.0.0.1 40000 {}\r\n", sim.chat_addr.port());
    let dial = Dial { preamble: Some(header.as_bytes()), from: Some("127.0.0.9".parse().unwrap()), ..Dial::to(&sim) };
    let (mut client, first) =
        ChatClient::login(dial, &alice.noise, &interop_payload(id, &partner.token("alice"))).await;
    assert_eq!(first.tag, "success", "{first:?}");
    let (ib, _) = client.recv_tag("ib").await;
    assert_eq!(ib.child("offline").unwrap().get_str("count"), Some("0"));

    let pong = client
        .iq(Node::new("iq").attr("id", "p1").attr("xmlns", "w:p").attr("type", "get").attr("to", jid("s.whatsapp.net")))
        .await;
    assert_eq!(pong.get_str("type"), Some("result"));

    let seen = observed(&sim, &login).await;
    assert_eq!(seen["current"], 1);
    assert_eq!(seen["client_ips"], serde_json::json!(["127.0.0.7"]));

    // Without a PROXY header the socket peer is recorded.
    drop(client);
    let dial = Dial { from: Some("127.0.0.9".parse().unwrap()), ..Dial::to(&sim) };
    let (client, first) = ChatClient::login(dial, &alice.noise, &interop_payload(id, &partner.token("alice"))).await;
    assert_eq!(first.tag, "success");
    let seen = observed(&sim, &login).await;
    assert_eq!(seen["client_ips"], serde_json::json!(["127.0.0.7", "127.0.0.9"]));
    assert_eq!(seen["max_concurrent"], 1, "the first connection was closed before the second");
    drop(client);
}

#[tokio::test]
async fn every_enlistment_failure_has_its_reason_and_reenlisting_is_idempotent() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |c| c.chat.min_app_version = "2.3000.0".into()).await;
    let d = Device::new();
    let token = partner.token("bob");
    let base = d.enlist_form(1, "bob", &token);
    let with = |key: &str, value: String| -> Vec<(String, String)> {
        base.iter().map(|(k, v)| if k == key { (k.clone(), value.clone()) } else { (k.clone(), v.clone()) }).collect()
    };
    let other = Partner::start(1).await;
    let cases = [
        (with("integrator_id", "9".into()), "bad_integrator"),
        (with("integrator_id", "abc".into()), "bad_integrator"),
        (with("token", other.token("bob")), "bad_token"),
        (with("token", partner.token("mallory")), "bad_token"),
        (with("token", "not-a-jwt".into()), "bad_token"),
        (with("user_identifier", "x".repeat(41)), "bad_user_identifier"),
        (with("authkey", "AAAA".into()), "bad_param"),
        (with("e_keytype", "Bg".into()), "bad_param"),
        (with("e_skey_sig", base64_of(&[9u8; 64])), "bad_signature"),
        ([base.clone(), vec![("version".into(), "2.2999.0".into())]].concat(), "old_version"),
    ];
    for (form, reason) in cases {
        let answer = enlist_raw(&sim, &form).await;
        assert_eq!(answer, serde_json::json!({"reason": reason, "status": "fail"}), "{form:?}");
    }
    let first = enlist_raw(&sim, &base).await;
    assert_eq!(first["status"], "ok");
    // Re-enlisting, even with new keys, keeps the login.
    let rotated = Device::new();
    let again = enlist_raw(&sim, &rotated.enlist_form(1, "bob", &token)).await;
    assert_eq!(again, first);
    // The new authkey is the one that logs in now.
    let id: u64 = first["login"].as_str().unwrap()[2..].trim_end_matches("@interop").parse().unwrap();
    let (_c, old) = ChatClient::login(Dial::to(&sim), &d.noise, &interop_payload(id, &token)).await;
    assert_eq!(old.get_str("reason"), Some("401"));
    let (_c, new) = ChatClient::login(Dial::to(&sim), &rotated.noise, &interop_payload(id, &token)).await;
    assert_eq!(new.tag, "success");
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn logins_fail_with_401_or_405_and_are_counted_against_the_account() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let carol = Device::new();
    let (login, id) = enlist(&sim, &partner, &carol, "carol").await;
    let good = partner.token("carol");

    let (_c, f) = ChatClient::login(Dial::to(&sim), &Device::new().noise, &interop_payload(id, &good)).await;
    assert_eq!((f.tag.as_str(), f.get_str("reason")), ("failure", Some("401")), "wrong static key");
    let (_c, f) =
        ChatClient::login(Dial::to(&sim), &carol.noise, &interop_payload(id, &Partner::start(1).await.token("carol")))
            .await;
    assert_eq!(f.get_str("reason"), Some("401"), "token from another key");
    let (_c, f) = ChatClient::login(Dial::to(&sim), &carol.noise, &interop_payload(id, &partner.token("dave"))).await;
    assert_eq!(f.get_str("reason"), Some("401"), "token for another user");
    let (_c, f) = ChatClient::login(Dial::to(&sim), &carol.noise, &interop_payload(id + 999, &good)).await;
    assert_eq!(f.get_str("reason"), Some("401"), "unknown account");
    let old = wire::proto::ClientPayload::interop_login(id, good.clone().into_bytes(), AppVersion::new(2, 2000, 0));
    let (_c, f) = ChatClient::login(Dial::to(&sim), &carol.noise, &old).await;
    assert_eq!(f.get_str("reason"), Some("405"), "old version");

    let seen = observed(&sim, &login).await;
    assert_eq!(seen["total"], 4, "the attempts naming carol's account: {seen}");
    let stats = get_json(&format!("{}/admin/stats", sim.http_url())).await;
    assert_eq!(stats["logins_failed"], 5);
    assert_eq!(stats["logins_ok"], 0);
}

#[tokio::test]
async fn a_client_supplied_from_is_replaced_by_the_senders_own() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (alice, mallory) = (Device::new(), Device::new());
    let (alice_jid, _) = enlist(&sim, &partner, &alice, "alice").await;
    let (mallory_jid, mallory_id) = enlist(&sim, &partner, &mallory, "mallory").await;
    let wa = Device::new();
    let wa_jid = provision_wa_user(&sim, 4915112345679, &wa).await;
    let (mut m, first) =
        ChatClient::login(Dial::to(&sim), &mallory.noise, &interop_payload(mallory_id, &partner.token("mallory")))
            .await;
    assert_eq!(first.tag, "success");
    let (mut w, first) = ChatClient::login(Dial::to(&sim), &wa.noise, &web_payload(4915112345679)).await;
    assert_eq!(first.tag, "success");

    // Mallory's message and receipt claim to be from alice, once before and once after `to`.
    m.send(
        &Node::new("message")
            .attr("from", jid(&alice_jid))
            .attr("to", jid(&wa_jid))
            .attr("id", "SPOOF1")
            .attr("type", "text")
            .attr("from", jid(&alice_jid))
            .children(vec![Node::new("enc").attr("v", "2").attr("type", "msg").bytes(vec![1, 2, 3])]),
    )
    .await;
    m.send(&Node::new("receipt").attr("from", jid(&alice_jid)).attr("to", jid(&wa_jid)).attr("id", "SPOOF2")).await;
    for stanza in ["message", "receipt"] {
        let (got, _) = w.recv_tag(stanza).await;
        let froms: Vec<String> = got.attrs.iter().filter(|(k, _)| k == "from").map(|(_, v)| v.to_string()).collect();
        assert_eq!(froms, vec![mallory_jid.clone()], "{stanza}: only the simulator's own from: {got:?}");
        w.ack(&got).await;
    }
}

#[tokio::test]
async fn message_partner_to_whatsapp_and_receipt_back_with_ciphertext_untouched() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice = Device::new();
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let wa = Device::new();
    let wa_jid = provision_wa_user(&sim, 4915112345678, &wa).await;

    let (mut a, first) =
        ChatClient::login(Dial::to(&sim), &alice.noise, &interop_payload(alice_id, &partner.token("alice"))).await;
    assert_eq!(first.tag, "success");
    let (mut w, first) = ChatClient::login(Dial::to(&sim), &wa.noise, &web_payload(4915112345678)).await;
    assert_eq!(first.tag, "success", "{first:?}");

    let ciphertext: Vec<u8> = (0..=255u8).cycle().take(700).collect();
    a.send(&message(&wa_jid, "3EB0AA", &ciphertext)).await;
    let (ack, _) = a.recv_tag("ack").await;
    assert_eq!((ack.get_str("class"), ack.get_str("id"), ack.get("error")), (Some("message"), Some("3EB0AA"), None));

    let (msg, _) = w.recv_tag("message").await;
    assert_eq!(msg.get("from").unwrap().to_string(), alice_jid);
    assert_eq!(msg.child("enc").unwrap().content, Content::Bytes(ciphertext));
    w.ack(&msg).await;
    w.send(&Node::new("receipt").attr("to", jid(&alice_jid)).attr("id", "3EB0AA")).await;
    let (ack, _) = w.recv_tag("ack").await;
    assert_eq!(ack.get_str("class"), Some("receipt"));

    let (receipt, _) = a.recv_tag("receipt").await;
    assert_eq!((receipt.get("from").unwrap().to_string(), receipt.get_str("id")), (wa_jid.clone(), Some("3EB0AA")));
    a.ack(&receipt).await;
    // Both acks emptied the mailboxes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for j in [&alice_jid, &wa_jid] {
        let m = get_json(&format!("{}/admin/accounts/{j}/mailbox", sim.http_url())).await;
        assert_eq!(m["entries"], 0, "{j}");
    }
    // Unknown recipient: the sender's ack says so.
    a.send(&message("999@s.whatsapp.net", "3EB0AB", b"x")).await;
    let (ack, _) = a.recv_tag("ack").await;
    assert_eq!(ack.get_str("error"), Some("404"));
}

#[tokio::test]
async fn offline_mailbox_delivers_everything_and_redelivers_what_was_not_acked() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (alice, bob) = (Device::new(), Device::new());
    let (_, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let (bob_jid, bob_id) = enlist(&sim, &partner, &bob, "bob").await;
    let (mut a, _) =
        ChatClient::login(Dial::to(&sim), &alice.noise, &interop_payload(alice_id, &partner.token("alice"))).await;
    for i in 0..3 {
        a.send(&message(&bob_jid, &format!("M{i}"), &[i; 40])).await;
        let (ack, _) = a.recv_tag("ack").await;
        assert_eq!(ack.get("error"), None);
    }
    let bob_login = || interop_payload(bob_id, &partner.token("bob"));
    let (mut b, first) = ChatClient::login(Dial::to(&sim), &bob.noise, &bob_login()).await;
    assert_eq!(first.tag, "success");
    let (ib, _) = b.recv_tag("ib").await;
    assert_eq!(ib.child("offline").unwrap().get_str("count"), Some("3"));
    let mut got = Vec::new();
    for _ in 0..3 {
        let (m, _) = b.recv_tag("message").await;
        got.push(m);
    }
    assert_eq!(got.iter().map(|m| m.get_str("id").unwrap()).collect::<Vec<_>>(), ["M0", "M1", "M2"]);
    b.ack(&got[0]).await;
    b.ack(&got[2]).await;
    // Let the acks land, then drop the connection without acking M1.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(b);
    let (mut b, _) = ChatClient::login(Dial::to(&sim), &bob.noise, &bob_login()).await;
    let (ib, _) = b.recv_tag("ib").await;
    assert_eq!(ib.child("offline").unwrap().get_str("count"), Some("1"));
    let (m, _) = b.recv_tag("message").await;
    assert_eq!(m.get_str("id"), Some("M1"));
    assert_eq!(m.child("enc").unwrap().content, Content::Bytes(vec![1; 40]));
}

#[tokio::test]
async fn a_second_login_replaces_the_first_with_conflict() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (login, id) = enlist(&sim, &partner, &dev, "erin").await;
    let payload = interop_payload(id, &partner.token("erin"));
    let (mut first, s) = ChatClient::login(Dial::to(&sim), &dev.noise, &payload).await;
    assert_eq!(s.tag, "success");
    let (_second, s) = ChatClient::login(Dial::to(&sim), &dev.noise, &payload).await;
    assert_eq!(s.tag, "success");
    let (err, _) = first.recv_tag("stream:error").await;
    assert_eq!(err.child("conflict").unwrap().get_str("type"), Some("replaced"));
    assert!(first.recv().await.is_none(), "closed after the conflict");
    // The simulator saw both at once: it reports what the proxy must prevent.
    assert_eq!(observed(&sim, &login).await["max_concurrent"], 2);
}

#[tokio::test]
async fn blocking_stops_delivery_both_ways_until_unblocked() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (alice, bob) = (Device::new(), Device::new());
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let (bob_jid, bob_id) = enlist(&sim, &partner, &bob, "bob").await;
    let (mut a, _) =
        ChatClient::login(Dial::to(&sim), &alice.noise, &interop_payload(alice_id, &partner.token("alice"))).await;
    let (mut b, _) =
        ChatClient::login(Dial::to(&sim), &bob.noise, &interop_payload(bob_id, &partner.token("bob"))).await;
    let block = |action: &str| {
        Node::new("iq")
            .attr("id", action)
            .attr("xmlns", "blocklist")
            .attr("type", "set")
            .attr("to", jid("s.whatsapp.net"))
            .children(vec![Node::new("item").attr("jid", jid(&alice_jid)).attr("action", action)])
    };
    assert_eq!(b.iq(block("block")).await.get_str("type"), Some("result"));
    let list = b.iq(Node::new("iq").attr("id", "g").attr("xmlns", "blocklist").attr("type", "get")).await;
    assert_eq!(list.child("list").unwrap().child_nodes()[0].get("jid").unwrap().to_string(), alice_jid);

    a.send(&message(&bob_jid, "X1", b"hi")).await;
    assert_eq!(a.recv_tag("ack").await.0.get_str("error"), Some("403"), "blocked by the recipient");
    b.send(&message(&alice_jid, "X2", b"hi")).await;
    assert_eq!(b.recv_tag("ack").await.0.get_str("error"), Some("403"), "the blocker cannot send either");

    assert_eq!(b.iq(block("unblock")).await.get_str("type"), Some("result"));
    a.send(&message(&bob_jid, "X3", b"hi")).await;
    assert_eq!(a.recv_tag("ack").await.0.get("error"), None);
    assert_eq!(b.recv_tag("message").await.0.get_str("id"), Some("X3"));
}

#[tokio::test]
async fn privacy_settings_answer_in_the_shape_clients_parse_and_keep_what_was_set() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let alice = Device::new();
    let (_, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let (mut a, _) =
        ChatClient::login(Dial::to(&sim), &alice.noise, &interop_payload(alice_id, &partner.token("alice"))).await;
    let iq = |id: &str, kind: &str, categories: &[(&str, &str)]| {
        let cats = categories.iter().map(|(n, v)| Node::new("category").attr("name", *n).attr("value", *v)).collect();
        Node::new("iq")
            .attr("id", id)
            .attr("xmlns", "privacy")
            .attr("type", kind)
            .attr("to", jid("s.whatsapp.net"))
            .children(vec![Node::new("privacy").children(cats)])
    };
    let settings = |answer: &Node| -> Vec<(String, String)> {
        answer
            .child("privacy")
            .expect("a <privacy> child")
            .child_nodes()
            .iter()
            .map(|c| (c.get_str("name").unwrap().to_owned(), c.get_str("value").unwrap().to_owned()))
            .collect()
    };
    let before = settings(&a.iq(iq("g1", "get", &[])).await);
    assert!(before.contains(&("readreceipts".into(), "all".into())), "{before:?}");
    assert!(before.contains(&("last".into(), "all".into())), "{before:?}");

    assert_eq!(a.iq(iq("s1", "set", &[("readreceipts", "none")])).await.get_str("type"), Some("result"));
    let after = settings(&a.iq(iq("g2", "get", &[])).await);
    assert!(after.contains(&("readreceipts".into(), "none".into())), "{after:?}");
    assert_eq!(after.len(), before.len());

    // A name or value clients do not use is refused whole, and changes nothing.
    for bad in [[("last", "contacts"), ("nickname", "all")], [("last", "contacts"), ("online", "everyone")]] {
        let answer = a.iq(iq("s2", "set", &bad)).await;
        assert_eq!(answer.get_str("type"), Some("error"));
        assert_eq!(answer.child("error").and_then(|e| e.get_str("code")), Some("400"));
    }
    assert_eq!(settings(&a.iq(iq("g3", "get", &[])).await), after);
}

#[tokio::test]
async fn deletion_closes_the_connection_and_later_logins_fail_until_reenlisted() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (_, id) = enlist(&sim, &partner, &dev, "frank").await;
    let token = partner.token("frank");
    let (mut c, _) = ChatClient::login(Dial::to(&sim), &dev.noise, &interop_payload(id, &token)).await;
    let result = c
        .iq(Node::new("iq")
            .attr("id", "del")
            .attr("xmlns", "urn:xmpp:whatsapp:account")
            .attr("type", "set")
            .children(vec![Node::new("remove")]))
        .await;
    assert_eq!(result.get_str("type"), Some("result"));
    let next = c.recv().await;
    assert!(next.is_none() || tag_of(&next) == "stream:error", "{next:?}");
    let (_c, f) = ChatClient::login(Dial::to(&sim), &dev.noise, &interop_payload(id, &token)).await;
    assert_eq!(f.get_str("reason"), Some("401"));
    let (login, new_id) = enlist(&sim, &partner, &dev, "frank").await;
    assert_ne!(new_id, id, "a new account after deletion");
    let (_c, s) = ChatClient::login(Dial::to(&sim), &dev.noise, &interop_payload(new_id, &token)).await;
    assert_eq!(s.tag, "success", "{login}");
}

#[tokio::test]
async fn accounts_idle_for_30_days_are_unenlisted() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (idle, active) = (Device::new(), Device::new());
    let (idle_jid, idle_id) = enlist(&sim, &partner, &idle, "idle").await;
    let (_, active_id) = enlist(&sim, &partner, &active, "active").await;
    let url = format!("{}/admin/clock/advance", sim.http_url());
    let advance = |days: u64| post_json(&url, serde_json::json!({"secs": days * 86_400}));
    let (_, r) = advance(29).await;
    assert_eq!(r["removed"], serde_json::json!([]));
    // "active" logs in on day 29 and stays connected.
    let (_keep, s) =
        ChatClient::login(Dial::to(&sim), &active.noise, &interop_payload(active_id, &partner.token("active"))).await;
    assert_eq!(s.tag, "success");
    let (_, r) = advance(2).await;
    assert_eq!(r["removed"], serde_json::json!([idle_jid]));
    let (_c, f) =
        ChatClient::login(Dial::to(&sim), &idle.noise, &interop_payload(idle_id, &partner.token("idle"))).await;
    assert_eq!(f.get_str("reason"), Some("401"));
}

#[tokio::test]
async fn a_new_identity_key_notifies_contacts_and_key_fetch_serves_bundles() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let (alice, bob) = (Device::new(), Device::new());
    let (alice_jid, alice_id) = enlist(&sim, &partner, &alice, "alice").await;
    let (bob_jid, bob_id) = enlist(&sim, &partner, &bob, "bob").await;
    let (mut a, _) =
        ChatClient::login(Dial::to(&sim), &alice.noise, &interop_payload(alice_id, &partner.token("alice"))).await;

    // Alice fetches Bob's bundle (identity, signed prekey) and writes to him: now they are contacts.
    let keys = a
        .iq(Node::new("iq")
            .attr("id", "k")
            .attr("xmlns", "encrypt")
            .attr("type", "get")
            .children(vec![Node::new("key").children(vec![Node::new("user").attr("jid", jid(&bob_jid))])]))
        .await;
    let user = &keys.child("list").unwrap().child_nodes()[0];
    assert_eq!(user.child("identity").unwrap().content, Content::Bytes(bob.identity().to_vec()));
    assert_eq!(user.child("skey").unwrap().child("value").unwrap().content, Content::Bytes(bob.signed_prekey.to_vec()));
    a.send(&message(&bob_jid, "hello", b"pkmsg")).await;
    a.recv_tag("ack").await;

    // Bob reinstalls: new identity, re-enlisted.
    let bob2 = Device::new();
    let (again, _) = enlist(&sim, &partner, &bob2, "bob").await;
    assert_eq!(again, bob_jid);
    let (note, _) = a.recv_tag("notification").await;
    assert_eq!((note.get_str("type"), note.get("from").unwrap().to_string()), (Some("encrypt"), bob_jid.clone()));
    assert!(note.child("identity").is_some());
    a.ack(&note).await;
    let _ = (alice_jid, bob_id);
}

#[tokio::test]
async fn websocket_carrier_logs_in_like_tcp() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |c| c.chat.ws_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let dev = Device::new();
    let (_, id) = enlist(&sim, &partner, &dev, "wsuser").await;
    let url = format!("ws://{}/ws/chat", sim.ws_addr.unwrap());
    let first = ws_login(&url, &dev.noise, &interop_payload(id, &partner.token("wsuser")), sim.root_public_key()).await;
    assert_eq!(first.tag, "success");
    // Any other path is refused.
    let bad = format!("ws://{}/other", sim.ws_addr.unwrap());
    assert!(tokio_tungstenite::connect_async(bad).await.is_err());
}

/// Logs in over WebSocket, cutting the byte stream into odd-sized messages: the sans-IO initiator
/// fed from WebSocket messages.
async fn ws_login(url: &str, noise: &[u8; 32], payload: &wire::proto::ClientPayload, root: [u8; 32]) -> Node {
    use futures_util::{SinkExt, StreamExt};
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;
    use wire::connect::{ClientConnect, ConnectConfig};
    use wire::noise::StaticKeypair;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let key = StaticKeypair::from_private(noise).unwrap();
    let mut hs = ClientConnect::new(key, &payload.encode_to_vec(), &ConnectConfig::new(root), b"").unwrap();
    loop {
        if let Some(out) = hs.transmit() {
            for chunk in out.chunks(7) {
                ws.send(Message::binary(chunk.to_vec())).await.unwrap();
            }
        }
        if hs.is_finished() {
            break;
        }
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) => hs.recv(&b),
            other => panic!("{other:?}"),
        }
        hs.handle_recv(wire_io::clock::unix_now()).unwrap();
    }
    let done = hs.finish().unwrap();
    let (mut transport, mut inbound) = (done.transport, done.leftover.to_vec());
    let mut first = loop {
        if let Ok(Some((body, _))) = wire::frame::decode_frame(&inbound, wire::frame::MAX_FRAME_LEN) {
            break body.to_vec();
        }
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) => inbound.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
    };
    let plain = transport.open(&mut first).unwrap();
    wire::decode::decode(plain).unwrap()
}

#[allow(dead_code)]
fn unused(_: IpAddr) {}

#[tokio::test]
async fn whatsapp_side_media_upload_and_download() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let (status, body) = request("POST", &format!("{}/mms/image", sim.http_url()), "image/jpeg", blob.clone()).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let path = v["direct_path"].as_str().unwrap();
    assert!(path.starts_with("/v/t62.7118-24/"), "{path}");
    let resp = http()
        .request(
            hyper::Request::get(format!("{}{path}", sim.http_url()))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.headers()["content-length"], blob.len().to_string().as_str());
    use http_body_util::BodyExt;
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), blob);
    let (status, _) = request("GET", &format!("{}/v/t62.7118-24/nope", sim.http_url()), "", vec![]).await;
    assert_eq!(status, 404);
    let (status, _) = request("POST", &format!("{}/mms/image", sim.http_url()), "image/jpeg", vec![0; 17 << 20]).await;
    assert_eq!(status, 413, "over http.max_body_bytes");

    // WhatsApp's form (Baileys, whatsmeow): `/mms/{type}/{token}?auth=..&token=..`, the token
    // being base64url(SHA-256(body)); a token for other bytes is refused.
    use base64::Engine as _;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = b64url.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &blob));
    let url = |t: &str| format!("{}/mms/audio/{t}?auth=sim&token={t}", sim.http_url());
    let (status, body) = request("POST", &url(&token), "application/octet-stream", blob.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["direct_path"].as_str().unwrap().starts_with("/v/t62.7118-24/"), "{v}");
    let (status, _) = request("POST", &url(&token), "application/octet-stream", blob[1..].to_vec()).await;
    assert_eq!(status, 400, "a token for other bytes");
    let (status, _) = request("POST", &url("not-base64!"), "application/octet-stream", blob.clone()).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_partner_key_rotation_is_picked_up_by_refetch() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |c| c.tokens.jwks_min_refetch_secs = 1).await;
    enlist(&sim, &partner, &Device::new(), "gina").await;
    let fetches = partner.jwks.requests();
    partner.keys.rotate().unwrap();
    // A token from the new key is refused only while the refetch rate limit holds (at most the
    // configured second), then accepted after exactly one refetch, however the attempts land.
    let second = Device::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let answer = enlist_raw(&sim, &second.enlist_form(1, "hank", &partner.token("hank"))).await;
        if answer["status"] == "ok" {
            break;
        }
        assert_eq!(answer["reason"], "bad_token");
        assert!(tokio::time::Instant::now() < deadline, "the new key was never picked up");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(partner.jwks.requests(), fetches + 1, "one refetch for the new key id");
}
