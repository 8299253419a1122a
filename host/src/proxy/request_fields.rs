//! The request's fields as the origin will get them, fixed before the plugin, the cache key
//! or the Vary check reads any of them.
//!
//! The fields a client's `Connection` header nominates (and the standard hop-by-hop ones)
//! go here, first, and only here: Pingora is told not to remove nominated fields again as
//! it builds the origin's request (`upstream::TenantUpstream::peer_for`). Left on the
//! request, a client could make the stored variant be chosen by a value the origin never
//! saw (`Connection: Accept-Language` with `Accept-Language: fr` stores the origin's default
//! page under `fr` for everybody); removed after the plugin, a field the plugin set and
//! keyed on would never reach the origin. So does everything RFC 9112 asks a
//! server to refuse: a missing, repeated or malformed `Host` (§3.2), and `Content-Length`
//! values that disagree (§6.3); agreeing repeats become one value, so no origin has to
//! guess how to frame the body.

use crate::config::UnusualFieldNames;
use http::header::{self, HeaderName, HeaderValue};
use http::Version;
use pingora::http::RequestHeader;

/// Hop-by-hop request fields removed whatever `Connection` says (the ones Pingora strips
/// before the origin; the proxy credentials were meant for a proxy, not for the origin or a
/// key). `Connection` and `Upgrade` stay: Pingora reads them for keep-alive and upgrades, and
/// never forwards them as they are.
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

/// Upgrade fields the origin is sent only for a WebSocket upgrade over HTTP/1.1 (Pingora
/// forwards no other): otherwise they go before the plugin reads the request.
const UPGRADE_FIELDS: [&str; 2] = ["upgrade", "http2-settings"];

/// Fields a client may not remove by nominating them: the origin's framing and upgrade
/// handling are Pingora's, and these are read after this point.
const NEVER_REMOVED: [&str; 5] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Fields whose nomination is refused, as Pingora refuses to forward it: routing and the
/// forwarding fields are not the client's to drop.
const PROTECTED: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Most `Connection` nominations honoured; a longer list is refused.
const MAX_NOMINATIONS: usize = 32;

/// Brings `req` to the fields the origin will be sent, or says why it is a bad request.
pub fn sanitize(
    req: &mut RequestHeader,
    field_names: UnusualFieldNames,
) -> Result<(), &'static str> {
    if req.version == Version::HTTP_2 {
        as_http1_fields(req)?;
    }
    if field_names == UnusualFieldNames::Drop {
        drop_unusual_field_names(req);
    }
    check_host(req)?;
    readable_as_text(req)?;
    single_content_length(req)?;
    ignore_range_under_weak_if_range(req);
    ignore_expect_from_http10(req);
    remove_hop_by_hop(req)
}

/// The rules of [`sanitize`] that fields a plugin's request edits can bring back, applied
/// again to the edited request, so the key hook reads and the origin is sent what a client's
/// own fields would have become: a weak `If-Range` drops the range, an HTTP/1.0 request has
/// no `Expect`, and an HTTP/2 request's cookies are one field.
pub(crate) fn after_edits(req: &mut RequestHeader) -> Result<(), &'static str> {
    if req.version == Version::HTTP_2 {
        join_cookies(req)?;
    }
    ignore_range_under_weak_if_range(req);
    ignore_expect_from_http10(req);
    Ok(())
}

/// An HTTP/1.0 client cannot read a 100 Continue: its expectation is ignored (RFC 9110
/// §10.1.1), so the origin is not asked to send one either.
fn ignore_expect_from_http10(req: &mut RequestHeader) {
    if req.version < Version::HTTP_11 {
        req.remove_header(&header::EXPECT);
    }
}

/// Removes every field whose name holds anything but letters, digits and `-`: an origin that
/// maps names to CGI variables reads `X_Forwarded_Host`, `X.Original.URL` or
/// `Accept_Encoding` as the dashed field, which the proxy drops, bypasses on or varies on
/// by that name only (probes AH, AK).
fn drop_unusual_field_names(req: &mut RequestHeader) {
    let named: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| !is_usual_field_name(name.as_str()))
        .cloned()
        .collect();
    for name in named {
        req.remove_header(&name);
    }
}

/// Letters, digits and `-` only: the names no server maps onto another's variable.
pub fn is_usual_field_name(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Every field value as UTF-8 text. A plugin reads the head as strings: a byte that is not
/// text (obs-text, 0x80-0xFF) would reach it replaced by U+FFFD while the origin got the
/// byte, so requests the origin tells apart would share one cache key.
fn readable_as_text(req: &RequestHeader) -> Result<(), &'static str> {
    match req
        .headers
        .values()
        .all(|v| std::str::from_utf8(v.as_bytes()).is_ok())
    {
        true => Ok(()),
        false => Err("a field value that is not UTF-8 text"),
    }
}

/// A weak entity tag never matches in `If-Range` (RFC 9110 §13.1.5), so the range is to be
/// ignored and the whole representation sent. Pingora compares the tags byte for byte and
/// would answer a weak tag equal to the stored one with the range: both fields go here, so
/// the cache and the origin each send the whole.
fn ignore_range_under_weak_if_range(req: &mut RequestHeader) {
    let weak = req
        .headers
        .get(header::IF_RANGE)
        .is_some_and(|v| v.as_bytes().trim_ascii_start().starts_with(b"W/"));
    if weak {
        req.remove_header(&header::RANGE);
        req.remove_header(&header::IF_RANGE);
    }
}

/// An HTTP/2 request in the fields its HTTP/1.1 form has, which the origin is sent: the
/// `:authority` as `Host` (Pingora adds it only on the way out, so the plugin, the key's host
/// and the forwarding fields would see none), and the cookie fields joined into one with "; "
/// (RFC 9113 §8.2.3), as an HTTP/1.1 origin must receive them.
fn as_http1_fields(req: &mut RequestHeader) -> Result<(), &'static str> {
    // HTTP/1.1 parsing drops the whitespace around a value; HTTP/2 carries it, and a request
    // with it is malformed (RFC 9113 §8.2.1). Passed on, the origin would get `fr ` where the
    // Vary check (which trims) saw `fr`.
    let padded = |v: &HeaderValue| {
        let bytes = v.as_bytes();
        [bytes.first(), bytes.last()]
            .into_iter()
            .flatten()
            .any(|b| matches!(b, b' ' | b'\t'))
    };
    if req.headers.values().any(padded) {
        return Err("a field value that starts or ends with whitespace");
    }
    if !req.headers.contains_key(header::HOST) {
        if let Some(authority) = req.uri.authority() {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| "the :authority is not a valid host")?;
            req.insert_header(header::HOST, host)
                .map_err(|_| "the :authority is not a valid host")?;
        }
    }
    join_cookies(req)
}

/// The cookie fields of an HTTP/2 request joined into one with "; " (RFC 9113 §8.2.3).
fn join_cookies(req: &mut RequestHeader) -> Result<(), &'static str> {
    let mut cookies = req.headers.get_all(header::COOKIE).iter();
    if let (Some(_), Some(_)) = (cookies.next(), cookies.next()) {
        let joined = req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        let joined = HeaderValue::from_bytes(&joined).map_err(|_| "a cookie field is not valid")?;
        req.insert_header(header::COOKIE, joined)
            .map_err(|_| "a cookie field is not valid")?;
    }
    Ok(())
}

/// Exactly one valid `Host`. (An HTTP/2 request names its authority in a pseudo-header,
/// which Pingora checks, and gets it as `Host` above.)
fn check_host(req: &RequestHeader) -> Result<(), &'static str> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("more than one Host field"),
        (Some(host), None) if !is_authority(host.as_bytes()) => Err("the Host field is not a host"),
        // HTTP/1.0 allows no Host, but the tenant is chosen by it and the origin, spoken to
        // in HTTP/1.1, needs one: an HTTP/1.0 URL target has given its host already
        // (`target.rs`).
        (None, _) => Err("a request without Host"),
        _ => Ok(()),
    }
}

/// The `Host` in one spelling per site for `scheme` (the one the cache key holds: the
/// client's claim when it passes on, this hop's otherwise): without the scheme's default port
/// (RFC 9110 §4.2.3 makes `site:80`, `site:080`, `site:` and `site` one URI for http) and
/// without trailing dots. Routing ignores both, but kept they made separate cache keys, which
/// a purge or invalidation naming the site never reached: `Host: site:443` got the old copy
/// after `PURGE` of `https://site/x`. Another port stays, written as a plain number.
pub fn canonical_host(req: &mut RequestHeader, scheme: &str) {
    canonical_forwarded_hosts(req, scheme);
    let Some(host) = req.headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return;
    };
    let Some(canonical) = canonical_authority(host, scheme) else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(&canonical) {
        let _ = req.insert_header(header::HOST, value);
    }
    // An HTTP/2 request keeps its `:authority` in the URI, and Pingora writes the origin's
    // Host from it: it must be spelled the same, or the origin gets `site:80` while the key
    // holds `site`.
    if req.uri.authority().is_some() {
        let mut parts = req.uri.clone().into_parts();
        if let Ok(authority) = canonical.parse() {
            parts.authority = Some(authority);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                req.set_uri(uri);
            }
        }
    }
}

/// A proxy in front (`forwarded_headers = "append"` or `"off"`) may copy the client's Host as
/// sent into `X-Forwarded-Host` or `Forwarded: host=`; an origin that reads them must see the
/// spelling the key holds, or one client's `site.` or `SITE:80` answers everyone's `site`
/// (probes AE, AF).
fn canonical_forwarded_hosts(req: &mut RequestHeader, scheme: &str) {
    canonical_x_forwarded_host(req, scheme);
    canonical_forwarded_host_params(req, scheme);
}

/// `Forwarded` (RFC 7239) with each element's `host=` spelled as [`canonical_authority`]
/// says; a field this cannot read (an escape in a quoted value) is left as it is.
fn canonical_forwarded_host_params(req: &mut RequestHeader, scheme: &str) {
    let values: Vec<&str> = req
        .headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() || values.iter().any(|v| v.contains('\\')) {
        return;
    }
    let mut changed = false;
    let mut elements = Vec::new();
    for element in values
        .iter()
        .flat_map(|v| super::list_field::split_unquoted(v, ','))
    {
        let pairs: Vec<String> = super::list_field::split_unquoted(element, ';')
            .into_iter()
            .map(|pair| {
                let pair = pair.trim();
                let Some((name, value)) = pair.split_once('=') else {
                    return pair.to_owned();
                };
                if !name.trim().eq_ignore_ascii_case("host") {
                    return pair.to_owned();
                }
                let host = value.trim().trim_matches('"');
                match canonical_authority(host, scheme) {
                    Some(canonical) => {
                        changed = true;
                        format!("{}=\"{canonical}\"", name.trim())
                    }
                    None => pair.to_owned(),
                }
            })
            .collect();
        elements.push(pairs.join(";"));
    }
    if changed {
        if let Ok(value) = HeaderValue::from_str(&elements.join(", ")) {
            let _ = req.insert_header(header::FORWARDED, value);
        }
    }
}

fn canonical_x_forwarded_host(req: &mut RequestHeader, scheme: &str) {
    let forwarded = header::HeaderName::from_static("x-forwarded-host");
    let mut changed = false;
    let hosts: Vec<String> = super::list_field::elements(&req.headers, &forwarded)
        .map(|host| match canonical_authority(host, scheme) {
            Some(canonical) => {
                changed = true;
                canonical
            }
            None => host.to_owned(),
        })
        .collect();
    if changed {
        if let Ok(value) = HeaderValue::from_str(&hosts.join(", ")) {
            let _ = req.insert_header(forwarded, value);
        }
    }
}

/// `authority` spelled as [`canonical_host`] says, or None when it already is (or is not a
/// `host[:port]` this can read: left as it was).
pub fn canonical_authority(authority: &str, scheme: &str) -> Option<String> {
    // Nearly every request's Host is spelled so already: told without building the spelling.
    let (name, port) = read_authority(authority)?;
    let kept_port = port.filter(|&p| Some(p) != default_port(scheme));
    let port_text = authority.get(name.len() + 1..).unwrap_or("");
    let spelled_so = !name.bytes().any(|b| b.is_ascii_uppercase())
        && match kept_port {
            None => authority.len() == name.len(),
            Some(p) => {
                authority.as_bytes().get(name.len()) == Some(&b':')
                    && (port_text == "0" || !port_text.starts_with('0'))
                    && port_text.parse() == Ok(p)
            }
        };
    if spelled_so {
        return None;
    }
    spelling(authority, scheme)
}

/// [`canonical_authority`] by building the spelling and comparing it.
fn spelling(authority: &str, scheme: &str) -> Option<String> {
    let (name, port) = read_authority(authority)?;
    // Host names are case-insensitive: one spelling, as the key already holds it.
    let name = name.to_ascii_lowercase();
    let canonical = match port.filter(|&p| Some(p) != default_port(scheme)) {
        Some(port) => format!("{name}:{port}"),
        None => name,
    };
    (canonical != authority).then_some(canonical)
}

/// The name (without trailing dots) and port of `host[:port]`, or None when it is not one
/// this can read.
fn read_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match authority.strip_prefix('[') {
        Some(literal) => {
            let end = literal.find(']')? + 2;
            let (name, rest) = authority.split_at(end);
            match rest {
                "" => (name, None),
                _ => (name, Some(rest.strip_prefix(':')?)),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((name, port)) => (name.trim_end_matches('.'), Some(port)),
            None => (authority.trim_end_matches('.'), None),
        },
    };
    if name.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((name, port))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host [":" port]` of RFC 3986 (a bracketed IP literal or a registered name), not empty;
/// commas are refused too: they are what two joined `Host` values look like.
pub(crate) fn is_authority(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &value[end + 1..] {
            [] => (&value[..=end], None),
            [b':', port @ ..] => (&value[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let name_ok = !host.is_empty()
        && (host.first() == Some(&b'[')
            || host.iter().all(|&b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'%'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b';'
                            | b'='
                    )
            }));
    // An empty port is allowed (RFC 3986 §3.2.3); a number must fit in 16 bits.
    let port_ok = port.is_none_or(|p| {
        p.iter().all(u8::is_ascii_digit)
            && (p.is_empty() || std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok()))
    });
    name_ok && port_ok
}

/// Every `Content-Length` value (lines and comma-separated lists) must be the same number;
/// repeats are folded into one field.
fn single_content_length(req: &mut RequestHeader) -> Result<(), &'static str> {
    match super::framing::folded_content_length(&req.headers)? {
        Some(length) => req
            .insert_header(header::CONTENT_LENGTH, HeaderValue::from(length))
            .map_err(|_| "a Content-Length value is not a number"),
        None => Ok(()),
    }
}

/// Removes the standard hop-by-hop fields and those `Connection` nominates.
fn remove_hop_by_hop(req: &mut RequestHeader) -> Result<(), &'static str> {
    // Most requests carry none of them: one pass over the names costs less than a removal (a
    // lookup) per hop-by-hop name, as for responses (`hop_by_hop.rs`).
    if !req.headers.contains_key(header::CONNECTION)
        && !req.headers.keys().any(|name| {
            HOP_BY_HOP.contains(&name.as_str()) || UPGRADE_FIELDS.contains(&name.as_str())
        })
    {
        return Ok(());
    }
    let mut nominated: Vec<HeaderName> = Vec::new();
    for token in req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
    {
        if nominated.len() == MAX_NOMINATIONS {
            return Err("too many Connection nominations");
        }
        // A token that is no field name names nothing that could be removed.
        let Ok(name) = HeaderName::from_bytes(token) else {
            continue;
        };
        if PROTECTED.contains(&name.as_str()) {
            return Err("the Connection header nominates a protected field");
        }
        nominated.push(name);
    }
    for name in nominated
        .iter()
        .map(HeaderName::as_str)
        .chain(HOP_BY_HOP)
        .filter(|name| !NEVER_REMOVED.contains(name))
    {
        req.remove_header(name);
    }
    remove_unforwarded_upgrade(req);
    Ok(())
}

/// Removes `HTTP2-Settings`, and an `Upgrade` unless it asks for a WebSocket over HTTP/1.1
/// with the `upgrade` connection option: the origin never gets them (Pingora forwards
/// WebSocket upgrades alone), so a plugin must not key on them. Without the option
/// (RFC 9110 §7.8) a proxy in front forwards `Upgrade` as an ordinary field and expects no
/// protocol switch, while Pingora, seeing `Upgrade` alone, turned the connection into a
/// tunnel on the origin's 101.
fn remove_unforwarded_upgrade(req: &mut RequestHeader) {
    req.remove_header("http2-settings");
    let upgrade_option = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    let websocket = req.version == Version::HTTP_11
        && upgrade_option
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        req.remove_header(&header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitize_plain(req: &mut RequestHeader) -> Result<(), &'static str> {
        sanitize(req, UnusualFieldNames::Drop)
    }

    #[test]
    fn the_default_port_and_trailing_dots_leave_the_host() {
        for (written, scheme, canonical) in [
            ("site.test:80", "http", "site.test"),
            ("site.test:080", "http", "site.test"),
            ("site.test:", "http", "site.test"),
            ("site.test.", "http", "site.test"),
            ("site.test..", "http", "site.test"),
            ("site.test.:80", "http", "site.test"),
            ("site.test.:8080", "http", "site.test:8080"),
            ("site.test:08080", "http", "site.test:8080"),
            ("site.test:443", "https", "site.test"),
            ("[::1]:80", "http", "[::1]"),
            ("[::1]", "http", "[::1]"),
            // Another port, or the other scheme's default, is another origin.
            ("site.test:443", "http", "site.test:443"),
            ("site.test:80", "https", "site.test:80"),
            ("site.test:8080", "http", "site.test:8080"),
            ("site.test", "http", "site.test"),
            ("SITE.Test:80", "http", "site.test"),
            ("SITE.TEST:8080", "http", "site.test:8080"),
            // A claim of several schemes has no default port.
            ("site.test:80", "http,https", "site.test:80"),
        ] {
            let mut req = http11(&[("host", written)]);
            canonical_host(&mut req, scheme);
            assert_eq!(req.headers["host"], canonical, "{written} {scheme}");
        }
        // A forwarded host a proxy in front copied from the client's Host, too.
        let mut req = http11(&[
            ("host", "site.test"),
            ("x-forwarded-host", "SITE.test.:80, other.test"),
        ]);
        canonical_host(&mut req, "http");
        assert_eq!(req.headers["x-forwarded-host"], "site.test, other.test");
        let mut req = http11(&[
            ("host", "site.test"),
            (
                "forwarded",
                "for=1.2.3.4;host=\"SITE.test.:80\";proto=http, for=\"[::1]\";host=other.test",
            ),
        ]);
        canonical_host(&mut req, "http");
        assert_eq!(
            req.headers["forwarded"],
            "for=1.2.3.4;host=\"site.test\";proto=http, for=\"[::1]\";host=other.test"
        );
        // Over HTTP/2 the URI's authority, which Pingora writes as the origin's Host, too.
        let mut req = RequestHeader::build("GET", b"/p?q=1", None).unwrap();
        req.set_uri(http::Uri::from_static("http://a.test:80/p?q=1"));
        req.set_version(Version::HTTP_2);
        assert_eq!(sanitize_plain(&mut req), Ok(()));
        canonical_host(&mut req, "http");
        assert_eq!(req.headers["host"], "a.test");
        assert_eq!(req.uri.to_string(), "http://a.test/p?q=1");
    }

    fn request(version: Version, fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.set_version(version);
        for (name, value) in fields {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn http11(fields: &[(&str, &str)]) -> RequestHeader {
        request(Version::HTTP_11, fields)
    }

    #[test]
    fn hosts_that_are_not_one_valid_authority_are_refused() {
        for good in [
            "site.test",
            "site.test:8080",
            "site.test:",
            "127.0.0.1",
            "[::1]:443",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(
                sanitize_plain(&mut http11(&[("host", good)])),
                Ok(()),
                "{good}"
            );
        }
        for bad in [
            "",
            "site.test/evil",
            "site.test:abc",
            "site.test:123456",
            "site.test:99999",
            "a, b",
            "a,b",
            "[::1",
            "[]",
            "site test",
            ":80",
        ] {
            assert!(
                sanitize_plain(&mut http11(&[("host", bad)])).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            sanitize_plain(&mut http11(&[])).is_err(),
            "HTTP/1.1 without Host"
        );
        assert!(sanitize_plain(&mut http11(&[("host", "a.test"), ("host", "a.test")])).is_err());
        assert!(
            sanitize_plain(&mut request(Version::HTTP_10, &[])).is_err(),
            "HTTP/1.0 without Host"
        );
        let mut old = request(Version::HTTP_10, &[("host", "a.test:65535")]);
        assert_eq!(sanitize_plain(&mut old), Ok(()));
    }

    #[test]
    fn a_field_value_that_is_not_text_is_refused() {
        let mut req = http11(&[("host", "a.test")]);
        req.append_header("cookie", &b"lang=fr\xe9"[..]).unwrap();
        assert!(sanitize_plain(&mut req).is_err());
        let mut req = http11(&[("host", "a.test")]);
        req.append_header("cookie", "lang=fr\u{e9}").unwrap();
        assert_eq!(sanitize_plain(&mut req), Ok(()));
    }

    #[test]
    fn agreeing_content_lengths_become_one_and_disagreeing_ones_are_refused() {
        let mut req = http11(&[("host", "a.test"), ("content-length", "3, 3")]);
        assert_eq!(sanitize_plain(&mut req), Ok(()));
        let lengths: Vec<_> = req.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["3"]);

        let mut req = http11(&[
            ("host", "a.test"),
            ("content-length", "3"),
            ("content-length", "3"),
        ]);
        assert_eq!(sanitize_plain(&mut req), Ok(()));
        assert_eq!(req.headers.get_all("content-length").iter().count(), 1);

        for bad in [&["3, 4"][..], &["3", "4"], &["3, x"], &["3,"]] {
            let mut req = http11(&[("host", "a.test")]);
            for value in bad {
                req.append_header("content-length", *value).unwrap();
            }
            assert!(sanitize_plain(&mut req).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_http2_request_gets_its_http1_host_and_one_cookie_field() {
        // As Pingora's HTTP/2 server builds it: the :authority in the URI, no Host field.
        let mut req = RequestHeader::build("GET", b"/p", None).unwrap();
        req.set_uri(http::Uri::from_static("https://a.test/p"));
        req.set_version(Version::HTTP_2);
        req.append_header("cookie", "a=1").unwrap();
        req.append_header("cookie", "b=2").unwrap();
        assert_eq!(sanitize_plain(&mut req), Ok(()));
        assert_eq!(req.headers["host"], "a.test");
        let cookies: Vec<_> = req.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    /// RFC 9113 §8.2.1: over HTTP/2 a value with whitespace at either end is malformed;
    /// over HTTP/1.1 the parser has already dropped it.
    #[test]
    fn an_http2_value_padded_with_whitespace_is_refused() {
        let h2 = |value: &str| {
            let mut req = RequestHeader::build("GET", b"/p", None).unwrap();
            req.set_uri(http::Uri::from_static("https://a.test/p"));
            req.set_version(Version::HTTP_2);
            req.append_header("accept-language", value).unwrap();
            sanitize_plain(&mut req)
        };
        for padded in ["fr ", " fr", "fr\t", "\tfr", " "] {
            assert!(h2(padded).is_err(), "{padded:?}");
        }
        for plain in ["fr", "fr, en;q=0.5", ""] {
            assert_eq!(h2(plain), Ok(()), "{plain:?}");
        }
    }

    #[test]
    fn an_http10_expectation_is_ignored() {
        let mut old = request(
            Version::HTTP_10,
            &[("host", "a.test"), ("expect", "100-continue")],
        );
        assert_eq!(sanitize_plain(&mut old), Ok(()));
        assert!(old.headers.get("expect").is_none());
        let mut current = http11(&[("host", "a.test"), ("expect", "100-continue")]);
        assert_eq!(sanitize_plain(&mut current), Ok(()));
        assert_eq!(current.headers["expect"], "100-continue");
    }

    #[test]
    fn a_weak_if_range_drops_the_range_and_a_strong_one_keeps_it() {
        let mut weak = http11(&[
            ("host", "a.test"),
            ("range", "bytes=0-3"),
            ("if-range", "W/\"x\""),
        ]);
        assert_eq!(sanitize_plain(&mut weak), Ok(()));
        assert!(weak.headers.get("range").is_none());
        assert!(weak.headers.get("if-range").is_none());

        let mut strong = http11(&[
            ("host", "a.test"),
            ("range", "bytes=0-3"),
            ("if-range", "\"x\""),
        ]);
        assert_eq!(sanitize_plain(&mut strong), Ok(()));
        assert_eq!(strong.headers["range"], "bytes=0-3");
        assert_eq!(strong.headers["if-range"], "\"x\"");
    }

    #[test]
    fn nominated_and_hop_by_hop_fields_are_removed_but_not_framing_or_routing() {
        let mut req = http11(&[
            ("host", "a.test"),
            (
                "connection",
                "X-A, accept-language, keep-alive, content-length",
            ),
            ("x-a", "2"),
            ("accept-language", "fr"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
            ("content-length", "0"),
            ("accept", "*/*"),
        ]);
        assert_eq!(sanitize_plain(&mut req), Ok(()));
        for gone in [
            "x-a",
            "accept-language",
            "keep-alive",
            "te",
            "proxy-authorization",
        ] {
            assert!(!req.headers.contains_key(gone), "{gone} stayed");
        }
        for kept in ["host", "connection", "content-length", "accept"] {
            assert!(req.headers.contains_key(kept), "{kept} went");
        }
        for protected in ["Host", "X-Forwarded-For"] {
            let mut req = http11(&[("host", "a.test"), ("connection", protected)]);
            assert!(sanitize_plain(&mut req).is_err(), "{protected}");
        }
    }

    /// Only a WebSocket upgrade over HTTP/1.1 reaches the origin: other upgrade fields are
    /// gone before the plugin could key on them (probe V).
    #[test]
    fn upgrade_fields_the_origin_never_gets_are_removed() {
        let mut h2c = http11(&[
            ("host", "a.test"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ]);
        assert_eq!(sanitize_plain(&mut h2c), Ok(()));
        assert!(!h2c.headers.contains_key("upgrade"));
        assert!(!h2c.headers.contains_key("http2-settings"));
        let mut websocket = http11(&[
            ("host", "a.test"),
            ("connection", "Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert_eq!(sanitize_plain(&mut websocket), Ok(()));
        assert_eq!(websocket.headers["upgrade"], "WebSocket");
        // Without the connection option it is an ordinary field, never forwarded.
        let mut bare = http11(&[("host", "a.test"), ("upgrade", "websocket")]);
        assert_eq!(sanitize_plain(&mut bare), Ok(()));
        assert!(!bare.headers.contains_key("upgrade"));
        let mut old = request(
            Version::HTTP_10,
            &[("host", "a.test"), ("upgrade", "websocket")],
        );
        assert_eq!(sanitize_plain(&mut old), Ok(()));
        assert!(!old.headers.contains_key("upgrade"));
    }

    /// The check that spares the copy says "already spelled so" exactly when spelling it
    /// would give the same text: the answers are those of building the spelling every time.
    #[test]
    fn an_authority_spelled_so_already_is_told_without_a_copy() {
        for authority in [
            "site",
            "Site",
            "site.",
            "site..",
            "site:80",
            "site:8080",
            "site:08080",
            "site:0",
            "site:00",
            "site:",
            "SITE:443",
            "site:443",
            "site.:8080",
            "[::1]",
            "[::1]:80",
            "[::1]:8080",
            "[::1]:0080",
            "[::1]:",
            "[::1]x",
            "127.0.0.1:80",
            "127.0.0.1:8443",
            "a:b",
            "site:99999",
            "xn--bcher-kva.example:8080",
            "s\u{e9}:81",
            ":80",
            ".",
            "site:+80",
            "site: 80",
        ] {
            for scheme in ["http", "https", "ws", ""] {
                assert_eq!(
                    canonical_authority(authority, scheme),
                    spelling(authority, scheme),
                    "{authority:?} {scheme}"
                );
            }
        }
    }
}
