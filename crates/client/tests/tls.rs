//! The client's HTTPS services (token, enlistment, media) against the partner server and the
//! simulator over real TLS on loopback, trusting a CA file; certificates it must refuse.

use std::time::{Duration, SystemTime};

use chatd_sim::{ChatdSim, Config};
use client::Store;
use client::client::enlist_partner;
use client::services::Services;
use partner_server::{PartnerServer, TlsConfig};
use tls_config::LocalCa;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

async fn partner_with(
    dir: &std::path::Path,
    issued: &tls_config::IssuedCert,
    stem: &str,
) -> partner_server::RunningPartnerServer {
    let (cert, key) = issued.write(dir, stem).unwrap();
    PartnerServer::start(partner_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsConfig { cert, key }),
        plain_http: false,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enlistment_token_and_media_over_https_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("client test CA").unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let partner = partner_with(dir.path(), &ca.issue_loopback().unwrap(), "partner").await;
    let (cert, key) = ca.issue_loopback().unwrap().write(dir.path(), "sim").unwrap();
    let mut config = Config::local();
    config.http.tls = Some(chatd_sim::config::TlsConfig { cert, key });
    config.http.partner_ca_file = Some(ca_file.clone());
    config.integrators.push(chatd_sim::config::IntegratorConfig {
        id: 1,
        base_url: partner.base_url().to_owned(),
        issuer: partner.issuer().to_owned(),
        audience: partner.audience().to_owned(),
    });
    let sim = ChatdSim::start(config).await.unwrap();
    assert!(sim.http_url().starts_with("https://") && partner.base_url().starts_with("https://"));

    // Enlistment: the device's store names the CA; token and enlistment go over HTTPS.
    let mut store = Store::create(None).unwrap();
    let mut endpoints = store.endpoints().clone();
    endpoints.ca_file = Some(ca_file.clone());
    store.set_endpoints(endpoints);
    let jid = enlist_partner(&mut store, &sim.http_url(), partner.base_url(), 1, "alice").await.unwrap();
    assert!(jid.starts_with("1-") && jid.ends_with("@interop"), "{jid}");
    assert_eq!(store.endpoints().ca_file.as_deref(), Some(ca_file.as_path()), "kept for later logins");

    // Media both ways over HTTPS.
    let services = Services::with_ca_file(Some(&ca_file)).unwrap();
    let reference = services.upload_partner_media(partner.base_url(), vec![7u8; 4096]).await.unwrap();
    let path = format!("/interop/whatsapp/download/1/{reference}/");
    assert_eq!(services.download(&sim.http_url(), &path).await.unwrap().len(), 4096);
    let body = vec![9u8; 1000];
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    let direct = services.upload_whatsapp_media(&sim.http_url(), "sim", "image", body, sha.as_ref()).await.unwrap();
    assert_eq!(services.download(&sim.http_url(), &direct).await.unwrap().len(), 1000);

    // Without the CA file the local CA is unknown: refused, and the error says so.
    let error = Services::default().token(partner.base_url(), "alice", None).await.unwrap_err().to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
    sim.shutdown().await;
    partner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_untrusted_and_expired_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("client test CA").unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let other = LocalCa::generate("another CA").unwrap();
    let now = SystemTime::now();
    let cases = [
        ("wrong host name", ca.issue(&["partner.example"], YEAR).unwrap(), "not valid for name"),
        ("untrusted CA", other.issue_loopback().unwrap(), "UnknownIssuer"),
        ("expired", ca.issue_between(&["127.0.0.1"], now - 3 * YEAR, now - YEAR).unwrap(), "expired"),
    ];
    let services = Services::with_ca_file(Some(&ca_file)).unwrap();
    for (i, (what, issued, says)) in cases.into_iter().enumerate() {
        let partner = partner_with(dir.path(), &issued, &format!("bad{i}")).await;
        let error = services.token(partner.base_url(), "alice", None).await.unwrap_err().to_string();
        assert!(error.contains(says), "{what}: the error should say {says:?}: {error}");
        partner.shutdown().await;
    }
    // A CA file that is not there is a clear setup error.
    let missing =
        Services::with_ca_file(Some(&dir.path().join("nope.pem"))).err().map(|e| error_report::Report(&e).to_string());
    assert!(missing.is_some_and(|e| e.contains("nope.pem")));
}
