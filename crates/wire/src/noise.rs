//! WhatsApp's flavours of Noise (`XX`, `IK` and `XXfallback` on `25519_AESGCM_SHA256`), sans-IO.
//!
//! The client (here [`Initiator`]) first sends [`WA_CONN_HEADER`] raw, then three handshake
//! messages travel in frames, each wrapped in the `HandshakeMessage` protobuf:
//!
//! ```text
//! -> e                 ClientHello{ephemeral}
//! <- e, ee, s, es      ServerHello{ephemeral, static = Enc(s), payload = Enc(CertChain)}
//! -> s, se             ClientFinish{static = Enc(s), payload = Enc(ClientPayload)}
//! ```
//!
//! A client that holds the server's static key from an earlier XX resumes with IK instead
//! ([`IkInitiator`]; the server side is [`accept_client_hello`]), one message each way:
//!
//! ```text
//! <- s                 (pre-message: the cached server key)
//! -> e, es, s, ss      ClientHello{ephemeral, static = Enc(s), payload = Enc(ClientPayload)}
//! <- e, ee, se         ServerHello{ephemeral, payload = Enc(CertChain)}          (no `static`)
//! ```
//!
//! A server whose key is not the cached one answers with an XX ServerHello (`static` present);
//! both sides then switch to `XXfallback` with the client's already-sent ephemeral as the
//! pre-message, and the handshake ends as XX does, with a ClientFinish.
//!
//! It is standard Noise XX (prologue = the header) except for one step: the empty payload of
//! message 1 is not mixed into the handshake hash ([`Flavour::WhatsApp`]). [`Flavour::Standard`]
//! keeps the stock behaviour so `tests/noise_vs_snow.rs` can check everything else against snow.
//! After the handshake, [`Transport`] seals and opens frames in place: AES-256-GCM, empty AD,
//! nonce = 8 zero bytes + 32-bit big-endian counter, and no 64 KiB cap (frames go to
//! [`MAX_FRAME_LEN`]).
//!
//! Primitives are aws-lc-rs (X25519, AES-256-GCM, SHA-256, HMAC): the fastest provider measured
//! for this workload. `docs/handshake.md` walks through the whole exchange.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::agreement::{self, X25519};
use thiserror::Error;

use crate::cert::CertError;
use crate::frame::MAX_FRAME_LEN;

mod handshake;
mod ik;
mod symmetric;
mod transport;

pub use handshake::{ClientFinished, Initiator, Responder, ServerHelloInfo};
pub use ik::{
    IkInitiator, IkServerHello, Resumed, ServerStart, accept_client_hello, accept_client_hello_with_prologue,
};
pub use symmetric::{CipherState, Role, SymmetricState};
pub use transport::{RecvCipher, SendCipher, Transport};

/// The 4 bytes a client sends before its first frame (`"WA"`, protocol 6, dictionary 3). They are
/// also the Noise prologue.
pub const WA_CONN_HEADER: [u8; 4] = *b"WA\x06\x03";

/// The Noise protocol name; 28 bytes, so it is zero-padded to 32 to become the initial hash.
pub const NOISE_XX_PROTOCOL_NAME: &[u8] = b"Noise_XX_25519_AESGCM_SHA256";

/// The IK protocol name; 28 bytes, zero-padded to 32 like XX's.
pub const NOISE_IK_PROTOCOL_NAME: &[u8] = b"Noise_IK_25519_AESGCM_SHA256";

/// The XXfallback protocol name; 36 bytes, so its SHA-256 becomes the initial hash.
pub const NOISE_XX_FALLBACK_PROTOCOL_NAME: &[u8] = b"Noise_XXfallback_25519_AESGCM_SHA256";

/// Which of the three handshake patterns a connection used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakePattern {
    /// The full handshake: three messages, the server's static key and chain learnt.
    Xx,
    /// Resumption with the server's cached static key: two messages, no ClientFinish.
    Ik,
    /// An IK attempt the server declined (its key is not the cached one), finished as XX.
    XxFallback,
}

impl HandshakePattern {
    /// The pattern's Noise name: `XX`, `IK` or `XXfallback` (also the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakePattern::Xx => "XX",
            HandshakePattern::Ik => "IK",
            HandshakePattern::XxFallback => "XXfallback",
        }
    }
}

impl fmt::Display for HandshakePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes of an AES-GCM tag.
pub const TAG_LEN: usize = 16;

/// Bytes of an X25519 public key (and of a DH output).
pub const DH_LEN: usize = 32;

/// The largest plaintext a transport frame can carry: the frame limit minus the tag.
pub const MAX_PLAINTEXT_LEN: usize = MAX_FRAME_LEN - TAG_LEN;

/// Which handshake-hash rule to follow for message 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavour {
    /// WhatsApp's rule: an encrypt/decrypt before any key exists (only message 1's empty payload,
    /// in XX) does not touch the handshake hash.
    #[default]
    WhatsApp,
    /// Stock Noise: `MixHash` of message 1's (empty) payload. Exists for conformance testing
    /// against other Noise implementations; WhatsApp peers will reject it.
    Standard,
}

/// An X25519 static ("noise") keypair.
///
/// The private key lives only inside aws-lc (never in a Rust-visible buffer we keep), which wipes
/// it when the last clone is dropped; `Debug` shows the public key only. Clones share the key.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Arc<agreement::PrivateKey>,
    public: [u8; DH_LEN],
}

impl StaticKeypair {
    /// A keypair from 32 raw private-key bytes (clamping happens inside X25519).
    pub fn from_private(private: &[u8; 32]) -> Result<Self, NoiseError> {
        let key = agreement::PrivateKey::from_private_key(&X25519, private)
            .map_err(|_| NoiseError::Crypto { op: "X25519 private key import" })?;
        Self::from_key(key)
    }

    /// A fresh random keypair.
    pub fn generate() -> Result<Self, NoiseError> {
        Self::from_key(agreement::PrivateKey::generate(&X25519).map_err(|_| NoiseError::Rng)?)
    }

    fn from_key(key: agreement::PrivateKey) -> Result<Self, NoiseError> {
        let public = public_bytes(&key)?;
        Ok(Self { private: Arc::new(key), public })
    }

    /// The public key.
    pub fn public(&self) -> [u8; DH_LEN] {
        self.public
    }

    pub(crate) fn private(&self) -> &agreement::PrivateKey {
        &self.private
    }
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair").field("public", &crate::cert::KeyHex(self.public)).finish_non_exhaustive()
    }
}

/// The public half of an aws-lc X25519 private key as an array.
pub(crate) fn public_bytes(key: &agreement::PrivateKey) -> Result<[u8; DH_LEN], NoiseError> {
    let public = key.compute_public_key().map_err(|_| NoiseError::Crypto { op: "X25519 public key" })?;
    public.as_ref().try_into().map_err(|_| NoiseError::Crypto { op: "X25519 public key length" })
}

/// An encrypted handshake field, named for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeStage {
    /// Message 1's payload: empty and never encrypted in XX (so it cannot fail there); the
    /// encrypted `ClientPayload` in IK.
    ClientHelloPayload,
    /// The client's static key in an IK ClientHello.
    ClientHelloStatic,
    ServerHelloStatic,
    ServerHelloPayload,
    ClientFinishStatic,
    ClientFinishPayload,
}

impl fmt::Display for HandshakeStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeStage::ClientHelloPayload => "ClientHello payload",
            HandshakeStage::ClientHelloStatic => "ClientHello static",
            HandshakeStage::ServerHelloStatic => "ServerHello static",
            HandshakeStage::ServerHelloPayload => "ServerHello payload",
            HandshakeStage::ClientFinishStatic => "ClientFinish static",
            HandshakeStage::ClientFinishPayload => "ClientFinish payload",
        })
    }
}

/// A transport direction, named for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Send,
    Receive,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Send => "send",
            Direction::Receive => "receive",
        })
    }
}

/// Everything that can go wrong in the handshake or on the transport.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// A handshake step was called before its predecessor, twice, or after a failure.
    #[error("`{call}` called out of order: the handshake {state}")]
    OutOfOrder { call: &'static str, state: &'static str },
    /// A handshake frame is not a valid `HandshakeMessage`.
    #[error("{message} is not a valid HandshakeMessage protobuf")]
    Protobuf { message: &'static str, source: prost::DecodeError },
    /// A required handshake field is absent.
    #[error("{message}: field `{field}` is missing")]
    MissingField { message: &'static str, field: &'static str },
    /// A field the pattern in use does not have (an IK field in an XX ClientHello, a `payload`
    /// without a `static`).
    #[error("{message}: field `{field}` is not part of the handshake")]
    UnexpectedField { message: &'static str, field: &'static str },
    /// A fixed-size field has the wrong size.
    #[error("{field} is {len} bytes, expected {expected}")]
    FieldLength { field: &'static str, len: usize, expected: usize },
    /// An encrypted field is too short to hold its tag.
    #[error("{field} is {len} bytes, shorter than the {min}-byte minimum")]
    FieldTooShort { field: &'static str, len: usize, min: usize },
    /// A handshake ciphertext failed authentication.
    #[error("{stage} failed authentication (tampered message, wrong key or transcript mismatch)")]
    Decrypt { stage: HandshakeStage },
    /// X25519 refused a peer public key (small-order point: the shared secret would be zero).
    #[error("{which} public key rejected by X25519 (small-order point)")]
    InvalidPublicKey { which: &'static str },
    /// The server's certificate chain failed verification.
    #[error("server certificate chain rejected")]
    Cert(#[from] CertError),
    /// A transport frame failed authentication; the receive counter did not advance.
    #[error("transport frame #{counter} failed authentication (tampered, replayed, reordered or wrong key)")]
    Open { counter: u64 },
    /// A transport frame is shorter than the tag.
    #[error("transport frame is {len} bytes, shorter than the {TAG_LEN}-byte tag")]
    FrameTooShort { len: usize },
    /// A plaintext (or received frame) too large for one frame.
    #[error("{len} bytes do not fit one frame (limit {max})")]
    PayloadTooLarge { len: usize, max: usize },
    /// 2^32 frames were sealed or opened with these keys; the nonce would wrap.
    #[error("{direction} nonce counter exhausted after 2^32 frames; the connection must be re-established")]
    NonceExhausted { direction: Direction },
    /// The operating system's random generator failed.
    #[error("operating-system random generator failed")]
    Rng,
    /// aws-lc refused an operation that cannot fail on valid inputs.
    #[error("{op} failed inside the crypto library")]
    Crypto { op: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_name() {
        assert_eq!(WA_CONN_HEADER, [0x57, 0x41, 0x06, 0x03]);
        assert_eq!(NOISE_XX_PROTOCOL_NAME.len(), 28);
        assert_eq!(NOISE_IK_PROTOCOL_NAME.len(), 28);
        assert_eq!(NOISE_XX_FALLBACK_PROTOCOL_NAME.len(), 36);
        assert_eq!(MAX_PLAINTEXT_LEN, (1 << 24) - 1 - 16);
    }

    /// The proxy moves handshakes and cipher halves between tokio tasks.
    #[test]
    fn state_machines_and_ciphers_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Initiator>();
        check::<Responder>();
        check::<IkInitiator>();
        check::<ServerStart>();
        check::<Transport>();
        check::<SendCipher>();
        check::<RecvCipher>();
        check::<StaticKeypair>();
        check::<NoiseError>();
    }

    #[test]
    fn static_keypair_round_trips_and_hides_the_private_key() {
        let private = [0x77u8; 32];
        let a = StaticKeypair::from_private(&private).unwrap();
        let b = StaticKeypair::from_private(&private).unwrap();
        assert_eq!(a.public(), b.public());
        assert_eq!(a.public(), crate::xeddsa::public_key(&private));
        let shown = format!("{a:?}");
        assert!(!shown.contains(&"77".repeat(4)), "{shown}");
        assert!(shown.contains(&crate::cert::KeyHex(a.public()).to_string()), "{shown}");
        let g = StaticKeypair::generate().unwrap();
        assert_ne!(g.public(), StaticKeypair::generate().unwrap().public());
    }
}
