//! The `Cache-Status` response header (RFC 9211), naming the plugin's reason
//! whenever the plugin chose not to use or fill the cache. One decision table
//! ([`outcome`]) gives both the header and the outcome name metrics and the
//! access log use.

use super::ctx::{RequestCtx, Route};
use pingora::http::ResponseHeader;
use pingora_cache::{CachePhase, HttpCache, NoCacheReason};
use std::fmt::Write;
use std::time::SystemTime;

/// The header's name.
pub const HEADER: &str = "cache-status";

/// The cache's name in the header.
const CACHE_NAME: &str = "cachet";

/// What cachet did with a request, before it is written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<'a> {
    /// The short name for metrics and the access log.
    pub kind: &'static str,
    /// Served from the cache without going forward.
    pub hit: bool,
    /// Why the request went forward (`fwd=`), if it did.
    pub fwd: Option<&'static str>,
    /// Report the origin's status (`fwd-status=`).
    pub fwd_status: bool,
    /// Report the remaining freshness (`ttl=`).
    pub ttl: bool,
    /// The response was stored (`stored`).
    pub stored: bool,
    /// Free text (`detail=`).
    pub detail: Option<&'a str>,
}

/// The request facts the decision depends on, apart from pingora's cache phase.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub route: &'a Route,
    pub fault: bool,
    /// A stored response existed but may not answer this authorized request.
    pub unshared_hit: bool,
    /// A stale response served as found, its revalidation having failed moments ago.
    pub held_stale: bool,
    pub stored: bool,
    pub not_stored: Option<&'a str>,
    /// The L2 tier a hit came from (`l2-disk`, `l2-shared`); `None` for L1.
    pub tier: Option<&'a str>,
    /// The request went to the origin (an answer after it failed says `fwd=miss`), and
    /// whether the origin gave a status.
    pub forwarded: bool,
    pub origin_answered: bool,
}

impl<'a> Facts<'a> {
    pub fn of(ctx: &'a RequestCtx) -> Self {
        Self {
            route: &ctx.route,
            fault: ctx.fault.is_some(),
            unshared_hit: ctx.unshared_hit,
            held_stale: ctx.held_stale,
            stored: ctx.stored,
            not_stored: ctx.not_stored.as_deref(),
            tier: ctx.tier,
            forwarded: ctx.origin_started.is_some(),
            origin_answered: ctx.origin_status.is_some(),
        }
    }
}

/// The decision table: one row per way a request can end.
pub fn outcome<'a>(facts: Facts<'a>, phase: &CachePhase) -> Outcome<'a> {
    let row = |kind, fwd| Outcome {
        kind,
        hit: false,
        fwd,
        fwd_status: false,
        ttl: false,
        stored: false,
        detail: None,
    };
    // Forwarded with the origin's status, reporting whether the answer was stored.
    let forwarded = |kind, fwd, default_detail| Outcome {
        fwd_status: true,
        stored: facts.stored,
        detail: if facts.stored {
            None
        } else {
            facts.not_stored.or(default_detail)
        },
        ..row(kind, Some(fwd))
    };
    match facts.route {
        // The plugin's answer to an origin failure (on-error): the request went forward.
        Route::Answered(detail) if facts.forwarded => Outcome {
            detail: Some(detail),
            fwd_status: facts.origin_answered,
            ..row("answered", Some("miss"))
        },
        Route::Answered(detail) => Outcome {
            detail: Some(detail),
            ..row(if facts.fault { "error" } else { "answered" }, None)
        },
        Route::Bypass(reason) => Outcome {
            detail: Some(reason),
            ..row("bypass", Some("bypass"))
        },
        Route::Undecided | Route::Cache if facts.unshared_hit => {
            forwarded("bypass", "bypass", Some("authorized request"))
        }
        Route::Undecided | Route::Cache => match phase {
            // A hit from an L2 tier names it: `hit; detail="l2-disk"`.
            CachePhase::Hit if !facts.held_stale => Outcome {
                hit: true,
                ttl: true,
                detail: facts.tier,
                ..row("hit", None)
            },
            CachePhase::StaleUpdating => Outcome {
                ttl: true,
                detail: Some("stale-while-revalidate"),
                ..row("stale", Some("stale"))
            },
            // A held stale response is a `Hit` to Pingora (ForceFresh: it takes no lock).
            CachePhase::Stale | CachePhase::Hit => Outcome {
                ttl: true,
                detail: Some("stale-if-error"),
                ..row("stale", Some("stale"))
            },
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
                forwarded("revalidated", "stale", None)
            }
            CachePhase::Miss => forwarded("miss", "miss", None),
            // A stored response was found stale and the request went on to the origin, which
            // answered with a full response (RFC 9211: `fwd=stale`, whatever came back).
            CachePhase::Expired => forwarded("miss", "stale", None),
            // The response was judged not storable: it is still a miss.
            CachePhase::Disabled(_) if facts.not_stored.is_some() => {
                forwarded("miss", "miss", None)
            }
            // The origin failed a request that was to be stored: a miss that got no answer.
            CachePhase::Disabled(reason @ NoCacheReason::UpstreamError) => Outcome {
                detail: Some(reason.as_str()),
                ..row("miss", Some("miss"))
            },
            CachePhase::Disabled(reason) => Outcome {
                detail: Some(reason.as_str()),
                ..row("bypass", Some("bypass"))
            },
            CachePhase::Bypass => forwarded("miss", "bypass", None),
            CachePhase::Uninit | CachePhase::CacheKey => row("miss", Some("uri-miss")),
        },
    }
}

/// The outcome name of the request in `ctx` at this point.
pub fn kind(cache: &HttpCache, ctx: &RequestCtx) -> &'static str {
    outcome(Facts::of(ctx), &cache.phase()).kind
}

/// cachet's member of `Cache-Status` for the request in `ctx`.
pub fn value(cache: &HttpCache, ctx: &RequestCtx, origin_status: u16) -> String {
    let outcome = outcome(Facts::of(ctx), &cache.phase());
    let ttl = outcome.ttl.then(|| ttl(cache)).flatten();
    // It waited for another request's fill and shares its response.
    let collapsed = outcome.hit && cache.lock_duration().is_some();
    render(
        &outcome,
        origin_status,
        ttl,
        collapsed,
        shown_key(ctx).as_deref(),
    )
}

/// cachet's member for a fresh hit answered by the lean path (same table, phase `Hit`).
pub fn hit_value(ctx: &RequestCtx, ttl: u64) -> Member {
    let outcome = outcome(Facts::of(ctx), &CachePhase::Hit);
    let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
    let mut member = Member::default();
    render_into(
        &mut member,
        &outcome,
        0,
        Some(ttl),
        false,
        shown_key(ctx).as_deref(),
    );
    member
}

/// A rendered member kept inline while it is short, as a hit's is (`cachet; hit; ttl=31536000;
/// detail="l2-shared"` takes 43 bytes): the lean path writes one per hit without a heap
/// allocation. A longer one (a debug key, a long detail) moves to the heap.
pub struct Member {
    inline: [u8; Member::INLINE],
    len: usize,
    heap: Option<String>,
}

impl Member {
    const INLINE: usize = 64;

    pub fn as_bytes(&self) -> &[u8] {
        match &self.heap {
            Some(heap) => heap.as_bytes(),
            None => &self.inline[..self.len],
        }
    }

    pub fn into_string(self) -> String {
        match self.heap {
            Some(heap) => heap,
            // Whole `&str`s only were written: always UTF-8.
            None => String::from_utf8_lossy(&self.inline[..self.len]).into_owned(),
        }
    }
}

impl Default for Member {
    fn default() -> Self {
        Self {
            inline: [0; Self::INLINE],
            len: 0,
            heap: None,
        }
    }
}

impl Write for Member {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        if let Some(heap) = &mut self.heap {
            heap.push_str(text);
            return Ok(());
        }
        let end = self.len + text.len();
        if let Some(room) = self.inline.get_mut(self.len..end) {
            room.copy_from_slice(text.as_bytes());
            self.len = end;
        } else {
            let mut heap = String::with_capacity(2 * end);
            heap.push_str(&String::from_utf8_lossy(&self.inline[..self.len]));
            heap.push_str(text);
            self.heap = Some(heap);
        }
        Ok(())
    }
}

impl From<&str> for Member {
    fn from(text: &str) -> Self {
        let mut member = Self::default();
        let _ = member.write_str(text);
        member
    }
}

/// cachet's member for an error response cachet wrote itself because the origin failed: how
/// the request went forward, with no origin status, freshness or storing to report.
pub fn error_value(cache: &HttpCache, ctx: &RequestCtx) -> String {
    let mut outcome = outcome(Facts::of(ctx), &cache.phase());
    outcome.hit = false;
    outcome.fwd_status = false;
    outcome.stored = false;
    // A request refused a turn at the origin says so, whatever route it was on (a bypass
    // would otherwise name only its own reason, `method POST`).
    let busy = crate::upstream::ORIGIN_BUSY_DETAIL;
    if ctx.not_stored.as_deref() == Some(busy) {
        outcome.detail = Some(busy);
    }
    render(&outcome, 0, None, false, shown_key(ctx).as_deref())
}

/// The key as `key="…"` shows it, when the tenant's debug option asks for it.
fn shown_key(ctx: &RequestCtx) -> Option<String> {
    let show_key = ctx
        .tenant
        .as_ref()
        .is_some_and(|t| t.config.cache_status_key);
    (show_key && !ctx.key.is_empty()).then(|| super::cache_key::describe(&ctx.key))
}

/// Sets cachet's member of `Cache-Status` on a forwarded or cached response and records the
/// outcome in `ctx`.
pub fn apply(
    header: &mut ResponseHeader,
    cache: &HttpCache,
    ctx: &mut RequestCtx,
) -> pingora::Result<()> {
    let origin_status = ctx.origin_status.unwrap_or(header.status.as_u16());
    let member = value(cache, ctx, origin_status);
    ctx.outcome = kind(cache, ctx);
    append_member(header, member)
}

/// Puts cachet's member after any members caches upstream of cachet put there (the field is a
/// list, RFC 9211 §2).
pub fn append_member(header: &mut ResponseHeader, member: String) -> pingora::Result<()> {
    let upstream: Vec<&str> = header
        .headers
        .get_all(HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(upstream_members)
        .collect();
    let value = if upstream.is_empty() {
        member
    } else {
        format!("{}, {member}", upstream.join(", "))
    };
    header.insert_header(HEADER, value)?;
    Ok(())
}

/// The members of one upstream `Cache-Status` line that may stand before cachet's: split at
/// the commas outside quoted strings. A line with an unterminated string is dropped whole (it
/// would swallow cachet's member into the string), and so is any member that names cachet
/// (an origin could otherwise claim a hit in cachet's name).
fn upstream_members(line: &str) -> Vec<&str> {
    let mut members = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                members.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Vec::new();
    }
    members.push(&line[start..]);
    members
        .into_iter()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .filter(|m| !names_cachet(m))
        .collect()
}

/// Whether a member's cache name is cachet's, as a token or as a string (RFC 9211 §2 allows
/// either: `"cachet"; hit` claimed a hit in cachet's name).
fn names_cachet(member: &str) -> bool {
    let name = member.split(';').next().unwrap_or_default().trim();
    let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) else {
        return name == CACHE_NAME;
    };
    let mut unescaped = String::with_capacity(quoted.len());
    let mut escaped = false;
    for c in quoted.chars() {
        match c {
            '\\' if !escaped => escaped = true,
            _ => {
                unescaped.push(c);
                escaped = false;
            }
        }
    }
    unescaped == CACHE_NAME
}

/// Writes the member out, parameters in a fixed order.
fn render(
    outcome: &Outcome,
    origin_status: u16,
    ttl: Option<i64>,
    collapsed: bool,
    key: Option<&str>,
) -> String {
    let mut v = String::with_capacity(64);
    render_into(&mut v, outcome, origin_status, ttl, collapsed, key);
    v
}

/// [`render`] into `v`.
fn render_into(
    v: &mut impl Write,
    outcome: &Outcome,
    origin_status: u16,
    ttl: Option<i64>,
    collapsed: bool,
    key: Option<&str>,
) {
    let _ = v.write_str(CACHE_NAME);
    if outcome.hit {
        let _ = v.write_str("; hit");
    }
    if let Some(fwd) = outcome.fwd {
        let _ = write!(v, "; fwd={fwd}");
    }
    if outcome.fwd_status {
        let _ = write!(v, "; fwd-status={origin_status}");
    }
    if let Some(ttl) = ttl {
        let _ = write!(v, "; ttl={ttl}");
    }
    if collapsed {
        let _ = v.write_str("; collapsed");
    }
    if outcome.stored {
        let _ = v.write_str("; stored");
    }
    if let Some(key) = key {
        push_string(v, "key", key);
    }
    if let Some(detail) = outcome.detail {
        push_string(v, "detail", detail);
    }
}

/// Seconds of freshness left (negative once stale), when the entry's meta is known.
fn ttl(cache: &HttpCache) -> Option<i64> {
    let meta = cache.maybe_cache_meta()?;
    Some(match meta.fresh_until().duration_since(SystemTime::now()) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64),
    })
}

/// Appends `; name="..."`, escaped as an RFC 8941 string.
fn push_string(v: &mut impl Write, name: &str, text: &str) {
    let _ = write!(v, "; {name}=\"");
    for c in text.chars().filter(|c| c.is_ascii_graphic() || *c == ' ') {
        if c == '"' || c == '\\' {
            let _ = v.write_char('\\');
        }
        let _ = v.write_char(c);
    }
    let _ = v.write_char('"');
}

#[cfg(test)]
mod tests {

    #[test]
    fn upstream_members_cannot_speak_for_cachet_or_swallow_its_member() {
        use super::upstream_members;
        assert_eq!(
            upstream_members("origin; hit, other; fwd=miss"),
            ["origin; hit", "other; fwd=miss"]
        );
        assert_eq!(upstream_members("cachet; hit; ttl=999, evil"), ["evil"]);
        assert_eq!(upstream_members("\"cachet\"; hit; ttl=999, evil"), ["evil"]);
        assert_eq!(
            upstream_members("\"cach\\et\"; hit, \"cachet2\"; hit"),
            ["\"cachet2\"; hit"]
        );
        assert!(upstream_members("origin; detail=\"unterminated").is_empty());
        assert_eq!(
            upstream_members("origin; detail=\"a, \\\"b\", next"),
            ["origin; detail=\"a, \\\"b\"", "next"]
        );
    }

    use super::*;
    use pingora_cache::NoCacheReason;

    fn facts(route: &Route) -> Facts<'_> {
        Facts {
            route,
            fault: false,
            unshared_hit: false,
            held_stale: false,
            stored: false,
            not_stored: None,
            tier: None,
            forwarded: false,
            origin_answered: false,
        }
    }

    /// The outcome name and the member, for an origin status of 200 and 5 s of freshness.
    fn decided(facts: Facts, phase: CachePhase) -> (&'static str, String) {
        let o = outcome(facts, &phase);
        let ttl = o.ttl.then_some(5);
        (o.kind, render(&o, 200, ttl, false, None))
    }

    fn check(rows: &[(Facts, CachePhase, &str, &str)]) {
        for (facts, phase, kind, member) in rows {
            let expected = (*kind, member.to_string());
            assert_eq!(decided(*facts, *phase), expected, "{phase:?}");
        }
    }

    #[test]
    fn routes_decided_before_the_cache() {
        let answered = Route::Answered("answered by plugin".into());
        let bypass = Route::Bypass("method POST".into());
        let faulted = Facts {
            fault: true,
            ..facts(&answered)
        };
        let plugin = r#"cachet; detail="answered by plugin""#;
        let error_page = Route::Answered("origin failed, answered by plugin".into());
        let after_failure = Facts {
            forwarded: true,
            origin_answered: true,
            ..facts(&error_page)
        };
        let unreachable = Facts {
            origin_answered: false,
            ..after_failure
        };
        check(&[
            (
                after_failure,
                CachePhase::Uninit,
                "answered",
                r#"cachet; fwd=miss; fwd-status=200; detail="origin failed, answered by plugin""#,
            ),
            (
                unreachable,
                CachePhase::Uninit,
                "answered",
                r#"cachet; fwd=miss; detail="origin failed, answered by plugin""#,
            ),
            (facts(&answered), CachePhase::Uninit, "answered", plugin),
            (faulted, CachePhase::Uninit, "error", plugin),
            (
                facts(&bypass),
                CachePhase::Miss,
                "bypass",
                r#"cachet; fwd=bypass; detail="method POST""#,
            ),
        ]);
    }

    #[test]
    fn cache_phases() {
        let cache = Route::Cache;
        let f = facts(&cache);
        let stored = Facts { stored: true, ..f };
        let miss = "cachet; fwd=miss; fwd-status=200; stored";
        check(&[
            (f, CachePhase::Hit, "hit", "cachet; hit; ttl=5"),
            (
                Facts {
                    tier: Some("l2-disk"),
                    ..f
                },
                CachePhase::Hit,
                "hit",
                r#"cachet; hit; ttl=5; detail="l2-disk""#,
            ),
            (
                f,
                CachePhase::StaleUpdating,
                "stale",
                r#"cachet; fwd=stale; ttl=5; detail="stale-while-revalidate""#,
            ),
            (
                f,
                CachePhase::Stale,
                "stale",
                r#"cachet; fwd=stale; ttl=5; detail="stale-if-error""#,
            ),
            // Held after a failed revalidation: Pingora serves it as a hit.
            (
                Facts {
                    held_stale: true,
                    ..f
                },
                CachePhase::Hit,
                "stale",
                r#"cachet; fwd=stale; ttl=5; detail="stale-if-error""#,
            ),
            (stored, CachePhase::Miss, "miss", miss),
            (
                stored,
                CachePhase::Expired,
                "miss",
                "cachet; fwd=stale; fwd-status=200; stored",
            ),
            (
                stored,
                CachePhase::Revalidated,
                "revalidated",
                "cachet; fwd=stale; fwd-status=200; stored",
            ),
            (
                f,
                CachePhase::Bypass,
                "miss",
                "cachet; fwd=bypass; fwd-status=200",
            ),
            (f, CachePhase::CacheKey, "miss", "cachet; fwd=uri-miss"),
        ]);
    }

    #[test]
    fn not_stored_and_disabled() {
        let cache = Route::Cache;
        let refused = Facts {
            not_stored: Some("origin sent no-store"),
            ..facts(&cache)
        };
        let miss = r#"cachet; fwd=miss; fwd-status=200; detail="origin sent no-store""#;
        let disabled = format!(
            r#"cachet; fwd=bypass; detail="{}""#,
            NoCacheReason::StorageError.as_str()
        );
        check(&[
            (refused, CachePhase::Miss, "miss", miss),
            (
                refused,
                CachePhase::Disabled(NoCacheReason::OriginNotCache),
                "miss",
                miss,
            ),
            (
                facts(&cache),
                CachePhase::Disabled(NoCacheReason::StorageError),
                "bypass",
                &disabled,
            ),
            (
                facts(&cache),
                CachePhase::Disabled(NoCacheReason::UpstreamError),
                "miss",
                r#"cachet; fwd=miss; detail="UpstreamError""#,
            ),
        ]);
    }

    #[test]
    fn authorized_request_that_may_not_use_the_stored_response() {
        let cache = Route::Cache;
        let unshared = Facts {
            unshared_hit: true,
            ..facts(&cache)
        };
        let stored = Facts {
            stored: true,
            ..unshared
        };
        let refused = Facts {
            not_stored: Some("response not public"),
            ..unshared
        };
        check(&[
            (
                unshared,
                CachePhase::Miss,
                "bypass",
                r#"cachet; fwd=bypass; fwd-status=200; detail="authorized request""#,
            ),
            (
                stored,
                CachePhase::Miss,
                "bypass",
                "cachet; fwd=bypass; fwd-status=200; stored",
            ),
            (
                refused,
                CachePhase::Miss,
                "bypass",
                r#"cachet; fwd=bypass; fwd-status=200; detail="response not public""#,
            ),
        ]);
    }

    #[test]
    fn collapsed_key_and_escaping() {
        let cache = Route::Cache;
        let hit = outcome(facts(&cache), &CachePhase::Hit);
        assert_eq!(
            render(&hit, 200, Some(60), true, Some("site a.com /x")),
            r#"cachet; hit; ttl=60; collapsed; key="site a.com /x""#
        );
        let odd = Route::Bypass("say \"hi\"\\\n".into());
        let o = outcome(facts(&odd), &CachePhase::Uninit);
        assert_eq!(
            render(&o, 200, None, false, None),
            r#"cachet; fwd=bypass; detail="say \"hi\"\\""#
        );
    }

    #[test]
    fn a_hit_member_stays_inline_and_a_long_one_moves_whole_to_the_heap() {
        let cache = Route::Cache;
        let mut hit_facts = facts(&cache);
        // The longest a lean hit writes without the debug key: an L2 tier, the largest ttl.
        hit_facts.tier = Some("l2-shared");
        let hit = outcome(hit_facts, &CachePhase::Hit);
        let mut member = Member::default();
        render_into(&mut member, &hit, 0, Some(i64::MAX), false, None);
        assert!(member.heap.is_none(), "a hit's member allocated");
        let expected = render(&hit, 0, Some(i64::MAX), false, None);
        assert_eq!(member.as_bytes(), expected.as_bytes());
        assert_eq!(member.into_string(), expected);

        // A debug key spills: the text is the same as a String's, written across the move.
        let key = "site example.com /a/very/long/path/that/does/not/fit/inline";
        let mut member = Member::default();
        render_into(&mut member, &hit, 0, Some(60), false, Some(key));
        assert!(member.heap.is_some());
        let expected = render(&hit, 0, Some(60), false, Some(key));
        assert_eq!(member.as_bytes(), expected.as_bytes());
        assert_eq!(member.into_string(), expected);
    }
}
