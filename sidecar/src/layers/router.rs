//! Innermost service: dispatches by method and path to the proxy (`POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`; `/v1/responses` through its translation) or answers `GET /v1/models` and `GET /v1/models/{id}`
//! from the table being served. Anything else is a 404 (or 405) in OpenAI's error shape.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, header};
use serde_json::json;
use tower::Service;

use crate::body::{self, Response};
use crate::error::Reason;
use crate::layers::body_limit::Bounded;
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

/// One route id as OpenAI's model object.
fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "detour"})
}

fn json_response(v: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = http::Response::new(body::full(bytes));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn models(shared: &Shared) -> Response {
    let data: Vec<serde_json::Value> = shared
        .table
        .load()
        .as_ref()
        .map(|s| s.models.iter().map(|m| model_object(m)).collect())
        .unwrap_or_default();
    json_response(&json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: `raw` is the path after `/v1/models/`, percent-encoded or not (route
/// ids contain `/`; some clients send it as `%2F`, some as it is).
fn model(shared: &Shared, raw: &str) -> Response {
    let id = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let known = shared
        .table
        .load()
        .as_ref()
        .is_some_and(|s| s.routes.contains_key(id.as_ref()));
    if known {
        return json_response(&model_object(&id));
    }
    Reason::NoSuchModel { id: id.into_owned() }.into_response()
}

impl Service<Request<Bounded>> for Router {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bounded>) -> Self::Future {
        let shared = self.shared.clone();
        let endpoint = match req.uri().path().trim_end_matches('/') {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/models" if req.method() == Method::GET => {
                return Box::pin(async move { Ok(models(&shared)) });
            }
            "/v1/models" => None,
            "/v1/responses" if req.method() == Method::POST => {
                return Box::pin(crate::responses::handle(shared, req).map(Ok));
            }
            "/v1/responses" => None,
            path if path.starts_with("/v1/models/") && req.method() == Method::GET => {
                let resp = model(&shared, &path["/v1/models/".len()..]);
                return Box::pin(async move { Ok(resp) });
            }
            path if path.starts_with("/v1/models/") => None,
            path => {
                let resp = Reason::UnknownUrl {
                    path: path.to_owned(),
                }
                .into_response();
                return Box::pin(async move { Ok(resp) });
            }
        };
        match endpoint {
            Some(ep) if req.method() == Method::POST => Box::pin(proxy::handle(shared, ep, req).map(Ok)),
            _ => {
                let resp = Reason::MethodNotAllowed {
                    method: req.method().clone(),
                    path: req.uri().path().to_owned(),
                }
                .into_response();
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}
