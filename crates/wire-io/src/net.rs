//! TCP for chat connections: [`dial`] and [`bind`].

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How to dial.
#[derive(Debug, Clone, Copy, Default)]
pub struct DialOptions {
    /// The local address to connect from (the load harness spreads sources over 127.0.0.0/8).
    pub from: Option<IpAddr>,
    /// SO_KEEPALIVE: dead-peer detection below the server's own idle rule. Best effort: a
    /// failure to set it does not fail the dial.
    pub keepalive: bool,
}

/// Connects to `addr` with TCP_NODELAY set (chat stanzas are small and latency-bound).
pub async fn dial(addr: SocketAddr, options: DialOptions) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = options.from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    if options.keepalive {
        let _ = socket.set_keepalive(true);
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Binds a listener with a deep backlog: reconnect storms arrive as bursts of SYNs, and the
/// default of 128 drops them into 1 s SYN retransmits.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dials_from_the_given_address_with_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let from = "127.0.0.2".parse().unwrap();
        let stream = dial(addr, DialOptions { from: Some(from), keepalive: true }).await.unwrap();
        assert!(stream.nodelay().unwrap());
        assert_eq!(stream.local_addr().unwrap().ip(), from);
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), from);
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error() {
        let addr = bind("127.0.0.1:0".parse().unwrap()).unwrap().local_addr().unwrap();
        assert!(dial(addr, DialOptions::default()).await.is_err());
    }
}
