//! stale-while-revalidate for HTTP/2 clients.
//!
//! Pingora refreshes a stale entry with a background request that it rebuilds as HTTP/1 text
//! from the serving request's head. For an HTTP/1 client that is the head exactly as the
//! client sent it, and the refresh is planned like any request. For an HTTP/2 client it is
//! the head as the proxy holds it by then: version "HTTP/2", which does not parse as HTTP/1
//! (so no refresh ever ran and the stale copy was served for its whole window), with the
//! plugin's edits applied and the forwarding fields written.
//!
//! So just before Pingora takes the head, the HTTP/2 request is given version HTTP/1.1 and a
//! hand-off field holding this process's secret, the tenant's build, the plugin's sha256, the
//! primary key and the backend. The refresh takes the head as already planned: the same key
//! and backend, no second plan and no second set of forwarding fields; it is dropped when a
//! reload rebuilt the tenant its host routes to since (the key and the backend's index were
//! the old one's: the new one's origin answered, stored under the old tenant's key), or
//! swapped in another version of its plugin (the key and edits were the old plugin's, and
//! the new one would judge the answer). The serving request
//! gets its head back before its response is written. The field is removed from every
//! request cachet receives, and its secret is never sent anywhere, so no client can hand a
//! key of its choosing to a refresh.

use super::ctx::RequestCtx;
use http::Version;
use pingora::proxy::Session;
use std::sync::LazyLock;

const FIELD: &str = "cachet-refresh";

/// 128 random bits, drawn once per process.
static SECRET: LazyLock<String> = LazyLock::new(|| {
    let mut bytes = [0u8; 16];
    let drawn = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if drawn.is_err() {
        // No /dev/urandom: std's hasher keys are drawn from the OS's randomness too.
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        bytes[..8].copy_from_slice(&state.hash_one(std::process::id()).to_le_bytes());
        bytes[8..].copy_from_slice(&state.hash_one(std::time::SystemTime::now()).to_le_bytes());
    }
    hex::encode(bytes)
});

/// What a refresh takes over from the request that spawned it.
#[derive(Debug)]
pub(super) struct Handoff {
    /// The [`crate::tenant::Tenant::build`] it was planned for.
    pub(super) tenant: u64,
    /// The sha256 of the plugin that planned it (None: a native policy).
    pub(super) plugin: Option<String>,
    pub(super) key: Vec<u8>,
    pub(super) backend: Option<usize>,
}

impl Handoff {
    /// Whether the refresh runs under what planned it: the same build of the tenant, with
    /// the same plugin (`swap_plugin` keeps the build).
    pub(super) fn planned_under(&self, build: u64, plugin: Option<&str>) -> bool {
        self.tenant == build && self.plugin.as_deref() == plugin
    }
}

/// For a request the front plans (never a refresh, which Pingora spawns): removes the field
/// a client may have sent, as [`take`] does for the rest.
pub(super) fn drop_client_field(req: &mut pingora::http::RequestHeader) {
    if req.headers.contains_key(FIELD) {
        req.remove_header(FIELD);
    }
}

/// In `should_serve_stale`, for an HTTP/2 request about to have Pingora spawn its refresh:
/// makes its head one the refresh can parse and plan from.
pub(super) fn prepare(session: &mut Session, ctx: &mut RequestCtx) {
    let handoff = Handoff {
        tenant: ctx.tenant.as_ref().map_or(0, |t| t.build()),
        plugin: ctx
            .policy
            .as_ref()
            .and_then(|p| p.sha256())
            .map(str::to_owned),
        key: ctx.key.clone(),
        backend: ctx.backend,
    };
    let value = encode(&handoff);
    let req = session.req_header_mut();
    if req.insert_header(FIELD, value).is_ok() {
        req.set_version(Version::HTTP_11);
        ctx.refresh_handed_off = true;
    }
}

/// Before the serving request's response goes out: its head as it was.
pub(super) fn restore(session: &mut Session, ctx: &mut RequestCtx) {
    if std::mem::take(&mut ctx.refresh_handed_off) {
        let req = session.req_header_mut();
        req.remove_header(FIELD);
        req.set_version(Version::HTTP_2);
    }
}

/// At the start of every request: removes the field, and returns the hand-off when this is
/// a refresh carrying this process's secret.
pub(super) fn take(session: &mut Session) -> Option<Handoff> {
    let value = session.req_header_mut().remove_header(FIELD)?;
    if !session.is_subrequest() {
        return None;
    }
    decode(value.to_str().ok()?)
}

/// The field's value: `secret:build:plugin:key:backend`, "-" for no plugin or backend.
fn encode(handoff: &Handoff) -> String {
    let plugin = handoff.plugin.as_deref().unwrap_or("-");
    let backend = handoff
        .backend
        .map_or_else(|| "-".to_owned(), |b| b.to_string());
    let key = hex::encode(&handoff.key);
    format!("{}:{}:{plugin}:{key}:{backend}", &*SECRET, handoff.tenant)
}

/// The hand-off in a field's value, if it carries this process's secret.
fn decode(value: &str) -> Option<Handoff> {
    let mut parts = value.splitn(5, ':');
    let secret = parts.next()?;
    if !same_secret(secret.as_bytes(), SECRET.as_bytes()) {
        return None;
    }
    let (tenant, plugin) = (parts.next()?, parts.next()?);
    let (key, backend) = (parts.next()?, parts.next()?);
    Some(Handoff {
        tenant: tenant.parse().ok()?,
        plugin: (plugin != "-").then(|| plugin.to_owned()),
        key: hex::decode(key).ok()?,
        backend: match backend {
            "-" => None,
            index => Some(index.parse().ok()?),
        },
    })
}

/// Compares in time independent of where the bytes differ.
fn same_secret(given: &[u8], ours: &[u8]) -> bool {
    given.len() == ours.len() && given.iter().zip(ours).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_random_hex_and_compared_exactly() {
        assert_eq!(SECRET.len(), 32);
        assert!(same_secret(SECRET.as_bytes(), SECRET.as_bytes()));
        let mut other = SECRET.clone().into_bytes();
        other[31] ^= 1;
        assert!(!same_secret(&other, SECRET.as_bytes()));
        assert!(!same_secret(&SECRET.as_bytes()[..31], SECRET.as_bytes()));
    }

    /// A plugin swapped in after the refresh was planned (a hot reload keeps the tenant's
    /// build): the refresh is not run with the old plugin's key and edits under the new one.
    #[test]
    fn a_refresh_runs_only_under_the_tenant_build_and_plugin_that_planned_it() {
        let (v1, v2) = ("a1".repeat(32), "b2".repeat(32));
        let planned = Handoff {
            tenant: 7,
            plugin: Some(v1.clone()),
            key: b"site\0https\0/page".to_vec(),
            backend: Some(1),
        };
        let taken = decode(&encode(&planned)).expect("our own hand-off");
        assert_eq!(
            (taken.key.as_slice(), taken.backend),
            (&planned.key[..], Some(1))
        );
        assert!(taken.planned_under(7, Some(&v1)));
        assert!(!taken.planned_under(7, Some(&v2)), "another plugin version");
        assert!(!taken.planned_under(8, Some(&v1)), "another build");
        assert!(!taken.planned_under(7, None), "a native policy");
        let native = Handoff {
            plugin: None,
            backend: None,
            ..planned
        };
        let taken = decode(&encode(&native)).expect("our own hand-off");
        assert!(taken.planned_under(7, None));
        assert_eq!(taken.backend, None);
    }

    #[test]
    fn a_hand_off_without_the_secret_is_not_taken() {
        let forged = format!("{}:7:-:00:-", "0".repeat(32));
        assert!(decode(&forged).is_none());
    }
}
