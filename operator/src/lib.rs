//! `detour-operator`: reconciles ModelRoutes and RoutingPolicies into the per-namespace
//! `detour-routes` ConfigMap, and injects the sidecar into pods that opt in.
//!
//! This crate currently provides the CRD generator; the controllers land with the control
//! plane.

pub mod crdgen;
