//! Accounts as chatd keeps them: identity, Signal key material (public halves only), the offline
//! mailbox, blocklist and contacts.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;

/// Which side of the interop an account is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountKind {
    /// A Partner user, enlisted through the interop registration API.
    Interop { integrator: u16, user_identifier: String },
    /// A WhatsApp-side user, provisioned through the admin API.
    WhatsApp { phone: u64, device: u32 },
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

/// One stanza waiting for its recipient's ack.
#[derive(Debug, Clone)]
pub struct MailboxEntry {
    /// Position in the account's stream, so a connection knows what it has already sent.
    pub seq: u64,
    pub class: AckClass,
    pub id: String,
    /// The `from` of the stanza: the recipient's ack names it in `to`.
    pub from: String,
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
    pub fn push(
        &mut self,
        class: AckClass,
        id: String,
        from: String,
        payload: Bytes,
        now: u64,
        limits: (usize, usize),
    ) -> Result<u64, MailboxFull> {
        let (max_entries, max_bytes) = limits;
        if self.entries.len() >= max_entries || self.bytes + payload.len() > max_bytes {
            return Err(MailboxFull { entries: self.entries.len(), bytes: self.bytes });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += payload.len();
        self.entries.push_back(MailboxEntry { seq, class, id, from, payload, stored_at: now });
        Ok(seq)
    }

    /// Entries after `seq` (exclusive), in order; `None` means from the start.
    pub fn after(&self, seq: Option<u64>) -> impl Iterator<Item = &MailboxEntry> {
        self.entries.iter().filter(move |e| seq.is_none_or(|s| e.seq > s))
    }

    /// Removes the entry an ack names; returns whether one was removed.
    pub fn ack(&mut self, class: AckClass, id: &str, from: Option<&str>) -> bool {
        let pos = self.entries.iter().position(|e| e.class == class && e.id == id && from.is_none_or(|f| f == e.from));
        match pos.and_then(|p| self.entries.remove(p)) {
            Some(e) => {
                self.bytes -= e.payload.len();
                true
            }
            None => false,
        }
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

/// An account.
#[derive(Debug)]
pub struct Account {
    /// The account's JID text (no device), the key everything is stored under.
    pub jid: String,
    /// `interopData.accountID` for Partner users; the phone number for WhatsApp-side users.
    pub account_id: u64,
    pub kind: AccountKind,
    /// The Noise static public key the account must log in with (the enlistment's `authkey`).
    pub noise_public: [u8; 32],
    pub keys: KeyBundle,
    pub mailbox: Mailbox,
    pub blocklist: BTreeSet<String>,
    /// Accounts this one has exchanged stanzas with: they hear about its identity changes.
    pub contacts: BTreeSet<String>,
    /// Unix seconds of the last login (or enlistment); drives the 30-day un-enlistment.
    pub last_active: u64,
}
