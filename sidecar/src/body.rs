//! The one response body type every layer returns.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// A boxed response body: full bytes for JSON, a stream for SSE.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A response of the serving path.
pub type Response = http::Response<Body>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}
