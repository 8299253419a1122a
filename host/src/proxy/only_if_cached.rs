//! `Cache-Control: only-if-cached` (RFC 9111 §5.2.1.7): the client wants a stored response
//! or nothing. A request that would go to the origin (a miss, a stale entry to revalidate, a
//! bypass) is answered 504 instead, and the origin never sees it.

use super::ctx::{RequestCtx, Route};
use super::respond::respond_text;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;

/// In `proxy_upstream_filter`: true when the request may go on to the origin; false when
/// it asked for stored responses only and has been answered 504.
pub(super) async fn allow_origin(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    // A background revalidation carries the client's fields but is the cache's own request:
    // it goes on, without the directive (an origin that is itself a cache would answer it
    // 504, and the client's wish was about its own answer, already served).
    if session.is_subrequest() {
        if requested(session.req_header()) {
            without_directive(session.req_header_mut());
        }
        return Ok(true);
    }
    if !requested(session.req_header()) {
        return Ok(true);
    }
    ctx.route = Route::Answered("only-if-cached and nothing stored to serve".into());
    respond_text(session, ctx, 504, "not in the cache (only-if-cached)\n").await?;
    Ok(false)
}

/// Removes `only-if-cached` from the request's `Cache-Control`, keeping its other directives.
fn without_directive(req: &mut RequestHeader) {
    let kept: Vec<String> = super::list_field::elements(&req.headers, http::header::CACHE_CONTROL)
        .filter(|d| !d.eq_ignore_ascii_case("only-if-cached"))
        .map(str::to_owned)
        .collect();
    req.remove_header(&http::header::CACHE_CONTROL);
    if !kept.is_empty() {
        // Each directive came from a valid field value, so the joined list is one too.
        let _ = req.insert_header(http::header::CACHE_CONTROL, kept.join(", "));
    }
}

/// Whether a `Cache-Control` directive of the request is `only-if-cached`.
pub(super) fn requested(req: &RequestHeader) -> bool {
    req.headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|directive| {
            directive
                .trim_ascii()
                .eq_ignore_ascii_case(b"only-if-cached")
        })
}

#[cfg(test)]
mod tests {
    use super::requested;
    use pingora::http::RequestHeader;

    fn request(cache_control: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for value in cache_control {
            req.append_header("cache-control", *value).unwrap();
        }
        req
    }

    #[test]
    fn the_directive_alone_is_removed() {
        let mut req = request(&["max-age=10, Only-If-Cached", "no-transform"]);
        super::without_directive(&mut req);
        assert_eq!(req.headers["cache-control"], "max-age=10, no-transform");
        let mut only = request(&["only-if-cached"]);
        super::without_directive(&mut only);
        assert!(only.headers.get("cache-control").is_none());
    }

    #[test]
    fn the_directive_is_found_in_any_list_member_and_any_case() {
        assert!(requested(&request(&["only-if-cached"])));
        assert!(requested(&request(&["max-age=10, Only-If-Cached"])));
        assert!(requested(&request(&["no-transform", " only-if-cached "])));
        assert!(!requested(&request(&[])));
        assert!(!requested(&request(&["max-age=0", "no-cache"])));
        assert!(!requested(&request(&["only-if-cached-not"])));
    }
}
