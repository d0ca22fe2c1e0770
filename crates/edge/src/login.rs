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
//! printed.

use prost::Message as _;
use wire::decode::Decoder;
use wire::jid::Server;
use wire::noise::StaticKeypair;
use wire::proto::{ClientPayload, Product};
use zeroize::Zeroizing;

/// Largest `ClientPayload` accepted (real ones are a few hundred bytes plus the JWT).
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;

/// A well-formed login.
pub struct Login {
    /// The interop account the client claims, as JID text (`1-10853634039893@interop`).
    pub account: String,
    pub integrator: u16,
    pub account_id: u64,
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
pub enum LoginError {
    #[error("login frame is not a stanza: {0}")]
    Decode(String),
    #[error("first stanza is <{0}>, not <login>")]
    NotLogin(String),
    #[error("login jid is missing or not an interop JID")]
    BadJid,
    #[error("<static> must hold the 32-byte Noise private key")]
    BadStatic,
    #[error("<payload> is missing, empty or over {MAX_PAYLOAD_LEN} bytes")]
    BadPayloadSize,
    #[error("<payload> is not a ClientPayload: {0}")]
    BadPayload(String),
    #[error("ClientPayload is not an interop login (product INTEROP with interopData)")]
    NotInterop,
    #[error("interopData.accountID does not match the login jid")]
    AccountMismatch,
    #[error("interopData.token is missing or not UTF-8")]
    BadToken,
}

/// Parses the first frame's payload (flags byte and node).
pub fn parse(frame: &[u8]) -> Result<Login, LoginError> {
    let mut decoder = Decoder::default();
    let node = decoder.decode_payload(frame).map_err(|e| LoginError::Decode(e.to_string()))?;
    if node.tag() != "login" {
        return Err(LoginError::NotLogin(node.tag().chars().take(32).collect()));
    }
    let jid =
        node.attr("jid").and_then(|v| v.as_jid()).filter(|j| j.server == Server::Interop).ok_or(LoginError::BadJid)?;
    if jid.device != 0 {
        return Err(LoginError::BadJid);
    }
    let account_id: u64 = jid.user.parse().map_err(|_| LoginError::BadJid)?;
    let account = jid.to_string();
    let integrator = jid.integrator;
    let key: [u8; 32] =
        node.child("static").and_then(|c| c.bytes()).and_then(|b| b.try_into().ok()).ok_or(LoginError::BadStatic)?;
    let key = Zeroizing::new(key);
    let static_key = StaticKeypair::from_private(&key).map_err(|_| LoginError::BadStatic)?;
    let payload = node.child("payload").and_then(|c| c.bytes()).ok_or(LoginError::BadPayloadSize)?;
    if payload.is_empty() || payload.len() > MAX_PAYLOAD_LEN {
        return Err(LoginError::BadPayloadSize);
    }
    let client_payload = Zeroizing::new(payload.to_vec());
    let parsed = ClientPayload::decode(&client_payload[..]).map_err(|e| LoginError::BadPayload(e.to_string()))?;
    let interop = parsed.interop_data.as_ref().filter(|_| parsed.product == Some(Product::Interop as i32));
    let interop = interop.ok_or(LoginError::NotInterop)?;
    if interop.account_id != Some(account_id) {
        return Err(LoginError::AccountMismatch);
    }
    let token = interop.token.as_deref().and_then(|t| std::str::from_utf8(t).ok()).filter(|t| !t.is_empty());
    let token = Zeroizing::new(token.ok_or(LoginError::BadToken)?.to_owned());
    Ok(Login { account, integrator, account_id, static_key, client_payload, token })
}

/// Builds a login frame payload (for clients, tests and the demo).
pub fn build(account: &wire::Jid, static_private: &[u8; 32], client_payload: &[u8]) -> Vec<u8> {
    let node = wire::Node::new("login").attr("jid", account.clone()).children(vec![
        wire::Node::new("static").bytes(static_private.to_vec()),
        wire::Node::new("payload").bytes(client_payload.to_vec()),
    ]);
    // A login node always encodes: its parts are a JID and two byte strings.
    wire::encode::encode(&node).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::proto::AppVersion;

    fn payload(account_id: u64, token: &str) -> Vec<u8> {
        ClientPayload::interop_login(account_id, token.as_bytes().to_vec(), AppVersion::new(2, 3000, 1)).encode_to_vec()
    }

    #[test]
    fn round_trip() {
        let jid = wire::Jid::interop(1, "10853634039893", 0);
        let login = parse(&build(&jid, &[7; 32], &payload(10853634039893, "t.o.k"))).unwrap();
        assert_eq!(login.account, "1-10853634039893@interop");
        assert_eq!((login.integrator, login.account_id), (1, 10853634039893));
        assert_eq!(login.token.as_str(), "t.o.k");
        let debug = format!("{login:?}");
        assert!(!debug.contains("t.o.k") && !debug.contains("[7, 7"), "{debug}");
    }

    #[test]
    fn every_defect_has_its_error() {
        let jid = wire::Jid::interop(1, "42", 0);
        let good = payload(42, "t");
        assert!(matches!(parse(b""), Err(LoginError::Decode(_))));
        assert!(matches!(parse(&[0, 0xf8, 0x01, 0x13]), Err(LoginError::NotLogin(_))));
        assert_eq!(
            parse(&build(&wire::Jid::new("42", Server::Whatsapp), &[7; 32], &good)).unwrap_err(),
            LoginError::BadJid
        );
        assert_eq!(parse(&build(&wire::Jid::interop(1, "42", 3), &[7; 32], &good)).unwrap_err(), LoginError::BadJid);
        assert_eq!(parse(&build(&jid, &[7; 32], &payload(43, "t"))).unwrap_err(), LoginError::AccountMismatch);
        assert_eq!(parse(&build(&jid, &[7; 32], &payload(42, ""))).unwrap_err(), LoginError::BadToken);
        assert_eq!(parse(&build(&jid, &[7; 32], &[])).unwrap_err(), LoginError::BadPayloadSize);
        assert!(matches!(parse(&build(&jid, &[7; 32], &[0xff; 10])), Err(LoginError::BadPayload(_))));
        let web = ClientPayload::web_login(42, 1, AppVersion::new(2, 3000, 1)).encode_to_vec();
        assert_eq!(parse(&build(&jid, &[7; 32], &web)).unwrap_err(), LoginError::NotInterop);
        let short = wire::Node::new("login").attr("jid", jid.clone()).children(vec![
            wire::Node::new("static").bytes(vec![1; 31]),
            wire::Node::new("payload").bytes(good.clone()),
        ]);
        assert_eq!(parse(&wire::encode::encode(&short).unwrap()).unwrap_err(), LoginError::BadStatic);
    }
}
