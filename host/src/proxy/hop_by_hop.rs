//! Hop-by-hop fields (RFC 9110 §7.6.1, RFC 9111 §3.1): they describe one connection, so a
//! cache neither stores them nor passes an origin's on to clients.

use pingora::http::ResponseHeader;

/// Hop-by-hop whatever `Connection` says.
const ALWAYS: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Most `Connection` nominations honoured; a longer list is junk, not a protocol.
const MAX_NOMINATIONS: usize = 32;

/// Whether `resp` has a field that is hop-by-hop whatever `Connection` says (`Connection`
/// itself among them, so a head without any nominates nothing either).
pub fn any_present(resp: &ResponseHeader) -> bool {
    resp.headers
        .keys()
        .any(|name| ALWAYS.contains(&name.as_str()))
}

/// Removes every hop-by-hop field, before a response is stored.
pub fn strip(resp: &mut ResponseHeader) {
    strip_except(resp, &[]);
}

/// Removes the origin's hop-by-hop fields from a response going to the client. Pingora
/// writes its own `Connection` and frames the body by `Transfer-Encoding`, so that one stays;
/// a `101` keeps its `Upgrade` handshake.
pub fn strip_for_downstream(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    strip_except(resp, &["transfer-encoding"]);
}

/// Frames `resp` for the client. The version is the proxy's own, HTTP/1.1 (RFC 9110 §6.2: an
/// HTTP/1.0 origin's is not passed on). An HTTP/1.0 client cannot read chunked framing (RFC
/// 9112 §6.1), which Pingora gives every body without a length: it gets the body
/// close-delimited instead, and then the connection must end with it. Returns whether it
/// does (the caller announces `Connection: close` and does not keep it alive).
pub fn frame_for_client(
    client_version: http::Version,
    head_request: bool,
    resp: &mut ResponseHeader,
) -> bool {
    if resp.version < http::Version::HTTP_11 {
        resp.set_version(http::Version::HTTP_11);
    }
    if client_version >= http::Version::HTTP_11 {
        return false;
    }
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    let bodiless = head_request
        || resp.status == http::StatusCode::NO_CONTENT
        || resp.status == http::StatusCode::NOT_MODIFIED
        || resp.status.is_informational();
    !bodiless && !resp.headers.contains_key(http::header::CONTENT_LENGTH)
}

fn strip_except(resp: &mut ResponseHeader, keep: &[&str]) {
    // Stored heads were stripped when filled, so most calls (every hit) find none: one pass
    // over the names is cheaper than a lookup per hop-by-hop name. `Connection` is in
    // ALWAYS, so a head without it nominates nothing either.
    if !any_present(resp) {
        return;
    }
    let nominated: Vec<http::HeaderName> =
        super::list_field::elements(&resp.headers, http::header::CONNECTION)
            .take(MAX_NOMINATIONS)
            .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
            // Framing is never the origin's to remove: dropping it would misframe the body.
            .filter(|name| *name != http::header::CONTENT_LENGTH)
            .collect();
    for name in nominated {
        if !keep.contains(&name.as_str()) {
            resp.remove_header(&name);
        }
    }
    for name in ALWAYS.into_iter().filter(|name| !keep.contains(name)) {
        resp.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("header");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("valid header");
        }
        r
    }

    fn names(r: &ResponseHeader) -> Vec<&str> {
        let mut names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        names
    }

    const FROM_ORIGIN: &[(&str, &str)] = &[
        ("Connection", "keep-alive, X-Hop"),
        ("connection", "x-other, Content-Length"),
        ("X-Hop", "1"),
        ("X-Other", "2"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "x-sum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Content-Length", "3"),
        ("X-End-To-End", "kept"),
    ];

    #[test]
    fn stored_responses_keep_only_end_to_end_fields() {
        let mut r = resp(200, FROM_ORIGIN);
        strip(&mut r);
        assert_eq!(names(&r), ["content-length", "x-end-to-end"]);
    }

    #[test]
    fn downstream_keeps_framing_and_upgrades() {
        let mut r = resp(200, FROM_ORIGIN);
        strip_for_downstream(&mut r);
        assert_eq!(
            names(&r),
            ["content-length", "transfer-encoding", "x-end-to-end"]
        );
        let mut switching = resp(101, &[("Connection", "upgrade"), ("Upgrade", "websocket")]);
        strip_for_downstream(&mut switching);
        assert_eq!(names(&switching), ["connection", "upgrade"]);
    }

    #[test]
    fn an_http10_client_s_connection_ends_with_a_body_without_a_length() {
        use http::Version;
        let chunked = || resp(200, &[("Transfer-Encoding", "chunked")]);
        let mut r = chunked();
        assert!(frame_for_client(Version::HTTP_10, false, &mut r));
        assert!(r.headers.get("transfer-encoding").is_none());
        assert!(!frame_for_client(Version::HTTP_11, false, &mut chunked()));
        assert!(!frame_for_client(Version::HTTP_10, true, &mut chunked()));
        let mut sized = resp(200, &[("Content-Length", "3")]);
        assert!(!frame_for_client(Version::HTTP_10, false, &mut sized));
        assert!(!frame_for_client(
            Version::HTTP_10,
            false,
            &mut resp(304, &[])
        ));
        let mut old = resp(200, &[("Content-Length", "3")]);
        old.set_version(Version::HTTP_10);
        frame_for_client(Version::HTTP_11, false, &mut old);
        assert_eq!(old.version, Version::HTTP_11);
    }
}
