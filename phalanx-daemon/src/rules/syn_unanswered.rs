//! `syn_unanswered`: a client's SYNs got no answer at all (no SYN/ACK, no
//! RST): the server is down or a firewall silently drops the connection.

use serde_json::json;

use super::config::SynUnansweredConfig;
use super::{endpoint, plural, r3, secs, Finding, FindingFlow, Severity};
use crate::flow::FlowSummary;

pub(super) fn check(c: &SynUnansweredConfig, f: &FlowSummary, now_ns: u64, out: &mut Vec<Finding>) {
    let s = &f.src_to_dst;
    if f.proto != "tcp" || !s.syn_only || f.dst_to_src.packets > 0 {
        return;
    }
    let now = now_ns.max(f.last_ts_ns);
    let waited = secs(f.first_ts_ns, now);
    if s.packets < c.min_syns && waited < c.timeout_secs {
        return;
    }
    out.push(Finding {
        rule: "syn_unanswered".into(),
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
