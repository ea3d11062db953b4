//! `rst_storm` (cross-flow): many connections of one service (responder
//! address and port) reset within a short window: a crashing or
//! overloaded server, a closed port under load, or a middlebox tearing
//! connections down.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_pos, RuleSettings};
use super::{endpoint, r3, secs, Finding, FindingFlow, RuleError, Severity};
use crate::flow::key::Proto;
use crate::flow::FlowSummary;

/// One reset connection: time of its first RST, whether the server sent
/// it, the client's address.
type Reset = (u64, bool, IpAddr);

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "rst_storm";

/// `rst_storm`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RstStormConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Reset flows of one service (responder address and port) ...
    pub min_resets: usize,
    /// ... within this many seconds.
    pub window_secs: f64,
}

impl Default for RstStormConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_resets: 10,
            window_secs: 10.0,
        }
    }
}

impl RuleSettings for RstStormConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(self.min_resets >= 2, "min_resets", "must be at least 2")?;
        Self::require(
            finite_pos(self.window_secs),
            "window_secs",
            "must be a number > 0",
        )
    }
}

pub(super) fn check(c: &RstStormConfig, flows: &[FlowSummary], out: &mut Vec<Finding>) {
    let window_ns = (c.window_secs * 1e9) as u64;
    for ((dst, dport), mut v) in resets_by_service(flows) {
        if v.len() < c.min_resets {
            continue;
        }
        v.sort_by_key(|x| x.0);
        let w = densest(&v, window_ns);
        if w.len() < c.min_resets {
            continue;
        }
        let mut found = finding(c, dst, dport, w);
        // New resets of the service, in its densest window or not.
        found.activity_ns = v.last().map(|x| x.0);
        out.push(found);
    }
}

/// The reset TCP connections of each service (responder address and port).
fn resets_by_service(flows: &[FlowSummary]) -> BTreeMap<(IpAddr, u16), Vec<Reset>> {
    let mut by_service: BTreeMap<(IpAddr, u16), Vec<Reset>> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.proto == Proto::TCP) {
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
    by_service
}

/// The densest window of resets sorted by time: the most within
/// `window_ns` of each other (the earliest such run).
fn densest(v: &[Reset], window_ns: u64) -> &[Reset] {
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
    &v[best_at..best_at + best]
}

/// The finding for a service's densest window `w` (not empty).
fn finding(c: &RstStormConfig, dst: IpAddr, dport: u16, w: &[Reset]) -> Finding {
    let best = w.len();
    let (first, last) = (w[0].0, w[best - 1].0);
    let by_server = w.iter().filter(|x| x.1).count();
    let mut clients: Vec<IpAddr> = w.iter().map(|x| x.2).collect();
    clients.sort();
    clients.dedup();
    Finding {
        activity_ns: None,
        rule: NAME.into(),
        severity: Severity::Warning,
        flow: FindingFlow {
            src: None,
            dst,
            sport: None,
            dport,
            proto: Proto::TCP,
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
    }
}
