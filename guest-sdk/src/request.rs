use crate::header_list::HeaderList;
use crate::{cookie, uri, CacheControl, Query};

/// The client request being served.
///
/// In a plugin this is the request the host handed the hook: exactly what the
/// origin is sent. Natively it is an in-memory value made with
/// [`Request::builder`]. Header names are matched case-insensitively.
#[derive(Debug)]
pub struct Request {
    method: String,
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderList,
}

impl Request {
    /// Starts an in-memory request: `GET /` with no headers.
    pub fn builder() -> RequestBuilder {
        RequestBuilder::default()
    }

    /// The request as the cache key hook and the origin would see it after
    /// `edits` (native only: in a plugin the host applies them).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn edited(&self, edits: &crate::RequestEdits) -> Request {
        let (path, query) = match &edits.path_and_query {
            Some(target) => match target.split_once('?') {
                Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
                None => (target.clone(), None),
            },
            None => (self.path.clone(), self.query.clone()),
        };
        Request {
            method: self.method.clone(),
            host: self.host.clone(),
            path,
            query,
            headers: HeaderList::from_lines(edits.headers.applied_to(&self.headers.lines())),
        }
    }

    /// The request a 0.3.0 hook received; its strings are moved, not copied.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn from_head(head: crate::__private::HostRequestHead) -> Self {
        Self {
            method: head.method,
            host: head.host,
            path: head.path,
            query: head.query,
            headers: HeaderList::Block(head.headers),
        }
    }

    /// Method as sent, e.g. `"GET"`.
    pub fn method(&self) -> String {
        self.method.clone()
    }

    /// Host the client asked for, lower-cased, with the port if one was sent (the
    /// scheme's default port and a trailing dot are dropped, for the origin too).
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// Path as received (still percent-encoded), without the query.
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// Raw query string without the `?`; `None` when the URI has no `?`.
    pub fn query(&self) -> Option<String> {
        self.query.clone()
    }

    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.first(name)
    }

    /// Every value of a header, one per header line, in the order received.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.all(name)
    }

    /// The names of the header fields the request carries, lower-cased, each once, in
    /// the order first seen: for policies that look for a kind of field (credentials, say)
    /// rather than one name.
    pub fn header_names(&self) -> Vec<String> {
        self.headers.names()
    }

    /// Whether the request carries this header at all.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// Value of the first cookie called `name` (names are case-sensitive),
    /// searched across every `Cookie` header line.
    pub fn cookie(&self, name: &str) -> Option<String> {
        cookie::find(&self.header_all("cookie"), name)
    }

    /// Whether a lenient origin could read a cookie called `name` here, in any spelling:
    /// any ASCII case, percent-encoded, separated by `,` or spaces as well as `;`. Test
    /// this, not [`Request::cookie`], before deciding that a request without such a cookie
    /// (a session) may share a cached answer: `Cookie: Session=alice` has no `session`
    /// for `cookie`, while ASP.NET reads one.
    pub fn may_carry_cookie(&self, name: &str) -> bool {
        cookie::may_carry(&self.header_all("cookie"), name)
    }

    /// The request's `Cache-Control` directives.
    pub fn cache_control(&self) -> CacheControl {
        CacheControl::parse_all(self.header_all("cache-control"))
    }

    /// The query split into parameters; empty when there is no query.
    pub fn query_params(&self) -> Query {
        Query::parse(self.query().as_deref().unwrap_or(""))
    }
}

/// Builds an in-memory [`Request`], for tests.
///
/// ```
/// let req = cachet_sdk::Request::builder()
///     .method("POST")
///     .uri("http://Example.com/a?b=1")
///     .header("Cookie", "x=1")
///     .build();
/// assert_eq!(req.host(), "example.com");
/// assert_eq!(req.path(), "/a");
/// assert_eq!(req.query().as_deref(), Some("b=1"));
/// assert_eq!(req.cookie("x").as_deref(), Some("1"));
/// ```
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: String,
    uri: String,
    headers: HeaderList,
}

impl Default for RequestBuilder {
    fn default() -> Self {
        Self {
            method: "GET".to_owned(),
            uri: "/".to_owned(),
            headers: HeaderList::default(),
        }
    }
}

impl RequestBuilder {
    /// Sets the method (default `GET`).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// An absolute URI (`http://host/path?query`) or an origin-form target
    /// (`/path?query`, host then taken from a `Host` header).
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = uri.into();
        self
    }

    /// Adds a header line (repeat for multiple values).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(name.into(), value.into());
        self
    }

    /// Finishes the request.
    pub fn build(self) -> Request {
        let parts = uri::split(&self.uri);
        // The proxy refuses a request whose URI authority and Host disagree, so here the
        // authority (when the test gives one) and Host name the same host.
        let host = parts
            .host
            .or_else(|| {
                // Without an absolute URI the scheme is the plain listener's.
                let host = self.headers.first("host")?;
                Some(uri::canonical_host(&host, "http"))
            })
            .unwrap_or_default();
        // The proxy writes the Host field in that spelling too.
        let mut headers = self.headers;
        if !host.is_empty() {
            headers.replace_values("host", &host);
        }
        Request {
            method: self.method,
            host,
            path: parts.path,
            query: parts.query,
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_loses_its_default_port_as_through_the_proxy() {
        let from_header = Request::builder()
            .uri("/x")
            .header("Host", "Shop.Test:80")
            .build();
        assert_eq!(from_header.host(), "shop.test");
        assert_eq!(from_header.header("host").as_deref(), Some("shop.test"));
        let elsewhere = Request::builder()
            .uri("/x")
            .header("Host", "shop.test:8080")
            .build();
        assert_eq!(elsewhere.host(), "shop.test:8080");
    }

    #[test]
    fn defaults_to_get_root() {
        let req = Request::builder().build();
        assert_eq!(req.method(), "GET");
        assert_eq!(req.host(), "");
        assert_eq!(req.path(), "/");
        assert_eq!(req.query(), None);
    }

    #[test]
    fn host_header_is_used_for_origin_form() {
        let req = Request::builder()
            .uri("/x")
            .header("Host", "Example.com:8080")
            .build();
        assert_eq!(req.host(), "example.com:8080");
    }

    #[test]
    fn edited_request_has_the_new_target_and_headers() {
        let req = Request::builder()
            .uri("http://example.com/api/items?id=1")
            .header("Cookie", "_ga=1")
            .build();
        let mut edits = crate::RequestEdits::default();
        edits.remove_header("cookie").rewrite_path("/items?id=1");
        let edited = req.edited(&edits);
        assert_eq!(edited.path(), "/items");
        assert_eq!(edited.query().as_deref(), Some("id=1"));
        assert_eq!(edited.header("cookie"), None);
        assert_eq!(edited.host(), "example.com");
    }

    #[test]
    fn uri_authority_beats_host_header() {
        let req = Request::builder()
            .uri("http://a.example/x")
            .header("host", "b.example")
            .build();
        assert_eq!(req.host(), "a.example");
    }

    #[test]
    fn headers_are_case_insensitive() {
        let req = Request::builder()
            .header("Authorization", "Bearer x")
            .header("accept", "a")
            .header("ACCEPT", "b")
            .build();
        assert!(req.has_header("authorization"));
        assert_eq!(req.header("AUTHORIZATION").as_deref(), Some("Bearer x"));
        assert_eq!(req.header_all("Accept"), ["a", "b"]);
        assert!(!req.has_header("cookie"));
    }

    #[test]
    fn cookies_are_found_across_header_lines() {
        let req = Request::builder()
            .header("cookie", "a=1; b=2")
            .header("Cookie", "session=abc")
            .build();
        assert_eq!(req.cookie("b").as_deref(), Some("2"));
        assert_eq!(req.cookie("session").as_deref(), Some("abc"));
        assert_eq!(req.cookie("Session"), None);
    }

    #[test]
    fn request_cache_control_and_query_params() {
        let req = Request::builder()
            .uri("/a?z=1&a=2")
            .header("Cache-Control", "no-cache")
            .build();
        assert!(req.cache_control().no_cache());
        assert_eq!(req.query_params().get("a"), Some("2"));
        assert!(Request::builder().build().query_params().is_empty());
    }
}
