//! One deadline across the whole failover chain.
//!
//! The total deadline starts when the request arrives and lasts until the answer is
//! committed; a client may shorten it (never lengthen it) with `x-detour-timeout-ms`. Each
//! attempt gets the smaller of its own timeout and what is left, so a chain of slow targets
//! cannot exceed what the caller was promised. A committed stream is no longer bound by the
//! total, only by the gap between its events and by the client's own header ([`Deadline::client`]).

use std::time::Duration;

use tokio::time::Instant;

/// The request's deadline.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub start: Instant,
    /// Until the answer is committed.
    pub at: Instant,
    /// The client's `x-detour-timeout-ms`, which bounds the whole response, a stream included.
    pub client: Option<Instant>,
}

impl Deadline {
    /// `total_ms` from the policy; `client_ms` from `x-detour-timeout-ms` may only shorten it.
    pub fn new(now: Instant, total_ms: u64, client_ms: Option<u64>) -> Self {
        let ms = client_ms.map_or(total_ms, |c| c.min(total_ms));
        Self {
            start: now,
            at: now + Duration::from_millis(ms),
            client: client_ms.map(|c| now + Duration::from_millis(c)),
        }
    }

    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.at
    }

    /// When an attempt starting `now` with timeout `per_attempt_ms` must end.
    pub fn attempt(&self, now: Instant, per_attempt_ms: u64) -> Instant {
        (now + Duration::from_millis(per_attempt_ms)).min(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client header shortens the policy's total deadline but can never extend it.
    #[tokio::test(start_paused = true)]
    async fn client_may_only_shorten() {
        let now = Instant::now();
        assert_eq!(
            Deadline::new(now, 1_000, Some(200)).remaining(now),
            Duration::from_millis(200)
        );
        assert_eq!(
            Deadline::new(now, 1_000, Some(5_000)).remaining(now),
            Duration::from_millis(1_000)
        );
        assert_eq!(
            Deadline::new(now, 1_000, None).remaining(now),
            Duration::from_millis(1_000)
        );
        // The client's own bound is kept as given: it outlives the total for a stream.
        assert_eq!(
            Deadline::new(now, 1_000, Some(5_000)).client,
            Some(now + Duration::from_millis(5_000))
        );
        assert_eq!(Deadline::new(now, 1_000, None).client, None);
    }

    /// An attempt never outlives the total deadline, and time spent earlier in the chain is
    /// taken from later attempts.
    #[tokio::test(start_paused = true)]
    async fn attempts_share_one_deadline() {
        let start = Instant::now();
        let d = Deadline::new(start, 1_000, None);
        assert_eq!(d.attempt(start, 300), start + Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(800)).await;
        let now = Instant::now();
        assert_eq!(d.attempt(now, 300), d.at);
        assert_eq!(d.remaining(now), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(d.expired(Instant::now()));
        assert_eq!(d.remaining(Instant::now()), Duration::ZERO);
    }
}
