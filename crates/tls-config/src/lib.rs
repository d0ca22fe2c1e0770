//! TLS for every HTTP path of the workspace (and the edge's TLS listener), on rustls with
//! aws-lc-rs (the only crypto provider). A crate of its own so the client SDK, the simulator and the
//! partner server get HTTPS without the JWT machinery of `jwks`.
//!
//! Client side, one builder for the JWKS fetcher, the simulator's push and JWKS clients and the
//! interop client: [`ClientTls`] trusts the platform's roots (rustls-native-certs: the OS trust
//! store, which operators already manage) plus an optional CA file for a private PKI, speaks
//! TLS 1.3 or 1.2 (1.3 preferred), and offers HTTP/2 and HTTP/1.1 by ALPN. [`https_client`] wraps
//! it into a pooled hyper client that also still speaks plain `http://` where a URL says so.
//!
//! Server side, [`ReloadableCert`]: a certificate and key read from PEM files, swapped at run time
//! without a restart (new handshakes get the new pair, open connections keep theirs), served
//! TLS 1.3 only with the ALPN protocols the server asks for.
//!
//! For test setups, [`LocalCa`]: a throwaway CA that issues loopback certificates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use error_report::Report;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN ids.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why TLS could not be set up. Paths are named; key bytes never are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate (chain or CA) file is unreadable or holds no certificate.
    #[error("certificate file {path}: {message}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The private key file is unreadable, of an unsupported type, or does not match the leaf.
    #[error("private key file {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No trust anchor at all for an `https://` URL: the platform store is empty and no CA
    /// file was given.
    #[error("no trusted root certificates: the platform store is empty and no CA file is configured")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Cert { path: path.display().to_string(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificates in the file".into()));
    }
    Ok(certs)
}

/// CA certificates generated in this process and trusted by its clients: the embedded default's
/// local CA (see [`LocalCa::trust_in_this_process`]). Its key never leaves the process.
static PROCESS_TRUST: RwLock<Vec<CertificateDer<'static>>> = RwLock::new(Vec::new());

fn add_process_trust(certs: Vec<CertificateDer<'static>>) {
    let mut trusted = PROCESS_TRUST.write().unwrap_or_else(|e| e.into_inner());
    for der in certs {
        if !trusted.contains(&der) {
            trusted.push(der);
        }
    }
}

/// Makes every [`ClientTls`] with `platform_roots` in this process trust the CA certificates in
/// `path` (PEM), as [`LocalCa::trust_in_this_process`] does for a CA made here: for tests and
/// tools that talk to an embedded default running in another process.
pub fn trust_ca_file_in_this_process(path: &Path) -> Result<(), TlsError> {
    add_process_trust(load_certs(path)?);
    Ok(())
}

/// Client-side trust: the platform's roots, an extra CA file, or both.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Trust the platform's store (rustls-native-certs), and the local CAs this process generated
    /// and marked trusted (the embedded default's). Default true.
    pub platform_roots: bool,
    /// PEM file of extra trusted CA certificates (a private PKI, the embedded default's local CA).
    pub ca_file: Option<PathBuf>,
    /// Refuse TLS 1.2: TLS 1.3 only (the seed's push example, `curl --tlsv1.3`). Default false:
    /// 1.3 preferred, 1.2 accepted.
    pub tls13_only: bool,
}

impl Default for ClientTls {
    fn default() -> Self {
        Self { platform_roots: true, ca_file: None, tls13_only: false }
    }
}

impl ClientTls {
    /// Platform roots plus `ca_file` when given.
    pub fn with_ca_file(ca_file: Option<impl Into<PathBuf>>) -> Self {
        Self { platform_roots: true, ca_file: ca_file.map(Into::into), tls13_only: false }
    }

    /// The trust anchors this stands for.
    pub fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        if self.platform_roots {
            // Unreadable entries of the platform store are skipped (logged), not fatal: one bad
            // file in /etc/ssl/certs must not stop the process.
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %Report(&e), "skipping part of the platform trust store");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "platform trust store loaded");
            let local = PROCESS_TRUST.read().unwrap_or_else(|e| e.into_inner()).clone();
            roots.add_parsable_certificates(local);
        }
        if let Some(path) = &self.ca_file {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Cert {
                    path: path.display().to_string(),
                    message: format!("not a usable CA certificate: {}", Report(&e)),
                })?;
            }
        }
        Ok(roots)
    }

    /// A client configuration: TLS 1.3 and 1.2 (1.3 preferred; 1.3 only with `tls13_only`), these roots, no client
    /// certificate, ALPN `h2` then `http/1.1`. With no root at all it is still built (plain
    /// `http://` keeps working) and every `https://` request fails; a warning says so.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut config = self.client_config_without_alpn()?;
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(config)
    }

    fn client_config_without_alpn(&self) -> Result<ClientConfig, TlsError> {
        let roots = self.root_store()?;
        if roots.is_empty() {
            tracing::warn!("no trusted root certificates (empty platform store, no CA file): https requests will fail");
        }
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        Ok(ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// A hyper connector for `https://` (verified with these roots) and plain `http://` URLs,
    /// HTTP/1.1 or HTTP/2 by ALPN.
    pub fn connector(&self, connect_timeout: Option<Duration>) -> Result<HttpsConnector<HttpConnector>, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(connect_timeout);
        http.set_nodelay(true);
        Ok(hyper_rustls::HttpsConnectorBuilder::new()
            // The builder sets ALPN itself (h2, http/1.1) from the protocols enabled below.
            .with_tls_config(self.client_config_without_alpn()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http))
    }
}

/// A pooled HTTP client over [`ClientTls::connector`].
pub fn https_client<B>(tls: &ClientTls) -> Result<Client<HttpsConnector<HttpConnector>, B>, TlsError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Ok(Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(tls.connector(None)?))
}

/// The TLS problem somewhere in an error's source chain (a refused certificate, a failed
/// handshake), if there is one. Looks inside `io::Error`s too, which hide their payload from
/// `source()` (hyper-rustls wraps the rustls error in two of them).
pub fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(tls) = find_tls_error(inner) {
                return Some(tls);
            }
        }
        current = err.source();
    }
    None
}

/// Loads and checks a certificate chain and its key (the key must match the leaf).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(cert)?;
    let key_err = |message: String| TlsError::Key { path: key.display().to_string(), message };
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| key_err(format!("does not match the certificate: {}", Report(&e))))?;
    Ok(Arc::new(certified))
}

/// A server certificate, reloadable from its files. The swap is an `RwLock<Arc<CertifiedKey>>`:
/// a handshake takes the read lock for one `Arc` clone.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    paths: RwLock<(PathBuf, PathBuf)>,
}

/// A certificate and key read by [`ReloadableCert::read`], not yet served.
pub struct LoadedCert {
    certified: Arc<CertifiedKey>,
    paths: (PathBuf, PathBuf),
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert").field("cert", &self.paths.0).finish_non_exhaustive()
    }
}

impl ReloadableCert {
    /// Reads `cert` (PEM chain, leaf first) and `key` (PEM PKCS#8, SEC1 or PKCS#1).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ReloadableCert {
            current: RwLock::new(load_certified_key(cert, key)?),
            paths: RwLock::new((cert.to_owned(), key.to_owned())),
        }))
    }

    /// Reads the files again (new paths if given). On error the old certificate stays.
    pub fn reload(&self, paths: Option<(&Path, &Path)>) -> Result<(), TlsError> {
        let fresh = self.read(paths)?;
        self.install(fresh);
        Ok(())
    }

    /// Reads and checks a certificate and key (from `paths`, else the files in use) without
    /// serving it yet. This is the file I/O of a reload: it may block (a FIFO, a hung mount), so
    /// callers run it off the async runtime.
    pub fn read(&self, paths: Option<(&Path, &Path)>) -> Result<LoadedCert, TlsError> {
        let (cert, key) = match paths {
            Some((c, k)) => (c.to_owned(), k.to_owned()),
            None => self.paths.read().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let certified = load_certified_key(&cert, &key)?;
        Ok(LoadedCert { certified, paths: (cert, key) })
    }

    /// Serves `loaded` to new handshakes from now on (no I/O).
    pub fn install(&self, loaded: LoadedCert) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded.certified;
        *self.paths.write().unwrap_or_else(|e| e.into_inner()) = loaded.paths;
    }

    /// The certificate served now (leaf first).
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A TLS 1.3-only server configuration that serves this certificate, without ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with_alpn(&[])
    }

    /// A TLS 1.3-only server configuration that serves this certificate and offers `alpn` (in
    /// the server's order of preference), e.g. `[ALPN_H2, ALPN_HTTP11]`.
    pub fn server_config_with_alpn(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A tokio-rustls acceptor for HTTP servers: TLS 1.3, ALPN `h2` and `http/1.1`.
    pub fn http_acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(self.server_config_with_alpn(&[ALPN_H2, ALPN_HTTP11])?))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Why a local CA or one of its certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalCaError {
    /// Key generation or signing failed.
    #[error("generating a certificate")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its key as PEM text, and where they were written (if they were).
#[derive(Clone)]
pub struct IssuedCert {
    /// PEM certificate chain (leaf only: the CA is what clients trust).
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").field("key_pem", &"***").finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes `{stem}.pem` and `{stem}.key` into `dir` (the key readable by the owner only);
    /// returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), LocalCaError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LocalCaError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| LocalCaError::Write { path: path.display().to_string(), source };
    // Written to a temporary name and renamed, so a reload never reads half a file.
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A throwaway certificate authority for loopback HTTPS: the embedded default generates one at
/// start (so it runs HTTPS end to end like production), tests use it for good, wrong-name and
/// expired certificates. ECDSA P-256 keys.
pub struct LocalCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

impl LocalCa {
    /// A new CA named `name`, valid from a day ago for ten years.
    pub fn generate(name: &str) -> Result<Self, LocalCaError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Makes every [`ClientTls`] with `platform_roots` in this process trust this CA, as if it
    /// were in the platform's store: for the embedded default, whose in-process clients (demo,
    /// tests) then need no CA file. Other processes still need the CA file.
    pub fn trust_in_this_process(&self) {
        add_process_trust(vec![self.issuer.der().clone()]);
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) -> Result<(), LocalCaError> {
        write_file(path, self.cert_pem().as_bytes(), 0o644)
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from a day ago for
    /// `valid_for`.
    pub fn issue(&self, names: &[&str], valid_for: Duration) -> Result<IssuedCert, LocalCaError> {
        let now = std::time::SystemTime::now();
        self.issue_between(names, now - Duration::from_secs(86_400), now + valid_for)
    }

    /// A server certificate for `names` valid between the two times (an expired one for tests:
    /// both in the past).
    pub fn issue_between(
        &self,
        names: &[&str],
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Result<IssuedCert, LocalCaError> {
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        params.is_ca = rcgen::IsCa::NoCa;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A loopback server certificate (`localhost`, `127.0.0.1`, `::1`), valid for a year.
    pub fn issue_loopback(&self) -> Result<IssuedCert, LocalCaError> {
        self.issue(&["localhost", "127.0.0.1", "::1"], Duration::from_secs(365 * 86_400))
    }
}
