//! IK resumption and the switch to XXfallback, both sides.
//!
//! The client holds the server's static key from an earlier XX and sends everything in its first
//! message; the server either accepts (a ServerHello without `static`, and the handshake is over)
//! or, when the client's `static` does not open under its key (the cached key is old or wrong),
//! answers with an XX ServerHello. Both then restart as `XXfallback`: the client's ephemeral,
//! already sent, becomes the pre-message, and the rest is XX ([`Initiator`] and [`Responder`] in
//! their fallback form). No step of IK or XXfallback encrypts before a key exists, so WhatsApp's
//! deviation ([`Flavour::WhatsApp`]) never applies here: both are stock Noise (WR/OX
//! `IkHandshakeState`, `XxFallbackHandshakeState`; consonance `_start_handshake_ik`,
//! `_switch_handshake_xxfallback`).

use std::fmt;

use bytes::Bytes;
use prost::Message;
use zeroize::Zeroizing;

use super::handshake::{Ephemeral, decode, enc_payload, enc_static, exact, mix_dh, new_state, required};
use super::symmetric::{Role, SymmetricState};
use super::transport::Transport;
use super::{
    ClientFinished, DH_LEN, Flavour, HandshakeStage, Initiator, NOISE_IK_PROTOCOL_NAME, NoiseError, Responder,
    StaticKeypair, WA_CONN_HEADER,
};
use crate::cert::KeyHex;
use crate::proto::{ClientHello, HandshakeMessage, ServerHello};

// ---------------------------------------------------------------------------------------------
// Initiator

/// The client side of IK: [`client_hello`](Self::client_hello), then
/// [`read_server_hello`](Self::read_server_hello), which either ends the handshake or hands over
/// the XXfallback [`Initiator`].
pub struct IkInitiator {
    sym: SymmetricState,
    s: StaticKeypair,
    e: Ephemeral,
    rs: [u8; DH_LEN],
    flavour: Flavour,
    prologue: Box<[u8]>,
    sent_hello: bool,
}

impl fmt::Debug for IkInitiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkInitiator")
            .field("static", &self.s)
            .field("server_static", &KeyHex(self.rs))
            .field("sent_hello", &self.sent_hello)
            .field("sym", &self.sym)
            .finish_non_exhaustive()
    }
}

/// What the IK client makes of the ServerHello.
#[derive(Debug)]
pub enum IkServerHello {
    /// The server accepted: the session's transport and the decrypted ServerHello payload (the
    /// server's certificate chain, which the cached key already stands for).
    Accepted { transport: Transport, payload: Vec<u8> },
    /// The server declined (its ServerHello has `static`): the XXfallback initiator, which reads
    /// the same ServerHello with [`Initiator::read_server_hello`] and then sends its ClientFinish.
    Fallback(Initiator),
}

impl IkInitiator {
    /// A client resuming with `server_static` (learnt in an earlier XX), prologue
    /// [`WA_CONN_HEADER`] and a fresh ephemeral key.
    pub fn new(static_key: StaticKeypair, server_static: [u8; DH_LEN], flavour: Flavour) -> Result<Self, NoiseError> {
        Self::with_prologue(static_key, server_static, flavour, &WA_CONN_HEADER)
    }

    /// The same with another prologue.
    pub fn with_prologue(
        static_key: StaticKeypair,
        server_static: [u8; DH_LEN],
        flavour: Flavour,
        prologue: &[u8],
    ) -> Result<Self, NoiseError> {
        let mut sym = new_state(NOISE_IK_PROTOCOL_NAME, flavour, prologue);
        // The pre-message `<- s`.
        sym.mix_hash(&server_static);
        Ok(Self {
            sym,
            s: static_key,
            e: Ephemeral::generate()?,
            rs: server_static,
            flavour,
            prologue: prologue.into(),
            sent_hello: false,
        })
    }

    /// The current handshake hash.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.sym.handshake_hash()
    }

    /// Message 1 (`e, es, s, ss` + payload) as an unframed
    /// `HandshakeMessage{clientHello{ephemeral, static, payload}}` carrying `client_payload` (the
    /// encoded `ClientPayload`).
    pub fn client_hello(&mut self, client_payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if self.sent_hello {
            return Err(NoiseError::OutOfOrder { call: "client_hello", state: "has already sent its ClientHello" });
        }
        self.sent_hello = true;
        self.sym.mix_hash(&self.e.public);
        mix_dh(&mut self.sym, &self.e.private, &self.rs, "cached server static")?;
        let enc_static = self.sym.encrypt_and_hash(&self.s.public())?;
        mix_dh(&mut self.sym, self.s.private(), &self.rs, "cached server static")?;
        let enc_payload = self.sym.encrypt_and_hash(client_payload)?;
        let hello = ClientHello {
            ephemeral: Some(self.e.public.to_vec()),
            r#static: Some(enc_static),
            payload: Some(enc_payload),
        };
        Ok(HandshakeMessage { client_hello: Some(hello), ..Default::default() }.encode_to_vec())
    }

    /// Reads message 2. Without `static` it is IK's `e, ee, se` + payload, then Split; with
    /// `static` the server declined and the XXfallback initiator takes over.
    pub fn read_server_hello(mut self, msg: &[u8]) -> Result<IkServerHello, NoiseError> {
        if !self.sent_hello {
            return Err(NoiseError::OutOfOrder {
                call: "read_server_hello",
                state: "has not sent its ClientHello yet",
            });
        }
        let hello = required(decode(msg, "ServerHello")?.server_hello, "HandshakeMessage", "server_hello")?;
        if hello.r#static.is_some() {
            return Ok(IkServerHello::Fallback(Initiator::fallback(self.s, self.e, self.flavour, &self.prologue)));
        }
        let re = exact(&required(hello.ephemeral, "ServerHello", "ephemeral")?, "ServerHello ephemeral")?;
        let enc = enc_payload(required(hello.payload, "ServerHello", "payload")?, "ServerHello payload")?;
        self.sym.mix_hash(&re);
        mix_dh(&mut self.sym, &self.e.private, &re, "server ephemeral")?;
        mix_dh(&mut self.sym, self.s.private(), &re, "server ephemeral")?;
        let payload = self.sym.decrypt_and_hash(&enc, HandshakeStage::ServerHelloPayload)?;
        Ok(IkServerHello::Accepted { transport: self.sym.split(Role::Initiator)?, payload })
    }
}

// ---------------------------------------------------------------------------------------------
// Responder

/// What the server does after the ClientHello.
#[derive(Debug)]
pub enum ServerStart {
    /// An XX ClientHello, or an IK one whose `static` did not open under the server's key
    /// (XXfallback, see [`Responder::pattern`]): send [`Responder::server_hello`], then read the
    /// ClientFinish.
    Full(Responder),
    /// IK accepted: send `server_hello`; the client's key, payload and the transport are known.
    Resumed(Resumed),
}

/// An accepted IK handshake.
#[derive(Debug)]
pub struct Resumed {
    /// The unframed `HandshakeMessage{serverHello{ephemeral, payload}}` to send.
    pub server_hello: Vec<u8>,
    /// The client's authenticated static key, its `ClientPayload` and the transport.
    pub finished: ClientFinished,
}

/// Reads a ClientHello of any pattern as the server with prologue [`WA_CONN_HEADER`], sending
/// `cert_chain` as the ServerHello payload: XX as usual; IK accepted when the client's `static`
/// opens under `static_key`, answered with XXfallback when it does not. A malformed hello, or an
/// IK payload that fails authentication once the `static` opened, is an error.
pub fn accept_client_hello(
    static_key: StaticKeypair,
    cert_chain: impl Into<Bytes>,
    flavour: Flavour,
    msg: &[u8],
) -> Result<ServerStart, NoiseError> {
    accept_client_hello_with_prologue(static_key, cert_chain, flavour, &WA_CONN_HEADER, msg)
}

/// [`accept_client_hello`] with another prologue.
pub fn accept_client_hello_with_prologue(
    static_key: StaticKeypair,
    cert_chain: impl Into<Bytes>,
    flavour: Flavour,
    prologue: &[u8],
    msg: &[u8],
) -> Result<ServerStart, NoiseError> {
    let hello = required(decode(msg, "ClientHello")?.client_hello, "HandshakeMessage", "client_hello")?;
    let cert_chain = cert_chain.into();
    let Some(enc_s) = hello.r#static else {
        let mut responder = Responder::with_prologue(static_key, cert_chain, flavour, prologue)?;
        responder.read_client_hello(msg)?;
        return Ok(ServerStart::Full(responder));
    };
    let re = exact(&required(hello.ephemeral, "ClientHello", "ephemeral")?, "ClientHello ephemeral")?;
    let enc_s = enc_static(enc_s, "ClientHello static")?;
    let enc_p = enc_payload(required(hello.payload, "ClientHello", "payload")?, "ClientHello payload")?;

    let mut sym = new_state(NOISE_IK_PROTOCOL_NAME, flavour, prologue);
    sym.mix_hash(&static_key.public());
    sym.mix_hash(&re);
    mix_dh(&mut sym, static_key.private(), &re, "client ephemeral")?;
    let rs = match sym.decrypt_and_hash(&enc_s, HandshakeStage::ClientHelloStatic) {
        Ok(rs) => exact(&rs, "ClientHello static")?,
        // The client encrypted to another key: tell it ours (the XX ServerHello) instead.
        Err(NoiseError::Decrypt { .. }) => {
            return Ok(ServerStart::Full(Responder::fallback(static_key, cert_chain, flavour, prologue, re)?));
        }
        Err(e) => return Err(e),
    };
    mix_dh(&mut sym, static_key.private(), &rs, "client static")?;
    let client_payload = Zeroizing::new(sym.decrypt_and_hash(&enc_p, HandshakeStage::ClientHelloPayload)?);

    let e = Ephemeral::generate()?;
    sym.mix_hash(&e.public);
    mix_dh(&mut sym, &e.private, &re, "client ephemeral")?;
    mix_dh(&mut sym, &e.private, &rs, "client static")?;
    let enc_chain = sym.encrypt_and_hash(&cert_chain)?;
    let hello = ServerHello { ephemeral: Some(e.public.to_vec()), r#static: None, payload: Some(enc_chain) };
    let server_hello = HandshakeMessage { server_hello: Some(hello), ..Default::default() }.encode_to_vec();
    let transport = sym.split(Role::Responder)?;
    Ok(ServerStart::Resumed(Resumed {
        server_hello,
        finished: ClientFinished { client_static: rs, client_payload, transport },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::HandshakePattern;
    use bytes::BytesMut;

    fn keys() -> (StaticKeypair, StaticKeypair) {
        (StaticKeypair::generate().unwrap(), StaticKeypair::generate().unwrap())
    }

    fn talk(client: &mut Transport, server: &mut Transport) {
        let mut buf = BytesMut::from(&b"ping"[..]);
        client.seal(&mut buf).unwrap();
        assert_eq!(server.open(&mut buf).unwrap(), b"ping");
        let mut buf = BytesMut::from(&b"pong"[..]);
        server.seal(&mut buf).unwrap();
        assert_eq!(client.open(&mut buf).unwrap(), b"pong");
    }

    #[test]
    fn ik_accepted_in_one_round_trip() {
        let (cs, ss) = keys();
        let mut i = IkInitiator::new(cs.clone(), ss.public(), Flavour::WhatsApp).unwrap();
        let hello = i.client_hello(b"login").unwrap();
        let decoded = HandshakeMessage::decode(&hello[..]).unwrap().client_hello.unwrap();
        assert_eq!(decoded.ephemeral.unwrap().len(), 32);
        assert_eq!(decoded.r#static.unwrap().len(), 48);
        assert_eq!(decoded.payload.unwrap().len(), 5 + 16);
        let ServerStart::Resumed(r) = accept_client_hello(ss, b"chain".to_vec(), Flavour::WhatsApp, &hello).unwrap()
        else {
            panic!("IK with the right key is accepted")
        };
        assert_eq!(r.finished.client_static, cs.public());
        assert_eq!(&r.finished.client_payload[..], b"login");
        let sh = HandshakeMessage::decode(&r.server_hello[..]).unwrap().server_hello.unwrap();
        assert!(sh.r#static.is_none());
        let IkServerHello::Accepted { mut transport, payload } = i.read_server_hello(&r.server_hello).unwrap() else {
            panic!("accepted")
        };
        assert_eq!(payload, b"chain");
        let mut server = r.finished.transport;
        assert_eq!(transport.handshake_hash(), server.handshake_hash());
        talk(&mut transport, &mut server);
    }

    #[test]
    fn a_stale_server_key_falls_back_to_xx_with_the_same_ephemeral() {
        let (cs, ss) = keys();
        let stale = StaticKeypair::generate().unwrap();
        let mut i = IkInitiator::new(cs.clone(), stale.public(), Flavour::WhatsApp).unwrap();
        let hello = i.client_hello(b"login").unwrap();
        let sent_e = HandshakeMessage::decode(&hello[..]).unwrap().client_hello.unwrap().ephemeral.unwrap();
        let ServerStart::Full(mut r) =
            accept_client_hello(ss.clone(), b"chain".to_vec(), Flavour::WhatsApp, &hello).unwrap()
        else {
            panic!("a static for another key is not accepted")
        };
        assert_eq!(r.pattern(), HandshakePattern::XxFallback);
        let sh = r.server_hello().unwrap();
        let IkServerHello::Fallback(mut fb) = i.read_server_hello(&sh).unwrap() else { panic!("fallback") };
        assert_eq!(fb.pattern(), HandshakePattern::XxFallback);
        assert_eq!(fb.handshake_hash(), {
            let mut sym = new_state(super::super::NOISE_XX_FALLBACK_PROTOCOL_NAME, Flavour::WhatsApp, &WA_CONN_HEADER);
            sym.mix_hash(&sent_e);
            sym.handshake_hash()
        });
        let info = fb.read_server_hello(&sh).unwrap();
        assert_eq!(info.server_static, ss.public());
        assert_eq!(info.cert_chain, b"chain");
        let (finish, mut client) = fb.client_finish(b"login").unwrap();
        let done = r.read_client_finish(&finish).unwrap();
        assert_eq!(done.client_static, cs.public());
        assert_eq!(&done.client_payload[..], b"login");
        let mut server = done.transport;
        assert_eq!(client.handshake_hash(), server.handshake_hash());
        talk(&mut client, &mut server);
    }

    #[test]
    fn an_xx_hello_still_gets_xx() {
        let (cs, ss) = keys();
        let mut i = Initiator::new(cs, Flavour::WhatsApp).unwrap();
        let ServerStart::Full(r) =
            accept_client_hello(ss, Vec::new(), Flavour::WhatsApp, &i.client_hello().unwrap()).unwrap()
        else {
            panic!("XX")
        };
        assert_eq!(r.pattern(), HandshakePattern::Xx);
        assert_eq!(r.handshake_hash(), i.handshake_hash());
    }

    #[test]
    fn hostile_ik_hellos_are_typed_errors() {
        let ss = StaticKeypair::generate().unwrap();
        let accept = |hello: ClientHello| {
            let msg = HandshakeMessage { client_hello: Some(hello), ..Default::default() }.encode_to_vec();
            accept_client_hello(ss.clone(), Vec::new(), Flavour::WhatsApp, &msg)
        };
        let e = Some(StaticKeypair::generate().unwrap().public().to_vec());
        let cases = [
            (
                ClientHello { ephemeral: e.clone(), r#static: Some(vec![1; 47]), payload: Some(vec![0; 16]) },
                "short static",
            ),
            (ClientHello { ephemeral: e.clone(), r#static: Some(vec![1; 48]), payload: None }, "no payload"),
            (
                ClientHello { ephemeral: e.clone(), r#static: Some(vec![1; 48]), payload: Some(vec![0; 15]) },
                "short payload",
            ),
            (ClientHello { ephemeral: None, r#static: Some(vec![1; 48]), payload: Some(vec![0; 16]) }, "no ephemeral"),
            (
                ClientHello { ephemeral: Some(vec![0; 32]), r#static: Some(vec![1; 48]), payload: Some(vec![0; 16]) },
                "zero e",
            ),
            (
                ClientHello { ephemeral: e.clone(), r#static: None, payload: Some(vec![0; 16]) },
                "payload without static",
            ),
        ];
        for (hello, why) in cases {
            assert!(accept(hello).is_err(), "{why}");
        }
        // Truncated protobuf.
        let mut i = IkInitiator::new(StaticKeypair::generate().unwrap(), ss.public(), Flavour::WhatsApp).unwrap();
        let hello = i.client_hello(b"login").unwrap();
        for cut in [1, 10, 40, hello.len() - 1] {
            assert!(accept_client_hello(ss.clone(), Vec::new(), Flavour::WhatsApp, &hello[..cut]).is_err(), "{cut}");
        }
        // A 48-byte garbage static is a key we cannot open: the XX answer, never a panic.
        let garbage = ClientHello { ephemeral: e, r#static: Some(vec![1; 48]), payload: Some(vec![0; 16]) };
        assert!(matches!(accept(garbage), Ok(ServerStart::Full(r)) if r.pattern() == HandshakePattern::XxFallback));
        // A static that opens, with a tampered payload: refused.
        let mut tampered = HandshakeMessage::decode(&hello[..]).unwrap();
        tampered.client_hello.as_mut().unwrap().payload.as_mut().unwrap()[0] ^= 1;
        assert!(matches!(
            accept_client_hello(ss.clone(), Vec::new(), Flavour::WhatsApp, &tampered.encode_to_vec()),
            Err(NoiseError::Decrypt { stage: HandshakeStage::ClientHelloPayload })
        ));
    }

    #[test]
    fn the_ik_client_refuses_bad_answers() {
        let (cs, ss) = keys();
        let new = || {
            let mut i = IkInitiator::new(cs.clone(), ss.public(), Flavour::WhatsApp).unwrap();
            i.client_hello(b"x").unwrap();
            i
        };
        let answer =
            |hello: ServerHello| HandshakeMessage { server_hello: Some(hello), ..Default::default() }.encode_to_vec();
        let e = Some(StaticKeypair::generate().unwrap().public().to_vec());
        assert!(matches!(
            new().read_server_hello(&answer(ServerHello {
                ephemeral: e.clone(),
                r#static: None,
                payload: Some(vec![0; 32])
            })),
            Err(NoiseError::Decrypt { stage: HandshakeStage::ServerHelloPayload })
        ));
        assert!(new().read_server_hello(&answer(ServerHello { ephemeral: e, r#static: None, payload: None })).is_err());
        assert!(new().read_server_hello(b"\xff").is_err());
        let mut unsent = IkInitiator::new(cs.clone(), ss.public(), Flavour::WhatsApp).unwrap();
        assert!(unsent.client_hello(b"x").is_ok());
        assert!(matches!(unsent.client_hello(b"x"), Err(NoiseError::OutOfOrder { .. })));
    }
}
