//! Closing a chat connection so that its last stanza arrives.
//!
//! Closing a TCP socket with unread bytes in its receive buffer sends a reset, and a reset can
//! overtake (and destroy) the stanza written just before it. So a close here is: write the last
//! frame, shut the write side down (a FIN after the frame), then read and discard until the peer
//! closes too, all within one `linger` deadline. The discard is bounded
//! ([`LINGER_DISCARD_MAX`]): a peer that keeps sending costs at most that much reading before the
//! socket goes.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::frame::write_frame;

/// Most bytes discarded while lingering for the peer's close.
pub const LINGER_DISCARD_MAX: usize = 64 * 1024;

/// Writes `payload` as one frame, then [`close`]s; everything within `linger`. Errors end the
/// close early: there is no one left to tell.
pub async fn close_with<S>(stream: &mut S, payload: &[u8], linger: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(linger, async {
        if write_frame(stream, payload).await.is_ok() {
            shutdown_and_discard(stream).await;
        }
    })
    .await;
}

/// Shuts the write side down, then discards what the peer still sends (at most
/// [`LINGER_DISCARD_MAX`]) until it closes too; everything within `linger`.
pub async fn close<S>(stream: &mut S, linger: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(linger, shutdown_and_discard(stream)).await;
}

async fn shutdown_and_discard<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    if stream.shutdown().await.is_ok() {
        discard(stream, LINGER_DISCARD_MAX).await;
    }
}

/// Reads and discards until EOF or an error, however much arrives: the caller bounds it in time.
/// The scratch buffer lives on the stack of each poll, not in the caller's state.
pub async fn discard_until_eof<S: AsyncRead + Unpin>(stream: &mut S) {
    discard(stream, usize::MAX).await
}

/// Reads and discards until EOF, an error, or `max` bytes.
async fn discard<S: AsyncRead + Unpin>(stream: &mut S, max: usize) {
    let mut left = max;
    std::future::poll_fn(|cx| {
        loop {
            let mut scratch = [MaybeUninit::<u8>::uninit(); 2048];
            let mut rb = ReadBuf::uninit(&mut scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    left = left.saturating_sub(rb.filled().len());
                    if left == 0 {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt as _;

    /// The stanza, then the FIN; the closer waits for the peer's own close.
    #[tokio::test(start_paused = true)]
    async fn close_with_writes_the_frame_then_fin_then_waits_for_the_peer() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let closing = tokio::spawn(async move {
            close_with(&mut ours, b"bye", Duration::from_secs(5)).await;
            tokio::time::Instant::now()
        });
        let started = tokio::time::Instant::now();
        let mut buf = BytesMut::new();
        let frame = crate::frame::read_frame(&mut theirs, &mut buf, 16).await.unwrap().unwrap();
        assert_eq!(&frame[..], b"bye");
        assert!(crate::frame::read_frame(&mut theirs, &mut buf, 16).await.unwrap().is_none(), "FIN after it");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!closing.is_finished(), "lingers while the peer is open");
        theirs.write_all(b"late bytes are discarded").await.unwrap();
        drop(theirs);
        let done = closing.await.unwrap();
        assert!(done - started < Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_left_at_the_deadline() {
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        close(&mut ours, Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_keeps_sending_is_read_for_at_most_the_bound() {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let flood = tokio::spawn(async move {
            let chunk = [7u8; 4096];
            let mut sent = 0usize;
            while theirs.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        close(&mut ours, Duration::from_secs(3600)).await;
        drop(ours);
        let sent = flood.await.unwrap();
        assert!((LINGER_DISCARD_MAX..=LINGER_DISCARD_MAX + 2 * 4096).contains(&sent), "{sent}");
    }

    #[tokio::test]
    async fn discard_until_eof_reads_everything() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                a.write_all(&[1u8; 1024]).await.unwrap();
            }
        });
        discard_until_eof(&mut b).await;
        writer.await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(b.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
