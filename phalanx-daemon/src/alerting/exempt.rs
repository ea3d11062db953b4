//! `[[exemptions]]`: findings operators have silenced without a code
//! change: a known slow link, a noisy service, a maintenance window.
//!
//! An exemption names a rule, a flow group (`[[metrics.groups]]` name),
//! a network either endpoint is in and/or a port either endpoint uses;
//! a finding matching every selector it sets is dropped before it becomes
//! an observation (live) or is printed (`analyze`), and counted per rule.
//! With `until`, the exemption ends by itself.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use super::service::RuleLabels;

use crate::metrics::groups::MetricsConfig;
use crate::rules::Finding;

/// One `[[exemptions]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExemptionConfig {
    /// Rule whose findings it silences (any rule when absent).
    #[serde(default)]
    pub rule: Option<String>,
    /// Flow group (a `[[metrics.groups]]` name, first match as in the
    /// metrics) the finding's flow must be in.
    #[serde(default)]
    pub group: Option<String>,
    /// Network either endpoint must be in.
    #[serde(default)]
    pub cidr: Option<IpNet>,
    /// Port either endpoint must use.
    #[serde(default)]
    pub port: Option<u16>,
    /// Time it ends (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Why (for the next reader of the config).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The exemptions in force and what they silenced.
#[derive(Clone, Debug, Default)]
pub struct Exemptions {
    list: Vec<(ExemptionConfig, Option<u64>)>,
    groups: MetricsConfig,
    /// Findings silenced, by rule.
    pub silenced: BTreeMap<String, u64>,
    /// `phalanx_findings_exempted_total{rule}`, when registered.
    metric: Option<Family<RuleLabels, Counter>>,
}

impl Exemptions {
    /// Checks `[[exemptions]]` against the rule names and flow groups in
    /// force; the message names the entry and key.
    pub fn new(
        list: &[ExemptionConfig],
        rules: &[String],
        groups: &MetricsConfig,
    ) -> Result<Self, String> {
        let mut out = Vec::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            let at = format!("exemptions[{}]", i + 1);
            if e.rule.is_none() && e.group.is_none() && e.cidr.is_none() && e.port.is_none() {
                return Err(format!(
                    "{at}: set at least one of `rule`, `group`, `cidr` and `port` (an exemption of everything would silence every finding)"
                ));
            }
            if let Some(r) = &e.rule {
                if !rules.iter().any(|n| n == r) {
                    return Err(format!(
                        "{at}.rule: unknown rule {r:?}; rules: {}",
                        rules.join(", ")
                    ));
                }
            }
            if let Some(g) = &e.group {
                if !groups.groups.iter().any(|x| &x.name == g) {
                    return Err(format!("{at}.group: no [[metrics.groups]] is named {g:?}"));
                }
            }
            let until = match &e.until {
                Some(t) => Some(crate::clock::parse_rfc3339(t).map_err(|m| {
                    format!("{at}.until: {m} (RFC 3339, e.g. 2027-01-31T00:00:00Z)")
                })?),
                None => None,
            };
            out.push((e.clone(), until));
        }
        Ok(Self {
            list: out,
            groups: groups.clone(),
            silenced: BTreeMap::new(),
            metric: None,
        })
    }

    /// Counts what they silence in `registry` too.
    pub fn register(&mut self, registry: &mut Registry) {
        let family = Family::<RuleLabels, Counter>::default();
        registry.register(
            "phalanx_findings_exempted",
            "Findings [[exemptions]] silenced, by rule",
            family.clone(),
        );
        self.metric = Some(family);
    }

    /// Whether no exemption is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Drops the findings an exemption in force at `now_ns` (wall clock)
    /// covers, counting them.
    pub fn apply(&mut self, findings: &mut Vec<Finding>, now_ns: u64) {
        if self.list.is_empty() {
            return;
        }
        let (list, groups) = (&self.list, &self.groups);
        let (silenced, metric) = (&mut self.silenced, &self.metric);
        findings.retain(|f| {
            let exempt = list
                .iter()
                .any(|(e, until)| until.is_none_or(|u| now_ns < u) && covers(e, groups, f));
            if exempt {
                *silenced.entry(f.rule.clone()).or_default() += 1;
                if let Some(m) = metric {
                    m.get_or_create(&RuleLabels {
                        rule: f.rule.clone(),
                    })
                    .inc();
                }
            }
            !exempt
        });
    }
}

/// Whether exemption `e` covers finding `f` (every selector it sets).
fn covers(e: &ExemptionConfig, groups: &MetricsConfig, f: &Finding) -> bool {
    let ends: Vec<(IpAddr, Option<u16>)> = [(f.flow.src, f.flow.sport)]
        .into_iter()
        .filter_map(|(a, p)| Some((a?, p)))
        .chain([(f.flow.dst, Some(f.flow.dport))])
        .collect();
    e.rule.as_ref().is_none_or(|r| *r == f.rule)
        && e.cidr
            .is_none_or(|n| ends.iter().any(|(a, _)| n.contains(a)))
        && e.port
            .is_none_or(|p| ends.iter().any(|(_, q)| *q == Some(p)))
        && e.group
            .as_ref()
            .is_none_or(|g| group_of(groups, f) == Some(g))
}

/// The finding's flow group: the first `[[metrics.groups]]` that covers
/// the service (responder) port with either endpoint as the remote one.
fn group_of<'a>(groups: &'a MetricsConfig, f: &Finding) -> Option<&'a String> {
    let addrs = f.flow.src.into_iter().chain([f.flow.dst]);
    groups
        .groups
        .iter()
        .find(|g| addrs.clone().any(|a| g.covers(f.flow.dport, &a)))
        .map(|g| &g.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::Proto;
    use crate::metrics::groups::GroupConfig;
    use crate::rules::{FindingFlow, Severity};

    fn finding(rule: &str, dst: &str, dport: u16) -> Finding {
        Finding {
            activity_ns: None,
            rule: rule.into(),
            severity: Severity::Warning,
            flow: FindingFlow {
                src: Some("192.0.2.7".parse().expect("ip")),
                dst: dst.parse().expect("ip"),
                sport: Some(40000),
                dport,
                proto: Proto::TCP,
            },
            summary: String::new(),
            evidence: serde_json::Value::Null,
        }
    }

    fn groups() -> MetricsConfig {
        MetricsConfig {
            groups: vec![GroupConfig {
                name: "backup".into(),
                ports: vec![873],
                remote: vec![],
                label_service: true,
                remote_prefix_v4: 0,
                remote_prefix_v6: 0,
            }],
            ..MetricsConfig::default()
        }
    }

    fn rules() -> Vec<String> {
        ["congestion", "zero_window"].map(String::from).to_vec()
    }

    fn exemption(toml_text: &str) -> ExemptionConfig {
        toml::from_str(toml_text).expect("exemption")
    }

    #[test]
    fn every_selector_must_match_and_silenced_findings_are_counted() {
        let list = [
            exemption("rule = \"congestion\"\ngroup = \"backup\""),
            exemption("cidr = \"198.51.100.0/24\"\nport = 443\nuntil = \"2030-01-01T00:00:00Z\""),
        ];
        let mut x = Exemptions::new(&list, &rules(), &groups()).expect("valid");
        let mut found = vec![
            finding("congestion", "203.0.113.5", 873),
            finding("zero_window", "203.0.113.5", 873),
            finding("congestion", "203.0.113.5", 80),
            finding("zero_window", "198.51.100.9", 443),
            finding("zero_window", "198.51.100.9", 80),
        ];
        let now = crate::clock::parse_rfc3339("2029-06-01T00:00:00Z").expect("time");
        x.apply(&mut found, now);
        let left: Vec<_> = found
            .iter()
            .map(|f| (f.rule.as_str(), f.flow.dport))
            .collect();
        assert_eq!(
            left,
            [
                ("zero_window", 873),
                ("congestion", 80),
                ("zero_window", 80)
            ]
        );
        assert_eq!(
            x.silenced,
            BTreeMap::from([("congestion".into(), 1), ("zero_window".into(), 1)])
        );
        // Past `until` the second one no longer holds.
        let mut later = vec![finding("zero_window", "198.51.100.9", 443)];
        x.apply(&mut later, now + 2 * 365 * 86_400 * 1_000_000_000);
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn bad_exemptions_name_entry_and_key() {
        let err =
            |t: &str| Exemptions::new(&[exemption(t)], &rules(), &groups()).expect_err("invalid");
        assert!(err("reason = \"x\"").starts_with("exemptions[1]: set at least one of"));
        assert!(err("rule = \"congestoin\"")
            .starts_with("exemptions[1].rule: unknown rule \"congestoin\""));
        assert!(err("group = \"bulk\"").contains("no [[metrics.groups]] is named \"bulk\""));
        assert!(err("port = 1\nuntil = \"soon\"").starts_with("exemptions[1].until:"));
    }
}
