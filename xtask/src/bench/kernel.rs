//! Kernel cost per packet without a network in front of the programs: each
//! Phalanx program, as loaded by the daemon, run on fixed frames by
//! BPF_PROG_TEST_RUN, which times the runs in the kernel. Unlike bpf_stats
//! under iperf3, the figure does not move with the machine's load, so a
//! change to the programs shows up here first.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use phalanx_lab::{metric, sh, TwoHosts};

use super::{start_daemon, Row};

/// The daemon's loaded program, run from this process with
/// BPF_PROG_TEST_RUN: small chunks paced precisely, where each
/// `bpftool prog run` would cost a process start.
pub(crate) struct TestRun {
    fd: libc::c_int,
    frame: Vec<u8>,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the fields up to `batch_size`).
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

impl TestRun {
    /// Opens program `id` to run it on `frame`.
    pub(crate) fn open(id: u64, frame: &[u8]) -> Result<Self> {
        // `union bpf_attr` for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
        let mut attr = [0u32; 4];
        attr[0] = u32::try_from(id).context("program id")?;
        // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_FD_BY_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            bail!(
                "BPF_PROG_GET_FD_BY_ID {id}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            fd: fd as libc::c_int,
            frame: frame.to_vec(),
        })
    }

    /// Runs the program `repeat` times; returns the kernel's mean ns per run.
    pub(crate) fn run(&self, repeat: u32) -> Result<u32> {
        self.run_on(&self.frame, repeat)
    }

    /// Runs the program `repeat` times on `frame` instead of the frame it
    /// was opened with.
    pub(crate) fn run_on(&self, frame: &[u8], repeat: u32) -> Result<u32> {
        let mut attr = TestRunAttr {
            prog_fd: self.fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        // SAFETY: attr points at a valid bpf_attr; data_in outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if r < 0 {
            bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
        }
        Ok(attr.duration)
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns.
        unsafe { libc::close(self.fd) };
    }
}

/// Id of the newest loaded program called `name`.
pub(crate) fn prog_id(name: &str) -> Result<u64> {
    let out = sh(&["bpftool", "-j", "prog", "show"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str() == Some(name))
        .filter_map(|p| p["id"].as_u64())
        .max()
        .with_context(|| format!("no loaded program {name}"))
}

/// TCP options: NOP, NOP, timestamps (the Linux default on every segment).
pub(crate) const OPT_TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
/// Timestamps and one SACK block (a receiver reporting a hole).
const OPT_TS_SACK: [u8; 24] = [
    1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 10, 0, 0, 0x10, 0, 0, 0, 0x20, 0,
];

/// Ethernet + IPv4 + TCP frame with `opts` and `payload` bytes of data
/// (checksums are not checked by the parser).
pub(crate) fn tcp_frame(opts: &[u8], payload: usize, flags: u8) -> Vec<u8> {
    let tcp_len = 20 + opts.len();
    let ip_len = 20 + tcp_len + payload;
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0x20, 0]);
    f.push(((tcp_len / 4) as u8) << 4);
    f.extend_from_slice(&[flags, 0x01, 0xf5, 0, 0, 0, 0]);
    f.extend_from_slice(opts);
    f.resize(f.len() + payload, 0x5a);
    f
}

/// The frames every program is timed on.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("ACK with timestamps (66 B)", tcp_frame(&OPT_TS, 0, 0x10)),
        (
            "ACK with timestamps and SACK (78 B)",
            tcp_frame(&OPT_TS_SACK, 0, 0x10),
        ),
        (
            "data segment with timestamps (1514 B)",
            tcp_frame(&OPT_TS, 1448, 0x18),
        ),
    ]
}

/// Runs per chunk: small enough that a chunk's records (about 200 bytes
/// each) fit the ring many times over while the daemon drains it.
const CHUNK: u32 = 2_000;

/// Median ns per run of `id` on `frame` over `chunks` paced chunks.
fn time_program(id: u64, frame: &[u8], chunks: usize) -> Result<f64> {
    let t = TestRun::open(id, frame)?;
    t.run(CHUNK)?;
    let mut ns = Vec::with_capacity(chunks);
    for _ in 0..chunks {
        ns.push(f64::from(t.run(CHUNK)?));
        // Leaves the consumer time to drain the chunk's records.
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(super::median(ns))
}

/// Kernel cost rows: every program on every frame, with no scope filter (a
/// record each) and, in the full run, with a filter the frames miss (parse
/// and filter lookups, no record).
pub(crate) fn kernel(
    phalanx: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let lab = TwoHosts::new("bk").context("lab")?;
    let dir = std::env::temp_dir().join(format!("phalanx-bench-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out_of_scope = dir.join("out-of-scope.toml");
    std::fs::write(
        &out_of_scope,
        "[[capture.filters]]\nproto = \"tcp\"\nport = 9\n",
    )?;
    let result = (|| -> Result<()> {
        let chunks = if quick { 10 } else { 40 };
        for (mode, programs) in [
            ("tcx", &["phalanx_tc_ingress", "phalanx_tc_egress"][..]),
            ("xdp", &["phalanx_xdp"][..]),
        ] {
            let scopes: &[(&str, Option<&std::path::PathBuf>)] = if quick {
                &[("in scope", None)]
            } else {
                &[("in scope", None), ("out of scope", Some(&out_of_scope))]
            };
            for &(scope, config) in scopes {
                let daemon = start_daemon(&lab, phalanx, mode, config.map(|p| p.as_path()))?;
                for &prog in programs {
                    let id = prog_id(prog)?;
                    for (what, frame) in frames() {
                        let ns = time_program(id, &frame, chunks)?;
                        rows.push(Row {
                            figure: format!(
                                "kernel cost, {prog} on a {what}, {scope} (BPF_PROG_TEST_RUN)"
                            ),
                            phalanx: format!("{ns:.0} ns/packet"),
                            peer: "-".into(),
                            ratio: "-".into(),
                            goal: "-".into(),
                            pass: None,
                            verdict: None,
                        });
                    }
                }
                let m = daemon.text("/metrics")?;
                writeln!(
                    notes,
                    "- kernel cost ({mode}, {scope}): {} runs, {} records submitted, {} ring-full drops",
                    metric(&m, "phalanx_kernel_packets_seen_total"),
                    metric(&m, "phalanx_kernel_records_submitted_total"),
                    metric(&m, "phalanx_kernel_ring_full_drops_total"),
                )?;
                daemon.stop();
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
