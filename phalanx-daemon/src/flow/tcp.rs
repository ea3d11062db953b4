//! Per-direction TCP state and the per-segment update.
//!
//! Direction `d` is the packet's sender side, `r = d ^ 1` the other one.
//! A segment is looked at three times: as the echo of `r`'s RTT probe, as
//! the acknowledgment side of `r`'s data (ACK number, duplicate ACKs,
//! SACK/D-SACK, advertised window), and as data of `d` (new data, hole
//! fill, retransmission, keep-alive).

use phalanx_common::{tcp_flags as tf, tcp_opts, PacketMeta, MAX_SACK_BLOCKS};

use super::jitter::{ArrivalJitter, Jitter};
use super::loss::Holes;
use super::rtt::{Probe, P_SYN, P_SYNACK};
use super::stats::SampleStats;
use super::table::Flow;
use super::{seq, window};

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
/// This side sent SYN/ACK.
pub const F_SYNACK: u16 = 1 << 11;
/// This side's MSS option was seen.
pub const F_MSS: u16 = 1 << 12;
/// `window` came from a SYN (never scaled, so not comparable with later ones).
pub const F_WIN_SYN: u16 = 1 << 13;

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
    /// Keep-alives sent.
    pub keepalives: u32,
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
    pub partial_ack: Option<(u32, u64)>,
    /// Latest retransmitted range, for D-SACK matching.
    pub last_retx: Option<(u32, u32, bool)>,
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
    /// Outstanding size probe: `(start, end, segment payload)` of one
    /// first transmission whose acknowledgment is awaited.
    pub size_probe: Option<(u32, u32, u32)>,
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
            + self.icmp.capacity() * std::mem::size_of::<IcmpEvent>()
    }
}

impl DirExtra {
    fn add_rtt(&mut self, us: u32) {
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

enum DataKind {
    New,
    Retrans,
    Other,
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

/// Whether a SYN on an existing flow starts a new connection (port reuse
/// after close): the flow is finished and a new one starts.
pub fn is_new_connection(f: &Flow, d: usize, rec: &PacketMeta) -> bool {
    let fl = rec.tcp_flags;
    if fl & tf::SYN == 0 || fl & tf::ACK != 0 {
        return false;
    }
    let st = TcpState::from_u8(f.state);
    let dir = &f.dir[d];
    matches!(st, TcpState::Closed | TcpState::Reset | TcpState::Closing)
        && (dir.flags & F_SEQ == 0 || rec.seq != dir.first_seq)
}

/// Applies one TCP record to the flow. `d` is the record's direction,
/// `now_us` the record time in us since the flow's first packet (wrapping).
pub fn on_segment(f: &mut Flow, d: usize, rec: &PacketMeta, now: u64, now_us: u32) {
    let r = d ^ 1;
    let fl = rec.tcp_flags;
    let syn = fl & tf::SYN != 0;
    let ackf = fl & tf::ACK != 0;
    let fin = fl & tf::FIN != 0;
    let rst = fl & tf::RST != 0;
    if rst && f.dir[d].flags & F_RST == 0 {
        f.extra_mut().dir[d].rst_ns = now.max(1);
    }
    let opts = rec.tcp_opts;
    let has_ts = opts & tcp_opts::TIMESTAMPS != 0;
    let segs = u32::from(rec.segs.max(1));
    let payload = rec.payload_len;
    let seg_len = payload
        .saturating_add(u32::from(syn))
        .saturating_add(u32::from(fin));

    if syn {
        let dir = &mut f.dir[d];
        dir.flags |= F_SYN;
        if ackf {
            dir.flags |= F_SYNACK;
        }
        if opts & tcp_opts::MSS != 0 {
            dir.mss = rec.mss;
            dir.flags |= F_MSS;
        }
        if opts & tcp_opts::WSCALE != 0 {
            dir.wscale = rec.wscale;
            dir.flags |= F_WS;
        }
        if opts & tcp_opts::SACK_PERM != 0 {
            dir.flags |= F_SACK_PERM;
        }
        if !ackf {
            f.initiator = d as u8;
        } else if f.dir[r].flags & F_SYN == 0 {
            f.initiator = r as u8;
        }
    }
    if has_ts {
        f.dir[d].flags |= F_TS;
    }

    // 1. This packet as the echo of the other direction's probe.
    let tsecr = (has_ts && ackf).then_some(rec.tsecr);
    let ack_no = (ackf && !rst).then_some(rec.ack);
    if let Some((us, kind)) = f.dir[r].probe.echo(now_us, tsecr, ack_no, has_ts) {
        let ex = f.extra_mut();
        ex.dir[r].add_rtt(us);
        if kind & P_SYN != 0 && syn && ackf {
            ex.hs_down_us = Some(us);
        }
        if kind & P_SYNACK != 0 && !syn {
            ex.hs_up_us = Some(us);
        }
    }

    // A zero-length segment one below the highest sequence: a keep-alive or
    // a zero-window probe without data, not an ACK that reports anything.
    let own = &f.dir[d];
    let bare_probe =
        seg_len == 0 && !rst && own.flags & F_SEQ != 0 && rec.seq == own.snd_max.wrapping_sub(1);
    if bare_probe {
        let peer = &f.dir[r];
        let zero = peer.flags & F_WIN != 0 && peer.window == 0;
        let ex = &mut f.extra_mut().dir[d];
        if zero {
            ex.zero_window_probes = ex.zero_window_probes.saturating_add(1);
        } else {
            ex.keepalives = ex.keepalives.saturating_add(1);
        }
    }

    // 2. Acknowledgment side: this side acknowledges the other's data.
    let advanced = ackf && !rst && on_ack(f, d, rec, syn || fin || bare_probe, now);
    if !rst {
        let dir = &mut f.dir[d];
        let prev = (dir.flags & F_WIN != 0).then_some(dir.window);
        if !syn && !fin {
            let (zero, episode) = window::zero_window(prev, rec.window);
            if zero {
                let ex = &mut f.extra_mut().dir[d];
                ex.zero_window_packets = ex.zero_window_packets.saturating_add(1);
                if episode {
                    ex.zero_windows = ex.zero_windows.saturating_add(1);
                    ex.zero_window_since_ns = now.max(1);
                    if ex.zero_window_first_ns == 0 {
                        ex.zero_window_first_ns = now.max(1);
                    }
                }
            } else if let Some(ex) = f.extra.as_deref_mut() {
                let ex = &mut ex.dir[d];
                if ex.zero_window_since_ns != 0 {
                    ex.zero_window_ns += now.saturating_sub(ex.zero_window_since_ns);
                    ex.zero_window_since_ns = 0;
                }
            }
        }
        let dir = &mut f.dir[d];
        dir.window = rec.window;
        dir.flags |= F_WIN;
        if syn {
            dir.flags |= F_WIN_SYN;
        } else {
            dir.flags &= !F_WIN_SYN;
        }
    }

    // 3. Data side.
    let kind = if seg_len > 0 {
        on_data(f, d, rec, seg_len, syn, fin, segs, now)
    } else {
        DataKind::Other
    };

    // 4. Probe start for this direction.
    let probe_kind = match (syn, ackf) {
        (true, false) => P_SYN,
        (true, true) => P_SYNACK,
        _ => 0,
    };
    let dir = &mut f.dir[d];
    let ts_new = has_ts && (dir.flags & F_TSVAL == 0 || rec.tsval != dir.last_tsval);
    match kind {
        DataKind::Retrans => {
            dir.probe.karn(rec.seq);
            if has_ts && ts_new {
                // Timestamps name the transmission: re-probe on the retransmission.
                dir.probe.start(now_us, Some(rec.tsval), None, probe_kind);
            }
        }
        DataKind::New if !dir.probe.active() => {
            let end = rec.seq.wrapping_add(seg_len);
            dir.probe
                .start(now_us, ts_new.then_some(rec.tsval), Some(end), probe_kind);
        }
        // A pure ACK is echoed only when the peer next sends: time it only
        // when it acknowledges new data into an open window (the peer is
        // then expected to send at once), not when it merely repeats an
        // ACK or closes the window, where the echo waits on the peer's idle time.
        _ if ts_new && !dir.probe.active() && (seg_len > 0 || (advanced && rec.window != 0)) => {
            dir.probe.start(now_us, Some(rec.tsval), None, probe_kind);
        }
        _ => {}
    }
    if has_ts {
        dir.last_tsval = rec.tsval;
        dir.flags |= F_TSVAL;
    }

    // 5. Connection state.
    let st = TcpState::from_u8(f.state);
    let next = if rst {
        f.dir[d].flags |= F_RST;
        TcpState::Reset
    } else if fin {
        f.dir[d].flags |= F_FIN;
        if f.dir[r].flags & F_FIN != 0 {
            TcpState::Closed
        } else {
            TcpState::Closing
        }
    } else {
        match (st, syn, ackf) {
            (TcpState::None, true, false) => TcpState::SynSent,
            (TcpState::None | TcpState::SynSent, true, true) => TcpState::SynReceived,
            (TcpState::None, _, _) => TcpState::Established,
            (TcpState::SynReceived, false, true) => TcpState::Established,
            (s, _, _) => s,
        }
    };
    // After RST only a new SYN changes the state.
    if !matches!(st, TcpState::Reset) || syn {
        f.state = next as u8;
    }
}

/// Returns whether the ACK number advanced.
/// `not_dup`: the segment cannot be a duplicate ACK (SYN, FIN, keep-alive).
fn on_ack(f: &mut Flow, d: usize, rec: &PacketMeta, not_dup: bool, now: u64) -> bool {
    let r = d ^ 1;
    let ack = rec.ack;
    let outstanding = f.dir[r].flags & F_SEQ == 0 || seq::gt(f.dir[r].snd_max, ack);
    let dir = &mut f.dir[d];
    let mut advanced = false;
    if dir.flags & F_ACK == 0 {
        dir.last_ack = ack;
        dir.flags |= F_ACK;
        advanced = true;
    } else if seq::gt(ack, dir.last_ack) {
        dir.last_ack = ack;
        dir.dupack_run = 0;
        dir.ack_advances = dir.ack_advances.saturating_add(1);
        advanced = true;
    } else if ack == dir.last_ack
        && rec.payload_len == 0
        && !not_dup
        && dir.flags & F_WIN != 0
        && (rec.window == dir.window || dir.flags & F_WIN_SYN != 0)
        && rec.window != 0
        && outstanding
    {
        dir.dup_acks = dir.dup_acks.saturating_add(1);
        dir.dupack_run = dir.dupack_run.saturating_add(1);
    }

    let mut sacked_above = 0u32;
    if rec.tcp_opts & tcp_opts::SACK != 0 && rec.sack_count > 0 {
        let n = usize::from(rec.sack_count).min(MAX_SACK_BLOCKS);
        let b = |i: usize| (rec.sack[2 * i], rec.sack[2 * i + 1]);
        let (l0, r0) = b(0);
        // RFC 2883: a first block below the cumulative ACK, or inside the
        // second block, reports a duplicate segment.
        let dsack = seq::lt(l0, ack)
            || (n >= 2 && seq::ge(l0, b(1).0) && seq::le(r0, b(1).1) && seq::lt(l0, r0));
        let first_above = if dsack { 1 } else { 0 };
        for i in first_above..n {
            let (l, r) = b(i);
            if seq::ge(l, ack) && seq::lt(l, r) {
                sacked_above = sacked_above.saturating_add(seq::dist(l, r));
            }
        }
        if dsack {
            let ex = &mut f.extra_mut().dir[r];
            if let Some((s, e, marked)) = ex.last_retx {
                if !marked && seq::lt(l0, e) && seq::lt(s, r0) {
                    ex.retrans_spurious = ex.retrans_spurious.saturating_add(1);
                    ex.last_retx = Some((s, e, true));
                }
            }
        }
    }
    if sacked_above > 0 {
        f.extra_mut().dir[d].sacked_above = sacked_above;
    } else if let Some(ex) = f.extra.as_deref_mut() {
        ex.dir[d].sacked_above = 0;
    }
    if advanced {
        if let Some(ex) = f.extra.as_deref_mut() {
            let rx = &mut ex.dir[r];
            rx.partial_ack = rx.in_recovery.then_some((ack, now));
            if rx.in_recovery && seq::ge(ack, rx.recovery_point) {
                rx.in_recovery = false;
            }
            if let Some((_, end, len)) = rx.size_probe {
                if seq::ge(ack, end) {
                    rx.max_acked_segment = rx.max_acked_segment.max(len);
                    rx.size_probe = None;
                }
            }
            if rx.stall.count > 0 && seq::gt(ack, rx.stall.seq) {
                rx.stall = StallRun::default();
            }
            if !rx.holes.is_empty() {
                rx.holes.acked(ack);
            }
        }
    }
    advanced
}

#[allow(clippy::too_many_arguments)]
fn on_data(
    f: &mut Flow,
    d: usize,
    rec: &PacketMeta,
    seg_len: u32,
    syn: bool,
    fin: bool,
    segs: u32,
    now: u64,
) -> DataKind {
    let r = d ^ 1;
    let s = rec.seq;
    let e = s.wrapping_add(seg_len);
    let payload = rec.payload_len;
    let idx = f.dir[d].packets.saturating_sub(u64::from(segs));
    let dir = &mut f.dir[d];
    if dir.flags & F_SEQ == 0 {
        dir.first_seq = s;
        dir.snd_max = e;
        dir.flags |= F_SEQ;
        dir.goodput += u64::from(payload);
        window_full(f, d, e);
        first_transmission(f, d, e, payload, segs);
        return DataKind::New;
    }
    let snd_max = dir.snd_max;
    if seq::ge(s, snd_max) {
        if seq::gt(s, snd_max) {
            f.extra_mut().dir[d].holes.open(snd_max, s, now, idx);
        }
        let dir = &mut f.dir[d];
        dir.snd_max = e;
        dir.goodput += u64::from(payload);
        window_full(f, d, e);
        first_transmission(f, d, e, payload, segs);
        return DataKind::New;
    }

    // Below the highest sequence seen: a hole fill, a keep-alive or probe,
    // or a retransmission of data that passed the vantage point before.
    let prompted = prompted_by_partial_ack(f, d, s, now);
    let advance = seq::dist(snd_max, e);
    if advance > 0 {
        let dir = &mut f.dir[d];
        dir.snd_max = e;
        dir.goodput += u64::from(advance.min(payload));
    }
    let fill = f
        .extra
        .as_deref_mut()
        .and_then(|ex| ex.dir[d].holes.fill(s, e));
    if let Some(fill) = fill {
        // First time these bytes pass the vantage point.
        let dir = &mut f.dir[d];
        dir.goodput += u64::from(fill.bytes.min(payload));
        // Late if it came at least one vantage-to-sender round trip after
        // the hole opened (the other direction's minimum RTT); without any
        // RTT, three duplicate ACKs from the receiver say "loss".
        let ref_us = f.extra.as_deref().and_then(|ex| ex.dir[r].rtt.min_us());
        let late = prompted
            || match ref_us {
                Some(m) => now.saturating_sub(fill.t_ns) >= u64::from(m) * 1000,
                None => f.dir[r].dupack_run >= 3,
            };
        if late {
            retransmission(f, d, s, e, payload, segs, true, now, prompted);
            return DataKind::Retrans;
        }
        let extent = u32::try_from(idx.saturating_sub(fill.idx)).unwrap_or(u32::MAX);
        let ex = &mut f.extra_mut().dir[d];
        ex.out_of_order = ex.out_of_order.saturating_add(segs);
        ex.reorder_extent_max = ex.reorder_extent_max.max(extent);
        return DataKind::Other;
    }
    if payload <= 1 && !syn && !fin && s == snd_max.wrapping_sub(1) {
        let peer = &f.dir[r];
        let zero = peer.flags & F_WIN != 0 && peer.window == 0;
        let ex = &mut f.extra_mut().dir[d];
        if zero {
            ex.zero_window_probes = ex.zero_window_probes.saturating_add(1);
        } else {
            ex.keepalives = ex.keepalives.saturating_add(1);
        }
        return DataKind::Other;
    }
    retransmission(f, d, s, e, payload, segs, false, now, prompted);
    DataKind::Retrans
}

/// Segment-size bookkeeping for data passing the vantage point for the first
/// time: the largest segment sent, and a size probe (one segment at a time,
/// larger than any acknowledged so far) whose acknowledgment proves that
/// segments of that size cross the path.
fn first_transmission(f: &mut Flow, d: usize, end: u32, payload: u32, segs: u32) {
    if payload == 0 {
        return;
    }
    let seg = payload.div_ceil(segs.max(1));
    let ex = &mut f.extra_mut().dir[d];
    ex.max_segment = ex.max_segment.max(seg);
    if ex.size_probe.is_none() && seg > ex.max_acked_segment {
        ex.size_probe = Some((end.wrapping_sub(payload), end, seg));
    }
}

/// Whether a segment starting at `s` answers a partial ACK: the peer's
/// cumulative ACK reached `s` during fast recovery, and the segment came
/// one vantage-to-sender round trip `m` (the minimum) after it, within
/// `2 m + 1 ms`: an RTO comes later (Linux: at least `srtt + 200 ms`).
fn prompted_by_partial_ack(f: &Flow, d: usize, s: u32, now: u64) -> bool {
    let Some(ex) = f.extra.as_deref() else {
        return false;
    };
    let Some((ack, t)) = ex.dir[d].partial_ack else {
        return false;
    };
    let Some(m) = ex.dir[d ^ 1].rtt.min_us() else {
        return false;
    };
    let (m, since) = (u64::from(m) * 1000, now.saturating_sub(t));
    // RTT samples are whole microseconds: allow one of rounding.
    ack == s && since + 1000 >= m && since <= 2 * m + 1_000_000
}

#[allow(clippy::too_many_arguments)]
fn retransmission(
    f: &mut Flow,
    d: usize,
    s: u32,
    e: u32,
    payload: u32,
    segs: u32,
    late: bool,
    now: u64,
    prompted: bool,
) {
    let r = d ^ 1;
    let peer = &f.dir[r];
    // RFC 6675 IsLost: DupThresh duplicate ACKs, or more than
    // (DupThresh - 1) * SMSS bytes SACKed above the cumulative ACK.
    let smss = if peer.flags & F_MSS != 0 && peer.mss > 0 {
        u32::from(peer.mss)
    } else {
        1460
    };
    let sacked = f.extra.as_deref().map_or(0, |ex| ex.dir[r].sacked_above);
    let peer_signalled = peer.dupack_run >= 3 || sacked > 2 * smss;
    // All of it was already acknowledged past the vantage point: not needed.
    let acked = !late && peer.flags & F_ACK != 0 && seq::le(e, peer.last_ack);
    let snd_max = f.dir[d].snd_max;
    let ipv = f.key.ip_version;
    let ex = f.extra_mut();
    let pmtud = ex.icmp.iter().any(|ev| {
        usize::from(ev.quoted_dir) == d
            && ev.is_too_big(ipv)
            && seq::le(ev.quoted_seq, s)
            && seq::lt(s, ev.snd_max_at)
    });
    let ex = &mut ex.dir[d];
    ex.retrans = ex.retrans.saturating_add(segs);
    let fast = !pmtud && (peer_signalled || ex.in_recovery || prompted);
    if pmtud {
        ex.retrans_pmtud = ex.retrans_pmtud.saturating_add(segs);
    }
    if fast {
        ex.retrans_fast = ex.retrans_fast.saturating_add(segs);
        if !ex.in_recovery {
            ex.in_recovery = true;
            // A partial ACK shows the sender's recovery point lay beyond
            // this segment, which the vantage point had not seen when the
            // recovery began: at least its end. Otherwise a new recovery
            // runs to the highest sequence sent.
            ex.recovery_point = if prompted { e } else { snd_max };
        }
    }
    if acked {
        ex.retrans_spurious = ex.retrans_spurious.saturating_add(segs);
    }
    if late {
        ex.late_fills = ex.late_fills.saturating_add(segs);
    }
    // Karn: an acknowledgment of re-sent data says nothing about the size
    // of the first transmission.
    if let Some((ps, pe, _)) = ex.size_probe {
        if seq::lt(s, pe) && seq::gt(e, ps) {
            ex.size_probe = None;
        }
    }
    let seg = payload.div_ceil(segs.max(1));
    if payload > 0 && seg >= ex.max_segment && seg > ex.max_acked_segment {
        ex.full_size_retrans = ex.full_size_retrans.saturating_add(segs);
        if ex.full_size_retrans_first_ns == 0 {
            ex.full_size_retrans_first_ns = now.max(1);
        }
        ex.full_size_retrans_last_ns = now.max(1);
    }
    // Data already acknowledged cannot stall the connection.
    if !pmtud && !acked {
        let st = &mut ex.stall;
        if st.count > 0 && st.seq == s {
            st.count = st.count.saturating_add(1);
            st.last_ns = now;
        } else {
            *st = StallRun {
                count: 1,
                seq: s,
                first_ns: now,
                last_ns: now,
            };
        }
        if st.count > ex.stall_max.count {
            ex.stall_max = *st;
        }
    }
    ex.retrans_bytes += u64::from(payload);
    ex.last_retx = Some((s, e, acked));
}

fn window_full(f: &mut Flow, d: usize, end: u32) {
    let r = d ^ 1;
    let peer = &f.dir[r];
    let own = &f.dir[d];
    if peer.flags & (F_ACK | F_WIN) != (F_ACK | F_WIN) {
        return;
    }
    let Some(shift) = window::shift(
        peer.flags & F_SYN != 0,
        (peer.flags & F_WS != 0).then_some(peer.wscale),
        own.flags & F_SYN != 0,
        own.flags & F_WS != 0,
    ) else {
        return;
    };
    if window::is_full(peer.last_ack, peer.window, shift, end) {
        let ex = &mut f.extra_mut().dir[d];
        ex.window_full = ex.window_full.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use phalanx_common::{ipproto, RecordKind};

    use super::*;
    use crate::flow::{FlowConfig, FlowTable};

    const MS: u64 = 1_000_000;
    const SEG: u32 = 1000;

    fn rec(t: u64, from_client: bool, flags: u8) -> PacketMeta {
        let mut m = PacketMeta::zeroed();
        m.ts_ns = t;
        m.kind = RecordKind::Tcp as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::TCP;
        let (c, s) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let (src, dst, sport, dport) = if from_client {
            (c, s, 40000, 80)
        } else {
            (s, c, 80, 40000)
        };
        m.src_addr[..4].copy_from_slice(&src);
        m.dst_addr[..4].copy_from_slice(&dst);
        m.sport = sport;
        m.dport = dport;
        m.tcp_flags = flags;
        m.window = 1000;
        m.wire_len = 54;
        m
    }

    /// Client segment `i` (1000 bytes each, the first at sequence 1000).
    fn data(t: u64, i: u32) -> PacketMeta {
        let mut m = rec(t, true, tf::ACK);
        m.seq = 1000 + i * SEG;
        m.ack = 1;
        m.payload_len = SEG;
        m
    }

    /// Server ACK up to segment `next` (exclusive), SACKing `[l, r)`.
    fn ack(t: u64, next: u32, sack: Option<(u32, u32)>) -> PacketMeta {
        let mut m = rec(t, false, tf::ACK);
        m.seq = 1;
        m.ack = 1000 + next * SEG;
        if let Some((l, r)) = sack {
            m.tcp_opts = tcp_opts::SACK;
            m.sack_count = 1;
            m.sack[0] = 1000 + l * SEG;
            m.sack[1] = 1000 + r * SEG;
        }
        m
    }

    /// The vantage point sits 1 ms from the server (the receiver) and
    /// 10 ms from the client (the sender). Segment 1 is lost after it;
    /// segment 5, the highest one sent when the client starts fast recovery,
    /// is lost before it, so the recovery point the vantage point can see
    /// ends below segment 5. The server's ACK of segment 4 is then a partial
    /// ACK to the client, which re-sends segment 5 one round trip later.
    fn recovery_with_unseen_top(resend_after_partial_ack: u64) -> Vec<PacketMeta> {
        let mut syn = rec(0, true, tf::SYN);
        syn.seq = 999;
        syn.tcp_opts = tcp_opts::MSS | tcp_opts::SACK_PERM;
        syn.mss = 1000;
        let mut synack = rec(MS, false, tf::SYN | tf::ACK);
        synack.ack = 1000;
        synack.tcp_opts = tcp_opts::MSS | tcp_opts::SACK_PERM;
        synack.mss = 1000;
        let mut hs_ack = rec(11 * MS, true, tf::ACK);
        hs_ack.seq = 1000;
        hs_ack.ack = 1;
        let us = |u: u64| u * 1000;
        vec![
            syn,
            synack,
            hs_ack,
            data(12 * MS, 0),
            data(12 * MS + us(100), 1),
            data(12 * MS + us(200), 2),
            data(12 * MS + us(300), 3),
            data(12 * MS + us(400), 4),
            ack(13 * MS, 1, None),
            ack(13 * MS + us(200), 1, Some((2, 3))),
            ack(13 * MS + us(300), 1, Some((2, 4))),
            ack(13 * MS + us(400), 1, Some((2, 5))),
            // Three duplicate ACKs: fast retransmission of segment 1.
            data(23 * MS + us(400), 1),
            ack(24 * MS + us(400), 5, None),
            // New data opens the hole of segment 5 only now.
            data(30 * MS, 6),
            ack(31 * MS, 5, Some((6, 7))),
            data(24 * MS + us(400) + resend_after_partial_ack, 5),
            ack(25 * MS + us(400) + resend_after_partial_ack, 7, None),
        ]
    }

    fn analyse(recs: &[PacketMeta]) -> crate::flow::FlowSummary {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut sorted = recs.to_vec();
        sorted.sort_by_key(|r| r.ts_ns);
        for r in &sorted {
            t.ingest(r);
        }
        t.snapshot().remove(0)
    }

    #[test]
    fn partial_ack_resend_of_unseen_top_segment_is_fast_and_late() {
        let f = analyse(&recovery_with_unseen_top(10 * MS));
        assert_eq!(f.retransmissions, 2, "segments 1 and 5");
        assert_eq!(
            (f.retrans_fast, f.retrans_timeout),
            (2, 0),
            "segment 5 answers the partial ACK inside the recovery"
        );
        assert_eq!(
            (f.late_fills, f.out_of_order),
            (1, 0),
            "filled one round trip after the ACK asked for it, though only 4.4 ms after the hole opened: loss, not reordering"
        );
    }

    #[test]
    fn resend_an_rto_after_the_partial_ack_is_a_timeout() {
        let f = analyse(&recovery_with_unseen_top(250 * MS));
        assert_eq!(f.retransmissions, 2);
        assert_eq!((f.retrans_fast, f.retrans_timeout), (1, 1));
        assert_eq!((f.late_fills, f.out_of_order), (1, 0));
    }
}
