//! `phalanx analyze`: offline analysis of capture files.
//!
//! The files are read in the order given and fed, as one record stream, to
//! the same [`FlowTable`] the daemon runs (so rotated pieces of one capture
//! analyse as one). Every flow that was seen is reported, including flows
//! the table evicted on the way.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use phalanx_common::PacketMeta;
use serde::Serialize;
use thiserror::Error;

use crate::capture::file::{self, FileError};
use crate::config::Config;
use crate::flow::{FlowConfig, FlowSummary, FlowTable, TableStats};
use crate::rules::{Finding, RuleEngine};

/// Arguments of `phalanx analyze`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng, optionally zstd-compressed), read in
    /// this order as one stream.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON document (`flows`, `findings`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Configuration file (its `[flows]` table sets the flow table, its
    /// `[rules.*]` tables the diagnosis rules).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What was read from one input file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InputReport {
    /// File name as given.
    pub file: String,
    /// Frames in the file.
    pub frames: u64,
    /// Records produced (IP frames).
    pub records: u64,
    /// Frames that were not IP.
    pub not_ip: u64,
    /// Frames with damaged headers.
    pub malformed: u64,
    /// Frames of unsupported link types.
    pub unsupported_link: u64,
    /// Damage that ended reading early (everything before it was analysed).
    pub error: Option<String>,
}

/// The analysis result; `--json` prints it as is.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every flow seen, in order of first packet.
    pub flows: Vec<FlowSummary>,
    /// Diagnosis findings over the final flow set.
    pub findings: Vec<Finding>,
    /// Flow table counters.
    pub stats: TableStats,
    /// Per-input reading figures (empty for in-memory records).
    pub inputs: Vec<InputReport>,
}

/// Errors of the analysis.
#[derive(Debug, Error)]
pub enum AnalyzeError {
    /// A file could not be opened or is not a capture at all.
    #[error(transparent)]
    Open(#[from] FileError),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// Encoding JSON failed.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Analyses records from memory: the pure core of `phalanx analyze`, with
/// the built-in rules at their default thresholds.
pub fn analyze_records(records: impl IntoIterator<Item = PacketMeta>, cfg: &FlowConfig) -> Report {
    analyze_records_with(records, cfg, &RuleEngine::default())
}

/// [`analyze_records`] with a given rule engine.
pub fn analyze_records_with(
    records: impl IntoIterator<Item = PacketMeta>,
    cfg: &FlowConfig,
    rules: &RuleEngine,
) -> Report {
    let mut table = FlowTable::new(cfg.clone());
    table.keep_finished(true);
    for r in records {
        table.ingest(&r);
    }
    finish(table, Vec::new(), rules)
}

fn finish(table: FlowTable, inputs: Vec<InputReport>, rules: &RuleEngine) -> Report {
    // The capture's own clock: its last record.
    let now = table.now();
    let rep = table.into_report();
    let findings = rules.evaluate(&rep.flows, now);
    Report {
        flows: rep.flows,
        findings,
        stats: rep.stats,
        inputs,
    }
}

/// Analyses capture files with the built-in rules at their default
/// thresholds. A file that cannot be opened is an error; damage inside a
/// file ends that file early and is reported in its
/// [`InputReport::error`] (and logged), the records before it still count.
pub fn analyze_files(files: &[PathBuf], cfg: &FlowConfig) -> Result<Report, AnalyzeError> {
    analyze_files_with(files, cfg, &RuleEngine::default())
}

/// [`analyze_files`] with a given rule engine.
pub fn analyze_files_with(
    files: &[PathBuf],
    cfg: &FlowConfig,
    rules: &RuleEngine,
) -> Result<Report, AnalyzeError> {
    let mut table = FlowTable::new(cfg.clone());
    table.keep_finished(true);
    let progress = std::io::stderr().is_terminal();
    let mut inputs = Vec::with_capacity(files.len());
    for path in files {
        let name = path.display().to_string();
        let mut reader = file::open(path)?;
        let mut input = InputReport {
            file: name.clone(),
            ..Default::default()
        };
        let mut n: u64 = 0;
        for item in reader.by_ref() {
            match item {
                Ok(rec) => {
                    table.ingest(&rec);
                    n += 1;
                    if progress && n.is_multiple_of(1 << 20) {
                        eprint!("\r{name}: {n} records");
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "capture damaged; analysed up to the damage");
                    input.error = Some(e.to_string());
                }
            }
        }
        if progress && n >= 1 << 20 {
            eprintln!("\r{name}: {n} records");
        }
        let st = reader.stats();
        input.frames = st.frames;
        input.records = st.records;
        input.not_ip = st.not_ip;
        input.malformed = st.malformed;
        input.unsupported_link = st.unsupported_link;
        inputs.push(input);
    }
    Ok(finish(table, inputs, rules))
}

/// Runs `phalanx analyze` with the configuration already loaded (its
/// `[flows]` and `[rules.*]` tables), printing to stdout.
pub fn run(args: &AnalyzeArgs, cfg: &Config) -> anyhow::Result<()> {
    let rules = RuleEngine::new(&cfg.rules)?;
    let report = analyze_files_with(&args.files, &cfg.flows, &rules)?;
    for i in report.inputs.iter().filter(|i| i.error.is_some()) {
        if let Some(e) = &i.error {
            eprintln!("warning: {e} (analysed the records before it)");
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_report(&report, args.json, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Writes the report as JSON or as the human table.
pub fn write_report(report: &Report, json: bool, out: &mut dyn Write) -> Result<(), AnalyzeError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    write_table(report, out)?;
    Ok(())
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
}

fn endpoint(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn write_table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<44} {:<44} {:<6} {:<12} {:>8} {:>11} {:>9} {:>9} {:>13} {:>5} {:>6} {:>5} {:>9}",
        "SRC",
        "DST",
        "PROTO",
        "STATE",
        "PKTS",
        "BYTES",
        "RTT p50",
        "RTT p99",
        "RETX f/t/s",
        "OOO",
        "DUPACK",
        "ZWIN",
        "JITTER"
    )?;
    for f in &report.flows {
        let vlan = if f.vlan != [0, 0] {
            format!(" vlan {}/{}", f.vlan[0], f.vlan[1])
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:<44} {:<44} {:<6} {:<12} {:>8} {:>11} {:>9} {:>9} {:>13} {:>5} {:>6} {:>5} {:>9}{}",
            endpoint(f.src, f.sport),
            endpoint(f.dst, f.dport),
            f.proto,
            f.state,
            f.packets,
            f.bytes,
            opt_ms(f.rtt.p50_ms),
            opt_ms(f.rtt.p99_ms),
            format!(
                "{}/{}/{}",
                f.retrans_fast, f.retrans_timeout, f.retrans_spurious
            ),
            f.out_of_order,
            f.dup_acks,
            f.zero_windows,
            opt_ms(f.jitter_ms),
            vlan
        )?;
    }
    let s = &report.stats;
    writeln!(
        out,
        "{} flows, {} records ({} expired, {} evicted when full); RTT in ms; RETX = fast/timeout/spurious",
        report.flows.len(),
        s.records,
        s.flows_expired,
        s.flows_evicted_full
    )?;
    if !report.findings.is_empty() {
        writeln!(out)?;
        writeln!(out, "{} findings:", report.findings.len())?;
        for x in &report.findings {
            writeln!(out, "{:<8} {:<22} {}", x.severity, x.rule, x.summary)?;
        }
    }
    Ok(())
}
