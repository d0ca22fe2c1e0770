//! Media, both directions. WhatsApp-side clients upload to `POST /mms/{type}` and download from
//! `GET /v/t{file_reference}`. A Partner's media is reached through
//! `/interop/whatsapp/download/{integrator}/{storage_reference}/`, which the simulator fetches
//! from `{partner base}/{storage_reference}` and streams back. Bytes are opaque (already
//! encrypted by the sender).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use crate::sim::{lock, random_fill};

/// One stored object.
#[derive(Debug, Clone)]
pub struct Object {
    pub content_type: String,
    pub bytes: Bytes,
}

/// Uploaded objects, bounded in total bytes; the oldest go first when full.
pub struct MediaStore {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    objects: HashMap<String, Object>,
    order: VecDeque<String>,
    bytes: usize,
}

impl MediaStore {
    pub fn new(max_bytes: usize) -> Self {
        MediaStore { max_bytes, inner: Mutex::default() }
    }

    /// Stores an object; returns its direct path, `/v/t62.7118-24/{random}`.
    pub fn put(&self, content_type: String, bytes: Bytes) -> Option<String> {
        if bytes.len() > self.max_bytes {
            return None;
        }
        let mut id = [0u8; 18];
        random_fill(&mut id);
        let path = format!("/v/t62.7118-24/{}", URL_SAFE_NO_PAD.encode(id));
        let mut inner = lock(&self.inner);
        while inner.bytes + bytes.len() > self.max_bytes {
            let Some(old) = inner.order.pop_front() else { break };
            if let Some(o) = inner.objects.remove(&old) {
                inner.bytes -= o.bytes.len();
            }
        }
        inner.bytes += bytes.len();
        inner.order.push_back(path.clone());
        inner.objects.insert(path.clone(), Object { content_type, bytes });
        Some(path)
    }

    pub fn get(&self, path: &str) -> Option<Object> {
        lock(&self.inner).objects.get(path).cloned()
    }
}
