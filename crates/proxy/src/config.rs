//! The proxy's configuration: one TOML file, every key documented in `config/proxy.toml`,
//! validated at start with errors that name the key.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use error_report::Report;
use serde::Deserialize;
use session::RelayConfig;
use session::relay::MAX_TIMER;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Start the chatd simulator and the partner server in-process and point `upstream` and
    /// `auth` at them: the one-machine default (`config/local.toml`). Only `interop-local` (the
    /// `local-world` crate) runs them; `interop-proxy` refuses it.
    #[serde(default)]
    pub embedded: bool,
    pub edge: EdgeSection,
    /// Required unless `embedded`.
    pub upstream: Option<UpstreamSection>,
    /// Required unless `embedded`.
    pub auth: Option<AuthSection>,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub drain: DrainSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    /// Plain TCP listener for Partner clients (behind a TLS-terminating gateway).
    pub listen: Option<SocketAddr>,
    /// TLS 1.3 listener.
    pub tls: Option<TlsSection>,
    /// Seconds a new client has to send its login frame.
    #[serde(default = "defaults::login_timeout_secs")]
    pub login_timeout_secs: u64,
    /// Largest frame a client may send, in bytes (at most 16,777,215).
    #[serde(default = "defaults::max_frame_size")]
    pub max_frame_size: usize,
    /// WebSocket listener: binary messages carry the frame stream.
    pub websocket: Option<WebSocketSection>,
    /// Require a PROXY v1/v2 header on the plain TCP listener (`listen`), from
    /// `proxy_protocol_trusted_cidrs` only.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Load balancers allowed to send PROXY headers.
    #[serde(default)]
    pub proxy_protocol_trusted_cidrs: Vec<String>,

    #[serde(default = "defaults::tcp_keepalive_secs")]
    pub tcp_keepalive_secs: u64,
    /// Once one side of a connection is done (FIN, or a close stanza sent), the other direction
    /// gets at most this long before the connection is closed (HAProxy's `timeout client-fin`).
    #[serde(default = "defaults::fin_timeout_secs")]
    pub fin_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSection {
    pub listen: SocketAddr,
    /// The upgrade path; other paths get 404.
    #[serde(default = "defaults::ws_path")]
    pub path: String,
    /// Peers (reverse proxies) whose `forwarded_header` names the client.
    #[serde(default)]
    pub trusted_forwarded_cidrs: Vec<String>,
    /// The one header those peers append the client's address to; its right-most entry is the
    /// client. Any other header (`Forwarded`, say) is the client's own and is never read.
    #[serde(default = "defaults::forwarded_header")]
    pub forwarded_header: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    V1,
    V2,
    /// Only for a chatd that does not expect the header; the client's IP is then lost.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// chatd, as `host:port` (resolved at each dial) or an address.
    pub addr: String,
    /// The PROXY protocol header that carries the client's IP to chatd.
    #[serde(default = "defaults::proxy_protocol")]
    pub proxy_protocol: ProxyProtocolVersion,
    /// Hex of the root public key chatd's certificate chain must verify against; WhatsApp's own
    /// root when unset.
    pub root_public_key: Option<String>,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Resume with Noise IK once chatd's key is known from an earlier XX (one round trip less
    /// per login); `false` keeps every login on XX.
    #[serde(default = "defaults::noise_ik")]
    pub noise_ik: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The Partner's JWKS (`https://partner.example/.well-known/oauth/openid/jwks`; `http://`
    /// only on loopback).
    pub jwks_url: String,
    /// PEM CA certificates trusted for `jwks_url` besides the platform's roots (a private PKI).
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// The `iss` the Partner's tokens carry.
    pub issuer: String,
    /// The `aud` the Partner's tokens carry.
    #[serde(default = "defaults::audience")]
    pub audience: String,
    /// The claim that must name the login's interop account JID.
    #[serde(default = "defaults::account_claim")]
    pub account_claim: String,
    /// Seconds between JWKS refreshes.
    #[serde(default = "defaults::jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Least seconds between refetches caused by unknown key ids (a flood of junk tokens cannot
    /// make the proxy hammer the Partner).
    #[serde(default = "defaults::jwks_min_refetch_secs")]
    pub jwks_min_refetch_secs: u64,
    /// Tokens that verified, remembered (by digest, with their account and `exp`) so reconnects
    /// skip the RSA verification; 0 remembers none. About 40 bytes each in a hash table.
    #[serde(default = "defaults::token_cache_entries")]
    pub token_cache_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    /// A client silent this long (its pings stopped) loses its session; WhatsApp's own proxy
    /// uses 200 s.
    pub idle_timeout_secs: u64,
    /// Bytes a session may hold in each direction before it stops reading the other side.
    pub max_buffered_bytes: usize,
}

impl Default for SessionSection {
    fn default() -> Self {
        SessionSection { idle_timeout_secs: 200, max_buffered_bytes: 64 * 1024 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// `/metrics`, `/livez`, `/readyz`. Keep it on loopback or a private network.
    pub listen: SocketAddr,
    /// Seconds a connection has to send a request's headers, from its start or from the end of
    /// the previous response (so also the keep-alive idle timeout); then it is closed.
    pub header_timeout_secs: NonZeroU64,
    /// Admin connections open at once; a new one beyond this is closed at once.
    pub max_connections: NonZeroUsize,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            header_timeout_secs: NonZeroU64::new(5).unwrap_or(NonZeroU64::MIN),
            max_connections: NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Reloadable on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Sessions (online clients) at once; further logins are refused with 429.
    pub max_sessions: usize,
    /// Logins waiting for chatd's answer at once; further ones are shed with 429.
    pub max_concurrent_handshakes: usize,
    /// New connections per second per source IP (burst: twice this); 0 = no limit.
    pub per_ip_connections_per_sec: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection { max_sessions: 100_000, max_concurrent_handshakes: 1024, per_ip_connections_per_sec: 20 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainSection {
    /// Sessions are closed spread evenly over this many seconds.
    pub window_secs: u64,
    /// The process exits by this many seconds after the drain began, whatever still runs.
    pub deadline_secs: u64,
}

impl Default for DrainSection {
    fn default() -> Self {
        DrainSection { window_secs: 30, deadline_secs: 45 }
    }
}

pub(crate) mod defaults {
    use super::ProxyProtocolVersion;
    pub fn login_timeout_secs() -> u64 {
        10
    }
    pub fn max_frame_size() -> usize {
        wire::frame::MAX_FRAME_LEN
    }
    pub fn proxy_protocol() -> ProxyProtocolVersion {
        ProxyProtocolVersion::V1
    }
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn handshake_timeout_ms() -> u64 {
        10_000
    }
    pub fn noise_ik() -> bool {
        true
    }
    pub fn audience() -> String {
        "whatsapp".into()
    }
    pub fn account_claim() -> String {
        "wa_account".into()
    }
    pub fn jwks_refresh_secs() -> u64 {
        300
    }
    pub fn jwks_min_refetch_secs() -> u64 {
        10
    }
    pub fn token_cache_entries() -> usize {
        65_536
    }
    pub fn tcp_keepalive_secs() -> u64 {
        60
    }
    pub fn fin_timeout_secs() -> u64 {
        1
    }
    pub fn ws_path() -> String {
        "/ws/chat".into()
    }
    pub fn forwarded_header() -> String {
        "x-forwarded-for".into()
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A session-layer range error, named by the key of this file that set the value.
fn session_key(e: session::SessionError, part: &str) -> ConfigError {
    let session::SessionError::Config { key, message } = e else {
        return ConfigError::Invalid { key: "session", message: Report(&e).to_string() };
    };
    let key = match (part, key) {
        (_, "max_frame_len") => "edge.max_frame_size",
        ("relay", "max_buffered_bytes") => "session.max_buffered_bytes",
        ("relay", "idle_timeout") => "session.idle_timeout_secs",
        ("relay", "close_linger") => "edge.fin_timeout_secs",
        ("upstream", "connect_timeout") => "upstream.connect_timeout_ms",
        ("upstream", "handshake_timeout") => "upstream.handshake_timeout_ms",
        _ => key,
    };
    ConfigError::Invalid { key, message }
}

impl Config {
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: Report(&e).to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.into() });
        if self.edge.listen.is_none() && self.edge.tls.is_none() && self.edge.websocket.is_none() {
            return invalid("edge", "set edge.listen, edge.tls, edge.websocket, or several");
        }
        if let Err(e) = edge::cidr::parse_list(&self.edge.proxy_protocol_trusted_cidrs) {
            return invalid("edge.proxy_protocol_trusted_cidrs", &e);
        }
        if self.edge.proxy_protocol && self.edge.proxy_protocol_trusted_cidrs.is_empty() {
            return invalid("edge.proxy_protocol_trusted_cidrs", "required with edge.proxy_protocol = true");
        }
        if self.edge.proxy_protocol && self.edge.listen.is_none() {
            return invalid("edge.proxy_protocol", "applies to edge.listen, which is not set");
        }
        if let Some(ws) = &self.edge.websocket {
            if !ws.path.starts_with('/') {
                return invalid("edge.websocket.path", "must start with /");
            }
            if let Err(e) = edge::cidr::parse_list(&ws.trusted_forwarded_cidrs) {
                return invalid("edge.websocket.trusted_forwarded_cidrs", &e);
            }
            if let Err(e) = edge::ws::ForwardedHeader::parse(&ws.forwarded_header) {
                return invalid("edge.websocket.forwarded_header", &Report(&e).to_string());
            }
        }
        if !(1..=60).contains(&self.edge.fin_timeout_secs) {
            return invalid("edge.fin_timeout_secs", "must be 1..=60");
        }
        if self.edge.tcp_keepalive_secs > 7200 {
            return invalid("edge.tcp_keepalive_secs", "must be 0..=7200");
        }
        if self.drain.deadline_secs == 0 || self.drain.deadline_secs < self.drain.window_secs {
            return invalid("drain.deadline_secs", "must be at least 1 and at least drain.window_secs");
        }
        if !(1..=MAX_TIMER.as_secs()).contains(&self.edge.login_timeout_secs) {
            return invalid("edge.login_timeout_secs", "must be 1..=2592000 (30 days)");
        }
        match (&self.upstream, self.embedded) {
            (None, false) => return invalid("upstream", "required (or set embedded = true)"),
            (Some(u), _) => {
                if u.addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    return invalid("upstream.addr", "must be host:port");
                }
                if self.root_public_key().is_none() {
                    return invalid("upstream.root_public_key", "must be 64 hex characters");
                }
            }
            (None, true) => {}
        }
        match (&self.auth, self.embedded) {
            (None, false) => return invalid("auth", "required (or set embedded = true)"),
            (Some(a), _) => {
                if let Some(ca) = &a.jwks_ca_file
                    && let Err(e) = tls_config::load_certs(ca)
                {
                    return Err(ConfigError::Invalid { key: "auth.jwks_ca_file", message: Report(&e).to_string() });
                }
                if a.account_claim.is_empty() {
                    return invalid("auth.account_claim", "must name a claim");
                }
            }
            (None, true) => {}
        }
        if self.limits.max_sessions == 0 {
            return invalid("limits.max_sessions", "must be at least 1");
        }
        if self.limits.max_concurrent_handshakes == 0 {
            return invalid("limits.max_concurrent_handshakes", "must be at least 1");
        }
        // The session layer owns the ranges of what it runs on: its own checks decide, and their
        // keys are translated to this file's.
        self.relay_config().validate().map_err(|e| session_key(e, "relay"))?;
        self.upstream_config([0; 32]).validate().map_err(|e| session_key(e, "upstream"))?;
        Ok(())
    }

    /// The relay's settings from `[edge]` and `[session]`.
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            max_frame_len: self.edge.max_frame_size,
            max_buffered_bytes: self.session.max_buffered_bytes,
            idle_timeout: Duration::from_secs(self.session.idle_timeout_secs),
            close_linger: Duration::from_secs(self.edge.fin_timeout_secs),
            ..RelayConfig::default()
        }
    }

    /// The upstream's settings from `[upstream]` (a host name in `addr` is resolved at each dial;
    /// without `[upstream]`, the address is a placeholder).
    pub fn upstream_config(&self, root_public_key: [u8; 32]) -> session::UpstreamConfig {
        let mut cfg = session::UpstreamConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), root_public_key);
        cfg.max_frame_len = self.edge.max_frame_size;
        if let Some(u) = &self.upstream {
            cfg.addr = session::UpstreamAddr::from(u.addr.as_str());
            cfg.connect_timeout = Duration::from_millis(u.connect_timeout_ms);
            cfg.handshake_timeout = Duration::from_millis(u.handshake_timeout_ms);
            cfg.noise_ik = u.noise_ik;
        }
        cfg
    }

    /// The root key chatd's chain is checked against.
    pub fn root_public_key(&self) -> Option<[u8; 32]> {
        match self.upstream.as_ref().and_then(|u| u.root_public_key.as_ref()) {
            None => Some(wire::cert::WHATSAPP_ROOT_PUBLIC_KEY),
            Some(h) => hex::decode(h).ok().and_then(|b| b.try_into().ok()),
        }
    }

    /// The one-machine default (`interop-local` with no `--config`): embedded upstream, loopback
    /// listeners.
    pub fn local() -> Config {
        Config {
            embedded: true,
            edge: EdgeSection {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 5222))),
                tls: None,
                login_timeout_secs: defaults::login_timeout_secs(),
                max_frame_size: defaults::max_frame_size(),
                websocket: None,
                proxy_protocol: false,
                proxy_protocol_trusted_cidrs: Vec::new(),
                tcp_keepalive_secs: defaults::tcp_keepalive_secs(),
                fin_timeout_secs: defaults::fin_timeout_secs(),
            },
            upstream: None,
            auth: None,
            session: SessionSection::default(),
            admin: AdminSection::default(),
            // Every client of the one-machine setup shares 127.0.0.1: no per-IP rate limit.
            limits: LimitsSection { per_ip_connections_per_sec: 0, ..LimitsSection::default() },
            // Quick to stop when trying things out; config/local.toml says the same.
            drain: DrainSection { window_secs: 2, deadline_secs: 5 },
        }
    }

    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.edge.login_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_ik_is_on_unless_the_file_turns_it_off() {
        let text = |extra: &str| {
            format!(
                "[edge]\nlisten = \"127.0.0.1:1\"\n[upstream]\naddr = \"x:1\"\n{extra}[auth]\njwks_url = \"http://x/j\"\nissuer = \"i\"\n"
            )
        };
        for (extra, want) in [("", true), ("noise_ik = false\n", false), ("noise_ik = true\n", true)] {
            let config = Config::from_toml(&text(extra), "test").unwrap();
            assert_eq!(config.upstream_config([1; 32]).noise_ik, want, "{extra:?}");
        }
    }
}
