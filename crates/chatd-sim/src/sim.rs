//! The simulator's shared state: keys, accounts, live connections, delivery and observation.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use wire::cert::{CertIssuer, ChainParams};
use wire::noise::StaticKeypair;

use crate::account::{Account, AccountKind, AckClass, MailboxFull, Queued};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;

/// Something the simulator tells a live connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Another login for the account: send `<stream:error><conflict type="replaced"/>` and close.
    Replaced,
    /// The account was deleted or un-enlisted: send `<stream:error code="401">` and close.
    Removed,
}

/// The live connection of one device of an account.
#[derive(Debug, Clone)]
pub struct LiveConn {
    pub conn_id: u64,
    /// Woken when the device's mailbox has something new.
    pub notify: Arc<Notify>,
    pub control: mpsc::Sender<Control>,
}

/// What the observation API reports for one account.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    /// Connections open now (counted from the moment a login names the account).
    pub current: u32,
    /// The most ever open at once: a proxy keeping its one-upstream promise shows 1.
    pub max_concurrent: u32,
    /// Connections ever opened, failed logins included.
    pub total: u64,
    /// Distinct client IPs seen (from the PROXY header, else the socket peer), oldest first.
    pub client_ips: VecDeque<String>,
}

/// Totals across the simulator.
#[derive(Debug, Default)]
pub struct Totals {
    pub connections_accepted: AtomicU64,
    pub handshakes_failed: AtomicU64,
    /// Completed Noise handshakes by pattern: XX, IK, XXfallback.
    pub handshakes_xx: AtomicU64,
    pub handshakes_ik: AtomicU64,
    pub handshakes_xx_fallback: AtomicU64,
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub stanzas_routed: AtomicU64,
    pub pushes_sent: AtomicU64,
    pub pushes_failed: AtomicU64,
    pub enlistments: AtomicU64,
    /// Push and Partner-media requests that failed on TLS (the Partner's certificate refused).
    pub partner_tls_failures: AtomicU64,
}

/// Why a stanza could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    #[error("no such account")]
    UnknownRecipient,
    #[error("blocked")]
    Blocked,
    #[error(transparent)]
    MailboxFull(#[from] MailboxFull),
}

/// A push the delivery path wants sent.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub integrator: u16,
    pub user_identifier: String,
    pub account_jid: String,
}

const MAX_OBSERVED_IPS: usize = 64;

pub struct Sim {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    server_static_private: [u8; 32],
    pub server_static_public: [u8; 32],
    pub root_public: [u8; 32],
    pub cert_chain: Vec<u8>,
    /// Live connections by account and device: each device of an account may be online at once.
    live: Mutex<HashMap<(String, u16), LiveConn>>,
    observed: Mutex<HashMap<String, Observed>>,
    pub totals: Totals,
    next_conn_id: AtomicU64,
    next_account_id: AtomicU64,
    /// Accounts with a push already on its way: one push per burst of activity.
    push_pending: Mutex<BTreeSet<String>>,
    push_tx: mpsc::Sender<PushRequest>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("root_public", &hex::encode(self.root_public)).finish_non_exhaustive()
    }
}

/// Key material the simulator could not set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("certificate chain")]
    Cert(#[from] wire::cert::CertError),
    #[error("noise key")]
    Noise(#[from] wire::noise::NoiseError),
}

fn key_from_hex(hex_key: &Option<String>) -> Option<[u8; 32]> {
    hex_key.as_deref().filter(|s| !s.is_empty()).and_then(|s| hex::decode(s).ok()).and_then(|b| b.try_into().ok())
}

impl Sim {
    /// Builds the state: keys from the config or fresh ones, and a certificate chain valid for a
    /// year around now (so the injectable clock can move a few months without breaking logins).
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        push_tx: mpsc::Sender<PushRequest>,
    ) -> Result<Sim, KeyError> {
        let issuer = match key_from_hex(&config.keys.root_private_key) {
            Some(k) => CertIssuer::from_root_private(&k),
            None => CertIssuer::generate()?,
        };
        let server = match key_from_hex(&config.keys.server_static_private_key) {
            Some(k) => k,
            None => {
                let mut k = [0u8; 32];
                random_fill(&mut k);
                k
            }
        };
        let keypair = StaticKeypair::from_private(&server)?;
        let now = clock.now();
        let chain = issuer
            .issue(&keypair.public(), &ChainParams::new(1, 2, now.saturating_sub(86_400 * 180), now + 86_400 * 365))?;
        Ok(Sim {
            root_public: issuer.public_key(),
            server_static_public: keypair.public(),
            server_static_private: server,
            cert_chain: chain,
            config,
            store,
            clock,
            live: Mutex::default(),
            observed: Mutex::default(),
            totals: Totals::default(),
            next_conn_id: AtomicU64::new(1),
            next_account_id: AtomicU64::new(10_853_634_039_893),
            push_pending: Mutex::default(),
            push_tx,
        })
    }

    /// A fresh copy of the server's Noise static key for one handshake.
    pub fn server_keypair(&self) -> Result<StaticKeypair, wire::noise::NoiseError> {
        StaticKeypair::from_private(&self.server_static_private)
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new internal account id, unique across integrators.
    pub fn next_account_id(&self) -> u64 {
        self.next_account_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a connection against an account (call when a login names it); the guard counts it
    /// out again when dropped.
    pub fn observe_connect(self: &Arc<Self>, jid: &str, ip: IpAddr) -> ObservedGuard {
        let mut observed = lock(&self.observed);
        let o = observed.entry(jid.to_owned()).or_default();
        o.current += 1;
        o.total += 1;
        o.max_concurrent = o.max_concurrent.max(o.current);
        let ip = ip.to_canonical().to_string();
        if !o.client_ips.contains(&ip) {
            if o.client_ips.len() == MAX_OBSERVED_IPS {
                o.client_ips.pop_front();
            }
            o.client_ips.push_back(ip);
        }
        ObservedGuard { sim: Arc::clone(self), jid: jid.to_owned() }
    }

    /// What the observation API reports for `jid`.
    pub fn observed(&self, jid: &str) -> Observed {
        lock(&self.observed).get(jid).cloned().unwrap_or_default()
    }

    /// Makes `conn` the live connection of the account's `device`; returns the one it replaces.
    pub fn register_live(&self, jid: &str, device: u16, conn: LiveConn) -> Option<LiveConn> {
        lock(&self.push_pending).remove(jid);
        lock(&self.live).insert((jid.to_owned(), device), conn)
    }

    /// Forgets the device's live connection if it is still `conn_id`.
    pub fn unregister_live(&self, jid: &str, device: u16, conn_id: u64) {
        let mut live = lock(&self.live);
        let key = (jid.to_owned(), device);
        if live.get(&key).is_some_and(|c| c.conn_id == conn_id) {
            live.remove(&key);
        }
    }

    /// The live connection of one device of an account.
    pub fn live(&self, jid: &str, device: u16) -> Option<LiveConn> {
        lock(&self.live).get(&(jid.to_owned(), device)).cloned()
    }

    /// Whether any device of the account is connected.
    pub fn account_live(&self, jid: &str) -> bool {
        lock(&self.live).keys().any(|(account, _)| account == jid)
    }

    pub fn live_count(&self) -> usize {
        lock(&self.live).len()
    }

    /// Queues a stanza for every device of `to` (a notification, a receipt for the account).
    pub fn deliver(&self, to: &str, class: AckClass, id: &str, from: &str, payload: Bytes) -> Result<(), DeliverError> {
        self.deliver_each(to, class, id, (from, 0), &mut |a| a.devices.keys().map(|d| (*d, payload.clone())).collect())
    }

    /// Queues copies of a stanza for devices of `to`: `copies` picks, from the account as it is
    /// stored, which device gets which bytes (a fan-out gives each device its own `<enc>`).
    /// Then wakes each device's connection, or asks for a push when a Partner user has none.
    /// `from` is the sending account and device; it must be an account too (server-originated
    /// stanzas pass the server JID and skip the block and contact checks). All copies are queued or
    /// none: a full mailbox on any device refuses the stanza.
    pub fn deliver_each(
        &self,
        to: &str,
        class: AckClass,
        id: &str,
        from: (&str, u16),
        copies: &mut dyn FnMut(&Account) -> Vec<(u16, Bytes)>,
    ) -> Result<(), DeliverError> {
        let (from, from_device) = from;
        let now = self.clock.now();
        let limits = (self.config.limits.mailbox_max_entries, self.config.limits.mailbox_max_bytes);
        let from_account = from != "s.whatsapp.net";
        if from_account {
            let mut blocked_by_sender = false;
            self.store.with(from, &mut |a| blocked_by_sender = a.blocklist.contains(to));
            if blocked_by_sender {
                return Err(DeliverError::Blocked);
            }
        }
        let mut result = Err(DeliverError::UnknownRecipient);
        let mut push = None;
        let mut delivered = Vec::new();
        self.store.with(to, &mut |a| {
            if from_account && a.blocklist.contains(from) {
                result = Err(DeliverError::Blocked);
                return;
            }
            let picked: Vec<(u16, Bytes)> = copies(a).into_iter().filter(|(d, _)| a.devices.contains_key(d)).collect();
            result = picked
                .iter()
                .try_for_each(|(d, payload)| {
                    a.devices.get(d).map_or(Ok(()), |dev| dev.mailbox.room_for(payload.len(), limits))
                })
                .map_err(Into::into);
            if result.is_err() {
                return;
            }
            for (d, payload) in picked {
                let Some(device) = a.devices.get_mut(&d) else { continue };
                let stanza = Queued { class, id: id.to_owned(), from: from.to_owned(), from_device, payload };
                if device.mailbox.push(stanza, now, limits).is_ok() {
                    delivered.push(d);
                }
            }
            if from_account {
                a.contacts.insert(from.to_owned());
            }
            if let AccountKind::Interop { integrator, user_identifier } = &a.kind {
                push = Some(PushRequest {
                    integrator: *integrator,
                    user_identifier: user_identifier.clone(),
                    account_jid: a.jid.clone(),
                });
            }
        });
        result.clone()?;
        if from_account && from != to {
            self.store.with(from, &mut |a| {
                a.contacts.insert(to.to_owned());
            });
        }
        self.totals.stanzas_routed.fetch_add(1, Ordering::Relaxed);
        for device in delivered {
            match self.live(to, device) {
                Some(conn) => conn.notify.notify_one(),
                None => {
                    if let Some(p) = push.take()
                        && lock(&self.push_pending).insert(p.account_jid.clone())
                        && self.push_tx.try_send(p).is_err()
                    {
                        // The push queue is full: forget the pending mark so a later stanza retries.
                        lock(&self.push_pending).remove(to);
                    }
                }
            }
        }
        Ok(())
    }

    /// The account text (the store key) a JID names: its account, or for a `…@lid` JID the
    /// account with that LID. An unknown LID stays itself (and is then an unknown recipient).
    ///
    /// Baileys 7 also asks about an interop user as `{integrator}-{number}@s.whatsapp.net` (its
    /// background LID sync): no phone number holds a `-`, so that names the interop account.
    pub fn account_of(&self, jid: &wire::Jid) -> String {
        match jid.server {
            wire::Server::Lid => {
                if let Some(account) = self.store.jid_by_lid(&jid.user) {
                    return account;
                }
            }
            wire::Server::Whatsapp if jid.user.contains('-') => {
                if let Ok(j) = wire::Jid::parse(&format!("{}@interop", jid.user)) {
                    return j.to_account().to_string();
                }
            }
            _ => {}
        }
        jid.to_account().to_string()
    }

    /// The JID of one device of an account: `PHONE:D@s.whatsapp.net` for a WhatsApp-side
    /// companion, the account JID for device 0.
    pub fn device_jid(&self, account: &str, device: u16) -> wire::Jid {
        let mut jid = wire::Jid::parse(account).unwrap_or_else(|_| wire::Jid::server(wire::Server::Whatsapp));
        jid.device = device;
        jid
    }

    /// A push finally failed: the next stanza for the account may ask for another.
    pub fn push_failed(&self, jid: &str) {
        lock(&self.push_pending).remove(jid);
    }

    /// Removes an account everywhere and closes its connection.
    pub fn remove_account(&self, jid: &str) -> Option<Account> {
        let account = self.store.remove(jid)?;
        lock(&self.live).retain(|(account, _), conn| {
            if account == jid {
                let _ = conn.control.try_send(Control::Removed);
            }
            account != jid
        });
        lock(&self.push_pending).remove(jid);
        Some(account)
    }

    /// Closes one device's connection (the device was registered anew).
    pub fn close_device(&self, jid: &str, device: u16) {
        if let Some(conn) = lock(&self.live).remove(&(jid.to_owned(), device)) {
            let _ = conn.control.try_send(Control::Replaced);
        }
    }

    /// Un-enlists accounts idle past the configured days and expires old mailbox entries.
    /// Returns the JIDs removed.
    pub fn sweep(&self) -> Vec<String> {
        let now = self.clock.now();
        let idle_cutoff = now.saturating_sub(self.config.limits.inactive_unenlist_days * 86_400);
        let mail_cutoff = now.saturating_sub(self.config.limits.mailbox_retention_days * 86_400);
        let mut removed = Vec::new();
        for jid in self.store.jids() {
            if self.account_live(&jid) {
                continue;
            }
            let mut idle = false;
            self.store.with(&jid, &mut |a| {
                idle = a.last_active < idle_cutoff;
                for device in a.devices.values_mut() {
                    device.mailbox.expire(mail_cutoff);
                }
            });
            if idle && self.remove_account(&jid).is_some() {
                removed.push(jid);
            }
        }
        removed
    }
}

/// Counts a connection out of [`Observed::current`] when dropped.
pub struct ObservedGuard {
    sim: Arc<Sim>,
    jid: String,
}

impl Drop for ObservedGuard {
    fn drop(&mut self) {
        if let Some(o) = lock(&self.sim.observed).get_mut(&self.jid) {
            o.current = o.current.saturating_sub(1);
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fills `buf` from the OS random source.
pub(crate) fn random_fill(buf: &mut [u8]) {
    // aws-lc-rs's RNG only fails if the OS source is unavailable, which nothing here can recover from.
    aws_lc_rs::rand::fill(buf).expect("OS random source");
}
