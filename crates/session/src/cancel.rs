//! The session's control block: cancellation with a reason and a farewell stanza, and the
//! "upstream released" signal the registry waits on before a replacement may dial.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

/// Why a session was cancelled from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// A newer, authenticated login for the same account replaces this session.
    Replaced,
    /// The proxy is draining; the client should reconnect elsewhere.
    Draining,
    /// The proxy is stopping (or a parent token was cancelled without a reason).
    Shutdown,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelReason::Replaced => "replaced",
            CancelReason::Draining => "draining",
            CancelReason::Shutdown => "shutdown",
        })
    }
}

struct Cancellation {
    reason: CancelReason,
    farewell: Option<Bytes>,
}

struct Inner {
    /// Fires on cancel.
    token: CancellationToken,
    /// The first cancel's reason and farewell (later cancels do not overwrite them).
    why: OnceLock<Cancellation>,
    /// Fires once this session holds no upstream connection any more (and never will again).
    released: AtomicBool,
    /// Wakes [`CancelHandle::upstream_released`] waiters; a flag and a `Notify` inline rather
    /// than a second cancellation token, which is an allocation of its own per session.
    on_release: Notify,
    /// The registry's per-account upstream slot, held while the session may hold an upstream.
    slot: Mutex<Option<OwnedMutexGuard<()>>>,
}

/// A cheap, clonable handle on one session: cancel it, or wait until its upstream is gone.
///
/// The relay watches [`cancelled`](Self::cancelled); on cancel it sends the farewell stanza (if
/// any) to the client after what was already queued, closes both sides, and calls
/// [`mark_upstream_released`](Self::mark_upstream_released) as soon as the upstream socket is
/// dropped. The registry waits on [`upstream_released`](Self::upstream_released) before a
/// replacement login may dial.
#[derive(Clone)]
pub struct CancelHandle {
    inner: Arc<Inner>,
}

impl Default for CancelHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("cancelled", &self.reason())
            .field("upstream_released", &self.is_upstream_released())
            .finish()
    }
}

impl CancelHandle {
    /// A handle nobody has cancelled yet.
    pub fn new() -> Self {
        Self::from_token(CancellationToken::new())
    }

    /// A handle that is also cancelled (reason [`CancelReason::Shutdown`], no farewell) when
    /// `parent` is: for a proxy-wide hard stop.
    pub fn child_of(parent: &CancellationToken) -> Self {
        Self::from_token(parent.child_token())
    }

    fn from_token(token: CancellationToken) -> Self {
        CancelHandle {
            inner: Arc::new(Inner {
                token,
                why: OnceLock::new(),
                released: AtomicBool::new(false),
                on_release: Notify::new(),
                slot: Mutex::new(None),
            }),
        }
    }

    /// Cancels the session. The first call's reason and farewell win; returns whether this call
    /// was the first. `farewell` is a plaintext stanza payload (flags byte + node) the client gets
    /// before the close, e.g. [`Refusal::Replaced`](wire::refusal::Refusal::Replaced).
    pub fn cancel(&self, reason: CancelReason, farewell: Option<Bytes>) -> bool {
        let first = self.inner.why.set(Cancellation { reason, farewell }).is_ok();
        self.inner.token.cancel();
        first
    }

    /// Whether the session was cancelled (directly or through a parent token).
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// The reason, once cancelled; a parent token's cancel reads as [`CancelReason::Shutdown`].
    pub fn reason(&self) -> Option<CancelReason> {
        match self.inner.why.get() {
            Some(c) => Some(c.reason),
            None if self.inner.token.is_cancelled() => Some(CancelReason::Shutdown),
            None => None,
        }
    }

    /// The farewell stanza given with the cancel, if any.
    pub fn farewell(&self) -> Option<Bytes> {
        self.inner.why.get().and_then(|c| c.farewell.clone())
    }

    /// Completes when the session is cancelled.
    pub async fn cancelled(&self) {
        self.inner.token.cancelled().await
    }

    /// The underlying token (for `select!` loops, or to derive child tokens).
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// Declares that this session's upstream socket is closed and dropped, and that the session
    /// will not dial again. Releases the registry slot, so a waiting replacement may dial.
    /// Idempotent. The relay calls it; so does dropping a [`crate::Claim`].
    pub fn mark_upstream_released(&self) {
        drop(self.take_slot());
        self.inner.released.store(true, Ordering::Release);
        self.inner.on_release.notify_waiters();
    }

    /// Whether [`mark_upstream_released`](Self::mark_upstream_released) was called.
    pub fn is_upstream_released(&self) -> bool {
        self.inner.released.load(Ordering::Acquire)
    }

    /// Completes once the session's upstream is released.
    pub async fn upstream_released(&self) {
        let notified = self.inner.on_release.notified();
        tokio::pin!(notified);
        loop {
            // Registered before the check, so a release between the two is not missed.
            notified.as_mut().enable();
            if self.is_upstream_released() {
                return;
            }
            notified.as_mut().await;
            notified.set(self.inner.on_release.notified());
        }
    }

    pub(crate) fn hold_slot(&self, guard: OwnedMutexGuard<()>) {
        *self.inner.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }

    pub(crate) fn take_slot(&self) -> Option<OwnedMutexGuard<()>> {
        self.inner.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_cancel_wins_and_parents_read_as_shutdown() {
        let h = CancelHandle::new();
        assert_eq!(h.reason(), None);
        assert!(h.cancel(CancelReason::Replaced, Some(Bytes::from_static(b"\0x"))));
        assert!(!h.cancel(CancelReason::Draining, None));
        assert_eq!(h.reason(), Some(CancelReason::Replaced));
        assert_eq!(h.farewell().as_deref(), Some(&b"\0x"[..]));
        h.cancelled().await;

        let parent = CancellationToken::new();
        let child = CancelHandle::child_of(&parent);
        parent.cancel();
        child.cancelled().await;
        assert_eq!(child.reason(), Some(CancelReason::Shutdown));
        assert_eq!(child.farewell(), None);
    }

    #[tokio::test]
    async fn release_is_a_one_way_signal() {
        let h = CancelHandle::new();
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.upstream_released().await })
        };
        assert!(!h.is_upstream_released());
        h.mark_upstream_released();
        h.mark_upstream_released();
        waiter.await.unwrap();
        assert!(h.is_upstream_released());
    }
}
