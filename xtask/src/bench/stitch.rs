//! Stitching throughput: packets per second through `stitch` for 2 and 4
//! captures of the same flows (250k packets per capture, 1% lost per link),
//! from the stitch test suite's throughput measurement in release mode,
//! both from memory (fingerprint, order, match) and from pcapng files.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::Row;

/// `(captures, packets, core M/s, files M/s)` of one output line:
/// "2 captures, 500000 packets: core 81.0 ms (6.17 M packets/s), files ... (2.10 M packets/s)".
fn parse(line: &str) -> Option<(u32, u64, f64, f64)> {
    let (hops, rest) = line.split_once(" captures, ")?;
    let (packets, rest) = rest.split_once(" packets: ")?;
    let rates: Vec<f64> = rest
        .split('(')
        .skip(1)
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    Some((
        hops.trim().parse().ok()?,
        packets.trim().parse().ok()?,
        *rates.first()?,
        *rates.get(1)?,
    ))
}

/// Builds the release test binary ahead, so its compile time is not
/// counted as benchmark time.
pub(crate) fn build() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::demo::workspace_root())
        .args([
            "test",
            "--release",
            "--no-run",
            "--quiet",
            "-p",
            "phalanx-daemon",
            "--test",
            "stitch",
        ])
        .stdin(Stdio::null())
        .status()
        .context("building the stitch throughput measurement")?;
    if !status.success() {
        bail!("building the stitch test binary failed with {status}");
    }
    Ok(())
}

pub(crate) fn stitch(rows: &mut Vec<Row>, notes: &mut String) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::demo::workspace_root())
        .args([
            "test",
            "--release",
            "--quiet",
            "-p",
            "phalanx-daemon",
            "--test",
            "stitch",
            "--",
            "--ignored",
            "--exact",
            "stitch_throughput",
            "--nocapture",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running the stitch throughput measurement")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("stitch throughput measurement failed:\n{text}");
    }
    let mut found = 0;
    for (hops, packets, core, files) in text.lines().filter_map(parse) {
        found += 1;
        rows.push(Row {
            figure: format!("stitch: {hops} captures of the same flows, packets/s"),
            phalanx: format!("{core:.2} M/s in memory, {files:.2} M/s from pcapng"),
            peer: "- (no open tool stitches captures)".into(),
            ratio: "-".into(),
            goal: "-".into(),
            pass: None,
            verdict: None,
        });
        writeln!(
            notes,
            "- stitch, {hops} captures ({packets} packets, 1% lost per link): {core:.2} M packets/s from memory, {files:.2} M packets/s reading pcapng"
        )?;
    }
    if found == 0 {
        bail!("no stitch throughput line in:\n{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_measurement_line() {
        let l = "4 captures, 980000 packets: core 310.2 ms (3.16 M packets/s), files 700.0 ms (1.40 M packets/s)";
        assert_eq!(super::parse(l), Some((4, 980_000, 3.16, 1.40)));
    }
}
