//! One JSON line per request on stdout: what was asked of which route, which targets were
//! tried with what result, who served it. Never prompt text, never a key: the record is
//! built only from the route table, closed enums and numbers.

use std::io::Write as _;
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

/// Where audit lines go.
#[derive(Debug)]
pub struct Audit {
    stdout: AtomicBool,
    tap: Option<mpsc::UnboundedSender<AuditRecord>>,
}

impl Audit {
    /// Lines to stdout only.
    pub fn stdout() -> Self {
        Self {
            stdout: AtomicBool::new(true),
            tap: None,
        }
    }

    /// Lines to stdout (when `stdout`) and every record to `tap` (tests, the demo).
    pub fn with_tap(stdout: bool, tap: mpsc::UnboundedSender<AuditRecord>) -> Self {
        Self {
            stdout: AtomicBool::new(stdout),
            tap: Some(tap),
        }
    }

    pub fn set_stdout(&self, on: bool) {
        self.stdout.store(on, Ordering::Relaxed);
    }

    pub fn write(&self, record: AuditRecord) {
        if self.stdout.load(Ordering::Relaxed) {
            match serde_json::to_vec(&record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    // One write of a whole line keeps lines whole under concurrency.
                    let _ = std::io::stdout().lock().write_all(&line);
                }
                Err(e) => tracing::warn!(error = %e, "audit line not serialisable"),
            }
        }
        if let Some(tap) = &self.tap {
            let _ = tap.send(record);
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
