//! The login check that happens before any upstream connection exists: the Partner JWT must
//! verify against the Partner's JWKS (issuer, audience, expiry) and a configured claim must name
//! exactly the account the login claims. So a client can never open, replace or close another
//! account's session.

use jwks::{Expectations, JwksVerifier, VerifierConfig, VerifierStats};
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
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Result<Authenticator, jwks::ConfigError> {
        Ok(Authenticator {
            verifier: JwksVerifier::new(&config.jwks_url, config.verifier)?,
            expect: Expectations::new(config.issuer, config.audience),
            account_claim: config.account_claim,
        })
    }

    /// JWKS cache counters, for metrics.
    pub fn stats(&self) -> VerifierStats {
        self.verifier.stats()
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
        let claims: serde_json::Map<String, serde_json::Value> =
            self.verifier.verify(&login.token, &self.expect).await?;
        // The claim must spell the account canonically too: a claim of `1-0042@interop` binds no
        // account, rather than account 42.
        match claims.get(&self.account_claim).and_then(|v| v.as_str()).map(InteropAccount::parse) {
            Some(Ok(account)) if account == login.account => Ok(()),
            _ => Err(AuthError::NotBound { claim: self.account_claim.clone() }),
        }
    }
}
