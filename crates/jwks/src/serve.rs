//! A minimal HTTP or HTTPS endpoint that serves one [`SigningKeys`]' JWKS: for tests and small tools that
//! need a JWKS URL without a full server (the chatd simulator's push key, a fake Partner).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use error_report::Report;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::SigningKeys;
use tls_config::{ReloadableCert, TlsError};

/// Time a client gets to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; a JWKS endpoint sees a handful of verifiers, not a crowd.
const MAX_CONNECTIONS: usize = 256;

/// Serves `GET {path}` with the JWKS of a [`SigningKeys`] (which may rotate meanwhile) over
/// HTTP/1.1 and HTTP/2 (prior knowledge); everything else gets 404/405.
#[derive(Debug)]
pub struct JwksServer;

/// A running [`JwksServer`]. Dropping it without [`shutdown`](Self::shutdown) stops it too (the
/// accept task is aborted), but only `shutdown` waits until the port is released.
pub struct RunningJwksServer {
    local_addr: SocketAddr,
    path: String,
    scheme: &'static str,
    requests: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningJwksServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningJwksServer").field("url", &self.url()).field("requests", &self.requests()).finish()
    }
}

impl JwksServer {
    /// Bind `addr` (port 0 picks one) and serve the JWKS of `keys` at `path` (e.g.
    /// `/.well-known/jwks`).
    pub async fn start(addr: SocketAddr, path: &str, keys: Arc<SigningKeys>) -> io::Result<RunningJwksServer> {
        Self::start_inner(addr, path, keys, None).await
    }

    /// Like [`start`](Self::start), over TLS 1.3 with `cert` (ALPN `h2`, `http/1.1`).
    pub async fn start_tls(
        addr: SocketAddr,
        path: &str,
        keys: Arc<SigningKeys>,
        cert: &Arc<ReloadableCert>,
    ) -> io::Result<RunningJwksServer> {
        let acceptor = cert.http_acceptor().map_err(|e: TlsError| io::Error::other(e))?;
        Self::start_inner(addr, path, keys, Some(acceptor)).await
    }

    async fn start_inner(
        addr: SocketAddr,
        path: &str,
        keys: Arc<SigningKeys>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<RunningJwksServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(accept_loop(listener, path.to_owned(), keys, requests.clone(), tls, stop_rx));
        Ok(RunningJwksServer { local_addr, path: path.to_owned(), scheme, requests, stop, task: Some(task) })
    }
}

impl RunningJwksServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://{addr}{path}`, or `https://` when started with TLS.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.local_addr, self.path)
    }

    /// JWKS requests served (GETs of the JWKS path) so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stop accepting, close every open connection at once (a verifier's pooled keep-alive
    /// connection included, so the server really is gone), and wait until the port is free.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningJwksServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    path: String,
    keys: Arc<SigningKeys>,
    requests: Arc<AtomicU64>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let path: Arc<str> = path.into();
    loop {
        // Reap finished connections so the set stays bounded by the live ones.
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE; back off briefly instead of spinning.
                tracing::warn!(error = %Report(&e), "JWKS server accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let (path, keys, requests) = (path.clone(), keys.clone(), requests.clone());
        let service = hyper::service::service_fn(move |req| {
            let response = respond(&req, &path, &keys, &requests);
            async move { Ok::<_, Infallible>(response) }
        });
        let mut stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let served = async {
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %Report(&e), "JWKS server: TLS handshake failed"),
                            Err(_) => tracing::debug!("JWKS server: TLS handshake timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                _ = served => {}
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
        });
    }
    // Dropping the listener frees the port; aborting the connections closes their sockets.
    drop(listener);
    connections.shutdown().await;
}

fn respond(req: &Request<Incoming>, path: &str, keys: &SigningKeys, requests: &AtomicU64) -> Response<Full<Bytes>> {
    let (status, body) = if req.uri().path() != path {
        (StatusCode::NOT_FOUND, Bytes::from_static(br#"{"error":"not_found"}"#))
    } else if req.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, Bytes::from_static(br#"{"error":"method_not_allowed"}"#))
    } else {
        requests.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, Bytes::from(keys.jwks().to_string()))
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    response
}
