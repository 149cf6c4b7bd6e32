//! What the client asks of Detour in `x-detour-*` request headers, read and checked.

use bytes::Bytes;
use http::{HeaderName, Request, StatusCode};

use crate::error::ApiError;
use crate::state::RouteRt;

use crate::headers::H_CONTINUE;

pub(super) fn header_str(req: &Request<Bytes>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Whether the request turns continuation off (`x-detour-continue: off`), which the policy
/// must allow (`overrides.allowDisableFallback`).
pub(super) fn continue_off(req: &Request<Bytes>, route: &RouteRt) -> Result<bool, Box<ApiError>> {
    match header_str(req, H_CONTINUE).map(str::trim) {
        None | Some("on") => Ok(false),
        Some("off") if route.route.policy.overrides.allow_disable_fallback => Ok(true),
        Some("off") => Err(Box::new(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "override_not_allowed",
            format!(
                "x-detour-continue: off is not allowed for model {:?}: its policy {} does not set overrides.allowDisableFallback",
                route.route.model, route.route.policy.source
            ),
        ))),
        Some(_) => Err(Box::new(ApiError::invalid(
            "invalid_header",
            "x-detour-continue must be \"off\" or \"on\"",
        ))),
    }
}
