//! The proxy's edge: where Partner clients connect.
//!
//! A client opens a TCP, TLS or WebSocket connection and sends one login frame ([`wire::login`]). The
//! edge checks the frame and the Partner token ([`auth`]) before any upstream connection exists,
//! then hands the client to the session layer, which holds the one chatd connection for that
//! account. Admission ([`limits`]): a per-source-IP connection rate, a session limit and a limit
//! on logins waiting for chatd, all shed with `<failure reason="429" retry_after="N"/>`.

pub mod auth;
pub mod cidr;
pub mod conn;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod proxy_header;
pub mod tls;
pub mod ws;
