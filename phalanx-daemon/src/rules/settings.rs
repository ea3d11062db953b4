//! What every built-in rule's settings table provides: its name, whether
//! it is on, and the check of its thresholds.

use super::RuleError;

/// The settings of one built-in rule: its `[rules.<NAME>]` table.
pub trait RuleSettings {
    /// The table's name under `[rules]`, which is also the rule's name.
    const NAME: &'static str;

    /// Whether the rule is evaluated.
    fn enabled(&self) -> bool;

    /// The first threshold out of range, checked in a fixed order so the
    /// same bad table always reports the same key.
    fn validate(&self) -> Result<(), RuleError>;

    /// For [`RuleSettings::validate`]: `Ok` if `ok`, else the error for
    /// `key` of this table.
    fn require(ok: bool, key: &'static str, message: &str) -> Result<(), RuleError> {
        if ok {
            Ok(())
        } else {
            Err(RuleError::Threshold {
                rule: Self::NAME,
                key,
                message: message.to_string(),
            })
        }
    }
}

/// A finite number > 0 (a threshold that must not be NaN or infinite).
pub(super) fn finite_pos(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// A finite number >= 0.
pub(super) fn finite_nonneg(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}
