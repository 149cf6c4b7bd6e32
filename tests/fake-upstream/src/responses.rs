//! A provider that serves the Responses API natively at `/<stub>/v1/responses`: a Response
//! object as JSON, or the stream of typed events (`response.created`, `in_progress`, output
//! deltas, then `completed`, `incomplete` or `failed`, or a cut or an `error` event), each stub
//! scripted with [`Step`]s, one per request in turn, the last one repeating.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::server::{Body, Loopback};
use crate::wire::{self, Item, broken, frame};

/// What the native fake answers, per request in turn (the last one repeats).
#[derive(Clone, Debug)]
pub enum Step {
    /// A Response object whose text names the stub.
    Json,
    /// A status with OpenAI's error body.
    Status(u16),
    /// A full stream: created, in_progress, output deltas, completed.
    Stream,
    /// created, then `response.failed`.
    FailedAtStart,
    /// created, a delta, then the body is cut.
    CutAfterOutput,
    /// created, a delta, then an `error` event.
    ErrorAfterOutput,
    /// A full stream ending with `response.incomplete`.
    Incomplete,
}

#[derive(Debug, Default)]
struct Stub {
    script: Vec<Step>,
    hits: usize,
    paths: Vec<String>,
    raws: Vec<Bytes>,
}

type Stubs = Arc<Mutex<HashMap<String, Stub>>>;

fn lock(stubs: &Stubs) -> MutexGuard<'_, HashMap<String, Stub>> {
    stubs.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A provider that serves the Responses API at `/{stub}/v1/responses`.
#[derive(Debug)]
pub struct Fake {
    /// Where it listens.
    pub addr: SocketAddr,
    stubs: Stubs,
    server: Loopback,
}

/// The Response object stub `stub` answers its `hit`-th request with (text `native <stub>`).
pub fn response_object(stub: &str, model: &str, hit: usize, status: &str) -> Value {
    json!({"id": format!("resp_{stub}_{hit}"), "object": "response", "created_at": 1, "status": status,
        "error": null, "model": model, "store": true,
        "output": [{"type": "message", "id": format!("msg_{stub}_{hit}"), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": format!("native {stub}"), "annotations": []}]}],
        "usage": {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}})
}

fn event(kind: &str, mut v: Value, seq: usize) -> Bytes {
    v["type"] = Value::from(kind);
    v["sequence_number"] = Value::from(seq);
    Bytes::from(format!("event: {kind}\ndata: {v}\n\n"))
}

fn native_stream(stub: &str, model: &str, hit: usize, step: &Step) -> Response<Body> {
    let mut r = response_object(stub, model, hit, "in_progress");
    r["output"] = json!([]);
    r["usage"] = Value::Null;
    let mut frames: Vec<Item> = vec![
        frame(event("response.created", json!({"response": r}), 0)),
        frame(event("response.in_progress", json!({"response": r}), 1)),
    ];
    let delta = |seq| {
        frame(event(
            "response.output_text.delta",
            json!({"item_id": format!("msg_{stub}_{hit}"), "output_index": 0, "content_index": 0, "delta": format!("native {stub}")}),
            seq,
        ))
    };
    match step {
        Step::Json | Step::Status(_) | Step::Stream | Step::Incomplete => {
            frames.push(delta(2));
            let (kind, status) = if matches!(step, Step::Incomplete) {
                ("response.incomplete", "incomplete")
            } else {
                ("response.completed", "completed")
            };
            let done = response_object(stub, model, hit, status);
            frames.push(frame(event(kind, json!({"response": done}), 3)));
        }
        Step::FailedAtStart => {
            let mut failed = r.clone();
            failed["status"] = Value::from("failed");
            failed["error"] = json!({"code": "server_error", "message": "boom"});
            frames.push(frame(event("response.failed", json!({"response": failed}), 2)));
        }
        Step::CutAfterOutput => {
            frames.push(delta(2));
            frames.push(broken("scripted cut"));
        }
        Step::ErrorAfterOutput => {
            frames.push(delta(2));
            frames.push(frame(event(
                "error",
                json!({"code": "server_error", "message": "boom", "param": null}),
                3,
            )));
        }
    }
    wire::sse(frames.into_iter().map(|f| (3, f)).collect())
}

async fn serve_native(stubs: Stubs, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let (head, raw) = wire::read(req).await;
    let path = head.uri.path().to_owned();
    let stub = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("none").to_owned();
    let (step, hit) = {
        let mut g = lock(&stubs);
        let s = g.entry(stub.clone()).or_default();
        let step = s
            .script
            .get(s.hits.min(s.script.len().saturating_sub(1)))
            .cloned()
            .unwrap_or(Step::Json);
        s.hits += 1;
        s.paths.push(path.clone());
        s.raws.push(raw);
        (step, s.hits)
    };
    let mut resp = match &step {
        Step::Status(s) => wire::json(
            *s,
            &json!({"error": {"message": "scripted", "type": "server_error", "param": null, "code": null}}),
        ),
        _ if body["stream"] == true => native_stream(&stub, &model, hit, &step),
        _ => wire::json(200, &response_object(&stub, &model, hit, "completed")),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("req-{stub}-{hit}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    Ok(resp)
}

impl Fake {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        let stubs = Stubs::default();
        let s = stubs.clone();
        let server = Loopback::start(move |req| serve_native(s.clone(), req)).await;
        Self {
            addr: server.addr,
            stubs,
            server,
        }
    }

    /// Sets a stub's script: one step per request in turn, the last one repeating.
    pub fn script(&self, stub: &str, steps: Vec<Step>) {
        lock(&self.stubs).entry(stub.to_owned()).or_default().script = steps;
    }

    /// Requests the stub got.
    pub fn hits(&self, stub: &str) -> usize {
        lock(&self.stubs).get(stub).map_or(0, |s| s.hits)
    }

    /// The stub's last request body, byte for byte (empty before any).
    pub fn last_raw(&self, stub: &str) -> Bytes {
        lock(&self.stubs)
            .get(stub)
            .and_then(|s| s.raws.last().cloned())
            .unwrap_or_default()
    }

    /// The stub's last request path (empty before any).
    pub fn last_path(&self, stub: &str) -> String {
        lock(&self.stubs)
            .get(stub)
            .and_then(|s| s.paths.last().cloned())
            .unwrap_or_default()
    }

    /// The OpenAI base URL of a stub.
    pub fn endpoint(&self, stub: &str) -> String {
        format!("http://{}/{stub}/v1", self.addr)
    }

    /// Re-raises a panic of the fake's tasks.
    pub fn check(&mut self) {
        self.server.check();
    }
}
