//! The incident task: owns the manager, receives observations through a
//! bounded channel, ticks every second, writes evidence for new incidents
//! and hands transitions to delivery.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::wall_ns;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::config::AlertingConfig;
use super::evidence::{EvidenceError, EvidenceStore, Retention};
use super::{IncidentManager, ManagerSettings, Observation, Observed, Transition};
use crate::alerting::delivery::{
    Backoff, DeliveryError, DeliveryMetrics, DeliverySettings, Dispatcher,
};
use crate::alerting::spool::{Spool, SpoolError};
use crate::flow::history::{FlowHistory, HistoryBounds};
use crate::health::{Health, Trouble};
use crate::stitch::live::{LiveReport, LiveStitch};
use crate::stitch::peer::FlowQuery;

/// Evaluations (each a batch of observations) buffered between the rules
/// and the incident task.
pub const OBSERVATION_QUEUE: usize = 64;
/// Lifecycle tick.
const TICK: Duration = Duration::from_secs(1);
/// Stitches of incident flows running at once (each asks every peer).
const MAX_STITCHES_IN_FLIGHT: usize = 4;
/// Stitch results waiting for the incident task.
const STITCH_QUEUE: usize = 64;
/// Annotation with the [`crate::stitch::summary::summarize`] sentence.
pub const STITCH_ANNOTATION: &str = "stitch";
/// Annotation with peer and stitcher errors, when there are any.
pub const STITCH_ERRORS_ANNOTATION: &str = "stitch_errors";

/// File in `incidents.spool_dir` holding the firing incidents across restarts
/// (not a `.json` name: the spool ignores it).
pub const STATE_FILE: &str = "open-incidents.state";

/// Errors starting the incident service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Evidence directory.
    #[error("incidents.evidence_dir: {0}")]
    Evidence(#[from] EvidenceError),
    /// Evidence anonymisation key.
    #[error("incidents.anonymize_key: {0}")]
    AnonymizeKey(#[from] crate::anonymize::AnonymizeError),
    /// Spool directory.
    #[error("incidents.spool_dir: {0}")]
    Spool(#[from] SpoolError),
    /// Delivery.
    #[error("incident delivery: {0}")]
    Delivery(#[from] DeliveryError),
}

/// Labels `{rule, severity}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleSeverityLabels {
    /// Rule name.
    pub rule: String,
    /// Severity.
    pub severity: String,
}

/// Labels `{rule}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// Rule name.
    pub rule: String,
}

/// Incident metrics. Rule names come from the rules configuration, so the
/// label sets are bounded by it.
#[derive(Clone, Debug, Default)]
pub struct IncidentMetrics {
    /// Incidents fired.
    pub fired: Family<RuleSeverityLabels, Counter>,
    /// Incidents firing now.
    pub firing: Family<RuleLabels, Gauge>,
    /// Observations dropped because `max_open` incidents were firing.
    pub suppressed: Counter,
}

impl IncidentMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "phalanx_incidents",
            "Incidents fired, by rule and severity",
            m.fired.clone(),
        );
        registry.register(
            "phalanx_incidents_firing",
            "Incidents firing now, by rule",
            m.firing.clone(),
        );
        registry.register(
            "phalanx_incident_observations_suppressed",
            "Rule reports dropped because incidents.max_open incidents were firing",
            m.suppressed.clone(),
        );
        m
    }

    fn on(&self, t: &Transition) {
        let inc = t.incident();
        let rule = RuleLabels {
            rule: inc.rule.clone(),
        };
        match t {
            Transition::Fired(_) => {
                self.fired
                    .get_or_create(&RuleSeverityLabels {
                        rule: inc.rule.clone(),
                        severity: inc.severity.as_str().to_string(),
                    })
                    .inc();
                self.firing.get_or_create(&rule).inc();
            }
            Transition::Resolved(_) => {
                self.firing.get_or_create(&rule).dec();
            }
        }
    }
}

/// What the HTTP API reads: the manager and the evidence directory.
#[derive(Clone, Debug)]
pub struct IncidentsView {
    /// The incidents (locked briefly by the task and the handlers).
    pub manager: Arc<Mutex<IncidentManager>>,
    /// Evidence files.
    pub evidence: Arc<EvidenceStore>,
}

/// Shared per-flow packet history fed by the flow task.
pub type SharedHistory = Arc<Mutex<FlowHistory>>;

/// An evidence history of these bounds (`[history]`, [`HistoryConfig::evidence`](crate::flow::history::HistoryConfig::evidence)).
pub fn history(bounds: HistoryBounds) -> SharedHistory {
    Arc::new(Mutex::new(FlowHistory::new(bounds)))
}

/// The incident task's state.
#[derive(Debug)]
pub struct IncidentService {
    view: IncidentsView,
    history: SharedHistory,
    dispatcher: Dispatcher,
    metrics: IncidentMetrics,
    external_url: String,
    resend: Duration,
    state_path: PathBuf,
    stitch: Option<Stitching>,
    /// Where failed writes are counted.
    health: Health,
}

/// Stitching of incident flows with the peer daemons.
///
/// The firing notification goes out at once; the flow is stitched in a
/// spawned task (peers answer within `stitch.timeout_ms` or are reported as
/// failed), and when the result is ready the incident gets the `stitch`
/// annotation (plus `stitch_errors` when a peer failed) and the report,
/// then is notified again as firing (same labels, so Alertmanager and
/// webhook receivers update the alert rather than add one). While the
/// incident fires it is stitched again every `stitch.refresh_secs`; a new
/// notification goes out only when the sentence changes.
#[derive(Debug)]
struct Stitching {
    live: Arc<LiveStitch>,
    tx: mpsc::Sender<(String, LiveReport)>,
    rx: Option<mpsc::Receiver<(String, LiveReport)>>,
    /// Per firing incident id.
    state: HashMap<String, StitchState>,
}

#[derive(Debug)]
struct StitchState {
    started: Instant,
    in_flight: bool,
    /// Sentence of the last notification sent with it.
    notified: Option<String>,
}

/// The system host name ("unknown" when unreadable).
pub fn system_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl IncidentService {
    /// Opens the evidence and spool directories, registers the metrics,
    /// starts delivery (replaying the spool) and returns the service with
    /// the view the API serves.
    pub async fn start(
        cfg: &AlertingConfig<'_>,
        history: SharedHistory,
        registry: &mut Registry,
        health: &Health,
    ) -> Result<(Self, IncidentsView), ServiceError> {
        let ic = cfg.incidents;
        let anon = ic.anonymizer()?;
        let mut evidence = EvidenceStore::open(
            &ic.evidence_dir,
            Retention {
                max_bytes: ic.evidence_max_bytes,
                max_files: ic.evidence_max_files,
            },
        )?;
        if let Some(a) = anon {
            info!(key = %ic.anonymize_key.display(), "evidence files are anonymised");
            evidence = evidence.with_anonymizer(a);
        }
        let evidence = Arc::new(evidence);
        let spool = Arc::new(Spool::open(
            &ic.spool_dir,
            ic.spool_max_files,
            &[STATE_FILE],
        )?);
        let external_url = cfg.external_url();
        let host = if ic.host.is_empty() {
            system_host()
        } else {
            ic.host.clone()
        };
        let manager = Arc::new(Mutex::new(IncidentManager::new(ManagerSettings {
            resolve_after: Duration::from_secs(ic.resolve_after_secs),
            update_after: Duration::from_secs(ic.update_secs),
            host,
            max_open: ic.max_open,
            keep_resolved: ic.keep_resolved,
        })));
        let metrics = IncidentMetrics::register(registry);
        let state_path = ic.spool_dir.join(STATE_FILE);
        restore_state(&state_path, &manager, &metrics);
        let delivery_metrics = DeliveryMetrics::register(registry);
        let dispatcher = Dispatcher::start(
            cfg.receivers(),
            DeliverySettings {
                external_url: external_url.clone(),
                request_timeout: Duration::from_millis(ic.request_timeout_ms),
                backoff: Backoff {
                    initial: Duration::from_millis(ic.retry_initial_ms),
                    max: Duration::from_millis(ic.retry_max_ms),
                },
                give_up_after: Duration::from_secs(ic.retry_give_up_secs),
            },
            spool,
            delivery_metrics,
            health.clone(),
        )
        .await?;
        let view = IncidentsView { manager, evidence };
        Ok((
            Self {
                view: view.clone(),
                history,
                dispatcher,
                metrics,
                external_url,
                resend: Duration::from_secs(cfg.alertmanager.resend_secs),
                state_path,
                stitch: None,
                health: health.clone(),
            },
            view,
        ))
    }

    /// Stitches the flow of every firing incident with the peers of
    /// `live` (nothing happens when it has no peers).
    pub fn with_stitch(mut self, live: Arc<LiveStitch>) -> Self {
        if live.has_peers() {
            let (tx, rx) = mpsc::channel(STITCH_QUEUE);
            self.stitch = Some(Stitching {
                live,
                tx,
                rx: Some(rx),
                state: HashMap::new(),
            });
        }
        self
    }

    /// Runs until the observation channel closes, then stops delivery
    /// (pending deliveries stay spooled).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Observation>>) {
        let mut stitched = self.stitch.as_mut().and_then(|s| s.rx.take());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resend = tokio::time::interval(self.resend);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resend.tick().await; // the first tick is immediate: nothing fires yet
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    self.observe(batch);
                    // Fire without waiting for the tick.
                    self.tick().await;
                }
                _ = tick.tick() => self.tick().await,
                Some((id, report)) = async {
                    match stitched.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.on_stitched(id, report).await,
                _ = resend.tick() => {
                    self.resend();
                    self.save_state().await;
                }
            }
        }
        info!("observation channel closed; incident task stopping");
        self.save_state().await;
        self.dispatcher.shutdown().await;
    }

    /// Folds one evaluation's observations, all before the next tick, so
    /// that an incident is named after the best of them.
    fn observe(&mut self, batch: Vec<Observation>) {
        let Ok(mut m) = self.view.manager.lock() else {
            warn!("incident manager poisoned; observations dropped");
            return;
        };
        let now = wall_ns();
        for obs in batch {
            if let Observed::Suppressed = m.observe(obs, now) {
                self.metrics.suppressed.inc();
            }
        }
    }

    async fn tick(&mut self) {
        let now = wall_ns();
        let (transitions, updates) = match self.view.manager.lock() {
            Ok(mut m) => (m.tick(now), m.updates(now)),
            Err(_) => return,
        };
        let changed = !transitions.is_empty() || !updates.is_empty();
        for mut t in transitions {
            if let Transition::Fired(inc) = &mut t {
                if let Some(updated) = self.write_evidence(inc).await {
                    *inc = updated;
                }
                info!(incident = %inc.id, rule = %inc.rule, group = %inc.group, "incident fired");
            } else {
                info!(incident = %t.incident().id, rule = %t.incident().rule, "incident resolved");
            }
            self.metrics.on(&t);
            self.dispatcher.dispatch(&t).await;
        }
        // Same labels: receivers update the alert with the new figures.
        for inc in updates {
            debug!(incident = %inc.id, flows = inc.flows, clients = inc.clients, "incident updated");
            self.dispatcher.dispatch(&Transition::Fired(inc)).await;
        }
        if changed {
            self.save_state().await;
        }
        self.start_stitches();
    }

    /// Starts a stitch for each firing incident with a flow that was never
    /// stitched or not within `stitch.refresh_secs`, at most
    /// [`MAX_STITCHES_IN_FLIGHT`] at once.
    fn start_stitches(&mut self) {
        let Some(st) = self.stitch.as_mut() else {
            return;
        };
        let firing: Vec<(String, crate::flow::FlowKey)> = match self.view.manager.lock() {
            Ok(m) => m
                .firing()
                .into_iter()
                .filter_map(|i| i.flow.map(|f| (i.id.clone(), f)))
                .collect(),
            Err(_) => return,
        };
        st.state.retain(|id, _| firing.iter().any(|(f, _)| f == id));
        let refresh = st.live.refresh();
        let mut in_flight = st.state.values().filter(|s| s.in_flight).count();
        for (id, flow) in firing {
            if in_flight >= MAX_STITCHES_IN_FLIGHT {
                break;
            }
            let due = st
                .state
                .get(&id)
                .is_none_or(|s| !s.in_flight && s.started.elapsed() >= refresh);
            if !due {
                continue;
            }
            let entry = st.state.entry(id.clone()).or_insert(StitchState {
                started: Instant::now(),
                in_flight: true,
                notified: None,
            });
            entry.started = Instant::now();
            entry.in_flight = true;
            in_flight += 1;
            let (live, tx) = (st.live.clone(), st.tx.clone());
            let span = info_span!("stitch", incident = %id);
            tokio::spawn(
                async move {
                    let report = live.stitch_flow(flow, FlowQuery::for_key(&flow)).await;
                    let _ = tx.send((id, report)).await;
                }
                .instrument(span),
            );
        }
    }

    /// Puts a stitch result on its incident and notifies again when the
    /// sentence changed.
    async fn on_stitched(&mut self, id: String, report: LiveReport) {
        let Some(st) = self.stitch.as_mut() else {
            return;
        };
        let Some(state) = st.state.get_mut(&id) else {
            return; // resolved meanwhile
        };
        state.in_flight = false;
        let value = match serde_json::to_value(&report) {
            Ok(v) => v,
            Err(e) => {
                warn!(incident = %id, "encoding stitch report: {e}");
                return;
            }
        };
        let updated = match self.view.manager.lock() {
            Ok(mut m) => m.set_stitch(
                &id,
                value,
                &[
                    (STITCH_ANNOTATION, report.summary.clone()),
                    (STITCH_ERRORS_ANNOTATION, report.errors()),
                ],
            ),
            Err(_) => return,
        };
        let Some(inc) = updated else { return };
        match &report.summary {
            Some(s) => info!(incident = %id, "stitched: {s}"),
            None => warn!(incident = %id, errors = ?report.errors(), "not stitched"),
        }
        if report.summary.is_some() && state.notified != report.summary {
            state.notified = report.summary.clone();
            self.dispatcher.dispatch(&Transition::Fired(inc)).await;
            self.save_state().await;
        }
    }

    /// Persists the firing incidents, so that after a restart they keep
    /// their ids and still get their resolved notification.
    async fn save_state(&self) {
        let open = match self.view.manager.lock() {
            Ok(m) => m.snapshot_open(),
            Err(_) => return,
        };
        let bytes = match serde_json::to_vec(&open) {
            Ok(b) => b,
            Err(e) => {
                warn!("encoding incident state: {e}");
                return;
            }
        };
        let path = self.state_path.clone();
        match tokio::task::spawn_blocking(move || super::spool::write_reserved(&path, &bytes)).await
        {
            Ok(Ok(())) => self.health.succeeded(Trouble::StateWrite),
            Ok(Err(e)) => {
                warn!("saving incident state: {e}");
                self.health.failed(Trouble::StateWrite, e);
            }
            Err(e) => {
                warn!("saving incident state: {e}");
                self.health.failed(Trouble::StateWrite, e);
            }
        }
    }

    /// Writes the flow's recent records; returns the incident annotated
    /// with the file, or `None` when there is nothing to write.
    async fn write_evidence(&self, inc: &super::Incident) -> Option<super::Incident> {
        let flow = inc.flow?;
        let records = self.history.lock().ok()?.recent(&flow);
        if records.is_empty() {
            debug!(incident = %inc.id, "no packet history for the flow; no evidence file");
            return None;
        }
        let store = self.view.evidence.clone();
        let id = inc.id.clone();
        let comment = format!("{}: {}", inc.rule, inc.summary);
        let written =
            tokio::task::spawn_blocking(move || store.write(&id, &comment, &records)).await;
        let w = match written {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                warn!(incident = %inc.id, "writing evidence: {e}");
                self.health.failed(Trouble::EvidenceWrite, e);
                return None;
            }
            Err(e) => {
                warn!(incident = %inc.id, "writing evidence: {e}");
                self.health.failed(Trouble::EvidenceWrite, e);
                return None;
            }
        };
        self.health.succeeded(Trouble::EvidenceWrite);
        debug!(incident = %inc.id, file = %w.name, packets = w.packets, bytes = w.bytes, "evidence written");
        let url = format!("{}/api/v1/incidents/{}/pcapng", self.external_url, inc.id);
        let mut m = self.view.manager.lock().ok()?;
        m.annotate(&inc.id, "pcapng", w.name)?;
        m.annotate(&inc.id, "pcapng_url", url)
    }

    fn resend(&self) {
        let Ok(m) = self.view.manager.lock() else {
            return;
        };
        self.dispatcher.resend_firing(&m.firing());
    }
}

/// Takes back the firing incidents of the previous run (a missing file is
/// a first start; a damaged one is reported and ignored).
fn restore_state(
    path: &std::path::Path,
    manager: &Mutex<IncidentManager>,
    metrics: &IncidentMetrics,
) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            warn!(file = %path.display(), "reading incident state: {e}");
            return;
        }
    };
    let incidents: Vec<super::Incident> = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            warn!(file = %path.display(), "ignoring damaged incident state: {e}");
            return;
        }
    };
    let Ok(mut m) = manager.lock() else { return };
    let n = m.restore(incidents);
    // Called on a fresh manager: everything firing now was restored.
    for inc in m.firing() {
        metrics
            .firing
            .get_or_create(&RuleLabels {
                rule: inc.rule.clone(),
            })
            .inc();
    }
    if n > 0 {
        info!(
            restored = n,
            "firing incidents taken over from the previous run"
        );
    }
}
