//! The interop proxy: edge listeners for Partner clients, one Noise-authenticated chatd session
//! per online client, client IP forwarded, ciphertext untouched, Prometheus metrics.
//!
//! [`start`] wires the parts together: the edge (`edge` crate), the session layer (`session`
//! crate) and the admin listener. With `embedded = true` it first starts the chatd simulator and
//! the partner server in-process and points the proxy at them.

pub mod admin;
pub mod config;
pub mod demo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chatd_sim::{ChatdSim, RunningSim};
use edge::auth::{AuthConfig, Authenticator};
use edge::conn::EdgeContext;
use edge::metrics::EdgeMetrics;
use partner_server::{PartnerServer, RunningPartnerServer};
use session::{ProxyProtocol, RelayConfig, SessionContext, SessionMetrics, UpstreamConfig};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::warn;

use crate::admin::AdminState;
use crate::config::{Config, ProxyProtocolVersion};

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("config: {0}")]
    Config(#[from] config::ConfigError),
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] edge::tls::TlsError),
    #[error("auth: {0}")]
    Auth(#[from] jwks::ConfigError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("embedded simulator: {0}")]
    Simulator(#[from] chatd_sim::StartError),
    #[error("embedded partner server: {0}")]
    Partner(#[from] partner_server::StartError),
    #[error("embedded partner server: {0}")]
    PartnerConfig(#[from] partner_server::ConfigError),
}

/// The in-process WhatsApp side and Partner server of the embedded default.
pub struct Embedded {
    pub sim: RunningSim,
    pub partner: RunningPartnerServer,
}

/// A running proxy. Dropping it stops every task.
pub struct RunningProxy {
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub context: Arc<EdgeContext>,
    pub admin: Arc<AdminState>,
    /// Present with `embedded = true`.
    pub embedded: Option<Embedded>,
    tasks: JoinSet<()>,
}

impl RunningProxy {
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        if let Some(e) = self.embedded.take() {
            e.sim.shutdown().await;
            e.partner.shutdown().await;
        }
    }
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    edge::listener::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

/// Starts the simulator and the partner server on loopback, knowing each other.
async fn start_embedded() -> Result<Embedded, StartError> {
    let partner = PartnerServer::start(partner_server::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await?;
    let mut sim_config = chatd_sim::Config::local();
    sim_config.integrators.push(chatd_sim::config::IntegratorConfig {
        id: 1,
        base_url: partner.base_url().to_owned(),
        issuer: partner.issuer().to_owned(),
        audience: partner.audience().to_owned(),
    });
    let sim = ChatdSim::start(sim_config).await?;
    partner.set_push_jwks_url(&format!("{}/.well-known/jwks", sim.http_url()))?;
    Ok(Embedded { sim, partner })
}

/// Starts the proxy.
pub async fn start(mut config: Config) -> Result<RunningProxy, StartError> {
    config.validate()?;
    let embedded = if config.embedded { Some(start_embedded().await?) } else { None };
    if let Some(e) = &embedded {
        config.upstream.get_or_insert(config::UpstreamConfig {
            addr: e.sim.chat_addr.to_string(),
            proxy_protocol: ProxyProtocolVersion::V1,
            root_public_key: Some(hex::encode(e.sim.root_public_key())),
            connect_timeout_ms: 5_000,
            handshake_timeout_ms: 10_000,
        });
        config.auth.get_or_insert(config::AuthConfig {
            jwks_url: e.partner.jwks_url(),
            issuer: e.partner.issuer().to_owned(),
            audience: e.partner.audience().to_owned(),
            account_claim: "wa_account".into(),
            jwks_refresh_secs: 300,
            jwks_min_refetch_secs: 1,
        });
    }
    let (Some(upstream), Some(auth)) = (config.upstream.clone(), config.auth.clone()) else {
        return Err(config::ConfigError::Invalid { key: "upstream", message: "missing".into() }.into());
    };
    let root = config.root_public_key().ok_or(config::ConfigError::Invalid {
        key: "upstream.root_public_key",
        message: "must be 64 hex characters".into(),
    })?;
    let proxy_protocol = match upstream.proxy_protocol {
        ProxyProtocolVersion::V1 => ProxyProtocol::V1,
        ProxyProtocolVersion::V2 => ProxyProtocol::V2,
        ProxyProtocolVersion::None => {
            warn!("upstream.proxy_protocol = \"none\": chatd will see the proxy's address, not the client's");
            ProxyProtocol::None
        }
    };

    let registry = prometheus::Registry::new();
    let metrics = EdgeMetrics::register(&registry)?;
    let session_metrics = SessionMetrics::register(&registry)?;
    let build_info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("waproxy_build_info", "Build information; the value is always 1."),
        &["version"],
    )?;
    build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(build_info))?;

    let authenticator = Authenticator::new(AuthConfig {
        jwks_url: auth.jwks_url.clone(),
        issuer: auth.issuer.clone(),
        audience: auth.audience.clone(),
        account_claim: auth.account_claim.clone(),
        verifier: jwks::VerifierConfig {
            refresh_interval: Duration::from_secs(auth.jwks_refresh_secs.max(1)),
            min_refetch_interval: Duration::from_secs(auth.jwks_min_refetch_secs.max(1)),
            ..jwks::VerifierConfig::default()
        },
    })?;
    // The address is resolved at each dial; this one only seeds the shared settings.
    let mut upstream_cfg = UpstreamConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), root);
    upstream_cfg.proxy_protocol = proxy_protocol;
    upstream_cfg.connect_timeout = Duration::from_millis(upstream.connect_timeout_ms);
    upstream_cfg.handshake_timeout = Duration::from_millis(upstream.handshake_timeout_ms);
    let relay = RelayConfig {
        max_frame_len: config.edge.max_frame_size,
        max_buffered_bytes: config.session.max_buffered_bytes,
        idle_timeout: Duration::from_secs(config.session.idle_timeout_secs),
        ..RelayConfig::default()
    };
    let context = Arc::new(EdgeContext {
        auth: authenticator,
        upstream_host: upstream.addr.clone(),
        session: SessionContext::new(upstream_cfg, relay, session_metrics),
        metrics: metrics.clone(),
        login_timeout: config.login_timeout(),
        max_frame_size: config.edge.max_frame_size,
        session_slots: Arc::new(Semaphore::new(config.limits.max_sessions)),
    });

    let mut tasks = JoinSet::new();
    let mut tcp_addr = None;
    if let Some(addr) = config.edge.listen {
        let listener = bind("edge listener", addr)?;
        tcp_addr = listener.local_addr().ok();
        tasks.spawn(edge::listener::serve_tcp(listener, Arc::clone(&context)));
    }
    let mut tls_addr = None;
    if let Some(tls) = &config.edge.tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(edge::tls::server_config(&tls.cert, &tls.key)?);
        let listener = bind("TLS edge listener", tls.listen)?;
        tls_addr = listener.local_addr().ok();
        tasks.spawn(edge::listener::serve_tls(listener, acceptor, Arc::clone(&context)));
    }
    let admin_listener = bind("admin listener", config.admin.listen)?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
        what: "admin listener",
        addr: config.admin.listen,
        source,
    })?;
    let scrape_context = Arc::clone(&context);
    let admin = Arc::new(AdminState {
        registry,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        before_scrape: Box::new(move || scrape_context.metrics.sync_jwks(&scrape_context.auth.stats())),
    });
    tasks.spawn(admin::serve(admin_listener, Arc::clone(&admin)));
    admin.ready.store(true, Ordering::Relaxed);
    Ok(RunningProxy { tcp_addr, tls_addr, admin_addr, context, admin, embedded, tasks })
}
