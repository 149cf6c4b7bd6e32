//! `mock`: an in-process provider scripted by the target's `mock` block, for the demo and for
//! trying policies without keys. It cycles through `script` (`ok`, `5xx`, `429`, `hang`,
//! `slow`), one entry per attempt; every answer waits `latency` first. `slow` waits
//! `latency + 1s`, `hang` never answers (the attempt's timeout ends it), `429` carries
//! `Retry-After: 1`. It answers chat, completions and embeddings, and streams when asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use detour_api::table::MockBehavior;
use futures_util::stream;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::time::{sleep, timeout_at};

use super::{Adapter, Call, Endpoint, Event, Failure, OpenAiJson, Reply, sse};
use crate::class::Class;

/// A scripted in-process provider.
#[derive(Debug)]
pub struct Mock {
    script: Vec<MockBehavior>,
    latency: Duration,
    reply: String,
    /// Shared with the target's state, so the script position survives reloads.
    cursor: Arc<AtomicUsize>,
}

impl Mock {
    pub fn new(target: &detour_api::table::Target, cursor: Arc<AtomicUsize>) -> Self {
        let (script, latency, reply) = match &target.mock {
            Some(m) => (m.script.clone(), m.latency_ms, m.reply.clone()),
            None => (vec![MockBehavior::Ok], 0, None),
        };
        Self {
            script: if script.is_empty() {
                vec![MockBehavior::Ok]
            } else {
                script
            },
            latency: Duration::from_millis(latency),
            reply: reply.unwrap_or_else(|| format!("Hello from the mock target {}.", target.name)),
            cursor,
        }
    }

    fn next(&self) -> MockBehavior {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.script
            .get(i % self.script.len().max(1))
            .copied()
            .unwrap_or(MockBehavior::Ok)
    }
}

fn error_body(message: &str) -> bytes::Bytes {
    bytes::Bytes::from(
        json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
            .to_string(),
    )
}

fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

impl Adapter for Mock {
    async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        let behavior = self.next();
        let wait_until = call.headers_deadline();
        let delay = match behavior {
            MockBehavior::Slow => self.latency + Duration::from_secs(1),
            MockBehavior::Hang => Duration::from_secs(365 * 24 * 3600),
            _ => self.latency,
        };
        if timeout_at(wait_until, sleep(delay)).await.is_err() {
            return Err(Failure::new(
                call.first_byte_class(),
                "mock did not answer in time",
            ));
        }
        match behavior {
            MockBehavior::ServerError => {
                let s = StatusCode::INTERNAL_SERVER_ERROR;
                let mut f = Failure::new(Class::ServerError, "mock scripted 5xx").status(s);
                f.body = Some(error_body("mock: scripted server error"));
                Err(f)
            }
            MockBehavior::RateLimited => {
                let s = StatusCode::TOO_MANY_REQUESTS;
                let mut f = Failure::new(Class::RateLimited, "mock scripted 429").status(s);
                f.retry_after = Some(Duration::from_secs(1));
                f.body = Some(error_body("mock: scripted rate limit"));
                Err(f)
            }
            MockBehavior::Ok | MockBehavior::Slow | MockBehavior::Hang => self.answer(call),
        }
    }
}

fn answer(v: &Value) -> OpenAiJson {
    OpenAiJson::from_value(v)
}

impl Mock {
    fn answer(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        let prompt_tokens = tokens(&serde_json::to_string(call.body()?).unwrap_or_default());
        let completion_tokens = tokens(&self.reply);
        let usage = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
        let id = format!("mock-{:016x}", fastrand::u64(..));
        Ok(match call.endpoint {
            Endpoint::Embeddings => {
                let inputs = match call.body()?.get("input") {
                    Some(Value::Array(a)) => a.len().max(1),
                    _ => 1,
                };
                let data: Vec<Value> = (0..inputs)
                    .map(|i| {
                        let v: Vec<f64> = (0..8).map(|d| ((i + d) % 7) as f64 / 7.0).collect();
                        json!({"object": "embedding", "index": i, "embedding": v})
                    })
                    .collect();
                Reply::json(answer(&json!({
                    "object": "list", "data": data, "model": call.model,
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
                })))
            }
            Endpoint::Chat if !call.stream => Reply::json(answer(&json!({
                "id": id, "object": "chat.completion", "created": 0, "model": call.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply},
                             "finish_reason": "stop"}],
                "usage": usage,
            }))),
            Endpoint::Completions if !call.stream => Reply::json(answer(&json!({
                "id": id, "object": "text_completion", "created": 0, "model": call.model,
                "choices": [{"index": 0, "text": self.reply, "finish_reason": "stop", "logprobs": null}],
                "usage": usage,
            }))),
            endpoint => {
                let chat = endpoint == Endpoint::Chat;
                let model = call.model.to_owned();
                let mut events: Vec<Result<Event, Failure>> = Vec::new();
                let words: Vec<String> = self.reply.split_inclusive(' ').map(str::to_owned).collect();
                for (i, w) in words.iter().enumerate() {
                    let choice = if chat {
                        let delta = if i == 0 {
                            json!({"role": "assistant", "content": w})
                        } else {
                            json!({"content": w})
                        };
                        json!({"index": 0, "delta": delta, "finish_reason": null})
                    } else {
                        json!({"index": 0, "text": w, "finish_reason": null})
                    };
                    events.push(Ok(Event::Data(json!({
                        "id": id, "object": if chat {"chat.completion.chunk"} else {"text_completion"},
                        "created": 0, "model": model, "choices": [choice],
                    }))));
                }
                let last = if chat {
                    json!({"index": 0, "delta": {}, "finish_reason": "stop"})
                } else {
                    json!({"index": 0, "text": "", "finish_reason": "stop"})
                };
                events.push(Ok(Event::Data(json!({
                    "id": id, "object": if chat {"chat.completion.chunk"} else {"text_completion"},
                    "created": 0, "model": model, "choices": [last], "usage": usage,
                }))));
                events.push(Ok(Event::Done));
                Reply::stream(sse::from_events(stream::iter(events)))
            }
        })
    }
}
