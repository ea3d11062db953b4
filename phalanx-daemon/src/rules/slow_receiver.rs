//! `slow_receiver`: a sender keeps filling its peer's receive window and
//! each acknowledgment takes far longer than the path's round trip: the
//! receiver (a busy host, a printer, an embedded device) sets the pace,
//! and the RTT inflation that goes with it is not a queue on the path.

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_nonneg, RuleSettings};
use super::{r3, sides, Finding, FindingFlow, Ms, RuleError, Severity};
use crate::flow::key::Proto;
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "slow_receiver";

/// `slow_receiver`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SlowReceiverConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Segments after which less than one segment of the receiver's window
    /// was left (`window_limited`) ...
    pub min_window_limited: u32,
    /// ... and that many per acknowledgment that moved forward.
    pub min_limited_share: f64,
    /// The median wait for an acknowledgment must reach this multiple of
    /// the path's round trip (the direction's minimum) ...
    pub wait_factor: f64,
    /// ... and exceed it by at least this many milliseconds.
    pub min_wait_ms: f64,
}

impl Default for SlowReceiverConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_window_limited: 10,
            min_limited_share: 0.5,
            wait_factor: 4.0,
            min_wait_ms: 5.0,
        }
    }
}

impl RuleSettings for SlowReceiverConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(
            self.min_window_limited >= 1,
            "min_window_limited",
            "must be at least 1",
        )?;
        Self::require(
            self.min_limited_share.is_finite() && (0.0..=1.0).contains(&self.min_limited_share),
            "min_limited_share",
            "must be a number from 0 to 1",
        )?;
        Self::require(
            self.wait_factor.is_finite() && self.wait_factor > 1.0,
            "wait_factor",
            "must be a number > 1",
        )?;
        Self::require(
            finite_nonneg(self.min_wait_ms),
            "min_wait_ms",
            "must be a number >= 0",
        )
    }
}

pub(super) fn check(c: &SlowReceiverConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    if f.proto != Proto::TCP {
        return;
    }
    for s in sides(f) {
        let (d, peer) = (s.d, s.peer);
        let acks = peer.ack_advances.max(1);
        let share = f64::from(d.window_limited) / f64::from(acks);
        if d.window_limited < c.min_window_limited || share < c.min_limited_share {
            continue;
        }
        // The direction's RTT part: the vantage point -> receiver -> vantage
        // point, its minimum the path, its median the usual wait.
        let (Some(path), Some(wait)) = (d.rtt.min_ms, d.rtt.p50_ms) else {
            continue;
        };
        if wait < c.wait_factor * path || wait - path < c.min_wait_ms {
            continue;
        }
        out.push(Finding {
            activity_ns: None,
            rule: NAME.into(),
            severity: Severity::Warning,
            flow: FindingFlow::of(f),
            summary: format!(
                "{} is a slow receiver: {} filled its receive window {} times in {} acknowledgments and waited {} (median) for each on a path whose round trip is {}: the receiver, not the network, sets the pace.",
                s.to,
                s.from,
                d.window_limited,
                peer.ack_advances,
                Ms(wait),
                Ms(path),
            ),
            evidence: json!({
                "direction": s.name,
                "window_limited": d.window_limited,
                "window_full": d.window_full,
                "acknowledgments": peer.ack_advances,
                "ack_wait_p50_ms": wait,
                "path_rtt_ms": path,
                "wait_factor": r3(wait / path.max(0.001)),
                "zero_windows": peer.zero_windows,
                "retransmissions": d.retransmissions,
                "latency": f.latency,
                "first_ts_ns": f.first_ts_ns,
                "last_ts_ns": f.last_ts_ns,
            }),
        });
    }
}
