//! response_cache_filter: the host's guards, then the plugin's decision,
//! turned into pingora-cache's `RespCacheable`.

use super::ctx::RequestCtx;
use super::directives::{self, SURROGATE_KEY};
use super::freshness::{self, Freshness};
use super::{revalidation, shared, uncacheable, CachetProxy};
use crate::policy::{ResponseDecision, ResponsePlan, StoreDirective};
use crate::storage::TAGS_HEADER;
use cachet_sdk::ResponseDirectives;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora_cache::{CacheMeta, RespCacheable};
use std::time::{Duration, SystemTime};

pub(super) fn response_cache_filter(
    proxy: &CachetProxy,
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> RespCacheable {
    // After a 304, `resp` is the stored header with part of the 304 merged in; apply the rest
    // so the plugin and the freshness rules see the updated response.
    let not_modified = ctx.not_modified.take();
    // A purge or invalidation while the origin prepared this answer: it may be what was
    // purged, so it is not stored (nor does a 304 refresh the entry). The purge only reached
    // fills whose head had already arrived.
    let tenant = ctx.tenant.as_ref().map_or("", |t| t.name());
    let purged = match (ctx.origin_started, session.cache.maybe_cache_key()) {
        (Some(started), Some(key)) => {
            use pingora_cache::key::CacheHashKey;
            proxy
                .state
                .cache
                .storage
                .purged_since(tenant, &key.primary_bin(), started)
        }
        _ => false,
    };
    if purged {
        ctx.unstored_not_modified = not_modified;
        return not_stored_this_time(ctx, "purged while it was fetched");
    }
    // A reload gave the tenant's name to another site while this was fetched (a request
    // waiting for an origin turn takes its purge watch only after the partition was
    // dropped): stored, the old site's answer would be served for the new site's hosts.
    let moved = ctx
        .tenant
        .as_ref()
        .is_some_and(|tenant| !proxy.state.router.load().still_serves_site_of(tenant));
    if moved {
        ctx.unstored_not_modified = not_modified;
        return not_stored_this_time(ctx, "its tenant's name now serves another site");
    }
    let stored = session.cache.maybe_cache_meta().map(|meta| meta.headers());
    if let (Some(stored), Some(not_modified)) = (stored, &not_modified) {
        if revalidation::names_another_representation(stored, not_modified) {
            // RFC 9111 §4.3.4: it must not update the stored response. This client gets the
            // stored one, marked not to be reused (response_filter); the URL is marked, so the
            // next request fetches it whole and stores that.
            ctx.served_unvalidated = true;
            return not_stored(ctx, "304 names another representation");
        }
    }
    let merged = not_modified
        .as_ref()
        .map(|not_modified| revalidation::merge(resp, not_modified));
    let resp = merged.as_ref().unwrap_or(resp);
    let revalidated = not_modified.is_some();
    let mut verdict = match decide(proxy, session, resp, ctx, revalidated) {
        // A background revalidation (stale-while-revalidate) refreshes an entry that is still
        // being served: an answer that cannot be stored (an origin error sent with no-store) is
        // refused for this request only. Marking the URL would skip the lookup, so every request
        // would go through to the failing origin instead of getting the stale entry. (A
        // foreground revalidation still marks it: its requests would otherwise queue on the
        // cache lock one fill at a time.)
        RespCacheable::Uncacheable(_) if session.is_subrequest() => {
            RespCacheable::Uncacheable(uncacheable::this_request_only())
        }
        // A variant's answer says nothing of the URL's other variants, but pingora marks by
        // primary key: the mark would stop the lookup of fresh variants stored beside it.
        RespCacheable::Uncacheable(_) if is_variant(session) => {
            RespCacheable::Uncacheable(uncacheable::this_request_only())
        }
        // A client error answers this request's own head (a field the application refuses, a
        // credential missing, one client over its rate): the next client's request may well
        // be stored. Marked, one request kept the URL off the cache lock for everyone until
        // an answer was stored; not marked at all, a URL that answers every anonymous request
        // 401 queued each burst on the lock. A short pass bounds both.
        RespCacheable::Uncacheable(_) if answers_its_request_only(resp.status.as_u16()) => {
            pass_key_for(proxy, ctx, CLIENT_ERROR_PASS);
            RespCacheable::Uncacheable(uncacheable::this_request_only())
        }
        verdict => verdict,
    };
    if let (RespCacheable::Cacheable(meta), Some(started)) = (&mut verdict, ctx.origin_started) {
        // What the L2 tiers date the copy by (`FetchStarted`): the answer is as old as the
        // request for it.
        let at = SystemTime::now()
            .checked_sub(started.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        meta.extensions_mut()
            .insert(crate::storage::FetchStarted(at));
    }
    ctx.stored = matches!(verdict, RespCacheable::Cacheable(_));
    if !ctx.stored {
        // RFC 9111 §4.3.4: the client gets every field of the 304 (a Set-Cookie too), stored
        // or not.
        ctx.unstored_not_modified = not_modified;
    }
    verdict
}

/// A 4xx other than those RFC 9110 §15.1 lets a cache keep by default (404, 405, 410, 414),
/// which say something of the URL rather than of the request.
fn answers_its_request_only(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 404 | 405 | 410 | 414)
}

/// Whether this fill is for one variant of a stored response with `Vary`.
fn is_variant(session: &Session) -> bool {
    use pingora_cache::key::CacheHashKey;
    session
        .cache
        .maybe_cache_key()
        .is_some_and(|key| key.variance_bin().is_some())
}

/// Not stored, and the URL is remembered as uncacheable: its next requests skip the cache lock.
fn not_stored(ctx: &mut RequestCtx, reason: impl Into<String>) -> RespCacheable {
    ctx.not_stored = Some(reason.into());
    RespCacheable::Uncacheable(uncacheable::marks_url())
}

/// Not stored for a reason particular to this request: the URL is not remembered.
fn not_stored_this_time(ctx: &mut RequestCtx, reason: impl Into<String>) -> RespCacheable {
    ctx.not_stored = Some(reason.into());
    RespCacheable::Uncacheable(uncacheable::this_request_only())
}

/// `revalidated`: `resp` is the stored head (edited when it was stored) with a 304 merged in.
fn decide(
    proxy: &CachetProxy,
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
    revalidated: bool,
) -> RespCacheable {
    if !storable_status(resp.status.as_u16()) {
        // 206 and 304 answer this request's Range or validators, not the URL.
        return not_stored_this_time(ctx, "status not storable");
    }
    let Some(policy) = ctx.policy.clone() else {
        return not_stored_this_time(ctx, "no policy");
    };
    // A 0.2.0 plugin sees every storable response first and may edit it (e.g. drop Set-Cookie):
    // the host's guards then judge, and the cache stores, the edited response.
    let early = policy
        .implements_0_2()
        .then(|| policy.plan_response(session.req_header(), resp));
    let edited = match &early {
        Some(Ok(plan)) if !plan.edits.is_empty() => {
            let mut edited = resp.clone();
            if revalidated {
                crate::policy::reapply_to_response(&plan.edits, &mut edited);
            } else {
                crate::policy::apply_to_response(&plan.edits, &mut edited);
            }
            ctx.response_edits = plan.edits.clone();
            Some(edited)
        }
        _ => None,
    };
    let resp = edited.as_ref().unwrap_or(resp);
    // A pass is never stored, so the host's guards have nothing to add.
    if let Some(Ok(ResponsePlan {
        decision: ResponseDecision::PassFor(duration),
        ..
    })) = &early
    {
        super::shadowing::on_response(
            session.req_header(),
            resp,
            &Ok(ResponseDecision::PassFor(*duration)),
            ctx,
        );
        return pass_for(proxy, ctx, *duration);
    }
    if let Some(reason) = host_guard(resp) {
        return not_stored(ctx, reason);
    }
    // RFC 9111 §5.2.1.5: nothing of a response to a no-store request may be stored.
    if pingora_cache::cache_control::CacheControl::from_req_headers(session.req_header())
        .is_some_and(|cc| cc.no_store())
    {
        return not_stored_this_time(ctx, "request sent no-store");
    }
    // Known to be too large: say so now. (A chunked body that outgrows the
    // limit is still streamed to the client and simply not kept by storage.)
    let tenant = ctx.tenant.as_ref().map_or("", |t| t.name());
    let storage = proxy.state.cache.storage;
    if let Some(len) = content_length(resp) {
        let too_large = if len > storage.max_object_size(tenant) {
            Some("larger than max_object_bytes")
        } else if len > storage.budget_of(tenant) {
            Some("larger than the tenant's cache_quota or cache.max_bytes")
        } else {
            None
        };
        if let Some(reason) = too_large {
            storage.count_rejected_oversize(tenant);
            return not_stored(ctx, reason);
        }
    }
    let governing = directives::effective(resp);
    let cc = governing.as_ref().map(|d| &d.cache_control);
    if let Some(cc) = cc {
        // The plugin can change lifetimes but never share what the origin
        // said must not be shared or kept.
        if cc.no_store() {
            return not_stored(ctx, "origin sent no-store");
        }
        if cc.private() {
            return not_stored(ctx, "origin sent private");
        }
        // Such a field cannot be stripped from what is stored: without `Vary` one variant
        // would be served for every request, without the framing or coding the body is
        // misread.
        if let Some(field) = directives::listed_field_that_must_stay(cc) {
            return not_stored(ctx, format!("origin listed {field} in no-cache"));
        }
    }
    if shared::authorized(session.req_header()) && !shared::allows_authorized(cc) {
        return not_stored_this_time(ctx, "authorized request and response not public");
    }
    let now = SystemTime::now();
    let live = match early {
        Some(plan) => plan.map(|p| p.decision),
        None => policy.decide_response(session.req_header(), resp),
    };
    super::shadowing::on_response(session.req_header(), resp, &live, ctx);
    match live {
        Ok(ResponseDecision::Store(directive)) => {
            let tags = match stored_tags(resp, &directive.tags) {
                Ok(tags) => tags,
                Err(reason) => return not_stored(ctx, reason),
            };
            let fresh = plugin_freshness(&directive, governing.as_ref(), resp, now);
            let (meta, withheld) = meta(resp, governing.as_ref(), tags, fresh, now);
            ctx.withheld_fields = withheld;
            RespCacheable::Cacheable(meta)
        }
        Ok(ResponseDecision::NoStore(reason)) => not_stored(ctx, reason),
        Ok(ResponseDecision::PassFor(duration)) => pass_for(proxy, ctx, duration),
        Ok(ResponseDecision::FollowOrigin) => {
            let status = resp.status.as_u16();
            let Some(fresh) = freshness::of(governing.as_ref(), status, &resp.headers, now) else {
                return not_stored(ctx, "origin gave no freshness");
            };
            // Stale on arrival and nothing to revalidate with: storing cannot help anyone.
            if fresh.fresh_for.is_zero() && !has_validator(resp) {
                return not_stored(ctx, "stale on arrival without validator");
            }
            let tags = match stored_tags(resp, &[]) {
                Ok(tags) => tags,
                Err(reason) => return not_stored(ctx, reason),
            };
            let (meta, withheld) = meta(resp, governing.as_ref(), tags, fresh, now);
            ctx.withheld_fields = withheld;
            RespCacheable::Cacheable(meta)
        }
        Err(fault) => {
            let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
            tracing::warn!(
                tenant,
                kind = fault.kind(),
                "plugin fault in on-response: {fault}"
            );
            proxy.state.record_fault(tenant, &fault);
            let reason = format!("plugin fault: {}", fault.kind());
            ctx.fault = Some(fault);
            not_stored_this_time(ctx, reason)
        }
    }
}

/// Not stored, and the key skips the cache for `duration` (hit-for-pass).
fn pass_for(proxy: &CachetProxy, ctx: &mut RequestCtx, duration: Duration) -> RespCacheable {
    pass_key_for(proxy, ctx, duration);
    // The timed pass is the mark: pingora's own mark would never end.
    not_stored_this_time(ctx, format!("pass for {}s", duration.as_secs()))
}

/// How long a client error sends the URL's requests past the cache lock.
const CLIENT_ERROR_PASS: Duration = Duration::from_secs(1);

/// The request's key skips the cache lookup and lock for `duration` (or until an answer to
/// it can be stored).
fn pass_key_for(proxy: &CachetProxy, ctx: &RequestCtx, duration: Duration) {
    if let Some(records) = proxy.state.cache.uncacheable {
        // The key as `cache_key_callback` builds it (reading pingora's may panic).
        let tenant = ctx.tenant.as_ref().map_or("", |t| t.name());
        let key = super::cache_key::storage_key(ctx.key.clone(), tenant);
        records.of(tenant).pass_for(&key, duration);
    }
}

/// The plugin's lifetimes, except that an origin forbidding stale use is obeyed.
fn plugin_freshness(
    directive: &StoreDirective,
    governing: Option<&ResponseDirectives>,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Freshness {
    let cc = governing.map(|d| &d.cache_control);
    let secs = |d: Duration| d.as_secs().min(u32::MAX.into()) as u32;
    let (swr, sie) = if cc.is_some_and(freshness::forbids_stale) {
        (0, 0)
    } else {
        (
            secs(directive.stale_while_revalidate),
            secs(directive.stale_if_error),
        )
    };
    // The TTL counts from now; the age only feeds the `Age` served with hits.
    let age = freshness::of(governing, resp.status.as_u16(), &resp.headers, now)
        .map_or(Duration::ZERO, |f| f.age);
    Freshness {
        fresh_for: directive.ttl,
        age,
        stale_while_revalidate: swr,
        stale_if_error: sie,
    }
}

fn has_validator(resp: &ResponseHeader) -> bool {
    resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED)
}

/// What is stored: the response minus fields that must not be shared, with the purge tags
/// recorded for the storage's tag index; and the listed fields it holds back
/// ([`directives::strip_listed_fields`]).
fn meta(
    resp: &ResponseHeader,
    governing: Option<&ResponseDirectives>,
    tags: String,
    fresh: Freshness,
    now: SystemTime,
) -> (CacheMeta, Vec<(http::HeaderName, http::HeaderValue)>) {
    let mut header = resp.clone();
    super::hop_by_hop::strip(&mut header);
    let withheld = governing
        .map(|d| directives::strip_listed_fields(&d.cache_control, &mut header))
        .unwrap_or_default();
    // pingora generates `Age` for hits from `created`, which carries the upstream age.
    header.remove_header(&http::header::AGE);
    header.remove_header(TAGS_HEADER);
    if !tags.is_empty() {
        // Every tag is visible ASCII (`indexable_tags` refused the others): a valid value.
        let _ = header.insert_header(TAGS_HEADER, tags);
    }
    let fresh_until = if fresh.fresh_for.is_zero() {
        // pingora counts `fresh_until == now` as fresh.
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    } else {
        now + fresh.fresh_for
    };
    // `created` tells a later 304 which object it is about (`MemoryStorage::revalidated`):
    // each fill must have its own. Taken as `now` less the age in whole seconds, it keeps the
    // fill's sub-second time; taken from `Date` (whole seconds), two fills of one URL in the
    // same second shared it, and a 304 about the first gave the second's body its headers
    // (length, coding, validators).
    let age = Duration::from_secs(fresh.age.as_secs());
    let created = now.checked_sub(age).unwrap_or(now);
    let meta = CacheMeta::new(
        fresh_until,
        created,
        fresh.stale_while_revalidate,
        fresh.stale_if_error,
        header,
    );
    (meta, withheld)
}

/// The distinct tags to store: the origin's `Surrogate-Key` tags, then the plugin's,
/// space-separated; or why the index cannot keep them. A line that is not visible ASCII is
/// read all the same, its other bytes as replacement characters: skipped, its tags would be
/// missing from the index, whereas `indexable_tags` refuses the response.
fn stored_tags(resp: &ResponseHeader, plugin_tags: &[String]) -> Result<String, &'static str> {
    let origin_lines: Vec<_> = resp
        .headers
        .get_all(SURROGATE_KEY)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    let origin = origin_lines
        .iter()
        .flat_map(|line| line.split_ascii_whitespace());
    let plugin = plugin_tags.iter().flat_map(|t| t.split_ascii_whitespace());
    crate::storage::indexable_tags(origin.chain(plugin)).map(|tags| tags.join(" "))
}

fn content_length(resp: &ResponseHeader) -> Option<usize> {
    resp.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Responses the host never stores, whatever the plugin says (besides unstorable statuses).
fn host_guard(resp: &ResponseHeader) -> Option<&'static str> {
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == b"*")
    }) {
        return Some("origin sent Vary: *");
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return Some("origin sent Set-Cookie");
    }
    // The obsolete RFC 2965 form sets a cookie all the same (some clients still take it).
    if resp.headers.contains_key("set-cookie2") {
        return Some("origin sent Set-Cookie2");
    }
    // `Connection: Vary` makes Vary this hop's alone, and hop-by-hop fields are stripped
    // before the variance is read: the response would be stored as one for every request.
    if super::list_field::elements(&resp.headers, &http::header::CONNECTION)
        .any(|name| name.eq_ignore_ascii_case("vary"))
    {
        return Some("origin named Vary in Connection");
    }
    None
}

/// Final statuses a cache can reuse (no partial content, no 304, no 1xx).
fn storable_status(status: u16) -> bool {
    (200..=599).contains(&status) && status != 206 && status != 304
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// Two fills of one URL whose responses carry the same `Date` (whole seconds) shared one
    /// `created`, which is how a 304 tells the object it is about from a fill that replaced
    /// it: a 304 about the first then gave the second's body the first's headers.
    #[test]
    fn two_fills_in_one_second_of_date_are_told_apart() {
        let date = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let resp = ResponseHeader::build(200, None).unwrap();
        let created_at = |now: SystemTime| {
            let fresh = Freshness {
                fresh_for: Duration::from_secs(60),
                age: now.duration_since(date).unwrap(),
                stale_while_revalidate: 0,
                stale_if_error: 0,
            };
            meta(&resp, None, String::new(), fresh, now).0.created()
        };
        let first = created_at(date + Duration::from_millis(200));
        let second = created_at(date + Duration::from_millis(700));
        assert_ne!(first, second);
        // Never older than its `Date` says, never younger by a second or more.
        for (created, now) in [(first, 200), (second, 700)] {
            assert!(created <= date + Duration::from_millis(now));
            assert!(created > date + Duration::from_millis(now) - Duration::from_secs(1));
        }
    }
}
