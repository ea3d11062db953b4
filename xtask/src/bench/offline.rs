//! Offline analysis by Phalanx, tshark and tcptrace in the same run, of a
//! generated capture and of a real one (a tcpdump of lossy routed iperf3
//! transfers in namespaces): wall time, packets/s, peak RSS, and the
//! retransmissions each counts side by side (beside the generator's truth
//! and the router's drop counter).
//!
//! The capture comes from the daemon's `gen_capture` example (xtask cannot
//! link the daemon: it must build before the kernel toolchain exists),
//! converted to classic pcap, the one format all three read.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use phalanx_lab::{sh, Proc, Routed};

use super::Row;

const FLOWS: u64 = 10_000;
const LOSS: &str = "0.01";

/// One timed run under `/usr/bin/time`.
struct Timed {
    wall_s: f64,
    peak_kb: u64,
    stdout: Vec<u8>,
}

/// Runs `cmd` under `/usr/bin/time -f '%e %M'` (and a 15-minute
/// `timeout`, so a stuck tool cannot stall the suite); stdout is kept,
/// `time`'s line is the last line of stderr.
fn timed(program: &str, args: &[&str]) -> Result<Timed> {
    // Wall time from our own clock: `time`'s %e has 10 ms steps, a tenth
    // of a quick run's analysis.
    let start = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", "timeout", "900", program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} under /usr/bin/time"))?;
    let wall_s = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), err.trim());
    }
    let last = err.lines().last().unwrap_or_default();
    let mut it = last.split_whitespace();
    let (Some(_), Some(kb)) = (it.next(), it.next()) else {
        bail!("no timing line from /usr/bin/time: {last}");
    };
    Ok(Timed {
        wall_s,
        peak_kb: kb.parse().context("peak RSS")?,
        stdout: out.stdout,
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Writes the capture; returns (packets, generator's retransmissions).
fn generate(out: &Path, packets: u64) -> Result<(u64, u64)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "phalanx-daemon",
            "--features",
            "synth",
            "--example",
            "gen_capture",
            "--",
        ])
        .arg(out)
        .args([&packets.to_string(), &FLOWS.to_string(), LOSS])
        .stderr(Stdio::inherit())
        .output()
        .context("running the capture generator")?;
    if !o.status.success() {
        bail!("capture generator failed");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).context("generator summary (JSON)")?;
    Ok((
        v["packets"].as_u64().unwrap_or(0),
        v["retransmissions"].as_u64().unwrap_or(0),
    ))
}

fn phalanx_retransmissions(json: &[u8]) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(json).context("phalanx --json output")?;
    let flows = v["flows"].as_array().context("flows array")?;
    Ok(flows
        .iter()
        .filter_map(|f| f["retransmissions"].as_u64())
        .sum())
}

fn tshark_retransmissions(file: &str) -> Result<u64> {
    let out = Command::new("tshark")
        .args(["-n", "-r", file, "-Y"])
        .arg("tcp.analysis.retransmission || tcp.analysis.fast_retransmission")
        .args(["-T", "fields", "-e", "frame.number"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("tshark retransmission count")?;
    Ok(out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64)
}

/// Sums both columns of every "rexmt data pkts:" line of `tcptrace -l`.
fn tcptrace_retransmissions(text: &[u8]) -> u64 {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| l.contains("rexmt data pkts:"))
        .flat_map(|l| {
            l.split("rexmt data pkts:")
                .skip(1)
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn mb(kb: u64) -> String {
    format!("{:.0} MB", kb as f64 / 1024.0)
}

fn rate(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2} M pkt/s", pps / 1e6)
    } else {
        format!("{:.0} k pkt/s", pps / 1e3)
    }
}

/// Packets in a classic pcap file (record headers walked, data skipped).
fn pcap_packets(file: &Path) -> Result<u64> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut off = 24usize;
    let mut n = 0u64;
    let le = data.get(..4) == Some(&[0xd4, 0xc3, 0xb2, 0xa1][..])
        || data.get(..4) == Some(&[0x4d, 0x3c, 0xb2, 0xa1][..]);
    while let Some(h) = data.get(off..off + 16) {
        let b = [h[8], h[9], h[10], h[11]];
        let incl = if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        };
        off += 16 + incl as usize;
        n += 1;
    }
    Ok(n)
}

/// A real capture: iperf3 streams client -> server through a router that
/// drops 1 % of forwarded data segments at random, captured by tcpdump on
/// the client (offloads off, so the file holds wire-size segments). Returns
/// the router's drop count. Bounded by bytes and by time.
fn real_capture(file: &Path, bytes: u64) -> Result<u64> {
    let net = Routed::new("bo").context("routed lab")?;
    net.offloads_off()?;
    let (client, server) = (net.client_v4().to_string(), net.server_v4().to_string());
    net.router.drop_forwarded(&format!(
        "ip saddr {client} ip daddr {server} tcp dport 5201 numgen random mod 100 < 1"
    ))?;
    let _srv = Proc::new(
        net.server
            .command("iperf3")
            .args(["-s", "-1", "-B", &server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dump = net
        .client
        .tcpdump(Routed::IF, &["tcp", "port", "5201"], file)?;
    let sent = net.client.exec(&[
        "timeout",
        "60",
        "iperf3",
        "-c",
        &server,
        "-P",
        "4",
        "-n",
        &bytes.to_string(),
        "-J",
    ]);
    let kernel_drops = dump.stop()?;
    sent.context("iperf3 through the lossy router")?;
    if kernel_drops > 0 {
        bail!("tcpdump lost {kernel_drops} packets: the capture is incomplete");
    }
    Ok(net.router.dropped()?)
}

/// The offline rows: packets/s vs tshark (goal 20x) and vs tcptrace, peak
/// memory vs tshark (goal: below).
pub(crate) fn offline(
    phalanx: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let want = if quick { 400_000 } else { 1_000_000 };
    let dir = std::env::temp_dir().join(format!("phalanx-bench-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = generated(phalanx, &dir, want, rows, notes).and_then(|()| {
        // About 1,500 bytes a segment: a few hundred thousand packets.
        let bytes = if quick { 300_000_000 } else { 1_200_000_000 };
        let file = dir.join("routed-lossy.pcap");
        let drops = real_capture(&file, bytes)?;
        let packets = pcap_packets(&file)?;
        let label = format!(
            "real capture: {}k packets, 4 iperf3 streams, 1% router drop",
            packets / 1000
        );
        compare(
            phalanx,
            &file,
            packets,
            &label,
            &format!("router dropped {drops}"),
            rows,
            notes,
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn generated(
    phalanx: &Path,
    dir: &Path,
    want: u64,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let ng = dir.join("many-flows.pcapng");
    let (packets, truth) = generate(&ng, want)?;
    // tcptrace reads classic pcap only: all three tools get that file.
    let file = dir.join("many-flows.pcap");
    let (ng, f) = (ng.display().to_string(), file.display().to_string());
    sh(&["editcap", "-F", "pcap", &ng, &f]).context("converting to pcap")?;
    let _ = std::fs::remove_file(&ng);
    let label = format!(
        "generated: {}k packets, {FLOWS} flows, 1% loss",
        packets / 1000
    );
    compare(
        phalanx,
        &file,
        packets,
        &label,
        &format!("generator {truth}"),
        rows,
        notes,
    )
}

/// Times the three tools on `file` and adds the rows; `truth` names the
/// retransmission ground truth, when there is one.
fn compare(
    phalanx: &Path,
    file: &Path,
    packets: u64,
    label: &str,
    truth: &str,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let f = file.display().to_string();
    let bin = phalanx.display().to_string();

    // Our run takes a fraction of a second: the median of three keeps one
    // scheduling hiccup from deciding the figure.
    let mut ours_runs = (0..3)
        .map(|_| timed(&bin, &["analyze", "--json", &f]))
        .collect::<Result<Vec<_>>>()?;
    ours_runs.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let peak_kb = ours_runs.iter().map(|t| t.peak_kb).max().unwrap_or(0);
    let mut ours = ours_runs.swap_remove(1);
    ours.peak_kb = peak_kb;
    let ours_retx = phalanx_retransmissions(&ours.stdout)?;
    let tshark = timed("tshark", &["-n", "-q", "-z", "expert", "-r", &f])?;
    let tshark_retx = tshark_retransmissions(&f)?;
    // -n: no name lookups (each would wait on DNS).
    let tcptrace = timed("tcptrace", &["-n", "-l", &f])?;
    let tcptrace_retx = tcptrace_retransmissions(&tcptrace.stdout);

    let pps = |t: &Timed| packets as f64 / t.wall_s.max(0.01);
    let ratio_ts = pps(&ours) / pps(&tshark);
    let ratio_tt = pps(&ours) / pps(&tcptrace);
    rows.push(Row {
        figure: format!("offline packets/s ({label})"),
        phalanx: rate(pps(&ours)),
        peer: format!("tshark {}", rate(pps(&tshark))),
        ratio: format!("{ratio_ts:.1}x"),
        goal: ">= 20x tshark".into(),
        pass: Some(ratio_ts >= 20.0),
        verdict: None,
    });
    rows.push(Row {
        figure: format!("offline packets/s vs tcptrace ({label})"),
        phalanx: rate(pps(&ours)),
        peer: format!("tcptrace {}", rate(pps(&tcptrace))),
        ratio: format!("{ratio_tt:.1}x"),
        goal: "-".into(),
        pass: None,
        verdict: None,
    });
    rows.push(Row {
        figure: format!("offline peak RSS ({label})"),
        phalanx: mb(ours.peak_kb),
        peer: format!(
            "tshark {}, tcptrace {}",
            mb(tshark.peak_kb),
            mb(tcptrace.peak_kb)
        ),
        ratio: format!("{:.2}x", ours.peak_kb as f64 / tshark.peak_kb.max(1) as f64),
        goal: "below tshark".into(),
        pass: Some(ours.peak_kb < tshark.peak_kb),
        verdict: None,
    });
    writeln!(
        notes,
        "- offline ({label}, timestamps on): wall time phalanx {:.2} s, tshark -z expert {:.2} s, \
         tcptrace -l {:.2} s; retransmissions: {truth}, phalanx {ours_retx}, \
         tshark {tshark_retx}, tcptrace {tcptrace_retx}",
        ours.wall_s, tshark.wall_s, tcptrace.wall_s
    )?;
    Ok(())
}
