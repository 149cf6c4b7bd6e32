//! `openai` and `openai-compatible`: pass-through. The body goes upstream as the client sent
//! it with `model` replaced by the target's upstream model; the key becomes
//! `Authorization: Bearer …` only while the header is built (marked sensitive, so hyper never
//! logs it). No client header is forwarded: the upstream sees only what this module sets,
//! which is how `x-detour-*` and the app's own (dummy) `Authorization` never leave the pod.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::time::timeout_at;

use super::{Adapter, Call, Failure, HttpClient, KeySource, Reply, sse};
use crate::class::Class;

/// OpenAI's public API base.
pub const DEFAULT_BASE: &str = "https://api.openai.com/v1";
/// Largest upstream JSON body accepted.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Largest upstream error body kept (it is returned to the client for client errors).
const MAX_ERROR_BODY: usize = 256 * 1024;

/// An OpenAI-compatible upstream.
#[derive(Debug)]
pub struct OpenAi {
    base: String,
    key: KeySource,
    client: HttpClient,
}

impl OpenAi {
    pub fn new(endpoint: Option<&str>, key: KeySource, client: HttpClient) -> Self {
        Self {
            base: endpoint.unwrap_or(DEFAULT_BASE).trim_end_matches('/').to_owned(),
            key,
            client,
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

/// Reads a whole body within `deadline` and `limit`.
async fn collect(body: Incoming, deadline: tokio::time::Instant, limit: usize) -> Result<Bytes, Failure> {
    match timeout_at(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Failure::new(
            Class::Timeout,
            "upstream body did not finish in time",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Failure::new(Class::BadResponse, "upstream body too large"))
        }
        Ok(Err(_)) => Err(Failure::new(
            Class::Reset,
            "upstream connection broke while reading the body",
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

impl Adapter for OpenAi {
    async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        let key = self
            .key
            .current()
            .map_err(|m| Failure::new(Class::ConnectError, m))?;
        let bytes = call.body_with_model()?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/{}", self.base, call.endpoint.path()))
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("detour-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                header::ACCEPT,
                if call.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|_| Failure::new(Class::ConnectError, "endpoint is not a valid URL"))?;
        if let Some(key) = key {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| Failure::new(Class::ConnectError, "the API key is not a valid header value"))?;
            value.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let resp = match timeout_at(call.headers_deadline(), self.client.request(req)).await {
            Err(_) => {
                return Err(Failure::new(
                    call.first_byte_class(),
                    "no response from upstream in time",
                ));
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(Failure::new(Class::ConnectError, "could not connect to upstream"));
            }
            Ok(Err(_)) => return Err(Failure::new(Class::Reset, "upstream closed the connection")),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let ra = retry_after(resp.headers());
            let body = collect(resp.into_body(), call.deadline, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            return Err(map_error(status, ra, body));
        }
        if call.stream {
            let is_sse = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if !is_sse {
                return Err(
                    Failure::new(Class::BadResponse, "upstream did not answer a stream with SSE")
                        .status(status),
                );
            }
            return Ok(Reply::Stream(sse::events(resp.into_body())));
        }
        let bytes = collect(resp.into_body(), call.deadline, MAX_RESPONSE).await?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() => Ok(Reply::Json(v)),
            _ => Err(Failure::new(
                Class::BadResponse,
                "upstream answered 2xx with a body that is not JSON",
            )
            .status(status)),
        }
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
