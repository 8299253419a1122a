//! What the origin learns about the client: `X-Forwarded-For`, `-Proto`,
//! `-Host`, `Forwarded` (RFC 7239) and `Via` (RFC 9110 §7.6.3).
//!
//! Applied to the request before the plugin sees it, so the plugin reads
//! exactly the fields the origin will get.

use crate::config::ForwardedHeaders;
use pingora::http::RequestHeader;
use std::net::IpAddr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED: &str = "forwarded";
/// This hop, as `Via` names it.
const VIA_HOP: &str = "1.1 cachet";

/// The connection a request came in on.
pub struct Hop {
    pub client: IpAddr,
    pub tls: bool,
}

/// Rewrites the forwarding fields of `req` for `mode`.
pub fn apply(mode: ForwardedHeaders, req: &mut RequestHeader, hop: &Hop) {
    let append = match mode {
        ForwardedHeaders::Off => return,
        ForwardedHeaders::Append => true,
        ForwardedHeaders::Replace => false,
    };
    let proto = if hop.tls { "https" } else { "http" };
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let client = hop.client.to_string();

    let xff = joined(req, X_FORWARDED_FOR, append, &client);
    set(req, X_FORWARDED_FOR, &xff);
    if !append || !req.headers.contains_key(X_FORWARDED_PROTO) {
        set(req, X_FORWARDED_PROTO, proto);
    }
    if !append || !req.headers.contains_key(X_FORWARDED_HOST) {
        set(req, X_FORWARDED_HOST, &host);
    }
    let element = forwarded_element(hop.client, proto, &host);
    let forwarded = joined(req, FORWARDED, append, &element);
    set(req, FORWARDED, &forwarded);
    let via = joined(req, http::header::VIA.as_str(), true, VIA_HOP);
    set(req, http::header::VIA.as_str(), &via);
}

/// `ours` after the existing values of `name` (when `append`), as one list.
fn joined(req: &RequestHeader, name: &str, append: bool, ours: &str) -> String {
    let mut list: Vec<&str> = if append {
        req.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    list.push(ours);
    list.join(", ")
}

fn set(req: &mut RequestHeader, name: &'static str, value: &str) {
    match http::HeaderValue::from_str(value) {
        Ok(value) => {
            let _ = req.insert_header(name, value);
        }
        // A client value that cannot be re-sent is dropped rather than forwarded.
        Err(_) => {
            req.remove_header(name);
        }
    }
}

/// One RFC 7239 element; IPv6 addresses and hosts are quoted as the grammar requires.
fn forwarded_element(client: IpAddr, proto: &str, host: &str) -> String {
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host: String = host.chars().filter(|c| !matches!(c, '"' | '\\')).collect();
    format!("for={node};proto={proto};host=\"{host}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        apply(ForwardedHeaders::Replace, &mut req, &hop());
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
        apply(ForwardedHeaders::Append, &mut req, &hop());
        assert_eq!(
            req.headers["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 192.0.2.7"
        );
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["via"], "1.1 lb, 1.1 cachet");
    }

    #[test]
    fn off_touches_nothing() {
        let mut req = request(&[("x-forwarded-for", "10.0.0.1")]);
        apply(ForwardedHeaders::Off, &mut req, &hop());
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1");
        assert!(req.headers.get("via").is_none());
    }

    #[test]
    fn ipv6_is_quoted() {
        let element = forwarded_element("2001:db8::1".parse().expect("ip"), "https", "a.test");
        assert_eq!(element, "for=\"[2001:db8::1]\";proto=https;host=\"a.test\"");
    }
}
