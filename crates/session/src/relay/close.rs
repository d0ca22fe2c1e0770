//! How a relay ends, sans-IO: which [`EndReason`] a stopped direction means, and the close plan
//! each reason gets (the relay rows of the close table in `docs/session.md`, one test per row).

use std::io;

use super::EndReason;
use crate::error::{CloseReason, SessionError, is_disconnect};
use crate::metrics::Direction;

/// Why one direction stopped moving bytes.
#[derive(Debug)]
pub(crate) enum PipeEnd {
    /// The source closed (EOF).
    SourceEof,
    /// A stream-ending stanza was transformed (only chatd's stanzas are classified).
    StreamEnded,
    /// Reading the source failed.
    Source(io::Error),
    /// Writing the destination failed.
    Dest(io::Error),
    /// A frame broke the rules (too large, unauthentic) or could not be sealed.
    Session(SessionError),
}

impl From<SessionError> for PipeEnd {
    fn from(e: SessionError) -> Self {
        PipeEnd::Session(e)
    }
}

/// The relay's end when the direction `dir` stopped with `end`: a peer that went away (EOF, or a
/// reset / broken pipe on either of its sockets' halves) closed; any other I/O error is a fault on
/// that side.
pub(crate) fn end_reason(dir: Direction, end: PipeEnd) -> EndReason {
    let (source, dest) = match dir {
        Direction::ToUpstream => (Side::Client, Side::Upstream),
        Direction::ToClient => (Side::Upstream, Side::Client),
    };
    match end {
        PipeEnd::SourceEof => source.closed(),
        PipeEnd::StreamEnded => EndReason::UpstreamStreamError,
        PipeEnd::Source(e) if is_disconnect(&e) => source.closed(),
        PipeEnd::Source(e) => source.failed(e),
        PipeEnd::Dest(e) if is_disconnect(&e) => dest.closed(),
        PipeEnd::Dest(e) => dest.failed(e),
        PipeEnd::Session(e) => EndReason::Error(e),
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn closed(self) -> EndReason {
        match self {
            Side::Client => EndReason::ClientClosed,
            Side::Upstream => EndReason::UpstreamClosed,
        }
    }

    fn failed(self, e: io::Error) -> EndReason {
        EndReason::Error(match self {
            Side::Client => SessionError::ClientIo(e),
            Side::Upstream => SessionError::UpstreamIo(e),
        })
    }
}

/// Client frames the relay has read but not yet written to chatd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Dropped.
    No,
    /// Sealed and written in one attempt, so the upstream close is never delayed (client FIN).
    OneAttempt,
    /// Sealed and written, waiting for chatd to take them, bounded by `close_linger` (after a
    /// cancel the client was told to go, and its last stanzas must not be lost).
    UntilWritten,
}

/// How the upstream socket is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamClose {
    /// Dropped at once: it failed.
    Drop,
    /// FIN, then dropped: chatd already closed.
    Fin,
    /// FIN, then read and discard until chatd's FIN (bounded by `close_linger`), so the socket
    /// closes cleanly instead of with a reset; then dropped.
    FinAndAwaitFin,
}

/// How the client stream is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientClose {
    /// Dropped at once: it failed.
    Drop,
    /// Shut down (FIN / close_notify / WebSocket close), then dropped; what chatd sent and was
    /// not yet written is not delivered.
    Fin,
    /// Everything chatd sent that is ready (and the farewell, if any) written first, then shut
    /// down; both bounded by `close_linger`.
    DeliverThenFin,
}

/// The close sequence for one end reason. The upstream half and the client half run
/// concurrently, so a slow client never delays releasing the upstream; each step is bounded by
/// `close_linger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClosePlan {
    /// The `reason` label counted in `waproxy_session_closes_total`.
    pub(crate) reason: CloseReason,
    pub(crate) forward: Forward,
    pub(crate) upstream: UpstreamClose,
    /// The cancel's farewell stanza (if it has one) goes to the client after what chatd sent.
    pub(crate) farewell: bool,
    pub(crate) client: ClientClose,
}

impl ClosePlan {
    pub(crate) fn for_end(end: &EndReason) -> Self {
        let forward = match end {
            EndReason::ClientClosed => Forward::OneAttempt,
            EndReason::Cancelled(_) => Forward::UntilWritten,
            _ => Forward::No,
        };
        let upstream = match end {
            EndReason::Error(SessionError::UpstreamIo(_)) => UpstreamClose::Drop,
            EndReason::UpstreamClosed => UpstreamClose::Fin,
            _ => UpstreamClose::FinAndAwaitFin,
        };
        let client = match end {
            EndReason::Error(SessionError::ClientIo(_)) => ClientClose::Drop,
            EndReason::UpstreamClosed
            | EndReason::UpstreamStreamError
            | EndReason::Cancelled(_)
            | EndReason::ClientIdle => ClientClose::DeliverThenFin,
            _ => ClientClose::Fin,
        };
        ClosePlan {
            reason: end.close_reason(),
            forward,
            upstream,
            farewell: matches!(end, EndReason::Cancelled(_)),
            client,
        }
    }
}

#[cfg(test)]
mod tests {
    //! One test per relay row of the close table in `docs/session.md` (the rows a relay can end
    //! with; `login_rejected`, `upstream_unreachable`, `upstream_handshake_failed` and
    //! `superseded` end a session before any relay runs).

    use wire::noise::NoiseError;

    use super::*;
    use crate::cancel::CancelReason;

    fn plan(end: EndReason) -> ClosePlan {
        ClosePlan::for_end(&end)
    }

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::from(kind)
    }

    #[test]
    fn client_closed() {
        for (dir, end) in [
            (Direction::ToUpstream, PipeEnd::SourceEof),
            (Direction::ToUpstream, PipeEnd::Source(io(io::ErrorKind::ConnectionReset))),
            (Direction::ToClient, PipeEnd::Dest(io(io::ErrorKind::BrokenPipe))),
        ] {
            assert!(matches!(end_reason(dir, end), EndReason::ClientClosed));
        }
        assert_eq!(
            plan(EndReason::ClientClosed),
            ClosePlan {
                reason: CloseReason::ClientClosed,
                // "Stanzas the client sent before its FIN are written first, in one attempt"
                forward: Forward::OneAttempt,
                upstream: UpstreamClose::FinAndAwaitFin,
                farewell: false,
                // The client is gone: nothing is delivered.
                client: ClientClose::Fin,
            }
        );
    }

    #[test]
    fn client_idle() {
        assert_eq!(
            plan(EndReason::ClientIdle),
            ClosePlan {
                reason: CloseReason::ClientIdle,
                forward: Forward::No,
                upstream: UpstreamClose::FinAndAwaitFin,
                farewell: false,
                // "what chatd had sent, then FIN. No stanza"
                client: ClientClose::DeliverThenFin,
            }
        );
    }

    #[test]
    fn client_error() {
        for (dir, end) in [
            (Direction::ToUpstream, PipeEnd::Source(io(io::ErrorKind::PermissionDenied))),
            (Direction::ToClient, PipeEnd::Dest(io(io::ErrorKind::Other))),
        ] {
            assert!(matches!(end_reason(dir, end), EndReason::Error(SessionError::ClientIo(_))));
        }
        assert_eq!(
            plan(EndReason::Error(SessionError::ClientIo(io(io::ErrorKind::Other)))),
            ClosePlan {
                reason: CloseReason::ClientError,
                forward: Forward::No,
                upstream: UpstreamClose::FinAndAwaitFin,
                farewell: false,
                // "the connection dropped"
                client: ClientClose::Drop,
            }
        );
    }

    #[test]
    fn client_protocol_error() {
        let too_large = SessionError::ClientFrameTooLarge { len: 2033, max: 2032 };
        assert_eq!(
            plan(EndReason::Error(too_large)),
            ClosePlan {
                reason: CloseReason::ClientProtocolError,
                forward: Forward::No,
                upstream: UpstreamClose::FinAndAwaitFin,
                farewell: false,
                client: ClientClose::Fin,
            }
        );
    }

    #[test]
    fn upstream_closed() {
        for (dir, end) in [
            (Direction::ToClient, PipeEnd::SourceEof),
            (Direction::ToClient, PipeEnd::Source(io(io::ErrorKind::ConnectionReset))),
            (Direction::ToUpstream, PipeEnd::Dest(io(io::ErrorKind::ConnectionReset))),
        ] {
            assert!(matches!(end_reason(dir, end), EndReason::UpstreamClosed));
        }
        assert_eq!(
            plan(EndReason::UpstreamClosed),
            ClosePlan {
                reason: CloseReason::UpstreamClosed,
                forward: Forward::No,
                // "its own close acknowledged": our FIN, no wait (chatd's FIN already came).
                upstream: UpstreamClose::Fin,
                farewell: false,
                // "everything chatd sent before, then FIN"
                client: ClientClose::DeliverThenFin,
            }
        );
    }

    #[test]
    fn upstream_stream_error() {
        assert!(matches!(end_reason(Direction::ToClient, PipeEnd::StreamEnded), EndReason::UpstreamStreamError));
        assert_eq!(
            plan(EndReason::UpstreamStreamError),
            ClosePlan {
                reason: CloseReason::UpstreamStreamError,
                forward: Forward::No,
                upstream: UpstreamClose::FinAndAwaitFin,
                farewell: false,
                // "everything up to and including that stanza, then FIN" (the pipe reads nothing
                // after it).
                client: ClientClose::DeliverThenFin,
            }
        );
    }

    #[test]
    fn upstream_error() {
        for (dir, end) in [
            (Direction::ToClient, PipeEnd::Source(io(io::ErrorKind::Other))),
            (Direction::ToUpstream, PipeEnd::Dest(io(io::ErrorKind::PermissionDenied))),
        ] {
            assert!(matches!(end_reason(dir, end), EndReason::Error(SessionError::UpstreamIo(_))));
        }
        assert_eq!(
            plan(EndReason::Error(SessionError::UpstreamIo(io(io::ErrorKind::Other)))),
            ClosePlan {
                reason: CloseReason::UpstreamError,
                forward: Forward::No,
                // "the connection dropped"
                upstream: UpstreamClose::Drop,
                farewell: false,
                client: ClientClose::Fin,
            }
        );
    }

    #[test]
    fn upstream_protocol_error() {
        for error in [
            SessionError::UpstreamFrameTooLarge { len: 9, max: 8 },
            SessionError::Open(NoiseError::Open { counter: 0 }),
        ] {
            assert_eq!(
                plan(EndReason::Error(error)),
                ClosePlan {
                    reason: CloseReason::UpstreamProtocolError,
                    forward: Forward::No,
                    upstream: UpstreamClose::FinAndAwaitFin,
                    farewell: false,
                    client: ClientClose::Fin,
                }
            );
        }
    }

    fn cancelled(reason: CancelReason, label: CloseReason) {
        assert_eq!(
            plan(EndReason::Cancelled(reason)),
            ClosePlan {
                reason: label,
                // The client's last stanzas are not lost: waited for, bounded by close_linger.
                forward: Forward::UntilWritten,
                upstream: UpstreamClose::FinAndAwaitFin,
                // "what chatd had sent, then <the farewell>, then FIN"
                farewell: true,
                client: ClientClose::DeliverThenFin,
            }
        );
    }

    #[test]
    fn replaced() {
        cancelled(CancelReason::Replaced, CloseReason::Replaced);
    }

    #[test]
    fn draining() {
        cancelled(CancelReason::Draining, CloseReason::Draining);
    }

    #[test]
    fn shutdown() {
        // The same plan; `shutdown_now` simply cancels without a farewell.
        cancelled(CancelReason::Shutdown, CloseReason::Shutdown);
    }

    #[test]
    fn internal() {
        // During the relay: the send nonce exhausted (`Seal`).
        assert_eq!(
            plan(EndReason::Error(SessionError::Seal(NoiseError::NonceExhausted {
                direction: wire::noise::Direction::Send
            }))),
            ClosePlan {
                reason: CloseReason::Internal,
                forward: Forward::No,
                upstream: UpstreamClose::FinAndAwaitFin,
                farewell: false,
                client: ClientClose::Fin,
            }
        );
    }

    #[test]
    fn a_frame_error_ends_the_relay_as_that_error() {
        let end = end_reason(Direction::ToUpstream, SessionError::ClientFrameTooLarge { len: 9, max: 8 }.into());
        assert!(matches!(end, EndReason::Error(SessionError::ClientFrameTooLarge { len: 9, max: 8 })));
    }
}
