//! The chat connection, two ways with one API: through the proxy's edge (plaintext frames inside
//! TCP or TLS; the proxy does the Noise work with the device's key), or directly to chatd with
//! this device's own Noise XX initiator (WhatsApp-side users, and Partner clients that need no
//! proxy).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wire::cert::CertVerifier;
use wire::decode::Decoder;
use wire::frame::FrameCodec;
use wire::noise::{Flavour, Initiator, StaticKeypair, Transport};
use wire::proto::ClientPayload;
use wire::{Jid, Node};

use edge::client::{ClientError, EdgeClient};
use session::cert_cache::CertCache;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub enum Route {
    /// The proxy's edge. `tls` names the server and trusted roots when the edge is TLS.
    Edge { addr: SocketAddr, tls: Option<TlsSettings> },
    /// chatd itself; `root` is its certificate-chain root key.
    Direct { addr: SocketAddr, root: [u8; 32] },
}

#[derive(Clone)]
pub struct TlsSettings {
    pub server_name: String,
    pub roots: Arc<rustls::RootCertStore>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Why the connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("Noise handshake with chatd failed: {0}")]
    Handshake(String),
    #[error("connection: {0}")]
    Io(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("nothing arrived within {0:?}")]
    Timeout(Duration),
}

impl From<ClientError> for ConnError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Closed => ConnError::Closed,
            ClientError::Timeout(d) => ConnError::Timeout(d),
            e => ConnError::Io(e.to_string()),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Inner {
    Edge(EdgeClient<Box<dyn Io>>),
    Direct { framed: Framed<TcpStream, FrameCodec>, transport: Transport, decoder: Decoder<'static> },
}

/// A logged-in (or logging-in) chat connection.
pub struct Connection {
    inner: Inner,
}

/// How connections are dialled: the local address to bind (the load harness spreads sources over
/// 127.0.0.0/8), and the cache of verified chatd certificate chains, shared by the connections
/// of one dialer (chatd sends the same chain every time; checking it is two XEdDSA verifications).
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    pub from: Option<IpAddr>,
    pub certs: CertCache,
}

impl Dialer {
    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnError> {
        let connect = |source| ConnError::Connect { addr, source };
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
            .map_err(connect)?;
        if let Some(ip) = self.from {
            socket.bind(SocketAddr::new(ip, 0)).map_err(connect)?;
        }
        let stream = socket.connect(addr).await.map_err(connect)?;
        stream.set_nodelay(true).map_err(|e| ConnError::Io(e.to_string()))?;
        Ok(stream)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Connection {
    /// Connects through `dialer` and sends the login; the caller reads chatd's answer
    /// (`<success>` or `<failure>`) with [`Connection::recv`]. `jid` is the interop account (edge
    /// logins only).
    pub async fn open(
        dialer: &Dialer,
        route: &Route,
        jid: &Jid,
        noise_private: &[u8; 32],
        payload: &ClientPayload,
        wait: Duration,
    ) -> Result<Connection, ConnError> {
        let timeout = |e| ConnError::Timeout(e);
        match route {
            Route::Edge { addr, tls } => {
                let stream = dialer.tcp(*addr).await?;
                let stream: Box<dyn Io> = match tls {
                    None => Box::new(stream),
                    Some(t) => {
                        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                            rustls::crypto::aws_lc_rs::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| ConnError::Tls(e.to_string()))?
                        .with_root_certificates(t.roots.clone())
                        .with_no_client_auth();
                        let name = rustls_pki_types::ServerName::try_from(t.server_name.clone())
                            .map_err(|e| ConnError::Tls(e.to_string()))?;
                        let tls = tokio::time::timeout(
                            wait,
                            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream),
                        )
                        .await
                        .map_err(|_| timeout(wait))?
                        .map_err(|e| ConnError::Tls(e.to_string()))?;
                        Box::new(tls)
                    }
                };
                let mut client = EdgeClient::new(stream);
                client.send_payload(&edge::login::build(jid, noise_private, &payload.encode_to_vec())).await?;
                Ok(Connection { inner: Inner::Edge(client) })
            }
            Route::Direct { addr, root } => {
                let mut stream = dialer.tcp(*addr).await?;
                stream.write_all(&wire::noise::WA_CONN_HEADER).await.map_err(|e| ConnError::Io(e.to_string()))?;
                let mut framed = Framed::new(stream, FrameCodec::new());
                let hs = |e: wire::noise::NoiseError| ConnError::Handshake(e.to_string());
                let keypair = StaticKeypair::from_private(noise_private).map_err(hs)?;
                let mut initiator = Initiator::new(keypair, Flavour::WhatsApp).map_err(hs)?;
                framed.send(initiator.client_hello().map_err(hs)?).await.map_err(|e| ConnError::Io(e.to_string()))?;
                let hello = tokio::time::timeout(wait, framed.next())
                    .await
                    .map_err(|_| timeout(wait))?
                    .ok_or(ConnError::Closed)?
                    .map_err(|e| ConnError::Io(e.to_string()))?;
                let info = initiator.read_server_hello(&hello).map_err(hs)?;
                dialer
                    .certs
                    .verify(&CertVerifier::new(*root), &info.cert_chain, &info.server_static, now_secs())
                    .map_err(|e| ConnError::Handshake(format!("chatd's certificate chain: {e}")))?;
                let (finish, transport) = initiator.client_finish(&payload.encode_to_vec()).map_err(hs)?;
                framed.send(finish).await.map_err(|e| ConnError::Io(e.to_string()))?;
                Ok(Connection { inner: Inner::Direct { framed, transport, decoder: Decoder::default() } })
            }
        }
    }

    pub async fn send(&mut self, node: &Node) -> Result<(), ConnError> {
        match &mut self.inner {
            Inner::Edge(c) => Ok(c.send(node).await?),
            Inner::Direct { framed, transport, .. } => {
                let payload = wire::encode::encode(node).map_err(|e| ConnError::Io(e.to_string()))?;
                let mut buf = BytesMut::from(&payload[..]);
                transport.seal(&mut buf).map_err(|e| ConnError::Io(e.to_string()))?;
                framed.send(buf).await.map_err(|e| ConnError::Io(e.to_string()))
            }
        }
    }

    /// The next stanza within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Result<Node, ConnError> {
        match &mut self.inner {
            Inner::Edge(c) => Ok(c.recv(wait).await?),
            Inner::Direct { framed, transport, decoder } => {
                let mut frame = tokio::time::timeout(wait, framed.next())
                    .await
                    .map_err(|_| ConnError::Timeout(wait))?
                    .ok_or(ConnError::Closed)?
                    .map_err(|e| ConnError::Io(e.to_string()))?;
                let plain = transport.open(&mut frame).map_err(|e| ConnError::Io(e.to_string()))?;
                Ok(decoder.decode_payload(plain).map_err(|e| ConnError::Io(e.to_string()))?.to_owned())
            }
        }
    }

    /// Closes the connection (a FIN; the proxy then closes chatd's side).
    pub async fn close(mut self) {
        let _ = match &mut self.inner {
            Inner::Edge(c) => c.stream_mut().shutdown().await,
            Inner::Direct { framed, .. } => framed.get_mut().shutdown().await,
        };
    }
}
