//! Partner token verification, behind a trait so the JWKS-backed verifier and test doubles share
//! one seam.

use std::future::Future;
use std::pin::Pin;

use crate::config::IntegratorConfig;
use error_report::Report;

/// What a valid Partner JWT says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`: the Partner's user identifier.
    pub subject: String,
}

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenRejected(pub String);

/// Checks a Partner user's JWT against that integrator's published keys.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        integrator: &'a IntegratorConfig,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<VerifiedToken, TokenRejected>> + Send + 'a>>;

    /// Partner JWKS fetches that failed on TLS so far (for `/admin/stats`).
    fn jwks_tls_failures(&self) -> u64 {
        0
    }
}

/// Verifies Partner tokens against each integrator's JWKS at
/// `{base_url}/.well-known/oauth/openid/jwks`, one cached verifier per integrator.
pub struct JwksTokenVerifier {
    config: jwks::VerifierConfig,
    verifiers: std::sync::Mutex<std::collections::HashMap<u16, std::sync::Arc<jwks::JwksVerifier>>>,
}

impl JwksTokenVerifier {
    pub fn new(config: jwks::VerifierConfig) -> Self {
        JwksTokenVerifier { config, verifiers: Default::default() }
    }

    fn verifier_for(&self, integrator: &IntegratorConfig) -> Result<std::sync::Arc<jwks::JwksVerifier>, TokenRejected> {
        let mut map = crate::sim::lock(&self.verifiers);
        if let Some(v) = map.get(&integrator.id) {
            return Ok(std::sync::Arc::clone(v));
        }
        let url = format!("{}/.well-known/oauth/openid/jwks", integrator.base_url.trim_end_matches('/'));
        let v = std::sync::Arc::new(
            jwks::JwksVerifier::new(&url, self.config.clone())
                .map_err(|e| TokenRejected(format!("JWKS setup: {}", Report(&e))))?,
        );
        map.insert(integrator.id, std::sync::Arc::clone(&v));
        Ok(v)
    }
}

impl TokenVerifier for JwksTokenVerifier {
    fn jwks_tls_failures(&self) -> u64 {
        crate::sim::lock(&self.verifiers).values().map(|v| v.stats().tls_failures).sum()
    }

    fn verify<'a>(
        &'a self,
        integrator: &'a IntegratorConfig,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<VerifiedToken, TokenRejected>> + Send + 'a>> {
        Box::pin(async move {
            let verifier = self.verifier_for(integrator)?;
            let expect = jwks::Expectations::new(integrator.issuer.clone(), integrator.audience.clone());
            let claims: jwks::PartnerClaims =
                verifier.verify(token, &expect).await.map_err(|e| TokenRejected(Report(&e).to_string()))?;
            Ok(VerifiedToken { subject: claims.sub })
        })
    }
}
