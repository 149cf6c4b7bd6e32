//! Outermost layer: gives every request an id, and is the one writer of the `x-detour-*`
//! response headers: every response — a proxied answer or stream, the proxy's own errors, and
//! those of any inner layer — gets `x-detour-request-id` and the rest from the [`Stamp`] the
//! proxy left on it (`none`/`0` when there is none: no target was involved). A response an
//! inner layer marked [`EarlyRefusal`] (a request refused before routing: malformed, over a limit)
//! is counted in `detour_refused_requests_total` and gets an audit line.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, StatusCode};
use tower::{Layer, Service};

use crate::audit::{AuditRecord, now_ms};
use crate::body::Response;
use crate::headers::Stamp;
use crate::proxy::Shared;

/// The request's id, in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// 128 random bits as 32 lowercase hex digits.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bits = fastrand::u128(..);
        let mut id = [0u8; 32];
        for digit in id.iter_mut().rev() {
            *digit = HEX[(bits & 0xf) as usize];
            bits >>= 4;
        }
        Self(String::from_utf8_lossy(&id).into_owned())
    }
}

/// Marks a response as a refusal before routing; the value is the reason (a metric label).
#[derive(Clone, Copy, Debug)]
pub struct EarlyRefusal(pub &'static str);

/// Counts a refusal and writes its audit line.
pub fn record_refusal(shared: &Shared, id: &str, endpoint: &'static str, status: StatusCode, reason: &str) {
    shared.metrics.refused.with_label_values(&[reason]).inc();
    shared.audit.write(AuditRecord {
        ts_ms: now_ms(),
        request_id: id.to_owned(),
        endpoint,
        route: None,
        rule: None,
        score: None,
        stream: false,
        target: None,
        provider: None,
        upstream_request_id: None,
        fallback_count: 0,
        attempts: Vec::new(),
        skipped: Vec::new(),
        status: status.as_u16(),
        outcome: "refused",
        latency_ms: 0.0,
        overhead_us: 0,
        stream_error: None,
        continuations: Vec::new(),
    });
}

/// The endpoint named in audit lines for a request path.
fn endpoint_of(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/v1/chat/completions" => "chat/completions",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        "/v1/models" => "models",
        "/v1/responses" => "responses",
        p if p.starts_with("/v1/models/") => "models",
        _ => "none",
    }
}

#[derive(Clone, Debug)]
pub struct RequestIdLayer {
    shared: Arc<Shared>,
}

impl RequestIdLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = RequestId::generate();
        let value = HeaderValue::from_str(&id.0).ok();
        let endpoint = endpoint_of(req.uri().path());
        let shared = self.shared.clone();
        req.extensions_mut().insert(id);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(EarlyRefusal(reason)) = resp.extensions().get::<EarlyRefusal>().copied() {
                let id = value.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default();
                record_refusal(&shared, id, endpoint, resp.status(), reason);
            }
            let stamp = resp.extensions_mut().remove::<Stamp>().unwrap_or_default();
            stamp.write(value, resp.headers_mut());
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are 32 lowercase hex digits (128 random bits) and do not repeat.
    #[test]
    fn ids_are_128_bit_hex() {
        let a = RequestId::generate().0;
        let b = RequestId::generate().0;
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
