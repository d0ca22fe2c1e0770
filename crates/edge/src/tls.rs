//! TLS 1.3 for the edge, with rustls on aws-lc-rs (the only crypto provider in the tree).
//!
//! The certificate is served by [`ReloadableCert`], a `ResolvesServerCert` whose key pair can be
//! swapped at runtime (SIGHUP): new handshakes get the new certificate, established sessions keep
//! theirs. The swap is an `RwLock<Arc<CertifiedKey>>`: a handshake takes the read lock for one
//! `Arc` clone, which costs nothing next to the handshake's signature, so no extra crate is needed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up. Paths are named; key bytes never are.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {path}: {message}")]
    Cert { path: String, message: String },
    #[error("private key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads and checks a certificate chain and its key (the key must match the leaf).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |message: String| TlsError::Cert { path: cert.display().to_string(), message };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificates in the file".into()));
    }
    let key_err = |message: String| TlsError::Key { path: key.display().to_string(), message };
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
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

/// The edge's certificate, reloadable from its files.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    paths: RwLock<(PathBuf, PathBuf)>,
}

impl ReloadableCert {
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

    /// A TLS 1.3-only server configuration that serves this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
