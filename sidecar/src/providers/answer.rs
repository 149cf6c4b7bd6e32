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
            content_filtered: summary.choices > 0 && summary.filtered == summary.choices,
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
enum HeadKey {
    Model,
    Stream,
    Other,
}

impl<'de> de::Deserialize<'de> for HeadKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HeadKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HeadKey, E> {
                Ok(match v {
                    "model" => HeadKey::Model,
                    "stream" => HeadKey::Stream,
                    _ => HeadKey::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for HeadVisitor<'_> {
    type Value = Head;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Head, A::Error> {
        let mut h = Head::default();
        while let Some(key) = access.next_key::<HeadKey>()? {
            match key {
                HeadKey::Model => {
                    let raw = access.next_value::<&RawValue>()?;
                    h.models += 1;
                    h.model_span = Some(
                        span_of(self.base, raw.get().as_bytes())
                            .ok_or_else(|| de::Error::custom("model value outside the document"))?,
                    );
                    // Last one wins, as in a tree; a non-string model is no model.
                    h.model = serde_json::from_str::<Value>(raw.get())
                        .map_err(de::Error::custom)?
                        .as_str()
                        .map(str::to_owned);
                }
                HeadKey::Stream => {
                    h.stream = access.next_value::<LenientBool>()?.0 == Some(true);
                }
                HeadKey::Other => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(h)
    }
}

/// `Some(b)` only for a JSON boolean, the way `Value::as_bool` reads it.
struct LenientBool(Option<bool>);

impl<'de> de::Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<bool>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<bool>, E> {
                Ok(Some(v))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<bool>, E> {
                Ok(None)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<bool>, E> {
                Ok(None)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<bool>, E> {
                Ok(None)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<bool>, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Option<bool>, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<bool>, A::Error> {
                Lenient(|_: Scalar<'_>| None::<bool>).visit_seq(seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<bool>, A::Error> {
                Lenient(|_: Scalar<'_>| None::<bool>).visit_map(map)
            }
        }
        d.deserialize_any(V).map(LenientBool)
    }
}

#[derive(Default)]
struct Summary {
    model: Option<Range<usize>>,
    usage: Option<Usage>,
    choices: usize,
    filtered: usize,
    error: bool,
}

struct SummaryVisitor<'b> {
    base: &'b [u8],
}

/// The top-level keys the summary reads.
enum Key {
    Model,
    Usage,
    Choices,
    Error,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "model" => Key::Model,
                    "usage" => Key::Usage,
                    "choices" => Key::Choices,
                    "error" => Key::Error,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for SummaryVisitor<'_> {
    type Value = Summary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Summary, A::Error> {
        let mut s = Summary::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Model => {
                    let raw = map.next_value::<&RawValue>()?;
                    let span = span_of(self.base, raw.get().as_bytes())
                        .ok_or_else(|| de::Error::custom("model value outside the document"))?;
                    s.model = Some(span);
                }
                Key::Usage => s.usage = map.next_value::<LenientUsage>()?.0,
                Key::Choices => {
                    let c = map.next_value::<Choices>()?;
                    s.choices = c.total;
                    s.filtered = c.filtered;
                }
                Key::Error => {
                    map.next_value::<IgnoredAny>()?;
                    s.error = true;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(s)
    }
}

/// Where `part` (a sub-slice of `base`) sits in `base`.
fn span_of(base: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (base.get(start..end).map(<[u8]>::as_ptr) == Some(part.as_ptr())).then_some(start..end)
}

/// Drains whatever value `d` holds; `Some(u64)` only for a non-negative integer, the way
/// `Value::as_u64` reads it.
struct LenientU64(Option<u64>);

impl<'de> de::Deserialize<'de> for LenientU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Lenient(|v: Scalar<'_>| match v {
            Scalar::U64(n) => Some(n),
            _ => None,
        }))
        .map(LenientU64)
    }
}

/// `Some(true)` when the value is the string `content_filter`.
struct IsContentFilter(bool);

impl<'de> de::Deserialize<'de> for IsContentFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Lenient(|v: Scalar<'_>| match v {
            Scalar::Str(s) => Some(s == "content_filter"),
            _ => None,
        }))
        .map(|v| Self(v == Some(true)))
    }
}

/// A scalar a lenient reader may keep.
enum Scalar<'a> {
    U64(u64),
    Str(&'a str),
    Other,
}

/// Accepts any JSON value, keeps what `F` makes of a scalar, drains arrays and objects.
struct Lenient<F>(F);

impl<'de, T, F: FnOnce(Scalar<'_>) -> Option<T>> Visitor<'de> for Lenient<F> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<T>, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<T>, E> {
        Ok((self.0)(u64::try_from(v).map_or(Scalar::Other, Scalar::U64)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<T>, E> {
        Ok((self.0)(Scalar::U64(v)))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<T>, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<T>, E> {
        Ok((self.0)(Scalar::Str(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok((self.0)(Scalar::Other))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok((self.0)(Scalar::Other))
    }
}

/// `usage` when it is an object (its counts read leniently), else `None`.
struct LenientUsage(Option<Usage>);

impl<'de> de::Deserialize<'de> for LenientUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Usage>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Usage>, A::Error> {
                let mut u = Usage::default();
                while let Some(key) = map.next_key::<UsageKey>()? {
                    match key {
                        UsageKey::Prompt => u.prompt = map.next_value::<LenientU64>()?.0.unwrap_or(0),
                        UsageKey::Completion => {
                            u.completion = map.next_value::<LenientU64>()?.0.unwrap_or(0);
                        }
                        UsageKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Some(u))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<Usage>, A::Error> {
                Lenient(|_: Scalar<'_>| None::<Usage>).visit_seq(seq)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Usage>, E> {
                Ok(None)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Usage>, E> {
                Ok(None)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Usage>, E> {
                Ok(None)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Usage>, E> {
                Ok(None)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<Usage>, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Option<Usage>, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V).map(LenientUsage)
    }
}

enum UsageKey {
    Prompt,
    Completion,
    Other,
}

impl<'de> de::Deserialize<'de> for UsageKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = UsageKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UsageKey, E> {
                Ok(match v {
                    "prompt_tokens" => UsageKey::Prompt,
                    "completion_tokens" => UsageKey::Completion,
                    _ => UsageKey::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `choices`: how many, and how many finished with `content_filter` (0 and 0 when it is not
/// an array; a choice that is not an object is not filtered).
struct Choices {
    total: usize,
    filtered: usize,
}

impl<'de> de::Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut c = Choices {
                    total: 0,
                    filtered: 0,
                };
                while let Some(filtered) = seq.next_element_seed(ChoiceSeed)? {
                    c.total += 1;
                    c.filtered += usize::from(filtered);
                }
                Ok(c)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Choices, A::Error> {
                Lenient(|_: Scalar<'_>| None::<()>).visit_map(map)?;
                Ok(Choices {
                    total: 0,
                    filtered: 0,
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Choices, E> {
                Ok(Choices {
                    total: 0,
                    filtered: 0,
                })
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Choices, E> {
                Ok(Choices {
                    total: 0,
                    filtered: 0,
                })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Choices, E> {
                Ok(Choices {
                    total: 0,
                    filtered: 0,
                })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Choices, E> {
                Ok(Choices {
                    total: 0,
                    filtered: 0,
                })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Choices, E> {
                Ok(Choices {
                    total: 0,
                    filtered: 0,
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Choices, E> {
                Ok(Choices {
                    total: 0,
                    filtered: 0,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One choice: whether its `finish_reason` is `content_filter`.
struct ChoiceSeed;

impl<'de> DeserializeSeed<'de> for ChoiceSeed {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
                let mut filtered = false;
                while let Some(key) = map.next_key::<ChoiceKey>()? {
                    if matches!(key, ChoiceKey::FinishReason) {
                        filtered = map.next_value::<IsContentFilter>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(filtered)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
                Lenient(|_: Scalar<'_>| None::<()>).visit_seq(seq)?;
                Ok(false)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
                Ok(false)
            }
        }
        d.deserialize_any(V)
    }
}

enum ChoiceKey {
    FinishReason,
    Other,
}

impl<'de> de::Deserialize<'de> for ChoiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ChoiceKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ChoiceKey, E> {
                Ok(if v == "finish_reason" {
                    ChoiceKey::FinishReason
                } else {
                    ChoiceKey::Other
                })
            }
        }
        d.deserialize_str(V)
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
