//! `pmtud_blackhole` and `pmtud_reduced`.
//!
//! A path-MTU black hole drops packets larger than some hop's MTU without
//! the ICMP "fragmentation needed" / "packet too big" that would tell the
//! sender (filtered, or never generated). Seen from the vantage point: a
//! direction's full-size segments are re-sent again and again and never
//! acknowledged, while its smaller segments are. The engine tracks the
//! largest segment sent, the largest first transmission acknowledged, and
//! full-size re-sends made while nothing that large was acknowledged.

use serde_json::json;

use super::config::PmtudConfig;
use super::{plural, r3, secs, sides, Finding, FindingFlow, Severity};
use crate::flow::FlowSummary;

pub(super) fn check(c: &PmtudConfig, f: &FlowSummary, out: &mut Vec<Finding>) {
    if f.proto != "tcp" {
        return;
    }
    let ipv = if f.src.is_ipv6() { 6 } else { 4 };
    for (i, s) in sides(f).into_iter().enumerate() {
        let too_big: Vec<_> = f
            .icmp
            .iter()
            .filter(|e| usize::from(e.quoted_dir) == i && e.is_too_big(ipv))
            .collect();
        if !too_big.is_empty() {
            if !c.report_reduced {
                continue;
            }
            let mtu = too_big.iter().map(|e| e.mtu).filter(|&m| m > 0).min();
            let mut from: Vec<String> = too_big.iter().map(|e| e.from.to_string()).collect();
            from.dedup();
            let first = too_big.iter().map(|e| e.ts_ns).min().unwrap_or(0);
            let last = too_big.iter().map(|e| e.ts_ns).max().unwrap_or(0);
            let mtu_text = mtu.map_or_else(
                || "a smaller MTU".to_string(),
                |m| format!("an MTU of {m} bytes"),
            );
            out.push(Finding {
                rule: "pmtud_reduced".into(),
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
            });
            continue;
        }
        let d = s.d;
        let fires = d.full_size_retrans >= c.min_retransmissions
            && d.max_segment >= c.min_segment_bytes
            && d.max_acked_segment > 0
            && d.max_acked_segment < d.max_segment;
        if !fires {
            continue;
        }
        let first = d.full_size_retrans_first_ns.unwrap_or(0);
        let last = d.full_size_retrans_last_ns.unwrap_or(0);
        out.push(Finding {
            rule: "pmtud_blackhole".into(),
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
        });
    }
}
