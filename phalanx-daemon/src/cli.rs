//! Command line: `phalanx run | analyze | stitch`.

use clap::{Parser, Subcommand};

/// Kernel-assisted network forensics: per-flow TCP KPIs (RTT, loss,
/// reordering, windows) from XDP/tcx capture or from pcap/pcapng files.
#[derive(Debug, Parser)]
#[command(name = "phalanx", version, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `phalanx=debug`.
    #[arg(long, global = true, env = "PHALANX_LOG", default_value = "info")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach to interfaces, serve /metrics and /api/v1 (needs root).
    Run(crate::daemon::RunArgs),
    /// Analyse pcap/pcapng files (optionally .zst) offline with the same engine.
    Analyze(crate::analyze::AnalyzeArgs),
    /// Correlate captures of the same flows taken at several points of the path:
    /// loss, delay, reordering and duplicates per link.
    Stitch(crate::stitch::StitchArgs),
}
