//! Cost of the complexity scorers on a 4 KB prompt: `cargo bench -p detour-sidecar --bench scoring`.
//! Prints p50 / p99 / max over many runs, per scorer and prompt; the budget is 20 µs at p99.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::hint::black_box;
use std::time::Instant;

use detour_sidecar::scoring::{Version, score_with};
use serde_json::json;

fn main() {
    let paragraph = "We are migrating a monolith to microservices. Evaluate the implications for data \
        consistency, propose an architecture using the outbox pattern, and list the failure modes we must \
        handle: duplicate events, out-of-order delivery, partial failures during deploys. What would you \
        monitor? ```rust\nfn main() { println!(\"hi\"); }\n``` \\int_0^1 x dx\n\n";
    // Dense script: a Chinese request with plain-text maths, 4 KB of UTF-8.
    let dense =
        "设函数f(x)=x^3-3x+1，求f(x)在区间[-2,2]上的最大值和最小值，并证明你的结论。请分析算法的复杂度。\n";
    // Every short paragraph an instruction, dense with keywords: the most words to look up.
    let instructions = "Analyze the design, and compare it with x^2 = 4: how many steps must we take? Why would it fail?\n\n";
    for (name, unit) in [
        ("English, code and maths", paragraph),
        ("keyword-dense instructions", instructions),
        ("Chinese", dense),
    ] {
        let mut prompt = String::new();
        while prompt.len() < 4096 {
            prompt.push_str(unit);
        }
        let mut cut = 4096;
        while !prompt.is_char_boundary(cut) {
            cut -= 1;
        }
        prompt.truncate(cut);
        let body = json!({"model": "smart/auto", "messages": [
            {"role": "system", "content": "You are a senior engineer."},
            {"role": "user", "content": prompt},
        ]});
        let Some(map) = body.as_object() else { return };
        for version in [Version::V1, Version::V2, Version::Length] {
            for _ in 0..2_000 {
                black_box(score_with(version, black_box(map)).ok());
            }
            let runs = 20_000;
            let mut samples = Vec::with_capacity(runs);
            for _ in 0..runs {
                let start = Instant::now();
                black_box(score_with(version, black_box(map)).ok());
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
                "scorer {} on a 4 KB prompt ({name}, {runs} runs): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (budget: p99 ≤ 20 µs)",
                version.as_str(),
                pick(0.50).as_secs_f64() * 1e6,
                pick(0.99).as_secs_f64() * 1e6,
                pick(1.0).as_secs_f64() * 1e6,
            );
        }
    }
}
