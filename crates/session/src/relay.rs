//! The relay: the hot path between one client and its chatd connection.
//!
//! Both directions run in one task, in one hand-written poll loop (no channels, no per-session
//! spawns). Each direction is a [`Pipe`] with two buffers: `inb` (bytes read from the source, not
//! yet transformed) and `out` (frames ready for the destination).
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
//! `release_after`, its empty buffers are freed; the next read goes into a stack scratch buffer
//! and only takes heap memory when bytes actually arrive. An idle session then holds no relay
//! buffers at all: what remains is the task's state (ciphers, timer, sockets).
//!
//! Timers are lazy: one `Sleep` per session, re-armed only when it fires early or must fire
//! sooner, never per frame.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;
use wire::frame::{HEADER_LEN, MAX_FRAME_LEN, peek_len};
use wire::noise::{RecvCipher, SendCipher, TAG_LEN};

use crate::cancel::{CancelHandle, CancelReason};
use crate::error::{CloseReason, SessionError, is_disconnect};
use crate::metrics::{Direction, SessionMetrics};
use crate::stanza::classify;
use crate::upstream::Upstream;

/// Bytes asked of a source per read when frames are small (HAProxy's `tune.bufsize` in
/// WhatsApp's own proxy). Frames larger than this are read exactly to their end.
pub const READ_CHUNK: usize = 4096;

/// Steps per direction per wake-up before the relay yields to other tasks.
const STEPS_PER_POLL: usize = 32;

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
    /// Free empty buffers once the session has been quiet for `release_after`.
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
/// module docs and `docs/session.md` for the close sequence of each reason).
///
/// `client_leftover` holds client bytes the edge already read past the login frame; frames queued
/// with [`Upstream::queue_to_client`] go to the client first. On return the upstream socket is
/// closed and [`CancelHandle::mark_upstream_released`] has been called.
pub async fn relay<C>(
    client: C,
    client_leftover: BytesMut,
    upstream: Upstream,
    cfg: &RelayConfig,
    cancel: &CancelHandle,
    metrics: &SessionMetrics,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Upstream { stream, send, recv, sealed_leftover, to_client, .. } = upstream;
    let parts = UpstreamParts { io: stream, send, recv, sealed_leftover, to_client };
    relay_io(client, client_leftover, parts, cfg, cancel, metrics).await
}

/// The upstream as the relay needs it; generic so tests can use in-memory pipes.
pub(crate) struct UpstreamParts<U> {
    pub io: U,
    pub send: SendCipher,
    pub recv: RecvCipher,
    pub sealed_leftover: BytesMut,
    pub to_client: BytesMut,
}

/// The upstream socket while a relay owns it. Dropping it, at the end of the close sequence or
/// because the relay's task was aborted, closes the socket, takes it out of
/// `waproxy_upstream_connections` and releases the registry slot.
struct OwnedUpstream<'a, U> {
    io: U,
    /// Declared after `io`, so it drops after it: the socket is closed before the slot is
    /// released and a newer login for the account may dial.
    _release: ReleaseOnDrop<'a>,
}

/// Marks the upstream released (and counts it out) when dropped.
struct ReleaseOnDrop<'a> {
    metrics: &'a SessionMetrics,
    cancel: &'a CancelHandle,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.metrics.upstream_connections.dec();
        self.cancel.mark_upstream_released();
    }
}

pub(crate) async fn relay_io<C, U>(
    client: C,
    client_leftover: BytesMut,
    upstream: UpstreamParts<U>,
    cfg: &RelayConfig,
    cancel: &CancelHandle,
    metrics: &SessionMetrics,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    metrics.upstream_connections.inc();
    let io = OwnedUpstream { io: upstream.io, _release: ReleaseOnDrop { metrics, cancel } };
    if let Err(e) = cfg.validate() {
        drop(io);
        metrics.closed(e.close_reason());
        return RelayEnd {
            reason: EndReason::Error(e),
            to_upstream: DirectionStats::default(),
            to_client: DirectionStats::default(),
            duration: started.elapsed(),
        };
    }
    let limit = cfg.max_buffered_bytes;
    let mut driver = Driver {
        client,
        upstream: io,
        c2u: Pipe::new(Direction::ToUpstream, Buf::from(client_leftover), Buf::default(), cfg, limit, metrics),
        u2c: Pipe::new(
            Direction::ToClient,
            Buf::from(upstream.sealed_leftover),
            Buf::from(upstream.to_client),
            cfg,
            limit,
            metrics,
        ),
        seal: Cipher::Seal(upstream.send),
        open: Cipher::Open(upstream.recv),
        cfg,
        last_client_rx: started,
        last_activity: started,
        sleep: Box::pin(tokio::time::sleep_until(started + cfg.idle_timeout)),
    };
    let mut cancelled = Box::pin(cancel.token().clone().cancelled_owned());
    let stop = std::future::poll_fn(|cx| driver.poll_run(cx, cancelled.as_mut())).await;
    drop(cancelled);
    let reason = match stop {
        Stop::ClientClosed => EndReason::ClientClosed,
        Stop::ClientIdle => EndReason::ClientIdle,
        Stop::UpstreamClosed => EndReason::UpstreamClosed,
        Stop::UpstreamStreamError => EndReason::UpstreamStreamError,
        Stop::Cancelled => EndReason::Cancelled(cancel.reason().unwrap_or(CancelReason::Shutdown)),
        Stop::Error(e) => EndReason::Error(e),
    };
    // Boxed: the close sequence's state (timers, two futures) exists only while closing, and
    // would otherwise enlarge every session's task for its whole life.
    let (to_upstream, to_client) = Box::pin(driver.finish(&reason, cancel)).await;
    let end = RelayEnd { reason, to_upstream, to_client, duration: started.elapsed() };
    metrics.closed(end.reason.close_reason());
    debug!(reason = %end.reason.close_reason(), ?end.to_upstream, ?end.to_client, "relay ended");
    end
}

// ---------------------------------------------------------------------------------------------
// Buffers

/// A byte buffer with a consumed prefix: `data[head..]` is live. Unlike `BytesMut`, its capacity
/// is exactly the allocation (so the metrics and the idle release see the truth), and it only
/// compacts when it needs the room.
#[derive(Default)]
struct Buf {
    data: Vec<u8>,
    head: usize,
}

impl From<BytesMut> for Buf {
    fn from(b: BytesMut) -> Self {
        Buf { data: Vec::from(b), head: 0 }
    }
}

impl Buf {
    fn len(&self) -> usize {
        self.data.len() - self.head
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn capacity(&self) -> usize {
        self.data.capacity()
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.head..]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.head..]
    }

    fn consume(&mut self, n: usize) {
        self.head = (self.head + n).min(self.data.len());
        if self.head == self.data.len() {
            self.data.clear();
            self.head = 0;
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.head = 0;
    }

    fn release(&mut self) {
        *self = Buf::default();
    }

    /// Makes room for `n` more bytes: compacts first, then grows (doubling, but never past
    /// `ceiling` unless `n` itself needs it).
    fn reserve(&mut self, n: usize, ceiling: usize) {
        if self.data.capacity() - self.data.len() >= n {
            return;
        }
        if self.head > 0 {
            self.data.drain(..self.head);
            self.head = 0;
            if self.data.capacity() - self.data.len() >= n {
                return;
            }
        }
        let need = self.data.len() + n;
        let target = need.max((self.data.capacity() * 2).min(ceiling)).max(READ_CHUNK);
        self.data.reserve_exact(target - self.data.len());
    }

    fn put_frame_header(&mut self, len: usize) {
        self.data.put_uint(len as u64, HEADER_LEN);
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }
}

fn write_header(dst: &mut [u8], len: usize) {
    dst[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
}

// ---------------------------------------------------------------------------------------------
// One direction

enum Cipher {
    Seal(SendCipher),
    Open(RecvCipher),
}

/// Counts already pushed to the shared metrics.
#[derive(Default)]
struct Published {
    frames: u64,
    bytes: u64,
    stalls: u64,
    buffered: i64,
    capacity: i64,
}

struct Pipe<'a> {
    metrics: &'a SessionMetrics,
    dir: Direction,
    inb: Buf,
    out: Buf,
    /// Largest input frame body.
    max_body: usize,
    /// Extra bytes a transformed frame takes over its input (the tag, when sealing).
    grow: usize,
    limit: usize,
    flush_pending: bool,
    /// The output ends with a stream-ending stanza; nothing more is read.
    ended: bool,
    stalled: bool,
    stats: DirectionStats,
    published: Published,
}

enum Fill {
    Read,
    Eof,
    Idle,
}

#[derive(Default)]
struct Activity {
    any: bool,
    source_read: bool,
}

enum Event {
    None,
    SourceEof,
    StreamEnded,
}

enum PumpError {
    /// Reading the source failed.
    Source(io::Error),
    /// Writing the destination failed.
    Dest(io::Error),
    Session(SessionError),
}

impl From<SessionError> for PumpError {
    fn from(e: SessionError) -> Self {
        PumpError::Session(e)
    }
}

impl Drop for Pipe<'_> {
    /// Takes this pipe's bytes out of the shared gauges, however the relay ends (aborts included).
    fn drop(&mut self) {
        self.unpublish();
    }
}

impl<'a> Pipe<'a> {
    fn new(dir: Direction, inb: Buf, out: Buf, cfg: &RelayConfig, limit: usize, metrics: &'a SessionMetrics) -> Self {
        let (max_body, grow) = match dir {
            Direction::ToUpstream => (cfg.max_frame_len - TAG_LEN, TAG_LEN),
            Direction::ToClient => (cfg.max_frame_len, 0),
        };
        Pipe {
            metrics,
            dir,
            inb,
            out,
            max_body,
            grow,
            limit,
            flush_pending: false,
            ended: false,
            stalled: false,
            stats: DirectionStats::default(),
            published: Published::default(),
        }
    }

    fn buffered(&self) -> usize {
        self.inb.len() + self.out.len()
    }

    fn capacity(&self) -> usize {
        self.inb.capacity() + self.out.capacity()
    }

    fn too_large(&self, len: usize) -> SessionError {
        match self.dir {
            Direction::ToUpstream => SessionError::ClientFrameTooLarge { len, max: self.max_body },
            Direction::ToClient => SessionError::UpstreamFrameTooLarge { len, max: self.max_body },
        }
    }

    /// The size (header included) of the frame at the front of `inb`, once its header is in.
    fn front_frame(&self) -> Result<Option<usize>, SessionError> {
        match peek_len(self.inb.bytes()) {
            None => Ok(None),
            Some(len) if len > self.max_body => Err(self.too_large(len)),
            Some(len) => Ok(Some(HEADER_LEN + len)),
        }
    }

    fn count(&mut self, payload_len: usize) {
        self.stats.frames += 1;
        self.stats.bytes += payload_len as u64;
    }

    /// Moves the front frame of `inb` to `out`, sealed or opened. `Ok(false)` when there is no
    /// whole frame, or no room for it yet.
    fn transform_one(&mut self, cipher: &mut Cipher) -> Result<bool, SessionError> {
        if self.ended {
            return Ok(false);
        }
        let Some(size) = self.front_frame()? else { return Ok(false) };
        if self.inb.len() < size {
            return Ok(false);
        }
        if self.out.is_empty() && self.inb.len() == size {
            // Alone: transform in place and let the buffers swap roles (no copy).
            std::mem::swap(&mut self.inb, &mut self.out);
            self.transform_in_place(cipher, size)?;
        } else if self.out.is_empty() || self.buffered() + self.grow <= self.limit {
            self.transform_copy(cipher, size)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// `out` holds exactly one frame of `size` bytes.
    fn transform_in_place(&mut self, cipher: &mut Cipher, size: usize) -> Result<(), SessionError> {
        let body_len = size - HEADER_LEN;
        match cipher {
            Cipher::Seal(tx) => {
                let tag = tx.seal_in_place(&mut self.out.bytes_mut()[HEADER_LEN..]).map_err(SessionError::Seal)?;
                write_header(self.out.bytes_mut(), body_len + TAG_LEN);
                // Room for the tag was reserved when the frame was read.
                self.out.extend(&tag);
                self.count(body_len);
            }
            Cipher::Open(rx) => {
                let plain_len = rx.open(&mut self.out.bytes_mut()[HEADER_LEN..]).map_err(SessionError::Open)?.len();
                write_header(self.out.bytes_mut(), plain_len);
                let end = self.out.head + HEADER_LEN + plain_len;
                self.out.data.truncate(end);
                self.count(plain_len);
                if classify(&self.out.bytes()[HEADER_LEN..]).ends_stream() {
                    self.ended = true;
                    self.inb.clear();
                }
            }
        }
        Ok(())
    }

    fn transform_copy(&mut self, cipher: &mut Cipher, size: usize) -> Result<(), SessionError> {
        let body_len = size - HEADER_LEN;
        let ceiling = self.limit.max(size + self.grow);
        match cipher {
            Cipher::Seal(tx) => {
                self.out.reserve(size + TAG_LEN, ceiling);
                self.out.put_frame_header(body_len + TAG_LEN);
                let start = self.out.data.len();
                self.out.extend(&self.inb.bytes()[HEADER_LEN..size]);
                match tx.seal_in_place(&mut self.out.data[start..]) {
                    Ok(tag) => self.out.extend(&tag),
                    Err(e) => {
                        self.out.data.truncate(start - HEADER_LEN);
                        return Err(SessionError::Seal(e));
                    }
                }
                self.inb.consume(size);
                self.count(body_len);
            }
            Cipher::Open(rx) => {
                let plain_len = rx.open(&mut self.inb.bytes_mut()[HEADER_LEN..size]).map_err(SessionError::Open)?.len();
                let plain = &self.inb.bytes()[HEADER_LEN..HEADER_LEN + plain_len];
                let ends = classify(plain).ends_stream();
                self.out.reserve(HEADER_LEN + plain_len, ceiling);
                self.out.put_frame_header(plain_len);
                self.out.extend(plain);
                self.inb.consume(size);
                self.count(plain_len);
                if ends {
                    self.ended = true;
                    self.inb.clear();
                }
            }
        }
        Ok(())
    }

    /// Reads from `src` if there is room and need; never past the end of a frame larger than
    /// [`READ_CHUNK`].
    fn poll_fill<R: AsyncRead + Unpin>(&mut self, cx: &mut Context<'_>, src: &mut R) -> Result<Fill, PumpError> {
        let front = self.front_frame()?;
        let whole = front.is_some_and(|size| self.inb.len() >= size);
        let (want, cap) = match front {
            Some(size) if size > READ_CHUNK && !whole => {
                let cap = if self.out.is_empty() { self.limit.max(size + self.grow) } else { self.limit };
                (size - self.inb.len(), cap)
            }
            _ => (READ_CHUNK, self.limit),
        };
        let room = cap.saturating_sub(self.buffered() + self.grow);
        if whole || room == 0 {
            // A frame is waiting for the destination: stop reading (backpressure).
            if !self.stalled {
                self.stalled = true;
                self.stats.stalls += 1;
            }
            return Ok(Fill::Idle);
        }
        self.stalled = false;
        let n = want.min(room);
        let result = if self.inb.capacity() == 0 {
            // No buffer held (idle release): read into the stack, take heap only for real bytes.
            let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut scratch[..n.min(READ_CHUNK)]);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => return Ok(Fill::Idle),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if !got.is_empty() {
                        self.inb.reserve(got.len() + self.grow, READ_CHUNK + self.grow);
                        self.inb.extend(got);
                    }
                    Ok(got.len())
                }
            }
        } else {
            self.inb.reserve(n + self.grow, cap);
            match poll_read_buf(Pin::new(&mut *src), cx, &mut (&mut self.inb.data).limit(n)) {
                Poll::Pending => return Ok(Fill::Idle),
                Poll::Ready(r) => r,
            }
        };
        match result {
            Ok(0) => Ok(Fill::Eof),
            Ok(_) => {
                self.stats.max_buffered = self.stats.max_buffered.max(self.buffered());
                Ok(Fill::Read)
            }
            Err(e) => Err(PumpError::Source(e)),
        }
    }

    /// Writes `out` (all frames ready, in one write when the destination takes it), then flushes.
    fn poll_drain<W: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, dst: &mut W) -> io::Result<bool> {
        let mut progress = false;
        while !self.out.is_empty() {
            match Pin::new(&mut *dst).poll_write(cx, self.out.bytes()) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.out.consume(n);
                    self.flush_pending = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            }
        }
        if self.flush_pending {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush_pending = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// Moves what it can: write, transform, read, until nothing moves or the budget is spent.
    fn pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        cipher: &mut Cipher,
        act: &mut Activity,
    ) -> Result<Event, PumpError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..STEPS_PER_POLL {
            let mut step = self.poll_drain(cx, dst).map_err(PumpError::Dest)?;
            while self.transform_one(cipher)? {
                step = true;
            }
            if self.ended {
                return Ok(Event::StreamEnded);
            }
            match self.poll_fill(cx, src)? {
                Fill::Read => {
                    step = true;
                    act.source_read = true;
                }
                Fill::Eof => return Ok(Event::SourceEof),
                Fill::Idle => {}
            }
            if !step {
                return Ok(Event::None);
            }
            act.any = true;
        }
        // Budget spent with work left: let other tasks run, come back at once.
        cx.waker().wake_by_ref();
        Ok(Event::None)
    }

    fn release_if_empty(&mut self) {
        if self.inb.is_empty() && self.out.is_empty() && !self.flush_pending {
            self.inb.release();
            self.out.release();
        }
    }

    /// Pushes the counts gathered since the last call to the shared metrics.
    fn publish(&mut self) {
        let metrics = self.metrics;
        let m = &metrics.dirs[self.dir.index()];
        let capacity = self.capacity() as i64;
        let (s, p) = (&self.stats, &mut self.published);
        if s.frames != p.frames {
            m.frames.inc_by(s.frames - p.frames);
            m.bytes.inc_by(s.bytes - p.bytes);
            (p.frames, p.bytes) = (s.frames, s.bytes);
        }
        if s.stalls != p.stalls {
            m.stalls.inc_by(s.stalls - p.stalls);
            p.stalls = s.stalls;
        }
        let buffered = self.inb.len() as i64 + self.out.len() as i64;
        if buffered != p.buffered {
            m.buffered.add(buffered - p.buffered);
            p.buffered = buffered;
        }
        self.stats.max_buffered = self.stats.max_buffered.max(buffered as usize);
        if capacity != p.capacity {
            metrics.relay_buffer_capacity.add(capacity - p.capacity);
            p.capacity = capacity;
        }
    }

    /// Takes this pipe's bytes out of the shared gauges (its buffers are about to go).
    fn unpublish(&mut self) {
        self.metrics.dirs[self.dir.index()].buffered.sub(self.published.buffered);
        self.metrics.relay_buffer_capacity.sub(self.published.capacity);
        self.published.buffered = 0;
        self.published.capacity = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// Both directions

enum Stop {
    ClientClosed,
    ClientIdle,
    UpstreamClosed,
    UpstreamStreamError,
    Cancelled,
    Error(SessionError),
}

struct Driver<'a, C, U> {
    client: C,
    upstream: OwnedUpstream<'a, U>,
    c2u: Pipe<'a>,
    u2c: Pipe<'a>,
    seal: Cipher,
    open: Cipher,
    cfg: &'a RelayConfig,
    last_client_rx: Instant,
    last_activity: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<C, U> Driver<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        mut cancelled: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Poll<Stop> {
        loop {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Stop::Cancelled);
            }
            let mut down = Activity::default();
            let event = self.u2c.pump(cx, &mut self.upstream.io, &mut self.client, &mut self.open, &mut down);
            let stop = match event {
                Ok(Event::None) => None,
                Ok(Event::SourceEof) => Some(Stop::UpstreamClosed),
                Ok(Event::StreamEnded) => Some(Stop::UpstreamStreamError),
                Err(PumpError::Source(e)) if is_disconnect(&e) => Some(Stop::UpstreamClosed),
                Err(PumpError::Source(e)) => Some(Stop::Error(SessionError::UpstreamIo(e))),
                Err(PumpError::Dest(e)) if is_disconnect(&e) => Some(Stop::ClientClosed),
                Err(PumpError::Dest(e)) => Some(Stop::Error(SessionError::ClientIo(e))),
                Err(PumpError::Session(e)) => Some(Stop::Error(e)),
            };
            let mut up = Activity::default();
            let stop = stop.or_else(|| {
                match self.c2u.pump(cx, &mut self.client, &mut self.upstream.io, &mut self.seal, &mut up) {
                    Ok(Event::None) | Ok(Event::StreamEnded) => None,
                    Ok(Event::SourceEof) => Some(Stop::ClientClosed),
                    Err(PumpError::Source(e)) if is_disconnect(&e) => Some(Stop::ClientClosed),
                    Err(PumpError::Source(e)) => Some(Stop::Error(SessionError::ClientIo(e))),
                    Err(PumpError::Dest(e)) if is_disconnect(&e) => Some(Stop::UpstreamClosed),
                    Err(PumpError::Dest(e)) => Some(Stop::Error(SessionError::UpstreamIo(e))),
                    Err(PumpError::Session(e)) => Some(Stop::Error(e)),
                }
            });
            self.u2c.publish();
            self.c2u.publish();
            if let Some(stop) = stop {
                return Poll::Ready(stop);
            }

            let now = Instant::now();
            if up.source_read {
                self.last_client_rx = now;
            }
            if up.any || down.any {
                self.last_activity = now;
            }
            let idle_at = self.last_client_rx + self.cfg.idle_timeout;
            if now >= idle_at {
                return Poll::Ready(Stop::ClientIdle);
            }
            let mut next = idle_at;
            if self.cfg.release_idle_buffers && (self.c2u.capacity() > 0 || self.u2c.capacity() > 0) {
                let release_at = self.last_activity + self.cfg.release_after;
                if now >= release_at {
                    self.c2u.release_if_empty();
                    self.u2c.release_if_empty();
                    self.c2u.publish();
                    self.u2c.publish();
                } else {
                    next = next.min(release_at);
                }
            }
            if self.sleep.deadline() > next || self.sleep.is_elapsed() {
                self.sleep.as_mut().reset(next);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: go round once more to act on it.
        }
    }

    /// The close sequence; returns the final counts. The upstream side and the client side run
    /// concurrently, so a slow client never delays releasing the upstream.
    async fn finish(self, reason: &EndReason, cancel: &CancelHandle) -> (DirectionStats, DirectionStats) {
        let Driver { mut client, mut upstream, mut c2u, mut u2c, mut seal, cfg, .. } = self;
        c2u.unpublish();
        u2c.unpublish();
        let stats = (c2u.stats, u2c.stats);
        let linger = cfg.close_linger;

        // Upstream: FIN now; then wait (bounded) for chatd's FIN, reading and discarding what it
        // still sends, so the socket closes cleanly instead of with a reset.
        let upstream_failed = matches!(reason, EndReason::Error(SessionError::UpstreamIo(_)));
        let upstream_eof = matches!(reason, EndReason::UpstreamClosed);
        let client_closed = matches!(reason, EndReason::ClientClosed);
        let cancelled = matches!(reason, EndReason::Cancelled(_));
        let upstream_side = async {
            if (client_closed || cancelled) && !upstream_failed {
                // What the client sent before the end reaches chatd: every complete frame still
                // buffered is sealed and written. After a client FIN, one attempt, so the upstream
                // close is never delayed; after a cancel (drain, replacement) the client was told to
                // go and its last stanzas must not be lost, so wait for them, bounded by the linger.
                let forward = std::future::poll_fn(|cx| {
                    loop {
                        let Ok(sealed) = c2u.transform_one(&mut seal) else { return Poll::Ready(()) };
                        let Ok(progress) = c2u.poll_drain(cx, &mut upstream.io) else { return Poll::Ready(()) };
                        if c2u.out.is_empty() && !c2u.flush_pending && !sealed {
                            return Poll::Ready(());
                        }
                        if !progress && !sealed {
                            return if cancelled { Poll::Pending } else { Poll::Ready(()) };
                        }
                    }
                });
                let _ = tokio::time::timeout(linger, forward).await;
            }
            if !upstream_failed {
                let _ = tokio::time::timeout(linger, async {
                    let _ = upstream.io.shutdown().await;
                    if !upstream_eof {
                        wire_io::close::discard_until_eof(&mut upstream.io).await;
                    }
                })
                .await;
            }
            // Closes the socket and releases the registry slot (see `OwnedUpstream`).
            drop(upstream);
            drop(c2u);
        };

        // Client: deliver what chatd sent (and the farewell), then close.
        let flush_client = matches!(
            reason,
            EndReason::UpstreamClosed
                | EndReason::UpstreamStreamError
                | EndReason::Cancelled(_)
                | EndReason::ClientIdle
        );
        if let EndReason::Cancelled(_) = reason
            && let Some(farewell) = cancel.farewell()
            && farewell.len() <= MAX_FRAME_LEN
        {
            u2c.out.put_frame_header(farewell.len());
            u2c.out.extend(&farewell);
        }
        let client_failed = matches!(reason, EndReason::Error(SessionError::ClientIo(_)));
        let client_side = async {
            if !client_failed {
                let _ = tokio::time::timeout(linger, async {
                    if flush_client {
                        let drained = std::future::poll_fn(|cx| match u2c.poll_drain(cx, &mut client) {
                            Err(e) => Poll::Ready(Err(e)),
                            Ok(_) if u2c.out.is_empty() && !u2c.flush_pending => Poll::Ready(Ok(())),
                            Ok(_) => Poll::Pending,
                        })
                        .await;
                        if drained.is_err() {
                            return;
                        }
                    }
                    let _ = client.shutdown().await;
                })
                .await;
            }
            drop(client);
            drop(u2c);
        };
        tokio::join!(upstream_side, client_side);
        stats
    }
}

#[cfg(test)]
mod tests;
