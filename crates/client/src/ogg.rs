//! Recognising a voice note: an Ogg stream (RFC 3533) whose first page carries the Opus
//! identification header (`OpusHead`, RFC 7845 §5.1), as WhatsApp records them
//! (`audio/ogg; codecs=opus`). Its length in seconds comes from the last page's granule position,
//! which counts 48 kHz samples, less the header's pre-skip (RFC 7845 §4).
//!
//! The walk reads each page's 27-byte header and segment table and jumps over the body: it
//! allocates nothing and does work linear in the input, however many pages a hostile file holds.
//! Page CRCs are not checked: the file is the sender's own, and a corrupt body only plays badly.

/// `OggS`, the capture pattern every page starts with.
const CAPTURE: &[u8; 4] = b"OggS";
/// Capture pattern, version, header type, granule position, serial, sequence, CRC, segment count.
const PAGE_HEADER: usize = 27;
/// Opus granule positions count samples at 48 kHz whatever the input rate.
const OPUS_RATE: u64 = 48_000;
/// `OpusHead`, version, channels, pre-skip, input rate, gain, mapping family.
const OPUS_HEAD_LEN: usize = 19;

/// Why a file is not a voice note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OggError {
    #[error("not an Ogg file (it does not start with \"OggS\"); voice notes are Ogg/Opus (.ogg, .opus)")]
    NotOgg,
    #[error("Ogg page at byte {offset} has version {version}; only version 0 exists")]
    Version { offset: usize, version: u8 },
    #[error("Ogg page at byte {offset} is truncated (the file is cut short)")]
    Truncated { offset: usize },
    #[error("expected an Ogg page at byte {offset} (\"OggS\"); the file is corrupt")]
    Lost { offset: usize },
    #[error("an Ogg file, but not Opus (its first packet is not \"OpusHead\"); record or convert to Opus")]
    NotOpus,
}

/// What a voice note says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusInfo {
    pub channels: u8,
    /// Whole seconds, rounded to the nearest (0 when no audio page finished).
    pub seconds: u32,
}

/// One page's header fields this module reads.
struct Page {
    granule: i64,
    serial: u32,
    /// Where the page's body starts and ends in the input.
    body: std::ops::Range<usize>,
}

fn page_at(data: &[u8], offset: usize) -> Result<Page, OggError> {
    let header = data.get(offset..offset + PAGE_HEADER).ok_or(OggError::Truncated { offset })?;
    if &header[..4] != CAPTURE {
        return Err(if offset == 0 { OggError::NotOgg } else { OggError::Lost { offset } });
    }
    if header[4] != 0 {
        return Err(OggError::Version { offset, version: header[4] });
    }
    let le = |r: std::ops::Range<usize>| header[r].iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let segments = usize::from(header[26]);
    let table_end = offset + PAGE_HEADER + segments;
    let table = data.get(offset + PAGE_HEADER..table_end).ok_or(OggError::Truncated { offset })?;
    let body_len: usize = table.iter().map(|&l| usize::from(l)).sum();
    if data.len() < table_end + body_len {
        return Err(OggError::Truncated { offset });
    }
    Ok(Page { granule: le(6..14) as i64, serial: le(14..18) as u32, body: table_end..table_end + body_len })
}

/// Checks that `data` is Ogg/Opus and reads its channel count and length.
pub fn opus_info(data: &[u8]) -> Result<OpusInfo, OggError> {
    if !data.starts_with(CAPTURE) {
        return Err(OggError::NotOgg);
    }
    let first = page_at(data, 0)?;
    let head = &data[first.body.clone()];
    if head.len() < OPUS_HEAD_LEN || !head.starts_with(b"OpusHead") {
        return Err(OggError::NotOpus);
    }
    let channels = head[9];
    let pre_skip = u64::from(u16::from_le_bytes([head[10], head[11]]));
    let mut last_granule = None;
    let mut offset = first.body.end;
    while offset < data.len() {
        let page = page_at(data, offset)?;
        // Granule -1: no packet ends on this page. Other logical streams are not the voice.
        if page.serial == first.serial && page.granule >= 0 {
            last_granule = Some(page.granule as u64);
        }
        offset = page.body.end;
    }
    let samples = last_granule.unwrap_or(0).saturating_sub(pre_skip);
    let seconds = u32::try_from(samples.saturating_add(OPUS_RATE / 2) / OPUS_RATE).unwrap_or(u32::MAX);
    Ok(OpusInfo { channels, seconds })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One Ogg page holding `body` as a single packet (segments of 255 and a final short one).
    pub(crate) fn page(serial: u32, sequence: u32, granule: i64, header_type: u8, body: &[u8]) -> Vec<u8> {
        let mut lacing = vec![255u8; body.len() / 255];
        lacing.push((body.len() % 255) as u8);
        let mut p = Vec::with_capacity(PAGE_HEADER + lacing.len() + body.len());
        p.extend_from_slice(CAPTURE);
        p.extend([0, header_type]);
        p.extend(granule.to_le_bytes());
        p.extend(serial.to_le_bytes());
        p.extend(sequence.to_le_bytes());
        p.extend([0; 4]);
        p.push(lacing.len() as u8);
        p.extend(lacing);
        p.extend_from_slice(body);
        p
    }

    pub(crate) fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
        let mut h = b"OpusHead".to_vec();
        h.extend([1, channels]);
        h.extend(pre_skip.to_le_bytes());
        h.extend(48_000u32.to_le_bytes());
        h.extend([0, 0, 0]);
        h
    }

    /// A voice note of `seconds` (headers and one audio page; the audio bytes are filler).
    pub(crate) fn voice_note(seconds: u32) -> Vec<u8> {
        let pre_skip = 312;
        let mut f = page(7, 0, 0, 2, &opus_head(1, pre_skip));
        f.extend(page(7, 1, 0, 0, b"OpusTags\x05\0\0\0tests\0\0\0\0"));
        f.extend(page(7, 2, i64::from(seconds) * 48_000 + i64::from(pre_skip), 4, &[0x55; 600]));
        f
    }

    #[test]
    fn a_voice_note_is_recognised_and_its_length_read_from_the_last_granule() {
        assert_eq!(opus_info(&voice_note(3)), Ok(OpusInfo { channels: 1, seconds: 3 }));
        assert_eq!(opus_info(&voice_note(0)).unwrap().seconds, 0);
        // 2.6 s rounds to 3; pages of another logical stream and granule -1 pages are ignored.
        let mut f = page(7, 0, 0, 2, &opus_head(2, 0));
        f.extend(page(7, 1, 124_800, 0, &[1; 300]));
        f.extend(page(9, 0, 10_000_000, 0, &[2; 10]));
        f.extend(page(7, 2, -1, 0, &[3; 10]));
        assert_eq!(opus_info(&f), Ok(OpusInfo { channels: 2, seconds: 3 }));
        // Only headers: a note of no length, not an error.
        assert_eq!(opus_info(&page(7, 0, 0, 2, &opus_head(1, 312))).unwrap().seconds, 0);
    }

    #[test]
    fn what_is_not_ogg_opus_is_refused_with_the_reason() {
        assert_eq!(opus_info(b""), Err(OggError::NotOgg));
        assert_eq!(opus_info(b"RIFF....WAVEfmt "), Err(OggError::NotOgg));
        assert_eq!(opus_info(&[0u8; 4096]), Err(OggError::NotOgg));
        // Ogg Vorbis: the right container, the wrong codec.
        assert_eq!(opus_info(&page(1, 0, 0, 2, b"\x01vorbis\0\0\0\0\x02\x44\xac\0\0")), Err(OggError::NotOpus));
        // A short OpusHead.
        assert_eq!(opus_info(&page(1, 0, 0, 2, b"OpusHead\x01")), Err(OggError::NotOpus));
        let mut v1 = voice_note(1);
        v1[4] = 1;
        assert_eq!(opus_info(&v1), Err(OggError::Version { offset: 0, version: 1 }));
        // Garbage after the first page.
        let mut junk = page(7, 0, 0, 2, &opus_head(1, 0));
        let at = junk.len();
        junk.extend([0xAB; 40]);
        assert_eq!(opus_info(&junk), Err(OggError::Lost { offset: at }));
    }

    #[test]
    fn truncated_pages_are_refused_at_every_cut() {
        let f = voice_note(2);
        // A cut on a page boundary leaves a shorter, valid file.
        let first = page(7, 0, 0, 2, &opus_head(1, 312)).len();
        let second = first + page(7, 1, 0, 0, b"OpusTags\x05\0\0\0tests\0\0\0\0").len();
        for cut in 1..f.len() {
            let got = opus_info(&f[..cut]);
            if cut == first || cut == second {
                assert_eq!(got.map(|i| i.seconds), Ok(0));
                continue;
            }
            assert!(
                matches!(got, Err(OggError::Truncated { .. } | OggError::NotOgg)),
                "cut at {cut} of {}: {got:?}",
                f.len()
            );
        }
        // A segment table claiming 255 segments of 255 bytes with nothing behind it.
        let mut liar = page(7, 0, 0, 2, &opus_head(1, 0));
        let at = liar.len();
        liar.extend(CAPTURE);
        liar.extend([0; 22]);
        liar.push(255);
        liar.extend([255; 255]);
        assert_eq!(opus_info(&liar), Err(OggError::Truncated { offset: at }));
    }

    #[test]
    fn a_huge_number_of_pages_costs_linear_time_and_no_memory() {
        // 200,000 empty pages (5.4 MB): each step jumps a page, nothing is collected.
        let mut f = page(7, 0, 0, 2, &opus_head(1, 0));
        let empty = page(7, 1, 48_000, 0, &[]);
        f.reserve(empty.len() * 200_000);
        for _ in 0..200_000 {
            f.extend_from_slice(&empty);
        }
        let last = page(7, 2, 48_000 * 61, 4, &[]);
        f.extend(last);
        let started = std::time::Instant::now();
        assert_eq!(opus_info(&f).unwrap().seconds, 61);
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }
}
