//! One client connection at the edge: admission ([`crate::admission`]), then the session.
//!
//! Admission's order is the proxy's security contract: nothing upstream happens before the
//! login frame parsed, a session slot was free and the Partner token verified and named this
//! account. Only then does the session layer claim the account (closing any older session of the
//! same account and waiting for its upstream to be gone) and dial chatd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use error_report::Report;
use session::{CloseReason, EndReason, Established, FirstReply, SessionContext, SessionOutcome, establish};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wire::InteropAccount;
use wire::refusal::Refusal as Stanza;
use wire_io::close::close_with;

use crate::admission::{self, Gates};
use crate::auth::Authenticator;
use crate::cidr::Cidr;
use crate::limits::{Limiter, RateLimiter};
use crate::metrics::{EdgeMetrics, LoginDecision};

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

pub use wire::login::LOGIN_FRAME_MAX;

/// `<failure reason="429" retry_after="N"/>`: shed; retry after N seconds (with backoff, possibly
/// elsewhere).
pub fn overloaded(retry_after_secs: u32) -> Bytes {
    Stanza::Overloaded { retry_after_secs: Some(u64::from(retry_after_secs)) }.encode()
}

/// Serves one client connection to its end. `deadline` ends the pre-login phase: the listener
/// sets it to the accept time plus `login_timeout`, so that a TLS handshake, a WebSocket upgrade
/// or a PROXY header shares that one timeout with the login frame.
pub async fn serve_client<S>(ctx: Arc<EdgeContext>, stream: S, peer: SocketAddr, local: SocketAddr, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
        Err(refused) => {
            refused.record(&ctx.metrics, peer);
            close_with(&mut stream, &refused.stanza(), ctx.fin_timeout).await;
            return;
        }
    };
    ctx.metrics.login_check_duration.observe(started.elapsed().as_secs_f64());

    // The token proved the account: the session layer claims it (closing any older session of
    // the account and waiting for its upstream to be gone) and dials chatd. The handshake slot is
    // held until chatd's answer (or the proxy's own) is known.
    let account = admitted.account();
    let (request, session_slot, handshake_slot) = admitted.into_session(peer, local);
    ctx.metrics.login(LoginDecision::Forwarded);
    let live = match establish(&ctx.session, request, stream, buf, move || drop(handshake_slot)).await {
        // Boxed until the relay takes it apart: a task keeps a slot for everything it captured,
        // so the new task would hold a second, dead copy of the sockets and ciphers' handles.
        Established::Live(live) => Box::new(live),
        Established::Ended(outcome) => return report_end(&outcome, peer, account),
    };
    // The live session runs as its own task, so this one (the login stage's state, its buffers)
    // is freed now: an idle session holds only its relay, its claim and its session slot.
    tokio::spawn(async move {
        let outcome = live.relay(&ctx.session).await;
        drop(session_slot);
        report_end(&outcome, peer, account);
    });
}

/// Logs how a session ended, with the login's result and the close reason.
fn report_end(outcome: &SessionOutcome, peer: SocketAddr, account: InteropAccount) {
    let first = match &outcome.first {
        FirstReply::Accepted => "accepted",
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
            warn!(%peer, %account, session, login = first, close, error = %Report(error), "session ended by a proxy fault")
        }
        Some(error) => info!(%peer, %account, session, login = first, close, error = %Report(error), "session ended"),
        None => info!(%peer, %account, session, login = first, close, "session ended"),
    }
}
