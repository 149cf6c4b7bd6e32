//! The innermost service: route one OpenAI request and fail over across the route's targets.
//!
//! Per request: parse → pick the route by `model` → plan the target order (rules, overrides,
//! capabilities, strategy, health) → for each target, admitted by its breaker, one attempt,
//! plus same-target retries for the classes in `retry.sameTarget` (spaced by backoff and paid
//! from the route's retry budget), all inside one total deadline. A `context-length` refusal
//! moves on only to targets with a larger (or unknown) context window. When every target the
//! request may use is rate-limited, it waits for the earliest `Retry-After` (up to
//! `retry.rateLimit.maxWait`, inside the deadline and the budget) and tries again.
//!
//! Each attempt is classified once ([`crate::class::Class`]) and recorded once, when it ends,
//! in the breaker, the metrics and the audit line, in one place ([`Ctx::record`]); a stream's
//! attempt ends with the stream, so a stream that breaks after its first event is one failure.
//!
//! Nothing reaches the client before an attempt succeeded: JSON answers are complete (a
//! non-streaming request to a streaming-capable target is sent as a stream and assembled, so
//! `firstByte` and `streamIdle` bound it), streams are committed only after their first event
//! arrived, so every failure before that can still fail over. A committed stream is bounded
//! by `streamIdle` and the client's `x-detour-timeout-ms` only. It is complete when the
//! upstream sent `[DONE]`, or ended its body cleanly after a `finish_reason` (the client then
//! gets the `[DONE]` the upstream left out). Anything else — a cut body, a reset, a stall, an
//! error event — is broken: one OpenAI-style error event, no `[DONE]`, and the body ends
//! abnormally ([`body::Aborted`]), so even clients that ignore error events see a failed
//! transfer.

use std::borrow::Cow;
use std::collections::VecDeque;
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

use detour_api::table::{Capability, Policy, ResponseModel};

use crate::audit::{AttemptRecord, Audit, AuditRecord, ContinuationRecord, SkipRecord};
use crate::body::{self, Response};
use crate::budget::Budget;
use crate::class::Class;
use crate::continuation::{self, Partial, Refusal, Splice, Style};
use crate::deadline::Deadline;
use crate::encode::{Encoder, Out};
use crate::error::ApiError;
use crate::health::{Admission, Verdict};
use crate::layers::request_id::RequestId;
use crate::metrics::{Metrics, Outcome};
use crate::providers::answer::{RequestBody, RequestError, Usage};
use crate::providers::assemble::Assembler;
use crate::providers::{Answer, Call, Endpoint, Event, EventStream, Failure, ReplyBody, UpstreamMeta};
use crate::responses::native::NativeEvent;
use crate::responses::{Echo, Native};
use crate::retry::backoff;
use crate::routing::{self, Overrides};
use crate::state::{RouteRt, Snapshot, TargetRt, TargetState};

/// Request headers of the Detour API (names built at compile time: no parsing per request).
pub const H_TAGS: HeaderName = HeaderName::from_static("x-detour-tags");
pub const H_TARGET: HeaderName = HeaderName::from_static("x-detour-target");
pub const H_FALLBACK: HeaderName = HeaderName::from_static("x-detour-fallback");
pub const H_TIMEOUT: HeaderName = HeaderName::from_static("x-detour-timeout-ms");
/// `off`: do not continue this request's stream on another target if it breaks (allowed
/// when the policy sets `overrides.allowDisableFallback`).
pub const H_CONTINUE: HeaderName = HeaderName::from_static("x-detour-continue");
/// Response headers.
pub const H_REQUEST_ID: HeaderName = HeaderName::from_static("x-detour-request-id");
/// The route's id (the `model` the client sent), whatever the body's `model` says.
pub const H_ROUTE: HeaderName = HeaderName::from_static("x-detour-route");
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
    /// The process-wide budget for buffered request and answer bytes.
    pub budget: Budget,
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
    target: Option<Arc<TargetRt>>,
    admission: Admission,
}

impl ProbeGuard {
    fn new(target: &Arc<TargetRt>, admission: Admission) -> Self {
        Self {
            target: matches!(admission, Admission::Probe { .. }).then(|| target.clone()),
            admission,
        }
    }

    fn disarm(&mut self) {
        self.target = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            let now = Instant::now();
            target.with_breaker(now, "cancelled", |b| {
                b.record(now, self.admission, Verdict::Cancelled);
            });
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
    /// The response went to the server (time after that is not overhead nor waiting).
    committed: bool,
    /// A Responses API request translated to chat: the request fields its answer echoes
    /// (`None`: the client speaks the endpoint itself).
    responses: Option<Echo>,
    _in_flight: InFlight,
}

/// How one attempt ended, as the recorder needs it.
#[derive(Debug)]
struct AttemptEnd {
    class: Class,
    status: Option<u16>,
    retry_after: Option<Duration>,
    elapsed: Duration,
    latency: Duration,
    /// The failure's own words, kept for the classes whose cause is the sidecar's to name.
    detail: Option<Cow<'static, str>>,
    /// The provider's own id of the request, when its answer had one.
    upstream_id: Option<String>,
}

impl Ctx {
    fn new(shared: Arc<Shared>, request_id: String, endpoint: Endpoint, responses: Option<Echo>) -> Self {
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
            committed: false,
            responses,
            _in_flight: InFlight(gauge),
        }
    }

    fn route_label(&self) -> &str {
        self.route.as_ref().map_or("none", |r| r.route.model.as_str())
    }

    /// Records one classified attempt when it ends: breaker, metrics, audit. The only place
    /// that does. `elapsed` is the attempt's whole duration; `latency` what the breaker's
    /// latency average takes (time to the first event for streams).
    fn record(&mut self, target: &Arc<TargetRt>, admission: Admission, end: &AttemptEnd) {
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
            target: name.to_owned(),
            class,
            status: end.status,
            latency_ms: ms(end.elapsed),
            detail: end.detail.clone(),
            upstream_request_id: end.upstream_id.clone(),
        });
    }

    /// The moment the response is handed to the server: what the sidecar itself cost.
    fn commit(&mut self) {
        let total = self.start.elapsed();
        self.overhead = Some(total.saturating_sub(self.waited));
        self.committed = true;
    }

    fn stamp(&self, headers: &mut HeaderMap) {
        if let Some(v) = self.route.as_ref().and_then(|r| r.route_header.clone()) {
            headers.insert(H_ROUTE, v);
        }
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
        self.finish_stream(status, outcome, stream_error, Vec::new());
    }

    /// [`Ctx::finish`] with the breaks of a stream and their continuations.
    fn finish_stream(
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
            route: self.route.as_ref().map(|r| r.route.model.clone()),
            rule: self.rule,
            score: self.score.as_ref().map(|d| crate::audit::ScoreRecord {
                value: d.value,
                class: d.class.as_str(),
                scorer: d.scorer.as_str(),
                rule: d.rule(),
            }),
            stream: self.stream,
            target: served_by.map(|t| t.cfg.name.clone()),
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
///
/// Not `async fn` wrappers (here and in [`handle_responses`]): one would hold the request
/// twice, as its argument and inside the future it awaits.
pub fn handle(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    req: Request<Bytes>,
) -> impl Future<Output = Response> + Send {
    handle_as(shared, endpoint, req, None)
}

/// Serves a Responses API request: `req`'s body is its translation to a chat request, which
/// routes it and goes to translated targets; `native` is what goes to targets that serve the
/// Responses API natively. The same routing, failover and stream contract; a translated answer
/// and stream are written back as Responses, a native one passes through (see
/// [`crate::responses`]).
pub fn handle_responses(
    shared: Arc<Shared>,
    req: Request<Bytes>,
    native: Box<Native>,
) -> impl Future<Output = Response> + Send {
    handle_as(shared, Endpoint::Chat, req, Some(native))
}

async fn handle_as(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    mut req: Request<Bytes>,
    native: Option<Box<Native>>,
) -> Response {
    let request_id = req
        .extensions_mut()
        .remove::<RequestId>()
        .map_or_else(String::new, |r| r.0);
    let responses = native.as_ref().map(|n| n.echo.clone());
    let ctx = Ctx::new(shared.clone(), request_id, endpoint, responses);
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
            match routing::closest_model(model, &snapshot.models) {
                Some(near) => format!(
                    "the model {model:?} is not served by this sidecar; did you mean {near:?}? known models: {}",
                    known()
                ),
                None => format!(
                    "the model {model:?} is not served by this sidecar; known models: {}",
                    known()
                ),
            },
        )
        .param("model");
        return ctx.reject(e, Outcome::Rejected);
    };
    drop(snapshot);
    serve(ctx, route, endpoint, &req, &body, native).await
}

async fn serve(
    mut ctx: Ctx,
    route: Arc<RouteRt>,
    endpoint: Endpoint,
    req: &Request<Bytes>,
    body: &RequestBody,
    native: Option<Box<Native>>,
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
    let mut plan = match routing::plan(&route, &tags, &overrides, body, stream) {
        Ok(p) => p,
        Err(e) => return ctx.reject(*e, Outcome::Rejected),
    };
    if let Some(n) = &native
        && let Err(e) = crate::responses::narrow(&mut plan, n, &route.route.model)
    {
        ctx.skipped = plan.skipped;
        return ctx.reject(*e, Outcome::Rejected);
    }
    let continue_off = match continue_off(req, &route) {
        Ok(off) => off,
        Err(e) => return ctx.reject(*e, Outcome::Rejected),
    };
    ctx.rule = plan.rule.clone();
    ctx.skipped = plan.skipped;
    if let Some(d) = &plan.score {
        if let Some(v) = d.value {
            route.metrics.score(d.scorer.as_str()).observe(v);
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
    let ask = Ask {
        endpoint,
        body,
        stream,
        policy,
        native: native.as_ref().map(|n| &n.body),
        // Only chat streams are continued (see `continuation`).
        continues: stream
            && endpoint == Endpoint::Chat
            && !continue_off
            && continues(&route, plan.rule.as_deref()),
    };
    // The previous target passed over and why, to book `detour_fallbacks_total` on the move.
    let mut prev: Option<(&str, &'static str)> = None;
    let mut too_long = TooLong::default();
    // Targets that answered 429 with a Retry-After in the last round, and the time waited
    // for them so far.
    let mut rate_limited: Vec<&Arc<TargetRt>> = Vec::new();
    let mut waited_for_rate_limit = Duration::ZERO;

    loop {
        for target in &plan.targets {
            let now = Instant::now();
            if deadline.expired(now) {
                break;
            }
            if !too_long.may_try(target) {
                ctx.skipped.push(SkipRecord {
                    target: target.cfg.name.clone(),
                    reason: "context-window",
                });
                continue;
            }
            let admission = target.with_breaker(now, "cooldown", |b| b.admit(now));
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
            too_long.trying();
            let mut last_class = Class::Ok;
            for n in 1..=policy.retry.attempts.max(1) {
                if n > 1 {
                    let now = Instant::now();
                    if !route.withdraw_retry(now) {
                        break;
                    }
                    let delay = backoff(&policy.retry, n - 1, fastrand::f64());
                    if delay >= deadline.remaining(now) {
                        break;
                    }
                    sleep(delay).await;
                    ctx.waited += delay;
                    let now = Instant::now();
                    match target.with_breaker(now, "cooldown", |b| b.admit(now)) {
                        Admission::Rejected { .. } => break,
                        a => admission = a,
                    }
                }
                match attempt(&mut ctx, target, &ask, &deadline, admission).await {
                    Ok(ok) => {
                        // A native Responses stream is never continued (its events are not
                        // chat chunks).
                        let resume = (ask.continues && !ok.native).then(|| {
                            Resume::new(&route, &plan.targets, target, ask.body.raw(), &ctx.shared.budget)
                        });
                        return respond(ctx, &route, target, ok, deadline.client, resume);
                    }
                    Err(f) => {
                        last_class = f.class;
                        if f.class == Class::ContextLength {
                            // Never the same target again: the prompt will not get shorter.
                            too_long.refused(target, f);
                            break;
                        }
                        if f.class == Class::Credentials {
                            // Nothing was sent: the next target may have its credential, and
                            // this one will not have it a few milliseconds from now.
                            break;
                        }
                        let Some(trigger) = f.class.trigger() else {
                            return passthrough(ctx, target, f);
                        };
                        if !policy.retry.on.contains(&trigger) {
                            return passthrough(ctx, target, f);
                        }
                        if f.class == Class::RateLimited && f.retry_after.is_some() {
                            rate_limited.push(target);
                        }
                        if !policy.retry.same_target.contains(&trigger) {
                            break;
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
        match rate_limit_wait(&rate_limited, &route, &deadline, waited_for_rate_limit) {
            Some(wait) => {
                sleep(wait).await;
                ctx.waited += wait;
                waited_for_rate_limit += wait;
                rate_limited.clear();
            }
            None => break,
        }
    }
    // Nothing served: the last move did not happen, so it is not a fallback.
    ctx.fallback_count = ctx.fallback_count.saturating_sub(1);
    if let Some((target, f)) = too_long.unanswered() {
        // No target with a larger window could take the prompt: the refusal is the answer.
        return passthrough(ctx, &target, f);
    }
    exhausted(ctx, &route, &plan.targets, &deadline)
}

/// Whether a broken stream is continued: the matching rule's `continueOnFailure`, else the
/// policy's `streaming.continueOnFailure` (looked up when a stream commits, to keep it out of
/// every request's future).
fn continues(route: &RouteRt, rule: Option<&str>) -> bool {
    let rule = rule.and_then(|name| route.route.rules.iter().find(|r| r.name == name));
    rule.and_then(|r| r.continue_on_failure)
        .unwrap_or(route.route.policy.streaming.continue_on_failure)
}

/// Whether the request turns continuation off (`x-detour-continue: off`), which the policy
/// must allow (`overrides.allowDisableFallback`).
fn continue_off(req: &Request<Bytes>, route: &RouteRt) -> Result<bool, Box<ApiError>> {
    match header_str(req, H_CONTINUE).map(str::trim) {
        None | Some("on") => Ok(false),
        Some("off") if route.route.policy.overrides.allow_disable_fallback => Ok(true),
        Some("off") => Err(Box::new(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "override_not_allowed",
            format!(
                "x-detour-continue: off is not allowed for model {:?}: its policy {} does not set overrides.allowDisableFallback",
                route.route.model, route.route.policy.source
            ),
        ))),
        Some(_) => Err(Box::new(ApiError::invalid(
            "invalid_header",
            "x-detour-continue must be \"off\" or \"on\"",
        ))),
    }
}

/// What a `context-length` refusal leaves to try: only targets whose context window is larger
/// than every window that refused (or unknown, as is a refusing target's own when it set none).
#[derive(Debug, Default)]
struct TooLong {
    /// The first refusal, returned when no other target could serve (boxed: it is part of
    /// every request's future and almost always `None`).
    first: Option<Box<(Arc<TargetRt>, Failure)>>,
    /// The largest window that refused.
    window: Option<u32>,
    /// A target was tried after the first refusal.
    tried_after: bool,
}

impl TooLong {
    fn may_try(&self, target: &TargetRt) -> bool {
        match (&self.first, self.window, target.cfg.context_window) {
            (None, _, _) | (_, _, None) | (_, None, _) => true,
            (Some(_), Some(refused), Some(w)) => w > refused,
        }
    }

    /// A target is about to be tried.
    fn trying(&mut self) {
        if self.first.is_some() {
            self.tried_after = true;
        }
    }

    fn refused(&mut self, target: &Arc<TargetRt>, f: Failure) {
        self.window = self.window.max(target.cfg.context_window);
        if self.first.is_none() {
            self.first = Some(Box::new((target.clone(), f)));
            self.tried_after = false;
        }
    }

    /// The first refusal, when no target was tried after it.
    fn unanswered(self) -> Option<(Arc<TargetRt>, Failure)> {
        self.first.filter(|_| !self.tried_after).map(|b| *b)
    }
}

/// How long to wait before trying the route's targets again, when every target that could
/// serve was rate-limited with a `Retry-After`: until the earliest of them is available, if
/// that fits `retry.rateLimit.maxWait` (in total), the deadline and the retry budget.
fn rate_limit_wait(
    rate_limited: &[&Arc<TargetRt>],
    route: &RouteRt,
    deadline: &Deadline,
    waited: Duration,
) -> Option<Duration> {
    let now = Instant::now();
    let at = rate_limited
        .iter()
        .map(|t| t.with_breaker(now, "cooldown", |b| b.available_at(now)))
        .min()?;
    let retry = &route.route.policy.retry;
    // Never a busy loop on `Retry-After: 0`: at least the backoff base.
    let wait = at
        .saturating_duration_since(now)
        .max(Duration::from_millis(retry.backoff_base_ms));
    let max = Duration::from_millis(retry.rate_limit_max_wait_ms);
    if waited + wait > max || wait >= deadline.remaining(now) {
        return None;
    }
    route.withdraw_retry(now).then_some(wait)
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
    /// The client asked for a stream.
    stream: bool,
    policy: &'a Policy,
    /// A Responses request: the client's body, for targets that serve the API natively.
    native: Option<&'a RequestBody>,
    /// A committed stream that breaks is continued by the next target.
    continues: bool,
}

/// How an attempt asks its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A plain call for a JSON answer, bounded by `perAttempt`.
    Json,
    /// A stream for the client.
    Stream,
    /// A JSON answer for the client, assembled from a stream: bounded by `firstByte`,
    /// `streamIdle` and `perAttempt`.
    Assemble,
}

impl Ask<'_> {
    fn mode(&self, target: &TargetRt) -> Mode {
        let streams = target
            .cfg
            .capabilities
            .as_ref()
            .is_none_or(|c| c.contains(&Capability::Streaming));
        if self.stream {
            Mode::Stream
        } else if self.policy.streaming.assemble && self.endpoint != Endpoint::Embeddings && streams {
            Mode::Assemble
        } else {
            Mode::Json
        }
    }
}

/// Undecodable events held back before a stream's first real event, at most.
const MAX_HELD: usize = 16;

/// One attempt at one target: send, peek the first event of a stream (for an assembled
/// answer, read the whole stream), classify. A JSON answer's attempt is recorded here; a
/// stream's when the stream ends ([`StreamGuard`]).
async fn attempt(
    ctx: &mut Ctx,
    target: &Arc<TargetRt>,
    ask: &Ask<'_>,
    deadline: &Deadline,
    admission: Admission,
) -> Result<Success, Failure> {
    let t0 = Instant::now();
    // A Responses request picks its body by the target: the client's own for a target that
    // serves the API natively (never assembled: its stream is not chat's), the translation
    // for every other.
    let (endpoint, request, mode, native) = match ask
        .native
        .filter(|_| crate::responses::serves_natively(&target.cfg))
    {
        Some(body) => (
            Endpoint::Responses,
            body,
            if ask.stream { Mode::Stream } else { Mode::Json },
            true,
        ),
        None => (ask.endpoint, ask.body, ask.mode(target), false),
    };
    let attempt_deadline = deadline.attempt(t0, target.cfg.per_attempt_ms);
    // A half-open probe finds out quickly whether the provider still says nothing.
    let first_byte_ms = match admission {
        Admission::Probe { .. } => target
            .cfg
            .first_byte_ms
            .min(ask.policy.health.probe_first_byte_ms),
        _ => target.cfg.first_byte_ms,
    };
    let budget = ctx.shared.budget.clone();
    let call = Call {
        endpoint,
        request,
        model: &target.cfg.model,
        stream: mode != Mode::Json,
        assemble: mode == Mode::Assemble,
        deadline: attempt_deadline,
        first_byte_deadline: (t0 + Duration::from_millis(first_byte_ms)).min(attempt_deadline),
        budget: &budget,
        // A large answer passes through only as the upstream wrote it: with the route's id
        // to put in its `model` (anywhere in it), or to be answered as a Response object, it
        // is held whole.
        pass_through: ask.policy.response_model != ResponseModel::Route
            && (ctx.responses.is_none() || native),
    };
    let busy = TargetBusy::new(&target.state);
    let mut probe = ProbeGuard::new(target, admission);
    let mut ttft = None;
    let mut meta = UpstreamMeta::default();
    let sent = target.provider.send(&call).await.map(|reply| {
        meta = reply.meta;
        reply.body
    });
    let result = match sent {
        Ok(ReplyBody::Json(answer)) if native => native_json(answer),
        Ok(ReplyBody::Stream(s)) => match first_event(target, s, &call, mode).await {
            Err(f) => Err(f),
            Ok((held, rest)) => {
                ttft = Some(t0.elapsed());
                if mode == Mode::Stream {
                    // Committed: the attempt ends, and is recorded, with the stream. The wait
                    // for its first event was the upstream's time, not the sidecar's.
                    ctx.waited += t0.elapsed();
                    ctx.target = Some(target.clone());
                    return Ok(Success {
                        peeked: Peeked::Stream(held, rest),
                        busy,
                        pending: Some(Pending { admission, probe, t0 }),
                        ttft: ttft.unwrap_or_default(),
                        meta,
                        native,
                    });
                }
                // Boxed: the assembler's state would otherwise be part of every request's
                // future, streams included (see `a_request_in_flight_stays_small`).
                let idle = Duration::from_millis(target.cfg.stream_idle_ms);
                Box::pin(assemble(target, held, rest, &call, idle))
                    .await
                    .and_then(json_answer)
            }
        },
        Ok(ReplyBody::Json(answer)) => json_answer(answer),
        Ok(ReplyBody::Passthrough(body)) => Ok(Peeked::Passthrough(body)),
        Err(f) => Err(f),
    };
    // A failure returned to the client carries its upstream's headers; one from a stream
    // that broke before it was committed has none of its own, so it gets the reply's.
    let result = result.map_err(|mut f| {
        if f.meta.is_empty() {
            f.meta = std::mem::take(&mut meta);
        }
        f
    });
    let elapsed = t0.elapsed();
    let end = match &result {
        Ok(_) => AttemptEnd {
            class: Class::Ok,
            status: Some(200),
            retry_after: None,
            elapsed,
            latency: ttft.unwrap_or(elapsed),
            detail: None,
            upstream_id: meta.request_id().map(str::to_owned),
        },
        Err(f) => AttemptEnd {
            class: f.class,
            status: f.status,
            retry_after: f.retry_after,
            elapsed,
            latency: elapsed,
            detail: matches!(f.class, Class::Credentials | Class::ConnectError).then(|| f.detail.clone()),
            upstream_id: f.meta.request_id().map(str::to_owned),
        },
    };
    ctx.record(target, admission, &end);
    probe.disarm();
    result.map(|peeked| Success {
        peeked,
        busy,
        pending: None,
        ttft: ttft.unwrap_or(elapsed),
        meta,
        native,
    })
}

/// A native Responses JSON answer, or the failure a `status: failed` response is (like a
/// 5xx: the next target may serve).
fn native_json(answer: Answer) -> Result<Peeked, Failure> {
    if crate::responses::native::summary(answer.bytes()).failed {
        let mut f =
            Failure::new(Class::ServerError, "upstream answered a failed response").status(StatusCode::OK);
        f.body = Some(answer.bytes().clone());
        return Err(f);
    }
    Ok(Peeked::Json(answer))
}

/// A complete JSON answer, or the content filter that refused it.
fn json_answer(answer: Answer) -> Result<Peeked, Failure> {
    if answer.content_filtered() {
        let mut f =
            Failure::new(Class::ContentFilter, "every choice was content-filtered").status(StatusCode::OK);
        f.body = Some(answer.bytes().clone());
        Err(f)
    } else {
        Ok(Peeked::Json(answer))
    }
}

/// Waits for a stream's first event within the first-byte deadline. Undecodable events before
/// it are held (a stream: forwarded with it, at most [`MAX_HELD`]) or skipped (an assembled
/// answer), and counted as anomalies.
async fn first_event(
    target: &TargetRt,
    mut s: EventStream,
    call: &Call<'_>,
    mode: Mode,
) -> Result<(VecDeque<Event>, EventStream), Failure> {
    let mut held = VecDeque::new();
    loop {
        match timeout_at(call.first_byte_deadline, s.next()).await {
            Err(_) => return Err(Failure::new(call.first_byte_class(), "no first event in time")),
            Ok(None | Some(Ok(Event::Done))) => {
                return Err(Failure::new(
                    Class::BadResponse,
                    "the stream ended before its first event",
                ));
            }
            Ok(Some(Err(f))) => return Err(f),
            // A native response's lifecycle events carry nothing of the answer: held with the
            // first one that does, so a response that fails right after it was created still
            // fails over.
            Ok(Some(Ok(Event::Native(n)))) if n.preamble && held.len() < MAX_HELD => {
                held.push_back(Event::Native(n));
            }
            Ok(Some(Ok(Event::Opaque(raw)))) => {
                target.metrics.stream_anomaly();
                if mode == Mode::Stream {
                    if held.len() >= MAX_HELD {
                        return Err(Failure::new(
                            Class::BadResponse,
                            "the stream sent only undecodable events",
                        ));
                    }
                    held.push_back(Event::Opaque(raw));
                }
            }
            Ok(Some(Ok(ev))) => {
                held.push_back(ev);
                return Ok((held, s));
            }
        }
    }
}

/// Reads a stream to its end and assembles the JSON answer. A stall longer than `idle`, the
/// attempt's deadline, or a stream that breaks before its `finish_reason` fails the attempt
/// (nothing reached the client: the next target may still serve).
async fn assemble(
    target: &TargetRt,
    mut events: VecDeque<Event>,
    mut rest: EventStream,
    call: &Call<'_>,
    idle: Duration,
) -> Result<Answer, Failure> {
    let until = call.deadline;
    let mut asm = Assembler::new(call.endpoint);
    // What the assembler keeps grows with the chunks' bytes: counted in the buffer budget
    // until the answer is sent.
    let mut held = call.budget.reservation();
    let mut finished = false;
    loop {
        let ev = match events.pop_front() {
            Some(ev) => ev,
            None => match timeout_at((Instant::now() + idle).min(until), rest.next()).await {
                Err(_) => {
                    return Err(Failure::new(
                        Class::Timeout,
                        "the stream stalled or outlasted the attempt",
                    ));
                }
                Ok(None) if finished => break,
                Ok(None) => {
                    return Err(Failure::new(
                        Class::Reset,
                        "the stream ended before its finish_reason",
                    ));
                }
                Ok(Some(Err(f))) => return Err(f),
                Ok(Some(Ok(ev))) => ev,
            },
        };
        match ev {
            Event::Done => {
                drain(&mut rest).await;
                break;
            }
            Event::Data(v) => {
                let a = Answer::from_value(&v);
                finished |= a.finished();
                held.grow(a.bytes().len()).map_err(|e| e.failure())?;
                asm.push(a.bytes());
            }
            Event::Raw(a) => {
                finished |= a.finished();
                held.grow(a.bytes().len()).map_err(|e| e.failure())?;
                asm.push(a.bytes());
            }
            Event::Opaque(_) | Event::Native(_) => target.metrics.stream_anomaly(),
        }
    }
    Answer::parse(asm.finish())
        .map(|a| a.held(held))
        .ok_or_else(|| Failure::new(Class::BadResponse, "the assembled answer is not JSON"))
}

/// A stream's attempt, still open: recorded when the stream ends.
#[derive(Debug)]
struct Pending {
    admission: Admission,
    probe: ProbeGuard,
    t0: Instant,
}

/// A successful attempt, not yet answered.
struct Success {
    peeked: Peeked,
    busy: TargetBusy,
    /// `Some` for a stream, whose attempt is recorded when it ends.
    pending: Option<Pending>,
    /// Time to the first event (streams), or the whole attempt.
    ttft: Duration,
    /// The headers of the upstream's answer the client reads.
    meta: UpstreamMeta,
    /// A Responses answer passed through from a native target (not to be translated).
    native: bool,
}

/// Answers with a successful attempt: the JSON body, or the stream from its first event
/// (`client`: the client's own bound on the whole response, `x-detour-timeout-ms`).
fn respond(
    mut ctx: Ctx,
    route: &Arc<RouteRt>,
    target: &Arc<TargetRt>,
    ok: Success,
    client: Option<Instant>,
    resume: Option<Box<Resume>>,
) -> Response {
    let route_model = (route.route.policy.response_model == ResponseModel::Route).then(|| route.clone());
    match (ok.peeked, ok.pending) {
        (Peeked::Json(answer), _) => {
            drop(ok.busy);
            let mut bytes = answer.with_model(route_model.as_ref().map(|r| r.route.model.as_str()));
            if ok.native {
                let s = crate::responses::native::summary(&bytes);
                if let Some(id) = &s.id {
                    crate::responses::native::pin::remember(id, &route.route.model, &target.cfg.name);
                }
                record_usage(target, s.usage);
            } else {
                if let Some(echo) = &ctx.responses {
                    bytes = crate::responses::json_answer(&bytes, echo);
                }
                record_usage(target, answer.usage());
            }
            ctx.commit();
            // The answer stays counted in the buffer budget until its bytes are sent.
            let body = match answer.reservation() {
                Some(held) => body::Body::new(body::Guarded::new(body::full(bytes), held)),
                None => body::full(bytes),
            };
            let mut resp = http::Response::new(body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            ok.meta.apply(resp.headers_mut());
            ctx.stamp(resp.headers_mut());
            ctx.finish(200, Outcome::Ok, None);
            resp
        }
        (Peeked::Passthrough(body), _) => {
            drop(ok.busy);
            ctx.commit();
            let mut resp = http::Response::new(body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            ok.meta.apply(resp.headers_mut());
            ctx.stamp(resp.headers_mut());
            ctx.finish(200, Outcome::Ok, None);
            resp
        }
        (Peeked::Stream(held, rest), Some(pending)) => {
            target.metrics.first_byte().observe(ok.ttft.as_secs_f64());
            ctx.commit();
            let mut resp = http::Response::new(body::full(Bytes::new()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            ok.meta.apply(resp.headers_mut());
            ctx.stamp(resp.headers_mut());
            let guard = StreamGuard {
                ctx: Some(ctx),
                target: target.clone(),
                pending,
                ttft: ok.ttft,
                upstream_id: ok.meta.request_id().map(str::to_owned),
                recorded: false,
                continuations: Vec::new(),
                _busy: ok.busy,
            };
            let encoder = match guard.ctx.as_ref().and_then(|c| c.responses.clone()) {
                Some(_) if ok.native => Encoder::Native(crate::responses::native::Encoder::new(route_model)),
                Some(echo) => Encoder::responses(echo, route_model),
                None => Encoder::chat(route_model),
            };
            *resp.body_mut() = stream_body(guard, held, rest, client, encoder, resume);
            resp
        }
        // A stream is always pending; answer it as an empty one rather than panic.
        (Peeked::Stream(..), None) => {
            ctx.commit();
            let mut resp = http::Response::new(body::full(Bytes::new()));
            ctx.stamp(resp.headers_mut());
            ctx.finish(200, Outcome::Ok, None);
            resp
        }
    }
}

enum Peeked {
    Json(Answer),
    /// A large JSON answer committed on its head: the client's body.
    Passthrough(body::Body),
    /// The first event (after any undecodable ones held before it) and the rest.
    Stream(VecDeque<Event>, EventStream),
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
    let outcome = if matches!(f.class, Class::ClientError | Class::ContextLength) {
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
    f.meta.apply(resp.headers_mut());
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
        .map(|t| t.with_breaker(now, "cooldown", |b| b.available_at(now)))
        .min()
        .unwrap_or(now);
    let retry_after = next.saturating_duration_since(now).as_secs_f64().ceil().max(1.0);
    let attempts: Vec<String> = ctx
        .attempts
        .iter()
        .map(|a| {
            format!(
                "{}: {}{}{} after {} ms",
                a.target,
                a.class,
                a.status.map(|s| format!(" ({s})")).unwrap_or_default(),
                a.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(),
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

/// Owns the request's context while its stream is being sent; records the attempt and writes
/// the audit line when the stream ends — completed, broken, or dropped because the client went
/// away.
#[derive(Debug)]
struct StreamGuard {
    ctx: Option<Ctx>,
    target: Arc<TargetRt>,
    pending: Pending,
    ttft: Duration,
    /// The provider's own id of the request.
    upstream_id: Option<String>,
    /// The attempt was recorded already (it broke, and a continuation was sought).
    recorded: bool,
    /// Breaks and continuations, for the audit line.
    continuations: Vec<ContinuationRecord>,
    _busy: TargetBusy,
}

/// How a committed stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `[DONE]`, or a clean end after a `finish_reason`.
    Complete,
    /// Cut, reset, stalled, or an upstream error event: the class of what happened.
    Broken(Class),
    /// The client went away first (the target was serving: not its failure).
    ClientGone,
    /// The client's `x-detour-timeout-ms` ran out while the target was still serving: a
    /// broken stream for the client, not the target's failure.
    ClientDeadline,
}

impl StreamGuard {
    fn end(&mut self, end: End) {
        let (class, outcome, error) = match end {
            End::Complete => (Class::Ok, Outcome::Ok, None),
            End::Broken(class) => (class, Outcome::StreamError, Some(class)),
            End::ClientGone => (Class::Ok, Outcome::Cancelled, None),
            End::ClientDeadline => (Class::Ok, Outcome::StreamError, Some(Class::Timeout)),
        };
        self.record(class, error.is_some());
        if let Some(ctx) = self.ctx.take() {
            ctx.finish_stream(200, outcome, error, std::mem::take(&mut self.continuations));
        }
    }

    /// Records the serving target's attempt (once).
    fn record(&mut self, class: Class, stream_error: bool) {
        let Some(ctx) = self.ctx.as_mut() else {
            return;
        };
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        if stream_error {
            self.target.metrics.stream_error();
        }
        let end = AttemptEnd {
            class,
            status: Some(200),
            retry_after: None,
            elapsed: self.pending.t0.elapsed(),
            latency: self.ttft,
            detail: None,
            upstream_id: self.upstream_id.take(),
        };
        ctx.record(&self.target, self.pending.admission, &end);
        self.pending.probe.disarm();
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.end(End::ClientGone);
    }
}

/// Where a committed stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// `[DONE]` went out: read the upstream's body to its end, then end.
    Drain,
    /// The error event went out: end the body abnormally.
    Abort,
    Ended,
}

struct StreamState {
    guard: StreamGuard,
    /// Events read before the stream was committed (the first one, and undecodable ones
    /// before it).
    held: VecDeque<Event>,
    rest: EventStream,
    /// The longest gap between events.
    idle: Duration,
    /// The client's own bound on the whole response.
    client: Option<Instant>,
    /// Writes what the stream sends in the client's wire format.
    encoder: Encoder,
    /// A chunk with a `finish_reason` went out.
    finished: bool,
    phase: Phase,
    /// Set when a break is continued by the next target (boxed: absent from most streams).
    resume: Option<Box<Resume>>,
}

/// What continuing a broken stream needs (`streaming.continueOnFailure`).
#[derive(Debug)]
struct Resume {
    route: Arc<RouteRt>,
    /// Targets after the serving one, in the plan's order, not asked yet.
    next: VecDeque<Arc<TargetRt>>,
    /// The client's request body (a reference to the bytes already held).
    raw: Bytes,
    partial: Partial,
    /// Rewrites the chunks of the target that continues.
    splice: Option<Splice>,
    /// The breaks so far, for the `detour` field of the final chunk.
    breaks: Vec<serde_json::Value>,
}

/// A continuation is not started with less time than this before the client's
/// `x-detour-timeout-ms`.
const MIN_CONTINUATION: Duration = Duration::from_secs(1);

impl Resume {
    /// The targets after `serving` in the plan are the ones a break may be continued on.
    fn new(
        route: &Arc<RouteRt>,
        plan: &[Arc<TargetRt>],
        serving: &Arc<TargetRt>,
        raw: &Bytes,
        budget: &Budget,
    ) -> Box<Self> {
        let next = plan
            .iter()
            .skip_while(|t| !Arc::ptr_eq(t, serving))
            .skip(1)
            .cloned()
            .collect();
        Box::new(Self {
            route: route.clone(),
            next,
            raw: raw.clone(),
            partial: Partial::counted(budget),
            splice: None,
            breaks: Vec::new(),
        })
    }
}

/// How long a broken stream waits between its error event and the abnormal end, so the server
/// has written the event (a pending body lets it flush) before it aborts the transfer.
const ABORT_FLUSH: Duration = Duration::from_millis(10);

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
    /// A chunk event for the client; `None` when a continuation's rewrite leaves nothing of it.
    fn forward(&mut self, ev: Event) -> Option<Bytes> {
        let Some(resume) = self.resume.as_mut() else {
            return Some(match ev {
                Event::Data(v) => self.chunk(&Answer::from_value(&v)),
                Event::Raw(a) => self.chunk(&a),
                _ => Bytes::new(),
            });
        };
        let v = match (ev, &mut resume.splice) {
            // The first stream's chunks go out as they came; only noted.
            (Event::Raw(a), None) => {
                if let Some(v) = a.to_value() {
                    resume.partial.observe(&v);
                }
                return Some(self.chunk(&a));
            }
            (Event::Data(v), _) => v,
            (Event::Raw(a), Some(_)) => a.to_value()?,
            _ => return Some(Bytes::new()),
        };
        let v = match &mut resume.splice {
            Some(s) => s.rewrite(v)?,
            None => v,
        };
        resume.partial.observe(&v);
        Some(self.chunk(&Answer::from_value(&v)))
    }

    /// The serving target's stream broke with `class`: asks the next eligible targets to
    /// finish the answer. `true` when one took over (its events follow on `rest`).
    async fn resume(&mut self, class: Class) -> bool {
        let Some(mut resume) = self.resume.take() else {
            return false;
        };
        let from = self.guard.target.clone();
        // The broken attempt ends here, whatever follows.
        self.guard.record(class, true);
        let found = self.continue_on(&mut resume, &from, class).await;
        let ok = found.is_some();
        if let Some((target, ok)) = found {
            let idle = Duration::from_millis(target.cfg.stream_idle_ms);
            let Peeked::Stream(held, rest) = ok.peeked else {
                return false;
            };
            let Some(pending) = ok.pending else {
                return false;
            };
            self.guard.target = target;
            self.guard.pending = pending;
            self.guard.ttft = ok.ttft;
            self.guard.recorded = false;
            self.guard.upstream_id = ok.meta.request_id().map(str::to_owned);
            self.guard._busy = ok.busy;
            self.held = held;
            self.rest = rest;
            self.idle = idle;
            self.finished = false;
        } else if let Some(ctx) = self.guard.ctx.as_mut() {
            // The stream ends as the broken one's: it is the target that served.
            ctx.target = Some(from);
        }
        self.resume = Some(resume);
        ok
    }

    /// Tries the targets after the broken one; the first that starts a stream continues.
    async fn continue_on(
        &mut self,
        resume: &mut Resume,
        from: &Arc<TargetRt>,
        class: Class,
    ) -> Option<(Arc<TargetRt>, Success)> {
        let route = resume.route.clone();
        let route_label = route.route.model.as_str();
        let from_name = from.cfg.name.as_str();
        let ctx = self.guard.ctx.as_mut()?;
        let records = &mut self.guard.continuations;
        let shared = ctx.shared.clone();
        let metrics = &shared.metrics.stream_continuations;
        let mut record =
            |partial: &Partial, to: Option<&TargetRt>, style: Option<Style>, result: &'static str| {
                metrics
                    .with_label_values(&[
                        route_label,
                        from_name,
                        to.map_or("none", |t| t.cfg.name.as_str()),
                        result,
                    ])
                    .inc();
                records.push(ContinuationRecord {
                    from: from_name.to_owned(),
                    class,
                    bytes: partial.bytes,
                    chunks: partial.chunks,
                    to: to.map(|t| t.cfg.name.clone()),
                    style: style.map(Style::as_str),
                    result,
                });
            };
        let refused = match RequestBody::parse(resume.raw.clone()) {
            Ok(body) => match body.map() {
                Ok(map) => resume
                    .partial
                    .refusal()
                    .or_else(|| continuation::request_refusal(map))
                    .map_or(Ok(map.clone()), Err),
                Err(_) => Err(Refusal::Endpoint),
            },
            Err(_) => Err(Refusal::Endpoint),
        };
        let map = match refused {
            Ok(map) => map,
            Err(r) => {
                record(&resume.partial, None, None, r.as_str());
                return None;
            }
        };
        let policy = &route.route.policy;
        let now = Instant::now();
        let client_ms = match self.client {
            Some(c) => {
                let left = c.saturating_duration_since(now);
                if left < MIN_CONTINUATION {
                    record(&resume.partial, None, None, Refusal::Deadline.as_str());
                    return None;
                }
                Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
            }
            None => None,
        };
        // The search for a continuation gets the policy's `total`, as the first answer did.
        let deadline = Deadline::new(now, policy.timeouts.total_ms, client_ms);
        let mut refusal = Refusal::NoTarget;
        // The target passed over and why, to book `detour_fallbacks_total` on the move.
        let mut previous = (from.clone(), class.as_str());
        while let Some(target) = resume.next.pop_front() {
            let now = Instant::now();
            if deadline.expired(now) {
                refusal = Refusal::Deadline;
                break;
            }
            let admission = match target.with_breaker(now, "cooldown", |b| b.admit(now)) {
                Admission::Rejected { .. } => {
                    ctx.skipped.push(SkipRecord {
                        target: target.cfg.name.clone(),
                        reason: "circuit-open",
                    });
                    continue;
                }
                a => a,
            };
            if !route.withdraw_retry(now) {
                refusal = Refusal::Budget;
                break;
            }
            let style = Style::of(target.cfg.provider);
            let Some(built) = continuation::request(&map, resume.partial.text(), style) else {
                break;
            };
            let Ok(body) = RequestBody::parse(built.body.clone()) else {
                break;
            };
            let ask = Ask {
                endpoint: Endpoint::Chat,
                body: &body,
                stream: true,
                policy,
                native: None,
                continues: true,
            };
            book_fallback(
                &shared.metrics,
                route_label,
                &previous.0.cfg.name,
                &target.cfg.name,
                previous.1,
            );
            ctx.fallback_count += 1;
            match Box::pin(attempt(ctx, &target, &ask, &deadline, admission)).await {
                Ok(ok) => {
                    record(&resume.partial, Some(&target), Some(style), "ok");
                    resume.breaks.push(json!({
                        "from": from_name,
                        "to": target.cfg.name,
                        "class": class.as_str(),
                    }));
                    let marker = json!({"continued": resume.breaks});
                    resume.splice = Some(Splice::new(&resume.partial, &built, marker));
                    return Some((target, ok));
                }
                Err(f) => {
                    record(&resume.partial, Some(&target), Some(style), f.class.as_str());
                    previous = (target.clone(), f.class.as_str());
                }
            }
        }
        record(&resume.partial, None, None, refusal.as_str());
        None
    }

    /// One chunk for the client, usage counted.
    fn chunk(&mut self, a: &Answer) -> Bytes {
        self.finished |= a.finished();
        record_usage(&self.guard.target, a.usage());
        self.encoder.encode(Out::Chunk(a))
    }

    /// One event of a native Responses stream for the client, as it came: its usage counted,
    /// its response id remembered for `previous_response_id`; a terminal event completes the
    /// stream.
    fn native(&mut self, n: NativeEvent) -> Bytes {
        if n.terminal {
            if let (Some(id), Some(ctx)) = (&n.response_id, &self.guard.ctx) {
                crate::responses::native::pin::remember(id, ctx.route_label(), &self.guard.target.cfg.name);
            }
            record_usage(&self.guard.target, n.usage);
        }
        let out = self.encoder.encode(Out::Passed(n.raw));
        if !n.terminal {
            return out;
        }
        self.finished = true;
        let end = self.complete(Phase::Drain);
        if end.is_empty() {
            out
        } else {
            Bytes::from([&out[..], &end[..]].concat())
        }
    }

    /// The stream broke: one error event, then the body ends abnormally.
    fn broken(&mut self, class: Class) -> Bytes {
        self.phase = Phase::Abort;
        self.guard.end(End::Broken(class));
        self.encoder.encode(Out::Broken {
            target: &self.guard.target.cfg.name,
            class,
        })
    }

    /// The stream is complete.
    fn complete(&mut self, phase: Phase) -> Bytes {
        self.phase = phase;
        self.guard.end(End::Complete);
        self.encoder.encode(Out::Complete)
    }

    /// The next event, within the idle bound and the client's deadline; `Err(true)` when the
    /// client's deadline passed first, `Err(false)` when the upstream was silent too long.
    async fn next(&mut self) -> Result<Option<Result<Event, Failure>>, bool> {
        if let Some(ev) = self.held.pop_front() {
            return Ok(Some(Ok(ev)));
        }
        let idle = Instant::now() + self.idle;
        let client_first = self.client.is_some_and(|c| c <= idle);
        let until = self.client.map_or(idle, |c| c.min(idle));
        timeout_at(until, self.rest.next())
            .await
            .map_err(|_| client_first)
    }
}

fn stream_body(
    guard: StreamGuard,
    held: VecDeque<Event>,
    rest: EventStream,
    client: Option<Instant>,
    encoder: Encoder,
    resume: Option<Box<Resume>>,
) -> body::Body {
    let idle = Duration::from_millis(guard.target.cfg.stream_idle_ms);
    let state = StreamState {
        guard,
        held,
        rest,
        idle,
        client,
        encoder,
        finished: false,
        phase: Phase::Open,
        resume,
    };
    let s = stream::unfold(state, |mut st| async move {
        match st.phase {
            Phase::Open => {}
            Phase::Drain => {
                st.phase = Phase::Ended;
                drain(&mut st.rest).await;
                return None;
            }
            Phase::Abort => {
                st.phase = Phase::Ended;
                // Let the server write the error event out before the abort: hyper drops what
                // it has buffered but not yet written when a body fails.
                sleep(ABORT_FLUSH).await;
                return Some((Err(body::Aborted), st));
            }
            Phase::Ended => return None,
        }
        let out = loop {
            let class = match st.next().await {
                Ok(Some(Ok(ev @ (Event::Data(_) | Event::Raw(_))))) => match st.forward(ev) {
                    Some(out) => break out,
                    None => continue,
                },
                Ok(Some(Ok(Event::Opaque(raw)))) => {
                    st.guard.target.metrics.stream_anomaly();
                    break st.encoder.encode(Out::Opaque(raw));
                }
                Ok(Some(Ok(Event::Native(n)))) => break st.native(n),
                Ok(Some(Ok(Event::Done))) => break st.complete(Phase::Drain),
                // Several OpenAI-compatible servers end a complete answer without `[DONE]`.
                Ok(None) if st.finished => break st.complete(Phase::Ended),
                Ok(Some(Err(f))) => f.class,
                // Ended before its finish_reason: a silent truncation is a broken stream.
                Ok(None) => Class::Reset,
                // Silent past `streamIdle`: the upstream's failure.
                Err(false) => Class::Timeout,
                // Past the client's own deadline: the stream ends as broken for the client, but
                // the target was serving and is not charged.
                Err(true) => {
                    st.phase = Phase::Abort;
                    st.guard.end(End::ClientDeadline);
                    break st.encoder.encode(Out::ClientDeadline);
                }
            };
            // Broken before its finish_reason: the next target may finish the answer (boxed:
            // the search is rare and large).
            if st.resume.is_some() && Box::pin(st.resume(class)).await {
                continue;
            }
            break st.broken(class);
        };
        Some((Ok(out), st))
    });
    StreamBody::new(s.map(|b| b.map(Frame::data))).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request in flight is one allocation the size of its whole future (every provider's
    /// attempt included), so 1,000 held streams cost 1,000 of them. Connecting, credential
    /// exchanges and the upstream timeout are kept out of it (boxed or not doubled). The upstream
    /// headers the client reads ([`UpstreamMeta`]) are one pointer in each place an attempt's
    /// answer or failure is held: 40 bytes over the former 5 KiB. A Responses request's native
    /// body (one pointer in the request and one in what every attempt sends): 16 more.
    #[test]
    fn a_request_in_flight_stays_small() {
        let shared = Arc::new(Shared {
            table: ArcSwapOption::empty(),
            metrics: Metrics::new().unwrap(),
            audit: Audit::stdout(),
            budget: Budget::new(1 << 20),
        });
        let fut = handle(shared, Endpoint::Chat, Request::new(Bytes::new()));
        let size = size_of_val(&fut);
        assert!(size <= 5 * 1024 + 80, "the request future is {size} bytes");
    }
}
