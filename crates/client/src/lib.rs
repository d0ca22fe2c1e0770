//! The Partner client SDK: a device that enlists with WhatsApp's interop API, logs in through
//! the proxy (or directly to chatd), and talks to WhatsApp users with Signal end-to-end
//! encryption on the device. The proxy and chatd only ever carry ciphertext.
//!
//! - [`store`]: the device's keys, sessions and thread, in a file-backed store.
//! - [`e2e`]: Signal sessions and messages (via `wacore-libsignal`), pure over the store.
//! - [`message`]: the `Message` protobuf and its padding; [`media`]: media encryption;
//!   [`ogg`]: recognising an Ogg/Opus voice note and reading its length.
//! - [`conn`]: the chat connection (edge or direct); [`services`]: the HTTP services.
//! - [`client`]: the logged-in client and its events; [`reconnect`]: close reasons and backoff;
//!   [`retry`]: retry receipts per incoming message, bounded.
//! - [`listen`]: the long-running receive loop: keepalive, reconnects, push wake-up.

pub mod client;
pub mod conn;
pub mod e2e;
pub mod listen;
pub mod media;
pub mod message;
pub mod ogg;
pub mod reconnect;
pub mod retry;
pub mod services;
pub mod store;

pub use client::{Client, ClientError, Event};
pub use conn::Route;
pub use message::Content;
pub use store::{Account, Endpoints, Settings, Store};
