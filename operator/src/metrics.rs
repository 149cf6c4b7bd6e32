//! The operator's Prometheus metrics (prefix `detour_operator_`).
//!
//! Label values come from enum discriminants only (the error kind, the injection outcome),
//! never from object names or error text, so cardinality is bounded by the code.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the operator exports, registered in one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles of a namespace, successful or not.
    pub reconciles: IntCounter,
    /// Failed reconciles by [`crate::controller::Error::kind`].
    pub reconcile_errors: IntCounterVec,
    /// Wall time of one reconcile.
    pub reconcile_duration: Histogram,
    /// Admission reviews answered, by `outcome` (`injected`, `skipped`, `denied`).
    pub injections: IntCounterVec,
    /// Admission reviews denied, by `reason`.
    pub webhook_denials: IntCounterVec,
    /// Webhook serving certificates issued by the operator.
    pub certificates_issued: IntCounter,
    /// Fleet-health polls of sidecars, by `result` (`ok`, `failed`).
    pub fleet_polls: IntCounterVec,
    /// Wall time of one fleet-health round (every injected pod asked once).
    pub fleet_round_duration: Histogram,
    /// Injected pods in the fleet (reporting or not).
    pub fleet_pods: IntGauge,
    /// `status.targets` writes, and Events on target transitions.
    pub fleet_status_writes: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics. Fails only if two metrics share a name (a bug).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounter::with_opts(Opts::new(
            "detour_operator_reconciles_total",
            "Reconciles of a namespace's ModelRoutes and RoutingPolicies",
        ))?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "detour_operator_reconcile_errors_total",
                "Failed reconciles, by error kind",
            ),
            &["kind"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "detour_operator_reconcile_duration_seconds",
                "Duration of one reconcile",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let injections = IntCounterVec::new(
            Opts::new(
                "detour_operator_injections_total",
                "Pod admission reviews answered by the injection webhook, by outcome",
            ),
            &["outcome"],
        )?;
        let webhook_denials = IntCounterVec::new(
            Opts::new(
                "detour_operator_webhook_denials_total",
                "Pods the injection webhook denied, by reason",
            ),
            &["reason"],
        )?;
        let certificates_issued = IntCounter::with_opts(Opts::new(
            "detour_operator_certificates_issued_total",
            "Webhook serving certificates issued by the operator",
        ))?;
        let fleet_polls = IntCounterVec::new(
            Opts::new(
                "detour_operator_fleet_polls_total",
                "Fleet-health polls of sidecar admin ports, by result",
            ),
            &["result"],
        )?;
        let fleet_round_duration = Histogram::with_opts(
            HistogramOpts::new(
                "detour_operator_fleet_round_duration_seconds",
                "Duration of one fleet-health round (every injected pod asked once)",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]),
        )?;
        let fleet_pods = IntGauge::with_opts(Opts::new(
            "detour_operator_fleet_pods",
            "Injected pods the operator gathers health from",
        ))?;
        let fleet_status_writes = IntCounter::with_opts(Opts::new(
            "detour_operator_fleet_status_writes_total",
            "ModelRoute status writes for the live health of targets",
        ))?;
        registry.register(Box::new(fleet_polls.clone()))?;
        registry.register(Box::new(fleet_round_duration.clone()))?;
        registry.register(Box::new(fleet_pods.clone()))?;
        registry.register(Box::new(fleet_status_writes.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(injections.clone()))?;
        registry.register(Box::new(webhook_denials.clone()))?;
        registry.register(Box::new(certificates_issued.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            injections,
            webhook_denials,
            certificates_issued,
            fleet_polls,
            fleet_round_duration,
            fleet_pods,
            fleet_status_writes,
        })
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
