//! Edits a 0.2.0 plugin asks for: checked once when read, then applied to
//! pingora's headers. A refused edit is a plugin fault, so a plugin can never
//! produce a message whose framing or routing the host did not write.

use super::bindings::v2::cachet::policy::types as raw;
use super::decision::is_framing_header;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Most header edits one hook may return.
const MAX_EDITS: usize = 64;
/// Most bytes a plugin may set: the header edits of one hook together, or a path and query.
/// The largest request head cachet takes from a client (Pingora's own cap), so a plugin that
/// keeps a client's long cookie or rewrites its long query is never refused for it. (The
/// edited head as a whole is held to the same cap when applied.)
const MAX_EDIT_BYTES: usize = crate::config::PINGORA_MAX_HEAD;
/// Longest origin-form path and query a plugin may set.
const MAX_PATH_AND_QUERY: usize = MAX_EDIT_BYTES;

/// Request fields Pingora removes before the origin whatever the request says, beyond the
/// framing and hop-by-hop ones every edit is refused: a plugin that set one would key on a
/// value the origin never gets. (Removing one is allowed: it is already gone.)
const NEVER_FORWARDED: [&str; 3] = [
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Request fields that say the scheme and host the key holds (`forwarded_headers`): the host
/// writes or passes them, and a plugin's edit told the origin one scheme while the key held
/// another (probes AL, AM: Rack reads `X-Forwarded-Ssl` before the others), so no request
/// edit may touch them.
const KEYED_FORWARDING: [&str; 7] = [
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "front-end-https",
    "x-url-scheme",
];

/// One checked change to a message's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

/// The checked request edits of an `on-request`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdits {
    pub headers: Vec<HeaderEdit>,
    pub path_and_query: Option<String>,
}

impl RequestEdits {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.path_and_query.is_none()
    }

    /// Applies the edits; after this, what the key hook reads is what the
    /// origin is sent. A refused path leaves the request as it was; a refusal
    /// after the header edits (an edited head over Pingora's cap) leaves them
    /// applied, and the caller puts the unedited request back
    /// (`InstancePool::plan_request`), so a fault never sends the origin half
    /// an edit.
    pub fn apply(&self, req: &mut RequestHeader) -> Result<(), String> {
        if let Some(target) = &self.path_and_query {
            let before = req.raw_path().to_vec();
            req.set_raw_path(target.as_bytes())
                .map_err(|e| format!("path {target:?} refused: {e}"))?;
            // The key reads `uri`, the origin gets the raw target: they must agree.
            if req.raw_path() != target.as_bytes()
                || req.uri.path_and_query().map(|p| p.as_str()) != Some(target.as_str())
            {
                req.set_raw_path(&before)
                    .map_err(|e| format!("cannot restore the path: {e}"))?;
                return Err(format!("path {target:?} is not in origin-form"));
            }
        }
        // Names and values were checked when read: these cannot fail.
        for edit in &self.headers {
            match edit {
                HeaderEdit::Set(name, value) => req.insert_header(name.clone(), value.clone()),
                HeaderEdit::Append(name, value) => {
                    req.append_header(name.clone(), value.clone()).map(drop)
                }
                HeaderEdit::Remove(name) => {
                    req.remove_header(name);
                    Ok(())
                }
            }
            .map_err(|e| format!("request header edit refused: {e}"))?;
        }
        if !self.headers.is_empty() {
            crate::proxy::request_fields::after_edits(req)
                .map_err(|e| format!("request header edits refused: {e}"))?;
        }
        // Each hook's edits are bounded, but on top of a client's head that may be as large.
        let head_bytes = head_bytes(req);
        if head_bytes > crate::config::PINGORA_MAX_HEAD {
            return Err(format!(
                "the edited request head of {head_bytes} bytes exceeds the {} bytes a client \
                 may send",
                crate::config::PINGORA_MAX_HEAD
            ));
        }
        Ok(())
    }
}

/// A request head's size on the wire, near enough: its target and each field's line.
fn head_bytes(req: &RequestHeader) -> usize {
    let fields = req.headers.iter();
    let fields: usize = fields
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    req.raw_path().len() + fields
}

/// Applies response edits (checked when read) to a response head.
pub fn apply_to_response(edits: &[HeaderEdit], resp: &mut ResponseHeader) {
    for edit in edits {
        // Names and values were validated: insertion cannot fail.
        let _ = match edit {
            HeaderEdit::Set(name, value) => resp.insert_header(name.clone(), value.clone()),
            HeaderEdit::Append(name, value) => {
                resp.append_header(name.clone(), value.clone()).map(drop)
            }
            HeaderEdit::Remove(name) => {
                resp.remove_header(name);
                Ok(())
            }
        };
    }
}

/// [`apply_to_response`] on a head that may hold these edits already: one served from what
/// the cache stored, or a stored head with a 304 merged in. Sets and removals come out the same
/// however often they are applied; a value to append that the field already has is not
/// appended again (reapplied, every revalidation stored one more copy, without end).
pub fn reapply_to_response(edits: &[HeaderEdit], resp: &mut ResponseHeader) {
    for edit in edits {
        if let HeaderEdit::Append(name, value) = edit {
            if resp.headers.get_all(name).iter().any(|held| held == value) {
                continue;
            }
        }
        apply_to_response(std::slice::from_ref(edit), resp);
    }
}

/// Checks the header edits of an `on-request`: [`header_edits`], and nothing set that the
/// origin is never sent.
pub fn request_header_edits(raw: Vec<raw::HeaderEdit>) -> Result<Vec<HeaderEdit>, String> {
    let edits = header_edits(raw, "request")?;
    for edit in &edits {
        let (HeaderEdit::Set(name, _) | HeaderEdit::Append(name, _) | HeaderEdit::Remove(name)) =
            edit;
        if KEYED_FORWARDING.contains(&name.as_str()) {
            return Err(format!(
                "request edit of {name:?} refused: the host says the scheme and host the key \
                 holds (forwarded_headers)"
            ));
        }
        if let HeaderEdit::Set(name, _) | HeaderEdit::Append(name, _) = edit {
            if NEVER_FORWARDED.contains(&name.as_str()) {
                return Err(format!(
                    "request edit of {name:?} refused: the origin is never sent it"
                ));
            }
            // A client may not send such a name (request_fields): an origin may read it as
            // another field the key knows by its dashed name (probe AL).
            if !crate::proxy::is_usual_field_name(name.as_str()) {
                return Err(format!(
                    "request edit of {name:?} refused: a name with other than letters, digits \
                     and '-' (an origin may read it as another field)"
                ));
            }
        }
    }
    Ok(edits)
}

/// Checks a list of raw header edits against the bounds and the framing rule.
pub fn header_edits(raw: Vec<raw::HeaderEdit>, what: &str) -> Result<Vec<HeaderEdit>, String> {
    if raw.len() > MAX_EDITS {
        return Err(format!("{} {what} edits, limit {MAX_EDITS}", raw.len()));
    }
    let mut bytes = 0;
    let mut edits = Vec::with_capacity(raw.len());
    for edit in raw {
        let (name, value) = match &edit {
            raw::HeaderEdit::Set(h) | raw::HeaderEdit::Append(h) => (&h.name, Some(&h.value)),
            raw::HeaderEdit::Remove(name) => (name, None),
        };
        bytes += name.len() + value.map_or(0, String::len);
        if bytes > MAX_EDIT_BYTES {
            return Err(format!("{what} edits exceed {MAX_EDIT_BYTES} bytes in all"));
        }
        if is_framing_header(name) || name.trim().eq_ignore_ascii_case("host") {
            return Err(format!(
                "{what} edit of {name:?} refused: the host writes framing, hop-by-hop and Host fields"
            ));
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{what} edit: {name:?} is not a valid header name"))?;
        // Stored as every recipient reads it: a field value has no leading or trailing
        // whitespace (RFC 9110 §5.5), so `" v "` kept padded showed the key hook and the
        // stored response a value the origin or client parsed as `v`.
        let value = value
            .map(|v| {
                HeaderValue::from_str(v.trim_matches([' ', '\t']))
                    .map_err(|_| format!("{what} edit: value of {name} is not valid HTTP"))
            })
            .transpose()?;
        edits.push(match (edit, value) {
            (raw::HeaderEdit::Set(_), Some(v)) => HeaderEdit::Set(name, v),
            (raw::HeaderEdit::Append(_), Some(v)) => HeaderEdit::Append(name, v),
            _ => HeaderEdit::Remove(name),
        });
    }
    Ok(edits)
}

/// Checks a path and query for the origin: origin-form, bounded, no fragment. A path that
/// starts with `//` or `/\` (which some origins read as `//host/path`) is taken only where the
/// client's own path did (`client_path` is the request path the plugin was shown): a plugin
/// that rewrites such a request's query must be able to keep its path, but never brings
/// one in.
pub fn path_and_query(raw: Option<String>, client_path: &str) -> Result<Option<String>, String> {
    let Some(target) = raw else {
        return Ok(None);
    };
    if target.len() > MAX_PATH_AND_QUERY {
        return Err(format!(
            "path of {} bytes exceeds the limit of {MAX_PATH_AND_QUERY}",
            target.len()
        ));
    }
    // WHATWG URL parsers (Node, browsers) read `\` as `/`: `/\host/` is `//host/` to them.
    let network = |path: &str| path.starts_with("//") || path.starts_with("/\\");
    let network_path = network(&target) && !network(client_path);
    // Every byte visible ASCII, as a client's target must be: anything else is
    // percent-encoded, or the origin reads raw bytes cachet never checked.
    let plain = target.bytes().all(|b| b.is_ascii_graphic());
    if !target.starts_with('/') || network_path || target.contains('#') || !plain {
        return Err(format!(
            "path {target:?} is not in origin-form (\"/path?query\")"
        ));
    }
    match target.parse::<http::uri::PathAndQuery>() {
        Ok(parsed) if parsed.as_str() == target => Ok(Some(target)),
        _ => Err(format!("path {target:?} is not a valid request target")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> raw::HeaderEdit {
        raw::HeaderEdit::Set(raw::Header {
            name: name.into(),
            value: value.into(),
        })
    }

    #[test]
    fn framing_routing_and_invalid_fields_are_refused() {
        for bad in [
            set("Content-Length", "1"),
            set("transfer-encoding", "chunked"),
            set("Connection", "close"),
            set("Host", "evil.example"),
            set("X-A", "a\r\nInjected: yes"),
            set("Bad Name", "x"),
            raw::HeaderEdit::Remove("Content-Length".into()),
        ] {
            assert!(header_edits(vec![bad.clone()], "test").is_err(), "{bad:?}");
        }
        let many = vec![set("x-a", "1"); MAX_EDITS + 1];
        assert!(header_edits(many, "test").is_err());
        let big = vec![set("x-a", &"v".repeat(MAX_EDIT_BYTES))];
        assert!(header_edits(big, "test").is_err());
        // A client's long cookie, kept by the plugin, is not too long.
        let cookie = vec![set("cookie", &"v".repeat(16 << 10))];
        assert!(header_edits(cookie, "test").is_ok());
        // Request fields Pingora never forwards may be removed, not set.
        for name in [
            "Proxy-Authorization",
            "proxy-authenticate",
            "HTTP2-Settings",
        ] {
            assert!(
                request_header_edits(vec![set(name, "x")]).is_err(),
                "{name}"
            );
            let remove = raw::HeaderEdit::Remove(name.into());
            assert!(request_header_edits(vec![remove]).is_ok(), "{name}");
        }
        // Nor touch the fields that say the key's scheme and host.
        for name in [
            "X-Forwarded-Proto",
            "forwarded",
            "x-forwarded-host",
            "X-Forwarded-Ssl",
        ] {
            assert!(
                request_header_edits(vec![raw::HeaderEdit::Remove(name.into())]).is_err(),
                "{name}"
            );
            assert!(
                request_header_edits(vec![set(name, "https")]).is_err(),
                "{name}"
            );
        }
        assert!(request_header_edits(vec![set("x-forwarded-for", "1.2.3.4")]).is_ok());
        // Nor may a request edit add a name an origin may read as another field.
        for name in ["x_http_method_override", "x.original.url"] {
            assert!(
                request_header_edits(vec![set(name, "x")]).is_err(),
                "{name}"
            );
            assert!(
                header_edits(vec![set(name, "x")], "response").is_ok(),
                "{name}"
            );
        }
        assert_eq!(
            header_edits(vec![set("X-A", "1")], "test").unwrap(),
            vec![HeaderEdit::Set(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1")
            )]
        );
    }

    #[test]
    fn values_are_kept_as_recipients_read_them_without_padding() {
        assert_eq!(
            header_edits(vec![set("X-A", " \tv 1\t ")], "test").unwrap(),
            vec![HeaderEdit::Set(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("v 1")
            )]
        );
    }

    #[test]
    fn paths_must_be_origin_form() {
        for bad in [
            "x",
            "//evil.example/",
            "/\\evil.example/",
            "/a#frag",
            "/a b",
            "http://e/",
            "/ä",
            "/a\u{7f}",
        ] {
            assert!(path_and_query(Some(bad.into()), "/").is_err(), "{bad}");
        }
        assert!(path_and_query(Some("/".repeat(MAX_PATH_AND_QUERY + 1)), "/").is_err());
        assert_eq!(
            path_and_query(Some("/v2/items?id=1".into()), "/").unwrap(),
            Some("/v2/items?id=1".into())
        );
        // Kept where the client's path began so (a query rewritten), never brought in.
        assert_eq!(
            path_and_query(Some("//x.css?a=2&b=1".into()), "//x.css").unwrap(),
            Some("//x.css?a=2&b=1".into())
        );
        assert!(path_and_query(Some("//x.css".into()), "/x.css").is_err());
    }

    #[test]
    fn applied_path_is_what_key_and_origin_see() {
        let mut req = RequestHeader::build("GET", b"/api/items?a=1", None).unwrap();
        req.insert_header("cookie", "a=1").unwrap();
        let edits = RequestEdits {
            headers: vec![HeaderEdit::Remove(HeaderName::from_static("cookie"))],
            path_and_query: Some("/items?a=1".into()),
        };
        edits.apply(&mut req).unwrap();
        assert_eq!(req.raw_path(), b"/items?a=1");
        assert_eq!(req.uri.path(), "/items");
        assert!(req.headers.get("cookie").is_none());
    }

    /// Fields an edit brings back get the rules a client's own got: a weak `If-Range` drops
    /// the range (Pingora would answer it with parts), an HTTP/1.0 request keeps no `Expect`,
    /// and an HTTP/2 request's cookies stay one field for its HTTP/1.1 origin.
    #[test]
    fn edited_fields_are_brought_to_what_the_origin_is_sent() {
        let value = |v: &'static str| HeaderValue::from_static(v);
        let name = |n: &'static str| HeaderName::from_static(n);
        let edits = RequestEdits {
            headers: vec![
                HeaderEdit::Set(name("if-range"), value("W/\"x\"")),
                HeaderEdit::Set(name("expect"), value("100-continue")),
                HeaderEdit::Append(name("cookie"), value("b=2")),
            ],
            path_and_query: None,
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("range", "bytes=0-3").unwrap();
        req.insert_header("cookie", "a=1").unwrap();
        req.set_version(http::Version::HTTP_10);
        edits.apply(&mut req).unwrap();
        for gone in ["range", "if-range", "expect"] {
            assert!(req.headers.get(gone).is_none(), "{gone}: {:?}", req.headers);
        }
        // Cookie lines stay as HTTP/1 sent them: one origin-bound field per line.
        assert_eq!(req.headers.get_all("cookie").iter().count(), 2);

        let mut h2 = RequestHeader::build("GET", b"/", None).unwrap();
        h2.set_version(http::Version::HTTP_2);
        h2.insert_header("cookie", "a=1").unwrap();
        h2.insert_header("expect", "100-continue").unwrap();
        edits.apply(&mut h2).unwrap();
        assert_eq!(h2.headers["cookie"], "a=1; b=2");
        assert_eq!(h2.headers["expect"], "100-continue");
    }

    /// An edited head stays within what a client may send: the edits of a hook are bounded
    /// on their own, but not the client's head they are added to.
    #[test]
    fn an_edited_head_over_what_a_client_may_send_is_refused() {
        let half = "v".repeat(crate::config::PINGORA_MAX_HEAD / 2 + 16);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-client", half.as_str()).unwrap();
        let edits = |value: &str| RequestEdits {
            headers: vec![HeaderEdit::Set(
                HeaderName::from_static("x-plugin"),
                HeaderValue::from_str(value).unwrap(),
            )],
            path_and_query: None,
        };
        let refused = edits(&half).apply(&mut req.clone()).unwrap_err();
        assert!(refused.contains("exceeds"), "{refused}");
        edits("small").apply(&mut req).unwrap();
        assert_eq!(req.headers["x-plugin"], "small");
    }

    /// The SDK tells a policy's native tests which edits the host refuses: it must say what
    /// the host does, edit by edit, or a policy tested green is refused when loaded.
    #[test]
    fn the_sdk_refuses_the_edits_the_host_refuses() {
        use cachet_sdk::testing::{request_edits_refusal, response_edits_refusal};
        let long_name = "x".repeat(65_536);
        let names = [
            "X-Variant",
            "transfer-encoding",
            "connection",
            "trailer",
            "upgrade",
            "proxy-connection",
            "x-forwarded-host",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
            "x-url-scheme",
            "proxy-authenticate",
            &long_name,
            "cookie",
            "Content-Length",
            " host",
            "Host",
            "te",
            "Keep-Alive",
            "Forwarded",
            "x-forwarded-proto",
            "Front-End-Https",
            "Proxy-Authorization",
            "http2-settings",
            "x_under",
            "Bad Name",
            "",
            "x-caf\u{e9}",
            "x.dot",
            "a:b",
        ];
        let values = [
            "b",
            " padded\t",
            "a\r\nInjected: yes",
            "caf\u{e9}",
            "",
            "\u{7f}",
        ];
        let req = cachet_sdk::Request::builder()
            .uri("http://example.com/a")
            .build();
        for name in names {
            let mut cases: Vec<(raw::HeaderEdit, cachet_sdk::HeaderEdit)> = values
                .iter()
                .flat_map(|value| {
                    let header = || raw::Header {
                        name: name.into(),
                        value: (*value).into(),
                    };
                    [
                        (
                            raw::HeaderEdit::Set(header()),
                            cachet_sdk::HeaderEdit::Set(name.into(), (*value).into()),
                        ),
                        (
                            raw::HeaderEdit::Append(header()),
                            cachet_sdk::HeaderEdit::Append(name.into(), (*value).into()),
                        ),
                    ]
                })
                .collect();
            cases.push((
                raw::HeaderEdit::Remove(name.into()),
                cachet_sdk::HeaderEdit::Remove(name.into()),
            ));
            for (host_edit, sdk_edit) in cases {
                let mut sdk_edits = cachet_sdk::HeaderEdits::new();
                match &sdk_edit {
                    cachet_sdk::HeaderEdit::Set(n, v) => sdk_edits.set(n, v),
                    cachet_sdk::HeaderEdit::Append(n, v) => sdk_edits.append(n, v),
                    cachet_sdk::HeaderEdit::Remove(n) => sdk_edits.remove(n),
                };
                let host = request_header_edits(vec![host_edit.clone()]).err();
                let request_edits = cachet_sdk::RequestEdits {
                    headers: sdk_edits.clone(),
                    ..Default::default()
                };
                let sdk = request_edits_refusal(&req, &request_edits);
                assert_eq!(
                    host.is_some(),
                    sdk.is_some(),
                    "request {sdk_edit:?}: {host:?} {sdk:?}"
                );
                let host = header_edits(vec![host_edit], "response").err();
                let sdk = response_edits_refusal(&sdk_edits);
                assert_eq!(
                    host.is_some(),
                    sdk.is_some(),
                    "response {sdk_edit:?}: {host:?} {sdk:?}"
                );
            }
        }
        let long_path = format!("/{}", "a".repeat(65_534));
        let longest_path = format!("/{}", "a".repeat(65_533));
        for target in [
            "/b",
            "/search?q=\"shoes\"",
            "/a<b",
            "/a>b",
            "/a`b",
            "/a?b=<x>",
            "/a?b=`x`",
            "/a{b}|c^d",
            "/a?b={x}",
            &long_path,
            &longest_path,
            "/b?c=1",
            "b",
            "//evil.example/",
            "/\\evil",
            "/a b",
            "/a#f",
            "/caf\u{e9}",
            "/%2e%2e/",
            "/a?b=%zz",
        ] {
            let host = path_and_query(Some(target.into()), "/a").err();
            let request_edits = cachet_sdk::RequestEdits {
                path_and_query: Some(target.into()),
                ..Default::default()
            };
            let sdk = request_edits_refusal(&req, &request_edits);
            assert_eq!(
                host.is_some(),
                sdk.is_some(),
                "path {target:?}: {host:?} {sdk:?}"
            );
        }
        // The bounds: the number of edits, and their bytes in all.
        for (count, value_bytes) in [(MAX_EDITS, 1), (MAX_EDITS + 1, 1), (2, MAX_EDIT_BYTES / 2)] {
            let values = vec!["v".repeat(value_bytes); count];
            let host_edits: Vec<raw::HeaderEdit> = values
                .iter()
                .map(|v| {
                    raw::HeaderEdit::Append(raw::Header {
                        name: "x-a".into(),
                        value: v.clone(),
                    })
                })
                .collect();
            let mut sdk_edits = cachet_sdk::HeaderEdits::new();
            for v in &values {
                sdk_edits.append("x-a", v);
            }
            let host = header_edits(host_edits, "response").err();
            let sdk = response_edits_refusal(&sdk_edits);
            assert_eq!(
                host.is_some(),
                sdk.is_some(),
                "{count} × {value_bytes}: {host:?} {sdk:?}"
            );
        }
    }
}
