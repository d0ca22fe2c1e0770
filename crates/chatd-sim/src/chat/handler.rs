//! What chatd does with each stanza a logged-in client sends: routing, acks, receipts, and the
//! IQs clients send after login. Pure logic over the shared state; the connection driver does
//! the I/O.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use wire::decode::NodeRef;
use wire::{Jid, Node, Server, Value};

use super::fanout::{self, Delivery, DeviceAddr};
use crate::account::{Account, AckClass, Device, KeyBundle, SignedPreKey};
use crate::sim::{DeliverError, Sim};

/// What the connection must do after a stanza.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Stanzas to send back on this connection.
    pub replies: Vec<Node>,
    /// The account was deleted: close after the replies.
    pub close: bool,
}

/// Bytes per device id: what one delivery queues.
type Copies = Vec<(u16, Bytes)>;

/// Handles stanzas for one logged-in device of an account.
pub struct Handler<'s> {
    pub sim: &'s Sim,
    pub jid: &'s str,
    /// The device logged in (0 for Partner users).
    pub device: u16,
}

fn server_jid() -> Value {
    Value::Jid(Jid::server(Server::Whatsapp))
}

/// The text form of a JID or string attribute.
fn attr_text(node: &NodeRef<'_>, key: &str) -> Option<String> {
    node.attr(key).map(|v| v.to_string())
}

/// An account's registration id, key type, identity and signed prekey, as the key fetch and the
/// digest both list them (§3.11, §3.12).
fn identity_nodes(keys: &KeyBundle) -> Vec<Node> {
    vec![
        Node::new("registration").bytes(keys.registration_id.to_be_bytes().to_vec()),
        Node::new("type").bytes(vec![5]),
        Node::new("identity").bytes(keys.identity.to_vec()),
        signed_prekey_node(&keys.signed_prekey),
    ]
}

/// `<key><id/><value/></key>`: a one-time prekey (§3.12).
fn one_time_prekey((id, value): (u32, [u8; 32])) -> Node {
    Node::new("key")
        .children(vec![Node::new("id").bytes(wire::node::be_bytes(id, 3)), Node::new("value").bytes(value.to_vec())])
}

/// The `<keys>` of a retry receipt (§3.10), in the order Baileys' `sendRetryRequest` writes them:
/// `<type>`, `<identity>`, `<key>` (when a one-time prekey is left), `<skey>`, `<device-identity>`
/// (when the device has one).
fn retry_keys(keys: &KeyBundle, one_time: Option<(u32, [u8; 32])>, device_identity: Option<Vec<u8>>) -> Node {
    let mut children = vec![Node::new("type").bytes(vec![5]), Node::new("identity").bytes(keys.identity.to_vec())];
    children.extend(one_time.map(one_time_prekey));
    children.push(signed_prekey_node(&keys.signed_prekey));
    children.extend(device_identity.map(|b| Node::new("device-identity").bytes(b)));
    Node::new("keys").children(children)
}

fn signed_prekey_node(skey: &SignedPreKey) -> Node {
    Node::new("skey").children(vec![
        Node::new("id").bytes(wire::node::be_bytes(skey.id, 3)),
        Node::new("value").bytes(skey.public.to_vec()),
        Node::new("signature").bytes(skey.signature.to_vec()),
    ])
}

fn iq_result(id: &str) -> Node {
    Node::new("iq").attr("from", server_jid()).attr("id", id).attr("type", "result")
}

fn iq_error(id: &str, code: u16, text: &str) -> Node {
    Node::new("iq")
        .attr("from", server_jid())
        .attr("id", id)
        .attr("type", "error")
        .children(vec![Node::new("error").attr("code", code.to_string()).attr("text", text)])
}

fn bytes_of<'a>(node: &NodeRef<'a>, child: &str) -> Option<&'a [u8]> {
    node.child(child).and_then(|c| c.bytes())
}

fn fixed<const N: usize>(b: Option<&[u8]>) -> Option<[u8; N]> {
    b.and_then(|b| b.try_into().ok())
}

fn be_number(b: Option<&[u8]>) -> Option<u32> {
    b.and_then(wire::node::be_number)
}

/// Verifies a signed prekey the Signal way: XEdDSA by the identity key over `0x05 || public`.
pub fn signed_prekey_valid(identity: &[u8; 32], prekey: &[u8; 32], signature: &[u8; 64]) -> bool {
    let mut message = [0u8; 33];
    message[0] = 0x05;
    message[1..].copy_from_slice(prekey);
    wire::xeddsa::verify(identity, &message, signature).is_ok()
}

impl Handler<'_> {
    pub fn handle(&self, node: NodeRef<'_>) -> Outcome {
        match node.tag() {
            "iq" => self.iq(node),
            "message" => self.route(node, AckClass::Message),
            "receipt" => self.route(node, AckClass::Receipt),
            "ack" => {
                self.ack(node);
                Outcome::default()
            }
            // Presence and chat states are accepted and not relayed: the simulator has no rosters.
            _ => Outcome::default(),
        }
    }

    /// `<ack class id to [error]>` from the client: the stanza it names leaves the mailbox. A nack
    /// (`error="N"`) removes it too, so it is never redelivered forever; when the code says the
    /// recipient could not read a message, the sender gets a retry receipt (see
    /// [`NACK_CODES_ASKING_RETRY`]).
    fn ack(&self, node: NodeRef<'_>) {
        let (Some(class), Some(id)) = (node.attr_str("class").and_then(AckClass::parse), node.attr_str("id")) else {
            return;
        };
        let peer = node.attr("to").and_then(|v| v.as_jid()).map(|j| self.sim.account_of(&j.to_owned()));
        let peer = peer.or_else(|| attr_text(&node, "to"));
        let mut removed = None;
        self.with_device(&mut |d| removed = d.mailbox.ack(class, id, peer.as_deref()));
        let Some(error) = node.attr_str("error") else { return };
        let code: u16 = error.parse().unwrap_or(0);
        tracing::info!(account = %self.jid, class = class.as_str(), id, code, "nack: entry dropped, not redelivered");
        if let Some(entry) = removed.filter(|e| e.class == AckClass::Message && NACK_CODES_ASKING_RETRY.contains(&code))
        {
            self.send_retry_receipt(&DeviceAddr::new(entry.from, entry.from_device), id, entry.stored_at);
        }
    }

    /// Runs `f` on this connection's device.
    fn with_device(&self, f: &mut dyn FnMut(&mut Device)) {
        self.sim.store.with(self.jid, &mut |a| {
            if let Some(d) = a.devices.get_mut(&self.device) {
                f(d);
            }
        });
    }

    /// `<receipt type="retry">` from this device to the device that sent message `id`, the shape
    /// WhatsApp clients send (wa-protocol-notes.md §3.10; Baileys' `sendRetryRequest`), so the
    /// sender re-encrypts as it would for a recipient's own retry request. It carries `<keys>`
    /// (identity, one one-time prekey used up from this device's store if any is left, signed
    /// prekey, `<device-identity>` if the device registered one), which Baileys'
    /// `extractE2ESessionFromRetryReceipt` reads to start a fresh session without a key fetch.
    fn send_retry_receipt(&self, sender: &DeviceAddr, id: &str, original_t: u64) {
        let mut found = None;
        self.with_device(&mut |d| {
            let one_time = d.keys.one_time.pop_front();
            found = Some((d.keys.clone(), one_time, d.device_identity.clone()));
        });
        let Some((keys, one_time, device_identity)) = found else { return };
        let from = Jid::parse(self.jid).map(Value::Jid).unwrap_or_else(|_| Value::Str(self.jid.into()));
        let receipt = Node::new("receipt")
            .attr("from", from)
            .attr("id", id)
            .attr("t", self.sim.clock.now().to_string())
            .attr("type", "retry")
            .children(vec![
                Node::new("retry").attr("count", "1").attr("id", id).attr("t", original_t.to_string()).attr("v", "1"),
                Node::new("registration").bytes(keys.registration_id.to_be_bytes().to_vec()),
                retry_keys(&keys, one_time, device_identity),
            ]);
        if let Ok(p) = wire::encode::encode(&receipt) {
            let payload = Bytes::from(p);
            let _ = self.sim.deliver_each(&sender.account, AckClass::Receipt, id, (self.jid, self.device), &mut |_| {
                vec![(sender.device, payload.clone())]
            });
        }
    }

    /// A receipt from the recipient (delivered, `inactive`, `read`, `retry`, any type) is how
    /// WhatsApp clients acknowledge a message (Baileys sends no `<ack class="message">`): the
    /// messages it names (`id` and `<list><item id>`) leave the receipting device's mailbox.
    fn clear_receipted(&self, node: &NodeRef<'_>, sender: &str) {
        let mut ids: Vec<String> = node.attr_str("id").into_iter().map(str::to_owned).collect();
        if let Some(list) = node.child("list") {
            ids.extend(list.children().filter_map(|i| i.attr_str("id").map(str::to_owned)).take(256));
        }
        self.with_device(&mut |d| {
            for id in &ids {
                d.mailbox.ack(AckClass::Message, id, Some(sender));
            }
        });
    }

    /// Relays a message or receipt to its `to`, as `from` this account (a `from` the client wrote
    /// is dropped), and acks the sender. Which devices get which bytes: see [`Handler::copies`].
    fn route(&self, node: NodeRef<'_>, class: AckClass) -> Outcome {
        let id = node.attr_str("id").unwrap_or_default().to_owned();
        let to_jid = node.attr("to").and_then(|v| v.as_jid()).map(|j| j.to_owned());
        let mut ack = Node::new("ack").attr("class", class.as_str()).attr("id", id.as_str());
        let kind = node.attr_str("type");
        if let Some(t) = kind.filter(|_| class == AckClass::Receipt) {
            ack = ack.attr("type", t);
        }
        let Some(to_jid) = to_jid else {
            return Outcome { replies: vec![ack.attr("error", "400")], close: false };
        };
        let to = self.sim.account_of(&to_jid);
        if class == AckClass::Receipt {
            self.clear_receipted(&node, &to);
        }
        ack = ack.attr("from", Value::from_text(&to));
        if class == AckClass::Receipt && kind == Some("read") && to != self.jid && self.read_receipts_off(&to) {
            // Cleared above like any receipt; not relayed (see `read_receipts_off`).
            return Outcome { replies: vec![ack], close: false };
        }
        let now = self.sim.clock.now().to_string();
        let mut forward = Node::new(node.tag());
        // `from` and `t` are the server's to set, as WhatsApp's chatd does: whatever the client
        // wrote there (once or several times) is dropped, never relayed next to the real sender.
        for (k, v) in node.attrs() {
            if !matches!(k, "to" | "t" | "from") {
                forward.attrs.push((k.to_owned(), v.to_owned()));
            }
        }
        // A message keeps the sending device in `from` (§3.7); a receipt names the account.
        let from = match class {
            AckClass::Message => self.sim.device_jid(self.jid, self.device),
            _ => Jid::parse(self.jid).unwrap_or_else(|_| Jid::server(Server::Whatsapp)),
        };
        forward.attrs.insert(0, ("from".into(), Value::Jid(from)));
        forward.attrs.push(("t".into(), Value::Str(now)));
        forward.content = node.to_owned().content;
        let (recipient_copies, own_copies) = match self.copies(&node, class, &forward, &to_jid, &to) {
            Ok(c) => c,
            Err(code) => return Outcome { replies: vec![ack.attr("error", code)], close: false },
        };
        let mut recipient_copies = Some(recipient_copies);
        let error = match self.sim.deliver_each(&to, class, &id, (self.jid, self.device), &mut |_| {
            recipient_copies.take().unwrap_or_default()
        }) {
            Ok(()) => None,
            Err(DeliverError::UnknownRecipient) => Some("404"),
            Err(DeliverError::Blocked) => Some("403"),
            Err(DeliverError::MailboxFull(_)) => Some("503"),
        };
        if let Some(code) = error {
            return Outcome { replies: vec![ack.attr("error", code)], close: false };
        }
        if !own_copies.is_empty() {
            let mut own_copies = Some(own_copies);
            let delivered = self.sim.deliver_each(self.jid, class, &id, (self.jid, self.device), &mut |_| {
                own_copies.take().unwrap_or_default()
            });
            if let Err(e) = delivered {
                tracing::info!(account = %self.jid, id, error = %e, "copy for the sender's other devices not queued");
            }
        }
        Outcome { replies: vec![ack], close: false }
    }

    /// The bytes each device gets: for the recipient account `to`, and for the sender's other
    /// devices. `Err` is the nack code.
    ///
    /// - A message in the multi-device shape (§3.8) is fanned out by [`fanout::plan`]: each device
    ///   gets only the `<enc>` addressed to it, as direct children (§3.7), with the other siblings
    ///   (`<device-identity>`); the sender's other devices' copies also carry `recipient=PEER`. A
    ///   list that is not exactly the devices that exist gets [`STALE_DEVICES_CODE`].
    /// - A message with a direct `<enc>` carries one ciphertext, for one Signal session: it goes to
    ///   the device `to` names, or for a bare account JID to its primary device (the phone, else
    ///   its first companion), the same device a bare key fetch returns the bundle of. A device
    ///   that does not exist gets [`STALE_DEVICES_CODE`].
    /// - A receipt goes to the device `to` names if it has it, else to every device of the
    ///   account (but never back to the sending device).
    fn copies(
        &self,
        node: &NodeRef<'_>,
        class: AckClass,
        forward: &Node,
        to_jid: &Jid,
        to: &str,
    ) -> Result<(Copies, Copies), &'static str> {
        let encode = |n: &Node| wire::encode::encode(n).map(Bytes::from).map_err(|_| "400");
        let Some(recipient_devices) = self.devices_of(to) else { return Err("404") };
        let sender = DeviceAddr::new(self.jid, self.device);
        match (class, node.child("participants")) {
            (AckClass::Message, Some(participants)) => {
                let mut listed = Vec::new();
                let mut encs = Vec::new();
                for target in participants.children().filter(|c| c.tag() == "to") {
                    let Some(jid) = target.attr("jid").and_then(|v| v.as_jid()).map(|j| j.to_owned()) else {
                        return Err("400");
                    };
                    listed.push(DeviceAddr::new(self.sim.account_of(&jid), jid.device));
                    encs.push(target.children().filter(|c| c.tag() == "enc").map(|c| c.to_owned()).collect::<Vec<_>>());
                }
                let sender_devices = if to == self.jid {
                    recipient_devices.clone()
                } else {
                    self.devices_of(self.jid).unwrap_or_default()
                };
                let plan = fanout::plan(&sender, &sender_devices, to, &recipient_devices, &listed).map_err(|e| {
                    tracing::debug!(account = %self.jid, error = %e, "stale device list");
                    STALE_DEVICES_CODE
                })?;
                let siblings: Vec<Node> = node
                    .children()
                    .filter(|c| c.tag() != "participants" && c.tag() != "enc")
                    .map(|c| c.to_owned())
                    .collect();
                let (mut recipient, mut own) = (Vec::new(), Vec::new());
                for ((addr, enc), delivery) in listed.into_iter().zip(encs).zip(plan) {
                    let mut copy = forward.clone();
                    copy.content = wire::Content::Nodes(enc.into_iter().chain(siblings.iter().cloned()).collect());
                    match delivery {
                        Delivery::Sender => {}
                        Delivery::Recipient => recipient.push((addr.device, encode(&copy)?)),
                        Delivery::SendersOtherDevice => {
                            copy.attrs.retain(|(k, _)| k != "recipient");
                            copy.attrs.push(("recipient".into(), Value::from_text(to)));
                            own.push((addr.device, encode(&copy)?));
                        }
                    }
                }
                Ok((recipient, own))
            }
            (AckClass::Message, None) => {
                let device = self.resolve_device(to, to_jid.device).ok_or(STALE_DEVICES_CODE)?;
                Ok((vec![(device, encode(forward)?)], Vec::new()))
            }
            _ => {
                let payload = encode(forward)?;
                let named = Some(to_jid.device).filter(|d| *d != 0 && recipient_devices.contains(d));
                let devices = match named {
                    Some(d) => vec![d],
                    None => recipient_devices.into_iter().filter(|d| to != self.jid || *d != self.device).collect(),
                };
                Ok((devices.into_iter().map(|d| (d, payload.clone())).collect(), Vec::new()))
            }
        }
    }

    /// The device ids of an account; `None` if there is no such account.
    fn devices_of(&self, account: &str) -> Option<Vec<u16>> {
        let mut devices = None;
        self.sim.store.with(account, &mut |a| devices = Some(a.device_ids()));
        devices
    }

    /// The device of `account` a JID naming `named` reaches (see [`Account::resolve_device`]).
    fn resolve_device(&self, account: &str, named: u16) -> Option<u16> {
        let mut device = None;
        self.sim.store.with(account, &mut |a| device = a.resolve_device(named));
        device
    }

    /// WhatsApp's rule for 1:1 chats (its help centre; what the public clients' settings do): a
    /// user with read receipts off neither sends nor receives them. So a `read` receipt between
    /// two accounts is not relayed when either has `readreceipts` = `none`. `read-self` (one's own
    /// devices syncing what was read) and `played` (voice notes, which WhatsApp says the setting
    /// does not cover) are relayed as always.
    fn read_receipts_off(&self, peer: &str) -> bool {
        let off = |a: &Account| a.privacy.get("readreceipts") == Some("none");
        let mut result = false;
        self.sim.store.with(self.jid, &mut |a| result |= off(a));
        self.sim.store.with(peer, &mut |a| result |= off(a));
        result
    }

    fn iq(&self, node: NodeRef<'_>) -> Outcome {
        let id = node.attr_str("id").unwrap_or_default();
        let xmlns = node.attr_str("xmlns").unwrap_or_default();
        let kind = node.attr_str("type").unwrap_or_default();
        let reply = match (xmlns, kind) {
            ("w:p", "get") => iq_result(id),
            ("privacy", "get") => self.privacy_settings(id),
            ("privacy", "set") => self.set_privacy(id, node),
            ("passive", "set") | ("w", _) | ("abt", "get") => match xmlns {
                "abt" => iq_result(id).children(vec![Node::new("props").attr("protocol", "1")]),
                _ => iq_result(id),
            },
            ("encrypt", "set") => self.upload_keys(id, node),
            ("encrypt", "get") if node.child("count").is_some() => {
                let mut count = 0;
                self.with_device(&mut |d| count = d.keys.one_time.len());
                iq_result(id).children(vec![Node::new("count").attr("value", count.to_string())])
            }
            ("encrypt", "get") if node.child("key").is_some() => self.fetch_keys(id, node),
            ("encrypt", "get") if node.child("digest").is_some() => self.digest(id),
            ("blocklist", "get") => {
                let mut items = Vec::new();
                self.sim.store.with(self.jid, &mut |a| {
                    items = a.blocklist.iter().map(|j| Node::new("item").attr("jid", Value::from_text(j))).collect();
                });
                iq_result(id).children(vec![Node::new("list").children(items)])
            }
            ("blocklist", "set") => self.set_blocklist(id, node),
            ("usync", "get") => self.usync(id, node),
            ("w:m", "set") => {
                let host = media_hostname(self.sim.config.http.public_url.as_deref().unwrap_or_default());
                iq_result(id).children(vec![
                    Node::new("media_conn")
                        .attr("auth", "sim")
                        .attr("ttl", "3600")
                        .children(vec![Node::new("host").attr("hostname", host)]),
                ])
            }
            ("urn:xmpp:whatsapp:account", _) if node.child("remove").is_some() => {
                self.sim.remove_account(self.jid);
                return Outcome { replies: vec![iq_result(id)], close: true };
            }
            _ => iq_error(id, 501, "feature-not-implemented"),
        };
        Outcome { replies: vec![reply], close: false }
    }

    /// Prekey upload: identity, registration id, signed prekey (signature checked), one-time
    /// prekeys. A new identity key tells the account's contacts.
    fn upload_keys(&self, id: &str, node: NodeRef<'_>) -> Node {
        let identity = fixed::<32>(bytes_of(&node, "identity"));
        let registration = be_number(bytes_of(&node, "registration"));
        let mut one_time = Vec::new();
        if let Some(list) = node.child("list") {
            for key in list.children() {
                match (be_number(bytes_of(&key, "id")), fixed::<32>(bytes_of(&key, "value"))) {
                    (Some(kid), Some(value)) => one_time.push((kid, value)),
                    _ => return iq_error(id, 400, "bad-request"),
                }
            }
        }
        let skey = node.child("skey").map(|s| {
            (be_number(bytes_of(&s, "id")), fixed::<32>(bytes_of(&s, "value")), fixed::<64>(bytes_of(&s, "signature")))
        });
        let max = self.sim.config.limits.max_prekeys;
        let mut changed_identity = false;
        let mut bad = false;
        self.with_device(&mut |a| {
            let identity = identity.unwrap_or(a.keys.identity);
            if let Some(skey) = skey {
                match skey {
                    (Some(sid), Some(public), Some(signature))
                        if signed_prekey_valid(&identity, &public, &signature) =>
                    {
                        a.keys.signed_prekey = SignedPreKey { id: sid, public, signature };
                    }
                    _ => {
                        bad = true;
                        return;
                    }
                }
            } else if identity != a.keys.identity {
                // A new identity needs a signed prekey signed by it.
                bad = true;
                return;
            }
            changed_identity = identity != a.keys.identity;
            a.keys.identity = identity;
            if let Some(r) = registration {
                a.keys.registration_id = r;
            }
            if changed_identity {
                a.keys.one_time.clear();
            }
            for k in &one_time {
                if a.keys.one_time.len() < max && !a.keys.one_time.iter().any(|(i, _)| *i == k.0) {
                    a.keys.one_time.push_back(*k);
                }
            }
        });
        if bad {
            return iq_error(id, 406, "not-acceptable");
        }
        if changed_identity {
            self.announce_identity_change();
        }
        iq_result(id)
    }

    /// `<notification type="encrypt"><identity/></notification>` from this account to each contact.
    pub fn announce_identity_change(&self) {
        let mut contacts = Vec::new();
        self.sim.store.with(self.jid, &mut |a| contacts = a.contacts.iter().cloned().collect());
        let from = Jid::parse(self.jid).map(Value::Jid).unwrap_or_else(|_| Value::Str(self.jid.into()));
        for contact in contacts {
            let id = notification_id(self.sim);
            let node = Node::new("notification")
                .attr("from", from.clone())
                .attr("type", "encrypt")
                .attr("id", id.as_str())
                .attr("t", self.sim.clock.now().to_string())
                .children(vec![Node::new("identity")]);
            if let Ok(p) = wire::encode::encode(&node) {
                let _ = self.sim.deliver(&contact, AckClass::Notification, &id, self.jid, Bytes::from(p));
            }
        }
    }

    /// Key bundles for the devices asked for (`PHONE:D@…`; a bare account JID names its primary
    /// device, see [`Account::resolve_device`]), each using up one one-time prekey of that device.
    fn fetch_keys(&self, id: &str, node: NodeRef<'_>) -> Node {
        let mut users = Vec::new();
        for user in node.child("key").into_iter().flat_map(|k| k.children()) {
            let Some(jid) = user.attr("jid").and_then(|v| v.as_jid()).map(|j| j.to_owned()) else { continue };
            let account = self.sim.account_of(&jid);
            let mut bundle = None;
            self.sim.store.with(&account, &mut |a| {
                let Some(device) = a.resolve_device(jid.device).and_then(|d| a.devices.get_mut(&d)) else { return };
                let one_time = device.keys.one_time.pop_front();
                bundle = Some((device.keys.clone(), one_time, device.device_identity.clone()));
            });
            let user_node = Node::new("user").attr("jid", jid);
            users.push(match bundle {
                Some((keys, one_time, device_identity)) => {
                    let mut children = identity_nodes(&keys);
                    children.extend(one_time.map(one_time_prekey));
                    children.extend(device_identity.map(|b| Node::new("device-identity").bytes(b)));
                    user_node.children(children)
                }
                None => user_node.children(vec![Node::new("error").attr("code", "404").attr("text", "item-not-found")]),
            });
        }
        iq_result(id).children(vec![Node::new("list").children(users)])
    }

    /// `<digest/>`: what the server holds of this account's keys (§3.12), so a client can check
    /// its upload. The shape is BA's; the `hash` is the simulator's choice (WhatsApp's is not
    /// public): SHA-1 over identity, signed prekey public and signature, then each one-time
    /// prekey's public key in order. Baileys reads only that a `<digest>` came back.
    fn digest(&self, id: &str) -> Node {
        let mut keys = None;
        self.with_device(&mut |d| keys = Some(d.keys.clone()));
        let Some(keys) = keys else { return iq_error(id, 404, "item-not-found") };
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(&keys.identity);
        ctx.update(&keys.signed_prekey.public);
        ctx.update(&keys.signed_prekey.signature);
        for (_, value) in &keys.one_time {
            ctx.update(value);
        }
        let ids = keys.one_time.iter().map(|(kid, _)| Node::new("id").bytes(wire::node::be_bytes(*kid, 3))).collect();
        let mut children = identity_nodes(&keys);
        children.push(Node::new("list").children(ids));
        children.push(Node::new("hash").bytes(ctx.finish().as_ref().to_vec()));
        iq_result(id).children(vec![Node::new("digest").children(children)])
    }

    fn set_blocklist(&self, id: &str, node: NodeRef<'_>) -> Node {
        let max = self.sim.config.limits.max_blocklist;
        let mut changes = Vec::new();
        for item in node.children().filter(|c| c.tag() == "item") {
            let (Some(jid), Some(action)) = (item.attr("jid").and_then(|v| v.as_jid()), item.attr_str("action")) else {
                return iq_error(id, 400, "bad-request");
            };
            let block = match action {
                "block" => true,
                "unblock" => false,
                _ => return iq_error(id, 400, "bad-request"),
            };
            changes.push((self.sim.account_of(&jid.to_owned()), block));
        }
        let mut full = false;
        self.sim.store.with(self.jid, &mut |a| {
            for (jid, block) in &changes {
                if !*block {
                    a.blocklist.remove(jid);
                } else if a.blocklist.len() < max {
                    a.blocklist.insert(jid.clone());
                } else {
                    full = true;
                }
            }
        });
        if full { iq_error(id, 419, "resource-limit") } else { iq_result(id) }
    }

    /// `<privacy>` with every category and its value.
    fn privacy_settings(&self, id: &str) -> Node {
        let mut categories = Vec::new();
        self.sim.store.with(self.jid, &mut |a| {
            categories =
                a.privacy.categories().map(|(n, v)| Node::new("category").attr("name", n).attr("value", v)).collect();
        });
        iq_result(id).children(vec![Node::new("privacy").children(categories)])
    }

    /// `<privacy><category name value/>...</privacy>`: all or nothing, 400 for a name or value
    /// clients do not use.
    fn set_privacy(&self, id: &str, node: NodeRef<'_>) -> Node {
        let Some(privacy) = node.child("privacy") else { return iq_error(id, 400, "bad-request") };
        let mut refused = false;
        self.sim.store.with(self.jid, &mut |a| {
            let mut next = a.privacy.clone();
            for c in privacy.children().filter(|c| c.tag() == "category") {
                let (name, value) = (c.attr_str("name").unwrap_or_default(), c.attr_str("value").unwrap_or_default());
                refused |= next.set(name, value).is_err();
            }
            if !refused {
                a.privacy = next;
            }
        });
        if refused { iq_error(id, 400, "bad-request") } else { iq_result(id) }
    }

    /// USync: for each user, the protocols the `<query>` asks for, in the §3.13 shapes:
    /// `<devices>` (the device list), `<contact type="in|out"/>`, `<lid val/>`. A protocol the
    /// simulator does not model (`status`, `business`, ...) is answered with its empty element; a
    /// query with no `<query>` gets devices and contact (the simulator's older answer).
    fn usync(&self, id: &str, node: NodeRef<'_>) -> Node {
        let usync = node.child("usync");
        let list = usync.and_then(|u| u.child("list"));
        let asked: Vec<String> = match usync.and_then(|u| u.child("query")) {
            Some(q) => q.children().map(|c| c.tag().to_owned()).take(16).collect(),
            None => vec!["devices".into(), "contact".into()],
        };
        let mut users = Vec::new();
        for user in list.into_iter().flat_map(|l| l.children()).take(MAX_USYNC_USERS) {
            let Some(jid) = user.attr("jid").and_then(|v| v.as_jid()).map(|j| j.to_owned()) else { continue };
            let account = self.sim.account_of(&jid);
            let mut found = None;
            self.sim.store.with(&account, &mut |a| found = Some((a.device_ids(), Some(a.lid()))));
            let mut children = Vec::new();
            for protocol in &asked {
                children.push(match (protocol.as_str(), &found) {
                    ("devices", Some((devices, _))) => Node::new("devices").children(vec![
                        Node::new("device-list").children(
                            devices
                                .iter()
                                .map(|d| {
                                    let n = Node::new("device").attr("id", d.to_string());
                                    if *d == 0 { n } else { n.attr("key-index", d.to_string()) }
                                })
                                .collect(),
                        ),
                    ]),
                    ("devices", None) => continue,
                    ("contact", f) => Node::new("contact").attr("type", if f.is_some() { "in" } else { "out" }),
                    ("lid", Some((_, Some(lid)))) => Node::new("lid").attr("val", Value::from_text(lid)),
                    ("lid", _) => continue,
                    (other, _) => Node::new(other),
                });
            }
            users.push(Node::new("user").attr("jid", jid).children(children));
        }
        iq_result(id).children(vec![Node::new("usync").children(vec![Node::new("list").children(users)])])
    }
}

/// The nack code for a `<participants>` message with no `<enc>` for any of the recipient's
/// devices. WhatsApp's code is not public (whatsmeow reads a changed `phash` as a stale list);
/// 406 (not acceptable) is the simulator's choice, and the sender's next usync gets the list.
pub const STALE_DEVICES_CODE: &str = "406";

/// Most users one usync answers (the rest of the list is ignored): bounded work per IQ.
const MAX_USYNC_USERS: usize = 512;

/// The `hostname` of `<media_conn><host>`: WhatsApp names a bare host (`mmg.whatsapp.net`) that
/// clients put after `https://`, so an HTTPS media URL loses its scheme (keeping any port); a
/// plain-HTTP one (tests only) stays a whole URL, which this repository's client also accepts.
fn media_hostname(public_url: &str) -> String {
    public_url.strip_prefix("https://").unwrap_or(public_url).trim_end_matches('/').to_owned()
}

/// Nack codes (wa-protocol-notes.md §3.9) after which the sender gets a retry receipt: 487
/// (ParsingError), which Baileys 7 sends when it lacks the keys to decrypt and sends no retry
/// receipt of its own. Baileys' 500 (UnhandledError) follows its own retry receipt, or means a
/// stanza it does not handle at all (it nacks an `@interop` sender so): a retry would only repeat
/// it. Other codes (unrecognised stanza, invalid protobuf, old counter, deleted on peer, ...) only
/// drop the entry.
pub const NACK_CODES_ASKING_RETRY: [u16; 1] = [487];

/// A fresh id for server-originated stanzas.
pub fn notification_id(sim: &Sim) -> String {
    sim.totals.stanzas_routed.load(Ordering::Relaxed).to_string() + &sim.next_conn_id().to_string()
}

#[cfg(test)]
mod tests {
    use super::media_hostname;

    #[test]
    fn the_media_host_is_named_as_whatsapp_names_it() {
        // Baileys builds `https://${hostname}/mms/...`: a bare host with its port.
        assert_eq!(media_hostname("https://127.0.0.1:8443"), "127.0.0.1:8443");
        assert_eq!(media_hostname("https://mmg.example/"), "mmg.example");
        assert_eq!(media_hostname("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }
}
