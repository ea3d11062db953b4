//! Flow groups: the label sets flow KPIs are aggregated under.
//!
//! Per-flow labels would give Prometheus one series per connection, so
//! flows are exported in groups instead (`[[metrics.groups]]`). A flow is
//! classified once, on its first packet: the first group whose `ports` and
//! `remote` networks match it names it. Its labels are
//!
//! - `group`: the group's name (`other` for flows no group matches);
//! - `service`: the service port and protocol, e.g. `443/tcp`, when the
//!   group has `label_service` (the port the connection was opened to: the
//!   SYN's destination; for a flow picked up mid-stream, the lower port);
//! - `remote`: the remote endpoint's network (its address masked to
//!   `remote_prefix_v4` / `remote_prefix_v6` bits), when that length is not 0.
//!   The remote endpoint is the one not on this host: the source of a
//!   received packet, the destination of a sent one.
//!
//! The number of label sets is bounded by `series_budget`: once it is
//! spent, new label sets go to their group's overflow series, whose
//! `service` and `remote` are `other`. Label sets are never dropped (their
//! counters must stay monotonic), so the budget bounds memory too.

use std::collections::HashMap;

use ipnet::IpNet;
use phalanx_common::{ipproto, tcp_flags, user::ip_from_bytes, Direction, PacketMeta};
use serde::Deserialize;

use crate::flow::Flow;

/// Label value of overflowed or unmatched label parts.
pub const OTHER: &str = "other";

/// `[metrics]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Most label sets of flow KPIs; later ones go to their group's
    /// `other` series.
    pub series_budget: usize,
    /// `[[metrics.groups]]`, first match wins.
    pub groups: Vec<GroupConfig>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            series_budget: 1000,
            groups: Vec::new(),
        }
    }
}

/// One `[[metrics.groups]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Value of the `group` label.
    pub name: String,
    /// Service ports the group covers; empty: any.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Networks the remote endpoint must be in; empty: any.
    #[serde(default)]
    pub remote: Vec<IpNet>,
    /// Label series by service port and protocol.
    #[serde(default = "yes")]
    pub label_service: bool,
    /// Label series by the remote IPv4 address masked to this many bits;
    /// 0: no `remote` label.
    #[serde(default)]
    pub remote_prefix_v4: u8,
    /// Same for IPv6.
    #[serde(default)]
    pub remote_prefix_v6: u8,
}

fn yes() -> bool {
    true
}

impl GroupConfig {
    /// Whether a flow with this service port and remote address is in the
    /// group (an empty list matches anything).
    pub fn covers(&self, port: u16, remote: &std::net::IpAddr) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port))
            && (self.remote.is_empty() || self.remote.iter().any(|n| n.contains(remote)))
    }
}

/// Largest `series_budget`: ids of label sets must fit the flow's tag.
pub const MAX_SERIES: usize = (TAG_SERIES_MASK as usize) - 1;

/// Tag layout: series index + 1 in the low 15 bits, "canonical side 0 is
/// local" in the top bit.
const TAG_SERIES_MASK: u16 = 0x7fff;
const TAG_SIDE0_LOCAL: u16 = 0x8000;

impl MetricsConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.series_budget == 0 || self.series_budget > MAX_SERIES {
            return Err(format!(
                "metrics.series_budget must be between 1 and {MAX_SERIES}, got {}",
                self.series_budget
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (n, g) in self.groups.iter().enumerate() {
            let at = format!("metrics.groups[{}]", n + 1);
            if g.name.is_empty() || g.name == OTHER {
                return Err(format!(
                    "{at}.name must be set and not {OTHER:?} (that name is the unmatched flows')"
                ));
            }
            if !names.insert(&g.name) {
                return Err(format!("{at}.name {:?} is used twice", g.name));
            }
            if g.remote_prefix_v4 > 32 {
                return Err(format!("{at}.remote_prefix_v4 must be at most 32"));
            }
            if g.remote_prefix_v6 > 128 {
                return Err(format!("{at}.remote_prefix_v6 must be at most 128"));
            }
            if g.ports.contains(&0) {
                return Err(format!("{at}.ports: 0 is not a port"));
            }
        }
        Ok(())
    }
}

/// Labels of one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesLabels {
    /// `group`.
    pub group: String,
    /// `service`, e.g. `443/tcp`; empty when the group does not label it.
    pub service: String,
    /// `remote`, e.g. `10.1.2.0/24`; empty when the group does not label it.
    pub remote: String,
}

/// Assigns flows to label sets within the budget.
#[derive(Debug)]
pub struct Grouper {
    groups: Vec<GroupConfig>,
    budget: usize,
    index: HashMap<SeriesLabels, u16>,
    /// Labels of each series, by series index.
    labels: Vec<SeriesLabels>,
    /// Flows classified into an overflow series.
    pub overflowed_flows: u64,
}

/// A flow's classification, decoded from its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assigned {
    /// Series index.
    pub series: usize,
    /// Canonical side on this host (0 or 1).
    pub local_side: usize,
}

impl Grouper {
    /// A grouper for the `[metrics]` settings.
    pub fn new(cfg: &MetricsConfig) -> Self {
        Self {
            groups: cfg.groups.clone(),
            budget: cfg.series_budget.clamp(1, MAX_SERIES),
            index: HashMap::new(),
            labels: Vec::new(),
            overflowed_flows: 0,
        }
    }

    /// Label sets in use, by series index.
    pub fn labels(&self) -> &[SeriesLabels] {
        &self.labels
    }

    /// The flow's series, classifying it on its first packet (`tag` 0).
    /// `sent` is the canonical side that sent `rec`.
    pub fn assign(
        &mut self,
        flow: &Flow,
        tag: &mut u16,
        rec: &PacketMeta,
        sent: usize,
    ) -> Assigned {
        if *tag & TAG_SERIES_MASK == 0 {
            let (labels, local_side) = self.classify(flow, rec, sent);
            let series = self.series_of(labels);
            *tag = (series as u16 + 1) | if local_side == 0 { TAG_SIDE0_LOCAL } else { 0 };
        }
        Assigned {
            series: usize::from(*tag & TAG_SERIES_MASK) - 1,
            local_side: if *tag & TAG_SIDE0_LOCAL != 0 { 0 } else { 1 },
        }
    }

    fn series_of(&mut self, labels: SeriesLabels) -> usize {
        if let Some(&i) = self.index.get(&labels) {
            return usize::from(i);
        }
        let labels = if self.labels.len() >= self.budget {
            self.overflowed_flows += 1;
            SeriesLabels {
                group: labels.group,
                service: OTHER.to_string(),
                remote: OTHER.to_string(),
            }
        } else {
            labels
        };
        if let Some(&i) = self.index.get(&labels) {
            return usize::from(i);
        }
        // Overflow series are created past the budget: at most one per
        // group plus one for unmatched flows, so the bound holds.
        let i = self.labels.len();
        self.index.insert(labels.clone(), i as u16);
        self.labels.push(labels);
        i
    }

    fn classify(&self, flow: &Flow, rec: &PacketMeta, sent: usize) -> (SeriesLabels, usize) {
        let k = &flow.key;
        let local_side = if rec.direction == Direction::Egress as u8 {
            sent
        } else {
            sent ^ 1
        };
        let remote = ip_from_bytes(k.ip_version, &k.addr[local_side ^ 1]);
        // The service side received the connection's first packet: the
        // SYN's destination, the SYN/ACK's source; a datagram flow's first
        // packet goes to the service. Mid-stream, the lower port serves.
        let syn = rec.tcp_flags & tcp_flags::SYN != 0;
        let ack = rec.tcp_flags & tcp_flags::ACK != 0;
        let service_side = if k.proto != ipproto::TCP || (syn && !ack) {
            sent ^ 1
        } else if syn {
            sent
        } else if k.port[0] <= k.port[1] {
            0
        } else {
            1
        };
        let port = k.port[service_side];
        let proto = k.protocol();
        let matched = self.groups.iter().find(|g| g.covers(port, &remote));
        let labels = match matched {
            None => SeriesLabels {
                group: OTHER.to_string(),
                service: String::new(),
                remote: String::new(),
            },
            Some(g) => {
                let prefix = if remote.is_ipv4() {
                    g.remote_prefix_v4
                } else {
                    g.remote_prefix_v6
                };
                SeriesLabels {
                    group: g.name.clone(),
                    service: if g.label_service {
                        format!("{port}/{proto}")
                    } else {
                        String::new()
                    },
                    remote: if prefix == 0 {
                        String::new()
                    } else {
                        IpNet::new(remote, prefix)
                            .map(|n| n.trunc().to_string())
                            .unwrap_or_default()
                    },
                }
            }
        };
        (labels, local_side)
    }
}

/// With no groups configured every flow is in group `all`, labelled by
/// service.
pub fn effective_groups(cfg: &MetricsConfig) -> MetricsConfig {
    let mut c = cfg.clone();
    if c.groups.is_empty() {
        c.groups.push(GroupConfig {
            name: "all".into(),
            ports: Vec::new(),
            remote: Vec::new(),
            label_service: true,
            remote_prefix_v4: 0,
            remote_prefix_v6: 0,
        });
    }
    c
}
