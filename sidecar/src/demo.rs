//! `--demo`: sends a short scripted burst through the running sidecar over loopback, prints
//! per request which target and provider served it and why (from the response headers and
//! the audit record), then the fallback rate computed from the sidecar's own `/metrics`, and
//! a `curl` line to try by hand. The sidecar keeps serving afterwards.
//!
//! The burst's outcome does not depend on the machine's speed: requests go back to back (the
//! burst takes a fraction of the shortest pause a 429 causes), and before the last round the
//! demo waits until every target paused by a `Retry-After` is back, so a slow or busy machine
//! prints the same table and the same fallback rate. Log lines written while the table is
//! printed are held by [`LogGate`] and written after it.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

use crate::audit::AuditRecord;
use crate::providers::HttpClient;
use crate::providers::client::UpstreamBody;
use crate::server::Running;

/// Requests in the burst.
const BURST: usize = 12;
/// Requests sent after the wait for paused targets (one per route of the demo's file).
const LAST_ROUND: usize = 2;
/// A target open for at most this long is paused (a `Retry-After`), not tripped: the demo
/// waits for it before the last round.
const PAUSE_MAX: Duration = Duration::from_secs(5);
/// Log bytes held while the table prints; beyond it lines are dropped and counted.
const HELD_MAX: usize = 64 * 1024;

/// A log writer that can hold lines while the demo's table is printed, so a WARN on stderr
/// (a circuit opening) cannot land between two rows on a terminal; [`LogGate::release`]
/// writes what it held, in order, and lets later lines through.
#[derive(Clone, Debug, Default)]
pub struct LogGate(Arc<Mutex<Gate>>);

#[derive(Debug, Default)]
struct Gate {
    holding: bool,
    held: Vec<u8>,
    dropped: usize,
}

impl LogGate {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        // Logging must go on after a panic elsewhere; the state is a flag and a buffer.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds log lines from now on.
    pub fn hold(&self) {
        self.gate().holding = true;
    }

    /// Writes the held lines to `to` and lets later lines through.
    pub fn release_to(&self, to: &mut dyn std::io::Write) {
        let mut g = self.gate();
        g.holding = false;
        let held = std::mem::take(&mut g.held);
        let dropped = std::mem::take(&mut g.dropped);
        drop(g);
        let _ = to.write_all(&held);
        if dropped > 0 {
            let _ = writeln!(to, "({dropped} log lines dropped while the demo printed)");
        }
        let _ = to.flush();
    }

    /// Writes the held lines to stderr and lets later lines through.
    pub fn release(&self) {
        self.release_to(&mut std::io::stderr().lock());
    }
}

/// One log event's writer (tracing-subscriber formats an event, then writes it at once).
#[derive(Debug)]
pub struct GateWriter(LogGate);

impl std::io::Write for GateWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = self.0.gate();
        if g.holding {
            if g.held.len() + buf.len() <= HELD_MAX {
                g.held.extend_from_slice(buf);
            } else if buf.ends_with(b"\n") {
                g.dropped += 1;
            }
            return Ok(buf.len());
        }
        drop(g);
        std::io::stderr().lock().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogGate {
    type Writer = GateWriter;

    fn make_writer(&'a self) -> GateWriter {
        GateWriter(self.clone())
    }
}

/// Releases the gate when the demo ends, however it ends.
struct Released<'a>(&'a LogGate);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn header(resp: &http::Response<UpstreamBody>, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

async fn audit_for(tap: &mut UnboundedReceiver<AuditRecord>, id: &str) -> Option<AuditRecord> {
    loop {
        let rec = timeout(Duration::from_secs(2), tap.recv()).await.ok()??;
        if rec.request_id == id {
            return Some(rec);
        }
    }
}

fn why(rec: &AuditRecord) -> String {
    let mut parts: Vec<String> = rec
        .attempts
        .iter()
        .filter(|a| a.class != crate::class::Class::Ok)
        .map(|a| {
            format!(
                "{} failed: {}{}",
                a.target,
                a.class,
                a.status.map(|s| format!(" ({s})")).unwrap_or_default()
            )
        })
        .collect();
    parts.extend(
        rec.skipped
            .iter()
            .map(|s| format!("{} skipped: {}", s.target, s.reason)),
    );
    if parts.is_empty() {
        "primary answered".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The fallback rate, `sum(detour_requests_total{fallback="true"}) / sum(detour_requests_total)`,
/// computed from a text exposition.
pub fn fallback_rate(metrics: &str) -> Option<(f64, f64)> {
    let (mut fallback, mut total) = (0.0, 0.0);
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("detour_requests_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        total += v;
        if labels.contains("fallback=\"true\"") {
            fallback += v;
        }
    }
    (total > 0.0).then_some((fallback, total))
}

/// Waits until every target paused for at most [`PAUSE_MAX`] (by a 429's `Retry-After`) may
/// be tried again; returns the names of those it waited for.
async fn wait_for_paused(running: &Running) -> Option<Vec<String>> {
    let now = tokio::time::Instant::now();
    let mut names = Vec::new();
    let mut until = now;
    if let Some(snapshot) = running.shared.table.load().as_ref() {
        for route in snapshot.routes.values() {
            for t in &route.targets {
                let at = t.with_breaker(now, "cooldown", |b| b.available_at(now));
                if at > now && at - now <= PAUSE_MAX {
                    names.push(t.cfg.name.clone());
                    until = until.max(at);
                }
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    names.sort();
    // A little past the end of the pause, so the next request finds it over.
    tokio::time::sleep_until(until + Duration::from_millis(20)).await;
    Some(names)
}

/// Runs the burst and prints the report; log lines are held while it prints. Returns the
/// fallback rate it printed (fallbacks, requests), if it could read one.
pub async fn run(
    running: &Running,
    mut tap: UnboundedReceiver<AuditRecord>,
    logs: &LogGate,
) -> Option<(f64, f64)> {
    logs.hold();
    let release = Released(logs);
    let client = match HttpClient::new(None) {
        Ok(c) => c,
        Err(e) => {
            out(&format!("demo: cannot build an HTTP client: {e}"));
            running.shared.audit.set_stdout(true);
            return None;
        }
    };
    let models = running
        .shared
        .table
        .load()
        .as_ref()
        .map(|s| s.models.clone())
        .unwrap_or_default();
    if models.is_empty() {
        out("demo: no route is loaded, nothing to send");
        running.shared.audit.set_stdout(true);
        return None;
    }
    let addr = running.addr;
    out(&format!(
        "Detour demo: {BURST} requests through http://{addr}, routes: {}",
        models.join(", ")
    ));
    out("");
    out(&format!(
        "{:>3}  {:<14} {:>6}  {:<12} {:<18} {:<14} {:>9}  why",
        "#", "route", "status", "target", "provider", "served model", "fallbacks"
    ));
    for i in 0..BURST {
        if i == BURST - LAST_ROUND
            && let Some(names) = wait_for_paused(running).await
        {
            out(&format!(
                "     … waited for the end of the Retry-After pause of {}",
                names.join(", ")
            ));
        }
        let Some(model) = models.get(i % models.len()) else {
            break;
        };
        let body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}]});
        let req = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Bytes::from(body.to_string()));
        let Ok(req) = req else { continue };
        let resp = match timeout(Duration::from_secs(30), client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                out(&format!("{:>3}  request failed: {e}", i + 1));
                continue;
            }
            Err(_) => {
                out(&format!("{:>3}  request timed out", i + 1));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let id = header(&resp, "x-detour-request-id");
        let target = header(&resp, "x-detour-target");
        let provider = header(&resp, "x-detour-provider");
        let fallbacks = header(&resp, "x-detour-fallback-count");
        // The body's `model` is the model that served (the route's id is in `x-detour-route`).
        let served = match timeout(Duration::from_secs(30), resp.into_body().collect()).await {
            Ok(Ok(b)) => serde_json::from_slice::<serde_json::Value>(&b.to_bytes())
                .ok()
                .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "-".to_owned()),
            _ => "-".to_owned(),
        };
        let reason = audit_for(&mut tap, &id)
            .await
            .map_or_else(|| "-".to_owned(), |r| why(&r));
        out(&format!(
            "{:>3}  {:<14} {:>6}  {:<12} {:<18} {:<14} {:>9}  {reason}",
            i + 1,
            model,
            status,
            target,
            provider,
            served,
            fallbacks
        ));
    }
    let url = format!("http://{}/metrics", running.admin_addr);
    let metrics = match Request::get(&url).body(Bytes::new()) {
        Ok(req) => match timeout(Duration::from_secs(5), client.request(req)).await {
            Ok(Ok(resp)) => match resp.into_body().collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => String::new(),
            },
            _ => String::new(),
        },
        Err(_) => String::new(),
    };
    out("");
    let rate = fallback_rate(&metrics);
    match rate {
        Some((fb, total)) => out(&format!(
            "Fallback rate from {url}: {fb} of {total} requests = {:.0}%\n  PromQL: sum(rate(detour_requests_total{{fallback=\"true\"}}[5m])) / sum(rate(detour_requests_total[5m]))",
            100.0 * fb / total
        )),
        None => out("Fallback rate: no requests counted in /metrics"),
    }
    out("");
    // The log lines held during the table (circuits opening and closing), then the rest live.
    drop(release);
    out("The sidecar keeps serving (Ctrl-C to stop); audit lines follow on stdout. Try:");
    out(&format!(
        "  curl -si http://{addr}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'",
        models.first().map_or("", String::as_str)
    ));
    running.shared.audit.set_stdout(true);
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines written while the gate holds come out, in order, only on release; later lines
    /// pass straight through (here: to nothing held).
    #[test]
    fn log_gate_holds_then_releases_in_order() {
        let gate = LogGate::default();
        gate.hold();
        gate.make_writer_for_test().write_all(b"first\n").unwrap();
        gate.make_writer_for_test().write_all(b"second\n").unwrap();
        let mut out = Vec::new();
        gate.release_to(&mut out);
        assert_eq!(out, b"first\nsecond\n");
        let mut again = Vec::new();
        gate.release_to(&mut again);
        assert!(again.is_empty());
    }

    /// Held lines are bounded: beyond the cap they are dropped and the count is said.
    #[test]
    fn log_gate_is_bounded() {
        let gate = LogGate::default();
        gate.hold();
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        for _ in 0..(HELD_MAX / 1024 + 10) {
            gate.make_writer_for_test().write_all(&line).unwrap();
        }
        let mut out = Vec::new();
        gate.release_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.len() <= HELD_MAX + 100, "{}", text.len());
        assert!(
            text.ends_with("(10 log lines dropped while the demo printed)\n"),
            "{}",
            &text[text.len() - 80..]
        );
    }

    /// The fallback rate is read from `detour_requests_total` alone.
    #[test]
    fn fallback_rate_from_exposition() {
        let m = "# HELP x\ndetour_requests_total{route=\"a\",fallback=\"true\"} 3\n\
                 detour_requests_total{route=\"a\",fallback=\"false\"} 1\n\
                 detour_requests_total_other 9\n";
        assert_eq!(fallback_rate(m), Some((3.0, 4.0)));
        assert_eq!(fallback_rate(""), None);
    }

    impl LogGate {
        fn make_writer_for_test(&self) -> GateWriter {
            GateWriter(self.clone())
        }
    }
}
