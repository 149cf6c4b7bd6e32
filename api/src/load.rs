//! Standalone loading: a multi-document YAML file of ModelRoutes and RoutingPolicies, as
//! `kubectl apply -f` would take it, compiled by the same [`crate::compile()`].

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::compile::{Compiled, Input, compile};
use crate::crd::{ModelRoute, RoutingPolicy};
use crate::egress::AllowedHosts;

const API_VERSION: &str = "detour.dev/v1alpha1";

/// Why a routes file could not be read. Each names the document and the field.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("document {doc}: not valid YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error("document {doc}: {field}: {message}")]
    Field {
        doc: usize,
        field: String,
        message: String,
    },
    #[error(
        "document {doc}: kind {kind:?} is not a Detour resource; this file may hold only ModelRoute and RoutingPolicy ({API_VERSION})"
    )]
    UnknownKind { doc: usize, kind: String },
    #[error("document {doc}: apiVersion {found:?} is not supported; use apiVersion: {API_VERSION}")]
    ApiVersion { doc: usize, found: String },
    #[error("document {doc}: {kind} {name:?} appears twice in namespace {namespace:?}")]
    Duplicate {
        doc: usize,
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("no ModelRoute found; the file must declare at least one")]
    Empty,
}

/// The objects of a routes file.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub routes: Vec<ModelRoute>,
    pub policies: Vec<RoutingPolicy>,
}

/// Parses a multi-document YAML file. Documents are counted from 1; empty documents are skipped.
pub fn parse_yaml(text: &str) -> Result<Objects, LoadError> {
    let mut objects = Objects::default();
    let mut seen = std::collections::BTreeSet::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value: serde_norway::Value =
            serde::Deserialize::deserialize(document).map_err(|e| LoadError::Yaml {
                doc,
                message: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        if kind.is_empty() {
            return Err(LoadError::Field {
                doc,
                field: "kind".into(),
                message: "is required (ModelRoute or RoutingPolicy)".into(),
            });
        }
        if !matches!(kind.as_str(), "ModelRoute" | "RoutingPolicy") {
            return Err(LoadError::UnknownKind { doc, kind });
        }
        if api_version != API_VERSION {
            return Err(LoadError::ApiVersion {
                doc,
                found: api_version,
            });
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("");
        if name.is_empty() {
            return Err(LoadError::Field {
                doc,
                field: "metadata.name".into(),
                message: "is required".into(),
            });
        }
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or(crate::defaults::NAMESPACE)
            .to_owned();
        let (kind_str, name) = (
            if kind == "ModelRoute" {
                "ModelRoute"
            } else {
                "RoutingPolicy"
            },
            name.to_owned(),
        );
        if !seen.insert((kind_str, namespace.clone(), name.clone())) {
            return Err(LoadError::Duplicate {
                doc,
                kind: kind_str,
                namespace,
                name,
            });
        }
        if kind == "ModelRoute" {
            let mut route: ModelRoute = typed(value, doc)?;
            route.metadata.namespace = Some(namespace);
            objects.routes.push(route);
        } else {
            let mut policy: RoutingPolicy = typed(value, doc)?;
            policy.metadata.namespace = Some(namespace);
            objects.policies.push(policy);
        }
    }
    if objects.routes.is_empty() {
        return Err(LoadError::Empty);
    }
    Ok(objects)
}

fn typed<T: DeserializeOwned>(value: serde_norway::Value, doc: usize) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(value).map_err(|e| LoadError::Field {
        doc,
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Parses and compiles a standalone routes file with the standalone defaults (credentials
/// under [`crate::defaults::CREDENTIALS_ROOT`], the providers' hosts and loopback allowed).
pub fn compile_yaml(text: &str) -> Result<Compiled, LoadError> {
    let objects = parse_yaml(text)?;
    Ok(compile(&Input::standalone(&objects.routes, &objects.policies)))
}

/// Parses and compiles a standalone routes file with the sidecar's `--credentials-dir` and
/// `--allowed-hosts`.
pub fn compile_yaml_with(
    text: &str,
    credentials_root: &str,
    allowed_hosts: &AllowedHosts,
) -> Result<Compiled, LoadError> {
    let objects = parse_yaml(text)?;
    Ok(compile(
        &Input::standalone(&objects.routes, &objects.policies)
            .with_credentials_root(credentials_root)
            .with_allowed_hosts(allowed_hosts),
    ))
}
