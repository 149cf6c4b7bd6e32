//! The documented evaluation of the complexity scorer on the labelled prompts the repository
//! ships (`tests/data/complexity-prompts.jsonl`, written for this project): how well the score
//! separates simple from complex requests, and the share of this traffic each cost/quality
//! strategy sends to cheap targets with its default thresholds. `docs/scoring.md` quotes the
//! table this prints (`cargo test -p detour-sidecar --test scoring_eval -- --nocapture`).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use detour_api::crd::{Scorer, Strategy};
use detour_api::defaults::scoring_thresholds;
use detour_sidecar::scoring::{SCORER_VERSION, score};
use serde_json::Value;

struct Labelled {
    complex: bool,
    score: f64,
    top: &'static str,
    text: String,
}

fn dataset() -> Vec<Labelled> {
    let text = include_str!("data/complexity-prompts.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let body = &row["body"];
            let s = score(body).unwrap();
            let last = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .map(|m| m["content"].to_string());
            Labelled {
                complex: row["label"] == "complex",
                score: s.value,
                top: s.features.top().unwrap_or("-"),
                text: last.unwrap_or_default().chars().take(60).collect(),
            }
        })
        .collect()
}

fn share_cheap(data: &[Labelled], strategy: Strategy) -> f64 {
    let (simple_below, _) = scoring_thresholds(strategy, Scorer::V1);
    data.iter().filter(|d| d.score < simple_below).count() as f64 / data.len() as f64
}

/// Simple and complex prompts are separated: simple ones score below 0.4, complex ones above
/// 0.6, with at most one exception per class, and every complex prompt outranks every simple
/// one on average by a wide margin.
#[test]
fn score_separates_simple_from_complex() {
    let data = dataset();
    let (simple, complex): (Vec<_>, Vec<_>) = data.iter().partition(|d| !d.complex);
    println!(
        "scorer {SCORER_VERSION}: {} simple, {} complex prompts",
        simple.len(),
        complex.len()
    );
    println!("| label | score | top feature | prompt |\n|---|---|---|---|");
    let mut sorted: Vec<&Labelled> = data.iter().collect();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    for d in &sorted {
        let label = if d.complex { "complex" } else { "simple" };
        println!(
            "| {label} | {:.2} | {} | {} |",
            d.score,
            d.top,
            d.text.replace('|', "/")
        );
    }
    let mean = |v: &[&Labelled]| v.iter().map(|d| d.score).sum::<f64>() / v.len() as f64;
    let simple_over = simple.iter().filter(|d| d.score >= 0.4).count();
    let complex_under = complex.iter().filter(|d| d.score <= 0.6).count();
    // Share of (simple, complex) pairs ordered correctly: the ROC AUC.
    let pairs = simple.len() * complex.len();
    let ordered = simple
        .iter()
        .flat_map(|s| complex.iter().map(move |c| (s, c)))
        .filter(|(s, c)| c.score > s.score)
        .count();
    let auc = ordered as f64 / pairs as f64;
    println!(
        "\nmean simple {:.2}, mean complex {:.2}; simple ≥ 0.4: {simple_over}; complex ≤ 0.6: {complex_under}; AUC {auc:.3}",
        mean(&simple),
        mean(&complex)
    );
    assert!(simple_over <= 1, "{simple_over} simple prompts scored ≥ 0.4");
    assert!(complex_under <= 1, "{complex_under} complex prompts scored ≤ 0.6");
    assert!(auc >= 0.98, "AUC {auc}");
    assert!(mean(&complex) - mean(&simple) >= 0.5);
}

/// With default thresholds, `cost-optimized` sends about 70 % of this traffic to cheap targets,
/// `quality-first` about 30 % (70 % to capable targets), and `balanced` sends each class where
/// it belongs (this set is 59 % simple), ±10 points.
#[test]
fn strategies_split_typical_traffic_as_documented() {
    let data = dataset();
    let rows = [
        (Strategy::CostOptimized, 0.70),
        (Strategy::Balanced, 32.0 / 54.0),
        (Strategy::QualityFirst, 0.30),
    ];
    println!("| strategy | simpleBelow | complexAbove | share to cheap targets |\n|---|---|---|---|");
    for (strategy, want) in rows {
        let (lo, hi) = scoring_thresholds(strategy, Scorer::V1);
        let got = share_cheap(&data, strategy);
        println!("| {strategy:?} | {lo} | {hi} | {:.0} % |", got * 100.0);
        assert!((got - want).abs() <= 0.10, "{strategy:?}: {got} vs {want}");
    }
}
