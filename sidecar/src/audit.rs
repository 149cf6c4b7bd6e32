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

/// The audit line.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    /// Unix time in milliseconds.
    pub ts_ms: u128,
    pub request_id: String,
    pub endpoint: &'static str,
    pub route: Option<String>,
    pub rule: Option<String>,
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

/// Audit lines waiting for the writer thread; past this the request path writes itself
/// (back-pressure instead of unbounded memory or lost lines).
const QUEUE: usize = 8192;

/// Where audit lines go.
///
/// Lines are serialised and written by one dedicated thread, so the request path never
/// makes the `write` syscall or blocks on a slow stdout pipe, and lines written under load
/// are batched into few writes. Dropping the `Audit` flushes every queued line.
#[derive(Debug)]
pub struct Audit {
    stdout: AtomicBool,
    writer: Option<std::sync::mpsc::SyncSender<AuditRecord>>,
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
        let (tx, rx) = std::sync::mpsc::sync_channel::<AuditRecord>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("detour-audit".to_owned())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
                while let Ok(first) = rx.recv() {
                    write_line(&mut out, &first);
                    // Batch whatever else is queued, then flush once.
                    while let Ok(more) = rx.try_recv() {
                        write_line(&mut out, &more);
                    }
                    let _ = std::io::Write::flush(&mut out);
                }
                let _ = std::io::Write::flush(&mut out);
            });
        let (writer, thread) = match thread {
            Ok(handle) => (Some(tx), Some(handle)),
            Err(e) => {
                tracing::warn!(error = %e, "no audit writer thread; writing audit lines inline");
                (None, None)
            }
        };
        Self {
            stdout: AtomicBool::new(stdout),
            writer,
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
        let record = match &self.writer {
            Some(w) => match w.try_send(record) {
                Ok(()) => return,
                Err(
                    std::sync::mpsc::TrySendError::Full(r) | std::sync::mpsc::TrySendError::Disconnected(r),
                ) => r,
            },
            None => record,
        };
        write_line(&mut std::io::stdout().lock(), &record);
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it and exit.
        self.writer = None;
        if let Some(t) = self.thread.take() {
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
