//! Assembles an OpenAI-shaped stream into the JSON answer a non-streaming call returns.
//!
//! Why: a non-streaming call cannot tell a hung provider from a slow one until `perAttempt`
//! runs out. Sent as a stream, the same request shows life within `firstByte` and keeps
//! showing it every few tokens, so the proxy can leave a silent provider as fast as for a
//! stream and let a slow-but-alive generation finish. The client still gets one JSON body.
//!
//! Contract: the output is the JSON a non-streaming call returns, in OpenAI's field order —
//! `id`, `object`, `created`, `model`, `choices` (`index`, `message` with `role`, `content`,
//! `tool_calls`, `refusal`; `logprobs`; `finish_reason`), `usage`, `service_tier`,
//! `system_fingerprint` — as far as the stream carries it (a stream has no `annotations`, for
//! one). Values the stream carries whole (`id`, `created`, `model`, `usage`,
//! `finish_reason`, …) are copied byte for byte; content, refusals and tool-call arguments
//! are concatenated. Translating providers build their non-streaming answers with the same
//! writer ([`ChatCompletion`]), so an assembled answer and a plain one are the same bytes.
//!
//! This is also where those providers write the rest of OpenAI's chat shapes: the chunks of
//! a translated stream ([`chunk`], [`usage_chunk`]) and its whole answer ([`completion`]).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Endpoint, OpenAiJson};

/// One chunk as far as assembling reads it; anything else is ignored.
#[derive(Deserialize, Debug)]
struct Chunk {
    id: Option<Box<RawValue>>,
    created: Option<Box<RawValue>>,
    model: Option<Box<RawValue>>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<Box<RawValue>>,
    service_tier: Option<Box<RawValue>>,
    system_fingerprint: Option<Box<RawValue>>,
}

#[derive(Deserialize, Debug)]
struct ChunkChoice {
    #[serde(default)]
    index: u64,
    delta: Option<Delta>,
    /// Completions (`text_completion`) chunks.
    text: Option<String>,
    logprobs: Option<LogprobsDelta>,
    finish_reason: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default, Debug)]
struct Delta {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolDelta>,
}

#[derive(Deserialize, Debug)]
struct ToolDelta {
    #[serde(default)]
    index: u64,
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Deserialize, Debug)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize, Debug)]
struct LogprobsDelta {
    content: Option<Vec<Value>>,
}

/// What one choice has accumulated.
#[derive(Default, Debug)]
struct ChoiceSoFar {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    text: String,
    tools: BTreeMap<u64, ToolSoFar>,
    logprobs: Option<Vec<Value>>,
    finish_reason: Option<Box<RawValue>>,
}

#[derive(Default, Debug)]
struct ToolSoFar {
    id: String,
    kind: Option<String>,
    name: String,
    arguments: String,
}

/// Accumulates the chunks of one stream.
#[derive(Default, Debug)]
pub struct Assembler {
    completions: bool,
    id: Option<Box<RawValue>>,
    created: Option<Box<RawValue>>,
    model: Option<Box<RawValue>>,
    choices: BTreeMap<u64, ChoiceSoFar>,
    usage: Option<Box<RawValue>>,
    service_tier: Option<Box<RawValue>>,
    system_fingerprint: Option<Box<RawValue>>,
}

fn keep(slot: &mut Option<Box<RawValue>>, v: Option<Box<RawValue>>) {
    if let Some(v) = v
        && v.get() != "null"
    {
        *slot = Some(v);
    }
}

fn append(slot: &mut Option<String>, piece: Option<String>) {
    if let Some(p) = piece {
        slot.get_or_insert_with(String::new).push_str(&p);
    }
}

impl Assembler {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            completions: endpoint == Endpoint::Completions,
            ..Self::default()
        }
    }

    /// Adds one chunk (a `data:` payload). A chunk that does not read as one is skipped: the
    /// stream reader already refused what is not a JSON object.
    pub fn push(&mut self, chunk: &[u8]) {
        let Ok(c) = serde_json::from_slice::<Chunk>(chunk) else {
            return;
        };
        if self.id.is_none() {
            keep(&mut self.id, c.id);
        }
        if self.created.is_none() {
            keep(&mut self.created, c.created);
        }
        keep(&mut self.model, c.model);
        keep(&mut self.usage, c.usage);
        keep(&mut self.service_tier, c.service_tier);
        keep(&mut self.system_fingerprint, c.system_fingerprint);
        for ch in c.choices {
            let so_far = self.choices.entry(ch.index).or_default();
            if let Some(t) = ch.text {
                so_far.text.push_str(&t);
            }
            if let Some(d) = ch.delta {
                if d.role.is_some() {
                    so_far.role = d.role;
                }
                append(&mut so_far.content, d.content);
                append(&mut so_far.refusal, d.refusal);
                for t in d.tool_calls {
                    let tool = so_far.tools.entry(t.index).or_default();
                    if let Some(id) = t.id {
                        tool.id.push_str(&id);
                    }
                    if t.kind.is_some() {
                        tool.kind = t.kind;
                    }
                    if let Some(f) = t.function {
                        if let Some(n) = f.name {
                            tool.name.push_str(&n);
                        }
                        if let Some(a) = f.arguments {
                            tool.arguments.push_str(&a);
                        }
                    }
                }
            }
            if let Some(lp) = ch.logprobs.and_then(|l| l.content) {
                so_far.logprobs.get_or_insert_with(Vec::new).extend(lp);
            }
            keep(&mut so_far.finish_reason, ch.finish_reason);
        }
    }

    /// The answer, as a non-streaming call returns it.
    pub fn finish(self) -> Bytes {
        if self.completions {
            let out = serde_json::to_vec(&TextCompletion {
                id: self.id,
                object: "text_completion",
                created: self.created,
                model: self.model,
                choices: self
                    .choices
                    .into_iter()
                    .map(|(index, c)| TextChoice {
                        text: c.text,
                        index,
                        logprobs: c.logprobs.map(|content| Logprobs { content }),
                        finish_reason: c.finish_reason,
                    })
                    .collect(),
                usage: self.usage,
                system_fingerprint: self.system_fingerprint,
            });
            return Bytes::from(out.unwrap_or_else(|_| b"{}".to_vec()));
        }
        ChatCompletion {
            id: self.id,
            object: "chat.completion",
            created: self.created,
            model: self.model,
            choices: self
                .choices
                .into_iter()
                .map(|(index, c)| {
                    let tool_calls: Vec<ToolCall> = c
                        .tools
                        .into_values()
                        .map(|t| ToolCall {
                            id: t.id,
                            kind: t.kind.unwrap_or_else(|| "function".to_owned()),
                            function: Function {
                                name: t.name,
                                arguments: t.arguments,
                            },
                        })
                        .collect();
                    // An answer that is only tool calls has `content: null`, as OpenAI
                    // sends it (a stream's role chunk may carry an empty content).
                    let content = c.content.filter(|t| !t.is_empty() || tool_calls.is_empty());
                    ChatChoice {
                        index,
                        message: Message {
                            role: c.role.unwrap_or_else(|| "assistant".to_owned()),
                            content,
                            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                            refusal: c.refusal,
                        },
                        logprobs: c.logprobs.map(|content| Logprobs { content }),
                        finish_reason: c.finish_reason,
                    }
                })
                .collect(),
            usage: self.usage,
            service_tier: self.service_tier,
            system_fingerprint: self.system_fingerprint,
        }
        .to_bytes()
    }
}

/// A `chat.completion`, in OpenAI's field order. Values copied whole are kept as their JSON
/// text ([`raw`] makes one from a `Value`).
#[derive(Serialize, Debug)]
pub struct ChatCompletion {
    pub id: Option<Box<RawValue>>,
    pub object: &'static str,
    pub created: Option<Box<RawValue>>,
    pub model: Option<Box<RawValue>>,
    pub choices: Vec<ChatChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<Box<RawValue>>,
}

impl ChatCompletion {
    /// The JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()))
    }
}

/// A `Value` as JSON text to copy whole (`None` for `null`).
pub fn raw(v: &Value) -> Option<Box<RawValue>> {
    if v.is_null() {
        return None;
    }
    serde_json::value::to_raw_value(v).ok()
}

/// One choice of a `chat.completion`.
#[derive(Serialize, Debug)]
pub struct ChatChoice {
    pub index: u64,
    pub message: Message,
    pub logprobs: Option<Logprobs>,
    pub finish_reason: Option<Box<RawValue>>,
}

/// The assistant's message.
#[derive(Serialize, Debug)]
pub struct Message {
    pub role: String,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    pub refusal: Option<String>,
}

/// One tool call of a message.
#[derive(Serialize, Debug)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Function,
}

/// A tool call's function.
#[derive(Serialize, Debug)]
pub struct Function {
    pub name: String,
    pub arguments: String,
}

/// Token log probabilities.
#[derive(Serialize, Debug)]
pub struct Logprobs {
    pub content: Vec<Value>,
}

/// A `text_completion`, in OpenAI's field order.
#[derive(Serialize, Debug)]
struct TextCompletion {
    id: Option<Box<RawValue>>,
    object: &'static str,
    created: Option<Box<RawValue>>,
    model: Option<Box<RawValue>>,
    choices: Vec<TextChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<Box<RawValue>>,
}

#[derive(Serialize, Debug)]
struct TextChoice {
    text: String,
    index: u64,
    logprobs: Option<Logprobs>,
    finish_reason: Option<Box<RawValue>>,
}

// What the translating providers (`anthropic`, `bedrock`) write: OpenAI's chunks and answers,
// built from their own upstream's.

/// A `chat.completion.chunk` with one choice.
pub fn chunk(id: &str, created: u64, model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    })
}

/// A one-choice `chat.completion` with the fields a translated answer has, in the shape an
/// assembled stream of it has: `content` null for an answer that is only tool calls (as
/// OpenAI sends it), `refusal` null, `logprobs` null.
pub fn completion(
    id: &Value,
    created: u64,
    model: &Value,
    text: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: &str,
    usage: &Value,
) -> OpenAiJson {
    let content = (!text.is_empty() || tool_calls.is_empty()).then_some(text);
    let completion = ChatCompletion {
        id: raw(id),
        object: "chat.completion",
        created: raw(&Value::from(created)),
        model: raw(model),
        choices: vec![ChatChoice {
            index: 0,
            message: Message {
                role: "assistant".to_owned(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
            },
            logprobs: None,
            finish_reason: raw(&Value::from(finish_reason)),
        }],
        usage: raw(usage),
        service_tier: None,
        system_fingerprint: None,
    };
    let bytes = completion.to_bytes();
    OpenAiJson::parse(bytes.clone()).unwrap_or_else(|| OpenAiJson::from_value(&Value::Null))
}

/// The usage-only chunk OpenAI sends last when `stream_options.include_usage` is set.
pub fn usage_chunk(id: &str, created: u64, model: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt, completion),
    })
}

/// OpenAI's `usage` object.
pub fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
    })
}

/// Seconds since the epoch, for `created`.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(endpoint: Endpoint, chunks: &[&str]) -> String {
        let mut a = Assembler::new(endpoint);
        for c in chunks {
            a.push(c.as_bytes());
        }
        String::from_utf8(a.finish().to_vec()).unwrap()
    }

    /// Content, tool calls (interleaved, split arguments), finish reason and the usage chunk
    /// become one `chat.completion` in OpenAI's field order, values copied as sent.
    #[test]
    fn assembles_content_tool_calls_and_usage() {
        let out = assemble(
            Endpoint::Chat,
            &[
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get","arguments":""}}]},"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"lo","tool_calls":[{"index":0,"function":{"arguments":"{\"q\":"}}]},"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
            ],
        );
        assert_eq!(
            out,
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello","tool_calls":[{"id":"call_a","type":"function","function":{"name":"get","arguments":"{\"q\":1}"}}],"refusal":null},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13},"system_fingerprint":"fp_1"}"#
        );
    }

    /// Completions chunks assemble into a `text_completion`; several choices keep their order.
    #[test]
    fn assembles_text_completions_and_several_choices() {
        let out = assemble(
            Endpoint::Completions,
            &[
                r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"text":"a","index":1,"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"text":"b","index":0,"logprobs":null,"finish_reason":"length"}]}"#,
                r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"text":"c","index":1,"logprobs":null,"finish_reason":"stop"}]}"#,
            ],
        );
        assert_eq!(
            out,
            r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"text":"b","index":0,"logprobs":null,"finish_reason":"length"},{"text":"ac","index":1,"logprobs":null,"finish_reason":"stop"}]}"#
        );
    }
}
