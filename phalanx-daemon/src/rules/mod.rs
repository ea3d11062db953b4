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
//! | `pmtud_blackhole` | critical | full-size segments re-sent repeatedly, none that large ever acknowledged, smaller ones acknowledged, no ICMP "too big" for the direction, and the capture not taken at their receiver (which they reached) |
//! | `pmtud_reduced` | info | an ICMP "fragmentation needed" / "packet too big" quoted the flow (reports the MTU) |
//! | `asymmetric_path` | warning / info | only one direction is seen although it proves the other exists; or a direction's TTL changes mid-flow by 2 hops or more (info) |
//! | `handshake_answered_elsewhere` | info | a direction's SYN or SYN/ACK was sent with another initial TTL than its later packets: another device (SYN proxy, load balancer, middlebox) answered the handshake (settings of `asymmetric_path`) |
//! | `congestion` | warning | median or smoothed RTT >= factor x min RTT, with loss or ECN CE marks |
//! | `syn_unanswered` | warning | SYNs with no answer at all |
//! | `zero_window` | warning | a receiver advertised a zero window for long enough |
//! | `slow_receiver` | warning | a sender kept filling the receiver's window and each acknowledgment took several times the path's round trip (supersedes `congestion`: the inflation is the receiver's) |
//! | `retransmission_storm` | warning / critical | a direction's retransmitted share of packets over the ratio |
//! | `retransmission_stall` | warning / critical | the same data re-sent repeatedly with no acknowledgment progress (critical while still unacknowledged) |
//! | `rst_storm` | warning | many reset connections of one service within a window (cross-flow) |
//! | `latency_split` | info | a TCP exchange took long and the path, the server or the client took most of it (the flow's `latency`) |
//!
//! A `pmtud_blackhole` or `syn_unanswered` finding supersedes
//! `retransmission_stall` and `retransmission_storm` on the same flow: they
//! are its symptoms (re-sent full-size segments, re-sent SYNs).
//!
//! Each built-in rule is one file: its name (`NAME`), its settings
//! (implementing [`RuleSettings`]: defaults and threshold checks) and its
//! check. The `REGISTRY` table below lists each rule once, with where its
//! settings sit in [`RulesConfig`], its check and what it supersedes;
//! validation, evaluation, superseding and [`BUILTIN_RULES`] all follow
//! from it. A new rule is its file and `mod` line, a row in `REGISTRY`,
//! its field of [`RulesConfig`] (and a `pub use` of its settings there),
//! and its line in the table above and defaults in `config/phalanx.toml`
//! (tests check both are there).

pub mod config;
pub mod expr;
pub mod fields;
pub mod settings;

mod asymmetric;
mod congestion;
mod custom;
mod latency;
mod pmtud;
mod rst_storm;
mod slow_receiver;
mod stall;
mod storm;
mod syn_unanswered;
mod zero_window;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::flow::key::Proto;
use crate::flow::{DirReport, FlowSummary};

pub use config::{CustomRuleConfig, RulesConfig};
pub use settings::RuleSettings;

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
    pub proto: Proto,
}

impl FindingFlow {
    /// The flow of a summary, in its report orientation.
    pub fn of(f: &FlowSummary) -> Self {
        Self {
            src: Some(f.src),
            dst: f.dst,
            sport: Some(f.sport),
            dport: f.dport,
            proto: f.proto,
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
    /// The record time of the latest packet behind it: a finding re-read
    /// with no newer one brings no new evidence. Set by the engine for a
    /// finding about one flow (its latest packet), by the rule otherwise.
    #[serde(skip)]
    pub activity_ns: Option<u64>,
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

/// How a built-in rule looks at flows.
enum Check<C> {
    /// One flow at a time, with the evaluation's record time (`now_ns`).
    PerFlow(fn(&C, &FlowSummary, u64, &mut Vec<Finding>)),
    /// Across flows: each flow is noted in the evaluation's [`Across`],
    /// which is checked once after every flow's own findings.
    AcrossFlows {
        note: fn(&C, &FlowSummary, &mut Across),
        check: fn(&C, &mut Across, &mut Vec<Finding>),
    },
}

/// What the cross-flow rules keep of an evaluation's flows: bounded by
/// their windows, not by the number of flows.
#[derive(Debug, Default)]
pub struct Across {
    resets: rst_storm::Resets,
}

/// A built-in rule with the type of its settings.
struct Rule<C> {
    /// Its table in [`RulesConfig`].
    config: fn(&RulesConfig) -> &C,
    /// Its check.
    check: Check<C>,
}

/// A [`Rule`] with the settings type erased, so one table holds them all.
trait AnyRule {
    /// The rule's `[rules.<table>]` (its [`RuleSettings::NAME`]), which
    /// the `registry_rows_match_their_settings` test holds to its row.
    #[cfg(test)]
    fn table(&self) -> &'static str;
    /// Validates the rule's settings in `cfg`.
    fn validate(&self, cfg: &RulesConfig) -> Result<(), RuleError>;
    /// Appends the findings of a per-flow rule, if enabled, for `f`.
    fn per_flow(&self, cfg: &RulesConfig, f: &FlowSummary, now_ns: u64, out: &mut Vec<Finding>);
    /// Notes `f` for a cross-flow rule, if enabled.
    fn note(&self, cfg: &RulesConfig, f: &FlowSummary, across: &mut Across);
    /// Appends the findings of a cross-flow rule, if enabled.
    fn across_flows(&self, cfg: &RulesConfig, across: &mut Across, out: &mut Vec<Finding>);
}

impl<C: RuleSettings> AnyRule for Rule<C> {
    #[cfg(test)]
    fn table(&self) -> &'static str {
        C::NAME
    }

    fn validate(&self, cfg: &RulesConfig) -> Result<(), RuleError> {
        (self.config)(cfg).validate()
    }

    fn per_flow(&self, cfg: &RulesConfig, f: &FlowSummary, now_ns: u64, out: &mut Vec<Finding>) {
        if let Check::PerFlow(check) = self.check {
            let c = (self.config)(cfg);
            if c.enabled() {
                check(c, f, now_ns, out);
            }
        }
    }

    fn note(&self, cfg: &RulesConfig, f: &FlowSummary, across: &mut Across) {
        if let Check::AcrossFlows { note, .. } = self.check {
            let c = (self.config)(cfg);
            if c.enabled() {
                note(c, f, across);
            }
        }
    }

    fn across_flows(&self, cfg: &RulesConfig, across: &mut Across, out: &mut Vec<Finding>) {
        if let Check::AcrossFlows { check, .. } = self.check {
            let c = (self.config)(cfg);
            if c.enabled() {
                check(c, across, out);
            }
        }
    }
}

/// One built-in rule in [`REGISTRY`].
struct Registered {
    /// Its name: its `[rules.<name>]` table and its findings' `rule`.
    name: &'static str,
    /// Other names its findings carry (reserved like `name`).
    also: &'static [&'static str],
    /// Its settings and check.
    rule: &'static dyn AnyRule,
    /// Rules whose findings on the same flow a `name` finding removes:
    /// they are its symptoms.
    supersedes: &'static [&'static str],
}

/// Every built-in rule, in the order they are validated, evaluated and
/// their findings listed.
const REGISTRY: &[Registered] = &[
    Registered {
        name: pmtud::NAME,
        also: &[pmtud::REDUCED],
        rule: &Rule {
            config: |r| &r.pmtud_blackhole,
            check: Check::PerFlow(pmtud::check),
        },
        // Full-size segments re-sent into the hole.
        supersedes: &[stall::NAME, storm::NAME],
    },
    Registered {
        name: asymmetric::NAME,
        also: &[asymmetric::HANDSHAKE],
        rule: &Rule {
            config: |r| &r.asymmetric_path,
            check: Check::PerFlow(asymmetric::check),
        },
        supersedes: &[],
    },
    Registered {
        name: congestion::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.congestion,
            check: Check::PerFlow(congestion::check),
        },
        supersedes: &[],
    },
    Registered {
        name: syn_unanswered::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.syn_unanswered,
            check: Check::PerFlow(syn_unanswered::check),
        },
        // Re-sent SYNs.
        supersedes: &[stall::NAME, storm::NAME],
    },
    Registered {
        name: zero_window::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.zero_window,
            check: Check::PerFlow(zero_window::check),
        },
        supersedes: &[],
    },
    Registered {
        name: slow_receiver::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.slow_receiver,
            check: Check::PerFlow(slow_receiver::check),
        },
        // The RTT inflation is the receiver's answer time, not a queue.
        supersedes: &[congestion::NAME],
    },
    Registered {
        name: storm::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.retransmission_storm,
            check: Check::PerFlow(storm::check),
        },
        supersedes: &[],
    },
    Registered {
        name: stall::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.retransmission_stall,
            check: Check::PerFlow(stall::check),
        },
        supersedes: &[],
    },
    Registered {
        name: latency::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.latency_split,
            check: Check::PerFlow(latency::check),
        },
        supersedes: &[],
    },
    Registered {
        name: rst_storm::NAME,
        also: &[],
        rule: &Rule {
            config: |r| &r.rst_storm,
            check: Check::AcrossFlows {
                note: rst_storm::note,
                check: rst_storm::check,
            },
        },
        supersedes: &[],
    },
];

/// Where a rule's findings stand when several describe one fault: the
/// built-in rules in [`REGISTRY`] order (diagnoses before the symptoms
/// they explain: `congestion` before `retransmission_storm`), then custom
/// rules. An incident is named after the first (see
/// `crate::alerting::incident`).
pub fn precedence(rule: &str) -> usize {
    REGISTRY
        .iter()
        .position(|r| r.name == rule || r.also.contains(&rule))
        .unwrap_or(REGISTRY.len())
}

/// Names of the built-in rules (custom rules may not reuse them).
pub const BUILTIN_RULES: &[&str] = &builtin_names::<{ count_builtin_names() }>();

/// How many names [`REGISTRY`] reserves.
const fn count_builtin_names() -> usize {
    let (mut n, mut i) = (0, 0);
    while i < REGISTRY.len() {
        n += 1 + REGISTRY[i].also.len();
        i += 1;
    }
    n
}

/// The names [`REGISTRY`] reserves, each rule's `name` before its `also`.
const fn builtin_names<const N: usize>() -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut k) = (0, 0);
    while i < REGISTRY.len() {
        let r = &REGISTRY[i];
        out[k] = r.name;
        k += 1;
        let mut j = 0;
        while j < r.also.len() {
            out[k] = r.also[j];
            k += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Removes from one flow's findings, `out[start..]`, those that another of
/// them supersedes (see [`Registered::supersedes`]).
fn supersede(out: &mut Vec<Finding>, start: usize) {
    // One finding supersedes nothing, and most flows have none.
    if out.len() < start + 2 {
        return;
    }
    for r in REGISTRY.iter().filter(|r| !r.supersedes.is_empty()) {
        if !out[start..].iter().any(|x| x.rule == r.name) {
            continue;
        }
        let mut i = start;
        while i < out.len() {
            if r.supersedes.contains(&out[i].rule.as_str()) {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// The compiled rule set.
#[derive(Clone, Debug)]
pub struct RuleEngine {
    cfg: RulesConfig,
    custom: Vec<custom::CustomRule>,
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
        for r in REGISTRY {
            r.rule.validate(cfg)?;
        }
        Ok(Self {
            cfg: cfg.clone(),
            custom: custom::compile_all(&cfg.custom)?,
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
        let mut e = self.begin(now_ns);
        for f in flows {
            e.flow(f);
        }
        e.finish()
    }

    /// An evaluation fed one flow at a time ([`Evaluation::flow`]), so no
    /// caller holds every flow at once: what [`Self::evaluate`] does.
    pub fn begin(&self, now_ns: u64) -> Evaluation<'_> {
        Evaluation {
            engine: self,
            now_ns,
            out: Vec::new(),
            across: Across::default(),
        }
    }

    /// Evaluates the per-flow rules for one flow, appending to `out`.
    pub fn evaluate_flow(&self, f: &FlowSummary, now_ns: u64, out: &mut Vec<Finding>) {
        let start = out.len();
        for r in REGISTRY {
            r.rule.per_flow(&self.cfg, f, now_ns, out);
        }
        supersede(out, start);
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

/// One evaluation of the rules, fed a flow at a time.
pub struct Evaluation<'e> {
    engine: &'e RuleEngine,
    now_ns: u64,
    out: Vec<Finding>,
    across: Across,
}

impl Evaluation<'_> {
    /// Moves the record time on: a streaming caller evaluates each flow
    /// as it leaves the table, at the time it left.
    pub fn advance(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
    }

    /// Evaluates the per-flow rules on `f` and notes it for the
    /// cross-flow ones.
    pub fn flow(&mut self, f: &FlowSummary) {
        let start = self.out.len();
        self.engine.evaluate_flow(f, self.now_ns, &mut self.out);
        for finding in &mut self.out[start..] {
            finding.activity_ns = Some(f.last_ts_ns);
        }
        for r in REGISTRY {
            r.rule.note(&self.engine.cfg, f, &mut self.across);
        }
    }

    /// The findings so far, taken out (a streaming caller writes them
    /// beside the flows they are about); the cross-flow ones come at
    /// [`Self::finish`].
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.out)
    }

    /// Every finding not yet taken: the cross-flow rules' last.
    pub fn finish(mut self) -> Vec<Finding> {
        for r in REGISTRY {
            r.rule
                .across_flows(&self.engine.cfg, &mut self.across, &mut self.out);
        }
        self.out
    }
}

/// `addr:port` (IPv6 in brackets).
pub(crate) fn endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// An address and port, displayed as `addr:port` (IPv6 in brackets) only
/// when a finding's text uses it.
pub(crate) type Endpoint = SocketAddr;

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
    let a = SocketAddr::new(f.src, f.sport);
    let b = SocketAddr::new(f.dst, f.dport);
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
