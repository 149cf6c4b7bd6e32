//! What the translating providers (`anthropic`, `bedrock`, `azure-openai`) share: one POST with
//! the attempt's deadlines turned into classes, bounded body reads, the OpenAI error shape for
//! client errors, and the stream adapter that runs a provider's event translator.
//!
//! Contract: nothing here knows a provider's wire format. Each provider keeps its own error
//! mapper and its own event translator ([`Translate`]), and writes OpenAI's chunks and
//! answers with `assemble`'s writers; this module only moves bytes and turns running out of
//! time or a broken connection into the same classes `openai` uses.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt, stream};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};

use super::client::{self, Dest, UpstreamBody};
use super::{
    Call, Endpoint, Event, EventStream, Failure, HttpClient, OpenAiJson, Reply, ReplyBody, UpstreamMeta,
    answer, sse,
};
use crate::body;
use crate::budget::{Exhausted, Reservation};
use crate::class::Class;

/// Largest upstream JSON body accepted.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Largest upstream error body kept.
pub const MAX_ERROR_BODY: usize = 256 * 1024;
/// A 2xx JSON answer of an OpenAI-shaped upstream up to this size is held whole (classified,
/// its usage counted, its `model` replaceable); a larger one is passed on as it arrives once
/// this much of it — its head — is classified (when the call allows it,
/// [`Call::pass_through`]). Held bytes are counted in the process-wide buffer budget.
pub const HOLD_AT_MOST: usize = 1024 * 1024;

/// The `User-Agent` every provider sends.
pub const USER_AGENT: &str = concat!("detour-sidecar/", env!("CARGO_PKG_VERSION"));

/// Sends `req` (absolute URL) and waits for the response head within the call's header
/// deadline.
pub async fn send(
    client: &HttpClient,
    call: &Call<'_>,
    req: Request<Bytes>,
) -> Result<Response<UpstreamBody>, Failure> {
    head(call, client.request(req)).await
}

/// Sends `req` (its URI `dest`'s path) to `dest` and waits for the response head within the
/// call's header deadline.
pub async fn send_to(
    dest: &Dest,
    call: &Call<'_>,
    req: Request<Bytes>,
) -> Result<Response<UpstreamBody>, Failure> {
    head(call, dest.send(req)).await
}

/// Not an `async fn`: one would hold `sent` twice, as its argument and inside the timeout it
/// awaits, and that size is paid by every attempt in flight.
fn head(
    call: &Call<'_>,
    sent: impl Future<Output = Result<Response<UpstreamBody>, client::Error>>,
) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> {
    let first_byte_class = call.first_byte_class();
    timeout_at(call.headers_deadline(), sent).map(move |r| match r {
        Err(_) => Err(Failure::new(
            first_byte_class,
            "no response from upstream in time",
        )),
        Ok(Err(client::Error::Connect { kind, message })) => {
            Err(Failure::new(Class::ConnectError, format!("{kind}: {message}")))
        }
        Ok(Err(e)) if e.is_protocol() => Err(Failure::new(
            Class::BadResponse,
            "upstream answered with an invalid HTTP/1.1 response",
        )),
        Ok(Err(_)) => Err(Failure::new(Class::Reset, "upstream closed the connection")),
        Ok(Ok(r)) => Ok(r),
    })
}

/// The upstream URL of each OpenAI endpoint, parsed once when the target is loaded (an
/// endpoint that is not a valid URL fails each attempt with a message saying so).
#[derive(Debug)]
pub struct Uris([Option<Dest>; 4]);

impl Uris {
    pub fn new(client: &HttpClient, url: impl Fn(Endpoint) -> String) -> Self {
        Self(
            [
                Endpoint::Chat,
                Endpoint::Completions,
                Endpoint::Embeddings,
                Endpoint::Responses,
            ]
            .map(|e| url(e).parse::<Uri>().ok().and_then(|u| client.dest(&u))),
        )
    }

    pub fn get(&self, endpoint: Endpoint) -> Result<&Dest, Failure> {
        self.0
            .get(endpoint as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| Failure::new(Class::ConnectError, "endpoint is not a valid URL"))
    }
}

/// The POST of an OpenAI-shaped attempt: the client's body with the target's model, JSON,
/// the `Accept` the answer is expected in. The caller adds its credentials.
pub fn post(dest: &Dest, call: &Call<'_>) -> Result<Request<Bytes>, Failure> {
    let body = call.body_with_model()?;
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = dest.path().clone();
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static(if call.stream {
            "text/event-stream"
        } else {
            "application/json"
        }),
    );
    Ok(req)
}

/// Sends an OpenAI-shaped attempt and reads its answer: errors through `openai`'s mapper, a
/// stream as SSE, a JSON body kept as received.
///
/// Not an `async fn`: one would wrap [`openai_shaped_with`]'s future in another, and that
/// size is paid by every attempt in flight.
pub fn openai_shaped<'a>(
    dest: &'a Dest,
    call: &'a Call<'_>,
    req: Request<Bytes>,
) -> impl Future<Output = Result<Reply, Failure>> + 'a {
    openai_shaped_with(dest, call, req, super::openai::map_error)
}

/// [`openai_shaped`] with another provider's error mapper (an OpenAI-compatible endpoint
/// whose errors are in its own shape: Vertex AI's).
pub async fn openai_shaped_with(
    dest: &Dest,
    call: &Call<'_>,
    req: Request<Bytes>,
    map_error: fn(StatusCode, Option<Duration>, Bytes) -> Failure,
) -> Result<Reply, Failure> {
    let resp = send_to(dest, call, req).await?;
    let status = resp.status();
    let meta = UpstreamMeta::from_headers(resp.headers());
    if !status.is_success() {
        let ra = retry_after(resp.headers());
        let body = collect(resp.into_body(), call.deadline, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let mut f = map_error(status, ra, body);
        f.meta = meta;
        return Err(f);
    }
    // Asked for a stream only to assemble the answer, an upstream that ignores `stream` and
    // answers JSON has answered: take it as is.
    if call.assemble && content_type_is(&resp, "application/json") {
        return json_reply(resp, call).await.map(|body| Reply { body, meta });
    }
    if call.stream {
        if !content_type_is(&resp, "text/event-stream") {
            return Err(
                Failure::new(Class::BadResponse, "upstream did not answer a stream with SSE").status(status),
            );
        }
        let events = if call.endpoint == Endpoint::Responses {
            crate::responses::native::events(resp.into_body())
        } else {
            sse::events(resp.into_body())
        };
        return Ok(Reply::stream(events).meta(meta));
    }
    json_reply(resp, call).await.map(|body| Reply { body, meta })
}

/// Reads a 2xx OpenAI-shaped JSON answer: held whole up to [`HOLD_AT_MOST`] bytes, counted in
/// the buffer budget until it is sent; past that, when the call allows, committed on its head
/// — a 2xx whose first [`HOLD_AT_MOST`] bytes are a well-formed beginning of a JSON object —
/// and passed on as it arrives ([`ReplyBody::Passthrough`]).
pub async fn json_reply(resp: Response<UpstreamBody>, call: &Call<'_>) -> Result<ReplyBody, Failure> {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut held = call.budget.reservation();
    let pass_above = call.pass_through.then_some(HOLD_AT_MOST);
    match gather(&mut body, call.deadline, &mut held, pass_above).await? {
        Gathered::Whole(bytes) => OpenAiJson::parse(bytes)
            .map(|a| ReplyBody::Json(a.held(held)))
            .ok_or_else(|| not_json(status)),
        Gathered::Head(head) => {
            if !answer::is_object_head(&head) {
                return Err(not_json(status));
            }
            Ok(ReplyBody::Passthrough(passthrough_body(
                head,
                body,
                call.deadline,
                held,
            )))
        }
    }
}

/// What [`gather`] read.
enum Gathered {
    /// The whole body.
    Whole(Bytes),
    /// The first bytes, past the size to pass through at; the rest is still in the body.
    Head(Bytes),
}

/// Reads a body within `deadline`, every byte reserved in `held`: to its end (at most
/// [`MAX_RESPONSE`]), or, with `pass_above`, until more than that many bytes are in. The bytes
/// are gathered into one buffer as they arrive (a body in one frame is kept as it came), so
/// the peak is about the bytes held, not twice them.
async fn gather(
    body: &mut UpstreamBody,
    deadline: Instant,
    held: &mut Reservation,
    pass_above: Option<usize>,
) -> Result<Gathered, Failure> {
    enum Unread {
        TooLarge,
        Broken,
        Budget(Exhausted),
    }
    let read = async {
        let mut gathered = Gather::default();
        let mut head = false;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| Unread::Broken)?.into_data() else {
                continue;
            };
            let have = gathered.len() + data.len();
            if have > MAX_RESPONSE {
                return Err(Unread::TooLarge);
            }
            held.grow(data.len()).map_err(Unread::Budget)?;
            gathered.push(data);
            if pass_above.is_some_and(|n| have > n) {
                head = true;
                break;
            }
        }
        let bytes = gathered.finish();
        Ok(if head {
            Gathered::Head(bytes)
        } else {
            Gathered::Whole(bytes)
        })
    };
    match timeout_at(deadline, read).await {
        Err(_) => Err(Failure::new(
            Class::Timeout,
            "upstream body did not finish in time",
        )),
        Ok(Err(Unread::TooLarge)) => Err(Failure::new(Class::BadResponse, "upstream body too large")),
        Ok(Err(Unread::Broken)) => Err(Failure::new(
            Class::Reset,
            "upstream connection broke while reading the body",
        )),
        Ok(Err(Unread::Budget(e))) => Err(e.failure()),
        Ok(Ok(read)) => Ok(read),
    }
}

/// The client's body of a passed-through answer: `head`, then the rest of `upstream` as it
/// arrives, within `deadline`; a break or the deadline ends the transfer abnormally. `held`
/// (the head's bytes) is given back when the body is done.
fn passthrough_body(head: Bytes, upstream: UpstreamBody, deadline: Instant, held: Reservation) -> body::Body {
    let rest = stream::unfold(Some(upstream), move |upstream| async move {
        let mut upstream = upstream?;
        loop {
            match timeout_at(deadline, upstream.frame()).await {
                Ok(None) => return None,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(Frame::data(data)), Some(upstream)));
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "passed-through answer broke");
                    return Some((Err(body::Aborted), None));
                }
                Err(_) => {
                    tracing::debug!("passed-through answer outlasted the attempt");
                    return Some((Err(body::Aborted), None));
                }
            }
        }
    });
    let frames = stream::once(std::future::ready(Ok(Frame::data(head)))).chain(rest);
    body::Body::new(body::Guarded::new(StreamBody::new(frames).boxed_unsync(), held))
}

/// A body's frames gathered into one buffer as they arrive: a body in one frame is kept as
/// it came, without a copy.
#[derive(Default)]
struct Gather {
    first: Option<Bytes>,
    all: BytesMut,
}

impl Gather {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.all.len()
    }

    fn push(&mut self, data: Bytes) {
        match self.first.take() {
            None if self.all.is_empty() => self.first = Some(data),
            taken => {
                if let Some(f) = taken {
                    self.all.extend_from_slice(&f);
                }
                self.all.extend_from_slice(&data);
            }
        }
    }

    fn finish(self) -> Bytes {
        self.first.unwrap_or_else(|| self.all.freeze())
    }
}

/// Reads a whole body within `deadline` and `limit`. The bytes are gathered into one buffer
/// as they arrive (a body in one frame is kept as it came), so the peak is about the body's
/// size, not twice it.
pub async fn collect(body: UpstreamBody, deadline: Instant, limit: usize) -> Result<Bytes, Failure> {
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut gathered = Gather::default();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| ())?.into_data() else {
                continue;
            };
            if gathered.len() + data.len() > limit {
                return Ok(None);
            }
            gathered.push(data);
        }
        Ok(Some(gathered.finish()))
    };
    match timeout_at(deadline, read).await {
        Err(_) => Err(Failure::new(
            Class::Timeout,
            "upstream body did not finish in time",
        )),
        Ok(Ok(None)) => Err(Failure::new(Class::BadResponse, "upstream body too large")),
        Ok(Err(())) => Err(Failure::new(
            Class::Reset,
            "upstream connection broke while reading the body",
        )),
        Ok(Ok(Some(bytes))) => Ok(bytes),
    }
}

/// Reads a 2xx JSON body (to translate it), counted in the buffer budget while it is read and
/// parsed.
pub async fn json_body(resp: Response<UpstreamBody>, call: &Call<'_>) -> Result<Value, Failure> {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut held = call.budget.reservation();
    let (Gathered::Whole(bytes) | Gathered::Head(bytes)) =
        gather(&mut body, call.deadline, &mut held, None).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(not_json(status)),
    }
}

fn not_json(status: StatusCode) -> Failure {
    Failure::new(
        Class::BadResponse,
        "upstream answered 2xx with a body that is not JSON",
    )
    .status(status)
}

/// Whether the response's content type starts with `prefix`.
pub fn content_type_is<B>(resp: &Response<B>, prefix: &str) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(prefix))
}

/// OpenAI's error body, for client errors a translating provider returns.
pub fn openai_error(message: &str, kind: &str, param: Option<&str>) -> Bytes {
    let v = json!({"error": {"message": message, "type": kind, "param": param, "code": null}});
    Bytes::from(v.to_string())
}

/// The failure for a translating provider's error answer: the class its mapper chose, the
/// upstream message in OpenAI's error shape for the client, and the provider's own error type
/// in the detail for logs.
pub fn translated_failure(
    provider: &str,
    class: Class,
    status: StatusCode,
    retry_after: Option<Duration>,
    message: &str,
    openai_type: &str,
    kind: &str,
) -> Failure {
    Failure {
        class,
        status: Some(status.as_u16()),
        retry_after,
        body: Some(openai_error(message, openai_type, None)),
        detail: format!(
            "{provider} answered {} {}",
            status.as_u16(),
            if kind.is_empty() { "(no error type)" } else { kind }
        )
        .into(),
        meta: UpstreamMeta::default(),
    }
}

/// Refuses, as `provider` cannot express it, a call to any endpoint but chat completions
/// (the providers whose API has only a chat shape).
pub fn chat_only(provider: &'static str, call: &Call<'_>) -> Result<(), Failure> {
    if call.endpoint == Endpoint::Chat {
        return Ok(());
    }
    Err(unsupported(
        provider,
        "endpoint",
        &format!("/v1/{} is not served by this provider", call.endpoint.path()),
    ))
}

/// A request this provider cannot express: a 400 in OpenAI's shape naming the field, never
/// sent upstream (another provider would be no different for a malformed request, and the
/// message tells the client what to change).
pub fn unsupported(provider: &'static str, param: &str, what: &str) -> Failure {
    let message = format!("{param}: {what} (provider {provider})");
    let mut f = Failure::new(
        Class::ClientError,
        format!("request not expressible for {provider}"),
    )
    .status(StatusCode::BAD_REQUEST);
    f.body = Some(openai_error(&message, "invalid_request_error", Some(param)));
    f
}

/// `Retry-After` (seconds), as `openai` reads it.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    super::openai::retry_after(headers)
}

/// A provider's stream translator: one upstream event in, zero or more OpenAI events out.
pub trait Translate: Send + 'static {
    /// Translates one upstream event, pushing OpenAI events (the last one `Event::Done`).
    fn event(&mut self, upstream: Value, out: &mut VecDeque<Event>) -> Result<(), Failure>;
    /// Whether the upstream signalled the end of the message (so the stream may end).
    fn finished(&self) -> bool;
    /// The upstream body ended before [`Translate::finished`]: push the last events if that
    /// is a clean end for this provider, else fail (by default: a broken stream).
    fn end(&mut self, _out: &mut VecDeque<Event>) -> Result<(), Failure> {
        Err(Failure::new(
            Class::Reset,
            "upstream stream ended before the end of the message",
        ))
    }
}

/// Runs `translator` over upstream events; an upstream that ends before the end of the
/// message is a broken stream ([`Class::Reset`], unless [`Translate::end`] says otherwise),
/// never a silent truncation.
pub fn translated<S, T>(upstream: S, translator: T) -> EventStream
where
    S: Stream<Item = Result<Value, Failure>> + Send + Unpin + 'static,
    T: Translate,
{
    struct St<S, T> {
        upstream: S,
        translator: T,
        out: VecDeque<Event>,
        done: bool,
        /// The message ended cleanly before the upstream body did: the rest of the body is
        /// read (when the caller asks for more) so the connection can be kept.
        drain: bool,
    }
    let st = St {
        upstream,
        translator,
        out: VecDeque::new(),
        done: false,
        drain: false,
    };
    Box::pin(stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.out.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.done {
                if std::mem::take(&mut st.drain) {
                    while st.upstream.next().await.is_some() {}
                }
                return None;
            }
            match st.upstream.next().await {
                Some(Ok(v)) => {
                    if let Err(f) = st.translator.event(v, &mut st.out) {
                        st.done = true;
                        st.out.clear();
                        return Some((Err(f), st));
                    }
                    if st.translator.finished() {
                        st.done = true;
                        st.drain = true;
                    }
                }
                Some(Err(f)) => {
                    st.done = true;
                    return Some((Err(f), st));
                }
                None => {
                    st.done = true;
                    if let Err(f) = st.translator.end(&mut st.out) {
                        return Some((Err(f), st));
                    }
                }
            }
        }
    }))
}

/// Frames a non-OpenAI SSE body (Anthropic's) into the JSON of each event's data, leaving
/// the meaning of each event — errors included — to the provider's translator. (The OpenAI
/// reader, `sse::events`, interprets `{"error": …}` itself, which would classify every
/// provider's error event alike.) Same framer as `sse::events`.
pub fn sse_json<B>(body: B) -> impl Stream<Item = Result<Value, Failure>> + Send + Unpin + 'static
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    sse::frames(body, sse::parse_json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    /// Events split at any byte are reassembled, comments and `event:` lines are skipped, and
    /// an error event is handed on as data for the provider to classify.
    #[tokio::test]
    async fn sse_json_frames_events() {
        let text = b": c\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\nevent: error\r\ndata: {\"type\":\"error\",\"error\":{}}\r\n\r\n";
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = text
            .chunks(2)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let got: Vec<Value> = sse_json(StreamBody::new(stream::iter(frames)))
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(
            got,
            vec![json!({"type": "ping"}), json!({"type": "error", "error": {}})]
        );
    }
}
