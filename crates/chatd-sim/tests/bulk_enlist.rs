//! `POST /admin/interop-users`: bulk enlistment for load harnesses, over real loopback sockets.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use testkit::*;

fn batch(d: &Device, users: &[(&str, &Device)]) -> serde_json::Value {
    let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    serde_json::json!({
        "integrator": 1,
        "registration_id": 7,
        "identity": e(&d.identity()),
        "signed_prekey": {"id": 1, "public": e(&d.signed_prekey), "signature": e(&d.skey_signature())},
        "users": users.iter().map(|(name, dev)| serde_json::json!({
            "user_identifier": name, "noise_public": e(&dev.noise_public()),
        })).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn bulk_enlisted_users_log_in_and_reenlisting_keeps_the_login() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let url = format!("{}/admin/interop-users", sim.http_url());
    let shared = Device::new();
    let (alice, bob) = (Device::new(), Device::new());
    let (status, v) = post_json(&url, batch(&shared, &[("alice", &alice), ("bob", &bob)])).await;
    assert_eq!(status, 200, "{v}");
    let logins: Vec<String> = v["logins"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
    assert_eq!(logins.len(), 2);
    assert_ne!(logins[0], logins[1]);
    assert_eq!(get_json(&format!("{}/admin/stats", sim.http_url())).await["enlistments"], 2);

    // The bulk-enlisted user logs in with its own Noise key and its Partner token.
    let id: u64 = logins[1].split_once('-').unwrap().1.trim_end_matches("@interop").parse().unwrap();
    let (_client, first) =
        ChatClient::login(Dial::to(&sim), &bob.noise, &interop_payload(id, &partner.token("bob"))).await;
    assert_eq!(first.tag, "success", "{first:?}");

    // Re-enlisting keeps the login and switches to the new key: the old key is refused.
    let alice2 = Device::new();
    let (status, v) = post_json(&url, batch(&shared, &[("alice", &alice2)])).await;
    assert_eq!((status, v["logins"][0].as_str()), (200, Some(logins[0].as_str())));
    let id: u64 = logins[0].split_once('-').unwrap().1.trim_end_matches("@interop").parse().unwrap();
    let (_, first) =
        ChatClient::login(Dial::to(&sim), &alice.noise, &interop_payload(id, &partner.token("alice"))).await;
    assert_eq!(first.tag, "failure", "{first:?}");
    let (_c, first) =
        ChatClient::login(Dial::to(&sim), &alice2.noise, &interop_payload(id, &partner.token("alice"))).await;
    assert_eq!(first.tag, "success", "{first:?}");
}

#[tokio::test]
async fn a_bad_batch_enlists_nobody() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let url = format!("{}/admin/interop-users", sim.http_url());
    let shared = Device::new();
    let d = Device::new();

    let mut bad_user = batch(&shared, &[("ok", &d), ("", &d)]);
    let (status, v) = post_json(&url, bad_user.clone()).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("users[1]"), "{v}");

    bad_user["users"][1]["user_identifier"] = "fine".into();
    bad_user["users"][1]["noise_public"] = "AAAA".into();
    assert_eq!(post_json(&url, bad_user).await.0, 400);

    let mut bad_sig = batch(&shared, &[("ok", &d)]);
    bad_sig["signed_prekey"]["signature"] = URL_SAFE_NO_PAD.encode([0u8; 64]).into();
    assert_eq!(post_json(&url, bad_sig).await.1["error"], "bad_signature");

    let mut bad_integrator = batch(&shared, &[("ok", &d)]);
    bad_integrator["integrator"] = 9.into();
    assert_eq!(post_json(&url, bad_integrator).await.0, 400);

    assert_eq!(post_json(&url, serde_json::json!({"users": 1})).await.0, 400);
    assert_eq!(get_json(&format!("{}/admin/stats", sim.http_url())).await["accounts"], 0);
}
