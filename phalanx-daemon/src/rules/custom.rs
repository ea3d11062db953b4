//! Custom rules from `[[rules.custom]]`: a condition over the flow
//! report's fields, a severity and a summary template.

use serde_json::{Map, Value};

use super::config::CustomRuleConfig;
use super::expr::{self, Condition, Template};
use super::fields::flow_fields;
use super::{Finding, FindingFlow, RuleError, Severity};
use crate::flow::FlowSummary;

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
            rule: self.name.clone(),
            severity: self.severity,
            flow: FindingFlow::of(f),
            summary: self.summary.render(v),
            evidence: Value::Object(evidence),
        })
    }
}
