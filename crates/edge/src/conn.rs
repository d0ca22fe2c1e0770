//! One client connection at the edge: admission ([`crate::admission`]), then the session.
//!
//! Admission's order is the proxy's security contract: nothing upstream happens before the
//! login frame parsed, a session slot was free and the Partner token verified and named this
//! account. Only then does the session layer claim the account (closing any older session of the
//! same account and waiting for its upstream to be gone) and dial chatd.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use session::{CloseReason, EndReason, FirstReply, SessionContext, run_session_with, stanza};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wire::frame::HEADER_LEN;
use zeroize::{Zeroize as _, Zeroizing};

use crate::admission::{self, Gates};
use crate::auth::Authenticator;
use crate::cidr::Cidr;
use crate::limits::{Limiter, RateLimiter};
use crate::metrics::{EdgeMetrics, LoginResult};

/// Everything the edge's connections share.
pub struct EdgeContext {
    pub auth: Authenticator,
    /// The session layer; its upstream address is resolved at every dial.
    pub session: SessionContext,
    pub metrics: EdgeMetrics,
    pub login_timeout: Duration,
    pub max_frame_size: usize,
    /// One slot per session: at `limits.max_sessions`, new logins are shed with 429.
    pub session_slots: Limiter,
    /// One slot per login whose chatd login has not answered yet: beyond
    /// `limits.max_concurrent_handshakes`, new logins are shed with 429.
    pub handshake_slots: Limiter,
    /// New connections per second per source IP (`limits.per_ip_connections_per_sec`).
    pub rate_limit: RateLimiter,
    /// How long a close may take once one side is done (`edge.fin_timeout_secs`).
    pub fin_timeout: Duration,
    /// TCP keepalive idle time on client sockets (`edge.tcp_keepalive_secs`); `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// `Some`: the plain TCP listener requires a PROXY header, from these sources only.
    pub proxy_protocol_trusted: Option<Vec<Cidr>>,
    /// Cancelled when draining starts: the listeners stop accepting and close their sockets.
    pub stop_accepting: CancellationToken,
}

impl EdgeContext {
    /// What admission consults.
    fn gates(&self) -> Gates<'_, Authenticator> {
        Gates {
            rate_limit: &self.rate_limit,
            registry: &self.session.registry,
            session_slots: &self.session_slots,
            tokens: &self.auth,
            handshake_slots: &self.handshake_slots,
            max_login_frame: LOGIN_FRAME_MAX.min(self.max_frame_size),
        }
    }
}

pub use crate::login::LOGIN_FRAME_MAX;

/// `<failure reason="429" retry_after="N"/>`: shed; retry after N seconds (with backoff, possibly
/// elsewhere).
pub fn overloaded(retry_after_secs: u32) -> Bytes {
    let node = wire::Node::new("failure").attr("reason", "429").attr("retry_after", retry_after_secs.to_string());
    wire::encode::encode(&node).map(Bytes::from).unwrap_or_else(|_| stanza::failure("429"))
}

/// Writes `payload` as one frame and closes, all within `linger`; then reads and discards what
/// the client still sends (at most 64 KiB, within `linger`), so that the close is a FIN and the
/// refusal is not lost to a reset.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, payload: &[u8], linger: Duration) {
    let _ = tokio::time::timeout(linger, async {
        write_payload(stream, payload).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Reads the login frame: its header from `buf` or the stream, then its body into a buffer of its
/// own that is wiped when dropped (it holds the client's private key and token). The bytes of it
/// that arrived in `buf` are wiped there; bytes past it stay in `buf`. `Ok(None)` on EOF or error,
/// `Err` for a frame longer than `max`.
pub(crate) async fn read_login_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Zeroizing<Vec<u8>>>, ()> {
    let len = loop {
        match wire::frame::peek_len(buf) {
            Some(len) if len > max => return Err(()),
            Some(len) => break len,
            None => {
                buf.reserve(64);
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                }
            }
        }
    };
    buf.advance(HEADER_LEN);
    let mut frame = Zeroizing::new(vec![0; len]);
    let have = buf.len().min(len);
    frame[..have].copy_from_slice(&buf[..have]);
    buf[..have].zeroize();
    buf.advance(have);
    match stream.read_exact(&mut frame[have..]).await {
        Ok(_) => Ok(Some(frame)),
        Err(_) => Ok(None),
    }
}

async fn write_payload<S: AsyncWrite + Unpin>(stream: &mut S, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    wire::frame::encode_frame(payload, &mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Serves one client connection to its end. `deadline` ends the pre-login phase: the listener
/// sets it to the accept time plus `login_timeout`, so that a TLS handshake, a WebSocket upgrade
/// or a PROXY header shares that one timeout with the login frame.
pub async fn serve_client<S>(ctx: Arc<EdgeContext>, stream: S, peer: SocketAddr, local: SocketAddr, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    serve_client_with(ctx, stream, peer, local, BytesMut::with_capacity(1024), deadline, |_| {}).await
}

/// Serves one client connection whose first bytes (after a PROXY header) are already in `buf`.
/// `peer` is the client's address as trusted by the listener (the PROXY header's or a trusted
/// gateway's forwarded header's, else the TCP peer). `login_read` is called on the stream once
/// the login frame has been read, before anything else is (the WebSocket edge raises its
/// message bound there).
pub async fn serve_client_with<S, F>(
    ctx: Arc<EdgeContext>,
    mut stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    mut buf: BytesMut,
    deadline: Instant,
    login_read: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnOnce(&mut S) + Send,
{
    let started = Instant::now();
    // Boxed: admission (frame read, token check) is large and short-lived; inline, its space
    // would stay in this task for the session's whole life.
    let admitted =
        Box::pin(admission::admit(&ctx.gates(), &mut stream, &mut buf, peer.ip(), deadline, login_read)).await;
    let admitted = match admitted {
        Ok(Some(admitted)) => admitted,
        Ok(None) => return,
        Err(refusal) => {
            refusal.record(&ctx.metrics, peer);
            let payload = refusal.stanza();
            if refusal.drains_input() {
                refuse(&mut stream, &payload, ctx.fin_timeout).await;
            } else {
                let _ = tokio::time::timeout(ctx.fin_timeout, async {
                    write_payload(&mut stream, &payload).await?;
                    stream.shutdown().await
                })
                .await;
            }
            return;
        }
    };
    ctx.metrics.login_check_duration.observe(started.elapsed().as_secs_f64());

    // The token proved the account: the session layer claims it (closing any older session of
    // the account and waiting for its upstream to be gone), dials chatd and relays. The handshake
    // slot is held until chatd's answer (or the proxy's own) is known.
    let account = admitted.account();
    let (request, _session_slot, handshake_slot) = admitted.into_session(peer, local);
    ctx.metrics.login(LoginResult::Forwarded);
    let outcome = run_session_with(&ctx.session, request, stream, buf, move || drop(handshake_slot)).await;
    let first = match &outcome.first {
        FirstReply::Accepted(_) => "accepted",
        FirstReply::Rejected(_) => "rejected by chatd",
        FirstReply::ProxyFailure { .. } => "failed before chatd answered",
    };
    // A fault's cause goes in the line; one the proxy itself caused (`internal`) is a warning, so
    // a misconfiguration is seen at the default log level.
    let cause = match (&outcome.first, outcome.relay.as_ref().map(|r| &r.reason)) {
        (FirstReply::ProxyFailure { error, .. }, _) | (_, Some(EndReason::Error(error))) => Some(error),
        _ => None,
    };
    let close = outcome.reason.as_str();
    let session = outcome.session_id;
    match cause {
        Some(error) if outcome.reason == CloseReason::Internal => {
            warn!(%peer, %account, session, login = first, close, %error, "session ended by a proxy fault")
        }
        Some(error) => info!(%peer, %account, session, login = first, close, %error, "session ended"),
        None => info!(%peer, %account, session, login = first, close, "session ended"),
    }
}
