//! The proxy's edge: where Partner clients connect.
//!
//! A client opens a TCP, TLS or WebSocket connection ([`listener`]) and sends one login frame
//! ([`wire::login`]). [`admission`] decides, in a fixed order and before any upstream connection
//! exists: the source's connection rate, the frame, the drain, a session slot, the Partner token
//! ([`auth`]), a handshake slot (the limits are in [`limits`]; each is shed with
//! `<failure reason="429" retry_after="N"/>`). [`conn`] then hands the client to the session
//! layer, which holds the one chatd connection for that account, and gives the handshake slot
//! back when the session layer says the login has its answer.

pub mod admission;
pub mod auth;
pub mod cidr;
pub mod conn;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod proxy_header;
pub mod tls;
pub mod ws;
