//! What `compile` says about the objects it read: each [`Diagnostic`] is located on one
//! object and field, and [`Compiled::readiness`] turns an object's diagnostics into the
//! `Ready` (and `Conflict`) verdict the operator writes into its status.
//!
//! [`Diags`] is the one sink every phase writes into. Its writers return the diagnostic they
//! recorded, so a phase that must give up says why in one expression:
//! `return Err(diags.error(..))`.

use std::fmt;

use super::Compiled;
use crate::crd::{ModelRoute, ObjectMeta, RoutingPolicy};
use crate::defaults;

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

impl ObjectKey {
    /// The key of a ModelRoute (namespace [`defaults::NAMESPACE`] when it has none).
    pub fn of_route(route: &ModelRoute) -> Self {
        Self::of(Kind::ModelRoute, route)
    }

    /// The key of a RoutingPolicy (namespace [`defaults::NAMESPACE`] when it has none).
    pub fn of_policy(policy: &RoutingPolicy) -> Self {
        Self::of(Kind::RoutingPolicy, policy)
    }

    fn of<K: ObjectMeta>(kind: Kind, object: &K) -> Self {
        Self {
            kind,
            namespace: namespace_of(object),
            name: object.object_name(),
        }
    }

    /// `namespace/name`, as a route table names a policy.
    pub(super) fn to_source(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An object's namespace, [`defaults::NAMESPACE`] when it has none (a standalone file).
pub(super) fn namespace_of<K: ObjectMeta>(o: &K) -> String {
    o.object_namespace()
        .unwrap_or_else(|| defaults::NAMESPACE.to_owned())
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

/// Every diagnostic of one `compile`, in the order the phases found them.
#[derive(Debug, Default)]
pub(super) struct Diags(Vec<Diagnostic>);

/// A position in [`Diags`]: what was found after it is what a phase found.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mark(usize);

impl Diags {
    /// Records an error and returns it.
    pub(super) fn error(
        &mut self,
        object: &ObjectKey,
        field: impl Into<String>,
        reason: Reason,
        message: String,
    ) -> Diagnostic {
        self.add(Severity::Error, object, field.into(), reason, message)
    }

    /// Records a diagnostic and returns it.
    pub(super) fn add(
        &mut self,
        severity: Severity,
        object: &ObjectKey,
        field: String,
        reason: Reason,
        message: String,
    ) -> Diagnostic {
        let d = Diagnostic {
            object: object.clone(),
            field,
            severity,
            reason,
            message,
        };
        self.0.push(d.clone());
        d
    }

    /// The position now, for [`Self::first_since`].
    pub(super) fn mark(&self) -> Mark {
        Mark(self.0.len())
    }

    /// `Err` with the first diagnostic recorded since `mark`: the one that says why a step
    /// gave up. `Ok` when there was none.
    pub(super) fn first_since(&self, mark: Mark) -> Result<(), Diagnostic> {
        match self.0.get(mark.0) {
            Some(d) => Err(d.clone()),
            None => Ok(()),
        }
    }

    /// Whether `object` has an error.
    pub(super) fn has_error(&self, object: &ObjectKey) -> bool {
        self.0
            .iter()
            .any(|d| &d.object == object && d.severity == Severity::Error)
    }

    /// All of them, each object's together (errors first), in the order found within.
    pub(super) fn into_sorted(self) -> Vec<Diagnostic> {
        let mut diagnostics = self.0;
        diagnostics.sort_by(|a, b| (&a.object, a.severity).cmp(&(&b.object, b.severity)));
        diagnostics
    }
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
