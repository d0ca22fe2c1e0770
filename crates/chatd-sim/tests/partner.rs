//! The simulator with the reference partner server: push verified on the Partner's side, Partner
//! media through the download path, and both binaries run as processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chatd_sim::{ChatdSim, Config, RunningSim};
use partner_server::{PartnerServer, RunningPartnerServer};
use testkit::*;

async fn token(partner: &str, user: &str) -> String {
    let (status, v) = post_json(&format!("{partner}/oauth/token"), serde_json::json!({"user_identifier": user})).await;
    assert_eq!(status, 200, "{v}");
    v["access_token"].as_str().unwrap().to_owned()
}

async fn enlist_with(sim: &RunningSim, partner: &str, device: &Device, user: &str) -> (String, u64) {
    let answer = enlist_raw(sim, &device.enlist_form(1, user, &token(partner, user).await)).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let login = answer["login"].as_str().unwrap().to_owned();
    let id = login[2..].trim_end_matches("@interop").parse().unwrap();
    (login, id)
}

/// A partner server and a simulator that know each other.
async fn pair() -> (RunningPartnerServer, RunningSim) {
    let partner =
        PartnerServer::start(partner_server::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() })
            .await
            .unwrap();
    let mut config = Config::local();
    config.integrators.push(chatd_sim::config::IntegratorConfig {
        id: 1,
        base_url: partner.base_url().to_owned(),
        issuer: partner.issuer().to_owned(),
        audience: partner.audience().to_owned(),
    });
    config.push.initial_backoff_ms = 20;
    let sim = ChatdSim::start(config).await.unwrap();
    partner.set_push_jwks_url(&format!("{}/.well-known/jwks", sim.http_url())).unwrap();
    (partner, sim)
}

async fn pushes_for(partner: &RunningPartnerServer, user: &str) -> usize {
    partner.pushes().iter().filter(|p| p.to == user).count()
}

#[tokio::test]
async fn push_reaches_the_partner_server_verified_and_once_per_burst() {
    let (partner, sim) = pair().await;
    let (alice, bob) = (Device::new(), Device::new());
    let (_, alice_id) = enlist_with(&sim, partner.base_url(), &alice, "alice").await;
    let (bob_jid, bob_id) = enlist_with(&sim, partner.base_url(), &bob, "bob").await;
    let (mut a, _) = ChatClient::login(
        Dial::to(&sim),
        &alice.noise,
        &interop_payload(alice_id, &token(partner.base_url(), "alice").await),
    )
    .await;

    for i in 0..3 {
        a.send(&message(&bob_jid, &format!("P{i}"), b"ciphertext")).await;
        assert_eq!(a.recv_tag("ack").await.0.get("error"), None);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while pushes_for(&partner, "bob").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no push recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pushes_for(&partner, "bob").await, 1, "one push for the burst");
    let stats = get_json(&format!("{}/admin/stats", sim.http_url())).await;
    assert_eq!((stats["pushes_sent"].as_u64(), stats["pushes_failed"].as_u64()), (Some(1), Some(0)));

    // Bob wakes up, drains his mailbox, leaves; the next message pushes again.
    let (mut b, _) = ChatClient::login(
        Dial::to(&sim),
        &bob.noise,
        &interop_payload(bob_id, &token(partner.base_url(), "bob").await),
    )
    .await;
    for _ in 0..3 {
        let (m, _) = b.recv_tag("message").await;
        b.ack(&m).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send(&message(&bob_jid, "P3", b"ciphertext")).await;
    a.recv_tag("ack").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while pushes_for(&partner, "bob").await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no second push");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_push_the_partner_cannot_verify_is_not_recorded() {
    let (partner, sim) = pair().await;
    // Point the partner at keys that are not the simulator's: every push fails verification.
    let stranger = Partner::start(9).await;
    partner.set_push_jwks_url(&stranger.jwks.url()).unwrap();
    let (alice, bob) = (Device::new(), Device::new());
    let (_, alice_id) = enlist_with(&sim, partner.base_url(), &alice, "alice").await;
    let (bob_jid, _) = enlist_with(&sim, partner.base_url(), &bob, "bob").await;
    let (mut a, _) = ChatClient::login(
        Dial::to(&sim),
        &alice.noise,
        &interop_payload(alice_id, &token(partner.base_url(), "alice").await),
    )
    .await;
    a.send(&message(&bob_jid, "Q", b"x")).await;
    a.recv_tag("ack").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = get_json(&format!("{}/admin/stats", sim.http_url())).await;
        if stats["pushes_failed"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "push never gave up: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pushes_for(&partner, "bob").await, 0);
}

#[tokio::test]
async fn partner_media_is_served_through_the_interop_download_path() {
    let (partner, sim) = pair().await;
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let (status, body) = request("POST", &format!("{}/media", partner.base_url()), "video/mp4", blob.clone()).await;
    assert_eq!(status, 201);
    let reference =
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["storage_reference"].as_str().unwrap().to_owned();
    let url = format!("{}/interop/whatsapp/download/1/{reference}/", sim.http_url());
    let (status, body) = request("GET", &url, "", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(body, blob);
    let (status, _) =
        request("GET", &format!("{}/interop/whatsapp/download/1/nosuchobject/", sim.http_url()), "", vec![]).await;
    assert_eq!(status, 404);
    let (status, _) =
        request("GET", &format!("{}/interop/whatsapp/download/7/{reference}/", sim.http_url()), "", vec![]).await;
    assert_eq!(status, 404, "unknown integrator");
}

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a binary and reads `key: value` / `key=value` lines from its stdout until `want` are seen.
fn spawn(path: &std::path::Path, args: &[&str], want: &[&str]) -> (Running, std::collections::HashMap<String, String>) {
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut facts = std::collections::HashMap::new();
    let guard = Running(child);
    while !want.iter().all(|w| facts.contains_key(*w)) {
        let line = lines.next().expect("process exited early").unwrap();
        if let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(": ")) {
            facts.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    // Keep reading: a closed pipe would make the process's next print fail.
    std::thread::spawn(move || lines.for_each(drop));
    (guard, facts)
}

#[tokio::test]
async fn both_binaries_as_processes_enlist_and_log_in() {
    let sim_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chatd-sim"));
    let partner_bin = sim_bin.with_file_name("partner-server");
    if !partner_bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "partner-server", "--bin", "partner-server"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let dir = std::env::temp_dir().join(format!("chatd-sim-procs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let partner_cfg = dir.join("partner.toml");
    std::fs::write(&partner_cfg, "plain_http = true\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let (_partner, facts) = spawn(&partner_bin, &["--config", partner_cfg.to_str().unwrap()], &["base_url"]);
    let base = facts["base_url"].clone();

    let sim_cfg = dir.join("sim.toml");
    std::fs::write(
        &sim_cfg,
        format!("[[integrators]]\nid = 1\nbase_url = \"{base}\"\nissuer = \"{base}\"\naudience = \"whatsapp\"\n"),
    )
    .unwrap();
    let (_sim, facts) =
        spawn(&sim_bin, &["--config", sim_cfg.to_str().unwrap()], &["chat_addr", "http_url", "root_public_key"]);
    let http_url = facts["http_url"].clone();
    let root: [u8; 32] = hex::decode(&facts["root_public_key"]).unwrap().try_into().unwrap();
    let chat_addr = facts["chat_addr"].parse().unwrap();

    let device = Device::new();
    let tok = token(&base, "processes").await;
    let body =
        form_urlencoded::Serializer::new(String::new()).extend_pairs(device.enlist_form(1, "processes", &tok)).finish();
    let (status, answer) =
        request("POST", &format!("{http_url}/3p/interop_reg"), "application/x-www-form-urlencoded", body.into_bytes())
            .await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["status"], "ok", "{answer}");
    let id: u64 = answer["login"].as_str().unwrap()[2..].trim_end_matches("@interop").parse().unwrap();
    let dial = Dial { addr: chat_addr, root, from: None, preamble: None };
    let (_client, first) = ChatClient::login(dial, &device.noise, &interop_payload(id, &tok)).await;
    assert_eq!(first.tag, "success", "{first:?}");
}
