//! Loading and attaching the kernel programs, and their maps.

use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        tc::SchedClassifierLinkId, xdp::XdpLinkId, SchedClassifier, TcAttachType, TestRun as _,
        TestRunOptions, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use phalanx_common::{
    ipproto, user::ip_to_bytes, Counter, FilterPrefix, FilterTuple, Setting,
    FILTER_PREFIX_HEAD_BITS, LOOKUP_ANY_PORT, LOOKUP_PORT, LOOKUP_TUPLES, MAP_COUNTERS, MAP_EVENTS,
    MAP_FILTER_PREFIXES, MAP_FILTER_TUPLES, MAP_SETTINGS, MAP_WATCHED, PROG_TC_EGRESS,
    PROG_TC_INGRESS, PROG_XDP, SCOPE_ALL_TCP, SCOPE_ALL_UDP,
};
use tracing::{debug, info};

use crate::config::{AttachMode, CaptureConfig, FilterRule};

/// The kernel object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/phalanx"));

/// Errors loading, attaching or talking to the kernel programs.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Another Phalanx captures on the interface already.
    #[error(
        "interface {iface:?} is already captured by another Phalanx (its tcx program id {id}); \
         stop that daemon first: two would count every packet twice"
    )]
    AlreadyCapturing {
        /// The interface.
        iface: String,
        /// The other daemon's egress program.
        id: u32,
    },
    /// The binary was built without kernel programs.
    #[error("this binary was built without the kernel programs (AYA_BUILD_SKIP); rebuild without it to capture live")]
    NoObject,
    /// Capabilities are missing.
    #[error(
        "capturing needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (root has them); missing: {0} \
         (e.g. AmbientCapabilities= in the systemd unit, or setpriv --ambient-caps)"
    )]
    NotPrivileged(String),
    /// The kernel lacks a feature we need.
    #[error(
        "kernel lacks {0}; Phalanx needs a kernel with BTF, BPF ring buffers and bpf_loop (Linux >= 5.17)"
    )]
    KernelFeature(&'static str),
    /// An interface does not exist.
    #[error("interface {0:?} does not exist (see `ip link`)")]
    NoInterface(String),
    /// Loading the object failed (verifier, map creation, ...).
    #[error("loading the kernel programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program operation failed.
    #[error("{what}: {source}")]
    Program {
        /// What we were doing.
        what: String,
        /// Underlying error.
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// What we were doing.
        what: String,
        /// Underlying error.
        source: aya::maps::MapError,
    },
    /// The object is missing a map or program it should have.
    #[error("kernel object has no {0}")]
    Missing(&'static str),
}

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    let what = what.into();
    move |source| CaptureError::Map { what, source }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> CaptureError {
    let what = what.into();
    move |source| CaptureError::Program { what, source }
}

/// Checks the environment before anything is loaded, so the user gets one clear message.
pub fn preflight(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    if EBPF_OBJECT.is_empty() {
        return Err(CaptureError::NoObject);
    }
    for iface in &cfg.interfaces {
        if ifindex(iface).is_none() {
            return Err(CaptureError::NoInterface(iface.clone()));
        }
    }
    let missing = missing_capabilities(effective_capabilities());
    if !missing.is_empty() {
        return Err(CaptureError::NotPrivileged(missing.join(", ")));
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(CaptureError::KernelFeature("BTF (/sys/kernel/btf/vmlinux)"));
    }
    use aya::util::KernelVersion;
    if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 17, 0)) {
        return Err(CaptureError::KernelFeature("bpf_loop (Linux 5.17)"));
    }
    Ok(())
}

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The process's effective capability set (`CapEff` of
/// /proc/self/status; empty when unreadable).
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capabilities capture needs that `effective` lacks, by name: the
/// kernel checks capabilities, not the user id, and takes CAP_SYS_ADMIN
/// for CAP_BPF and CAP_PERFMON.
fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    [
        (CAP_BPF, "CAP_BPF", sys_admin),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN", false),
        (CAP_PERFMON, "CAP_PERFMON", sys_admin),
    ]
    .into_iter()
    .filter(|&(cap, _, instead)| !has(cap) && !instead)
    .map(|(_, name, _)| name)
    .collect()
}

/// The id of a Phalanx tcx egress program already attached to `iface`
/// (the kernel keeps 15 characters of a program's name). `None` when
/// there is none, or the kernel cannot tell (no tcx query).
fn our_program_on(iface: &str) -> Option<u32> {
    let prefix = &PROG_TC_EGRESS[..PROG_TC_EGRESS.len().min(15)];
    let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Egress).ok()?;
    programs
        .iter()
        .find(|p| p.name_as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|p| p.id())
}

/// Interface index of a name, `None` when it does not exist.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Program to run in [`Capture::test_run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestProgram {
    /// The XDP program.
    Xdp,
    /// The tc ingress program.
    TcIngress,
    /// The tc egress program.
    TcEgress,
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Capture {
    ebpf: Ebpf,
    attached: Vec<Attached>,
}

/// The programs' links on one interface.
#[derive(Debug)]
struct Attached {
    iface: String,
    /// The interface's index when attached: a new interface of the same
    /// name has another.
    index: u32,
    ingress: Ingress,
    egress: SchedClassifierLinkId,
}

/// The ingress link, by mode.
#[derive(Debug)]
enum Ingress {
    Tcx(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("interfaces", &self.interfaces())
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Loads the programs and attaches them to every configured interface.
    pub fn load_and_attach(cfg: &CaptureConfig) -> Result<(Self, RingBuf<MapData>), CaptureError> {
        preflight(cfg)?;
        let (mut capture, ring) = Self::load(cfg)?;
        for iface in &cfg.interfaces {
            capture.attach(iface, cfg.mode)?;
        }
        Ok((capture, ring))
    }

    /// Loads the programs (through the verifier) and installs the filters,
    /// without attaching anywhere: `attach` or `test_run` come next.
    pub fn load(cfg: &CaptureConfig) -> Result<(Self, RingBuf<MapData>), CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS, cfg.ring_buffer_bytes.0)
            .load(EBPF_OBJECT)?;
        let ring = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(CaptureError::Missing("ring buffer map"))?;
        let ring = RingBuf::try_from(ring).map_err(map_err("opening the ring buffer"))?;
        let mut capture = Capture {
            ebpf,
            attached: Vec::new(),
        };
        capture.set_filters(&cfg.filters)?;
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
            capture
                .classifier(name)?
                .load()
                .map_err(prog_err(format!("loading {name}")))?;
        }
        capture
            .xdp()?
            .load()
            .map_err(prog_err(format!("loading {PROG_XDP}")))?;
        if let Ok(counts) = capture.verified_instructions() {
            debug!(?counts, "programs verified (instructions processed)");
        }
        Ok((capture, ring))
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, CaptureError> {
        self.ebpf
            .program_mut(name)
            .ok_or(CaptureError::Missing("tc program"))?
            .try_into()
            .map_err(prog_err(name))
    }

    fn xdp(&mut self) -> Result<&mut Xdp, CaptureError> {
        self.ebpf
            .program_mut(PROG_XDP)
            .ok_or(CaptureError::Missing("xdp program"))?
            .try_into()
            .map_err(prog_err(PROG_XDP))
    }

    /// Instructions the verifier processed for each loaded program, by name:
    /// a program past 1M (the verifier's budget) fails to load, so this is
    /// the headroom left to code-generation changes.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>, CaptureError> {
        [PROG_XDP, PROG_TC_INGRESS, PROG_TC_EGRESS]
            .into_iter()
            .map(|name| {
                let info = self
                    .ebpf
                    .program(name)
                    .ok_or(CaptureError::Missing("program"))?
                    .info()
                    .map_err(prog_err(format!("reading {name}'s info")))?;
                Ok((name, info.verified_instruction_count().unwrap_or(0)))
            })
            .collect()
    }

    /// Runs one program on a packet with `BPF_PROG_TEST_RUN` (parser tests).
    pub fn test_run(&mut self, prog: TestProgram, packet: &[u8]) -> Result<u32, CaptureError> {
        let opts = TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::new()
        };
        let result = match prog {
            TestProgram::Xdp => self.xdp()?.test_run(opts),
            TestProgram::TcIngress => self.classifier(PROG_TC_INGRESS)?.test_run(opts),
            TestProgram::TcEgress => self.classifier(PROG_TC_EGRESS)?.test_run(opts),
        };
        result
            .map(|r| r.return_value)
            .map_err(prog_err("BPF_PROG_TEST_RUN"))
    }

    /// Attaches to one interface: ingress per `mode`, egress always tcx.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), CaptureError> {
        // Both modes attach the tcx egress program: one of ours there
        // means another daemon (tcx links allow several programs).
        if let Some(id) = our_program_on(iface) {
            return Err(CaptureError::AlreadyCapturing {
                iface: iface.to_string(),
                id,
            });
        }
        let index = ifindex(iface).ok_or_else(|| CaptureError::NoInterface(iface.to_string()))?;
        let ingress = match mode {
            AttachMode::Xdp => Ingress::Xdp(
                self.xdp()?
                    .attach(iface, XdpMode::default())
                    .map_err(prog_err(format!("attaching XDP to {iface}")))?,
            ),
            AttachMode::Tcx => Ingress::Tcx(
                self.classifier(PROG_TC_INGRESS)?
                    .attach(iface, TcAttachType::Ingress)
                    .map_err(prog_err(format!("attaching tcx ingress to {iface}")))?,
            ),
        };
        let egress = self
            .classifier(PROG_TC_EGRESS)?
            .attach(iface, TcAttachType::Egress)
            .map_err(prog_err(format!("attaching tcx egress to {iface}")))?;
        self.watched()?
            .insert(index, 1, 0)
            .map_err(map_err("recording a watched interface"))?;
        info!(iface, %mode, "attached");
        self.attached.push(Attached {
            iface: iface.to_string(),
            index,
            ingress,
            egress,
        });
        Ok(())
    }

    fn watched(&mut self) -> Result<HashMap<&mut MapData, u32, u8>, CaptureError> {
        HashMap::try_from(
            self.ebpf
                .map_mut(MAP_WATCHED)
                .ok_or(CaptureError::Missing("watched interfaces map"))?,
        )
        .map_err(map_err("watched interfaces map"))
    }

    /// Interfaces the programs are attached to.
    pub fn interfaces(&self) -> Vec<&str> {
        self.attached.iter().map(|a| a.iface.as_str()).collect()
    }

    /// Releases the attachments whose interface is gone, or is now another
    /// interface of the same name (the kernel dropped the links with the
    /// old one); returns their names.
    pub fn release_vanished(&mut self) -> Vec<String> {
        let (gone, kept): (Vec<Attached>, Vec<Attached>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|a| ifindex(&a.iface) != Some(a.index));
        self.attached = kept;
        gone.into_iter().map(|a| self.release(a)).collect()
    }

    /// Frees one attachment's links and unwatches its index; a link the
    /// kernel already dropped has nothing left to detach.
    fn release(&mut self, a: Attached) -> String {
        let ingress = match a.ingress {
            Ingress::Tcx(id) => self
                .classifier(PROG_TC_INGRESS)
                .and_then(|p| p.detach(id).map_err(prog_err("detaching tcx ingress"))),
            Ingress::Xdp(id) => self
                .xdp()
                .and_then(|p| p.detach(id).map_err(prog_err("detaching XDP"))),
        };
        let egress = self
            .classifier(PROG_TC_EGRESS)
            .and_then(|p| p.detach(a.egress).map_err(prog_err("detaching tcx egress")));
        let unwatched = self
            .watched()
            .and_then(|mut w| w.remove(&a.index).map_err(map_err("unwatching")));
        for r in [ingress, egress, unwatched] {
            if let Err(e) = r {
                debug!(iface = %a.iface, "releasing a vanished interface: {e}");
            }
        }
        a.iface
    }

    /// Replaces the scope filters atomically enough for a passive tool:
    /// the mode flag is cleared first, so packets are briefly "all TCP"
    /// rather than briefly "nothing".
    pub fn set_filters(&mut self, rules: &[FilterRule]) -> Result<(), CaptureError> {
        self.set_mode(0)?;
        // The lookups the kernel needs: one bit per kind of key inserted.
        let mut lookups = 0;
        {
            let mut tuples: HashMap<_, FilterTuple, u32> = HashMap::try_from(
                self.ebpf
                    .map_mut(MAP_FILTER_TUPLES)
                    .ok_or(CaptureError::Missing("tuple filter map"))?,
            )
            .map_err(map_err("tuple filter map"))?;
            let old: Vec<FilterTuple> = tuples.keys().filter_map(Result::ok).collect();
            for k in old {
                tuples
                    .remove(&k)
                    .map_err(map_err("clearing tuple filters"))?;
            }
            for (id, rule) in rules.iter().enumerate() {
                let Some(flow) = rule.flow else { continue };
                for &proto in rule.proto.numbers() {
                    let key = FilterTuple {
                        src: ip_to_bytes(flow.a.ip()),
                        dst: ip_to_bytes(flow.b.ip()),
                        sport: flow.a.port(),
                        dport: flow.b.port(),
                        proto,
                        _pad: [0; 3],
                    };
                    tuples
                        .insert(key, id as u32, 0)
                        .map_err(map_err("inserting a flow filter"))?;
                    lookups |= LOOKUP_TUPLES;
                }
            }
        }
        {
            let mut trie: LpmTrie<_, FilterPrefix, u32> = LpmTrie::try_from(
                self.ebpf
                    .map_mut(MAP_FILTER_PREFIXES)
                    .ok_or(CaptureError::Missing("prefix filter map"))?,
            )
            .map_err(map_err("prefix filter map"))?;
            let old: Vec<Key<FilterPrefix>> = trie.keys().filter_map(Result::ok).collect();
            for k in old {
                trie.remove(&k)
                    .map_err(map_err("clearing prefix filters"))?;
            }
            for (id, rule) in rules.iter().enumerate() {
                if rule.flow.is_some() || rule.is_whole_protocol() {
                    continue;
                }
                for &proto in rule.proto.numbers() {
                    for key in prefix_keys(proto, rule) {
                        trie.insert(&key, id as u32, 0)
                            .map_err(map_err("inserting a CIDR/port filter"))?;
                    }
                }
                // prefix_keys writes a rule without a port as port 0.
                lookups |= if rule.port.unwrap_or(0) == 0 {
                    LOOKUP_ANY_PORT
                } else {
                    LOOKUP_PORT
                };
            }
        }
        let whole = rules
            .iter()
            .filter(|r| r.is_whole_protocol())
            .flat_map(|r| r.proto.numbers())
            .fold(0, |bits, &p| match p {
                ipproto::TCP => bits | SCOPE_ALL_TCP,
                ipproto::UDP => bits | SCOPE_ALL_UDP,
                _ => bits,
            });
        self.set(Setting::WholeProtocols, whole)?;
        self.set(Setting::Lookups, lookups)?;
        self.set_mode(u32::from(!rules.is_empty()))?;
        debug!(rules = rules.len(), "filters installed");
        Ok(())
    }

    fn set_mode(&mut self, mode: u32) -> Result<(), CaptureError> {
        self.set(Setting::FilterMode, mode)
    }

    fn set(&mut self, setting: Setting, value: u32) -> Result<(), CaptureError> {
        let mut settings: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut(MAP_SETTINGS)
                .ok_or(CaptureError::Missing("settings map"))?,
        )
        .map_err(map_err("settings map"))?;
        settings
            .set(setting as u32, value, 0)
            .map_err(map_err("writing a setting"))
    }

    /// Current per-CPU counters summed, indexed like [`Counter::ALL`].
    pub fn counters(&self) -> Result<[u64; Counter::ALL.len()], CaptureError> {
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_COUNTERS)
                .ok_or(CaptureError::Missing("counter map"))?,
        )
        .map_err(map_err("counter map"))?;
        let mut out = [0u64; Counter::ALL.len()];
        for (slot, c) in out.iter_mut().zip(Counter::ALL) {
            let v = arr
                .get(&(c as u32), 0)
                .map_err(map_err("reading counters"))?;
            *slot = v.iter().sum();
        }
        Ok(out)
    }
}

/// LPM keys for a CIDR/port rule. A rule without an address matches both
/// families (prefix covers protocol and port only).
fn prefix_keys(proto: u8, rule: &FilterRule) -> Vec<Key<FilterPrefix>> {
    let port = rule.port.unwrap_or(0);
    match rule.cidr {
        None => vec![Key::new(
            FILTER_PREFIX_HEAD_BITS,
            FilterPrefix::endpoint(proto, port, 6, &[0; 16]),
        )],
        Some(net) => {
            let (version, extra) = match net.addr() {
                IpAddr::V4(_) => (4, 96),
                IpAddr::V6(_) => (6, 0),
            };
            let addr = ip_to_bytes(net.network());
            vec![Key::new(
                FILTER_PREFIX_HEAD_BITS + extra + u32::from(net.prefix_len()),
                FilterPrefix::endpoint(proto, port, version, &addr),
            )]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_checked_not_the_user_id() {
        let set = |caps: &[u32]| caps.iter().fold(0u64, |m, c| m | 1 << c);
        assert!(missing_capabilities(u64::MAX).is_empty(), "root");
        assert!(missing_capabilities(set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON])).is_empty());
        assert!(
            missing_capabilities(set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN])).is_empty(),
            "CAP_SYS_ADMIN stands for CAP_BPF and CAP_PERFMON"
        );
        assert_eq!(
            missing_capabilities(set(&[CAP_BPF, CAP_NET_ADMIN])),
            ["CAP_PERFMON"]
        );
        assert_eq!(
            missing_capabilities(0),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
    }
}
