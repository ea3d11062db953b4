//! `asymmetric_path`: the two directions of a flow take different paths.
//!
//! Two signs: (1) only one direction crosses the vantage point although it
//! proves the other exists (its ACK number advances over data never seen
//! here, or it completed a handshake whose other half never passed here);
//! a one-way flow without that proof is a silent peer, not a path; (2) a
//! direction's TTL / hop limit changes mid-flow: its route changed.

use serde_json::json;

use super::config::AsymmetricConfig;
use super::{plural, r3, sides, Finding, FindingFlow, Severity};
use crate::flow::FlowSummary;

pub(super) fn check(c: &AsymmetricConfig, f: &FlowSummary, out: &mut Vec<Finding>) {
    if f.proto != "tcp" {
        return;
    }
    for s in sides(f) {
        let d = s.d;
        let proof = d.ack_advances >= 1 || (d.syn && !d.syn_only && !d.rst);
        if s.peer.packets == 0
            && d.packets >= c.min_packets
            && f.duration_s >= c.min_duration_secs
            && proof
        {
            out.push(Finding {
                rule: "asymmetric_path".into(),
                severity: Severity::Warning,
                flow: FindingFlow::of(f),
                summary: format!(
                    "Only {} -> {} crosses this host ({} over {:.1} s, acknowledging traffic that never passed here): the return path from {} goes around this vantage point.",
                    s.from,
                    s.to,
                    plural(d.packets, "packet", "packets"),
                    f.duration_s,
                    s.to,
                ),
                evidence: json!({
                    "kind": "one_direction",
                    "seen_direction": s.name,
                    "packets": d.packets,
                    "reverse_packets": 0,
                    "duration_s": r3(f.duration_s),
                    "ack_advances": d.ack_advances,
                    "handshake_completed_elsewhere": d.syn && !d.syn_only,
                    "first_ts_ns": f.first_ts_ns,
                    "last_ts_ns": f.last_ts_ns,
                }),
            });
        }
        let t = &d.ttl;
        if c.min_ttl_delta > 0 && t.changes > 0 && t.max - t.min >= c.min_ttl_delta {
            out.push(Finding {
                rule: "asymmetric_path".into(),
                severity: Severity::Info,
                flow: FindingFlow::of(f),
                summary: format!(
                    "The TTL of {} -> {} changed mid-flow from {} to {} ({}, range {}-{}): the route from {} changed.",
                    s.from,
                    s.to,
                    t.first,
                    t.last,
                    plural(u64::from(t.changes), "change", "changes"),
                    t.min,
                    t.max,
                    s.from,
                ),
                evidence: json!({
                    "kind": "ttl_change",
                    "direction": s.name,
                    "ttl_first": t.first,
                    "ttl_last": t.last,
                    "ttl_min": t.min,
                    "ttl_max": t.max,
                    "ttl_changes": t.changes,
                    "first_change_ns": t.first_change_ns,
                    "packets": d.packets,
                }),
            });
        }
    }
}
