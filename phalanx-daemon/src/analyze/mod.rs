//! `phalanx analyze`: offline analysis of capture files.
//!
//! The files are read in the order given and fed, as one record stream, to
//! the same [`FlowTable`] the daemon runs (so rotated pieces of one capture
//! analyse as one). Every flow that was seen is reported, including flows
//! the table evicted on the way. The output is written as flows leave the
//! table ([`output`]): memory grows with the flows open at once, not with
//! the flows of the input.

mod output;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::mpsc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use phalanx_common::PacketMeta;
use serde::Serialize;
use thiserror::Error;

use crate::anonymize::Anonymizer;
use crate::capture::file::{self, CaptureReader, FileError, ReaderStats};
use crate::config::Config;
use crate::config::Exemptions;
use crate::flow::rank::RankBy;
use crate::flow::{FlowConfig, FlowSummary, FlowTable, TableStats};
use crate::rules::{Evaluation, Finding, RuleEngine};
use output::{AllRows, JsonStream, Order, Ranked, Sink};

/// Arguments of `phalanx analyze`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng, optionally zstd-compressed), read in
    /// this order as one stream; `-` reads standard input. A file that
    /// cannot be opened or is damaged is reported and the others are still
    /// analysed; the exit status is then 3 (2: usage, 1: nothing analysed).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON document (`flows`, `findings`, `stats`, `inputs`,
    /// `exempted`) instead of a table. It lists every flow, written as it
    /// ends: the flows that ended in the order they ended, then those still
    /// open at the end of the input in order of first packet.
    #[arg(long)]
    pub json: bool,
    /// List the TOP flows with the largest KEY, largest first, as
    /// `/api/v1/flows?sort=KEY` (retransmissions, retransmission_rate, rtt,
    /// srtt, jitter, dup_acks, out_of_order, zero_windows, packets, bytes,
    /// duration, last_seen), in the table or the JSON. Without it the table
    /// lists the TOP flows with findings first, then by retransmission rate.
    #[arg(long, value_name = "KEY")]
    pub sort: Option<RankBy>,
    /// How many flows a ranked list keeps (the table, or `--json --sort`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TOP, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub top: u64,
    /// The table lists every flow, as each ends, instead of the TOP.
    #[arg(long, conflicts_with_all = ["sort", "json"])]
    pub all: bool,
    /// Configuration file (its `[flows]` table sets the flow table, its
    /// `[rules.*]` tables the diagnosis rules).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Anonymise every IP address with this key (Crypto-PAn, prefix
    /// preserving: addresses of one subnet stay in one subnet). The records
    /// are rewritten as they are read, so every output shows only the
    /// anonymised addresses: flows, findings and their summaries. The file
    /// holds 32 random bytes, raw or as 64 hex digits (e.g. from `openssl
    /// rand -hex 32`); the same key gives the same addresses in every run,
    /// and as `phalanx stitch --anonymize-key` and `incidents.anonymize_key`.
    /// Exemption CIDRs are compared with the anonymised addresses.
    #[arg(long, value_name = "FILE")]
    pub anonymize_key: Option<PathBuf>,
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
    /// TCP packets seen a second time, captured at another point (the
    /// copies are not counted again).
    pub capture_duplicates: u64,
    /// Capture points the file holds: the most copies of one packet in it
    /// (2 for `tcpdump -i any` on a router; `phalanx stitch` can compare
    /// them when split by interface).
    pub capture_points: u32,
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
    /// Findings `[[exemptions]]` silenced, by rule.
    pub exempted: std::collections::BTreeMap<String, u64>,
}

/// Flows a ranked list keeps unless `--top` says otherwise.
pub const DEFAULT_TOP: u64 = 1000;

/// What follows the flows of an analysis.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// The cross-flow findings (the per-flow ones go with their flows).
    findings: Vec<Finding>,
    /// Flow table counters.
    stats: TableStats,
    /// Per-input reading figures.
    inputs: Vec<InputReport>,
    /// Findings `[[exemptions]]` silenced, by rule.
    exempted: std::collections::BTreeMap<String, u64>,
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
    let mut collect = Collect::default();
    let mut s = Streamer::new(cfg, rules, None);
    for r in records {
        s.table.ingest(&r);
    }
    let ended = s.finish(&mut |f, x| collect.flow(f, x));
    // Collecting cannot fail.
    let (findings, stats) = ended.unwrap_or_default();
    collect.into_report(Tail {
        findings,
        stats,
        ..Tail::default()
    })
}

/// The flow table and the rules, fed records in order. Each flow, as it
/// leaves the table (or, for those still open, at the end), is evaluated
/// by the per-flow rules at the record time it left and handed on with
/// its findings, so memory holds the flows open at once, not every flow
/// of the input.
struct Streamer<'r, 'x> {
    table: FlowTable,
    evaluation: Evaluation<'r>,
    exemptions: Option<&'x mut Exemptions>,
}

/// Where a [`Streamer`] hands each flow and its findings.
type FlowOut<'o> = dyn FnMut(FlowSummary, Vec<Finding>) -> Result<(), AnalyzeError> + 'o;

impl<'r, 'x> Streamer<'r, 'x> {
    fn new(
        cfg: &FlowConfig,
        rules: &'r RuleEngine,
        exemptions: Option<&'x mut Exemptions>,
    ) -> Self {
        let mut table = FlowTable::new(cfg.clone());
        table.keep_finished(true);
        Self {
            table,
            evaluation: rules.begin(0),
            exemptions,
        }
    }

    /// Hands on the flows that left the table.
    fn pass_finished(&mut self, out: &mut FlowOut<'_>) -> Result<(), AnalyzeError> {
        let left = self.table.take_finished();
        if left.is_empty() {
            return Ok(());
        }
        self.evaluation.advance(self.table.now());
        for f in left {
            self.pass(f, out)?;
        }
        Ok(())
    }

    fn pass(&mut self, f: FlowSummary, out: &mut FlowOut<'_>) -> Result<(), AnalyzeError> {
        self.evaluation.flow(&f);
        let mut findings = self.evaluation.take_findings();
        if let Some(e) = self.exemptions.as_deref_mut() {
            e.apply(&mut findings, crate::clock::wall_ns());
        }
        out(f, findings)
    }

    /// Hands on the flows still in the table, in order of first packet, at
    /// the input's last record time; returns the cross-flow findings and
    /// the table's counters.
    fn finish(mut self, out: &mut FlowOut<'_>) -> Result<(Vec<Finding>, TableStats), AnalyzeError> {
        self.pass_finished(out)?;
        self.evaluation.advance(self.table.now());
        let mut open: Vec<FlowSummary> = self.table.iter().map(FlowSummary::of).collect();
        open.sort_by_key(|f| f.first_ts_ns);
        let stats = self.table.stats().clone();
        // Freeing every flow's state is not on the way to the output.
        let table = std::mem::replace(&mut self.table, FlowTable::new(FlowConfig::default()));
        std::thread::spawn(move || drop(table));
        for f in open {
            self.pass(f, out)?;
        }
        let mut across = self.evaluation.finish();
        if let Some(e) = self.exemptions {
            e.apply(&mut across, crate::clock::wall_ns());
        }
        Ok((across, stats))
    }
}

/// Every flow and finding, for a [`Report`].
#[derive(Default)]
struct Collect {
    flows: Vec<FlowSummary>,
    findings: Vec<Finding>,
}

impl Collect {
    fn flow(&mut self, f: FlowSummary, findings: Vec<Finding>) -> Result<(), AnalyzeError> {
        self.flows.push(f);
        self.findings.extend(findings);
        Ok(())
    }

    /// The report, its flows in order of first packet.
    fn into_report(mut self, tail: Tail) -> Report {
        self.flows.sort_by_key(|f| f.first_ts_ns);
        self.findings.extend(tail.findings);
        Report {
            flows: self.flows,
            findings: self.findings,
            stats: tail.stats,
            inputs: tail.inputs,
            exempted: tail.exempted,
        }
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
    let mut collect = Collect::default();
    let tail = stream_files(files, Streamer::new(cfg, rules, None), None, &mut |f, x| {
        collect.flow(f, x)
    })?;
    Ok(collect.into_report(tail))
}

/// Reads `files` in order as one record stream through `s`, handing each
/// flow to `out` as it leaves; returns what follows the flows. With `anon`,
/// each record's addresses are anonymised before the flow table sees it.
///
/// Reading and parsing run on a second thread that hands batches of
/// records to the flow table, so the two halves of the work overlap.
fn stream_files(
    files: &[PathBuf],
    mut s: Streamer<'_, '_>,
    mut anon: Option<&mut Anonymizer>,
    out: &mut FlowOut<'_>,
) -> Result<Tail, AnalyzeError> {
    let mut inputs = Vec::with_capacity(files.len());
    let mut first_error = None;
    for path in files {
        let name = path.display().to_string();
        let opened = if path.as_os_str() == "-" {
            CaptureReader::from_reader_named(std::io::stdin(), "<stdin>")
        } else {
            file::open(path)
        };
        let reader = match opened {
            Ok(r) => r,
            // The other inputs still count; the caller reports this one.
            Err(e) => {
                inputs.push(InputReport {
                    file: name,
                    error: Some(e.to_string()),
                    ..Default::default()
                });
                first_error.get_or_insert(e);
                continue;
            }
        };
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let bar = progress_bar(&name, size, reader.is_compressed());
        let mut input = InputReport {
            file: name.clone(),
            ..Default::default()
        };
        let dups_before = s.table.stats().capture_duplicates;
        s.table.take_copies_peak();
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<PacketMeta>>(BATCHES_IN_FLIGHT);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<PacketMeta>>();
        let (stats, error, passed) = std::thread::scope(|sc| {
            let bar = bar.clone();
            let anon = anon.as_deref_mut();
            let producer =
                sc.spawn(move || read_batches(reader, &full_tx, &empty_rx, bar.as_ref(), anon));
            let mut passed = Ok(());
            for batch in full_rx {
                for rec in &batch {
                    s.table.ingest(rec);
                }
                passed = s.pass_finished(out);
                if passed.is_err() {
                    // Dropping the channel stops the reader.
                    break;
                }
                // The reader may have finished; a lost batch is only a lost reuse.
                let _ = empty_tx.send(batch);
            }
            let (stats, error) = producer
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (stats, error, passed)
        });
        passed?;
        if let Some(e) = error {
            tracing::warn!(file = %name, error = %e, "capture damaged; analysed up to the damage");
            input.error = Some(e.to_string());
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        input.frames = stats.frames;
        input.records = stats.records;
        input.not_ip = stats.not_ip;
        input.malformed = stats.malformed;
        input.unsupported_link = stats.unsupported_link;
        input.capture_duplicates = s.table.stats().capture_duplicates - dups_before;
        input.capture_points = u32::from(s.table.take_copies_peak()) + u32::from(input.records > 0);
        inputs.push(input);
    }
    // Nothing opened: there is nothing to report but the error.
    if let Some(e) = first_error.filter(|_| inputs.iter().all(|i| i.error.is_some())) {
        return Err(e.into());
    }
    let (findings, stats) = s.finish(out)?;
    Ok(Tail {
        findings,
        stats,
        inputs,
        exempted: Default::default(),
    })
}

/// Records per batch handed from the reading thread to the flow table.
const BATCH: usize = 2048;
/// Full batches queued at once (bounds the memory between the threads).
const BATCHES_IN_FLIGHT: usize = 4;
/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 32 << 20;

/// Reads every record into batches, anonymising each with `anon` (here,
/// beside the flow table's thread rather than on it); returns the reader's
/// counters and the damage that ended the file early, if any.
fn read_batches(
    mut reader: CaptureReader,
    full: &mpsc::SyncSender<Vec<PacketMeta>>,
    empty: &mpsc::Receiver<Vec<PacketMeta>>,
    bar: Option<&ProgressBar>,
    mut anon: Option<&mut Anonymizer>,
) -> (ReaderStats, Option<FileError>) {
    let mut send = |mut batch: Vec<PacketMeta>| {
        if let Some(a) = anon.as_deref_mut() {
            batch.iter_mut().for_each(|r| a.packet(r));
        }
        full.send(batch)
    };
    let mut error = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let more = match reader.read_batch(&mut batch, BATCH) {
            Ok(more) => more,
            Err(e) => {
                error = Some(e);
                false
            }
        };
        if !more {
            break;
        }
        if batch.len() == BATCH {
            let next = empty
                .try_recv()
                .map(|mut v| {
                    v.clear();
                    v
                })
                .unwrap_or_else(|_| Vec::with_capacity(BATCH));
            if send(std::mem::replace(&mut batch, next)).is_err() {
                break;
            }
            if let Some(bar) = bar {
                bar.set_position(reader.position());
            }
        }
    }
    if !batch.is_empty() {
        let _ = send(batch);
    }
    (reader.stats(), error)
}

/// A byte-position bar for a large uncompressed file, a record-count
/// spinner for a large compressed one; none when stderr is not a terminal.
fn progress_bar(name: &str, size: u64, compressed: bool) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() || size < PROGRESS_MIN_BYTES {
        return None;
    }
    let bar = if compressed {
        // The position is in decompressed bytes: no known end.
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} decompressed ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b
    } else {
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_message(name.to_string());
    Some(bar)
}

/// Runs `phalanx analyze` with the configuration already loaded (its
/// `[flows]` and `[rules.*]` tables), printing to stdout as the flows
/// leave the table.
pub fn run(args: &AnalyzeArgs, cfg: &Config) -> anyhow::Result<()> {
    let rules = RuleEngine::new(&cfg.rules)?;
    // Before any output: a bad key must not leave a half-written report.
    let mut anon = match &args.anonymize_key {
        Some(p) => Some(Anonymizer::from_key_file(p)?),
        None => None,
    };
    let anon = anon.as_mut();
    // Straight to the file descriptor: `Stdout` is line-buffered, and
    // would search every large write for its last newline.
    let stdout = std::io::stdout().lock();
    let fd = std::os::fd::AsFd::as_fd(&stdout).try_clone_to_owned()?;
    if args.json {
        widen_pipe(&fd);
    }
    let out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::from(fd));
    let inputs = match (args.json, args.sort, args.all) {
        (true, None, _) => emit(args, cfg, &rules, anon, JsonStream::new(out)?)?,
        (false, _, true) => emit(args, cfg, &rules, anon, AllRows::new(out)?)?,
        (json, sort, _) => {
            let order = sort.map_or(Order::Table, Order::By);
            emit(
                args,
                cfg,
                &rules,
                anon,
                Ranked::new(order, args.top as usize, json, out)?,
            )?
        }
    };
    drop(stdout);
    report_inputs(&inputs)
}

/// Streams the inputs into `sink` and finishes it; returns the inputs'
/// figures.
fn emit<S: Sink>(
    args: &AnalyzeArgs,
    cfg: &Config,
    rules: &RuleEngine,
    anon: Option<&mut Anonymizer>,
    mut sink: S,
) -> anyhow::Result<Vec<InputReport>> {
    let mut exemptions = cfg.exemptions()?;
    let streamer = Streamer::new(&cfg.flows, rules, Some(&mut exemptions));
    let mut tail = stream_files(&args.files, streamer, anon, &mut |f, x| sink.flow(f, &x))?;
    tail.exempted = std::mem::take(&mut exemptions.silenced);
    sink.finish(&tail)?.flush()?;
    Ok(tail.inputs)
}

/// Warns of damaged inputs and of captures holding several capture
/// points; the damaged ones make the exit status [`InputsDamaged::EXIT_CODE`].
fn report_inputs(inputs: &[InputReport]) -> anyhow::Result<()> {
    for i in inputs {
        if let Some(e) = &i.error {
            eprintln!("warning: {e} (the report covers what was read)");
        }
        if i.capture_points > 1 {
            eprintln!(
                "note: {} holds packets captured at {} points ({} second copies, not counted again); `phalanx stitch` compares capture points given as separate files",
                i.file, i.capture_points, i.capture_duplicates
            );
        }
    }
    let damaged = inputs.iter().filter(|i| i.error.is_some()).count();
    if damaged > 0 {
        return Err(InputsDamaged {
            damaged,
            inputs: inputs.len(),
        }
        .into());
    }
    Ok(())
}

/// Some inputs could not be read whole: the report covers the rest, and
/// the exit status says so ([`InputsDamaged::EXIT_CODE`]).
#[derive(Debug, Error)]
#[error("{damaged} of {inputs} inputs damaged or unreadable; the report covers what was read")]
pub struct InputsDamaged {
    /// Inputs with an error.
    pub damaged: usize,
    /// Inputs given.
    pub inputs: usize,
}

impl InputsDamaged {
    /// Exit status of `phalanx analyze` when some input was damaged.
    pub const EXIT_CODE: u8 = 3;
}

/// Pipe capacity asked for when stdout is a pipe (Linux's default limit
/// for unprivileged processes, `/proc/sys/fs/pipe-max-size`).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Enlarges the pipe behind `fd`, if it is one, so that tens of megabytes
/// of JSON cross it in 1 MB steps instead of 64 KB ones (a sixteenth of the
/// wake-ups between us and the reader). Best effort: a file, a terminal,
/// a pipe already as large or a refusal leaves things as they are.
fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl with F_GETPIPE_SZ takes and returns plain integers; on
    // a descriptor that is not a pipe it fails with EBADF and changes nothing.
    let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if size > 0 && size < PIPE_BYTES {
        // SAFETY: as above; F_SETPIPE_SZ takes the new size as an int.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, ManyFlows};

    /// The report's flows streamed as JSON; its findings go with the first
    /// flow (spilled) or after the flows (the tail).
    fn streamed(report: &Report, spill: bool) -> Vec<u8> {
        let mut sink = JsonStream::new(Vec::new()).expect("spill file");
        let (with_flow, after) = if spill {
            (report.findings.clone(), Vec::new())
        } else {
            (Vec::new(), report.findings.clone())
        };
        for (i, f) in report.flows.iter().enumerate() {
            let x: &[Finding] = if i == 0 { &with_flow } else { &[] };
            sink.flow(f.clone(), x).expect("flow");
        }
        let tail = Tail {
            findings: after,
            stats: report.stats.clone(),
            inputs: report.inputs.clone(),
            exempted: report.exempted.clone(),
        };
        sink.finish(&tail).expect("encoding")
    }

    /// The streamed encoding is serde_json's, across several flow blocks.
    #[test]
    fn json_stream_is_serde_json() {
        let g = synth::many_flows(&ManyFlows {
            packets: 60_000,
            flows: 5 * 512 + 300,
            loss: 0.01,
            timestamps: true,
            ..ManyFlows::default()
        });
        // A finding on every flow.
        let mut rules = crate::rules::RulesConfig::default();
        rules.custom.push(crate::rules::CustomRuleConfig::new(
            "every",
            "packets > 0",
            crate::rules::Severity::Info,
            "{packets} packets",
        ));
        let engine = RuleEngine::new(&rules).expect("rules");
        let mut report = analyze_records_with(g.records, &FlowConfig::default(), &engine);
        report.inputs.push(InputReport {
            file: "a \"quoted\" name".into(),
            error: Some("damaged".into()),
            ..Default::default()
        });
        assert!(report.flows.len() > 5 * 512);
        assert!(report.findings.len() > 1, "{}", report.findings.len());
        let mut theirs = serde_json::to_vec(&report).expect("serde_json");
        theirs.push(b'\n');
        assert!(streamed(&report, true) == theirs, "spilled findings differ");
        assert!(streamed(&report, false) == theirs, "tail findings differ");
        let empty = analyze_records(Vec::new(), &FlowConfig::default());
        let mut theirs = serde_json::to_vec(&empty).expect("serde_json");
        theirs.push(b'\n');
        assert_eq!(streamed(&empty, false), theirs);
    }
}
