//! RoutingPolicies: each one's own fields resolved against the built-in defaults
//! ([`resolve`]), and the one a route is served with ([`Policies::for_route`]): the policy
//! it names, else its scope's default, else the built-in one.
//!
//! A policy with an error resolves to nothing; the routes that use it are left out (see the
//! module docs of `compile`).

use std::collections::{BTreeMap, BTreeSet};

use super::PolicyOutcome;
use super::conflicts::{DefaultPick, Defaults};
use super::diagnostics::{Diagnostic, Diags, ObjectKey, Reason, Severity};
use super::fields::Fields;
use super::rules;
use crate::crd::{
    BackoffSpec, HealthSpec, ModelRoute, OverridesSpec, ResponseModel, RetryOn, RetrySpec, RoutingPolicy,
    RoutingPolicySpec, RuleSpec, Scorer, ScoringSpec, Strategy, StreamingSpec, TimeoutsSpec,
};
use crate::defaults;
use crate::table::{Health, Overrides, Policy, Retry, Scoring, Streaming, Timeouts};

/// A policy whose own fields are valid; rules still need checking against each route.
#[derive(Debug)]
pub(super) struct PolicyBase {
    pub policy: Policy,
    pub rules: Vec<RuleSpec>,
}

/// Every policy of the input, resolved on its own; `None` for an invalid one.
#[derive(Debug)]
pub(super) struct Policies {
    by_name: BTreeMap<(String, String), (ObjectKey, Option<PolicyBase>)>,
    builtin: PolicyBase,
}

impl Policies {
    /// Resolves every policy, in `order`.
    pub fn resolve_all(order: &[&RoutingPolicy], diags: &mut Diags) -> Self {
        let mut by_name = BTreeMap::new();
        for p in order.iter().copied() {
            let key = ObjectKey::of_policy(p);
            let base = resolve(&p.spec, &key.to_source(), &key, diags);
            by_name.insert((key.namespace.clone(), key.name.clone()), (key, base));
        }
        Self {
            by_name,
            builtin: PolicyBase {
                policy: defaults::policy(),
                rules: Vec::new(),
            },
        }
    }

    /// Policy `namespace/name`: its key, and what it resolved to.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&(ObjectKey, Option<PolicyBase>)> {
        self.by_name.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The policy route `key` is served with: the one its `policyRef` names, else its
    /// scope's default, else the built-in one (then without a key). `Err` when the named or
    /// default policy is missing or invalid: the route is left out.
    pub fn for_route(
        &self,
        route: &ModelRoute,
        key: &ObjectKey,
        defaults: &Defaults<'_>,
        diags: &mut Diags,
    ) -> Result<(Option<&ObjectKey>, &PolicyBase), Diagnostic> {
        if let Some(pr) = &route.spec.policy_ref {
            return match self.get(&key.namespace, &pr.name) {
                None => Err(diags.error(
                    key,
                    "spec.policyRef.name",
                    Reason::PolicyNotFound,
                    format!(
                        "RoutingPolicy {:?} not found in namespace {:?}; create it or remove policyRef to use the default",
                        pr.name, key.namespace
                    ),
                )),
                Some((pkey, None)) => Err(diags.error(
                    key,
                    "spec.policyRef.name",
                    Reason::PolicyInvalid,
                    format!(
                        "RoutingPolicy {:?} is invalid (see its status); fix it or point policyRef at another policy",
                        pkey.name
                    ),
                )),
                Some((pkey, Some(base))) => Ok((Some(pkey), base)),
            };
        }
        match defaults.pick(&key.namespace) {
            DefaultPick::One(pkey) => match self.get(&pkey.namespace, &pkey.name) {
                Some((pkey, Some(base))) => Ok((Some(pkey), base)),
                Some((pkey, None)) => Err(diags.error(
                    key,
                    "spec.policyRef",
                    Reason::PolicyInvalid,
                    format!(
                        "the default RoutingPolicy {} is invalid (see its status); fix it or set policyRef",
                        pkey.to_source()
                    ),
                )),
                None => Ok((None, &self.builtin)),
            },
            DefaultPick::Conflict(ns) => {
                diags.add(
                    Severity::Warning,
                    key,
                    "spec.policyRef".to_owned(),
                    Reason::DefaultConflict,
                    format!(
                        "{} has more than one default RoutingPolicy; using the built-in defaults until only one is left, or set policyRef",
                        defaults.scope_name(ns)
                    ),
                );
                Ok((None, &self.builtin))
            }
            DefaultPick::None => Ok((None, &self.builtin)),
        }
    }

    /// What happened to each policy, given how many served routes use each (by source).
    pub fn outcomes(&self, route_count: &BTreeMap<String, u32>, diags: &Diags) -> Vec<PolicyOutcome> {
        self.by_name
            .values()
            .map(|(key, base)| PolicyOutcome {
                object: key.clone(),
                valid: base.is_some() && !diags.has_error(key),
                route_count: route_count.get(&key.to_source()).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// A retry class as users write it.
const fn retry_on_name(class: RetryOn) -> &'static str {
    match class {
        RetryOn::ServerError => "5xx",
        RetryOn::RateLimited => "429",
        RetryOn::Timeout => "timeout",
        RetryOn::ConnectError => "connect-error",
        RetryOn::ContentFilter => "content-filter",
    }
}

/// A list of retry classes as a set; listing one twice is an error on `field`.
fn class_set(f: &mut Fields<'_>, list: &[RetryOn], field: &str, what: &str) -> BTreeSet<RetryOn> {
    let set: BTreeSet<RetryOn> = list.iter().copied().collect();
    if set.len() != list.len() {
        f.error(
            field,
            Reason::InvalidSpec,
            format!("lists a {what} twice; list each at most once"),
        );
    }
    set
}

/// Resolves a policy's own fields against the built-in defaults. `None` when invalid (the
/// diagnostics say why).
///
/// Each step reads one part of the spec. They run in the order the policy's status lists its
/// errors (the first one also names the `reason`): the durations and classes of `retry` and
/// `timeouts` with the checks between them, `health`'s durations, `scoring`, the tag rules'
/// shapes, then the counts and ratios of `retry` and `health`, and `responseModel` last.
pub(super) fn resolve(
    spec: &RoutingPolicySpec,
    source: &str,
    key: &ObjectKey,
    diags: &mut Diags,
) -> Option<PolicyBase> {
    let mark = diags.mark();
    let f = &mut Fields { key, diags };
    let d = defaults::policy();
    let retry_spec = spec.retry.clone().unwrap_or_default();
    let health_spec = spec.health.clone().unwrap_or_default();
    let timeouts_spec = spec.timeouts.clone().unwrap_or_default();

    let (waits, timeouts) = retry_waits_and_timeouts(&retry_spec, &timeouts_spec, &d, f);
    let health_waits = health_waits(&health_spec, &d.health, f);
    let scoring = scoring(spec.scoring.clone().unwrap_or_default(), f);
    check_rule_shapes(spec, f);
    let retry = retry(&retry_spec, waits, &d.retry, f);
    let health = health(&health_spec, health_waits, &d.health, f);
    let response_model = response_model(spec, d.response_model, f);
    let policy = Policy {
        source: source.to_owned(),
        strategy: spec.strategy.unwrap_or(Strategy::Priority),
        retry,
        timeouts,
        health,
        overrides: overrides(spec.overrides.as_ref(), &d.overrides),
        scoring,
        response_model,
        streaming: streaming(spec.streaming.as_ref(), &d.streaming),
    };
    f.diags.first_since(mark).ok()?;
    Some(PolicyBase {
        policy,
        rules: spec.rules.clone().unwrap_or_default(),
    })
}

/// What `retry` says in classes and durations; [`retry`] adds its counts.
struct RetryWaits {
    on: Vec<RetryOn>,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    same_target: Vec<RetryOn>,
    rate_limit_max_wait_ms: u64,
}

/// `retry`'s classes and waits, and `timeouts`: a backoff never starts above its `max`, an
/// attempt never outlasts the request, and a first byte is never awaited longer than the
/// attempt (a default one is capped to a shorter `perAttempt`).
fn retry_waits_and_timeouts(
    retry: &RetrySpec,
    timeouts: &TimeoutsSpec,
    d: &Policy,
    f: &mut Fields<'_>,
) -> (RetryWaits, Timeouts) {
    let on = match &retry.on {
        None => d.retry.on.clone(),
        Some(list) => class_set(f, list, "spec.retry.on", "trigger")
            .into_iter()
            .collect(),
    };
    let (base, max) = backoff(&retry.backoff.clone().unwrap_or_default(), &d.retry, f);
    let (t, dt) = (timeouts, &d.timeouts);
    let [per_attempt, first_byte, total, stream_idle] = f.durations(
        "spec.timeouts",
        [
            ("perAttempt", t.per_attempt.as_deref(), dt.per_attempt_ms),
            ("firstByte", t.first_byte.as_deref(), dt.first_byte_ms),
            ("total", t.total.as_deref(), dt.total_ms),
            ("streamIdle", t.stream_idle.as_deref(), dt.stream_idle_ms),
        ],
    );
    let max_wait = f.duration(
        retry.rate_limit.as_ref().and_then(|r| r.max_wait.as_deref()),
        d.retry.rate_limit_max_wait_ms,
        "spec.retry.rateLimit.maxWait",
    );
    let same_target = same_target(retry.same_target.as_deref(), &d.retry, f);
    if let (Some(pa), Some(t)) = (per_attempt, total)
        && pa > t
    {
        f.error(
            "spec.timeouts.perAttempt",
            Reason::InvalidSpec,
            format!("{pa}ms exceeds timeouts.total ({t}ms); an attempt cannot outlast the request"),
        );
    }
    let first_byte = match (first_byte, per_attempt) {
        (Some(fb), Some(pa)) if fb > pa => {
            if timeouts.first_byte.is_some() {
                f.error(
                    "spec.timeouts.firstByte",
                    Reason::InvalidSpec,
                    format!("{fb}ms exceeds timeouts.perAttempt ({pa}ms)"),
                );
            }
            // A default first-byte timeout longer than a shorter per-attempt one is capped.
            Some(pa)
        }
        (fb, _) => fb,
    };
    f.not_zero(&[
        ("spec.timeouts.perAttempt", per_attempt),
        ("spec.timeouts.total", total),
        ("spec.timeouts.streamIdle", stream_idle),
    ]);
    let waits = RetryWaits {
        on,
        backoff_base_ms: base.unwrap_or_default(),
        backoff_max_ms: max.unwrap_or_default(),
        same_target,
        rate_limit_max_wait_ms: max_wait.unwrap_or_default(),
    };
    let timeouts = Timeouts {
        per_attempt_ms: per_attempt.unwrap_or_default(),
        first_byte_ms: first_byte.unwrap_or_default(),
        stream_idle_ms: stream_idle.unwrap_or_default(),
        total_ms: total.unwrap_or_default(),
    };
    (waits, timeouts)
}

/// `retry.backoff`'s `base` and `max`; `base` must not exceed `max`.
fn backoff(backoff: &BackoffSpec, d: &Retry, f: &mut Fields<'_>) -> (Option<u64>, Option<u64>) {
    let base = f.duration(
        backoff.base.as_deref(),
        d.backoff_base_ms,
        "spec.retry.backoff.base",
    );
    let max = f.duration(backoff.max.as_deref(), d.backoff_max_ms, "spec.retry.backoff.max");
    if let (Some(b), Some(m)) = (base, max)
        && b > m
    {
        f.error(
            "spec.retry.backoff.base",
            Reason::InvalidSpec,
            format!("{b}ms exceeds backoff.max ({m}ms); lower base or raise max"),
        );
    }
    (base, max)
}

/// `retry.sameTarget`: only failures another try of the same target may cure (5xx, a refused
/// connection, a timeout); a 429's wait is `retry.rateLimit.maxWait`'s.
fn same_target(list: Option<&[RetryOn]>, d: &Retry, f: &mut Fields<'_>) -> Vec<RetryOn> {
    let Some(list) = list else {
        return d.same_target.clone();
    };
    let set = class_set(f, list, "spec.retry.sameTarget", "class");
    for class in &set {
        if !matches!(
            class,
            RetryOn::ServerError | RetryOn::ConnectError | RetryOn::Timeout
        ) {
            f.error(
                "spec.retry.sameTarget",
                Reason::InvalidSpec,
                format!(
                    "{} cannot be retried on the same target; use 5xx, connect-error or timeout (429 waits are set by retry.rateLimit.maxWait)",
                    retry_on_name(*class)
                ),
            );
        }
    }
    set.into_iter().collect()
}

/// What `health` says in durations; [`health`] adds its counts and ratios.
struct HealthWaits {
    cooldown_ms: u64,
    max_cooldown_ms: u64,
    probe_first_byte_ms: u64,
    error_rate_window_ms: u64,
    latency_threshold_ms: Option<u64>,
}

/// `health`'s durations: the cooldown and its growth up to `maxCooldown` (unset, it is the
/// cooldown: growth on failed probes is opt-in), the half-open probe's first-byte bound, the
/// error-rate window and the optional latency threshold.
fn health_waits(health: &HealthSpec, d: &Health, f: &mut Fields<'_>) -> HealthWaits {
    let cooldown = f.duration(health.cooldown.as_deref(), d.cooldown_ms, "spec.health.cooldown");
    let max_cooldown = f.duration(
        health.max_cooldown.as_deref(),
        cooldown.unwrap_or(d.cooldown_ms),
        "spec.health.maxCooldown",
    );
    let probe_first_byte = f.duration(
        health.probe_first_byte.as_deref(),
        d.probe_first_byte_ms,
        "spec.health.probeFirstByte",
    );
    f.not_zero(&[("spec.health.probeFirstByte", probe_first_byte)]);
    let max_cooldown = match (cooldown, max_cooldown) {
        (Some(c), Some(m)) if c > m => {
            if health.max_cooldown.is_some() {
                f.error(
                    "spec.health.cooldown",
                    Reason::InvalidSpec,
                    format!("{c}ms exceeds health.maxCooldown ({m}ms)"),
                );
            }
            Some(c)
        }
        (_, m) => m,
    };
    let error_rate = health.error_rate.clone().unwrap_or_default();
    let window = f.duration(
        error_rate.window.as_deref(),
        d.error_rate_window_ms,
        "spec.health.errorRate.window",
    );
    let latency = match health.latency_threshold.as_deref() {
        None => Some(None),
        Some(v) => f.duration(Some(v), 0, "spec.health.latencyThreshold").map(Some),
    };
    HealthWaits {
        cooldown_ms: cooldown.unwrap_or_default(),
        max_cooldown_ms: max_cooldown.unwrap_or_default(),
        probe_first_byte_ms: probe_first_byte.unwrap_or_default(),
        error_rate_window_ms: window.unwrap_or_default(),
        latency_threshold_ms: latency.flatten(),
    }
}

/// Each tag rule's own shape; what a rule names is checked against each route that uses it.
fn check_rule_shapes(spec: &RoutingPolicySpec, f: &mut Fields<'_>) {
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        rules::check_shape(rule, &format!("spec.rules[{i}]"), f);
    }
}

/// `retry`: `waits`, with the attempts per target, the backoff's jitter and the retry budget.
fn retry(retry: &RetrySpec, waits: RetryWaits, d: &Retry, f: &mut Fields<'_>) -> Retry {
    let backoff = retry.backoff.clone().unwrap_or_default();
    let budget = retry.budget.clone().unwrap_or_default();
    Retry {
        attempts: f.count(retry.attempts, d.attempts, (1, 10), "spec.retry.attempts"),
        backoff_base_ms: waits.backoff_base_ms,
        backoff_max_ms: waits.backoff_max_ms,
        jitter: f.ratio(backoff.jitter, d.jitter, "spec.retry.backoff.jitter"),
        on: waits.on,
        budget_ratio: f.ratio(budget.ratio, d.budget_ratio, "spec.retry.budget.ratio"),
        budget_min_per_second: f.count(
            budget.min_per_second,
            d.budget_min_per_second,
            (0, 100_000),
            "spec.retry.budget.minPerSecond",
        ),
        same_target: waits.same_target,
        rate_limit_max_wait_ms: waits.rate_limit_max_wait_ms,
    }
}

/// `health`: `waits`, with the breaker's thresholds (consecutive failures, error rate) and
/// the number of half-open probes.
fn health(health: &HealthSpec, waits: HealthWaits, d: &Health, f: &mut Fields<'_>) -> Health {
    let error_rate = health.error_rate.clone().unwrap_or_default();
    Health {
        failure_threshold: f.count(
            health.failure_threshold,
            d.failure_threshold,
            (1, 1000),
            "spec.health.failureThreshold",
        ),
        error_rate_threshold: f.ratio(
            error_rate.threshold,
            d.error_rate_threshold,
            "spec.health.errorRate.threshold",
        ),
        error_rate_window_ms: waits.error_rate_window_ms,
        error_rate_min_requests: f.count(
            error_rate.min_requests,
            d.error_rate_min_requests,
            (1, 100_000),
            "spec.health.errorRate.minRequests",
        ),
        cooldown_ms: waits.cooldown_ms,
        max_cooldown_ms: waits.max_cooldown_ms,
        half_open_probes: f.count(
            health.half_open_probes,
            d.half_open_probes,
            (1, 100),
            "spec.health.halfOpenProbes",
        ),
        probe_first_byte_ms: waits.probe_first_byte_ms,
        latency_threshold_ms: waits.latency_threshold_ms,
    }
}

/// What a request may override with its headers.
fn overrides(spec: Option<&OverridesSpec>, d: &Overrides) -> Overrides {
    let spec = spec.cloned().unwrap_or_default();
    Overrides {
        allow_target: spec.allow_target.unwrap_or(d.allow_target),
        allow_disable_fallback: spec.allow_disable_fallback.unwrap_or(d.allow_disable_fallback),
    }
}

/// Whether answers are assembled from streams and broken streams continued elsewhere.
fn streaming(spec: Option<&StreamingSpec>, d: &Streaming) -> Streaming {
    Streaming {
        assemble: spec.and_then(|s| s.assemble).unwrap_or(d.assemble),
        continue_on_failure: spec
            .and_then(|s| s.continue_on_failure)
            .unwrap_or(d.continue_on_failure),
    }
}

/// The cost/quality strategies' thresholds.
fn scoring(scoring: ScoringSpec, f: &mut Fields<'_>) -> Scoring {
    // Unset thresholds stay unset: each cost/quality strategy has its own defaults, and a tag
    // rule may switch strategy per request (see `table::Scoring`).
    let simple_below = scoring
        .simple_below
        .map(|v| f.ratio(Some(v), 0.0, "spec.scoring.simpleBelow"));
    let complex_above = scoring
        .complex_above
        .map(|v| f.ratio(Some(v), 0.0, "spec.scoring.complexAbove"));
    let cheap_share = scoring
        .cheap_share
        .map(|v| f.ratio(Some(v), 0.5, "spec.scoring.cheapShare"));
    if cheap_share.is_some() && (simple_below.is_some() || complex_above.is_some()) {
        f.error(
            "spec.scoring.cheapShare",
            Reason::InvalidSpec,
            "cheapShare replaces simpleBelow and complexAbove: set the share or the thresholds".to_owned(),
        );
    }
    if let (Some(lo), Some(hi)) = (simple_below, complex_above)
        && lo > hi
    {
        f.error(
            "spec.scoring.simpleBelow",
            Reason::InvalidSpec,
            format!("{lo} exceeds scoring.complexAbove ({hi})"),
        );
    }
    Scoring {
        simple_below,
        complex_above,
        disabled: scoring.disabled.unwrap_or(false),
        // Thresholds written without naming a scorer were tuned on `v1`, the only one there
        // was: they keep it. Everything else gets the current default.
        scorer: scoring
            .scorer
            .unwrap_or(if simple_below.is_some() || complex_above.is_some() {
                Scorer::V1
            } else {
                Scorer::default()
            }),
        cheap_share,
    }
}

/// What the `model` of answers says; the deprecated `exposeUpstreamModel` when
/// `responseModel` is not set, and an error when both are set and disagree.
fn response_model(spec: &RoutingPolicySpec, default: ResponseModel, f: &mut Fields<'_>) -> ResponseModel {
    if let (Some(m), Some(expose)) = (spec.response_model, spec.expose_upstream_model)
        && (m == ResponseModel::Upstream) != expose
    {
        f.error(
            "spec.exposeUpstreamModel",
            Reason::InvalidSpec,
            "disagrees with responseModel; remove the deprecated exposeUpstreamModel".to_owned(),
        );
    }
    match (spec.response_model, spec.expose_upstream_model) {
        (Some(m), _) => m,
        (None, Some(true)) => ResponseModel::Upstream,
        (None, Some(false)) => ResponseModel::Route,
        (None, None) => default,
    }
}
