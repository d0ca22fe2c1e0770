//! Configuration: one TOML file (`config/chatd-sim.toml` documents every key), validated at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use error_report::Report;
use serde::Deserialize;

/// Everything the simulator is told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub chat: ChatConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub push: PushConfig,
    #[serde(default)]
    pub tokens: TokensConfig,
    /// The Partners allowed to enlist users.
    #[serde(default)]
    pub integrators: Vec<IntegratorConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// TCP chat listener (Noise; an optional PROXY v1/v2 header first).
    pub listen: SocketAddr,
    /// WebSocket chat listener serving `/ws/chat`; `None` turns it off.
    pub ws_listen: Option<SocketAddr>,
    /// Seconds allowed from accept to the end of the handshake.
    pub handshake_timeout_secs: u64,
    /// A logged-in connection silent this long is closed.
    pub idle_timeout_secs: u64,
    /// Oldest accepted `userAgent.appVersion`, "primary.secondary.tertiary"; older gets 405.
    pub min_app_version: String,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_listen: None,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 180,
            min_app_version: "2.3000.0".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The HTTP listener: enlistment API, media, observation API, push JWKS.
    pub listen: SocketAddr,
    /// HTTPS on that listener (TLS 1.3, HTTP/1.1 and HTTP/2 by ALPN); plain HTTP without it.
    pub tls: Option<TlsConfig>,
    /// The base URL Partners and clients should use; defaults to `https://{listen}` (`http://`
    /// without `tls`).
    pub public_url: Option<String>,
    /// Largest accepted request body (media uploads included), in bytes.
    pub max_body_bytes: usize,
    /// PEM CA certificates trusted for the Partner servers (push, their JWKS, their media), in
    /// addition to the platform's roots.
    pub partner_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            public_url: None,
            max_body_bytes: 16 << 20,
            partner_ca_file: None,
        }
    }
}

/// `[http.tls]`: the HTTP listener's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

impl HttpConfig {
    /// Whom the simulator's HTTPS clients (push, Partner JWKS, Partner media) trust, and how:
    /// TLS 1.3 only, as WhatsApp's push (`curl --tlsv1.3` in the seed's example).
    pub fn partner_tls(&self) -> tls_config::ClientTls {
        tls_config::ClientTls { tls13_only: true, ..tls_config::ClientTls::with_ca_file(self.partner_ca_file.clone()) }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Hex of the 32-byte root private key that signs the certificate chain; generated when empty.
    pub root_private_key: Option<String>,
    /// Hex of the server's 32-byte Noise static private key; generated when empty.
    pub server_static_private_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_accounts: usize,
    pub max_connections: usize,
    pub mailbox_max_entries: usize,
    pub mailbox_max_bytes: usize,
    /// Undelivered stanzas older than this are dropped (WhatsApp keeps them 30 days).
    pub mailbox_retention_days: u64,
    /// Accounts not connected for this long are un-enlisted.
    pub inactive_unenlist_days: u64,
    /// One-time prekeys kept per account.
    pub max_prekeys: usize,
    /// Blocklist entries per account.
    pub max_blocklist: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_accounts: 1_000_000,
            max_connections: 100_000,
            mailbox_max_entries: 10_000,
            mailbox_max_bytes: 64 << 20,
            mailbox_retention_days: 30,
            inactive_unenlist_days: 30,
            max_prekeys: 1_000,
            max_blocklist: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// `iss` of the push JWTs the simulator signs (`aud` is the integrator's base URL).
    pub issuer: String,
    /// Delivery attempts per push before giving up.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub initial_backoff_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig { issuer: "WHATSAPP".into(), max_attempts: 5, initial_backoff_ms: 200 }
    }
}

/// How Partner JWKS are cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Seconds between refreshes of a Partner's JWKS.
    pub jwks_refresh_secs: u64,
    /// Least seconds between refetches caused by a token with an unknown key id (a Partner's
    /// key rotation is seen at most this late; junk tokens cannot make the simulator hammer it).
    pub jwks_min_refetch_secs: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig { jwks_refresh_secs: 300, jwks_min_refetch_secs: 10 }
    }
}

impl TokensConfig {
    pub fn verifier_config(&self) -> jwks::VerifierConfig {
        jwks::VerifierConfig {
            refresh_interval: std::time::Duration::from_secs(self.jwks_refresh_secs.max(1)),
            min_refetch_interval: std::time::Duration::from_secs(self.jwks_min_refetch_secs.max(1)),
            ..jwks::VerifierConfig::default()
        }
    }
}

/// A Partner allowed to enlist users.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegratorConfig {
    /// The integrator id in interop JIDs (`{id}-{user}@interop`).
    pub id: u16,
    /// The Partner server: its JWKS is `{base_url}/.well-known/oauth/openid/jwks`, pushes go to
    /// `{base_url}/push`, media is fetched from `{base_url}/{storage_reference}`.
    pub base_url: String,
    /// The `iss` its user JWTs carry.
    pub issuer: String,
    /// The `aud` its user JWTs carry.
    #[serde(default = "default_audience")]
    pub audience: String,
}

fn default_audience() -> String {
    "whatsapp".into()
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading {path}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: Report(&e).to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// A loopback configuration on ephemeral ports with no integrators: tests add their own.
    pub fn local() -> Config {
        Config {
            chat: ChatConfig::default(),
            http: HttpConfig::default(),
            keys: KeysConfig::default(),
            limits: LimitsConfig::default(),
            push: PushConfig::default(),
            tokens: TokensConfig::default(),
            integrators: Vec::new(),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if parse_version(&self.chat.min_app_version).is_none() {
            return invalid(
                "chat.min_app_version",
                format!("{:?} is not like \"2.3000.0\"", self.chat.min_app_version),
            );
        }
        for (key, value) in [
            ("keys.root_private_key", &self.keys.root_private_key),
            ("keys.server_static_private_key", &self.keys.server_static_private_key),
        ] {
            if let Some(v) = value
                && !v.is_empty()
                && hex::decode(v).map(|b| b.len()) != Ok(32)
            {
                // Say what is wrong without echoing the key.
                return invalid(key, "must be 64 hex characters (32 bytes)".into());
            }
        }
        let mut ids = std::collections::HashSet::new();
        for i in &self.integrators {
            if !ids.insert(i.id) {
                return invalid("integrators.id", format!("integrator {} is listed twice", i.id));
            }
            if !(i.base_url.starts_with("http://") || i.base_url.starts_with("https://")) {
                return invalid("integrators.base_url", format!("{:?} is not an http(s) URL", i.base_url));
            }
        }
        for (key, v) in [
            ("limits.max_accounts", self.limits.max_accounts),
            ("limits.mailbox_max_entries", self.limits.mailbox_max_entries),
            ("limits.max_connections", self.limits.max_connections),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// "2.3000.1045649367" -> (2, 3000, 1045649367).
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split('.').map(|p| p.parse::<u32>().ok());
    let v = (parts.next()??, parts.next()??, parts.next().unwrap_or(Some(0))?);
    Some(v)
}
