//! The partner server over real TLS on loopback: HTTP/1.1 and HTTP/2 by ALPN, certificates that
//! must be refused, and a certificate reload under load with no failed request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use common::{Alpn, Http, Pki, config, presented_leaf, start, within};
use hyper::{StatusCode, Version};
use partner_server::Config;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn tls_config(tls: partner_server::TlsConfig) -> Config {
    Config { tls: Some(tls), plain_http: false, ..config() }
}

fn leaf_der(tls: &partner_server::TlsConfig) -> Vec<u8> {
    tls_config::load_certs(&tls.cert).expect("read cert")[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_chosen_by_alpn() {
    within(async {
        let pki = Pki::new();
        let server = start(tls_config(pki.loopback("leaf"))).await;
        let base = server.base_url().to_owned();
        assert!(base.starts_with("https://127.0.0.1:"), "{base}");
        assert!(server.jwks_url().starts_with("https://"));
        for (alpn, version) in
            [(Alpn::H1, Version::HTTP_11), (Alpn::H2, Version::HTTP_2), (Alpn::Both, Version::HTTP_2)]
        {
            let http = Http::tls(&pki.ca_file(), alpn, false);
            let reply = http.try_get(&format!("{base}/livez")).await.expect("livez over HTTPS");
            assert_eq!((reply.status, reply.version), (StatusCode::OK, version), "{alpn:?}");
            let jwks = http.try_get(&server.jwks_url()).await.expect("JWKS over HTTPS");
            assert_eq!(jwks.json()["keys"][0]["kid"], server.signing_keys().current_kid(), "{alpn:?}");
        }

        // The JWKS verifier reads it over HTTPS with the CA file.
        let verifier = jwks::JwksVerifier::new(
            &server.jwks_url(),
            jwks::VerifierConfig {
                tls: tls_config::ClientTls { platform_roots: false, ca_file: Some(pki.ca_file()), tls13_only: false },
                ..jwks::VerifierConfig::default()
            },
        )
        .expect("verifier");
        verifier.refresh_now().await.expect("JWKS fetched over HTTPS");

        // Plain HTTP to the TLS port gets nowhere.
        let plain = Http::h1().try_get(&base.replace("https://", "http://")).await;
        assert!(plain.is_err() || plain.is_ok_and(|r| r.status != StatusCode::OK));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_untrusted_and_expired_certificates_are_refused() {
    within(async {
        let pki = Pki::new();
        let other = tls_config::LocalCa::generate("another CA").expect("CA");
        let now = SystemTime::now();
        let cases = [
            ("wrong host name", pki.ca.issue(&["partner.example"], YEAR).expect("leaf"), "not valid for name"),
            ("untrusted CA", other.issue_loopback().expect("leaf"), "UnknownIssuer"),
            ("expired", pki.ca.issue_between(&["127.0.0.1"], now - 3 * YEAR, now - YEAR).expect("leaf"), "expired"),
        ];
        for (i, (what, issued, says)) in cases.into_iter().enumerate() {
            let server = start(tls_config(pki.write(&issued, &format!("bad{i}")))).await;
            let error = Http::tls(&pki.ca_file(), Alpn::Both, false)
                .try_get(&format!("{}/livez", server.base_url()))
                .await
                .expect_err(what);
            assert!(error.contains(says), "{what}: the error should say {says:?}: {error}");
            server.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_under_load_fails_no_request() {
    within(async {
        let pki = Pki::new();
        let first = pki.loopback("first");
        let second = pki.loopback("second");
        let server = Arc::new(start(tls_config(first.clone())).await);
        assert_eq!(presented_leaf(server.local_addr(), &pki.ca_file()).await, leaf_der(&first));

        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut load = Vec::new();
        for (i, alpn) in [Alpn::H1, Alpn::H2, Alpn::H1, Alpn::H2].into_iter().enumerate() {
            // Half the clients open a new connection (a new handshake) per request, half reuse one.
            let http = Http::tls(&pki.ca_file(), alpn, i < 2);
            let url = format!("{}/livez", server.base_url());
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match http.try_get(&url).await {
                        Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => panic!("request answered {}", r.status),
                        Err(e) => {
                            eprintln!("request failed during reload: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        // Swap the certificate back and forth while requests run; a broken pair in between is
        // refused and the served certificate stays.
        for round in 0..6 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let next = if round % 2 == 0 { &second } else { &first };
            server.reload_tls(Some((&next.cert, &next.key))).expect("reload");
            assert!(server.reload_tls(Some((&next.cert, &first.cert))).is_err(), "a key that is no key is refused");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.store(true, Ordering::Relaxed);
        for task in load {
            task.await.expect("load task");
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert_eq!(failed, 0, "{failed} requests failed during the reloads ({ok} succeeded)");
        assert!(ok > 20, "only {ok} requests ran");
        // Six swaps: back on the first certificate, which new connections now get.
        assert_eq!(presented_leaf(server.local_addr(), &pki.ca_file()).await, leaf_der(&first));
        server.reload_tls(None).expect("reload from the files in use");
        server.reload_tls(Some((&second.cert, &second.key))).expect("reload");
        assert_eq!(presented_leaf(server.local_addr(), &pki.ca_file()).await, leaf_der(&second));
        if let Ok(server) = Arc::try_unwrap(server) {
            server.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_mismatched_tls_files_stop_the_start() {
    within(async {
        let pki = Pki::new();
        let good = pki.loopback("good");
        let other = pki.loopback("other");
        let mismatched = partner_server::TlsConfig { cert: good.cert.clone(), key: other.key.clone() };
        let missing = partner_server::TlsConfig { cert: pki.dir.path().join("nope.pem"), key: good.key.clone() };
        for (what, tls, says) in [("mismatched", mismatched, "does not match"), ("missing", missing, "nope.pem")] {
            match partner_server::PartnerServer::start(tls_config(tls)).await {
                Err(e) => {
                    let chain = error_report::Report(&e).to_string();
                    assert!(chain.contains(says), "{what}: {chain}");
                }
                Ok(_) => panic!("{what}: started"),
            }
        }
    })
    .await;
}
