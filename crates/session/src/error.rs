//! Errors and the close reasons they map to.
//!
//! Every way a session can end has one [`CloseReason`]: the `reason` label of
//! `waproxy_session_closes_total` and the row of the close-reason table in `docs/session.md`.
//! Errors ([`SessionError`]) are typed per cause and map onto those reasons with
//! [`SessionError::close_reason`]. No error or reason carries a secret: keys, tokens and the
//! `ClientPayload` never appear in messages.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use wire::DecodeError;
use wire::noise::NoiseError;

use crate::cancel::CancelReason;
use crate::upstream::UpstreamAddr;

/// Why a session ended, as a bounded set (a metric label, never a user identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed its connection (FIN or RST); the upstream was closed at once.
    ClientClosed,
    /// The client sent nothing for `idle_timeout`; both sides were closed.
    ClientIdle,
    /// Reading from or writing to the client failed (other than a close).
    ClientError,
    /// The client broke the framing (a frame above the limit).
    ClientProtocolError,
    /// chatd closed the connection; what it had sent was relayed, then the client was closed.
    UpstreamClosed,
    /// chatd sent `<stream:error>` or `<xmlstreamend/>`; it was relayed, then both were closed.
    UpstreamStreamError,
    /// Reading from or writing to chatd failed (other than a close).
    UpstreamError,
    /// chatd broke the protocol: an oversized or unauthentic frame, an undecodable first stanza.
    UpstreamProtocolError,
    /// chatd refused the login with its own `<failure>`, which the client got.
    LoginRejected,
    /// chatd could not be reached (its name did not resolve, the TCP connect failed or timed out).
    UpstreamUnreachable,
    /// The Noise handshake or the certificate chain failed, or took too long.
    UpstreamHandshakeFailed,
    /// A newer login for the same account replaced this session.
    Replaced,
    /// A newer login for the same account arrived while this one was still waiting for its turn.
    Superseded,
    /// The proxy is draining: closed with a reconnect-elsewhere hint.
    Draining,
    /// The proxy is shutting down (hard stop, no hint).
    Shutdown,
    /// A bug or an impossible state (bad configuration, nonce exhaustion).
    Internal,
}

impl CloseReason {
    /// Every reason, for pre-creating metric label values.
    pub const ALL: [CloseReason; 16] = [
        CloseReason::ClientClosed,
        CloseReason::ClientIdle,
        CloseReason::ClientError,
        CloseReason::ClientProtocolError,
        CloseReason::UpstreamClosed,
        CloseReason::UpstreamStreamError,
        CloseReason::UpstreamError,
        CloseReason::UpstreamProtocolError,
        CloseReason::LoginRejected,
        CloseReason::UpstreamUnreachable,
        CloseReason::UpstreamHandshakeFailed,
        CloseReason::Replaced,
        CloseReason::Superseded,
        CloseReason::Draining,
        CloseReason::Shutdown,
        CloseReason::Internal,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ClientIdle => "client_idle",
            CloseReason::ClientError => "client_error",
            CloseReason::ClientProtocolError => "client_protocol_error",
            CloseReason::UpstreamClosed => "upstream_closed",
            CloseReason::UpstreamStreamError => "upstream_stream_error",
            CloseReason::UpstreamError => "upstream_error",
            CloseReason::UpstreamProtocolError => "upstream_protocol_error",
            CloseReason::LoginRejected => "login_rejected",
            CloseReason::UpstreamUnreachable => "upstream_unreachable",
            CloseReason::UpstreamHandshakeFailed => "upstream_handshake_failed",
            CloseReason::Replaced => "replaced",
            CloseReason::Superseded => "superseded",
            CloseReason::Draining => "draining",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Internal => "internal",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<CancelReason> for CloseReason {
    fn from(r: CancelReason) -> Self {
        match r {
            CancelReason::Replaced => CloseReason::Replaced,
            CancelReason::Draining => CloseReason::Draining,
            CancelReason::Shutdown => CloseReason::Shutdown,
        }
    }
}

/// Everything that can go wrong in a session.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A configuration value is out of range.
    #[error("invalid configuration: {key}: {message}")]
    Config { key: &'static str, message: String },
    /// chatd's host name did not resolve to an address.
    #[error("resolving chatd's address {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    /// The TCP connection to chatd failed.
    #[error("connecting to chatd at {addr}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The dial (resolution and TCP connect) did not complete in time.
    #[error("connecting to chatd at {addr} took longer than {after:?}")]
    ConnectTimeout { addr: UpstreamAddr, after: Duration },
    /// The PROXY header could not be built.
    #[error("building the PROXY header")]
    ProxyHeader(#[source] io::Error),
    /// The handshake (header, Noise XX, login, first stanza) did not complete in time.
    #[error("upstream handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    /// The Noise handshake failed, the certificate chain included.
    #[error("upstream handshake")]
    Handshake(#[source] NoiseError),
    /// chatd closed the connection before its first stanza.
    #[error("chatd closed the connection during the handshake")]
    UpstreamClosedInHandshake,
    /// chatd announced a frame above the limit.
    #[error("chatd sent a frame of {len} bytes, above the {max}-byte limit")]
    UpstreamFrameTooLarge { len: usize, max: usize },
    /// chatd's first stanza is not a stanza.
    #[error("chatd's first stanza does not decode")]
    FirstStanza(#[source] DecodeError),
    /// A chatd frame failed authentication (or was shorter than its tag).
    #[error("opening a chatd frame")]
    Open(#[source] NoiseError),
    /// Sealing a client stanza failed (nonce exhaustion after 2^32 frames).
    #[error("sealing a client stanza")]
    Seal(#[source] NoiseError),
    /// The chatd socket failed.
    #[error("upstream i/o")]
    UpstreamIo(#[source] io::Error),
    /// The client socket failed.
    #[error("client i/o")]
    ClientIo(#[source] io::Error),
    /// The client announced a frame above the limit.
    #[error("the client sent a frame of {len} bytes, above the {max}-byte limit")]
    ClientFrameTooLarge { len: usize, max: usize },
    /// A newer login for the same account took the slot while this one waited.
    #[error("a newer login for the same account superseded this one")]
    Superseded,
    /// The registry is draining and takes no new sessions.
    #[error("the proxy is draining and accepts no new sessions")]
    Draining,
    /// The session was cancelled (replaced, drained, shut down) before its login completed.
    #[error("the session was cancelled ({0}) before its login completed")]
    Cancelled(CancelReason),
    /// The client closed its connection before the login completed.
    #[error("the client closed its connection before the login completed")]
    ClientGone,
}

impl SessionError {
    /// The close reason this error ends a session with.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            SessionError::Config { .. } | SessionError::ProxyHeader(_) | SessionError::Seal(_) => CloseReason::Internal,
            SessionError::Resolve { .. } | SessionError::Connect { .. } | SessionError::ConnectTimeout { .. } => {
                CloseReason::UpstreamUnreachable
            }
            SessionError::HandshakeTimeout(_)
            | SessionError::Handshake(_)
            | SessionError::UpstreamClosedInHandshake => CloseReason::UpstreamHandshakeFailed,
            SessionError::UpstreamFrameTooLarge { .. } | SessionError::FirstStanza(_) | SessionError::Open(_) => {
                CloseReason::UpstreamProtocolError
            }
            SessionError::UpstreamIo(_) => CloseReason::UpstreamError,
            SessionError::ClientIo(_) => CloseReason::ClientError,
            SessionError::ClientFrameTooLarge { .. } => CloseReason::ClientProtocolError,
            SessionError::Superseded => CloseReason::Superseded,
            SessionError::Draining => CloseReason::Draining,
            SessionError::Cancelled(r) => CloseReason::from(*r),
            SessionError::ClientGone => CloseReason::ClientClosed,
        }
    }
}

/// `true` for the I/O errors that mean "the peer went away" rather than a fault.
pub(crate) fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in CloseReason::ALL {
            let s = r.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert!(seen.insert(s), "{s} twice");
        }
    }

    #[test]
    fn errors_map_to_reasons() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(SessionError::Connect { addr, source: refused }.close_reason(), CloseReason::UpstreamUnreachable);
        let unknown = io::Error::from(io::ErrorKind::NotFound);
        let host = "chatd.invalid:5222".to_owned();
        assert_eq!(SessionError::Resolve { host, source: unknown }.close_reason(), CloseReason::UpstreamUnreachable);
        assert_eq!(
            SessionError::HandshakeTimeout(Duration::from_secs(1)).close_reason(),
            CloseReason::UpstreamHandshakeFailed
        );
        assert_eq!(SessionError::Cancelled(CancelReason::Replaced).close_reason(), CloseReason::Replaced);
        assert_eq!(
            SessionError::ClientFrameTooLarge { len: 9, max: 8 }.close_reason(),
            CloseReason::ClientProtocolError
        );
        assert!(is_disconnect(&io::Error::from(io::ErrorKind::ConnectionReset)));
        assert!(!is_disconnect(&io::Error::from(io::ErrorKind::PermissionDenied)));
    }
}
