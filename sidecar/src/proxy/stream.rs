//! A committed stream: its state machine (open → drain or abort → ended), the guard that
//! records its attempt and writes the audit line however it ends, and the chunks it forwards
//! (spliced, when a break was continued on the next target: [`super::resume`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::{Instant, sleep, timeout_at};

use crate::audit::ContinuationRecord;
use crate::body;
use crate::class::Class;
use crate::encode::{Encoder, Out};
use crate::metrics::Outcome;
use crate::providers::{Event, EventStream, Failure, OpenAiJson};
use crate::responses::native::NativeEvent;
use crate::state::TargetRt;

use super::attempt::{Pending, TargetBusy};
use super::context::{AttemptEnd, Ctx};
use super::respond::record_usage;
use super::resume::Resume;

/// Owns the request's context while its stream is being sent; records the attempt and writes
/// the audit line when the stream ends — completed, broken, or dropped because the client went
/// away.
#[derive(Debug)]
pub(super) struct StreamGuard {
    pub(super) ctx: Option<Ctx>,
    pub(super) target: Arc<TargetRt>,
    pub(super) pending: Pending,
    pub(super) ttft: Duration,
    /// The provider's own id of the request.
    pub(super) upstream_id: Option<String>,
    /// The attempt was recorded already (it broke, and a continuation was sought).
    pub(super) recorded: bool,
    /// Breaks and continuations, for the audit line.
    pub(super) continuations: Vec<ContinuationRecord>,
    pub(super) _busy: TargetBusy,
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
    pub(super) fn record(&mut self, class: Class, stream_error: bool) {
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

pub(super) struct StreamState {
    pub(super) guard: StreamGuard,
    /// Events read before the stream was committed (the first one, and undecodable ones
    /// before it).
    pub(super) held: VecDeque<Event>,
    pub(super) rest: EventStream,
    /// The longest gap between events.
    pub(super) idle: Duration,
    /// The client's own bound on the whole response.
    pub(super) client: Option<Instant>,
    /// Writes what the stream sends in the client's wire format.
    encoder: Encoder,
    /// A chunk with a `finish_reason` went out.
    pub(super) finished: bool,
    phase: Phase,
    /// Set when a break is continued by the next target (boxed: absent from most streams).
    pub(super) resume: Option<Box<Resume>>,
}

/// How long a broken stream waits between its error event and the abnormal end, so the server
/// has written the event (a pending body lets it flush) before it aborts the transfer.
const ABORT_FLUSH: Duration = Duration::from_millis(10);

/// How long the end of an upstream's body may take after its `[DONE]` (normally it is in the
/// same read); an upstream slower than that loses its connection, not the client's time.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(50);

/// Reads what an upstream sends after `[DONE]` — normally only the end of its body — so that
/// its keep-alive connection goes back to the pool instead of being closed.
pub(super) async fn drain(rest: &mut EventStream) {
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
                Event::Data(v) => self.chunk(&OpenAiJson::from_value(&v)),
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
        Some(self.chunk(&OpenAiJson::from_value(&v)))
    }

    /// One chunk for the client, usage counted.
    fn chunk(&mut self, a: &OpenAiJson) -> Bytes {
        self.finished |= a.finished();
        record_usage(&self.guard.target, a.usage());
        self.encoder.encode(Out::Chunk(a))
    }

    /// One event of a native Responses stream for the client, as it came: its usage counted,
    /// its response id remembered for `previous_response_id`; a terminal event completes the
    /// stream.
    pub(super) fn native(&mut self, n: NativeEvent) -> Bytes {
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

pub(super) fn stream_body(
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
