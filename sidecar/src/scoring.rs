//! The complexity score: a number in [0, 1] per request, from the request alone, that the
//! cost/quality strategies (`cost-optimized`, `balanced`, `quality-first`) compare with the
//! policy's thresholds to send simple requests to cheap targets and hard ones to capable ones.
//!
//! Three scorers, chosen per policy ([`Version`], [`score_with`]): `v1`, this module, frozen as
//! it shipped; `v2` ([`v2`]), which reads the latest instruction apart from pasted material;
//! and `length` ([`length`]), the user's text in estimated tokens and nothing else, for traffic
//! of one kind of task. The contract below holds for all; the feature table below is `v1`'s.
//!
//! Contract:
//! - deterministic: the same body gives the same score, on any machine, forever within one
//!   version ([`Version::as_str`]); any change to a feature or weight is a new version, which is
//!   a label on the score histogram so a change of scorer is visible in metrics;
//! - cheap: a few passes over the prompt bytes and one over its words, no allocation per
//!   word, no regex, no network, no model (≤ 20 µs p99 for a 4 KB prompt is the budget);
//! - explainable: [`Score::features`] keeps every feature's value, and [`Features::top`]
//!   names the one that contributed most, for the audit line.
//!
//! Features, each normalised to [0, 1] and weighted (see [`WEIGHTS`]); their weighted sum is
//! the evidence, and the score is `1 − e^(−6 × evidence)` (see [`STEEPNESS`]):
//!
//! | feature | what it measures | saturates at |
//! |---|---|---|
//! | `length` | characters of user and system text, log-scaled | ~3,000 characters |
//! | `turns` | user turns beyond the first | 5 more turns |
//! | `code` | fenced code blocks, and code-like words (`fn`, `def`, `class`, `SELECT`, `#include`, …) | a block, or 6 code words |
//! | `math` | LaTeX commands, math symbols (∑ ∫ √ ≤ …), words like *integral*, *theorem*, *eigenvalue* | 4 signals |
//! | `reasoning_words` | instruction words that ask for reasoning (*analyse*, *compare*, *design*, *prove*, *trade-offs*, *step by step*, in English, French, Spanish and German), minus words of simple asks (*translate*, *hello*, *define*) | 3 net words |
//! | `structure` | questions and enumerated requirements (`- `, `1.`), constraint words (*must*, *ensure*, *without*) | 8 signals |
//! | `tools` | `tools` / `functions` requested | present |
//! | `json_schema` | `response_format` of type `json_schema` (structured output) | present |
//! | `reasoning_effort` | `reasoning_effort` / `reasoning.effort` (`low` .3, `medium` .6, `high` 1), or `max_tokens` ≥ 4,000 (.5) | `high` |

use serde_json::Value;

pub mod length;
pub mod v2;

/// Version of the `v1` feature set and weights; part of metrics and the audit line.
pub const SCORER_VERSION: &str = "v1";

/// The scorers a policy can choose (`spec.scoring.scorer`). Each is frozen once released: a
/// change of feature or weight is a new version, so scores stay comparable within one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Keywords and characters over all user and system text (this module).
    V1,
    /// The latest instruction apart from pasted material, in estimated tokens ([`v2`]).
    V2,
    /// The user's text in estimated tokens, nothing else ([`length`]).
    Length,
}

impl Version {
    /// The label on `detour_request_score` and in the audit line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => SCORER_VERSION,
            Self::V2 => "v2",
            Self::Length => "length",
        }
    }
}

/// A score of any version: its value and the feature that raised it most.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub value: f64,
    pub top: Option<&'static str>,
    pub version: Version,
}

/// Scores a request body with the chosen scorer.
pub fn score_with(version: Version, body: &serde_json::Map<String, Value>) -> Result<Scored, ScoreError> {
    match version {
        Version::V1 => score_map(body).map(|s| Scored {
            value: s.value,
            top: s.features.top(),
            version,
        }),
        Version::V2 => v2::score_map(body).map(|s| Scored {
            value: s.value,
            top: s.features.top(),
            version,
        }),
        Version::Length => length::score_map(body).map(|value| Scored {
            value,
            top: (value > 0.0).then_some(length::FEATURE),
            version,
        }),
    }
}

/// How fast evidence turns into score: `score = 1 − e^(−STEEPNESS × evidence)`, where evidence
/// is the weighted sum of the features. Monotone, so it never reorders requests; it spreads
/// the scores so that a few strong signals already read as complex.
pub const STEEPNESS: f64 = 6.0;

/// Weights of the features, in [`Features`] order.
pub const WEIGHTS: Features = Features {
    length: 0.22,
    turns: 0.08,
    code: 0.22,
    math: 0.22,
    reasoning_words: 0.34,
    structure: 0.16,
    tools: 0.12,
    json_schema: 0.08,
    reasoning_effort: 0.30,
};

/// Every feature's normalised value, in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Features {
    pub length: f64,
    pub turns: f64,
    pub code: f64,
    pub math: f64,
    pub reasoning_words: f64,
    pub structure: f64,
    pub tools: f64,
    pub json_schema: f64,
    pub reasoning_effort: f64,
}

impl Features {
    fn named(&self) -> [(&'static str, f64); 9] {
        [
            ("length", self.length),
            ("turns", self.turns),
            ("code", self.code),
            ("math", self.math),
            ("reasoning_words", self.reasoning_words),
            ("structure", self.structure),
            ("tools", self.tools),
            ("json_schema", self.json_schema),
            ("reasoning_effort", self.reasoning_effort),
        ]
    }

    /// The feature that contributed most to the score (weight × value), if any did.
    pub fn top(&self) -> Option<&'static str> {
        top_feature(&self.named(), &WEIGHTS.named())
    }
}

/// The feature whose weight × value is largest and positive (the first of equals), from a
/// scorer's named values and its weights in the same order.
fn top_feature(values: &[(&'static str, f64)], weights: &[(&'static str, f64)]) -> Option<&'static str> {
    values
        .iter()
        .zip(weights)
        .map(|((name, v), (_, w))| (*name, v * w))
        .filter(|(_, c)| *c > 0.0)
        .fold(None, |best: Option<(&'static str, f64)>, (n, c)| match best {
            Some((_, b)) if b >= c => best,
            _ => Some((n, c)),
        })
        .map(|(n, _)| n)
}

/// A request's complexity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// In [0, 1]: 0 trivially simple, 1 as complex as the scorer can tell.
    pub value: f64,
    pub features: Features,
}

/// What every scorer reads of a request body: the chat `messages`, or the Completions
/// `prompt` (a string, or an array of strings) as one user turn.
pub(crate) enum Prompt<'a> {
    Messages(&'a [Value]),
    Completion(&'a Value),
}

impl<'a> Prompt<'a> {
    /// The body's prompt; [`ScoreError::NoPrompt`] when it has neither non-empty `messages`
    /// nor a `prompt` string or non-empty array.
    pub(crate) fn of(body: &'a serde_json::Map<String, Value>) -> Result<Self, ScoreError> {
        match (body.get("messages").and_then(Value::as_array), body.get("prompt")) {
            (Some(messages), _) if !messages.is_empty() => Ok(Self::Messages(messages)),
            (_, Some(p @ Value::String(_))) => Ok(Self::Completion(p)),
            (_, Some(p @ Value::Array(ps))) if !ps.is_empty() => Ok(Self::Completion(p)),
            _ => Err(ScoreError::NoPrompt),
        }
    }
}

/// A message's role (`user` when it names none).
pub(crate) fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("user")
}

/// A message's text: its `content` string, or the `text` of each content part, in order.
pub(crate) fn message_texts(message: &Value) -> impl Iterator<Item = &str> {
    let (whole, parts) = match message.get("content") {
        Some(Value::String(s)) => (Some(s.as_str()), None),
        Some(Value::Array(parts)) => (None, Some(parts)),
        _ => (None, None),
    };
    whole.into_iter().chain(
        parts
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("text").and_then(Value::as_str)),
    )
}

/// A Completions prompt's text: the string, or each string of the array, in order.
pub(crate) fn prompt_texts(prompt: &Value) -> impl Iterator<Item = &str> {
    let (whole, many) = match prompt {
        Value::String(s) => (Some(s.as_str()), None),
        Value::Array(ps) => (None, Some(ps)),
        _ => (None, None),
    };
    whole
        .into_iter()
        .chain(many.into_iter().flatten().filter_map(Value::as_str))
}

/// Why a request could not be scored. The strategies then use the most capable target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    #[error("the request has no messages or prompt to score")]
    NoPrompt,
}

/// Scores an OpenAI request body (`/v1/chat/completions` or `/v1/completions`).
pub fn score(body: &Value) -> Result<Score, ScoreError> {
    body.as_object().map_or(Err(ScoreError::NoPrompt), score_map)
}

/// [`score`] of a body already parsed as a JSON object.
pub fn score_map(body: &serde_json::Map<String, Value>) -> Result<Score, ScoreError> {
    let mut acc = Accumulator::default();
    match Prompt::of(body)? {
        Prompt::Messages(messages) => {
            for m in messages {
                let role = role(m);
                if role == "user" {
                    acc.user_turns += 1;
                }
                if matches!(role, "user" | "system" | "developer") {
                    message_texts(m).for_each(|s| acc.text(s));
                }
            }
        }
        Prompt::Completion(p) => {
            acc.user_turns = 1;
            prompt_texts(p).for_each(|s| acc.text(s));
        }
    }

    let tools = body
        .get("tools")
        .or_else(|| body.get("functions"))
        .and_then(Value::as_array);
    let json_schema = body
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_schema");
    let effort = body
        .get("reasoning_effort")
        .or_else(|| body.get("reasoning").and_then(|r| r.get("effort")))
        .and_then(Value::as_str);
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);

    let features = Features {
        length: saturate((acc.chars as f64 / 150.0 + 1.0).log2() / (3000.0_f64 / 150.0 + 1.0).log2()),
        turns: saturate(acc.user_turns.saturating_sub(1) as f64 / 5.0),
        code: saturate(if acc.fences >= 2 { 1.0 } else { 0.0 } + acc.code_words as f64 / 6.0),
        math: saturate(acc.math as f64 / 4.0),
        reasoning_words: saturate((acc.reasoning_words as f64 - 0.5 * acc.simple_words as f64) / 3.0),
        structure: saturate(acc.structure as f64 / 8.0),
        tools: if tools.is_some_and(|t| !t.is_empty()) {
            1.0
        } else {
            0.0
        },
        json_schema: if json_schema { 1.0 } else { 0.0 },
        reasoning_effort: match effort {
            Some("high") => 1.0,
            Some("medium") => 0.6,
            Some("low") | Some("minimal") => 0.3,
            _ if max_tokens >= 4000 => 0.5,
            _ => 0.0,
        },
    };
    let evidence: f64 = features
        .named()
        .iter()
        .zip(WEIGHTS.named().iter())
        .map(|((_, v), (_, w))| v * w)
        .sum();
    Ok(Score {
        value: saturate(1.0 - (-STEEPNESS * evidence).exp()),
        features,
    })
}

fn saturate(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// Counts gathered in one pass over the prompt text.
#[derive(Default)]
struct Accumulator {
    chars: usize,
    user_turns: usize,
    fences: usize,
    code_words: usize,
    math: usize,
    reasoning_words: usize,
    simple_words: usize,
    structure: usize,
}

impl Accumulator {
    fn text(&mut self, s: &str) {
        let ascii = s.is_ascii();
        self.chars += if ascii { s.len() } else { s.chars().count() };
        self.scan_lines(s);
        self.scan_symbols(s, ascii);
        self.scan_words(s, ascii);
    }

    /// Line-level signals: code fences, list items, questions.
    fn scan_lines(&mut self, s: &str) {
        for line in s.lines() {
            let t = line.trim_start();
            if t.starts_with("```") {
                self.fences += 1;
            } else if t.starts_with("- ") || t.starts_with("* ") || starts_with_ordinal(t) {
                self.structure += 1;
            }
            if t.starts_with("#include")
                || t.starts_with("import ")
                || t.starts_with("from ") && t.contains(" import ")
            {
                self.code_words += 1;
            }
        }
        self.structure += s.bytes().filter(|&b| b == b'?').count().min(4);
    }

    /// Math symbols and LaTeX commands.
    fn scan_symbols(&mut self, s: &str, ascii: bool) {
        // Every math symbol counted here is outside ASCII: pure ASCII text skips the decode.
        let non_ascii = if ascii { "" } else { s };
        for c in non_ascii.chars() {
            if matches!(
                c,
                '∑' | '∫'
                    | '√'
                    | '≤'
                    | '≥'
                    | '≠'
                    | '∞'
                    | 'π'
                    | '∂'
                    | '∇'
                    | '∈'
                    | '∀'
                    | '∃'
                    | '≈'
                    | 'λ'
                    | 'σ'
                    | 'μ'
            ) {
                self.math += 1;
            }
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        while let Some(off) = bytes
            .get(i..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
        {
            let start = i + off + 1;
            let end = bytes.get(start..).map_or(start, |r| {
                start + r.iter().take_while(|b| b.is_ascii_alphabetic()).count()
            });
            if let Some(cmd) = s.get(start..end)
                && matches!(
                    cmd,
                    "frac"
                        | "int"
                        | "sum"
                        | "sqrt"
                        | "partial"
                        | "lim"
                        | "prod"
                        | "begin"
                        | "mathbb"
                        | "cdot"
                        | "infty"
                        | "alpha"
                        | "beta"
                        | "theta"
                )
            {
                self.math += 1;
            }
            i = end.max(start);
        }
        if s.contains("$$") {
            self.math += 1;
        }
    }

    /// Word-level signals, matched case-insensitively without allocating: each word is
    /// lowercased into a stack buffer and looked up in the bucket of its first byte.
    fn scan_words(&mut self, s: &str, ascii: bool) {
        let table = word_table();
        let mut prev: &[u8] = &[];
        let mut words = Words { s, pos: 0, ascii };
        while let Some(word) = words.next_word() {
            let bytes = word.as_bytes();
            let kind = table.lookup(bytes);
            match kind {
                Word::Reasoning => self.reasoning_words += 1,
                Word::Simple => self.simple_words += 1,
                Word::Code => self.code_words += 1,
                // SQL keywords count only when written as SQL is: in capitals.
                Word::CodeIfUpper if bytes.iter().all(u8::is_ascii_uppercase) => self.code_words += 1,
                Word::Math => self.math += 1,
                Word::Constraint => self.structure += 1,
                Word::PairTail => {
                    let is = |pairs: &[Pair]| {
                        pairs.iter().any(|(head, tail)| {
                            head.eq_ignore_ascii_case(prev) && tail.eq_ignore_ascii_case(bytes)
                        })
                    };
                    if is(PAIRS_REASONING) {
                        self.reasoning_words += 1;
                    } else if is(PAIRS_SIMPLE) {
                        self.simple_words += 1;
                    }
                }
                Word::CodeIfUpper | Word::Other => {}
            }
            prev = bytes;
        }
    }
}

/// Bytes that belong to a word, as a table: the scorer's hot loop classifies every byte.
static WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'#' | b'\'');
        i += 1;
    }
    table
};

/// The byte range of the next run of word characters in `rest`; byte by byte when the text is
/// ASCII (`ascii`), char by char otherwise. Shared by both scorers' word splitters, which differ
/// only in what a word character is.
pub(crate) fn word_span(
    rest: &str,
    ascii: bool,
    is_word_byte: impl Fn(u8) -> bool,
    is_word_char: impl Fn(char) -> bool,
) -> Option<(usize, usize)> {
    if ascii {
        let bytes = rest.as_bytes();
        let start = bytes.iter().position(|&b| is_word_byte(b))?;
        let len = bytes
            .get(start..)?
            .iter()
            .take_while(|&&b| is_word_byte(b))
            .count();
        Some((start, start + len))
    } else {
        let (start, _) = rest.char_indices().find(|&(_, c)| is_word_char(c))?;
        let tail = rest.get(start..)?;
        let len = tail
            .char_indices()
            .find(|&(_, c)| !is_word_char(c))
            .map_or(tail.len(), |(i, _)| i);
        Some((start, start + len))
    }
}

/// Splits text into words: runs of letters, digits and `_ - # '`. ASCII text is split byte by
/// byte (the common case, and the hot loop of the scorer); other text char by char.
struct Words<'a> {
    s: &'a str,
    pos: usize,
    ascii: bool,
}

impl<'a> Words<'a> {
    fn next_word(&mut self) -> Option<&'a str> {
        let is_word_byte = |b: u8| WORD_BYTES[usize::from(b)];
        let is_word_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '#' | '\'');
        let rest = self.s.get(self.pos..)?;
        let (start, end) = word_span(rest, self.ascii, is_word_byte, is_word_char)?;
        self.pos += end;
        rest.get(start..end)
    }
}

#[derive(Clone, Copy)]
enum Word {
    Reasoning,
    Simple,
    Code,
    CodeIfUpper,
    Math,
    Constraint,
    /// The second word of a two-word phrase in [`PAIRS_REASONING`] or [`PAIRS_SIMPLE`].
    PairTail,
    Other,
}

const REASONING: &[&str] = &[
    "analyze",
    "analyse",
    "analysis",
    "compare",
    "contrast",
    "evaluate",
    "design",
    "architect",
    "architecture",
    "optimize",
    "optimise",
    "prove",
    "proof",
    "derive",
    "derivation",
    "justify",
    "critique",
    "debug",
    "refactor",
    "implement",
    "algorithm",
    "tradeoffs",
    "trade-offs",
    "tradeoff",
    "trade-off",
    "reasoning",
    "rigorous",
    "rigorously",
    "comprehensive",
    "thorough",
    "implications",
    "strategy",
    "investigate",
    "diagnose",
    "concurrency",
    "distributed",
    "scalable",
    "complexity",
    "benchmark",
    "formal",
    "formally",
    "counterexample",
    "synthesize",
    // French, Spanish, German
    "analysez",
    "analyser",
    "comparez",
    "démontrez",
    "démontrer",
    "concevez",
    "optimisez",
    "analiza",
    "analice",
    "compara",
    "demuestra",
    "diseña",
    "optimiza",
    "analysiere",
    "analysieren",
    "vergleiche",
    "beweise",
    "entwirf",
    "optimiere",
];
const SIMPLE: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "thanks",
    "translate",
    "define",
    "spell",
    "synonym",
    "capital",
    "rephrase",
    "greet",
    "bonjour",
    "hola",
    "hallo",
    "merci",
    "gracias",
    "danke",
];
const CODE: &[&str] = &[
    "fn",
    "def",
    "struct",
    "impl",
    "async",
    "await",
    "lambda",
    "println",
    "printf",
    "console",
    "return",
    "const",
    "var",
    "namespace",
    "#include",
    "nullptr",
    "malloc",
    "goroutine",
    "class",
];
const CODE_IF_UPPER: &[&str] = &["select", "join", "where"];
const MATH: &[&str] = &[
    "integral",
    "derivative",
    "theorem",
    "lemma",
    "eigenvalue",
    "eigenvalues",
    "matrix",
    "probability",
    "equation",
    "equations",
    "polynomial",
    "differential",
    "topology",
    "vector",
    "bayesian",
    "stochastic",
    "convergence",
    "asymptotic",
];
const CONSTRAINT: &[&str] = &[
    "must",
    "ensure",
    "without",
    "constraint",
    "constraints",
    "requirements",
    "guarantee",
];
type Pair = (&'static [u8], &'static [u8]);
const PAIRS_REASONING: &[Pair] = &[
    (b"step", b"by"),
    (b"trade", b"offs"),
    (b"pros", b"and"),
    (b"in", b"depth"),
    (b"explain", b"why"),
    (b"root", b"cause"),
    (b"edge", b"cases"),
    (b"time", b"complexity"),
];
const PAIRS_SIMPLE: &[Pair] = &[(b"what", b"is"), (b"thank", b"you"), (b"how", b"are")];

/// Keywords bucketed by lowercase first byte, with a mask of the word lengths in each bucket
/// so that most words are rejected after two loads, without being lowercased.
struct WordTable {
    buckets: Vec<Bucket>,
}

#[derive(Default)]
struct Bucket {
    /// Bit `n` set: some keyword in the bucket has `n` bytes.
    lengths: u32,
    words: Vec<(&'static [u8], Word)>,
}

impl WordTable {
    fn lookup(&self, word: &[u8]) -> Word {
        let (Some(first), len) = (word.first(), word.len()) else {
            return Word::Other;
        };
        let Some(bucket) = self.buckets.get(usize::from(first.to_ascii_lowercase())) else {
            return Word::Other;
        };
        if len >= 32 || bucket.lengths & (1 << len) == 0 {
            return Word::Other;
        }
        bucket
            .words
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map_or(Word::Other, |(_, k)| *k)
    }
}

/// The keyword table, built once.
fn word_table() -> &'static WordTable {
    static TABLE: std::sync::LazyLock<WordTable> = std::sync::LazyLock::new(|| {
        let mut buckets: Vec<Bucket> = (0..256).map(|_| Bucket::default()).collect();
        let lists: [(&[&'static str], Word); 6] = [
            (REASONING, Word::Reasoning),
            (SIMPLE, Word::Simple),
            (CODE, Word::Code),
            (CODE_IF_UPPER, Word::CodeIfUpper),
            (MATH, Word::Math),
            (CONSTRAINT, Word::Constraint),
        ];
        let tails = PAIRS_REASONING.iter().chain(PAIRS_SIMPLE).map(|(_, tail)| *tail);
        let words = lists
            .iter()
            .flat_map(|(list, kind)| list.iter().map(move |w| (w.as_bytes(), *kind)))
            // A word that is also a pair tail ("complexity") keeps its own class; the pair is
            // then not counted separately, which only makes the scorer more conservative.
            .chain(tails.map(|t| (t, Word::PairTail)));
        for (w, kind) in words {
            if let Some(bucket) = w.first().and_then(|b| buckets.get_mut(usize::from(*b)))
                && !bucket.words.iter().any(|(x, _)| *x == w)
                && w.len() < 32
            {
                bucket.lengths |= 1 << w.len();
                bucket.words.push((w, kind));
            }
        }
        WordTable { buckets }
    });
    &TABLE
}

fn starts_with_ordinal(t: &str) -> bool {
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && digits < 3 && matches!(t.as_bytes().get(digits), Some(b'.') | Some(b')'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(text: &str) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": text}]})
    }

    fn s(body: &Value) -> Score {
        score(body).unwrap()
    }

    /// A greeting scores near zero.
    #[test]
    fn greeting_is_simple() {
        let sc = s(&chat("Hello! Thanks for the help."));
        assert!(sc.value < 0.1, "{sc:?}");
    }

    /// Length grows the score, logarithmically, and saturates.
    #[test]
    fn length_is_log_scaled_and_saturates() {
        let short = s(&chat("word ")).features.length;
        let medium = s(&chat(&"word ".repeat(100))).features.length;
        let long = s(&chat(&"word ".repeat(2000))).features.length;
        assert!(short < 0.1 && medium > 0.4 && medium < 0.9, "{short} {medium}");
        assert!((long - 1.0).abs() < f64::EPSILON, "{long}");
    }

    /// Only user turns beyond the first count; assistant text does not add length.
    #[test]
    fn turns_count_user_messages() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "x".repeat(5000)},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "y"},
            {"role": "user", "content": "c"},
        ]});
        let f = s(&body).features;
        assert!((f.turns - 0.4).abs() < 1e-9, "{f:?}");
        assert!(f.length < 0.1, "assistant text must not count: {f:?}");
    }

    /// A fenced code block or code keywords raise the code feature.
    #[test]
    fn code_blocks_and_keywords_count() {
        assert_eq!(s(&chat("```rust\nfn main() {}\n```")).features.code, 1.0);
        let f = s(&chat("def f(x): return lambda y: x")).features.code;
        assert!(f >= 0.5, "{f}");
        assert_eq!(s(&chat("I love my class at school")).features.code, 1.0 / 6.0);
        assert_eq!(
            s(&chat("please select one and join us where you like"))
                .features
                .code,
            0.0
        );
        assert_eq!(s(&chat("SELECT a FROM t JOIN u WHERE x")).features.code, 0.5);
    }

    /// LaTeX, math symbols and math vocabulary raise the math feature.
    #[test]
    fn math_signals_count() {
        assert_eq!(
            s(&chat(r"Compute \int_0^1 \frac{x}{2} dx and \sum_i x_i"))
                .features
                .math,
            0.75
        );
        assert_eq!(
            s(&chat("Show that ∑ 1/n² = π²/6 ≈ 1.645 using the theorem"))
                .features
                .math,
            1.0
        );
        assert_eq!(s(&chat("What time is it?")).features.math, 0.0);
    }

    /// Reasoning words count, in several languages; simple-ask words subtract.
    #[test]
    fn reasoning_words_in_several_languages() {
        let en = s(&chat("Analyze and compare the trade-offs, step by step"))
            .features
            .reasoning_words;
        assert_eq!(en, 1.0);
        let fr = s(&chat("Analysez et comparez ces deux approches"))
            .features
            .reasoning_words;
        assert!((fr - 2.0 / 3.0).abs() < 1e-9, "{fr}");
        let simple = s(&chat("Hello, translate and define this"))
            .features
            .reasoning_words;
        assert_eq!(simple, 0.0);
    }

    /// Tools, structured output and explicit reasoning effort each count.
    #[test]
    fn request_parameters_count() {
        let mut body = chat("hi");
        let base = s(&body).value;
        body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}});
        body["reasoning_effort"] = json!("high");
        let sc = s(&body);
        assert_eq!(
            (
                sc.features.tools,
                sc.features.json_schema,
                sc.features.reasoning_effort
            ),
            (1.0, 1.0, 1.0)
        );
        assert!(sc.value > base + 0.5, "{base} -> {}", sc.value);
        let mut big = chat("hi");
        big["max_tokens"] = json!(8000);
        assert_eq!(s(&big).features.reasoning_effort, 0.5);
    }

    /// The score is clamped to [0, 1] however many signals fire.
    #[test]
    fn score_is_clamped() {
        let text = "Analyze, design, prove and optimize; step by step. ```x```\n```\n".repeat(200);
        let mut body = chat(&text);
        body["tools"] = json!([{}]);
        body["reasoning_effort"] = json!("high");
        let v = s(&body).value;
        assert!(v > 0.999 && v <= 1.0, "{v}");
    }

    /// The same body always gives the same score.
    #[test]
    fn scoring_is_deterministic() {
        let body = chat("Design a cache with eviction; must be thread-safe. 1. API 2. tests?");
        assert_eq!(score(&body), score(&body));
    }

    /// Legacy completions prompts are scored; bodies without a prompt are an error, so the
    /// strategy falls back to the most capable target.
    #[test]
    fn completions_prompts_and_missing_prompts() {
        assert!(
            score(&json!({"prompt": "Prove the lemma rigorously"}))
                .unwrap()
                .value
                > 0.0
        );
        assert_eq!(score(&json!({"input": "embed me"})), Err(ScoreError::NoPrompt));
        assert_eq!(score(&json!({"messages": []})), Err(ScoreError::NoPrompt));
    }

    /// The top feature names what drove the score.
    #[test]
    fn top_feature_explains_the_score() {
        assert_eq!(s(&chat("```\nfn main() {}\n```")).features.top(), Some("code"));
        assert_eq!(s(&chat("")).features.top(), None);
    }
}
