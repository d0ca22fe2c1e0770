//! The chat listeners: raw TCP (optionally behind a PROXY header) and WebSocket at `/ws/chat`.

pub mod conn;
pub mod fanout;
pub mod handler;
pub mod intro;
pub mod login;

use std::net::SocketAddr;
use std::sync::Arc;

use error_report::Report;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tracing::{debug, warn};

use crate::auth::TokenVerifier;
use crate::sim::Sim;

/// Accepts TCP chat connections until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, sim: Arc<Sim>, verifier: Arc<dyn TokenVerifier>) {
    let slots = Arc::new(Semaphore::new(sim.config.limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                warn!(error = %Report(&e), "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "connection limit reached; refusing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (sim, verifier) = (Arc::clone(&sim), Arc::clone(&verifier));
        tokio::spawn(async move {
            conn::serve(sim, verifier, stream, peer).await;
            drop(permit);
        });
    }
}

/// Largest WebSocket message accepted (a frame can be 16 MiB, plus its header).
const WS_MAX_MESSAGE: usize = 17 << 20;

/// Accepts WebSocket chat connections on `/ws/chat`. Binary messages carry the same byte stream
/// as TCP, cut anywhere.
pub async fn serve_ws(listener: TcpListener, sim: Arc<Sim>, verifier: Arc<dyn TokenVerifier>) {
    let slots = Arc::new(Semaphore::new(sim.config.limits.max_connections));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let (sim, verifier) = (Arc::clone(&sim), Arc::clone(&verifier));
        tokio::spawn(async move {
            if let Err(e) = serve_ws_conn(stream, peer, sim, verifier).await {
                debug!(%peer, error = %Report(&e), "websocket connection ended");
            }
            drop(permit);
        });
    }
}

async fn serve_ws_conn(
    stream: TcpStream,
    peer: SocketAddr,
    sim: Arc<Sim>,
    verifier: Arc<dyn TokenVerifier>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let _ = stream.set_nodelay(true);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config)).await?;
    // Bridge the message stream to a byte stream for the shared connection driver.
    let (app, bridge) = tokio::io::duplex(64 * 1024);
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut bridge_rx, mut bridge_tx) = tokio::io::split(bridge);
    let inbound = async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(data) if bridge_tx.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = bridge_tx.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match bridge_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    let (inbound, outbound) = (tokio::spawn(inbound), tokio::spawn(outbound));
    conn::serve(sim, verifier, app, peer).await;
    // The driver dropped its end: the outbound pump drains and closes the WebSocket; the inbound
    // pump may be waiting on a silent client, so it is stopped rather than awaited.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), outbound).await;
    inbound.abort();
    Ok(())
}

/// Accepts the upgrade only on `/ws/chat`.
// The signature is tungstenite's header-callback contract, large error type included.
#[allow(clippy::result_large_err)]
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/ws/chat" {
        Ok(resp)
    } else {
        let mut not_found = ErrorResponse::new(Some("not found".into()));
        *not_found.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
        Err(not_found)
    }
}
