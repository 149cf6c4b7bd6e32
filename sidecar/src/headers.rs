//! The names of the `x-detour-*` headers, for every layer that reads or writes them (built at
//! compile time: no parsing per request).

use http::HeaderName;

// Request headers: what the client asks of Detour (read in `proxy::options`).

/// `key=value` tags, comma-separated, that the routing rules match.
pub const H_TAGS: HeaderName = HeaderName::from_static("x-detour-tags");
/// Request: the one target to use (an override the policy must allow). Response: the target
/// that served (`none` when none did).
pub const H_TARGET: HeaderName = HeaderName::from_static("x-detour-target");
/// `off`: no failover for this request (an override the policy must allow).
pub const H_FALLBACK: HeaderName = HeaderName::from_static("x-detour-fallback");
/// The client's own bound on the whole response, in milliseconds.
pub const H_TIMEOUT: HeaderName = HeaderName::from_static("x-detour-timeout-ms");
/// `off`: do not continue this request's stream on another target if it breaks (allowed
/// when the policy sets `overrides.allowDisableFallback`).
pub const H_CONTINUE: HeaderName = HeaderName::from_static("x-detour-continue");

// Response headers: stamped by `proxy` on every answer it writes; `layers::request_id` adds
// the request id and fills in the rest on any other response.

/// The request's id, as in the audit line.
pub const H_REQUEST_ID: HeaderName = HeaderName::from_static("x-detour-request-id");
/// The route's id (the `model` the client sent), whatever the body's `model` says.
pub const H_ROUTE: HeaderName = HeaderName::from_static("x-detour-route");
/// The provider of the target that served (`none` when none did).
pub const H_PROVIDER: HeaderName = HeaderName::from_static("x-detour-provider");
/// How many times the request moved on to another target.
pub const H_FALLBACK_COUNT: HeaderName = HeaderName::from_static("x-detour-fallback-count");
/// The complexity score (or `unscored`), under the cost/quality strategies only.
pub const H_SCORE: HeaderName = HeaderName::from_static("x-detour-score");
