//! A stand-in for WhatsApp's side of the interop: the chat server (chatd) and the enlistment API.
//!
//! It is the proxy's embedded default upstream and its conformance oracle: besides speaking the
//! protocol it reports what it saw (connections per account, client IPs, the most concurrent
//! connections an account ever had) on an observation API. Start it in-process with
//! [`ChatdSim::start`], or run the `chatd-sim` binary.

pub mod account;
pub mod auth;
pub mod chat;
pub mod clock;
pub mod config;
pub mod enlist;
pub mod http;
pub mod media;
pub mod privacy;
pub mod push;
pub mod sim;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tls_config::{ReloadableCert, TlsError};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use auth::{JwksTokenVerifier, TokenVerifier};
pub use clock::{Clock, ShiftedClock};
pub use config::Config;
pub use sim::Sim;

/// Why the simulator did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("binding {what} on {addr}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("config")]
    Config(#[from] config::ConfigError),
    #[error("keys")]
    Keys(#[from] sim::KeyError),
    #[error("push signing keys")]
    PushKeys(#[from] jwks::KeyError),
    #[error("TLS")]
    Tls(#[from] TlsError),
}

/// The simulator, not yet started.
pub struct ChatdSim;

/// A running simulator; dropping it (or [`RunningSim::shutdown`]) stops every task.
pub struct RunningSim {
    pub sim: Arc<Sim>,
    /// The clock the admin API and tests can move.
    pub clock: Arc<ShiftedClock>,
    pub chat_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    /// The HTTP listener's certificate, with `[http.tls]`.
    pub tls: Option<Arc<ReloadableCert>>,
    tasks: JoinSet<()>,
}

impl RunningSim {
    /// `https://{http_addr}` (`http://` without `[http.tls]`).
    pub fn http_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }

    /// Re-reads the HTTP listener's certificate and key (new connections get them); on error the
    /// old pair stays. Without TLS there is nothing to reload.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        self.tls.as_ref().map_or(Ok(()), |cert| cert.reload(None))
    }

    /// The root public key clients must trust for this simulator's certificate chain.
    pub fn root_public_key(&self) -> [u8; 32] {
        self.sim.root_public
    }

    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    wire_io::net::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

impl ChatdSim {
    /// Binds the listeners and starts serving with the JWKS-backed token verifier.
    pub async fn start(config: Config) -> Result<RunningSim, StartError> {
        let mut verifier_config = config.tokens.verifier_config();
        verifier_config.tls = config.http.partner_tls();
        let verifier = Arc::new(JwksTokenVerifier::new(verifier_config));
        Self::start_with(config, verifier).await
    }

    /// Like [`ChatdSim::start`] with a chosen token verifier.
    pub async fn start_with(mut config: Config, verifier: Arc<dyn TokenVerifier>) -> Result<RunningSim, StartError> {
        config.validate()?;
        let tls = match &config.http.tls {
            Some(files) => Some(ReloadableCert::load(&files.cert, &files.key)?),
            None => None,
        };
        let acceptor = match &tls {
            Some(cert) => Some(cert.http_acceptor()?),
            None => None,
        };
        // Push, Partner JWKS and Partner media: HTTPS verified against the platform's roots and
        // http.partner_ca_file, TLS 1.3 preferred, HTTP/2 where the Partner offers it.
        let partner_client = tls_config::https_client(&config.http.partner_tls())?;
        let chat = bind("chat listener", config.chat.listen).await?;
        let ws = match config.chat.ws_listen {
            Some(addr) => Some(bind("websocket listener", addr).await?),
            None => None,
        };
        let http = bind("http listener", config.http.listen).await?;
        let local = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        let (chat_addr, http_addr) = (local(&chat), local(&http));
        let ws_addr = ws.as_ref().map(local);
        let scheme = if tls.is_some() { "https" } else { "http" };
        config.http.public_url.get_or_insert_with(|| format!("{scheme}://{http_addr}"));

        let clock = Arc::new(ShiftedClock::default());
        let store = Arc::new(store::MemoryStore::new(config.limits.max_accounts));
        let (push_tx, push_rx) = tokio::sync::mpsc::channel(4096);
        let sim = Arc::new(Sim::new(config, store, Arc::clone(&clock) as Arc<dyn Clock>, push_tx)?);
        let push_keys = Arc::new(jwks::SigningKeys::generate()?);

        let mut tasks = JoinSet::new();
        tasks.spawn(chat::serve_tcp(chat, Arc::clone(&sim), Arc::clone(&verifier)));
        if let Some(ws) = ws {
            tasks.spawn(chat::serve_ws(ws, Arc::clone(&sim), Arc::clone(&verifier)));
        }
        let state = Arc::new(http::HttpState {
            sim: Arc::clone(&sim),
            verifier,
            push_keys: Arc::clone(&push_keys),
            media: media::MediaStore::new(sim.config.http.max_body_bytes.saturating_mul(16)),
            clock: Some(Arc::clone(&clock)),
            client: partner_client.clone(),
        });
        tasks.spawn(http::serve(http, acceptor, state));
        tasks.spawn(push::run(Arc::clone(&sim), push_keys, partner_client, push_rx));
        let sweeper = Arc::clone(&sim);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                sweeper.sweep();
            }
        });
        Ok(RunningSim { sim, clock, chat_addr, ws_addr, http_addr, tls, tasks })
    }
}
