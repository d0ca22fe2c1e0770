//! Configuration: one TOML file (see `config/partner-server.toml` for every key), validated at start.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use error_report::Report;
use serde::Deserialize;

/// The longest accepted `token_ttl_secs` (30 days).
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// The longest accepted long-poll cap (10 minutes).
pub const MAX_WAIT_CAP_MS: u64 = 600_000;

/// A configuration problem, with the offending key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys are errors too, to catch typos).
    #[error("cannot parse config{}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if the config came from one.
        path: Option<PathBuf>,
        /// The TOML error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A key has a value out of range or of the wrong form.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key name, e.g. `media.max_object_bytes`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

/// A string that never shows in `Debug` output (the admin token).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration. `Default` (for embedding in tests) is a plain-HTTP loopback server on
/// port 8480 with push disabled; a configuration file must choose: `[tls]` or `plain_http = true`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTPS on the listener: TLS 1.3, HTTP/1.1 and HTTP/2 by ALPN, certificate and key reloaded
    /// on SIGHUP (or [`reload_tls`](crate::RunningPartnerServer::reload_tls)).
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP (no `[tls]`): loopback and tests only. A file that sets neither is an
    /// error; in a file it defaults to false, in `Config::default()` to true.
    #[serde(default)]
    pub plain_http: bool,
    /// The URL clients and WhatsApp reach this server at (no trailing slash). Default
    /// `https://{listen}` (`http://` with `plain_http`), with an unspecified listen address
    /// replaced by 127.0.0.1.
    pub public_base_url: Option<String>,
    /// `iss` of the tokens this server issues. Default: the base URL.
    pub issuer: Option<String>,
    /// `aud` of the tokens this server issues.
    pub audience: String,
    /// Lifetime of issued tokens, seconds (1..=30 days).
    pub token_ttl_secs: u64,
    /// Signing keys kept published across rotations (1..=16).
    pub signing_keys_published: usize,
    /// When set, `/admin/*` requires `Authorization: Bearer <admin_token>` (at least 16 characters).
    pub admin_token: Option<Secret>,
    /// The `/push` receiver.
    pub push: PushConfig,
    /// Media hosting.
    pub media: MediaConfig,
    /// Resource limits.
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            tls: None,
            plain_http: true,
            public_base_url: None,
            issuer: None,
            audience: "whatsapp".into(),
            token_ttl_secs: 3600,
            signing_keys_published: jwks::DEFAULT_MAX_PUBLISHED,
            admin_token: None,
            push: PushConfig::default(),
            media: MediaConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `[tls]`: the listener's certificate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// `[push]`: how WhatsApp's (the simulator's) push JWTs are verified.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// The pusher's JWKS (the chatd simulator's `/.well-known/jwks`), `https://` (or `http://`
    /// on loopback). Unset: `/push` answers 503 until an embedding program sets it at run time.
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted for `jwks_url`, in addition to the platform's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `iss` of push tokens.
    pub issuer: String,
    /// Required `aud` of push tokens. Default: this server's base URL.
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp`, seconds.
    pub leeway_secs: u64,
    /// Refetch the pusher's JWKS when older than this, seconds.
    pub jwks_refresh_secs: u64,
    /// Minimum spacing of JWKS refetches caused by unknown kids or failures, seconds.
    pub jwks_min_refetch_secs: u64,
    /// Pushes remembered for `GET /admin/pushes` (oldest dropped first).
    pub history: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            jwks_url: None,
            jwks_ca_file: None,
            issuer: "WHATSAPP".into(),
            audience: None,
            leeway_secs: 60,
            jwks_refresh_secs: 300,
            jwks_min_refetch_secs: 30,
            history: 1024,
        }
    }
}

/// `[media]`: the in-memory media store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest single upload, bytes.
    pub max_object_bytes: u64,
    /// Total bytes stored plus uploads in progress; uploads beyond it get 507.
    pub max_total_bytes: u64,
    /// Most objects stored.
    pub max_objects: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self { max_object_bytes: 16 << 20, max_total_bytes: 256 << 20, max_objects: 10_000 }
    }
}

/// `[limits]`: connection and request bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Largest JSON request body (`/oauth/token`, `/push`), bytes.
    pub max_json_body_bytes: usize,
    /// Time allowed to receive a request body, seconds.
    pub body_timeout_secs: u64,
    /// Time allowed to receive HTTP/1 request headers, seconds.
    pub header_timeout_secs: u64,
    /// Cap on `timeout_ms` of `GET /push/wait`, milliseconds (larger requests are cut to it).
    pub max_wait_ms: u64,
    /// Users with an unconsumed push remembered for `GET /push/wait` (oldest forgotten first).
    pub max_pending_users: usize,
    /// Time open connections get to finish on shutdown, seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: 64,
            max_json_body_bytes: 16 * 1024,
            body_timeout_secs: 30,
            header_timeout_secs: 10,
            max_wait_ms: 60_000,
            max_pending_users: 10_000,
            shutdown_grace_secs: 5,
        }
    }
}

impl Config {
    /// Parse and validate TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse { path: None, source })?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: Some(path.to_owned()), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every key; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.public_base_url {
            validate_base_url(url)?;
        }
        if self.issuer.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid("issuer", "must not be empty"));
        }
        if self.audience.trim().is_empty() {
            return Err(invalid("audience", "must not be empty"));
        }
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&self.token_ttl_secs) {
            return Err(invalid("token_ttl_secs", format!("must be 1..={MAX_TOKEN_TTL_SECS}")));
        }
        if !(1..=jwks::MAX_PUBLISHED_LIMIT).contains(&self.signing_keys_published) {
            return Err(invalid("signing_keys_published", format!("must be 1..={}", jwks::MAX_PUBLISHED_LIMIT)));
        }
        if self.admin_token.as_ref().is_some_and(|t| t.expose().chars().count() < 16) {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }

        let push = &self.push;
        if let Some(url) = &push.jwks_url {
            jwks::JwksVerifier::new(url, push.verifier_config())
                .map_err(|e| invalid("push.jwks_url", Report(&e).to_string()))?;
        }
        if push.issuer.trim().is_empty() {
            return Err(invalid("push.issuer", "must not be empty"));
        }
        if push.audience.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid("push.audience", "must not be empty"));
        }
        if push.leeway_secs > 600 {
            return Err(invalid("push.leeway_secs", "must be at most 600"));
        }
        if push.jwks_refresh_secs == 0 {
            return Err(invalid("push.jwks_refresh_secs", "must be greater than zero"));
        }
        if push.jwks_min_refetch_secs == 0 {
            return Err(invalid("push.jwks_min_refetch_secs", "must be greater than zero"));
        }
        if !(1..=1_000_000).contains(&push.history) {
            return Err(invalid("push.history", "must be 1..=1000000"));
        }

        let media = &self.media;
        if media.max_object_bytes == 0 {
            return Err(invalid("media.max_object_bytes", "must be greater than zero"));
        }
        if media.max_object_bytes > usize::MAX as u64 {
            return Err(invalid("media.max_object_bytes", "does not fit in memory on this platform"));
        }
        if media.max_total_bytes < media.max_object_bytes {
            return Err(invalid("media.max_total_bytes", "must be at least media.max_object_bytes"));
        }
        if media.max_objects == 0 {
            return Err(invalid("media.max_objects", "must be greater than zero"));
        }

        match (&self.tls, self.plain_http) {
            (None, false) => return Err(invalid("tls", "set [tls] cert and key, or plain_http = true")),
            (Some(_), true) => return Err(invalid("plain_http", "cannot be true together with [tls]")),
            _ => {}
        }

        let limits = &self.limits;
        for (value, key) in [
            (limits.max_connections as u64, "limits.max_connections"),
            (u64::from(limits.max_streams_per_connection), "limits.max_streams_per_connection"),
            (limits.max_json_body_bytes as u64, "limits.max_json_body_bytes"),
            (limits.body_timeout_secs, "limits.body_timeout_secs"),
            (limits.header_timeout_secs, "limits.header_timeout_secs"),
            (limits.max_wait_ms, "limits.max_wait_ms"),
            (limits.max_pending_users as u64, "limits.max_pending_users"),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if limits.max_wait_ms > MAX_WAIT_CAP_MS {
            return Err(invalid("limits.max_wait_ms", format!("must be at most {MAX_WAIT_CAP_MS}")));
        }
        if limits.max_json_body_bytes > 1 << 20 {
            return Err(invalid("limits.max_json_body_bytes", "must be at most 1048576"));
        }
        Ok(())
    }
}

impl PushConfig {
    /// The verifier settings these keys stand for.
    pub(crate) fn verifier_config(&self) -> jwks::VerifierConfig {
        jwks::VerifierConfig {
            refresh_interval: Duration::from_secs(self.jwks_refresh_secs.max(1)),
            min_refetch_interval: Duration::from_secs(self.jwks_min_refetch_secs.max(1)),
            tls: tls_config::ClientTls::with_ca_file(self.jwks_ca_file.clone()),
            ..jwks::VerifierConfig::default()
        }
    }
}

fn validate_base_url(url: &str) -> Result<(), ConfigError> {
    let key = "public_base_url";
    let uri: hyper::Uri = url.parse().map_err(|e| invalid(key, format!("not a URL: {}", Report(&e))))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid(key, "scheme must be http or https"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(key, "no host"));
    }
    if uri.query().is_some() {
        return Err(invalid(key, "must not have a query"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../config/partner-server.toml");
        let config = Config::from_toml_str(text).expect("example config is valid");
        assert_eq!(config.audience, "whatsapp");
        assert!(config.tls.is_some() && !config.plain_http, "the example serves HTTPS");
        // A file that says nothing about TLS is refused: plain HTTP only when asked for.
        assert!(matches!(Config::from_toml_str(""), Err(ConfigError::Invalid { key: "tls", .. })));
    }

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        Config::default().validate().expect("defaults valid");
        let cases = [
            ("token_ttl_secs = 0", "token_ttl_secs"),
            ("audience = \"\"", "audience"),
            ("[media]\nmax_object_bytes = 10\nmax_total_bytes = 5", "media.max_total_bytes"),
            ("[push]\njwks_url = \"ftp://x/jwks\"", "push.jwks_url"),
            ("plain_http = false", "tls"),
            ("plain_http = true\n[tls]\ncert = \"c\"\nkey = \"k\"", "plain_http"),
            ("[limits]\nmax_wait_ms = 99999999", "limits.max_wait_ms"),
            ("admin_token = \"short\"", "admin_token"),
            ("public_base_url = \"ftp://x\"", "public_base_url"),
        ];
        for (text, key) in cases {
            let text = if text.contains("plain_http") { text.to_owned() } else { format!("plain_http = true\n{text}") };
            let text = text.as_str();
            match Config::from_toml_str(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected invalid {key}, got {other:?}"),
            }
        }
        let typo = Config::from_toml_str("audiance = \"x\"");
        assert!(matches!(typo, Err(ConfigError::Parse { .. })));
        let listen = Config::from_toml_str("listen = \"not an address\"");
        assert!(matches!(listen, Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn admin_token_is_redacted() {
        let c = Config::from_toml_str("plain_http = true\nadmin_token = \"0123456789abcdef-secret\"").expect("valid");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
