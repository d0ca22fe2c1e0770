//! The relay: the hot path between one client and its chatd connection.
//!
//! Both directions run in one task, in one hand-written poll loop (no channels, no per-session
//! spawns). The relay is a sans-IO core under a thin async driver:
//!
//! - [`buf`]: the byte buffer (capacity is exactly the allocation; compacts only when it needs
//!   the room);
//! - [`pipe`]: one direction. Two buffers, `inb` (bytes read from the source, not yet
//!   transformed) and `out` (frames ready for the destination); it says where the next read goes
//!   and what to write next, is told how many bytes moved, and seals or opens frames in place;
//! - [`timers`]: the idle timeout and the idle buffer release, as deadlines computed from the
//!   `now` the driver passes in (`poll_timeout` / `handle_timeout`);
//! - [`state`]: both pipes and the timers, and what a pass over them means for the timers;
//! - [`close`]: which end a stopped direction means, and the close plan of each end (the relay
//!   rows of the close table in `docs/session.md`);
//! - [`driver`]: moves bytes between the sockets and the pipes, sleeps until the next timeout,
//!   carries out the close plan. No policy of its own.
//!
//! What it does:
//!
//! - **client → chatd**: 3-byte-framed plaintext stanza payloads are sealed in place
//!   (AES-256-GCM, tag appended) and written framed; the bytes are never otherwise touched.
//! - **chatd → client**: sealed frames are opened in place and written framed as plaintext. The
//!   root tag of each is read ([`crate::stanza::classify`]); `<stream:error>` and
//!   `<xmlstreamend/>` are relayed and then end the session.
//!
//! **No per-frame allocation.** A frame that sits alone in `inb` while `out` is empty is
//! transformed in place and the two buffers swap roles; otherwise it is copied into `out` behind
//! the frames already waiting (write coalescing: one `write` carries every frame that is ready).
//! Buffers keep their capacity while the session is active.
//!
//! **Bounded.** Per direction, `inb.len() + out.len() <= max_buffered_bytes`, with one exception: a
//! single frame larger than that is read (exactly to its end, never past it) once `out` is empty,
//! so one frame of up to `max_frame_len` can always pass. Reads stop while the destination is
//! behind (backpressure: a slow reader on one side stops reads on the other; nothing is dropped).
//!
//! **Idle memory.** With `release_idle_buffers`, once a session has moved nothing for
//! `release_after`, its empty buffers are freed and both ciphers' expanded keys parked (aws-lc's
//! AES-GCM contexts, about 600 bytes each; the next frame expands its direction's key again,
//! about a microsecond); the next read goes into a stack scratch buffer and only takes heap
//! memory when bytes actually arrive. An idle session then holds no relay buffers and no cipher
//! contexts: what remains is the [`Relaying`] future itself (pipes, secrets, timer, sockets).
//!
//! Timers are lazy: one `Sleep` per session, inline in the [`Relaying`] future, re-armed only when
//! it fires early or must fire sooner, never per frame.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wire::frame::MAX_FRAME_LEN;

use crate::cancel::{CancelHandle, CancelReason};
use crate::error::{CloseReason, SessionError};
use crate::metrics::SessionMetrics;
use crate::upstream::Upstream;

mod buf;
mod close;
mod driver;
mod pipe;
mod state;
mod timers;

pub use driver::Relaying;
use driver::{UpstreamParts, relay_io};

/// Bytes asked of a source per read when frames are small (HAProxy's `tune.bufsize` in
/// WhatsApp's own proxy). Frames larger than this are read exactly to their end.
pub const READ_CHUNK: usize = 4096;

/// Longest accepted timer setting (30 days), so deadline arithmetic cannot overflow.
pub const MAX_TIMER: Duration = Duration::from_secs(30 * 86_400);

/// Relay limits and timers.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Largest sealed frame body toward or from chatd, at most [`MAX_FRAME_LEN`]. A client
    /// payload may be `max_frame_len - 16` bytes (its sealed form adds the 16-byte tag).
    pub max_frame_len: usize,
    /// Bytes a direction may hold (read but not yet written) before it stops reading its source.
    pub max_buffered_bytes: usize,
    /// The client must send something this often (its pings), or both sides are closed.
    pub idle_timeout: Duration,
    /// Free empty buffers, and park the ciphers' expanded keys, once the session has been quiet
    /// for `release_after`.
    pub release_idle_buffers: bool,
    /// Quiet time before buffers are freed (0 frees them whenever they empty).
    pub release_after: Duration,
    /// How long the close may take: flushing what chatd sent (and a farewell) to the client, and
    /// waiting for chatd to acknowledge our FIN. WhatsApp's proxy uses 1 s (`timeout *-fin`).
    pub close_linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_frame_len: MAX_FRAME_LEN,
            max_buffered_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(200),
            release_idle_buffers: true,
            release_after: Duration::from_secs(1),
            close_linger: Duration::from_secs(1),
        }
    }
}

impl RelayConfig {
    /// Checks the values the relay relies on.
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |key, message: String| Err(SessionError::Config { key, message });
        if !(1024..=MAX_FRAME_LEN).contains(&self.max_frame_len) {
            return bad("max_frame_len", format!("{} is not between 1024 and {MAX_FRAME_LEN}", self.max_frame_len));
        }
        if self.max_buffered_bytes < 2 * READ_CHUNK {
            return bad("max_buffered_bytes", format!("{} is below {}", self.max_buffered_bytes, 2 * READ_CHUNK));
        }
        if self.idle_timeout.is_zero() {
            return bad("idle_timeout", "must be above zero".into());
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("release_after", self.release_after),
            ("close_linger", self.close_linger),
        ] {
            if d > MAX_TIMER {
                return bad(key, format!("{d:?} is above the {MAX_TIMER:?} maximum"));
            }
        }
        Ok(())
    }
}

/// What one direction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Stanzas relayed.
    pub frames: u64,
    /// Plaintext stanza payload bytes relayed.
    pub bytes: u64,
    /// Times reading stopped because the destination was behind.
    pub stalls: u64,
    /// Most bytes held at once.
    pub max_buffered: usize,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum EndReason {
    /// The client closed (FIN or RST); the upstream was closed at once.
    ClientClosed,
    /// The client was silent for `idle_timeout`; both were closed.
    ClientIdle,
    /// chatd closed; what it sent was relayed, then the client was closed.
    UpstreamClosed,
    /// chatd sent `<stream:error>` / `<xmlstreamend/>`; it was relayed, then both were closed.
    UpstreamStreamError,
    /// Cancelled from outside (replacement, drain, shutdown); the farewell, if any, was sent.
    Cancelled(CancelReason),
    /// A fault; both were closed.
    Error(SessionError),
}

impl EndReason {
    pub fn close_reason(&self) -> CloseReason {
        match self {
            EndReason::ClientClosed => CloseReason::ClientClosed,
            EndReason::ClientIdle => CloseReason::ClientIdle,
            EndReason::UpstreamClosed => CloseReason::UpstreamClosed,
            EndReason::UpstreamStreamError => CloseReason::UpstreamStreamError,
            EndReason::Cancelled(r) => CloseReason::from(*r),
            EndReason::Error(e) => e.close_reason(),
        }
    }
}

/// How a relay ended, with its counts.
#[derive(Debug)]
pub struct RelayEnd {
    pub reason: EndReason,
    pub to_upstream: DirectionStats,
    pub to_client: DirectionStats,
    /// From the start of the relay to both sides closed.
    pub duration: Duration,
}

/// Relays between `client` (the edge's plaintext frame stream, past the login frame) and
/// `upstream` until one side ends, `cancel` fires or a fault occurs; then closes both (see the
/// module docs and `docs/session.md` for the close sequence of each reason). The returned
/// [`Relaying`] future is the relay's whole state.
///
/// `client_leftover` holds client bytes the edge already read past the login frame; frames queued
/// with [`Upstream::queue_to_client`] go to the client first. When it completes the upstream
/// socket is closed and [`CancelHandle::mark_upstream_released`] has been called.
pub fn relay<'a, C>(
    client: C,
    client_leftover: BytesMut,
    upstream: Upstream,
    cfg: &'a RelayConfig,
    cancel: &CancelHandle,
    metrics: &'a SessionMetrics,
) -> Relaying<'a, C, TcpStream>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    let Upstream { stream, send, recv, sealed_leftover, to_client, .. } = upstream;
    let parts = UpstreamParts { io: stream, send, recv, sealed_leftover, to_client };
    relay_io(client, client_leftover, parts, cfg, cancel, metrics)
}

#[cfg(test)]
mod tests;
