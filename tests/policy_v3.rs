//! `cachet:policy@0.3.0` end to end: the real `cachet` binary running the
//! `policy-0-3` fixture, built with wit-bindgen against `wit/v0.3` itself, so
//! it can give answers the SDK never gives: a key from `on-request` that the
//! host must use only when the request is not edited.

mod support;

use support::client::{get, send, Resp};
use support::fixture;
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};

const CACHE: &str = "max_bytes = \"64MiB\"";
const TOKEN: &str = "policy-v3-token";

fn v3_proxy(origin: &Origin, extra: &str) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        CACHE,
        &[TenantSpec::new("site", origin.addr, &fixture("policy-0-3")).extra(extra)],
    )
}

/// An origin that names the path it was sent and whether it was edited.
fn echo_origin() -> Origin {
    Origin::start(|seen| Reply::ok(format!("{} edited={:?}", seen.url, seen.header("x-edited"))))
}

fn assert_status_has(resp: &Resp, needle: &str) {
    assert!(
        resp.cache_status().contains(needle),
        "Cache-Status {:?} lacks {needle:?}",
        resp.cache_status()
    );
}

#[test]
fn a_key_given_by_on_request_is_used_and_cache_key_is_not_called() {
    let origin = echo_origin();
    let proxy = v3_proxy(&origin, "");
    assert_eq!(proxy.status()["tenants"][0]["plugin"]["contract"], "0.3.0");

    // The fixture's cache-key traps on these requests: a hit proves the host
    // keyed them with what on-request gave, without calling it.
    let first = get(&proxy.url("/plain/a"));
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "/plain/a edited=None")
    );
    assert_status_has(&first, "stored");
    let again = get(&proxy.url("/plain/a"));
    assert_status_has(&again, "hit");
    assert_eq!(again.text(), "/plain/a edited=None");
    let other = get(&proxy.url("/plain/b"));
    assert_eq!(other.text(), "/plain/b edited=None");
    assert_eq!(origin.hits(), 2);
    assert!(!proxy.log().contains("plugin fault"), "{}", proxy.log());
}

#[test]
fn a_key_given_with_edits_is_ignored_for_the_edited_requests_own_key() {
    let origin = echo_origin();
    let proxy = v3_proxy(&origin, "");
    // on-request names every /edited/ path "one key"; were it used, /edited/b
    // would be served /edited/a's body.
    let a = get(&proxy.url("/edited/a"));
    assert_eq!(a.text(), "/edited/a edited=Some(\"1\")");
    let b = get(&proxy.url("/edited/b"));
    assert_status_has(&b, "stored");
    assert_eq!(b.text(), "/edited/b edited=Some(\"1\")");
    // The key cache-key read from the edited request is a working key.
    let b_again = get(&proxy.url("/edited/b"));
    assert_status_has(&b_again, "hit");
    assert_eq!(b_again.text(), "/edited/b edited=Some(\"1\")");
    assert_eq!(origin.hits(), 2);
}

#[test]
fn configure_hands_every_new_instance_the_tenants_settings() {
    let origin = echo_origin();
    let settings = "[tenant.plugin_config]\ngreeting = \"hello from configure\"\n";
    let proxy = v3_proxy(&origin, settings);
    // A fresh instance per request (the default): each one is configured.
    for _ in 0..3 {
        let resp = get(&proxy.url("/config/greeting"));
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (200, "hello from configure")
        );
    }
    assert_eq!(get(&proxy.url("/config/missing")).status, 404);

    // No settings: configure is not called, and the plugin has none.
    let bare = v3_proxy(&origin, "");
    assert_eq!(get(&bare.url("/config/greeting")).status, 404);
    assert_eq!(origin.hits(), 0);
}

/// The forwarding fields among `fields` (name, value), as lower-case "name: value" lines, in order.
fn forwarding_fields<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    const NAMES: [&str; 5] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "via",
    ];
    fields
        .filter(|(name, _)| NAMES.contains(&name.to_ascii_lowercase().as_str()))
        .map(|(name, value)| format!("{}: {value}", name.to_ascii_lowercase()))
        .collect()
}

/// A 0.3.0 plugin is shown the forwarding fields without them being written
/// into the request (a hit never writes them): what it is shown must be what
/// the origin gets, field for field and in order, in every mode.
#[test]
fn the_forwarding_fields_a_plugin_is_shown_are_the_ones_the_origin_gets() {
    let client_claims = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=6.6.6.6"),
        ("Via", "1.0 lb"),
    ];
    for mode in ["replace", "append", "off"] {
        let origin = echo_origin();
        let proxy = Proxy::start_with_server(
            &format!("forwarded_headers = \"{mode}\""),
            CACHE,
            &[TenantSpec::new("site", origin.addr, &fixture("policy-0-3"))],
        );
        let shown = send("GET", &proxy.url("/fields/a"), &client_claims);
        assert_eq!(shown.status, 200, "{mode}");
        let shown = forwarding_fields(shown.text().lines().filter_map(|l| l.split_once(": ")));

        let sent = send("GET", &proxy.url("/plain/a"), &client_claims);
        assert_eq!(sent.status, 200, "{mode}");
        let seen = origin.seen().pop().expect("the origin got the request");
        let sent = forwarding_fields(seen.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        assert_eq!(shown, sent, "mode {mode}");
        match mode {
            "off" => assert_eq!(sent.len(), 4, "the client's own fields only: {sent:?}"),
            _ => assert!(
                sent.iter()
                    .any(|l| l.starts_with("x-forwarded-for: ") && l.ends_with("127.0.0.1")),
                "the proxy added itself: {sent:?}"
            ),
        }
        assert!(!proxy.log().contains("plugin fault"), "{}", proxy.log());
    }
}

/// `cache-key` is shown the forwarding fields when the request is not edited,
/// and, when it is, the request with the fields written and then edited: the
/// edits win at the origin too.
#[test]
fn the_key_hook_and_the_origin_see_forwarding_fields_after_the_plugins_edits() {
    let origin = echo_origin();
    let proxy = v3_proxy(&origin, "");
    // The fixture's cache-key traps (a 502) unless it is shown the fields.
    let keyed = get(&proxy.url("/fields-key/a"));
    assert_eq!(keyed.status, 200, "{}", proxy.log());
    assert_status_has(&get(&proxy.url("/fields-key/a")), "hit");

    let edited = get(&proxy.url("/edit-fields/a"));
    assert_eq!(edited.status, 200, "{}", proxy.log());
    let seen = origin
        .seen()
        .pop()
        .expect("the origin got the edited request");
    assert_eq!(seen.header("via"), Some("edited-via"));
    assert_eq!(seen.header("x-forwarded-for"), None);
    assert!(seen
        .header("x-forwarded-host")
        .is_some_and(|host| host.starts_with("127.0.0.1")));
    assert_eq!(seen.header("x-edited"), Some("1"));
    assert_eq!(origin.hits(), 2);
    assert!(!proxy.log().contains("plugin fault"), "{}", proxy.log());
}
