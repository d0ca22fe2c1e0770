//! The PROXY protocol header the proxy writes before the `WA` header (invariant 3: the client's
//! IP on every upstream connection), sans-IO.
//!
//! v1 is the default because WhatsApp's own proxy sends it (HAProxy `send-proxy`):
//! `PROXY TCP4 <client ip> <proxy ip> <client port> <proxy port>\r\n`. v2 is the binary form
//! (`send-proxy-v2`). Both name the client as the source and the proxy's edge address (where the
//! client connected) as the destination, as HAProxy does.
//!
//! The two addresses must be of one family. IPv4-mapped IPv6 addresses (a dual-stack listener's
//! view of an IPv4 client) are first turned back into IPv4; if the families still differ, the
//! IPv4 one is written as IPv4-mapped IPv6 and the header uses TCP6.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::v2;

/// Which PROXY header, if any, precedes the `WA` header on upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// Text header, as WhatsApp's proxy sends (the default).
    #[default]
    V1,
    /// Binary header.
    V2,
    /// No header: chatd sees the proxy's own address. Only for upstreams that do not expect one.
    None,
}

/// Appends the header for a client at `client` that reached the proxy at `proxy` to `out`.
/// Writes nothing for [`ProxyProtocol::None`].
pub fn write(protocol: ProxyProtocol, client: SocketAddr, proxy: SocketAddr, out: &mut Vec<u8>) -> io::Result<()> {
    let (src, dst) = same_family(client, proxy);
    match protocol {
        ProxyProtocol::None => Ok(()),
        ProxyProtocol::V1 => {
            use std::io::Write as _;
            // ppp's `Display` writes the whole line, CRLF included.
            write!(out, "{}", ppp::v1::Addresses::from((src, dst)))
        }
        ProxyProtocol::V2 => {
            let header =
                v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, (src, dst))
                    .build()?;
            out.extend_from_slice(&header);
            Ok(())
        }
    }
}

/// Both addresses in one family (see the module docs).
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canon(a), canon(b));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() { (a, b) } else { (v6(a), v6(b)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v1(client: &str, proxy: &str) -> String {
        let mut out = Vec::new();
        write(ProxyProtocol::V1, addr(client), addr(proxy), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn v1_is_haproxys_line_and_parses_back() {
        let line = v1("203.0.113.7:40000", "10.0.0.1:5222");
        assert_eq!(line, "PROXY TCP4 203.0.113.7 10.0.0.1 40000 5222\r\n");
        let parsed = ppp::v1::Header::try_from(line.as_str()).unwrap();
        assert_eq!(parsed.addresses, ppp::v1::Addresses::from((addr("203.0.113.7:40000"), addr("10.0.0.1:5222"))));

        let line = v1("[2001:db8::7]:40000", "[2001:db8::1]:443");
        assert_eq!(line, "PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n");
        assert!(ppp::v1::Header::try_from(line.as_str()).is_ok());
    }

    #[test]
    fn mapped_and_mixed_families() {
        // A dual-stack listener reports an IPv4 client as ::ffff:a.b.c.d.
        assert_eq!(
            v1("[::ffff:198.51.100.2]:1000", "[::ffff:10.0.0.1]:443"),
            "PROXY TCP4 198.51.100.2 10.0.0.1 1000 443\r\n"
        );
        assert_eq!(
            v1("198.51.100.2:1000", "[2001:db8::1]:443"),
            "PROXY TCP6 ::ffff:198.51.100.2 2001:db8::1 1000 443\r\n"
        );
    }

    #[test]
    fn v2_parses_back_with_the_client_as_source() {
        for (client, proxy) in [("203.0.113.7:40000", "10.0.0.1:5222"), ("[2001:db8::7]:1", "[2001:db8::1]:2")] {
            let mut out = Vec::new();
            write(ProxyProtocol::V2, addr(client), addr(proxy), &mut out).unwrap();
            assert_eq!(&out[..12], b"\r\n\r\n\0\r\nQUIT\n");
            let parsed = v2::Header::try_from(&out[..]).unwrap();
            assert_eq!(parsed.command, v2::Command::Proxy);
            assert_eq!(parsed.addresses, v2::Addresses::from((addr(client), addr(proxy))));
            assert_eq!(parsed.len(), out.len());
        }
    }

    #[test]
    fn none_writes_nothing() {
        let mut out = vec![1];
        write(ProxyProtocol::None, addr("1.2.3.4:5"), addr("5.6.7.8:9"), &mut out).unwrap();
        assert_eq!(out, [1]);
    }
}
