//! Pieces every wire format's answers are built from: a whole JSON body, an SSE `data:`
//! event, and a paced streaming body whose frames leave one by one (as a real provider
//! flushes them), optionally ending in a break.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;

use crate::server::Body;

/// One frame of a paced body: data, or the break that ends the transfer abnormally.
pub type Item = Result<Frame<Bytes>, std::io::Error>;

/// The SSE end marker.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// A request's head and its whole body (empty when it could not be read: a fake answers
/// what it got, as a provider would).
pub async fn read(req: Request<Incoming>) -> (http::request::Parts, Bytes) {
    let (head, body) = req.into_parts();
    let raw = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    (head, raw)
}

/// A whole body.
pub fn whole(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// `status` with `body` as `content_type`.
///
/// # Panics
/// On a status outside 100–999, which is a broken script.
#[expect(
    clippy::expect_used,
    reason = "a script with an impossible status is a broken test"
)]
pub fn full(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(whole(body));
    *r.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `status` with `v` as JSON.
pub fn json(status: u16, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// One SSE event carrying `v`.
pub fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// A data frame.
pub fn frame(b: impl Into<Bytes>) -> Item {
    Ok(Frame::data(b.into()))
}

/// The break that ends a body abnormally (the connection is aborted).
pub fn broken(why: &'static str) -> Item {
    Err(std::io::Error::other(why))
}

/// A body that plays `items`, sleeping the given milliseconds before each (at least one, so
/// each is flushed on its own).
pub fn paced(items: Vec<(u64, Item)>) -> Body {
    let paced = stream::iter(items).then(|(delay, f)| async move {
        tokio::time::sleep(Duration::from_millis(delay.max(1))).await;
        f
    });
    StreamBody::new(paced).boxed_unsync()
}

/// A streamed answer of `content_type` playing `items` (see [`paced`]).
pub fn streamed(content_type: &'static str, items: Vec<(u64, Item)>) -> Response<Body> {
    let mut r = Response::new(paced(items));
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An SSE answer playing `items`.
pub fn sse(items: Vec<(u64, Item)>) -> Response<Body> {
    streamed("text/event-stream", items)
}
