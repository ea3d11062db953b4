//! `cargo xtask bench [--quick]`: side-by-side measurements on this machine,
//! in one run, written to bench/RESULTS.md.
//!
//! Live overhead: iperf3 over a veth pair with no program, Phalanx tcx,
//! Phalanx xdp, and `tcpdump -s 128 -w /dev/null`, interleaved in rounds;
//! throughput, machine CPU seconds per GB and the capture process's own CPU.
//! Kernel cost: ns per packet from bpf_stats. Ring buffer, offline analysis,
//! engine and RTT accuracy: see the submodules.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use phalanx_lab::{metric, sh, Proc, TwoHosts};

use crate::daemon::{Daemon, Options};

mod accuracy;
mod engine;
mod kernel;
mod offline;
mod profile;
mod ring;
mod sender;
mod stitch;

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
    // user nice system idle iowait irq softirq steal guest guest_nice:
    // time stolen by the hypervisor is not ours, guest time is already in
    // user.
    let busy: u64 = v
        .iter()
        .take(7)
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

/// CPU layout of the live runs. With 2 or more CPUs the iperf3 client and
/// server share CPU 0 (the veth path, its softirq work and our kernel
/// programs run there too) and the capture process gets CPU 1, as a
/// capture daemon has its own core on a production host. Unpinned, four
/// busy tasks on two cores make the scheduler the largest variable.
#[derive(Clone, Copy)]
struct Layout {
    pinned: bool,
}

impl Layout {
    fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self { pinned: cpus >= 2 }
    }

    /// Pins every thread of the capture process to CPU 1.
    fn pin_capture(self, pid: u32) -> Result<()> {
        if self.pinned {
            sh(&["taskset", "-a", "-p", "-c", "1", &pid.to_string()])?;
        }
        Ok(())
    }
}

/// A one-shot iperf3 server on host b (address 2), ready to accept.
fn iperf_server(lab: &TwoHosts) -> Result<Proc> {
    let server = lab.v4(2).to_string();
    let p = Proc::new(
        lab.b
            .command("iperf3")
            .args(["-s", "-1", "-B", &server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

/// The capture under test on host a's interface: a Phalanx daemon (tcx or
/// xdp), tcpdump, or nothing ("none"); pinned per `layout`.
struct CaptureUnderTest<'a> {
    daemon: Option<Daemon<'a>>,
    dump: Option<Proc>,
}

impl<'a> CaptureUnderTest<'a> {
    fn start(lab: &'a TwoHosts, phalanx: &Path, setup: &str, layout: Layout) -> Result<Self> {
        let daemon = match setup {
            "tcx" | "xdp" => Some(start_daemon(lab, phalanx, setup, None)?),
            _ => None,
        };
        let dump = if setup == "tcpdump" {
            let p = lab
                .a
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
                .map(Proc::new)?;
            std::thread::sleep(Duration::from_millis(500));
            Some(p)
        } else {
            None
        };
        let c = Self { daemon, dump };
        if let Some(pid) = c.pid() {
            layout.pin_capture(pid)?;
        }
        Ok(c)
    }

    /// Pid of the capture process (`ip netns exec` execs the tool, so the
    /// child's pid is the tool's).
    fn pid(&self) -> Option<u32> {
        self.daemon
            .as_ref()
            .map(Daemon::pid)
            .or(self.dump.as_ref().map(Proc::id))
    }

    /// Stops the capture (the daemon detaches its programs).
    fn stop(self) {
        if let Some(d) = self.daemon {
            d.stop();
        }
        drop(self.dump);
    }
}

fn iperf_tcp(lab: &TwoHosts, secs: u32, layout: Layout) -> Result<Iperf> {
    let server = lab.v4(2).to_string();
    let _srv = iperf_server(lab)?;
    let cpu0 = cpu_busy_s();
    let secs = secs.to_string();
    let mut args = vec!["iperf3", "-c", &server, "-t", &secs, "-J"];
    if layout.pinned {
        // Client affinity, server affinity: both on CPU 0.
        args.extend(["-A", "0,0"]);
    }
    let out = lab.a.exec(&args)?;
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
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// CPU seconds (user + system) a process has used so far.
fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<u64>() as f64 / hz
}

/// One iperf3 run under one configuration.
#[derive(Clone, Copy)]
struct LiveRun {
    gbps: f64,
    /// Whole-machine busy CPU seconds per GB moved.
    cpu_per_gb: f64,
    /// The capture process's own CPU seconds per GB (daemon or tcpdump).
    capture_per_gb: f64,
}

/// Median and relative spread ((max - min) / median) of a sample.
fn stats(v: &[f64]) -> (f64, f64) {
    let m = median(v.to_vec());
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (m, if m > 0.0 { (hi - lo) / m } else { 0.0 })
}

const SETUPS: [&str; 4] = ["none", "tcx", "xdp", "tcpdump"];

fn live_run(
    lab: &TwoHosts,
    phalanx: &Path,
    setup: &str,
    secs: u32,
    layout: Layout,
    kernel_ns: &mut Vec<(String, f64)>,
    notes: &mut String,
) -> Result<LiveRun> {
    let capture = CaptureUnderTest::start(lab, phalanx, setup, layout)?;
    let capture_pid = capture.pid();
    let before = prog_stats()?;
    let cap0 = capture_pid.map_or(0.0, proc_cpu_s);
    let r = iperf_tcp(lab, secs, layout)?;
    let cap = capture_pid.map_or(0.0, proc_cpu_s) - cap0;
    if let Some(d) = &capture.daemon {
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
        let m = d.text("/metrics")?;
        let drops = metric(&m, "phalanx_kernel_ring_full_drops_total")
            + metric(&m, "phalanx_capture_backlog_dropped_total");
        writeln!(
            notes,
            "- iperf3 under {setup}: {:.2} Gbit/s, records decoded {}, drops {drops}, daemon CPU {cap:.2} s",
            r.gbps,
            metric(&m, "phalanx_capture_records_decoded_total")
        )?;
    }
    capture.stop();
    let gb = (r.bytes / 1e9).max(1e-9);
    Ok(LiveRun {
        gbps: r.gbps,
        cpu_per_gb: r.cpu_s / gb,
        capture_per_gb: cap / gb,
    })
}

/// 95 % bootstrap interval of median(a) / median(b): both samples
/// resampled with replacement, a fixed seed so a rerun on the same figures
/// prints the same interval.
fn ratio_interval(a: &[f64], b: &[f64]) -> (f64, f64) {
    const RESAMPLES: usize = 4000;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        // xorshift64*: plenty for picking indices.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    };
    let mut ratios = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        let ra: Vec<f64> = (0..a.len()).map(|_| a[next(a.len())]).collect();
        let rb: Vec<f64> = (0..b.len()).map(|_| b[next(b.len())]).collect();
        let mb = median(rb);
        if mb > 0.0 {
            ratios.push(median(ra) / mb);
        }
    }
    ratios.sort_by(|x, y| x.total_cmp(y));
    if ratios.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// Verdict of "ratio ≥ 1 is better" (or ≤ 1 when `higher_is_better` is
/// false) from its interval: decided only when the whole interval is on
/// one side.
fn verdict((lo, hi): (f64, f64), higher_is_better: bool) -> (Option<bool>, Option<&'static str>) {
    let (good, bad) = if higher_is_better {
        (lo > 1.0, hi < 1.0)
    } else {
        (hi < 1.0, lo > 1.0)
    };
    match (good, bad) {
        (true, _) => (Some(true), None),
        (_, true) => (Some(false), None),
        _ => (None, Some("within noise")),
    }
}

/// Live overhead rows: none / tcx / xdp / tcpdump in interleaved rounds
/// (each round in a rotated order, so drift on a shared machine spreads over
/// all of them), plus kernel ns per packet. Comparisons carry a 95 %
/// bootstrap interval; a goal is met or missed only when the whole interval
/// says so.
fn live(phalanx: &Path, quick: bool, rows: &mut Vec<Row>, notes: &mut String) -> Result<()> {
    let lab = TwoHosts::new("bl").context("lab")?;
    let (secs, rounds) = if quick { (2, 2) } else { (3, 13) };
    let layout = Layout::detect();
    writeln!(
        notes,
        "- live runs: {}",
        if layout.pinned {
            "iperf3 client and server pinned to CPU 0 (with the veth path and our kernel programs), the capture process (daemon or tcpdump) to CPU 1"
        } else {
            "one CPU: nothing pinned"
        }
    )?;
    let _ = sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"]);
    let mut runs: Vec<Vec<LiveRun>> = vec![Vec::new(); SETUPS.len()];
    let mut kernel_ns: Vec<(String, f64)> = Vec::new();
    let mut result = Ok(());
    'rounds: for round in 0..rounds {
        for k in 0..SETUPS.len() {
            let i = (k + round) % SETUPS.len();
            match live_run(
                &lab,
                phalanx,
                SETUPS[i],
                secs,
                layout,
                &mut kernel_ns,
                notes,
            ) {
                Ok(r) => runs[i].push(r),
                Err(e) => {
                    result = Err(e);
                    break 'rounds;
                }
            }
        }
    }
    let _ = sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"]);
    result?;
    let gbps: Vec<Vec<f64>> = runs
        .iter()
        .map(|v| v.iter().map(|r| r.gbps).collect())
        .collect();
    let cpu: Vec<Vec<f64>> = runs
        .iter()
        .map(|v| v.iter().map(|r| r.cpu_per_gb).collect())
        .collect();
    let capture: Vec<Vec<f64>> = runs
        .iter()
        .map(|v| v.iter().map(|r| r.capture_per_gb).collect())
        .collect();
    for (i, setup) in SETUPS.iter().enumerate() {
        let (g, gs) = stats(&gbps[i]);
        let (c, cs) = stats(&cpu[i]);
        writeln!(
            notes,
            "- {setup}: {rounds} runs of {secs} s, median {g:.2} Gbit/s (spread {:.0} %), machine CPU {c:.3} s/GB (spread {:.0} %), capture process {:.4} s/GB",
            100.0 * gs,
            100.0 * cs,
            median(capture[i].clone()),
        )?;
    }
    let pct = |x: f64| 100.0 * (x - 1.0);
    let base_g = median(gbps[0].clone());
    let base_c = median(cpu[0].clone());
    for (i, setup) in SETUPS.iter().enumerate().skip(1) {
        let tcx = *setup == "tcx";
        let g = median(gbps[i].clone());
        let c = median(cpu[i].clone());
        // Cost = 1 - throughput ratio; within 5 % when the ratio is above 0.95.
        let (lo, hi) = ratio_interval(&gbps[i], &gbps[0]);
        let (pass, verdict_cost) = verdict((lo / 0.95, hi / 0.95), true);
        rows.push(Row {
            figure: format!(
                "iperf3 over veth, {setup}: throughput (median, 95 % interval of the cost)"
            ),
            phalanx: format!("{g:.2} Gbit/s"),
            peer: format!("{base_g:.2} Gbit/s no program"),
            ratio: format!(
                "{:+.1} % cost ({:+.1} … {:+.1})",
                -pct(g / base_g),
                -pct(hi),
                -pct(lo)
            ),
            goal: if tcx { "≤ 5 % cost" } else { "-" }.into(),
            pass: pass.filter(|_| tcx),
            verdict: verdict_cost.filter(|_| tcx),
        });
        let (lo, hi) = ratio_interval(&cpu[i], &cpu[0]);
        let (pass, verdict_cpu) = verdict((lo / 1.5, hi / 1.5), false);
        rows.push(Row {
            figure: format!("iperf3 over veth, {setup}: machine CPU per GB (95 % interval)"),
            phalanx: format!("{c:.3} s/GB"),
            peer: format!("{base_c:.3} s/GB no program"),
            ratio: format!("{:.2}× ({lo:.2} … {hi:.2})", c / base_c),
            goal: if tcx { "≤ 1.5× no program" } else { "-" }.into(),
            pass: pass.filter(|_| tcx),
            verdict: verdict_cpu.filter(|_| tcx),
        });
    }
    let (t, d) = (1, 3);
    let interval = ratio_interval(&gbps[t], &gbps[d]);
    let (pass, v) = verdict(interval, true);
    rows.push(Row {
        figure: "tcx vs tcpdump -s 128: throughput (95 % interval)".into(),
        phalanx: format!("{:.2} Gbit/s", median(gbps[t].clone())),
        peer: format!("{:.2} Gbit/s (tcpdump)", median(gbps[d].clone())),
        ratio: format!(
            "{:.3}× ({:.3} … {:.3})",
            median(gbps[t].clone()) / median(gbps[d].clone()),
            interval.0,
            interval.1
        ),
        goal: "better than tcpdump".into(),
        pass,
        verdict: v,
    });
    let interval = ratio_interval(&cpu[t], &cpu[d]);
    let (pass, v) = verdict(interval, false);
    rows.push(Row {
        figure: "tcx vs tcpdump -s 128: machine CPU per GB (95 % interval)".into(),
        phalanx: format!("{:.3} s/GB", median(cpu[t].clone())),
        peer: format!("{:.3} s/GB (tcpdump)", median(cpu[d].clone())),
        ratio: format!(
            "{:.3}× ({:.3} … {:.3})",
            median(cpu[t].clone()) / median(cpu[d].clone()),
            interval.0,
            interval.1
        ),
        goal: "better than tcpdump".into(),
        pass,
        verdict: v,
    });
    // Part of the machine figure above, shown apart: the daemon analyses
    // every record, tcpdump -w /dev/null only copies them.
    let (tp, dp) = (median(capture[t].clone()), median(capture[d].clone()));
    rows.push(Row {
        figure: "tcx vs tcpdump -s 128: capture process CPU per GB (daemon vs tcpdump), part of the machine figure".into(),
        phalanx: format!("{tp:.4} s/GB"),
        peer: format!("{dp:.4} s/GB (tcpdump)"),
        ratio: format!("{:.2}×", tp / dp.max(1e-9)),
        goal: "-".into(),
        pass: None,
        verdict: None,
    });
    let mut grouped: Vec<(String, Vec<f64>)> = Vec::new();
    for (k, v) in kernel_ns {
        match grouped.iter_mut().find(|(n, _)| *n == k) {
            Some((_, vs)) => vs.push(v),
            None => grouped.push((k, vec![v])),
        }
    }
    for (k, vs) in grouped {
        let (m, spread) = stats(&vs);
        rows.push(Row {
            figure: format!("kernel cost, {k} (bpf_stats)"),
            phalanx: format!("{m:.0} ns/packet (±{:.0} %)", 50.0 * spread),
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
    type Section = fn(&Path, bool, &mut Vec<Row>, &mut String) -> Result<()>;
    let sections: [(&str, Section); 8] = [
        ("live", live),
        ("profile", profile::profile),
        ("kernel", kernel::kernel),
        ("ring", ring::ring),
        ("offline", offline::offline),
        ("engine", |_, quick, rows, notes| {
            engine::engine(quick, rows, notes)
        }),
        ("stitch", |_, _, rows, notes| stitch::stitch(rows, notes)),
        ("accuracy", accuracy::accuracy),
    ];
    if let Some(bad) = only.iter().find(|o| !sections.iter().any(|(n, _)| n == o)) {
        anyhow::bail!(
            "unknown bench section {bad:?}; sections: {}",
            sections.map(|(n, _)| n).join(", ")
        );
    }
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    crate::setup::build_release()?;
    if wanted("stitch") {
        stitch::build()?;
    }
    let build_s = started.elapsed().as_secs_f64();
    let phalanx: PathBuf = crate::demo::release_binary();
    let mut rows = Vec::new();
    let mut notes = String::new();
    let mut took = Vec::new();
    for (name, section) in sections {
        if wanted(name) {
            let t = Instant::now();
            section(&phalanx, quick, &mut rows, &mut notes)?;
            took.push(format!("{name} {:.0} s", t.elapsed().as_secs_f64()));
        }
    }
    writeln!(notes, "- time per section: {}", took.join(", "))?;
    if quick {
        // Two live rounds and a small capture make ratios a smoke reading,
        // not a measurement: the full run decides these goals.
        const SHORT_SAMPLE: [&str; 3] =
            ["iperf3 over veth", "tcx vs tcpdump", "offline packets/s ("];
        for r in rows
            .iter_mut()
            .filter(|r| SHORT_SAMPLE.iter().any(|p| r.figure.starts_with(p)))
        {
            r.verdict = match r.pass.take() {
                Some(true) => Some("met in the quick run"),
                Some(false) => Some("missed in the quick run; the full run decides"),
                None => r.verdict,
            };
        }
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

#[cfg(test)]
mod tests {
    use super::{ratio_interval, verdict};

    #[test]
    fn intervals_decide_only_clear_differences() {
        let a = [10.0, 10.4, 9.8, 10.1, 10.3, 9.9, 10.2];
        let b = [8.0, 8.3, 7.9, 8.1, 8.2, 7.8, 8.4];
        let (lo, hi) = ratio_interval(&a, &b);
        assert!(lo > 1.15 && hi < 1.35, "{lo} {hi}");
        assert_eq!(verdict((lo, hi), true), (Some(true), None));
        assert_eq!(verdict((lo, hi), false), (Some(false), None));
        // Overlapping samples: no verdict.
        let c = [10.1, 9.7, 10.5, 9.9, 10.2, 10.0, 9.8];
        let (lo, hi) = ratio_interval(&a, &c);
        assert!(lo < 1.0 && hi > 1.0, "{lo} {hi}");
        assert_eq!(verdict((lo, hi), true), (None, Some("within noise")));
    }
}
