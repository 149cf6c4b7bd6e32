//! The request's context ([`Ctx`]): what is known about one request, the recorder of each
//! attempt (breaker, metrics, audit), and the request's metrics and audit line when it ends.
//! What goes to the client is [`super::respond`]'s; its `x-detour-*` headers are written by
//! [`crate::layers::request_id`] from the [`crate::headers::Stamp`] the response carries.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::audit::{AttemptRecord, AuditRecord, ContinuationRecord, SkipRecord};
use crate::class::Class;
use crate::health::{Admission, Verdict};
use crate::metrics::Outcome;
use crate::providers::Endpoint;
use crate::responses::Echo;
use crate::routing;
use crate::state::{RouteRt, TargetRt};

/// Keeps `detour_in_flight_requests` right whatever way a request ends.
#[derive(Debug)]
pub(super) struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Everything known about one request, turned into metrics and the audit line at the end.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) shared: Arc<Shared>,
    pub(super) request_id: String,
    pub(super) endpoint: Endpoint,
    pub(super) start: Instant,
    pub(super) route: Option<Arc<RouteRt>>,
    pub(super) rule: Option<String>,
    /// How a cost/quality strategy placed the request.
    pub(super) score: Option<routing::ScoreDecision>,
    pub(super) stream: bool,
    pub(super) attempts: Vec<AttemptRecord>,
    pub(super) skipped: Vec<SkipRecord>,
    /// The target that served, or the last one tried.
    pub(super) target: Option<Arc<TargetRt>>,
    pub(super) fallback_count: u32,
    /// Time spent waiting on upstreams and backoff: not the sidecar's overhead.
    pub(super) waited: Duration,
    pub(super) overhead: Option<Duration>,
    /// The response went to the server (time after that is not overhead nor waiting).
    pub(super) committed: bool,
    /// A Responses API request translated to chat: the request fields its answer echoes
    /// (`None`: the client speaks the endpoint itself).
    pub(super) responses: Option<Echo>,
    pub(super) _in_flight: InFlight,
}

/// How one attempt ended, as the recorder needs it.
#[derive(Debug)]
pub(super) struct AttemptEnd {
    pub(super) class: Class,
    pub(super) status: Option<u16>,
    pub(super) retry_after: Option<Duration>,
    pub(super) elapsed: Duration,
    pub(super) latency: Duration,
    /// The failure's own words, kept for the classes whose cause is the sidecar's to name.
    pub(super) detail: Option<Cow<'static, str>>,
    /// The provider's own id of the request, when its answer had one.
    pub(super) upstream_id: Option<String>,
}

impl Ctx {
    pub(super) fn new(
        shared: Arc<Shared>,
        request_id: String,
        endpoint: Endpoint,
        responses: Option<Echo>,
    ) -> Self {
        shared.metrics.in_flight.inc();
        shared.metrics.heap.touch();
        let gauge = shared.metrics.in_flight.clone();
        Self {
            shared,
            request_id,
            endpoint,
            start: Instant::now(),
            route: None,
            rule: None,
            score: None,
            stream: false,
            attempts: Vec::new(),
            skipped: Vec::new(),
            target: None,
            fallback_count: 0,
            waited: Duration::ZERO,
            overhead: None,
            committed: false,
            responses,
            _in_flight: InFlight(gauge),
        }
    }

    pub(super) fn route_label(&self) -> &str {
        self.route.as_ref().map_or("none", |r| r.route.model.as_str())
    }

    /// Records one classified attempt when it ends: breaker, metrics, audit. The only place
    /// that does. `elapsed` is the attempt's whole duration; `latency` what the breaker's
    /// latency average takes (time to the first event for streams).
    pub(super) fn record(&mut self, target: &Arc<TargetRt>, admission: Admission, end: &AttemptEnd) {
        let name = target.cfg.name.as_str();
        let now = Instant::now();
        let class = end.class;
        target.with_breaker(now, class.as_str(), |b| {
            b.record(now, admission, Verdict::of(class, end.latency, end.retry_after));
        });
        target.metrics.attempt(class, end.elapsed.as_secs_f64());
        if !self.committed {
            self.waited += end.elapsed;
        }
        tracing::debug!(
            request_id = %self.request_id,
            route = self.route_label(),
            target = name,
            class = class.as_str(),
            status = end.status,
            elapsed_ms = ms(end.elapsed),
            "attempt"
        );
        self.target = Some(target.clone());
        self.attempts.push(AttemptRecord {
            target: target.name.clone(),
            class,
            status: end.status,
            latency_ms: ms(end.elapsed),
            detail: end.detail.clone(),
            upstream_request_id: end.upstream_id.clone(),
        });
    }

    /// The moment the response is handed to the server: what the sidecar itself cost.
    pub(super) fn commit(&mut self) {
        let total = self.start.elapsed();
        self.overhead = Some(total.saturating_sub(self.waited));
        self.committed = true;
    }

    /// Writes the request's metrics and audit line.
    pub(super) fn finish(self, status: u16, outcome: Outcome, stream_error: Option<Class>) {
        self.finish_stream(status, outcome, stream_error, Vec::new());
    }

    /// [`Ctx::finish`] with the breaks of a stream and their continuations.
    pub(super) fn finish_stream(
        self,
        status: u16,
        outcome: Outcome,
        stream_error: Option<Class>,
        continuations: Vec<ContinuationRecord>,
    ) {
        let latency = self.start.elapsed();
        let overhead = self
            .overhead
            .unwrap_or_else(|| latency.saturating_sub(self.waited));
        let fallback = self.fallback_count > 0;
        match (&self.route, &self.target) {
            (Some(route), target) => {
                match target {
                    Some(t) => t.metrics.request(outcome, fallback),
                    None => route.metrics.untargeted(outcome, fallback),
                }
                route.metrics.request_duration().observe(latency.as_secs_f64());
                route.metrics.overhead().observe(overhead.as_secs_f64());
            }
            // A request whose route was never resolved was never routed: counted under
            // route and target `none`.
            (None, _) => {
                let m = &self.shared.metrics;
                m.requests
                    .with_label_values(&["none", "none", outcome.as_str(), "false"])
                    .inc();
                m.request_duration
                    .with_label_values(&["none"])
                    .observe(latency.as_secs_f64());
                m.overhead
                    .with_label_values(&["none"])
                    .observe(overhead.as_secs_f64());
            }
        }
        let served = matches!(outcome, Outcome::Ok | Outcome::StreamError | Outcome::Cancelled);
        let served_by = self.target.as_ref().filter(|_| served);
        let upstream_request_id = served_by
            .and_then(|_| self.attempts.last())
            .and_then(|a| a.upstream_request_id.clone());
        self.shared.audit.write(AuditRecord {
            ts_ms: crate::audit::now_ms(),
            request_id: self.request_id,
            endpoint: if self.responses.is_some() {
                "responses"
            } else {
                self.endpoint.path()
            },
            route: self.route.as_ref().map(|r| r.name.clone()),
            rule: self.rule,
            score: self.score.as_ref().map(|d| crate::audit::ScoreRecord {
                value: d.value,
                class: d.class.as_str(),
                scorer: d.scorer.as_str(),
                rule: d.rule(),
            }),
            stream: self.stream,
            target: served_by.map(|t| t.name.clone()),
            provider: served_by.map(|t| t.provider_name()),
            upstream_request_id,
            fallback_count: self.fallback_count,
            attempts: self.attempts,
            skipped: self.skipped,
            status,
            outcome: outcome.as_str(),
            latency_ms: ms(latency),
            overhead_us: u64::try_from(overhead.as_micros()).unwrap_or(u64::MAX),
            stream_error,
            continuations,
        });
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}
