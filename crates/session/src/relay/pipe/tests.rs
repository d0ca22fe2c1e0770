//! One direction without sockets: bytes are handed to the pipe where it says, its output taken
//! by hand, and chatd's side of a real Noise pair seals and opens.

use bytes::{BufMut, BytesMut};
use wire::frame::{HEADER_LEN, encode_frame};
use wire::noise::Transport;

use super::*;
use wire::refusal::Refusal;
use wire::testing::transports;

fn cfg() -> RelayConfig {
    RelayConfig { max_frame_len: 64 * 1024, max_buffered_bytes: 16 * 1024, ..RelayConfig::default() }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(payload, &mut out).unwrap();
    out.to_vec()
}

/// client → chatd: the pipe seals, `chatd` opens what it wrote.
fn sealing<'a>(cfg: &RelayConfig, metrics: &'a SessionMetrics) -> (Pipe<'a>, Transport) {
    let (proxy, chatd) = transports();
    let (send, _) = proxy.split();
    (Pipe::new(Cipher::Seal(send), Buf::default(), Buf::default(), cfg, metrics), chatd)
}

/// chatd → client: `chatd` seals, the pipe opens.
fn opening<'a>(cfg: &RelayConfig, metrics: &'a SessionMetrics) -> (Pipe<'a>, Transport) {
    let (proxy, chatd) = transports();
    let (_, recv) = proxy.split();
    (Pipe::new(Cipher::Open(recv), Buf::default(), Buf::default(), cfg, metrics), chatd)
}

fn sealed_by(chatd: &mut Transport, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::from(payload);
    chatd.seal(&mut b).unwrap();
    framed(&b)
}

/// Hands over as much of `bytes` as the pipe takes; returns how much it took.
fn feed(pipe: &mut Pipe<'_>, bytes: &[u8]) -> Result<usize, SessionError> {
    let mut taken = 0;
    while taken < bytes.len() {
        let rest = &bytes[taken..];
        let n = match pipe.read_into()? {
            None => break,
            Some(ReadInto::Buffer(mut spare)) => {
                let n = spare.remaining_mut().min(rest.len());
                spare.put_slice(&rest[..n]);
                n
            }
            Some(ReadInto::Scratch(window)) => {
                let n = window.min(rest.len());
                pipe.read_scratch(&rest[..n]);
                n
            }
        };
        pipe.on_read();
        taken += n;
    }
    Ok(taken)
}

/// Transforms every whole frame that fits.
fn transform_all(pipe: &mut Pipe<'_>) -> usize {
    let mut n = 0;
    while pipe.transform_one().unwrap() {
        n += 1;
    }
    n
}

/// Writes (by hand) and flushes everything ready.
fn take_output(pipe: &mut Pipe<'_>) -> Vec<u8> {
    let out = pipe.output().to_vec();
    pipe.on_written(out.len());
    pipe.on_flushed();
    out
}

/// Splits framed bytes into frame bodies.
fn bodies(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while !bytes.is_empty() {
        let len = peek_len(bytes).unwrap();
        v.push(bytes[HEADER_LEN..HEADER_LEN + len].to_vec());
        bytes = &bytes[HEADER_LEN + len..];
    }
    v
}

#[test]
fn a_partial_frame_waits_for_its_last_byte() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = sealing(&cfg, &metrics);
    let payload = vec![7u8; 100];
    let frame = framed(&payload);
    for cut in [2, HEADER_LEN, frame.len() - 1] {
        let held = pipe.buffered();
        assert_eq!(feed(&mut pipe, &frame[held..cut]).unwrap(), cut - held);
        assert!(!pipe.transform_one().unwrap(), "{cut} of {} bytes is not a frame", frame.len());
        assert!(pipe.output().is_empty());
    }
    feed(&mut pipe, &frame[frame.len() - 1..]).unwrap();
    assert!(pipe.transform_one().unwrap());
    let mut body = bodies(&take_output(&mut pipe)).remove(0);
    assert_eq!(body.len(), payload.len() + TAG_LEN);
    assert_eq!(chatd.open(&mut body).unwrap(), &payload[..]);
    assert_eq!((pipe.stats().frames, pipe.stats().bytes), (1, 100));
}

#[test]
fn a_frame_alone_is_sealed_in_place() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = sealing(&cfg, &metrics);
    let payload = vec![1u8; 3000];
    feed(&mut pipe, &framed(&payload)).unwrap();
    let (at, capacity) = (pipe.inb.bytes().as_ptr(), pipe.capacity());
    assert!(pipe.transform_one().unwrap());
    assert_eq!(pipe.output().as_ptr(), at, "the buffers swapped roles: no copy");
    assert_eq!(pipe.capacity(), capacity, "the tag fit in the room reserved at the read: no allocation");
    let mut body = bodies(&take_output(&mut pipe)).remove(0);
    assert_eq!(chatd.open(&mut body).unwrap(), &payload[..]);
}

#[test]
fn a_frame_alone_is_opened_in_place() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = opening(&cfg, &metrics);
    let payload = vec![2u8; 3000];
    feed(&mut pipe, &sealed_by(&mut chatd, &payload)).unwrap();
    let at = pipe.inb.bytes().as_ptr();
    assert!(pipe.transform_one().unwrap());
    assert_eq!(pipe.output().as_ptr(), at);
    assert_eq!(take_output(&mut pipe), framed(&payload), "plaintext, framed, tag gone");
    assert_eq!((pipe.stats().frames, pipe.stats().bytes), (1, 3000));
}

#[test]
fn frames_behind_others_are_copied_and_coalesced_in_order() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = sealing(&cfg, &metrics);
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + 100 * i as usize]).collect();
    let input: Vec<u8> = payloads.iter().flat_map(|p| framed(p)).collect();
    feed(&mut pipe, &input).unwrap();
    assert_eq!(transform_all(&mut pipe), 5);
    let out = take_output(&mut pipe);
    for (mut body, want) in bodies(&out).into_iter().zip(&payloads) {
        assert_eq!(chatd.open(&mut body).unwrap(), &want[..]);
    }
}

#[test]
fn an_oversize_client_frame_is_refused_from_its_header() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, _chatd) = sealing(&cfg, &metrics);
    // The largest client payload is max_frame_len - 16: its sealed form must fit.
    let max = cfg.max_frame_len - TAG_LEN;
    let header = framed(&vec![0; max + 1])[..HEADER_LEN].to_vec();
    assert!(matches!(feed(&mut pipe, &header), Ok(3)));
    let err = pipe.read_into().err().unwrap();
    assert!(matches!(err, SessionError::ClientFrameTooLarge { len, max: m } if len == max + 1 && m == max), "{err:?}");
    assert!(matches!(pipe.transform_one(), Err(SessionError::ClientFrameTooLarge { .. })));
    assert!(pipe.capacity() <= READ_CHUNK + TAG_LEN, "nothing reserved for it");
}

#[test]
fn an_oversize_chatd_frame_is_refused_from_its_header() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, _chatd) = opening(&cfg, &metrics);
    let header = framed(&vec![0; cfg.max_frame_len + 1])[..HEADER_LEN].to_vec();
    feed(&mut pipe, &header).unwrap();
    assert!(matches!(
        pipe.read_into(),
        Err(SessionError::UpstreamFrameTooLarge { len, max }) if len == cfg.max_frame_len + 1 && max == cfg.max_frame_len
    ));
}

#[test]
fn a_frame_above_the_buffer_limit_is_read_exactly_to_its_end() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = sealing(&cfg, &metrics);
    let big = vec![3u8; 40_000];
    let small = vec![4u8; 10];
    let (first, second) = (framed(&big), framed(&small));
    let input = [first.clone(), second.clone()].concat();
    let taken = feed(&mut pipe, &input).unwrap();
    assert_eq!(taken, first.len(), "not one byte of the next frame");
    assert!(pipe.buffered() > cfg.max_buffered_bytes, "the one exception to the bound");
    assert!(pipe.transform_one().unwrap());
    let mut body = bodies(&take_output(&mut pipe)).remove(0);
    assert_eq!(chatd.open(&mut body).unwrap(), &big[..]);
    feed(&mut pipe, &second).unwrap();
    assert!(pipe.transform_one().unwrap());
    let mut body = bodies(&take_output(&mut pipe)).remove(0);
    assert_eq!(chatd.open(&mut body).unwrap(), &small[..]);
}

#[test]
fn reading_stops_while_the_destination_is_behind_and_counts_each_stop_once() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, _chatd) = sealing(&cfg, &metrics);
    let input: Vec<u8> = (0..100).flat_map(|_| framed(&[5u8; 1000])).collect();
    let mut taken = 0;
    loop {
        taken += feed(&mut pipe, &input[taken..]).unwrap();
        if transform_all(&mut pipe) == 0 {
            break;
        }
    }
    assert!(taken < input.len());
    assert!(pipe.buffered() <= cfg.max_buffered_bytes, "{} held", pipe.buffered());
    let stalls = pipe.stats().stalls;
    assert!(stalls >= 1);
    assert!(pipe.read_into().unwrap().is_none());
    assert!(pipe.read_into().unwrap().is_none());
    assert_eq!(pipe.stats().stalls, stalls, "one stop, counted once");
    // The destination catches up: reading resumes, and the next stop is a new stall.
    take_output(&mut pipe);
    transform_all(&mut pipe);
    assert!(feed(&mut pipe, &input[taken..]).unwrap() > 0);
    assert_eq!(pipe.stats().stalls, stalls + 1);
}

#[test]
fn an_idle_pipe_releases_its_buffers_only_once_everything_is_written_and_flushed() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = sealing(&cfg, &metrics);
    assert!(matches!(pipe.read_into(), Ok(Some(ReadInto::Scratch(READ_CHUNK)))), "no buffer until bytes arrive");
    feed(&mut pipe, &framed(&[6u8; 2000])).unwrap();
    transform_all(&mut pipe);
    pipe.publish();
    assert!(metrics.relay_buffer_capacity.get() > 0);

    pipe.release_if_idle();
    assert!(pipe.capacity() > 0, "output still waiting");
    let first = pipe.output().to_vec();
    pipe.on_written(first.len());
    pipe.release_if_idle();
    assert!(pipe.capacity() > 0, "a flush still pending");
    assert!(!pipe.is_parked(), "the key stays expanded while anything is pending");
    pipe.on_flushed();
    pipe.release_if_idle();
    assert_eq!(pipe.capacity(), 0);
    assert!(pipe.is_parked(), "the expanded key goes with the buffers");
    pipe.publish();
    assert_eq!(metrics.relay_buffer_capacity.get(), 0);
    assert!(matches!(pipe.read_into(), Ok(Some(ReadInto::Scratch(READ_CHUNK)))));

    // The next frame expands the key again and is sealed with the next nonce.
    feed(&mut pipe, &framed(b"after a quiet while")).unwrap();
    transform_all(&mut pipe);
    assert!(!pipe.is_parked());
    let second = take_output(&mut pipe);
    let mut first = bodies(&first).remove(0);
    assert_eq!(chatd.open(&mut first).unwrap(), &[6u8; 2000][..]);
    let mut second = bodies(&second).remove(0);
    assert_eq!(chatd.open(&mut second).unwrap(), b"after a quiet while");
}

#[test]
fn a_stream_error_is_the_last_frame_out() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = opening(&cfg, &metrics);
    let input = [
        sealed_by(&mut chatd, b"before"),
        sealed_by(&mut chatd, &Refusal::Replaced.encode()),
        sealed_by(&mut chatd, b"after"),
    ]
    .concat();
    feed(&mut pipe, &input).unwrap();
    assert_eq!(transform_all(&mut pipe), 2);
    assert!(pipe.is_ended());
    assert_eq!(pipe.inb.len(), 0, "what came after it is dropped");
    assert_eq!(take_output(&mut pipe), [framed(b"before"), framed(&Refusal::Replaced.encode())].concat());
}

#[test]
fn a_tampered_chatd_frame_is_refused() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, mut chatd) = opening(&cfg, &metrics);
    let mut frame = sealed_by(&mut chatd, b"payload");
    frame[HEADER_LEN] ^= 1;
    feed(&mut pipe, &frame).unwrap();
    assert!(matches!(pipe.transform_one(), Err(SessionError::Open(_))));
}

#[test]
fn dropping_a_pipe_takes_its_bytes_out_of_the_gauges() {
    let (cfg, metrics) = (cfg(), SessionMetrics::new().unwrap());
    let (mut pipe, _chatd) = sealing(&cfg, &metrics);
    feed(&mut pipe, &framed(&[8u8; 500])).unwrap();
    pipe.publish();
    assert_eq!(metrics.buffered_bytes(Direction::ToUpstream), 503);
    drop(pipe);
    assert_eq!(metrics.buffered_bytes(Direction::ToUpstream), 0);
    assert_eq!(metrics.relay_buffer_capacity.get(), 0);
}
