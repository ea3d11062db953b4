//! Engine: records per second per core through the flow table and its
//! estimators from memory, and bytes per idle tracked flow at one million
//! flows; both from the daemon's criterion bench (`benches/engine.rs`).

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::Row;

/// Middle `thrpt:` estimate of benchmark `name`, in elements per second.
fn throughput(out: &str, name: &str) -> Option<f64> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(name));
    lines.find_map(|l| {
        let v = l.split_once("thrpt:")?.1;
        let w: Vec<&str> = v
            .trim_matches(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .split_whitespace()
            .collect();
        // [low unit mid unit high unit]
        let (num, unit) = (w.get(2)?.parse::<f64>().ok()?, *w.get(3)?);
        let scale = match unit {
            "Gelem/s" => 1e9,
            "Melem/s" => 1e6,
            "Kelem/s" => 1e3,
            "elem/s" => 1.0,
            _ => return None,
        };
        Some(num * scale)
    })
}

pub(crate) fn engine(quick: bool, rows: &mut Vec<Row>, notes: &mut String) -> Result<()> {
    let (warm, measure) = if quick { ("1", "2") } else { ("2", "6") };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::demo::workspace_root())
        .args([
            "bench",
            "--quiet",
            "-p",
            "phalanx-daemon",
            "--features",
            "synth",
            "--bench",
            "engine",
            "--",
            "--warm-up-time",
            warm,
            "--measurement-time",
            measure,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running the engine bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("engine bench failed:\n{text}");
    }
    let mix = throughput(&text, "engine/many_flows_mix").context("no many_flows_mix result")?;
    let history = throughput(&text, "engine/history_record");
    let syn = throughput(&text, "engine/new_idle_flows");
    let stage_udp = throughput(&text, "daemon/udp_one_flow");
    let stage_mix = throughput(&text, "daemon/many_flows_mix");
    let per_flow = text
        .lines()
        .find_map(|l| l.strip_prefix("engine/idle_flow_memory: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("no idle flow memory line")?;
    rows.push(Row {
        figure: "engine: records/s per core, flow table + estimators (criterion, 10k-flow mix)"
            .into(),
        phalanx: format!("{:.2} M/s", mix / 1e6),
        peer: "-".into(),
        ratio: "-".into(),
        goal: "≥ 5 M/s".into(),
        pass: Some(mix >= 5e6),
        verdict: None,
    });
    rows.push(Row {
        figure: "engine: memory per idle tracked flow at 1M flows".into(),
        phalanx: format!("{per_flow:.0} bytes"),
        peer: "-".into(),
        ratio: "-".into(),
        goal: "≤ 256 bytes".into(),
        pass: Some(per_flow <= 256.0),
        verdict: None,
    });
    let rate =
        |v: Option<f64>, unit: &str| v.map_or("-".into(), |h| format!("{:.2} M {unit}/s", h / 1e6));
    writeln!(
        notes,
        "- engine (criterion, warm-up {warm} s, measurement {measure} s): mix {:.2} M records/s, packet history {}, new idle flows {}; \
         the daemon's whole flow stage (history, table, KPI metrics, in ring batches): one UDP flow {}, the mix {}",
        mix / 1e6,
        rate(history, "records"),
        rate(syn, "flows"),
        rate(stage_udp, "records"),
        rate(stage_mix, "records"),
    )?;
    Ok(())
}
