//! Innermost service: dispatches by method and path to the proxy (`POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`) or answers `GET /v1/models` from the table being
//! served. Anything else is a 404 (or 405) in OpenAI's error shape.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, StatusCode, header};
use serde_json::json;
use tower::Service;

use crate::body::{self, Response};
use crate::error::ApiError;
use crate::providers::Endpoint;
use crate::proxy::{self, Shared};

#[derive(Clone, Debug)]
pub struct Router {
    shared: Arc<Shared>,
}

impl Router {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn models(shared: &Shared) -> Response {
    let data: Vec<serde_json::Value> = shared
        .table
        .load()
        .as_ref()
        .map(|s| {
            s.models
                .iter()
                .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "detour"}))
                .collect()
        })
        .unwrap_or_default();
    let bytes = serde_json::to_vec(&json!({"object": "list", "data": data})).unwrap_or_default();
    let mut resp = http::Response::new(body::full(bytes));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl Service<Request<Bytes>> for Router {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        let endpoint = match req.uri().path().trim_end_matches('/') {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/models" if req.method() == Method::GET => {
                return Box::pin(async move { Ok(models(&shared)) });
            }
            "/v1/models" => None,
            path => {
                let msg = format!(
                    "no route for {path}; this sidecar serves POST /v1/chat/completions, /v1/completions, /v1/embeddings and GET /v1/models"
                );
                return Box::pin(async move {
                    Ok(
                        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", msg)
                            .into_response(),
                    )
                });
            }
        };
        match endpoint {
            Some(ep) if req.method() == Method::POST => Box::pin(proxy::handle(shared, ep, req).map(Ok)),
            _ => {
                let msg = format!("method {} is not allowed on {}", req.method(), req.uri().path());
                Box::pin(async move {
                    Ok(ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "invalid_request_error",
                        "method_not_allowed",
                        msg,
                    )
                    .into_response())
                })
            }
        }
    }
}
