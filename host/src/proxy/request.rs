//! request_filter: route to a tenant, ask its plugin, and answer directly
//! when the plugin (or the host's own guards) say so.

use super::ctx::{RequestCtx, Route};
use super::respond::{respond_synthetic, respond_text};
use super::CachetProxy;
use crate::config::OnPluginError;
use crate::policy::{AddedFields, PendingFields, PluginFault, RequestDecision, RequestVerdict};
use crate::tenant::Tenant;
use http::header::{IF_MATCH, IF_UNMODIFIED_SINCE};
use http::Method;
use pingora::proxy::Session;
use pingora::Result;

/// Returns true when a response has been written and the request is done.
pub(super) async fn request_filter(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    if let Some(planned) = ctx.planned.take() {
        return resume(proxy, session, ctx, *planned).await;
    }
    if session.is_http2() && ctx.h2_work.is_none() {
        let turn = proxy
            .state
            .h2_work
            .enter(session.server_addr(), session.client_addr());
        let Some(turn) = turn else {
            ctx.route = Route::Answered("refused: the connection's streams are all at work".into());
            refuse_stream(session);
            return Ok(true);
        };
        ctx.h2_work = Some(turn);
    }
    if let Err(reason) = well_formed(session, proxy.state.unusual_field_names) {
        ctx.route = Route::Answered(reason.into());
        // What follows a malformed head cannot be trusted to be the next request.
        session.set_keepalive(None);
        respond_text(session, ctx, 400, "bad request\n").await?;
        return Ok(true);
    }
    // A stale-while-revalidate refresh of an HTTP/2 request comes planned (h2_refresh): its
    // head already holds the fields the proxy wrote, and its key is handed over.
    let refresh = super::h2_refresh::take(session);
    if refresh.is_none() {
        let mode = proxy.state.forwarded_headers;
        let tls = is_tls(session);
        ctx.told_scheme =
            super::forwarded::settle_client_claims(mode, session.req_header_mut(), tls);
        super::request_fields::canonical_host(session.req_header_mut(), &ctx.told_scheme);
    }
    if !super::framing::only_chunked(&session.req_header().headers) {
        // RFC 9112 §6.1: a coding the server does not decode is 501, not a body passed on
        // with its coding silently dropped.
        ctx.route = Route::Answered("a transfer coding other than chunked".into());
        session.set_keepalive(None);
        respond_text(
            session,
            ctx,
            501,
            "only the chunked transfer coding is supported\n",
        )
        .await?;
        return Ok(true);
    }
    let host = crate::policy::request_host(session.req_header());
    let router = proxy.state.router.load();
    let tenant = router.route(&host).cloned();
    let Some(tenant) = tenant else {
        ctx.route = Route::Answered("no tenant for this host".into());
        respond_text(session, ctx, 421, "no tenant is configured for this host\n").await?;
        return Ok(true);
    };
    if crate::tls::misdirected(session, &router, tenant.name()) {
        ctx.route = Route::Answered("TLS server name and Host name different tenants".into());
        let text = "the TLS server name (SNI) and the Host header name different sites\n";
        respond_text(session, ctx, 421, text).await?;
        return Ok(true);
    }
    let shared = router.tenants().len() > 1;
    drop(router);
    let policy = tenant.policy();
    ctx.tenant = Some(tenant.clone());
    ctx.policy = Some(policy.clone());
    if let Some(refresh) = refresh {
        if !refresh.planned_under(tenant.build(), policy.sha256()) {
            // Planned against the tenant or its plugin before a reload: its key, edits and
            // backend index are not this one's, and the plugin now in place would judge the
            // answer. The stale copy was served; the next request refreshes it.
            ctx.route =
                Route::Answered("the site was reloaded since the refresh was planned".into());
            respond_text(
                session,
                ctx,
                503,
                "the site was reloaded; refresh dropped\n",
            )
            .await?;
            return Ok(true);
        }
        ctx.key = refresh.key;
        ctx.backend = refresh.backend;
        ctx.route = Route::Cache;
        return Ok(false);
    }
    let shadowed = tenant.shadow().is_some();
    let conn = ClientConn::of(session);
    let mut forwarding = Forwarding::start(
        proxy,
        session.req_header_mut(),
        conn,
        policy.reads_added_fields(),
        shadowed,
    );
    if super::purge::is_purge(session) {
        // The plugin computes the purged key from this request as it computed the
        // stored one: with the forwarding fields.
        forwarding.write(proxy, session.req_header_mut());
        super::purge::handle(proxy, session, ctx).await?;
        return Ok(true);
    }
    ctx.invalidates = tenant.config.invalidate_on_unsafe
        && super::invalidate::is_unsafe(&session.req_header().method);
    super::shadowing::sample(&tenant, session.req_header(), ctx);
    let verdict = plan(
        &tenant,
        session.req_header_mut(),
        &mut forwarding.fields,
        shared,
        ctx,
    )
    .await;
    if let Ok(live) = &verdict {
        super::shadowing::on_request(&tenant, live, ctx);
    }
    // An HTTP/2 body needs no length field: the stream is open after the head.
    let h2_body = session.is_http2() && !session.is_body_empty();
    let next = settle(&tenant, verdict, session.req_header(), h2_body, ctx);
    after_plan(proxy, session, ctx, forwarding, next, false).await
}

/// What the plugin's verdict leaves to do, once `ctx` holds its route and key.
pub(crate) enum Next {
    /// Look the key up, or go to the origin (`ctx.route`).
    Proceed,
    /// Answer with the plugin's own response.
    Respond(crate::policy::SyntheticResponse),
    /// `on-request` failed: the tenant's `on_plugin_error` decides.
    Fault(PluginFault),
}

/// A request the front (`crate::front`) planned before handing it to Pingora: the head as
/// planned (client claims settled, plugin edits made) and what is left to do. Over HTTP/1.1
/// Pingora parses the same bytes again and `h1_head` replaces what it read (its length in
/// bytes lets the proxy check it got the same request); an HTTP/2 stream's head is planned
/// where it lies, in the stream's own session (`h1_head` is `None`).
pub(crate) struct Planned {
    h1_head: Option<(Box<pingora::http::RequestHeader>, usize)>,
    forwarding: Forwarding,
    next: Next,
}

impl Planned {
    /// Whether `session` holds the request this plan was made for.
    pub(super) fn fits(&self, session: &Session) -> bool {
        match &self.h1_head {
            Some((_, len)) => session
                .as_http1()
                .is_some_and(|h1| h1.get_headers_raw_bytes().len() == *len),
            None => session.is_http2(),
        }
    }
}

/// Carries on with a request the front planned: its plugin has run and its lean lookup
/// found nothing to answer with.
pub(super) async fn resume(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    planned: Planned,
) -> Result<bool> {
    crate::metrics::front_handover();
    if let Some((head, _)) = planned.h1_head {
        *session.req_header_mut() = *head;
    }
    after_plan(proxy, session, ctx, planned.forwarding, planned.next, true).await
}

/// What the front does with a head it parsed itself.
pub(crate) enum FrontStep {
    /// A lean hit: write this response (the request comes back for the access log).
    Hit(
        super::lean_hit::LeanResponse,
        Box<pingora::http::RequestHeader>,
    ),
    /// Pingora takes the request, with the plan made so far if any (none: plan it anew).
    HandOver(Option<Box<Planned>>),
}

/// Plans a plain HTTP/1.1 GET read by the front (no body, no framing or connection fields)
/// as `request_filter` would, up to the lean lookup. Anything that needs the full pipeline's
/// own answer (a malformed head, no tenant, a misdirected TLS request, a shadowed tenant) is
/// handed over unplanned, before the plugin runs.
pub(crate) async fn plan_front(
    proxy: &CachetProxy,
    mut head: Box<pingora::http::RequestHeader>,
    head_len: usize,
    conn: ClientConn,
    server_name: Option<&str>,
    ctx: &mut RequestCtx,
) -> FrontStep {
    match plan_head(proxy, &mut head, conn, server_name, ctx).await {
        HeadPlan::Hit(hit) => FrontStep::Hit(hit, head),
        HeadPlan::Unplanned => FrontStep::HandOver(None),
        HeadPlan::Planned(mut planned) => {
            planned.h1_head = Some((head, head_len));
            FrontStep::HandOver(Some(planned))
        }
    }
}

/// What planning a plain GET's head where it lies came to.
pub(crate) enum HeadPlan {
    /// A lean hit to write.
    Hit(super::lean_hit::LeanResponse),
    /// Pingora's full pipeline must plan it: the plugin has not run. The head may have been
    /// brought to origin form, sanitised and had the client's claims settled and its Host
    /// made canonical: `request_filter` doing the same again finds nothing more to do.
    Unplanned,
    /// The plugin has run; the lean lookup found nothing to answer with.
    Planned(Box<Planned>),
}

/// Plans a plain GET (no body, no framing or connection fields) as `request_filter` would,
/// up to the lean lookup, on its head in place: the HTTP/1.1 front's heads and HTTP/2
/// streams' alike.
pub(crate) async fn plan_head(
    proxy: &CachetProxy,
    head: &mut pingora::http::RequestHeader,
    conn: ClientConn,
    server_name: Option<&str>,
    ctx: &mut RequestCtx,
) -> HeadPlan {
    super::h2_refresh::drop_client_field(head);
    if super::target::to_origin_form(head).is_err()
        || super::request_fields::sanitize(head, proxy.state.unusual_field_names).is_err()
    {
        return HeadPlan::Unplanned;
    }
    ctx.told_scheme =
        super::forwarded::settle_client_claims(proxy.state.forwarded_headers, head, conn.tls);
    super::request_fields::canonical_host(head, &ctx.told_scheme);
    let router = proxy.state.router.load();
    let Some(tenant) = router
        .route(&crate::policy::request_host_ref(head))
        .cloned()
    else {
        return HeadPlan::Unplanned;
    };
    if crate::tls::misdirected_name(server_name, &router, tenant.name())
        || tenant.shadow().is_some()
    {
        return HeadPlan::Unplanned;
    }
    let shared = router.tenants().len() > 1;
    drop(router);
    let policy = tenant.policy();
    ctx.tenant = Some(tenant.clone());
    ctx.policy = Some(policy.clone());
    let mut forwarding = Forwarding::start(proxy, head, conn, policy.reads_added_fields(), false);
    let verdict = plan(&tenant, head, &mut forwarding.fields, shared, ctx).await;
    let next = settle(&tenant, verdict, head, false, ctx);
    if matches!(next, Next::Proceed) && ctx.route == Route::Cache && !ctx.deliver {
        // A lookup that fails is a miss: the plugin has run, the full path looks again.
        if let Ok(Some(hit)) = super::lean_hit::lookup(proxy, head, ctx).await {
            return HeadPlan::Hit(hit);
        }
    }
    HeadPlan::Planned(Box::new(Planned {
        h1_head: None,
        forwarding,
        next,
    }))
}

/// Asks the tenant's policy about the request; 0.2.0 edits land on it here, so the key and
/// the origin both see the edited request. With other tenants in the proxy (`shared`), a heavy
/// plugin's call first waits for a lane (`policy::lanes`).
async fn plan(
    tenant: &Tenant,
    req: &mut pingora::http::RequestHeader,
    fields: &mut PendingFields,
    shared: bool,
    ctx: &mut RequestCtx,
) -> std::result::Result<RequestVerdict, PluginFault> {
    let policy = ctx.policy.clone().unwrap_or_else(|| tenant.policy());
    let lane = policy.lane(shared).await?;
    let outcome = policy.plan_request(req, fields);
    drop(lane);
    let outcome = outcome?;
    if ctx.invalidates {
        ctx.unedited_request = outcome.unedited.as_deref().map(as_sent);
    }
    ctx.backend = match backend_index(tenant, outcome.backend) {
        Ok(backend) => backend,
        Err(fault) => {
            // The edits were for that backend: the fallback forwards the client's request.
            if let Some(unedited) = outcome.unedited {
                (*req, *fields) = *unedited;
            }
            return Err(fault);
        }
    };
    ctx.deliver = outcome.deliver;
    Ok(outcome.verdict)
}

/// The request the plugin was shown, its pending forwarding fields written, as a request
/// that reaches the origin carries them.
fn as_sent(
    (head, pending): &(pingora::http::RequestHeader, PendingFields),
) -> Box<pingora::http::RequestHeader> {
    let mut head = Box::new(head.clone());
    pending.clone().apply(&mut head);
    head
}

/// Turns the plugin's verdict into the request's route and key (host rules first).
fn settle(
    tenant: &Tenant,
    verdict: std::result::Result<RequestVerdict, PluginFault>,
    req: &pingora::http::RequestHeader,
    h2_body: bool,
    ctx: &mut RequestCtx,
) -> Next {
    match verdict {
        Ok((RequestDecision::Cache, Some(parts))) => {
            let too_long = || crate::policy::key_too_long(&parts, &tenant.config.limits);
            ctx.route = match host_rules(req, h2_body).or_else(too_long) {
                Some(reason) => Route::Bypass(reason),
                None => {
                    let scheme = &ctx.told_scheme;
                    ctx.key = super::cache_key::primary_key(tenant.name(), scheme, &parts);
                    Route::Cache
                }
            };
            Next::Proceed
        }
        Ok((RequestDecision::Cache, None)) => {
            unreachable_key(ctx);
            Next::Proceed
        }
        Ok((RequestDecision::Bypass(reason), _)) => {
            ctx.route = Route::Bypass(reason);
            Next::Proceed
        }
        Ok((RequestDecision::Respond(resp), _)) => {
            ctx.route = Route::Answered("answered by plugin".into());
            Next::Respond(resp)
        }
        Err(fault) => Next::Fault(fault),
    }
}

/// The rest of `request_filter` once the request is planned. `lean_tried`: the front looked
/// the key up already.
async fn after_plan(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut forwarding: Forwarding,
    next: Next,
    lean_tried: bool,
) -> Result<bool> {
    match next {
        Next::Proceed => {}
        Next::Respond(resp) => {
            respond_synthetic(session, ctx, resp).await?;
            return Ok(true);
        }
        Next::Fault(fault) => {
            // `on_plugin_error = "bypass"` sends the request on.
            forwarding.write(proxy, session.req_header_mut());
            return on_fault(proxy, session, ctx, fault).await;
        }
    }
    // A plugin editing the delivered response (on-deliver) needs the full path's response_filter.
    if !lean_tried
        && ctx.route == Route::Cache
        && !ctx.deliver
        && super::lean_hit::try_serve(proxy, session, ctx).await?
    {
        return Ok(true);
    }
    forwarding.write(proxy, session.req_header_mut());
    Ok(false)
}

/// What the forwarding fields need to know about the client's connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientConn {
    /// The client's address (none for a Unix socket).
    pub client: Option<std::net::IpAddr>,
    /// The client reached cachet over TLS.
    pub tls: bool,
}

impl ClientConn {
    fn of(session: &Session) -> Self {
        Self {
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: is_tls(session),
        }
    }
}

/// The forwarding fields of one request until it needs the origin.
///
/// A plugin reads the request as the origin will get it. A 0.1.0 or 0.2.0 plugin, or a
/// shadow, reads the request itself: the fields are written before it runs. A 0.3.0 plugin
/// is shown them pending in its head. A native policy never reads them: they are built
/// once the request needs the origin. In those two cases a lean hit never writes them,
/// which saves a name parse and a case-map entry per field.
struct Forwarding {
    fields: PendingFields,
    built: bool,
    client: Option<std::net::IpAddr>,
    tls: bool,
}

impl Forwarding {
    fn start(
        proxy: &CachetProxy,
        req: &mut pingora::http::RequestHeader,
        conn: ClientConn,
        reads: AddedFields,
        shadowed: bool,
    ) -> Self {
        let (build, write) = match reads {
            _ if shadowed => (true, true),
            AddedFields::ReadFromTheRequest => (true, true),
            AddedFields::ReadAsPending => (true, false),
            AddedFields::NeverRead => (false, false),
        };
        let mut fields = if build {
            forwarding_fields(proxy, req, conn.client, conn.tls)
        } else {
            PendingFields::default()
        };
        if write {
            fields.apply(req);
        }
        Self {
            fields,
            built: build,
            client: conn.client,
            tls: conn.tls,
        }
    }

    /// Writes what is still pending: the request is going to the origin.
    fn write(&mut self, proxy: &CachetProxy, req: &mut pingora::http::RequestHeader) {
        if !self.built {
            self.fields = forwarding_fields(proxy, req, self.client, self.tls);
            self.built = true;
        }
        self.fields.apply(req);
    }
}

/// The tenant backend a plugin named, as an index into `[tenant.backends]`.
fn backend_index(tenant: &Tenant, name: Option<String>) -> Result<Option<usize>, PluginFault> {
    let Some(name) = name else {
        return Ok(None);
    };
    match tenant.config.backends.iter().position(|(n, _)| *n == name) {
        Some(index) => Ok(Some(index)),
        None => Err(PluginFault::InvalidOutput(format!(
            "backend {:?} is not one of the tenant's [tenant.backends]",
            crate::policy::clean_reason(&name)
        ))),
    }
}

fn unreachable_key(ctx: &mut RequestCtx) {
    // decide_request always returns a key with "cache"; stay safe anyway.
    ctx.route = Route::Bypass("plugin returned no cache key".into());
}

/// Resets an HTTP/2 stream with `REFUSED_STREAM`: not processed, safe to retry (RFC 9113
/// §8.7). Its connection's earlier requests, reset or not, still use its stream allowance.
fn refuse_stream(session: &mut Session) {
    if let pingora::protocols::http::ServerSession::H2(stream) = &mut *session.downstream_session {
        stream.shutdown_with_reason(h2::Reason::REFUSED_STREAM);
    }
}

/// Brings the target to origin-form and refuses heads that peers could read
/// differently; the error is the reason reported in `Cache-Status`.
fn well_formed(
    session: &mut Session,
    field_names: crate::config::UnusualFieldNames,
) -> std::result::Result<(), &'static str> {
    if session
        .as_http1()
        .is_some_and(|h1| super::target::has_bare_lf(&h1.get_headers_raw_bytes()))
    {
        return Err("bare LF in the request head");
    }
    super::target::to_origin_form(session.req_header_mut())?;
    super::request_fields::sanitize(session.req_header_mut(), field_names)
}

/// The forwarding fields the origin (and first the plugin) will see. A background
/// revalidation gets them too: Pingora rebuilds it from the client's head as received
/// (without them, and with the client's own claims), and its connection digest names the
/// same client.
fn forwarding_fields(
    proxy: &CachetProxy,
    req: &pingora::http::RequestHeader,
    client: Option<std::net::IpAddr>,
    tls: bool,
) -> PendingFields {
    let Some(client) = client else {
        return PendingFields::default();
    };
    let hop = super::forwarded::Hop { client, tls };
    super::forwarded::fields(proxy.state.forwarded_headers, req, &hop)
}

/// Whether the client reached cachet over TLS.
fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Preconditions a hit cannot evaluate (`host_rules`).
const PRECONDITIONS: [http::HeaderName; 2] = [IF_MATCH, IF_UNMODIFIED_SINCE];

/// The host's reasons for a request the plugin would cache to go without the cache (`explain`
/// applies them too). `h2_body`: an HTTP/2 stream still open for a body.
pub(super) fn host_rules(req: &pingora::http::RequestHeader, h2_body: bool) -> Option<String> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Some(format!("method {} is not cacheable", req.method));
    }
    // The key never covers a body: an origin that reads GET bodies would
    // otherwise let one request decide what everybody gets for the URL.
    if super::target::has_body(req) || h2_body {
        return Some(format!("{} with a body", req.method));
    }
    if let Some(field) = super::override_fields::present(req) {
        return Some(format!("{field} overrides the request"));
    }
    // A WebSocket upgrade (the only `Upgrade` that `sanitize` leaves) asks the origin for a
    // tunnel: a copy stored for a plain GET of the URL was served in place of the 101, and
    // one plain GET kept the URL's WebSockets broken for everyone until it expired.
    if req.headers.contains_key(http::header::UPGRADE) {
        return Some("an upgrade (WebSocket) is the origin's to answer".into());
    }
    // Preconditions on the origin's current representation (RFC 9110 §13.1.1, §13.1.4): a
    // hit does not evaluate them, and Pingora drops them from a fill, so `If-Match: "old"`
    // got a 200 where the origin answers 412.
    if let Some(field) = super::field_presence::first_present(&req.headers, &PRECONDITIONS) {
        return Some(format!("{field} is evaluated by the origin"));
    }
    // Requests with Authorization use the cache, under the shared-cache rules
    // applied on hit (shared.rs) and when storing (response.rs).
    None
}

/// Applies the tenant's `on_plugin_error` after a fault in `on-request`.
pub(super) async fn on_fault(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    fault: PluginFault,
) -> Result<bool> {
    let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
    tracing::warn!(tenant, kind = fault.kind(), "plugin fault: {fault}");
    proxy.state.record_fault(tenant, &fault);
    let detail = format!("plugin fault: {}", fault.kind());
    let mode = ctx
        .tenant
        .as_ref()
        .map_or(OnPluginError::Error, |t| t.config.on_plugin_error);
    ctx.fault = Some(fault);
    match mode {
        OnPluginError::Bypass => {
            ctx.route = Route::Bypass(detail);
            Ok(false)
        }
        OnPluginError::Error => {
            ctx.route = Route::Answered(detail);
            respond_text(session, ctx, 502, "the cache policy of this site failed\n").await?;
            Ok(true)
        }
    }
}
