//! The client's response: a successful attempt's answer (JSON, passed through, or a stream),
//! a failure passed through as the upstream sent it, the error of an exhausted route, or the
//! sidecar's own refusal ([`Ctx::reject`]); each carrying what its `x-detour-*` response headers
//! say ([`Ctx::stamp`]), for `layers::request_id` to write.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use tokio::time::Instant;

use detour_api::table::ResponseModel;

use crate::body::{self, Response};
use crate::class::Class;
use crate::deadline::Deadline;
use crate::encode::Encoder;
use crate::error::Reason;
use crate::headers::{Stamp, answer_headers};
use crate::metrics::Outcome;
use crate::providers::answer::Usage;
use crate::providers::{Failure, UpstreamMeta};

use crate::state::{RouteRt, TargetRt};

use super::attempt::{PeekedBody, Success};
use super::context::Ctx;
use super::resume::Resume;
use super::stream::{StreamGuard, stream_body};

/// A whole JSON answer (held or passed through) with the upstream's headers the client reads
/// and the `x-detour-*` headers; the request ends here.
fn json_answer(ctx: Ctx, meta: &UpstreamMeta, body: body::Body) -> Response {
    let mut resp = http::Response::new(body);
    *resp.headers_mut() = answer_headers(1, meta.len());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    meta.apply(resp.headers_mut());
    ctx.stamp(&mut resp);
    ctx.finish(200, Outcome::Ok, None);
    resp
}

/// Answers with a successful attempt: the JSON body, or the stream from its first event
/// (`client`: the client's own bound on the whole response, `x-detour-timeout-ms`).
pub(super) fn respond(
    mut ctx: Ctx,
    route: &Arc<RouteRt>,
    target: &Arc<TargetRt>,
    ok: Success,
    client: Option<Instant>,
    resume: Option<Box<Resume>>,
) -> Response {
    let route_model = (route.route.policy.response_model == ResponseModel::Route).then(|| route.clone());
    match (ok.peeked, ok.pending) {
        (PeekedBody::Json(answer), _) => {
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
            json_answer(ctx, &ok.meta, body)
        }
        (PeekedBody::Passthrough(body), _) => {
            drop(ok.busy);
            ctx.commit();
            json_answer(ctx, &ok.meta, body)
        }
        (PeekedBody::Stream(held, rest), Some(pending)) => {
            target.metrics.first_byte().observe(ok.ttft.as_secs_f64());
            ctx.commit();
            let mut resp = http::Response::new(body::full(Bytes::new()));
            *resp.headers_mut() = answer_headers(2, ok.meta.len());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            ok.meta.apply(resp.headers_mut());
            ctx.stamp(&mut resp);
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
        (PeekedBody::Stream(..), None) => {
            ctx.commit();
            let mut resp = http::Response::new(body::full(Bytes::new()));
            ctx.stamp(&mut resp);
            ctx.finish(200, Outcome::Ok, None);
            resp
        }
    }
}

pub(super) fn record_usage(target: &TargetRt, usage: Option<Usage>) {
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
pub(super) fn passthrough(mut ctx: Ctx, target: &TargetRt, f: Failure) -> Response {
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
        _ => Reason::UpstreamFailed {
            target: target.cfg.name.clone(),
            class: f.class,
            detail: f.detail.to_string(),
        }
        .into_response(),
    };
    f.meta.apply(resp.headers_mut());
    ctx.commit();
    ctx.stamp(&mut resp);
    let status = resp.status().as_u16();
    ctx.finish(status, outcome, None);
    resp
}

/// Every target failed or was unavailable.
pub(super) fn exhausted(
    mut ctx: Ctx,
    route: &RouteRt,
    targets: &[Arc<TargetRt>],
    deadline: &Deadline,
) -> Response {
    let now = Instant::now();
    let next = targets
        .iter()
        .map(|t| t.with_breaker(now, "cooldown", |b| b.available_at(now)))
        .min()
        .unwrap_or(now);
    let retry_after = next.saturating_duration_since(now).as_secs_f64().ceil().max(1.0);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive and small"
    )]
    let retry_after = retry_after as u64;
    let e = Reason::AllTargetsFailed {
        model: route.route.model.clone(),
        selected: targets.len(),
        attempts: ctx.attempts.clone(),
        skipped: ctx.skipped.clone(),
        deadline_passed: deadline.expired(now),
        retry_after,
    };
    ctx.commit();
    let mut resp = e.into_response();
    ctx.stamp(&mut resp);
    ctx.finish(503, Outcome::Exhausted, None);
    resp
}

/// The client's response from the context: its `x-detour-*` headers, and the sidecar's own errors.
impl Ctx {
    /// Leaves what the `x-detour-*` response headers say on the response, for
    /// `layers::request_id`, their one writer.
    pub(super) fn stamp(&self, resp: &mut Response) {
        let score = self.score.as_ref().and_then(|d| {
            let v = d
                .value
                .map_or_else(|| d.class.as_str().to_owned(), |v| format!("{v:.3}"));
            HeaderValue::from_str(&v).ok()
        });
        resp.extensions_mut().insert(Stamp {
            route: self.route.as_ref().and_then(|r| r.route_header.clone()),
            target: self.target.as_ref().and_then(|t| t.name_header.clone()),
            provider: self.target.as_ref().map(|t| t.provider_name()),
            fallback_count: self.fallback_count,
            score,
        });
    }

    /// Answers with an error of the sidecar's own.
    pub(super) fn reject(mut self, reason: Reason, outcome: Outcome) -> Response {
        self.commit();
        let mut resp = reason.into_response();
        let status = resp.status().as_u16();
        self.stamp(&mut resp);
        self.finish(status, outcome, None);
        resp
    }
}
