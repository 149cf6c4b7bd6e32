//! One attempt at one target: pick the body and mode, send, peek the first event of a stream
//! (or assemble it whole), classify, and record a JSON answer's attempt. A stream's attempt
//! stays pending ([`Pending`]) until the stream ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use tokio::time::{Instant, timeout_at};

use detour_api::table::{Capability, Policy, ResponseModel};

use crate::body;
use crate::class::Class;
use crate::deadline::Deadline;
use crate::health::{Admission, Verdict};
use crate::providers::answer::RequestBody;
use crate::providers::assemble::Assembler;
use crate::providers::{Call, Endpoint, Event, EventStream, Failure, OpenAiJson, ReplyBody, UpstreamMeta};
use crate::state::{TargetRt, TargetState};

use super::context::{AttemptEnd, Ctx};
use super::stream::drain;

/// Counts a target's in-flight requests (for `least-busy`) until dropped.
#[derive(Debug)]
pub(super) struct TargetBusy(Arc<TargetState>);

impl TargetBusy {
    pub(super) fn new(state: &Arc<TargetState>) -> Self {
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
pub(super) struct ProbeGuard {
    pub(super) target: Option<Arc<TargetRt>>,
    pub(super) admission: Admission,
}

impl ProbeGuard {
    pub(super) fn new(target: &Arc<TargetRt>, admission: Admission) -> Self {
        Self {
            target: matches!(admission, Admission::Probe { .. }).then(|| target.clone()),
            admission,
        }
    }

    pub(super) fn disarm(&mut self) {
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

/// What every attempt of a request starts from; [`attempt`] makes one target's [`Call`] of it.
pub(super) struct AttemptBase<'a> {
    pub(super) endpoint: Endpoint,
    pub(super) body: &'a RequestBody,
    /// The client asked for a stream.
    pub(super) stream: bool,
    pub(super) policy: &'a Policy,
    /// A Responses request: the client's body, for targets that serve the API natively.
    pub(super) native: Option<&'a RequestBody>,
    /// A committed stream that breaks is continued by the next target.
    pub(super) continues: bool,
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

impl AttemptBase<'_> {
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
/// stream's when the stream ends ([`super::stream::StreamGuard`]).
pub(super) async fn attempt(
    ctx: &mut Ctx,
    target: &Arc<TargetRt>,
    base: &AttemptBase<'_>,
    deadline: &Deadline,
    admission: Admission,
) -> Result<Success, Failure> {
    let t0 = Instant::now();
    // A Responses request picks its body by the target: the client's own for a target that
    // serves the API natively (never assembled: its stream is not chat's), the translation
    // for every other.
    let (endpoint, request, mode, native) = match base
        .native
        .filter(|_| crate::responses::serves_natively(&target.cfg))
    {
        Some(body) => (
            Endpoint::Responses,
            body,
            if base.stream { Mode::Stream } else { Mode::Json },
            true,
        ),
        None => (base.endpoint, base.body, base.mode(target), false),
    };
    let attempt_deadline = deadline.attempt(t0, target.cfg.per_attempt_ms);
    // A half-open probe finds out quickly whether the provider still says nothing.
    let first_byte_ms = match admission {
        Admission::Probe { .. } => target
            .cfg
            .first_byte_ms
            .min(base.policy.health.probe_first_byte_ms),
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
        pass_through: base.policy.response_model != ResponseModel::Route
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
                        peeked: PeekedBody::Stream(held, rest),
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
        Ok(ReplyBody::Passthrough(body)) => Ok(PeekedBody::Passthrough(body)),
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
fn native_json(answer: OpenAiJson) -> Result<PeekedBody, Failure> {
    if crate::responses::native::summary(answer.bytes()).failed {
        let mut f =
            Failure::new(Class::ServerError, "upstream answered a failed response").status(StatusCode::OK);
        f.body = Some(answer.bytes().clone());
        return Err(f);
    }
    Ok(PeekedBody::Json(answer))
}

/// A complete JSON answer, or the content filter that refused it.
fn json_answer(answer: OpenAiJson) -> Result<PeekedBody, Failure> {
    if answer.content_filtered() {
        let mut f =
            Failure::new(Class::ContentFilter, "every choice was content-filtered").status(StatusCode::OK);
        f.body = Some(answer.bytes().clone());
        Err(f)
    } else {
        Ok(PeekedBody::Json(answer))
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
) -> Result<OpenAiJson, Failure> {
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
                let a = OpenAiJson::from_value(&v);
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
    OpenAiJson::parse(asm.finish())
        .map(|a| a.held(held))
        .ok_or_else(|| Failure::new(Class::BadResponse, "the assembled answer is not JSON"))
}

/// A stream's attempt, still open: recorded when the stream ends.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) admission: Admission,
    pub(super) probe: ProbeGuard,
    pub(super) t0: Instant,
}

/// A successful attempt, not yet answered.
pub(super) struct Success {
    pub(super) peeked: PeekedBody,
    pub(super) busy: TargetBusy,
    /// `Some` for a stream, whose attempt is recorded when it ends.
    pub(super) pending: Option<Pending>,
    /// Time to the first event (streams), or the whole attempt.
    pub(super) ttft: Duration,
    /// The headers of the upstream's answer the client reads.
    pub(super) meta: UpstreamMeta,
    /// A Responses answer passed through from a native target (not to be translated).
    pub(super) native: bool,
}

/// A [`ReplyBody`] as a successful attempt leaves it: a JSON answer classified, a large one
/// committed on its head, a stream with its first event read.
pub(super) enum PeekedBody {
    Json(OpenAiJson),
    /// A large JSON answer committed on its head: the client's body.
    Passthrough(body::Body),
    /// The first event (after any undecodable ones held before it) and the rest.
    Stream(VecDeque<Event>, EventStream),
}
