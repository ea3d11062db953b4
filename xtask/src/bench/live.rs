//! Live overhead: iperf3 over veth with no program, Phalanx tcx, Phalanx
//! xdp, and `tcpdump -s 128 -w /dev/null`, under two workloads: bulk TCP
//! (offloads at their defaults, so GSO super-packets) and unpaced 64-byte
//! UDP datagrams (one program run per packet, where a capture path's
//! per-packet cost shows). The two hosts are joined by four identical veth
//! pairs, one setup watching each, all running at once; one iperf3
//! connection per workload moves from pair to pair every second, so the
//! setups take turns on it in slices a second apart: throughput, machine
//! CPU per unit moved and the capture process's own CPU per slice; kernel
//! ns per packet from bpf_stats.

use std::{
    fmt::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use phalanx_lab::{metric, sh, Netns, ParallelLinks, Proc, TwoHosts};

use super::{median, start_daemon_on, Daemon, Row};

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

/// (id, name, run_time_ns, run_cnt) per Phalanx program, from bpf_stats.
fn prog_stats() -> Result<Vec<(u64, String, u64, u64)>> {
    let out = sh(&["bpftool", "-j", "prog", "show"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?.to_string();
            let id = p["id"].as_u64()?;
            name.starts_with("phalanx_").then(|| {
                (
                    id,
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
    iperf_server_on(&lab.b, lab.v4(2))
}

/// A one-shot iperf3 server in `ns` bound to `addr`, ready to accept.
fn iperf_server_on(ns: &Netns, addr: std::net::Ipv4Addr) -> Result<Proc> {
    let p = Proc::new(
        ns.command("iperf3")
            .args(["-s", "-1", "-B", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

/// The capture under test on one interface of a host: a Phalanx daemon
/// (tcx or xdp, TCP and UDP in scope), tcpdump, or nothing ("none");
/// started on the capture CPU of `layout`.
pub(super) struct CaptureUnderTest<'a> {
    daemon: Option<Daemon<'a>>,
    dump: Option<Proc>,
}

impl<'a> CaptureUnderTest<'a> {
    /// `setup` on interface `iface` of `ns`; a daemon's API listens on
    /// `listen` inside `ns`.
    pub(super) fn start(
        ns: &'a Netns,
        iface: &str,
        listen: &str,
        phalanx: &Path,
        setup: &str,
        layout: Layout,
    ) -> Result<Self> {
        layout.start_capture(|| {
            let daemon = match setup {
                "tcx" | "xdp" => {
                    // Every TCP and UDP packet in scope, as tcpdump copies
                    // every packet (the default scope is TCP only).
                    let scope = std::env::temp_dir().join(format!(
                        "phalanx-bench-scope-{}-{setup}.toml",
                        std::process::id()
                    ));
                    std::fs::write(&scope, "[[capture.filters]]\nproto = \"any\"\n")?;
                    let d = start_daemon_on(ns, iface, listen, phalanx, setup, Some(&scope));
                    let _ = std::fs::remove_file(&scope);
                    Some(d?)
                }
                _ => None,
            };
            let dump = if setup == "tcpdump" {
                let p = ns
                    .command("tcpdump")
                    .args(["-Z", "root", "-i", iface, "-s", "128", "-w", "/dev/null"])
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
/// in clock ticks (10 ms) a slice's few milliseconds would round away.
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

/// One iperf3 connection per workload and assignment while the capture
/// setups take turns on it, a second each, as its route moves from link to
/// link: a setup's slice and the others' are seconds apart on the same
/// connection, so neither the machine's drift (a connection's throughput
/// shifts by up to 10 % within seconds here) nor the connection's own
/// state (TCP runs in one of two ACK regimes, 15 % apart) separates them.
struct Load<'a> {
    lab: &'a ParallelLinks,
    workload: Workload,
    client: Proc,
    server: Proc,
    clock: &'a BusyClock,
}

impl<'a> Load<'a> {
    /// Starts server and client (both on CPU 0 when pinned) and waits out
    /// slow start and buffer autotuning.
    fn start(
        lab: &'a ParallelLinks,
        clock: &'a BusyClock,
        workload: Workload,
        secs: u32,
        layout: Layout,
    ) -> Result<Self> {
        let server = iperf_server_on(&lab.b, lab.v4(2))?;
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
        // Their counters are read from /proc/<pid>/net: only once `ip netns
        // exec` has entered the namespace are they the namespace's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(lab.a.holds(client.id()) && lab.b.holds(server.id())) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "iperf3 did not enter the lab's namespaces within 5 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

    /// Units moved so far: GB out of host a's links (TCP), or million
    /// datagrams delivered to the server's sockets in host b (UDP; those
    /// its socket buffer refused are not counted). Read from the
    /// namespaces' own /proc/<pid>/net files: no process spawned per read.
    fn moved(&self) -> Result<f64> {
        match self.workload {
            Workload::Bulk => {
                let path = format!("/proc/{}/net/dev", self.client.id());
                let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
                let mut bytes = 0;
                for link in &self.lab.links {
                    // rx: bytes packets errs drop fifo frame compressed
                    // multicast, then tx bytes.
                    bytes += net_dev_field(&text, link, 8)
                        .with_context(|| format!("no {link} in {path}"))?;
                }
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

    /// Units moved, the machine's busy time and `pid`'s CPU time, now.
    fn sample(&self, pid: Option<u32>) -> Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            moved: self.moved()?,
            busy: self.clock.busy_s(),
            capture: pid.map_or(0.0, proc_cpu_s),
        })
    }

    /// One slice: moves the route to `link`, waits out [`GUARD`] and
    /// measures the rest of the [`SLICE`] in parts of [`PART`]. `pid` is
    /// the process of the capture that watches the link.
    fn slice(&self, link: usize, pid: Option<u32>) -> Result<Measure> {
        let moved_at = Instant::now();
        self.lab.route_via(link)?;
        let parts = ((SLICE - GUARD).as_millis() / PART.as_millis()).max(1) as u32;
        let mut samples = Vec::with_capacity(parts as usize + 1);
        for k in 0..=parts {
            std::thread::sleep((GUARD + PART * k).saturating_sub(moved_at.elapsed()));
            samples.push(self.sample(pid)?);
        }
        let parts: Vec<Part> = samples
            .windows(2)
            .map(|w| Part {
                secs: (w[1].at - w[0].at).as_secs_f64(),
                moved: w[1].moved - w[0].moved,
                busy: w[1].busy - w[0].busy,
                capture: w[1].capture - w[0].capture,
            })
            .collect();
        anyhow::ensure!(
            parts.iter().map(|p| p.moved).sum::<f64>() > 0.0,
            "iperf3 stalled for a slice on {}",
            self.lab.links[link]
        );
        Ok(fastest_parts(&parts, self.workload.rate_scale()))
    }
}

/// One part of a slice: its length, units moved, the machine's busy CPU
/// seconds and the capture process's.
#[derive(Clone, Copy, Debug)]
struct Part {
    secs: f64,
    moved: f64,
    busy: f64,
    capture: f64,
}

/// A slice's figures. Rate and machine CPU come from its fastest two
/// thirds of parts: every 10–12 s the host takes this VM's CPU away for
/// 0.2–0.3 s (throughput falls to 7–20 % of normal, and the guest counts
/// the time as busy), and a slice that met it would otherwise differ from
/// its cycle's others by that alone; on one connection with nothing
/// changed, the sd of neighbouring slices' log-ratio falls from 8.5 % to
/// 2.8 % this way. The capture process's CPU comes from the whole slice:
/// the daemon drains its ring every 100 ms, one drain or none a part.
fn fastest_parts(parts: &[Part], rate_scale: f64) -> Measure {
    let mut by_rate: Vec<&Part> = parts.iter().collect();
    by_rate.sort_by(|a, b| (b.moved / b.secs).total_cmp(&(a.moved / a.secs)));
    let keep = ((parts.len() * 2).div_ceil(3)).max(1);
    let kept = &by_rate[..keep.min(by_rate.len())];
    let moved = kept.iter().map(|p| p.moved).sum::<f64>();
    let all_moved = parts.iter().map(|p| p.moved).sum::<f64>();
    Measure {
        rate: rate_scale * moved / kept.iter().map(|p| p.secs).sum::<f64>(),
        cpu_per_unit: kept.iter().map(|p| p.busy).sum::<f64>() / moved,
        capture_per_unit: parts.iter().map(|p| p.capture).sum::<f64>() / all_moved,
    }
}

/// What a slice is measured between.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    moved: f64,
    busy: f64,
    capture: f64,
}

/// One slice of one capture setup: its rate (Gbit/s, or thousands of
/// datagrams delivered per second), the whole machine's busy CPU seconds
/// per unit moved (GB, or million datagrams), and the capture process's
/// own share of it.
#[derive(Clone, Copy)]
struct Measure {
    rate: f64,
    cpu_per_unit: f64,
    capture_per_unit: f64,
}

/// What a setup's daemon reported over its slices (none for setups
/// without a daemon).
#[derive(Clone, Copy, Default)]
struct Tally {
    slices: u64,
    decoded: u64,
    drops: u64,
}

/// A slice, from one move of the route to the next.
const SLICE: Duration = Duration::from_millis(1000);

/// The part of a slice left unmeasured after the move: packets still on
/// the link just left, and the daemon's drain (every 100 ms) of records
/// from the slice before, land here; as much of a daemon's own last
/// records lands in the next slice's guard.
const GUARD: Duration = Duration::from_millis(100);

/// The rest of a slice is read in parts of this length.
const PART: Duration = Duration::from_millis(100);

/// Median and relative spread ((max - min) / median) of a sample.
fn stats(v: &[f64]) -> (f64, f64) {
    let m = median(v.to_vec());
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (m, if m > 0.0 { (hi - lo) / m } else { 0.0 })
}

/// Capture setups, one per link; [`cycle_orders`] says in which order
/// they take their slices.
const SETUPS: [&str; 4] = ["none", "tcx", "tcpdump", "xdp"];
/// Indices of the setups in [`SETUPS`].
const NONE: usize = 0;
const TCX: usize = 1;
const TCPDUMP: usize = 2;
const XDP: usize = 3;

/// API addresses (inside host a) of the daemons, by setup.
const LISTEN: [&str; 4] = ["", "127.0.0.1:19751", "", "127.0.0.1:19752"];

/// The link setup `setup` watches in assignment `a`: every setup watches
/// every link once over four assignments, so a difference between the
/// links cancels out of the comparisons.
fn link_of(setup: usize, a: usize) -> usize {
    (setup + a) % SETUPS.len()
}

/// The `i`-th of the 24 orders of the four setups.
fn nth_order(mut i: usize) -> [usize; 4] {
    let mut left = vec![0, 1, 2, 3];
    let mut order = [0; 4];
    for (k, slot) in order.iter_mut().enumerate() {
        let f = [6, 2, 1, 1][k];
        *slot = left.remove((i / f) % left.len());
        i %= f;
    }
    order
}

/// The setups' order in each of `n` cycles: every block of 24 cycles runs
/// all 24 orders once, so each setup runs before each other as often as
/// after and in every position as often; a trend within a cycle favours
/// none. Within a block the orders come scrambled (7 is prime to 24),
/// and a cycle never starts with the setup the last one ended with: every
/// slice starts with a move of the route.
fn cycle_orders(n: usize) -> Vec<[usize; 4]> {
    let mut out: Vec<[usize; 4]> = Vec::with_capacity(n);
    let mut used = [false; 24];
    while out.len() < n {
        if used.iter().all(|u| *u) {
            used = [false; 24];
        }
        let last = out.last().map(|o| o[3]);
        let free = |k: &usize| !used[*k];
        let mut candidates = (0..24).map(|k| k * 7 % 24).filter(free);
        let pick = candidates
            .clone()
            .find(|&k| Some(nth_order(k)[0]) != last)
            .or_else(|| candidates.next());
        let Some(k) = pick else { break };
        used[k] = true;
        out.push(nth_order(k));
    }
    out
}

/// A setup's figure in each cycle, `None` where it has none.
type Series = Vec<Option<f64>>;

/// One figure of every setup's slices, per setup.
fn series(runs: &[Vec<Option<Measure>>], figure: fn(&Measure) -> f64) -> Vec<Series> {
    runs.iter()
        .map(|r| r.iter().map(|m| m.as_ref().map(figure)).collect())
        .collect()
}

/// The cycles' figures that are there.
fn present(v: &[Option<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

/// The typical per-cycle ratio `a[i] / b[i]` and its 95 % interval.
#[derive(Clone, Copy, Debug)]
struct Paired {
    ratio: f64,
    lo: f64,
    hi: f64,
}

/// Compares two setups cycle by cycle, over the cycles both ran: the
/// setups of one cycle run seconds apart on one connection, so their
/// ratio cancels what drifts between cycles on a shared machine. The
/// estimate is the Hodges–Lehmann one on the log-ratios (the median of their pairwise
/// means, the Walsh averages) and the interval the one that goes with it,
/// from the Wilcoxon signed-rank distribution (normal approximation): with
/// a slice's slowest parts set aside the log-ratios have no heavy tail
/// left, and this uses every cycle's value where a median of ratios rests
/// on the one or two middle cycles (its bootstrap interval jumps between
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
    // 2.5 % point, n(n+1)/4 - 1.96 sd; few cycles (--quick) keep them all.
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

/// The capture setups running at once, one per link, for one assignment.
struct Captures<'a> {
    /// By setup; "none" has nothing running.
    running: Vec<CaptureUnderTest<'a>>,
    /// Ids of the kernel programs each setup's daemon loaded.
    programs: Vec<Vec<u64>>,
}

impl<'a> Captures<'a> {
    /// Starts every setup on its link of assignment `a`.
    fn start(lab: &'a ParallelLinks, phalanx: &Path, a: usize, layout: Layout) -> Result<Self> {
        let ids = || -> Result<Vec<u64>> { Ok(prog_stats()?.into_iter().map(|p| p.0).collect()) };
        let mut running = Vec::with_capacity(SETUPS.len());
        let mut programs = Vec::with_capacity(SETUPS.len());
        let mut known = ids()?;
        for (i, setup) in SETUPS.iter().enumerate() {
            let link = &lab.links[link_of(i, a)];
            running.push(
                CaptureUnderTest::start(&lab.a, link, LISTEN[i], phalanx, setup, layout)
                    .with_context(|| format!("starting {setup} on {link}"))?,
            );
            let now = ids()?;
            programs.push(
                now.iter()
                    .copied()
                    .filter(|id| !known.contains(id))
                    .collect(),
            );
            known = now;
        }
        Ok(Self { running, programs })
    }

    /// Records decoded and dropped so far by setup `i`'s daemon, `None`
    /// for a setup without one.
    fn daemon_counts(&self, i: usize) -> Result<Option<(u64, u64)>> {
        let Some(d) = &self.running[i].daemon else {
            return Ok(None);
        };
        let m = d.text("/metrics")?;
        Ok(Some((
            metric(&m, "phalanx_capture_records_decoded_total"),
            metric(&m, "phalanx_kernel_ring_full_drops_total")
                + metric(&m, "phalanx_capture_backlog_dropped_total"),
        )))
    }

    fn stop(self) {
        for c in self.running {
            c.stop();
        }
    }
}

/// Kernel ns per program run (bpf_stats) of the daemons on their links,
/// the load over one daemon's link at a time.
fn kernel_slices(
    load: &Load<'_>,
    captures: &Captures<'_>,
    a: usize,
    reps: usize,
    kernel_ns: &mut Vec<(String, f64)>,
) -> Result<()> {
    for _ in 0..reps {
        for i in [TCX, XDP] {
            load.lab.route_via(link_of(i, a))?;
            std::thread::sleep(GUARD);
            let before = prog_stats()?;
            std::thread::sleep(Duration::from_millis(2500));
            for (id, name, t1, c1) in prog_stats()? {
                if !captures.programs[i].contains(&id) {
                    continue;
                }
                let Some((_, _, t0, c0)) = before.iter().find(|p| p.0 == id) else {
                    continue;
                };
                if c1 > *c0 {
                    kernel_ns.push((
                        format!("{} {name}", SETUPS[i]),
                        (t1 - t0) as f64 / (c1 - c0) as f64,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Live overhead rows. Host a and host b are joined by four identical veth
/// pairs, each watched by one setup (no program, tcx, tcpdump, xdp), all
/// running at once; one iperf3 connection per workload moves from pair to
/// pair every second ([`cycle_orders`]), and the setups move to the next
/// pair between assignments. Comparisons pair the slices of one cycle and
/// carry a 95 % signed-rank interval; a goal is met or missed only when the
/// whole interval says so. Kernel ns per packet come from slices of their
/// own, with bpf_stats on.
pub(super) fn live(
    phalanx: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let lab = ParallelLinks::new("bl", SETUPS.len()).context("lab")?;
    let (assignments, cycles) = if quick { (1, 3) } else { (4, 24) };
    let layout = Layout::detect();
    let clock = BusyClock::new();
    // The bench's own readings, route moves and helpers (ip, bpftool, API
    // polls) stay off the load's core too.
    let _on_capture_cpu = layout.move_to_capture_cpu()?;
    writeln!(
        notes,
        "- live runs: {}; machine CPU from {}",
        if layout.pinned {
            "iperf3 client and server pinned to CPU 0 (with the veth path and our kernel programs), the capture processes (daemons, tcpdump) to CPU 1 from their start, with the bench's own readings, route moves and helpers"
        } else {
            "one CPU: nothing pinned"
        },
        clock.source()
    )?;
    writeln!(
        notes,
        "- live layout: {} veth pairs between two namespaces, one setup watching each; one iperf3 connection per workload and assignment, its route moved to the next pair every {} s; a slice is read from {} ms after the move in parts of {} ms, rate and machine CPU from its fastest two thirds of parts, the capture process's CPU from all; {assignments} assignment(s) of setups to pairs, {cycles} cycles of four slices per workload and assignment",
        lab.links.len(),
        SLICE.as_secs_f64(),
        GUARD.as_millis(),
        PART.as_millis()
    )?;
    let orders = cycle_orders(assignments * cycles);
    // runs[workload][setup][cycle]: one slice each.
    let mut runs: Vec<Vec<Vec<Option<Measure>>>> = vec![vec![Vec::new(); SETUPS.len()]; 2];
    let mut tallies = [[Tally::default(); SETUPS.len()]; 2];
    let mut kernel_ns: Vec<(String, f64)> = Vec::new();
    // Long enough for an assignment's cycles; the load is stopped after.
    let load_secs = (cycles * SETUPS.len()) as u32 * SLICE.as_secs() as u32 + 10;
    let result = (|| -> Result<()> {
        for a in 0..assignments {
            let captures = Captures::start(&lab, phalanx, a, layout)?;
            let pids: Vec<Option<u32>> = captures.running.iter().map(|c| c.pid()).collect();
            for (wi, w) in Workload::ALL.into_iter().enumerate() {
                let counts: Vec<Option<(u64, u64)>> = (0..SETUPS.len())
                    .map(|i| captures.daemon_counts(i))
                    .collect::<Result<_>>()?;
                let load = Load::start(&lab, &clock, w, load_secs, layout)?;
                for order in &orders[a * cycles..(a + 1) * cycles] {
                    let mut got = [None; SETUPS.len()];
                    for &i in order {
                        got[i] = Some(load.slice(link_of(i, a), pids[i])?);
                    }
                    for (i, m) in got.into_iter().enumerate() {
                        runs[wi][i].push(m);
                    }
                }
                for (i, t) in tallies[wi].iter_mut().enumerate() {
                    let (Some((d0, x0)), Some((d1, x1))) = (counts[i], captures.daemon_counts(i)?)
                    else {
                        continue;
                    };
                    t.slices += cycles as u64;
                    t.decoded += d1 - d0;
                    t.drops += x1 - x0;
                }
            }
            if a + 1 == assignments {
                // bpf_stats times every program run with two clock reads
                // (tens of ns in this VM) that tcpdump's path does not pay:
                // the comparison slices above run without it.
                sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"])?;
                let load = Load::start(&lab, &clock, Workload::Bulk, load_secs, layout)?;
                kernel_slices(&load, &captures, a, cycles.min(3), &mut kernel_ns)?;
            }
            captures.stop();
        }
        Ok(())
    })();
    let _ = sh(&["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"]);
    result?;
    for (wi, w) in Workload::ALL.into_iter().enumerate() {
        workload_rows(w, &runs[wi], rows, notes)?;
        for (i, t) in tallies[wi].iter().enumerate().filter(|(_, t)| t.slices > 0) {
            writeln!(
                notes,
                "- {}, {}: {} slices, records decoded {}, drops {}",
                w.name(),
                SETUPS[i],
                t.slices,
                t.decoded,
                t.drops
            )?;
        }
    }
    // Every slice's figures, for a reader who wants another estimator.
    for (wi, w) in Workload::ALL.into_iter().enumerate() {
        let (rate_unit, cpu_unit) = w.units();
        writeln!(
            notes,
            "- {} slices per cycle, in the order run ({rate_unit}; machine CPU {cpu_unit}):",
            w.name()
        )?;
        for (c, order) in orders.iter().enumerate() {
            let cells: Vec<String> = order
                .iter()
                .filter_map(|&i| {
                    let m = runs[wi][i].get(c).copied().flatten()?;
                    Some(format!(
                        "{} {:.3}; {:.4}",
                        SETUPS[i], m.rate, m.cpu_per_unit
                    ))
                })
                .collect();
            writeln!(
                notes,
                "  - cycle {} (assignment {}): {}",
                c + 1,
                c / cycles + 1,
                cells.join(" | ")
            )?;
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
    rows: &mut Vec<Row>,
    notes: &mut String,
) -> Result<()> {
    let (rate_unit, cpu_unit) = w.units();
    let rate = series(runs, |m| m.rate);
    let cpu = series(runs, |m| m.cpu_per_unit);
    for (i, setup) in SETUPS.iter().enumerate() {
        let slices = present(&rate[i]);
        let (g, gs) = stats(&slices);
        let (c, cs) = stats(&present(&cpu[i]));
        writeln!(
            notes,
            "- {}, {setup}: {} slices, median {g:.2} {rate_unit} (spread {:.0} %), machine CPU {c:.3} {cpu_unit} (spread {:.0} %)",
            w.name(),
            slices.len(),
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
        cycle_orders, fastest_parts, link_of, net_dev_field, nth_order, snmp_field, verdict,
        BusyClock, Part, SETUPS,
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
    fn a_slice_counts_its_fastest_two_thirds_for_rate_and_cpu_and_all_of_it_for_the_capture() {
        let part = |moved: f64, busy: f64, capture: f64| Part {
            secs: 0.1,
            moved,
            busy,
            capture,
        };
        // The host took the CPU away for three parts: little moved for
        // the same busy time.
        let parts = [
            part(0.20, 0.101, 0.001),
            part(0.21, 0.102, 0.000),
            part(0.02, 0.100, 0.000),
            part(0.19, 0.101, 0.002),
            part(0.20, 0.100, 0.000),
            part(0.01, 0.100, 0.001),
            part(0.20, 0.101, 0.000),
            part(0.21, 0.099, 0.000),
            part(0.10, 0.100, 0.001),
        ];
        let m = fastest_parts(&parts, 8.0);
        // Kept: 0.21, 0.21, 0.20, 0.20, 0.20, 0.19.
        let kept_moved = 1.21;
        assert!((m.rate - 8.0 * kept_moved / 0.6).abs() < 1e-9, "{}", m.rate);
        let kept_busy = 0.102 + 0.099 + 0.101 + 0.100 + 0.101 + 0.101;
        assert!((m.cpu_per_unit - kept_busy / kept_moved).abs() < 1e-9);
        assert!((m.capture_per_unit - 0.005 / 1.34).abs() < 1e-9);
        // Order does not matter; one part keeps itself, two keep both.
        let mut rev = parts;
        rev.reverse();
        assert_eq!(fastest_parts(&rev, 8.0).rate, m.rate);
        assert!((fastest_parts(&parts[2..3], 1.0).rate - 0.2).abs() < 1e-9);
        assert!((fastest_parts(&parts[..2], 1.0).rate - 2.05).abs() < 1e-9);
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
        // seven cycles the signed-rank 2.5 % point cuts two of the 28 off
        // each end, leaving -1 % … +3 %.
        let b = [10.0; 7];
        let a: Vec<f64> = (-2..=4)
            .map(|i| 10.0 * (f64::from(i) / 100.0).exp())
            .collect();
        let super::Paired { ratio, lo, hi } = paired(&a, &b);
        assert!((ratio.ln() - 0.01).abs() < 1e-9, "{ratio}");
        assert!((lo.ln() + 0.01).abs() < 1e-9, "{lo}");
        assert!((hi.ln() - 0.03).abs() < 1e-9, "{hi}");
        // One wild cycle moves the estimate by less than a third of its
        // own distance from the rest.
        let mut wild = a.clone();
        wild[6] = 10.0 * 1.5;
        let moved = paired(&wild, &b).ratio.ln() - 0.01;
        assert!(moved > 0.0 && moved < 0.01, "{moved}");
        // A cycle where one setup has no slice is left out.
        let a_gap: Vec<_> = a.iter().copied().map(Some).chain([None]).collect();
        let b_more: Vec<_> = b.iter().copied().map(Some).chain([Some(99.0)]).collect();
        let gap = super::paired(&a_gap, &b_more);
        assert!((gap.ratio - ratio).abs() < 1e-12);
    }

    #[test]
    fn pairing_cancels_drift_between_cycles() {
        // Each cycle runs both setups seconds apart; the machine drifts by
        // ±30 % between cycles while `a` stays 3 % above `b` within each.
        let b = [10.0, 13.0, 7.0, 12.0, 8.0, 11.0, 9.0];
        let a: Vec<f64> = b.iter().map(|x| x * 1.03).collect();
        let super::Paired { ratio, lo, hi } = paired(&a, &b);
        assert!((ratio - 1.03).abs() < 1e-9);
        assert!(lo > 1.0 && (lo - 1.03).abs() < 1e-9 && (hi - 1.03).abs() < 1e-9);
    }

    #[test]
    fn every_block_of_24_cycles_runs_each_order_once_and_every_slice_starts_with_a_move() {
        let mut all: Vec<[usize; 4]> = (0..24).map(nth_order).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 24, "nth_order must give the 24 orders");
        let orders = cycle_orders(72);
        assert_eq!(orders.len(), 72);
        for block in orders.chunks(24) {
            let mut seen = block.to_vec();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 24, "a block repeats an order");
            for pos in 0..4 {
                for s in 0..4 {
                    assert_eq!(block.iter().filter(|o| o[pos] == s).count(), 6);
                }
            }
            for (a, name_a) in SETUPS.iter().enumerate() {
                for (b, name_b) in SETUPS.iter().enumerate().filter(|(b, _)| *b != a) {
                    let before = block
                        .iter()
                        .filter(|o| o.iter().position(|&x| x == a) < o.iter().position(|&x| x == b))
                        .count();
                    assert_eq!(before, 12, "{name_a} before {name_b}");
                }
            }
        }
        for w in orders.windows(2) {
            assert_ne!(w[0][3], w[1][0], "a slice without a move: {w:?}");
        }
        // A short run is the start of a long one.
        assert_eq!(cycle_orders(3), orders[..3]);
    }

    #[test]
    fn over_four_assignments_every_setup_watches_every_link_alone() {
        for a in 0..4 {
            let mut links: Vec<usize> = (0..4).map(|i| link_of(i, a)).collect();
            links.sort_unstable();
            assert_eq!(links, [0, 1, 2, 3], "assignment {a}");
        }
        for (i, setup) in SETUPS.iter().enumerate() {
            let mut links: Vec<usize> = (0..4).map(|a| link_of(i, a)).collect();
            links.sort_unstable();
            assert_eq!(links, [0, 1, 2, 3], "{setup}");
        }
    }
}
