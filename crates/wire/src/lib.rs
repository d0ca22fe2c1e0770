//! WhatsApp wire formats, sans-IO.
//!
//! Everything the proxy, the chatd simulator and the client need to speak WhatsApp's chat protocol,
//! with no sockets: the binary stanza codec on the token dictionary ([`dict`], [`decode`],
//! [`encode`]), the node model ([`node`], [`jid`]), readable text forms ([`text`]), the 3-byte
//! length frame codec ([`frame`]), WhatsApp's flavour of Noise XX, IK and XXfallback
//! ([`noise`]), the server certificate chain ([`cert`]) and the login payload protobufs
//! ([`proto`]).
//!
//! The edge protocol lives here too, so a client needs nothing else: the login frame
//! ([`login`]), the keepalive ping ([`keepalive`]), the refusal and close stanzas ([`refusal`]),
//! the verified certificate-chain cache ([`cert_cache`]) and the client's side of a chat
//! connection's start, WhatsApp's Noise XX (or IK resumption) over frames ([`connect`]). The `wire-io` crate drives
//! them over tokio sockets.
//!
//! With the `test-util` feature (tests only), `testing` holds a simulated chatd identity and a
//! finished in-memory handshake for other crates' tests.

pub mod cert;
pub mod cert_cache;
pub mod connect;
pub mod decode;
pub mod dict;
pub mod encode;
pub mod frame;
pub mod jid;
pub mod keepalive;
pub mod login;
pub mod node;
pub mod noise;
mod packed;
pub mod payload;
pub mod proto;
pub mod proxy_header;
pub mod refusal;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod text;
pub mod xeddsa;

pub use decode::{DecodeError, Decoder, NodeRef};
pub use dict::Dictionary;
pub use encode::{EncodeError, EncodeOptions, Encoder};
pub use jid::{InteropAccount, Jid, Server};
pub use node::{Content, Node, Value};
