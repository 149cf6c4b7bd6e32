//! The table being served, as the request path needs it, and the state that outlives it.
//!
//! A [`Snapshot`] is built from a [`RouteTable`] on every (re)load and swapped in atomically;
//! a request holds the `Arc<Snapshot>` it started with until it ends, so a reload never
//! changes a request mid-flight. Breaker, latency and mock-script state lives in
//! [`TargetState`], kept in the [`Registry`] by [`TargetKey`] — route, target name, provider,
//! endpoint, upstream model — so it survives a reload for every target whose identity did not
//! change, and starts fresh for one that did. Retry budgets are kept per route the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::sync::{Arc, Mutex};

use detour_api::RouteTable;
use detour_api::table::{Provider as ProviderKind, Route, Scorer, Target};
use http::HeaderValue;
use tokio::time::Instant;

use crate::health::{Breaker, Params};
use crate::metrics::{Metrics, RouteMetrics, TargetMetrics};
use crate::providers::{HttpClient, Provider, mock::Mock};
use crate::retry::RetryBudget;
use crate::share::ScoreWindow;

/// What identifies a target's health across reloads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub route: String,
    pub name: String,
    pub provider: ProviderKind,
    pub endpoint: Option<String>,
    pub model: String,
}

/// Mutable state of one target.
#[derive(Debug)]
pub struct TargetState {
    pub breaker: Mutex<Breaker>,
    /// Requests in flight to this target (for `least-busy`).
    pub in_flight: AtomicI64,
    /// The mock provider's script position.
    pub mock_cursor: Arc<AtomicUsize>,
}

impl TargetState {
    /// The breaker. A panic while it was held cannot leave it half-updated in a way that
    /// matters (every update is a few field writes), so a poisoned lock is used as is.
    pub fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One target of the table being served.
#[derive(Debug)]
pub struct TargetRt {
    /// The route's id (for logs).
    pub route: String,
    pub cfg: Target,
    pub provider: Provider,
    pub state: Arc<TargetState>,
    pub metrics: TargetMetrics,
    /// `x-detour-target` for answers it served (`None` if the name is no header value).
    pub name_header: Option<HeaderValue>,
    /// The target's name, shared by the audit lines that name it.
    pub name: Arc<str>,
}

impl TargetRt {
    /// `x-detour-provider` and the audit line's `provider`.
    pub const fn provider_name(&self) -> &'static str {
        self.cfg.provider.as_str()
    }

    /// Runs `f` on the breaker at `now`; the one place that notices a state change, whatever
    /// caused it (a verdict, a cooldown that ran out, a probe that went away): it is logged,
    /// counted in `detour_breaker_transitions_total` and exported in `detour_breaker_state`.
    /// `why` names what led to it (an attempt's class, or `cooldown`).
    pub fn with_breaker<R>(&self, now: Instant, why: &str, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut b = self.state.breaker();
        let before = b.peek();
        let out = f(&mut b);
        let after = b.state(now);
        let degraded = b.degraded();
        let held = b.fleet_held(now);
        drop(b);
        if before.gauge() != after.gauge() {
            let to = ["closed", "half-open", "open"]
                .get(usize::try_from(after.gauge()).unwrap_or(0))
                .copied()
                .unwrap_or("closed");
            tracing::warn!(route = %self.route, target = %self.cfg.name, why, "circuit {to}");
            self.metrics.breaker_transition(after.gauge());
        }
        self.metrics.breaker_state().set(after.gauge());
        self.metrics.fleet_held().set(i64::from(held));
        self.metrics.degraded().set(i64::from(degraded));
        out
    }
}

/// One route of the table being served.
#[derive(Debug)]
pub struct RouteRt {
    pub route: Route,
    /// `x-detour-route` (`None` if the id is no header value).
    pub route_header: Option<HeaderValue>,
    /// The route's id, shared by the audit lines that name it.
    pub name: Arc<str>,
    pub targets: Vec<Arc<TargetRt>>,
    pub budget: Arc<Mutex<RetryBudget>>,
    pub metrics: RouteMetrics,
    /// Recent complexity scores, for a policy that asks for a share (`scoring.cheapShare`).
    pub scores: Arc<ScoreWindow>,
}

impl RouteRt {
    pub fn target(&self, name: &str) -> Option<&Arc<TargetRt>> {
        self.targets.iter().find(|t| t.cfg.name == name)
    }

    /// Pays for one retry (or rate-limit wait) from the route's retry budget; a refusal is
    /// counted in `detour_retry_budget_exhausted_total`.
    pub fn withdraw_retry(&self, now: Instant) -> bool {
        let granted = self
            .budget
            .lock()
            .map(|mut b| b.try_withdraw(now))
            .unwrap_or(false);
        if !granted {
            self.metrics.budget_exhausted().inc();
        }
        granted
    }
}

/// The table being served.
#[derive(Debug)]
pub struct Snapshot {
    pub hash: String,
    pub routes: HashMap<String, Arc<RouteRt>>,
    /// Sorted route ids, for `/v1/models` and 404 messages.
    pub models: Vec<String>,
}

/// State that survives reloads.
#[derive(Debug, Default)]
pub struct Registry {
    targets: Mutex<HashMap<TargetKey, Arc<TargetState>>>,
    budgets: Mutex<HashMap<String, Arc<Mutex<RetryBudget>>>>,
    /// Score windows by route and scorer: a change of scorer starts a fresh window.
    scores: Mutex<HashMap<(String, Scorer), Arc<ScoreWindow>>>,
}

impl Registry {
    /// Builds a snapshot, reusing the state of unchanged targets and dropping the rest.
    pub fn build(&self, table: &RouteTable, http: &HttpClient, metrics: &Metrics) -> Snapshot {
        let now = Instant::now();
        let mut old_targets = self
            .targets
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        let mut old_budgets = self
            .budgets
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        let mut old_scores = self
            .scores
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        let mut new_scores = HashMap::new();
        let mut new_targets = HashMap::new();
        let mut new_budgets = HashMap::new();
        let mut routes = HashMap::new();
        let mut gauges = Vec::new();
        for route in &table.routes {
            let params = Params::from_policy(&route.policy.health);
            let retry = &route.policy.retry;
            let budget = old_budgets.remove(&route.model).unwrap_or_else(|| {
                Arc::new(Mutex::new(RetryBudget::new(
                    retry.budget_ratio,
                    retry.budget_min_per_second,
                    now,
                )))
            });
            if let Ok(mut b) = budget.lock() {
                b.set_params(retry.budget_ratio, retry.budget_min_per_second);
            }
            new_budgets.insert(route.model.clone(), budget.clone());
            let mut targets = Vec::with_capacity(route.targets.len());
            for t in &route.targets {
                let key = TargetKey {
                    route: route.model.clone(),
                    name: t.name.clone(),
                    provider: t.provider,
                    endpoint: t.endpoint.clone(),
                    model: t.model.clone(),
                };
                let state = old_targets.remove(&key).unwrap_or_else(|| {
                    Arc::new(TargetState {
                        breaker: Mutex::new(Breaker::new(params.clone(), now)),
                        in_flight: AtomicI64::new(0),
                        mock_cursor: Arc::new(AtomicUsize::new(0)),
                    })
                });
                // `peek`: a cooldown that ran out moves the state at the next admission,
                // where the transition is logged and counted (`TargetRt::with_breaker`).
                let gauge = if let Ok(mut b) = state.breaker.lock() {
                    b.set_params(params.clone());
                    b.peek().gauge()
                } else {
                    0
                };
                new_targets.insert(key, state.clone());
                let provider = match t.provider {
                    ProviderKind::Mock => Provider::Mock(Mock::new(t, state.mock_cursor.clone())),
                    _ => Provider::for_target(t, http),
                };
                let target = Arc::new(TargetRt {
                    route: route.model.clone(),
                    cfg: t.clone(),
                    provider,
                    state,
                    metrics: TargetMetrics::new(metrics, &route.model, &t.name),
                    name_header: HeaderValue::from_str(&t.name).ok(),
                    name: t.name.as_str().into(),
                });
                gauges.push((target.clone(), gauge));
                targets.push(target);
            }
            let score_key = (route.model.clone(), route.policy.scoring.scorer);
            let scores = old_scores.remove(&score_key).unwrap_or_default();
            new_scores.insert(score_key, scores.clone());
            routes.insert(
                route.model.clone(),
                Arc::new(RouteRt {
                    route: route.clone(),
                    route_header: HeaderValue::from_str(&route.model).ok(),
                    name: route.model.as_str().into(),
                    targets,
                    budget,
                    metrics: RouteMetrics::new(metrics, &route.model),
                    scores,
                }),
            );
        }
        // Targets that left the table stop being exported; then the breaker state of those
        // that are in it (in this order: a target whose endpoint changed left under the same
        // labels).
        for key in old_targets.keys() {
            let _ = metrics
                .breaker_state
                .remove_label_values(&[key.route.as_str(), key.name.as_str()]);
            let _ = metrics
                .fleet_held
                .remove_label_values(&[key.route.as_str(), key.name.as_str()]);
        }
        for (target, gauge) in gauges {
            target.metrics.breaker_state().set(gauge);
        }
        if let Ok(mut g) = self.targets.lock() {
            *g = new_targets;
        }
        if let Ok(mut g) = self.budgets.lock() {
            *g = new_budgets;
        }
        if let Ok(mut g) = self.scores.lock() {
            *g = new_scores;
        }
        let mut models: Vec<String> = routes.keys().cloned().collect();
        models.sort();
        Snapshot {
            hash: table.hash.clone(),
            routes,
            models,
        }
    }
}
