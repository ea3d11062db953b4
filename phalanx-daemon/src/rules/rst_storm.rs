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

/// The reset TCP connections of each service (responder address and
/// port), kept to a bounded window behind each service's newest reset.
#[derive(Debug, Default)]
pub(super) struct Resets {
    by_service: BTreeMap<(IpAddr, u16), Service>,
}

/// One service's resets: those in the window behind its newest, and the
/// densest window already passed.
#[derive(Debug, Default)]
struct Service {
    recent: Vec<Reset>,
    best: Vec<Reset>,
    /// Every reset noted, in or out of the kept windows.
    newest_ns: u64,
}

/// Resets kept per service before the ones outside the window behind the
/// newest are dropped (the densest window so far is kept aside).
const KEPT_PER_SERVICE: usize = 4096;
/// Services kept; resets of further services are not noted.
const SERVICES: usize = 65_536;

pub(super) fn note(c: &RstStormConfig, f: &FlowSummary, across: &mut super::Across) {
    if f.proto != Proto::TCP {
        return;
    }
    let t = match (f.src_to_dst.rst_ns, f.dst_to_src.rst_ns) {
        (Some(a), Some(b)) => (a.min(b), b <= a),
        (None, Some(b)) => (b, true),
        (Some(a), None) => (a, false),
        (None, None) => return,
    };
    let resets = &mut across.resets.by_service;
    if resets.len() >= SERVICES && !resets.contains_key(&(f.dst, f.dport)) {
        return;
    }
    let s = resets.entry((f.dst, f.dport)).or_default();
    s.recent.push((t.0, t.1, f.src));
    s.newest_ns = s.newest_ns.max(t.0);
    if s.recent.len() >= KEPT_PER_SERVICE {
        s.prune(window_ns(c));
    }
}

impl Service {
    /// Keeps the densest window seen aside and drops resets older than
    /// the window behind the newest: no later window can hold them.
    fn prune(&mut self, window_ns: u64) {
        self.recent.sort_by_key(|x| x.0);
        let w = densest(&self.recent, window_ns);
        if w.len() > self.best.len() {
            self.best = w.to_vec();
        }
        let from = self.newest_ns.saturating_sub(window_ns);
        self.recent.retain(|x| x.0 >= from);
    }

    /// The densest window of all the resets noted, and the newest reset.
    fn densest(mut self, window_ns: u64) -> (Vec<Reset>, u64) {
        self.recent.sort_by_key(|x| x.0);
        let w = densest(&self.recent, window_ns);
        let w = if w.len() > self.best.len() {
            w.to_vec()
        } else {
            self.best
        };
        (w, self.newest_ns)
    }
}

fn window_ns(c: &RstStormConfig) -> u64 {
    (c.window_secs * 1e9) as u64
}

pub(super) fn check(c: &RstStormConfig, across: &mut super::Across, out: &mut Vec<Finding>) {
    let window_ns = window_ns(c);
    for ((dst, dport), s) in std::mem::take(&mut across.resets.by_service) {
        let (w, newest) = s.densest(window_ns);
        if w.len() < c.min_resets {
            continue;
        }
        let mut found = finding(c, dst, dport, &w);
        // New resets of the service, in its densest window or not.
        found.activity_ns = Some(newest);
        out.push(found);
    }
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
