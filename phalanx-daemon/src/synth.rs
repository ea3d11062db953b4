//! Synthetic TCP conversations with exactly known truth.
//!
//! A conversation is generated as the vantage point sees it: one data
//! sender S, one receiver R, the vantage point V in between, with a round
//! trip `a` between V and R and `b` between V and S. S is ACK-clocked: a
//! window of `window` segments is paced `gap` apart, and the ACK of each
//! segment releases the segment `window` places later, so it passes V
//! exactly `a + b` after the one that released it. R acknowledges every
//! segment (no delayed ACK), keeps TS.Recent per RFC 7323, SACKs
//! out-of-order data. S starts fast recovery when the loss is evident
//! (third duplicate ACK, or more than 2 * SMSS SACKed above the cumulative
//! ACK), re-sends on every partial ACK until the ACK reaches the highest
//! segment sent when recovery began (RFC 6582), and re-sends after an RTO
//! when nothing else would; the re-sends of an RTO's recovery are timeout
//! retransmissions.
//!
//! Faults: drops before V (V never sees the original; a late hole fill),
//! drops after V (V sees the original and the retransmission), reordering
//! of a segment by `k` positions upstream of V, a zero-window pause. The
//! [`FlowTruth`] returned with the records is computed by the generator's
//! own sender/receiver model, independently of the flow engine.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::net::IpAddr;

use phalanx_common::{
    ipproto, tcp_flags as tf, tcp_opts, user::ip_to_bytes, PacketMeta, RecordKind,
};

use crate::capture::frame::{full_frame_len, PayloadMode, PcapngWriter, WriteError};

/// Which side sends the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// Client to server.
    Upload,
    /// Server to client.
    Download,
}

/// One TCP conversation to generate.
#[derive(Clone, Debug)]
pub struct TcpScenario {
    /// Client address and port.
    pub client: (IpAddr, u16),
    /// Server address and port (same IP version as the client).
    pub server: (IpAddr, u16),
    /// Outer and inner VLAN ids (0 = none).
    pub vlan: (u16, u16),
    /// Time of the SYN at the vantage point (ns).
    pub start_ns: u64,
    /// Round trip vantage point <-> client (the upstream handshake part).
    pub client_rtt_ns: u64,
    /// Round trip vantage point <-> server (the downstream handshake part).
    pub server_rtt_ns: u64,
    /// Which way the data goes.
    pub data: DataDir,
    /// Data segments (all of `mss` bytes).
    pub segments: u32,
    /// Segment size.
    pub mss: u16,
    /// Segments in flight per round trip.
    pub window: u32,
    /// Spacing of the segments within a window (ns).
    pub gap_ns: u64,
    /// TCP timestamps on both sides.
    pub timestamps: bool,
    /// SACK on both sides.
    pub sack: bool,
    /// Segment indices lost between the sender and the vantage point.
    pub drop_before: Vec<u32>,
    /// Segment indices lost between the vantage point and the receiver.
    pub drop_after: Vec<u32>,
    /// `(i, k)`: segment `i` arrives (at V and R) after the `k` segments
    /// following it; the generator keeps the reordered run within one window.
    pub reorder: Vec<(u32, u32)>,
    /// `(i, pause_ns)`: the receiver's ACK of the last segment of the window
    /// holding `i` advertises a zero window, re-opened `pause_ns` later.
    pub zero_window: Option<(u32, u64)>,
    /// Retransmission timeout used when too few duplicate ACKs arrive.
    pub rto_ns: u64,
}

impl Default for TcpScenario {
    fn default() -> Self {
        Self {
            client: (IpAddr::from([10, 0, 0, 1]), 40000),
            server: (IpAddr::from([10, 0, 0, 2]), 80),
            vlan: (0, 0),
            start_ns: 1_700_000_000_000_000_000,
            client_rtt_ns: 2_000_000,
            server_rtt_ns: 8_000_000,
            data: DataDir::Upload,
            segments: 100,
            mss: 1448,
            window: 10,
            gap_ns: 10_000,
            timestamps: true,
            sack: true,
            drop_before: Vec::new(),
            drop_after: Vec::new(),
            reorder: Vec::new(),
            zero_window: None,
            rto_ns: 200_000_000,
        }
    }
}

/// What the flow engine must find for one generated conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowTruth {
    /// Client endpoint.
    pub client: Option<(IpAddr, u16)>,
    /// Server endpoint.
    pub server: Option<(IpAddr, u16)>,
    /// Packets seen at the vantage point, both directions.
    pub packets: u64,
    /// Packets of the data sender seen at the vantage point.
    pub sender_packets: u64,
    /// Frame bytes seen, both directions.
    pub bytes: u64,
    /// Unique payload bytes.
    pub goodput_bytes: u64,
    /// Retransmitted segments seen at the vantage point.
    pub retransmissions: u32,
    /// ... after duplicate ACKs / partial ACKs.
    pub retrans_fast: u32,
    /// ... after an RTO.
    pub retrans_timeout: u32,
    /// ... that filled a hole at the vantage point (drops before it).
    pub late_fills: u32,
    /// Reordered segments.
    pub out_of_order: u32,
    /// Largest reorder extent.
    pub reorder_extent_max: u32,
    /// Duplicate ACKs sent by the receiver.
    pub dup_acks: u32,
    /// Zero-window episodes.
    pub zero_windows: u32,
    /// Vantage point <-> receiver round trip (the data direction's RTT).
    pub receiver_rtt_ns: u64,
    /// Vantage point <-> sender round trip.
    pub sender_rtt_ns: u64,
    /// SYN -> SYN/ACK.
    pub handshake_down_ns: u64,
    /// SYN/ACK -> ACK.
    pub handshake_up_ns: u64,
}

/// Records (in time order) and the truth of every conversation.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// Records as a capture at the vantage point would yield them.
    pub records: Vec<PacketMeta>,
    /// One entry per conversation, in input order.
    pub truth: Vec<FlowTruth>,
}

/// Small deterministic PRNG (xorshift64*), so scenarios are reproducible
/// from a seed without extra dependencies.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// One transmission by the data sender, in vantage-point time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tx {
    t: u64,
    order: u64,
    seg: u32,
    retrans: bool,
    fast: bool,
}

struct Side {
    addr: [u8; 16],
    port: u16,
    isn: u32,
    tsval: u32,
}

struct Builder<'a> {
    sc: &'a TcpScenario,
    v6: bool,
    out: Vec<PacketMeta>,
    truth: FlowTruth,
}

const WSCALE: u8 = 7;
const RWND: u16 = 1024;

impl Builder<'_> {
    fn packet(&self, t: u64, s: &Side, r: &Side) -> PacketMeta {
        let mut m = PacketMeta::zeroed();
        m.ts_ns = t;
        m.kind = RecordKind::Tcp as u8;
        m.direction = phalanx_common::Direction::Unknown as u8;
        m.ip_version = if self.v6 { 6 } else { 4 };
        m.l4_proto = ipproto::TCP;
        m.src_addr = s.addr;
        m.dst_addr = r.addr;
        m.sport = s.port;
        m.dport = r.port;
        m.ttl = 64;
        m.outer_vlan = self.sc.vlan.0;
        m.inner_vlan = self.sc.vlan.1;
        m.vlan_count = u8::from(self.sc.vlan.0 != 0) + u8::from(self.sc.vlan.1 != 0);
        m.window = RWND;
        m.segs = 1;
        if self.sc.timestamps {
            m.tcp_opts |= tcp_opts::TIMESTAMPS;
        }
        m
    }

    fn push(&mut self, mut m: PacketMeta, from_sender: bool) {
        let tcp_hdr =
            20 + if m.tcp_opts & tcp_opts::TIMESTAMPS != 0 {
                12
            } else {
                0
            } + if m.tcp_flags & tf::SYN != 0 { 8 } else { 0 }
                + if m.sack_count > 0 {
                    4 + 8 * u32::from(m.sack_count)
                } else {
                    0
                };
        let ip_hdr = if self.v6 { 40 } else { 20 };
        m.ip_len = u16::try_from(ip_hdr + tcp_hdr + m.payload_len).unwrap_or(u16::MAX);
        m.ip_id = self.out.len() as u32 & 0xffff;
        if !self.v6 {
            m.ip_flags = phalanx_common::IP_FLAG_DF;
        }
        m.wire_len = full_frame_len(&m) as u32;
        self.truth.packets += 1;
        self.truth.bytes += u64::from(m.wire_len);
        if from_sender {
            self.truth.sender_packets += 1;
        }
        self.out.push(m);
    }
}

/// Generates one conversation.
pub fn tcp_conversation(sc: &TcpScenario) -> Generated {
    let v6 = sc.client.0.is_ipv6();
    let mut b = Builder {
        sc,
        v6,
        out: Vec::with_capacity(sc.segments as usize * 2 + 8),
        truth: FlowTruth::default(),
    };
    let mut cli = Side {
        addr: ip_to_bytes(sc.client.0),
        port: sc.client.1,
        isn: 0x1000_0000u32.wrapping_add(u32::from(sc.client.1).wrapping_mul(7919)),
        tsval: 100,
    };
    let mut srv = Side {
        addr: ip_to_bytes(sc.server.0),
        port: sc.server.1,
        isn: 0xfff0_0000,
        tsval: 5_000,
    };
    let ts = sc.timestamps;
    let opts_syn = tcp_opts::MSS | tcp_opts::WSCALE | if sc.sack { tcp_opts::SACK_PERM } else { 0 };

    // Handshake.
    let t0 = sc.start_ns;
    let t_synack = t0 + sc.server_rtt_ns;
    let t_ack = t_synack + sc.client_rtt_ns;
    let mut m = b.packet(t0, &cli, &srv);
    m.tcp_flags = tf::SYN;
    m.seq = cli.isn;
    m.tcp_opts |= opts_syn;
    m.mss = sc.mss;
    m.wscale = WSCALE;
    m.window = u16::MAX;
    m.tsval = cli.tsval;
    let syn_tsval = cli.tsval;
    cli.tsval += 1;
    b.push(m, sc.data == DataDir::Upload);
    let mut m = b.packet(t_synack, &srv, &cli);
    m.tcp_flags = tf::SYN | tf::ACK;
    m.seq = srv.isn;
    m.ack = cli.isn.wrapping_add(1);
    m.tcp_opts |= opts_syn;
    m.mss = sc.mss;
    m.wscale = WSCALE;
    m.window = u16::MAX;
    m.tsval = srv.tsval;
    m.tsecr = syn_tsval;
    let synack_tsval = srv.tsval;
    srv.tsval += 1;
    b.push(m, sc.data == DataDir::Download);
    let mut m = b.packet(t_ack, &cli, &srv);
    m.tcp_flags = tf::ACK;
    m.seq = cli.isn.wrapping_add(1);
    m.ack = srv.isn.wrapping_add(1);
    m.tsval = cli.tsval;
    m.tsecr = synack_tsval;
    cli.tsval += 1;
    b.push(m, sc.data == DataDir::Upload);
    if !ts {
        for r in &mut b.out {
            r.tsval = 0;
            r.tsecr = 0;
        }
    }

    let (s_side, r_side, a, bb) = match sc.data {
        DataDir::Upload => (cli, srv, sc.server_rtt_ns, sc.client_rtt_ns),
        DataDir::Download => (srv, cli, sc.client_rtt_ns, sc.server_rtt_ns),
    };
    let (mut s_side, mut r_side) = (s_side, r_side);
    b.truth.client = Some(sc.client);
    b.truth.server = Some(sc.server);
    b.truth.receiver_rtt_ns = a;
    b.truth.sender_rtt_ns = bb;
    b.truth.handshake_down_ns = sc.server_rtt_ns;
    b.truth.handshake_up_ns = sc.client_rtt_ns;

    let n = sc.segments;
    let w = sc.window.max(1);
    let gap = sc.gap_ns.min((a + bb) / u64::from(w + 1)).max(1);
    let first_data = match sc.data {
        DataDir::Upload => t_ack + gap,
        DataDir::Download => t_ack + bb,
    };
    let mss = u32::from(sc.mss.max(1));
    let s_base = s_side.isn.wrapping_add(1);
    let seg_seq = |i: u32| s_base.wrapping_add(i.wrapping_mul(mss));

    // Slot times (ACK-clocked rounds), with an optional zero-window pause.
    let zw_round = sc.zero_window.map(|(i, p)| (i / w, p));
    let mut slot_t = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = if i < w {
            first_data + u64::from(i) * gap
        } else {
            slot_t[(i - w) as usize] + a + bb
        };
        slot_t.push(t);
    }
    if let Some((zr, p)) = zw_round {
        // Re-base the round after the pause: the update releases it at once,
        // paced like the first window.
        let start = zr.saturating_add(1).saturating_mul(w);
        if start < n {
            let last_of_zr = slot_t[(start - 1) as usize];
            let base = last_of_zr + a + p + bb;
            for i in start..n {
                let k = i - start;
                slot_t[i as usize] = if k < w {
                    base + u64::from(k) * gap
                } else {
                    slot_t[(i - w) as usize] + a + bb
                };
            }
        }
    }
    // Reordering: segment i passes V just after segment i + k.
    let mut seg_t: Vec<u64> = slot_t.clone();
    for &(i, k) in &sc.reorder {
        if k == 0 || i >= n {
            continue;
        }
        let k = k.min(w - 1);
        // Keep the run inside one window so it stays shorter than a round trip.
        let i = if i % w + k >= w {
            i - (i % w + k - (w - 1))
        } else {
            i
        };
        if i + k >= n {
            continue;
        }
        seg_t[i as usize] = slot_t[(i + k) as usize] + gap / 2;
        b.truth.out_of_order += 1;
        b.truth.reorder_extent_max = b.truth.reorder_extent_max.max(k);
    }
    let drop_before: std::collections::HashSet<u32> =
        sc.drop_before.iter().copied().filter(|&i| i < n).collect();
    let drop_after: std::collections::HashSet<u32> =
        sc.drop_after.iter().copied().filter(|&i| i < n).collect();

    // Event simulation in vantage-point time.
    let mut heap: BinaryHeap<Reverse<Tx>> = BinaryHeap::new();
    let mut order = 0u64;
    for i in 0..n {
        heap.push(Reverse(Tx {
            t: seg_t[i as usize],
            order,
            seg: i,
            retrans: false,
            fast: false,
        }));
        order += 1;
    }
    // Receiver state.
    let mut got = vec![false; n as usize];
    let mut rcv_nxt: u32 = 0; // next expected segment index
    let mut ts_recent: u32 = s_side.tsval;
    let mut last_ack_sent: u32 = 0;
    let mut dup_run = 0u32;
    let mut scheduled = vec![false; n as usize];
    // Sender's loss recovery: the recovery point (one past the highest
    // segment sent when it began) and whether a timeout began it.
    let mut recovery: Option<(u32, bool)> = None;
    // One past the highest segment the sender has sent by `t`.
    let sent_by = |t: u64| {
        seg_t
            .iter()
            .enumerate()
            .filter(|(_, &st)| st <= t)
            .map(|(i, _)| i as u32 + 1)
            .max()
            .unwrap_or(0)
    };
    let mut max_seen: Option<u32> = None;
    let mut r_pkts: Vec<(u64, u32)> = Vec::new(); // (time, tsval) of receiver packets, for TSecr
    let mut r_out: Vec<PacketMeta> = Vec::new();
    let mut s_out: Vec<(PacketMeta, bool)> = Vec::new();
    let mut last_s_t = first_data;
    let zw_ack_seg = zw_round.map(|(zr, _)| ((zr + 1) * w).min(n) - 1);
    let mut sack_blocks: Vec<(u32, u32)> = Vec::new(); // most recent first, in segment units
    loop {
        let Some(Reverse(tx)) = heap.pop() else {
            // Tail loss: nothing left to trigger a fast retransmit.
            if rcv_nxt < n && !scheduled[rcv_nxt as usize] {
                scheduled[rcv_nxt as usize] = true;
                let t = last_s_t + sc.rto_ns;
                recovery = Some((sent_by(t), true));
                heap.push(Reverse(Tx {
                    t,
                    order,
                    seg: rcv_nxt,
                    retrans: true,
                    fast: false,
                }));
                order += 1;
                continue;
            }
            break;
        };
        let i = tx.seg;
        last_s_t = last_s_t.max(tx.t);
        let seen = tx.retrans || !drop_before.contains(&i);
        // A re-send of a segment V never saw, with nothing after it seen
        // either, is indistinguishable from a first transmission at V.
        let visible_retrans =
            tx.retrans && max_seen.is_some_and(|m| m > i || !drop_before.contains(&i));
        let arrives = tx.retrans || !(drop_before.contains(&i) || drop_after.contains(&i));
        // Sender's TSecr: the newest receiver packet that reached it.
        let tsecr = r_pkts.iter().rev().find(|(t, _)| *t + bb <= tx.t).map_or(
            if sc.data == DataDir::Upload {
                synack_tsval
            } else {
                syn_tsval + 1
            },
            |p| p.1,
        );
        let tsval = s_side.tsval;
        s_side.tsval += 1;
        if seen {
            let mut m = b.packet(tx.t, &s_side, &r_side);
            m.tcp_flags = tf::ACK;
            m.seq = seg_seq(i);
            m.ack = r_side.isn.wrapping_add(1);
            m.payload_len = mss;
            if ts {
                m.tsval = tsval;
                m.tsecr = tsecr;
            }
            s_out.push((m, tx.retrans));
            max_seen = Some(max_seen.map_or(i, |m: u32| m.max(i)));
            if visible_retrans {
                b.truth.retransmissions += 1;
                if tx.fast {
                    b.truth.retrans_fast += 1;
                } else {
                    b.truth.retrans_timeout += 1;
                }
                if drop_before.contains(&i) {
                    b.truth.late_fills += 1;
                }
            }
        }
        if !arrives {
            continue;
        }
        // Receiver.
        let in_order = i == rcv_nxt;
        got[i as usize] = true;
        if i <= last_ack_sent {
            ts_recent = tsval;
        }
        let before = rcv_nxt;
        while rcv_nxt < n && got[rcv_nxt as usize] {
            rcv_nxt += 1;
        }
        // SACK blocks: ranges of received segments above rcv_nxt.
        sack_blocks.retain(|&(l, r)| r > rcv_nxt && l >= rcv_nxt);
        if rcv_nxt < n && i > rcv_nxt {
            let (mut l, mut r) = (i, i + 1);
            while l > rcv_nxt && got[(l - 1) as usize] {
                l -= 1;
            }
            while r < n && got[r as usize] {
                r += 1;
            }
            sack_blocks.retain(|&(bl, br)| br < l || bl > r);
            sack_blocks.insert(0, (l, r));
            sack_blocks.truncate(3);
        }
        let t_ack = tx.t + a;
        let dup = rcv_nxt == before && !in_order && rcv_nxt < n;
        let mut m = b.packet(t_ack, &r_side, &s_side);
        m.tcp_flags = tf::ACK;
        m.seq = r_side.isn.wrapping_add(1);
        m.ack = seg_seq(rcv_nxt);
        if ts {
            m.tsval = r_side.tsval;
            m.tsecr = ts_recent;
        }
        r_pkts.push((t_ack, r_side.tsval));
        r_side.tsval += 1;
        if sc.sack && !sack_blocks.is_empty() {
            m.tcp_opts |= tcp_opts::SACK;
            for (k, &(l, r)) in sack_blocks.iter().take(3).enumerate() {
                m.sack[2 * k] = seg_seq(l);
                m.sack[2 * k + 1] = seg_seq(r);
                m.sack_count = k as u8 + 1;
            }
        }
        let zero_now = zw_ack_seg == Some(i) && rcv_nxt == i + 1;
        if zero_now {
            m.window = 0;
        }
        last_ack_sent = rcv_nxt;
        r_out.push(m);
        if zero_now {
            if let Some((_, p)) = sc.zero_window {
                let mut u = m;
                u.ts_ns = t_ack + p;
                u.window = RWND;
                if ts {
                    u.tsval = r_side.tsval;
                    r_pkts.push((u.ts_ns, r_side.tsval));
                    r_side.tsval += 1;
                }
                r_out.push(u);
                b.truth.zero_windows += 1;
            }
        }
        if dup {
            b.truth.dup_acks += 1;
            dup_run += 1;
        } else if rcv_nxt != before {
            dup_run = 0;
        }
        // Sender reaction (one sender round trip later at V), RFC 6582 /
        // RFC 6675 style: an ACK reaching the recovery point ends recovery;
        // within it every partial ACK re-sends the next missing segment;
        // outside it the loss must be evident (three duplicate ACKs, or
        // more than 2 * SMSS SACKed above the cumulative ACK) to start one.
        let t_react = t_ack + bb;
        if recovery.is_some_and(|(point, _)| rcv_nxt >= point) {
            recovery = None;
        }
        if rcv_nxt < n && !scheduled[rcv_nxt as usize] {
            let partial = rcv_nxt != before;
            let sacked: u32 = if m.sack_count > 0 {
                sack_blocks.iter().take(3).map(|&(l, r)| r - l).sum()
            } else {
                0
            };
            let evident = dup_run >= 3 || sacked > 2;
            let fast = match recovery {
                Some((_, timeout)) if partial => Some(!timeout),
                Some(_) => None,
                None if evident => {
                    recovery = Some((sent_by(t_react), false));
                    Some(true)
                }
                None => None,
            };
            if let Some(fast) = fast {
                scheduled[rcv_nxt as usize] = true;
                heap.push(Reverse(Tx {
                    t: t_react,
                    order,
                    seg: rcv_nxt,
                    retrans: true,
                    fast,
                }));
                order += 1;
            }
        }
    }
    b.truth.goodput_bytes = u64::from(n) * u64::from(mss);

    // FIN exchange after everything.
    let t_fin = s_out
        .iter()
        .map(|p| p.0.ts_ns)
        .chain(r_out.iter().map(|p| p.ts_ns))
        .max()
        .unwrap_or(first_data)
        + gap;
    let fin_seq = seg_seq(n);
    let tsecr_fin = r_pkts
        .iter()
        .rev()
        .find(|(t, _)| *t + bb <= t_fin)
        .map_or(0, |p| p.1);
    let mut f1 = b.packet(t_fin, &s_side, &r_side);
    f1.tcp_flags = tf::FIN | tf::ACK;
    f1.seq = fin_seq;
    f1.ack = r_side.isn.wrapping_add(1);
    let mut f2 = b.packet(t_fin + a, &r_side, &s_side);
    f2.tcp_flags = tf::FIN | tf::ACK;
    f2.seq = r_side.isn.wrapping_add(1);
    f2.ack = fin_seq.wrapping_add(1);
    let mut f3 = b.packet(t_fin + a + bb, &s_side, &r_side);
    f3.tcp_flags = tf::ACK;
    f3.seq = fin_seq.wrapping_add(1);
    f3.ack = r_side.isn.wrapping_add(2);
    if ts {
        f1.tsval = s_side.tsval;
        f1.tsecr = tsecr_fin;
        f2.tsval = r_side.tsval;
        f2.tsecr = s_side.tsval;
        f3.tsval = s_side.tsval + 1;
        f3.tsecr = r_side.tsval;
    }

    let hs: Vec<PacketMeta> = std::mem::take(&mut b.out);
    let mut all: Vec<(PacketMeta, bool)> =
        Vec::with_capacity(hs.len() + s_out.len() + r_out.len() + 3);
    for m in hs {
        let from_s = m.src_addr == s_side.addr && m.sport == s_side.port;
        all.push((m, from_s));
    }
    all.extend(s_out.into_iter().map(|(m, _)| (m, true)));
    all.extend(r_out.into_iter().map(|m| (m, false)));
    all.extend([(f1, true), (f2, false), (f3, true)]);
    // Stable: equal times keep generation order.
    all.sort_by_key(|p| p.0.ts_ns);
    b.truth.packets = 0;
    b.truth.bytes = 0;
    b.truth.sender_packets = 0;
    for (m, from_s) in all {
        b.push(m, from_s);
    }
    Generated {
        records: b.out,
        truth: vec![b.truth],
    }
}

/// Settings of a many-flow capture.
#[derive(Clone, Debug)]
pub struct ManyFlows {
    /// Number of conversations.
    pub flows: u32,
    /// Approximate total packets (both directions).
    pub packets: u64,
    /// Share of data segments lost (half before, half after the vantage point).
    pub loss: f64,
    /// Share of IPv6 conversations.
    pub ipv6_share: f64,
    /// Timestamps on (else off) for every conversation.
    pub timestamps: bool,
    /// PRNG seed.
    pub seed: u64,
    /// Conversations start uniformly within this span (ns).
    pub spread_ns: u64,
}

impl Default for ManyFlows {
    fn default() -> Self {
        Self {
            flows: 10_000,
            packets: 1_000_000,
            loss: 0.01,
            ipv6_share: 0.25,
            timestamps: true,
            seed: 1,
            spread_ns: 10_000_000_000,
        }
    }
}

/// Generates many conversations, merged in time order. Deterministic for a seed.
pub fn many_flows(cfg: &ManyFlows) -> Generated {
    let mut rng = XorShift::new(cfg.seed);
    let flows = cfg.flows.max(1);
    // Each data segment yields about two packets (segment + ACK).
    let segs_per_flow = ((cfg.packets / u64::from(flows)) / 2).max(4) as u32;
    let mut out = Generated::default();
    let mut parts: Vec<Vec<PacketMeta>> = Vec::with_capacity(flows as usize);
    for f in 0..flows {
        let v6 = rng.chance(cfg.ipv6_share);
        let host = f + 1;
        let (c, s): (IpAddr, IpAddr) = if v6 {
            let mut ca = [0u8; 16];
            ca[0] = 0xfd;
            ca[12..].copy_from_slice(&host.to_be_bytes());
            let mut sa = ca;
            sa[1] = 1;
            (IpAddr::from(ca), IpAddr::from(sa))
        } else {
            let h = host.to_be_bytes();
            (
                IpAddr::from([10, h[1], h[2], h[3]]),
                IpAddr::from([172, 16 + (h[1] & 15), h[2], h[3]]),
            )
        };
        let mut sc = TcpScenario {
            client: (c, 1024 + (rng.below(60000) as u16)),
            server: (s, if rng.chance(0.5) { 443 } else { 80 }),
            start_ns: 1_700_000_000_000_000_000 + rng.below(cfg.spread_ns.max(1)),
            client_rtt_ns: 200_000 + rng.below(20_000_000),
            server_rtt_ns: 200_000 + rng.below(50_000_000),
            data: if rng.chance(0.7) {
                DataDir::Download
            } else {
                DataDir::Upload
            },
            segments: segs_per_flow,
            timestamps: cfg.timestamps,
            ..TcpScenario::default()
        };
        for i in 0..sc.segments {
            if rng.chance(cfg.loss) {
                if rng.chance(0.5) {
                    sc.drop_before.push(i);
                } else {
                    sc.drop_after.push(i);
                }
            }
        }
        let g = tcp_conversation(&sc);
        out.truth.extend(g.truth);
        parts.push(g.records);
    }
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut all = Vec::with_capacity(total);
    for p in parts {
        all.extend(p);
    }
    all.sort_by_key(|r| r.ts_ns);
    out.records = all;
    out
}

/// Writes records as a pcapng file (one Ethernet interface). Use
/// [`PayloadMode::HeadersOnly`] for large captures: lengths still claim
/// the full payload, as with a short snap length.
pub fn write_pcapng<W: Write>(
    records: &[PacketMeta],
    out: W,
    payload: PayloadMode,
) -> Result<W, WriteError> {
    let mut w = PcapngWriter::new(out)?;
    let ifc = w.add_interface("synth0")?;
    for r in records {
        w.write_record(ifc, r, payload, None)?;
    }
    Ok(w.into_inner())
}
