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
use crate::flow::shared::Poisoned;
use crate::flow::{FlowTable, SharedTable};
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
    flows: Arc<SharedTable>,
    mut diagnosis: Diagnosis,
    observations: mpsc::Sender<Vec<Observation>>,
    clock: RecordClock,
) {
    let mut tick = tokio::time::interval(RULES_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let flows = flows.clone();
        // A blocking thread: the scan stands back for capture between chunks.
        let job = tokio::task::spawn_blocking(move || {
            let batch = diagnosis.observe(&flows, &clock);
            (diagnosis, batch)
        });
        let batch = match job.await {
            Ok((d, Ok(batch))) => {
                diagnosis = d;
                batch
            }
            Ok((_, Err(Poisoned))) | Err(_) => {
                error!("flow table poisoned; stopping the rules task");
                return;
            }
        };
        // One batch per evaluation: the incident task sees together the
        // findings that describe one fault.
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
    /// One evaluation of the live table: its clock moved on to `clock`'s
    /// record time, the rules fed a chunk of flows at a time, the
    /// exemptions applied.
    fn observe(
        &mut self,
        flows: &SharedTable,
        clock: &RecordClock,
    ) -> Result<Vec<Observation>, Poisoned> {
        let now = flows.write(|t| {
            t.advance(clock.now_ns());
            t.now()
        })?;
        let mut evaluation = self.engine.begin(now);
        flows.scan(0, |_, f| {
            evaluation.flow(f);
            std::ops::ControlFlow::Continue(())
        })?;
        let mut findings = evaluation.finish();
        self.exemptions
            .apply(&mut findings, crate::clock::wall_ns());
        Ok(findings.into_iter().map(Observation::from).collect())
    }

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
    pub flows: Arc<SharedTable>,
    /// Per-group KPI figures.
    pub metrics: Arc<Mutex<FlowMetrics>>,
    /// Recent packets per flow, for incident evidence.
    pub history: SharedHistory,
    /// Recent observations per flow, for stitch peers.
    pub live: Arc<LiveStitch>,
}

impl Pipeline {
    /// A new flow table and KPI figures from `cfg`, with the histories the
    /// incident service and the stitch peers read.
    pub fn new(cfg: &Config, history: SharedHistory, live: Arc<LiveStitch>) -> Self {
        Self {
            flows: Arc::new(SharedTable::new(FlowTable::new(cfg.flows.clone()))),
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
        let mut metrics = self.metrics.lock().map_err(|_| Poisoned)?;
        self.flows
            .write(|table| apply(batch, &mut history, table, &mut metrics))
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
            self.flows.try_write(),
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
