//! Writing a lean hit as Pingora's HTTP/1 writer would: its `Date`, `Connection` and the
//! stored fields in their case, head and body in one write.

use crate::proxy::LeanResponse;
use bytes::{BufMut, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use std::io::IoSlice;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Room for a usual response head, so writing one seldom grows the buffer.
const HEAD_CAPACITY: usize = 1024;

/// How long, and how much, a closing connection is still read so the client's unread
/// requests do not turn the close into a reset that could lose the last answer
/// (RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

// Pieces of a large body each get the whole `client_write_timeout` (`TIMED_PIECE`). The
// head goes out with the first piece, in one vectored write with no copy of the body here
// (Pingora's 1460-byte write buffer under the connection still takes one of an answer
// smaller than itself): a 64 KiB hit is one `writev`, not a packet for the head and one
// for the body.
use crate::proxy::TIMED_PIECE;

/// Writes `hit`; `close`: the connection ends after it. Each piece must be taken by the
/// client within `timeout`.
pub(super) async fn write(
    stream: &mut Stream,
    hit: LeanResponse,
    close: bool,
    timeout: Duration,
) -> std::io::Result<()> {
    let date = pingora::protocols::http::date::get_cached_date();
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = BytesMut::with_capacity(HEAD_CAPACITY);
    let body = if hit.write_h1_head(&mut out, date.as_bytes(), connection.as_bytes()) {
        hit.body()
    } else {
        out.clear();
        let (mut head, body) = hit.into_parts().map_err(std::io::Error::other)?;
        head.insert_header(header::DATE, date)
            .and_then(|_| head.insert_header(header::CONNECTION, connection))
            .map_err(std::io::Error::other)?;
        serialize_head(&head, &mut out);
        body
    };
    let (first, rest) = body.split_at(body.len().min(TIMED_PIECE));
    within(timeout, write_both(stream, &out, first)).await?;
    write_within(stream, rest, timeout).await?;
    within(timeout, stream.flush()).await
}

/// Writes all of `head`, then all of `body`, in as few writes as the stream takes.
async fn write_both<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() {
        let slices = [IoSlice::new(head), IoSlice::new(body)];
        let written = stream.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = written.min(head.len());
        head = &head[from_head..];
        body = &body[written - from_head..];
    }
    stream.write_all(body).await
}

/// Writes all of `bytes`, each piece of at most [`TIMED_PIECE`] within `timeout`.
async fn write_within(stream: &mut Stream, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    for piece in bytes.chunks(TIMED_PIECE) {
        within(timeout, stream.write_all(piece)).await?;
    }
    Ok(())
}

/// `write`, failed with `TimedOut` when not done within `timeout`. (The timer costs nothing
/// when the write completes at once: it is only registered if the write has to wait.)
async fn within(
    timeout: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, write)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no response bytes for client_write_timeout",
            ))
        })
}

/// Writes a fixed answer and ends the connection.
pub(super) async fn refuse(stream: &mut Stream, answer: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(LINGER, async {
        stream.write_all(answer).await?;
        stream.flush().await
    })
    .await
    .unwrap_or(Ok(()))
}

/// Ends the connection after its last answer: no more is sent, and what the client still
/// sends is read and dropped for a moment before the socket closes.
pub(super) async fn close(stream: &mut Stream) {
    let _ = tokio::time::timeout(LINGER, async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(read) if read > 0 => drained += read,
                _ => return,
            }
        }
    })
    .await;
}

/// The head as Pingora's HTTP/1 writer puts it on the wire.
fn serialize_head(head: &ResponseHeader, out: &mut BytesMut) {
    crate::proxy::put_status_line(head, out);
    head.header_to_h1_wire(out);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most `per_write` bytes per write, from whichever slices it is given.
    struct Trickle {
        taken: Vec<u8>,
        per_write: usize,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = bytes.len().min(self.per_write);
            self.taken.extend_from_slice(&bytes[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut left = self.per_write;
            for slice in slices {
                let n = slice.len().min(left);
                self.taken.extend_from_slice(&slice[..n]);
                left -= n;
            }
            self.writes += 1;
            Poll::Ready(Ok(self.per_write - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn head_and_body_arrive_whole_and_in_order_however_the_writes_split() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n";
        let body = b"hello world";
        for per_write in [1, 3, 7, head.len() - 1, head.len(), head.len() + 4, 4096] {
            let mut out = Trickle {
                taken: Vec::new(),
                per_write,
                writes: 0,
            };
            write_both(&mut out, head, body).await.expect("written");
            assert_eq!(out.taken, [&head[..], &body[..]].concat(), "{per_write}");
            if per_write >= head.len() + body.len() {
                assert_eq!(out.writes, 1, "one write when the stream takes it all");
            }
        }
    }
}
