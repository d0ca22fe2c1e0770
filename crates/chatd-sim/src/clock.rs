//! Time as the simulator sees it. Injectable, so tests can move 30 days forward in a moment.

use std::sync::atomic::{AtomicU64, Ordering};

/// Unix time in seconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        wire_io::clock::unix_now()
    }
}

/// The system clock plus an offset that tests (and the admin API) can advance.
#[derive(Debug, Default)]
pub struct ShiftedClock {
    offset_secs: AtomicU64,
}

impl ShiftedClock {
    pub fn advance(&self, secs: u64) {
        self.offset_secs.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> u64 {
        SystemClock.now() + self.offset_secs.load(Ordering::Relaxed)
    }
}
