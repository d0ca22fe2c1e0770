//! RS256 signing keys with rotation, published as a JWKS.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};

/// Keys published by default: the current one and two predecessors, so a token signed just before
/// two quick rotations still verifies until it expires.
pub const DEFAULT_MAX_PUBLISHED: usize = 3;
/// Upper bound on published keys; a JWKS much bigger than this only slows verifiers down.
pub const MAX_PUBLISHED_LIMIT: usize = 16;

/// A key could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// aws-lc-rs failed to generate an RSA-2048 key pair.
    #[error("RSA-2048 key generation failed")]
    Generate,
    /// The number of published keys is outside `1..=MAX_PUBLISHED_LIMIT`.
    #[error("max_published must be between 1 and {MAX_PUBLISHED_LIMIT}, got {0}")]
    InvalidMaxPublished(usize),
}

/// A token could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The claims did not serialize to a JSON value.
    #[error("claims could not be serialized to JSON")]
    Claims(#[source] serde_json::Error),
    /// aws-lc-rs refused to sign.
    #[error("RS256 signing with key {kid} failed")]
    Sign {
        /// The key id that was used.
        kid: String,
    },
}

/// One key: the aws-lc-rs pair (private part never leaves it) plus what is derived from the public part.
struct SigningKey {
    kid: String,
    pair: KeyPair,
    /// The public JWK, as published.
    jwk: Value,
    /// base64url of the JOSE header, which only depends on the kid: computed once.
    header_b64: String,
}

impl SigningKey {
    fn generate() -> Result<Self, KeyError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        // RFC 7638 thumbprint: stable, derived from the key itself, so the kid can never collide with
        // a different key's.
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()).as_ref());
        let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e});
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        Ok(Self { kid, pair, jwk, header_b64 })
    }
}

/// RSA-2048 RS256 signing keys: one current key that signs, plus up to `max_published - 1` previous
/// keys that stay in the JWKS so tokens they signed keep verifying.
///
/// Shared by reference (`&self` everywhere, interior lock), so a server can sign on many tasks while
/// an admin endpoint rotates. The lock is held only to clone an `Arc` or to swap the list; RSA work
/// happens outside it.
pub struct SigningKeys {
    keys: RwLock<VecDeque<Arc<SigningKey>>>,
    max_published: usize,
}

impl fmt::Debug for SigningKeys {
    // Kids only: the key material stays out of any debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys").field("kids", &self.kids()).field("max_published", &self.max_published).finish()
    }
}

impl SigningKeys {
    /// One fresh key, publishing up to [`DEFAULT_MAX_PUBLISHED`] keys across rotations.
    pub fn generate() -> Result<Self, KeyError> {
        Self::with_max_published(DEFAULT_MAX_PUBLISHED)
    }

    /// One fresh key, publishing up to `max_published` keys (1..=[`MAX_PUBLISHED_LIMIT`]; 1 means a
    /// rotation immediately invalidates every token of the previous key).
    pub fn with_max_published(max_published: usize) -> Result<Self, KeyError> {
        if !(1..=MAX_PUBLISHED_LIMIT).contains(&max_published) {
            return Err(KeyError::InvalidMaxPublished(max_published));
        }
        let first = Arc::new(SigningKey::generate()?);
        Ok(Self { keys: RwLock::new(VecDeque::from([first])), max_published })
    }

    /// How many keys stay published at most.
    pub fn max_published(&self) -> usize {
        self.max_published
    }

    fn current(&self) -> Option<Arc<SigningKey>> {
        // A poisoned lock only means another thread panicked mid-read; the list itself is always
        // consistent (it is only ever replaced by whole operations), so keep using it.
        self.keys.read().unwrap_or_else(PoisonError::into_inner).front().cloned()
    }

    /// The kid of the key that signs now.
    pub fn current_kid(&self) -> String {
        self.current().map(|k| k.kid.clone()).unwrap_or_default()
    }

    /// The published kids, current first.
    pub fn kids(&self) -> Vec<String> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).iter().map(|k| k.kid.clone()).collect()
    }

    /// Sign `claims` as an RS256 JWT with the current key (its kid in the header).
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, SignError> {
        let payload = serde_json::to_vec(claims).map_err(SignError::Claims)?;
        let key = self.current().ok_or_else(|| SignError::Sign { kid: String::new() })?;
        let mut token = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 350);
        token.push_str(&key.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let mut signature = vec![0u8; key.pair.public_modulus_len()];
        key.pair
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), token.as_bytes(), &mut signature)
            .map_err(|_| SignError::Sign { kid: key.kid.clone() })?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }

    /// Make a fresh key current; the previous ones stay published up to `max_published` in total
    /// (the oldest drops out). Returns the new kid.
    pub fn rotate(&self) -> Result<String, KeyError> {
        // Key generation takes tens of milliseconds: do it before taking the lock.
        let key = Arc::new(SigningKey::generate()?);
        let kid = key.kid.clone();
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.push_front(key);
        keys.truncate(self.max_published);
        Ok(kid)
    }

    /// The public keys in standard JWKS form:
    /// `{"keys":[{"kty":"RSA","kid","use":"sig","alg":"RS256","n","e"}]}`, current key first,
    /// `n`/`e` base64url without padding.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_shape_rotation_and_debug() {
        let keys = SigningKeys::with_max_published(2).expect("keygen");
        let first = keys.current_kid();
        let jwks = keys.jwks();
        let k = &jwks["keys"][0];
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["alg"], "RS256");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["kid"], first.as_str());
        assert_eq!(k["e"], "AQAB");
        let n = k["n"].as_str().unwrap_or_default();
        assert!(!n.contains('=') && !n.contains('+') && !n.contains('/'));
        assert_eq!(URL_SAFE_NO_PAD.decode(n).map(|v| v.len()).unwrap_or(0), 256);

        let second = keys.rotate().expect("rotate");
        let third = keys.rotate().expect("rotate");
        assert_eq!(keys.kids(), vec![third.clone(), second]);
        assert!(!keys.kids().contains(&first));
        assert_eq!(keys.current_kid(), third);

        let debug = format!("{keys:?}");
        assert!(debug.contains(&third) && !debug.contains("pair"));
        assert!(matches!(SigningKeys::with_max_published(0), Err(KeyError::InvalidMaxPublished(0))));
        assert!(SigningKeys::with_max_published(MAX_PUBLISHED_LIMIT + 1).is_err());
    }

    #[test]
    fn token_has_kid_header() {
        let keys = SigningKeys::generate().expect("keygen");
        let token = keys.sign(&json!({"sub": "alice"})).expect("sign");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.kid.as_deref(), Some(keys.current_kid().as_str()));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    }
}
