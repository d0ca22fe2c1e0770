//! The edge login: the first frame a Partner client sends the proxy.
//!
//! ```xml
//! <login jid="1-10853634039893@interop">
//!   <static>BYTES(32): the client's Noise static private key</static>
//!   <payload>BYTES: the ClientPayload protobuf the client wants chatd to receive</payload>
//! </login>
//! ```
//!
//! The proxy runs the upstream handshake with the client's own key (so chatd authenticates the
//! client, not the proxy) and forwards the payload unchanged, so new payload fields need no proxy
//! change. Parsing is pure; the key is zeroized when the parsed login is dropped and is never
//! printed. The proxy's edge parses with [`parse`] (and adds its admission checks); clients, tests
//! and the demo build with [`build`].

use prost::Message as _;
use zeroize::Zeroizing;

use crate::InteropAccount;
use crate::decode::{Decoder, Limits};
use crate::dict::Dictionary;
use crate::noise::StaticKeypair;
use crate::proto::{ClientPayload, Product};

/// Largest `ClientPayload` accepted (real ones are a few hundred bytes plus the JWT).
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;

/// Largest login frame: a key, a payload of at most [`MAX_PAYLOAD_LEN`] and framing. Junk
/// before the login (an HTTP request, TLS on the plain port) reads as a far larger length and is
/// refused at once instead of waiting for the login timeout.
pub const LOGIN_FRAME_MAX: usize = 64 * 1024;

/// What decoding a login frame may cost, before anyone is authenticated: a login is one node with
/// a JID and two children, so a little headroom over that is all a frame gets, and a login is
/// never compressed (see [`LoginError::Compressed`]). Decoding then costs at most the frame's own
/// bytes plus a few hundred bytes of arena, and CPU linear in at most 64 KiB.
pub const LOGIN_LIMITS: Limits =
    Limits { max_depth: 2, max_nodes: 8, max_attrs: 8, max_inflated: 0, max_inflate_ratio: 0 };

/// A well-formed login.
pub struct Login {
    /// The interop account the client claims, in its one canonical form.
    pub account: InteropAccount,
    pub static_key: StaticKeypair,
    /// The payload bytes exactly as the client sent them.
    pub client_payload: Zeroizing<Vec<u8>>,
    /// `interopData.token`, the Partner JWT.
    pub token: Zeroizing<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("account", &self.account).finish_non_exhaustive()
    }
}

/// Why a login frame was refused. Messages name the problem, never the key or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    #[error("login frame is not a stanza")]
    Decode(#[source] crate::decode::DecodeError),
    /// A zlib login would make the proxy inflate before it knows who is asking (16 MiB from 17 KB),
    /// and inflating leaves copies of the key and token in buffers it does not own. Clients send
    /// the login uncompressed (it is a key, a token and a few hundred bytes).
    #[error("login frame is compressed; send it uncompressed (flags 0)")]
    Compressed,
    #[error("first stanza is <{0}>, not <login>")]
    NotLogin(String),
    #[error("login jid is missing or not an interop JID")]
    BadJid,
    #[error("login jid does not name an interop account")]
    NotAnAccount(#[from] crate::jid::AccountError),
    #[error("<static> must hold the 32-byte Noise private key")]
    BadStatic,
    #[error("<payload> is missing, empty or over {MAX_PAYLOAD_LEN} bytes")]
    BadPayloadSize,
    #[error("<payload> is not a ClientPayload")]
    BadPayload(#[source] prost::DecodeError),
    #[error("ClientPayload is not an interop login (product INTEROP with interopData)")]
    NotInterop,
    #[error("interopData.accountID does not match the login jid")]
    AccountMismatch,
    #[error("interopData.token is missing or not UTF-8")]
    BadToken,
}

/// Parses the first frame's payload (flags byte and node).
pub fn parse(frame: &[u8]) -> Result<Login, LoginError> {
    if frame.first().is_some_and(|flags| flags & crate::payload::FLAG_ZLIB != 0) {
        return Err(LoginError::Compressed);
    }
    let mut decoder = Decoder::new(&Dictionary::V3, LOGIN_LIMITS);
    let node = decoder.decode_payload(frame).map_err(LoginError::Decode)?;
    if node.tag() != "login" {
        return Err(LoginError::NotLogin(node.tag().chars().take(32).collect()));
    }
    let jid = node.attr("jid").and_then(|v| v.as_jid()).ok_or(LoginError::BadJid)?;
    let account = InteropAccount::from_parts(jid.server, jid.user, jid.device, jid.integrator)?;
    // Copied straight into a wiped buffer: a plain array would leave a copy on the stack.
    let bytes = node.child("static").and_then(|c| c.bytes()).filter(|b| b.len() == 32).ok_or(LoginError::BadStatic)?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(bytes);
    let static_key = StaticKeypair::from_private(&key).map_err(|_| LoginError::BadStatic)?;
    let payload = node.child("payload").and_then(|c| c.bytes()).ok_or(LoginError::BadPayloadSize)?;
    if payload.is_empty() || payload.len() > MAX_PAYLOAD_LEN {
        return Err(LoginError::BadPayloadSize);
    }
    let client_payload = Zeroizing::new(payload.to_vec());
    let parsed = ClientPayload::decode(&client_payload[..]).map_err(LoginError::BadPayload)?;
    let interop = parsed.interop_data.as_ref().filter(|_| parsed.product == Some(Product::Interop as i32));
    let interop = interop.ok_or(LoginError::NotInterop)?;
    if interop.account_id != Some(account.number) {
        return Err(LoginError::AccountMismatch);
    }
    let token = interop.token.as_deref().and_then(|t| std::str::from_utf8(t).ok()).filter(|t| !t.is_empty());
    let token = Zeroizing::new(token.ok_or(LoginError::BadToken)?.to_owned());
    Ok(Login { account, static_key, client_payload, token })
}

/// Builds a login frame payload (for clients, tests and the demo).
pub fn build(account: &crate::Jid, static_private: &[u8; 32], client_payload: &[u8]) -> Vec<u8> {
    let node = crate::Node::new("login").attr("jid", account.clone()).children(vec![
        crate::Node::new("static").bytes(static_private.to_vec()),
        crate::Node::new("payload").bytes(client_payload.to_vec()),
    ]);
    // A login node always encodes: its parts are a JID and two byte strings.
    crate::encode::encode(&node).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid::AccountError;
    use crate::proto::AppVersion;

    fn payload(account_id: u64, token: &str) -> Vec<u8> {
        ClientPayload::interop_login(account_id, token.as_bytes().to_vec(), AppVersion::new(2, 3000, 1)).encode_to_vec()
    }

    #[test]
    fn round_trip() {
        let jid = crate::Jid::interop(1, "10853634039893", 0);
        let login = parse(&build(&jid, &[7; 32], &payload(10853634039893, "t.o.k"))).unwrap();
        assert_eq!(login.account.to_string(), "1-10853634039893@interop");
        assert_eq!((login.account.integrator, login.account.number), (1, 10853634039893));
        assert_eq!(login.token.as_str(), "t.o.k");
        let debug = format!("{login:?}");
        assert!(!debug.contains("t.o.k") && !debug.contains("[7, 7"), "{debug}");
    }

    #[test]
    fn every_defect_has_its_error() {
        let jid = crate::Jid::interop(1, "42", 0);
        let good = payload(42, "t");
        assert!(matches!(parse(b""), Err(LoginError::Decode(_))));
        assert!(matches!(parse(&[0, 0xf8, 0x01, 0x13]), Err(LoginError::NotLogin(_))));
        assert_eq!(
            parse(&build(&crate::Jid::new("42", crate::Server::Whatsapp), &[7; 32], &good)).unwrap_err(),
            LoginError::NotAnAccount(AccountError::NotInterop)
        );
        assert_eq!(
            parse(&build(&crate::Jid::interop(1, "42", 3), &[7; 32], &good)).unwrap_err(),
            LoginError::NotAnAccount(AccountError::HasDevice)
        );
        // Other spellings of account 42 (each with a matching accountID) are not account 42.
        for spelling in ["042", "+42", "0042"] {
            assert_eq!(
                parse(&build(&crate::Jid::interop(1, spelling, 0), &[7; 32], &good)).unwrap_err(),
                LoginError::NotAnAccount(AccountError::NotCanonical),
                "{spelling}"
            );
        }
        assert_eq!(parse(&build(&jid, &[7; 32], &payload(43, "t"))).unwrap_err(), LoginError::AccountMismatch);
        assert_eq!(parse(&build(&jid, &[7; 32], &payload(42, ""))).unwrap_err(), LoginError::BadToken);
        assert_eq!(parse(&build(&jid, &[7; 32], &[])).unwrap_err(), LoginError::BadPayloadSize);
        assert!(matches!(parse(&build(&jid, &[7; 32], &[0xff; 10])), Err(LoginError::BadPayload(_))));
        let web = ClientPayload::web_login(42, 1, AppVersion::new(2, 3000, 1)).encode_to_vec();
        assert_eq!(parse(&build(&jid, &[7; 32], &web)).unwrap_err(), LoginError::NotInterop);
        let short = crate::Node::new("login").attr("jid", jid.clone()).children(vec![
            crate::Node::new("static").bytes(vec![1; 31]),
            crate::Node::new("payload").bytes(good.clone()),
        ]);
        assert_eq!(parse(&crate::encode::encode(&short).unwrap()).unwrap_err(), LoginError::BadStatic);
    }

    fn compressed(node: &crate::Node) -> Vec<u8> {
        let mut out = Vec::new();
        crate::Encoder::new(&Dictionary::V3, crate::EncodeOptions { compress: true })
            .encode_payload(node, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn compressed_logins_are_refused_before_inflating() {
        let jid = crate::Jid::interop(1, "42", 0);
        let good = crate::decode::decode(&build(&jid, &[7; 32], &payload(42, "t"))).unwrap();
        assert_eq!(parse(&compressed(&good)).unwrap_err(), LoginError::Compressed);
        // 16 MiB of zeros deflate to about 16 KB: refused on its flags byte.
        let bomb = compressed(&crate::Node::new("login").bytes(vec![0; (1 << 24) - 64]));
        assert!(bomb.len() < LOGIN_FRAME_MAX);
        assert_eq!(parse(&bomb).unwrap_err(), LoginError::Compressed);
    }

    #[test]
    fn attribute_and_node_bombs_are_refused_by_the_budget() {
        // A <login> with 30,000 attributes (what a 64 KiB frame can hold): refused at the header.
        let mut node = crate::Node::new("login");
        for i in 0..30_000u32 {
            node = node.attr(format!("a{i}"), "v");
        }
        let err = parse(&crate::encode::encode(&node).unwrap()).unwrap_err();
        assert!(matches!(&err, LoginError::Decode(crate::decode::DecodeError::TooManyAttributes { .. })), "{err:?}");
        // Deep nesting and many children are refused the same way.
        let mut deep = crate::Node::new("x");
        for _ in 0..10 {
            deep = crate::Node::new("x").children(vec![deep]);
        }
        assert!(matches!(parse(&crate::encode::encode(&deep).unwrap()), Err(LoginError::Decode(_))));
        let wide = crate::Node::new("login").children((0..100).map(|_| crate::Node::new("c")).collect());
        assert!(matches!(parse(&crate::encode::encode(&wide).unwrap()), Err(LoginError::Decode(_))));
    }
}
