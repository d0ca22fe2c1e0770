//! The server certificate chain carried (encrypted) in the ServerHello payload.
//!
//! `CertChain{leaf, intermediate}`: the root key signs the intermediate's details, the
//! intermediate's key signs the leaf's details, and the leaf's key must be the server's Noise
//! static key. [`CertVerifier`] performs the seven checks whatsmeow performs (see
//! `docs/handshake.md`); [`CertIssuer`] is the other side, for the chatd simulator, which signs
//! with its own root (clients of the simulator are configured with that root's public key).

use std::fmt;

use prost::Message;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::proto::{CertChain, CertDetails, NoiseCertificate};
use crate::xeddsa::{self, XeddsaError};

/// WhatsApp's long-term root key ("WhatsAppLongTerm1", serial 0), identical in every public
/// client. The default root of [`CertVerifier`].
pub const WHATSAPP_ROOT_PUBLIC_KEY: [u8; 32] = [
    0x14, 0x23, 0x75, 0x57, 0x4d, 0x0a, 0x58, 0x71, 0x66, 0xaa, 0xe7, 0x1e, 0xbe, 0x51, 0x64, 0x37, 0xc4, 0xa2, 0x8b,
    0x73, 0xe3, 0x69, 0x5c, 0x6c, 0xe1, 0xf7, 0xf9, 0x54, 0x5d, 0xa8, 0xee, 0x6b,
];

/// Which certificate of the chain an error or a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    Leaf,
    Intermediate,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertRole::Leaf => "leaf",
            CertRole::Intermediate => "intermediate",
        })
    }
}

/// Why a chain was rejected (or could not be issued). One variant per check.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CertError {
    /// The chain (or a certificate's details) is not valid protobuf.
    #[error("{what} is not a valid protobuf")]
    Decode { what: &'static str, source: prost::DecodeError },
    /// Check 1: a certificate, its details, its signature or a details field is absent.
    #[error("{cert} certificate: field `{field}` is missing")]
    MissingField { cert: CertRole, field: &'static str },
    /// Check 1: a signature is not 64 bytes.
    #[error("{cert} certificate: signature is {len} bytes, expected 64")]
    BadSignatureLength { cert: CertRole, len: usize },
    /// Check 2: the root key did not sign the intermediate.
    #[error("intermediate certificate is not signed by the root key: {reason}")]
    BadIntermediateSignature { reason: XeddsaError },
    /// Check 3: the intermediate names an issuer other than the root (serial 0).
    #[error("intermediate certificate issuer serial is {issuer_serial}, expected 0 (the root)")]
    IntermediateIssuerSerial { issuer_serial: u32 },
    /// Check 3 (intermediate) / check 6 (leaf): a key is not 32 bytes.
    #[error("{cert} certificate: key is {len} bytes, expected 32")]
    BadKeyLength { cert: CertRole, len: usize },
    /// Check 4: the intermediate's key did not sign the leaf.
    #[error("leaf certificate is not signed by intermediate certificate {intermediate_serial}: {reason}")]
    BadLeafSignature { intermediate_serial: u32, reason: XeddsaError },
    /// Check 5: the leaf names a different issuer than the intermediate it came with.
    #[error("leaf certificate issuer serial is {leaf_issuer_serial}, intermediate serial is {intermediate_serial}")]
    LeafIssuerMismatch { leaf_issuer_serial: u32, intermediate_serial: u32 },
    /// Check 6: the leaf certifies a different key than the one the server proved in Noise.
    #[error("leaf certificate key {leaf_key} is not the server's static key {server_static}")]
    LeafKeyMismatch { leaf_key: KeyHex, server_static: KeyHex },
    /// Check 7: `now < not_before`.
    #[error("{cert} certificate is not valid before {not_before} (now {now}, Unix seconds)")]
    NotYetValid { cert: CertRole, not_before: u64, now: u64 },
    /// Check 7: `now > not_after`.
    #[error("{cert} certificate expired at {not_after} (now {now}, Unix seconds)")]
    Expired { cert: CertRole, not_after: u64, now: u64 },
    /// Issuing: the operating system's random generator failed.
    #[error("operating-system random generator failed while issuing a certificate")]
    Rng,
}

/// A public key shown as hex in error messages (public keys only).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHex(pub [u8; 32]);

impl fmt::Display for KeyHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The decoded, checked contents of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertInfo {
    pub serial: u32,
    pub issuer_serial: u32,
    pub key: [u8; 32],
    pub not_before: u64,
    pub not_after: u64,
}

/// A chain that passed every check. IK resumption (later work) will cache the leaf key and both
/// validity windows from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedChain {
    pub intermediate: CertInfo,
    pub leaf: CertInfo,
}

impl VerifiedChain {
    /// The earliest `not_after` of the two certificates: when this chain stops being valid.
    pub fn not_after(&self) -> u64 {
        self.leaf.not_after.min(self.intermediate.not_after)
    }
}

/// Checks server certificate chains against one root public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertVerifier {
    /// The trusted root: [`WHATSAPP_ROOT_PUBLIC_KEY`] against WhatsApp, the simulator's
    /// [`CertIssuer::public_key`] in local configurations.
    pub root: [u8; 32],
}

impl Default for CertVerifier {
    fn default() -> Self {
        Self::whatsapp()
    }
}

impl CertVerifier {
    /// A verifier trusting `root`.
    pub const fn new(root: [u8; 32]) -> Self {
        Self { root }
    }

    /// A verifier trusting WhatsApp's real root key.
    pub const fn whatsapp() -> Self {
        Self::new(WHATSAPP_ROOT_PUBLIC_KEY)
    }

    /// Runs the seven checks on an encoded `CertChain` (the decrypted ServerHello payload) for
    /// the static key the server proved in the handshake, at `now_unix_secs`.
    ///
    /// Order: (1) presence and 64-byte signatures, (2) root signature over the intermediate,
    /// (3) intermediate issuer serial 0 and 32-byte key, (4) intermediate signature over the
    /// leaf, (5) leaf issuer serial = intermediate serial, (6) leaf key = server static,
    /// (7) `not_before <= now <= not_after` for both.
    pub fn verify(
        &self,
        chain_protobuf_bytes: &[u8],
        server_static: &[u8; 32],
        now_unix_secs: u64,
    ) -> Result<VerifiedChain, CertError> {
        let chain = CertChain::decode(chain_protobuf_bytes)
            .map_err(|source| CertError::Decode { what: "certificate chain", source })?;

        // 1. Everything present, signatures 64 bytes.
        let (inter_details, inter_sig) = parts(chain.intermediate.as_ref(), CertRole::Intermediate)?;
        let (leaf_details, leaf_sig) = parts(chain.leaf.as_ref(), CertRole::Leaf)?;

        // 2. Root signed the intermediate. Details are parsed only once authenticated.
        xeddsa::verify(&self.root, inter_details, inter_sig)
            .map_err(|reason| CertError::BadIntermediateSignature { reason })?;
        let inter = decode_details(inter_details, CertRole::Intermediate)?;

        // 3. Issued by the root (serial 0), with a usable key.
        if inter.issuer_serial != 0 {
            return Err(CertError::IntermediateIssuerSerial { issuer_serial: inter.issuer_serial });
        }
        let inter_key = key32(&inter.key, CertRole::Intermediate)?;

        // 4. Intermediate signed the leaf.
        xeddsa::verify(&inter_key, leaf_details, leaf_sig)
            .map_err(|reason| CertError::BadLeafSignature { intermediate_serial: inter.serial, reason })?;
        let leaf = decode_details(leaf_details, CertRole::Leaf)?;

        // 5. The leaf names this intermediate.
        if leaf.issuer_serial != inter.serial {
            return Err(CertError::LeafIssuerMismatch {
                leaf_issuer_serial: leaf.issuer_serial,
                intermediate_serial: inter.serial,
            });
        }

        // 6. The leaf certifies the key the server proved possession of.
        let leaf_key = key32(&leaf.key, CertRole::Leaf)?;
        if &leaf_key != server_static {
            return Err(CertError::LeafKeyMismatch {
                leaf_key: KeyHex(leaf_key),
                server_static: KeyHex(*server_static),
            });
        }

        // 7. Both within their validity windows.
        let intermediate = inter.checked(inter_key, CertRole::Intermediate, now_unix_secs)?;
        let leaf = leaf.checked(leaf_key, CertRole::Leaf, now_unix_secs)?;
        Ok(VerifiedChain { intermediate, leaf })
    }
}

/// Details fields after decoding; serials default to 0 when absent (proto2 readers do the same,
/// and an absent intermediate issuer serial means "the root").
struct RawDetails {
    serial: u32,
    issuer_serial: u32,
    key: Vec<u8>,
    not_before: u64,
    not_after: u64,
}

impl RawDetails {
    fn checked(self, key: [u8; 32], cert: CertRole, now: u64) -> Result<CertInfo, CertError> {
        if now < self.not_before {
            return Err(CertError::NotYetValid { cert, not_before: self.not_before, now });
        }
        if now > self.not_after {
            return Err(CertError::Expired { cert, not_after: self.not_after, now });
        }
        Ok(CertInfo {
            serial: self.serial,
            issuer_serial: self.issuer_serial,
            key,
            not_before: self.not_before,
            not_after: self.not_after,
        })
    }
}

fn parts(cert: Option<&NoiseCertificate>, role: CertRole) -> Result<(&[u8], &[u8; 64]), CertError> {
    let cert = cert.ok_or(CertError::MissingField { cert: role, field: "certificate" })?;
    let details = cert.details.as_deref().ok_or(CertError::MissingField { cert: role, field: "details" })?;
    let sig = cert.signature.as_deref().ok_or(CertError::MissingField { cert: role, field: "signature" })?;
    let sig = sig.try_into().map_err(|_| CertError::BadSignatureLength { cert: role, len: sig.len() })?;
    Ok((details, sig))
}

fn decode_details(bytes: &[u8], role: CertRole) -> Result<RawDetails, CertError> {
    let what = match role {
        CertRole::Leaf => "leaf certificate details",
        CertRole::Intermediate => "intermediate certificate details",
    };
    let d = CertDetails::decode(bytes).map_err(|source| CertError::Decode { what, source })?;
    let missing = |field| CertError::MissingField { cert: role, field };
    Ok(RawDetails {
        serial: d.serial.unwrap_or(0),
        issuer_serial: d.issuer_serial.unwrap_or(0),
        key: d.key.ok_or_else(|| missing("key"))?,
        not_before: d.not_before.ok_or_else(|| missing("not_before"))?,
        not_after: d.not_after.ok_or_else(|| missing("not_after"))?,
    })
}

fn key32(key: &[u8], cert: CertRole) -> Result<[u8; 32], CertError> {
    key.try_into().map_err(|_| CertError::BadKeyLength { cert, len: key.len() })
}

// ---------------------------------------------------------------------------------------------
// Issuing (chatd simulator)

/// What goes into one certificate's details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertTemplate {
    pub serial: u32,
    pub issuer_serial: u32,
    pub not_before: u64,
    pub not_after: u64,
}

/// Parameters of an issued chain. [`ChainParams::new`] gives a consistent chain; the fields are
/// public so a conformance test can issue a deliberately broken one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainParams {
    pub intermediate: CertTemplate,
    pub leaf: CertTemplate,
}

impl ChainParams {
    /// An intermediate issued by the root (issuer serial 0) and a leaf issued by it, both valid
    /// over `[not_before, not_after]` (Unix seconds).
    pub fn new(intermediate_serial: u32, leaf_serial: u32, not_before: u64, not_after: u64) -> Self {
        Self {
            intermediate: CertTemplate { serial: intermediate_serial, issuer_serial: 0, not_before, not_after },
            leaf: CertTemplate { serial: leaf_serial, issuer_serial: intermediate_serial, not_before, not_after },
        }
    }
}

/// A root key that issues certificate chains, for the chatd simulator.
///
/// The root private key is wiped on drop and never shown by `Debug`.
pub struct CertIssuer {
    root_private: Zeroizing<[u8; 32]>,
    root_public: [u8; 32],
}

impl fmt::Debug for CertIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertIssuer").field("root_public", &KeyHex(self.root_public)).finish_non_exhaustive()
    }
}

impl CertIssuer {
    /// A new random root keypair.
    pub fn generate() -> Result<Self, CertError> {
        Ok(Self::from_root_private(&random_key()?))
    }

    /// An issuer for an existing root private key (X25519 form; the key is copied and the copy
    /// wiped on drop).
    pub fn from_root_private(root_private: &[u8; 32]) -> Self {
        Self { root_private: Zeroizing::new(*root_private), root_public: xeddsa::public_key(root_private) }
    }

    /// The root public key clients must trust ([`CertVerifier::new`]).
    pub fn public_key(&self) -> [u8; 32] {
        self.root_public
    }

    /// Issues an encoded `CertChain` certifying `server_static`: a fresh intermediate keypair
    /// (used once and wiped) signed by the root, and a leaf for `server_static` signed by it.
    pub fn issue(&self, server_static: &[u8; 32], params: &ChainParams) -> Result<Vec<u8>, CertError> {
        let inter_private = Zeroizing::new(random_key()?);
        let inter_public = xeddsa::public_key(&inter_private);
        let intermediate = signed_cert(&self.root_private, &params.intermediate, &inter_public)?;
        let leaf = signed_cert(&inter_private, &params.leaf, server_static)?;
        Ok(CertChain { leaf: Some(leaf), intermediate: Some(intermediate) }.encode_to_vec())
    }
}

fn signed_cert(signer: &[u8; 32], t: &CertTemplate, key: &[u8; 32]) -> Result<NoiseCertificate, CertError> {
    let details = CertDetails {
        serial: Some(t.serial),
        issuer_serial: Some(t.issuer_serial),
        key: Some(key.to_vec()),
        not_before: Some(t.not_before),
        not_after: Some(t.not_after),
    }
    .encode_to_vec();
    let signature = xeddsa::sign_with_os_rng(signer, &details).map_err(|_| CertError::Rng)?;
    Ok(NoiseCertificate { details: Some(details), signature: Some(signature.to_vec()) })
}

fn random_key() -> Result<[u8; 32], CertError> {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).map_err(|_| CertError::Rng)?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_760_000_000;
    const SERVER: [u8; 32] = [0x42; 32];

    fn params() -> ChainParams {
        ChainParams::new(7, 99, NOW - 3600, NOW + 3600)
    }

    fn issue(p: &ChainParams) -> (CertIssuer, Vec<u8>) {
        let issuer = CertIssuer::generate().unwrap();
        let chain = issuer.issue(&SERVER, p).unwrap();
        (issuer, chain)
    }

    fn verify(issuer: &CertIssuer, chain: &[u8]) -> Result<VerifiedChain, CertError> {
        CertVerifier::new(issuer.public_key()).verify(chain, &SERVER, NOW)
    }

    /// Re-signs a hand-edited chain so only the edited property is wrong.
    fn build(root: &[u8; 32], inter_key: &[u8; 32], inter: CertDetails, leaf: CertDetails) -> Vec<u8> {
        let sign = |k: &[u8; 32], d: &CertDetails| {
            let details = d.encode_to_vec();
            let sig = xeddsa::sign_with_os_rng(k, &details).unwrap().to_vec();
            NoiseCertificate { details: Some(details), signature: Some(sig) }
        };
        CertChain { intermediate: Some(sign(root, &inter)), leaf: Some(sign(inter_key, &leaf)) }.encode_to_vec()
    }

    fn details(serial: u32, issuer: u32, key: Vec<u8>) -> CertDetails {
        CertDetails {
            serial: Some(serial),
            issuer_serial: Some(issuer),
            key: Some(key),
            not_before: Some(NOW - 1),
            not_after: Some(NOW + 1),
        }
    }

    #[test]
    fn good_chain_verifies() {
        let (issuer, chain) = issue(&params());
        let v = verify(&issuer, &chain).unwrap();
        assert_eq!((v.intermediate.serial, v.intermediate.issuer_serial), (7, 0));
        assert_eq!((v.leaf.serial, v.leaf.issuer_serial, v.leaf.key), (99, 7, SERVER));
        assert_eq!(v.not_after(), NOW + 3600);
        // Validity bounds are inclusive.
        let verifier = CertVerifier::new(issuer.public_key());
        assert!(verifier.verify(&chain, &SERVER, NOW - 3600).is_ok());
        assert!(verifier.verify(&chain, &SERVER, NOW + 3600).is_ok());
    }

    #[test]
    fn wrong_root_is_rejected() {
        let (_, chain) = issue(&params());
        let err = CertVerifier::whatsapp().verify(&chain, &SERVER, NOW).unwrap_err();
        assert!(matches!(err, CertError::BadIntermediateSignature { reason: XeddsaError::BadSignature }), "{err}");
    }

    #[test]
    fn validity_windows() {
        let (issuer, chain) = issue(&params());
        let v = CertVerifier::new(issuer.public_key());
        let err = v.verify(&chain, &SERVER, NOW - 3601).unwrap_err();
        assert!(
            matches!(err, CertError::NotYetValid { cert: CertRole::Intermediate, not_before, now } if not_before == NOW - 3600 && now == NOW - 3601),
            "{err}"
        );
        let err = v.verify(&chain, &SERVER, NOW + 3601).unwrap_err();
        assert!(
            matches!(err, CertError::Expired { cert: CertRole::Intermediate, not_after, .. } if not_after == NOW + 3600),
            "{err}"
        );
        // A leaf that expires before its intermediate.
        let mut p = params();
        p.leaf.not_after = NOW - 10;
        let (issuer, chain) = issue(&p);
        let err = verify(&issuer, &chain).unwrap_err();
        assert!(matches!(err, CertError::Expired { cert: CertRole::Leaf, .. }), "{err}");
        assert!(err.to_string().contains("leaf certificate expired at"), "{err}");
        p = params();
        p.leaf.not_before = NOW + 10;
        let (issuer, chain) = issue(&p);
        assert!(matches!(verify(&issuer, &chain), Err(CertError::NotYetValid { cert: CertRole::Leaf, .. })));
    }

    #[test]
    fn issuer_serial_checks() {
        let mut p = params();
        p.intermediate.issuer_serial = 3;
        let (issuer, chain) = issue(&p);
        assert!(matches!(verify(&issuer, &chain), Err(CertError::IntermediateIssuerSerial { issuer_serial: 3 })));
        p = params();
        p.leaf.issuer_serial = 8;
        let (issuer, chain) = issue(&p);
        assert!(matches!(
            verify(&issuer, &chain),
            Err(CertError::LeafIssuerMismatch { leaf_issuer_serial: 8, intermediate_serial: 7 })
        ));
    }

    #[test]
    fn leaf_key_must_be_the_server_static() {
        let (issuer, chain) = issue(&params());
        let err = CertVerifier::new(issuer.public_key()).verify(&chain, &[0x43; 32], NOW).unwrap_err();
        assert!(matches!(err, CertError::LeafKeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&"42".repeat(32)), "{err}");
    }

    #[test]
    fn bad_signatures() {
        let (issuer, chain) = issue(&params());
        let mut decoded = CertChain::decode(&chain[..]).unwrap();
        decoded.leaf.as_mut().unwrap().signature.as_mut().unwrap()[5] ^= 1;
        let err = verify(&issuer, &decoded.encode_to_vec()).unwrap_err();
        assert!(matches!(err, CertError::BadLeafSignature { intermediate_serial: 7, .. }), "{err}");

        let mut decoded = CertChain::decode(&chain[..]).unwrap();
        decoded.intermediate.as_mut().unwrap().details.as_mut().unwrap().push(0); // changes the signed bytes
        assert!(matches!(verify(&issuer, &decoded.encode_to_vec()), Err(CertError::BadIntermediateSignature { .. })));

        let mut decoded = CertChain::decode(&chain[..]).unwrap();
        decoded.leaf.as_mut().unwrap().signature.as_mut().unwrap().pop();
        assert!(matches!(
            verify(&issuer, &decoded.encode_to_vec()),
            Err(CertError::BadSignatureLength { cert: CertRole::Leaf, len: 63 })
        ));
    }

    #[test]
    fn bad_key_lengths() {
        let root = random_key().unwrap();
        let inter = random_key().unwrap();
        let inter_pub = xeddsa::public_key(&inter);
        let verifier = CertVerifier::new(xeddsa::public_key(&root));

        // Intermediate key of 31 bytes (signed properly by the root).
        let mut short = inter_pub.to_vec();
        short.pop();
        let chain = build(&root, &inter, details(1, 0, short), details(2, 1, SERVER.to_vec()));
        assert!(matches!(
            verifier.verify(&chain, &SERVER, NOW),
            Err(CertError::BadKeyLength { cert: CertRole::Intermediate, len: 31 })
        ));

        // Leaf key of 33 bytes.
        let mut long = SERVER.to_vec();
        long.push(0);
        let chain = build(&root, &inter, details(1, 0, inter_pub.to_vec()), details(2, 1, long));
        assert!(matches!(
            verifier.verify(&chain, &SERVER, NOW),
            Err(CertError::BadKeyLength { cert: CertRole::Leaf, len: 33 })
        ));

        // The hand-built path itself verifies when nothing is wrong.
        let chain = build(&root, &inter, details(1, 0, inter_pub.to_vec()), details(2, 1, SERVER.to_vec()));
        assert!(verifier.verify(&chain, &SERVER, NOW).is_ok());
    }

    #[test]
    fn missing_fields() {
        let (issuer, chain) = issue(&params());
        let full = CertChain::decode(&chain[..]).unwrap();

        let mut c = full.clone();
        c.leaf = None;
        assert!(matches!(
            verify(&issuer, &c.encode_to_vec()),
            Err(CertError::MissingField { cert: CertRole::Leaf, field: "certificate" })
        ));
        let mut c = full.clone();
        c.intermediate.as_mut().unwrap().signature = None;
        assert!(matches!(
            verify(&issuer, &c.encode_to_vec()),
            Err(CertError::MissingField { cert: CertRole::Intermediate, field: "signature" })
        ));
        let mut c = full.clone();
        c.leaf.as_mut().unwrap().details = None;
        assert!(matches!(
            verify(&issuer, &c.encode_to_vec()),
            Err(CertError::MissingField { cert: CertRole::Leaf, field: "details" })
        ));

        // A details message without a validity end.
        let root = random_key().unwrap();
        let inter = random_key().unwrap();
        let mut d = details(2, 1, SERVER.to_vec());
        d.not_after = None;
        let chain = build(&root, &inter, details(1, 0, xeddsa::public_key(&inter).to_vec()), d);
        assert!(matches!(
            CertVerifier::new(xeddsa::public_key(&root)).verify(&chain, &SERVER, NOW),
            Err(CertError::MissingField { cert: CertRole::Leaf, field: "not_after" })
        ));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let v = CertVerifier::whatsapp();
        assert!(matches!(v.verify(b"\xff\xff", &SERVER, NOW), Err(CertError::Decode { .. })));
        assert!(matches!(v.verify(b"", &SERVER, NOW), Err(CertError::MissingField { .. })));
        // Signed details that are not protobuf.
        let root = random_key().unwrap();
        let garbage = vec![0xff; 3];
        let sig = xeddsa::sign_with_os_rng(&root, &garbage).unwrap().to_vec();
        let c = CertChain {
            intermediate: Some(NoiseCertificate { details: Some(garbage), signature: Some(sig) }),
            leaf: Some(NoiseCertificate { details: Some(vec![]), signature: Some(vec![0; 64]) }),
        };
        let v = CertVerifier::new(xeddsa::public_key(&root));
        assert!(matches!(
            v.verify(&c.encode_to_vec(), &SERVER, NOW),
            Err(CertError::Decode { what: "intermediate certificate details", .. })
        ));
    }

    #[test]
    fn debug_hides_the_root_private_key() {
        let secret = [0x5Au8; 32];
        let issuer = CertIssuer::from_root_private(&secret);
        let shown = format!("{issuer:?}");
        assert!(!shown.contains(&"5a".repeat(8)), "{shown}");
        assert!(shown.contains(&KeyHex(issuer.public_key()).to_string()), "{shown}");
    }

    #[test]
    fn whatsapp_root_is_a_valid_curve_point() {
        // A signature of garbage must fail on the signature, not on the key.
        let err = xeddsa::verify(&WHATSAPP_ROOT_PUBLIC_KEY, b"x", &[0u8; 64]).unwrap_err();
        assert_eq!(err, XeddsaError::BadSignature);
    }
}
