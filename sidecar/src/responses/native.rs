//! `POST /v1/responses` passed through to a target that serves the Responses API itself (the
//! `responses` capability on an `openai`, `azure-openai` or `openai-compatible` target).
//!
//! The request is the client's own body with `model` spliced in (never translated, never
//! re-assembled), sent to the provider's Responses URL ([`crate::providers::Endpoint::Responses`]);
//! the answer goes back as the provider wrote it, JSON or SSE. What the proxy reads of it:
//! - a JSON answer: its `id` (remembered, see [`pin`]), `usage` (`input_tokens`,
//!   `output_tokens`), and whether its `status` is `failed` (a failure like a 5xx);
//! - each stream event ([`parse_event`]): its `type`. `response.completed` and
//!   `response.incomplete` end the answer properly (their `response.usage` is counted);
//!   `response.failed` and `error` are failures — before anything reached the client they fail
//!   over like a 5xx, after that the stream breaks as every stream does (an `error` event,
//!   the body ends abnormally). `response.created` and `response.in_progress` carry no output,
//!   so they are held with the first real event: a response that fails right after it was
//!   created still fails over. Any other event, `data: [DONE]` included, is passed on as it
//!   came; a stream whose body ends before its terminal event is broken.
//!
//! A native stream is never continued on another target (continuation rewrites chat chunks).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::class::Class;
use crate::encode::Out;
use crate::providers::answer::Usage;
use crate::providers::{Event, Failure, sse};
use crate::state::RouteRt;

/// One event of a native Responses stream, as the provider framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeEvent {
    /// The event without its blank line (`event: …` and `data: …` lines as they came).
    pub raw: Bytes,
    /// `response.completed` or `response.incomplete`: the answer is whole.
    pub terminal: bool,
    /// `response.created` or `response.in_progress`: nothing of the answer yet.
    pub preamble: bool,
    /// The usage a terminal event reports.
    pub usage: Option<Usage>,
    /// The response's id, from the events that carry the response object.
    pub response_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct TokenCounts {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl TokenCounts {
    fn usage(&self) -> Usage {
        Usage {
            prompt: self.input_tokens.unwrap_or(0),
            completion: self.output_tokens.unwrap_or(0),
        }
    }
}

/// What is read of a Response object (every other field is skipped unread).
#[derive(Deserialize, Default)]
struct ResponseHead {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    usage: Option<TokenCounts>,
}

/// What is read of a stream event.
#[derive(Deserialize, Default)]
struct EventHead {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    response: Option<ResponseHead>,
}

/// What the proxy needs of a native JSON answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: Option<String>,
    pub usage: Option<Usage>,
    /// `status: failed`: the provider answered 200 with a failed response.
    pub failed: bool,
}

/// Reads a native JSON answer (a Response object); a body that is not one reads as empty.
pub fn summary(bytes: &[u8]) -> Summary {
    let Ok(head) = serde_json::from_slice::<ResponseHead>(bytes) else {
        return Summary::default();
    };
    Summary {
        failed: head.status.as_deref() == Some("failed"),
        usage: head.usage.as_ref().map(TokenCounts::usage),
        id: head.id,
    }
}

/// The joined `data:` lines of an event.
fn data_of(raw: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(rest);
                }
                None => data = Some(rest.to_vec()),
            }
        }
    }
    data
}

/// Reads one event of a native stream (see the module docs); `None` for comments and events
/// without data, which are not passed on.
pub fn parse_event(raw: Bytes) -> Option<Result<Event, Failure>> {
    let data = data_of(&raw)?;
    let head = serde_json::from_slice::<EventHead>(&data).unwrap_or_default();
    let kind = head.kind.as_deref().unwrap_or("");
    match kind {
        "error" => {
            return Some(Err(Failure::new(
                Class::ServerError,
                "upstream sent an error event",
            )));
        }
        "response.failed" => {
            return Some(Err(Failure::new(
                Class::ServerError,
                "upstream sent response.failed",
            )));
        }
        _ => {}
    }
    let terminal = matches!(kind, "response.completed" | "response.incomplete");
    let response = head.response.unwrap_or_default();
    Some(Ok(Event::Native(NativeEvent {
        raw,
        terminal,
        preamble: matches!(kind, "response.created" | "response.in_progress"),
        usage: response
            .usage
            .as_ref()
            .filter(|_| terminal)
            .map(TokenCounts::usage),
        response_id: response.id,
    })))
}

/// The stream of a native upstream, framed by the one SSE framer.
pub fn events<B>(body: B) -> crate::providers::EventStream
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    Box::pin(sse::frames(body, parse_event))
}

/// Writes a committed native stream for its client: the provider's events as they came (under
/// `responseModel: route`, the events that carry the response object name the route's id as
/// its `model`); a break as the Responses API's `error` event (the shape OpenAI's SDKs raise
/// on).
#[derive(Debug, Default)]
pub struct Encoder {
    /// The route whose id the response's `model` names (`None`: the provider's).
    route_model: Option<Arc<RouteRt>>,
}

impl Encoder {
    pub const fn new(route_model: Option<Arc<RouteRt>>) -> Self {
        Self { route_model }
    }

    pub fn encode(&mut self, out: Out<'_>) -> Bytes {
        match out {
            Out::Passed(raw) => {
                if let Some(route) = &self.route_model
                    && let Some(b) = with_route_model(&raw, &route.route.model)
                {
                    return b;
                }
                let mut b = Vec::with_capacity(raw.len() + 2);
                b.extend_from_slice(&raw);
                b.extend_from_slice(b"\n\n");
                Bytes::from(b)
            }
            Out::Opaque(raw) => {
                let mut b = Vec::with_capacity(raw.len() + 2);
                b.extend_from_slice(&raw);
                b.extend_from_slice(b"\n\n");
                Bytes::from(b)
            }
            // Not a Responses event: a client of this API could not read it.
            Out::Chunk(_) | Out::Complete => Bytes::new(),
            Out::Broken { target, class } => error_event(
                class.as_str(),
                &format!("upstream target {target} failed mid-stream ({class}); the response is incomplete"),
            ),
            Out::ClientDeadline => error_event(
                Class::Timeout.as_str(),
                "the request's x-detour-timeout-ms passed while the answer was streaming; the response is incomplete",
            ),
        }
    }
}

/// An event whose data carries the response object (`response.created`, `…completed`, …)
/// written again with `model` as the response's `model`; `None` for every other event, which
/// is passed on as it came.
fn with_route_model(raw: &[u8], model: &str) -> Option<Bytes> {
    // Only the lifecycle events hold the response object: the text deltas are not parsed.
    memchr::memmem::find(raw, b"\"response\"")?;
    let mut v: Value = serde_json::from_slice(&data_of(raw)?).ok()?;
    let kind = v.get("type")?.as_str()?.to_owned();
    let r = v.get_mut("response")?.as_object_mut()?;
    r.get("model")?;
    r.insert("model".to_owned(), Value::from(model));
    let mut out = format!("event: {kind}\ndata: ").into_bytes();
    serde_json::to_writer(&mut out, &v).ok()?;
    out.extend_from_slice(b"\n\n");
    Some(Bytes::from(out))
}

fn error_event(code: &str, message: &str) -> Bytes {
    let v = json!({"type": "error", "code": code, "message": message, "param": null,
                   "error": {"type": "upstream_error", "code": code, "message": message, "param": null}});
    let mut out = b"event: error\ndata: ".to_vec();
    if serde_json::to_writer(&mut out, &v).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The JSON of a native event's data (tests and diagnostics).
pub fn event_json(ev: &NativeEvent) -> Option<Value> {
    serde_json::from_slice(&data_of(&ev.raw)?).ok()
}

/// Which target served a response, by its id: a `previous_response_id` exists only at the
/// provider account that created it, so a request naming one goes to that target only.
///
/// Bounded: at most [`MAX_PINS`] ids; the oldest go first. The lock is held only to insert or
/// look up, never across an await. An id not (or no longer) here goes through the route's
/// native targets as usual.
pub mod pin {
    use super::{HashMap, Mutex, OnceLock, VecDeque};

    /// Response ids kept at most.
    pub const MAX_PINS: usize = 16 * 1024;
    /// A longer id is not kept (provider ids are a few dozen bytes).
    const MAX_ID: usize = 256;

    /// The route and target that served a response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Served {
        pub route: String,
        pub target: String,
    }

    #[derive(Debug, Default)]
    pub(super) struct Pins {
        by_id: HashMap<String, Served>,
        order: VecDeque<String>,
    }

    fn pins() -> &'static Mutex<Pins> {
        static PINS: OnceLock<Mutex<Pins>> = OnceLock::new();
        PINS.get_or_init(Mutex::default)
    }

    /// Notes that `target` of `route` served the response `id`.
    pub fn remember(id: &str, route: &str, target: &str) {
        if let Ok(mut g) = pins().lock() {
            g.remember(id, route, target);
        }
    }

    /// The target that served the response `id`, if it is still kept.
    pub fn recall(id: &str) -> Option<Served> {
        pins().lock().ok()?.by_id.get(id).cloned()
    }

    impl Pins {
        pub(super) fn remember(&mut self, id: &str, route: &str, target: &str) {
            if id.is_empty() || id.len() > MAX_ID {
                return;
            }
            let served = Served {
                route: route.to_owned(),
                target: target.to_owned(),
            };
            if self.by_id.insert(id.to_owned(), served).is_none() {
                self.order.push_back(id.to_owned());
            }
            while self.order.len() > MAX_PINS {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                self.by_id.remove(&oldest);
            }
        }

        #[cfg(test)]
        pub(super) fn get(&self, id: &str) -> Option<&Served> {
            self.by_id.get(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, extra: &str) -> Bytes {
        Bytes::from(format!(
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":1{extra}}}"
        ))
    }

    /// Lifecycle events are told apart by `type`: created/in-progress are preamble, completed
    /// and incomplete are terminal with their usage, failed and error are server errors;
    /// everything else (and `[DONE]`) passes through byte for byte.
    #[test]
    fn reads_event_types() {
        let created = ev(
            "response.created",
            r#","response":{"id":"resp_1","status":"in_progress","usage":null}"#,
        );
        let Some(Ok(Event::Native(n))) = parse_event(created.clone()) else {
            panic!("created")
        };
        assert!(n.preamble && !n.terminal);
        assert_eq!(n.response_id.as_deref(), Some("resp_1"));
        assert_eq!(n.raw, created);
        assert_eq!(n.usage, None);

        let delta = ev("response.output_text.delta", r#","delta":"hi","item_id":"msg_1""#);
        let Some(Ok(Event::Native(n))) = parse_event(delta.clone()) else {
            panic!("delta")
        };
        assert!(!n.preamble && !n.terminal && n.response_id.is_none());
        assert_eq!(
            sse::encode(&Event::Native(n)),
            Bytes::from([&delta[..], b"\n\n"].concat())
        );

        for kind in ["response.completed", "response.incomplete"] {
            let done = ev(
                kind,
                r#","response":{"id":"resp_1","usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}"#,
            );
            let Some(Ok(Event::Native(n))) = parse_event(done) else {
                panic!("{kind}")
            };
            assert!(n.terminal, "{kind}");
            assert_eq!(
                n.usage,
                Some(Usage {
                    prompt: 7,
                    completion: 3
                })
            );
        }
        for kind in ["response.failed", "error"] {
            let Some(Err(f)) = parse_event(ev(kind, "")) else {
                panic!("{kind}")
            };
            assert_eq!(f.class, Class::ServerError, "{kind}");
        }
        let Some(Ok(Event::Native(n))) = parse_event(Bytes::from_static(b"data: [DONE]")) else {
            panic!("done")
        };
        assert!(!n.terminal);
        assert!(parse_event(Bytes::from_static(b": keep-alive")).is_none());
    }

    /// A JSON answer's id, usage and failed status are read; anything else is ignored.
    #[test]
    fn summarises_a_response_object() {
        let s = summary(
            br#"{"id":"resp_9","object":"response","status":"completed","error":null,"output":[{"type":"message","content":[{"type":"output_text","text":"x"}]}],"usage":{"input_tokens":5,"output_tokens":2}}"#,
        );
        assert_eq!(s.id.as_deref(), Some("resp_9"));
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt: 5,
                completion: 2
            })
        );
        assert!(!s.failed);
        assert!(summary(br#"{"id":"resp_f","status":"failed"}"#).failed);
        assert_eq!(summary(b"not json"), Summary::default());
    }

    /// A break is one Responses `error` event the SDKs raise on.
    #[test]
    fn a_break_is_an_error_event() {
        let out = Encoder::default().encode(Out::Broken {
            target: "primary",
            class: Class::Reset,
        });
        let text = std::str::from_utf8(&out).unwrap();
        let data = text.strip_prefix("event: error\ndata: ").unwrap();
        let v: Value = serde_json::from_str(data.trim_end()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["code"], "reset");
        assert!(Encoder::default().encode(Out::Complete).is_empty());
    }

    /// Pins are found by id and bounded, oldest out first.
    #[test]
    fn pins_are_bounded() {
        let mut p = pin::Pins::default();
        p.remember("resp_first", "r", "a");
        assert_eq!(
            p.get("resp_first"),
            Some(&pin::Served {
                route: "r".into(),
                target: "a".into()
            })
        );
        for i in 0..pin::MAX_PINS {
            p.remember(&format!("resp_{i}"), "r", "b");
        }
        assert!(p.get("resp_first").is_none());
        assert!(p.get(&format!("resp_{}", pin::MAX_PINS - 1)).is_some());
        p.remember(&"x".repeat(1000), "r", "a");
        assert!(p.get(&"x".repeat(1000)).is_none());
    }
}
