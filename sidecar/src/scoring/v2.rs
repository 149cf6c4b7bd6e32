//! Scorer `v2`: what the latest instruction asks for, told apart from the material pasted
//! with it, in estimated tokens whatever the script.
//!
//! One message is cut into *instruction* and *material*: fenced code blocks, `>` quotes and,
//! in a long message, the paragraphs between its first and its last, are material. Keywords
//! and list items count only in the instruction (question marks count nowhere); material adds
//! its size (weakly) and whether it holds code or maths. The latest user turn is the request;
//! earlier user turns and the system prompt count at [`HISTORY`] of their weight.
//!
//! | feature | what it measures | saturation |
//! |---|---|---|
//! | `length` | estimated tokens of instruction (ASCII ≈ 4 bytes a token, CJK ≈ 1 character, other scripts ≈ 3 characters), log-scaled | ~2,000 tokens |
//! | `material` | estimated tokens of pasted material, log-scaled | ~8,000 tokens |
//! | `code_request` | asks to write or change code: a code noun or a language name (*function*, *script*, *app*, *Python*, *SQL*, 代码, …) with a making verb (*write*, *implement*, *fix*, …) | noun and verb |
//! | `code` | code present: fenced blocks, code-shaped lines (`;`/`{` endings, `def `, `#include`, `>>>`), code tokens (`fn`, `printf`, `nullptr`, …) | a block, or ~4 signals |
//! | `math` | LaTeX, maths symbols, plain-text maths (`x^2`, `50!`, `3x + 2 = 11`), numbers with a quantity question (*how many*, *how much*, 多少), maths words | ~3 signals |
//! | `reasoning` | asks for reasoning: *prove*, *derive*, *analyse*, *compare*, *design*, *optimise*, *trade-offs*, *step by step*, *why*, in EN/FR/ES/DE, 证明/分析/設計/증명 … | ~4 words |
//! | `constraints` | enumerated requirements and constraint words (*must*, *exactly*, *without*, …) | ~8 signals |
//! | `simple_ask` | the instruction opens with a simple ask (*translate*, *rewrite*, *summarise*, *classify*, *extract*, *list*, *give*, *what is*, greetings, 翻译, …) | subtracts |
//! | `turns` | user turns beyond the first | 5 more turns |
//! | `tools`, `json_schema`, `reasoning_effort` | request parameters, as in `v1` | present / `high` |
//!
//! Each keyword feature grows as `1 − e^(−n/k)`: one word gives at most about a third of it,
//! so that no single signal crosses a class boundary on its own (see the tests). The evidence
//! `e = Σ wᵢ·fᵢ` becomes the score through a logistic, `1 / (1 + e^(−(SLOPE·e − OFFSET)))`.

use serde_json::{Map, Value};

use super::{Prompt, ScoreError, WORD_BYTES, message_texts, prompt_texts, role, saturate, word_span};

/// Weight of earlier user turns and of the system prompt against the latest user turn.
pub const HISTORY: f64 = 0.35;
/// Logistic slope and offset from evidence to score.
pub const SLOPE: f64 = 2.0;
pub const OFFSET: f64 = 2.6;

/// Weights of the features, in [`Features`] order; `simple_ask` subtracts.
pub const WEIGHTS: Features = Features {
    length: 2.0,
    material: 0.5,
    code_request: 1.5,
    code: 0.9,
    math: 1.5,
    reasoning: 1.3,
    constraints: 0.6,
    simple_ask: -1.2,
    turns: 0.2,
    tools: 0.6,
    json_schema: 0.4,
    reasoning_effort: 1.5,
};

/// Every feature's value, in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Features {
    pub length: f64,
    pub material: f64,
    pub code_request: f64,
    pub code: f64,
    pub math: f64,
    pub reasoning: f64,
    pub constraints: f64,
    pub simple_ask: f64,
    pub turns: f64,
    pub tools: f64,
    pub json_schema: f64,
    pub reasoning_effort: f64,
}

impl Features {
    /// Every feature with its name, in the order of the table above.
    pub fn named(&self) -> [(&'static str, f64); 12] {
        [
            ("length", self.length),
            ("material", self.material),
            ("code_request", self.code_request),
            ("code", self.code),
            ("math", self.math),
            ("reasoning", self.reasoning),
            ("constraints", self.constraints),
            ("simple_ask", self.simple_ask),
            ("turns", self.turns),
            ("tools", self.tools),
            ("json_schema", self.json_schema),
            ("reasoning_effort", self.reasoning_effort),
        ]
    }

    /// The weighted sum of the features.
    pub fn evidence(&self) -> f64 {
        self.named()
            .iter()
            .zip(WEIGHTS.named().iter())
            .map(|((_, v), (_, w))| v * w)
            .sum()
    }

    /// The feature that raised the score most (weight × value), if any did.
    pub fn top(&self) -> Option<&'static str> {
        super::top_feature(&self.named(), &WEIGHTS.named())
    }
}

/// A request's complexity under `v2`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    pub value: f64,
    pub features: Features,
}

/// The logistic from evidence to score.
pub fn squash(evidence: f64) -> f64 {
    saturate(1.0 / (1.0 + (-(SLOPE * evidence - OFFSET)).exp()))
}

/// Scores an OpenAI request body (`/v1/chat/completions` or `/v1/completions`).
pub fn score_map(body: &Map<String, Value>) -> Result<Score, ScoreError> {
    let mut acc = Acc::default();
    match Prompt::of(body)? {
        Prompt::Messages(messages) => {
            let last_user = messages.iter().rposition(|m| role(m) == "user");
            for (i, m) in messages.iter().enumerate() {
                let role = role(m);
                if role == "user" {
                    acc.user_turns += 1;
                }
                let weight = match role {
                    "user" if Some(i) == last_user => 1.0,
                    "user" | "system" | "developer" => HISTORY,
                    _ => continue,
                };
                message_texts(m).for_each(|s| acc.message(s, weight));
            }
        }
        Prompt::Completion(p) => {
            acc.user_turns = 1;
            prompt_texts(p).for_each(|s| acc.message(s, 1.0));
        }
    }
    let features = acc.features(body);
    Ok(Score {
        value: squash(features.evidence()),
        features,
    })
}

/// `1 − e^(−n/k)`: the first signal counts most, and it takes several to saturate.
fn grow(n: f64, k: f64) -> f64 {
    if n <= 0.0 {
        0.0
    } else {
        saturate(1.0 - (-n / k).exp())
    }
}

/// Estimated tokens on a log scale: `log2(1 + tokens/16) / log2(1 + full/16)`, clamped to [0, 1].
pub(super) fn log_tokens(tokens: f64, full: f64) -> f64 {
    saturate((tokens / 16.0 + 1.0).log2() / (full / 16.0 + 1.0).log2())
}

/// Counts over the whole request, each already weighted by its turn.
#[derive(Default)]
struct Acc {
    user_turns: usize,
    instruction_tokens: f64,
    material_tokens: f64,
    fences: f64,
    code: f64,
    code_nouns: f64,
    code_verbs: f64,
    math: f64,
    numbers: f64,
    quantity_questions: f64,
    reasoning: f64,
    constraints: f64,
    simple: f64,
    simple_head: f64,
}

/// Where a stretch of text sits in its message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Instruction,
    Material,
}

/// A prose message up to this many bytes is instruction throughout.
const SHORT_MESSAGE: usize = 800;
/// In a longer message, the first paragraph up to this many bytes, the last up to
/// [`TAIL`], and middle paragraphs up to [`MIDDLE`] are instruction; the rest is material.
const HEAD: usize = 600;
const TAIL: usize = 400;
const MIDDLE: usize = 160;
/// At most this many bytes of one message are instruction; the rest is material whatever
/// its shape (a request is not 4 KB of requirements, and this bounds the keyword scan).
const INSTRUCTION_MAX: usize = 2048;

impl Acc {
    /// One message's text, with the weight of its turn.
    fn message(&mut self, s: &str, w: f64) {
        // Paragraphs of prose, as byte ranges; fenced blocks and quotes go straight to material.
        let mut paragraphs: Vec<(usize, usize)> = Vec::new();
        let mut prose = 0usize;
        let mut in_fence = false;
        let mut para: Option<(usize, usize)> = None;
        let mut offset = 0usize;
        for line in s.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let t = line.trim_start();
            if t.starts_with("```") || t.starts_with("~~~") {
                in_fence = !in_fence;
                self.fences += w;
                if let Some(p) = para.take() {
                    paragraphs.push(p);
                }
                continue;
            }
            if in_fence || t.starts_with('>') {
                self.text(line, Part::Material, w);
                continue;
            }
            if t.trim_end().is_empty() {
                if let Some(p) = para.take() {
                    paragraphs.push(p);
                }
                continue;
            }
            prose += line.len();
            para = Some(para.map_or((start, offset), |(a, _)| (a, offset)));
        }
        if let Some(p) = para.take() {
            paragraphs.push(p);
        }
        let last = paragraphs.len().saturating_sub(1);
        // After a short opening instruction, a long last paragraph is more material; after a
        // long opening (a document pasted first), the last paragraph is the question.
        let opens_short = paragraphs.first().is_some_and(|&(a, b)| b - a <= HEAD);
        let tail = if opens_short { MIDDLE } else { TAIL };
        let mut head_seen = false;
        let mut used = 0usize;
        for (i, &(a, b)) in paragraphs.iter().enumerate() {
            let Some(p) = s.get(a..b) else { continue };
            if !head_seen {
                head_seen = true;
                self.head(p, w);
            }
            if prose <= SHORT_MESSAGE {
                self.instruction(p, w, &mut used);
                continue;
            }
            let keep = if i == 0 {
                HEAD
            } else if i == last {
                tail
            } else {
                MIDDLE
            };
            if p.len() <= keep {
                self.instruction(p, w, &mut used);
            } else if i == last && i != 0 && !opens_short {
                // The end of the last paragraph is where a question after a document sits.
                let cut = floor_boundary(p, p.len() - keep);
                self.text(p.get(..cut).unwrap_or(""), Part::Material, w);
                self.instruction(p.get(cut..).unwrap_or(""), w, &mut used);
            } else if i == 0 {
                let cut = floor_boundary(p, keep);
                self.instruction(p.get(..cut).unwrap_or(""), w, &mut used);
                self.text(p.get(cut..).unwrap_or(""), Part::Material, w);
            } else {
                self.text(p, Part::Material, w);
            }
        }
    }

    /// Instruction text of a message, up to [`INSTRUCTION_MAX`] bytes of it; `used` counts
    /// what the message has had so far.
    fn instruction(&mut self, p: &str, w: f64, used: &mut usize) {
        let room = INSTRUCTION_MAX.saturating_sub(*used);
        let cut = if p.len() <= room {
            p.len()
        } else {
            floor_boundary(p, room)
        };
        *used += cut;
        self.text(p.get(..cut).unwrap_or(""), Part::Instruction, w);
        self.text(p.get(cut..).unwrap_or(""), Part::Material, w);
    }

    /// The opening words of a message: a simple ask there says what the request is.
    fn head(&mut self, p: &str, w: f64) {
        // Only the latest turn's opening says what is asked now.
        if w < 1.0 {
            return;
        }
        let mut words = Words::new(p);
        let mut first = words.next_word().unwrap_or("");
        if matches!(
            first.to_ascii_lowercase().as_str(),
            "please" | "can" | "could" | "now"
        ) {
            first = words.next_word().unwrap_or("");
            if matches!(first.to_ascii_lowercase().as_str(), "you" | "please") {
                first = words.next_word().unwrap_or("");
            }
        }
        let second = words.next_word().unwrap_or("");
        let simple = match table().lookup(first.as_bytes()) {
            Kind::SimpleHead | Kind::Simple => true,
            Kind::PairHead => PAIRS.iter().any(|(h, t, k)| {
                *k == Kind::Simple
                    && h.eq_ignore_ascii_case(first.as_bytes())
                    && t.eq_ignore_ascii_case(second.as_bytes())
            }),
            _ => false,
        } || cjk_head_simple(p);
        if simple {
            self.simple_head += w;
        }
    }

    /// Counts the signals of one stretch of text. Material is read for its size, its code and
    /// its maths symbols; its words are not requests and are not looked up.
    fn text(&mut self, s: &str, part: Part, w: f64) {
        if s.is_empty() {
            return;
        }
        let ascii = s.is_ascii();
        let (tokens, symbols) = scan_chars(s, ascii);
        // Material is read for its size and for code and maths; its words are not requests.
        let (words_w, math_w) = match part {
            Part::Instruction => {
                self.instruction_tokens += tokens * w;
                (w, w)
            }
            Part::Material => {
                self.material_tokens += tokens * w;
                (0.0, 0.5 * w)
            }
        };
        self.lines(s, part, w);
        self.math += symbols * math_w;
        self.symbols(s, math_w);
        // Words of material are not requests; its code shows in fences and line shapes.
        if part == Part::Instruction {
            self.words(s, ascii, words_w, w, math_w);
            if !ascii {
                self.cjk(s, words_w, w, math_w);
            }
        }
    }

    /// Line shapes: code-looking lines, list items.
    fn lines(&mut self, s: &str, part: Part, w: f64) {
        for line in s.lines() {
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let code_line = t.starts_with("#include")
                || t.starts_with(">>>")
                || t.starts_with("def ")
                || t.starts_with("import ")
                || t.starts_with("from ") && t.contains(" import ")
                || t.starts_with("function ")
                || t.starts_with("public ")
                || t.starts_with("//")
                || matches!(t, "}" | "};" | "end")
                || (t.len() > 3 && (t.ends_with(';') || t.ends_with('{') || t.ends_with("):")));
            if code_line {
                self.code += 0.5 * w;
            } else if part == Part::Instruction
                && (t.starts_with("- ") || t.starts_with("* ") || starts_with_ordinal(t))
            {
                self.constraints += 0.5 * w;
            }
        }
    }

    /// LaTeX and plain-text maths (maths symbols are counted by [`scan_chars`]).
    fn symbols(&mut self, s: &str, w: f64) {
        if w == 0.0 {
            return;
        }
        let mut signals = 0.0;
        let b = s.as_bytes();
        let at = |i: usize| b.get(i).copied().unwrap_or(b' ');
        let letter_alone = |i: usize| {
            at(i).is_ascii_alphabetic()
                && !(i > 0 && at(i - 1).is_ascii_alphabetic())
                && !at(i + 1).is_ascii_alphabetic()
        };
        let mut numbers = 0.0;
        let mut i = 0;
        while i < b.len() {
            // Most bytes start nothing below: skip to the next one that may.
            match b
                .get(i..)
                .and_then(|rest| rest.iter().position(|&c| MATHS_START[usize::from(c)]))
            {
                Some(skip) => i += skip,
                None => break,
            }
            let c = at(i);
            match c {
                b'0'..=b'9' => {
                    let start = i;
                    while i < b.len() && (at(i).is_ascii_digit() || at(i) == b'.' || at(i) == b',') {
                        i += 1;
                    }
                    if !(start > 0 && at(start - 1).is_ascii_alphabetic()) {
                        numbers += 1.0;
                    }
                    if at(i) == b'!' && !at(i + 1).is_ascii_alphanumeric() {
                        signals += 1.0;
                    } else if at(i) == b'%' {
                        signals += 0.3;
                    }
                    continue;
                }
                b'\\' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < b.len() && at(end).is_ascii_alphabetic() {
                        end += 1;
                    }
                    if matches!(
                        s.get(start..end),
                        Some(
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
                                | "pi"
                                | "times"
                                | "leq"
                                | "geq"
                                | "neq"
                        )
                    ) {
                        signals += 1.0;
                    }
                    i = end.max(start);
                    continue;
                }
                b'+' | b'*' | b'/' | b'^' | b'=' | b'-' | b'<' | b'>' => {
                    // An operator between operands: a digit, a bracket or a lone letter.
                    let mut l = i;
                    while l > 0 && at(l - 1) == b' ' {
                        l -= 1;
                    }
                    let mut r = i + 1;
                    while at(r) == b' ' && r < b.len() {
                        r += 1;
                    }
                    let left =
                        l > 0 && (at(l - 1).is_ascii_digit() || at(l - 1) == b')' || letter_alone(l - 1));
                    let right = at(r).is_ascii_digit() || at(r) == b'(' || letter_alone(r);
                    // A hyphen between digits is as often a range or a date as a minus.
                    let hyphen_range = c == b'-' && l == i && r == i + 1;
                    if left && right && !hyphen_range {
                        signals += if c == b'^' || c == b'=' { 1.0 } else { 0.5 };
                    }
                }
                b'$' if at(i + 1) == b'$' => signals += 1.0,
                _ => {}
            }
            i += 1;
        }
        self.math += signals * w;
        self.numbers += numbers * w;
    }

    /// Keywords of the Latin-script languages, matched without allocating.
    fn words(&mut self, s: &str, ascii: bool, words_w: f64, code_w: f64, math_w: f64) {
        let table = table();
        let mut prev: &[u8] = &[];
        let mut prev_kind = Kind::Other;
        let mut words = Words { s, pos: 0, ascii };
        while let Some(word) = words.next_word() {
            let bytes = word.as_bytes();
            let (kind, code_verb) = table.lookup_with_verb(bytes);
            match kind {
                Kind::Reasoning => {
                    self.reasoning += words_w;
                    if code_verb {
                        self.code_verbs += words_w;
                    }
                }
                // Simple asks of earlier turns are done with: they do not lower this one.
                Kind::Simple if words_w >= 1.0 => self.simple += words_w,
                // Simple-ask verbs count where they open the message (see `head`).
                Kind::SimpleHead if code_verb => self.code_verbs += words_w,
                Kind::CodeNoun => self.code_nouns += words_w,
                Kind::CodeNounWeak => self.code_nouns += 0.5 * words_w,
                Kind::Language => {
                    self.code_nouns += words_w;
                    self.code += 0.25 * code_w;
                }
                Kind::CodeVerb => self.code_verbs += words_w,
                Kind::CodeToken => self.code += code_w,
                Kind::CodeIfUpper if bytes.iter().all(u8::is_ascii_uppercase) => self.code += code_w,
                Kind::Math => self.math += 0.7 * math_w,
                Kind::Constraint => self.constraints += words_w,
                Kind::PairTail if prev_kind == Kind::PairHead => {
                    if let Some((_, _, kind)) = PAIRS
                        .iter()
                        .find(|(h, t, _)| h.eq_ignore_ascii_case(prev) && t.eq_ignore_ascii_case(bytes))
                    {
                        match kind {
                            Kind::Reasoning => self.reasoning += words_w,
                            Kind::Simple => self.simple += words_w,
                            Kind::Quantity => self.quantity_questions += words_w,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            prev = bytes;
            prev_kind = kind;
        }
    }

    /// Keywords of Chinese, Japanese and Korean, found as substrings (these scripts do not
    /// separate words): a character-level filter keeps this off text without them.
    fn cjk(&mut self, s: &str, words_w: f64, code_w: f64, math_w: f64) {
        let index = cjk_index();
        for (i, c) in s.char_indices() {
            if (c as u32) < 0x3000 || !index.filter.hit(c) {
                continue;
            }
            let (Some(rest), Some(from)) = (s.get(i..), index.by_first.iter().position(|(f, _, _)| *f == c))
            else {
                continue;
            };
            for (_, pattern, kind) in index.by_first.iter().skip(from).take_while(|(f, _, _)| *f == c) {
                if !rest.starts_with(pattern) {
                    continue;
                }
                match kind {
                    Kind::Reasoning => self.reasoning += words_w,
                    Kind::Simple if words_w >= 1.0 => self.simple += words_w,
                    Kind::CodeNoun => self.code_nouns += words_w,
                    Kind::CodeVerb => self.code_verbs += words_w,
                    Kind::Math => self.math += 0.7 * math_w,
                    Kind::Quantity => self.quantity_questions += words_w,
                    Kind::Constraint => self.constraints += words_w,
                    Kind::CodeToken => self.code += code_w,
                    _ => {}
                }
            }
        }
    }

    fn features(&self, body: &Map<String, Value>) -> Features {
        let tools = body
            .get("tools")
            .or_else(|| body.get("functions"))
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
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
        // A question about quantities over several numbers is a word problem.
        let word_problem = if self.quantity_questions > 0.0 && self.numbers >= 2.0 {
            1.5
        } else if self.numbers >= 3.0 {
            0.3
        } else {
            0.0
        };
        // Writing code needs a thing to write (a noun or a language) and, to be sure, a verb.
        let code_request = if self.code_nouns > 0.0 {
            let verb = if self.code_verbs > 0.0 { 1.0 } else { 0.45 };
            verb * grow(self.code_nouns, 1.2)
        } else {
            0.0
        };
        let math = grow(self.math + word_problem, 1.5);
        Features {
            length: log_tokens(self.instruction_tokens, 2000.0),
            material: log_tokens(self.material_tokens, 8000.0),
            code_request,
            code: saturate(if self.fences >= 2.0 { 1.0 } else { 0.0 } + grow(self.code, 2.0)),
            math,
            reasoning: grow(self.reasoning, 2.5),
            constraints: grow(self.constraints, 4.0),
            // A simple opening ("give me", "what is") does not make code or maths simple.
            simple_ask: saturate(self.simple_head + 0.3 * self.simple) * (1.0 - code_request.max(math)),
            turns: saturate(self.user_turns.saturating_sub(1) as f64 / 5.0),
            tools: if tools { 1.0 } else { 0.0 },
            json_schema: if json_schema { 1.0 } else { 0.0 },
            reasoning_effort: match effort {
                Some("high") => 1.0,
                Some("medium") => 0.6,
                Some("low") | Some("minimal") => 0.3,
                _ if max_tokens >= 4000 => 0.5,
                _ => 0.0,
            },
        }
    }
}

/// The largest char boundary at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The bytes that [`Acc::symbols`] reads something from: digits, `\\`, operators and `$`.
static MATHS_START: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_digit()
            || matches!(
                b,
                b'\\' | b'+' | b'*' | b'/' | b'^' | b'=' | b'-' | b'<' | b'>' | b'$'
            );
        i += 1;
    }
    table
};

/// Estimated tokens of `s`, as [`scan_chars`] counts them (the `length` scorer's measure).
pub(super) fn estimate_tokens(s: &str) -> f64 {
    scan_chars(s, s.is_ascii()).0
}

/// Tokens a typical BPE tokenizer makes of `s` (about 4 bytes of ASCII, one CJK character, or
/// 3 characters of other scripts per token), and the maths symbols in it, in one pass.
fn scan_chars(s: &str, ascii: bool) -> (f64, f64) {
    if ascii {
        return (s.len() as f64 / 4.0, 0.0);
    }
    let (mut ascii_bytes, mut cjk, mut other, mut maths) = (0usize, 0usize, 0usize, 0usize);
    for c in s.chars() {
        if c.is_ascii() {
            ascii_bytes += 1;
        } else if is_cjk(c) {
            cjk += 1;
        } else {
            other += 1;
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
                    | '²'
                    | '³'
                    | '×'
                    | '÷'
                    | '±'
            ) {
                maths += 1;
            }
        }
    }
    (
        ascii_bytes as f64 / 4.0 + cjk as f64 + other as f64 / 3.0,
        maths as f64,
    )
}

/// Han, kana, Hangul and full-width forms.
fn is_cjk(c: char) -> bool {
    let cp = c as u32;
    (0x2E80..=0x9FFF).contains(&cp)
        || (0xAC00..=0xD7AF).contains(&cp)
        || (0xF900..=0xFAFF).contains(&cp)
        || (0xFF00..=0xFFEF).contains(&cp)
        || (0x20000..=0x2FFFF).contains(&cp)
}

fn starts_with_ordinal(t: &str) -> bool {
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && digits < 3 && matches!(t.as_bytes().get(digits), Some(b'.') | Some(b')'))
}

/// Splits text into words, as `v1` does.
struct Words<'a> {
    s: &'a str,
    pos: usize,
    ascii: bool,
}

impl<'a> Words<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s,
            pos: 0,
            ascii: s.is_ascii(),
        }
    }

    fn next_word(&mut self) -> Option<&'a str> {
        let is_word_byte = |b: u8| WORD_BYTES[usize::from(b)];
        // CJK characters are letters; testing them first skips the slow Unicode tables.
        let is_word_char = |c: char| {
            if c.is_ascii() {
                is_word_byte(c as u8)
            } else {
                is_cjk(c) || c.is_alphanumeric()
            }
        };
        let rest = self.s.get(self.pos..)?;
        let (start, end) = word_span(rest, self.ascii, is_word_byte, is_word_char)?;
        self.pos += end;
        rest.get(start..end)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reasoning,
    /// A simple-ask word anywhere in the instruction.
    Simple,
    /// A simple-ask verb, counted fully when it opens the instruction.
    SimpleHead,
    CodeNoun,
    /// A code noun that is also an everyday word (*app*, *class*, *server*): half a noun.
    CodeNounWeak,
    Language,
    CodeVerb,
    CodeToken,
    CodeIfUpper,
    Math,
    Constraint,
    /// *how many*, *how much*: a question about a quantity.
    Quantity,
    /// The first word of a pair in [`PAIRS`] (only looked up at the head of a message).
    PairHead,
    /// The second word of a pair in [`PAIRS`].
    PairTail,
    Other,
}

const REASONING: &[&str] = &[
    "analyze",
    "analyse",
    "analysis",
    "compare",
    "contrast",
    "design",
    "architect",
    "architecture",
    "optimize",
    "optimise",
    "optimal",
    "prove",
    "proof",
    "derive",
    "derivation",
    "justify",
    "critique",
    "debug",
    "refactor",
    "tradeoffs",
    "trade-offs",
    "tradeoff",
    "trade-off",
    "rigorous",
    "rigorously",
    "implications",
    "investigate",
    "diagnose",
    "concurrency",
    "distributed",
    "scalable",
    "formally",
    "counterexample",
    "why",
    "deduce",
    "infer",
    "puzzle",
    "riddle",
    "logically",
    "paradox",
    "hypothesis",
    "evaluate",
    "reasoning",
    "strategy",
    "efficient",
    "efficiently",
    "complexity",
    // French, Spanish, German
    "analysez",
    "analyser",
    "comparez",
    "démontrez",
    "démontrer",
    "concevez",
    "optimisez",
    "pourquoi",
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
    "warum",
];
const SIMPLE_HEAD: &[&str] = &[
    "translate",
    "rewrite",
    "rephrase",
    "paraphrase",
    "summarize",
    "summarise",
    "classify",
    "categorize",
    "categorise",
    "extract",
    "proofread",
    "spell",
    "list",
    "name",
    "give",
    "suggest",
    "recommend",
    "tell",
    "define",
    "identify",
    "edit",
    "generate",
    "describe",
    "compose",
    "draft",
    "shorten",
    "reword",
    "brainstorm",
    "pretend",
    "imagine",
    "traduis",
    "traduce",
    "übersetze",
    "résume",
    "resume",
    "fasse",
];
const SIMPLE: &[&str] = &[
    "hi", "hello", "hey", "thanks", "synonym", "synonyms", "antonym", "greet", "bonjour", "hola", "hallo",
    "merci", "gracias", "danke", "tweet", "slogan", "haiku", "poem", "title", "headline", "email",
];
const CODE_NOUNS: &[&str] = &[
    "function",
    "functions",
    "script",
    "scripts",
    "code",
    "api",
    "endpoint",
    "algorithm",
    "algorithms",
    "regex",
    "snippet",
    "implementation",
    "compiler",
    "dockerfile",
    "makefile",
    "shader",
    "subroutine",
    "codebase",
    "unittest",
    "recursion",
    "recursive",
];
const CODE_NOUNS_WEAK: &[&str] = &[
    "program",
    "programs",
    "app",
    "application",
    "query",
    "library",
    "module",
    "class",
    "method",
    "backend",
    "frontend",
    "website",
    "database",
    "server",
    "bot",
    "plugin",
    "cli",
    "gui",
    "macro",
    "component",
    "array",
    "string",
    "loop",
    "tests",
];
const LANGUAGES: &[&str] = &[
    "python",
    "javascript",
    "typescript",
    "java",
    "c++",
    "c#",
    "rust",
    "golang",
    "kotlin",
    "swift",
    "ruby",
    "php",
    "perl",
    "haskell",
    "scala",
    "lua",
    "matlab",
    "sql",
    "html",
    "css",
    "bash",
    "powershell",
    "react",
    "vue",
    "angular",
    "django",
    "flask",
    "nodejs",
    "node",
    "pandas",
    "numpy",
    "pytorch",
    "tensorflow",
    "vba",
    "excel",
    "latex",
    "verilog",
    "vhdl",
    "fortran",
    "cobol",
    "elixir",
    "clojure",
    "dart",
    "flutter",
    "unity",
    "godot",
    "solidity",
    "terraform",
    "kubernetes",
    "docker",
    "julia",
    "ocaml",
    "zig",
    "nginx",
    "linux",
    "assembly",
    "arduino",
    "jquery",
    "jax",
    "sympy",
];
const CODE_VERBS: &[&str] = &[
    "write",
    "implement",
    "create",
    "build",
    "develop",
    "generate",
    "code",
    "program",
    "fix",
    "debug",
    "refactor",
    "optimize",
    "optimise",
    "port",
    "convert",
    "make",
    "modify",
    "complete",
    "rewrite",
    "translate",
    "add",
    "extend",
    "design",
];
const CODE_TOKENS: &[&str] = &[
    "fn",
    "def",
    "struct",
    "impl",
    "lambda",
    "println",
    "printf",
    "nullptr",
    "malloc",
    "goroutine",
    "elif",
    "endl",
    "std",
    "const",
    "#include",
    "namespace",
    "async",
    "typedef",
    "func",
    "cout",
    "np",
    "df",
    "args",
    "kwargs",
    "str",
    "len",
    "init",
    "__init__",
    "stdin",
    "stdout",
];
const CODE_IF_UPPER: &[&str] = &["select", "join", "where", "insert", "update", "from"];
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
    "solve",
    "prime",
    "primes",
    "factorial",
    "modulo",
    "logarithm",
    "sqrt",
    "divisible",
    "remainder",
    "percent",
    "percentage",
    "ratio",
    "fraction",
    "triangle",
    "radius",
    "perimeter",
    "calculus",
    "algebra",
    "integer",
    "integers",
    "digits",
    "variance",
    "expectation",
    "geometric",
    "arithmetic",
    "sequence",
    "calculate",
    "compute",
    "compounded",
    "interest",
    "average",
    "sum",
    "product",
    "area",
    "volume",
    "angle",
    "inequality",
    "vector",
    "vectors",
    "limit",
    "converge",
    "convergence",
    "bayesian",
    "stochastic",
    "combinatorics",
    "permutations",
    "combinations",
    "gcd",
    "lcm",
    "mod",
];
const CONSTRAINT: &[&str] = &[
    "must",
    "ensure",
    "without",
    "constraint",
    "constraints",
    "requirements",
    "requirement",
    "guarantee",
    "exactly",
    "only",
    "should",
    "cannot",
    "mustn't",
];
/// Two-word phrases: (first, second, kind).
const PAIRS: &[(&[u8], &[u8], Kind)] = &[
    (b"step", b"by", Kind::Reasoning),
    (b"trade", b"offs", Kind::Reasoning),
    (b"pros", b"and", Kind::Reasoning),
    (b"in", b"depth", Kind::Reasoning),
    (b"explain", b"why", Kind::Reasoning),
    (b"root", b"cause", Kind::Reasoning),
    (b"edge", b"cases", Kind::Reasoning),
    (b"time", b"complexity", Kind::Reasoning),
    (b"show", b"that", Kind::Reasoning),
    (b"what", b"is", Kind::Simple),
    (b"what", b"are", Kind::Simple),
    (b"who", b"is", Kind::Simple),
    (b"who", b"was", Kind::Simple),
    (b"where", b"is", Kind::Simple),
    (b"when", b"did", Kind::Simple),
    (b"thank", b"you", Kind::Simple),
    (b"how", b"are", Kind::Simple),
    (b"how", b"many", Kind::Quantity),
    (b"how", b"much", Kind::Quantity),
    (b"how", b"long", Kind::Quantity),
    (b"how", b"far", Kind::Quantity),
    (b"what", b"percentage", Kind::Quantity),
    (b"what", b"fraction", Kind::Quantity),
    (b"combien", b"de", Kind::Quantity),
];

/// Reasoning and simple-ask words that also make code when said of code (*design*, *rewrite*).
fn also_code_verb(word: &[u8]) -> bool {
    const BOTH: &[&[u8]] = &[
        b"design",
        b"debug",
        b"refactor",
        b"optimize",
        b"optimise",
        b"translate",
        b"rewrite",
        b"generate",
        b"edit",
        b"complete",
        b"give",
        b"show",
    ];
    BOTH.iter().any(|w| w.eq_ignore_ascii_case(word))
}

/// CJK keywords, found as substrings.
const CJK: &[(&str, Kind)] = &[
    // Chinese
    ("证明", Kind::Reasoning),
    ("證明", Kind::Reasoning),
    ("分析", Kind::Reasoning),
    ("比较", Kind::Reasoning),
    ("比較", Kind::Reasoning),
    ("设计", Kind::Reasoning),
    ("設計", Kind::Reasoning),
    ("优化", Kind::Reasoning),
    ("推导", Kind::Reasoning),
    ("为什么", Kind::Reasoning),
    ("為什麼", Kind::Reasoning),
    ("论证", Kind::Reasoning),
    ("方程", Kind::Math),
    ("积分", Kind::Math),
    ("積分", Kind::Math),
    ("导数", Kind::Math),
    ("微分", Kind::Math),
    ("概率", Kind::Math),
    ("確率", Kind::Math),
    ("求解", Kind::Math),
    ("计算", Kind::Math),
    ("計算", Kind::Math),
    ("定理", Kind::Math),
    ("矩阵", Kind::Math),
    ("行列", Kind::Math),
    ("素数", Kind::Math),
    ("整数", Kind::Math),
    ("数列", Kind::Math),
    ("函数", Kind::Math),
    ("多少", Kind::Quantity),
    ("几个", Kind::Quantity),
    ("いくつ", Kind::Quantity),
    ("何個", Kind::Quantity),
    ("代码", Kind::CodeNoun),
    ("代碼", Kind::CodeNoun),
    ("程序", Kind::CodeNoun),
    ("程式", Kind::CodeNoun),
    ("算法", Kind::CodeNoun),
    ("脚本", Kind::CodeNoun),
    ("编写", Kind::CodeVerb),
    ("編寫", Kind::CodeVerb),
    ("实现", Kind::CodeVerb),
    ("写一个", Kind::CodeVerb),
    ("编程", Kind::CodeNoun),
    // Japanese
    ("証明", Kind::Reasoning),
    ("最適化", Kind::Reasoning),
    ("なぜ", Kind::Reasoning),
    ("関数", Kind::CodeNoun),
    ("コード", Kind::CodeNoun),
    ("プログラム", Kind::CodeNoun),
    ("アルゴリズム", Kind::CodeNoun),
    ("スクリプト", Kind::CodeNoun),
    ("実装", Kind::CodeVerb),
    ("書いて", Kind::CodeVerb),
    ("作成", Kind::CodeVerb),
    ("翻訳", Kind::Simple),
    ("要約", Kind::Simple),
    ("こんにちは", Kind::Simple),
    ("ありがとう", Kind::Simple),
    // Chinese simple asks
    ("翻译", Kind::Simple),
    ("你好", Kind::Simple),
    ("谢谢", Kind::Simple),
    ("总结", Kind::Simple),
    // Korean
    ("증명", Kind::Reasoning),
    ("분석", Kind::Reasoning),
    ("비교", Kind::Reasoning),
    ("설계", Kind::Reasoning),
    ("최적화", Kind::Reasoning),
    ("방정식", Kind::Math),
    ("확률", Kind::Math),
    ("적분", Kind::Math),
    ("미분", Kind::Math),
    ("코드", Kind::CodeNoun),
    ("프로그램", Kind::CodeNoun),
    ("알고리즘", Kind::CodeNoun),
    ("함수", Kind::CodeNoun),
    ("구현", Kind::CodeVerb),
    ("번역", Kind::Simple),
    ("안녕", Kind::Simple),
    ("감사", Kind::Simple),
];

/// Whether a CJK message opens with a simple ask (translate, summarise, a greeting).
fn cjk_head_simple(p: &str) -> bool {
    let head = p.trim_start();
    CJK.iter()
        .any(|(pattern, kind)| *kind == Kind::Simple && head.starts_with(pattern))
        || head.starts_with("请翻译")
        || head.starts_with("請翻譯")
}

/// A 1,024-bit filter on the first characters of [`CJK`] keywords.
struct CjkFilter([u64; 16]);

impl CjkFilter {
    fn hit(&self, c: char) -> bool {
        let h = (c as u32 as usize) & 1023;
        self.0.get(h / 64).is_some_and(|w| w & (1 << (h % 64)) != 0)
    }
}

/// [`CJK`] sorted by first character, behind a filter on that character.
struct CjkIndex {
    filter: CjkFilter,
    by_first: Vec<(char, &'static str, Kind)>,
}

fn cjk_index() -> &'static CjkIndex {
    static INDEX: std::sync::LazyLock<CjkIndex> = std::sync::LazyLock::new(|| {
        let mut bits = [0u64; 16];
        let mut by_first: Vec<(char, &'static str, Kind)> = CJK
            .iter()
            .filter_map(|(pattern, kind)| pattern.chars().next().map(|c| (c, *pattern, *kind)))
            .collect();
        by_first.sort_by_key(|(c, _, _)| *c);
        for (c, _, _) in &by_first {
            let h = (*c as u32 as usize) & 1023;
            if let Some(w) = bits.get_mut(h / 64) {
                *w |= 1 << (h % 64);
            }
        }
        CjkIndex {
            filter: CjkFilter(bits),
            by_first,
        }
    });
    &INDEX
}

/// Keywords bucketed by lowercase first letter and length: a word is compared with the few
/// keywords that share both, and most words with none.
struct Table {
    /// Each keyword with its kind and whether it also makes code when said of code.
    slots: Vec<Vec<(&'static [u8], Kind, bool)>>,
    /// Per first letter, bit `n` set when some keyword has `n` bytes: most words stop here.
    lengths: [u32; 27],
}

/// Longest keyword length + 1.
const MAX_LEN: usize = 24;

/// The slot of a word: 26 letters and one slot for every other first byte, by length.
fn slot(word: &[u8]) -> Option<usize> {
    let first = word.first()?.to_ascii_lowercase();
    let len = word.len();
    if len >= MAX_LEN {
        return None;
    }
    let letter = if first.is_ascii_lowercase() {
        usize::from(first - b'a')
    } else {
        26
    };
    Some(letter * MAX_LEN + len)
}

impl Table {
    fn lookup(&self, word: &[u8]) -> Kind {
        self.lookup_with_verb(word).0
    }

    /// The kind, and whether the word is also a code verb (see [`also_code_verb`]).
    fn lookup_with_verb(&self, word: &[u8]) -> (Kind, bool) {
        let Some(i) = slot(word) else {
            return (Kind::Other, false);
        };
        if self
            .lengths
            .get(i / MAX_LEN)
            .is_none_or(|m| m & (1 << (i % MAX_LEN)) == 0)
        {
            return (Kind::Other, false);
        }
        Some(i)
            .and_then(|i| self.slots.get(i))
            .and_then(|words| words.iter().find(|(w, _, _)| w.eq_ignore_ascii_case(word)))
            .map_or((Kind::Other, false), |(_, k, v)| (*k, *v))
    }
}

fn table() -> &'static Table {
    static TABLE: std::sync::LazyLock<Table> = std::sync::LazyLock::new(|| {
        let mut slots: Vec<Vec<(&'static [u8], Kind, bool)>> =
            (0..27 * MAX_LEN).map(|_| Vec::new()).collect();
        // Earlier lists win when a word is in two.
        let lists: [(&[&'static str], Kind); 11] = [
            (SIMPLE_HEAD, Kind::SimpleHead),
            (LANGUAGES, Kind::Language),
            (CODE_NOUNS, Kind::CodeNoun),
            (CODE_NOUNS_WEAK, Kind::CodeNounWeak),
            (REASONING, Kind::Reasoning),
            (CODE_VERBS, Kind::CodeVerb),
            (SIMPLE, Kind::Simple),
            (CODE_TOKENS, Kind::CodeToken),
            (CODE_IF_UPPER, Kind::CodeIfUpper),
            (MATH, Kind::Math),
            (CONSTRAINT, Kind::Constraint),
        ];
        let pair_words = PAIRS
            .iter()
            .flat_map(|(h, t, _)| [(*t, Kind::PairTail), (*h, Kind::PairHead)]);
        let words = lists
            .iter()
            .flat_map(|(list, kind)| list.iter().map(move |w| (w.as_bytes(), *kind)))
            .chain(pair_words);
        for (w, kind) in words {
            if let Some(words) = slot(w).and_then(|i| slots.get_mut(i))
                && !words.iter().any(|(x, _, _)| x.eq_ignore_ascii_case(w))
            {
                words.push((w, kind, also_code_verb(w)));
            }
        }
        let mut lengths = [0u32; 27];
        for (i, words) in slots.iter().enumerate() {
            if let Some(m) = lengths.get_mut(i / MAX_LEN)
                && !words.is_empty()
            {
                *m |= 1 << (i % MAX_LEN);
            }
        }
        Table { slots, lengths }
    });
    &TABLE
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn chat(turns: &[&str]) -> Value {
        let mut messages = Vec::new();
        for (i, t) in turns.iter().enumerate() {
            if i > 0 {
                messages.push(json!({"role": "assistant", "content": "ok"}));
            }
            messages.push(json!({"role": "user", "content": t}));
        }
        json!({"model": "m", "messages": messages})
    }

    fn s(turns: &[&str]) -> Score {
        score_map(chat(turns).as_object().unwrap()).unwrap()
    }

    /// `balanced`'s default `simpleBelow` for `v2` (`detour_api::defaults`).
    const BALANCED_SIMPLE_BELOW: f64 = 0.32;

    /// One reasoning word, one maths signal or one code noun alone does not make a short
    /// request leave the simple class; two kinds of evidence together do.
    #[test]
    fn one_signal_does_not_cross_a_class_boundary() {
        for one in [
            "Why is the sky blue?",
            "Prove it.",
            "What is 50!?",
            "Compare cats and dogs.",
            "Is this a function?",
        ] {
            let v = s(&[one]).value;
            assert!(v < BALANCED_SIMPLE_BELOW, "{one}: {v}");
        }
        let two = s(&["Prove that x^2 + y^2 = z^2 has infinitely many integer solutions."]).value;
        assert!(two > 0.66, "{two}");
    }

    /// Plain-text maths counts: exponents, factorials, equations with variables, and
    /// quantity questions over several numbers.
    #[test]
    fn plain_text_maths_counts() {
        for m in ["x+y = 4z", "50! / 48!", "n^3 - n", "3x + 2 = 11"] {
            assert!(s(&[m]).features.math > 0.3, "{m}");
        }
        let word_problem = s(&["Ann has 12 apples and gives 5 to Bo. Bo had 3. How many does Bo have now?"]);
        assert!(word_problem.features.math > 0.6, "{word_problem:?}");
        // Dates and ranges are not maths.
        assert_eq!(s(&["The season is 2019-2020."]).features.math, 0.0);
    }

    /// A request to write code is recognised without code in it; everyday uses of code
    /// nouns weigh half.
    #[test]
    fn requests_to_write_code_count() {
        let f = s(&["Give me the code for a todo app in React."]).features;
        assert!(f.code_request > 0.5 && f.simple_ask < 0.5, "{f:?}");
        assert!(
            s(&["Write a Python script that renames files."])
                .features
                .code_request
                > 0.7
        );
        assert!(s(&["My class starts at nine."]).features.code_request < 0.3);
        assert_eq!(s(&["Return the book to the library."]).features.code, 0.0);
    }

    /// Pasted material weighs as material: classifying long pasted reviews full of
    /// questions and reasoning words is a simple ask.
    #[test]
    fn pasted_material_is_not_instruction() {
        let review = "Why would anyone design it like this? The lid must be pressed hard; analyze the \
                      manual and you still cannot ensure it does not leak. Would I buy again? No. Step \
                      by step it broke, and the trade-offs are all wrong.";
        let text = format!(
            "Classify the sentiment of each review as positive or negative.\n\n{}",
            [review; 6].join("\n\n")
        );
        let sc = s(&[&text]);
        assert!(sc.value < BALANCED_SIMPLE_BELOW, "{sc:?}");
        assert!(
            sc.features.material > 0.0 && sc.features.reasoning == 0.0,
            "{sc:?}"
        );
        // The same words as the instruction itself do count.
        assert!(s(&[review]).features.reasoning > 0.5);
        // Code in a fenced block is material for words, but still code.
        let fenced = s(&["Explain this.\n```\nfor i in range(10): print(i)  # why? analyze\n```"]);
        assert!(
            fenced.features.code > 0.5 && fenced.features.reasoning == 0.0,
            "{fenced:?}"
        );
    }

    /// Length is in estimated tokens, so a dense script is not read as short: a Chinese
    /// request and its English translation come out within a factor of two.
    #[test]
    fn length_is_script_aware() {
        let zh =
            s(&["请详细解释一下为什么在分布式系统中需要使用一致性协议，以及它们如何处理网络分区的问题。"])
                .features
                .length;
        let en = s(&["Please explain in detail why distributed systems need consensus protocols, and how they handle network partitions."]).features.length;
        assert!(zh > 0.5 * en && zh < 2.0 * en, "zh {zh} en {en}");
    }

    /// A maths-competition request in Chinese is complex; a greeting in Japanese is simple.
    #[test]
    fn cjk_requests_are_read() {
        let zh = s(&["设函数f(x)=x^3-3x+1，求f(x)在区间[-2,2]上的最大值和最小值，并证明你的结论。"]).value;
        assert!(zh > 0.66, "{zh}");
        let ja = s(&["こんにちは、ありがとう！"]).value;
        assert!(ja < BALANCED_SIMPLE_BELOW, "{ja}");
    }

    /// The latest user turn decides: a thank-you after a hard conversation is simple, and
    /// a hard question after small talk is not diluted.
    #[test]
    fn latest_turn_outweighs_history() {
        let hard = "Design a distributed consensus protocol, analyze its failure modes, and prove safety under partitions.";
        assert!(s(&[hard, "Thanks!"]).value < BALANCED_SIMPLE_BELOW);
        let after_small_talk = s(&["Hi!", hard]).value;
        assert!(after_small_talk > BALANCED_SIMPLE_BELOW, "{after_small_talk}");
        assert!(after_small_talk >= s(&[hard]).value, "history only adds");
    }

    /// Deterministic, within [0, 1] whatever the input, and a body without a prompt is an error.
    #[test]
    fn bounded_deterministic_and_total() {
        let big = "Analyze, design, prove: x^2 = 4. ```\nfn main() {}\n```\n".repeat(500);
        let mut body = chat(&[&big]);
        body["tools"] = json!([{}]);
        body["reasoning_effort"] = json!("high");
        let a = score_map(body.as_object().unwrap()).unwrap();
        assert!(a.value > 0.99 && a.value <= 1.0, "{a:?}");
        assert_eq!(score_map(body.as_object().unwrap()), Ok(a));
        assert_eq!(
            score_map(json!({"input": "x"}).as_object().unwrap()),
            Err(ScoreError::NoPrompt)
        );
        let odd = s(&["\u{0}\u{ffff}𝄞 ₀ 1/0 ^^ == ```"]).value;
        assert!((0.0..=1.0).contains(&odd));
    }
}
