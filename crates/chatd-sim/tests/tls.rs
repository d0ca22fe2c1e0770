//! The simulator and the partner server over real TLS on loopback, as in production: enlistment
//! (with the simulator fetching the Partner's JWKS over HTTPS), the push JWKS, push to the
//! Partner, Partner media through the download path. The simulator's Partner client refuses
//! certificates it must not trust (wrong host name, untrusted CA, expired).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chatd_sim::{ChatdSim, Config, RunningSim};
use http_body_util::{BodyExt as _, Full};
use partner_server::{PartnerServer, RunningPartnerServer, TlsConfig};
use testkit::*;
use tls_config::{ClientTls, LocalCa};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

struct Pki {
    dir: tempfile::TempDir,
    ca: LocalCa,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::generate("chatd-sim test CA").unwrap();
        ca.write_cert(&dir.path().join("ca.pem")).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn write(&self, issued: &tls_config::IssuedCert, stem: &str) -> (PathBuf, PathBuf) {
        issued.write(self.dir.path(), stem).unwrap()
    }
}

/// One HTTPS request trusting only `ca`; status and body, or the error chain.
async fn https(method: &str, url: &str, ca: &Path, ctype: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let client = tls_config::https_client::<Full<Bytes>>(&ClientTls {
        platform_roots: false,
        ca_file: Some(ca.into()),
        tls13_only: false,
    })
    .map_err(|e| error_report::Report(&e).to_string())?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| error_report::Report(&e).to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
    Ok((status, body))
}

async fn token(partner: &RunningPartnerServer, ca: &Path, user: &str) -> String {
    let body = serde_json::json!({"user_identifier": user}).to_string().into_bytes();
    let (status, body) =
        https("POST", &format!("{}/oauth/token", partner.base_url()), ca, "application/json", body).await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned()
}

async fn enlist(sim: &RunningSim, ca: &Path, form: &[(String, String)]) -> serde_json::Value {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let url = format!("{}/3p/interop_reg", sim.http_url());
    let (status, body) = https("POST", &url, ca, "application/x-www-form-urlencoded", body.into_bytes()).await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

async fn stats(sim: &RunningSim, ca: &Path) -> serde_json::Value {
    let (status, body) = https("GET", &format!("{}/admin/stats", sim.http_url()), ca, "", vec![]).await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// A partner server and a simulator over HTTPS that trust the test CA (and only it, besides the
/// platform's roots, which do not know it).
async fn pair(pki: &Pki) -> (RunningPartnerServer, RunningSim) {
    let (cert, key) = pki.write(&pki.ca.issue_loopback().unwrap(), "partner");
    let mut partner_config = partner_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsConfig { cert, key }),
        plain_http: false,
        ..Default::default()
    };
    partner_config.push.jwks_ca_file = Some(pki.ca_file());
    let partner = PartnerServer::start(partner_config).await.unwrap();
    let (cert, key) = pki.write(&pki.ca.issue_loopback().unwrap(), "sim");
    let mut config = Config::local();
    config.http.tls = Some(chatd_sim::config::TlsConfig { cert, key });
    config.http.partner_ca_file = Some(pki.ca_file());
    config.integrators.push(chatd_sim::config::IntegratorConfig {
        id: 1,
        base_url: partner.base_url().to_owned(),
        issuer: partner.issuer().to_owned(),
        audience: partner.audience().to_owned(),
    });
    config.push.initial_backoff_ms = 20;
    config.push.max_attempts = 2;
    let sim = ChatdSim::start(config).await.unwrap();
    assert!(sim.http_url().starts_with("https://127.0.0.1:"), "{}", sim.http_url());
    assert!(partner.base_url().starts_with("https://127.0.0.1:"));
    partner.set_push_jwks_url(&format!("{}/.well-known/jwks", sim.http_url())).unwrap();
    (partner, sim)
}

async fn enlisted(
    sim: &RunningSim,
    partner: &RunningPartnerServer,
    ca: &Path,
    device: &Device,
    user: &str,
) -> (String, u64) {
    let answer = enlist(sim, ca, &device.enlist_form(1, user, &token(partner, ca, user).await)).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let login = answer["login"].as_str().unwrap().to_owned();
    let id = login[2..].trim_end_matches("@interop").parse().unwrap();
    (login, id)
}

/// Alice (logging in with `token`) sends bob (offline) a message: the simulator pushes to the
/// Partner.
async fn trigger_push(sim: &RunningSim, token: &str, bob_jid: &str, alice: (&Device, u64)) {
    let (mut a, _) = ChatClient::login(Dial::to(sim), &alice.0.noise, &interop_payload(alice.1, token)).await;
    a.send(&message(bob_jid, "T1", b"ciphertext")).await;
    assert_eq!(a.recv_tag("ack").await.0.get("error"), None);
}

async fn until_stat(sim: &RunningSim, ca: &Path, key: &str, want: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = stats(sim, ca).await;
        if s[key].as_u64() == Some(want) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{key} never reached {want}: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn enlistment_push_jwks_and_media_run_over_https() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let (partner, sim) = pair(&pki).await;
    let (alice, bob) = (Device::new(), Device::new());
    // Enlistment over HTTPS; the simulator verified the token with the Partner's JWKS over HTTPS.
    let (_, alice_id) = enlisted(&sim, &partner, &ca, &alice, "alice").await;
    let (bob_jid, _) = enlisted(&sim, &partner, &ca, &bob, "bob").await;

    // Push over HTTPS, verified by the Partner with the simulator's JWKS over HTTPS.
    trigger_push(&sim, &token(&partner, &ca, "alice").await, &bob_jid, (&alice, alice_id)).await;
    until_stat(&sim, &ca, "pushes_sent", 1).await;
    assert_eq!(partner.pushes().iter().filter(|p| p.to == "bob").count(), 1);

    // Partner media fetched by the simulator over HTTPS, served to the client over HTTPS.
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let (status, body) =
        https("POST", &format!("{}/media", partner.base_url()), &ca, "video/mp4", blob.clone()).await.unwrap();
    assert_eq!(status, 201);
    let reference =
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["storage_reference"].as_str().unwrap().to_owned();
    let url = format!("{}/interop/whatsapp/download/1/{reference}/", sim.http_url());
    let (status, body) = https("GET", &url, &ca, "", vec![]).await.unwrap();
    assert_eq!((status, body.len()), (200, blob.len()));
    assert_eq!(body, blob);

    // The simulator's own listener: a client that does not trust the CA is refused.
    let stranger = LocalCa::generate("stranger").unwrap();
    let other_ca = pki.dir.path().join("other-ca.pem");
    stranger.write_cert(&other_ca).unwrap();
    let refused = https("GET", &format!("{}/livez", sim.http_url()), &other_ca, "", vec![]).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
}

#[tokio::test]
async fn the_partner_client_refuses_wrong_name_untrusted_and_expired_certificates() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let now = SystemTime::now();
    let stranger = LocalCa::generate("stranger").unwrap();
    let cases = [
        ("wrong host name", pki.ca.issue(&["partner.example"], YEAR).unwrap(), "not valid for name"),
        ("untrusted CA", stranger.issue_loopback().unwrap(), "UnknownIssuer"),
        ("expired", pki.ca.issue_between(&["127.0.0.1"], now - 3 * YEAR, now - YEAR).unwrap(), "expired"),
    ];
    for (i, (what, issued, says)) in cases.into_iter().enumerate() {
        let (partner, sim) = pair(&pki).await;
        let (alice, bob) = (Device::new(), Device::new());
        let (_, alice_id) = enlisted(&sim, &partner, &ca, &alice, "alice").await;
        let (bob_jid, _) = enlisted(&sim, &partner, &ca, &bob, "bob").await;
        let token_before = token(&partner, &ca, "carol").await;
        let alice_token = token(&partner, &ca, "alice").await;

        // The Partner now presents a certificate the simulator must refuse.
        let (cert, key) = pki.write(&issued, &format!("bad{i}"));
        partner.reload_tls(Some((&cert, &key))).unwrap();

        // Push: refused on TLS, retried, then given up; nothing reaches the Partner.
        trigger_push(&sim, &alice_token, &bob_jid, (&alice, alice_id)).await;
        until_stat(&sim, &ca, "pushes_failed", 1).await;
        assert_eq!(partner.pushes().len(), 0, "{what}");

        // Media: 502 with the reason.
        let url = format!("{}/interop/whatsapp/download/1/anything/", sim.http_url());
        let (status, body) = https("GET", &url, &ca, "", vec![]).await.unwrap();
        assert_eq!(status, 502, "{what}");
        assert!(String::from_utf8_lossy(&body).contains("certificate refused"), "{what}");

        // Partner JWKS: a new simulator (no cached keys) cannot verify tokens, and says why.
        let (cert, key) = pki.write(&pki.ca.issue_loopback().unwrap(), &format!("sim{i}"));
        let mut config = Config::local();
        config.http.tls = Some(chatd_sim::config::TlsConfig { cert, key });
        config.http.partner_ca_file = Some(ca.clone());
        config.integrators.push(chatd_sim::config::IntegratorConfig {
            id: 1,
            base_url: partner.base_url().to_owned(),
            issuer: partner.issuer().to_owned(),
            audience: partner.audience().to_owned(),
        });
        let fresh = ChatdSim::start(config).await.unwrap();
        let answer = enlist(&fresh, &ca, &Device::new().enlist_form(1, "carol", &token_before)).await;
        assert_eq!((&answer["status"], &answer["reason"]), (&"fail".into(), &"bad_token".into()), "{what}");
        assert_eq!(stats(&fresh, &ca).await["partner_jwks_tls_failures"], 1, "{what}");
        // The verifier's error names the certificate problem.
        let url = format!("{}/.well-known/oauth/openid/jwks", partner.base_url());
        let verifier = jwks::JwksVerifier::new(
            &url,
            jwks::VerifierConfig {
                tls: ClientTls { platform_roots: false, ca_file: Some(ca.clone()), tls13_only: false },
                ..jwks::VerifierConfig::default()
            },
        )
        .unwrap();
        let error = error_report::Report(&verifier.refresh_now().await.unwrap_err()).to_string();
        assert!(error.contains(says), "{what}: the error should say {says:?}: {error}");
        let s = stats(&sim, &ca).await;
        assert!(s["partner_tls_failures"].as_u64() >= Some(3), "{what}: push attempts and media: {s}");
        fresh.shutdown().await;
        sim.shutdown().await;
        partner.shutdown().await;
    }
}
