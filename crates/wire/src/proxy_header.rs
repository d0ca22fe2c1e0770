//! The PROXY protocol header that carries a client's address ahead of a connection: written by
//! the proxy before the `WA` header (invariant 3: the client's IP on every upstream connection),
//! read by the simulator and by the proxy's edge behind a load balancer. Sans-IO.
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

/// Largest header accepted: a v1 line is at most 107 bytes; v2 address blocks with TLVs beyond
/// this are refused rather than buffered.
pub const MAX_LEN: usize = 1024;

/// Longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;

/// What the start of a connection holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes; `source` is the client's address (`None` for v1 `UNKNOWN`
    /// and v2 `LOCAL`).
    Header { len: usize, source: Option<SocketAddr> },
}

/// The bytes are not a PROXY protocol header (v1 or v2), or it is longer than [`MAX_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid PROXY protocol header")]
pub struct InvalidHeader;

/// Parses a PROXY v1 or v2 header at the start of `buf`, incrementally: call again with more
/// bytes while it answers `Incomplete`. Never guesses: anything else is [`InvalidHeader`].
pub fn parse(buf: &[u8]) -> Result<Parsed, InvalidHeader> {
    // A v1 line is judged only once its CRLF is in: ppp calls some prefixes of a valid line
    // invalid (a line cut after its source port, say).
    let mut buf = buf;
    if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        match buf.windows(2).position(|w| w == b"\r\n") {
            Some(end) => buf = &buf[..end + 2],
            None if buf.len() < V1_MAX => return Ok(Parsed::Incomplete),
            None => return Err(InvalidHeader),
        }
    }
    let parsed = ppp::HeaderResult::parse(buf);
    if ppp::PartialResult::is_incomplete(&parsed) {
        return if buf.len() >= MAX_LEN { Err(InvalidHeader) } else { Ok(Parsed::Incomplete) };
    }
    let (len, source) = match parsed {
        ppp::HeaderResult::V1(Ok(h)) => (
            h.header.len(),
            match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v1::Addresses::Unknown => None,
            },
        ),
        ppp::HeaderResult::V2(Ok(h)) => {
            validate_tlvs(&h)?;
            let ip = matches!(h.addresses, v2::Addresses::IPv4(_) | v2::Addresses::IPv6(_));
            if h.command == v2::Command::Proxy && ip && h.protocol == v2::Protocol::Datagram {
                // A UDP client's address on a TCP connection: not a header a load balancer sends.
                return Err(InvalidHeader);
            }
            (
                h.len(),
                match (h.command, h.protocol, h.addresses) {
                    (v2::Command::Local, _, _) | (_, v2::Protocol::Unspecified, _) => None,
                    (_, _, v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    (_, _, v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    _ => None,
                },
            )
        }
        _ => return Err(InvalidHeader),
    };
    if len > MAX_LEN {
        return Err(InvalidHeader);
    }
    Ok(Parsed::Header { len, source })
}

/// v2 TLV types with a defined shape (the specification's `PP2_TYPE_*`).
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_CRC32C: u8 = 0x03;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
const PP2_TYPE_SSL: u8 = 0x20;
/// The longest `PP2_TYPE_UNIQUE_ID` value the specification allows.
const UNIQUE_ID_MAX: usize = 128;

/// Checks the TLVs after a v2 header's addresses: they must tile the rest of the header exactly
/// (no TLV running past the header's end, no leftover bytes), and the types with a defined shape
/// must have it: `CRC32C` 4 bytes and matching the header, `AUTHORITY` UTF-8, `UNIQUE_ID` at most
/// 128 bytes, `SSL` a client byte, a 4-byte verify result and well-formed sub-TLVs. Other types
/// (ALPN, NOOP, NETNS, custom ranges) need only be well-formed.
fn validate_tlvs(h: &v2::Header<'_>) -> Result<(), InvalidHeader> {
    let header = h.as_bytes();
    let tlvs = h.tlv_bytes();
    let start = header.len() - tlvs.len();
    for (offset, kind, value) in tlv_walk(tlvs)? {
        match kind {
            PP2_TYPE_CRC32C => {
                let expected: [u8; 4] = value.try_into().map_err(|_| InvalidHeader)?;
                // The checksum covers the whole header with its own value zeroed.
                let at = start + offset + 3;
                let mut copy = header.to_vec();
                copy[at..at + 4].fill(0);
                if crc32c(&copy) != u32::from_be_bytes(expected) {
                    return Err(InvalidHeader);
                }
            }
            PP2_TYPE_AUTHORITY if std::str::from_utf8(value).is_err() => return Err(InvalidHeader),
            PP2_TYPE_UNIQUE_ID if value.len() > UNIQUE_ID_MAX => return Err(InvalidHeader),
            PP2_TYPE_SSL => {
                // client (1 byte), verify (4 bytes), then sub-TLVs.
                let subs = value.get(5..).ok_or(InvalidHeader)?;
                tlv_walk(subs)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// One TLV: its offset in the TLV bytes, its type and its value.
type Tlv<'a> = (usize, u8, &'a [u8]);

/// Each TLV in `bytes`, which they must fill exactly.
fn tlv_walk(bytes: &[u8]) -> Result<Vec<Tlv<'_>>, InvalidHeader> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let head = bytes.get(offset..offset + 3).ok_or(InvalidHeader)?;
        let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
        let value = bytes.get(offset + 3..offset + 3 + len).ok_or(InvalidHeader)?;
        out.push((offset, head[0], value));
        offset += 3 + len;
    }
    Ok(out)
}

/// CRC-32C (Castagnoli), as `PP2_TYPE_CRC32C` uses. Bitwise: headers are at most [`MAX_LEN`]
/// bytes and arrive once per connection.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
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

    #[test]
    fn parse_is_incremental_and_refuses_junk() {
        let mut out = Vec::new();
        write(ProxyProtocol::V2, "[2001:db8::7]:1234".parse().unwrap(), "[::1]:5222".parse().unwrap(), &mut out)
            .unwrap();
        let line = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 5222\r\n".to_vec();
        for header in [line, out] {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut]), Ok(Parsed::Incomplete), "cut {cut}");
            }
            let mut with_rest = header.clone();
            with_rest.extend_from_slice(b"WA\x06\x03");
            let Ok(Parsed::Header { len, source }) = parse(&with_rest) else { panic!("{header:?}") };
            assert_eq!(len, header.len());
            assert!(source.is_some());
        }
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Parsed::Header { len: 15, source: None }));
        for junk in [&b"GET / HTTP/1.1\r\n"[..], b"\x00\x00\x10login", b"WA\x06\x03"] {
            assert_eq!(parse(junk), Err(InvalidHeader), "{junk:?}");
        }
        assert_eq!(parse(&[b'P'; 2000]), Err(InvalidHeader));
    }

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

    /// A v2 PROXY header for 203.0.113.7:40000 with these TLVs (type, value) appended.
    fn v2_with(tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (addr("203.0.113.7:40000"), addr("10.0.0.1:5222")),
        );
        for (kind, value) in tlvs {
            b = b.write_tlv(*kind, value).unwrap();
        }
        b.build().unwrap()
    }

    /// Sets a v2 header's length field to what follows its 16-byte start.
    fn fix_len(h: &mut [u8]) {
        let len = (h.len() - 16) as u16;
        h[14..16].copy_from_slice(&len.to_be_bytes());
    }

    fn source_of(h: &[u8]) -> Result<Parsed, InvalidHeader> {
        parse(h)
    }

    #[test]
    fn crc32c_matches_the_reference_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn v2_tlvs_must_be_well_formed() {
        let good = |h: &[u8]| matches!(source_of(h), Ok(Parsed::Header { len, source: Some(_) }) if len == h.len());
        // Well-formed TLVs of every defined shape are accepted.
        let mut ssl = vec![0x01, 0, 0, 0, 0];
        ssl.extend_from_slice(&[0x21, 0x00, 0x07]);
        ssl.extend_from_slice(b"TLSv1.3");
        let ok = v2_with(&[
            (0x01, b"h2"),
            (0x02, b"lb.example"),
            (0x04, &[0; 3]),
            (0x05, &[7; 128]),
            (0x20, &ssl),
            (0xE0, b"x"),
        ]);
        assert!(good(&ok), "{:?}", source_of(&ok));
        assert!(good(&v2_with(&[])));

        // A CRC32C TLV that matches the header is accepted; a wrong one is refused.
        let mut crc = v2_with(&[(0x03, &[0; 4])]);
        let sum = crc32c(&crc);
        let at = crc.len() - 4;
        crc[at..].copy_from_slice(&sum.to_be_bytes());
        assert!(good(&crc));
        crc[at] ^= 1;
        assert_eq!(source_of(&crc), Err(InvalidHeader), "wrong checksum");

        let refused: Vec<(&str, Vec<u8>)> = vec![
            ("a TLV whose length runs past the header's end", {
                let mut h = v2_with(&[(0x04, &[1, 2, 3])]);
                let at = h.len() - 5;
                h[at..at + 2].copy_from_slice(&9u16.to_be_bytes());
                h
            }),
            ("two bytes left over after the TLVs", {
                let mut h = v2_with(&[(0x04, &[1])]);
                h.extend_from_slice(&[0x04, 0x00]);
                fix_len(&mut h);
                h
            }),
            ("one byte where a TLV should start", {
                let mut h = v2_with(&[]);
                h.push(0x04);
                fix_len(&mut h);
                h
            }),
            ("a CRC32C of 3 bytes", v2_with(&[(0x03, &[0; 3])])),
            ("an AUTHORITY that is not UTF-8", v2_with(&[(0x02, &[0xff, 0xfe])])),
            ("a UNIQUE_ID of 129 bytes", v2_with(&[(0x05, &[7; 129])])),
            ("an SSL TLV shorter than its fixed part", v2_with(&[(0x20, &[1, 0, 0])])),
            ("an SSL sub-TLV running past its parent", v2_with(&[(0x20, &[1, 0, 0, 0, 0, 0x21, 0x00, 0x09, b'T'])])),
            ("a UDP source on a stream connection", {
                v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Proxy,
                    v2::Protocol::Datagram,
                    (addr("203.0.113.7:40000"), addr("10.0.0.1:5222")),
                )
                .build()
                .unwrap()
            }),
        ];
        for (what, h) in &refused {
            assert_eq!(source_of(h), Err(InvalidHeader), "{what}");
            // Still refused with the connection's first bytes after it.
            let mut more = h.clone();
            more.extend_from_slice(b"\x00\x00\x10login");
            assert_eq!(source_of(&more), Err(InvalidHeader), "{what}, then more bytes");
        }

        // An UNSPEC transport carries no usable source: the TCP peer is used.
        let unspec = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Unspecified,
            (addr("203.0.113.7:40000"), addr("10.0.0.1:5222")),
        )
        .build()
        .unwrap();
        assert_eq!(source_of(&unspec), Ok(Parsed::Header { len: unspec.len(), source: None }));

        // A LOCAL header (health check) with a malformed TLV is refused too.
        let mut local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Stream,
            (addr("203.0.113.7:40000"), addr("10.0.0.1:5222")),
        )
        .build()
        .unwrap();
        local.push(0x04);
        fix_len(&mut local);
        assert_eq!(source_of(&local), Err(InvalidHeader));
    }

    #[test]
    fn none_writes_nothing() {
        let mut out = vec![1];
        write(ProxyProtocol::None, addr("1.2.3.4:5"), addr("5.6.7.8:9"), &mut out).unwrap();
        assert_eq!(out, [1]);
    }
}
