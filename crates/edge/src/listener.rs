//! Accept loops for the edge's listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::conn::{EdgeContext, serve_client};

/// Binds a listener with a deep backlog: reconnect storms arrive as bursts of SYNs, and the
/// default of 128 drops them into 1 s SYN retransmits.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The next connection, with TCP_NODELAY set and counted for `listener`. Accept errors (EMFILE
/// when out of descriptors, for one) back off instead of spinning.
async fn accept(listener: &TcpListener, ctx: &EdgeContext, kind: &str) -> (TcpStream, SocketAddr, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                ctx.metrics.connections.with_label_values(&[kind]).inc();
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(peer);
                return (stream, peer, local);
            }
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves plain TCP clients until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, ctx: Arc<EdgeContext>) {
    loop {
        let (stream, peer, local) = accept(&listener, &ctx, "tcp").await;
        tokio::spawn(serve_client(Arc::clone(&ctx), stream, peer, local));
    }
}

/// Serves TLS clients until the task is dropped. The TLS handshake shares the login deadline.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, ctx: Arc<EdgeContext>) {
    loop {
        let (stream, peer, local) = accept(&listener, &ctx, "tls").await;
        let (acceptor, ctx) = (acceptor.clone(), Arc::clone(&ctx));
        tokio::spawn(async move {
            match tokio::time::timeout(ctx.login_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_client(ctx, tls, peer, local).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
