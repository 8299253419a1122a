//! Using cachet's policy layer inside your own Pingora `ProxyHttp`.
//!
//! Run: `cargo run -p cachet --example embed -- 127.0.0.1:8080 127.0.0.1:8000 plugins/standard.wasm`
//! (listen address, origin address, plugin). The proxy below is yours: cachet
//! only decides, through the WebAssembly plugin, what is cached and how.
//!
//! What cachet's own proxy does besides and this example leaves out, kept safe by not
//! caching: an answer to a request with `Authorization` (RFC 9111 §3.5 allows some), one
//! that varies (`Vary`: it would need a variance key) or that sets a cookie (it would go to
//! everyone).

use async_trait::async_trait;
use cachet::policy::InstancePool;
use cachet::policy::{
    LoadedPlugin, PluginLimits, PolicyEngine, PolicyLayer, RequestDecision, ResponseDecision,
    TenantContext,
};
use cachet::proxy::primary_key;
use cachet::storage::MemoryStorage;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora_cache::cache_control::CacheControl;
use pingora_cache::{CacheKey, CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The namespace of this site's entries.
const SITE: &str = "my-site";

pub struct MyProxy {
    policy: PolicyLayer,
    storage: &'static MemoryStorage,
    origin: SocketAddr,
}

#[derive(Default)]
pub struct MyCtx {
    key: Option<Vec<u8>>,
}

fn no_heuristics(_: http::StatusCode) -> Option<Duration> {
    None
}
static DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(
    no_heuristics as fn(http::StatusCode) -> Option<Duration>,
    0,
    0,
);

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = MyCtx;

    fn new_ctx(&self) -> MyCtx {
        MyCtx::default()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut MyCtx,
    ) -> pingora::Result<bool> {
        // A shared cache must not hand one user's authorized answer to others.
        if session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION)
        {
            return Ok(false);
        }
        // The plugin decides; a faulting plugin just means "no cache" here.
        if let Ok((RequestDecision::Cache, Some(parts))) =
            self.policy.decide_request(session.req_header())
        {
            // This example listens over plain HTTP only.
            ctx.key = Some(primary_key(SITE, "http", &parts));
        }
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut MyCtx) -> pingora::Result<()> {
        if ctx.key.is_some() {
            session.cache.enable(self.storage, None, None, None, None);
        }
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut MyCtx) -> pingora::Result<CacheKey> {
        Ok(CacheKey::new(ctx.key.clone().unwrap_or_default(), SITE))
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut MyCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin, false, String::new())))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut MyCtx,
    ) -> pingora::Result<RespCacheable> {
        let personal = [http::header::VARY, http::header::SET_COOKIE]
            .iter()
            .any(|name| resp.headers.contains_key(name));
        if personal {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache));
        }
        let cc = CacheControl::from_resp_headers(resp);
        Ok(
            match self.policy.decide_response(session.req_header(), resp) {
                Ok(ResponseDecision::Store(d)) => {
                    let now = SystemTime::now();
                    RespCacheable::Cacheable(CacheMeta::new(now + d.ttl, now, 0, 0, resp.clone()))
                }
                Ok(ResponseDecision::FollowOrigin) => pingora_cache::filters::resp_cacheable(
                    cc.as_ref(),
                    resp.clone(),
                    false,
                    &DEFAULTS,
                ),
                _ => RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
            },
        )
    }
}

/// Builds the proxy around a plugin file.
pub fn build(origin: SocketAddr, plugin: &std::path::Path) -> anyhow::Result<MyProxy> {
    let engine = PolicyEngine::new(64)?;
    let plugin = Arc::new(LoadedPlugin::load(&engine, plugin)?);
    plugin.run_self_tests(&engine)?;
    let pool = InstancePool::new(
        engine,
        plugin,
        Arc::new(TenantContext::default()),
        PluginLimits::default(),
    );
    Ok(MyProxy {
        policy: PolicyLayer::Wasm(pool),
        storage: Box::leak(Box::new(MemoryStorage::new(64 << 20, 8 << 20))),
        origin,
    })
}

/// Runs the proxy on `listen` until the process ends.
pub fn run(listen: SocketAddr, proxy: MyProxy) -> ! {
    let mut server = Server::new(None).expect("pingora server");
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, origin, plugin] = args.as_slice() else {
        anyhow::bail!("usage: embed LISTEN ORIGIN PLUGIN.wasm");
    };
    let proxy = build(origin.parse()?, std::path::Path::new(plugin))?;
    run(listen.parse()?, proxy)
}
