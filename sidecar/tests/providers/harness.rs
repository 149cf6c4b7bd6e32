//! What every provider test stands on: the sidecar set up over the provider fake's stubs
//! (standalone YAML compiled to routes.json, credentials patched in as files), the requests,
//! and the goldens.

use std::path::PathBuf;

use bytes::Bytes;
use detour_api::RouteTable;
use detour_api::table::{CredentialSource, Credentials};
use detour_fake_upstream::providers::{
    AKID, API_KEY, Fake, GOOGLE_PROJECT, GOOGLE_REGION, GOOGLE_TOKEN, Kind, REGION, SECRET,
};
use detour_sidecar::config::Source;
use serde_json::{Value, json};

use crate::support::Sidecar;

// ---------------------------------------------------------------------------------------------
// Sidecar set-up: standalone YAML compiled to routes.json, credentials patched in as files.

pub struct Env {
    pub fake: Fake,
    pub sidecar: Sidecar,
}

/// A route `model` over `targets` (stub, kind), with its credentials as files in `dir`.
pub fn table(
    fake: &Fake,
    model: &str,
    targets: &[(&str, Kind)],
    dir: &std::path::Path,
    policy: &str,
) -> String {
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
    std::fs::write(dir.join("aws-access-key-id"), AKID).unwrap();
    std::fs::write(dir.join("aws-secret-access-key"), SECRET).unwrap();
    let google_token = dir.join("google-token");
    std::fs::write(&google_token, format!("{GOOGLE_TOKEN}\n")).unwrap();
    let mut yaml = crate::support::policy("p", policy);
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
pub async fn env(model: &str, targets: &[(&str, Kind)]) -> Env {
    env_with(model, targets, "  streaming: {assemble: false}").await
}

/// As [`env`], with extra policy spec lines.
pub async fn env_with(model: &str, targets: &[(&str, Kind)], policy: &str) -> Env {
    env_in(tempfile::tempdir().unwrap(), model, targets, policy).await
}

/// As [`env_with`], in a directory the test prepared (e.g. with an `aws-session-token`).
pub async fn env_in(dir: tempfile::TempDir, model: &str, targets: &[(&str, Kind)], policy: &str) -> Env {
    let fake = Fake::start().await;
    let json = table(&fake, model, targets, dir.path(), policy);
    let path = dir.path().join("routes.json");
    std::fs::write(&path, json).unwrap();
    let sidecar = crate::support::start_with(Source::Json(path), dir, 10 * 1024 * 1024).await;
    Env { fake, sidecar }
}

pub async fn post(s: &Sidecar, body: &Value) -> crate::support::SidecarResponse {
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

pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(manifest_dir())
        .join("tests/data/providers")
        .join(format!("{name}.json"))
}

/// `created` is the time of translation: zeroed before comparing.
pub fn normalise(v: &mut Value) {
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

pub fn golden(name: &str, mut got: Value) {
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
pub fn sse_events(text: &str) -> Vec<Value> {
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

pub const ROUTE: &str = "smart/balanced";

pub fn text_request() -> Value {
    json!({"model": ROUTE, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."}
    ], "temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "user": "u-1"})
}

pub fn tools_request(stream: bool) -> Value {
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

pub fn backup_kind(kind: Kind) -> Kind {
    if kind == Kind::OpenAi {
        Kind::Anthropic
    } else {
        Kind::OpenAi
    }
}

/// This package's directory, read when the test runs (cargo sets it), so a test binary built
/// from another checkout sharing the target directory reads this checkout's files.
pub fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}
