//! One client connection at the edge: login frame, checks, then the session.
//!
//! Order matters and is the proxy's security contract: nothing upstream happens before the
//! login frame parsed, a session slot was free and the Partner token verified and named this
//! account. Only then is the account claimed (closing any older session of the same account and
//! waiting for its upstream to be gone) and chatd dialled.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use session::{CloseReason, EndReason, FirstReply, LoginRequest, SessionContext, UpstreamConfig, run_session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wire::frame::FrameError;
use wire::login;
use wire::refusal::Refusal as Stanza;
use wire_io::close::close_with;
use wire_io::frame::read_secret_frame;

use crate::auth::Authenticator;
use crate::cidr::Cidr;
use crate::limits::{LimitGuard, Limiter, RateLimiter, jitter, retry_after};
use crate::metrics::{EdgeMetrics, LoginResult};

/// Everything the edge's connections share.
pub struct EdgeContext {
    pub auth: Authenticator,
    /// chatd as configured (`host:port`), resolved at every dial.
    pub upstream_host: String,
    /// The session layer; its upstream `addr` is replaced by the resolved address per dial.
    pub session: SessionContext,
    pub metrics: EdgeMetrics,
    pub login_timeout: Duration,
    pub max_frame_size: usize,
    /// One slot per session: at `limits.max_sessions`, new logins are shed with 429.
    pub session_slots: Limiter,
    /// One slot per login whose chatd handshake has not answered yet: beyond
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

/// Retry hint bases in seconds (the hint is `base..=2*base`, see [`retry_after`]).
const RETRY_SESSIONS_FULL: u32 = 10;
const RETRY_HANDSHAKES_FULL: u32 = 2;

pub use wire::login::LOGIN_FRAME_MAX;

/// Why the login phase ended without a session.
enum Refusal {
    Timeout,
    BadLogin,
    /// Shed; the client may retry after this many seconds.
    Overloaded(u32),
    Draining,
    Unauthorized,
    UpstreamUnavailable,
}

impl Refusal {
    fn result(&self) -> LoginResult {
        match self {
            Refusal::Timeout => LoginResult::Timeout,
            Refusal::BadLogin => LoginResult::BadLogin,
            Refusal::Overloaded(_) => LoginResult::Overloaded,
            Refusal::Draining => LoginResult::Draining,
            Refusal::Unauthorized => LoginResult::Unauthorized,
            Refusal::UpstreamUnavailable => LoginResult::UpstreamUnavailable,
        }
    }

    /// The stanza the client gets before the close (documented in docs/edge-protocol.md).
    fn stanza(&self) -> bytes::Bytes {
        match self {
            Refusal::Timeout => Stanza::Timeout.encode(),
            Refusal::BadLogin => Stanza::BadLogin.encode(),
            Refusal::Overloaded(secs) => overloaded(*secs),
            Refusal::Draining => Stanza::Draining.encode(),
            Refusal::Unauthorized => Stanza::Unauthorized.encode(),
            Refusal::UpstreamUnavailable => Stanza::Unavailable.encode(),
        }
    }
}

/// `<failure reason="429" retry_after="N"/>`: shed; retry after N seconds (with backoff, possibly
/// elsewhere).
pub fn overloaded(retry_after_secs: u32) -> Bytes {
    Stanza::Overloaded { retry_after_secs: Some(u64::from(retry_after_secs)) }.encode()
}

/// A client stream that gives its handshake slot back at the first byte written to the client:
/// chatd's answer (or the proxy's refusal) is the end of the handshake.
struct HandshakeSlot<S> {
    inner: S,
    slot: Option<LimitGuard>,
}

impl<S: AsyncRead + Unpin> AsyncRead for HandshakeSlot<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HandshakeSlot<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        self.slot = None;
        Poll::Ready(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        self.slot = None;
        Poll::Ready(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.slot = None;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    buf: BytesMut,
    deadline: Instant,
    login_read: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnOnce(&mut S) + Send,
{
    let started = Instant::now();
    let mut buf = buf;
    if let Err(wait) = ctx.rate_limit.check(peer.ip()) {
        ctx.metrics.connections_rate_limited.inc();
        let secs = (wait.as_secs_f64().ceil() as u32).max(1) + jitter(2);
        debug!(%peer, retry_after = secs, "connection rate limit for this source");
        close_with(&mut stream, &overloaded(secs), ctx.fin_timeout).await;
        return;
    }
    // Boxed: the login stage (frame read, token check) is large and short-lived; inline, its
    // space would stay in this task for the session's whole life.
    let outcome = Box::pin(async {
        let frame = match tokio::time::timeout_at(
            deadline,
            read_secret_frame(&mut stream, &mut buf, LOGIN_FRAME_MAX.min(ctx.max_frame_size)),
        )
        .await
        {
            Err(_) => return Err(Refusal::Timeout),
            Ok(Err(FrameError::TooLarge { .. })) => return Err(Refusal::BadLogin),
            Ok(Err(_) | Ok(None)) => return Ok(None),
            Ok(Ok(Some(frame))) => frame,
        };
        login_read(&mut stream);
        if ctx.session.registry.is_draining() {
            return Err(Refusal::Draining);
        }
        let login = login::parse(&frame).map_err(|e| {
            debug!(%peer, error = %e, "bad login frame");
            Refusal::BadLogin
        })?;
        let permit =
            ctx.session_slots.try_acquire().ok_or_else(|| Refusal::Overloaded(retry_after(RETRY_SESSIONS_FULL)))?;
        if let Err(e) = ctx.auth.check(&login).await {
            info!(%peer, account = %login.account, error = %e, "login refused before any upstream");
            return Err(Refusal::Unauthorized);
        }
        // Only logins that passed every check compete for a handshake slot.
        let handshake =
            ctx.handshake_slots.try_acquire().ok_or_else(|| Refusal::Overloaded(retry_after(RETRY_HANDSHAKES_FULL)))?;
        Ok(Some((login, permit, handshake)))
    })
    .await;
    let (login, _permit, handshake) = match outcome {
        Ok(Some(l)) => l,
        Ok(None) => return,
        Err(refusal) => {
            ctx.metrics.login(refusal.result());
            close_with(&mut stream, &refusal.stanza(), ctx.fin_timeout).await;
            return;
        }
    };
    let mut stream = HandshakeSlot { inner: stream, slot: Some(handshake) };

    ctx.metrics.login_check_duration.observe(started.elapsed().as_secs_f64());

    // The token proved the account: the session layer claims it (closing any older session of
    // the account and waiting for its upstream to be gone), dials chatd and relays.
    let addr = match tokio::net::lookup_host(&ctx.upstream_host).await.ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            warn!(upstream = %ctx.upstream_host, "cannot resolve chatd");
            ctx.metrics.login(LoginResult::UpstreamUnavailable);
            close_with(&mut stream, &Refusal::UpstreamUnavailable.stanza(), ctx.fin_timeout).await;
            return;
        }
    };
    // Resolved at every dial, so DNS changes and round-robin records take effect.
    let session_ctx = SessionContext {
        upstream: UpstreamConfig { addr, ..ctx.session.upstream.clone() },
        registry: ctx.session.registry.clone(),
        relay: ctx.session.relay.clone(),
        metrics: ctx.session.metrics.clone(),
    };
    // The token was checked; its copy goes now rather than living as long as the session.
    let login::Login { account: claimed, static_key, client_payload, token, .. } = login;
    drop(token);
    let account = claimed;
    let request =
        LoginRequest { account: claimed.to_string(), static_key, client_payload, client_addr: peer, local_addr: local };
    ctx.metrics.login(LoginResult::Forwarded);
    let outcome = run_session(&session_ctx, request, stream, buf).await;
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
