//! Daemon configuration: defaults, then the TOML file, then the command line.
//!
//! Unknown keys and bad values are errors that name the key and its line
//! (serde's `deny_unknown_fields` + toml's spans); everything is validated
//! before the kernel is touched or a socket is bound.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use std::ops::RangeInclusive;

use serde::Deserialize;

pub use crate::alerting::config::{
    AlertingConfig, AlertmanagerConfig, IncidentsConfig, WebhookConfig,
};
pub use crate::alerting::exempt::{ExemptionConfig, Exemptions};
pub use crate::capture::config::{AttachMode, CaptureConfig, FilterProto, FilterRule, RingBytes};
pub use crate::flow::history::HistoryConfig;
pub use crate::flow::key::FlowSpec;
use crate::rules::RuleError;
pub use crate::stitch::config::{check_secret_len, SecretError, StitchConfig, MIN_SECRET_BYTES};
pub use crate::url::HttpUrl;

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

impl From<SecretError> for ConfigError {
    fn from(e: SecretError) -> Self {
        ConfigError::Semantic(e.0)
    }
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
    /// `[metrics]`: flow groups of the exported KPIs.
    pub metrics: crate::metrics::groups::MetricsConfig,
    /// `[rules.*]`: diagnosis rules and their thresholds.
    pub rules: crate::rules::RulesConfig,
    /// `[history]`: recent packets kept per flow for evidence and peers.
    pub history: HistoryConfig,
    /// `[incidents]`: lifecycle, evidence, spool and retries.
    pub incidents: IncidentsConfig,
    /// `[alertmanager]`: Alertmanager API v2 receivers.
    pub alertmanager: AlertmanagerConfig,
    /// `[[webhooks]]`: generic webhook receivers.
    pub webhooks: Vec<WebhookConfig>,
    /// `[stitch]`: live multi-hop stitching with peer daemons.
    pub stitch: StitchConfig,
    /// `[[exemptions]]`: findings operators silenced.
    pub exemptions: Vec<ExemptionConfig>,
}

/// `[http]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the metrics/API server.
    pub listen: SocketAddr,
    /// Bearer tokens (`NAME:SCOPE:TOKEN` per line); "" = none: the API is open.
    pub token_file: std::path::PathBuf,
    /// Serve a non-loopback `listen` without a token file.
    pub insecure_open: bool,
    /// Lifetime of a browser session opened with a token, seconds.
    pub session_ttl_secs: u64,
    /// Seconds a connection has to send a request's head (idle ones too).
    pub header_timeout_secs: u64,
    /// Seconds a request has to send its body.
    pub body_timeout_secs: u64,
    /// API connections served at once.
    pub max_connections: usize,
    /// PEM certificate chain to serve HTTPS with; "" = plain HTTP.
    pub tls_cert: std::path::PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: std::path::PathBuf,
    /// PEM CA certificates a client's certificate must chain to (mutual
    /// TLS); "" = no client certificate asked for.
    pub client_ca: std::path::PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 9740),
            token_file: std::path::PathBuf::new(),
            insecure_open: false,
            session_ttl_secs: 43_200,
            header_timeout_secs: 15,
            body_timeout_secs: 15,
            max_connections: 256,
            tls_cert: std::path::PathBuf::new(),
            tls_key: std::path::PathBuf::new(),
            client_ca: std::path::PathBuf::new(),
        }
    }
}

impl HttpConfig {
    /// Whether the server speaks TLS.
    pub fn tls(&self) -> bool {
        !self.tls_cert.as_os_str().is_empty()
    }

    /// Whether clients must present a certificate from `client_ca`.
    pub fn mutual_tls(&self) -> bool {
        !self.client_ca.as_os_str().is_empty()
    }

    /// A non-loopback address serves only with authentication, or when
    /// `insecure_open` says so: anyone who reaches it would read every
    /// flow and incident and make the daemon act.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.tls() == self.tls_key.as_os_str().is_empty() {
            return Err(ConfigError::Semantic(
                "http.tls_cert and http.tls_key go together: set both (HTTPS) or neither".into(),
            ));
        }
        if self.mutual_tls() && !self.tls() {
            return Err(ConfigError::Semantic(
                "http.client_ca asks clients for certificates over TLS: set http.tls_cert and \
                 http.tls_key too"
                    .into(),
            ));
        }
        if !self.listen.ip().is_loopback()
            && self.token_file.as_os_str().is_empty()
            && !self.mutual_tls()
            && !self.insecure_open
        {
            return Err(ConfigError::Semantic(format!(
                "http.listen {} is not a loopback address: set http.token_file \
                 (bearer tokens) or http.client_ca (client certificates), or \
                 http.insecure_open = true to serve it without authentication",
                self.listen
            )));
        }
        Ok(())
    }
}

impl Config {
    /// Parses a configuration from TOML text; `origin` names it in errors.
    /// Deprecated keys are applied and logged as warnings.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let (cfg, warnings) = Self::from_toml_with_warnings(text, origin)?;
        for w in warnings {
            tracing::warn!("{origin}: {w}");
        }
        Ok(cfg)
    }

    /// [`Config::from_toml`], returning the deprecation warnings instead of
    /// logging them.
    pub fn from_toml_with_warnings(
        text: &str,
        origin: &str,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let warnings = cfg.apply_deprecated();
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
        Ok((cfg, warnings))
    }

    /// Moves the values of keys that were renamed to their new place
    /// (they are read for one release) and says what to write instead.
    fn apply_deprecated(&mut self) -> Vec<String> {
        let h = &mut self.history;
        let moves = [
            (
                self.incidents.history_packets.take(),
                "incidents.history_packets",
                "history.evidence_packets",
                &mut h.evidence_packets,
            ),
            (
                self.incidents.history_flows.take(),
                "incidents.history_flows",
                "history.evidence_flows",
                &mut h.evidence_flows,
            ),
            (
                self.stitch.history_packets.take(),
                "stitch.history_packets",
                "history.peer_packets",
                &mut h.peer_packets,
            ),
            (
                self.stitch.history_flows.take(),
                "stitch.history_flows",
                "history.peer_flows",
                &mut h.peer_flows,
            ),
        ];
        let mut warnings = Vec::new();
        for (old, old_key, new_key, slot) in moves {
            if let Some(v) = old {
                *slot = v;
                warnings.push(format!(
                    "{old_key} is deprecated and will be removed in the next release; \
                     write {new_key} = {v} instead"
                ));
            }
        }
        warnings
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
            if f.flow.is_some() && f.proto == FilterProto::Any {
                return Err(ConfigError::Semantic(format!(
                    "capture.filters[{n}]: an exact `flow` needs proto \"tcp\" or \"udp\""
                )));
            }
        }
        self.http.validate()?;
        self.validate_ranges()?;
        self.validate_incidents()?;
        self.metrics.validate().map_err(ConfigError::Semantic)?;
        self.validate_stitch()?;
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
        self.exemptions()?;
        Ok(())
    }

    /// `[[exemptions]]`, checked against the rules and flow groups.
    pub fn exemptions(&self) -> Result<Exemptions, ConfigError> {
        let rules: Vec<String> = crate::rules::BUILTIN_RULES
            .iter()
            .map(|r| r.to_string())
            .chain(self.rules.custom.iter().map(|c| c.name.clone()))
            .collect();
        Exemptions::new(&self.exemptions, &rules, &self.metrics).map_err(ConfigError::Semantic)
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
    key_line(text, &format!("[rules.{rule}]"), key)
}

/// Line (1-based) of `key = ...` inside the table `header` (`[flows]`).
fn key_line(text: &str, header: &str, key: &str) -> Option<usize> {
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

/// `key`'s value `v` within `range`, or an error naming both.
fn in_range(key: &str, v: u64, range: &RangeInclusive<u64>) -> Result<(), ConfigError> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::Semantic(format!(
            "{key} {v} is out of range {}..={}",
            range.start(),
            range.end()
        )))
    }
}

const DAY: u64 = 86_400;

impl Config {
    /// Every numeric setting with its range: wide enough for any real
    /// deployment, narrow enough that no value makes the daemon useless
    /// (a 0 timeout) or eats the host (a billion flows). The ranges are
    /// documented beside each key in `config/phalanx.toml`.
    fn ranges(&self) -> Vec<(&'static str, u64, RangeInclusive<u64>)> {
        let (f, h, i, w) = (&self.flows, &self.history, &self.incidents, &self.http);
        vec![
            ("http.session_ttl_secs", w.session_ttl_secs, 60..=30 * DAY),
            ("http.header_timeout_secs", w.header_timeout_secs, 1..=300),
            ("http.body_timeout_secs", w.body_timeout_secs, 1..=300),
            ("http.max_connections", w.max_connections as u64, 1..=65_535),
            ("flows.max_flows", f.max_flows as u64, 1..=4_194_304),
            ("flows.syn_timeout_secs", f.syn_timeout_secs, 1..=3_600),
            (
                "flows.syn_retry_timeout_secs",
                f.syn_retry_timeout_secs,
                1..=3_600,
            ),
            (
                "flows.established_timeout_secs",
                f.established_timeout_secs,
                1..=7 * DAY,
            ),
            (
                "flows.closed_timeout_secs",
                f.closed_timeout_secs,
                1..=3_600,
            ),
            ("flows.udp_timeout_secs", f.udp_timeout_secs, 1..=DAY),
            (
                "history.evidence_packets",
                h.evidence_packets as u64,
                1..=65_536,
            ),
            (
                "history.evidence_flows",
                h.evidence_flows as u64,
                1..=1_048_576,
            ),
            ("history.peer_packets", h.peer_packets as u64, 1..=1_048_576),
            ("history.peer_flows", h.peer_flows as u64, 1..=65_536),
            (
                "incidents.resolve_after_secs",
                i.resolve_after_secs,
                1..=DAY,
            ),
            ("incidents.update_secs", i.update_secs, 1..=DAY),
            ("incidents.max_open", i.max_open as u64, 1..=100_000),
            (
                "incidents.keep_resolved",
                i.keep_resolved as u64,
                0..=100_000,
            ),
            (
                "incidents.evidence_max_bytes",
                i.evidence_max_bytes,
                1..=1 << 40,
            ),
            (
                "incidents.evidence_max_files",
                i.evidence_max_files as u64,
                1..=1_000_000,
            ),
            (
                "incidents.spool_max_files",
                i.spool_max_files as u64,
                1..=1_000_000,
            ),
            (
                "incidents.retry_initial_ms",
                i.retry_initial_ms,
                1..=3_600_000,
            ),
            ("incidents.retry_max_ms", i.retry_max_ms, 1..=DAY * 1000),
            (
                "incidents.retry_give_up_secs",
                i.retry_give_up_secs,
                1..=30 * DAY,
            ),
            (
                "incidents.request_timeout_ms",
                i.request_timeout_ms,
                1..=600_000,
            ),
            (
                "alertmanager.resend_secs",
                self.alertmanager.resend_secs,
                1..=3_600,
            ),
            ("stitch.timeout_ms", self.stitch.timeout_ms, 1..=600_000),
            ("stitch.refresh_secs", self.stitch.refresh_secs, 1..=DAY),
        ]
    }

    fn validate_ranges(&self) -> Result<(), ConfigError> {
        for (key, v, range) in self.ranges() {
            in_range(key, v, &range)?;
        }
        Ok(())
    }

    fn validate_incidents(&self) -> Result<(), ConfigError> {
        let i = &self.incidents;
        if i.retry_max_ms < i.retry_initial_ms {
            return Err(ConfigError::Semantic(
                "incidents.retry_max_ms must not be below incidents.retry_initial_ms".into(),
            ));
        }
        for (key, dir) in [
            ("incidents.evidence_dir", &i.evidence_dir),
            ("incidents.spool_dir", &i.spool_dir),
        ] {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::Semantic(format!("{key} must not be empty")));
            }
        }
        if i.evidence_dir == i.spool_dir {
            return Err(ConfigError::Semantic(
                "incidents.evidence_dir and incidents.spool_dir must differ".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for r in self.alerting().receivers() {
            if !names.insert(r.name.clone()) {
                return Err(ConfigError::Semantic(format!(
                    "receiver {:?} is configured twice (alertmanager.urls / webhooks[].name)",
                    r.name
                )));
            }
        }
        for (n, w) in self.webhooks.iter().enumerate() {
            if w.name.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::Semantic(format!(
                    "webhooks[{}].name must not be empty",
                    n + 1
                )));
            }
        }
        Ok(())
    }

    fn validate_stitch(&self) -> Result<(), ConfigError> {
        let s = &self.stitch;
        if !s.secret.is_empty() && !s.secret_file.as_os_str().is_empty() {
            return Err(ConfigError::Semantic(
                "stitch.secret and stitch.secret_file are both set; use one".into(),
            ));
        }
        if !s.secret.is_empty() {
            check_secret_len("stitch.secret", s.secret.len())?;
        }
        if !s.peers.is_empty() && !s.has_secret() {
            return Err(ConfigError::Semantic(
                "stitch.peers is set but stitch.secret (or stitch.secret_file) is not: \
                 peer requests must be authenticated"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &s.peers {
            if !seen.insert(p.0.as_str()) {
                return Err(ConfigError::Semantic(format!(
                    "stitch.peers: {p} is listed twice"
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The sections the incident task starts from.
    pub fn alerting(&self) -> AlertingConfig<'_> {
        AlertingConfig {
            incidents: &self.incidents,
            alertmanager: &self.alertmanager,
            webhooks: &self.webhooks,
            listen: self.http.listen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each config text must be refused with an error that names `needle`.
    fn assert_rejected(cases: &[(&str, &str)]) {
        for (text, needle) in cases {
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
    fn a_non_loopback_api_needs_authentication_or_says_it_is_open() {
        assert_rejected(&[
            (
                "[http]\nlisten = \"0.0.0.0:9740\"\n",
                "http.listen 0.0.0.0:9740 is not a loopback address: set http.token_file",
            ),
            (
                "[http]\nlisten = \"[::]:9740\"\n",
                "is not a loopback address",
            ),
            (
                "[http]\nsession_ttl_secs = 10\n",
                "http.session_ttl_secs 10 is out of range 60..=2592000",
            ),
            (
                "[http]\ntls_cert = \"c.pem\"\n",
                "http.tls_cert and http.tls_key go together",
            ),
            (
                "[http]\nclient_ca = \"ca.pem\"\n",
                "http.client_ca asks clients for certificates over TLS",
            ),
        ]);
        for ok in [
            "[http]\nlisten = \"[::1]:9740\"\n",
            "[http]\nlisten = \"0.0.0.0:9740\"\ntls_cert = \"c\"\ntls_key = \"k\"\nclient_ca = \"ca\"\n",
            "[http]\nlisten = \"0.0.0.0:9740\"\ntoken_file = \"/etc/phalanx/tokens\"\n",
            "[http]\nlisten = \"0.0.0.0:9740\"\ninsecure_open = true\n",
        ] {
            Config::from_toml(ok, "t.toml").expect(ok);
        }
    }

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
    fn renamed_history_keys_still_apply_with_a_warning() {
        let text = "[incidents]\nhistory_packets = 32\nhistory_flows = 100\n\
                    [stitch]\nhistory_packets = 9000\nhistory_flows = 7\n";
        let (cfg, warnings) = Config::from_toml_with_warnings(text, "t.toml").expect("parses");
        assert_eq!(
            cfg.history,
            HistoryConfig {
                evidence_packets: 32,
                evidence_flows: 100,
                peer_packets: 9000,
                peer_flows: 7,
            }
        );
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(
            warnings[0].contains("incidents.history_packets")
                && warnings[0].contains("history.evidence_packets = 32"),
            "{warnings:?}"
        );
        assert!(
            warnings[3].contains("history.peer_flows = 7"),
            "{warnings:?}"
        );
        assert_eq!(
            (cfg.incidents.history_packets, cfg.stitch.history_flows),
            (None, None),
            "nothing reads the old keys after loading"
        );
        let (_, none) = Config::from_toml_with_warnings("[history]\npeer_flows = 7\n", "t.toml")
            .expect("parses");
        assert!(none.is_empty());
        let zero = Config::from_toml("[history]\nevidence_packets = 0\n", "t.toml")
            .expect_err("zero history")
            .to_string();
        assert!(
            zero.contains("history.evidence_packets 0 is out of range 1..=65536"),
            "{zero}"
        );
    }

    #[test]
    fn numbers_outside_their_range_are_errors_naming_key_and_range() {
        assert_rejected(&[
            (
                "[flows]\nmax_flows = 0\n",
                "flows.max_flows 0 is out of range 1..=4194304",
            ),
            (
                "[flows]\nmax_flows = 1000000000000\n",
                "flows.max_flows 1000000000000 is out of range",
            ),
            (
                "[flows]\nudp_timeout_secs = 18446744073709551615\n",
                "flows.udp_timeout_secs 18446744073709551615 is out of range 1..=86400",
            ),
            (
                "[flows]\nclosed_timeout_secs = 0\n",
                "flows.closed_timeout_secs 0",
            ),
            (
                "[history]\nevidence_packets = 1000000000\n",
                "history.evidence_packets 1000000000 is out of range 1..=65536",
            ),
            (
                "[history]\npeer_flows = 1000000000\n",
                "history.peer_flows 1000000000 is out of range",
            ),
            (
                "[incidents]\nresolve_after_secs = 0\n",
                "incidents.resolve_after_secs 0",
            ),
            (
                "[stitch]\ntimeout_ms = 0\n",
                "stitch.timeout_ms 0 is out of range",
            ),
            (
                "[http]\nmax_connections = 0\n",
                "http.max_connections 0 is out of range",
            ),
        ]);
        // Every default sits inside its range, and every range is
        // documented beside its key.
        let d = Config::default();
        for (key, v, range) in d.ranges() {
            assert!(range.contains(&v), "default {key} = {v} outside {range:?}");
            let (section, leaf) = key.split_once('.').expect("section.key");
            let at = key_line(DOCUMENTED_DEFAULTS, &format!("[{section}]"), leaf)
                .expect("documented key");
            let lines: Vec<&str> = DOCUMENTED_DEFAULTS.lines().collect();
            let comments = lines[..at - 1]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with('#'))
                .any(|l| l.contains(&format!("Range: {} to {}.", range.start(), range.end())));
            assert!(
                comments,
                "config/phalanx.toml documents {key}'s range above it"
            );
        }
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
        assert_rejected(&[
            ("[capture]\nring_buffer_bytes = 5000\n", "power of two"),
            ("[capture]\nmode = \"af_packet\"\n", "af_packet"),
            ("[[capture.filters]]\ncidr = \"10.0.0.0/33\"\n", "line 2"),
            (
                "[[capture.filters]]\nflow = \"10.0.0.1:1 -> [::1]:2\"\n",
                "mixes",
            ),
            ("[http]\nlisten = \"localhost\"\n", "line 2"),
            (
                "[alertmanager]\nurls = [\"http://127.0.0.1:9093\", \"127.0.0.1:9093\"]\n",
                "line 2",
            ),
            ("[alertmanager]\nurls = [\"ftp://x/\"]\n", "only http"),
            (
                "[incidents]\nhost = \"a\"\nexternal_url = \"nope\"\n",
                "external_url",
            ),
            (
                "[[webhooks]]\nurl = \"http://127.0.0.1:1/\"\n[[webhooks]]\nurl = \"x\"\n",
                "line 4",
            ),
            ("[[webhooks]]\nsecret = \"s\"\n", "url"),
            (
                "[[webhooks]]\nurl = \"http://h/\"\nsecrets = \"s\"\n",
                "line 3",
            ),
        ]);
    }

    #[test]
    fn semantic_errors_name_the_filter() {
        let msg = Config::from_toml(
            "[[capture.filters]]\nproto = \"udp\"\n\n[[capture.filters]]\nproto = \"any\"\nflow = \"10.0.0.1:1 -> 10.0.0.2:2\"\n",
            "t.toml",
        )
        .expect_err("flow with proto any")
        .to_string();
        assert!(msg.contains("capture.filters[2]"), "{msg}");
    }

    #[test]
    fn url_errors_name_key_and_line() {
        let msg = Config::from_toml(
            "[http]\nlisten = \"127.0.0.1:9740\"\n\n[alertmanager]\nurls = [\"http//am:9093\"]\n",
            "t.toml",
        )
        .expect_err("bad URL")
        .to_string();
        assert!(msg.contains("line 5"), "line: {msg}");
        assert!(msg.contains("urls"), "key: {msg}");
        assert!(msg.contains("http//am:9093"), "value: {msg}");
    }

    #[test]
    fn receivers_and_semantic_checks() {
        let cfg = Config::from_toml(
            "[alertmanager]\nurls = [\"http://127.0.0.1:9093/\"]\n\
             [[webhooks]]\nurl = \"https://hooks.example/x\"\nname = \"oncall\"\nsecret = \"k\"\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:8080/hook\"\n",
            "t.toml",
        )
        .expect("valid receivers");
        let r = cfg.alerting().receivers();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].url.as_str(), "http://127.0.0.1:9093/api/v2/alerts");
        assert_eq!(r[1].name, "oncall");
        assert_eq!(r[2].name, "http://127.0.0.1:8080/hook");
        assert_rejected(&[
            (
                "[[webhooks]]\nurl = \"http://a/\"\n[[webhooks]]\nurl = \"http://a/\"\n",
                "twice",
            ),
            (
                "[incidents]\nretry_initial_ms = 10\nretry_max_ms = 5\n",
                "retry_max_ms",
            ),
            (
                "[incidents]\nevidence_max_files = 0\n",
                "incidents.evidence_max_files",
            ),
            (
                "[incidents]\nspool_dir = \"/x\"\nevidence_dir = \"/x\"\n",
                "must differ",
            ),
        ]);
    }

    #[test]
    fn stitch_section_is_validated() {
        let ok = Config::from_toml(
            "[stitch]\npeers = [\"http://10.0.2.2:9740\"]\nsecret = \"0123456789abcdef\"\nhop = \"a\"\n",
            "t.toml",
        )
        .expect("valid stitch section");
        assert_eq!(ok.stitch.peers.len(), 1);
        assert_eq!(
            ok.stitch.load_secret().expect("secret"),
            Some(b"0123456789abcdef".to_vec())
        );
        assert_rejected(&[
            (
                "[stitch]\npeers = [\"http://10.0.2.2:9740\"]\n",
                "stitch.secret",
            ),
            ("[stitch]\npeers = [\"10.0.2.2:9740\"]\n", "line 2"),
            ("[stitch]\nsecret = \"short\"\n", "at least 16 bytes"),
            (
                "[stitch]\nsecret = \"0123456789abcdef\"\nsecret_file = \"/k\"\n",
                "both set",
            ),
            (
                "[stitch]\nsecret = \"0123456789abcdef\"\npeers = [\"http://a/\", \"http://a/\"]\n",
                "twice",
            ),
            ("[stitch]\ntimeout_ms = 0\n", "stitch.timeout_ms"),
            ("[stitch]\npeer = []\n", "line 2"),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "fedcba9876543210fedcba\n").expect("key file");
        let cfg = Config::from_toml(
            &format!("[stitch]\npeers = [\"http://h:9740\"]\nsecret_file = {key:?}\n"),
            "t.toml",
        )
        .expect("secret_file accepted");
        assert_eq!(
            cfg.stitch.load_secret().expect("readable"),
            Some(b"fedcba9876543210fedcba".to_vec()),
            "trailing newline dropped"
        );
        std::fs::write(&key, "short\n").expect("key file");
        let msg = cfg.stitch.load_secret().expect_err("short key").to_string();
        assert!(msg.contains("stitch.secret_file"), "{msg}");
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
        assert!(cfg.capture.filters.iter().all(|f| !f.is_whole_protocol()));
    }

    #[test]
    fn a_protocol_alone_scopes_all_of_it() {
        let cfg = Config::from_toml("[[capture.filters]]\nproto = \"udp\"\n", "t.toml")
            .expect("a protocol alone is a valid filter");
        let f = &cfg.capture.filters[0];
        assert!(f.is_whole_protocol());
        assert_eq!(f.proto.numbers(), &[17]);
    }
}
