use crate::{defaults, Request, RequestDecision, Response, ResponseDecision, TestVector};

/// A cache policy: the three hooks the proxy calls for every request, plus
/// the test vectors it declares about itself.
///
/// Each hook has a default (see [`defaults`]), so `impl Policy for P {}` is
/// already a complete, RFC 9111-following policy.
///
/// The proxy may reuse one plugin instance for many requests, and
/// [`export_policy!`](crate::export_policy) builds the policy value once per
/// instance, so state kept in `self` lives across requests.
pub trait Policy {
    /// Decides whether the request uses the cache, bypasses it, or is answered
    /// by the plugin. Default: [`defaults::on_request`].
    fn on_request(&self, req: &Request) -> RequestDecision {
        defaults::on_request(req)
    }

    /// Returns the plugin's parts of the cache key. The host prefixes the
    /// tenant and length-prefixes every part, so parts cannot run together.
    /// Default: [`defaults::cache_key`].
    fn cache_key(&self, req: &Request) -> Vec<String> {
        defaults::cache_key(req)
    }

    /// Decides whether and how long an origin response may be stored.
    /// Default: [`ResponseDecision::FollowOrigin`].
    fn on_response(&self, req: &Request, resp: &Response) -> ResponseDecision {
        let _ = (req, resp);
        ResponseDecision::FollowOrigin
    }

    /// The value the cache compares for `name`, a request header the stored
    /// response varies on (`Vary`), so that equivalent requests share one
    /// variant — e.g. bucket `Accept-Encoding` into "br", "gzip" or
    /// "identity". `name` is lower-case. Default: `None`, the host's own
    /// normalisation (lower-cased, whitespace collapsed).
    fn vary_value(&self, req: &Request, name: &str) -> Option<String> {
        let _ = (req, name);
        None
    }

    /// Sample exchanges and the decisions this policy must make for them.
    /// The host runs them against a fresh instance, with an empty tenant
    /// config, before a new plugin version may serve, and refuses the version
    /// on any mismatch; `testing::check_self_tests` runs them natively.
    /// Default: none.
    fn self_test(&self) -> Vec<TestVector> {
        Vec::new()
    }
}
