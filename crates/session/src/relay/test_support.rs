//! Shared by the relay's tests.

use wire::cert::{CertIssuer, ChainParams};
use wire::noise::{Flavour, Initiator, Responder, StaticKeypair, Transport};

/// A finished in-memory handshake: (the proxy's transport, chatd's transport).
pub(crate) fn transports() -> (Transport, Transport) {
    let issuer = CertIssuer::generate().unwrap();
    let server = StaticKeypair::generate().unwrap();
    let chain = issuer.issue(&server.public(), &ChainParams::new(1, 2, 0, u64::MAX)).unwrap();
    let mut i = Initiator::new(StaticKeypair::generate().unwrap(), Flavour::WhatsApp).unwrap();
    let mut r = Responder::new(server, chain, Flavour::WhatsApp).unwrap();
    r.read_client_hello(&i.client_hello().unwrap()).unwrap();
    i.read_server_hello(&r.server_hello().unwrap()).unwrap();
    let (finish, ti) = i.client_finish(b"payload").unwrap();
    let done = r.read_client_finish(&finish).unwrap();
    (ti, done.transport)
}
