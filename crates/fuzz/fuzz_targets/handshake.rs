//! The Noise handshake messages from an untrusted peer: a responder fed an arbitrary ClientHello
//! and ClientFinish, and an initiator fed an arbitrary ServerHello, in XX (mode bit 1 clear) or
//! with IK and XXfallback (bit 1 set: the any-pattern responder, the IK initiator). Every outcome
//! must be a typed error or a completed step, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wire::cert::{CertIssuer, ChainParams};
use wire::noise::{
    Flavour, IkInitiator, IkServerHello, Initiator, Responder, ServerStart, StaticKeypair, accept_client_hello,
};

struct Keys {
    server: [u8; 32],
    client: [u8; 32],
    chain: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (server, client) = ([7u8; 32], [9u8; 32]);
        let issuer = CertIssuer::from_root_private(&[3u8; 32]);
        let public = StaticKeypair::from_private(&server).expect("key").public();
        let chain = issuer.issue(&public, &ChainParams::new(1, 2, 0, u64::MAX)).expect("chain");
        Keys { server, client, chain }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let k = keys();
    if mode & 2 != 0 {
        resumption(k, mode, rest);
    } else if mode & 1 == 0 {
        // Responder: the first half as ClientHello, the second as ClientFinish.
        let (hello, finish) = rest.split_at(rest.len() / 2);
        let server = StaticKeypair::from_private(&k.server).expect("key");
        let Ok(mut responder) = Responder::new(server, k.chain.clone(), Flavour::WhatsApp) else { return };
        if responder.read_client_hello(hello).is_ok() && responder.server_hello().is_ok() {
            let _ = responder.read_client_finish(finish);
        }
    } else {
        let client = StaticKeypair::from_private(&k.client).expect("key");
        let Ok(mut initiator) = Initiator::new(client, Flavour::WhatsApp) else { return };
        if initiator.client_hello().is_ok() && initiator.read_server_hello(rest).is_ok() {
            let _ = initiator.client_finish(b"payload");
        }
    }
});

/// The IK side: the responder that takes any pattern, or the IK initiator and its fallback.
fn resumption(k: &Keys, mode: u8, rest: &[u8]) {
    let server = StaticKeypair::from_private(&k.server).expect("key");
    if mode & 1 == 0 {
        let (hello, finish) = rest.split_at(rest.len() / 2);
        if let Ok(ServerStart::Full(mut responder)) =
            accept_client_hello(server, k.chain.clone(), Flavour::WhatsApp, hello)
            && responder.server_hello().is_ok()
        {
            let _ = responder.read_client_finish(finish);
        }
    } else {
        let client = StaticKeypair::from_private(&k.client).expect("key");
        let Ok(mut initiator) = IkInitiator::new(client, server.public(), Flavour::WhatsApp) else { return };
        if initiator.client_hello(b"payload").is_ok()
            && let Ok(IkServerHello::Fallback(mut fallback)) = initiator.read_server_hello(rest)
            && fallback.read_server_hello(rest).is_ok()
        {
            let _ = fallback.client_finish(b"payload");
        }
    }
}
