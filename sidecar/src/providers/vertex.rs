//! `vertex`: Google Vertex AI, with a Google OAuth access token ([`TokenSource`]).
//!
//! Two wire formats, by the target's `vertex.publisher`:
//! - `google` (Gemini): Vertex's OpenAI-compatible chat completions,
//!   `POST {base}/v1/projects/{project}/locations/{region}/endpoints/openapi/chat/completions`
//!   with the client's body passed through (`model` replaced by the target's, e.g.
//!   `google/gemini-2.5-flash`), answers and streams as for `openai`.
//! - `anthropic` (Claude): `POST {base}/v1/projects/{project}/locations/{region}/publishers/
//!   anthropic/models/{model}:rawPredict` (`:streamRawPredict` for a stream), the body the
//!   `anthropic` provider writes, without `model` (it is in the URL) and with
//!   `anthropic_version: vertex-2023-10-16`; answers and streams translated as for
//!   `anthropic`.
//!
//! `{base}` is `https://{region}-aiplatform.googleapis.com`, or for region `global`
//! `https://aiplatform.googleapis.com`; the target's `endpoint` replaces it. Errors go through
//! the one mapper [`map_error`]: Google's error shape (`{"error": {"code", "message",
//! "status"}}`, sometimes in a one-element list) by its `status` — `RESOURCE_EXHAUSTED` is a
//! 429, `UNAVAILABLE`/`INTERNAL` 5xx, `DEADLINE_EXCEEDED` a timeout, an input over the
//! context window `context-length`, a safety refusal `content-filter` — and Claude's own
//! errors (Anthropic's shape) through `anthropic`'s mapper.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use serde_json::{Value, json};

use super::upstream;
use super::{Adapter, Call, Failure, HttpClient, Reply, anthropic, chat};
use crate::class::Class;
use crate::credentials::google::TokenSource;
use detour_api::table::VertexPublisher;

const NAME: &str = "vertex";
/// The `anthropic_version` Claude on Vertex AI takes in the body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// The base URL of a region's Vertex AI API.
pub fn default_base(region: &str) -> String {
    if region == "global" {
        "https://aiplatform.googleapis.com".to_owned()
    } else {
        format!("https://{region}-aiplatform.googleapis.com")
    }
}

#[derive(Debug)]
enum Wire {
    /// Gemini through the OpenAI-compatible endpoint.
    OpenAi(Box<upstream::Uris>),
    /// Claude through rawPredict / streamRawPredict.
    Claude { predict: String, stream: String },
}

/// A Vertex AI model in one project and region.
#[derive(Debug)]
pub struct Vertex {
    wire: Wire,
    tokens: TokenSource,
    client: HttpClient,
}

impl Vertex {
    pub fn new(t: &detour_api::table::Target, client: &HttpClient) -> Self {
        let region = t.region.as_deref().unwrap_or("global");
        let (project, publisher) = t.vertex.as_ref().map_or(("", VertexPublisher::Google), |v| {
            (v.project.as_str(), v.publisher)
        });
        let base = t
            .endpoint
            .as_deref()
            .map_or_else(|| default_base(region), |e| e.trim_end_matches('/').to_owned());
        let location = format!("{base}/v1/projects/{project}/locations/{region}");
        let wire = match publisher {
            VertexPublisher::Google => Wire::OpenAi(Box::new(upstream::Uris::new(client, |e| {
                format!("{location}/endpoints/openapi/{}", e.path())
            }))),
            VertexPublisher::Anthropic => {
                let model = format!("{location}/publishers/anthropic/models/{}", t.model);
                Wire::Claude {
                    predict: format!("{model}:rawPredict"),
                    stream: format!("{model}:streamRawPredict"),
                }
            }
        };
        Self {
            wire,
            tokens: TokenSource::from_config(t.credentials.as_ref()),
            client: client.clone(),
        }
    }

    async fn authorization(&self) -> Result<HeaderValue, Failure> {
        let token = self
            .tokens
            .token(&self.client)
            .await
            .map_err(|e| Failure::new(Class::Credentials, format!("Google access token: {e}")))?;
        let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
            Failure::new(
                Class::Credentials,
                "the Google access token is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Google's error object: `{"error": {...}}`, or that in a one-element list.
fn google_error(v: &Value) -> Option<&Value> {
    v.get("error")
        .or_else(|| v.get(0).and_then(|e| e.get("error")))
        .filter(|e| e.is_object())
}

/// Vertex's wordings of an input over the context window ("The input token count (1048577)
/// exceeds the maximum number of tokens allowed (1048576).").
fn is_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("input token count") && m.contains("exceeds"))
        || m.contains("exceeds the maximum number of tokens")
        || super::openai::is_context_length_message(&m)
}

/// A refusal by Google's safety filters.
fn is_content_filter(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("safety") || m.contains("prohibited content") || m.contains("blocked by")
}

/// The one error mapper (see the module docs).
pub(crate) fn map_error(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Failure {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    // Claude on Vertex answers its own errors in Anthropic's shape.
    if parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/type"))
        .is_some_and(Value::is_string)
    {
        let mut f = anthropic::map_error(status, retry_after, body);
        f.detail = format!("vertex (anthropic) {}", f.detail).into();
        return f;
    }
    let err = parsed.as_ref().and_then(google_error);
    let code = err
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("the upstream rejected the request");
    let class = match (code, status.as_u16()) {
        ("RESOURCE_EXHAUSTED", _) | (_, 429) => Class::RateLimited,
        ("DEADLINE_EXCEEDED", _) | (_, 408 | 504) => Class::Timeout,
        ("UNAVAILABLE" | "INTERNAL" | "UNKNOWN", _) | (_, 500..=599) => Class::ServerError,
        (_, 400) if is_context_length(message) => Class::ContextLength,
        (_, 400) if is_content_filter(message) => Class::ContentFilter,
        (_, 400..=499) => Class::ClientError,
        _ => Class::BadResponse,
    };
    let openai_type = match (class, code) {
        (Class::RateLimited, _) => "rate_limit_error",
        (_, "UNAUTHENTICATED") => "authentication_error",
        (_, "PERMISSION_DENIED") => "permission_error",
        (_, "NOT_FOUND") => "not_found_error",
        (Class::ClientError | Class::ContextLength | Class::ContentFilter, _) => "invalid_request_error",
        _ => "server_error",
    };
    upstream::translated_failure(NAME, class, status, retry_after, message, openai_type, code)
}

fn map_error_bytes(status: StatusCode, retry_after: Option<Duration>, body: Bytes) -> Failure {
    map_error(status, retry_after, &body)
}

/// The Messages API body Claude on Vertex takes: `model` in the URL, the version in the body.
pub(crate) fn claude_request(c: &chat::Chat, model: &str, stream: bool) -> Value {
    let mut body = anthropic::to_request(c, model, stream);
    if let Some(o) = body.as_object_mut() {
        o.remove("model");
        o.insert("anthropic_version".into(), json!(ANTHROPIC_VERSION));
    }
    body
}

impl Adapter for Vertex {
    async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        match &self.wire {
            Wire::OpenAi(uris) => {
                upstream::chat_only(NAME, call)?;
                let dest = uris.get(call.endpoint)?;
                let mut req = upstream::post(dest, call)?;
                req.headers_mut()
                    .insert(header::AUTHORIZATION, self.authorization().await?);
                upstream::openai_shaped_with(dest, call, req, map_error_bytes).await
            }
            Wire::Claude { predict, stream } => {
                upstream::chat_only(NAME, call)?;
                let chat = chat::read(NAME, call.body()?)?;
                let body = claude_request(&chat, call.model, call.stream);
                let auth = self.authorization().await?;
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(if call.stream { stream } else { predict })
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::USER_AGENT, upstream::USER_AGENT)
                    .header(
                        header::ACCEPT,
                        if call.stream {
                            "text/event-stream"
                        } else {
                            "application/json"
                        },
                    )
                    .header(header::AUTHORIZATION, auth)
                    .body(Bytes::from(body.to_string()))
                    .map_err(|_| Failure::new(Class::ConnectError, "endpoint is not a valid URL"))?;
                anthropic::messages_reply(&self.client, call, req, map_error).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Endpoint;

    fn target(publisher: VertexPublisher, region: &str) -> detour_api::table::Target {
        let mut t: detour_api::table::Target = serde_json::from_value(json!({
            "name": "v", "provider": "vertex", "model": "m@1", "endpoint": null, "region": region,
            "apiVersion": null, "credentials": {"secret": null, "apiKey": {"env": "DETOUR_TEST_UNSET_TOKEN_9F"},
            "accessKeyId": null, "secretAccessKey": null, "sessionToken": null, "webIdentity": null},
            "weight": 1, "cost": null, "quality": null, "contextWindow": null, "capabilities": null,
            "perAttemptMs": 1000, "firstByteMs": 1000, "streamIdleMs": 1000, "mock": null,
            "vertex": {"project": "my-project", "publisher": "google"}
        }))
        .unwrap();
        if let Some(v) = t.vertex.as_mut() {
            v.publisher = publisher;
        }
        t
    }

    /// The URLs Google documents: the OpenAI-compatible endpoint for Gemini, rawPredict and
    /// streamRawPredict for Claude; `global` has no region prefix in the host.
    #[test]
    fn builds_vertex_urls() {
        let client = HttpClient::new(None).unwrap();
        let g = Vertex::new(&target(VertexPublisher::Google, "europe-west4"), &client);
        let Wire::OpenAi(uris) = &g.wire else { panic!() };
        assert_eq!(
            uris.get(Endpoint::Chat).unwrap().to_string(),
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project/locations/europe-west4/endpoints/openapi/chat/completions"
        );
        let c = Vertex::new(&target(VertexPublisher::Anthropic, "global"), &client);
        let Wire::Claude { predict, stream } = &c.wire else {
            panic!()
        };
        assert_eq!(
            predict,
            "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global/publishers/anthropic/models/m@1:rawPredict"
        );
        assert_eq!(
            stream,
            "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global/publishers/anthropic/models/m@1:streamRawPredict"
        );
    }

    /// Claude's body has no `model` and carries Vertex's `anthropic_version`.
    #[test]
    fn claude_body_for_vertex() {
        let body = json!({"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        let c = chat::read(NAME, body.as_object().unwrap()).unwrap();
        let v = claude_request(&c, "claude-sonnet-4@20250514", true);
        assert!(v.get("model").is_none(), "{v}");
        assert_eq!(v["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"][0]["role"], "user");
    }

    /// Google's errors by status: quota is a 429, unavailable a 5xx, an input over the window
    /// `context-length`, a safety refusal `content-filter`; Claude's own errors as Anthropic's.
    #[test]
    fn maps_google_and_claude_errors() {
        let g = |s: u16, code: &str, message: &str| {
            let body = json!([{"error": {"code": s, "message": message, "status": code}}]).to_string();
            map_error(StatusCode::from_u16(s).unwrap(), None, body.as_bytes())
        };
        assert_eq!(
            g(429, "RESOURCE_EXHAUSTED", "Quota exceeded").class,
            Class::RateLimited
        );
        assert_eq!(g(503, "UNAVAILABLE", "try again").class, Class::ServerError);
        assert_eq!(g(500, "INTERNAL", "x").class, Class::ServerError);
        assert_eq!(g(504, "DEADLINE_EXCEEDED", "x").class, Class::Timeout);
        assert_eq!(
            g(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
            )
            .class,
            Class::ContextLength
        );
        assert_eq!(
            g(
                400,
                "INVALID_ARGUMENT",
                "The request was blocked by safety filters."
            )
            .class,
            Class::ContentFilter
        );
        let f = g(403, "PERMISSION_DENIED", "Permission denied on resource project");
        assert_eq!(f.class, Class::ClientError);
        let body: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["type"], "permission_error");
        assert_eq!(body["error"]["message"], "Permission denied on resource project");
        let claude = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let f = map_error(
            StatusCode::from_u16(529).unwrap(),
            None,
            claude.to_string().as_bytes(),
        );
        assert_eq!(f.class, Class::ServerError);
    }
}
