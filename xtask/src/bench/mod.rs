//! `cargo xtask bench [--quick]`: side-by-side measurements on this machine,
//! in one run, written to bench/RESULTS.md.
//!
//! Live overhead: iperf3 over a veth pair with no program, Phalanx tcx,
//! Phalanx xdp, and `tcpdump -s 128 -w /dev/null`; throughput and CPU
//! seconds per GB. Kernel cost: ns per packet from bpf_stats. Ring buffer:
//! the highest UDP record rate consumed with zero drops, and the drop count
//! when overloaded (drops must be counted, never silent).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use phalanx_lab::{metric, sh, Proc, TwoHosts};

use crate::daemon::{Daemon, Options};

mod offline;
mod ring;
mod sender;

const API: &str = "127.0.0.1:19750";

/// One row of the results table.
pub(crate) struct Row {
    /// What is measured.
    pub figure: String,
    /// Phalanx's figure.
    pub phalanx: String,
    /// The peer tool's figure (or "-").
    pub peer: String,
    /// Phalanx relative to the peer.
    pub ratio: String,
    /// The goal, in words.
    pub goal: String,
    /// Whether the goal is met (None: no goal).
    pub pass: Option<bool>,
    /// A verdict in words that replaces pass/FAIL where the measurement
    /// cannot decide (e.g. a difference within the run-to-run spread).
    pub verdict: Option<&'static str>,
}

/// Busy CPU seconds of the whole machine so far (all CPUs, softirq included).
fn cpu_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy as f64 / hz
}

fn start_daemon<'a>(
    lab: &'a TwoHosts,
    phalanx: &Path,
    mode: &str,
    config: Option<&Path>,
) -> Result<Daemon<'a>> {
    Daemon::start(
        &lab.a,
        phalanx,
        &Options {
            interfaces: vec![&lab.a_if],
            mode,
            config,
            listen: API,
            log: "warn",
        },
    )
}

/// (run_time_ns, run_cnt) per Phalanx program, from bpf_stats.
fn prog_stats() -> Result<Vec<(String, u64, u64)>> {
    let out = sh(&["bpftool", "-j", "prog", "show"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?.to_string();
            name.starts_with("phalanx_").then(|| {
                (
                    name,
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                )
            })
        })
        .collect())
}

struct Iperf {
    gbps: f64,
    bytes: f64,
    cpu_s: f64,
}

fn iperf_tcp(lab: &TwoHosts, secs: u32) -> Result<Iperf> {
    let server = lab.v4(2).to_string();
    let _srv = Proc::new(
        lab.b
            .command("iperf3")
            .args(["-s", "-1", "-B", &server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_busy_s();
    let out = lab
        .a
        .exec(&["iperf3", "-c", &server, "-t", &secs.to_string(), "-J"])?;
    let cpu = cpu_busy_s() - cpu0;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let r = &v["end"]["sum_received"];
    Ok(Iperf {
        gbps: r["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        bytes: r["bytes"].as_f64().unwrap_or(0.0),
        cpu_s: cpu,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Live overhead rows: none / tcx / xdp / tcpdump, plus kernel ns per packet.
fn live(phalanx: &Path, quick: bool, rows: &mut Vec<Row>, notes: &mut String) -> Result<()> {
    let lab = TwoHosts::new("bl").context("lab")?;
    let (secs, runs) = if quick { (3, 1) } else { (5, 3) };
    let _ = sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"]);
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    let mut kernel_ns: Vec<(String, f64)> = Vec::new();
    for setup in ["none", "tcx", "xdp", "tcpdump"] {
        let mut gbps = Vec::new();
        let mut cpu_per_gb = Vec::new();
        for _ in 0..runs {
            let daemon = match setup {
                "tcx" | "xdp" => Some(start_daemon(&lab, phalanx, setup, None)?),
                _ => None,
            };
            let dump = (setup == "tcpdump").then(|| {
                lab.a
                    .command("tcpdump")
                    .args([
                        "-Z",
                        "root",
                        "-i",
                        &lab.a_if,
                        "-s",
                        "128",
                        "-w",
                        "/dev/null",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map(Proc::new)
            });
            let dump = dump.transpose()?;
            if dump.is_some() {
                std::thread::sleep(Duration::from_millis(500));
            }
            let before = prog_stats()?;
            let r = iperf_tcp(&lab, secs)?;
            if daemon.is_some() {
                for (name, t1, c1) in prog_stats()? {
                    let (t0, c0) = before
                        .iter()
                        .find(|(n, ..)| *n == name)
                        .map_or((0, 0), |(_, t, c)| (*t, *c));
                    if c1 > c0 {
                        kernel_ns.push((
                            format!("{setup} {name}"),
                            (t1 - t0) as f64 / (c1 - c0) as f64,
                        ));
                    }
                }
            }
            if let Some(d) = daemon {
                let m = d.text("/metrics")?;
                let drops = metric(&m, "phalanx_kernel_ring_full_drops_total")
                    + metric(&m, "phalanx_capture_backlog_dropped_total");
                writeln!(
                    notes,
                    "- iperf3 under {setup}: {:.2} Gbit/s, records decoded {}, drops {drops}",
                    r.gbps,
                    metric(&m, "phalanx_capture_records_decoded_total")
                )?;
                d.stop();
            }
            drop(dump);
            gbps.push(r.gbps);
            cpu_per_gb.push(r.cpu_s / (r.bytes / 1e9).max(1e-9));
        }
        results.push((setup, median(gbps), median(cpu_per_gb)));
    }
    let _ = sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"]);
    let base = results[0];
    for (setup, gbps, cpu) in &results[1..] {
        let cost = 100.0 * (1.0 - gbps / base.1);
        let cpu_ratio = cpu / base.2;
        let (goal_t, pass_t, goal_c, pass_c) = match *setup {
            "tcx" => (
                "≤ 5 % cost",
                Some(cost <= 5.0),
                "≤ 1.5× no program",
                Some(cpu_ratio <= 1.5),
            ),
            _ => ("-", None, "-", None),
        };
        rows.push(Row {
            figure: format!("iperf3 over veth, {setup}: throughput"),
            phalanx: format!("{gbps:.2} Gbit/s"),
            peer: format!("{:.2} Gbit/s (no program)", base.1),
            ratio: format!("{cost:+.1} % cost"),
            goal: goal_t.into(),
            pass: pass_t,
            verdict: None,
        });
        rows.push(Row {
            figure: format!("iperf3 over veth, {setup}: CPU per GB"),
            phalanx: format!("{cpu:.3} s/GB"),
            peer: format!("{:.3} s/GB (no program)", base.2),
            ratio: format!("{cpu_ratio:.2}×"),
            goal: goal_c.into(),
            pass: pass_c,
            verdict: None,
        });
    }
    let by = |name: &str| results.iter().find(|r| r.0 == name).copied();
    if let (Some(t), Some(d)) = (by("tcx"), by("tcpdump")) {
        rows.push(Row {
            figure: "tcx vs tcpdump -s 128: throughput".into(),
            phalanx: format!("{:.2} Gbit/s", t.1),
            peer: format!("{:.2} Gbit/s (tcpdump)", d.1),
            ratio: format!("{:.2}×", t.1 / d.1),
            goal: "better than tcpdump".into(),
            pass: Some(t.1 >= d.1),
            verdict: None,
        });
        rows.push(Row {
            figure: "tcx vs tcpdump -s 128: CPU per GB".into(),
            phalanx: format!("{:.3} s/GB", t.2),
            peer: format!("{:.3} s/GB (tcpdump)", d.2),
            ratio: format!("{:.2}×", t.2 / d.2),
            goal: "better than tcpdump".into(),
            pass: Some(t.2 <= d.2),
            verdict: None,
        });
    }
    let mut grouped: Vec<(String, Vec<f64>)> = Vec::new();
    for (k, v) in kernel_ns {
        match grouped.iter_mut().find(|(n, _)| *n == k) {
            Some((_, vs)) => vs.push(v),
            None => grouped.push((k, vec![v])),
        }
    }
    for (k, vs) in grouped {
        rows.push(Row {
            figure: format!("kernel cost, {k}"),
            phalanx: format!("{:.0} ns/packet", median(vs)),
            peer: "-".into(),
            ratio: "-".into(),
            goal: "-".into(),
            pass: None,
            verdict: None,
        });
    }
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = sh(&["uname", "-r"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

pub fn run(quick: bool, only: &[String], root: &Path) -> Result<()> {
    let started = Instant::now();
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    crate::setup::build_release()?;
    let build_s = started.elapsed().as_secs_f64();
    let phalanx: PathBuf = crate::demo::release_binary();
    let mut rows = Vec::new();
    let mut notes = String::new();
    if wanted("live") {
        live(&phalanx, quick, &mut rows, &mut notes)?;
    }
    if wanted("ring") {
        ring::ring(&phalanx, quick, &mut rows, &mut notes)?;
    }
    if wanted("offline") {
        offline::offline(&phalanx, quick, &mut rows, &mut notes)?;
    }

    let mut table = String::new();
    writeln!(table, "| figure | Phalanx | peer | ratio | goal | pass |")?;
    writeln!(table, "|---|---|---|---|---|---|")?;
    for r in &rows {
        let pass = match (r.verdict, r.pass) {
            (Some(v), _) => v,
            (None, Some(true)) => "pass",
            (None, Some(false)) => "FAIL",
            (None, None) => "-",
        };
        writeln!(
            table,
            "| {} | {} | {} | {} | {} | {pass} |",
            r.figure, r.phalanx, r.peer, r.ratio, r.goal
        )?;
    }
    let doc = format!(
        "# Benchmark results\n\nMachine: {}. Mode: {}. Produced by `cargo xtask bench{}` in {:.0} s (build excluded).\n\n{table}\nDetails:\n{notes}",
        machine(),
        if quick { "quick" } else { "full" },
        if quick { " --quick" } else { "" },
        started.elapsed().as_secs_f64() - build_s,
    );
    println!("{doc}");
    if only.is_empty() {
        std::fs::create_dir_all(root.join("bench"))?;
        std::fs::write(root.join("bench/RESULTS.md"), doc)?;
    }
    Ok(())
}
