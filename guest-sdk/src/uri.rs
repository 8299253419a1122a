//! Splits the URIs given to `Request::builder` into what the host reports.

/// The parts of a request target the host exposes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UriParts {
    /// Lower-cased authority without userinfo; `None` for origin-form targets.
    pub(crate) host: Option<String>,
    /// Never empty: an absolute URI without a path means `/`.
    pub(crate) path: String,
    pub(crate) query: Option<String>,
}

/// Accepts absolute URIs (`http://host/path?q`) and origin-form targets
/// (`/path?q`); the fragment, which clients never send, is dropped.
pub(crate) fn split(uri: &str) -> UriParts {
    let uri = uri.split_once('#').map_or(uri, |(before, _)| before);
    let (target, query) = match uri.split_once('?') {
        Some((target, query)) => (target, Some(query.to_owned())),
        None => (uri, None),
    };
    let (host, path) = match target.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            (Some(canonical_host(host, scheme)), path)
        }
        None => (None, target),
    };
    let path = if path.is_empty() { "/" } else { path };
    UriParts {
        host,
        path: path.to_owned(),
        query,
    }
}

/// A host as the proxy reports it for `scheme`: lower-cased, without trailing dots, and
/// without the scheme's default port (`site:80` and `site` are one site for http), another
/// port written as a plain number. What the proxy cannot read so is given as sent.
pub(crate) fn canonical_host(authority: &str, scheme: &str) -> String {
    let (name, port) = match authority.strip_prefix('[') {
        Some(literal) => match literal.find(']') {
            Some(end) => {
                let (name, rest) = authority.split_at(end + 2);
                (name, rest.strip_prefix(':'))
            }
            None => (authority, None),
        },
        None => match authority.rsplit_once(':') {
            Some((name, port)) => (name.trim_end_matches('.'), Some(port)),
            None => (authority.trim_end_matches('.'), None),
        },
    };
    let name = name.to_ascii_lowercase();
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    match port.filter(|p| !p.is_empty()).map(str::parse::<u16>) {
        None => name,
        Some(Ok(port)) if Some(port) == default_port => name,
        Some(Ok(port)) => format!("{name}:{port}"),
        Some(Err(_)) => authority.to_ascii_lowercase(),
    }
}

/// Whether an absolute URI names user information (`http://user@host/`), which the proxy
/// refuses with 400 before any policy sees the request. (Only the native testing module asks.)
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn has_userinfo(uri: &str) -> bool {
    uri.split_once("://").is_some_and(|(_scheme, rest)| {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        rest[..end].contains('@')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(host: Option<&str>, path: &str, query: Option<&str>) -> UriParts {
        UriParts {
            host: host.map(str::to_owned),
            path: path.to_owned(),
            query: query.map(str::to_owned),
        }
    }

    #[test]
    fn absolute_uri() {
        assert_eq!(
            split("http://Example.COM:8080/a/%41?b=1&c#frag"),
            parts(Some("example.com:8080"), "/a/%41", Some("b=1&c"))
        );
    }

    #[test]
    fn absolute_uri_without_path_or_with_userinfo() {
        assert_eq!(
            split("https://example.com"),
            parts(Some("example.com"), "/", None)
        );
        assert_eq!(
            split("http://user:pw@example.com/x?"),
            parts(Some("example.com"), "/x", Some(""))
        );
    }

    #[test]
    fn the_host_is_spelled_as_the_proxy_reports_it() {
        assert_eq!(
            split("http://Site.Test:80/").host.as_deref(),
            Some("site.test")
        );
        assert_eq!(
            split("https://site.test.:443/").host.as_deref(),
            Some("site.test")
        );
        assert_eq!(
            split("https://site.test:80/").host.as_deref(),
            Some("site.test:80")
        );
        assert_eq!(
            split("http://site.test:0080/").host.as_deref(),
            Some("site.test")
        );
        assert_eq!(
            split("http://site.test:/").host.as_deref(),
            Some("site.test")
        );
        assert_eq!(split("http://[::1]:80/").host.as_deref(), Some("[::1]"));
        assert_eq!(
            split("http://[::1]:8080/").host.as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(canonical_host("Site.Test:8080", "http"), "site.test:8080");
    }

    #[test]
    fn origin_form() {
        assert_eq!(split("/a?b=1"), parts(None, "/a", Some("b=1")));
        assert_eq!(split(""), parts(None, "/", None));
    }

    #[test]
    fn userinfo_is_only_in_an_absolute_uris_authority() {
        assert!(has_userinfo("http://user@example.com/"));
        assert!(has_userinfo("http://u:p@example.com"));
        assert!(!has_userinfo("http://example.com/a@b"));
        assert!(!has_userinfo("http://example.com?to=a@b"));
        assert!(!has_userinfo("/a@b"));
    }
}
