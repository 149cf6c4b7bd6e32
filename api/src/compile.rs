//! `compile`: ModelRoutes + RoutingPolicies (+ the names of the Secrets that exist) → the route
//! table, and a diagnostic for everything that is wrong, located on the object and field that
//! must change.
//!
//! Pure and deterministic: no I/O, no clock, no randomness; the same input gives the same
//! table and hash. The operator calls it per namespace; the standalone sidecar calls it on a
//! YAML file. What it cannot serve it leaves out *visibly*: the table's `excluded` list and an
//! error diagnostic both say what and why, so nothing disappears silently and nothing stale
//! keeps serving.
//!
//! Policy for partial failures, chosen so that one mistake takes out as little as possible
//! without ever serving something other than what was declared:
//! - a target whose credentials cannot be resolved (missing Secret or key) is left out; the
//!   route keeps serving with its other targets;
//! - a route whose policy is missing or invalid, or whose rules name a target it does not
//!   have, is left out whole: serving it with different failover or routing rules (a region
//!   restriction, say) than declared would be worse than a clear 404;
//! - two routes claiming one model id: the oldest keeps serving, the others are left out, and
//!   all are told;
//! - two default policies in one scope: neither is picked; routes without `policyRef` use the
//!   built-in defaults and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::crd::{
    CredentialsSpec, ModelRoute, ObjectMeta, Provider, ResponseModel, RetryOn, RoutingPolicy,
    RoutingPolicySpec, RuleSpec, Scorer, Strategy, TargetSpec, VertexPublisher,
};
use crate::defaults;
use crate::duration::parse_ms;
use crate::egress::{self, AllowedHosts, TargetDest};
use crate::table::{
    self, AzureWorkloadIdentity, Condition, Cost, CredentialSource, Credentials, Excluded, Health, Match,
    Mock, ObjectRef, Overrides, Policy, Retry, Route, RouteTable, Scoring, Streaming, Target, Timeouts,
    Vertex, WebIdentity,
};

/// Where the compiled table will be served, which decides how credentials resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// By the operator: credentials must be Secrets, mounted under `credentials_root`.
    Cluster,
    /// By `detour-sidecar --routes`: environment variables and files are allowed too.
    Standalone,
}

/// What the operator could learn about a referenced Secret from its metadata alone (never
/// its data, never even its key names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// Labelled [`defaults::CREDENTIALS_LABEL`]`: "true"`: routes may use it.
    OptedIn,
    /// Exists without the opt-in label: no route may use it.
    NotOptedIn,
    /// The operator may not read it (no RoleBinding grants it in that namespace).
    Unreadable,
}

/// The referenced Secrets that exist, by namespace and name, with their [`SecretState`].
/// A Secret not in the index does not exist.
#[derive(Clone, Debug, Default)]
pub struct SecretIndex {
    secrets: BTreeMap<(String, String), SecretState>,
}

impl SecretIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what is known of Secret `namespace/name`.
    pub fn insert(&mut self, namespace: &str, name: &str, state: SecretState) {
        self.secrets
            .insert((namespace.to_owned(), name.to_owned()), state);
    }

    /// Records an opted-in Secret.
    pub fn opted_in(&mut self, namespace: &str, name: &str) {
        self.insert(namespace, name, SecretState::OptedIn);
    }

    fn state(&self, namespace: &str, name: &str) -> Option<SecretState> {
        self.secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }
}

/// Everything `compile` reads.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub routes: &'a [ModelRoute],
    pub policies: &'a [RoutingPolicy],
    /// `None`: do not check that Secrets exist (standalone, or the operator before its cache
    /// synced is *not* a reason: it must pass an index).
    pub secrets: Option<&'a SecretIndex>,
    /// The operator's namespace: a default policy there applies cluster-wide.
    pub cluster_namespace: Option<&'a str>,
    pub mode: Mode,
    /// Where Secrets are mounted; [`defaults::CREDENTIALS_ROOT`] in a cluster. Standalone,
    /// the sidecar's `--credentials-dir`: every credential file must be inside it.
    pub credentials_root: &'a str,
    /// The platform's allowlist of endpoint hosts; `None`: [`AllowedHosts::providers`] in a
    /// cluster, [`AllowedHosts::standalone`] standalone.
    pub allowed_hosts: Option<&'a AllowedHosts>,
}

impl<'a> Input<'a> {
    /// Input for the operator, with the defaults of a cluster.
    pub fn cluster(
        routes: &'a [ModelRoute],
        policies: &'a [RoutingPolicy],
        secrets: &'a SecretIndex,
        cluster_namespace: &'a str,
    ) -> Self {
        Self {
            routes,
            policies,
            secrets: Some(secrets),
            cluster_namespace: Some(cluster_namespace),
            mode: Mode::Cluster,
            credentials_root: defaults::CREDENTIALS_ROOT,
            allowed_hosts: None,
        }
    }

    /// Input for the standalone sidecar.
    pub fn standalone(routes: &'a [ModelRoute], policies: &'a [RoutingPolicy]) -> Self {
        Self {
            routes,
            policies,
            secrets: None,
            cluster_namespace: None,
            mode: Mode::Standalone,
            credentials_root: defaults::CREDENTIALS_ROOT,
            allowed_hosts: None,
        }
    }

    /// The platform's allowlist of endpoint hosts instead of the mode's default.
    pub fn with_allowed_hosts(self, allowed_hosts: &'a AllowedHosts) -> Self {
        Self {
            allowed_hosts: Some(allowed_hosts),
            ..self
        }
    }

    /// Another credentials root (the standalone sidecar's `--credentials-dir`).
    pub fn with_credentials_root(self, credentials_root: &'a str) -> Self {
        Self {
            credentials_root,
            ..self
        }
    }
}

/// Which kind of object a diagnostic is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ModelRoute,
    RoutingPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ModelRoute => "ModelRoute",
            Self::RoutingPolicy => "RoutingPolicy",
        })
    }
}

/// An object a diagnostic is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Whether the object still serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something declared is not being served.
    Error,
    /// Served, but not as the user may think.
    Warning,
}

/// Machine-readable reason, used as the condition's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidSpec,
    InvalidDuration,
    PolicyNotFound,
    PolicyInvalid,
    SecretNotFound,
    SecretNotOptedIn,
    SecretNotReadable,
    CredentialPathRefused,
    DestinationRefused,
    StandaloneOnly,
    UnknownTarget,
    DuplicateModel,
    DefaultConflict,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::InvalidDuration => "InvalidDuration",
            Self::PolicyNotFound => "PolicyNotFound",
            Self::PolicyInvalid => "PolicyInvalid",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretNotOptedIn => "SecretNotOptedIn",
            Self::SecretNotReadable => "SecretNotReadable",
            Self::CredentialPathRefused => "CredentialPathRefused",
            Self::DestinationRefused => "DestinationRefused",
            Self::StandaloneOnly => "StandaloneOnly",
            Self::UnknownTarget => "UnknownTarget",
            Self::DuplicateModel => "DuplicateModel",
            Self::DefaultConflict => "DefaultConflict",
        }
    }

    /// Conflicts get a `Conflict` condition besides `Ready`.
    pub const fn is_conflict(self) -> bool {
        matches!(self, Self::DuplicateModel | Self::DefaultConflict)
    }
}

/// One finding, located on an object and a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub object: ObjectKey,
    /// Path from the object's root, e.g. `spec.targets[1].credentials.secretName`.
    pub field: String,
    pub severity: Severity,
    pub reason: Reason,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What happened to one ModelRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteOutcome {
    pub object: ObjectKey,
    /// Served at all.
    pub served: bool,
    /// `namespace/name` or `builtin`; `None` when no policy could be resolved.
    pub policy: Option<String>,
    /// Targets served.
    pub target_count: u32,
}

/// What happened to one RoutingPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub object: ObjectKey,
    pub valid: bool,
    /// Served routes that use it.
    pub route_count: u32,
}

/// The result of `compile`.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub table: RouteTable,
    pub diagnostics: Vec<Diagnostic>,
    pub routes: Vec<RouteOutcome>,
    pub policies: Vec<PolicyOutcome>,
}

/// A `Ready` verdict for one object: what the operator writes into `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
    pub message: String,
    /// `Some((reason, message))` when the object is part of a conflict.
    pub conflict: Option<(String, String)>,
}

impl Compiled {
    /// The diagnostics about one object, errors first.
    pub fn diagnostics_for(&self, object: &ObjectKey) -> impl Iterator<Item = &Diagnostic> + '_ {
        let object = object.clone();
        self.diagnostics.iter().filter(move |d| d.object == object)
    }

    /// The `Ready` (and `Conflict`) verdict for an object, from its diagnostics.
    pub fn readiness(&self, object: &ObjectKey) -> Readiness {
        let diags: Vec<&Diagnostic> = self.diagnostics_for(object).collect();
        let conflict = diags
            .iter()
            .find(|d| d.reason.is_conflict())
            .map(|d| (d.reason.as_str().to_owned(), d.to_string()));
        let served = match object.kind {
            Kind::ModelRoute => self.routes.iter().any(|r| &r.object == object && r.served),
            Kind::RoutingPolicy => self.policies.iter().any(|p| &p.object == object && p.valid),
        };
        let errors: Vec<&&Diagnostic> = diags.iter().filter(|d| d.severity == Severity::Error).collect();
        match errors.first() {
            None => {
                let message = match object.kind {
                    Kind::ModelRoute => match self.routes.iter().find(|r| &r.object == object) {
                        Some(r) => format!(
                            "serving {} target(s) with policy {}",
                            r.target_count,
                            r.policy.as_deref().unwrap_or("builtin")
                        ),
                        None => "compiled".to_owned(),
                    },
                    Kind::RoutingPolicy => match self.policies.iter().find(|p| &p.object == object) {
                        Some(p) => format!("used by {} route(s)", p.route_count),
                        None => "valid".to_owned(),
                    },
                };
                let warnings: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                let message = if warnings.is_empty() {
                    message
                } else {
                    format!("{message}; {}", warnings.join("; "))
                };
                Readiness {
                    ready: true,
                    reason: "Compiled".to_owned(),
                    message,
                    conflict,
                }
            }
            Some(first) => {
                let message = errors
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                // A route that still serves some targets is degraded, not down: say which.
                let reason = if served && object.kind == Kind::ModelRoute {
                    format!("Degraded{}", first.reason.as_str())
                } else {
                    first.reason.as_str().to_owned()
                };
                Readiness {
                    ready: false,
                    reason,
                    message,
                    conflict,
                }
            }
        }
    }
}

fn key_of_route(r: &ModelRoute) -> ObjectKey {
    ObjectKey {
        kind: Kind::ModelRoute,
        namespace: namespace_of(r),
        name: r.object_name(),
    }
}

fn key_of_policy(p: &RoutingPolicy) -> ObjectKey {
    ObjectKey {
        kind: Kind::RoutingPolicy,
        namespace: namespace_of(p),
        name: p.object_name(),
    }
}

fn namespace_of<K: ObjectMeta>(o: &K) -> String {
    o.object_namespace()
        .unwrap_or_else(|| defaults::NAMESPACE.to_owned())
}

struct Diags(Vec<Diagnostic>);

impl Diags {
    fn push(
        &mut self,
        object: &ObjectKey,
        field: impl Into<String>,
        severity: Severity,
        reason: Reason,
        message: String,
    ) {
        self.0.push(Diagnostic {
            object: object.clone(),
            field: field.into(),
            severity,
            reason,
            message,
        });
    }
    fn error(&mut self, object: &ObjectKey, field: impl Into<String>, reason: Reason, message: String) {
        self.push(object, field, Severity::Error, reason, message);
    }
    fn warning(&mut self, object: &ObjectKey, field: impl Into<String>, reason: Reason, message: String) {
        self.push(object, field, Severity::Warning, reason, message);
    }
}

/// A policy whose own fields are valid; rules still need checking against each route.
struct PolicyBase {
    policy: Policy,
    rules: Vec<RuleSpec>,
}

/// Compiles routes and policies into a route table with diagnostics.
pub fn compile(input: &Input<'_>) -> Compiled {
    let mut diags = Diags(Vec::new());

    // Objects in a fixed order, so the input's order never shows in the output. Names are
    // unique in a namespace (the apiserver and the loader guarantee it); should a caller pass
    // two versions of one object anyway, the order still decides nothing, their content does.
    let by_identity = |ns: String, name: String, spec: String| (ns, name, spec);
    let mut route_order: Vec<&ModelRoute> = input.routes.iter().collect();
    route_order.sort_by_cached_key(|r| {
        by_identity(
            namespace_of(*r),
            r.object_name(),
            serde_json::to_string(&r.spec).unwrap_or_default(),
        )
    });
    let mut policy_order: Vec<&RoutingPolicy> = input.policies.iter().collect();
    policy_order.sort_by_cached_key(|p| {
        by_identity(
            namespace_of(*p),
            p.object_name(),
            serde_json::to_string(&p.spec).unwrap_or_default(),
        )
    });

    // 1. Every policy on its own.
    let mut policies: BTreeMap<(String, String), (ObjectKey, Option<PolicyBase>)> = BTreeMap::new();
    for p in policy_order.iter().copied() {
        let key = key_of_policy(p);
        let base = resolve_policy(&p.spec, &key.to_source(), &key, &mut diags);
        policies.insert((key.namespace.clone(), key.name.clone()), (key, base));
    }

    // 2. Default policies per scope (namespace); more than one in a scope is a conflict.
    let mut defaults_by_ns: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
    for p in policy_order.iter().copied() {
        if p.spec.default == Some(true)
            && let Some((key, _)) = policies.get(&(namespace_of(p), p.object_name()))
        {
            defaults_by_ns
                .entry(key.namespace.as_str())
                .or_default()
                .push(key);
        }
    }
    for (ns, keys) in &defaults_by_ns {
        if keys.len() > 1 {
            let mut names: Vec<String> = keys.iter().map(|k| format!("{:?}", k.name)).collect();
            names.sort();
            let scope = scope_name(ns, input.cluster_namespace);
            for key in keys {
                diags.error(
                    key,
                    "spec.default",
                    Reason::DefaultConflict,
                    format!(
                        "RoutingPolicies {} are all default for {scope}; set default: false on all but one \
                         (until then routes without policyRef use the built-in defaults)",
                        names.join(", ")
                    ),
                );
            }
        }
    }

    // 3. Every route.
    let mut compiled: Vec<(ObjectKey, Route, Option<String>)> = Vec::new();
    let mut excluded: Vec<Excluded> = Vec::new();
    let mut outcomes: BTreeMap<ObjectKey, RouteOutcome> = BTreeMap::new();
    for r in route_order.iter().copied() {
        let key = key_of_route(r);
        let source = ObjectRef {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        let outcome = RouteOutcome {
            object: key.clone(),
            served: false,
            policy: None,
            target_count: 0,
        };
        outcomes.insert(key.clone(), outcome);
        let exclude = |excluded: &mut Vec<Excluded>, target: Option<&str>, d: &Diagnostic| {
            excluded.push(Excluded {
                model: r.spec.model.clone(),
                source: source.clone(),
                target: target.map(str::to_owned),
                reason: d.to_string(),
            });
        };
        let before = diags.0.len();

        // 3a. What the schema would have rejected (standalone files never met an apiserver).
        check_route_shape(r, &key, &mut diags);
        if diags.0.len() > before {
            if let Some(d) = diags.0.get(before).cloned() {
                exclude(&mut excluded, None, &d);
            }
            continue;
        }

        // 3b. The policy.
        let (policy_source, policy_ref): (Option<&ObjectKey>, Option<&PolicyBase>) = match &r.spec.policy_ref
        {
            Some(pr) => match policies.get(&(key.namespace.clone(), pr.name.clone())) {
                None => {
                    diags.error(
                        &key,
                        "spec.policyRef.name",
                        Reason::PolicyNotFound,
                        format!(
                            "RoutingPolicy {:?} not found in namespace {:?}; create it or remove policyRef to use the default",
                            pr.name, key.namespace
                        ),
                    );
                    if let Some(d) = diags.0.last().cloned() {
                        exclude(&mut excluded, None, &d);
                    }
                    continue;
                }
                Some((pkey, None)) => {
                    diags.error(
                        &key,
                        "spec.policyRef.name",
                        Reason::PolicyInvalid,
                        format!(
                            "RoutingPolicy {:?} is invalid (see its status); fix it or point policyRef at another policy",
                            pkey.name
                        ),
                    );
                    if let Some(d) = diags.0.last().cloned() {
                        exclude(&mut excluded, None, &d);
                    }
                    continue;
                }
                Some((pkey, Some(base))) => (Some(pkey), Some(base)),
            },
            None => match default_policy(&key.namespace, input.cluster_namespace, &defaults_by_ns) {
                DefaultPick::One(pkey) => match policies.get(&(pkey.namespace.clone(), pkey.name.clone())) {
                    Some((pkey, Some(base))) => (Some(pkey), Some(base)),
                    Some((pkey, None)) => {
                        diags.error(
                            &key,
                            "spec.policyRef",
                            Reason::PolicyInvalid,
                            format!(
                                "the default RoutingPolicy {} is invalid (see its status); fix it or set policyRef",
                                pkey.to_source()
                            ),
                        );
                        if let Some(d) = diags.0.last().cloned() {
                            exclude(&mut excluded, None, &d);
                        }
                        continue;
                    }
                    None => (None, None),
                },
                DefaultPick::Conflict(ns) => {
                    diags.warning(
                        &key,
                        "spec.policyRef",
                        Reason::DefaultConflict,
                        format!(
                            "{} has more than one default RoutingPolicy; using the built-in defaults until only one is left, or set policyRef",
                            scope_name(ns, input.cluster_namespace)
                        ),
                    );
                    (None, None)
                }
                DefaultPick::None => (None, None),
            },
        };
        let builtin;
        let base = match policy_ref {
            Some(b) => b,
            None => {
                builtin = builtin_policy();
                &builtin
            }
        };

        // 3c. Rules: the route's own first, then the policy's. A rule naming a target the
        // route does not have leaves the route out: see the module docs.
        let target_names: BTreeSet<&str> = r.spec.targets.iter().map(|t| t.name.as_str()).collect();
        let mut unknown = false;
        for (i, rule) in base.rules.iter().enumerate() {
            for (j, name) in rule.then.targets.iter().flatten().enumerate() {
                if !target_names.contains(name.as_str()) {
                    unknown = true;
                    let pkey = policy_source.map(ObjectKey::to_source).unwrap_or_default();
                    diags.error(
                        &key,
                        "spec.policyRef.name",
                        Reason::UnknownTarget,
                        format!(
                            "RoutingPolicy {pkey} rule {:?} names target {name:?}, which this route does not have \
                             (targets: {}); add the target or change the rule",
                            rule.name,
                            join_names(&target_names)
                        ),
                    );
                    if let Some(pk) = policy_source {
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
        }
        if unknown {
            if let Some(d) = diags.0.iter().rev().find(|d| d.object == key).cloned() {
                exclude(&mut excluded, None, &d);
            }
            continue;
        }

        // 3d. Targets; one whose credentials cannot be resolved is left out alone.
        let mut targets = Vec::with_capacity(r.spec.targets.len());
        for (i, t) in r.spec.targets.iter().enumerate() {
            let before = diags.0.len();
            match resolve_target(t, i, &key, &base.policy, input, &mut diags) {
                Some(target) => targets.push(target),
                None => {
                    if let Some(d) = diags.0.get(before).cloned() {
                        exclude(&mut excluded, Some(&t.name), &d);
                    }
                }
            }
        }
        if targets.is_empty() {
            let message =
                "no target could be served (see the errors above); the route is left out".to_owned();
            diags.error(&key, "spec.targets", Reason::InvalidSpec, message);
            if let Some(d) = diags.0.last().cloned() {
                exclude(&mut excluded, None, &d);
            }
            continue;
        }
        let served: BTreeSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let rules = r
            .spec
            .rules
            .iter()
            .flatten()
            .chain(base.rules.iter())
            .map(|rule| resolve_rule(rule, &served))
            .collect();
        let route = Route {
            model: r.spec.model.clone(),
            source,
            policy: base.policy.clone(),
            targets,
            rules,
        };
        compiled.push((key, route, policy_source.map(ObjectKey::to_source)));
    }

    // 4. One model id, one route: the oldest wins and every party is told.
    let mut by_model: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, route, _)) in compiled.iter().enumerate() {
        by_model.entry(route.model.clone()).or_default().push(i);
    }
    let created: BTreeMap<ObjectKey, Option<String>> = input
        .routes
        .iter()
        .map(|r| (key_of_route(r), r.created_at()))
        .collect();
    let mut losers: BTreeSet<usize> = BTreeSet::new();
    for (model, mut idx) in by_model {
        if idx.len() < 2 {
            continue;
        }
        idx.sort_by(|&a, &b| {
            let ka = compiled.get(a).map(|c| &c.0);
            let kb = compiled.get(b).map(|c| &c.0);
            let ta = ka.and_then(|k| created.get(k).cloned().flatten());
            let tb = kb.and_then(|k| created.get(k).cloned().flatten());
            // Objects without a timestamp (standalone files) sort after those with one.
            (ta.is_none(), ta, ka).cmp(&(tb.is_none(), tb, kb))
        });
        let all: Vec<String> = idx
            .iter()
            .filter_map(|&i| compiled.get(i))
            .map(|c| format!("{}/{}", c.0.namespace, c.0.name))
            .collect();
        let Some((&winner, rest)) = idx.split_first() else {
            continue;
        };
        let winner_name = compiled
            .get(winner)
            .map(|c| format!("{}/{}", c.0.namespace, c.0.name))
            .unwrap_or_default();
        if let Some((wkey, _, _)) = compiled.get(winner) {
            diags.warning(
                wkey,
                "spec.model",
                Reason::DuplicateModel,
                format!(
                    "model {model:?} is also claimed by {}; this route (the oldest) serves it",
                    all.iter()
                        .filter(|n| **n != winner_name)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        for &i in rest {
            if let Some((lkey, route, _)) = compiled.get(i) {
                diags.error(
                    lkey,
                    "spec.model",
                    Reason::DuplicateModel,
                    format!(
                        "model {model:?} is already served by ModelRoute {winner_name}; change spec.model or delete one of them"
                    ),
                );
                if let Some(d) = diags.0.last() {
                    excluded.push(Excluded {
                        model: model.clone(),
                        source: route.source.clone(),
                        target: None,
                        reason: d.to_string(),
                    });
                }
                losers.insert(i);
            }
        }
    }

    let mut routes = Vec::with_capacity(compiled.len());
    let mut route_count: BTreeMap<String, u32> = BTreeMap::new();
    for (i, (key, route, policy)) in compiled.into_iter().enumerate() {
        if losers.contains(&i) {
            if let Some(o) = outcomes.get_mut(&key) {
                o.policy = Some(route.policy.source.clone());
            }
            continue;
        }
        if let Some(p) = &policy {
            *route_count.entry(p.clone()).or_default() += 1;
        }
        if let Some(o) = outcomes.get_mut(&key) {
            o.served = true;
            o.policy = Some(route.policy.source.clone());
            o.target_count = u32::try_from(route.targets.len()).unwrap_or(u32::MAX);
        }
        routes.push(route);
    }

    let policy_outcomes = policies
        .values()
        .map(|(key, base)| PolicyOutcome {
            object: key.clone(),
            valid: base.is_some()
                && !diags
                    .0
                    .iter()
                    .any(|d| &d.object == key && d.severity == Severity::Error),
            route_count: route_count.get(&key.to_source()).copied().unwrap_or(0),
        })
        .collect();

    let mut diagnostics = diags.0;
    diagnostics.sort_by(|a, b| (&a.object, a.severity).cmp(&(&b.object, b.severity)));
    Compiled {
        table: RouteTable::new(routes, excluded),
        diagnostics,
        routes: outcomes.into_values().collect(),
        policies: policy_outcomes,
    }
}

impl ObjectKey {
    fn to_source(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn join_names(names: &BTreeSet<&str>) -> String {
    names.iter().copied().collect::<Vec<_>>().join(", ")
}

fn scope_name(ns: &str, cluster_namespace: Option<&str>) -> String {
    if Some(ns) == cluster_namespace {
        format!("the cluster (namespace {ns:?} is the operator's)")
    } else {
        format!("namespace {ns:?}")
    }
}

enum DefaultPick<'a> {
    None,
    One(&'a ObjectKey),
    Conflict(&'a str),
}

fn default_policy<'a>(
    ns: &str,
    cluster_namespace: Option<&str>,
    defaults_by_ns: &BTreeMap<&'a str, Vec<&'a ObjectKey>>,
) -> DefaultPick<'a> {
    let pick = |scope: &str| match defaults_by_ns.get_key_value(scope) {
        Some((scope, keys)) if keys.len() > 1 => Some(DefaultPick::Conflict(scope)),
        Some((_, keys)) => keys.first().map(|k| DefaultPick::One(k)),
        None => None,
    };
    pick(ns)
        .or_else(|| cluster_namespace.and_then(pick))
        .unwrap_or(DefaultPick::None)
}

fn builtin_policy() -> PolicyBase {
    PolicyBase {
        policy: defaults::policy(),
        rules: Vec::new(),
    }
}

/// Mirrors the CRD's schema and CEL rules for one route, for inputs that never met an
/// apiserver. Errors here leave the route out.
fn check_route_shape(r: &ModelRoute, key: &ObjectKey, diags: &mut Diags) {
    if r.spec.model.trim().is_empty() {
        diags.error(
            key,
            "spec.model",
            Reason::InvalidSpec,
            "must not be empty; set the model id clients send, e.g. smart/balanced".to_owned(),
        );
    }
    if r.spec.targets.is_empty() {
        diags.error(
            key,
            "spec.targets",
            Reason::InvalidSpec,
            "must list at least one target".to_owned(),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, t) in r.spec.targets.iter().enumerate() {
        if !valid_name(&t.name) {
            diags.error(
                key,
                format!("spec.targets[{i}].name"),
                Reason::InvalidSpec,
                format!(
                    "{:?} is not a valid name; use lowercase letters, digits and '-', at most 63 characters",
                    t.name
                ),
            );
        }
        if !seen.insert(t.name.as_str()) {
            diags.error(
                key,
                format!("spec.targets[{i}].name"),
                Reason::InvalidSpec,
                format!(
                    "target name {:?} is used twice; target names must be unique within a route",
                    t.name
                ),
            );
        }
        if t.provider == Provider::Bedrock && t.region.is_none() {
            diags.error(
                key,
                format!("spec.targets[{i}].region"),
                Reason::InvalidSpec,
                "is required for provider bedrock, e.g. region: us-east-1".to_owned(),
            );
        }
        if t.provider == Provider::Vertex && t.region.is_none() {
            diags.error(
                key,
                format!("spec.targets[{i}].region"),
                Reason::InvalidSpec,
                "is required for provider vertex: Google's region name, e.g. region: us-central1, europe-west4 or global"
                    .to_owned(),
            );
        }
        if matches!(t.provider, Provider::AzureOpenai | Provider::OpenaiCompatible) && t.endpoint.is_none() {
            diags.error(
                key,
                format!("spec.targets[{i}].endpoint"),
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
            .position(|c| *c == crate::crd::Capability::Responses)
            && !matches!(
                t.provider,
                Provider::Openai | Provider::AzureOpenai | Provider::OpenaiCompatible
            )
        {
            diags.error(
                key,
                format!("spec.targets[{i}].capabilities[{j}]"),
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
            diags.error(
                key,
                format!("spec.targets[{i}].endpoint"),
                Reason::InvalidSpec,
                format!("{e:?} must start with https:// (or http:// where plain http is allowed)"),
            );
        }
        if let Some(w) = t.weight
            && w > 1000
        {
            diags.error(
                key,
                format!("spec.targets[{i}].weight"),
                Reason::InvalidSpec,
                format!("{w} is out of range; use 0 to 1000"),
            );
        }
        if let Some(c) = &t.cost
            && !(valid_cost(c.input) && valid_cost(c.output))
        {
            diags.error(
                key,
                format!("spec.targets[{i}].cost"),
                Reason::InvalidSpec,
                "input and output must be between 0 and 10000 USD per million tokens".to_owned(),
            );
        }
    }
    for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
        check_rule_shape(rule, &format!("spec.rules[{i}]"), key, diags);
        for (j, name) in rule.then.targets.iter().flatten().enumerate() {
            if !seen.contains(name.as_str()) {
                diags.error(
                    key,
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

fn valid_cost(v: f64) -> bool {
    v.is_finite() && (0.0..=10_000.0).contains(&v)
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn check_rule_shape(rule: &RuleSpec, at: &str, key: &ObjectKey, diags: &mut Diags) {
    if !valid_name(&rule.name) {
        diags.error(
            key,
            format!("{at}.name"),
            Reason::InvalidSpec,
            format!(
                "{:?} is not a valid rule name; use lowercase letters, digits and '-'",
                rule.name
            ),
        );
    }
    match (&rule.when.all, &rule.when.any) {
        (Some(_), Some(_)) | (None, None) => {
            diags.error(
                key,
                format!("{at}.when"),
                Reason::InvalidSpec,
                "set exactly one of all or any".to_owned(),
            );
        }
        _ => {}
    }
    if rule.then.targets.is_none() && rule.then.strategy.is_none() && rule.then.continue_on_failure.is_none()
    {
        diags.error(
            key,
            format!("{at}.then"),
            Reason::InvalidSpec,
            "set targets, strategy, continueOnFailure, or more than one".to_owned(),
        );
    }
    let (list, name) = match (&rule.when.all, &rule.when.any) {
        (Some(all), _) => (all, "all"),
        (None, Some(any)) => (any, "any"),
        (None, None) => return,
    };
    for (k, c) in list.iter().enumerate() {
        let field = format!("{at}.when.{name}[{k}]");
        use crate::crd::Op;
        match c.op {
            Op::Exists => {}
            Op::In => {
                if c.values.as_ref().is_none_or(Vec::is_empty) {
                    diags.error(
                        key,
                        format!("{field}.values"),
                        Reason::InvalidSpec,
                        "is required for op in".to_owned(),
                    );
                }
            }
            Op::Gt | Op::Lt => match &c.value {
                Some(v) if v.parse::<f64>().is_ok_and(f64::is_finite) => {}
                Some(v) => diags.error(
                    key,
                    format!("{field}.value"),
                    Reason::InvalidSpec,
                    format!("{v:?} must be a number for op {:?}", c.op),
                ),
                None => diags.error(
                    key,
                    format!("{field}.value"),
                    Reason::InvalidSpec,
                    "is required for this op".to_owned(),
                ),
            },
            _ => {
                if c.value.is_none() {
                    diags.error(
                        key,
                        format!("{field}.value"),
                        Reason::InvalidSpec,
                        "is required for this op".to_owned(),
                    );
                }
            }
        }
    }
}

fn duration(
    value: Option<&str>,
    default: u64,
    field: &str,
    key: &ObjectKey,
    diags: &mut Diags,
) -> Option<u64> {
    match value {
        None => Some(default),
        Some(v) => match parse_ms(v) {
            Ok(ms) => Some(ms),
            Err(e) => {
                diags.error(key, field, Reason::InvalidDuration, e.to_string());
                None
            }
        },
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

fn ratio(value: Option<f64>, default: f64, field: &str, key: &ObjectKey, diags: &mut Diags) -> f64 {
    match value {
        None => default,
        Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => v,
        Some(v) => {
            diags.error(
                key,
                field,
                Reason::InvalidSpec,
                format!("{v} is out of range; use a number from 0 to 1"),
            );
            default
        }
    }
}

fn count(
    value: Option<u32>,
    default: u32,
    min: u32,
    max: u32,
    field: &str,
    key: &ObjectKey,
    diags: &mut Diags,
) -> u32 {
    match value {
        None => default,
        Some(v) if (min..=max).contains(&v) => v,
        Some(v) => {
            diags.error(
                key,
                field,
                Reason::InvalidSpec,
                format!("{v} is out of range; use {min} to {max}"),
            );
            default
        }
    }
}

/// Resolves a policy's own fields against the built-in defaults. `None` when invalid (the
/// diagnostics say why).
fn resolve_policy(
    spec: &RoutingPolicySpec,
    source: &str,
    key: &ObjectKey,
    diags: &mut Diags,
) -> Option<PolicyBase> {
    let before = diags.0.len();
    let d = defaults::policy();
    let retry = spec.retry.clone().unwrap_or_default();
    let backoff = retry.backoff.clone().unwrap_or_default();
    let budget = retry.budget.clone().unwrap_or_default();
    let timeouts = spec.timeouts.clone().unwrap_or_default();
    let health = spec.health.clone().unwrap_or_default();
    let error_rate = health.error_rate.clone().unwrap_or_default();
    let overrides = spec.overrides.clone().unwrap_or_default();
    let scoring = spec.scoring.clone().unwrap_or_default();

    let on = match &retry.on {
        None => d.retry.on.clone(),
        Some(list) => {
            let set: BTreeSet<RetryOn> = list.iter().copied().collect();
            if set.len() != list.len() {
                diags.error(
                    key,
                    "spec.retry.on",
                    Reason::InvalidSpec,
                    "lists a trigger twice; list each at most once".to_owned(),
                );
            }
            set.into_iter().collect()
        }
    };
    let base = duration(
        backoff.base.as_deref(),
        d.retry.backoff_base_ms,
        "spec.retry.backoff.base",
        key,
        diags,
    );
    let max = duration(
        backoff.max.as_deref(),
        d.retry.backoff_max_ms,
        "spec.retry.backoff.max",
        key,
        diags,
    );
    if let (Some(b), Some(m)) = (base, max)
        && b > m
    {
        diags.error(
            key,
            "spec.retry.backoff.base",
            Reason::InvalidSpec,
            format!("{b}ms exceeds backoff.max ({m}ms); lower base or raise max"),
        );
    }
    let per_attempt = duration(
        timeouts.per_attempt.as_deref(),
        d.timeouts.per_attempt_ms,
        "spec.timeouts.perAttempt",
        key,
        diags,
    );
    let first_byte = duration(
        timeouts.first_byte.as_deref(),
        d.timeouts.first_byte_ms,
        "spec.timeouts.firstByte",
        key,
        diags,
    );
    let total = duration(
        timeouts.total.as_deref(),
        d.timeouts.total_ms,
        "spec.timeouts.total",
        key,
        diags,
    );
    let stream_idle = duration(
        timeouts.stream_idle.as_deref(),
        d.timeouts.stream_idle_ms,
        "spec.timeouts.streamIdle",
        key,
        diags,
    );
    let max_wait = duration(
        retry.rate_limit.as_ref().and_then(|r| r.max_wait.as_deref()),
        d.retry.rate_limit_max_wait_ms,
        "spec.retry.rateLimit.maxWait",
        key,
        diags,
    );
    let same_target = match &retry.same_target {
        None => d.retry.same_target.clone(),
        Some(list) => {
            let set: BTreeSet<RetryOn> = list.iter().copied().collect();
            if set.len() != list.len() {
                diags.error(
                    key,
                    "spec.retry.sameTarget",
                    Reason::InvalidSpec,
                    "lists a class twice; list each at most once".to_owned(),
                );
            }
            for class in &set {
                if !matches!(
                    class,
                    RetryOn::ServerError | RetryOn::ConnectError | RetryOn::Timeout
                ) {
                    diags.error(
                        key,
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
    };
    if let (Some(pa), Some(t)) = (per_attempt, total)
        && pa > t
    {
        diags.error(
            key,
            "spec.timeouts.perAttempt",
            Reason::InvalidSpec,
            format!("{pa}ms exceeds timeouts.total ({t}ms); an attempt cannot outlast the request"),
        );
    }
    let first_byte = match (first_byte, per_attempt) {
        (Some(fb), Some(pa)) if fb > pa => {
            if timeouts.first_byte.is_some() {
                diags.error(
                    key,
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
    for (field, v) in [
        ("spec.timeouts.perAttempt", per_attempt),
        ("spec.timeouts.total", total),
        ("spec.timeouts.streamIdle", stream_idle),
    ] {
        if v == Some(0) {
            diags.error(
                key,
                field,
                Reason::InvalidSpec,
                "must be greater than 0".to_owned(),
            );
        }
    }
    let cooldown = duration(
        health.cooldown.as_deref(),
        d.health.cooldown_ms,
        "spec.health.cooldown",
        key,
        diags,
    );
    // Unset, it is the cooldown: growth on failed probes is opt-in.
    let max_cooldown = duration(
        health.max_cooldown.as_deref(),
        cooldown.unwrap_or(d.health.cooldown_ms),
        "spec.health.maxCooldown",
        key,
        diags,
    );
    let probe_first_byte = duration(
        health.probe_first_byte.as_deref(),
        d.health.probe_first_byte_ms,
        "spec.health.probeFirstByte",
        key,
        diags,
    );
    if probe_first_byte == Some(0) {
        diags.error(
            key,
            "spec.health.probeFirstByte",
            Reason::InvalidSpec,
            "must be greater than 0".to_owned(),
        );
    }
    let max_cooldown = match (cooldown, max_cooldown) {
        (Some(c), Some(m)) if c > m => {
            if health.max_cooldown.is_some() {
                diags.error(
                    key,
                    "spec.health.cooldown",
                    Reason::InvalidSpec,
                    format!("{c}ms exceeds health.maxCooldown ({m}ms)"),
                );
            }
            Some(c)
        }
        (_, m) => m,
    };
    let window = duration(
        error_rate.window.as_deref(),
        d.health.error_rate_window_ms,
        "spec.health.errorRate.window",
        key,
        diags,
    );
    let latency = match health.latency_threshold.as_deref() {
        None => Some(None),
        Some(v) => duration(Some(v), 0, "spec.health.latencyThreshold", key, diags).map(Some),
    };
    // Unset thresholds stay unset: each cost/quality strategy has its own defaults, and a tag
    // rule may switch strategy per request (see `table::Scoring`).
    let simple_below = scoring
        .simple_below
        .map(|v| ratio(Some(v), 0.0, "spec.scoring.simpleBelow", key, diags));
    let complex_above = scoring
        .complex_above
        .map(|v| ratio(Some(v), 0.0, "spec.scoring.complexAbove", key, diags));
    let cheap_share = scoring
        .cheap_share
        .map(|v| ratio(Some(v), 0.5, "spec.scoring.cheapShare", key, diags));
    if cheap_share.is_some() && (simple_below.is_some() || complex_above.is_some()) {
        diags.error(
            key,
            "spec.scoring.cheapShare",
            Reason::InvalidSpec,
            "cheapShare replaces simpleBelow and complexAbove: set the share or the thresholds".to_owned(),
        );
    }
    if let (Some(lo), Some(hi)) = (simple_below, complex_above)
        && lo > hi
    {
        diags.error(
            key,
            "spec.scoring.simpleBelow",
            Reason::InvalidSpec,
            format!("{lo} exceeds scoring.complexAbove ({hi})"),
        );
    }
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        check_rule_shape(rule, &format!("spec.rules[{i}]"), key, diags);
    }
    let policy = Policy {
        source: source.to_owned(),
        strategy: spec.strategy.unwrap_or(Strategy::Priority),
        retry: Retry {
            attempts: count(
                retry.attempts,
                d.retry.attempts,
                1,
                10,
                "spec.retry.attempts",
                key,
                diags,
            ),
            backoff_base_ms: base.unwrap_or_default(),
            backoff_max_ms: max.unwrap_or_default(),
            jitter: ratio(
                backoff.jitter,
                d.retry.jitter,
                "spec.retry.backoff.jitter",
                key,
                diags,
            ),
            on,
            budget_ratio: ratio(
                budget.ratio,
                d.retry.budget_ratio,
                "spec.retry.budget.ratio",
                key,
                diags,
            ),
            budget_min_per_second: count(
                budget.min_per_second,
                d.retry.budget_min_per_second,
                0,
                100_000,
                "spec.retry.budget.minPerSecond",
                key,
                diags,
            ),
            same_target,
            rate_limit_max_wait_ms: max_wait.unwrap_or_default(),
        },
        timeouts: Timeouts {
            per_attempt_ms: per_attempt.unwrap_or_default(),
            first_byte_ms: first_byte.unwrap_or_default(),
            stream_idle_ms: stream_idle.unwrap_or_default(),
            total_ms: total.unwrap_or_default(),
        },
        health: Health {
            failure_threshold: count(
                health.failure_threshold,
                d.health.failure_threshold,
                1,
                1000,
                "spec.health.failureThreshold",
                key,
                diags,
            ),
            error_rate_threshold: ratio(
                error_rate.threshold,
                d.health.error_rate_threshold,
                "spec.health.errorRate.threshold",
                key,
                diags,
            ),
            error_rate_window_ms: window.unwrap_or_default(),
            error_rate_min_requests: count(
                error_rate.min_requests,
                d.health.error_rate_min_requests,
                1,
                100_000,
                "spec.health.errorRate.minRequests",
                key,
                diags,
            ),
            cooldown_ms: cooldown.unwrap_or_default(),
            max_cooldown_ms: max_cooldown.unwrap_or_default(),
            half_open_probes: count(
                health.half_open_probes,
                d.health.half_open_probes,
                1,
                100,
                "spec.health.halfOpenProbes",
                key,
                diags,
            ),
            probe_first_byte_ms: probe_first_byte.unwrap_or_default(),
            latency_threshold_ms: latency.flatten(),
        },
        overrides: Overrides {
            allow_target: overrides.allow_target.unwrap_or(d.overrides.allow_target),
            allow_disable_fallback: overrides
                .allow_disable_fallback
                .unwrap_or(d.overrides.allow_disable_fallback),
        },
        scoring: Scoring {
            simple_below,
            complex_above,
            disabled: scoring.disabled.unwrap_or(false),
            // Thresholds written without naming a scorer were tuned on `v1`, the only one
            // there was: they keep it. Everything else gets the current default.
            scorer: scoring
                .scorer
                .unwrap_or(if simple_below.is_some() || complex_above.is_some() {
                    Scorer::V1
                } else {
                    Scorer::default()
                }),
            cheap_share,
        },
        response_model: match (spec.response_model, spec.expose_upstream_model) {
            (Some(m), _) => m,
            (None, Some(true)) => ResponseModel::Upstream,
            (None, Some(false)) => ResponseModel::Route,
            (None, None) => d.response_model,
        },
        streaming: Streaming {
            assemble: spec
                .streaming
                .as_ref()
                .and_then(|s| s.assemble)
                .unwrap_or(d.streaming.assemble),
            continue_on_failure: spec
                .streaming
                .as_ref()
                .and_then(|s| s.continue_on_failure)
                .unwrap_or(d.streaming.continue_on_failure),
        },
    };
    if let (Some(m), Some(expose)) = (spec.response_model, spec.expose_upstream_model)
        && (m == ResponseModel::Upstream) != expose
    {
        diags.error(
            key,
            "spec.exposeUpstreamModel",
            Reason::InvalidSpec,
            "disagrees with responseModel; remove the deprecated exposeUpstreamModel".to_owned(),
        );
    }
    if diags.0.len() > before {
        return None;
    }
    Some(PolicyBase {
        policy,
        rules: spec.rules.clone().unwrap_or_default(),
    })
}

fn resolve_rule(rule: &RuleSpec, served: &BTreeSet<&str>) -> table::Rule {
    let (when, list) = match (&rule.when.all, &rule.when.any) {
        (Some(all), _) => (Match::All, all.as_slice()),
        (None, Some(any)) => (Match::Any, any.as_slice()),
        (None, None) => (Match::All, &[][..]),
    };
    table::Rule {
        name: rule.name.clone(),
        when,
        conditions: list
            .iter()
            .map(|c| Condition {
                tag: c.tag.clone(),
                op: c.op,
                values: match (&c.values, &c.value) {
                    (Some(vs), _) if c.op == crate::crd::Op::In => vs.clone(),
                    (_, Some(v)) => vec![v.clone()],
                    (Some(vs), None) => vs.clone(),
                    (None, None) => Vec::new(),
                },
            })
            .collect(),
        // Targets left out (credentials) drop out of the rule too; see `table::Rule::targets`.
        targets: rule.then.targets.as_ref().map(|ts| {
            ts.iter()
                .filter(|t| served.contains(t.as_str()))
                .cloned()
                .collect()
        }),
        strategy: rule.then.strategy,
        continue_on_failure: rule.then.continue_on_failure,
    }
}

fn resolve_target(
    t: &TargetSpec,
    i: usize,
    key: &ObjectKey,
    policy: &Policy,
    input: &Input<'_>,
    diags: &mut Diags,
) -> Option<Target> {
    let at = format!("spec.targets[{i}]");
    let before = diags.0.len();
    let timeouts = t.timeouts.clone().unwrap_or_default();
    let per_attempt = duration(
        timeouts.per_attempt.as_deref(),
        policy.timeouts.per_attempt_ms,
        &format!("{at}.timeouts.perAttempt"),
        key,
        diags,
    );
    let first_byte = duration(
        timeouts.first_byte.as_deref(),
        policy.timeouts.first_byte_ms,
        &format!("{at}.timeouts.firstByte"),
        key,
        diags,
    );
    let stream_idle = duration(
        timeouts.stream_idle.as_deref(),
        policy.timeouts.stream_idle_ms,
        &format!("{at}.timeouts.streamIdle"),
        key,
        diags,
    );
    if stream_idle == Some(0) {
        diags.error(
            key,
            format!("{at}.timeouts.streamIdle"),
            Reason::InvalidSpec,
            "must be greater than 0".to_owned(),
        );
    }
    if let (Some(fb), Some(pa)) = (first_byte, per_attempt)
        && timeouts.first_byte.is_some()
        && timeouts.per_attempt.is_some()
        && fb > pa
    {
        diags.error(
            key,
            format!("{at}.timeouts.firstByte"),
            Reason::InvalidSpec,
            format!("{fb}ms exceeds timeouts.perAttempt ({pa}ms)"),
        );
    }
    let mock = match (&t.mock, t.provider) {
        (m, Provider::Mock) => {
            let m = m.clone().unwrap_or_default();
            let latency = duration(m.latency.as_deref(), 0, &format!("{at}.mock.latency"), key, diags);
            Some(Mock {
                script: m.script.unwrap_or_else(|| vec![crate::crd::MockBehavior::Ok]),
                latency_ms: latency.unwrap_or_default(),
                reply: m.reply,
            })
        }
        (Some(_), p) => {
            diags.error(
                key,
                format!("{at}.mock"),
                Reason::InvalidSpec,
                format!("is only for provider mock; remove it or set provider: mock (provider is {p})"),
            );
            None
        }
        (None, _) => None,
    };
    let vertex = match (&t.vertex, t.provider) {
        (Some(v), Provider::Vertex) => {
            if !valid_project(&v.project) {
                diags.error(
                    key,
                    format!("{at}.vertex.project"),
                    Reason::InvalidSpec,
                    format!(
                        "{:?} is not a Google Cloud project id: 6 to 30 lowercase letters, digits and '-', \
                         starting with a letter and not ending with '-' (the ID, not the project's name or number)",
                        v.project
                    ),
                );
            }
            let publisher = v.publisher.unwrap_or_default();
            let model_ok = match publisher {
                // The OpenAI-compatible endpoint takes the publisher-qualified id.
                VertexPublisher::Google => t.model.contains('/'),
                // Claude's id goes into the URL's path.
                VertexPublisher::Anthropic => t
                    .model
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.@_".contains(&b)),
            };
            if !model_ok {
                diags.error(
                    key,
                    format!("{at}.model"),
                    Reason::InvalidSpec,
                    match publisher {
                        VertexPublisher::Google => format!(
                            "{:?} needs its publisher for Vertex's chat completions, e.g. google/gemini-2.5-flash",
                            t.model
                        ),
                        VertexPublisher::Anthropic => format!(
                            "{:?} is not a Claude model id on Vertex AI, e.g. claude-sonnet-4@20250514",
                            t.model
                        ),
                    },
                );
            }
            Some(Vertex {
                project: v.project.clone(),
                publisher,
            })
        }
        (None, Provider::Vertex) => {
            diags.error(
                key,
                format!("{at}.vertex"),
                Reason::InvalidSpec,
                "is required for provider vertex: vertex: {project: my-project, publisher: google} \
                 (publisher anthropic for Claude models)"
                    .to_owned(),
            );
            None
        }
        (Some(_), p) => {
            diags.error(
                key,
                format!("{at}.vertex"),
                Reason::InvalidSpec,
                format!("is only for provider vertex; remove it or set provider: vertex (provider is {p})"),
            );
            None
        }
        (None, _) => None,
    };
    let credentials = match &t.credentials {
        None => None,
        Some(c) => resolve_credentials(c, t.provider, &at, key, input, diags),
    };
    let standalone_hosts;
    let cluster_hosts;
    let allowed = match (input.allowed_hosts, input.mode) {
        (Some(a), _) => a,
        (None, Mode::Cluster) => {
            cluster_hosts = AllowedHosts::providers();
            &cluster_hosts
        }
        (None, Mode::Standalone) => {
            standalone_hosts = AllowedHosts::standalone();
            &standalone_hosts
        }
    };
    let dest = TargetDest {
        provider: t.provider,
        endpoint: t.endpoint.as_deref(),
        region: t.region.as_deref(),
        // A Vertex target always sends a Google access token, from its credentials or the
        // ambient ones (metadata server, application default credentials).
        has_credentials: t.credentials.is_some() || t.provider == Provider::Vertex,
        allow_plain_http: t.allow_plain_http == Some(true),
    };
    if let Err(v) = egress::check_target(&dest, allowed) {
        diags.error(
            key,
            format!("{at}.{}", v.field),
            Reason::DestinationRefused,
            format!("{}; this target is left out until then", v.message),
        );
    }
    if diags.0.len() > before {
        return None;
    }
    Some(Target {
        name: t.name.clone(),
        provider: t.provider,
        model: t.model.clone(),
        endpoint: t.endpoint.clone(),
        allow_plain_http: t.allow_plain_http == Some(true),
        region: t.region.clone(),
        api_version: t.api_version.clone(),
        credentials,
        weight: t.weight.unwrap_or(1),
        cost: t.cost.map(|c| Cost {
            input: c.input,
            output: c.output,
        }),
        quality: t.quality,
        context_window: t.context_window,
        capabilities: t.capabilities.as_ref().map(|cs| {
            let set: BTreeSet<_> = cs.iter().copied().collect();
            set.into_iter().collect()
        }),
        per_attempt_ms: per_attempt
            .unwrap_or(policy.timeouts.per_attempt_ms)
            .min(policy.timeouts.total_ms),
        first_byte_ms: first_byte.unwrap_or(policy.timeouts.first_byte_ms),
        stream_idle_ms: stream_idle.unwrap_or(policy.timeouts.stream_idle_ms),
        mock,
        vertex,
    })
}

/// A Google Cloud project id: 6 to 30 characters, lowercase letters, digits and hyphens,
/// starting with a letter and not ending with a hyphen.
fn valid_project(id: &str) -> bool {
    (6..=30).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn resolve_credentials(
    c: &CredentialsSpec,
    provider: Provider,
    at: &str,
    key: &ObjectKey,
    input: &Input<'_>,
    diags: &mut Diags,
) -> Option<Credentials> {
    let at = format!("{at}.credentials");
    if input.mode == Mode::Cluster {
        for (field, set) in [
            ("apiKeyEnv", c.api_key_env.is_some()),
            ("apiKeyFile", c.api_key_file.is_some()),
        ] {
            if set {
                diags.error(
                    key,
                    format!("{at}.{field}"),
                    Reason::StandaloneOnly,
                    "is only for the standalone sidecar; in a cluster put the key in a Secret and set secretName".to_owned(),
                );
            }
        }
    }
    let keys = c.keys.clone().unwrap_or_default();
    let mut out = Credentials {
        secret: c.secret_name.clone(),
        ..Credentials::default()
    };
    if let Some(secret) = &c.secret_name {
        let state = input.secrets.map(|idx| idx.state(&key.namespace, secret));
        let refused = match state {
            Some(None) => Some((
                Reason::SecretNotFound,
                format!(
                    "Secret {secret:?} not found in namespace {:?}; create it (kubectl -n {} create secret generic {secret} --from-literal={}=...), \
                     label it {}=true, or fix the name; this target is left out until then",
                    key.namespace,
                    key.namespace,
                    keys.api_key
                        .as_deref()
                        .unwrap_or(if provider == Provider::Vertex {
                            defaults::GOOGLE_KEY_KEY
                        } else {
                            defaults::API_KEY_KEY
                        }),
                    defaults::CREDENTIALS_LABEL,
                ),
            )),
            Some(Some(SecretState::NotOptedIn)) => Some((
                Reason::SecretNotOptedIn,
                format!(
                    "Secret {secret:?} is not labelled {label}: \"true\"; only Secrets their owner opted in may be \
                     referenced by a route (kubectl -n {} label secret {secret} {label}=true); this target is left out until then",
                    key.namespace,
                    label = defaults::CREDENTIALS_LABEL,
                ),
            )),
            Some(Some(SecretState::Unreadable)) => Some((
                Reason::SecretNotReadable,
                format!(
                    "the operator may not read Secret {secret:?}'s metadata in namespace {:?}; bind the \
                     ClusterRole detour-credentials-reader to the operator's ServiceAccount with a RoleBinding \
                     in that namespace; this target is left out until then",
                    key.namespace
                ),
            )),
            Some(Some(SecretState::OptedIn)) | None => None,
        };
        if let Some((reason, message)) = refused {
            diags.error(key, format!("{at}.secretName"), reason, message);
            return None;
        }
        let path = |k: &str| {
            CredentialSource::File(format!(
                "{}/{secret}/{k}",
                input.credentials_root.trim_end_matches('/')
            ))
        };
        // Key names are not checked against the Secret: the operator never reads them (only
        // metadata). A wrong key shows as a file the sidecar cannot read (its health report
        // and the attempt's error name the path).
        if provider == Provider::Bedrock {
            if c.web_identity.is_none() {
                out.access_key_id = Some(path(
                    keys.access_key_id
                        .as_deref()
                        .unwrap_or(defaults::ACCESS_KEY_ID_KEY),
                ));
                out.secret_access_key = Some(path(
                    keys.secret_access_key
                        .as_deref()
                        .unwrap_or(defaults::SECRET_ACCESS_KEY_KEY),
                ));
                out.session_token = keys.session_token.as_deref().map(path);
            }
        } else {
            let default_key = if provider == Provider::Vertex {
                defaults::GOOGLE_KEY_KEY
            } else {
                defaults::API_KEY_KEY
            };
            out.api_key = Some(path(keys.api_key.as_deref().unwrap_or(default_key)));
        }
    }
    if let Some(var) = &c.api_key_env {
        out.api_key = Some(CredentialSource::Env(var.clone()));
    }
    if let Some(file) = &c.api_key_file {
        // Relative to the credentials root; either way it must end up inside it.
        let root = input.credentials_root.trim_end_matches('/');
        let full = if file.starts_with('/') {
            file.clone()
        } else {
            format!("{root}/{file}")
        };
        if !egress::path_within(&full, root) {
            diags.error(
                key,
                format!("{at}.apiKeyFile"),
                Reason::CredentialPathRefused,
                format!(
                    "{file:?} is outside the credentials directory {root:?}; put the key file there \
                     (or start the sidecar with --credentials-dir naming its directory)"
                ),
            );
            return None;
        }
        out.api_key = Some(CredentialSource::File(full));
    }
    if let Some(w) = &c.web_identity {
        if provider != Provider::Bedrock {
            diags.error(
                key,
                format!("{at}.webIdentity"),
                Reason::InvalidSpec,
                format!("is only for provider bedrock (provider is {provider})"),
            );
        }
        let token_file = w
            .token_file
            .clone()
            .unwrap_or_else(|| defaults::WEB_IDENTITY_TOKEN_FILE.to_owned());
        let inside = egress::path_within(&token_file, defaults::WEB_IDENTITY_TOKEN_DIR)
            || (input.mode == Mode::Standalone && egress::path_within(&token_file, input.credentials_root));
        if !inside {
            let allowed = match input.mode {
                Mode::Cluster => format!(
                    "the projected-token directory {:?}",
                    defaults::WEB_IDENTITY_TOKEN_DIR
                ),
                Mode::Standalone => format!(
                    "the projected-token directory {:?} or the credentials directory {:?}",
                    defaults::WEB_IDENTITY_TOKEN_DIR,
                    input.credentials_root
                ),
            };
            diags.error(
                key,
                format!("{at}.webIdentity.tokenFile"),
                Reason::CredentialPathRefused,
                format!("{token_file:?} is not a file in {allowed}; only the pod's projected token may be sent to STS"),
            );
            return None;
        }
        out.web_identity = Some(WebIdentity {
            role_arn: w.role_arn.clone(),
            token_file,
        });
    }
    if let Some(a) = &c.azure_workload_identity {
        if provider != Provider::AzureOpenai {
            diags.error(
                key,
                format!("{at}.azureWorkloadIdentity"),
                Reason::InvalidSpec,
                format!("is only for provider azure-openai (provider is {provider})"),
            );
        }
        if let Some(token_file) = &a.token_file {
            let inside = egress::path_within(token_file, defaults::AZURE_FEDERATED_TOKEN_DIR)
                || (input.mode == Mode::Standalone
                    && egress::path_within(token_file, input.credentials_root));
            if !inside {
                let allowed = match input.mode {
                    Mode::Cluster => format!(
                        "the projected-token directory {:?}",
                        defaults::AZURE_FEDERATED_TOKEN_DIR
                    ),
                    Mode::Standalone => format!(
                        "the projected-token directory {:?} or the credentials directory {:?}",
                        defaults::AZURE_FEDERATED_TOKEN_DIR,
                        input.credentials_root
                    ),
                };
                diags.error(
                    key,
                    format!("{at}.azureWorkloadIdentity.tokenFile"),
                    Reason::CredentialPathRefused,
                    format!(
                        "{token_file:?} is not a file in {allowed}; only the pod's projected token may be sent to Entra ID"
                    ),
                );
                return None;
            }
        }
        out.azure_workload_identity = Some(AzureWorkloadIdentity {
            client_id: a.client_id.clone(),
            tenant_id: a.tenant_id.clone(),
            token_file: a.token_file.clone(),
        });
    }
    Some(out)
}
