//! The login check that happens before any upstream connection exists: the Partner JWT must
//! verify against the Partner's JWKS (issuer, audience, expiry) and a configured claim must name
//! exactly the account the login claims. So a client can never open, replace or close another
//! account's session.
//!
//! Tokens that verified and named their login's account are remembered ([`VerifiedTokens`],
//! `token_cache_entries` of them) so that a reconnect wave, where each client presents the token
//! it logged in with, skips the RSA verification: a remembered token is still refused once its
//! `exp` passes, once the JWKS is refetched (a revoked key goes with that fetch) or once no key
//! set is fresh enough, and it still binds only the account it named.

use jwks::{Expectations, JwksVerifier, TokenKey, VerifiedTokens, VerifierConfig, VerifierStats, unix_now};
use wire::InteropAccount;

use wire::login::Login;

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The Partner's JWKS URL (`.../.well-known/oauth/openid/jwks`).
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// The claim that binds a token to an interop account JID (default `wa_account`).
    pub account_claim: String,
    pub verifier: VerifierConfig,
    /// Verified tokens remembered for reconnects (about 40 bytes each); 0 remembers none.
    pub token_cache_entries: usize,
}

/// Why a login's token was refused. Never contains the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("token")]
    Token(#[from] jwks::VerifyError),
    #[error("token's {claim:?} claim does not name the login's account")]
    NotBound { claim: String },
}

/// Checks logins against one Partner's keys.
pub struct Authenticator {
    verifier: JwksVerifier,
    expect: Expectations,
    account_claim: String,
    /// Each remembered token's account.
    verified: VerifiedTokens<InteropAccount>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Result<Authenticator, jwks::ConfigError> {
        Ok(Authenticator {
            verifier: JwksVerifier::new(&config.jwks_url, config.verifier)?,
            expect: Expectations::new(config.issuer, config.audience),
            account_claim: config.account_claim,
            verified: VerifiedTokens::new(config.token_cache_entries),
        })
    }

    /// JWKS cache counters, for metrics.
    pub fn stats(&self) -> VerifierStats {
        self.verifier.stats()
    }

    /// Logins whose token was answered by the cache of verified tokens.
    pub fn token_cache_hits(&self) -> u64 {
        self.verified.hits()
    }

    /// Tokens the cache remembers now.
    pub fn token_cache_len(&self) -> usize {
        self.verified.len()
    }

    fn bound(&self, account: InteropAccount, login: &Login) -> Result<(), AuthError> {
        if account == login.account { Ok(()) } else { Err(AuthError::NotBound { claim: self.account_claim.clone() }) }
    }
}

/// The token step of admission ([`crate::admission`]): [`Authenticator`] in the proxy, a fake in
/// tests.
pub trait TokenCheck: Send + Sync {
    /// Verifies the login's token and its binding to the login's account.
    fn check(&self, login: &Login) -> impl Future<Output = Result<(), AuthError>> + Send;
}

impl TokenCheck for Authenticator {
    async fn check(&self, login: &Login) -> Result<(), AuthError> {
        let key = self.verified.is_enabled().then(|| TokenKey::of(&login.token));
        if let Some(key) = key {
            // The set a verification would use now: refreshed when due, refused when too stale.
            let key_set = self.verifier.current_key_set().await?;
            if let Some(account) = self.verified.get(key, key_set, unix_now()) {
                return self.bound(account, login);
            }
        }
        let (claims, key_set): (serde_json::Map<String, serde_json::Value>, _) =
            self.verifier.verify_in_key_set(&login.token, &self.expect).await?;
        // The claim must spell the account canonically too: a claim of `1-0042@interop` binds no
        // account, rather than account 42.
        let Some(Ok(account)) = claims.get(&self.account_claim).and_then(|v| v.as_str()).map(InteropAccount::parse)
        else {
            return Err(AuthError::NotBound { claim: self.account_claim.clone() });
        };
        self.bound(account, login)?;
        // `exp` is a required claim, so a verified token has one.
        if let (Some(key), Some(expires)) = (key, claims.get("exp").and_then(serde_json::Value::as_u64)) {
            self.verified.insert(key, key_set, expires, account, unix_now());
        }
        Ok(())
    }
}
