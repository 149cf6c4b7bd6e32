//! One suite over every provider (`openai`, `azure-openai`, `anthropic`, `bedrock`, and
//! `vertex` with Gemini and with Claude): the same
//! cases — text, tools, streaming, errors, a stream that breaks, failover to the next
//! provider — run through the sidecar against one loopback fake that speaks each provider's
//! real wire format and checks request shapes strictly (for Bedrock, it recomputes the SigV4
//! signature and rejects a wrong one). A capability matrix says which cases apply.
//!
//! Translations are pinned by golden JSON in `tests/data/providers/`, both directions: the
//! body the provider received, and what the client got (responses and stream chunks).
//! `DETOUR_BLESS=1 cargo test -p detour-sidecar --test providers` rewrites them.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: a failed unwrap is a failed test"
)]

#[expect(
    dead_code,
    reason = "shared test support: this suite uses the sidecar half, not its OpenAI-only fake"
)]
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use detour_api::RouteTable;
use detour_api::table::{CredentialSource, Credentials};
use detour_sidecar::config::Source;
use detour_sidecar::providers::bedrock::eventstream;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use support::Sidecar;

// ---------------------------------------------------------------------------------------------
// The providers and what each can do.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    OpenAi,
    Azure,
    Anthropic,
    Bedrock,
    /// `vertex`, publisher `google`: Vertex's OpenAI-compatible chat completions.
    VertexGemini,
    /// `vertex`, publisher `anthropic`: Claude at rawPredict / streamRawPredict.
    VertexClaude,
}

/// The capability matrix: which cases a provider supports through the sidecar.
#[derive(Clone, Copy, Debug)]
struct Caps {
    tools: bool,
    streaming: bool,
    /// Images by http(s) URL (Bedrock takes only inline bytes).
    image_url: bool,
    /// `/v1/embeddings`.
    embeddings: bool,
}

impl Kind {
    const fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Azure => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::Bedrock => "bedrock",
            Self::VertexGemini | Self::VertexClaude => "vertex",
        }
    }

    const fn slug(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Bedrock => "bedrock",
            Self::VertexGemini => "vertex-gemini",
            Self::VertexClaude => "vertex-claude",
        }
    }

    const fn caps(self) -> Caps {
        match self {
            Self::OpenAi | Self::Azure => Caps {
                tools: true,
                streaming: true,
                image_url: true,
                embeddings: true,
            },
            Self::Anthropic | Self::VertexGemini | Self::VertexClaude => Caps {
                tools: true,
                streaming: true,
                image_url: true,
                embeddings: false,
            },
            Self::Bedrock => Caps {
                tools: true,
                streaming: true,
                image_url: false,
                embeddings: false,
            },
        }
    }

    /// The upstream model (Bedrock's carries the `:` that must be escaped in the path).
    const fn model(self) -> &'static str {
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
    const fn reported(self) -> &'static str {
        match self {
            Self::Anthropic | Self::VertexClaude => "claude-up-20250101",
            k => k.model(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake.

const API_KEY: &str = "sk-test-key-do-not-leak";
const AKID: &str = "AKIDTESTEXAMPLE";
const SECRET: &str = "secret/test+key-do-not-leak";
const REGION: &str = "us-west-2";
/// The Google access token the Vertex targets' token file holds (a refresher's file).
const GOOGLE_TOKEN: &str = "ya29.vertex-test-token-do-not-leak";
const GOOGLE_PROJECT: &str = "test-project";
const GOOGLE_REGION: &str = "us-central1";

/// One scripted answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
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
    /// Connections accepted.
    connections: usize,
}

type Shared = Arc<Mutex<FakeState>>;
type FakeBody = UnsyncBoxBody<Bytes, std::io::Error>;

struct Fake {
    addr: SocketAddr,
    state: Shared,
    tasks: JoinSet<()>,
}

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<FakeBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

fn json_resp(status: u16, v: &Value) -> Response<FakeBody> {
    full(status, "application/json", v.to_string())
}

/// A paced streaming body; `broken` ends it with a connection error instead of its end.
fn streamed(content_type: &str, frames: Vec<Bytes>, broken: bool) -> Response<FakeBody> {
    let mut items: Vec<Result<Frame<Bytes>, std::io::Error>> =
        frames.into_iter().map(|b| Ok(Frame::data(b))).collect();
    if broken {
        items.push(Err(std::io::Error::other("scripted stream break")));
    }
    let paced = stream::iter(items).then(|f| async move {
        tokio::time::sleep(Duration::from_millis(3)).await;
        f
    });
    let mut r = Response::new(StreamBody::new(paced).boxed_unsync());
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

fn violation(state: &Shared, what: String) {
    state.lock().unwrap().violations.push(what);
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
    check_keys(
        state,
        who,
        body,
        &[
            "model",
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
        ],
    );
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
fn prefill(body: &Value) -> Option<String> {
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

fn anthropic_answer(step: Step, body: &Value) -> Response<FakeBody> {
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
    Bytes::from(eventstream::encode(
        &[
            (":message-type", "event"),
            (":event-type", kind),
            (":content-type", "application/json"),
        ],
        payload.to_string().as_bytes(),
    ))
}

fn bedrock_answer(step: Step, body: &Value, stream: bool) -> Response<FakeBody> {
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
            let frame = eventstream::encode(
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

fn with_request_id(mut r: Response<FakeBody>) -> Response<FakeBody> {
    r.headers_mut()
        .insert("x-amzn-requestid", "req-0001".parse().unwrap());
    r
}

// --- Vertex AI wire formats ---

/// Gemini through the OpenAI-compatible endpoint: answers as OpenAI's, errors in Google's
/// shape (a one-element list, as Vertex sends them).
fn vertex_gemini_answer(step: Step, body: &Value) -> Response<FakeBody> {
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
        &[
            "anthropic_version",
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
        ],
    );
    if !body["max_tokens"].is_u64() {
        violation(state, format!("{who}: max_tokens missing"));
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    check_alternation(state, who, &messages);
}

// --- OpenAI / Azure wire format ---

fn openai_answer(step: Step, body: &Value, who: &str) -> Response<FakeBody> {
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

fn sts_answer(state: &Shared, body: &str) -> Response<FakeBody> {
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let ok = form.get("Action").map(String::as_str) == Some("AssumeRoleWithWebIdentity")
        && form.get("RoleArn").map(String::as_str) == Some("arn:aws:iam::123456789012:role/detour")
        && form.get("WebIdentityToken").map(String::as_str) == Some("projected.jwt.token");
    state.lock().unwrap().sts_hits += 1;
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

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Response<FakeBody>, std::io::Error> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
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
        let mut g = state.lock().unwrap();
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
            let expected = state.lock().unwrap().aws.clone().unwrap();
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
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Shared = Arc::new(Mutex::new(FakeState {
            aws: Some((AKID.to_owned(), SECRET.to_owned(), None)),
            ..FakeState::default()
        }));
        let mut tasks = JoinSet::new();
        let s = state.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (io, _) = listener.accept().await.unwrap();
                s.lock().unwrap().connections += 1;
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
        Self { addr, state, tasks }
    }

    /// The endpoint of stub `stub` speaking `kind`.
    fn endpoint(&self, stub: &str, kind: Kind) -> String {
        match kind {
            Kind::OpenAi => format!("http://{}/{stub}/openai/v1", self.addr),
            k => format!("http://{}/{stub}/{}", self.addr, k.slug()),
        }
    }

    fn script(&self, stub: &str, steps: Vec<Step>) {
        self.state.lock().unwrap().stubs.insert(
            stub.to_owned(),
            Stub {
                script: steps,
                ..Stub::default()
            },
        );
    }

    fn hits(&self, stub: &str) -> usize {
        self.state.lock().unwrap().stubs.get(stub).map_or(0, |s| s.hits)
    }

    /// Connections the fake has accepted.
    fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    fn last_body(&self, stub: &str) -> Value {
        self.state
            .lock()
            .unwrap()
            .stubs
            .get(stub)
            .and_then(|s| s.bodies.last().cloned())
            .unwrap_or(Value::Null)
    }

    /// The last request's path and query.
    fn last_path(&self, stub: &str) -> String {
        self.state
            .lock()
            .unwrap()
            .stubs
            .get(stub)
            .and_then(|s| s.uris.last().cloned())
            .unwrap_or_default()
    }

    fn last_headers(&self, stub: &str) -> HeaderMap {
        self.state
            .lock()
            .unwrap()
            .stubs
            .get(stub)
            .and_then(|s| s.headers.last().cloned())
            .unwrap_or_default()
    }

    /// Panics on any request-shape violation or any panic of the fake's tasks.
    fn assert_clean(&mut self) {
        while let Some(r) = self.tasks.try_join_next() {
            if let Err(e) = r
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let v = std::mem::take(&mut self.state.lock().unwrap().violations);
        assert!(v.is_empty(), "request-shape violations: {v:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sidecar set-up: standalone YAML compiled to routes.json, credentials patched in as files.

struct Env {
    fake: Fake,
    sidecar: Sidecar,
}

/// A route `model` over `targets` (stub, kind), with its credentials as files in `dir`.
fn table(fake: &Fake, model: &str, targets: &[(&str, Kind)], dir: &std::path::Path, policy: &str) -> String {
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
    std::fs::write(dir.join("aws-access-key-id"), AKID).unwrap();
    std::fs::write(dir.join("aws-secret-access-key"), SECRET).unwrap();
    let google_token = dir.join("google-token");
    std::fs::write(&google_token, format!("{GOOGLE_TOKEN}\n")).unwrap();
    let mut yaml = support::policy("p", policy);
    yaml.push_str(&format!(
        "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: r\nspec:\n  model: {model}\n  policyRef: {{name: p}}\n  targets:\n"
    ));
    for (stub, kind) in targets {
        yaml.push_str(&format!(
            "    - name: {stub}\n      provider: {}\n      model: \"{}\"\n      endpoint: {}\n      allowPlainHttp: true\n",
            kind.name(),
            kind.model(),
            fake.endpoint(stub, *kind)
        ));
        if *kind == Kind::Bedrock {
            yaml.push_str(&format!("      region: {REGION}\n"));
        } else if matches!(kind, Kind::VertexGemini | Kind::VertexClaude) {
            let publisher = if *kind == Kind::VertexGemini {
                "google"
            } else {
                "anthropic"
            };
            yaml.push_str(&format!(
                "      region: {GOOGLE_REGION}\n      vertex: {{project: {GOOGLE_PROJECT}, publisher: {publisher}}}\n      credentials: {{apiKeyFile: {}}}\n",
                google_token.display()
            ));
        } else {
            yaml.push_str(&format!(
                "      credentials: {{apiKeyFile: {}}}\n",
                key_file.display()
            ));
        }
    }
    let compiled = detour_api::compile_yaml_with(
        &yaml,
        &dir.display().to_string(),
        &detour_api::egress::AllowedHosts::standalone(),
    )
    .unwrap();
    assert!(
        compiled.table.excluded.is_empty(),
        "{:?}",
        compiled.table.excluded
    );
    let mut routes = compiled.table.routes;
    let file = |name: &str| Some(CredentialSource::File(dir.join(name).display().to_string()));
    for t in &mut routes[0].targets {
        if t.provider == detour_api::table::Provider::Bedrock {
            t.credentials = Some(Credentials {
                access_key_id: file("aws-access-key-id"),
                secret_access_key: file("aws-secret-access-key"),
                session_token: dir
                    .join("aws-session-token")
                    .exists()
                    .then(|| CredentialSource::File(dir.join("aws-session-token").display().to_string())),
                ..Credentials::default()
            });
        }
    }
    RouteTable::new(routes, Vec::new()).to_json()
}

/// Plain calls for non-streaming requests (`streaming.assemble: false`), so the goldens pin
/// each provider's own non-streaming translation; [`case_assembled`] compares the two.
async fn env(model: &str, targets: &[(&str, Kind)]) -> Env {
    env_with(model, targets, "  streaming: {assemble: false}").await
}

/// As [`env`], with extra policy spec lines.
async fn env_with(model: &str, targets: &[(&str, Kind)], policy: &str) -> Env {
    env_in(tempfile::tempdir().unwrap(), model, targets, policy).await
}

/// As [`env_with`], in a directory the test prepared (e.g. with an `aws-session-token`).
async fn env_in(dir: tempfile::TempDir, model: &str, targets: &[(&str, Kind)], policy: &str) -> Env {
    let fake = Fake::start().await;
    let json = table(&fake, model, targets, dir.path(), policy);
    let path = dir.path().join("routes.json");
    std::fs::write(&path, json).unwrap();
    let sidecar = support::start_with(Source::Json(path), dir, 10 * 1024 * 1024).await;
    Env { fake, sidecar }
}

async fn post(s: &Sidecar, body: &Value) -> support::Reply {
    s.send(
        "POST",
        "/v1/chat/completions",
        Bytes::from(body.to_string()),
        &[("authorization", "Bearer app-dummy")],
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Goldens.

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(manifest_dir())
        .join("tests/data/providers")
        .join(format!("{name}.json"))
}

/// `created` is the time of translation: zeroed before comparing.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(c) = o.get_mut("created") {
                *c = json!(0);
            }
            o.values_mut().for_each(normalise);
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

fn golden(name: &str, mut got: Value) {
    normalise(&mut got);
    let path = golden_path(name);
    if std::env::var("DETOUR_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            format!("{}\n", serde_json::to_string_pretty(&got).unwrap()),
        )
        .unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "golden {} missing; run with DETOUR_BLESS=1 to create it",
            path.display()
        )
    });
    let want: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        got, want,
        "golden {name} differs; run with DETOUR_BLESS=1 to accept"
    );
}

/// The `data:` payloads of an SSE body (`[DONE]` as the string "[DONE]").
fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| {
            if d == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(d).unwrap()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The cases.

const ROUTE: &str = "smart/balanced";

fn text_request() -> Value {
    json!({"model": ROUTE, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."}
    ], "temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "user": "u-1"})
}

fn tools_request(stream: bool) -> Value {
    json!({"model": ROUTE, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
        "messages": [
            {"role": "developer", "content": "Use tools when useful."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "12C, rain"},
            {"role": "user", "content": "And Paris?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "required",
        "response_format": {"type": "json_object"}})
}

fn backup_kind(kind: Kind) -> Kind {
    if kind == Kind::OpenAi {
        Kind::Anthropic
    } else {
        Kind::OpenAi
    }
}

/// Text: the request is translated (golden), the answer is a `chat.completion` (golden) with
/// the route's model, the provider named in `x-detour-provider`, usage carried over.
async fn case_text(kind: Kind) {
    let mut e = env(ROUTE, &[("primary", kind)]).await;
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), kind.name());
    let v = r.json();
    assert_eq!(v["model"], kind.reported());
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("hello from")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 10);
    let slug = kind.slug();
    golden(
        &format!("{slug}.text.upstream-request"),
        e.fake.last_body("primary"),
    );
    golden(&format!("{slug}.text.response"), v);
    let h = e.fake.last_headers("primary");
    assert!(h.get("x-detour-tags").is_none());
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// Tools: tools, tool_choice, tool calls and tool results in the history, an image and a JSON
/// response format are translated (golden); the tool call comes back as `tool_calls` with
/// JSON-string arguments and `finish_reason: tool_calls`.
async fn case_tools(kind: Kind) {
    if !kind.caps().tools {
        return;
    }
    let mut e = env(ROUTE, &[("primary", kind)]).await;
    let r = post(&e.sidecar, &tools_request(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let slug = kind.slug();
    golden(
        &format!("{slug}.tools.upstream-request"),
        e.fake.last_body("primary"),
    );
    golden(&format!("{slug}.tools.response"), v);
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// Streaming: upstream events become `chat.completion.chunk`s (golden) ending with a usage
/// chunk (asked for) and `[DONE]`; text and tool-call arguments reassemble.
async fn case_stream(kind: Kind) {
    if !kind.caps().streaming {
        return;
    }
    let mut e = env(ROUTE, &[("primary", kind)]).await;
    let r = post(&e.sidecar, &tools_request(true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").starts_with("text/event-stream"));
    assert_eq!(r.header("x-detour-provider"), kind.name());
    let events = sse_events(&r.text());
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let usage = &events[events.len() - 2];
    assert_eq!(usage["usage"]["total_tokens"], 10, "{usage}");
    let mut text = String::new();
    let mut args = String::new();
    for ev in &events[..events.len() - 1] {
        assert_eq!(ev["object"], "chat.completion.chunk");
        assert_eq!(ev["model"], kind.reported());
        if let Some(c) = ev["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if let Some(a) = ev["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str() {
            args.push_str(a);
        }
    }
    assert!(text.starts_with("hello from"), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let slug = kind.slug();
    golden(
        &format!("{slug}.stream.upstream-request"),
        e.fake.last_body("primary"),
    );
    golden(&format!("{slug}.stream.chunks"), Value::Array(events));
    // The stream's upstream connection was kept: a second stream goes out on it.
    let again = post(&e.sidecar, &tools_request(true)).await;
    assert!(again.text().ends_with("data: [DONE]\n\n"), "{}", again.text());
    assert_eq!(
        e.fake.connections(),
        1,
        "{slug}: one upstream connection for both streams"
    );
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// `"created":<digits>` set to 0 (the time of translation), bytes otherwise kept.
fn zero_created(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(i + "\"created\":".len());
        out.push_str(head);
        out.push('0');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// A byte golden: the file holds exactly these bytes (plus a newline).
fn golden_bytes(name: &str, got: &str) {
    let path = golden_path(name);
    if std::env::var("DETOUR_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{got}\n")).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "golden {} missing; run with DETOUR_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        got,
        want.trim_end_matches('\n'),
        "golden {name} differs; run with DETOUR_BLESS=1 to accept"
    );
}

/// Assembled answers: a non-streaming request goes upstream as a stream (with usage) and the
/// client gets one `chat.completion` (byte golden). For the translating providers it is byte
/// for byte the answer their non-streaming call gives (text and tools).
async fn case_assembled(kind: Kind) {
    let mut a = env_with(ROUTE, &[("primary", kind)], "").await;
    let mut plain = env(ROUTE, &[("primary", kind)]).await;
    for (case, req) in [("text", text_request()), ("tools", tools_request(false))] {
        if case == "tools" && !kind.caps().tools {
            continue;
        }
        let r = post(&a.sidecar, &req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), "application/json");
        let got = zero_created(&r.text());
        let sent = a.fake.last_body("primary");
        assert!(
            sent["stream"] == json!(true) || a.fake.last_path("primary").contains("converse-stream"),
            "{kind:?} {case}: sent as a stream: {sent}"
        );
        let v: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], kind.reported());
        assert_eq!(v["usage"]["total_tokens"], 10, "{got}");
        golden_bytes(&format!("{}.{case}.assembled", kind.slug()), &got);
        if matches!(kind, Kind::Anthropic | Kind::Bedrock) {
            let p = zero_created(&post(&plain.sidecar, &req).await.text());
            if case == "text" {
                assert_eq!(p, got, "{kind:?}: assembled = plain, byte for byte");
            } else {
                // The fakes' streamed tool answers carry other text and argument spacing than
                // their JSON ones; everything else must agree.
                let p: Value = serde_json::from_str(&p).unwrap();
                let (a, b) = (&v["choices"][0], &p["choices"][0]);
                assert_eq!(a["finish_reason"], b["finish_reason"]);
                assert_eq!(
                    a["message"]["tool_calls"][0]["id"],
                    b["message"]["tool_calls"][0]["id"]
                );
                let args = |c: &Value| -> Value {
                    serde_json::from_str(
                        c["message"]["tool_calls"][0]["function"]["arguments"]
                            .as_str()
                            .unwrap(),
                    )
                    .unwrap()
                };
                assert_eq!(args(a), args(b));
                assert_eq!(v["usage"], p["usage"]);
                assert_eq!(v["id"], p["id"]);
            }
        }
    }
    a.fake.assert_clean();
    plain.fake.assert_clean();
    a.sidecar.stop().await;
    plain.sidecar.stop().await;
}

/// Overloaded and throttled answers fail over to the next provider; the backup serves, and the
/// throttled answer's `Retry-After` keeps the primary out of rotation.
async fn case_failover(kind: Kind) {
    let backup = backup_kind(kind);
    let mut e = env(ROUTE, &[("primary", kind), ("backup", backup)]).await;
    for step in [Step::Overloaded, Step::Throttled] {
        e.fake.script("primary", vec![step]);
        e.fake.script("backup", vec![Step::Ok]);
        let r = post(&e.sidecar, &text_request()).await;
        assert_eq!(r.status, 200, "{step:?}: {}", r.text());
        assert_eq!(r.header("x-detour-provider"), backup.name(), "{step:?}");
        assert_eq!(r.header("x-detour-fallback-count"), "1");
        assert_eq!(e.fake.hits("primary"), 1);
        assert_eq!(e.fake.hits("backup"), 1);
        let rec = e.sidecar.audit_of(&r).await;
        let json = serde_json::to_value(&rec).unwrap();
        let want = if step == Step::Overloaded { "5xx" } else { "429" };
        assert_eq!(json["attempts"][0]["class"], want, "{json}");
    }
    // The 429's `Retry-After: 7` opened the primary: the next request goes straight to the
    // backup without touching it.
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-provider"), backup.name());
    assert_eq!(e.fake.hits("primary"), 1, "Retry-After honoured");
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// A validation error is a client error: returned with its status in OpenAI's error shape,
/// never failed over, and the key never appears in it.
async fn case_invalid(kind: Kind) {
    let mut e = env(ROUTE, &[("primary", kind), ("backup", backup_kind(kind))]).await;
    e.fake.script("primary", vec![Step::Invalid]);
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("scripted"));
    assert_eq!(e.fake.hits("backup"), 0);
    assert!(!r.text().contains(API_KEY) && !r.text().contains(SECRET) && !r.text().contains(GOOGLE_TOKEN));
    golden(&format!("{}.invalid.response", kind.slug()), v);
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// A stream that errors before its first content fails over (nothing was committed, even
/// though the upstream had opened the message); a stream that breaks after its first content
/// ends with an error event, not a silent truncation.
async fn case_stream_errors(kind: Kind) {
    if !kind.caps().streaming {
        return;
    }
    let backup = backup_kind(kind);
    let mut e = env(ROUTE, &[("primary", kind), ("backup", backup)]).await;
    let req = json!({"model": ROUTE, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    e.fake.script("primary", vec![Step::StreamErrorFirst]);
    let r = post(&e.sidecar, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-provider"), backup.name(), "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    e.fake.script("primary", vec![Step::StreamBreak]);
    let r = post(&e.sidecar, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-provider"), kind.name());
    let events = sse_events(&r.text());
    let err = events
        .iter()
        .find(|v| v.get("error").is_some())
        .expect("an error event");
    assert_eq!(err["error"]["code"], "reset", "{err}");
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// What a provider cannot do is a 400 naming the field, before anything is sent.
async fn case_unsupported(kind: Kind) {
    let mut e = env(ROUTE, &[("primary", kind)]).await;
    let req = json!({"model": ROUTE, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    let r = post(&e.sidecar, &req).await;
    if kind.caps().image_url {
        assert_eq!(r.status, 200, "{}", r.text());
    } else {
        assert_eq!(r.status, 400);
        assert!(r.json()["error"]["param"].as_str().unwrap().contains("image_url"));
        assert_eq!(e.fake.hits("primary"), 0);
    }
    let r = e
        .sidecar
        .send(
            "POST",
            "/v1/embeddings",
            Bytes::from(json!({"model": ROUTE, "input": "x"}).to_string()),
            &[],
        )
        .await;
    if !kind.caps().embeddings {
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["param"], "endpoint");
    }
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

macro_rules! provider_suite {
    ($($module:ident => $kind:expr),* $(,)?) => {$(
        mod $module {
            use super::*;

            /// Text completion through this provider.
            #[tokio::test]
            async fn text() { case_text($kind).await }

            /// Tools, tool history, images and JSON response format through this provider.
            #[tokio::test]
            async fn tools() { case_tools($kind).await }

            /// Streaming with tool-call deltas and the usage chunk.
            #[tokio::test]
            async fn stream() { case_stream($kind).await }

            /// Non-streaming requests sent as streams and assembled, byte for byte.
            #[tokio::test]
            async fn assembled() { case_assembled($kind).await }

            /// Overloaded and throttled fail over to the next provider.
            #[tokio::test]
            async fn failover() { case_failover($kind).await }

            /// Validation errors are client errors in OpenAI's shape, not failed over.
            #[tokio::test]
            async fn invalid() { case_invalid($kind).await }

            /// Stream errors before the first event fail over; after it, an error event.
            #[tokio::test]
            async fn stream_errors() { case_stream_errors($kind).await }

            /// Unsupported inputs and endpoints are 400s naming the field.
            #[tokio::test]
            async fn unsupported() { case_unsupported($kind).await }
        }
    )*};
}

provider_suite! {
    openai => Kind::OpenAi,
    azure_openai => Kind::Azure,
    anthropic => Kind::Anthropic,
    bedrock => Kind::Bedrock,
    vertex_gemini => Kind::VertexGemini,
    vertex_claude => Kind::VertexClaude,
}

// ---------------------------------------------------------------------------------------------
// Provider-specific behaviour.

/// The common production chain: openai (down) → anthropic (overloaded) → bedrock serves.
#[tokio::test]
async fn chain_openai_anthropic_bedrock() {
    let mut e = env(
        ROUTE,
        &[
            ("oai", Kind::OpenAi),
            ("ant", Kind::Anthropic),
            ("bed", Kind::Bedrock),
        ],
    )
    .await;
    e.fake.script("oai", vec![Step::Overloaded]);
    e.fake.script("ant", vec![Step::Overloaded]);
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), "bedrock");
    assert_eq!(r.header("x-detour-fallback-count"), "2");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hello from bedrock");
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// A Bedrock request signed with the wrong secret is rejected by the fake's own signature
/// check (so the check is real), and the 403 is a client error in OpenAI's shape.
#[tokio::test]
async fn bedrock_wrong_signature_is_rejected() {
    let mut e = env(ROUTE, &[("primary", Kind::Bedrock)]).await;
    e.fake.state.lock().unwrap().aws = Some((AKID.to_owned(), "another-secret".to_owned(), None));
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let v = std::mem::take(&mut e.fake.state.lock().unwrap().violations);
    assert!(v.iter().any(|v| v.contains("signature does not match")), "{v:?}");
    assert!(!r.text().contains(SECRET));
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// The translated answer carries the model the upstream reported (Anthropic's from its
/// response, Bedrock's the target's model id), in JSON and in every chunk; `responseModel:
/// route` (or the deprecated `exposeUpstreamModel: false`) puts the route's id there.
#[tokio::test]
async fn response_model() {
    for (kind, policy, want) in [
        (Kind::Anthropic, "", "claude-up-20250101"),
        (Kind::Bedrock, "", Kind::Bedrock.model()),
        (Kind::Anthropic, "  responseModel: route", ROUTE),
        (Kind::Bedrock, "  exposeUpstreamModel: false", ROUTE),
    ] {
        let mut e = env_with(ROUTE, &[("primary", kind)], policy).await;
        let r = post(&e.sidecar, &text_request()).await;
        assert_eq!(r.json()["model"], want);
        assert_eq!(r.header("x-detour-route"), ROUTE);
        let req = json!({"model": ROUTE, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let r = post(&e.sidecar, &req).await;
        let events = sse_events(&r.text());
        assert!(
            events[..events.len() - 1].iter().all(|v| v["model"] == want),
            "{events:?}"
        );
        e.fake.assert_clean();
        e.sidecar.stop().await;
    }
}

/// Bedrock with static temporary keys: the mounted session token is sent as
/// `x-amz-security-token` and signed; the fake checks both.
#[tokio::test]
async fn bedrock_static_session_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws-session-token"), "static-session-token\n").unwrap();
    let mut e = env_in(dir, ROUTE, &[("primary", Kind::Bedrock)], "").await;
    e.fake.state.lock().unwrap().aws = Some((
        AKID.to_owned(),
        SECRET.to_owned(),
        Some("static-session-token".to_owned()),
    ));
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// Anthropic: a rotated key file is picked up without a reload.
#[tokio::test]
async fn anthropic_key_rotation() {
    let mut e = env(ROUTE, &[("primary", Kind::Anthropic)]).await;
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200);
    let key_file = e.sidecar.dir.path().join("api-key");
    std::fs::write(&key_file, "sk-rotated-key-longer").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = post(&e.sidecar, &text_request()).await;
    assert_eq!(
        e.fake
            .last_headers("primary")
            .get("x-api-key")
            .unwrap()
            .to_str()
            .unwrap(),
        "sk-rotated-key-longer"
    );
    // The fake flags the rotated key as wrong; that is the point here.
    e.fake.state.lock().unwrap().violations.clear();
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// This package's directory, read when the test runs (cargo sets it), so a test binary built
/// from another checkout sharing the target directory reads this checkout's files.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// Mid-stream continuation across translations, through the provider fakes: an OpenAI stream
/// cut after "hello " is finished by Anthropic and by Bedrock with assistant prefill (the
/// delivered text, its trailing space taken off, as the final assistant turn: the fakes
/// continue it as the real APIs do), and an Anthropic or Bedrock stream cut the same way is
/// finished by OpenAI with the continuation prompt. The client reads one stream: the first
/// stream's id, one role chunk, "hello from <next>" once, one finish_reason, [DONE].
#[tokio::test]
async fn continuation_across_providers() {
    let pairs = [
        (Kind::OpenAi, Kind::Anthropic),
        (Kind::OpenAi, Kind::Bedrock),
        (Kind::Anthropic, Kind::OpenAi),
        (Kind::Bedrock, Kind::OpenAi),
    ];
    for (first, next) in pairs {
        let mut e = env_with(
            ROUTE,
            &[("primary", first), ("backup", next)],
            "  streaming: {continueOnFailure: true}",
        )
        .await;
        e.fake.script("primary", vec![Step::StreamBreak]);
        let req = json!({"model": ROUTE, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let r = post(&e.sidecar, &req).await;
        let events = sse_events(&r.text());
        let text: String = events
            .iter()
            .filter_map(|v| v.pointer("/choices/0/delta/content").and_then(Value::as_str))
            .collect();
        let who = if next == Kind::OpenAi {
            "backup".to_owned()
        } else {
            next.name().to_owned()
        };
        assert_eq!(
            text,
            format!("hello from {who}"),
            "{first:?} -> {next:?}: {}",
            r.text()
        );
        let roles = events
            .iter()
            .filter(|v| v.pointer("/choices/0/delta/role").is_some())
            .count();
        assert_eq!(roles, 1, "{}", r.text());
        let finishes = events
            .iter()
            .filter(|v| {
                v.pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null())
            })
            .count();
        assert_eq!(finishes, 1, "{}", r.text());
        let ids: std::collections::BTreeSet<String> = events
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
        let asked = e.fake.last_body("backup");
        let last = asked["messages"].as_array().unwrap().last().unwrap().clone();
        if next == Kind::OpenAi {
            assert_eq!(last["role"], "user", "{asked}");
        } else {
            assert_eq!(last["role"], "assistant", "{asked}");
            assert_eq!(prefill(&asked).as_deref(), Some("hello"), "{asked}");
        }
        e.fake.assert_clean();
        e.sidecar.stop().await;
    }
}
