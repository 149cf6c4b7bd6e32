//! `bedrock`: OpenAI chat requests translated to Amazon Bedrock's Converse API and back.
//!
//! `POST https://bedrock-runtime.{region}.amazonaws.com/model/{modelId}/converse` (or
//! `…/converse-stream`; the target's `endpoint` replaces the base), signed with SigV4
//! (service `bedrock`, the target's region) by the `aws-sigv4` crate with credentials from
//! [`credentials`]. Requests go through [`chat::read`] and are written here in Converse's
//! shapes; responses become a `chat.completion`; ConverseStream's event-stream messages
//! ([`eventstream`]) become `chat.completion.chunk` events and `[DONE]` through
//! [`Translator`]. Errors, as a status with `x-amzn-errortype` or as an exception message in
//! the stream, go through the one mapper [`classify`]. Wire types stay private here.

mod credentials;
pub mod eventstream;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, StatusCode, header};
use serde_json::{Map, Value, json};

use super::assemble;
use super::chat::{self, Chat, Image, Part, Role, ToolChoice};
use super::upstream::{self, Translate};
use super::{Adapter, Call, Event, Failure, HttpClient, OpenAiJson, Reply, UpstreamMeta};
use crate::class::Class;

const NAME: &str = "bedrock";
/// The SigV4 service name of the Bedrock runtime.
const SERVICE: &str = "bedrock";
/// The region used when the target sets none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// What stays as it is in a percent-encoded path segment: RFC 3986's unreserved characters
/// (SigV4's escaping); everything else is `%XX`.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A Bedrock model in one region.
#[derive(Debug)]
pub struct Bedrock {
    base: String,
    region: String,
    credentials: credentials::AwsSource,
    client: HttpClient,
}

impl Bedrock {
    pub fn new(t: &detour_api::table::Target, client: HttpClient) -> Self {
        let region = t.region.clone().unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let base = t.endpoint.as_deref().map_or_else(
            || format!("https://bedrock-runtime.{region}.amazonaws.com"),
            |e| e.trim_end_matches('/').to_owned(),
        );
        Self {
            base,
            credentials: credentials::AwsSource::from_config(t.credentials.as_ref(), &region),
            region,
            client,
        }
    }
}

/// Percent-encodes a model id for the path (`:` and `/` of versioned ids and ARNs included),
/// as the AWS SDKs do.
fn path_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The one error mapper: an AWS error type (from `x-amzn-errortype`, the body's `__type`, or
/// a stream's `:exception-type`) and status to a class, with the body in OpenAI's shape.
fn classify(status: StatusCode, error_type: &str, message: &str, retry_after: Option<Duration>) -> Failure {
    // `ThrottlingException:http://internal.amazon.com/...` or `com.amazon...#ThrottlingException`.
    let kind = error_type.split(':').next().unwrap_or("");
    let kind = kind.rsplit('#').next().unwrap_or(kind);
    let class = match kind.to_ascii_lowercase().as_str() {
        "throttlingexception" | "servicequotaexceededexception" | "toomanyrequestsexception" => {
            Class::RateLimited
        }
        "serviceunavailableexception"
        | "modelnotreadyexception"
        | "internalserverexception"
        | "modelerrorexception"
        | "modelstreamerrorexception" => Class::ServerError,
        "modeltimeoutexception" => Class::Timeout,
        "validationexception" if is_context_length(message) => Class::ContextLength,
        "validationexception" | "accessdeniedexception" | "resourcenotfoundexception" => Class::ClientError,
        _ => match status.as_u16() {
            429 => Class::RateLimited,
            408 => Class::Timeout,
            500..=599 => Class::ServerError,
            400..=499 => Class::ClientError,
            _ => Class::BadResponse,
        },
    };
    let openai_type = match class {
        Class::RateLimited => "rate_limit_error",
        Class::ClientError if kind.eq_ignore_ascii_case("AccessDeniedException") => "permission_error",
        Class::ClientError if kind.eq_ignore_ascii_case("ResourceNotFoundException") => "not_found_error",
        Class::ClientError | Class::ContextLength => "invalid_request_error",
        _ => "server_error",
    };
    upstream::translated_failure("bedrock", class, status, retry_after, message, openai_type, kind)
}

/// Bedrock's wordings of an input over the model's context window, in a `ValidationException`:
/// "Input is too long for requested model.", "too many input tokens", and the model's own
/// message passed through ("prompt is too long: …", "maximum context length is …").
fn is_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("input is too long")
        || m.contains("prompt is too long")
        || m.contains("too many input tokens")
        || m.contains("maximum context length")
        || (m.contains("input length") && m.contains("exceed"))
}

fn map_error(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Failure {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let header_type = headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok());
    let body_type = parsed
        .as_ref()
        .and_then(|v| v.get("__type"))
        .and_then(Value::as_str);
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(Value::as_str)
        .unwrap_or("the upstream rejected the request");
    classify(
        status,
        header_type.or(body_type).unwrap_or(""),
        message,
        upstream::retry_after(headers),
    )
}

/// The status an exception would have had as a response, for the same classes.
fn exception_status(kind: &str) -> StatusCode {
    match kind.to_ascii_lowercase().as_str() {
        "throttlingexception" => StatusCode::TOO_MANY_REQUESTS,
        "validationexception" => StatusCode::BAD_REQUEST,
        "serviceunavailableexception" => StatusCode::SERVICE_UNAVAILABLE,
        "modeltimeoutexception" => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

/// The OpenAI request as a Converse body (the model id is in the path).
pub(crate) fn to_request(c: &Chat) -> Result<Value, Failure> {
    let mut messages = Vec::with_capacity(c.turns.len());
    let mut has_tool_parts = false;
    for (i, t) in c.turns.iter().enumerate() {
        let mut content = Vec::with_capacity(t.parts.len());
        for p in &t.parts {
            content.push(match p {
                Part::Text(text) => json!({"text": text}),
                Part::Image(Image::Data { media_type, base64 }) => {
                    let format = image_format(media_type).ok_or_else(|| {
                        upstream::unsupported(
                            NAME,
                            "messages[].content[].image_url.url",
                            &format!("image type {media_type:?} is not supported (png, jpeg, gif, webp)"),
                        )
                    })?;
                    json!({"image": {"format": format, "source": {"bytes": base64}}})
                }
                Part::Image(Image::Url(_)) => {
                    return Err(upstream::unsupported(
                        NAME,
                        "messages[].content[].image_url.url",
                        "only inline images (data: URLs) are supported",
                    ));
                }
                Part::ToolCall { id, name, input } => {
                    has_tool_parts = true;
                    json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
                }
                Part::ToolResult { id, text } => {
                    has_tool_parts = true;
                    json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}})
                }
            });
        }
        if i == 0 && t.role != Role::User {
            return Err(upstream::unsupported(
                NAME,
                "messages",
                "the first non-system message must be from the user",
            ));
        }
        messages.push(json!({
            "role": if t.role == Role::User { "user" } else { "assistant" },
            "content": content,
        }));
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    let system = c.system_with_format();
    if !system.is_empty() {
        let blocks: Vec<Value> = system.iter().map(|s| json!({"text": s})).collect();
        out.insert("system".into(), Value::Array(blocks));
    }
    let mut inference = Map::new();
    inference.insert("maxTokens".into(), json!(c.max_tokens));
    if let Some(t) = c.temperature {
        // OpenAI's range is 0..2, Converse's 0..1.
        inference.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = c.top_p {
        inference.insert("topP".into(), json!(p));
    }
    if !c.stop.is_empty() {
        inference.insert("stopSequences".into(), json!(c.stop));
    }
    out.insert("inferenceConfig".into(), Value::Object(inference));
    // Converse has no "none": the tools are withheld instead, unless the history holds tool
    // blocks, which Converse accepts only with a toolConfig.
    let withhold = c.tool_choice == Some(ToolChoice::None) && !has_tool_parts;
    if !c.tools.is_empty() && !withhold {
        let tools: Vec<Value> = c
            .tools
            .iter()
            .map(|t| {
                let mut spec = json!({"name": t.name, "inputSchema": {"json": t.parameters}});
                if let (Some(d), Some(o)) = (&t.description, spec.as_object_mut()) {
                    o.insert("description".into(), json!(d));
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut config = json!({"tools": tools});
        let choice = match &c.tool_choice {
            Some(ToolChoice::Auto) => Some(json!({"auto": {}})),
            Some(ToolChoice::Required) => Some(json!({"any": {}})),
            Some(ToolChoice::Named(n)) => Some(json!({"tool": {"name": n}})),
            Some(ToolChoice::None) | None => None,
        };
        if let (Some(choice), Some(o)) = (choice, config.as_object_mut()) {
            o.insert("toolChoice".into(), choice);
        }
        out.insert("toolConfig".into(), config);
    }
    Ok(Value::Object(out))
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

fn tokens(usage: Option<&Value>, field: &str) -> u64 {
    usage
        .and_then(|u| u.get(field))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A Converse response as a `chat.completion`. Converse returns no id and no model: the id is
/// the request id AWS assigned, the model the target's. Written as an assembled stream of the
/// same message would be ([`assemble::completion`]): the same bytes either way.
pub(crate) fn from_response(v: &Value, id: &str, model: &str, created: u64) -> Result<OpenAiJson, Failure> {
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::new(Class::BadResponse, "bedrock response has no output message"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(u) = b.get("toolUse") {
            tool_calls.push(assemble::ToolCall {
                id: u
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                kind: "function".to_owned(),
                function: assemble::Function {
                    name: u.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
                    arguments: u.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            });
        }
    }
    let usage = v.get("usage");
    Ok(assemble::completion(
        &Value::from(format!("chatcmpl-{id}")),
        created,
        &Value::from(model),
        text,
        tool_calls,
        finish_reason(v.get("stopReason").and_then(Value::as_str)),
        &assemble::usage(tokens(usage, "inputTokens"), tokens(usage, "outputTokens")),
    ))
}

/// The stream translator: ConverseStream events in (`{"type": <:event-type>, ...payload}`),
/// OpenAI chunks out. `metadata` (usage) follows `messageStop`, so the stream ends there, or
/// at the end of the body if the service sent no metadata.
#[derive(Debug, Default)]
struct Translator {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Content-block index → OpenAI tool-call index.
    tools: HashMap<u64, u64>,
    started: bool,
    stopped: bool,
    done: bool,
}

impl Translator {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        Event::Data(assemble::chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
        ))
    }

    /// The role chunk, sent with the first content rather than at `messageStart`: the proxy
    /// commits on the first chunk, so an exception right after `messageStart` still fails
    /// over.
    fn start(&mut self, out: &mut VecDeque<Event>) {
        if !self.started {
            self.started = true;
            out.push_back(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }
}

impl Translate for Translator {
    fn event(&mut self, v: Value, out: &mut VecDeque<Event>) -> Result<(), Failure> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            // The role chunk waits for the first content (see `start`).
            "messageStart" => {}
            "contentBlockStart" => {
                self.start(out);
                if let Some(u) = v.pointer("/start/toolUse") {
                    let index = v.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
                    let n = u64::try_from(self.tools.len()).unwrap_or(u64::MAX);
                    self.tools.insert(index, n);
                    out.push_back(self.chunk(
                        json!({"tool_calls": [{"index": n, "id": u.get("toolUseId"), "type": "function",
                            "function": {"name": u.get("name"), "arguments": ""}}]}),
                        None,
                    ));
                }
            }
            "contentBlockDelta" => {
                self.start(out);
                let index = v.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
                if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                    out.push_back(self.chunk(json!({"content": t}), None));
                } else if let Some(p) = v.pointer("/delta/toolUse/input").and_then(Value::as_str) {
                    let n = self.tools.get(&index).copied().unwrap_or(0);
                    out.push_back(self.chunk(
                        json!({"tool_calls": [{"index": n, "function": {"arguments": p}}]}),
                        None,
                    ));
                }
            }
            "messageStop" => {
                self.start(out);
                self.stopped = true;
                let reason = finish_reason(v.get("stopReason").and_then(Value::as_str));
                out.push_back(self.chunk(json!({}), Some(reason)));
            }
            "metadata" => {
                if self.include_usage {
                    let usage = v.get("usage");
                    out.push_back(Event::Data(assemble::usage_chunk(
                        &self.id,
                        self.created,
                        &self.model,
                        tokens(usage, "inputTokens"),
                        tokens(usage, "outputTokens"),
                    )));
                }
                if self.stopped {
                    out.push_back(Event::Done);
                    self.done = true;
                }
            }
            // contentBlockStop, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn end(&mut self, out: &mut VecDeque<Event>) -> Result<(), Failure> {
        if self.stopped {
            out.push_back(Event::Done);
            Ok(())
        } else {
            Err(Failure::new(
                Class::Reset,
                "upstream stream ended before the end of the message",
            ))
        }
    }
}

/// An event-stream message as the translator's input, or the failure an exception is.
fn message_value(m: &eventstream::Message) -> Result<Value, Failure> {
    match m.header(":message-type") {
        Some("event") => {
            let kind = m.header(":event-type").unwrap_or("");
            let mut v = serde_json::from_slice::<Value>(&m.payload)
                .map_err(|_| Failure::new(Class::BadResponse, "bedrock event payload is not JSON"))?;
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), json!(kind));
            }
            Ok(v)
        }
        Some("exception") => {
            let kind = m.header(":exception-type").unwrap_or("");
            let message = serde_json::from_slice::<Value>(&m.payload)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            Err(classify(exception_status(kind), kind, &message, None))
        }
        _ => {
            let code = m.header(":error-code").unwrap_or("");
            Err(classify(
                StatusCode::INTERNAL_SERVER_ERROR,
                code,
                "bedrock stream error",
                None,
            ))
        }
    }
}

/// Signs `req` (whose body is `body`) with SigV4 for `service` in `region`.
fn sign_request(
    req: &mut Request<Bytes>,
    body: &[u8],
    creds: &aws_credential_types::Credentials,
    region: &str,
    time: SystemTime,
) -> Result<(), Failure> {
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| Failure::new(Class::ConnectError, "SigV4 signing parameters incomplete"))?
        .into();
    let uri = req.uri().to_string();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let signable = SignableRequest::new(
        req.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| Failure::new(Class::ConnectError, "request could not be prepared for SigV4"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|_| Failure::new(Class::ConnectError, "SigV4 signing failed"))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    for name in [header::AUTHORIZATION.as_str(), "x-amz-security-token"] {
        if let Some(v) = req.headers_mut().get_mut(name) {
            v.set_sensitive(true);
        }
    }
    Ok(())
}

impl Adapter for Bedrock {
    async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        upstream::chat_only(NAME, call)?;
        let chat = chat::read(NAME, call.body()?)?;
        let body = Bytes::from(to_request(&chat)?.to_string());
        // Fetching credentials counts against the attempt's deadline like the call itself.
        // Boxed: the credential chain's future (cache lock, first build) is large and mostly
        // not needed (a cached answer); it would otherwise size every request in flight.
        let deadline = call.headers_deadline();
        let keys = match Box::pin(tokio::time::timeout_at(deadline, self.credentials.current())).await {
            Err(_) => {
                return Err(Failure::new(
                    Class::Credentials,
                    "AWS credentials were not had in time (the credential chain or STS did not answer)",
                ));
            }
            Ok(r) => r.map_err(|e| Failure::new(Class::Credentials, e.to_string()))?,
        };
        let uri = format!(
            "{}/model/{}/{}",
            self.base,
            path_escape(call.model),
            if call.stream {
                "converse-stream"
            } else {
                "converse"
            }
        );
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::ACCEPT,
                if call.stream {
                    "application/vnd.amazon.eventstream"
                } else {
                    "application/json"
                },
            )
            .body(body.clone())
            .map_err(|_| Failure::new(Class::ConnectError, "endpoint is not a valid URL"))?;
        // Host is signed, so it is set here rather than left to the client.
        let host = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
            .ok_or_else(|| Failure::new(Class::ConnectError, "endpoint has no host"))?;
        req.headers_mut().insert(header::HOST, host);
        sign_request(&mut req, &body, &keys, &self.region, SystemTime::now())?;
        req.headers_mut()
            .insert(header::USER_AGENT, HeaderValue::from_static(upstream::USER_AGENT));
        let resp = upstream::send(&self.client, call, req).await?;
        let status = resp.status();
        let meta = UpstreamMeta::from_headers(resp.headers());
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = upstream::collect(resp.into_body(), call.deadline, upstream::MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            let mut f = map_error(status, &headers, &body);
            f.meta = meta;
            return Err(f);
        }
        let request_id = resp
            .headers()
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("bedrock")
            .to_owned();
        if call.stream {
            if !upstream::content_type_is(&resp, "application/vnd.amazon.eventstream") {
                return Err(Failure::new(
                    Class::BadResponse,
                    "bedrock did not answer a stream with an event stream",
                )
                .status(status));
            }
            let events = eventstream::messages(resp.into_body()).map(|m| m.and_then(|m| message_value(&m)));
            let translator = Translator {
                id: format!("chatcmpl-{request_id}"),
                model: call.model.to_owned(),
                created: assemble::now_unix(),
                include_usage: call.include_usage()?,
                ..Translator::default()
            };
            return Ok(Reply::stream(upstream::translated(events, translator)).meta(meta));
        }
        let v = upstream::json_body(resp, call).await?;
        from_response(&v, &request_id, call.model, assemble::now_unix()).map(|a| Reply::json(a).meta(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exceptions by name map to the classes the policy acts on.
    #[test]
    fn maps_exceptions() {
        let c = |s: u16, t: &str| classify(StatusCode::from_u16(s).unwrap(), t, "m", None).class;
        assert_eq!(
            c(429, "ThrottlingException:http://internal.amazon.com/coral/x"),
            Class::RateLimited
        );
        assert_eq!(c(503, "ServiceUnavailableException"), Class::ServerError);
        assert_eq!(c(429, "ModelNotReadyException"), Class::ServerError);
        assert_eq!(c(500, "InternalServerException"), Class::ServerError);
        assert_eq!(c(400, "ValidationException"), Class::ClientError);
        assert_eq!(c(403, "AccessDeniedException"), Class::ClientError);
        assert_eq!(
            c(404, "com.amazon.coral#ResourceNotFoundException"),
            Class::ClientError
        );
        assert_eq!(c(400, "throttlingException"), Class::RateLimited);
        let v = |m: &str| classify(StatusCode::BAD_REQUEST, "ValidationException", m, None).class;
        assert_eq!(v("Input is too long for requested model."), Class::ContextLength);
        assert_eq!(
            v("The model returned the following errors: prompt is too long: 250000 tokens > 200000 maximum"),
            Class::ContextLength
        );
        assert_eq!(v("too many input tokens"), Class::ContextLength);
        assert_eq!(
            v("Malformed input request: extraneous key [x]"),
            Class::ClientError
        );
    }

    /// Model ids with `:` (versions) and ARNs are escaped as one path segment.
    #[test]
    fn escapes_model_ids() {
        assert_eq!(
            path_escape("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1%3A0"
        );
        assert_eq!(path_escape("arn:aws:x/y"), "arn%3Aaws%3Ax%2Fy");
    }

    fn run(events: &[Value]) -> Vec<Event> {
        let mut t = Translator {
            include_usage: true,
            ..Translator::default()
        };
        let mut out = VecDeque::new();
        for e in events {
            t.event(e.clone(), &mut out).unwrap();
        }
        if !t.finished() {
            t.end(&mut out).unwrap();
        }
        out.into_iter().collect()
    }

    /// `messageStart` alone sends nothing; the usage chunk comes from `metadata` after
    /// `messageStop`; a body that ends after `messageStop` without metadata still ends cleanly.
    #[test]
    fn translator_orders_finish_usage_done() {
        let out = run(&[
            json!({"type": "messageStart", "role": "assistant"}),
            json!({"type": "contentBlockDelta", "contentBlockIndex": 0, "delta": {"text": "hi"}}),
            json!({"type": "messageStop", "stopReason": "max_tokens"}),
            json!({"type": "metadata", "usage": {"inputTokens": 2, "outputTokens": 1}}),
        ]);
        assert_eq!(out.len(), 5, "{out:?}");
        let Event::Data(fin) = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        let Event::Data(usage) = &out[3] else {
            panic!("{out:?}")
        };
        assert_eq!(usage["usage"]["total_tokens"], 3);
        assert_eq!(out[4], Event::Done);
        let out = run(&[json!({"type": "messageStop", "stopReason": "end_turn"})]);
        assert_eq!(out.last(), Some(&Event::Done));
    }

    /// An exception message is the failure its type names; a body ending mid-message is a
    /// broken stream.
    #[test]
    fn exceptions_and_truncation() {
        let m = eventstream::Message {
            headers: [
                (":message-type".to_owned(), "exception".to_owned()),
                (
                    ":exception-type".to_owned(),
                    "modelStreamErrorException".to_owned(),
                ),
            ]
            .into(),
            payload: Bytes::from_static(br#"{"message":"boom"}"#),
        };
        assert_eq!(message_value(&m).unwrap_err().class, Class::ServerError);
        let mut t = Translator::default();
        let mut out = VecDeque::new();
        t.event(json!({"type": "messageStart"}), &mut out).unwrap();
        assert_eq!(t.end(&mut out).unwrap_err().class, Class::Reset);
    }
}
