//! The client: one logged-in chat connection over the device store. One task drives it: sends
//! wait for their IQ result or server ack, and whatever else arrives meanwhile is queued and
//! handled, in order, by [`Client::next_event`]. Each incoming stanza is decrypted, its session
//! and shown-id committed to the store in one atomic write (then logged to the thread), and only
//! then acked, so a crash before the ack redelivers the stanza and the shown-id check keeps it
//! from the user twice.

use std::collections::VecDeque;
use std::time::Duration;

use error_report::Report;
use wire::node::be_bytes;
use wire::proto::{AppVersion, ClientPayload};
use wire::{Jid, Node, Server, Value};

use crate::conn::{ConnError, Connection, Dialer, Route};
use crate::e2e::{self, E2eError, EncType, KeyBundle};
use crate::media::{self, MediaError, MediaKind};
use crate::message::{Content, MediaRef, Message, MessageError};
use crate::ogg::{self, OggError};
use crate::reconnect::ServerClose;
use crate::retry::{MAX_RETRIES, RetryDecision, RetryLedger};
use crate::services::{ServiceError, Services};
use crate::store::{Account, PREKEY_BATCH, Store, StoreError};

/// The app version this client declares.
pub const APP_VERSION: (u32, u32, u32) = (2, 3000, 1);
/// Upload more one-time prekeys when chatd holds fewer than this.
const PREKEY_LOW_WATER: usize = 10;

/// What the client tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decrypted message.
    Message { from: String, id: String, content: Content, offline: bool },
    /// The recipient's device got our message.
    Delivered { peer: String, id: String },
    /// The peer read our message.
    Read { peer: String, id: String },
    /// The peer's security code changed (new device or reinstall): a notice in the thread.
    IdentityChanged { peer: String },
    /// A message could not be decrypted; a retry receipt asked the sender to re-send it (up to
    /// [`MAX_RETRIES`] times per message, then the reason says the client gave up).
    Undecryptable { from: String, id: String, reason: String },
    /// The peer could not decrypt our message; it was re-encrypted and sent again.
    Resent { peer: String, id: String, fresh_session: bool },
    /// The server ended the connection.
    Closed(ServerClose),
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    E2e(#[from] E2eError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(transparent)]
    VoiceNote(#[from] OggError),
    #[error("not an MP4 video (no \"ftyp\" box at the start); videos are sent as MP4 (H.264/AAC)")]
    NotMp4,
    #[error("not enlisted: run `interop-client enlist` first")]
    NotEnlisted,
    #[error("login refused: {0}")]
    Refused(ServerClose),
    #[error("{0}")]
    Closed(ServerClose),
    #[error("{to} has no WhatsApp account, or no keys published")]
    NoSuchUser { to: String },
    #[error("chatd refused the message to {to}: {why}")]
    Rejected { to: String, why: String },
    #[error("chatd answered the request with error {code}: {text}")]
    Iq { code: String, text: String },
    #[error("chatd sent something unexpected: {0}")]
    Protocol(String),
    #[error("{0} is not a valid JID")]
    BadJid(String),
}

fn server() -> Value {
    Value::Jid(Jid::server(Server::Whatsapp))
}

fn jid_value(s: &str) -> Result<Value, ClientError> {
    Jid::parse(s).map(Value::Jid).map_err(|_| ClientError::BadJid(s.to_owned()))
}

/// A fresh message id in WhatsApp's style.
fn message_id() -> String {
    let r = crate::store::random32();
    format!("3EB0{}", hex::encode_upper(&r[..9]))
}

fn be_number(b: Option<&[u8]>) -> Option<u32> {
    b.and_then(wire::node::be_number)
}

fn child_bytes<'a>(node: &'a Node, tag: &str) -> Option<&'a [u8]> {
    match &node.child(tag)?.content {
        wire::node::Content::Bytes(b) => Some(b),
        _ => None,
    }
}

fn fixed<const N: usize>(b: Option<&[u8]>) -> Option<[u8; N]> {
    b.and_then(|b| b.try_into().ok())
}

/// A key bundle from `<registration>`, `<identity>`, `<skey>` and `<key>` children (a key
/// fetch's `<user>`, or a retry receipt's `<keys>` beside its `<registration>`).
fn bundle_from(keys: &Node, registration: Option<&[u8]>) -> Option<KeyBundle> {
    let skey = keys.child("skey")?;
    let one_time =
        keys.child("key").and_then(|k| Some((be_number(child_bytes(k, "id"))?, fixed::<32>(child_bytes(k, "value"))?)));
    Some(KeyBundle {
        registration_id: be_number(registration.or_else(|| child_bytes(keys, "registration")))?,
        identity: fixed(child_bytes(keys, "identity"))?,
        signed_prekey_id: be_number(child_bytes(skey, "id"))?,
        signed_prekey: fixed(child_bytes(skey, "value"))?,
        signature: fixed(child_bytes(skey, "signature"))?,
        one_time,
    })
}

/// The text form of an attribute (JID or string).
fn attr(node: &Node, key: &str) -> Option<String> {
    node.get(key).map(|v| v.to_string())
}

/// The peer a stanza comes from, as the account (no device): chatd's `from` names the sending
/// device (`PHONE:7@s.whatsapp.net`), while sessions, history and sent messages are kept per
/// account (this client talks to one device per peer).
fn peer_of(node: &Node) -> Option<String> {
    let from = node.get("from")?;
    Some(match from.as_jid() {
        Some(j) => j.to_account().to_string(),
        None => from.to_string(),
    })
}

/// The `<enc>` for this device: a direct child (the incoming shape, §3.7), or, when a server
/// relayed the multi-device shape unchanged, the one in `<participants><to jid=OWN_DEVICE>`.
fn own_enc<'n>(node: &'n Node, own: &str) -> Option<&'n Node> {
    node.child("enc").or_else(|| {
        let own = Jid::parse(own).ok()?;
        node.child("participants")?
            .child_nodes()
            .iter()
            .filter(|t| t.tag == "to")
            .find(|t| t.get("jid").and_then(|v| v.as_jid()).is_some_and(|j| j.to_account() == own && j.device == 0))?
            .child("enc")
    })
}

/// A login that did not succeed, with the device store handed back.
#[derive(Debug, thiserror::Error)]
#[error("login failed")]
pub struct LoginFailed {
    pub store: Store,
    #[source]
    pub error: ClientError,
}

/// Enlists this device as Partner user `user` of `integrator` (the seed's Part 1: a token from
/// the partner server, then the enlistment request with the device's keys) and records the
/// account and endpoints in the store. HTTPS trusts the store's `Endpoints::ca_file` (set it
/// first for a private PKI) besides the platform's roots.
pub async fn enlist_partner(
    store: &mut Store,
    chatd_http: &str,
    partner: &str,
    integrator: u16,
    user: &str,
) -> Result<String, ClientError> {
    let services = Services::for_store(store)?;
    let token = services.token(partner, user, None).await?;
    let enlisted = services.enlist(chatd_http, store, integrator, user, &token).await?;
    store.set_account(Some(Account::Partner {
        jid: enlisted.jid.clone(),
        account_id: enlisted.account_id,
        integrator,
        user: user.to_owned(),
    }));
    let mut endpoints = store.endpoints().clone();
    endpoints.chatd_http = chatd_http.to_owned();
    endpoints.partner = Some(partner.to_owned());
    store.set_endpoints(endpoints);
    store.save()?;
    Ok(enlisted.jid)
}

/// Registers this device as WhatsApp-side user `phone` with the simulator.
pub async fn register_whatsapp(store: &mut Store, chatd_http: &str, phone: u64) -> Result<String, ClientError> {
    let jid = Services::for_store(store)?.provision_whatsapp(chatd_http, store, phone).await?;
    store.set_account(Some(Account::WhatsApp { jid: jid.clone(), phone }));
    let mut endpoints = store.endpoints().clone();
    endpoints.chatd_http = chatd_http.to_owned();
    store.set_endpoints(endpoints);
    store.save()?;
    Ok(jid)
}

/// Where WhatsApp-side media goes: `<media_conn auth><host hostname/>`.
#[derive(Debug, Clone)]
struct MediaConn {
    host: String,
    auth: String,
}

/// A logged-in client.
pub struct Client {
    store: Store,
    conn: Connection,
    services: Services,
    /// Stanzas that arrived while waiting for something else.
    pending: VecDeque<Node>,
    /// Events produced while sending (identity changes found on the way).
    events: VecDeque<Event>,
    next_iq: u64,
    wait: Duration,
    /// The media host and upload auth chatd named (`media_conn`), once asked.
    media_conn: Option<MediaConn>,
    /// Retry receipts sent per incoming message.
    retries_sent: RetryLedger,
}

impl Client {
    /// Logs the device in over `route`: through the proxy for Partner users (with a fresh token
    /// bound to the account), or directly to chatd. Tops up one-time prekeys afterwards.
    pub async fn login(store: Store, route: &Route) -> Result<Client, Box<LoginFailed>> {
        let wait = Duration::from_secs(15);
        let services = match Services::for_store(&store) {
            Ok(s) => s,
            Err(e) => return Err(Box::new(LoginFailed { store, error: e.into() })),
        };
        let conn = match Client::connect(&store, &services, route, wait).await {
            Ok(c) => c,
            Err(error) => return Err(Box::new(LoginFailed { store, error })),
        };
        let mut client = Client {
            store,
            conn,
            services,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            next_iq: 1,
            wait,
            media_conn: None,
            retries_sent: RetryLedger::default(),
        };
        if let Err(error) = client.top_up_prekeys().await {
            return Err(Box::new(LoginFailed { store: client.close().await, error }));
        }
        Ok(client)
    }

    /// Connects and logs in; returns the connection once chatd answered `<success>`.
    async fn connect(
        store: &Store,
        services: &Services,
        route: &Route,
        wait: Duration,
    ) -> Result<Connection, ClientError> {
        let version = AppVersion::new(APP_VERSION.0, APP_VERSION.1, APP_VERSION.2);
        let (jid, payload) = match store.account().ok_or(ClientError::NotEnlisted)? {
            Account::Partner { jid, account_id, user, .. } => {
                let partner = store.endpoints().partner.clone().ok_or(ClientError::NotEnlisted)?;
                let token = services.token(&partner, user, Some(jid)).await?;
                (jid, ClientPayload::interop_login(*account_id, token.into_bytes(), version))
            }
            Account::WhatsApp { jid, phone } => (jid, ClientPayload::web_login(*phone, 0, version)),
        };
        let parsed = Jid::parse(jid).map_err(|_| ClientError::BadJid(jid.clone()))?;
        let mut conn =
            Connection::open(&Dialer::default(), route, &parsed, store.noise_private(), &payload, wait).await?;
        let first = conn.recv(wait).await?;
        if first.tag != "success" {
            conn.close().await;
            return Err(ClientError::Refused(ServerClose::of(&first).unwrap_or(ServerClose::Other(first.tag.clone()))));
        }
        Ok(conn)
    }

    pub fn jid(&self) -> &str {
        self.store.account().map(Account::jid).unwrap_or_default()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sends an IQ and waits for its result; other stanzas are queued for `next_event`.
    async fn iq(&mut self, xmlns: &str, kind: &str, children: Vec<Node>) -> Result<Node, ClientError> {
        let id = format!("c{}", self.next_iq);
        self.next_iq += 1;
        let iq = Node::new("iq")
            .attr("id", id.as_str())
            .attr("xmlns", xmlns)
            .attr("type", kind)
            .attr("to", server())
            .children(children);
        self.conn.send(&iq).await?;
        let result = self.wait_for(|n| n.tag == "iq" && n.get_str("id") == Some(&id)).await?;
        if result.get_str("type") == Some("error") {
            let error = result.child("error");
            return Err(ClientError::Iq {
                code: error.and_then(|e| attr(e, "code")).unwrap_or_default(),
                text: error.and_then(|e| attr(e, "text")).unwrap_or_default(),
            });
        }
        Ok(result)
    }

    /// Receives until a stanza matching `want`; others are queued.
    async fn wait_for(&mut self, want: impl Fn(&Node) -> bool) -> Result<Node, ClientError> {
        loop {
            let node = self.conn.recv(self.wait).await?;
            if want(&node) {
                return Ok(node);
            }
            if let Some(reason) = ServerClose::of(&node) {
                return Err(ClientError::Closed(reason));
            }
            self.pending.push_back(node);
        }
    }

    /// Uploads a batch of one-time prekeys when chatd is running low.
    pub async fn top_up_prekeys(&mut self) -> Result<(), ClientError> {
        let count = self.iq("encrypt", "get", vec![Node::new("count")]).await?;
        let have = count.child("count").and_then(|c| c.get_str("value")).and_then(|v| v.parse().ok()).unwrap_or(0);
        if have >= PREKEY_LOW_WATER {
            return Ok(());
        }
        let keys = self.store.new_prekeys(PREKEY_BATCH)?;
        self.store.save()?;
        let (spk_id, spk, signature) = self.store.signed_prekey()?;
        let list = keys
            .iter()
            .map(|(id, k)| {
                Node::new("key")
                    .children(vec![Node::new("id").bytes(be_bytes(*id, 3)), Node::new("value").bytes(k.to_vec())])
            })
            .collect();
        let identity = self.store.identity().public_key().public_key_bytes().to_vec();
        self.iq(
            "encrypt",
            "set",
            vec![
                Node::new("registration").bytes(be_bytes(self.store.registration_id(), 4)),
                Node::new("type").bytes(vec![5]),
                Node::new("identity").bytes(identity),
                Node::new("list").children(list),
                Node::new("skey").children(vec![
                    Node::new("id").bytes(be_bytes(spk_id, 3)),
                    Node::new("value").bytes(spk.to_vec()),
                    Node::new("signature").bytes(signature),
                ]),
            ],
        )
        .await?;
        Ok(())
    }

    /// Fetches `peer`'s key bundle from chatd and starts a session with it.
    async fn fetch_session(&mut self, peer: &str) -> Result<(), ClientError> {
        let user = Node::new("user").attr("jid", jid_value(peer)?);
        let result = self.iq("encrypt", "get", vec![Node::new("key").children(vec![user])]).await?;
        let user = result
            .child("list")
            .and_then(|l| l.child("user"))
            .ok_or_else(|| ClientError::Protocol("key fetch result has no <user>".into()))?;
        if user.child("error").is_some() {
            return Err(ClientError::NoSuchUser { to: peer.to_owned() });
        }
        let bundle = bundle_from(user, None).ok_or_else(|| ClientError::NoSuchUser { to: peer.to_owned() })?;
        if e2e::start_session(&mut self.store, peer, &bundle).await? {
            self.identity_changed(peer)?;
        }
        Ok(())
    }

    fn identity_changed(&mut self, peer: &str) -> Result<(), ClientError> {
        self.store.log(&serde_json::json!({"dir": "notice", "peer": peer, "text": "security code changed"}))?;
        self.events.push_back(Event::IdentityChanged { peer: peer.to_owned() });
        Ok(())
    }

    /// Encrypts and sends `message` to `to`; returns its id once chatd has acked it.
    pub async fn send_message(&mut self, to: &str, message: &Message) -> Result<String, ClientError> {
        let to = Jid::parse(to).map_err(|_| ClientError::BadJid(to.to_owned()))?.to_account().to_string();
        if !e2e::has_session(&mut self.store, &to) {
            self.fetch_session(&to).await?;
        }
        let plaintext = message.to_plaintext();
        let id = message_id();
        let (kind, ciphertext) = e2e::encrypt(&mut self.store, &to, &plaintext).await?;
        self.store.remember_sent(&id, &to, &plaintext);
        self.store.save()?;
        let mediatype = match message.content() {
            Content::Media(m) => Some(m.kind),
            _ => None,
        };
        self.send_enc(&to, &id, kind, ciphertext, mediatype, None).await?;
        let text = match message.content() {
            Content::Text(t) => t,
            Content::Media(m) => m.summary(),
            Content::Unsupported => String::new(),
        };
        self.store.log(&serde_json::json!({"dir": "out", "peer": to, "id": id, "text": text}))?;
        Ok(id)
    }

    async fn send_enc(
        &mut self,
        to: &str,
        id: &str,
        kind: EncType,
        ciphertext: Vec<u8>,
        mediatype: Option<MediaKind>,
        count: Option<u32>,
    ) -> Result<(), ClientError> {
        let mut enc = Node::new("enc").attr("v", "2").attr("type", kind.as_str());
        if let Some(m) = mediatype {
            enc = enc.attr("mediatype", m.enc_mediatype());
        }
        if let Some(c) = count {
            enc = enc.attr("count", c.to_string());
        }
        let stanza = Node::new("message")
            .attr("to", jid_value(to)?)
            .attr("id", id)
            .attr("type", if mediatype.is_some() { "media" } else { "text" })
            .children(vec![enc.bytes(ciphertext)]);
        self.conn.send(&stanza).await?;
        let ack = self
            .wait_for(|n| n.tag == "ack" && n.get_str("class") == Some("message") && n.get_str("id") == Some(id))
            .await?;
        match ack.get_str("error") {
            None => Ok(()),
            Some(code) => Err(ClientError::Rejected {
                to: to.to_owned(),
                why: match code {
                    "403" => "blocked (by you or by them)".into(),
                    "404" => "no such account".into(),
                    "503" => "the recipient's mailbox is full".into(),
                    c => format!("error {c}"),
                },
            }),
        }
    }

    pub async fn send_text(&mut self, to: &str, text: &str) -> Result<String, ClientError> {
        self.send_message(to, &Message::text(text)).await
    }

    /// The media host and upload auth chatd names (`media_conn`); the host defaults to chatd's
    /// HTTP base, and a bare host name (as WhatsApp gives it) means `https://`.
    async fn media_conn(&mut self) -> Result<MediaConn, ClientError> {
        if let Some(m) = &self.media_conn {
            return Ok(m.clone());
        }
        let result = self.iq("w:m", "set", vec![Node::new("media_conn")]).await?;
        let conn = result.child("media_conn");
        let host = conn
            .and_then(|m| m.child("host"))
            .and_then(|h| h.get_str("hostname"))
            .filter(|h| !h.is_empty())
            .map(|h| if h.contains("://") { h.to_owned() } else { format!("https://{h}") })
            .unwrap_or_else(|| self.store.endpoints().chatd_http.clone());
        let auth = conn.and_then(|m| m.get_str("auth")).unwrap_or_default().to_owned();
        let media_conn = MediaConn { host, auth };
        self.media_conn = Some(media_conn.clone());
        Ok(media_conn)
    }

    /// Encrypts `data`, uploads it (Partner users to their partner server, WhatsApp users to the
    /// WhatsApp media host) and sends the media message: images, videos and audio by MIME type,
    /// anything else as a document (with `label` its caption or file name).
    pub async fn send_media(
        &mut self,
        to: &str,
        data: &[u8],
        mimetype: &str,
        label: Option<String>,
    ) -> Result<String, ClientError> {
        self.send_file(to, data, MediaKind::for_file(mimetype), mimetype, label, None).await
    }

    /// Sends a recorded voice message: `data` must be Ogg/Opus (checked), and its length is
    /// read from the stream. It travels as `audioMessage` with `ptt`, `<enc mediatype="ptt">`.
    pub async fn send_voice_note(&mut self, to: &str, data: &[u8]) -> Result<String, ClientError> {
        let info = ogg::opus_info(data)?;
        let mimetype = media::VOICE_NOTE_MIMETYPE;
        self.send_file(to, data, MediaKind::VoiceNote, mimetype, None, Some(info.seconds)).await
    }

    /// Sends an MP4 video (checked by its `ftyp` box) with an optional caption and length.
    pub async fn send_video(
        &mut self,
        to: &str,
        data: &[u8],
        caption: Option<String>,
        seconds: Option<u32>,
    ) -> Result<String, ClientError> {
        if data.get(4..8) != Some(b"ftyp") {
            return Err(ClientError::NotMp4);
        }
        self.send_file(to, data, MediaKind::Video, "video/mp4", caption, seconds).await
    }

    async fn send_file(
        &mut self,
        to: &str,
        data: &[u8],
        kind: MediaKind,
        mimetype: &str,
        label: Option<String>,
        seconds: Option<u32>,
    ) -> Result<String, ClientError> {
        let encrypted = media::encrypt(data, kind);
        let direct_path = match self.store.account().ok_or(ClientError::NotEnlisted)?.clone() {
            Account::Partner { integrator, .. } => {
                let partner = self.store.endpoints().partner.clone().ok_or(ClientError::NotEnlisted)?;
                let reference = self.services.upload_partner_media(&partner, encrypted.body.clone()).await?;
                format!("/interop/whatsapp/download/{integrator}/{reference}/")
            }
            Account::WhatsApp { .. } => {
                let MediaConn { host, auth } = self.media_conn().await?;
                let body = encrypted.body.clone();
                self.services
                    .upload_whatsapp_media(&host, &auth, kind.mms_type(), body, &encrypted.file_enc_sha256)
                    .await?
            }
        };
        let media = MediaRef {
            kind,
            mimetype: mimetype.to_owned(),
            direct_path,
            media_key: encrypted.media_key.to_vec(),
            file_sha256: encrypted.file_sha256.to_vec(),
            file_enc_sha256: encrypted.file_enc_sha256.to_vec(),
            file_length: encrypted.file_length,
            label,
            seconds,
        };
        self.send_message(to, &Message::media(&media)).await
    }

    /// Downloads and decrypts a received media message, checking its hashes and MAC.
    pub async fn download(&mut self, media: &MediaRef) -> Result<Vec<u8>, ClientError> {
        let host = self.media_conn().await?.host;
        let body = self.services.download(&host, &media.direct_path).await?;
        Ok(media::decrypt(&body, media.kind, &media.media_key, &media.file_enc_sha256, &media.file_sha256)?)
    }

    /// The next event within `wait`: `Ok(None)` when nothing came. Acks, receipts, retries and
    /// pings are handled on the way.
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let node = match self.pending.pop_front() {
                Some(n) => n,
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.conn.recv(left).await {
                        Ok(n) => n,
                        Err(ConnError::Timeout(_)) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if let Some(e) = self.handle(node).await? {
                return Ok(Some(e));
            }
        }
    }

    async fn handle(&mut self, node: Node) -> Result<Option<Event>, ClientError> {
        if let Some(reason) = ServerClose::of(&node) {
            return Ok(Some(Event::Closed(reason)));
        }
        match node.tag.as_str() {
            "message" => self.on_message(node).await,
            "receipt" => self.on_receipt(node).await,
            "notification" => self.on_notification(node).await,
            "iq" if node.get_str("type") == Some("get") => {
                let id = node.get_str("id").unwrap_or_default();
                let reply = Node::new("iq").attr("id", id).attr("type", "result").attr("to", server());
                self.conn.send(&reply).await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn ack(&mut self, class: &str, node: &Node, kind: Option<&str>) -> Result<(), ClientError> {
        let mut ack = Node::new("ack").attr("class", class).attr("id", node.get_str("id").unwrap_or_default());
        if let Some(from) = node.get("from") {
            ack = ack.attr("to", from.clone());
        }
        if let Some(t) = kind {
            ack = ack.attr("type", t);
        }
        self.conn.send(&ack).await?;
        Ok(())
    }

    async fn on_message(&mut self, node: Node) -> Result<Option<Event>, ClientError> {
        let (Some(from), Some(id)) = (peer_of(&node), node.get_str("id").map(str::to_owned)) else {
            return Ok(None);
        };
        let key = format!("{from}/{id}");
        let receipt = Node::new("receipt").attr("id", id.as_str()).attr("to", jid_value(&from)?);
        if self.store.seen(&key) {
            // Redelivered after a lost ack: confirm again, show nothing.
            self.ack("message", &node, None).await?;
            self.conn.send(&receipt).await?;
            return Ok(None);
        }
        // Never a plain ack and nothing shown: a message with no ciphertext for this device asks
        // the sender to re-send (retry receipt), tells the application and leaves a log line.
        let own = self.jid().to_owned();
        let Some(enc) = own_enc(&node, &own).cloned() else {
            return self.undecryptable(&node, from, id, "no <enc> for this device".to_owned()).await;
        };
        let kind = enc.get_str("type").and_then(EncType::parse);
        let bytes = match &enc.content {
            wire::node::Content::Bytes(b) => b.clone(),
            _ => Vec::new(),
        };
        let decrypted = match kind {
            Some(kind) => e2e::decrypt(&mut self.store, &from, kind, &bytes).await.map_err(ClientError::from),
            None => Err(ClientError::Protocol(format!("unknown enc type {:?}", enc.get_str("type")))),
        };
        let message = decrypted.and_then(|d| Ok((Message::from_plaintext(&d.plaintext)?, d.identity_changed)));
        let (message, identity_changed) = match message {
            Ok(m) => m,
            Err(e) => {
                let reason = Report(&e).to_string();
                return self.undecryptable(&node, from, id, reason).await;
            }
        };
        if identity_changed {
            self.identity_changed(&from)?;
        }
        let content = message.content();
        self.retries_sent.succeeded(&key);
        self.store.mark_seen(key);
        self.store.save()?;
        let text = match &content {
            Content::Text(t) => t.clone(),
            Content::Media(m) => m.summary(),
            Content::Unsupported => "[unsupported message]".into(),
        };
        self.store.log(&serde_json::json!({"dir": "in", "peer": from, "id": id, "text": text}))?;
        self.ack("message", &node, None).await?;
        self.conn.send(&receipt).await?;
        let offline = node.get("offline").is_some();
        let event = Event::Message { from, id, content, offline };
        if self.events.is_empty() {
            Ok(Some(event))
        } else {
            self.events.push_back(event);
            Ok(None)
        }
    }

    /// A message this device cannot show: a retry receipt asks the sender to re-send (at most
    /// [`MAX_RETRIES`] per message, as WhatsApp clients stop asking), the application gets an
    /// event and the log a line, and the message is acknowledged so it is not redelivered forever.
    async fn undecryptable(
        &mut self,
        node: &Node,
        from: String,
        id: String,
        reason: String,
    ) -> Result<Option<Event>, ClientError> {
        let reason = match self.retries_sent.failed(&format!("{from}/{id}")) {
            RetryDecision::Ask(count) => {
                tracing::warn!(%from, %id, %reason, count, "message not shown; retry receipt sent");
                self.send_retry_receipt(node, &from, &id, count).await?;
                reason
            }
            RetryDecision::GiveUp => {
                tracing::warn!(%from, %id, %reason, "message not shown; gave up after {MAX_RETRIES} retry receipts");
                format!("{reason} (gave up after {MAX_RETRIES} retry receipts)")
            }
        };
        self.ack("message", node, None).await?;
        Ok(Some(Event::Undecryptable { from, id, reason }))
    }

    /// Asks the sender to re-send: our registration id and a fresh bundle (with a new one-time
    /// prekey), so it can start a new session if ours was lost.
    async fn send_retry_receipt(&mut self, node: &Node, from: &str, id: &str, count: u32) -> Result<(), ClientError> {
        let (otk_id, otk) = self.store.new_prekeys(1)?[0];
        self.store.save()?;
        let (spk_id, spk, signature) = self.store.signed_prekey()?;
        let identity = self.store.identity().public_key().public_key_bytes().to_vec();
        let receipt =
            Node::new("receipt").attr("id", id).attr("to", jid_value(from)?).attr("type", "retry").children(vec![
                Node::new("retry")
                    .attr("count", count.to_string())
                    .attr("id", id)
                    .attr("t", node.get_str("t").unwrap_or("0"))
                    .attr("v", "1"),
                Node::new("registration").bytes(be_bytes(self.store.registration_id(), 4)),
                Node::new("keys").children(vec![
                    Node::new("type").bytes(vec![5]),
                    Node::new("identity").bytes(identity),
                    Node::new("key").children(vec![
                        Node::new("id").bytes(be_bytes(otk_id, 3)),
                        Node::new("value").bytes(otk.to_vec()),
                    ]),
                    Node::new("skey").children(vec![
                        Node::new("id").bytes(be_bytes(spk_id, 3)),
                        Node::new("value").bytes(spk.to_vec()),
                        Node::new("signature").bytes(signature),
                    ]),
                ]),
            ]);
        self.conn.send(&receipt).await?;
        Ok(())
    }

    async fn on_receipt(&mut self, node: Node) -> Result<Option<Event>, ClientError> {
        let kind = node.get_str("type").map(str::to_owned);
        self.ack("receipt", &node, kind.as_deref()).await?;
        let (Some(peer), Some(id)) = (peer_of(&node), node.get_str("id").map(str::to_owned)) else {
            return Ok(None);
        };
        match kind.as_deref() {
            None | Some("inactive") => {
                self.store.log(&serde_json::json!({"dir": "receipt", "peer": peer, "id": id, "text": "delivered"}))?;
                Ok(Some(Event::Delivered { peer, id }))
            }
            // WhatsApp's rule for 1:1 chats: with read receipts off, the user sees none either.
            Some("read") if !self.store.settings().read_receipts => Ok(None),
            Some("read") => {
                // More ids than one come as `<list><item id/>...`.
                let items = node.child("list").map(Node::child_nodes).unwrap_or_default();
                for other in items.iter().filter(|i| i.tag == "item").filter_map(|i| i.get_str("id")) {
                    self.events.push_back(Event::Read { peer: peer.clone(), id: other.to_owned() });
                }
                Ok(Some(Event::Read { peer, id }))
            }
            Some("retry") => self.on_retry(&node, peer, id).await,
            _ => Ok(None),
        }
    }

    /// Honours a retry receipt: a fresh session from the keys it carries (or the current one),
    /// then the same message re-encrypted, with `count` on its `<enc>`.
    async fn on_retry(&mut self, node: &Node, peer: String, id: String) -> Result<Option<Event>, ClientError> {
        let Some((sent, plaintext)) = self.store.sent(&id, &peer) else {
            tracing::debug!(%peer, %id, "retry receipt for a message we no longer hold");
            return Ok(None);
        };
        if sent.retries >= MAX_RETRIES {
            return Ok(None);
        }
        sent.retries += 1;
        let count = sent.retries;
        let bundle = node.child("keys").and_then(|k| bundle_from(k, child_bytes(node, "registration")));
        let fresh_session = bundle.is_some();
        if let Some(bundle) = bundle {
            self.store.drop_session(&e2e::address(&peer));
            if e2e::start_session(&mut self.store, &peer, &bundle).await? {
                self.identity_changed(&peer)?;
            }
        } else if !e2e::has_session(&mut self.store, &peer) {
            self.fetch_session(&peer).await?;
        }
        let mediatype = match Message::from_plaintext(&plaintext)?.content() {
            Content::Media(m) => Some(m.kind),
            _ => None,
        };
        let (kind, ciphertext) = e2e::encrypt(&mut self.store, &peer, &plaintext).await?;
        self.store.save()?;
        self.send_enc(&peer, &id, kind, ciphertext, mediatype, Some(count)).await?;
        Ok(Some(Event::Resent { peer, id, fresh_session }))
    }

    async fn on_notification(&mut self, node: Node) -> Result<Option<Event>, ClientError> {
        self.ack("notification", &node, None).await?;
        if node.get_str("type") != Some("encrypt") {
            return Ok(None);
        }
        if node.child("identity").is_some() {
            let Some(peer) = peer_of(&node) else { return Ok(None) };
            // The next message fetches the new keys.
            self.store.drop_session(&e2e::address(&peer));
            self.store.save()?;
            self.identity_changed(&peer)?;
            return Ok(None);
        }
        if node.child("count").is_some() {
            self.top_up_prekeys().await?;
        }
        Ok(None)
    }

    /// Tells `peer` that the messages `ids` (theirs, shown to the user) were read, as
    /// `<receipt id=FIRST to=PEER type="read" t=NOW>` with any further ids in `<list><item id/>`.
    /// Does nothing when the user turned read receipts off; `Ok(true)` when one was sent.
    pub async fn mark_read(&mut self, peer: &str, ids: &[String]) -> Result<bool, ClientError> {
        let Some((first, rest)) = ids.split_first() else { return Ok(false) };
        if !self.store.settings().read_receipts {
            return Ok(false);
        }
        let to = Jid::parse(peer).map_err(|_| ClientError::BadJid(peer.to_owned()))?.to_account();
        let now = wire_io::clock::unix_now();
        let mut receipt = Node::new("receipt")
            .attr("id", first.as_str())
            .attr("to", Value::Jid(to))
            .attr("type", "read")
            .attr("t", now.to_string());
        if !rest.is_empty() {
            let items = rest.iter().map(|id| Node::new("item").attr("id", id.as_str())).collect();
            receipt = receipt.children(vec![Node::new("list").children(items)]);
        }
        self.conn.send(&receipt).await?;
        Ok(true)
    }

    /// Turns the user's read receipts on or off (kept in the device store).
    pub fn set_read_receipts(&mut self, on: bool) -> Result<(), ClientError> {
        self.store.set_read_receipts(on);
        Ok(self.store.save()?)
    }

    /// Forgets the session with `peer` (the user's "reset secure session"; also what a device
    /// that lost its state looks like). The next message either way starts a new one.
    pub fn forget_session(&mut self, peer: &str) -> Result<(), ClientError> {
        self.store.drop_session(&e2e::address(peer));
        Ok(self.store.save()?)
    }

    /// A keepalive: `<iq xmlns="w:p" type="get"><ping/></iq>` and its result.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.iq("w:p", "get", vec![Node::new("ping")]).await.map(drop)
    }

    /// Blocks or unblocks `jid`.
    pub async fn set_blocked(&mut self, jid: &str, block: bool) -> Result<(), ClientError> {
        let item =
            Node::new("item").attr("jid", jid_value(jid)?).attr("action", if block { "block" } else { "unblock" });
        self.iq("blocklist", "set", vec![item]).await.map(drop)
    }

    /// The accounts this user has blocked.
    pub async fn blocklist(&mut self) -> Result<Vec<String>, ClientError> {
        let result = self.iq("blocklist", "get", Vec::new()).await?;
        Ok(result
            .child("list")
            .map(|l| l.child_nodes().iter().filter_map(|i| attr(i, "jid")).collect())
            .unwrap_or_default())
    }

    /// Deletes the account at chatd (the user opted out); the device forgets its enlistment.
    pub async fn delete_account(mut self) -> Result<Store, ClientError> {
        self.iq("urn:xmpp:whatsapp:account", "set", vec![Node::new("remove")]).await?;
        self.store.set_account(None);
        self.store.save()?;
        self.conn.close().await;
        Ok(self.store)
    }

    /// Closes the connection and hands back the store.
    pub async fn close(self) -> Store {
        self.conn.close().await;
        self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(body: &[u8]) -> Node {
        Node::new("enc").attr("v", "2").attr("type", "msg").bytes(body.to_vec())
    }

    #[test]
    fn own_enc_is_the_direct_one_or_the_one_addressed_to_this_device() {
        let own = "1-42@interop";
        let direct = Node::new("message").children(vec![enc(b"direct")]);
        assert_eq!(own_enc(&direct, own), Some(&enc(b"direct")));
        let to = |jid: Jid, body: &[u8]| Node::new("to").attr("jid", Value::Jid(jid)).children(vec![enc(body)]);
        let md = Node::new("message").children(vec![Node::new("participants").children(vec![
            to(Jid::with_device("15551230009", Server::Whatsapp, 0), b"phone"),
            to(Jid::interop(1, "42", 0), b"mine"),
        ])]);
        assert_eq!(own_enc(&md, own), Some(&enc(b"mine")));
        let other = Node::new("message")
            .children(vec![Node::new("participants").children(vec![to(Jid::interop(1, "42", 3), b"another device")])]);
        assert_eq!(own_enc(&other, own), None);
        assert_eq!(own_enc(&Node::new("message"), own), None);
    }

    #[test]
    fn the_peer_is_the_sending_account() {
        let from = |j: Jid| Node::new("message").attr("from", Value::Jid(j));
        assert_eq!(
            peer_of(&from(Jid::with_device("15551230009", Server::Whatsapp, 7))).as_deref(),
            Some("15551230009@s.whatsapp.net")
        );
        assert_eq!(peer_of(&from(Jid::interop(1, "42", 0))).as_deref(), Some("1-42@interop"));
        assert_eq!(peer_of(&Node::new("message")), None);
    }
}
