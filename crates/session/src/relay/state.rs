//! The relay between wake-ups, sans-IO: both directions and the timers, and what a pass over
//! them means for the timers (idle, buffer release).

use tokio::time::Instant;

use super::pipe::Pipe;
use super::timers::{Timer, Timers};
use super::{EndReason, RelayConfig};

/// What one direction did in one pass.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Activity {
    /// Bytes moved (read, transformed or written).
    pub(crate) any: bool,
    /// Bytes were read from the source.
    pub(crate) source_read: bool,
}

pub(crate) struct RelayState<'a> {
    /// client → chatd: sealing.
    pub(crate) c2u: Pipe<'a>,
    /// chatd → client: opening.
    pub(crate) u2c: Pipe<'a>,
    pub(crate) timers: Timers<'a>,
}

impl<'a> RelayState<'a> {
    /// The state of a relay starting at `now`.
    pub(crate) fn new(c2u: Pipe<'a>, u2c: Pipe<'a>, cfg: &'a RelayConfig, now: Instant) -> Self {
        let holds_buffers = c2u.capacity() + u2c.capacity() > 0;
        RelayState { c2u, u2c, timers: Timers::new(cfg, now, holds_buffers) }
    }

    /// Pushes both directions' counts to the shared metrics.
    pub(crate) fn publish(&mut self) {
        self.u2c.publish();
        self.c2u.publish();
    }

    /// After a pass over both directions (`up`: client → chatd, `down`: chatd → client) that
    /// ended at `now`: moves the deadlines, acts on the timers that expired, and says whether the
    /// relay ends (the client was silent too long).
    pub(crate) fn after_pass(&mut self, now: Instant, up: Activity, down: Activity) -> Option<EndReason> {
        if up.source_read {
            self.timers.on_client_read(now);
        }
        if up.any || down.any {
            self.timers.on_activity(now);
        }
        match self.timers.handle_timeout(now)? {
            Timer::Idle => return Some(EndReason::ClientIdle),
            Timer::ReleaseBuffers => {
                self.c2u.release_if_idle();
                self.u2c.release_if_idle();
                self.c2u.publish();
                self.u2c.publish();
                if self.c2u.capacity() + self.u2c.capacity() == 0 {
                    self.timers.buffers_released();
                }
            }
        }
        None
    }

    /// When the driver must wake next, even if no socket is ready.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.timers.poll_timeout()
    }
}
