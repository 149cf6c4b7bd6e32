//! The operator's Prometheus metrics (prefix `detour_operator_`).
//!
//! Label values come from enum discriminants only (the error kind, the injection outcome),
//! never from object names or error text, so cardinality is bounded by the code.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

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
