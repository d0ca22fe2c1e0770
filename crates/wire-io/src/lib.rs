//! The chat protocol on tokio sockets: the few async pieces every side of a chat connection
//! shares, as thin drivers over the sans-IO `wire` crate.
//!
//! - [`frame`]: read one frame (bounded, cancel-safe), read a secret frame into a wiped buffer,
//!   write a frame.
//! - [`close`]: close with a stanza and linger, close, discard until EOF.
//! - [`net`]: dial (optionally from a local address, TCP_NODELAY), bind a listener.
//! - [`clock`]: the Unix time certificate checks use.
//! - [`handshake`]: drives [`wire::connect::ClientConnect`] over a stream.
//! - [`edge_client`]: a client of plaintext frames (the proxy's edge protocol, or anything framed).

pub mod clock;
pub mod close;
pub mod edge_client;
pub mod frame;
pub mod handshake;
pub mod net;

pub use edge_client::{ClientError, EdgeClient};
