//! Upstreams named by host name outside a pool (a tenant's single `upstream`, its
//! `[tenant.backends]`): their addresses are looked up again every `resolve_interval`, as a
//! pool's members are, so an origin that moves to a new address is followed without a
//! reload. A lookup that fails, or finds nothing, keeps the last addresses.

use crate::config::UpstreamTarget;
use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One named target's current addresses.
struct Named {
    host: String,
    port: u16,
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// Where requests start: the address after the last one a connect failed on (None: the
    /// first). Without it every request dialled a dead first address again and waited out
    /// its connect timeout before moving on.
    start: Mutex<Option<SocketAddr>>,
}

/// The named targets of one tenant, by the index the caller knows them by.
pub(super) struct Names {
    /// `None` for a target given as an IP address: nothing to look up.
    targets: Vec<Option<Named>>,
    interval: Duration,
    next: Mutex<Instant>,
    busy: tokio::sync::Mutex<()>,
    look_up: LookUp,
}

impl Names {
    /// `targets` by index; `None` for an index with nothing to look up.
    pub(super) fn new<'t>(
        targets: impl IntoIterator<Item = Option<&'t UpstreamTarget>>,
        interval: Duration,
    ) -> Self {
        let targets = targets
            .into_iter()
            .map(|t| {
                let t = t?;
                let literal = t.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
                (!literal).then(|| Named {
                    host: t.host.clone(),
                    port: t.port,
                    addrs: ArcSwap::from_pointee(t.addrs.clone()),
                    start: Mutex::new(None),
                })
            })
            .collect();
        Self {
            targets,
            interval,
            next: Mutex::new(Instant::now() + interval),
            busy: tokio::sync::Mutex::new(()),
            look_up: system_look_up,
        }
    }

    /// The same, with names looked up by `look_up` (tests: a slow name server).
    #[cfg(test)]
    fn looked_up_by(mut self, look_up: LookUp) -> Self {
        self.look_up = look_up;
        self
    }

    /// The address to dial for target `index`: of its latest lookup's addresses (or, for an
    /// IP target, of the configured ones), the first this request has not tried yet, counting
    /// from where requests start now (see [`Names::connect_failed`]); the start again when it
    /// has tried them all. Also how many there are.
    pub(super) fn address(
        &self,
        index: usize,
        target: &UpstreamTarget,
        tried: &[SocketAddr],
    ) -> (SocketAddr, usize) {
        let named = self.targets.get(index).and_then(Option::as_ref);
        let looked_up = named.map(|named| named.addrs.load_full());
        let addrs = match &looked_up {
            Some(addrs) if !addrs.is_empty() => addrs.as_slice(),
            _ => target.addrs.as_slice(),
        };
        let start = named.map_or(0, |named| start_index(*named.start.lock(), addrs));
        let mut in_order = addrs[start..].iter().chain(&addrs[..start]);
        let untried = in_order.find(|a| !tried.contains(a));
        (*untried.unwrap_or(&addrs[start]), addrs.len())
    }

    /// A connect to `addr`, an address of target `index`, failed: if requests start there,
    /// they start at the next address from now on (the first again after the last), until a
    /// connect fails there too.
    pub(super) fn connect_failed(&self, index: usize, addr: SocketAddr) {
        let Some(named) = self.targets.get(index).and_then(Option::as_ref) else {
            return;
        };
        let addrs = named.addrs.load();
        let Some(failed) = addrs.iter().position(|a| *a == addr) else {
            return;
        };
        let mut start = named.start.lock();
        let current = start_index(*start, &addrs);
        // Only the first request to find the start dead moves it: others that failed on it
        // at the same time must not move it past a good address.
        if current == failed {
            *start = Some(addrs[(failed + 1) % addrs.len()]);
        }
    }

    /// Whether a lookup is due (cheap: no pass is started for nothing).
    pub(super) fn due(&self) -> bool {
        self.targets.iter().any(Option::is_some) && Instant::now() >= *self.next.lock()
    }

    /// Looks every name up again once `interval` has passed since the last time.
    pub(super) async fn maintain(&self) {
        if self.targets.iter().all(Option::is_none) {
            return;
        }
        let Ok(_busy) = self.busy.try_lock() else {
            return;
        };
        {
            let mut next = self.next.lock();
            let now = Instant::now();
            if now < *next {
                return;
            }
            *next = now + self.interval;
        }
        let named: Vec<&Named> = self.targets.iter().flatten().collect();
        let found = look_up_all(named.iter().map(|n| (&n.host, n.port)), self.look_up).await;
        for (named, found) in named.into_iter().zip(found) {
            let Some(found) = found else {
                continue;
            };
            if **named.addrs.load() != found {
                tracing::info!(host = named.host, addresses = ?found, "upstream name re-resolved");
                named.addrs.store(Arc::new(found));
            }
        }
    }
}

/// Where in `addrs` requests start: at `start` while the name still has it, else the first.
fn start_index(start: Option<SocketAddr>, addrs: &[SocketAddr]) -> usize {
    start
        .and_then(|start| addrs.iter().position(|a| *a == start))
        .unwrap_or(0)
}

/// How long one re-resolution may take. The system resolver retries each name server for
/// seconds (`options timeout:5 attempts:2` by default): unbounded, one unreachable DNS
/// server stalled a tenant's lookups for as long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks a name up: its addresses now, or None to keep the last ones.
pub(super) type LookUp = fn(String, u16) -> BoxFuture<'static, Option<Vec<SocketAddr>>>;

/// [`look_up`] as a [`LookUp`].
pub(super) fn system_look_up(
    host: String,
    port: u16,
) -> BoxFuture<'static, Option<Vec<SocketAddr>>> {
    Box::pin(async move { look_up(&host, port).await })
}

/// Looks every name up at once, so a pass takes as long as its slowest name, not their sum
/// (names one after another held a pass for names × [`LOOKUP_TIMEOUT`] behind one slow name
/// server). The results are in the order of `names`.
pub(super) async fn look_up_all<'n>(
    names: impl Iterator<Item = (&'n String, u16)>,
    look_up: LookUp,
) -> Vec<Option<Vec<SocketAddr>>> {
    futures::future::join_all(names.map(|(host, port)| look_up(host.clone(), port))).await
}

/// The addresses `host` has now; None (with a warning) when the lookup fails, finds nothing
/// or takes longer than [`LOOKUP_TIMEOUT`], so the caller keeps the last ones. Pools and
/// single upstreams both use it.
async fn look_up(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(found)) => Some(found.collect::<Vec<_>>()).filter(|found| !found.is_empty()),
        Ok(Err(e)) => {
            tracing::warn!(host, "cannot re-resolve upstream: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(
                host,
                "cannot re-resolve upstream: no answer within {LOOKUP_TIMEOUT:?}"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name's addresses are dialled in order, skipping those this request could not connect
    /// to: an unreachable first address (an IPv6 one on a host with no IPv6 route) no longer
    /// fails every request. (The resolver sorts loopback addresses, so an end-to-end test
    /// cannot put a refusing 127.0.0.1 address first.)
    #[test]
    fn a_name_is_dialled_at_its_first_address_not_tried_yet() {
        let first: SocketAddr = "[2001:db8::1]:8080".parse().unwrap();
        let second: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let target = UpstreamTarget {
            written: "origin.example:8080".into(),
            tls: false,
            host: "origin.example".into(),
            port: 8080,
            addrs: vec![first, second],
        };
        let names = Names::new([Some(&target)], Duration::from_secs(60));
        assert_eq!(names.address(0, &target, &[]), (first, 2));
        assert_eq!(names.address(0, &target, &[first]), (second, 2));
        // Every one tried: the first again (the caller stops retrying).
        assert_eq!(names.address(0, &target, &[first, second]), (first, 2));
    }

    /// A tenant's names are looked up at once: three names behind a name server that takes
    /// 400 ms each are re-resolved in one such wait, not three.
    #[test]
    fn names_are_looked_up_at_once() {
        fn slow(host: String, port: u16) -> BoxFuture<'static, Option<Vec<SocketAddr>>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let last = host.strip_prefix("origin-")?.parse::<u8>().ok()?;
                Some(vec![SocketAddr::from(([127, 0, 0, last], port))])
            })
        }
        let targets: Vec<UpstreamTarget> = (1..=3)
            .map(|n| UpstreamTarget {
                written: format!("origin-{n}:80"),
                tls: false,
                host: format!("origin-{n}"),
                port: 80,
                addrs: vec![SocketAddr::from(([127, 0, 0, 100], 80))],
            })
            .collect();
        let names = Names::new(targets.iter().map(Some), Duration::ZERO).looked_up_by(slow);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let began = Instant::now();
        runtime.block_on(names.maintain());
        let took = began.elapsed();
        assert!(took < Duration::from_millis(800), "took {took:?}");
        for (index, target) in targets.iter().enumerate() {
            let want = SocketAddr::from(([127, 0, 0, index as u8 + 1], 80));
            assert_eq!(names.address(index, target, &[]), (want, 1));
        }
    }

    /// After a connect to a name's first address failed, requests start at the next one: a
    /// dead first address costs one request its connect timeout, not every request.
    #[test]
    fn requests_start_past_an_address_a_connect_failed_on() {
        let addrs: Vec<SocketAddr> = ["[2001:db8::1]:8080", "127.0.0.1:8080", "127.0.0.2:8080"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let target = UpstreamTarget {
            written: "origin.example:8080".into(),
            tls: false,
            host: "origin.example".into(),
            port: 8080,
            addrs: addrs.clone(),
        };
        let names = Names::new([Some(&target)], Duration::from_secs(60));
        names.connect_failed(0, addrs[0]);
        assert_eq!(names.address(0, &target, &[]), (addrs[1], 3));
        // A request that had already failed on the first moves nothing further.
        names.connect_failed(0, addrs[0]);
        assert_eq!(names.address(0, &target, &[]), (addrs[1], 3));
        // Failing there too: on to the third, then round to the first.
        assert_eq!(names.address(0, &target, &[addrs[1]]), (addrs[2], 3));
        names.connect_failed(0, addrs[1]);
        assert_eq!(names.address(0, &target, &[]), (addrs[2], 3));
        names.connect_failed(0, addrs[2]);
        assert_eq!(names.address(0, &target, &[]), (addrs[0], 3));
        assert_eq!(names.address(0, &target, &addrs), (addrs[0], 3));
    }
}
