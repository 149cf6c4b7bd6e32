//! Scores request bodies offline: reads one JSON body per line on stdin, prints
//! `score<TAB>top feature` per line (`nan<TAB>-` when the body has no prompt).
//!
//! `cargo run -q --release -p detour-sidecar --example score -- v2 < bodies.jsonl`
//!
//! Useful to see how a sample of a team's own traffic scores before choosing thresholds or
//! a share, and used by `scripts/eval-scorer` for the public evaluation in `docs/scoring.md`.

#![expect(
    clippy::print_stderr,
    reason = "a command-line tool reports bad input on stderr"
)]

use std::io::{BufRead, Write};

use detour_sidecar::scoring::{Version, score_with};

fn main() -> std::process::ExitCode {
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
