//! A cache of verified server certificate chains.
//!
//! chatd sends the same chain to every connection, and checking it costs two XEdDSA
//! verifications (about 100 µs, as much as the Noise handshake itself; `docs/handshake.md` §7).
//! The cache remembers chains that passed [`CertVerifier::verify`], keyed by the exact chain bytes
//! and the trusted root. A hit skips only the signature checks, which depend on nothing but those
//! bytes and that root: the leaf key is still compared with the static key the server proved in
//! this handshake, and both validity windows are still checked against the current time. Failed
//! chains are never cached.
//!
//! The cache also tells a client which server key it may resume with (Noise IK, see
//! [`crate::connect`]): the leaf key of the chain most recently verified for a root, while both of
//! its certificates are valid (WR uses IK only then). One failed IK attempt suspends resumption
//! for every connection sharing the cache until a full handshake verifies a chain again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cert::{CertError, CertInfo, CertRole, CertVerifier, KeyHex, VerifiedChain};

/// Most chains remembered. chatd rotates its chain rarely; a handful covers a rotation in flight.
pub const CERT_CACHE_CAPACITY: usize = 8;

struct Entry {
    root: [u8; 32],
    chain: Box<[u8]>,
    verified: VerifiedChain,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<Vec<Entry>>,
    tick: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    resumption_suspended: AtomicBool,
}

/// Shared (clones share entries), bounded, thread-safe.
#[derive(Clone, Default)]
pub struct CertCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hits, misses) = self.stats();
        f.debug_struct("CertCache").field("len", &self.len()).field("hits", &hits).field("misses", &misses).finish()
    }
}

/// Whether a verification was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

impl CertCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `chain` (the decrypted ServerHello payload) for `server_static` at `now_unix_secs`,
    /// with the same result [`CertVerifier::verify`] would give.
    pub fn verify(
        &self,
        verifier: &CertVerifier,
        chain: &[u8],
        server_static: &[u8; 32],
        now_unix_secs: u64,
    ) -> Result<(VerifiedChain, CacheOutcome), CertError> {
        let tick = self.inner.tick.fetch_add(1, Ordering::Relaxed);
        let cached = {
            let mut entries = self.lock();
            entries.iter_mut().find(|e| e.root == verifier.root && *e.chain == *chain).map(|e| {
                e.last_used = tick;
                e.verified
            })
        };
        if let Some(verified) = cached {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
            let verified = recheck(verified, server_static, now_unix_secs)?;
            self.inner.resumption_suspended.store(false, Ordering::Relaxed);
            return Ok((verified, CacheOutcome::Hit));
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        // Verified outside the lock: concurrent misses on a cold cache may both verify.
        let verified = verifier.verify(chain, server_static, now_unix_secs)?;
        let mut entries = self.lock();
        if !entries.iter().any(|e| e.root == verifier.root && *e.chain == *chain) {
            if entries.len() >= CERT_CACHE_CAPACITY
                && let Some(oldest) = entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i)
            {
                entries.swap_remove(oldest);
            }
            entries.push(Entry { root: verifier.root, chain: chain.into(), verified, last_used: tick });
        }
        self.inner.resumption_suspended.store(false, Ordering::Relaxed);
        Ok((verified, CacheOutcome::Miss))
    }

    /// The chain a client may resume with (IK to `chain.leaf.key`): the one most recently
    /// verified or used for `root`, if both its certificates are valid at `now_unix_secs` and
    /// resumption is not suspended. `None` means a full (XX) handshake.
    pub fn resumption(&self, root: &[u8; 32], now_unix_secs: u64) -> Option<VerifiedChain> {
        if self.inner.resumption_suspended.load(Ordering::Relaxed) {
            return None;
        }
        let entries = self.lock();
        let newest = entries.iter().filter(|e| e.root == *root).max_by_key(|e| e.last_used)?;
        let v = newest.verified;
        (window(&v.intermediate, CertRole::Intermediate, now_unix_secs).is_ok()
            && window(&v.leaf, CertRole::Leaf, now_unix_secs).is_ok())
        .then_some(v)
    }

    /// Stops [`resumption`](Self::resumption) offering a key until a chain is verified again (by
    /// the next full handshake). [`crate::connect::ClientConnect`] calls it when an IK attempt
    /// fails on the server's answer; a caller may call it to force XX for other reasons.
    pub fn suspend_resumption(&self) {
        self.inner.resumption_suspended.store(true, Ordering::Relaxed);
    }

    /// Chains held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no chain is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.inner.hits.load(Ordering::Relaxed), self.inner.misses.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The checks of a cached chain that depend on this handshake: checks 6 and 7.
fn recheck(v: VerifiedChain, server_static: &[u8; 32], now: u64) -> Result<VerifiedChain, CertError> {
    if &v.leaf.key != server_static {
        return Err(CertError::LeafKeyMismatch { leaf_key: KeyHex(v.leaf.key), server_static: KeyHex(*server_static) });
    }
    window(&v.intermediate, CertRole::Intermediate, now)?;
    window(&v.leaf, CertRole::Leaf, now)?;
    Ok(v)
}

fn window(c: &CertInfo, cert: CertRole, now: u64) -> Result<(), CertError> {
    if now < c.not_before {
        return Err(CertError::NotYetValid { cert, not_before: c.not_before, now });
    }
    if now > c.not_after {
        return Err(CertError::Expired { cert, not_after: c.not_after, now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{CertIssuer, ChainParams};

    fn issue(issuer: &CertIssuer, key: &[u8; 32], serial: u32) -> Vec<u8> {
        issuer.issue(key, &ChainParams::new(serial, serial + 1, 1_000, 2_000)).unwrap()
    }

    #[test]
    fn hits_recheck_the_key_and_the_time() {
        let issuer = CertIssuer::generate().unwrap();
        let verifier = CertVerifier::new(issuer.public_key());
        let (server, other) = ([7u8; 32], [8u8; 32]);
        let chain = issue(&issuer, &server, 1);
        let cache = CertCache::new();
        let (v, o) = cache.verify(&verifier, &chain, &server, 1_500).unwrap();
        assert_eq!((o, v.leaf.key), (CacheOutcome::Miss, server));
        let (_, o) = cache.verify(&verifier, &chain, &server, 1_600).unwrap();
        assert_eq!(o, CacheOutcome::Hit);
        assert!(matches!(cache.verify(&verifier, &chain, &other, 1_600), Err(CertError::LeafKeyMismatch { .. })));
        assert!(matches!(cache.verify(&verifier, &chain, &server, 2_001), Err(CertError::Expired { .. })));
        assert!(matches!(cache.verify(&verifier, &chain, &server, 999), Err(CertError::NotYetValid { .. })));
        assert_eq!(cache.stats(), (4, 1));
    }

    #[test]
    fn other_roots_and_bad_chains_are_not_served_from_the_cache() {
        let issuer = CertIssuer::generate().unwrap();
        let server = [7u8; 32];
        let chain = issue(&issuer, &server, 1);
        let cache = CertCache::new();
        cache.verify(&CertVerifier::new(issuer.public_key()), &chain, &server, 1_500).unwrap();
        let stranger = CertVerifier::new(CertIssuer::generate().unwrap().public_key());
        assert!(matches!(
            cache.verify(&stranger, &chain, &server, 1_500),
            Err(CertError::BadIntermediateSignature { .. })
        ));
        let mut tampered = chain.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(cache.verify(&CertVerifier::new(issuer.public_key()), &tampered, &server, 1_500).is_err());
        assert_eq!(cache.len(), 1, "failures are not cached");
    }

    #[test]
    fn resumption_offers_the_newest_valid_chain_until_suspended() {
        let issuer = CertIssuer::generate().unwrap();
        let verifier = CertVerifier::new(issuer.public_key());
        let cache = CertCache::new();
        assert!(cache.resumption(&verifier.root, 1_500).is_none(), "nothing verified yet");
        let (old, new) = ([7u8; 32], [8u8; 32]);
        cache.verify(&verifier, &issue(&issuer, &old, 1), &old, 1_500).unwrap();
        cache.verify(&verifier, &issue(&issuer, &new, 3), &new, 1_500).unwrap();
        assert_eq!(cache.resumption(&verifier.root, 1_500).map(|v| v.leaf.key), Some(new));
        assert!(cache.resumption(&[9; 32], 1_500).is_none(), "another root");
        assert!(cache.resumption(&verifier.root, 2_001).is_none(), "expired");
        assert!(cache.resumption(&verifier.root, 999).is_none(), "not yet valid");
        cache.suspend_resumption();
        assert!(cache.resumption(&verifier.root, 1_500).is_none(), "suspended");
        assert!(cache.verify(&verifier, &issue(&issuer, &old, 1), &new, 1_500).is_err());
        assert!(cache.resumption(&verifier.root, 1_500).is_none(), "a failed check does not lift it");
        cache.verify(&verifier, &issue(&issuer, &old, 1), &old, 1_600).unwrap();
        assert_eq!(cache.resumption(&verifier.root, 1_600).map(|v| v.leaf.key), Some(old), "the chain used last");
    }

    #[test]
    fn capacity_is_bounded() {
        let issuer = CertIssuer::generate().unwrap();
        let verifier = CertVerifier::new(issuer.public_key());
        let cache = CertCache::new();
        for i in 0..(CERT_CACHE_CAPACITY as u32 + 4) {
            let key = [i as u8 + 1; 32];
            cache.verify(&verifier, &issue(&issuer, &key, 10 + 2 * i), &key, 1_500).unwrap();
        }
        assert_eq!(cache.len(), CERT_CACHE_CAPACITY);
    }
}
