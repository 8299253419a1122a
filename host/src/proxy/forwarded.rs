//! What the origin learns about the client: `X-Forwarded-For`, `-Proto`,
//! `-Host`, `Forwarded` (RFC 7239) and `Via` (RFC 9110 §7.6.3).
//!
//! Built as pending fields: a plugin is shown them before it runs, and they are
//! written into the request once it needs the origin (`request.rs` says when).

use crate::config::ForwardedHeaders;
use crate::policy::PendingFields;
use http::header::{HeaderName, VIA};
use http::HeaderValue;
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::LazyLock;

// Parsed once: a name given as text is parsed again at every lookup.
static X_FORWARDED_FOR: LazyLock<HeaderName> =
    LazyLock::new(|| HeaderName::from_static("x-forwarded-for"));
static X_FORWARDED_PROTO: LazyLock<HeaderName> =
    LazyLock::new(|| HeaderName::from_static("x-forwarded-proto"));
static X_FORWARDED_HOST: LazyLock<HeaderName> =
    LazyLock::new(|| HeaderName::from_static("x-forwarded-host"));
static FORWARDED: LazyLock<HeaderName> = LazyLock::new(|| HeaderName::from_static("forwarded"));
/// This hop, as `Via` names it.
const VIA_HOP: &str = "1.1 cachet";

/// The connection a request came in on.
pub struct Hop {
    pub client: IpAddr,
    pub tls: bool,
}

/// The forwarding fields `mode` gives `req` for this hop, not yet written.
///
/// Runs on every request a plugin sees, hits included: each value is built in one
/// allocation that becomes the header value itself, and constant values are not copied.
pub fn fields(mode: ForwardedHeaders, req: &RequestHeader, hop: &Hop) -> PendingFields {
    let mut fields = PendingFields::with_capacity(5);
    let append = match mode {
        ForwardedHeaders::Off => return fields,
        ForwardedHeaders::Append => true,
        ForwardedHeaders::Replace => false,
    };
    let (extend_x, extend_forwarded) = conventions(append, req);
    let proto = if hop.tls { "https" } else { "http" };
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let mut client = String::with_capacity(48);
    push_ip(&mut client, hop.client);

    // Built first: it reads `client`, which `X-Forwarded-For` may then take.
    let element = extend_forwarded.then(|| forwarded_element(hop.client, &client, proto, host));
    if extend_x {
        let xff = list(req, &X_FORWARDED_FOR, append, client);
        set(&mut fields, &X_FORWARDED_FOR, xff);
        if !append || !req.headers.contains_key(&*X_FORWARDED_PROTO) {
            let proto = HeaderValue::from_static(proto);
            fields.set(X_FORWARDED_PROTO.clone(), proto);
        }
        if !append || !req.headers.contains_key(&*X_FORWARDED_HOST) {
            set(&mut fields, &X_FORWARDED_HOST, host.to_owned());
        }
    }
    if let Some(element) = element {
        let forwarded = list(req, &FORWARDED, append, element);
        set(&mut fields, &FORWARDED, forwarded);
    }
    if req.headers.contains_key(VIA) {
        let via = list(req, &VIA, true, VIA_HOP.to_owned());
        set(&mut fields, &VIA, via);
    } else {
        fields.set(VIA, HeaderValue::from_static(VIA_HOP));
    }
    fields
}

/// Which conventions this hop writes: (`X-Forwarded-*`, `Forwarded`). Both, unless
/// "append" finds the proxy in front using only one of them: then only that one is
/// extended. A proxy that terminates TLS and says `X-Forwarded-Proto: https` must not be
/// followed by a `Forwarded` chain this hop starts with `proto=http`, nor the reverse:
/// frameworks that read `Forwarded` first (Rack 3, Falcon) or `X-Forwarded-Proto` first
/// (Django, older Rack) would take the site for plain HTTP, and the redirect they answer
/// would be stored under the HTTPS key the front proxy's claim gives it.
fn conventions(append: bool, req: &RequestHeader) -> (bool, bool) {
    if !append {
        return (true, true);
    }
    let x = [&*X_FORWARDED_FOR, &*X_FORWARDED_PROTO, &*X_FORWARDED_HOST]
        .into_iter()
        .any(|name| req.headers.contains_key(name));
    let forwarded = req.headers.contains_key(&*FORWARDED);
    match (x, forwarded) {
        (false, false) => (true, true),
        used => used,
    }
}

/// Settles the client's own forwarding claims as `mode` says, before the plugin or the key
/// reads the head: under "replace" they are dropped ([`drop_client_claims`]). Returns the
/// scheme the origin is told ([`told_scheme`], read from the head as the client sent it).
/// The proxy and `explain` both start here, so they cannot drift apart.
pub fn settle_client_claims(
    mode: ForwardedHeaders,
    req: &mut RequestHeader,
    tls: bool,
) -> Cow<'static, str> {
    let told = told_scheme(mode, req, tls);
    if mode == ForwardedHeaders::Replace {
        drop_client_claims(req);
    }
    told
}

/// The scheme the origin is told the client used, the cache key's scheme part. Under
/// "replace" it is this hop's (the client's claims are dropped). Under "append" and "off" the
/// client's own claims pass on, with what "append" adds to them, and origins read them
/// differently: Django and older Rack take `X-Forwarded-Proto`, Spring and Rack 3 take
/// `Forwarded` (its first or its last element), and Spring and Reactor Netty find `proto=`
/// anywhere in it (`xproto=http`, `host="a;proto=http"`). So the key names every reading the
/// origin's fields allow: `X-Forwarded-Proto`'s values, `Forwarded`'s by RFC 7239, and by a
/// search for `proto=`, each comma-joined and lower-cased, the distinct ones joined with
/// `|`. Fields that read one way give that one scheme; none give this hop's. A client's
/// `Forwarded: proto=http` beside a TLS front's `X-Forwarded-Proto: https` kept the plain
/// https entry while Spring answered its redirect to https (probes AB, AK, AM, AO). Read
/// from the head as the client sent it, with what [`fields`] will add.
fn told_scheme(mode: ForwardedHeaders, req: &RequestHeader, tls: bool) -> Cow<'static, str> {
    let hop = super::cache_key::hop_scheme(tls);
    if mode == ForwardedHeaders::Replace {
        return Cow::Borrowed(hop);
    }
    let (extend_x, extend_forwarded) = match mode {
        ForwardedHeaders::Append => conventions(true, req),
        _ => (false, false),
    };
    let mut readings: Vec<String> = Vec::with_capacity(3);
    // As sent: origins compare the scheme case-sensitively (Django's `== "https"`, Express,
    // Rack), so `HTTPS`, an empty element or a non-ASCII line read as plain http there and
    // must not share the `https` entry (they did, lower-cased, trimmed or dropped).
    let mut x_proto: Vec<String> = req
        .headers
        .get_all(&*X_FORWARDED_PROTO)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if x_proto.is_empty() && extend_x {
        x_proto.push(hop.to_owned());
    }
    if !x_proto.is_empty() {
        readings.push(x_proto.join(","));
    }
    if req.headers.contains_key(&*FORWARDED) || extend_forwarded {
        let ours = extend_forwarded.then_some(hop);
        let (aware, loose) = forwarded_protos(req, ours);
        readings.extend([aware, loose]);
    }
    // The other fields that tell some origins the scheme pass on too: each present one is a
    // reading of its own, named, so a request carrying one never shares an entry with one
    // that does not (beside this hop's scheme when nothing else names one).
    if readings.is_empty() {
        readings.push(hop.to_owned());
    }
    for name in OTHER_SCHEME_CLAIMS {
        let values: Vec<String> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .collect();
        if !values.is_empty() {
            readings.push(format!("{name}={}", values.join(",")));
        }
    }
    let mut distinct: Vec<String> = Vec::with_capacity(readings.len());
    for reading in readings {
        if !distinct.contains(&reading) {
            distinct.push(reading);
        }
    }
    match distinct.join("|") {
        // An empty claim is a reading of its own: origins take it for plain http.
        told if told == hop => Cow::Borrowed(hop),
        told => Cow::Owned(told),
    }
}

/// `Forwarded`'s `proto` values, comma-joined, read by RFC 7239 and by a search for `proto=`
/// anywhere; `ours` is the element this hop appends (under "append").
fn forwarded_protos(req: &RequestHeader, ours: Option<&str>) -> (String, String) {
    let mut aware: Vec<String> = super::list_field::quoted_elements(&req.headers, &*FORWARDED)
        .flat_map(|element| super::list_field::split_unquoted(element, ';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            name.eq_ignore_ascii_case("proto")
                .then(|| value.trim_matches('"').to_owned())
        })
        .collect();
    let mut loose: Vec<String> = req
        .headers
        .get_all(&*FORWARDED)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .flat_map(|text| loose_protos(&text))
        .collect();
    if let Some(ours) = ours {
        aware.push(ours.to_owned());
        loose.push(ours.to_owned());
    }
    (aware.join(","), loose.join(","))
}

/// The value after every `proto=` in `text` (the name in any case, anywhere; the value as
/// written), an opening quote skipped, up to the next `;`, `,` or quote: how a pattern search
/// reads the field.
fn loose_protos(text: &str) -> Vec<String> {
    // ASCII lower-casing keeps every byte where it was: positions found in `lower` are
    // positions in `text`.
    let lower = text.to_ascii_lowercase();
    lower
        .match_indices("proto=")
        .map(|(at, found)| {
            let value = text[at + found.len()..].trim_start_matches('"');
            let end = value.find([';', ',', '"']).unwrap_or(value.len());
            value[..end].trim().to_owned()
        })
        .collect()
}

/// Client claims beyond the ones [`fields`] sets that frameworks read as the proxy's word:
/// the scheme, port or path prefix (Rack's `X-Forwarded-Scheme` and `-Ssl`, Symfony's
/// `-Port` and `-Prefix`) or the client's address. Under "replace" no client may send
/// them: none is in a cache key, so any could make the origin answer differently and that
/// answer be stored for everybody.
const CLIENT_ADDRESS_CLAIMS: [&str; 4] = [
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
];

/// Fields besides `X-Forwarded-Proto` and `Forwarded` through which frameworks take the
/// scheme from a request (Rack reads `X-Forwarded-Scheme` and `X-Forwarded-Ssl`, IIS-era
/// stacks `Front-End-Https`, some `X-Url-Scheme`). A client's value must not reach the origin
/// unseen by the key: an origin's redirect to https stored under the https key is a loop for
/// every https client.
const OTHER_SCHEME_CLAIMS: [&str; 4] = [
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "front-end-https",
    "x-url-scheme",
];

/// Removes every `X-Forwarded-*` field, the client-address claims and the other scheme
/// claims from `req`, before the plugin or the key reads it ("replace" mode).
fn drop_client_claims(req: &mut RequestHeader) {
    let claims: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| {
            name.as_str().starts_with("x-forwarded-")
                || CLIENT_ADDRESS_CLAIMS.contains(&name.as_str())
                || OTHER_SCHEME_CLAIMS.contains(&name.as_str())
        })
        .cloned()
        .collect();
    for name in claims {
        req.remove_header(&name);
    }
}

/// `ours` after the existing values of `name` (when `append`), as one list.
/// The field's list with `ours` last; `ours` itself when nothing comes before it (most
/// requests: no copy).
fn list(req: &RequestHeader, name: &HeaderName, append: bool, ours: String) -> String {
    let mut list = String::new();
    if append {
        let existing = req.headers.get_all(name).iter();
        for value in existing.filter_map(|v| v.to_str().ok()).map(str::trim) {
            if !value.is_empty() {
                list.push_str(value);
                list.push_str(", ");
            }
        }
    }
    if list.is_empty() {
        return ours;
    }
    list.push_str(&ours);
    list
}

fn set(fields: &mut PendingFields, name: &HeaderName, value: String) {
    let name = name.clone();
    // `HeaderValue: TryFrom<String>` keeps the string's buffer.
    match HeaderValue::try_from(value) {
        Ok(value) => fields.set(name, value),
        // A client value that cannot be re-sent is dropped rather than forwarded.
        Err(_) => fields.remove(name),
    }
}

/// Writes `ip` as text; IPv4, nearly every client, without the formatting machinery.
fn push_ip(out: &mut String, ip: IpAddr) {
    use std::fmt::Write;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// One RFC 7239 element (`client` is `ip` as text); IPv6 addresses and hosts are quoted as
/// the grammar requires.
fn forwarded_element(ip: IpAddr, client: &str, proto: &str, host: &str) -> String {
    let mut element = String::with_capacity(32 + client.len() + host.len());
    element.push_str("for=");
    if ip.is_ipv6() {
        element.push_str("\"[");
        element.push_str(client);
        element.push_str("]\"");
    } else {
        element.push_str(client);
    }
    element.push_str(";proto=");
    element.push_str(proto);
    element.push_str(";host=\"");
    element.extend(host.chars().filter(|c| !matches!(c, '"' | '\\')));
    element.push('"');
    element
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_told_scheme_is_the_hop_s_unless_the_client_s_claim_passes_on() {
        use ForwardedHeaders::*;
        let told = |mode, extra: &[(&str, &str)], tls| told_scheme(mode, &request(extra), tls);
        let claim = [("x-forwarded-proto", "https")];
        assert_eq!(told(Replace, &claim, false), "http");
        assert_eq!(told(Append, &claim, false), "https");
        assert_eq!(told(Off, &claim, false), "https");
        // What frameworks comparing case-sensitively read as plain http keeps its own entry:
        // another case, an empty or a non-ASCII value, an empty first line.
        for (claim, reading) in [("HTTPS", "HTTPS"), ("", ""), ("\u{e9}", "\u{e9}")] {
            let claim = [("x-forwarded-proto", claim)];
            assert_eq!(told(Append, &claim, true), reading, "{claim:?}");
        }
        let lines = [("x-forwarded-proto", ""), ("x-forwarded-proto", "https")];
        assert_eq!(told(Append, &lines, false), ",https");
        assert_eq!(told(Append, &[], true), "https");
        let forwarded = [("forwarded", "for=1.2.3.4;proto=https")];
        assert_eq!(told(Off, &forwarded, false), "https");
        // "append" adds this hop's element (`proto=http`): an origin reading the last one
        // reads another scheme than one reading the first.
        assert_eq!(told(Append, &forwarded, false), "https,http");
        // A quoted value is not a parameter: the origin reads no scheme here, so neither
        // may the key. Read both ways, it names both: never the plain entry of either scheme.
        let smuggled = [("forwarded", r#"for=x;host="a;proto=https""#)];
        assert_eq!(told(Off, &smuggled, false), "|https");
        let smuggled = [("forwarded", r#"for="x,proto=https""#)];
        assert_eq!(told(Off, &smuggled, false), "|https");
        let quoted = [(
            "forwarded",
            r#"for=x;host="x.test;proto=http", proto=https"#,
        )];
        assert_eq!(told(Off, &quoted, false), "https|http,https");
        // A pattern search finds `proto=` inside other parameters too (probe AM).
        for hidden in [
            r#"for=x;xproto=http, proto=https"#,
            r#"for="6.6.6.6proto=http", proto=https"#,
        ] {
            let claim = [("forwarded", hidden)];
            assert_eq!(told(Off, &claim, false), "https|http,https", "{hidden}");
        }
        let plain = [("forwarded", r#"for="[::1]";proto="https""#)];
        assert_eq!(told(Off, &plain, false), "https");
        // Behind a TLS front that says `X-Forwarded-Proto: https`, a client's own
        // `Forwarded: proto=http` is what Spring and Rack 3 read (probe AO).
        let both = [("x-forwarded-proto", "https"), ("forwarded", "proto=http")];
        assert_eq!(told(Append, &both, false), "https|http,http");
        assert_eq!(told(Off, &both, false), "https|http");
        let agreeing = [("x-forwarded-proto", "https"), ("forwarded", "proto=https")];
        assert_eq!(told(Off, &agreeing, false), "https");
        assert_eq!(told(Off, &[("forwarded", "Proto=https")], false), "https");
        assert_eq!(told(Off, &[("forwarded", "Proto=HTTPS")], false), "HTTPS");
        let ssl = [("x-forwarded-ssl", "ON")];
        assert_ne!(
            told(Off, &ssl, false),
            told(Off, &[("x-forwarded-ssl", "on")], false)
        );
        assert_eq!(
            told(Off, &[("x-forwarded-proto", "https, http")], false),
            "https, http"
        );
    }

    fn request(extra: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("host", "example.com").expect("host");
        for (n, v) in extra {
            req.append_header(n.to_string(), *v).expect("header");
        }
        req
    }

    fn hop() -> Hop {
        Hop {
            client: "192.0.2.7".parse().expect("ip"),
            tls: false,
        }
    }

    #[test]
    fn replace_drops_what_the_client_claimed() {
        let mut req = request(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        fields(ForwardedHeaders::Replace, &req, &hop()).apply(&mut req);
        assert_eq!(req.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "example.com");
        assert_eq!(
            req.headers["forwarded"],
            "for=192.0.2.7;proto=http;host=\"example.com\""
        );
        assert_eq!(req.headers["via"], "1.1 cachet");
    }

    #[test]
    fn append_keeps_the_chain() {
        let mut req = request(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("via", "1.1 lb"),
        ]);
        fields(ForwardedHeaders::Append, &req, &hop()).apply(&mut req);
        assert_eq!(
            req.headers["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 192.0.2.7"
        );
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["via"], "1.1 lb, 1.1 cachet");
    }

    #[test]
    fn append_extends_only_the_convention_the_proxy_in_front_uses() {
        let mut req = request(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        fields(ForwardedHeaders::Append, &req, &hop()).apply(&mut req);
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert!(req.headers.get("forwarded").is_none());

        let mut req = request(&[("forwarded", "for=10.0.0.1;proto=https")]);
        fields(ForwardedHeaders::Append, &req, &hop()).apply(&mut req);
        assert_eq!(
            req.headers["forwarded"],
            "for=10.0.0.1;proto=https, for=192.0.2.7;proto=http;host=\"example.com\""
        );
        for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
            assert!(req.headers.get(name).is_none(), "{name}");
        }

        let mut req = request(&[]);
        fields(ForwardedHeaders::Append, &req, &hop()).apply(&mut req);
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert!(req.headers.get("forwarded").is_some());
    }

    #[test]
    fn off_touches_nothing() {
        let mut req = request(&[("x-forwarded-for", "10.0.0.1")]);
        fields(ForwardedHeaders::Off, &req, &hop()).apply(&mut req);
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1");
        assert!(req.headers.get("via").is_none());
    }

    #[test]
    fn ipv6_is_quoted() {
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        let mut client = String::new();
        push_ip(&mut client, ip);
        let element = forwarded_element(ip, &client, "https", "a.test");
        assert_eq!(element, "for=\"[2001:db8::1]\";proto=https;host=\"a.test\"");
    }

    #[test]
    fn ipv4_text_matches_the_standard_formatting() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "192.168.100.255",
            "9.99.100.199",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut text = String::new();
            push_ip(&mut text, ip);
            assert_eq!(text, ip.to_string());
        }
    }
}
