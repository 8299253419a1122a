//! Several upstreams for one tenant, with pingora-load-balancing: round
//! robin or consistent hashing on the cache key, active health checks that
//! take a failing upstream out, names re-resolved periodically, and an
//! upstream whose connect failed set aside until its next passing check.

use super::health::OriginCheck;
use super::names::{look_up_all, system_look_up, LookUp};
use super::tls::OriginTls;
use crate::config::{Balance, PoolConfig, UpstreamTarget};
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::Result;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Which configured upstream each address belongs to, as the last lookups found, read when an
/// address is used. A backend's own extensions cannot say: pingora compares backends by
/// address and weight only, so one kept across lookups keeps what it was made with, and an
/// address that moved to another name would be dialled with the old name's SNI and `Host`.
#[derive(Clone)]
pub(super) struct AddressBook(Arc<Mutex<Vec<Vec<SocketAddr>>>>);

impl AddressBook {
    fn new(targets: &[UpstreamTarget]) -> Self {
        Self(Arc::new(Mutex::new(
            targets.iter().map(|t| t.addrs.clone()).collect(),
        )))
    }

    /// The configured upstream `addr` belongs to now (the first that has it), or `None` when
    /// no name resolves to it any more.
    pub(super) fn target_of(&self, addr: &SocketAddr) -> Option<usize> {
        target_in(&self.0.lock(), addr)
    }
}

fn target_in(names: &[Vec<SocketAddr>], addr: &SocketAddr) -> Option<usize> {
    names.iter().position(|addrs| addrs.contains(addr))
}

/// How far a selection searches for an acceptable upstream.
const MAX_SELECT_STEPS: usize = 256;

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Hash(LoadBalancer<Consistent>),
}

/// The upstream a request tries next.
pub(super) struct Selection {
    pub(super) backend: Backend,
    /// Its place in `config.upstreams`.
    pub(super) index: usize,
    /// Nothing healthy and not set aside was left: tried anyway, but once. A pool whose
    /// every member is down would otherwise be tried member by member, each waiting out
    /// its connect timeout, by every request.
    pub(super) last_resort: bool,
}

impl Balancer {
    /// The balancer's pick among the upstreams `accept` takes; when its search (bounded by
    /// [`MAX_SELECT_STEPS`]) finds none, the first of them in the pool. A hash ring holds 160
    /// points per address: in a large pool with one acceptable address left, the bounded
    /// walk missed it now and then, and the request was refused with an upstream to spare.
    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        let picked = match self {
            Self::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, &accept),
            Self::Hash(lb) => lb.select_with(key, MAX_SELECT_STEPS, &accept),
        };
        picked.or_else(|| {
            let backends = self.backends();
            let members = backends.get_backend();
            let found = members.iter().find(|b| accept(b, backends.ready(b)));
            found.cloned()
        })
    }

    fn backends(&self) -> &Backends {
        match self {
            Self::RoundRobin(lb) => lb.backends(),
            Self::Hash(lb) => lb.backends(),
        }
    }

    async fn update(&self) -> Result<()> {
        match self {
            Self::RoundRobin(lb) => lb.update().await,
            Self::Hash(lb) => lb.update().await,
        }
    }
}

/// Fresh connections an upstream closes unanswered, in a row, that set it aside.
const DROPS_TO_SET_ASIDE: u32 = 3;

/// Upstreams set aside after a failed connect, or connections closed unanswered
/// ([`DROPS_TO_SET_ASIDE`] in a row), each with when.
#[derive(Default)]
struct SetAside(Mutex<Vec<(Backend, Instant)>>);

impl SetAside {
    fn members(&self) -> Vec<Backend> {
        self.0.lock().iter().map(|(b, _)| b.clone()).collect()
    }

    /// Sets `backend` aside as of `at` (again, if it was).
    fn add(&self, backend: &Backend, at: Instant) {
        let mut members = self.0.lock();
        members.retain(|(b, _)| b != backend);
        members.push((backend.clone(), at));
    }

    fn lift(&self, addr: &SocketAddr) {
        let mut members = self.0.lock();
        if !members.is_empty() {
            members.retain(|(b, _)| b.as_inet() != Some(addr));
        }
    }

    /// Lifts what was set aside before `started` (a health round's start).
    fn lift_before(&self, started: Instant) {
        self.0.lock().retain(|(_, at)| *at >= started);
    }
}

/// A tenant's pool of upstreams.
pub(super) struct Pool {
    balancer: Balancer,
    book: AddressBook,
    config: PoolConfig,
    schedule: Mutex<Schedule>,
    /// Set aside after a failed connect or repeated drops, until the next health check pass.
    set_aside: SetAside,
    /// Fresh connections each upstream closed unanswered since it last answered ([`Self::dropped`]).
    drops: Mutex<HashMap<SocketAddr, u32>>,
    /// Upstreams the pool this one replaces (a reload) had found failing: kept out until
    /// this pool's first health check says otherwise, instead of assumed healthy till then.
    held_out: Mutex<Vec<Backend>>,
    /// Health checks run one pass at a time, and so do lookups, each on a lock of its own:
    /// a lookup pass that waits on a slow name server must not make the health check passes
    /// due meanwhile skip their turn (nor a hanging check the lookups).
    checking: tokio::sync::Mutex<()>,
    resolving: tokio::sync::Mutex<()>,
}

struct Schedule {
    next_health_check: Instant,
    next_resolve: Instant,
    /// When the last health check pass finished.
    last_health_check: Option<SystemTime>,
}

/// One upstream address as the pool sees it now (for `/status`).
#[derive(Debug, Clone)]
pub struct UpstreamHealth {
    /// The upstream as written in the config.
    pub upstream: String,
    pub address: SocketAddr,
    /// Passing its health checks (before the first check: assumed healthy).
    pub healthy: bool,
    /// A connect to it failed since the last check: skipped until the next one.
    pub set_aside: bool,
}

/// A pool's health: each upstream address and when it was last checked.
#[derive(Debug, Clone)]
pub struct PoolHealth {
    pub last_check: Option<SystemTime>,
    pub upstreams: Vec<UpstreamHealth>,
}

impl Pool {
    pub(super) fn new(
        tenant: &str,
        targets: &[UpstreamTarget],
        config: &PoolConfig,
        tls: Arc<OriginTls>,
    ) -> Self {
        Self::with_lookup(tenant, targets, config, tls, system_look_up)
    }

    /// [`Pool::new`] with the function that looks names up (tests give a slow one).
    fn with_lookup(
        tenant: &str,
        targets: &[UpstreamTarget],
        config: &PoolConfig,
        tls: Arc<OriginTls>,
        look_up: LookUp,
    ) -> Self {
        let book = AddressBook::new(targets);
        let discovery = Box::new(Resolver::new(targets, book.clone(), look_up));
        let mut backends = Backends::new(discovery);
        backends.set_health_check(Box::new(OriginCheck::new(
            tenant,
            targets.to_vec(),
            book.clone(),
            config,
            tls,
        )));
        let balancer = match config.balance {
            Balance::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            Balance::ConsistentHash => Balancer::Hash(LoadBalancer::from_backends(backends)),
        };
        // The first discovery uses the addresses the config resolved and
        // never waits, so the pool is ready before any runtime exists.
        let pool = Self {
            balancer,
            book,
            config: config.clone(),
            schedule: Mutex::new(Schedule {
                next_health_check: Instant::now(),
                next_resolve: Instant::now() + config.resolve_interval,
                last_health_check: None,
            }),
            set_aside: SetAside::default(),
            drops: Mutex::default(),
            held_out: Mutex::default(),
            checking: tokio::sync::Mutex::new(()),
            resolving: tokio::sync::Mutex::new(()),
        };
        let first = poll_once(pool.balancer.update());
        if let Some(Err(e)) = first {
            tracing::error!(tenant, "upstream pool: {e}");
        }
        pool
    }

    /// The next upstream for a request: healthy, not set aside, not tried by
    /// this request yet. When none is left, an untried one anyway (a request is better
    /// tried than refused), marked as a last resort: its failure ends the request's tries.
    /// A last resort is one passing its checks if there is one (set aside after a single
    /// failed connect, it may well answer again), else one failing them.
    pub(super) fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<Selection> {
        let set_aside = self.set_aside.members();
        // Held through the choice: a re-resolution rewrites the book before it publishes the
        // new members, and an address no name has now must not be dialled as another
        // upstream's (with its TLS, SNI and checked name).
        let names = self.book.0.lock();
        let target = |b: &Backend| b.as_inet().and_then(|addr| target_in(&names, addr));
        let untried =
            |b: &Backend| !tried.iter().any(|t| b.as_inet() == Some(t)) && target(b).is_some();
        let usable = self.balancer.select_with(key, |b, healthy| {
            healthy && untried(b) && !set_aside.contains(b)
        });
        let last_resort = usable.is_none();
        let backend = match usable {
            Some(backend) => backend,
            None => self
                .balancer
                .select_with(key, |b, healthy| healthy && untried(b))
                .or_else(|| self.balancer.select_with(key, |b, _| untried(b)))?,
        };
        let index = target(&backend)?;
        Some(Selection {
            backend,
            index,
            last_resort,
        })
    }

    /// Every known upstream address with its current verdict.
    pub(super) fn health(&self, targets: &[UpstreamTarget]) -> PoolHealth {
        let backends = self.balancer.backends();
        let set_aside = self.set_aside.members();
        let upstreams = backends
            .get_backend()
            .iter()
            .filter_map(|backend| {
                let address = *backend.as_inet()?;
                let index = self.book.target_of(&address)?;
                Some(UpstreamHealth {
                    upstream: targets.get(index)?.written.clone(),
                    address,
                    healthy: backends.ready(backend),
                    set_aside: set_aside.contains(backend),
                })
            })
            .collect();
        PoolHealth {
            last_check: self.schedule.lock().last_health_check,
            upstreams,
        }
    }

    /// Upstreams currently known (all addresses of all names).
    pub(super) fn size(&self) -> usize {
        self.balancer.backends().get_backend().len()
    }

    /// A connect to `addr` failed: skip it until its next passing check.
    pub(super) fn set_aside(&self, addr: SocketAddr) {
        let backends = self.balancer.backends().get_backend();
        if let Some(backend) = backends.iter().find(|b| b.as_inet() == Some(&addr)) {
            self.set_aside.add(backend, Instant::now());
        }
    }

    /// `addr` accepted a fresh connection and closed it before answering: set aside once it
    /// has done so [`DROPS_TO_SET_ASIDE`] times with no answer in between. Not at the first:
    /// the request itself may be what makes origins close (a query that crashes them), and
    /// one such request, replayed on every member, set the whole pool aside.
    pub(super) fn dropped(&self, addr: SocketAddr) {
        let mut drops = self.drops.lock();
        // Addresses a lookup has since dropped from the pool must not pile up.
        if drops.len() > 4 * self.size() {
            drops.clear();
        }
        let count = drops.entry(addr).or_default();
        *count += 1;
        if *count >= DROPS_TO_SET_ASIDE {
            drops.remove(&addr);
            drop(drops);
            self.set_aside(addr);
        }
    }

    /// `addr` answered a request: whatever set it aside is over.
    pub(super) fn answered(&self, addr: SocketAddr) {
        self.set_aside.lift(&addr);
        let mut drops = self.drops.lock();
        if !drops.is_empty() {
            drops.remove(&addr);
        }
    }

    /// Takes over what `previous` (the pool this one replaces on a reload) knew: an address
    /// that was failing its checks there gets no traffic here until this pool's first
    /// check passes it. A new pool otherwise assumes every upstream healthy until then.
    pub(super) fn inherit_verdicts(&self, previous: &Pool) {
        let before = previous.balancer.backends();
        let failing: Vec<_> = before
            .get_backend()
            .iter()
            .filter(|b| !before.ready(b))
            .map(|b| b.addr.clone())
            .collect();
        if failing.is_empty() {
            return;
        }
        let backends = self.balancer.backends();
        let mut held_out = self.held_out.lock();
        for backend in backends.get_backend().iter() {
            if failing.contains(&backend.addr) {
                backends.set_enable(backend, false);
                held_out.push(backend.clone());
            }
        }
    }

    /// Whether a health check or a lookup is due (cheap: no pass is started for nothing).
    pub(super) fn due(&self) -> bool {
        let schedule = self.schedule.lock();
        let now = Instant::now();
        now >= schedule.next_health_check || now >= schedule.next_resolve
    }

    /// Runs whatever is due and not already running: health checks, DNS re-resolution.
    pub(super) async fn maintain(&self) {
        let now = Instant::now();
        let interval = (self.config.health_interval, self.config.resolve_interval);
        let check = self
            .checking
            .try_lock()
            .ok()
            .filter(|_| self.claim(now, |s| &mut s.next_health_check, interval.0));
        let resolve = self
            .resolving
            .try_lock()
            .ok()
            .filter(|_| self.claim(now, |s| &mut s.next_resolve, interval.1));
        // Side by side: a slow lookup (up to its bound) must not hold back the health
        // checks that take a dead upstream out, nor they the lookup.
        // Each lock is let go as soon as its own pass ends.
        let resolving = async move {
            if let Some(_resolving) = resolve {
                if let Err(e) = self.balancer.update().await {
                    tracing::warn!(
                        "upstream pool: re-resolving failed, keeping the addresses: {e}"
                    );
                }
            }
        };
        let checking = async move {
            if let Some(_checking) = check {
                self.check_health().await;
            }
        };
        tokio::join!(resolving, checking);
    }

    /// Whether the pass `next` schedules is due at `now`; if so, the next one is `interval` later.
    fn claim(
        &self,
        now: Instant,
        next: impl FnOnce(&mut Schedule) -> &mut Instant,
        interval: std::time::Duration,
    ) -> bool {
        let mut schedule = self.schedule.lock();
        let next = next(&mut schedule);
        let due = now >= *next;
        if due {
            *next = now + interval;
        }
        due
    }

    /// One round of active health checks over the members the pool has now.
    async fn check_health(&self) {
        let backends = self.balancer.backends();
        let started = Instant::now();
        backends.run_health_check(true).await;
        // A fresh verdict replaces the passive one, and the one inherited on a reload; not
        // one made while the round ran (up to twice `health_timeout`), which may be newer
        // than the check that passed.
        self.set_aside.lift_before(started);
        for backend in self.held_out.lock().drain(..) {
            backends.set_enable(&backend, true);
        }
        self.schedule.lock().last_health_check = Some(SystemTime::now());
    }
}

/// Polls a future once: the first discovery completes without waiting.
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Service discovery: each configured name, re-resolved on every update;
/// a name that fails to resolve keeps its last addresses.
struct Resolver {
    targets: Vec<(String, u16)>,
    last: AddressBook,
    first: std::sync::atomic::AtomicBool,
    look_up: LookUp,
}

impl Resolver {
    fn new(targets: &[UpstreamTarget], book: AddressBook, look_up: LookUp) -> Self {
        Self {
            targets: targets.iter().map(|t| (t.host.clone(), t.port)).collect(),
            last: book,
            first: std::sync::atomic::AtomicBool::new(true),
            look_up,
        }
    }

    fn backends(&self) -> BTreeSet<Backend> {
        let mut set = BTreeSet::new();
        for (index, addrs) in self.last.0.lock().iter().enumerate() {
            for addr in addrs {
                let backend = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                    weight: 1,
                    ext: Default::default(),
                };
                if !set.insert(backend) {
                    // The config refuses this; a name re-resolved since can still do it.
                    tracing::warn!(
                        upstream = self.targets[index].0,
                        address = %addr,
                        "an upstream of the pool now resolves to an address another one has: \
                         the pool keeps one upstream for it"
                    );
                }
            }
        }
        set
    }
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if !self.first.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let names = self.targets.iter().map(|(host, port)| (host, *port));
            let found = look_up_all(names, self.look_up).await;
            let mut last = self.last.0.lock();
            for (index, addrs) in found.into_iter().enumerate() {
                if let Some(addrs) = addrs {
                    last[index] = addrs;
                }
            }
        }
        Ok((self.backends(), HashMap::new()))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::TenantConfig;
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A tenant whose pool is `upstreams`, with `pool` as its `[tenant.pool]` lines.
    pub(in crate::upstream) fn tenant(upstreams: &[SocketAddr], pool: &str) -> TenantConfig {
        let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"site\"\nhosts = [\"site.test\"]\n\
             upstreams = [{}]\nplugin = \"builtin:standard\"\n[tenant.pool]\n{pool}\n",
            list.join(", ")
        );
        let path = std::env::temp_dir().join("cachet.toml");
        let mut config = crate::config::parse(&path, &text).expect("a valid config");
        config.tenants.remove(0)
    }

    fn pool_of(config: &TenantConfig, look_up: LookUp) -> Pool {
        let tls = Arc::new(OriginTls::new(config));
        let pool_config = config.pool.as_ref().unwrap();
        Pool::with_lookup("site", &config.upstreams, pool_config, tls, look_up)
    }

    /// With nothing usable left, a request goes to an upstream that passes its checks but was
    /// set aside after one failed connect, not to one failing its checks (that meant a 502
    /// while a working upstream stood by).
    #[test]
    fn a_last_resort_is_an_upstream_that_passes_its_checks() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let config = tenant(&[a, b], "health_interval = \"1h\"");
        let pool = pool_of(&config, system_look_up);
        let backends = pool.balancer.backends();
        let member = |addr| {
            let all = backends.get_backend();
            all.iter()
                .find(|m| m.as_inet() == Some(&addr))
                .unwrap()
                .clone()
        };
        backends.set_enable(&member(b), false);
        pool.set_aside(a);
        for key in 0..64 {
            let chosen = pool.select(format!("/page/{key}").as_bytes(), &[]).unwrap();
            assert_eq!(chosen.backend.as_inet(), Some(&a), "key {key}");
            assert!(chosen.last_resort);
        }
        // Once that one was tried, the failing one is what is left.
        let chosen = pool.select(b"/page/0", &[a]).unwrap();
        assert_eq!(chosen.backend.as_inet(), Some(&b));
    }

    /// An address the book no longer gives any name (a re-resolution dropped it, and the
    /// balancer still lists it until its new members are published) is never chosen: it was
    /// dialled as the first upstream, with that one's TLS and SNI.
    #[test]
    fn an_address_no_name_resolves_to_now_is_not_chosen() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let config = tenant(&[a, b], "health_interval = \"1h\"");
        let pool = pool_of(&config, system_look_up);
        *pool.book.0.lock() = vec![vec![], vec![b]];
        for key in 0..64 {
            let chosen = pool.select(format!("/page/{key}").as_bytes(), &[]).unwrap();
            assert_eq!(chosen.backend.as_inet(), Some(&b), "key {key}");
            assert_eq!(chosen.index, 1);
        }
        assert!(pool.select(b"/page/0", &[b]).is_none());
    }

    /// A health round lifts what was set aside before it began, not what a failed connect set
    /// aside while it ran: that upstream got traffic again until the next round.
    #[test]
    fn a_health_round_lifts_only_what_was_set_aside_before_it() {
        let backend = |port| Backend::new(&format!("127.0.0.1:{port}")).unwrap();
        let set_aside = SetAside::default();
        let before = Instant::now();
        set_aside.add(&backend(1), before);
        let started = before + Duration::from_millis(10);
        set_aside.add(&backend(2), started + Duration::from_millis(5));
        set_aside.lift_before(started);
        assert_eq!(set_aside.members(), [backend(2)]);
        set_aside.lift(backend(2).as_inet().unwrap());
        assert!(set_aside.members().is_empty());
    }

    /// In a large consistent-hash pool, the one upstream a request has not tried yet is found
    /// whatever the key: the ring's bounded walk missed it for a few keys in a hundred.
    #[test]
    fn the_last_untried_upstream_of_a_large_hash_pool_is_found() {
        let members: Vec<SocketAddr> = (1..=64)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect();
        let config = tenant(
            &members,
            "balance = \"consistent-hash\"\nhealth_interval = \"1h\"",
        );
        let pool = pool_of(&config, system_look_up);
        let (left, tried) = members.split_last().unwrap();
        for key in 0..300 {
            let chosen = pool.select(format!("/page/{key}").as_bytes(), tried);
            let chosen = chosen.unwrap_or_else(|| panic!("key {key}: none found"));
            assert_eq!(chosen.backend.as_inet(), Some(left), "key {key}");
        }
    }

    /// Health checks keep their interval while a lookup pass waits on a slow name server:
    /// with one lock for both, every check due during the lookup was skipped.
    #[test]
    fn a_slow_lookup_does_not_hold_back_health_checks() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let counted = checks.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if conn.is_err() {
                    return;
                }
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        fn slow_lookup(host: String, port: u16) -> BoxFuture<'static, Option<Vec<SocketAddr>>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Some(vec![SocketAddr::new(host.parse().unwrap(), port)])
            })
        }
        let config = tenant(
            &[addr],
            "health_interval = \"100ms\"\nresolve_interval = \"100ms\"",
        );
        let pool = Arc::new(pool_of(&config, slow_lookup));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // What `PoolMaintenance` does, for 1.5 s: the first lookup pass is still waiting.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                if pool.due() {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.maintain().await });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let checked = checks.load(Ordering::SeqCst);
        assert!(
            checked >= 8,
            "{checked} health checks in 1.5 s at a 100 ms interval during a slow lookup"
        );
        runtime.shutdown_background();
    }

    /// An address is known under the name whose latest lookup has it: one that moved from one
    /// name to another (the address set unchanged, so pingora keeps the backend it had) is
    /// dialled as the new name, with its SNI.
    #[test]
    fn an_address_belongs_to_the_name_that_resolves_to_it_now() {
        let (one, two): (SocketAddr, SocketAddr) = (
            "127.0.0.1:8443".parse().unwrap(),
            "[::ffff:127.0.0.1]:8443".parse().unwrap(),
        );
        let target = |host: &str, addrs: Vec<SocketAddr>| UpstreamTarget {
            written: format!("https://{host}:8443"),
            tls: true,
            host: host.into(),
            port: 8443,
            addrs,
        };
        let targets = [target("a.test", vec![one, two]), target("b.test", vec![])];
        let book = AddressBook::new(&targets);
        let resolver = Resolver::new(&targets, book.clone(), system_look_up);
        assert_eq!(
            (book.target_of(&one), book.target_of(&two)),
            (Some(0), Some(0))
        );
        // A re-resolution moves `two` to b.test.
        *resolver.last.0.lock() = vec![vec![one], vec![two]];
        assert_eq!(
            (book.target_of(&one), book.target_of(&two)),
            (Some(0), Some(1))
        );
        assert_eq!(resolver.backends().len(), 2, "the same address set");
        // A lookup that no longer has `two`: it belongs to no upstream, not to the first.
        *resolver.last.0.lock() = vec![vec![one], vec![]];
        assert_eq!(book.target_of(&two), None);
    }
}
