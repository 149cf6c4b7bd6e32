//! The names of the `x-detour-*` headers, for every layer that reads or writes them (built at
//! compile time: no parsing per request), and [`Stamp`], what the response headers say.

use http::{HeaderMap, HeaderName, HeaderValue};

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

// Response headers: written on every response by `layers::request_id` alone, from the
// response's [`Stamp`].

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

/// What the `x-detour-*` response headers say about a request: left in the response's
/// extensions by the proxy (which knows the route, the target and the score), and written on
/// every response by `layers::request_id`, their one writer. A response without one (a
/// refusal before routing, the model list, a 404) says `none` and `0`.
#[derive(Clone, Debug, Default)]
pub struct Stamp {
    /// `x-detour-route`: the route's id, for a routed request.
    pub route: Option<HeaderValue>,
    /// `x-detour-target`: the target that served, or the last one tried (`none`).
    pub target: Option<HeaderValue>,
    /// `x-detour-provider`: that target's provider (`none`).
    pub provider: Option<&'static str>,
    /// `x-detour-fallback-count`.
    pub fallback_count: u32,
    /// `x-detour-score`, under the cost/quality strategies.
    pub score: Option<HeaderValue>,
}

/// The most headers a [`Stamp`] writes.
pub const STAMP_HEADERS: usize = 6;

/// A header map sized once for an answer's `own` headers, the upstream's it passes on, the
/// stamp and the `content-length` hyper adds when it writes the head, so that filling it never
/// grows it (a growth moves and rehashes every entry).
pub fn answer_headers(own: usize, upstream: usize) -> HeaderMap {
    HeaderMap::with_capacity(own + upstream + STAMP_HEADERS + 1)
}

impl Stamp {
    /// Writes the response headers (replacing any of the same name), with the request's id.
    pub fn write(self, request_id: Option<HeaderValue>, headers: &mut HeaderMap) {
        if let Some(v) = self.route {
            headers.insert(H_ROUTE, v);
        }
        headers.insert(H_TARGET, self.target.unwrap_or(HeaderValue::from_static("none")));
        headers.insert(
            H_PROVIDER,
            HeaderValue::from_static(self.provider.unwrap_or("none")),
        );
        headers.insert(H_FALLBACK_COUNT, count_header(self.fallback_count));
        if let Some(v) = self.score {
            headers.insert(H_SCORE, v);
        }
        if let Some(v) = request_id {
            headers.insert(H_REQUEST_ID, v);
        }
    }
}

/// `x-detour-fallback-count`: the common small counts without an allocation.
fn count_header(n: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp replaces whatever an inner layer or the upstream set under the same names, so
    /// each header is written once; an empty one says `none` and `0`.
    #[test]
    fn a_stamp_writes_each_header_once() {
        let mut h = HeaderMap::new();
        h.append(H_TARGET, HeaderValue::from_static("stale"));
        h.append(H_TARGET, HeaderValue::from_static("stale-too"));
        h.append(H_REQUEST_ID, HeaderValue::from_static("upstream"));
        Stamp {
            route: Some(HeaderValue::from_static("chat")),
            target: Some(HeaderValue::from_static("a")),
            provider: Some("openai"),
            fallback_count: 12,
            score: Some(HeaderValue::from_static("0.412")),
        }
        .write(Some(HeaderValue::from_static("id")), &mut h);
        for (name, value) in [
            (H_ROUTE, "chat"),
            (H_TARGET, "a"),
            (H_PROVIDER, "openai"),
            (H_FALLBACK_COUNT, "12"),
            (H_SCORE, "0.412"),
            (H_REQUEST_ID, "id"),
        ] {
            let all: Vec<_> = h.get_all(&name).iter().collect();
            assert_eq!(all, [value], "{name}");
        }

        let mut h = HeaderMap::new();
        Stamp::default().write(None, &mut h);
        assert_eq!(h[H_TARGET], "none");
        assert_eq!(h[H_PROVIDER], "none");
        assert_eq!(h[H_FALLBACK_COUNT], "0");
        assert!(!h.contains_key(H_ROUTE) && !h.contains_key(H_SCORE) && !h.contains_key(H_REQUEST_ID));
    }
}
