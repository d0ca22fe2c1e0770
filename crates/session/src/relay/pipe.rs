//! One direction of the relay, sans-IO: it says where the next read goes and what to write next,
//! and is told how many bytes were read and written; the driver does the I/O.
//!
//! Two buffers: `inb` (bytes read from the source, not yet transformed) and `out` (frames ready
//! for the destination). A frame that sits alone in `inb` while `out` is empty is sealed or opened
//! in place and the two buffers swap roles; otherwise it is copied into `out` behind the frames
//! already waiting (write coalescing).

use bytes::buf::Limit;
use wire::frame::{HEADER_LEN, peek_len};
use wire::noise::{RecvCipher, SendCipher, TAG_LEN};

use super::buf::{Buf, write_header};
use super::{DirectionStats, READ_CHUNK, RelayConfig};
use crate::error::SessionError;
use crate::metrics::{Direction, SessionMetrics};
use crate::stanza::classify;

/// The transform a direction applies to each frame body.
pub(crate) enum Cipher {
    /// client → chatd: seal, appending the tag.
    Seal(SendCipher),
    /// chatd → client: open, dropping the tag.
    Open(RecvCipher),
}

/// Where the next read from the source goes.
pub(crate) enum ReadInto<'a> {
    /// The spare capacity of the input buffer, limited to the read window.
    Buffer(Limit<&'a mut Vec<u8>>),
    /// No buffer is held (released while idle): read at most this many bytes into a stack
    /// scratch buffer and hand them to [`Pipe::read_scratch`], so heap memory is taken only when
    /// bytes actually arrive.
    Scratch(usize),
}

/// Counts already pushed to the shared metrics.
#[derive(Default)]
struct Published {
    frames: u64,
    bytes: u64,
    stalls: u64,
    buffered: i64,
    capacity: i64,
}

pub(crate) struct Pipe<'a> {
    metrics: &'a SessionMetrics,
    dir: Direction,
    cipher: Cipher,
    inb: Buf,
    out: Buf,
    /// Largest input frame body.
    max_body: usize,
    /// Extra bytes a transformed frame takes over its input (the tag, when sealing).
    grow: usize,
    limit: usize,
    flush_pending: bool,
    /// The output ends with a stream-ending stanza; nothing more is read.
    ended: bool,
    stalled: bool,
    stats: DirectionStats,
    published: Published,
}

impl Drop for Pipe<'_> {
    /// Takes this pipe's bytes out of the shared gauges, however the relay ends (aborts included).
    fn drop(&mut self) {
        self.unpublish();
    }
}

impl<'a> Pipe<'a> {
    /// `inb` holds bytes already read from the source, `out` frames already ready for the
    /// destination; the cipher decides the direction.
    pub(crate) fn new(cipher: Cipher, inb: Buf, out: Buf, cfg: &RelayConfig, metrics: &'a SessionMetrics) -> Self {
        let (dir, max_body, grow) = match cipher {
            Cipher::Seal(_) => (Direction::ToUpstream, cfg.max_frame_len - TAG_LEN, TAG_LEN),
            Cipher::Open(_) => (Direction::ToClient, cfg.max_frame_len, 0),
        };
        Pipe {
            metrics,
            dir,
            cipher,
            inb,
            out,
            max_body,
            grow,
            limit: cfg.max_buffered_bytes,
            flush_pending: false,
            ended: false,
            stalled: false,
            stats: DirectionStats::default(),
            published: Published::default(),
        }
    }

    /// Bytes held: read but not yet written.
    pub(crate) fn buffered(&self) -> usize {
        self.inb.len() + self.out.len()
    }

    /// Heap bytes held by both buffers.
    pub(crate) fn capacity(&self) -> usize {
        self.inb.capacity() + self.out.capacity()
    }

    pub(crate) fn stats(&self) -> DirectionStats {
        self.stats
    }

    /// A stream-ending stanza was transformed: it is the last frame out, and nothing more is read.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    fn too_large(&self, len: usize) -> SessionError {
        match self.dir {
            Direction::ToUpstream => SessionError::ClientFrameTooLarge { len, max: self.max_body },
            Direction::ToClient => SessionError::UpstreamFrameTooLarge { len, max: self.max_body },
        }
    }

    /// The size (header included) of the frame at the front of `inb`, once its header is in.
    fn front_frame(&self) -> Result<Option<usize>, SessionError> {
        match peek_len(self.inb.bytes()) {
            None => Ok(None),
            Some(len) if len > self.max_body => Err(self.too_large(len)),
            Some(len) => Ok(Some(HEADER_LEN + len)),
        }
    }

    fn count(&mut self, payload_len: usize) {
        self.stats.frames += 1;
        self.stats.bytes += payload_len as u64;
    }

    // -----------------------------------------------------------------------------------------
    // Reading

    /// Where to read next, or `None` while the destination is behind (backpressure: each stop
    /// is counted once). Never reads past the end of a frame larger than [`READ_CHUNK`], and
    /// reserves room for the tag a sealed frame grows by.
    pub(crate) fn read_into(&mut self) -> Result<Option<ReadInto<'_>>, SessionError> {
        let front = self.front_frame()?;
        let whole = front.is_some_and(|size| self.inb.len() >= size);
        let (want, cap) = match front {
            Some(size) if size > READ_CHUNK && !whole => {
                let cap = if self.out.is_empty() { self.limit.max(size + self.grow) } else { self.limit };
                (size - self.inb.len(), cap)
            }
            _ => (READ_CHUNK, self.limit),
        };
        let room = cap.saturating_sub(self.buffered() + self.grow);
        if whole || room == 0 {
            // A frame is waiting for the destination: stop reading.
            if !self.stalled {
                self.stalled = true;
                self.stats.stalls += 1;
            }
            return Ok(None);
        }
        self.stalled = false;
        let n = want.min(room);
        if self.inb.capacity() == 0 {
            return Ok(Some(ReadInto::Scratch(n.min(READ_CHUNK))));
        }
        self.inb.reserve(n + self.grow, cap);
        Ok(Some(ReadInto::Buffer(self.inb.spare(n))))
    }

    /// Takes bytes read into the stack scratch buffer ([`ReadInto::Scratch`]).
    pub(crate) fn read_scratch(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.inb.reserve(bytes.len() + self.grow, READ_CHUNK + self.grow);
            self.inb.extend(bytes);
        }
    }

    /// Bytes arrived (wherever [`Pipe::read_into`] said to put them).
    pub(crate) fn on_read(&mut self) {
        self.stats.max_buffered = self.stats.max_buffered.max(self.buffered());
    }

    // -----------------------------------------------------------------------------------------
    // Transforming

    /// Transforms every complete frame that fits.
    pub(crate) fn transform_all(&mut self) -> Result<(), SessionError> {
        while self.transform_one()? {}
        Ok(())
    }

    /// Moves the front frame of `inb` to `out`, sealed or opened. `Ok(false)` when there is no
    /// whole frame, or no room for it yet.
    pub(crate) fn transform_one(&mut self) -> Result<bool, SessionError> {
        if self.ended {
            return Ok(false);
        }
        let Some(size) = self.front_frame()? else { return Ok(false) };
        if self.inb.len() < size {
            return Ok(false);
        }
        if self.out.is_empty() && self.inb.len() == size {
            // Alone: transform in place and let the buffers swap roles (no copy).
            std::mem::swap(&mut self.inb, &mut self.out);
            self.transform_in_place(size)?;
        } else if self.out.is_empty() || self.buffered() + self.grow <= self.limit {
            self.transform_copy(size)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// `out` holds exactly one frame of `size` bytes.
    fn transform_in_place(&mut self, size: usize) -> Result<(), SessionError> {
        let body_len = size - HEADER_LEN;
        match &mut self.cipher {
            Cipher::Seal(tx) => {
                let tag = tx.seal_in_place(&mut self.out.bytes_mut()[HEADER_LEN..]).map_err(SessionError::Seal)?;
                write_header(self.out.bytes_mut(), body_len + TAG_LEN);
                // Room for the tag was reserved when the frame was read.
                self.out.extend(&tag);
                self.count(body_len);
            }
            Cipher::Open(rx) => {
                let plain_len = rx.open(&mut self.out.bytes_mut()[HEADER_LEN..]).map_err(SessionError::Open)?.len();
                write_header(self.out.bytes_mut(), plain_len);
                self.out.truncate(HEADER_LEN + plain_len);
                self.count(plain_len);
                if classify(&self.out.bytes()[HEADER_LEN..]).ends_stream() {
                    self.ended = true;
                    self.inb.clear();
                }
            }
        }
        Ok(())
    }

    fn transform_copy(&mut self, size: usize) -> Result<(), SessionError> {
        let body_len = size - HEADER_LEN;
        let ceiling = self.limit.max(size + self.grow);
        match &mut self.cipher {
            Cipher::Seal(tx) => {
                self.out.reserve(size + TAG_LEN, ceiling);
                self.out.put_frame_header(body_len + TAG_LEN);
                let start = self.out.len();
                self.out.extend(&self.inb.bytes()[HEADER_LEN..size]);
                match tx.seal_in_place(&mut self.out.bytes_mut()[start..]) {
                    Ok(tag) => self.out.extend(&tag),
                    Err(e) => {
                        self.out.truncate(start - HEADER_LEN);
                        return Err(SessionError::Seal(e));
                    }
                }
                self.inb.consume(size);
                self.count(body_len);
            }
            Cipher::Open(rx) => {
                let plain_len = rx.open(&mut self.inb.bytes_mut()[HEADER_LEN..size]).map_err(SessionError::Open)?.len();
                let plain = &self.inb.bytes()[HEADER_LEN..HEADER_LEN + plain_len];
                let ends = classify(plain).ends_stream();
                self.out.reserve(HEADER_LEN + plain_len, ceiling);
                self.out.put_frame_header(plain_len);
                self.out.extend(plain);
                self.inb.consume(size);
                self.count(plain_len);
                if ends {
                    self.ended = true;
                    self.inb.clear();
                }
            }
        }
        Ok(())
    }

    /// Queues a frame of the proxy's own (the farewell) behind everything ready.
    pub(crate) fn push_frame(&mut self, payload: &[u8]) {
        self.out.put_frame_header(payload.len());
        self.out.extend(payload);
    }

    // -----------------------------------------------------------------------------------------
    // Writing

    /// Every frame ready for the destination, to go out in one write.
    pub(crate) fn output(&self) -> &[u8] {
        self.out.bytes()
    }

    /// The destination took `n` bytes of [`Pipe::output`]; it needs a flush.
    pub(crate) fn on_written(&mut self, n: usize) {
        self.out.consume(n);
        self.flush_pending = true;
    }

    pub(crate) fn needs_flush(&self) -> bool {
        self.flush_pending
    }

    pub(crate) fn on_flushed(&mut self) {
        self.flush_pending = false;
    }

    /// Everything ready was written and flushed.
    pub(crate) fn is_drained(&self) -> bool {
        self.out.is_empty() && !self.flush_pending
    }

    // -----------------------------------------------------------------------------------------
    // Memory and metrics

    /// Frees both buffers and parks the cipher's expanded key (about 600 bytes in aws-lc; the
    /// next frame expands it again) if the pipe holds nothing: the session has gone quiet.
    pub(crate) fn release_if_idle(&mut self) {
        if self.inb.is_empty() && self.is_drained() {
            self.inb.release();
            self.out.release();
            match &mut self.cipher {
                Cipher::Seal(tx) => tx.park(),
                Cipher::Open(rx) => rx.park(),
            }
        }
    }

    /// Whether the cipher's expanded key is parked.
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        match &self.cipher {
            Cipher::Seal(tx) => tx.is_parked(),
            Cipher::Open(rx) => rx.is_parked(),
        }
    }

    /// Pushes the counts gathered since the last call to the shared metrics.
    pub(crate) fn publish(&mut self) {
        let metrics = self.metrics;
        let m = &metrics.dirs[self.dir.index()];
        let capacity = self.capacity() as i64;
        let (s, p) = (&self.stats, &mut self.published);
        if s.frames != p.frames {
            m.frames.inc_by(s.frames - p.frames);
            m.bytes.inc_by(s.bytes - p.bytes);
            (p.frames, p.bytes) = (s.frames, s.bytes);
        }
        if s.stalls != p.stalls {
            m.stalls.inc_by(s.stalls - p.stalls);
            p.stalls = s.stalls;
        }
        let buffered = self.inb.len() as i64 + self.out.len() as i64;
        if buffered != p.buffered {
            m.buffered.add(buffered - p.buffered);
            p.buffered = buffered;
        }
        self.stats.max_buffered = self.stats.max_buffered.max(buffered as usize);
        if capacity != p.capacity {
            metrics.relay_buffer_capacity.add(capacity - p.capacity);
            p.capacity = capacity;
        }
    }

    /// Takes this pipe's bytes out of the shared gauges (its buffers are about to go).
    pub(crate) fn unpublish(&mut self) {
        self.metrics.dirs[self.dir.index()].buffered.sub(self.published.buffered);
        self.metrics.relay_buffer_capacity.sub(self.published.capacity);
        self.published.buffered = 0;
        self.published.capacity = 0;
    }
}

#[cfg(test)]
mod tests;
