//! The load harness: scenarios that drive many clients through the proxy against the chatd
//! simulator, with the direct-to-chatd, HAProxy and crypto-ceiling baselines measured in the same
//! run. The `loadtest` binary is the command line; the library lets tests run scenarios.

pub mod client;
pub mod crypto;
pub mod env;
pub mod error;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod scenarios;
pub mod setup;
pub mod stats;

pub use error::{Error, Result};
