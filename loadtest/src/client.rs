//! Load clients on three paths to the same simulator: through the proxy's edge (plaintext frames,
//! the proxy does Noise upstream), directly to chatd with Noise (what the proxy adds), and with
//! Noise through HAProxy (the plain relay).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use client::conn::{Connection, Dialer, Route};
use wire::cert_cache::CertCache;
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
    /// The certificate chain is verified on a path's first handshake only, as the proxy's cache
    /// does, so the baselines do not pay XEdDSA per login that the proxy skips.
    certs: CertCache,
}

impl Target {
    pub fn new(kind: PathKind, addr: SocketAddr, root: [u8; 32]) -> Target {
        Target { kind, addr, root, certs: CertCache::new() }
    }

    fn route(&self) -> Route {
        match self.kind {
            PathKind::Proxy => Route::Edge { addr: self.addr, tls: None },
            PathKind::Direct | PathKind::Haproxy => Route::Direct { addr: self.addr, root: self.root },
        }
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
    fn payload(&self) -> ClientPayload {
        ClientPayload::interop_login(self.account_id, self.token.as_bytes().to_vec(), AppVersion::new(2, 3000, 1))
    }
}

/// The source address of the `i`th client: spread over 127.1.0.0/16 so no single address runs
/// out of ephemeral ports (loopback answers for all of 127.0.0.0/8 without configuration).
pub fn client_ip(i: usize) -> IpAddr {
    let x = (i / 254) % 254 + 1;
    let y = i % 254 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 1, x as u8, y as u8))
}

/// One logged-in client: through the proxy's edge, or with its own Noise straight to chatd (or
/// through a plain relay), by the client SDK's connection.
pub struct Conn(Connection);

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
        let dialer = Dialer { from: Some(user.ip), certs: target.certs.clone() };
        let mut conn = Conn(
            Connection::open(&dialer, &target.route(), &user.jid, &user.noise, &user.payload(), LOGIN_TIMEOUT).await?,
        );
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
        Ok(self.0.send(node).await?)
    }

    /// The next stanza. Cancel-safe: bytes already read stay buffered, so it can sit in a
    /// `select!`.
    pub async fn recv(&mut self, wait: Duration) -> Result<Node> {
        Ok(self.0.recv(wait).await?)
    }

    /// Sends a keepalive ping and waits for its result; other stanzas are skipped.
    pub async fn ping(&mut self, id: &str, wait: Duration) -> Result<()> {
        self.send(&wire::keepalive::ping(id)).await?;
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
