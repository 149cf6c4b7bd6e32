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

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use detour_api::RouteTable;
use detour_api::table::{CredentialSource, Credentials};
use detour_fake_upstream::providers::{
    AKID, API_KEY, Fake, GOOGLE_PROJECT, GOOGLE_REGION, GOOGLE_TOKEN, Kind, REGION, SECRET, Step, prefill,
};
use detour_sidecar::config::Source;
use serde_json::{Value, json};

use support::Sidecar;

// ---------------------------------------------------------------------------------------------
// What each provider can do.

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

const fn caps(kind: Kind) -> Caps {
    match kind {
        Kind::OpenAi | Kind::Azure => Caps {
            tools: true,
            streaming: true,
            image_url: true,
            embeddings: true,
        },
        Kind::Anthropic | Kind::VertexGemini | Kind::VertexClaude => Caps {
            tools: true,
            streaming: true,
            image_url: true,
            embeddings: false,
        },
        Kind::Bedrock => Caps {
            tools: true,
            streaming: true,
            image_url: false,
            embeddings: false,
        },
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
    if !caps(kind).tools {
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
    if !caps(kind).streaming {
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
        if case == "tools" && !caps(kind).tools {
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
    if !caps(kind).streaming {
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
    if caps(kind).image_url {
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
    if !caps(kind).embeddings {
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
    e.fake.expect_aws(AKID, "another-secret", None);
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let v = e.fake.take_violations();
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
    e.fake.expect_aws(AKID, SECRET, Some("static-session-token"));
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
    e.fake.take_violations();
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
