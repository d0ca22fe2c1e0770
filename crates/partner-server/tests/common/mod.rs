//! Shared helpers for the partner-server tests: loopback-only, bounded in time.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode, Version};
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

/// A plain-HTTP client: HTTP/1.1, or HTTP/2 with prior knowledge.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn h1() -> Self {
        Self { client: Client::builder(TokioExecutor::new()).build_http() }
    }

    pub fn h2() -> Self {
        Self { client: Client::builder(TokioExecutor::new()).http2_only(true).build_http() }
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
