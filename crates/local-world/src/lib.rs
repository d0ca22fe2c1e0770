//! The local world: the proxy on one machine with WhatsApp's side (the chatd simulator) and the
//! Partner server started in-process, both on HTTPS with certificates from a local CA generated
//! at start, and the demo that sends real traffic through the proxy (`interop-local demo`).
//!
//! [`start`] takes the proxy's own configuration: with `embedded = true` (`config/local.toml`, or
//! no `--config` at all) it starts the servers, fills in `[upstream]` and `[auth]` for them and
//! starts the proxy ([`proxy::start`]); without, it starts the proxy alone. The production
//! `interop-proxy` links none of this.

pub mod demo;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use chatd_sim::{ChatdSim, RunningSim};
use partner_server::{PartnerServer, RunningPartnerServer};
use proxy::RunningProxy;
use proxy::config::Config;

/// Why the local world did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Proxy(#[from] proxy::StartError),
    #[error("embedded simulator")]
    Simulator(#[from] chatd_sim::StartError),
    #[error("embedded partner server")]
    Partner(#[from] partner_server::StartError),
    #[error("embedded partner server")]
    PartnerConfig(#[from] partner_server::ConfigError),
    #[error("embedded local CA")]
    LocalCa(#[from] tls_config::LocalCaError),
}

/// The in-process WhatsApp side and Partner server, both on HTTPS with certificates from a local
/// CA generated at start.
pub struct Embedded {
    pub sim: RunningSim,
    pub partner: RunningPartnerServer,
    /// The local CA's certificate (PEM): what clients outside this process must trust
    /// (`interop-client --ca-file`, `curl --cacert`).
    pub ca_file: std::path::PathBuf,
}

/// A running proxy and, with `embedded = true`, the servers beside it. It derefs to the proxy:
/// the world is the proxy plus what it talks to.
pub struct LocalWorld {
    pub proxy: RunningProxy,
    /// Present with `embedded = true`.
    pub embedded: Option<Embedded>,
}

impl Deref for LocalWorld {
    type Target = RunningProxy;

    fn deref(&self) -> &RunningProxy {
        &self.proxy
    }
}

impl LocalWorld {
    /// Stops the proxy, then the servers.
    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        if let Some(e) = self.embedded {
            e.sim.shutdown().await;
            e.partner.shutdown().await;
        }
    }
}

/// Starts the embedded servers when `config.embedded`, points the proxy at them, and starts it.
pub async fn start(mut config: Config) -> Result<LocalWorld, StartError> {
    config.validate().map_err(proxy::StartError::from)?;
    let embedded = if config.embedded { Some(start_embedded().await?) } else { None };
    if let Some(e) = &embedded {
        let (sim, partner) = (&e.sim, &e.partner);
        proxy::fill_embedded_sections(
            &mut config,
            sim.chat_addr.to_string(),
            sim.root_public_key(),
            partner.jwks_url(),
            partner.issuer(),
            partner.audience(),
            Some(e.ca_file.clone()),
        );
    }
    let proxy = proxy::start(config).await?;
    Ok(LocalWorld { proxy, embedded })
}

/// The local CA: one per process, generated on first use, trusted by this process's own HTTPS
/// clients, its certificate written to `{temp}/interop-proxy-{pid}/ca.pem`.
struct LocalPki {
    ca: tls_config::LocalCa,
    dir: std::path::PathBuf,
    issued: std::sync::atomic::AtomicU64,
}

fn local_pki() -> Result<&'static LocalPki, tls_config::LocalCaError> {
    static PKI: std::sync::OnceLock<LocalPki> = std::sync::OnceLock::new();
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(pki) = PKI.get() {
        return Ok(pki);
    }
    let _once = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pki) = PKI.get() {
        return Ok(pki);
    }
    sweep_stale_local_pki();
    let dir = std::env::temp_dir().join(format!("interop-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|source| tls_config::LocalCaError::Write { path: dir.display().to_string(), source })?;
    let ca = tls_config::LocalCa::generate(&format!("interop-proxy embedded local CA (pid {})", std::process::id()))?;
    ca.write_cert(&dir.join("ca.pem"))?;
    ca.trust_in_this_process();
    Ok(PKI.get_or_init(|| LocalPki { ca, dir, issued: std::sync::atomic::AtomicU64::new(0) }))
}

/// Removes the local CA directories of local worlds whose process is gone (killed before it could
/// clean up, or a test process): `{temp}/interop-proxy-{pid}` with a `ca.pem` and no
/// `/proc/{pid}`. Best effort; anything unreadable is left alone.
fn sweep_stale_local_pki() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix("interop-proxy-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if pid != std::process::id()
            && path.join("ca.pem").is_file()
            && !std::path::Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Removes the local CA directory, if this process made one (at exit: nothing may use its
/// certificates afterwards).
pub fn remove_local_pki() {
    let dir = std::env::temp_dir().join(format!("interop-proxy-{}", std::process::id()));
    if dir.join("ca.pem").exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl LocalPki {
    /// A fresh loopback certificate, written as `{stem}-{n}.pem` / `.key`.
    fn issue(&self, stem: &str) -> Result<(std::path::PathBuf, std::path::PathBuf), tls_config::LocalCaError> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.ca.issue_loopback()?.write(&self.dir, &format!("{stem}-{n}"))
    }
}

/// Starts the simulator and the partner server on loopback over HTTPS, knowing and trusting each
/// other, as production runs.
pub async fn start_embedded() -> Result<Embedded, StartError> {
    let pki = local_pki()?;
    let ca_file = pki.dir.join("ca.pem");
    let (cert, key) = pki.issue("partner")?;
    let mut partner_config = partner_server::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: Some(partner_server::TlsConfig { cert, key }),
        plain_http: false,
        ..Default::default()
    };
    partner_config.push.jwks_ca_file = Some(ca_file.clone());
    let partner = PartnerServer::start(partner_config).await?;
    let (cert, key) = pki.issue("chatd-sim")?;
    let mut sim_config = chatd_sim::Config::local();
    sim_config.http.tls = Some(chatd_sim::config::TlsConfig { cert, key });
    sim_config.http.partner_ca_file = Some(ca_file.clone());
    // WhatsApp Web client libraries (Baileys) join the local world over the simulator's
    // WebSocket chat listener, as a WhatsApp-side user: loopback, ephemeral port, in the banner.
    sim_config.chat.ws_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    sim_config.integrators.push(chatd_sim::config::IntegratorConfig {
        id: 1,
        base_url: partner.base_url().to_owned(),
        issuer: partner.issuer().to_owned(),
        audience: partner.audience().to_owned(),
    });
    let sim = ChatdSim::start(sim_config).await?;
    partner.set_push_jwks_url(&format!("{}/.well-known/jwks", sim.http_url()))?;
    Ok(Embedded { sim, partner, ca_file })
}
