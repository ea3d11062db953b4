//! `congestion`: the flow's RTT is inflated over its own baseline (the
//! minimum RTT: the path without queueing) while packets are lost or
//! ECN-marked: a queue on the path is filling up.

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_nonneg, RuleSettings};
use super::{endpoint, r3, Finding, FindingFlow, Ms, RuleError, Severity, Times};
use crate::flow::key::Proto;
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "congestion";

/// `congestion`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CongestionConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// The median or smoothed recent RTT must reach this multiple of the
    /// flow's own minimum RTT.
    pub rtt_factor: f64,
    /// ... and exceed the minimum by at least this many milliseconds.
    pub min_inflation_ms: f64,
    /// RTT samples needed before the baseline is trusted.
    pub min_rtt_samples: u64,
    /// Loss evidence: retransmissions (spurious and path-MTU resends not
    /// counted) ...
    pub min_retransmissions: u32,
    /// ... or packets marked ECN Congestion Experienced.
    pub min_ce_packets: u32,
}

impl Default for CongestionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rtt_factor: 2.0,
            min_inflation_ms: 5.0,
            min_rtt_samples: 10,
            min_retransmissions: 2,
            min_ce_packets: 1,
        }
    }
}

impl RuleSettings for CongestionConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(
            self.rtt_factor.is_finite() && self.rtt_factor > 1.0,
            "rtt_factor",
            "must be a number > 1",
        )?;
        Self::require(
            finite_nonneg(self.min_inflation_ms),
            "min_inflation_ms",
            "must be a number >= 0",
        )?;
        Self::require(
            self.min_rtt_samples >= 2,
            "min_rtt_samples",
            "must be at least 2",
        )?;
        Self::require(self.min_retransmissions >= 1 || self.min_ce_packets >= 1, "min_retransmissions", "min_retransmissions and min_ce_packets cannot both be 0 (RTT inflation alone is not congestion)")
    }
}

pub(super) fn check(c: &CongestionConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    if f.proto != Proto::TCP || f.rtt.samples < c.min_rtt_samples {
        return;
    }
    let (Some(min), Some(p50)) = (f.rtt.min_ms, f.rtt.p50_ms) else {
        return;
    };
    if min <= 0.0 {
        return;
    }
    // The median says "most of the flow", the smoothed RTT "right now".
    let (rtt, which) = match f.srtt_ms {
        Some(sr) if sr > p50 => (sr, "smoothed recent RTT"),
        _ => (p50, "median"),
    };
    let factor = rtt / min;
    if factor < c.rtt_factor || rtt - min < c.min_inflation_ms {
        return;
    }
    let loss = f
        .retransmissions
        .saturating_sub(f.retrans_spurious)
        .saturating_sub(f.retrans_pmtud);
    let lossy = c.min_retransmissions > 0 && loss >= c.min_retransmissions;
    let marked = c.min_ce_packets > 0 && f.ce_packets >= c.min_ce_packets;
    if !(lossy || marked) {
        return;
    }
    out.push(Finding {
        activity_ns: None,
        rule: NAME.into(),
        severity: Severity::Warning,
        flow: FindingFlow::of(f),
        summary: format!(
            "The RTT of {} <-> {} rose to {} ({}), {} times its {} baseline, with {} retransmissions and {} ECN congestion marks: a queue on the path is filling up.",
            endpoint(f.src, f.sport),
            endpoint(f.dst, f.dport),
            Ms(rtt),
            which,
            Times(factor),
            Ms(min),
            loss,
            f.ce_packets,
        ),
        evidence: json!({
            "rtt_min_ms": min,
            "rtt_p50_ms": p50,
            "rtt_p99_ms": f.rtt.p99_ms,
            "srtt_ms": f.srtt_ms,
            "rtt_samples": f.rtt.samples,
            "inflation_factor": r3(factor),
            "retransmissions": loss,
            "ce_packets": f.ce_packets,
            // Where the time goes, beside the inflation.
            "latency": f.latency,
            "first_ts_ns": f.first_ts_ns,
            "last_ts_ns": f.last_ts_ns,
        }),
    });
}
