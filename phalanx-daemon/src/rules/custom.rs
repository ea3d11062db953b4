//! Custom rules from `[[rules.custom]]`: a condition over the flow
//! report's fields, a severity and a summary template.

use serde_json::{Map, Value};

use super::config::CustomRuleConfig;
use super::expr::{self, Condition, Template};
use super::fields::flow_fields;
use super::{Finding, FindingFlow, RuleError, Severity, BUILTIN_RULES};
use crate::flow::FlowSummary;

/// Compiles `[[rules.custom]]` in order; the first bad entry is the error.
pub(super) fn compile_all(rules: &[CustomRuleConfig]) -> Result<Vec<CustomRule>, RuleError> {
    let mut out: Vec<CustomRule> = Vec::with_capacity(rules.len());
    for rc in rules {
        check_name(rc, &out)?;
        out.push(CustomRule::compile(rc)?);
    }
    Ok(out)
}

/// A custom rule's name must be a plain word no other rule uses: it is
/// the `rule` of findings and alerts.
fn check_name(rc: &CustomRuleConfig, earlier: &[CustomRule]) -> Result<(), RuleError> {
    let name = rc.name.as_str();
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let message = if !plain {
        "name must be non-empty letters, digits, `_` or `-`"
    } else if BUILTIN_RULES.contains(&name) {
        "name is taken by a built-in rule"
    } else if earlier.iter().any(|c| c.name == name) {
        "name is used by two custom rules"
    } else {
        return Ok(());
    };
    Err(RuleError::Custom {
        rule: rc.name.clone(),
        message: message.to_string(),
    })
}

/// A compiled custom rule.
#[derive(Clone, Debug)]
pub(super) struct CustomRule {
    pub name: String,
    severity: Severity,
    cond: Condition,
    summary: Template,
}

impl CustomRule {
    pub fn compile(rc: &CustomRuleConfig) -> Result<Self, RuleError> {
        let fields = flow_fields();
        let cond = expr::compile(rc.condition.get_ref(), fields).map_err(|e| RuleError::Expr {
            rule: rc.name.clone(),
            part: "condition",
            column: e.column,
            message: e.message,
            span: rc.condition.span(),
        })?;
        let summary =
            Template::compile(rc.summary.get_ref(), fields).map_err(|e| RuleError::Expr {
                rule: rc.name.clone(),
                part: "summary",
                column: e.column,
                message: e.message,
                span: rc.summary.span(),
            })?;
        Ok(Self {
            name: rc.name.clone(),
            severity: rc.severity,
            cond,
            summary,
        })
    }

    /// The finding for a flow (`v` is its JSON report), if the condition holds.
    pub fn check(&self, f: &FlowSummary, v: &Value) -> Option<Finding> {
        if !self.cond.holds(v) {
            return None;
        }
        let mut evidence = Map::new();
        for name in self.cond.fields.iter().chain(&self.summary.fields) {
            if !evidence.contains_key(name) {
                let x = expr::lookup(v, name).cloned().unwrap_or(Value::Null);
                evidence.insert(name.clone(), x);
            }
        }
        evidence.insert("first_ts_ns".into(), f.first_ts_ns.into());
        evidence.insert("last_ts_ns".into(), f.last_ts_ns.into());
        Some(Finding {
            activity_ns: None,
            rule: self.name.clone(),
            severity: self.severity,
            flow: FindingFlow::of(f),
            summary: self.summary.render(v),
            evidence: Value::Object(evidence),
        })
    }
}
