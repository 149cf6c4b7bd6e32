//! Typed reads of one object's optional fields against their defaults. A value out of range
//! is an error located on its field; the default stands in for it so that reading goes on
//! and every mistake of the object is reported at once.

use super::diagnostics::{Diagnostic, Diags, ObjectKey, Reason};
use crate::duration::parse_ms;

/// The fields of one object, and where their errors go.
pub(super) struct Fields<'a> {
    pub key: &'a ObjectKey,
    pub diags: &'a mut Diags,
}

impl Fields<'_> {
    /// Records an error on `field` of this object and returns it.
    pub fn error(&mut self, field: impl Into<String>, reason: Reason, message: String) -> Diagnostic {
        self.diags.error(self.key, field, reason, message)
    }

    /// A duration in milliseconds; `None` when it does not parse.
    pub fn duration(&mut self, value: Option<&str>, default: u64, field: &str) -> Option<u64> {
        match value {
            None => Some(default),
            Some(v) => match parse_ms(v) {
                Ok(ms) => Some(ms),
                Err(e) => {
                    self.error(field, Reason::InvalidDuration, e.to_string());
                    None
                }
            },
        }
    }

    /// Durations of the fields under `at`, each `(name, value, default)`.
    pub fn durations<const N: usize>(
        &mut self,
        at: &str,
        fields: [(&str, Option<&str>, u64); N],
    ) -> [Option<u64>; N] {
        fields.map(|(name, value, default)| self.duration(value, default, &format!("{at}.{name}")))
    }

    /// A number from 0 to 1.
    pub fn ratio(&mut self, value: Option<f64>, default: f64, field: &str) -> f64 {
        match value {
            None => default,
            Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => v,
            Some(v) => {
                self.error(
                    field,
                    Reason::InvalidSpec,
                    format!("{v} is out of range; use a number from 0 to 1"),
                );
                default
            }
        }
    }

    /// A whole number from `min` to `max`.
    pub fn count(&mut self, value: Option<u32>, default: u32, (min, max): (u32, u32), field: &str) -> u32 {
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.error(
                    field,
                    Reason::InvalidSpec,
                    format!("{v} is out of range; use {min} to {max}"),
                );
                default
            }
        }
    }

    /// Errors on each of `fields` that is zero.
    pub fn not_zero(&mut self, fields: &[(&str, Option<u64>)]) {
        for &(field, v) in fields {
            if v == Some(0) {
                self.error(field, Reason::InvalidSpec, "must be greater than 0".to_owned());
            }
        }
    }
}
