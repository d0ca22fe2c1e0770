//! The relay's timers while it relays, sans-IO (quinn's shape): the driver passes `now` in, asks
//! [`Timers::poll_timeout`] when to wake, and calls [`Timers::handle_timeout`] when it does.
//!
//! Deadlines move with traffic, but the driver's one `Sleep` is re-armed only when it fires early
//! or must fire sooner, never per frame. The close sequence has its own bound, `close_linger`,
//! which the close plan's steps run under (see [`super::close`]).

use tokio::time::Instant;

use super::RelayConfig;

/// A timer that expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The client sent nothing for `idle_timeout`: the session ends (`client_idle`).
    Idle,
    /// Nothing moved for `release_after`: free the buffers that are empty. Returned on every
    /// call while it is due, until [`Timers::buffers_released`] or new traffic.
    ReleaseBuffers,
}

/// The buffer-release timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// No buffer is held (or releasing is off): nothing to wake for.
    Off,
    At(Instant),
    /// Expired, but a buffer still held bytes: retried at every wake-up, without a deadline.
    Due,
}

pub(crate) struct Timers<'a> {
    cfg: &'a RelayConfig,
    /// The client's last byte plus `idle_timeout`.
    idle_at: Instant,
    release: Release,
}

impl<'a> Timers<'a> {
    /// Timers for a relay starting at `now`; `holds_buffers` when it starts with bytes (leftovers).
    pub(crate) fn new(cfg: &'a RelayConfig, now: Instant, holds_buffers: bool) -> Self {
        let mut timers = Timers { cfg, idle_at: now + cfg.idle_timeout, release: Release::Off };
        if holds_buffers {
            timers.on_activity(now);
        }
        timers
    }

    pub(crate) fn cfg(&self) -> &'a RelayConfig {
        self.cfg
    }

    /// The client sent bytes: only the client's own traffic (its pings) keeps a session alive.
    pub(crate) fn on_client_read(&mut self, now: Instant) {
        self.idle_at = now + self.cfg.idle_timeout;
    }

    /// Bytes moved in either direction.
    pub(crate) fn on_activity(&mut self, now: Instant) {
        if self.cfg.release_idle_buffers {
            self.release = Release::At(now + self.cfg.release_after);
        }
    }

    /// Every buffer is freed: nothing to release until traffic comes again.
    pub(crate) fn buffers_released(&mut self) {
        self.release = Release::Off;
    }

    /// When the driver must wake next.
    pub(crate) fn poll_timeout(&self) -> Instant {
        match self.release {
            Release::At(at) => self.idle_at.min(at),
            Release::Off | Release::Due => self.idle_at,
        }
    }

    /// The timer that has expired at `now`, if any; `Idle` first, as it ends the session.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<Timer> {
        if now >= self.idle_at {
            return Some(Timer::Idle);
        }
        match self.release {
            Release::At(at) if now >= at => {
                self.release = Release::Due;
                Some(Timer::ReleaseBuffers)
            }
            Release::Due => Some(Timer::ReleaseBuffers),
            Release::At(_) | Release::Off => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> RelayConfig {
        RelayConfig {
            idle_timeout: Duration::from_secs(30),
            release_after: Duration::from_secs(1),
            ..RelayConfig::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_silent_client_expires_at_the_idle_timeout() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut timers = Timers::new(&cfg, t0, false);
        assert_eq!(timers.poll_timeout(), t0 + secs(30));
        assert_eq!(timers.handle_timeout(t0 + secs(29)), None);
        assert_eq!(timers.handle_timeout(t0 + secs(30)), Some(Timer::Idle));
    }

    #[test]
    fn only_the_clients_bytes_push_the_idle_deadline() {
        let cfg = RelayConfig { release_idle_buffers: false, ..cfg() };
        let t0 = Instant::now();
        let mut timers = Timers::new(&cfg, t0, false);
        // chatd talking is activity, not a sign of life from the client.
        timers.on_activity(t0 + secs(20));
        assert_eq!(timers.handle_timeout(t0 + secs(30)), Some(Timer::Idle));
        timers.on_client_read(t0 + secs(20));
        assert_eq!(timers.handle_timeout(t0 + secs(30)), None);
        assert_eq!(timers.handle_timeout(t0 + secs(50)), Some(Timer::Idle));
    }

    #[test]
    fn buffers_are_released_after_release_after_of_quiet() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut timers = Timers::new(&cfg, t0, false);
        assert_eq!(timers.poll_timeout(), t0 + secs(30), "no buffers held: no wake-up for them");
        timers.on_activity(t0 + secs(5));
        assert_eq!(timers.poll_timeout(), t0 + secs(6));
        assert_eq!(timers.handle_timeout(t0 + secs(5)), None);
        timers.on_activity(t0 + secs(5) + Duration::from_millis(500));
        assert_eq!(timers.handle_timeout(t0 + secs(6)), None, "traffic pushed it back");
        assert_eq!(timers.handle_timeout(t0 + secs(7)), Some(Timer::ReleaseBuffers));
        timers.buffers_released();
        assert_eq!(timers.handle_timeout(t0 + secs(8)), None);
        assert_eq!(timers.poll_timeout(), t0 + secs(30));
    }

    #[test]
    fn a_release_that_found_bytes_is_retried_at_every_wake_up_without_a_deadline() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut timers = Timers::new(&cfg, t0, true);
        assert_eq!(timers.handle_timeout(t0 + secs(1)), Some(Timer::ReleaseBuffers));
        // The buffers still held bytes (a flush pending, say): no deadline in the past to spin on.
        assert_eq!(timers.poll_timeout(), t0 + secs(30));
        assert_eq!(timers.handle_timeout(t0 + secs(2)), Some(Timer::ReleaseBuffers));
        timers.on_activity(t0 + secs(3));
        assert_eq!(timers.handle_timeout(t0 + secs(3)), None);
        assert_eq!(timers.poll_timeout(), t0 + secs(4));
    }

    #[test]
    fn releasing_off_never_wakes_for_buffers() {
        let cfg = RelayConfig { release_idle_buffers: false, ..cfg() };
        let t0 = Instant::now();
        let mut timers = Timers::new(&cfg, t0, true);
        timers.on_activity(t0 + secs(1));
        assert_eq!(timers.poll_timeout(), t0 + secs(30));
        assert_eq!(timers.handle_timeout(t0 + secs(29)), None);
    }

    #[test]
    fn idle_wins_when_both_expired() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut timers = Timers::new(&cfg, t0, true);
        assert_eq!(timers.handle_timeout(t0 + secs(31)), Some(Timer::Idle));
    }
}
