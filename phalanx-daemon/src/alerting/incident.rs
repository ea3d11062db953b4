//! Incidents: the lifecycle of what the diagnosis rules observe.
//!
//! Rules report [`Observation`]s; the [`IncidentManager`] folds them into
//! one incident per fault: every report about one flow group (a service)
//! while its incident fires joins it, the others' findings becoming its
//! evidence rather than pages of their own. The incident is named after
//! the report that best explains the fault ([`crate::rules::precedence`]),
//! fires until it has not been observed for `resolve_after`, then resolves;
//! a report more severe than the incident escalates it (a new incident, the
//! old one resolved as superseded). The manager is pure and runs on the
//! caller's clock (`now_ns`, nanoseconds since the Unix epoch), so its
//! lifecycle is tested with virtual time. The task that runs it is
//! [`super::service`]; evidence and delivery are its siblings.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::flow::key::FlowKey;
use crate::rules::{plural, Finding};

/// How urgent an incident is: the severity of the rule that reports it.
pub use crate::rules::Severity;

/// Annotation naming the incident that replaced an escalated one.
pub const SUPERSEDED_BY_ANNOTATION: &str = "superseded_by";

/// One report of a rule about a flow group, as the rules engine sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Rule name (`pmtud_blackhole`, ...); becomes the `alertname` label.
    pub rule: String,
    /// Severity of this report.
    pub severity: Severity,
    /// Flow group label (e.g. `svc-443/10.0.0.0/8`, or a flow's 5-tuple).
    pub group: String,
    /// The flow behind the report, when there is one (evidence comes from it).
    pub flow: Option<FlowKey>,
    /// The flow's initiator (the client), when the report is about one flow.
    pub client: Option<IpAddr>,
    /// One plain sentence for the on-call engineer.
    pub summary: String,
    /// The numbers and timestamps behind the report.
    pub evidence: serde_json::Value,
    /// The record time of the flow's latest packet, for a report about one
    /// flow: a repeat with no newer packet brings no new evidence and does
    /// not keep the incident open.
    pub activity_ns: Option<u64>,
}

/// Lifecycle state of an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Observed within the last `resolve_after`.
    Firing,
    /// Not observed for `resolve_after`, or superseded; final.
    Resolved,
}

impl Status {
    /// Lower-case name, as in Alertmanager payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// One rule's reports folded into an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleReports {
    /// The most severe of them.
    pub severity: Severity,
    /// How many.
    pub count: u64,
    /// The latest sentence.
    pub summary: String,
    /// The latest evidence.
    pub evidence: serde_json::Value,
    /// The flow of the latest report that named one.
    pub flow: Option<FlowKey>,
}

/// An incident: one firing-to-resolved episode of a fault on a flow group.
/// The JSON form round-trips (times to the millisecond), which is how open
/// incidents survive a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Unique id of this episode (fingerprint and start time).
    pub id: String,
    /// Stable hash of rule and group, shared by every episode of the pair.
    pub fingerprint: String,
    /// The rule it is named after: among its reports, the one that best
    /// explains the fault.
    pub rule: String,
    /// The most severe report when it fired (fixed: it is a label, and
    /// changing a label would make Alertmanager see another alert; a more
    /// severe report escalates to a new incident).
    pub severity: Severity,
    /// Flow group label.
    pub group: String,
    /// Firing or resolved.
    pub status: Status,
    /// When it fired (ns since the epoch; RFC 3339 in JSON).
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub starts_at: u64,
    /// When it resolved.
    #[serde(serialize_with = "ser_opt_time", deserialize_with = "de_opt_time")]
    pub ends_at: Option<u64>,
    /// Last observation that brought new evidence (see [`Observation::activity_ns`]).
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub last_seen: u64,
    /// Observations folded into this incident, every rule's.
    pub count: u64,
    /// Flow of `rule`'s latest report that named one (else another rule's).
    pub flow: Option<FlowKey>,
    /// `rule`'s latest summary.
    pub summary: String,
    /// `rule`'s latest evidence.
    pub evidence: serde_json::Value,
    /// Every rule's reports, by rule (`rule`'s among them): the others are
    /// the fault's further evidence.
    #[serde(default)]
    pub findings: BTreeMap<String, RuleReports>,
    /// Distinct flows the reports named (counted up to 4096).
    #[serde(default)]
    pub flows: u64,
    /// Distinct clients (flow initiators) of those flows (up to 4096).
    #[serde(default)]
    pub clients: u64,
    /// Alertmanager annotations (summary, evidence, pcapng, ...).
    pub annotations: BTreeMap<String, String>,
    /// Alertmanager labels (alertname, severity, group, host): the alert's identity.
    pub labels: BTreeMap<String, String>,
    /// Latest multi-hop stitch of the flow with the peer daemons
    /// (`crate::stitch::live::LiveReport`), when peers are configured.
    #[serde(default)]
    pub stitch: Option<serde_json::Value>,
    /// The latest packet time each of its flows was reported with.
    #[serde(skip)]
    pub activity: HashMap<Option<FlowKey>, u64>,
    /// The flows and clients behind `flows` and `clients`.
    #[serde(skip)]
    affected: Affected,
    /// When it was last notified, and whether its figures changed since.
    #[serde(skip)]
    notice: Notice,
}

/// Flows whose activity an incident remembers; beyond, it starts afresh.
const ACTIVITY_FLOWS: usize = 1024;

/// Distinct flows, and clients, an incident counts.
const AFFECTED_MAX: usize = 4096;

/// Whether an observation brings new evidence, recording its activity: a
/// report does when its flow (or, across flows, its service) had packets
/// behind it since the previous report of that flow (a quiet flow's
/// lifetime figures, re-read every evaluation, prove nothing new); a
/// report without an activity time always does.
fn grew(activity: &mut HashMap<Option<FlowKey>, u64>, obs: &Observation) -> bool {
    let Some(at) = obs.activity_ns else {
        return true;
    };
    if activity.len() >= ACTIVITY_FLOWS && !activity.contains_key(&obs.flow) {
        activity.clear();
    }
    activity.insert(obs.flow, at).is_none_or(|prev| at > prev)
}

/// The distinct flows and clients an incident's reports named.
#[derive(Clone, Debug, Default, PartialEq)]
struct Affected {
    flows: HashSet<FlowKey>,
    clients: HashSet<IpAddr>,
}

impl Affected {
    /// Adds a report's flow and client; whether either was new.
    fn add(&mut self, flow: Option<FlowKey>, client: Option<IpAddr>) -> bool {
        fn put<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, v: Option<T>) -> bool {
            v.is_some_and(|v| set.len() < AFFECTED_MAX && set.insert(v))
        }
        // Both, not short-circuited.
        put(&mut self.flows, flow) | put(&mut self.clients, client)
    }
}

/// Notification state of a firing incident.
#[derive(Clone, Debug, Default, PartialEq)]
struct Notice {
    /// When it was last notified (fired or updated).
    at: u64,
    /// Its sentences or counts changed since.
    changed: bool,
}

impl Incident {
    /// A new incident of `obs`'s group, at `now_ns`.
    fn open(obs: Observation, now_ns: u64, host: &str) -> Self {
        let mut inc = Incident {
            id: String::new(),
            fingerprint: String::new(),
            rule: obs.rule.clone(),
            severity: obs.severity,
            group: obs.group.clone(),
            status: Status::Firing,
            starts_at: now_ns,
            ends_at: None,
            last_seen: now_ns,
            count: 0,
            flow: None,
            summary: String::new(),
            evidence: serde_json::Value::Null,
            findings: BTreeMap::new(),
            flows: 0,
            clients: 0,
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            stitch: None,
            activity: HashMap::new(),
            affected: Affected::default(),
            notice: Notice::default(),
        };
        inc.fold(obs, now_ns);
        inc.identify(host);
        inc
    }

    /// Folds a report of its group into it.
    fn fold(&mut self, obs: Observation, now_ns: u64) {
        self.count += 1;
        if grew(&mut self.activity, &obs) {
            self.last_seen = self.last_seen.max(now_ns);
        }
        if self.affected.add(obs.flow, obs.client) {
            self.flows = self.flows.max(self.affected.flows.len() as u64);
            self.clients = self.clients.max(self.affected.clients.len() as u64);
            self.notice.changed = true;
        }
        self.severity = self.severity.max(obs.severity);
        let r = self
            .findings
            .entry(obs.rule.clone())
            .or_insert_with(|| RuleReports {
                severity: obs.severity,
                count: 0,
                summary: String::new(),
                evidence: serde_json::Value::Null,
                flow: None,
            });
        r.severity = r.severity.max(obs.severity);
        r.count += 1;
        self.notice.changed |= r.summary != obs.summary;
        r.summary = obs.summary;
        r.evidence = obs.evidence;
        r.flow = obs.flow.or(r.flow);
        self.show_lead();
    }

    /// Names it after the report that best explains the fault: an
    /// actionable (warning or worse) one before an informational one, then
    /// by [`crate::rules::precedence`] (a diagnosis before its symptoms);
    /// the current name wins a tie. Only before it is first notified, or
    /// when it escalates: the name is a label.
    fn choose_lead(&mut self) {
        let best = self
            .findings
            .iter()
            .max_by_key(|(rule, r)| {
                (
                    r.severity > Severity::Info,
                    Reverse(crate::rules::precedence(rule)),
                    **rule == self.rule,
                )
            })
            .map(|(rule, _)| rule.clone());
        if let Some(rule) = best {
            self.rule = rule;
            self.show_lead();
        }
    }

    /// Takes the summary, evidence and flow of the rule it is named after.
    fn show_lead(&mut self) {
        if let Some(r) = self.findings.get(&self.rule) {
            self.summary = r.summary.clone();
            self.evidence = r.evidence.clone();
            self.flow = r.flow;
        }
        if self.flow.is_none() {
            self.flow = self.findings.values().find_map(|r| r.flow);
        }
        fill_annotations(self);
    }

    /// Sets the identity that follows from its name, group, severity and
    /// start: fingerprint, id and labels.
    fn identify(&mut self, host: &str) {
        self.fingerprint = fingerprint(&self.rule, &self.group);
        self.id = format!("{}-{:x}", self.fingerprint, self.starts_at);
        self.labels = [
            ("alertname", self.rule.clone()),
            ("severity", self.severity.as_str().to_string()),
            ("group", self.group.clone()),
            ("host", host.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    }

    /// Ends it at `now_ns`.
    fn resolve(&mut self, now_ns: u64) {
        self.status = Status::Resolved;
        self.ends_at = Some(now_ns.max(self.starts_at));
    }
}

/// A lifecycle change, carrying the incident as it is after the change.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A new incident.
    Fired(Incident),
    /// An incident that stopped being observed, or was superseded.
    Resolved(Incident),
}

impl Transition {
    /// The incident after the change.
    pub fn incident(&self) -> &Incident {
        match self {
            Transition::Fired(i) | Transition::Resolved(i) => i,
        }
    }
}

/// What [`IncidentManager::observe`] did with an observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Opened a new incident, or escalated one (its `Fired` comes with
    /// the next tick).
    New(String),
    /// Folded into the open incident with this id.
    Repeated(String),
    /// Dropped: `max_open` incidents are already firing.
    Suppressed,
}

/// Settings of the manager (from `[incidents]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ManagerSettings {
    /// Quiet time after which a firing incident resolves.
    pub resolve_after: Duration,
    /// Least time between two notifications of a firing incident whose
    /// figures changed.
    pub update_after: Duration,
    /// Value of the `host` label.
    pub host: String,
    /// Most incidents firing at once; reports of further groups are suppressed and counted.
    pub max_open: usize,
    /// Resolved incidents kept for the API.
    pub keep_resolved: usize,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            resolve_after: Duration::from_secs(300),
            update_after: Duration::from_secs(60),
            host: String::new(),
            max_open: 1000,
            keep_resolved: 200,
        }
    }
}

/// Folds observations into incidents and drives their lifecycle.
#[derive(Debug)]
pub struct IncidentManager {
    settings: ManagerSettings,
    /// Firing incidents by group.
    open: HashMap<String, Incident>,
    /// Groups whose incident opened since the last tick (not yet notified).
    fired: Vec<String>,
    /// Incidents ended by an escalation since the last tick.
    superseded: Vec<Incident>,
    /// Most recent last.
    resolved: VecDeque<Incident>,
    suppressed: u64,
}

/// Stable fingerprint of a (rule, group): the first 64 bits of
/// SHA-256(rule NUL group) in hex, the same on every host and version.
pub fn fingerprint(rule: &str, group: &str) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0u8]);
    h.update(group.as_bytes());
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl IncidentManager {
    /// An empty manager.
    pub fn new(settings: ManagerSettings) -> Self {
        Self {
            settings,
            open: HashMap::new(),
            fired: Vec::new(),
            superseded: Vec::new(),
            resolved: VecDeque::new(),
            suppressed: 0,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ManagerSettings {
        &self.settings
    }

    /// Folds an observation made at `now_ns` into the incidents.
    pub fn observe(&mut self, obs: Observation, now_ns: u64) -> Observed {
        let notified = !self.fired.contains(&obs.group);
        if let Some(inc) = self.open.get_mut(&obs.group) {
            if notified && obs.severity > inc.severity {
                return Observed::New(self.escalate(obs, now_ns));
            }
            inc.fold(obs, now_ns);
            if !notified {
                inc.choose_lead();
                inc.identify(&self.settings.host);
            }
            return Observed::Repeated(inc.id.clone());
        }
        if self.open.len() >= self.settings.max_open {
            self.suppressed += 1;
            return Observed::Suppressed;
        }
        let inc = Incident::open(obs, now_ns, &self.settings.host);
        let id = inc.id.clone();
        self.fired.push(inc.group.clone());
        self.open.insert(inc.group.clone(), inc);
        Observed::New(id)
    }

    /// Replaces the notified incident of `obs`'s group by a more severe
    /// one that carries its reports; the old one resolves at the next tick,
    /// annotated with the new one's id. Returns the new id.
    fn escalate(&mut self, obs: Observation, now_ns: u64) -> String {
        let Some(mut old) = self.open.remove(&obs.group) else {
            return String::new();
        };
        let mut inc = old.clone();
        inc.starts_at = now_ns;
        inc.annotations.clear();
        inc.stitch = None;
        inc.fold(obs, now_ns);
        inc.choose_lead();
        inc.identify(&self.settings.host);
        old.resolve(now_ns);
        old.annotations
            .insert(SUPERSEDED_BY_ANNOTATION.into(), inc.id.clone());
        let id = inc.id.clone();
        self.superseded.push(old);
        self.fired.push(inc.group.clone());
        self.open.insert(inc.group.clone(), inc);
        id
    }

    /// Advances the clock: returns the incidents superseded since the last
    /// tick (resolved), those fired since, then those that were not
    /// observed for `resolve_after` (resolved now).
    pub fn tick(&mut self, now_ns: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for inc in std::mem::take(&mut self.superseded) {
            out.push(Transition::Resolved(inc.clone()));
            self.keep(inc);
        }
        for group in std::mem::take(&mut self.fired) {
            if let Some(inc) = self.open.get_mut(&group) {
                inc.notice = Notice {
                    at: now_ns,
                    changed: false,
                };
                out.push(Transition::Fired(inc.clone()));
            }
        }
        let after = nanos(self.settings.resolve_after);
        let mut quiet: Vec<String> = self
            .open
            .iter()
            .filter(|(_, i)| now_ns.saturating_sub(i.last_seen) >= after)
            .map(|(group, _)| group.clone())
            .collect();
        // Deterministic order: oldest first.
        quiet.sort_by_key(|g| self.open.get(g).map(|i| (i.starts_at, i.id.clone())));
        for group in quiet {
            let Some(mut inc) = self.open.remove(&group) else {
                continue;
            };
            inc.resolve(now_ns);
            out.push(Transition::Resolved(inc.clone()));
            self.keep(inc);
        }
        out
    }

    /// Firing incidents whose sentences or counts changed since they were
    /// last notified, at most once per `update_after` each; they count as
    /// notified now.
    pub fn updates(&mut self, now_ns: u64) -> Vec<Incident> {
        let every = nanos(self.settings.update_after);
        let mut out: Vec<Incident> = self
            .open
            .values_mut()
            .filter(|i| i.notice.changed && now_ns.saturating_sub(i.notice.at) >= every)
            .map(|i| {
                i.notice = Notice {
                    at: now_ns,
                    changed: false,
                };
                i.clone()
            })
            .collect();
        out.sort_by(|a, b| (a.starts_at, &a.id).cmp(&(b.starts_at, &b.id)));
        out
    }

    /// Keeps a resolved incident for the API, within `keep_resolved`.
    fn keep(&mut self, inc: Incident) {
        self.resolved.push_back(inc);
        while self.resolved.len() > self.settings.keep_resolved {
            self.resolved.pop_front();
        }
    }

    /// Sets an annotation on a firing incident; returns the updated incident.
    pub fn annotate(&mut self, id: &str, key: &str, value: String) -> Option<Incident> {
        let inc = self.open.values_mut().find(|i| i.id == id)?;
        inc.annotations.insert(key.to_string(), value);
        Some(inc.clone())
    }

    /// Stores a stitch result on a firing incident and sets (`Some`) or
    /// removes (`None`) the annotations derived from it; returns the
    /// updated incident.
    pub fn set_stitch(
        &mut self,
        id: &str,
        report: serde_json::Value,
        annotations: &[(&str, Option<String>)],
    ) -> Option<Incident> {
        let inc = self.open.values_mut().find(|i| i.id == id)?;
        inc.stitch = Some(report);
        for (k, v) in annotations {
            match v {
                Some(v) => inc.annotations.insert((*k).to_string(), v.clone()),
                None => inc.annotations.remove(*k),
            };
        }
        Some(inc.clone())
    }

    /// Firing incidents, oldest first.
    pub fn firing(&self) -> Vec<&Incident> {
        let mut v: Vec<&Incident> = self.open.values().collect();
        v.sort_by(|a, b| (a.starts_at, &a.id).cmp(&(b.starts_at, &b.id)));
        v
    }

    /// Every known incident: firing ones (oldest first), then resolved ones
    /// (most recent first).
    pub fn list(&self) -> Vec<&Incident> {
        let mut v = self.firing();
        v.extend(self.resolved.iter().rev());
        v
    }

    /// An incident by id, firing or kept resolved.
    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.open
            .values()
            .find(|i| i.id == id)
            .or_else(|| self.resolved.iter().find(|i| i.id == id))
    }

    /// Firing incidents to persist across a restart.
    pub fn snapshot_open(&self) -> Vec<Incident> {
        self.firing().into_iter().cloned().collect()
    }

    /// Takes back firing incidents saved by [`Self::snapshot_open`]: they
    /// keep their ids and resolve normally unless observed again. A second
    /// incident of one group (state written by a version that kept one per
    /// rule) resolves at the next tick, superseded by the first. Returns
    /// how many were taken (resolved entries are skipped, and `max_open`
    /// holds).
    pub fn restore(&mut self, incidents: Vec<Incident>) -> usize {
        let mut n = 0;
        for mut inc in incidents {
            if inc.status != Status::Firing || self.open.len() >= self.settings.max_open {
                continue;
            }
            if let Some(kept) = self.open.get(&inc.group) {
                if kept.id != inc.id {
                    inc.annotations
                        .insert(SUPERSEDED_BY_ANNOTATION.into(), kept.id.clone());
                    inc.resolve(inc.last_seen);
                    self.superseded.push(inc);
                }
                continue;
            }
            if inc.findings.is_empty() {
                inc.findings.insert(
                    inc.rule.clone(),
                    RuleReports {
                        severity: inc.severity,
                        count: inc.count,
                        summary: inc.summary.clone(),
                        evidence: inc.evidence.clone(),
                        flow: inc.flow,
                    },
                );
            }
            self.open.insert(inc.group.clone(), inc);
            n += 1;
        }
        n
    }

    /// Observations dropped because `max_open` incidents were firing.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Annotations derived from the reports (others, such as the evidence
/// file, are added with [`IncidentManager::annotate`] and kept).
fn fill_annotations(inc: &mut Incident) {
    inc.annotations
        .insert("summary".into(), inc.summary.clone());
    inc.annotations
        .insert("evidence".into(), inc.evidence.to_string());
    if let Some(f) = &inc.flow {
        inc.annotations.insert("flow".into(), f.to_string());
    }
    if inc.flows > 0 {
        inc.annotations.insert(
            "affected".into(),
            format!(
                "{} from {}",
                plural(inc.flows, "flow", "flows"),
                plural(inc.clients, "client", "clients")
            ),
        );
    }
    let related: Vec<String> = inc
        .findings
        .iter()
        .filter(|(rule, _)| **rule != inc.rule)
        .map(|(rule, r)| format!("{rule} ({}, {}): {}", r.severity, r.count, r.summary))
        .collect();
    if related.is_empty() {
        inc.annotations.remove("related");
    } else {
        inc.annotations
            .insert("related".into(), related.join(" | "));
    }
}

/// An incident observation of a finding. Findings are grouped per service
/// (responder address, port and protocol), so the flows of one fault make
/// one incident; the finding's own flow supplies the evidence.
impl From<Finding> for Observation {
    fn from(f: Finding) -> Self {
        let ff = &f.flow;
        let group = format!("{}:{}/{}", ff.dst, ff.dport, ff.proto);
        let flow = match (ff.src, ff.sport, ff.proto) {
            (Some(src), Some(sport), proto) => Some(
                FlowKey::between(
                    proto,
                    SocketAddr::new(src, sport),
                    SocketAddr::new(ff.dst, ff.dport),
                )
                .0,
            ),
            _ => None,
        };
        Self {
            client: ff.src,
            rule: f.rule,
            severity: f.severity,
            group,
            flow,
            summary: f.summary,
            evidence: f.evidence,
            activity_ns: f.activity_ns,
        }
    }
}

fn ser_time<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::clock::rfc3339(*ns))
}

fn ser_opt_time<S: Serializer>(ns: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ns {
        Some(n) => s.serialize_str(&crate::clock::rfc3339(*n)),
        None => s.serialize_none(),
    }
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    crate::clock::parse_rfc3339(&s).map_err(serde::de::Error::custom)
}

fn de_opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(s) => crate::clock::parse_rfc3339(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn obs(rule: &str, group: &str, summary: &str) -> Observation {
        Observation {
            activity_ns: None,
            client: None,
            rule: rule.into(),
            severity: Severity::Warning,
            group: group.into(),
            flow: None,
            summary: summary.into(),
            evidence: serde_json::json!({ "summary": summary }),
        }
    }

    fn manager() -> IncidentManager {
        IncidentManager::new(ManagerSettings {
            resolve_after: Duration::from_secs(60),
            update_after: Duration::from_secs(10),
            host: "h1".into(),
            max_open: 3,
            keep_resolved: 2,
        })
    }

    #[test]
    fn a_quiet_flow_re_reported_does_not_keep_its_incident_open() {
        let mut m = manager();
        let flow = FlowKey::between(
            crate::flow::key::Proto::TCP,
            "10.0.0.1:40000".parse().expect("addr"),
            "10.0.0.2:443".parse().expect("addr"),
        )
        .0;
        let report = |last_packet: u64| {
            let mut o = obs("congestion", "svc-443", "lossy");
            o.flow = Some(flow);
            o.activity_ns = Some(last_packet);
            o
        };
        m.observe(report(T0), T0);
        m.tick(T0);
        // A newer packet is new evidence.
        m.observe(report(T0 + 29 * S), T0 + 30 * S);
        // Then the flow keeps being evaluated every 2 s with no new packet.
        for k in 16..=60 {
            m.observe(report(T0 + 29 * S), T0 + 2 * k * S);
        }
        assert!(m.tick(T0 + 89 * S).is_empty(), "refreshed at 30 s");
        let t = m.tick(T0 + 90 * S);
        assert!(
            matches!(t.as_slice(), [Transition::Resolved(i)] if i.ends_at == Some(T0 + 90 * S)),
            "resolved 60 s after its last new evidence: {t:?}"
        );
    }

    #[test]
    fn fire_dedup_update_resolve_refire() {
        let mut m = manager();
        let Observed::New(id) = m.observe(obs("congestion", "svc-443", "first"), T0) else {
            panic!("first observation must open an incident");
        };
        let t = m.tick(T0);
        assert_eq!(t.len(), 1, "one Fired transition: {t:?}");
        let Transition::Fired(fired) = &t[0] else {
            panic!("expected Fired, got {t:?}")
        };
        assert_eq!(fired.id, id);
        assert_eq!(fired.status, Status::Firing);
        assert_eq!(fired.labels["alertname"], "congestion");
        assert_eq!(fired.labels["severity"], "warning");
        assert_eq!(fired.labels["host"], "h1");

        // Repeats within resolve_after update, never fire again.
        for k in 1..=5u64 {
            assert_eq!(
                m.observe(
                    obs("congestion", "svc-443", &format!("update {k}")),
                    T0 + k * 30 * S
                ),
                Observed::Repeated(id.clone())
            );
            assert!(
                m.tick(T0 + k * 30 * S).is_empty(),
                "no transition on repeat {k}"
            );
        }
        let inc = m.get(&id).expect("still known");
        assert_eq!(inc.count, 6, "six observations folded");
        assert_eq!(inc.summary, "update 5");
        assert_eq!(inc.annotations["summary"], "update 5");
        assert_eq!(inc.last_seen, T0 + 150 * S);
        assert_eq!(inc.starts_at, T0, "start time is the first observation's");

        // 59 s of quiet: still firing; 60 s: resolved.
        assert!(m.tick(T0 + 209 * S).is_empty());
        let t = m.tick(T0 + 210 * S);
        let [Transition::Resolved(r)] = t.as_slice() else {
            panic!("expected one Resolved, got {t:?}")
        };
        assert_eq!(r.id, id);
        assert_eq!(r.ends_at, Some(T0 + 210 * S));
        assert!(m.firing().is_empty());
        assert_eq!(m.get(&id).map(|i| i.status), Some(Status::Resolved));

        // Refire: a new episode, new id, same fingerprint.
        let Observed::New(id2) = m.observe(obs("congestion", "svc-443", "again"), T0 + 300 * S)
        else {
            panic!("observation after resolution must open a new incident");
        };
        assert_ne!(id2, id, "a refire gets a new id");
        let t = m.tick(T0 + 300 * S);
        assert_eq!(
            t[0].incident().fingerprint,
            r.fingerprint,
            "same fingerprint"
        );
        assert_eq!(m.list().len(), 2, "one firing, one resolved");
    }

    #[test]
    fn groups_are_separate_incidents_and_capped() {
        let mut m = manager();
        for g in ["g1", "g2", "g3"] {
            assert!(matches!(m.observe(obs("a", g, "x"), T0), Observed::New(_)));
        }
        assert!(
            matches!(m.observe(obs("b", "g1", "x"), T0), Observed::Repeated(_)),
            "another rule on a firing group joins its incident"
        );
        assert_eq!(m.observe(obs("c", "g4", "x"), T0), Observed::Suppressed);
        assert_eq!(m.suppressed(), 1);
        assert_eq!(m.tick(T0).len(), 3);
        // All resolve; only keep_resolved = 2 stay listed.
        assert_eq!(m.tick(T0 + 60 * S).len(), 3);
        assert_eq!(m.list().len(), 2);
        assert!(matches!(
            m.observe(obs("c", "g4", "x"), T0 + 61 * S),
            Observed::New(_)
        ));
    }

    /// A report of `rule` at `severity` about flow `port` of client `client`.
    fn report(rule: &str, severity: Severity, client: u8, port: u16) -> Observation {
        let src: SocketAddr = format!("10.0.0.{client}:{port}").parse().expect("addr");
        let dst: SocketAddr = "10.0.9.9:443".parse().expect("addr");
        let mut o = obs(rule, "10.0.9.9:443/tcp", &format!("{rule} on {port}"));
        o.severity = severity;
        o.flow = Some(FlowKey::between(crate::flow::key::Proto::TCP, src, dst).0);
        o.client = Some(src.ip());
        o
    }

    #[test]
    fn one_fault_is_one_incident_named_after_its_diagnosis() {
        let mut m = manager();
        // One evaluation of a lossy, congested link: the symptoms come
        // first in the batch, the diagnosis later, across three flows.
        let batch = [
            report("retransmission_storm", Severity::Critical, 1, 40001),
            report("rst_storm", Severity::Warning, 2, 40002),
            report("latency_split", Severity::Info, 2, 40002),
            report("congestion", Severity::Warning, 3, 40003),
            report("retransmission_storm", Severity::Warning, 3, 40003),
        ];
        for o in batch {
            m.observe(o, T0);
        }
        let t = m.tick(T0);
        let [Transition::Fired(inc)] = t.as_slice() else {
            panic!("one incident for the fault: {t:?}")
        };
        assert_eq!(inc.rule, "congestion", "named after the diagnosis");
        assert_eq!(inc.labels["alertname"], "congestion");
        assert_eq!(
            inc.severity,
            Severity::Critical,
            "as severe as its worst report"
        );
        assert_eq!(inc.summary, "congestion on 40003");
        assert_eq!(inc.flow, report("x", Severity::Info, 3, 40003).flow);
        assert_eq!((inc.flows, inc.clients, inc.count), (3, 3, 5));
        assert_eq!(inc.findings["retransmission_storm"].count, 2);
        assert_eq!(
            inc.findings["retransmission_storm"].severity,
            Severity::Critical
        );
        assert_eq!(inc.annotations["affected"], "3 flows from 3 clients");
        let related = &inc.annotations["related"];
        for rule in ["latency_split", "retransmission_storm", "rst_storm"] {
            assert!(related.contains(rule), "{rule} in {related:?}");
        }
        assert!(!related.contains("congestion ("), "{related:?}");

        // A later report of a less severe rule joins without a page.
        m.observe(
            report("retransmission_stall", Severity::Warning, 4, 40004),
            T0 + 2 * S,
        );
        assert!(m.tick(T0 + 2 * S).is_empty());
        let inc = &m.firing()[0];
        assert_eq!(
            (inc.rule.as_str(), inc.flows, inc.clients),
            ("congestion", 4, 4)
        );
    }

    #[test]
    fn the_notification_is_updated_as_the_figures_grow() {
        let mut m = manager(); // update_after 10 s
        m.observe(
            report("retransmission_storm", Severity::Warning, 1, 40001),
            T0,
        );
        m.tick(T0);
        assert!(m.updates(T0 + 30 * S).is_empty(), "nothing changed");
        // Same sentence again: no update.
        m.observe(
            report("retransmission_storm", Severity::Warning, 1, 40001),
            T0 + 2 * S,
        );
        assert!(m.updates(T0 + 30 * S).is_empty(), "the same figures");
        // A second client's flow: one update, not before 10 s after the last.
        m.observe(
            report("retransmission_storm", Severity::Warning, 2, 40002),
            T0 + 31 * S,
        );
        let u = m.updates(T0 + 31 * S);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!((u[0].flows, u[0].clients), (2, 2));
        assert_eq!(u[0].annotations["affected"], "2 flows from 2 clients");
        m.observe(
            report("retransmission_storm", Severity::Warning, 3, 40003),
            T0 + 33 * S,
        );
        assert!(m.updates(T0 + 33 * S).is_empty(), "at most one per 10 s");
        let u = m.updates(T0 + 41 * S);
        assert_eq!(u.iter().map(|i| i.flows).collect::<Vec<_>>(), [3]);
        assert!(m.updates(T0 + 60 * S).is_empty(), "notified");
    }

    #[test]
    fn a_more_severe_report_escalates_to_a_new_incident() {
        let mut m = manager();
        let Observed::New(first) = m.observe(report("latency_split", Severity::Info, 1, 40001), T0)
        else {
            panic!("new")
        };
        m.tick(T0);
        let Observed::New(second) = m.observe(
            report("retransmission_storm", Severity::Warning, 1, 40001),
            T0 + 2 * S,
        ) else {
            panic!("escalated")
        };
        let t = m.tick(T0 + 2 * S);
        let [Transition::Resolved(old), Transition::Fired(new)] = t.as_slice() else {
            panic!("the info incident resolves, the warning one fires: {t:?}")
        };
        assert_eq!(old.id, first);
        assert_eq!(old.annotations[SUPERSEDED_BY_ANNOTATION], second);
        assert_eq!(new.id, second);
        assert_eq!(new.labels["alertname"], "retransmission_storm");
        assert_eq!(new.labels["severity"], "warning");
        assert_eq!(new.findings.len(), 2, "carries the earlier reports");
        assert_eq!(m.firing().len(), 1);
        assert_eq!(m.get(&first).map(|i| i.status), Some(Status::Resolved));
    }

    #[test]
    fn restoring_two_incidents_of_one_group_keeps_one() {
        let mut m = manager();
        let mut a = Incident::open(obs("congestion", "g", "x"), T0, "h1");
        let b = Incident::open(obs("rst_storm", "g", "y"), T0 + S, "h1");
        a.findings.clear(); // as written by a version without `findings`
        assert_eq!(m.restore(vec![a.clone(), b.clone()]), 1);
        assert_eq!(m.firing()[0].findings["congestion"].summary, "x");
        let t = m.tick(T0 + 2 * S);
        let [Transition::Resolved(r)] = t.as_slice() else {
            panic!("the second resolves, superseded: {t:?}")
        };
        assert_eq!(r.id, b.id);
        assert_eq!(r.annotations[SUPERSEDED_BY_ANNOTATION], a.id);
    }

    #[test]
    fn fired_and_resolved_in_one_tick_keep_order() {
        let mut m = manager();
        m.observe(obs("a", "g", "x"), T0);
        let t = m.tick(T0 + 61 * S);
        assert!(
            matches!(
                t.as_slice(),
                [Transition::Fired(_), Transition::Resolved(_)]
            ),
            "{t:?}"
        );
    }

    #[test]
    fn annotations_survive_updates() {
        let mut m = manager();
        let Observed::New(id) = m.observe(obs("a", "g", "x"), T0) else {
            panic!("new")
        };
        m.annotate(&id, "pcapng", "f.pcapng.zst".into())
            .expect("open incident");
        m.observe(obs("a", "g", "y"), T0 + S);
        assert_eq!(
            m.get(&id).expect("known").annotations["pcapng"],
            "f.pcapng.zst"
        );
        let inc = m
            .set_stitch(
                &id,
                serde_json::json!({"links": []}),
                &[("stitch", Some("s".into())), ("pcapng", None)],
            )
            .expect("firing");
        assert_eq!(inc.annotations["stitch"], "s");
        assert!(!inc.annotations.contains_key("pcapng"), "None removes");
        m.observe(obs("a", "g", "z"), T0 + 2 * S);
        let inc = m.get(&id).expect("known");
        assert_eq!(inc.annotations["stitch"], "s", "kept across updates");
        assert_eq!(inc.stitch, Some(serde_json::json!({"links": []})));
        let back: Incident =
            serde_json::from_value(serde_json::to_value(inc).expect("json")).expect("round trip");
        assert_eq!(
            serde_json::to_value(&back).expect("json"),
            serde_json::to_value(inc).expect("json"),
            "the stitch report survives a restart"
        );
    }

    #[test]
    fn fingerprint_is_stable() {
        // Pinned values: a change breaks deduplication across restarts and hosts.
        assert_eq!(
            fingerprint("pmtud_blackhole", "svc-443/10.0.0.0/8"),
            fingerprint("pmtud_blackhole", "svc-443/10.0.0.0/8")
        );
        assert_eq!(fingerprint("congestion", "svc-443"), PINNED_CONGESTION);
        assert_ne!(
            fingerprint("ab", "c"),
            fingerprint("a", "bc"),
            "separator matters"
        );
        assert_eq!(fingerprint("x", "y").len(), 16);
    }

    /// SHA-256("congestion\0svc-443"), first 8 bytes, computed independently.
    const PINNED_CONGESTION: &str = "95a4e9e0e72d2b85";

    #[test]
    fn json_shape() {
        let mut m = manager();
        let mut o = obs("syn_unanswered", "g", "SYNs to 10.0.0.2:80 get no answer.");
        let (k, _) = FlowKey::canonical(
            4,
            6,
            &[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            80,
            &[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            40000,
        );
        o.flow = Some(k);
        m.observe(o, T0);
        let v = serde_json::to_value(m.list()[0]).expect("serializable");
        assert_eq!(v["starts_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["ends_at"], serde_json::Value::Null);
        assert_eq!(v["status"], "firing");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["flow"]["src"], "10.0.0.1");
        assert_eq!(v["flow"]["dport"], 80);
        assert_eq!(v["flow"]["proto"], "tcp");
        assert_eq!(
            v["annotations"]["flow"],
            "10.0.0.1:40000 <-> 10.0.0.2:80 tcp"
        );
    }
}
