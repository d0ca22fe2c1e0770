//! In-memory media store (seed 4.1.1): clients upload encrypted media and get a random
//! `storage_reference`; WhatsApp downloads it with `GET {base_url}/{storage_reference}`.
//!
//! Memory is bounded by `max_total_bytes`, which counts stored objects *and* uploads in progress:
//! an upload reserves its size (the declared Content-Length, or `max_object_bytes` when unknown)
//! before its body is read, so concurrent uploads cannot overshoot the budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hyper::header::HeaderValue;

/// Random bytes in a storage reference: 128 bits, unguessable, so a reference works as a
/// capability (whoever has it may download).
const REFERENCE_BYTES: usize = 16;
/// Length of the base64url form of a reference.
pub(crate) const REFERENCE_LEN: usize = 22;

/// What the media store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaUsage {
    /// Bytes of stored objects.
    pub stored_bytes: u64,
    /// Stored objects.
    pub objects: usize,
}

/// A stored object.
pub(crate) struct MediaObject {
    pub(crate) content_type: HeaderValue,
    pub(crate) bytes: Bytes,
}

/// Why an upload cannot be stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MediaError {
    #[error("media store is full ({limit} bytes)")]
    FullBytes { limit: u64 },
    #[error("media store is full ({limit} objects)")]
    FullObjects { limit: usize },
    #[error("random source failed")]
    Random,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Arc<MediaObject>>,
    stored_bytes: u64,
    reserved_bytes: u64,
}

pub(crate) struct MediaStore {
    state: Mutex<State>,
    max_total_bytes: u64,
    max_objects: usize,
}

/// Budget held by an upload in progress; released on drop if the upload never commits.
pub(crate) struct Reservation {
    store: Arc<MediaStore>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut state = self.store.lock();
        state.reserved_bytes = state.reserved_bytes.saturating_sub(self.bytes);
    }
}

impl MediaStore {
    pub(crate) fn new(max_total_bytes: u64, max_objects: usize) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::default()), max_total_bytes, max_objects })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections are short arithmetic and map operations with no panicking paths.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserve `bytes` of the budget for an upload about to be read.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, MediaError> {
        let mut state = self.lock();
        if state.objects.len() >= self.max_objects {
            return Err(MediaError::FullObjects { limit: self.max_objects });
        }
        let used = state.stored_bytes.saturating_add(state.reserved_bytes);
        if used.saturating_add(bytes) > self.max_total_bytes {
            return Err(MediaError::FullBytes { limit: self.max_total_bytes });
        }
        state.reserved_bytes += bytes;
        Ok(Reservation { store: self.clone(), bytes })
    }

    /// Store an upload whose body was read within `reservation`; returns its storage reference.
    pub(crate) fn commit(
        &self,
        mut reservation: Reservation,
        content_type: HeaderValue,
        bytes: Bytes,
    ) -> Result<String, MediaError> {
        let len = bytes.len() as u64;
        // The body was read under a limit equal to the reservation, so it fits; check anyway.
        if len > reservation.bytes {
            return Err(MediaError::FullBytes { limit: self.max_total_bytes });
        }
        // On the error paths below the guard (a local) is released before the reservation (a
        // parameter) drops and takes the lock again.
        let mut state = self.lock();
        if state.objects.len() >= self.max_objects {
            return Err(MediaError::FullObjects { limit: self.max_objects });
        }
        let reference = loop {
            let candidate = random_reference()?;
            // 128-bit collisions do not happen in practice; looping keeps it correct regardless.
            if !state.objects.contains_key(&candidate) {
                break candidate;
            }
        };
        // Hand the reservation's budget to the object in one step, so a concurrent reservation
        // never sees the bytes counted twice.
        state.reserved_bytes = state.reserved_bytes.saturating_sub(reservation.bytes);
        reservation.bytes = 0;
        state.stored_bytes += len;
        state.objects.insert(reference.clone(), Arc::new(MediaObject { content_type, bytes }));
        Ok(reference)
    }

    pub(crate) fn get(&self, reference: &str) -> Option<Arc<MediaObject>> {
        self.lock().objects.get(reference).cloned()
    }

    pub(crate) fn usage(&self) -> MediaUsage {
        let state = self.lock();
        MediaUsage { stored_bytes: state.stored_bytes, objects: state.objects.len() }
    }
}

fn random_reference() -> Result<String, MediaError> {
    let mut raw = [0u8; REFERENCE_BYTES];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| MediaError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// Whether `s` has the shape of a storage reference (so other paths can 404 without a lookup).
pub(crate) fn is_reference(s: &str) -> bool {
    s.len() == REFERENCE_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_reservations_and_objects() {
        let store = MediaStore::new(100, 2);
        let ct = HeaderValue::from_static("image/png");
        let r1 = store.reserve(60).expect("fits");
        assert!(matches!(store.reserve(50), Err(MediaError::FullBytes { limit: 100 })));
        let reference = store.commit(r1, ct.clone(), Bytes::from_static(b"0123456789")).expect("stored");
        assert!(is_reference(&reference));
        assert_eq!(store.usage(), MediaUsage { stored_bytes: 10, objects: 1 });
        // The unused part of the reservation is back.
        let r2 = store.reserve(90).expect("fits after release");
        drop(r2);
        let r3 = store.reserve(1).expect("fits");
        store.commit(r3, ct.clone(), Bytes::from_static(b"x")).expect("stored");
        assert!(matches!(store.reserve(1), Err(MediaError::FullObjects { limit: 2 })));
        assert_eq!(store.get(&reference).map(|o| o.bytes.len()), Some(10));
        assert!(store.get("AAAAAAAAAAAAAAAAAAAAAA").is_none());
        assert!(!is_reference("livez") && !is_reference("AAAAAAAAAAAAAAAAAAAAA/"));
    }
}
