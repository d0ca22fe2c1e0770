//! JWT/JWKS machinery shared by the partner server, the chatd simulator and the proxy.
//!
//! - [`SigningKeys`]: RSA-2048 RS256 signing keys with rotation, published as a standard JWKS.
//! - [`JwksVerifier`]: verifies RS256 JWTs against a remote JWKS that it fetches, caches, refreshes
//!   and refetches on unknown key ids, rate limited so junk tokens cannot make it hammer the JWKS
//!   server.
//! - [`VerifiedTokens`]: a bounded cache of tokens that verified, keyed by a digest and tied to the
//!   key set they verified with, for reconnect waves.
//! - [`PartnerClaims`] / [`PushClaims`]: the claim sets both sides of the interop flow agree on.
//! - [`JwksServer`]: a minimal HTTP(S) endpoint serving one [`SigningKeys`]' JWKS (tests, small tools).
//!
//! Crypto is aws-lc-rs only: signing goes straight to aws-lc-rs (the private key never leaves its
//! `KeyPair`), verification goes through `jsonwebtoken` built with its `aws_lc_rs` provider.
//!
//! Secrets stay out of logs: no type here prints a private key or a full token in `Debug`, `Display`
//! or tracing output.

mod claims;
mod fetch;
mod serve;
mod signing;
mod token_cache;
mod verifier;

pub use claims::{PartnerClaims, PushClaims, unix_now};
pub use fetch::FetchError;
pub use serve::{JwksServer, RunningJwksServer};
pub use signing::{DEFAULT_MAX_PUBLISHED, KeyError, MAX_PUBLISHED_LIMIT, SignError, SigningKeys};
pub use token_cache::{TokenKey, VerifiedTokens};
pub use verifier::{
    ConfigError, Expectations, JwksVerifier, KeySetId, MAX_TOKEN_LEN, VerifierConfig, VerifierStats, VerifyError,
};
