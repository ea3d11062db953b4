//! `retransmission_storm`: a large share of a direction's packets are
//! retransmissions of lost data (path-MTU resends and spurious ones, whose
//! data had arrived, excluded).

use serde_json::json;

use super::config::RetransStormConfig;
use super::{r3, sides, Finding, FindingFlow, Severity};
use crate::flow::FlowSummary;

pub(super) fn check(c: &RetransStormConfig, f: &FlowSummary, out: &mut Vec<Finding>) {
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
            rule: "retransmission_storm".into(),
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
