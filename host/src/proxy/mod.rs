//! cachet's `ProxyHttp`: one file per phase, each calling one policy hook.
//!
//! Pingora's cache hooks that run synchronously (`request_cache_filter`,
//! `cache_key_callback`, `response_cache_filter`) use what `request_filter`
//! put in the per-request context; plugin calls are synchronous wasmtime
//! calls, so `on-response` runs directly in `response_cache_filter`, where
//! a 304 revalidation has already merged the stored headers.

mod cache_key;
pub mod cache_status;
mod conditional;
mod ctx;
mod deliver;
pub mod directives;
mod explain;
mod failing_origin;
mod field_presence;
mod forwarded;
mod framing;
mod freshness;
mod h2_refresh;
mod hop_by_hop;
mod http_date;
mod interim;
mod invalidate;
mod lean_hit;
mod list_field;
mod only_if_cached;
mod origin_error;
mod override_fields;
pub mod purge;
mod ranges;
mod request;
pub(crate) use lean_hit::{put_status_line, timed_pieces, HeadShape, LeanResponse, TIMED_PIECE};
pub(crate) use request::{plan_front, plan_head, ClientConn, FrontStep, HeadPlan, Planned};
pub(crate) mod request_fields;
mod respond;
mod response;
mod revalidation;
mod shadowing;
mod shared;
mod state;
mod target;
pub(crate) use request_fields::is_usual_field_name;
pub(crate) use target::{has_bare_lf, refuse_userinfo};
mod uncacheable;
mod vary;

pub use cache_key::primary_key;
pub use ctx::RequestCtx;
pub(crate) use ctx::Route;
pub use explain::{explain, ExplainQuery};
pub(crate) use framing::status_has_content;
pub use state::{CacheBackend, ProxyState};
pub(crate) use uncacheable::remember_uncacheable;
pub use uncacheable::{TenantsUncacheable, UncacheableKeys};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use pingora_cache::key::HashBinary;
use pingora_cache::predictor::CacheablePredictor;
use pingora_cache::storage::HitHandler;
use pingora_cache::{CacheKey, CacheMeta, CacheOptionOverrides, ForcedFreshness, RespCacheable};
use std::sync::Arc;
use std::time::Duration;

/// The outcome a background revalidation is counted and logged under.
const BACKGROUND_REFRESH: &str = "refresh";

/// Counts a finished request and writes its access log line (the proxy's `logging` phase,
/// and the front for the hits it answers itself).
pub(crate) fn record_request(
    state: &ProxyState,
    ctx: &RequestCtx,
    req: &pingora::http::RequestHeader,
    status: u16,
    error: Option<String>,
) {
    let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
    let outcome = if ctx.outcome.is_empty() {
        "error"
    } else {
        ctx.outcome
    };
    match &ctx.tenant {
        Some(known) => known.requests.count(outcome),
        None => crate::metrics::request(tenant, outcome),
    }
    if !state.access_log.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let reason = match &ctx.route {
        Route::Bypass(r) | Route::Answered(r) => r.as_str(),
        _ => ctx.not_stored.as_deref().unwrap_or(""),
    };
    crate::access_log::write(&crate::access_log::AccessLine {
        tenant,
        method: req.method.as_str(),
        path: req.uri.path(),
        status,
        cache: outcome,
        reason,
        error,
    });
}

/// A request the front planned (`request::resume`) carries its context: it replaces the one
/// Pingora made, if Pingora holds the same request.
fn adopt(session: &Session, ctx: &mut RequestCtx, handed: crate::front::Handover) {
    if handed.planned.fits(session) {
        *ctx = handed.ctx;
        ctx.planned = Some(handed.planned);
    }
}

/// The proxy: tenants, their policies, and the shared cache.
#[derive(Clone)]
pub struct CachetProxy {
    pub state: Arc<ProxyState>,
}

impl CachetProxy {
    pub fn new(state: Arc<ProxyState>) -> Self {
        Self { state }
    }
}

#[async_trait]
impl ProxyHttp for CachetProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            in_flight: Some(self.state.drain.enter()),
            arrived: Some(std::time::Instant::now()),
            ..RequestCtx::default()
        }
    }

    /// The head is parsed: later reads are body or the next request, which
    /// may already be pipelined (answered in order, RFC 9112 §9.3.2).
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        if session.is_http2() {
            if let Some(handed) = crate::front::take_handover(session.req_header_mut()) {
                adopt(session, ctx, handed);
            }
        }
        crate::connection::head_complete(session);
        session.set_pipelining_enabled(true);
        // A client that shuts down its sending side after a complete request still waits
        // for the answer (as HAProxy and Varnish deliver it): Pingora would abort on that
        // end of input. A client that is really gone makes the response's write fail.
        session.set_abort_on_close(false);
        // A client that stops taking the response (a full TCP window, or an HTTP/2 window
        // held at 0) must not hold its connection slot for ever.
        session.set_write_timeout(Some(self.state.client_write_timeout));
        if self.state.drain.draining() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        request::request_filter(self, session, ctx).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        if ctx.route != Route::Cache {
            return Ok(());
        }
        let backend = &self.state.cache;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(backend.lock_timeout);
        overrides.max_lock_retries = Some(3);
        let tenant = ctx.tenant.as_ref().map_or("", |t| t.name());
        let predictor = backend
            .uncacheable
            .map(|records| records.of(tenant) as &'static (dyn CacheablePredictor + Sync));
        // A request with credentials takes no cache lock: its answer is rarely storable
        // (only when the origin says it may be shared), and requests queued behind it would
        // all give up the lock and go to the origin. It never waits on others' fills either.
        let lock = (!shared::authorized(session.req_header())).then_some(backend.lock);
        session
            .cache
            .enable(backend.storage, None, predictor, lock, Some(overrides));
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        let tenant = ctx.tenant.as_ref().map_or("", |t| t.name());
        let mut key = cache_key::storage_key(ctx.key.clone(), tenant);
        if let Some(read_ahead) = ctx.tier_read_ahead.take() {
            read_ahead.attach(&mut key);
        }
        Ok(key)
    }

    /// Enforces the shared-cache rule for `Authorization` on every hit, fresh or stale.
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<ForcedFreshness>> {
        ctx.tier = crate::storage::tiers::tier_of(hit_handler);
        if shared::may_serve(session.req_header(), meta.response_header()) {
            ctx.found_stale = !is_fresh;
            if !is_fresh && self.state.recent_failures.holds(&session.cache, meta) {
                // Served as found, taking no cache lock: a queue behind a failed fill would
                // otherwise pass the lock from one request to the next, each failing at once,
                // and those woken more than `max_lock_retries` times got 504s.
                ctx.held_stale = true;
                return Ok(Some(ForcedFreshness::ForceFresh));
            }
            return Ok(None);
        }
        // A miss, not a revalidation of the stored response: an origin failure is the
        // origin's (502), not a stored response that could not be revalidated (504).
        ctx.unshared_hit = true;
        Ok(Some(ForcedFreshness::ForceMiss))
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<bool> {
        Ok(conditional::not_modified(session.req_header(), resp))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let policy = ctx.policy.clone();
        let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name()).to_owned();
        vary::variance(meta, req, |names| {
            let Some(policy) = policy else {
                return vec![None; names.len()];
            };
            policy.vary_values(req, names).unwrap_or_else(|fault| {
                // A faulting plugin only loses its say on variants.
                tracing::warn!(
                    tenant,
                    kind = fault.kind(),
                    "plugin fault in vary-value: {fault}"
                );
                self.state.record_fault(&tenant, &fault);
                vec![None; names.len()]
            })
        })
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        crate::upstream::check_deadline(&ctx.origin, crate::upstream::Direction::Receiving)?;
        if !upstream_response.status.is_informational() {
            ctx.origin_status = Some(upstream_response.status.as_u16());
            if let Some(tenant) = &ctx.tenant {
                tenant.upstream.answered(&ctx.origin);
            }
            // Read, not taken: response_cache_filter compares it with the last purge. Pingora
            // may run this filter twice on a 304: it is timed once.
            let started = ctx
                .origin_started
                .filter(|_| !std::mem::replace(&mut ctx.origin_timed, true));
            if let Some(started) = started {
                let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
                crate::metrics::origin_response(
                    tenant,
                    upstream_response.status.as_u16(),
                    started.elapsed(),
                );
            }
        }
        let switched = upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if switched
            && !session
                .req_header()
                .headers
                .contains_key(http::header::UPGRADE)
        {
            // RFC 9110 §15.2.2: only to a request that asked for it. Relayed, the client would
            // get the origin's raw bytes after it.
            return Err(Error::create(
                ErrorType::InvalidHTTPHeader,
                pingora::ErrorSource::Upstream,
                Some("101 to a request that asked for no upgrade".into()),
                None,
            ));
        }
        if let Err(reason) = framing::check_origin_response(upstream_response) {
            return Err(Error::create(
                ErrorType::InvalidHTTPHeader,
                pingora::ErrorSource::Upstream,
                Some(reason.into()),
                None,
            ));
        }
        if switched {
            ctx.origin.became_tunnel();
        }
        // Kept for response_cache_filter, which only sees pingora's partial merge.
        if ctx.route == Route::Cache && upstream_response.status == http::StatusCode::NOT_MODIFIED {
            let mut not_modified = upstream_response.clone();
            // Merged in, the fields its `Connection` names would outlive the `Connection`
            // that names them (the stored one's is kept) and be stored and served.
            hop_by_hop::strip(&mut not_modified);
            revalidation::date_if_undated(&mut not_modified);
            ctx.not_modified = Some(Box::new(not_modified));
        }
        ctx.origin_age = upstream_response.headers.get(http::header::AGE).cloned();
        origin_error::on_origin_status(self, session, upstream_response, ctx)
    }

    /// A request going to the origin after the cache could not answer it.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        only_if_cached::allow_origin(session, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // `idle_timeout = "0s"` means no keep-alive, but Pingora pools a connection whatever
        // its idle timeout (which only bounds the wait), so the origin is asked to close it.
        // Not an upgrade: `close` would replace its `Connection: Upgrade`, and an upgraded
        // connection is never pooled anyway.
        let no_keepalive = ctx
            .tenant
            .as_ref()
            .is_some_and(|t| t.config.origin.idle_timeout.is_zero());
        if no_keepalive && !session.is_upgrade_req() {
            upstream_request.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(tenant) = &ctx.tenant else {
            return Error::e_explain(ErrorType::InternalError, "no tenant chosen");
        };
        // The origin failed to revalidate this variant moments ago and its stale copy may be
        // served on error: failing at once serves it now (failing_origin.rs).
        if session.cache.can_serve_stale_error() {
            let key = session.cache.maybe_cache_key().map(failing_origin::key_of);
            if key.is_some_and(|key| self.state.recent_failures.failed_recently(key)) {
                return Err(Error::new_up(failing_origin::MEMO_ERROR));
            }
        }
        // An HTTP/2 client that resets its stream while queued gives up its place: it must
        // not reach the origin for nobody (HTTP/1 has no such signal: an end of input may be
        // a half-close from a client still waiting).
        let client_gone = async {
            match session.downstream_session.watch_h2_stream_close() {
                Some(reset) => {
                    let _ = reset.await;
                }
                None => std::future::pending().await,
            }
        };
        let arrived = ctx.arrived.unwrap_or_else(std::time::Instant::now);
        if let Err(e) = tenant
            .upstream
            .admit(&tenant.config, &mut ctx.origin, arrived, client_gone)
            .await
        {
            if e == crate::upstream::NoTurn::Busy {
                ctx.not_stored = Some(crate::upstream::ORIGIN_BUSY_DETAIL.into());
            }
            return Err(e.into_error());
        }
        // Watched before the start time is taken: a purge between the two would otherwise
        // concern this fill and not be remembered.
        if let Some(key) = session.cache.maybe_cache_key() {
            use pingora_cache::key::CacheHashKey;
            let tenant = ctx.tenant.as_ref().map_or("", |t| t.name());
            ctx.fill_watch = Some(
                self.state
                    .cache
                    .storage
                    .watch_fill(tenant, key.primary_bin()),
            );
        }
        ctx.origin_started = Some(std::time::Instant::now());
        if session.is_upgrade_req() {
            ctx.origin.asks_to_upgrade();
        }
        let key = if ctx.key.is_empty() {
            session.req_header().uri.path().as_bytes()
        } else {
            &ctx.key
        };
        tenant
            .upstream
            .peer(&tenant.config, &mut ctx.origin, key, ctx.backend)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        match &ctx.tenant {
            Some(tenant) => tenant
                .upstream
                .after_connect_failure(session, &mut ctx.origin, e),
            None => e,
        }
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        connection_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        let Some(tenant) = &ctx.tenant else {
            return e;
        };
        tenant.upstream.after_error(
            &tenant.config,
            session,
            &mut ctx.origin,
            e,
            connection_reused,
        )
    }

    /// Pingora's error answer, except that an origin that timed out is a
    /// 504 Gateway Timeout rather than a 502.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> pingora::proxy::FailToProxy {
        if let Some(status) = origin_error::answer(self, session, e, ctx).await {
            return pingora::proxy::FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let code = match crate::upstream::failure_status(e) {
            // A stored response the origin did not revalidate, and that may not be served
            // stale (must-revalidate, no-cache...): RFC 9111 §5.2.2.2 asks for a 504.
            502 if ctx.found_stale => 504,
            code => code,
        };
        if code > 0 {
            // Pingora's error answer, with cachet's Cache-Status member like every response.
            let mut resp = pingora::protocols::http::ServerSession::generate_error(code);
            // Pingora names itself in `Server`; cachet's own answers name no software.
            resp.remove_header(&http::header::SERVER);
            let member = cache_status::error_value(&session.cache, ctx);
            let written = match cache_status::append_member(&mut resp, member) {
                Ok(()) => {
                    session
                        .write_error_response(resp, bytes::Bytes::new())
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(write) = written {
                tracing::debug!("cannot send the error response: {write}");
            }
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // An HTTP/2 body may end with an empty DATA frame. Pingora writes an empty last
        // piece to a chunked HTTP/1.1 origin as a zero-size chunk, which is the body's end,
        // and then the end again: the origin reads that as a second request, and every later
        // answer on the pooled connection goes to the wrong request (and into the cache).
        // Without a piece, the end is written once.
        if end_of_stream && body.as_ref().is_some_and(|b| b.is_empty()) {
            *body = None;
        }
        // An origin that reads an upload slowly keeps each write under write_timeout: the
        // whole exchange's deadline is checked here, before each piece goes on.
        crate::upstream::check_deadline(&ctx.origin, crate::upstream::Direction::Sending)
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        // A body going into the cache is not cut at `total_timeout`: Pingora reads the origin
        // at the pace of the client that asked first (it awaits each write to that client
        // before reading on), so one slow client made a prompt origin miss the deadline, and
        // every client reading the fill as it was stored got it truncated. `read_timeout`
        // still bounds each read, `max_object_bytes` the size.
        if !session.cache.enabled() {
            crate::upstream::check_deadline(&ctx.origin, crate::upstream::Direction::Receiving)?;
        }
        Ok(None)
    }

    /// Pingora's range filter, for the ranges it answers right (`ranges`); the rest get the
    /// whole representation.
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> pingora::proxy::RangeType {
        if !ranges::may_answer_with_parts(session.req_header(), resp) {
            ranges::whole(resp);
            return pingora::proxy::RangeType::None;
        }
        const MAX_RANGES: Option<usize> = Some(200);
        pingora::proxy::range_header_filter(session.req_header(), resp, MAX_RANGES)
    }

    /// A HEAD answer, a 304 and a 204 have no content (RFC 9110 §6.4.1). Pingora's HTTP/1
    /// writer drops a body sent after such a head; over HTTP/2 it went out in DATA frames
    /// (a miss not stored), and clients reset the stream as malformed (probe AN).
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        // The final head's status as response_filter saw it: Pingora may filter a body
        // chunk before it has written the head, and what it wrote last may be a 103.
        if session.req_header().method == http::Method::HEAD || ctx.no_content {
            *body = None;
        }
        Ok(None)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        Ok(response::response_cache_filter(self, session, resp, ctx))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        h2_refresh::restore(session, ctx);
        // Requests that began before a stop signal end their connection too, and say so.
        if self.state.drain.draining() {
            session.set_keepalive(None);
        }
        // Not the head the plugin edited: its keys come from running the plugin on it again.
        let invalidating = ctx.unedited_request.as_deref();
        let invalidating = invalidating.unwrap_or(session.req_header());
        invalidate::after_response(&self.state, invalidating, upstream_response, ctx);
        if let Some(not_modified) = ctx.unstored_not_modified.take() {
            *upstream_response = revalidation::merge(upstream_response, &not_modified);
        }
        // A stored miss is served from the stored head, which holds no `Age` (hits get one
        // computed); the origin's is end to end (RFC 9111 §5.1) and goes on.
        if let Some(age) = ctx.origin_age.take() {
            if !upstream_response.headers.contains_key(http::header::AGE) {
                let _ = upstream_response.insert_header(http::header::AGE, age);
            }
        }
        // So are the fields `no-cache="..."` names: kept out of the head this request stored,
        // not from the client it fetched them for (only their reuse is restricted). Not
        // twice, should Pingora send the origin's own head.
        let mut withheld = std::mem::take(&mut ctx.withheld_fields);
        withheld.retain(|(name, _)| !upstream_response.headers.contains_key(name));
        for (name, value) in withheld {
            let _ = upstream_response.append_header(name, value);
        }
        deliver::apply_origin_edits(session, upstream_response, ctx);
        hop_by_hop::strip_for_downstream(upstream_response);
        // Fields meant for cachet alone, on an interim response too.
        directives::strip_downstream(upstream_response);
        // An interim response (103 Early Hints) goes on as the origin sent it; the final
        // response is judged and labelled on its own.
        if upstream_response.status.is_informational() {
            return interim::forward_now(session, upstream_response).await;
        }
        ctx.no_content = !framing::status_has_content(upstream_response.status);
        let head_request = session.req_header().method == http::Method::HEAD;
        let version = session.req_header().version;
        if hop_by_hop::frame_for_client(version, head_request, upstream_response) {
            // Announced before the head is written: Pingora says `close` from it.
            session.set_keepalive(None);
        }
        deliver::apply(self, session, upstream_response, ctx);
        if ctx.served_unvalidated {
            // After the plugin's delivery edits: the host has the last word here.
            revalidation::mark_unvalidated(upstream_response);
        }
        cache_status::apply(upstream_response, &session.cache, ctx)
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        // A response that failed before its filter still logs the head as the client sent it.
        h2_refresh::restore(session, ctx);
        crate::connection::next_head(session);
        if let Some(waited) = session.cache.lock_duration() {
            let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
            crate::metrics::lock_wait(tenant, waited);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let error = error.map(|e| e.to_string());
        // A background revalidation (stale-while-revalidate) is no client's request: counted
        // and logged apart, its failures are not taken for errors clients saw.
        if session.is_subrequest() {
            ctx.outcome = BACKGROUND_REFRESH;
        }
        record_request(&self.state, ctx, session.req_header(), status, error);
    }

    /// A request the front planned and handed over (`request::resume`) carries its context:
    /// it replaces the one Pingora made, if Pingora read the same head.
    fn on_connection_reuse(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        carried: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(handed) = carried.downcast::<crate::front::Handover>() {
            adopt(session, ctx, *handed);
        }
    }

    /// What Pingora's own log lines say about a request: method, path and host, never the
    /// query (it holds tokens and passwords; the access log leaves it out too), with the
    /// characters that could disguise a line escaped.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        let host = crate::policy::request_host(req);
        format!(
            "{} {}, Host: {}",
            req.method,
            crate::one_line::one_line(req.uri.path()),
            crate::one_line::one_line(&host)
        )
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        match error {
            // stale-while-revalidate: pingora has already checked the
            // entry's window (from the origin or the plugin's store decision).
            // The lock writer's refresh is spawned next, from this request's head: an
            // HTTP/2 head is handed to it in a form it can use (see h2_refresh).
            None => {
                if session.is_http2() && session.cache.is_cache_lock_writer() {
                    h2_refresh::prepare(session, ctx);
                }
                true
            }
            // stale-if-error: origin unreachable or answering 5xx.
            Some(e) => {
                let serve = match e.etype() {
                    ErrorType::HTTPStatus(code) => *code >= 500,
                    _ => e.esource() == &pingora::ErrorSource::Upstream,
                };
                // Only the fill others queue behind, and only an outage, answers for the key.
                let remember = serve
                    && session.cache.is_cache_lock_writer()
                    && failing_origin::is_outage(e.etype());
                if let Some(key) = session.cache.maybe_cache_key().filter(|_| remember) {
                    self.state
                        .recent_failures
                        .record(failing_origin::key_of(key));
                }
                serve
            }
        }
    }
}
