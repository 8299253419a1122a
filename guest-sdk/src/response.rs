use crate::header_list::HeaderList;
use crate::{CacheControl, ResponseDirectives};
use std::time::Duration;

/// The origin's response head (status and headers; the body stays in the host).
///
/// In a plugin this is the head the host handed the hook. Natively it is an
/// in-memory value made with [`Response::builder`]. Header names are matched
/// case-insensitively.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: HeaderList,
}

impl Response {
    /// Starts an in-memory response: status 200 with no headers.
    pub fn builder() -> ResponseBuilder {
        ResponseBuilder::default()
    }

    /// The response a 0.3.0 hook received.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn from_head(head: crate::__private::HostResponseHead) -> Self {
        Self {
            status: head.status,
            headers: HeaderList::Block(head.headers),
        }
    }

    /// Status code, e.g. `200`.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.first(name)
    }

    /// Every value of a header, one per header line, in the order received.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.all(name)
    }

    /// Whether the response carries this header at all.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The `Age` stated with the response (RFC 9111 §5.1): its first member, so `7200, 0`
    /// is 7200 s; `None` when absent or not a non-negative integer. A lifetime from
    /// `max-age` counts from the response's creation, so what is left of it is the
    /// lifetime minus this.
    pub fn age(&self) -> Option<Duration> {
        let field = self.header("age")?;
        let first = field.split(',').next()?.trim();
        crate::cache_control::parse_delta_seconds(first).map(Duration::from_secs)
    }

    /// The cache directives that govern this response and the field they came from:
    /// `Cachet-Cache-Control`, else `CDN-Cache-Control`, else `Cache-Control`, a targeted
    /// field counting only when valid (RFC 9213). The host makes the same choice.
    pub fn directives(&self) -> Option<ResponseDirectives> {
        ResponseDirectives::select(|name| self.header_all(name))
    }

    /// The directives that govern this response (see [`Response::directives`]); empty when
    /// none apply. The plain `Cache-Control` field alone is
    /// `CacheControl::parse_all(resp.header_all("cache-control"))`.
    pub fn cache_control(&self) -> CacheControl {
        self.directives()
            .map(|d| d.cache_control)
            .unwrap_or_default()
    }

    /// Whether the origin stated an explicit expiration time (RFC 9111
    /// §4.2.1): a `max-age` or `s-maxage` directive in the governing field, or an
    /// `Expires` header unless a targeted field governs (RFC 9213 §2.2).
    /// Values are not judged: a malformed `Expires` still counts, since it
    /// means "already expired".
    pub fn has_explicit_freshness(&self) -> bool {
        let has_expires = self.has_header("expires");
        match self.directives() {
            Some(directives) => directives.has_explicit_freshness(has_expires),
            None => has_expires,
        }
    }
}

/// Builds an in-memory [`Response`], for tests.
///
/// ```
/// let resp = cachet_sdk::Response::builder()
///     .status(404)
///     .header("Cache-Control", "max-age=60")
///     .build();
/// assert_eq!(resp.status(), 404);
/// assert!(resp.has_explicit_freshness());
/// ```
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    status: u16,
    headers: HeaderList,
}

impl Default for ResponseBuilder {
    fn default() -> Self {
        Self {
            status: 200,
            headers: HeaderList::default(),
        }
    }
}

impl ResponseBuilder {
    /// Sets the status (default `200`).
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a header line (repeat for multiple values).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(name.into(), value.into());
        self
    }

    /// Finishes the response.
    pub fn build(self) -> Response {
        Response {
            status: self.status,
            headers: self.headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_200_without_headers() {
        let resp = Response::builder().build();
        assert_eq!(resp.status(), 200);
        assert!(resp.header_all("cache-control").is_empty());
        assert!(!resp.has_explicit_freshness());
    }

    #[test]
    fn age_is_the_first_member_when_it_is_delta_seconds() {
        let age = |value: &str| Response::builder().header("Age", value).build().age();
        assert_eq!(age("30"), Some(Duration::from_secs(30)));
        assert_eq!(age("7200, 0"), Some(Duration::from_secs(7200)));
        assert_eq!(age("-1"), None);
        assert_eq!(age("1.5"), None);
        assert_eq!(Response::builder().build().age(), None);
    }

    #[test]
    fn cache_control_joins_every_header_line() {
        let resp = Response::builder()
            .header("Cache-Control", "public")
            .header("cache-control", "max-age=5")
            .build();
        let cc = resp.cache_control();
        assert!(cc.public());
        assert_eq!(cc.max_age(), Some(std::time::Duration::from_secs(5)));
    }

    #[test]
    fn explicit_freshness_sources() {
        let with = |name: &str, value: &str| Response::builder().header(name, value).build();
        assert!(with("Cache-Control", "s-maxage=10").has_explicit_freshness());
        assert!(with("Cache-Control", "max-age=0").has_explicit_freshness());
        assert!(with("Expires", "not a date").has_explicit_freshness());
        assert!(!with("Cache-Control", "public, no-cache").has_explicit_freshness());
        assert!(!with("Last-Modified", "Tue, 15 Nov 1994 12:45:26 GMT").has_explicit_freshness());
    }

    #[test]
    fn targeted_fields_govern_when_valid() {
        let resp = Response::builder()
            .header("Cache-Control", "no-store")
            .header("CDN-Cache-Control", "max-age=60")
            .build();
        let cc = resp.cache_control();
        assert!(!cc.no_store());
        assert_eq!(cc.max_age(), Some(std::time::Duration::from_secs(60)));
        assert!(resp.has_explicit_freshness());
        // A targeted field without a lifetime: Expires no longer counts.
        let resp = Response::builder()
            .header("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")
            .header("CDN-Cache-Control", "public")
            .build();
        assert!(!resp.has_explicit_freshness());
        // An invalid targeted field is ignored.
        let resp = Response::builder()
            .header("Cache-Control", "no-store")
            .header("Cachet-Cache-Control", "max-age=\"60\"")
            .build();
        assert!(resp.cache_control().no_store());
    }
}
