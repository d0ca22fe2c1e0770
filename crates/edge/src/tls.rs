//! TLS 1.3 for the edge, with rustls on aws-lc-rs (the only crypto provider in the tree).
//!
//! The certificate is served by [`ReloadableCert`], a `ResolvesServerCert` whose key pair can be
//! swapped at runtime (SIGHUP): new handshakes get the new certificate, established sessions keep
//! theirs. It lives in `tls-config`, shared with the partner server's and the simulator's HTTPS
//! listeners; the edge serves it TLS 1.3 only, without ALPN.

pub use tls_config::{LoadedCert, ReloadableCert, TlsError, load_certified_key};
