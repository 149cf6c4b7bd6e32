//! Tag rules, of a route or a policy: their shape (what the CRD's schema and CEL rules would
//! reject, for inputs that never met an apiserver) and their compiled form.

use std::collections::BTreeSet;

use super::diagnostics::Reason;
use super::fields::Fields;
use crate::crd::{Op, RuleSpec};
use crate::table::{self, Condition, Match};

/// A DNS label: lowercase letters, digits and '-', at most 63, not starting or ending with '-'.
pub(super) fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Checks one rule at field path `at`.
pub(super) fn check_shape(rule: &RuleSpec, at: &str, f: &mut Fields<'_>) {
    if !valid_name(&rule.name) {
        f.error(
            format!("{at}.name"),
            Reason::InvalidSpec,
            format!(
                "{:?} is not a valid rule name; use lowercase letters, digits and '-'",
                rule.name
            ),
        );
    }
    match (&rule.when.all, &rule.when.any) {
        (Some(_), Some(_)) | (None, None) => {
            f.error(
                format!("{at}.when"),
                Reason::InvalidSpec,
                "set exactly one of all or any".to_owned(),
            );
        }
        _ => {}
    }
    if rule.then.targets.is_none() && rule.then.strategy.is_none() && rule.then.continue_on_failure.is_none()
    {
        f.error(
            format!("{at}.then"),
            Reason::InvalidSpec,
            "set targets, strategy, continueOnFailure, or more than one".to_owned(),
        );
    }
    let (list, name) = match (&rule.when.all, &rule.when.any) {
        (Some(all), _) => (all, "all"),
        (None, Some(any)) => (any, "any"),
        (None, None) => return,
    };
    for (k, c) in list.iter().enumerate() {
        let field = format!("{at}.when.{name}[{k}]");
        match c.op {
            Op::Exists => {}
            Op::In => {
                if c.values.as_ref().is_none_or(Vec::is_empty) {
                    f.error(
                        format!("{field}.values"),
                        Reason::InvalidSpec,
                        "is required for op in".to_owned(),
                    );
                }
            }
            Op::Gt | Op::Lt => match &c.value {
                Some(v) if v.parse::<f64>().is_ok_and(f64::is_finite) => {}
                Some(v) => {
                    f.error(
                        format!("{field}.value"),
                        Reason::InvalidSpec,
                        format!("{v:?} must be a number for op {:?}", c.op),
                    );
                }
                None => {
                    f.error(
                        format!("{field}.value"),
                        Reason::InvalidSpec,
                        "is required for this op".to_owned(),
                    );
                }
            },
            _ => {
                if c.value.is_none() {
                    f.error(
                        format!("{field}.value"),
                        Reason::InvalidSpec,
                        "is required for this op".to_owned(),
                    );
                }
            }
        }
    }
}

/// The compiled rule, restricted to the targets `served`.
pub(super) fn resolve(rule: &RuleSpec, served: &BTreeSet<&str>) -> table::Rule {
    let (when, list) = match (&rule.when.all, &rule.when.any) {
        (Some(all), _) => (Match::All, all.as_slice()),
        (None, Some(any)) => (Match::Any, any.as_slice()),
        (None, None) => (Match::All, &[][..]),
    };
    table::Rule {
        name: rule.name.clone(),
        when,
        conditions: list
            .iter()
            .map(|c| Condition {
                tag: c.tag.clone(),
                op: c.op,
                values: match (&c.values, &c.value) {
                    (Some(vs), _) if c.op == Op::In => vs.clone(),
                    (_, Some(v)) => vec![v.clone()],
                    (Some(vs), None) => vs.clone(),
                    (None, None) => Vec::new(),
                },
            })
            .collect(),
        // Targets left out (credentials) drop out of the rule too; see `table::Rule::targets`.
        targets: rule.then.targets.as_ref().map(|ts| {
            ts.iter()
                .filter(|t| served.contains(t.as_str()))
                .cloned()
                .collect()
        }),
        strategy: rule.then.strategy,
        continue_on_failure: rule.then.continue_on_failure,
    }
}
