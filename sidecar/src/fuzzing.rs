//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): everything the sidecar
//! does with bytes it does not control — a client's request body, an upstream's answer body,
//! an upstream's SSE stream, Bedrock's event-stream frames (HTTP itself is hyper's, fuzzed
//! upstream). Each must reject bad input with an error, never panic, and never take more than
//! linear time.

use bytes::{Bytes, BytesMut};
use detour_api::table::{Scorer, Scoring, Strategy};
use futures_util::StreamExt;
use serde_json::Value;

use crate::providers::answer::{RequestBody, Usage, splice};
use crate::providers::{OpenAiJson, anthropic, bedrock, chat, sse};
use crate::routing::{Needs, decide};

/// A client's request body, through everything that reads it before a provider is called:
/// JSON parsing, capability needs, the complexity score and the cost/quality decision, and the
/// OpenAI → Anthropic and OpenAI → Bedrock translations.
pub fn request_body(bytes: &[u8]) {
    request_reading_agrees(bytes);
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let stream = map.get("stream").and_then(Value::as_bool) == Some(true);
    let _ = Needs::of(&map, bytes.len(), stream);
    let _ = crate::scoring::score_map(&map);
    for (scorer, s) in [Scorer::V1, Scorer::V2, Scorer::Length]
        .into_iter()
        .flat_map(|v| {
            [
                Strategy::CostOptimized,
                Strategy::Balanced,
                Strategy::QualityFirst,
            ]
            .map(|s| (v, s))
        })
    {
        let scoring = Scoring {
            simple_below: None,
            complex_above: None,
            disabled: false,
            scorer,
            cheap_share: None,
        };
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

/// `bytes` read as a tree and by `read`, when both accept them; a one-pass reader that
/// refuses an object the tree accepts is a finding, and so is one that accepts what serde's
/// own skipping (`IgnoredAny`) refuses.
fn both<T>(
    bytes: &[u8],
    read: impl FnOnce(Bytes) -> Option<T>,
) -> Option<(serde_json::Map<String, Value>, T)> {
    let tree = serde_json::from_slice::<Value>(bytes);
    let read = read(Bytes::copy_from_slice(bytes));
    match (tree, read) {
        (Ok(Value::Object(map)), Some(read)) => Some((map, read)),
        (Err(e), Some(_)) => {
            // The readers skip the values they do not look at as serde does, which checks
            // their syntax but not the range of numbers or the pairing of surrogate escapes.
            // (serde_json's tree also reads an object whose first key is its private
            // raw-value token as that token's string, parsed.)
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok(),
                "a document serde's skipping refuses was accepted: {e}"
            );
            None
        }
        (tree, _) => {
            assert!(
                !matches!(tree, Ok(Value::Object(_))),
                "an object the tree accepts was refused"
            );
            None
        }
    }
}

/// The one-pass request reading agrees with a tree parse: it accepts every object the tree
/// accepts, finds the same `model` and `stream`, builds the same tree, and splicing a model
/// into the bytes gives the tree with only `model` replaced.
fn request_reading_agrees(bytes: &[u8]) {
    let Some((map, read)) = both(bytes, |b| RequestBody::parse(b).ok()) else {
        return;
    };
    let map = &map;
    assert_eq!(read.model(), map.get("model").and_then(Value::as_str));
    assert_eq!(
        read.stream(),
        map.get("stream").and_then(Value::as_bool) == Some(true)
    );
    assert_eq!(read.map().ok(), Some(map));
    if let Some(span) = read.model_span() {
        let spliced = splice(read.raw(), span, "spliced/\"m\"");
        let spliced = spliced.and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let mut want = map.clone();
        want.insert("model".to_owned(), Value::from("spliced/\"m\""));
        assert_eq!(spliced, Some(Value::Object(want)));
    }
}

/// The one-pass answer reading agrees with a tree parse: same objects accepted, same usage,
/// content-filter and error verdicts, and the model rewrite equals the tree's.
fn answer_reading_agrees(bytes: &[u8]) {
    let Some((map, read)) = both(bytes, OpenAiJson::parse) else {
        return;
    };
    let map = &map;
    let usage = map.get("usage").filter(|u| u.is_object()).map(|u| Usage {
        prompt: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion: u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
    });
    assert_eq!(read.usage(), usage);
    let filtered = map.get("choices").and_then(Value::as_array).is_some_and(|c| {
        !c.is_empty()
            && c.iter()
                .all(|c| c.get("finish_reason").and_then(Value::as_str) == Some("content_filter"))
    });
    assert_eq!(read.content_filtered(), filtered);
    let finished = map.get("choices").and_then(Value::as_array).is_some_and(|c| {
        c.iter()
            .any(|c| c.get("finish_reason").and_then(Value::as_str).is_some())
    });
    assert_eq!(read.finished(), finished);
    assert_eq!(read.is_error(), map.contains_key("error"));
    let mut want = map.clone();
    if let Some(m) = want.get_mut("model") {
        *m = Value::from("route/x");
    }
    let got = serde_json::from_slice::<Value>(&read.with_model(Some("route/x"))).ok();
    assert_eq!(got, Some(Value::Object(want)));
}

/// An upstream's non-streaming answer: read as an OpenAI-shaped answer, and translated back
/// to a `chat.completion` from Anthropic's and Bedrock's shapes.
pub fn response_body(bytes: &[u8]) {
    answer_reading_agrees(bytes);
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
