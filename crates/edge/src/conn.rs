//! One client connection at the edge: login frame, checks, then the session.
//!
//! Order matters and is the proxy's security contract: nothing upstream happens before the
//! login frame parsed, a session slot was free and the Partner token verified and named this
//! account. Only then is the account claimed (closing any older session of the same account and
//! waiting for its upstream to be gone) and chatd dialled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use session::{FirstReply, LoginRequest, SessionContext, UpstreamConfig, run_session, stanza};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::login;
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
    /// One permit per session: at the limit, new logins are shed with 429.
    pub session_slots: Arc<Semaphore>,
}

/// Largest login frame: a key, a payload of at most [`login::MAX_PAYLOAD_LEN`] and framing. Junk
/// before the login (an HTTP request, TLS on the plain port) reads as a far larger length and is
/// refused at once instead of waiting for the login timeout.
pub const LOGIN_FRAME_MAX: usize = 64 * 1024;

/// Why the login phase ended without a session.
enum Refusal {
    Timeout,
    BadLogin,
    Overloaded,
    Draining,
    Unauthorized,
    UpstreamUnavailable,
}

impl Refusal {
    fn result(&self) -> LoginResult {
        match self {
            Refusal::Timeout => LoginResult::Timeout,
            Refusal::BadLogin => LoginResult::BadLogin,
            Refusal::Overloaded => LoginResult::Overloaded,
            Refusal::Draining => LoginResult::Draining,
            Refusal::Unauthorized => LoginResult::Unauthorized,
            Refusal::UpstreamUnavailable => LoginResult::UpstreamUnavailable,
        }
    }

    /// The stanza the client gets before the close (documented in docs/edge-protocol.md).
    fn stanza(&self) -> bytes::Bytes {
        match self {
            Refusal::Timeout => stanza::failure("408"),
            Refusal::BadLogin => stanza::failure("400"),
            Refusal::Overloaded => stanza::failure("429"),
            Refusal::Draining => stanza::draining(),
            Refusal::Unauthorized => stanza::failure("401"),
            Refusal::UpstreamUnavailable => stanza::failure("503"),
        }
    }
}

/// Reads one whole frame into `buf` (bytes past it stay in `buf`); `None` on EOF or error.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<BytesMut>, ()> {
    loop {
        match wire::frame::peek_len(buf) {
            Some(len) if len > max => return Err(()),
            Some(len) if buf.len() >= 3 + len => {
                buf.advance(3);
                return Ok(Some(buf.split_to(len)));
            }
            Some(len) => buf.reserve(3 + len - buf.len()),
            None => buf.reserve(64),
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn write_payload<S: AsyncWrite + Unpin>(stream: &mut S, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    wire::frame::encode_frame(payload, &mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Serves one client connection to its end.
pub async fn serve_client<S>(ctx: Arc<EdgeContext>, mut stream: S, peer: SocketAddr, local: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    let mut buf = BytesMut::with_capacity(1024);
    let outcome = async {
        let frame = match tokio::time::timeout(
            ctx.login_timeout,
            read_frame(&mut stream, &mut buf, LOGIN_FRAME_MAX.min(ctx.max_frame_size)),
        )
        .await
        {
            Err(_) => return Err(Refusal::Timeout),
            Ok(Err(())) => return Err(Refusal::BadLogin),
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(frame))) => frame,
        };
        if ctx.session.registry.is_draining() {
            return Err(Refusal::Draining);
        }
        let login = login::parse(&frame).map_err(|e| {
            debug!(%peer, error = %e, "bad login frame");
            Refusal::BadLogin
        })?;
        let permit = Arc::clone(&ctx.session_slots).try_acquire_owned().map_err(|_| Refusal::Overloaded)?;
        if let Err(e) = ctx.auth.check(&login).await {
            info!(%peer, account = %login.account, error = %e, "login refused before any upstream");
            return Err(Refusal::Unauthorized);
        }
        Ok(Some((login, permit)))
    }
    .await;
    let (login, _permit) = match outcome {
        Ok(Some(l)) => l,
        Ok(None) => return,
        Err(refusal) => {
            ctx.metrics.login(refusal.result());
            let _ = write_payload(&mut stream, &refusal.stanza()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };

    ctx.metrics.login_check_duration.observe(started.elapsed().as_secs_f64());

    // The token proved the account: the session layer claims it (closing any older session of
    // the account and waiting for its upstream to be gone), dials chatd and relays.
    let addr = match tokio::net::lookup_host(&ctx.upstream_host).await.ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            warn!(upstream = %ctx.upstream_host, "cannot resolve chatd");
            ctx.metrics.login(LoginResult::UpstreamUnavailable);
            let _ = write_payload(&mut stream, &Refusal::UpstreamUnavailable.stanza()).await;
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
    let account = login.account.clone();
    let request = LoginRequest {
        account: login.account,
        static_key: login.static_key,
        client_payload: login.client_payload,
        client_addr: peer,
        local_addr: local,
    };
    ctx.metrics.login(LoginResult::Forwarded);
    let outcome = run_session(&session_ctx, request, stream, buf).await;
    let first = match &outcome.first {
        FirstReply::Accepted(_) => "accepted",
        FirstReply::Rejected(_) => "rejected by chatd",
        FirstReply::ProxyFailure { .. } => "failed before chatd answered",
    };
    info!(%peer, %account, session = outcome.session_id, login = first, close = outcome.reason.as_str(), "session ended");
}
