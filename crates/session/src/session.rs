//! A client's session: [`establish`] (claim → connect, or the refusal), then
//! [`LiveSession::relay`]; [`run_session`] does both in one call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use error_report::Report;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, info};
use wire::refusal::Refusal;
use wire_io::close::{close, close_with};

use crate::error::{CloseReason, SessionError};
use crate::metrics::{SessionMetrics, UpstreamLoginResult};
use crate::registry::{Claim, Registry};
use crate::relay::{RelayConfig, RelayEnd, Relaying, relay};
use crate::upstream::{LoginInfo, LoginRequest, Upstream, UpstreamConfig, UpstreamLogin, connect_cancellable};
use wire::cert_cache::CacheOutcome;

/// What every session of a proxy shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub registry: Registry,
    pub upstream: UpstreamConfig,
    pub relay: RelayConfig,
    pub metrics: SessionMetrics,
}

impl SessionContext {
    /// A context with a fresh registry reporting to `metrics`.
    pub fn new(upstream: UpstreamConfig, relay: RelayConfig, metrics: SessionMetrics) -> Self {
        SessionContext { registry: Registry::new(Some(metrics.clone())), upstream, relay, metrics }
    }

    /// Checks both configurations.
    pub fn validate(&self) -> Result<(), SessionError> {
        self.upstream.validate()?;
        self.relay.validate()
    }
}

/// The first stanza the client got.
#[derive(Debug)]
pub enum FirstReply {
    /// chatd's `<success>`; the relay ran after it. Its bytes are not kept: they went to the
    /// client, and a copy would live as long as the session.
    Accepted,
    /// chatd's own refusal (`<failure reason="401">`, ...), sent as is.
    Rejected(Bytes),
    /// The proxy's own answer when no login answer came: `<failure reason="503"/>` (chatd
    /// unreachable, handshake failed), `<stream:error><conflict type="replaced"/>` (superseded),
    /// `<stream:error code="503">` (draining), or nothing when the client had already left.
    ProxyFailure { payload: Option<Bytes>, error: SessionError },
}

/// How a session went.
#[derive(Debug)]
pub struct SessionOutcome {
    pub first: FirstReply,
    /// The relay's end, when a relay ran.
    pub relay: Option<RelayEnd>,
    /// The close reason (also counted in `waproxy_session_closes_total`).
    pub reason: CloseReason,
    /// The claim's generation: a per-session id for logs (0 when no claim was made).
    pub session_id: u64,
}

/// Runs one client's session to its end: [`establish`], then [`LiveSession::relay`] when chatd
/// accepted the login. Call only after the edge verified the client's token for `login.account`.
///
/// `client` is the edge's plaintext frame stream past the login frame, and `client_leftover` any
/// bytes the edge read past the login frame. The upstream is closed and the claim released before
/// this returns.
pub async fn run_session<'a, C>(
    ctx: &'a SessionContext,
    login: LoginRequest,
    client: C,
    client_leftover: BytesMut,
) -> SessionOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    run_session_with(ctx, login, client, client_leftover, || {}).await
}

/// [`run_session`], calling `login_answered` once the login has its answer (see [`establish`]).
pub async fn run_session_with<'a, C, A>(
    ctx: &'a SessionContext,
    login: LoginRequest,
    client: C,
    client_leftover: BytesMut,
    login_answered: A,
) -> SessionOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'a,
    A: FnOnce() + Send,
{
    match establish(ctx, login, client, client_leftover, login_answered).await {
        Established::Live(live) => live.relay(ctx).await,
        Established::Ended(outcome) => outcome,
    }
}

/// What [`establish`] ended with.
#[derive(Debug)]
pub enum Established<C> {
    /// chatd accepted the login and its `<success>` is queued for the client: relay next.
    Live(LiveSession<C>),
    /// The session ended before relaying (chatd's refusal or the proxy's); the client was
    /// answered and closed, the claim released.
    Ended(SessionOutcome),
}

/// A session whose login chatd accepted: the client, its chatd connection and the account's
/// claim, and nothing of the login stage. [`LiveSession::relay`] runs it to its end; the edge
/// spawns that as the session's own task, so the login's state is freed once it is answered.
pub struct LiveSession<C> {
    client: C,
    client_leftover: BytesMut,
    upstream: Upstream,
    claim: Claim,
}

impl<C> std::fmt::Debug for LiveSession<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession").field("claim", &self.claim).field("upstream", &self.upstream).finish()
    }
}

/// Logs in one client: claims the account (replacing an older session, see [`Registry::claim`])
/// and logs in upstream, both while watching the client (its EOF aborts the attempt: no upstream
/// outlives its client). `login_answered` is called once the login has its answer, before that
/// answer is written to the client: chatd's first stanza arrived, or the proxy decided its own
/// refusal (the claim or the dial failed, the client left). The edge holds a handshake slot until
/// then.
///
/// On chatd's `<success>` the session is [`Established::Live`], with the stanza queued for the
/// client; otherwise the refusal was written, the client closed and the claim released.
pub async fn establish<C, A>(
    ctx: &SessionContext,
    login: LoginRequest,
    mut client: C,
    mut client_leftover: BytesMut,
    login_answered: A,
) -> Established<C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    A: FnOnce() + Send,
{
    let metrics = &ctx.metrics;
    let account = login.account.clone();
    let linger = ctx.relay.close_linger;
    let watch_limit = ctx.relay.max_buffered_bytes;

    // Claim, then log in, both while watching the client: its EOF aborts the attempt.
    let claimed = tokio::select! {
        c = ctx.registry.claim(&account) => c,
        gone = watch_client(&mut client, &mut client_leftover, watch_limit) => Err(gone),
    };
    let claim = match claimed {
        Ok(c) => c,
        Err(error) => {
            login_answered();
            return Established::Ended(refuse(&mut client, None, error, metrics, linger, 0).await);
        }
    };
    let session_id = claim.generation();
    // A cancel mid-login closes the upstream gracefully before the claim is released; a client
    // gone mid-login drops the attempt (and its socket) at once.
    let attempt = tokio::select! {
        biased;
        gone = watch_client(&mut client, &mut client_leftover, watch_limit) => Err(gone),
        r = connect_cancellable(&ctx.upstream, login, claim.cancel_handle(), linger) => r,
    };
    login_answered();

    let ended = match attempt {
        Ok(UpstreamLogin::Accepted { first_payload, mut upstream, info }) => {
            count_login(metrics, UpstreamLoginResult::Accepted, &info);
            match upstream.queue_to_client(&first_payload) {
                Ok(()) => {
                    info!(session = session_id, %account, "session relaying");
                    return Established::Live(LiveSession { client, client_leftover, upstream, claim });
                }
                Err(error) => {
                    drop(upstream);
                    refuse(&mut client, Some(&claim), error, metrics, linger, session_id).await
                }
            }
        }
        Ok(UpstreamLogin::Rejected { first_payload, info }) => {
            count_login(metrics, UpstreamLoginResult::Rejected, &info);
            drop(claim);
            metrics.closed(CloseReason::LoginRejected);
            close_with(&mut client, &first_payload, linger).await;
            debug!(session = session_id, %account, "login rejected by chatd");
            SessionOutcome {
                first: FirstReply::Rejected(first_payload),
                relay: None,
                reason: CloseReason::LoginRejected,
                session_id,
            }
        }
        Err(error) => {
            if !matches!(error, SessionError::Cancelled(_) | SessionError::ClientGone) {
                metrics.upstream_logins.with_label_values(&[UpstreamLoginResult::Failed.as_str()]).inc();
            }
            refuse(&mut client, Some(&claim), error, metrics, linger, session_id).await
        }
    };
    Established::Ended(ended)
}

impl<C> LiveSession<C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The claim's generation, the session's id in logs.
    pub fn session_id(&self) -> u64 {
        self.claim.generation()
    }

    /// Relays until the session ends, then closes both sides and releases the claim. The
    /// returned future is the session's whole state while it lives.
    pub fn relay<'a>(self, ctx: &'a SessionContext) -> SessionRelay<'a, C>
    where
        C: 'a,
    {
        let LiveSession { client, client_leftover, upstream, claim } = self;
        let relaying = relay(client, client_leftover, upstream, &ctx.relay, claim.cancel_handle(), &ctx.metrics);
        SessionRelay { relaying, claim: Some(claim) }
    }
}

pin_project_lite::pin_project! {
    /// A live session's relay holding the account's claim: the future [`LiveSession::relay`]
    /// returns. The claim is released once the relay has closed both sides.
    #[must_use = "a session does nothing unless polled"]
    pub struct SessionRelay<'a, C> {
        #[pin]
        relaying: Relaying<'a, C, TcpStream>,
        claim: Option<Claim>,
    }
}

impl<'a, C> Future for SessionRelay<'a, C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    type Output = SessionOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SessionOutcome> {
        let this = self.project();
        let end = ready!(this.relaying.poll(cx));
        let reason = end.reason.close_reason();
        let session_id = this.claim.take().map_or(0, |claim| {
            info!(session = claim.generation(), account = claim.account(), %reason, ?end.duration, "session ended");
            claim.generation()
        });
        Poll::Ready(SessionOutcome { first: FirstReply::Accepted, relay: Some(end), reason, session_id })
    }
}

/// Ends a session that never relayed: releases the claim, sends the proxy's answer, closes.
async fn refuse<C>(
    client: &mut C,
    claim: Option<&crate::Claim>,
    error: SessionError,
    metrics: &SessionMetrics,
    linger: Duration,
    session_id: u64,
) -> SessionOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    // No upstream exists any more; release the slot before talking to the client.
    if let Some(c) = claim {
        c.cancel_handle().mark_upstream_released();
    }
    let payload = match &error {
        SessionError::ClientGone => None,
        SessionError::Superseded | SessionError::Cancelled(crate::CancelReason::Replaced) => {
            Some(Refusal::Replaced.encode())
        }
        SessionError::Draining | SessionError::Cancelled(crate::CancelReason::Draining) => {
            Some(Refusal::Draining.encode())
        }
        SessionError::Cancelled(crate::CancelReason::Shutdown) => None,
        _ => Some(Refusal::Unavailable.encode()),
    };
    // Counted when decided: the close may linger for the client's own.
    let reason = error.close_reason();
    metrics.closed(reason);
    match &payload {
        Some(p) => close_with(client, p, linger).await,
        None => close(client, linger).await,
    }
    debug!(session = session_id, %reason, error = %Report(&error), "session refused");
    SessionOutcome { first: FirstReply::ProxyFailure { payload, error }, relay: None, reason, session_id }
}

/// Reads the client while the login runs, keeping what arrives (up to `limit` bytes) for the
/// relay; completes only when the client is gone.
async fn watch_client<C: AsyncRead + Unpin>(client: &mut C, kept: &mut BytesMut, limit: usize) -> SessionError {
    loop {
        let room = limit.saturating_sub(kept.len());
        if room == 0 {
            // Enough kept: stop reading (backpressure) and wait for the login to finish.
            return std::future::pending().await;
        }
        kept.reserve(room.min(4096));
        let mut limited = (&mut *kept).limit(room);
        match client.read_buf(&mut limited).await {
            Ok(0) => return SessionError::ClientGone,
            Ok(_) => {}
            Err(e) if crate::error::is_disconnect(&e) => return SessionError::ClientGone,
            Err(e) => return SessionError::ClientIo(e),
        }
    }
}

fn count_login(metrics: &SessionMetrics, result: UpstreamLoginResult, info: &LoginInfo) {
    metrics.upstream_logins.with_label_values(&[result.as_str()]).inc();
    metrics.upstream_login_duration.observe(info.elapsed.as_secs_f64());
    metrics.upstream_connect_duration.observe(info.connect.as_secs_f64());
    metrics.upstream_handshake_duration.observe(info.handshake.as_secs_f64());
    let label = match info.cert_cache {
        CacheOutcome::Hit => "hit",
        CacheOutcome::Miss => "miss",
    };
    metrics.cert_cache.with_label_values(&[label]).inc();
}
