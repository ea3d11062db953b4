//! `asymmetric_path`: the two directions of a flow take different paths.
//!
//! Two signs: (1) only one direction crosses the vantage point although it
//! proves the other exists (its ACK number advances over data never seen
//! here, or it completed a handshake whose other half never passed here);
//! a one-way flow without that proof is a silent peer, not a path; (2) a
//! direction's TTL / hop limit changes mid-flow by `min_ttl_delta` hops or
//! more: its route changed, or (when it returns to where it began) its
//! packets alternate between routes of different lengths. A one-hop flap
//! (ECMP paths, anycast nodes) is below the default delta of 2.
//!
//! A direction whose handshake packet (SYN or SYN/ACK) was sent with another
//! initial TTL than the rest of its packets (238 from 255 against 47 from
//! 64) was answered by another device: `handshake_answered_elsewhere`
//! (info) says so instead of calling it a route change.

use serde::Deserialize;
use serde_json::json;

use super::settings::{finite_nonneg, RuleSettings};
use super::{plural, r3, sides, Finding, FindingFlow, RuleError, Severity, Side};
use crate::flow::key::Proto;
use crate::flow::FlowSummary;

/// The rule's name: its `[rules.<name>]` table and its findings' `rule`.
pub(super) const NAME: &str = "asymmetric_path";

/// Findings about a handshake answered by another device than the rest
/// of the connection.
pub(super) const HANDSHAKE: &str = "handshake_answered_elsewhere";

/// `asymmetric_path`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AsymmetricConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// One-way flows: packets the seen direction must have sent.
    pub min_packets: u64,
    /// One-way flows: seconds between the flow's first and last packet.
    pub min_duration_secs: f64,
    /// TTL changes: smallest difference between a direction's largest and
    /// smallest TTL that counts as a path change (0 turns this check off).
    pub min_ttl_delta: u8,
}

impl Default for AsymmetricConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_packets: 10,
            min_duration_secs: 1.0,
            min_ttl_delta: 2,
        }
    }
}

impl RuleSettings for AsymmetricConfig {
    const NAME: &'static str = NAME;

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), RuleError> {
        Self::require(self.min_packets >= 1, "min_packets", "must be at least 1")?;
        Self::require(
            finite_nonneg(self.min_duration_secs),
            "min_duration_secs",
            "must be a number >= 0",
        )
    }
}

pub(super) fn check(c: &AsymmetricConfig, f: &FlowSummary, _now_ns: u64, out: &mut Vec<Finding>) {
    if f.proto != Proto::TCP {
        return;
    }
    for s in sides(f) {
        out.extend(one_way(c, f, &s));
        out.extend(handshake_elsewhere(f, &s).or_else(|| ttl_change(c, f, &s)));
    }
}

/// The initial TTL a packet was most likely sent with: the smallest of the
/// values stacks use (32, 64, 128, 255) that is not below what arrived.
fn initial_ttl(ttl: u8) -> u8 {
    [32, 64, 128].into_iter().find(|&i| ttl <= i).unwrap_or(255)
}

/// The info finding for a direction whose handshake packet came from a
/// device with another initial TTL than the rest of its packets.
fn handshake_elsewhere(f: &FlowSummary, s: &Side<'_>) -> Option<Finding> {
    let t = &s.d.ttl;
    let (hs, rest) = (initial_ttl(t.first), initial_ttl(t.last));
    if !s.d.syn || t.changes != 1 || hs == rest {
        return None;
    }
    let what = if s.name == "src_to_dst" {
        "SYN"
    } else {
        "SYN/ACK"
    };
    Some(Finding {
        activity_ns: None,
        rule: HANDSHAKE.into(),
        severity: Severity::Info,
        flow: FindingFlow::of(f),
        summary: format!(
            "The {what} from {} arrived with TTL {} (sent with {hs}, {} hops away) but its later packets with TTL {} (sent with {rest}, {} hops): another device answered the handshake than the rest of the connection (a SYN proxy, a load balancer or an injecting middlebox).",
            s.from,
            t.first,
            hs - t.first,
            t.last,
            rest - t.last,
        ),
        evidence: json!({
            "kind": "handshake_ttl",
            "direction": s.name,
            "handshake_ttl": t.first,
            "handshake_initial_ttl": hs,
            "ttl": t.last,
            "initial_ttl": rest,
            "first_change_ns": t.first_change_ns,
            "packets": s.d.packets,
        }),
    })
}

/// The warning for a direction seen alone that proves the other exists.
fn one_way(c: &AsymmetricConfig, f: &FlowSummary, s: &Side<'_>) -> Option<Finding> {
    let d = s.d;
    let proof = d.ack_advances >= 1 || (d.syn && !d.syn_only && !d.rst);
    let fires = s.peer.packets == 0
        && d.packets >= c.min_packets
        && f.duration_s >= c.min_duration_secs
        && proof;
    if !fires {
        return None;
    }
    Some(Finding {
        activity_ns: None,
        rule: NAME.into(),
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
    })
}

/// The info finding for a direction whose TTL changed mid-flow.
fn ttl_change(c: &AsymmetricConfig, f: &FlowSummary, s: &Side<'_>) -> Option<Finding> {
    let (d, t) = (s.d, &s.d.ttl);
    let fires = c.min_ttl_delta > 0 && t.changes > 0 && t.max - t.min >= c.min_ttl_delta;
    if !fires {
        return None;
    }
    Some(Finding {
        activity_ns: None,
        rule: NAME.into(),
        severity: Severity::Info,
        flow: FindingFlow::of(f),
        summary: if t.first != t.last {
            format!(
                "The TTL of {} -> {} changed mid-flow from {} to {} ({}, range {}-{}): the route from {} changed.",
                s.from,
                s.to,
                t.first,
                t.last,
                plural(u64::from(t.changes), "change", "changes"),
                t.min,
                t.max,
                s.from,
            )
        } else {
            format!(
                "The TTL of {} -> {} alternated between {} and {} ({}) and ended where it began, at {}: packets from {} take routes of different lengths.",
                s.from,
                s.to,
                t.min,
                t.max,
                plural(u64::from(t.changes), "change", "changes"),
                t.first,
                s.from,
            )
        },
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
    })
}
