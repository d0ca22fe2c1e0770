//! The upstream login: chatd's address decided at the dial, TCP to chatd, the PROXY header, `WA` 6 3, WhatsApp's Noise XX as the
//! initiator with the client's static key, the certificate chain, the client's `ClientPayload`,
//! and chatd's first stanza.
//!
//! The client's secrets stay in [`LoginRequest`]: the static key lives inside aws-lc (wiped when
//! the last clone drops) and the `ClientPayload` (which carries the Partner JWT) is
//! [`Zeroizing`]. Neither is logged, and `Debug` shows neither.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tracing::debug;
use wire::cert::CertVerifier;
use wire::cert_cache::{CacheOutcome, CertCache};
use wire::connect::{ClientConnect, ConnectConfig, ConnectError};
use wire::decode::Decoder;
use wire::frame::{FrameError, MAX_FRAME_LEN, put_header};
use wire::noise::{HandshakePattern, RecvCipher, SendCipher, StaticKeypair};
use wire_io::handshake::HandshakeError;
use wire_io::net::DialOptions;
use zeroize::Zeroizing;

use crate::cancel::{CancelHandle, CancelReason};
use crate::error::SessionError;
use crate::proxy_header::{self, ProxyProtocol};
use crate::stanza::StanzaKind;

/// Where chatd's chat listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// One fixed address.
    Socket(SocketAddr),
    /// `host:port`, resolved at every dial so that DNS changes and round-robin records take
    /// effect; the first address the resolver returns is dialled.
    Host(String),
}

impl UpstreamAddr {
    /// The address to dial now.
    async fn resolve(&self) -> Result<SocketAddr, SessionError> {
        let host = match self {
            UpstreamAddr::Socket(addr) => return Ok(*addr),
            UpstreamAddr::Host(host) => host,
        };
        let err = |source| SessionError::Resolve { host: host.clone(), source };
        tokio::net::lookup_host(host.as_str())
            .await
            .map_err(err)?
            .next()
            .ok_or_else(|| err(io::Error::new(io::ErrorKind::NotFound, "no addresses")))
    }
}

impl From<SocketAddr> for UpstreamAddr {
    fn from(addr: SocketAddr) -> Self {
        UpstreamAddr::Socket(addr)
    }
}

/// An address literal is [`UpstreamAddr::Socket`], anything else a host to resolve.
impl From<&str> for UpstreamAddr {
    fn from(addr: &str) -> Self {
        addr.parse().map_or_else(|_| UpstreamAddr::Host(addr.to_owned()), UpstreamAddr::Socket)
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Socket(addr) => addr.fmt(f),
            UpstreamAddr::Host(host) => f.write_str(host),
        }
    }
}

/// How to reach and trust chatd.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// chatd's chat listener.
    pub addr: UpstreamAddr,
    /// Limit for the dial: resolving [`UpstreamAddr::Host`] and the TCP connect.
    pub connect_timeout: Duration,
    /// Limit for everything after the TCP connect: headers, Noise XX, login, first stanza.
    pub handshake_timeout: Duration,
    /// The PROXY header to send first (v1 by default).
    pub proxy_protocol: ProxyProtocol,
    /// The root key chatd's certificate chain must chain to:
    /// [`wire::cert::WHATSAPP_ROOT_PUBLIC_KEY`] against WhatsApp, the simulator's own otherwise.
    pub root_public_key: [u8; 32],
    /// Largest frame body accepted from chatd during the handshake (at most
    /// [`MAX_FRAME_LEN`]).
    pub max_frame_len: usize,
    /// Verified certificate chains; clones of the config share it. It also holds the key the
    /// next login resumes with (see `noise_ik`).
    pub cert_cache: CertCache,
    /// Resume with Noise IK while `cert_cache` holds chatd's chain from an earlier XX, both its
    /// certificates valid (one round trip instead of two; XXfallback if chatd's key changed).
    /// A failed IK answer makes the next login XX ([`CertCache::suspend_resumption`]).
    pub noise_ik: bool,
}

impl UpstreamConfig {
    /// chatd at `addr`, trusting `root_public_key`, with the defaults: 5 s connect, 10 s
    /// handshake, PROXY v1, frames up to the protocol maximum.
    pub fn new(addr: impl Into<UpstreamAddr>, root_public_key: [u8; 32]) -> Self {
        UpstreamConfig {
            addr: addr.into(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            proxy_protocol: ProxyProtocol::V1,
            root_public_key,
            max_frame_len: MAX_FRAME_LEN,
            cert_cache: CertCache::new(),
            noise_ik: true,
        }
    }

    /// Checks the values `connect` relies on.
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |key, message: &str| Err(SessionError::Config { key, message: message.into() });
        for (key, d) in [("connect_timeout", self.connect_timeout), ("handshake_timeout", self.handshake_timeout)] {
            if d.is_zero() {
                return bad(key, "must be above zero");
            }
            if d > crate::relay::MAX_TIMER {
                return bad(key, "must be at most 30 days");
            }
        }
        if !(1024..=MAX_FRAME_LEN).contains(&self.max_frame_len) {
            return bad("max_frame_len", "must be between 1024 and 16777215 bytes");
        }
        Ok(())
    }
}

/// One client's login, as the edge verified it.
pub struct LoginRequest {
    /// The account's interop JID, text form (`1-10853634039893@interop`).
    pub account: String,
    /// The client's chat static (Noise) keypair.
    pub static_key: StaticKeypair,
    /// The encoded `ClientPayload` the client wants sent; it holds the Partner JWT.
    pub client_payload: Zeroizing<Vec<u8>>,
    /// Where the client connected from: the PROXY header's source.
    pub client_addr: SocketAddr,
    /// The proxy's edge address the client connected to: the PROXY header's destination.
    pub local_addr: SocketAddr,
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("account", &self.account)
            .field("static_key", &self.static_key)
            .field("client_payload_len", &self.client_payload.len())
            .field("client_addr", &self.client_addr)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// Facts about a completed upstream login.
#[derive(Debug, Clone, Copy)]
pub struct LoginInfo {
    /// Whether the certificate chain check was answered from the cache (always after IK).
    pub cert_cache: CacheOutcome,
    /// The Noise pattern that completed: XX, IK or XXfallback.
    pub pattern: HandshakePattern,
    /// TCP connect to chatd's first stanza.
    pub elapsed: Duration,
    /// The TCP connect alone.
    pub connect: Duration,
    /// The handshake alone: connection header, Noise XX and certificate check, up to the
    /// ClientFinish written (chatd's login decision comes after).
    pub handshake: Duration,
}

/// chatd's answer to a login.
// Returned once per login and taken apart at once: boxing the upstream would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum UpstreamLogin {
    /// `<success>`: the session is live. `first_payload` is that stanza's plaintext payload (flags
    /// byte + node) for the client; more stanzas may already be buffered inside `upstream`.
    Accepted { first_payload: Bytes, upstream: Upstream, info: LoginInfo },
    /// Anything else (`<failure reason=...>`, a `<stream:error>`): send `first_payload` to the
    /// client and close. The upstream connection is already closed.
    Rejected { first_payload: Bytes, info: LoginInfo },
}

/// A logged-in chatd connection, ready for [`crate::relay::relay`].
pub struct Upstream {
    pub(crate) stream: TcpStream,
    pub(crate) send: SendCipher,
    pub(crate) recv: RecvCipher,
    /// Sealed bytes chatd sent after the first stanza, read during the login.
    pub(crate) sealed_leftover: BytesMut,
    /// Plaintext frames queued for the client ahead of everything relayed.
    pub(crate) to_client: BytesMut,
    peer: SocketAddr,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("peer", &self.peer)
            .field("send", &self.send)
            .field("recv", &self.recv)
            .field("sealed_leftover", &self.sealed_leftover.len())
            .field("to_client", &self.to_client.len())
            .finish()
    }
}

impl Upstream {
    /// chatd's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The proxy's side of the connection (asked of the socket: nothing on the login path
    /// needs it).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Queues a plaintext stanza payload for the client, ahead of anything the relay forwards
    /// (typically chatd's `<success>`), so it is written with the relay's buffering and
    /// backpressure. Refused above the frame limit.
    pub fn queue_to_client(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        put_header(payload.len(), MAX_FRAME_LEN, &mut self.to_client)
            .map_err(|_| SessionError::UpstreamFrameTooLarge { len: payload.len(), max: MAX_FRAME_LEN })?;
        self.to_client.extend_from_slice(payload);
        Ok(())
    }
}

/// Connects to chatd and logs the client in (see the module docs).
///
/// The dial (resolution and TCP connect) is bounded by `connect_timeout`, everything after it by
/// `handshake_timeout`. Dropping the future closes the connection.
pub async fn connect(cfg: &UpstreamConfig, req: LoginRequest) -> Result<UpstreamLogin, SessionError> {
    cfg.validate()?;
    let started = Instant::now();
    let (mut stream, peer) = dial_upstream(cfg).await?;
    let connected = Instant::now();
    let answer = tokio::time::timeout(
        cfg.handshake_timeout,
        Box::pin(handshake(cfg, &mut stream, peer, &req, started, connected)),
    )
    .await
    .map_err(|_| SessionError::HandshakeTimeout(cfg.handshake_timeout))?;
    // `req` (key and payload) is dropped and wiped here, whatever the outcome.
    drop(req);
    answer.map(|answer| answer.into_login(stream, peer))
}

/// Like [`connect`], but a `cancel` during the handshake (a newer login for the account, a drain)
/// closes the connection gracefully: FIN, then chatd's own close awaited (bounded by `linger`),
/// so chatd has let the connection go before the caller releases the account for a newer login.
/// Dropping [`connect`]'s future instead closes the socket at once, and chatd may still count it
/// while the next login arrives.
pub async fn connect_cancellable(
    cfg: &UpstreamConfig,
    req: LoginRequest,
    cancel: &CancelHandle,
    linger: Duration,
) -> Result<UpstreamLogin, SessionError> {
    cfg.validate()?;
    let cancelled = || SessionError::Cancelled(cancel.reason().unwrap_or(CancelReason::Shutdown));
    let started = Instant::now();
    let (mut stream, peer) = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(cancelled()),
        s = dial_upstream(cfg) => s?,
    };
    let connected = Instant::now();
    // The handshake only borrows the socket: if it is abandoned, the socket is still here to be
    // closed properly.
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = tokio::time::timeout(
            cfg.handshake_timeout,
            Box::pin(handshake(cfg, &mut stream, peer, &req, started, connected)),
        ) => Some(r),
    };
    // `req` (key and payload) is wiped here, whatever the outcome.
    drop(req);
    match outcome {
        Some(answer) => answer
            .map_err(|_| SessionError::HandshakeTimeout(cfg.handshake_timeout))?
            .map(|answer| answer.into_login(stream, peer)),
        None => {
            // FIN, then read and discard until chatd closes too.
            wire_io::close::close(&mut stream, linger).await;
            Err(cancelled())
        }
    }
}

/// Decides where chatd is now and connects there, within `connect_timeout`. Returns the
/// address dialled with the stream, so nobody asks the socket for it.
async fn dial_upstream(cfg: &UpstreamConfig) -> Result<(TcpStream, SocketAddr), SessionError> {
    let attempt = async {
        let addr = cfg.addr.resolve().await?;
        Ok((dial(addr).await?, addr))
    };
    tokio::time::timeout(cfg.connect_timeout, attempt)
        .await
        .map_err(|_| SessionError::ConnectTimeout { addr: cfg.addr.clone(), after: cfg.connect_timeout })?
}

async fn dial(addr: SocketAddr) -> Result<TcpStream, SessionError> {
    // Keepalive: dead-peer detection below chatd's own idle rule.
    wire_io::net::dial(addr, DialOptions { from: None, keepalive: true })
        .await
        .map_err(|source| SessionError::Connect { addr, source })
}

/// chatd's answer, before the socket is joined to it.
enum Answer {
    Accepted { first_payload: Bytes, send: SendCipher, recv: RecvCipher, sealed_leftover: BytesMut, info: LoginInfo },
    Rejected { first_payload: Bytes, info: LoginInfo },
}

impl Answer {
    /// A rejection drops (closes) the socket here.
    fn into_login(self, stream: TcpStream, peer: SocketAddr) -> UpstreamLogin {
        match self {
            Answer::Accepted { first_payload, send, recv, sealed_leftover, info } => {
                let upstream = Upstream { stream, send, recv, sealed_leftover, to_client: BytesMut::new(), peer };
                UpstreamLogin::Accepted { first_payload, upstream, info }
            }
            Answer::Rejected { first_payload, info } => UpstreamLogin::Rejected { first_payload, info },
        }
    }
}

/// Boxed at both call sites: its state (the Noise initiator, the ClientHello and chain buffers)
/// is the largest await of a session's life, and inline it would size the session's future for
/// as long as the session is idle; on the heap it is freed once the login is answered.
async fn handshake(
    cfg: &UpstreamConfig,
    stream: &mut TcpStream,
    peer: SocketAddr,
    req: &LoginRequest,
    started: Instant,
    connected: Instant,
) -> Result<Answer, SessionError> {
    // PROXY header, `WA` header and ClientHello leave in one write.
    let mut preamble = Vec::with_capacity(128);
    proxy_header::write(cfg.proxy_protocol, req.client_addr, req.local_addr, &mut preamble)
        .map_err(SessionError::ProxyHeader)?;
    let config = ConnectConfig {
        verifier: CertVerifier::new(cfg.root_public_key),
        cert_cache: cfg.cert_cache.clone(),
        max_frame_len: cfg.max_frame_len,
    };
    let (key, payload) = (req.static_key.clone(), &req.client_payload[..]);
    let hs = if cfg.noise_ik {
        ClientConnect::resume(key, payload, &config, &preamble, wire_io::clock::unix_now())
    } else {
        ClientConnect::new(key, payload, &config, &preamble)
    }
    .map_err(handshake_error)?;
    let done = wire_io::handshake::connect(stream, hs).await.map_err(|e| match e {
        HandshakeError::Connect(e) => handshake_error(e),
        HandshakeError::Io(e) => SessionError::UpstreamIo(e),
        _ => SessionError::UpstreamClosedInHandshake,
    })?;
    let handshake = connected.elapsed();
    let (cert_cache, pattern, mut rbuf) = (done.cert_cache, done.pattern, done.leftover);

    let (send, mut recv) = done.transport.split();
    let mut first = match wire_io::frame::read_frame(stream, &mut rbuf, cfg.max_frame_len).await {
        Ok(Some(frame)) => frame,
        Err(FrameError::TooLarge { len, max }) => return Err(SessionError::UpstreamFrameTooLarge { len, max }),
        Err(FrameError::Io(e)) => return Err(SessionError::UpstreamIo(e)),
        Ok(None) | Err(_) => return Err(SessionError::UpstreamClosedInHandshake),
    };
    let first_payload = Bytes::copy_from_slice(recv.open(&mut first).map_err(SessionError::Open)?);
    let kind = match Decoder::default().decode_payload(&first_payload) {
        Ok(node) if node.tag() == "success" => StanzaKind::Success,
        Ok(_) => StanzaKind::Failure,
        Err(e) => return Err(SessionError::FirstStanza(e)),
    };
    let info = LoginInfo { cert_cache, pattern, elapsed: started.elapsed(), connect: connected - started, handshake };
    debug!(account = %req.account, %peer, ?kind, %pattern, elapsed = ?info.elapsed, "upstream login answered");
    if kind != StanzaKind::Success {
        return Ok(Answer::Rejected { first_payload, info });
    }
    Ok(Answer::Accepted { first_payload, send, recv, sealed_leftover: rbuf, info })
}

fn handshake_error(e: ConnectError) -> SessionError {
    match e {
        ConnectError::FrameTooLarge { len, max } => SessionError::UpstreamFrameTooLarge { len, max },
        ConnectError::Noise(e) => SessionError::Handshake(e),
        // Only a driver bug finishes early; the handshake did not complete.
        _ => SessionError::UpstreamClosedInHandshake,
    }
}
