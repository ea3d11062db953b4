//! Soak: flow churn and API load on one daemon for a long time (an hour in
//! the full run, 40 s in the quick one). Memory must stay flat once the
//! table has filled, and no record may be lost.
//!
//! Churn: SYN sweeps from ever new source addresses and ports (a flow per
//! address and port, expiring after `syn_timeout_secs` = 5 s, so some
//! 100,000 flows come and go every five seconds). Load: a client walks the
//! flow list a page at a time, asks for the worst flows, the incidents and
//! the metrics, without pause. RSS, flows and drops are sampled every few
//! seconds.

use std::{
    fmt::Write as _,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use phalanx_lab::{flood, metric, TwoHosts};

use super::{start_daemon, Row};

/// SYNs per second of the churn.
const RATE: f64 = 20_000.0;
/// Distinct flows per sweep (source ports), before the source moves on.
const PORTS: u16 = 20_000;

/// Resident memory of process `pid`, KiB.
pub(super) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// One sample of the daemon.
struct Sample {
    at_s: f64,
    rss_kib: u64,
    flows: u64,
    lost: u64,
}

pub(crate) fn soak(
    phalanx: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let lab = TwoHosts::new("bs").context("lab")?;
    let cfg = std::env::temp_dir().join(format!("phalanx-bench-soak-{}.toml", std::process::id()));
    std::fs::write(&cfg, "[flows]\nsyn_timeout_secs = 5\n")?;
    let result = run(&lab, phalanx, &cfg, quick, rows, notes);
    let _ = std::fs::remove_file(&cfg);
    result
}

fn run(
    lab: &TwoHosts,
    phalanx: &Path,
    cfg: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let duration = Duration::from_secs(if quick { 40 } else { 3600 });
    let every = Duration::from_secs(if quick { 2 } else { 30 });
    let daemon = start_daemon(lab, phalanx, "tcx", Some(cfg))?;
    let pid = daemon.pid();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (samples, requests, sent) = std::thread::scope(|s| -> Result<_> {
        let churn = s.spawn(|| churn(lab, &stop));
        let load = s.spawn(|| api_load(&daemon, &stop));
        let mut samples = Vec::new();
        while started.elapsed() < duration {
            std::thread::sleep(every);
            let m = daemon.text("/metrics")?;
            samples.push(Sample {
                at_s: started.elapsed().as_secs_f64(),
                rss_kib: rss_kib(pid)?,
                flows: metric(&m, "phalanx_flows_active"),
                lost: metric(&m, "phalanx_kernel_ring_full_drops_total")
                    + metric(&m, "phalanx_capture_backlog_dropped_total"),
            });
        }
        stop.store(true, Ordering::Release);
        let sent = churn
            .join()
            .map_err(|_| anyhow::anyhow!("churn panicked"))??;
        let requests = load
            .join()
            .map_err(|_| anyhow::anyhow!("API load panicked"))??;
        Ok((samples, requests, sent))
    })?;
    // The consumer's last drain.
    std::thread::sleep(Duration::from_millis(500));
    let m = daemon.text("/metrics")?;
    daemon.stop();
    let (submitted, decoded) = (
        metric(&m, "phalanx_kernel_records_submitted_total"),
        metric(&m, "phalanx_capture_records_decoded_total"),
    );
    let lost = samples.last().map_or(0, |s| s.lost);
    // Flat: past the first third (the table filling), the last third's
    // peak RSS is at most 5 % above the middle third's.
    let third = samples.len() / 3;
    let peak = |v: &[Sample]| v.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let (middle, last) = (
        peak(&samples[third..2 * third]),
        peak(&samples[2 * third..]),
    );
    let flat = third > 0 && last * 100 <= middle * 105;
    for s in &samples {
        writeln!(
            notes,
            "- soak at {:.0} s: RSS {} MiB, {} flows, {} records lost",
            s.at_s,
            s.rss_kib / 1024,
            s.flows,
            s.lost
        )?;
    }
    writeln!(
        notes,
        "- soak: {sent} SYNs sent, {submitted} records submitted, {decoded} decoded, {requests} API requests in {:.0} s",
        duration.as_secs_f64()
    )?;
    rows.push(Row {
        figure: format!(
            "soak: flow churn ({:.0} k SYN/s, 5 s timeout) and API load for {:.0} s",
            RATE / 1e3,
            duration.as_secs_f64()
        ),
        phalanx: format!(
            "RSS peak {} MiB (middle third) → {} MiB (last third); {lost} records lost of {submitted}; {requests} requests",
            middle / 1024,
            last / 1024
        ),
        peer: "-".into(),
        ratio: "-".into(),
        goal: "flat RSS (≤ +5 %), 0 lost".into(),
        pass: Some(flat && lost == 0 && decoded == submitted),
        verdict: None,
    });
    Ok(())
}

/// SYN sweeps, a new source address each, until `stop`; SYNs sent.
fn churn(lab: &TwoHosts, stop: &AtomicBool) -> Result<u64> {
    let mut sent = 0;
    let mut round: u32 = 0;
    while !stop.load(Ordering::Acquire) {
        // 10.X.(1..=250).(1..=250): new addresses for a long while.
        let src = [
            10,
            lab.subnet,
            1 + (round / 250 % 250) as u8,
            1 + (round % 250) as u8,
        ];
        let load = flood::Load {
            iface: lab.b_if.clone(),
            src,
            dst: lab.v4(1).octets(),
            flows: PORTS,
            sources: 1,
            first_port: 10_000,
            rate: RATE,
            max_frames: u64::from(PORTS),
            max_time: Duration::from_secs(5),
            flags: flood::SYN,
        };
        sent += lab.b.run(move || flood::send(&load))??.frames;
        round += 1;
    }
    Ok(sent)
}

/// API requests of every kind until `stop`; how many.
fn api_load(daemon: &crate::daemon::Daemon<'_>, stop: &AtomicBool) -> Result<u64> {
    const PATHS: [&str; 4] = [
        "/api/v1/flows?limit=1000",
        "/api/v1/flows?sort=retransmissions&limit=100",
        "/api/v1/incidents",
        "/metrics",
    ];
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        for p in PATHS {
            daemon.get(p)?;
            n += 1;
        }
    }
    Ok(n)
}
