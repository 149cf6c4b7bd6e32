//! Every released scorer is frozen: the same body scores the same in every later build
//! (`docs/scoring.md`; a change of feature or weight is a new version). This pins each
//! version's score on the team's labelled prompts and on bodies that reach every rule —
//! 4 KB keyword-dense, prose-and-code and Chinese prompts, plain-text maths and LaTeX, a
//! pasted article, quotes, a code block, history, multi-part content, Completions prompts,
//! request parameters, other scripts, and a body with no user turn — so a speed-up or a
//! refactor that moves any score fails here. `tests/data/frozen-scores.jsonl` holds each body
//! with the scores it had when recorded (`null`: not scored).

use detour_sidecar::scoring::{Version, score_with};
use serde_json::Value;

#[test]
fn released_scorers_give_every_recorded_body_its_recorded_score() {
    let mut checked = 0;
    for (n, line) in include_str!("data/frozen-scores.jsonl").lines().enumerate() {
        let row: Value = serde_json::from_str(line).unwrap();
        let body = row["body"].as_object().unwrap();
        for version in [Version::V1, Version::V2, Version::Length] {
            let key = version.as_str();
            let now = score_with(version, body).ok().map(|s| s.value);
            let then = row[key].as_f64();
            // Within 1e-12 rather than bit for bit: `exp` and `log2` may differ in the last
            // place between C libraries, and nothing that changes a rule moves a score so little.
            let same = match (now, then) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-12,
                (None, None) => true,
                _ => false,
            };
            assert!(same, "line {}: {key} scores {now:?}, recorded {then:?}", n + 1);
            checked += 1;
        }
    }
    assert_eq!(checked, 70 * 3);
}
