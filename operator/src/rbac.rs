//! Every API call the operator makes, as RBAC rules: the single list the chart's ClusterRole
//! and Role must match exactly (checked by `tests/test_chart.py` through
//! `manifest-check rbac`, once per certificate mode), and that the mocked-apiserver tests
//! check each observed call against, names included (`controller`, `webhook`, `leader` and
//! `certs` tests, through `verifier`).
//!
//! Least privilege: every rule that can name its object does (`resourceNames`). `create`
//! cannot be restricted by name (the apiserver authorises it before the object has one), so
//! it is always a rule of its own; a server-side apply that creates its object is authorised
//! as `create`. The rules for the webhook's certificate (its Secret, the
//! MutatingWebhookConfiguration's `caBundle`) exist only when the operator issues the
//! certificate itself; with cert-manager the operator reads mounted files and needs neither.
//!
//! No Secret of any other namespace is readable through these roles. The operator reads a
//! referenced Secret's metadata (its opt-in label) only in namespaces that bind the
//! ClusterRole [`CREDENTIALS_READER_ROLE`] ([`CREDENTIALS_READER`]) to its ServiceAccount.
//!
//! Change a call in the code, change it here, and the chart follows or its test fails.

use detour_api::defaults;
use serde::Serialize;

/// The leader-election Lease (the chart's fixed name).
pub const LEASE: &str = "detour-operator";
/// The Secret holding the self-issued serving certificate (the chart's fixed name).
pub const WEBHOOK_SECRET: &str = "detour-webhook-tls";
/// The MutatingWebhookConfiguration whose `caBundle` the operator keeps current.
pub const WEBHOOK_CONFIG: &str = "detour-injector";
/// The ClusterRole a namespace binds (RoleBinding) to let the operator read the metadata of
/// the Secrets its routes reference; the chart ships it unbound.
pub const CREDENTIALS_READER_ROLE: &str = "detour-credentials-reader";

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
    named(group, resource, verbs, &[])
}

const fn named(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    resource_names: &'static [&'static str],
) -> Rule {
    Rule {
        group,
        resource,
        verbs,
        resource_names,
    }
}

/// Where the webhook's serving certificate comes from: decides the certificate rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certs {
    /// The operator issues a CA and certificate, stores them in [`WEBHOOK_SECRET`] and keeps
    /// [`WEBHOOK_CONFIG`]'s `caBundle` current (`--cert-source=self`).
    SelfIssued,
    /// cert-manager issues them and injects `caBundle`; the operator reads the mounted files
    /// (`--cert-source=files`).
    CertManager,
}

/// Cluster-wide, in every mode: the ClusterRole.
pub const CLUSTER: &[Rule] = &[
    // The controller's watch caches and status writes.
    rule("detour.dev", "modelroutes", &["list", "watch"]),
    rule("detour.dev", "modelroutes/status", &["patch"]),
    rule("detour.dev", "routingpolicies", &["list", "watch"]),
    rule("detour.dev", "routingpolicies/status", &["patch"]),
    // Namespaces are the controller's root objects (metadata only).
    rule("", "namespaces", &["list", "watch"]),
    // The route tables, only those named `detour-routes`: watched (metadata, with a
    // `metadata.name` field selector, which is what lets RBAC restrict list and watch by
    // name) and applied. No other ConfigMap can be read or written.
    named(
        "",
        "configmaps",
        &["list", "watch", "patch"],
        &[defaults::CONFIG_MAP],
    ),
    // The first apply in a namespace creates the table (authorised as create, by no name).
    rule("", "configmaps", &["create"]),
    // Fleet health: the injected pods' IPs, admin ports and fleet keys (a watch with label
    // selector `detour.dev/inject=true`; RBAC cannot restrict list/watch by label). Read
    // only; the operator never changes a pod.
    rule("", "pods", &["list", "watch"]),
    // Events on transitions (kube's Recorder creates, then patches a series).
    rule("events.k8s.io", "events", &["create", "patch"]),
];

/// Cluster-wide, only with self-issued certificates.
pub const CLUSTER_SELF_ISSUED: &[Rule] = &[
    // The webhook's caBundle, only on our own configuration; the chart's
    // ValidatingAdmissionPolicy refuses any other change the operator could make with it.
    named(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        &["get", "patch"],
        &[WEBHOOK_CONFIG],
    ),
];

/// In the operator's namespace, in every mode: the Role.
pub const NAMESPACED: &[Rule] = &[
    // Leader election on our one Lease; created by the first replica.
    named("coordination.k8s.io", "leases", &["get", "update"], &[LEASE]),
    rule("coordination.k8s.io", "leases", &["create"]),
];

/// In the operator's namespace, only with self-issued certificates.
pub const NAMESPACED_SELF_ISSUED: &[Rule] = &[
    // The serving certificate: read by every replica, written by the leader (an apply,
    // which creates it the first time).
    named("", "secrets", &["get", "patch"], &[WEBHOOK_SECRET]),
    rule("", "secrets", &["create"]),
];

/// ClusterRole [`CREDENTIALS_READER_ROLE`], granted per namespace by a RoleBinding: the
/// metadata GET of a Secret a route names (its `detour.dev/credentials` label), by the
/// controller and the webhook. `get` only: no list or watch, so no Secret is enumerated.
pub const CREDENTIALS_READER: &[Rule] = &[rule("", "secrets", &["get"])];

/// The ClusterRole's rules in `certs` mode.
pub fn cluster(certs: Certs) -> Vec<Rule> {
    match certs {
        Certs::SelfIssued => [CLUSTER, CLUSTER_SELF_ISSUED].concat(),
        Certs::CertManager => CLUSTER.to_vec(),
    }
}

/// The Role's rules (operator namespace) in `certs` mode.
pub fn namespaced(certs: Certs) -> Vec<Rule> {
    match certs {
        Certs::SelfIssued => [NAMESPACED, NAMESPACED_SELF_ISSUED].concat(),
        Certs::CertManager => NAMESPACED.to_vec(),
    }
}

/// One request as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    /// Plural, with `/subresource` when it is one.
    pub resource: String,
    /// The object's name: from the path, or for a list or watch from a `metadata.name=`
    /// field selector (as the apiserver does); `None` for `create` and unnamed collections.
    pub name: Option<String>,
}

/// Whether `rules` grant `access`: a rule with `resourceNames` only grants requests that
/// name one of them.
pub fn allows(rules: &[Rule], access: &Access) -> bool {
    rules.iter().any(|r| {
        r.group == access.group
            && r.resource == access.resource
            && r.verbs.contains(&access.verb.as_str())
            && (r.resource_names.is_empty()
                || access
                    .name
                    .as_deref()
                    .is_some_and(|n| r.resource_names.contains(&n)))
    })
}

/// The RBAC view of a request, from its method, path and query (the same mapping the
/// apiserver makes). `None` for paths that are not resources.
pub fn classify(method: &str, path: &str, query: &str) -> Option<Access> {
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
    let (resource, name) = match rest {
        [resource] => ((*resource).to_owned(), None),
        [resource, name] => ((*resource).to_owned(), Some((*name).to_owned())),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some((*name).to_owned())),
        _ => return None,
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let watch = params.iter().any(|(k, v)| k == "watch" && v == "true");
    let named = name.is_some();
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
    // A list or watch names its object when its field selector is exactly `metadata.name=X`.
    let name = name.or_else(|| {
        let selector = params.iter().find(|(k, _)| k == "fieldSelector")?;
        let value = selector.1.strip_prefix("metadata.name=")?;
        (!value.contains(',') && matches!(verb, "list" | "watch")).then(|| value.to_owned())
    });
    Some(Access {
        verb: verb.to_owned(),
        group: group.to_owned(),
        resource,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(verb: &str, group: &str, resource: &str, name: Option<&str>) -> Access {
        Access {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            name: name.map(Into::into),
        }
    }

    /// Request paths map to RBAC verbs, resources and names as the apiserver maps them,
    /// including the name of a list or watch with a `metadata.name` field selector.
    #[test]
    fn classifies_requests() {
        let c = |m, p, q| classify(m, p, q).unwrap();
        assert_eq!(
            c(
                "PATCH",
                "/apis/detour.dev/v1alpha1/namespaces/a/modelroutes/x/status",
                ""
            ),
            access("patch", "detour.dev", "modelroutes/status", Some("x"))
        );
        assert_eq!(
            c("GET", "/api/v1/secrets", "watch=true&x=1"),
            access("watch", "", "secrets", None)
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces", ""),
            access("list", "", "namespaces", None)
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/a/secrets/openai", ""),
            access("get", "", "secrets", Some("openai"))
        );
        assert_eq!(
            c("POST", "/apis/events.k8s.io/v1/namespaces/a/events", ""),
            access("create", "events.k8s.io", "events", None)
        );
        assert_eq!(
            c(
                "GET",
                "/api/v1/configmaps",
                "labelSelector=a%3Db&fieldSelector=metadata.name%3Ddetour-routes&watch=true"
            ),
            access("watch", "", "configmaps", Some("detour-routes"))
        );
        assert_eq!(
            c(
                "GET",
                "/api/v1/configmaps",
                "fieldSelector=metadata.name%3Ddetour-routes%2Cmetadata.namespace%3Da"
            ),
            access("list", "", "configmaps", None),
            "a compound selector names nothing"
        );
    }

    /// A named rule grants only requests for its names; `create` is granted by its own
    /// unnamed rule; the cert-manager mode grants nothing about the webhook's certificate.
    #[test]
    fn names_restrict_and_modes_differ() {
        let cm = |verb: &str, name: Option<&str>| access(verb, "", "configmaps", name);
        let cluster = cluster(Certs::CertManager);
        assert!(allows(&cluster, &cm("patch", Some("detour-routes"))));
        assert!(!allows(&cluster, &cm("patch", Some("aws-auth"))));
        assert!(!allows(&cluster, &cm("list", None)), "an unselected list");
        assert!(allows(&cluster, &cm("create", None)));
        assert!(
            !allows(&cluster, &cm("get", Some("detour-routes"))),
            "nobody reads it"
        );
        for certs in [Certs::SelfIssued, Certs::CertManager] {
            for verb in ["get", "list", "watch"] {
                let secrets = access(verb, "", "secrets", Some("db-creds"));
                assert!(
                    !allows(&self::cluster(certs), &secrets),
                    "{verb} secrets cluster-wide"
                );
            }
        }
        let secret = |verb: &str| access(verb, "", "secrets", Some("openai"));
        assert!(allows(CREDENTIALS_READER, &secret("get")));
        assert!(!allows(CREDENTIALS_READER, &access("list", "", "secrets", None)));
        assert!(!allows(CREDENTIALS_READER, &secret("watch")));

        let mwc = access(
            "patch",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            Some(WEBHOOK_CONFIG),
        );
        assert!(allows(&self::cluster(Certs::SelfIssued), &mwc));
        assert!(!allows(&cluster, &mwc));
        let tls = access("patch", "", "secrets", Some(WEBHOOK_SECRET));
        assert!(allows(&namespaced(Certs::SelfIssued), &tls));
        assert!(!allows(&namespaced(Certs::CertManager), &tls));
        assert!(!allows(
            &namespaced(Certs::SelfIssued),
            &access("get", "", "secrets", Some("db-creds"))
        ));
        assert!(allows(
            &namespaced(Certs::CertManager),
            &access("update", "coordination.k8s.io", "leases", Some(LEASE))
        ));
    }
}
