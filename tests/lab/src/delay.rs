//! A delay line for the labs: the internet's round trips on veth paths.
//!
//! This kernel has no netem, so a router namespace sends every IPv4 packet
//! that arrives on the chosen interfaces to a TUN device (policy routing by
//! input interface); a thread holds each packet for the one-way delay (plus
//! an optional uniform jitter) and writes it back to the TUN device, from
//! where the kernel forwards it on by its main table. TCP stays end to end
//! between the lab's own hosts; nothing leaves the namespaces. Packets keep
//! their order (a jittered packet never overtakes an earlier one), and each
//! crossing costs one extra hop of TTL (the router forwards it twice).

use std::{
    collections::VecDeque,
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{LabError, Netns};

/// Name of the TUN device in the router namespace: packets come back
/// from it one wire segment each (it has no segmentation offload).
pub const TUN: &str = "pxdelay";
/// First routing table of the policy rules (one per input interface).
const TABLE: u32 = 7100;
/// Packets held at once; beyond, packets are dropped and counted.
const MAX_HELD: usize = 65_536;
/// The TUN device's queue (the kernel's default, 500, overflows on an
/// unpaced sender's bursts).
const QUEUE: &str = "20000";
/// Longest wait for a packet before the thread looks at its stop flag.
const IDLE: Duration = Duration::from_millis(50);

/// What a delay line did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Packets delayed and sent on.
    pub forwarded: u64,
    /// Packets dropped because [`MAX_HELD`] were held.
    pub overflow: u64,
    /// Packets the kernel dropped before the line read them (the TUN
    /// device's queue, [`QUEUE`] packets, was full).
    pub queue_drops: u64,
}

/// A running delay line; stopped, and its routes removed, on drop.
#[derive(Debug)]
pub struct DelayLine {
    ns: String,
    interfaces: Vec<String>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<DelayStats>>,
}

impl DelayLine {
    /// Delays every IPv4 packet that `router` receives on `interfaces` by
    /// `one_way` ± `jitter` (uniform) before forwarding it: a path through
    /// it in both directions has a round trip of twice `one_way`.
    pub fn start(
        router: &Netns,
        interfaces: &[&str],
        one_way: Duration,
        jitter: Duration,
    ) -> Result<Self, LabError> {
        let tun = router.run(open_tun)??;
        router.ip(&["link", "set", TUN, "txqueuelen", QUEUE, "up"])?;
        // Packets come back on the TUN device, not on the interface their
        // source routes through: no reverse-path filter.
        for key in ["all", TUN] {
            router.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{key}.rp_filter=0"),
            ])?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut line = DelayLine {
            ns: router.name().to_string(),
            interfaces: Vec::new(),
            stop: stop.clone(),
            worker: None,
        };
        for (i, iface) in interfaces.iter().enumerate() {
            let table = (TABLE + i as u32).to_string();
            router.ip(&["route", "add", "default", "dev", TUN, "table", &table])?;
            router.ip(&["rule", "add", "iif", iface, "table", &table])?;
            line.interfaces.push((*iface).to_string());
        }
        line.worker = Some(std::thread::spawn(move || {
            hold_and_release(tun, one_way, jitter, &stop)
        }));
        Ok(line)
    }

    /// Stops the line and returns what it did.
    pub fn stop(mut self) -> DelayStats {
        self.halt()
    }

    fn halt(&mut self) -> DelayStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut stats = self
            .worker
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or_default();
        stats.queue_drops = crate::sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "cat",
            &format!("/sys/class/net/{TUN}/statistics/tx_dropped"),
        ])
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);
        for (i, iface) in self.interfaces.drain(..).enumerate() {
            let table = (TABLE + i as u32).to_string();
            // The namespace may be gone already, taking the rules with it.
            let _ = crate::sh(&[
                "ip", "-n", &self.ns, "rule", "del", "iif", &iface, "table", &table,
            ]);
        }
        stats
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.halt();
        }
    }
}

/// Creates the TUN device in the calling thread's namespace (IPv4 packets
/// without the packet-information header), non-blocking.
fn open_tun() -> Result<File, LabError> {
    let io = |what: &str, e| LabError::Io(format!("{what} {TUN}"), e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io("opening /dev/net/tun for", e))?;
    // struct ifreq: the name, then the flags (short).
    let mut req = [0u8; 40];
    req[..TUN.len()].copy_from_slice(TUN.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is large enough for.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    if rc != 0 {
        return Err(io("TUNSETIFF", std::io::Error::last_os_error()));
    }
    // SAFETY: F_SETFL on an fd we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(io("O_NONBLOCK on", std::io::Error::last_os_error()));
    }
    // Own the fd through a fresh File so `file`'s drop cannot close it twice.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: `fd` was just released by `into_raw_fd`.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The line's loop: reads what the router sends to the TUN device, and
/// writes each packet back once its time has come.
fn hold_and_release(
    mut tun: File,
    one_way: Duration,
    jitter: Duration,
    stop: &AtomicBool,
) -> DelayStats {
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut stats = DelayStats::default();
    let mut rng = Jitter::new(jitter);
    let mut buf = vec![0u8; 65_536];
    let mut last_release = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let wait = held
            .front()
            .map_or(IDLE, |(at, _)| at.saturating_duration_since(Instant::now()))
            .min(IDLE);
        wait_readable(&tun, wait);
        loop {
            match tun.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if held.len() >= MAX_HELD {
                        stats.overflow += 1;
                        continue;
                    }
                    let at = (Instant::now() + rng.delay(one_way)).max(last_release);
                    last_release = at;
                    held.push_back((at, buf[..n].to_vec()));
                }
                _ => break,
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, packet)) = held.pop_front() {
                if tun.write_all(&packet).is_ok() {
                    stats.forwarded += 1;
                }
            }
        }
    }
    stats
}

/// Waits up to `wait` for the TUN device to have a packet.
fn wait_readable(tun: &File, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
}

/// Uniform jitter from a xorshift generator (reproducible, no dependency).
struct Jitter {
    spread_ns: u64,
    state: u64,
}

impl Jitter {
    fn new(jitter: Duration) -> Self {
        Self {
            spread_ns: u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX / 4),
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// `one_way` ± the jitter.
    fn delay(&mut self, one_way: Duration) -> Duration {
        if self.spread_ns == 0 {
            return one_way;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let offset = self.state % (2 * self.spread_ns + 1);
        let base = u64::try_from(one_way.as_nanos()).unwrap_or(u64::MAX / 4);
        Duration::from_nanos((base + offset).saturating_sub(self.spread_ns))
    }
}
