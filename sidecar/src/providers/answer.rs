//! An OpenAI-shaped JSON document — a whole completion or one stream chunk — kept as the bytes
//! the upstream sent, with what the proxy needs from it read in one serde pass that builds no
//! tree: where the top-level `model` value is (a borrowed `&RawValue`, so the route's id can
//! be put there by splicing bytes), `usage`, whether every choice was content-filtered,
//! whether it is an error. A client's request body is read the same way ([`RequestBody`]).
//!
//! Why: parsing an answer into a `serde_json::Value`, editing `model` and serialising it again
//! allocated for every key and string of every answer and every stream chunk, and was the
//! largest share of the sidecar's own CPU per request. The visitors below borrow instead: keys
//! are matched as they are read, the few fields looked at are read in place, and every other
//! value is skipped by serde's `IgnoredAny`; nothing is allocated for a well-formed answer.
//!
//! Contract: the readers accept the JSON objects a `Value` parse accepts. Every field they look
//! at is read leniently (a field of an unexpected type counts as absent, as the `Value`
//! accessors did), and a repeated key counts by its last occurrence, as in a `Value`. A value
//! they skip is checked as serde_json skips it: its syntax, but not whether its `\u` escapes
//! pair into valid UTF-16 or its numbers fit an `f64` — so such a document, which a `Value`
//! parse refuses, passes through as the peer wrote it. The fuzz targets `request_body` and
//! `response_body` hold the readers to that.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::budget::Reservation;

/// Token counts from an answer's `usage` (absent or non-integer counts are 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// An OpenAI-shaped JSON object — a whole answer or one stream chunk — as the upstream (or a
/// translating provider) wrote it, with its summary.
#[derive(Clone, Debug)]
pub struct OpenAiJson {
    bytes: Bytes,
    /// The bytes' reservation in the process-wide buffer budget, when they were counted
    /// there: given back when the last clone of the answer is dropped (clones share the
    /// bytes).
    held: Option<Arc<Reservation>>,
    /// Byte range of the top-level `model` value, when there is one.
    model: Option<Range<usize>>,
    usage: Option<Usage>,
    content_filtered: bool,
    /// Some choice carries a `finish_reason` (a string).
    finished: bool,
    error: bool,
}

impl OpenAiJson {
    /// Reads `bytes`; `None` when they are not one JSON object.
    pub fn parse(bytes: Bytes) -> Option<Self> {
        // The fields not looked at are skipped without decoding; the bytes are passed on, so
        // they must be text. Checked once here, then read as `str` (no per-string check).
        let text = std::str::from_utf8(&bytes).ok()?;
        let s = serde_json::from_str::<AnswerSummary<'_>>(text).ok()?;
        let model = s.model.and_then(|m| span_of(text, m));
        Some(Self {
            model,
            usage: s.usage,
            content_filtered: s.choices.total > 0 && s.choices.filtered == s.choices.total,
            finished: s.choices.finished,
            error: s.error,
            bytes,
            held: None,
        })
    }

    /// An answer built by a translating provider.
    pub fn from_value(v: &Value) -> Self {
        let bytes = Bytes::from(serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()));
        Self::parse(bytes.clone()).unwrap_or(Self {
            bytes,
            held: None,
            model: None,
            usage: None,
            content_filtered: false,
            finished: false,
            error: false,
        })
    }

    /// The same answer, its bytes counted in the buffer budget under `held` until the last
    /// clone is dropped.
    #[must_use]
    pub fn held(mut self, held: Reservation) -> Self {
        self.held = Some(Arc::new(held));
        self
    }

    /// The reservation the bytes are counted under, if any (to keep it until they are sent).
    pub fn reservation(&self) -> Option<Arc<Reservation>> {
        self.held.clone()
    }

    /// The document as received.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The document with its top-level `model` replaced by `model` (unchanged when `None`,
    /// when it has no `model`, or when it already says that).
    pub fn with_model(&self, model: Option<&str>) -> Bytes {
        match (model, &self.model) {
            (Some(model), Some(span)) => {
                splice(&self.bytes, span, model).unwrap_or_else(|| self.bytes.clone())
            }
            _ => self.bytes.clone(),
        }
    }

    /// Appends [`OpenAiJson::with_model`]'s bytes to `out` (one SSE event is built in one buffer).
    pub fn write_with_model(&self, model: Option<&str>, out: &mut Vec<u8>) {
        let at = out.len();
        if let (Some(model), Some(span)) = (model, &self.model)
            && splice_into(out, &self.bytes, span, model)
        {
            return;
        }
        out.truncate(at);
        out.extend_from_slice(&self.bytes);
    }

    /// `usage`, when the answer has one (an object).
    pub const fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether it has choices and every one finished with `content_filter`.
    pub const fn content_filtered(&self) -> bool {
        self.content_filtered
    }

    /// Whether some choice has a `finish_reason`: in a stream, the end of the answer.
    pub const fn finished(&self) -> bool {
        self.finished
    }

    /// Whether it has a top-level `error` key (an error event in a stream).
    pub const fn is_error(&self) -> bool {
        self.error
    }

    /// The document as a `Value` (tests and diagnostics; not on the request path).
    pub fn to_value(&self) -> Option<Value> {
        serde_json::from_slice(&self.bytes).ok()
    }
}

/// Whether `head`, the first bytes of a body cut anywhere, is a well-formed beginning of one
/// JSON object (the syntax of everything in it checked as [`OpenAiJson::parse`] checks a whole
/// answer): what a passed-through answer is committed on.
pub fn is_object_head(head: &[u8]) -> bool {
    match serde_json::from_slice::<AnswerSummary<'_>>(head) {
        Ok(_) => true,
        Err(e) => e.is_eof(),
    }
}

/// Two answers are equal when their documents are (where they are counted does not matter).
impl PartialEq for OpenAiJson {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for OpenAiJson {}

/// `bytes` with the JSON value at `span` replaced by the string `model`: the same bytes when
/// it already is that string, `None` when `span` is not inside `bytes`.
pub fn splice(bytes: &Bytes, span: &Range<usize>, model: &str) -> Option<Bytes> {
    let old = bytes.get(span.clone())?;
    let plain = !model.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if plain && old.len() == model.len() + 2 && old.get(1..=model.len()) == Some(model.as_bytes()) {
        return Some(bytes.clone());
    }
    let mut out = Vec::with_capacity(bytes.len() + model.len() + 8);
    splice_into(&mut out, bytes, span, model).then(|| Bytes::from(out))
}

/// Appends `bytes` with the value at `span` replaced by the JSON string `model`; `false`
/// (with `out` partly written) when `span` is not inside `bytes`.
fn splice_into(out: &mut Vec<u8>, bytes: &[u8], span: &Range<usize>, model: &str) -> bool {
    let (Some(head), Some(tail)) = (bytes.get(..span.start), bytes.get(span.end..)) else {
        return false;
    };
    out.reserve(bytes.len() + model.len() + 8);
    out.extend_from_slice(head);
    if serde_json::to_writer(&mut *out, model).is_err() {
        return false;
    }
    out.extend_from_slice(tail);
    true
}

/// A client's request body, read in one pass that builds no tree: the top-level `model` (and
/// where its value sits in the bytes, so an OpenAI-shaped upstream gets the client's own
/// bytes with only the model replaced) and `stream`. The JSON tree that routing rules on
/// capabilities, the cost/quality scorer and translating providers read is built only when
/// one of them asks for it ([`RequestBody::map`]), once.
#[derive(Debug)]
pub struct RequestBody {
    raw: Bytes,
    model: Option<String>,
    /// `None` when there is no `model` or it repeats (the body is then serialised from the
    /// tree instead).
    model_span: Option<Range<usize>>,
    stream: bool,
    /// The body has a `stream` or `stream_options` key (whatever its value).
    stream_keys: bool,
    tree: OnceLock<Result<Map<String, Value>, String>>,
}

impl RequestBody {
    /// Reads `raw`; the error is serde_json's (line and column, never content), or
    /// [`RequestError::NotAnObject`] for JSON that is not an object.
    pub fn parse(raw: Bytes) -> Result<Self, RequestError> {
        // UTF-8 checked once for the whole body, so the skipped strings need no check.
        let summary = std::str::from_utf8(&raw).ok().and_then(|text| {
            let h = serde_json::from_str::<RequestSummary<'_>>(text).ok()?;
            // Last one wins, as in a tree; a non-string model is no model.
            let model = h.model.and_then(|m| {
                let quoted = m.get();
                let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
                Some(if inner.contains('\\') {
                    serde_json::from_str::<String>(quoted).ok()?
                } else {
                    inner.to_owned()
                })
            });
            let span = h.model.and_then(|m| span_of(text, m)).filter(|_| h.models == 1);
            Some((model, span, h.stream, h.stream_keys))
        });
        match summary {
            Some((model, model_span, stream, stream_keys)) => Ok(Self {
                model,
                model_span,
                stream,
                stream_keys,
                raw,
                tree: OnceLock::new(),
            }),
            // Tell "not JSON" from "JSON but not an object" with serde_json's own message
            // (error path only).
            None => match serde_json::from_slice::<Value>(&raw) {
                Ok(_) => Err(RequestError::NotAnObject),
                Err(e) => Err(RequestError::Json(e)),
            },
        }
    }

    /// The body as received.
    pub const fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The top-level `model`, when it is a string.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Where the `model` value is in [`RequestBody::raw`].
    pub const fn model_span(&self) -> Option<&Range<usize>> {
        self.model_span.as_ref()
    }

    /// Whether `stream` is `true`.
    pub const fn stream(&self) -> bool {
        self.stream
    }

    /// Whether the body has a `stream` or `stream_options` key.
    pub const fn has_stream_keys(&self) -> bool {
        self.stream_keys
    }

    /// The JSON tree, built on first use. The error is the message for the client (a body
    /// can pass the first reading and still fail here, e.g. on an unpaired surrogate escape).
    pub fn map(&self) -> Result<&Map<String, Value>, &str> {
        self.tree
            .get_or_init(|| match serde_json::from_slice::<Value>(&self.raw) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err("the request body must be a JSON object".to_owned()),
                Err(e) => Err(format!("the request body is not valid JSON: {e}")),
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("the request body must be a JSON object")]
    NotAnObject,
}

/// Where `value`, borrowed from `text` by the parse, sits in `text`.
fn span_of(text: &str, value: &RawValue) -> Option<Range<usize>> {
    let v = value.get();
    let start = v.as_ptr().addr().checked_sub(text.as_ptr().addr())?;
    let span = start..start.checked_add(v.len())?;
    // A borrowed `RawValue` is a slice of the text it was read from; checked, not assumed.
    text.get(span.clone())
        .is_some_and(|s| std::ptr::eq(s, v))
        .then_some(span)
}

/// The keys any of the readers looks at, matched as they are read (escaped keys too, decoded
/// into serde_json's scratch space, not allocated). Every other key is `Other`.
enum Key {
    Model,
    Stream,
    StreamOptions,
    Usage,
    Choices,
    Error,
    PromptTokens,
    CompletionTokens,
    FinishReason,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "model" => Key::Model,
                    "stream" => Key::Stream,
                    "stream_options" => Key::StreamOptions,
                    "usage" => Key::Usage,
                    "choices" => Key::Choices,
                    "error" => Key::Error,
                    "prompt_tokens" => Key::PromptTokens,
                    "completion_tokens" => Key::CompletionTokens,
                    "finish_reason" => Key::FinishReason,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// What [`RequestBody`] reads from a request on its first pass: its top-level `model` (the
/// last one, as written), how many there are, and `stream`.
#[derive(Default)]
struct RequestSummary<'a> {
    model: Option<&'a RawValue>,
    models: usize,
    stream: bool,
    /// The body has a `stream` or `stream_options` key (whatever its value).
    stream_keys: bool,
}

impl<'de> serde::Deserialize<'de> for RequestSummary<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RequestSummaryVisitor;
        impl<'de> Visitor<'de> for RequestSummaryVisitor {
            type Value = RequestSummary<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestSummary<'de>, A::Error> {
                let mut h = RequestSummary::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Model => {
                            h.models += 1;
                            h.model = Some(map.next_value()?);
                        }
                        Key::Stream => {
                            h.stream_keys = true;
                            h.stream = map.next_value_seed(Lenient(Flag))? == Some(true);
                        }
                        Key::StreamOptions => {
                            h.stream_keys = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(RequestSummaryVisitor)
    }
}

/// What [`OpenAiJson`] reads from an answer or a chunk.
#[derive(Default)]
struct AnswerSummary<'a> {
    model: Option<&'a RawValue>,
    usage: Option<Usage>,
    choices: Choices,
    error: bool,
}

impl<'de> serde::Deserialize<'de> for AnswerSummary<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AnswerSummaryVisitor;
        impl<'de> Visitor<'de> for AnswerSummaryVisitor {
            type Value = AnswerSummary<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnswerSummary<'de>, A::Error> {
                let mut s = AnswerSummary::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Model => s.model = Some(map.next_value()?),
                        Key::Usage => s.usage = map.next_value_seed(Lenient(UsageObject))?,
                        Key::Choices => s.choices = map.next_value_seed(Lenient(ChoiceList))?,
                        Key::Error => {
                            map.next_value::<IgnoredAny>()?;
                            s.error = true;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(s)
            }
        }
        d.deserialize_map(AnswerSummaryVisitor)
    }
}

/// A field read as the `Value` accessors read it: a value of the expected type gives its
/// reading, a value of any other type is skipped and gives `Out::default()` (absent).
trait Field<'de>: Sized {
    type Out: Default;
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Out, A::Error> {
        drain_map(map).map(|()| Self::Out::default())
    }
    fn seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Out, A::Error> {
        drain_seq(seq).map(|()| Self::Out::default())
    }
    fn str(self, _: &str) -> Self::Out {
        Self::Out::default()
    }
    fn u64(self, _: u64) -> Self::Out {
        Self::Out::default()
    }
    fn bool(self, _: bool) -> Self::Out {
        Self::Out::default()
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Reads a [`Field`] whatever the type of the value (serde's `deserialize_any`).
struct Lenient<F>(F);

impl<'de, F: Field<'de>> DeserializeSeed<'de> for Lenient<F> {
    type Value = F::Out;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<F::Out, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Field<'de>> Visitor<'de> for Lenient<F> {
    type Value = F::Out;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<F::Out, E> {
        Ok(self.0.bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<F::Out, E> {
        Ok(self.0.u64(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<F::Out, E> {
        Ok(F::Out::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<F::Out, E> {
        Ok(F::Out::default())
    }
    fn visit_str<E>(self, v: &str) -> Result<F::Out, E> {
        Ok(self.0.str(v))
    }
    fn visit_unit<E>(self) -> Result<F::Out, E> {
        Ok(F::Out::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<F::Out, A::Error> {
        self.0.map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<F::Out, A::Error> {
        self.0.seq(seq)
    }
}

/// `true`/`false`, else absent.
struct Flag;
impl Field<'_> for Flag {
    type Out = Option<bool>;
    fn bool(self, v: bool) -> Option<bool> {
        Some(v)
    }
}

/// A token count as `Value::as_u64` reads it: a non-negative integer that fits, else absent.
struct Count;
impl Field<'_> for Count {
    type Out = Option<u64>;
    fn u64(self, v: u64) -> Option<u64> {
        Some(v)
    }
}

/// `usage` when it is an object (absent counts 0; the last repeated key wins).
struct UsageObject;
impl<'de> Field<'de> for UsageObject {
    type Out = Option<Usage>;
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Usage>, A::Error> {
        let mut u = Usage::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::PromptTokens => u.prompt = map.next_value_seed(Lenient(Count))?.unwrap_or(0),
                Key::CompletionTokens => {
                    u.completion = map.next_value_seed(Lenient(Count))?.unwrap_or(0);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(u))
    }
}

/// `choices`: how many, and how many finished with `content_filter` (none when it is not an
/// array; a choice that is not an object is not filtered).
#[derive(Default)]
struct Choices {
    total: usize,
    filtered: usize,
    /// Some choice has a string `finish_reason`.
    finished: bool,
}

struct ChoiceList;
impl<'de> Field<'de> for ChoiceList {
    type Out = Choices;
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
        let mut c = Choices::default();
        while let Some(reason) = seq.next_element_seed(Lenient(Choice))? {
            c.total += 1;
            c.finished |= reason.is_some();
            c.filtered += usize::from(reason == Some(Reason::ContentFilter));
        }
        Ok(c)
    }
}

/// How a choice finished, when its `finish_reason` is a string.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    ContentFilter,
    Other,
}

/// One choice's `finish_reason` (the last one when it repeats, as in a tree).
struct Choice;
impl<'de> Field<'de> for Choice {
    type Out = Option<Reason>;
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Reason>, A::Error> {
        let mut reason = None;
        while let Some(key) = map.next_key::<Key>()? {
            if matches!(key, Key::FinishReason) {
                reason = map.next_value_seed(Lenient(FinishReason))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(reason)
    }
}

struct FinishReason;
impl Field<'_> for FinishReason {
    type Out = Option<Reason>;
    fn str(self, v: &str) -> Option<Reason> {
        Some(if v == "content_filter" {
            Reason::ContentFilter
        } else {
            Reason::Other
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> OpenAiJson {
        OpenAiJson::parse(Bytes::from(s.to_owned())).unwrap()
    }

    /// What the old tree-based path computed, for comparison.
    fn reference(v: &Value, model: &str) -> (Value, Option<Usage>, bool, bool, bool) {
        let mut out = v.clone();
        if let Some(m) = out.get_mut("model") {
            *m = Value::String(model.to_owned());
        }
        let usage = v.get("usage").filter(|u| u.is_object()).map(|u| Usage {
            prompt: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            completion: u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        });
        let filtered = v.get("choices").and_then(Value::as_array).is_some_and(|c| {
            !c.is_empty()
                && c.iter()
                    .all(|c| c.get("finish_reason").and_then(Value::as_str) == Some("content_filter"))
        });
        let finished = v.get("choices").and_then(Value::as_array).is_some_and(|c| {
            c.iter()
                .any(|c| c.get("finish_reason").and_then(Value::as_str).is_some())
        });
        (out, usage, filtered, finished, v.get("error").is_some())
    }

    fn agrees(text: &str) {
        let v: Value = serde_json::from_str(text).unwrap();
        let a = parse(text);
        let rewritten: Value = serde_json::from_slice(&a.with_model(Some("route/\"id\""))).unwrap();
        let (want, usage, filtered, finished, error) = reference(&v, "route/\"id\"");
        assert_eq!(rewritten, want, "{text}");
        assert_eq!(a.usage(), usage, "{text}");
        assert_eq!(a.content_filtered(), filtered, "{text}");
        assert_eq!(a.finished(), finished, "{text}");
        assert_eq!(a.is_error(), error, "{text}");
    }

    /// Only the top-level `model` value changes; every other byte is the upstream's, in its
    /// order and spacing.
    #[test]
    fn splices_only_the_top_level_model() {
        let text = r#"{ "id":"x", "model" : "gpt-4o-2024" ,"choices":[{"message":{"model":"inner"}}]}"#;
        let out = parse(text).with_model(Some("smart/balanced"));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "id":"x", "model" : "smart/balanced" ,"choices":[{"message":{"model":"inner"}}]}"#
        );
        assert_eq!(parse(text).with_model(None), Bytes::from(text));
    }

    /// Summary and rewrite agree with the tree-based reading on ordinary and odd answers:
    /// escaped keys, repeated keys (the last counts), non-string models, odd usage and choices.
    #[test]
    fn agrees_with_the_tree_reading() {
        for text in [
            r#"{"model":"up","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
            r#"{"mod\u0065l":"up","choices":[]}"#,
            r#"{"model":"a","model":"b","usage":{"prompt_tokens":1,"prompt_tokens":7}}"#,
            r#"{"model":null}"#,
            r#"{"model":{"nested":["x"]},"usage":null}"#,
            r#"{"usage":{"prompt_tokens":-1,"completion_tokens":2.5}}"#,
            r#"{"usage":[1,2],"choices":{"finish_reason":"content_filter"}}"#,
            r#"{"usage":"x","choices":[{"finish_reason":"content_filter"},{"finish_reason":"content_filter"}]}"#,
            r#"{"choices":[{"finish_reason":"content_filter"},{"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"finish_reason":"content_filter"},5,[1],"s",null]}"#,
            r#"{"choices":[{"finish_reason":null}],"error":null}"#,
            r#"{"error":{"message":"boom"}}"#,
            r#"{}"#,
        ] {
            agrees(text);
        }
    }

    /// Anything that is not one JSON object is refused, as a tree parse would.
    #[test]
    fn refuses_what_is_not_one_object() {
        for text in ["", "[]", "\"s\"", "{", "{} {}", "{\"a\":}", "nul"] {
            assert!(OpenAiJson::parse(Bytes::from(text)).is_none(), "{text:?}");
        }
        assert!(OpenAiJson::parse(Bytes::from_static(b"{\"a\":\"\xff\"}")).is_none());
    }

    /// The route's id is escaped as a JSON string; a model that already matches is left as is.
    #[test]
    fn rewrite_escapes_and_skips_no_ops() {
        let a = parse(r#"{"model":"x"}"#);
        assert_eq!(&a.with_model(Some("a\"b"))[..], br#"{"model":"a\"b"}"#);
        let same = parse(r#"{"model":"x"}"#);
        assert_eq!(same.with_model(Some("x")), same.bytes().clone());
        let none = parse(r#"{"id":1}"#);
        assert_eq!(&none.with_model(Some("x"))[..], br#"{"id":1}"#);
    }

    /// A request body's first reading finds `model` (its value and where it is) and
    /// `stream` as a tree would (last repeated key wins); its tree is the one a tree parse
    /// gives; a repeated `model` drops the span (the bytes would disagree with the tree).
    #[test]
    fn request_body_reads_model_stream_and_tree() {
        let text: &[u8] =
            br#"{"messages":[{"role":"user","content":"hi"}], "model" : "smart/x","stream":true}"#;
        let b = RequestBody::parse(Bytes::from_static(text)).unwrap();
        assert_eq!(b.model(), Some("smart/x"));
        assert!(b.stream());
        assert_eq!(
            Value::Object(b.map().unwrap().clone()),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        let span = b.model_span().unwrap().clone();
        assert_eq!(&text[span.clone()], br#""smart/x""#);
        let out = splice(b.raw(), &span, "gpt-4o").unwrap();
        assert_eq!(
            &out[..],
            br#"{"messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o","stream":true}"#
        );
        let twice = RequestBody::parse(Bytes::from_static(
            br#"{"model":"a","stream":true,"model":"b","stream":1}"#,
        ))
        .unwrap();
        assert_eq!(
            (twice.model(), twice.model_span(), twice.stream()),
            (Some("b"), None, false)
        );
        let escaped = RequestBody::parse(Bytes::from_static(br#"{"mod\u0065l":"a\/b"}"#)).unwrap();
        assert_eq!(escaped.model(), Some("a/b"));
        let not_string = RequestBody::parse(Bytes::from_static(br#"{"model":5}"#)).unwrap();
        assert_eq!(not_string.model(), None);
    }

    /// Bad bodies are refused with serde_json's message (line and column) or as not an
    /// object; a body only the tree can refuse is refused when the tree is asked for.
    #[test]
    fn request_body_errors() {
        assert!(matches!(
            RequestBody::parse(Bytes::from_static(b"[1]")),
            Err(RequestError::NotAnObject)
        ));
        let err = RequestBody::parse(Bytes::from_static(b"{\"model\": }")).unwrap_err();
        assert!(
            matches!(err, RequestError::Json(_)) && err.to_string().contains("column"),
            "{err}"
        );
        assert!(RequestBody::parse(Bytes::from_static(b"{\"a\":\"\xff\"}")).is_err());
        // Skipped values are checked as serde skips them: a lone surrogate escape or a number
        // beyond an f64 passes the first reading (the bytes go on as the client wrote them)
        // and is refused when the tree is asked for.
        for skipped in [
            &br#"{"model":"m","x":"\ud800"}"#[..],
            br#"{"model":"m","x":1e400}"#,
        ] {
            let body = RequestBody::parse(Bytes::from_static(skipped)).unwrap();
            assert_eq!(body.model(), Some("m"));
            assert!(
                body.map().unwrap_err().contains("not valid JSON"),
                "{:?}",
                body.map()
            );
        }
        // Read fields are checked fully: a key or a `stream` value the tree refuses.
        for read in [
            &br#"{"model":"m","\ud800":1}"#[..],
            br#"{"model":"m","stream":1e400}"#,
        ] {
            assert!(RequestBody::parse(Bytes::from_static(read)).is_err());
        }
    }

    /// A translated answer reads the same as one received.
    #[test]
    fn from_value_summarises() {
        let a = OpenAiJson::from_value(&json!({"model": "m", "usage": {"prompt_tokens": 3}}));
        assert_eq!(
            a.usage(),
            Some(Usage {
                prompt: 3,
                completion: 0
            })
        );
        assert_eq!(
            a.to_value(),
            Some(json!({"model": "m", "usage": {"prompt_tokens": 3}}))
        );
    }
}
