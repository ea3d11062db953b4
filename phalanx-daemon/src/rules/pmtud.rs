//! `pmtud_blackhole` and `pmtud_reduced`.
//!
//! A path-MTU black hole drops packets larger than some hop's MTU without
//! the ICMP "fragmentation needed" / "packet too big" that would tell the
//! sender (filtered, or never generated). Seen from the vantage point: a
//! direction's full-size segments are re-sent again and again and never
//! acknowledged, while its smaller segments are. The engine tracks the
//! largest segment sent, the largest first transmission acknowledged, and
//! full-size re-sends made while nothing that large was acknowledged.

use serde::Deserialize;
use serde_json::json;

use super::settings::RuleSettings;
use super::{plural, r3, secs, sides, Finding, FindingFlow, RuleError, Severity, Side};
use crate::flow::key::Proto;
use crate::flow::state::IcmpEvent;
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "pmtud_blackhole";

/// The name of the info findings about a path MTU lowered by ICMP.
pub(super) const REDUCED: &str = "pmtud_reduced";

/// `pmtud_blackhole` (and its info companion `pmtud_reduced`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PmtudConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Retransmissions of full-size segments, none of that size ever
    /// acknowledged, before the rule fires.
    pub min_retransmissions: u32,
    /// Segments smaller than this (payload bytes) are not "full size":
    /// they fit nearly every path.
    pub min_segment_bytes: u32,
    /// Report an ICMP "fragmentation needed" / "packet too big" that
    /// lowered a flow's path MTU, as `pmtud_reduced` (info).
    pub report_reduced: bool,
}

impl Default for PmtudConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_retransmissions: 3,
            min_segment_bytes: 1200,
            report_reduced: true,
        }
    }
}

impl RuleSettings for PmtudConfig {
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

pub(super) fn check(c: &PmtudConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    if f.proto != Proto::TCP {
        return;
    }
    let ipv = if f.src.is_ipv6() { 6 } else { 4 };
    for (i, s) in sides(f).into_iter().enumerate() {
        let too_big: Vec<_> = f
            .icmp
            .iter()
            .filter(|e| usize::from(e.quoted_dir) == i && e.is_too_big(ipv))
            .collect();
        if too_big.is_empty() {
            if !receiver_is_here(f, i) {
                out.extend(blackhole(c, f, &s));
            }
        } else if c.report_reduced {
            // The sender was told: discovery at work, not a black hole.
            out.push(reduced(f, &s, &too_big));
        }
    }
}

/// Whether direction `i` (0: `src_to_dst`) ends at the host the capture
/// was taken on (`local_side`): its full-size segments reached their
/// receiver, so no hop dropped them; re-sends seen there have another
/// cause (loss upstream in a queue, which other rules report).
fn receiver_is_here(f: &FlowSummary, i: usize) -> bool {
    f.local_side == Some(if i == 0 { "dst" } else { "src" })
}

/// `pmtud_reduced` for a direction that ICMP "too big" errors quoted.
fn reduced(f: &FlowSummary, s: &Side<'_>, too_big: &[&IcmpEvent]) -> Finding {
    let mtu = too_big.iter().map(|e| e.mtu).filter(|&m| m > 0).min();
    let mut from: Vec<String> = too_big.iter().map(|e| e.from.to_string()).collect();
    from.dedup();
    let first = too_big.iter().map(|e| e.ts_ns).min().unwrap_or(0);
    let last = too_big.iter().map(|e| e.ts_ns).max().unwrap_or(0);
    let mtu_text = mtu.map_or_else(
        || "a smaller MTU".to_string(),
        |m| format!("an MTU of {m} bytes"),
    );
    Finding {
        activity_ns: None,
        rule: REDUCED.into(),
        severity: Severity::Info,
        flow: FindingFlow::of(f),
        summary: format!(
            "{} reported {} on the path from {} to {} ({}) and {} re-sent at the smaller size: path-MTU discovery worked.",
            from.join(", "),
            mtu_text,
            s.from,
            s.to,
            plural(too_big.len() as u64, "ICMP error", "ICMP errors"),
            plural(u64::from(s.d.retrans_pmtud), "segment was", "segments were"),
        ),
        evidence: json!({
            "direction": s.name,
            "mtu": mtu,
            "icmp_errors": too_big.len(),
            "reported_by": from,
            "first_icmp_ns": first,
            "last_icmp_ns": last,
            "retrans_pmtud": s.d.retrans_pmtud,
            "max_segment": s.d.max_segment,
        }),
    }
}

/// `pmtud_blackhole` for a direction no ICMP error quoted, if it fires.
fn blackhole(c: &PmtudConfig, f: &FlowSummary, s: &Side<'_>) -> Option<Finding> {
    let d = s.d;
    let fires = d.full_size_retrans >= c.min_retransmissions
        && d.max_segment >= c.min_segment_bytes
        && d.max_acked_segment > 0
        && d.max_acked_segment < d.max_segment;
    if !fires {
        return None;
    }
    let first = d.full_size_retrans_first_ns.unwrap_or(0);
    let last = d.full_size_retrans_last_ns.unwrap_or(0);
    Some(Finding {
        activity_ns: None,
        rule: NAME.into(),
        severity: Severity::Critical,
        flow: FindingFlow::of(f),
        summary: format!(
            "{} re-sent full-size {}-byte segments to {} {} over {:.1} s and none was ever acknowledged, while segments up to {} bytes got through and no ICMP \"packet too big\" came back: a path-MTU black hole beyond this host.",
            s.from,
            d.max_segment,
            s.to,
            plural(u64::from(d.full_size_retrans), "time", "times"),
            secs(first, last),
            d.max_acked_segment,
        ),
        evidence: json!({
            "direction": s.name,
            "full_size_bytes": d.max_segment,
            "full_size_retransmissions": d.full_size_retrans,
            "largest_acked_segment": d.max_acked_segment,
            "first_retransmission_ns": first,
            "last_retransmission_ns": last,
            "span_s": r3(secs(first, last)),
            "receiver_mss": s.peer.mss,
            "icmp_too_big": 0,
            "still_unacknowledged": d.stall.open,
        }),
    })
}
