//! One ModelRoute → one [`Route`], or the diagnostic that leaves it out.
//!
//! In order: the route's shape, its policy, the policy's rules against the route's targets,
//! then each target (one that cannot be resolved is left out alone, see `targets`). The
//! first step that fails leaves the whole route out, with the diagnostic that says why.

use std::collections::BTreeSet;

use super::Input;
use super::conflicts::Defaults;
use super::diagnostics::{Diagnostic, Diags, ObjectKey, Reason};
use super::fields::Fields;
use super::policies::{Policies, PolicyBase};
use super::{rules, targets};
use crate::crd::{Capability, ModelRoute, Provider};
use crate::table::{ObjectRef, Route};

/// What every route is compiled against.
#[derive(Debug)]
pub(super) struct Context<'a> {
    pub input: &'a Input<'a>,
    pub policies: &'a Policies,
    pub defaults: &'a Defaults<'a>,
}

/// A route that serves.
#[derive(Debug)]
pub(super) struct Served {
    pub route: Route,
    /// `namespace/name` of its policy; `None` for the built-in one.
    pub policy: Option<String>,
}

/// What compiling one route gave.
#[derive(Debug)]
pub(super) struct RouteResult {
    pub key: ObjectKey,
    /// The route, or the diagnostic that leaves it out.
    pub served: Result<Served, Diagnostic>,
    /// Targets left out alone (by name), each with the diagnostic that says why; the route
    /// may serve without them.
    pub targets_left_out: Vec<(String, Diagnostic)>,
}

/// Compiles one route.
pub(super) fn compile(r: &ModelRoute, cx: &Context<'_>, diags: &mut Diags) -> RouteResult {
    let key = ObjectKey::of_route(r);
    let mut targets_left_out = Vec::new();
    let served = compile_route(r, &key, cx, diags, &mut targets_left_out);
    RouteResult {
        key,
        served,
        targets_left_out,
    }
}

fn compile_route(
    r: &ModelRoute,
    key: &ObjectKey,
    cx: &Context<'_>,
    diags: &mut Diags,
    targets_left_out: &mut Vec<(String, Diagnostic)>,
) -> Result<Served, Diagnostic> {
    // What the schema would have rejected (standalone files never met an apiserver).
    let mark = diags.mark();
    check_shape(r, &mut Fields { key, diags });
    diags.first_since(mark)?;

    let (policy_key, base) = cx.policies.for_route(r, key, cx.defaults, diags)?;
    check_policy_rules(r, key, policy_key, base, diags)?;

    let mut targets = Vec::with_capacity(r.spec.targets.len());
    for (i, t) in r.spec.targets.iter().enumerate() {
        match targets::resolve(t, i, key, &base.policy, cx.input, diags) {
            Ok(target) => targets.push(target),
            Err(d) => targets_left_out.push((t.name.clone(), d)),
        }
    }
    if targets.is_empty() {
        return Err(diags.error(
            key,
            "spec.targets",
            Reason::InvalidSpec,
            "no target could be served (see the errors above); the route is left out".to_owned(),
        ));
    }
    // Rules: the route's own first, then the policy's.
    let served: BTreeSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let rules = r
        .spec
        .rules
        .iter()
        .flatten()
        .chain(base.rules.iter())
        .map(|rule| rules::resolve(rule, &served))
        .collect();
    Ok(Served {
        route: Route {
            model: r.spec.model.clone(),
            source: ObjectRef {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            },
            policy: base.policy.clone(),
            targets,
            rules,
        },
        policy: policy_key.map(ObjectKey::to_source),
    })
}

/// A policy rule naming a target the route does not have leaves the route out (see the
/// module docs of `compile`); both the route and the policy are told.
fn check_policy_rules(
    r: &ModelRoute,
    key: &ObjectKey,
    policy_key: Option<&ObjectKey>,
    base: &PolicyBase,
    diags: &mut Diags,
) -> Result<(), Diagnostic> {
    let target_names: BTreeSet<&str> = r.spec.targets.iter().map(|t| t.name.as_str()).collect();
    let mut last = None;
    for (i, rule) in base.rules.iter().enumerate() {
        for (j, name) in rule.then.targets.iter().flatten().enumerate() {
            if target_names.contains(name.as_str()) {
                continue;
            }
            let pkey = policy_key.map(ObjectKey::to_source).unwrap_or_default();
            last = Some(diags.error(
                key,
                "spec.policyRef.name",
                Reason::UnknownTarget,
                format!(
                    "RoutingPolicy {pkey} rule {:?} names target {name:?}, which this route does not have \
                     (targets: {}); add the target or change the rule",
                    rule.name,
                    join_names(&target_names)
                ),
            ));
            if let Some(pk) = policy_key {
                diags.error(
                    pk,
                    format!("spec.rules[{i}].then.targets[{j}]"),
                    Reason::UnknownTarget,
                    format!(
                        "target {name:?} is not a target of ModelRoute {}/{} (targets: {}); \
                         that route is not served until the names agree",
                        key.namespace,
                        key.name,
                        join_names(&target_names)
                    ),
                );
            }
        }
    }
    last.map_or(Ok(()), Err)
}

/// Names as a message lists them: `a, b, c`.
fn join_names(names: &BTreeSet<&str>) -> String {
    names.iter().copied().collect::<Vec<_>>().join(", ")
}

fn valid_cost(v: f64) -> bool {
    v.is_finite() && (0.0..=10_000.0).contains(&v)
}

/// Mirrors the CRD's schema and CEL rules for one route, for inputs that never met an
/// apiserver. Errors here leave the route out.
fn check_shape(r: &ModelRoute, f: &mut Fields<'_>) {
    if r.spec.model.trim().is_empty() {
        f.error(
            "spec.model",
            Reason::InvalidSpec,
            "must not be empty; set the model id clients send, e.g. smart/balanced".to_owned(),
        );
    }
    if r.spec.targets.is_empty() {
        f.error(
            "spec.targets",
            Reason::InvalidSpec,
            "must list at least one target".to_owned(),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, t) in r.spec.targets.iter().enumerate() {
        let at = format!("spec.targets[{i}]");
        if !rules::valid_name(&t.name) {
            f.error(
                format!("{at}.name"),
                Reason::InvalidSpec,
                format!(
                    "{:?} is not a valid name; use lowercase letters, digits and '-', at most 63 characters",
                    t.name
                ),
            );
        }
        if !seen.insert(t.name.as_str()) {
            f.error(
                format!("{at}.name"),
                Reason::InvalidSpec,
                format!(
                    "target name {:?} is used twice; target names must be unique within a route",
                    t.name
                ),
            );
        }
        if t.provider == Provider::Bedrock && t.region.is_none() {
            f.error(
                format!("{at}.region"),
                Reason::InvalidSpec,
                "is required for provider bedrock, e.g. region: us-east-1".to_owned(),
            );
        }
        if t.provider == Provider::Vertex && t.region.is_none() {
            f.error(
                format!("{at}.region"),
                Reason::InvalidSpec,
                "is required for provider vertex: Google's region name, e.g. region: us-central1, europe-west4 or global"
                    .to_owned(),
            );
        }
        if matches!(t.provider, Provider::AzureOpenai | Provider::OpenaiCompatible) && t.endpoint.is_none() {
            f.error(
                format!("{at}.endpoint"),
                Reason::InvalidSpec,
                format!(
                    "is required for provider {}, e.g. endpoint: https://my-resource.openai.azure.com",
                    t.provider
                ),
            );
        }
        if let Some(j) = t
            .capabilities
            .iter()
            .flatten()
            .position(|c| *c == Capability::Responses)
            && !matches!(
                t.provider,
                Provider::Openai | Provider::AzureOpenai | Provider::OpenaiCompatible
            )
        {
            f.error(
                format!("{at}.capabilities[{j}]"),
                Reason::InvalidSpec,
                format!(
                    "responses (the Responses API served natively) is only for providers openai, azure-openai and openai-compatible, not {}; remove it: Responses requests to this target are translated",
                    t.provider
                ),
            );
        }
        if let Some(e) = &t.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            f.error(
                format!("{at}.endpoint"),
                Reason::InvalidSpec,
                format!("{e:?} must start with https:// (or http:// where plain http is allowed)"),
            );
        }
        if let Some(w) = t.weight
            && w > 1000
        {
            f.error(
                format!("{at}.weight"),
                Reason::InvalidSpec,
                format!("{w} is out of range; use 0 to 1000"),
            );
        }
        if let Some(c) = &t.cost
            && !(valid_cost(c.input) && valid_cost(c.output))
        {
            f.error(
                format!("{at}.cost"),
                Reason::InvalidSpec,
                "input and output must be between 0 and 10000 USD per million tokens".to_owned(),
            );
        }
    }
    for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
        rules::check_shape(rule, &format!("spec.rules[{i}]"), f);
        for (j, name) in rule.then.targets.iter().flatten().enumerate() {
            if !seen.contains(name.as_str()) {
                f.error(
                    format!("spec.rules[{i}].then.targets[{j}]"),
                    Reason::UnknownTarget,
                    format!(
                        "{name:?} is not one of spec.targets[].name ({}); fix the name or add the target",
                        join_names(&seen)
                    ),
                );
            }
        }
    }
}
