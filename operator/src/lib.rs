//! `detour-operator`: reconciles ModelRoutes and RoutingPolicies into the per-namespace
//! `detour-routes` ConfigMap, and injects the sidecar into pods that opt in.
//!
//! - [`controller`]: the route controller (gather → compile → apply → status, a module each);
//! - [`fleet`], [`fleet_gather`], [`fleet_status`]: fleet health (the sidecars' breakers, gathered and
//!   aggregated per namespace, written into ModelRoute status, and sent back to them);
//! - [`leader`]: leader election on a `coordination.k8s.io` Lease;
//! - [`webhook`]: the injection webhook (pure patch building and its TLS server);
//! - [`certs`]: the webhook's self-issued CA and serving certificate;
//! - [`rbac`]: every API call the operator makes, the source of the chart's ClusterRole test;
//! - [`metrics`], [`server`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`crdgen`]: the CRDs from the Rust types.

pub mod certs;
pub mod controller;
pub mod crdgen;
pub mod fleet;
pub mod fleet_gather;
pub mod fleet_status;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod server;
pub mod webhook;

#[cfg(test)]
pub mod fixtures;
#[cfg(test)]
pub mod verifier;
