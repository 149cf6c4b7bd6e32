//! Test support: one scripted loopback fake provider (OpenAI wire format) and helpers to run
//! the sidecar in-process against it.
//!
//! The fake serves many stubs on one port, each under its own path prefix
//! (`http://127.0.0.1:PORT/<stub>/v1`), each with a script of [`Step`]s it cycles through,
//! one per request, and a hit counter. Its tasks live in a `JoinSet` owned by [`Fake`];
//! [`Fake::check`] re-raises any panic from them in the test.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed unwrap is a failed test"
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use detour_sidecar::audit::{Audit, AuditRecord};
use detour_sidecar::config::{self, Source};
use detour_sidecar::server::{self, Options, Running};
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Step {
    Ok,
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// Never answers.
    Hang,
    /// Closes the connection without answering.
    Reset,
    /// Answers OK after this many ms.
    Slow(u64),
    /// 200 with a body that is not JSON.
    BadJson,
    /// A stream of N chunks and `[DONE]`.
    Stream(usize),
    /// A stream that breaks (connection aborted) after N chunks.
    StreamBreak(usize),
    /// A scripted stream: `n` content chunks `gap_ms` apart, then `tail`.
    Script {
        n: usize,
        gap_ms: u64,
        tail: Tail,
    },
    /// 400 with this OpenAI error code and message.
    Refuse(&'static str, &'static str),
    /// A stream with id `id`: a role chunk, then `texts` `gap_ms` apart, then `tail`.
    Say {
        id: &'static str,
        texts: Vec<&'static str>,
        gap_ms: u64,
        tail: Tail,
    },
    /// A role chunk, some text and the start of a tool call; then the body ends.
    ToolCut,
    /// 200 with a `chat.completion` whose content makes the body about this many bytes.
    Large(usize),
    /// 200 with the beginning of such an answer, this many bytes of content in 64 KiB
    /// frames; then the body breaks.
    LargeBreak(usize),
}

/// How a [`Step::Script`] stream ends.
#[derive(Clone, Debug)]
pub enum Tail {
    /// A `finish_reason` chunk, a usage chunk, `[DONE]`.
    Done,
    /// A `finish_reason` chunk, a usage chunk, and the body ends cleanly without `[DONE]`.
    NoDone,
    /// The body ends cleanly before any `finish_reason`.
    Cut,
    /// Silence for this many ms, then `Done`.
    Stall(u64),
    /// An `{"error": …}` event, then the body ends.
    ErrorEvent,
    /// An event that is not JSON, then `Done`.
    Opaque,
}

#[derive(Debug, Default)]
struct Stub {
    script: Vec<Step>,
    hits: usize,
    last_headers: Option<HeaderMap>,
    last_body: Option<Value>,
    last_raw: Option<Bytes>,
}

type Stubs = Arc<Mutex<HashMap<String, Stub>>>;

/// The fake provider.
#[derive(Debug)]
pub struct Fake {
    pub addr: SocketAddr,
    stubs: Stubs,
    connections: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

type FakeBody = UnsyncBoxBody<Bytes, std::io::Error>;

fn json_resp(status: u16, v: &Value) -> Response<FakeBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn chunk(model: &str, i: usize) -> Bytes {
    let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]});
    Bytes::from(format!("data: {v}\n\n"))
}

fn sse(model: &str, n: usize, broken: bool) -> Response<FakeBody> {
    let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        (0..n).map(|i| Ok(Frame::data(chunk(model, i)))).collect();
    if broken {
        frames.push(Err(std::io::Error::other("scripted stream break")));
    } else {
        frames.push(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))));
    }
    // Spaced so each chunk is flushed on its own, as a real provider's would be.
    let paced = stream::iter(frames).then(|f| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        f
    });
    let body = StreamBody::new(paced).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// A stream of given texts (see [`Step::Say`]).
fn say(model: &str, id: &str, texts: &[&str], gap_ms: u64, tail: &Tail, tool: bool) -> Response<FakeBody> {
    let chunk = |delta: Value, finish: Value| {
        data(
            &json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let mut items: Vec<(u64, Result<Frame<Bytes>, std::io::Error>)> = vec![(
        1,
        Ok(Frame::data(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ))),
    )];
    items.extend(
        texts
            .iter()
            .map(|t| (gap_ms, Ok(Frame::data(chunk(json!({"content": t}), Value::Null))))),
    );
    if tool {
        let call = json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\": "}}]});
        items.push((gap_ms, Ok(Frame::data(chunk(call, Value::Null)))));
    }
    let usage = data(
        &json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": model,
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": texts.len(), "total_tokens": 5 + texts.len()}}),
    );
    let done = |items: &mut Vec<_>, delay: u64| {
        items.push((delay, Ok(Frame::data(chunk(json!({}), json!("stop"))))));
        items.push((0, Ok(Frame::data(usage.clone()))));
        items.push((0, Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))));
    };
    match tail {
        Tail::Done | Tail::NoDone | Tail::Opaque => done(&mut items, gap_ms),
        Tail::Cut => {}
        Tail::Stall(ms) => done(&mut items, *ms),
        Tail::ErrorEvent => items.push((
            gap_ms,
            Ok(Frame::data(data(
                &json!({"error": {"message": "overloaded", "type": "server_error"}}),
            ))),
        )),
    }
    let paced = stream::iter(items).then(|(delay, f)| async move {
        tokio::time::sleep(Duration::from_millis(delay.max(1))).await;
        f
    });
    let mut r = Response::new(StreamBody::new(paced).boxed_unsync());
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

/// A scripted stream (see [`Step::Script`]).
fn scripted(model: &str, n: usize, gap_ms: u64, tail: Tail) -> Response<FakeBody> {
    let finish = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}});
    let mut items: Vec<(u64, Result<Frame<Bytes>, std::io::Error>)> = (0..n)
        .map(|i| (gap_ms, Ok(Frame::data(chunk(model, i)))))
        .collect();
    let done = |items: &mut Vec<(u64, Result<Frame<Bytes>, std::io::Error>)>, delay: u64| {
        items.push((delay, Ok(Frame::data(data(&finish)))));
        items.push((0, Ok(Frame::data(data(&usage)))));
        items.push((0, Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))));
    };
    match tail {
        Tail::Done => done(&mut items, gap_ms),
        Tail::NoDone => {
            items.push((gap_ms, Ok(Frame::data(data(&finish)))));
            items.push((0, Ok(Frame::data(data(&usage)))));
        }
        Tail::Cut => {}
        Tail::Stall(ms) => done(&mut items, ms),
        Tail::ErrorEvent => items.push((
            gap_ms,
            Ok(Frame::data(data(
                &json!({"error": {"message": "overloaded", "type": "server_error"}}),
            ))),
        )),
        Tail::Opaque => {
            items.push((
                gap_ms,
                Ok(Frame::data(Bytes::from_static(
                    b"event: note\ndata: <keep-alive>\n\n",
                ))),
            ));
            done(&mut items, gap_ms);
        }
    }
    let paced = stream::iter(items).then(|(delay, f)| async move {
        tokio::time::sleep(Duration::from_millis(delay.max(1))).await;
        f
    });
    let mut r = Response::new(StreamBody::new(paced).boxed_unsync());
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

async fn handle(stubs: Stubs, req: Request<Incoming>) -> Result<Response<FakeBody>, std::io::Error> {
    let path = req.uri().path().to_owned();
    let name = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let raw = body.clone();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_owned();
    let (step, hit) = {
        let mut g = stubs.lock().unwrap();
        let stub = g.entry(name.clone()).or_default();
        let step = if stub.script.is_empty() {
            Step::Ok
        } else {
            stub.script[stub.hits % stub.script.len()].clone()
        };
        stub.hits += 1;
        stub.last_headers = Some(headers);
        stub.last_body = Some(body.clone());
        stub.last_raw = Some(raw);
        (step, stub.hits)
    };
    let ok = |model: &str| {
        json!({"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {name}")},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
    };
    let err =
        |msg: &str| json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}});
    let mut resp = match step {
        Step::Ok => json_resp(200, &ok(&model)),
        Step::LargeBreak(n) => {
            let head = format!(
                r#"{{"id":"x","object":"chat.completion","created":0,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":""#
            );
            let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
                vec![Ok(Frame::data(Bytes::from(head)))];
            let frame = Bytes::from("x".repeat(64 * 1024));
            frames.extend((0..n.div_ceil(64 * 1024)).map(|_| Ok(Frame::data(frame.clone()))));
            frames.push(Err(std::io::Error::other("scripted body break")));
            let mut r = Response::new(StreamBody::new(stream::iter(frames)).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        Step::Large(n) => {
            let mut v = ok(&model);
            v["choices"][0]["message"]["content"] = Value::from("x".repeat(n));
            json_resp(200, &v)
        }
        Step::Status(s) => json_resp(s, &err("scripted status")),
        Step::RateLimited(secs) => {
            let mut r = json_resp(429, &err("slow down"));
            r.headers_mut().insert("retry-after", secs.into());
            r
        }
        Step::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json_resp(200, &ok(&model))
        }
        Step::Reset => return Err(std::io::Error::other("scripted reset")),
        Step::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_resp(200, &ok(&model))
        }
        Step::BadJson => {
            let mut r = json_resp(200, &Value::Null);
            *r.body_mut() = Full::new(Bytes::from_static(b"<html>oops"))
                .map_err(|never: Infallible| match never {})
                .boxed_unsync();
            r
        }
        Step::Stream(n) => sse(&model, n, false),
        Step::StreamBreak(n) => sse(&model, n, true),
        Step::Script { n, gap_ms, tail } => scripted(&model, n, gap_ms, tail),
        Step::Say {
            id,
            texts,
            gap_ms,
            tail,
        } => say(&model, id, &texts, gap_ms, &tail, false),
        Step::ToolCut => say(&model, "c1", &["Let me look."], 5, &Tail::Cut, true),
        Step::Refuse(code, message) => json_resp(
            400,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": code}}),
        ),
    };
    // Every answer names itself as a provider's does: `req-<stub>-<hit>`, with a rate-limit
    // header.
    let h = resp.headers_mut();
    h.insert("x-request-id", format!("req-{name}-{hit}").parse().unwrap());
    h.insert("x-ratelimit-remaining-requests", (1000 - hit).into());
    h.insert("openai-organization", "org-not-for-the-client".parse().unwrap());
    Ok(resp)
}

impl Fake {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stubs: Stubs = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let (s, accepted) = (stubs.clone(), connections.clone());
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (io, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
                while let Some(r) = conns.try_join_next() {
                    r.unwrap();
                }
            }
        });
        Self {
            addr,
            stubs,
            connections,
            tasks,
        }
    }

    /// Connections the fake has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Sets a stub's script (cycled) and resets its counter.
    pub fn script(&self, stub: &str, steps: Vec<Step>) {
        let mut g = self.stubs.lock().unwrap();
        g.insert(
            stub.to_owned(),
            Stub {
                script: steps,
                ..Stub::default()
            },
        );
    }

    pub fn hits(&self, stub: &str) -> usize {
        self.stubs.lock().unwrap().get(stub).map_or(0, |s| s.hits)
    }

    pub fn last_headers(&self, stub: &str) -> Option<HeaderMap> {
        self.stubs
            .lock()
            .unwrap()
            .get(stub)
            .and_then(|s| s.last_headers.clone())
    }

    pub fn last_body(&self, stub: &str) -> Option<Value> {
        self.stubs
            .lock()
            .unwrap()
            .get(stub)
            .and_then(|s| s.last_body.clone())
    }

    /// The last request body as the stub received it, byte for byte.
    pub fn last_raw(&self, stub: &str) -> Option<Bytes> {
        self.stubs
            .lock()
            .unwrap()
            .get(stub)
            .and_then(|s| s.last_raw.clone())
    }

    pub fn endpoint(&self, stub: &str) -> String {
        format!("http://{}/{stub}/v1", self.addr)
    }

    /// Re-raises a panic of the fake's tasks.
    pub fn check(&mut self) {
        while let Some(r) = self.tasks.try_join_next() {
            if let Err(e) = r
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.check();
        }
    }
}

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

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body ended cleanly (`false`: the transfer was cut, e.g. no last chunk).
    pub complete: bool,
}

impl Reply {
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
    pub async fn send(&self, method: &str, path: &str, body: Bytes, headers: &[(&str, &str)]) -> Reply {
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
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: Bytes::from(bytes),
            complete,
        }
    }

    pub async fn chat(&self, model: &str, headers: &[(&str, &str)]) -> Reply {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        self.send(
            "POST",
            "/v1/chat/completions",
            Bytes::from(body.to_string()),
            headers,
        )
        .await
    }

    pub async fn chat_stream(&self, model: &str) -> Reply {
        let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        self.send("POST", "/v1/chat/completions", Bytes::from(body.to_string()), &[])
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
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
    pub async fn audit_of(&mut self, reply: &Reply) -> AuditRecord {
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
