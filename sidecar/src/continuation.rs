//! Mid-stream continuation (opt-in: `streaming.continueOnFailure`).
//!
//! When a committed chat stream breaks before its `finish_reason`, the proxy may ask the next
//! eligible target to finish the answer: the client's request plus the text already delivered
//! as the assistant's partial answer, and splice that target's chunks into the same client
//! stream. This module holds the pure parts:
//! - [`request_refusal`] / [`Partial::refusal`]: the guards (no continuation for `n > 1`,
//!   `logprobs`, a JSON `response_format`, an unfinished tool call, an over-long partial);
//! - [`request`]: the continuation's request in the shape each provider supports best
//!   ([`Style::Prefill`] for Anthropic and Bedrock, whose APIs continue a trailing assistant
//!   turn; [`Style::Prompt`] for OpenAI and compatible servers: the partial answer as an
//!   assistant message, then [`PROMPT`] as a user message);
//! - [`Partial`]: what the client has received of choice 0 (id, text, role sent, tool calls);
//! - [`Splice`]: rewrites the continuation's chunks — the first stream's `id` and `created`,
//!   no second role chunk, no repeated text (whitespace the prefill had to drop, or a prompt
//!   continuation that restarts or overlaps the delivered text), usage summed when both
//!   streams reported it, and a `detour` field on the chunk that carries the `finish_reason`.
//!
//! The proxy owns the when (which targets, deadline, retry budget, recording); nothing here
//! does I/O.

use bytes::Bytes;
use detour_api::table::Provider as Kind;
use serde_json::{Map, Value, json};

use crate::budget::{Budget, Reservation};

/// The longest partial answer kept for a continuation (bytes of text). A longer answer that
/// breaks ends as a broken stream: the memory held per stream stays bounded.
pub const MAX_PARTIAL: usize = 256 * 1024;

/// The user message an OpenAI-shaped target gets after the partial answer.
pub const PROMPT: &str = "Your previous answer was cut off. Continue it exactly where it stopped, \
mid-sentence if need be: do not repeat any of it, do not comment, output only the rest.";

/// A prompt continuation's first text is held until it is this long (or the stream finishes)
/// before deciding whether it repeats the end of the delivered text.
const HOLD: usize = 48;
/// The shortest repeat of the delivered text's end that is taken out of a continuation.
const MIN_OVERLAP: usize = 8;

/// Why a broken stream is not continued (the `result` of
/// `detour_stream_continuations_total{to="none"}` and of the audit line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a chat completion.
    Endpoint,
    /// `n > 1`, or a chunk for another choice.
    Choices,
    /// `logprobs` asked for.
    Logprobs,
    /// A `json_schema` or `json_object` response format: a spliced document is not trusted.
    JsonFormat,
    /// The partial answer holds a tool call that did not finish.
    ToolCall,
    /// The partial answer is longer than [`MAX_PARTIAL`].
    TooLong,
    /// The process-wide buffer budget had no room for the partial answer.
    BufferBudget,
    /// Too little time is left before the deadline.
    Deadline,
    /// The route's retry budget refused.
    Budget,
    /// No target is left to ask, or every one failed.
    NoTarget,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::Choices => "n",
            Self::Logprobs => "logprobs",
            Self::JsonFormat => "json-format",
            Self::ToolCall => "tool-call",
            Self::TooLong => "too-long",
            Self::BufferBudget => "buffer-budget",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
            Self::NoTarget => "no-target",
        }
    }
}

/// What in the client's request rules a continuation out.
pub fn request_refusal(body: &Map<String, Value>) -> Option<Refusal> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Some(Refusal::Choices);
    }
    let logprobs = body
        .get("logprobs")
        .is_some_and(|v| v.as_bool() == Some(true) || v.is_number());
    if logprobs || body.get("top_logprobs").is_some_and(|v| !v.is_null()) {
        return Some(Refusal::Logprobs);
    }
    let format = body
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    if matches!(format, Some("json_schema" | "json_object")) {
        return Some(Refusal::JsonFormat);
    }
    None
}

/// How a provider is asked to continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The partial answer as a trailing assistant message, which the provider continues.
    Prefill,
    /// The partial answer as an assistant message, then [`PROMPT`] as a user message.
    Prompt,
}

impl Style {
    /// Anthropic's Messages API and Bedrock's Converse API continue a final assistant turn;
    /// OpenAI's API does not (it answers it as a finished turn), and OpenAI-compatible servers
    /// differ (vLLM and llama.cpp need server-specific flags), so they get the prompt.
    pub const fn of(kind: Kind) -> Self {
        match kind {
            Kind::Anthropic | Kind::Bedrock => Self::Prefill,
            _ => Self::Prompt,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::Prompt => "prompt",
        }
    }
}

/// A continuation's request and how its chunks are spliced.
#[derive(Debug)]
pub struct Built {
    pub body: Bytes,
    /// Trailing whitespace was taken off the prefill (Anthropic refuses a final assistant
    /// turn ending in whitespace): leading whitespace of the continuation is dropped.
    pub skip_leading_ws: bool,
    /// The continuation may repeat the delivered text: check its start.
    pub dedupe: bool,
}

/// The client's request asking for the rest of `delivered`; `None` when the body has no
/// `messages` array.
pub fn request(body: &Map<String, Value>, delivered: &str, style: Style) -> Option<Built> {
    let mut out = body.clone();
    let messages = out.get_mut("messages")?.as_array_mut()?;
    let mut built = Built {
        body: Bytes::new(),
        skip_leading_ws: false,
        dedupe: false,
    };
    match style {
        Style::Prefill => {
            let text = delivered.trim_end();
            built.skip_leading_ws = text.len() < delivered.len();
            if !text.is_empty() {
                messages.push(json!({"role": "assistant", "content": text}));
            }
        }
        Style::Prompt => {
            if !delivered.is_empty() {
                messages.push(json!({"role": "assistant", "content": delivered}));
                messages.push(json!({"role": "user", "content": PROMPT}));
                built.dedupe = true;
            }
        }
    }
    built.body = Bytes::from(serde_json::to_vec(&out).ok()?);
    Some(built)
}

/// What the client has received of the answer (choice 0), from the chunks as they go out.
#[derive(Debug, Default)]
pub struct Partial {
    id: Option<Value>,
    created: Option<Value>,
    text: String,
    tool_call: bool,
    other_choice: bool,
    too_long: bool,
    /// The text held, counted in the process-wide buffer budget (`None` in unit tests that
    /// build a [`Partial`] by hand); `out_of_budget` once the budget refused to grow it.
    held: Option<Reservation>,
    out_of_budget: bool,
    /// Bytes of text delivered.
    pub bytes: u64,
    /// Chunks that carried text (one token each for the providers that stream per token).
    pub chunks: u64,
    /// The last `usage` seen.
    usage: Option<Value>,
}

impl Partial {
    /// A partial answer whose held text counts in `budget` until it is dropped.
    pub fn counted(budget: &Budget) -> Self {
        Self {
            held: Some(budget.reservation()),
            ..Self::default()
        }
    }

    /// Takes note of one chunk sent to the client.
    pub fn observe(&mut self, v: &Value) {
        if self.id.is_none() {
            self.id = v.get("id").cloned();
            self.created = v.get("created").cloned();
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return;
        };
        for c in choices {
            if c.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                self.other_choice = true;
                continue;
            }
            let Some(delta) = c.get("delta") else {
                continue;
            };
            if delta.get("tool_calls").is_some_and(|t| !t.is_null())
                || delta.get("function_call").is_some_and(|t| !t.is_null())
            {
                self.tool_call = true;
            }
            if let Some(s) = delta.get("content").and_then(Value::as_str)
                && !s.is_empty()
            {
                self.bytes += s.len() as u64;
                self.chunks += 1;
                if self.text.len() + s.len() > MAX_PARTIAL {
                    self.too_long = true;
                } else if !self.too_long && !self.out_of_budget {
                    let room = self.held.as_mut().map_or(Ok(()), |r| r.grow(s.len()));
                    if room.is_ok() {
                        self.text.push_str(s);
                    } else {
                        // What was held is no use without the rest: give it back now.
                        self.out_of_budget = true;
                        self.text = String::new();
                        self.held = None;
                    }
                }
            }
        }
    }

    /// What in the delivered answer rules a continuation out.
    pub const fn refusal(&self) -> Option<Refusal> {
        if self.tool_call {
            Some(Refusal::ToolCall)
        } else if self.other_choice {
            Some(Refusal::Choices)
        } else if self.too_long {
            Some(Refusal::TooLong)
        } else if self.out_of_budget {
            Some(Refusal::BufferBudget)
        } else {
            None
        }
    }

    /// The text delivered so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Rewrites a continuation's chunks into the client's stream.
#[derive(Debug)]
pub struct Splice {
    id: Option<Value>,
    created: Option<Value>,
    skip_ws: bool,
    dedupe: Option<Dedupe>,
    usage: Option<Value>,
    marker: Value,
}

impl Splice {
    /// `marker`: the value of the `detour` field added to the chunk with the `finish_reason`.
    pub fn new(partial: &Partial, built: &Built, marker: Value) -> Self {
        Self {
            id: partial.id.clone(),
            created: partial.created.clone(),
            skip_ws: built.skip_leading_ws,
            dedupe: built.dedupe.then(|| Dedupe {
                delivered: partial.text.clone(),
                held: String::new(),
                done: false,
            }),
            usage: partial.usage.clone(),
            marker,
        }
    }

    /// One chunk of the continuation as the client gets it; `None` when nothing of it is left
    /// (its role chunk, or text held back for now).
    pub fn rewrite(&mut self, mut v: Value) -> Option<Value> {
        let Some(obj) = v.as_object_mut() else {
            return Some(v);
        };
        if obj.contains_key("error") {
            return Some(v);
        }
        if let Some(id) = &self.id {
            obj.insert("id".into(), id.clone());
        }
        if let Some(created) = &self.created {
            obj.insert("created".into(), created.clone());
        }
        if let (Some(prior), Some(usage)) = (&self.usage, obj.get_mut("usage")) {
            sum_usage(usage, prior);
        }
        let has_usage = obj.get("usage").is_some_and(|u| !u.is_null());
        let mut finished = false;
        let mut keep = has_usage;
        let mut any_choice = false;
        if let Some(choices) = obj.get_mut("choices").and_then(Value::as_array_mut) {
            for c in choices.iter_mut() {
                any_choice = true;
                let fin = c.get("finish_reason").is_some_and(|f| !f.is_null());
                finished |= fin;
                let Some(delta) = c.get_mut("delta").and_then(Value::as_object_mut) else {
                    keep = true;
                    continue;
                };
                delta.remove("role");
                let text = delta.get("content").and_then(Value::as_str).map(str::to_owned);
                let mut out = text.map(|t| self.text(&t)).unwrap_or_default();
                if fin && let Some(d) = &mut self.dedupe {
                    out.push_str(&d.flush());
                }
                if out.is_empty() {
                    if delta.get("content").is_some_and(|c| !c.is_null()) {
                        delta.remove("content");
                    }
                } else {
                    delta.insert("content".into(), Value::String(out));
                }
                let payload = delta.iter().any(|(_, v)| !v.is_null());
                keep |= fin || payload;
            }
        }
        if finished {
            obj.insert("detour".into(), self.marker.clone());
        }
        (keep || !any_choice).then_some(v)
    }

    /// Continuation text as it goes to the client.
    fn text(&mut self, t: &str) -> String {
        let mut t = t;
        if self.skip_ws {
            let trimmed = t.trim_start();
            if trimmed.is_empty() {
                return String::new();
            }
            self.skip_ws = false;
            t = trimmed;
        }
        match &mut self.dedupe {
            Some(d) => d.push(t),
            None => t.to_owned(),
        }
    }
}

/// `usage` plus the first stream's counts (where both have them).
fn sum_usage(usage: &mut Value, prior: &Value) {
    let Some(u) = usage.as_object_mut() else {
        return;
    };
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        if let (Some(a), Some(b)) = (
            u.get(key).and_then(Value::as_u64),
            prior.get(key).and_then(Value::as_u64),
        ) {
            u.insert(key.into(), json!(a + b));
        }
    }
}

/// Takes out of a prompt continuation what repeats the delivered text: a restart from its
/// beginning, or a repeat of its last words.
#[derive(Debug)]
struct Dedupe {
    delivered: String,
    held: String,
    done: bool,
}

impl Dedupe {
    /// The text to send now for `s` (empty while held).
    fn push(&mut self, s: &str) -> String {
        if self.done {
            return s.to_owned();
        }
        self.held.push_str(s);
        let d = self.delivered.trim_end();
        if self.held.len() < d.len() && d.starts_with(self.held.as_str()) {
            // Maybe a restart: hold while it repeats.
            return String::new();
        }
        if self.held.len() < HOLD && !self.held.starts_with(d) {
            return String::new();
        }
        self.flush()
    }

    /// Decides with what is held, and returns what is left of it.
    fn flush(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        let held = std::mem::take(&mut self.held);
        let d = self.delivered.trim_end();
        // The client has the delivered text's trailing whitespace already.
        let rest = |r: &str| {
            if d.len() < self.delivered.len() {
                r.trim_start().to_owned()
            } else {
                r.to_owned()
            }
        };
        if !d.is_empty() && held.starts_with(d) {
            return rest(held.get(d.len()..).unwrap_or_default());
        }
        if d.starts_with(held.as_str()) {
            // Nothing but a repeat.
            return String::new();
        }
        let max = held.len().min(d.len());
        let overlap = (MIN_OVERLAP..=max)
            .rev()
            .find(|&k| held.is_char_boundary(k) && held.get(..k).is_some_and(|p| d.ends_with(p)));
        match overlap {
            Some(k) => rest(held.get(k..).unwrap_or_default()),
            None => held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: Option<&str>, finish: Option<&str>) -> Value {
        let mut delta = json!({});
        if let Some(c) = content {
            delta["content"] = json!(c);
        }
        json!({"id": "other", "object": "chat.completion.chunk", "created": 9, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    fn partial(texts: &[&str]) -> Partial {
        let mut p = Partial::default();
        p.observe(&json!({"id": "first", "created": 1, "choices": [{"index": 0,
            "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}));
        for t in texts {
            let mut c = chunk(Some(t), None);
            c["id"] = json!("first");
            p.observe(&c);
        }
        p
    }

    fn body() -> Map<String, Value> {
        json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .as_object()
            .unwrap()
            .clone()
    }

    fn contents(out: &[Value]) -> String {
        out.iter()
            .filter_map(|v| v.pointer("/choices/0/delta/content").and_then(Value::as_str))
            .collect()
    }

    /// `n > 1`, `logprobs` and JSON response formats rule a continuation out; a plain chat
    /// request does not.
    #[test]
    fn request_guards() {
        let mut b = body();
        assert_eq!(request_refusal(&b), None);
        b.insert("n".into(), json!(2));
        assert_eq!(request_refusal(&b), Some(Refusal::Choices));
        let mut b = body();
        b.insert("logprobs".into(), json!(true));
        assert_eq!(request_refusal(&b), Some(Refusal::Logprobs));
        let mut b = body();
        b.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {}}),
        );
        assert_eq!(request_refusal(&b), Some(Refusal::JsonFormat));
        let mut b = body();
        b.insert("response_format".into(), json!({"type": "text"}));
        assert_eq!(request_refusal(&b), None);
    }

    /// A tool call in the partial answer rules a continuation out; so does an answer past
    /// the size bound.
    #[test]
    fn partial_guards() {
        let mut p = partial(&["a"]);
        assert_eq!(p.refusal(), None);
        p.observe(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}));
        assert_eq!(p.refusal(), Some(Refusal::ToolCall));
        let big = "x".repeat(MAX_PARTIAL);
        let p = partial(&["a", &big]);
        assert_eq!(p.refusal(), Some(Refusal::TooLong));
    }

    /// The text held for a continuation counts in the process-wide buffer budget while the
    /// stream lives and is given back when it ends; a budget with no room rules the
    /// continuation out (and gives back what was held) instead of holding memory unaccounted.
    #[test]
    fn held_text_counts_in_the_buffer_budget() {
        let budget = Budget::new(10);
        let mut p = Partial::counted(&budget);
        p.observe(&chunk(Some("hello"), None));
        assert_eq!(budget.used(), 5);
        assert_eq!(p.refusal(), None);
        p.observe(&chunk(Some(" world"), None));
        assert_eq!(p.refusal(), Some(Refusal::BufferBudget));
        assert_eq!(
            budget.used(),
            0,
            "what was held is given back once it is of no use"
        );
        assert_eq!(p.text(), "");
        assert_eq!(
            p.bytes, 11,
            "delivered bytes are still counted for the audit line"
        );

        let mut p = Partial::counted(&budget);
        p.observe(&chunk(Some("abc"), None));
        assert_eq!(budget.used(), 3);
        drop(p);
        assert_eq!(budget.used(), 0);
    }

    /// Prefill: the partial answer, trailing whitespace off, is the final assistant turn;
    /// prompt: the partial answer and then the continuation prompt.
    #[test]
    fn requests_per_style() {
        let b = built(Style::Prefill, "Hello wor ");
        let v: Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Hello wor"})
        );
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        assert!(b.skip_leading_ws && !b.dedupe);
        let b = built(Style::Prompt, "Hello wor ");
        let v: Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Hello wor "})
        );
        assert_eq!(v["messages"][2], json!({"role": "user", "content": PROMPT}));
        assert!(!b.skip_leading_ws && b.dedupe);
        // Nothing delivered yet: the request as the client sent it.
        let b = built(Style::Prompt, "");
        let v: Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    }

    fn built(style: Style, text: &str) -> Built {
        request(&body(), text, style).unwrap()
    }

    fn run(p: &Partial, b: &Built, chunks: Vec<Value>) -> Vec<Value> {
        let mut s = Splice::new(p, b, json!({"continued": true}));
        chunks.into_iter().filter_map(|c| s.rewrite(c)).collect()
    }

    /// The continuation keeps the first stream's id and created, sends no second role chunk,
    /// and marks the chunk with the finish_reason.
    #[test]
    fn splice_keeps_id_and_drops_the_role() {
        let p = partial(&["Hello ", "wor"]);
        let b = built(Style::Prefill, p.text());
        let mut role = chunk(Some(""), None);
        role["choices"][0]["delta"]["role"] = json!("assistant");
        let out = run(
            &p,
            &b,
            vec![role, chunk(Some("ld!"), None), chunk(None, Some("stop"))],
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|v| v["id"] == "first" && v["created"] == 1));
        assert!(out.iter().all(|v| v.pointer("/choices/0/delta/role").is_none()));
        assert_eq!(contents(&out), "ld!");
        assert_eq!(out[1]["detour"], json!({"continued": true}));
        assert!(out[0].get("detour").is_none());
    }

    /// The whitespace the prefill could not carry is not sent twice.
    #[test]
    fn prefill_drops_leading_whitespace_once() {
        let p = partial(&["Hello "]);
        let b = built(Style::Prefill, p.text());
        let out = run(
            &p,
            &b,
            vec![
                chunk(Some(" "), None),
                chunk(Some(" world"), None),
                chunk(Some(" again"), Some("stop")),
            ],
        );
        assert_eq!(contents(&out), "world again");
    }

    /// A prompt continuation that restarts the answer, or repeats its last words, loses the
    /// repeat; one that carries on is untouched.
    #[test]
    fn prompt_continuations_lose_repeats() {
        let p = partial(&["The quick brown ", "fox jumps"]);
        let b = built(Style::Prompt, p.text());
        let restart = vec![
            chunk(Some("The quick "), None),
            chunk(Some("brown fox jumps"), None),
            chunk(Some(" over the dog."), None),
            chunk(None, Some("stop")),
        ];
        assert_eq!(contents(&run(&p, &b, restart)), " over the dog.");
        let overlap = vec![chunk(
            Some("fox jumps over the lazy dog, and then it ran far away."),
            Some("stop"),
        )];
        assert_eq!(
            contents(&run(&p, &b, overlap)),
            " over the lazy dog, and then it ran far away."
        );
        let fresh = vec![chunk(Some(" over"), None), chunk(Some(" the dog."), Some("stop"))];
        assert_eq!(contents(&run(&p, &b, fresh)), " over the dog.");
    }

    /// A restart of an answer whose delivered text ended in a space does not double it.
    #[test]
    fn restart_after_a_space_keeps_one_space() {
        let p = partial(&["tok0 ", "tok1 "]);
        let b = built(Style::Prompt, p.text());
        let out = run(
            &p,
            &b,
            vec![
                chunk(Some("tok0 "), None),
                chunk(Some("tok1 "), None),
                chunk(Some("tok2 "), None),
                chunk(None, Some("stop")),
            ],
        );
        assert_eq!(contents(&out), "tok2 ");
    }

    /// Usage is summed when both streams reported it, and left alone otherwise.
    #[test]
    fn usage_is_summed_when_both_reported() {
        let mut p = partial(&["a"]);
        let b = built(Style::Prefill, p.text());
        let usage = json!({"id": "x", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
        let out = run(&p, &b, vec![usage.clone()]);
        assert_eq!(out[0]["usage"]["completion_tokens"], 2);
        p.observe(
            &json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}),
        );
        let out = run(&p, &b, vec![usage]);
        assert_eq!(
            out[0]["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13})
        );
    }
}
