//! One JSON line per request on stdout: what was asked of which route, which targets were
//! tried with what result, who served it. Never prompt text, never a key: the record is
//! built only from the route table, closed enums and numbers.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::class::Class;

/// One attempt, as the audit line shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRecord {
    pub target: String,
    pub class: Class,
    pub status: Option<u16>,
    pub latency_ms: f64,
}

/// A target passed over without an attempt.
#[derive(Clone, Debug, Serialize)]
pub struct SkipRecord {
    pub target: String,
    /// `circuit-open`, `capability`, `context-window`.
    pub reason: &'static str,
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
    pub route: Option<String>,
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreRecord>,
    pub stream: bool,
    pub target: Option<String>,
    pub provider: Option<&'static str>,
    pub fallback_count: u32,
    pub attempts: Vec<AttemptRecord>,
    pub skipped: Vec<SkipRecord>,
    pub status: u16,
    pub outcome: &'static str,
    pub latency_ms: f64,
    pub overhead_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_error: Option<Class>,
}

impl AuditRecord {
    /// The line (without its newline), byte for byte what `serde_json` makes of the record,
    /// written directly: keys and closed-set values (`&'static str`) as they are, only text
    /// from the configuration and the request id escaped. This is the writer thread's work
    /// per request, so it is kept cheap.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts_ms\":");
        number(out, self.ts_ms);
        out.extend_from_slice(b",\"request_id\":");
        text(out, &self.request_id);
        out.extend_from_slice(b",\"endpoint\":");
        word(out, self.endpoint);
        out.extend_from_slice(b",\"route\":");
        opt_text(out, self.route.as_deref());
        out.extend_from_slice(b",\"rule\":");
        opt_text(out, self.rule.as_deref());
        if let Some(score) = &self.score {
            out.extend_from_slice(b",\"score\":{\"value\":");
            match score.value {
                Some(v) => float(out, v),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"class\":");
            word(out, score.class);
            out.extend_from_slice(b",\"scorer\":");
            word(out, score.scorer);
            out.extend_from_slice(b",\"rule\":");
            text(out, &score.rule);
            out.push(b'}');
        }
        out.extend_from_slice(if self.stream {
            b",\"stream\":true,\"target\":"
        } else {
            b",\"stream\":false,\"target\":"
        });
        opt_text(out, self.target.as_deref());
        out.extend_from_slice(b",\"provider\":");
        match self.provider {
            Some(p) => word(out, p),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"fallback_count\":");
        number(out, self.fallback_count);
        out.extend_from_slice(b",\"attempts\":[");
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"target\":");
            text(out, &a.target);
            out.extend_from_slice(b",\"class\":");
            word(out, a.class.as_str());
            out.extend_from_slice(b",\"status\":");
            match a.status {
                Some(s) => number(out, s),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"latency_ms\":");
            float(out, a.latency_ms);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"skipped\":[");
        for (i, k) in self.skipped.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"target\":");
            text(out, &k.target);
            out.extend_from_slice(b",\"reason\":");
            word(out, k.reason);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"status\":");
        number(out, self.status);
        out.extend_from_slice(b",\"outcome\":");
        word(out, self.outcome);
        out.extend_from_slice(b",\"latency_ms\":");
        float(out, self.latency_ms);
        out.extend_from_slice(b",\"overhead_us\":");
        number(out, self.overhead_us);
        if let Some(c) = self.stream_error {
            out.extend_from_slice(b",\"stream_error\":");
            word(out, c.as_str());
        }
        out.push(b'}');
    }
}

/// A closed-set value: a `&'static str` of this crate with nothing to escape.
fn word(out: &mut Vec<u8>, s: &'static str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Text that may need escaping (configuration names, rule descriptions).
fn text(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn opt_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => text(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, n: impl Into<u128>) {
    // serde_json writes integers with `itoa`, without the formatting machinery.
    let n = n.into();
    let _ = match u64::try_from(n) {
        Ok(small) => serde_json::to_writer(&mut *out, &small),
        Err(_) => serde_json::to_writer(&mut *out, &n),
    };
}

fn float(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// Audit lines waiting for the writer thread; past this the request path writes its own
/// line (back-pressure instead of unbounded memory or lost lines).
const QUEUE: usize = 8192;
/// How often the writer thread writes what is queued.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Debug, Default)]
struct Queue {
    lines: std::sync::Mutex<Vec<AuditRecord>>,
    closed: AtomicBool,
}

/// Where audit lines go.
///
/// Lines are queued and written by one dedicated thread every 20 ms, so the request path
/// makes no `write` syscall, never blocks on a slow stdout pipe and wakes no thread; lines
/// written under load become a few large writes. Dropping the `Audit` writes every queued
/// line before it returns.
#[derive(Debug)]
pub struct Audit {
    stdout: AtomicBool,
    queue: std::sync::Arc<Queue>,
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
        let queue = std::sync::Arc::new(Queue::default());
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("detour-audit".to_owned())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
                loop {
                    std::thread::park_timeout(FLUSH_EVERY);
                    let closed = q.closed.load(Ordering::Acquire);
                    let batch = std::mem::take(
                        &mut *q.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                    );
                    for record in &batch {
                        write_line(&mut out, record);
                    }
                    let _ = std::io::Write::flush(&mut out);
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
            route: full.then(|| "smart/\"odd\"\\name\u{1}é".to_owned()),
            rule: full.then(|| "free-tier".to_owned()),
            score: full.then(|| ScoreRecord {
                value: Some(0.8125),
                class: "complex",
                scorer: "v1",
                rule: "score 0.81 > complexAbove 0.60 (reasoning_words): most capable first".to_owned(),
            }),
            stream: full,
            target: full.then(|| "backup".to_owned()),
            provider: full.then_some("anthropic"),
            fallback_count: u32::from(full),
            attempts: if full {
                vec![
                    AttemptRecord {
                        target: "primary".to_owned(),
                        class: Class::RateLimited,
                        status: Some(429),
                        latency_ms: 12.0,
                    },
                    AttemptRecord {
                        target: "backup".to_owned(),
                        class: Class::Ok,
                        status: None,
                        latency_ms: 0.001,
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
        }
    }

    /// The hand-written line is byte for byte serde_json's, with and without every optional
    /// part, escapes included.
    #[test]
    fn line_is_serde_json_byte_for_byte() {
        for full in [false, true] {
            let r = record(full);
            let mut mine = Vec::new();
            r.write_json(&mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(&r).unwrap()
            );
        }
        let mut r = record(true);
        r.score = Some(ScoreRecord {
            value: None,
            class: "unscored",
            scorer: "v1",
            rule: String::new(),
        });
        let mut mine = Vec::new();
        r.write_json(&mut mine);
        assert_eq!(
            String::from_utf8(mine).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
    }
}
