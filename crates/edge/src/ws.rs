//! The WebSocket edge: binary messages carry the same frame stream as TCP, cut anywhere (a
//! message may hold part of a frame or several frames), as chatd's own web carrier does.
//!
//! Unlike a bridge over a duplex pipe with pump tasks, [`WsStream`] adapts the WebSocket to
//! `AsyncRead + AsyncWrite` in place: no extra task, no extra buffer beyond one received message
//! (at most `max_frame_size + 3` bytes) and tungstenite's own bounded I/O buffers. Text messages
//! are ignored; pings are answered by tungstenite; a close message or the socket's end reads as
//! EOF.
//!
//! The client address is the TCP peer, unless the peer is in `trusted_forwarded_cidrs`: then it is
//! the right-most entry of the one configured header ([`ForwardedHeader`], `X-Forwarded-For` by
//! default), the entry the trusted hop appended. Everything left of it, and every other header,
//! is whatever the client wrote, and is never read.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::http::header::{self as http_header, HeaderName};

use crate::cidr::{Cidr, any_contains};

/// Largest binary message the proxy sends (writes are cut to this).
const OUT_MESSAGE_MAX: usize = 64 * 1024;

/// What the WebSocket listener needs besides the shared edge context.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// The upgrade path (`/ws/chat`); other paths get 404.
    pub path: String,
    /// Peers whose [`WsOptions::forwarded_header`] is believed.
    pub trusted_forwarded: Vec<Cidr>,
    /// The header a trusted peer appends the client's address to.
    pub forwarded_header: ForwardedHeader,
}

/// The one request header that carries the client's address (`edge.websocket.forwarded_header`):
/// a comma-separated list of addresses (`X-Forwarded-For`, `X-Real-IP`, ...), or RFC 7239
/// `Forwarded` elements whose `for=` is read. Only its right-most entry is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedHeader {
    name: HeaderName,
}

/// Why a configured forwarded header name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an HTTP header name")]
pub struct BadHeaderName(pub String);

impl ForwardedHeader {
    pub fn parse(name: &str) -> Result<Self, BadHeaderName> {
        HeaderName::from_bytes(name.trim().as_bytes())
            .map(|name| ForwardedHeader { name })
            .map_err(|_| BadHeaderName(name.chars().take(64).collect()))
    }

    /// The header's name, lowercase.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    fn is_rfc7239(&self) -> bool {
        self.name == http_header::FORWARDED
    }
}

impl Default for ForwardedHeader {
    fn default() -> Self {
        ForwardedHeader { name: HeaderName::from_static("x-forwarded-for") }
    }
}

/// A WebSocket connection as a byte stream.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
}

impl<S> WsStream<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsStream { ws, pending: Bytes::new(), eof: false }
    }
}

fn io_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        E::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(out.remaining());
                out.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    self.eof = true;
                    return Poll::Ready(Err(io_err(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_err)?;
        let n = buf.len().min(OUT_MESSAGE_MAX);
        Pin::new(&mut self.ws).start_send(Message::binary(Bytes::copy_from_slice(&buf[..n]))).map_err(io_err)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => match io_err(e) {
                e if e.kind() == io::ErrorKind::BrokenPipe => Poll::Ready(Ok(())),
                e => Poll::Ready(Err(e)),
            },
        }
    }
}

/// The client's address for a connection from `peer` with these request headers: the right-most
/// entry of `header` when `peer` is trusted, else (or when that entry is missing, `unknown` or not
/// an address) `peer` itself. The trusted hop appends the address it saw to the end of the list
/// (or adds the header last); whatever is left of it, in this or any other header, came from the
/// client and is never read.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr], header: &ForwardedHeader) -> SocketAddr {
    if !any_contains(trusted, peer.ip()) {
        return peer;
    }
    // Several lines of one header are one list, in order (RFC 9110 5.3): the last line's last entry.
    let Some(last_line) = headers.get_all(&header.name).iter().next_back() else {
        return peer;
    };
    let Some(entry) = last_line.to_str().ok().and_then(|v| v.rsplit(',').next()) else {
        return peer;
    };
    let hop = if header.is_rfc7239() {
        entry.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v)
        })
    } else {
        Some(entry)
    };
    // "unknown", an obfuscated identifier or junk: the TCP peer is all that is known.
    hop.and_then(parse_hop).unwrap_or(peer)
}

/// `203.0.113.7`, `203.0.113.7:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<SocketAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(a) = hop.parse::<SocketAddr>() {
        return Some(SocketAddr::new(a.ip().to_canonical(), a.port()));
    }
    let ip = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(hop);
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip.to_canonical(), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_right_most_entry_of_the_one_header_from_trusted_peers_only() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: SocketAddr = "10.1.1.1:5555".parse().unwrap();
        let outsider: SocketAddr = "198.51.100.1:5555".parse().unwrap();
        let xff = ForwardedHeader::default();
        let fwd = ForwardedHeader::parse("Forwarded").unwrap();
        let addr = |h: &[(&'static str, &'static str)], header: &ForwardedHeader| {
            client_addr(lb, &headers(h), &trusted, header)
        };

        let chain = [("x-forwarded-for", "6.6.6.6, 10.2.2.2, 203.0.113.9")];
        assert_eq!(addr(&chain, &xff), "203.0.113.9:0".parse().unwrap());
        assert_eq!(client_addr(outsider, &headers(&chain), &trusted, &xff), outsider, "untrusted peer: ignored");
        // The client's own entries never count, even when the trusted hop's entry is itself
        // inside a trusted range (a client on the private network).
        assert_eq!(addr(&[("x-forwarded-for", "6.6.6.6, 10.3.3.3")], &xff), "10.3.3.3:0".parse().unwrap());
        // Several lines: the last line's last entry.
        let lines = [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "7.7.7.7, 198.51.100.4")];
        assert_eq!(addr(&lines, &xff), "198.51.100.4:0".parse().unwrap());
        // Another header, whatever it says, is not read: a client-written Forwarded does not win.
        let both = [("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.9")];
        assert_eq!(addr(&both, &xff), "203.0.113.9:0".parse().unwrap());
        assert_eq!(addr(&[("forwarded", "for=6.6.6.6")], &xff), lb, "the configured header is missing");
        assert_eq!(addr(&[("x-real-ip", "6.6.6.6")], &xff), lb);
        // An unreadable right-most entry: the peer, never an entry further left.
        for junk in ["6.6.6.6, unknown", "6.6.6.6,", "6.6.6.6, _hidden", "6.6.6.6, 1.2.3.4.5"] {
            assert_eq!(addr(&[("x-forwarded-for", junk)], &xff), lb, "{junk}");
        }
        assert_eq!(addr(&[], &xff), lb);

        // Configured as Forwarded (RFC 7239): the last element's for=.
        let rfc = [("forwarded", "for=192.0.2.60;proto=https, for=\"[2001:db8::1]:4711\";by=10.1.1.1")];
        assert_eq!(addr(&rfc, &fwd), "[2001:db8::1]:4711".parse().unwrap());
        assert_eq!(addr(&[("forwarded", "for=192.0.2.60, proto=https")], &fwd), lb, "last element without for=");
        assert_eq!(addr(&[("forwarded", "for=unknown")], &fwd), lb);
        assert_eq!(
            addr(&[("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.9")], &fwd),
            "6.6.6.6:0".parse().unwrap()
        );

        assert_eq!(ForwardedHeader::parse("X-Real-IP").unwrap().name(), "x-real-ip");
        assert!(ForwardedHeader::parse("").is_err());
        assert!(ForwardedHeader::parse("x forwarded").is_err());
    }
}
