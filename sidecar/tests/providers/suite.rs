//! One suite over every provider through a macro, with a capability matrix saying which
//! cases apply: text, tools, streaming, assembled answers, failover, client errors, stream
//! errors, unsupported inputs.

use bytes::Bytes;
use detour_fake_upstream::providers::{API_KEY, GOOGLE_TOKEN, Kind, SECRET, Step};
use serde_json::{Value, json};

use crate::harness::*;

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
// The cases.

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
