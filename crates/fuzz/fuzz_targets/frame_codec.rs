//! The frame codec on an arbitrary byte stream, fed in arbitrary chunk sizes: it must yield the
//! same frames however the stream is cut, never buffer past the limit, and never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder as _;
use wire::frame::{FrameCodec, decode_frame};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let chunk = usize::from(cut).max(1);

    // Reference: the plain function over the whole stream.
    let mut expected = Vec::new();
    let mut rest = stream;
    let expected_err = loop {
        match decode_frame(rest, LIMIT) {
            Ok(Some((body, tail))) => {
                expected.push(body.to_vec());
                rest = tail;
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };

    let mut codec = FrameCodec::with_max_len(LIMIT);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut got_err = false;
    'feed: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => got.push(frame.to_vec()),
                Ok(None) => break,
                Err(_) => {
                    got_err = true;
                    break 'feed;
                }
            }
        }
        assert!(buf.len() <= LIMIT + 3 + chunk, "buffered past the limit");
    }
    assert_eq!(got, expected);
    assert_eq!(got_err, expected_err);
});
