//! Rule settings (`[rules.*]` in phalanx.toml).
//!
//! Every built-in rule has a table with `enabled` and its thresholds,
//! declared and validated beside the rule (its file in `rules/`, through
//! [`RuleSettings`](super::RuleSettings)) and re-exported here; `[[rules.custom]]` entries add
//! rules written in the condition language of [`super::expr`]. Defaults
//! are documented in `config/phalanx.toml`.

use serde::Deserialize;
use toml::Spanned;

use super::Severity;

pub use super::asymmetric::AsymmetricConfig;
pub use super::congestion::CongestionConfig;
pub use super::latency::LatencySplitConfig;
pub use super::pmtud::PmtudConfig;
pub use super::rst_storm::RstStormConfig;
pub use super::slow_receiver::SlowReceiverConfig;
pub use super::stall::StallConfig;
pub use super::storm::RetransStormConfig;
pub use super::syn_unanswered::SynUnansweredConfig;
pub use super::zero_window::ZeroWindowConfig;

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
    /// `[rules.slow_receiver]`.
    pub slow_receiver: SlowReceiverConfig,
    /// `[rules.retransmission_storm]`.
    pub retransmission_storm: RetransStormConfig,
    /// `[rules.retransmission_stall]`.
    pub retransmission_stall: StallConfig,
    /// `[rules.rst_storm]`.
    pub rst_storm: RstStormConfig,
    /// `[rules.latency_split]`.
    pub latency_split: LatencySplitConfig,
    /// `[[rules.custom]]`.
    pub custom: Vec<CustomRuleConfig>,
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
