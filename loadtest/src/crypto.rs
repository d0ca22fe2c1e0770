//! The crypto ceiling: the X25519 and AES-256-GCM primitives the proxy's Noise uses (aws-lc-rs,
//! as in `wire::noise`), timed on one core, turned into the most handshakes and relay bytes one
//! core could do if it did nothing else.

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use serde::Serialize;

use crate::error::{Error, Result};

/// Base-point multiplications the proxy does per login: the client's static public key from the
/// private key in its login frame, and the XX initiator's ephemeral key.
pub const X25519_BASE_PER_HANDSHAKE: f64 = 2.0;
/// Agreements an XX initiator does per handshake: ee, es, se.
pub const X25519_AGREE_PER_HANDSHAKE: f64 = 3.0;

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub x25519_keygen_per_sec: f64,
    pub x25519_agree_per_sec: f64,
    /// 1 / (2 base-point multiplications + 3 agreements): the most logins one core could do.
    pub handshakes_per_sec_per_core: f64,
    pub aes_gcm_256b_bytes_per_sec: f64,
    pub aes_gcm_16k_bytes_per_sec: f64,
    /// AES-256-GCM over 256-byte stanzas: the most relayed bytes one core could seal or open.
    pub relay_bytes_per_sec_per_core: f64,
    pub stanzas_per_sec_per_core: f64,
}

fn time_per_op(budget: Duration, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    // Warm up, then run batches until the budget is spent.
    for _ in 0..100 {
        op()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            op()?;
        }
        n += 100;
    }
    Ok(start.elapsed().as_secs_f64() / n as f64)
}

fn aes_bytes_per_sec(size: usize, budget: Duration) -> Result<f64> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).map_err(|_| crypto("AES key"))?);
    let mut buf = vec![0u8; size];
    let mut counter = 0u64;
    let per = time_per_op(budget, || {
        counter += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut buf)
            .map(|_| ())
            .map_err(|_| crypto("AES-GCM seal"))
    })?;
    Ok(size as f64 / per)
}

fn crypto(what: &str) -> Error {
    Error::Invalid(format!("crypto ceiling: {what} failed"))
}

/// Measures on the calling thread (run it on a blocking thread); `budget` per primitive.
pub fn measure(budget: Duration) -> Result<Ceiling> {
    let keygen = time_per_op(budget, || {
        let k = agreement::PrivateKey::generate(&X25519).map_err(|_| crypto("X25519 keygen"))?;
        k.compute_public_key().map(|_| ()).map_err(|_| crypto("X25519 public key"))
    })?;
    let mine = agreement::PrivateKey::generate(&X25519).map_err(|_| crypto("X25519 keygen"))?;
    let peer = agreement::PrivateKey::generate(&X25519)
        .and_then(|k| k.compute_public_key())
        .map_err(|_| crypto("X25519 keygen"))?;
    let peer = peer.as_ref().to_vec();
    let agree = time_per_op(budget, || {
        agreement::agree(&mine, UnparsedPublicKey::new(&X25519, &peer), crypto("X25519 agree"), |s| {
            std::hint::black_box(s);
            Ok(())
        })
    })?;
    let aes_256 = aes_bytes_per_sec(256, budget)?;
    let aes_16k = aes_bytes_per_sec(16 * 1024, budget)?;
    Ok(Ceiling {
        x25519_keygen_per_sec: 1.0 / keygen,
        x25519_agree_per_sec: 1.0 / agree,
        handshakes_per_sec_per_core: 1.0 / (X25519_BASE_PER_HANDSHAKE * keygen + X25519_AGREE_PER_HANDSHAKE * agree),
        aes_gcm_256b_bytes_per_sec: aes_256,
        aes_gcm_16k_bytes_per_sec: aes_16k,
        relay_bytes_per_sec_per_core: aes_256,
        stanzas_per_sec_per_core: aes_256 / 256.0,
    })
}
