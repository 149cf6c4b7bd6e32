//! `POST /v1/responses`, natively or by translation, chosen per attempt by the target.
//!
//! - A target with the `responses` capability (`openai`, `azure-openai`, `openai-compatible`)
//!   gets the client's own body with `model` spliced in, and its answer passes through
//!   ([`native`]).
//! - Every other target gets the chat request every provider already translates
//!   ([`request`]); its answer is written back as a Response object ([`answer`]) or, for a
//!   stream, as the Responses API's typed events ([`stream`], behind the proxy's stream
//!   encoder).
//!
//! Both go through the same routing, failover (across a chain mixing both kinds), breaker,
//! deadlines and metrics as a chat request ([`crate::proxy::handle_responses`]).
//!
//! A translated target keeps no state, so a request that needs some (`previous_response_id`,
//! `conversation`, `store: true`, `background`, a stored `prompt`) — or that chat cannot
//! express — goes only to native targets; when the route has none for it, it is refused with a
//! 400 that says which capability would serve it. A translated request's `store` left out is
//! served as `store: false` (a native target applies its provider's default).
//!
//! A `previous_response_id` exists only at the provider account that created it: a request
//! naming a response a native target of this sidecar served goes to that target only, with no
//! failover (another account would answer 404); see [`native::pin`]. An unknown id goes
//! through the route's native targets as usual.
//!
//! An `item_reference` to an output item this sidecar answered with by translation recently
//! ([`items`]) is sent as that item, to translated and native targets alike (the provider
//! never saw that id); any other reference is passed to a native target untouched, for the
//! provider to resolve.

pub mod answer;
pub mod items;
pub mod native;
pub mod request;
pub mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use serde_json::{Map, Value};

use detour_api::table::{Capability, Provider, Target};

use crate::audit::SkipRecord;
use crate::body::Response;
use crate::error::Reason;
use crate::layers::body_limit::Bounded;
use crate::providers::answer::RequestBody;
use crate::proxy::{self, Shared};
use crate::routing::Plan;
use crate::state::TargetRt;

/// The request fields a Response repeats (`tools`, `tool_choice`, `instructions`, ...).
pub type Echo = Arc<Map<String, Value>>;

/// Serves one `POST /v1/responses`, its body read whole under the body limit.
pub async fn handle(shared: Arc<Shared>, req: Request<Bounded>) -> Response {
    let (parts, raw) = req.into_parts();
    let raw = raw.into_bytes();
    let body = match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Reason::NotAnObject.refusal(),
        Err(e) => return Reason::InvalidJson { error: e.to_string() }.refusal(),
    };
    let pinned = body
        .get("previous_response_id")
        .and_then(Value::as_str)
        .and_then(native::pin::recall);
    let native_body = match with_known_items(&body) {
        Some(b) => b,
        None => raw,
    };
    let Ok(native_body) = RequestBody::parse(native_body) else {
        return Reason::NotAnObject.refusal();
    };
    let (chat, echo, only_native) = match request::to_chat(&body) {
        Ok(t) => (t.chat, t.echo, None),
        // Not translatable: only a native target may serve it; the chat body routes it.
        Err(e) => {
            let mut chat = Map::new();
            if let Some(m) = body.get("model") {
                chat.insert("model".to_owned(), m.clone());
            }
            if body.get("stream").and_then(Value::as_bool) == Some(true) {
                chat.insert("stream".to_owned(), Value::Bool(true));
            }
            (chat, Map::new(), Some(e))
        }
    };
    drop(body);
    let Ok(chat) = serde_json::to_vec(&chat) else {
        return Reason::Untranslatable.refusal();
    };
    let req = Request::from_parts(parts, Bytes::from(chat));
    let native = Native {
        echo: Arc::new(echo),
        body: native_body,
        only_native,
        pinned,
    };
    proxy::handle_responses(shared, req, Box::new(native)).await
}

/// What a Responses request sends to native targets, where it may go, and what a translated
/// answer repeats.
#[derive(Debug)]
pub struct Native {
    /// The request fields a translated answer repeats.
    pub echo: Echo,
    /// The client's body (known `item_reference`s replaced by their items).
    pub body: RequestBody,
    /// Why it cannot be translated, when it cannot: only native targets may serve it, and
    /// this is the answer when none may.
    pub only_native: Option<Box<Reason>>,
    /// The target that served its `previous_response_id`: the only one it may go to.
    pub pinned: Option<native::pin::Served>,
}

/// Whether `target` serves the Responses API natively: it declares the capability, and its
/// provider speaks the API (a hand-written table is not trusted with the rest).
pub fn serves_natively(target: &Target) -> bool {
    matches!(
        target.provider,
        Provider::Openai | Provider::AzureOpenai | Provider::OpenaiCompatible
    ) && target
        .capabilities
        .as_ref()
        .is_some_and(|c| c.contains(&Capability::Responses))
}

/// The body with every `item_reference` to an item this sidecar answered with by translation
/// replaced by the item, without its id (which only this sidecar knows); `None` when there is
/// none (the client's bytes are sent).
fn with_known_items(body: &Map<String, Value>) -> Option<Bytes> {
    let input = body.get("input")?.as_array()?;
    let known = |item: &Value| {
        (item.get("type").and_then(Value::as_str) == Some("item_reference"))
            .then(|| item.get("id").and_then(Value::as_str))
            .flatten()
            .and_then(items::recall)
            .filter(|i| i.get("type").and_then(Value::as_str) != Some("item_reference"))
            .map(|mut i| {
                if let Some(o) = i.as_object_mut() {
                    o.remove("id");
                }
                i
            })
    };
    if !input.iter().any(|i| known(i).is_some()) {
        return None;
    }
    let input: Vec<Value> = input
        .iter()
        .map(|i| known(i).unwrap_or_else(|| i.clone()))
        .collect();
    let mut out = body.clone();
    out.insert("input".to_owned(), Value::Array(input));
    serde_json::to_vec(&out).ok().map(Bytes::from)
}

/// A chat completion's bytes (the model already as the client gets it) as a Response's.
pub fn json_answer(chat: &Bytes, echo: &Echo) -> Bytes {
    let Ok(v) = serde_json::from_slice::<Value>(chat) else {
        return chat.clone();
    };
    let r = answer::from_chat(&v, echo, &answer::Ids::new());
    for item in r.get("output").and_then(Value::as_array).into_iter().flatten() {
        items::remember(item);
    }
    serde_json::to_vec(&r).map_or_else(|_| chat.clone(), Bytes::from)
}

/// Seconds since the epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Narrows a Responses request's plan to the targets that may serve it: the one that served
/// its `previous_response_id` (no failover: the response exists only at that provider
/// account), else, when it cannot be translated, the native ones; a request with none left is
/// refused with the reason it could not be translated.
pub fn narrow(plan: &mut Plan, native: &Native, route: &str) -> Result<(), Box<Reason>> {
    let skip = |plan: &mut Plan, keep: &dyn Fn(&TargetRt) -> bool, reason: &'static str| {
        let (kept, left): (Vec<_>, Vec<_>) = plan.targets.drain(..).partition(|t| keep(t));
        plan.targets = kept;
        plan.skipped.extend(left.into_iter().map(|t| SkipRecord {
            target: t.cfg.name.clone(),
            reason,
        }));
    };
    if let Some(p) = native.pinned.as_ref().filter(|p| p.route == route)
        && plan
            .targets
            .iter()
            .any(|t| t.cfg.name == p.target && serves_natively(&t.cfg))
    {
        skip(plan, &|t| t.cfg.name == p.target, "pinned");
        return Ok(());
    }
    if let Some(why) = &native.only_native
        && !plan.targets.is_empty()
    {
        skip(plan, &|t| serves_natively(&t.cfg), "capability");
        if plan.targets.is_empty() {
            return Err(why.clone());
        }
    }
    Ok(())
}
