//! The run-time scripted OpenAI upstream the `detour-fake-upstream` binary serves, for the
//! fault soak, the benchmark and the end-to-end tests: one process, many stubs, each stub's
//! behaviour (its mode) switched over HTTP while traffic flows.
//!
//! - `POST /<stub>/v1/chat/completions` answers according to the stub's current script.
//! - `PUT /_control/<stub>/<mode>[?param=value&...]` sets the script of one stub.
//! - `GET /_stats` returns `{"<stub>": {"<mode>": hits, ...}, ...}`: hits counted under the
//!   mode in force when the request arrived.
//! - `GET /_requests[?stub=<stub>]` returns every request in arrival order with its timing:
//!   `{"stub", "mode", "stream", "include_usage", "model", "at_ms", "closed_ms", "end"}`.
//!   Times are milliseconds since the process started; `closed_ms` is when the stub was done
//!   with the request (its answer finished, or the sidecar went away), `null` while open;
//!   `end` says how it ended: `answered`, `completed`, `cut`, `stalled`, `error-event`,
//!   `hung`, `reset`, or `dropped` (the sidecar stopped reading before the scripted answer was over).
//!
//! Modes (what a request meets):
//! - `ok`: a normal answer. `slow`: the same after 300 ms.
//! - `5xx`: 500 with an OpenAI-shaped `server_error`.
//! - `429`: 429 `rate_limit_exceeded` with `Retry-After: <retry_after>` (default `2`;
//!   `retry_after=none` sends no header).
//! - `context-length`: 400 `invalid_request_error` with code `context_length_exceeded`.
//! - `content-policy`: 400 `invalid_request_error` with code `content_policy_violation`.
//! - `hang`: accepts the request and never answers. `reset`: closes the connection without
//!   answering.
//! - `cut`: a stream sends `after` content chunks (default 2), then the connection drops; a
//!   plain answer declares its full length, sends half of it, then drops.
//!   `broken-stream` is `cut` for streams and `ok` for plain requests.
//! - `stall`: like `cut`, but the connection stays open and silent instead of dropping.
//! - `error-event`: a stream sends `after` content chunks, then an OpenAI-shaped error
//!   event, then ends cleanly without `[DONE]`; a plain request gets the `5xx` answer.
//! - `bad-event`: a stream carries one undecodable event after `after` content chunks and is
//!   otherwise normal; a plain request is answered normally.
//! - `tool-call`: the answer is one call of the request's first tool (`get_weather` when it
//!   names none) with arguments `{"city":"Paris"}`, id `call_fake_1`, finish reason
//!   `tool_calls`; a stream sends the arguments in two pieces.
//!
//! Every answer names itself as a provider's does: `x-request-id: req_<stub>_<n>` (`n` counts
//! the requests of all stubs) and `x-ratelimit-remaining-requests: 99`.
//!
//! Parameters (any mode where they make sense):
//! - `chunks=N`: content chunks of a stream, and pieces of a plain answer's text (default 3).
//!   The text is `hello`, ` from`, ` <stub>`, then ` 3`, ` 4`, … up to ` N-1`.
//! - `interval_ms=M`: the wait before each stream event (default 10).
//! - `delay_ms=M`: the wait before the response head (default 0; `slow` means 300).
//! - `done=0`: end a stream cleanly after its last chunk without `data: [DONE]`.
//! - `usage=1`: always send the usage chunk (otherwise only when the request asks with
//!   `stream_options.include_usage`).
//! - `model=NAME`: the model the answer reports (default: the request's `model`).
//! - `times=K`: the script serves the next K requests, then the stub is `ok` again.
//!
//! A new mode is one arm in [`answer`] (or, for a new endpoint, in `handle`) and one line
//! here and in docs/testing.md.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::server::{self, Body};
use crate::wire;

/// What one stub does with the requests it gets.
#[derive(Clone, Debug, Default)]
struct Script {
    mode: String,
    params: BTreeMap<String, String>,
    /// How many more requests this script serves before the stub is `ok` again.
    times: Option<u64>,
}

impl Script {
    fn ok() -> Self {
        Self {
            mode: "ok".to_owned(),
            ..Self::default()
        }
    }

    fn num(&self, key: &str, default: u64) -> u64 {
        self.params
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

/// One request as the stub saw it.
#[derive(Debug)]
struct Hit {
    stub: String,
    mode: String,
    stream: bool,
    include_usage: bool,
    model: String,
    at_ms: f64,
    closed_ms: Option<f64>,
    end: Option<&'static str>,
}

#[derive(Debug)]
struct State {
    started: Instant,
    scripts: BTreeMap<String, Script>,
    hits: BTreeMap<String, BTreeMap<String, u64>>,
    log: Vec<Hit>,
}

impl State {
    fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks the end of one logged request: `finish` when the scripted answer is over; if the
/// guard is dropped before that (the sidecar went away), the request ended `dropped`.
struct EndGuard {
    state: Shared,
    index: usize,
    done: bool,
}

impl EndGuard {
    fn finish(&mut self, end: &'static str) {
        if !self.done {
            self.done = true;
            let mut s = lock(&self.state);
            let now = s.now_ms();
            if let Some(hit) = s.log.get_mut(self.index) {
                hit.closed_ms = Some(now);
                hit.end = Some(end);
            }
        }
    }

    /// Names how the request ends without closing it yet (a stall or a hang stays open
    /// until the sidecar gives up; `closed_ms` then says when).
    fn mark(&self, end: &'static str) {
        let mut s = lock(&self.state);
        if let Some(hit) = s.log.get_mut(self.index) {
            hit.end = Some(end);
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.done {
            let mut s = lock(&self.state);
            let now = s.now_ms();
            if let Some(hit) = s.log.get_mut(self.index) {
                hit.closed_ms = Some(now);
                hit.end.get_or_insert("dropped");
            }
        }
    }
}

/// What to do with one request.
enum Action {
    Answer(Response<Body>),
    Hang(EndGuard),
    Reset,
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    wire::json(status.as_u16(), body)
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

/// The `i`-th piece of a stub's answer text.
fn piece(stub: &str, i: u64) -> String {
    match i {
        0 => "hello".to_owned(),
        1 => " from".to_owned(),
        2 => format!(" {stub}"),
        _ => format!(" {i}"),
    }
}

fn server_error() -> serde_json::Value {
    serde_json::json!({"error": {"message": "fake outage", "type": "server_error", "param": null, "code": null}})
}

async fn handle(state: Shared, req: Request<Incoming>) -> Action {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().as_str(), parts.as_slice()) {
        ("PUT", ["_control", stub, mode]) => {
            let mut params = query(req.uri());
            let times = params.remove("times").and_then(|t| t.parse().ok());
            let script = Script {
                mode: (*mode).to_owned(),
                params: params.clone(),
                times,
            };
            lock(&state).scripts.insert((*stub).to_owned(), script);
            Action::Answer(json(
                StatusCode::OK,
                &serde_json::json!({"stub": stub, "mode": mode, "params": params, "times": times}),
            ))
        }
        ("GET", ["_stats"]) => {
            let s = lock(&state);
            Action::Answer(json(StatusCode::OK, &serde_json::json!(s.hits)))
        }
        ("GET", ["_requests"]) => {
            let only = query(req.uri()).remove("stub");
            let s = lock(&state);
            let hits: Vec<serde_json::Value> = s
                .log
                .iter()
                .filter(|h| only.as_ref().is_none_or(|o| *o == h.stub))
                .map(|h| {
                    serde_json::json!({
                        "stub": h.stub, "mode": h.mode, "stream": h.stream,
                        "include_usage": h.include_usage, "model": h.model,
                        "at_ms": h.at_ms, "closed_ms": h.closed_ms, "end": h.end,
                    })
                })
                .collect();
            Action::Answer(json(StatusCode::OK, &serde_json::json!(hits)))
        }
        ("POST", [stub, ..]) => {
            let stub = (*stub).to_owned();
            let at_ms = lock(&state).now_ms();
            // Read the body like a real upstream would before answering.
            let (_, body) = wire::read(req).await;
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let asked_model = request
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_owned();
            let stream = request
                .get("stream")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            let include_usage = request
                .pointer("/stream_options/include_usage")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            let tool = request
                .pointer("/tools/0/function/name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("get_weather")
                .to_owned();
            let (script, mut guard) = {
                let mut s = lock(&state);
                let entry = s.scripts.entry(stub.clone()).or_insert_with(Script::ok);
                let script = entry.clone();
                if let Some(left) = entry.times.as_mut() {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        *entry = Script::ok();
                    }
                }
                *s.hits
                    .entry(stub.clone())
                    .or_default()
                    .entry(script.mode.clone())
                    .or_default() += 1;
                s.log.push(Hit {
                    stub: stub.clone(),
                    mode: script.mode.clone(),
                    stream,
                    include_usage,
                    model: asked_model.clone(),
                    at_ms,
                    closed_ms: None,
                    end: None,
                });
                let index = s.log.len() - 1;
                (
                    script,
                    EndGuard {
                        state: state.clone(),
                        index,
                        done: false,
                    },
                )
            };
            let model = script.params.get("model").cloned().unwrap_or(asked_model);
            let delay = match script.mode.as_str() {
                "slow" => 300,
                _ => script.num("delay_ms", 0),
            };
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let n = guard.index;
            let mut action = if script.mode == "tool-call" {
                guard.finish("answered");
                Action::Answer(tool_call(&model, &tool, stream, include_usage))
            } else {
                answer(&script, &stub, &model, stream, include_usage, guard)
            };
            if let Action::Answer(r) = &mut action {
                let h = r.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(&format!("req_{stub}_{n}")) {
                    h.insert("x-request-id", v);
                }
                h.insert(
                    "x-ratelimit-remaining-requests",
                    http::HeaderValue::from_static("99"),
                );
            }
            action
        }
        _ => Action::Answer(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": {"message": "no such path"}}),
        )),
    }
}

fn answer(
    script: &Script,
    stub: &str,
    model: &str,
    stream: bool,
    include_usage: bool,
    mut guard: EndGuard,
) -> Action {
    let chunks = script.num("chunks", 3);
    let client_error = |message: &str, code: &str| {
        json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": code}}),
        )
    };
    let fault = match script.mode.as_str() {
        "5xx" => Some(json(StatusCode::INTERNAL_SERVER_ERROR, &server_error())),
        "error-event" if !stream => Some(json(StatusCode::INTERNAL_SERVER_ERROR, &server_error())),
        "429" => {
            let mut r = json(
                StatusCode::TOO_MANY_REQUESTS,
                &serde_json::json!({"error": {"message": "fake rate limit", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}}),
            );
            let after = script.params.get("retry_after").map_or("2", String::as_str);
            if after != "none"
                && let Ok(v) = http::HeaderValue::from_str(after)
            {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            Some(r)
        }
        "context-length" => Some(client_error(
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens. Please reduce the length of the messages.",
            "context_length_exceeded",
        )),
        "content-policy" => Some(client_error(
            "Your request was rejected as a result of our safety system.",
            "content_policy_violation",
        )),
        "hang" => {
            guard.mark("hung");
            return Action::Hang(guard);
        }
        "reset" => {
            guard.finish("reset");
            return Action::Reset;
        }
        _ => None,
    };
    if let Some(r) = fault {
        guard.finish("answered");
        return Action::Answer(r);
    }
    if stream {
        return Action::Answer(sse(script, stub, model, include_usage, guard));
    }
    let text: String = (0..chunks).map(|i| piece(stub, i)).collect();
    let body = serde_json::json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
    });
    let (end, broken) = match script.mode.as_str() {
        "cut" => ("cut", Some(Step::Reset)),
        "stall" => ("stalled", Some(Step::Stall)),
        _ => ("answered", None),
    };
    let Some(broken) = broken else {
        guard.finish(end);
        return Action::Answer(json(StatusCode::OK, &body));
    };
    // Declare the whole length, send half of it, then break.
    let bytes = Bytes::from(body.to_string());
    let half = bytes.slice(..bytes.len() / 2);
    let mut resp = Response::new(steps_body(
        vec![Step::Data(half), broken],
        // Paced, so the head and the first half leave before the break.
        Duration::from_millis(script.num("interval_ms", 10)),
        guard,
        end,
    ));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
    Action::Answer(resp)
}

/// The `tool-call` mode's answer: one call of `tool`.
fn tool_call(model: &str, tool: &str, stream: bool, include_usage: bool) -> Response<Body> {
    let usage = serde_json::json!({"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15});
    if !stream {
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": "call_fake_1", "type": "function",
                                    "function": {"name": tool, "arguments": "{\"city\":\"Paris\"}"}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": usage,
            }),
        );
    }
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let v = serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut text = Vec::new();
    text.push(chunk(
        serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_fake_1",
            "type": "function", "function": {"name": tool, "arguments": ""}}]}),
        None,
    ));
    for piece in ["{\"city\":", "\"Paris\"}"] {
        text.push(chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        ));
    }
    text.push(chunk(serde_json::json!({}), Some("tool_calls")));
    if include_usage {
        let v = serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [], "usage": usage});
        text.push(Bytes::from(format!("data: {v}\n\n")));
    }
    text.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let all: Vec<u8> = text.concat();
    wire::full(200, "text/event-stream", all)
}

/// One step of a scripted body.
enum Step {
    Data(Bytes),
    /// The connection drops here.
    Reset,
    /// The body goes silent here and stays open.
    Stall,
}

/// A body that plays `steps`, waiting `interval` before each; the guard records how it
/// ended (`end` when every step played, `dropped` when the reader went away first).
fn steps_body(steps: Vec<Step>, interval: Duration, guard: EndGuard, end: &'static str) -> Body {
    let stream = futures_util::stream::unfold(
        (steps.into_iter(), guard),
        move |(mut it, mut guard)| async move {
            let Some(step) = it.next() else {
                guard.finish(end);
                return None;
            };
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            match step {
                Step::Data(b) => Some((Ok(Frame::data(b)), (it, guard))),
                Step::Reset => {
                    guard.finish(end);
                    Some((
                        Err(std::io::Error::other("scripted connection reset")),
                        (it, guard),
                    ))
                }
                Step::Stall => {
                    guard.mark(end);
                    std::future::pending::<()>().await;
                    None
                }
            }
        },
    );
    StreamBody::new(stream).boxed_unsync()
}

/// An SSE answer following the script: content chunks, the faults of `cut`, `stall`,
/// `error-event`, `bad-event` and `broken-stream`, the finish chunk, usage, `[DONE]`.
fn sse(script: &Script, stub: &str, model: &str, include_usage: bool, guard: EndGuard) -> Response<Body> {
    let chunks = script.num("chunks", 3);
    let mode = script.mode.as_str();
    let after = script.num("after", 2);
    let event = |v: &serde_json::Value| Step::Data(Bytes::from(format!("data: {v}\n\n")));
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        event(&serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        }))
    };
    let mut steps = Vec::new();
    let mut end = "completed";
    for i in 0..chunks {
        if i == after {
            match mode {
                "cut" | "broken-stream" => {
                    steps.push(Step::Reset);
                    end = "cut";
                    break;
                }
                "stall" => {
                    steps.push(Step::Stall);
                    end = "stalled";
                    break;
                }
                "error-event" => {
                    steps.push(event(&serde_json::json!({"error": {
                        "message": "The server had an error while processing your request.",
                        "type": "server_error", "param": null, "code": null}})));
                    end = "error-event";
                    break;
                }
                "bad-event" => steps.push(Step::Data(Bytes::from_static(
                    b"data: {\"id\": \"chatcmpl-fake\", \"choices\": [\n\n",
                ))),
                _ => {}
            }
        }
        let delta = if i == 0 {
            serde_json::json!({"role": "assistant", "content": piece(stub, i), "refusal": null})
        } else {
            serde_json::json!({"content": piece(stub, i)})
        };
        steps.push(chunk(delta, None));
    }
    let broke =
        matches!(steps.last(), Some(Step::Reset | Step::Stall)) || (mode == "error-event" && after < chunks);
    if !broke {
        steps.push(chunk(serde_json::json!({}), Some("stop")));
        if include_usage || script.num("usage", 0) == 1 {
            steps.push(event(&serde_json::json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                "system_fingerprint": "fp_fake", "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
            })));
        }
        if script.num("done", 1) != 0 {
            steps.push(Step::Data(Bytes::from_static(b"data: [DONE]\n\n")));
        }
    }
    let interval = Duration::from_millis(script.num("interval_ms", 10));
    let mut resp = Response::new(steps_body(steps, interval, guard, end));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    resp
}

/// A fresh run-time scripted upstream: every stub `ok`, nothing logged.
#[derive(Clone, Debug)]
pub struct Upstream {
    state: Shared,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    /// Every stub `ok`; times count from now.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                started: Instant::now(),
                scripts: BTreeMap::new(),
                hits: BTreeMap::new(),
                log: Vec::new(),
            })),
        }
    }

    /// Answers one request as its stub's script says: `Err` drops the connection without an
    /// answer; a hang never resolves.
    pub async fn answer(&self, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
        match handle(self.state.clone(), req).await {
            Action::Answer(r) => Ok(r),
            Action::Hang(_guard) => std::future::pending().await,
            Action::Reset => Err(std::io::Error::other("scripted connection reset")),
        }
    }

    /// Serves on `listener` until `shutdown` resolves.
    ///
    /// # Errors
    /// When accepting fails, or what `shutdown` returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = std::io::Result<()>>,
    ) -> std::io::Result<()> {
        server::serve(
            listener,
            move |req| {
                let this = self.clone();
                async move { this.answer(req).await }
            },
            shutdown,
        )
        .await
    }
}
