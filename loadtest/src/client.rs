//! Load clients on three paths to the same simulator: through the proxy's edge (plaintext frames,
//! the proxy does Noise upstream), directly to chatd with Noise (what the proxy adds), and with
//! Noise through HAProxy (the plain relay).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use edge::client::EdgeClient;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;
use wire::cert::CertVerifier;
use wire::decode::Decoder;
use wire::frame::FrameCodec;
use wire::noise::{Flavour, Initiator, StaticKeypair, Transport, WA_CONN_HEADER};
use wire::proto::{AppVersion, ClientPayload};
use wire::{Jid, Node};

use crate::error::{Error, Result};

/// Time a login may take end to end (connect, handshake, `<success>`, offline marker).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Which way a client reaches chatd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Proxy,
    Direct,
    Haproxy,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Proxy => "proxy",
            PathKind::Direct => "direct",
            PathKind::Haproxy => "haproxy",
        }
    }
}

/// Where clients of one path connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: PathKind,
    pub addr: SocketAddr,
    /// chatd's root key (Noise paths).
    pub root: [u8; 32],
    /// The certificate chain is verified on the first handshake of a path only, as the proxy's
    /// certificate cache does, so the baselines do not pay XEdDSA per login that the proxy skips.
    verified: Arc<AtomicBool>,
}

impl Target {
    pub fn new(kind: PathKind, addr: SocketAddr, root: [u8; 32]) -> Target {
        Target { kind, addr, root, verified: Arc::new(AtomicBool::new(false)) }
    }
}

/// An enlisted Partner user and what it logs in with. Debug never prints the key or token.
pub struct User {
    pub name: String,
    pub noise: [u8; 32],
    pub jid: Jid,
    pub account_id: u64,
    pub token: String,
    /// The loopback source address its sockets bind to.
    pub ip: IpAddr,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("jid", &self.jid.to_string()).field("ip", &self.ip).finish_non_exhaustive()
    }
}

impl User {
    fn payload(&self) -> Vec<u8> {
        ClientPayload::interop_login(self.account_id, self.token.as_bytes().to_vec(), AppVersion::new(2, 3000, 1))
            .encode_to_vec()
    }
}

/// The source address of the `i`th client: spread over 127.1.0.0/16 so no single address runs
/// out of ephemeral ports (loopback answers for all of 127.0.0.0/8 without configuration).
pub fn client_ip(i: usize) -> IpAddr {
    let x = (i / 254) % 254 + 1;
    let y = i % 254 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 1, x as u8, y as u8))
}

/// A Noise client straight to chatd (or through a plain relay).
pub struct NoiseConn {
    framed: Framed<TcpStream, FrameCodec>,
    transport: Transport,
    decoder: Decoder<'static>,
}

/// One logged-in client.
pub enum Conn {
    Edge(Box<EdgeClient<TcpStream>>),
    Noise(Box<NoiseConn>),
}

async fn dial(addr: SocketAddr, from: IpAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4().map_err(|e| Error::io("socket", e))?;
    socket.bind(SocketAddr::new(from, 0)).map_err(|e| Error::io(format!("bind {from}"), e))?;
    let stream = socket.connect(addr).await.map_err(|e| Error::io(format!("connect {addr}"), e))?;
    stream.set_nodelay(true).map_err(|e| Error::io("nodelay", e))?;
    Ok(stream)
}

fn refused(node: &Node) -> Error {
    Error::Refused {
        tag: node.tag.clone(),
        reason: node.get_str("reason").unwrap_or("none").to_owned(),
        retry_after: node.get_str("retry_after").and_then(|s| s.parse().ok()),
    }
}

impl Conn {
    /// Connects on `target` as `user` and waits for `<success>` and the offline marker.
    pub async fn login(target: &Target, user: &User) -> Result<Conn> {
        tokio::time::timeout(LOGIN_TIMEOUT, Conn::login_inner(target, user))
            .await
            .map_err(|_| Error::Timeout("login", LOGIN_TIMEOUT))?
    }

    async fn login_inner(target: &Target, user: &User) -> Result<Conn> {
        let mut conn = match target.kind {
            PathKind::Proxy => {
                let mut c = EdgeClient::new(dial(target.addr, user.ip).await?);
                c.send_payload(&edge::login::build(&user.jid, &user.noise, &user.payload())).await?;
                Conn::Edge(Box::new(c))
            }
            PathKind::Direct | PathKind::Haproxy => Conn::Noise(Box::new(NoiseConn::handshake(target, user).await?)),
        };
        let first = conn.recv(LOGIN_TIMEOUT).await?;
        if first.tag != "success" {
            return Err(refused(&first));
        }
        loop {
            let n = conn.recv(LOGIN_TIMEOUT).await?;
            if n.tag == "ib" {
                return Ok(conn);
            }
        }
    }

    pub async fn send(&mut self, node: &Node) -> Result<()> {
        match self {
            Conn::Edge(c) => Ok(c.send(node).await?),
            Conn::Noise(c) => c.send(node).await,
        }
    }

    /// The next stanza. Cancel-safe: bytes already read stay buffered, so it can sit in a
    /// `select!`.
    pub async fn recv(&mut self, wait: Duration) -> Result<Node> {
        match self {
            Conn::Edge(c) => Ok(c.recv(wait).await?),
            Conn::Noise(c) => c.recv(wait).await,
        }
    }

    /// Sends a keepalive ping and waits for its result; other stanzas are skipped.
    pub async fn ping(&mut self, id: &str, wait: Duration) -> Result<()> {
        self.send(&keepalive(id)).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let n = self.recv(left).await?;
            if n.tag == "iq" && n.get_str("id") == Some(id) {
                return Ok(());
            }
        }
    }
}

impl NoiseConn {
    async fn handshake(target: &Target, user: &User) -> Result<NoiseConn> {
        let mut stream = dial(target.addr, user.ip).await?;
        stream.write_all(&WA_CONN_HEADER).await.map_err(|e| Error::io("WA header", e))?;
        let mut framed = Framed::new(stream, FrameCodec::new());
        let mut initiator = Initiator::new(StaticKeypair::from_private(&user.noise)?, Flavour::WhatsApp)?;
        framed.send(initiator.client_hello()?).await?;
        let hello = framed.next().await.ok_or(Error::Closed)??;
        if target.verified.load(Ordering::Relaxed) {
            initiator.read_server_hello(&hello)?;
        } else {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            initiator.read_server_hello_verified(&hello, &CertVerifier::new(target.root), now)?;
            target.verified.store(true, Ordering::Relaxed);
        }
        let (finish, transport) = initiator.client_finish(&user.payload())?;
        framed.send(finish).await?;
        Ok(NoiseConn { framed, transport, decoder: Decoder::default() })
    }

    async fn send(&mut self, node: &Node) -> Result<()> {
        let mut buf = BytesMut::from(&wire::encode::encode(node)?[..]);
        self.transport.seal(&mut buf)?;
        Ok(self.framed.send(buf).await?)
    }

    async fn recv(&mut self, wait: Duration) -> Result<Node> {
        let mut frame = tokio::time::timeout(wait, self.framed.next())
            .await
            .map_err(|_| Error::Timeout("stanza", wait))?
            .ok_or(Error::Closed)??;
        let plain = self.transport.open(&mut frame)?;
        Ok(self.decoder.decode_payload(plain)?.to_owned())
    }
}

/// A keepalive ping as clients send it.
pub fn keepalive(id: &str) -> Node {
    Node::new("iq")
        .attr("id", id)
        .attr("xmlns", "w:p")
        .attr("type", "get")
        .attr("to", Jid::server(wire::Server::Whatsapp))
}
