//! Choosing the order in which a request tries a route's targets.
//!
//! 1. The first tag rule that matches `x-detour-tags` (route-local rules come first in
//!    `Route.rules`) may restrict/reorder the targets and change the strategy.
//! 2. Overrides (`x-detour-target`, `x-detour-fallback: off`) apply only where the policy's
//!    `overrides` allow them; otherwise the request is refused naming why
//!    ([`Reason::OverrideNotAllowed`]).
//! 3. Targets whose declared capabilities or context window cannot serve the request are
//!    skipped before any call.
//! 4. The strategy orders the rest (the cost/quality strategies by the request's complexity
//!    score, see [`decide`] and [`order_by_score`]); then health reorders: degraded targets go after healthy
//!    ones (open ones stay in place and are skipped by the breaker's admission, so the
//!    response can say when they come back).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use detour_api::table::{Capability, Condition, Match, Op, Rule, Strategy};
use serde_json::{Map, Value};

use crate::audit::SkipRecord;
use crate::error::{Override, Reason};
use crate::providers::answer::RequestBody;
use crate::state::{RouteRt, TargetRt};

/// What the request needs from a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub json_schema: bool,
    pub vision: bool,
    pub streaming: bool,
    /// Prompt estimate (bytes / 4) plus `max_tokens`.
    pub tokens: u64,
}

impl Needs {
    pub fn of(body: &Map<String, Value>, body_len: usize, stream: bool) -> Self {
        let non_empty = |k: &str| match body.get(k) {
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        let json_schema = body
            .get("response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str)
            == Some("json_schema");
        let vision = body
            .get("messages")
            .and_then(Value::as_array)
            .is_some_and(|msgs| {
                msgs.iter().any(|m| {
                    m.get("content").and_then(Value::as_array).is_some_and(|parts| {
                        parts
                            .iter()
                            .any(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
                    })
                })
            });
        let max_tokens = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Self {
            tools: non_empty("tools") || non_empty("functions"),
            json_schema,
            vision,
            streaming: stream,
            tokens: (body_len as u64).div_ceil(4).saturating_add(max_tokens),
        }
    }

    /// Why `target` cannot serve this request, if it cannot.
    pub fn unmet(&self, target: &TargetRt) -> Option<&'static str> {
        if let Some(caps) = &target.cfg.capabilities {
            let has = |c: Capability| caps.contains(&c);
            if (self.tools && !has(Capability::Tools))
                || (self.json_schema && !has(Capability::JsonSchema))
                || (self.vision && !has(Capability::Vision))
                || (self.streaming && !has(Capability::Streaming))
            {
                return Some("capability");
            }
        }
        if let Some(window) = target.cfg.context_window
            && self.tokens > u64::from(window)
        {
            return Some("context-window");
        }
        None
    }
}

/// Parses `x-detour-tags: tier=free,region=eu` (a bare `key` is a tag with an empty value).
pub fn parse_tags(header: &str) -> Vec<(String, String)> {
    header
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

fn condition_holds(c: &Condition, tags: &[(String, String)]) -> bool {
    let value = tags.iter().find(|(k, _)| *k == c.tag).map(|(_, v)| v.as_str());
    let first = c.values.first().map(String::as_str).unwrap_or("");
    let num = |s: &str| s.trim().parse::<f64>().ok();
    match (c.op, value) {
        (Op::Exists, v) => v.is_some(),
        // An absent tag differs from every value.
        (Op::Ne, None) => true,
        (_, None) => false,
        (Op::Eq, Some(v)) => v == first,
        (Op::Ne, Some(v)) => v != first,
        (Op::In, Some(v)) => c.values.iter().any(|x| x == v),
        (Op::Contains, Some(v)) => v.contains(first),
        (Op::StartsWith, Some(v)) => v.starts_with(first),
        (Op::Gt, Some(v)) => matches!((num(v), num(first)), (Some(a), Some(b)) if a > b),
        (Op::Lt, Some(v)) => matches!((num(v), num(first)), (Some(a), Some(b)) if a < b),
    }
}

/// Whether a rule matches the request's tags.
pub fn rule_matches(rule: &Rule, tags: &[(String, String)]) -> bool {
    match rule.when {
        Match::All => rule.conditions.iter().all(|c| condition_holds(c, tags)),
        Match::Any => rule.conditions.iter().any(|c| condition_holds(c, tags)),
    }
}

/// What the client asked for in `x-detour-*` headers.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub target: Option<String>,
    pub fallback_off: bool,
}

/// The order to try targets in.
#[derive(Debug)]
pub struct Plan {
    pub targets: Vec<Arc<TargetRt>>,
    pub skipped: Vec<SkipRecord>,
    pub rule: Option<String>,
    pub strategy: Strategy,
    /// How the cost/quality strategies placed the request; `None` for other strategies.
    pub score: Option<ScoreDecision>,
}

/// A request's complexity class under a cost/quality strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Complexity {
    /// Below `simpleBelow`: the cheapest target first.
    Simple,
    /// Between the thresholds: conservatively, the least expensive capable target first.
    Medium,
    /// Above `complexAbove`: the most capable target first.
    Complex,
    /// The scorer is disabled or the request cannot be scored: the most capable first.
    Unscored,
}

impl Complexity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Medium => "medium",
            Self::Complex => "complex",
            Self::Unscored => "unscored",
        }
    }
}

/// Why a cost/quality strategy ordered the targets as it did: for the audit line, the
/// `x-detour-score` header and the score histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreDecision {
    /// The score, when the request could be scored.
    pub value: Option<f64>,
    pub class: Complexity,
    /// The thresholds in force, `(simple_below, complex_above)`.
    pub thresholds: (f64, f64),
    /// The feature that contributed most, or why there is no score.
    pub because: &'static str,
    /// The scorer's version: a label of the score histogram and the audit line.
    pub scorer: crate::scoring::Version,
    /// Whether the thresholds came from the route's recent scores (`scoring.cheapShare`).
    pub calibrated: bool,
}

impl ScoreDecision {
    /// The decision in words, e.g. `score 0.82 > complexAbove 0.60 (reasoning_words): most capable first`.
    pub fn rule(&self) -> String {
        let (lo, hi) = self.thresholds;
        match (self.value, self.class) {
            (Some(v), Complexity::Simple) => {
                format!(
                    "score {v:.2} < simpleBelow {lo:.2}{} ({}): cheapest first",
                    if self.calibrated { " from cheapShare" } else { "" },
                    self.because
                )
            }
            (Some(v), Complexity::Complex) => {
                format!(
                    "score {v:.2} > complexAbove {hi:.2} ({}): most capable first",
                    self.because
                )
            }
            (Some(v), _) => format!(
                "score {v:.2} between {lo:.2} and {hi:.2} ({}): least expensive capable target first",
                self.because
            ),
            (None, _) => format!("{}: most capable first", self.because),
        }
    }
}

/// Scores the request and classifies it against the policy's thresholds for `strategy`.
pub fn decide(
    strategy: Strategy,
    scoring: &detour_api::table::Scoring,
    body: &Map<String, Value>,
) -> ScoreDecision {
    decide_with(strategy, scoring, None, body)
}

/// [`decide`], with the thresholds a share calibration set, when it has.
pub fn decide_with(
    strategy: Strategy,
    scoring: &detour_api::table::Scoring,
    calibrated: Option<(f64, f64)>,
    body: &Map<String, Value>,
) -> ScoreDecision {
    let thresholds = calibrated.unwrap_or_else(|| scoring.thresholds(strategy));
    let version = match scoring.scorer {
        detour_api::table::Scorer::V1 => crate::scoring::Version::V1,
        detour_api::table::Scorer::V2 => crate::scoring::Version::V2,
        detour_api::table::Scorer::Length => crate::scoring::Version::Length,
    };
    let unscored = |because| ScoreDecision {
        value: None,
        class: Complexity::Unscored,
        thresholds,
        because,
        scorer: version,
        calibrated: calibrated.is_some(),
    };
    if scoring.disabled {
        return unscored("scorer disabled");
    }
    match crate::scoring::score_with(version, body) {
        Err(_) => unscored("no prompt to score"),
        Ok(score) => {
            let (lo, hi) = thresholds;
            let class = if score.value < lo {
                Complexity::Simple
            } else if score.value > hi {
                Complexity::Complex
            } else {
                Complexity::Medium
            };
            ScoreDecision {
                value: Some(score.value),
                class,
                thresholds,
                because: score.top.unwrap_or("no signal"),
                scorer: version,
                calibrated: calibrated.is_some(),
            }
        }
    }
}

/// Capability of a target for the cost/quality strategies: its `quality` tier, then its
/// `cost` (pricier taken as more capable), then its place in the route (earlier, more capable).
fn capability(t: &TargetRt, place: usize) -> (i8, f64, isize) {
    let tier = t.cfg.quality.map_or(-1, |q| q as i8);
    let cost = t.cfg.cost.map_or(0.0, |c| c.input + c.output);
    (tier, cost, -isize::try_from(place).unwrap_or(isize::MAX))
}

/// Orders targets for a complexity class. The upper half by capability are the capable
/// targets, the lower half the cheap ones; every target stays in the chain, so failover is
/// exactly as with `priority`.
pub fn order_by_score(targets: Vec<Arc<TargetRt>>, class: Complexity) -> Vec<Arc<TargetRt>> {
    let mut ranked: Vec<((i8, f64, isize), Arc<TargetRt>)> = targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| (capability(&t, i), t))
        .collect();
    // Most capable first.
    ranked.sort_by(|a, b| {
        b.0.0
            .cmp(&a.0.0)
            .then(b.0.1.total_cmp(&a.0.1))
            .then(b.0.2.cmp(&a.0.2))
    });
    let mut desc: Vec<Arc<TargetRt>> = ranked.into_iter().map(|(_, t)| t).collect();
    match class {
        Complexity::Complex | Complexity::Unscored => desc,
        Complexity::Simple => {
            desc.reverse();
            desc
        }
        Complexity::Medium => {
            let capable = desc.len().div_ceil(2);
            let cheap = desc.split_off(capable);
            desc.reverse();
            desc.extend(cheap);
            desc
        }
    }
}

/// Whether a strategy orders by the complexity score.
pub const fn scores(strategy: Strategy) -> bool {
    matches!(
        strategy,
        Strategy::CostOptimized | Strategy::Balanced | Strategy::QualityFirst
    )
}

/// Orders `targets` by a strategy that needs nothing but the targets. The cost/quality
/// strategies need the request's complexity score and are ordered by [`order_by_score`]; given
/// none, they put the most capable target first, like an unscorable request.
pub fn order(strategy: Strategy, mut targets: Vec<Arc<TargetRt>>) -> Vec<Arc<TargetRt>> {
    match strategy {
        Strategy::Single => targets.truncate(1),
        Strategy::Priority => {}
        Strategy::CostOptimized | Strategy::Balanced | Strategy::QualityFirst => {
            targets = order_by_score(targets, Complexity::Unscored);
        }
        Strategy::LeastBusy => {
            targets.sort_by_key(|t| t.state.in_flight.load(Ordering::Relaxed));
        }
        Strategy::LeastLatency => {
            // Unmeasured targets sort first so they get measured.
            let lat = |t: &Arc<TargetRt>| t.state.breaker().latency_ms().unwrap_or(0.0);
            let mut keyed: Vec<(f64, Arc<TargetRt>)> = targets.into_iter().map(|t| (lat(&t), t)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            targets = keyed.into_iter().map(|(_, t)| t).collect();
        }
        Strategy::LowestCost => {
            let cost = |t: &Arc<TargetRt>| t.cfg.cost.map_or(f64::INFINITY, |c| c.input + c.output);
            targets.sort_by(|a, b| cost(a).total_cmp(&cost(b)));
        }
        Strategy::Weighted => {
            let total: u64 = targets.iter().map(|t| u64::from(t.cfg.weight)).sum();
            if total > 0 {
                let mut pick = fastrand::u64(..total);
                let mut chosen = 0;
                for (i, t) in targets.iter().enumerate() {
                    let w = u64::from(t.cfg.weight);
                    if pick < w {
                        chosen = i;
                        break;
                    }
                    pick -= w;
                }
                let first = targets.remove(chosen);
                targets.insert(0, first);
            }
        }
    }
    targets
}

/// The request's JSON tree, for the parts of routing that read the body; a body only the
/// tree refuses is [`Reason::UnreadableJson`].
fn tree(request: &RequestBody) -> Result<&Map<String, Value>, Box<Reason>> {
    request
        .map()
        .map_err(|why| Box::new(Reason::UnreadableJson { why: why.to_owned() }))
}

/// Builds the plan for one request. The body's tree is read only when a candidate declares
/// capabilities or a context window, or the strategy scores the request.
pub fn plan(
    route: &RouteRt,
    tags: &[(String, String)],
    overrides: &Overrides,
    request: &RequestBody,
    stream: bool,
) -> Result<Plan, Box<Reason>> {
    let policy = &route.route.policy;
    let rule = route.route.rules.iter().find(|r| rule_matches(r, tags));
    let mut strategy = policy.strategy;
    let mut candidates: Vec<Arc<TargetRt>> = match rule.and_then(|r| r.targets.as_ref()) {
        Some(names) => names.iter().filter_map(|n| route.target(n).cloned()).collect(),
        None => route.targets.clone(),
    };
    if let Some(s) = rule.and_then(|r| r.strategy) {
        strategy = s;
    }
    if let Some(name) = &overrides.target {
        if !policy.overrides.allow_target {
            return Err(Box::new(Reason::OverrideNotAllowed {
                header: Override::Target,
                model: route.route.model.clone(),
                policy: policy.source.to_string(),
            }));
        }
        let Some(t) = route.target(name) else {
            return Err(Box::new(Reason::UnknownTarget {
                model: route.route.model.clone(),
                targets: route.targets.iter().map(|t| t.cfg.name.clone()).collect(),
            }));
        };
        candidates = vec![t.clone()];
        strategy = Strategy::Single;
    }
    if overrides.fallback_off && !policy.overrides.allow_disable_fallback {
        return Err(Box::new(Reason::OverrideNotAllowed {
            header: Override::FallbackOff,
            model: route.route.model.clone(),
            policy: policy.source.to_string(),
        }));
    }
    let mut skipped = Vec::new();
    let checks = |t: &Arc<TargetRt>| t.cfg.capabilities.is_some() || t.cfg.context_window.is_some();
    let needs = if candidates.iter().any(checks) {
        Needs::of(tree(request)?, request.raw().len(), stream)
    } else {
        Needs::default()
    };
    candidates.retain(|t| match needs.unmet(t) {
        Some(reason) => {
            skipped.push(SkipRecord {
                target: t.cfg.name.clone(),
                reason,
            });
            false
        }
        None => true,
    });
    if candidates.is_empty() && !skipped.is_empty() {
        return Err(Box::new(Reason::NoCapableTarget {
            model: route.route.model.clone(),
            needs: describe(&needs),
        }));
    }
    let (mut ordered, score) = if scores(strategy) {
        let share = policy.scoring.cheap_share;
        let calibrated = share.and_then(|_| route.scores.thresholds());
        let decision = decide_with(strategy, &policy.scoring, calibrated, tree(request)?);
        if let (Some(share), Some(v)) = (share, decision.value)
            && let Some(t) = route.scores.observe(v, share)
        {
            route.metrics.score_thresholds(t);
        }
        (order_by_score(candidates, decision.class), Some(decision))
    } else {
        (order(strategy, candidates), None)
    };
    if overrides.fallback_off {
        ordered.truncate(1);
    }
    // Degraded targets after healthy ones; a stable sort keeps the strategy's order otherwise.
    ordered.sort_by_key(|t| t.state.breaker().degraded());
    Ok(Plan {
        targets: ordered,
        skipped,
        rule: rule.map(|r| r.name.clone()),
        strategy,
        score,
    })
}

fn describe(n: &Needs) -> String {
    let mut parts = Vec::new();
    if n.tools {
        parts.push("tools".to_owned());
    }
    if n.json_schema {
        parts.push("json_schema".to_owned());
    }
    if n.vision {
        parts.push("vision".to_owned());
    }
    if n.streaming {
        parts.push("streaming".to_owned());
    }
    parts.push(format!("~{} tokens of context", n.tokens));
    parts.join(", ")
}

/// The known route id closest to an unknown `model`, for a "did you mean" in the 404: the
/// smallest edit distance (Levenshtein over characters, ignoring ASCII case), if it is at most
/// a third of the id's length (and at least 2 edits are allowed), ties to the first in
/// `known`'s order. Bounded work whatever the request sends: only ids whose length is within
/// the allowed distance are compared, so a megabyte-long `model` costs nothing.
pub fn closest_model<'a>(model: &str, known: &'a [String]) -> Option<&'a str> {
    let model = model.to_ascii_lowercase();
    let model_len = model.chars().count();
    let mut best: Option<(usize, &str)> = None;
    for id in known {
        let cand = id.to_ascii_lowercase();
        let cand_len = cand.chars().count();
        let allowed = (cand_len / 3).max(2);
        if model_len.abs_diff(cand_len) > allowed {
            continue;
        }
        let d = edit_distance(&model, &cand);
        if d <= allowed && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, id.as_str()));
        }
    }
    best.map(|(_, id)| id)
}

/// Levenshtein distance over characters (insertions, deletions, substitutions).
fn edit_distance(a: &str, b: &str) -> usize {
    strsim::levenshtein(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(tag: &str, op: Op, values: &[&str]) -> Condition {
        Condition {
            tag: tag.to_owned(),
            op,
            values: values.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Every operator of tag conditions, including absent tags.
    #[test]
    fn tag_operators() {
        let tags = parse_tags("tier=free, region=eu-west,score=7,beta");
        assert!(condition_holds(&cond("tier", Op::Eq, &["free"]), &tags));
        assert!(condition_holds(&cond("tier", Op::Ne, &["paid"]), &tags));
        assert!(condition_holds(&cond("absent", Op::Ne, &["x"]), &tags));
        assert!(condition_holds(&cond("score", Op::Gt, &["5"]), &tags));
        assert!(!condition_holds(&cond("score", Op::Lt, &["5"]), &tags));
        assert!(
            !condition_holds(&cond("tier", Op::Gt, &["5"]), &tags),
            "non-numeric never compares"
        );
        assert!(condition_holds(
            &cond("region", Op::In, &["us", "eu-west"]),
            &tags
        ));
        assert!(condition_holds(&cond("region", Op::Contains, &["west"]), &tags));
        assert!(condition_holds(&cond("region", Op::StartsWith, &["eu"]), &tags));
        assert!(condition_holds(&cond("beta", Op::Exists, &[]), &tags));
        assert!(!condition_holds(&cond("gamma", Op::Exists, &[]), &tags));
        assert!(!condition_holds(&cond("gamma", Op::Eq, &[""]), &tags));
    }

    /// Capabilities are read from the request: tools, json_schema, vision parts, streaming,
    /// and a token estimate including max_tokens.
    #[test]
    fn needs_from_body() {
        let body = serde_json::json!({
            "model": "m", "max_tokens": 100, "tools": [{"type": "function"}],
            "response_format": {"type": "json_schema"},
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        });
        let map = body.as_object().unwrap();
        let n = Needs::of(map, 400, true);
        assert!(n.tools && n.json_schema && n.vision && n.streaming);
        assert_eq!(n.tokens, 200);
        let plain = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let n = Needs::of(plain.as_object().unwrap(), 40, false);
        assert!(!n.tools && !n.json_schema && !n.vision && !n.streaming);
    }

    /// Targets of a one-route table whose targets are `(name, quality, cost)`, in that order.
    fn targets(spec: &[(&str, Option<&str>, Option<f64>)]) -> Vec<Arc<TargetRt>> {
        let mut yaml = String::from(
            "apiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: r}\nspec:\n  model: m\n  targets:\n",
        );
        for (name, quality, cost) in spec {
            yaml.push_str(&format!(
                "    - name: {name}\n      provider: mock\n      model: x\n"
            ));
            if let Some(q) = quality {
                yaml.push_str(&format!("      quality: {q}\n"));
            }
            if let Some(c) = cost {
                yaml.push_str(&format!("      cost: {{input: {c}, output: {c}}}\n"));
            }
        }
        let table = detour_api::compile_yaml(&yaml).unwrap().table;
        let http = crate::providers::HttpClient::new(None).unwrap();
        let metrics = crate::metrics::Metrics::new().unwrap();
        let snapshot = crate::state::Registry::default().build(&table, &http, &metrics);
        snapshot.routes["m"].targets.clone()
    }

    fn names(ts: &[Arc<TargetRt>]) -> Vec<&str> {
        ts.iter().map(|t| t.cfg.name.as_str()).collect()
    }

    /// Capability ranks by quality tier, then cost, then route order; simple requests take the
    /// cheapest first, complex and unscored the most capable, medium the least expensive of
    /// the capable half; every target stays in the chain.
    #[test]
    fn order_by_score_per_class() {
        let ts = targets(&[
            ("std", Some("standard"), Some(1.0)),
            ("frontier", Some("frontier"), Some(10.0)),
            ("basic", Some("basic"), Some(0.1)),
            ("adv", Some("advanced"), Some(3.0)),
        ]);
        assert_eq!(
            names(&order_by_score(ts.clone(), Complexity::Complex)),
            ["frontier", "adv", "std", "basic"]
        );
        assert_eq!(
            names(&order_by_score(ts.clone(), Complexity::Unscored)),
            ["frontier", "adv", "std", "basic"]
        );
        assert_eq!(
            names(&order_by_score(ts.clone(), Complexity::Simple)),
            ["basic", "std", "adv", "frontier"]
        );
        assert_eq!(
            names(&order_by_score(ts, Complexity::Medium)),
            ["adv", "frontier", "std", "basic"]
        );
    }

    /// Without declared tiers, cost decides; without cost either, the route's order does
    /// (earlier is taken as more capable).
    #[test]
    fn capability_falls_back_to_cost_then_route_order() {
        let by_cost = targets(&[
            ("a", None, Some(1.0)),
            ("b", None, Some(9.0)),
            ("c", None, Some(0.5)),
        ]);
        assert_eq!(
            names(&order_by_score(by_cost, Complexity::Complex)),
            ["b", "a", "c"]
        );
        let by_order = targets(&[
            ("first", None, None),
            ("second", None, None),
            ("third", None, None),
        ]);
        assert_eq!(
            names(&order_by_score(by_order.clone(), Complexity::Complex)),
            ["first", "second", "third"]
        );
        assert_eq!(
            names(&order_by_score(by_order.clone(), Complexity::Simple)),
            ["third", "second", "first"]
        );
        // Three targets: the capable half is two; medium starts at the less capable of them.
        assert_eq!(
            names(&order_by_score(by_order, Complexity::Medium)),
            ["second", "first", "third"]
        );
    }

    /// The class follows the thresholds of the strategy in force; the policy's own
    /// thresholds replace them; a disabled scorer or a body without a prompt is unscored.
    #[test]
    fn decide_classifies_against_thresholds() {
        let body = |text: &str| serde_json::json!({"messages": [{"role": "user", "content": text}]});
        let scoring = detour_api::table::Scoring {
            simple_below: None,
            complex_above: None,
            disabled: false,
            scorer: detour_api::table::Scorer::V1,
            cheap_share: None,
        };
        let simple = body("hi");
        let hard = body("Analyze, compare and prove the trade-offs step by step; design the algorithm.");
        let d = decide(Strategy::Balanced, &scoring, simple.as_object().unwrap());
        assert_eq!((d.class, d.thresholds), (Complexity::Simple, (0.40, 0.60)));
        assert_eq!(
            decide(Strategy::Balanced, &scoring, hard.as_object().unwrap()).class,
            Complexity::Complex
        );
        let strict = detour_api::table::Scoring {
            simple_below: Some(0.999),
            complex_above: Some(1.0),
            ..scoring.clone()
        };
        assert_eq!(
            decide(Strategy::Balanced, &strict, hard.as_object().unwrap()).class,
            Complexity::Simple
        );
        let off = detour_api::table::Scoring {
            disabled: true,
            ..scoring.clone()
        };
        let d = decide(Strategy::QualityFirst, &off, simple.as_object().unwrap());
        assert_eq!((d.class, d.value), (Complexity::Unscored, None));
        assert_eq!(d.rule(), "scorer disabled: most capable first");
        let embed = serde_json::json!({"input": "x"});
        assert_eq!(
            decide(Strategy::CostOptimized, &scoring, embed.as_object().unwrap()).class,
            Complexity::Unscored
        );
    }
}

#[cfg(test)]
mod did_you_mean {
    use super::*;

    fn known() -> Vec<String> {
        ["fast/cheap", "smart/balanced", "smart/best"]
            .map(String::from)
            .to_vec()
    }

    /// Levenshtein distance on a few known pairs, including the empty string.
    #[test]
    fn edit_distance_counts_edits() {
        let d = edit_distance;
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("abc", ""), 3);
        assert_eq!(d("flaw", "lawn"), 2);
        assert_eq!(d("same", "same"), 0);
        assert_eq!(d("ünï", "uni"), 2);
    }

    /// A typo, a wrong separator or a wrong case suggests the route meant; the nearest of two
    /// close ids wins.
    #[test]
    fn suggests_the_closest_route() {
        let k = known();
        assert_eq!(closest_model("smart-balanced", &k), Some("smart/balanced"));
        assert_eq!(closest_model("Smart/Balanced", &k), Some("smart/balanced"));
        assert_eq!(closest_model("fast/chep", &k), Some("fast/cheap"));
        assert_eq!(closest_model("smart/bets", &k), Some("smart/best"));
        assert_eq!(closest_model("smart/balance", &k), Some("smart/balanced"));
    }

    /// A model that resembles no route (an upstream model name sent by mistake, an empty
    /// string, a huge id) suggests nothing.
    #[test]
    fn suggests_nothing_when_nothing_is_close() {
        let k = known();
        assert_eq!(closest_model("gpt-4o-mini", &k), None);
        assert_eq!(closest_model("", &k), None);
        assert_eq!(closest_model(&"x".repeat(1_000_000), &k), None);
        assert_eq!(closest_model("claude", &[]), None);
    }
}
