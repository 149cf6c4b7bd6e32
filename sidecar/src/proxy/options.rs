//! What the client asks of Detour in `x-detour-*` request headers: read once, checked, and
//! handed to the failover loop as [`RequestOptions`].

use bytes::Bytes;
use http::{HeaderName, Request};

use crate::error::{Override, Reason};
use crate::headers::{H_CONTINUE, H_FALLBACK, H_TAGS, H_TARGET, H_TIMEOUT};
use crate::routing::{self, Overrides};
use crate::state::RouteRt;

/// What an `on`/`off` header takes.
const ON_OFF: &str = "\"off\" or \"on\"";

/// The request's `x-detour-*` headers.
#[derive(Debug)]
pub(super) struct RequestOptions {
    /// `x-detour-tags`, for the routing rules.
    pub(super) tags: Vec<(String, String)>,
    /// `x-detour-target` and `x-detour-fallback: off`.
    pub(super) overrides: Overrides,
    /// `x-detour-timeout-ms`: the client's own bound on the whole response.
    pub(super) client_ms: Option<u64>,
    /// `x-detour-continue`, checked against the route's policy by [`RequestOptions::continue_off`].
    continuation: Toggle,
}

/// An `on`/`off` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Toggle {
    On,
    Off,
    Invalid,
}

impl Toggle {
    fn of(req: &Request<Bytes>, name: HeaderName) -> Self {
        match header_str(req, name).map(str::trim) {
            None | Some("on") => Self::On,
            Some("off") => Self::Off,
            Some(_) => Self::Invalid,
        }
    }
}

impl RequestOptions {
    /// Reads the headers; a malformed `x-detour-fallback` or `x-detour-timeout-ms` is the
    /// client's error. `x-detour-continue` is checked later ([`RequestOptions::continue_off`]): after
    /// the plan, whose own refusals come first.
    pub(super) fn parse(req: &Request<Bytes>) -> Result<Self, Box<Reason>> {
        let tags = header_str(req, H_TAGS)
            .map(routing::parse_tags)
            .unwrap_or_default();
        let fallback_off = match Toggle::of(req, H_FALLBACK) {
            Toggle::On => false,
            Toggle::Off => true,
            Toggle::Invalid => {
                return Err(Box::new(Reason::InvalidHeader {
                    header: H_FALLBACK,
                    expected: ON_OFF,
                }));
            }
        };
        let client_ms = match header_str(req, H_TIMEOUT).map(|v| v.trim().parse::<u64>()) {
            None => None,
            Some(Ok(ms)) if ms > 0 => Some(ms),
            Some(_) => {
                return Err(Box::new(Reason::InvalidHeader {
                    header: H_TIMEOUT,
                    expected: "a positive whole number of milliseconds",
                }));
            }
        };
        let overrides = Overrides {
            target: header_str(req, H_TARGET).map(|s| s.trim().to_owned()),
            fallback_off,
        };
        Ok(Self {
            tags,
            overrides,
            client_ms,
            continuation: Toggle::of(req, H_CONTINUE),
        })
    }

    /// Whether the request turns continuation off (`x-detour-continue: off`), which the policy
    /// must allow (`overrides.allowDisableFallback`).
    pub(super) fn continue_off(&self, route: &RouteRt) -> Result<bool, Box<Reason>> {
        match self.continuation {
            Toggle::On => Ok(false),
            Toggle::Off if route.route.policy.overrides.allow_disable_fallback => Ok(true),
            Toggle::Off => Err(Box::new(Reason::OverrideNotAllowed {
                header: Override::ContinueOff,
                model: route.route.model.clone(),
                policy: route.route.policy.source.to_string(),
            })),
            Toggle::Invalid => Err(Box::new(Reason::InvalidHeader {
                header: H_CONTINUE,
                expected: ON_OFF,
            })),
        }
    }
}

fn header_str(req: &Request<Bytes>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<Bytes> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Bytes::new()).unwrap()
    }

    /// The headers are read trimmed: tags, the target override, fallback off and the timeout.
    #[test]
    fn headers_are_read_once_and_trimmed() {
        let o = RequestOptions::parse(&request(&[
            ("x-detour-tags", "tier=free, team = a"),
            ("x-detour-target", " backup "),
            ("x-detour-fallback", " off"),
            ("x-detour-timeout-ms", "250 "),
        ]))
        .unwrap();
        assert_eq!(
            o.tags,
            vec![("tier".into(), "free".into()), ("team".into(), "a".into())]
        );
        assert_eq!(o.overrides.target.as_deref(), Some("backup"));
        assert!(o.overrides.fallback_off);
        assert_eq!(o.client_ms, Some(250));
        assert_eq!(o.continuation, Toggle::On);
    }

    /// A malformed `x-detour-fallback` or `x-detour-timeout-ms` is the client's error; a
    /// malformed `x-detour-continue` is not one yet (it is checked after the plan).
    #[test]
    fn malformed_headers_are_invalid_requests() {
        for (name, value) in [
            ("x-detour-fallback", "maybe"),
            ("x-detour-timeout-ms", "0"),
            ("x-detour-timeout-ms", "soon"),
        ] {
            let e = RequestOptions::parse(&request(&[(name, value)])).unwrap_err();
            assert!(
                matches!(*e, Reason::InvalidHeader { ref header, .. } if header == name),
                "{name}: {value}: {e:?}"
            );
        }
        let o = RequestOptions::parse(&request(&[("x-detour-continue", "maybe")])).unwrap();
        assert_eq!(o.continuation, Toggle::Invalid);
    }
}
