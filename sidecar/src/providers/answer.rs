//! An OpenAI-shaped JSON document — a whole completion or one stream chunk — kept as the bytes
//! the upstream sent, with what the proxy needs from it read in one pass that builds no tree:
//! where the top-level `model` value is (so the route's id can be put there by splicing
//! bytes), `usage`, whether every choice was content-filtered, whether it is an error.
//!
//! Why: parsing an answer into a `serde_json::Value`, editing `model` and serialising it again
//! allocated for every key and string of every answer and every stream chunk, and was the
//! largest share of the sidecar's own CPU per request. The reader below (on the scanner of
//! [`super::json`]) allocates nothing for a well-formed answer and accepts the JSON objects a
//! `Value` parse accepts: every field it looks at is read leniently (a field of an unexpected
//! type counts as absent, as the `Value` accessors did), and a repeated key counts by its last
//! occurrence, as in a `Value`.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::json::Scan;

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
    /// Some choice carries a `finish_reason` (a string).
    finished: bool,
    error: bool,
}

impl Answer {
    /// Reads `bytes`; `None` when they are not one JSON object.
    pub fn parse(bytes: Bytes) -> Option<Self> {
        // The scanner skips the fields it does not look at without decoding them; the bytes
        // are passed on, so they must be text. Checked once here.
        let text = std::str::from_utf8(&bytes).ok()?;
        let mut scan = Scan::new(text);
        let mut s = Summary::default();
        scan.object(|scan, key| {
            match key.index_in(SUMMARY_KEYS) {
                Some(0) => s.model = Some(scan.span()?),
                Some(1) => s.usage = usage(scan)?,
                Some(2) => s.choices = choices(scan)?,
                // "error"
                Some(_) => {
                    scan.skip()?;
                    s.error = true;
                }
                None => scan.skip()?,
            }
            Some(())
        })?;
        scan.end()?;
        Some(Self {
            bytes,
            model: s.model,
            usage: s.usage,
            content_filtered: s.choices.total > 0 && s.choices.filtered == s.choices.total,
            finished: s.choices.finished,
            error: s.error,
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
            finished: false,
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
        // UTF-8 checked once for the whole body, so the scanner need not check each string.
        let head = std::str::from_utf8(&raw).ok().and_then(|text| {
            let mut scan = Scan::new(text);
            let mut h = Head::default();
            scan.object(|scan, key| {
                match key.index_in(HEAD_KEYS) {
                    Some(0) => {
                        // Last one wins, as in a tree; a non-string model is no model.
                        h.models += 1;
                        if scan.peek()? == b'"' {
                            let span = scan.span()?;
                            let quoted = text.get(span.clone())?;
                            h.model = quoted.get(1..quoted.len() - 1).map(|inner| {
                                if inner.contains('\\') {
                                    serde_json::from_str::<String>(quoted).unwrap_or_default()
                                } else {
                                    inner.to_owned()
                                }
                            });
                            h.model_span = Some(span);
                        } else {
                            h.model_span = Some(scan.span()?);
                            h.model = None;
                        }
                    }
                    Some(1) => {
                        h.stream_keys = true;
                        h.stream = scan.flag()? == Some(true);
                    }
                    // "stream_options"
                    Some(_) => {
                        h.stream_keys = true;
                        scan.skip()?;
                    }
                    None => scan.skip()?,
                }
                Some(())
            })?;
            scan.end()?;
            Some(h)
        });
        match head {
            Some(h) => Ok(Self {
                model_span: h.model_span.filter(|_| h.models == 1),
                model: h.model,
                stream: h.stream,
                stream_keys: h.stream_keys,
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

#[derive(Default)]
struct Head {
    model: Option<String>,
    model_span: Option<Range<usize>>,
    /// How many times `model` appears.
    models: usize,
    stream: bool,
    stream_keys: bool,
}

/// The top-level keys of a request the first reading looks at.
const HEAD_KEYS: &[&str] = &["model", "stream", "stream_options"];

#[derive(Default)]
struct Summary {
    model: Option<Range<usize>>,
    usage: Option<Usage>,
    choices: Choices,
    error: bool,
}

/// The top-level keys the summary reads.
const SUMMARY_KEYS: &[&str] = &["model", "usage", "choices", "error"];

/// `usage` when it is an object (its counts read as `Value::as_u64`, absent ones 0; the last
/// repeated key wins).
fn usage(scan: &mut Scan<'_>) -> Option<Option<Usage>> {
    if scan.peek()? != b'{' {
        return scan.skip().map(|()| None);
    }
    let mut u = Usage::default();
    scan.object(|scan, key| {
        match key.index_in(&["prompt_tokens", "completion_tokens"]) {
            Some(0) => u.prompt = scan.count()?.unwrap_or(0),
            Some(_) => u.completion = scan.count()?.unwrap_or(0),
            None => scan.skip()?,
        }
        Some(())
    })?;
    Some(Some(u))
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

fn choices(scan: &mut Scan<'_>) -> Option<Choices> {
    let mut c = Choices::default();
    if scan.peek()? != b'[' {
        return scan.skip().map(|()| c);
    }
    scan.array(|scan| {
        c.total += 1;
        if scan.peek()? != b'{' {
            return scan.skip();
        }
        let mut filtered = false;
        let mut finished = false;
        scan.object(|scan, key| {
            if key.is("finish_reason") {
                // A repeated key counts by its last occurrence, as in a tree.
                let reason = scan.string_or_skip()?;
                finished = reason.is_some();
                filtered = reason.is_some_and(|r| r.is("content_filter"));
                Some(())
            } else {
                scan.skip()
            }
        })?;
        c.finished |= finished;
        c.filtered += usize::from(filtered);
        Some(())
    })?;
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Answer {
        Answer::parse(Bytes::from(s.to_owned())).unwrap()
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
        let lone = RequestBody::parse(Bytes::from_static(br#"{"model":"m","x":"\ud800"}"#)).unwrap_err();
        assert!(lone.to_string().contains("hex escape"), "{lone}");
        let huge = RequestBody::parse(Bytes::from_static(br#"{"model":"m","x":1e400}"#)).unwrap();
        assert!(
            huge.map().unwrap_err().contains("not valid JSON"),
            "{:?}",
            huge.map()
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
