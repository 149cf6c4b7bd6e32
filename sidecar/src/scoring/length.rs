//! Scorer `length`: how much the user wrote, in estimated tokens, and nothing else.
//!
//! For traffic that is one kind of task (a maths tutor, an exam assistant, a support bot), what
//! tells a request that needs the capable tier from one the cheap tier answers is mostly its
//! size: a longer problem has more steps, a longer passage more to reason over. There `v2`'s
//! signals of *kind* (code, maths, asks for reasoning) are the same on every request and add
//! noise; on the public evaluation, length alone routes GSM8K and MMLU better than `v2` does,
//! and orders logic and exam passages better too (`docs/scoring.md`). `scripts/choose-share`
//! measures which scorer orders a team's own labelled traffic best.
//!
//! The score is the estimated tokens of every user turn (or of the Completions `prompt`),
//! log-scaled: `log2(1 + t/16) / log2(1 + FULL/16)`, clamped to [0, 1]. The system prompt is
//! left out: it is the same on every request of an application and would only shift every
//! score alike. Tokens are estimated as `v2` estimates them (ASCII ≈ 4 bytes a token, CJK ≈ 1
//! character, other scripts ≈ 3 characters), so dense scripts are not read as short.

use serde_json::{Map, Value};

use super::v2::{estimate_tokens, log_tokens};
use super::{Prompt, ScoreError, message_texts, prompt_texts, role};

/// Estimated tokens at which the score reaches 1.
pub const FULL: f64 = 16_000.0;

/// The feature named in the audit line and the score's `top`.
pub const FEATURE: &str = "length";

/// Scores an OpenAI request body (`/v1/chat/completions` or `/v1/completions`): the user's
/// text in estimated tokens, log-scaled. A body without a user turn or a prompt is not scored.
pub fn score_map(body: &Map<String, Value>) -> Result<f64, ScoreError> {
    let tokens: f64 = match Prompt::of(body)? {
        Prompt::Messages(messages) => {
            let mut user = messages.iter().filter(|m| role(m) == "user").peekable();
            if user.peek().is_none() {
                return Err(ScoreError::NoPrompt);
            }
            user.flat_map(message_texts).map(estimate_tokens).sum()
        }
        Prompt::Completion(p) => prompt_texts(p).map(estimate_tokens).sum(),
    };
    Ok(log_tokens(tokens, FULL))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn score(body: Value) -> Result<f64, ScoreError> {
        score_map(body.as_object().unwrap())
    }

    fn chat(text: &str) -> f64 {
        score(json!({"model": "m", "messages": [{"role": "user", "content": text}]})).unwrap()
    }

    #[test]
    fn a_longer_request_scores_higher_whatever_it_asks() {
        let short = chat("Prove that there are infinitely many primes.");
        let long = chat(&"Tell me about the weather in Lisbon in spring. ".repeat(20));
        assert!(long > short, "{long} vs {short}");
    }

    #[test]
    fn the_score_grows_with_size_and_stays_within_bounds() {
        let scores: Vec<f64> = [0, 40, 400, 4_000, 40_000, 400_000, 4_000_000]
            .iter()
            .map(|n| chat(&"a".repeat(*n)))
            .collect();
        assert_eq!(scores[0], 0.0);
        assert!(scores.windows(2).take(5).all(|w| w[0] < w[1]), "{scores:?}");
        // 1,000,000 estimated tokens is past FULL: the score saturates at 1.
        assert_eq!(scores[6], 1.0);
    }

    #[test]
    fn dense_scripts_count_in_tokens_not_characters() {
        // 300 CJK characters are about 300 tokens; 300 ASCII characters about 75.
        let cjk = chat(&"数".repeat(300));
        let ascii = chat(&"n".repeat(300));
        let ascii_same_tokens = chat(&"n".repeat(1200));
        assert!(cjk > ascii, "{cjk} vs {ascii}");
        assert!(
            (cjk - ascii_same_tokens).abs() < 1e-9,
            "{cjk} vs {ascii_same_tokens}"
        );
    }

    #[test]
    fn every_user_turn_and_text_part_counts_and_the_system_prompt_does_not() {
        let one = score(json!({"messages": [{"role": "user", "content": "x".repeat(400)}]})).unwrap();
        let with_system = score(json!({"messages": [
            {"role": "system", "content": "s".repeat(40_000)},
            {"role": "user", "content": "x".repeat(400)},
        ]}))
        .unwrap();
        assert_eq!(one, with_system);
        let two_turns = score(json!({"messages": [
            {"role": "user", "content": "x".repeat(200)},
            {"role": "assistant", "content": "a".repeat(10_000)},
            {"role": "user", "content": [{"type": "text", "text": "x".repeat(200)}, {"type": "image_url", "image_url": {"url": "data:"}}]},
        ]}))
        .unwrap();
        assert!((one - two_turns).abs() < 1e-9, "{one} vs {two_turns}");
    }

    #[test]
    fn completions_prompts_are_scored_as_user_text() {
        let chat_score = chat(&"y".repeat(800));
        let prompt = score(json!({"prompt": "y".repeat(800)})).unwrap();
        let prompts = score(json!({"prompt": ["y".repeat(400), "y".repeat(400)]})).unwrap();
        assert_eq!(chat_score, prompt);
        assert!((chat_score - prompts).abs() < 1e-9);
    }

    #[test]
    fn a_body_without_user_text_is_not_scored() {
        for body in [
            json!({"model": "m"}),
            json!({"messages": []}),
            json!({"messages": [{"role": "system", "content": "only a system prompt"}]}),
            json!({"prompt": []}),
            json!({"prompt": 7}),
        ] {
            assert!(matches!(score(body.clone()), Err(ScoreError::NoPrompt)), "{body}");
        }
    }
}
