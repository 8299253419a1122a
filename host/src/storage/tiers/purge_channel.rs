//! The purge channel: how a node hears the purges other nodes make.
//!
//! A node subscribes to `<prefix>purges` on a RESP3 connection of its own and, each time it
//! (re)connects, reads the marks kept in the sorted set of the same name, so purges made
//! while it was not listening still apply. What the connection receives waits for the
//! listener in a queue of at most `[cache.shared] purge_backlog` messages: redis-rs's own
//! pub/sub queue has no bound, so a burst of purges faster than this node applies them grew
//! its memory without limit. When the queue is full the node stops listening (what it held
//! is dropped) and reconnects, and the kept marks stand for what it dropped.
//!
//! Redis can come back with older data than it had: restarted from a snapshot taken before
//! some purges, or a replica that missed the last writes taking over. The purged copies are
//! back and their marks gone from the set; a node that was listening still holds the marks,
//! but one started afterwards read the set without them and served the copies. So a node
//! that reconnects to another instance than the one it last listened to (Redis's `run_id`)
//! writes the marks it holds back into the set before it listens again.

use super::super::MemoryStorage;
use super::purge_outbox::PurgeOutbox;
use super::purges::{Purge, MAX_MARKS};
use super::shared::{add_mark, add_purge_commands, cut_marks, PURGE_TIMEOUT};
use super::tier::TierCounters;
use redis::{PushInfo, PushKind};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Pause between attempts to reach Redis again for the purge channel.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(200);
/// A node that keeps falling behind says so at most this often.
const FELL_BEHIND_SAID_EVERY: Duration = Duration::from_secs(60);
/// How often the purge channel is pinged. A connection cut without a word (a NAT or firewall
/// dropping an idle flow, a Redis host gone) never ends the message stream by itself: the
/// node went on believing it heard every purge.
const CHANNEL_PING: Duration = Duration::from_secs(5);
/// How far ahead of this node's clock a purge read from Redis may be dated as it is: clocks
/// of nodes differ a little. A mark dated further ahead would hide every copy of its target
/// until that time (for ever, for a date far away), kept on disk across restarts; it is
/// dated now instead ([`as_applied`]).
const MAX_CLOCK_AHEAD_NS: u64 = 60_000_000_000;

/// After a lost connection, the kept marks dated from this long before the node stopped
/// listening apply to its L1 again: a purge another node made meanwhile is dated by that
/// node's clock, which may run behind this one's. With a second's margin a skew of two left
/// an L1 copy of any age in place (L1 hits never consult the marks) until it expired.
/// Clocks further apart than this are beyond what nodes are asked to keep (NTP keeps them
/// within milliseconds; docs/scale-out.md).
const MAX_CLOCK_SKEW_NS: u64 = 10_000_000_000;

/// Marks written back to a new Redis instance per round trip, each within [`PURGE_TIMEOUT`].
const WRITE_BACK_BATCH: usize = 1000;
/// Purges sent again per round trip, each within [`PURGE_TIMEOUT`] (four commands each).
const RESEND_BATCH: usize = 100;

/// What travels on the purge channel.
#[derive(Serialize, Deserialize)]
pub(super) struct Message {
    /// The node that made the purge (it has applied it already).
    pub(super) node: String,
    pub(super) purge: Purge,
}

/// Applies purges other nodes made to this node's L1, purge marks and disk tier.
pub(crate) struct RemotePurges {
    pub(crate) l1: &'static MemoryStorage,
    pub(crate) marks: Arc<super::purges::PurgeLog>,
    /// Keeps other nodes' purges as it keeps this node's: marks kept only in memory were
    /// lost by a restart while Redis was empty or away, and the disk's copies came back.
    pub(crate) disk: Option<Arc<super::disk::DiskTier>>,
}

impl RemotePurges {
    fn apply(&self, purge: &Purge) {
        self.keep(purge);
        self.l1.apply_purge(purge);
    }

    /// Marks a purge, and writes it to the disk tier when it says anything new (the disk
    /// tier counts and logs its own failures).
    fn keep(&self, purge: &Purge) {
        if self.marks.record(purge) {
            if let Some(disk) = &self.disk {
                disk.keep_remote(purge);
            }
        }
    }
}

/// Everything the subscriber needs, for as long as the process runs.
pub(super) struct Subscriber {
    /// Made for RESP3: only a RESP3 connection hands its messages to a sender of ours.
    pub(super) client: redis::Client,
    pub(super) channel: String,
    /// This process's name on the channel: its own purges are applied already.
    pub(super) node: String,
    pub(super) remote: RemotePurges,
    /// Whether the node is listening now.
    pub(super) subscribed: Arc<AtomicBool>,
    pub(super) backlog: usize,
    /// Times the channel ran more than `backlog` messages ahead of the node.
    pub(super) fell_behind: Arc<AtomicU64>,
    /// The tier's: a failure to write the marks back to a new instance is one of its errors.
    pub(super) counters: Arc<TierCounters>,
    /// This node's purges Redis did not take: sent again once the node listens.
    pub(super) outbox: Arc<PurgeOutbox>,
    /// What every object's name in Redis starts with (a URL purge deletes the plain copy).
    pub(super) object_prefix: Box<[u8]>,
}

/// Keeps this node subscribed to the purge channel, reconnecting after any failure. On each
/// (re)connection it first reads the kept marks, so purges made while it was cut off apply.
pub(super) async fn subscribe(subscriber: Subscriber) {
    // Purges newer than this reached Redis while this node was not listening (set by
    // `listen` when it loses the channel; unset while the node never listened).
    let mut missed_since: Option<u64> = None;
    // Each different failure is logged once (a down Redis would flood the log otherwise).
    let mut last_error = String::new();
    let mut fell_behind_said: Option<std::time::Instant> = None;
    // The `run_id` of the Redis instance this node last listened to (unset until it first
    // listened, or while Redis does not say).
    let mut run_id: Option<String> = None;
    loop {
        match listen(&subscriber, &mut missed_since, &mut run_id).await {
            Stopped::FellBehind => {
                // Counted in /status; under a steady flood it happens at every reconnect.
                if fell_behind_said.is_none_or(|said| said.elapsed() >= FELL_BEHIND_SAID_EVERY) {
                    tracing::warn!(
                        "shared tier: more than {} purges arrived before this node could apply \
                         them (purge_backlog); it reads the kept ones again",
                        subscriber.backlog
                    );
                    fell_behind_said = Some(std::time::Instant::now());
                }
                subscriber.subscribed.store(false, Relaxed);
            }
            Stopped::Failed(e) if e != last_error => {
                tracing::warn!("shared tier: purge channel: {e}");
                last_error = e;
            }
            Stopped::Failed(e) => tracing::debug!("shared tier: purge channel: {e}"),
        }
        if subscriber.subscribed.swap(false, Relaxed) {
            tracing::warn!("shared tier: lost the purge channel; reconnecting");
            last_error.clear();
        }
        // `missed_since` stays unset until the node first listened: before, it may have
        // missed anything (see `listen`).
        tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
    }
}

/// Why the node stopped listening.
enum Stopped {
    /// More purges came than `purge_backlog` before it applied them.
    FellBehind,
    /// The connection failed, or Redis could not be reached.
    Failed(String),
}

/// A message the connection received, and when.
struct Received {
    at: u64,
    info: PushInfo,
}

/// What the connection's reader hands messages to: it must not wait, so a full queue drops
/// the message and says so; the listener then stops (see the module's comment).
struct BoundedSender {
    queue: mpsc::Sender<Received>,
    overflowed: Arc<tokio::sync::Notify>,
}

impl redis::aio::AsyncPushSender for BoundedSender {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        let received = Received {
            at: super::record::now_ns(),
            info,
        };
        match self.queue.try_send(received) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.notify_one();
                Err(redis::aio::SendError)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}

async fn listen(
    subscriber: &Subscriber,
    missed_since: &mut Option<u64>,
    run_id: &mut Option<String>,
) -> Stopped {
    let within =
        |what: &'static str| move |_| format!("{what}: no answer within {PURGE_TIMEOUT:?}");
    // One more than the backlog: the subscription's confirmation comes this way too.
    let (queue, mut messages) = mpsc::channel(subscriber.backlog + 1);
    let overflowed = Arc::new(tokio::sync::Notify::new());
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PURGE_TIMEOUT))
        .set_response_timeout(Some(PURGE_TIMEOUT))
        .set_push_sender(BoundedSender {
            queue,
            overflowed: overflowed.clone(),
        });
    let connecting = subscriber
        .client
        .get_multiplexed_async_connection_with_config(&config);
    let connected = match tokio::time::timeout(PURGE_TIMEOUT, connecting).await {
        Err(elapsed) => Err(within("connecting")(elapsed)),
        Ok(Err(e)) if e.kind() == redis::ErrorKind::RESP3NotSupported => Err(format!(
            "the server does not speak RESP3, which the purge channel needs (Redis 6 or \
             later, or Valkey): purges from other nodes do not reach this one ({e})"
        )),
        Ok(Err(e)) => Err(format!("cannot reach Redis: {e}")),
        Ok(Ok(conn)) => Ok(conn),
    };
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(e) => return Stopped::Failed(e),
    };
    let channel = subscriber.channel.as_str();
    // The date of the last purge that came on the channel (the subscription's time until
    // one does): every later message was published after it (see the end).
    let mut last_dated = super::record::now_ns();
    let subscribing = async {
        tokio::time::timeout(PURGE_TIMEOUT, conn.subscribe(channel))
            .await
            .map_err(within("subscribing"))?
            .map_err(|e| format!("subscribing: {e}"))?;
        // Subscribed first, then read the kept marks: nothing falls between the two. As
        // bytes: a member that is not UTF-8 (anyone who can write to Redis can add one) failed
        // the whole reply, and every node's subscriber with it, for good.
        let mut range = redis::cmd("ZRANGE");
        range.arg(channel).arg(0).arg(-1);
        let reading = range.query_async::<Vec<Vec<u8>>>(&mut conn);
        match tokio::time::timeout(PURGE_TIMEOUT, reading)
            .await
            .map_err(within("reading the kept purges"))?
        {
            Ok(kept) => Ok(kept),
            Err(e) if e.code() == Some("WRONGTYPE") => {
                replace_foreign_value(&mut conn, channel).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(format!("reading the kept purges: {e}")),
        }
    };
    let kept = match subscribing.await {
        Ok(kept) => kept,
        Err(e) => return Stopped::Failed(e),
    };
    // Before the node says it listens: a node started meanwhile may read the set already.
    restore_marks_on_a_new_instance(subscriber, &mut conn, run_id).await;
    if let Err(e) = resend_purges(subscriber, &mut conn).await {
        return Stopped::Failed(e);
    }
    apply_kept(subscriber, &kept, missed_since.take());
    rewrite_redated(&mut conn, channel, &kept).await;
    // Release: a lookup that sees the node listening sees the marks just applied.
    subscriber.subscribed.store(true, Release);
    tracing::info!("shared tier: listening for purges on {channel}");
    // When the channel last showed it was alive: if it dies, purges from then on were missed.
    let mut heard = super::record::now_ns();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + CHANNEL_PING, CHANNEL_PING);
    let lost = loop {
        tokio::select! {
            // First: under a steady flood the queue never empties, and a node that went on
            // applying what it holds would date what it dropped too early to apply again.
            biased;
            _ = overflowed.notified() => {
                subscriber.fell_behind.fetch_add(1, Relaxed);
                break Stopped::FellBehind;
            }
            message = messages.recv() => {
                let Some(Received { at, info }) = message else {
                    break Stopped::Failed("connection closed".to_owned());
                };
                heard = at;
                match info.kind {
                    PushKind::Message => {
                        if let Some(dated) = apply_message(subscriber, info.data, at) {
                            last_dated = dated;
                        }
                    }
                    PushKind::Disconnection => {
                        break Stopped::Failed("connection closed".to_owned())
                    }
                    _ => {}
                }
            }
            _ = ping.tick() => {
                let ping_cmd = redis::cmd("PING");
                let pinging = ping_cmd.query_async::<redis::Value>(&mut conn);
                match tokio::time::timeout(PURGE_TIMEOUT, pinging).await {
                    Ok(Ok(_)) => heard = super::record::now_ns(),
                    Ok(Err(e)) => break Stopped::Failed(format!("ping: {e}")),
                    Err(elapsed) => break Stopped::Failed(within("ping")(elapsed)),
                }
                // A purge whose delivery failed while the node listened (Redis slow to
                // answer it) was kept after the node last sent what was kept.
                if let Err(e) = resend_purges(subscriber, &mut conn).await {
                    break Stopped::Failed(e);
                }
            }
        }
    };
    *missed_since = Some(match lost {
        // What it held and dropped was published after the last purge it applied, but may
        // have been received long after (a node that stalled reads its backlog late): marks
        // dated from that purge on apply to L1 again.
        Stopped::FellBehind => heard.min(last_dated),
        // Dated by when it last heard from the channel: marks are applied to L1 only from
        // the clocks' margin before (what it heard of a set kept full by ordinary traffic is
        // not doubted again). A node that stalled, read its backlog and then found the
        // connection closed may date this too late; see docs/scale-out.md.
        Stopped::Failed(_) => heard,
    });
    lost
}

/// Removes what is kept under the purge set's name when it is no sorted set (another program
/// wrote there), in one step so a set another node made meanwhile stays. Left there, it
/// stopped every node's subscriber for good, and every purge's `ZADD` failed (PURGE 503 on
/// every node). The marks were lost when it was overwritten, as in a Redis that came back
/// empty: the node goes on with none kept. Refused (an ACL without `EVAL`), the node still
/// listens; its purges keep failing until the key is deleted, and the log says so.
async fn replace_foreign_value(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
) -> Result<(), String> {
    let mut remove = redis::cmd("EVAL");
    remove
        .arg("if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then return redis.call('DEL', KEYS[1]) end return 0")
        .arg(1)
        .arg(channel);
    let removing = remove.query_async::<i64>(conn);
    match tokio::time::timeout(PURGE_TIMEOUT, removing).await {
        Ok(Ok(0)) => Err("the purge set changed while it was read".to_owned()),
        Ok(Ok(_)) => {
            tracing::error!(
                "shared tier: `{channel}` held something else than the sorted set of purge \
                 marks (written by another program): removed; the marks it replaced are lost"
            );
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::error!(
                "shared tier: `{channel}` holds something else than the sorted set of purge \
                 marks (written by another program) and removing it failed ({e}): no purge is \
                 kept in Redis, and every PURGE answers 503, until it is deleted"
            );
            Ok(())
        }
        Err(_) => Err(format!(
            "removing a foreign `{channel}`: no answer within {PURGE_TIMEOUT:?}"
        )),
    }
}

/// Writes the marks this node holds back into the purge set when Redis is another instance
/// than the one it last listened to (see the module's comment), and remembers this one. The
/// first connection only remembers it: a node that just started holds what it just read
/// (and, with a disk tier, marks of its last run, which cannot be told apart from those).
/// A failure is logged and counted, and tried again at the next connection; the node
/// listens all the same.
async fn restore_marks_on_a_new_instance(
    subscriber: &Subscriber,
    conn: &mut redis::aio::MultiplexedConnection,
    last_run_id: &mut Option<String>,
) {
    let run_id = match read_run_id(conn).await {
        Ok(run_id) => run_id,
        Err(e) => {
            return restoring_failed(
                subscriber,
                format!("cannot tell which Redis instance this is ({e})"),
            )
        }
    };
    let Some(previous) = last_run_id.as_deref().filter(|last| *last != run_id) else {
        *last_run_id = Some(run_id);
        return;
    };
    match write_back_marks(subscriber, conn).await {
        Ok(written) => {
            tracing::info!(
                "shared tier: Redis is another instance than before (run_id {previous}, now \
                 {run_id}: restarted, perhaps from an older snapshot, or failed over); wrote \
                 back the {written} purge marks this node holds, so nodes that start later \
                 read them"
            );
            *last_run_id = Some(run_id);
        }
        Err(e) => restoring_failed(subscriber, format!("writing the marks back: {e}")),
    }
}

fn restoring_failed(subscriber: &Subscriber, e: String) {
    TierCounters::bump(&subscriber.counters.errors);
    tracing::warn!(
        "shared tier: purge channel: {e}; if Redis came back with older data, nodes that \
         start later may serve copies purged before"
    );
}

/// The `run_id` of the Redis server on `conn`: new at every start of the server process.
async fn read_run_id(conn: &mut redis::aio::MultiplexedConnection) -> Result<String, String> {
    let mut info = redis::cmd("INFO");
    info.arg("server");
    let reading = info.query_async::<String>(conn);
    let server = tokio::time::timeout(PURGE_TIMEOUT, reading)
        .await
        .map_err(|_| format!("INFO: no answer within {PURGE_TIMEOUT:?}"))?
        .map_err(|e| format!("INFO: {e}"))?;
    run_id_in(&server).ok_or_else(|| "INFO names no run_id".to_owned())
}

/// The `run_id` field of `INFO server`'s answer.
fn run_id_in(server: &str) -> Option<String> {
    server
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|run_id| run_id.trim().to_owned())
        .filter(|run_id| !run_id.is_empty())
}

/// Writes the marks this node holds into the purge set, [`WRITE_BACK_BATCH`] per round
/// trip, then cuts the set as a purge does; how many it wrote. A mark already there is
/// written as it was (the same member, dated the same).
async fn write_back_marks(
    subscriber: &Subscriber,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<usize, String> {
    let channel = subscriber.channel.as_str();
    let held = subscriber.remote.marks.held();
    for batch in held.chunks(WRITE_BACK_BATCH) {
        let mut adding = redis::pipe();
        for purge in batch {
            add_mark(&mut adding, channel, purge).map_err(|e| e.to_string())?;
        }
        send_within_purge_timeout(conn, &adding).await?;
    }
    let mut cutting = redis::pipe();
    cut_marks(&mut cutting, channel);
    send_within_purge_timeout(conn, &cutting).await?;
    Ok(held.len())
}

/// Sends again, oldest first, the purges this node made that Redis did not take
/// ([`PurgeOutbox`]), [`RESEND_BATCH`] per round trip: each deletes its plain copy, adds its
/// mark (dated as when it was made) and is published, as when it was made. What is not sent is
/// kept for the next try.
async fn resend_purges(
    subscriber: &Subscriber,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<(), String> {
    let waiting = subscriber.outbox.take();
    for (done, batch) in waiting.chunks(RESEND_BATCH).enumerate() {
        let mut commands = redis::pipe();
        for purge in batch {
            let (channel, node) = (&subscriber.channel, &subscriber.node);
            add_purge_commands(
                &mut commands,
                &subscriber.object_prefix,
                channel,
                node,
                purge,
            );
        }
        if let Err(e) = send_within_purge_timeout(conn, &commands).await {
            subscriber
                .outbox
                .put_back(waiting[done * RESEND_BATCH..].to_vec());
            return Err(format!("sending again the purges Redis did not take: {e}"));
        }
    }
    if !waiting.is_empty() {
        tracing::info!(
            "shared tier: sent again the {} purges made here that Redis had not taken",
            waiting.len()
        );
    }
    Ok(())
}

async fn send_within_purge_timeout(
    conn: &mut redis::aio::MultiplexedConnection,
    pipe: &redis::Pipeline,
) -> Result<(), String> {
    tokio::time::timeout(PURGE_TIMEOUT, pipe.query_async::<()>(conn))
        .await
        .map_err(|_| format!("no answer within {PURGE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())
}

/// Applies the marks kept in Redis, read when the node (re)connects. `missed_since`: when
/// the node stopped listening (unset the first time).
fn apply_kept(subscriber: &Subscriber, kept: &[Vec<u8>], missed_since: Option<u64>) {
    let remote = &subscriber.remote;
    let now = super::record::now_ns();
    let marks: Vec<Purge> = kept
        .iter()
        .filter_map(|m| serde_json::from_slice::<Purge>(m).ok())
        .filter_map(|m| as_applied(m, now))
        .collect();
    // Marks shadow L2 copies. Those this node missed also touch its L1: after a lost
    // connection, the purges made since; the first time, all of them (L1 may hold copies
    // that came in before any mark did: the disk tier's from an earlier run, shared ones read
    // before the subscription; a fill newer than a mark only costs a fetch again).
    let missed_from = missed_since.map(|since| since.saturating_sub(MAX_CLOCK_SKEW_NS));
    // A full set was cut to its newest marks, oldest first: what was cut is at most as recent
    // as the first one kept. Only cut marks this node may not have heard matter: any, when it
    // starts; after a lost connection, only if the cut reaches past the moment it was lost
    // (a set kept full by ordinary traffic otherwise made every reconnect distrust, and
    // delete, every L2 copy older than its oldest mark, for every tenant).
    if let (true, Some(oldest)) = (kept.len() >= MAX_MARKS, marks.first()) {
        if missed_from.is_none_or(|from| oldest.at > from) {
            remote.marks.forget_before(oldest.at);
            // The floor hides L2 copies; L1's are never judged by marks, and a cut purge
            // this node missed named nothing it can still remove: its L1 goes whole (the
            // floor first, so nothing read before it is promoted back).
            let dropped = remote.l1.drop_everything();
            tracing::warn!(
                objects = dropped,
                "shared tier: purges made while this node was not listening may have been cut \
                 from the kept marks: its memory cache is emptied, and L2 copies older than \
                 the oldest kept mark are given up"
            );
        }
    }
    for mark in &marks {
        match missed_from {
            Some(from) if mark.at < from => remote.keep(mark),
            _ => remote.apply(mark),
        }
    }
}

/// Writes back, dated by Redis's clock, the kept marks dated further ahead of it than clocks
/// differ: as they were, every (re)connection of every node dated them now again and applied
/// them again (a tag's mark emptied its caches each time) until real time reached their date,
/// for ever for a forged one. Rewritten, they age and are cut as any other. Judged by Redis's
/// clock, not this node's: a node whose clock is behind would otherwise date a purge made
/// elsewhere too early for every node that reads it after. Each rewrite is one script that
/// adds the new mark only if it removed the old one, so nodes reconnecting together (after a
/// Redis restart, all of them) rewrite each mark once. Best effort: a node that cannot (an
/// ACL without `EVAL` or `TIME`) applies them again on its next connection, as before.
async fn rewrite_redated(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    kept: &[Vec<u8>],
) {
    const REDATE: &str = "if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then \
                          return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3]) end return 0";
    let time = redis::cmd("TIME");
    let now = match tokio::time::timeout(PURGE_TIMEOUT, time.query_async::<(u64, u64)>(conn)).await
    {
        Ok(Ok((seconds, micros))) => seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(micros.saturating_mul(1_000)),
        _ => return,
    };
    let mut rewriting = redis::pipe();
    let mut redated = 0;
    for member in kept {
        let Ok(purge) = serde_json::from_slice::<Purge>(member) else {
            continue;
        };
        let dated = purge.at;
        // Only a mark that changes is written out: a full set holds 65,536.
        let Some(applied) = as_applied(purge, now).filter(|a| a.at != dated) else {
            continue;
        };
        let Ok(json) = serde_json::to_string(&applied) else {
            continue;
        };
        rewriting
            .cmd("EVAL")
            .arg(REDATE)
            .arg(1)
            .arg(channel)
            .arg(member)
            .arg(applied.at)
            .arg(json)
            .ignore();
        redated += 1;
    }
    if redated == 0 {
        return;
    }
    match send_within_purge_timeout(conn, &rewriting).await {
        Ok(()) => tracing::warn!(
            marks = redated,
            "shared tier: purge marks dated further ahead of Redis's clock than clocks differ \
             were dated by it (a node's clock is ahead, or they were written by hand)"
        ),
        Err(e) => tracing::warn!("shared tier: cannot redate the marks dated ahead: {e}"),
    }
}

/// Applies one message of the channel (`[channel, payload]`), unless this node made it;
/// returns the purge's date when it is one.
fn apply_message(subscriber: &Subscriber, data: Vec<redis::Value>, received: u64) -> Option<u64> {
    let payload = data.into_iter().nth(1)?;
    let payload = redis::from_redis_value::<String>(payload).ok()?;
    let message = serde_json::from_str::<Message>(&payload).ok()?;
    let purge = as_applied(message.purge, received)?;
    if message.node != subscriber.node {
        subscriber.remote.apply(&purge);
    }
    Some(purge.at)
}

/// A purge read from Redis as this node applies it, or `None` when its tag or partition is
/// longer than a node's can be (it hides nothing, and was held in memory at any length).
/// One dated further ahead than clocks differ is dated now: it came from a node whose clock
/// is ahead (or from anyone who can write to Redis), and still removes every copy made before
/// it here, while its own date would hide every copy of its target made until then; dropped,
/// as it used to be, it left this node serving what the other one purged. (A partition's
/// floor comes from a node whose tenant name now serves another site; dated now it takes no
/// more than `DEL` of every copy would.)
fn as_applied(mut purge: Purge, now: u64) -> Option<Purge> {
    if !purge.target.could_be_made() {
        return None;
    }
    if purge.at > now.saturating_add(MAX_CLOCK_AHEAD_NS) {
        purge.at = now;
    }
    Some(purge)
}

#[cfg(test)]
mod tests {
    use super::super::key::TierKey;
    use super::super::purges::{Target, Verdict};
    use super::*;
    use pingora_cache::CacheKey;

    fn subscriber() -> Subscriber {
        let l1: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1 << 20, 1 << 20)));
        Subscriber {
            client: redis::Client::open("redis://127.0.0.1:1").unwrap(),
            channel: "test:purges".into(),
            node: "this".into(),
            remote: RemotePurges {
                l1,
                marks: Arc::default(),
                disk: None,
            },
            subscribed: Arc::default(),
            backlog: 16,
            fell_behind: Arc::default(),
            counters: Arc::default(),
            outbox: Arc::new(PurgeOutbox::new(16)),
            object_prefix: b"test:o:".as_slice().into(),
        }
    }

    fn tag(partition: &str, tag: &str, at: u64) -> Purge {
        Purge {
            target: Target::Tag {
                partition: partition.into(),
                tag: tag.into(),
            },
            at,
            soft: false,
        }
    }

    /// Marks from other nodes with a tag longer than a stored object may carry, or a partition
    /// longer than a tenant's name, hide nothing: they are dropped, on the channel and from the
    /// kept ones, where they were held in memory (and in the disk tier's marks) at any length.
    #[test]
    fn marks_longer_than_any_node_makes_are_not_taken() {
        let subscriber = subscriber();
        let now = super::super::record::now_ns();
        let (long_tag, long_name) = ("t".repeat(257), "p".repeat(256));
        let heard = [
            ("site", "t".repeat(256), true),
            ("site", long_tag.clone(), false),
            (&"p".repeat(255)[..], "t".to_owned(), true),
            (&long_name[..], "t".to_owned(), false),
        ];
        for (partition, tag_name, taken) in &heard {
            let message = Message {
                node: "other".into(),
                purge: tag(partition, tag_name, now),
            };
            let payload = serde_json::to_vec(&message).unwrap();
            let data = vec![
                redis::Value::BulkString(b"test:purges".to_vec()),
                redis::Value::BulkString(payload),
            ];
            apply_message(&subscriber, data, now);
            let key = TierKey::of(&CacheKey::new(b"/a".to_vec(), *partition));
            let tags: Vec<Box<str>> = vec![tag_name.as_str().into()];
            let verdict = subscriber.remote.marks.verdict(&key, &tags, now - 1);
            assert_eq!(
                verdict == Verdict::Gone,
                *taken,
                "{} bytes of partition, {} of tag",
                partition.len(),
                tag_name.len()
            );
        }

        let floor = |partition: &str| Purge {
            target: Target::Partition(partition.into()),
            at: now,
            soft: false,
        };
        let long_key = TierKey::of(&CacheKey::new(b"/a".to_vec(), "k".repeat(256)));
        let key_mark = Purge {
            target: Target::Key(long_key.to_hex()),
            at: now,
            soft: false,
        };
        let kept: Vec<Vec<u8>> = [floor(&"q".repeat(256)), floor("r"), key_mark]
            .iter()
            .map(|purge| serde_json::to_vec(purge).unwrap())
            .collect();
        apply_kept(&subscriber, &kept, None);
        let marks = &subscriber.remote.marks;
        let in_partition = |partition: &str| TierKey::of(&CacheKey::new(b"/b".to_vec(), partition));
        assert_eq!(
            marks.verdict(&in_partition(&"q".repeat(256)), &[], now - 1),
            Verdict::Keep
        );
        assert_eq!(marks.verdict(&long_key, &[], now - 1), Verdict::Keep);
        assert_eq!(
            marks.verdict(&in_partition("r"), &[], now - 1),
            Verdict::Gone
        );
    }

    /// Redis's instances are told apart by the `run_id` of `INFO server` (its lines end in
    /// CRLF); an answer without one names no instance.
    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:92b6067b2d5a7c924613463ce47570360d16003f\r\ntcp_port:6379\r\n";
        assert_eq!(
            run_id_in(info).as_deref(),
            Some("92b6067b2d5a7c924613463ce47570360d16003f")
        );
        assert_eq!(run_id_in("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id_in("# Server\r\nredis_version:7.0.15\r\n"), None);
    }

    /// `/<path>` of `site` stored in the subscriber's L1.
    fn in_l1(subscriber: &Subscriber, path: &str) -> CacheKey {
        use std::time::{Duration, SystemTime};
        let l1 = subscriber.remote.l1;
        let key = CacheKey::new(path.as_bytes().to_vec(), "site");
        let now = SystemTime::now();
        let header = pingora::http::ResponseHeader::build_no_case(200, None).unwrap();
        let meta = pingora_cache::CacheMeta::new(now + Duration::from_secs(600), now, 0, 0, header);
        let stamp = l1.stamp_key(&key);
        assert!(l1.promote(&key, &meta, bytes::Bytes::from_static(b"old"), &stamp));
        key
    }

    /// A node that stopped listening, and finds the kept marks cut past that moment, cannot
    /// tell which of its L1 copies a cut purge named: L1 is emptied. (Only the L2 copies were
    /// given up, and an L1 copy purged meanwhile was served until it expired.) A set whose
    /// cut stays before the loss leaves L1 alone.
    #[test]
    fn a_cut_past_the_lost_connection_empties_l1() {
        let now = super::super::record::now_ns();
        let full: Vec<Vec<u8>> = (0..MAX_MARKS)
            .map(|i| serde_json::to_vec(&tag("other", &format!("t{i}"), now)).unwrap())
            .collect();
        let minute = 60_000_000_000;

        let lost_before_the_cut = subscriber();
        let key = in_l1(&lost_before_the_cut, "/x");
        apply_kept(&lost_before_the_cut, &full, Some(now - minute));
        let l1 = lost_before_the_cut.remote.l1;
        assert!(l1.stored(&key).is_none(), "purged copy kept");

        let lost_after_the_cut = subscriber();
        let key = in_l1(&lost_after_the_cut, "/x");
        apply_kept(&lost_after_the_cut, &full, Some(now + minute));
        let l1 = lost_after_the_cut.remote.l1;
        assert!(l1.stored(&key).is_some(), "L1 emptied for nothing");
    }

    /// A purge made while this node was not listening is dated by the purging node's clock:
    /// one running a few seconds behind dated it before this node stopped listening, and it
    /// only hid L2 copies, leaving the L1 copy of any age until it expired.
    #[test]
    fn a_missed_purge_from_a_clock_a_few_seconds_behind_reaches_l1() {
        let subscriber = subscriber();
        let key = in_l1(&subscriber, "/x");
        let kept_key = in_l1(&subscriber, "/heard");
        let now = super::super::record::now_ns();
        let mark = |key: &CacheKey, ago: u64| Purge {
            target: Target::Key(TierKey::of(key).to_hex()),
            at: now - ago,
            soft: false,
        };
        let kept: Vec<Vec<u8>> = [mark(&kept_key, 30_000_000_000), mark(&key, 3_000_000_000)]
            .iter()
            .map(|purge| serde_json::to_vec(purge).unwrap())
            .collect();
        apply_kept(&subscriber, &kept, Some(now));
        let l1 = subscriber.remote.l1;
        assert!(l1.stored(&key).is_none(), "the missed purge left L1's copy");
        assert!(
            l1.stored(&kept_key).is_some(),
            "a purge heard long before the loss applied again"
        );
    }

    /// A purge from a node whose clock is minutes ahead still removes the copies made before
    /// it here, heard on the channel or read from the kept marks; its own date would hide
    /// every copy made until then, so it is dated now (it used to be dropped: this node served
    /// what the other purged).
    #[test]
    fn a_purge_dated_far_ahead_applies_as_of_now() {
        let subscriber = subscriber();
        let now = super::super::record::now_ns();
        let hour_ahead = now + 3_600_000_000_000;
        let message = Message {
            node: "other".into(),
            purge: tag("site", "heard", hour_ahead),
        };
        let data = vec![
            redis::Value::BulkString(b"test:purges".to_vec()),
            redis::Value::BulkString(serde_json::to_vec(&message).unwrap()),
        ];
        assert_eq!(apply_message(&subscriber, data, now), Some(now));
        let kept = vec![serde_json::to_vec(&tag("site", "kept", hour_ahead)).unwrap()];
        apply_kept(&subscriber, &kept, None);
        // Both were dated by this node's clock as they arrived, before this.
        let after = super::super::record::now_ns() + 1;

        let key = TierKey::of(&CacheKey::new(b"/a".to_vec(), "site"));
        let marks = &subscriber.remote.marks;
        for tag_name in ["heard", "kept"] {
            let tags: Vec<Box<str>> = vec![tag_name.into()];
            assert_eq!(
                marks.verdict(&key, &tags, now - 1),
                Verdict::Gone,
                "a copy made before the {tag_name} purge"
            );
            assert_eq!(
                marks.verdict(&key, &tags, after),
                Verdict::Keep,
                "a copy made after the {tag_name} purge arrived"
            );
        }
    }
}
