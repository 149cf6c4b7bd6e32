//! The closed set of attempt outcomes.
//!
//! Contract: every attempt is classified exactly once, where its result is known (the
//! provider's error mapper or the proxy's timeout), and everything downstream — the breaker,
//! the retry decision, the budget, metrics and the audit line — reads this value. Because it
//! is a closed enum, it is also safe to use as a metric label.

use detour_api::table::RetryOn;
use serde::Serialize;

/// What one attempt at one target came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// A 2xx with a well-formed body (or, for streams, a well-formed first event).
    Ok,
    /// The upstream answered 5xx.
    #[serde(rename = "5xx")]
    ServerError,
    /// The upstream answered 429.
    #[serde(rename = "429")]
    RateLimited,
    /// The attempt's own deadline (per-attempt or what was left of the total) passed.
    Timeout,
    /// No first byte (streaming: no first event) within the first-byte timeout.
    FirstByteTimeout,
    /// No connection could be made (refused, DNS, TLS handshake).
    ConnectError,
    /// The connection broke after it was made (reset, closed mid-message).
    Reset,
    /// The upstream refused the content (a content-filter error or finish reason).
    ContentFilter,
    /// The upstream rejected the request itself (400, 401, 403, 404, 413, 422, ...): another
    /// provider would not fix it, so it is returned as-is and never retried.
    ClientError,
    /// A 2xx whose body could not be understood.
    BadResponse,
    /// The upstream refused the prompt as longer than its model's context window (a 400 in
    /// each provider's own wording). Another target with a larger window may serve it; it
    /// says nothing about the target's health.
    ContextLength,
    /// The target's credential could not be had (a key file missing or unreadable, an unset
    /// environment variable, a token exchange that failed): the request never left the
    /// sidecar. The next target may serve it; it says nothing about the provider's health.
    Credentials,
}

impl Class {
    /// How many classes there are.
    pub const COUNT: usize = 12;

    /// A dense index (`0..COUNT`), for per-class tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The label value used in metrics, headers and the audit line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ServerError => "5xx",
            Self::RateLimited => "429",
            Self::Timeout => "timeout",
            Self::FirstByteTimeout => "first-byte-timeout",
            Self::ConnectError => "connect-error",
            Self::Reset => "reset",
            Self::ContentFilter => "content-filter",
            Self::ClientError => "client-error",
            Self::BadResponse => "bad-response",
            Self::ContextLength => "context-length",
            Self::Credentials => "credentials",
        }
    }

    /// The policy trigger (`retry.on`, `retry.sameTarget`) this class falls under; `None` for
    /// classes that never move on (success, client errors), for `context-length`, which
    /// moves on by its own rule (to a target with a larger context window), and for
    /// `credentials`, which always moves on to the next target (whatever `retry.on` says:
    /// no other class of failure is as certain to repeat on the same target).
    pub const fn trigger(self) -> Option<RetryOn> {
        match self {
            Self::Ok | Self::ClientError | Self::ContextLength | Self::Credentials => None,
            // A 2xx we cannot parse is the server's fault: treat it like a 5xx.
            Self::ServerError | Self::BadResponse => Some(RetryOn::ServerError),
            Self::RateLimited => Some(RetryOn::RateLimited),
            Self::Timeout | Self::FirstByteTimeout => Some(RetryOn::Timeout),
            // A reset is a connection failure that happened later; users who fail over on
            // connection errors expect resets to count.
            Self::ConnectError | Self::Reset => Some(RetryOn::ConnectError),
            Self::ContentFilter => Some(RetryOn::ContentFilter),
        }
    }

    /// Whether the breaker counts this as the target being unhealthy. A client error, a
    /// content filter or a prompt too long for the model says nothing about the provider's
    /// health, nor does a credential the sidecar could not read (the provider was never
    /// called).
    pub const fn is_health_failure(self) -> bool {
        !matches!(
            self,
            Self::Ok | Self::ClientError | Self::ContentFilter | Self::ContextLength | Self::Credentials
        )
    }

    /// Whether the upstream was never called: the breaker takes no verdict from it (neither
    /// a failure nor a success with a latency that was never measured).
    pub const fn never_sent(self) -> bool {
        matches!(self, Self::Credentials)
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `index` is dense and below `COUNT` for every class.
    #[test]
    fn index_is_dense() {
        let all = [
            Class::Ok,
            Class::ServerError,
            Class::RateLimited,
            Class::Timeout,
            Class::FirstByteTimeout,
            Class::ConnectError,
            Class::Reset,
            Class::ContentFilter,
            Class::ClientError,
            Class::BadResponse,
            Class::ContextLength,
            Class::Credentials,
        ];
        assert_eq!(all.len(), Class::COUNT);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    /// A credential failure is no health signal and no policy trigger: the breaker ignores
    /// it and the failover loop always moves on.
    #[test]
    fn credentials_is_not_a_health_signal() {
        assert!(!Class::Credentials.is_health_failure());
        assert!(Class::Credentials.never_sent());
        assert_eq!(Class::Credentials.trigger(), None);
        assert_eq!(Class::Credentials.as_str(), "credentials");
        assert_eq!(
            crate::health::Verdict::of(Class::Credentials, std::time::Duration::ZERO, None),
            crate::health::Verdict::Cancelled
        );
    }
}
