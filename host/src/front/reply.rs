//! Writing a lean hit as Pingora's HTTP/1 writer would: its `Date`, `Connection` and the
//! stored fields in their case, head and body in one write.

use crate::proxy::LeanResponse;
use bytes::{BufMut, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

/// Writes `hit`; `close`: the connection ends after it.
pub(super) async fn write(
    stream: &mut Stream,
    hit: LeanResponse,
    close: bool,
) -> std::io::Result<()> {
    let date = pingora::protocols::http::date::get_cached_date();
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = BytesMut::with_capacity(1024 + hit.body_len());
    if !hit.write_h1(&mut out, date.as_bytes(), connection.as_bytes()) {
        out.clear();
        let (mut head, body) = hit.into_parts().map_err(std::io::Error::other)?;
        head.insert_header(header::DATE, date)
            .and_then(|_| head.insert_header(header::CONNECTION, connection))
            .map_err(std::io::Error::other)?;
        serialize(&head, &body, &mut out);
    }
    stream.write_all(&out).await?;
    stream.flush().await
}

/// The head and body as Pingora's HTTP/1 writer puts them on the wire.
fn serialize(head: &ResponseHeader, body: &[u8], out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(head.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(reason) = head.get_reason_phrase() {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
    head.header_to_h1_wire(out);
    out.put_slice(b"\r\n");
    out.put_slice(body);
}
