//! `zero_window`: a receiver advertised a zero window for long enough to
//! stall its peer: the receiving application is not reading (receiver-
//! limited, not a network problem).

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_nonneg, RuleSettings};
use super::{plural, sides, Finding, FindingFlow, RuleError, Severity};
use crate::flow::key::Proto;
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "zero_window";

/// `zero_window`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ZeroWindowConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Total time a receiver advertised a zero window, ms.
    pub min_duration_ms: f64,
}

impl Default for ZeroWindowConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_duration_ms: 500.0,
        }
    }
}

impl RuleSettings for ZeroWindowConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(
            finite_nonneg(self.min_duration_ms),
            "min_duration_ms",
            "must be a number >= 0",
        )
    }
}

pub(super) fn check(c: &ZeroWindowConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    if f.proto != Proto::TCP {
        return;
    }
    for s in sides(f) {
        let d = s.d;
        if d.zero_windows == 0 || d.zero_window_ms < c.min_duration_ms {
            continue;
        }
        let state = if d.zero_window_open {
            "still closed at the last packet"
        } else {
            "re-opened since"
        };
        out.push(Finding {
            activity_ns: None,
            rule: NAME.into(),
            severity: Severity::Warning,
            flow: FindingFlow::of(f),
            summary: format!(
                "{} advertised a zero receive window for {:.1} s ({}, {}), so {} could not send: the receiving application is not reading fast enough.",
                s.from,
                d.zero_window_ms / 1000.0,
                plural(u64::from(d.zero_windows), "episode", "episodes"),
                state,
                s.to,
            ),
            evidence: json!({
                "direction": s.name,
                "episodes": d.zero_windows,
                "zero_window_ms": d.zero_window_ms,
                "still_closed": d.zero_window_open,
                "first_zero_window_ns": d.zero_window_first_ns,
                "zero_window_packets": d.zero_window_packets,
                "peer_zero_window_probes": s.peer.zero_window_probes,
            }),
        });
    }
}
