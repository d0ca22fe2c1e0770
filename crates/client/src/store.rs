//! The device's state on disk: its keys, Signal sessions and peer identities, the message ids it
//! has already shown (so at-least-once redelivery never reaches the user twice), recent sent
//! messages (to answer retry receipts), and the thread log the CLI prints.
//!
//! Everything a protocol step changes is committed in one atomic write (temp file, fsync,
//! rename) of `state.json`, so a crash leaves either the old state or the new, never a session
//! that ran ahead of the ids it has shown. The thread log is an append-only `thread.jsonl`.
//! Both files are created with mode 0600: they hold private keys.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use error_report::Report;
use serde::{Deserialize, Serialize};
use wacore_libsignal::protocol::{
    Direction, GenericSignedPreKey, IdentityChange, IdentityKey, IdentityKeyPair, IdentityKeyStore, KeyPair, PreKeyId,
    PreKeyRecord, PreKeyStore, PrivateKey, ProtocolAddress, PublicKey, SessionRecord, SessionStore,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore, Timestamp,
};

/// How many shown message ids are remembered (far more than a mailbox redelivers at once).
const SEEN_CAPACITY: usize = 4096;
/// How many sent messages are kept to answer retry receipts.
const OUTBOX_CAPACITY: usize = 256;
/// One-time prekeys generated per batch.
pub const PREKEY_BATCH: u32 = 30;

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a client state file ({reason}); was it written by another program?")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no device state in {0}: run `interop-client enlist` first")]
    Missing(PathBuf),
    #[error("a device is already set up in {0}; use another --state directory")]
    Exists(PathBuf),
    #[error("signal record")]
    Record(#[from] SignalProtocolError),
}

/// Who this device is, once enlisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Account {
    /// A Partner user, enlisted through the interop API; logs in through the proxy.
    Partner { jid: String, account_id: u64, integrator: u16, user: String },
    /// A WhatsApp-side user of the simulator; logs in directly with the web payload.
    WhatsApp { jid: String, phone: u64 },
}

impl Account {
    pub fn jid(&self) -> &str {
        match self {
            Account::Partner { jid, .. } | Account::WhatsApp { jid, .. } => jid,
        }
    }
}

/// Where the device's services are (kept so later commands need no flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    /// The simulator's (chatd's) HTTP base: enlistment, media host.
    pub chatd_http: String,
    /// The partner server: tokens, push wake-up, media hosting (Partner users only).
    #[serde(default)]
    pub partner: Option<String>,
    /// PEM CA certificates trusted for these HTTPS endpoints besides the platform's roots (a
    /// private PKI, or the embedded default's local CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// The user's settings, kept with the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Send read receipts for the messages shown, and show the peers' (WhatsApp's rule for 1:1
    /// chats: with this off, the user neither sends nor sees them). On by default.
    #[serde(default = "on")]
    pub read_receipts: bool,
}

fn on() -> bool {
    true
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { read_receipts: true }
    }
}

/// A message this device sent, kept to re-encrypt on a retry receipt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    pub id: String,
    pub to: String,
    /// The padded plaintext (the `Message` protobuf and its padding).
    pub plaintext: String,
    pub retries: u32,
}

/// Private keys: no `Debug`, so they cannot reach a log line.
#[derive(Serialize, Deserialize)]
struct Keys {
    noise_private: String,
    identity: String,
    registration_id: u32,
}

/// The libsignal identity store: our identity, and the peers' we have seen (trust on first use,
/// and on change, as WhatsApp does: a change is shown to the user, not refused).
#[derive(Serialize, Deserialize)]
pub struct Identities {
    #[serde(skip)]
    own: Option<IdentityKeyPair>,
    #[serde(skip)]
    registration_id: u32,
    peers: BTreeMap<String, String>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities").field("peers", &self.peers.len()).finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Sessions {
    records: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PreKeys {
    records: BTreeMap<u32, String>,
    next_id: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SignedPreKeys {
    records: BTreeMap<u32, String>,
    current: u32,
}

#[derive(Serialize, Deserialize)]
struct State {
    version: u32,
    keys: Keys,
    account: Option<Account>,
    endpoints: Endpoints,
    /// Absent in state files written before settings existed: the defaults.
    #[serde(default)]
    settings: Settings,
    identities: Identities,
    sessions: Sessions,
    prekeys: PreKeys,
    signed_prekeys: SignedPreKeys,
    seen: VecDeque<String>,
    outbox: VecDeque<Sent>,
}

/// The device state, in memory, with its file.
pub struct Store {
    dir: Option<PathBuf>,
    noise_private: zeroize::Zeroizing<[u8; 32]>,
    state: State,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).field("account", &self.state.account).finish_non_exhaustive()
    }
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn unb64(s: &str) -> Result<Vec<u8>, SignalProtocolError> {
    B64.decode(s).map_err(|_| SignalProtocolError::InvalidProtobufEncoding)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// A CSPRNG seeded from the OS (ChaCha12); `Send`, unlike the thread-local one, so futures that
/// hold it across an await can move between threads.
pub fn rng() -> rand::rngs::StdRng {
    rand::make_rng()
}

/// A fresh random 32-byte value from the OS.
pub fn random32() -> [u8; 32] {
    let mut k = [0u8; 32];
    // aws-lc's RNG only fails if the OS has no entropy source, which no supported target lacks.
    aws_lc_rs::rand::fill(&mut k).expect("OS randomness");
    k
}

impl Store {
    /// A new device with fresh keys, kept in `dir` (created, must not hold a device already),
    /// or only in memory when `dir` is `None` (tests, and simulated WhatsApp-side users).
    pub fn create(dir: Option<&Path>) -> Result<Store, StoreError> {
        if let Some(d) = dir {
            if d.join("state.json").exists() {
                return Err(StoreError::Exists(d.to_owned()));
            }
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let mut rng = rng();
        let identity = IdentityKeyPair::generate(&mut rng);
        let registration_id = (u32::from_be_bytes(random32()[..4].try_into().unwrap_or_default()) % 16380) + 1;
        let noise = random32();
        let mut store = Store {
            dir: dir.map(Path::to_owned),
            noise_private: zeroize::Zeroizing::new(noise),
            state: State {
                version: 1,
                keys: Keys { noise_private: b64(&noise), identity: b64(&identity.serialize()), registration_id },
                account: None,
                endpoints: Endpoints::default(),
                settings: Settings::default(),
                identities: Identities { own: Some(identity), registration_id, peers: BTreeMap::new() },
                sessions: Sessions::default(),
                prekeys: PreKeys { records: BTreeMap::new(), next_id: 1 },
                signed_prekeys: SignedPreKeys::default(),
                seen: VecDeque::new(),
                outbox: VecDeque::new(),
            },
        };
        store.rotate_signed_prekey()?;
        store.save()?;
        Ok(store)
    }

    /// The device kept in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("state.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::Missing(dir.to_owned())),
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |reason: String| StoreError::Corrupt { path: path.clone(), reason };
        let mut state: State = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != 1 {
            return Err(corrupt(format!("version {} is not 1", state.version)));
        }
        let identity = IdentityKeyPair::try_from(&unb64(&state.keys.identity)?[..])?;
        let noise: [u8; 32] = unb64(&state.keys.noise_private)?
            .try_into()
            .map_err(|_| corrupt("the Noise key is not 32 bytes".into()))?;
        state.identities.own = Some(identity);
        state.identities.registration_id = state.keys.registration_id;
        Ok(Store { dir: Some(dir.to_owned()), noise_private: zeroize::Zeroizing::new(noise), state })
    }

    /// Commits the state to disk (nothing to do for an in-memory device).
    pub fn save(&self) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), reason: Report(&e).to_string() })?;
        let mut file = private_file(&tmp, false)?;
        file.write_all(&text).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    /// Appends one entry to the thread log (what the user was shown).
    pub fn log(&self, entry: &serde_json::Value) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = dir.join("thread.jsonl");
        let mut file = private_file(&path, true)?;
        writeln!(file, "{entry}").map_err(io(&path))
    }

    pub fn noise_private(&self) -> &[u8; 32] {
        &self.noise_private
    }

    pub fn identity(&self) -> &IdentityKeyPair {
        self.state.identities.own.as_ref().expect("identity loaded with the store")
    }

    pub fn registration_id(&self) -> u32 {
        self.state.keys.registration_id
    }

    pub fn account(&self) -> Option<&Account> {
        self.state.account.as_ref()
    }

    pub fn set_account(&mut self, account: Option<Account>) {
        self.state.account = account;
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.state.endpoints
    }

    pub fn set_endpoints(&mut self, endpoints: Endpoints) {
        self.state.endpoints = endpoints;
    }

    pub fn settings(&self) -> &Settings {
        &self.state.settings
    }

    /// Turns read receipts on or off (commit with [`Store::save`]).
    pub fn set_read_receipts(&mut self, on: bool) {
        self.state.settings.read_receipts = on;
    }

    /// The current signed prekey: id, public key, signature.
    pub fn signed_prekey(&self) -> Result<(u32, [u8; 32], Vec<u8>), StoreError> {
        let id = self.state.signed_prekeys.current;
        let record = self.state.signed_prekeys.get(id)?;
        let public = record.public_key()?.public_key_bytes().try_into().unwrap_or_default();
        Ok((id, public, record.signature()?))
    }

    /// A new signed prekey, signed by the identity key the Signal way (over `0x05 || public`).
    fn rotate_signed_prekey(&mut self) -> Result<(), StoreError> {
        let mut rng = rng();
        let pair = KeyPair::generate(&mut rng);
        let signature = self
            .identity()
            .private_key()
            .calculate_signature(&pair.public_key.serialize(), &mut rng)
            .map_err(SignalProtocolError::from)?;
        let id = self.state.signed_prekeys.current + 1;
        let record = SignedPreKeyRecord::new(id.into(), Timestamp::from_epoch_millis(now_millis()), &pair, &signature);
        self.state.signed_prekeys.records.insert(id, b64(&record.serialize()?));
        self.state.signed_prekeys.current = id;
        Ok(())
    }

    /// Makes `n` new one-time prekeys; returns their ids and public keys for upload.
    pub fn new_prekeys(&mut self, n: u32) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        let mut rng = rng();
        let mut out = Vec::new();
        for _ in 0..n {
            let id = self.state.prekeys.next_id;
            // Prekey ids are 24-bit on the wire.
            self.state.prekeys.next_id = if id >= 0xFF_FFFF { 1 } else { id + 1 };
            let pair = KeyPair::generate(&mut rng);
            let record = PreKeyRecord::new(id.into(), &pair);
            self.state.prekeys.records.insert(id, b64(&record.serialize()?));
            out.push((id, pair.public_key.public_key_bytes().try_into().unwrap_or_default()));
        }
        Ok(out)
    }

    /// Whether this message was already shown to the user.
    pub fn seen(&self, key: &str) -> bool {
        self.state.seen.iter().any(|k| k == key)
    }

    pub fn mark_seen(&mut self, key: String) {
        if self.state.seen.len() == SEEN_CAPACITY {
            self.state.seen.pop_front();
        }
        self.state.seen.push_back(key);
    }

    pub fn remember_sent(&mut self, id: &str, to: &str, plaintext: &[u8]) {
        if self.state.outbox.len() == OUTBOX_CAPACITY {
            self.state.outbox.pop_front();
        }
        self.state.outbox.push_back(Sent { id: id.into(), to: to.into(), plaintext: b64(plaintext), retries: 0 });
    }

    /// A sent message to `to` with `id`, its plaintext, and how often it was re-sent.
    pub fn sent(&mut self, id: &str, to: &str) -> Option<(&mut Sent, Vec<u8>)> {
        let sent = self.state.outbox.iter_mut().find(|s| s.id == id && s.to == to)?;
        let plain = B64.decode(&sent.plaintext).ok()?;
        Some((sent, plain))
    }

    /// Forgets the session with `peer` (its identity changed, or it asked for a fresh one).
    pub fn drop_session(&mut self, peer: &ProtocolAddress) {
        self.state.sessions.records.remove(peer.name());
    }

    /// The peer's identity key we know, if any (32 bytes).
    pub fn peer_identity(&self, peer: &str) -> Option<Vec<u8>> {
        let key = unb64(self.state.identities.peers.get(peer)?).ok()?;
        IdentityKey::decode(&key).ok().map(|k| k.public_key().public_key_bytes().to_vec())
    }

    /// The four libsignal stores, borrowed apart as libsignal's functions want them.
    pub fn signal(&mut self) -> (&mut Sessions, &mut Identities, &mut PreKeys, &mut SignedPreKeys) {
        let s = &mut self.state;
        (&mut s.sessions, &mut s.identities, &mut s.prekeys, &mut s.signed_prekeys)
    }
}

impl Sessions {
    pub fn contains(&self, peer: &str) -> bool {
        self.records.contains_key(peer)
    }
}

impl PreKeys {
    /// One-time prekeys not used up yet.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
impl Store {
    /// A copy of the whole device state: what an attacker who read the disk would hold.
    pub(crate) fn clone_for_test(&self) -> Store {
        let mut state: State = serde_json::from_value(serde_json::to_value(&self.state).unwrap()).unwrap();
        state.identities.own = self.state.identities.own.clone();
        state.identities.registration_id = self.state.identities.registration_id;
        Store { dir: None, noise_private: self.noise_private.clone(), state }
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn private_file(path: &Path, append: bool) -> Result<std::fs::File, StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(io(path))
}

fn not_found() -> SignalProtocolError {
    SignalProtocolError::InvalidState("store", "no such record".into())
}

impl SignedPreKeys {
    fn get(&self, id: u32) -> Result<SignedPreKeyRecord, SignalProtocolError> {
        SignedPreKeyRecord::deserialize(&unb64(self.records.get(&id).ok_or_else(not_found)?)?)
    }
}

type SignalResult<T> = Result<T, SignalProtocolError>;

#[async_trait::async_trait]
impl IdentityKeyStore for Identities {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        self.own.clone().ok_or_else(not_found)
    }

    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let new = b64(&identity.serialize());
        let old = self.peers.insert(address.name().to_owned(), new.clone());
        Ok(match old {
            Some(old) if old != new => IdentityChange::ReplacedExisting,
            _ => IdentityChange::NewOrUnchanged,
        })
    }

    async fn is_trusted_identity(&self, _: &ProtocolAddress, _: &IdentityKey, _: Direction) -> SignalResult<bool> {
        // WhatsApp's model: a changed key is accepted and shown as a security notice in the
        // thread (the client emits it), never silently refused.
        Ok(true)
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        self.peers.get(address.name()).map(|k| IdentityKey::decode(&unb64(k)?)).transpose()
    }
}

#[async_trait::async_trait]
impl SessionStore for Sessions {
    async fn load_session(&self, address: &ProtocolAddress) -> SignalResult<Option<SessionRecord>> {
        self.records.get(address.name()).map(|r| SessionRecord::deserialize(&unb64(r)?)).transpose()
    }

    async fn has_session(&self, address: &ProtocolAddress) -> SignalResult<bool> {
        Ok(self.records.contains_key(address.name()))
    }

    async fn store_session(&mut self, address: &ProtocolAddress, record: SessionRecord) -> SignalResult<()> {
        self.records.insert(address.name().to_owned(), b64(&record.serialize()?));
        Ok(())
    }
}

#[async_trait::async_trait]
impl PreKeyStore for PreKeys {
    async fn get_pre_key(&self, id: PreKeyId) -> SignalResult<PreKeyRecord> {
        PreKeyRecord::deserialize(&unb64(
            self.records.get(&u32::from(id)).ok_or(SignalProtocolError::InvalidPreKeyId)?,
        )?)
    }

    async fn save_pre_key(&mut self, id: PreKeyId, record: &PreKeyRecord) -> SignalResult<()> {
        self.records.insert(id.into(), b64(&record.serialize()?));
        Ok(())
    }

    async fn remove_pre_key(&mut self, id: PreKeyId) -> SignalResult<()> {
        self.records.remove(&u32::from(id));
        Ok(())
    }
}

#[async_trait::async_trait]
impl SignedPreKeyStore for SignedPreKeys {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SignalResult<SignedPreKeyRecord> {
        self.get(id.into()).map_err(|_| SignalProtocolError::InvalidSignedPreKeyId)
    }

    async fn save_signed_pre_key(&mut self, id: SignedPreKeyId, record: &SignedPreKeyRecord) -> SignalResult<()> {
        self.records.insert(id.into(), b64(&record.serialize()?));
        Ok(())
    }
}

/// A peer's public key from its 32 wire bytes.
pub fn public_key(bytes: &[u8]) -> Result<PublicKey, SignalProtocolError> {
    Ok(PublicKey::from_djb_public_key_bytes(bytes)?)
}

/// A private key from 32 bytes (tests).
pub fn private_key(bytes: &[u8]) -> Result<PrivateKey, SignalProtocolError> {
    Ok(PrivateKey::deserialize(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_reopen_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(Some(dir.path())).unwrap();
        let prekeys = store.new_prekeys(3).unwrap();
        store.mark_seen("a/1".into());
        store.set_account(Some(Account::WhatsApp { jid: "1@s.whatsapp.net".into(), phone: 1 }));
        store.save().unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.noise_private(), store.noise_private());
        assert_eq!(again.identity().public_key(), store.identity().public_key());
        assert_eq!(again.registration_id(), store.registration_id());
        assert_eq!(again.signed_prekey().unwrap(), store.signed_prekey().unwrap());
        assert!(again.seen("a/1") && !again.seen("a/2"));
        assert_eq!(again.state.prekeys.records.len(), prekeys.len());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("state.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(Store::create(Some(dir.path())), Err(StoreError::Exists(_))));
    }

    #[test]
    fn read_receipts_are_on_by_default_kept_and_read_from_older_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(Some(dir.path())).unwrap();
        assert!(store.settings().read_receipts);
        store.set_read_receipts(false);
        store.save().unwrap();
        assert!(!Store::open(dir.path()).unwrap().settings().read_receipts);
        // A state file from before settings existed: read receipts on.
        let path = dir.path().join("state.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("settings").unwrap();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(Store::open(dir.path()).unwrap().settings().read_receipts);
    }

    #[test]
    fn unreadable_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Missing(_))));
        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn signed_prekey_verifies_with_the_simulators_check() {
        let store = Store::create(None).unwrap();
        let (_, public, signature) = store.signed_prekey().unwrap();
        let identity: [u8; 32] = store.identity().public_key().public_key_bytes().try_into().unwrap();
        let mut msg = vec![5u8];
        msg.extend_from_slice(&public);
        wire::xeddsa::verify(&identity, &msg, &signature.try_into().unwrap()).unwrap();
    }
}
