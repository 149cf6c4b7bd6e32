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
//!
//! The phases, one module each:
//! 1. [`policies`]: every RoutingPolicy on its own, against the built-in defaults;
//! 2. [`conflicts`]: the default policy of each scope, and more than one in a scope;
//! 3. [`routes`]: every ModelRoute, to a route or to the diagnostic that leaves it out, its
//!    targets through [`targets`] and [`credentials`] (rules in [`rules`]);
//! 4. [`conflicts`] again: one model id, one route;
//! 5. the outcome of every object, from which [`diagnostics`] derives its `Ready` verdict.
//!
//! Whatever a phase leaves out becomes an [`Excluded`] entry of the table in one place,
//! [`compile`] itself, from the diagnostic that says why.

use std::collections::BTreeMap;

use crate::crd::{ModelRoute, ObjectMeta, RoutingPolicy};
use crate::defaults;
use crate::egress::AllowedHosts;
use crate::table::{Excluded, ObjectRef, RouteTable};

mod conflicts;
mod credentials;
mod diagnostics;
mod fields;
mod policies;
mod routes;
mod rules;
mod targets;

pub use diagnostics::{Diagnostic, Kind, ObjectKey, Readiness, Reason, Severity};

use conflicts::Defaults;
use diagnostics::{Diags, namespace_of};
use policies::Policies;

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

/// Compiles routes and policies into a route table with diagnostics.
pub fn compile(input: &Input<'_>) -> Compiled {
    let mut diags = Diags::default();

    // Objects in a fixed order, so the input's order never shows in the output. Names are
    // unique in a namespace (the apiserver and the loader guarantee it); should a caller pass
    // two versions of one object anyway, the order still decides nothing, their content does.
    let mut route_order: Vec<&ModelRoute> = input.routes.iter().collect();
    route_order.sort_by_cached_key(|r| identity(*r, &r.spec));
    let mut policy_order: Vec<&RoutingPolicy> = input.policies.iter().collect();
    policy_order.sort_by_cached_key(|p| identity(*p, &p.spec));

    // 1. Every policy on its own; 2. the default policy of each scope.
    let policies = Policies::resolve_all(&policy_order, &mut diags);
    let defaults = Defaults::find(&policy_order, &policies, input.cluster_namespace, &mut diags);

    // 3. Every route: served, or left out with the diagnostic that says why; either way the
    //    targets left out alone are listed.
    let cx = routes::Context {
        input,
        policies: &policies,
        defaults: &defaults,
    };
    let mut excluded: Vec<Excluded> = Vec::new();
    let mut outcomes: BTreeMap<ObjectKey, RouteOutcome> = BTreeMap::new();
    let mut served = Vec::new();
    for r in route_order.iter().copied() {
        let route = routes::compile(r, &cx, &mut diags);
        let source = ObjectRef {
            namespace: route.key.namespace.clone(),
            name: route.key.name.clone(),
        };
        for (target, d) in &route.targets_left_out {
            excluded.push(exclusion(&r.spec.model, &source, Some(target), d));
        }
        outcomes.insert(
            route.key.clone(),
            RouteOutcome {
                object: route.key.clone(),
                served: false,
                policy: None,
                target_count: 0,
            },
        );
        match route.served {
            Ok(s) => served.push((route.key, s)),
            Err(d) => excluded.push(exclusion(&r.spec.model, &source, None, &d)),
        }
    }

    // 4. One model id, one route; then what happened to every object.
    let losers = conflicts::duplicate_models(&served, input.routes, &mut diags);
    let mut routes = Vec::with_capacity(served.len());
    let mut route_count: BTreeMap<String, u32> = BTreeMap::new();
    for (i, (key, s)) in served.into_iter().enumerate() {
        let outcome = outcomes.get_mut(&key);
        if let Some(d) = losers.get(&i) {
            excluded.push(exclusion(&s.route.model, &s.route.source, None, d));
            if let Some(o) = outcome {
                o.policy = Some(s.route.policy.source.clone());
            }
            continue;
        }
        if let Some(p) = s.policy {
            *route_count.entry(p).or_default() += 1;
        }
        if let Some(o) = outcome {
            o.served = true;
            o.policy = Some(s.route.policy.source.clone());
            o.target_count = u32::try_from(s.route.targets.len()).unwrap_or(u32::MAX);
        }
        routes.push(s.route);
    }

    let policy_outcomes = policies.outcomes(&route_count, &diags);
    Compiled {
        table: RouteTable::new(routes, excluded),
        diagnostics: diags.into_sorted(),
        routes: outcomes.into_values().collect(),
        policies: policy_outcomes,
    }
}

/// The table's entry saying that a route (or only its `target`) is left out, and why.
fn exclusion(model: &str, source: &ObjectRef, target: Option<&str>, why: &Diagnostic) -> Excluded {
    Excluded {
        model: model.to_owned(),
        source: source.clone(),
        target: target.map(str::to_owned),
        reason: why.to_string(),
    }
}

/// What orders objects: namespace, name, then content.
fn identity<K: ObjectMeta, S: serde::Serialize>(object: &K, spec: &S) -> (String, String, String) {
    (
        namespace_of(object),
        object.object_name(),
        serde_json::to_string(spec).unwrap_or_default(),
    )
}
