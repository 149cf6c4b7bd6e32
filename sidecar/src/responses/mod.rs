//! `POST /v1/responses`, served by translation: the Responses request becomes the chat request
//! every provider already translates ([`request`]), goes through the same routing, failover,
//! breaker, deadlines and metrics as a chat request ([`crate::proxy::handle_responses`]), and its
//! answer is written back as a Response object ([`answer`]) or, for a stream, as the Responses
//! API's typed events ([`stream`], behind the proxy's stream encoder).
//!
//! Stateless: no response is stored, so `previous_response_id`, `conversation` and `store: true`
//! are refused with a 400 that says so (a translated provider keeps no state the next request
//! could refer to). `store` left out is served as `store: false`. An `item_reference` to an
//! output item this sidecar answered with recently is sent as that item ([`items`]).

pub mod answer;
pub mod items;
pub mod request;
pub mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use serde_json::{Map, Value};

use crate::body::Response;
use crate::error::ApiError;
use crate::layers::request_id::Refused;
use crate::proxy::{self, Shared};

/// The request fields a Response repeats (`tools`, `tool_choice`, `instructions`, ...).
pub type Echo = Arc<Map<String, Value>>;

/// Serves one `POST /v1/responses`.
pub async fn handle(shared: Arc<Shared>, req: Request<Bytes>) -> Response {
    let body = match serde_json::from_slice::<Value>(req.body()) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return refuse(ApiError::invalid(
                "invalid_json",
                "the request body must be a JSON object",
            ));
        }
        Err(e) => {
            return refuse(ApiError::invalid(
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            ));
        }
    };
    let translated = match request::to_chat(&body) {
        Ok(t) => t,
        Err(e) => return refuse(*e),
    };
    drop(body);
    let Ok(chat) = serde_json::to_vec(&translated.chat) else {
        return refuse(ApiError::invalid(
            "invalid_json",
            "the request could not be translated",
        ));
    };
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, Bytes::from(chat));
    proxy::handle_responses(shared, req, Arc::new(translated.echo)).await
}

/// A request refused before routing: counted and audited by the request-id layer.
fn refuse(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.extensions_mut().insert(Refused("invalid_request"));
    resp
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
