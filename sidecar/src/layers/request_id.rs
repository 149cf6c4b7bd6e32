//! Outermost layer: gives every request an id and makes sure every response — including
//! errors produced by any inner layer — carries `x-detour-request-id` and the other
//! `x-detour-*` response headers (with `none`/`0` when no target was involved).

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Request};
use tower::{Layer, Service};

use crate::body::Response;
use crate::proxy::{H_FALLBACK_COUNT, H_PROVIDER, H_REQUEST_ID, H_TARGET};

/// The request's id, in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// 128 random bits as 32 lowercase hex digits.
    fn generate() -> Self {
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

#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
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
        req.extensions_mut().insert(id);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers_mut();
            if let Some(v) = value {
                h.insert(H_REQUEST_ID, v);
            }
            if !h.contains_key(H_TARGET) {
                h.insert(H_TARGET, HeaderValue::from_static("none"));
            }
            if !h.contains_key(H_PROVIDER) {
                h.insert(H_PROVIDER, HeaderValue::from_static("none"));
            }
            if !h.contains_key(H_FALLBACK_COUNT) {
                h.insert(H_FALLBACK_COUNT, HeaderValue::from_static("0"));
            }
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
