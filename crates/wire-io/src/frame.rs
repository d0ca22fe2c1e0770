//! Frames on a byte stream: [`read_frame`], [`read_secret_frame`], [`write_frame`].
//!
//! Reads check the announced length against the caller's limit before reserving anything, so a
//! hostile prefix cannot make the reader allocate.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::frame::{FrameError, HEADER_LEN, decode_frame, encode_frame, peek_len};
use zeroize::{Zeroize as _, Zeroizing};

/// Reads one whole frame body into `buf` and splits it off; bytes after it stay in `buf`.
///
/// `Ok(None)`: the stream ended at a frame boundary. [`FrameError::Truncated`]: it ended inside a
/// frame. [`FrameError::TooLarge`]: the header announced more than `max`. Cancel-safe: a read
/// abandoned (by a timeout) keeps what arrived in `buf` for the next call.
pub async fn read_frame<S>(stream: &mut S, buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((body, _)) = decode_frame(buf, max)? {
            let len = body.len();
            buf.advance(HEADER_LEN);
            return Ok(Some(buf.split_to(len)));
        }
        // The header was checked against `max` above, so this reserve is bounded.
        let need = peek_len(buf).map_or(HEADER_LEN, |len| HEADER_LEN + len).saturating_sub(buf.len());
        buf.reserve(need.max(1024));
        if stream.read_buf(buf).await? == 0 {
            return match buf.len() {
                0 => Ok(None),
                buffered => Err(FrameError::Truncated { buffered }),
            };
        }
    }
}

/// Reads one frame that holds secrets (the login frame: a private key and a token): the header
/// from `buf` or the stream, then the body into a buffer of its own that is wiped when dropped.
/// The bytes of it that had arrived in `buf` are wiped there; bytes past it stay in `buf`. Errors
/// as [`read_frame`]; not cancel-safe (a login has one deadline, after which the connection goes).
pub async fn read_secret_frame<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Zeroizing<Vec<u8>>>, FrameError>
where
    S: AsyncRead + Unpin,
{
    let len = loop {
        match peek_len(buf) {
            Some(len) if len > max => return Err(FrameError::TooLarge { len, max }),
            Some(len) => break len,
            None => {
                // Only the header is read through `buf`; growing it could leave copies of the
                // body behind in freed memory.
                buf.reserve(64);
                if stream.read_buf(buf).await? == 0 {
                    return match buf.len() {
                        0 => Ok(None),
                        buffered => Err(FrameError::Truncated { buffered }),
                    };
                }
            }
        }
    };
    buf.advance(HEADER_LEN);
    let mut frame = Zeroizing::new(vec![0; len]);
    let have = buf.len().min(len);
    frame[..have].copy_from_slice(&buf[..have]);
    buf[..have].zeroize();
    buf.advance(have);
    let mut filled = have;
    while filled < len {
        match stream.read(&mut frame[filled..]).await? {
            0 => return Err(FrameError::Truncated { buffered: HEADER_LEN + filled }),
            n => filled += n,
        }
    }
    Ok(Some(frame))
}

/// Writes `body` as one frame (header and body in one write) and flushes: buffered transports
/// (TLS, WebSocket) send only on flush.
pub async fn write_frame<S>(stream: &mut S, body: &[u8]) -> Result<(), FrameError>
where
    S: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(body.len() + HEADER_LEN);
    encode_frame(body, &mut out)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_across_reads_and_the_rest_is_kept() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for chunk in [&[0u8, 0][..], &[3, b'a'], &[b'b', b'c', 0, 0, 1, b'z', 0, 0]] {
                a.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut buf = BytesMut::new();
        assert_eq!(&read_frame(&mut b, &mut buf, 16).await.unwrap().unwrap()[..], b"abc");
        assert_eq!(&read_frame(&mut b, &mut buf, 16).await.unwrap().unwrap()[..], b"z");
        writer.await.unwrap();
        assert!(matches!(read_frame(&mut b, &mut buf, 16).await, Err(FrameError::Truncated { buffered: 2 })));
    }

    #[tokio::test]
    async fn a_clean_end_is_none_and_an_oversized_header_is_refused_unbuffered() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(read_frame(&mut b, &mut BytesMut::new(), 16).await.unwrap().is_none());
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_frame(&mut b, &mut buf, 16).await,
            Err(FrameError::TooLarge { len: 0xff_ffff, max: 16 })
        ));
        assert!(buf.capacity() < 4096, "nothing reserved for a refused frame");
    }

    #[tokio::test]
    async fn a_secret_frame_is_read_apart_and_wiped_from_the_shared_buffer() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut buf = BytesMut::from(&[0u8, 0, 5, 1, 2][..]);
        a.write_all(&[3, 4, 5, 9, 9]).await.unwrap();
        let frame = read_secret_frame(&mut b, &mut buf, 16).await.unwrap().unwrap();
        assert_eq!(&frame[..], &[1, 2, 3, 4, 5]);
        // What followed the frame in the same read stays for the next reader.
        let mut rest = buf.clone();
        if rest.is_empty() {
            b.read_buf(&mut rest).await.unwrap();
        }
        assert_eq!(&rest[..], &[9, 9]);
        let mut buf = BytesMut::from(&[0u8, 0, 17][..]);
        assert!(matches!(
            read_secret_frame(&mut b, &mut buf, 16).await,
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
        drop(a);
        let mut buf = BytesMut::from(&[0u8, 0, 4, 1][..]);
        assert!(matches!(read_secret_frame(&mut b, &mut buf, 16).await, Err(FrameError::Truncated { buffered: 4 })));
    }

    #[tokio::test]
    async fn written_frames_read_back() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, b"hello").await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(&read_frame(&mut b, &mut buf, 16).await.unwrap().unwrap()[..], b"hello");
        assert!(matches!(
            write_frame(&mut a, &vec![0; wire::frame::MAX_FRAME_LEN + 1]).await,
            Err(FrameError::TooLarge { .. })
        ));
    }
}
