//! `run_session`: claim → connect → relay (or the refusal), for the edge in one call.

use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use error_report::Report;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{debug, info};
use wire::refusal::Refusal;
use wire_io::close::{close, close_with};

use crate::cancel::CancelHandle;
use crate::error::{CloseReason, SessionError};
use crate::metrics::{SessionMetrics, UpstreamLoginResult};
use crate::registry::Registry;
use crate::relay::{RelayConfig, RelayEnd, relay};
use crate::upstream::{LoginInfo, LoginRequest, UpstreamConfig, UpstreamLogin, connect_cancellable};
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
    /// chatd's `<success>`; the relay ran after it.
    Accepted(Bytes),
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

/// Runs one client's session to its end: claims the account (replacing an older session, see
/// [`Registry::claim`]), logs in upstream, writes chatd's first stanza to the client and relays,
/// or writes the refusal and closes. The client's EOF during the login aborts it (no upstream
/// outlives its client). Call only after the edge verified the client's token for
/// `login.account`.
///
/// `client` is the edge's plaintext frame stream past the login frame, and `client_leftover` any
/// bytes the edge read past the login frame. The upstream is closed and the claim released before
/// this returns.
pub async fn run_session<C>(
    ctx: &SessionContext,
    login: LoginRequest,
    client: C,
    client_leftover: BytesMut,
) -> SessionOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    run_session_with(ctx, login, client, client_leftover, || {}).await
}

/// [`run_session`], calling `login_answered` once the login has its answer, before that answer is
/// written to the client: chatd's first stanza arrived, or the proxy decided its own refusal (the
/// claim or the dial failed, the client left). The edge holds a handshake slot until then.
pub async fn run_session_with<C, A>(
    ctx: &SessionContext,
    login: LoginRequest,
    mut client: C,
    mut client_leftover: BytesMut,
    login_answered: A,
) -> SessionOutcome
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
            return refuse(&mut client, None, error, metrics, linger, 0).await;
        }
    };
    let session_id = claim.generation();
    let cancel: &CancelHandle = claim.cancel_handle();
    // A cancel mid-login closes the upstream gracefully before the claim is released; a client
    // gone mid-login drops the attempt (and its socket) at once.
    let attempt = tokio::select! {
        biased;
        gone = watch_client(&mut client, &mut client_leftover, watch_limit) => Err(gone),
        r = connect_cancellable(&ctx.upstream, login, cancel, linger) => r,
    };
    login_answered();

    match attempt {
        Ok(UpstreamLogin::Accepted { first_payload, mut upstream, info }) => {
            count_login(metrics, UpstreamLoginResult::Accepted, &info);
            if let Err(error) = upstream.queue_to_client(&first_payload) {
                drop(upstream);
                return refuse(&mut client, Some(&claim), error, metrics, linger, session_id).await;
            }
            info!(session = session_id, %account, "session relaying");
            let end = relay(client, client_leftover, upstream, &ctx.relay, cancel, metrics).await;
            let reason = end.reason.close_reason();
            info!(session = session_id, %account, %reason, ?end.duration, "session ended");
            drop(claim);
            SessionOutcome { first: FirstReply::Accepted(first_payload), relay: Some(end), reason, session_id }
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
