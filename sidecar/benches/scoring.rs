//! Cost of the complexity scorer on a 4 KB prompt: `cargo bench -p detour-sidecar --bench scoring`.
//! Prints p50 / p99 / max over many runs; the budget is 20 µs at p99.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::hint::black_box;
use std::time::Instant;

use detour_sidecar::scoring::score;
use serde_json::json;

fn main() {
    let paragraph = "We are migrating a monolith to microservices. Evaluate the implications for data \
        consistency, propose an architecture using the outbox pattern, and list the failure modes we must \
        handle: duplicate events, out-of-order delivery, partial failures during deploys. What would you \
        monitor? ```rust\nfn main() { println!(\"hi\"); }\n``` \\int_0^1 x dx\n";
    let mut prompt = String::new();
    while prompt.len() < 4096 {
        prompt.push_str(paragraph);
    }
    prompt.truncate(4096);
    let body = json!({"model": "smart/auto", "messages": [
        {"role": "system", "content": "You are a senior engineer."},
        {"role": "user", "content": prompt},
    ]});
    for _ in 0..2_000 {
        black_box(score(black_box(&body)).ok());
    }
    let runs = 20_000;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        black_box(score(black_box(&body)).ok());
        samples.push(Instant::now().duration_since(start));
    }
    samples.sort();
    let pick = |q: f64| {
        samples
            .get(((runs as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "scoring a 4 KB prompt ({runs} runs): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (budget: p99 ≤ 20 µs)",
        pick(0.50).as_secs_f64() * 1e6,
        pick(0.99).as_secs_f64() * 1e6,
        pick(1.0).as_secs_f64() * 1e6,
    );
}
