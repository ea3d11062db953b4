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
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::ops::Range;

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

/// One endpoint: address, port, initial sequence number, next TSval.
struct TcpEnd {
    addr: [u8; 16],
    port: u16,
    isn: u32,
    tsval: u32,
}

/// Builds records and keeps the truth's packet and byte counts.
struct Builder<'a> {
    sc: &'a TcpScenario,
    v6: bool,
    out: Vec<PacketMeta>,
    truth: FlowTruth,
}

const WSCALE: u8 = 7;
const RWND: u16 = 1024;

impl<'a> Builder<'a> {
    /// An empty builder for `sc`.
    fn new(sc: &'a TcpScenario) -> Self {
        Self {
            sc,
            v6: sc.client.0.is_ipv6(),
            out: Vec::with_capacity(sc.segments as usize * 2 + 8),
            truth: FlowTruth::default(),
        }
    }

    /// A bare TCP record from `s` to `r` at `t`.
    fn packet(&self, t: u64, s: &TcpEnd, r: &TcpEnd) -> PacketMeta {
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

    /// Fills in the lengths and IP id of `m`, counts it and appends it.
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
        // The sender's data segments carry its own counter's IDs.
        if !(from_sender && m.ip_id != 0) {
            m.ip_id = self.out.len() as u32 & 0xffff;
        }
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
    let mut b = Builder::new(sc);
    let (mut cli, mut srv) = endpoints(sc);
    let hs = handshake(&mut b, &mut cli, &mut srv);
    // `a` is the round trip V <-> receiver, `bb` V <-> sender.
    let (sender, receiver, a, bb) = match sc.data {
        DataDir::Upload => (cli, srv, sc.server_rtt_ns, sc.client_rtt_ns),
        DataDir::Download => (srv, cli, sc.client_rtt_ns, sc.server_rtt_ns),
    };
    b.truth.receiver_rtt_ns = a;
    b.truth.sender_rtt_ns = bb;
    let lay = Layout::new(sc, hs.t_ack, a, bb, sender.isn);
    let slot_t = slot_times(&lay, sc.zero_window);
    let seg_t = apply_reordering(&sc.reorder, &lay, &slot_t, &mut b.truth);
    let mut sim = Simulation::new(b, lay, seg_t, sender, receiver, hs.sender_tsecr);
    sim.overtaken = (0..lay.n)
        .filter(|&i| sim.seg_t[i as usize] != slot_t[i as usize])
        .map(|i| (slot_t[i as usize], i))
        .collect();
    sim.run();
    let fin = sim.fin_exchange();
    sim.merge(fin)
}

/// The client and the server before the handshake.
fn endpoints(sc: &TcpScenario) -> (TcpEnd, TcpEnd) {
    let cli = TcpEnd {
        addr: ip_to_bytes(sc.client.0),
        port: sc.client.1,
        isn: 0x1000_0000u32.wrapping_add(u32::from(sc.client.1).wrapping_mul(7919)),
        tsval: 100,
    };
    let srv = TcpEnd {
        addr: ip_to_bytes(sc.server.0),
        port: sc.server.1,
        isn: 0xfff0_0000,
        tsval: 5_000,
    };
    (cli, srv)
}

/// What the data phase needs from the handshake.
struct Handshake {
    /// Time of the client's ACK at the vantage point.
    t_ack: u64,
    /// The data sender's TSecr until a receiver packet reaches it: the
    /// TSval of the last handshake packet it got.
    sender_tsecr: u32,
}

/// The three-way handshake, pushed into `b`, with its truth.
fn handshake(b: &mut Builder<'_>, cli: &mut TcpEnd, srv: &mut TcpEnd) -> Handshake {
    let sc = b.sc;
    let upload = sc.data == DataDir::Upload;
    let t0 = sc.start_ns;
    let t_synack = t0 + sc.server_rtt_ns;
    let t_ack = t_synack + sc.client_rtt_ns;
    let mut m = syn_packet(b, t0, cli, srv);
    m.tcp_flags = tf::SYN;
    let syn_tsval = cli.tsval;
    cli.tsval += 1;
    b.push(m, upload);
    let mut m = syn_packet(b, t_synack, srv, cli);
    m.tcp_flags = tf::SYN | tf::ACK;
    m.ack = cli.isn.wrapping_add(1);
    m.tsecr = syn_tsval;
    let synack_tsval = srv.tsval;
    srv.tsval += 1;
    b.push(m, !upload);
    let mut m = b.packet(t_ack, cli, srv);
    m.tcp_flags = tf::ACK;
    m.seq = cli.isn.wrapping_add(1);
    m.ack = srv.isn.wrapping_add(1);
    m.tsval = cli.tsval;
    m.tsecr = synack_tsval;
    cli.tsval += 1;
    b.push(m, upload);
    if !sc.timestamps {
        for r in &mut b.out {
            r.tsval = 0;
            r.tsecr = 0;
        }
    }
    b.truth.client = Some(sc.client);
    b.truth.server = Some(sc.server);
    b.truth.handshake_down_ns = sc.server_rtt_ns;
    b.truth.handshake_up_ns = sc.client_rtt_ns;
    Handshake {
        t_ack,
        sender_tsecr: if upload { synack_tsval } else { syn_tsval + 1 },
    }
}

/// A SYN or SYN/ACK from `s` to `r` at `t` with its options; the caller
/// sets the flags and the ACK fields.
fn syn_packet(b: &Builder<'_>, t: u64, s: &TcpEnd, r: &TcpEnd) -> PacketMeta {
    let sc = b.sc;
    let mut m = b.packet(t, s, r);
    m.seq = s.isn;
    m.tcp_opts |= tcp_opts::MSS | tcp_opts::WSCALE | if sc.sack { tcp_opts::SACK_PERM } else { 0 };
    // The option announces what fits with the options every segment
    // carries: data segments of `mss` bytes plus the timestamps.
    m.mss = sc.mss + if sc.timestamps { 12 } else { 0 };
    m.wscale = WSCALE;
    m.window = u16::MAX;
    m.tsval = s.tsval;
    m
}

/// Timing and sequence numbering of the data phase.
#[derive(Clone, Copy)]
struct Layout {
    /// Data segments.
    n: u32,
    /// Window in segments (at least 1).
    w: u32,
    /// Spacing of the segments within a window (ns).
    gap: u64,
    /// Round trip V <-> receiver.
    a: u64,
    /// Round trip V <-> sender.
    b: u64,
    /// Time of the first data segment's slot at V.
    first_data: u64,
    /// Payload of every data segment.
    mss: u32,
    /// Sequence number of segment 0.
    s_base: u32,
}

impl Layout {
    /// The layout of `sc`'s data phase after a handshake ending at `t_ack`.
    fn new(sc: &TcpScenario, t_ack: u64, a: u64, b: u64, sender_isn: u32) -> Self {
        let w = sc.window.max(1);
        // Pace the window so that it fits in one round trip.
        let gap = sc.gap_ns.min((a + b) / u64::from(w + 1)).max(1);
        let first_data = match sc.data {
            DataDir::Upload => t_ack + gap,
            DataDir::Download => t_ack + b,
        };
        Self {
            n: sc.segments,
            w,
            gap,
            a,
            b,
            first_data,
            mss: u32::from(sc.mss.max(1)),
            s_base: sender_isn.wrapping_add(1),
        }
    }

    /// Sequence number of segment `i` (`n` for the FIN).
    fn seq(&self, i: u32) -> u32 {
        self.s_base.wrapping_add(i.wrapping_mul(self.mss))
    }
}

/// Slot times (ACK-clocked rounds), with an optional zero-window pause.
fn slot_times(lay: &Layout, zero_window: Option<(u32, u64)>) -> Vec<u64> {
    let (n, w, gap) = (lay.n, lay.w, lay.gap);
    let mut slot_t = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = if i < w {
            lay.first_data + u64::from(i) * gap
        } else {
            slot_t[(i - w) as usize] + lay.a + lay.b
        };
        slot_t.push(t);
    }
    if let Some((zr, p)) = zero_window.map(|(i, p)| (i / w, p)) {
        // Re-base the round after the pause: the update releases it at once,
        // paced like the first window.
        let start = zr.saturating_add(1).saturating_mul(w);
        if start < n {
            let last_of_zr = slot_t[(start - 1) as usize];
            let base = last_of_zr + lay.a + p + lay.b;
            for i in start..n {
                let k = i - start;
                slot_t[i as usize] = if k < w {
                    base + u64::from(k) * gap
                } else {
                    slot_t[(i - w) as usize] + lay.a + lay.b
                };
            }
        }
    }
    slot_t
}

/// Reordering: segment i passes V just after segment i + k. Returns the
/// time each segment's first transmission passes V, and counts the
/// reordering in `truth`.
fn apply_reordering(
    reorder: &[(u32, u32)],
    lay: &Layout,
    slot_t: &[u64],
    truth: &mut FlowTruth,
) -> Vec<u64> {
    let (n, w) = (lay.n, lay.w);
    let mut seg_t = slot_t.to_vec();
    for &(i, k) in reorder {
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
        seg_t[i as usize] = slot_t[(i + k) as usize] + lay.gap / 2;
        truth.out_of_order += 1;
        truth.reorder_extent_max = truth.reorder_extent_max.max(k);
    }
    seg_t
}

/// The sender's loss recovery.
#[derive(Clone, Copy)]
struct Recovery {
    /// One past the highest segment sent when it began.
    point: u32,
    /// Whether a timeout began it.
    timeout: bool,
}

/// A receiver packet as the vantage point saw it, for the sender's TSecr.
struct Stamp {
    t: u64,
    tsval: u32,
}

/// What the sender learns from one ACK.
struct Ack {
    /// Time of the ACK at V.
    t: u64,
    /// The cumulative ACK moved.
    advanced: bool,
    /// The ACK carries SACK blocks.
    sacked: bool,
}

/// The data sender's state (segment indices throughout).
struct Sender {
    side: TcpEnd,
    /// Segments with a retransmission already queued.
    scheduled: Vec<bool>,
    /// Loss recovery in progress, if any.
    recovery: Option<Recovery>,
    /// Latest transmission time so far.
    last_t: u64,
    /// Segments the vantage point saw.
    out: Vec<PacketMeta>,
    /// IP ID of the next packet it sends (its own counter, like Linux's
    /// per-connection one).
    ip_id: u32,
}

/// What the sender stamped on one transmission: TSval and IP ID.
#[derive(Clone, Copy)]
struct SentStamp {
    tsval: u32,
    ip_id: u32,
}

/// The receiver's state (segment indices throughout).
struct Receiver {
    side: TcpEnd,
    /// Segments received.
    got: Vec<bool>,
    /// Next expected segment.
    rcv_nxt: u32,
    /// TS.Recent (RFC 7323).
    ts_recent: u32,
    /// Cumulative ACK point of the last ACK sent.
    last_ack_sent: u32,
    /// Duplicate ACKs since the cumulative ACK last moved.
    dup_run: u32,
    /// Ranges of received segments above `rcv_nxt`, most recent first.
    sack_blocks: Vec<Range<u32>>,
    /// Every packet it sent, for the sender's TSecr.
    stamps: Vec<Stamp>,
    /// ACKs and window updates.
    out: Vec<PacketMeta>,
}

impl Sender {
    /// The sender of `n` segments, nothing sent before `t`.
    fn new(side: TcpEnd, n: u32, t: u64) -> Self {
        Self {
            side,
            scheduled: vec![false; n as usize],
            recovery: None,
            last_t: t,
            out: Vec::new(),
            ip_id: 1000,
        }
    }

    /// The stamps of its next transmission.
    fn next_stamp(&mut self) -> SentStamp {
        let s = SentStamp {
            tsval: self.side.tsval,
            ip_id: self.ip_id,
        };
        self.side.tsval += 1;
        self.ip_id += 1;
        s
    }
}

impl Receiver {
    /// The receiver of `n` segments, nothing received yet.
    fn new(side: TcpEnd, n: u32, ts_recent: u32) -> Self {
        Self {
            side,
            got: vec![false; n as usize],
            rcv_nxt: 0,
            ts_recent,
            last_ack_sent: 0,
            dup_run: 0,
            sack_blocks: Vec::new(),
            stamps: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Takes segment `i` of `n`: TS.Recent, the cumulative ACK point and
    /// the SACK blocks. Returns the cumulative ACK point before it.
    fn take(&mut self, i: u32, tsval: u32, n: u32) -> u32 {
        self.got[i as usize] = true;
        if i <= self.last_ack_sent {
            self.ts_recent = tsval;
        }
        let before = self.rcv_nxt;
        while self.rcv_nxt < n && self.got[self.rcv_nxt as usize] {
            self.rcv_nxt += 1;
        }
        self.update_sack(i, n);
        before
    }

    /// SACK blocks: ranges of received segments above rcv_nxt.
    fn update_sack(&mut self, i: u32, n: u32) {
        let nxt = self.rcv_nxt;
        self.sack_blocks.retain(|b| b.end > nxt && b.start >= nxt);
        if nxt < n && i > nxt {
            let (mut l, mut r) = (i, i + 1);
            while l > nxt && self.got[(l - 1) as usize] {
                l -= 1;
            }
            while r < n && self.got[r as usize] {
                r += 1;
            }
            self.sack_blocks.retain(|b| b.end < l || b.start > r);
            self.sack_blocks.insert(0, l..r);
            self.sack_blocks.truncate(3);
        }
    }

    /// TSval of the newest receiver packet that reached the sender by `t`,
    /// `b` being the round trip V <-> sender.
    fn tsval_reaching(&self, t: u64, b: u64) -> Option<u32> {
        self.stamps
            .iter()
            .rev()
            .find(|p| p.t + b <= t)
            .map(|p| p.tsval)
    }
}

/// Event simulation of sender, vantage point and receiver in
/// vantage-point time.
struct Simulation<'a> {
    builder: Builder<'a>,
    lay: Layout,
    /// When each segment's first transmission passes V.
    seg_t: Vec<u64>,
    drop_before: HashSet<u32>,
    drop_after: HashSet<u32>,
    /// The segment whose ACK advertises the zero window: the last of the
    /// window holding the scenario's segment.
    zw_ack_seg: Option<u32>,
    /// The sender's TSecr until a receiver packet reaches it.
    first_tsecr: u32,
    /// Pending transmissions, earliest first.
    queue: BinaryHeap<Reverse<Tx>>,
    /// Queueing counter: equal times keep queueing order.
    order: u64,
    /// Highest segment the vantage point has seen.
    max_seen: Option<u32>,
    /// Reordered segments not yet stamped, by the time they were sent
    /// (before the segments that overtake them on the way to V).
    overtaken: BTreeSet<(u64, u32)>,
    /// Stamps of reordered segments sent but not yet past V.
    stamped: HashMap<u32, SentStamp>,
    snd: Sender,
    rcv: Receiver,
}

impl<'a> Simulation<'a> {
    /// Sender and receiver after the handshake, every first transmission
    /// queued.
    fn new(
        builder: Builder<'a>,
        lay: Layout,
        seg_t: Vec<u64>,
        sender: TcpEnd,
        receiver: TcpEnd,
        first_tsecr: u32,
    ) -> Self {
        let sc = builder.sc;
        let n = lay.n;
        let in_range =
            |v: &[u32]| -> HashSet<u32> { v.iter().copied().filter(|&i| i < n).collect() };
        // The receiver's TS.Recent starts at the sender's next TSval.
        let ts_recent = sender.tsval;
        let mut sim = Self {
            drop_before: in_range(&sc.drop_before),
            drop_after: in_range(&sc.drop_after),
            zw_ack_seg: sc
                .zero_window
                .map(|(i, _)| ((i / lay.w + 1) * lay.w).min(n) - 1),
            first_tsecr,
            queue: BinaryHeap::new(),
            order: 0,
            max_seen: None,
            overtaken: BTreeSet::new(),
            stamped: HashMap::new(),
            rcv: Receiver::new(receiver, n, ts_recent),
            snd: Sender::new(sender, n, lay.first_data),
            builder,
            lay,
            seg_t,
        };
        for i in 0..n {
            sim.enqueue(sim.seg_t[i as usize], i, false, false);
        }
        sim
    }

    /// Queues a transmission of segment `seg` at `t`.
    fn enqueue(&mut self, t: u64, seg: u32, retrans: bool, fast: bool) {
        let order = self.order;
        self.order += 1;
        self.queue.push(Reverse(Tx {
            t,
            order,
            seg,
            retrans,
            fast,
        }));
    }

    /// Runs the events until nothing is left to send.
    fn run(&mut self) {
        loop {
            let Some(Reverse(tx)) = self.queue.pop() else {
                if self.tail_loss() {
                    continue;
                }
                break;
            };
            if let Some(tsval) = self.transmit(tx) {
                let ack = self.receive(tx, tsval);
                self.react(ack);
            }
        }
    }

    /// Tail loss: nothing left to trigger a fast retransmit, so the sender
    /// re-sends the first missing segment after an RTO. False when nothing
    /// is missing or its re-send is already queued.
    fn tail_loss(&mut self) -> bool {
        let next = self.rcv.rcv_nxt;
        if next >= self.lay.n || self.snd.scheduled[next as usize] {
            return false;
        }
        self.snd.scheduled[next as usize] = true;
        let t = self.snd.last_t + self.builder.sc.rto_ns;
        self.snd.recovery = Some(Recovery {
            point: self.sent_by(t),
            timeout: true,
        });
        self.enqueue(t, next, true, false);
        true
    }

    /// One past the highest segment the sender has sent by `t`.
    fn sent_by(&self, t: u64) -> u32 {
        self.seg_t
            .iter()
            .enumerate()
            .filter(|(_, &st)| st <= t)
            .map(|(i, _)| i as u32 + 1)
            .max()
            .unwrap_or(0)
    }

    /// The stamps of `tx`: the sender's counters at the time it sent it. A
    /// reordered segment was sent before the segments that overtook it, so
    /// it was stamped then.
    fn stamp(&mut self, tx: Tx) -> SentStamp {
        while let Some(&(slot, i)) = self.overtaken.first() {
            if slot > tx.t {
                break;
            }
            self.overtaken.pop_first();
            let s = self.snd.next_stamp();
            self.stamped.insert(i, s);
        }
        match self.stamped.remove(&tx.seg).filter(|_| !tx.retrans) {
            Some(s) => s,
            None => self.snd.next_stamp(),
        }
    }

    /// The sender sends `tx`; records what V sees of it and counts a
    /// visible retransmission. Returns the segment's TSval if it reaches
    /// the receiver.
    fn transmit(&mut self, tx: Tx) -> Option<u32> {
        let i = tx.seg;
        self.snd.last_t = self.snd.last_t.max(tx.t);
        let lost_before = self.drop_before.contains(&i);
        let seen = tx.retrans || !lost_before;
        // A re-send of a segment V never saw, with nothing after it seen
        // either, is indistinguishable from a first transmission at V.
        let visible_retrans = tx.retrans && self.max_seen.is_some_and(|m| m > i || !lost_before);
        let arrives = tx.retrans || !(lost_before || self.drop_after.contains(&i));
        // Sender's TSecr: the newest receiver packet that reached it.
        let tsecr = self
            .rcv
            .tsval_reaching(tx.t, self.lay.b)
            .unwrap_or(self.first_tsecr);
        let stamp = self.stamp(tx);
        let tsval = stamp.tsval;
        if seen {
            let mut m = self.builder.packet(tx.t, &self.snd.side, &self.rcv.side);
            m.tcp_flags = tf::ACK;
            m.seq = self.lay.seq(i);
            m.ack = self.rcv.side.isn.wrapping_add(1);
            m.payload_len = self.lay.mss;
            if self.builder.sc.timestamps {
                m.tsval = tsval;
                m.tsecr = tsecr;
            }
            m.ip_id = stamp.ip_id;
            self.snd.out.push(m);
            self.max_seen = Some(self.max_seen.map_or(i, |m| m.max(i)));
            if visible_retrans {
                let truth = &mut self.builder.truth;
                truth.retransmissions += 1;
                if tx.fast {
                    truth.retrans_fast += 1;
                } else {
                    truth.retrans_timeout += 1;
                }
                if lost_before {
                    truth.late_fills += 1;
                }
            }
        }
        arrives.then_some(tsval)
    }

    /// The receiver takes `tx` (sent with `tsval`) and acknowledges it; V
    /// sees the ACK `a` later. Counts duplicate ACKs.
    fn receive(&mut self, tx: Tx, tsval: u32) -> Ack {
        let (i, n) = (tx.seg, self.lay.n);
        let before = self.rcv.take(i, tsval, n);
        let t_ack = tx.t + self.lay.a;
        let mut m = self.ack_packet(t_ack);
        let zero_now = self.zw_ack_seg == Some(i) && self.rcv.rcv_nxt == i + 1;
        if zero_now {
            m.window = 0;
        }
        self.rcv.last_ack_sent = self.rcv.rcv_nxt;
        self.rcv.out.push(m);
        if zero_now {
            self.reopen_window(m);
        }
        let advanced = self.rcv.rcv_nxt != before;
        let dup = !advanced && i != before && self.rcv.rcv_nxt < n;
        if dup {
            self.builder.truth.dup_acks += 1;
            self.rcv.dup_run += 1;
        } else if advanced {
            self.rcv.dup_run = 0;
        }
        Ack {
            t: t_ack,
            advanced,
            sacked: m.sack_count > 0,
        }
    }

    /// The receiver's ACK at `t`: cumulative ACK, TS echo and SACK blocks.
    fn ack_packet(&mut self, t: u64) -> PacketMeta {
        let sc = self.builder.sc;
        let rcv = &mut self.rcv;
        let mut m = self.builder.packet(t, &rcv.side, &self.snd.side);
        m.tcp_flags = tf::ACK;
        m.seq = rcv.side.isn.wrapping_add(1);
        m.ack = self.lay.seq(rcv.rcv_nxt);
        if sc.timestamps {
            m.tsval = rcv.side.tsval;
            m.tsecr = rcv.ts_recent;
        }
        rcv.stamps.push(Stamp {
            t,
            tsval: rcv.side.tsval,
        });
        rcv.side.tsval += 1;
        if sc.sack && !rcv.sack_blocks.is_empty() {
            m.tcp_opts |= tcp_opts::SACK;
            for (k, block) in rcv.sack_blocks.iter().take(3).enumerate() {
                m.sack[2 * k] = self.lay.seq(block.start);
                m.sack[2 * k + 1] = self.lay.seq(block.end);
                m.sack_count = k as u8 + 1;
            }
        }
        m
    }

    /// The window update that ends the zero-window pause begun by `zero`.
    fn reopen_window(&mut self, zero: PacketMeta) {
        let Some((_, p)) = self.builder.sc.zero_window else {
            return;
        };
        let rcv = &mut self.rcv;
        let mut u = zero;
        u.ts_ns = zero.ts_ns + p;
        u.window = RWND;
        if self.builder.sc.timestamps {
            u.tsval = rcv.side.tsval;
            rcv.stamps.push(Stamp {
                t: u.ts_ns,
                tsval: rcv.side.tsval,
            });
            rcv.side.tsval += 1;
        }
        rcv.out.push(u);
        self.builder.truth.zero_windows += 1;
    }

    /// Sender reaction (one sender round trip later at V), RFC 6582 /
    /// RFC 6675 style: an ACK reaching the recovery point ends recovery;
    /// within it every partial ACK re-sends the next missing segment;
    /// outside it the loss must be evident (three duplicate ACKs, or
    /// more than 2 * SMSS SACKed above the cumulative ACK) to start one.
    fn react(&mut self, ack: Ack) {
        let t_react = ack.t + self.lay.b;
        let next = self.rcv.rcv_nxt;
        if self.snd.recovery.is_some_and(|r| next >= r.point) {
            self.snd.recovery = None;
        }
        if next >= self.lay.n || self.snd.scheduled[next as usize] {
            return;
        }
        let sacked: u32 = if ack.sacked {
            let blocks = self.rcv.sack_blocks.iter().take(3);
            blocks.map(|b| b.end - b.start).sum()
        } else {
            0
        };
        let evident = self.rcv.dup_run >= 3 || sacked > 2;
        let fast = match self.snd.recovery {
            Some(r) if ack.advanced => Some(!r.timeout),
            Some(_) => None,
            None if evident => {
                self.snd.recovery = Some(Recovery {
                    point: self.sent_by(t_react),
                    timeout: false,
                });
                Some(true)
            }
            None => None,
        };
        if let Some(fast) = fast {
            self.snd.scheduled[next as usize] = true;
            self.enqueue(t_react, next, true, fast);
        }
    }

    /// FIN exchange after everything: the sender's FIN, the receiver's
    /// FIN/ACK `a` later, the sender's ACK `b` after that.
    fn fin_exchange(&self) -> [PacketMeta; 3] {
        let (lay, s, r) = (&self.lay, &self.snd.side, &self.rcv.side);
        let t_fin = self
            .snd
            .out
            .iter()
            .chain(&self.rcv.out)
            .map(|m| m.ts_ns)
            .max()
            .unwrap_or(lay.first_data)
            + lay.gap;
        let fin_seq = lay.seq(lay.n);
        let tsecr_fin = self.rcv.tsval_reaching(t_fin, lay.b).unwrap_or(0);
        let mut f1 = self.builder.packet(t_fin, s, r);
        f1.tcp_flags = tf::FIN | tf::ACK;
        f1.seq = fin_seq;
        f1.ack = r.isn.wrapping_add(1);
        let mut f2 = self.builder.packet(t_fin + lay.a, r, s);
        f2.tcp_flags = tf::FIN | tf::ACK;
        f2.seq = r.isn.wrapping_add(1);
        f2.ack = fin_seq.wrapping_add(1);
        let mut f3 = self.builder.packet(t_fin + lay.a + lay.b, s, r);
        f3.tcp_flags = tf::ACK;
        f3.seq = fin_seq.wrapping_add(1);
        f3.ack = r.isn.wrapping_add(2);
        if self.builder.sc.timestamps {
            f1.tsval = s.tsval;
            f1.tsecr = tsecr_fin;
            f2.tsval = r.tsval;
            f2.tsecr = s.tsval;
            f3.tsval = s.tsval + 1;
            f3.tsecr = r.tsval;
        }
        [f1, f2, f3]
    }

    /// Handshake, data and `fin` in time order, with the lengths, IP ids
    /// and packet/byte truth recomputed over the merged sequence.
    fn merge(self, fin: [PacketMeta; 3]) -> Generated {
        let Self {
            mut builder,
            lay,
            snd,
            rcv,
            ..
        } = self;
        builder.truth.goodput_bytes = u64::from(lay.n) * u64::from(lay.mss);
        let hs: Vec<PacketMeta> = std::mem::take(&mut builder.out);
        let mut all: Vec<(PacketMeta, bool)> =
            Vec::with_capacity(hs.len() + snd.out.len() + rcv.out.len() + 3);
        for m in hs {
            let from_s = m.src_addr == snd.side.addr && m.sport == snd.side.port;
            all.push((m, from_s));
        }
        all.extend(snd.out.into_iter().map(|m| (m, true)));
        all.extend(rcv.out.into_iter().map(|m| (m, false)));
        let [f1, f2, f3] = fin;
        all.extend([(f1, true), (f2, false), (f3, true)]);
        // Stable: equal times keep generation order.
        all.sort_by_key(|p| p.0.ts_ns);
        builder.truth.packets = 0;
        builder.truth.bytes = 0;
        builder.truth.sender_packets = 0;
        for (m, from_s) in all {
            builder.push(m, from_s);
        }
        Generated {
            records: builder.out,
            truth: vec![builder.truth],
        }
    }
}

/// A bare TCP segment `10.0.0.1:40000 -> 10.0.0.2:80` (IPv4, TTL 64) with
/// this sequence number and time, for unit tests to dress up.
pub fn tcp_segment(seq: u32, ts_ns: u64) -> PacketMeta {
    let mut m = PacketMeta::zeroed();
    m.kind = RecordKind::Tcp as u8;
    m.ip_version = 4;
    m.l4_proto = ipproto::TCP;
    m.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
    m.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
    m.sport = 40000;
    m.dport = 80;
    m.seq = seq;
    m.ts_ns = ts_ns;
    m.ttl = 64;
    m
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
