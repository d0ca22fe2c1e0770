//! One chat connection: intro, Noise handshake, login, then stanzas both ways until either side
//! ends it.
//!
//! The handshake is whichever the client starts: XX; IK when its `static` opens under the
//! simulator's key (the ServerHello then carries no `static`, its payload is the certificate
//! chain, and no ClientFinish follows); XXfallback when it does not (the client cached another
//! key: the XX ServerHello, then a ClientFinish). All three end in the same client key, payload
//! and transport, so [`login::check`] decides every login the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use error_report::Report;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Framed;
use tracing::{debug, info};
use wire::decode::Decoder;
use wire::frame::FrameCodec;
use wire::noise::{ClientFinished, Flavour, HandshakePattern, ServerStart, Transport, accept_client_hello};
use wire::proto::ClientPayload;
use wire::{Node, Value};

use super::handler::Handler;
use super::intro::{IntroError, read_intro};
use super::login;
use crate::auth::TokenVerifier;
use crate::sim::{Control, LiveConn, ObservedGuard, Sim};

/// Why a connection ended before or outside the normal flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    #[error("intro")]
    Intro(#[from] IntroError),
    #[error("frame")]
    Frame(#[from] wire::frame::FrameError),
    #[error("noise")]
    Noise(#[from] wire::noise::NoiseError),
    #[error("handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    #[error("peer closed during the handshake")]
    ClosedInHandshake,
    #[error("login payload is not a ClientPayload")]
    Payload(#[from] prost::DecodeError),
    #[error("encoding a reply")]
    Encode(#[from] wire::encode::EncodeError),
}

type Conn<S> = Framed<S, FrameCodec>;

/// Serves one accepted connection to the end.
pub async fn serve<S>(sim: Arc<Sim>, verifier: Arc<dyn TokenVerifier>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    sim.totals.connections_accepted.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = serve_inner(&sim, verifier.as_ref(), stream, peer).await {
        sim.totals.handshakes_failed.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, error = %Report(&e), "connection ended");
    }
}

async fn serve_inner<S>(
    sim: &Arc<Sim>,
    verifier: &dyn TokenVerifier,
    mut stream: S,
    peer: SocketAddr,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limit = Duration::from_secs(sim.config.chat.handshake_timeout_secs);
    let handshake = async {
        let intro = read_intro(&mut stream).await?;
        let mut framed = Framed::new(stream, FrameCodec::new());
        let (pattern, finished) = noise_handshake(sim, &mut framed).await?;
        Ok::<_, ConnError>((intro, framed, pattern, finished))
    };
    let (intro, mut framed, pattern, finished) =
        tokio::time::timeout(limit, handshake).await.map_err(|_| ConnError::HandshakeTimeout(limit))??;
    let completed = match pattern {
        HandshakePattern::Xx => &sim.totals.handshakes_xx,
        HandshakePattern::Ik => &sim.totals.handshakes_ik,
        HandshakePattern::XxFallback => &sim.totals.handshakes_xx_fallback,
    };
    completed.fetch_add(1, Ordering::Relaxed);
    let mut transport = finished.transport;
    let payload = ClientPayload::decode(&finished.client_payload[..])?;
    let ip = intro.proxied_source.map(|a| a.ip()).unwrap_or(peer.ip());

    let claimed = login::claimed_account(sim, &payload);
    // Counted out before the socket closes (see `session`), so a proxy that waits for our close
    // before dialling again never overlaps in the observation API.
    let observed = claimed.as_deref().map(|jid| sim.observe_connect(jid, ip));
    match login::check(sim, verifier, &payload, &finished.client_static).await {
        Err(failure) => {
            sim.totals.logins_failed.fetch_add(1, Ordering::Relaxed);
            info!(
                %peer, %ip, account = ?failure.account, reason = failure.reason, why = %failure.why, %pattern,
                "login refused"
            );
            let node = Node::new("failure").attr("reason", failure.reason.to_string());
            send(&mut framed, &mut transport, &node).await?;
            drop(observed);
            close(framed).await;
            Ok(())
        }
        Ok(ok) => {
            sim.totals.logins_ok.fetch_add(1, Ordering::Relaxed);
            info!(
                %peer, %ip, account = %ok.jid, device = ok.device, proxied = intro.proxy_version.is_some(), %pattern,
                "logged in"
            );
            session(sim, framed, transport, (&ok.jid, ok.device), observed).await
        }
    }
}

/// The Noise handshake in whichever pattern the ClientHello starts (see the module docs).
async fn noise_handshake<S>(sim: &Sim, framed: &mut Conn<S>) -> Result<(HandshakePattern, ClientFinished), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = framed.next().await.ok_or(ConnError::ClosedInHandshake)??;
    match accept_client_hello(sim.server_keypair()?, sim.cert_chain.clone(), Flavour::WhatsApp, &hello)? {
        ServerStart::Resumed(resumed) => {
            framed.send(resumed.server_hello).await?;
            Ok((HandshakePattern::Ik, resumed.finished))
        }
        ServerStart::Full(mut responder) => {
            framed.send(responder.server_hello()?).await?;
            let finish = framed.next().await.ok_or(ConnError::ClosedInHandshake)??;
            let pattern = responder.pattern();
            Ok((pattern, responder.read_client_finish(&finish)?))
        }
    }
}

/// Seals and sends one node.
async fn send<S>(framed: &mut Conn<S>, transport: &mut Transport, node: &Node) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(128);
    wire::encode::Encoder::default().encode_payload(node, &mut buf)?;
    send_payload(framed, transport, &buf).await
}

async fn send_payload<S>(framed: &mut Conn<S>, transport: &mut Transport, payload: &[u8]) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(payload.len() + 16);
    buf.extend_from_slice(payload);
    transport.seal(&mut buf)?;
    framed.send(buf).await?;
    Ok(())
}

/// A logged-in device: live registration, offline delivery from its own mailbox, then the stanza
/// loop.
async fn session<S>(
    sim: &Arc<Sim>,
    mut framed: Conn<S>,
    mut transport: Transport,
    (jid, device): (&str, u16),
    observed: Option<ObservedGuard>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let conn_id = sim.next_conn_id();
    let notify = Arc::new(Notify::new());
    let (control_tx, mut control_rx) = mpsc::channel(4);
    let conn = LiveConn { conn_id, notify: Arc::clone(&notify), control: control_tx };
    if let Some(old) = sim.register_live(jid, device, conn) {
        let _ = old.control.try_send(Control::Replaced);
    }
    let now = sim.clock.now();
    let mut queued = 0;
    let mut offline_below = 0;
    let mut lid = String::new();
    sim.store.with(jid, &mut |a| {
        a.last_active = now;
        if let Some(d) = a.devices.get(&device) {
            queued = d.mailbox.len();
            offline_below = d.mailbox.next_seq();
        }
        lid = a.lid();
    });
    let result = async {
        let success =
            Node::new("success").attr("t", now.to_string()).attr("lid", Value::from_text(&lid)).attr("location", "sim");
        send(&mut framed, &mut transport, &success).await?;
        let offline = Node::new("ib").children(vec![Node::new("offline").attr("count", queued.to_string())]);
        send(&mut framed, &mut transport, &offline).await?;
        let mut sent_upto = None;
        let mut decoder = Decoder::default();
        let idle = Duration::from_secs(sim.config.chat.idle_timeout_secs);
        loop {
            sent_upto =
                deliver_pending(sim, (jid, device), &mut framed, &mut transport, sent_upto, offline_below).await?;
            tokio::select! {
                frame = tokio::time::timeout(idle, framed.next()) => {
                    let Ok(Some(frame)) = frame else { return Ok(()) };
                    let mut frame = frame?;
                    let plain = transport.open(&mut frame)?;
                    let node = match decoder.decode_payload(plain) {
                        Ok(node) => node,
                        Err(e) => {
                            debug!(account = %jid, error = %Report(&e), "undecodable stanza dropped");
                            continue;
                        }
                    };
                    let outcome = Handler { sim, jid, device }.handle(node);
                    for reply in &outcome.replies {
                        send(&mut framed, &mut transport, reply).await?;
                    }
                    if outcome.close {
                        return Ok(());
                    }
                }
                _ = notify.notified() => {}
                control = control_rx.recv() => {
                    let node = match control {
                        Some(Control::Replaced) | None => Node::new("stream:error")
                            .children(vec![Node::new("conflict").attr("type", "replaced")]),
                        Some(Control::Removed) => Node::new("stream:error").attr("code", "401"),
                    };
                    send(&mut framed, &mut transport, &node).await?;
                    return Ok(());
                }
            }
        }
    }
    .await;
    sim.unregister_live(jid, device, conn_id);
    // Count the connection out before the socket closes: the peer may act on our close at once.
    drop(observed);
    close(framed).await;
    result
}

/// How long a close waits for the peer's own (see [`wire_io::close`]).
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Closes so that the last stanza arrives: FIN, then the peer's close awaited. Every stanza was
/// flushed by its `send`, so nothing waits in the codec's buffer.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut framed: Conn<S>) {
    wire_io::close::close(framed.get_mut(), CLOSE_LINGER).await;
}

/// Sends the device's mailbox entries newer than `sent_upto`; returns the new high-water mark. Entries stay in
/// the mailbox until the client acks them (or sends a receipt for a message). Entries queued
/// before this login (`seq < offline_below`) carry `offline="1"`, as WhatsApp marks stanzas
/// delivered from the offline queue (§3.7).
async fn deliver_pending<S>(
    sim: &Sim,
    (jid, device): (&str, u16),
    framed: &mut Conn<S>,
    transport: &mut Transport,
    sent_upto: Option<u64>,
    offline_below: u64,
) -> Result<Option<u64>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending = Vec::new();
    sim.store.with(jid, &mut |a| {
        if let Some(d) = a.devices.get(&device) {
            pending = d.mailbox.after(sent_upto).map(|e| (e.seq, e.payload.clone())).collect();
        }
    });
    let mut upto = sent_upto;
    for (seq, payload) in pending {
        match (seq < offline_below).then(|| mark_offline(&payload)).flatten() {
            Some(marked) => send_payload(framed, transport, &marked).await?,
            None => send_payload(framed, transport, &payload).await?,
        }
        upto = Some(seq);
    }
    Ok(upto)
}

/// The stanza with `offline="1"` added; `None` if it cannot be re-encoded (then it goes as it is).
fn mark_offline(payload: &[u8]) -> Option<Vec<u8>> {
    let mut node = wire::decode::decode(payload).ok()?;
    if !node.attrs.iter().any(|(k, _)| k == "offline") {
        node.attrs.push(("offline".into(), Value::Str("1".into())));
    }
    wire::encode::encode(&node).ok()
}
