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
    match serde_json::to_vec(record) {
        Ok(mut line) => {
            line.push(b'\n');
            let _ = out.write_all(&line);
        }
        Err(e) => tracing::warn!(error = %e, "audit line not serialisable"),
    }
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
