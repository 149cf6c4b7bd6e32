//! Errors the sidecar itself answers with, in OpenAI's error shape:
//! `{"error":{"message","type","param","code"}}`.
//!
//! Each error carries facts (the model, the target, the limit hit) and knows its HTTP status;
//! messages name what to fix. Upstream client errors are not built here: they are returned
//! as the upstream sent them.

use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use crate::body::{self, Response};

/// An error answered by the sidecar.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `permission_error`, `not_found_error`, ...
    pub kind: &'static str,
    pub param: Option<&'static str>,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Extra structured detail merged into the `error` object (e.g. the attempt list).
    pub detail: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
            retry_after: None,
            detail: None,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// The JSON body.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (&self.detail, error.as_object_mut()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        json!({ "error": error })
    }

    pub fn into_response(self) -> Response {
        let bytes = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut resp = http::Response::new(body::full(bytes));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
