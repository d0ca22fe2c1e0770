//! The admin listener: `/metrics` (Prometheus text), `/livez` (the process serves), `/readyz`
//! (ready to take clients: listeners up and not draining), and `POST /drain` (start draining;
//! accepted only from a loopback peer, else 403).
//!
//! HTTP/1.1 only, and bounded so that it can never hold the descriptors the edge needs: a
//! connection must send each request's headers within [`AdminLimits::header_timeout`] (counted
//! from the connection's start, or from the end of the previous response on a kept-alive
//! connection, so it is also the idle timeout), an answer the client does not read for as long
//! closes the connection, and at most [`AdminLimits::max_connections`] are
//! open at once: beyond that a new connection is closed at once, and counted in
//! `waproxy_admin_connections_refused_total`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use error_report::Report;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, IntCounter, Registry, TextEncoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What the admin endpoints read.
pub struct AdminState {
    pub registry: Registry,
    /// Set once every listener is accepting.
    pub ready: AtomicBool,
    /// Set when the proxy starts draining: readiness flips first.
    pub draining: AtomicBool,
    /// Called before each scrape, to copy counters kept elsewhere into the registry.
    pub before_scrape: Box<dyn Fn() + Send + Sync>,
    /// Cancelled to ask for a drain (`POST /drain`, SIGTERM); the proxy's drain task acts on it.
    pub drain_requested: CancellationToken,
    /// `waproxy_admin_connections_refused_total`: connections closed at once because
    /// [`AdminLimits::max_connections`] were open.
    pub connections_refused: IntCounter,
}

/// How long and how many admin connections may stay (`[admin]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Time to send a request's headers, from the connection's start or the previous response's
    /// end: closes idle, silent and half-sent connections.
    pub header_timeout: Duration,
    /// Admin connections open at once; a new one beyond this is closed at once.
    pub max_connections: usize,
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(content_type));
    r
}

fn handle(state: &AdminState, req: &Request<hyper::body::Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/drain") => {
            if !peer.ip().to_canonical().is_loopback() {
                warn!(%peer, "POST /drain refused: not from loopback");
                return text(StatusCode::FORBIDDEN, "drain is accepted from loopback only\n", "text/plain");
            }
            if !state.drain_requested.is_cancelled() {
                info!(%peer, "drain requested over the admin listener");
            }
            state.drain_requested.cancel();
            text(StatusCode::ACCEPTED, "draining\n", "text/plain")
        }
        (_, "/drain") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n", "text/plain"),
        (&Method::GET, "/metrics") => {
            (state.before_scrape)();
            let mut out = Vec::new();
            match TextEncoder::new().encode(&state.registry.gather(), &mut out) {
                Ok(()) => text(StatusCode::OK, out, "text/plain; version=0.0.4"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, Report(&e).to_string(), "text/plain"),
            }
        }
        (&Method::GET, "/livez") => text(StatusCode::OK, "ok\n", "text/plain"),
        (&Method::GET, "/readyz") => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", "text/plain")
            } else if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n", "text/plain")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n", "text/plain")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, limits: AdminLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            state.connections_refused.inc();
            debug!(%peer, max = limits.max_connections, "admin connection limit reached; closing");
            drop(stream);
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let response = handle(&state, &req, peer);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let io = WriteStallGuard { inner: stream, limit: limits.header_timeout, stalled: None };
            if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
                debug!(%peer, error = %Report(&e), "admin connection ended");
            }
        });
    }
}

/// Fails a write (or flush) that has made no progress for `limit`: a client that sends requests
/// and never reads the answers would otherwise hold its connection, and its slot, for ever.
struct WriteStallGuard<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStallGuard<S> {
    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStallGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStallGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.on_write(cx, r)
    }
}
