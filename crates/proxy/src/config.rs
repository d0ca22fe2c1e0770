//! The proxy's configuration: one TOML file, every key documented in `config/proxy.toml`,
//! validated at start with errors that name the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Start the chatd simulator and the partner server in-process and point `upstream` and
    /// `auth` at them: the one-machine default (`config/local.toml`, or no config at all).
    #[serde(default)]
    pub embedded: bool,
    pub edge: EdgeConfig,
    /// Required unless `embedded`.
    pub upstream: Option<UpstreamConfig>,
    /// Required unless `embedded`.
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Plain TCP listener for Partner clients (behind a TLS-terminating gateway).
    pub listen: Option<SocketAddr>,
    /// TLS 1.3 listener.
    pub tls: Option<TlsConfig>,
    /// Seconds a new client has to send its login frame.
    #[serde(default = "defaults::login_timeout_secs")]
    pub login_timeout_secs: u64,
    /// Largest frame a client may send, in bytes (at most 16,777,215).
    #[serde(default = "defaults::max_frame_size")]
    pub max_frame_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
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
pub struct UpstreamConfig {
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The Partner's JWKS (`https://partner.example/.well-known/oauth/openid/jwks`; plain http
    /// only on loopback for now).
    pub jwks_url: String,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A client silent this long (its pings stopped) loses its session; WhatsApp's own proxy
    /// uses 200 s.
    pub idle_timeout_secs: u64,
    /// Bytes a session may hold in each direction before it stops reading the other side.
    pub max_buffered_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { idle_timeout_secs: 200, max_buffered_bytes: 64 * 1024 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `/metrics`, `/livez`, `/readyz`. Keep it on loopback or a private network.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: SocketAddr::from(([127, 0, 0, 1], 9090)) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sessions (online clients) at once; further logins are refused with 429.
    pub max_sessions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_sessions: 100_000 }
    }
}

mod defaults {
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
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.into() });
        if self.edge.listen.is_none() && self.edge.tls.is_none() {
            return invalid("edge", "set edge.listen, edge.tls, or both");
        }
        if !(1..=wire::frame::MAX_FRAME_LEN).contains(&self.edge.max_frame_size) {
            return invalid("edge.max_frame_size", "must be 1..=16777215");
        }
        if self.edge.login_timeout_secs == 0 {
            return invalid("edge.login_timeout_secs", "must be at least 1");
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
                if !(a.jwks_url.starts_with("http://") || a.jwks_url.starts_with("https://")) {
                    return invalid("auth.jwks_url", "must be an http(s) URL");
                }
                if a.account_claim.is_empty() {
                    return invalid("auth.account_claim", "must name a claim");
                }
            }
            (None, true) => {}
        }
        if self.session.max_buffered_bytes < 4096 {
            return invalid("session.max_buffered_bytes", "must be at least 4096");
        }
        if self.session.idle_timeout_secs == 0 {
            return invalid("session.idle_timeout_secs", "must be at least 1");
        }
        if self.limits.max_sessions == 0 {
            return invalid("limits.max_sessions", "must be at least 1");
        }
        Ok(())
    }

    /// The root key chatd's chain is checked against.
    pub fn root_public_key(&self) -> Option<[u8; 32]> {
        match self.upstream.as_ref().and_then(|u| u.root_public_key.as_ref()) {
            None => Some(wire::cert::WHATSAPP_ROOT_PUBLIC_KEY),
            Some(h) => hex::decode(h).ok().and_then(|b| b.try_into().ok()),
        }
    }

    /// The one-machine default: embedded upstream, loopback listeners.
    pub fn local() -> Config {
        Config {
            embedded: true,
            edge: EdgeConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 5222))),
                tls: None,
                login_timeout_secs: defaults::login_timeout_secs(),
                max_frame_size: defaults::max_frame_size(),
            },
            upstream: None,
            auth: None,
            session: SessionConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
        }
    }

    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.edge.login_timeout_secs)
    }
}
