//! `phalanx analyze`: offline analysis of capture files.
//!
//! The files are read in the order given and fed, as one record stream, to
//! the same [`FlowTable`] the daemon runs (so rotated pieces of one capture
//! analyse as one). Every flow that was seen is reported, including flows
//! the table evicted on the way.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use phalanx_common::PacketMeta;
use serde::Serialize;
use thiserror::Error;

use crate::capture::file::{self, CaptureReader, FileError, ReaderStats};
use crate::config::Config;
use crate::flow::json::WriteJson;
use crate::flow::rank::RankBy;
use crate::flow::{FlowConfig, FlowSummary, FlowTable, TableStats};
use crate::rules::{Finding, RuleEngine};

/// Arguments of `phalanx analyze`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng, optionally zstd-compressed), read in
    /// this order as one stream; `-` reads standard input. A file that
    /// cannot be opened or is damaged is reported and the others are still
    /// analysed; the exit status is then 3 (2: usage, 1: nothing analysed).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON document (`flows`, `findings`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Order the flows by KEY, largest first, as `/api/v1/flows?sort=KEY`
    /// (retransmissions, retransmission_rate, rtt, srtt, jitter, dup_acks,
    /// out_of_order, zero_windows, packets, bytes, duration, last_seen).
    /// Default: the table lists flows with findings first, then by
    /// retransmission rate; the JSON keeps the order of first packets.
    #[arg(long, value_name = "KEY")]
    pub sort: Option<RankBy>,
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

fn finish(mut table: FlowTable, inputs: Vec<InputReport>, rules: &RuleEngine) -> Report {
    // The capture's own clock: its last record.
    let now = table.now();
    let rep = table.report_all();
    // Freeing every flow's state is not on the way to the output.
    std::thread::spawn(move || drop(table));
    let findings = rules.evaluate(&rep.flows, now);
    Report {
        flows: rep.flows,
        findings,
        stats: rep.stats,
        inputs,
        exempted: Default::default(),
    }
}

/// Analyses capture files with the built-in rules at their default
/// thresholds. A file that cannot be opened is an error; damage inside a
/// file ends that file early and is reported in its
/// [`InputReport::error`] (and logged), the records before it still count.
///
/// Reading and parsing run on a second thread that hands batches of
/// records to the flow table, so the two halves of the work overlap.
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
        let dups_before = table.stats().capture_duplicates;
        table.take_copies_peak();
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<PacketMeta>>(BATCHES_IN_FLIGHT);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<PacketMeta>>();
        let (stats, error) = std::thread::scope(|s| {
            let bar = bar.clone();
            let producer = s.spawn(move || read_batches(reader, &full_tx, &empty_rx, bar.as_ref()));
            for batch in full_rx {
                for rec in &batch {
                    table.ingest(rec);
                }
                // The reader may have finished; a lost batch is only a lost reuse.
                let _ = empty_tx.send(batch);
            }
            producer
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
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
        input.capture_duplicates = table.stats().capture_duplicates - dups_before;
        input.capture_points = u32::from(table.take_copies_peak()) + u32::from(input.records > 0);
        inputs.push(input);
    }
    // Nothing opened: there is nothing to report but the error.
    if let Some(e) = first_error.filter(|_| inputs.iter().all(|i| i.error.is_some())) {
        return Err(e.into());
    }
    Ok(finish(table, inputs, rules))
}

/// Records per batch handed from the reading thread to the flow table.
const BATCH: usize = 2048;
/// Full batches queued at once (bounds the memory between the threads).
const BATCHES_IN_FLIGHT: usize = 4;
/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 32 << 20;

/// Reads every record into batches; returns the reader's counters and the
/// damage that ended the file early, if any.
fn read_batches(
    mut reader: CaptureReader,
    full: &mpsc::SyncSender<Vec<PacketMeta>>,
    empty: &mpsc::Receiver<Vec<PacketMeta>>,
    bar: Option<&ProgressBar>,
) -> (ReaderStats, Option<FileError>) {
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
            if full.send(std::mem::replace(&mut batch, next)).is_err() {
                break;
            }
            if let Some(bar) = bar {
                bar.set_position(reader.position());
            }
        }
    }
    if !batch.is_empty() {
        let _ = full.send(batch);
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
/// `[flows]` and `[rules.*]` tables), printing to stdout.
pub fn run(args: &AnalyzeArgs, cfg: &Config) -> anyhow::Result<()> {
    let rules = RuleEngine::new(&cfg.rules)?;
    let mut exemptions = cfg.exemptions()?;
    let mut report = analyze_files_with(&args.files, &cfg.flows, &rules)?;
    exemptions.apply(&mut report.findings, crate::clock::wall_ns());
    report.exempted = exemptions.silenced;
    match args.sort {
        Some(key) => sort_flows(&mut report, key),
        None if !args.json => sort_for_table(&mut report),
        None => {}
    }
    for i in &report.inputs {
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
    // Straight to the file descriptor: `Stdout` is line-buffered, and
    // would search every large write for its last newline.
    let stdout = std::io::stdout().lock();
    let fd = std::os::fd::AsFd::as_fd(&stdout).try_clone_to_owned()?;
    if args.json {
        widen_pipe(&fd);
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::from(fd));
    write_report(&report, args.json, &mut out)?;
    out.flush()?;
    drop(stdout);
    let damaged = report.inputs.iter().filter(|i| i.error.is_some()).count();
    if damaged > 0 {
        return Err(InputsDamaged {
            damaged,
            inputs: report.inputs.len(),
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

/// Writes the report as JSON (one compact document and a newline) or as
/// the human table. Generic over the writer so that the serializer's many
/// small writes go straight into a buffer (a `dyn Write` call per token
/// cost more than the analysis itself on large captures).
pub fn write_report<W: Write>(
    report: &Report,
    json: bool,
    out: &mut W,
) -> Result<(), AnalyzeError> {
    if json {
        return write_json(report, out);
    }
    write_table(report, out)?;
    Ok(())
}

/// Flows encoded per block: a second thread encodes every other block
/// while this one encodes and writes the rest, in order.
const JSON_BLOCK: usize = 512;

/// Room reserved per flow in a block's buffer (a TCP flow's JSON takes
/// about 2.8 kB).
const FLOW_JSON_BYTES: usize = 3 << 10;

/// The report as serde_json encodes it, with the flows (nearly all of the
/// text) encoded directly by [`WriteJson`], on two threads.
fn write_json<W: Write>(report: &Report, out: &mut W) -> Result<(), AnalyzeError> {
    let Report {
        flows,
        findings,
        stats,
        inputs,
        exempted,
    } = report;
    out.write_all(b"{\"flows\":[")?;
    // Every flow is encoded with a leading comma; the first one's is dropped.
    let encode = |flows: &[FlowSummary], mut buf: Vec<u8>| {
        buf.clear();
        // Sized once for the block, so it is not copied as it grows.
        buf.reserve(flows.len() * FLOW_JSON_BYTES);
        for f in flows {
            buf.push(b',');
            f.write_json(&mut buf);
        }
        buf
    };
    let blocks = flows.chunks(JSON_BLOCK);
    if blocks.len() < 2 {
        let buf = encode(flows, Vec::new());
        out.write_all(buf.get(1..).unwrap_or_default())?;
    } else {
        std::thread::scope(|s| -> Result<(), AnalyzeError> {
            let (odd_tx, odd_rx) = mpsc::sync_channel::<Vec<u8>>(2);
            let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
            s.spawn(move || {
                for block in flows.chunks(JSON_BLOCK).skip(1).step_by(2) {
                    let buf = encode(block, spare_rx.try_recv().unwrap_or_default());
                    if odd_tx.send(buf).is_err() {
                        // The writer failed and stopped.
                        return;
                    }
                }
            });
            let mut buf = Vec::new();
            for (i, block) in flows.chunks(JSON_BLOCK).step_by(2).enumerate() {
                buf = encode(block, buf);
                out.write_all(buf.get(usize::from(i == 0)..).unwrap_or_default())?;
                if let Ok(odd) = odd_rx.recv() {
                    out.write_all(&odd)?;
                    let _ = spare_tx.send(odd);
                }
            }
            Ok(())
        })?;
    }
    out.write_all(b"],\"findings\":")?;
    serde_json::to_writer(&mut *out, findings)?;
    out.write_all(b",\"stats\":")?;
    serde_json::to_writer(&mut *out, stats)?;
    out.write_all(b",\"inputs\":")?;
    serde_json::to_writer(&mut *out, inputs)?;
    out.write_all(b",\"exempted\":")?;
    serde_json::to_writer(&mut *out, exempted)?;
    out.write_all(b"}\n")?;
    Ok(())
}

/// Flows by `key`, largest first (ties: most recently active first), as
/// the API orders them.
fn sort_flows(report: &mut Report, key: RankBy) {
    let flows = std::mem::take(&mut report.flows);
    let n = flows.len();
    report.flows = crate::flow::rank::top(&flows, key, n);
}

/// What an engineer reads first: flows with findings, then by
/// retransmission rate, then by packets.
fn sort_for_table(report: &mut Report) {
    let flagged: std::collections::HashSet<(std::net::IpAddr, u16, std::net::IpAddr, u16)> = report
        .findings
        .iter()
        .filter_map(|x| Some((x.flow.src?, x.flow.sport?, x.flow.dst, x.flow.dport)))
        .collect();
    let rate = |f: &FlowSummary| RankBy::RetransmissionRate.value(f).unwrap_or(0.0);
    report.flows.sort_by(|a, b| {
        let fa = flagged.contains(&(a.src, a.sport, a.dst, a.dport));
        let fb = flagged.contains(&(b.src, b.sport, b.dst, b.dport));
        fb.cmp(&fa)
            .then(rate(b).total_cmp(&rate(a)))
            .then(b.packets.cmp(&a.packets))
    });
}

/// One flow's cells of the table.
fn table_row(f: &FlowSummary) -> [String; 13] {
    [
        SocketAddr::new(f.src, f.sport).to_string(),
        SocketAddr::new(f.dst, f.dport).to_string(),
        f.proto.to_string(),
        f.state.to_string(),
        f.packets.to_string(),
        f.bytes.to_string(),
        opt_ms(f.rtt.p50_ms),
        opt_ms(f.rtt.p99_ms),
        format!(
            "{}/{}/{}",
            f.retrans_fast, f.retrans_timeout, f.retrans_spurious
        ),
        f.out_of_order.to_string(),
        f.dup_acks.to_string(),
        f.zero_windows.to_string(),
        opt_ms(f.jitter_ms),
    ]
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
}

fn write_table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    const HEAD: [&str; 13] = [
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
        "JITTER",
    ];
    // Text columns align left, numbers right; every column as wide as its
    // widest cell, whatever the numbers.
    const LEFT: usize = 4;
    let rows: Vec<[String; 13]> = report.flows.iter().map(table_row).collect();
    let mut width = HEAD.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String; 13], extra: &str| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i > 0 {
                l.push(' ');
            }
            if i < LEFT {
                l.push_str(&format!("{c:<w$}"));
            } else {
                l.push_str(&format!("{c:>w$}"));
            }
        }
        l.push_str(extra);
        l.trim_end().to_string()
    };
    writeln!(out, "{}", line(&HEAD.map(String::from), ""))?;
    for (f, r) in report.flows.iter().zip(&rows) {
        let vlan = if f.vlan != [0, 0] {
            format!(" vlan {}/{}", f.vlan[0], f.vlan[1])
        } else {
            String::new()
        };
        writeln!(out, "{}", line(r, &vlan))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, ManyFlows};

    /// The direct encoding is serde_json's, across several flow blocks.
    #[test]
    fn json_report_is_serde_json() {
        let g = synth::many_flows(&ManyFlows {
            packets: 60_000,
            flows: 5 * JSON_BLOCK as u32 + 300,
            loss: 0.01,
            timestamps: true,
            ..ManyFlows::default()
        });
        let mut report = analyze_records(g.records, &FlowConfig::default());
        report.inputs.push(InputReport {
            file: "a \"quoted\" name".into(),
            error: Some("damaged".into()),
            ..Default::default()
        });
        assert!(report.flows.len() > 5 * JSON_BLOCK);
        let mut ours = Vec::new();
        write_report(&report, true, &mut ours).expect("encoding");
        let mut theirs = serde_json::to_vec(&report).expect("serde_json");
        theirs.push(b'\n');
        assert!(ours == theirs, "encodings differ");
        let empty = analyze_records(Vec::new(), &FlowConfig::default());
        let mut ours = Vec::new();
        write_report(&empty, true, &mut ours).expect("encoding");
        let mut theirs = serde_json::to_vec(&empty).expect("serde_json");
        theirs.push(b'\n');
        assert_eq!(ours, theirs);
    }
}
