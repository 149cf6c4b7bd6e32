//! Fleet health in ModelRoute status: `status.targets[]` and `status.healthy`, and Events
//! `TargetOpened` / `TargetRecovered`.
//!
//! Writes are coalesced so the apiserver sees a handful per route per minute, not one per
//! poll: a change of any target's *state* is written at once (with its Event); a change of
//! numbers only (pods reporting, error rate, latency, last failure) at most every
//! [`NUMBERS_EVERY`]; nothing is written when nothing changed. The comparison is with the
//! status as the watch cache has it, so a write that another writer undid is redone.
//! The whole status is written, by the controller's one field manager (its conditions are
//! carried over as they stand, as the controller carries `targets` over).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use detour_api::ModelRoute;
use detour_api::crd::{ModelRouteStatus, TargetHealthStatus};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::controller::status::apply_status;
use crate::fleet::{RouteHealth, TargetState};
use crate::fleet_gather::Fleet;

/// The least time between two writes of a route's numbers alone.
pub const NUMBERS_EVERY: Duration = Duration::from_secs(30);

/// The live health of `route`'s targets, in spec order, from its namespace's aggregate
/// (`None`: no pod of the namespace reports). A target keeps the `lastTransitionTime` it has
/// in `current` while its state stays the same.
pub fn targets(
    route: &ModelRoute,
    aggregate: Option<&[RouteHealth]>,
    current: &[TargetHealthStatus],
    now: Timestamp,
) -> Vec<TargetHealthStatus> {
    let live = aggregate
        .unwrap_or_default()
        .iter()
        .find(|r| r.route == route.spec.model);
    route
        .spec
        .targets
        .iter()
        .map(|t| {
            let health = live.and_then(|r| r.targets.iter().find(|h| h.name == t.name));
            let state = health
                .map_or(TargetState::Unknown, |h| h.state)
                .as_str()
                .to_owned();
            let transition = current
                .iter()
                .find(|c| c.name == t.name && c.state == state)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| {
                    // Whole seconds, as metav1.Time is written.
                    now.round(k8s_openapi::jiff::Unit::Second)
                        .unwrap_or(now)
                        .to_string()
                });
            TargetHealthStatus {
                name: t.name.clone(),
                state,
                pods_open: health.map_or(0, |h| h.pods_open),
                pods_reporting: health.map_or(0, |h| h.pods_reporting),
                error_rate: health
                    .and_then(|h| h.error_rate)
                    .map(|r| (r * 1000.0).round() / 1000.0),
                latency_ms: health.and_then(|h| h.latency_ms).map(|ms| {
                    #[expect(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "a rounded, non-negative latency"
                    )]
                    let ms = ms.round().max(0.0) as u64;
                    ms
                }),
                last_failure_class: health.and_then(|h| h.last_failure_class.clone()),
                last_failure_time: health.and_then(|h| h.last_failure_ago).and_then(|ago| {
                    let ago = SignedDuration::try_from(ago).ok()?;
                    let at = now
                        .checked_sub(ago)
                        .ok()?
                        .round(k8s_openapi::jiff::Unit::Second)
                        .ok()?;
                    Some(at.to_string())
                }),
                last_transition_time: Some(transition),
            }
        })
        .collect()
}

/// `status.healthy`: healthy targets out of all, such as `2/3`.
pub fn healthy(targets: &[TargetHealthStatus]) -> String {
    let ok = targets
        .iter()
        .filter(|t| t.state == TargetState::Healthy.as_str())
        .count();
    format!("{ok}/{}", targets.len())
}

/// Whether to write `desired` over `current` now, the last write of this route having been
/// at `last_write`: at once when a state changed, numbers at most every [`NUMBERS_EVERY`].
pub fn should_write(
    current: &[TargetHealthStatus],
    desired: &[TargetHealthStatus],
    last_write: Option<Instant>,
    now: Instant,
) -> bool {
    let states = |ts: &[TargetHealthStatus]| {
        ts.iter()
            .map(|t| (t.name.clone(), t.state.clone()))
            .collect::<Vec<_>>()
    };
    if states(current) != states(desired) {
        return true;
    }
    current != desired && last_write.is_none_or(|at| now.saturating_duration_since(at) >= NUMBERS_EVERY)
}

/// The Events of the transitions from `current` to `desired`: `TargetOpened` when a target
/// became open on the fleet, `TargetRecovered` when one that was open no longer is (Unknown
/// is neither: nobody knows).
pub fn events(current: &[TargetHealthStatus], desired: &[TargetHealthStatus]) -> Vec<Event> {
    let open = TargetState::Open.as_str();
    desired
        .iter()
        .filter_map(|d| {
            let was = current.iter().find(|c| c.name == d.name).map(|c| c.state.as_str());
            let class = d.last_failure_class.as_deref().unwrap_or("none seen");
            if d.state == open && was != Some(open) {
                Some(Event {
                    type_: EventType::Warning,
                    reason: "TargetOpened".to_owned(),
                    note: Some(format!(
                        "target {} is open on {} of {} reporting pods (last failure: {class}): every pod skips it until it recovers",
                        d.name, d.pods_open, d.pods_reporting
                    )),
                    action: "FleetHealth".to_owned(),
                    secondary: None,
                })
            } else if was == Some(open) && d.state != open && d.state != TargetState::Unknown.as_str() {
                Some(Event {
                    type_: EventType::Normal,
                    reason: "TargetRecovered".to_owned(),
                    note: Some(format!(
                        "target {} recovered: {}, open on {} of {} reporting pods (last failure: {class})",
                        d.name, d.state, d.pods_open, d.pods_reporting
                    )),
                    action: "FleetHealth".to_owned(),
                    secondary: None,
                })
            } else {
                None
            }
        })
        .collect()
}

/// Writes status and Events after each round of the gatherer, as [`should_write`] says.
pub async fn run(
    client: Client,
    routes: Store<ModelRoute>,
    mut fleet: watch::Receiver<Arc<Fleet>>,
    recorder: Recorder,
    metrics: crate::metrics::Metrics,
) {
    let mut last_write: HashMap<(String, String), Instant> = HashMap::new();
    while fleet.changed().await.is_ok() {
        let snapshot = fleet.borrow_and_update().clone();
        let (now, wall) = (Instant::now(), Timestamp::now());
        for route in routes.state() {
            let ns = route.namespace().unwrap_or_default();
            // Only routes the controller has written status for (it owns the conditions).
            let Some(current) = route.status.as_ref() else {
                continue;
            };
            if snapshot.pods_known(&ns) == 0 && current.targets.is_empty() {
                continue;
            }
            let aggregate = snapshot.routes.get(&ns).map(Vec::as_slice);
            let desired = targets(&route, aggregate, &current.targets, wall);
            let key = (ns.clone(), route.name_any());
            if !should_write(&current.targets, &desired, last_write.get(&key).copied(), now) {
                continue;
            }
            let status = ModelRouteStatus {
                healthy: Some(healthy(&desired)),
                targets: desired.clone(),
                ..current.clone()
            };
            if let Err(e) = apply_status::<ModelRoute>(&client, &ns, &key.1, &status).await {
                warn!(namespace = %ns, route = %key.1, error = %e, "cannot write the live health of targets");
                continue;
            }
            metrics.fleet_status_writes.inc();
            last_write.insert(key, now);
            for event in events(&current.targets, &desired) {
                info!(namespace = %ns, route = %route.name_any(), reason = %event.reason, note = ?event.note, "target transition");
                if let Err(e) = recorder.publish(&event, &route.object_ref(&())).await {
                    warn!(error = %e, reason = %event.reason, "cannot publish Event");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::TargetHealth;

    fn route() -> ModelRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "detour.dev/v1alpha1", "kind": "ModelRoute",
            "metadata": {"name": "chat", "namespace": "shop"},
            "spec": {"model": "smart/chat", "targets": [
                {"name": "primary", "provider": "openai", "model": "gpt-4o"},
                {"name": "backup", "provider": "anthropic", "model": "claude"},
                {"name": "local", "provider": "mock", "model": "m"}]}
        }))
        .unwrap()
    }

    fn health(name: &str, state: TargetState, open: u32, reporting: u32) -> TargetHealth {
        TargetHealth {
            name: name.to_owned(),
            state,
            pods_open: open,
            pods_reporting: reporting,
            error_rate: Some(0.12345),
            latency_ms: Some(812.6),
            last_failure_class: Some("5xx".to_owned()),
            last_failure_ago: Some(Duration::from_millis(2_400)),
        }
    }

    fn aggregate(primary: TargetState, open: u32) -> Vec<RouteHealth> {
        vec![RouteHealth {
            route: "smart/chat".to_owned(),
            targets: vec![
                health("primary", primary, open, 20),
                health("backup", TargetState::Healthy, 0, 20),
            ],
        }]
    }

    /// Targets in spec order with the fleet's numbers (rounded); a target no pod reports is
    /// Unknown 0/0; the healthy count reads like `kubectl get` shows it.
    #[test]
    fn targets_follow_the_spec_with_the_fleets_numbers() {
        let now: Timestamp = "2026-12-04T21:00:00.25Z".parse().unwrap();
        let t = targets(&route(), Some(&aggregate(TargetState::Open, 3)), &[], now);
        let names: Vec<_> = t.iter().map(|t| (t.name.as_str(), t.state.as_str())).collect();
        assert_eq!(
            names,
            [("primary", "Open"), ("backup", "Healthy"), ("local", "Unknown")]
        );
        assert_eq!((t[0].pods_open, t[0].pods_reporting), (3, 20));
        assert_eq!((t[0].error_rate, t[0].latency_ms), (Some(0.123), Some(813)));
        assert_eq!(t[0].last_failure_time.as_deref(), Some("2026-12-04T20:59:58Z"));
        assert_eq!(t[0].last_transition_time.as_deref(), Some("2026-12-04T21:00:00Z"));
        assert_eq!((t[2].pods_reporting, t[2].error_rate), (0, None));
        assert_eq!(healthy(&t), "1/3");
        let none = targets(&route(), None, &[], now);
        assert!(
            none.iter().all(|t| t.state == "Unknown"),
            "no pod reports: unknown, never healthy"
        );
    }

    /// A state change is written at once with `lastTransitionTime` now; numbers alone wait
    /// for NUMBERS_EVERY since the last write; nothing changed, nothing written; an unchanged
    /// state keeps its transition time.
    #[tokio::test(start_paused = true)]
    async fn writes_are_coalesced() {
        let t0: Timestamp = "2026-12-04T21:00:00Z".parse().unwrap();
        let healthy_now = targets(&route(), Some(&aggregate(TargetState::Healthy, 0)), &[], t0);
        let now = Instant::now();
        assert!(should_write(&[], &healthy_now, None, now), "first write");
        assert!(
            !should_write(&healthy_now, &healthy_now, Some(now), now),
            "no change"
        );
        let later = t0.checked_add(SignedDuration::from_secs(5)).unwrap();
        let mut numbers = targets(
            &route(),
            Some(&aggregate(TargetState::Degraded, 1)),
            &healthy_now,
            later,
        );
        assert_eq!(
            numbers[1].last_transition_time.as_deref(),
            Some("2026-12-04T21:00:00Z"),
            "kept"
        );
        assert_eq!(
            numbers[0].last_transition_time.as_deref(),
            Some("2026-12-04T21:00:05Z"),
            "changed"
        );
        assert!(
            should_write(&healthy_now, &numbers, Some(now), now),
            "a state change goes at once"
        );
        numbers = targets(
            &route(),
            Some(&aggregate(TargetState::Healthy, 0)),
            &healthy_now,
            later,
        );
        numbers[0].pods_reporting = 19;
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            !should_write(&healthy_now, &numbers, Some(now), Instant::now()),
            "numbers wait"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            should_write(&healthy_now, &numbers, Some(now), Instant::now()),
            "then go"
        );
    }

    /// Opening on the fleet and recovering from it are Events naming the class and the pod
    /// count; Degraded ↔ Healthy and anything to Unknown are not.
    #[test]
    fn events_on_open_and_recovery() {
        let now = Timestamp::UNIX_EPOCH;
        let healthy_ = targets(&route(), Some(&aggregate(TargetState::Healthy, 0)), &[], now);
        let degraded = targets(
            &route(),
            Some(&aggregate(TargetState::Degraded, 1)),
            &healthy_,
            now,
        );
        let open = targets(&route(), Some(&aggregate(TargetState::Open, 3)), &degraded, now);
        assert!(events(&healthy_, &degraded).is_empty());
        let opened = events(&degraded, &open);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].reason, "TargetOpened");
        assert_eq!(opened[0].type_, EventType::Warning);
        let note = opened[0].note.as_deref().unwrap();
        assert!(
            note.contains("primary is open on 3 of 20 reporting pods (last failure: 5xx)"),
            "{note}"
        );
        let recovered = events(&open, &healthy_);
        assert_eq!(recovered[0].reason, "TargetRecovered");
        assert!(
            recovered[0]
                .note
                .as_deref()
                .unwrap()
                .contains("primary recovered: Healthy")
        );
        let unknown = targets(&route(), None, &open, now);
        assert!(events(&open, &unknown).is_empty());
    }
}
