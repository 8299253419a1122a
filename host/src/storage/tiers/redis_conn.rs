//! One connection to the shared tier's Redis, as the tier's calls use it: every call bounded
//! by its own limit, one retry on a connection found broken, failures counted, and a
//! connection that stops answering replaced.
//!
//! redis-rs's connection manager reconnects when its connection is closed or fails, not when
//! it stays open and silent. A peer that acknowledges and never answers (a proxy in front of
//! Redis whose backend is gone, a primary that hung while a failover moved its name) left
//! every later call on that connection to time out, for as long as the process ran.

use super::tier::{Delivery, TierCounters};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls in a row that may go unanswered before the connection is replaced.
const UNANSWERED_LIMIT: u32 = 3;
/// The least time between two replacements of one connection: a Redis that is paused for
/// everyone answers no new connection either, and each replacement costs a handshake.
const REPLACE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The connection and the counters, cloned into the tasks a call spawns.
#[derive(Clone)]
pub(super) struct Conn {
    link: Arc<Link>,
    pub(super) counters: Arc<TierCounters>,
}

struct Link {
    redis: ArcSwap<ConnectionManager>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Where the connection's I/O runs; its replacements' too.
    runtime: tokio::runtime::Handle,
    unanswered: AtomicU32,
    replaced_at: Mutex<Option<Instant>>,
}

impl Conn {
    /// A connection made on first use, its I/O on the runtime this is called in.
    ///
    /// Panics outside a tokio runtime.
    pub(super) fn lazy(
        client: redis::Client,
        config: ConnectionManagerConfig,
        counters: Arc<TierCounters>,
    ) -> redis::RedisResult<Self> {
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            link: Arc::new(Link {
                redis: ArcSwap::from_pointee(redis),
                client,
                config,
                runtime: tokio::runtime::Handle::current(),
                unanswered: AtomicU32::new(0),
                replaced_at: Mutex::new(None),
            }),
            counters,
        })
    }

    /// Runs `cmd` under `limit`. A command that finds its connection broken (Redis restarted
    /// since this connection last served) is sent once more, within the same limit, on the
    /// connection the manager makes in its place: every command here may be repeated, and a
    /// connection idle through an outage would otherwise fail its first use after it.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        limit: Duration,
        cmd: impl Into<Query>,
    ) -> Result<T, String> {
        let cmd = cmd.into();
        let mut redis = ConnectionManager::clone(&self.link.redis.load());
        let attempts = async {
            match cmd.send::<T>(&mut redis).await {
                Err(e) if e.is_unrecoverable_error() => cmd.send::<T>(&mut redis).await,
                answered => answered,
            }
        };
        match tokio::time::timeout(limit, attempts).await {
            Ok(outcome) => {
                match &outcome {
                    // The manager's own response timeout.
                    Err(e) if e.is_timeout() => self.unanswered(),
                    // An answer, or a connection found broken, which the manager replaces.
                    _ => self.link.unanswered.store(0, Relaxed),
                }
                outcome.map_err(|e| e.to_string())
            }
            Err(_) => {
                TierCounters::bump(&self.counters.timeouts);
                self.unanswered();
                Err(format!("no answer within {limit:?}"))
            }
        }
    }

    /// Makes the connection (a `PING` within `limit`), counting nothing: whether it is ready.
    pub(super) async fn connect(&self, limit: Duration) -> bool {
        let mut redis = ConnectionManager::clone(&self.link.redis.load());
        answers_ping(&mut redis, limit).await
    }

    /// Counts a call Redis did not answer; past [`UNANSWERED_LIMIT`] in a row, a new
    /// connection is made in the background, and the calls from then on go to it once it
    /// answers a `PING` (the old one ends once its calls are done). Swapped in unconnected,
    /// every call waited for its handshake within its own few milliseconds: when the
    /// timeouts came from this process being short of CPU, not from Redis, each
    /// replacement made more of them, once a second.
    fn unanswered(&self) {
        let link = &self.link;
        if link.unanswered.fetch_add(1, Relaxed) + 1 < UNANSWERED_LIMIT {
            return;
        }
        {
            let mut replaced_at = link.replaced_at.lock();
            if replaced_at.is_some_and(|at| at.elapsed() < REPLACE_AT_MOST_EVERY) {
                return;
            }
            *replaced_at = Some(Instant::now());
        }
        link.unanswered.store(0, Relaxed);
        let conn = self.clone();
        link.runtime.spawn(async move { conn.replace().await });
    }

    /// Makes a new connection and, once it answers within [`REPLACE_AT_MOST_EVERY`], sends
    /// the calls from now on to it.
    async fn replace(self) {
        let link = &self.link;
        let made =
            ConnectionManager::new_lazy_with_config(link.client.clone(), link.config.clone());
        let mut fresh = match made {
            Ok(fresh) => fresh,
            Err(e) => return tracing::warn!("shared tier: cannot make a new connection: {e}"),
        };
        if !answers_ping(&mut fresh, REPLACE_AT_MOST_EVERY).await {
            // Redis answers no one (paused, or gone): the old connection stays, and the next
            // calls it leaves unanswered try again.
            return;
        }
        link.redis.store(Arc::new(fresh));
        TierCounters::bump(&self.counters.reconnects);
        tracing::warn!(
            "shared tier: Redis left {UNANSWERED_LIMIT} calls in a row unanswered; using a new \
             connection"
        );
    }

    /// Runs `cmd` in the background, counting a failure.
    pub(super) fn spawn(
        &self,
        runtime: &tokio::runtime::Handle,
        limit: Duration,
        cmd: redis::Pipeline,
        what: &'static str,
    ) {
        drop(self.spawn_reporting(runtime, limit, cmd, what));
    }

    /// [`Self::spawn`], saying how it went.
    pub(super) fn spawn_reporting(
        &self,
        runtime: &tokio::runtime::Handle,
        limit: Duration,
        cmd: redis::Pipeline,
        what: &'static str,
    ) -> Delivery {
        let (report, delivery) = tokio::sync::oneshot::channel();
        let conn = self.clone();
        runtime.spawn(async move {
            let outcome = conn.run::<()>(limit, cmd).await;
            if let Err(e) = &outcome {
                TierCounters::bump(&conn.counters.errors);
                tracing::warn!("shared tier: {what} did not reach Redis: {e}");
            }
            // Nobody may be waiting (an invalidation): that is fine.
            let _ = report.send(outcome);
        });
        delivery
    }
}

/// Whether `redis` answers a `PING` within `limit` (connecting first if it must).
async fn answers_ping(redis: &mut ConnectionManager, limit: Duration) -> bool {
    let ping = redis::cmd("PING");
    let pong = tokio::time::timeout(limit, ping.query_async::<String>(redis));
    matches!(pong.await, Ok(Ok(_)))
}

/// What [`Conn::run`] sends: one command (a lookup: its reply is converted as it is, not
/// composed as a pipeline's), or several in one round trip.
pub(super) enum Query {
    One(redis::Cmd),
    Many(redis::Pipeline),
}

impl From<redis::Cmd> for Query {
    fn from(cmd: redis::Cmd) -> Self {
        Self::One(cmd)
    }
}

impl From<redis::Pipeline> for Query {
    fn from(pipeline: redis::Pipeline) -> Self {
        Self::Many(pipeline)
    }
}

impl Query {
    async fn send<T: redis::FromRedisValue>(
        &self,
        redis: &mut ConnectionManager,
    ) -> redis::RedisResult<T> {
        match self {
            Self::One(cmd) => cmd.query_async(redis).await,
            Self::Many(pipeline) => pipeline.query_async(redis).await,
        }
    }
}
