//! `retransmission_storm`: a large share of a direction's packets are
//! retransmissions of lost data (path-MTU resends and spurious ones, whose
//! data had arrived, excluded).

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_pos, RuleSettings};
use super::{r3, sides, Finding, FindingFlow, RuleError, Severity};
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "retransmission_storm";

/// `retransmission_storm`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetransStormConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Packets a direction must have sent before its ratio counts.
    pub min_packets: u64,
    /// Retransmitted share of a direction's packets (warning).
    pub ratio: f64,
    /// Share at which the finding is critical.
    pub critical_ratio: f64,
}

impl Default for RetransStormConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_packets: 20,
            ratio: 0.1,
            critical_ratio: 0.3,
        }
    }
}

impl RuleSettings for RetransStormConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(self.min_packets >= 1, "min_packets", "must be at least 1")?;
        Self::require(
            finite_pos(self.ratio) && self.ratio <= 1.0,
            "ratio",
            "must be in (0, 1]",
        )?;
        Self::require(
            self.critical_ratio.is_finite() && self.critical_ratio >= self.ratio,
            "critical_ratio",
            "must be a number >= ratio",
        )
    }
}

pub(super) fn check(c: &RetransStormConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    for s in sides(f) {
        let d = s.d;
        if d.packets < c.min_packets || d.packets == 0 {
            continue;
        }
        let retx = d
            .retransmissions
            .saturating_sub(d.retrans_pmtud)
            .saturating_sub(d.retrans_spurious);
        let ratio = f64::from(retx) / d.packets as f64;
        if ratio < c.ratio {
            continue;
        }
        let severity = if ratio >= c.critical_ratio {
            Severity::Critical
        } else {
            Severity::Warning
        };
        out.push(Finding {
            activity_ns: None,
            rule: NAME.into(),
            severity,
            flow: FindingFlow::of(f),
            summary: format!(
                "{} -> {} re-sent {} of its {} packets ({:.1}%): heavy loss on the path.",
                s.from,
                s.to,
                retx,
                d.packets,
                ratio * 100.0,
            ),
            evidence: json!({
                "direction": s.name,
                "packets": d.packets,
                "retransmissions": retx,
                "ratio": r3(ratio),
                "fast": d.retrans_fast,
                "timeout": d.retrans_timeout,
                "spurious": d.retrans_spurious,
                "late_fills": d.late_fills,
                "retrans_bytes": d.retrans_bytes,
                "first_ts_ns": f.first_ts_ns,
                "last_ts_ns": f.last_ts_ns,
            }),
        });
    }
}
