//! `--demo`: sends a short scripted burst through the running sidecar over loopback, prints
//! per request which target and provider served it and why (from the response headers and
//! the audit record), then the fallback rate computed from the sidecar's own `/metrics`, and
//! a `curl` line to try by hand. The sidecar keeps serving afterwards.

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

use crate::audit::AuditRecord;
use crate::providers::HttpClient;
use crate::providers::client::Body;
use crate::server::Running;

/// Requests in the burst.
const BURST: usize = 12;

fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn header(resp: &http::Response<Body>, name: &str) -> String {
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

/// Runs the burst and prints the report.
pub async fn run(running: &Running, mut tap: UnboundedReceiver<AuditRecord>) {
    let client = match HttpClient::new(None) {
        Ok(c) => c,
        Err(e) => {
            out(&format!("demo: cannot build an HTTP client: {e}"));
            running.shared.audit.set_stdout(true);
            return;
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
        return;
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
        // Spaced a little so the output reads as a timeline and short cooldowns can expire.
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
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
    match fallback_rate(&metrics) {
        Some((fb, total)) => out(&format!(
            "Fallback rate from {url}: {fb} of {total} requests = {:.0}%\n  PromQL: sum(rate(detour_requests_total{{fallback=\"true\"}}[5m])) / sum(rate(detour_requests_total[5m]))",
            100.0 * fb / total
        )),
        None => out("Fallback rate: no requests counted in /metrics"),
    }
    out("");
    out("The sidecar keeps serving (Ctrl-C to stop); audit lines follow on stdout. Try:");
    out(&format!(
        "  curl -si http://{addr}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'",
        models.first().map_or("", String::as_str)
    ));
    running.shared.audit.set_stdout(true);
}
