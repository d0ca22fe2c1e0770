//! One Noise-authenticated chatd session per online client.
//!
//! The edge terminates the Partner client, checks its login and token, and hands the client's
//! plaintext frame stream to this crate, which:
//!
//! - claims the account in the [`Registry`] (invariant 1: never two upstreams for one account; an
//!   older session is cancelled and its upstream closed before the new one dials);
//! - logs in upstream ([`upstream::connect`]): chatd's host resolved at the dial
//!   ([`UpstreamAddr`]), TCP, a PROXY header with the client's address (invariant 3), `WA` 6 3,
//!   WhatsApp's Noise XX with the client's static key, or IK once chatd's key is known
//!   ([`UpstreamConfig::noise_ik`]), the certificate chain (cached, [`CertCache`]), the client's
//!   `ClientPayload`, chatd's first stanza;
//! - relays ([`relay::relay`]): client stanzas sealed in place toward chatd, chatd's opened toward
//!   the client, bytes untouched (invariant 4), bounded buffers with backpressure (invariant 5),
//!   and the lifecycle mirrored (invariant 2): client gone or idle → upstream closed at once;
//!   chatd closed or `<stream:error>` → relayed, then the client closed;
//! - [`establish`] claims and logs in; its [`LiveSession`] relays on its own (the edge spawns it
//!   as the session's task, so nothing of the login stage stays with an idle session);
//!   [`run_session`] does both in one call, and [`run_session_with`] also says when the login
//!   has its answer (the edge's handshake slot ends there).
//!
//! Sans-IO where it can be: [`proxy_header`] and [`stanza`] are pure functions, and the relay is
//! a sans-IO core (buffers, pipes, timers, the close plan) under a thin driver; the async parts
//! are thin drivers over them and the `wire` crate. `docs/session.md` documents the API, the
//! lifecycle, every close reason, and the buffer design with its idle memory cost.

pub mod cancel;
pub mod error;
pub mod metrics;
/// The PROXY header written before the `WA` header; it lives in the wire crate, which the edge and
/// the simulator also read it with.
pub use wire::proxy_header;
pub mod registry;
pub mod relay;
pub mod session;
pub mod stanza;
pub mod upstream;

pub use cancel::{CancelHandle, CancelReason};
pub use error::{CloseReason, SessionError};
pub use metrics::{Direction, SessionMetrics};
pub use proxy_header::ProxyProtocol;
pub use registry::{Claim, Registry};
pub use relay::{DirectionStats, EndReason, RelayConfig, RelayEnd, Relaying, relay};
pub use session::{
    Established, FirstReply, LiveSession, SessionContext, SessionOutcome, SessionRelay, establish, run_session,
    run_session_with,
};
pub use upstream::{LoginInfo, LoginRequest, Upstream, UpstreamAddr, UpstreamConfig, UpstreamLogin, connect};
/// The verified certificate-chain cache lives in the wire crate, which clients share.
pub use wire::cert_cache::{CacheOutcome, CertCache};
