//! Prometheus metrics (prefix `detour_`). Label values come only from the route table
//! (route ids, target names) and closed enums ([`crate::class::Class`], outcomes, reasons),
//! never from request content.
//!
//! The fallback rate is
//! `sum(rate(detour_requests_total{fallback="true"}[5m])) / sum(rate(detour_requests_total[5m]))`.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::class::Class;

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
    pub fleet_held: IntGaugeVec,
    pub degraded: IntGaugeVec,
    pub in_flight: IntGauge,
    pub tokens: IntCounterVec,
    pub cost: GaugeVec,
    pub stream_errors: IntCounterVec,
    /// Broken streams the policy asked to continue, by route, the target that broke (from),
    /// the target asked to continue (to, `none` when none was) and result (`ok`, the failed
    /// attempt's class, or why none was asked).
    pub stream_continuations: IntCounterVec,
    pub stream_anomalies: IntCounterVec,
    pub breaker_transitions: IntCounterVec,
    pub budget_exhausted: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub request_score: HistogramVec,
    /// Requests the sidecar refused before routing (malformed, over a limit), by reason.
    pub refused: IntCounterVec,
    /// Connections open now on the API and admin listeners.
    pub connections: IntGauge,
    /// Told of every connection and request, to give freed heap pages back after them.
    pub heap: std::sync::Arc<crate::heap::HeapWatch>,
    /// Bytes held under the buffer budget (set when scraped).
    pub buffered_bytes: IntGauge,
    pub score_threshold: GaugeVec,
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
        let connections = IntGauge::new(
            "detour_open_connections",
            "Connections open now on the API and admin listeners.",
        )?;
        r.register(Box::new(connections.clone()))?;
        let buffered_bytes = IntGauge::new(
            "detour_buffered_bytes",
            "Request and answer bytes held under the buffer budget (--max-buffered-bytes).",
        )?;
        r.register(Box::new(buffered_bytes.clone()))?;
        let cost = GaugeVec::new(
            Opts::new(
                "detour_cost_usd_total",
                "Estimated spend in USD from the upstream's reported usage and the target's cost.",
            ),
            &["route", "target"],
        )?;
        r.register(Box::new(cost.clone()))?;
        let score_threshold = GaugeVec::new(
            Opts::new(
                "detour_score_threshold",
                "Thresholds a route's cheapShare set from its recent scores, by route and bound (simple_below, complex_above).",
            ),
            &["route", "bound"],
        )?;
        r.register(Box::new(score_threshold.clone()))?;
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
            fleet_held: gauge(
                &r,
                "detour_breaker_fleet_held",
                "1 while the target is open or probing only because the fleet holds it open (the operator's view), not on this pod's own observations.",
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
            stream_continuations: counter(
                &r,
                "detour_stream_continuations_total",
                "Broken streams continued by another target, by route, from, to and result.",
                &["route", "from", "to", "result"],
            )?,
            stream_errors: counter(
                &r,
                "detour_stream_errors_total",
                "Streams ended with an error event after bytes had reached the client.",
                &["route", "target"],
            )?,
            stream_anomalies: counter(
                &r,
                "detour_stream_anomalies_total",
                "Undecodable events of pass-through streams, forwarded to the client as they came (never charged to the breaker).",
                &["route", "target"],
            )?,
            breaker_transitions: counter(
                &r,
                "detour_breaker_transitions_total",
                "Circuit state changes per target, by the state entered (closed, half-open, open).",
                &["route", "target", "to"],
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
            refused: counter(
                &r,
                "detour_refused_requests_total",
                "Requests refused before routing (malformed, over a size or time limit), by reason.",
                &["reason"],
            )?,
            connections,
            heap: std::sync::Arc::default(),
            buffered_bytes,
            score_threshold,
            registry: r,
        })
    }

    /// Counts a connection in `detour_open_connections` (and tells the heap watch) until the
    /// returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.inc();
        self.heap.opened(self.connections.get());
        OpenConnection {
            gauge: self.connections.clone(),
            heap: self.heap.clone(),
        }
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

/// One connection counted in `detour_open_connections` ([`Metrics::connection_opened`]).
#[derive(Debug)]
pub struct OpenConnection {
    gauge: IntGauge,
    heap: std::sync::Arc<crate::heap::HeapWatch>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
        self.heap.closed(self.gauge.get());
    }
}

/// Outcome label of `detour_requests_total` (a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served by a target.
    Ok,
    /// An upstream client error, returned as-is.
    ClientError,
    /// An upstream failure the policy does not fail over on, returned.
    UpstreamError,
    /// Every target failed or was unavailable: 503.
    Exhausted,
    /// Refused by the sidecar before any attempt (bad request, unknown model, 403).
    Rejected,
    /// A stream that broke after its first byte.
    StreamError,
    /// The client went away before the end.
    Cancelled,
}

impl Outcome {
    const COUNT: usize = 7;

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
            Self::Exhausted => "exhausted",
            Self::Rejected => "rejected",
            Self::StreamError => "stream_error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One labelled child of a metric family, looked up on first use and kept: the request path
/// then costs an atomic add instead of hashing label values under a lock. Created lazily so a
/// series appears in `/metrics` only once something happened, as with `with_label_values`.
type Cell<T> = OnceLock<T>;

/// `detour_requests_total` children of one (route, target) pair, by outcome and fallback.
#[derive(Debug, Default)]
struct RequestCells([[Cell<IntCounter>; 2]; Outcome::COUNT]);

impl RequestCells {
    fn get(
        &self,
        m: &Metrics,
        route: &str,
        target: &str,
        outcome: Outcome,
        fallback: bool,
    ) -> Option<&IntCounter> {
        let cell = self.0.get(outcome as usize)?.get(usize::from(fallback))?;
        Some(cell.get_or_init(|| {
            m.requests.with_label_values(&[
                route,
                target,
                outcome.as_str(),
                if fallback { "true" } else { "false" },
            ])
        }))
    }
}

/// The metric children of one route, resolved once per route table load.
#[derive(Debug)]
pub struct RouteMetrics {
    m: Metrics,
    route: String,
    request_duration: Cell<Histogram>,
    overhead: Cell<Histogram>,
    score: Cell<Histogram>,
    budget_exhausted: Cell<IntCounter>,
    /// Requests no target took part in (`target="none"`).
    untargeted: RequestCells,
}

impl RouteMetrics {
    pub fn new(m: &Metrics, route: &str) -> Self {
        Self {
            m: m.clone(),
            route: route.to_owned(),
            request_duration: Cell::new(),
            overhead: Cell::new(),
            score: Cell::new(),
            budget_exhausted: Cell::new(),
            untargeted: RequestCells::default(),
        }
    }

    pub fn request_duration(&self) -> &Histogram {
        self.request_duration
            .get_or_init(|| self.m.request_duration.with_label_values(&[self.route.as_str()]))
    }

    pub fn overhead(&self) -> &Histogram {
        self.overhead
            .get_or_init(|| self.m.overhead.with_label_values(&[self.route.as_str()]))
    }

    pub fn score(&self, scorer: &'static str) -> &Histogram {
        self.score.get_or_init(|| {
            self.m
                .request_score
                .with_label_values(&[self.route.as_str(), scorer])
        })
    }

    /// Exports the thresholds a share calibration set.
    pub fn score_thresholds(&self, (simple_below, complex_above): (f64, f64)) {
        let g = &self.m.score_threshold;
        g.with_label_values(&[self.route.as_str(), "simple_below"])
            .set(simple_below);
        g.with_label_values(&[self.route.as_str(), "complex_above"])
            .set(complex_above);
    }

    pub fn budget_exhausted(&self) -> &IntCounter {
        self.budget_exhausted
            .get_or_init(|| self.m.budget_exhausted.with_label_values(&[self.route.as_str()]))
    }

    /// `detour_requests_total{target="none"}`.
    pub fn untargeted(&self, outcome: Outcome, fallback: bool) {
        if let Some(c) = self
            .untargeted
            .get(&self.m, &self.route, "none", outcome, fallback)
        {
            c.inc();
        }
    }
}

/// The metric children of one target of one route, resolved once per route table load.
#[derive(Debug)]
pub struct TargetMetrics {
    m: Metrics,
    route: String,
    target: String,
    attempts: [Cell<IntCounter>; Class::COUNT],
    attempt_duration: [Cell<Histogram>; Class::COUNT],
    requests: RequestCells,
    breaker_state: Cell<IntGauge>,
    fleet_held: Cell<IntGauge>,
    degraded: Cell<IntGauge>,
    first_byte: Cell<Histogram>,
    tokens: [Cell<IntCounter>; 2],
    cost: Cell<Gauge>,
    stream_errors: Cell<IntCounter>,
    stream_anomalies: Cell<IntCounter>,
    transitions: [Cell<IntCounter>; 3],
}

impl TargetMetrics {
    pub fn new(m: &Metrics, route: &str, target: &str) -> Self {
        Self {
            m: m.clone(),
            route: route.to_owned(),
            target: target.to_owned(),
            attempts: Default::default(),
            attempt_duration: Default::default(),
            requests: RequestCells::default(),
            breaker_state: Cell::new(),
            fleet_held: Cell::new(),
            degraded: Cell::new(),
            first_byte: Cell::new(),
            tokens: Default::default(),
            cost: Cell::new(),
            stream_errors: Cell::new(),
            stream_anomalies: Cell::new(),
            transitions: Default::default(),
        }
    }

    fn labels3<'a>(&'a self, third: &'a str) -> [&'a str; 3] {
        [self.route.as_str(), self.target.as_str(), third]
    }

    /// Counts one attempt of class `class` that took `secs`.
    pub fn attempt(&self, class: Class, secs: f64) {
        if let Some(c) = self.attempts.get(class.index()) {
            c.get_or_init(|| self.m.attempts.with_label_values(&self.labels3(class.as_str())))
                .inc();
        }
        if let Some(h) = self.attempt_duration.get(class.index()) {
            h.get_or_init(|| {
                self.m
                    .attempt_duration
                    .with_label_values(&self.labels3(class.as_str()))
            })
            .observe(secs);
        }
    }

    /// `detour_requests_total` for a request this target served or failed last.
    pub fn request(&self, outcome: Outcome, fallback: bool) {
        if let Some(c) = self
            .requests
            .get(&self.m, &self.route, &self.target, outcome, fallback)
        {
            c.inc();
        }
    }

    pub fn breaker_state(&self) -> &IntGauge {
        self.breaker_state.get_or_init(|| {
            self.m
                .breaker_state
                .with_label_values(&[self.route.as_str(), self.target.as_str()])
        })
    }

    pub fn fleet_held(&self) -> &IntGauge {
        self.fleet_held.get_or_init(|| {
            self.m
                .fleet_held
                .with_label_values(&[self.route.as_str(), self.target.as_str()])
        })
    }

    pub fn degraded(&self) -> &IntGauge {
        self.degraded.get_or_init(|| {
            self.m
                .degraded
                .with_label_values(&[self.route.as_str(), self.target.as_str()])
        })
    }

    pub fn first_byte(&self) -> &Histogram {
        self.first_byte.get_or_init(|| {
            self.m
                .first_byte
                .with_label_values(&[self.route.as_str(), self.target.as_str()])
        })
    }

    /// Adds reported token counts (and their cost, when the target has one).
    pub fn usage(&self, prompt: u64, completion: u64, cost_usd: Option<f64>) {
        for (i, (kind, n)) in [("prompt", prompt), ("completion", completion)]
            .into_iter()
            .enumerate()
        {
            if let Some(c) = self.tokens.get(i) {
                c.get_or_init(|| self.m.tokens.with_label_values(&self.labels3(kind)))
                    .inc_by(n);
            }
        }
        if let Some(usd) = cost_usd {
            self.cost
                .get_or_init(|| {
                    self.m
                        .cost
                        .with_label_values(&[self.route.as_str(), self.target.as_str()])
                })
                .add(usd);
        }
    }

    /// Counts one undecodable event passed through.
    pub fn stream_anomaly(&self) {
        self.stream_anomalies
            .get_or_init(|| {
                self.m
                    .stream_anomalies
                    .with_label_values(&[self.route.as_str(), self.target.as_str()])
            })
            .inc();
    }

    /// Counts one breaker transition into the state with gauge value `to` (0 closed,
    /// 1 half-open, 2 open).
    pub fn breaker_transition(&self, to: i64) {
        const NAMES: [&str; 3] = ["closed", "half-open", "open"];
        let i = usize::try_from(to).unwrap_or(0).min(2);
        if let (Some(c), Some(name)) = (self.transitions.get(i), NAMES.get(i)) {
            c.get_or_init(|| self.m.breaker_transitions.with_label_values(&self.labels3(name)))
                .inc();
        }
    }

    pub fn stream_error(&self) {
        self.stream_errors
            .get_or_init(|| {
                self.m
                    .stream_errors
                    .with_label_values(&[self.route.as_str(), self.target.as_str()])
            })
            .inc();
    }
}
