//! `retransmission_stall`: the same data re-sent again and again with no
//! acknowledgment progress in between (typically RTO backoff against a
//! peer or path that has gone silent). Critical while still unacknowledged.

use serde::Deserialize;
use serde_json::json;

use super::settings::RuleSettings;
use super::{r3, secs, sides, Finding, FindingFlow, RuleError, Severity};
use crate::flow::key::Proto;
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "retransmission_stall";

/// `retransmission_stall`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StallConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Retransmissions of the same data with no acknowledgment progress.
    pub min_retransmissions: u32,
}

impl Default for StallConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_retransmissions: 3,
        }
    }
}

impl RuleSettings for StallConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(
            self.min_retransmissions >= 1,
            "min_retransmissions",
            "must be at least 1",
        )
    }
}

pub(super) fn check(c: &StallConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    if f.proto != Proto::TCP {
        return;
    }
    for s in sides(f) {
        let st = &s.d.stall;
        if st.retransmissions < c.min_retransmissions {
            continue;
        }
        let (first, last) = (st.first_ns.unwrap_or(0), st.last_ns.unwrap_or(0));
        let (severity, end) = if st.open {
            (Severity::Critical, "it is still unacknowledged")
        } else {
            (Severity::Warning, "it was acknowledged only afterwards")
        };
        out.push(Finding {
            activity_ns: None,
            rule: NAME.into(),
            severity,
            flow: FindingFlow::of(f),
            summary: format!(
                "{} re-sent the same data {} times over {:.1} s with no acknowledgment from {}, and {}.",
                s.from,
                st.retransmissions,
                secs(first, last),
                s.to,
                end,
            ),
            evidence: json!({
                "direction": s.name,
                "retransmissions": st.retransmissions,
                "relative_seq": st.rel_seq,
                "first_retransmission_ns": first,
                "last_retransmission_ns": last,
                "span_s": r3(secs(first, last)),
                "still_unacknowledged": st.open,
                "peer_packets": s.peer.packets,
            }),
        });
    }
}
