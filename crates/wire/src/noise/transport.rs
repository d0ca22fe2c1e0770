//! The post-handshake frame cipher: AES-256-GCM with empty AD and a 32-bit counter nonce per
//! direction, in place, with no allocation (`seal` appends the tag into spare capacity).
//!
//! Each direction keeps its 32-byte secret and, while it is in use, the key expanded for AES-GCM
//! (aws-lc's context: the AES key schedule and the GHASH tables, about 600 bytes on the heap).
//! [`SendCipher::park`] / [`RecvCipher::park`] drop the expanded key of a direction that went
//! quiet; the next frame expands it again (about a microsecond), so an idle session holds 32
//! bytes per direction instead of a context.

use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey};
use bytes::BytesMut;
use zeroize::Zeroizing;

use super::symmetric::{aead_key, nonce};
use super::{Direction, MAX_PLAINTEXT_LEN, NoiseError, TAG_LEN};
use crate::frame::MAX_FRAME_LEN;

/// Both directions of an established session, plus the final handshake hash.
pub struct Transport {
    send: SendCipher,
    recv: RecvCipher,
    handshake_hash: [u8; 32],
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").field("send", &self.send).field("recv", &self.recv).finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(send: SendCipher, recv: RecvCipher, handshake_hash: [u8; 32]) -> Self {
        Self { send, recv, handshake_hash }
    }

    /// Encrypts `buf` in place and appends the 16-byte tag. Allocation-free when `buf` has 16
    /// bytes of spare capacity. `buf` is untouched on error.
    pub fn seal(&mut self, buf: &mut BytesMut) -> Result<(), NoiseError> {
        self.send.seal(buf)
    }

    /// Authenticates and decrypts a received frame body in place; returns the plaintext (the
    /// frame minus its tag). On error the receive counter does not advance and the frame's
    /// contents are unspecified.
    pub fn open<'b>(&mut self, frame: &'b mut [u8]) -> Result<&'b mut [u8], NoiseError> {
        self.recv.open(frame)
    }

    /// The final handshake hash `h`: equal on both sides, usable for channel binding.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// Frames sealed so far (= the next send nonce).
    pub fn send_counter(&self) -> u64 {
        self.send.counter()
    }

    /// Frames opened so far (= the next receive nonce).
    pub fn recv_counter(&self) -> u64 {
        self.recv.counter()
    }

    /// The two directions, for a writer task and a reader task.
    pub fn split(self) -> (SendCipher, RecvCipher) {
        (self.send, self.recv)
    }
}

/// One direction's key: the secret, and the expanded key while the direction is in use.
struct CipherKey {
    secret: Zeroizing<[u8; 32]>,
    /// aws-lc's context, built from `secret`; wiped by aws-lc when dropped.
    expanded: Option<LessSafeKey>,
}

impl CipherKey {
    fn new(secret: &[u8; 32]) -> Result<Self, NoiseError> {
        Ok(Self { secret: Zeroizing::new(*secret), expanded: Some(aead_key(secret)?) })
    }

    /// The expanded key, built again if it was parked.
    fn expanded(&mut self) -> Result<&LessSafeKey, NoiseError> {
        match &mut self.expanded {
            Some(key) => Ok(key),
            slot @ None => Ok(slot.insert(aead_key(&self.secret)?)),
        }
    }

    fn park(&mut self) {
        self.expanded = None;
    }

    fn is_parked(&self) -> bool {
        self.expanded.is_none()
    }
}

/// The sending half.
pub struct SendCipher {
    key: CipherKey,
    counter: u64,
}

impl fmt::Debug for SendCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendCipher").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl SendCipher {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Self, NoiseError> {
        Ok(Self { key: CipherKey::new(key)?, counter: 0 })
    }

    /// Drops the expanded key until the next seal, which builds it again from the secret.
    pub fn park(&mut self) {
        self.key.park();
    }

    /// Whether the expanded key is dropped (see [`park`](Self::park)).
    pub fn is_parked(&self) -> bool {
        self.key.is_parked()
    }

    /// Encrypts `buf` in place and appends the tag (see [`Transport::seal`]).
    pub fn seal(&mut self, buf: &mut BytesMut) -> Result<(), NoiseError> {
        let tag = self.seal_in_place(buf)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Encrypts `plaintext` in place and returns the tag to append after it: for callers that
    /// build the frame header and body in one buffer. At most [`MAX_PLAINTEXT_LEN`] bytes.
    pub fn seal_in_place(&mut self, plaintext: &mut [u8]) -> Result<[u8; TAG_LEN], NoiseError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(NoiseError::PayloadTooLarge { len: plaintext.len(), max: MAX_PLAINTEXT_LEN });
        }
        let n = checked_nonce(self.counter, Direction::Send)?;
        let tag = self
            .key
            .expanded()?
            .seal_in_place_separate_tag(nonce(n), Aad::empty(), plaintext)
            .map_err(|_| NoiseError::Crypto { op: "AES-GCM seal" })?;
        self.counter += 1;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Frames sealed so far (= the next nonce).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    #[cfg(test)]
    pub(crate) fn set_counter(&mut self, counter: u64) {
        self.counter = counter;
    }
}

/// The receiving half.
pub struct RecvCipher {
    key: CipherKey,
    counter: u64,
}

impl fmt::Debug for RecvCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvCipher").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl RecvCipher {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Self, NoiseError> {
        Ok(Self { key: CipherKey::new(key)?, counter: 0 })
    }

    /// Drops the expanded key until the next open, which builds it again from the secret.
    pub fn park(&mut self) {
        self.key.park();
    }

    /// Whether the expanded key is dropped (see [`park`](Self::park)).
    pub fn is_parked(&self) -> bool {
        self.key.is_parked()
    }

    /// Decrypts a frame body in place (see [`Transport::open`]).
    pub fn open<'b>(&mut self, frame: &'b mut [u8]) -> Result<&'b mut [u8], NoiseError> {
        if frame.len() < TAG_LEN {
            return Err(NoiseError::FrameTooShort { len: frame.len() });
        }
        if frame.len() > MAX_FRAME_LEN {
            return Err(NoiseError::PayloadTooLarge { len: frame.len(), max: MAX_FRAME_LEN });
        }
        let n = checked_nonce(self.counter, Direction::Receive)?;
        let plaintext = self
            .key
            .expanded()?
            .open_in_place(nonce(n), Aad::empty(), frame)
            .map_err(|_| NoiseError::Open { counter: self.counter })?;
        // Only an authentic frame moves the counter, so a replayed or reordered one cannot
        // desynchronise the stream (Noise spec 5.1).
        self.counter += 1;
        Ok(plaintext)
    }

    /// Frames opened so far (= the next nonce).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    #[cfg(test)]
    pub(crate) fn set_counter(&mut self, counter: u64) {
        self.counter = counter;
    }
}

/// The nonce for `counter`: one key protects at most 2^32 frames (counters 0 ..= 2^32 - 1);
/// after that the 32-bit nonce would wrap, so the counter stops at 2^32 and every call fails.
fn checked_nonce(counter: u64, direction: Direction) -> Result<u32, NoiseError> {
    u32::try_from(counter).map_err(|_| NoiseError::NonceExhausted { direction })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SendCipher, RecvCipher) {
        (SendCipher::new(&[7; 32]).unwrap(), RecvCipher::new(&[7; 32]).unwrap())
    }

    #[test]
    fn seal_appends_a_tag_and_open_strips_it() {
        let (mut tx, mut rx) = pair();
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = BytesMut::with_capacity(len + TAG_LEN);
            buf.extend_from_slice(&plain);
            let cap = buf.capacity();
            tx.seal(&mut buf).unwrap();
            assert_eq!(buf.len(), len + TAG_LEN);
            assert_eq!(buf.capacity(), cap, "no reallocation when the tag fits");
            if len > 0 {
                assert_ne!(&buf[..len], &plain[..]);
            }
            assert_eq!(rx.open(&mut buf).unwrap(), &plain[..]);
        }
        assert_eq!((tx.counter(), rx.counter()), (6, 6));
    }

    #[test]
    fn nonce_layout_is_eight_zero_bytes_then_the_counter() {
        let (mut tx, _) = pair();
        tx.set_counter(0x0102_0304);
        let mut buf = BytesMut::from(&b"abc"[..]);
        tx.seal(&mut buf).unwrap();
        let key = aead_key(&[7; 32]).unwrap();
        let mut n = [0u8; 12];
        n[8..].copy_from_slice(&[1, 2, 3, 4]);
        let plain =
            key.open_in_place(aws_lc_rs::aead::Nonce::assume_unique_for_key(n), Aad::empty(), &mut buf).unwrap();
        assert_eq!(plain, b"abc");
    }

    #[test]
    fn counters_refuse_to_wrap() {
        let (mut tx, mut rx) = pair();
        tx.set_counter(u64::from(u32::MAX));
        rx.set_counter(u64::from(u32::MAX));
        let mut buf = BytesMut::from(&b"last"[..]);
        tx.seal(&mut buf).unwrap();
        assert_eq!(rx.open(&mut buf).unwrap(), b"last");
        let mut buf = BytesMut::from(&b"one too many"[..]);
        assert!(matches!(tx.seal(&mut buf), Err(NoiseError::NonceExhausted { direction: Direction::Send })));
        assert_eq!(&buf[..], b"one too many", "buffer untouched on error");
        let mut frame = [0u8; 32];
        assert!(matches!(rx.open(&mut frame), Err(NoiseError::NonceExhausted { direction: Direction::Receive })));
    }

    #[test]
    fn short_and_oversized_input() {
        let (mut tx, mut rx) = pair();
        assert!(matches!(rx.open(&mut [0u8; 15]), Err(NoiseError::FrameTooShort { len: 15 })));
        let mut big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(tx.seal_in_place(&mut big), Err(NoiseError::PayloadTooLarge { .. })));
        assert_eq!(tx.counter(), 0, "a refused seal does not burn a nonce");
    }

    #[test]
    fn tampering_is_detected_without_advancing() {
        let (mut tx, mut rx) = pair();
        let mut buf = BytesMut::from(&b"payload"[..]);
        tx.seal(&mut buf).unwrap();
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x80;
            assert!(matches!(rx.open(&mut bad), Err(NoiseError::Open { counter: 0 })));
        }
        assert_eq!(rx.open(&mut buf).unwrap(), b"payload");
    }

    #[test]
    fn parked_keys_are_expanded_again_on_use() {
        let (mut tx, mut rx) = pair();
        for round in 0..3 {
            tx.park();
            rx.park();
            assert!(tx.is_parked() && rx.is_parked());
            let mut buf = BytesMut::from(&b"after a quiet while"[..]);
            tx.seal(&mut buf).unwrap();
            assert!(!tx.is_parked());
            assert_eq!(rx.open(&mut buf).unwrap(), b"after a quiet while", "round {round}");
            assert!(!rx.is_parked());
        }
        // The nonces went on counting across the parks: a fresh pair cannot open the next frame.
        let mut buf = BytesMut::from(&b"x"[..]);
        tx.seal(&mut buf).unwrap();
        let (_, mut fresh) = pair();
        assert!(matches!(fresh.open(&mut buf.clone()), Err(NoiseError::Open { counter: 0 })));
        assert_eq!(rx.open(&mut buf).unwrap(), b"x");
    }

    #[test]
    fn debug_shows_counters_only() {
        let (tx, rx) = pair();
        let t = Transport::new(tx, rx, [0xEE; 32]);
        let shown = format!("{t:?}");
        assert!(shown.contains("counter: 0"), "{shown}");
        assert!(!shown.contains("07"), "{shown}");
    }
}
