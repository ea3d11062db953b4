//! Rule settings (`[rules.*]` in phalanx.toml).
//!
//! Every built-in rule has a table with `enabled` and its thresholds;
//! `[[rules.custom]]` entries add rules written in the condition language
//! of [`super::expr`]. Defaults are documented in `config/phalanx.toml`.

use serde::Deserialize;
use toml::Spanned;

use super::Severity;

/// All rule settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// `[rules.pmtud_blackhole]`.
    pub pmtud_blackhole: PmtudConfig,
    /// `[rules.asymmetric_path]`.
    pub asymmetric_path: AsymmetricConfig,
    /// `[rules.congestion]`.
    pub congestion: CongestionConfig,
    /// `[rules.syn_unanswered]`.
    pub syn_unanswered: SynUnansweredConfig,
    /// `[rules.zero_window]`.
    pub zero_window: ZeroWindowConfig,
    /// `[rules.retransmission_storm]`.
    pub retransmission_storm: RetransStormConfig,
    /// `[rules.retransmission_stall]`.
    pub retransmission_stall: StallConfig,
    /// `[rules.rst_storm]`.
    pub rst_storm: RstStormConfig,
    /// `[[rules.custom]]`.
    pub custom: Vec<CustomRuleConfig>,
}

/// `pmtud_blackhole` (and its info companion `pmtud_reduced`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PmtudConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Retransmissions of full-size segments, none of that size ever
    /// acknowledged, before the rule fires.
    pub min_retransmissions: u32,
    /// Segments smaller than this (payload bytes) are not "full size":
    /// they fit nearly every path.
    pub min_segment_bytes: u32,
    /// Report an ICMP "fragmentation needed" / "packet too big" that
    /// lowered a flow's path MTU, as `pmtud_reduced` (info).
    pub report_reduced: bool,
}

impl Default for PmtudConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_retransmissions: 3,
            min_segment_bytes: 1200,
            report_reduced: true,
        }
    }
}

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
            min_ttl_delta: 1,
        }
    }
}

/// `congestion`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CongestionConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// The median or smoothed recent RTT must reach this multiple of the
    /// flow's own minimum RTT.
    pub rtt_factor: f64,
    /// ... and exceed the minimum by at least this many milliseconds.
    pub min_inflation_ms: f64,
    /// RTT samples needed before the baseline is trusted.
    pub min_rtt_samples: u64,
    /// Loss evidence: retransmissions (spurious and path-MTU resends not
    /// counted) ...
    pub min_retransmissions: u32,
    /// ... or packets marked ECN Congestion Experienced.
    pub min_ce_packets: u32,
}

impl Default for CongestionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rtt_factor: 2.0,
            min_inflation_ms: 5.0,
            min_rtt_samples: 10,
            min_retransmissions: 2,
            min_ce_packets: 1,
        }
    }
}

/// `syn_unanswered`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynUnansweredConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// SYNs sent (first plus retries) with no answer ...
    pub min_syns: u64,
    /// ... or seconds waited since the first SYN.
    pub timeout_secs: f64,
}

impl Default for SynUnansweredConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_syns: 2,
            timeout_secs: 3.0,
        }
    }
}

/// `zero_window`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ZeroWindowConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Total time a receiver advertised a zero window, ms.
    pub min_duration_ms: f64,
}

impl Default for ZeroWindowConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_duration_ms: 500.0,
        }
    }
}

/// `retransmission_storm`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetransStormConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Packets a direction must have sent before its ratio counts.
    pub min_packets: u64,
    /// Retransmitted share of a direction's packets (warning).
    pub ratio: f64,
    /// Share at which the finding is critical.
    pub critical_ratio: f64,
}

impl Default for RetransStormConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_packets: 20,
            ratio: 0.1,
            critical_ratio: 0.3,
        }
    }
}

/// `retransmission_stall`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StallConfig {
    /// Evaluate the rule.
    pub enabled: bool,
    /// Retransmissions of the same data with no acknowledgment progress.
    pub min_retransmissions: u32,
}

impl Default for StallConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_retransmissions: 3,
        }
    }
}

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

/// One `[[rules.custom]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomRuleConfig {
    /// Rule name, reported as the finding's `rule`.
    pub name: String,
    /// Condition over the flow report's fields.
    pub condition: Spanned<String>,
    /// `info`, `warning` (default) or `critical`.
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// One sentence with `{field}` placeholders.
    pub summary: Spanned<String>,
}

fn default_severity() -> Severity {
    Severity::Warning
}

impl CustomRuleConfig {
    /// A custom rule built in code (spans empty).
    pub fn new(name: &str, condition: &str, severity: Severity, summary: &str) -> Self {
        Self {
            name: name.to_string(),
            condition: Spanned::new(0..0, condition.to_string()),
            severity,
            summary: Spanned::new(0..0, summary.to_string()),
        }
    }
}
