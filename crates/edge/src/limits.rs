//! Admission limits, all reloadable at runtime (SIGHUP): counted slots for sessions and for
//! upstream handshakes in flight, and a per-source-IP token bucket for new connections.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

/// A counted limit whose size can change while slots are held (unlike a semaphore). Lowering it
/// sheds nothing already admitted; new acquisitions fail until usage is below the new limit.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<LimiterInner>,
}

struct LimiterInner {
    limit: AtomicUsize,
    used: AtomicUsize,
    gauge: Option<IntGauge>,
}

/// One held slot; dropping it gives the slot back.
pub struct LimitGuard {
    inner: Arc<LimiterInner>,
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.inner.used.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.inner.gauge {
            g.dec();
        }
    }
}

impl Limiter {
    /// `gauge`, when given, follows the number of held slots.
    pub fn new(limit: usize, gauge: Option<IntGauge>) -> Self {
        Limiter { inner: Arc::new(LimiterInner { limit: AtomicUsize::new(limit), used: AtomicUsize::new(0), gauge }) }
    }

    pub fn try_acquire(&self) -> Option<LimitGuard> {
        let limit = self.inner.limit.load(Ordering::Acquire);
        self.inner.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u < limit).then_some(u + 1)).ok()?;
        if let Some(g) = &self.inner.gauge {
            g.inc();
        }
        Some(LimitGuard { inner: Arc::clone(&self.inner) })
    }

    pub fn set_limit(&self, limit: usize) {
        self.inner.limit.store(limit, Ordering::Release);
    }

    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Acquire)
    }

    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }
}

/// Most source addresses tracked at once (about 40 bytes each). When the map is full, buckets
/// that have refilled completely (idle sources) are dropped; if it is still full, new sources are
/// admitted untracked rather than refused, so a flood of distinct sources cannot lock everyone out.
pub const RATE_MAP_MAX: usize = 100_000;

/// New connections per second per source IP (token bucket, burst twice the rate). 0 disables it.
pub struct RateLimiter {
    per_sec: AtomicU32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> Self {
        RateLimiter { per_sec: AtomicU32::new(per_sec), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn set_rate(&self, per_sec: u32) {
        self.per_sec.store(per_sec, Ordering::Release);
    }

    pub fn rate(&self) -> u32 {
        self.per_sec.load(Ordering::Acquire)
    }

    /// Takes a token for `ip`, or says how long until one is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.rate());
        if rate == 0.0 {
            return Ok(());
        }
        let burst = 2.0 * rate;
        let refill = |b: &Bucket| (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate).min(burst);
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let ip = ip.to_canonical();
        if !map.contains_key(&ip) && map.len() >= RATE_MAP_MAX {
            map.retain(|_, b| refill(b) < burst);
            if map.len() >= RATE_MAP_MAX {
                return Ok(());
            }
        }
        let bucket = map.entry(ip).or_insert(Bucket { tokens: burst, last: now });
        bucket.tokens = refill(bucket);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Source addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A uniformly spread value in `0..=max` (jitter for retry hints; not cryptographic).
pub fn jitter(max: u32) -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() % (u64::from(max) + 1)) as u32
}

/// A retry hint of `base..=2*base` seconds, so shed clients do not come back in one wave.
pub fn retry_after(base: u32) -> u32 {
    base + jitter(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_and_resizes() {
        let l = Limiter::new(2, None);
        let (a, b) = (l.try_acquire().unwrap(), l.try_acquire().unwrap());
        assert!(l.try_acquire().is_none());
        l.set_limit(3);
        let c = l.try_acquire().unwrap();
        l.set_limit(1);
        drop((a, b));
        assert!(l.try_acquire().is_none(), "still at the lowered limit");
        drop(c);
        assert!(l.try_acquire().is_some());
        assert_eq!(l.in_use(), 0);
    }

    #[test]
    fn token_bucket_allows_a_burst_of_twice_the_rate_then_refills() {
        let r = RateLimiter::new(10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..20 {
            r.check_at(ip, t0).unwrap();
        }
        let wait = r.check_at(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(r.check_at("192.0.2.2".parse().unwrap(), t0).is_ok(), "other sources unaffected");
        r.check_at(ip, t0 + Duration::from_millis(110)).unwrap();
        r.set_rate(0);
        assert!(r.check_at(ip, t0).is_ok());
    }

    #[test]
    fn retry_hints_are_spread() {
        let hints: std::collections::HashSet<u32> = (0..200).map(|_| retry_after(5)).collect();
        assert!(hints.iter().all(|h| (5..=10).contains(h)) && hints.len() > 3, "{hints:?}");
    }
}
