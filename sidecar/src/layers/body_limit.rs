//! The one place the request body limit is enforced. Reads the request body whole, up to a
//! limit, before anything parses it. Over the limit: 413 in OpenAI's error shape (checked on
//! `Content-Length` first, so an honest client is refused without sending the body; hyper then
//! ends the connection and [`crate::conn`] lingers, so a client still sending reads the 413).
//! Memory grows only with the bytes that arrive, never with a declared length, and every byte
//! kept is reserved under the process-wide [`Budget`] until the answer is done (503 when it is
//! exhausted). A body that does not arrive whole within [`BODY_TIMEOUT`]: 408.
//!
//! The inner services get `Request<`[`Bounded`]`>`: the proxy needs the whole JSON body anyway to
//! route by `model` and to replay it on failover. Only this layer makes a [`Bounded`], so a
//! service that takes one (the router, the proxy, the Responses translation) is reached only
//! through the limit: the contract is the type, not a convention.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{Request, header};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use crate::body::{Body, Guarded, Response};
use crate::budget::{Budget, Reservation};
use crate::error::Reason;

/// How long a request body may take to arrive whole.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// A request body read whole by [`BodyLimit`]: at most `--max-body-bytes`, its bytes counted
/// in the buffer budget until the answer is done. Made only here.
#[derive(Clone, Debug)]
pub struct Bounded(Bytes);

impl Bounded {
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A body for a unit test that calls a service behind the limit directly.
    #[cfg(test)]
    pub(crate) fn for_test(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

#[derive(Clone, Debug)]
pub struct BodyLimitLayer {
    max: usize,
    budget: Budget,
}

impl BodyLimitLayer {
    pub fn new(max: usize, budget: Budget) -> Self {
        Self { max, budget }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max: self.max,
            budget: self.budget.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    max: usize,
    budget: Budget,
}

/// Why a body could not be read whole.
enum Unread {
    TooLarge,
    Incomplete,
    Budget(crate::budget::Exhausted),
}

/// Reads `body` whole, at most `max` bytes, reserving each under the budget.
async fn collect<B>(body: B, max: usize, held: &mut Reservation) -> Result<Bytes, Unread>
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| Unread::Incomplete)?.into_data() else {
            continue;
        };
        if held.bytes() + data.len() > max {
            return Err(Unread::TooLarge);
        }
        held.grow(data.len()).map_err(Unread::Budget)?;
        // A body in one frame (the common case) is kept as it came, without a copy.
        match &first {
            None if more.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    more.extend_from_slice(&f);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| more.freeze()))
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<Bounded>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
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
        let mut held = self.budget.reservation();
        Box::pin(async move {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return Ok(Reason::BodyTooLarge { max }.refusal());
            }
            let (parts, body) = req.into_parts();
            let read = tokio::time::timeout(BODY_TIMEOUT, collect(body, max, &mut held));
            let bytes = match read.await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(Unread::TooLarge)) => return Ok(Reason::BodyTooLarge { max }.refusal()),
                Ok(Err(Unread::Incomplete)) => return Ok(Reason::IncompleteBody.refusal()),
                Ok(Err(Unread::Budget(e))) => return Ok(Reason::BufferBudget(e).refusal()),
                Err(_) => {
                    let secs = BODY_TIMEOUT.as_secs();
                    return Ok(Reason::BodyTimeout { secs }.refusal());
                }
            };
            let resp = inner.call(Request::from_parts(parts, Bounded(bytes))).await?;
            if held.bytes() == 0 {
                return Ok(resp);
            }
            // The body stays reserved until the answer is done: the proxy may replay it
            // until then.
            Ok(resp.map(|body| Body::new(Guarded::new(body, held))))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Ready, ready};

    use http::StatusCode;
    use http_body_util::Full;
    use tower::ServiceExt;

    use super::*;
    use crate::layers::request_id::EarlyRefusal;

    /// Echoes the body it was given.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<Bounded>> for Echo {
        type Response = Response;
        type Error = Infallible;
        type Future = Ready<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Bounded>) -> Self::Future {
            ready(Ok(http::Response::new(crate::body::full(
                req.into_body().into_bytes(),
            ))))
        }
    }

    fn post(body: &'static [u8]) -> Request<Full<Bytes>> {
        Request::new(Full::new(Bytes::from_static(body)))
    }

    /// A body is reserved under the budget until its answer is dropped; a body that does not
    /// fit in what is left gets 503 `buffer_budget_exhausted`, marked as a refusal.
    #[tokio::test]
    async fn bodies_are_held_under_the_budget_until_answered() {
        let budget = Budget::new(10);
        let svc = BodyLimitLayer::new(100, budget.clone()).layer(Echo);
        let first = svc.clone().oneshot(post(b"123456")).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(budget.used(), 6);

        let refused = svc.clone().oneshot(post(b"12345")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(
            refused.extensions().get::<EarlyRefusal>(),
            Some(EarlyRefusal("buffer_budget"))
        ));
        let text = refused.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&text).contains("buffer_budget_exhausted"));
        assert_eq!(budget.used(), 6, "a refused body holds nothing");

        let echoed = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&echoed[..], b"123456");
        assert_eq!(budget.used(), 0, "given back once the answer is done");
        let again = svc.oneshot(post(b"12345")).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK);
    }

    /// Over the limit, declared or not: 413, and nothing stays reserved.
    #[tokio::test]
    async fn oversized_bodies_reserve_nothing() {
        let budget = Budget::new(1000);
        let svc = BodyLimitLayer::new(4, budget.clone()).layer(Echo);
        let resp = svc.oneshot(post(b"12345")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(budget.used(), 0);
    }
}
