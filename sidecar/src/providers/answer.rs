//! An OpenAI-shaped JSON document — a whole completion or one stream chunk — kept as the bytes
//! the upstream sent, with what the proxy needs from it read in one pass that builds no tree:
//! where the top-level `model` value is (so the route's id can be put there by splicing
//! bytes), `usage`, whether every choice was content-filtered, whether it is an error.
//!
//! Why: parsing an answer into a `serde_json::Value`, editing `model` and serialising it again
//! allocated for every key and string of every answer and every stream chunk, and was the
//! largest share of the sidecar's own CPU per request. The reader below allocates nothing for
//! a well-formed answer and accepts exactly the JSON objects a `Value` parse accepts: every
//! field it looks at is read leniently (a field of an unexpected type counts as absent, as the
//! `Value` accessors did), and a repeated key counts by its last occurrence, as in a `Value`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Token counts from an answer's `usage` (absent or non-integer counts are 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// An OpenAI-shaped JSON object as the upstream sent it, with its summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    bytes: Bytes,
    /// Byte range of the top-level `model` value, when there is one.
    model: Option<Range<usize>>,
    usage: Option<Usage>,
    content_filtered: bool,
    error: bool,
}

impl Answer {
    /// Reads `bytes`; `None` when they are not one JSON object.
    pub fn parse(bytes: Bytes) -> Option<Self> {
        // The reader skips the fields it does not look at without decoding them; the bytes
        // are passed on, so they must be text. Checked once here, so the reader need not check
        // each string again.
        let text = std::str::from_utf8(&bytes).ok()?;
        let summary = {
            let mut de = serde_json::Deserializer::from_str(text);
            let s = de.deserialize_map(SummaryVisitor { base: &bytes }).ok()?;
            de.end().ok()?;
            s
        };
        Some(Self {
            bytes,
            model: summary.model,
            usage: summary.usage,
            content_filtered: summary.choices.total > 0 && summary.choices.filtered == summary.choices.total,
            error: summary.error,
        })
    }

    /// An answer built by a translating provider.
    pub fn from_value(v: &Value) -> Self {
        let bytes = Bytes::from(serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()));
        Self::parse(bytes.clone()).unwrap_or(Self {
            bytes,
            model: None,
            usage: None,
            content_filtered: false,
            error: false,
        })
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

    /// Appends [`Answer::with_model`]'s bytes to `out` (one SSE event is built in one buffer).
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

    /// Whether it has a top-level `error` key (an error event in a stream).
    pub const fn is_error(&self) -> bool {
        self.error
    }

    /// The document as a `Value` (tests and diagnostics; not on the request path).
    pub fn to_value(&self) -> Option<Value> {
        serde_json::from_slice(&self.bytes).ok()
    }
}

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
    tree: OnceLock<Result<Map<String, Value>, String>>,
}

impl RequestBody {
    /// Reads `raw`; the error is serde_json's (line and column, never content), or
    /// [`RequestError::NotAnObject`] for JSON that is not an object.
    pub fn parse(raw: Bytes) -> Result<Self, RequestError> {
        // UTF-8 checked once for the whole body, so the reader need not check each string.
        let head = std::str::from_utf8(&raw).map_err(|_| ()).and_then(|text| {
            let mut de = serde_json::Deserializer::from_str(text);
            de.deserialize_map(HeadVisitor { base: &raw })
                .and_then(|h| de.end().map(|()| h))
                .map_err(|_| ())
        });
        match head {
            Ok(h) => Ok(Self {
                model_span: h.model_span.filter(|_| h.models == 1),
                model: h.model,
                stream: h.stream,
                raw,
                tree: OnceLock::new(),
            }),
            // Tell "not JSON" from "JSON but not an object" with serde_json's own message
            // (error path only).
            Err(()) => match serde_json::from_slice::<Value>(&raw) {
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

#[derive(Default)]
struct Head {
    model: Option<String>,
    model_span: Option<Range<usize>>,
    /// How many times `model` appears.
    models: usize,
    stream: bool,
}

struct HeadVisitor<'b> {
    base: &'b [u8],
}

/// The top-level keys of a request the first reading looks at.
const HEAD_KEYS: &[&str] = &["model", "stream"];

impl<'de> Visitor<'de> for HeadVisitor<'_> {
    type Value = Head;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Head, A::Error> {
        let mut h = Head::default();
        while let Some(key) = access.next_key_seed(KeyIn(HEAD_KEYS))? {
            match key {
                Some(0) => {
                    let (span, raw) = raw_value(&mut access, self.base)?;
                    h.models += 1;
                    h.model_span = Some(span);
                    // Last one wins, as in a tree; a non-string model is no model.
                    h.model = serde_json::from_str::<Value>(raw)
                        .map_err(de::Error::custom)?
                        .as_str()
                        .map(str::to_owned);
                }
                // "stream"
                Some(_) => h.stream = access.next_value::<Read<Flag>>()?.0.0 == Some(true),
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(h)
    }
}

#[derive(Default)]
struct Summary {
    model: Option<Range<usize>>,
    usage: Option<Usage>,
    choices: Choices,
    error: bool,
}

struct SummaryVisitor<'b> {
    base: &'b [u8],
}

/// The top-level keys the summary reads.
const SUMMARY_KEYS: &[&str] = &["model", "usage", "choices", "error"];

impl<'de> Visitor<'de> for SummaryVisitor<'_> {
    type Value = Summary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Summary, A::Error> {
        let mut s = Summary::default();
        while let Some(key) = map.next_key_seed(KeyIn(SUMMARY_KEYS))? {
            match key {
                Some(0) => s.model = Some(raw_value(&mut map, self.base)?.0),
                Some(1) => s.usage = map.next_value::<Read<UsageField>>()?.0.0,
                Some(2) => s.choices = map.next_value::<Read<Choices>>()?.0,
                // "error"
                Some(_) => {
                    map.next_value::<IgnoredAny>()?;
                    s.error = true;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(s)
    }
}

/// The next value as it is in the document, and where it sits in `base`.
fn raw_value<'de, A: MapAccess<'de>>(map: &mut A, base: &[u8]) -> Result<(Range<usize>, &'de str), A::Error> {
    let raw = map.next_value::<&RawValue>()?.get();
    let span =
        span_of(base, raw.as_bytes()).ok_or_else(|| de::Error::custom("value outside the document"))?;
    Ok((span, raw))
}

/// Where `part` (a sub-slice of `base`) sits in `base`.
fn span_of(base: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (base.get(start..end).map(<[u8]>::as_ptr) == Some(part.as_ptr())).then_some(start..end)
}

/// A map key, read as its position in a list of names (`None`: a key not in the list).
struct KeyIn(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyIn {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIn {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// A value read leniently: any JSON value is accepted, and a shape the type does not read is
/// drained and read as `Self::default()` — the way `Value`'s accessors treat a field of an
/// unexpected type as absent.
trait Lenient<'de>: Default {
    fn boolean(_: bool) -> Self {
        Self::default()
    }
    fn unsigned(_: u64) -> Self {
        Self::default()
    }
    fn text(_: &str) -> Self {
        Self::default()
    }
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

/// Deserialises a [`Lenient`] type.
struct Read<T>(T);

impl<'de, T: Lenient<'de>> de::Deserialize<'de> for Read<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor(PhantomData)).map(Read)
    }
}

struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        Ok(T::boolean(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(u64::try_from(v).map_or_else(|_| T::default(), T::unsigned))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::unsigned(v))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::text(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::array(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::object(map)
    }
}

/// `Some(n)` only for a non-negative integer, as `Value::as_u64` reads it.
#[derive(Default)]
struct Count(Option<u64>);

impl Lenient<'_> for Count {
    fn unsigned(n: u64) -> Self {
        Self(Some(n))
    }
}

/// `Some(b)` only for a boolean, as `Value::as_bool` reads it.
#[derive(Default)]
struct Flag(Option<bool>);

impl Lenient<'_> for Flag {
    fn boolean(b: bool) -> Self {
        Self(Some(b))
    }
}

/// Whether the value is the string `content_filter`.
#[derive(Default)]
struct IsContentFilter(bool);

impl Lenient<'_> for IsContentFilter {
    fn text(s: &str) -> Self {
        Self(s == "content_filter")
    }
}

/// `usage` when it is an object (its counts read leniently; the last repeated key wins).
#[derive(Default)]
struct UsageField(Option<Usage>);

impl<'de> Lenient<'de> for UsageField {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut u = Usage::default();
        while let Some(key) = map.next_key_seed(KeyIn(&["prompt_tokens", "completion_tokens"]))? {
            match key {
                Some(0) => u.prompt = map.next_value::<Read<Count>>()?.0.0.unwrap_or(0),
                // "completion_tokens"
                Some(_) => u.completion = map.next_value::<Read<Count>>()?.0.0.unwrap_or(0),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Self(Some(u)))
    }
}

/// `choices`: how many, and how many finished with `content_filter` (none when it is not an
/// array; a choice that is not an object is not filtered).
#[derive(Default)]
struct Choices {
    total: usize,
    filtered: usize,
}

impl<'de> Lenient<'de> for Choices {
    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut c = Self::default();
        while let Some(Read(Choice(filtered))) = seq.next_element::<Read<Choice>>()? {
            c.total += 1;
            c.filtered += usize::from(filtered);
        }
        Ok(c)
    }
}

/// One choice: whether its `finish_reason` is `content_filter`.
#[derive(Default)]
struct Choice(bool);

impl<'de> Lenient<'de> for Choice {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut filtered = false;
        while let Some(key) = map.next_key_seed(KeyIn(&["finish_reason"]))? {
            if key.is_some() {
                filtered = map.next_value::<Read<IsContentFilter>>()?.0.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Self(filtered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Answer {
        Answer::parse(Bytes::from(s.to_owned())).unwrap()
    }

    /// What the old tree-based path computed, for comparison.
    fn reference(v: &Value, model: &str) -> (Value, Option<Usage>, bool, bool) {
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
        (out, usage, filtered, v.get("error").is_some())
    }

    fn agrees(text: &str) {
        let v: Value = serde_json::from_str(text).unwrap();
        let a = parse(text);
        let rewritten: Value = serde_json::from_slice(&a.with_model(Some("route/\"id\""))).unwrap();
        let (want, usage, filtered, error) = reference(&v, "route/\"id\"");
        assert_eq!(rewritten, want, "{text}");
        assert_eq!(a.usage(), usage, "{text}");
        assert_eq!(a.content_filtered(), filtered, "{text}");
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
            assert!(Answer::parse(Bytes::from(text)).is_none(), "{text:?}");
        }
        assert!(Answer::parse(Bytes::from_static(b"{\"a\":\"\xff\"}")).is_none());
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
        let lone = RequestBody::parse(Bytes::from_static(br#"{"model":"m","x":"\ud800"}"#)).unwrap();
        assert!(
            lone.map().unwrap_err().contains("not valid JSON"),
            "{:?}",
            lone.map()
        );
    }

    /// A translated answer reads the same as one received.
    #[test]
    fn from_value_summarises() {
        let a = Answer::from_value(&json!({"model": "m", "usage": {"prompt_tokens": 3}}));
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
