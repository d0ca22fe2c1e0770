//! The edge's WebSocket path on arbitrary client bytes after the upgrade: tungstenite's framing
//! (server role, the edge's message bounds before or after the login) under
//! `edge::ws::ServerWs`, which turns binary messages back into the frame byte stream; and `client_addr` on arbitrary `Forwarded` /
//! `X-Forwarded-For` values from a trusted peer. An error or bytes, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue};

thread_local! {
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
}

/// `edge.max_frame_size` for the run: 128 KiB, so the pre-login cap (64 KiB + 3) and the
/// logged-in one (128 KiB + 3) differ.
const MAX_FRAME: usize = 128 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let (header, frames) = rest.split_at(usize::from(split).min(rest.len()));

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(header) {
        headers.insert("forwarded", v.clone());
        headers.insert("x-forwarded-for", v);
    }
    let trusted: Vec<edge::cidr::Cidr> = vec!["10.0.0.0/8".parse().expect("cidr")];
    let peer = "10.1.2.3:4000".parse().expect("addr");
    for header in ["x-forwarded-for", "forwarded"] {
        let header = edge::ws::ForwardedHeader::parse(header).expect("header name");
        let _ = edge::ws::client_addr(peer, &headers, &trusted, &header);
    }

    RT.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let mut stream = edge::ws::ServerWs::from_raw(server, MAX_FRAME);
            if split % 2 == 1 {
                stream.logged_in();
            }
            let _ = client.write_all(frames).await;
            let _ = client.shutdown().await;
            let mut buf = [0u8; 4096];
            let read_all = async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read_all).await;
        })
    });
});
