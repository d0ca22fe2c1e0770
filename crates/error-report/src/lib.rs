//! The one way the workspace shows an error to a human: the error and every
//! [`source`](std::error::Error::source) below it, on one line, separated by `": "`.
//!
//! The rule it relies on: an error's `Display` says only its own layer (`"reading {path}"`, not
//! `"reading {path}: {source}"`) and keeps the cause as `#[source]`/`#[from]`. Every report site
//! (a binary's error exit, a log line, an HTTP error body, a test failure message) prints the
//! chain through [`Report`], so each cause appears once:
//!
//! ```
//! use error_report::Report;
//!
//! let e = std::io::Error::other("connection refused");
//! assert_eq!(format!("dialling chatd failed: {}", Report(&e)), "dialling chatd failed: connection refused");
//! ```
//!
//! In a `tracing` field: `error = %Report(&e)`. It formats lazily (no `String` unless the caller
//! asks for one with `to_string()`).

use std::error::Error;
use std::fmt;

/// Displays an error and its sources: `outer: middle: root cause`.
#[derive(Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Same as `Display`, so `{:?}` in a test's failure message also shows the chain.
impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[derive(Debug, thiserror::Error)]
    #[error("starting the proxy")]
    struct Top(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}")]
    struct Middle {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    fn three_levels() -> Top {
        let root = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        Top(Middle { path: "proxy.toml", source: root })
    }

    #[test]
    fn each_layer_once_in_order() {
        let e = three_levels();
        assert_eq!(Report(&e).to_string(), "starting the proxy: reading proxy.toml: no such file");
        assert_eq!(format!("{:?}", Report(&e)), "starting the proxy: reading proxy.toml: no such file");
    }

    #[test]
    fn a_middle_layer_prints_from_there_down() {
        let e = three_levels();
        let middle = std::error::Error::source(&e).unwrap();
        assert_eq!(Report(middle).to_string(), "reading proxy.toml: no such file");
    }

    #[test]
    fn an_error_without_sources_is_its_display() {
        let e = std::io::Error::other("refused");
        assert_eq!(Report(&e).to_string(), "refused");
    }

    #[test]
    fn boxed_errors_report_through_as_ref() {
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(three_levels());
        assert_eq!(Report(e.as_ref()).to_string(), "starting the proxy: reading proxy.toml: no such file");
    }
}
