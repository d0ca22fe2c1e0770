//! The WebSocket edge: binary messages carry the same frame stream as TCP, cut anywhere (a
//! message may hold part of a frame or several frames), as chatd's own web carrier does.
//!
//! Unlike a bridge over a duplex pipe with pump tasks, [`ServerWs`] (the edge's side) and
//! [`WsStream`] (a client's side, over tokio-tungstenite) adapt the WebSocket to
//! `AsyncRead + AsyncWrite` in place: no extra task, no extra buffer beyond one received message
//! and tungstenite's own bounded I/O buffers. Text messages are ignored; pings are answered by
//! tungstenite; a close message or the socket's end reads as EOF.
//!
//! The edge's message bound changes with the login ([`ServerWs::logged_in`]): until the login
//! frame is read, a message or frame may be at most [`pre_login_max`] bytes (the login frame's cap
//! plus its 3-byte header, as the TCP edge's 64 KiB), checked on the frame header before
//! tungstenite reserves anything; after it, `max_frame_size + 3`. tokio-tungstenite cannot change
//! a stream's limits once made, so [`ServerWs`] drives tungstenite itself.
//!
//! The client address is the TCP peer, unless the peer is in `trusted_forwarded_cidrs`: then it is
//! the right-most entry of the one configured header ([`ForwardedHeader`], `X-Forwarded-For` by
//! default), the entry the trusted hop appended. Everything left of it, and every other header,
//! is whatever the client wrote, and is never read.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ServerHandshake};
use tokio_tungstenite::tungstenite::handshake::{HandshakeError, MidHandshake};
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::http::header::{self as http_header, HeaderName};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

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

/// A client's WebSocket connection (tokio-tungstenite) as a byte stream.
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

/// The largest WebSocket message (and frame) accepted before the login frame is read: the login
/// frame's cap plus its 3-byte length, but never more than one frame of `max_frame_size`.
pub fn pre_login_max(max_frame_size: usize) -> usize {
    crate::conn::LOGIN_FRAME_MAX.min(max_frame_size) + 3
}

/// The edge's WebSocket configuration for a connection before its login: messages and frames of
/// at most [`pre_login_max`]; reads in 4 KiB, writes straight through (the relay does the
/// buffering), and at most two outgoing messages queued.
pub fn server_config(max_frame_size: usize) -> WebSocketConfig {
    let max = pre_login_max(max_frame_size);
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * (OUT_MESSAGE_MAX + 14))
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// A synchronous `Read + Write` view of an async stream for tungstenite: each call polls the
/// stream once with the waker of the task that polls the [`ServerWs`], and `Pending` reads as
/// `WouldBlock` (which tungstenite handles as non-blocking I/O).
#[derive(Debug)]
struct Bridge<S> {
    inner: S,
    waker: Option<Waker>,
}

impl<S> Bridge<S> {
    fn set_waker(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    fn poll<T>(&mut self, f: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>) -> io::Result<T>
    where
        S: Unpin,
    {
        let Some(waker) = &self.waker else { return Err(io::ErrorKind::WouldBlock.into()) };
        let mut cx = Context::from_waker(waker);
        match f(Pin::new(&mut self.inner), &mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncRead + Unpin> Read for Bridge<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.poll(|s, cx| {
            let mut rb = ReadBuf::new(buf);
            ready!(s.poll_read(cx, &mut rb))?;
            Poll::Ready(Ok(rb.filled().len()))
        })
    }
}

impl<S: AsyncWrite + Unpin> Write for Bridge<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll(|s, cx| s.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll(|s, cx| s.poll_flush(cx))
    }
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The edge's side of a WebSocket connection as a byte stream (see the module docs).
#[derive(Debug)]
pub struct ServerWs<S> {
    ws: WebSocket<Bridge<S>>,
    pending: Bytes,
    eof: bool,
    /// A write was queued but not yet flushed out: flush before queueing more.
    blocked: bool,
    closing: bool,
    /// `max_frame_size + 3`, the bound once logged in.
    logged_in_max: usize,
}

/// Runs the server side of the WebSocket upgrade on `stream` with [`server_config`]; `callback`
/// sees the request (path, headers) and may refuse it.
pub async fn accept<S, C>(stream: S, callback: C, max_frame_size: usize) -> Result<ServerWs<S>, tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: Callback,
{
    let mut start = Some((stream, callback));
    let mut mid: Option<MidHandshake<ServerHandshake<Bridge<S>, C>>> = None;
    let ws = std::future::poll_fn(|cx| {
        let round = match (start.take(), mid.take()) {
            (Some((stream, callback)), _) => {
                let mut bridge = Bridge { inner: stream, waker: None };
                bridge.set_waker(cx);
                ServerHandshake::start(bridge, callback, Some(server_config(max_frame_size))).handshake()
            }
            (None, Some(mut m)) => {
                m.get_mut().get_mut().set_waker(cx);
                m.handshake()
            }
            (None, None) => return Poll::Ready(Err(tungstenite::Error::AlreadyClosed)),
        };
        match round {
            Ok(ws) => Poll::Ready(Ok(ws)),
            Err(HandshakeError::Interrupted(m)) => {
                mid = Some(m);
                Poll::Pending
            }
            Err(HandshakeError::Failure(e)) => Poll::Ready(Err(e)),
        }
    })
    .await?;
    Ok(ServerWs::new(ws, max_frame_size))
}

impl<S> ServerWs<S> {
    fn new(ws: WebSocket<Bridge<S>>, max_frame_size: usize) -> Self {
        ServerWs {
            ws,
            pending: Bytes::new(),
            eof: false,
            blocked: false,
            closing: false,
            logged_in_max: max_frame_size + 3,
        }
    }

    /// A WebSocket over `stream` whose upgrade already happened elsewhere (fuzzing, tests), with
    /// the edge's pre-login bounds.
    pub fn from_raw(stream: S, max_frame_size: usize) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let bridge = Bridge { inner: stream, waker: None };
        ServerWs::new(
            WebSocket::from_raw_socket(bridge, Role::Server, Some(server_config(max_frame_size))),
            max_frame_size,
        )
    }

    /// The login frame has been read: from now on a message may be `max_frame_size + 3` bytes.
    pub fn logged_in(&mut self) {
        let max = self.logged_in_max;
        self.ws.set_config(|c| {
            c.max_message_size = Some(max);
            c.max_frame_size = Some(max);
        });
    }

    /// The largest message accepted now.
    pub fn max_message_size(&self) -> Option<usize> {
        self.ws.get_config().max_message_size
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerWs<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(out.remaining());
                out.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.ws.get_mut().set_waker(cx);
            match this.ws.read() {
                Ok(Message::Binary(data)) => this.pending = data,
                Ok(Message::Close(_)) => this.eof = true,
                Ok(_) => {}
                Err(e) if would_block(&e) => return Poll::Pending,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => this.eof = true,
                Err(e) => {
                    this.eof = true;
                    return Poll::Ready(Err(io_err(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerWs<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        this.ws.get_mut().set_waker(cx);
        if this.blocked {
            match this.ws.flush() {
                Ok(()) => this.blocked = false,
                Err(e) if would_block(&e) => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(io_err(e))),
            }
        }
        let n = buf.len().min(OUT_MESSAGE_MAX);
        match this.ws.write(Message::binary(Bytes::copy_from_slice(&buf[..n]))) {
            Ok(()) => Poll::Ready(Ok(n)),
            // Queued, not yet written out: the next write or flush pushes it on first.
            Err(e) if would_block(&e) => {
                this.blocked = true;
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(io_err(e))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.ws.get_mut().set_waker(cx);
        match this.ws.flush() {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {
                this.blocked = false;
                Poll::Ready(Ok(()))
            }
            Err(e) if would_block(&e) => Poll::Pending,
            Err(e) => Poll::Ready(Err(io_err(e))),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.ws.get_mut().set_waker(cx);
        let r = if this.closing { this.ws.flush() } else { this.ws.close(None) };
        match r {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) if would_block(&e) => {
                this.closing = true;
                Poll::Pending
            }
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

    #[tokio::test]
    async fn server_ws_bounds_messages_before_the_login_and_raises_them_after() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cap = crate::conn::LOGIN_FRAME_MAX + 3;
        let pair = |max_frame| async move {
            let (client, server) = tokio::io::duplex(1 << 20);
            let server = ServerWs::from_raw(server, max_frame);
            (WebSocketStream::from_raw_socket(client, Role::Client, None).await, server)
        };

        // Before the login: text is ignored, a message of the cap is read, one byte more is refused.
        let (mut client, mut server) = pair(256 * 1024).await;
        assert_eq!(server.max_message_size(), Some(cap));
        client.send(Message::text("ignored")).await.unwrap();
        client.send(Message::binary(vec![1u8; cap])).await.unwrap();
        let mut got = vec![0u8; cap];
        server.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 1));
        client.send(Message::binary(vec![2u8; cap + 1])).await.unwrap();
        assert!(server.read(&mut [0u8; 16]).await.is_err(), "one byte above the cap before the login");

        // After the login: up to max_frame_size + 3; writes are cut into 64 KiB messages.
        let (mut client, mut server) = pair(256 * 1024).await;
        server.logged_in();
        assert_eq!(server.max_message_size(), Some(256 * 1024 + 3));
        client.send(Message::binary(vec![3u8; 256 * 1024 + 3])).await.unwrap();
        let mut got = vec![0u8; 256 * 1024 + 3];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(&vec![4u8; 100 * 1024]).await.unwrap();
        server.flush().await.unwrap();
        let sizes: Vec<usize> = [client.next().await, client.next().await]
            .into_iter()
            .map(|m| m.unwrap().unwrap().into_data().len())
            .collect();
        assert_eq!(sizes, [64 * 1024, 36 * 1024]);
        client.send(Message::binary(vec![5u8; 256 * 1024 + 4])).await.unwrap();
        assert!(server.read(&mut [0u8; 16]).await.is_err(), "one byte above max_frame_size + 3");

        // A small max_frame_size bounds the pre-login cap too; a close reads as EOF.
        let (mut client, mut server) = pair(1000).await;
        assert_eq!(server.max_message_size(), Some(1003));
        client.close(None).await.unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
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
