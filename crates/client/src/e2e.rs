//! Signal end-to-end encryption over the device store: sessions from key bundles (X3DH), then
//! `PreKeySignalMessage`/`SignalMessage` v3 through the Double Ratchet, as `<enc type="pkmsg"|
//! "msg" v="2">` carries them. Pure over the store: no sockets.

use wacore_libsignal::protocol::{
    CiphertextMessage, DeviceId, IdentityChange, IdentityKey, PreKeyBundle, PreKeySignalMessage, ProtocolAddress,
    SignalMessage, SignalProtocolError, UsePQRatchet, message_decrypt, message_encrypt, process_prekey_bundle,
};

use crate::store::{Store, public_key};

/// The `type` of an `<enc>` element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncType {
    /// A `PreKeySignalMessage`: starts a session.
    PreKey,
    /// A `SignalMessage` on an existing session.
    Msg,
}

impl EncType {
    pub fn as_str(self) -> &'static str {
        match self {
            EncType::PreKey => "pkmsg",
            EncType::Msg => "msg",
        }
    }

    pub fn parse(s: &str) -> Option<EncType> {
        match s {
            "pkmsg" => Some(EncType::PreKey),
            "msg" => Some(EncType::Msg),
            _ => None,
        }
    }
}

/// A peer's published keys (from a key fetch, or from the `<keys>` of a retry receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    pub registration_id: u32,
    pub identity: [u8; 32],
    pub signed_prekey_id: u32,
    pub signed_prekey: [u8; 32],
    pub signature: [u8; 64],
    pub one_time: Option<(u32, [u8; 32])>,
}

/// Why a Signal operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    #[error("no session with {0}: fetch its keys first")]
    NoSession(String),
    #[error("the key bundle of {peer} is invalid")]
    BadBundle { peer: String, source: SignalProtocolError },
    #[error("cannot decrypt the message from {peer}")]
    Decrypt { peer: String, source: SignalProtocolError },
    #[error("cannot encrypt for {peer}")]
    Encrypt { peer: String, source: SignalProtocolError },
}

/// The Signal address of an account JID (one device per interop account, device 0).
pub fn address(jid: &str) -> ProtocolAddress {
    ProtocolAddress::new(jid, DeviceId::from(0))
}

/// Whether we have a session with `peer`.
pub fn has_session(store: &mut Store, peer: &str) -> bool {
    let (sessions, ..) = store.signal();
    sessions.contains(peer)
}

/// Builds a session with `peer` from its bundle. Returns whether its identity changed.
pub async fn start_session(store: &mut Store, peer: &str, bundle: &KeyBundle) -> Result<bool, E2eError> {
    let bad = |source| E2eError::BadBundle { peer: peer.to_owned(), source };
    let one_time = match bundle.one_time {
        Some((id, key)) => Some((id.into(), public_key(&key).map_err(bad)?)),
        None => None,
    };
    let prekey_bundle = PreKeyBundle::new(
        bundle.registration_id,
        DeviceId::from(0),
        one_time,
        bundle.signed_prekey_id.into(),
        public_key(&bundle.signed_prekey).map_err(bad)?,
        bundle.signature.to_vec(),
        IdentityKey::new(public_key(&bundle.identity).map_err(bad)?),
    )
    .map_err(bad)?;
    let addr = address(peer);
    let (sessions, identities, ..) = store.signal();
    let change =
        process_prekey_bundle(&addr, sessions, identities, &prekey_bundle, &mut crate::store::rng(), UsePQRatchet::No)
            .await
            .map_err(bad)?;
    Ok(matches!(change, IdentityChange::ReplacedExisting))
}

/// Encrypts `plaintext` for `peer` on the existing session.
pub async fn encrypt(store: &mut Store, peer: &str, plaintext: &[u8]) -> Result<(EncType, Vec<u8>), E2eError> {
    let addr = address(peer);
    let (sessions, identities, ..) = store.signal();
    let message = message_encrypt(plaintext, &addr, sessions, identities).await.map_err(|e| match e {
        SignalProtocolError::SessionNotFound(_) => E2eError::NoSession(peer.to_owned()),
        source => E2eError::Encrypt { peer: peer.to_owned(), source },
    })?;
    Ok(match message {
        CiphertextMessage::PreKeySignalMessage(m) => (EncType::PreKey, m.serialized().to_vec()),
        CiphertextMessage::SignalMessage(m) => (EncType::Msg, m.serialized().to_vec()),
        other => {
            return Err(E2eError::Encrypt {
                peer: peer.to_owned(),
                source: SignalProtocolError::InvalidState("encrypt", format!("unexpected {:?}", other.message_type())),
            });
        }
    })
}

/// What a decryption gave.
#[derive(Debug)]
pub struct Decrypted {
    pub plaintext: Vec<u8>,
    /// The sender's identity key differs from the one we knew: show a security notice.
    pub identity_changed: bool,
}

/// Decrypts an `<enc>` payload from `peer`. A consumed one-time prekey is removed in the same
/// state change as the new session, so the caller's single save commits both.
pub async fn decrypt(store: &mut Store, peer: &str, kind: EncType, bytes: &[u8]) -> Result<Decrypted, E2eError> {
    let fail = |source| E2eError::Decrypt { peer: peer.to_owned(), source };
    let message = match kind {
        EncType::PreKey => CiphertextMessage::PreKeySignalMessage(PreKeySignalMessage::try_from(bytes).map_err(fail)?),
        EncType::Msg => CiphertextMessage::SignalMessage(SignalMessage::try_from(bytes).map_err(fail)?),
    };
    let addr = address(peer);
    let (sessions, identities, prekeys, signed) = store.signal();
    let result = message_decrypt(
        &message,
        &addr,
        sessions,
        identities,
        prekeys,
        signed,
        &mut crate::store::rng(),
        UsePQRatchet::No,
    )
    .await
    .map_err(fail)?;
    if let Some(id) = result.consumed_prekey_id {
        use wacore_libsignal::protocol::PreKeyStore as _;
        prekeys.remove_pre_key(id).await.map_err(fail)?;
    }
    Ok(Decrypted {
        plaintext: result.plaintext,
        identity_changed: matches!(result.identity_change, IdentityChange::ReplacedExisting),
    })
}

#[cfg(test)]
mod tests {
    //! The ratchet's security properties, shown with real keys: forward secrecy (a state leaked
    //! now does not open older messages) and post-compromise security (a state leaked earlier
    //! does not open messages after both sides have ratcheted).

    use super::*;

    /// `bob`'s published bundle, with a one-time prekey.
    fn bundle_of(store: &mut Store) -> KeyBundle {
        let (spk_id, spk, sig) = store.signed_prekey().unwrap();
        let (otk_id, otk) = store.new_prekeys(1).unwrap()[0];
        KeyBundle {
            registration_id: store.registration_id(),
            identity: store.identity().public_key().public_key_bytes().try_into().unwrap(),
            signed_prekey_id: spk_id,
            signed_prekey: spk,
            signature: sig.try_into().unwrap(),
            one_time: Some((otk_id, otk)),
        }
    }

    async fn pair() -> (Store, Store) {
        let mut alice = Store::create(None).unwrap();
        let mut bob = Store::create(None).unwrap();
        let bundle = bundle_of(&mut bob);
        assert!(!start_session(&mut alice, "bob", &bundle).await.unwrap());
        (alice, bob)
    }

    async fn send(from: &mut Store, to: &mut Store, from_name: &str, to_name: &str, text: &str) -> (EncType, Vec<u8>) {
        let (kind, ct) = encrypt(from, to_name, text.as_bytes()).await.unwrap();
        let got = decrypt(to, from_name, kind, &ct).await.unwrap();
        assert_eq!(got.plaintext, text.as_bytes());
        (kind, ct)
    }

    #[tokio::test]
    async fn x3dh_then_ratchet_both_ways() {
        let (mut alice, mut bob) = pair().await;
        let (kind, ct) = send(&mut alice, &mut bob, "alice", "bob", "hello").await;
        assert_eq!(kind, EncType::PreKey);
        assert_ne!(ct.windows(5).position(|w| w == b"hello"), Some(0));
        // Until bob answers, alice keeps sending prekey messages; after, plain ones.
        assert_eq!(send(&mut alice, &mut bob, "alice", "bob", "again").await.0, EncType::PreKey);
        assert_eq!(send(&mut bob, &mut alice, "bob", "alice", "hi").await.0, EncType::Msg);
        assert_eq!(send(&mut alice, &mut bob, "alice", "bob", "third").await.0, EncType::Msg);
        // The one-time prekey was used up.
        assert_eq!(bob.signal().2.len(), 0);
    }

    #[tokio::test]
    async fn forward_secrecy_a_leaked_state_does_not_open_older_messages() {
        let (mut alice, mut bob) = pair().await;
        let (k1, old) = send(&mut alice, &mut bob, "alice", "bob", "old secret").await;
        send(&mut bob, &mut alice, "bob", "alice", "reply").await;
        send(&mut alice, &mut bob, "alice", "bob", "newer").await;
        // The attacker takes bob's whole state now, and replays the captured old ciphertext.
        let mut leaked = bob.clone_for_test();
        let e = decrypt(&mut leaked, "alice", k1, &old).await.unwrap_err();
        assert!(matches!(e, E2eError::Decrypt { .. }), "{e}");
    }

    #[tokio::test]
    async fn post_compromise_security_after_both_sides_ratchet() {
        let (mut alice, mut bob) = pair().await;
        send(&mut alice, &mut bob, "alice", "bob", "one").await;
        send(&mut bob, &mut alice, "bob", "alice", "two").await;
        // The attacker copies bob's state here...
        let mut leaked = bob.clone_for_test();
        // ...and can read the next message on the same chain (the compromise is real)...
        let (k, ct) = encrypt(&mut alice, "bob", b"still same chain").await.unwrap();
        assert_eq!(decrypt(&mut leaked, "alice", k, &ct).await.unwrap().plaintext, b"still same chain");
        assert_eq!(decrypt(&mut bob, "alice", k, &ct).await.unwrap().plaintext, b"still same chain");
        // ...but once bob answers and alice ratchets with fresh DH keys, it is locked out.
        send(&mut bob, &mut alice, "bob", "alice", "fresh ratchet").await;
        let (k, ct) = encrypt(&mut alice, "bob", b"after healing").await.unwrap();
        assert!(decrypt(&mut leaked, "alice", k, &ct).await.is_err());
        assert_eq!(decrypt(&mut bob, "alice", k, &ct).await.unwrap().plaintext, b"after healing");
    }

    #[tokio::test]
    async fn tampered_and_garbage_ciphertexts_are_refused() {
        let (mut alice, mut bob) = pair().await;
        let (k, mut ct) = encrypt(&mut alice, "bob", b"x").await.unwrap();
        let last = ct.len() - 1;
        ct[last] ^= 1;
        assert!(decrypt(&mut bob, "alice", k, &ct).await.is_err());
        assert!(decrypt(&mut bob, "alice", EncType::Msg, b"\x33garbage").await.is_err());
        assert!(decrypt(&mut bob, "alice", EncType::PreKey, &[]).await.is_err());
        assert!(matches!(encrypt(&mut bob, "carol", b"x").await, Err(E2eError::NoSession(_))));
    }

    #[tokio::test]
    async fn a_new_identity_is_reported() {
        let (mut alice, mut bob) = pair().await;
        send(&mut alice, &mut bob, "alice", "bob", "one").await;
        // Bob reinstalls: new identity, new bundle.
        let mut bob2 = Store::create(None).unwrap();
        let bundle = bundle_of(&mut bob2);
        alice.drop_session(&address("bob"));
        assert!(start_session(&mut alice, "bob", &bundle).await.unwrap());
        send(&mut alice, &mut bob2, "alice", "bob", "to the new device").await;
    }
}
