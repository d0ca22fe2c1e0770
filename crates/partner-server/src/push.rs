//! Received pushes: a bounded history for inspection, and per-user wake-ups for long-polling
//! clients.
//!
//! A push sets a per-user "pending" flag and wakes that user's waiters; a wait consumes the flag.
//! So a push that arrives while nobody waits is not lost: the next wait returns at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One received push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PushRecord {
    /// The pushed user's `user_identifier`.
    pub to: String,
    /// When it was received, Unix milliseconds.
    pub at_unix_ms: u64,
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    Pushed,
    TimedOut,
    ShuttingDown,
}

struct Slot {
    /// Sequence number of the unconsumed push, if any (orders eviction).
    pending: Option<u64>,
    waiters: usize,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct State {
    history: VecDeque<PushRecord>,
    /// Only users with a pending push or a waiter have a slot, so this is bounded by
    /// `max_pending` plus the open connections.
    users: HashMap<String, Slot>,
    pending: usize,
    seq: u64,
}

pub(crate) struct Pushes {
    state: Mutex<State>,
    history_cap: usize,
    max_pending: usize,
}

impl Pushes {
    pub(crate) fn new(history_cap: usize, max_pending: usize) -> Self {
        Self { state: Mutex::new(State::default()), history_cap: history_cap.max(1), max_pending: max_pending.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections only touch plain collections and cannot leave them half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record a push for `to` and wake its waiters.
    pub(crate) fn record(&self, to: &str) {
        let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut state = self.lock();
        if state.history.len() >= self.history_cap {
            state.history.pop_front();
        }
        state.history.push_back(PushRecord { to: to.to_owned(), at_unix_ms });
        state.seq += 1;
        let seq = state.seq;
        let slot = state.users.entry(to.to_owned()).or_insert_with(|| Slot {
            pending: None,
            waiters: 0,
            notify: Arc::new(Notify::new()),
        });
        let newly_pending = slot.pending.is_none();
        slot.pending = Some(seq);
        slot.notify.notify_waiters();
        if newly_pending {
            state.pending += 1;
        }
        if state.pending > self.max_pending {
            evict_oldest_pending(&mut state);
        }
    }

    /// The remembered pushes, oldest first.
    pub(crate) fn history(&self) -> Vec<PushRecord> {
        self.lock().history.iter().cloned().collect()
    }

    /// Wait until a push for `user` is pending (consuming it), `timeout` passes, or `shutdown` fires.
    pub(crate) async fn wait(&self, user: &str, timeout: Duration, shutdown: &CancellationToken) -> WaitOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let notify = {
            let mut state = self.lock();
            let slot = state.users.entry(user.to_owned()).or_insert_with(|| Slot {
                pending: None,
                waiters: 0,
                notify: Arc::new(Notify::new()),
            });
            slot.waiters += 1;
            slot.notify.clone()
        };
        // Deregisters on every exit path, including the client going away mid-wait.
        let _waiter = WaiterGuard { pushes: self, user };
        loop {
            // Register interest before checking the flag, so a push landing in between still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.take_pending(user) {
                return WaitOutcome::Pushed;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return WaitOutcome::TimedOut,
                _ = shutdown.cancelled() => return WaitOutcome::ShuttingDown,
            }
        }
    }

    fn take_pending(&self, user: &str) -> bool {
        let mut state = self.lock();
        let taken = state.users.get_mut(user).and_then(|slot| slot.pending.take()).is_some();
        if taken {
            state.pending = state.pending.saturating_sub(1);
        }
        taken
    }

    #[cfg(test)]
    fn tracked_users(&self) -> usize {
        self.lock().users.len()
    }
}

/// Forget the oldest unconsumed push so the pending set stays bounded. A linear scan, but only
/// when the set is full, and pushes come from the authenticated pusher only.
fn evict_oldest_pending(state: &mut State) {
    let oldest = state.users.iter().filter_map(|(user, slot)| slot.pending.map(|seq| (seq, user))).min();
    let Some((_, user)) = oldest else { return };
    let user = user.clone();
    if let Some(slot) = state.users.get_mut(&user) {
        slot.pending = None;
        state.pending = state.pending.saturating_sub(1);
        if slot.waiters == 0 {
            state.users.remove(&user);
        }
    }
}

struct WaiterGuard<'a> {
    pushes: &'a Pushes,
    user: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.pushes.lock();
        let remove = match state.users.get_mut(self.user) {
            Some(slot) => {
                slot.waiters = slot.waiters.saturating_sub(1);
                slot.waiters == 0 && slot.pending.is_none()
            }
            None => false,
        };
        if remove {
            state.users.remove(self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn push_before_wait_is_not_lost_and_is_consumed_once() {
        let p = Pushes::new(8, 8);
        let never = CancellationToken::new();
        p.record("alice");
        assert_eq!(p.wait("alice", Duration::from_secs(5), &never).await, WaitOutcome::Pushed);
        assert_eq!(p.wait("alice", Duration::from_millis(20), &never).await, WaitOutcome::TimedOut);
        assert_eq!(p.tracked_users(), 0);
    }

    #[tokio::test]
    async fn history_and_pending_are_bounded() {
        let p = Pushes::new(3, 2);
        let never = CancellationToken::new();
        for user in ["a", "b", "c", "d"] {
            p.record(user);
        }
        let history: Vec<String> = p.history().into_iter().map(|r| r.to).collect();
        assert_eq!(history, ["b", "c", "d"]);
        assert_eq!(p.tracked_users(), 2);
        // "a" and "b" were evicted as the oldest pending; "c" and "d" still wake at once.
        assert_eq!(p.wait("a", Duration::from_millis(10), &never).await, WaitOutcome::TimedOut);
        assert_eq!(p.wait("c", Duration::from_secs(5), &never).await, WaitOutcome::Pushed);
    }

    #[tokio::test]
    async fn shutdown_ends_waits() {
        let p = Arc::new(Pushes::new(8, 8));
        let token = CancellationToken::new();
        let (p2, t2) = (p.clone(), token.clone());
        let waiter = tokio::spawn(async move { p2.wait("bob", Duration::from_secs(30), &t2).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        token.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("ends").expect("task");
        assert_eq!(outcome, WaitOutcome::ShuttingDown);
    }
}
