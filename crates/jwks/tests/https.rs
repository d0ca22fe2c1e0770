//! JwksVerifier over real TLS on loopback: a good certificate, a wrong host name, an untrusted CA
//! and an expired certificate, and the size and time bounds over HTTPS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use error_report::Report;
use jwks::{
    Expectations, FetchError, JwksServer, JwksVerifier, PartnerClaims, SigningKeys, VerifierConfig, VerifyError,
};
use tls_config::{ClientTls, IssuedCert, LocalCa, ReloadableCert};

const ISS: &str = "https://partner.test";
const AUD: &str = "whatsapp";
const PATH: &str = "/.well-known/oauth/openid/jwks";
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test took too long")
}

struct Pki {
    dir: tempfile::TempDir,
    ca: LocalCa,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::generate("jwks test CA").expect("CA");
        ca.write_cert(&dir.path().join("ca.pem")).expect("write CA");
        Pki { dir, ca }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert(&self, issued: &IssuedCert, stem: &str) -> Arc<ReloadableCert> {
        let (cert, key) = issued.write(self.dir.path(), stem).expect("write leaf");
        ReloadableCert::load(&cert, &key).expect("load leaf")
    }

    /// A verifier that trusts only this CA (no platform roots, so the test means what it says).
    fn verifier(&self, url: &str) -> JwksVerifier {
        verifier_trusting(url, Some(&self.ca_file()))
    }
}

fn verifier_trusting(url: &str, ca: Option<&Path>) -> JwksVerifier {
    let cfg = VerifierConfig {
        min_refetch_interval: Duration::from_millis(50),
        fetch_timeout: Duration::from_secs(2),
        tls: ClientTls { platform_roots: false, ca_file: ca.map(Path::to_owned), tls13_only: false },
        ..VerifierConfig::default()
    };
    JwksVerifier::new(url, cfg).expect("verifier")
}

fn token(keys: &SigningKeys) -> String {
    keys.sign(&PartnerClaims::new(ISS, AUD, "alice", Duration::from_secs(300), None)).expect("sign")
}

/// Verifies a token against `url` and returns the fetch error it failed with.
async fn refused(verifier: &JwksVerifier, keys: &SigningKeys) -> Arc<FetchError> {
    match verifier.verify::<PartnerClaims>(&token(keys), &Expectations::new(ISS, AUD)).await {
        Err(VerifyError::JwksUnavailable { cause, .. }) => cause,
        other => panic!("expected the JWKS to be unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_certificate_verifies_over_https() {
    within(async {
        let pki = Pki::new();
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let cert = pki.cert(&pki.ca.issue_loopback().expect("leaf"), "good");
        let server = JwksServer::start_tls(loopback(), PATH, keys.clone(), &cert).await.expect("server");
        assert!(server.url().starts_with("https://127.0.0.1:"));
        let verifier = pki.verifier(&server.url());
        let claims: PartnerClaims =
            verifier.verify(&token(&keys), &Expectations::new(ISS, AUD)).await.expect("verifies over HTTPS");
        assert_eq!(claims.sub, "alice");
        assert_eq!(verifier.stats().tls_failures, 0);
        assert_eq!(server.requests(), 1);

        // "localhost" is on the certificate too.
        let by_name = server.url().replace("127.0.0.1", "localhost");
        let verifier = pki.verifier(&by_name);
        verifier.refresh_now().await.expect("fetch by host name");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_untrusted_and_expired_certificates_are_refused_and_counted() {
    within(async {
        let pki = Pki::new();
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let now = SystemTime::now();
        let other_ca = LocalCa::generate("someone else's CA").expect("CA");
        let cases = [
            ("wrong host name", pki.ca.issue(&["partner.example"], YEAR).expect("leaf"), "not valid for name"),
            ("untrusted CA", other_ca.issue_loopback().expect("leaf"), "UnknownIssuer"),
            ("expired", pki.ca.issue_between(&["127.0.0.1"], now - 3 * YEAR, now - YEAR).expect("leaf"), "expired"),
        ];
        for (i, (what, issued, says)) in cases.into_iter().enumerate() {
            let cert = pki.cert(&issued, &format!("bad{i}"));
            let server = JwksServer::start_tls(loopback(), PATH, keys.clone(), &cert).await.expect("server");
            let verifier = pki.verifier(&server.url());
            let cause = refused(&verifier, &keys).await;
            let chain = Report(cause.as_ref()).to_string();
            assert!(matches!(*cause, FetchError::Tls(_)), "{what}: {chain}");
            assert!(chain.contains(says), "{what}: the error should say {says:?}: {chain}");
            let stats = verifier.stats();
            assert_eq!((stats.tls_failures, stats.refresh_failures), (1, 1), "{what}");
            assert_eq!(server.requests(), 0, "{what}: no request may be sent over a refused connection");
            server.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_server_behind_an_https_url_is_a_tls_error() {
    within(async {
        let pki = Pki::new();
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let server = JwksServer::start(loopback(), PATH, keys.clone()).await.expect("server");
        let verifier = pki.verifier(&server.url().replace("http://", "https://"));
        let cause = refused(&verifier, &keys).await;
        assert!(matches!(*cause, FetchError::Tls(_)), "{}", Report(cause.as_ref()));
        assert_eq!(verifier.stats().tls_failures, 1);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_silent_https_servers_are_bounded() {
    within(async {
        let pki = Pki::new();
        let keys = Arc::new(SigningKeys::with_max_published(16).expect("keygen"));
        for _ in 0..15 {
            keys.rotate().expect("rotate");
        }
        let cert = pki.cert(&pki.ca.issue_loopback().expect("leaf"), "good");
        let server = JwksServer::start_tls(loopback(), PATH, keys.clone(), &cert).await.expect("server");
        let cfg = VerifierConfig {
            max_response_bytes: 1024,
            fetch_timeout: Duration::from_secs(2),
            tls: ClientTls { platform_roots: false, ca_file: Some(pki.ca_file()), tls13_only: false },
            ..VerifierConfig::default()
        };
        let verifier = JwksVerifier::new(&server.url(), cfg).expect("verifier");
        let cause = refused(&verifier, &keys).await;
        assert!(matches!(*cause, FetchError::TooLarge { limit: 1024 }), "{cause:?}");
        server.shutdown().await;

        // Accepts TCP, never answers the ClientHello: the whole fetch is bounded by its timeout.
        let silent = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
        let url = format!("https://{}/jwks", silent.local_addr().expect("addr"));
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let cfg = VerifierConfig {
            fetch_timeout: Duration::from_millis(300),
            tls: ClientTls { platform_roots: false, ca_file: Some(pki.ca_file()), tls13_only: false },
            ..VerifierConfig::default()
        };
        let verifier = JwksVerifier::new(&url, cfg).expect("verifier");
        let started = std::time::Instant::now();
        let cause = refused(&verifier, &keys).await;
        assert!(matches!(*cause, FetchError::Timeout(_)), "{cause:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    })
    .await;
}

/// A JWKS server that speaks TLS 1.2 only.
async fn tls12_only_server(
    cert: &Arc<ReloadableCert>,
    keys: Arc<SigningKeys>,
) -> (String, tokio::task::JoinHandle<()>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("https://{}{PATH}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, keys) = (acceptor.clone(), keys.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |_req| {
                    let body = http_body_util::Full::new(bytes::Bytes::from(keys.jwks().to_string()));
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_accepted_unless_tls13_is_required() {
    within(async {
        let pki = Pki::new();
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let cert = pki.cert(&pki.ca.issue_loopback().expect("leaf"), "tls12");
        let (url, task) = tls12_only_server(&cert, keys.clone()).await;
        // The proxy's JWKS fetch: TLS 1.3 preferred, 1.2 accepted.
        pki.verifier(&url).refresh_now().await.expect("a TLS 1.2 JWKS server is accepted");
        // TLS 1.3 only (the simulator's push client): refused, and counted as a TLS failure.
        let cfg = VerifierConfig {
            tls: ClientTls { platform_roots: false, ca_file: Some(pki.ca_file()), tls13_only: true },
            ..VerifierConfig::default()
        };
        let strict = JwksVerifier::new(&url, cfg).expect("verifier");
        let cause = refused(&strict, &keys).await;
        assert!(matches!(*cause, FetchError::Tls(_)), "{}", Report(cause.as_ref()));
        assert_eq!(strict.stats().tls_failures, 1);
        task.abort();
    })
    .await;
}
