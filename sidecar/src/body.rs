//! The one response body type every layer returns.
//!
//! Its error, [`Aborted`], means "this response is broken: end the transfer abnormally". The
//! servers make that visible to every client, including those that ignore error events in a
//! stream: on HTTP/1.1 the chunked body ends without its terminating chunk and the connection
//! closes; on HTTP/2 the stream is reset.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// A response body that cannot be completed (an upstream stream broke after bytes reached
/// the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the response is incomplete: the upstream stream broke")]
pub struct Aborted;

/// A boxed response body: full bytes for JSON, a stream for SSE.
pub type Body = UnsyncBoxBody<Bytes, Aborted>;

/// A response of the serving path.
pub type Response = http::Response<Body>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body that keeps `guard` alive until the body is done or dropped: a request counted as in
/// flight, a request body's reservation in the buffer budget. The guard's `Drop` is the release.
#[derive(Debug)]
pub struct Guarded<G> {
    body: Body,
    _guard: G,
}

impl<G> Guarded<G> {
    pub fn new(body: Body, guard: G) -> Self {
        Self { body, _guard: guard }
    }
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
