//! `cargo xtask bench [--quick]`: side-by-side measurements on this machine,
//! in one run, written to bench/RESULTS.md.
//!
//! One submodule a section: live overhead against tcpdump, the profile of
//! the capture paths, kernel program cost, ring buffer, offline analysis
//! against tshark and tcptrace, engine, stitching and RTT accuracy.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Result;
use phalanx_lab::{sh, Netns, TwoHosts};

use crate::daemon::{Daemon, Options};

mod accuracy;
mod engine;
mod kernel;
mod live;
mod offline;
mod profile;
mod ring;
mod soak;
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

fn start_daemon<'a>(
    lab: &'a TwoHosts,
    phalanx: &Path,
    mode: &str,
    config: Option<&Path>,
) -> Result<Daemon<'a>> {
    start_daemon_on(&lab.a, &lab.a_if, API, phalanx, mode, config)
}

/// A daemon in `ns` on interface `iface`, its API on `listen`.
fn start_daemon_on<'a>(
    ns: &'a Netns,
    iface: &str,
    listen: &str,
    phalanx: &Path,
    mode: &str,
    config: Option<&Path>,
) -> Result<Daemon<'a>> {
    Daemon::start(
        ns,
        phalanx,
        &Options {
            interfaces: vec![iface],
            mode,
            config,
            listen,
            log: "warn",
        },
    )
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
    let sections: [(&str, Section); 9] = [
        ("live", live::live),
        ("profile", profile::profile),
        ("kernel", kernel::kernel),
        ("ring", ring::ring),
        ("offline", offline::offline),
        ("engine", |_, quick, rows, notes| {
            engine::engine(quick, rows, notes)
        }),
        ("stitch", |_, _, rows, notes| stitch::stitch(rows, notes)),
        ("accuracy", accuracy::accuracy),
        ("soak", soak::soak),
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
        const SHORT_SAMPLE: [&str; 3] = ["iperf3 ", "tcx vs tcpdump", "offline packets/s ("];
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
