//! The interop proxy: edge listeners for Partner clients, one Noise-authenticated chatd session
//! per online client, client IP forwarded, ciphertext untouched, Prometheus metrics.
//!
//! [`start`] wires the parts together: the edge (`edge` crate), the session layer (`session`
//! crate) and the admin listener. [`process`] is what the binary adds around it: the banner, the
//! signals, the drain. The one-machine local world (`embedded = true`: the chatd simulator and the
//! partner server in-process, and the demo) is the `local-world` crate's `interop-local`, which
//! starts those servers, fills in `[upstream]` and `[auth]` ([`fill_embedded_sections`]) and then
//! calls [`start`]; this crate does not link them.
//!
//! Fleet operations: [`RunningProxy::begin_drain`] (SIGTERM, `POST /drain`) flips readiness,
//! stops the listeners and closes sessions spread over `drain.window_secs`;
//! [`RunningProxy::reload`] (SIGHUP) swaps the TLS certificate and applies `[limits]`.
//!
//! Process metrics (defined here):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `waproxy_build_info` | gauge | `version` | always 1 |
//! | `waproxy_draining` | gauge | | 1 from the moment a drain starts (readiness is 503), else 0 |
//! | `waproxy_config_reloads_total` | counter | `result` (ok, error) | SIGHUP reloads; on error the old certificate and limits stay |
//! | `waproxy_admin_connections_refused_total` | counter | | admin connections closed at once because `admin.max_connections` were open |

pub mod admin;
pub mod config;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge::auth::{AuthConfig, Authenticator};
use edge::conn::EdgeContext;
use edge::limits::{Limiter, RateLimiter};
use edge::metrics::EdgeMetrics;
use edge::tls::ReloadableCert;
use error_report::Report;
use session::{ProxyProtocol, RelayConfig, SessionContext, SessionMetrics, UpstreamConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::AdminState;
use crate::config::{Config, ProxyProtocolVersion};

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("config")]
    Config(#[from] config::ConfigError),
    #[error("binding {what} on {addr}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS")]
    Tls(#[from] edge::tls::TlsError),
    #[error("auth")]
    Auth(#[from] jwks::ConfigError),
    #[error("metrics")]
    Metrics(#[from] prometheus::Error),
    /// `embedded = true` left `[upstream]` or `[auth]` out, and nothing filled them in: only the
    /// local world (`interop-local`) runs the embedded servers.
    #[error(
        "embedded = true without [upstream] and [auth]: the chatd simulator and the partner server run in \
         interop-local (the local world), not in interop-proxy"
    )]
    EmbeddedWithoutLocalWorld,
}

/// A running proxy. Dropping it stops every task.
pub struct RunningProxy {
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub context: Arc<EdgeContext>,
    pub admin: Arc<AdminState>,
    /// The TLS edge's certificate, when there is a TLS listener.
    pub tls_cert: Option<Arc<ReloadableCert>>,
    pub drain_config: config::DrainSection,
    /// Cancelled when a drain has closed every session.
    drained: CancellationToken,
    reloads: prometheus::IntCounterVec,
    tasks: JoinSet<()>,
}

impl RunningProxy {
    /// Starts draining (idempotent): `/readyz` answers 503 and `waproxy_draining` is 1 at once,
    /// the listeners stop accepting, then the sessions are closed with
    /// `<stream:error code="503" text="draining"/>` spread over `drain.window_secs`.
    pub fn begin_drain(&self) {
        self.admin.drain_requested.cancel();
    }

    /// Completes when a drain has closed every session.
    pub async fn drained(&self) {
        self.drained.cancelled().await
    }

    /// Drains and waits until every session is closed or `drain.deadline_secs` has passed since
    /// the drain began; at the deadline whatever is left is cut off (no farewell). Returns
    /// whether the drain completed in time.
    pub async fn drain(&self) -> bool {
        self.begin_drain();
        let deadline = Duration::from_secs(self.drain_config.deadline_secs);
        let clean = tokio::time::timeout(deadline, self.drained()).await.is_ok();
        if !clean {
            warn!(left = self.context.session.registry.len(), "drain deadline reached; cutting the rest off");
            self.context.session.registry.shutdown_now();
        }
        clean
    }

    /// Applies a re-read configuration (SIGHUP): the TLS certificate and key are read again (from
    /// `config`'s `[edge.tls]` paths, else the ones in use) and `[limits]` takes effect for new
    /// connections. Other keys need a restart. Nothing changes if any part fails: the old
    /// certificate and limits stay, and the error is logged and returned. Sessions are never
    /// touched. Counted in `waproxy_config_reloads_total{result}`.
    ///
    /// This reads files on the calling thread; the binary's signal loop instead runs
    /// [`prepare_reload`] on a thread of its own and hands the result to
    /// [`RunningProxy::apply_reload`], so a file that never answers cannot hold up SIGTERM.
    pub fn reload(&self, config: Result<&Config, String>) -> Result<(), String> {
        self.apply_reload(prepare_reload(config.cloned(), self.tls_cert.as_deref()))
    }

    /// The second half of a reload: swaps in what [`prepare_reload`] read, or (on `Err`) keeps
    /// everything as it is; logs and counts the outcome. No I/O.
    pub fn apply_reload(&self, prepared: Result<PreparedReload, String>) -> Result<(), String> {
        let result = prepared.map(|p| {
            if let (Some(current), Some(cert)) = (&self.tls_cert, p.cert) {
                current.install(cert);
            }
            let limits = &p.config.limits;
            self.context.session_slots.set_limit(limits.max_sessions);
            self.context.handshake_slots.set_limit(limits.max_concurrent_handshakes);
            self.context.rate_limit.set_rate(limits.per_ip_connections_per_sec);
        });
        match &result {
            Ok(()) => {
                info!(tls = self.tls_cert.is_some(), "configuration reloaded");
                self.reloads.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                error!(error = %e, "configuration reload failed; keeping the old certificate and limits");
                self.reloads.with_label_values(&["error"]).inc();
            }
        }
        result
    }

    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// What a reload read and checked, ready for [`RunningProxy::apply_reload`].
#[derive(Debug)]
pub struct PreparedReload {
    config: Config,
    cert: Option<edge::tls::LoadedCert>,
}

/// The first half of a reload, with all its file I/O: validates `config` and, when the proxy has
/// a TLS listener (`tls`), reads and checks the certificate and key (from `config`'s
/// `[edge.tls]`, else the files in use). Blocking: run it off the async runtime.
pub fn prepare_reload(config: Result<Config, String>, tls: Option<&ReloadableCert>) -> Result<PreparedReload, String> {
    let config = config?;
    config.validate().map_err(|e| Report(&e).to_string())?;
    let cert = match tls {
        Some(current) => {
            let paths = config.edge.tls.as_ref().map(|t| (t.cert.as_path(), t.key.as_path()));
            Some(current.read(paths).map_err(|e| Report(&e).to_string())?)
        }
        None => None,
    };
    Ok(PreparedReload { config, cert })
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    wire_io::net::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

/// Everything [`start`] builds from a configuration before it binds a socket: the component
/// configurations (each validated by its owner), the token checker, the TLS certificate read from
/// its files, the trusted address ranges. `check-config` runs exactly this, so a configuration it
/// accepts starts (unless a port is taken).
pub struct Plan {
    pub config: Config,
    upstream: UpstreamConfig,
    relay: RelayConfig,
    authenticator: Authenticator,
    tls: Option<(Arc<ReloadableCert>, tokio_rustls::TlsAcceptor)>,
    proxy_protocol_trusted: Option<Vec<edge::cidr::Cidr>>,
    ws: Option<edge::ws::WsOptions>,
}

/// Where the embedded servers will be, for planning an embedded configuration before they start.
const EMBEDDED_PLACEHOLDER: &str = "127.0.0.1:1";

impl Plan {
    /// Validates `config` and builds every part. With `embedded = true` and no `[upstream]` or
    /// `[auth]`, those are planned with placeholders, which the local world replaces with the
    /// embedded servers' addresses before [`start`].
    pub fn new(mut config: Config) -> Result<Plan, StartError> {
        config.validate()?;
        if config.embedded {
            let jwks_url = format!("http://{EMBEDDED_PLACEHOLDER}/.well-known/jwks");
            fill_embedded_sections(
                &mut config,
                EMBEDDED_PLACEHOLDER.into(),
                [0; 32],
                jwks_url,
                "embedded",
                "whatsapp",
                None,
            );
        }
        let (Some(upstream), Some(auth)) = (config.upstream.clone(), config.auth.clone()) else {
            return Err(config::ConfigError::Invalid { key: "upstream", message: "missing".into() }.into());
        };
        let root = config.root_public_key().ok_or(config::ConfigError::Invalid {
            key: "upstream.root_public_key",
            message: "must be 64 hex characters".into(),
        })?;
        let mut upstream_cfg = config.upstream_config(root);
        upstream_cfg.proxy_protocol = match upstream.proxy_protocol {
            ProxyProtocolVersion::V1 => ProxyProtocol::V1,
            ProxyProtocolVersion::V2 => ProxyProtocol::V2,
            ProxyProtocolVersion::None => ProxyProtocol::None,
        };
        let authenticator = Authenticator::new(AuthConfig {
            jwks_url: auth.jwks_url.clone(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            account_claim: auth.account_claim.clone(),
            verifier: jwks::VerifierConfig {
                refresh_interval: Duration::from_secs(auth.jwks_refresh_secs.max(1)),
                min_refetch_interval: Duration::from_secs(auth.jwks_min_refetch_secs.max(1)),
                tls: tls_config::ClientTls::with_ca_file(auth.jwks_ca_file.clone()),
                ..jwks::VerifierConfig::default()
            },
            token_cache_entries: auth.token_cache_entries,
        })?;
        let trusted = |list: &[String], key: &'static str| {
            edge::cidr::parse_list(list).map_err(|message| config::ConfigError::Invalid { key, message })
        };
        let proxy_protocol_trusted = if config.edge.proxy_protocol {
            Some(trusted(&config.edge.proxy_protocol_trusted_cidrs, "edge.proxy_protocol_trusted_cidrs")?)
        } else {
            None
        };
        let tls = match &config.edge.tls {
            Some(tls) => {
                let cert = ReloadableCert::load(&tls.cert, &tls.key)?;
                let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config()?);
                Some((cert, acceptor))
            }
            None => None,
        };
        let ws = match &config.edge.websocket {
            Some(ws) => Some(edge::ws::WsOptions {
                path: ws.path.clone(),
                trusted_forwarded: trusted(&ws.trusted_forwarded_cidrs, "edge.websocket.trusted_forwarded_cidrs")?,
                forwarded_header: edge::ws::ForwardedHeader::parse(&ws.forwarded_header).map_err(|e| {
                    config::ConfigError::Invalid {
                        key: "edge.websocket.forwarded_header",
                        message: Report(&e).to_string(),
                    }
                })?,
            }),
            None => None,
        };
        Ok(Plan {
            relay: config.relay_config(),
            upstream: upstream_cfg,
            authenticator,
            tls,
            proxy_protocol_trusted,
            ws,
            config,
        })
    }
}

/// Fills in `[upstream]` and `[auth]` (where the file left them out) for the embedded servers:
/// chatd at `addr` with root key `root`, the Partner's JWKS at `jwks_url` (trusting `jwks_ca_file`).
pub fn fill_embedded_sections(
    config: &mut Config,
    addr: String,
    root: [u8; 32],
    jwks_url: String,
    issuer: &str,
    audience: &str,
    jwks_ca_file: Option<std::path::PathBuf>,
) {
    config.upstream.get_or_insert(config::UpstreamSection {
        addr,
        proxy_protocol: ProxyProtocolVersion::V1,
        root_public_key: Some(hex::encode(root)),
        connect_timeout_ms: 5_000,
        handshake_timeout_ms: 10_000,
        noise_ik: true,
    });
    config.auth.get_or_insert(config::AuthSection {
        jwks_url,
        jwks_ca_file,
        issuer: issuer.to_owned(),
        audience: audience.to_owned(),
        account_claim: "wa_account".into(),
        jwks_refresh_secs: 300,
        jwks_min_refetch_secs: 1,
        token_cache_entries: config::defaults::token_cache_entries(),
    });
}

/// Starts the proxy. `[upstream]` and `[auth]` must be there: with `embedded = true`, the local
/// world fills them in first.
pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
    config.validate()?;
    if config.upstream.is_none() || config.auth.is_none() {
        return Err(StartError::EmbeddedWithoutLocalWorld);
    }
    let Plan { config, upstream: upstream_cfg, relay, authenticator, tls, proxy_protocol_trusted, ws } =
        Plan::new(config)?;
    if upstream_cfg.proxy_protocol == ProxyProtocol::None {
        warn!("upstream.proxy_protocol = \"none\": chatd will see the proxy's address, not the client's");
    }

    let registry = prometheus::Registry::new();
    let metrics = EdgeMetrics::register(&registry)?;
    let draining_gauge = prometheus::IntGauge::new("waproxy_draining", "1 while the proxy drains, else 0.")?;
    registry.register(Box::new(draining_gauge.clone()))?;
    let reloads = prometheus::IntCounterVec::new(
        prometheus::Opts::new("waproxy_config_reloads_total", "Configuration reloads (SIGHUP) by result."),
        &["result"],
    )?;
    registry.register(Box::new(reloads.clone()))?;
    for result in ["ok", "error"] {
        reloads.with_label_values(&[result]);
    }
    let session_metrics = SessionMetrics::register(&registry)?;
    let build_info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("waproxy_build_info", "Build information; the value is always 1."),
        &["version"],
    )?;
    build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(build_info))?;

    let context = Arc::new(EdgeContext {
        auth: authenticator,
        session: SessionContext::new(upstream_cfg, relay, session_metrics),
        metrics: metrics.clone(),
        login_timeout: config.login_timeout(),
        max_frame_size: config.edge.max_frame_size,
        session_slots: Limiter::new(config.limits.max_sessions, None),
        handshake_slots: Limiter::new(
            config.limits.max_concurrent_handshakes,
            Some(metrics.handshakes_in_flight.clone()),
        ),
        rate_limit: RateLimiter::new(config.limits.per_ip_connections_per_sec),
        fin_timeout: Duration::from_secs(config.edge.fin_timeout_secs),
        tcp_keepalive: (config.edge.tcp_keepalive_secs > 0)
            .then(|| Duration::from_secs(config.edge.tcp_keepalive_secs)),
        proxy_protocol_trusted,
        stop_accepting: CancellationToken::new(),
    });

    let mut tasks = JoinSet::new();
    let mut tcp_addr = None;
    if let Some(addr) = config.edge.listen {
        let listener = bind("edge listener", addr)?;
        tcp_addr = listener.local_addr().ok();
        tasks.spawn(edge::listener::serve_tcp(listener, Arc::clone(&context)));
    }
    let mut tls_addr = None;
    let mut tls_cert = None;
    if let (Some(tls), Some((cert, acceptor))) = (&config.edge.tls, tls) {
        let listener = bind("TLS edge listener", tls.listen)?;
        tls_addr = listener.local_addr().ok();
        tls_cert = Some(cert);
        tasks.spawn(edge::listener::serve_tls(listener, acceptor, Arc::clone(&context)));
    }
    let mut ws_addr = None;
    if let (Some(ws), Some(options)) = (&config.edge.websocket, ws) {
        let listener = bind("WebSocket edge listener", ws.listen)?;
        ws_addr = listener.local_addr().ok();
        tasks.spawn(edge::listener::serve_ws(listener, options, Arc::clone(&context)));
    }
    let admin_listener = bind("admin listener", config.admin.listen)?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
        what: "admin listener",
        addr: config.admin.listen,
        source,
    })?;
    let admin_refused = prometheus::IntCounter::new(
        "waproxy_admin_connections_refused_total",
        "Admin connections closed at once because admin.max_connections were open.",
    )?;
    registry.register(Box::new(admin_refused.clone()))?;
    let scrape_context = Arc::clone(&context);
    let admin = Arc::new(AdminState {
        registry,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        before_scrape: Box::new(move || {
            let auth = &scrape_context.auth;
            scrape_context.metrics.sync_jwks(&auth.stats());
            scrape_context.metrics.sync_token_cache(auth.token_cache_hits(), auth.token_cache_len());
        }),
        drain_requested: CancellationToken::new(),
        connections_refused: admin_refused,
    });
    let admin_limits = admin::AdminLimits {
        header_timeout: Duration::from_secs(config.admin.header_timeout_secs.get()),
        max_connections: config.admin.max_connections.get(),
    };
    tasks.spawn(admin::serve(admin_listener, Arc::clone(&admin), admin_limits));
    let drained = CancellationToken::new();
    tasks.spawn(drain_task(
        Arc::clone(&context),
        Arc::clone(&admin),
        draining_gauge,
        Duration::from_secs(config.drain.window_secs),
        drained.clone(),
    ));
    admin.ready.store(true, Ordering::Relaxed);
    Ok(RunningProxy {
        tcp_addr,
        tls_addr,
        ws_addr,
        admin_addr,
        context,
        admin,
        tls_cert,
        drain_config: config.drain.clone(),
        drained,
        reloads,
        tasks,
    })
}

/// Waits for a drain request, then drains: readiness and the gauge first, then the listeners,
/// then the sessions spread over `window`.
async fn drain_task(
    context: Arc<EdgeContext>,
    admin: Arc<AdminState>,
    gauge: prometheus::IntGauge,
    window: Duration,
    drained: CancellationToken,
) {
    admin.drain_requested.cancelled().await;
    admin.draining.store(true, Ordering::Relaxed);
    gauge.set(1);
    context.stop_accepting.cancel();
    let registry = &context.session.registry;
    registry.start_draining();
    // The first close waits one slot too (window / (n + 1)), so load balancers see readiness
    // turn 503 before any client is told to reconnect.
    let n = registry.accounts() as u32;
    let head = window / (n + 1);
    info!(
        sessions = registry.len(),
        window_secs = window.as_secs_f64(),
        "draining: closing sessions spread over the window"
    );
    tokio::time::sleep(head).await;
    registry.drain(window.saturating_sub(head)).await;
    info!("drained: no session left");
    drained.cancel();
}
