//! Test support: the sidecar in-process on loopback, requests to it, the routes the tests
//! write, and the fake provider of `detour-fake-upstream` (its in-process OpenAI fake,
//! `detour_fake_upstream::openai`).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed unwrap is a failed test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use detour_sidecar::audit::{Audit, AuditRecord};
use detour_sidecar::config::{self, Source};
use detour_sidecar::server::{self, Options, Running};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A sidecar running in-process on loopback.
pub struct Sidecar {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub audit: mpsc::UnboundedReceiver<AuditRecord>,
    pub dir: tempfile::TempDir,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The standalone defaults (the providers' hosts and loopback), with credential files in the
/// test's own directory.
pub fn guard(dir: &std::path::Path) -> detour_sidecar::egress::Guard {
    detour_sidecar::egress::Guard::new(detour_api::egress::AllowedHosts::standalone(), dir)
}

/// Starts a sidecar on `source` (already written).
pub async fn start_with(source: Source, dir: tempfile::TempDir, max_body: usize) -> Sidecar {
    let guard = guard(dir.path());
    start_guarded(source, dir, max_body, guard).await
}

/// [`start_with`], with the API listener's connection limits.
pub async fn start_with_limits(
    source: Source,
    dir: tempfile::TempDir,
    max_body: usize,
    limits: detour_sidecar::conn::Limits,
) -> Sidecar {
    let guard = guard(dir.path());
    start_guarded_with_limits(source, dir, max_body, guard, limits).await
}

/// The fleet key of the sidecars the tests start.
pub const FLEET_KEY: &str = "test-fleet-key";

/// Starts a sidecar on `source` under `guard`'s destination and credential-path rules.
pub async fn start_guarded(
    source: Source,
    dir: tempfile::TempDir,
    max_body: usize,
    guard: detour_sidecar::egress::Guard,
) -> Sidecar {
    start_guarded_with_limits(
        source,
        dir,
        max_body,
        guard,
        detour_sidecar::conn::Limits::default(),
    )
    .await
}

async fn start_guarded_with_limits(
    source: Source,
    dir: tempfile::TempDir,
    max_body: usize,
    guard: detour_sidecar::egress::Guard,
    limits: detour_sidecar::conn::Limits,
) -> Sidecar {
    start_budgeted(source, dir, max_body, guard, limits, 64 * 1024 * 1024).await
}

/// A sidecar on standalone YAML whose buffer budget (`--max-buffered-bytes`) is `max_buffered`.
pub async fn start_with_budget(yaml: &str, max_buffered: usize) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml).unwrap();
    let guard = guard(dir.path());
    start_budgeted(
        Source::Yaml(path),
        dir,
        10 * 1024 * 1024,
        guard,
        detour_sidecar::conn::Limits::default(),
        max_buffered,
    )
    .await
}

async fn start_budgeted(
    source: Source,
    dir: tempfile::TempDir,
    max_body: usize,
    guard: detour_sidecar::egress::Guard,
    limits: detour_sidecar::conn::Limits,
    max_buffered: usize,
) -> Sidecar {
    let initial = config::load_with(&source, &guard).ok();
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: max_body,
        source,
        reload_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(5),
        upstream_ca: None,
        upstream_max_idle: detour_sidecar::providers::client::MAX_IDLE_PER_ORIGIN,
        limits,
        max_buffered_bytes: max_buffered,
        guard,
        fleet_key: Some(FLEET_KEY.into()),
    };
    let running = server::start(opts, Audit::with_tap(false, tx), initial)
        .await
        .unwrap();
    Sidecar {
        addr: running.addr,
        admin: running.admin_addr,
        running: Some(running),
        audit: rx,
        dir,
        client: client(),
    }
}

/// Starts a sidecar on standalone YAML.
pub async fn start(yaml: &str) -> Sidecar {
    start_limited(yaml, 10 * 1024 * 1024).await
}

pub async fn start_limited(yaml: &str, max_body: usize) -> Sidecar {
    start_with_conn_limits(yaml, max_body, detour_sidecar::conn::Limits::default()).await
}

/// A sidecar on standalone YAML with the given body limit and connection limits.
pub async fn start_with_conn_limits(
    yaml: &str,
    max_body: usize,
    limits: detour_sidecar::conn::Limits,
) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml).unwrap();
    if let Err(e) = config::load_with(&Source::Yaml(path.clone()), &guard(dir.path())) {
        panic!("test routes do not compile: {e}");
    }
    start_with_limits(Source::Yaml(path), dir, max_body, limits).await
}

/// The sidecar's response as the test client read it, whole.
#[derive(Debug)]
pub struct SidecarResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body ended cleanly (`false`: the transfer was cut, e.g. no last chunk).
    pub complete: bool,
}

impl SidecarResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Sidecar {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> SidecarResponse {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("sidecar answered in time")
            .unwrap();
        let (parts, mut body) = resp.into_parts();
        // Read frame by frame, keeping what arrived before an abnormal end.
        let mut bytes = Vec::new();
        let complete = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match body.frame().await {
                    None => return true,
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            bytes.extend_from_slice(&d);
                        }
                    }
                    Some(Err(_)) => return false,
                }
            }
        })
        .await
        .expect("body in time");
        SidecarResponse {
            status: parts.status,
            headers: parts.headers,
            body: Bytes::from(bytes),
            complete,
        }
    }

    pub async fn chat(&self, model: &str, headers: &[(&str, &str)]) -> SidecarResponse {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        self.send(
            "POST",
            "/v1/chat/completions",
            Bytes::from(body.to_string()),
            headers,
        )
        .await
    }

    /// `POST /v1/chat/completions` with `body` over h2c (HTTP/2 with prior knowledge), within
    /// 5 s; the response with its body unread.
    pub async fn h2c_chat(&self, body: &Value) -> http::Response<hyper::body::Incoming> {
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let req = Request::post(format!("http://{}/v1/chat/completions", self.addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), client.request(req))
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn chat_stream(&self, model: &str) -> SidecarResponse {
        let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        self.send("POST", "/v1/chat/completions", Bytes::from(body.to_string()), &[])
            .await
    }

    pub async fn get(&self, path: &str) -> SidecarResponse {
        self.send("GET", path, Bytes::new(), &[]).await
    }

    /// A GET on the admin listener: status and body text.
    pub async fn admin_status(&self, path: &str) -> (u16, String) {
        let req = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await
    }

    /// The body of a GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> String {
        let req = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// A POST of `body` to the admin listener with `Authorization: Bearer <key>`: status and body.
    pub async fn admin_post(&self, path: &str, key: &str, body: &str) -> (u16, String) {
        let req = Request::post(format!("http://{}{path}", self.admin))
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (status, text)
    }

    /// The audit record of the response.
    pub async fn audit_of(&mut self, reply: &SidecarResponse) -> AuditRecord {
        let id = reply.header("x-detour-request-id").to_owned();
        loop {
            let rec = tokio::time::timeout(Duration::from_secs(5), self.audit.recv())
                .await
                .expect("audit record in time")
                .expect("audit channel open");
            if rec.request_id == id {
                return rec;
            }
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(10), r.shutdown())
                .await
                .expect("sidecar stops in time");
        }
    }
}

/// A metric's value from a text exposition (`name{labels}` exactly as exported, labels sorted).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The policy used by most tests: fast timeouts, no same-target retries.
pub fn policy(name: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata:
  name: {name}
spec:
  retry:
    attempts: 1
    on: ["5xx", "429", "timeout", "connect-error"]
  timeouts:
    perAttempt: 400ms
    firstByte: 200ms
    total: 3s
{extra}
"#
    )
}

/// A route with openai-compatible targets `(name, endpoint)`.
pub fn route(model: &str, policy: &str, targets: &[(&str, String)]) -> String {
    let mut out = format!(
        "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: {}\nspec:\n  model: {model}\n  policyRef: {{name: {policy}}}\n  targets:\n",
        model.replace('/', "-")
    );
    for (name, endpoint) in targets {
        out.push_str(&format!(
            "    - name: {name}\n      provider: openai-compatible\n      model: up-{name}\n      endpoint: {endpoint}\n"
        ));
    }
    out
}

/// A route `model` under `policy` with target `primary` on the fake's stub `primary_stub` and
/// target `backup` on `backup_stub`.
pub fn fallback_route(
    fake: &detour_fake_upstream::openai::Fake,
    model: &str,
    policy: &str,
    primary_stub: &str,
    backup_stub: &str,
) -> String {
    route(
        model,
        policy,
        &[
            ("primary", fake.endpoint(primary_stub)),
            ("backup", fake.endpoint(backup_stub)),
        ],
    )
}

/// Policy `p` with the short bounds of the stream tests: first event 200 ms, 300 ms between
/// events, a non-streaming attempt 400 ms, `total` until committed; `extra` spec lines after.
pub fn short_policy(total: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata:
  name: p
spec:
  retry:
    attempts: 1
    on: ["5xx", "429", "timeout", "connect-error"]
  timeouts:
    firstByte: 200ms
    streamIdle: 300ms
    perAttempt: 400ms
    total: {total}
{extra}
"#
    )
}

/// One openai-compatible target `name` (model `up-<name>`) at `endpoint`, with `extra` lines.
pub fn target_yaml(name: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n      provider: openai-compatible\n      model: up-{name}\n      endpoint: {endpoint}\n{extra}"
    )
}

/// A route `model` under `policy` over `targets` (as [`target_yaml`] writes them), `rules` after.
pub fn route_yaml(model: &str, policy: &str, targets: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: {model}\nspec:\n  model: {model}\n  policyRef: {{name: {policy}}}\n  targets:\n{targets}{rules}"
    )
}

pub fn compiled_json(yaml: &str) -> String {
    detour_api::compile_yaml(yaml).unwrap().table.to_json()
}

/// Writes `routes.json` into a new kubelet-style timestamped directory and swaps `..data` to
/// it atomically (symlink + rename), as kubelet updates a ConfigMap volume.
pub fn kubelet_publish(dir: &std::path::Path, version: &str, content: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("routes.json"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("routes.json");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/routes.json", &link).unwrap();
    }
}

pub async fn wait_for<F: AsyncFn() -> bool>(what: &str, f: F) {
    for _ in 0..60 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Runs the binary on standalone `routes` with `extra` flags on port 0, for a start that is
/// expected to fail (at most 10 s).
pub async fn run_standalone(routes: &std::path::Path, extra: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_detour-sidecar"))
            .args(["--routes", routes.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap()
}
