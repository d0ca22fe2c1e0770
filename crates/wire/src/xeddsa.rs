//! XEdDSA: Ed25519-style signatures made and checked with Curve25519 (X25519) keys, as Signal
//! specified them and as WhatsApp signs its server certificate chain.
//!
//! * [`sign`] follows the XEdDSA specification and its reference code (`xed25519_sign` in
//!   Signal's curve25519 library): `calculate_key_pair` forces the Edwards sign bit to 0 by
//!   negating the scalar, the nonce is `SHA-512(0xFE || 0xFF*31 || a || M || Z) mod q`, and the
//!   signature is `R || s` with the top bit of `s` clear.
//! * [`verify`] accepts libsignal's variant too: libsignal signs without negating and carries
//!   the Edwards sign bit in bit 255 of the signature. Verifying with the sign taken from that bit
//!   accepts both forms (for specification signatures the bit is 0), which is what libsignal,
//!   whatsmeow and the reference `curve25519_verify` do.
//!
//! Built on `curve25519-dalek` 4 (the curve stack snow already brings in) plus aws-lc's SHA-512,
//! whose context is wiped when dropped (the nonce hash absorbs the private scalar). The `xeddsa`
//! crate would add `sha2` 0.11, `rand` 0.10 and `ed25519-dalek` for no gain. Private-key
//! arithmetic uses dalek's constant-time scalar and base-point operations; only verification
//! (public data) uses variable-time multiplication.

use aws_lc_rs::digest::{Context, SHA512};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Length of a signature: `R` (32 bytes) then `s` (32 bytes).
pub const SIGNATURE_LEN: usize = 64;

/// `hash_1` domain-separation prefix of the specification: 2^256 - 2, little-endian.
const HASH1_PREFIX: [u8; 32] = {
    let mut p = [0xFF; 32];
    p[0] = 0xFE;
    p
};

/// Why a signature was not made or not accepted.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum XeddsaError {
    /// The public key's u-coordinate is not below the field prime (or has bit 255 set).
    #[error("public key is not a canonical Curve25519 u-coordinate")]
    NonCanonicalPublicKey,
    /// The u-coordinate belongs to the curve's twist (or is -1): it has no Edwards form.
    #[error("public key is not a point on Curve25519")]
    PublicKeyNotOnCurve,
    /// The public key has small order: anything would verify against it.
    #[error("public key is a small-order point")]
    SmallOrderPublicKey,
    /// `s` (bit 255 excluded) is not below the group order.
    #[error("signature scalar is not canonical")]
    NonCanonicalScalar,
    /// The signature equation does not hold.
    #[error("signature does not verify")]
    BadSignature,
    /// The operating system's random generator failed.
    #[error("operating-system random generator failed")]
    Rng,
}

/// The X25519 public key (Montgomery u-coordinate) of a private key.
pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*private_key).to_bytes()
}

/// Signs `message` with an X25519 private key and 64 caller-supplied random bytes.
///
/// The random bytes only protect the nonce against fault and side-channel attacks; a fixed value
/// still yields a valid signature, which is what makes this function testable. Use
/// [`sign_with_os_rng`] in production.
pub fn sign(private_key: &[u8; 32], message: &[u8], random: &[u8; 64]) -> [u8; SIGNATURE_LEN] {
    // calculate_key_pair: E = kB; a = k or -k so that A = aB has sign bit 0.
    let k = Zeroizing::new(clamp_integer(*private_key));
    let mut k_scalar = Scalar::from_bytes_mod_order(*k);
    let e_point = EdwardsPoint::mul_base(&k_scalar).compress();
    let sign = e_point.as_bytes()[31] >> 7;
    let mut neg = -k_scalar;
    let neg_bytes = Zeroizing::new(neg.to_bytes());

    // Branch-free select, byte for byte as the reference code's `sc_cmov`: the un-reduced
    // clamped k when the sign is already 0, -k mod q otherwise. These bytes feed the nonce hash.
    let mask = 0u8.wrapping_sub(sign);
    let mut a_bytes = Zeroizing::new([0u8; 32]);
    for ((a, k), n) in a_bytes.iter_mut().zip(k.iter()).zip(neg_bytes.iter()) {
        *a = k ^ (mask & (k ^ n));
    }
    let mut a = Scalar::from_bytes_mod_order(*a_bytes);
    let mut public = e_point.to_bytes();
    public[31] &= 0x7F;

    let mut nonce_hash = Context::new(&SHA512);
    nonce_hash.update(&HASH1_PREFIX);
    nonce_hash.update(&a_bytes[..]);
    nonce_hash.update(message);
    nonce_hash.update(random);
    let mut r = Scalar::from_bytes_mod_order_wide(&wide(nonce_hash));
    let big_r = EdwardsPoint::mul_base(&r).compress();

    let h = challenge(big_r.as_bytes(), &public, message);
    let mut s = h * a + r;

    let mut signature = [0u8; SIGNATURE_LEN];
    signature[..32].copy_from_slice(big_r.as_bytes());
    signature[32..].copy_from_slice(s.as_bytes());

    for secret in [&mut k_scalar, &mut neg, &mut a, &mut r, &mut s] {
        secret.zeroize();
    }
    signature
}

/// [`sign`] with the 64 random bytes drawn from the operating system.
pub fn sign_with_os_rng(private_key: &[u8; 32], message: &[u8]) -> Result<[u8; SIGNATURE_LEN], XeddsaError> {
    let mut random = Zeroizing::new([0u8; 64]);
    aws_lc_rs::rand::fill(&mut random[..]).map_err(|_| XeddsaError::Rng)?;
    Ok(sign(private_key, message, &random))
}

/// Checks `signature` over `message` against an X25519 public key.
///
/// Rejects non-canonical or off-curve keys, small-order keys and non-canonical `s` before doing
/// any group arithmetic on them; never panics.
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Result<(), XeddsaError> {
    if !is_canonical_u(public_key) {
        return Err(XeddsaError::NonCanonicalPublicKey);
    }
    let sign = signature[63] >> 7;
    let a_point = MontgomeryPoint(*public_key).to_edwards(sign).ok_or(XeddsaError::PublicKeyNotOnCurve)?;
    if a_point.is_small_order() {
        return Err(XeddsaError::SmallOrderPublicKey);
    }

    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&signature[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&signature[32..]);
    s_bytes[31] &= 0x7F; // bit 255 carried the sign, not part of s
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).ok_or(XeddsaError::NonCanonicalScalar)?;

    let h = challenge(&r_bytes, a_point.compress().as_bytes(), message);
    // R' = sB - hA; comparing encodings also rejects a non-canonical R.
    let r_check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&h, &-a_point, &s).compress();
    if r_check.as_bytes() == &r_bytes { Ok(()) } else { Err(XeddsaError::BadSignature) }
}

/// `SHA-512(R || A || M) mod q`.
fn challenge(r: &[u8; 32], a: &[u8; 32], message: &[u8]) -> Scalar {
    let mut hash = Context::new(&SHA512);
    hash.update(r);
    hash.update(a);
    hash.update(message);
    Scalar::from_bytes_mod_order_wide(&wide(hash))
}

/// The 64-byte digest of `ctx`, in a buffer wiped on drop.
fn wide(ctx: Context) -> Zeroizing<[u8; 64]> {
    let mut out = Zeroizing::new([0u8; 64]);
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `u < 2^255 - 19`, bit 255 included (a set bit 255 makes u >= p).
fn is_canonical_u(u: &[u8; 32]) -> bool {
    if u[31] > 0x7F {
        return false;
    }
    // u >= p only if u = 0x7FFF...FF?? with the low byte >= 0xED.
    !(u[31] == 0x7F && u[1..31].iter().all(|&b| b == 0xFF) && u[0] >= 0xED)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signal's curve25519 reference tests (`internal_fast_tests.c`): private key all zero but
    /// byte 8 = 189, clamped; message 200 zero bytes; random 64 zero bytes.
    fn reference_inputs() -> ([u8; 32], [u8; 200], [u8; 64]) {
        let mut k = [0u8; 32];
        k[8] = 189;
        (clamp_integer(k), [0u8; 200], [0u8; 64])
    }

    /// `xeddsa_fast_test`'s expected `xed25519_sign` output for [`reference_inputs`].
    const XEDDSA_FAST_TEST_SIG: [u8; 64] = [
        0x11, 0xc7, 0xf3, 0xe6, 0xc4, 0xdf, 0x9e, 0x8a, 0x51, 0x50, 0xe1, 0xdb, 0x3b, 0x30, 0xf9, 0x2d, 0xe3, 0xa3,
        0xb3, 0xaa, 0x43, 0x86, 0x56, 0x54, 0x5f, 0xa7, 0x39, 0x0f, 0x4b, 0xcc, 0x7b, 0xb2, 0x6c, 0x43, 0x1d, 0x9e,
        0x90, 0x64, 0x3e, 0x4f, 0x0e, 0xaa, 0x0e, 0x9c, 0x55, 0x77, 0x66, 0xfa, 0x69, 0xad, 0xa5, 0x76, 0xd6, 0x3d,
        0xca, 0xf2, 0xac, 0x32, 0x6c, 0x11, 0xd0, 0xb9, 0x77, 0x02,
    ];

    /// `curvesigs_fast_test`'s expected libsignal-style `curve25519_sign` output (sign bit carried
    /// in bit 255: the last byte is 0x82) for the same inputs.
    const CURVESIGS_FAST_TEST_SIG: [u8; 64] = [
        0xcf, 0x87, 0x3d, 0x03, 0x79, 0xac, 0x20, 0xe8, 0x89, 0x3e, 0x55, 0x67, 0xee, 0x0f, 0x89, 0x51, 0xf8, 0xdb,
        0x84, 0x0d, 0x26, 0xb2, 0x43, 0xb4, 0x63, 0x52, 0x66, 0x89, 0xd0, 0x1c, 0xa7, 0x18, 0xac, 0x18, 0x9f, 0xb1,
        0x67, 0x85, 0x74, 0xeb, 0xdd, 0xe5, 0x69, 0x33, 0x06, 0x59, 0x44, 0x8b, 0x0b, 0xd6, 0xc1, 0x97, 0x3f, 0x7d,
        0x78, 0x0a, 0xb3, 0x95, 0x18, 0x62, 0x68, 0x03, 0xd7, 0x82,
    ];

    #[test]
    fn reference_xeddsa_vector() {
        let (k, msg, random) = reference_inputs();
        let sig = sign(&k, &msg, &random);
        assert_eq!(sig, XEDDSA_FAST_TEST_SIG);
        assert_eq!(verify(&public_key(&k), &msg, &sig), Ok(()));
        let mut bad = sig;
        bad[0] ^= 1;
        assert_eq!(verify(&public_key(&k), &msg, &bad), Err(XeddsaError::BadSignature));
    }

    #[test]
    fn reference_curvesigs_vector_verifies() {
        let (k, msg, _) = reference_inputs();
        assert_eq!(verify(&public_key(&k), &msg, &CURVESIGS_FAST_TEST_SIG), Ok(()));
        let mut bad = CURVESIGS_FAST_TEST_SIG;
        bad[0] ^= 1;
        assert!(verify(&public_key(&k), &msg, &bad).is_err());
    }

    /// libsignal `rust/core/src/curve/curve25519.rs` `test_signature`: Alice's identity key signs
    /// her serialized (0x05-prefixed) ephemeral key; every one-bit change must be rejected.
    #[test]
    fn libsignal_alice_vector() {
        let private: [u8; 32] = [
            0xc0, 0x97, 0x24, 0x84, 0x12, 0xe5, 0x8b, 0xf0, 0x5d, 0xf4, 0x87, 0x96, 0x82, 0x05, 0x13, 0x27, 0x94, 0x17,
            0x8e, 0x36, 0x76, 0x37, 0xf5, 0x81, 0x8f, 0x81, 0xe0, 0xe6, 0xce, 0x73, 0xe8, 0x65,
        ];
        let public: [u8; 32] = [
            0xab, 0x7e, 0x71, 0x7d, 0x4a, 0x16, 0x3b, 0x7d, 0x9a, 0x1d, 0x80, 0x71, 0xdf, 0xe9, 0xdc, 0xf8, 0xcd, 0xcd,
            0x1c, 0xea, 0x33, 0x39, 0xb6, 0x35, 0x6b, 0xe8, 0x4d, 0x88, 0x7e, 0x32, 0x2c, 0x64,
        ];
        let message: [u8; 33] = [
            0x05, 0xed, 0xce, 0x9d, 0x9c, 0x41, 0x5c, 0xa7, 0x8c, 0xb7, 0x25, 0x2e, 0x72, 0xc2, 0xc4, 0xa5, 0x54, 0xd3,
            0xeb, 0x29, 0x48, 0x5a, 0x0e, 0x1d, 0x50, 0x31, 0x18, 0xd1, 0xa8, 0x2d, 0x99, 0xfb, 0x4a,
        ];
        let signature: [u8; 64] = [
            0x5d, 0xe8, 0x8c, 0xa9, 0xa8, 0x9b, 0x4a, 0x11, 0x5d, 0xa7, 0x91, 0x09, 0xc6, 0x7c, 0x9c, 0x74, 0x64, 0xa3,
            0xe4, 0x18, 0x02, 0x74, 0xf1, 0xcb, 0x8c, 0x63, 0xc2, 0x98, 0x4e, 0x28, 0x6d, 0xfb, 0xed, 0xe8, 0x2d, 0xeb,
            0x9d, 0xcd, 0x9f, 0xae, 0x0b, 0xfb, 0xb8, 0x21, 0x56, 0x9b, 0x3d, 0x90, 0x01, 0xbd, 0x81, 0x30, 0xcd, 0x11,
            0xd4, 0x86, 0xce, 0xf0, 0x47, 0xbd, 0x60, 0xb8, 0x6e, 0x88,
        ];
        assert_eq!(public_key(&private), public);
        assert_eq!(verify(&public, &message, &signature), Ok(()));
        for byte in 0..64 {
            for bit in 0..8 {
                let mut bad = signature;
                bad[byte] ^= 1 << bit;
                assert!(verify(&public, &message, &bad).is_err(), "flip {byte}.{bit} accepted");
            }
        }
        // Our own (specification-form) signatures with the same key verify too.
        let ours = sign_with_os_rng(&private, &message).unwrap();
        assert_eq!(ours[63] >> 7, 0);
        assert_eq!(verify(&public, &message, &ours), Ok(()));
    }

    #[test]
    fn random_keys_sign_and_verify_and_reject_other_messages() {
        for i in 0..32u8 {
            let mut k = [0u8; 32];
            aws_lc_rs::rand::fill(&mut k).unwrap();
            let msg = vec![i; usize::from(i) * 7];
            let sig = sign_with_os_rng(&k, &msg).unwrap();
            let pk = public_key(&k);
            assert_eq!(verify(&pk, &msg, &sig), Ok(()));
            assert_eq!(verify(&pk, b"other", &sig), Err(XeddsaError::BadSignature));
            // Matches X25519 as aws-lc computes it, so Noise keys and signing keys agree.
            let lc = aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, &k)
                .unwrap()
                .compute_public_key()
                .unwrap();
            assert_eq!(lc.as_ref(), &pk[..]);
        }
    }

    #[test]
    fn rejects_non_canonical_s() {
        let (k, msg, random) = reference_inputs();
        let mut sig = sign(&k, &msg, &random);
        // s + q encodes the same residue but is not canonical.
        let s = Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
        let q_plus_s = add_le(&s.to_bytes(), &GROUP_ORDER);
        assert!(q_plus_s[31] < 0x20, "still below 2^253, so only the canonical check catches it");
        sig[32..].copy_from_slice(&q_plus_s);
        assert_eq!(verify(&public_key(&k), &msg, &sig), Err(XeddsaError::NonCanonicalScalar));
    }

    #[test]
    fn rejects_bad_public_keys() {
        let sig = [0u8; 64];
        let mut p = [0xFF; 32];
        p[31] = 0x7F;
        p[0] = 0xED; // exactly p
        assert_eq!(verify(&p, b"", &sig), Err(XeddsaError::NonCanonicalPublicKey));
        let mut high = [0u8; 32];
        high[0] = 9;
        high[31] = 0x80;
        assert_eq!(verify(&high, b"", &sig), Err(XeddsaError::NonCanonicalPublicKey));
        // u = 0 and u = 1 are small-order points on the curve.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(verify(&[0u8; 32], b"", &sig), Err(XeddsaError::SmallOrderPublicKey));
        assert_eq!(verify(&one, b"", &sig), Err(XeddsaError::SmallOrderPublicKey));
        // u = -1 (p - 1) has no Edwards form; u = 2 lies on the twist.
        let mut minus_one = p;
        minus_one[0] = 0xEC;
        assert_eq!(verify(&minus_one, b"", &sig), Err(XeddsaError::PublicKeyNotOnCurve));
        let mut two = [0u8; 32];
        two[0] = 2;
        assert_eq!(verify(&two, b"", &sig), Err(XeddsaError::PublicKeyNotOnCurve));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut seed = [0u8; 96];
        for _ in 0..200 {
            aws_lc_rs::rand::fill(&mut seed).unwrap();
            let pk: [u8; 32] = seed[..32].try_into().unwrap();
            let sig: [u8; 64] = seed[32..].try_into().unwrap();
            assert!(verify(&pk, b"m", &sig).is_err());
        }
    }

    const GROUP_ORDER: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        out
    }
}
