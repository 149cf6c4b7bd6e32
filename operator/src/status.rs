//! Status of ModelRoutes and RoutingPolicies, built from what `compile` decided and what was
//! applied. Pure: no client, no clock (the caller passes `now`), so the rules below are
//! tested without an apiserver.
//!
//! Rules:
//! - the status is written whole, every time: a condition that no longer holds disappears
//!   (a resolved `Conflict`), never lingers;
//! - `lastTransitionTime` changes only when a condition's `status` changes;
//! - an Event is due only when `Ready`'s status or reason changes ([`transition`]).

use detour_api::crd::{Condition, ModelRouteStatus, RoutingPolicyStatus};
use detour_api::{Compiled, Kind, ModelRoute, ObjectKey, RoutingPolicy, defaults};
use kube::ResourceExt;

/// Condition type of the verdict.
pub const READY: &str = "Ready";
/// Condition type present only while the object is part of a conflict.
pub const CONFLICT: &str = "Conflict";

/// The key `compile` uses for an object of `kind`.
pub fn key_of<K: ResourceExt>(kind: Kind, obj: &K) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: obj.namespace().unwrap_or_else(|| defaults::NAMESPACE.to_owned()),
        name: obj.name_any(),
    }
}

/// The whole status of a route after `compiled` was applied to ConfigMap `config_map`.
pub fn route_status(
    compiled: &Compiled,
    route: &ModelRoute,
    config_map: &str,
    now: &str,
) -> ModelRouteStatus {
    let key = key_of(Kind::ModelRoute, route);
    let generation = route.metadata.generation;
    let previous = route
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let outcome = compiled.routes.iter().find(|r| r.object == key);
    // The live health of targets is fleet health's (`crate::fleet_status`); the whole status
    // is written by one field manager, so it is carried over as it stands.
    let (targets, healthy) = route
        .status
        .as_ref()
        .map(|s| (s.targets.clone(), s.healthy.clone()))
        .unwrap_or_default();
    ModelRouteStatus {
        conditions: conditions(compiled, &key, generation, previous, now),
        observed_generation: generation,
        config_map: Some(config_map.to_owned()),
        policy: outcome.and_then(|o| o.policy.clone()),
        target_count: Some(outcome.map_or(0, |o| o.target_count)),
        targets,
        healthy,
    }
}

/// The whole status of a policy.
pub fn policy_status(compiled: &Compiled, policy: &RoutingPolicy, now: &str) -> RoutingPolicyStatus {
    let key = key_of(Kind::RoutingPolicy, policy);
    let generation = policy.metadata.generation;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let outcome = compiled.policies.iter().find(|p| p.object == key);
    RoutingPolicyStatus {
        conditions: conditions(compiled, &key, generation, previous, now),
        observed_generation: generation,
        route_count: Some(outcome.map_or(0, |o| o.route_count)),
    }
}

fn conditions(
    compiled: &Compiled,
    key: &ObjectKey,
    generation: Option<i64>,
    previous: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let verdict = compiled.readiness(key);
    let mut out = vec![condition(
        READY,
        verdict.ready,
        verdict.reason,
        verdict.message,
        generation,
        previous,
        now,
    )];
    if let Some((reason, message)) = verdict.conflict {
        out.push(condition(
            CONFLICT, true, reason, message, generation, previous, now,
        ));
    }
    out
}

fn condition(
    type_: &str,
    status: bool,
    reason: String,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &str,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(now.to_owned()));
    Condition {
        type_: type_.to_owned(),
        status,
        reason,
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// A change of `Ready` worth an Event: the new `Ready` condition, when its status or reason
/// differs from the previous one (or there was none).
pub fn transition<'a>(previous: &[Condition], next: &'a [Condition]) -> Option<&'a Condition> {
    let next_ready = next.iter().find(|c| c.type_ == READY)?;
    match previous.iter().find(|c| c.type_ == READY) {
        Some(p) if p.status == next_ready.status && p.reason == next_ready.reason => None,
        _ => Some(next_ready),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{opted_in, route};
    use detour_api::{Input, SecretIndex, compile};

    fn compiled(routes: &[ModelRoute], secrets: &SecretIndex) -> Compiled {
        compile(&Input::cluster(routes, &[], secrets, "detour-system"))
    }

    /// An unchanged verdict keeps its lastTransitionTime; a changed one takes `now`.
    #[test]
    fn last_transition_time_moves_only_on_change() {
        let secrets = opted_in("team-a", "openai");
        let mut r = route("team-a", "chat", "gpt/fast").build();
        let c = compiled(std::slice::from_ref(&r), &secrets);
        let first = route_status(&c, &r, "detour-routes", "2026-01-01T00:00:00Z");
        assert_eq!(first.conditions[0].status, "True");
        r.status = Some(first.clone());
        let second = route_status(&c, &r, "detour-routes", "2026-02-02T00:00:00Z");
        assert_eq!(first, second);
        assert!(transition(&first.conditions, &second.conditions).is_none());

        let c = compiled(std::slice::from_ref(&r), &SecretIndex::new());
        let third = route_status(&c, &r, "detour-routes", "2026-03-03T00:00:00Z");
        assert_eq!(third.conditions[0].status, "False");
        assert_eq!(third.conditions[0].reason, "SecretNotFound");
        assert_eq!(
            third.conditions[0].last_transition_time.as_deref(),
            Some("2026-03-03T00:00:00Z")
        );
        assert!(transition(&second.conditions, &third.conditions).is_some());
    }
}
