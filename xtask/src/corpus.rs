//! `cargo xtask corpus [DIR...]`: a conformance table of `phalanx analyze`
//! beside tshark's expert analysis (and tcptrace's, where installed) over
//! every capture in the folders, written to `bench/CORPUS.md`.
//!
//! Per capture, summed over its TCP flows: retransmissions by kind, out of
//! order, duplicate ACKs, zero windows, RTT p50/p99 and the findings; beside
//! them tshark's counts (`tcp.analysis.*`) and its `ack_rtt` quantiles.
//! Where the counts differ, the reason column says why in one line and
//! names the test that pins our count. tcptrace's counts are not compared
//! yet (Debian ships it; this table notes when it was absent).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::demo::{release_binary, workspace_root};

/// Runs the table over `dirs` (default: the vendored captures).
pub fn run(dirs: &[PathBuf]) -> Result<()> {
    let root = workspace_root();
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "phalanx-daemon"])
        .current_dir(&root)
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("building phalanx failed");
    }
    let dirs = if dirs.is_empty() {
        vec![root.join("tests/data/pcaps")]
    } else {
        dirs.to_vec()
    };
    let mut files = Vec::new();
    for d in &dirs {
        captures(d, &mut files).with_context(|| format!("reading {}", d.display()))?;
    }
    files.sort();
    let tcptrace = Command::new("tcptrace")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut out = String::from(HEADER);
    for f in &files {
        let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        let ours = ours(f).with_context(|| format!("phalanx analyze {name}"))?;
        let theirs = tshark(f).with_context(|| format!("tshark on {name}"))?;
        let tt = if tcptrace { tcptrace_counts(f) } else { None };
        out.push_str(&row(&name, &ours, &theirs, tt, &reason(f, &ours, &theirs)));
        println!("{name}: done");
    }
    if !tcptrace {
        out.push_str("\ntcptrace was not installed on the machine that wrote this table.\n");
    }
    let path = root.join("bench/CORPUS.md");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

const HEADER: &str = "# Conformance: phalanx analyze beside tshark\n\n\
Written by `cargo xtask corpus` (default: the vendored captures). Counts are\n\
summed over each capture's TCP flows; `ours` is `phalanx analyze --json`,\n\
`tshark` its expert analysis (`tcp.analysis.retransmission` or\n\
`fast_retransmission`, `spurious_retransmission`, `out_of_order`,\n\
`duplicate_ack`, `zero_window`) and RTT its `ack_rtt` quantiles (data ->\n\
the ACK covering it, in either direction: at a client mostly the client's\n\
own ACK delay). Our RTT is the busiest flow's `rtt` (the network round trip\n\
from the vantage point). Retransmissions are fast/timeout/spurious; ours\n\
count late hole fills too. Where a count differs, the reason column names\n\
the test that pins ours and says why.\n\n\
tcptrace: its `rexmt data pkts` and `outoforder pkts` summed (`-` where it\n\
cannot read the file, e.g. pcapng).\n\n\
| capture | retrans ours (f/t/s) | retrans tshark (spur.) | retrans / OOO tcptrace | OOO ours / tshark | dup ACK ours / tshark | zero win ours / tshark | RTT p50/p99 ms ours | ack_rtt p50/p99 ms tshark | findings | reason |\n\
|---|---|---|---|---|---|---|---|---|---|---|\n";

fn captures(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            captures(&p, out)?;
        } else if p
            .extension()
            .is_some_and(|x| x == "pcap" || x == "pcapng" || x == "zst")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Our figures: (retrans, fast, timeout, spurious, ooo, dup_acks,
/// zero_windows, rtt p50, rtt p99, findings).
struct Ours {
    retrans: u64,
    fast: u64,
    timeout: u64,
    spurious: u64,
    ooo: u64,
    dup_acks: u64,
    zero_windows: u64,
    rtt: (Option<f64>, Option<f64>),
    findings: Vec<String>,
}

fn ours(f: &Path) -> Result<Ours> {
    let o = Command::new(release_binary())
        .args(["analyze", "--json"])
        .arg(f)
        .output()?;
    // 3: a damaged capture, reported up to the damage (the table notes it).
    if !o.status.success() && o.status.code() != Some(3) {
        bail!("{}", String::from_utf8_lossy(&o.stderr));
    }
    let v: Value = serde_json::from_slice(&o.stdout)?;
    let tcp: Vec<&Value> = v["flows"]
        .as_array()
        .map(|a| a.iter().filter(|f| f["proto"] == "tcp").collect())
        .unwrap_or_default();
    let sum = |k: &str| tcp.iter().map(|f| f[k].as_u64().unwrap_or(0)).sum();
    let busiest = tcp
        .iter()
        .max_by_key(|f| f["packets"].as_u64().unwrap_or(0));
    let rtt = busiest.map_or((None, None), |f| {
        (f["rtt"]["p50_ms"].as_f64(), f["rtt"]["p99_ms"].as_f64())
    });
    let findings = v["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["rule"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    Ok(Ours {
        retrans: sum("retransmissions"),
        fast: sum("retrans_fast"),
        timeout: sum("retrans_timeout"),
        spurious: sum("retrans_spurious"),
        ooo: sum("out_of_order"),
        dup_acks: sum("dup_acks"),
        zero_windows: sum("zero_windows"),
        rtt,
        findings,
    })
}

/// tshark's counts: retransmissions (all kinds), spurious, out of order,
/// duplicate ACKs, zero windows, and ack_rtt p50/p99 (ms).
struct Theirs {
    retrans: u64,
    spurious: u64,
    ooo: u64,
    dup_acks: u64,
    zero_windows: u64,
    rtt: (Option<f64>, Option<f64>),
}

fn tshark(f: &Path) -> Result<Theirs> {
    let o = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(f)
        .args([
            "-Y",
            "tcp",
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-e",
            "tcp.analysis.retransmission",
            "-e",
            "tcp.analysis.fast_retransmission",
            "-e",
            "tcp.analysis.spurious_retransmission",
            "-e",
            "tcp.analysis.out_of_order",
            "-e",
            "tcp.analysis.duplicate_ack",
            "-e",
            "tcp.analysis.zero_window",
            "-e",
            "tcp.analysis.ack_rtt",
        ])
        .output()
        .context("running tshark (install it: apt-get install tshark)")?;
    let (mut t, mut rtts) = (
        Theirs {
            retrans: 0,
            spurious: 0,
            ooo: 0,
            dup_acks: 0,
            zero_windows: 0,
            rtt: (None, None),
        },
        Vec::new(),
    );
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let c: Vec<&str> = line.split(';').collect();
        let set = |i: usize| c.get(i).is_some_and(|v| !v.is_empty());
        t.retrans += u64::from(set(0) || set(1));
        t.spurious += u64::from(set(2));
        t.ooo += u64::from(set(3));
        t.dup_acks += u64::from(set(4));
        t.zero_windows += u64::from(set(5));
        if let Some(v) = c.get(6).and_then(|v| v.parse::<f64>().ok()) {
            rtts.push(v * 1000.0);
        }
    }
    rtts.sort_by(f64::total_cmp);
    let q = |p: f64| {
        (!rtts.is_empty())
            .then(|| rtts[((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1])
    };
    t.rtt = (q(0.5), q(0.99));
    Ok(t)
}

/// tcptrace's retransmitted and out-of-order data packets, both
/// directions of every connection; `None` when it cannot read the file.
fn tcptrace_counts(f: &Path) -> Option<(u64, u64)> {
    let o = Command::new("tcptrace")
        .args(["-l", "-n"])
        .arg(f)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() || !text.contains("rexmt data pkts") {
        return None;
    }
    let sum = |key: &str| -> u64 {
        text.lines()
            .flat_map(|l| l.split(key).skip(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    Some((sum("rexmt data pkts:"), sum("outoforder pkts:")))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn row(name: &str, o: &Ours, t: &Theirs, tt: Option<(u64, u64)>, reason: &str) -> String {
    format!(
        "| {name} | {} ({}/{}/{}) | {} ({}) | {} | {} / {} | {} / {} | {} / {} | {}/{} | {}/{} | {} | {reason} |\n",
        o.retrans,
        o.fast,
        o.timeout,
        o.spurious,
        t.retrans,
        t.spurious,
        tt.map_or_else(|| "-".to_string(), |(r, x)| format!("{r} / {x}")),
        o.ooo,
        t.ooo,
        o.dup_acks,
        t.dup_acks,
        o.zero_windows,
        t.zero_windows,
        ms(o.rtt.0),
        ms(o.rtt.1),
        ms(t.rtt.0),
        ms(t.rtt.1),
        if o.findings.is_empty() {
            "-".to_string()
        } else {
            o.findings.join(", ")
        },
    )
}

/// Why the counts differ, for a vendored capture: one line, and the test
/// that pins our count.
fn reason(f: &Path, o: &Ours, t: &Theirs) -> String {
    let same = o.retrans == t.retrans
        && o.ooo == t.ooo
        && o.dup_acks == t.dup_acks
        && o.zero_windows == t.zero_windows;
    if same {
        return "same counts".into();
    }
    let name = f
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    REASONS.iter().find(|(file, _)| *file == name).map_or_else(
        || "not explained yet".to_string(),
        |(_, why)| (*why).to_string(),
    )
}

/// The vendored captures whose counts differ from tshark's, and why.
const REASONS: &[(&str, &str)] = &[
    ("cs_tcp_zerowindowdead.pcapng", "tshark counts each of the 4 zero-window packets; we count 1 episode (the window never re-opens) and the 4 packets in `zero_window_packets` (shared_pcaps `cs_tcp_zerowindowdead`)"),
    ("router_any_twice.pcap", "`tcpdump -i any` on a router: every packet twice (TTL 64, then 63, same IP ID); tshark's 143 retransmissions and 28 dup ACKs are second copies, counted once here (`capture_duplicates` 171; shared_pcaps `lab_router_any_capture_counts_each_packet_once`)"),
    ("sv_bug-3616-smtp_pmtud.pcap", "frame 27 re-sends data first seen in frame 22 right after an ICMP frag-needed: a path-MTU resend, not reordering, so 5 resends (shared_pcaps `sv_bug_3616_smtp_pmtud`)"),
    ("sv_bug-4376_syn_retransmit_vlan.pcap", "frame 51 re-sends seq 11585 after the receiver SACKed above it: a SACK-recovered fast retransmission, not reordering (shared_pcaps `sv_bug_4376_syn_retransmit_vlan`); tshark's ack_rtt is the capture host's own ACK delay"),
    ("sv_http-body-hook-01_ipv6.pcap", "frames 519, 539 and 541 fill holes 34-44 ms after they opened, with newer TSvals, on a 14.9 ms path: three resends of losses upstream of the capture; tshark calls 541 out of order (shared_pcaps `sv_http_body_hook_ipv6`)"),
    ("zeek-tcprs_comp008.pcap", "Zeek's TCPRS analyser finds our 56 retransmissions and 3 reorderings; tshark's 7 other out-of-order segments re-send data seen before; dup ACKs per RFC 5681 need an unchanged window and outstanding data (shared_pcaps `zeek_tcprs_comp008`)"),
    ("zeek_pppoe-over-qinq.pcap", "frames 57-58 re-send data first seen in frames 50-51: resends, not reordering; spurious: tshark's 12 plus frame 59 (a D-SACK); RFC 5681 dup ACKs need outstanding data and an unchanged window, 4 of tshark's 13 (shared_pcaps `zeek_pppoe_over_qinq`)"),
    ("zeek_vlan-collisions.pcap", "one flow copied onto untagged, VLAN 42 and QinQ 10/20: tshark merges them and sees every copy as a retransmission; VLAN-aware keys give three clean flows (shared_pcaps `zeek_vlan_collisions`)"),
];
