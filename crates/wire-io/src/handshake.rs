//! Drives [`ClientConnect`] over a byte stream: sends what it hands out, reads into its buffer,
//! and passes it the wall-clock time. Timeouts and cancellation are the caller's (wrap the
//! future).

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use wire::connect::{ClientConnect, ConnectError, Connected};

use crate::clock::unix_now;

/// Why the handshake did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("chat handshake failed")]
    Connect(#[from] ConnectError),
    #[error("i/o during the chat handshake")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection during the handshake")]
    Closed,
}

/// Runs the handshake to its end: returns once the ClientFinish is written (XX, XXfallback) or
/// the ServerHello is read (IK, from [`ClientConnect::resume`]). Nothing is read past what the
/// ServerHello needs, except what arrived with it ([`Connected::leftover`]).
pub async fn connect<S>(stream: &mut S, mut handshake: ClientConnect) -> Result<Connected, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if let Some(bytes) = handshake.transmit() {
            stream.write_all(&bytes).await?;
            stream.flush().await?;
        }
        if handshake.is_finished() {
            return Ok(handshake.finish()?);
        }
        if stream.read_buf(handshake.recv_buf()).await? == 0 {
            return Err(HandshakeError::Closed);
        }
        handshake.handle_recv(unix_now())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use wire::cert::{CertIssuer, ChainParams};
    use wire::connect::ConnectConfig;
    use wire::noise::{Flavour, Responder, StaticKeypair};

    #[tokio::test]
    async fn a_handshake_over_a_pipe_and_a_server_that_hangs_up() {
        let key = StaticKeypair::generate().unwrap();
        let issuer = CertIssuer::generate().unwrap();
        let now = unix_now();
        let chain = issuer.issue(&key.public(), &ChainParams::new(1, 2, now - 60, now + 60)).unwrap();
        let config = ConnectConfig::new(issuer.public_key());

        let (mut client, mut server) = tokio::io::duplex(4096);
        let serve = tokio::spawn(async move {
            let mut header = [0u8; 4];
            server.read_exact(&mut header).await.unwrap();
            let mut buf = BytesMut::new();
            let hello = crate::frame::read_frame(&mut server, &mut buf, 1 << 16).await.unwrap().unwrap();
            let mut r = Responder::new(key, chain, Flavour::WhatsApp).unwrap();
            r.read_client_hello(&hello).unwrap();
            crate::frame::write_frame(&mut server, &r.server_hello().unwrap()).await.unwrap();
            let finish = crate::frame::read_frame(&mut server, &mut buf, 1 << 16).await.unwrap().unwrap();
            r.read_client_finish(&finish).unwrap().client_payload.to_vec()
        });
        let c = ClientConnect::new(StaticKeypair::generate().unwrap(), b"login", &config, b"").unwrap();
        connect(&mut client, c).await.unwrap();
        assert_eq!(serve.await.unwrap(), b"login");

        let (mut client, server) = tokio::io::duplex(4096);
        drop(server);
        let c = ClientConnect::new(StaticKeypair::generate().unwrap(), b"login", &config, b"").unwrap();
        assert!(matches!(connect(&mut client, c).await, Err(HandshakeError::Io(_) | HandshakeError::Closed)));
    }
}
