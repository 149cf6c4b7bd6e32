//! Why the sidecar refuses a request or fails it ([`Reason`]), and the one edge where a reason
//! becomes what the client reads ([`Reason::to_api_error`]): the HTTP status, and OpenAI's
//! error shape `{"error":{"message","type","param","code"}}`.
//!
//! Domain code (routing, the request options, the Responses translation, the layers) returns
//! reasons carrying facts — the field, the limit, the model, the setting that would allow it —
//! and never picks a status, a type or a code. Upstream client errors are not built here: they
//! are returned as the upstream sent them.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use crate::audit::{AttemptRecord, SkipRecord};
use crate::body::{self, Response};
use crate::budget::Exhausted;
use crate::class::Class;
use crate::layers::request_id::EarlyRefusal;

/// Why the sidecar refuses or fails a request. Each variant maps to one status, `type` and
/// `code` in [`Reason::to_api_error`]; its fields are what the message names.
#[derive(Debug, Clone)]
pub enum Reason {
    // Refused at the edge, before the body is read or routed.
    /// The request's `Host` is missing, repeated, malformed, or not its `:authority`.
    BadHost { why: &'static str },
    /// The body is over `--max-body-bytes` (declared or as it arrived).
    BodyTooLarge { max: usize },
    /// The body ended before it was whole (a cut connection, a bad chunk).
    IncompleteBody,
    /// The body did not arrive whole in time.
    BodyTimeout { secs: u64 },
    /// The process-wide buffer budget has no room for the body or the answer.
    BufferBudget(Exhausted),
    /// No such path.
    UnknownUrl { path: String },
    /// A known path with a method it does not serve.
    MethodNotAllowed { method: Method, path: String },
    /// `GET /v1/models/{id}` names no route.
    NoSuchModel { id: String },

    // Refused before routing.
    /// No route table is loaded yet.
    NotReady,
    /// The body is JSON but not an object.
    NotAnObject,
    /// The body is not JSON: the parser's message (line and column, never the content).
    InvalidJson { error: String },
    /// The body's JSON tree could not be read: the reader's sentence.
    UnreadableJson { why: String },
    /// A Responses request could not be written as a chat request.
    Untranslatable,
    /// The body names no `model`.
    NoModel { known: Vec<String> },
    /// The `model` is no route of this sidecar (`near`: the closest route id, if any is close).
    UnknownModel {
        model: String,
        near: Option<String>,
        known: Vec<String>,
    },
    /// An `x-detour-*` request header with a value it does not take.
    InvalidHeader {
        header: HeaderName,
        expected: &'static str,
    },
    /// A field of a Responses request that cannot be served as it is: `param` is its path in
    /// the request (`input[3].type`), `problem` what is wrong with it.
    InvalidValue { param: String, problem: String },
    /// A Responses request that needs state kept by the provider (`what`, at `param`), on a
    /// route with no target that may serve it natively.
    NeedsProviderState { param: String, what: &'static str },

    // Refused by the route's policy or its targets.
    /// An override header the route's policy does not allow.
    OverrideNotAllowed {
        header: Override,
        model: String,
        policy: String,
    },
    /// `x-detour-target` names no target of the route.
    UnknownTarget { model: String, targets: Vec<String> },
    /// No target of the route can serve what the request needs (`needs`, described).
    NoCapableTarget { model: String, needs: String },

    // Failed.
    /// The one target a failure is not failed over from failed without an answer to pass on.
    UpstreamFailed {
        target: String,
        class: Class,
        detail: String,
    },
    /// No target served: none was selected, every one was unavailable, or every one failed.
    AllTargetsFailed {
        model: String,
        /// Targets the plan selected.
        selected: usize,
        attempts: Vec<AttemptRecord>,
        skipped: Vec<SkipRecord>,
        /// The total deadline passed.
        deadline_passed: bool,
        /// Seconds until the first target is available again.
        retry_after: u64,
    },
}

/// A request header that overrides the route's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// `x-detour-target`: `overrides.allowTarget`.
    Target,
    /// `x-detour-fallback: off`: `overrides.allowDisableFallback`.
    FallbackOff,
    /// `x-detour-continue: off`: `overrides.allowDisableFallback`.
    ContinueOff,
}

impl Override {
    fn header(self) -> &'static str {
        match self {
            Self::Target => "x-detour-target",
            Self::FallbackOff => "x-detour-fallback: off",
            Self::ContinueOff => "x-detour-continue: off",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Self::Target => "overrides.allowTarget",
            Self::FallbackOff | Self::ContinueOff => "overrides.allowDisableFallback",
        }
    }
}

const INVALID: &str = "invalid_request_error";
const SERVER: &str = "server_error";

impl Reason {
    /// The one mapping from a reason to what the client reads.
    pub fn to_api_error(&self) -> ApiError {
        let (status, kind, code, message) = match self {
            Self::BadHost { why } => (StatusCode::BAD_REQUEST, INVALID, "bad_host", (*why).to_owned()),
            Self::BodyTooLarge { max } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                "request_too_large",
                format!(
                    "the request body is larger than this sidecar's limit of {max} bytes (--max-body-bytes)"
                ),
            ),
            Self::IncompleteBody => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "incomplete_body",
                "the request body could not be read completely".to_owned(),
            ),
            Self::BodyTimeout { secs } => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                "body_timeout",
                format!("the request body did not arrive whole within {secs}s"),
            ),
            Self::BufferBudget(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                "buffer_budget_exhausted",
                e.to_string(),
            ),
            Self::UnknownUrl { path } => (
                StatusCode::NOT_FOUND,
                INVALID,
                "unknown_url",
                format!(
                    "no route for {path}; this sidecar serves POST /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings and GET /v1/models, /v1/models/{{id}}"
                ),
            ),
            Self::MethodNotAllowed { method, path } => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                "method_not_allowed",
                format!("method {method} is not allowed on {path}"),
            ),
            // OpenAI's answer for a model that does not exist; the id is the client's own.
            Self::NoSuchModel { id } => (
                StatusCode::NOT_FOUND,
                INVALID,
                "model_not_found",
                format!(
                    "The model '{id}' does not exist: this sidecar serves only its route ids (GET /v1/models)"
                ),
            ),
            Self::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                "not_ready",
                "no route table is loaded yet; see the sidecar's log for why".to_owned(),
            ),
            Self::NotAnObject => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_json",
                "the request body must be a JSON object".to_owned(),
            ),
            Self::InvalidJson { error } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_json",
                format!("the request body is not valid JSON: {error}"),
            ),
            Self::UnreadableJson { why } => (StatusCode::BAD_REQUEST, INVALID, "invalid_json", why.clone()),
            Self::Untranslatable => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_json",
                "the request could not be translated".to_owned(),
            ),
            Self::NoModel { known } => (
                StatusCode::NOT_FOUND,
                INVALID,
                "model_not_found",
                format!(
                    "the request names no model; set \"model\" to one of: {}",
                    known.join(", ")
                ),
            ),
            Self::UnknownModel { model, near, known } => (
                StatusCode::NOT_FOUND,
                INVALID,
                "model_not_found",
                match near {
                    Some(near) => format!(
                        "the model {model:?} is not served by this sidecar; did you mean {near:?}? known models: {}",
                        known.join(", ")
                    ),
                    None => format!(
                        "the model {model:?} is not served by this sidecar; known models: {}",
                        known.join(", ")
                    ),
                },
            ),
            Self::InvalidHeader { header, expected } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_header",
                format!("{header} must be {expected}"),
            ),
            Self::InvalidValue { param, problem } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_value",
                format!("{param}: {problem}"),
            ),
            Self::NeedsProviderState { param, what } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_value",
                format!(
                    "{param}: {what} needs state kept by the provider between requests; no target of this \
                     route that may serve the request has the `responses` capability (the Responses API \
                     served natively, by an openai, azure-openai or openai-compatible target), and \
                     translation to chat completions keeps none: send the whole conversation in `input` \
                     (and `store: false`), or add `responses` to spec.targets[].capabilities of a target \
                     whose upstream serves the Responses API"
                ),
            ),
            Self::OverrideNotAllowed {
                header,
                model,
                policy,
            } => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "override_not_allowed",
                format!(
                    "{} is not allowed for model {model:?}: its policy {policy} does not set {}",
                    header.header(),
                    header.setting()
                ),
            ),
            Self::UnknownTarget { model, targets } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "unknown_target",
                format!(
                    "x-detour-target names no target of model {model:?}; its targets are: {}",
                    targets.join(", ")
                ),
            ),
            Self::NoCapableTarget { model, needs } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "no_capable_target",
                format!(
                    "no target of model {model:?} can serve this request (needs {needs}); check the targets' capabilities and contextWindow"
                ),
            ),
            Self::UpstreamFailed {
                target,
                class,
                detail,
            } => (
                match class {
                    Class::Timeout | Class::FirstByteTimeout => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                },
                "upstream_error",
                class.as_str(),
                format!("target {target} failed: {class} ({detail})"),
            ),
            Self::AllTargetsFailed {
                model,
                selected,
                attempts,
                deadline_passed,
                retry_after,
                ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                "all_targets_failed",
                if attempts.is_empty() && *selected == 0 {
                    format!(
                        "no target of model {model:?} is selected for this request (see the matching rule)"
                    )
                } else if attempts.is_empty() {
                    format!(
                        "every target of model {model:?} is unavailable (circuit open); retry in {retry_after} s"
                    )
                } else {
                    let why = if *deadline_passed {
                        " (the total deadline passed)"
                    } else {
                        ""
                    };
                    let lines: Vec<String> = attempts.iter().map(attempt_line).collect();
                    format!("all targets of model {model:?} failed{why}: {}", lines.join("; "))
                },
            ),
        };
        let mut e = ApiError {
            status,
            message,
            kind,
            param: None,
            code,
            retry_after: None,
            detail: None,
        };
        match self {
            Self::NoModel { .. } | Self::UnknownModel { .. } => e.param = Some(Cow::Borrowed("model")),
            Self::InvalidValue { param, .. } | Self::NeedsProviderState { param, .. } => {
                e.param = Some(Cow::Owned(param.clone()));
            }
            Self::NotReady => e.retry_after = Some(1),
            Self::AllTargetsFailed {
                attempts,
                skipped,
                retry_after,
                ..
            } => {
                e.retry_after = Some(*retry_after);
                e.detail = Some(json!({"attempts": attempts, "skipped": skipped}));
            }
            _ => {}
        }
        e
    }

    /// The `reason` label of `detour_refused_requests_total` and the audit line when the
    /// request is refused before it reaches the proxy (from the discriminant, never the text).
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadHost { .. } => "bad_host",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::IncompleteBody => "incomplete_body",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::BufferBudget(_) => "buffer_budget",
            Self::UnknownUrl { .. } => "unknown_url",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::NoSuchModel { .. } | Self::NoModel { .. } | Self::UnknownModel { .. } => "model_not_found",
            Self::NotReady => "not_ready",
            Self::NotAnObject
            | Self::InvalidJson { .. }
            | Self::UnreadableJson { .. }
            | Self::Untranslatable
            | Self::InvalidHeader { .. }
            | Self::InvalidValue { .. }
            | Self::NeedsProviderState { .. } => "invalid_request",
            Self::OverrideNotAllowed { .. } => "override_not_allowed",
            Self::UnknownTarget { .. } => "unknown_target",
            Self::NoCapableTarget { .. } => "no_capable_target",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::AllTargetsFailed { .. } => "all_targets_failed",
        }
    }

    /// The client's response.
    pub fn into_response(self) -> Response {
        self.to_api_error().into_response()
    }

    /// The response to a request refused before it reached the proxy, marked [`EarlyRefusal`] so
    /// the request-id layer counts it and writes its audit line.
    pub fn refusal(self) -> Response {
        let label = self.label();
        let mut resp = self.into_response();
        resp.extensions_mut().insert(EarlyRefusal(label));
        resp
    }
}

/// One attempt in an exhausted route's message: `target: class (status) (detail) after N ms`.
fn attempt_line(a: &AttemptRecord) -> String {
    format!(
        "{}: {}{}{} after {} ms",
        a.target,
        a.class,
        a.status.map(|s| format!(" ({s})")).unwrap_or_default(),
        a.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(),
        a.latency_ms.round()
    )
}

/// A reason as the client reads it; built only by [`Reason::to_api_error`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `permission_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field to fix (a path into the request for a Responses field).
    pub param: Option<Cow<'static, str>>,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Extra structured detail merged into the `error` object (e.g. the attempt list).
    pub detail: Option<serde_json::Value>,
}

impl ApiError {
    /// The JSON body.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (&self.detail, error.as_object_mut()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        json!({ "error": error })
    }

    pub fn into_response(self) -> Response {
        let bytes = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut resp = http::Response::new(body::full(bytes));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::headers::{H_CONTINUE, H_TIMEOUT};

    /// Which variant a reason is: a match without a wildcard, so a new variant does not
    /// compile until it is numbered here, and then fails [`every_reason_maps_to_its_answer`]
    /// until it has a row there.
    fn variant(r: &Reason) -> usize {
        match r {
            Reason::BadHost { .. } => 0,
            Reason::BodyTooLarge { .. } => 1,
            Reason::IncompleteBody => 2,
            Reason::BodyTimeout { .. } => 3,
            Reason::BufferBudget(_) => 4,
            Reason::UnknownUrl { .. } => 5,
            Reason::MethodNotAllowed { .. } => 6,
            Reason::NoSuchModel { .. } => 7,
            Reason::NotReady => 8,
            Reason::NotAnObject => 9,
            Reason::InvalidJson { .. } => 10,
            Reason::UnreadableJson { .. } => 11,
            Reason::Untranslatable => 12,
            Reason::NoModel { .. } => 13,
            Reason::UnknownModel { .. } => 14,
            Reason::InvalidHeader { .. } => 15,
            Reason::InvalidValue { .. } => 16,
            Reason::NeedsProviderState { .. } => 17,
            Reason::OverrideNotAllowed { .. } => 18,
            Reason::UnknownTarget { .. } => 19,
            Reason::NoCapableTarget { .. } => 20,
            Reason::UpstreamFailed { .. } => 21,
            Reason::AllTargetsFailed { .. } => 22,
        }
    }
    const VARIANTS: usize = 23;

    fn attempt(
        target: &str,
        class: Class,
        status: Option<u16>,
        detail: Option<&'static str>,
    ) -> AttemptRecord {
        AttemptRecord {
            target: target.into(),
            class,
            status,
            latency_ms: 12.4,
            detail: detail.map(Cow::Borrowed),
            upstream_request_id: None,
        }
    }

    fn failed(selected: usize, attempts: Vec<AttemptRecord>, deadline_passed: bool) -> Reason {
        Reason::AllTargetsFailed {
            model: "chat".to_owned(),
            selected,
            attempts,
            skipped: vec![SkipRecord {
                target: "c".to_owned(),
                reason: "circuit-open",
            }],
            deadline_passed,
            retry_after: 7,
        }
    }

    /// Every reason maps to the status, OpenAI `type`, `code`, refusal label and message the
    /// client has always read (the messages as they were written at each call site before
    /// the mapping moved here); no variant is left without a row.
    #[test]
    fn every_reason_maps_to_its_answer() {
        let known = vec!["chat".to_owned(), "embed".to_owned()];
        let rows: Vec<(Reason, u16, &str, &str, &str, &str)> = vec![
            (
                Reason::BadHost {
                    why: "the request has more than one Host header field",
                },
                400,
                "invalid_request_error",
                "bad_host",
                "bad_host",
                "the request has more than one Host header field",
            ),
            (
                Reason::BodyTooLarge { max: 1024 },
                413,
                "invalid_request_error",
                "request_too_large",
                "body_too_large",
                "the request body is larger than this sidecar's limit of 1024 bytes (--max-body-bytes)",
            ),
            (
                Reason::IncompleteBody,
                400,
                "invalid_request_error",
                "incomplete_body",
                "incomplete_body",
                "the request body could not be read completely",
            ),
            (
                Reason::BodyTimeout { secs: 60 },
                408,
                "invalid_request_error",
                "body_timeout",
                "body_timeout",
                "the request body did not arrive whole within 60s",
            ),
            (
                Reason::BufferBudget(Exhausted { limit: 100 }),
                503,
                "server_error",
                "buffer_budget_exhausted",
                "buffer_budget",
                "the sidecar's buffer budget of 100 bytes is in use by other requests (--max-buffered-bytes)",
            ),
            (
                Reason::UnknownUrl {
                    path: "/v2/x".to_owned(),
                },
                404,
                "invalid_request_error",
                "unknown_url",
                "unknown_url",
                "no route for /v2/x; this sidecar serves POST /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings and GET /v1/models, /v1/models/{id}",
            ),
            (
                Reason::MethodNotAllowed {
                    method: Method::GET,
                    path: "/v1/chat/completions".to_owned(),
                },
                405,
                "invalid_request_error",
                "method_not_allowed",
                "method_not_allowed",
                "method GET is not allowed on /v1/chat/completions",
            ),
            (
                Reason::NoSuchModel { id: "gpt".to_owned() },
                404,
                "invalid_request_error",
                "model_not_found",
                "model_not_found",
                "The model 'gpt' does not exist: this sidecar serves only its route ids (GET /v1/models)",
            ),
            (
                Reason::NotReady,
                503,
                "server_error",
                "not_ready",
                "not_ready",
                "no route table is loaded yet; see the sidecar's log for why",
            ),
            (
                Reason::NotAnObject,
                400,
                "invalid_request_error",
                "invalid_json",
                "invalid_request",
                "the request body must be a JSON object",
            ),
            (
                Reason::InvalidJson {
                    error: "EOF while parsing a value at line 1 column 0".to_owned(),
                },
                400,
                "invalid_request_error",
                "invalid_json",
                "invalid_request",
                "the request body is not valid JSON: EOF while parsing a value at line 1 column 0",
            ),
            (
                Reason::UnreadableJson {
                    why: "the request body must be a JSON object".to_owned(),
                },
                400,
                "invalid_request_error",
                "invalid_json",
                "invalid_request",
                "the request body must be a JSON object",
            ),
            (
                Reason::Untranslatable,
                400,
                "invalid_request_error",
                "invalid_json",
                "invalid_request",
                "the request could not be translated",
            ),
            (
                Reason::NoModel { known: known.clone() },
                404,
                "invalid_request_error",
                "model_not_found",
                "model_not_found",
                "the request names no model; set \"model\" to one of: chat, embed",
            ),
            (
                Reason::UnknownModel {
                    model: "chta".to_owned(),
                    near: Some("chat".to_owned()),
                    known: known.clone(),
                },
                404,
                "invalid_request_error",
                "model_not_found",
                "model_not_found",
                "the model \"chta\" is not served by this sidecar; did you mean \"chat\"? known models: chat, embed",
            ),
            (
                Reason::InvalidHeader {
                    header: H_TIMEOUT,
                    expected: "a positive whole number of milliseconds",
                },
                400,
                "invalid_request_error",
                "invalid_header",
                "invalid_request",
                "x-detour-timeout-ms must be a positive whole number of milliseconds",
            ),
            (
                Reason::InvalidValue {
                    param: "input[0].role".to_owned(),
                    problem: "is required".to_owned(),
                },
                400,
                "invalid_request_error",
                "invalid_value",
                "invalid_request",
                "input[0].role: is required",
            ),
            (
                Reason::NeedsProviderState {
                    param: "store".to_owned(),
                    what: "storing the response",
                },
                400,
                "invalid_request_error",
                "invalid_value",
                "invalid_request",
                "store: storing the response needs state kept by the provider between requests; no target of \
                 this route that may serve the request has the `responses` capability (the Responses API served \
                 natively, by an openai, azure-openai or openai-compatible target), and translation to chat \
                 completions keeps none: send the whole conversation in `input` (and `store: false`), or add \
                 `responses` to spec.targets[].capabilities of a target whose upstream serves the Responses API",
            ),
            (
                Reason::OverrideNotAllowed {
                    header: Override::Target,
                    model: "chat".to_owned(),
                    policy: "default/p".to_owned(),
                },
                403,
                "permission_error",
                "override_not_allowed",
                "override_not_allowed",
                "x-detour-target is not allowed for model \"chat\": its policy default/p does not set overrides.allowTarget",
            ),
            (
                Reason::UnknownTarget {
                    model: "chat".to_owned(),
                    targets: vec!["a".to_owned(), "b".to_owned()],
                },
                400,
                "invalid_request_error",
                "unknown_target",
                "unknown_target",
                "x-detour-target names no target of model \"chat\"; its targets are: a, b",
            ),
            (
                Reason::NoCapableTarget {
                    model: "chat".to_owned(),
                    needs: "tools".to_owned(),
                },
                400,
                "invalid_request_error",
                "no_capable_target",
                "no_capable_target",
                "no target of model \"chat\" can serve this request (needs tools); check the targets' capabilities and contextWindow",
            ),
            (
                Reason::UpstreamFailed {
                    target: "a".to_owned(),
                    class: Class::Reset,
                    detail: "connection reset".to_owned(),
                },
                502,
                "upstream_error",
                "reset",
                "upstream_failed",
                "target a failed: reset (connection reset)",
            ),
            (
                failed(
                    2,
                    vec![
                        attempt("a", Class::ServerError, Some(500), None),
                        attempt("b", Class::ConnectError, None, Some("refused")),
                    ],
                    true,
                ),
                503,
                "server_error",
                "all_targets_failed",
                "all_targets_failed",
                "all targets of model \"chat\" failed (the total deadline passed): a: 5xx (500) after 12 ms; b: connect-error (refused) after 12 ms",
            ),
        ];
        let seen: BTreeSet<usize> = rows.iter().map(|r| variant(&r.0)).collect();
        assert_eq!(seen, (0..VARIANTS).collect(), "one row per variant");
        for (reason, status, kind, code, label, message) in rows {
            let e = reason.to_api_error();
            assert_eq!(
                (
                    e.status.as_u16(),
                    e.kind,
                    e.code,
                    reason.label(),
                    e.message.as_str()
                ),
                (status, kind, code, label, message),
                "{reason:?}"
            );
        }
    }

    /// The facts beyond the message: `param` (static or a path into the request),
    /// `Retry-After`, the attempt list; and the other messages of the variants with several.
    #[test]
    fn reasons_carry_their_param_retry_after_and_detail() {
        let e = Reason::NoModel { known: Vec::new() }.to_api_error();
        assert_eq!(e.to_json()["error"]["param"], "model");
        let e = Reason::InvalidValue {
            param: "tools[2].type".to_owned(),
            problem: "x".to_owned(),
        }
        .to_api_error();
        assert_eq!(e.to_json()["error"]["param"], "tools[2].type");
        assert_eq!(
            Reason::BadHost { why: "x" }.to_api_error().to_json()["error"]["param"],
            json!(null)
        );
        assert_eq!(Reason::NotReady.to_api_error().retry_after, Some(1));

        let e = failed(2, vec![attempt("a", Class::Timeout, None, None)], false).to_api_error();
        assert_eq!(e.retry_after, Some(7));
        let body = e.to_json();
        assert_eq!(body["error"]["attempts"][0]["target"], "a");
        assert_eq!(body["error"]["skipped"][0]["reason"], "circuit-open");
        assert_eq!(
            body["error"]["message"],
            "all targets of model \"chat\" failed: a: timeout after 12 ms"
        );
        assert_eq!(
            failed(0, Vec::new(), false).to_api_error().message,
            "no target of model \"chat\" is selected for this request (see the matching rule)"
        );
        assert_eq!(
            failed(2, Vec::new(), false).to_api_error().message,
            "every target of model \"chat\" is unavailable (circuit open); retry in 7 s"
        );
        let timeout = Reason::UpstreamFailed {
            target: "a".to_owned(),
            class: Class::FirstByteTimeout,
            detail: "no first byte".to_owned(),
        };
        assert_eq!(timeout.to_api_error().status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            Reason::UnknownModel {
                model: "zzz".to_owned(),
                near: None,
                known: vec!["chat".to_owned()],
            }
            .to_api_error()
            .message,
            "the model \"zzz\" is not served by this sidecar; known models: chat"
        );
        for (header, text) in [
            (
                Override::FallbackOff,
                "x-detour-fallback: off is not allowed for model \"chat\": its policy p does not set overrides.allowDisableFallback",
            ),
            (
                Override::ContinueOff,
                "x-detour-continue: off is not allowed for model \"chat\": its policy p does not set overrides.allowDisableFallback",
            ),
        ] {
            let r = Reason::OverrideNotAllowed {
                header,
                model: "chat".to_owned(),
                policy: "p".to_owned(),
            };
            assert_eq!(r.to_api_error().message, text);
        }
        let r = Reason::InvalidHeader {
            header: H_CONTINUE,
            expected: "\"off\" or \"on\"",
        };
        assert_eq!(
            r.to_api_error().message,
            "x-detour-continue must be \"off\" or \"on\""
        );
    }

    /// A refusal before the proxy is marked with its label for the request-id layer.
    #[test]
    fn refusals_are_marked_with_their_label() {
        let resp = Reason::BodyTooLarge { max: 1 }.refusal();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(matches!(
            resp.extensions().get::<EarlyRefusal>(),
            Some(EarlyRefusal("body_too_large"))
        ));
        assert!(
            Reason::NotReady
                .into_response()
                .extensions()
                .get::<EarlyRefusal>()
                .is_none()
        );
    }
}
