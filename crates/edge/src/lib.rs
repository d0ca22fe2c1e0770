//! The proxy's edge: where Partner clients connect.
//!
//! A client opens a TCP or TLS connection and sends one login frame ([`login`]). The edge checks
//! the frame and the Partner token ([`auth`]) before any upstream connection exists, then hands
//! the client to the session layer, which holds the one chatd connection for that account.

pub mod auth;
pub mod client;
pub mod conn;
pub mod listener;
pub mod login;
pub mod metrics;
pub mod tls;
