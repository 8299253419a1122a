//! Writing a lean hit as Pingora's HTTP/1 writer would: its `Date`, `Connection` and the
//! stored fields in their case, head and body in one write.

use crate::proxy::LeanResponse;
use bytes::{BufMut, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bodies up to this size go out in the same write as the head (copied once); larger ones
/// are written from the stored bytes, so a client that does not read holds no copy.
const COPIED_BODY: usize = 16 * 1024;

/// How long, and how much, a closing connection is still read so the client's unread
/// requests do not turn the close into a reset that could lose the last answer
/// (RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Pieces of a large body each get the whole `client_write_timeout`: a client that takes a
/// big hit slowly but steadily is served, one that stops taking it is not waited for.
const TIMED_PIECE: usize = 64 * 1024;

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
    let mut out = BytesMut::with_capacity(1024);
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
    if body.len() <= COPIED_BODY {
        out.put_slice(&body);
        write_within(stream, &out, timeout).await?;
    } else {
        write_within(stream, &out, timeout).await?;
        write_within(stream, &body, timeout).await?;
    }
    within(timeout, stream.flush()).await
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
