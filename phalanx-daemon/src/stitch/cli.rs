//! `phalanx stitch`: stitching capture files taken at several points.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context as _};
use phalanx_common::PacketMeta;
use thiserror::Error;

use super::{stitch, stitch_in_order, HopCapture, OrderSource, StitchReport};
use crate::anonymize::Anonymizer;
use crate::capture::file::{self, CaptureReader, FileError};
use crate::capture::frame::{PayloadMode, PcapngWriter, WriteError};

/// A named observation point: `NAME=FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopSpec {
    /// Hop name.
    pub name: String,
    /// Capture file.
    pub file: PathBuf,
}

/// A `--hop` value that is not `NAME=FILE`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("expected NAME=FILE (e.g. router1=r1.pcapng), got {0:?}")]
pub struct BadHopSpec(pub String);

impl FromStr for HopSpec {
    type Err = BadHopSpec;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((name, file)) if !name.trim().is_empty() && !file.is_empty() => Ok(Self {
                name: name.trim().to_string(),
                file: PathBuf::from(file),
            }),
            _ => Err(BadHopSpec(s.to_string())),
        }
    }
}

/// Arguments of `phalanx stitch`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StitchArgs {
    /// Captures of the same traffic at different points of its path (pcap or
    /// pcapng, optionally zstd-compressed); the order along the path is
    /// inferred from TTL decrements and timing. Hops are named after the files.
    #[arg(
        value_name = "FILE",
        required_unless_present = "hops",
        conflicts_with = "hops"
    )]
    pub files: Vec<PathBuf>,
    /// A named capture point, NAME=FILE; repeat in path order to fix the
    /// order instead of inferring it.
    #[arg(long = "hop", value_name = "NAME=FILE")]
    pub hops: Vec<HopSpec>,
    /// Print one JSON document (`hops`, `links`, `flows`) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write all hops' packets into one pcapng: one interface per hop, time
    /// order after clock correction, each packet commented with its hop.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Anonymise every IP address with this key (Crypto-PAn, prefix
    /// preserving: addresses of one subnet stay in one subnet), in every
    /// output: the flows of the report and the packets of `--out`. The file
    /// holds 32 random bytes, raw or as 64 hex digits (e.g. from `openssl
    /// rand -hex 32`); the same key gives the same addresses as `phalanx
    /// analyze --anonymize-key` and `incidents.anonymize_key`.
    #[arg(long, value_name = "FILE")]
    pub anonymize_key: Option<PathBuf>,
}

/// The hops to read: names and files, and whether their order is given
/// (`--hop`) or to be inferred (`FILE...`).
pub fn hop_list(args: &StitchArgs) -> anyhow::Result<(Vec<HopSpec>, OrderSource)> {
    if !args.files.is_empty() && !args.hops.is_empty() {
        bail!("give the captures either as FILE... (order inferred) or as --hop NAME=FILE... (order as given), not both");
    }
    let given = !args.hops.is_empty();
    let specs: Vec<HopSpec> = if given {
        args.hops.clone()
    } else {
        let stem = |p: &PathBuf| {
            let name = p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            // "a.pcapng.zst" -> "a"
            name.split('.')
                .next()
                .filter(|s| !s.is_empty())
                .map_or(name.clone(), str::to_string)
        };
        let stems: Vec<String> = args.files.iter().map(stem).collect();
        args.files
            .iter()
            .zip(&stems)
            .map(|(p, s)| {
                let unique = stems.iter().filter(|o| *o == s).count() == 1;
                HopSpec {
                    name: if unique {
                        s.clone()
                    } else {
                        p.display().to_string()
                    },
                    file: p.clone(),
                }
            })
            .collect()
    };
    if specs.len() < 2 {
        bail!(
            "stitching needs captures from at least two points, got {} ({})",
            specs.len(),
            if given { "--hop" } else { "FILE" }
        );
    }
    let order = if given {
        OrderSource::Given
    } else {
        OrderSource::Inferred
    };
    Ok((specs, order))
}

/// Reads one capture, its addresses anonymised with `anon`; damage inside
/// the file ends it early with a warning.
fn read_hop(spec: &HopSpec, mut anon: Option<&mut Anonymizer>) -> Result<HopCapture, FileError> {
    let reader = file::open(&spec.file)?;
    let mut obs = Vec::new();
    let mut split = super::WireSegments::default();
    for item in reader {
        match item {
            Ok(mut m) => {
                if let Some(a) = anon.as_deref_mut() {
                    a.packet(&mut m);
                }
                split.push(&m, &mut obs);
            }
            Err(e) => {
                tracing::warn!(file = %spec.file.display(), error = %e, "capture damaged; stitched up to the damage");
                eprintln!("warning: {e} (stitched the packets before it)");
            }
        }
    }
    Ok(HopCapture {
        name: spec.name.clone(),
        observations: obs,
    })
}

/// Reads the captures and stitches them, in the order given or inferring it.
pub fn stitch_files(specs: &[HopSpec], order: OrderSource) -> anyhow::Result<StitchReport> {
    stitch_files_with(specs, order, None)
}

/// [`stitch_files`] with every address anonymised as it is read.
pub fn stitch_files_with(
    specs: &[HopSpec],
    order: OrderSource,
    mut anon: Option<&mut Anonymizer>,
) -> anyhow::Result<StitchReport> {
    let mut hops = Vec::with_capacity(specs.len());
    for s in specs {
        let hop = read_hop(s, anon.as_deref_mut())
            .with_context(|| format!("cannot read capture of hop {:?}", s.name))?;
        if hop.observations.is_empty() {
            bail!("{}: no IP packets in this capture", s.file.display());
        }
        hops.push(hop);
    }
    let report = match order {
        OrderSource::Given => stitch_in_order(hops),
        OrderSource::Inferred => stitch(hops),
    };
    report.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs `phalanx stitch`, printing to stdout.
pub fn run(args: &StitchArgs) -> anyhow::Result<()> {
    let (specs, given) = hop_list(args)?;
    let mut anon = match &args.anonymize_key {
        Some(p) => Some(Anonymizer::from_key_file(p)?),
        None => None,
    };
    let report = stitch_files_with(&specs, given, anon.as_mut())?;
    if let Some(out) = &args.out {
        let n = write_unified_with(&specs, &report, out, anon.as_mut())
            .with_context(|| format!("writing {}", out.display()))?;
        tracing::info!(file = %out.display(), packets = n, "unified capture written");
    }
    let stdout = std::io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    if args.json {
        serde_json::to_writer_pretty(&mut w, &report)?;
        writeln!(w)?;
    } else {
        write_table(&report, &mut w)?;
    }
    w.flush()?;
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// Prints the hops and links as tables.
pub fn write_table(r: &StitchReport, out: &mut dyn Write) -> std::io::Result<()> {
    let hw = r
        .hops
        .iter()
        .map(|h| h.name.len())
        .max()
        .unwrap_or(0)
        .max(3);
    writeln!(
        out,
        "{:<3} {:<hw$} {:>10} {:>6} {:>7} {:>11} {:>16}",
        "#", "HOP", "PACKETS", "FLOWS", "SHARED", "COLLISIONS", "CLOCK OFFSET ms"
    )?;
    for h in &r.hops {
        writeln!(
            out,
            "{:<3} {:<hw$} {:>10} {:>6} {:>7} {:>11} {:>16.3}",
            h.position, h.name, h.packets, h.flows, h.shared_flows, h.collisions, h.clock_offset_ms
        )?;
    }
    writeln!(out)?;
    let lw = 2 * hw + 4;
    writeln!(
        out,
        "{:<lw$} {:>9} {:>8} {:>7} {:>6} {:>5} {:>9} {:>9} {:>9} {:>10}",
        "LINK", "PACKETS", "LOST", "LOSS%", "REORD", "DUPS", "DELAY p50", "p99", "max", "UNMATCHED"
    )?;
    for l in &r.links {
        let pct = if l.packets > 0 {
            100.0 * l.lost as f64 / l.packets as f64
        } else {
            0.0
        };
        writeln!(
            out,
            "{:<lw$} {:>9} {:>8} {:>7.3} {:>6} {:>5} {:>9} {:>9} {:>9} {:>10}",
            format!("{} -> {}", l.from, l.to),
            l.packets,
            l.lost,
            pct,
            l.reordered,
            l.duplicates,
            opt(l.delay_ms.p50),
            opt(l.delay_ms.p99),
            opt(l.delay_ms.max),
            l.unmatched
        )?;
    }
    writeln!(
        out,
        "{} stitched flows; hop order {}; delays in ms, offset-corrected; clock offsets relative to hop 0",
        r.flows.len(),
        match r.order {
            super::OrderSource::Inferred => "inferred",
            super::OrderSource::Given => "as given",
        }
    )?;
    Ok(())
}

/// Errors writing the unified capture.
#[derive(Debug, Error)]
pub enum UnifiedError {
    /// Creating the output failed.
    #[error("{0}")]
    Create(#[from] std::io::Error),
    /// Re-reading an input failed.
    #[error(transparent)]
    Read(#[from] FileError),
    /// Encoding failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Writes one pcapng holding every hop's packets: an interface per hop (in
/// path order), timestamps moved to the first hop's clock, packets merged
/// in that time order (each input is taken to be in time order, as capture
/// tools write them), each commented with its hop. Frames are rebuilt from
/// the records, headers only. Returns the packets written.
pub fn write_unified(
    specs: &[HopSpec],
    report: &StitchReport,
    out: &Path,
) -> Result<u64, UnifiedError> {
    write_unified_with(specs, report, out, None)
}

/// [`write_unified`] with every packet's addresses anonymised (the files
/// are read again: the report keeps no records). The comments name hops,
/// not addresses.
pub fn write_unified_with(
    specs: &[HopSpec],
    report: &StitchReport,
    out: &Path,
    mut anon: Option<&mut Anonymizer>,
) -> Result<u64, UnifiedError> {
    let mut w = PcapngWriter::new(BufWriter::new(File::create(out)?))?;
    struct Input {
        reader: CaptureReader,
        iface: u32,
        offset_ns: i64,
        comment: String,
    }
    let mut inputs = Vec::with_capacity(report.hops.len());
    for h in &report.hops {
        let Some(spec) = specs.iter().find(|s| s.name == h.name) else {
            continue;
        };
        let iface = w.add_interface(&h.name)?;
        inputs.push(Input {
            reader: file::open(&spec.file)?,
            iface,
            offset_ns: h.clock_offset_ns,
            comment: format!("hop {}", h.name),
        });
    }
    let corrected = |m: &PacketMeta, off: i64| -> u64 {
        let t = i128::from(m.ts_ns) - i128::from(off);
        u64::try_from(t.max(0)).unwrap_or(u64::MAX)
    };
    let next = |inp: &mut Input| -> Option<PacketMeta> {
        // Damage was reported while stitching; the rest of that input is skipped.
        let mut m = inp.reader.next()?.ok()?;
        m.ts_ns = corrected(&m, inp.offset_ns);
        Some(m)
    };
    let mut pending: Vec<Option<PacketMeta>> = inputs.iter_mut().map(&next).collect();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = pending
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.map(|m| Reverse((m.ts_ns, i))))
        .collect();
    let mut n = 0;
    while let Some(Reverse((_, i))) = heap.pop() {
        let (Some(mut m), Some(inp)) = (pending[i].take(), inputs.get_mut(i)) else {
            continue;
        };
        if let Some(a) = anon.as_deref_mut() {
            a.packet(&mut m);
        }
        w.write_record(inp.iface, &m, PayloadMode::HeadersOnly, Some(&inp.comment))?;
        n += 1;
        pending[i] = next(inp);
        if let Some(m) = pending[i] {
            heap.push(Reverse((m.ts_ns, i)));
        }
    }
    w.get_mut().flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_spec_syntax() {
        let h: HopSpec = "r1=/tmp/a.pcap".parse().expect("valid");
        assert_eq!(
            (h.name.as_str(), h.file.as_path()),
            ("r1", Path::new("/tmp/a.pcap"))
        );
        let h: HopSpec = "r1=x=y.pcap".parse().expect("file names may hold '='");
        assert_eq!(h.file, PathBuf::from("x=y.pcap"));
        for bad in ["r1", "=a.pcap", "r1=", ""] {
            assert!(bad.parse::<HopSpec>().is_err(), "{bad:?} must be rejected");
        }
    }

    /// With a key, the report and the unified capture carry the mapped
    /// addresses only, and everything else is as without.
    #[test]
    fn anonymised_stitch_and_unified_capture() {
        let pcaps = phalanx_lab::data::pcaps();
        let specs: Vec<HopSpec> = ["cs_mail_sender_client_1", "cs_mail_sender_server_2"]
            .iter()
            .map(|n| HopSpec {
                name: n.to_string(),
                file: pcaps.join(format!("{n}.pcapng")),
            })
            .collect();
        let key = [9u8; 32];
        let plain = stitch_files(&specs, OrderSource::Inferred).expect("stitch");
        let anon = stitch_files_with(
            &specs,
            OrderSource::Inferred,
            Some(&mut Anonymizer::new(&key)),
        )
        .expect("stitch");
        let mut map = Anonymizer::new(&key);
        let mut expected = plain.clone();
        for f in &mut expected.flows {
            (f.src, f.dst) = (map.ip(f.src), map.ip(f.dst));
        }
        assert!(!plain.flows.is_empty());
        assert_eq!(anon, expected);

        let dir = tempfile::tempdir().expect("tempdir");
        let (p, a) = (dir.path().join("p.pcapng"), dir.path().join("a.pcapng"));
        let n = write_unified(&specs, &plain, &p).expect("unified");
        let m = write_unified_with(&specs, &anon, &a, Some(&mut Anonymizer::new(&key)))
            .expect("unified");
        assert_eq!(n, m);
        let read = |f: &Path| -> Vec<PacketMeta> {
            file::open(f)
                .expect("open")
                .collect::<Result<_, _>>()
                .expect("records")
        };
        let (p, a) = (read(&p), read(&a));
        assert_eq!(p.len(), a.len());
        for (mut p, a) in p.into_iter().zip(a) {
            map.packet(&mut p);
            assert_eq!(p, a, "the same packet, its addresses mapped");
        }
    }

    #[test]
    fn names_from_files() {
        let args = StitchArgs {
            files: vec!["/x/client.pcapng".into(), "/y/server.pcap.zst".into()],
            ..Default::default()
        };
        let (specs, order) = hop_list(&args).expect("two files");
        assert_eq!(order, OrderSource::Inferred);
        assert_eq!(specs[0].name, "client");
        assert_eq!(specs[1].name, "server");
        let args = StitchArgs {
            files: vec!["/x/a.pcap".into(), "/y/a.pcap".into()],
            ..Default::default()
        };
        let (specs, _) = hop_list(&args).expect("two files");
        assert_eq!(specs[0].name, "/x/a.pcap", "same stems fall back to paths");
        let one = StitchArgs {
            files: vec!["/x/a.pcap".into()],
            ..Default::default()
        };
        let e = hop_list(&one).expect_err("one file");
        assert!(e.to_string().contains("at least two"), "{e}");
    }
}
