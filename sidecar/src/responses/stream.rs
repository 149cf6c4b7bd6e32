//! A committed chat stream written as the Responses API's typed SSE events.
//!
//! The first chunk opens the response (`response.created`, `response.in_progress`). Text
//! deltas open a `message` item (`response.output_item.added`, `response.content_part.added`)
//! and stream as `response.output_text.delta`; `reasoning_content` deltas (servers that send
//! them) as a `reasoning` item's `response.reasoning_summary_text.delta`; each tool call as a
//! `function_call` item with its call id, its arguments as `response.function_call_arguments.delta`.
//! A new kind of item closes the one before (`….done` events). The complete end closes what is
//! open and sends `response.completed` (or `response.incomplete` after a `length` or
//! `content_filter` finish) with every item and the usage. A break sends `response.failed` and
//! an `error` event (which OpenAI's SDKs raise), and the body then ends abnormally. Every event
//! carries its `sequence_number`.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::answer::{self, Ids};
use crate::class::Class;
use crate::encode::Out;
use crate::providers::OpenAiJson;
use crate::state::RouteRt;

#[derive(Debug)]
enum Item {
    Reasoning {
        id: String,
        text: String,
    },
    Text {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        args: String,
        index: u64,
    },
}

/// The Responses encoder of one stream.
#[derive(Debug)]
pub struct Encoder {
    ids: Ids,
    echo: Arc<Map<String, Value>>,
    /// The route whose id is the response's `model` (`None`: the upstream's).
    route_model: Option<Arc<RouteRt>>,
    seq: u64,
    started: bool,
    created_at: u64,
    model: Value,
    items: Vec<Item>,
    /// Items `..closed` have had their `….done` events.
    closed: usize,
    usage: Option<Value>,
    finish: Option<String>,
    out: Vec<u8>,
}

impl Encoder {
    pub fn new(echo: Arc<Map<String, Value>>, route_model: Option<Arc<RouteRt>>) -> Self {
        Self {
            ids: Ids::new(),
            echo,
            route_model,
            seq: 0,
            started: false,
            created_at: 0,
            model: Value::Null,
            items: Vec::new(),
            closed: 0,
            usage: None,
            finish: None,
            out: Vec::new(),
        }
    }

    fn emit(&mut self, kind: &str, mut v: Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("type".to_owned(), Value::from(kind));
            o.insert("sequence_number".to_owned(), Value::from(self.seq));
        }
        self.seq += 1;
        self.out.extend_from_slice(b"event: ");
        self.out.extend_from_slice(kind.as_bytes());
        self.out.extend_from_slice(b"\ndata: ");
        if serde_json::to_writer(&mut self.out, &v).is_err() {
            self.out.extend_from_slice(b"{}");
        }
        self.out.extend_from_slice(b"\n\n");
    }

    /// The bytes for the client.
    pub fn encode(&mut self, out: Out<'_>) -> Bytes {
        match out {
            Out::Chunk(a) => self.chunk(a),
            // Not a Responses event: a client of this API could not read it.
            Out::Opaque(_) | Out::Passed(_) => {}
            Out::Complete => self.complete(),
            Out::Broken { target, class } => self.failed(
                class.as_str(),
                &format!("upstream target {target} failed mid-stream ({class}); the response is incomplete"),
            ),
            Out::ClientDeadline => self.failed(
                Class::Timeout.as_str(),
                "the request's x-detour-timeout-ms passed while the answer was streaming; the response is incomplete",
            ),
        }
        Bytes::from(std::mem::take(&mut self.out))
    }

    fn snapshot(&self, status: &str, output: Vec<Value>) -> Value {
        answer::response(
            &self.ids,
            &self.echo,
            self.created_at,
            &self.model,
            status,
            output,
            self.usage.as_ref(),
            self.finish.as_deref(),
        )
    }

    fn start(&mut self, chunk: &Value) {
        self.started = true;
        self.created_at = chunk
            .get("created")
            .and_then(Value::as_u64)
            .unwrap_or_else(super::now_unix);
        self.model = match &self.route_model {
            Some(r) => Value::from(r.route.model.as_str()),
            None => chunk.get("model").cloned().unwrap_or(Value::Null),
        };
        let r = self.snapshot("in_progress", Vec::new());
        self.emit("response.created", json!({"response": r}));
        let r = self.snapshot("in_progress", Vec::new());
        self.emit("response.in_progress", json!({"response": r}));
    }

    fn chunk(&mut self, a: &OpenAiJson) {
        let Some(v) = a.to_value() else {
            return;
        };
        if !self.started {
            self.start(&v);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return;
        };
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
        }
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        let reasoning = delta
            .get("reasoning_content")
            .or_else(|| delta.get("reasoning"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(r) = reasoning {
            self.reasoning(r);
        }
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            self.text(t);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call(call);
        }
    }

    /// The open item, when it is the last one and not closed.
    fn open(&mut self) -> Option<(usize, &mut Item)> {
        let n = self.items.len();
        if self.closed < n {
            self.items.last_mut().map(|i| (n - 1, i))
        } else {
            None
        }
    }

    fn reasoning(&mut self, delta: &str) {
        if !matches!(self.open(), Some((_, Item::Reasoning { .. }))) {
            self.close_all();
            let idx = self.items.len();
            let id = self.ids.item("rs", idx);
            self.emit(
                "response.output_item.added",
                json!({"output_index": idx, "item": {"type": "reasoning", "id": id, "summary": []}}),
            );
            self.emit(
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": idx, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
            );
            self.items.push(Item::Reasoning {
                id,
                text: String::new(),
            });
        }
        let Some((idx, Item::Reasoning { id, text })) = self.open() else {
            return;
        };
        text.push_str(delta);
        let id = id.clone();
        self.emit(
            "response.reasoning_summary_text.delta",
            json!({"item_id": id, "output_index": idx, "summary_index": 0, "delta": delta}),
        );
    }

    fn text(&mut self, delta: &str) {
        if !matches!(self.open(), Some((_, Item::Text { .. }))) {
            self.close_all();
            let idx = self.items.len();
            let id = self.ids.item("msg", idx);
            self.emit(
                "response.output_item.added",
                json!({"output_index": idx, "item": {"type": "message", "id": id, "status": "in_progress",
                                                     "role": "assistant", "content": []}}),
            );
            self.emit(
                "response.content_part.added",
                json!({"item_id": id, "output_index": idx, "content_index": 0, "part": answer::text_part("")}),
            );
            self.items.push(Item::Text {
                id,
                text: String::new(),
            });
        }
        let Some((idx, Item::Text { id, text })) = self.open() else {
            return;
        };
        text.push_str(delta);
        let id = id.clone();
        self.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": idx, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn call(&mut self, call: &Value) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let known = self
            .items
            .iter()
            .enumerate()
            .skip(self.closed)
            .find_map(|(n, i)| matches!(i, Item::Call { index: x, .. } if *x == index).then_some(n));
        let n = match known {
            Some(n) => n,
            None => {
                // A new call closes the text or reasoning before it (calls stay open together:
                // their arguments may interleave).
                if !matches!(self.open(), Some((_, Item::Call { .. }))) {
                    self.close_all();
                }
                let idx = self.items.len();
                let id = self.ids.item("fc", idx);
                let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
                let (call_id, name) = (s("/id"), s("/function/name"));
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": idx, "item": answer::function_item(&id, &call_id, &name, "", "in_progress")}),
                );
                self.items.push(Item::Call {
                    id,
                    call_id,
                    name,
                    args: String::new(),
                    index,
                });
                idx
            }
        };
        let delta = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        if delta.is_empty() {
            return;
        }
        let Some(Item::Call { id, args, .. }) = self.items.get_mut(n) else {
            return;
        };
        args.push_str(delta);
        let id = id.clone();
        self.emit(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": n, "delta": delta}),
        );
    }

    /// The item as it ends up in the output.
    fn item_json(item: &Item, status: &str) -> Value {
        match item {
            Item::Reasoning { id, text } => answer::reasoning_item(id, text),
            Item::Text { id, text } => answer::message_item(id, text, status),
            Item::Call {
                id,
                call_id,
                name,
                args,
                ..
            } => answer::function_item(id, call_id, name, args, status),
        }
    }

    /// Sends the `….done` events of every item not yet closed.
    fn close_all(&mut self) {
        while self.closed < self.items.len() {
            let n = self.closed;
            self.closed += 1;
            let (kind, json) = match &self.items[n] {
                Item::Reasoning { id, text } => (0, json!({"id": id, "text": text})),
                Item::Text { id, text } => (1, json!({"id": id, "text": text})),
                Item::Call { id, name, args, .. } => (2, json!({"id": id, "name": name, "args": args})),
            };
            let id = json["id"].clone();
            match kind {
                0 => {
                    let text = json["text"].clone();
                    self.emit(
                        "response.reasoning_summary_text.done",
                        json!({"item_id": id, "output_index": n, "summary_index": 0, "text": text}),
                    );
                    self.emit(
                        "response.reasoning_summary_part.done",
                        json!({"item_id": id, "output_index": n, "summary_index": 0,
                               "part": {"type": "summary_text", "text": text}}),
                    );
                }
                1 => {
                    let text = json["text"].as_str().unwrap_or("").to_owned();
                    self.emit(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": n, "content_index": 0, "text": text, "logprobs": []}),
                    );
                    self.emit(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": n, "content_index": 0, "part": answer::text_part(&text)}),
                    );
                }
                _ => {
                    self.emit(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": n, "name": json["name"], "arguments": json["args"]}),
                    );
                }
            }
            let item = Self::item_json(&self.items[n], "completed");
            super::items::remember(&item);
            self.emit(
                "response.output_item.done",
                json!({"output_index": n, "item": item}),
            );
        }
    }

    fn complete(&mut self) {
        self.close_all();
        let output = self
            .items
            .iter()
            .map(|i| Self::item_json(i, "completed"))
            .collect();
        let status = answer::status_of(self.finish.as_deref());
        let r = self.snapshot(status, output);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({"response": r}));
    }

    fn failed(&mut self, code: &str, message: &str) {
        if !self.started {
            self.start(&Value::Null);
        }
        let output = self
            .items
            .iter()
            .map(|i| Self::item_json(i, "incomplete"))
            .collect();
        let mut r = self.snapshot("failed", output);
        r["error"] = json!({"code": "server_error", "message": message});
        self.emit("response.failed", json!({"response": r}));
        // OpenAI's flat `error` event, with the error also nested as an `error` object: the
        // shape OpenAI's SDKs raise on, and one the Vercel AI SDK reads.
        self.emit(
            "error",
            json!({"code": code, "message": message, "param": null,
                   "error": {"type": "upstream_error", "code": code, "message": message, "param": null}}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (ev, data) = e.split_once("\ndata: ").unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(ev.strip_prefix("event: ").unwrap(), v["type"]);
                v
            })
            .collect()
    }

    fn chunk(delta: Value, finish: Option<&str>) -> OpenAiJson {
        OpenAiJson::from_value(
            &json!({"id": "c", "object": "chat.completion.chunk", "created": 9, "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    }

    /// Text then a tool call, with usage: the typed events in OpenAI's order, sequence numbers
    /// counting up, and `response.completed` carrying both items and the usage.
    #[test]
    fn text_then_tool_call() {
        let mut e = Encoder::new(Arc::new(Map::new()), None);
        let mut all = Vec::new();
        let mut push = |b: Bytes| all.extend(events(&b));
        push(e.encode(Out::Chunk(&chunk(
            json!({"role": "assistant", "content": "Hel"}),
            None,
        ))));
        push(e.encode(Out::Chunk(&chunk(json!({"content": "lo"}), None))));
        push(e.encode(Out::Chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": ""}}]}),
            None,
        ))));
        push(e.encode(Out::Chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}),
            None,
        ))));
        push(e.encode(Out::Chunk(&chunk(json!({}), Some("tool_calls")))));
        push(e.encode(Out::Chunk(&OpenAiJson::from_value(&json!({"choices": [],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}})))));
        push(e.encode(Out::Complete));
        let kinds: Vec<&str> = all.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, v) in all.iter().enumerate() {
            assert_eq!(v["sequence_number"], n as u64);
        }
        let done = &all.last().unwrap()["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["model"], "up");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["call_id"], "call_1");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["usage"]["input_tokens"], 4);
        assert_eq!(all[10]["item_id"], done["output"][1]["id"]);
    }

    /// A break after text: `response.failed` then the `error` event, with the error named.
    #[test]
    fn broken_stream_fails_the_response() {
        let mut e = Encoder::new(Arc::new(Map::new()), None);
        let _ = e.encode(Out::Chunk(&chunk(json!({"content": "Hi"}), None)));
        let ev = events(&e.encode(Out::Broken {
            target: "primary",
            class: Class::Reset,
        }));
        assert_eq!(ev[0]["type"], "response.failed");
        assert_eq!(ev[0]["response"]["status"], "failed");
        assert_eq!(ev[0]["response"]["output"][0]["status"], "incomplete");
        assert_eq!(ev[1]["type"], "error");
        assert_eq!(ev[1]["code"], "reset");
        assert!(ev[1]["error"]["message"].as_str().unwrap().contains("primary"));
    }
}
