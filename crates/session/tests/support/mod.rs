//! Test support: the shared simulator helpers from `testkit`, plus the edge side of a session: a
//! login request as the edge passes it on, session contexts, and a plaintext frame client on an
//! in-memory pipe or a real TCP pair.
#![allow(dead_code)]

use std::time::Duration;

use chatd_sim::RunningSim;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use session::{LoginRequest, RelayConfig, SessionContext, SessionMetrics, UpstreamConfig};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wire::Node;
use wire::decode::Decoder;
use wire::frame::FrameCodec;
use wire::noise::StaticKeypair;
use wire::proto::ClientPayload;
use zeroize::Zeroizing;

pub use testkit::*;

// ---------------------------------------------------------------------------------------------
// The session side

/// An address the PROXY header names as the client's (TEST-NET-3).
pub const CLIENT_ADDR: &str = "203.0.113.9:40000";
/// The proxy's edge address, for the PROXY header's destination.
pub const EDGE_ADDR: &str = "127.0.0.1:5222";

/// A login as the edge would pass it on.
pub fn login_request(account: &str, device: &Device, payload: &ClientPayload) -> LoginRequest {
    LoginRequest {
        account: account.to_owned(),
        static_key: StaticKeypair::from_private(&device.noise).unwrap(),
        client_payload: Zeroizing::new(payload.encode_to_vec()),
        client_addr: CLIENT_ADDR.parse().unwrap(),
        local_addr: EDGE_ADDR.parse().unwrap(),
    }
}

pub fn upstream_config(sim: &RunningSim) -> UpstreamConfig {
    UpstreamConfig::new(sim.chat_addr, sim.root_public_key())
}

pub fn relay_config() -> RelayConfig {
    RelayConfig { close_linger: Duration::from_millis(500), ..RelayConfig::default() }
}

pub fn context(sim: &RunningSim, relay: RelayConfig) -> SessionContext {
    SessionContext::new(upstream_config(sim), relay, SessionMetrics::new().unwrap())
}

/// The Partner client's side of the edge stream: plaintext frames.
pub struct EdgeClient<S> {
    pub framed: Framed<S, FrameCodec>,
    decoder: Decoder<'static>,
}

/// A client on an in-memory pipe: (the proxy's end, the client).
pub fn duplex_client(capacity: usize) -> (DuplexStream, EdgeClient<DuplexStream>) {
    let (proxy_side, client_side) = tokio::io::duplex(capacity);
    (proxy_side, EdgeClient::new(client_side))
}

/// A client on a real loopback TCP pair: (the proxy's end, the client).
pub async fn tcp_client() -> (TcpStream, EdgeClient<TcpStream>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (proxy_side, _) = listener.accept().await.unwrap();
    (proxy_side, EdgeClient::new(client))
}

impl<S: AsyncRead + AsyncWrite + Unpin> EdgeClient<S> {
    pub fn new(stream: S) -> Self {
        EdgeClient { framed: Framed::new(stream, FrameCodec::new()), decoder: Decoder::default() }
    }

    pub async fn send(&mut self, node: &Node) {
        self.framed.send(wire::encode::encode(node).unwrap()).await.unwrap();
    }

    /// The next stanza; `None` at EOF (or on nothing within `WAIT`).
    pub async fn recv(&mut self) -> Option<Node> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Option<Node> {
        let frame = tokio::time::timeout(wait, self.framed.next()).await.ok()??.ok()?;
        Some(self.decoder.decode_payload(&frame).unwrap().to_owned())
    }

    /// Receives until a stanza with tag `tag` arrives.
    pub async fn recv_tag(&mut self, tag: &str) -> Node {
        let mut skipped = Vec::new();
        loop {
            let node = self.recv().await.unwrap_or_else(|| panic!("no <{tag}> (skipped {skipped:?})"));
            if node.tag == tag {
                return node;
            }
            skipped.push(node.tag);
        }
    }

    /// Reads until EOF; returns the tags seen. Panics if EOF does not come within `WAIT`.
    pub async fn until_eof(&mut self) -> Vec<String> {
        let mut tags = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.framed.next()).await.expect("EOF expected") {
                None | Some(Err(_)) => return tags,
                Some(Ok(frame)) => tags.push(self.decoder.decode_payload(&frame).unwrap().tag().to_owned()),
            }
        }
    }
}

/// Polls the simulator (in-process, no HTTP) until `account` has `n` live connections; returns
/// how long that took.
pub async fn wait_current(sim: &RunningSim, account: &str, n: u32) -> Duration {
    let t = std::time::Instant::now();
    while sim.sim.observed(account).current != n {
        assert!(t.elapsed() < WAIT, "{account}: current stayed {} (want {n})", sim.sim.observed(account).current);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    t.elapsed()
}

pub fn ping(id: &str) -> Node {
    Node::new("iq").attr("id", id).attr("xmlns", "w:p").attr("type", "get").attr("to", jid("s.whatsapp.net"))
}
