//! The fleet's view, as a sidecar takes it: the operator asks every injected pod for its
//! health (`/v1/health` on the admin port) every few seconds, and with the question sends
//! the namespace's *view* — the targets open on enough of the namespace's pods. This pod then
//! holds those targets open too ([`crate::health::Breaker::fleet`]) until its own probe or a
//! later view says otherwise.
//!
//! Trust: a view is taken only with this pod's fleet key (`--fleet-key`, set by the injector,
//! known otherwise only to the operator through the pod spec), compared in constant time. A
//! view can only hold open targets of this pod's own table, for at most its time to live
//! (capped at [`MAX_TTL`]); it can never close what this pod's own breaker opened, nor send a
//! request anywhere. Without a key the sidecar answers `GET` only and runs alone.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::state::Snapshot;

/// The largest view body read.
pub const MAX_VIEW_BYTES: usize = 256 * 1024;
/// The longest a view stands without a newer one, whatever it says.
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// What the operator sends (version 1).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub version: u32,
    pub ttl_ms: u64,
    #[serde(default)]
    pub open: Vec<OpenTarget>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OpenTarget {
    pub route: String,
    pub target: String,
    #[serde(default)]
    pub pods_open: u32,
    #[serde(default)]
    pub pods_reporting: u32,
}

/// Why a view was not taken (the answer's status and message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewRefused {
    #[error("this sidecar takes no fleet view (no --fleet-key)")]
    NotEnabled,
    #[error("the fleet key does not match")]
    BadKey,
    #[error("the fleet view is not valid JSON of version 1: {0}")]
    Invalid(String),
}

/// Whether `authorization` (`Bearer <key>`) carries `key`, in time independent of where
/// they differ.
pub fn authorized(authorization: Option<&[u8]>, key: &str) -> bool {
    let Some(presented) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let key = key.as_bytes();
    presented.len() == key.len() && presented.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Parses a view body.
pub fn parse(body: &[u8]) -> Result<View, ViewRefused> {
    let view: View = serde_json::from_slice(body).map_err(|e| ViewRefused::Invalid(e.to_string()))?;
    if view.version != 1 {
        return Err(ViewRefused::Invalid(format!(
            "version {} (expected 1)",
            view.version
        )));
    }
    Ok(view)
}

/// Applies `view` to every target of the table being served: the ones it lists are held open
/// (unless this pod's own probe overruled the fleet), the others released if the fleet held
/// them. Targets the view names that this table does not have are ignored.
pub fn apply(table: &Snapshot, view: &View, now: Instant) {
    let ttl = Duration::from_millis(view.ttl_ms).min(MAX_TTL);
    for route in table.routes.values() {
        for target in &route.targets {
            let open = view
                .open
                .iter()
                .any(|o| o.route == route.route.model && o.target == target.cfg.name);
            target.with_breaker(now, "fleet", |b| b.fleet(now, open, ttl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the exact key, as a bearer token, is authorized.
    #[test]
    fn only_the_pods_key_is_authorized() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cret2"), "s3cret"));
        assert!(!authorized(Some(b"s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    /// A view of another version, or not JSON, is refused with the reason.
    #[test]
    fn parses_version_1_only() {
        let v = parse(br#"{"version":1,"ttlMs":8000,"open":[{"route":"m","target":"primary","podsOpen":2,"podsReporting":20}]}"#)
            .unwrap();
        assert_eq!(v.open[0].target, "primary");
        assert!(
            matches!(parse(br#"{"version":2,"ttlMs":1}"#), Err(ViewRefused::Invalid(m)) if m.contains("version 2"))
        );
        assert!(matches!(parse(b"nope"), Err(ViewRefused::Invalid(_))));
    }
}
