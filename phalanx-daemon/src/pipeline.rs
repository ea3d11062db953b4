//! The live pipeline's stages after capture.
//!
//! The ring consumer hands each batch of records to [`Pipeline`]: the
//! stitch recorder and the evidence history keep each flow's recent
//! packets, the flow table updates its flows and the KPI metrics their
//! groups. [`rules_loop`] evaluates the diagnosis rules on snapshots of the
//! table and sends each finding to the incident task. `daemon.rs` wires
//! these tasks; nothing here knows about signals or sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use phalanx_common::PacketMeta;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tracing::error;

use crate::alerting::service::SharedHistory;
use crate::alerting::Observation;
use crate::capture::ring::{self, RecordClock};
use crate::config::{Config, ConfigError, Exemptions};
use crate::flow::history::FlowHistory;
use crate::flow::FlowTable;
use crate::metrics::kpi::FlowMetrics;
use crate::rules::RuleEngine;
use crate::stitch::live::LiveStitch;

/// How often the rules look at the live flow table.
pub const RULES_INTERVAL: Duration = Duration::from_secs(2);

/// Evaluates the diagnosis rules over the live flow table every
/// [`RULES_INTERVAL`] and reports each finding to the incident manager.
/// The table's clock first moves on to `clock`'s record time, so flows
/// expire on a link gone quiet; each finding carries the time of its
/// latest packet, so lifetime figures re-read from a quiet flow do not
/// keep its incident open.
pub async fn rules_loop(
    flows: Arc<Mutex<FlowTable>>,
    mut diagnosis: Diagnosis,
    observations: mpsc::Sender<Vec<Observation>>,
    clock: RecordClock,
) {
    let mut tick = tokio::time::interval(RULES_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (summaries, now) = match flows.lock() {
            Ok(mut t) => {
                t.advance(clock.now_ns());
                (t.snapshot(), t.now())
            }
            Err(_) => {
                error!("flow table poisoned; stopping the rules task");
                return;
            }
        };
        let mut findings = diagnosis.engine.evaluate(&summaries, now);
        diagnosis
            .exemptions
            .apply(&mut findings, crate::clock::wall_ns());
        // One batch per evaluation: the incident task sees together the
        // findings that describe one fault.
        let batch: Vec<Observation> = findings.into_iter().map(Observation::from).collect();
        if !batch.is_empty() && observations.send(batch).await.is_err() {
            return;
        }
    }
}

/// What turns flows into observations: the rules, and the exemptions
/// that silence some of their findings.
pub struct Diagnosis {
    /// The rules.
    pub engine: RuleEngine,
    /// `[[exemptions]]`, counted in the registry.
    pub exemptions: Exemptions,
}

impl Diagnosis {
    /// The rules and exemptions of `cfg`; the exemption counter goes into
    /// `registry`.
    pub fn new(cfg: &Config, registry: &mut Registry) -> Result<Self, ConfigError> {
        let engine =
            RuleEngine::new(&cfg.rules).map_err(|e| ConfigError::Semantic(e.to_string()))?;
        let mut exemptions = cfg.exemptions()?;
        exemptions.register(registry);
        Ok(Self { engine, exemptions })
    }
}

/// The work on each batch of records: the per-flow histories kept for
/// stitch peers and for incident evidence, the flow table and the
/// per-group KPI metrics. Shared state, so the API, the rules and the
/// incident task read what it writes.
#[derive(Clone)]
pub struct Pipeline {
    /// Tracked flows.
    pub flows: Arc<Mutex<FlowTable>>,
    /// Per-group KPI figures.
    pub metrics: Arc<Mutex<FlowMetrics>>,
    /// Recent packets per flow, for incident evidence.
    pub history: SharedHistory,
    /// Recent observations per flow, for stitch peers.
    pub live: Arc<LiveStitch>,
}

/// A lock of the flow state was poisoned by a panic elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("flow state poisoned")]
pub struct Poisoned;

impl Pipeline {
    /// A new flow table and KPI figures from `cfg`, with the histories the
    /// incident service and the stitch peers read.
    pub fn new(cfg: &Config, history: SharedHistory, live: Arc<LiveStitch>) -> Self {
        Self {
            flows: Arc::new(Mutex::new(FlowTable::new(cfg.flows.clone()))),
            metrics: Arc::new(Mutex::new(FlowMetrics::new(&cfg.metrics))),
            history,
            live,
        }
    }

    /// Applies one batch of records, waiting for the locks; expires idle
    /// flows by record time.
    pub fn ingest(&self, batch: &[PacketMeta]) -> Result<(), Poisoned> {
        self.live.record(batch);
        let mut history = self.history.lock().map_err(|_| Poisoned)?;
        let (Ok(mut table), Ok(mut metrics)) = (self.flows.lock(), self.metrics.lock()) else {
            return Err(Poisoned);
        };
        apply(batch, &mut history, &mut table, &mut metrics);
        Ok(())
    }
}

/// The batch's records into the evidence history, then the flow table
/// and the KPI metrics: two passes, which measured faster than one.
fn apply(
    batch: &[PacketMeta],
    history: &mut FlowHistory,
    table: &mut FlowTable,
    metrics: &mut FlowMetrics,
) {
    for m in batch {
        history.record(m);
    }
    for m in batch {
        table.ingest_observed(m, metrics);
    }
    if let Some(last) = batch.last() {
        table.expire(last.ts_ns);
    }
}

impl ring::Sink for Pipeline {
    /// Applies the batch only if every lock is free: a reader holding one
    /// (an API request, the rules, a peer) leaves it to the backlog, and
    /// no part of the batch is applied twice.
    fn offer(&mut self, batch: &[PacketMeta]) -> ring::Offer {
        use std::sync::TryLockError::{Poisoned as P, WouldBlock};
        let Some(mut live) = self.live.try_history_writer() else {
            return ring::Offer::Busy;
        };
        let locks = (
            self.history.try_lock(),
            self.flows.try_lock(),
            self.metrics.try_lock(),
        );
        match locks {
            (Ok(mut history), Ok(mut table), Ok(mut metrics)) => {
                live.record(batch);
                apply(batch, &mut history, &mut table, &mut metrics);
                ring::Offer::Taken
            }
            (Err(P(_)), ..) | (_, Err(P(_)), _) | (.., Err(P(_))) => {
                error!("flow state poisoned; stopping the ring consumer");
                ring::Offer::Closed
            }
            (Err(WouldBlock), ..) | (_, Err(WouldBlock), _) | (.., Err(WouldBlock)) => {
                ring::Offer::Busy
            }
        }
    }
}
