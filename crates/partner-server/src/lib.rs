//! The reference Partner-side HTTP server of the WhatsApp DMA interop offer.
//!
//! It provides what the offer requires of a Partner, for local runs and tests without a real
//! Partner backend:
//!
//! | endpoint | purpose |
//! |---|---|
//! | `GET /.well-known/oauth/openid/jwks` | public keys WhatsApp uses to verify Partner tokens (seed 1.3) |
//! | `POST /oauth/token` | issue a Partner token (JWT) for a user (seed 1.1) |
//! | `POST /admin/rotate-keys` | rotate the signing key |
//! | `POST /push` | receive WhatsApp's push, verified against its JWKS (seed 3.2.2) |
//! | `GET /admin/pushes` | pushes received so far |
//! | `GET /push/wait` | long-poll: wake a sleeping client when a push for it arrives |
//! | `POST /media`, `GET /{storage_reference}` | media hosting (seed 4.1.1) |
//! | `GET /livez` | liveness |
//!
//! HTTPS: with `[tls]` the listener speaks TLS 1.3 only, and HTTP/2 or HTTP/1.1 is chosen by ALPN
//! (the seed requires both of Partner servers); the certificate and key are reloaded without a
//! restart ([`RunningPartnerServer::reload_tls`], SIGHUP in the binary). Plain HTTP (HTTP/1.1 and
//! h2c prior knowledge) only with `plain_http = true`. Run it in-process with
//! [`PartnerServer::start`], or as the `partner-server` binary.
//! See `docs/partner-server.md`.

mod config;
mod http;
mod media;
mod push;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use error_report::Report;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use jwks::{JwksVerifier, SigningKeys};
use tls_config::{ReloadableCert, TlsError};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use config::{
    Config, ConfigError, LimitsConfig, MAX_TOKEN_TTL_SECS, MAX_WAIT_CAP_MS, MediaConfig, PushConfig, Secret, TlsConfig,
};
pub use http::JWKS_PATH;
pub use media::MediaUsage;
pub use push::PushRecord;

use http::AppState;
use media::MediaStore;
use push::Pushes;

/// Listen backlog: connection bursts beyond the default 128 otherwise cost SYN retransmits.
const LISTEN_BACKLOG: u32 = 1024;
/// Time a client gets to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The signing key could not be generated.
    #[error("cannot create the signing key")]
    Keys(#[from] jwks::KeyError),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS certificate")]
    Tls(#[from] TlsError),
}

/// Entry point: see [`PartnerServer::start`].
#[derive(Debug)]
pub struct PartnerServer;

/// A running server. Call [`shutdown`](Self::shutdown) to stop it gracefully; dropping it stops it
/// abruptly.
pub struct RunningPartnerServer {
    local_addr: SocketAddr,
    base_url: String,
    state: Arc<AppState>,
    tls: Option<Arc<ReloadableCert>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningPartnerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningPartnerServer")
            .field("base_url", &self.base_url)
            .field("issuer", &self.state.issuer)
            .field("keys", &self.state.keys)
            .finish_non_exhaustive()
    }
}

impl PartnerServer {
    /// Validate `config`, generate a signing key, bind `config.listen` (port 0 allowed) and serve.
    pub async fn start(config: Config) -> Result<RunningPartnerServer, StartError> {
        config.validate()?;
        let keys = tokio::task::spawn_blocking({
            let n = config.signing_keys_published;
            move || SigningKeys::with_max_published(n)
        })
        .await
        .map_err(|_| jwks::KeyError::Generate)??;
        let tls = match &config.tls {
            Some(files) => Some(ReloadableCert::load(&files.cert, &files.key)?),
            None => None,
        };
        let acceptor = match &tls {
            Some(cert) => Some(cert.http_acceptor()?),
            None => None,
        };
        let listener = bind(config.listen).map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;

        let base_url = match &config.public_base_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let mut shown = local_addr;
                if shown.ip().is_unspecified() {
                    shown.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{shown}")
            }
        };
        let push_verifier = match &config.push.jwks_url {
            // Already validated, so this does not fail; map it anyway instead of unwrapping.
            Some(url) => Some(
                JwksVerifier::new(url, config.push.verifier_config())
                    .map_err(|e| ConfigError::Invalid { key: "push.jwks_url", reason: Report(&e).to_string() })?,
            ),
            None => None,
        };
        let state = Arc::new(AppState {
            issuer: config.issuer.clone().unwrap_or_else(|| base_url.clone()),
            push_audience: config.push.audience.clone().unwrap_or_else(|| base_url.clone()),
            keys: Arc::new(keys),
            push_verifier: RwLock::new(push_verifier),
            pushes: Pushes::new(config.push.history, config.limits.max_pending_users),
            media: MediaStore::new(config.media.max_total_bytes, config.media.max_objects),
            shutdown: CancellationToken::new(),
            config,
        });
        tracing::info!(%base_url, issuer = %state.issuer, kid = %state.keys.current_kid(), tls = tls.is_some(), "partner server listening");
        let task = tokio::spawn(serve(listener, acceptor, state.clone()));
        Ok(RunningPartnerServer { local_addr, base_url, state, tls, task: Some(task) })
    }
}

impl RunningPartnerServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL (`public_base_url`, or `https://{local_addr}` (`http://` without TLS)), no
    /// trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL of this server's JWKS.
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.base_url)
    }

    /// The `iss` of the tokens this server issues.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// The `aud` of the tokens this server issues.
    pub fn audience(&self) -> &str {
        &self.state.config.audience
    }

    /// The `aud` push tokens must carry.
    pub fn push_audience(&self) -> &str {
        &self.state.push_audience
    }

    /// The signing keys (sign tokens directly, rotate, read the JWKS).
    pub fn signing_keys(&self) -> &Arc<SigningKeys> {
        &self.state.keys
    }

    /// The pushes received so far (bounded by `push.history`), oldest first.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.state.pushes.history()
    }

    /// What the media store holds now.
    pub fn media_usage(&self) -> MediaUsage {
        self.state.media.usage()
    }

    /// Point `/push` verification at the pusher's JWKS at run time: for embedders that start this
    /// server before the simulator whose URL it needs. Replaces any previous URL (and its cache).
    pub fn set_push_jwks_url(&self, url: &str) -> Result<(), ConfigError> {
        let verifier = JwksVerifier::new(url, self.state.config.push.verifier_config())
            .map_err(|e| ConfigError::Invalid { key: "push.jwks_url", reason: Report(&e).to_string() })?;
        *self.state.push_verifier.write().unwrap_or_else(PoisonError::into_inner) = Some(verifier);
        Ok(())
    }

    /// Whether the listener serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Re-reads the TLS certificate and key (from `paths` when given, else the files in use)
    /// without a restart: new connections get the new certificate, open ones keep theirs. On
    /// error the old certificate stays. Without TLS there is nothing to reload (`Ok`).
    pub fn reload_tls(&self, paths: Option<(&std::path::Path, &std::path::Path)>) -> Result<(), TlsError> {
        match &self.tls {
            Some(cert) => cert.reload(paths),
            None => Ok(()),
        }
    }

    /// Stop accepting, end long-polls (503), let open requests finish for up to
    /// `limits.shutdown_grace_secs`, then close whatever is left. Returns once the port is released
    /// and every connection is closed.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningPartnerServer {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Arc<AppState>) {
    let limits = &state.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(limits.header_timeout_secs));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .keep_alive_interval(Duration::from_secs(30));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();

    loop {
        while connections.try_join_next().is_some() {}
        // Take a connection slot before accepting, so excess clients wait in the backlog instead of
        // being accepted and starved.
        let permit = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually fd exhaustion: pause rather than spin.
                    tracing::warn!(error = %Report(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let state = state.clone();
            hyper::service::service_fn(move |req| http::handle(state.clone(), req))
        };
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        connections.spawn(async move {
            // The TLS handshake runs in the connection's task, bounded, so a slow client holds
            // only its own slot. The protocol is the one ALPN chose: the auto builder reads the
            // HTTP/2 preface when the client picked h2.
            let result = match tls {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %Report(&e), "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %Report(e.as_ref()), "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = Duration::from_secs(state.config.limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them");
    }
    connections.shutdown().await;
    tracing::info!("partner server stopped");
}
