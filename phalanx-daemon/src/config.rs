//! Daemon configuration: defaults, then the TOML file, then the command line.
//!
//! Unknown keys and bad values are errors that name the key and its line
//! (serde's `deny_unknown_fields` + toml's spans); everything is validated
//! before the kernel is touched or a socket is bound.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
    str::FromStr,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::rules::RuleError;

/// The documented default configuration, committed as `config/phalanx.toml`.
pub const DOCUMENTED_DEFAULTS: &str = include_str!("../../config/phalanx.toml");

/// Errors reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed or a key/value is invalid (message names key and line).
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// File path (or `<string>`).
        path: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A cross-field rule was violated.
    #[error("invalid config: {0}")]
    Semantic(String),
}

/// Whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[capture]`: where and what to capture.
    pub capture: CaptureConfig,
    /// `[http]`: metrics and API server.
    pub http: HttpConfig,
    /// `[flows]`: flow table bounds.
    pub flows: crate::flow::FlowConfig,
    /// `[rules.*]`: diagnosis rules and their thresholds.
    pub rules: crate::rules::RulesConfig,
}

/// How the kernel programs attach.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// tcx (TC BPF links) on ingress and egress: sees GSO packets, costs little.
    #[default]
    Tcx,
    /// XDP on ingress (for physical NICs) plus tcx on egress.
    Xdp,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Xdp => "xdp",
        })
    }
}

/// `[capture]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Interfaces to attach to (`--iface` replaces this list).
    pub interfaces: Vec<String>,
    /// `tcx` or `xdp`.
    pub mode: AttachMode,
    /// Ring buffer size: a power of two, at least 4096 bytes.
    pub ring_buffer_bytes: RingBytes,
    /// Scope filters; none means every TCP packet.
    pub filters: Vec<FilterRule>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: AttachMode::Tcx,
            ring_buffer_bytes: RingBytes(8 << 20),
            filters: Vec::new(),
        }
    }
}

/// Ring-buffer size, validated while parsing so errors carry the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBytes(pub u32);

impl<'de> Deserialize<'de> for RingBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v < 4096 || !v.is_power_of_two() || v > (1 << 30) {
            return Err(serde::de::Error::custom(format!(
                "ring_buffer_bytes must be a power of two between 4096 and 1073741824, got {v}"
            )));
        }
        Ok(RingBytes(v as u32))
    }
}

/// Transport protocol a filter applies to.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FilterProto {
    /// TCP only.
    #[default]
    Tcp,
    /// UDP only.
    Udp,
    /// TCP and UDP.
    Any,
}

impl FilterProto {
    /// IP protocol numbers this filter covers.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            FilterProto::Tcp => &[6],
            FilterProto::Udp => &[17],
            FilterProto::Any => &[6, 17],
        }
    }
}

/// One `[[capture.filters]]` entry: either an exact flow, or a CIDR and/or port.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterRule {
    /// `tcp` (default), `udp` or `any`.
    pub proto: FilterProto,
    /// Either endpoint inside this network.
    pub cidr: Option<IpNet>,
    /// Either endpoint on this port.
    pub port: Option<u16>,
    /// Exact flow `"10.0.0.1:40000 -> 10.0.0.2:80"` (both directions).
    pub flow: Option<FlowSpec>,
}

/// An exact flow, written `"SRC:PORT -> DST:PORT"` (IPv6 as `[addr]:port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    /// One endpoint.
    pub a: SocketAddr,
    /// The other endpoint.
    pub b: SocketAddr,
}

impl FromStr for FlowSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once("->")
            .ok_or_else(|| format!("flow {s:?}: expected \"ADDR:PORT -> ADDR:PORT\""))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("flow {s:?}: {:?} is not ADDR:PORT ({e})", x.trim()))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a.is_ipv4() != b.is_ipv4() {
            return Err(format!("flow {s:?}: mixes IPv4 and IPv6"));
        }
        Ok(FlowSpec { a, b })
    }
}

impl fmt::Display for FlowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.a, self.b)
    }
}

impl<'de> Deserialize<'de> for FlowSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[http]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the metrics/API server.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 9740),
        }
    }
}

impl Config {
    /// Parses a configuration from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if let Err(e) = crate::rules::RuleEngine::new(&cfg.rules) {
            let line = match &e {
                RuleError::Expr { span, .. } if span.end > 0 => Some(line_of(text, span.start)),
                RuleError::Threshold { rule, key, .. } => threshold_line(text, rule, key),
                _ => None,
            };
            let message = match line {
                Some(l) => format!("{e} (line {l})"),
                None => e.to_string(),
            };
            return Err(ConfigError::Invalid {
                path: origin.to_string(),
                message,
            });
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks rules that span several keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, f) in self.capture.filters.iter().enumerate() {
            let n = i + 1;
            if f.flow.is_some() && (f.cidr.is_some() || f.port.is_some()) {
                return Err(ConfigError::Semantic(format!(
                    "capture.filters[{n}]: `flow` cannot be combined with `cidr` or `port`"
                )));
            }
            if f.flow.is_none() && f.cidr.is_none() && f.port.is_none() {
                return Err(ConfigError::Semantic(format!(
                    "capture.filters[{n}]: needs `flow`, `cidr` or `port`"
                )));
            }
            if f.flow.is_some() && f.proto == FilterProto::Any {
                return Err(ConfigError::Semantic(format!(
                    "capture.filters[{n}]: an exact `flow` needs proto \"tcp\" or \"udp\""
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.capture.interfaces {
            if i.is_empty() || i.len() >= 16 {
                return Err(ConfigError::Semantic(format!(
                    "capture.interfaces: {i:?} is not a valid interface name (1 to 15 bytes)"
                )));
            }
            if !seen.insert(i) {
                return Err(ConfigError::Semantic(format!(
                    "capture.interfaces: {i:?} is listed twice"
                )));
            }
        }
        crate::rules::RuleEngine::new(&self.rules)
            .map_err(|e| ConfigError::Semantic(e.to_string()))?;
        Ok(())
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line of `key = ...` inside the `[rules.<rule>]` table, if written so.
fn threshold_line(text: &str, rule: &str, key: &str) -> Option<usize> {
    let header = format!("[rules.{rule}]");
    let mut inside = false;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            inside = t == header;
        } else if inside
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_file_equals_defaults() {
        let documented = Config::from_toml(DOCUMENTED_DEFAULTS, "config/phalanx.toml")
            .expect("config/phalanx.toml must parse");
        assert_eq!(
            documented,
            Config::default(),
            "config/phalanx.toml and Config::default() drifted apart"
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::from_toml("[capture]\nmode = \"tcx\"\nring_bytes = 4096\n", "t.toml")
            .expect_err("unknown key must fail");
        let msg = err.to_string();
        assert!(msg.contains("ring_bytes"), "message names the key: {msg}");
        assert!(msg.contains("line 3"), "message names the line: {msg}");
    }

    #[test]
    fn bad_values_are_rejected_with_line() {
        for (text, needle) in [
            ("[capture]\nring_buffer_bytes = 5000\n", "power of two"),
            ("[capture]\nmode = \"af_packet\"\n", "af_packet"),
            ("[[capture.filters]]\ncidr = \"10.0.0.0/33\"\n", "line 2"),
            (
                "[[capture.filters]]\nflow = \"10.0.0.1:1 -> [::1]:2\"\n",
                "mixes",
            ),
            ("[http]\nlisten = \"localhost\"\n", "line 2"),
        ] {
            let msg = Config::from_toml(text, "t.toml")
                .expect_err(text)
                .to_string();
            assert!(
                msg.contains(needle),
                "{text:?}: expected {needle:?} in {msg}"
            );
        }
    }

    #[test]
    fn semantic_errors_name_the_filter() {
        let msg = Config::from_toml("[[capture.filters]]\nproto = \"udp\"\n", "t.toml")
            .expect_err("empty filter")
            .to_string();
        assert!(msg.contains("capture.filters[1]"), "{msg}");
    }

    #[test]
    fn filters_parse() {
        let cfg = Config::from_toml(
            "[[capture.filters]]\ncidr = \"10.0.0.0/8\"\nport = 443\n\
             [[capture.filters]]\nproto = \"udp\"\nflow = \"[fd00::1]:53 -> [fd00::2]:5353\"\n",
            "t.toml",
        )
        .expect("valid filters");
        assert_eq!(cfg.capture.filters.len(), 2);
        let flow = cfg.capture.filters[1].flow.expect("flow");
        assert_eq!(flow.b.port(), 5353);
    }
}
