//! `manifest-check`: checks rendered manifests with the operator's own types.
//!
//! - `manifest-check manifests FILE`: every YAML document of FILE must parse into its
//!   `k8s-openapi` type (or, for CRs of CRDs outside k8s-openapi, carry the fields their
//!   operators require), and must survive a typed round trip unchanged: a field the type
//!   does not know (a typo, a wrong indent) is reported with its path.
//! - `manifest-check rbac FILE (self-issued|cert-manager)`: the ClusterRole and Role in FILE
//!   must grant exactly the calls `detour_operator::rbac` lists for that certificate mode
//!   (names included), no more and no less, and so must the ClusterRole
//!   `detour-credentials-reader` that namespaces bind.
//!
//! Prints one line per finding; exits non-zero when there is any. Used by tests/test_chart.py.

use std::collections::BTreeSet;
use std::process::ExitCode;

use detour_operator::rbac::{self, Certs, Rule};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, path, certs) = match args.as_slice() {
        [mode, path] if mode == "manifests" => (mode.as_str(), path.as_str(), None),
        [mode, path, certs] if mode == "rbac" && certs == "self-issued" => {
            (mode.as_str(), path.as_str(), Some(Certs::SelfIssued))
        }
        [mode, path, certs] if mode == "rbac" && certs == "cert-manager" => {
            (mode.as_str(), path.as_str(), Some(Certs::CertManager))
        }
        _ => {
            eprintln!(
                "usage: manifest-check manifests FILE | manifest-check rbac FILE (self-issued|cert-manager)"
            );
            return ExitCode::from(2);
        }
    };
    let docs = match read(path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("manifest-check: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let findings = match certs {
        None => manifests(&docs),
        Some(certs) => check_rbac(&docs, certs),
    };
    for f in &findings {
        eprintln!("{f}");
    }
    if findings.is_empty() {
        eprintln!("manifest-check {mode}: {} document(s) OK", docs.len());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn read(path: &str) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn id(doc: &Value) -> String {
    format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Parses `doc` as `T` and reports every path that did not survive the round trip.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> Vec<String> {
    let parsed: T = match serde_path_to_error_free(doc) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: does not parse: {e}", id(doc))],
    };
    let back = match serde_json::to_value(&parsed) {
        Ok(v) => v,
        Err(e) => return vec![format!("{}: does not serialise: {e}", id(doc))],
    };
    let mut lost = Vec::new();
    diff("", doc, &back, &mut lost);
    lost.into_iter()
        .map(|p| {
            format!(
                "{}: field {p} is not part of the type (typo or wrong indentation?)",
                id(doc)
            )
        })
        .collect()
}

fn serde_path_to_error_free<T: DeserializeOwned>(doc: &Value) -> Result<T, String> {
    T::deserialize(doc).map_err(|e| e.to_string())
}

/// Paths present in `a` but absent (or different) in `b`.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff(&format!("{path}.{k}"), v, w, out),
                    None if v.is_null() => {}
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, v) in x.iter().enumerate() {
                match y.get(i) {
                    Some(w) => diff(&format!("{path}[{i}]"), v, w, out),
                    None => out.push(format!("{path}[{i}]")),
                }
            }
        }
        (x, y) if x == y => {}
        // Numbers written as floats that are integers, e.g. `1.0` vs `1`.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ => out.push(format!("{path} (value {a} became {b})")),
    }
}

/// Checks a CR whose type is not in k8s-openapi: required fields by kind.
fn custom(doc: &Value, required: &[&str]) -> Vec<String> {
    required
        .iter()
        .filter(|p| pointer(doc, p).is_none())
        .map(|p| format!("{}: missing {p}", id(doc)))
        .collect()
}

fn pointer<'a>(doc: &'a Value, dotted: &str) -> Option<&'a Value> {
    let ptr = format!("/{}", dotted.replace('.', "/"));
    doc.pointer(&ptr).filter(|v| !v.is_null())
}

fn manifests(docs: &[Value]) -> Vec<String> {
    let mut findings = Vec::new();
    for doc in docs {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        if pointer(doc, "metadata.name").is_none() {
            findings.push(format!("{kind}: no metadata.name"));
        }
        findings.extend(match (api, kind) {
            ("apps/v1", "Deployment") => typed::<Deployment>(doc),
            ("v1", "Service") => typed::<Service>(doc),
            ("v1", "ServiceAccount") => typed::<ServiceAccount>(doc),
            ("v1", "ConfigMap") => typed::<ConfigMap>(doc),
            ("v1", "Secret") => typed::<Secret>(doc),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed::<ClusterRole>(doc),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => typed::<ClusterRoleBinding>(doc),
            ("rbac.authorization.k8s.io/v1", "Role") => typed::<Role>(doc),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed::<RoleBinding>(doc),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                typed::<MutatingWebhookConfiguration>(doc)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                typed::<ValidatingAdmissionPolicy>(doc)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                typed::<ValidatingAdmissionPolicyBinding>(doc)
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => typed::<NetworkPolicy>(doc),
            ("v1", "ResourceQuota") => typed::<ResourceQuota>(doc),
            ("policy/v1", "PodDisruptionBudget") => typed::<PodDisruptionBudget>(doc),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => typed::<CustomResourceDefinition>(doc),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                custom(doc, &["spec.selector", "spec.endpoints.0.port"])
            }
            ("monitoring.coreos.com/v1", "PodMonitor") => {
                custom(doc, &["spec.selector", "spec.podMetricsEndpoints.0.port"])
            }
            ("monitoring.coreos.com/v1", "PrometheusRule") => custom(doc, &["spec.groups.0.rules.0"]),
            ("cert-manager.io/v1", "Certificate") => custom(
                doc,
                &["spec.secretName", "spec.dnsNames.0", "spec.issuerRef.name"],
            ),
            ("cert-manager.io/v1", "Issuer") => custom(doc, &["spec"]),
            _ => vec![format!("{}: unexpected kind {api}/{kind}", id(doc))],
        });
    }
    findings
}

/// One granted (or needed) permission.
type Grant = (String, String, String, Vec<String>);

fn grants_of(rules: &[PolicyRule]) -> Result<BTreeSet<Grant>, String> {
    let mut out = BTreeSet::new();
    for r in rules {
        let names = r.resource_names.clone().unwrap_or_default();
        if r.non_resource_urls.is_some() {
            return Err("non-resource URLs are granted; the operator calls none".to_owned());
        }
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    if g == "*" || res == "*" || v == "*" {
                        return Err(format!("wildcard in rule {g}/{res} {v}"));
                    }
                    out.insert((g.clone(), res.clone(), v.clone(), names.clone()));
                }
            }
        }
    }
    Ok(out)
}

fn needed(rules: &[Rule]) -> BTreeSet<Grant> {
    rules
        .iter()
        .flat_map(|r| {
            r.verbs.iter().map(|v| {
                (
                    r.group.to_owned(),
                    r.resource.to_owned(),
                    (*v).to_owned(),
                    r.resource_names.iter().map(|n| (*n).to_owned()).collect(),
                )
            })
        })
        .collect()
}

fn compare(what: &str, granted: Result<BTreeSet<Grant>, String>, needed: BTreeSet<Grant>) -> Vec<String> {
    let granted = match granted {
        Ok(g) => g,
        Err(e) => return vec![format!("{what}: {e}")],
    };
    let show = |(g, r, v, n): &Grant| {
        let names = if n.is_empty() {
            String::new()
        } else {
            format!(" (names {})", n.join(","))
        };
        format!("{v} {}/{r}{names}", if g.is_empty() { "core" } else { g })
    };
    let mut out: Vec<String> = needed
        .difference(&granted)
        .map(|g| format!("{what}: the operator calls {} but it is not granted", show(g)))
        .collect();
    out.extend(
        granted
            .difference(&needed)
            .map(|g| format!("{what}: grants {} which the operator never calls", show(g))),
    );
    out
}

fn check_rbac(docs: &[Value], certs: Certs) -> Vec<String> {
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == "detour-operator")
    };
    let mut findings = Vec::new();
    let roles = [
        (
            "ClusterRole",
            find("ClusterRole").map(|d| ClusterRole::deserialize(d).map(|r| r.rules)),
            rbac::cluster(certs),
        ),
        (
            "Role",
            find("Role").map(|d| Role::deserialize(d).map(|r| r.rules)),
            rbac::namespaced(certs),
        ),
    ];
    for (kind, rules, calls) in roles {
        match rules {
            Some(Ok(rules)) => findings.extend(compare(
                &format!("{kind} detour-operator"),
                grants_of(rules.as_deref().unwrap_or_default()),
                needed(&calls),
            )),
            Some(Err(e)) => findings.push(format!("{kind} detour-operator does not parse: {e}")),
            None => findings.push(format!("no {kind} detour-operator")),
        }
    }
    let what = format!("ClusterRole {}", rbac::CREDENTIALS_READER_ROLE);
    let reader = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == rbac::CREDENTIALS_READER_ROLE);
    match reader.map(ClusterRole::deserialize) {
        Some(Ok(role)) => findings.extend(compare(
            &what,
            grants_of(role.rules.as_deref().unwrap_or_default()),
            needed(rbac::CREDENTIALS_READER),
        )),
        Some(Err(e)) => findings.push(format!("{what} does not parse: {e}")),
        None => findings.push(format!("no {what}")),
    }
    findings
}
