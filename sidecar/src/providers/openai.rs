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

/// The one error mapper of this provider: status and error body to a class.
pub(super) fn map_error(status: StatusCode, retry_after: Option<Duration>, body: Bytes) -> Failure {
    let class = match status.as_u16() {
        429 => Class::RateLimited,
        408 => Class::Timeout,
        500..=599 => Class::ServerError,
        400..=499 if is_content_filter(&body) => Class::ContentFilter,
        400..=499 => Class::ClientError,
        _ => Class::BadResponse,
    };
    Failure {
        class,
        status: Some(status.as_u16()),
        retry_after,
        body: Some(body),
        detail: format!("upstream answered {}", status.as_u16()).into(),
    }
}

fn is_content_filter(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .map(|c| c == "content_filter")
        })
        .unwrap_or(false)
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
            .map_err(|m| Failure::new(Class::ConnectError, m))?;
        let dest = self.uris.get(call.endpoint)?;
        let mut req = upstream::post(dest, call)?;
        if let Some(key) = key {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| Failure::new(Class::ConnectError, "the API key is not a valid header value"))?;
            value.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        upstream::openai_shaped(dest, call, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
