//! Phase 4, status: the whole status of every route and policy of the namespace, built from
//! what `compile` decided and what was applied, and written by one writer for both kinds
//! ([`write`]), skipped when nothing changed; an Event when `Ready` transitions.
//!
//! The rules are pure (no client, no clock: the caller passes `now`), so they are tested
//! without an apiserver:
//! - the status is written whole, every time: a condition that no longer holds disappears
//!   (a resolved `Conflict`), never lingers;
//! - `lastTransitionTime` changes only when a condition's `status` changes;
//! - an Event is due only when `Ready`'s status or reason changes ([`transition`]).

use detour_api::crd::{Condition, ModelRouteStatus, RoutingPolicyStatus};
use detour_api::{Compiled, Kind, ModelRoute, ObjectKey, RoutingPolicy};
use kube::api::{Api, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::apply::Applied;
use super::gather::Inputs;
use super::{Context, Error, MANAGER};

/// Condition type of the verdict.
pub const READY: &str = "Ready";
/// Condition type present only while the object is part of a conflict.
pub const CONFLICT: &str = "Conflict";

/// The whole status of a route after `compiled` was applied to ConfigMap `config_map`.
pub fn route_status(
    compiled: &Compiled,
    route: &ModelRoute,
    config_map: &str,
    now: &str,
) -> ModelRouteStatus {
    let key = ObjectKey::of_route(route);
    let outcome = compiled.routes.iter().find(|r| r.object == key);
    // The live health of targets is fleet health's (`crate::fleet_status`); the whole status
    // is written by one field manager, so it is carried over as it stands.
    let (targets, healthy) = route
        .status
        .as_ref()
        .map(|s| (s.targets.clone(), s.healthy.clone()))
        .unwrap_or_default();
    ModelRouteStatus {
        conditions: conditions(compiled, &key, route, now),
        observed_generation: route.metadata.generation,
        config_map: Some(config_map.to_owned()),
        policy: outcome.and_then(|o| o.policy.clone()),
        target_count: Some(outcome.map_or(0, |o| o.target_count)),
        targets,
        healthy,
    }
}

/// The whole status of a policy.
pub fn policy_status(compiled: &Compiled, policy: &RoutingPolicy, now: &str) -> RoutingPolicyStatus {
    let key = ObjectKey::of_policy(policy);
    let outcome = compiled.policies.iter().find(|p| p.object == key);
    RoutingPolicyStatus {
        conditions: conditions(compiled, &key, policy, now),
        observed_generation: policy.metadata.generation,
        route_count: Some(outcome.map_or(0, |o| o.route_count)),
    }
}

/// `Ready`, and `Conflict` while there is one, of `obj` (whose `compile` key is `key`).
fn conditions<K: WithStatus>(compiled: &Compiled, key: &ObjectKey, obj: &K, now: &str) -> Vec<Condition> {
    let generation = obj.meta().generation;
    let previous = obj.status().map(K::conditions).unwrap_or_default();
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

/// Phase 4: the whole status of every object in the namespace, and Events on transitions.
pub async fn write(
    ctx: &Context,
    inputs: &Inputs,
    compiled: &Compiled,
    applied: &Applied,
) -> Result<(), Error> {
    let now = (ctx.now)();
    for route in &inputs.routes {
        let next = route_status(compiled, route, applied.config_map(), &now);
        write_one(ctx, &inputs.namespace, route, next).await?;
    }
    for policy in &inputs.policies {
        let next = policy_status(compiled, policy, &now);
        write_one(ctx, &inputs.namespace, policy, next).await?;
    }
    Ok(())
}

/// What the status writer needs of a kind.
pub trait WithStatus:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug
{
    type Status: Serialize + PartialEq;
    const KIND: Kind;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
}

impl WithStatus for ModelRoute {
    type Status = ModelRouteStatus;
    const KIND: Kind = Kind::ModelRoute;
    fn status(&self) -> Option<&ModelRouteStatus> {
        self.status.as_ref()
    }
    fn conditions(status: &ModelRouteStatus) -> &[Condition] {
        &status.conditions
    }
}

impl WithStatus for RoutingPolicy {
    type Status = RoutingPolicyStatus;
    const KIND: Kind = Kind::RoutingPolicy;
    fn status(&self) -> Option<&RoutingPolicyStatus> {
        self.status.as_ref()
    }
    fn conditions(status: &RoutingPolicyStatus) -> &[Condition] {
        &status.conditions
    }
}

/// Writes `next` as `obj`'s status unless it is already that, then the Event of a `Ready`
/// transition.
async fn write_one<K: WithStatus>(
    ctx: &Context,
    namespace: &str,
    obj: &K,
    next: K::Status,
) -> Result<(), Error> {
    let previous = obj.status();
    if previous == Some(&next) {
        return Ok(());
    }
    apply_status::<K>(&ctx.client, namespace, &obj.name_any(), &next)
        .await
        .map_err(|source| Error::StatusWrite {
            kind: K::KIND,
            namespace: namespace.to_owned(),
            name: obj.name_any(),
            source,
        })?;
    let previous = previous.map(K::conditions).unwrap_or_default();
    publish_transition(ctx, obj, previous, K::conditions(&next)).await;
    Ok(())
}

/// Server-side apply of a whole status with the one field manager [`MANAGER`].
pub async fn apply_status<K: WithStatus>(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &K::Status,
) -> Result<K, kube::Error> {
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
}

/// An Event when `Ready` changed. A failure to publish is logged, not fatal: the status
/// already says the same thing.
async fn publish_transition<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    previous: &[Condition],
    next: &[Condition],
) {
    let Some(ready) = transition(previous, next) else {
        return;
    };
    let event = Event {
        type_: if ready.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: ready.reason.clone(),
        note: Some(truncate(&ready.message, 1024)),
        action: "Compile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, reason = %ready.reason, "cannot publish Event");
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
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
