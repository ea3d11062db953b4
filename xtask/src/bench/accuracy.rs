//! Accuracy under load: the RTT the daemon measures at an endpoint against
//! the kernel's own smoothed RTT (`ss -ti`) for the same sockets.
//!
//! iperf3 streams leave host `a` through a tbf bottleneck (this kernel has
//! no netem): the queue they build makes the RTT tens of milliseconds and
//! moving, which is what an estimator has to follow. `ss -tin` is polled
//! during the transfer and its samples averaged per socket; the daemon's
//! mean RTT of the same flow (from /api/v1/flows) is set beside it.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use phalanx_lab::{Proc, TwoHosts};

use super::{live::iperf_server, median, start_daemon, Row};

/// Per local port: the `rtt:` values (ms) of `ss -tin` lines towards `server`.
fn poll_ss(lab: &TwoHosts, server: &str, into: &mut HashMap<u16, Vec<f64>>) -> Result<()> {
    let out = lab.a.exec(&["ss", "-tin", "dst", server])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut port: Option<u16> = None;
    for line in text.lines() {
        if line.starts_with("ESTAB") {
            // ESTAB recv-q send-q local:port peer:port
            port = line
                .split_whitespace()
                .nth(3)
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok());
        } else if let Some(p) = port.take() {
            let rtt = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rtt:"))
                .and_then(|v| v.split('/').next())
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(r) = rtt {
                into.entry(p).or_default().push(r);
            }
        }
    }
    Ok(())
}

pub(crate) fn accuracy(
    phalanx: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let lab = TwoHosts::new("ba").context("lab")?;
    let secs: u64 = if quick { 4 } else { 10 };
    // A 200 Mbit/s bottleneck with up to 50 ms of queue on a's egress.
    lab.a.exec(&[
        "tc", "qdisc", "add", "dev", &lab.a_if, "root", "tbf", "rate", "200mbit", "burst", "64kb",
        "latency", "50ms",
    ])?;
    let server = lab.v4(2).to_string();
    let daemon = start_daemon(&lab, phalanx, "tcx", None)?;
    let _srv = iperf_server(&lab)?;
    let client = Proc::new(
        lab.a
            .command("timeout")
            .args([
                &(secs + 10).to_string(),
                "iperf3",
                "-c",
                &server,
                "-P",
                "2",
                "-t",
                &secs.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut ss: HashMap<u16, Vec<f64>> = HashMap::new();
    let start = Instant::now();
    // Skip slow start: the queue is built after the first second.
    std::thread::sleep(Duration::from_secs(1));
    while start.elapsed() < Duration::from_secs(secs) {
        poll_ss(&lab, &server, &mut ss)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let flows = daemon.text("/api/v1/flows")?;
    drop(client.stop(Duration::from_secs(2)));
    daemon.stop();

    let v: serde_json::Value = serde_json::from_str(&flows).context("/api/v1/flows JSON")?;
    let mut diffs_ms = Vec::new();
    let mut diffs_pct = Vec::new();
    let mut pairs = Vec::new();
    for f in v["flows"].as_array().into_iter().flatten() {
        let (Some(sport), Some(avg), Some(packets)) = (
            f["sport"].as_u64(),
            f["rtt"]["avg_ms"].as_f64(),
            f["packets"].as_u64(),
        ) else {
            continue;
        };
        // Data streams only: iperf3's control connection carries a few packets.
        if packets < 1000 || f["dport"].as_u64() != Some(5201) {
            continue;
        }
        let Some(samples) = u16::try_from(sport).ok().and_then(|p| ss.get(&p)) else {
            continue;
        };
        let kernel = samples.iter().sum::<f64>() / samples.len() as f64;
        let p50 = f["rtt"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
        diffs_ms.push(avg - kernel);
        diffs_pct.push(100.0 * (avg - kernel) / kernel);
        pairs.push((avg, kernel, p50));
        writeln!(
            notes,
            "- RTT of port {sport}: daemon mean {avg:.2} ms (p50 {:.2}, {} samples), ss -ti srtt mean {kernel:.2} ms ({} polls)",
            f["rtt"]["p50_ms"].as_f64().unwrap_or(0.0),
            f["rtt"]["samples"].as_u64().unwrap_or(0),
            samples.len()
        )?;
    }
    let row = if pairs.is_empty() {
        Row {
            figure: "RTT at an endpoint vs kernel srtt (ss -ti), tbf 200 Mbit/s queue".into(),
            phalanx: "no matched flow".into(),
            peer: "-".into(),
            ratio: "-".into(),
            goal: "-".into(),
            pass: Some(false),
            verdict: None,
        }
    } else {
        Row {
            figure: "RTT at an endpoint vs kernel srtt (ss -ti), tbf 200 Mbit/s queue".into(),
            phalanx: format!(
                "mean {:.2} ms, median {:.2} ms",
                median(pairs.iter().map(|p| p.0).collect()),
                median(pairs.iter().map(|p| p.2).collect())
            ),
            peer: format!(
                "{:.2} ms (ss -ti)",
                median(pairs.iter().map(|p| p.1).collect())
            ),
            ratio: format!(
                "mean {:+.2} ms ({:+.1} %), median {:+.1} %",
                median(diffs_ms),
                median(diffs_pct),
                median(pairs.iter().map(|p| 100.0 * (p.2 - p.1) / p.1).collect())
            ),
            goal: "-".into(),
            pass: None,
            verdict: None,
        }
    };
    rows.push(row);
    Ok(())
}
