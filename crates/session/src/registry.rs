//! The registry: invariant 1, at no instant two upstream connections for one account.
//!
//! Each account with a session has a slot: an async mutex (the right to hold an upstream) and
//! the newest claimant (a generation number and its [`CancelHandle`]). [`Registry::claim`]:
//!
//! 1. makes itself the newest claimant, atomically (under the map's shard lock);
//! 2. cancels the previous claimant, outside the lock: a running session gets
//!    [`CancelReason::Replaced`] with chatd's own `<stream:error><conflict type="replaced"/>` as
//!    its farewell; a claim still waiting is told it was superseded;
//! 3. waits for the slot's mutex, which the old session holds until its upstream socket is
//!    closed and dropped ([`CancelHandle::mark_upstream_released`], called by the relay right
//!    after the drop, or by dropping the [`Claim`]);
//! 4. returns a [`Claim`] if it is still the newest claimant, else [`SessionError::Superseded`].
//!
//! Concurrent claims for one account therefore serialize and the last one wins. The mutex is
//! fair, and superseded waiters leave as soon as they are cancelled, so a burst of logins for
//! one account costs one upstream at a time and ends with the newest.
//!
//! The caller (the edge) claims only after it verified the client's token for that account, so
//! no client can cancel another account's session.
//!
//! A slot is removed when its newest claimant leaves and nobody holds its mutex; whoever holds
//! the mutex when the last claimant leaves removes it on release.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::cancel::{CancelHandle, CancelReason};
use crate::error::SessionError;
use crate::metrics::SessionMetrics;
use wire::refusal::Refusal;

struct Current {
    generation: u64,
    handle: CancelHandle,
    /// `false` once this claimant left (claim dropped, superseded or abandoned).
    alive: bool,
}

struct Slot {
    /// Held by the session that may hold an upstream for this account.
    upstream: Arc<tokio::sync::Mutex<()>>,
    current: Mutex<Current>,
}

impl Slot {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    slots: DashMap<String, Arc<Slot>>,
    next_generation: AtomicU64,
    draining: AtomicBool,
    /// Parent of every session's handle: a hard stop.
    shutdown: CancellationToken,
    active: AtomicUsize,
    idle: Notify,
    metrics: Option<SessionMetrics>,
}

impl Inner {
    /// A claimant is leaving: mark it dead if it is the newest, and remove the slot when no live
    /// claimant needs it and nobody else holds its mutex.
    fn leave(&self, account: &str, generation: u64, holds_mutex: bool) {
        self.slots.remove_if(account, |_, slot| {
            let mut cur = slot.current();
            if cur.generation == generation {
                cur.alive = false;
            }
            !cur.alive && (holds_mutex || slot.upstream.try_lock().is_ok())
        });
    }
}

/// The per-account session registry. Clones share it.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("sessions", &self.len())
            .field("accounts", &self.accounts())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Registry {
    /// An empty registry; with `metrics`, it keeps `waproxy_sessions_active` and
    /// `waproxy_session_replacements_total`.
    pub fn new(metrics: Option<SessionMetrics>) -> Self {
        Registry {
            inner: Arc::new(Inner {
                slots: DashMap::new(),
                next_generation: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
                metrics,
            }),
        }
    }

    /// Claims `account` (interop JID text) for a new session; see the module docs. Call only
    /// after the client proved it owns the account.
    ///
    /// Errors: [`SessionError::Superseded`] (a newer claim came while this one waited),
    /// [`SessionError::Draining`] (draining, or drained while waiting),
    /// [`SessionError::Cancelled`] (hard stop while waiting).
    pub async fn claim(&self, account: &str) -> Result<Claim, SessionError> {
        if self.is_draining() {
            return Err(SessionError::Draining);
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let handle = CancelHandle::child_of(&self.inner.shutdown);
        let (slot, previous) = {
            let entry = self.inner.slots.entry(account.to_owned()).or_insert_with(|| {
                Arc::new(Slot {
                    upstream: Arc::new(tokio::sync::Mutex::new(())),
                    current: Mutex::new(Current { generation, handle: handle.clone(), alive: true }),
                })
            });
            let slot = Arc::clone(entry.value());
            let mut cur = slot.current();
            let previous = if cur.generation == generation {
                None
            } else {
                let prev = std::mem::replace(&mut *cur, Current { generation, handle: handle.clone(), alive: true });
                prev.alive.then_some(prev.handle)
            };
            drop(cur);
            (slot, previous)
        };
        // From here until the claim exists, leaving (error or the future dropped) must clean up.
        let mut pending = Pending { inner: &self.inner, account, generation, armed: true };
        if let Some(prev) = previous
            && prev.cancel(CancelReason::Replaced, Some(Refusal::Replaced.encode()))
        {
            debug!(account, generation, "replacing the previous session");
            if let Some(m) = &self.inner.metrics {
                m.replacements.inc();
            }
        }
        let guard = tokio::select! {
            biased;
            _ = handle.cancelled() => None,
            guard = Arc::clone(&slot.upstream).lock_owned() => Some(guard),
        };
        let guard = match guard {
            Some(g) if !handle.is_cancelled() => g,
            held => {
                // Cancelled while waiting (or just as the mutex came): give the slot on.
                pending.armed = false;
                self.inner.leave(account, generation, held.is_some());
                drop(held);
                return Err(match handle.reason() {
                    Some(CancelReason::Replaced) => SessionError::Superseded,
                    Some(CancelReason::Draining) => SessionError::Draining,
                    Some(r) => SessionError::Cancelled(r),
                    None => SessionError::Superseded,
                });
            }
        };
        pending.armed = false;
        handle.hold_slot(guard);
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = &self.inner.metrics {
            m.sessions_active.inc();
        }
        Ok(Claim { inner: Arc::clone(&self.inner), account: account.to_owned(), generation, handle })
    }

    /// Live claims (sessions).
    pub fn len(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Whether no claim is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accounts with a slot (live claims plus claims still waiting).
    pub fn accounts(&self) -> usize {
        self.inner.slots.len()
    }

    /// Whether new claims are refused.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Refuses new claims from now on ([`SessionError::Draining`]).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Cancels every session with `reason` and `farewell`, spreading the cancels evenly over
    /// `window` so that clients do not all reconnect at once (HAProxy's `close-spread-time`).
    /// With [`CancelReason::Draining`] it first refuses new claims. Returns the number of sessions
    /// cancelled; their relays then close on their own (see [`wait_idle`](Self::wait_idle)).
    pub async fn cancel_all_spread(&self, window: Duration, reason: CancelReason, farewell: Option<Bytes>) -> usize {
        if reason != CancelReason::Shutdown {
            self.start_draining();
        }
        let handles: Vec<CancelHandle> =
            self.inner.slots.iter().map(|slot| slot.value().current().handle.clone()).collect();
        let n = handles.len();
        let start = tokio::time::Instant::now();
        for (i, h) in handles.iter().enumerate() {
            if i > 0 {
                // i * window / n, without overflowing for large n.
                let at = window.mul_f64(i as f64 / n as f64);
                if let Some(deadline) = start.checked_add(at) {
                    tokio::time::sleep_until(deadline).await;
                }
            }
            h.cancel(reason, farewell.clone());
        }
        n
    }

    /// Drains: refuses new claims, cancels every session over `window` with the
    /// [`Refusal::Draining`](wire::refusal::Refusal::Draining) farewell, then waits until all claims are gone.
    pub async fn drain(&self, window: Duration) {
        self.cancel_all_spread(window, CancelReason::Draining, Some(Refusal::Draining.encode())).await;
        self.wait_idle().await;
    }

    /// Cancels every session at once with [`CancelReason::Shutdown`] and no farewell.
    pub fn shutdown_now(&self) {
        self.start_draining();
        self.inner.shutdown.cancel();
    }

    /// Completes when no claim is live.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Cleans up a claim that never completed (error, or the future dropped while waiting).
struct Pending<'a> {
    inner: &'a Inner,
    account: &'a str,
    generation: u64,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.leave(self.account, self.generation, false);
        }
    }
}

/// The right to hold one upstream connection for an account; held for the session's life.
///
/// Drop it only after the upstream socket is closed (the relay and [`crate::run_session`] do
/// this): dropping releases the slot to the next claimant. A claim carries at most one upstream;
/// once [`CancelHandle::mark_upstream_released`] was called it must not dial again.
pub struct Claim {
    inner: Arc<Inner>,
    account: String,
    generation: u64,
    handle: CancelHandle,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").field("account", &self.account).field("generation", &self.generation).finish()
    }
}

impl Claim {
    /// The account claimed.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// A process-unique, increasing id of this claim (a per-session id for logs).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The session's control handle: the relay watches it; the registry cancels it.
    pub fn cancel_handle(&self) -> &CancelHandle {
        &self.handle
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let held = self.handle.take_slot();
        self.inner.leave(&self.account, self.generation, held.is_some());
        drop(held);
        self.handle.mark_upstream_released();
        if let Some(m) = &self.inner.metrics {
            m.sessions_active.dec();
        }
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_new_claim_cancels_and_waits_for_the_old_upstream() {
        let metrics = SessionMetrics::new().unwrap();
        let reg = Registry::new(Some(metrics.clone()));
        let old = reg.claim("a@interop").await.unwrap();
        assert_eq!((reg.len(), reg.accounts(), metrics.sessions_active.get()), (1, 1, 1));
        let other = reg.claim("b@interop").await.unwrap();

        let reg2 = reg.clone();
        let new = tokio::spawn(async move { reg2.claim("a@interop").await });
        old.cancel_handle().cancelled().await;
        assert_eq!(old.cancel_handle().reason(), Some(CancelReason::Replaced));
        assert_eq!(old.cancel_handle().farewell(), Some(Refusal::Replaced.encode()));
        assert!(!other.cancel_handle().is_cancelled(), "other accounts untouched");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!new.is_finished(), "the new claim waits while the old upstream is open");
        old.cancel_handle().mark_upstream_released();
        let new = new.await.unwrap().unwrap();
        assert!(new.generation() > old.generation());
        drop(old);
        assert_eq!((reg.len(), reg.accounts()), (2, 2));
        drop(new);
        drop(other);
        assert_eq!((reg.len(), reg.accounts(), metrics.sessions_active.get()), (0, 0, 0));
        assert_eq!(metrics.replacements.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_claims_serializes_and_the_last_one_wins() {
        let reg = Registry::default();
        let first = reg.claim("x@interop").await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..5 {
            let reg = reg.clone();
            waiting.push(tokio::spawn(async move { reg.claim("x@interop").await }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        let mut won = Vec::new();
        for (i, w) in waiting.into_iter().enumerate() {
            match w.await.unwrap() {
                Ok(c) => won.push((i, c)),
                Err(e) => assert!(matches!(e, SessionError::Superseded), "{e}"),
            }
        }
        assert_eq!(won.len(), 1);
        assert_eq!(won[0].0, 4, "the newest claim wins");
        drop(won);
        assert_eq!((reg.len(), reg.accounts()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_waiters_do_not_leak_or_break_the_invariant() {
        let reg = Registry::default();
        let holder = reg.claim("y@interop").await.unwrap();
        let waiter = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.claim("y@interop").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiter.abort();
        let _ = waiter.await;
        // The holder still has its upstream: the slot must stay so the next claim waits for it.
        assert_eq!(reg.accounts(), 1);
        let reg2 = reg.clone();
        let next = tokio::spawn(async move { reg2.claim("y@interop").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished());
        drop(holder);
        let next = next.await.unwrap().unwrap();
        drop(next);
        assert_eq!((reg.len(), reg.accounts()), (0, 0));

        // An abandoned waiter whose holder already left removes the slot itself.
        let holder = reg.claim("z@interop").await.unwrap();
        let waiter = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.claim("z@interop").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(holder);
        assert_eq!((reg.len(), reg.accounts()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_spreads_cancels_and_refuses_new_claims() {
        let reg = Registry::default();
        let claims: Vec<Claim> = futures_util::future::join_all((0..4).map(|i| {
            let reg = reg.clone();
            async move { reg.claim(&format!("{i}@interop")).await.unwrap() }
        }))
        .await;
        let started = tokio::time::Instant::now();
        let n = reg
            .cancel_all_spread(Duration::from_millis(300), CancelReason::Draining, Some(Refusal::Draining.encode()))
            .await;
        assert_eq!(n, 4);
        let spread = started.elapsed();
        assert!(spread >= Duration::from_millis(200), "cancels were spread: {spread:?}");
        assert!(claims.iter().all(|c| c.cancel_handle().reason() == Some(CancelReason::Draining)));
        assert!(matches!(reg.claim("new@interop").await, Err(SessionError::Draining)));
        let idle = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.wait_idle().await })
        };
        drop(claims);
        idle.await.unwrap();
        assert!(reg.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_waiting_and_running_sessions() {
        let reg = Registry::default();
        let holder = reg.claim("s@interop").await.unwrap();
        let reg2 = reg.clone();
        let waiter = tokio::spawn(async move { reg2.claim("s@interop").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        reg.shutdown_now();
        let err = waiter.await.unwrap().unwrap_err();
        // The waiter replaced the holder first, then the hard stop hit the waiter.
        assert!(matches!(err, SessionError::Cancelled(CancelReason::Shutdown)), "{err}");
        assert!(holder.cancel_handle().is_cancelled());
        drop(holder);
        assert_eq!((reg.len(), reg.accounts()), (0, 0));
    }
}
