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
//! in the breaker, the metrics and the audit line, in one place ([`context::Ctx::record`]); a
//! stream's attempt ends with the stream, so a stream that breaks after its first event is one
//! failure.
//!
//! Nothing reaches the client before an attempt succeeded: JSON answers are complete (a
//! non-streaming request to a streaming-capable target is sent as a stream and assembled, so
//! `firstByte` and `streamIdle` bound it), streams are committed only after their first event
//! arrived, so every failure before that can still fail over. A committed stream is bounded
//! by `streamIdle` and the client's `x-detour-timeout-ms` only. It is complete when the
//! upstream sent `[DONE]`, or ended its body cleanly after a `finish_reason` (the client then
//! gets the `[DONE]` the upstream left out). Anything else — a cut body, a reset, a stall, an
//! error event — is broken: one OpenAI-style error event, no `[DONE]`, and the body ends
//! abnormally ([`crate::body::Aborted`]), so even clients that ignore error events see a failed
//! transfer.
//!
//! The modules, in the order a request meets them: [`options`] (the `x-detour-*` request
//! headers), this module's failover loop (plan → attempt → classify → next), [`attempt`] (one
//! target), [`context`] (the recorder and the audit line), [`respond`] (the client's response
//! and its `x-detour-*` headers) [`stream`] (a committed stream) and [`resume`] (its continuation on the next target).

mod attempt;
mod context;
mod options;
mod respond;
mod resume;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Request;
use tokio::time::{Instant, sleep};

use crate::audit::{Audit, SkipRecord};
use crate::body::Response;
use crate::budget::Budget;
use crate::class::Class;
use crate::deadline::Deadline;
use crate::error::Reason;
use crate::health::Admission;
use crate::layers::body_limit::Bounded;
use crate::layers::request_id::RequestId;
use crate::metrics::{Metrics, Outcome};
use crate::providers::answer::{RequestBody, RequestError};
use crate::providers::{Endpoint, Failure};
use crate::responses::Native;
use crate::retry::backoff;
use crate::routing;
use crate::state::{RouteRt, Snapshot, TargetRt};

use attempt::{AttemptBase, attempt};
use context::Ctx;
use options::RequestOptions;
use respond::{exhausted, passthrough, respond};
use resume::Resume;

/// What every request shares: the table being served, metrics, the audit sink.
#[derive(Debug)]
pub struct Shared {
    pub table: ArcSwapOption<Snapshot>,
    pub metrics: Metrics,
    pub audit: Audit,
    /// The process-wide budget for buffered request and answer bytes.
    pub budget: Budget,
}

/// Serves one OpenAI API request, its body read whole under the body limit ([`Bounded`]).
///
/// Not `async fn` wrappers (here and in [`handle_responses`]): one would hold the request
/// twice, as its argument and inside the future it awaits.
pub fn handle(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    req: Request<Bounded>,
) -> impl Future<Output = Response> + Send {
    handle_as(shared, endpoint, req.map(Bounded::into_bytes), None)
}

/// Serves a Responses API request: `req`'s body is its translation to a chat request (made
/// by [`crate::responses::handle`] from a [`Bounded`] body), which
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
        return ctx.reject(Reason::NotReady, Outcome::Rejected);
    };
    let body = match RequestBody::parse(req.body().clone()) {
        Ok(body) => body,
        Err(RequestError::NotAnObject) => return ctx.reject(Reason::NotAnObject, Outcome::Rejected),
        // serde_json's message names line and column, never the content.
        Err(RequestError::Json(e)) => {
            let error = e.to_string();
            return ctx.reject(Reason::InvalidJson { error }, Outcome::Rejected);
        }
    };
    let Some(model) = body.model() else {
        let known = snapshot.models.clone();
        return ctx.reject(Reason::NoModel { known }, Outcome::Rejected);
    };
    let Some(route) = snapshot.routes.get(model).cloned() else {
        let e = Reason::UnknownModel {
            model: model.to_owned(),
            near: routing::closest_model(model, &snapshot.models).map(str::to_owned),
            known: snapshot.models.clone(),
        };
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
    // The headers are read once, here; only what the attempts need outlives this block (the
    // rest is not part of the request's future).
    let (plan, continue_off, client_ms) = {
        let options = match RequestOptions::parse(req) {
            Ok(o) => o,
            Err(e) => return ctx.reject(*e, Outcome::Rejected),
        };
        let mut plan = match routing::plan(&route, &options.tags, &options.overrides, body, stream) {
            Ok(p) => p,
            Err(e) => return ctx.reject(*e, Outcome::Rejected),
        };
        if let Some(n) = &native
            && let Err(e) = crate::responses::narrow(&mut plan, n, &route.route.model)
        {
            ctx.skipped = plan.skipped;
            return ctx.reject(*e, Outcome::Rejected);
        }
        match options.continue_off(&route) {
            Ok(off) => (plan, off, options.client_ms),
            Err(e) => return ctx.reject(*e, Outcome::Rejected),
        }
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
    let base = AttemptBase {
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
                match attempt(&mut ctx, target, &base, &deadline, admission).await {
                    Ok(ok) => {
                        // A native Responses stream is never continued (its events are not
                        // chat chunks).
                        let resume = (base.continues && !ok.native).then(|| {
                            Resume::new(&route, &plan.targets, target, base.body.raw(), &ctx.shared.budget)
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
pub(super) fn continues(route: &RouteRt, rule: Option<&str>) -> bool {
    let rule = rule.and_then(|name| route.route.rules.iter().find(|r| r.name == name));
    rule.and_then(|r| r.continue_on_failure)
        .unwrap_or(route.route.policy.streaming.continue_on_failure)
}

/// What a `context-length` refusal leaves to try: only targets whose context window is larger
/// than every window that refused (or unknown, as is a refusing target's own when it set none).
#[derive(Debug, Default)]
pub(super) struct TooLong {
    /// The first refusal, returned when no other target could serve (boxed: it is part of
    /// every request's future and almost always `None`).
    pub(super) first: Option<Box<(Arc<TargetRt>, Failure)>>,
    /// The largest window that refused.
    pub(super) window: Option<u32>,
    /// A target was tried after the first refusal.
    pub(super) tried_after: bool,
}

impl TooLong {
    pub(super) fn may_try(&self, target: &TargetRt) -> bool {
        match (&self.first, self.window, target.cfg.context_window) {
            (None, _, _) | (_, _, None) | (_, None, _) => true,
            (Some(_), Some(refused), Some(w)) => w > refused,
        }
    }

    /// A target is about to be tried.
    pub(super) fn trying(&mut self) {
        if self.first.is_some() {
            self.tried_after = true;
        }
    }

    pub(super) fn refused(&mut self, target: &Arc<TargetRt>, f: Failure) {
        self.window = self.window.max(target.cfg.context_window);
        if self.first.is_none() {
            self.first = Some(Box::new((target.clone(), f)));
            self.tried_after = false;
        }
    }

    /// The first refusal, when no target was tried after it.
    pub(super) fn unanswered(self) -> Option<(Arc<TargetRt>, Failure)> {
        self.first.filter(|_| !self.tried_after).map(|b| *b)
    }
}

/// How long to wait before trying the route's targets again, when every target that could
/// serve was rate-limited with a `Retry-After`: until the earliest of them is available, if
/// that fits `retry.rateLimit.maxWait` (in total), the deadline and the retry budget.
pub(super) fn rate_limit_wait(
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

pub(super) fn book_fallback(metrics: &Metrics, route: &str, from: &str, to: &str, reason: &'static str) {
    metrics
        .fallbacks
        .with_label_values(&[route, from, to, reason])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request in flight is one allocation the size of its whole future (every provider's
    /// attempt included), so 1,000 held streams cost 1,000 of them. Connecting, credential
    /// exchanges and the upstream timeout are kept out of it (boxed or not doubled). The upstream
    /// headers the client reads ([`crate::providers::UpstreamMeta`]) are one pointer in each
    /// place an attempt's answer or failure is held: 40 bytes over the former 5 KiB. A Responses
    /// request's native body (one pointer in the request and one in what every attempt sends):
    /// 16 more.
    #[test]
    fn a_request_in_flight_stays_small() {
        let shared = Arc::new(Shared {
            table: ArcSwapOption::empty(),
            metrics: Metrics::new().unwrap(),
            audit: Audit::stdout(),
            budget: Budget::new(1 << 20),
        });
        let fut = handle(
            shared,
            Endpoint::Chat,
            Request::new(Bounded::for_test(Bytes::new())),
        );
        let size = size_of_val(&fut);
        assert!(size <= 5 * 1024 + 80, "the request future is {size} bytes");
    }
}
