//! `syn_unanswered`: a client's SYNs got no answer at all (no SYN/ACK, no
//! RST): the server is down or a firewall silently drops the connection.

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_pos, RuleSettings};
use super::{endpoint, plural, r3, secs, Finding, FindingFlow, RuleError, Severity};
use crate::flow::key::Proto;
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "syn_unanswered";

/// `syn_unanswered`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynUnansweredConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// SYNs sent (first plus retries) with no answer ...
    pub min_syns: u64,
    /// ... or seconds waited since the first SYN.
    pub timeout_secs: f64,
}

impl Default for SynUnansweredConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_syns: 2,
            timeout_secs: 3.0,
        }
    }
}

impl RuleSettings for SynUnansweredConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(self.min_syns >= 1, "min_syns", "must be at least 1")?;
        Self::require(
            finite_pos(self.timeout_secs),
            "timeout_secs",
            "must be a number > 0",
        )
    }
}

pub(super) fn check(c: &SynUnansweredConfig, f: &FlowSummary, now_ns: u64, out: &mut Vec<Finding>) {
    let s = &f.src_to_dst;
    if f.proto != Proto::TCP || !s.syn_only || f.dst_to_src.packets > 0 {
        return;
    }
    let now = now_ns.max(f.last_ts_ns);
    let waited = secs(f.first_ts_ns, now);
    if s.packets < c.min_syns && waited < c.timeout_secs {
        return;
    }
    out.push(Finding {
        activity_ns: None,
        rule: NAME.into(),
        severity: Severity::Warning,
        flow: FindingFlow::of(f),
        summary: format!(
            "{} sent {} to {} and got no answer in {:.1} s: the server is down or a firewall drops the connection.",
            endpoint(f.src, f.sport),
            plural(s.packets, "SYN", "SYNs"),
            endpoint(f.dst, f.dport),
            waited,
        ),
        evidence: json!({
            "syns": s.packets,
            "first_syn_ns": f.first_ts_ns,
            "last_syn_ns": f.last_ts_ns,
            "waited_s": r3(waited),
        }),
    });
}
