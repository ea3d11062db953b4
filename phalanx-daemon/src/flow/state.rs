//! What the engine keeps per flow: the [`Flow`] slab entry with its
//! per-direction hot state ([`Dir`]) and the rarely needed state allocated
//! on first need ([`Extra`], [`DirExtra`]). `tcp` updates it per segment,
//! `table` stores it, `report` reads it.

use phalanx_common::{ipproto, PacketMeta};

use super::jitter::{ArrivalJitter, Jitter};
use super::key::{FlowKey, VlanTag};
use super::latency::{Exchanges, RetransWait};
use super::loss::Holes;
use super::rtt::Probe;
use super::stats::SampleStats;

/// End of a slab list.
pub(super) const NIL: u32 = u32::MAX;
/// Marks a free slab slot.
pub(super) const VACANT: u8 = u8::MAX;

/// SYN seen from this side.
pub const F_SYN: u16 = 1 << 0;
/// FIN seen from this side.
pub const F_FIN: u16 = 1 << 1;
/// RST seen from this side.
pub const F_RST: u16 = 1 << 2;
/// This side sent the timestamp option.
pub const F_TS: u16 = 1 << 3;
/// This side's SYN carried the window-scale option.
pub const F_WS: u16 = 1 << 4;
/// This side's SYN carried SACK-permitted.
pub const F_SACK_PERM: u16 = 1 << 5;
/// `first_seq`/`snd_max` are valid.
pub const F_SEQ: u16 = 1 << 6;
/// `last_ack` is valid.
pub const F_ACK: u16 = 1 << 7;
/// `window` is valid.
pub const F_WIN: u16 = 1 << 8;
/// `last_tsval` is valid.
pub const F_TSVAL: u16 = 1 << 9;
/// This side sent its SYN (or SYN/ACK) again, same sequence number: one
/// connection attempt on retransmission backoff.
pub const F_SYN_RETRIED: u16 = 1 << 10;
/// This side sent SYN/ACK.
pub const F_SYNACK: u16 = 1 << 11;
/// This side's MSS option was seen.
pub const F_MSS: u16 = 1 << 12;
/// `window` came from a SYN (never scaled, so not comparable with later ones).
pub const F_WIN_SYN: u16 = 1 << 13;
/// This side's latest packet was a keep-alive or zero-window probe: the
/// peer's next packet answers it on a timer's schedule, not the data's.
pub const F_PROBE_SENT: u16 = 1 << 14;
/// This side's data reached the edge of the peer's advertised window: the
/// peer's next ACK releases data that waits for it.
pub const F_WIN_BLOCKED: u16 = 1 << 15;

/// Hot per-direction state, kept inline in the flow.
#[derive(Clone, Debug, Default)]
pub struct Dir {
    /// Packets (GSO records count as their segment count).
    pub packets: u64,
    /// Frame bytes as seen (GSO records expanded to their segments).
    pub bytes: u64,
    /// Payload bytes that advanced the highest sequence seen (first
    /// transmissions only, holes included once).
    pub goodput: u64,
    /// Outstanding RTT probe of this direction's packets.
    pub probe: Probe,
    /// One past the highest sequence number seen.
    pub snd_max: u32,
    /// First sequence number seen.
    pub first_seq: u32,
    /// Highest cumulative ACK this side sent.
    pub last_ack: u32,
    /// Latest TSval this side sent.
    pub last_tsval: u32,
    /// Duplicate ACKs this side sent (RFC 5681 definition).
    pub dup_acks: u32,
    /// Latest window field this side advertised (unscaled).
    pub window: u16,
    /// MSS option value from this side's SYN.
    pub mss: u16,
    /// Duplicate ACKs sent since this side's ACK number last advanced.
    pub dupack_run: u16,
    /// `F_*` bits.
    pub flags: u16,
    /// Window-scale option value from this side's SYN.
    pub wscale: u8,
    /// TTL / hop limit of this side's latest packet (changes go to
    /// [`DirExtra::ttl`]).
    pub ttl: u8,
    /// Times this side's cumulative ACK moved forward (saturating): proof
    /// that it receives the other side's data, even unseen.
    pub ack_advances: u16,
}

/// Whether a side numbers its packets in sequence (a per-connection or
/// per-host counter), so that a higher IP ID was sent later: its latest
/// IP ID and the evidence, up one per small step, halved by any other.
#[derive(Clone, Copy, Debug, Default)]
pub struct IpIdRun {
    last: u16,
    run: u8,
}

impl IpIdRun {
    /// The side's IP IDs run in sequence.
    #[inline]
    pub fn sequential(&self) -> bool {
        self.run >= IP_ID_RUN_SEQUENTIAL
    }

    /// Notes the IP ID of the side's latest packet.
    #[inline]
    pub fn note(&mut self, id: u32) {
        let id = id as u16;
        let step = id.wrapping_sub(self.last);
        self.run = if (1..=IP_ID_MAX_STEP).contains(&step) {
            self.run.saturating_add(1).min(2 * IP_ID_RUN_SEQUENTIAL)
        } else {
            self.run / 2
        };
        self.last = id;
    }
}

/// Consecutive small IP ID steps that make a side's IDs sequential.
const IP_ID_RUN_SEQUENTIAL: u8 = 8;
/// Largest step between consecutive IP IDs of a sequential side (a
/// host-wide counter also numbers its other connections' packets).
const IP_ID_MAX_STEP: u16 = 64;

/// TTL / hop-limit history of one direction, kept once it first changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TtlHistory {
    /// TTL of the direction's first packet.
    pub first: u8,
    /// Smallest TTL seen.
    pub min: u8,
    /// Largest TTL seen.
    pub max: u8,
    /// Packets whose TTL differed from the previous packet's.
    pub changes: u32,
    /// Time of the first change (ns).
    pub first_change_ns: u64,
    /// Time of the latest change (ns).
    pub last_change_ns: u64,
}

/// Retransmissions of the same data with no acknowledgment progress in
/// between (a stalled connection: RTO backoff against a silent path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallRun {
    /// Retransmissions in the run (the first transmission not counted).
    pub count: u32,
    /// Sequence number they all start at.
    pub seq: u32,
    /// Time of the first retransmission of the run (ns).
    pub first_ns: u64,
    /// Time of the latest one (ns).
    pub last_ns: u64,
}

/// A cumulative ACK from the peer that advanced during fast recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialAck {
    /// The ACK number: the segment the sender re-sends next.
    pub ack: u32,
    /// When it passed the vantage point (ns).
    pub at_ns: u64,
}

/// The latest retransmitted range of a direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resent {
    /// First sequence number.
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// Already counted as spurious (acknowledged before, or D-SACKed).
    pub spurious: bool,
}

/// A first transmission whose acknowledgment would prove that segments of
/// its size cross the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeProbe {
    /// First sequence number.
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// Its per-segment payload (GSO: the segment size).
    pub segment: u32,
}

/// Rarely needed per-direction state, allocated with the flow's [`Extra`].
#[derive(Clone, Debug, Default)]
pub struct DirExtra {
    /// RTT samples of this direction's packets: vantage point -> the
    /// receiver of these packets -> vantage point.
    pub rtt: SampleStats,
    /// RFC 3550 jitter over consecutive RTT samples.
    pub rtt_jitter: Jitter,
    /// Previous RTT sample (us), for the jitter difference.
    pub last_rtt_us: u32,
    /// UDP/other: arrival jitter.
    pub arrival: ArrivalJitter,
    /// Missing ranges of this direction's sequence space.
    pub holes: Holes,
    /// Retransmitted segments (fast + timeout, spurious included).
    pub retrans: u32,
    /// Segments that filled a hole early: reordered, not retransmitted.
    pub out_of_order: u32,
    /// Retransmissions classified as fast (dup ACKs, SACK, recovery).
    pub retrans_fast: u32,
    /// Bytes SACKed above this side's latest cumulative ACK, summed over
    /// the blocks of that ACK (0 without SACK): RFC 6675 loss evidence.
    pub sacked_above: u32,
    /// Retransmissions of data in flight when an ICMP "too big" error for
    /// it arrived (path MTU discovery resends).
    pub retrans_pmtud: u32,
    /// Retransmissions found spurious (data already acknowledged, or D-SACK).
    pub retrans_spurious: u32,
    /// Retransmissions detected as late hole fills (loss upstream of the vantage point).
    pub late_fills: u32,
    /// Retransmitted payload bytes.
    pub retrans_bytes: u64,
    /// Largest RFC 4737 reorder extent seen.
    pub reorder_extent_max: u32,
    /// Zero-window episodes this side advertised.
    pub zero_windows: u32,
    /// Packets advertising a zero window.
    pub zero_window_packets: u32,
    /// Segments that filled the peer's advertised window.
    pub window_full: u32,
    /// Segments after which less than one segment of the peer's window
    /// was left: the sender waited for the receiver.
    pub window_limited: u32,
    /// Keep-alives sent.
    pub keepalives: u32,
    /// Second copies of this direction's packets (another capture point).
    pub capture_duplicates: u32,
    /// Whether this direction's IP IDs run in sequence (tracked once the
    /// flow's rarely needed state exists, from the handshake on).
    pub ip_ids: IpIdRun,
    /// Time this direction's data waited for its resends.
    pub retrans_wait: RetransWait,

    /// Zero-window probes sent.
    pub zero_window_probes: u32,
    /// Fast recovery: retransmissions stay "fast" until the peer ACKs this.
    pub recovery_point: u32,
    /// In fast recovery.
    pub in_recovery: bool,
    /// The peer's cumulative ACK that advanced while this side was in fast
    /// recovery, and when it passed: a sender re-sends the segment it names
    /// at once (RFC 6582 partial ACK), even when that segment was the
    /// highest one sent and the vantage point never saw it.
    pub partial_ack: Option<PartialAck>,
    /// Latest retransmitted range, for D-SACK matching.
    pub last_retx: Option<Resent>,
    /// TTL history, once the TTL first changed.
    pub ttl: Option<TtlHistory>,
    /// Packets carrying ECN Congestion Experienced (IP ECN bits `11`).
    pub ce_packets: u32,
    /// Time of this side's first RST (ns; 0 = none).
    pub rst_ns: u64,
    /// Start of the zero-window episode in progress (ns; 0 = window open).
    pub zero_window_since_ns: u64,
    /// Time spent in finished zero-window episodes (ns).
    pub zero_window_ns: u64,
    /// Time of the first zero-window advertisement (ns; 0 = none).
    pub zero_window_first_ns: u64,
    /// Largest per-segment payload sent (GSO records: the segment size).
    pub max_segment: u32,
    /// Largest first-transmission segment payload the peer acknowledged.
    pub max_acked_segment: u32,
    /// Outstanding size probe: one first transmission whose
    /// acknowledgment is awaited.
    pub size_probe: Option<SizeProbe>,
    /// Retransmissions of full-size segments (the largest size sent so
    /// far) while no segment that large had been acknowledged.
    pub full_size_retrans: u32,
    /// Time of the first of them (ns).
    pub full_size_retrans_first_ns: u64,
    /// Time of the latest of them (ns).
    pub full_size_retrans_last_ns: u64,
    /// Stall run in progress (reset when the peer's ACK advances).
    pub stall: StallRun,
    /// Longest stall run seen.
    pub stall_max: StallRun,
    /// Smoothed RTT (RFC 6298 EWMA, gain 1/8) of this direction, us.
    pub srtt_us: u32,
}

/// One ICMP/ICMPv6 error quoting a packet of the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IcmpEvent {
    /// Record time (ns).
    pub ts_ns: u64,
    /// Sender of the error (the router or host that reported it).
    pub from: std::net::IpAddr,
    /// ICMP/ICMPv6 type.
    #[serde(rename = "type")]
    pub icmp_type: u8,
    /// ICMP/ICMPv6 code.
    pub code: u8,
    /// Next-hop MTU (frag-needed) or MTU (packet too big); 0 otherwise.
    pub mtu: u32,
    /// Direction of the quoted packet: in the flow table, the canonical
    /// key's side that sent it; in a [`super::FlowSummary`], 0 when it went
    /// src -> dst and 1 when it went dst -> src.
    #[serde(skip)]
    pub quoted_dir: u8,
    /// Quoted TCP sequence number.
    pub quoted_seq: u32,
    /// Highest sequence of the quoted direction when the error arrived.
    #[serde(skip)]
    pub snd_max_at: u32,
}

impl IcmpEvent {
    /// ICMP "fragmentation needed" or ICMPv6 "packet too big".
    pub fn is_too_big(&self, ip_version: u8) -> bool {
        if ip_version == 6 {
            self.icmp_type == 2
        } else {
            self.icmp_type == 3 && self.code == 4
        }
    }
}

/// ICMP errors kept per flow (the count keeps going past this).
pub const MAX_ICMP_EVENTS: usize = 8;

/// Lazily allocated per-flow state: RTT sketches, holes, rare counters.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Per direction.
    pub dir: [DirExtra; 2],
    /// Downstream handshake part (SYN -> SYN/ACK), us.
    pub hs_down_us: Option<u32>,
    /// Upstream handshake part (SYN/ACK -> ACK), us.
    pub hs_up_us: Option<u32>,
    /// First ICMP errors quoting this flow.
    pub icmp: Vec<IcmpEvent>,
    /// All ICMP errors quoting this flow.
    pub icmp_count: u32,
    /// Requests and answers, for the latency split.
    pub exchanges: Exchanges,
}

impl Extra {
    /// Heap bytes held, including this box.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .dir
                .iter()
                .map(|d| d.rtt.heap_bytes() + d.holes.heap_bytes())
                .sum::<usize>()
            + self.exchanges.response_us.heap_bytes()
            + self.icmp.capacity() * std::mem::size_of::<IcmpEvent>()
    }
}

impl DirExtra {
    pub(super) fn add_rtt(&mut self, us: u32) {
        if self.rtt.count() > 0 {
            self.rtt_jitter
                .update((f64::from(us) - f64::from(self.last_rtt_us)) * 1000.0);
        }
        self.last_rtt_us = us;
        self.srtt_us = if self.rtt.count() == 0 {
            us
        } else {
            // SRTT = 7/8 SRTT + 1/8 R, in integer microseconds.
            ((u64::from(self.srtt_us) * 7 + u64::from(us)) / 8) as u32
        };
        self.rtt.add(us);
    }
}

/// Frame bytes a record stands for: GSO records are expanded by repeating
/// the headers (`wire_len - payload_len`) for every segment.
#[inline]
pub fn frame_bytes(rec: &PacketMeta) -> u64 {
    let segs = u64::from(rec.segs.max(1));
    let wire = u64::from(rec.wire_len);
    let payload = u64::from(rec.payload_len);
    if segs > 1 && wire > payload {
        payload + segs * (wire - payload)
    } else {
        wire
    }
}

/// Connection state of a TCP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    /// No packet yet (or not TCP).
    None = 0,
    /// SYN seen, no SYN/ACK yet.
    SynSent = 1,
    /// SYN/ACK seen, handshake not completed.
    SynReceived = 2,
    /// Handshake completed or flow picked up mid-stream.
    Established = 3,
    /// FIN seen from one side.
    Closing = 4,
    /// FIN seen from both sides.
    Closed = 5,
    /// RST seen.
    Reset = 6,
}

impl TcpState {
    /// From the stored tag.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::SynSent,
            2 => Self::SynReceived,
            3 => Self::Established,
            4 => Self::Closing,
            5 => Self::Closed,
            6 => Self::Reset,
            _ => Self::None,
        }
    }

    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "new",
            Self::SynSent => "syn_sent",
            Self::SynReceived => "syn_received",
            Self::Established => "established",
            Self::Closing => "closing",
            Self::Closed => "closed",
            Self::Reset => "reset",
        }
    }
}

/// Which idle timeout applies to a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TimeoutClass {
    /// TCP handshake in progress.
    Syn = 0,
    /// TCP established (or picked up mid-stream, or closing).
    Established = 1,
    /// TCP closed by FIN both ways or RST.
    Closed = 2,
    /// UDP and other IP protocols.
    Udp = 3,
    /// TCP handshake whose SYN (or SYN/ACK) was re-sent: waits out the
    /// sender's retransmission backoff.
    SynRetried = 4,
}

/// One tracked flow. Hot state is inline; RTT sketches, holes and rare
/// counters are in `extra`, allocated on first need.
#[derive(Debug)]
pub struct Flow {
    /// Canonical 5-tuple.
    pub key: FlowKey,
    /// [`TcpState`] tag.
    pub state: u8,
    /// Side that opened the flow (SYN sender, else first packet's sender).
    pub initiator: u8,
    /// [`TimeoutClass`] tag, or `VACANT`.
    pub(super) class: u8,
    /// VLAN tags per direction.
    pub vlan: [VlanTag; 2],
    /// First record time (ns).
    pub first_ts: u64,
    /// Latest record time (ns).
    pub last_ts: u64,
    pub(super) prev: u32,
    pub(super) next: u32,
    /// Next flow with the same 5-tuple on other VLANs.
    pub(super) chain: u32,
    /// Per-direction hot state (index = side of the canonical key).
    pub dir: [Dir; 2],
    /// Lazily allocated state.
    pub extra: Option<Box<Extra>>,
    /// Slot of the [`FlowObserver`](super::FlowObserver) (0 on a new flow).
    pub tag: u16,
}

impl Flow {
    pub(super) fn new(key: FlowKey, vlan: VlanTag, d: usize, ts: u64, class: TimeoutClass) -> Self {
        Self {
            key,
            state: TcpState::None as u8,
            initiator: d as u8,
            class: class as u8,
            vlan: [vlan; 2],
            first_ts: ts,
            last_ts: ts,
            prev: NIL,
            next: NIL,
            chain: NIL,
            dir: Default::default(),
            extra: None,
            tag: 0,
        }
    }

    /// The lazily allocated state, allocating it now if needed.
    #[inline]
    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    pub(super) fn timeout_class(&self) -> TimeoutClass {
        if self.key.proto != ipproto::TCP {
            return TimeoutClass::Udp;
        }
        match TcpState::from_u8(self.state) {
            TcpState::SynSent | TcpState::SynReceived
                if (self.dir[0].flags | self.dir[1].flags) & F_SYN_RETRIED != 0 =>
            {
                TimeoutClass::SynRetried
            }
            TcpState::SynSent | TcpState::SynReceived => TimeoutClass::Syn,
            TcpState::Closed | TcpState::Reset => TimeoutClass::Closed,
            _ => TimeoutClass::Established,
        }
    }

    /// Bytes this flow occupies: the slab entry plus its heap state.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.extra.as_deref().map_or(0, Extra::heap_bytes)
    }
}

/// TTL / hop limit per direction: the latest value inline, the history
/// (first, min, max, changes) only once it first changes (route changes
/// are rare; most flows never allocate for this).
#[inline]
pub(super) fn track_ttl(f: &mut Flow, d: usize, rec: &PacketMeta, first_in_dir: bool) {
    let prev = f.dir[d].ttl;
    if first_in_dir {
        f.dir[d].ttl = rec.ttl;
        return;
    }
    if rec.ttl == prev {
        return;
    }
    f.dir[d].ttl = rec.ttl;
    let h = f.extra_mut().dir[d].ttl.get_or_insert(TtlHistory {
        first: prev,
        min: prev,
        max: prev,
        first_change_ns: rec.ts_ns,
        ..TtlHistory::default()
    });
    h.changes = h.changes.saturating_add(1);
    h.min = h.min.min(rec.ttl);
    h.max = h.max.max(rec.ttl);
    h.last_change_ns = rec.ts_ns;
}
