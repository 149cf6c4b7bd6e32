//! Scores request bodies offline: reads one JSON body per line on stdin, prints
//! `score<TAB>top feature` per line (`nan<TAB>-` when the body has no prompt).
//!
//! `cargo run -q --release -p detour-sidecar --example score -- v2 < bodies.jsonl`
//!
//! Useful to see how a sample of a team's own traffic scores before choosing thresholds or
//! a share, and used by `scripts/eval-scorer` for the public evaluation in `docs/scoring.md`.
//! With `--features` after the version (`v2` only), a third column holds every feature's
//! value as a JSON object, to see why a request scored as it did. With `--responses`, every
//! body is a Responses API request (`input`, `instructions`), scored as the sidecar scores
//! one: on its translation to chat completions (a body that needs provider state, such as
//! `previous_response_id`, translates to none and is not scored).

#![expect(
    clippy::print_stderr,
    reason = "a command-line tool reports bad input on stderr"
)]

use std::io::{BufRead, Write};

use detour_sidecar::responses::request::to_chat;
use detour_sidecar::scoring::{Version, score_with, v2};
use serde_json::{Map, Value};

/// The body the sidecar scores: the request itself, or a Responses request's chat translation
/// (an empty one when it has none, which scores as no prompt).
fn scored_body(line: &str, responses: bool) -> Option<Map<String, Value>> {
    let Ok(Value::Object(body)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    if !responses {
        return Some(body);
    }
    Some(to_chat(&body).map(|t| t.chat).unwrap_or_default())
}

fn main() -> std::process::ExitCode {
    let mut version = Version::V2;
    let (mut features, mut responses) = (false, false);
    for (i, arg) in std::env::args().skip(1).enumerate() {
        match arg.as_str() {
            "v1" if i == 0 => version = Version::V1,
            "v2" if i == 0 => version = Version::V2,
            "length" if i == 0 => version = Version::Length,
            "--features" => features = true,
            "--responses" => responses = true,
            other if i == 0 => {
                eprintln!("unknown scorer {other:?}: v1, v2 or length");
                return std::process::ExitCode::FAILURE;
            }
            other => {
                eprintln!("unexpected argument {other:?}: score [v1|v2|length] [--features] [--responses]");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lock().lines().enumerate() {
        let Ok(line) = line else {
            eprintln!("line {}: not UTF-8", n + 1);
            return std::process::ExitCode::FAILURE;
        };
        let body = scored_body(&line, responses);
        // With `--features`, `v2`'s own score carries its features: scored once.
        let (scored, named) = match body.as_ref() {
            Some(m) if features && version == Version::V2 => match v2::score_map(m) {
                Ok(s) => (Some((s.value, s.features.top())), Some(s.features.named())),
                Err(_) => (None, None),
            },
            Some(m) => (score_with(version, m).ok().map(|s| (s.value, s.top)), None),
            None => (None, None),
        };
        let written = match (scored, named) {
            (Some((value, top)), Some(named)) => {
                let fields: Vec<String> = named.iter().map(|(n, v)| format!("\"{n}\": {v:.6}")).collect();
                writeln!(
                    out,
                    "{value:.4}\t{}\t{{{}}}",
                    top.unwrap_or("-"),
                    fields.join(", ")
                )
            }
            (Some((value, top)), None) => writeln!(out, "{value:.4}\t{}", top.unwrap_or("-")),
            (None, _) => writeln!(out, "nan\t-"),
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
