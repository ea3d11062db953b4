//! `[incidents]`, `[alertmanager]` and `[[webhooks]]`: the incident
//! lifecycle, its evidence and spool, and where incidents are delivered.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use super::delivery::{Receiver, ReceiverKind};
use crate::anonymize::{AnonymizeError, Anonymizer};
use crate::url::HttpUrl;

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
    /// Least seconds between two notifications of a firing incident whose
    /// figures (sentences, affected flows and clients) changed.
    pub update_secs: u64,
    /// Most incidents firing at once.
    pub max_open: usize,
    /// Resolved incidents kept for the API.
    pub keep_resolved: usize,
    /// `host` label; empty: the system host name.
    pub host: String,
    /// Base URL of this daemon's API in links; empty: `http://<http.listen>`.
    #[serde(deserialize_with = "de_opt_url")]
    pub external_url: String,
    /// Deprecated: `history.evidence_packets` (read for one release).
    pub history_packets: Option<usize>,
    /// Deprecated: `history.evidence_flows` (read for one release).
    pub history_flows: Option<usize>,
    /// Directory of evidence pcapng files.
    pub evidence_dir: std::path::PathBuf,
    /// Total bytes of evidence kept.
    pub evidence_max_bytes: u64,
    /// Evidence files kept.
    pub evidence_max_files: usize,
    /// Key file that anonymises the addresses of evidence files
    /// ([`crate::anonymize`]); empty: not anonymised.
    pub anonymize_key: std::path::PathBuf,
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
            update_secs: 60,
            max_open: 1000,
            keep_resolved: 200,
            host: String::new(),
            external_url: String::new(),
            history_packets: None,
            history_flows: None,
            evidence_dir: "/var/lib/phalanx/evidence".into(),
            evidence_max_bytes: 256 << 20,
            evidence_max_files: 1000,
            anonymize_key: std::path::PathBuf::new(),
            spool_dir: "/var/lib/phalanx/spool".into(),
            spool_max_files: 10_000,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            retry_give_up_secs: 86_400,
            request_timeout_ms: 10_000,
        }
    }
}

impl IncidentsConfig {
    /// The anonymiser of `anonymize_key`, read now; `None` when it is not set.
    pub fn anonymizer(&self) -> Result<Option<Anonymizer>, AnonymizeError> {
        if self.anonymize_key.as_os_str().is_empty() {
            return Ok(None);
        }
        Anonymizer::from_key_file(&self.anonymize_key).map(Some)
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

/// The sections the incident task starts from, and the API address its
/// links point to when `incidents.external_url` is not set.
#[derive(Clone, Copy, Debug)]
pub struct AlertingConfig<'a> {
    /// `[incidents]`.
    pub incidents: &'a IncidentsConfig,
    /// `[alertmanager]`.
    pub alertmanager: &'a AlertmanagerConfig,
    /// `[[webhooks]]`.
    pub webhooks: &'a [WebhookConfig],
    /// `[http] listen`.
    pub listen: SocketAddr,
}

impl AlertingConfig<'_> {
    /// Delivery targets: every Alertmanager, then every webhook.
    pub fn receivers(&self) -> Vec<Receiver> {
        let am = self.alertmanager.urls.iter().map(|u| Receiver {
            name: u.0.to_string(),
            url: super::alertmanager::alerts_endpoint(&u.0),
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

    /// Base URL of this daemon's API in links: `incidents.external_url`,
    /// else `http://<http.listen>`.
    pub fn external_url(&self) -> String {
        let url = &self.incidents.external_url;
        if url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            url.trim_end_matches('/').to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymize_key_is_read_at_start_and_a_bad_one_named() {
        let mut ic = IncidentsConfig::default();
        assert!(ic.anonymizer().expect("off").is_none(), "\"\" is off");
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("evidence.key");
        std::fs::write(&key, [7u8; 32]).expect("key file");
        ic.anonymize_key = key.clone();
        let mut a = ic.anonymizer().expect("readable").expect("on");
        let ip: std::net::IpAddr = "10.0.0.1".parse().expect("address");
        assert_ne!(a.ip(ip), ip);
        std::fs::write(&key, "not a key\n").expect("key file");
        let e = ic.anonymizer().expect_err("bad key");
        let msg = super::super::service::ServiceError::from(e).to_string();
        assert!(
            msg.starts_with("incidents.anonymize_key: ")
                && msg.contains(&key.display().to_string())
                && msg.contains("10 bytes"),
            "{msg}"
        );
        let parsed: IncidentsConfig =
            toml::from_str("anonymize_key = \"/etc/phalanx/evidence.key\"").expect("parses");
        assert_eq!(
            parsed.anonymize_key,
            std::path::Path::new("/etc/phalanx/evidence.key")
        );
    }
}
