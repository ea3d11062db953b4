//! Where the capture's CPU goes on the application core: a cpu-clock
//! profile of CPU 0 (the iperf3 ends, the veth path and the capture's
//! kernel part, see `Layout`) while iperf3 runs, and the share of samples
//! in each capture path's own kernel functions. Throughput on a shared VM
//! scatters by several percent between runs; the profile resolves a tenth
//! of a percent of the core.

use std::{fmt::Write as _, path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use phalanx_lab::{sh, Proc, TwoHosts};

use super::{
    live::{iperf_server, CaptureUnderTest, Layout},
    Row, API,
};

/// Kernel functions only Phalanx's capture runs: its programs and the
/// helpers they call. Shared ones (the TSC read behind the clock helper)
/// are left out, which only understates our share.
fn is_phalanx(sym: &str) -> bool {
    (sym.starts_with("bpf_prog_") && sym.contains("phalanx_"))
        || matches!(
            sym,
            "bpf_ringbuf_output"
                | "__bpf_ringbuf_reserve"
                | "bpf_ringbuf_commit"
                | "bpf_ringbuf_notify"
                | "bpf_skb_load_bytes"
                | "bpf_xdp_load_bytes"
                | "bpf_loop"
                | "ktime_get_mono_fast_ns"
                | "htab_map_lookup_elem"
                | "__htab_map_lookup_elem"
                | "trie_lookup_elem"
                | "tcx_run"
        )
}

/// Kernel functions only the packet-socket capture (tcpdump's TPACKET_V3
/// ring) runs. The clones and frees it causes happen in functions the TCP
/// path also calls, so they are left out: this understates tcpdump.
fn is_packet_socket(sym: &str) -> bool {
    sym.starts_with("tpacket_")
        || sym.starts_with("packet_")
        || sym.starts_with("__packet_")
        || sym.starts_with("prb_")
        || matches!(sym, "dev_queue_xmit_nit" | "run_filter")
}

/// Share (percent of CPU 0's samples) per symbol from `perf report`.
fn shares(data: &Path) -> Result<Vec<(String, f64)>> {
    let out = sh(&[
        "perf",
        "report",
        "-i",
        &data.display().to_string(),
        "--no-children",
        "--sort",
        "symbol",
        "-g",
        "none",
        "--percent-limit",
        "0",
        "--stdio",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "     0.43%  [k] bpf_prog_f575e06585f5edbe_phalanx_tc_egress"
            let (pct, rest) = l.trim().split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let sym = rest.trim().strip_prefix("[k]")?.split_whitespace().next()?;
            Some((sym.to_string(), pct))
        })
        .collect())
}

/// One profiled iperf3 run under `setup`: (Phalanx share, packet-socket share).
fn profiled_run(
    lab: &TwoHosts,
    phalanx: &Path,
    setup: &str,
    secs: u32,
    layout: Layout,
    dir: &Path,
) -> Result<(f64, f64)> {
    let capture = CaptureUnderTest::start(&lab.a, &lab.a_if, API, phalanx, setup, layout)?;
    let server = lab.v4(2).to_string();
    let _srv = iperf_server(lab)?;
    let total = (secs + 2).to_string();
    let client = Proc::new(
        lab.a
            .command("iperf3")
            .args(["-c", &server, "-t", &total, "-A", "0,0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_secs(1));
    let data = dir.join(format!("perf-{setup}.data"));
    sh(&[
        "perf",
        "record",
        "-q",
        "-e",
        "cpu-clock",
        "-C",
        "0",
        "-o",
        &data.display().to_string(),
        "--",
        "sleep",
        &secs.to_string(),
    ])?;
    drop(client.stop(Duration::from_secs(5)));
    capture.stop();
    let s = shares(&data)?;
    // Adding 0.0 turns the empty sum (-0.0) into 0.0.
    let sum =
        |f: fn(&str) -> bool| s.iter().filter(|(n, _)| f(n)).map(|(_, p)| p).sum::<f64>() + 0.0;
    Ok((sum(is_phalanx), sum(is_packet_socket)))
}

/// Rows: each capture path's own share of the application core.
pub(crate) fn profile(
    phalanx: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let layout = Layout::detect();
    if !layout.pinned {
        writeln!(notes, "- capture profile: needs 2 CPUs, skipped")?;
        return Ok(());
    }
    let lab = TwoHosts::new("bp").context("lab")?;
    let dir = std::env::temp_dir().join(format!("phalanx-bench-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kallsyms = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_kallsyms")
        .unwrap_or_default()
        .trim()
        .to_string();
    // JIT-ed programs appear in profiles under their names only with this on.
    let _ = sh(&["sysctl", "-q", "-w", "net.core.bpf_jit_kallsyms=1"]);
    let (secs, setups): (u32, &[&str]) = if quick {
        (2, &["tcx", "tcpdump"])
    } else {
        (10, &["none", "tcx", "xdp", "tcpdump"])
    };
    let result = (|| -> Result<Vec<(&str, (f64, f64))>> {
        let mut out = Vec::new();
        for &setup in setups {
            out.push((
                setup,
                profiled_run(&lab, phalanx, setup, secs, layout, &dir)?,
            ));
        }
        Ok(out)
    })();
    if !kallsyms.is_empty() {
        let _ = sh(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.core.bpf_jit_kallsyms={kallsyms}"),
        ]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let runs = result?;
    for (setup, (p, k)) in &runs {
        writeln!(
            notes,
            "- capture profile, {setup}: Phalanx kernel functions {p:.2} %, packet-socket functions {k:.2} % of CPU 0 ({secs} s of cpu-clock samples)"
        )?;
    }
    let share = |name: &str, f: fn(&(f64, f64)) -> f64| {
        runs.iter()
            .find(|(s, _)| *s == name)
            .map_or(f64::NAN, |(_, v)| f(v))
    };
    let tcpdump = share("tcpdump", |v| v.1);
    for mode in ["tcx", "xdp"].into_iter().filter(|m| setups.contains(m)) {
        let ours = share(mode, |v| v.0);
        rows.push(Row {
            figure: format!(
                "capture path's own kernel functions, share of the application core under iperf3 ({mode} vs tcpdump, cpu-clock profile)"
            ),
            phalanx: format!("{ours:.2} %"),
            peer: format!("{tcpdump:.2} % (tcpdump's packet socket)"),
            ratio: format!("{:.2}×", ours / tcpdump),
            goal: "-".into(),
            pass: None,
            verdict: None,
        });
    }
    Ok(())
}
