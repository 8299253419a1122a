use crate::{
    defaults, HeaderEdits, OriginFailure, Request, RequestDecision, RequestEdits, Response,
    ResponseDecision, SyntheticResponse, TestVector,
};

/// A cache policy: the hooks the proxy calls for every request, plus the test
/// vectors it declares about itself.
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

    /// Edits the request before the cache key is computed and the origin is
    /// contacted (headers, path and query), picks a backend, and asks for
    /// [`Policy::on_deliver`]. Runs right after [`Policy::on_request`] on the
    /// same, unedited request; [`Policy::cache_key`] and the origin then see
    /// the edited one. Not applied when `on_request` answers itself.
    ///
    /// A background refresh (stale-while-revalidate) runs the hooks again on
    /// the request as edited: edits must leave an already edited request as
    /// it is (e.g. rewrite `/api/x` to `/v2/x`, never `/x` to `/v2/x`), or
    /// the refresh would fill another key. Default: no edits.
    fn edit_request(&self, req: &Request, edits: &mut RequestEdits) {
        let _ = (req, edits);
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

    /// Edits the origin's response before the host judges and stores it:
    /// a field removed here (e.g. `Set-Cookie` on a static file, which the
    /// host otherwise refuses to store) is neither stored nor served. Runs
    /// with [`Policy::on_response`], on the unedited response. Default: none.
    fn edit_response(&self, req: &Request, resp: &Response, edits: &mut HeaderEdits) {
        let _ = (req, resp, edits);
    }

    /// Edits the response the client gets, hits included (e.g. the browser's
    /// `Cache-Control`, apart from the cache's TTL). Called only for requests
    /// whose [`Policy::edit_request`] called
    /// [`RequestEdits::edit_delivery`]. Default: none.
    fn on_deliver(&self, req: &Request, resp: &Response, edits: &mut HeaderEdits) {
        let _ = (req, resp, edits);
    }

    /// The origin failed (unreachable, timeout or 5xx) and nothing stale can
    /// be served: answer with a response of the policy's own (e.g. a branded
    /// 503 page), or `None` for the host's error. Default: `None`.
    fn on_error(&self, req: &Request, failure: OriginFailure) -> Option<SyntheticResponse> {
        let _ = (req, failure);
        None
    }

    /// The value the cache compares for `name`, a request header the stored
    /// response varies on (`Vary`), so that equivalent requests share one
    /// variant — e.g. `Accept-Encoding` with its codings sorted. Requests the
    /// origin may answer differently must not share one. `name` is
    /// lower-case. Default: `None`, the host's own comparison (the Accept
    /// fields case- and space-insensitively, any other field exactly).
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
