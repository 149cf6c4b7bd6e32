//! Retries on the same target: exponential backoff with jitter, bounded by a retry budget.
//!
//! Why a budget, and why only for same-target retries: a retry sends the same request to the
//! same provider again, so during an outage every client retrying multiplies the load on the
//! provider that is already failing. The budget caps retries at a share of recent requests
//! (`budget_ratio`, over the last 10 s) plus a small floor (`budget_min_per_second`) so a
//! quiet sidecar can still retry at all. Failing over to a *different* target is not
//! budgeted: it sends each request to each provider at most `attempts` times, so it does not
//! multiply load on any provider — it is the point of Detour, and the breaker already keeps
//! traffic away from targets that keep failing.
//!
//! Why not tower's `retry::budget::TpsBudget`, whose shape is the same (deposits per request
//! over a 10-slot window plus a per-second reserve): its semantics differ where it matters.
//! - It quantises the ratio to `1/n`: each request deposits 1 and a retry costs
//!   `floor(1 / ratio)`, so a policy's `budgetRatio: 0.4` would allow 50 % and `0.3` 33 %;
//!   here the ratio is exact.
//! - Its parameters are fixed at construction, so a reload that changes them would have to
//!   start a new budget and forget the window; here [`RetryBudget::set_params`] keeps the history.
//! - Its constructor `assert!`s its parameter ranges (a panic on configuration input), and it
//!   `expect`s its internal `Mutex` on every call; this one is a plain value (the route's
//!   state holds it under its own lock) and has no panicking path.

use std::time::Duration;

use detour_api::table::Retry;
use tokio::time::Instant;

/// The delay before retry number `retry` (1 for the first retry) on the same target.
///
/// `base × 2^(retry-1)`, capped at `max`; a share `jitter` of it is randomised with `rand`
/// in `[0, 1)`, so with `jitter = 0` the schedule is exact (as the tests rely on).
pub fn backoff(policy: &Retry, retry: u32, rand: f64) -> Duration {
    let base = Duration::from_millis(policy.backoff_base_ms);
    let max = Duration::from_millis(policy.backoff_max_ms.max(policy.backoff_base_ms));
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    let exp = base.saturating_mul(factor).min(max);
    let jitter = policy.jitter.clamp(0.0, 1.0);
    exp.mul_f64(1.0 - jitter + jitter * rand.clamp(0.0, 1.0))
}

/// Seconds the budget looks back.
const WINDOW_SECS: u64 = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Second {
    index: u64,
    requests: u32,
    retries: u32,
}

/// Retry budget of one route, shared by every request of that route.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    origin: Instant,
    seconds: [Second; WINDOW_SECS as usize],
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32, now: Instant) -> Self {
        Self {
            ratio,
            min_per_second,
            origin: now,
            seconds: [Second::default(); WINDOW_SECS as usize],
        }
    }

    /// New parameters after a reload; the history is kept.
    pub fn set_params(&mut self, ratio: f64, min_per_second: u32) {
        self.ratio = ratio;
        self.min_per_second = min_per_second;
    }

    fn slot(&mut self, now: Instant) -> Option<&mut Second> {
        let index = now.saturating_duration_since(self.origin).as_secs();
        let slot = usize::try_from(index % WINDOW_SECS).unwrap_or(0);
        let s = self.seconds.get_mut(slot)?;
        if s.index != index {
            *s = Second {
                index,
                requests: 0,
                retries: 0,
            };
        }
        Some(s)
    }

    /// Counts one request (each request deposits `ratio` retries).
    pub fn deposit(&mut self, now: Instant) {
        if let Some(s) = self.slot(now) {
            s.requests = s.requests.saturating_add(1);
        }
    }

    /// Takes one retry if the budget allows it.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let index = now.saturating_duration_since(self.origin).as_secs();
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.seconds {
            if index.saturating_sub(s.index) < WINDOW_SECS && (s.requests > 0 || s.retries > 0) {
                requests += u64::from(s.requests);
                retries += u64::from(s.retries);
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
        let allowed = self.ratio * requests as f64 + f64::from(self.min_per_second) * WINDOW_SECS as f64;
        #[expect(clippy::cast_precision_loss, reason = "retry counts are far below 2^52")]
        let ok = (retries as f64) < allowed;
        if ok && let Some(s) = self.slot(now) {
            s.retries = s.retries.saturating_add(1);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detour_api::table::RetryOn;

    fn policy(jitter: f64) -> Retry {
        Retry {
            attempts: 3,
            backoff_base_ms: 80,
            backoff_max_ms: 500,
            jitter,
            on: vec![RetryOn::ServerError],
            budget_ratio: 0.2,
            budget_min_per_second: 1,
            same_target: vec![RetryOn::ServerError],
            rate_limit_max_wait_ms: 0,
        }
    }

    /// Backoff doubles from the base and stops at the cap; zero jitter makes it exact.
    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy(0.0);
        let ms: Vec<u128> = (1..=5).map(|n| backoff(&p, n, 0.7).as_millis()).collect();
        assert_eq!(ms, vec![80, 160, 320, 500, 500]);
    }

    /// Jitter randomises only its share of the delay.
    #[test]
    fn jitter_stays_within_its_share() {
        let p = policy(0.5);
        assert_eq!(backoff(&p, 1, 0.0).as_millis(), 40);
        assert_eq!(backoff(&p, 1, 0.999_999).as_millis(), 79);
    }

    /// Retries are capped at ratio × requests + floor over 10 s, and budget returns as the
    /// window slides.
    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries_and_refills() {
        let mut b = RetryBudget::new(0.2, 1, Instant::now());
        for _ in 0..100 {
            b.deposit(Instant::now());
        }
        // 0.2 × 100 + 1/s × 10 s = 30 retries.
        let granted = (0..100).filter(|_| b.try_withdraw(Instant::now())).count();
        assert_eq!(granted, 30);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw(Instant::now()), "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        // The old second left the window: only the floor remains.
        let granted = (0..100).filter(|_| b.try_withdraw(Instant::now())).count();
        assert_eq!(granted, 10);
    }

    /// With no traffic at all the floor still allows a few retries.
    #[tokio::test(start_paused = true)]
    async fn floor_allows_retries_when_quiet() {
        let mut b = RetryBudget::new(0.0, 2, Instant::now());
        let granted = (0..50).filter(|_| b.try_withdraw(Instant::now())).count();
        assert_eq!(granted, 20);
    }
}
