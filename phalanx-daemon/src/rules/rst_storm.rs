//! `rst_storm` (cross-flow): many connections of one service (responder
//! address and port) reset within a short window: a crashing or
//! overloaded server, a closed port under load, or a middlebox tearing
//! connections down.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::config::RstStormConfig;
use super::{endpoint, r3, secs, Finding, FindingFlow, Severity};
use crate::flow::FlowSummary;

/// One reset connection: time of its first RST, whether the server sent
/// it, the client's address.
type Reset = (u64, bool, IpAddr);

pub(super) fn check(c: &RstStormConfig, flows: &[FlowSummary], out: &mut Vec<Finding>) {
    let mut by_service: BTreeMap<(IpAddr, u16), Vec<Reset>> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.proto == "tcp") {
        let t = match (f.src_to_dst.rst_ns, f.dst_to_src.rst_ns) {
            (Some(a), Some(b)) => (a.min(b), b <= a),
            (None, Some(b)) => (b, true),
            (Some(a), None) => (a, false),
            (None, None) => continue,
        };
        by_service
            .entry((f.dst, f.dport))
            .or_default()
            .push((t.0, t.1, f.src));
    }
    let window_ns = (c.window_secs * 1e9) as u64;
    for ((dst, dport), mut v) in by_service {
        if v.len() < c.min_resets {
            continue;
        }
        v.sort_by_key(|x| x.0);
        // Densest window: the most resets within window_secs of each other.
        let (mut best, mut best_at, mut j) = (0usize, 0usize, 0usize);
        for i in 0..v.len() {
            while v[i].0.saturating_sub(v[j].0) > window_ns {
                j += 1;
            }
            if i + 1 - j > best {
                best = i + 1 - j;
                best_at = j;
            }
        }
        if best < c.min_resets {
            continue;
        }
        let w = &v[best_at..best_at + best];
        let (first, last) = (w[0].0, w[best - 1].0);
        let by_server = w.iter().filter(|x| x.1).count();
        let mut clients: Vec<IpAddr> = w.iter().map(|x| x.2).collect();
        clients.sort();
        clients.dedup();
        out.push(Finding {
            rule: "rst_storm".into(),
            severity: Severity::Warning,
            flow: FindingFlow {
                src: None,
                dst,
                sport: None,
                dport,
                proto: "tcp".into(),
            },
            summary: format!(
                "{} connections to {} were reset within {:.1} s ({} by the server, {} by clients, {} client addresses).",
                best,
                endpoint(dst, dport),
                secs(first, last),
                by_server,
                best - by_server,
                clients.len(),
            ),
            evidence: json!({
                "resets": best,
                "reset_by_server": by_server,
                "reset_by_client": best - by_server,
                "client_addresses": clients.len(),
                "first_rst_ns": first,
                "last_rst_ns": last,
                "span_s": r3(secs(first, last)),
                "window_s": c.window_secs,
            }),
        });
    }
}
