//! Per-request state carried between Pingora's phases.

use crate::policy::{PluginFault, PolicyLayer};
use crate::shadow::Shadow;
use crate::shutdown::InFlightGuard;
use crate::tenant::Tenant;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// What the policy decided for the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Route {
    /// Not decided yet (request_filter has not run or failed early).
    #[default]
    Undecided,
    /// Use the cache with this primary key.
    Cache,
    /// Go to the origin, no cache; the reason is reported in `Cache-Status`.
    Bypass(String),
    /// Answered without the origin (synthetic or error response).
    Answered(String),
}

#[derive(Default)]
pub struct RequestCtx {
    pub(crate) tenant: Option<Arc<Tenant>>,
    /// The plugin version this request started with (hot reload never
    /// changes it mid-request).
    pub(crate) policy: Option<Arc<PolicyLayer>>,
    /// The tenant's shadow plugin, when this request is in its sample.
    pub(crate) shadow: Option<Arc<Shadow>>,
    /// That request as the client sent it (the live plugin's edits land on the request).
    pub(crate) shadow_request: Option<Box<RequestHeader>>,
    pub(crate) route: Route,
    /// The full primary cache key (tenant namespace + plugin parts).
    pub(crate) key: Vec<u8>,
    /// The scheme the origin is told the client used (`forwarded::told_scheme`), read from
    /// the head as the client sent it.
    pub(crate) told_scheme: std::borrow::Cow<'static, str>,
    /// Why a response was not stored, when it was not.
    pub(crate) not_stored: Option<String>,
    pub(crate) stored: bool,
    pub(crate) fault: Option<PluginFault>,
    /// The outcome as reported (hit, miss, stale, bypass, error, answered).
    pub(crate) outcome: &'static str,
    /// An unsafe method: a success invalidates what is stored for its URL.
    pub(crate) invalidates: bool,
    /// Such a request as the client sent it, when the plugin's `on-request` edited it: the
    /// keys it invalidates are computed by running `on-request` on it again, as for a GET.
    pub(crate) unedited_request: Option<Box<RequestHeader>>,
    /// The request carries Authorization and the stored response did not allow sharing it.
    pub(crate) unshared_hit: bool,
    /// The L2 tier that answered a hit (`None`: L1, or not a hit).
    pub(crate) tier: Option<&'static str>,
    /// What the lean hit path read from the L2 tiers, for the full path's lookup.
    pub(crate) tier_read_ahead: Option<crate::storage::tiers::TierReadAhead>,
    /// The origin's 304 to a revalidation, whose fields pingora only partly merges.
    pub(crate) not_modified: Option<Box<ResponseHeader>>,
    /// That 304 again when its merged response was not stored: Pingora then sends the stored
    /// response with only its own part of the 304 merged, and response_filter merges the rest.
    pub(crate) unstored_not_modified: Option<Box<ResponseHeader>>,
    /// The origin's 304 named another representation: the stored response this client gets
    /// was not validated, and carries that 304's `ETag` and freshness (Pingora's merge).
    pub(crate) served_unvalidated: bool,
    /// The lookup found a stored response, stale: an origin failure then is a 504.
    pub(crate) found_stale: bool,
    /// That stale response is served as it is, the origin having failed to revalidate it
    /// moments ago (failing_origin.rs): `Cache-Status` reports it as served on error.
    pub(crate) held_stale: bool,
    /// The origin's `Age`, for a miss served from the stored head (which drops it).
    pub(crate) origin_age: Option<http::HeaderValue>,
    /// Fields a `no-cache="..."` directive named, kept out of the head this request stored
    /// and is served from: the client that asked still gets them.
    pub(crate) withheld_fields: Vec<(http::HeaderName, http::HeaderValue)>,
    /// When the request went to the origin (for the origin latency metric).
    pub(crate) origin_started: Option<std::time::Instant>,
    /// The final response head has no content (304, 204): body chunks are dropped.
    pub(crate) no_content: bool,
    /// This request's place among its HTTP/2 connection's requests at work.
    pub(crate) h2_work: Option<crate::connection::H2WorkTurn>,
    /// Purges of the key remembered while the origin answers (`response_cache_filter`).
    pub(crate) fill_watch: Option<crate::storage::FillWatch>,
    /// When the request's head was read (`new_ctx`): the wait for a turn at the origin ends
    /// `queue_timeout` after it, however the time went (a cache lock wait included).
    pub(crate) arrived: Option<std::time::Instant>,
    /// The origin's answer was counted in the latency metric.
    pub(crate) origin_timed: bool,
    /// The status of the origin's final response (`fwd-status`): a range or a revalidation
    /// makes the client's differ.
    pub(crate) origin_status: Option<u16>,
    /// The `[tenant.backends]` entry the plugin picked (None: the tenant's upstream).
    pub(crate) backend: Option<usize>,
    /// This HTTP/2 request's head was lent to its stale-while-revalidate refresh
    /// (`h2_refresh`) and must be given back before the response.
    pub(crate) refresh_handed_off: bool,
    /// The plugin asked for `on-deliver` on this request's response.
    pub(crate) deliver: bool,
    /// The plugin's edits to this request's origin response, applied to what is stored and,
    /// here, to what is served.
    pub(crate) response_edits: Vec<crate::policy::HeaderEdit>,
    /// The plugin's answer to an origin 5xx, written by `fail_to_proxy`.
    pub(crate) error_answer: Option<crate::policy::SyntheticResponse>,
    /// Deadline and retries of the exchange with the origin.
    pub origin: crate::upstream::OriginAttempts,
    /// Counts this request as in flight until it is dropped with the context.
    pub in_flight: Option<InFlightGuard>,
    /// The front planned this request before handing it to Pingora (`request::resume`).
    pub(crate) planned: Option<Box<super::request::Planned>>,
}
