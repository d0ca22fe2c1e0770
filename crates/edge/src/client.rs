//! A minimal client of the edge protocol: what a Partner client does on the wire, for the proxy's
//! demo and tests (the full client SDK builds on the same frames). Frames carry plaintext stanza
//! payloads; the proxy does the Noise work upstream.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::Node;
use wire::decode::Decoder;
use wire::frame::FrameCodec;

/// A keepalive ping as clients send it: `<iq xmlns="w:p" type="get" to="s.whatsapp.net">`.
pub fn keepalive(id: &str) -> Node {
    Node::new("iq")
        .attr("id", id)
        .attr("xmlns", "w:p")
        .attr("type", "get")
        .attr("to", wire::Jid::server(wire::Server::Whatsapp))
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] wire::frame::FrameError),
    #[error("stanza: {0}")]
    Decode(#[from] wire::decode::DecodeError),
    #[error("encode: {0}")]
    Encode(#[from] wire::encode::EncodeError),
    #[error("the proxy closed the connection")]
    Closed,
    #[error("nothing arrived within {0:?}")]
    Timeout(Duration),
}

/// One client connection to the edge, over any byte stream (TCP, TLS, WebSocket via
/// [`crate::ws::WsStream`]).
pub struct EdgeClient<S> {
    stream: S,
    buf: BytesMut,
    codec: FrameCodec,
    decoder: Decoder<'static>,
}

impl EdgeClient<tokio::net::TcpStream> {
    /// Connects over plain TCP, optionally from a given local address.
    pub async fn connect(addr: SocketAddr, from: Option<std::net::IpAddr>) -> Result<Self, ClientError> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(EdgeClient::new(stream))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> EdgeClient<S> {
    pub fn new(stream: S) -> Self {
        EdgeClient { stream, buf: BytesMut::new(), codec: FrameCodec::new(), decoder: Decoder::default() }
    }

    /// Sends a raw frame body (a stanza payload, or the login frame from [`crate::login::build`]).
    pub async fn send_payload(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(payload.len() + 3);
        wire::frame::encode_frame(payload, &mut out)?;
        self.stream.write_all(&out).await?;
        // Buffered transports (TLS, WebSocket) send only on flush.
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends a stanza.
    pub async fn send(&mut self, node: &Node) -> Result<(), ClientError> {
        self.send_payload(&wire::encode::encode(node)?).await
    }

    /// The next frame body, raw.
    pub async fn recv_payload(&mut self, wait: Duration) -> Result<BytesMut, ClientError> {
        use tokio_util::codec::Decoder as _;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(frame);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout(wait))??;
            if read == 0 {
                return Err(ClientError::Closed);
            }
        }
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
