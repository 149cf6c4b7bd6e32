//! A Responses request as the chat-completions request every provider already translates.
//!
//! `instructions` → a first `system` message; `input` (a string, or items: messages with text
//! and image parts, `function_call`, `function_call_output`) → `messages`, a function call
//! joining the assistant message before it; function `tools`, `tool_choice`,
//! `parallel_tool_calls`, `max_output_tokens`, `temperature`, `top_p`, `user`, `text.format`
//! (→ `response_format`), `reasoning.effort` (→ `reasoning_effort`), `stream` (always with the
//! usage chunk, which `response.completed` reports). Reasoning items in the input are dropped:
//! they belong to the model that wrote them.
//!
//! An `item_reference` is replaced by the item it names when this sidecar answered with it
//! recently (`super::items`). What needs state kept by the provider ([`stateful`]:
//! `previous_response_id`, `conversation`, `store: true`, `background: true`, `prompt` (a
//! stored prompt)), an unknown `item_reference`, and what chat cannot express (built-in tools
//! such as web search or file search, file inputs) cannot be translated: such a request goes
//! only to targets that serve the Responses API natively, and is refused with a 400 naming
//! the field when the route has none for it.

use serde_json::{Map, Value, json};

use crate::error::Reason;

/// The request fields a Response object echoes back.
const ECHOED: [&str; 10] = [
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
];

/// A translated request: the chat body, and what the answer echoes.
#[derive(Debug)]
pub struct Translated {
    pub chat: Map<String, Value>,
    pub echo: Map<String, Value>,
    pub stream: bool,
}

/// A field that cannot be served as it is: `param` its path, `problem` what is wrong (boxed:
/// errors are the rare path).
fn bad(param: impl Into<String>, problem: impl Into<String>) -> Box<Reason> {
    Box::new(Reason::InvalidValue {
        param: param.into(),
        problem: problem.into(),
    })
}

/// Why a stateful request is refused when no target of its route that may serve it serves the
/// Responses API natively (see the module docs).
fn stateless(param: &str, what: &'static str) -> Box<Reason> {
    Box::new(Reason::NeedsProviderState {
        param: param.to_owned(),
        what,
    })
}

/// Why the request needs state kept by the provider, if it does: it may then be served only
/// natively.
pub fn stateful(body: &Map<String, Value>) -> Option<Box<Reason>> {
    if body.get("previous_response_id").is_some_and(|v| !v.is_null()) {
        return Some(stateless("previous_response_id", "continuing a stored response"));
    }
    if body.get("conversation").is_some_and(|v| !v.is_null()) {
        return Some(stateless("conversation", "a stored conversation"));
    }
    if body.get("store").and_then(Value::as_bool) == Some(true) {
        return Some(stateless("store", "storing the response"));
    }
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Some(stateless("background", "a background response"));
    }
    if body.get("prompt").is_some_and(|v| !v.is_null()) {
        return Some(stateless("prompt", "a stored prompt template"));
    }
    None
}

/// Translates a Responses request body (refused: what needs provider state, [`stateful`]).
pub fn to_chat(body: &Map<String, Value>) -> Result<Translated, Box<Reason>> {
    if let Some(e) = stateful(body) {
        return Err(e);
    }
    let mut chat = Map::new();
    if let Some(m) = body.get("model") {
        chat.insert("model".to_owned(), m.clone());
    }
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("instructions", "must be a string")),
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(&mut messages, item, &format!("input[{i}]"))?;
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(bad("input", "must be a string or an array of input items"));
        }
    }
    if messages.is_empty() {
        return Err(bad("input", "is required"));
    }
    chat.insert("messages".to_owned(), Value::Array(messages));
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let tools = tools.as_array().ok_or_else(|| bad("tools", "must be an array"))?;
        if !tools.is_empty() {
            let out = tools
                .iter()
                .enumerate()
                .map(|(i, t)| tool(t, &format!("tools[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            chat.insert("tools".to_owned(), Value::Array(out));
        }
    }
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        chat.insert("tool_choice".to_owned(), tool_choice(choice)?);
    }
    for (from, to) in [
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
        ("service_tier", "service_tier"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.to_owned(), v.clone());
        }
    }
    if let Some(format) = body
        .get("text")
        .and_then(|t| t.get("format"))
        .filter(|v| !v.is_null())
        && let Some(rf) = response_format(format)?
    {
        chat.insert("response_format".to_owned(), rf);
    }
    if let Some(effort) = body
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        chat.insert("reasoning_effort".to_owned(), effort.clone());
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        chat.insert("stream".to_owned(), Value::Bool(true));
        chat.insert("stream_options".to_owned(), json!({"include_usage": true}));
    }
    let echo = ECHOED
        .iter()
        .filter_map(|k| body.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    Ok(Translated { chat, echo, stream })
}

/// One input item, appended to `messages`.
fn input_item(messages: &mut Vec<Value>, item: &Value, at: &str) -> Result<(), Box<Reason>> {
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.role"), "is required"))?;
            let role = match role {
                "user" | "assistant" | "system" => role,
                "developer" => "system",
                other => {
                    return Err(bad(
                        format!("{at}.role"),
                        format!("{other:?} is not one of user, assistant, system, developer"),
                    ));
                }
            };
            let content = content(
                item.get("content").unwrap_or(&Value::Null),
                &format!("{at}.content"),
            )?;
            messages.push(json!({"role": role, "content": content}));
        }
        Some("function_call") => {
            let field = |k: &str| {
                item.get(k)
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}.{k}"), "is required (a string)"))
            };
            let call = json!({
                "id": field("call_id")?,
                "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?},
            });
            // Calls join the assistant message right before them, as chat expects one
            // assistant turn with its text and its calls.
            let joined = messages.last_mut().filter(|m| {
                m.get("role").and_then(Value::as_str) == Some("assistant")
                    && m.get("content").is_none_or(|c| !c.is_array())
            });
            match joined {
                Some(Value::Object(m)) => match m.get_mut("tool_calls") {
                    Some(Value::Array(calls)) => calls.push(call),
                    _ => {
                        m.insert("tool_calls".to_owned(), Value::Array(vec![call]));
                    }
                },
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        Some("function_call_output") => {
            let id = item
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.call_id"), "is required (a string)"))?;
            let output = match item.get("output") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => Value::String(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                ),
                _ => {
                    return Err(bad(format!("{at}.output"), "is required (a string)"));
                }
            };
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
        }
        // A reasoning item belongs to the model that wrote it; other providers cannot read it.
        Some("reasoning") => {}
        Some("item_reference") => {
            let id = item.get("id").and_then(Value::as_str).unwrap_or("");
            let found = super::items::recall(id)
                .filter(|i| i.get("type").and_then(Value::as_str) != Some("item_reference"));
            match found {
                Some(found) => input_item(messages, &found, at)?,
                None => {
                    return Err(stateless(
                        at,
                        "an item_reference to an item this sidecar did not answer with recently (the \
                         Vercel AI SDK sends them for earlier turns unless providerOptions.openai.store \
                         is false)",
                    ));
                }
            }
        }
        Some(other) => {
            return Err(bad(
                format!("{at}.type"),
                format!(
                    "{other:?} items are not served by translation to chat completions \
                     (message, function_call, function_call_output and reasoning are)"
                ),
            ));
        }
    }
    Ok(())
}

/// A message's content: a string, or parts (`input_text`, `output_text`, `input_image`,
/// `refusal`) as chat parts; text-only parts become one string, which every provider reads.
fn content(c: &Value, at: &str) -> Result<Value, Box<Reason>> {
    let parts = match c {
        Value::String(_) => return Ok(c.clone()),
        Value::Array(parts) => parts,
        _ => {
            return Err(bad(at, "must be a string or an array of content parts"));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    let mut text_only = true;
    for (i, p) in parts.iter().enumerate() {
        let pat = format!("{at}[{i}]");
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                out.push(json!({"type": "text", "text": t}));
            }
            Some("refusal") => {
                let t = p.get("refusal").and_then(Value::as_str).unwrap_or("");
                out.push(json!({"type": "text", "text": t}));
            }
            Some("input_image") => {
                let url = p.get("image_url").and_then(Value::as_str).ok_or_else(|| {
                    bad(
                        format!("{pat}.image_url"),
                        "a URL or data URL is required (file_id needs the provider's file store)",
                    )
                })?;
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
                text_only = false;
            }
            other => {
                return Err(bad(
                    format!("{pat}.type"),
                    format!(
                        "{} parts are not served by translation to chat completions \
                         (input_text, output_text, input_image and refusal are)",
                        other.map_or_else(|| "untyped".to_owned(), |t| format!("{t:?}"))
                    ),
                ));
            }
        }
    }
    if text_only {
        let text: String = out
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        return Ok(Value::String(text));
    }
    Ok(Value::Array(out))
}

/// A function tool in chat's shape; built-in tools are refused.
fn tool(t: &Value, at: &str) -> Result<Value, Box<Reason>> {
    match t.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.name"), "is required"))?;
            let mut f = Map::new();
            f.insert("name".to_owned(), Value::from(name));
            for k in ["description", "parameters", "strict"] {
                if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                    f.insert(k.to_owned(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": f}))
        }
        other => Err(bad(
            format!("{at}.type"),
            format!(
                "the built-in tool {} runs at the provider and is not served by \
                 translation to chat completions; only function tools are",
                other.map_or_else(|| "(untyped)".to_owned(), |t| format!("{t:?}"))
            ),
        )),
    }
}

fn tool_choice(c: &Value) -> Result<Value, Box<Reason>> {
    match c {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(c.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.name", "is required"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad(
            "tool_choice",
            "must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": …}",
        )),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(f: &Value) -> Result<Option<Value>, Box<Reason>> {
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for k in ["name", "schema", "strict", "description"] {
                if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                    schema.insert(k.to_owned(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(bad(
            "text.format.type",
            "must be text, json_object or json_schema",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(v: Value) -> Result<Value, Box<Reason>> {
        to_chat(v.as_object().unwrap()).map(|t| Value::Object(t.chat))
    }

    /// A string input with instructions is a system and a user message; the options carry
    /// over under chat's names, and a stream always asks for the usage chunk.
    #[test]
    fn string_input_and_options() {
        let out = chat(json!({
            "model": "m", "instructions": "be brief", "input": "hi", "stream": true,
            "max_output_tokens": 50, "temperature": 0.2, "text": {"format": {"type": "json_object"}},
            "reasoning": {"effort": "low"}, "store": false, "include": ["x"], "truncation": "auto"
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "max_completion_tokens": 50, "temperature": 0.2,
                "response_format": {"type": "json_object"}, "reasoning_effort": "low",
                "stream": true, "stream_options": {"include_usage": true}
            })
        );
    }

    /// A tool round trip: the function call joins the assistant message before it, its output
    /// is a tool message with the same call id, function tools and tool_choice take chat's
    /// shape, reasoning items are dropped, images stay parts.
    #[test]
    fn items_tools_and_calls() {
        let out = chat(json!({
            "model": "m",
            "input": [
                {"role": "developer", "content": "sys"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "weather? "},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": "{\"c\":1}"},
                {"type": "function_call", "call_id": "call_2", "name": "get", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]}
            ],
            "tools": [{"type": "function", "name": "get", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get"},
            "parallel_tool_calls": false
        }))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [
                    {"type": "text", "text": "weather? "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}]},
                {"role": "assistant", "content": "checking", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"c\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"}
            ])
        );
        assert_eq!(
            out["tools"],
            json!([{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "function", "function": {"name": "get"}})
        );
        assert_eq!(out["parallel_tool_calls"], json!(false));
    }

    /// An `item_reference` to an item this sidecar answered with is sent as that item: a
    /// function call joins the assistant message, an answer's text becomes assistant text.
    #[test]
    fn known_item_references_are_resolved() {
        super::super::items::remember(&json!({"type": "function_call", "id": "fc_req_test_1",
            "call_id": "call_7", "name": "get", "arguments": "{}", "status": "completed"}));
        super::super::items::remember(
            &json!({"type": "message", "id": "msg_req_test_1", "role": "assistant",
            "status": "completed", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}),
        );
        let out = chat(json!({"input": [
            {"role": "user", "content": "hi"},
            {"type": "item_reference", "id": "msg_req_test_1"},
            {"type": "item_reference", "id": "fc_req_test_1"},
            {"type": "function_call_output", "call_id": "call_7", "output": "done"}
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ok", "tool_calls": [
                    {"id": "call_7", "type": "function", "function": {"name": "get", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_7", "content": "done"}
            ])
        );
    }

    /// State kept by the provider, built-in tools and unknown items are 400s naming the field.
    #[test]
    fn refusals_name_the_field() {
        let param = |v: Value| {
            chat(v).unwrap_err().to_api_error().to_json()["error"]["param"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            param(json!({"input": "x", "previous_response_id": "resp_1"})),
            "previous_response_id"
        );
        assert_eq!(param(json!({"input": "x", "store": true})), "store");
        assert_eq!(
            param(json!({"input": [{"type": "item_reference", "id": "msg_1"}]})),
            "input[0]"
        );
        assert_eq!(
            param(json!({"input": "x", "tools": [{"type": "web_search"}]})),
            "tools[0].type"
        );
        assert_eq!(
            param(json!({"input": [{"type": "computer_call"}]})),
            "input[0].type"
        );
        assert_eq!(param(json!({"model": "m"})), "input");
        let e = chat(json!({"input": "x", "store": true}))
            .unwrap_err()
            .to_api_error();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("natively"), "{}", e.message);
    }
}
