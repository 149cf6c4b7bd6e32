//! `detour-api`: Detour's custom resources, the compiled route table that the operator writes
//! into the `detour-routes` ConfigMap, and the pure [`compile()`] between them.
//!
//! No I/O and no Kubernetes client live here, so the operator, the standalone sidecar and the
//! tests all compile routes the same way.

pub mod compile;
pub mod crd;
pub mod defaults;
pub mod duration;
pub mod egress;
pub mod load;
pub mod table;

pub use compile::{
    Compiled, Diagnostic, Input, Kind, Mode, ObjectKey, Readiness, Reason, SecretIndex, SecretState,
    Severity, compile,
};
pub use crd::{ModelRoute, ModelRouteSpec, RoutingPolicy, RoutingPolicySpec};
pub use load::{LoadError, compile_yaml, compile_yaml_with, parse_yaml};
pub use table::{RouteTable, TableError};
