//! Serializable per-flow summaries (the `flows[]` entries of `--json`).
//!
//! Orientation: `src` is the side that opened the flow (the SYN sender for
//! TCP, else the sender of the first packet seen); `src_to_dst` and
//! `dst_to_src` hold the per-direction figures.

use std::net::IpAddr;

use phalanx_common::{ipproto, user::ip_from_bytes};
use serde::Serialize;

use super::key::Proto;
use super::state::{
    Dir, DirExtra, Extra, Flow, IcmpEvent, TcpState, F_ACK, F_FIN, F_MSS, F_RST, F_SACK_PERM,
    F_SYN, F_SYNACK, F_TS, F_WS,
};
use super::stats::Summary;

/// RTT figures in milliseconds (`null` without samples).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RttReport {
    /// Number of samples.
    pub samples: u64,
    /// Minimum.
    pub min_ms: Option<f64>,
    /// Mean.
    pub avg_ms: Option<f64>,
    /// Median (nearest rank).
    pub p50_ms: Option<f64>,
    /// 99th percentile (nearest rank).
    pub p99_ms: Option<f64>,
    /// Maximum.
    pub max_ms: Option<f64>,
}

fn round_us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

impl From<Option<Summary>> for RttReport {
    fn from(s: Option<Summary>) -> Self {
        match s {
            None => Self::default(),
            Some(s) => Self {
                samples: s.samples,
                min_ms: Some(round_us(s.min_ms)),
                avg_ms: Some(round_us(s.avg_ms)),
                p50_ms: Some(round_us(s.p50_ms)),
                p99_ms: Some(round_us(s.p99_ms)),
                max_ms: Some(round_us(s.max_ms)),
            },
        }
    }
}

/// A value per direction, named by the sender side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerSide<T> {
    /// As sent by `src`.
    pub src: T,
    /// As sent by `dst`.
    pub dst: T,
}

/// Handshake RTT split at the vantage point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HandshakeReport {
    /// SYN -> SYN/ACK: vantage point -> server -> vantage point.
    pub downstream_ms: Option<f64>,
    /// SYN/ACK -> ACK: vantage point -> client -> vantage point.
    pub upstream_ms: Option<f64>,
    /// Sum of both parts (client-to-server RTT), when both are known.
    pub total_ms: Option<f64>,
}

/// Where a TCP connection's time went, seen from the vantage point (see
/// `flow::latency`); `null` parts were not measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyReport {
    /// Round trip vantage point -> client -> vantage point: the smallest
    /// sample of the server's packets (the handshake's SYN/ACK -> ACK, or
    /// data -> ACK).
    pub client_network_ms: Option<f64>,
    /// Round trip vantage point -> server -> vantage point: the smallest
    /// sample of the client's packets (SYN -> SYN/ACK, or data -> ACK).
    pub server_network_ms: Option<f64>,
    /// The server's answer time: request's last segment -> answer's first
    /// byte, less `server_network_ms`; median over the exchanges.
    pub server_response_ms: Option<f64>,
    /// The client's pause between the handshake and its first request,
    /// less `client_network_ms`.
    pub client_think_ms: Option<f64>,
    /// Time the data of both directions waited for resends: from the
    /// receiver's last acknowledgment progress before a first resend to
    /// its next progress (an episode still open counts to the last packet).
    pub retransmission_delay_ms: f64,
}

/// TTL / hop limit of one direction's packets (0s without packets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TtlReport {
    /// TTL of the first packet.
    pub first: u8,
    /// Smallest TTL.
    pub min: u8,
    /// Largest TTL.
    pub max: u8,
    /// TTL of the latest packet.
    pub last: u8,
    /// Packets whose TTL differed from the previous packet's.
    pub changes: u32,
    /// Time of the first change (ns).
    pub first_change_ns: Option<u64>,
}

/// The longest run of retransmissions of the same data with no
/// acknowledgment progress in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StallReport {
    /// Retransmissions in the run (0 = none).
    pub retransmissions: u32,
    /// Sequence number re-sent (relative to the direction's first sequence).
    pub rel_seq: u32,
    /// First retransmission of the run (ns).
    pub first_ns: Option<u64>,
    /// Latest retransmission of the run (ns).
    pub last_ns: Option<u64>,
    /// The run is still unacknowledged at the last packet.
    pub open: bool,
}

/// Figures of one direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DirReport {
    /// Packets (GSO records count their segments).
    pub packets: u64,
    /// Frame bytes.
    pub bytes: u64,
    /// Unique payload bytes (first transmissions).
    pub goodput_bytes: u64,
    /// Retransmitted segments.
    pub retransmissions: u32,
    /// ... of which fast retransmissions.
    pub retrans_fast: u32,
    /// ... of which timeout retransmissions.
    pub retrans_timeout: u32,
    /// ... of which path-MTU resends (after an ICMP "too big").
    pub retrans_pmtud: u32,
    /// ... of which spurious.
    pub retrans_spurious: u32,
    /// ... of which late hole fills (loss upstream of the vantage point).
    pub late_fills: u32,
    /// Retransmitted payload bytes.
    pub retrans_bytes: u64,
    /// Reordered segments.
    pub out_of_order: u32,
    /// Largest reorder extent (RFC 4737), packets.
    pub reorder_extent_max: u32,
    /// Duplicate ACKs sent.
    pub dup_acks: u32,
    /// Zero-window episodes advertised.
    pub zero_windows: u32,
    /// Packets advertising a zero window.
    pub zero_window_packets: u32,
    /// Segments that filled the peer's window.
    pub window_full: u32,
    /// Segments after which less than one segment of the peer's window was
    /// left (the sender waited for the receiver; includes `window_full`).
    pub window_limited: u32,
    /// Keep-alives.
    pub keepalives: u32,
    /// Second copies of this direction's packets captured at another point
    /// (not counted in `packets` or anything else).
    pub capture_duplicates: u32,
    /// Zero-window probes.
    pub zero_window_probes: u32,
    /// MSS option of this side's SYN.
    pub mss: Option<u16>,
    /// Window-scale option of this side's SYN.
    pub wscale: Option<u8>,
    /// VLAN ids (outer, inner; 0 = none).
    pub vlan: [u16; 2],
    /// RTT of this direction's packets: vantage -> receiver -> vantage.
    pub rtt: RttReport,
    /// RFC 3550 jitter (ms) of this direction.
    pub jitter_ms: Option<f64>,
    /// SYN, FIN, RST seen from this side.
    pub syn: bool,
    /// FIN seen.
    pub fin: bool,
    /// RST seen.
    pub rst: bool,
    /// Time of this side's first RST (ns).
    pub rst_ns: Option<u64>,
    /// Every packet of this side was a SYN without ACK (no handshake
    /// completed from its point of view).
    pub syn_only: bool,
    /// Times this side's cumulative ACK moved forward.
    pub ack_advances: u32,
    /// TTL / hop limit of this side's packets.
    pub ttl: TtlReport,
    /// Packets marked ECN Congestion Experienced.
    pub ce_packets: u32,
    /// Smoothed RTT (RFC 6298, gain 1/8) of this direction, ms: the recent
    /// RTT, against the baseline `rtt.min_ms`.
    pub srtt_ms: Option<f64>,
    /// Time this side advertised a zero window, ms (an episode still open
    /// counts up to the flow's last packet).
    pub zero_window_ms: f64,
    /// The window was still zero at this side's latest advertisement.
    pub zero_window_open: bool,
    /// First zero-window advertisement (ns).
    pub zero_window_first_ns: Option<u64>,
    /// Largest segment payload this side sent (bytes).
    pub max_segment: u32,
    /// Largest first-transmission segment payload the peer acknowledged.
    pub max_acked_segment: u32,
    /// Retransmissions of full-size segments (the largest size sent so far)
    /// while no segment that large had been acknowledged.
    pub full_size_retrans: u32,
    /// First of them (ns).
    pub full_size_retrans_first_ns: Option<u64>,
    /// Latest of them (ns).
    pub full_size_retrans_last_ns: Option<u64>,
    /// Longest stall: the same data re-sent with no acknowledgment progress.
    pub stall: StallReport,
}

/// One flow as reported (field names are a contract; see DESIGN.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowSummary {
    /// Initiator address.
    pub src: IpAddr,
    /// Responder address.
    pub dst: IpAddr,
    /// Initiator port.
    pub sport: u16,
    /// Responder port.
    pub dport: u16,
    /// "tcp", "udp", "icmp", "icmpv6" or the protocol number.
    pub proto: Proto,
    /// VLAN ids of the src -> dst direction (outer, inner; 0 = none).
    pub vlan: [u16; 2],
    /// First packet time (ns; capture time since the epoch for files).
    pub first_ts_ns: u64,
    /// Last packet time (ns).
    pub last_ts_ns: u64,
    /// Seconds between first and last packet.
    pub duration_s: f64,
    /// Packets, both directions.
    pub packets: u64,
    /// Frame bytes, both directions.
    pub bytes: u64,
    /// Unique payload bytes, both directions.
    pub goodput_bytes: u64,
    /// Goodput over the flow's duration, bits/s.
    pub goodput_bps: Option<f64>,
    /// The network round trip seen from the vantage point. At one of the
    /// hosts (`local_side` known): the part vantage -> peer -> vantage of
    /// the local side's packets, the path's whole round trip; elsewhere on
    /// the path, both directions' parts summed (quantile by quantile).
    pub rtt: RttReport,
    /// The side the capture was taken at ("src"/"dst"): every packet of it
    /// carries an initial TTL (32, 64, 128 or 255: no router passed) while
    /// the peer's are decremented. `null` mid-path or on one segment.
    pub local_side: Option<&'static str>,
    /// The local host's answer time, ms (median): from a packet of the peer
    /// to the local host's answer, not part of the path (`null` without
    /// `local_side`).
    pub answer_ms: Option<f64>,
    /// Retransmitted segments, both directions.
    pub retransmissions: u32,
    /// ... fast.
    pub retrans_fast: u32,
    /// ... timeout.
    pub retrans_timeout: u32,
    /// ... path-MTU resends.
    pub retrans_pmtud: u32,
    /// ... spurious.
    pub retrans_spurious: u32,
    /// ... late hole fills.
    pub late_fills: u32,
    /// Duplicate ACKs, both directions.
    pub dup_acks: u32,
    /// Reordered segments, both directions.
    pub out_of_order: u32,
    /// Largest reorder extent.
    pub reorder_extent_max: u32,
    /// Zero-window episodes, both directions.
    pub zero_windows: u32,
    /// Window-full segments, both directions.
    pub window_full: u32,
    /// Second copies of packets captured at another point, both directions.
    pub capture_duplicates: u32,
    /// MSS per side.
    pub mss: PerSide<Option<u16>>,
    /// Window scale per side.
    pub wscale: PerSide<Option<u8>>,
    /// Jitter of `rtt`'s samples, ms: the local side's part at a host, else
    /// the larger per-direction jitter.
    pub jitter_ms: Option<f64>,
    /// Smoothed recent RTT, ms, of the same parts as `rtt`.
    pub srtt_ms: Option<f64>,
    /// Packets marked ECN Congestion Experienced, both directions.
    pub ce_packets: u32,
    /// Handshake RTT parts (TCP with a seen handshake).
    pub handshake: Option<HandshakeReport>,
    /// Where the time went: network (client and server side), server,
    /// client, resends (TCP).
    pub latency: Option<LatencyReport>,
    /// Connection state.
    pub state: &'static str,
    /// A SYN was seen and never answered.
    pub syn_unanswered: bool,
    /// Side that sent RST ("src"/"dst"), if any.
    pub rst_from: Option<&'static str>,
    /// Both sides sent the timestamp option.
    pub timestamps: bool,
    /// Both SYNs offered SACK.
    pub sack_permitted: bool,
    /// ICMP errors quoting this flow.
    pub icmp_errors: u32,
    /// The first of them.
    pub icmp: Vec<IcmpEvent>,
    /// Per-direction figures.
    pub src_to_dst: DirReport,
    /// Per-direction figures.
    pub dst_to_src: DirReport,
}

fn nz(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn dir_report(d: &Dir, x: Option<&DirExtra>, vlan: u32, tcp: bool, last_ts: u64) -> DirReport {
    let g = |f: fn(&DirExtra) -> u32| x.map_or(0, f);
    let retrans = g(|x| x.retrans);
    let zw_since = x.map_or(0, |x| x.zero_window_since_ns);
    let zw_ns = x.map_or(0, |x| x.zero_window_ns)
        + if zw_since != 0 {
            last_ts.saturating_sub(zw_since)
        } else {
            0
        };
    let fast = g(|x| x.retrans_fast);
    let pmtud = g(|x| x.retrans_pmtud);
    DirReport {
        packets: d.packets,
        bytes: d.bytes,
        goodput_bytes: d.goodput,
        retransmissions: retrans,
        retrans_fast: fast,
        retrans_timeout: retrans.saturating_sub(fast).saturating_sub(pmtud),
        retrans_pmtud: pmtud,
        retrans_spurious: g(|x| x.retrans_spurious),
        late_fills: g(|x| x.late_fills),
        retrans_bytes: x.map_or(0, |x| x.retrans_bytes),
        out_of_order: g(|x| x.out_of_order),
        reorder_extent_max: g(|x| x.reorder_extent_max),
        dup_acks: d.dup_acks,
        zero_windows: g(|x| x.zero_windows),
        zero_window_packets: g(|x| x.zero_window_packets),
        window_full: g(|x| x.window_full),
        window_limited: g(|x| x.window_limited),
        keepalives: g(|x| x.keepalives),
        capture_duplicates: g(|x| x.capture_duplicates),
        zero_window_probes: g(|x| x.zero_window_probes),
        mss: (d.flags & F_MSS != 0).then_some(d.mss),
        wscale: (d.flags & F_WS != 0).then_some(d.wscale),
        vlan: [(vlan >> 16) as u16, vlan as u16],
        rtt: x.and_then(|x| x.rtt.summary()).into(),
        jitter_ms: x
            .and_then(|x| {
                if tcp {
                    x.rtt_jitter.ms()
                } else {
                    x.arrival.jitter.ms()
                }
            })
            .map(round_us),
        syn: d.flags & F_SYN != 0,
        fin: d.flags & F_FIN != 0,
        rst: d.flags & F_RST != 0,
        rst_ns: x.and_then(|x| nz(x.rst_ns)),
        syn_only: tcp && d.flags & (F_SYN | F_ACK | F_RST | F_FIN) == F_SYN,
        ack_advances: u32::from(d.ack_advances),
        ttl: TtlReport::of(d, x),
        ce_packets: g(|x| x.ce_packets),
        srtt_ms: x
            .filter(|x| x.rtt.count() > 0)
            .map(|x| f64::from(x.srtt_us) / 1000.0),
        zero_window_ms: round_us(zw_ns as f64 / 1e6),
        zero_window_open: zw_since != 0,
        zero_window_first_ns: x.and_then(|x| nz(x.zero_window_first_ns)),
        max_segment: g(|x| x.max_segment),
        max_acked_segment: g(|x| x.max_acked_segment),
        full_size_retrans: g(|x| x.full_size_retrans),
        full_size_retrans_first_ns: x.and_then(|x| nz(x.full_size_retrans_first_ns)),
        full_size_retrans_last_ns: x.and_then(|x| nz(x.full_size_retrans_last_ns)),
        stall: StallReport::of(d, x),
    }
}

/// Initial TTLs (hop limits) that stacks send with.
const INITIAL_TTLS: [u8; 4] = [32, 64, 128, 255];

impl TtlReport {
    /// Every packet arrived with one initial TTL: no router between its
    /// sender and the vantage point.
    fn undecremented(&self) -> bool {
        self.min == self.max && INITIAL_TTLS.contains(&self.min)
    }

    /// Packets arrived through at least one router.
    fn decremented(&self) -> bool {
        self.max > 0 && !INITIAL_TTLS.contains(&self.max) && !INITIAL_TTLS.contains(&self.min)
    }

    /// A direction's TTL figures: its history once the TTL changed.
    fn of(d: &Dir, x: Option<&DirExtra>) -> Self {
        match x.and_then(|x| x.ttl) {
            Some(h) => Self {
                first: h.first,
                min: h.min,
                max: h.max,
                last: d.ttl,
                changes: h.changes,
                first_change_ns: Some(h.first_change_ns),
            },
            None => Self {
                first: d.ttl,
                min: d.ttl,
                max: d.ttl,
                last: d.ttl,
                changes: 0,
                first_change_ns: None,
            },
        }
    }
}

impl StallReport {
    /// A direction's longest stall run, sequence relative to its first.
    fn of(d: &Dir, x: Option<&DirExtra>) -> Self {
        let Some(x) = x.filter(|x| x.stall_max.count > 0) else {
            return Self::default();
        };
        let m = x.stall_max;
        Self {
            retransmissions: m.count,
            rel_seq: m.seq.wrapping_sub(d.first_seq),
            first_ns: Some(m.first_ns),
            last_ns: Some(m.last_ns),
            open: x.stall.count > 0 && x.stall == m,
        }
    }
}

impl LatencyReport {
    /// The split of a connection whose client is direction `sides[0]`
    /// (figures `a`) and server `sides[1]` (figures `b`).
    fn of(
        x: Option<&Extra>,
        sides: [usize; 2],
        a: &DirReport,
        b: &DirReport,
        last_ns: u64,
    ) -> Self {
        let ms = |us: f64| round_us(us / 1000.0);
        // The server's packets time the client side, and the other way.
        let client_network_ms = b.rtt.min_ms;
        let server_network_ms = a.rtt.min_ms;
        let less = |v: f64, path: Option<f64>| round_us((v - path.unwrap_or(0.0)).max(0.0));
        let Some(x) = x else {
            return Self {
                client_network_ms,
                server_network_ms,
                ..Self::default()
            };
        };
        let e = &x.exchanges;
        let waits: u64 = sides
            .iter()
            .map(|&d| x.dir[d].retrans_wait.total_ns(last_ns))
            .sum();
        Self {
            client_network_ms,
            server_network_ms,
            server_response_ms: e
                .response_us
                .quantile_us(0.5)
                .map(|v| less(ms(v), server_network_ms)),
            client_think_ms: e
                .first_pause_us
                .map(|v| less(ms(f64::from(v)), client_network_ms)),
            retransmission_delay_ms: round_us(waits as f64 / 1e6),
        }
    }
}

impl HandshakeReport {
    /// The handshake's parts, when either was measured.
    fn of(x: &Extra) -> Option<Self> {
        let ms = |v: Option<u32>| v.map(|u| f64::from(u) / 1000.0);
        (x.hs_down_us.is_some() || x.hs_up_us.is_some()).then(|| Self {
            downstream_ms: ms(x.hs_down_us),
            upstream_ms: ms(x.hs_up_us),
            total_ms: match (x.hs_down_us, x.hs_up_us) {
                (Some(p), Some(q)) => Some((f64::from(p) + f64::from(q)) / 1000.0),
                _ => None,
            },
        })
    }
}

/// Which of two directions (`a` from src, `b` from dst) was sent by the
/// host the capture was taken at: 0 for src, 1 for dst.
fn local_side(a: &DirReport, b: &DirReport) -> Option<usize> {
    match (a.ttl.undecremented(), b.ttl.undecremented()) {
        (true, false) if b.ttl.decremented() => Some(0),
        (false, true) if a.ttl.decremented() => Some(1),
        _ => None,
    }
}

/// Both sides' figures combined by `both`, or the one side that has one.
fn either_or_both<T>(a: Option<T>, b: Option<T>, both: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(both(x, y)),
        (x, y) => x.or(y),
    }
}

impl FlowSummary {
    /// Summarises a flow.
    pub fn of(f: &Flow) -> Self {
        let s = usize::from(f.initiator & 1);
        let r = s ^ 1;
        let k = &f.key;
        let tcp = k.proto == ipproto::TCP;
        let ex = f.extra.as_deref();
        let a = dir_report(&f.dir[s], ex.map(|x| &x.dir[s]), f.vlan[s], tcp, f.last_ts);
        let b = dir_report(&f.dir[r], ex.map(|x| &x.dir[r]), f.vlan[r], tcp, f.last_ts);
        let part = |d: usize| ex.and_then(|x| x.dir[d].rtt.summary());
        let local = local_side(&a, &b);
        // The local side's packets, echoed by the peer, time the path; the
        // peer's, echoed by the local host, time that host's answer.
        let (rtt, answer, srtt_ms, jitter_ms) = match local {
            Some(l) => {
                let (own, dir) = if l == 0 { (s, &a) } else { (r, &b) };
                (part(own), part(own ^ 1), dir.srtt_ms, dir.jitter_ms)
            }
            None => (
                either_or_both(part(s), part(r), |x, y| x.plus(y)),
                None,
                either_or_both(a.srtt_ms, b.srtt_ms, |x, y| round_us(x + y)),
                either_or_both(a.jitter_ms, b.jitter_ms, f64::max),
            ),
        };
        let duration_ns = f.last_ts.saturating_sub(f.first_ts);
        let goodput = a.goodput_bytes + b.goodput_bytes;
        let st = TcpState::from_u8(f.state);
        let state = if tcp { st.name() } else { "active" };
        let rst_from = if f.dir[s].flags & F_RST != 0 {
            Some("src")
        } else if f.dir[r].flags & F_RST != 0 {
            Some("dst")
        } else {
            None
        };
        let both = |bit: u16| f.dir[0].flags & bit != 0 && f.dir[1].flags & bit != 0;
        // Re-orient: 0 = the quoted packet went src -> dst, 1 = dst -> src.
        let icmp = ex.map_or_else(Vec::new, |x| {
            x.icmp
                .iter()
                .map(|ev| IcmpEvent {
                    quoted_dir: u8::from(usize::from(ev.quoted_dir) != s),
                    ..*ev
                })
                .collect()
        });
        Self {
            src: ip_from_bytes(k.ip_version, &k.addr[s]),
            dst: ip_from_bytes(k.ip_version, &k.addr[r]),
            sport: k.port[s],
            dport: k.port[r],
            proto: k.protocol(),
            vlan: a.vlan,
            first_ts_ns: f.first_ts,
            last_ts_ns: f.last_ts,
            duration_s: duration_ns as f64 / 1e9,
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
            goodput_bytes: goodput,
            goodput_bps: (duration_ns > 0).then(|| goodput as f64 * 8e9 / duration_ns as f64),
            rtt: rtt.into(),
            local_side: local.map(|l| if l == 0 { "src" } else { "dst" }),
            answer_ms: answer.map(|x| round_us(x.p50_ms)),
            retransmissions: a.retransmissions + b.retransmissions,
            retrans_fast: a.retrans_fast + b.retrans_fast,
            retrans_timeout: a.retrans_timeout + b.retrans_timeout,
            retrans_pmtud: a.retrans_pmtud + b.retrans_pmtud,
            retrans_spurious: a.retrans_spurious + b.retrans_spurious,
            late_fills: a.late_fills + b.late_fills,
            dup_acks: a.dup_acks + b.dup_acks,
            out_of_order: a.out_of_order + b.out_of_order,
            reorder_extent_max: a.reorder_extent_max.max(b.reorder_extent_max),
            zero_windows: a.zero_windows + b.zero_windows,
            window_full: a.window_full + b.window_full,
            capture_duplicates: a.capture_duplicates + b.capture_duplicates,
            mss: PerSide {
                src: a.mss,
                dst: b.mss,
            },
            wscale: PerSide {
                src: a.wscale,
                dst: b.wscale,
            },
            jitter_ms,
            srtt_ms,
            ce_packets: a.ce_packets + b.ce_packets,
            handshake: ex.and_then(HandshakeReport::of),
            latency: tcp.then(|| LatencyReport::of(ex, [s, r], &a, &b, f.last_ts)),
            state,
            syn_unanswered: tcp && f.dir[s].flags & F_SYN != 0 && f.dir[r].flags & F_SYNACK == 0,
            rst_from,
            timestamps: both(F_TS),
            sack_permitted: both(F_SACK_PERM),
            icmp_errors: ex.map_or(0, |x| x.icmp_count),
            icmp,
            src_to_dst: a,
            dst_to_src: b,
        }
    }
}
