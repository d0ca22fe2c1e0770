//! A client of plaintext frames: what a Partner client does on the proxy's edge (the proxy does
//! the Noise work upstream), for the client SDK, the load harness, the demo and tests. The client
//! SDK also carries its sealed frames to chatd over it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use wire::Node;
use wire::decode::Decoder;
use wire::frame::{FrameError, MAX_FRAME_LEN};

use crate::frame::{read_frame, write_frame};
use crate::net::{DialOptions, dial};

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("frame")]
    Frame(#[source] FrameError),
    #[error("stanza")]
    Decode(#[from] wire::decode::DecodeError),
    #[error("encode")]
    Encode(#[from] wire::encode::EncodeError),
    #[error("the proxy closed the connection")]
    Closed,
    #[error("nothing arrived within {0:?}")]
    Timeout(Duration),
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => ClientError::Io(e),
            // The stream ended, inside a frame or not.
            FrameError::Truncated { .. } => ClientError::Closed,
            e => ClientError::Frame(e),
        }
    }
}

/// One client connection, over any byte stream (TCP, TLS, WebSocket via the edge's `WsStream`).
pub struct EdgeClient<S> {
    stream: S,
    buf: BytesMut,
    decoder: Decoder<'static>,
}

impl EdgeClient<tokio::net::TcpStream> {
    /// Connects over plain TCP, optionally from a given local address.
    pub async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> Result<Self, ClientError> {
        Ok(EdgeClient::new(dial(addr, DialOptions { from, keepalive: false }).await?))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> EdgeClient<S> {
    pub fn new(stream: S) -> Self {
        Self::with_buffered(stream, BytesMut::new())
    }

    /// A client whose first received bytes are already in `buf` (read during a handshake).
    pub fn with_buffered(stream: S, buf: BytesMut) -> Self {
        EdgeClient { stream, buf, decoder: Decoder::default() }
    }

    /// Sends a raw frame body (a stanza payload, or the login frame from
    /// [`wire::login::build`]).
    pub async fn send_payload(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        Ok(write_frame(&mut self.stream, payload).await?)
    }

    /// Sends a stanza.
    pub async fn send(&mut self, node: &Node) -> Result<(), ClientError> {
        self.send_payload(&wire::encode::encode(node)?).await
    }

    /// The next frame body, raw.
    pub async fn recv_payload(&mut self, wait: Duration) -> Result<BytesMut, ClientError> {
        tokio::time::timeout(wait, read_frame(&mut self.stream, &mut self.buf, MAX_FRAME_LEN))
            .await
            .map_err(|_| ClientError::Timeout(wait))??
            .ok_or(ClientError::Closed)
    }

    /// The next stanza.
    pub async fn recv(&mut self, wait: Duration) -> Result<Node, ClientError> {
        let payload = self.recv_payload(wait).await?;
        Ok(self.decoder.decode_payload(&payload)?.to_owned())
    }

    /// Receives until a stanza with tag `tag`; earlier ones are returned in order.
    pub async fn recv_tag(&mut self, tag: &str, wait: Duration) -> Result<(Node, Vec<Node>), ClientError> {
        let mut skipped = Vec::new();
        loop {
            let node = self.recv(wait).await?;
            if node.tag == tag {
                return Ok((node, skipped));
            }
            skipped.push(node);
        }
    }

    /// The underlying stream (to close it, or half-close it, in tests).
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stanzas_both_ways_then_timeout_then_closed() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut a, mut b) = (EdgeClient::new(a), EdgeClient::new(b));
        a.send(&wire::keepalive::ping("1")).await.unwrap();
        a.send(&Node::new("presence")).await.unwrap();
        let (presence, earlier) = b.recv_tag("presence", Duration::from_secs(1)).await.unwrap();
        assert_eq!((presence.tag.as_str(), earlier.len(), earlier[0].tag.as_str()), ("presence", 1, "iq"));
        assert!(matches!(b.recv(Duration::from_secs(2)).await, Err(ClientError::Timeout(_))));
        drop(a);
        assert!(matches!(b.recv(Duration::from_secs(2)).await, Err(ClientError::Closed)));
    }
}
