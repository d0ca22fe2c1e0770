//! What comes before the first frame: an optional PROXY protocol header (v1 or v2, as a proxy
//! sends it to carry the client's address), an optional `ED` edge-routing pre-intro, then the
//! 4-byte `WA` connection header.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};
use wire::noise::WA_CONN_HEADER;
use wire::proxy_header::{self, Parsed};

/// The first four bytes of a PROXY v2 signature.
const V2_START: [u8; 4] = *b"\r\n\r\n";
/// Longest edge-routing blob accepted.
const ROUTING_MAX: usize = 4096;

/// What the intro said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intro {
    /// The client address from a PROXY header; `None` without one (or for `LOCAL`/`UNKNOWN`).
    pub proxied_source: Option<SocketAddr>,
    /// Which PROXY version, if any, preceded the connection header.
    pub proxy_version: Option<u8>,
    /// The edge-routing blob, if the client sent an `ED` pre-intro.
    pub routing_info: Option<Vec<u8>>,
}

/// Why the intro was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntroError {
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("bad PROXY header: {0}")]
    Proxy(String),
    #[error("edge-routing blob of {0} bytes is too long")]
    RoutingTooLong(usize),
    #[error("connection header {0:02x?} is not \"WA\" 6 3")]
    BadHeader([u8; 4]),
}

/// Reads the intro from the start of a connection.
pub async fn read_intro<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Intro, IntroError> {
    let mut intro = Intro::default();
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if &head == b"PROX" || head == V2_START {
        // Byte by byte up to the header's end: nothing past it may be consumed here.
        let mut header = head.to_vec();
        let source = loop {
            match proxy_header::parse(&header) {
                Ok(Parsed::Header { source, .. }) => break source,
                Ok(Parsed::Incomplete) => header.push(stream.read_u8().await?),
                Err(e) => return Err(IntroError::Proxy(e.to_string())),
            }
        };
        intro.proxied_source = source;
        intro.proxy_version = Some(if head == V2_START { 2 } else { 1 });
        stream.read_exact(&mut head).await?;
    }
    if &head == b"ED\x00\x01" {
        let mut len = [0u8; 3];
        stream.read_exact(&mut len).await?;
        let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
        if len > ROUTING_MAX {
            return Err(IntroError::RoutingTooLong(len));
        }
        let mut blob = vec![0u8; len];
        stream.read_exact(&mut blob).await?;
        intro.routing_info = Some(blob);
        stream.read_exact(&mut head).await?;
    }
    if head != WA_CONN_HEADER {
        return Err(IntroError::BadHeader(head));
    }
    Ok(intro)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn intro(bytes: &[u8]) -> Result<Intro, IntroError> {
        read_intro(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn plain_header() {
        assert_eq!(intro(b"WA\x06\x03").await.unwrap(), Intro::default());
        assert!(matches!(intro(b"WA\x05\x02").await, Err(IntroError::BadHeader(_))));
        assert!(matches!(intro(b"GET / HTTP/1.1\r\n").await, Err(IntroError::BadHeader(_))));
    }

    #[tokio::test]
    async fn proxy_v1_and_v2() {
        let got = intro(b"PROXY TCP4 127.0.0.7 127.0.0.1 40000 5222\r\nWA\x06\x03").await.unwrap();
        assert_eq!(got.proxied_source, Some("127.0.0.7:40000".parse().unwrap()));
        assert_eq!(got.proxy_version, Some(1));

        let mut bytes = Vec::new();
        proxy_header::write(
            proxy_header::ProxyProtocol::V2,
            "[2001:db8::7]:1234".parse().unwrap(),
            "[::1]:5222".parse().unwrap(),
            &mut bytes,
        )
        .unwrap();
        bytes.extend_from_slice(b"WA\x06\x03");
        let got = intro(&bytes).await.unwrap();
        assert_eq!(got.proxied_source, Some("[2001:db8::7]:1234".parse().unwrap()));
        assert_eq!(got.proxy_version, Some(2));
    }

    #[tokio::test]
    async fn edge_routing_and_garbage() {
        let got = intro(b"ED\x00\x01\x00\x00\x03abcWA\x06\x03").await.unwrap();
        assert_eq!(got.routing_info.as_deref(), Some(&b"abc"[..]));
        assert!(matches!(intro(b"PROXY garbage\r\nWA\x06\x03").await, Err(IntroError::Proxy(_))));
        assert!(matches!(intro(&[b'P', b'R', b'O', b'X'].repeat(40)).await, Err(IntroError::Proxy(_))));
        assert!(matches!(intro(b"WA").await, Err(IntroError::Io(_))));
    }
}
