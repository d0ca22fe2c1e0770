//! Fetching and parsing a JWKS over HTTPS (or plain HTTP where the URL says so), bounded in time
//! and size.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::header::{ACCEPT, CONTENT_LENGTH, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use tls_config::{ClientTls, TlsError, find_tls_error};

/// Longest kid accepted from a JWKS (and echoed in errors); real kids are tens of characters.
pub(crate) const MAX_KID_LEN: usize = 256;
/// RSA modulus size bounds in bytes: below 2048 bits is too weak to trust, above 8192 bits is a
/// denial-of-service lever (verification cost grows with the modulus).
const MIN_MODULUS_BYTES: usize = 256;
const MAX_MODULUS_BYTES: usize = 1024;
const MAX_EXPONENT_BYTES: usize = 8;

/// Publishers differ on base64url padding; accept both.
const LENIENT_B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a JWKS fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Connecting or sending the request failed.
    #[error("JWKS request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The TLS handshake with the JWKS server failed: most often its certificate was refused
    /// (untrusted issuer, wrong host name, expired). Counted in `VerifierStats::tls_failures`.
    #[error("TLS with the JWKS server failed")]
    Tls(#[source] rustls::Error),
    /// The whole fetch (connect, response, body) took longer than the configured limit.
    #[error("JWKS fetch timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with a non-200 status.
    #[error("JWKS server answered HTTP {0}")]
    Status(StatusCode),
    /// The body exceeded the configured size limit.
    #[error("JWKS response larger than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// Reading the body failed midway.
    #[error("reading the JWKS response body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The body is not a JWKS document.
    #[error("JWKS response is not a valid JWK set")]
    Parse(#[source] serde_json::Error),
    /// The set has more keys than the configured limit.
    #[error("JWKS has {count} keys, more than the limit of {limit}")]
    TooManyKeys {
        /// Keys in the document.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// The pooled client the fetcher uses: HTTPS, or plain HTTP where the URL says so.
type FetchClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The HTTP side of the verifier: one pooled HTTPS-or-HTTP client plus the limits.
pub(crate) struct Fetcher {
    client: FetchClient,
    timeout: Duration,
    max_bytes: usize,
    max_keys: usize,
}

impl Fetcher {
    pub(crate) fn new(tls: &ClientTls, timeout: Duration, max_bytes: usize, max_keys: usize) -> Result<Self, TlsError> {
        let connector = tls.connector(Some(timeout))?;
        // Fetches are minutes apart: keep at most one idle connection, and not for long.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(Self { client, timeout, max_bytes, max_keys })
    }

    /// GET the JWKS and turn it into decoding keys by kid.
    pub(crate) async fn fetch(&self, uri: &Uri) -> Result<HashMap<String, DecodingKey>, FetchError> {
        let body = tokio::time::timeout(self.timeout, self.get(uri))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))??;
        parse_jwks(&body, self.max_keys)
    }

    async fn get(&self, uri: &Uri) -> Result<Bytes, FetchError> {
        let request = Request::get(uri.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("jwks-verifier/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            // The URI was validated at construction and the headers are static, so this cannot fail;
            // map it anyway rather than panic.
            .map_err(|e| FetchError::Body(Box::new(e)))?;
        let response = self.client.request(request).await.map_err(|e| match find_tls_error(&e) {
            Some(tls) => FetchError::Tls(tls.clone()),
            None => FetchError::Request(e),
        })?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let declared =
            response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_bytes as u64) {
            return Err(FetchError::TooLarge { limit: self.max_bytes });
        }
        let collected = Limited::new(response.into_body(), self.max_bytes).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge { limit: self.max_bytes }
            } else {
                FetchError::Body(e)
            }
        })?;
        Ok(collected.to_bytes())
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawJwk>,
}

/// The JWK fields we look at; everything else (x5c, other key types' fields) is ignored.
#[derive(Deserialize)]
struct RawJwk {
    #[serde(default)]
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Keep the RS256-capable RSA signing keys; skip (with a log line) anything else rather than
/// failing the whole set, so a publisher adding an EC key does not break RS256 verification.
pub(crate) fn parse_jwks(body: &[u8], max_keys: usize) -> Result<HashMap<String, DecodingKey>, FetchError> {
    let set: RawSet = serde_json::from_slice(body).map_err(FetchError::Parse)?;
    if set.keys.len() > max_keys {
        return Err(FetchError::TooManyKeys { count: set.keys.len(), limit: max_keys });
    }
    let mut keys = HashMap::with_capacity(set.keys.len());
    for jwk in set.keys {
        match usable_key(&jwk) {
            Ok((kid, key)) => match keys.entry(kid) {
                Entry::Occupied(e) => tracing::warn!(kid = %e.key(), "JWKS lists a kid twice; keeping the first"),
                Entry::Vacant(e) => {
                    e.insert(key);
                }
            },
            Err(reason) => tracing::debug!(kid = ?jwk.kid.as_deref().map(truncate_kid), reason, "skipping JWK"),
        }
    }
    if keys.is_empty() {
        tracing::warn!("JWKS has no usable RS256 key; every token will be rejected as unknown kid");
    }
    Ok(keys)
}

fn usable_key(jwk: &RawJwk) -> Result<(String, DecodingKey), &'static str> {
    if jwk.kty != "RSA" {
        return Err("not an RSA key");
    }
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signing key");
    }
    if jwk.alg.as_deref().is_some_and(|a| a != "RS256") {
        return Err("alg is not RS256");
    }
    let kid = jwk.kid.as_deref().ok_or("no kid")?;
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err("kid empty or too long");
    }
    let n = LENIENT_B64URL.decode(jwk.n.as_deref().ok_or("no modulus")?).map_err(|_| "modulus not base64url")?;
    let e = LENIENT_B64URL.decode(jwk.e.as_deref().ok_or("no exponent")?).map_err(|_| "exponent not base64url")?;
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    if !(MIN_MODULUS_BYTES..=MAX_MODULUS_BYTES).contains(&n.len()) {
        return Err("modulus size outside 2048..=8192 bits");
    }
    if e.is_empty() || e.len() > MAX_EXPONENT_BYTES {
        return Err("bad exponent size");
    }
    Ok((kid.to_owned(), DecodingKey::from_rsa_raw_components(n, e)))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Kids come from untrusted tokens: cap what goes into errors and logs.
pub(crate) fn truncate_kid(kid: &str) -> String {
    if kid.len() <= 64 {
        return kid.to_owned();
    }
    let mut end = 64;
    while !kid.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &kid[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_unusable_keys_and_bounds_the_set() {
        let keys = crate::SigningKeys::generate().expect("keygen");
        let mut jwks = keys.jwks();
        let good = jwks["keys"][0].clone();
        let list = jwks["keys"].as_array_mut().expect("array");
        list.push(serde_json::json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"}));
        list.push(serde_json::json!({"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"}));
        list.push(serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": good["n"], "e": "AQAB"}));
        list.push(serde_json::json!({"kty": "RSA", "n": good["n"], "e": "AQAB"}));
        let body = serde_json::to_vec(&jwks).unwrap_or_default();
        let parsed = parse_jwks(&body, 8).expect("parses");
        assert_eq!(parsed.len(), 1);
        assert!(parsed.contains_key(&keys.current_kid()));

        assert!(matches!(parse_jwks(&body, 2), Err(FetchError::TooManyKeys { count: 5, limit: 2 })));
        assert!(matches!(parse_jwks(b"{\"nokeys\":1}", 8), Err(FetchError::Parse(_))));
        assert!(matches!(parse_jwks(b"\xff\x00", 8), Err(FetchError::Parse(_))));
    }

    #[test]
    fn kid_truncation_respects_char_boundaries() {
        assert_eq!(truncate_kid("abc"), "abc");
        let long = "é".repeat(100);
        let t = truncate_kid(&long);
        assert!(t.len() <= 67 && t.ends_with("..."));
    }
}
