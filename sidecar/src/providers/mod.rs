//! Upstream providers behind one trait, dispatched through an enum.
//!
//! Contract of [`Adapter::send`]: given the client's OpenAI-shaped request, call the upstream
//! and return an OpenAI-shaped answer — a JSON body, or a stream of OpenAI chunk events — or a
//! [`Failure`] classified once by that provider's own error mapper. Providers that speak
//! another wire format (Anthropic's Messages, Bedrock's Converse with its event-stream framing
//! and SigV4, Azure's deployment URLs) translate inside their module, keep their wire types
//! private, and plug in as one more enum variant: the proxy core never changes.
//!
//! Deadlines are passed in ([`Call::deadline`], [`Call::first_byte_deadline`]); a provider
//! turns running out of either into [`Class::Timeout`] / [`Class::FirstByteTimeout`].

pub mod answer;
pub mod anthropic;
pub mod assemble;
pub mod azure;
pub mod bedrock;
pub(crate) mod chat;
pub mod client;
pub mod meta;
pub mod mock;
pub mod openai;
pub mod sse;
mod upstream;
pub mod vertex;

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::StatusCode;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::budget::Budget;
use crate::class::Class;
pub use answer::OpenAiJson;

pub use crate::credentials::{KeySource, Secret};
pub(crate) use assemble::now_unix;
pub use client::HttpClient;
pub use meta::UpstreamMeta;
pub(crate) use upstream::collect as upstream_collect;

/// The OpenAI endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// OpenAI's Responses API, passed through to a target that serves it natively.
    Responses,
}

impl Endpoint {
    /// The path below the API base (`/v1`).
    pub const fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
        }
    }
}

/// One attempt's request.
#[derive(Debug)]
pub struct Call<'a> {
    pub endpoint: Endpoint,
    /// The client's body, `model` still the route's id.
    pub request: &'a answer::RequestBody,
    /// The target's upstream model.
    pub model: &'a str,
    /// Ask the upstream for a stream.
    pub stream: bool,
    /// The client asked for a JSON answer, and the proxy sends the request as a stream to
    /// assemble it (`stream` is then true): the upstream is asked for a stream with usage.
    pub assemble: bool,
    /// End of this attempt (per-attempt timeout or what is left of the total).
    pub deadline: Instant,
    /// Streams only: the first event must arrive by then.
    pub first_byte_deadline: Instant,
    /// The process-wide budget the answer's bytes are counted in while they are held.
    pub budget: &'a Budget,
    /// A JSON answer larger than [`upstream::HOLD_AT_MOST`] may be passed on as it arrives
    /// once its head is classified ([`ReplyBody::Passthrough`]); `false` when the whole
    /// answer must be read (its `model` is to be replaced).
    pub pass_through: bool,
}

impl Call<'_> {
    /// The class of running out of time while waiting for the first byte.
    pub fn first_byte_class(&self) -> Class {
        if self.stream && self.first_byte_deadline < self.deadline {
            Class::FirstByteTimeout
        } else {
            Class::Timeout
        }
    }

    /// When the first byte must arrive: for streams the first-byte deadline; otherwise the
    /// upstream answers only when it is done, so the attempt deadline.
    pub fn headers_deadline(&self) -> Instant {
        if self.stream {
            self.first_byte_deadline
        } else {
            self.deadline
        }
    }
}

/// What an assembled answer's request adds: a stream with a final usage chunk.
const STREAM_FIELDS: &[u8] = br#""stream":true,"stream_options":{"include_usage":true}"#;

/// The client's body with `model` replaced, serialised without copying the body (a prompt
/// can be megabytes; each attempt would otherwise deep-clone it).
#[derive(Debug)]
pub struct WithModel<'a> {
    pub body: &'a Map<String, Value>,
    pub model: &'a str,
    /// Also ask for a stream with a final usage chunk (`stream: true`,
    /// `stream_options.include_usage: true`), replacing the client's values.
    pub as_stream: bool,
}

impl Call<'_> {
    /// The client's body as a JSON tree (built on first use); a body only the tree refuses
    /// is a 400 naming why.
    pub fn body(&self) -> Result<&Map<String, Value>, Failure> {
        self.request.map().map_err(|message| {
            let mut f = Failure::new(Class::ClientError, "request body is not valid JSON")
                .status(StatusCode::BAD_REQUEST);
            f.body = Some(upstream::openai_error(message, "invalid_request_error", None));
            f
        })
    }

    /// Whether the stream should end with a usage chunk: the client asked for one, or the
    /// answer is assembled (its `usage` comes from that chunk).
    pub fn include_usage(&self) -> Result<bool, Failure> {
        Ok(self.assemble || chat::include_usage(self.body()?))
    }

    /// The client's body as bytes for an OpenAI-shaped upstream, `model` replaced by the
    /// target's upstream model: the client's own bytes with the model spliced in, or (when
    /// they cannot be used as they are, or the answer is assembled from a stream) the body
    /// serialised again.
    pub fn body_with_model(&self) -> Result<Bytes, Failure> {
        if self.assemble {
            // The common case without the tree: the client's bytes, the model spliced in and
            // the stream fields put first (only when the body has none, to keep keys unique).
            if !self.request.has_stream_keys()
                && let Some(b) = self
                    .request
                    .model_span()
                    .and_then(|span| answer::splice(self.request.raw(), span, self.model))
                && let Some(rest) = b.strip_prefix(b"{")
            {
                let sep: &[u8] = if rest.trim_ascii_start().starts_with(b"}") {
                    b""
                } else {
                    b","
                };
                let mut out = Vec::with_capacity(b.len() + STREAM_FIELDS.len() + 1);
                out.extend_from_slice(b"{");
                out.extend_from_slice(STREAM_FIELDS);
                out.extend_from_slice(sep);
                out.extend_from_slice(rest);
                return Ok(Bytes::from(out));
            }
            return serde_json::to_vec(&WithModel {
                body: self.body()?,
                model: self.model,
                as_stream: true,
            })
            .map(Bytes::from)
            .map_err(|_| Failure::new(Class::ClientError, "request body could not be serialised"));
        }
        if let Some(b) = self
            .request
            .model_span()
            .and_then(|span| answer::splice(self.request.raw(), span, self.model))
        {
            return Ok(b);
        }
        serde_json::to_vec(&WithModel {
            body: self.body()?,
            model: self.model,
            as_stream: false,
        })
        .map(Bytes::from)
        .map_err(|_| Failure::new(Class::ClientError, "request body could not be serialised"))
    }
}

impl serde::Serialize for WithModel<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let has_model = self.body.contains_key("model");
        let mut map = s.serialize_map(None)?;
        if !has_model {
            map.serialize_entry("model", self.model)?;
        }
        for (k, v) in self.body {
            match k.as_str() {
                "model" => map.serialize_entry(k, self.model)?,
                "stream" | "stream_options" if self.as_stream => {}
                _ => map.serialize_entry(k, v)?,
            }
        }
        if self.as_stream {
            map.serialize_entry("stream", &true)?;
            map.serialize_entry("stream_options", &serde_json::json!({"include_usage": true}))?;
        }
        map.end()
    }
}

/// One event of an OpenAI-shaped stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `data: {json}` event built by a translating provider (a `chat.completion.chunk` or
    /// `text_completion`).
    Data(Value),
    /// A `data: {json}` event of an OpenAI-shaped upstream, passed on as it came.
    Raw(OpenAiJson),
    /// `data: [DONE]`.
    Done,
    /// An event of a pass-through upstream whose data is not a JSON object: forwarded to the
    /// client byte for byte (the raw event without its blank line) and counted as an anomaly.
    Opaque(Bytes),
    /// An event of a native Responses stream, forwarded byte for byte
    /// ([`crate::responses::native`]).
    Native(crate::responses::native::NativeEvent),
}

impl Event {
    /// The event's JSON, however it was built (tests and diagnostics).
    pub fn json(&self) -> Option<Value> {
        match self {
            Self::Data(v) => Some(v.clone()),
            Self::Raw(a) => a.to_value(),
            Self::Native(n) => crate::responses::native::event_json(n),
            Self::Done | Self::Opaque(_) => None,
        }
    }
}

/// A stream of OpenAI-shaped events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Failure>> + Send>>;

/// What an upstream answered, already OpenAI-shaped, with the head's headers the client reads.
#[derive(Debug)]
pub struct Reply {
    pub body: ReplyBody,
    pub meta: UpstreamMeta,
}

impl Reply {
    /// A JSON answer without upstream headers (add them with [`Reply::meta`]).
    pub fn json(answer: OpenAiJson) -> Self {
        Self {
            body: ReplyBody::Json(answer),
            meta: UpstreamMeta::default(),
        }
    }

    /// A stream without upstream headers (add them with [`Reply::meta`]).
    pub fn stream(events: EventStream) -> Self {
        Self {
            body: ReplyBody::Stream(events),
            meta: UpstreamMeta::default(),
        }
    }

    /// The same reply with the headers of the upstream head it came with.
    #[must_use]
    pub fn meta(mut self, meta: UpstreamMeta) -> Self {
        self.meta = meta;
        self
    }
}

/// The body of a [`Reply`].
pub enum ReplyBody {
    Json(OpenAiJson),
    Stream(EventStream),
    /// A JSON answer too large to hold, committed on its head (a 2xx whose body starts as a
    /// JSON object): the client's body, the head and then the rest as it arrives. Its usage is
    /// not read and its `model` is not replaced; a break after the head ends the transfer
    /// abnormally.
    Passthrough(crate::body::Body),
}

impl fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(_) => f.write_str("ReplyBody::Json"),
            Self::Stream(_) => f.write_str("ReplyBody::Stream"),
            Self::Passthrough(_) => f.write_str("ReplyBody::Passthrough"),
        }
    }
}

/// A failed attempt, classified once.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: Class,
    pub status: Option<u16>,
    /// From a 429's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The upstream's error body, returned as-is for client errors.
    pub body: Option<Bytes>,
    /// Facts for logs and the error message. Never request content, never a key.
    pub detail: Cow<'static, str>,
    /// The headers of the upstream's error answer the client reads (request id, rate limits),
    /// when the failure is returned to it.
    pub meta: UpstreamMeta,
}

impl Failure {
    pub fn new(class: Class, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            class,
            status: None,
            retry_after: None,
            body: None,
            detail: detail.into(),
            meta: UpstreamMeta::default(),
        }
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = Some(status.as_u16());
        self
    }
}

/// What every provider implements. Enum dispatch through [`Provider`] keeps the hot path
/// free of boxing and lets each provider keep its own wire types private.
pub trait Adapter {
    fn send(&self, call: &Call<'_>) -> impl Future<Output = Result<Reply, Failure>> + Send;
}

/// The providers of this build.
#[derive(Debug)]
pub enum Provider {
    // Boxed: the HTTP client makes it much larger than the others.
    OpenAi(Box<openai::OpenAi>),
    Anthropic(Box<anthropic::Anthropic>),
    Bedrock(Box<bedrock::Bedrock>),
    Azure(Box<azure::Azure>),
    Vertex(Box<vertex::Vertex>),
    Mock(mock::Mock),
}

impl Provider {
    /// The adapter for a non-mock target (the mock needs the target's shared script cursor).
    pub fn for_target(t: &detour_api::table::Target, http: &HttpClient) -> Self {
        use detour_api::table::Provider as Kind;
        let api_key = || KeySource::from_config(t.credentials.as_ref().and_then(|c| c.api_key.as_ref()));
        match t.provider {
            Kind::Anthropic => Self::Anthropic(Box::new(anthropic::Anthropic::new(
                t.endpoint.as_deref(),
                t.api_version.as_deref(),
                api_key(),
                http.clone(),
            ))),
            Kind::Bedrock => Self::Bedrock(Box::new(bedrock::Bedrock::new(t, http.clone()))),
            Kind::Vertex => Self::Vertex(Box::new(vertex::Vertex::new(t, http))),
            Kind::AzureOpenai => Self::Azure(Box::new(
                azure::Azure::new(
                    t.endpoint.as_deref(),
                    &t.model,
                    t.api_version.as_deref(),
                    api_key(),
                    http,
                )
                .with_workload_identity(
                    t.credentials
                        .as_ref()
                        .and_then(|c| c.azure_workload_identity.as_ref())
                        .map(crate::credentials::azure::WorkloadIdentity::from_config),
                ),
            )),
            Kind::Openai | Kind::OpenaiCompatible | Kind::Mock => Self::OpenAi(Box::new(
                openai::OpenAi::new(t.endpoint.as_deref(), api_key(), http),
            )),
        }
    }

    pub async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        match self {
            Self::OpenAi(p) => p.send(call).await,
            // Boxed: the largest provider's attempt sets the size of every request's future.
            // The Messages reader Anthropic shares with Claude on Vertex (and Vertex's token
            // fetch in front of it) made theirs the largest: a separate allocation for their
            // requests only keeps every other request small.
            Self::Anthropic(p) => Box::pin(p.send(call)).await,
            Self::Bedrock(p) => p.send(call).await,
            Self::Azure(p) => p.send(call).await,
            Self::Vertex(p) => Box::pin(p.send(call)).await,
            Self::Mock(p) => p.send(call).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream body is the client's with only `model` replaced.
    #[test]
    fn with_model_replaces_only_model() {
        let body =
            serde_json::json!({"model": "route", "messages": [{"role": "user", "content": "hi"}], "n": 1});
        let out = serde_json::to_value(WithModel {
            body: body.as_object().unwrap(),
            model: "up",
            as_stream: false,
        })
        .unwrap();
        assert_eq!(
            out,
            serde_json::json!({"model": "up", "messages": [{"role": "user", "content": "hi"}], "n": 1})
        );
    }

    /// An assembled answer asks the upstream for a stream with usage, whatever the client's
    /// body said about streaming.
    #[test]
    fn as_stream_asks_for_a_stream_with_usage() {
        let body = serde_json::json!({"model": "route", "stream": false, "stream_options": {"x": 1}, "n": 1});
        let out = serde_json::to_value(WithModel {
            body: body.as_object().unwrap(),
            model: "up",
            as_stream: true,
        })
        .unwrap();
        assert_eq!(
            out,
            serde_json::json!({"model": "up", "n": 1, "stream": true, "stream_options": {"include_usage": true}})
        );
    }
}
