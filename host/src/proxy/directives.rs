//! Which cache directives govern cachet (RFC 9213 targeted fields), and which headers are
//! cachet's own business and never go downstream. The parsing is the SDK's, so a plugin's
//! `Response::cache_control()` and the host always agree.

use cachet_sdk::{CacheControl, ResponseDirectives};
use pingora::http::ResponseHeader;

/// Targeted at cachet alone; wins over everything else and never leaves cachet.
pub const CACHET_CACHE_CONTROL: &str = "cachet-cache-control";
/// Purge tags from the origin, space-separated (the Fastly/Akamai convention).
pub const SURROGATE_KEY: &str = "surrogate-key";

/// The directives cachet follows: the most specific valid field present. When a targeted field
/// is used, `Cache-Control` and `Expires` are ignored entirely (RFC 9213 §2.2).
pub fn effective(resp: &ResponseHeader) -> Option<ResponseDirectives> {
    ResponseDirectives::select(|name| {
        resp.headers
            .get_all(name)
            .iter()
            // Non-UTF-8 bytes stay visible as U+FFFD, which no strict parser accepts.
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
    })
}

/// Removes the fields a `private="..."` or `no-cache="..."` directive names from what is
/// stored (a shared cache must not reuse them), and returns them (every value, in order) for
/// the response to the request that fetched them.
pub fn strip_listed_fields(
    cc: &CacheControl,
    header: &mut ResponseHeader,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut removed = Vec::new();
    for directive in ["private", "no-cache"] {
        let Some(names) = cc.value(directive) else {
            continue;
        };
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                let values = header.headers.get_all(&name).iter().cloned();
                removed.extend(values.map(|value| (name.clone(), value)));
                header.remove_header(&name);
            }
        }
    }
    removed
}

/// Fields a stored response cannot do without: the variance, the body's framing and coding.
const FIELDS_THAT_MUST_STAY: [&str; 5] = [
    "vary",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "content-range",
];

/// The first field `no-cache="..."` names that [`strip_listed_fields`] must not remove.
/// (`private="..."` never gets that far: any `private` is not stored.)
pub fn listed_field_that_must_stay(cc: &CacheControl) -> Option<&'static str> {
    let names = cc.value("no-cache")?;
    let listed: Vec<&str> = names.split(',').map(str::trim).collect();
    FIELDS_THAT_MUST_STAY
        .into_iter()
        .find(|field| listed.iter().any(|name| name.eq_ignore_ascii_case(field)))
}

/// Removes what only cachet should see: its own targeted field, purge tags and the stored tag
/// list. `Cache-Control` and `CDN-Cache-Control` (aimed at every cache and CDN on the path,
/// RFC 9213) go on downstream.
pub fn strip_downstream(resp: &mut ResponseHeader) {
    for name in [
        CACHET_CACHE_CONTROL,
        SURROGATE_KEY,
        crate::storage::TAGS_HEADER,
    ] {
        resp.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_sdk::{DirectiveField, Response};
    use std::time::Duration;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).expect("header");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("valid header");
        }
        r
    }

    fn sdk_resp(headers: &[(&str, &str)]) -> Response {
        headers
            .iter()
            .fold(Response::builder(), |b, (n, v)| b.header(*n, *v))
            .build()
    }

    /// What a row expects the governing directives to say.
    struct Row {
        headers: &'static [(&'static str, &'static str)],
        field: Option<DirectiveField>,
        max_age: Option<u64>,
        no_store: bool,
    }

    const CC: Option<DirectiveField> = Some(DirectiveField::CacheControl);
    const CDN: Option<DirectiveField> = Some(DirectiveField::CdnCacheControl);
    const OWN: Option<DirectiveField> = Some(DirectiveField::CachetCacheControl);

    const fn row(
        headers: &'static [(&'static str, &'static str)],
        field: Option<DirectiveField>,
        max_age: Option<u64>,
        no_store: bool,
    ) -> Row {
        Row {
            headers,
            field,
            max_age,
            no_store,
        }
    }

    /// Tricky inputs on which the host and a plugin (the SDK) must read the same directives.
    const TABLE: &[Row] = &[
        // RFC 9111 §4.2.1: the first of duplicate directives wins, across lines too.
        row(
            &[("Cache-Control", "max-age=10, max-age=20")],
            CC,
            Some(10),
            false,
        ),
        row(
            &[
                ("Cache-Control", "max-age=10"),
                ("cache-control", "max-age=20"),
            ],
            CC,
            Some(10),
            false,
        ),
        // Spaces around `=` and odd case are tolerated in Cache-Control.
        row(
            &[("Cache-Control", "Max-Age = 30 , NO-STORE")],
            CC,
            Some(30),
            true,
        ),
        row(&[("Cache-Control", "max-age=\"40\"")], CC, Some(40), false),
        // Commas inside quoted strings do not split directives.
        row(
            &[("Cache-Control", "private=\"a, max-age=1\", max-age=5")],
            CC,
            Some(5),
            false,
        ),
        row(&[("Cache-Control", ",, , max-age=6,")], CC, Some(6), false),
        // A valid targeted field replaces Cache-Control entirely.
        row(
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=60"),
            ],
            CDN,
            Some(60),
            false,
        ),
        row(
            &[
                ("CDN-Cache-Control", "max-age=60"),
                ("Cachet-Cache-Control", "no-store"),
                ("Cache-Control", "max-age=1"),
            ],
            OWN,
            None,
            true,
        ),
        // Targeted fields are dictionaries: the last duplicate wins.
        row(
            &[("CDN-Cache-Control", "max-age=10, max-age=20")],
            CDN,
            Some(20),
            false,
        ),
        // Invalid targeted fields are ignored: wrong type, bad syntax, empty.
        row(
            &[
                ("CDN-Cache-Control", "max-age=\"60\""),
                ("Cache-Control", "max-age=5"),
            ],
            CC,
            Some(5),
            false,
        ),
        row(
            &[
                ("CDN-Cache-Control", "max-age = 60"),
                ("Cache-Control", "max-age=5"),
            ],
            CC,
            Some(5),
            false,
        ),
        row(
            &[
                ("CDN-Cache-Control", "no-store=1"),
                ("Cache-Control", "no-store"),
            ],
            CC,
            None,
            true,
        ),
        row(
            &[("CDN-Cache-Control", ""), ("Cache-Control", "max-age=5")],
            CC,
            Some(5),
            false,
        ),
        row(
            &[
                ("Cachet-Cache-Control", "MAX-AGE=1"),
                ("CDN-Cache-Control", "max-age=2"),
            ],
            CDN,
            Some(2),
            false,
        ),
        row(&[("CDN-Cache-Control", "max-age=1,")], None, None, false),
        // `?0` switches a directive off and is still a valid field.
        row(
            &[
                ("CDN-Cache-Control", "no-store=?0"),
                ("Cache-Control", "no-store"),
            ],
            CDN,
            None,
            false,
        ),
        row(&[], None, None, false),
    ];

    #[test]
    fn host_and_sdk_read_tricky_inputs_alike() {
        for (i, row) in TABLE.iter().enumerate() {
            let host = effective(&resp(row.headers));
            let sdk = sdk_resp(row.headers).directives();
            assert_eq!(host, sdk, "row {i}: {:?}", row.headers);
            assert_eq!(host.as_ref().map(|d| d.field), row.field, "row {i}");
            let cc = host.map(|d| d.cache_control).unwrap_or_default();
            assert_eq!(
                cc.max_age(),
                row.max_age.map(Duration::from_secs),
                "row {i}"
            );
            assert_eq!(cc.no_store(), row.no_store, "row {i}");
        }
    }

    #[test]
    fn only_cachets_own_fields_are_stripped() {
        let mut r = resp(&[
            ("Cache-Control", "max-age=1"),
            ("CDN-Cache-Control", "max-age=2"),
            ("Cachet-Cache-Control", "max-age=3"),
            ("Surrogate-Key", "a b"),
            (crate::storage::TAGS_HEADER, "a b"),
        ]);
        strip_downstream(&mut r);
        let names: Vec<_> = r.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["cache-control", "cdn-cache-control"]);
    }

    #[test]
    fn listed_private_fields_are_removed() {
        let mut r = resp(&[
            (
                "Cache-Control",
                "private=\"x-user, x-token\", no-cache=\"x-session\"",
            ),
            ("X-User", "alice"),
            ("X-Token", "t"),
            ("X-Session", "s"),
            ("X-Public", "p"),
        ]);
        let cc = effective(&r).expect("directives").cache_control;
        strip_listed_fields(&cc, &mut r);
        assert!(r.headers.contains_key("x-public"));
        for gone in ["x-user", "x-token", "x-session"] {
            assert!(!r.headers.contains_key(gone), "{gone}");
        }
    }
}
