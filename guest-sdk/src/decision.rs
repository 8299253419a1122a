//! What a policy answers: plain Rust values the SDK converts for the host.

use std::time::Duration;

/// What to do with a request before the cache is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDecision {
    /// Look the request up in the cache (and fill it on a miss).
    Cache,
    /// Forward to the origin without reading or writing the cache. The reason
    /// shows up in the `Cache-Status` detail.
    Bypass(String),
    /// Answer with this response; the origin is not contacted.
    Respond(SyntheticResponse),
}

impl RequestDecision {
    /// Shorthand for [`RequestDecision::Bypass`].
    pub fn bypass(reason: impl Into<String>) -> Self {
        Self::Bypass(reason.into())
    }

    /// Answers with a `text/plain` response; see [`SyntheticResponse::text`].
    /// Build a [`SyntheticResponse`] yourself for other headers or bodies.
    pub fn respond(status: u16, body: impl Into<String>) -> Self {
        Self::Respond(SyntheticResponse::text(status, body))
    }
}

/// A response the plugin answers with itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticResponse {
    /// HTTP status code.
    pub status: u16,
    /// `(name, value)` pairs, sent in this order.
    pub headers: Vec<(String, String)>,
    /// Response body bytes.
    pub body: Vec<u8>,
}

impl SyntheticResponse {
    /// An empty response with this status and no headers.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response with this body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// Adds a header (repeat for multiple values).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// What to do with an origin response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseDecision {
    /// Store with these lifetimes, overriding the origin's freshness. The host
    /// still refuses responses that are unsafe to share.
    Store(StoreDirective),
    /// Follow the origin's headers under RFC 9111 shared-cache rules.
    FollowOrigin,
    /// Do not store; the string is the reason.
    NoStore(String),
    /// Do not store, and send requests for this key straight to the origin
    /// (no cache lookup, no waiting on the cache lock) for this long:
    /// Varnish's hit-for-pass. Counted in whole seconds.
    PassFor(Duration),
}

impl ResponseDecision {
    /// Shorthand for [`ResponseDecision::PassFor`].
    pub fn pass_for(duration: Duration) -> Self {
        Self::PassFor(duration)
    }

    /// Store for `ttl`, with no stale serving and no tags.
    pub fn store(ttl: Duration) -> Self {
        Self::Store(StoreDirective::new(ttl))
    }

    /// Shorthand for [`ResponseDecision::NoStore`].
    pub fn no_store(reason: impl Into<String>) -> Self {
        Self::NoStore(reason.into())
    }
}

/// How long the host may keep a response.
///
/// The host counts in whole seconds: fractions are dropped and lifetimes
/// beyond `u32::MAX` seconds are capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDirective {
    /// Freshness lifetime.
    pub ttl: Duration,
    /// After expiry, how long the stale copy is served while one background
    /// request refreshes it.
    pub stale_while_revalidate: Duration,
    /// After expiry, how long the stale copy is served when the origin fails.
    pub stale_if_error: Duration,
    /// Tags (surrogate keys) for purging groups of entries.
    pub tags: Vec<String>,
}

impl StoreDirective {
    /// Fresh for `ttl`, with no stale serving and no tags.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            tags: Vec::new(),
        }
    }

    /// Sets [`StoreDirective::stale_while_revalidate`].
    pub fn with_stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Sets [`StoreDirective::stale_if_error`].
    pub fn with_stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// Adds a purge tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

impl From<StoreDirective> for ResponseDecision {
    fn from(directive: StoreDirective) -> Self {
        Self::Store(directive)
    }
}

/// Whole seconds as the host expects them: fractions dropped, capped at `u32::MAX`.
pub(crate) fn whole_seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_response_sets_content_type_and_body() {
        let resp = SyntheticResponse::text(403, "forbidden\n");
        assert_eq!(resp.status, 403);
        assert_eq!(
            resp.headers,
            [(
                "content-type".to_string(),
                "text/plain; charset=utf-8".to_string()
            )]
        );
        assert_eq!(resp.body, b"forbidden\n");
    }

    #[test]
    fn respond_shorthand_is_a_text_response() {
        assert_eq!(
            RequestDecision::respond(403, "forbidden\n"),
            RequestDecision::Respond(SyntheticResponse::text(403, "forbidden\n"))
        );
    }

    #[test]
    fn store_directive_builder_fills_every_field() {
        let directive = StoreDirective::new(Duration::from_secs(10))
            .with_stale_while_revalidate(Duration::from_secs(60))
            .with_stale_if_error(Duration::from_secs(300))
            .with_tag("api");
        assert_eq!(
            ResponseDecision::from(directive),
            ResponseDecision::Store(StoreDirective {
                ttl: Duration::from_secs(10),
                stale_while_revalidate: Duration::from_secs(60),
                stale_if_error: Duration::from_secs(300),
                tags: vec!["api".to_string()],
            })
        );
    }

    #[test]
    fn seconds_drop_fractions_and_saturate() {
        assert_eq!(whole_seconds(Duration::from_millis(1999)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
