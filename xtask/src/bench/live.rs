//! Live overhead: iperf3 over a veth pair with no program, Phalanx tcx,
//! Phalanx xdp, and `tcpdump -s 128 -w /dev/null`, under two workloads:
//! bulk TCP (offloads at their defaults, so GSO super-packets) and unpaced
//! 64-byte UDP datagrams (one program run per packet, where a capture
//! path's per-packet cost shows). Each round runs one iperf3 connection per
//! workload while the four setups take turns on it in a rotated order, each
//! measured over a window of its own: throughput, machine CPU per unit
//! moved and the capture process's own CPU; kernel ns per packet from
//! bpf_stats.

use std::{
    fmt::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use phalanx_lab::{metric, sh, Proc, TwoHosts};

use super::{median, start_daemon, Daemon, Row};

/// The machine's busy CPU time (all CPUs, softirq included), read from
/// cpuidle's residency counters where every online CPU has them: exact to
/// the microsecond, where /proc/stat counts 10-ms ticks, 2 % of a
/// half-second slice. A CPU's counter moves when it leaves an idle state,
/// so the reading runs on a CPU that is awake (the reader's) or busy (the
/// load's).
struct BusyClock {
    /// Every idle state's `time` file (µs), or none to read /proc/stat.
    idle: Vec<std::path::PathBuf>,
    cpus: usize,
    since: Instant,
}

impl BusyClock {
    fn new() -> Self {
        let (idle, cpus) = Self::idle_files().unwrap_or_default();
        Self {
            idle,
            cpus,
            since: Instant::now(),
        }
    }

    /// Every online CPU's idle-state `time` files and the number of CPUs,
    /// or `None` when some CPU has no cpuidle driver.
    fn idle_files() -> Option<(Vec<std::path::PathBuf>, usize)> {
        let online = std::fs::read_dir("/sys/devices/system/cpu")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("cpu"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter(|p| {
                std::fs::read_to_string(p.join("online")).map_or(true, |s| s.trim() == "1")
            });
        let mut idle = Vec::new();
        let mut cpus = 0;
        for cpu in online {
            cpus += 1;
            let before = idle.len();
            idle.extend(
                std::fs::read_dir(cpu.join("cpuidle"))
                    .ok()?
                    .flatten()
                    .map(|e| e.path().join("time"))
                    .filter(|t| t.exists()),
            );
            if idle.len() == before {
                return None;
            }
        }
        (cpus > 0).then_some((idle, cpus))
    }

    /// Where the readings come from, for the notes.
    fn source(&self) -> &'static str {
        if self.idle.is_empty() {
            "/proc/stat ticks"
        } else {
            "cpuidle residency (µs)"
        }
    }

    /// Busy CPU seconds so far (from an arbitrary origin), less the time
    /// the hypervisor stole: that is not ours.
    fn busy_s(&self) -> f64 {
        let (busy, steal) = proc_stat_busy();
        if self.idle.is_empty() {
            return busy;
        }
        let idle_us: u64 = self
            .idle
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
            .sum();
        self.cpus as f64 * self.since.elapsed().as_secs_f64() - idle_us as f64 / 1e6 - steal
    }
}

/// Busy and stolen CPU seconds of the whole machine so far, from
/// /proc/stat's ticks.
fn proc_stat_busy() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return (0.0, 0.0);
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
    let steal = v.get(7).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (busy as f64 / hz, steal as f64 / hz)
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

/// CPU layout of the live and ring runs. With 2 or more CPUs the load
/// (iperf3 client and server, or the ring's senders) runs on CPU 0 with
/// the veth path, its softirq work and our kernel programs, and the capture
/// process gets CPU 1, as a capture daemon has its own core on a production
/// host. Unpinned, four busy tasks on two cores make the scheduler the
/// largest variable.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub(super) pinned: bool,
}

impl Layout {
    pub(super) fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self { pinned: cpus >= 2 }
    }

    /// Pins the calling thread to CPU 0, where the load runs.
    pub(super) fn pin_load_thread(self) -> Result<()> {
        if self.pinned {
            set_affinity(&[0])?;
        }
        Ok(())
    }

    /// Moves the calling thread to CPU 1, the capture's, until the guard
    /// drops. Processes it spawns inherit the CPU from their first
    /// instruction, and so do all their threads.
    pub(super) fn move_to_capture_cpu(self) -> Result<CpuGuard> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set that
        // sched_getaffinity(0 = this thread) fills.
        let (r, before) = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (r, set)
        };
        if r != 0 {
            anyhow::bail!(
                "reading the bench thread's CPUs: {}",
                std::io::Error::last_os_error()
            );
        }
        if self.pinned {
            set_affinity(&[1])?;
        }
        Ok(CpuGuard { before })
    }

    /// Runs `start`, which spawns a capture process, from CPU 1: a daemon
    /// verifying its programs or a tcpdump setting up its ring never runs
    /// on the load's core.
    pub(super) fn start_capture<T>(self, start: impl FnOnce() -> Result<T>) -> Result<T> {
        let _back = self.move_to_capture_cpu()?;
        start()
    }
}

/// Gives the calling thread back the CPUs it had when dropped.
pub(super) struct CpuGuard {
    before: libc::cpu_set_t,
}

impl Drop for CpuGuard {
    fn drop(&mut self) {
        // SAFETY: `before` is the set sched_getaffinity filled; the call
        // only reads it.
        let r = unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.before)
        };
        if r != 0 {
            eprintln!(
                "restoring the bench thread's CPUs: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Sets the calling thread's CPUs.
fn set_affinity(cpus: &[usize]) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity(0 = this thread) only read and write it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        anyhow::bail!(
            "pinning to CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A one-shot iperf3 server on host b (address 2), ready to accept.
pub(super) fn iperf_server(lab: &TwoHosts) -> Result<Proc> {
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
/// xdp, TCP and UDP in scope), tcpdump, or nothing ("none"); started on
/// the capture CPU of `layout`.
pub(super) struct CaptureUnderTest<'a> {
    daemon: Option<Daemon<'a>>,
    dump: Option<Proc>,
}

impl<'a> CaptureUnderTest<'a> {
    pub(super) fn start(
        lab: &'a TwoHosts,
        phalanx: &Path,
        setup: &str,
        layout: Layout,
    ) -> Result<Self> {
        layout.start_capture(|| {
            let daemon = match setup {
                "tcx" | "xdp" => {
                    // Every TCP and UDP packet in scope, as tcpdump copies
                    // every packet (the default scope is TCP only).
                    let scope = std::env::temp_dir()
                        .join(format!("phalanx-bench-scope-{}.toml", std::process::id()));
                    std::fs::write(&scope, "[[capture.filters]]\nproto = \"any\"\n")?;
                    let d = start_daemon(lab, phalanx, setup, Some(&scope));
                    let _ = std::fs::remove_file(&scope);
                    Some(d?)
                }
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
            Ok(Self { daemon, dump })
        })
    }

    /// Pid of the capture process (`ip netns exec` execs the tool, so the
    /// child's pid is the tool's).
    pub(super) fn pid(&self) -> Option<u32> {
        self.daemon
            .as_ref()
            .map(Daemon::pid)
            .or(self.dump.as_ref().map(Proc::id))
    }

    /// Stops the capture (the daemon detaches its programs).
    pub(super) fn stop(self) {
        if let Some(d) = self.daemon {
            d.stop();
        }
        drop(self.dump);
    }
}

/// CPU seconds a process's threads have run so far, from schedstat (ns):
/// in clock ticks (10 ms) a 3-s window's few milliseconds would round away.
fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// The two loads iperf3 puts on the veth pair.
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// One TCP stream, default message size: GSO super-packets.
    Bulk,
    /// Unpaced UDP, 64-byte payloads: one packet per datagram.
    Small,
}

impl Workload {
    const ALL: [Workload; 2] = [Workload::Bulk, Workload::Small];

    fn name(self) -> &'static str {
        match self {
            Workload::Bulk => "iperf3 TCP over veth",
            Workload::Small => "iperf3 UDP 64-byte datagrams over veth",
        }
    }

    /// Rate as printed, and the unit the machine's CPU is divided by.
    fn units(self) -> (&'static str, &'static str) {
        match self {
            Workload::Bulk => ("Gbit/s", "s/GB"),
            Workload::Small => ("k packets/s received", "s per M packets"),
        }
    }

    /// Printed rate per unit moved per second (GB/s as Gbit/s, M/s as k/s).
    fn rate_scale(self) -> f64 {
        match self {
            Workload::Bulk => 8.0,
            Workload::Small => 1e3,
        }
    }
}

/// Field `index` of interface `iface`'s line in a /proc/<pid>/net/dev.
fn net_dev_field(text: &str, iface: &str, index: usize) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(iface)?.strip_prefix(':'))?
        .split_whitespace()
        .nth(index)?
        .parse()
        .ok()
}

/// A counter of /proc/<pid>/net/snmp: `group` ("Udp") and field name, from
/// the group's header line and the value line after it.
fn snmp_field(text: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    names
        .zip(values)
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
}

/// One iperf3 connection that runs for a whole round while the capture
/// setups take turns on the interface: a setup's window and the next
/// setup's are seconds apart on the same connection, so neither the
/// machine's drift nor a connection's own state separates them (TCP rounds
/// differ by up to 20 % here; separate runs per setup gave intervals
/// twice as wide).
struct Load<'a> {
    lab: &'a TwoHosts,
    workload: Workload,
    client: Proc,
    server: Proc,
    clock: &'a BusyClock,
}

impl<'a> Load<'a> {
    /// Starts server and client (both on CPU 0 when pinned) and waits out
    /// slow start and buffer autotuning.
    fn start(
        lab: &'a TwoHosts,
        clock: &'a BusyClock,
        workload: Workload,
        secs: u32,
        layout: Layout,
    ) -> Result<Self> {
        let server = iperf_server(lab)?;
        let address = lab.v4(2).to_string();
        let secs = secs.to_string();
        let mut args = vec!["-c", &address, "-t", &secs];
        if workload == Workload::Small {
            args.extend(["-u", "-b", "0", "-l", "64"]);
        }
        if layout.pinned {
            // Client affinity, server affinity: both on CPU 0.
            args.extend(["-A", "0,0"]);
        }
        let client = Proc::new(
            lab.a
                .command("iperf3")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3")?,
        );
        let load = Load {
            lab,
            workload,
            client,
            server,
            clock,
        };
        let before = load.moved()?;
        std::thread::sleep(Duration::from_secs(1));
        anyhow::ensure!(
            load.moved()? > before,
            "iperf3 moved nothing in its first second"
        );
        Ok(load)
    }

    /// Units moved so far: GB out of host a's interface (TCP), or million
    /// datagrams delivered to the server's sockets in host b (UDP; those
    /// its socket buffer refused are not counted). Read from the
    /// namespaces' own /proc/<pid>/net files: no process spawned per read.
    fn moved(&self) -> Result<f64> {
        match self.workload {
            Workload::Bulk => {
                let path = format!("/proc/{}/net/dev", self.client.id());
                let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
                // rx: bytes packets errs drop fifo frame compressed
                // multicast, then tx bytes.
                let bytes = net_dev_field(&text, &self.lab.a_if, 8)
                    .with_context(|| format!("no {} in {path}", self.lab.a_if))?;
                Ok(bytes as f64 / 1e9)
            }
            Workload::Small => {
                let path = format!("/proc/{}/net/snmp", self.server.id());
                let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
                let n = snmp_field(&text, "Udp", "InDatagrams")
                    .with_context(|| format!("no Udp InDatagrams in {path}"))?;
                Ok(n as f64 / 1e6)
            }
        }
    }
}

/// What a window is measured between.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    moved: f64,
    busy: f64,
    capture: f64,
}

/// One window of one capture setup: its rate (Gbit/s, or thousands of
/// datagrams delivered per second), the whole machine's busy CPU seconds
/// per unit moved (GB, or million datagrams), and the capture process's
/// own share of it.
#[derive(Clone, Copy)]
struct Measure {
    rate: f64,
    cpu_per_unit: f64,
    capture_per_unit: f64,
}

/// What the daemons reported over a setup's windows.
#[derive(Clone, Copy, Default)]
struct Tally {
    windows: u64,
    decoded: u64,
    drops: u64,
}

/// A window is read in slices of this length.
const SLICE: Duration = Duration::from_millis(500);

/// Time given a capture to settle after it is up, before its window opens.
const SETTLE: Duration = Duration::from_millis(500);

/// Starts `setup` on the running load, measures a window of `secs`, stops it.
/// With `kernel_ns` (bpf_stats on), the programs' ns per run go there.
fn window(
    load: &Load<'_>,
    phalanx: &Path,
    setup: &str,
    secs: f64,
    layout: Layout,
    kernel_ns: Option<&mut Vec<(String, f64)>>,
    tally: &mut Tally,
) -> Result<Measure> {
    let capture = CaptureUnderTest::start(load.lab, phalanx, setup, layout)?;
    std::thread::sleep(SETTLE);
    let pid = capture.pid();
    let sample = || -> Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            moved: load.moved()?,
            busy: load.clock.busy_s(),
            capture: pid.map_or(0.0, proc_cpu_s),
        })
    };
    let stats0 = kernel_ns.is_some().then(prog_stats).transpose()?;
    let slices = (secs / SLICE.as_secs_f64()).round().max(1.0) as usize;
    let mut samples = vec![sample()?];
    for _ in 0..slices {
        std::thread::sleep(SLICE);
        samples.push(sample()?);
    }
    if let Some(d) = &capture.daemon {
        if let (Some(kernel_ns), Some(stats0)) = (kernel_ns, stats0) {
            for (name, t1, c1) in prog_stats()? {
                let (t0, c0) = stats0
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
        let m = d.text("/metrics")?;
        tally.windows += 1;
        tally.decoded += metric(&m, "phalanx_capture_records_decoded_total");
        tally.drops += metric(&m, "phalanx_kernel_ring_full_drops_total")
            + metric(&m, "phalanx_capture_backlog_dropped_total");
    }
    capture.stop();
    let mut parts = Vec::with_capacity(slices);
    for w in samples.windows(2) {
        let (a, b) = (w[0], w[1]);
        let moved = b.moved - a.moved;
        anyhow::ensure!(moved > 0.0, "iperf3 stalled for {:?} under {setup}", SLICE);
        parts.push(Slice {
            secs: (b.at - a.at).as_secs_f64(),
            moved,
            busy: b.busy - a.busy,
            capture: b.capture - a.capture,
        });
    }
    Ok(fastest_slices(&parts, load.workload.rate_scale()))
}

/// One slice of a window: its length, units moved, the machine's busy CPU
/// seconds and the capture process's.
#[derive(Clone, Copy, Debug)]
struct Slice {
    secs: f64,
    moved: f64,
    busy: f64,
    capture: f64,
}

/// A window's figures from its fastest slices, three of five: the host
/// only ever takes throughput away (iperf3 dips by 10–45 % for a slice or
/// two, every 10–12 s on this machine), so a window's slowest slices
/// are where it most likely met the host rather than the setup under
/// test. Rate, machine CPU and the capture's CPU come from the same
/// slices.
fn fastest_slices(parts: &[Slice], rate_scale: f64) -> Measure {
    let mut by_rate: Vec<&Slice> = parts.iter().collect();
    by_rate.sort_by(|a, b| (b.moved / b.secs).total_cmp(&(a.moved / a.secs)));
    let keep = ((parts.len() * 3 + 2) / 5).max(1);
    let kept = &by_rate[..keep.min(by_rate.len())];
    let sum = |f: fn(&Slice) -> f64| kept.iter().map(|p| f(p)).sum::<f64>();
    let moved = sum(|p| p.moved);
    Measure {
        rate: rate_scale * moved / sum(|p| p.secs),
        cpu_per_unit: sum(|p| p.busy) / moved,
        capture_per_unit: sum(|p| p.capture) / moved,
    }
}

/// Median and relative spread ((max - min) / median) of a sample.
fn stats(v: &[f64]) -> (f64, f64) {
    let m = median(v.to_vec());
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (m, if m > 0.0 { (hi - lo) / m } else { 0.0 })
}

/// Capture setups; [`round_order`] says which take turns in a round.
const SETUPS: [&str; 4] = ["none", "tcx", "tcpdump", "xdp"];
/// Indices of the setups in [`SETUPS`].
const NONE: usize = 0;
const TCX: usize = 1;
const TCPDUMP: usize = 2;
const XDP: usize = 3;

/// The setups of a round, in turn. tcx runs between no program and
/// tcpdump, so both comparisons with goals pair windows that follow each
/// other (a connection's throughput shifts by up to 10 % within seconds
/// here, so pairs further apart differ by more); over every four rounds
/// each pair runs in both orders as often, so a trend within a round
/// favours neither side. xdp (no goal) joins every other round, next to
/// no program, and sits out the others: for the same time the goal
/// comparisons get 1.17× the rounds of rounds of four alone.
fn round_order(round: usize) -> Vec<usize> {
    let mut order = vec![NONE, TCX, TCPDUMP];
    if round.is_multiple_of(2) {
        order.insert(0, XDP);
    }
    if matches!(round % 4, 1 | 2) {
        order.reverse();
    }
    order
}

/// A setup's figure in each round, `None` where it sat the round out.
type Series = Vec<Option<f64>>;

/// One figure of every setup's windows, per setup.
fn series(runs: &[Vec<Option<Measure>>], figure: fn(&Measure) -> f64) -> Vec<Series> {
    runs.iter()
        .map(|r| r.iter().map(|m| m.as_ref().map(figure)).collect())
        .collect()
}

/// The rounds' figures that are there.
fn present(v: &[Option<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

/// The typical per-round ratio `a[i] / b[i]` and its 95 % interval.
#[derive(Clone, Copy, Debug)]
struct Paired {
    ratio: f64,
    lo: f64,
    hi: f64,
}

/// Compares two setups round by round, over the rounds both ran: the
/// setups of one round run back to back, so their ratio cancels what
/// drifts between rounds on a shared machine. The estimate is the
/// Hodges–Lehmann one on the log-ratios (the median of their pairwise
/// means, the Walsh averages) and the interval the one that goes with it,
/// from the Wilcoxon signed-rank distribution (normal approximation): with
/// a window's slowest slices set aside the log-ratios have no heavy tail
/// left, and this uses every round's value where a median of ratios rests
/// on the one or two middle rounds (its bootstrap interval jumps between
/// them). Deterministic: the same figures give the same interval.
fn paired(a: &[Option<f64>], b: &[Option<f64>]) -> Paired {
    let logs: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some((*x.as_ref()?, *y.as_ref()?)))
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x / y).ln())
        .collect();
    let n = logs.len();
    if n == 0 {
        return Paired {
            ratio: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let mut walsh = Vec::with_capacity(n * (n + 1) / 2);
    for (i, x) in logs.iter().enumerate() {
        for y in &logs[i..] {
            walsh.push((x + y) / 2.0);
        }
    }
    walsh.sort_by(|x, y| x.total_cmp(y));
    // Walsh averages cut off on each side: the signed-rank statistic's
    // 2.5 % point, n(n+1)/4 - 1.96 sd; few rounds (--quick) keep them all.
    let nf = n as f64;
    let cut =
        nf * (nf + 1.0) / 4.0 - 1.959_964 * (nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0).sqrt();
    let k = (cut.floor().max(0.0) as usize).min((walsh.len() - 1) / 2);
    let (lo, hi) = (walsh[k].exp(), walsh[walsh.len() - 1 - k].exp());
    Paired {
        ratio: median(walsh).exp(),
        lo,
        hi,
    }
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

/// Live overhead rows: the capture setups taking turns on one iperf3
/// connection per workload and round (all four, or all but xdp:
/// [`round_order`]), plus kernel ns per packet from windows of their own.
/// Comparisons carry a 95 % signed-rank interval over the rounds both setups
/// ran; a goal is met or missed only when the whole interval says so.
pub(super) fn live(
    phalanx: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let lab = TwoHosts::new("bl").context("lab")?;
    let (secs, rounds) = if quick { (2.0, 2) } else { (2.5, 28) };
    let layout = Layout::detect();
    let clock = BusyClock::new();
    // The bench's own readings and helpers (taskset, bpftool, API polls)
    // stay off the load's core too.
    let _on_capture_cpu = layout.move_to_capture_cpu()?;
    writeln!(
        notes,
        "- live runs: {}; machine CPU from {}",
        if layout.pinned {
            "iperf3 client and server pinned to CPU 0 (with the veth path and our kernel programs), the capture process (daemon or tcpdump) to CPU 1 from its start, with the bench's own readings and helpers"
        } else {
            "one CPU: nothing pinned"
        },
        clock.source()
    )?;
    // runs[workload][setup][round]: one window, or none when the setup sat
    // the round out.
    let mut runs: Vec<Vec<Vec<Option<Measure>>>> = vec![vec![Vec::new(); SETUPS.len()]; 2];
    let mut tallies = [[Tally::default(); SETUPS.len()]; 2];
    let mut kernel_ns: Vec<(String, f64)> = Vec::new();
    // Long enough for a round's windows with their starts and stops; the
    // load is stopped when the round ends.
    let load_secs = SETUPS.len() as u32 * (secs as u32 + 15) + 10;
    let result = (|| -> Result<()> {
        for round in 0..rounds {
            for (wi, w) in Workload::ALL.into_iter().enumerate() {
                let load = Load::start(&lab, &clock, w, load_secs, layout)?;
                let mut got = [None; SETUPS.len()];
                for i in round_order(round) {
                    got[i] = Some(window(
                        &load,
                        phalanx,
                        SETUPS[i],
                        secs,
                        layout,
                        None,
                        &mut tallies[wi][i],
                    )?);
                }
                for (i, m) in got.into_iter().enumerate() {
                    runs[wi][i].push(m);
                }
            }
        }
        // bpf_stats times every program run with two clock reads (tens of
        // ns in this VM) that tcpdump's path does not pay: the comparison
        // windows above run without it, the kernel-cost windows apart.
        sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"])?;
        let load = Load::start(&lab, &clock, Workload::Bulk, load_secs, layout)?;
        for _ in 0..rounds.min(3) {
            for setup in ["tcx", "xdp"] {
                let mut tally = Tally::default();
                window(
                    &load,
                    phalanx,
                    setup,
                    secs,
                    layout,
                    Some(&mut kernel_ns),
                    &mut tally,
                )?;
            }
        }
        Ok(())
    })();
    let _ = sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"]);
    result?;
    for (wi, w) in Workload::ALL.into_iter().enumerate() {
        workload_rows(w, &runs[wi], secs, rows, notes)?;
        for (i, t) in tallies[wi]
            .iter()
            .enumerate()
            .filter(|(_, t)| t.windows > 0)
        {
            writeln!(
                notes,
                "- {}, {}: {} windows, records decoded {}, drops {}",
                w.name(),
                SETUPS[i],
                t.windows,
                t.decoded,
                t.drops
            )?;
        }
    }
    // Every window's figures, for a reader who wants another estimator.
    for (wi, w) in Workload::ALL.into_iter().enumerate() {
        let (rate_unit, cpu_unit) = w.units();
        writeln!(
            notes,
            "- {} windows per round, in the order run ({rate_unit}; machine CPU {cpu_unit}):",
            w.name()
        )?;
        for round in 0..rounds {
            let cells: Vec<String> = round_order(round)
                .into_iter()
                .filter_map(|i| {
                    let m = runs[wi][i].get(round).copied().flatten()?;
                    Some(format!(
                        "{} {:.3}; {:.4}",
                        SETUPS[i], m.rate, m.cpu_per_unit
                    ))
                })
                .collect();
            writeln!(notes, "  - round {}: {}", round + 1, cells.join(" | "))?;
        }
    }
    // Part of the machine figure, shown apart: the daemon analyses every
    // record, tcpdump -w /dev/null only copies them.
    for (wi, w) in Workload::ALL.into_iter().enumerate() {
        let v = series(&runs[wi], |m| m.capture_per_unit);
        let p = paired(&v[TCX], &v[TCPDUMP]);
        let unit = w.units().1;
        rows.push(Row {
            figure: format!(
                "tcx vs tcpdump -s 128, {}: capture process CPU (daemon vs tcpdump; part of the machine figure; 95 % interval)",
                w.name()
            ),
            phalanx: format!("{:.4} {unit}", median(present(&v[TCX]))),
            peer: format!("{:.4} {unit} (tcpdump)", median(present(&v[TCPDUMP]))),
            ratio: format!("{:.2}× ({:.2} … {:.2})", p.ratio, p.lo, p.hi),
            goal: "-".into(),
            pass: None,
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
        let (m, spread) = stats(&vs);
        rows.push(Row {
            figure: format!("kernel cost, {k} (bpf_stats, TCP run)"),
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

/// Rows of one workload: each setup against no program, and tcx against
/// tcpdump, on rate and on machine CPU per unit moved.
fn workload_rows(
    w: Workload,
    runs: &[Vec<Option<Measure>>],
    secs: f64,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let (rate_unit, cpu_unit) = w.units();
    let rate = series(runs, |m| m.rate);
    let cpu = series(runs, |m| m.cpu_per_unit);
    for (i, setup) in SETUPS.iter().enumerate() {
        let windows = present(&rate[i]);
        let (g, gs) = stats(&windows);
        let (c, cs) = stats(&present(&cpu[i]));
        writeln!(
            notes,
            "- {}, {setup}: {} windows of {secs} s, median {g:.2} {rate_unit} (spread {:.0} %), machine CPU {c:.3} {cpu_unit} (spread {:.0} %)",
            w.name(),
            windows.len(),
            100.0 * gs,
            100.0 * cs,
        )?;
    }
    // Only the bulk workload carries the goals against no program;
    // both carry "better than tcpdump".
    let goals = w == Workload::Bulk;
    let pct = |x: f64| 100.0 * (x - 1.0);
    let base_g = median(present(&rate[NONE]));
    let base_c = median(present(&cpu[NONE]));
    for (i, setup) in SETUPS.iter().enumerate().skip(1) {
        let goal = goals && i == TCX;
        let g = median(present(&rate[i]));
        let c = median(present(&cpu[i]));
        // Cost = 1 - throughput ratio; within 5 % when the ratio is above 0.95.
        let Paired { ratio: r, lo, hi } = paired(&rate[i], &rate[NONE]);
        let (pass, v) = verdict((lo / 0.95, hi / 0.95), true);
        rows.push(Row {
            figure: format!(
                "{}, {setup}: throughput (median, cost with its 95 % interval)",
                w.name()
            ),
            phalanx: format!("{g:.2} {rate_unit}"),
            peer: format!("{base_g:.2} no program"),
            ratio: format!(
                "{:+.1} % cost ({:+.1} … {:+.1})",
                -pct(r),
                -pct(hi),
                -pct(lo)
            ),
            goal: if goal { "≤ 5 % cost" } else { "-" }.into(),
            pass: pass.filter(|_| goal),
            verdict: v.filter(|_| goal),
        });
        let Paired { ratio: r, lo, hi } = paired(&cpu[i], &cpu[NONE]);
        let (pass, v) = verdict((lo / 1.5, hi / 1.5), false);
        rows.push(Row {
            figure: format!(
                "{}, {setup}: machine CPU {cpu_unit} (95 % interval)",
                w.name()
            ),
            phalanx: format!("{c:.3} {cpu_unit}"),
            peer: format!("{base_c:.3} no program"),
            ratio: format!("{r:.2}× ({lo:.2} … {hi:.2})"),
            goal: if goal { "≤ 1.5× no program" } else { "-" }.into(),
            pass: pass.filter(|_| goal),
            verdict: v.filter(|_| goal),
        });
    }
    let (t, d) = (TCX, TCPDUMP);
    for (what, v, higher_is_better, unit) in [
        ("throughput", &rate, true, rate_unit),
        ("machine CPU", &cpu, false, cpu_unit),
    ] {
        let p = paired(&v[t], &v[d]);
        let (pass, verdict) = verdict((p.lo, p.hi), higher_is_better);
        rows.push(Row {
            figure: format!(
                "tcx vs tcpdump -s 128, {}: {what} (95 % interval)",
                w.name()
            ),
            phalanx: format!("{:.3} {unit}", median(present(&v[t]))),
            peer: format!("{:.3} (tcpdump)", median(present(&v[d]))),
            ratio: format!("{:.3}× ({:.3} … {:.3})", p.ratio, p.lo, p.hi),
            goal: "better than tcpdump".into(),
            pass,
            verdict,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        fastest_slices, net_dev_field, round_order, snmp_field, verdict, BusyClock, Slice, NONE,
        SETUPS, TCPDUMP, TCX, XDP,
    };

    fn paired(a: &[f64], b: &[f64]) -> super::Paired {
        let all = |v: &[f64]| v.iter().copied().map(Some).collect::<Vec<_>>();
        super::paired(&all(a), &all(b))
    }

    #[test]
    fn proc_net_counters_are_read_by_name() {
        // Shapes as the kernel prints them: a counter may run into the colon.
        let dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  212528    1191    0    0    0     0          0         0   212528    1191    0    0    0     0       0          0
  eth01: 5 6 0 0 0 0 0 0 7 8 0 0 0 0 0 0
  eth0:12345678901 9 0 0 0 0 0 0 98765432109 11 0 0 0 0 0 0
";
        assert_eq!(net_dev_field(dev, "eth0", 8), Some(98_765_432_109));
        assert_eq!(net_dev_field(dev, "eth0", 0), Some(12_345_678_901));
        assert_eq!(net_dev_field(dev, "eth01", 8), Some(7));
        assert_eq!(net_dev_field(dev, "eth1", 8), None);
        let snmp = "Tcp: RtoAlgorithm RtoMin
Tcp: 1 200
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors
Udp: 4242 1 7 68 7
UdpLite: InDatagrams NoPorts
UdpLite: 99 0
";
        assert_eq!(snmp_field(snmp, "Udp", "InDatagrams"), Some(4242));
        assert_eq!(snmp_field(snmp, "Udp", "RcvbufErrors"), Some(7));
        assert_eq!(snmp_field(snmp, "UdpLite", "InDatagrams"), Some(99));
        assert_eq!(snmp_field(snmp, "Udp", "MemErrors"), None);
    }

    #[test]
    fn a_window_counts_its_three_fastest_slices_of_five_for_every_figure() {
        let slice = |moved: f64, busy: f64, capture: f64| Slice {
            secs: 0.5,
            moved,
            busy,
            capture,
        };
        // The host took the CPU away in two slices: less moved for about
        // the same busy time.
        let parts = [
            slice(1.00, 0.505, 0.002),
            slice(0.60, 0.505, 0.002),
            slice(1.02, 0.506, 0.003),
            slice(0.80, 0.504, 0.002),
            slice(0.98, 0.507, 0.001),
        ];
        let m = fastest_slices(&parts, 8.0);
        assert!((m.rate - 8.0 * 3.0 / 1.5).abs() < 1e-9, "{}", m.rate);
        assert!((m.cpu_per_unit - 1.518 / 3.0).abs() < 1e-9);
        assert!((m.capture_per_unit - 0.006 / 3.0).abs() < 1e-9);
        // Order does not matter; four slices keep two, one keeps itself.
        let mut rev = parts;
        rev.reverse();
        assert_eq!(fastest_slices(&rev, 8.0).rate, m.rate);
        let four = fastest_slices(&parts[..4], 1.0);
        assert!((four.rate - 2.02 / 1.0).abs() < 1e-9, "{}", four.rate);
        assert!((fastest_slices(&parts[1..2], 1.0).rate - 1.2).abs() < 1e-9);
    }

    #[test]
    fn busy_clock_counts_a_spinning_thread() {
        let clock = BusyClock::new();
        let before = clock.busy_s();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let busy = clock.busy_s() - before;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = t.elapsed().as_secs_f64();
        // At least the spinning thread's time (one tick of slack for
        // /proc/stat), at most every CPU's.
        assert!(
            busy >= 0.3 - 0.02 && busy <= cpus * wall + 0.02,
            "{busy} s busy in {wall} s on {cpus} CPUs ({})",
            clock.source()
        );
    }

    #[test]
    fn intervals_decide_only_clear_differences() {
        let a = [10.0, 10.4, 9.8, 10.1, 10.3, 9.9, 10.2];
        let b = [8.0, 8.3, 7.9, 8.1, 8.2, 7.8, 8.4];
        let super::Paired { lo, hi, .. } = paired(&a, &b);
        assert!(lo > 1.15 && hi < 1.35, "{lo} {hi}");
        assert_eq!(verdict((lo, hi), true), (Some(true), None));
        assert_eq!(verdict((lo, hi), false), (Some(false), None));
        // Overlapping samples: no verdict.
        let c = [10.1, 9.7, 10.5, 9.9, 10.2, 10.0, 9.8];
        let super::Paired { lo, hi, .. } = paired(&a, &c);
        assert!(lo < 1.0 && hi > 1.0, "{lo} {hi}");
        assert_eq!(verdict((lo, hi), true), (None, Some("within noise")));
    }

    #[test]
    fn the_ratio_is_hodges_lehmann_with_its_signed_rank_interval() {
        // Log-ratios -2 … +4 %: Walsh averages symmetric about +1 %; with
        // seven rounds the signed-rank 2.5 % point cuts two of the 28 off
        // each end, leaving -1 % … +3 %.
        let b = [10.0; 7];
        let a: Vec<f64> = (-2..=4)
            .map(|i| 10.0 * (f64::from(i) / 100.0).exp())
            .collect();
        let super::Paired { ratio, lo, hi } = paired(&a, &b);
        assert!((ratio.ln() - 0.01).abs() < 1e-9, "{ratio}");
        assert!((lo.ln() + 0.01).abs() < 1e-9, "{lo}");
        assert!((hi.ln() - 0.03).abs() < 1e-9, "{hi}");
        // One wild round moves the estimate by less than a third of its
        // own distance from the rest.
        let mut wild = a.clone();
        wild[6] = 10.0 * 1.5;
        let moved = paired(&wild, &b).ratio.ln() - 0.01;
        assert!(moved > 0.0 && moved < 0.01, "{moved}");
        // A round where one setup sat out is left out.
        let a_gap: Vec<_> = a.iter().copied().map(Some).chain([None]).collect();
        let b_more: Vec<_> = b.iter().copied().map(Some).chain([Some(99.0)]).collect();
        let gap = super::paired(&a_gap, &b_more);
        assert!((gap.ratio - ratio).abs() < 1e-12);
    }

    #[test]
    fn pairing_cancels_drift_between_rounds() {
        // Each round runs both setups back to back; the machine drifts by
        // ±30 % between rounds while `a` stays 3 % above `b` within each.
        let b = [10.0, 13.0, 7.0, 12.0, 8.0, 11.0, 9.0];
        let a: Vec<f64> = b.iter().map(|x| x * 1.03).collect();
        let super::Paired { ratio, lo, hi } = paired(&a, &b);
        assert!((ratio - 1.03).abs() < 1e-9);
        assert!(lo > 1.0 && (lo - 1.03).abs() < 1e-9 && (hi - 1.03).abs() < 1e-9);
    }

    #[test]
    fn compared_setups_run_back_to_back_in_both_orders_and_xdp_sits_out_odd_rounds() {
        // xdp sits out the odd rounds; the other three run every round.
        let mut ran = [[false; SETUPS.len()]; 12];
        for (round, r) in ran.iter_mut().enumerate() {
            let order = round_order(round);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                order.len(),
                "round {round} runs a setup twice"
            );
            for i in order {
                r[i] = true;
            }
        }
        assert!(ran.iter().all(|r| r[NONE] && r[TCX] && r[TCPDUMP]));
        assert_eq!(ran.iter().filter(|r| r[XDP]).count(), 6);
        // Compared setups run back to back, each pair in both orders
        // equally often over every four rounds.
        let pos = |order: &[usize], i: usize| order.iter().position(|&x| x == i);
        for (a, b) in [(TCX, NONE), (TCX, TCPDUMP), (XDP, NONE)] {
            let mut first = 0;
            let mut both = 0;
            for round in 0..12 {
                let order = round_order(round);
                let (Some(pa), Some(pb)) = (pos(&order, a), pos(&order, b)) else {
                    continue;
                };
                assert_eq!(pa.abs_diff(pb), 1, "round {round}: {order:?}");
                both += 1;
                first += usize::from(pa < pb);
            }
            assert_eq!(2 * first, both, "{} before {}", SETUPS[a], SETUPS[b]);
        }
        // A round a setup sat out drops out of its pairs, not the others'.
        let xdp = [Some(10.0), None, Some(10.0), None];
        let tcx = [Some(10.3), Some(99.0), Some(10.3), Some(99.0)];
        let p = super::paired(&tcx, &xdp);
        assert!((p.ratio - 1.03).abs() < 1e-9 && (p.hi - 1.03).abs() < 1e-9);
    }
}
