//! Receiving the PROXY protocol (v1 text, v2 binary) on the plain TCP listener, from trusted load
//! balancers only. With `edge.proxy_protocol` on, the header is required: a connection from a
//! peer outside the trusted CIDRs, or without a valid header, is closed and counted. Nothing is
//! guessed: a connection never falls back to "no header" (the spec's MUST NOT auto-detect).

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use wire::proxy_header::{self, Parsed};

/// Largest header read: v1 is at most 107 bytes; v2 with TLVs is allowed up to this.
pub const MAX_HEADER: usize = proxy_header::MAX_LEN;

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRefusal {
    /// Not a PROXY header, malformed, or over [`MAX_HEADER`].
    Invalid,
    /// The peer closed before a whole header arrived.
    Closed,
}

/// Reads a PROXY header from the start of `stream`. Returns the client address it carries (or
/// `None` for v1 `UNKNOWN`, v2 `LOCAL` and non-IP families: the TCP peer is then used); bytes
/// read past the header are left in `buf`.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<SocketAddr>, HeaderRefusal> {
    loop {
        if !buf.is_empty() {
            match proxy_header::parse(buf) {
                Ok(Parsed::Header { len, source }) => {
                    buf.advance(len);
                    return Ok(source);
                }
                Ok(Parsed::Incomplete) => {}
                Err(_) => return Err(HeaderRefusal::Invalid),
            }
        }
        buf.reserve(MAX_HEADER - buf.len());
        let mut limited = (&mut *stream).take((MAX_HEADER - buf.len()) as u64);
        match limited.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeaderRefusal::Closed),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, HeaderRefusal>, Vec<u8>) {
        let mut buf = BytesMut::new();
        let mut input = bytes;
        let r = read(&mut input, &mut buf).await;
        (r, buf.to_vec())
    }

    #[tokio::test]
    async fn v1_v2_and_junk() {
        let (r, rest) = parse(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 5222\r\n\x00\x00\x01").await;
        assert_eq!(r, Ok(Some("198.51.100.7:40000".parse().unwrap())));
        assert_eq!(rest, b"\x00\x00\x01");
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.0, Ok(None));
        let mut v2 = Vec::new();
        proxy_header::write(
            proxy_header::ProxyProtocol::V2,
            "[2001:db8::7]:1234".parse().unwrap(),
            "[::1]:5222".parse().unwrap(),
            &mut v2,
        )
        .unwrap();
        let mut input = v2.clone();
        input.extend_from_slice(b"xyz");
        let (r, rest) = parse(&input).await;
        assert_eq!(r, Ok(Some("[2001:db8::7]:1234".parse().unwrap())));
        assert_eq!(rest, b"xyz");
        assert_eq!(parse(b"\x00\x00\x10login frame bytes").await.0, Err(HeaderRefusal::Invalid));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n").await.0, Err(HeaderRefusal::Invalid));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").await.0, Err(HeaderRefusal::Closed));
        assert_eq!(parse(&[b'P'; 2000]).await.0, Err(HeaderRefusal::Invalid));
    }
}
