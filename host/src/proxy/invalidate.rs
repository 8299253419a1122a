//! Invalidation after unsafe requests (RFC 9111 §4.4): a successful POST, PUT, DELETE, ...
//! removes what is stored for its URL and for a same-origin `Location` / `Content-Location`,
//! under the key the tenant's plugin computes for a GET of that URL.

use super::ctx::RequestCtx;
use super::ProxyState;
use crate::policy::{PluginFault, PolicyLayer, RequestDecision};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};

/// Methods that may change the target resource. Unknown methods count as unsafe.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The full cache keys the tenant's plugin uses for a GET of the request's URL: the GET with
/// the request's cookies, and the GET without them (none when the plugin would not cache
/// it), each under both schemes and the one the request claims. `Authorization` is dropped:
/// it holds the admin token of a PURGE, or credentials whose responses are not shared. Both
/// cookie forms count: a plugin that bypasses requests with a session cookie still has a
/// shared entry for the URL, and one that keys on a cookie (a language) has an entry per
/// value, reached only with that cookie.
pub fn get_keys(
    tenant: &str,
    policy: &PolicyLayer,
    req: &RequestHeader,
    told_scheme: &str,
) -> Result<Vec<Vec<u8>>, PluginFault> {
    let mut schemes = super::cache_key::SCHEMES.to_vec();
    if !schemes.contains(&told_scheme) {
        schemes.push(told_scheme);
    }
    let mut get = req.clone();
    get.set_method(Method::GET);
    get.remove_header(&http::header::AUTHORIZATION);
    let mut keys = Vec::with_capacity(4);
    if get.headers.contains_key(http::header::COOKIE) {
        keys.extend(cached_key(tenant, policy, &get, &schemes)?);
        get.remove_header(&http::header::COOKIE);
    }
    for key in cached_key(tenant, policy, &get, &schemes)? {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// The keys under each of `schemes`: a URL purged or invalidated goes from the copies HTTP
/// and HTTPS clients are served (and those of the scheme this request claims).
fn cached_key(
    tenant: &str,
    policy: &PolicyLayer,
    get: &RequestHeader,
    schemes: &[&str],
) -> Result<Vec<Vec<u8>>, PluginFault> {
    // Each scheme's key holds the Host as spelled for it (`site:443` is `site` for https
    // only): the plugin is asked once per spelling.
    let mut keys = Vec::with_capacity(schemes.len());
    let mut asked: Vec<(Option<String>, Option<Vec<String>>)> = Vec::new();
    for scheme in schemes {
        let host = get
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let spelled = host.and_then(|h| super::request_fields::canonical_authority(h, scheme));
        let parts = match asked.iter().find(|(seen, _)| *seen == spelled) {
            Some((_, parts)) => parts.clone(),
            None => {
                let mut request = get.clone();
                if let Some(host) = &spelled {
                    let _ = request.insert_header(http::header::HOST, host.as_str());
                }
                let parts = match policy.decide_request(&request)? {
                    (RequestDecision::Cache, Some(parts)) => Some(parts),
                    _ => None,
                };
                asked.push((spelled, parts.clone()));
                parts
            }
        };
        if let Some(parts) = parts {
            let key = super::primary_key(tenant, scheme, &parts);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// Purges what a successful unsafe request invalidated; returns how many keys were found.
/// A plugin fault while computing a key is logged and counted; that key is not purged.
pub fn after_response(
    state: &ProxyState,
    req: &RequestHeader,
    resp: &ResponseHeader,
    ctx: &RequestCtx,
) -> usize {
    if !ctx.invalidates || !(200..400).contains(&resp.status.as_u16()) {
        return 0;
    }
    let (Some(tenant), Some(policy)) = (&ctx.tenant, &ctx.policy) else {
        return 0;
    };
    let mut targets = vec![req.clone()];
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        if let Some(target) = resp
            .headers
            .get(&name)
            .and_then(|v| same_origin_request(req, v.as_bytes()))
        {
            targets.push(target);
        }
    }
    let mut purged = 0;
    for target in &targets {
        match get_keys(tenant.name(), policy, target, &ctx.told_scheme) {
            Ok(keys) => {
                for key in keys {
                    let key = super::cache_key::storage_key(key, tenant.name());
                    // A tier that could not record it has logged why; memory is purged anyway.
                    // Nobody waits for it to reach the other nodes: this is a client's request.
                    let found = state.cache.storage.purge_key(&key);
                    purged += usize::from(found.map_or(true, |p| p.affected > 0));
                }
            }
            Err(fault) => {
                tracing::warn!(
                    tenant = tenant.name(),
                    kind = fault.kind(),
                    path = target.uri.path(),
                    "plugin fault while invalidating after {}: {fault}; stored response kept",
                    req.method
                );
                state.record_fault(tenant.name(), &fault);
            }
        }
    }
    purged
}

/// A GET for `location` when it names the same origin as `req` (an absolute path, or an
/// absolute URL with the request's host). Relative paths without a leading slash are ignored.
fn same_origin_request(req: &RequestHeader, location: &[u8]) -> Option<RequestHeader> {
    let uri: http::Uri = std::str::from_utf8(location).ok()?.trim().parse().ok()?;
    if let Some(authority) = uri.authority() {
        // Both as the key spells them for the location's scheme (`site:80` is `site`).
        let scheme = uri.scheme_str().unwrap_or("http");
        let spelled = |text: &str| {
            super::request_fields::canonical_authority(text, scheme)
                .unwrap_or_else(|| text.to_owned())
        };
        let host = crate::policy::request_host(req);
        if !spelled(authority.as_str()).eq_ignore_ascii_case(&spelled(&host)) {
            return None;
        }
    }
    let path = uri.path_and_query()?.as_str();
    if !path.starts_with('/') {
        return None;
    }
    let mut target = RequestHeader::build(Method::GET, path.as_bytes(), None).ok()?;
    if let Some(host) = req.headers.get(http::header::HOST) {
        target
            .insert_header(http::header::HOST, host.clone())
            .ok()?;
    }
    Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/items", None).expect("request");
        r.insert_header("host", "example.com").expect("valid");
        r
    }

    #[test]
    fn unsafe_methods() {
        for m in ["POST", "PUT", "DELETE", "PATCH", "FROB"] {
            assert!(is_unsafe(
                &Method::from_bytes(m.as_bytes()).expect("method")
            ));
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!is_unsafe(&m));
        }
    }

    #[test]
    fn only_same_origin_locations_count() {
        let path = |l: &str| same_origin_request(&req(), l.as_bytes()).map(|r| r.uri.to_string());
        assert_eq!(path("/items/7"), Some("/items/7".into()));
        assert_eq!(
            path("http://EXAMPLE.com/items/7?x=1"),
            Some("/items/7?x=1".into())
        );
        assert_eq!(path("http://other.example/items/7"), None);
        assert_eq!(path("items/7"), None);
    }
}
