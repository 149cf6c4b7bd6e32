//! A chat completion as a Response object: the assistant's reasoning (when the upstream gave
//! it as `reasoning_content`), its text as a `message` item, each tool call as a
//! `function_call` item with its call id, the usage under the Responses names, the request's
//! echoed fields. Also the Response skeleton the stream's events carry.

use serde_json::{Map, Value, json};

/// The ids of one response and its items, from one random base.
#[derive(Debug, Clone)]
pub struct Ids {
    base: String,
}

impl Ids {
    pub fn new() -> Self {
        Self {
            base: format!("{:032x}", fastrand::u128(..)),
        }
    }

    pub fn response(&self) -> String {
        format!("resp_{}", self.base)
    }

    /// The id of output item `n` of `kind` (`msg`, `fc`, `rs`).
    pub fn item(&self, kind: &str, n: usize) -> String {
        format!("{kind}_{}_{n}", self.base)
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

/// A Response object. `usage` is the chat usage (or null); `status` one of `in_progress`,
/// `completed`, `incomplete`, `failed`.
#[expect(
    clippy::too_many_arguments,
    reason = "each is one field of the Response object"
)]
pub fn response(
    ids: &Ids,
    echo: &Map<String, Value>,
    created_at: u64,
    model: &Value,
    status: &str,
    output: Vec<Value>,
    usage: Option<&Value>,
    finish_reason: Option<&str>,
) -> Value {
    let incomplete = match (status, finish_reason) {
        ("incomplete", Some("content_filter")) => json!({"reason": "content_filter"}),
        ("incomplete", _) => json!({"reason": "max_output_tokens"}),
        _ => Value::Null,
    };
    let mut r = json!({
        "id": ids.response(),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": usage.map_or(Value::Null, self::usage),
        "metadata": {},
    });
    if let Some(obj) = r.as_object_mut() {
        for (k, v) in echo {
            if !v.is_null() {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    r
}

/// Chat usage under the Responses names.
pub fn usage(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let input = n("/prompt_tokens");
    let output = n("/completion_tokens");
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n("/prompt_tokens_details/cached_tokens")},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": u.get("total_tokens").and_then(Value::as_u64).unwrap_or(input + output),
    })
}

/// The status a chat `finish_reason` makes.
pub fn status_of(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length" | "content_filter") => "incomplete",
        _ => "completed",
    }
}

/// A `message` item with one `output_text` part.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    })
}

pub fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub fn function_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

pub fn reasoning_item(id: &str, summary: &str) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [{"type": "summary_text", "text": summary}],
    })
}

/// A chat completion's JSON as a Response object's JSON.
pub fn from_chat(chat: &Value, echo: &Map<String, Value>, ids: &Ids) -> Value {
    let choice = chat.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let mut output = Vec::new();
    let reasoning = message
        .get("reasoning_content")
        .or_else(|| message.get("reasoning"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if let Some(r) = reasoning {
        output.push(reasoning_item(&ids.item("rs", output.len()), r));
    }
    let text = message.get("content").and_then(Value::as_str).unwrap_or("");
    let refusal = message.get("refusal").and_then(Value::as_str);
    let calls = message.get("tool_calls").and_then(Value::as_array);
    if let Some(r) = refusal.filter(|r| !r.is_empty()) {
        output.push(json!({
            "type": "message", "id": ids.item("msg", output.len()), "status": "completed",
            "role": "assistant", "content": [{"type": "refusal", "refusal": r}],
        }));
    } else if !text.is_empty() || calls.is_none_or(Vec::is_empty) {
        output.push(message_item(&ids.item("msg", output.len()), text, "completed"));
    }
    for c in calls.into_iter().flatten() {
        let s = |p: &str| c.pointer(p).and_then(Value::as_str).unwrap_or("");
        output.push(function_item(
            &ids.item("fc", output.len()),
            s("/id"),
            s("/function/name"),
            s("/function/arguments"),
            "completed",
        ));
    }
    let created = chat.get("created").and_then(Value::as_u64).unwrap_or(0);
    let model = chat.get("model").cloned().unwrap_or(Value::Null);
    response(
        ids,
        echo,
        created,
        &model,
        status_of(finish),
        output,
        chat.get("usage"),
        finish,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text, tool calls with their call ids, usage and the echoed request fields; a
    /// `length` finish is an incomplete response.
    #[test]
    fn chat_completion_as_response() {
        let chat = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "claude-x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "let me look", "reasoning_content": "think",
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get", "arguments": "{\"c\":1}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                      "prompt_tokens_details": {"cached_tokens": 2}}
        });
        let echo: Map<String, Value> =
            json!({"tools": [{"type": "function", "name": "get"}], "temperature": 0.5})
                .as_object()
                .unwrap()
                .clone();
        let ids = Ids::new();
        let r = from_chat(&chat, &echo, &ids);
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], "claude-x");
        assert_eq!(r["created_at"], 7);
        assert_eq!(r["temperature"], 0.5);
        assert_eq!(r["tools"][0]["name"], "get");
        assert!(r["id"].as_str().unwrap().starts_with("resp_"));
        let out = r["output"].as_array().unwrap();
        assert_eq!(out[0]["type"], "reasoning");
        assert_eq!(out[0]["summary"][0]["text"], "think");
        assert_eq!(
            out[1]["content"][0],
            json!({"type": "output_text", "text": "let me look", "annotations": [], "logprobs": []})
        );
        assert_eq!(out[2]["type"], "function_call");
        assert_eq!(out[2]["call_id"], "call_9");
        assert_eq!(out[2]["arguments"], "{\"c\":1}");
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 3,
                   "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8})
        );
        let cut = json!({"choices": [{"finish_reason": "length", "message": {"content": "abc"}}]});
        let r = from_chat(&cut, &Map::new(), &ids);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }
}
