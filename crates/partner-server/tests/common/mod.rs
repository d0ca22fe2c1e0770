//! Shared helpers for the partner-server tests: loopback-only, bounded in time.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jwks::{JwksServer, PushClaims, RunningJwksServer, SigningKeys};
use partner_server::{Config, PartnerServer, RunningPartnerServer};
use serde_json::Value;

pub const SIM_ISSUER: &str = "WHATSAPP";

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Defaults with a loopback ephemeral port and quick JWKS refetches.
pub fn config() -> Config {
    let mut c = Config { listen: loopback(), ..Config::default() };
    c.push.jwks_min_refetch_secs = 1;
    c.limits.shutdown_grace_secs = 2;
    c
}

pub async fn start(config: Config) -> RunningPartnerServer {
    PartnerServer::start(config).await.expect("partner server starts")
}

/// Run a test body under a time bound.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f).await.expect("test timed out")
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP client: plain HTTP/1.1, or HTTP/2 with prior knowledge; or HTTPS trusting one CA
/// file, offering HTTP/1.1, HTTP/2 or both by ALPN.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// What an HTTPS client offers by ALPN.
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    H1,
    H2,
    Both,
}

impl Http {
    fn plain(h2: bool) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(None))
            .https_or_http()
            .enable_http1()
            .build();
        Self { client: Client::builder(TokioExecutor::new()).http2_only(h2).build(connector) }
    }

    pub fn h1() -> Self {
        Self::plain(false)
    }

    pub fn h2() -> Self {
        Self::plain(true)
    }

    /// HTTPS trusting only `ca_file`; `fresh` opens a new connection (and handshake) per request.
    pub fn tls(ca_file: &std::path::Path, alpn: Alpn, fresh: bool) -> Self {
        let builder =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config(Some(ca_file))).https_only();
        let connector = match alpn {
            Alpn::H1 => builder.enable_http1().build(),
            Alpn::H2 => builder.enable_http2().build(),
            Alpn::Both => builder.enable_http1().enable_http2().build(),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client.http2_only(matches!(alpn, Alpn::H2));
        if fresh {
            client.pool_max_idle_per_host(0);
        }
        Self { client: client.build(connector) }
    }

    /// One request; the error chain as text when it fails.
    pub async fn try_get(&self, url: &str) -> Result<Reply, String> {
        let request = Request::get(url).body(Full::new(Bytes::new())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| error_report::Report(&e).to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| error_report::Report(&e).to_string())?.to_bytes();
        Ok(Reply { status: parts.status, version: parts.version, headers: parts.headers, body })
    }

    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("response in time")
            .expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply { status: parts.status, version: parts.version, headers: parts.headers, body }
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, url: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(Method::POST, url, &all, body.to_string()).await
    }
}

/// A client TLS configuration trusting only `ca_file` (or nothing), without ALPN (the connector
/// builder sets it).
fn tls_config(ca_file: Option<&std::path::Path>) -> rustls::ClientConfig {
    let tls = tls_config::ClientTls { platform_roots: false, ca_file: ca_file.map(Into::into), tls13_only: false };
    let mut config = tls.client_config().expect("client TLS config");
    config.alpn_protocols.clear();
    config
}

/// A local CA in a temp dir, and server certificates it issues, written as files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: tls_config::LocalCa,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls_config::LocalCa::generate("partner-server test CA").expect("CA");
        ca.write_cert(&dir.path().join("ca.pem")).expect("write CA");
        Self { dir, ca }
    }

    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `issued` as `{stem}.pem` / `{stem}.key`.
    pub fn write(&self, issued: &tls_config::IssuedCert, stem: &str) -> partner_server::TlsConfig {
        let (cert, key) = issued.write(self.dir.path(), stem).expect("write leaf");
        partner_server::TlsConfig { cert, key }
    }

    /// A loopback certificate as `{stem}.pem` / `{stem}.key`.
    pub fn loopback(&self, stem: &str) -> partner_server::TlsConfig {
        self.write(&self.ca.issue_loopback().expect("leaf"), stem)
    }
}

/// The leaf certificate the server presents to a new connection.
pub async fn presented_leaf(addr: std::net::SocketAddr, ca_file: &std::path::Path) -> Vec<u8> {
    let tls = tls_config::ClientTls { platform_roots: false, ca_file: Some(ca_file.to_owned()), tls13_only: false };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.client_config().expect("client config")));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    let (_, conn) = stream.get_ref();
    assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    conn.peer_certificates().expect("peer certificates")[0].as_ref().to_vec()
}

/// The chatd simulator's side of push: its signing keys and JWKS endpoint.
pub struct Simulator {
    pub keys: Arc<SigningKeys>,
    pub jwks: RunningJwksServer,
}

impl Simulator {
    pub async fn start() -> Self {
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let jwks = JwksServer::start(loopback(), "/.well-known/jwks", keys.clone()).await.expect("JWKS server");
        Self { keys, jwks }
    }

    pub fn push_token(&self, audience: &str, to: &str) -> String {
        let claims = PushClaims::new(SIM_ISSUER, audience, Some(to.to_owned()), Duration::from_secs(300));
        self.keys.sign(&claims).expect("sign")
    }
}

/// POST /push as the simulator would.
pub async fn push(http: &Http, server: &RunningPartnerServer, token: Option<&str>, to: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    http.post_json(&format!("{}/push", server.base_url()), &headers, &serde_json::json!({"to": to})).await
}
