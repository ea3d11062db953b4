//! `congestion`: the flow's RTT is inflated over its own baseline (the
//! minimum RTT: the path without queueing) while packets are lost or
//! ECN-marked: a queue on the path is filling up.

use serde_json::json;

use super::config::CongestionConfig;
use super::{endpoint, r3, Finding, FindingFlow, Ms, Severity, Times};
use crate::flow::FlowSummary;

pub(super) fn check(c: &CongestionConfig, f: &FlowSummary, out: &mut Vec<Finding>) {
    if f.proto != "tcp" || f.rtt.samples < c.min_rtt_samples {
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
        rule: "congestion".into(),
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
            "first_ts_ns": f.first_ts_ns,
            "last_ts_ns": f.last_ts_ns,
        }),
    });
}
