//! What counts as the shadow agreeing with the live plugin, and the outputs shown when not.
//!
//! Decisions are compared by their effect on traffic: two bypasses agree whatever their
//! reasons say, two synthetic answers agree only when they are identical, two stores agree
//! when they keep as long with the same purge tags (as the index keeps them: order and
//! repeats aside).

use crate::policy::{
    PluginFault, RequestDecision, RequestVerdict, ResponseDecision, StoreDirective,
};

/// One compared hook.
pub(super) struct Outcome {
    pub hook: &'static str,
    pub result: Comparison,
}

pub(super) enum Comparison {
    Agree,
    /// The live and shadow outputs, described.
    Disagree(String, String),
    /// The shadow faulted; the live output, described, and the fault.
    Fault(String, PluginFault),
}

/// Compares `on-request` (its decision and the backend it names), then `cache-key` when
/// both chose the cache. A shadow backend none of `backends` is a fault, as live.
pub(super) fn request(
    (live, live_backend): (&RequestVerdict, Option<&str>),
    shadow: &Result<(RequestVerdict, Option<String>), PluginFault>,
    backends: &[&str],
) -> Vec<Outcome> {
    let (live_decision, live_key) = live;
    let fault = |fault: PluginFault| {
        vec![Outcome {
            hook: "on-request",
            result: Comparison::Fault(describe_plan(live, live_backend), fault),
        }]
    };
    let (shadow, shadow_backend) = match shadow {
        Ok((verdict, backend)) => (verdict, backend.as_deref()),
        Err(e) => return fault(e.clone()),
    };
    if let Some(name) = shadow_backend.filter(|name| !backends.contains(name)) {
        return fault(PluginFault::InvalidOutput(format!(
            "backend {:?} is not one of the tenant's [tenant.backends]",
            crate::policy::clean_reason(name)
        )));
    }
    let (shadow_decision, shadow_key) = shadow;
    let same_effect = match (live_decision, shadow_decision) {
        (RequestDecision::Cache, RequestDecision::Cache)
        | (RequestDecision::Bypass(_), RequestDecision::Bypass(_)) => {
            live_backend == shadow_backend
        }
        (RequestDecision::Respond(a), RequestDecision::Respond(b)) => a == b,
        _ => false,
    };
    if !same_effect {
        return vec![Outcome {
            hook: "on-request",
            result: Comparison::Disagree(
                describe_plan(live, live_backend),
                describe_plan(shadow, shadow_backend),
            ),
        }];
    }
    let mut outcomes = vec![Outcome {
        hook: "on-request",
        result: Comparison::Agree,
    }];
    if let (Some(a), Some(b)) = (live_key, shadow_key) {
        outcomes.push(Outcome {
            hook: "cache-key",
            result: if a == b {
                Comparison::Agree
            } else {
                Comparison::Disagree(describe_key(a), describe_key(b))
            },
        });
    }
    outcomes
}

/// Compares `on-response`.
pub(super) fn response(
    live: &ResponseDecision,
    shadow: &Result<ResponseDecision, PluginFault>,
) -> Outcome {
    let result = match shadow {
        Err(fault) => Comparison::Fault(describe_response(live), fault.clone()),
        Ok(shadow) if same_response(live, shadow) => Comparison::Agree,
        Ok(shadow) => Comparison::Disagree(describe_response(live), describe_response(shadow)),
    };
    Outcome {
        hook: "on-response",
        result,
    }
}

fn same_response(a: &ResponseDecision, b: &ResponseDecision) -> bool {
    match (a, b) {
        (ResponseDecision::Store(a), ResponseDecision::Store(b)) => {
            (a.ttl, a.stale_while_revalidate, a.stale_if_error)
                == (b.ttl, b.stale_while_revalidate, b.stale_if_error)
                && distinct_tags(a) == distinct_tags(b)
        }
        (ResponseDecision::PassFor(a), ResponseDecision::PassFor(b)) => a == b,
        (ResponseDecision::FollowOrigin, ResponseDecision::FollowOrigin)
        | (ResponseDecision::NoStore(_), ResponseDecision::NoStore(_)) => true,
        _ => false,
    }
}

/// A request verdict for people: the decision and, for "cache", the key parts.
pub(super) fn describe_request((decision, key): &RequestVerdict) -> String {
    match decision {
        RequestDecision::Cache => match key {
            Some(parts) => format!("cache, key {}", describe_key(parts)),
            None => "cache".into(),
        },
        RequestDecision::Bypass(reason) => format!("bypass ({reason})"),
        // The body is never shown; the status and header names say what was answered.
        RequestDecision::Respond(resp) => {
            let names: Vec<&str> = resp.headers.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "respond {} ({} body bytes, headers [{}])",
                resp.status,
                resp.body.len(),
                names.join(", ")
            )
        }
    }
}

/// [`describe_request`], with the backend when one is named (never with "respond").
fn describe_plan(verdict: &RequestVerdict, backend: Option<&str>) -> String {
    match (backend, &verdict.0) {
        (Some(name), RequestDecision::Cache | RequestDecision::Bypass(_)) => {
            format!("{}, backend {name:?}", describe_request(verdict))
        }
        _ => describe_request(verdict),
    }
}

pub(super) fn describe_key(parts: &[String]) -> String {
    format!("{parts:?}")
}

/// The tags a store decision gives an object, sorted; or why the index cannot keep them.
fn distinct_tags(directive: &StoreDirective) -> Result<Vec<&str>, &'static str> {
    let listed = directive.tags.iter().map(String::as_str);
    crate::storage::indexable_tags(listed).map(|mut tags| {
        tags.sort_unstable();
        tags
    })
}

pub(super) fn describe_response(decision: &ResponseDecision) -> String {
    match decision {
        ResponseDecision::Store(d) => format!(
            "store ttl={}s swr={}s sie={}s tags={}",
            d.ttl.as_secs(),
            d.stale_while_revalidate.as_secs(),
            d.stale_if_error.as_secs(),
            match distinct_tags(d) {
                Ok(tags) => format!("{tags:?}"),
                Err(refused) => format!("refused ({refused})"),
            }
        ),
        ResponseDecision::FollowOrigin => "follow-origin".into(),
        ResponseDecision::NoStore(reason) => format!("no-store ({reason})"),
        ResponseDecision::PassFor(d) => format!("pass-for {}s", d.as_secs()),
    }
}
