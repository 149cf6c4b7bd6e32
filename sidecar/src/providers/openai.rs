//! `openai` and `openai-compatible`: pass-through. The body goes upstream as the client sent
//! it with `model` replaced by the target's upstream model; the key becomes
//! `Authorization: Bearer …` only while the header is built (marked sensitive, so hyper never
//! logs it). No client header is forwarded: the upstream sees only what this module sets,
//! which is how `x-detour-*` and the app's own (dummy) `Authorization` never leave the pod.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use super::{Adapter, Call, Failure, HttpClient, KeySource, Reply, upstream};
use crate::class::Class;

/// OpenAI's public API base.
pub const DEFAULT_BASE: &str = "https://api.openai.com/v1";
/// An OpenAI-compatible upstream.
#[derive(Debug)]
pub struct OpenAi {
    uris: upstream::Uris,
    key: KeySource,
}

impl OpenAi {
    pub fn new(endpoint: Option<&str>, key: KeySource, client: &HttpClient) -> Self {
        let base = endpoint.unwrap_or(DEFAULT_BASE).trim_end_matches('/');
        Self {
            uris: upstream::Uris::new(client, |e| format!("{base}/{}", e.path())),
            key,
        }
    }
}

/// The one error mapper of this provider (and of `azure-openai`): status and error body to a
/// class.
pub(super) fn map_error(status: StatusCode, retry_after: Option<Duration>, body: Bytes) -> Failure {
    let class = match status.as_u16() {
        429 => Class::RateLimited,
        408 => Class::Timeout,
        500..=599 => Class::ServerError,
        400..=499 => client_error_class(&body),
        _ => Class::BadResponse,
    };
    Failure {
        class,
        status: Some(status.as_u16()),
        retry_after,
        body: Some(body),
        detail: format!("upstream answered {}", status.as_u16()).into(),
        meta: super::UpstreamMeta::default(),
    }
}

/// A 4xx's class from its body: OpenAI's (and Azure's) error codes for a refused content and
/// for a prompt longer than the context window, which OpenAI-compatible servers (vLLM,
/// llama.cpp, LiteLLM, …) often send without a code but with OpenAI's wording.
fn client_error_class(body: &[u8]) -> Class {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Class::ClientError;
    };
    let code = v.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
    // vLLM puts the message at the top level (`{"object":"error","message":…}`).
    let message = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    match code {
        "content_filter" | "content_policy_violation" => Class::ContentFilter,
        "context_length_exceeded" => Class::ContextLength,
        _ if is_context_length_message(&message) => Class::ContextLength,
        _ => Class::ClientError,
    }
}

/// OpenAI's wording of a prompt over the context window ("This model's maximum context length
/// is 8192 tokens. However, your messages resulted in 9000 tokens…"), and the variants
/// OpenAI-compatible servers use. `message` is lower-case.
pub(super) fn is_context_length_message(message: &str) -> bool {
    message.contains("maximum context length")
        || message.contains("context length exceeded")
        || message.contains("context_length_exceeded")
        || (message.contains("context window") && message.contains("exceed"))
}

/// `Retry-After` in seconds (the HTTP-date form is rare from LLM APIs and ignored).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

impl Adapter for OpenAi {
    async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        let key = self
            .key
            .current()
            .map_err(|m| Failure::new(Class::Credentials, m))?;
        let dest = self.uris.get(call.endpoint)?;
        let mut req = upstream::post(dest, call)?;
        if let Some(key) = key {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| Failure::new(Class::Credentials, "the API key is not a valid header value"))?;
            value.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        upstream::openai_shaped(dest, call, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Responses API is `{base}/responses`: OpenAI's `/v1/responses`, an OpenAI-compatible
    /// server's below its own base.
    #[test]
    fn responses_url_per_base() {
        let client = HttpClient::new(None).unwrap();
        let url = |base: Option<&str>| {
            OpenAi::new(base, KeySource::None, &client)
                .uris
                .get(super::super::Endpoint::Responses)
                .unwrap()
                .to_string()
        };
        assert_eq!(url(None), "https://api.openai.com/v1/responses");
        assert_eq!(
            url(Some("http://vllm.ai.svc:8000/v1/")),
            "http://vllm.ai.svc:8000/v1/responses"
        );
    }

    /// The error mapper: 429 and 5xx retryable, 4xx client errors, content filter recognised.
    #[test]
    fn maps_statuses_to_classes() {
        let c = |s: u16, b: &str| {
            map_error(StatusCode::from_u16(s).unwrap(), None, Bytes::from(b.to_owned())).class
        };
        assert_eq!(c(429, ""), Class::RateLimited);
        assert_eq!(c(503, ""), Class::ServerError);
        assert_eq!(c(400, "{}"), Class::ClientError);
        assert_eq!(c(401, ""), Class::ClientError);
        assert_eq!(c(422, ""), Class::ClientError);
        assert_eq!(
            c(400, r#"{"error":{"code":"content_filter"}}"#),
            Class::ContentFilter
        );
    }

    /// OpenAI's and Azure's content-policy code is a content filter; a prompt over the
    /// context window is `context-length`, by code or by OpenAI's wording (servers that copy
    /// the message without the code); any other 400 stays a client error.
    #[test]
    fn content_policy_and_context_length() {
        let c = |b: &str| map_error(StatusCode::BAD_REQUEST, None, Bytes::from(b.to_owned())).class;
        assert_eq!(
            c(r#"{"error":{"code":"content_policy_violation","message":"x"}}"#),
            Class::ContentFilter
        );
        assert_eq!(
            c(
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#
            ),
            Class::ContextLength
        );
        assert_eq!(
            c(
                r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens","type":"BadRequestError","param":null,"code":400}"#
            ),
            Class::ContextLength
        );
        assert_eq!(
            c(r#"{"error":{"message":"Invalid value for 'temperature'","code":"invalid_value"}}"#),
            Class::ClientError
        );
        assert_eq!(c("not json"), Class::ClientError);
    }
}
