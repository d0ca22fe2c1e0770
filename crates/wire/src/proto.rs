//! Hand-written prost messages for the handshake, the server certificate chain and the login
//! payload (field numbers from WhatsApp's public `.proto` files as read by the open clients; see
//! `docs/handshake.md`). No protoc and no build script: the schemas are small and stable, and a
//! hand-written struct can keep secrets out of `Debug`.
//!
//! All scalar fields are `Option`s because the schemas are proto2: presence is explicit, so
//! `passive = false` is sent as a field, exactly as the reference clients send it. Unknown fields
//! are skipped when decoding, so newer peers' extra fields do not break us.

use std::fmt;

use zeroize::Zeroize;

// ---------------------------------------------------------------------------------------------
// Handshake

/// The envelope of every handshake frame. Exactly one of the three fields is set per message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HandshakeMessage {
    #[prost(message, optional, tag = "2")]
    pub client_hello: Option<ClientHello>,
    #[prost(message, optional, tag = "3")]
    pub server_hello: Option<ServerHello>,
    #[prost(message, optional, tag = "4")]
    pub client_finish: Option<ClientFinish>,
}

/// XX message 1 (`ephemeral` only); `static`/`payload` are used by IK, which we do not speak yet.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientHello {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub ephemeral: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub r#static: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub payload: Option<Vec<u8>>,
}

/// XX message 2: the responder's ephemeral, its encrypted static key and the encrypted
/// certificate chain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerHello {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub ephemeral: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub r#static: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub payload: Option<Vec<u8>>,
}

/// XX message 3: the initiator's encrypted static key and the encrypted `ClientPayload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientFinish {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub r#static: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub payload: Option<Vec<u8>>,
}

// ---------------------------------------------------------------------------------------------
// Certificate chain (the ServerHello payload)

/// The server's certificate chain: root -signs-> intermediate -signs-> leaf (= server static).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertChain {
    #[prost(message, optional, tag = "1")]
    pub leaf: Option<NoiseCertificate>,
    #[prost(message, optional, tag = "2")]
    pub intermediate: Option<NoiseCertificate>,
}

/// One certificate: `signature` is an XEdDSA signature over the exact `details` bytes, which
/// is why `details` stays an encoded [`CertDetails`] rather than a nested message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NoiseCertificate {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub details: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub signature: Option<Vec<u8>>,
}

/// `CertChain.NoiseCertificate.Details` of the schema.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertDetails {
    #[prost(uint32, optional, tag = "1")]
    pub serial: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub issuer_serial: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub key: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "4")]
    pub not_before: Option<u64>,
    #[prost(uint64, optional, tag = "5")]
    pub not_after: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Login payload (the ClientFinish payload)

/// The login payload. Only the fields the reference clients send (plus the interop ones) are
/// modelled; anything else a peer sends is skipped on decode.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientPayload {
    /// Phone number (WhatsApp), FBID (Messenger).
    #[prost(uint64, optional, tag = "1")]
    pub username: Option<u64>,
    /// Web login `true`; registrations and interop logins `false`.
    #[prost(bool, optional, tag = "3")]
    pub passive: Option<bool>,
    #[prost(message, optional, tag = "5")]
    pub user_agent: Option<UserAgent>,
    #[prost(message, optional, tag = "6")]
    pub web_info: Option<WebInfo>,
    #[prost(string, optional, tag = "7")]
    pub push_name: Option<String>,
    #[prost(sfixed32, optional, tag = "9")]
    pub session_id: Option<i32>,
    #[prost(bool, optional, tag = "10")]
    pub short_connect: Option<bool>,
    #[prost(enumeration = "ConnectType", optional, tag = "12")]
    pub connect_type: Option<i32>,
    #[prost(enumeration = "ConnectReason", optional, tag = "13")]
    pub connect_reason: Option<i32>,
    #[prost(uint32, optional, tag = "16")]
    pub connect_attempt_count: Option<u32>,
    /// Companion device id (0 = primary).
    #[prost(uint32, optional, tag = "18")]
    pub device: Option<u32>,
    /// Registration of a new companion only.
    #[prost(message, optional, tag = "19")]
    pub device_pairing_data: Option<DevicePairingData>,
    #[prost(enumeration = "Product", optional, tag = "20")]
    pub product: Option<i32>,
    #[prost(bool, optional, tag = "23")]
    pub oc: Option<bool>,
    #[prost(int32, optional, tag = "24")]
    pub lc: Option<i32>,
    #[prost(bool, optional, tag = "33")]
    pub pull: Option<bool>,
    /// Partner account id and token; set for `Product::Interop` logins.
    #[prost(message, optional, tag = "38")]
    pub interop_data: Option<InteropData>,
    #[prost(bool, optional, tag = "41")]
    pub lid_db_migrated: Option<bool>,
}

/// `ClientPayload.InteropData`: no open client fills it; the design maps `account_id` to the
/// Partner user's account id and `token` to the Partner-issued JWT.
///
/// The token is a bearer credential: `Debug` shows only its length and it is wiped on drop.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct InteropData {
    #[prost(uint64, optional, tag = "1")]
    pub account_id: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub token: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    pub enable_read_receipts: Option<bool>,
}

impl fmt::Debug for InteropData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InteropData")
            .field("account_id", &self.account_id)
            .field("token", &self.token.as_ref().map(|t| Redacted(t.len())))
            .field("enable_read_receipts", &self.enable_read_receipts)
            .finish()
    }
}

impl Drop for InteropData {
    fn drop(&mut self) {
        if let Some(token) = self.token.as_mut() {
            token.zeroize();
        }
    }
}

/// `Debug` stand-in for a secret: prints only its length.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

/// `ClientPayload.UserAgent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserAgent {
    #[prost(enumeration = "Platform", optional, tag = "1")]
    pub platform: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub app_version: Option<AppVersion>,
    #[prost(string, optional, tag = "3")]
    pub mcc: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub mnc: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub os_version: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub manufacturer: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub device: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub os_build_number: Option<String>,
    #[prost(string, optional, tag = "9")]
    pub phone_id: Option<String>,
    #[prost(enumeration = "ReleaseChannel", optional, tag = "10")]
    pub release_channel: Option<i32>,
    #[prost(string, optional, tag = "11")]
    pub locale_language_iso_639_1: Option<String>,
    #[prost(string, optional, tag = "12")]
    pub locale_country_iso_3166_1_alpha_2: Option<String>,
    #[prost(enumeration = "DeviceType", optional, tag = "15")]
    pub device_type: Option<i32>,
}

/// `ClientPayload.UserAgent.AppVersion`. For interop logins it carries the interop protocol
/// version the Partner client speaks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct AppVersion {
    #[prost(uint32, optional, tag = "1")]
    pub primary: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub secondary: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub tertiary: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    pub quaternary: Option<u32>,
    #[prost(uint32, optional, tag = "5")]
    pub quinary: Option<u32>,
}

impl AppVersion {
    /// A three-part version `primary.secondary.tertiary`, e.g. `2.3000.1045649367`.
    pub fn new(primary: u32, secondary: u32, tertiary: u32) -> Self {
        Self {
            primary: Some(primary),
            secondary: Some(secondary),
            tertiary: Some(tertiary),
            quaternary: None,
            quinary: None,
        }
    }
}

/// `ClientPayload.WebInfo` (web clients only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WebInfo {
    #[prost(enumeration = "WebSubPlatform", optional, tag = "4")]
    pub web_sub_platform: Option<i32>,
}

/// `ClientPayload.DevicePairingRegistrationData`: sent only when registering a new companion.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DevicePairingData {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub e_regid: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub e_keytype: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub e_ident: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub e_skey_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub e_skey_val: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub e_skey_sig: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub build_hash: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub device_props: Option<Vec<u8>>,
}

/// `ClientPayload.Product`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Product {
    Whatsapp = 0,
    Messenger = 1,
    Interop = 2,
    InteropMsgr = 3,
    WhatsappLid = 4,
}

/// `ClientPayload.UserAgent.Platform`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Platform {
    Android = 0,
    Ios = 1,
    WindowsPhone = 2,
    Blackberry = 3,
    Blackberryx = 4,
    S40 = 5,
    S60 = 6,
    PythonClient = 7,
    Tizen = 8,
    Enterprise = 9,
    SmbAndroid = 10,
    Kaios = 11,
    SmbIos = 12,
    Windows = 13,
    Web = 14,
    Portal = 15,
    GreenAndroid = 16,
    GreenIphone = 17,
    BlueAndroid = 18,
    BlueIphone = 19,
    FbliteAndroid = 20,
    MliteAndroid = 21,
    IgliteAndroid = 22,
    Page = 23,
    Macos = 24,
    OculusMsg = 25,
    OculusCall = 26,
    Milan = 27,
    Capi = 28,
    Wearos = 29,
    Ardevice = 30,
    Vrdevice = 31,
    BlueWeb = 32,
    Ipad = 33,
    Test = 34,
    SmartGlasses = 35,
    BlueVr = 36,
    ArWrist = 37,
    Wail = 38,
}

/// `ClientPayload.UserAgent.ReleaseChannel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ReleaseChannel {
    Release = 0,
    Beta = 1,
    Alpha = 2,
    Debug = 3,
}

/// `ClientPayload.UserAgent.DeviceType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DeviceType {
    Phone = 0,
    Tablet = 1,
    Desktop = 2,
    Wearable = 3,
    Vr = 4,
}

/// `ClientPayload.WebInfo.WebSubPlatform`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WebSubPlatform {
    WebBrowser = 0,
    AppStore = 1,
    WinStore = 2,
    Darwin = 3,
    Win32 = 4,
    WinHybrid = 5,
}

/// `ClientPayload.ConnectType`. Every reference client sends `WifiUnknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ConnectType {
    CellularUnknown = 0,
    WifiUnknown = 1,
    CellularEdge = 100,
    CellularIden = 101,
    CellularUmts = 102,
    CellularEvdo = 103,
    CellularGprs = 104,
    CellularHsdpa = 105,
    CellularHsupa = 106,
    CellularHspa = 107,
    CellularCdma = 108,
    Cellular1xrtt = 109,
    CellularEhrpd = 110,
    CellularLte = 111,
    CellularHspap = 112,
}

/// `ClientPayload.ConnectReason`. Reference clients send `UserActivated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ConnectReason {
    Push = 0,
    UserActivated = 1,
    Scheduled = 2,
    ErrorReconnect = 3,
    NetworkSwitch = 4,
    PingReconnect = 5,
    Unknown = 6,
}

impl ClientPayload {
    /// The login payload of a Partner (interop) client.
    ///
    /// No public client sends one, so the field set is our choice, documented in
    /// `docs/handshake.md`: `product = INTEROP`, `interopData{accountID, token}`, `passive =
    /// false` (the session is interactive: the server should push), `pull = true` (deliver
    /// offline messages, as a web login does), `connectType = WIFI_UNKNOWN`, `connectReason =
    /// USER_ACTIVATED`, and a `userAgent` with `platform = WEB` (no interop platform exists; WEB is
    /// the companion-class platform chatd already serves), `releaseChannel = RELEASE` and
    /// `app_version` = the interop protocol version. `enableReadReceipts` is left unset (server
    /// default); set it on the result if needed.
    pub fn interop_login(account_id: u64, token: Vec<u8>, app_version: AppVersion) -> Self {
        Self {
            passive: Some(false),
            pull: Some(true),
            product: Some(Product::Interop as i32),
            interop_data: Some(InteropData {
                account_id: Some(account_id),
                token: Some(token),
                enable_read_receipts: None,
            }),
            user_agent: Some(UserAgent {
                platform: Some(Platform::Web as i32),
                app_version: Some(app_version),
                release_channel: Some(ReleaseChannel::Release as i32),
                ..Default::default()
            }),
            connect_type: Some(ConnectType::WifiUnknown as i32),
            connect_reason: Some(ConnectReason::UserActivated as i32),
            ..Default::default()
        }
    }

    /// The login payload of a paired web companion, field for field as whatsmeow's
    /// `getLoginPayload` builds it.
    pub fn web_login(username: u64, device: u32, app_version: AppVersion) -> Self {
        Self {
            username: Some(username),
            device: Some(device),
            passive: Some(true),
            pull: Some(true),
            lid_db_migrated: Some(true),
            lc: Some(1),
            user_agent: Some(UserAgent {
                platform: Some(Platform::Web as i32),
                release_channel: Some(ReleaseChannel::Release as i32),
                app_version: Some(app_version),
                mcc: Some("000".into()),
                mnc: Some("000".into()),
                os_version: Some("0.1".into()),
                manufacturer: Some(String::new()),
                device: Some("Desktop".into()),
                os_build_number: Some("0.1".into()),
                locale_language_iso_639_1: Some("en".into()),
                locale_country_iso_3166_1_alpha_2: Some("US".into()),
                ..Default::default()
            }),
            web_info: Some(WebInfo { web_sub_platform: Some(WebSubPlatform::WebBrowser as i32) }),
            connect_type: Some(ConnectType::WifiUnknown as i32),
            connect_reason: Some(ConnectReason::UserActivated as i32),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn client_hello_has_the_documented_layout() {
        let e: Vec<u8> = (0..32).collect();
        let msg = HandshakeMessage {
            client_hello: Some(ClientHello { ephemeral: Some(e.clone()), ..Default::default() }),
            ..Default::default()
        };
        let bytes = msg.encode_to_vec();
        // 0x12 = field 2 (LEN), 34-byte body; 0x0A 0x20 = field 1 (LEN), 32 bytes.
        let mut expected = vec![0x12, 0x22, 0x0A, 0x20];
        expected.extend_from_slice(&e);
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len() + 4 + 3, 43, "header + frame prefix + body = the notes' 43 bytes");
        assert_eq!(HandshakeMessage::decode(&bytes[..]).unwrap(), msg);
    }

    #[test]
    fn server_hello_and_client_finish_start_with_their_field_tags() {
        let sh = HandshakeMessage {
            server_hello: Some(ServerHello {
                ephemeral: Some(vec![1; 32]),
                r#static: Some(vec![2; 48]),
                payload: Some(vec![3; 20]),
            }),
            ..Default::default()
        };
        assert_eq!(sh.encode_to_vec()[0], 0x1A);
        let cf = HandshakeMessage {
            client_finish: Some(ClientFinish { r#static: Some(vec![4; 48]), payload: Some(vec![5]) }),
            ..Default::default()
        };
        assert_eq!(cf.encode_to_vec()[0], 0x22);
        for m in [sh, cf] {
            assert_eq!(HandshakeMessage::decode(&m.encode_to_vec()[..]).unwrap(), m);
        }
    }

    #[test]
    fn cert_details_known_bytes() {
        let d = CertDetails {
            serial: Some(1),
            issuer_serial: Some(0),
            key: Some(vec![0xAB; 2]),
            not_before: Some(300),
            not_after: Some(1),
        };
        // proto2 explicit presence: issuer_serial = 0 is encoded (10 00).
        assert_eq!(hex(&d.encode_to_vec()), "080110001a02abab20ac022801");
        assert_eq!(CertDetails::decode(&d.encode_to_vec()[..]).unwrap(), d);
    }

    #[test]
    fn interop_login_fields_and_round_trip() {
        let p = ClientPayload::interop_login(10853634039893, b"jwt".to_vec(), AppVersion::new(1, 2, 3));
        let bytes = p.encode_to_vec();
        let back = ClientPayload::decode(&bytes[..]).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.product(), Product::Interop);
        assert_eq!(back.connect_type(), ConnectType::WifiUnknown);
        assert_eq!(back.connect_reason(), ConnectReason::UserActivated);
        assert_eq!(back.user_agent.as_ref().unwrap().platform(), Platform::Web);
        let interop = back.interop_data.as_ref().unwrap();
        assert_eq!(interop.account_id, Some(10853634039893));
        assert_eq!(interop.token.as_deref(), Some(&b"jwt"[..]));
        // passive=false is present on the wire (field 3, varint 0).
        assert!(bytes.windows(2).any(|w| w == [0x18, 0x00]));
        // interopData is field 38 (LEN): key 38<<3|2 = 306 = varint b2 02.
        assert!(bytes.windows(2).any(|w| w == [0xB2, 0x02]));
    }

    #[test]
    fn web_login_matches_the_whatsmeow_field_set() {
        let p = ClientPayload::web_login(491234567, 7, AppVersion::new(2, 3000, 1045649367));
        let back = ClientPayload::decode(&p.encode_to_vec()[..]).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.product(), Product::Whatsapp);
        assert_eq!(back.product, None, "product is left unset, as whatsmeow does");
        assert_eq!((back.username, back.device), (Some(491234567), Some(7)));
        assert_eq!(
            (back.passive, back.pull, back.lid_db_migrated, back.lc),
            (Some(true), Some(true), Some(true), Some(1))
        );
        let ua = back.user_agent.unwrap();
        assert_eq!(ua.device.as_deref(), Some("Desktop"));
        assert_eq!(ua.release_channel(), ReleaseChannel::Release);
        assert_eq!(back.web_info.unwrap().web_sub_platform(), WebSubPlatform::WebBrowser);
    }

    #[test]
    fn token_is_redacted_from_debug() {
        let p = ClientPayload::interop_login(1, b"super-secret-jwt".to_vec(), AppVersion::default());
        let shown = format!("{p:?}");
        assert!(!shown.contains("super"), "{shown}");
        assert!(!shown.contains("115, 117"), "token bytes must not appear: {shown}");
        assert!(shown.contains("<redacted 16 bytes>"), "{shown}");
    }

    #[test]
    fn garbage_never_panics() {
        for input in [&b"\xff\xff\xff"[..], b"\x12\x7f", b"\x0a", b"\x12\x22\x0a\x20"] {
            let _ = HandshakeMessage::decode(input);
            let _ = ClientPayload::decode(input);
            let _ = CertChain::decode(input);
        }
    }
}
