//! The chat connection, two ways with one API: through the proxy's edge (plaintext frames inside
//! TCP or TLS; the proxy does the Noise work with the device's key), or directly to chatd with
//! this device's own Noise XX initiator (WhatsApp-side users, and Partner clients that need no
//! proxy).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use error_report::Report;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wire::cert::CertVerifier;
use wire::cert_cache::CertCache;
use wire::connect::{ClientConnect, ConnectConfig, ConnectError};
use wire::decode::Decoder;
use wire::frame::MAX_FRAME_LEN;
use wire::noise::{NoiseError, StaticKeypair, Transport};
use wire::proto::ClientPayload;
use wire::{Jid, Node};
use wire_io::clock::unix_now;
use wire_io::handshake::HandshakeError;
use wire_io::net::DialOptions;
use wire_io::{ClientError, EdgeClient};

/// How long [`Connection::close`] waits for the server's own close after sending its FIN.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

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
#[non_exhaustive]
pub enum ConnError {
    #[error("cannot connect to {addr}")]
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

impl From<HandshakeError> for ConnError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Connect(ConnectError::Noise(NoiseError::Cert(e))) => {
                ConnError::Handshake(format!("chatd's certificate chain: {}", Report(&e)))
            }
            HandshakeError::Connect(ConnectError::Noise(e)) => ConnError::Handshake(Report(&e).to_string()),
            HandshakeError::Closed => ConnError::Closed,
            HandshakeError::Io(e) => ConnError::Io(Report(&e).to_string()),
            e => ConnError::Io(Report(&e).to_string()),
        }
    }
}

impl From<ClientError> for ConnError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Closed => ConnError::Closed,
            ClientError::Timeout(d) => ConnError::Timeout(d),
            e => ConnError::Io(Report(&e).to_string()),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Inner {
    Edge(EdgeClient<Box<dyn Io>>),
    // Boxed: the cipher states and a second decoder would double every edge connection's size.
    Direct(Box<Direct>),
}

struct Direct {
    client: EdgeClient<TcpStream>,
    transport: Transport,
    decoder: Decoder<'static>,
}

/// A logged-in (or logging-in) chat connection.
pub struct Connection {
    inner: Inner,
}

/// How connections are dialled: the local address to bind (the load harness spreads sources over
/// 127.0.0.0/8), and the cache of verified chatd certificate chains, shared by the connections
/// of one dialer (chatd sends the same chain every time; checking it is two XEdDSA verifications).
/// On [`Route::Direct`] the cache also holds chatd's static key: the dialer's later connections
/// resume with Noise IK (one round trip less), falling back to XX as `wire::connect` describes.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    pub from: Option<IpAddr>,
    pub certs: CertCache,
}

impl Dialer {
    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnError> {
        wire_io::net::dial(addr, DialOptions { from: self.from, keepalive: false })
            .await
            .map_err(|source| ConnError::Connect { addr, source })
    }
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
                        .map_err(|e| ConnError::Tls(Report(&e).to_string()))?
                        .with_root_certificates(t.roots.clone())
                        .with_no_client_auth();
                        let name = rustls_pki_types::ServerName::try_from(t.server_name.clone())
                            .map_err(|e| ConnError::Tls(Report(&e).to_string()))?;
                        let tls = tokio::time::timeout(
                            wait,
                            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream),
                        )
                        .await
                        .map_err(|_| timeout(wait))?
                        .map_err(|e| ConnError::Tls(Report(&e).to_string()))?;
                        Box::new(tls)
                    }
                };
                let mut client = EdgeClient::new(stream);
                client.send_payload(&wire::login::build(jid, noise_private, &payload.encode_to_vec())).await?;
                Ok(Connection { inner: Inner::Edge(client) })
            }
            Route::Direct { addr, root } => {
                let mut stream = dialer.tcp(*addr).await?;
                let hs = |e: NoiseError| ConnError::Handshake(Report(&e).to_string());
                let keypair = StaticKeypair::from_private(noise_private).map_err(hs)?;
                let config = ConnectConfig {
                    verifier: CertVerifier::new(*root),
                    cert_cache: dialer.certs.clone(),
                    max_frame_len: MAX_FRAME_LEN,
                };
                // IK once `dialer.certs` holds chatd's chain from an earlier login (XX otherwise, and
                // after a failed IK answer; `certs.suspend_resumption()` forces XX by hand).
                let start = ClientConnect::resume(keypair, &payload.encode_to_vec(), &config, b"", unix_now())
                    .map_err(|e| ConnError::from(HandshakeError::Connect(e)))?;
                let done = tokio::time::timeout(wait, wire_io::handshake::connect(&mut stream, start))
                    .await
                    .map_err(|_| timeout(wait))??;
                let client = EdgeClient::with_buffered(stream, done.leftover);
                let direct = Direct { client, transport: done.transport, decoder: Decoder::default() };
                Ok(Connection { inner: Inner::Direct(Box::new(direct)) })
            }
        }
    }

    pub async fn send(&mut self, node: &Node) -> Result<(), ConnError> {
        match &mut self.inner {
            Inner::Edge(c) => Ok(c.send(node).await?),
            Inner::Direct(d) => {
                let Direct { client, transport, .. } = &mut **d;
                let payload = wire::encode::encode(node).map_err(|e| ConnError::Io(Report(&e).to_string()))?;
                let mut buf = BytesMut::from(&payload[..]);
                transport.seal(&mut buf).map_err(|e| ConnError::Io(Report(&e).to_string()))?;
                Ok(client.send_payload(&buf).await?)
            }
        }
    }

    /// The next stanza within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Result<Node, ConnError> {
        match &mut self.inner {
            Inner::Edge(c) => Ok(c.recv(wait).await?),
            Inner::Direct(d) => {
                let Direct { client, transport, decoder } = &mut **d;
                let mut frame = client.recv_payload(wait).await?;
                let plain = transport.open(&mut frame).map_err(|e| ConnError::Io(Report(&e).to_string()))?;
                Ok(decoder.decode_payload(plain).map_err(|e| ConnError::Io(Report(&e).to_string()))?.to_owned())
            }
        }
    }

    /// Closes the connection: a FIN (the proxy then closes chatd's side), then the server's own
    /// close awaited (at most [`CLOSE_LINGER`]), so that nothing unread turns the close into a reset.
    pub async fn close(mut self) {
        match &mut self.inner {
            Inner::Edge(c) => wire_io::close::close(c.stream_mut(), CLOSE_LINGER).await,
            Inner::Direct(d) => wire_io::close::close(d.client.stream_mut(), CLOSE_LINGER).await,
        }
    }
}
