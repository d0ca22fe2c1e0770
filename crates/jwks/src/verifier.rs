//! A cached, rate-limited RS256 verifier over one remote JWKS.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hyper::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, MutexGuard};

use crate::fetch::{FetchError, Fetcher, MAX_KID_LEN, truncate_kid};
use error_report::Report;
use tls_config::{ClientTls, TlsError};

/// Longest token accepted, in bytes. The seed caps Partner tokens at 4 KiB; twice that leaves room
/// for other issuers while keeping base64/JSON work on junk input bounded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Tuning of a [`JwksVerifier`]. Every duration and limit must be non-zero.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// Refetch the JWKS when the cached copy is older than this. Default 5 minutes.
    pub refresh_interval: Duration,
    /// Fetches triggered by an unknown kid, and retries after a failed fetch, happen at most once
    /// per this interval (measured from the start of the previous fetch of any kind), so tokens
    /// with junk kids or a dead JWKS server cannot turn verification into a fetch storm.
    /// Default 30 seconds.
    pub min_refetch_interval: Duration,
    /// When refreshes fail, a cached set stays usable for this long past `refresh_interval`
    /// (a JWKS outage should not stop logins at once); after that, verification fails with
    /// [`VerifyError::JwksUnavailable`]. Default 1 hour.
    pub max_stale: Duration,
    /// Bound on one whole fetch: connect, response head and body. Default 5 seconds.
    pub fetch_timeout: Duration,
    /// Bound on the JWKS response body. Default 64 KiB.
    pub max_response_bytes: usize,
    /// Bound on keys in the set. Default 32.
    pub max_keys: usize,
    /// Whom an `https://` JWKS server's certificate must chain to: the platform's roots and/or
    /// a CA file. Default: the platform's roots.
    pub tls: ClientTls,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
            max_keys: 32,
            tls: ClientTls::default(),
        }
    }
}

/// What a token must say to be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectations {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (a token whose `aud` is an array must contain it).
    pub audience: String,
    /// Clock-skew allowance for `exp` and `nbf`, whole seconds (sub-second parts are dropped).
    pub leeway: Duration,
}

impl Expectations {
    /// Issuer and audience with a 60-second leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self { issuer: issuer.into(), audience: audience.into(), leeway: Duration::from_secs(60) }
    }
}

/// The verifier could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The JWKS URL does not parse.
    #[error("invalid JWKS URL {url:?}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// The JWKS URL is not `https://host[:port]/path` (or `http://`).
    #[error("unsupported JWKS URL {url:?}: {reason}")]
    UnsupportedUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A duration or limit in [`VerifierConfig`] is zero.
    #[error("verifier config: {0} must be greater than zero")]
    Zero(&'static str),
    /// The TLS trust settings cannot be used (unreadable CA file, no roots at all).
    #[error("JWKS TLS settings")]
    Tls(#[from] TlsError),
}

/// Why a token was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a well-formed RS256 JWT with a kid (or its claims do not have the expected shape).
    #[error("malformed token: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The token's kid is not in the JWKS, even after a refetch (or the refetch was rate limited).
    #[error("unknown signing key id {kid:?}")]
    UnknownKid {
        /// The kid from the token, truncated to 64 bytes.
        kid: String,
    },
    /// The signature does not verify with the key its kid names.
    #[error("token signature does not verify (kid {kid:?})")]
    BadSignature {
        /// The kid from the token, truncated to 64 bytes.
        kid: String,
    },
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("token issuer is not {expected:?}")]
    WrongIssuer {
        /// The issuer that was required.
        expected: String,
    },
    /// `aud` is not (or does not contain) the expected audience.
    #[error("token audience is not {expected:?}")]
    WrongAudience {
        /// The audience that was required.
        expected: String,
    },
    /// No usable JWKS: it could not be fetched and there is no cached copy fresh enough.
    #[error("JWKS at {url} unavailable")]
    JwksUnavailable {
        /// The JWKS URL.
        url: String,
        /// Why the (last) fetch failed.
        #[source]
        cause: Arc<FetchError>,
    },
}

impl VerifyError {
    /// A stable snake_case code for the variant: for JSON error bodies and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::BadSignature { .. } => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer { .. } => "wrong_issuer",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::JwksUnavailable { .. } => "jwks_unavailable",
        }
    }

    fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed { reason: reason.into() }
    }
}

/// Counters for monitoring, cumulative since the verifier was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifierStats {
    /// Successful JWKS fetches (initial, periodic and unknown-kid ones).
    pub refreshes: u64,
    /// Failed JWKS fetches.
    pub refresh_failures: u64,
    /// Fetches triggered by a token with a kid not in the cached set.
    pub unknown_kid_refetches: u64,
    /// Fetches skipped by `min_refetch_interval`: unknown kids, or retries after a failure.
    pub refetches_suppressed: u64,
    /// Keys in the cached set now.
    pub keys: u64,
    /// Failed fetches whose cause was TLS: the server's certificate was refused (untrusted,
    /// wrong name, expired) or the handshake failed. Included in `refresh_failures`.
    pub tls_failures: u64,
}

/// Which fetched key set a verification used: every successful fetch makes a new one, so a
/// result tied to an id is void once the set is refetched (a rotated-out or revoked key goes
/// with the fetch that dropped it). Later fetches have greater ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeySetId(pub(crate) u64);

/// A fetched set and when its fetch started.
struct KeySet {
    id: KeySetId,
    keys: HashMap<String, DecodingKey>,
    fetched_at: Instant,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// Start of the latest fetch attempt, whatever its outcome; the rate-limit reference.
    last_attempt: Option<Instant>,
    /// Set while the latest completed attempt failed.
    last_error: Option<Arc<FetchError>>,
}

#[derive(Default)]
struct Counters {
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    unknown_kid_refetches: AtomicU64,
    refetches_suppressed: AtomicU64,
    tls_failures: AtomicU64,
}

struct Inner {
    url: String,
    uri: Uri,
    config: VerifierConfig,
    fetcher: Fetcher,
    /// Never held across an await.
    state: RwLock<State>,
    /// Held for the duration of a fetch: at most one fetch in flight.
    fetch_lock: Mutex<()>,
    counters: Counters,
    /// The id of the next fetched set.
    next_key_set: AtomicU64,
}

/// Verifies RS256 JWTs against the JWKS at one URL, which it fetches on first use, refreshes when
/// older than `refresh_interval`, and refetches when a token names an unknown kid (rate limited by
/// `min_refetch_interval`). Cheap to clone; clones share the cache.
///
/// Concurrency: any number of tasks may verify at once. At most one fetch is in flight; tasks that
/// need it wait for it, and tasks holding a still-usable (if stale) set keep verifying with it
/// while another task refreshes.
///
/// `https://` URLs are fetched over TLS (1.3 preferred, 1.2 accepted) with the certificate
/// checked against `VerifierConfig::tls`; `http://` is fetched in the clear (loopback, tests).
///
/// Needs a Tokio runtime (with timers) when verifying.
#[derive(Clone)]
pub struct JwksVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksVerifier").field("url", &self.inner.url).field("stats", &self.stats()).finish()
    }
}

impl JwksVerifier {
    /// A verifier for the JWKS at `url` (`https://host[:port]/path`, or `http://`). Reads the
    /// trust store and CA file, but does no network I/O.
    pub fn new(url: &str, config: VerifierConfig) -> Result<Self, ConfigError> {
        let uri: Uri = url.parse().map_err(|source| ConfigError::InvalidUrl { url: url.to_owned(), source })?;
        let unsupported = |reason| ConfigError::UnsupportedUrl { url: url.to_owned(), reason };
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(unsupported("scheme must be https or http")),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(unsupported("no host"));
        }
        for (value, name) in [
            (config.refresh_interval.is_zero(), "refresh_interval"),
            (config.min_refetch_interval.is_zero(), "min_refetch_interval"),
            (config.fetch_timeout.is_zero(), "fetch_timeout"),
            (config.max_response_bytes == 0, "max_response_bytes"),
            (config.max_keys == 0, "max_keys"),
        ] {
            if value {
                return Err(ConfigError::Zero(name));
            }
        }
        if https && config.tls.root_store()?.is_empty() {
            return Err(TlsError::NoRoots.into());
        }
        let fetcher = Fetcher::new(&config.tls, config.fetch_timeout, config.max_response_bytes, config.max_keys)?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                uri,
                config,
                fetcher,
                state: RwLock::new(State::default()),
                fetch_lock: Mutex::new(()),
                counters: Counters::default(),
                next_key_set: AtomicU64::new(0),
            }),
        })
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Monitoring counters.
    pub fn stats(&self) -> VerifierStats {
        let c = &self.inner.counters;
        let keys = self.state().keys.as_ref().map_or(0, |k| k.keys.len() as u64);
        VerifierStats {
            refreshes: c.refreshes.load(Ordering::Relaxed),
            refresh_failures: c.refresh_failures.load(Ordering::Relaxed),
            unknown_kid_refetches: c.unknown_kid_refetches.load(Ordering::Relaxed),
            refetches_suppressed: c.refetches_suppressed.load(Ordering::Relaxed),
            keys,
            tls_failures: c.tls_failures.load(Ordering::Relaxed),
        }
    }

    /// Fetch the JWKS now (e.g. to warm the cache at start-up), bypassing the rate limit but not the
    /// single-flight rule.
    pub async fn refresh_now(&self) -> Result<(), VerifyError> {
        let guard = self.inner.fetch_lock.lock().await;
        self.fetch_locked(&guard).await.map(|_| ()).map_err(|cause| self.unavailable(cause))
    }

    /// Verify an RS256 `token` against the JWKS and `expect`, and deserialize its claims.
    ///
    /// Requires `exp`, `iss` and `aud`; checks `nbf` when present.
    pub async fn verify<C: DeserializeOwned>(&self, token: &str, expect: &Expectations) -> Result<C, VerifyError> {
        self.verify_in_key_set(token, expect).await.map(|(claims, _)| claims)
    }

    /// [`verify`](Self::verify), also saying which key set the signature verified with: what a
    /// cache of verified tokens ([`crate::VerifiedTokens`]) is keyed to.
    pub async fn verify_in_key_set<C: DeserializeOwned>(
        &self,
        token: &str,
        expect: &Expectations,
    ) -> Result<(C, KeySetId), VerifyError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::malformed(format!("longer than {MAX_TOKEN_LEN} bytes")));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| VerifyError::malformed(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::malformed(format!("algorithm {:?} is not accepted (RS256 only)", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| VerifyError::malformed("no kid in header"))?;
        if kid.is_empty() || kid.len() > MAX_KID_LEN {
            return Err(VerifyError::malformed("kid empty or too long"));
        }

        let set = self.usable_set().await?;
        let set = if set.keys.contains_key(&kid) { set } else { self.refetch_for_unknown_kid(&kid).await? };
        let key = set.keys.get(&kid).ok_or_else(|| VerifyError::UnknownKid { kid: truncate_kid(&kid) })?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&expect.issuer]);
        validation.set_audience(&[&expect.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = expect.leeway.as_secs();

        jsonwebtoken::decode::<C>(token, key, &validation).map(|data| (data.claims, set.id)).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) => {
                    VerifyError::BadSignature { kid: truncate_kid(&kid) }
                }
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                ErrorKind::InvalidIssuer => VerifyError::WrongIssuer { expected: expect.issuer.clone() },
                ErrorKind::InvalidAudience => VerifyError::WrongAudience { expected: expect.audience.clone() },
                ErrorKind::MissingRequiredClaim(claim) => VerifyError::malformed(format!("missing claim {claim}")),
                _ => VerifyError::malformed(e.to_string()),
            }
        })
    }

    /// The id of the key set a verification would use now, under the same rules as
    /// [`verify`](Self::verify): fetched if there is none, refreshed when due, and
    /// [`VerifyError::JwksUnavailable`] once no set is fresh enough. A cached verification is only
    /// as good as the set it was made with, so a cache asks this before each hit.
    pub async fn current_key_set(&self) -> Result<KeySetId, VerifyError> {
        self.usable_set().await.map(|set| set.id)
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // The state is only ever replaced field by field under the lock with no code that can panic
        // in between, so a poisoned lock still holds consistent data.
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn unavailable(&self, cause: Arc<FetchError>) -> VerifyError {
        VerifyError::JwksUnavailable { url: self.inner.url.clone(), cause }
    }

    fn recently_attempted(&self, state: &State, now: Instant) -> bool {
        state.last_attempt.is_some_and(|t| now.saturating_duration_since(t) < self.inner.config.min_refetch_interval)
    }

    /// A set fresh enough to verify with, fetching one if needed.
    async fn usable_set(&self) -> Result<Arc<KeySet>, VerifyError> {
        let cfg = &self.inner.config;
        let now = Instant::now();
        // Age is measured from the start of the fetch, which errs on the side of refreshing early.
        let cached = self.state().keys.clone();
        let stale_ok = cached
            .as_ref()
            .filter(|set| now.saturating_duration_since(set.fetched_at) < cfg.refresh_interval + cfg.max_stale);
        match (&cached, stale_ok) {
            (Some(set), _) if now.saturating_duration_since(set.fetched_at) < cfg.refresh_interval => Ok(set.clone()),
            (_, Some(stale)) => {
                // Due for a refresh but still usable: refresh if nobody else is, otherwise keep going
                // with what we have rather than queueing behind the fetch.
                let Ok(guard) = self.inner.fetch_lock.try_lock() else {
                    return Ok(stale.clone());
                };
                let current = self.state().keys.clone();
                if let Some(set) =
                    current.filter(|s| now.saturating_duration_since(s.fetched_at) < cfg.refresh_interval)
                {
                    return Ok(set);
                }
                if self.recently_attempted(&self.state(), now) {
                    self.inner.counters.refetches_suppressed.fetch_add(1, Ordering::Relaxed);
                    return Ok(stale.clone());
                }
                match self.fetch_locked(&guard).await {
                    Ok(set) => Ok(set),
                    // Serve stale on error: the failure is logged and counted.
                    Err(_) => Ok(stale.clone()),
                }
            }
            _ => {
                // Nothing usable: wait for the fetch in flight, or do it.
                let guard = self.inner.fetch_lock.lock().await;
                let now = Instant::now();
                {
                    let state = self.state();
                    if let Some(set) = state
                        .keys
                        .as_ref()
                        .filter(|s| now.saturating_duration_since(s.fetched_at) < cfg.refresh_interval + cfg.max_stale)
                    {
                        return Ok(set.clone());
                    }
                    if let (Some(err), true) = (&state.last_error, self.recently_attempted(&state, now)) {
                        self.inner.counters.refetches_suppressed.fetch_add(1, Ordering::Relaxed);
                        return Err(self.unavailable(err.clone()));
                    }
                }
                self.fetch_locked(&guard).await.map_err(|cause| self.unavailable(cause))
            }
        }
    }

    /// The token's kid is not in the cached set: refetch, unless a fetch started less than
    /// `min_refetch_interval` ago.
    async fn refetch_for_unknown_kid(&self, kid: &str) -> Result<Arc<KeySet>, VerifyError> {
        let guard = self.inner.fetch_lock.lock().await;
        {
            let state = self.state();
            // A fetch that completed while we waited may have brought the kid in.
            if let Some(set) = state.keys.as_ref().filter(|s| s.keys.contains_key(kid)) {
                return Ok(set.clone());
            }
            if self.recently_attempted(&state, Instant::now()) {
                self.inner.counters.refetches_suppressed.fetch_add(1, Ordering::Relaxed);
                return Err(VerifyError::UnknownKid { kid: truncate_kid(kid) });
            }
        }
        self.inner.counters.unknown_kid_refetches.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(kid = %truncate_kid(kid), url = %self.inner.url, "unknown kid: refetching JWKS");
        self.fetch_locked(&guard).await.map_err(|cause| self.unavailable(cause))
    }

    /// One fetch; the caller holds `fetch_lock` (the guard parameter proves it).
    async fn fetch_locked(&self, _guard: &MutexGuard<'_, ()>) -> Result<Arc<KeySet>, Arc<FetchError>> {
        let started = Instant::now();
        self.inner.state.write().unwrap_or_else(PoisonError::into_inner).last_attempt = Some(started);
        let result = self.inner.fetcher.fetch(&self.inner.uri).await;
        let mut state = self.inner.state.write().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(keys) => {
                self.inner.counters.refreshes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %self.inner.url, keys = keys.len(), "JWKS fetched");
                let id = KeySetId(self.inner.next_key_set.fetch_add(1, Ordering::Relaxed));
                let set = Arc::new(KeySet { id, keys, fetched_at: started });
                state.keys = Some(set.clone());
                state.last_error = None;
                Ok(set)
            }
            Err(e) => {
                self.inner.counters.refresh_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(e, FetchError::Tls(_)) {
                    self.inner.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(url = %self.inner.url, error = %Report(&e), "JWKS fetch failed");
                let e = Arc::new(e);
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_validates_url_and_config() {
        let ok = JwksVerifier::new("http://127.0.0.1:9/.well-known/jwks", VerifierConfig::default());
        assert!(ok.is_ok());
        let no_roots = VerifierConfig {
            tls: ClientTls { platform_roots: false, ca_file: None, tls13_only: false },
            ..VerifierConfig::default()
        };
        assert!(matches!(
            JwksVerifier::new("https://example.com/jwks", no_roots.clone()),
            Err(ConfigError::Tls(TlsError::NoRoots))
        ));
        // Plain http needs no roots.
        assert!(JwksVerifier::new("http://127.0.0.1:9/jwks", no_roots).is_ok());
        let missing_ca =
            VerifierConfig { tls: ClientTls::with_ca_file(Some("/nonexistent/ca.pem")), ..VerifierConfig::default() };
        assert!(matches!(
            JwksVerifier::new("https://example.com/jwks", missing_ca),
            Err(ConfigError::Tls(TlsError::Cert { .. }))
        ));
        assert!(matches!(
            JwksVerifier::new("ftp://example.com/jwks", VerifierConfig::default()),
            Err(ConfigError::UnsupportedUrl { .. })
        ));
        assert!(matches!(
            JwksVerifier::new("http://exa mple", VerifierConfig::default()),
            Err(ConfigError::InvalidUrl { .. })
        ));
        let zero = VerifierConfig { min_refetch_interval: Duration::ZERO, ..VerifierConfig::default() };
        assert!(matches!(
            JwksVerifier::new("http://127.0.0.1:9/", zero),
            Err(ConfigError::Zero("min_refetch_interval"))
        ));
    }

    #[tokio::test]
    async fn malformed_tokens_need_no_fetch() {
        let v = JwksVerifier::new("http://127.0.0.1:9/jwks", VerifierConfig::default()).expect("verifier");
        let expect = Expectations::new("i", "a");
        for token in ["", "abc", "a.b", "a.b.c", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            let r = v.verify::<serde_json::Value>(token, &expect).await;
            assert!(matches!(r, Err(VerifyError::Malformed { .. })), "{token:.20}: {r:?}");
        }
        // HS256 header (alg confusion attempt) is refused before any key lookup.
        let hs = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.e30.c2ln";
        assert!(matches!(v.verify::<serde_json::Value>(hs, &expect).await, Err(VerifyError::Malformed { .. })));
        assert_eq!(v.stats(), VerifierStats::default());
    }
}
