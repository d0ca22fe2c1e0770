//! The two XX state machines (also the XXfallback ones: the same steps after another start, see
//! `ik.rs`). Each step checks the state it is called in, so calling steps out of
//! order (or after a failure) is a typed [`NoiseError::OutOfOrder`], never a panic; any failure
//! while processing a peer message poisons the state.
//!
//! Every step exists twice: the WhatsApp form (fields wrapped in the `HandshakeMessage` protobuf)
//! and a `_raw` form (fields concatenated, as stock Noise sends them) used by the snow conformance
//! test. Both run the same core.

use std::fmt;

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use bytes::Bytes;
use prost::Message;
use zeroize::Zeroizing;

use super::symmetric::{Role, SymmetricState};
use super::transport::Transport;
use super::{
    DH_LEN, Flavour, HandshakePattern, HandshakeStage, NOISE_XX_FALLBACK_PROTOCOL_NAME, NOISE_XX_PROTOCOL_NAME,
    NoiseError, StaticKeypair, TAG_LEN, WA_CONN_HEADER, public_bytes,
};
use crate::cert::{CertVerifier, KeyHex, VerifiedChain};
use crate::proto::{ClientFinish, ClientHello, HandshakeMessage, ServerHello};

/// An encrypted static key: the key and its tag.
pub(super) const ENC_STATIC_LEN: usize = DH_LEN + TAG_LEN;

/// What the initiator learns from the ServerHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHelloInfo {
    /// The server's static public key, authenticated by the handshake.
    pub server_static: [u8; DH_LEN],
    /// The decrypted payload: an encoded `CertChain` to check with [`CertVerifier`].
    pub cert_chain: Vec<u8>,
}

/// What the responder learns from the ClientFinish, and the session's transport.
pub struct ClientFinished {
    /// The client's static public key, authenticated by the handshake.
    pub client_static: [u8; DH_LEN],
    /// The decrypted `ClientPayload` bytes. They carry the login token, so they are wiped on drop
    /// and `Debug` shows only their length.
    pub client_payload: Zeroizing<Vec<u8>>,
    /// The established session.
    pub transport: Transport,
}

impl fmt::Debug for ClientFinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFinished")
            .field("client_static", &KeyHex(self.client_static))
            .field("client_payload_len", &self.client_payload.len())
            .field("transport", &self.transport)
            .finish()
    }
}

/// A fresh ephemeral keypair; aws-lc wipes the private key on drop.
pub(super) struct Ephemeral {
    pub(super) private: agreement::PrivateKey,
    pub(super) public: [u8; DH_LEN],
}

impl Ephemeral {
    pub(super) fn generate() -> Result<Self, NoiseError> {
        let private = agreement::PrivateKey::generate(&X25519).map_err(|_| NoiseError::Rng)?;
        let public = public_bytes(&private)?;
        Ok(Self { private, public })
    }
}

/// `MixKey(DH(private, public))`. X25519 in aws-lc rejects small-order peer keys (all-zero
/// output), which we report instead of mixing a predictable secret.
pub(super) fn mix_dh(
    sym: &mut SymmetricState,
    private: &agreement::PrivateKey,
    public: &[u8; DH_LEN],
    which: &'static str,
) -> Result<(), NoiseError> {
    agreement::agree(
        private,
        UnparsedPublicKey::new(&X25519, public),
        NoiseError::InvalidPublicKey { which },
        |shared| sym.mix_key(shared),
    )
}

pub(super) fn new_state(protocol_name: &[u8], flavour: Flavour, prologue: &[u8]) -> SymmetricState {
    let mut sym = SymmetricState::new(protocol_name, flavour);
    sym.mix_hash(prologue);
    sym
}

/// XXfallback's start: the client's ephemeral, already sent in its IK ClientHello, is the
/// pre-message. From here both sides run the XX steps.
fn fallback_state(flavour: Flavour, prologue: &[u8], client_ephemeral: &[u8; DH_LEN]) -> SymmetricState {
    let mut sym = new_state(NOISE_XX_FALLBACK_PROTOCOL_NAME, flavour, prologue);
    sym.mix_hash(client_ephemeral);
    sym
}

// ---------------------------------------------------------------------------------------------
// Initiator

enum InitiatorState {
    Start,
    SentHello,
    GotServerHello { re: [u8; DH_LEN] },
    Failed,
}

impl InitiatorState {
    fn describe(&self) -> &'static str {
        match self {
            InitiatorState::Start => "has not sent its ClientHello yet",
            InitiatorState::SentHello => "is waiting for the ServerHello",
            InitiatorState::GotServerHello { .. } => "has already read the ServerHello",
            InitiatorState::Failed => "failed earlier and cannot continue",
        }
    }
}

/// The client side of the XX handshake.
///
/// `client_hello` -> `read_server_hello` (or `read_server_hello_verified`) -> `client_finish`.
pub struct Initiator {
    sym: SymmetricState,
    s: StaticKeypair,
    e: Ephemeral,
    state: InitiatorState,
    pattern: HandshakePattern,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("pattern", &self.pattern)
            .field("static", &self.s)
            .field("state", &self.state.describe())
            .field("sym", &self.sym)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// A client with prologue [`WA_CONN_HEADER`] and a fresh ephemeral key.
    pub fn new(static_key: StaticKeypair, flavour: Flavour) -> Result<Self, NoiseError> {
        Self::with_prologue(static_key, flavour, &WA_CONN_HEADER)
    }

    /// A client with another prologue (e.g. an older connection header).
    pub fn with_prologue(static_key: StaticKeypair, flavour: Flavour, prologue: &[u8]) -> Result<Self, NoiseError> {
        Ok(Self {
            sym: new_state(NOISE_XX_PROTOCOL_NAME, flavour, prologue),
            s: static_key,
            e: Ephemeral::generate()?,
            state: InitiatorState::Start,
            pattern: HandshakePattern::Xx,
        })
    }

    /// The XXfallback initiator after a declined IK attempt: `e` is the ephemeral the IK
    /// ClientHello carried. It waits for the ServerHello, which it reads as in XX.
    pub(super) fn fallback(static_key: StaticKeypair, e: Ephemeral, flavour: Flavour, prologue: &[u8]) -> Self {
        Self {
            sym: fallback_state(flavour, prologue, &e.public),
            s: static_key,
            e,
            state: InitiatorState::SentHello,
            pattern: HandshakePattern::XxFallback,
        }
    }

    /// [`HandshakePattern::Xx`], or [`HandshakePattern::XxFallback`] after a declined IK.
    pub fn pattern(&self) -> HandshakePattern {
        self.pattern
    }

    /// The current handshake hash.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.sym.handshake_hash()
    }

    /// Message 1 as an unframed `HandshakeMessage{clientHello{ephemeral}}`.
    pub fn client_hello(&mut self) -> Result<Vec<u8>, NoiseError> {
        let e = self.write_hello("client_hello")?;
        let hello = ClientHello { ephemeral: Some(e.to_vec()), ..Default::default() };
        Ok(HandshakeMessage { client_hello: Some(hello), ..Default::default() }.encode_to_vec())
    }

    /// Message 1 as stock Noise sends it: `e` followed by the (empty) payload.
    pub fn client_hello_raw(&mut self) -> Result<Vec<u8>, NoiseError> {
        Ok(self.write_hello("client_hello_raw")?.to_vec())
    }

    fn write_hello(&mut self, call: &'static str) -> Result<[u8; DH_LEN], NoiseError> {
        if !matches!(self.state, InitiatorState::Start) {
            return Err(NoiseError::OutOfOrder { call, state: self.state.describe() });
        }
        self.sym.mix_hash(&self.e.public);
        // The empty payload: hashed in the Standard flavour only (no key yet, nothing encrypted).
        let payload = self.sym.encrypt_and_hash(&[])?;
        debug_assert!(payload.is_empty());
        self.state = InitiatorState::SentHello;
        Ok(self.e.public)
    }

    /// Reads message 2 (a `HandshakeMessage{serverHello}`): returns the server's static key and
    /// the decrypted certificate chain, which the caller must verify before finishing (or use
    /// [`read_server_hello_verified`](Self::read_server_hello_verified)).
    pub fn read_server_hello(&mut self, msg: &[u8]) -> Result<ServerHelloInfo, NoiseError> {
        self.read_hello("read_server_hello", msg, parse_server_hello)
    }

    /// Reads message 2 in stock Noise layout: `e (32) || Enc(s) (48) || Enc(payload) (>= 16)`.
    pub fn read_server_hello_raw(&mut self, msg: &[u8]) -> Result<ServerHelloInfo, NoiseError> {
        self.read_hello("read_server_hello_raw", msg, parse_server_hello_raw)
    }

    /// [`read_server_hello`](Self::read_server_hello), then the certificate checks at
    /// `now_unix_secs`. A rejected chain fails the handshake.
    pub fn read_server_hello_verified(
        &mut self,
        msg: &[u8],
        verifier: &CertVerifier,
        now_unix_secs: u64,
    ) -> Result<VerifiedChain, NoiseError> {
        let info = self.read_server_hello(msg)?;
        verifier.verify(&info.cert_chain, &info.server_static, now_unix_secs).map_err(|e| {
            self.state = InitiatorState::Failed;
            NoiseError::Cert(e)
        })
    }

    fn read_hello(
        &mut self,
        call: &'static str,
        msg: &[u8],
        parse: fn(&[u8]) -> Result<HelloParts, NoiseError>,
    ) -> Result<ServerHelloInfo, NoiseError> {
        if !matches!(self.state, InitiatorState::SentHello) {
            return Err(NoiseError::OutOfOrder { call, state: self.state.describe() });
        }
        match parse(msg).and_then(|parts| self.process_server_hello(parts)) {
            Ok((info, re)) => {
                self.state = InitiatorState::GotServerHello { re };
                Ok(info)
            }
            Err(e) => {
                self.state = InitiatorState::Failed;
                Err(e)
            }
        }
    }

    /// `e, ee, s, es` + payload.
    fn process_server_hello(&mut self, parts: HelloParts) -> Result<(ServerHelloInfo, [u8; DH_LEN]), NoiseError> {
        let re = parts.ephemeral;
        self.sym.mix_hash(&re);
        mix_dh(&mut self.sym, &self.e.private, &re, "server ephemeral")?;
        let rs = self.sym.decrypt_and_hash(&parts.enc_static, HandshakeStage::ServerHelloStatic)?;
        let rs: [u8; DH_LEN] = rs.as_slice().try_into().map_err(|_| NoiseError::FieldLength {
            field: "ServerHello static",
            len: rs.len(),
            expected: DH_LEN,
        })?;
        mix_dh(&mut self.sym, &self.e.private, &rs, "server static")?;
        let cert_chain = self.sym.decrypt_and_hash(&parts.enc_payload, HandshakeStage::ServerHelloPayload)?;
        Ok((ServerHelloInfo { server_static: rs, cert_chain }, re))
    }

    /// Message 3 as an unframed `HandshakeMessage{clientFinish}` carrying `client_payload` (the
    /// encoded `ClientPayload`), and the session's transport.
    pub fn client_finish(self, client_payload: &[u8]) -> Result<(Vec<u8>, Transport), NoiseError> {
        let (enc_static, enc_payload, transport) = self.write_finish("client_finish", client_payload)?;
        let finish = ClientFinish { r#static: Some(enc_static), payload: Some(enc_payload) };
        Ok((HandshakeMessage { client_finish: Some(finish), ..Default::default() }.encode_to_vec(), transport))
    }

    /// Message 3 in stock Noise layout: `Enc(s) || Enc(payload)`.
    pub fn client_finish_raw(self, payload: &[u8]) -> Result<(Vec<u8>, Transport), NoiseError> {
        let (mut msg, enc_payload, transport) = self.write_finish("client_finish_raw", payload)?;
        msg.extend_from_slice(&enc_payload);
        Ok((msg, transport))
    }

    /// `s, se` + payload, then Split.
    fn write_finish(mut self, call: &'static str, payload: &[u8]) -> Result<(Vec<u8>, Vec<u8>, Transport), NoiseError> {
        let InitiatorState::GotServerHello { re } = self.state else {
            return Err(NoiseError::OutOfOrder { call, state: self.state.describe() });
        };
        let enc_static = self.sym.encrypt_and_hash(&self.s.public())?;
        mix_dh(&mut self.sym, self.s.private(), &re, "server ephemeral")?;
        // Encrypted in place: no plaintext copy of the payload (and its token) stays behind.
        let enc_payload = self.sym.encrypt_and_hash(payload)?;
        Ok((enc_static, enc_payload, self.sym.split(Role::Initiator)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Responder

enum ResponderState {
    Start,
    GotHello { re: [u8; DH_LEN] },
    SentHello,
    Failed,
}

impl ResponderState {
    fn describe(&self) -> &'static str {
        match self {
            ResponderState::Start => "has not read a ClientHello yet",
            ResponderState::GotHello { .. } => "has read the ClientHello but not sent its ServerHello",
            ResponderState::SentHello => "is waiting for the ClientFinish",
            ResponderState::Failed => "failed earlier and cannot continue",
        }
    }
}

/// The server side of the XX handshake (the chatd simulator).
///
/// `read_client_hello` -> `server_hello` -> `read_client_finish`.
pub struct Responder {
    sym: SymmetricState,
    s: StaticKeypair,
    e: Ephemeral,
    cert_chain: Bytes,
    state: ResponderState,
    pattern: HandshakePattern,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("pattern", &self.pattern)
            .field("static", &self.s)
            .field("state", &self.state.describe())
            .field("sym", &self.sym)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A server with prologue [`WA_CONN_HEADER`], sending `cert_chain_bytes` (an encoded
    /// `CertChain`, e.g. from [`crate::cert::CertIssuer::issue`]) as its ServerHello payload.
    /// Passing a `Bytes` shares one chain between connections without copying.
    pub fn new(
        static_key: StaticKeypair,
        cert_chain_bytes: impl Into<Bytes>,
        flavour: Flavour,
    ) -> Result<Self, NoiseError> {
        Self::with_prologue(static_key, cert_chain_bytes, flavour, &WA_CONN_HEADER)
    }

    /// A server with another prologue.
    pub fn with_prologue(
        static_key: StaticKeypair,
        cert_chain_bytes: impl Into<Bytes>,
        flavour: Flavour,
        prologue: &[u8],
    ) -> Result<Self, NoiseError> {
        Ok(Self {
            sym: new_state(NOISE_XX_PROTOCOL_NAME, flavour, prologue),
            s: static_key,
            e: Ephemeral::generate()?,
            cert_chain: cert_chain_bytes.into(),
            state: ResponderState::Start,
            pattern: HandshakePattern::Xx,
        })
    }

    /// The XXfallback responder for an IK ClientHello whose `static` did not open under our key:
    /// the client's ephemeral `re` is the pre-message; next is [`server_hello`](Self::server_hello).
    pub(super) fn fallback(
        static_key: StaticKeypair,
        cert_chain: Bytes,
        flavour: Flavour,
        prologue: &[u8],
        re: [u8; DH_LEN],
    ) -> Result<Self, NoiseError> {
        Ok(Self {
            sym: fallback_state(flavour, prologue, &re),
            s: static_key,
            e: Ephemeral::generate()?,
            cert_chain,
            state: ResponderState::GotHello { re },
            pattern: HandshakePattern::XxFallback,
        })
    }

    /// [`HandshakePattern::Xx`], or [`HandshakePattern::XxFallback`] for a declined IK.
    pub fn pattern(&self) -> HandshakePattern {
        self.pattern
    }

    /// The current handshake hash.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.sym.handshake_hash()
    }

    /// Reads message 1, a `HandshakeMessage{clientHello{ephemeral}}`. IK fields (`static`,
    /// `payload`) are refused: this responder speaks XX only.
    pub fn read_client_hello(&mut self, msg: &[u8]) -> Result<(), NoiseError> {
        self.read_hello("read_client_hello", msg, parse_client_hello)
    }

    /// Reads message 1 in stock Noise layout: exactly `e` (the payload must be empty).
    pub fn read_client_hello_raw(&mut self, msg: &[u8]) -> Result<(), NoiseError> {
        self.read_hello("read_client_hello_raw", msg, |msg| exact(msg, "ClientHello"))
    }

    fn read_hello(
        &mut self,
        call: &'static str,
        msg: &[u8],
        parse: fn(&[u8]) -> Result<[u8; DH_LEN], NoiseError>,
    ) -> Result<(), NoiseError> {
        if !matches!(self.state, ResponderState::Start) {
            return Err(NoiseError::OutOfOrder { call, state: self.state.describe() });
        }
        let result = parse(msg).and_then(|re| {
            self.sym.mix_hash(&re);
            // The empty payload: hashed in the Standard flavour only (no key yet, nothing to open).
            self.sym.decrypt_and_hash(&[], HandshakeStage::ClientHelloPayload)?;
            Ok(re)
        });
        match result {
            Ok(re) => {
                self.state = ResponderState::GotHello { re };
                Ok(())
            }
            Err(e) => {
                self.state = ResponderState::Failed;
                Err(e)
            }
        }
    }

    /// Message 2 as an unframed `HandshakeMessage{serverHello}`.
    pub fn server_hello(&mut self) -> Result<Vec<u8>, NoiseError> {
        let parts = self.write_hello("server_hello")?;
        let hello = ServerHello {
            ephemeral: Some(parts.ephemeral.to_vec()),
            r#static: Some(parts.enc_static),
            payload: Some(parts.enc_payload),
        };
        Ok(HandshakeMessage { server_hello: Some(hello), ..Default::default() }.encode_to_vec())
    }

    /// Message 2 in stock Noise layout: `e || Enc(s) || Enc(payload)`.
    pub fn server_hello_raw(&mut self) -> Result<Vec<u8>, NoiseError> {
        let parts = self.write_hello("server_hello_raw")?;
        let mut msg = Vec::with_capacity(DH_LEN + parts.enc_static.len() + parts.enc_payload.len());
        msg.extend_from_slice(&parts.ephemeral);
        msg.extend_from_slice(&parts.enc_static);
        msg.extend_from_slice(&parts.enc_payload);
        Ok(msg)
    }

    /// `e, ee, s, es` + the certificate chain.
    fn write_hello(&mut self, call: &'static str) -> Result<HelloParts, NoiseError> {
        let ResponderState::GotHello { re } = self.state else {
            return Err(NoiseError::OutOfOrder { call, state: self.state.describe() });
        };
        let result = (|| {
            self.sym.mix_hash(&self.e.public);
            mix_dh(&mut self.sym, &self.e.private, &re, "client ephemeral")?;
            let enc_static = self.sym.encrypt_and_hash(&self.s.public())?;
            mix_dh(&mut self.sym, self.s.private(), &re, "client ephemeral")?;
            let enc_payload = self.sym.encrypt_and_hash(&self.cert_chain)?;
            Ok(HelloParts { ephemeral: self.e.public, enc_static, enc_payload })
        })();
        self.state = match result {
            Ok(_) => ResponderState::SentHello,
            Err(_) => ResponderState::Failed,
        };
        result
    }

    /// Reads message 3 (a `HandshakeMessage{clientFinish}`): the client's static key, its
    /// decrypted `ClientPayload` and the session's transport.
    pub fn read_client_finish(self, msg: &[u8]) -> Result<ClientFinished, NoiseError> {
        self.read_finish("read_client_finish", msg, parse_client_finish)
    }

    /// Reads message 3 in stock Noise layout: `Enc(s) (48) || Enc(payload) (>= 16)`.
    pub fn read_client_finish_raw(self, msg: &[u8]) -> Result<ClientFinished, NoiseError> {
        self.read_finish("read_client_finish_raw", msg, parse_client_finish_raw)
    }

    /// `s, se` + payload, then Split.
    fn read_finish(
        mut self,
        call: &'static str,
        msg: &[u8],
        parse: fn(&[u8]) -> Result<FinishParts, NoiseError>,
    ) -> Result<ClientFinished, NoiseError> {
        if !matches!(self.state, ResponderState::SentHello) {
            return Err(NoiseError::OutOfOrder { call, state: self.state.describe() });
        }
        let parts = parse(msg)?;
        let rs = self.sym.decrypt_and_hash(&parts.enc_static, HandshakeStage::ClientFinishStatic)?;
        let rs: [u8; DH_LEN] = rs.as_slice().try_into().map_err(|_| NoiseError::FieldLength {
            field: "ClientFinish static",
            len: rs.len(),
            expected: DH_LEN,
        })?;
        mix_dh(&mut self.sym, &self.e.private, &rs, "client static")?;
        let payload =
            Zeroizing::new(self.sym.decrypt_and_hash(&parts.enc_payload, HandshakeStage::ClientFinishPayload)?);
        let transport = self.sym.split(Role::Responder)?;
        Ok(ClientFinished { client_static: rs, client_payload: payload, transport })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// The three fields of a ServerHello (encrypted fields still encrypted).
struct HelloParts {
    ephemeral: [u8; DH_LEN],
    enc_static: Vec<u8>,
    enc_payload: Vec<u8>,
}

struct FinishParts {
    enc_static: Vec<u8>,
    enc_payload: Vec<u8>,
}

pub(super) fn decode(msg: &[u8], message: &'static str) -> Result<HandshakeMessage, NoiseError> {
    HandshakeMessage::decode(msg).map_err(|source| NoiseError::Protobuf { message, source })
}

pub(super) fn exact(bytes: &[u8], field: &'static str) -> Result<[u8; DH_LEN], NoiseError> {
    bytes.try_into().map_err(|_| NoiseError::FieldLength { field, len: bytes.len(), expected: DH_LEN })
}

pub(super) fn enc_static(bytes: Vec<u8>, field: &'static str) -> Result<Vec<u8>, NoiseError> {
    if bytes.len() != ENC_STATIC_LEN {
        return Err(NoiseError::FieldLength { field, len: bytes.len(), expected: ENC_STATIC_LEN });
    }
    Ok(bytes)
}

pub(super) fn enc_payload(bytes: Vec<u8>, field: &'static str) -> Result<Vec<u8>, NoiseError> {
    if bytes.len() < TAG_LEN {
        return Err(NoiseError::FieldTooShort { field, len: bytes.len(), min: TAG_LEN });
    }
    Ok(bytes)
}

pub(super) fn required<T>(value: Option<T>, message: &'static str, field: &'static str) -> Result<T, NoiseError> {
    value.ok_or(NoiseError::MissingField { message, field })
}

fn parse_client_hello(msg: &[u8]) -> Result<[u8; DH_LEN], NoiseError> {
    let hello = required(decode(msg, "ClientHello")?.client_hello, "HandshakeMessage", "client_hello")?;
    if hello.r#static.is_some() {
        return Err(NoiseError::UnexpectedField { message: "ClientHello", field: "static" });
    }
    if hello.payload.is_some() {
        return Err(NoiseError::UnexpectedField { message: "ClientHello", field: "payload" });
    }
    exact(&required(hello.ephemeral, "ClientHello", "ephemeral")?, "ClientHello ephemeral")
}

fn parse_server_hello(msg: &[u8]) -> Result<HelloParts, NoiseError> {
    let hello = required(decode(msg, "ServerHello")?.server_hello, "HandshakeMessage", "server_hello")?;
    Ok(HelloParts {
        ephemeral: exact(&required(hello.ephemeral, "ServerHello", "ephemeral")?, "ServerHello ephemeral")?,
        enc_static: enc_static(required(hello.r#static, "ServerHello", "static")?, "ServerHello static")?,
        enc_payload: enc_payload(required(hello.payload, "ServerHello", "payload")?, "ServerHello payload")?,
    })
}

fn parse_server_hello_raw(msg: &[u8]) -> Result<HelloParts, NoiseError> {
    const MIN: usize = DH_LEN + ENC_STATIC_LEN + TAG_LEN;
    if msg.len() < MIN {
        return Err(NoiseError::FieldTooShort { field: "ServerHello", len: msg.len(), min: MIN });
    }
    let (e, rest) = msg.split_at(DH_LEN);
    let (s, p) = rest.split_at(ENC_STATIC_LEN);
    Ok(HelloParts { ephemeral: exact(e, "ServerHello ephemeral")?, enc_static: s.to_vec(), enc_payload: p.to_vec() })
}

fn parse_client_finish(msg: &[u8]) -> Result<FinishParts, NoiseError> {
    let finish = required(decode(msg, "ClientFinish")?.client_finish, "HandshakeMessage", "client_finish")?;
    Ok(FinishParts {
        enc_static: enc_static(required(finish.r#static, "ClientFinish", "static")?, "ClientFinish static")?,
        enc_payload: enc_payload(required(finish.payload, "ClientFinish", "payload")?, "ClientFinish payload")?,
    })
}

fn parse_client_finish_raw(msg: &[u8]) -> Result<FinishParts, NoiseError> {
    const MIN: usize = ENC_STATIC_LEN + TAG_LEN;
    if msg.len() < MIN {
        return Err(NoiseError::FieldTooShort { field: "ClientFinish", len: msg.len(), min: MIN });
    }
    let (s, p) = msg.split_at(ENC_STATIC_LEN);
    Ok(FinishParts { enc_static: s.to_vec(), enc_payload: p.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (StaticKeypair, StaticKeypair) {
        (StaticKeypair::generate().unwrap(), StaticKeypair::generate().unwrap())
    }

    #[test]
    fn both_flavours_complete_against_themselves() {
        for flavour in [Flavour::WhatsApp, Flavour::Standard] {
            let (cs, ss) = keys();
            let mut i = Initiator::new(cs.clone(), flavour).unwrap();
            let mut r = Responder::new(ss.clone(), b"chain".to_vec(), flavour).unwrap();
            r.read_client_hello(&i.client_hello().unwrap()).unwrap();
            assert_eq!(i.handshake_hash(), r.handshake_hash());
            let info = i.read_server_hello(&r.server_hello().unwrap()).unwrap();
            assert_eq!(info, ServerHelloInfo { server_static: ss.public(), cert_chain: b"chain".to_vec() });
            let (finish, mut ti) = i.client_finish(b"login").unwrap();
            let done = r.read_client_finish(&finish).unwrap();
            assert_eq!(done.client_static, cs.public());
            assert_eq!(&done.client_payload[..], b"login");
            let mut tr = done.transport;
            assert_eq!(ti.handshake_hash(), tr.handshake_hash());
            let mut buf = bytes::BytesMut::from(&b"ping"[..]);
            ti.seal(&mut buf).unwrap();
            assert_eq!(tr.open(&mut buf).unwrap(), b"ping");
        }
    }

    #[test]
    fn message_sizes_match_the_wire_notes() {
        let (cs, ss) = keys();
        let mut i = Initiator::new(cs, Flavour::WhatsApp).unwrap();
        let mut r = Responder::new(ss, vec![0u8; 10], Flavour::WhatsApp).unwrap();
        let hello = i.client_hello().unwrap();
        assert_eq!(hello.len(), 36);
        assert_eq!(&hello[..4], &[0x12, 0x22, 0x0A, 0x20]);
        r.read_client_hello(&hello).unwrap();
        let sh = r.server_hello().unwrap();
        let decoded = HandshakeMessage::decode(&sh[..]).unwrap().server_hello.unwrap();
        assert_eq!(decoded.r#static.unwrap().len(), 48);
        assert_eq!(decoded.payload.unwrap().len(), 10 + 16);
    }

    #[test]
    fn ik_client_hello_is_refused() {
        let (_, ss) = keys();
        let mut r = Responder::new(ss, Vec::new(), Flavour::WhatsApp).unwrap();
        let ik = HandshakeMessage {
            client_hello: Some(ClientHello {
                ephemeral: Some(vec![9; 32]),
                r#static: Some(vec![1; 48]),
                payload: None,
            }),
            ..Default::default()
        };
        assert!(matches!(
            r.read_client_hello(&ik.encode_to_vec()),
            Err(NoiseError::UnexpectedField { field: "static", .. })
        ));
        assert!(matches!(r.server_hello(), Err(NoiseError::OutOfOrder { .. })), "poisoned");
    }

    #[test]
    fn small_order_ephemeral_is_rejected() {
        let (cs, ss) = keys();
        let mut r = Responder::new(ss, Vec::new(), Flavour::WhatsApp).unwrap();
        r.read_client_hello_raw(&[0u8; 32]).unwrap();
        assert!(matches!(r.server_hello(), Err(NoiseError::InvalidPublicKey { which: "client ephemeral" })));
        let mut i = Initiator::new(cs, Flavour::WhatsApp).unwrap();
        i.client_hello_raw().unwrap();
        let mut msg = vec![0u8; 32];
        msg[0] = 1; // u = 1: small order
        msg.extend_from_slice(&[0u8; 64]);
        assert!(matches!(
            i.read_server_hello_raw(&msg),
            Err(NoiseError::InvalidPublicKey { which: "server ephemeral" })
        ));
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let (cs, ss) = keys();
        let mut r = Responder::new(ss.clone(), Vec::new(), Flavour::WhatsApp).unwrap();
        assert!(matches!(r.read_client_hello(b"\xff"), Err(NoiseError::Protobuf { message: "ClientHello", .. })));
        let mut r = Responder::new(ss.clone(), Vec::new(), Flavour::WhatsApp).unwrap();
        assert!(matches!(r.read_client_hello(b""), Err(NoiseError::MissingField { field: "client_hello", .. })));
        let mut r = Responder::new(ss, Vec::new(), Flavour::WhatsApp).unwrap();
        assert!(matches!(
            r.read_client_hello(&[0x12, 0x03, 0x0A, 0x01, 0x00]),
            Err(NoiseError::FieldLength { len: 1, expected: 32, .. })
        ));

        let mut i = Initiator::new(cs, Flavour::WhatsApp).unwrap();
        i.client_hello().unwrap();
        let short = HandshakeMessage {
            server_hello: Some(ServerHello {
                ephemeral: Some(vec![9; 32]),
                r#static: Some(vec![0; 47]),
                payload: Some(vec![0; 16]),
            }),
            ..Default::default()
        };
        assert!(matches!(
            i.read_server_hello(&short.encode_to_vec()),
            Err(NoiseError::FieldLength { field: "ServerHello static", len: 47, expected: 48 })
        ));
    }
}
