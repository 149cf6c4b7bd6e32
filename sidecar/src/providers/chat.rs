//! The client's OpenAI chat request read once into a neutral form, which the translating
//! providers (`anthropic`, `bedrock`) then write in their own wire format.
//!
//! Contract: everything a provider must map is here or is rejected here with a 400 naming the
//! field (`messages[2].content[0].type`, ...); fields with no counterpart and no effect on
//! the answer's shape (`presence_penalty`, `seed`, `logit_bias`, ...) are dropped, as listed
//! in `docs/providers.md`.

use serde_json::{Map, Value};

use super::Failure;
use super::upstream::unsupported;

/// The default `max_tokens` when the client sent none (Anthropic and Bedrock require one;
/// OpenAI's own default is "as many as fit").
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An image: inline bytes (a `data:` URL) or a URL the provider fetches.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Data { media_type: String, base64: String },
    Url(String),
}

/// One piece of a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    /// An assistant's tool call; `input` is the parsed `arguments`.
    ToolCall {
        id: String,
        name: String,
        input: Value,
    },
    /// A tool's answer to the call `id`.
    ToolResult {
        id: String,
        text: String,
    },
}

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One turn; consecutive messages of the same role are merged (tool results join the user
/// turn), because both providers want strictly alternating turns.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// A function tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { name: String, schema: Value },
}

/// The request, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    pub system: Vec<String>,
    pub turns: Vec<Turn>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: ResponseFormat,
    pub max_tokens: u64,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub user: Option<String>,
}

impl Chat {
    /// The system texts plus, for `response_format`, the instruction that asks for JSON.
    pub fn system_with_format(&self) -> Vec<String> {
        let mut out = self.system.clone();
        match &self.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => out.push(
                "Respond with a single valid JSON object and nothing else: no prose, no code fences."
                    .to_owned(),
            ),
            ResponseFormat::JsonSchema { name, schema } => out.push(format!(
                "Respond with a single valid JSON object and nothing else (no prose, no code fences) that conforms to this JSON Schema named {name:?}: {schema}"
            )),
        }
        out
    }
}

fn text_of(provider: &'static str, at: &str, content: &Value) -> Result<String, Failure> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(t);
                    }
                    _ => {
                        return Err(unsupported(
                            provider,
                            &format!("{at}[{i}].type"),
                            "only text parts are supported here",
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(unsupported(provider, at, "must be a string or an array of parts")),
    }
}

fn image_of(provider: &'static str, at: &str, part: &Value) -> Result<Image, Failure> {
    let url = part
        .get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| unsupported(provider, &format!("{at}.image_url.url"), "is required"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            unsupported(
                provider,
                &format!("{at}.image_url.url"),
                "is not a valid data URL",
            )
        })?;
        let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
            unsupported(
                provider,
                &format!("{at}.image_url.url"),
                "data URLs must be base64-encoded",
            )
        })?;
        Ok(Image::Data {
            media_type: media_type.to_owned(),
            base64: data.to_owned(),
        })
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(Image::Url(url.to_owned()))
    } else {
        Err(unsupported(
            provider,
            &format!("{at}.image_url.url"),
            "must be an http(s) or data: URL",
        ))
    }
}

fn user_parts(provider: &'static str, at: &str, content: &Value) -> Result<Vec<Part>, Failure> {
    match content {
        Value::String(s) => Ok(vec![Part::Text(s.clone())]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (i, p) in parts.iter().enumerate() {
                let pat = format!("{at}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(Part::Text(
                        p.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| unsupported(provider, &format!("{pat}.text"), "is required"))?
                            .to_owned(),
                    )),
                    Some("image_url") => out.push(Part::Image(image_of(provider, &pat, p)?)),
                    Some(other) => {
                        return Err(unsupported(
                            provider,
                            &format!("{pat}.type"),
                            &format!("content parts of type {other:?} are not supported"),
                        ));
                    }
                    None => return Err(unsupported(provider, &format!("{pat}.type"), "is required")),
                }
            }
            Ok(out)
        }
        _ => Err(unsupported(provider, at, "must be a string or an array of parts")),
    }
}

fn push(turns: &mut Vec<Turn>, role: Role, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(t) if t.role == role => t.parts.extend(parts),
        _ => turns.push(Turn { role, parts }),
    }
}

fn str_field<'a>(v: &'a Value, provider: &'static str, at: &str) -> Result<&'a str, Failure> {
    v.as_str()
        .ok_or_else(|| unsupported(provider, at, "must be a string"))
}

/// Reads the client's chat request.
pub fn read(provider: &'static str, body: &Map<String, Value>) -> Result<Chat, Failure> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported(provider, "n", "only n = 1 is supported"));
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| unsupported(provider, "messages", "is required and must be an array"))?;
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| unsupported(provider, &format!("{at}.role"), "is required"))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let cat = format!("{at}.content");
        match role {
            "system" | "developer" => system.push(text_of(provider, &cat, content)?),
            "user" => push(&mut turns, Role::User, user_parts(provider, &cat, content)?),
            "assistant" => {
                let mut parts = Vec::new();
                let text = text_of(provider, &cat, content)?;
                if !text.is_empty() {
                    parts.push(Part::Text(text));
                }
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (j, c) in calls.iter().enumerate() {
                        let cat = format!("{at}.tool_calls[{j}]");
                        let f = c.get("function").unwrap_or(&Value::Null);
                        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                        let input = if args.trim().is_empty() {
                            Value::Object(Map::new())
                        } else {
                            serde_json::from_str::<Value>(args).map_err(|_| {
                                unsupported(
                                    provider,
                                    &format!("{cat}.function.arguments"),
                                    "must be a JSON object",
                                )
                            })?
                        };
                        parts.push(Part::ToolCall {
                            id: str_field(
                                c.get("id").unwrap_or(&Value::Null),
                                provider,
                                &format!("{cat}.id"),
                            )?
                            .to_owned(),
                            name: str_field(
                                f.get("name").unwrap_or(&Value::Null),
                                provider,
                                &format!("{cat}.function.name"),
                            )?
                            .to_owned(),
                            input,
                        });
                    }
                }
                push(&mut turns, Role::Assistant, parts);
            }
            "tool" => {
                let id = str_field(
                    m.get("tool_call_id").unwrap_or(&Value::Null),
                    provider,
                    &format!("{at}.tool_call_id"),
                )?
                .to_owned();
                let text = text_of(provider, &cat, content)?;
                push(&mut turns, Role::User, vec![Part::ToolResult { id, text }]);
            }
            other => {
                return Err(unsupported(
                    provider,
                    &format!("{at}.role"),
                    &format!("role {other:?} is not supported (use tool messages for tool results)"),
                ));
            }
        }
    }
    if turns.is_empty() {
        return Err(unsupported(
            provider,
            "messages",
            "needs at least one user or assistant message besides system messages",
        ));
    }
    let mut tools = Vec::new();
    if let Some(list) = body.get("tools").and_then(Value::as_array) {
        for (i, t) in list.iter().enumerate() {
            let at = format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(unsupported(
                    provider,
                    &format!("{at}.type"),
                    "only function tools are supported",
                ));
            }
            let f = t.get("function").unwrap_or(&Value::Null);
            tools.push(Tool {
                name: str_field(
                    f.get("name").unwrap_or(&Value::Null),
                    provider,
                    &format!("{at}.function.name"),
                )?
                .to_owned(),
                description: f.get("description").and_then(Value::as_str).map(str::to_owned),
                parameters: f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            });
        }
    }
    let tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(unsupported(
                    provider,
                    "tool_choice",
                    "must be auto, none, required or a function",
                ));
            }
        }),
        Some(v) => Some(ToolChoice::Named(
            v.pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| unsupported(provider, "tool_choice.function.name", "is required"))?
                .to_owned(),
        )),
    };
    let response_format = match body.get("response_format") {
        None | Some(Value::Null) => ResponseFormat::Text,
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => ResponseFormat::Text,
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => {
                let js = rf.get("json_schema").unwrap_or(&Value::Null);
                ResponseFormat::JsonSchema {
                    name: js
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("response")
                        .to_owned(),
                    schema: js.get("schema").cloned().ok_or_else(|| {
                        unsupported(provider, "response_format.json_schema.schema", "is required")
                    })?,
                }
            }
            _ => {
                return Err(unsupported(
                    provider,
                    "response_format.type",
                    "must be text, json_object or json_schema",
                ));
            }
        },
    };
    let max_tokens = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(_) => {
            return Err(unsupported(
                provider,
                "stop",
                "must be a string or an array of strings",
            ));
        }
    };
    Ok(Chat {
        system,
        turns,
        tools,
        tool_choice,
        parallel_tool_calls: body.get("parallel_tool_calls").and_then(Value::as_bool),
        response_format,
        max_tokens,
        temperature: body.get("temperature").and_then(Value::as_f64),
        top_p: body.get("top_p").and_then(Value::as_f64),
        stop,
        user: body.get("user").and_then(Value::as_str).map(str::to_owned),
    })
}

/// Whether the client asked for the usage chunk.
pub fn include_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_v(v: Value) -> Result<Chat, Failure> {
        read("test", v.as_object().unwrap())
    }

    /// System messages are lifted, tool results join the user turn, and the default
    /// `max_tokens` applies when the client sent none.
    #[test]
    fn reads_turns_and_defaults() {
        let c = read_v(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": "thanks"}
        ]}))
        .unwrap();
        assert_eq!(c.system, vec!["be brief"]);
        assert_eq!(c.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(c.turns.len(), 3);
        assert_eq!(
            c.turns[2].parts,
            vec![
                Part::ToolResult {
                    id: "c1".into(),
                    text: "42".into()
                },
                Part::Text("thanks".into())
            ]
        );
    }

    /// A request a provider cannot express is a 400 naming the field.
    #[test]
    fn rejects_with_the_field_named() {
        let f = read_v(json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}))
            .unwrap_err();
        assert_eq!(f.status, Some(400));
        let body: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["param"], "messages[0].content[0].type");
        let f = read_v(json!({"n": 2, "messages": [{"role": "user", "content": "x"}]})).unwrap_err();
        assert_eq!(f.status, Some(400));
    }
}
