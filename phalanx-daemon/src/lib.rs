//! Phalanx: kernel-assisted network forensics, as a daemon (`phalanx run`)
//! and an offline analyser (`phalanx analyze`, `phalanx stitch`).
//!
//! # The pipeline
//!
//! Records flow one way, and each stage has one home:
//!
//! ```text
//!  capture ──► flow ──► rules ──► alerting
//!  (ring or     (table,   (findings) (incidents, evidence,
//!   file)        KPIs)                Alertmanager, webhooks)
//!                  │
//!                  ├──► metrics (Prometheus families by flow group)
//!                  └──► stitch  (per-flow history for peers; multi-hop reports)
//!  api reads flow, alerting, metrics and stitch; pipeline runs the live
//!  stages per batch; daemon wires the tasks; analyze runs them over files.
//! ```
//!
//! - [`capture`] yields [`phalanx_common::PacketMeta`] records from the
//!   kernel's ring buffer ([`capture::ring`]) or from pcap/pcapng files
//!   ([`capture::file`]); the same record either way.
//! - [`flow`] turns records into per-flow TCP/UDP figures ([`flow::FlowTable`],
//!   KPI definitions in its module documentation) and never knows the
//!   source: its time is the records' own.
//! - [`rules`] evaluates the diagnosis rules over flow summaries and
//!   produces findings.
//! - [`alerting`] folds findings into incidents (one per fault on a service),
//!   writes their evidence captures and delivers them.
//! - [`metrics`] aggregates every record's changes into Prometheus
//!   families by flow group, bounded by a series budget.
//! - [`stitch`] correlates the same flows seen at several points of a
//!   path, from files or live with peer daemons.
//! - [`pipeline`] holds the live per-batch stage and the rules loop;
//!   [`daemon`] starts, wires and stops the tasks; [`analyze`] runs the
//!   same engine and rules over files; [`api`] serves HTTP.
//! - [`config`] aggregates each module's configuration section and
//!   validates across them; [`clock`], [`sign`] and [`url`] are small
//!   shared helpers at the bottom, with [`health`] (failed writes counted,
//!   the daemon's degraded reasons).
//!
//! Modules import only downwards, in the order above from the bottom
//! (`clock`/`sign`/`url`, `flow`, `capture`, `rules`, `metrics`/`stitch`,
//! `alerting`, `config`, `api`, `pipeline`, `analyze`/`daemon`, `cli`);
//! `cargo xtask layers` checks it. `flow` sits below `capture` so that the
//! engine cannot import a packet source.

pub mod alerting;
pub mod analyze;
pub mod anonymize;
pub mod api;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod flow;
/// Fuzz target bodies, shared by `fuzz/` and the corpus replay test.
#[cfg(feature = "synth")]
pub mod fuzz;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod rules;
pub mod sign;
pub mod stitch;
#[cfg(any(test, feature = "synth"))]
pub mod synth;
pub mod url;
