//! `anthropic`: OpenAI chat requests translated to Anthropic's Messages API and back.
//!
//! `POST {endpoint or https://api.anthropic.com}/v1/messages` with `x-api-key` (marked
//! sensitive) and `anthropic-version` (the target's `apiVersion`, default `2023-06-01`).
//! Requests go through [`chat::read`] and are written here; responses become a
//! `chat.completion`; streams (`message_start` … `message_stop`) become
//! `chat.completion.chunk` events and `[DONE]` through [`Translator`]. Errors go through the
//! one mapper [`map_error`]: `rate_limit_error` (429) and `overloaded_error` (529) are
//! retryable, `api_error` is a 5xx, the rest are client errors returned in OpenAI's error
//! shape with the upstream status. Wire types stay private to this module.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use serde_json::{Map, Value, json};

use super::assemble;
use super::chat::{self, Chat, Image, Part, Role, ToolChoice};
use super::upstream::{self, Translate};
use super::{Adapter, Call, Event, Failure, HttpClient, KeySource, OpenAiJson, Reply, UpstreamMeta};
use crate::class::Class;

/// Anthropic's public API base.
pub const DEFAULT_BASE: &str = "https://api.anthropic.com";
/// The `anthropic-version` sent when the target sets no `apiVersion`.
pub const DEFAULT_VERSION: &str = "2023-06-01";
const NAME: &str = "anthropic";

/// An Anthropic upstream.
#[derive(Debug)]
pub struct Anthropic {
    url: String,
    version: HeaderValue,
    key: KeySource,
    client: HttpClient,
}

impl Anthropic {
    pub fn new(
        endpoint: Option<&str>,
        api_version: Option<&str>,
        key: KeySource,
        client: HttpClient,
    ) -> Self {
        let base = endpoint.unwrap_or(DEFAULT_BASE).trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Self {
            url: format!("{base}/v1/messages"),
            version: api_version
                .and_then(|v| HeaderValue::try_from(v).ok())
                .unwrap_or(HeaderValue::from_static(DEFAULT_VERSION)),
            key,
            client,
        }
    }
}

/// The one error mapper: Anthropic's status and `error.type` to a class; the body returned to
/// the client is rewritten into OpenAI's error shape with the same message.
pub(crate) fn map_error(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Failure {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let kind = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .unwrap_or("the upstream rejected the request");
    let class = match (kind, status.as_u16()) {
        ("rate_limit_error", _) | (_, 429) => Class::RateLimited,
        ("overloaded_error" | "api_error", _) | (_, 500..=599) => Class::ServerError,
        (_, 408) => Class::Timeout,
        ("invalid_request_error", 400) if is_context_length(message) => Class::ContextLength,
        (_, 400..=499) => Class::ClientError,
        _ => Class::BadResponse,
    };
    let openai_type = match kind {
        "invalid_request_error" | "request_too_large" => "invalid_request_error",
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "not_found_error" => "not_found_error",
        "rate_limit_error" => "rate_limit_error",
        _ => "server_error",
    };
    upstream::translated_failure(
        "anthropic",
        class,
        status,
        retry_after,
        message,
        openai_type,
        kind,
    )
}

/// Anthropic's wording of a prompt over the context window: "prompt is too long: 210000 tokens
/// > 200000 maximum", or "input length and `max_tokens` exceed context limit: …".
fn is_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("prompt is too long") || (m.contains("input length") && m.contains("exceed context limit"))
}

/// An `error` event inside a stream, classified like the same error as a status.
fn stream_error(v: &Value) -> Failure {
    let kind = v.pointer("/error/type").and_then(Value::as_str).unwrap_or("");
    let status = match kind {
        "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
        "invalid_request_error" => StatusCode::BAD_REQUEST,
        "overloaded_error" => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut f = map_error(status, None, v.to_string().as_bytes());
    f.detail = format!("anthropic stream error event {kind}").into();
    f
}

fn image_block(image: &Image) -> Value {
    match image {
        Image::Data { media_type, base64 } => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": base64}})
        }
        Image::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

/// The OpenAI request as a Messages API body.
pub(crate) fn to_request(c: &Chat, model: &str, stream: bool) -> Value {
    let messages: Vec<Value> = c
        .turns
        .iter()
        .map(|t| {
            let content: Vec<Value> = t
                .parts
                .iter()
                .map(|p| match p {
                    Part::Text(text) => json!({"type": "text", "text": text}),
                    Part::Image(image) => image_block(image),
                    Part::ToolCall { id, name, input } => {
                        json!({"type": "tool_use", "id": id, "name": name, "input": input})
                    }
                    Part::ToolResult { id, text } => {
                        json!({"type": "tool_result", "tool_use_id": id, "content": text})
                    }
                })
                .collect();
            json!({
                "role": if t.role == Role::User { "user" } else { "assistant" },
                "content": content,
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("max_tokens".into(), json!(c.max_tokens));
    let system = c.system_with_format();
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(t) = c.temperature {
        // OpenAI's range is 0..2, Anthropic's 0..1.
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = c.top_p {
        out.insert("top_p".into(), json!(p));
    }
    if !c.stop.is_empty() {
        out.insert("stop_sequences".into(), json!(c.stop));
    }
    if !c.tools.is_empty() {
        let tools: Vec<Value> = c
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if let (Some(d), Some(o)) = (&t.description, v.as_object_mut()) {
                    o.insert("description".into(), json!(d));
                }
                v
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match &c.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Named(n)) => Some(json!({"type": "tool", "name": n})),
    };
    if c.parallel_tool_calls == Some(false) && !c.tools.is_empty() {
        let v = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(o) = v.as_object_mut()
            && o.get("type").and_then(Value::as_str) != Some("none")
        {
            o.insert("disable_parallel_tool_use".into(), json!(true));
        }
    }
    if let Some(choice) = choice
        && !c.tools.is_empty()
    {
        out.insert("tool_choice".into(), choice);
    }
    if let Some(u) = &c.user {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    if stream {
        out.insert("stream".into(), json!(true));
    }
    Value::Object(out)
}

fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    stop_reason.map(|r| match r {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn
        _ => "stop",
    })
}

fn tokens(usage: Option<&Value>, field: &str) -> u64 {
    usage
        .and_then(|u| u.get(field))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Input tokens as OpenAI counts them: cached reads and writes are prompt tokens too.
fn prompt_tokens(usage: Option<&Value>) -> u64 {
    tokens(usage, "input_tokens")
        .saturating_add(tokens(usage, "cache_read_input_tokens"))
        .saturating_add(tokens(usage, "cache_creation_input_tokens"))
}

/// A Messages API response as a `chat.completion`, written as an assembled stream of the same
/// message would be ([`assemble::completion`]): the same bytes either way.
pub(crate) fn from_response(v: &Value, created: u64) -> Result<OpenAiJson, Failure> {
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::new(Class::BadResponse, "anthropic response has no content array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(assemble::ToolCall {
                id: b.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                kind: "function".to_owned(),
                function: assemble::Function {
                    name: b.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
                    arguments: b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            }),
            // thinking, redacted_thinking and server-tool blocks have no OpenAI counterpart.
            _ => {}
        }
    }
    let usage = v.get("usage");
    let reason = finish_reason(v.get("stop_reason").and_then(Value::as_str)).unwrap_or("stop");
    Ok(assemble::completion(
        v.get("id").unwrap_or(&Value::Null),
        created,
        v.get("model").unwrap_or(&Value::Null),
        text,
        tool_calls,
        reason,
        &assemble::usage(prompt_tokens(usage), tokens(usage, "output_tokens")),
    ))
}

/// The stream translator: Anthropic events in, OpenAI chunks out.
#[derive(Debug, Default)]
struct Translator {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    prompt: u64,
    completion: u64,
    /// Content-block index → OpenAI tool-call index.
    tools: HashMap<u64, u64>,
    /// Whether the role chunk went out.
    started: bool,
    /// `message_delta` (with the stop reason) went out as the finish chunk.
    stopped: bool,
    done: bool,
}

impl Translator {
    /// The role chunk, sent with the first content rather than at `message_start`: the proxy
    /// commits on the first chunk, so an error right after `message_start` (Anthropic sends
    /// `overloaded_error` that way) still fails over.
    fn start(&mut self, out: &mut VecDeque<Event>) {
        if !self.started {
            self.started = true;
            out.push_back(Event::Data(assemble::chunk(
                &self.id,
                self.created,
                &self.model,
                json!({"role": "assistant", "content": ""}),
                None,
            )));
        }
    }
}

impl Translate for Translator {
    fn event(&mut self, v: Value, out: &mut VecDeque<Event>) -> Result<(), Failure> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        let chunk = |t: &Self, delta: Value, finish: Option<&str>| {
            Event::Data(assemble::chunk(&t.id, t.created, &t.model, delta, finish))
        };
        match kind {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                m.get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .clone_into(&mut self.id);
                m.get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .clone_into(&mut self.model);
                self.prompt = prompt_tokens(m.get("usage"));
                self.completion = tokens(m.get("usage"), "output_tokens");
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        self.start(out);
                        let n = u64::try_from(self.tools.len()).unwrap_or(u64::MAX);
                        self.tools.insert(index, n);
                        out.push_back(chunk(
                            self,
                            json!({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""}}]}),
                            None,
                        ));
                    }
                    Some("text") => {
                        if let Some(t) = block
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            self.start(out);
                            out.push_back(chunk(self, json!({"content": t}), None));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        self.start(out);
                        let t = d.get("text").and_then(Value::as_str).unwrap_or("");
                        out.push_back(chunk(self, json!({"content": t}), None));
                    }
                    Some("input_json_delta") => {
                        self.start(out);
                        let n = self.tools.get(&index).copied().unwrap_or(0);
                        let p = d.get("partial_json").and_then(Value::as_str).unwrap_or("");
                        out.push_back(chunk(
                            self,
                            json!({"tool_calls": [{"index": n, "function": {"arguments": p}}]}),
                            None,
                        ));
                    }
                    // thinking_delta, signature_delta, citations_delta: no OpenAI counterpart.
                    _ => {}
                }
            }
            "message_delta" => {
                self.start(out);
                if let Some(o) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.completion = o;
                }
                let reason = finish_reason(v.pointer("/delta/stop_reason").and_then(Value::as_str));
                out.push_back(chunk(self, json!({}), Some(reason.unwrap_or("stop"))));
                self.stopped = true;
            }
            "message_stop" => {
                self.start(out);
                self.stop(out);
            }
            "error" => return Err(stream_error(&v)),
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    /// A body that ends after the stop reason but without `message_stop` still carried the
    /// whole answer: complete.
    fn end(&mut self, out: &mut VecDeque<Event>) -> Result<(), Failure> {
        if self.stopped {
            self.stop(out);
            Ok(())
        } else {
            Err(Failure::new(
                Class::Reset,
                "upstream stream ended before the end of the message",
            ))
        }
    }
}

impl Translator {
    /// The usage chunk (when asked for) and `[DONE]`.
    fn stop(&mut self, out: &mut VecDeque<Event>) {
        if self.include_usage {
            out.push_back(Event::Data(assemble::usage_chunk(
                &self.id,
                self.created,
                &self.model,
                self.prompt,
                self.completion,
            )));
        }
        out.push_back(Event::Done);
        self.done = true;
    }
}

impl Adapter for Anthropic {
    async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        upstream::chat_only(NAME, call)?;
        let chat = chat::read(NAME, call.body()?)?;
        let body = to_request(&chat, call.model, call.stream);
        let key = self
            .key
            .current()
            .map_err(|m| Failure::new(Class::Credentials, m))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, upstream::USER_AGENT)
            .header("anthropic-version", self.version.clone())
            .header(
                header::ACCEPT,
                if call.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(Bytes::from(body.to_string()))
            .map_err(|_| Failure::new(Class::ConnectError, "endpoint is not a valid URL"))?;
        if let Some(key) = key {
            let mut value = HeaderValue::try_from(key.expose())
                .map_err(|_| Failure::new(Class::Credentials, "the API key is not a valid header value"))?;
            value.set_sensitive(true);
            req.headers_mut().insert("x-api-key", value);
        }
        messages_reply(&self.client, call, req, map_error).await
    }
}

/// Sends a Messages API request and reads its answer: errors through `map`, a stream of
/// Anthropic events translated to OpenAI chunks, a message to a `chat.completion`. Shared
/// with Claude on Vertex AI, which answers the same wire format.
pub(crate) async fn messages_reply(
    client: &HttpClient,
    call: &Call<'_>,
    req: Request<Bytes>,
    map: fn(StatusCode, Option<Duration>, &[u8]) -> Failure,
) -> Result<Reply, Failure> {
    let resp = upstream::send(client, call, req).await?;
    let status = resp.status();
    let meta = UpstreamMeta::from_headers(resp.headers());
    if !status.is_success() {
        let ra = upstream::retry_after(resp.headers());
        let body = upstream::collect(resp.into_body(), call.deadline, upstream::MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let mut f = map(status, ra, &body);
        f.meta = meta;
        return Err(f);
    }
    if call.stream {
        if !upstream::content_type_is(&resp, "text/event-stream") {
            return Err(
                Failure::new(Class::BadResponse, "anthropic did not answer a stream with SSE").status(status),
            );
        }
        let events = upstream::sse_json(resp.into_body());
        let translator = Translator {
            created: assemble::now_unix(),
            include_usage: call.include_usage()?,
            ..Translator::default()
        };
        return Ok(Reply::stream(upstream::translated(events, translator)).meta(meta));
    }
    let v = upstream::json_body(resp, call).await?;
    from_response(&v, assemble::now_unix()).map(|a| Reply::json(a).meta(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error mapper: 429/529/5xx retryable, other 4xx client errors in OpenAI's shape.
    #[test]
    fn maps_errors() {
        let e = |s: u16, kind: &str| {
            let body = json!({"type": "error", "error": {"type": kind, "message": "m"}}).to_string();
            map_error(StatusCode::from_u16(s).unwrap(), None, body.as_bytes())
        };
        assert_eq!(e(529, "overloaded_error").class, Class::ServerError);
        assert_eq!(e(429, "rate_limit_error").class, Class::RateLimited);
        assert_eq!(e(500, "api_error").class, Class::ServerError);
        let f = e(400, "invalid_request_error");
        assert_eq!(f.class, Class::ClientError);
        let body: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "m");
        assert_eq!(e(401, "authentication_error").class, Class::ClientError);
        let long = |m: &str| {
            let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": m}});
            map_error(StatusCode::BAD_REQUEST, None, body.to_string().as_bytes()).class
        };
        assert_eq!(
            long("prompt is too long: 210000 tokens > 200000 maximum"),
            Class::ContextLength
        );
        assert_eq!(
            long(
                "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000, decrease input length or `max_tokens` and try again"
            ),
            Class::ContextLength
        );
        assert_eq!(long("messages: roles must alternate"), Class::ClientError);
        assert_eq!(e(404, "not_found_error").class, Class::ClientError);
    }

    /// `parallel_tool_calls: false` and a named `tool_choice` map to one tool_choice object.
    #[test]
    fn tool_choice_and_parallel() {
        let body = json!({"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": false,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}});
        let c = chat::read(NAME, body.as_object().unwrap()).unwrap();
        let v = to_request(&c, "m", false);
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            v["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }

    fn run(events: &[Value]) -> (Vec<Event>, Option<Failure>) {
        let mut t = Translator::default();
        let mut out = VecDeque::new();
        for e in events {
            if let Err(f) = t.event(e.clone(), &mut out) {
                return (out.into_iter().collect(), Some(f));
            }
        }
        (out.into_iter().collect(), None)
    }

    /// Nothing is sent for `message_start` alone (the proxy has not committed), a text block
    /// that starts with text sends the role chunk first, and an empty answer still ends with
    /// the role chunk, a finish reason and `[DONE]`.
    #[test]
    fn role_chunk_waits_for_content() {
        let start = json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}});
        let (out, _) = run(&[start.clone(), json!({"type": "ping"})]);
        assert!(out.is_empty());
        let (out, _) = run(&[
            start.clone(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hi"}}),
        ]);
        assert_eq!(out.len(), 2);
        let Event::Data(first) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let (out, _) = run(&[
            start,
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 0}}),
            json!({"type": "message_stop"}),
        ]);
        assert_eq!(out.len(), 3);
        let Event::Data(fin) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        assert_eq!(out[2], Event::Done);
    }

    /// A mid-stream error event is classified by its type: rate limits are 429s.
    #[test]
    fn stream_error_events_are_classified() {
        let e = |kind: &str| {
            run(&[json!({"type": "error", "error": {"type": kind, "message": "x"}})])
                .1
                .unwrap()
                .class
        };
        assert_eq!(e("rate_limit_error"), Class::RateLimited);
        assert_eq!(e("overloaded_error"), Class::ServerError);
        assert_eq!(e("api_error"), Class::ServerError);
    }
}
