//! The server certificate chain verifier on arbitrary `CertChain` bytes: a typed error or a
//! verified chain, never a panic. (A forged chain cannot verify: the signatures are XEdDSA.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::cert::CertVerifier;

fuzz_target!(|data: &[u8]| {
    let Some((key, chain)) = data.split_at_checked(32) else { return };
    let key: [u8; 32] = key.try_into().expect("32 bytes");
    let _ = CertVerifier::new([3u8; 32]).verify(chain, &key, 1_800_000_000);
    let _ = CertVerifier::whatsapp().verify(chain, &key, 1_800_000_000);
});
