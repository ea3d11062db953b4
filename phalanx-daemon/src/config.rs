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

pub use crate::flow::key::FlowSpec;
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
    /// `[metrics]`: flow groups of the exported KPIs.
    pub metrics: crate::export::groups::MetricsConfig,
    /// `[rules.*]`: diagnosis rules and their thresholds.
    pub rules: crate::rules::RulesConfig,
    /// `[incidents]`: lifecycle, evidence, spool and retries.
    pub incidents: IncidentsConfig,
    /// `[alertmanager]`: Alertmanager API v2 receivers.
    pub alertmanager: AlertmanagerConfig,
    /// `[[webhooks]]`: generic webhook receivers.
    pub webhooks: Vec<WebhookConfig>,
    /// `[stitch]`: live multi-hop stitching with peer daemons.
    pub stitch: StitchConfig,
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

impl FilterRule {
    /// Whether the rule names a protocol alone: every packet of it is in scope.
    pub fn is_whole_protocol(&self) -> bool {
        self.flow.is_none() && self.cidr.is_none() && self.port.is_none()
    }
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

/// One `[[capture.filters]]` entry: an exact flow, a CIDR and/or port, or
/// (with none of those) every packet of `proto`.
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

/// An `http://` or `https://` URL with a host, validated while parsing so
/// errors carry the key and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(pub reqwest::Url);

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let u = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!(
                "{s:?}: only http:// and https:// URLs are supported"
            ));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(format!("{s:?}: the URL has no host"));
        }
        Ok(HttpUrl(u))
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An optional [`HttpUrl`] where `""` means "not set".
fn de_opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.is_empty() {
        s.parse::<HttpUrl>().map_err(serde::de::Error::custom)?;
    }
    Ok(s)
}

/// `[incidents]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Seconds without an observation after which an incident resolves.
    pub resolve_after_secs: u64,
    /// Most incidents firing at once.
    pub max_open: usize,
    /// Resolved incidents kept for the API.
    pub keep_resolved: usize,
    /// `host` label; empty: the system host name.
    pub host: String,
    /// Base URL of this daemon's API in links; empty: `http://<http.listen>`.
    #[serde(deserialize_with = "de_opt_url")]
    pub external_url: String,
    /// Records kept per flow for evidence.
    pub history_packets: usize,
    /// Flows whose recent records are kept.
    pub history_flows: usize,
    /// Directory of evidence pcapng files.
    pub evidence_dir: std::path::PathBuf,
    /// Total bytes of evidence kept.
    pub evidence_max_bytes: u64,
    /// Evidence files kept.
    pub evidence_max_files: usize,
    /// Directory of pending deliveries.
    pub spool_dir: std::path::PathBuf,
    /// Most pending deliveries on disk.
    pub spool_max_files: usize,
    /// First retry wait ceiling, milliseconds.
    pub retry_initial_ms: u64,
    /// Largest retry wait ceiling, milliseconds.
    pub retry_max_ms: u64,
    /// Seconds after which an undelivered delivery is given up.
    pub retry_give_up_secs: u64,
    /// Timeout of one HTTP request, milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        Self {
            resolve_after_secs: 300,
            max_open: 1000,
            keep_resolved: 200,
            host: String::new(),
            external_url: String::new(),
            history_packets: 64,
            history_flows: 4096,
            evidence_dir: "/var/lib/phalanx/evidence".into(),
            evidence_max_bytes: 256 << 20,
            evidence_max_files: 1000,
            spool_dir: "/var/lib/phalanx/spool".into(),
            spool_max_files: 10_000,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            retry_give_up_secs: 86_400,
            request_timeout_ms: 10_000,
        }
    }
}

/// `[alertmanager]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertmanagerConfig {
    /// Base URLs of Alertmanager instances (each one gets every alert).
    pub urls: Vec<HttpUrl>,
    /// Seconds between re-sends of firing alerts.
    pub resend_secs: u64,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            resend_secs: 60,
        }
    }
}

/// One `[[webhooks]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// URL the payload is POSTed to.
    pub url: HttpUrl,
    /// Receiver name (metric label, payload `receiver`); default: the URL.
    #[serde(default)]
    pub name: Option<String>,
    /// Key of the `X-Phalanx-Signature` HMAC-SHA256 header.
    #[serde(default)]
    pub secret: Option<String>,
}

/// `[stitch]` section: peer daemons on other hops of the paths, and what
/// this daemon keeps so that peers can ask it about a flow.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StitchConfig {
    /// Base URLs of the peer daemons' APIs (`http://host:9740`).
    pub peers: Vec<HttpUrl>,
    /// Shared HMAC-SHA256 key of the peer requests; "" = not set.
    pub secret: String,
    /// File holding the shared key (trailing newline ignored); "" = not set.
    pub secret_file: std::path::PathBuf,
    /// This daemon's hop name in stitch reports; "" = the system host name.
    pub hop: String,
    /// Timeout of one request to a peer, milliseconds.
    pub timeout_ms: u64,
    /// Firing incidents are stitched again this often (seconds).
    pub refresh_secs: u64,
    /// Packets kept per flow for peers (the most recent ones).
    pub history_packets: usize,
    /// Flows whose recent packets are kept for peers.
    pub history_flows: usize,
}

impl Default for StitchConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            secret: String::new(),
            secret_file: std::path::PathBuf::new(),
            hop: String::new(),
            timeout_ms: 3000,
            refresh_secs: 30,
            history_packets: 4096,
            history_flows: 256,
        }
    }
}

impl StitchConfig {
    /// Whether a key is configured (the peer endpoint answers and a history is kept).
    pub fn has_secret(&self) -> bool {
        !self.secret.is_empty() || !self.secret_file.as_os_str().is_empty()
    }

    /// The shared key: `secret`, or the contents of `secret_file`.
    pub fn load_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if !self.secret.is_empty() {
            return Ok(Some(self.secret.as_bytes().to_vec()));
        }
        if self.secret_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let text = std::fs::read(&self.secret_file).map_err(|e| {
            ConfigError::Semantic(format!(
                "stitch.secret_file: cannot read {}: {e}",
                self.secret_file.display()
            ))
        })?;
        let key = text.trim_ascii_end().to_vec();
        check_secret_len("stitch.secret_file", key.len())?;
        Ok(Some(key))
    }
}

/// Shortest shared key accepted: HMAC keys shorter than this are guessable.
pub const MIN_SECRET_BYTES: usize = 16;

fn check_secret_len(key: &str, len: usize) -> Result<(), ConfigError> {
    if len < MIN_SECRET_BYTES {
        return Err(ConfigError::Semantic(format!(
            "{key}: the shared key must be at least {MIN_SECRET_BYTES} bytes, got {len}"
        )));
    }
    Ok(())
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
            if f.flow.is_some() && f.proto == FilterProto::Any {
                return Err(ConfigError::Semantic(format!(
                    "capture.filters[{n}]: an exact `flow` needs proto \"tcp\" or \"udp\""
                )));
            }
        }
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

impl Config {
    fn validate_incidents(&self) -> Result<(), ConfigError> {
        let i = &self.incidents;
        let positive = [
            ("incidents.resolve_after_secs", i.resolve_after_secs),
            ("incidents.max_open", i.max_open as u64),
            ("incidents.history_packets", i.history_packets as u64),
            ("incidents.history_flows", i.history_flows as u64),
            ("incidents.evidence_max_bytes", i.evidence_max_bytes),
            ("incidents.evidence_max_files", i.evidence_max_files as u64),
            ("incidents.spool_max_files", i.spool_max_files as u64),
            ("incidents.retry_initial_ms", i.retry_initial_ms),
            ("incidents.request_timeout_ms", i.request_timeout_ms),
            ("alertmanager.resend_secs", self.alertmanager.resend_secs),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::Semantic(format!("{key} must be at least 1")));
            }
        }
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
        for r in self.receivers() {
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
        for (key, v) in [
            ("stitch.timeout_ms", s.timeout_ms),
            ("stitch.refresh_secs", s.refresh_secs),
            ("stitch.history_packets", s.history_packets as u64),
            ("stitch.history_flows", s.history_flows as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::Semantic(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }

    /// Delivery targets: every Alertmanager, then every webhook.
    pub fn receivers(&self) -> Vec<crate::export::delivery::Receiver> {
        use crate::export::delivery::{Receiver, ReceiverKind};
        let am = self.alertmanager.urls.iter().map(|u| Receiver {
            name: u.0.to_string(),
            url: crate::export::alertmanager::alerts_endpoint(&u.0),
            kind: ReceiverKind::Alertmanager,
        });
        let hooks = self.webhooks.iter().map(|w| Receiver {
            name: w.name.clone().unwrap_or_else(|| w.url.0.to_string()),
            url: w.url.0.clone(),
            kind: ReceiverKind::Webhook {
                secret: w.secret.clone(),
            },
        });
        am.chain(hooks).collect()
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
        let r = cfg.receivers();
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
