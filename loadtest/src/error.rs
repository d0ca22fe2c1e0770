//! The harness's errors. Messages name what failed, never a token or a key.

use std::time::Duration;

use client::conn::ConnError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {what}: {detail}")]
    Startup { what: &'static str, detail: String },
    #[error("{url}: {detail}")]
    Http { url: String, detail: String },
    #[error("connection")]
    Conn(#[from] client::conn::ConnError),
    #[error("noise")]
    Noise(#[from] wire::noise::NoiseError),
    #[error("encode")]
    Encode(#[from] wire::encode::EncodeError),
    #[error("login refused: <{tag}> reason {reason}")]
    Refused { tag: String, reason: String, retry_after: Option<u64> },
    #[error("the server closed the connection")]
    Closed,
    #[error("{0}: nothing within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }

    /// A short class for counting failures in reports.
    pub fn class(&self) -> String {
        match self {
            Error::Refused { reason, .. } => format!("refused_{reason}"),
            Error::Timeout(what, _) => format!("timeout_{what}"),
            Error::Closed | Error::Conn(ConnError::Closed) => "closed".into(),
            Error::Io { .. } | Error::Conn(ConnError::Io(_) | ConnError::Connect { .. }) => "io".into(),
            Error::Conn(ConnError::Timeout(_)) => "timeout".into(),
            _ => "protocol".into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
