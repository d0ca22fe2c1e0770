//! Test support for the crates that drive the handshake (feature `test-util`, which only
//! dev-dependencies turn on): a simulated chatd identity and a finished in-memory handshake with
//! it. One copy, so the wire, session and relay tests do not each grow their own.

use std::sync::Arc;

use crate::cert::{CertIssuer, ChainParams};
use crate::noise::{Flavour, Initiator, Responder, StaticKeypair, Transport};

/// A simulated chatd identity: its static key, the issuer's root key and a certificate chain for
/// the static key.
pub struct TestServer {
    pub key: StaticKeypair,
    pub root: [u8; 32],
    pub chain: Vec<u8>,
    issuer: Arc<CertIssuer>,
}

impl TestServer {
    /// A fresh identity whose chain is valid from a minute before `now_unix_secs` to an hour
    /// after.
    pub fn generate(now_unix_secs: u64) -> TestServer {
        let key = StaticKeypair::generate().unwrap();
        let issuer = CertIssuer::generate().unwrap();
        let params = ChainParams::new(1, 2, now_unix_secs.saturating_sub(60), now_unix_secs + 3600);
        let chain = issuer.issue(&key.public(), &params).unwrap();
        TestServer { key, root: issuer.public_key(), chain, issuer: issuer.into() }
    }

    /// The same root with a new static key (chatd rotated its key), valid around `now_unix_secs`.
    pub fn rotated(&self, now_unix_secs: u64) -> TestServer {
        let key = StaticKeypair::generate().unwrap();
        let params = ChainParams::new(3, 4, now_unix_secs.saturating_sub(60), now_unix_secs + 3600);
        let chain = self.issuer.issue(&key.public(), &params).unwrap();
        TestServer { key, root: self.root, chain, issuer: Arc::clone(&self.issuer) }
    }

    /// A Noise responder for this identity, WhatsApp flavour.
    pub fn responder(&self) -> Responder {
        Responder::new(self.key.clone(), self.chain.clone(), Flavour::WhatsApp).unwrap()
    }

    /// A finished handshake with a fresh client key, in memory and without checking the chain:
    /// (the client's transport, this server's transport).
    pub fn transports(&self) -> (Transport, Transport) {
        let mut i = Initiator::new(StaticKeypair::generate().unwrap(), Flavour::WhatsApp).unwrap();
        let mut r = self.responder();
        r.read_client_hello(&i.client_hello().unwrap()).unwrap();
        i.read_server_hello(&r.server_hello().unwrap()).unwrap();
        let (finish, client) = i.client_finish(b"payload").unwrap();
        (client, r.read_client_finish(&finish).unwrap().transport)
    }
}

/// A finished handshake with a fresh [`TestServer`]: (the client's transport, chatd's transport).
pub fn transports() -> (Transport, Transport) {
    TestServer::generate(0).transports()
}
