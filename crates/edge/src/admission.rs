//! Admission: the steps a client connection passes before the session layer sees it.
//!
//! The order is the proxy's security contract (docs/security.md): nothing upstream happens
//! before the login frame parsed, a session slot was free and the Partner token verified and
//! named the login's account.
//!
//! | step | refused with | counted as |
//! |---|---|---|
//! | 1 the source's connection rate, before anything is read | `<failure reason="429" retry_after="N"/>` | `waproxy_connections_rate_limited_total` |
//! | 2 the login frame, within the login timeout | 408 (timeout), 400 (over the frame limit) | `timeout`, `bad_login` |
//! | 3 not draining: before any parse or token work | `<stream:error code="503" text="draining"/>` | `draining` |
//! | 4 the parse | 400 | `bad_login` |
//! | 5 a session slot (`limits.max_sessions`) | 429, N = 10-20 | `overloaded` |
//! | 6 the token verifies and names the login's account | 401 | `unauthorized` |
//! | 7 a handshake slot (`limits.max_concurrent_handshakes`): only logins that passed every check compete | 429, N = 2-4 | `overloaded` |
//!
//! (`counted as` is the `result` of `waproxy_logins_total` unless named.) Each step is a
//! function of the state the step before produced, consuming it, so no step can be skipped or
//! reordered: only a token check that named the account yields [`Admitted`], and the edge builds
//! the session's [`LoginRequest`] from nothing else. [`Refused`] is the one place a refusal becomes a stanza, a
//! metric and a log line. [`admit`] is the thin async driver: it reads the login frame and awaits
//! the token check; the caller writes the refusal.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use error_report::Report;
use session::{LoginRequest, Registry};
use tokio::io::AsyncRead;
use tokio::time::Instant;
use tracing::{debug, info};
use wire::InteropAccount;
use zeroize::Zeroizing;

use crate::auth::{AuthError, TokenCheck};
use crate::conn::overloaded;
use crate::limits::{LimitGuard, Limiter, RateLimiter, jitter, retry_after};
use crate::metrics::{EdgeMetrics, LoginDecision};
use wire::frame::FrameError;
use wire::login::{self, Login, LoginError};
use wire::refusal::Refusal as Stanza;
use wire_io::frame::read_secret_frame;

/// Retry hint bases in seconds (the hint is `base..=2*base`, see [`retry_after`]).
const RETRY_SESSIONS_FULL: u32 = 10;
const RETRY_HANDSHAKES_FULL: u32 = 2;

/// What admission consults, shared by every connection of an edge.
pub struct Gates<'a, T> {
    /// New connections per second per source IP.
    pub rate_limit: &'a RateLimiter,
    /// The session registry, asked only whether the proxy is draining.
    pub registry: &'a Registry,
    pub session_slots: &'a Limiter,
    pub tokens: &'a T,
    pub handshake_slots: &'a Limiter,
    /// Largest login frame accepted.
    pub max_login_frame: usize,
}

/// Why a connection was refused before the session layer saw it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refused {
    /// The source opened connections faster than its rate; it may retry after this many seconds.
    RateLimited { retry_after: u32 },
    /// No login frame before the login timeout.
    Timeout,
    /// The first frame announced more than the login frame limit.
    Oversized,
    /// The proxy is draining.
    Draining,
    /// The first frame is not a well-formed login.
    BadLogin(LoginError),
    /// At `limits.max_sessions`; retry after this many seconds.
    SessionsFull { retry_after: u32 },
    /// The token failed verification or names another account.
    Unauthorized { account: InteropAccount, error: AuthError },
    /// `limits.max_concurrent_handshakes` logins are already waiting for chatd; retry after this
    /// many seconds.
    HandshakesFull { retry_after: u32 },
}

impl Refused {
    /// The `result` of `waproxy_logins_total`; `None` for a refusal counted elsewhere.
    pub fn result(&self) -> Option<LoginDecision> {
        Some(match self {
            Refused::RateLimited { .. } => return None,
            Refused::Timeout => LoginDecision::Timeout,
            Refused::Oversized | Refused::BadLogin(_) => LoginDecision::BadLogin,
            Refused::Draining => LoginDecision::Draining,
            Refused::SessionsFull { .. } | Refused::HandshakesFull { .. } => LoginDecision::Overloaded,
            Refused::Unauthorized { .. } => LoginDecision::Unauthorized,
        })
    }

    /// The stanza the client gets before the close (documented in docs/edge-protocol.md).
    pub fn stanza(&self) -> Bytes {
        match self {
            Refused::Timeout => Stanza::Timeout.encode(),
            Refused::Oversized | Refused::BadLogin(_) => Stanza::BadLogin.encode(),
            Refused::RateLimited { retry_after }
            | Refused::SessionsFull { retry_after }
            | Refused::HandshakesFull { retry_after } => overloaded(*retry_after),
            Refused::Draining => Stanza::Draining.encode(),
            Refused::Unauthorized { .. } => Stanza::Unauthorized.encode(),
        }
    }

    /// Counts and logs the refusal.
    pub fn record(&self, metrics: &EdgeMetrics, peer: SocketAddr) {
        match self.result() {
            Some(result) => metrics.login(result),
            None => metrics.connections_rate_limited.inc(),
        }
        match self {
            Refused::RateLimited { retry_after } => {
                debug!(%peer, retry_after, "connection rate limit for this source")
            }
            Refused::BadLogin(error) => debug!(%peer, error = %Report(error), "bad login frame"),
            Refused::Unauthorized { account, error } => {
                info!(%peer, %account, error = %Report(error), "login refused before any upstream")
            }
            _ => {}
        }
    }
}

/// Step 1: a new connection from `source`, before anything is read.
pub fn connected(rate_limit: &RateLimiter, source: IpAddr) -> Result<AwaitingLogin, Refused> {
    match rate_limit.check(source) {
        Ok(()) => Ok(AwaitingLogin(())),
        Err(wait) => Err(Refused::RateLimited { retry_after: (wait.as_secs_f64().ceil() as u32).max(1) + jitter(2) }),
    }
}

/// A connection within its source's rate, waiting for its login frame.
#[derive(Debug)]
pub struct AwaitingLogin(());

/// How reading the login frame ended.
pub enum LoginFrame {
    Read(Zeroizing<Vec<u8>>),
    /// The frame announced more than the login frame limit.
    Oversized,
    TimedOut,
    /// The client closed (or its connection failed) before a whole frame.
    Closed,
}

impl AwaitingLogin {
    /// Steps 2-4: the frame read, the drain checked as it is now, the frame parsed. `Ok(None)`:
    /// the client left without a login, which is neither answered nor counted.
    pub fn login_frame(self, frame: LoginFrame, draining: bool) -> Result<Option<Parsed>, Refused> {
        let frame = match frame {
            LoginFrame::Read(frame) => frame,
            LoginFrame::Oversized => return Err(Refused::Oversized),
            LoginFrame::TimedOut => return Err(Refused::Timeout),
            LoginFrame::Closed => return Ok(None),
        };
        if draining {
            return Err(Refused::Draining);
        }
        login::parse(&frame).map(|login| Some(Parsed { login })).map_err(Refused::BadLogin)
    }
}

/// A well-formed login, not yet holding anything.
#[derive(Debug)]
pub struct Parsed {
    login: Login,
}

impl Parsed {
    /// Step 5: a session slot, before any token work, so that a flood at the session limit
    /// costs no JWKS verification.
    pub fn reserve_session(self, slots: &Limiter) -> Result<AwaitingToken, Refused> {
        match slots.try_acquire() {
            Some(session_slot) => Ok(AwaitingToken { login: self.login, session_slot }),
            None => Err(Refused::SessionsFull { retry_after: retry_after(RETRY_SESSIONS_FULL) }),
        }
    }
}

/// A login holding a session slot, waiting for its token check.
pub struct AwaitingToken {
    login: Login,
    session_slot: LimitGuard,
}

impl std::fmt::Debug for AwaitingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingToken").field("login", &self.login).finish_non_exhaustive()
    }
}

impl AwaitingToken {
    /// The login whose token is to be checked.
    pub fn login(&self) -> &Login {
        &self.login
    }

    /// Steps 6-7: the token check's result, then a handshake slot. A refusal gives the session
    /// slot back.
    pub fn token_checked(self, check: Result<(), AuthError>, handshakes: &Limiter) -> Result<Admitted, Refused> {
        if let Err(error) = check {
            return Err(Refused::Unauthorized { account: self.login.account, error });
        }
        match handshakes.try_acquire() {
            Some(handshake_slot) => Ok(Admitted { login: self.login, session_slot: self.session_slot, handshake_slot }),
            None => Err(Refused::HandshakesFull { retry_after: retry_after(RETRY_HANDSHAKES_FULL) }),
        }
    }
}

/// A login that passed every check: its token named its account.
pub struct Admitted {
    login: Login,
    session_slot: LimitGuard,
    handshake_slot: LimitGuard,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("login", &self.login).finish_non_exhaustive()
    }
}

impl Admitted {
    pub fn account(&self) -> InteropAccount {
        self.login.account
    }

    /// What the session layer gets: the login (without its token, which goes now rather than
    /// living as long as the session), the session slot, held for the session's life, and the
    /// handshake slot, held until the login is answered.
    pub fn into_session(
        self,
        client_addr: SocketAddr,
        local_addr: SocketAddr,
    ) -> (LoginRequest, LimitGuard, LimitGuard) {
        let Login { account, static_key, client_payload, token } = self.login;
        drop(token);
        let request =
            LoginRequest { account: account.to_string(), static_key, client_payload, client_addr, local_addr };
        (request, self.session_slot, self.handshake_slot)
    }
}

/// Runs admission on one connection: reads the login frame from `stream` (after what `buf`
/// already holds) by `deadline`, and consults `gates` in the order of the module docs.
/// `login_read` is called on the stream once the login frame has been read, before anything
/// else is. `Ok(None)`: the client left without a login. On a refusal the caller answers the
/// client with [`Refused::stanza`].
pub async fn admit<S, T, F>(
    gates: &Gates<'_, T>,
    stream: &mut S,
    buf: &mut BytesMut,
    source: IpAddr,
    deadline: Instant,
    login_read: F,
) -> Result<Option<Admitted>, Refused>
where
    S: AsyncRead + Unpin,
    T: TokenCheck,
    F: FnOnce(&mut S),
{
    let awaiting = connected(gates.rate_limit, source)?;
    let frame = match tokio::time::timeout_at(deadline, read_secret_frame(stream, buf, gates.max_login_frame)).await {
        Err(_) => LoginFrame::TimedOut,
        Ok(Err(FrameError::TooLarge { .. })) => LoginFrame::Oversized,
        Ok(Err(_) | Ok(None)) => LoginFrame::Closed,
        Ok(Ok(Some(frame))) => {
            login_read(stream);
            LoginFrame::Read(frame)
        }
    };
    let Some(parsed) = awaiting.login_frame(frame, gates.registry.is_draining())? else { return Ok(None) };
    let awaiting = parsed.reserve_session(gates.session_slots)?;
    let check = gates.tokens.check(awaiting.login()).await;
    awaiting.token_checked(check, gates.handshake_slots).map(Some)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A token check that counts its calls and accepts or refuses every token.
    struct FakeTokens {
        accept: bool,
        calls: AtomicUsize,
    }

    impl FakeTokens {
        fn new(accept: bool) -> Self {
            FakeTokens { accept, calls: AtomicUsize::new(0) }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl TokenCheck for FakeTokens {
        async fn check(&self, login: &Login) -> Result<(), AuthError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(login.token.as_str(), "t.o.k", "the check sees the login's own token");
            if self.accept { Ok(()) } else { Err(AuthError::NotBound { claim: "wa_account".into() }) }
        }
    }

    /// The shared state of one edge, sized per test.
    struct Edge {
        rate_limit: RateLimiter,
        registry: Registry,
        session_slots: Limiter,
        handshake_slots: Limiter,
        tokens: FakeTokens,
    }

    impl Edge {
        fn new(tokens_valid: bool) -> Self {
            Edge {
                rate_limit: RateLimiter::new(0),
                registry: Registry::new(None),
                session_slots: Limiter::new(8, None),
                handshake_slots: Limiter::new(8, None),
                tokens: FakeTokens::new(tokens_valid),
            }
        }

        fn gates(&self) -> Gates<'_, FakeTokens> {
            Gates {
                rate_limit: &self.rate_limit,
                registry: &self.registry,
                session_slots: &self.session_slots,
                tokens: &self.tokens,
                handshake_slots: &self.handshake_slots,
                max_login_frame: login::LOGIN_FRAME_MAX,
            }
        }

        /// Admits `input` as the whole of what the client sends; also says how many of its bytes
        /// were left unread.
        async fn admit(&self, input: &[u8]) -> (Result<Option<Admitted>, Refused>, usize) {
            let mut rest = input;
            let deadline = Instant::now() + Duration::from_secs(5);
            let source = IpAddr::from([192, 0, 2, 1]);
            let outcome = admit(&self.gates(), &mut rest, &mut BytesMut::new(), source, deadline, |_| {}).await;
            (outcome, rest.len())
        }

        /// Nothing of a refused login is still held, and nothing was claimed upstream.
        fn holds_nothing(&self) -> bool {
            self.session_slots.in_use() == 0 && self.handshake_slots.in_use() == 0 && self.registry.is_empty()
        }
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::frame::encode_frame(body, &mut out).unwrap();
        out
    }

    fn good_login() -> Vec<u8> {
        let payload =
            wire::proto::ClientPayload::interop_login(42, b"t.o.k".to_vec(), wire::proto::AppVersion::new(2, 3000, 1));
        framed(&login::build(&wire::Jid::interop(1, "42", 0), &[7; 32], &prost::Message::encode_to_vec(&payload)))
    }

    fn junk_login() -> Vec<u8> {
        framed(b"\0not a login")
    }

    #[tokio::test]
    async fn a_valid_login_is_admitted_holding_both_slots_without_its_token() {
        let edge = Edge::new(true);
        let (outcome, unread) = edge.admit(&good_login()).await;
        let admitted = outcome.unwrap().expect("admitted");
        assert_eq!((unread, edge.tokens.calls()), (0, 1));
        assert_eq!(admitted.account().to_string(), "1-42@interop");
        assert_eq!((edge.session_slots.in_use(), edge.handshake_slots.in_use()), (1, 1));
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:443".parse().unwrap();
        let (request, session_slot, handshake_slot) = admitted.into_session(peer, local);
        assert_eq!((request.account.as_str(), request.client_addr, request.local_addr), ("1-42@interop", peer, local));
        drop(handshake_slot);
        assert_eq!((edge.session_slots.in_use(), edge.handshake_slots.in_use()), (1, 0));
        drop(session_slot);
        assert!(edge.holds_nothing());
    }

    #[tokio::test]
    async fn a_refused_token_holds_nothing_and_reaches_nothing_upstream() {
        let edge = Edge::new(false);
        let (outcome, _) = edge.admit(&good_login()).await;
        let refusal = outcome.unwrap_err();
        assert!(matches!(&refusal, Refused::Unauthorized { account, .. } if account.to_string() == "1-42@interop"));
        assert_eq!(edge.tokens.calls(), 1);
        assert!(edge.holds_nothing(), "the session slot went back; no handshake slot, no claim");
    }

    #[tokio::test]
    async fn a_draining_proxy_refuses_before_parsing_or_any_token_work() {
        for login in [good_login(), junk_login()] {
            let edge = Edge::new(true);
            edge.registry.start_draining();
            edge.session_slots.set_limit(0);
            let (outcome, _) = edge.admit(&login).await;
            assert!(matches!(outcome, Err(Refused::Draining)), "{outcome:?}");
            assert_eq!(edge.tokens.calls(), 0);
            assert!(edge.holds_nothing());
        }
    }

    #[tokio::test]
    async fn the_rate_limit_refuses_before_anything_is_read() {
        let edge = Edge::new(true);
        edge.rate_limit.set_rate(1);
        let login = good_login();
        for _ in 0..2 {
            let (outcome, _) = edge.admit(&login).await;
            assert!(matches!(outcome, Ok(Some(_))), "the burst is twice the rate");
        }
        let (outcome, unread) = edge.admit(&login).await;
        let Err(Refused::RateLimited { retry_after }) = outcome else { panic!("{outcome:?}") };
        assert!((1..=3).contains(&retry_after), "{retry_after}");
        assert_eq!((unread, edge.tokens.calls()), (login.len(), 2), "the third login was not read");
    }

    #[tokio::test]
    async fn a_bad_frame_is_refused_before_a_session_slot_is_looked_at() {
        let edge = Edge::new(true);
        edge.session_slots.set_limit(0);
        let (outcome, _) = edge.admit(&junk_login()).await;
        assert!(matches!(outcome, Err(Refused::BadLogin(LoginError::Decode(_)))), "{outcome:?}");
        let oversized = [0x01, 0x00, 0x01];
        let (outcome, _) = edge.admit(&oversized).await;
        assert!(matches!(outcome, Err(Refused::Oversized)), "{outcome:?}");
        assert_eq!(edge.tokens.calls(), 0);
    }

    #[tokio::test]
    async fn the_session_limit_sheds_before_any_token_work() {
        for tokens_valid in [true, false] {
            let edge = Edge::new(tokens_valid);
            edge.session_slots.set_limit(0);
            edge.handshake_slots.set_limit(0);
            let (outcome, _) = edge.admit(&good_login()).await;
            let Err(Refused::SessionsFull { retry_after }) = outcome else { panic!("{outcome:?}") };
            assert!((10..=20).contains(&retry_after), "{retry_after}");
            assert_eq!(edge.tokens.calls(), 0);
        }
    }

    #[tokio::test]
    async fn only_logins_that_passed_every_check_compete_for_a_handshake_slot() {
        let edge = Edge::new(false);
        edge.handshake_slots.set_limit(0);
        let (outcome, _) = edge.admit(&good_login()).await;
        assert!(matches!(outcome, Err(Refused::Unauthorized { .. })), "a bad token is a 401, not shed: {outcome:?}");

        let edge = Edge::new(true);
        edge.handshake_slots.set_limit(0);
        let (outcome, _) = edge.admit(&good_login()).await;
        let Err(Refused::HandshakesFull { retry_after }) = outcome else { panic!("{outcome:?}") };
        assert!((2..=4).contains(&retry_after), "{retry_after}");
        assert_eq!(edge.tokens.calls(), 1);
        assert!(edge.holds_nothing(), "the session slot went back");
    }

    #[tokio::test]
    async fn a_client_that_leaves_without_a_login_is_neither_answered_nor_counted() {
        let edge = Edge::new(true);
        let login = good_login();
        let (outcome, _) = edge.admit(&login[..login.len() - 1]).await;
        assert!(matches!(outcome, Ok(None)), "{outcome:?}");
        assert_eq!(edge.tokens.calls(), 0);
        assert!(edge.holds_nothing());
    }

    #[tokio::test(start_paused = true)]
    async fn no_login_by_the_deadline_is_a_timeout() {
        let edge = Edge::new(true);
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let source = IpAddr::from([192, 0, 2, 1]);
        tokio::io::AsyncWriteExt::write_all(&mut client, &good_login()[..10]).await.unwrap();
        let outcome = admit(&edge.gates(), &mut proxy, &mut BytesMut::new(), source, deadline, |_| read += 1).await;
        assert!(matches!(outcome, Err(Refused::Timeout)), "{outcome:?}");
        assert_eq!(Instant::now(), deadline);
        assert_eq!((read, edge.tokens.calls()), (0, 0));
    }

    #[tokio::test]
    async fn the_login_read_hook_runs_once_the_frame_is_read_even_when_refused() {
        let edge = Edge::new(true);
        edge.registry.start_draining();
        let mut read = 0;
        let login = good_login();
        let deadline = Instant::now() + Duration::from_secs(5);
        let source = IpAddr::from([192, 0, 2, 1]);
        let outcome =
            admit(&edge.gates(), &mut login.as_slice(), &mut BytesMut::new(), source, deadline, |_| read += 1).await;
        assert!(matches!(outcome, Err(Refused::Draining)));
        assert_eq!(read, 1);
    }

    #[test]
    fn each_refusal_has_one_answer() {
        let account = InteropAccount::parse("1-42@interop").unwrap();
        let not_bound = || AuthError::NotBound { claim: "wa_account".into() };
        let table = [
            (Refused::RateLimited { retry_after: 3 }, "failure", "429", Some("3"), None),
            (Refused::Timeout, "failure", "408", None, Some("timeout")),
            (Refused::Oversized, "failure", "400", None, Some("bad_login")),
            (Refused::Draining, "stream:error", "503", None, Some("draining")),
            (Refused::BadLogin(LoginError::BadJid), "failure", "400", None, Some("bad_login")),
            (Refused::SessionsFull { retry_after: 12 }, "failure", "429", Some("12"), Some("overloaded")),
            (Refused::Unauthorized { account, error: not_bound() }, "failure", "401", None, Some("unauthorized")),
            (Refused::HandshakesFull { retry_after: 3 }, "failure", "429", Some("3"), Some("overloaded")),
        ];
        for (refusal, tag, code, retry, result) in table {
            let stanza = refusal.stanza();
            let node = wire::decode::decode(&stanza).unwrap();
            let status = if tag == "failure" { node.get_str("reason") } else { node.get_str("code") };
            assert_eq!((node.tag.as_str(), status), (tag, Some(code)), "{refusal:?}");
            assert_eq!(node.get_str("retry_after"), retry, "{refusal:?}");
            assert_eq!(refusal.result().map(LoginDecision::as_str), result, "{refusal:?}");
        }
    }
}
