//! `[tenant.origin]`: timeouts and retries of a tenant's origin connections.

use super::duration::DurationValue;
use super::{ConfigError, Locator};
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrigin {
    connect_timeout: Option<Spanned<DurationValue>>,
    read_timeout: Option<Spanned<DurationValue>>,
    write_timeout: Option<Spanned<DurationValue>>,
    idle_timeout: Option<Spanned<DurationValue>>,
    total_timeout: Option<Spanned<DurationValue>>,
    retry_reused: Option<bool>,
    resolve_interval: Option<Spanned<DurationValue>>,
    max_connections: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<DurationValue>>,
}

/// How cachet talks to a tenant's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginConfig {
    /// TCP (and TLS) connection establishment.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of the origin's response.
    pub read_timeout: Duration,
    /// Longest wait to send the next bytes of the request.
    pub write_timeout: Duration,
    /// How long an unused keep-alive connection to the origin is kept.
    pub idle_timeout: Duration,
    /// The whole exchange with the origin, connect to last body byte.
    pub total_timeout: Option<Duration>,
    /// A request that fails on a reused connection is tried once more on a
    /// fresh one, when that is safe (idempotent, nothing sent to the client).
    pub retry_reused: bool,
    /// How often a single upstream or a backend given by name is looked up again (a
    /// pool has its own, `[tenant.pool] resolve_interval`).
    pub resolve_interval: Duration,
    /// Exchanges with the origin at once (each holds one connection); more wait.
    pub max_connections: usize,
    /// Longest wait for one of `max_connections` before the request gets a 503.
    pub queue_timeout: Duration,
}

/// Most `max_connections` may say: more than a process has descriptors for.
const MAX_ORIGIN_CONNECTIONS: i64 = 1 << 20;

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            total_timeout: None,
            retry_reused: true,
            resolve_interval: Duration::from_secs(30),
            max_connections: 1024,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

impl Locator<'_> {
    pub(super) fn origin(&self, raw: &RawOrigin) -> Result<OriginConfig, ConfigError> {
        let defaults = OriginConfig::default();
        // Below a millisecond a timeout fires on scheduling noise alone: random 504s.
        let positive = |key: &str, value: &Option<Spanned<DurationValue>>| match value {
            Some(v) => match self.duration(key, v)? {
                d if d < Duration::from_millis(1) => {
                    Err(self.at(v.span(), key, "must be at least 1ms"))
                }
                d => Ok(Some(d)),
            },
            None => Ok(None),
        };
        Ok(OriginConfig {
            connect_timeout: positive("tenant.origin.connect_timeout", &raw.connect_timeout)?
                .unwrap_or(defaults.connect_timeout),
            read_timeout: positive("tenant.origin.read_timeout", &raw.read_timeout)?
                .unwrap_or(defaults.read_timeout),
            write_timeout: positive("tenant.origin.write_timeout", &raw.write_timeout)?
                .unwrap_or(defaults.write_timeout),
            // Zero is allowed: no keep-alive to the origin.
            idle_timeout: match &raw.idle_timeout {
                Some(v) => self.duration("tenant.origin.idle_timeout", v)?,
                None => defaults.idle_timeout,
            },
            total_timeout: positive("tenant.origin.total_timeout", &raw.total_timeout)?,
            retry_reused: raw.retry_reused.unwrap_or(defaults.retry_reused),
            resolve_interval: match &raw.resolve_interval {
                Some(v) => match self.duration("tenant.origin.resolve_interval", v)? {
                    d if d < Duration::from_millis(10) => {
                        return Err(self.at(
                            v.span(),
                            "tenant.origin.resolve_interval",
                            "must be at least 10ms",
                        ))
                    }
                    d => d,
                },
                None => defaults.resolve_interval,
            },
            max_connections: match &raw.max_connections {
                Some(v) if !(1..=MAX_ORIGIN_CONNECTIONS).contains(v.get_ref()) => {
                    return Err(self.at(
                        v.span(),
                        "tenant.origin.max_connections",
                        format!("must be between 1 and {MAX_ORIGIN_CONNECTIONS}"),
                    ))
                }
                Some(v) => *v.get_ref() as usize,
                None => defaults.max_connections,
            },
            // Zero is allowed: refuse at once rather than queue.
            queue_timeout: match &raw.queue_timeout {
                Some(v) => self.duration("tenant.origin.queue_timeout", v)?,
                None => defaults.queue_timeout,
            },
        })
    }
}
