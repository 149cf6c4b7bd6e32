//! Prometheus metrics (prefix `detour_`). Label values come only from the route table
//! (route ids, target names) and closed enums ([`crate::class::Class`], outcomes, reasons),
//! never from request content.
//!
//! The fallback rate is
//! `sum(rate(detour_requests_total{fallback="true"}[5m])) / sum(rate(detour_requests_total[5m]))`.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the sidecar exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub attempts: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub request_duration: HistogramVec,
    pub attempt_duration: HistogramVec,
    pub first_byte: HistogramVec,
    pub overhead: HistogramVec,
    pub breaker_state: IntGaugeVec,
    pub degraded: IntGaugeVec,
    pub in_flight: IntGauge,
    pub tokens: IntCounterVec,
    pub cost: GaugeVec,
    pub stream_errors: IntCounterVec,
    pub budget_exhausted: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub request_score: HistogramVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const SCORE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
];

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let in_flight = IntGauge::new("detour_in_flight_requests", "Requests being served now.")?;
        r.register(Box::new(in_flight.clone()))?;
        let cost = GaugeVec::new(
            Opts::new(
                "detour_cost_usd_total",
                "Estimated spend in USD from the upstream's reported usage and the target's cost.",
            ),
            &["route", "target"],
        )?;
        r.register(Box::new(cost.clone()))?;
        Ok(Self {
            requests: counter(
                &r,
                "detour_requests_total",
                "Requests answered, by route, serving target, outcome and whether a fallback served it.",
                &["route", "target", "outcome", "fallback"],
            )?,
            attempts: counter(
                &r,
                "detour_attempts_total",
                "Upstream attempts by route, target and class.",
                &["route", "target", "class"],
            )?,
            fallbacks: counter(
                &r,
                "detour_fallbacks_total",
                "Moves from one target to the next, booked to the target that failed (from).",
                &["route", "from", "to", "reason"],
            )?,
            request_duration: histogram(
                &r,
                "detour_request_duration_seconds",
                "Whole-request latency as the client saw it (to the last byte).",
                &["route"],
                LATENCY_BUCKETS,
            )?,
            attempt_duration: histogram(
                &r,
                "detour_attempt_duration_seconds",
                "Latency of one upstream attempt, by class.",
                &["route", "target", "class"],
                LATENCY_BUCKETS,
            )?,
            first_byte: histogram(
                &r,
                "detour_first_byte_seconds",
                "Time to the first upstream event of streams (TTFT).",
                &["route", "target"],
                LATENCY_BUCKETS,
            )?,
            overhead: histogram(
                &r,
                "detour_overhead_seconds",
                "Time spent in the sidecar itself, excluding upstream waits and backoff.",
                &["route"],
                OVERHEAD_BUCKETS,
            )?,
            breaker_state: gauge(
                &r,
                "detour_breaker_state",
                "Circuit state per target: 0 closed, 1 half-open, 2 open.",
                &["route", "target"],
            )?,
            degraded: gauge(
                &r,
                "detour_target_degraded",
                "1 when the target's latency is over the policy's threshold.",
                &["route", "target"],
            )?,
            in_flight,
            tokens: counter(
                &r,
                "detour_tokens_total",
                "Tokens reported by upstreams' usage, by kind (prompt, completion).",
                &["route", "target", "kind"],
            )?,
            cost,
            stream_errors: counter(
                &r,
                "detour_stream_errors_total",
                "Streams ended with an error event after bytes had reached the client.",
                &["route", "target"],
            )?,
            budget_exhausted: counter(
                &r,
                "detour_retry_budget_exhausted_total",
                "Same-target retries skipped because the route's retry budget was spent.",
                &["route"],
            )?,
            reloads: counter(
                &r,
                "detour_config_reloads_total",
                "Route table loads, by result (ok, error).",
                &["result"],
            )?,
            config_info: gauge(
                &r,
                "detour_config_info",
                "1 for the content hash of the route table being served.",
                &["hash"],
            )?,
            request_score: histogram(
                &r,
                "detour_request_score",
                "Complexity scores of requests under the cost/quality strategies, by route and scorer version.",
                &["route", "scorer"],
                SCORE_BUCKETS,
            )?,
            registry: r,
        })
    }

    /// The text exposition.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
