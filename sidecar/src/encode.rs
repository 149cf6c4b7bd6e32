//! The client's encoding of a committed stream.
//!
//! Contract: the stream state machine in `proxy` decides what happens — a chunk goes out, an
//! undecodable upstream event is passed on, the stream is complete, it broke, the client's own
//! deadline passed — as an [`Out`]; the [`Encoder`] alone turns that into the bytes written to
//! the client. Chat and completions clients get OpenAI's chunk SSE (`data: {chunk}`, one
//! error event, `data: [DONE]`). Anything that changes which events are sent (a continuation
//! spliced in from another target) works on events before this step, so it holds for every
//! client encoding.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use crate::class::Class;
use crate::providers::{Event, OpenAiJson, sse};
use crate::state::RouteRt;

/// What a committed stream sends next, before encoding.
#[derive(Debug)]
pub enum Out<'a> {
    /// One chunk (`chat.completion.chunk` or `text_completion`).
    Chunk(&'a OpenAiJson),
    /// An upstream event whose data is not JSON, passed on as it came (the raw event without
    /// its blank line).
    Opaque(Bytes),
    /// An event of a native pass-through stream, passed on as it came (the raw event without
    /// its blank line).
    Passed(Bytes),
    /// The stream is complete.
    Complete,
    /// The stream broke mid-way: `target` failed with `class`. Nothing follows.
    Broken { target: &'a str, class: Class },
    /// The client's `x-detour-timeout-ms` passed while the stream was open. Nothing follows.
    ClientDeadline,
}

/// How a committed stream is written for its client.
#[derive(Debug)]
pub enum Encoder {
    /// OpenAI's chunk SSE, as chat completions and completions define it.
    Chat(ChatEncoder),
    /// The Responses API's typed events (boxed: it keeps the items streamed so far).
    Responses(Box<crate::responses::stream::Encoder>),
    /// A native Responses stream: the provider's events as they came.
    Native(crate::responses::native::Encoder),
}

impl Encoder {
    /// Chat (and completions) SSE; `model`: the route whose id goes in each chunk's `model`
    /// (`None`: the upstream's is kept).
    pub fn chat(model: Option<Arc<RouteRt>>) -> Self {
        Self::Chat(ChatEncoder { model })
    }

    /// The Responses API's typed events; `echo`: the request fields the response repeats.
    pub fn responses(echo: crate::responses::Echo, model: Option<Arc<RouteRt>>) -> Self {
        Self::Responses(Box::new(crate::responses::stream::Encoder::new(echo, model)))
    }

    /// The bytes for the client.
    pub fn encode(&mut self, out: Out<'_>) -> Bytes {
        match self {
            Self::Chat(c) => c.encode(out),
            Self::Responses(r) => r.encode(out),
            Self::Native(n) => n.encode(out),
        }
    }
}

/// OpenAI's chunk SSE.
#[derive(Debug)]
pub struct ChatEncoder {
    model: Option<Arc<RouteRt>>,
}

impl ChatEncoder {
    fn encode(&self, out: Out<'_>) -> Bytes {
        match out {
            Out::Chunk(a) => sse::encode_answer(a, self.model.as_ref().map(|r| r.route.model.as_str())),
            Out::Opaque(raw) | Out::Passed(raw) => sse::encode(&Event::Opaque(raw)),
            Out::Complete => sse::encode(&Event::Done),
            Out::Broken { target, class } => error_event(target, class),
            Out::ClientDeadline => client_deadline_event(),
        }
    }
}

/// The error event of a stream that broke mid-way (no `[DONE]` follows).
fn error_event(target: &str, class: Class) -> Bytes {
    let v = json!({"error": {
        "message": format!("upstream target {target} failed mid-stream ({class}); the response is incomplete"),
        "type": "upstream_error",
        "param": null,
        "code": class.as_str(),
    }});
    sse::encode(&Event::Data(v))
}

/// The error event of a stream cut by the client's own `x-detour-timeout-ms`.
fn client_deadline_event() -> Bytes {
    let v = json!({"error": {
        "message": "the request's x-detour-timeout-ms passed while the answer was streaming; the response is incomplete",
        "type": "timeout",
        "param": null,
        "code": Class::Timeout.as_str(),
    }});
    sse::encode(&Event::Data(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chat encoding is OpenAI's: each chunk as `data:`, `[DONE]` at the end, one error
    /// event naming the target and the class when the stream broke.
    #[test]
    fn chat_encoding() {
        let mut e = Encoder::chat(None);
        let a = OpenAiJson::from_value(&json!({"id": "c", "model": "up", "choices": []}));
        let chunk = e.encode(Out::Chunk(&a));
        assert!(
            chunk.starts_with(b"data: {") && chunk.ends_with(b"}\n\n"),
            "{chunk:?}"
        );
        assert_eq!(&e.encode(Out::Complete)[..], b"data: [DONE]\n\n");
        assert_eq!(
            &e.encode(Out::Opaque(Bytes::from_static(b"data: x")))[..],
            b"data: x\n\n"
        );
        let broken = e.encode(Out::Broken {
            target: "primary",
            class: Class::Reset,
        });
        let v: serde_json::Value = serde_json::from_slice(&broken[6..]).unwrap();
        assert_eq!(v["error"]["code"], "reset");
        assert!(v["error"]["message"].as_str().unwrap().contains("primary"));
        let late = e.encode(Out::ClientDeadline);
        assert!(late.starts_with(b"data: {\"error\""), "{late:?}");
    }
}
