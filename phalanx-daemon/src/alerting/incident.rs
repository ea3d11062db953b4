//! Incidents: the lifecycle of what the diagnosis rules observe.
//!
//! Rules report [`Observation`]s; the [`IncidentManager`] folds them into
//! incidents deduplicated per (rule, group), each firing until it has not
//! been observed for `resolve_after`, then resolved. The manager is pure and
//! runs on the caller's clock (`now_ns`, nanoseconds since the Unix epoch),
//! so its lifecycle is tested with virtual time. The task that runs it is
//! [`super::service`]; evidence and delivery are its siblings.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::flow::key::FlowKey;
use crate::rules::Finding;

/// How urgent an incident is: the severity of the rule that reports it.
pub use crate::rules::Severity;

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
    /// Not observed for `resolve_after`; final.
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

/// An incident: one firing-to-resolved episode of a (rule, group).
/// The JSON form round-trips (times to the millisecond), which is how open
/// incidents survive a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Unique id of this episode (fingerprint and start time).
    pub id: String,
    /// Stable hash of rule and group, shared by every episode of the pair.
    pub fingerprint: String,
    /// Rule name.
    pub rule: String,
    /// Severity of the observation that fired it (fixed: it is a label, and
    /// changing a label would make Alertmanager see another alert).
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
    /// Observations folded into this incident.
    pub count: u64,
    /// Flow of the latest observation that named one.
    pub flow: Option<FlowKey>,
    /// Latest summary.
    pub summary: String,
    /// Latest evidence.
    pub evidence: serde_json::Value,
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
}

/// Flows whose activity an incident remembers; beyond, it starts afresh.
const ACTIVITY_FLOWS: usize = 1024;

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

/// A lifecycle change, carrying the incident as it is after the change.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A new incident.
    Fired(Incident),
    /// An incident that stopped being observed.
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
    /// Opened a new incident (its `Fired` comes with the next tick).
    New(String),
    /// Updated the open incident with this id.
    Repeated(String),
    /// Dropped: `max_open` incidents are already firing.
    Suppressed,
}

/// Settings of the manager (from `[incidents]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ManagerSettings {
    /// Quiet time after which a firing incident resolves.
    pub resolve_after: Duration,
    /// Value of the `host` label.
    pub host: String,
    /// Most incidents firing at once; further (rule, group) pairs are suppressed and counted.
    pub max_open: usize,
    /// Resolved incidents kept for the API.
    pub keep_resolved: usize,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            resolve_after: Duration::from_secs(300),
            host: String::new(),
            max_open: 1000,
            keep_resolved: 200,
        }
    }
}

/// Deduplicates observations into incidents and drives their lifecycle.
#[derive(Debug)]
pub struct IncidentManager {
    settings: ManagerSettings,
    /// Firing incidents by fingerprint.
    open: HashMap<String, Incident>,
    /// Fingerprints opened since the last tick.
    fired: Vec<String>,
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

impl IncidentManager {
    /// An empty manager.
    pub fn new(settings: ManagerSettings) -> Self {
        Self {
            settings,
            open: HashMap::new(),
            fired: Vec::new(),
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
        let fp = fingerprint(&obs.rule, &obs.group);
        if let Some(inc) = self.open.get_mut(&fp) {
            inc.count += 1;
            if grew(&mut inc.activity, &obs) {
                inc.last_seen = inc.last_seen.max(now_ns);
            }
            if obs.flow.is_some() {
                inc.flow = obs.flow;
            }
            inc.summary = obs.summary;
            inc.evidence = obs.evidence;
            fill_annotations(inc);
            return Observed::Repeated(inc.id.clone());
        }
        if self.open.len() >= self.settings.max_open {
            self.suppressed += 1;
            return Observed::Suppressed;
        }
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), obs.rule.clone());
        labels.insert("severity".to_string(), obs.severity.as_str().to_string());
        labels.insert("group".to_string(), obs.group.clone());
        labels.insert("host".to_string(), self.settings.host.clone());
        let mut inc = Incident {
            id: format!("{fp}-{now_ns:x}"),
            fingerprint: fp.clone(),
            rule: obs.rule,
            severity: obs.severity,
            group: obs.group,
            status: Status::Firing,
            starts_at: now_ns,
            ends_at: None,
            last_seen: now_ns,
            count: 1,
            flow: obs.flow,
            summary: obs.summary,
            evidence: obs.evidence,
            annotations: BTreeMap::new(),
            labels,
            stitch: None,
            activity: HashMap::new(),
        };
        if let Some(at) = obs.activity_ns {
            inc.activity.insert(obs.flow, at);
        }
        fill_annotations(&mut inc);
        let id = inc.id.clone();
        self.open.insert(fp.clone(), inc);
        self.fired.push(fp);
        Observed::New(id)
    }

    /// Advances the clock: returns the incidents fired since the last tick,
    /// then those that were not observed for `resolve_after` (resolved now).
    pub fn tick(&mut self, now_ns: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for fp in std::mem::take(&mut self.fired) {
            if let Some(inc) = self.open.get(&fp) {
                out.push(Transition::Fired(inc.clone()));
            }
        }
        let after = u64::try_from(self.settings.resolve_after.as_nanos()).unwrap_or(u64::MAX);
        let mut quiet: Vec<String> = self
            .open
            .iter()
            .filter(|(_, i)| now_ns.saturating_sub(i.last_seen) >= after)
            .map(|(fp, _)| fp.clone())
            .collect();
        // Deterministic order: oldest first.
        quiet.sort_by_key(|fp| self.open.get(fp).map(|i| (i.starts_at, i.id.clone())));
        for fp in quiet {
            let Some(mut inc) = self.open.remove(&fp) else {
                continue;
            };
            inc.status = Status::Resolved;
            inc.ends_at = Some(now_ns.max(inc.starts_at));
            out.push(Transition::Resolved(inc.clone()));
            self.resolved.push_back(inc);
            while self.resolved.len() > self.settings.keep_resolved {
                self.resolved.pop_front();
            }
        }
        out
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
    /// keep their ids and resolve normally unless observed again. Returns
    /// how many were taken (resolved or duplicate entries are skipped, and
    /// `max_open` holds).
    pub fn restore(&mut self, incidents: Vec<Incident>) -> usize {
        let mut n = 0;
        for inc in incidents {
            if inc.status != Status::Firing
                || self.open.len() >= self.settings.max_open
                || self.open.contains_key(&inc.fingerprint)
            {
                continue;
            }
            self.open.insert(inc.fingerprint.clone(), inc);
            n += 1;
        }
        n
    }

    /// Observations dropped because `max_open` incidents were firing.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Annotations derived from the latest observation (others, such as the
/// evidence file, are added with [`IncidentManager::annotate`] and kept).
fn fill_annotations(inc: &mut Incident) {
    inc.annotations
        .insert("summary".into(), inc.summary.clone());
    inc.annotations
        .insert("evidence".into(), inc.evidence.to_string());
    if let Some(f) = &inc.flow {
        inc.annotations.insert("flow".into(), f.to_string());
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
    fn groups_and_rules_are_separate_incidents_and_capped() {
        let mut m = manager();
        assert!(matches!(
            m.observe(obs("a", "g1", "x"), T0),
            Observed::New(_)
        ));
        assert!(matches!(
            m.observe(obs("a", "g2", "x"), T0),
            Observed::New(_)
        ));
        assert!(matches!(
            m.observe(obs("b", "g1", "x"), T0),
            Observed::New(_)
        ));
        assert_eq!(m.observe(obs("c", "g1", "x"), T0), Observed::Suppressed);
        assert_eq!(m.suppressed(), 1);
        assert_eq!(m.tick(T0).len(), 3);
        // All resolve; only keep_resolved = 2 stay listed.
        assert_eq!(m.tick(T0 + 60 * S).len(), 3);
        assert_eq!(m.list().len(), 2);
        assert!(matches!(
            m.observe(obs("c", "g1", "x"), T0 + 61 * S),
            Observed::New(_)
        ));
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
        assert_eq!(&back, inc, "the stitch report survives a restart");
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
