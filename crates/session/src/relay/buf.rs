//! The relay's byte buffer.

use bytes::BufMut;
use bytes::BytesMut;
use bytes::buf::Limit;
use wire::frame::HEADER_LEN;

use super::READ_CHUNK;

/// A byte buffer with a consumed prefix: `data[head..]` is live. Unlike `BytesMut`, its capacity
/// is exactly the allocation (so the metrics and the idle release see the truth), and it only
/// compacts when it needs the room.
#[derive(Default)]
pub(crate) struct Buf {
    data: Vec<u8>,
    head: usize,
}

impl From<BytesMut> for Buf {
    fn from(b: BytesMut) -> Self {
        Buf { data: Vec::from(b), head: 0 }
    }
}

impl Buf {
    /// Live bytes.
    pub(crate) fn len(&self) -> usize {
        self.data.len() - self.head
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held.
    pub(crate) fn capacity(&self) -> usize {
        self.data.capacity()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[self.head..]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.head..]
    }

    /// Drops `n` live bytes from the front; an emptied buffer starts again at offset 0.
    pub(crate) fn consume(&mut self, n: usize) {
        self.head = (self.head + n).min(self.data.len());
        if self.head == self.data.len() {
            self.clear();
        }
    }

    /// Keeps the first `len` live bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.data.truncate(self.head + len);
    }

    /// Empties the buffer, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.head = 0;
    }

    /// Empties the buffer and frees its memory.
    pub(crate) fn release(&mut self) {
        *self = Buf::default();
    }

    /// Makes room for `n` more bytes: compacts first, then grows (doubling, but never past
    /// `ceiling` unless `n` itself needs it).
    pub(crate) fn reserve(&mut self, n: usize, ceiling: usize) {
        if self.data.capacity() - self.data.len() >= n {
            return;
        }
        if self.head > 0 {
            self.data.drain(..self.head);
            self.head = 0;
            if self.data.capacity() - self.data.len() >= n {
                return;
            }
        }
        let need = self.data.len() + n;
        let target = need.max((self.data.capacity() * 2).min(ceiling)).max(READ_CHUNK);
        self.data.reserve_exact(target - self.data.len());
    }

    /// The spare capacity as a read target of at most `n` bytes (read into without zeroing).
    pub(crate) fn spare(&mut self, n: usize) -> Limit<&mut Vec<u8>> {
        (&mut self.data).limit(n)
    }

    pub(crate) fn put_frame_header(&mut self, len: usize) {
        self.data.put_uint(len as u64, HEADER_LEN);
    }

    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }
}

/// Writes a frame header for a body of `len` bytes over the first [`HEADER_LEN`] bytes of `dst`.
pub(crate) fn write_header(dst: &mut [u8], len: usize) {
    dst[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_to_the_end_rewinds_and_keeps_the_capacity() {
        let mut b = Buf::default();
        b.reserve(10, 64);
        b.extend(b"abcdef");
        b.consume(2);
        assert_eq!(b.bytes(), b"cdef");
        b.consume(100);
        assert!(b.is_empty());
        assert_eq!(b.head, 0);
        assert_eq!(b.capacity(), READ_CHUNK, "reserve asks for at least a read chunk");
    }

    #[test]
    fn reserve_compacts_before_it_grows() {
        let mut b = Buf::default();
        b.reserve(READ_CHUNK, READ_CHUNK);
        b.extend(&[7; READ_CHUNK]);
        b.consume(READ_CHUNK - 10);
        b.reserve(100, READ_CHUNK);
        assert_eq!(b.capacity(), READ_CHUNK, "the consumed prefix made the room");
        assert_eq!((b.head, b.bytes()), (0, &[7u8; 10][..]));
    }

    #[test]
    fn reserve_doubles_up_to_the_ceiling_unless_one_request_needs_more() {
        let mut b = Buf::default();
        b.reserve(1, 3 * READ_CHUNK);
        b.extend(&[0; READ_CHUNK]);
        b.reserve(1, 3 * READ_CHUNK);
        assert_eq!(b.capacity(), 2 * READ_CHUNK);
        b.extend(&[0; READ_CHUNK]);
        b.reserve(1, 3 * READ_CHUNK);
        assert_eq!(b.capacity(), 3 * READ_CHUNK, "capped at the ceiling");
        b.extend(&[0; READ_CHUNK]);
        b.reserve(5 * READ_CHUNK, 3 * READ_CHUNK);
        assert_eq!(b.capacity(), 8 * READ_CHUNK, "exactly what the request needs");
    }

    #[test]
    fn release_frees_the_memory() {
        let mut b = Buf::from(BytesMut::from(&b"xyz"[..]));
        b.consume(3);
        assert!(b.capacity() > 0);
        b.release();
        assert_eq!(b.capacity(), 0);
    }

    #[test]
    fn headers_and_truncation_work_on_the_live_bytes() {
        let mut b = Buf::default();
        b.extend(b"..");
        b.consume(1);
        b.put_frame_header(0x010203);
        b.extend(b"body");
        assert_eq!(b.bytes(), b".\x01\x02\x03body");
        write_header(&mut b.bytes_mut()[1..], 2);
        b.truncate(1 + HEADER_LEN + 2);
        assert_eq!(b.bytes(), b".\x00\x00\x02bo");
    }
}
