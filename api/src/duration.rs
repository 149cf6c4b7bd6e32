//! Durations as users write them in CRs: `80ms`, `30s`, `2m`, `1h`, `1m30s`.
//!
//! The grammar is the CRD's `DURATION_PATTERN`; the compiler turns each into milliseconds so
//! the sidecar never parses a duration on the request path.

use thiserror::Error;

/// Why a duration string was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration; write a number and a unit (ms, s, m, h), e.g. \"80ms\", \"30s\", \"2m\""
    )]
    Syntax(String),
    #[error("{0:?} is too long; the largest duration is 24h")]
    TooLong(String),
}

/// The longest duration any Detour setting accepts.
pub const MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// Parses a duration into milliseconds.
pub fn parse_ms(input: &str) -> Result<u64, DurationError> {
    let syntax = || DurationError::Syntax(input.to_owned());
    let bytes = input.as_bytes();
    if bytes.is_empty() {
        return Err(syntax());
    }
    let mut total: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(syntax());
        }
        let number: u64 = input[start..i]
            .parse()
            .map_err(|_| DurationError::TooLong(input.to_owned()))?;
        let unit_ms = match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'm'), Some(b's')) => {
                i += 2;
                1
            }
            (Some(b's'), _) => {
                i += 1;
                1_000
            }
            (Some(b'm'), _) => {
                i += 1;
                60_000
            }
            (Some(b'h'), _) => {
                i += 1;
                3_600_000
            }
            _ => return Err(syntax()),
        };
        total = number
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| DurationError::TooLong(input.to_owned()))?;
    }
    if total > MAX_MS {
        return Err(DurationError::TooLong(input.to_owned()));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit and compounds parse to milliseconds.
    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_ms("80ms"), Ok(80));
        assert_eq!(parse_ms("30s"), Ok(30_000));
        assert_eq!(parse_ms("2m"), Ok(120_000));
        assert_eq!(parse_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_ms("0s"), Ok(0));
    }

    /// Malformed strings are rejected with the offending input and an example of the syntax.
    #[test]
    fn rejects_malformed() {
        for bad in ["", "30", "s", "1.5s", "30 s", "-1s", "30sec", "1d", "ms", "10msx"] {
            let err = parse_ms(bad).unwrap_err();
            assert!(matches!(err, DurationError::Syntax(_)), "{bad}: {err}");
            assert!(err.to_string().contains("e.g. \"80ms\""), "{err}");
        }
    }

    /// Overflowing and over-long values are rejected rather than wrapped.
    #[test]
    fn rejects_overflow_and_too_long() {
        assert!(matches!(parse_ms("25h"), Err(DurationError::TooLong(_))));
        assert!(matches!(
            parse_ms("99999999999999999999s"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_ms("18446744073709551615h"),
            Err(DurationError::TooLong(_))
        ));
    }
}
