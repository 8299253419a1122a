//! The shared tier: objects several cachet nodes read and write in one Redis (or Valkey)
//! server, and purges that reach every node.
//!
//! - Objects are `SET <prefix>o:<name> <record> PX <lifetime>` (`record::keep_until`: the
//!   freshness and stale windows, then a while for revalidation when the response names a
//!   validator): Redis expires them when no node could use them any more.
//! - A purge on one node is added to the sorted set `<prefix>purges` (bounded, read by nodes
//!   that connect later) and published on the channel `<prefix>purges`; every node applies it
//!   to its L1 and its purge marks as it arrives, and a hard URL purge also deletes the shared
//!   copy (a soft one keeps it: the mark makes it stale, so it is revalidated).
//! - Every call is bounded: a lookup by `op_timeout`, calls on no client's path (writes,
//!   purges) and the chunks of a response under way by up to a second. An unreachable Redis
//!   makes lookups misses and writes errors (counted), never a failed request. The
//!   connection manager and the subscriber reconnect by themselves.
//! - Nothing is read while the node is not listening for purges (`SharedTier::may_read`).

use super::key::TierKey;
use super::purge_channel::{self, Message, RemotePurges, Subscriber};
use super::purge_outbox::PurgeOutbox;
use super::purges::{Purge, Target, MAX_MARKS};
use super::record::KeyCheck;
use super::redis_conn::Conn;
use super::redis_size::{RedisSize, SAMPLE_EVERY};
use super::sites::Sites;
use super::tier::{Delivery, Tier, TierCounters, TierStats};
use crate::config::SharedTierConfig;
use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManagerConfig;
use redis::{IntoConnectionInfo, ProtocolVersion};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::{Handle, Id as RuntimeId};

/// Purge fan-out is worth a longer wait than a lookup: it is not on a client's path.
pub(super) const PURGE_TIMEOUT: Duration = Duration::from_secs(1);
/// An object write runs on the tier writer, on no client's path: under load a large `SET`
/// may take longer than a lookup may wait, and failing it would leave the object unshared.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// A chunk read while a response is under way may wait this long: failing it aborts the
/// response, so a slow answer is better than none.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(1);
/// The most of one value a lookup reads: a whole record's body is at most
/// [`super::chunks::SINGLE_MAX`] (larger ones are chunked), and a response head is far below
/// the rest.
const MAX_VALUE_READ: usize = super::chunks::SINGLE_MAX + (2 << 20);
/// How long data sent to Redis may go unacknowledged before the kernel drops the connection.
const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(10);

/// Tells shared tiers apart in the per-thread lookup connections.
static NEXT_TIER_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's lookup connection for each (tier, runtime) it has read from.
    static LOOKUP_CONNS: RefCell<Vec<((u64, RuntimeId), LookupConn)>> = const { RefCell::new(Vec::new()) };
}

/// A worker thread's own lookup connection, and whether it is connected yet.
struct LookupConn {
    conn: Conn,
    /// Connected: lookups on this thread use it.
    ready: Arc<AtomicBool>,
    /// A connect is under way (one at a time).
    connecting: Arc<AtomicBool>,
}

/// How long a lookup connection may take to connect. It is made in the background, so no
/// lookup waits for it: a thread's lookups go through the tier's own connection meanwhile.
const LOOKUP_CONNECT_LIMIT: Duration = Duration::from_secs(2);

pub(crate) struct SharedTier {
    /// Writes, deletes and purges: their I/O runs on the tiers' runtime.
    conn: Conn,
    /// What lookup connections are made from (see [`SharedTier::lookup_conn`]).
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    id: u64,
    prefix: String,
    /// `<prefix>o:`, what every object's name starts with.
    object_prefix: Box<[u8]>,
    max_value: usize,
    op_timeout: Duration,
    /// This process's name on the purge channel.
    node: String,
    runtime: tokio::runtime::Handle,
    subscribed: Arc<AtomicBool>,
    /// Times the purge channel ran more than `purge_backlog` messages ahead of this node.
    purges_fell_behind: Arc<AtomicU64>,
    /// This node's purges Redis did not take, sent again by the purge channel.
    outbox: Arc<PurgeOutbox>,
    /// What the database holds, sampled.
    size: Arc<RedisSize>,
}

impl SharedTier {
    /// Sets up the connection (made lazily: Redis may be down at start) and the purge
    /// subscriber, both on `runtime`.
    pub(crate) fn start(
        config: &SharedTierConfig,
        runtime: &tokio::runtime::Handle,
        remote: RemotePurges,
    ) -> anyhow::Result<Arc<Self>> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .context("cache.shared.url")?;
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        // Commands go out at once (Nagle's wait is pure latency for request and answer), and
        // a connection whose peer stopped acknowledging is dropped by the kernel, so the
        // client reconnects: a Redis host gone or a flow a firewall dropped otherwise left
        // every later call to time out on it, for good.
        info = info.set_tcp_settings(
            redis::io::tcp::TcpSettings::default()
                .set_nodelay(true)
                .set_user_timeout(UNACKNOWLEDGED_LIMIT),
        );
        // The subscriber's own: RESP3 is what lets it bound what it holds (`purge_channel`).
        let subscriber_client = {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            client(info.clone().set_redis_settings(settings), config)?
        };
        let client = client(info, config)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout.max(Duration::from_millis(100))))
            // Each call is bounded by its own limit (`Conn::run`): a lookup by `op_timeout`,
            // a write, a purge or a chunk by up to a second. The connection's own bound, which
            // every call shares, must not cut the longer ones short, nor race a lookup's.
            .set_response_timeout(Some(
                config
                    .op_timeout
                    .max(PURGE_TIMEOUT)
                    .max(CHUNK_TIMEOUT)
                    .max(WRITE_TIMEOUT),
            ))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = {
            let _in_runtime = runtime.enter();
            Conn::lazy(client.clone(), manager_config.clone(), Arc::default())
                .context("setting up the shared tier's connection")?
        };
        let tier = Arc::new(Self {
            conn,
            client: client.clone(),
            manager_config,
            id: NEXT_TIER_ID.fetch_add(1, Relaxed),
            prefix: config.key_prefix.clone(),
            object_prefix: format!("{}o:", config.key_prefix).into_bytes().into(),
            max_value: config.max_object_bytes,
            op_timeout: config.op_timeout,
            node: format!("{}-{}", std::process::id(), super::record::now_ns()),
            runtime: runtime.clone(),
            subscribed: Arc::default(),
            purges_fell_behind: Arc::default(),
            outbox: Arc::new(PurgeOutbox::new(config.purge_backlog)),
            size: Arc::default(),
        });
        runtime.spawn(sample_size(
            tier.conn.clone(),
            tier.op_timeout,
            tier.size.clone(),
        ));
        runtime.spawn(purge_channel::subscribe(Subscriber {
            client: subscriber_client,
            channel: tier.channel(),
            node: tier.node.clone(),
            remote,
            subscribed: tier.subscribed.clone(),
            backlog: config.purge_backlog,
            fell_behind: tier.purges_fell_behind.clone(),
            counters: tier.conn.counters.clone(),
            outbox: tier.outbox.clone(),
            object_prefix: tier.object_prefix.clone(),
        }));
        Ok(tier)
    }

    fn object_key(&self, key: &TierKey) -> Vec<u8> {
        object_name(&self.object_prefix, key)
    }

    /// An object or a chunk, within `limit`, on this thread's lookup connection. At most
    /// [`MAX_VALUE_READ`] bytes of it: a longer value is no record cachet wrote (it fails its
    /// length check and is removed), and read whole it could cost hundreds of megabytes per
    /// lookup. (`GETRANGE` answers a missing name with an empty value, never a record.)
    async fn read(&self, key: &TierKey, limit: Duration) -> Result<Option<Bytes>, String> {
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(self.object_key(key)).arg(0).arg(MAX_VALUE_READ - 1);
        let value: Vec<u8> = self.lookup_conn().run(limit, cmd).await?;
        Ok((!value.is_empty()).then(|| Bytes::from(value)))
    }

    /// Whether copies may be read: only while this node listens for purges, the kept marks
    /// applied. Before that (Redis back after the start, a channel lost) marks it has not
    /// read may shadow a copy, and tag-purged, soft-purged and `Vary` variant copies stay in
    /// Redis with only their mark to hide them: they were served.
    /// Nor while Redis may evict the marks themselves (they have no expiry; see
    /// [`RedisSize::evicts_any_key`]).
    fn may_read(&self) -> Result<(), String> {
        if self.size.evicts_any_key() {
            return Err(EVICTS_MARKS.into());
        }
        // Acquire: the marks applied before `subscribed` was set are seen by the lookup.
        if self.subscribed.load(Acquire) {
            Ok(())
        } else {
            Err("not listening for purges yet: its copies may have been purged".into())
        }
    }

    fn channel(&self) -> String {
        format!("{}purges", self.prefix)
    }

    /// The hash of which hosts each tenant name served (`super::sites`).
    fn sites_key(&self) -> String {
        format!("{}sites", self.prefix)
    }

    /// The connection a lookup uses: one per worker thread and runtime, so its I/O runs on
    /// the runtime of the request that waits for it. Through the tiers' runtime, every L2
    /// read woke one of its threads and waited for it to wake the worker again: two
    /// cross-thread hand-offs and their context switches per read. A thread's connection is
    /// made in the background on its first lookup; until it is connected, lookups take the
    /// tier's own connection (connected at start), so none waits on a handshake within its
    /// `op_timeout` (a busy machine made a node's first lookups miss that way).
    fn lookup_conn(&self) -> Conn {
        let Ok(runtime) = Handle::try_current() else {
            return self.conn.clone();
        };
        let key = (self.id, runtime.id());
        LOOKUP_CONNS.with_borrow_mut(|conns| {
            let index = match conns.iter().position(|(k, _)| *k == key) {
                Some(index) => index,
                None => {
                    let made = Conn::lazy(
                        self.client.clone(),
                        self.manager_config.clone(),
                        self.conn.counters.clone(),
                    );
                    let Ok(conn) = made else {
                        return self.conn.clone();
                    };
                    let own = LookupConn {
                        conn,
                        ready: Arc::default(),
                        connecting: Arc::default(),
                    };
                    conns.push((key, own));
                    conns.len() - 1
                }
            };
            let own = &conns[index].1;
            if own.ready.load(Relaxed) {
                return own.conn.clone();
            }
            if !own.connecting.swap(true, Relaxed) {
                let (conn, ready, connecting) =
                    (own.conn.clone(), own.ready.clone(), own.connecting.clone());
                runtime.spawn(async move {
                    if conn.connect(LOOKUP_CONNECT_LIMIT).await {
                        ready.store(true, Relaxed);
                    } else {
                        // Redis is down or slow: the next try after a pause, not per lookup.
                        tokio::time::sleep(LOOKUP_CONNECT_LIMIT).await;
                    }
                    connecting.store(false, Relaxed);
                });
            }
            self.conn.clone()
        })
    }
}

#[async_trait]
impl Tier for SharedTier {
    fn name(&self) -> &'static str {
        "l2-shared"
    }

    /// Redis keys are only names: any value can be copied onto any of them.
    fn key_check(&self) -> KeyCheck {
        KeyCheck::Digest
    }

    async fn get(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        self.may_read()?;
        self.read(key, self.op_timeout).await
    }

    async fn get_chunk(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        self.read(key, self.op_timeout.max(CHUNK_TIMEOUT)).await
    }

    async fn get_first_chunk(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        self.may_read()?;
        self.read(key, self.op_timeout).await
    }

    async fn contains_all(&self, keys: &[TierKey]) -> Result<bool, String> {
        self.may_read()?;
        let mut cmd = redis::pipe();
        let exists = cmd.cmd("EXISTS");
        for key in keys {
            exists.arg(self.object_key(key));
        }
        let (found,): (usize,) = self.conn.run(self.op_timeout, cmd).await?;
        Ok(found == keys.len())
    }

    fn remove_chunks(&self, keys: &[TierKey]) {
        if keys.is_empty() {
            return;
        }
        let mut cmd = redis::pipe();
        let del = cmd.cmd("DEL");
        for key in keys {
            del.arg(self.object_key(key));
        }
        del.ignore();
        self.conn.spawn(
            &self.runtime,
            self.op_timeout.max(PURGE_TIMEOUT),
            cmd,
            "a chunk delete",
        );
    }

    async fn put(&self, key: &TierKey, value: Bytes, lifetime: Duration) -> Result<(), String> {
        let millis = lifetime.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut cmd = redis::pipe();
        cmd.cmd("SET")
            .arg(self.object_key(key))
            .arg(value.as_ref())
            .arg("PX")
            .arg(millis)
            .ignore();
        self.conn
            .run::<()>(self.op_timeout.max(WRITE_TIMEOUT), cmd)
            .await
    }

    fn remove(&self, key: &TierKey) {
        let mut cmd = redis::pipe();
        cmd.cmd("DEL").arg(self.object_key(key)).ignore();
        TierCounters::bump(&self.conn.counters.removed);
        self.conn.spawn(
            &self.runtime,
            self.op_timeout.max(PURGE_TIMEOUT),
            cmd,
            "a delete",
        );
    }

    /// Sent in the background: a failure to deliver is counted and logged, and the returned
    /// delivery says how it went (a PURGE waits for it: Redis accepting the connection is not
    /// Redis answering). While this node knows Redis to be unreachable (its purge
    /// subscription is down) the purge is still sent, in case Redis is back within the purge
    /// timeout, but reported as not kept: the other nodes may keep their copies. A purge
    /// Redis did not take is kept in the outbox, and sent again once the node listens.
    fn publish(&self, purge: &Purge) -> Result<Option<Delivery>, String> {
        let mut cmd = redis::pipe();
        if !add_purge_commands(
            &mut cmd,
            &self.object_prefix,
            &self.channel(),
            &self.node,
            purge,
        ) {
            return Ok(None);
        }
        let sent = self
            .conn
            .spawn_reporting(&self.runtime, PURGE_TIMEOUT, cmd, "a purge");
        let delivery = keep_if_not_taken(&self.runtime, sent, purge.clone(), &self.outbox);
        if !self.subscribed.load(Relaxed) {
            return Err(format!("Redis is not reachable: {NOT_YET_ELSEWHERE}"));
        }
        Ok(Some(delivery))
    }

    async fn sites(&self) -> Result<Sites, String> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.sites_key());
        let recorded: Vec<(String, String)> = self.conn.run(PURGE_TIMEOUT, cmd).await?;
        // A value no node wrote (not a list of hosts) says nothing.
        Ok(recorded
            .into_iter()
            .filter_map(|(name, hosts)| Some((name, serde_json::from_str(&hosts).ok()?)))
            .collect())
    }

    /// Only `now`'s names are written: the hash keeps the others, and what was read may be
    /// older than what another node wrote since.
    async fn record_sites(&self, _recorded: &Sites, now: &Sites) -> Result<(), String> {
        if now.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.sites_key());
        for (name, hosts) in now {
            let hosts = serde_json::to_string(hosts).map_err(|e| e.to_string())?;
            cmd.arg(name).arg(hosts);
        }
        self.conn
            .run::<redis::Value>(PURGE_TIMEOUT, cmd)
            .await
            .map(drop)
    }

    fn max_value(&self) -> usize {
        self.max_value
    }

    fn counters(&self) -> &TierCounters {
        &self.conn.counters
    }

    fn stats(&self) -> TierStats {
        let mut stats = TierStats {
            name: self.name(),
            stored_bytes: self.size.used_bytes(),
            budget_bytes: None,
            connected: self.subscribed.load(Relaxed),
            purges_fell_behind: self.purges_fell_behind.load(Relaxed),
            purges_to_resend: self.outbox.len() as u64,
            purges_not_resent: self.outbox.dropped(),
            ..TierStats::default()
        };
        self.conn.counters.fill(&mut stats);
        stats.objects = self.size.keys();
        stats
    }
}

/// What a purge Redis has not taken (yet) leaves undone.
const NOT_YET_ELSEWHERE: &str =
    "the other nodes may keep their copies until Redis is back (this node sends it again then)";

/// Adds to `cmd` what spreads a purge made on `node`: its mark is added to the set `marks`
/// (cut to its newest), a hard URL purge deletes the plain shared copy (a soft one keeps it:
/// its mark makes it stale, to be revalidated), and the purge is published on the channel of
/// the same name. False, adding nothing, for a purge that cannot be written as JSON.
pub(super) fn add_purge_commands(
    cmd: &mut redis::Pipeline,
    object_prefix: &[u8],
    marks: &str,
    node: &str,
    purge: &Purge,
) -> bool {
    let Ok(message) = serde_json::to_string(&Message {
        node: node.to_owned(),
        purge: purge.clone(),
    }) else {
        return false;
    };
    if add_mark(cmd, marks, purge).is_err() {
        return false;
    }
    if let (Target::Key(hex), false) = (&purge.target, purge.soft) {
        if let Some(key) = TierKey::from_hex(hex) {
            cmd.cmd("DEL")
                .arg(object_name(object_prefix, &key))
                .ignore();
        }
    }
    cut_marks(cmd, marks);
    cmd.cmd("PUBLISH").arg(marks).arg(message).ignore();
    true
}

/// The name of `key`'s object in Redis, after `object_prefix` (`<prefix>o:`).
fn object_name(object_prefix: &[u8], key: &TierKey) -> Vec<u8> {
    let mut name = Vec::with_capacity(object_prefix.len() + key.as_bytes().len());
    name.extend_from_slice(object_prefix);
    name.extend_from_slice(key.as_bytes());
    name
}

/// Hands `sent`'s outcome on, keeping `purge` in `outbox` when Redis did not take it.
fn keep_if_not_taken(
    runtime: &tokio::runtime::Handle,
    sent: Delivery,
    purge: Purge,
    outbox: &Arc<PurgeOutbox>,
) -> Delivery {
    let (report, delivery) = tokio::sync::oneshot::channel();
    let outbox = outbox.clone();
    runtime.spawn(async move {
        let outcome = match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("stopped before sending it".to_owned()),
        };
        let outcome = outcome.map_err(|e| {
            outbox.keep(purge);
            format!("{e}: {NOT_YET_ELSEWHERE}")
        });
        let _ = report.send(outcome);
    });
    delivery
}

/// Adds `purge`'s mark to the sorted set `marks`, as every node reads it: the purge as JSON,
/// scored by its date (the set is cut to its newest by that score).
pub(super) fn add_mark(
    pipe: &mut redis::Pipeline,
    marks: &str,
    purge: &Purge,
) -> serde_json::Result<()> {
    let mark = serde_json::to_string(purge)?;
    pipe.cmd("ZADD").arg(marks).arg(purge.at).arg(mark).ignore();
    Ok(())
}

/// Cuts the sorted set `marks` to its newest [`MAX_MARKS`].
pub(super) fn cut_marks(pipe: &mut redis::Pipeline, marks: &str) {
    pipe.cmd("ZREMRANGEBYRANK")
        .arg(marks)
        .arg(0)
        .arg(-(MAX_MARKS as i64) - 1)
        .ignore();
}

/// Why no copy is read under an `allkeys-*` eviction policy.
const EVICTS_MARKS: &str = "Redis's maxmemory-policy is allkeys-*: it may evict the purge marks \
    (kept without an expiry), and copies purged by tag, soft or by URL for a Vary variant would \
    be served again, so no copy is read from it (every object has an expiry: set a volatile-* \
    policy or noeviction)";

/// Samples what the database holds every [`SAMPLE_EVERY`], for as long as the process runs;
/// a sample Redis does not answer in time is skipped (and counts as no error: no request
/// waited on it).
async fn sample_size(conn: Conn, limit: Duration, size: Arc<RedisSize>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said = false;
    loop {
        every.tick().await;
        let mut query = redis::pipe();
        query.cmd("DBSIZE").cmd("INFO").arg("memory");
        match conn.run::<(u64, String)>(limit, query).await {
            Ok((keys, info)) => {
                match size.record(keys, &info) {
                    Some(true) => tracing::error!("shared tier: {EVICTS_MARKS}"),
                    Some(false) => tracing::info!(
                        "shared tier: Redis no longer evicts keys without an expiry; copies are \
                         read again"
                    ),
                    None => {}
                }
                said = false;
            }
            // Once per spell: a Redis user without DBSIZE or INFO (an ACL) would otherwise
            // show an empty tier with no word why.
            Err(e) if !said => {
                tracing::warn!("shared tier: cannot read Redis's size for /status: {e}");
                said = true;
            }
            Err(_) => {}
        }
    }
}

/// The client for `info`: plain, or for `rediss://` with the configured roots (the system's
/// otherwise) and client certificate. Certificates are always verified.
fn client(info: redis::ConnectionInfo, config: &SharedTierConfig) -> anyhow::Result<redis::Client> {
    if !config.url.starts_with("rediss://") {
        return redis::Client::open(info).context("cache.shared.url");
    }
    let certificates = redis::TlsCertificates {
        client_tls: config.client_cert.as_ref().map(|c| redis::ClientTlsConfig {
            client_cert: c.cert_pem.clone(),
            client_key: c.key_pem.clone(),
        }),
        root_cert: config.ca_pem.clone(),
    };
    redis::Client::build_with_tls(info, certificates).context("cache.shared: TLS settings")
}
