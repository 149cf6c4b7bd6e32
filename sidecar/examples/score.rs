//! Scores request bodies offline: reads one JSON body per line on stdin, prints
//! `score<TAB>top feature` per line (`nan<TAB>-` when the body has no prompt).
//!
//! `cargo run -q --release -p detour-sidecar --example score -- v2 < bodies.jsonl`
//!
//! Useful to see how a sample of a team's own traffic scores before choosing thresholds or
//! a share, and used by `scripts/eval-scorer` for the public evaluation in `docs/scoring.md`.
//! With `--features` after the version (`v2` only), a third column holds every feature's
//! value as a JSON object, to see why a request scored as it did.

#![expect(
    clippy::print_stderr,
    reason = "a command-line tool reports bad input on stderr"
)]

use std::io::{BufRead, Write};

use detour_sidecar::scoring::{Version, score_with, v2};

fn main() -> std::process::ExitCode {
    let features = std::env::args().nth(2).as_deref() == Some("--features");
    let version = match std::env::args().nth(1).as_deref() {
        Some("v1") => Version::V1,
        Some("v2") | None => Version::V2,
        Some(other) => {
            eprintln!("unknown scorer {other:?}: v1 or v2");
            return std::process::ExitCode::FAILURE;
        }
    };
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lock().lines().enumerate() {
        let Ok(line) = line else {
            eprintln!("line {}: not UTF-8", n + 1);
            return std::process::ExitCode::FAILURE;
        };
        let scored = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.as_object().and_then(|m| score_with(version, m).ok()));
        let written = match scored {
            Some(s) if features && version == Version::V2 => {
                let f = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.as_object().and_then(|m| v2::score_map(m).ok()))
                    .map(|s| s.features)
                    .unwrap_or_default();
                let named = [
                    ("length", f.length),
                    ("material", f.material),
                    ("code_request", f.code_request),
                    ("code", f.code),
                    ("math", f.math),
                    ("reasoning", f.reasoning),
                    ("constraints", f.constraints),
                    ("simple_ask", f.simple_ask),
                    ("turns", f.turns),
                    ("tools", f.tools),
                    ("json_schema", f.json_schema),
                    ("reasoning_effort", f.reasoning_effort),
                ];
                let fields: Vec<String> = named.iter().map(|(n, v)| format!("\"{n}\": {v:.6}")).collect();
                writeln!(
                    out,
                    "{:.4}\t{}\t{{{}}}",
                    s.value,
                    s.top.unwrap_or("-"),
                    fields.join(", ")
                )
            }
            Some(s) => writeln!(out, "{:.4}\t{}", s.value, s.top.unwrap_or("-")),
            None => writeln!(out, "nan\t-"),
        };
        if written.is_err() {
            return std::process::ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
