//! Diagnosis rules over flow state, producing findings.
//!
//! One [`RuleEngine`] serves `phalanx analyze` (over the final flow set)
//! and the live daemon (periodically over the flow table's snapshot). It is
//! built once from [`RulesConfig`] (custom conditions are compiled then, so
//! a bad expression is a config error) and evaluates flow summaries with
//! no other state: the same flows give the same findings.
//!
//! Built-in rules (thresholds in `[rules.<name>]`, documented with their
//! defaults in `config/phalanx.toml`):
//!
//! | rule | severity | fires when |
//! |---|---|---|
//! | `pmtud_blackhole` | critical | full-size segments re-sent repeatedly, none that large ever acknowledged, smaller ones acknowledged, no ICMP "too big" for the direction |
//! | `pmtud_reduced` | info | an ICMP "fragmentation needed" / "packet too big" quoted the flow (reports the MTU) |
//! | `asymmetric_path` | warning / info | only one direction is seen although it proves the other exists; or a direction's TTL changes mid-flow (info) |
//! | `congestion` | warning | median or smoothed RTT >= factor x min RTT, with loss or ECN CE marks |
//! | `syn_unanswered` | warning | SYNs with no answer at all |
//! | `zero_window` | warning | a receiver advertised a zero window for long enough |
//! | `retransmission_storm` | warning / critical | a direction's retransmitted share of packets over the ratio |
//! | `retransmission_stall` | warning / critical | the same data re-sent repeatedly with no acknowledgment progress (critical while still unacknowledged) |
//! | `rst_storm` | warning | many reset connections of one service within a window (cross-flow) |
//!
//! A `pmtud_blackhole` or `syn_unanswered` finding supersedes
//! `retransmission_stall` and `retransmission_storm` on the same flow: they
//! are its symptoms (re-sent full-size segments, re-sent SYNs).

pub mod config;
pub mod expr;
pub mod fields;

mod asymmetric;
mod congestion;
mod custom;
mod pmtud;
mod rst_storm;
mod stall;
mod storm;
mod syn_unanswered;
mod zero_window;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::flow::{DirReport, FlowSummary};

pub use config::{CustomRuleConfig, RulesConfig};

/// How urgent a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; no action needed.
    Info,
    /// Degraded service.
    Warning,
    /// Broken service.
    Critical,
}

impl Severity {
    /// Lower-case name, as in JSON and alert labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The flow (or, for cross-flow rules, the service) a finding is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FindingFlow {
    /// Initiator address (`null` for a service-wide finding).
    pub src: Option<IpAddr>,
    /// Responder address.
    pub dst: IpAddr,
    /// Initiator port (`null` for a service-wide finding).
    pub sport: Option<u16>,
    /// Responder port.
    pub dport: u16,
    /// Protocol name as in the flow report.
    pub proto: String,
}

impl FindingFlow {
    /// The flow of a summary, in its report orientation.
    pub fn of(f: &FlowSummary) -> Self {
        Self {
            src: Some(f.src),
            dst: f.dst,
            sport: Some(f.sport),
            dport: f.dport,
            proto: f.proto.clone(),
        }
    }
}

/// One diagnosis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// Rule name.
    pub rule: String,
    /// Severity.
    pub severity: Severity,
    /// What it is about.
    pub flow: FindingFlow,
    /// One sentence for the on-call engineer, with the numbers.
    pub summary: String,
    /// The numbers and packet timestamps behind it (a JSON object).
    pub evidence: serde_json::Value,
}

/// A rule configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A custom rule's condition or summary does not compile.
    #[error("rules.custom {rule:?}: {part}, column {column}: {message}")]
    Expr {
        /// Rule name.
        rule: String,
        /// `condition` or `summary`.
        part: &'static str,
        /// 1-based column in that string.
        column: usize,
        /// What is wrong.
        message: String,
        /// Byte span of the string in the config file (empty when built in code).
        span: Range<usize>,
    },
    /// A custom rule is otherwise invalid (name).
    #[error("rules.custom {rule:?}: {message}")]
    Custom {
        /// Rule name.
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// A built-in rule's threshold is out of range.
    #[error("rules.{rule}.{key}: {message}")]
    Threshold {
        /// Rule table.
        rule: &'static str,
        /// Key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Names of the built-in rules (custom rules may not reuse them).
pub const BUILTIN_RULES: &[&str] = &[
    "pmtud_blackhole",
    "pmtud_reduced",
    "asymmetric_path",
    "congestion",
    "syn_unanswered",
    "zero_window",
    "retransmission_storm",
    "retransmission_stall",
    "rst_storm",
];

/// The compiled rule set.
#[derive(Clone, Debug)]
pub struct RuleEngine {
    cfg: RulesConfig,
    custom: Vec<custom::CustomRule>,
}

fn check(ok: bool, rule: &'static str, key: &'static str, message: &str) -> Result<(), RuleError> {
    if ok {
        Ok(())
    } else {
        Err(RuleError::Threshold {
            rule,
            key,
            message: message.to_string(),
        })
    }
}

impl Default for RuleEngine {
    /// The built-in rules with their documented thresholds (known valid,
    /// see the `defaults_are_valid` test), no custom rules.
    fn default() -> Self {
        Self {
            cfg: RulesConfig::default(),
            custom: Vec::new(),
        }
    }
}

impl RuleEngine {
    /// Validates thresholds and compiles custom rules.
    pub fn new(cfg: &RulesConfig) -> Result<Self, RuleError> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        let c = &cfg.pmtud_blackhole;
        check(
            c.min_retransmissions >= 1,
            "pmtud_blackhole",
            "min_retransmissions",
            "must be at least 1",
        )?;
        let c = &cfg.asymmetric_path;
        check(
            c.min_packets >= 1,
            "asymmetric_path",
            "min_packets",
            "must be at least 1",
        )?;
        check(
            finite_nonneg(c.min_duration_secs),
            "asymmetric_path",
            "min_duration_secs",
            "must be a number >= 0",
        )?;
        let c = &cfg.congestion;
        check(
            c.rtt_factor.is_finite() && c.rtt_factor > 1.0,
            "congestion",
            "rtt_factor",
            "must be a number > 1",
        )?;
        check(
            finite_nonneg(c.min_inflation_ms),
            "congestion",
            "min_inflation_ms",
            "must be a number >= 0",
        )?;
        check(
            c.min_rtt_samples >= 2,
            "congestion",
            "min_rtt_samples",
            "must be at least 2",
        )?;
        check(
            c.min_retransmissions >= 1 || c.min_ce_packets >= 1,
            "congestion",
            "min_retransmissions",
            "min_retransmissions and min_ce_packets cannot both be 0 (RTT inflation alone is not congestion)",
        )?;
        let c = &cfg.syn_unanswered;
        check(
            c.min_syns >= 1,
            "syn_unanswered",
            "min_syns",
            "must be at least 1",
        )?;
        check(
            finite_pos(c.timeout_secs),
            "syn_unanswered",
            "timeout_secs",
            "must be a number > 0",
        )?;
        let c = &cfg.zero_window;
        check(
            finite_nonneg(c.min_duration_ms),
            "zero_window",
            "min_duration_ms",
            "must be a number >= 0",
        )?;
        let c = &cfg.retransmission_storm;
        check(
            c.min_packets >= 1,
            "retransmission_storm",
            "min_packets",
            "must be at least 1",
        )?;
        check(
            finite_pos(c.ratio) && c.ratio <= 1.0,
            "retransmission_storm",
            "ratio",
            "must be in (0, 1]",
        )?;
        check(
            c.critical_ratio.is_finite() && c.critical_ratio >= c.ratio,
            "retransmission_storm",
            "critical_ratio",
            "must be a number >= ratio",
        )?;
        let c = &cfg.retransmission_stall;
        check(
            c.min_retransmissions >= 1,
            "retransmission_stall",
            "min_retransmissions",
            "must be at least 1",
        )?;
        let c = &cfg.rst_storm;
        check(
            c.min_resets >= 2,
            "rst_storm",
            "min_resets",
            "must be at least 2",
        )?;
        check(
            finite_pos(c.window_secs),
            "rst_storm",
            "window_secs",
            "must be a number > 0",
        )?;

        let mut custom: Vec<custom::CustomRule> = Vec::with_capacity(cfg.custom.len());
        for rc in &cfg.custom {
            let bad = |message: String| RuleError::Custom {
                rule: rc.name.clone(),
                message,
            };
            let name_ok = !rc.name.is_empty()
                && rc
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return Err(bad(
                    "name must be non-empty letters, digits, `_` or `-`".into()
                ));
            }
            if BUILTIN_RULES.contains(&rc.name.as_str()) {
                return Err(bad("name is taken by a built-in rule".into()));
            }
            if custom.iter().any(|c| c.name == rc.name) {
                return Err(bad("name is used by two custom rules".into()));
            }
            custom.push(custom::CustomRule::compile(rc)?);
        }
        Ok(Self {
            cfg: cfg.clone(),
            custom,
        })
    }

    /// The settings this engine was built from.
    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    /// Evaluates every rule over a flow set. `now_ns` is the current record
    /// time (the flow table's clock; for a capture file, its last packet),
    /// used by rules that wait for an answer (`syn_unanswered`).
    pub fn evaluate(&self, flows: &[FlowSummary], now_ns: u64) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut one = Vec::new();
        for f in flows {
            one.clear();
            self.evaluate_flow(f, now_ns, &mut one);
            out.append(&mut one);
        }
        if self.cfg.rst_storm.enabled {
            rst_storm::check(&self.cfg.rst_storm, flows, &mut out);
        }
        out
    }

    /// Evaluates the per-flow rules for one flow, appending to `out`.
    pub fn evaluate_flow(&self, f: &FlowSummary, now_ns: u64, out: &mut Vec<Finding>) {
        let start = out.len();
        let c = &self.cfg;
        if c.pmtud_blackhole.enabled {
            pmtud::check(&c.pmtud_blackhole, f, out);
        }
        if c.asymmetric_path.enabled {
            asymmetric::check(&c.asymmetric_path, f, out);
        }
        if c.congestion.enabled {
            congestion::check(&c.congestion, f, out);
        }
        if c.syn_unanswered.enabled {
            syn_unanswered::check(&c.syn_unanswered, f, now_ns, out);
        }
        if c.zero_window.enabled {
            zero_window::check(&c.zero_window, f, out);
        }
        if c.retransmission_storm.enabled {
            storm::check(&c.retransmission_storm, f, out);
        }
        if c.retransmission_stall.enabled {
            stall::check(&c.retransmission_stall, f, out);
        }
        if out[start..]
            .iter()
            .any(|x| matches!(x.rule.as_str(), "pmtud_blackhole" | "syn_unanswered"))
        {
            let mut i = start;
            while i < out.len() {
                if matches!(
                    out[i].rule.as_str(),
                    "retransmission_stall" | "retransmission_storm"
                ) {
                    out.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        if !self.custom.is_empty() {
            if let Ok(v) = serde_json::to_value(f) {
                for r in &self.custom {
                    if let Some(x) = r.check(f, &v) {
                        out.push(x);
                    }
                }
            }
        }
    }
}

/// `addr:port` (IPv6 in brackets).
pub(crate) fn endpoint(ip: IpAddr, port: u16) -> String {
    Endpoint(ip, port).to_string()
}

/// An address and port that display as `addr:port` (IPv6 in brackets):
/// formatted only when a finding's text uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint(pub IpAddr, pub u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

/// One direction of a flow: its report, name, sender and receiver.
pub(crate) struct Side<'a> {
    /// `src_to_dst` or `dst_to_src`.
    pub name: &'static str,
    /// The direction's figures.
    pub d: &'a DirReport,
    /// The other direction's figures.
    pub peer: &'a DirReport,
    /// Sender endpoint.
    pub from: Endpoint,
    /// Receiver endpoint.
    pub to: Endpoint,
}

/// Both directions of a flow, `src_to_dst` first.
pub(crate) fn sides(f: &FlowSummary) -> [Side<'_>; 2] {
    let a = Endpoint(f.src, f.sport);
    let b = Endpoint(f.dst, f.dport);
    [
        Side {
            name: "src_to_dst",
            d: &f.src_to_dst,
            peer: &f.dst_to_src,
            from: a,
            to: b,
        },
        Side {
            name: "dst_to_src",
            d: &f.dst_to_src,
            peer: &f.src_to_dst,
            from: b,
            to: a,
        },
    ]
}

/// Seconds between two record times, for summaries.
pub(crate) fn secs(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

/// Milliseconds for a sentence, with the decimals their size needs: a
/// 0.008 ms baseline on a LAN must not read "0.0 ms".
pub(crate) struct Ms(pub f64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        match v.abs() {
            a if a >= 10.0 => write!(f, "{v:.1} ms"),
            a if a >= 1.0 => write!(f, "{v:.2} ms"),
            _ => write!(f, "{v:.3} ms"),
        }
    }
}

/// A ratio for a sentence: one decimal while small, whole above 100.
pub(crate) struct Times(pub f64);

impl fmt::Display for Times {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 100.0 {
            write!(f, "{:.0}", self.0)
        } else {
            write!(f, "{:.1}", self.0)
        }
    }
}

/// A number rounded to 3 decimals (evidence values in ms or s).
pub(crate) fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// "1 time" / "3 times" and the like.
pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}
