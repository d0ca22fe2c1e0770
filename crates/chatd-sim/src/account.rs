//! Accounts as chatd keeps them: per account the blocklist, contacts, privacy and LID; per device
//! the Noise key, Signal key material (public halves only) and the offline mailbox.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

/// Which side of the interop an account is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountKind {
    /// A Partner user, enlisted through the interop registration API.
    Interop { integrator: u16, user_identifier: String },
    /// A WhatsApp-side user, provisioned device by device through the admin API.
    WhatsApp { phone: u64 },
}

/// A signed prekey: id, public key, signature by the identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPreKey {
    pub id: u32,
    pub public: [u8; 32],
    pub signature: [u8; 64],
}

/// The public key material others fetch to start a Signal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    pub registration_id: u32,
    pub identity: [u8; 32],
    pub signed_prekey: SignedPreKey,
    /// One-time prekeys, each handed out once.
    pub one_time: VecDeque<(u32, [u8; 32])>,
}

/// What kind of stanza a mailbox entry is, as named by the `class` of the ack that removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckClass {
    Message,
    Receipt,
    Notification,
}

impl AckClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AckClass::Message => "message",
            AckClass::Receipt => "receipt",
            AckClass::Notification => "notification",
        }
    }

    pub fn parse(s: &str) -> Option<AckClass> {
        Some(match s {
            "message" => AckClass::Message,
            "receipt" => AckClass::Receipt,
            "notification" => AckClass::Notification,
            _ => return None,
        })
    }
}

/// A stanza to queue: what identifies it for the ack that removes it, and its bytes.
#[derive(Debug, Clone)]
pub struct Queued {
    pub class: AckClass,
    pub id: String,
    /// The sending account: the recipient's ack names it in `to`.
    pub from: String,
    /// The sending device of that account (a retry receipt goes back to it).
    pub from_device: u16,
    /// The encoded stanza payload, ready to seal.
    pub payload: Bytes,
}

/// One stanza waiting for its recipient's ack.
#[derive(Debug, Clone)]
pub struct MailboxEntry {
    /// Position in the device's stream, so a connection knows what it has already sent.
    pub seq: u64,
    pub class: AckClass,
    pub id: String,
    /// The sending account: the recipient's ack names it in `to`.
    pub from: String,
    pub from_device: u16,
    /// The encoded stanza payload, ready to seal.
    pub payload: Bytes,
    pub stored_at: u64,
}

/// The offline mailbox. Entries stay until the recipient acks them (at-least-once delivery); it
/// is bounded by count and bytes, and a full mailbox refuses new entries rather than dropping old
/// ones.
#[derive(Debug, Default)]
pub struct Mailbox {
    entries: VecDeque<MailboxEntry>,
    next_seq: u64,
    bytes: usize,
}

/// Why a stanza could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mailbox full ({entries} entries, {bytes} bytes)")]
pub struct MailboxFull {
    pub entries: usize,
    pub bytes: usize,
}

impl Mailbox {
    /// Queues a stanza; returns its sequence number.
    pub fn push(&mut self, stanza: Queued, now: u64, limits: (usize, usize)) -> Result<u64, MailboxFull> {
        self.room_for(stanza.payload.len(), limits)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += stanza.payload.len();
        let Queued { class, id, from, from_device, payload } = stanza;
        self.entries.push_back(MailboxEntry { seq, class, id, from, from_device, payload, stored_at: now });
        Ok(seq)
    }

    /// Whether a stanza of `len` bytes fits under `limits` (entries, bytes).
    pub fn room_for(&self, len: usize, limits: (usize, usize)) -> Result<(), MailboxFull> {
        let (max_entries, max_bytes) = limits;
        if self.entries.len() >= max_entries || self.bytes + len > max_bytes {
            return Err(MailboxFull { entries: self.entries.len(), bytes: self.bytes });
        }
        Ok(())
    }

    /// Entries after `seq` (exclusive), in order; `None` means from the start.
    pub fn after(&self, seq: Option<u64>) -> impl Iterator<Item = &MailboxEntry> {
        self.entries.iter().filter(move |e| seq.is_none_or(|s| e.seq > s))
    }

    /// Removes the entry an ack (or a delivery receipt) names; returns it.
    pub fn ack(&mut self, class: AckClass, id: &str, from: Option<&str>) -> Option<MailboxEntry> {
        let pos = self.entries.iter().position(|e| e.class == class && e.id == id && from.is_none_or(|f| f == e.from));
        let e = pos.and_then(|p| self.entries.remove(p))?;
        self.bytes -= e.payload.len();
        Some(e)
    }

    /// The sequence number the next entry will get: entries below it were queued before now.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Drops entries stored before `cutoff` (the 30-day retention).
    pub fn expire(&mut self, cutoff: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| e.stored_at >= cutoff);
        self.bytes = self.entries.iter().map(|e| e.payload.len()).sum();
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Most devices an account may have: the phone and four companions, WhatsApp's public limit for
/// linked devices.
pub const MAX_DEVICES: usize = 5;

/// One device of an account: it logs in with its own Noise static key, publishes its own Signal
/// keys, and has its own mailbox (delivery is per device).
#[derive(Debug)]
pub struct Device {
    /// The Noise static public key the device must log in with (a Partner user's `authkey`).
    pub noise_public: [u8; 32],
    pub keys: KeyBundle,
    pub mailbox: Mailbox,
    /// The device's `ADVSignedDeviceIdentity` as registered (WhatsApp-side companions), sent in the
    /// `<keys>` of a retry receipt on its behalf.
    pub device_identity: Option<Vec<u8>>,
}

impl Device {
    pub fn new(noise_public: [u8; 32], keys: KeyBundle) -> Device {
        Device { noise_public, keys, mailbox: Mailbox::default(), device_identity: None }
    }
}

/// An account.
#[derive(Debug)]
pub struct Account {
    /// The account's JID text (no device), the key everything is stored under.
    pub jid: String,
    /// `interopData.accountID` for Partner users; the phone number for WhatsApp-side users.
    pub account_id: u64,
    pub kind: AccountKind,
    /// The account's devices by id, never empty. Partner users have exactly one, 0; a WhatsApp-side
    /// user has those registered for its phone (0 for the phone itself, companions 1 and up).
    pub devices: BTreeMap<u16, Device>,
    pub blocklist: BTreeSet<String>,
    /// Accounts this one has exchanged stanzas with: they hear about its identity changes.
    pub contacts: BTreeSet<String>,
    /// Unix seconds of the last login (or enlistment); drives the 30-day un-enlistment.
    pub last_active: u64,
    /// The `privacy` IQ's settings.
    pub privacy: crate::privacy::Privacy,
}

impl Account {
    /// A new account with one device.
    pub fn new(jid: String, account_id: u64, kind: AccountKind, device_id: u16, device: Device, now: u64) -> Account {
        Account {
            jid,
            account_id,
            kind,
            devices: BTreeMap::from([(device_id, device)]),
            blocklist: BTreeSet::new(),
            contacts: BTreeSet::new(),
            last_active: now,
            privacy: Default::default(),
        }
    }

    /// The account's LID (`N@lid`), a pure function of its JID: see [`lid_user_for`].
    pub fn lid(&self) -> String {
        format!("{}@lid", lid_user_for(&self.jid))
    }

    /// The ids of the devices the account has, in order.
    pub fn device_ids(&self) -> Vec<u16> {
        self.devices.keys().copied().collect()
    }

    /// The device a JID naming this account reaches: the device it names, if the account has it;
    /// for device 0 (a JID with no device says the same) the phone, or, when the phone is not
    /// registered, the account's first device (a WhatsApp-side user known only by a companion).
    /// A key fetch and a direct `<enc>` message for the bare account so reach the one device that
    /// can use them.
    pub fn resolve_device(&self, named: u16) -> Option<u16> {
        match named {
            0 => self.devices.keys().next().copied(),
            d => self.devices.contains_key(&d).then_some(d),
        }
    }

    /// The account's primary device: its phone (0), or its first device without one.
    pub fn primary(&self) -> u16 {
        self.resolve_device(0).unwrap_or(0)
    }

    /// The primary device, for accounts that have exactly one (Partner users).
    pub fn primary_mut(&mut self) -> Option<&mut Device> {
        let id = self.primary();
        self.devices.get_mut(&id)
    }

    /// Queued stanzas across the account's devices.
    pub fn mailbox_entries(&self) -> usize {
        self.devices.values().map(|d| d.mailbox.len()).sum()
    }
}

/// The user part of the LID of the account stored under `jid`: 15 decimal digits from SHA-256 of
/// the JID text, so it is stable across restarts and re-enlistment and needs no stored counter.
/// WhatsApp assigns LIDs server-side with no public rule; this is the simulator's choice.
pub fn lid_user_for(jid: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jid.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (100_000_000_000_000 + u64::from_be_bytes(first) % 900_000_000_000_000).to_string()
}
