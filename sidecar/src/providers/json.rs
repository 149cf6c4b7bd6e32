//! A strict JSON scanner for the one-pass readers of [`super::answer`]: it walks a document
//! once, validating every value it skips and handing the caller the few it reads, and builds
//! nothing.
//!
//! Contract: it accepts exactly the documents `serde_json` parses into a `Value`, except that
//! numbers it only skips are not checked to fit an `f64` (`1e400`, as serde's own skipping
//! does not either) and nesting may go one level deeper. Strings follow serde's `Value`
//! rules: no raw control characters, only JSON's escapes, and UTF-16 surrogates in pairs. The
//! text is known to be UTF-8 (checked once by the caller). The fuzz targets `request_body`
//! and `response_body` hold the readers built on it to a `Value` parse.
//!
//! Why: serde's visitor machinery cost about 20 instructions per byte of an answer; this scans
//! string contents eight bytes at a time and the structure with a handful of branches.

use std::borrow::Cow;
use std::ops::Range;

/// Containers deeper than this are refused (serde_json's limit is 127).
const MAX_DEPTH: u32 = 128;

/// A position in a JSON text.
pub struct Scan<'a> {
    text: &'a str,
    pos: usize,
    depth: u32,
}

/// A string's contents (between its quotes) as written.
#[derive(Clone, Copy, Debug)]
pub struct Str<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> Str<'a> {
    /// The string's value, escapes decoded.
    pub fn value(&self) -> Cow<'a, str> {
        if self.escaped {
            // Validated by the scanner, so serde's decoding cannot fail; if it ever did, the
            // string would compare unequal to every name, which is the safe reading.
            Cow::Owned(serde_json::from_str::<String>(&format!("\"{}\"", self.raw)).unwrap_or_default())
        } else {
            Cow::Borrowed(self.raw)
        }
    }

    /// Whether the string's value is `s`.
    pub fn is(&self, s: &str) -> bool {
        if self.escaped {
            self.value() == s
        } else {
            self.raw == s
        }
    }

    /// The position of the value in `names`, if it is one of them.
    pub fn index_in(&self, names: &[&str]) -> Option<usize> {
        if self.escaped {
            let v = self.value();
            names.iter().position(|n| *n == v)
        } else {
            names.iter().position(|n| *n == self.raw)
        }
    }
}

impl<'a> Scan<'a> {
    pub const fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
    }

    /// The first byte of the next value (after whitespace), not consumed.
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes().get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.bytes().get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.ws();
        self.eat(b).then_some(())
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Option<()> {
        self.ws();
        (self.pos == self.text.len()).then_some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth < MAX_DEPTH).then_some(())
    }

    /// Reads an object, calling `entry` with each key; `entry` must read or skip the value.
    pub fn object(&mut self, mut entry: impl FnMut(&mut Self, Str<'a>) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.enter()?;
        self.ws();
        if !self.eat(b'}') {
            loop {
                self.ws();
                let key = self.string()?;
                self.expect(b':')?;
                entry(self, key)?;
                self.ws();
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// Reads an array, calling `item` for each element; `item` must read or skip it.
    pub fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        self.enter()?;
        self.ws();
        if !self.eat(b']') {
            loop {
                item(self)?;
                self.ws();
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// Skips any value, validating it.
    pub fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(|s, _| s.skip()),
            b'[' => self.array(Self::skip),
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }

    /// Skips any value and returns where it is.
    pub fn span(&mut self) -> Option<Range<usize>> {
        self.ws();
        let start = self.pos;
        self.skip()?;
        Some(start..self.pos)
    }

    /// A string, when the next value is one; any other value is skipped.
    pub fn string_or_skip(&mut self) -> Option<Option<Str<'a>>> {
        if self.peek()? == b'"' {
            self.string().map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    /// The next value read as `Value::as_u64` would: `Some` for a non-negative integer that
    /// fits, `None` for anything else (skipped).
    pub fn count(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => {
                let (digits, integer) = self.number()?;
                Some(integer.then(|| digits.parse::<u64>().ok()).flatten())
            }
            _ => self.skip().map(|()| None),
        }
    }

    /// `Some(b)` for `true`/`false`, `None` for any other value (skipped).
    pub fn flag(&mut self) -> Option<Option<bool>> {
        match self.peek()? {
            b't' => self.literal("true").map(|()| Some(true)),
            b'f' => self.literal("false").map(|()| Some(false)),
            _ => self.skip().map(|()| None),
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        (self.bytes().get(self.pos..end)? == word.as_bytes()).then(|| self.pos = end)
    }

    /// A number per JSON's grammar: its text, and whether it is a plain non-negative integer.
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let b = self.bytes();
        let start = self.pos;
        let negative = self.eat(b'-');
        match b.get(self.pos)? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = !negative;
        if self.eat(b'.') {
            integer = false;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = b.get(self.pos) {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = b.get(self.pos) {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        Some((self.text.get(start..self.pos)?, integer))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    /// A string; the scanner is on its opening quote (after whitespace).
    fn string(&mut self) -> Option<Str<'a>> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos = special(self.bytes(), self.pos);
            match *self.bytes().get(self.pos)? {
                b'"' => {
                    let raw = self.text.get(start..self.pos)?;
                    self.pos += 1;
                    return Some(Str { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    self.escape()?;
                }
                // A raw control character.
                _ => return None,
            }
        }
    }

    /// One escape after its backslash; `\u` surrogates must pair, as a `Value` parse requires.
    fn escape(&mut self) -> Option<()> {
        let b = *self.bytes().get(self.pos)?;
        self.pos += 1;
        match b {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => match self.hex4()? {
                0xDC00..=0xDFFF => None,
                0xD800..=0xDBFF => {
                    if !(self.eat(b'\\') && self.eat(b'u')) {
                        return None;
                    }
                    matches!(self.hex4()?, 0xDC00..=0xDFFF).then_some(())
                }
                _ => Some(()),
            },
            _ => None,
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let end = self.pos.checked_add(4)?;
        let hex = self.text.get(self.pos..end)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos = end;
        u16::from_str_radix(hex, 16).ok()
    }
}

/// The index of the first byte at or after `from` that ends a string's plain run: a quote, a
/// backslash or a control character (or `b.len()`). Eight bytes at a time.
fn special(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let quote = v ^ (ONES * u64::from(b'"'));
        let backslash = v ^ (ONES * u64::from(b'\\'));
        // A byte is flagged when it is zero (for the two XORs) or below 0x20; the lowest
        // flagged byte is exact (borrows only ever flag bytes above a real hit).
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (v.wrapping_sub(ONES * 0x20) & !v);
        let hits = hits & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn accepts(text: &str) -> bool {
        let mut s = Scan::new(text);
        s.skip().is_some() && s.end().is_some()
    }

    /// Accepts what a `Value` parse accepts and refuses what it refuses, on the edge cases
    /// of strings, numbers, literals and structure.
    #[test]
    fn agrees_with_a_value_parse() {
        let cases = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#" { "a" : [ 1 , -2.5e+3 , 0 , -0 , 0.0 , 1E9 ] , "b" : { } , "c" : [ ] } "#,
            r#"{"a":1,}"#,
            r#"{"a":1"b":2}"#,
            r#"{"a"}"#,
            r#"{a:1}"#,
            r#"[1,2,]"#,
            r#"[01]"#,
            r#"[1.]"#,
            r#"[.5]"#,
            r#"[1e]"#,
            r#"[-]"#,
            r#"[+1]"#,
            r#"[true,false,null]"#,
            r#"[tru]"#,
            r#"[nul]"#,
            r#"["\u00e9\n\t\"\\\/\b\f\r"]"#,
            r#"["\x"]"#,
            r#"["\u12"]"#,
            r#"["\ud83d\ude00"]"#,
            r#"["\ud83d"]"#,
            r#"["\ud83dx"]"#,
            r#"["\ude00"]"#,
            r#"["\ud83d\u0041"]"#,
            "[\"a\u{1}b\"]",
            "[\"tab\there\"]",
            "[\"é ü 漢字 😀\"]",
            r#"["unterminated]"#,
            r#"{"a":1} x"#,
            r#"{"a":1}   "#,
            "",
            "   ",
            r#"{"a":[{"b":[{"c":"0123456789abcdef0123456789\"quoted\" and \\ more text"}]}]}"#,
        ];
        for case in cases {
            let want = serde_json::from_str::<Value>(case).is_ok();
            assert_eq!(accepts(case), want, "{case}");
        }
    }

    /// Nesting is bounded like serde's: 127 levels pass, far deeper is refused without
    /// exhausting the stack.
    #[test]
    fn nesting_is_bounded() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(accepts(&nested(127)));
        assert!(!accepts(&nested(129)));
        assert!(!accepts(&nested(100_000)));
    }

    /// The eight-bytes-at-a-time search finds the first quote, backslash or control byte at
    /// every offset, past multi-byte UTF-8.
    #[test]
    fn finds_the_first_special_byte_at_every_offset() {
        for len in 0..40 {
            for special_byte in [b'"', b'\\', 0x1f, 0x00] {
                let mut text = "é".repeat(len).into_bytes();
                let want = text.len();
                text.push(special_byte);
                text.extend_from_slice(b"tail\"");
                assert_eq!(special(&text, 0), want, "len {len} byte {special_byte:#x}");
            }
            let plain = "ab".repeat(len).into_bytes();
            assert_eq!(special(&plain, 0), plain.len());
        }
    }

    /// Counts read as `Value::as_u64`; strings compare by their decoded value.
    #[test]
    fn reads_counts_flags_and_names() {
        let mut s = Scan::new(r#"[7, -1, 1.0, 1e2, 18446744073709551616, "7", true, "n\u0061me"]"#);
        let mut counts = Vec::new();
        let mut names = Vec::new();
        let mut i = 0;
        s.array(|s| {
            i += 1;
            match i {
                7 => names.push(s.flag()?.map(|b| b.to_string())),
                8 => names.push(
                    s.string_or_skip()?
                        .map(|n| n.index_in(&["x", "name"]).unwrap_or(9).to_string()),
                ),
                _ => counts.push(s.count()?),
            }
            Some(())
        })
        .unwrap();
        assert_eq!(counts, [Some(7), None, None, None, None, None]);
        assert_eq!(names, [Some("true".to_owned()), Some("1".to_owned())]);
    }
}
