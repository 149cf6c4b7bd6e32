//! The fake of every translated provider's wire format — `openai`, `azure-openai`,
//! `anthropic`, `bedrock`, and `vertex` with Gemini and with Claude — plus an STS for web
//! identity, on one port. Stub `s` of kind `k` lives at `/<s>/<k>/...` (see
//! [`Fake::endpoint`]), cycles through its script of [`Step`]s, and checks every request's
//! shape strictly: headers, path, top-level fields, turn alternation, content blocks, and for
//! Bedrock the SigV4 signature, recomputed with `aws-sigv4` over the headers it says it
//! signed. What is wrong is recorded as a violation; [`Fake::assert_clean`] fails the test on
//! any.

#![expect(
    clippy::unwrap_used,
    reason = "a test fake: a request it cannot read is a failed test"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::server::{Body, Loopback};
use crate::wire;

/// The providers the fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    OpenAi,
    Azure,
    Anthropic,
    Bedrock,
    /// `vertex`, publisher `google`: Vertex's OpenAI-compatible chat completions.
    VertexGemini,
    /// `vertex`, publisher `anthropic`: Claude at rawPredict / streamRawPredict.
    VertexClaude,
}

impl Kind {
    pub const fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Azure => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::Bedrock => "bedrock",
            Self::VertexGemini | Self::VertexClaude => "vertex",
        }
    }

    pub const fn slug(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Bedrock => "bedrock",
            Self::VertexGemini => "vertex-gemini",
            Self::VertexClaude => "vertex-claude",
        }
    }

    /// The upstream model (Bedrock's carries the `:` that must be escaped in the path).
    pub const fn model(self) -> &'static str {
        match self {
            Self::OpenAi => "gpt-up",
            Self::Azure => "my-deployment",
            Self::Anthropic => "claude-up",
            Self::Bedrock => "anthropic.claude-3-haiku-20240307-v1:0",
            Self::VertexGemini => "google/gemini-up",
            Self::VertexClaude => "claude-up@20250101",
        }
    }

    /// The model the fake reports as having served (Bedrock reports none: the target's).
    pub const fn reported(self) -> &'static str {
        match self {
            Self::Anthropic | Self::VertexClaude => "claude-up-20250101",
            k => k.model(),
        }
    }
}

pub const API_KEY: &str = "sk-test-key-do-not-leak";
pub const AKID: &str = "AKIDTESTEXAMPLE";
pub const SECRET: &str = "secret/test+key-do-not-leak";
pub const REGION: &str = "us-west-2";
/// The Google access token the Vertex targets' token file holds (a refresher's file).
pub const GOOGLE_TOKEN: &str = "ya29.vertex-test-token-do-not-leak";
pub const GOOGLE_PROJECT: &str = "test-project";
pub const GOOGLE_REGION: &str = "us-central1";

/// One scripted answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Ok,
    /// 529 `overloaded_error` / 503 `ServiceUnavailableException` / 503.
    Overloaded,
    /// 429 with `Retry-After: 7` (`rate_limit_error` / `ThrottlingException`).
    Throttled,
    /// 400 `invalid_request_error` / `ValidationException`.
    Invalid,
    /// A stream that opens (`message_start` / `messageStart`) and then errors before any
    /// content (Bedrock: a `throttlingException` message).
    StreamErrorFirst,
    /// A stream that breaks after a few events.
    StreamBreak,
}

#[derive(Debug, Default)]
struct Stub {
    script: Vec<Step>,
    hits: usize,
    bodies: Vec<Value>,
    headers: Vec<HeaderMap>,
    uris: Vec<String>,
}

#[derive(Debug, Default)]
struct FakeState {
    stubs: HashMap<String, Stub>,
    /// Request-shape violations; every test asserts there are none.
    violations: Vec<String>,
    /// Credentials the Bedrock fake expects: (key id, secret, session token).
    aws: Option<(String, String, Option<String>)>,
    sts_hits: usize,
}

type Shared = Arc<Mutex<FakeState>>;

fn lock(state: &Shared) -> MutexGuard<'_, FakeState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake of every provider's wire format.
#[derive(Debug)]
pub struct Fake {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Shared,
    server: Loopback,
}

fn full(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    wire::full(status, content_type, body)
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
    wire::json(status, v)
}

/// A paced streaming body; `broken` ends it with a connection error instead of its end.
fn streamed(content_type: &'static str, frames: Vec<Bytes>, broken: bool) -> Response<Body> {
    let mut items: Vec<(u64, wire::Item)> = frames.into_iter().map(|b| (3, wire::frame(b))).collect();
    if broken {
        items.push((3, wire::broken("scripted stream break")));
    }
    wire::streamed(content_type, items)
}

/// One Bedrock event-stream message, encoded by the AWS SDK's crate (not the sidecar's code).
fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let message = Message::new_from_parts(
        headers
            .iter()
            .map(|(name, value)| Header::new(name.to_string(), HeaderValue::String(value.to_string().into())))
            .collect(),
        Bytes::copy_from_slice(payload),
    );
    let mut out = Vec::new();
    write_message_to(&message, &mut out).unwrap();
    out
}

fn violation(state: &Shared, what: String) {
    lock(state).violations.push(what);
}

fn check_keys(state: &Shared, who: &str, body: &Value, allowed: &[&str]) {
    if let Some(o) = body.as_object() {
        for k in o.keys() {
            if !allowed.contains(&k.as_str()) {
                violation(state, format!("{who}: unexpected top-level field {k:?}"));
            }
        }
    } else {
        violation(state, format!("{who}: body is not a JSON object"));
    }
}

fn check_alternation(state: &Shared, who: &str, messages: &[Value]) {
    let mut last = "";
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if i == 0 && role != "user" {
            violation(state, format!("{who}: first message is {role:?}, not user"));
        }
        if role == last {
            violation(state, format!("{who}: two {role:?} turns in a row at {i}"));
        }
        if role != "user" && role != "assistant" {
            violation(state, format!("{who}: role {role:?} at {i}"));
        }
        if !m["content"].is_array() {
            violation(
                state,
                format!("{who}: content of message {i} is not an array of blocks"),
            );
        }
        last = role;
    }
    // As Anthropic's API (and Bedrock's for Claude): a final assistant turn must not end in
    // whitespace.
    if messages.last().and_then(|m| m["role"].as_str()) == Some("assistant")
        && let Some(p) = messages.last().and_then(|m| prefill(&json!({"messages": [m]})))
        && p.ends_with(char::is_whitespace)
    {
        violation(
            state,
            format!("{who}: final assistant content ends with whitespace"),
        );
    }
}

/// Whether the request asked for tools (the fake then answers with a tool call).
fn wants_tools(kind: Kind, body: &Value) -> bool {
    match kind {
        Kind::Bedrock => body.get("toolConfig").is_some(),
        _ => body.get("tools").is_some(),
    }
}

// --- Anthropic wire format ---

/// The top-level fields of a Messages request besides the model's name (Anthropic's `model`,
/// Vertex's `anthropic_version`).
const ANTHROPIC_FIELDS: &[&str] = &[
    "max_tokens",
    "system",
    "messages",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
    "stream",
];

fn anthropic_check(state: &Shared, headers: &HeaderMap, body: &Value) {
    let who = "anthropic";
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        violation(state, format!("{who}: x-api-key missing or wrong"));
    }
    if headers.get("anthropic-version").and_then(|v| v.to_str().ok()) != Some("2023-06-01") {
        violation(state, format!("{who}: anthropic-version missing or wrong"));
    }
    if headers.contains_key("authorization") {
        violation(state, format!("{who}: an Authorization header was forwarded"));
    }
    check_keys(state, who, body, &[&["model"][..], ANTHROPIC_FIELDS].concat());
    if !body["max_tokens"].is_u64() {
        violation(state, format!("{who}: max_tokens missing"));
    }
    if !body["model"].is_string() {
        violation(state, format!("{who}: model missing"));
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    check_alternation(state, who, &messages);
    for m in &messages {
        for b in m["content"].as_array().into_iter().flatten() {
            let t = b["type"].as_str().unwrap_or("");
            if !["text", "image", "tool_use", "tool_result"].contains(&t) {
                violation(state, format!("{who}: content block type {t:?}"));
            }
            if t == "tool_use" && !b["input"].is_object() {
                violation(state, format!("{who}: tool_use input is not an object"));
            }
        }
    }
    for t in body["tools"].as_array().into_iter().flatten() {
        if !t["input_schema"].is_object() || !t["name"].is_string() {
            violation(state, format!("{who}: tool without name or input_schema"));
        }
    }
}

/// The text of a final assistant turn (a prefill), from Anthropic's or Bedrock's messages.
pub fn prefill(body: &Value) -> Option<String> {
    let last = body["messages"].as_array()?.last()?;
    if last["role"] != "assistant" {
        return None;
    }
    Some(
        last["content"]
            .as_array()?
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect(),
    )
}

/// The deltas of the fakes' streamed answer `full`: continued after a prefill that starts it,
/// as the real APIs do, else in two pieces.
fn deltas(full: &str, body: &Value) -> Vec<String> {
    match prefill(body) {
        Some(p) if full.starts_with(&p) => vec![full[p.len()..].to_owned()],
        _ => {
            let (a, b) = full.split_at(6);
            vec![a.to_owned(), b.to_owned()]
        }
    }
}

fn anthropic_sse(events: &[Value]) -> Vec<Bytes> {
    events
        .iter()
        .map(|e| Bytes::from(format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())))
        .collect()
}

fn anthropic_answer(step: Step, body: &Value) -> Response<Body> {
    let err = |status: u16, kind: &str| {
        json_resp(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": format!("scripted {kind}")}}),
        )
    };
    let tools = wants_tools(Kind::Anthropic, body);
    let stream = body["stream"] == json!(true);
    match step {
        Step::Overloaded => return err(529, "overloaded_error"),
        Step::Throttled => {
            let mut r = err(429, "rate_limit_error");
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            return r;
        }
        Step::Invalid => return err(400, "invalid_request_error"),
        _ => {}
    }
    if !stream {
        let content = if tools {
            json!([{"type": "text", "text": "Let me check."},
                   {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}])
        } else {
            json!([{"type": "text", "text": "hello from anthropic"}])
        };
        return json_resp(
            200,
            &json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-up-20250101",
                "content": content, "stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 3}}),
        );
    }
    let start = json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
        "model": "claude-up-20250101", "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 7, "output_tokens": 1}}});
    if step == Step::StreamErrorFirst {
        // As Anthropic does when overloaded mid-request: the stream opens, then errors.
        let e = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        return streamed(
            "text/event-stream",
            anthropic_sse(&[start, json!({"type": "ping"}), e]),
            false,
        );
    }
    let mut events = vec![
        start,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
    ];
    for text in deltas("hello from anthropic", body) {
        events.push(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        );
    }
    events.push(json!({"type": "content_block_stop", "index": 0}));
    if step == Step::StreamBreak {
        events.truncate(4);
        return streamed("text/event-stream", anthropic_sse(&events), true);
    }
    if tools {
        events.extend([
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
        ]);
    }
    events.extend([
        json!({"type": "message_delta", "delta": {"stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null}, "usage": {"output_tokens": 3}}),
        json!({"type": "message_stop"}),
    ]);
    streamed("text/event-stream", anthropic_sse(&events), false)
}

// --- Bedrock wire format ---

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// `20261126T063814Z` as a time.
fn amz_date(s: &str) -> SystemTime {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let secs =
        days_from_civil(n(0..4), n(4..6), n(6..8)) * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

/// Recomputes the SigV4 `Authorization` of a received request over the headers it says it
/// signed, with the credentials the fake expects; `Err` says what is wrong.
fn verify_sigv4(
    expected: &(String, String, Option<String>),
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("Authorization is not AWS4-HMAC-SHA256")?;
    let mut parts = HashMap::new();
    for p in rest.split(", ") {
        let (k, v) = p.split_once('=').ok_or("malformed Authorization")?;
        parts.insert(k, v);
    }
    let credential = parts.get("Credential").ok_or("no Credential")?;
    let date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no x-amz-date")?;
    let scope = format!("{}/{}/{REGION}/bedrock/aws4_request", expected.0, &date[..8]);
    if *credential != scope {
        return Err(format!("credential scope {credential} is not {scope}"));
    }
    let signed: Vec<&str> = parts
        .get("SignedHeaders")
        .ok_or("no SignedHeaders")?
        .split(';')
        .collect();
    for must in ["host", "x-amz-date", "content-type"] {
        if !signed.contains(&must) {
            return Err(format!("{must} is not signed"));
        }
    }
    match (&expected.2, headers.get("x-amz-security-token")) {
        (Some(t), Some(h)) if h.to_str().ok() == Some(t.as_str()) => {
            if !signed.contains(&"x-amz-security-token") {
                return Err("x-amz-security-token is not signed".into());
            }
        }
        (None, None) => {}
        _ => return Err("x-amz-security-token missing, unexpected or wrong".into()),
    }
    let creds = aws_credential_types::Credentials::new(
        expected.0.clone(),
        expected.1.clone(),
        expected.2.clone(),
        None,
        "fake",
    );
    let identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("bedrock")
        .time(amz_date(date))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signed_headers: Vec<(&str, &str)> = signed
        .iter()
        .filter(|h| **h != "x-amz-date" && **h != "x-amz-security-token")
        .map(|h| (*h, headers.get(*h).and_then(|v| v.to_str().ok()).unwrap_or("")))
        .collect();
    let req =
        SignableRequest::new(method, uri, signed_headers.into_iter(), SignableBody::Bytes(body)).unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let mut probe = Request::new(());
    instructions.apply_to_request_http1x(&mut probe);
    let want = probe
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if want == auth {
        Ok(())
    } else {
        Err("signature does not match".into())
    }
}

fn bedrock_check(state: &Shared, body: &Value) {
    let who = "bedrock";
    check_keys(
        state,
        who,
        body,
        &["messages", "system", "inferenceConfig", "toolConfig"],
    );
    if !body["inferenceConfig"]["maxTokens"].is_u64() {
        violation(state, format!("{who}: inferenceConfig.maxTokens missing"));
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    check_alternation(state, who, &messages);
    for m in &messages {
        for b in m["content"].as_array().into_iter().flatten() {
            let keys: Vec<&String> = b.as_object().map(|o| o.keys().collect()).unwrap_or_default();
            if keys.len() != 1 || !["text", "image", "toolUse", "toolResult"].contains(&keys[0].as_str()) {
                violation(state, format!("{who}: content block {b}"));
            }
        }
    }
    for t in body["toolConfig"]["tools"].as_array().into_iter().flatten() {
        if !t["toolSpec"]["inputSchema"]["json"].is_object() {
            violation(state, format!("{who}: toolSpec without inputSchema.json"));
        }
    }
}

fn bedrock_event(kind: &str, payload: &Value) -> Bytes {
    Bytes::from(encode(
        &[
            (":message-type", "event"),
            (":event-type", kind),
            (":content-type", "application/json"),
        ],
        payload.to_string().as_bytes(),
    ))
}

fn bedrock_answer(step: Step, body: &Value, stream: bool) -> Response<Body> {
    let err = |status: u16, kind: &str| {
        let mut r = json_resp(status, &json!({"message": format!("scripted {kind}")}));
        r.headers_mut().insert(
            "x-amzn-errortype",
            format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/")
                .parse()
                .unwrap(),
        );
        r
    };
    let tools = wants_tools(Kind::Bedrock, body);
    let mut resp = match step {
        Step::Overloaded => err(503, "ServiceUnavailableException"),
        Step::Throttled => {
            let mut r = err(429, "ThrottlingException");
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            r
        }
        Step::Invalid => err(400, "ValidationException"),
        _ if !stream => {
            let content = if tools {
                json!([{"text": "Let me check."},
                       {"toolUse": {"toolUseId": "tooluse_01", "name": "get_weather", "input": {"city": "Paris"}}}])
            } else {
                json!([{"text": "hello from bedrock"}])
            };
            json_resp(
                200,
                &json!({"output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": if tools { "tool_use" } else { "end_turn" },
                    "usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10},
                    "metrics": {"latencyMs": 12}}),
            )
        }
        Step::StreamErrorFirst => {
            let frame = encode(
                &[
                    (":message-type", "exception"),
                    (":exception-type", "throttlingException"),
                    (":content-type", "application/json"),
                ],
                br#"{"message":"Too many requests"}"#,
            );
            let start = bedrock_event("messageStart", &json!({"role": "assistant"}));
            streamed(
                "application/vnd.amazon.eventstream",
                vec![start, Bytes::from(frame)],
                false,
            )
        }
        _ => {
            let mut frames = vec![bedrock_event("messageStart", &json!({"role": "assistant"}))];
            for text in deltas("hello from bedrock", body) {
                frames.push(bedrock_event(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": text}}),
                ));
            }
            frames.push(bedrock_event(
                "contentBlockStop",
                &json!({"contentBlockIndex": 0}),
            ));
            if step == Step::StreamBreak {
                frames.truncate(2);
                return with_request_id(streamed("application/vnd.amazon.eventstream", frames, true));
            }
            if tools {
                frames.extend([
                    bedrock_event("contentBlockStart", &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_01", "name": "get_weather"}}})),
                    bedrock_event("contentBlockDelta", &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}})),
                    bedrock_event("contentBlockDelta", &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": " \"Paris\"}"}}})),
                    bedrock_event("contentBlockStop", &json!({"contentBlockIndex": 1})),
                ]);
            }
            frames.extend([
                bedrock_event("messageStop", &json!({"stopReason": if tools { "tool_use" } else { "end_turn" }})),
                bedrock_event("metadata", &json!({"usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10}, "metrics": {"latencyMs": 12}})),
            ]);
            streamed("application/vnd.amazon.eventstream", frames, false)
        }
    };
    resp.headers_mut()
        .insert("x-amzn-requestid", "req-0001".parse().unwrap());
    resp
}

fn with_request_id(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert("x-amzn-requestid", "req-0001".parse().unwrap());
    r
}

// --- Vertex AI wire formats ---

/// Gemini through the OpenAI-compatible endpoint: answers as OpenAI's, errors in Google's
/// shape (a one-element list, as Vertex sends them).
fn vertex_gemini_answer(step: Step, body: &Value) -> Response<Body> {
    let err = |status: u16, code: &str| {
        json_resp(
            status,
            &json!([{"error": {"code": status, "message": format!("scripted {code}"), "status": code}}]),
        )
    };
    match step {
        Step::Overloaded => err(503, "UNAVAILABLE"),
        Step::Throttled => {
            let mut r = err(429, "RESOURCE_EXHAUSTED");
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            r
        }
        Step::Invalid => err(400, "INVALID_ARGUMENT"),
        _ => openai_answer(step, body, "vertex"),
    }
}

/// Claude on Vertex: Anthropic's body without `model`, with Vertex's `anthropic_version`,
/// and no Anthropic key or version header.
fn vertex_claude_check(state: &Shared, headers: &HeaderMap, body: &Value) {
    let who = "vertex-claude";
    if headers.contains_key("anthropic-version") {
        violation(state, format!("{who}: an anthropic-version header was sent"));
    }
    if body["anthropic_version"] != json!("vertex-2023-10-16") {
        violation(
            state,
            format!("{who}: anthropic_version {}", body["anthropic_version"]),
        );
    }
    check_keys(
        state,
        who,
        body,
        &[&["anthropic_version"][..], ANTHROPIC_FIELDS].concat(),
    );
    if !body["max_tokens"].is_u64() {
        violation(state, format!("{who}: max_tokens missing"));
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    check_alternation(state, who, &messages);
}

// --- OpenAI / Azure wire format ---

fn openai_answer(step: Step, body: &Value, who: &str) -> Response<Body> {
    let err = |status: u16, kind: &str| {
        json_resp(
            status,
            &json!({"error": {"message": format!("scripted {kind}"), "type": kind, "param": null, "code": null}}),
        )
    };
    let tools = body.get("tools").is_some();
    let model = body["model"].as_str().unwrap_or("none").to_owned();
    match step {
        Step::Overloaded => return err(503, "server_error"),
        Step::Throttled => {
            let mut r = err(429, "rate_limit_error");
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            return r;
        }
        Step::Invalid => return err(400, "invalid_request_error"),
        _ => {}
    }
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": "chatcmpl-01", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        Bytes::from(format!("data: {v}\n\n"))
    };
    if body["stream"] == json!(true) {
        if step == Step::StreamErrorFirst {
            let e = json!({"error": {"message": "overloaded", "type": "server_error"}});
            return streamed(
                "text/event-stream",
                vec![Bytes::from(format!("data: {e}\n\n"))],
                false,
            );
        }
        let mut frames = vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "hello "}), Value::Null),
            chunk(json!({"content": format!("from {who}")}), Value::Null),
        ];
        if step == Step::StreamBreak {
            frames.truncate(2);
            return streamed("text/event-stream", frames, true);
        }
        if tools {
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_01", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ));
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Paris\"}"}}]}),
                Value::Null,
            ));
        }
        frames.push(chunk(json!({}), json!(if tools { "tool_calls" } else { "stop" })));
        if body["stream_options"]["include_usage"] == json!(true) {
            let v = json!({"id": "chatcmpl-01", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
            frames.push(Bytes::from(format!("data: {v}\n\n")));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        return streamed("text/event-stream", frames, false);
    }
    let mut message = json!({"role": "assistant", "content": format!("hello from {who}"), "refusal": null});
    if tools {
        message["content"] = json!("Let me check.");
        message["tool_calls"] = json!([{"id": "call_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
    }
    json_resp(
        200,
        &json!({"id": "chatcmpl-01", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": if tools { "tool_calls" } else { "stop" }}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}),
    )
}

// --- STS ---

fn sts_answer(state: &Shared, body: &str) -> Response<Body> {
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let ok = form.get("Action").map(String::as_str) == Some("AssumeRoleWithWebIdentity")
        && form.get("RoleArn").map(String::as_str) == Some("arn:aws:iam::123456789012:role/detour")
        && form.get("WebIdentityToken").map(String::as_str) == Some("projected.jwt.token");
    lock(state).sts_hits += 1;
    if !ok {
        return full(
            400,
            "text/xml",
            "<ErrorResponse><Error><Code>InvalidIdentityToken</Code></Error></ErrorResponse>",
        );
    }
    let expires = SystemTime::now() + Duration::from_secs(3600);
    let secs = expires.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let days = i64::try_from(secs / 86_400).unwrap();
    let rem = secs % 86_400;
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let exp = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    full(
        200,
        "text/xml",
        format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>ASIASTSTEMP</AccessKeyId><SecretAccessKey>sts/secret</SecretAccessKey>\
             <SessionToken>sts-session-token</SessionToken><Expiration>{exp}</Expiration>\
             </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        ),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let (head, raw) = wire::read(req).await;
    let method = head.method.as_str().to_owned();
    let path = head.uri.path().to_owned();
    let query = head.uri.query().unwrap_or("").to_owned();
    let headers = head.headers;
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let stub_name = segs.first().copied().unwrap_or("").to_owned();
    if stub_name == "sts" {
        return Ok(sts_answer(&state, &String::from_utf8_lossy(&raw)));
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let kind = match segs.get(1).copied() {
        Some("anthropic") => Kind::Anthropic,
        Some("bedrock") => Kind::Bedrock,
        Some("azure") => Kind::Azure,
        Some("vertex-gemini") => Kind::VertexGemini,
        Some("vertex-claude") => Kind::VertexClaude,
        _ => Kind::OpenAi,
    };
    let step = {
        let mut g = lock(&state);
        let stub = g.stubs.entry(stub_name.clone()).or_default();
        let step = if stub.script.is_empty() {
            Step::Ok
        } else {
            stub.script[stub.hits % stub.script.len()]
        };
        stub.hits += 1;
        stub.bodies.push(body.clone());
        stub.headers.push(headers.clone());
        stub.uris.push(format!("{path}?{query}"));
        step
    };
    let who = format!("{stub_name}/{}", kind.slug());
    // Paths: /<stub>/<kind>/... as the sidecar builds them from the target's endpoint.
    let rest = segs.get(2..).map(|s| s.join("/")).unwrap_or_default();
    if method != "POST" {
        violation(&state, format!("{who}: method {method}"));
    }
    let location = format!("v1/projects/{GOOGLE_PROJECT}/locations/{GOOGLE_REGION}");
    let google_auth = |state: &Shared| {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {GOOGLE_TOKEN}"))
            || headers.contains_key("x-api-key")
        {
            violation(state, format!("{who}: Google bearer token missing or wrong"));
        }
    };
    Ok(match kind {
        Kind::VertexGemini => {
            if rest != format!("{location}/endpoints/openapi/chat/completions") {
                violation(&state, format!("{who}: path {path}"));
            }
            google_auth(&state);
            if body["model"] != json!(Kind::VertexGemini.model()) {
                violation(&state, format!("{who}: model {}", body["model"]));
            }
            vertex_gemini_answer(step, &body)
        }
        Kind::VertexClaude => {
            let model = format!(
                "{location}/publishers/anthropic/models/{}",
                Kind::VertexClaude.model()
            );
            let stream = body["stream"] == json!(true);
            let want = format!(
                "{model}:{}",
                if stream { "streamRawPredict" } else { "rawPredict" }
            );
            if rest != want {
                violation(&state, format!("{who}: path {path}, expected .../{want}"));
            }
            google_auth(&state);
            vertex_claude_check(&state, &headers, &body);
            anthropic_answer(step, &body)
        }
        Kind::Anthropic => {
            if rest != "v1/messages" {
                violation(&state, format!("{who}: path {path}"));
            }
            anthropic_check(&state, &headers, &body);
            anthropic_answer(step, &body)
        }
        Kind::Bedrock => {
            let model = "anthropic.claude-3-haiku-20240307-v1%3A0";
            let stream = rest == format!("model/{model}/converse-stream");
            if !stream && rest != format!("model/{model}/converse") {
                violation(&state, format!("{who}: path {path}"));
            }
            bedrock_check(&state, &body);
            let expected = lock(&state).aws.clone().unwrap();
            let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
            if let Err(e) = verify_sigv4(
                &expected,
                &method,
                &format!("http://{host}{path}"),
                &headers,
                &raw,
            ) {
                violation(&state, format!("{who}: SigV4: {e}"));
                let mut r = json_resp(
                    403,
                    &json!({"message": "The request signature we calculated does not match"}),
                );
                r.headers_mut()
                    .insert("x-amzn-errortype", "InvalidSignatureException".parse().unwrap());
                return Ok(r);
            }
            bedrock_answer(step, &body, stream)
        }
        Kind::Azure => {
            let chat = format!("openai/deployments/{}/chat/completions", Kind::Azure.model());
            let embeddings = format!("openai/deployments/{}/embeddings", Kind::Azure.model());
            if rest == embeddings {
                return Ok(json_resp(
                    200,
                    &json!({"object": "list", "data": [], "model": "x"}),
                ));
            }
            if rest != chat {
                violation(&state, format!("{who}: path {path}"));
            }
            if query != "api-version=2024-10-21" {
                violation(&state, format!("{who}: query {query}"));
            }
            if headers.get("api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY)
                || headers.contains_key("authorization")
            {
                violation(&state, format!("{who}: api-key missing or Authorization present"));
            }
            openai_answer(step, &body, "azure-openai")
        }
        Kind::OpenAi => {
            if rest == "v1/embeddings" {
                return Ok(json_resp(
                    200,
                    &json!({"object": "list", "data": [], "model": "x"}),
                ));
            }
            if headers.get("authorization").and_then(|v| v.to_str().ok())
                != Some(&format!("Bearer {API_KEY}"))
            {
                violation(&state, format!("{who}: Authorization missing or wrong"));
            }
            openai_answer(step, &body, &stub_name)
        }
    })
}

impl Fake {
    /// Starts the fake on a free loopback port, expecting the default AWS credentials.
    pub async fn start() -> Self {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            aws: Some((AKID.to_owned(), SECRET.to_owned(), None)),
            ..FakeState::default()
        }));
        let s = state.clone();
        let server = Loopback::start(move |req| handle(s.clone(), req)).await;
        Self {
            addr: server.addr,
            state,
            server,
        }
    }

    /// The endpoint of stub `stub` speaking `kind`.
    pub fn endpoint(&self, stub: &str, kind: Kind) -> String {
        match kind {
            Kind::OpenAi => format!("http://{}/{stub}/openai/v1", self.addr),
            k => format!("http://{}/{stub}/{}", self.addr, k.slug()),
        }
    }

    /// Sets a stub's script (cycled) and resets what it recorded.
    pub fn script(&self, stub: &str, steps: Vec<Step>) {
        lock(&self.state).stubs.insert(
            stub.to_owned(),
            Stub {
                script: steps,
                ..Stub::default()
            },
        );
    }

    /// The AWS credentials the Bedrock fake checks signatures with: key id, secret, session
    /// token.
    pub fn expect_aws(&self, key_id: &str, secret: &str, session_token: Option<&str>) {
        lock(&self.state).aws = Some((
            key_id.to_owned(),
            secret.to_owned(),
            session_token.map(str::to_owned),
        ));
    }

    /// Requests the stub got since its script was set.
    pub fn hits(&self, stub: &str) -> usize {
        lock(&self.state).stubs.get(stub).map_or(0, |s| s.hits)
    }

    /// Requests the fake STS got.
    pub fn sts_hits(&self) -> usize {
        lock(&self.state).sts_hits
    }

    /// Connections the fake has accepted.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// The stub's last request body (`null` when none or not JSON).
    pub fn last_body(&self, stub: &str) -> Value {
        lock(&self.state)
            .stubs
            .get(stub)
            .and_then(|s| s.bodies.last().cloned())
            .unwrap_or(Value::Null)
    }

    /// The last request's path and query.
    pub fn last_path(&self, stub: &str) -> String {
        lock(&self.state)
            .stubs
            .get(stub)
            .and_then(|s| s.uris.last().cloned())
            .unwrap_or_default()
    }

    /// The headers of the stub's last request.
    pub fn last_headers(&self, stub: &str) -> HeaderMap {
        lock(&self.state)
            .stubs
            .get(stub)
            .and_then(|s| s.headers.last().cloned())
            .unwrap_or_default()
    }

    /// The request-shape violations seen so far, cleared.
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.state).violations)
    }

    /// Panics on any request-shape violation or any panic of the fake's tasks.
    pub fn assert_clean(&mut self) {
        self.server.check();
        let v = self.take_violations();
        assert!(v.is_empty(), "request-shape violations: {v:#?}");
    }
}
