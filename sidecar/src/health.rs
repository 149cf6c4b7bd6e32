//! The circuit breaker of one target, as an explicit state machine.
//!
//! ```text
//!            N consecutive failures, or error rate ≥ threshold over the window
//!            (with at least min requests), or a 429 carrying Retry-After
//!   Closed ───────────────────────────────────────────────────────────────▶ Open(until)
//!     ▲                                                                     │ now ≥ until
//!     │ every probe succeeded                                               ▼
//!     └────────────────────────────────────────────────────────────── HalfOpen(probes)
//!                         any probe failed: Open again (cooldown × 2 up to max) ┘
//! ```
//!
//! - The open time is `cooldown × 2^(trips)`, capped at `max_cooldown`; the trip count resets
//!   once the target stayed closed for `max_cooldown` (a healthy period). Policies default
//!   `max_cooldown` to `cooldown`, so there is no growth unless asked for: a target that
//!   recovers is probed, and serves, within one cooldown.
//! - A 429's `Retry-After` is the provider saying when to come back: the target opens at
//!   once for exactly that long (a pause, not a trip: no cooldown escalation); when the same
//!   failure also trips the breaker, it opens for the longer of the cooldown and
//!   `Retry-After`. Any other single failure never opens it (unless the policy sets
//!   `failureThreshold: 1`).
//! - Half-open lets at most `half_open_probes` live requests through; a probe that ends
//!   without a verdict (the client went away) frees its slot.
//! - Latency is tracked as an EWMA of successful attempts (TTFT for streams); above
//!   `latency_threshold` the target is *degraded*: still used, but after the healthy ones.
//!
//! - **The fleet** (the operator's view of every pod of the namespace) can hold a *closed*
//!   target open ([`Breaker::fleet`]): open for one cooldown, then probed like any open
//!   target. The breaker's own observations stay authoritative: its own probe that succeeds
//!   closes it and overrules the fleet until the fleet stops saying open; its own failures
//!   trip it as always (then it is open on its own account); a view that is not renewed
//!   within its time to live lapses, and a target held only by the fleet closes — without the
//!   operator the breaker is exactly what it is alone. Holding never escalates the cooldown.
//! - [`Breaker::report`] is the read-only view the admin port's `GET /v1/health` publishes
//!   (state, counts in the window, latency, last failure): a copy of a few fields taken under
//!   the breaker's lock, which is never held across an await.
//!
//! All times are `tokio::time::Instant`, so the tests run on a paused clock.

use std::time::Duration;

use detour_api::table::Health;
use serde::Serialize;
use tokio::time::Instant;

use crate::class::Class;

/// The breaker's knobs, from the policy's `health`.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub failure_threshold: u32,
    pub error_rate_threshold: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    pub half_open_probes: u32,
    pub latency_threshold: Option<Duration>,
}

impl Params {
    pub fn from_policy(h: &Health) -> Self {
        Self {
            failure_threshold: h.failure_threshold.max(1),
            error_rate_threshold: h.error_rate_threshold,
            window: Duration::from_millis(h.error_rate_window_ms.max(1)),
            min_requests: h.error_rate_min_requests.max(1),
            cooldown: Duration::from_millis(h.cooldown_ms),
            max_cooldown: Duration::from_millis(h.max_cooldown_ms.max(h.cooldown_ms)),
            half_open_probes: h.half_open_probes.max(1),
            latency_threshold: h.latency_threshold_ms.map(Duration::from_millis),
        }
    }
}

/// The state, as exported by `detour_breaker_state` (0 closed, 1 half-open, 2 open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { issued: u32, succeeded: u32 },
}

impl State {
    pub const fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen { .. } => 1,
            Self::Open { .. } => 2,
        }
    }
}

/// May a request be sent to this target now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Normal traffic.
    Allowed,
    /// One of the bounded half-open probes of half-open period `period`. Its verdict counts
    /// only in that period: a probe that outlived it (the target tripped again meanwhile)
    /// must not free a slot of, or close, a later period.
    Probe { period: u32 },
    /// Skip this target; it may be tried again at `until`.
    Rejected { until: Instant },
}

/// The verdict of one admitted request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// A success (or a client error: the provider is up), with its latency.
    Success(Duration),
    /// A failure of the given class; `retry_after` from a 429.
    Failure {
        class: Class,
        retry_after: Option<Duration>,
    },
    /// No verdict (cancelled): frees a probe slot, changes nothing else.
    Cancelled,
}

impl Verdict {
    /// The verdict an attempt of class `class` gives.
    pub fn of(class: Class, latency: Duration, retry_after: Option<Duration>) -> Self {
        if class.never_sent() {
            Self::Cancelled
        } else if class.is_health_failure() {
            Self::Failure { class, retry_after }
        } else {
            Self::Success(latency)
        }
    }
}

/// Buckets of the error-rate window.
const BUCKETS: u32 = 10;
/// Weight of the newest sample in the latency EWMA.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    index: u64,
    total: u32,
    failed: u32,
}

/// A target's breaker.
#[derive(Debug)]
pub struct Breaker {
    params: Params,
    state: State,
    consecutive: u32,
    trips: u32,
    last_trip: Option<Instant>,
    origin: Instant,
    buckets: [Bucket; BUCKETS as usize],
    ewma_ms: Option<f64>,
    /// Counts half-open periods, to tell a probe's verdict from a stale one.
    period: u32,
    /// The class and time of the latest failure, for the health report.
    last_failure: Option<(Class, Instant)>,
    fleet: Fleet,
}

/// What the fleet's view did to a breaker.
#[derive(Clone, Copy, Debug, Default)]
struct Fleet {
    /// The latest view holds the target open, valid until then.
    open_until: Option<Instant>,
    /// Open or probing only because the fleet said so (not this pod's own observation).
    held: bool,
    /// This pod's own probe succeeded while the fleet said open: ignore the fleet until it
    /// stops saying so.
    overruled: bool,
}

/// One target's breaker as `GET /v1/health` reports it: a snapshot, times relative to the
/// moment it was taken (so no two clocks need to agree).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `closed`, `half-open` or `open`.
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// Attempts and failures counted in the error-rate window.
    pub window_requests: u32,
    pub window_failures: u32,
    /// `window_failures / window_requests` (0 without requests).
    pub error_rate: f64,
    /// EWMA of successful attempts' latency, if any succeeded.
    pub latency_ms: Option<f64>,
    /// Slower than the policy's latency threshold.
    pub degraded: bool,
    /// The class of the latest failure, and how long ago it was.
    pub last_failure_class: Option<&'static str>,
    pub last_failure_ago_ms: Option<u64>,
    /// While open: how long until the target is probed again.
    pub open_for_ms: Option<u64>,
    /// Open or probing only because the fleet holds it open (the operator counts only pods
    /// that hold a target open on their own observations).
    pub fleet: bool,
}

impl Breaker {
    pub fn new(params: Params, now: Instant) -> Self {
        Self {
            params,
            state: State::Closed,
            consecutive: 0,
            trips: 0,
            last_trip: None,
            origin: now,
            buckets: [Bucket::default(); BUCKETS as usize],
            ewma_ms: None,
            period: 0,
            last_failure: None,
            fleet: Fleet::default(),
        }
    }

    /// The fleet's view at `now`: whether it holds this target open, and for how long the
    /// view stands without a newer one. Holds a closed target open for one cooldown (no
    /// escalation); releases a target it held when the fleet no longer says open.
    pub fn fleet(&mut self, now: Instant, open: bool, ttl: Duration) {
        if !open {
            self.release_fleet();
            return;
        }
        self.fleet.open_until = Some(now + ttl);
        if !self.fleet.overruled && self.state == State::Closed {
            self.state = State::Open {
                until: now + self.params.cooldown,
            };
            self.fleet.held = true;
        }
    }

    /// Held open only because the fleet says so (as of `now`).
    pub fn fleet_held(&self, now: Instant) -> bool {
        self.fleet.held && self.fleet.open_until.is_some_and(|u| now < u)
    }

    /// Forgets the fleet's view; a target it held (open or probing) closes.
    fn release_fleet(&mut self) {
        if self.fleet.held && matches!(self.state, State::Open { .. } | State::HalfOpen { .. }) {
            self.state = State::Closed;
        }
        self.fleet = Fleet::default();
    }

    /// The breaker as it stands at `now`, without changing it (a cooldown that ran out reads
    /// as half-open, as the next admission would see it).
    pub fn report(&self, now: Instant) -> Report {
        let (window_requests, window_failures) = self.window(now);
        let lapsed = self.fleet.held && !self.fleet_held(now);
        let (state, open_for_ms) = match self.state {
            _ if lapsed => ("closed", None),
            State::Open { until } if until > now => ("open", Some(millis(until - now))),
            State::Open { .. } | State::HalfOpen { .. } => ("half-open", None),
            State::Closed => ("closed", None),
        };
        Report {
            state,
            consecutive_failures: self.consecutive,
            window_requests,
            window_failures,
            error_rate: if window_requests == 0 {
                0.0
            } else {
                f64::from(window_failures) / f64::from(window_requests)
            },
            latency_ms: self.ewma_ms,
            degraded: self.degraded(),
            last_failure_class: self.last_failure.map(|(c, _)| c.as_str()),
            last_failure_ago_ms: self
                .last_failure
                .map(|(_, at)| millis(now.saturating_duration_since(at))),
            open_for_ms,
            fleet: self.fleet_held(now),
        }
    }

    /// New parameters after a config reload; the state is kept.
    pub fn set_params(&mut self, params: Params) {
        self.params = params;
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The current state, moving Open to HalfOpen when the cooldown is over.
    pub fn state(&mut self, now: Instant) -> State {
        if self.fleet.open_until.is_some_and(|u| now >= u) {
            // The operator stopped renewing its view: run alone.
            self.release_fleet();
        }
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::HalfOpen {
                issued: 0,
                succeeded: 0,
            };
            self.period = self.period.wrapping_add(1);
        }
        self.state
    }

    /// The state as last moved, without moving Open to HalfOpen (to tell what an operation
    /// changed).
    pub const fn peek(&self) -> State {
        self.state
    }

    /// Latency EWMA in milliseconds, if any success was seen.
    pub fn latency_ms(&self) -> Option<f64> {
        self.ewma_ms
    }

    /// Slower than the policy's latency threshold.
    pub fn degraded(&self) -> bool {
        match (self.params.latency_threshold, self.ewma_ms) {
            (Some(limit), Some(ms)) => ms > limit.as_secs_f64() * 1_000.0,
            _ => false,
        }
    }

    /// When this target may be tried again (`now` when it may be tried now).
    pub fn available_at(&mut self, now: Instant) -> Instant {
        match self.state(now) {
            State::Open { until } => until,
            // Probes are all out: their verdict comes within an attempt timeout; say "soon".
            State::HalfOpen { issued, .. } if issued >= self.params.half_open_probes => now,
            _ => now,
        }
    }

    /// Asks to send one request.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            State::Closed => {
                if let Some(t) = self.last_trip
                    && now.saturating_duration_since(t) >= self.params.max_cooldown
                {
                    // Healthy for a whole max cooldown: the next trip starts from the base.
                    self.trips = 0;
                    self.last_trip = None;
                }
                Admission::Allowed
            }
            State::Open { until } => Admission::Rejected { until },
            State::HalfOpen { issued, succeeded } => {
                if issued < self.params.half_open_probes {
                    self.state = State::HalfOpen {
                        issued: issued + 1,
                        succeeded,
                    };
                    Admission::Probe { period: self.period }
                } else {
                    Admission::Rejected { until: now }
                }
            }
        }
    }

    /// Records the verdict of a request admitted as `admission`.
    pub fn record(&mut self, now: Instant, admission: Admission, verdict: Verdict) {
        if let Verdict::Failure { class, .. } = verdict {
            self.last_failure = Some((class, now));
        }
        if let Verdict::Success(latency) = verdict {
            let ms = latency.as_secs_f64() * 1_000.0;
            self.ewma_ms = Some(match self.ewma_ms {
                Some(prev) => prev + EWMA_ALPHA * (ms - prev),
                None => ms,
            });
        }
        if let Admission::Probe { period } = admission {
            self.record_probe(now, period, verdict);
            return;
        }
        match verdict {
            Verdict::Cancelled => {}
            Verdict::Success(_) => {
                self.count(now, false);
                self.consecutive = 0;
            }
            Verdict::Failure { retry_after, .. } => {
                self.count(now, true);
                self.consecutive = self.consecutive.saturating_add(1);
                match self.state {
                    State::Closed => {
                        if self.consecutive >= self.params.failure_threshold || self.rate_exceeded(now) {
                            self.trip(now, retry_after);
                        } else if let Some(ra) = retry_after {
                            // The provider said when to come back: pause for exactly that
                            // long. Not a trip: no cooldown, no escalation.
                            self.state = State::Open { until: now + ra };
                        }
                    }
                    // Admitted before the trip; only a longer Retry-After changes anything.
                    State::Open { until } => {
                        if let Some(ra) = retry_after
                            && now + ra > until
                        {
                            self.state = State::Open { until: now + ra };
                        }
                    }
                    State::HalfOpen { .. } => {}
                }
            }
        }
    }

    fn record_probe(&mut self, now: Instant, period: u32, verdict: Verdict) {
        let current = match self.state {
            State::HalfOpen { issued, succeeded } if period == self.period => Some((issued, succeeded)),
            _ => None,
        };
        let Some((issued, succeeded)) = current else {
            // Another probe already decided this probe's period (and a later period may be
            // running); only a late Retry-After still counts, by keeping the target open.
            if let (
                Verdict::Failure {
                    retry_after: Some(ra),
                    ..
                },
                State::Open { until },
            ) = (verdict, self.state)
                && now + ra > until
            {
                self.state = State::Open { until: now + ra };
            }
            return;
        };
        match verdict {
            Verdict::Cancelled => {
                self.state = State::HalfOpen {
                    issued: issued.saturating_sub(1),
                    succeeded,
                };
            }
            Verdict::Success(_) => {
                let succeeded = succeeded + 1;
                if succeeded >= self.params.half_open_probes {
                    self.state = State::Closed;
                    // Our own probe says it serves: that overrules a fleet that still says
                    // open, until the fleet stops saying so.
                    self.fleet.held = false;
                    self.fleet.overruled = self.fleet.open_until.is_some();
                    self.consecutive = 0;
                    self.buckets = [Bucket::default(); BUCKETS as usize];
                } else {
                    self.state = State::HalfOpen { issued, succeeded };
                }
            }
            Verdict::Failure { retry_after, .. } => self.trip(now, retry_after),
        }
    }

    fn trip(&mut self, now: Instant, retry_after: Option<Duration>) {
        let factor = 1u32.checked_shl(self.trips.min(20)).unwrap_or(u32::MAX);
        let cooldown = self
            .params
            .cooldown
            .saturating_mul(factor)
            .min(self.params.max_cooldown);
        let open_for = retry_after.map_or(cooldown, |ra| ra.max(cooldown));
        self.trips = self.trips.saturating_add(1);
        self.last_trip = Some(now);
        // Open on our own observations now, whatever the fleet says.
        self.fleet.held = false;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS as usize];
        self.state = State::Open {
            until: now + open_for,
        };
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let width = (self.params.window / BUCKETS).max(Duration::from_millis(1));
        let since = now.saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos() / width.as_nanos()).unwrap_or(u64::MAX)
    }

    fn count(&mut self, now: Instant, failed: bool) {
        let index = self.bucket_index(now);
        let slot = usize::try_from(index % u64::from(BUCKETS)).unwrap_or(0);
        if let Some(b) = self.buckets.get_mut(slot) {
            if b.index != index {
                *b = Bucket {
                    index,
                    total: 0,
                    failed: 0,
                };
            }
            b.total = b.total.saturating_add(1);
            if failed {
                b.failed = b.failed.saturating_add(1);
            }
        }
    }

    /// Attempts and failures in the window ending at `now`.
    fn window(&self, now: Instant) -> (u32, u32) {
        let index = self.bucket_index(now);
        let (mut total, mut failed) = (0u32, 0u32);
        for b in &self.buckets {
            if index.saturating_sub(b.index) < u64::from(BUCKETS) && b.total > 0 {
                total = total.saturating_add(b.total);
                failed = failed.saturating_add(b.failed);
            }
        }
        (total, failed)
    }

    fn rate_exceeded(&self, now: Instant) -> bool {
        let (total, failed) = self.window(now);
        total >= self.params.min_requests
            && f64::from(failed) >= self.params.error_rate_threshold * f64::from(total)
    }
}

/// `GET /v1/health`: every target of the table being served, by route. Version 1; fields are
/// only ever added within a version.
#[derive(Clone, Debug, Serialize)]
pub struct Document<'a> {
    pub version: u32,
    /// The route table's hash (`detour_config_info`), `None` before one is loaded.
    pub table: Option<&'a str>,
    pub routes: Vec<RouteReport<'a>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteReport<'a> {
    pub route: &'a str,
    pub targets: Vec<TargetReport<'a>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetReport<'a> {
    pub name: &'a str,
    #[serde(flatten)]
    pub breaker: Report,
}

/// The health document of `table` at `now`. Each breaker's lock is taken once, for a copy.
pub fn document(table: Option<&crate::state::Snapshot>, now: Instant) -> Document<'_> {
    let routes = table.map_or_else(Vec::new, |t| {
        t.models
            .iter()
            .filter_map(|m| t.routes.get(m))
            .map(|r| RouteReport {
                route: &r.route.model,
                targets: r
                    .targets
                    .iter()
                    .map(|t| TargetReport {
                        name: &t.cfg.name,
                        breaker: t.state.breaker().report(now),
                    })
                    .collect(),
            })
            .collect()
    });
    Document {
        version: 1,
        table: table.map(|t| t.hash.as_str()),
        routes,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            failure_threshold: 3,
            error_rate_threshold: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(8),
            half_open_probes: 2,
            latency_threshold: Some(Duration::from_millis(100)),
        }
    }

    fn fail() -> Verdict {
        Verdict::Failure {
            class: Class::ServerError,
            retry_after: None,
        }
    }

    fn ok() -> Verdict {
        Verdict::Success(Duration::from_millis(10))
    }

    fn hit(b: &mut Breaker, v: Verdict) -> Admission {
        let now = Instant::now();
        let a = b.admit(now);
        if !matches!(a, Admission::Rejected { .. }) {
            b.record(now, a, v);
        }
        a
    }

    /// A single transient failure (or two) never opens the breaker; N consecutive do.
    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_only() {
        let mut b = Breaker::new(params(), Instant::now());
        hit(&mut b, fail());
        hit(&mut b, fail());
        hit(&mut b, ok());
        hit(&mut b, fail());
        hit(&mut b, fail());
        assert_eq!(b.state(Instant::now()), State::Closed);
        hit(&mut b, fail());
        assert!(matches!(b.state(Instant::now()), State::Open { .. }));
        assert!(matches!(hit(&mut b, ok()), Admission::Rejected { .. }));
    }

    /// With `maxCooldown` equal to `cooldown` (the policy default), a failed probe reopens the
    /// target for one cooldown, not a doubled one: a target that recovers is probed, and
    /// serves again, within one cooldown of recovering.
    #[tokio::test(start_paused = true)]
    async fn without_growth_a_failed_probe_waits_one_cooldown() {
        let p = Params {
            max_cooldown: Duration::from_secs(1),
            half_open_probes: 1,
            ..params()
        };
        let mut b = Breaker::new(p, Instant::now());
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(
                matches!(hit(&mut b, fail()), Admission::Probe { .. }),
                "probed after 1 s"
            );
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::Rejected { .. }));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(hit(&mut b, ok()), Admission::Probe { .. }));
        assert_eq!(b.state(Instant::now()), State::Closed, "recovered: serves again");
    }

    /// An error rate over the window opens it even without a consecutive run, but only once
    /// the window holds the minimum number of requests.
    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_with_min_requests() {
        let mut b = Breaker::new(params(), Instant::now());
        for _ in 0..4 {
            hit(&mut b, fail());
            hit(&mut b, ok());
        }
        assert_eq!(b.state(Instant::now()), State::Closed, "8 requests < min 10");
        hit(&mut b, fail());
        hit(&mut b, ok());
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "rate check runs on failures"
        );
        hit(&mut b, fail());
        assert!(matches!(b.state(Instant::now()), State::Open { .. }));
    }

    /// After the cooldown only the configured number of probes pass; when all succeed the
    /// breaker closes.
    #[tokio::test(start_paused = true)]
    async fn half_open_bounded_probes_then_close() {
        let mut b = Breaker::new(params(), Instant::now());
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::Rejected { .. }));
        tokio::time::advance(Duration::from_millis(1)).await;
        let now = Instant::now();
        let p1 = b.admit(now);
        let p2 = b.admit(now);
        assert!(matches!(
            (p1, p2),
            (Admission::Probe { .. }, Admission::Probe { .. })
        ));
        assert!(
            matches!(b.admit(now), Admission::Rejected { .. }),
            "third probe refused"
        );
        assert_eq!(b.state(now).gauge(), 1);
        b.record(now, p1, ok());
        assert_eq!(b.state(now).gauge(), 1);
        b.record(now, p2, ok());
        assert_eq!(b.state(now), State::Closed);
    }

    /// A probe that outlives its half-open period (another probe failed and the target
    /// tripped again) is stale: its verdict neither frees a slot of nor closes a later period.
    #[tokio::test(start_paused = true)]
    async fn stale_probe_verdicts_do_not_count_in_a_later_period() {
        let mut b = Breaker::new(params(), Instant::now());
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let (stale, failing) = (b.admit(now), b.admit(now));
        b.record(now, failing, fail());
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = Instant::now();
        let (p1, p2) = (b.admit(now), b.admit(now));
        assert!(matches!(
            (p1, p2),
            (Admission::Probe { .. }, Admission::Probe { .. })
        ));
        b.record(now, stale, Verdict::Cancelled);
        assert!(
            matches!(b.admit(now), Admission::Rejected { .. }),
            "a stale cancel must not free a slot of this period"
        );
        b.record(now, stale, ok());
        b.record(now, p1, ok());
        assert_eq!(
            b.state(now).gauge(),
            1,
            "a stale success must not count towards closing"
        );
        b.record(now, p2, ok());
        assert_eq!(b.state(now), State::Closed);
    }

    /// A failed probe reopens with a doubled cooldown, capped at max; a cancelled probe frees
    /// its slot.
    #[tokio::test(start_paused = true)]
    async fn cooldown_doubles_up_to_max_and_resets_after_healthy_period() {
        let mut b = Breaker::new(params(), Instant::now());
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        let mut expected = [1u64, 2, 4, 8, 8].into_iter();
        let mut open_for = expected.next().unwrap_or(0);
        let outstanding = loop {
            let start = Instant::now();
            let State::Open { until } = b.state(start) else {
                panic!("expected open")
            };
            assert_eq!(until - start, Duration::from_secs(open_for));
            tokio::time::advance(until - start).await;
            let now = Instant::now();
            let probe = b.admit(now);
            assert!(matches!(probe, Admission::Probe { .. }));
            let Some(next) = expected.next() else {
                break probe;
            };
            b.record(now, probe, fail());
            open_for = next;
        };
        // A cancelled probe frees its slot.
        let now = Instant::now();
        b.record(now, outstanding, Verdict::Cancelled);
        let p1 = b.admit(now);
        let p2 = b.admit(now);
        b.record(now, p1, ok());
        b.record(now, p2, ok());
        assert_eq!(b.state(now), State::Closed);
        // Healthy for max_cooldown: the next trip starts from the base cooldown again.
        tokio::time::advance(Duration::from_secs(8)).await;
        hit(&mut b, ok());
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        let now = Instant::now();
        assert_eq!(
            b.state(now),
            State::Open {
                until: now + Duration::from_secs(1)
            }
        );
    }

    /// A 429 with Retry-After opens the target at once for at least that long.
    #[tokio::test(start_paused = true)]
    async fn retry_after_opens_for_at_least_that_long() {
        let mut b = Breaker::new(params(), Instant::now());
        let now = Instant::now();
        hit(
            &mut b,
            Verdict::Failure {
                class: Class::RateLimited,
                retry_after: Some(Duration::from_secs(5)),
            },
        );
        assert_eq!(
            b.state(now),
            State::Open {
                until: now + Duration::from_secs(5)
            }
        );
        assert_eq!(b.available_at(now), now + Duration::from_secs(5));
    }

    /// A Retry-After shorter than the cooldown pauses the target for exactly that long and
    /// does not count as a trip (the next real trip still starts from the base cooldown).
    #[tokio::test(start_paused = true)]
    async fn short_retry_after_is_a_pause_not_a_trip() {
        let mut p = params();
        p.cooldown = Duration::from_secs(30);
        p.max_cooldown = Duration::from_secs(300);
        let mut b = Breaker::new(p, Instant::now());
        let now = Instant::now();
        hit(
            &mut b,
            Verdict::Failure {
                class: Class::RateLimited,
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        assert_eq!(
            b.state(now),
            State::Open {
                until: now + Duration::from_secs(2)
            }
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = Instant::now();
        let (p1, p2) = (b.admit(now), b.admit(now));
        b.record(now, p1, ok());
        b.record(now, p2, ok());
        assert_eq!(b.state(now), State::Closed);
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        let now = Instant::now();
        assert_eq!(
            b.state(now),
            State::Open {
                until: now + Duration::from_secs(30)
            }
        );
    }

    /// Latency above the threshold marks the target degraded; fast answers bring it back.
    #[tokio::test(start_paused = true)]
    async fn latency_threshold_marks_degraded() {
        let mut b = Breaker::new(params(), Instant::now());
        hit(&mut b, Verdict::Success(Duration::from_millis(50)));
        assert!(!b.degraded());
        for _ in 0..5 {
            hit(&mut b, Verdict::Success(Duration::from_millis(400)));
        }
        assert!(b.degraded());
        assert_eq!(b.state(Instant::now()), State::Closed, "degraded is not open");
        for _ in 0..10 {
            hit(&mut b, Verdict::Success(Duration::from_millis(5)));
        }
        assert!(!b.degraded());
    }

    /// Client errors and content filters say nothing about health: they never open it.
    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_health_failures() {
        let mut b = Breaker::new(params(), Instant::now());
        for _ in 0..10 {
            hit(
                &mut b,
                Verdict::of(Class::ClientError, Duration::from_millis(1), None),
            );
        }
        assert_eq!(b.state(Instant::now()), State::Closed);
    }

    /// The report reads the window, the streak, the last failure and the time left open,
    /// and reading it changes nothing (a cooldown that ran out reads as half-open).
    #[tokio::test(start_paused = true)]
    async fn report_is_a_read_only_snapshot() {
        let mut b = Breaker::new(params(), Instant::now());
        hit(&mut b, Verdict::Success(Duration::from_millis(40)));
        hit(&mut b, fail());
        let r = b.report(Instant::now());
        assert_eq!(r.state, "closed");
        assert_eq!((r.window_requests, r.window_failures), (2, 1));
        assert!((r.error_rate - 0.5).abs() < 1e-9);
        assert_eq!(r.consecutive_failures, 1);
        assert_eq!(r.latency_ms, Some(40.0));
        assert_eq!(r.last_failure_class, Some("5xx"));
        tokio::time::advance(Duration::from_millis(250)).await;
        hit(&mut b, fail());
        hit(&mut b, fail());
        let r = b.report(Instant::now());
        assert_eq!(r.state, "open");
        assert_eq!(r.open_for_ms, Some(1_000));
        assert_eq!(r.last_failure_ago_ms, Some(0));
        assert_eq!(r.window_requests, 0, "a trip starts a fresh window");
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = b.report(Instant::now());
        assert_eq!((r.state, r.open_for_ms), ("half-open", None));
        assert_eq!(r.last_failure_ago_ms, Some(1_000));
        assert!(matches!(b.peek(), State::Open { .. }), "reporting moved nothing");
    }

    /// The fleet holds a closed target open for one cooldown without escalating it, reports
    /// it as held, and releases it when the fleet stops saying open.
    #[tokio::test(start_paused = true)]
    async fn the_fleet_holds_a_closed_target_open_until_it_says_otherwise() {
        let mut b = Breaker::new(params(), Instant::now());
        let ttl = Duration::from_secs(10);
        b.fleet(Instant::now(), true, ttl);
        assert!(matches!(b.admit(Instant::now()), Admission::Rejected { .. }));
        let r = b.report(Instant::now());
        assert_eq!((r.state, r.fleet, r.open_for_ms), ("open", true, Some(1_000)));
        tokio::time::advance(Duration::from_millis(500)).await;
        b.fleet(Instant::now(), false, ttl);
        assert_eq!(b.state(Instant::now()), State::Closed);
        assert!(!b.report(Instant::now()).fleet);
        // No trip was counted: the next real trip opens for the base cooldown.
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        let now = Instant::now();
        assert_eq!(
            b.state(now),
            State::Open {
                until: now + Duration::from_secs(1)
            }
        );
        assert!(!b.report(now).fleet, "open on its own observations");
    }

    /// After the hold's cooldown the pod probes on its own: a successful probe closes it and
    /// overrules the fleet (a view that still says open is ignored) until the fleet stops
    /// saying open; a failed probe opens it on the pod's own account.
    #[tokio::test(start_paused = true)]
    async fn the_pods_own_probe_overrules_the_fleet() {
        let ttl = Duration::from_secs(10);
        let mut b = Breaker::new(params(), Instant::now());
        b.fleet(Instant::now(), true, ttl);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(hit(&mut b, ok()), Admission::Probe { .. }));
        assert!(matches!(hit(&mut b, ok()), Admission::Probe { .. }));
        assert_eq!(b.state(Instant::now()), State::Closed);
        b.fleet(Instant::now(), true, ttl);
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "overruled by its own probe"
        );
        b.fleet(Instant::now(), false, ttl);
        b.fleet(Instant::now(), true, ttl);
        assert!(b.fleet_held(Instant::now()), "a new open episode holds it again");

        let mut b = Breaker::new(params(), Instant::now());
        b.fleet(Instant::now(), true, ttl);
        tokio::time::advance(Duration::from_secs(1)).await;
        hit(&mut b, fail());
        let now = Instant::now();
        assert!(matches!(b.state(now), State::Open { .. }));
        assert!(!b.fleet_held(now));
        b.fleet(now, false, ttl);
        assert!(
            matches!(b.state(now), State::Open { .. }),
            "its own trip stays open"
        );
    }

    /// A view that is not renewed within its time to live lapses: a target held only by the
    /// fleet closes (the operator is gone, the pod runs alone); its own trips never lapse.
    #[tokio::test(start_paused = true)]
    async fn an_unrenewed_view_lapses() {
        let p = Params {
            cooldown: Duration::from_secs(60),
            max_cooldown: Duration::from_secs(60),
            ..params()
        };
        let mut b = Breaker::new(p, Instant::now());
        b.fleet(Instant::now(), true, Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::Rejected { .. }));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            b.report(Instant::now()).state,
            "closed",
            "the report sees the lapse"
        );
        assert_eq!(b.admit(Instant::now()), Admission::Allowed);
        for _ in 0..3 {
            hit(&mut b, fail());
        }
        b.fleet(Instant::now(), true, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::Rejected { .. }));
    }
}
