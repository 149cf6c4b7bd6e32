//! What two objects claim at once: two default policies in one scope (neither is picked),
//! and two routes with one model id (the oldest serves). Every party is told.

use std::collections::BTreeMap;

use super::diagnostics::{Diagnostic, Diags, ObjectKey, Reason, Severity};
use super::policies::Policies;
use super::routes::Served;
use crate::crd::{ModelRoute, ObjectMeta, RoutingPolicy};

/// The default policies, by scope (namespace).
#[derive(Debug)]
pub(super) struct Defaults<'a> {
    by_scope: BTreeMap<String, Vec<ObjectKey>>,
    /// The operator's namespace: a default there applies cluster-wide.
    cluster_namespace: Option<&'a str>,
}

/// The default policy of a route's scope.
pub(super) enum DefaultPick<'a> {
    None,
    One(&'a ObjectKey),
    /// More than one default in this scope (namespace): none is picked.
    Conflict(&'a str),
}

impl<'a> Defaults<'a> {
    /// The default policies of every scope; more than one in a scope is an error on each.
    pub fn find(
        order: &[&RoutingPolicy],
        policies: &Policies,
        cluster_namespace: Option<&'a str>,
        diags: &mut Diags,
    ) -> Self {
        let mut by_scope: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
        for p in order.iter().copied() {
            let key = ObjectKey::of_policy(p);
            if p.spec.default == Some(true)
                && let Some((key, _)) = policies.get(&key.namespace, &key.name)
            {
                by_scope
                    .entry(key.namespace.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
        let defaults = Self {
            by_scope,
            cluster_namespace,
        };
        for (ns, keys) in &defaults.by_scope {
            if keys.len() > 1 {
                let mut names: Vec<String> = keys.iter().map(|k| format!("{:?}", k.name)).collect();
                names.sort();
                let scope = defaults.scope_name(ns);
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
        defaults
    }

    /// The default for namespace `ns`: its own, else the cluster's.
    pub fn pick(&self, ns: &str) -> DefaultPick<'_> {
        let pick = |scope: &str| match self.by_scope.get_key_value(scope) {
            Some((scope, keys)) if keys.len() > 1 => Some(DefaultPick::Conflict(scope.as_str())),
            Some((_, keys)) => keys.first().map(DefaultPick::One),
            None => None,
        };
        pick(ns)
            .or_else(|| self.cluster_namespace.and_then(pick))
            .unwrap_or(DefaultPick::None)
    }

    /// How a person names scope `ns`.
    pub fn scope_name(&self, ns: &str) -> String {
        if Some(ns) == self.cluster_namespace {
            format!("the cluster (namespace {ns:?} is the operator's)")
        } else {
            format!("namespace {ns:?}")
        }
    }
}

/// One model id, one route: among the served routes claiming one id the oldest wins, and
/// every party is told. Returns the losers (by index into `served`), each with the error
/// that leaves it out.
pub(super) fn duplicate_models(
    served: &[(ObjectKey, Served)],
    routes: &[ModelRoute],
    diags: &mut Diags,
) -> BTreeMap<usize, Diagnostic> {
    let mut by_model: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, s)) in served.iter().enumerate() {
        by_model.entry(s.route.model.as_str()).or_default().push(i);
    }
    let created: BTreeMap<ObjectKey, Option<String>> = routes
        .iter()
        .map(|r| (ObjectKey::of_route(r), r.created_at()))
        .collect();
    let name = |i: usize| served.get(i).map(|(k, _)| format!("{}/{}", k.namespace, k.name));
    let mut losers = BTreeMap::new();
    for (model, mut idx) in by_model {
        if idx.len() < 2 {
            continue;
        }
        idx.sort_by(|&a, &b| {
            let ka = served.get(a).map(|c| &c.0);
            let kb = served.get(b).map(|c| &c.0);
            let ta = ka.and_then(|k| created.get(k).cloned().flatten());
            let tb = kb.and_then(|k| created.get(k).cloned().flatten());
            // Objects without a timestamp (standalone files) sort after those with one.
            (ta.is_none(), ta, ka).cmp(&(tb.is_none(), tb, kb))
        });
        let all: Vec<String> = idx.iter().filter_map(|&i| name(i)).collect();
        let Some((&winner, rest)) = idx.split_first() else {
            continue;
        };
        let winner_name = name(winner).unwrap_or_default();
        if let Some((wkey, _)) = served.get(winner) {
            let others: Vec<&str> = all
                .iter()
                .filter(|n| **n != winner_name)
                .map(String::as_str)
                .collect();
            diags.add(
                Severity::Warning,
                wkey,
                "spec.model".to_owned(),
                Reason::DuplicateModel,
                format!(
                    "model {model:?} is also claimed by {}; this route (the oldest) serves it",
                    others.join(", ")
                ),
            );
        }
        for &i in rest {
            if let Some((lkey, _)) = served.get(i) {
                let d = diags.error(
                    lkey,
                    "spec.model",
                    Reason::DuplicateModel,
                    format!(
                        "model {model:?} is already served by ModelRoute {winner_name}; change spec.model or delete one of them"
                    ),
                );
                losers.insert(i, d);
            }
        }
    }
    losers
}
