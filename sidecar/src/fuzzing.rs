//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): everything the sidecar
//! does with bytes it does not control — a client's request body, an upstream's response body,
//! an upstream's SSE stream, Bedrock's event-stream frames. Each must reject bad input with an
//! error, never panic, and never take more than linear time.

use bytes::{Bytes, BytesMut};
use detour_api::table::{Scoring, Strategy};
use futures_util::StreamExt;
use serde_json::Value;

use crate::providers::{anthropic, bedrock, chat, sse};
use crate::routing::{Needs, decide};

/// A client's request body, through everything that reads it before a provider is called:
/// JSON parsing, capability needs, the complexity score and the cost/quality decision, and the
/// OpenAI → Anthropic and OpenAI → Bedrock translations.
pub fn request_body(bytes: &[u8]) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let stream = map.get("stream").and_then(Value::as_bool) == Some(true);
    let _ = Needs::of(&map, bytes.len(), stream);
    let _ = crate::scoring::score_map(&map);
    let scoring = Scoring {
        simple_below: None,
        complex_above: None,
        disabled: false,
    };
    for s in [
        Strategy::CostOptimized,
        Strategy::Balanced,
        Strategy::QualityFirst,
    ] {
        let d = decide(s, &scoring, &map);
        if let Some(v) = d.value {
            assert!((0.0..=1.0).contains(&v), "score out of range: {v}");
        }
        let _ = d.rule();
    }
    for provider in ["anthropic", "bedrock"] {
        if let Ok(c) = chat::read(provider, &map) {
            if provider == "anthropic" {
                let _ = anthropic::to_request(&c, "m", stream);
            } else {
                let _ = bedrock::to_request(&c);
            }
        }
    }
}

/// An upstream's non-streaming answer, translated back to a `chat.completion`.
pub fn response_body(bytes: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let _ = anthropic::from_response(&v, 0);
    let _ = bedrock::from_response(&v, "id", "m", 0);
}

/// An upstream SSE stream, delivered in the chunks `cuts` splits it into, read both as
/// OpenAI events and as the raw JSON events other providers' translators get.
pub fn sse_stream(bytes: &[u8], cuts: &[usize]) {
    let body = || {
        http_body_util::StreamBody::new(futures_util::stream::iter(
            split(bytes, cuts)
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(c))),
        ))
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let mut events = sse::events(body());
        while let Some(Ok(_)) = events.next().await {}
        let mut raw = sse::frames(body(), sse::parse_json);
        while let Some(Ok(_)) = raw.next().await {}
    });
}

/// Bedrock event-stream frames: decode until the buffer is used up or rejected.
pub fn event_stream(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(message)) = bedrock::eventstream::decode(&mut buf) {
        let _ = message.header(":event-type");
    }
}

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = Bytes::copy_from_slice(bytes);
    for &c in cuts {
        if rest.is_empty() {
            break;
        }
        let at = c % rest.len() + 1;
        out.push(rest.split_to(at.min(rest.len())));
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}
