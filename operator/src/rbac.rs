//! Every API call the operator makes, as RBAC rules: the single list the chart's ClusterRole
//! and Role must match exactly (checked by `tests/test_chart.py` through
//! `manifest-check rbac`), and that the mocked-apiserver tests check each observed call
//! against (`controller` tests, `webhook` tests).
//!
//! Change a call in the code, change it here, and the chart follows or its test fails.

use serde::Serialize;

/// One RBAC rule: verbs on one resource of one API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// `""` for the core group.
    pub group: &'static str,
    /// Plural, with `/subresource` when it is one.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Restricted to these names (empty: any name).
    #[serde(rename = "resourceNames")]
    pub resource_names: &'static [&'static str],
}

const fn rule(group: &'static str, resource: &'static str, verbs: &'static [&'static str]) -> Rule {
    Rule {
        group,
        resource,
        verbs,
        resource_names: &[],
    }
}

/// Cluster-wide: the ClusterRole.
pub const CLUSTER: &[Rule] = &[
    // The controller's watch caches and status writes.
    rule("detour.dev", "modelroutes", &["list", "watch"]),
    rule("detour.dev", "modelroutes/status", &["patch"]),
    rule("detour.dev", "routingpolicies", &["list", "watch"]),
    rule("detour.dev", "routingpolicies/status", &["patch"]),
    // Namespaces are the controller's root objects (metadata only).
    rule("", "namespaces", &["list", "watch"]),
    // Secrets: metadata watch (triggers), and a GET of the referenced ones for their key
    // names (values are discarded while parsing, see `controller::secret_keys`).
    rule("", "secrets", &["get", "list", "watch"]),
    // The route tables: watched (metadata), applied (SSA creates on first apply), read by
    // the webhook to find the Secrets to mount.
    rule("", "configmaps", &["get", "list", "watch", "create", "patch"]),
    // Events on transitions (kube's Recorder creates, then patches a series).
    rule("events.k8s.io", "events", &["create", "patch"]),
    // The webhook's caBundle, only on our own configuration.
    Rule {
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "patch"],
        resource_names: &["detour-injector"],
    },
];

/// In the operator's namespace only: the Role.
pub const NAMESPACED: &[Rule] = &[
    // Leader election.
    rule("coordination.k8s.io", "leases", &["get", "create", "update"]),
    // The webhook serving certificate the operator issues (create, then patch on rotation).
    rule("", "secrets", &["create", "patch"]),
];

/// Whether `verb` on `group`/`resource` is granted by `rules`.
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules
        .iter()
        .any(|r| r.group == group && r.resource == resource && r.verbs.contains(&verb))
}

/// The RBAC verb, API group and resource of a request, from its method, path and query
/// (the same mapping the apiserver makes). `None` for paths that are not resources.
pub fn classify(method: &str, path: &str, query: &str) -> Option<(String, String, String)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = query.split('&').any(|kv| kv == "watch=true");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((verb.to_owned(), group.to_owned(), resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request paths map to RBAC verbs and resources as the apiserver maps them.
    #[test]
    fn classifies_requests() {
        let c = |m, p, q| classify(m, p, q).unwrap();
        assert_eq!(
            c(
                "PATCH",
                "/apis/detour.dev/v1alpha1/namespaces/a/modelroutes/x/status",
                ""
            ),
            ("patch".into(), "detour.dev".into(), "modelroutes/status".into())
        );
        assert_eq!(
            c("GET", "/api/v1/secrets", "watch=true&x=1"),
            ("watch".into(), "".into(), "secrets".into())
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces", ""),
            ("list".into(), "".into(), "namespaces".into())
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/a/secrets/openai", ""),
            ("get".into(), "".into(), "secrets".into())
        );
        assert_eq!(
            c("POST", "/apis/events.k8s.io/v1/namespaces/a/events", ""),
            ("create".into(), "events.k8s.io".into(), "events".into())
        );
    }
}
