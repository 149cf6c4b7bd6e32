//! Continuing a broken stream on the next target (`streaming.continueOnFailure`): what it
//! needs ([`Resume`]), the search for a target that takes over, and the splice that makes its
//! chunks follow the client's stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use crate::audit::{ContinuationRecord, SkipRecord};
use crate::budget::Budget;
use crate::class::Class;
use crate::continuation::{self, Partial, Refusal, Splice, Style};
use crate::deadline::Deadline;
use crate::health::Admission;
use crate::providers::Endpoint;
use crate::providers::answer::RequestBody;
use crate::state::{RouteRt, TargetRt};

use super::attempt::{AttemptBase, PeekedBody, Success, attempt};
use super::book_fallback;
use super::stream::StreamState;

/// What continuing a broken stream needs (`streaming.continueOnFailure`).
#[derive(Debug)]
pub(super) struct Resume {
    route: Arc<RouteRt>,
    /// Targets after the serving one, in the plan's order, not asked yet.
    next: VecDeque<Arc<TargetRt>>,
    /// The client's request body (a reference to the bytes already held).
    raw: Bytes,
    pub(super) partial: Partial,
    /// Rewrites the chunks of the target that continues.
    pub(super) splice: Option<Splice>,
    /// The breaks so far, for the `detour` field of the final chunk.
    breaks: Vec<serde_json::Value>,
}

/// A continuation is not started with less time than this before the client's
/// `x-detour-timeout-ms`.
const MIN_CONTINUATION: Duration = Duration::from_secs(1);

impl Resume {
    /// The targets after `serving` in the plan are the ones a break may be continued on.
    pub(super) fn new(
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

impl StreamState {
    /// The serving target's stream broke with `class`: asks the next eligible targets to
    /// finish the answer. `true` when one took over (its events follow on `rest`).
    pub(super) async fn resume(&mut self, class: Class) -> bool {
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
            let PeekedBody::Stream(held, rest) = ok.peeked else {
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
            let base = AttemptBase {
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
            match Box::pin(attempt(ctx, &target, &base, &deadline, admission)).await {
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
}
