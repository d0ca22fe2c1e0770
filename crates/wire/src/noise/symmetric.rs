//! Noise's `CipherState` and `SymmetricState` (spec sections 5.1-5.2) with the WhatsApp switch.
//!
//! Public so conformance tests can drive the core directly; the handshake types in
//! `handshake.rs` are the API for real use.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{digest, hmac};
use zeroize::Zeroizing;

use super::transport::{RecvCipher, SendCipher, Transport};
use super::{Direction, Flavour, HandshakeStage, NoiseError, TAG_LEN};

/// Noise's HASHLEN for SHA-256.
const HASH_LEN: usize = 32;

/// Which side of the handshake a state belongs to (decides the split-key order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client: writes with the first split key.
    Initiator,
    /// The server: writes with the second split key.
    Responder,
}

/// The 12-byte nonce shared by handshake and transport ciphers: 8 zero bytes, then the counter
/// as 32-bit big-endian. Equal to Noise's AESGCM nonce (4 zero bytes + 64-bit BE) below 2^32.
pub(crate) fn nonce(counter: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// An AES-256-GCM key for a 32-byte secret.
pub(crate) fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, NoiseError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| NoiseError::Crypto { op: "AES-256-GCM key setup" })?;
    Ok(LessSafeKey::new(unbound))
}

/// A handshake-phase cipher: optional key `k` and nonce counter `n`.
#[derive(Default)]
pub struct CipherState {
    key: Option<LessSafeKey>,
    n: u32,
    exhausted: bool,
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState").field("has_key", &self.has_key()).field("n", &self.n).finish()
    }
}

impl CipherState {
    /// A cipher with key `k` and `n = 0`.
    pub fn new(key: &[u8; 32]) -> Result<Self, NoiseError> {
        Ok(Self { key: Some(aead_key(key)?), n: 0, exhausted: false })
    }

    /// Whether `k` is set.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// `EncryptWithAd`: with a key, appends `Enc(k, n++, ad, buf) || tag` in place of `buf`;
    /// without one, leaves `buf` as is.
    pub fn encrypt_with_ad(&mut self, ad: &[u8], buf: &mut Vec<u8>) -> Result<(), NoiseError> {
        let Some(key) = &self.key else { return Ok(()) };
        if self.exhausted {
            return Err(NoiseError::NonceExhausted { direction: Direction::Send });
        }
        let tag = key
            .seal_in_place_separate_tag(nonce(self.n), Aad::from(ad), buf)
            .map_err(|_| NoiseError::Crypto { op: "AES-GCM seal" })?;
        buf.extend_from_slice(tag.as_ref());
        self.advance();
        Ok(())
    }

    /// `DecryptWithAd`: with a key, authenticates and decrypts `ciphertext || tag`; without one,
    /// returns it unchanged. On failure `n` does not advance (Noise spec 5.1).
    pub fn decrypt_with_ad(
        &mut self,
        ad: &[u8],
        ciphertext: &[u8],
        stage: HandshakeStage,
    ) -> Result<Vec<u8>, NoiseError> {
        let Some(key) = &self.key else { return Ok(ciphertext.to_vec()) };
        if ciphertext.len() < TAG_LEN {
            return Err(NoiseError::Decrypt { stage });
        }
        if self.exhausted {
            return Err(NoiseError::NonceExhausted { direction: Direction::Receive });
        }
        let mut buf = ciphertext.to_vec();
        let len =
            key.open_in_place(nonce(self.n), Aad::from(ad), &mut buf).map_err(|_| NoiseError::Decrypt { stage })?.len();
        buf.truncate(len);
        self.advance();
        Ok(buf)
    }

    fn advance(&mut self) {
        match self.n.checked_add(1) {
            Some(next) => self.n = next,
            None => self.exhausted = true,
        }
    }
}

/// Noise's `SymmetricState`: chaining key `ck`, handshake hash `h` and the handshake cipher.
pub struct SymmetricState {
    flavour: Flavour,
    ck: Zeroizing<[u8; HASH_LEN]>,
    h: [u8; HASH_LEN],
    cipher: CipherState,
}

impl fmt::Debug for SymmetricState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // h is public transcript data; ck is secret.
        f.debug_struct("SymmetricState")
            .field("flavour", &self.flavour)
            .field("h", &crate::cert::KeyHex(self.h))
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl SymmetricState {
    /// `InitializeSymmetric(protocol_name)`: `h` = the name zero-padded to 32 bytes (or its hash if
    /// longer), `ck = h`, no key.
    pub fn new(protocol_name: &[u8], flavour: Flavour) -> Self {
        let mut h = [0u8; HASH_LEN];
        if protocol_name.len() <= HASH_LEN {
            h[..protocol_name.len()].copy_from_slice(protocol_name);
        } else {
            h.copy_from_slice(digest::digest(&digest::SHA256, protocol_name).as_ref());
        }
        Self { flavour, ck: Zeroizing::new(h), h, cipher: CipherState::default() }
    }

    /// The flavour this state follows.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The current handshake hash `h`.
    pub fn handshake_hash(&self) -> [u8; HASH_LEN] {
        self.h
    }

    /// Whether `MixKey` has run (the handshake cipher has a key).
    pub fn has_key(&self) -> bool {
        self.cipher.has_key()
    }

    /// `MixHash(data)`: `h = SHA-256(h || data)`.
    pub fn mix_hash(&mut self, data: &[u8]) {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.h);
        ctx.update(data);
        self.h.copy_from_slice(ctx.finish().as_ref());
    }

    /// `MixKey(ikm)`: `ck, k = HKDF(ck, ikm)`, `n = 0`.
    pub fn mix_key(&mut self, ikm: &[u8]) -> Result<(), NoiseError> {
        let (ck, k) = hkdf2(&self.ck, ikm)?;
        self.ck = ck;
        self.cipher = CipherState::new(&k)?;
        Ok(())
    }

    /// `EncryptAndHash(plaintext)`. Without a key the plaintext goes out as is and, in the
    /// WhatsApp flavour only, is *not* mixed into `h`: the one deviation from stock Noise.
    pub fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if !self.cipher.has_key() && self.flavour == Flavour::WhatsApp {
            return Ok(plaintext.to_vec());
        }
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.cipher.encrypt_with_ad(&self.h, &mut buf)?;
        self.mix_hash(&buf);
        Ok(buf)
    }

    /// `DecryptAndHash(ciphertext)`, with the same WhatsApp rule as
    /// [`encrypt_and_hash`](Self::encrypt_and_hash). `stage` names the field in errors.
    pub fn decrypt_and_hash(&mut self, ciphertext: &[u8], stage: HandshakeStage) -> Result<Vec<u8>, NoiseError> {
        if !self.cipher.has_key() && self.flavour == Flavour::WhatsApp {
            return Ok(ciphertext.to_vec());
        }
        let plaintext = self.cipher.decrypt_with_ad(&self.h, ciphertext, stage)?;
        self.mix_hash(ciphertext);
        Ok(plaintext)
    }

    /// `Split()`: `k1, k2 = HKDF(ck, "")`. The initiator writes with `k1` and reads with `k2`;
    /// both counters start at 0. The final `h` is kept as the transport's handshake hash.
    pub fn split(self, role: Role) -> Result<Transport, NoiseError> {
        let (k1, k2) = hkdf2(&self.ck, &[])?;
        let (send, recv) = match role {
            Role::Initiator => (&k1, &k2),
            Role::Responder => (&k2, &k1),
        };
        Ok(Transport::new(SendCipher::new(send)?, RecvCipher::new(recv)?, self.h))
    }
}

/// Noise's `HKDF(chaining_key, input_key_material, 2)` (spec section 4.3) on HMAC-SHA256:
/// `temp = HMAC(ck, ikm)`, `out1 = HMAC(temp, 0x01)`, `out2 = HMAC(temp, out1 || 0x02)`.
/// Our copies of the secrets are wiped on drop; aws-lc wipes its HMAC contexts.
fn hkdf2(ck: &[u8; HASH_LEN], ikm: &[u8]) -> Result<SecretPair, NoiseError> {
    let temp = Zeroizing::new(to32(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, ck), ikm).as_ref())?);
    let temp_key = hmac::Key::new(hmac::HMAC_SHA256, &temp[..]);
    let out1 = Zeroizing::new(to32(hmac::sign(&temp_key, &[0x01]).as_ref())?);
    let mut ctx = hmac::Context::with_key(&temp_key);
    ctx.update(&out1[..]);
    ctx.update(&[0x02]);
    let out2 = Zeroizing::new(to32(ctx.sign().as_ref())?);
    Ok((out1, out2))
}

/// Two 32-byte secrets, wiped on drop.
type SecretPair = (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>);

fn to32(bytes: &[u8]) -> Result<[u8; 32], NoiseError> {
    bytes.try_into().map_err(|_| NoiseError::Crypto { op: "HMAC-SHA256 output length" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_hash_is_the_padded_name() {
        let s = SymmetricState::new(super::super::NOISE_XX_PROTOCOL_NAME, Flavour::WhatsApp);
        let mut expected = [0u8; 32];
        expected[..28].copy_from_slice(b"Noise_XX_25519_AESGCM_SHA256");
        assert_eq!(s.handshake_hash(), expected);
        // Longer names are hashed (Noise_XXfallback is 36 bytes).
        let name = b"Noise_XXfallback_25519_AESGCM_SHA256";
        let long = SymmetricState::new(name, Flavour::WhatsApp);
        assert_eq!(long.handshake_hash().as_slice(), digest::digest(&digest::SHA256, name).as_ref());
    }

    /// HKDF as Noise defines it equals RFC 5869 HKDF-SHA256 with empty info: cross-check our
    /// HMAC construction against aws-lc's independent HKDF.
    #[test]
    fn hkdf_matches_rfc5869() {
        struct Len64;
        impl aws_lc_rs::hkdf::KeyType for Len64 {
            fn len(&self) -> usize {
                64
            }
        }
        for (ck, ikm) in [([1u8; 32], &b"shared secret"[..]), ([0xA5; 32], &[][..])] {
            let (a, b) = hkdf2(&ck, ikm).unwrap();
            let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &ck).extract(ikm);
            let mut okm = [0u8; 64];
            prk.expand(&[], Len64).unwrap().fill(&mut okm).unwrap();
            assert_eq!(&okm[..32], &a[..]);
            assert_eq!(&okm[32..], &b[..]);
        }
    }

    #[test]
    fn the_flavours_differ_only_before_the_first_key() {
        let mut wa = SymmetricState::new(b"name", Flavour::WhatsApp);
        let mut std = SymmetricState::new(b"name", Flavour::Standard);
        for s in [&mut wa, &mut std] {
            s.mix_hash(b"WA\x06\x03");
            s.mix_hash(&[9; 32]);
        }
        let before = wa.handshake_hash();
        assert_eq!(wa.encrypt_and_hash(&[]).unwrap(), Vec::<u8>::new());
        assert_eq!(std.encrypt_and_hash(&[]).unwrap(), Vec::<u8>::new());
        assert_eq!(wa.handshake_hash(), before, "WhatsApp: no MixHash of the empty payload");
        let mut manual = digest::Context::new(&digest::SHA256);
        manual.update(&before);
        assert_eq!(std.handshake_hash().as_slice(), manual.finish().as_ref(), "Standard: h = SHA256(h || \"\")");

        // Once keyed, both flavours encrypt and hash identically.
        wa.mix_hash(&[]);
        assert_eq!(wa.handshake_hash(), std.handshake_hash());
        wa.mix_key(b"dh").unwrap();
        std.mix_key(b"dh").unwrap();
        let (c1, c2) = (wa.encrypt_and_hash(b"x").unwrap(), std.encrypt_and_hash(b"x").unwrap());
        assert_eq!(c1, c2);
        assert_eq!(c1.len(), 1 + TAG_LEN);
        assert_eq!(wa.handshake_hash(), std.handshake_hash());
    }

    #[test]
    fn decrypt_failure_does_not_advance_the_nonce() {
        let mut tx = CipherState::new(&[3; 32]).unwrap();
        let mut rx = CipherState::new(&[3; 32]).unwrap();
        let mut buf = b"hello".to_vec();
        tx.encrypt_with_ad(b"ad", &mut buf).unwrap();
        let mut bad = buf.clone();
        bad[0] ^= 1;
        let stage = HandshakeStage::ServerHelloStatic;
        assert!(matches!(rx.decrypt_with_ad(b"ad", &bad, stage), Err(NoiseError::Decrypt { .. })));
        assert!(matches!(rx.decrypt_with_ad(b"other ad", &buf, stage), Err(NoiseError::Decrypt { .. })));
        assert!(matches!(rx.decrypt_with_ad(b"ad", &buf[..3], stage), Err(NoiseError::Decrypt { .. })));
        assert_eq!(rx.decrypt_with_ad(b"ad", &buf, stage).unwrap(), b"hello");
    }

    #[test]
    fn handshake_cipher_refuses_to_wrap() {
        let mut c = CipherState::new(&[0; 32]).unwrap();
        c.n = u32::MAX;
        c.encrypt_with_ad(&[], &mut Vec::new()).unwrap();
        assert!(matches!(
            c.encrypt_with_ad(&[], &mut Vec::new()),
            Err(NoiseError::NonceExhausted { direction: Direction::Send })
        ));
    }
}
