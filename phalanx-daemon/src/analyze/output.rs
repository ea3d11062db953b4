//! What `phalanx analyze` prints, written as the flows leave the table:
//! the JSON document streamed ([`JsonStream`]), the table of the worst
//! flows kept as a bounded top-K ([`Ranked`]), or every flow's row
//! ([`AllRows`]). Findings are written aside as they come ([`Spill`]) and
//! read back once at the end, so no output holds every flow or finding.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::{AnalyzeError, Tail};
use crate::flow::json::WriteJson;
use crate::flow::rank::{RankBy, TopK};
use crate::flow::FlowSummary;
use crate::rules::Finding;

/// Flows per block handed to the encoding thread.
const JSON_BLOCK: usize = 512;
/// Blocks queued for the encoder (bounds the memory between the threads).
const BLOCKS_IN_FLIGHT: usize = 4;
/// Room reserved per flow in a block's buffer (a TCP flow's JSON takes
/// about 2.8 kB).
const FLOW_JSON_BYTES: usize = 3 << 10;
/// Rows per block of `--all`: each block's columns are as wide as its
/// widest cell.
const ROWS_BLOCK: usize = 1024;

/// Where `phalanx analyze` writes the flows as they leave the table.
pub(super) trait Sink {
    /// The writer, given back when done.
    type Out: Write;
    /// One flow and its findings.
    fn flow(&mut self, f: FlowSummary, findings: &[Finding]) -> Result<(), AnalyzeError>;
    /// Writes what follows the flows.
    fn finish(self, tail: &Tail) -> Result<Self::Out, AnalyzeError>;
}

/// Findings written to an unnamed temporary file as they come, read back
/// once at the end.
pub(super) struct Spill {
    file: BufWriter<File>,
    count: u64,
}

impl Spill {
    pub(super) fn new() -> io::Result<Self> {
        Ok(Self {
            file: BufWriter::new(tempfile::tempfile()?),
            count: 0,
        })
    }

    /// Appends `f` as JSON, comma-separated.
    fn json(&mut self, f: &Finding) -> Result<(), AnalyzeError> {
        if self.count > 0 {
            self.file.write_all(b",")?;
        }
        serde_json::to_writer(&mut self.file, f)?;
        self.count += 1;
        Ok(())
    }

    /// Appends `f` as a line of the table's findings.
    fn line(&mut self, f: &Finding) -> io::Result<()> {
        writeln!(self.file, "{:<8} {:<22} {}", f.severity, f.rule, f.summary)?;
        self.count += 1;
        Ok(())
    }

    /// Copies everything appended to `out`; returns how many findings.
    fn copy_to(self, out: &mut impl Write) -> io::Result<u64> {
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        io::copy(&mut file, out)?;
        Ok(self.count)
    }
}

/// The JSON document, written as serde_json would write a
/// [`Report`](super::Report) holding the flows in the order given: the
/// flows encoded on a second thread while the analysis goes on.
pub(super) struct JsonStream<W: Write + Send + 'static> {
    block: Vec<FlowSummary>,
    blocks: Option<mpsc::SyncSender<Option<Vec<FlowSummary>>>>,
    encoder: JoinHandle<io::Result<W>>,
    findings: Spill,
}

impl<W: Write + Send + 'static> JsonStream<W> {
    /// Writes to `out`; nothing is written before the first flow or
    /// [`Self::finish`].
    pub(super) fn new(out: W) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(BLOCKS_IN_FLIGHT);
        Ok(Self {
            block: Vec::with_capacity(JSON_BLOCK),
            blocks: Some(tx),
            encoder: std::thread::spawn(move || encode_flows(out, rx)),
            findings: Spill::new()?,
        })
    }

    fn send(&mut self) {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(JSON_BLOCK));
        // A closed channel: the encoder stopped on a write error, which
        // `finish` reports.
        if let Some(tx) = &self.blocks {
            if tx.send(Some(block)).is_err() {
                self.blocks = None;
            }
        }
    }
}

impl<W: Write + Send + 'static> Sink for JsonStream<W> {
    type Out = W;

    fn flow(&mut self, f: FlowSummary, findings: &[Finding]) -> Result<(), AnalyzeError> {
        for x in findings {
            self.findings.json(x)?;
        }
        self.block.push(f);
        if self.block.len() == JSON_BLOCK {
            self.send();
        }
        Ok(())
    }

    /// The rest of the document: the findings, then the tail's figures.
    fn finish(mut self, tail: &Tail) -> Result<W, AnalyzeError> {
        if !self.block.is_empty() {
            self.send();
        }
        if let Some(tx) = self.blocks.take() {
            // The encoder writes the opening now if no flow came.
            let _ = tx.send(None);
        }
        let mut out = self
            .encoder
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        write_json_rest(&mut out, self.findings, tail)?;
        Ok(out)
    }
}

/// `{"flows":[` then every block's flows, comma-separated. The opening
/// waits for the first block or the end (`None`): an analysis that fails
/// before either writes nothing.
fn encode_flows<W: Write>(
    mut out: W,
    blocks: mpsc::Receiver<Option<Vec<FlowSummary>>>,
) -> io::Result<W> {
    let mut buf = Vec::new();
    let mut first = true;
    for block in blocks {
        buf.clear();
        if first {
            buf.extend_from_slice(b"{\"flows\":[");
        }
        let Some(block) = block else {
            out.write_all(&buf)?;
            break;
        };
        // Sized once for the block, so it is not copied as it grows.
        buf.reserve(block.len() * FLOW_JSON_BYTES);
        for f in &block {
            if !first {
                buf.push(b',');
            }
            first = false;
            f.write_json(&mut buf);
        }
        out.write_all(&buf)?;
    }
    Ok(out)
}

/// The document after its flows: the findings (those spilled, then the
/// tail's), the counters, the inputs, the exemptions, and a newline.
fn write_json_rest(out: &mut impl Write, spilled: Spill, tail: &Tail) -> Result<(), AnalyzeError> {
    out.write_all(b"],\"findings\":[")?;
    let spilled = spilled.copy_to(out)?;
    for (i, x) in tail.findings.iter().enumerate() {
        if spilled > 0 || i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, x)?;
    }
    out.write_all(b"],\"stats\":")?;
    serde_json::to_writer(&mut *out, &tail.stats)?;
    out.write_all(b",\"inputs\":")?;
    serde_json::to_writer(&mut *out, &tail.inputs)?;
    out.write_all(b",\"exempted\":")?;
    serde_json::to_writer(&mut *out, &tail.exempted)?;
    out.write_all(b"}\n")?;
    Ok(())
}

/// How [`Ranked`] orders the flows it keeps.
#[derive(Clone, Copy, Debug)]
pub(super) enum Order {
    /// What an engineer reads first: flows with findings, then by
    /// retransmission rate, then by packets.
    Table,
    /// By a key, largest first, as the API's `sort`.
    By(RankBy),
}

/// The first `top` flows by an [`Order`], kept while the flows pass: the
/// table (or, with `--json --sort`, the document) of the worst flows.
pub(super) struct Ranked<W> {
    out: W,
    order: Order,
    top: usize,
    flagged: TopK,
    rest: TopK,
    flows: u64,
    findings: Spill,
    json: bool,
}

impl<W: Write> Ranked<W> {
    pub(super) fn new(order: Order, top: usize, json: bool, out: W) -> io::Result<Self> {
        let rank = || match order {
            Order::Table => TopK::new(RankBy::RetransmissionRate, top, None).then_by(|f| f.packets),
            Order::By(k) => TopK::new(k, top, None),
        };
        Ok(Self {
            out,
            order,
            top,
            flagged: rank(),
            rest: rank(),
            flows: 0,
            findings: Spill::new()?,
            json,
        })
    }
}

impl<W: Write> Sink for Ranked<W> {
    type Out = W;

    fn flow(&mut self, f: FlowSummary, findings: &[Finding]) -> Result<(), AnalyzeError> {
        for x in findings {
            if self.json {
                self.findings.json(x)?;
            } else {
                self.findings.line(x)?;
            }
        }
        // The flow's number in the input tells equal flows apart.
        let slot = self.flows as u32;
        self.flows += 1;
        match self.order {
            Order::Table if !findings.is_empty() => self.flagged.offer(slot, &f),
            _ => self.rest.offer(slot, &f),
        }
        Ok(())
    }

    /// Writes the kept flows, then the findings and the tail.
    fn finish(mut self, tail: &Tail) -> Result<W, AnalyzeError> {
        let out = &mut self.out;
        let mut kept: Vec<FlowSummary> = self
            .flagged
            .into_sorted()
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        let room = self.top.saturating_sub(kept.len());
        kept.extend(
            self.rest
                .into_sorted()
                .into_iter()
                .take(room)
                .map(|(_, f)| f),
        );
        if self.json {
            let mut buf = b"{\"flows\":[".to_vec();
            for (i, f) in kept.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                f.write_json(&mut buf);
            }
            out.write_all(&buf)?;
            write_json_rest(out, self.findings, tail)?;
            return Ok(self.out);
        }
        write_rows(out, &kept, true)?;
        let shown = match self.order {
            _ if kept.len() as u64 == self.flows => String::new(),
            Order::Table => format!(" ({} shown: those with findings, then by retransmission rate; --all lists every one)", kept.len()),
            Order::By(k) => format!(" ({} shown, the largest by {k}; --all lists every one)", kept.len()),
        };
        write_table_tail(out, self.flows, &shown, tail, self.findings)?;
        Ok(self.out)
    }
}

/// Every flow's row as it passes, in blocks of [`ROWS_BLOCK`].
pub(super) struct AllRows<W: Write> {
    out: W,
    rows: Vec<FlowSummary>,
    flows: u64,
    findings: Spill,
}

impl<W: Write> AllRows<W> {
    pub(super) fn new(out: W) -> io::Result<Self> {
        Ok(Self {
            out,
            rows: Vec::with_capacity(ROWS_BLOCK),
            flows: 0,
            findings: Spill::new()?,
        })
    }

    fn write_block(&mut self) -> io::Result<()> {
        let first = self.flows <= self.rows.len() as u64;
        write_rows(&mut self.out, &self.rows, first)?;
        self.rows.clear();
        Ok(())
    }
}

impl<W: Write> Sink for AllRows<W> {
    type Out = W;

    fn flow(&mut self, f: FlowSummary, findings: &[Finding]) -> Result<(), AnalyzeError> {
        for x in findings {
            self.findings.line(x)?;
        }
        self.rows.push(f);
        self.flows += 1;
        if self.rows.len() == ROWS_BLOCK {
            self.write_block()?;
        }
        Ok(())
    }

    /// The last rows, then the findings and the tail.
    fn finish(mut self, tail: &Tail) -> Result<W, AnalyzeError> {
        if !self.rows.is_empty() || self.flows == 0 {
            self.write_block()?;
        }
        write_table_tail(&mut self.out, self.flows, "", tail, self.findings)?;
        Ok(self.out)
    }
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

/// Rows of `flows`, every column as wide as its widest cell (text
/// columns align left, numbers right), under the header if `header`.
fn write_rows(out: &mut impl Write, flows: &[FlowSummary], header: bool) -> io::Result<()> {
    const LEFT: usize = 4;
    let rows: Vec<[String; 13]> = flows.iter().map(table_row).collect();
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
    if header {
        writeln!(out, "{}", line(&HEAD.map(String::from), ""))?;
    }
    for (f, r) in flows.iter().zip(&rows) {
        let vlan = if f.vlan != [0, 0] {
            format!(" vlan {}/{}", f.vlan[0], f.vlan[1])
        } else {
            String::new()
        };
        writeln!(out, "{}", line(r, &vlan))?;
    }
    Ok(())
}

/// The table's summary line, then every finding.
fn write_table_tail(
    out: &mut impl Write,
    flows: u64,
    shown: &str,
    tail: &Tail,
    findings: Spill,
) -> Result<(), AnalyzeError> {
    let s = &tail.stats;
    writeln!(
        out,
        "{flows} flows{shown}, {} records ({} expired, {} evicted when full); RTT in ms; RETX = fast/timeout/spurious",
        s.records, s.flows_expired, s.flows_evicted_full
    )?;
    let n = findings.count + tail.findings.len() as u64;
    if n > 0 {
        writeln!(out)?;
        writeln!(out, "{n} findings:")?;
        findings.copy_to(out)?;
        for x in &tail.findings {
            writeln!(out, "{:<8} {:<22} {}", x.severity, x.rule, x.summary)?;
        }
    }
    Ok(())
}
