//! `latency_split`: a TCP exchange is slow and one party takes most of its
//! time: the path (both sides' round trips), the server (its answer
//! time) or the client (its pause before the first request). Answers "is
//! it the network?" per flow from the flow's `latency` figures.

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_nonneg, RuleSettings};
use super::{endpoint, r3, Finding, FindingFlow, Ms, RuleError, Severity};
use crate::flow::key::Proto;
use crate::flow::{FlowSummary, LatencyReport};

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "latency_split";

/// `latency_split`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LatencySplitConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// A typical exchange (path round trip + server answer + client pause
    /// + waits for resends) must take at least this long, ms ...
    pub min_total_ms: f64,
    /// ... and one of path, server and client this share of it.
    pub min_share: f64,
}

impl Default for LatencySplitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_total_ms: 500.0,
            min_share: 0.6,
        }
    }
}

impl RuleSettings for LatencySplitConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(
            finite_nonneg(self.min_total_ms),
            "min_total_ms",
            "must be a number >= 0",
        )?;
        Self::require(
            self.min_share.is_finite() && self.min_share > 0.0 && self.min_share <= 1.0,
            "min_share",
            "must be a number > 0 and <= 1",
        )
    }
}

/// Who took the time: the path, the server or the client.
#[derive(Clone, Copy)]
enum Party {
    Network,
    Server,
    Client,
}

impl Party {
    /// Evidence name.
    fn name(self) -> &'static str {
        match self {
            Party::Network => "network",
            Party::Server => "server",
            Party::Client => "client",
        }
    }

    /// Its share of the exchange, ms.
    fn ms(self, l: &LatencyReport) -> f64 {
        match self {
            Party::Network => {
                l.client_network_ms.unwrap_or(0.0) + l.server_network_ms.unwrap_or(0.0)
            }
            Party::Server => l.server_response_ms.unwrap_or(0.0),
            Party::Client => l.client_think_ms.unwrap_or(0.0),
        }
    }

    /// What it did, and what that means, for the sentence (written only
    /// for a finding: the rule looks at every flow at every evaluation).
    fn sentence(self, l: &LatencyReport) -> (String, &'static str) {
        match self {
            Party::Network => (
                format!(
                    "the network round trip took {} (client side {}, server side {})",
                    Ms(self.ms(l)),
                    Ms(l.client_network_ms.unwrap_or(0.0)),
                    Ms(l.server_network_ms.unwrap_or(0.0))
                ),
                "the path, not the server or the client",
            ),
            Party::Server => (
                format!("the server took {} to answer", Ms(self.ms(l))),
                "a slow server, not the network",
            ),
            Party::Client => (
                format!(
                    "the client paused {} before its first request",
                    Ms(self.ms(l))
                ),
                "a slow client, not the network",
            ),
        }
    }
}

pub(super) fn check(c: &LatencySplitConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    let Some(l) = f.latency.filter(|_| f.proto == Proto::TCP) else {
        return;
    };
    // Nothing was exchanged: no split to make.
    if l.server_response_ms.is_none() && l.client_think_ms.is_none() {
        return;
    }
    let parties = [Party::Network, Party::Server, Party::Client];
    let total = parties.iter().map(|p| p.ms(&l)).sum::<f64>() + l.retransmission_delay_ms;
    if total < c.min_total_ms || total <= 0.0 {
        return;
    }
    let Some(top) = parties
        .into_iter()
        .max_by(|a, b| a.ms(&l).total_cmp(&b.ms(&l)))
    else {
        return;
    };
    let share = top.ms(&l) / total;
    if share < c.min_share {
        return;
    }
    let (what, verdict) = top.sentence(&l);
    out.push(Finding {
        activity_ns: None,
        rule: NAME.into(),
        severity: Severity::Info,
        flow: FindingFlow::of(f),
        summary: format!(
            "Between {} and {}, {}: {:.0}% of a {} exchange, {}.",
            endpoint(f.src, f.sport),
            endpoint(f.dst, f.dport),
            what,
            share * 100.0,
            Ms(total),
            verdict,
        ),
        evidence: json!({
            "dominant": top.name(),
            "share": r3(share),
            "total_ms": r3(total),
            "client_network_ms": l.client_network_ms,
            "server_network_ms": l.server_network_ms,
            "server_response_ms": l.server_response_ms,
            "client_think_ms": l.client_think_ms,
            "retransmission_delay_ms": l.retransmission_delay_ms,
            "first_ts_ns": f.first_ts_ns,
            "last_ts_ns": f.last_ts_ns,
        }),
    });
}
