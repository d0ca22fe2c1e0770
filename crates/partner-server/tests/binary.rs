//! The `partner-server` binary as a process, configured by a file.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{Http, within};
use hyper::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_partner-server");

/// A config file in the temp dir, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("partner-server-{name}-{}-{nanos}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config");
        Self(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Read stdout until the `base_url:` and `jwks_url:` lines.
async fn read_urls(child: &mut Child) -> (String, String) {
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let (mut base, mut jwks) = (None, None);
    while base.is_none() || jwks.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("server printed its URLs in time")
            .expect("read stdout")
            .expect("stdout open");
        if let Some(v) = line.strip_prefix("base_url: ") {
            base = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("jwks_url: ") {
            jwks = Some(v.to_owned());
        }
    }
    (base.unwrap_or_default(), jwks.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_from_config_file_and_stops_on_sigterm() {
    within(async {
        // The file's port is unusable (1): --listen must override it.
        let config = TempConfig::new(
            "ok",
            "plain_http = true\nlisten = \"127.0.0.1:1\"\naudience = \"whatsapp-test\"\ntoken_ttl_secs = 120\n[media]\nmax_object_bytes = 1024\n",
        );
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config.0)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn partner-server");
        let (base, jwks_url) = read_urls(&mut child).await;
        assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with(":1"), "{base}");
        assert_eq!(jwks_url, format!("{base}/.well-known/oauth/openid/jwks"));

        let http = Http::h1();
        assert_eq!(http.get(&format!("{base}/livez")).await.status, StatusCode::OK);
        let reply = http.post_json(&format!("{base}/oauth/token"), &[], &json!({"user_identifier": "alice"})).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["expires_in"], 120);
        let token = reply.json()["access_token"].as_str().unwrap_or_default().to_owned();
        let verifier = jwks::JwksVerifier::new(&jwks_url, jwks::VerifierConfig::default()).expect("verifier");
        let claims: jwks::PartnerClaims =
            verifier.verify(&token, &jwks::Expectations::new(&base, "whatsapp-test")).await.expect("verifies");
        assert_eq!(claims.sub, "alice");
        let too_big = http.send(hyper::Method::POST, &format!("{base}/media"), &[], vec![0u8; 2048]).await;
        assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);

        // Graceful stop on SIGTERM (sent to the child we spawned, by pid).
        let pid = child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits in time").expect("wait");
        assert!(exit.success(), "{exit:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_rejects_invalid_config_with_a_clear_error() {
    within(async {
        let config =
            TempConfig::new("bad", "plain_http = true\nlisten = \"127.0.0.1:0\"\n[media]\nmax_object_bytes = 0\n");
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(BIN).arg("--config").arg(&config.0).stdin(Stdio::null()).output(),
        )
        .await
        .expect("exits in time")
        .expect("run");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("media.max_object_bytes"), "{stderr}");

        let missing = Command::new(BIN).arg("--config").arg("/nonexistent/partner.toml").output().await.expect("run");
        assert!(!missing.status.success());
        assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_https_and_reloads_its_certificate_on_sighup() {
    within(async {
        let pki = common::Pki::new();
        let tls = pki.loopback("served");
        let config = TempConfig::new(
            "tls",
            &format!(
                "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                tls.cert.display(),
                tls.key.display()
            ),
        );
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config.0)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn partner-server");
        let (base, jwks_url) = read_urls(&mut child).await;
        assert!(base.starts_with("https://127.0.0.1:"), "{base}");
        let fingerprint = |der: &[u8]| der.iter().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
        let served = |url: String| {
            let ca = pki.ca_file();
            async move {
                let http = Http::tls(&ca, common::Alpn::Both, true);
                let reply = http.try_get(&url).await.expect("HTTPS request");
                assert_eq!(reply.status, StatusCode::OK);
            }
        };
        served(jwks_url.clone()).await;
        let before = fingerprint(&std::fs::read(&tls.cert).expect("cert"));

        // New files in place (written whole, then renamed by IssuedCert::write), then SIGHUP.
        let fresh = pki.ca.issue_loopback().expect("leaf");
        fresh.write(pki.dir.path(), "served").expect("replace files");
        assert_ne!(before, fingerprint(&std::fs::read(&tls.cert).expect("cert")));
        let pid = child.id().expect("pid").to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
        // New connections get the new certificate; requests keep working throughout.
        let want = tls_config::load_certs(&tls.cert).expect("cert")[0].as_ref().to_vec();
        let addr: std::net::SocketAddr = base.trim_start_matches("https://").parse().expect("addr");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            served(jwks_url.clone()).await;
            if common::presented_leaf(addr, &pki.ca_file()).await == want {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the new certificate was never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = child.id().expect("pid").to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits").expect("wait");
        assert!(exit.success(), "{exit:?}");
    })
    .await;
}
