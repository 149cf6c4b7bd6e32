//! Regression test of scorer `v2` on the labelled prompts the repository ships
//! (`tests/data/complexity-prompts.jsonl`, written for this project). These prompts are not
//! evidence of how well `v2` ranks outside traffic (that is `scripts/eval-scorer`, on public
//! sets, in `docs/scoring.md`); they pin the behaviour so a change to `v2` that breaks an
//! obvious case fails here.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use detour_api::crd::{Scorer, Strategy};
use detour_api::defaults::scoring_thresholds;
use detour_sidecar::scoring::{Version, score_with};
use serde_json::Value;

fn dataset() -> Vec<(bool, f64, String)> {
    include_str!("data/complexity-prompts.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let s = score_with(Version::V2, row["body"].as_object().unwrap()).unwrap();
            (
                row["label"] == "complex",
                s.value,
                row["body"]["messages"].to_string(),
            )
        })
        .collect()
}

/// Every complex prompt outranks every simple one, every simple prompt is in `balanced`'s
/// simple class, and at most two complex ones fall in it.
#[test]
fn v2_keeps_the_team_prompts_apart() {
    let data = dataset();
    let (lo, _) = scoring_thresholds(Strategy::Balanced, Scorer::V2);
    let simple: Vec<f64> = data.iter().filter(|d| !d.0).map(|d| d.1).collect();
    let complex: Vec<f64> = data.iter().filter(|d| d.0).map(|d| d.1).collect();
    let ordered = simple
        .iter()
        .flat_map(|s| complex.iter().map(move |c| f64::from(u8::from(c > s))))
        .sum::<f64>();
    let auc = ordered / (simple.len() * complex.len()) as f64;
    assert!(auc >= 0.99, "AUC {auc}");
    for (complex, v, text) in &data {
        if !complex {
            assert!(*v < lo, "simple prompt scored {v}: {text}");
        }
    }
    let complex_simple = complex.iter().filter(|v| **v < lo).count();
    assert!(complex_simple <= 2, "{complex_simple} complex prompts under {lo}");
}
