//! Verified tokens remembered for reconnect waves: a client that reconnects presents the token it
//! logged in with before, and the RSA verification is the largest per-login cost after the
//! Noise handshake. A hit stands for the whole verification (signature, issuer, audience, `nbf`)
//! but not for the checks that depend on the moment: the caller still checks the binding each
//! time, and a hit is refused once the token's `exp` has passed or the key set it verified with
//! has been refetched.
//!
//! Entries are keyed by a digest of the token, never the token, and hold only what the caller
//! keeps (e.g. the account the token is bound to): a few dozen bytes each, `capacity` of them at
//! most. Only tokens that verified are inserted, so junk tokens cost nothing here.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;

use crate::verifier::KeySetId;

/// A token as the cache knows it: the first 128 bits of its SHA-256 (a second token with the
/// same key costs 2^128 work). Computed once per login, for the lookup and the insert.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 16]);

impl TokenKey {
    pub fn of(token: &str) -> Self {
        let full = digest::digest(&digest::SHA256, token.as_bytes());
        let mut key = [0; 16];
        key.copy_from_slice(&full.as_ref()[..16]);
        TokenKey(key)
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

struct Entry<V> {
    /// The token's `exp`, Unix seconds: a hit needs the time before it (no leeway: a token in
    /// its leeway goes through full verification, which applies it).
    expires: u64,
    value: V,
}

struct Entries<V> {
    /// The key set every entry verified with; entries from an older set are gone.
    key_set: Option<KeySetId>,
    map: HashMap<TokenKey, Entry<V>>,
}

/// A bounded map from verified tokens to what their verification established (`V`). Shared by
/// every connection of a listener; one short lock per lookup or insert.
pub struct VerifiedTokens<V> {
    capacity: usize,
    entries: Mutex<Entries<V>>,
    hits: AtomicU64,
}

impl<V> fmt::Debug for VerifiedTokens<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedTokens").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

impl<V> VerifiedTokens<V> {
    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups answered from the cache since it was built.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<V>> {
        // Every update leaves the map consistent before anything that could panic.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<V: Clone> VerifiedTokens<V> {
    /// At most `capacity` tokens; 0 remembers none.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new(Entries { key_set: None, map: HashMap::new() }), hits: AtomicU64::new(0) }
    }

    /// Whether anything is ever remembered.
    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    /// What the verification of the token `key` names established, if it verified with
    /// `key_set` (the set the verifier would use now) and `now` (Unix seconds) is before its
    /// `exp`. A newer `key_set` than the entries' empties the cache.
    pub fn get(&self, key: TokenKey, key_set: KeySetId, now: u64) -> Option<V> {
        if !self.is_enabled() {
            return None;
        }
        let mut entries = self.lock();
        if entries.key_set != Some(key_set) {
            entries.adopt(key_set);
            return None;
        }
        let entry = entries.map.get(&key)?;
        if now >= entry.expires {
            entries.map.remove(&key);
            return None;
        }
        let value = entry.value.clone();
        drop(entries);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(value)
    }

    /// Remembers that the token `key` names verified with `key_set` and expires at `expires` (Unix seconds).
    /// Ignored if `expires` is not after `now` (a token accepted within the verifier's leeway)
    /// or if the cache already moved to a newer key set. When full, an arbitrary entry makes
    /// room.
    pub fn insert(&self, key: TokenKey, key_set: KeySetId, expires: u64, value: V, now: u64) {
        if !self.is_enabled() || now >= expires {
            return;
        }
        let mut entries = self.lock();
        if entries.key_set != Some(key_set) {
            if entries.key_set.is_some_and(|current| current > key_set) {
                return;
            }
            entries.adopt(key_set);
        }
        if entries.map.len() >= self.capacity && !entries.map.contains_key(&key) {
            let victim = entries.map.keys().next().copied();
            if let Some(victim) = victim {
                entries.map.remove(&victim);
            }
        }
        entries.map.insert(key, Entry { expires, value });
    }
}

impl<V> Entries<V> {
    /// Forgets every entry (and the memory they took) in favour of `key_set` if it is newer;
    /// entries from a newer set than `key_set` stay.
    fn adopt(&mut self, key_set: KeySetId) {
        if self.key_set.is_none_or(|current| current < key_set) {
            self.key_set = Some(key_set);
            self.map = HashMap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: KeySetId = KeySetId(7);
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_token_is_answered_until_its_exp() {
        let cache = VerifiedTokens::new(8);
        assert_eq!(cache.get(TokenKey::of("t1"), SET, NOW), None);
        cache.insert(TokenKey::of("t1"), SET, NOW + 10, "account-1", NOW);
        assert_eq!(cache.get(TokenKey::of("t1"), SET, NOW), Some("account-1"));
        assert_eq!(cache.get(TokenKey::of("t1"), SET, NOW + 9), Some("account-1"));
        assert_eq!(cache.get(TokenKey::of("t2"), SET, NOW), None);
        assert_eq!(cache.hits(), 2);
        // An already expired token is not remembered.
        cache.insert(TokenKey::of("t3"), SET, NOW, "account-3", NOW);
        assert_eq!(cache.get(TokenKey::of("t3"), SET, NOW - 1), None);
        // At `exp` the entry is refused and dropped.
        assert_eq!(cache.get(TokenKey::of("t1"), SET, NOW + 10), None);
        assert!(cache.is_empty());
        assert_eq!(cache.get(TokenKey::of("t1"), SET, NOW), None);
    }

    #[test]
    fn a_new_key_set_empties_the_cache_and_older_results_stay_out() {
        let cache = VerifiedTokens::new(8);
        cache.insert(TokenKey::of("t1"), SET, NOW + 60, 1, NOW);
        cache.insert(TokenKey::of("t2"), SET, NOW + 60, 2, NOW);
        assert_eq!(cache.len(), 2);
        let newer = KeySetId(8);
        assert_eq!(cache.get(TokenKey::of("t1"), newer, NOW), None);
        assert!(cache.is_empty());
        // A lookup that read the older set before the refetch neither hits nor refills.
        assert_eq!(cache.get(TokenKey::of("t1"), SET, NOW), None);
        // A verification made with the older set and finished late is not remembered.
        cache.insert(TokenKey::of("t1"), SET, NOW + 60, 1, NOW);
        assert!(cache.is_empty());
        cache.insert(TokenKey::of("t1"), newer, NOW + 60, 1, NOW);
        assert_eq!(cache.get(TokenKey::of("t1"), newer, NOW), Some(1));
        // An insert with a newer set than the entries' also empties it first.
        cache.insert(TokenKey::of("t3"), KeySetId(9), NOW + 60, 3, NOW);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(TokenKey::of("t1"), KeySetId(9), NOW), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = VerifiedTokens::new(1_000);
        for i in 0..100_000u32 {
            cache.insert(TokenKey::of(&format!("token-{i}")), SET, NOW + 60, i, NOW);
            assert!(cache.len() <= 1_000);
        }
        assert_eq!(cache.len(), 1_000);
        // The most recent insert is always kept.
        assert_eq!(cache.get(TokenKey::of("token-99999"), SET, NOW), Some(99_999));
        // Re-inserting a present token does not evict another.
        cache.insert(TokenKey::of("token-99999"), SET, NOW + 120, 99_999, NOW);
        assert_eq!(cache.len(), 1_000);
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = VerifiedTokens::new(0);
        assert!(!cache.is_enabled());
        cache.insert(TokenKey::of("t1"), SET, NOW + 60, (), NOW);
        assert_eq!(cache.get(TokenKey::of("t1"), SET, NOW), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn debug_shows_no_token_or_digest() {
        let cache = VerifiedTokens::new(4);
        cache.insert(TokenKey::of("secret-token"), SET, NOW + 60, (), NOW);
        let shown = format!("{cache:?}");
        assert_eq!(shown, "VerifiedTokens { capacity: 4, len: 1 }");
        assert_eq!(format!("{:?}", TokenKey::of("secret-token")), "TokenKey(..)");
    }
}
