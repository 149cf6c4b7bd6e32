//! One JSON line per request on stdout: what was asked of which route, which targets were
//! tried with what result, who served it. Never prompt text, never a key: the record is
//! built only from the route table, closed enums and numbers, and — for an attempt that
//! could not reach its upstream — the sidecar's own words for why (the credential file or
//! variable, or the connection phase that failed; never a value).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::class::Class;

/// One attempt, as the audit line shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRecord {
    /// Shared with the route table: no copy per request.
    pub target: Arc<str>,
    pub class: Class,
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// Why a `credentials` or `connect-error` attempt failed: the file or variable named
    /// (never its value), or DNS / refused / TLS / timeout with the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<std::borrow::Cow<'static, str>>,
    /// The provider's own id of the request (its `x-request-id`, `request-id`, …), to cite
    /// to the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
}

/// A target passed over without an attempt.
#[derive(Clone, Debug, Serialize)]
pub struct SkipRecord {
    pub target: String,
    /// `circuit-open`, `capability`, `context-window`, `pinned`.
    pub reason: &'static str,
}

/// A committed stream that broke, and what was done about it (`streaming.continueOnFailure`).
#[derive(Clone, Debug, Serialize)]
pub struct ContinuationRecord {
    /// The target whose stream broke, and how.
    pub from: String,
    pub class: Class,
    /// Text delivered to the client before the break: bytes, and chunks that carried text
    /// (one token each for providers that stream per token).
    pub bytes: u64,
    pub chunks: u64,
    /// The target asked to continue; `None` when none was.
    pub to: Option<String>,
    /// `prefill` or `prompt`, when a target was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<&'static str>,
    /// `ok` (the continuation was spliced in), the failed attempt's class, or why no target
    /// was asked (`tool-call`, `n`, `logprobs`, `json-format`, `too-long`, `buffer-budget`, `deadline`,
    /// `budget`, `no-target`).
    pub result: &'static str,
}

/// How a cost/quality strategy placed the request.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreRecord {
    /// The complexity score; absent when the request could not be scored.
    pub value: Option<f64>,
    /// `simple`, `medium`, `complex` or `unscored`.
    pub class: &'static str,
    /// The scorer's version.
    pub scorer: &'static str,
    /// The decision in words, thresholds included.
    pub rule: String,
}

/// The audit line.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    /// Unix time in milliseconds.
    pub ts_ms: u128,
    pub request_id: String,
    pub endpoint: &'static str,
    /// The route's id and the serving target's name, shared with the route table.
    pub route: Option<Arc<str>>,
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreRecord>,
    pub stream: bool,
    pub target: Option<Arc<str>>,
    pub provider: Option<&'static str>,
    /// The serving provider's own id of the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    pub fallback_count: u32,
    pub attempts: Vec<AttemptRecord>,
    pub skipped: Vec<SkipRecord>,
    pub status: u16,
    pub outcome: &'static str,
    pub latency_ms: f64,
    pub overhead_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_error: Option<Class>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub continuations: Vec<ContinuationRecord>,
}

impl AuditRecord {
    /// The line (without its newline), on the writer thread: byte for byte what
    /// `serde_json::to_writer` makes of the record, with the keys (fixed, nothing to escape)
    /// copied as they are and only the values going through `serde_json`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts_ms\":");
        value(out, &self.ts_ms);
        out.extend_from_slice(b",\"request_id\":");
        value(out, self.request_id.as_str());
        out.extend_from_slice(b",\"endpoint\":");
        value(out, self.endpoint);
        out.extend_from_slice(b",\"route\":");
        value(out, &self.route);
        out.extend_from_slice(b",\"rule\":");
        value(out, &self.rule);
        if let Some(score) = &self.score {
            out.extend_from_slice(b",\"score\":{\"value\":");
            value(out, &score.value);
            out.extend_from_slice(b",\"class\":");
            value(out, score.class);
            out.extend_from_slice(b",\"scorer\":");
            value(out, score.scorer);
            out.extend_from_slice(b",\"rule\":");
            value(out, score.rule.as_str());
            out.push(b'}');
        }
        out.extend_from_slice(if self.stream {
            b",\"stream\":true,\"target\":"
        } else {
            b",\"stream\":false,\"target\":"
        });
        value(out, &self.target);
        out.extend_from_slice(b",\"provider\":");
        value(out, &self.provider);
        if let Some(id) = &self.upstream_request_id {
            out.extend_from_slice(b",\"upstream_request_id\":");
            value(out, id.as_str());
        }
        out.extend_from_slice(b",\"fallback_count\":");
        value(out, &self.fallback_count);
        out.extend_from_slice(b",\"attempts\":[");
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"target\":");
            value(out, &*a.target);
            out.extend_from_slice(b",\"class\":");
            value(out, &a.class);
            out.extend_from_slice(b",\"status\":");
            value(out, &a.status);
            out.extend_from_slice(b",\"latency_ms\":");
            value(out, &a.latency_ms);
            if let Some(detail) = &a.detail {
                out.extend_from_slice(b",\"detail\":");
                value(out, detail.as_ref());
            }
            if let Some(id) = &a.upstream_request_id {
                out.extend_from_slice(b",\"upstream_request_id\":");
                value(out, id.as_str());
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"skipped\":[");
        for (i, s) in self.skipped.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"target\":");
            value(out, s.target.as_str());
            out.extend_from_slice(b",\"reason\":");
            value(out, s.reason);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"status\":");
        value(out, &self.status);
        out.extend_from_slice(b",\"outcome\":");
        value(out, self.outcome);
        out.extend_from_slice(b",\"latency_ms\":");
        value(out, &self.latency_ms);
        out.extend_from_slice(b",\"overhead_us\":");
        value(out, &self.overhead_us);
        if let Some(class) = &self.stream_error {
            out.extend_from_slice(b",\"stream_error\":");
            value(out, class);
        }
        if !self.continuations.is_empty() {
            out.extend_from_slice(b",\"continuations\":[");
            for (i, c) in self.continuations.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"from\":");
                value(out, c.from.as_str());
                out.extend_from_slice(b",\"class\":");
                value(out, &c.class);
                out.extend_from_slice(b",\"bytes\":");
                value(out, &c.bytes);
                out.extend_from_slice(b",\"chunks\":");
                value(out, &c.chunks);
                out.extend_from_slice(b",\"to\":");
                value(out, &c.to);
                if let Some(style) = c.style {
                    out.extend_from_slice(b",\"style\":");
                    value(out, style);
                }
                out.extend_from_slice(b",\"result\":");
                value(out, c.result);
                out.push(b'}');
            }
            out.push(b']');
        }
        out.push(b'}');
    }
}

/// One value of the line through `serde_json` (strings escaped, numbers as it writes them).
fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing to a Vec cannot fail, and no value is a map with non-string keys.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Audit lines waiting for the writer thread; past this the request path writes its own
/// line (back-pressure instead of unbounded memory or lost lines).
const QUEUE: usize = 8192;
/// How often the writer thread writes what is queued.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// The writer thread writes its lines in pieces of about this many bytes.
const WRITE_AT: usize = 64 * 1024;
/// Queued records whose room the writer keeps between rounds (a steady load's batch).
const KEEP_QUEUED: usize = 1024;
/// Empty rounds in a row (one second) after which the writer sleeps until the next line,
/// so an idle sidecar's writer is not woken 50 times a second.
const IDLE_ROUNDS: u32 = 50;

#[derive(Debug, Default)]
struct Queue {
    lines: std::sync::Mutex<Vec<AuditRecord>>,
    closed: AtomicBool,
    /// The writer found nothing for [`IDLE_ROUNDS`] rounds and sleeps until a line comes
    /// (set and cleared under `lines`' lock).
    asleep: AtomicBool,
}

/// Where audit lines go.
///
/// Lines are queued and written by one dedicated thread every 20 ms, so the request path
/// makes no `write` syscall, never blocks on a slow stdout pipe and, while lines keep coming,
/// wakes no thread; lines written under load become a few large writes. After a second
/// without lines the thread sleeps until the next one (which unparks it). Dropping the `Audit` writes every queued
/// line before it returns.
#[derive(Debug)]
pub struct Audit {
    stdout: AtomicBool,
    queue: Arc<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
    tap: Option<mpsc::UnboundedSender<AuditRecord>>,
}

fn write_line(out: &mut impl std::io::Write, record: &AuditRecord) {
    let mut line = Vec::with_capacity(512);
    record.write_json(&mut line);
    line.push(b'\n');
    let _ = out.write_all(&line);
}

impl Audit {
    /// Lines to stdout only.
    pub fn stdout() -> Self {
        Self::new(true, None)
    }

    /// Lines to stdout (when `stdout`) and every record to `tap` (tests, the demo).
    pub fn with_tap(stdout: bool, tap: mpsc::UnboundedSender<AuditRecord>) -> Self {
        Self::new(stdout, Some(tap))
    }

    fn new(stdout: bool, tap: Option<mpsc::UnboundedSender<AuditRecord>>) -> Self {
        Self::writing_to(std::io::stdout(), stdout, tap)
    }

    /// The writer thread writes to `sink` (stdout but in tests).
    fn writing_to(
        mut sink: impl std::io::Write + Send + 'static,
        stdout: bool,
        tap: Option<mpsc::UnboundedSender<AuditRecord>>,
    ) -> Self {
        let queue = Arc::new(Queue::default());
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("detour-audit".to_owned())
            .spawn(move || {
                let mut out = Vec::with_capacity(WRITE_AT + 1024);
                // Swapped with the queue's each round, so neither grows again from empty.
                let mut batch = Vec::new();
                let mut empty_rounds = 0;
                loop {
                    if q.asleep.load(Ordering::Acquire) {
                        std::thread::park();
                    } else {
                        std::thread::park_timeout(FLUSH_EVERY);
                    }
                    let closed = q.closed.load(Ordering::Acquire);
                    {
                        let mut lines = q.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        std::mem::swap(&mut batch, &mut *lines);
                        empty_rounds = if batch.is_empty() { empty_rounds + 1 } else { 0 };
                        q.asleep.store(empty_rounds >= IDLE_ROUNDS, Ordering::Release);
                    }
                    for record in batch.drain(..) {
                        record.write_json(&mut out);
                        out.push(b'\n');
                        if out.len() >= WRITE_AT {
                            let _ = sink.write_all(&out);
                            out.clear();
                        }
                    }
                    if !out.is_empty() {
                        let _ = sink.write_all(&out);
                        out.clear();
                    }
                    let _ = sink.flush();
                    // What a burst left is given back; a steady load keeps its size.
                    batch.shrink_to(KEEP_QUEUED);
                    out.shrink_to(WRITE_AT + 1024);
                    if closed {
                        return;
                    }
                }
            });
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no audit writer thread; writing audit lines inline");
                None
            }
        };
        Self {
            stdout: AtomicBool::new(stdout),
            queue,
            thread,
            tap,
        }
    }

    pub fn set_stdout(&self, on: bool) {
        self.stdout.store(on, Ordering::Relaxed);
    }

    pub fn write(&self, record: AuditRecord) {
        if let Some(tap) = &self.tap {
            let _ = tap.send(record.clone());
        }
        if !self.stdout.load(Ordering::Relaxed) {
            return;
        }
        if self.thread.is_some() {
            let mut lines = self
                .queue
                .lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if lines.len() < QUEUE {
                lines.push(record);
                // The first line after a quiet second wakes the writer (a quiet sidecar
                // pays one unpark; a busy one none).
                if self.queue.asleep.load(Ordering::Acquire) {
                    self.queue.asleep.store(false, Ordering::Release);
                    drop(lines);
                    if let Some(t) = &self.thread {
                        t.thread().unpark();
                    }
                }
                return;
            }
        }
        write_line(&mut std::io::stdout().lock(), &record);
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(full: bool) -> AuditRecord {
        AuditRecord {
            ts_ms: 1_790_000_000_123,
            request_id: "0123456789abcdef0123456789abcdef".to_owned(),
            endpoint: "chat/completions",
            route: full.then(|| "smart/\"odd\"\\name\u{1}é".into()),
            rule: full.then(|| "free-tier".to_owned()),
            score: full.then(|| ScoreRecord {
                value: Some(0.8125),
                class: "complex",
                scorer: "v1",
                rule: "score 0.81 > complexAbove 0.60 (reasoning_words): most capable first".to_owned(),
            }),
            stream: full,
            target: full.then(|| "backup".into()),
            provider: full.then_some("anthropic"),
            upstream_request_id: full.then(|| "req_011CX".to_owned()),
            fallback_count: u32::from(full),
            attempts: if full {
                vec![
                    AttemptRecord {
                        target: "primary".into(),
                        class: Class::RateLimited,
                        status: Some(429),
                        latency_ms: 12.0,
                        detail: None,
                        upstream_request_id: None,
                    },
                    AttemptRecord {
                        target: "backup".into(),
                        class: Class::Ok,
                        status: None,
                        latency_ms: 0.001,
                        detail: None,
                        upstream_request_id: Some("req_011CX".to_owned()),
                    },
                ]
            } else {
                Vec::new()
            },
            skipped: if full {
                vec![SkipRecord {
                    target: "cheap".to_owned(),
                    reason: "circuit-open",
                }]
            } else {
                Vec::new()
            },
            status: 200,
            outcome: "ok",
            latency_ms: 1234.5,
            overhead_us: 37,
            stream_error: full.then_some(Class::Reset),
            continuations: Vec::new(),
        }
    }

    /// The hand-written line is byte for byte what serde's derive writes of the record, with
    /// every optional part absent and present, text that needs escaping and odd numbers.
    #[test]
    fn line_is_what_serde_writes_of_the_record() {
        let mut full = record(true);
        full.attempts[0].detail = Some("credential file /run/keys/\"a\" missing".into());
        full.attempts[1].latency_ms = f64::NAN;
        full.skipped.push(SkipRecord {
            target: "tab\there".to_owned(),
            reason: "capability",
        });
        full.continuations = vec![
            ContinuationRecord {
                from: "primary".to_owned(),
                class: Class::Reset,
                bytes: 1234,
                chunks: 17,
                to: Some("backup".to_owned()),
                style: Some("prefill"),
                result: "ok",
            },
            ContinuationRecord {
                from: "backup".to_owned(),
                class: Class::Timeout,
                bytes: 0,
                chunks: 0,
                to: None,
                style: None,
                result: "no-target",
            },
        ];
        let mut unscored = record(true);
        unscored.score = Some(ScoreRecord {
            value: None,
            class: "unscored",
            scorer: "v1",
            rule: String::new(),
        });
        unscored.upstream_request_id = None;
        unscored.stream_error = None;
        unscored.ts_ms = u128::MAX;
        unscored.latency_ms = 1e300;
        for r in [record(false), record(true), full, unscored] {
            let mut line = Vec::new();
            r.write_json(&mut line);
            let derived = serde_json::to_vec(&r).unwrap();
            assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(derived).unwrap()
            );
        }
    }

    /// What the writer thread has written, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Waits (real time, bounded) until `done` holds.
    fn within(limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
        let start = std::time::SystemTime::now();
        while !done() {
            if start.elapsed().unwrap_or_default() > limit {
                return false;
            }
            std::thread::park_timeout(std::time::Duration::from_millis(5));
        }
        true
    }

    /// After a quiet second the writer thread sleeps without a timer, and the next line
    /// wakes it: that line is written, not left queued.
    #[test]
    fn a_sleeping_writer_is_woken_by_the_next_line() {
        let sink = Sink::default();
        let audit = Audit::writing_to(sink.clone(), true, None);
        let lines = || sink.0.lock().unwrap().iter().filter(|&&b| b == b'\n').count();
        audit.write(record(false));
        assert!(within(std::time::Duration::from_secs(5), || lines() == 1));
        assert!(within(std::time::Duration::from_secs(10), || {
            audit.queue.asleep.load(Ordering::Acquire)
        }));
        // Asleep: parked with no timeout, so only the write's unpark can bring this line out.
        audit.write(record(true));
        assert!(within(std::time::Duration::from_secs(5), || lines() == 2));
        assert!(!audit.queue.asleep.load(Ordering::Acquire));
        drop(audit);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut expected = Vec::new();
        record(false).write_json(&mut expected);
        expected.push(b'\n');
        record(true).write_json(&mut expected);
        expected.push(b'\n');
        assert_eq!(text, String::from_utf8(expected).unwrap());
    }

    /// The line is one JSON object with the documented fields; `score` and
    /// `stream_error` appear only when set, and text from the configuration is escaped.
    #[test]
    fn line_has_the_documented_fields() {
        let keys = |r: &AuditRecord| {
            let mut line = Vec::new();
            r.write_json(&mut line);
            assert!(!line.contains(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            (v.as_object().unwrap().keys().cloned().collect::<Vec<_>>(), v)
        };
        let (short, _) = keys(&record(false));
        assert!(!short.contains(&"score".to_owned()) && !short.contains(&"stream_error".to_owned()));
        let mut r = record(true);
        r.route = Some("a \"quoted\" route".into());
        let (long, v) = keys(&r);
        for k in [
            "ts_ms",
            "request_id",
            "endpoint",
            "route",
            "attempts",
            "skipped",
            "status",
            "outcome",
            "stream_error",
        ] {
            assert!(long.contains(&k.to_owned()), "{k} missing: {long:?}");
        }
        assert_eq!(v["route"], "a \"quoted\" route");
        assert_eq!(v["attempts"][0]["class"], "429");
    }
}
