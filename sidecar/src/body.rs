//! The one response body type every layer returns.
//!
//! Its error, [`Aborted`], means "this response is broken: end the transfer abnormally". The
//! servers make that visible to every client, including those that ignore error events in a
//! stream: on HTTP/1.1 the chunked body ends without its terminating chunk and the connection
//! closes; on HTTP/2 the stream is reset.

use bytes::Bytes;
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
