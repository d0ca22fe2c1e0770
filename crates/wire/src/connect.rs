//! The client side of a chat connection's start, sans-IO: the bytes before the Noise handshake,
//! WhatsApp's Noise XX (or IK resumption) as the initiator, and the server's certificate chain,
//! in the style of quinn's `ClientConnect`: feed it what the server sent, send what it hands you,
//! and at the end take the transport and what the server proved.
//!
//! ```text
//! new()            -> transmit: [preamble] "WA" 6 3, frame(ClientHello)
//! recv/handle_recv <- frame(ServerHello)      (static key, certificate chain checked at `now`)
//!                  -> transmit: frame(ClientFinish{ClientPayload})
//! finish()         -> Connected { transport, server_static, chain, cert_cache, pattern, leftover }
//! ```
//!
//! [`ClientConnect::resume`] saves the round trip of the ClientFinish when the certificate cache
//! holds a chain it may resume with ([`CertCache::resumption`]: the newest verified chain for
//! the root, both certificates valid at `now`): the IK ClientHello carries the `ClientPayload`
//! encrypted to the cached key, and a ServerHello without `static` ends the handshake. A server
//! with another key answers as in XX; the handshake then continues as XXfallback (same ephemeral,
//! the chain checked as in XX, a ClientFinish sent). Any other failure of an IK attempt
//! (malformed or unauthenticated answer) suspends resumption in the shared cache, so the caller's
//! next connection is a plain XX ([`CertCache::suspend_resumption`] forces the same by hand);
//! the next verified chain lifts it. Without a usable cached chain, `resume` is `new`.
//!
//! No sockets and no clock: the caller passes the time in. The receive buffer grows only for the
//! frame in progress, whose length is checked against the limit before anything is reserved.
//! Bytes the server sent after its ServerHello (its first sealed stanza may come in the same read)
//! are handed back in [`Connected::leftover`].

use bytes::{Buf, BytesMut};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::cert::{CertVerifier, VerifiedChain};
use crate::cert_cache::{CacheOutcome, CertCache};
use crate::frame::{FrameError, HEADER_LEN, MAX_FRAME_LEN, decode_frame, encode_frame, peek_len};
use crate::noise::{
    DH_LEN, Flavour, HandshakePattern, IkInitiator, IkServerHello, Initiator, NoiseError, StaticKeypair, Transport,
    WA_CONN_HEADER,
};

/// Why the handshake failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server announced a handshake frame above the limit.
    #[error("handshake frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    /// The Noise handshake or the certificate chain ([`NoiseError::Cert`]) failed.
    #[error("Noise handshake failed")]
    Noise(#[from] NoiseError),
    /// [`ClientConnect::finish`] before the ClientFinish was handed out.
    #[error("the handshake is not finished: {0}")]
    NotFinished(&'static str),
}

/// A finished handshake.
pub struct Connected {
    pub transport: Transport,
    /// The server's static key, proved by the handshake and named by the chain's leaf.
    pub server_static: [u8; DH_LEN],
    /// The server's certificate chain, verified.
    pub chain: VerifiedChain,
    /// Whether the chain check was answered from the cache (always, after IK: the cached chain
    /// names the key the server just proved it holds).
    pub cert_cache: CacheOutcome,
    /// The handshake pattern that completed.
    pub pattern: HandshakePattern,
    /// Bytes received after the ServerHello: sealed transport frames, to be read first.
    pub leftover: BytesMut,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("transport", &self.transport)
            .field("server_static", &crate::cert::KeyHex(self.server_static))
            .field("chain", &self.chain)
            .field("cert_cache", &self.cert_cache)
            .field("pattern", &self.pattern)
            .field("leftover", &self.leftover.len())
            .finish()
    }
}

enum State {
    /// ClientHello handed out; the ClientPayload waits for the ServerHello.
    AwaitServerHello { initiator: Initiator, client_payload: Zeroizing<Vec<u8>> },
    /// IK ClientHello handed out, to the key of `chain`; the payload is kept for XXfallback.
    AwaitIkAnswer { initiator: IkInitiator, chain: VerifiedChain, client_payload: Zeroizing<Vec<u8>> },
    /// ClientFinish written into `transmit` (none after IK).
    Finished {
        transport: Transport,
        server_static: [u8; DH_LEN],
        chain: VerifiedChain,
        cert_cache: CacheOutcome,
        pattern: HandshakePattern,
    },
    /// Failed, or already finished.
    Done,
}

/// The initiator of one chat connection (see the module docs).
pub struct ClientConnect {
    state: State,
    verifier: CertVerifier,
    cert_cache: CertCache,
    max_frame_len: usize,
    received: BytesMut,
    transmit: Vec<u8>,
}

impl std::fmt::Debug for ClientConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::AwaitServerHello { .. } => "awaiting the ServerHello",
            State::AwaitIkAnswer { .. } => "awaiting the answer to IK",
            State::Finished { .. } => "finished",
            State::Done => "done",
        };
        f.debug_struct("ClientConnect")
            .field("state", &state)
            .field("received", &self.received.len())
            .field("transmit", &self.transmit.len())
            .finish_non_exhaustive()
    }
}

/// What [`ClientConnect::new`] needs besides the client's key and payload.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// The root the server's certificate chain must chain to.
    pub verifier: CertVerifier,
    /// Verified chains, shared between connections.
    pub cert_cache: CertCache,
    /// Largest handshake frame accepted from the server (capped at [`MAX_FRAME_LEN`]).
    pub max_frame_len: usize,
}

impl ConnectConfig {
    /// Trusting `root`, with a fresh cache and the protocol's frame limit.
    pub fn new(root: [u8; 32]) -> ConnectConfig {
        ConnectConfig { verifier: CertVerifier::new(root), cert_cache: CertCache::new(), max_frame_len: MAX_FRAME_LEN }
    }
}

impl ClientConnect {
    /// Starts a handshake as `static_key`, to log in with `client_payload` (an encoded
    /// `ClientPayload`). `preamble` goes before the `WA` header (a PROXY header, or nothing). The
    /// first [`transmit`](Self::transmit) holds the preamble, the header and the ClientHello, to
    /// be sent in one write.
    pub fn new(
        static_key: StaticKeypair,
        client_payload: &[u8],
        config: &ConnectConfig,
        preamble: &[u8],
    ) -> Result<ClientConnect, ConnectError> {
        let mut initiator = Initiator::new(static_key, Flavour::WhatsApp)?;
        let hello = initiator.client_hello()?;
        let state = State::AwaitServerHello { initiator, client_payload: Zeroizing::new(client_payload.to_vec()) };
        Self::start(state, &hello, config, preamble)
    }

    /// Like [`new`](Self::new), but resumes with Noise IK when `config.cert_cache` holds a chain
    /// for the root that is valid at `now_unix_secs` (see the module docs); otherwise XX.
    pub fn resume(
        static_key: StaticKeypair,
        client_payload: &[u8],
        config: &ConnectConfig,
        preamble: &[u8],
        now_unix_secs: u64,
    ) -> Result<ClientConnect, ConnectError> {
        let Some(chain) = config.cert_cache.resumption(&config.verifier.root, now_unix_secs) else {
            return Self::new(static_key, client_payload, config, preamble);
        };
        let mut initiator = IkInitiator::new(static_key, chain.leaf.key, Flavour::WhatsApp)?;
        let hello = initiator.client_hello(client_payload)?;
        let state = State::AwaitIkAnswer { initiator, chain, client_payload: Zeroizing::new(client_payload.to_vec()) };
        Self::start(state, &hello, config, preamble)
    }

    fn start(
        state: State,
        hello: &[u8],
        config: &ConnectConfig,
        preamble: &[u8],
    ) -> Result<ClientConnect, ConnectError> {
        let mut transmit = Vec::with_capacity(preamble.len() + WA_CONN_HEADER.len() + HEADER_LEN + hello.len());
        transmit.extend_from_slice(preamble);
        transmit.extend_from_slice(&WA_CONN_HEADER);
        frame_into(hello, &mut transmit)?;
        Ok(ClientConnect {
            state,
            verifier: config.verifier,
            cert_cache: config.cert_cache.clone(),
            max_frame_len: config.max_frame_len.min(MAX_FRAME_LEN),
            received: BytesMut::with_capacity(4096),
            transmit,
        })
    }

    /// The pattern this handshake is running: XX, IK, or XXfallback once an IK was declined.
    pub fn pattern(&self) -> Option<HandshakePattern> {
        match &self.state {
            State::AwaitServerHello { initiator, .. } => Some(initiator.pattern()),
            State::AwaitIkAnswer { .. } => Some(HandshakePattern::Ik),
            State::Finished { pattern, .. } => Some(*pattern),
            State::Done => None,
        }
    }

    /// The bytes to send now, if any; the caller sends all of them before reading on.
    pub fn transmit(&mut self) -> Option<Vec<u8>> {
        (!self.transmit.is_empty()).then(|| std::mem::take(&mut self.transmit))
    }

    /// The buffer to read the server's bytes into, with room reserved for the frame in progress
    /// (its announced length was checked against the limit by [`handle_recv`](Self::handle_recv)).
    pub fn recv_buf(&mut self) -> &mut BytesMut {
        let need = peek_len(&self.received)
            .filter(|len| *len <= self.max_frame_len)
            .map_or(HEADER_LEN, |len| HEADER_LEN + len)
            .saturating_sub(self.received.len());
        self.received.reserve(need.max(1024));
        &mut self.received
    }

    /// Appends bytes the server sent (for callers whose bytes arrive as messages).
    pub fn recv(&mut self, bytes: &[u8]) {
        self.received.extend_from_slice(bytes);
    }

    /// Processes what was received, checking the certificate chain at `now_unix_secs`. `Ok(true)`
    /// once the handshake is finished (the ClientFinish is then in [`transmit`](Self::transmit)),
    /// `Ok(false)` while more bytes are needed. Any error ends the handshake.
    pub fn handle_recv(&mut self, now_unix_secs: u64) -> Result<bool, ConnectError> {
        if !matches!(self.state, State::AwaitServerHello { .. } | State::AwaitIkAnswer { .. }) {
            return Ok(matches!(self.state, State::Finished { .. }));
        }
        let len = match decode_frame(&self.received, self.max_frame_len) {
            Ok(Some((body, _))) => body.len(),
            Ok(None) => return Ok(false),
            Err(FrameError::TooLarge { len, max }) => return self.fail(ConnectError::FrameTooLarge { len, max }),
            Err(_) => return Ok(false),
        };
        let (initiator, client_payload) = match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitServerHello { initiator, client_payload } => (initiator, client_payload),
            State::AwaitIkAnswer { initiator, chain, client_payload } => {
                let hello = &self.received[HEADER_LEN..HEADER_LEN + len];
                match initiator.read_server_hello(hello) {
                    Ok(IkServerHello::Accepted { transport, .. }) => {
                        self.received.advance(HEADER_LEN + len);
                        self.state = State::Finished {
                            transport,
                            server_static: chain.leaf.key,
                            chain,
                            cert_cache: CacheOutcome::Hit,
                            pattern: HandshakePattern::Ik,
                        };
                        return Ok(true);
                    }
                    Ok(IkServerHello::Fallback(initiator)) => (initiator, client_payload),
                    Err(e) => {
                        // The cached key led nowhere: the next connection starts with XX.
                        self.cert_cache.suspend_resumption();
                        return Err(e.into());
                    }
                }
            }
            State::Finished { .. } | State::Done => return Ok(false),
        };
        self.finish_full(initiator, &client_payload, len, now_unix_secs)?;
        Ok(true)
    }

    /// XX (or XXfallback) from the ServerHello of `len` bytes on: the chain check, then the
    /// ClientFinish.
    fn finish_full(
        &mut self,
        mut initiator: Initiator,
        client_payload: &[u8],
        len: usize,
        now_unix_secs: u64,
    ) -> Result<(), ConnectError> {
        let pattern = initiator.pattern();
        let hello = &self.received[HEADER_LEN..HEADER_LEN + len];
        let info = initiator.read_server_hello(hello)?;
        // On a chain error we return here, so the (unverified) initiator is never finished.
        let (chain, cert_cache) = self
            .cert_cache
            .verify(&self.verifier, &info.cert_chain, &info.server_static, now_unix_secs)
            .map_err(NoiseError::Cert)?;
        self.received.advance(HEADER_LEN + len);
        let (finish, transport) = initiator.client_finish(client_payload)?;
        frame_into(&finish, &mut self.transmit)?;
        self.state = State::Finished { transport, server_static: info.server_static, chain, cert_cache, pattern };
        Ok(())
    }

    /// Whether the handshake is finished (the ClientFinish may still wait in
    /// [`transmit`](Self::transmit)).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished { .. })
    }

    /// The transport and what the server proved, once finished and the ClientFinish was taken.
    pub fn finish(self) -> Result<Connected, ConnectError> {
        if !self.transmit.is_empty() {
            return Err(ConnectError::NotFinished("the ClientFinish has not been taken to be sent"));
        }
        match self.state {
            State::Finished { transport, server_static, chain, cert_cache, pattern } => {
                Ok(Connected { transport, server_static, chain, cert_cache, pattern, leftover: self.received })
            }
            State::AwaitServerHello { .. } | State::AwaitIkAnswer { .. } => {
                Err(ConnectError::NotFinished("no ServerHello yet"))
            }
            State::Done => Err(ConnectError::NotFinished("the handshake failed")),
        }
    }

    fn fail(&mut self, e: ConnectError) -> Result<bool, ConnectError> {
        self.state = State::Done;
        Err(e)
    }
}

fn frame_into(body: &[u8], out: &mut Vec<u8>) -> Result<(), ConnectError> {
    encode_frame(body, out).map_err(|e| match e {
        FrameError::TooLarge { len, max } => ConnectError::Noise(NoiseError::PayloadTooLarge { len, max }),
        // Encoding into a Vec neither truncates nor does I/O.
        FrameError::Truncated { .. } | FrameError::Io(_) => ConnectError::Noise(NoiseError::Crypto { op: "framing" }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::CertError;
    use crate::noise::{Responder, ServerStart, accept_client_hello};
    use crate::proto::HandshakeMessage;
    use crate::testing::TestServer;
    use prost::Message as _;

    const NOW: u64 = 1_700_000_000;

    /// Answers the client's first transmit with any pattern, as the simulator does.
    fn answer(srv: &TestServer, first: &[u8]) -> (ServerStart, Vec<u8>) {
        assert_eq!(&first[..4], &WA_CONN_HEADER);
        let (hello, tail) = decode_frame(&first[4..], MAX_FRAME_LEN).unwrap().unwrap();
        assert!(tail.is_empty());
        match accept_client_hello(srv.key.clone(), srv.chain.clone(), Flavour::WhatsApp, hello).unwrap() {
            ServerStart::Full(mut r) => {
                let reply = framed(&r.server_hello().unwrap());
                (ServerStart::Full(r), reply)
            }
            ServerStart::Resumed(resumed) => {
                let reply = framed(&resumed.server_hello);
                (ServerStart::Resumed(resumed), reply)
            }
        }
    }

    /// One connection by `resume`, to its end; the server's transport is checked against ours.
    fn resume_once(srv: &TestServer, config: &ConnectConfig) -> Connected {
        let mut c = ClientConnect::resume(StaticKeypair::generate().unwrap(), b"payload", config, b"", NOW).unwrap();
        let first = c.transmit().unwrap();
        let (start, reply) = answer(srv, &first);
        c.recv(&reply);
        assert!(c.handle_recv(NOW).unwrap());
        let mut server_t = match start {
            ServerStart::Resumed(r) => {
                assert!(c.transmit().is_none(), "no ClientFinish after IK");
                assert_eq!(&r.finished.client_payload[..], b"payload");
                r.finished.transport
            }
            ServerStart::Full(r) => {
                let finish = c.transmit().unwrap();
                let done = r.read_client_finish(decode_frame(&finish, MAX_FRAME_LEN).unwrap().unwrap().0).unwrap();
                assert_eq!(&done.client_payload[..], b"payload");
                done.transport
            }
        };
        let mut connected = c.finish().unwrap();
        let mut buf = BytesMut::from(&b"hi"[..]);
        connected.transport.seal(&mut buf).unwrap();
        assert_eq!(server_t.open(&mut buf).unwrap(), b"hi");
        connected
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(body, &mut out).unwrap();
        out
    }

    /// Reads the client's first transmit as the server does: header, then the ClientHello frame.
    fn server_hello_for(srv: &TestServer, first: &[u8], preamble: &[u8]) -> (Responder, Vec<u8>) {
        assert_eq!(&first[..preamble.len()], preamble);
        let rest = &first[preamble.len()..];
        assert_eq!(&rest[..4], &WA_CONN_HEADER);
        let (hello, tail) = decode_frame(&rest[4..], MAX_FRAME_LEN).unwrap().unwrap();
        assert!(tail.is_empty());
        let mut r = srv.responder();
        r.read_client_hello(hello).unwrap();
        let reply = framed(&r.server_hello().unwrap());
        (r, reply)
    }

    fn client(config: &ConnectConfig, preamble: &[u8]) -> ClientConnect {
        ClientConnect::new(StaticKeypair::generate().unwrap(), b"payload", config, preamble).unwrap()
    }

    #[test]
    fn handshake_byte_by_byte_then_transport_both_ways() {
        let srv = TestServer::generate(NOW);
        let config = ConnectConfig::new(srv.root);
        let mut c = client(&config, b"PROXY x\r\n");
        let (r, mut reply) = server_hello_for(&srv, &c.transmit().unwrap(), b"PROXY x\r\n");
        assert!(c.transmit().is_none(), "nothing more until the ServerHello");
        // The server's first sealed stanza arrives in the same bytes as its hello.
        reply.extend_from_slice(b"\x00\x00\x01Z");
        let mut finished = false;
        for byte in &reply {
            assert!(!finished || c.is_finished());
            c.recv(std::slice::from_ref(byte));
            finished = c.handle_recv(NOW).unwrap();
        }
        assert!(finished);
        let finish = c.transmit().unwrap();
        let (body, tail) = decode_frame(&finish, MAX_FRAME_LEN).unwrap().unwrap();
        assert!(tail.is_empty());
        let done = r.read_client_finish(body).unwrap();
        assert_eq!(&done.client_payload[..], b"payload");
        let connected = c.finish().unwrap();
        assert_eq!(connected.server_static, srv.key.public());
        assert_eq!(connected.chain.leaf.key, srv.key.public());
        assert_eq!(connected.cert_cache, CacheOutcome::Miss);
        assert_eq!(connected.pattern, HandshakePattern::Xx);
        assert_eq!(&connected.leftover[..], b"\x00\x00\x01Z");
        let (mut client_t, mut server_t) = (connected.transport, done.transport);
        let mut buf = BytesMut::from(&b"hi"[..]);
        client_t.seal(&mut buf).unwrap();
        assert_eq!(server_t.open(&mut buf).unwrap(), b"hi");
    }

    #[test]
    fn a_second_connection_is_answered_from_the_cache() {
        let srv = TestServer::generate(NOW);
        let config = ConnectConfig::new(srv.root);
        for expected in [CacheOutcome::Miss, CacheOutcome::Hit] {
            let mut c = client(&config, b"");
            let (_, reply) = server_hello_for(&srv, &c.transmit().unwrap(), b"");
            c.recv_buf().extend_from_slice(&reply);
            assert!(c.handle_recv(NOW).unwrap());
            c.transmit().unwrap();
            assert_eq!(c.finish().unwrap().cert_cache, expected);
        }
        assert_eq!(config.cert_cache.stats(), (1, 1));
    }

    #[test]
    fn resume_is_xx_first_then_ik_while_the_cached_chain_is_valid() {
        let srv = TestServer::generate(NOW);
        let config = ConnectConfig::new(srv.root);
        let first = resume_once(&srv, &config);
        assert_eq!((first.pattern, first.cert_cache), (HandshakePattern::Xx, CacheOutcome::Miss));
        let second = resume_once(&srv, &config);
        assert_eq!((second.pattern, second.cert_cache), (HandshakePattern::Ik, CacheOutcome::Hit));
        assert_eq!(second.server_static, srv.key.public());
        assert_eq!(second.chain, first.chain);
        let ik = ClientConnect::resume(StaticKeypair::generate().unwrap(), b"p", &config, b"", NOW).unwrap();
        assert_eq!(ik.pattern(), Some(HandshakePattern::Ik));
        let hello = HandshakeMessage::decode(&ik_hello_body(ik)[..]).unwrap().client_hello.unwrap();
        assert_eq!((hello.r#static.map(|s| s.len()), hello.payload.map(|p| p.len())), (Some(48), Some(1 + 16)));
        // Past the chain's validity the cache offers nothing: XX again.
        let late = ClientConnect::resume(StaticKeypair::generate().unwrap(), b"p", &config, b"", NOW + 7200).unwrap();
        assert_eq!(late.pattern(), Some(HandshakePattern::Xx));
        // `new` never resumes.
        assert_eq!(client(&config, b"").pattern(), Some(HandshakePattern::Xx));
    }

    fn ik_hello_body(mut c: ClientConnect) -> Vec<u8> {
        let first = c.transmit().unwrap();
        decode_frame(&first[4..], MAX_FRAME_LEN).unwrap().unwrap().0.to_vec()
    }

    #[test]
    fn a_rotated_server_key_is_learnt_through_xxfallback() {
        let srv = TestServer::generate(NOW);
        let config = ConnectConfig::new(srv.root);
        resume_once(&srv, &config);
        let new = srv.rotated(NOW);
        let fallback = resume_once(&new, &config);
        assert_eq!((fallback.pattern, fallback.cert_cache), (HandshakePattern::XxFallback, CacheOutcome::Miss));
        assert_eq!(fallback.server_static, new.key.public());
        let again = resume_once(&new, &config);
        assert_eq!((again.pattern, again.server_static), (HandshakePattern::Ik, new.key.public()));
    }

    #[test]
    fn a_failed_ik_answer_suspends_resumption_until_the_next_full_handshake() {
        let srv = TestServer::generate(NOW);
        let config = ConnectConfig::new(srv.root);
        resume_once(&srv, &config);
        let mut c = ClientConnect::resume(StaticKeypair::generate().unwrap(), b"payload", &config, b"", NOW).unwrap();
        let (_, mut reply) = answer(&srv, &c.transmit().unwrap());
        let last = reply.len() - 1;
        reply[last] ^= 1;
        c.recv(&reply);
        assert!(matches!(c.handle_recv(NOW), Err(ConnectError::Noise(NoiseError::Decrypt { .. }))));
        assert!(c.transmit().is_none());
        assert!(matches!(c.finish(), Err(ConnectError::NotFinished(_))));
        assert_eq!(resume_once(&srv, &config).pattern, HandshakePattern::Xx, "forced XX");
        assert_eq!(resume_once(&srv, &config).pattern, HandshakePattern::Ik, "lifted by the XX");
    }

    #[test]
    fn an_untrusted_or_expired_chain_fails_before_the_client_finish() {
        let srv = TestServer::generate(NOW);
        for (config, now) in [(ConnectConfig::new([9; 32]), NOW), (ConnectConfig::new(srv.root), NOW + 7200)] {
            let mut c = client(&config, b"");
            let (_, reply) = server_hello_for(&srv, &c.transmit().unwrap(), b"");
            c.recv(&reply);
            let err = c.handle_recv(now).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConnectError::Noise(NoiseError::Cert(
                        CertError::BadIntermediateSignature { .. } | CertError::Expired { .. }
                    ))
                ),
                "{err:?}"
            );
            assert!(c.transmit().is_none(), "no ClientFinish (and no payload) for an unverified server");
            assert!(matches!(c.finish(), Err(ConnectError::NotFinished(_))));
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_buffered() {
        let mut config = ConnectConfig::new([1; 32]);
        config.max_frame_len = 1024;
        let mut c = client(&config, b"");
        c.transmit().unwrap();
        c.recv(&[0xff, 0xff, 0xff]);
        assert!(matches!(c.handle_recv(NOW), Err(ConnectError::FrameTooLarge { len: 0xff_ffff, max: 1024 })));
        assert!(c.recv_buf().capacity() < 8192, "nothing reserved for a refused frame");
        // Failed for good.
        c.recv(&[0, 0, 1, 0]);
        assert!(!c.handle_recv(NOW).unwrap());
    }

    #[test]
    fn garbage_and_tampered_hellos_are_typed_errors() {
        let srv = TestServer::generate(NOW);
        let config = ConnectConfig::new(srv.root);
        let mut c = client(&config, b"");
        c.transmit().unwrap();
        c.recv(&framed(b"\xff\x00 not a HandshakeMessage"));
        assert!(matches!(c.handle_recv(NOW), Err(ConnectError::Noise(NoiseError::Protobuf { .. }))));

        let mut c = client(&config, b"");
        let (_, mut reply) = server_hello_for(&srv, &c.transmit().unwrap(), b"");
        let last = reply.len() - 1;
        reply[last] ^= 1;
        c.recv(&reply);
        assert!(matches!(c.handle_recv(NOW), Err(ConnectError::Noise(NoiseError::Decrypt { .. }))));
        assert!(c.transmit().is_none());
    }

    #[test]
    fn finish_is_refused_until_the_client_finish_is_taken() {
        let srv = TestServer::generate(NOW);
        let config = ConnectConfig::new(srv.root);
        let mut c = client(&config, b"");
        let (_, reply) = server_hello_for(&srv, &c.transmit().unwrap(), b"");
        c.recv(&reply);
        assert!(c.handle_recv(NOW).unwrap());
        assert!(c.handle_recv(NOW).unwrap(), "handling again once finished changes nothing");
        assert!(matches!(client(&config, b"").finish(), Err(ConnectError::NotFinished(_))));
        assert!(matches!(c.finish(), Err(ConnectError::NotFinished(_))));
    }
}
