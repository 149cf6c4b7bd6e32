//! Reads the request body whole, up to a limit, before anything parses it. Over the limit:
//! 413 in OpenAI's error shape (checked on `Content-Length` first, so an honest client is
//! refused without sending the body). The inner services get `Request<Bytes>`: the proxy
//! needs the whole JSON body anyway to route by `model` and to replay it on failover.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::body::Response;
use crate::error::ApiError;

#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    max: usize,
}

impl BodyLimitLayer {
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit { inner, max: self.max }
    }
}

#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    max: usize,
}

fn too_large(max: usize) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        format!("the request body is larger than this sidecar's limit of {max} bytes (--max-body-bytes)"),
    )
    .into_response()
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<Bytes>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max;
        Box::pin(async move {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return Ok(too_large(max));
            }
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, max).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => return Ok(too_large(max)),
                Err(_) => {
                    return Ok(ApiError::invalid(
                        "incomplete_body",
                        "the request body could not be read completely",
                    )
                    .into_response());
                }
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
