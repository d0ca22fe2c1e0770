//! The relay's thin async driver: it moves bytes between the sockets and the pipes, reads the
//! clock, sleeps until the next timeout, and carries out the close plan. Every decision (read
//! windows, transforms, deadlines, the close sequence) is made by the sans-IO parts.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;
use wire::frame::MAX_FRAME_LEN;
use wire::noise::{RecvCipher, SendCipher};

use super::buf::Buf;
use super::close::{ClientClose, ClosePlan, Forward, PipeEnd, UpstreamClose, end_reason};
use super::pipe::{Cipher, Pipe, ReadInto};
use super::state::{Activity, RelayState};
use super::{DirectionStats, EndReason, READ_CHUNK, RelayConfig, RelayEnd};
use crate::cancel::{CancelHandle, CancelReason};
use crate::metrics::{Direction, SessionMetrics};

/// Steps per direction per wake-up before the relay yields to other tasks.
const STEPS_PER_POLL: usize = 32;

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
    cancel: CancelHandle,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.metrics.upstream_connections.dec();
        self.cancel.mark_upstream_released();
    }
}

/// Boxed, its type erased: the close sequence's state (timers, two futures) exists only while closing,
/// and would otherwise enlarge every session for its whole life.
type Finish<'a> = Pin<Box<dyn Future<Output = (DirectionStats, DirectionStats)> + Send + 'a>>;

// The large variant is the one a session lives in; boxing it would add an allocation per session.
#[allow(clippy::large_enum_variant)]
enum Phase<'a, C, U> {
    Relaying(Driver<'a, C, U>),
    Closing {
        reason: EndReason,
        plan: ClosePlan,
        finish: Finish<'a>,
    },
    /// Refused before relaying anything (an invalid configuration); both sides are already gone.
    Refused(EndReason),
    Done,
}

impl<'a, C, U> Phase<'a, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'a,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    /// The close sequence for `reason`.
    fn closing(driver: Driver<'a, C, U>, reason: EndReason, cancel: &CancelHandle) -> Self {
        let plan = ClosePlan::for_end(&reason);
        Phase::Closing { reason, plan, finish: Box::pin(driver.finish(plan, cancel.clone())) }
    }
}

pin_project_lite::pin_project! {
    /// A relay in progress, the future [`super::relay`] returns; it completes with the
    /// [`RelayEnd`] once both sides are closed.
    ///
    /// Written out rather than an `async fn`, so a session's relay state is exactly this struct:
    /// an `async fn` keeps its arguments and each moved-from local in their own slots across
    /// every await, so the sockets and buffers would be stored two or three times. The timer and
    /// the cancel watch live inline, pinned with the rest, not in boxes of their own.
    #[must_use = "a relay does nothing unless polled"]
    pub struct Relaying<'a, C, U> {
        phase: Phase<'a, C, U>,
        // One lazy timer per session: re-armed only when it fires early or must fire sooner.
        #[pin]
        sleep: Sleep,
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
        cancel: CancelHandle,
        metrics: &'a SessionMetrics,
        started: Instant,
    }
}

/// Starts relaying between `client` and `upstream` (see [`super::relay`]).
pub(crate) fn relay_io<'a, C, U>(
    client: C,
    client_leftover: BytesMut,
    upstream: UpstreamParts<U>,
    cfg: &'a RelayConfig,
    cancel: &CancelHandle,
    metrics: &'a SessionMetrics,
) -> Relaying<'a, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'a,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    let started = Instant::now();
    metrics.upstream_connections.inc();
    let io = OwnedUpstream { io: upstream.io, _release: ReleaseOnDrop { metrics, cancel: cancel.clone() } };
    let (phase, deadline) = match cfg.validate() {
        Err(e) => {
            // Refused before relaying anything: both sides are dropped.
            drop(io);
            drop(client);
            metrics.closed(e.close_reason());
            (Phase::Refused(EndReason::Error(e)), started)
        }
        Ok(()) => {
            let c2u = Pipe::new(Cipher::Seal(upstream.send), Buf::from(client_leftover), Buf::default(), cfg, metrics);
            let u2c = Pipe::new(
                Cipher::Open(upstream.recv),
                Buf::from(upstream.sealed_leftover),
                Buf::from(upstream.to_client),
                cfg,
                metrics,
            );
            let mut state = RelayState::new(c2u, u2c, cfg, started);
            let deadline = state.poll_timeout();
            // chatd's `<success>` (queued in `out`) and the stanzas read with it (in `inb`) leave
            // in the session's first write.
            let first = state.u2c.transform_all();
            let driver = Driver { client, upstream: io, state };
            match first {
                Ok(()) => (Phase::Relaying(driver), deadline),
                Err(e) => {
                    (Phase::closing(driver, end_reason(Direction::ToClient, PipeEnd::Session(e)), cancel), deadline)
                }
            }
        }
    };
    Relaying {
        phase,
        sleep: tokio::time::sleep_until(deadline),
        cancelled: cancel.token().clone().cancelled_owned(),
        cancel: cancel.clone(),
        metrics,
        started,
    }
}

impl<'a, C, U> Future for Relaying<'a, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'a,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let mut this = self.project();
        loop {
            match this.phase {
                Phase::Relaying(driver) => {
                    let reason = ready!(driver.poll_run(cx, this.sleep.as_mut(), this.cancelled.as_mut(), this.cancel));
                    let Phase::Relaying(driver) = std::mem::replace(this.phase, Phase::Done) else { break };
                    *this.phase = Phase::closing(driver, reason, this.cancel);
                }
                Phase::Closing { finish, .. } => {
                    let (to_upstream, to_client) = ready!(finish.as_mut().poll(cx));
                    let Phase::Closing { reason, plan, .. } = std::mem::replace(this.phase, Phase::Done) else { break };
                    let end = RelayEnd { reason, to_upstream, to_client, duration: this.started.elapsed() };
                    this.metrics.closed(plan.reason);
                    debug!(reason = %plan.reason, ?end.to_upstream, ?end.to_client, "relay ended");
                    return Poll::Ready(end);
                }
                Phase::Refused(_) => {
                    let Phase::Refused(reason) = std::mem::replace(this.phase, Phase::Done) else { break };
                    return Poll::Ready(RelayEnd {
                        reason,
                        to_upstream: DirectionStats::default(),
                        to_client: DirectionStats::default(),
                        duration: this.started.elapsed(),
                    });
                }
                Phase::Done => break,
            }
        }
        panic!("a relay was polled after it completed")
    }
}

struct Driver<'a, C, U> {
    client: C,
    upstream: OwnedUpstream<'a, U>,
    state: RelayState<'a>,
}

impl<C, U> Driver<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
        mut cancelled: Pin<&mut WaitForCancellationFutureOwned>,
        cancel: &CancelHandle,
    ) -> Poll<EndReason> {
        loop {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(EndReason::Cancelled(cancel.reason().unwrap_or(CancelReason::Shutdown)));
            }
            let (mut up, mut down) = (Activity::default(), Activity::default());
            let state = &mut self.state;
            let end = pump(&mut state.u2c, cx, &mut self.upstream.io, &mut self.client, &mut down)
                .map_err(|e| end_reason(Direction::ToClient, e))
                .and_then(|()| {
                    pump(&mut state.c2u, cx, &mut self.client, &mut self.upstream.io, &mut up)
                        .map_err(|e| end_reason(Direction::ToUpstream, e))
                });
            state.publish();
            if let Err(end) = end {
                return Poll::Ready(end);
            }
            if let Some(end) = state.after_pass(Instant::now(), up, down) {
                return Poll::Ready(end);
            }
            let next = state.poll_timeout();
            if sleep.deadline() > next || sleep.is_elapsed() {
                sleep.as_mut().reset(next);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: go round once more to act on it.
        }
    }

    /// Carries out `plan`; returns the final counts. The upstream half and the client half run
    /// concurrently, so a slow client never delays releasing the upstream.
    async fn finish(self, plan: ClosePlan, cancel: CancelHandle) -> (DirectionStats, DirectionStats) {
        let Driver { mut client, mut upstream, state, .. } = self;
        let linger = state.timers.cfg().close_linger;
        let RelayState { mut c2u, mut u2c, .. } = state;
        c2u.unpublish();
        u2c.unpublish();
        let stats = (c2u.stats(), u2c.stats());

        let upstream_side = async {
            if plan.forward != Forward::No {
                let wait = plan.forward == Forward::UntilWritten;
                let forward = std::future::poll_fn(|cx| {
                    loop {
                        let Ok(sealed) = c2u.transform_one() else { return Poll::Ready(()) };
                        let Ok(progress) = poll_drain(&mut c2u, cx, &mut upstream.io) else { return Poll::Ready(()) };
                        if c2u.is_drained() && !sealed {
                            return Poll::Ready(());
                        }
                        if !progress && !sealed {
                            return if wait { Poll::Pending } else { Poll::Ready(()) };
                        }
                    }
                });
                let _ = tokio::time::timeout(linger, forward).await;
            }
            if plan.upstream != UpstreamClose::Drop {
                let _ = tokio::time::timeout(linger, async {
                    let _ = upstream.io.shutdown().await;
                    if plan.upstream == UpstreamClose::FinAndAwaitFin {
                        wire_io::close::discard_until_eof(&mut upstream.io).await;
                    }
                })
                .await;
            }
            // Closes the socket and releases the registry slot (see `OwnedUpstream`).
            drop(upstream);
            drop(c2u);
        };

        if plan.farewell
            && let Some(farewell) = cancel.farewell()
            && farewell.len() <= MAX_FRAME_LEN
        {
            u2c.push_frame(&farewell);
        }
        let client_side = async {
            if plan.client != ClientClose::Drop {
                let _ = tokio::time::timeout(linger, async {
                    if plan.client == ClientClose::DeliverThenFin {
                        let delivered = std::future::poll_fn(|cx| match poll_drain(&mut u2c, cx, &mut client) {
                            Err(e) => Poll::Ready(Err(e)),
                            Ok(_) if u2c.is_drained() => Poll::Ready(Ok(())),
                            Ok(_) => Poll::Pending,
                        })
                        .await;
                        if delivered.is_err() {
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

/// Moves what it can in one direction: write, transform, read, until nothing moves or the budget
/// is spent. `Err` when the direction stopped.
fn pump<R, W>(
    pipe: &mut Pipe<'_>,
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    act: &mut Activity,
) -> Result<(), PipeEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    for _ in 0..STEPS_PER_POLL {
        // Written before the next transform, so a frame alone in `inb` finds `out` empty and is
        // opened or sealed in place rather than copied behind it.
        let mut step = poll_drain(pipe, cx, dst).map_err(PipeEnd::Dest)?;
        while pipe.transform_one()? {
            step = true;
        }
        if pipe.is_ended() {
            return Err(PipeEnd::StreamEnded);
        }
        match poll_fill(pipe, cx, src)? {
            Fill::Read => {
                step = true;
                act.source_read = true;
            }
            Fill::Eof => return Err(PipeEnd::SourceEof),
            Fill::Idle => {}
        }
        if !step {
            return Ok(());
        }
        act.any = true;
    }
    // Budget spent with work left: let other tasks run, come back at once.
    cx.waker().wake_by_ref();
    Ok(())
}

enum Fill {
    Read,
    Eof,
    Idle,
}

/// Reads from `src` where the pipe says, if it wants bytes.
fn poll_fill<R: AsyncRead + Unpin>(pipe: &mut Pipe<'_>, cx: &mut Context<'_>, src: &mut R) -> Result<Fill, PipeEnd> {
    let read = match pipe.read_into()? {
        None => return Ok(Fill::Idle),
        Some(ReadInto::Buffer(mut spare)) => match poll_read_buf(Pin::new(&mut *src), cx, &mut spare) {
            Poll::Pending => return Ok(Fill::Idle),
            Poll::Ready(r) => r,
        },
        Some(ReadInto::Scratch(n)) => {
            let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut scratch[..n]);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => return Ok(Fill::Idle),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Ready(Ok(())) => {
                    pipe.read_scratch(rb.filled());
                    Ok(rb.filled().len())
                }
            }
        }
    };
    match read {
        Ok(0) => Ok(Fill::Eof),
        Ok(_) => {
            pipe.on_read();
            Ok(Fill::Read)
        }
        Err(e) => Err(PipeEnd::Source(e)),
    }
}

/// Writes the pipe's output (all frames ready, in one write when the destination takes it), then
/// flushes. `Ok(true)` if bytes were written.
fn poll_drain<W: AsyncWrite + Unpin>(pipe: &mut Pipe<'_>, cx: &mut Context<'_>, dst: &mut W) -> io::Result<bool> {
    let mut progress = false;
    while !pipe.output().is_empty() {
        match Pin::new(&mut *dst).poll_write(cx, pipe.output()) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                pipe.on_written(n);
                progress = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(progress),
        }
    }
    if pipe.needs_flush() {
        match Pin::new(&mut *dst).poll_flush(cx) {
            Poll::Ready(Ok(())) => pipe.on_flushed(),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
    }
    Ok(progress)
}
