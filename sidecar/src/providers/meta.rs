//! What the client reads from the head of the upstream answer that served it: the provider's
//! request id (as `x-request-id`, which the OpenAI SDKs expose as `_request_id` / `request_id`)
//! and the rate-limit headers (`x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*` passed on and
//! mapped to OpenAI's names).
//!
//! Contract: built once per upstream response head ([`UpstreamMeta::from_headers`]), carried
//! beside the reply (never inside the events), applied to the client's response by the proxy.
//! Bounded whatever the peer sends: at most [`MAX_HEADERS`] headers of at most [`MAX_VALUE`]
//! bytes each; longer values and further headers are dropped. Only these names are ever taken:
//! no other upstream header reaches the client.

use http::{HeaderMap, HeaderName, HeaderValue};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Headers kept at most (OpenAI sends 6 rate-limit headers, Anthropic 12).
pub const MAX_HEADERS: usize = 24;
/// Longest value kept, in bytes.
pub const MAX_VALUE: usize = 200;

/// The client's header for the provider's request id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Where each provider puts its request id, in the order they are looked for: OpenAI and Azure
/// (`x-request-id`), Anthropic (`request-id`), Bedrock (`x-amzn-requestid`), Azure's gateway
/// (`apim-request-id`, when it sent no `x-request-id`).
const REQUEST_ID_HEADERS: [&str; 4] = [
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
    "apim-request-id",
];

/// Anthropic's rate-limit names and OpenAI's names for the same fact.
const ANTHROPIC_TO_OPENAI: [(&str, &str); 6] = [
    ("anthropic-ratelimit-requests-limit", "x-ratelimit-limit-requests"),
    (
        "anthropic-ratelimit-requests-remaining",
        "x-ratelimit-remaining-requests",
    ),
    ("anthropic-ratelimit-requests-reset", "x-ratelimit-reset-requests"),
    ("anthropic-ratelimit-tokens-limit", "x-ratelimit-limit-tokens"),
    (
        "anthropic-ratelimit-tokens-remaining",
        "x-ratelimit-remaining-tokens",
    ),
    ("anthropic-ratelimit-tokens-reset", "x-ratelimit-reset-tokens"),
];

/// The upstream response headers a client reads, from the attempt that produced them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamMeta {
    /// `x-request-id` first when the upstream sent a request id, then the rate-limit headers.
    /// One pointer, `None` when there are none: this is part of every request's future (and
    /// of every failure).
    headers: Option<Box<Headers>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Headers(Box<[(HeaderName, HeaderValue)]>);

impl UpstreamMeta {
    /// Takes the request id and the rate-limit headers from an upstream response head.
    pub fn from_headers(h: &HeaderMap) -> Self {
        Self::from_headers_at(h, OffsetDateTime::now_utc)
    }

    /// One walk over the head's names (no lookup by name: each would parse and hash the name
    /// again, and this runs on every answer). `now` is read only for an Anthropic reset time.
    fn from_headers_at(h: &HeaderMap, now: impl FnOnce() -> OffsetDateTime) -> Self {
        // The first value of each request-id name and of each Anthropic name, as `get` would
        // find them; whether any OpenAI rate-limit name is present.
        let mut ids: [Option<&HeaderValue>; REQUEST_ID_HEADERS.len()] = [None; REQUEST_ID_HEADERS.len()];
        let mut anthropic: [Option<&HeaderValue>; ANTHROPIC_TO_OPENAI.len()] =
            [None; ANTHROPIC_TO_OPENAI.len()];
        let mut has_openai = false;
        let mut has_any = false;
        // The rate-limit headers passed on as they are, so that the list is allocated once.
        let mut limits = 0;
        for (name, value) in h {
            let n = name.as_str();
            if let Some(i) = REQUEST_ID_HEADERS.iter().position(|r| *r == n) {
                ids[i].get_or_insert(value);
            } else if n.starts_with("x-ratelimit-") {
                has_openai = true;
                has_any = true;
                limits += 1;
            } else if n.starts_with("anthropic-ratelimit-") {
                has_any = true;
                limits += 1;
                if let Some(i) = ANTHROPIC_TO_OPENAI.iter().position(|(from, _)| *from == n) {
                    anthropic[i].get_or_insert(value);
                }
            }
        }
        let id = ids
            .into_iter()
            .flatten()
            .find(|v| !v.is_empty() && v.len() <= MAX_VALUE);
        if id.is_none() && !has_any {
            return Self::default();
        }
        let mapped = if has_openai {
            0
        } else {
            anthropic.iter().flatten().count()
        };
        let mut headers = Vec::with_capacity((usize::from(id.is_some()) + limits + mapped).min(MAX_HEADERS));
        if let Some(id) = id {
            headers.push((X_REQUEST_ID, id.clone()));
        }
        if has_any {
            for (name, value) in h {
                if headers.len() >= MAX_HEADERS {
                    break;
                }
                let n = name.as_str();
                if value.len() > MAX_VALUE {
                    continue;
                }
                if n.starts_with("x-ratelimit-") || n.starts_with("anthropic-ratelimit-") {
                    headers.push((name.clone(), value.clone()));
                }
            }
        }
        if !has_openai && anthropic.iter().any(Option::is_some) {
            let mut now = Some(now);
            let mut at = None;
            for ((_, to), v) in ANTHROPIC_TO_OPENAI.into_iter().zip(anthropic) {
                if headers.len() >= MAX_HEADERS {
                    break;
                }
                let Some(v) = v.filter(|v| v.len() <= MAX_VALUE) else {
                    continue;
                };
                let v = if to.starts_with("x-ratelimit-reset-") {
                    let Some(now) = at.or_else(|| now.take().map(|f| f())) else {
                        continue;
                    };
                    at = Some(now);
                    match reset_in(v, now) {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    v.clone()
                };
                headers.push((HeaderName::from_static(to), v));
            }
        }
        Self {
            headers: (!headers.is_empty()).then(|| Box::new(Headers(headers.into_boxed_slice()))),
        }
    }

    /// The provider's request id, when it sent one.
    pub fn request_id(&self) -> Option<&str> {
        self.list()
            .first()
            .filter(|(n, _)| *n == X_REQUEST_ID)
            .and_then(|(_, v)| v.to_str().ok())
    }

    /// Whether no header was taken.
    pub fn is_empty(&self) -> bool {
        self.headers.is_none()
    }

    fn list(&self) -> &[(HeaderName, HeaderValue)] {
        self.headers.as_ref().map_or(&[], |h| &h.0)
    }

    /// How many headers [`UpstreamMeta::apply`] sets.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Sets the headers on the client's response (replacing any of the same name).
    pub fn apply(&self, out: &mut HeaderMap) {
        for (name, value) in self.list() {
            out.insert(name.clone(), value.clone());
        }
    }
}

/// Anthropic's reset time (RFC 3339) as OpenAI writes it: the time left, `"12s"`.
fn reset_in(v: &HeaderValue, now: OffsetDateTime) -> Option<HeaderValue> {
    let at = OffsetDateTime::parse(v.to_str().ok()?, &Rfc3339).ok()?;
    let secs = (at - now).whole_seconds().max(0);
    HeaderValue::try_from(format!("{secs}s")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn out(m: &UpstreamMeta) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        m.apply(&mut h);
        let mut v: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    }

    /// OpenAI's request id and rate-limit headers reach the client as they came; other
    /// headers do not.
    #[test]
    fn openai_headers_pass() {
        let m = UpstreamMeta::from_headers(&map(&[
            ("x-request-id", "req_abc"),
            ("x-ratelimit-remaining-requests", "99"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("openai-organization", "org-secret"),
            ("set-cookie", "a=b"),
        ]));
        assert_eq!(m.request_id(), Some("req_abc"));
        assert_eq!(
            out(&m),
            vec![
                ("x-ratelimit-remaining-requests".into(), "99".into()),
                ("x-ratelimit-reset-tokens".into(), "6m0s".into()),
                ("x-request-id".into(), "req_abc".into()),
            ]
        );
    }

    /// Each provider's request-id header becomes `x-request-id`; Azure's `x-request-id` wins
    /// over its gateway's `apim-request-id`.
    #[test]
    fn each_providers_request_id() {
        let id = |pairs: &[(&str, &str)]| {
            UpstreamMeta::from_headers(&map(pairs))
                .request_id()
                .map(str::to_owned)
        };
        assert_eq!(id(&[("request-id", "req_01A")]).as_deref(), Some("req_01A"));
        assert_eq!(id(&[("x-amzn-RequestId", "0f1e")]).as_deref(), Some("0f1e"));
        assert_eq!(
            id(&[("apim-request-id", "apim"), ("x-request-id", "xr")]).as_deref(),
            Some("xr")
        );
        assert_eq!(id(&[("apim-request-id", "apim")]).as_deref(), Some("apim"));
        assert_eq!(id(&[("content-type", "application/json")]), None);
    }

    /// Anthropic's rate-limit headers are passed on and mapped to OpenAI's names, the reset
    /// time turned into the time left.
    #[test]
    fn anthropic_rate_limits_are_mapped() {
        let now = OffsetDateTime::parse("2026-01-01T00:00:00Z", &Rfc3339).unwrap();
        let m = UpstreamMeta::from_headers_at(
            &map(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "49"),
                ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:12Z"),
                ("anthropic-ratelimit-tokens-reset", "not a time"),
            ]),
            || now,
        );
        let got = out(&m);
        assert!(
            got.contains(&("x-ratelimit-limit-requests".into(), "50".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&("x-ratelimit-remaining-requests".into(), "49".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&("x-ratelimit-reset-requests".into(), "12s".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&("anthropic-ratelimit-requests-limit".into(), "50".into())),
            "{got:?}"
        );
        assert!(
            !got.iter().any(|(k, _)| k == "x-ratelimit-reset-tokens"),
            "{got:?}"
        );
    }

    /// A peer cannot make the sidecar keep more than the bound: many headers and long values
    /// are dropped.
    #[test]
    fn bounded() {
        let long = "x".repeat(MAX_VALUE + 1);
        let mut pairs: Vec<(String, String)> = (0..100)
            .map(|i| (format!("x-ratelimit-n{i}"), "1".to_owned()))
            .collect();
        pairs.push(("x-request-id".into(), long.clone()));
        pairs.push(("x-ratelimit-long".into(), long));
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let m = UpstreamMeta::from_headers(&map(&refs));
        assert_eq!(m.request_id(), None);
        assert_eq!(out(&m).len(), MAX_HEADERS);
    }
}
