//! Writing a lean hit as Pingora's HTTP/1 writer would: its `Date`, `Connection` and the
//! stored fields in their case, head and body in one write.

use crate::proxy::LeanResponse;
use bytes::{BufMut, BytesMut};
use http::header;
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

/// Writes `hit`; `close`: the connection ends after it.
pub(super) async fn write(
    stream: &mut Stream,
    hit: LeanResponse,
    close: bool,
) -> std::io::Result<()> {
    let LeanResponse { mut head, body } = hit;
    let date = pingora::protocols::http::date::get_cached_date();
    let added = head.insert_header(header::DATE, date).and_then(|_| {
        let connection = if close { "close" } else { "keep-alive" };
        head.insert_header(header::CONNECTION, connection)
    });
    if let Err(e) = added {
        return Err(std::io::Error::other(e.to_string()));
    }
    let mut out = BytesMut::with_capacity(512 + body.len());
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(head.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(reason) = head.get_reason_phrase() {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
    head.header_to_h1_wire(&mut out);
    out.put_slice(b"\r\n");
    out.put_slice(&body);
    stream.write_all(&out).await?;
    stream.flush().await
}
