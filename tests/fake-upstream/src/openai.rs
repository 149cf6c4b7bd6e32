//! The in-process OpenAI fake: many stubs on one port, each under its own path prefix
//! (`http://127.0.0.1:PORT/<stub>/v1`), each with a script of [`Step`]s it cycles through,
//! one per request, a hit counter and the last request it saw.
//!
//! Every answer names itself as a provider's does: `x-request-id: req-<stub>-<hit>`,
//! `x-ratelimit-remaining-requests: 1000 - hit`, and an `openai-organization` the sidecar
//! must not pass on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::server::{Body, Loopback};
use crate::wire::{self, DONE, Item, broken, data, frame};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// 200 with `hello from <stub>`.
    Ok,
    /// This status with an OpenAI `server_error`.
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
        /// Content chunks.
        n: usize,
        /// Between chunks.
        gap_ms: u64,
        /// How it ends.
        tail: Tail,
    },
    /// 400 with this OpenAI error code and message.
    Refuse(&'static str, &'static str),
    /// A stream with id `id`: a role chunk, then `texts` `gap_ms` apart, then `tail`.
    Say {
        /// The chunks' id.
        id: &'static str,
        /// One content chunk each.
        texts: Vec<&'static str>,
        /// Between chunks.
        gap_ms: u64,
        /// How it ends.
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

/// How a [`Step::Script`] or [`Step::Say`] stream ends.
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

fn lock(stubs: &Stubs) -> MutexGuard<'_, HashMap<String, Stub>> {
    stubs.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake provider.
#[derive(Debug)]
pub struct Fake {
    /// Where it listens.
    pub addr: SocketAddr,
    stubs: Stubs,
    server: Loopback,
}

fn chunk(model: &str, i: usize) -> Bytes {
    data(
        &json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]}),
    )
}

fn sse(model: &str, n: usize, break_it: bool) -> Response<Body> {
    // Spaced so each chunk is flushed on its own, as a real provider's would be.
    let mut items: Vec<(u64, Item)> = (0..n).map(|i| (5, frame(chunk(model, i)))).collect();
    items.push((
        5,
        if break_it {
            broken("scripted stream break")
        } else {
            frame(DONE)
        },
    ));
    wire::sse(items)
}

/// The usual stream ending: a `finish_reason` chunk after `delay` ms, a usage chunk, and
/// `[DONE]` unless `done` is false.
fn finish(items: &mut Vec<(u64, Item)>, delay: u64, finish: &Value, usage: &Value, done: bool) {
    items.push((delay, frame(data(finish))));
    items.push((0, frame(data(usage))));
    if done {
        items.push((0, frame(DONE)));
    }
}

fn error_event() -> Item {
    frame(data(
        &json!({"error": {"message": "overloaded", "type": "server_error"}}),
    ))
}

/// A stream of given texts (see [`Step::Say`]).
fn say(model: &str, id: &str, texts: &[&str], gap_ms: u64, tail: &Tail, tool: bool) -> Response<Body> {
    let chunk = |delta: Value, finish: Value| {
        data(
            &json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let mut items: Vec<(u64, Item)> = vec![(
        1,
        frame(chunk(json!({"role": "assistant", "content": ""}), Value::Null)),
    )];
    items.extend(
        texts
            .iter()
            .map(|t| (gap_ms, frame(chunk(json!({"content": t}), Value::Null)))),
    );
    if tool {
        let call = json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\": "}}]});
        items.push((gap_ms, frame(chunk(call, Value::Null))));
    }
    let stop = json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": model,
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": texts.len(), "total_tokens": 5 + texts.len()}});
    match tail {
        Tail::Done | Tail::NoDone | Tail::Opaque => finish(&mut items, gap_ms, &stop, &usage, true),
        Tail::Cut => {}
        Tail::Stall(ms) => finish(&mut items, *ms, &stop, &usage, true),
        Tail::ErrorEvent => items.push((gap_ms, error_event())),
    }
    wire::sse(items)
}

/// A scripted stream (see [`Step::Script`]).
fn scripted(model: &str, n: usize, gap_ms: u64, tail: &Tail) -> Response<Body> {
    let stop = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}});
    let mut items: Vec<(u64, Item)> = (0..n).map(|i| (gap_ms, frame(chunk(model, i)))).collect();
    match tail {
        Tail::Done => finish(&mut items, gap_ms, &stop, &usage, true),
        Tail::NoDone => finish(&mut items, gap_ms, &stop, &usage, false),
        Tail::Cut => {}
        Tail::Stall(ms) => finish(&mut items, *ms, &stop, &usage, true),
        Tail::ErrorEvent => items.push((gap_ms, error_event())),
        Tail::Opaque => {
            items.push((gap_ms, frame(&b"event: note\ndata: <keep-alive>\n\n"[..])));
            finish(&mut items, gap_ms, &stop, &usage, true);
        }
    }
    wire::sse(items)
}

async fn handle(stubs: Stubs, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let (head, raw) = wire::read(req).await;
    let name = head
        .uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let headers = head.headers;
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_owned();
    let (step, hit) = {
        let mut g = lock(&stubs);
        let stub = g.entry(name.clone()).or_default();
        let step = stub
            .script
            .get(stub.hits % stub.script.len().max(1))
            .cloned()
            .unwrap_or(Step::Ok);
        stub.hits += 1;
        stub.last_headers = Some(headers);
        stub.last_body = Some(body);
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
        Step::Ok => wire::json(200, &ok(&model)),
        Step::LargeBreak(n) => {
            let head = format!(
                r#"{{"id":"x","object":"chat.completion","created":0,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":""#
            );
            let mut frames: Vec<Item> = vec![frame(head)];
            let chunk = Bytes::from("x".repeat(64 * 1024));
            frames.extend((0..n.div_ceil(64 * 1024)).map(|_| frame(chunk.clone())));
            frames.push(broken("scripted body break"));
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Step::Large(n) => {
            let mut v = ok(&model);
            v["choices"][0]["message"]["content"] = Value::from("x".repeat(n));
            wire::json(200, &v)
        }
        Step::Status(s) => wire::json(s, &err("scripted status")),
        Step::RateLimited(secs) => {
            let mut r = wire::json(429, &err("slow down"));
            r.headers_mut().insert(http::header::RETRY_AFTER, secs.into());
            r
        }
        Step::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            wire::json(200, &ok(&model))
        }
        Step::Reset => return Err(std::io::Error::other("scripted reset")),
        Step::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            wire::json(200, &ok(&model))
        }
        Step::BadJson => wire::full(200, "application/json", &b"<html>oops"[..]),
        Step::Stream(n) => sse(&model, n, false),
        Step::StreamBreak(n) => sse(&model, n, true),
        Step::Script { n, gap_ms, tail } => scripted(&model, n, gap_ms, &tail),
        Step::Say {
            id,
            texts,
            gap_ms,
            tail,
        } => say(&model, id, &texts, gap_ms, &tail, false),
        Step::ToolCut => say(&model, "c1", &["Let me look."], 5, &Tail::Cut, true),
        Step::Refuse(code, message) => wire::json(
            400,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": code}}),
        ),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("req-{name}-{hit}")) {
        h.insert("x-request-id", v);
    }
    h.insert("x-ratelimit-remaining-requests", (1000 - hit).into());
    h.insert(
        "openai-organization",
        HeaderValue::from_static("org-not-for-the-client"),
    );
    Ok(resp)
}

impl Fake {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        let stubs: Stubs = Arc::default();
        let s = stubs.clone();
        let server = Loopback::start(move |req| handle(s.clone(), req)).await;
        Self {
            addr: server.addr,
            stubs,
            server,
        }
    }

    /// Connections the fake has accepted.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// Sets a stub's script (cycled) and resets its counter.
    pub fn script(&self, stub: &str, steps: Vec<Step>) {
        lock(&self.stubs).insert(
            stub.to_owned(),
            Stub {
                script: steps,
                ..Stub::default()
            },
        );
    }

    /// Requests the stub got since its script was set.
    pub fn hits(&self, stub: &str) -> usize {
        lock(&self.stubs).get(stub).map_or(0, |s| s.hits)
    }

    /// The headers of the stub's last request.
    pub fn last_headers(&self, stub: &str) -> Option<HeaderMap> {
        lock(&self.stubs).get(stub).and_then(|s| s.last_headers.clone())
    }

    /// The stub's last request body as JSON (`null` when it was not JSON).
    pub fn last_body(&self, stub: &str) -> Option<Value> {
        lock(&self.stubs).get(stub).and_then(|s| s.last_body.clone())
    }

    /// The last request body as the stub received it, byte for byte.
    pub fn last_raw(&self, stub: &str) -> Option<Bytes> {
        lock(&self.stubs).get(stub).and_then(|s| s.last_raw.clone())
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
