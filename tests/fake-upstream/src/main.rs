//! `detour-fake-upstream [--listen 127.0.0.1:0]`: an OpenAI-compatible upstream whose
//! behaviour is switched at run time, for the fault soak.
//!
//! - `POST /<stub>/v1/chat/completions` answers according to the stub's current mode.
//! - `PUT /_control/<stub>/<mode>` sets it: `ok`, `5xx`, `429` (with `Retry-After: 2`), `hang`
//!   (never answers), `reset` (closes the connection without answering), `slow` (answers
//!   after 300 ms), `broken-stream` (a streaming request gets two chunks, then the connection
//!   drops; a plain one is answered normally).
//! - `"stream": true` requests are answered as OpenAI's SSE: three `chat.completion.chunk`
//!   events 10 ms apart, a final chunk with `finish_reason`, then `data: [DONE]`.
//! - `GET /_stats` returns `{"<stub>": {"<mode>": hits, ...}, ...}`: hits counted under the
//!   mode in force when the request arrived.
//!
//! Prints `listening on ADDR` on stdout once bound, and exits on SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    modes: BTreeMap<String, String>,
    hits: BTreeMap<String, BTreeMap<String, u64>>,
}

type Shared = Arc<Mutex<State>>;

type Body = UnsyncBoxBody<Bytes, Reset>;

/// What to do with one request.
enum Action {
    Answer(Response<Body>),
    Hang,
    Reset,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let full = Full::new(Bytes::from(body.to_string())).map_err(|never| match never {});
    let mut resp = Response::new(UnsyncBoxBody::new(full));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(state: Shared, req: Request<Incoming>) -> Action {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().as_str(), parts.as_slice()) {
        ("PUT", ["_control", stub, mode]) => {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            s.modes.insert((*stub).to_owned(), (*mode).to_owned());
            Action::Answer(json(
                StatusCode::OK,
                serde_json::json!({"stub": stub, "mode": mode}),
            ))
        }
        ("GET", ["_stats"]) => {
            let s = state.lock().unwrap_or_else(PoisonError::into_inner);
            Action::Answer(json(StatusCode::OK, serde_json::json!(s.hits)))
        }
        ("POST", [stub, ..]) => {
            let stub = (*stub).to_owned();
            let mode = {
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                let mode = s.modes.get(&stub).cloned().unwrap_or_else(|| "ok".to_owned());
                *s.hits
                    .entry(stub.clone())
                    .or_default()
                    .entry(mode.clone())
                    .or_default() += 1;
                mode
            };
            // Read the body like a real upstream would before answering.
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let model = request
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_owned();
            let stream = request
                .get("stream")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            if stream && matches!(mode.as_str(), "ok" | "slow" | "broken-stream") {
                return Action::Answer(sse(&model, &stub, mode == "broken-stream"));
            }
            let ok = || {
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {stub}")}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
                    }),
                )
            };
            match mode.as_str() {
                "5xx" => Action::Answer(json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"error": {"message": "fake outage", "type": "server_error"}}),
                )),
                "429" => {
                    let mut r = json(
                        StatusCode::TOO_MANY_REQUESTS,
                        serde_json::json!({"error": {"message": "fake rate limit", "type": "rate_limit_error"}}),
                    );
                    r.headers_mut()
                        .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("2"));
                    Action::Answer(r)
                }
                "hang" => Action::Hang,
                "reset" => Action::Reset,
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Action::Answer(ok())
                }
                _ => Action::Answer(ok()),
            }
        }
        _ => Action::Answer(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"message": "no such path"}}),
        )),
    }
}

/// An SSE answer; `broken` drops the connection after two chunks.
fn sse(model: &str, stub: &str, broken: bool) -> Response<Body> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let c = serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        });
        Ok(Bytes::from(format!("data: {c}\n\n")))
    };
    let mut events = vec![
        chunk(serde_json::json!({"role": "assistant", "content": "hello"}), None),
        chunk(serde_json::json!({"content": " from"}), None),
    ];
    if broken {
        events.push(Err(Reset));
    } else {
        events.push(chunk(serde_json::json!({"content": format!(" {stub}")}), None));
        events.push(chunk(serde_json::json!({}), Some("stop")));
        events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    }
    let stream = futures_util::stream::unfold(events.into_iter(), |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Some((next.map(Frame::data), it))
    });
    let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(stream)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    resp
}

#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection reset")
    }
}

impl std::error::Error for Reset {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--listen"
            && let Some(v) = args.next()
        {
            listen = v;
        }
    }
    let listener = TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    let state: Shared = Arc::default();
    #[expect(
        clippy::print_stdout,
        reason = "the soak driver reads the bound address from stdout"
    )]
    {
        println!("listening on {addr}");
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {},
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = &mut shutdown => return r,
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move {
                            match handle(state, req).await {
                                Action::Answer(r) => Ok::<_, Reset>(r),
                                Action::Hang => {
                                    std::future::pending::<()>().await;
                                    Err(Reset)
                                }
                                Action::Reset => Err(Reset),
                            }
                        }
                    });
                    let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
