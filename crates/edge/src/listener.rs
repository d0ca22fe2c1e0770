//! Accept loops for the edge's listeners: plain TCP (optionally requiring a PROXY header from
//! trusted sources), TLS and WebSocket. Each loop ends, closing its socket, when
//! [`EdgeContext::stop_accepting`] is cancelled (draining) or its task is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use error_report::Report;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tracing::{debug, warn};

use crate::cidr::any_contains;
use crate::conn::{EdgeContext, serve_client, serve_client_with};
use crate::proxy_header::{self, HeaderRefusal};
use crate::ws::{ServerWs, WsOptions, client_addr};

/// TCP_NODELAY, and keepalive probes after `idle` without traffic (then every `idle / 6`, at
/// least 1 s), so dead clients behind silent NATs are found even between application pings.
pub fn tune_socket(socket: socket2::SockRef<'_>, keepalive: Option<Duration>) {
    let _ = socket.set_tcp_nodelay(true);
    if let Some(idle) = keepalive {
        let ka = socket2::TcpKeepalive::new().with_time(idle).with_interval((idle / 6).max(Duration::from_secs(1)));
        if let Err(e) = socket.set_tcp_keepalive(&ka) {
            debug!(error = %Report(&e), "cannot set TCP keepalive");
        }
    }
}

/// Whether accepted sockets inherit the listening socket's `TCP_NODELAY` and keepalive settings
/// (Linux copies them in `accept`; `listener_tuning_is_inherited` checks it), so they are set
/// once on the listener rather than with four `setsockopt`s per connection.
const ACCEPTED_SOCKETS_INHERIT: bool = cfg!(target_os = "linux");

/// A listener as the accept loops use it: tuned once, and its local address known when it is
/// bound to one (a connection's local address then needs no `getsockname`).
struct Listening {
    listener: TcpListener,
    local: Option<SocketAddr>,
    keepalive: Option<Duration>,
}

impl Listening {
    fn new(listener: TcpListener, keepalive: Option<Duration>) -> Self {
        if ACCEPTED_SOCKETS_INHERIT {
            tune_socket(socket2::SockRef::from(&listener), keepalive);
        }
        let local = listener.local_addr().ok().filter(|a| !a.ip().is_unspecified());
        Listening { listener, local, keepalive }
    }

    /// The next connection, tuned and counted for `kind` (when given); `None` once the edge stops
    /// accepting. Accept errors (EMFILE when out of descriptors, for one) back off instead of
    /// spinning.
    async fn accept(&self, ctx: &EdgeContext, kind: Option<&str>) -> Option<(TcpStream, SocketAddr, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = ctx.stop_accepting.cancelled() => return None,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if let Some(kind) = kind {
                        ctx.metrics.connections.with_label_values(&[kind]).inc();
                    }
                    if !ACCEPTED_SOCKETS_INHERIT {
                        tune_socket(socket2::SockRef::from(&stream), self.keepalive);
                    }
                    let local = self.local.or_else(|| stream.local_addr().ok()).unwrap_or(peer);
                    return Some((stream, peer, local));
                }
                Err(e) => {
                    warn!(error = %Report(&e), "accept failed; backing off");
                    tokio::select! {
                        _ = ctx.stop_accepting.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

/// Serves plain TCP clients until the edge stops accepting or the task is dropped. With
/// `proxy_protocol_trusted` set, every connection must come from a trusted source and start with
/// a PROXY v1 or v2 header, whose source address becomes the client's (the header and the login
/// frame share one login timeout from the accept); anything else is closed and counted in `waproxy_proxy_protocol_refused_total`.
pub async fn serve_tcp(listener: TcpListener, ctx: Arc<EdgeContext>) {
    let listener = Listening::new(listener, ctx.tcp_keepalive);
    while let Some((mut stream, peer, local)) = listener.accept(&ctx, Some("tcp")).await {
        let ctx = Arc::clone(&ctx);
        let deadline = Instant::now() + ctx.login_timeout;
        let Some(trusted) = &ctx.proxy_protocol_trusted else {
            tokio::spawn(serve_client(ctx, stream, peer, local, deadline));
            continue;
        };
        if !any_contains(trusted, peer.ip()) {
            ctx.metrics.proxy_protocol_refused.with_label_values(&["untrusted"]).inc();
            debug!(%peer, "PROXY header required and the peer is not trusted; closing");
            drop(stream);
            continue;
        }
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let refused = match tokio::time::timeout_at(deadline, proxy_header::read(&mut stream, &mut buf)).await {
                Ok(Ok(source)) => {
                    let client = source.unwrap_or(peer);
                    return serve_client_with(Arc::clone(&ctx), stream, client, local, buf, deadline, |_| {}).await;
                }
                Ok(Err(HeaderRefusal::Invalid)) => "invalid",
                Ok(Err(HeaderRefusal::Closed)) => "closed",
                Err(_) => "timeout",
            };
            ctx.metrics.proxy_protocol_refused.with_label_values(&[refused]).inc();
            debug!(%peer, reason = refused, "no valid PROXY header; closing");
        });
    }
}

/// Serves TLS clients until the edge stops accepting or the task is dropped. The TLS handshake
/// and the login frame share one login timeout from the accept.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, ctx: Arc<EdgeContext>) {
    let listener = Listening::new(listener, ctx.tcp_keepalive);
    while let Some((stream, peer, local)) = listener.accept(&ctx, Some("tls")).await {
        let (acceptor, ctx) = (acceptor.clone(), Arc::clone(&ctx));
        let deadline = Instant::now() + ctx.login_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_client(ctx, tls, peer, local, deadline).await,
                Ok(Err(e)) => debug!(%peer, error = %Report(&e), "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Serves WebSocket clients (upgrade on `options.path`, binary messages carrying the frame
/// stream) until the edge stops accepting or the task is dropped. The upgrade and the login
/// frame share one login timeout from the accept; until the login frame is read a message may be
/// at most [`crate::ws::pre_login_max`] bytes, then `max_frame_size + 3`. Counted in
/// `waproxy_edge_connections_total{listener="ws"}` once upgraded.
pub async fn serve_ws(listener: TcpListener, options: WsOptions, ctx: Arc<EdgeContext>) {
    let options = Arc::new(options);
    let listener = Listening::new(listener, ctx.tcp_keepalive);
    while let Some((stream, peer, local)) = listener.accept(&ctx, None).await {
        let (options, ctx) = (Arc::clone(&options), Arc::clone(&ctx));
        let deadline = Instant::now() + ctx.login_timeout;
        tokio::spawn(async move {
            let mut client = peer;
            // The signature is tungstenite's header-callback contract, large error type included.
            #[allow(clippy::result_large_err)]
            let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                if req.uri().path() != options.path {
                    let mut not_found = ErrorResponse::new(Some("not found".into()));
                    *not_found.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                    return Err(not_found);
                }
                client = client_addr(peer, req.headers(), &options.trusted_forwarded, &options.forwarded_header);
                Ok(resp)
            };
            let upgrade = crate::ws::accept(stream, check, ctx.max_frame_size);
            match tokio::time::timeout_at(deadline, upgrade).await {
                Ok(Ok(ws)) => {
                    ctx.metrics.connections.with_label_values(&["ws"]).inc();
                    let buf = BytesMut::with_capacity(1024);
                    serve_client_with(ctx, ws, client, local, buf, deadline, ServerWs::logged_in).await
                }
                Ok(Err(e)) => debug!(%peer, error = %Report(&e), "WebSocket upgrade failed"),
                Err(_) => debug!(%peer, "WebSocket upgrade timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The assumption behind tuning the listener once: accepted sockets carry its settings.
    #[tokio::test]
    async fn listener_tuning_is_inherited() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = Duration::from_secs(37);
        let listening = Listening::new(listener, Some(idle));
        assert_eq!(listening.local, listening.listener.local_addr().ok());
        let addr = listening.listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listening.listener.accept().await.unwrap();
        if !ACCEPTED_SOCKETS_INHERIT {
            tune_socket(socket2::SockRef::from(&accepted), Some(idle));
        }
        let sock = socket2::SockRef::from(&accepted);
        assert!(accepted.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), idle);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(6));
        assert_eq!(accepted.local_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn a_wildcard_listener_asks_each_socket_for_its_address() {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        assert_eq!(Listening::new(listener, None).local, None);
    }
}
