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
//! taken from `Forwarded: for=` or else `X-Forwarded-For`, walking the list from the right and
//! skipping trusted hops (the left part of the list is whatever the client claimed).

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

use crate::cidr::{Cidr, any_contains};

/// Largest binary message the proxy sends (writes are cut to this).
const OUT_MESSAGE_MAX: usize = 64 * 1024;

/// What the WebSocket listener needs besides the shared edge context.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// The upgrade path (`/ws/chat`); other paths get 404.
    pub path: String,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers are believed.
    pub trusted_forwarded: Vec<Cidr>,
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

/// The client's address for a connection from `peer` with these request headers.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> SocketAddr {
    if !any_contains(trusted, peer.ip()) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|elem| {
            elem.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            })
        })
        .collect();
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let hops = if forwarded.is_empty() { xff } else { forwarded };
    let mut chosen = None;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(addr) if any_contains(trusted, addr.ip()) => chosen = Some(addr),
            Some(addr) => return addr,
            // "unknown", an obfuscated identifier or junk: the chain cannot be followed further.
            None => break,
        }
    }
    chosen.unwrap_or(peer)
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
    fn forwarded_headers_only_from_trusted_peers() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: SocketAddr = "10.1.1.1:5555".parse().unwrap();
        let outsider: SocketAddr = "198.51.100.1:5555".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.2.2.2")]);
        assert_eq!(client_addr(lb, &xff, &trusted), "203.0.113.9:0".parse().unwrap());
        assert_eq!(client_addr(outsider, &xff, &trusted), outsider, "untrusted peer: headers ignored");
        let fwd = headers(&[("forwarded", "for=192.0.2.60;proto=https, for=\"[2001:db8::1]:4711\"")]);
        assert_eq!(client_addr(lb, &fwd, &trusted), "[2001:db8::1]:4711".parse().unwrap());
        assert_eq!(client_addr(lb, &headers(&[("forwarded", "for=unknown")]), &trusted), lb);
        assert_eq!(client_addr(lb, &HeaderMap::new(), &trusted), lb);
        let only_trusted = headers(&[("x-forwarded-for", "10.3.3.3")]);
        assert_eq!(client_addr(lb, &only_trusted, &trusted), "10.3.3.3:0".parse().unwrap());
    }
}
