//! The lean hit path: a plain GET whose stored response is fresh, complete and does not vary is
//! answered in `request_filter` (from memory, or from an L2 tier when memory holds nothing for
//! the key) without pingora-cache's state machine (cache phases, lock checks, the hit handler
//! and a second header copy). Anything else — a range, a conditional, `Authorization`, request
//! cache directives, HEAD, a stale or varying entry, a fill in flight, a framing the stored
//! header does not state — takes the full path, which the HTTP caching and tier tests cover
//! with this path on and off (`[cache] lean_hits`).

use super::ctx::RequestCtx;
use super::CachetProxy;
use crate::storage::tiers::LeanLookup;
use crate::storage::PlainHit;
use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use http::Method;
use pingora::http::{IntoCaseHeaderName, RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora_cache::predictor::CacheablePredictor;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// Request fields that change what a stored response may answer with: each one sends the
/// request down the full path.
const FULL_PATH_FIELDS: [header::HeaderName; 9] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

/// A response the lean path found: the stored copy, its `Age` and its `Cache-Status`.
pub(crate) struct LeanResponse {
    hit: PlainHit,
    age: u64,
    cache_status: super::cache_status::Member,
}

impl LeanResponse {
    pub(crate) fn status(&self) -> u16 {
        self.hit.header().status.as_u16()
    }

    /// The stored body (shared, not copied).
    pub(crate) fn body(&self) -> Bytes {
        self.hit.body()
    }

    /// The head made ready for the client (the stored head with `Age`, `Accept-Ranges` and
    /// `Cache-Status`, hop-by-hop and internal fields dropped) and the body.
    pub(crate) fn into_parts(self) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
        let mut response = Box::new(self.hit.header().clone());
        // As pingora's hit path: stored heads go out as HTTP/1.1, with the time since the fill.
        response.set_version(http::Version::HTTP_11);
        response.insert_header(header::AGE, self.age)?;
        // As pingora's range filter does for a 200 with a length: ranges may be asked for later.
        if response.status == http::StatusCode::OK {
            response.insert_header(header::ACCEPT_RANGES, "bytes")?;
        }
        super::hop_by_hop::strip_for_downstream(&mut response);
        super::directives::strip_downstream(&mut response);
        super::cache_status::append_member(&mut response, self.cache_status.into_string())?;
        Ok((response, self.hit.body()))
    }

    /// The head for an HTTP/2 client: the fields [`Self::into_parts`] gives, in the same order,
    /// put once into a new map rather than copied with the stored head's name cases and then
    /// edited (HTTP/2 sends names in lower case, so no case is kept). Measured at ~6 % of an
    /// HTTP/2 hit's CPU the other way, with the copy made again by Pingora's writer. `None` for
    /// a stored head with a field that takes more than a replacement or an addition (see
    /// [`HeadShape::written_as_stored`]): `into_parts` edits that one.
    pub(crate) fn h2_head(&self) -> Option<Box<ResponseHeader>> {
        let shape = self.hit.shape();
        if !shape.written_as_stored {
            return None;
        }
        let stored = self.hit.header();
        let ranges = stored.status == http::StatusCode::OK;
        let mut fields = http::HeaderMap::with_capacity(stored.headers.len() + 3);
        for (name, value) in &stored.headers {
            let value = if ranges && name == header::ACCEPT_RANGES {
                header::HeaderValue::from_static("bytes")
            } else {
                value.clone()
            };
            fields.append(name.clone(), value);
        }
        fields.append(header::AGE, self.age.into());
        if ranges && !shape.has_accept_ranges {
            fields.append(
                header::ACCEPT_RANGES,
                header::HeaderValue::from_static("bytes"),
            );
        }
        let cache_status = header::HeaderValue::from_bytes(self.cache_status.as_bytes()).ok()?;
        fields.append(
            header::HeaderName::from_static(super::cache_status::HEADER),
            cache_status,
        );
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = stored.status;
        parts.headers = fields;
        Some(Box::new(ResponseHeader::from(parts)))
    }

    /// Writes the response head as HTTP/1.1 straight from the stored head, the bytes
    /// [`Self::into_parts`] and Pingora's writer (`Date`, then `Connection`) would give, without
    /// copying the head first. `false`, writing nothing, for a stored head with a field that
    /// takes more than a replacement or an addition (see [`HeadShape::written_as_stored`]).
    pub(crate) fn write_h1_head(&self, out: &mut BytesMut, date: &[u8], connection: &[u8]) -> bool {
        let shape = self.hit.shape();
        if !shape.written_as_stored {
            return false;
        }
        let stored = self.hit.header();
        let fields = &stored.headers;
        let ranges = stored.status == http::StatusCode::OK;
        put_status_line(stored, out);
        let mut field = |name: &[u8], value: &[u8]| {
            out.put_slice(name);
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        };
        // Replaced in place, under the name the replacing insert gives.
        let mut stored_field = |name: &[u8], value: &[u8]| {
            if name.eq_ignore_ascii_case(b"date") {
                field(b"Date", date);
            } else if ranges && name.eq_ignore_ascii_case(b"accept-ranges") {
                field(b"Accept-Ranges", b"bytes");
            } else {
                field(name, value);
            }
        };
        if stored.has_case() {
            for (name, value) in stored.case_header_iter() {
                stored_field(name.as_slice(), value.as_bytes());
            }
        } else {
            // Without a case map, Pingora's writer titles the names it knows.
            for (name, value) in fields {
                stored_field(name.into_case_header_name().as_slice(), value.as_bytes());
            }
        }
        // Added at the end, in the order they are inserted.
        field(b"Age", itoa::Buffer::new().format(self.age).as_bytes());
        if ranges && !shape.has_accept_ranges {
            field(b"Accept-Ranges", b"bytes");
        }
        field(
            super::cache_status::HEADER.as_bytes(),
            self.cache_status.as_bytes(),
        );
        if !shape.has_date {
            field(b"Date", date);
        }
        field(b"Connection", connection);
        out.put_slice(b"\r\n");
        true
    }
}

/// What the lean path needs to know about a stored head, read once when it is stored rather
/// than looked up field by field on every hit. (Kept small: every stored object has one.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadShape {
    /// `Content-Length`'s value, or [`Self::NO_LENGTH`] when it is not a number or a
    /// `Transfer-Encoding` frames the body otherwise.
    stated_length: u64,
    /// The response varies (a variance key, or a `Vary` field): only pingora's full lookup
    /// picks the right variant.
    pub(crate) varies: bool,
    /// No field takes more than a replacement or an addition on the way out: nothing
    /// hop-by-hop or internal, no upstream `Cache-Status` or `Age`, `Date` and
    /// `Accept-Ranges` at most once each.
    pub(crate) written_as_stored: bool,
    pub(crate) has_date: bool,
    pub(crate) has_accept_ranges: bool,
}

impl HeadShape {
    const NO_LENGTH: u64 = u64::MAX;

    /// The shape of `stored`; `variance`: the stored meta has a variance key.
    pub(crate) fn of(stored: &ResponseHeader, variance: bool) -> Self {
        let fields = &stored.headers;
        let once = |name: header::HeaderName| fields.get_all(name).iter().count() <= 1;
        let written_as_stored = !super::hop_by_hop::any_present(stored)
            && ![
                header::AGE.as_str(),
                super::cache_status::HEADER,
                super::directives::CACHET_CACHE_CONTROL,
                super::directives::SURROGATE_KEY,
                crate::storage::TAGS_HEADER,
            ]
            .iter()
            .any(|name| fields.contains_key(*name))
            && once(header::DATE)
            && once(header::ACCEPT_RANGES);
        let stated_length = fields
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .filter(|_| !fields.contains_key(header::TRANSFER_ENCODING));
        Self {
            stated_length: stated_length.unwrap_or(Self::NO_LENGTH),
            varies: variance || fields.contains_key(header::VARY),
            written_as_stored,
            has_date: fields.contains_key(header::DATE),
            has_accept_ranges: fields.contains_key(header::ACCEPT_RANGES),
        }
    }

    /// The body length the stored head states, if it frames the body by it alone.
    pub(crate) fn stated_length(&self) -> Option<u64> {
        (self.stated_length != Self::NO_LENGTH).then_some(self.stated_length)
    }
}

/// Answers the request from storage if it qualifies; `Ok(true)` once a response is written.
pub(super) async fn try_serve(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<bool> {
    if session.is_subrequest() {
        return Ok(false);
    }
    let Some(hit) = lookup(proxy, session.req_header(), ctx).await? else {
        return Ok(false);
    };
    // A stop that came while the lookup waited (an L2 read): as `early_request_filter` does
    // for a request that arrives in a drain, the answer ends its connection.
    if proxy.state.drain.draining() {
        session.set_keepalive(None);
    }
    // Only for HTTP/2: over HTTP/1.1 the head keeps the stored names' cases.
    let h2_head = if session.is_http2() {
        hit.h2_head()
    } else {
        None
    };
    let (head, body) = match h2_head {
        Some(head) => (head, hit.body()),
        None => hit.into_parts()?,
    };
    session.write_response_header(head, false).await?;
    for (piece, last) in timed_pieces(body) {
        session.write_response_body(Some(piece), last).await?;
    }
    Ok(true)
}

/// How much of a hit's body one write call takes: Pingora bounds each call by the whole
/// `client_write_timeout`, so a client taking a large hit slowly but steadily is served
/// piece by piece, and one that stops taking it is not waited for.
pub(crate) const TIMED_PIECE: usize = 64 * 1024;

/// `body` in pieces of at most [`TIMED_PIECE`], each with whether it is the last (an empty
/// body is one empty last piece).
pub(crate) fn timed_pieces(body: Bytes) -> impl Iterator<Item = (Bytes, bool)> {
    let pieces = body.len().div_ceil(TIMED_PIECE).max(1);
    (0..pieces).map(move |i| {
        let end = ((i + 1) * TIMED_PIECE).min(body.len());
        (body.slice(i * TIMED_PIECE..end), i + 1 == pieces)
    })
}

/// The lean answer to `req` if it qualifies and storage holds one. A lookup that found
/// nothing to answer with leaves what it read from the L2 tiers in `ctx` for the full path.
pub(super) async fn lookup(
    proxy: &CachetProxy,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> pingora::Result<Option<LeanResponse>> {
    if !proxy.state.lean_hits.load(Ordering::Relaxed) || !is_plain(req) {
        return Ok(None);
    }
    let Some(tenant) = &ctx.tenant else {
        return Ok(None);
    };
    let now = SystemTime::now();
    let key = super::cache_key::storage_key(ctx.key.clone(), tenant.name());
    // A key passing (hit-for-pass) or marked uncacheable goes to the origin on the full path,
    // stored copy or not; a plain GET must not be the one request still served the copy.
    let predicted_uncacheable = proxy
        .state
        .cache
        .uncacheable
        .is_some_and(|records| !records.of(tenant.name()).cacheable_prediction(&key));
    if predicted_uncacheable {
        return Ok(None);
    }
    let hit = match proxy.state.cache.storage.lean_lookup(&key, now).await {
        LeanLookup::Hit(hit) => hit,
        LeanLookup::FullPath(read_ahead) => {
            ctx.tier_read_ahead = read_ahead;
            return Ok(None);
        }
    };
    ctx.tier = hit.tier();
    let cache_status = super::cache_status::hit_value(ctx, hit.ttl(now));
    ctx.outcome = "hit";
    crate::metrics::lean_hit();
    Ok(Some(LeanResponse {
        age: hit.age(now).as_secs(),
        hit,
        cache_status,
    }))
}

/// A GET with nothing that asks for more than the stored response as it is.
fn is_plain(req: &RequestHeader) -> bool {
    req.method == Method::GET
        && !super::field_presence::any_present(&req.headers, &FULL_PATH_FIELDS)
}

/// `HTTP/1.1 <status> <reason>` and its line end, as Pingora's HTTP/1 writer puts them.
pub(crate) fn put_status_line(head: &ResponseHeader, out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(head.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(reason) = head.get_reason_phrase() {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/a", None).expect("request");
        for (name, value) in fields {
            req.append_header(name.to_string(), *value).expect("field");
        }
        req
    }

    fn stored(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut head = ResponseHeader::build(200, None).expect("head");
        for (name, value) in fields {
            head.append_header(name.to_string(), *value).expect("field");
        }
        head
    }

    #[test]
    fn a_stored_heads_shape_is_read_once_as_the_hit_needs_it() {
        let shape = |fields: &[(&str, &str)]| HeadShape::of(&stored(fields), false);
        let plain = shape(&[("content-length", "12"), ("date", "x")]);
        assert_eq!(plain.stated_length(), Some(12));
        assert!(plain.written_as_stored && plain.has_date);
        assert!(!plain.varies && !plain.has_accept_ranges);
        assert!(shape(&[("vary", "accept")]).varies);
        assert!(HeadShape::of(&stored(&[]), true).varies, "a variance key");
        let chunked = shape(&[("content-length", "12"), ("transfer-encoding", "chunked")]);
        assert_eq!(chunked.stated_length(), None);
        assert!(!chunked.written_as_stored);
        assert_eq!(shape(&[("content-length", "x")]).stated_length(), None);
        for fields in [
            &[("age", "3")][..],
            &[("cache-status", "up; hit")],
            &[("connection", "close")],
            &[("surrogate-key", "a")],
            &[("date", "a"), ("date", "b")],
            &[("accept-ranges", "bytes"), ("accept-ranges", "none")],
        ] {
            assert!(!shape(fields).written_as_stored, "{fields:?}");
        }
        assert!(shape(&[("accept-ranges", "none")]).has_accept_ranges);
    }

    /// What a client gets as the head: status and fields in order, names in lower case.
    fn fields_of(head: &ResponseHeader) -> (u16, Vec<(String, String)>) {
        let fields = head.headers.iter();
        let fields = fields.map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()));
        (head.status.as_u16(), fields.collect())
    }

    #[test]
    fn the_http2_head_has_the_fields_of_the_edited_copy_in_the_same_order() {
        let heads: [(u16, &[(&str, &str)]); 5] = [
            (
                200,
                &[("Content-Length", "4"), ("Date", "x"), ("ETag", "\"a\"")],
            ),
            (
                200,
                &[
                    ("content-length", "4"),
                    ("accept-ranges", "none"),
                    ("x-a", "1"),
                ],
            ),
            (
                200,
                &[
                    ("Content-Length", "4"),
                    ("Set-Thing", "1"),
                    ("set-thing", "2"),
                ],
            ),
            (404, &[("Content-Length", "4"), ("Accept-Ranges", "bytes")]),
            (203, &[("Content-Length", "4")]),
        ];
        for (status, fields) in heads {
            let mut stored = ResponseHeader::build(status, None).expect("head");
            for (name, value) in fields {
                stored
                    .append_header(name.to_string(), *value)
                    .expect("field");
            }
            let lean = || LeanResponse {
                hit: PlainHit::for_test(stored.clone(), Bytes::from_static(b"body")),
                age: 7,
                cache_status: "cachet; hit; ttl=53".into(),
            };
            let h2 = lean().h2_head().expect("written as stored");
            let (edited, _) = lean().into_parts().expect("edited copy");
            assert_eq!(fields_of(&h2), fields_of(&edited), "{fields:?}");
        }
    }

    #[test]
    fn a_head_that_needs_editing_has_no_http2_shortcut() {
        let mut stored = ResponseHeader::build(200, None).expect("head");
        stored.append_header("Content-Length", "4").expect("field");
        stored.append_header("Surrogate-Key", "a b").expect("field");
        let lean = LeanResponse {
            hit: PlainHit::for_test(stored, Bytes::from_static(b"body")),
            age: 0,
            cache_status: "cachet; hit".into(),
        };
        assert!(lean.h2_head().is_none());
    }

    #[test]
    fn only_plain_gets_take_the_lean_path() {
        assert!(is_plain(&request("GET", &[("accept", "*/*")])));
        assert!(!is_plain(&request("HEAD", &[])));
        assert!(!is_plain(&request("POST", &[])));
        for field in [
            "range",
            "if-range",
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "authorization",
            "cache-control",
            "pragma",
        ] {
            assert!(!is_plain(&request("GET", &[(field, "x")])), "{field}");
        }
    }
}
