//! Properties of the circuit breaker over random sequences of admissions, verdicts and clock
//! advances: while half-open it never lets more than `half_open_probes` requests through (a
//! probe the client cancelled gave no verdict and frees its slot, so the bound is on probes
//! that count: in flight or answered), while open it lets none through, and it admits normal
//! traffic only when closed.

use std::time::Duration;

use detour_sidecar::class::Class;
use detour_sidecar::health::{Admission, Breaker, Params, State, Verdict};
use proptest::prelude::*;
use tokio::time::Instant;

#[derive(Clone, Debug)]
enum Op {
    /// Advance the clock by this many milliseconds.
    Wait(u64),
    /// Ask to send one request.
    Admit,
    /// Give the verdict of the outstanding admission at this index (modulo their count).
    Finish(usize, Outcome),
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    Fail,
    RateLimited(u64),
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..3_000).prop_map(Op::Wait),
        Just(Op::Admit),
        Just(Op::Admit),
        (
            any::<usize>(),
            prop_oneof![
                Just(Outcome::Ok),
                Just(Outcome::Fail),
                Just(Outcome::Fail),
                (1u64..5_000).prop_map(Outcome::RateLimited),
                Just(Outcome::Cancel),
            ]
        )
            .prop_map(|(i, o)| Op::Finish(i, o)),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    (1u32..6, 1u32..5, 10u64..2_000, 1u32..30).prop_map(|(threshold, probes, cooldown_ms, min_requests)| {
        Params {
            failure_threshold: threshold,
            error_rate_threshold: 0.5,
            window: Duration::from_secs(10),
            min_requests,
            cooldown: Duration::from_millis(cooldown_ms),
            max_cooldown: Duration::from_millis(cooldown_ms * 8),
            half_open_probes: probes,
            latency_threshold: None,
        }
    })
}

proptest! {
    // A fixed seed keeps the suite deterministic; raise PROPTEST_CASES to explore further.
    #![proptest_config(ProptestConfig {
        cases: 500,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0de7_0001),
        ..ProptestConfig::default()
    })]

    /// Half-open lets at most the configured probes through per half-open period (cancelled
    /// probes excepted: they free their slot); open lets nothing through; normal admissions
    /// happen only while closed.
    #[test]
    fn breaker_bounds_probes_and_blocks_while_open(params in params(), ops in proptest::collection::vec(op(), 1..300)) {
        let probes = params.half_open_probes;
        let start = Instant::now();
        let mut now = start;
        let mut b = Breaker::new(params, now);
        // Outstanding admissions, each with the half-open period it was granted in.
        let mut outstanding: Vec<(Admission, u32)> = Vec::new();
        let mut period = 0u32;
        // Probes granted since the breaker last entered half-open.
        let mut granted_this_period = 0u32;
        let mut was_half_open = false;
        for op in ops {
            match op {
                Op::Wait(ms) => now += Duration::from_millis(ms),
                Op::Admit => {
                    let state = b.state(now);
                    let half_open = matches!(state, State::HalfOpen { .. });
                    if half_open && !was_half_open {
                        granted_this_period = 0;
                        period += 1;
                    }
                    was_half_open = half_open;
                    let a = b.admit(now);
                    match (state, a) {
                        (State::Closed, Admission::Allowed) => outstanding.push((a, period)),
                        (State::HalfOpen { .. }, Admission::Probe { .. }) => {
                            granted_this_period += 1;
                            prop_assert!(granted_this_period <= probes,
                                "{granted_this_period} probes let through in one half-open period (limit {probes})");
                            outstanding.push((a, period));
                        }
                        (State::HalfOpen { .. } | State::Open { .. }, Admission::Rejected { .. }) => {}
                        (s, a) => prop_assert!(false, "state {s:?} gave admission {a:?}"),
                    }
                }
                Op::Finish(i, outcome) => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    let (a, granted_in) = outstanding.remove(i % outstanding.len());
                    let verdict = match outcome {
                        Outcome::Ok => Verdict::Success(Duration::from_millis(20)),
                        Outcome::Fail => Verdict::Failure { class: Class::ServerError, retry_after: None },
                        Outcome::RateLimited(ms) => Verdict::Failure {
                            class: Class::RateLimited,
                            retry_after: Some(Duration::from_millis(ms)),
                        },
                        Outcome::Cancel => Verdict::Cancelled,
                    };
                    if matches!(outcome, Outcome::Cancel) && matches!(a, Admission::Probe { .. }) && granted_in == period && was_half_open {
                        // The slot is free again: this probe no longer counts.
                        granted_this_period -= 1;
                    }
                    b.record(now, a, verdict);
                    let half_open = matches!(b.state(now), State::HalfOpen { .. });
                    if !half_open {
                        was_half_open = false;
                    }
                }
            }
        }
    }
}
