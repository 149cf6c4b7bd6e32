//! The innermost service: route one OpenAI request and fail over across the route's targets.
//!
//! Per request: parse → pick the route by `model` → plan the target order (rules, overrides,
//! capabilities, strategy, health) → for each target, admitted by its breaker, up to
//! `retry.attempts` attempts (retries spaced by backoff and paid from the route's retry
//! budget), all inside one total deadline. Each attempt is classified once
//! ([`crate::class::Class`]) and that class is recorded in the breaker, the metrics and the
//! audit line in one place ([`Ctx::record`]).
//!
//! Nothing reaches the client before an attempt succeeded: JSON answers are complete, streams
//! are committed only after their first event arrived, so every failure before that can still
//! fail over. After that, a broken stream ends with an OpenAI-style error event.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::time::{Instant, sleep, timeout_at};

use crate::audit::{AttemptRecord, Audit, AuditRecord, SkipRecord};
use crate::body::{self, Response};
use crate::class::Class;
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::health::{Admission, Verdict};
use crate::layers::request_id::RequestId;
use crate::metrics::{Metrics, Outcome};
use crate::providers::answer::{RequestBody, RequestError, Usage};
use crate::providers::{Answer, Call, Endpoint, Event, EventStream, Failure, Reply, sse};
use crate::retry::backoff;
use crate::routing::{self, Overrides};
use crate::state::{RouteRt, Snapshot, TargetRt, TargetState};

/// Request headers of the Detour API (names built at compile time: no parsing per request).
pub const H_TAGS: HeaderName = HeaderName::from_static("x-detour-tags");
pub const H_TARGET: HeaderName = HeaderName::from_static("x-detour-target");
pub const H_FALLBACK: HeaderName = HeaderName::from_static("x-detour-fallback");
pub const H_TIMEOUT: HeaderName = HeaderName::from_static("x-detour-timeout-ms");
/// Response headers.
pub const H_REQUEST_ID: HeaderName = HeaderName::from_static("x-detour-request-id");
pub const H_PROVIDER: HeaderName = HeaderName::from_static("x-detour-provider");
pub const H_FALLBACK_COUNT: HeaderName = HeaderName::from_static("x-detour-fallback-count");
/// The complexity score (or `unscored`), under the cost/quality strategies only.
pub const H_SCORE: HeaderName = HeaderName::from_static("x-detour-score");

/// What every request shares: the table being served, metrics, the audit sink.
#[derive(Debug)]
pub struct Shared {
    pub table: ArcSwapOption<Snapshot>,
    pub metrics: Metrics,
    pub audit: Audit,
}

/// Keeps `detour_in_flight_requests` right whatever way a request ends.
#[derive(Debug)]
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts a target's in-flight requests (for `least-busy`) until dropped.
#[derive(Debug)]
struct TargetBusy(Arc<TargetState>);

impl TargetBusy {
    fn new(state: &Arc<TargetState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for TargetBusy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A half-open probe must always report a verdict, or its slot would be held forever: when an
/// attempt is dropped (the client went away) before it was recorded, this reports `Cancelled`.
#[derive(Debug)]
struct ProbeGuard {
    state: Option<(Arc<TargetState>, Admission)>,
}

impl ProbeGuard {
    fn new(target: &TargetRt, admission: Admission) -> Self {
        Self {
            state: matches!(admission, Admission::Probe { .. }).then(|| (target.state.clone(), admission)),
        }
    }

    fn disarm(&mut self) {
        self.state = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some((state, admission)) = self.state.take() {
            state
                .breaker()
                .record(Instant::now(), admission, Verdict::Cancelled);
        }
    }
}

/// Everything known about one request, turned into metrics and the audit line at the end.
#[derive(Debug)]
struct Ctx {
    shared: Arc<Shared>,
    request_id: String,
    endpoint: Endpoint,
    start: Instant,
    route: Option<Arc<RouteRt>>,
    rule: Option<String>,
    /// How a cost/quality strategy placed the request.
    score: Option<routing::ScoreDecision>,
    stream: bool,
    attempts: Vec<AttemptRecord>,
    skipped: Vec<SkipRecord>,
    /// The target that served, or the last one tried.
    target: Option<Arc<TargetRt>>,
    fallback_count: u32,
    /// Time spent waiting on upstreams and backoff: not the sidecar's overhead.
    waited: Duration,
    overhead: Option<Duration>,
    _in_flight: InFlight,
}

impl Ctx {
    fn new(shared: Arc<Shared>, request_id: String, endpoint: Endpoint) -> Self {
        shared.metrics.in_flight.inc();
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
            _in_flight: InFlight(gauge),
        }
    }

    fn route_label(&self) -> &str {
        self.route.as_ref().map_or("none", |r| r.route.model.as_str())
    }

    /// Records one classified attempt: breaker, metrics, audit. The only place that does.
    fn record(
        &mut self,
        target: &Arc<TargetRt>,
        admission: Admission,
        class: Class,
        status: Option<u16>,
        retry_after: Option<Duration>,
        elapsed: Duration,
    ) {
        let name = target.cfg.name.as_str();
        let now = Instant::now();
        {
            let mut b = target.state.breaker();
            let before = b.state(now).gauge();
            b.record(now, admission, Verdict::of(class, elapsed, retry_after));
            let after = b.state(now).gauge();
            if before != after {
                let state = ["closed", "half-open", "open"].get(usize::try_from(after).unwrap_or(0));
                tracing::warn!(
                    route = self.route_label(),
                    target = name,
                    class = class.as_str(),
                    "circuit {}",
                    state.copied().unwrap_or("?")
                );
            }
            target.metrics.breaker_state().set(after);
            target.metrics.degraded().set(i64::from(b.degraded()));
        }
        target.metrics.attempt(class, elapsed.as_secs_f64());
        self.waited += elapsed;
        tracing::debug!(
            request_id = %self.request_id,
            route = self.route_label(),
            target = name,
            class = class.as_str(),
            status,
            elapsed_ms = ms(elapsed),
            "attempt"
        );
        self.target = Some(target.clone());
        self.attempts.push(AttemptRecord {
            target: name.to_owned(),
            class,
            status,
            latency_ms: ms(elapsed),
        });
    }

    /// The moment the response is handed to hyper: what the sidecar itself cost.
    fn commit(&mut self) {
        let total = self.start.elapsed();
        self.overhead = Some(total.saturating_sub(self.waited));
    }

    fn stamp(&self, headers: &mut HeaderMap) {
        match &self.target {
            Some(t) => {
                if let Some(v) = &t.name_header {
                    headers.insert(H_TARGET, v.clone());
                }
                headers.insert(H_PROVIDER, HeaderValue::from_static(t.provider_name()));
            }
            None => {
                headers.insert(H_TARGET, HeaderValue::from_static("none"));
                headers.insert(H_PROVIDER, HeaderValue::from_static("none"));
            }
        }
        headers.insert(H_FALLBACK_COUNT, count_header(self.fallback_count));
        if let Some(d) = &self.score {
            let v = d
                .value
                .map_or_else(|| d.class.as_str().to_owned(), |v| format!("{v:.3}"));
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(H_SCORE, v);
            }
        }
    }

    /// Writes the request's metrics and audit line.
    fn finish(self, status: u16, outcome: Outcome, stream_error: Option<Class>) {
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
        self.shared.audit.write(AuditRecord {
            ts_ms: crate::audit::now_ms(),
            request_id: self.request_id,
            endpoint: self.endpoint.path(),
            route: self.route.as_ref().map(|r| r.route.model.clone()),
            rule: self.rule,
            score: self.score.as_ref().map(|d| crate::audit::ScoreRecord {
                value: d.value,
                class: d.class.as_str(),
                scorer: crate::scoring::SCORER_VERSION,
                rule: d.rule(),
            }),
            stream: self.stream,
            target: served_by.map(|t| t.cfg.name.clone()),
            provider: served_by.map(|t| t.provider_name()),
            fallback_count: self.fallback_count,
            attempts: self.attempts,
            skipped: self.skipped,
            status,
            outcome: outcome.as_str(),
            latency_ms: ms(latency),
            overhead_us: u64::try_from(overhead.as_micros()).unwrap_or(u64::MAX),
            stream_error,
        });
    }

    /// Answers with an error of the sidecar's own.
    fn reject(mut self, err: ApiError, outcome: Outcome) -> Response {
        self.commit();
        let status = err.status.as_u16();
        let mut resp = err.into_response();
        self.stamp(resp.headers_mut());
        self.finish(status, outcome, None);
        resp
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

/// `x-detour-fallback-count`: the common small counts without an allocation.
fn count_header(n: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

fn header_str(req: &Request<Bytes>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Serves one OpenAI API request.
pub async fn handle(shared: Arc<Shared>, endpoint: Endpoint, mut req: Request<Bytes>) -> Response {
    let request_id = req
        .extensions_mut()
        .remove::<RequestId>()
        .map_or_else(String::new, |r| r.0);
    let ctx = Ctx::new(shared.clone(), request_id, endpoint);
    let Some(snapshot) = shared.table.load_full() else {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "not_ready",
            "no route table is loaded yet; see the sidecar's log for why",
        );
        e.retry_after = Some(1);
        return ctx.reject(e, Outcome::Rejected);
    };
    let body = match RequestBody::parse(req.body().clone()) {
        Ok(body) => body,
        Err(RequestError::NotAnObject) => {
            return ctx.reject(
                ApiError::invalid("invalid_json", "the request body must be a JSON object"),
                Outcome::Rejected,
            );
        }
        Err(RequestError::Json(e)) => {
            // serde_json's message names line and column, never the content.
            return ctx.reject(
                ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")),
                Outcome::Rejected,
            );
        }
    };
    let known = || snapshot.models.join(", ");
    let Some(model) = body.model() else {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the request names no model; set \"model\" to one of: {}", known()),
        )
        .param("model");
        return ctx.reject(e, Outcome::Rejected);
    };
    let Some(route) = snapshot.routes.get(model).cloned() else {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "the model {model:?} is not served by this sidecar; known models: {}",
                known()
            ),
        )
        .param("model");
        return ctx.reject(e, Outcome::Rejected);
    };
    drop(snapshot);
    serve(ctx, route, endpoint, &req, &body).await
}

async fn serve(
    mut ctx: Ctx,
    route: Arc<RouteRt>,
    endpoint: Endpoint,
    req: &Request<Bytes>,
    body: &RequestBody,
) -> Response {
    ctx.route = Some(route.clone());
    let stream = endpoint != Endpoint::Embeddings && body.stream();
    ctx.stream = stream;
    let tags = header_str(req, H_TAGS)
        .map(routing::parse_tags)
        .unwrap_or_default();
    let fallback_off = match header_str(req, H_FALLBACK).map(str::trim) {
        None | Some("on") => false,
        Some("off") => true,
        Some(_) => {
            return ctx.reject(
                ApiError::invalid("invalid_header", "x-detour-fallback must be \"off\" or \"on\""),
                Outcome::Rejected,
            );
        }
    };
    let client_ms = match header_str(req, H_TIMEOUT).map(|v| v.trim().parse::<u64>()) {
        None => None,
        Some(Ok(ms)) if ms > 0 => Some(ms),
        Some(_) => {
            return ctx.reject(
                ApiError::invalid(
                    "invalid_header",
                    "x-detour-timeout-ms must be a positive whole number of milliseconds",
                ),
                Outcome::Rejected,
            );
        }
    };
    let overrides = Overrides {
        target: header_str(req, H_TARGET).map(|s| s.trim().to_owned()),
        fallback_off,
    };
    let plan = match routing::plan(&route, &tags, &overrides, body, stream) {
        Ok(p) => p,
        Err(e) => return ctx.reject(*e, Outcome::Rejected),
    };
    ctx.rule = plan.rule.clone();
    ctx.skipped = plan.skipped;
    if let Some(d) = &plan.score {
        if let Some(v) = d.value {
            route.metrics.score(crate::scoring::SCORER_VERSION).observe(v);
        }
        ctx.score = Some(d.clone());
    }
    let policy = &route.route.policy;
    let deadline = Deadline::new(ctx.start, policy.timeouts.total_ms, client_ms);
    if let Ok(mut b) = route.budget.lock() {
        b.deposit(Instant::now());
    }
    let route_label = route.route.model.as_str();
    let shared = ctx.shared.clone();
    let metrics = &shared.metrics;
    // The previous target passed over and why, to book `detour_fallbacks_total` on the move.
    let mut prev: Option<(&str, &'static str)> = None;

    for target in &plan.targets {
        let now = Instant::now();
        if deadline.expired(now) {
            break;
        }
        let admission = {
            let mut b = target.state.breaker();
            let a = b.admit(now);
            target.metrics.breaker_state().set(b.state(now).gauge());
            a
        };
        let mut admission = match admission {
            Admission::Rejected { .. } => {
                ctx.skipped.push(SkipRecord {
                    target: target.cfg.name.clone(),
                    reason: "circuit-open",
                });
                if let Some((from, reason)) = prev.take() {
                    book_fallback(metrics, route_label, from, &target.cfg.name, reason);
                }
                prev = Some((&target.cfg.name, "circuit-open"));
                ctx.fallback_count += 1;
                continue;
            }
            a => a,
        };
        if let Some((from, reason)) = prev.take() {
            book_fallback(metrics, route_label, from, &target.cfg.name, reason);
        }
        let mut last_class = Class::Ok;
        for n in 1..=policy.retry.attempts.max(1) {
            if n > 1 {
                let now = Instant::now();
                let granted = route
                    .budget
                    .lock()
                    .map(|mut b| b.try_withdraw(now))
                    .unwrap_or(false);
                if !granted {
                    route.metrics.budget_exhausted().inc();
                    break;
                }
                let delay = backoff(&policy.retry, n - 1, fastrand::f64());
                if delay >= deadline.remaining(now) {
                    break;
                }
                sleep(delay).await;
                ctx.waited += delay;
                let now = Instant::now();
                let again = target.state.breaker().admit(now);
                match again {
                    Admission::Rejected { .. } => break,
                    a => admission = a,
                }
            }
            let ask = Ask {
                endpoint,
                body,
                stream,
            };
            match attempt(&mut ctx, target, &ask, &deadline, admission).await {
                Ok(ok) => return respond(ctx, &route, target, ok),
                Err(f) => {
                    last_class = f.class;
                    let retryable = f.class.trigger().is_some_and(|t| policy.retry.on.contains(&t));
                    if !retryable {
                        return passthrough(ctx, target, f);
                    }
                }
            }
            if deadline.expired(Instant::now()) {
                break;
            }
        }
        prev = Some((&target.cfg.name, last_class.as_str()));
        ctx.fallback_count += 1;
    }
    // Nothing served: the last move did not happen, so it is not a fallback.
    ctx.fallback_count = ctx.fallback_count.saturating_sub(1);
    exhausted(ctx, &route, &plan.targets, &deadline)
}

fn book_fallback(metrics: &Metrics, route: &str, from: &str, to: &str, reason: &'static str) {
    metrics
        .fallbacks
        .with_label_values(&[route, from, to, reason])
        .inc();
}

/// What every attempt of a request sends.
struct Ask<'a> {
    endpoint: Endpoint,
    body: &'a RequestBody,
    stream: bool,
}

/// One attempt at one target: send, peek the first event of a stream, classify, record.
async fn attempt(
    ctx: &mut Ctx,
    target: &Arc<TargetRt>,
    ask: &Ask<'_>,
    deadline: &Deadline,
    admission: Admission,
) -> Result<Success, Failure> {
    let t0 = Instant::now();
    let attempt_deadline = deadline.attempt(t0, target.cfg.per_attempt_ms);
    let call = Call {
        endpoint: ask.endpoint,
        request: ask.body,
        model: &target.cfg.model,
        stream: ask.stream,
        deadline: attempt_deadline,
        first_byte_deadline: (t0 + Duration::from_millis(target.cfg.first_byte_ms)).min(attempt_deadline),
    };
    let busy = TargetBusy::new(&target.state);
    let mut probe = ProbeGuard::new(target, admission);
    let result = match target.provider.send(&call).await {
        Ok(Reply::Stream(mut s)) => match timeout_at(call.first_byte_deadline, s.next()).await {
            Err(_) => Err(Failure::new(call.first_byte_class(), "no first event in time")),
            Ok(None | Some(Ok(Event::Done))) => Err(Failure::new(
                Class::BadResponse,
                "the stream ended before its first event",
            )),
            Ok(Some(Err(f))) => Err(f),
            Ok(Some(Ok(Event::Data(first)))) => Ok(Peeked::Stream(Answer::from_value(&first), s)),
            Ok(Some(Ok(Event::Raw(first)))) => Ok(Peeked::Stream(first, s)),
        },
        Ok(Reply::Json(answer)) => {
            if answer.content_filtered() {
                let mut f = Failure::new(Class::ContentFilter, "every choice was content-filtered")
                    .status(StatusCode::OK);
                f.body = Some(answer.bytes().clone());
                Err(f)
            } else {
                Ok(Peeked::Json(answer))
            }
        }
        Err(f) => Err(f),
    };
    let elapsed = t0.elapsed();
    let (class, status, retry_after) = match &result {
        Ok(_) => (Class::Ok, Some(200), None),
        Err(f) => (f.class, f.status, f.retry_after),
    };
    ctx.record(target, admission, class, status, retry_after, elapsed);
    probe.disarm();
    result.map(|peeked| Success {
        peeked,
        busy,
        elapsed,
        deadline: attempt_deadline,
    })
}

/// A successful attempt, not yet answered.
struct Success {
    peeked: Peeked,
    busy: TargetBusy,
    elapsed: Duration,
    deadline: Instant,
}

/// Answers with a successful attempt: the JSON body, or the stream from its first event.
fn respond(mut ctx: Ctx, route: &Arc<RouteRt>, target: &Arc<TargetRt>, ok: Success) -> Response {
    let route_label = route.route.model.as_str();
    let expose = route.route.policy.expose_upstream_model;
    match ok.peeked {
        Peeked::Json(answer) => {
            drop(ok.busy);
            let bytes = answer.with_model((!expose).then_some(route_label));
            record_usage(target, answer.usage());
            ctx.commit();
            let mut resp = http::Response::new(body::full(bytes));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            ctx.stamp(resp.headers_mut());
            ctx.finish(200, Outcome::Ok, None);
            resp
        }
        Peeked::Stream(first, rest) => {
            target.metrics.first_byte().observe(ok.elapsed.as_secs_f64());
            ctx.commit();
            let mut resp = http::Response::new(body::full(Bytes::new()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            ctx.stamp(resp.headers_mut());
            let guard = StreamGuard {
                ctx: Some(ctx),
                target: target.clone(),
                _busy: ok.busy,
            };
            *resp.body_mut() = stream_body(guard, first, rest, ok.deadline, (!expose).then(|| route.clone()));
            resp
        }
    }
}

enum Peeked {
    Json(Answer),
    Stream(Answer, EventStream),
}

fn record_usage(target: &TargetRt, usage: Option<Usage>) {
    let Some(Usage { prompt, completion }) = usage else {
        return;
    };
    #[expect(clippy::cast_precision_loss, reason = "token counts are far below 2^52")]
    let usd = target
        .cfg
        .cost
        .map(|cost| (prompt as f64 * cost.input + completion as f64 * cost.output) / 1_000_000.0);
    target.metrics.usage(prompt, completion, usd);
}

/// Returns a failure the policy does not fail over on, as the upstream sent it when there is
/// a body, else as a gateway error naming the target and the class.
fn passthrough(mut ctx: Ctx, target: &TargetRt, f: Failure) -> Response {
    let outcome = if f.class == Class::ClientError {
        Outcome::ClientError
    } else {
        Outcome::UpstreamError
    };
    let mut resp = match (f.status.and_then(|s| StatusCode::from_u16(s).ok()), &f.body) {
        (Some(status), Some(body)) => {
            let mut r = http::Response::new(body::full(body.clone()));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(ra) = f.retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(ra.as_secs().max(1)));
            }
            r
        }
        _ => {
            let status = match f.class {
                Class::Timeout | Class::FirstByteTimeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            ApiError::new(
                status,
                "upstream_error",
                f.class.as_str(),
                format!("target {} failed: {} ({})", target.cfg.name, f.class, f.detail),
            )
            .into_response()
        }
    };
    ctx.commit();
    ctx.stamp(resp.headers_mut());
    let status = resp.status().as_u16();
    ctx.finish(status, outcome, None);
    resp
}

/// Every target failed or was unavailable.
fn exhausted(mut ctx: Ctx, route: &RouteRt, targets: &[Arc<TargetRt>], deadline: &Deadline) -> Response {
    let now = Instant::now();
    let next = targets
        .iter()
        .map(|t| t.state.breaker().available_at(now))
        .min()
        .unwrap_or(now);
    let retry_after = next.saturating_duration_since(now).as_secs_f64().ceil().max(1.0);
    let attempts: Vec<String> = ctx
        .attempts
        .iter()
        .map(|a| {
            format!(
                "{}: {}{} after {} ms",
                a.target,
                a.class,
                a.status.map(|s| format!(" ({s})")).unwrap_or_default(),
                a.latency_ms.round()
            )
        })
        .collect();
    let model = &route.route.model;
    let message = if attempts.is_empty() && targets.is_empty() {
        format!("no target of model {model:?} is selected for this request (see the matching rule)")
    } else if attempts.is_empty() {
        format!("every target of model {model:?} is unavailable (circuit open); retry in {retry_after} s")
    } else {
        let why = if deadline.expired(now) {
            " (the total deadline passed)"
        } else {
            ""
        };
        format!(
            "all targets of model {model:?} failed{why}: {}",
            attempts.join("; ")
        )
    };
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "all_targets_failed",
        message,
    );
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive and small"
    )]
    let secs = retry_after as u64;
    e.retry_after = Some(secs);
    e.detail = Some(json!({
        "attempts": ctx.attempts,
        "skipped": ctx.skipped,
    }));
    ctx.commit();
    let mut resp = e.into_response();
    ctx.stamp(resp.headers_mut());
    ctx.finish(503, Outcome::Exhausted, None);
    resp
}

/// Owns the request's context while its stream is being sent; writes the audit line when the
/// stream ends — completed, broken, or dropped because the client went away.
#[derive(Debug)]
struct StreamGuard {
    ctx: Option<Ctx>,
    target: Arc<TargetRt>,
    _busy: TargetBusy,
}

impl StreamGuard {
    fn end(&mut self, outcome: Outcome, error: Option<Class>) {
        if let Some(ctx) = self.ctx.take() {
            if let Some(class) = error {
                self.target.metrics.stream_error();
                if class.is_health_failure() {
                    self.target.state.breaker().record(
                        Instant::now(),
                        Admission::Allowed,
                        Verdict::Failure {
                            class,
                            retry_after: None,
                        },
                    );
                }
            }
            ctx.finish(200, outcome, error);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.end(Outcome::Cancelled, None);
    }
}

struct StreamState {
    guard: StreamGuard,
    first: Option<Answer>,
    rest: EventStream,
    deadline: Instant,
    /// The route whose id goes in each chunk's `model` (`None`: the upstream's is kept).
    model: Option<Arc<RouteRt>>,
    /// Events still to send before ending (the error event and `[DONE]`).
    tail: Vec<Bytes>,
    ended: bool,
    /// After `[DONE]`: read the upstream's body to its end before ending, so its connection
    /// is kept.
    drain: bool,
}

/// How long the end of an upstream's body may take after its `[DONE]` (normally it is in the
/// same read); an upstream slower than that loses its connection, not the client's time.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(50);

/// Reads what an upstream sends after `[DONE]` — normally only the end of its body — so that
/// its keep-alive connection goes back to the pool instead of being closed.
async fn drain(rest: &mut EventStream) {
    let until = Instant::now() + DRAIN_AFTER_DONE;
    for _ in 0..16 {
        match timeout_at(until, rest.next()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

impl StreamState {
    /// One chunk for the client: the route's model in, usage counted.
    fn chunk(&self, a: &Answer) -> Bytes {
        if self.guard.ctx.is_some() {
            record_usage(&self.guard.target, a.usage());
        }
        sse::encode_answer(a, self.model.as_ref().map(|r| r.route.model.as_str()))
    }
}

fn error_event(target: &str, class: Class) -> Bytes {
    let v = json!({"error": {
        "message": format!("upstream target {target} failed mid-stream ({class}); the response is incomplete"),
        "type": "upstream_error",
        "param": null,
        "code": class.as_str(),
    }});
    sse::encode(&Event::Data(v))
}

fn stream_body(
    guard: StreamGuard,
    first: Answer,
    rest: EventStream,
    deadline: Instant,
    model: Option<Arc<RouteRt>>,
) -> body::Body {
    let state = StreamState {
        guard,
        first: Some(first),
        rest,
        deadline,
        model,
        tail: Vec::new(),
        ended: false,
        drain: false,
    };
    let s = stream::unfold(state, |mut st| async move {
        if let Some(b) = st.tail.pop() {
            return Some((b, st));
        }
        if st.ended {
            if std::mem::take(&mut st.drain) {
                drain(&mut st.rest).await;
            }
            return None;
        }
        let next = match st.first.take() {
            Some(a) => Ok(Some(Ok(Event::Raw(a)))),
            None => timeout_at(st.deadline, st.rest.next()).await,
        };
        let failed = |st: &mut StreamState, class: Class| {
            st.ended = true;
            st.guard.end(Outcome::StreamError, Some(class));
            // `tail` pops from the end: `[DONE]` goes last.
            st.tail.push(sse::encode(&Event::Done));
            error_event(&st.guard.target.cfg.name, class)
        };
        let out = match next {
            Ok(Some(Ok(Event::Data(v)))) => st.chunk(&Answer::from_value(&v)),
            Ok(Some(Ok(Event::Raw(a)))) => st.chunk(&a),
            Ok(Some(Ok(Event::Done))) => {
                st.ended = true;
                st.drain = true;
                st.guard.end(Outcome::Ok, None);
                sse::encode(&Event::Done)
            }
            Ok(Some(Err(f))) => failed(&mut st, f.class),
            // Ended without `[DONE]`: a silent truncation is still a broken stream.
            Ok(None) => failed(&mut st, Class::Reset),
            Err(_) => failed(&mut st, Class::Timeout),
        };
        Some((out, st))
    });
    StreamBody::new(s.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request in flight is one allocation the size of its whole future (every provider's
    /// attempt included), so 1,000 held streams cost 1,000 of them. Connecting, credential
    /// exchanges and the upstream timeout are kept out of it (boxed or not doubled).
    #[test]
    fn a_request_in_flight_stays_small() {
        let shared = Arc::new(Shared {
            table: ArcSwapOption::empty(),
            metrics: Metrics::new().unwrap(),
            audit: Audit::stdout(),
        });
        let fut = handle(shared, Endpoint::Chat, Request::new(Bytes::new()));
        let size = size_of_val(&fut);
        assert!(size <= 5 * 1024, "the request future is {size} bytes");
    }
}
