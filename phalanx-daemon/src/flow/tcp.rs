//! The per-segment TCP update of a flow's state ([`super::state`]).
//!
//! Direction `d` is the packet's sender side, `r = d ^ 1` the other one.
//! A segment is looked at three times: as the echo of `r`'s RTT probe, as
//! the acknowledgment side of `r`'s data (ACK number, duplicate ACKs,
//! SACK/D-SACK, advertised window), and as data of `d` (new data, hole
//! fill, retransmission, keep-alive).

use phalanx_common::{tcp_flags as tf, tcp_opts, PacketMeta, MAX_SACK_BLOCKS};

use super::loss::Stamp;
use super::rtt::{P_FIN, P_SYN, P_SYNACK, P_WAIT};
use super::state::*;
use super::{seq, window};

/// What the data side made of a segment, for the RTT probe.
enum DataKind {
    New,
    Retrans,
    /// A keep-alive or zero-window probe: sent on a timer, never a probe.
    Probe,
    Other,
}

/// One TCP record as the update's steps read it: decoded once.
struct Segment<'a> {
    rec: &'a PacketMeta,
    /// Sender side.
    d: usize,
    /// The other side.
    r: usize,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    /// The timestamp option is present.
    ts: bool,
    /// Wire segments the record stands for (GSO).
    segs: u32,
    /// Sequence space: payload plus SYN and FIN.
    len: u32,
    /// Record time (ns).
    now: u64,
    /// Record time in us since the flow's first packet (wrapping).
    now_us: u32,
}

impl<'a> Segment<'a> {
    #[inline(always)]
    fn new(rec: &'a PacketMeta, d: usize, now: u64, now_us: u32) -> Self {
        let fl = rec.tcp_flags;
        let (syn, fin) = (fl & tf::SYN != 0, fl & tf::FIN != 0);
        Self {
            rec,
            d,
            r: d ^ 1,
            syn,
            ack: fl & tf::ACK != 0,
            fin,
            rst: fl & tf::RST != 0,
            ts: rec.tcp_opts & tcp_opts::TIMESTAMPS != 0,
            segs: u32::from(rec.segs.max(1)),
            len: rec
                .payload_len
                .saturating_add(u32::from(syn))
                .saturating_add(u32::from(fin)),
            now,
            now_us,
        }
    }

    /// Its first sequence number and one past its last.
    #[inline(always)]
    fn range(&self) -> (u32, u32) {
        (self.rec.seq, self.rec.seq.wrapping_add(self.len))
    }

    /// What the sender stamped on it.
    #[inline(always)]
    fn stamp(&self) -> Stamp {
        Stamp {
            ip_id: self.rec.ip_id as u16,
            tsval: self.ts.then_some(self.rec.tsval),
        }
    }
}

/// The wire segments of a TCP frame longer than one segment that carries
/// no segment count (a capture file taken on a host with TSO or GRO holds
/// such super-frames): the count the kernel gives the same packet as a
/// GSO record (segments of the receiver's MSS less the options each
/// carries, [`PacketMeta::wire_segment_size`]), so a file and the ring
/// give the same figures. `None` when the frame fits one segment or the
/// receiver's MSS is unknown.
#[inline]
pub fn inferred_segments(f: &Flow, d: usize, rec: &PacketMeta) -> Option<u16> {
    let peer = &f.dir[d ^ 1];
    if rec.segs > 1 || peer.flags & F_MSS == 0 || peer.mss == 0 {
        return None;
    }
    let size = rec.wire_segment_size(u32::from(peer.mss));
    (rec.payload_len > size)
        .then(|| u16::try_from(rec.payload_len.div_ceil(size)).unwrap_or(u16::MAX))
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
#[inline]
pub fn on_segment(f: &mut Flow, d: usize, rec: &PacketMeta, now: u64, now_us: u32) {
    let seg = Segment::new(rec, d, now, now_us);
    note_options(f, &seg);
    // The answer to a keep-alive echoes whatever the peer saw last, however
    // long ago: idle time, not a round trip.
    let answers_timer = f.dir[seg.r].flags & F_PROBE_SENT != 0 && seg.len == 0;
    f.dir[seg.r].flags &= !F_PROBE_SENT;
    if !answers_timer && !resent_on_timer(f, &seg) {
        echo_peer_probe(f, &seg);
    }
    let bare_probe = seg.len == 0 && !seg.rst && is_probe(f, &seg);
    if bare_probe {
        count_probe(f, &seg);
    }
    let not_dup = seg.syn || seg.fin || bare_probe;
    let released = f.dir[seg.r].flags & F_WIN_BLOCKED != 0;
    let advanced = seg.ack && !seg.rst && on_ack(f, &seg, not_dup);
    if !seg.rst {
        on_window(f, &seg);
    }
    let kind = if seg.len > 0 {
        on_data(f, &seg)
    } else if bare_probe {
        DataKind::Probe
    } else {
        DataKind::Other
    };
    let opens = advanced && seg.rec.window != 0;
    let prompts = opens && prompts_data(f, &seg, released);
    start_probe(f, &seg, kind, opens, prompts);
    advance_state(f, &seg);
    // After the data step, which weighs this packet's IP ID against the
    // run before it.
    if let Some(ex) = f.extra.as_deref_mut() {
        ex.dir[d].ip_ids.note(rec.ip_id);
    }
}

/// The RST time, the SYN's options and who opened the connection.
#[inline(always)]
fn note_options(f: &mut Flow, seg: &Segment) {
    let (d, r, rec) = (seg.d, seg.r, seg.rec);
    if seg.rst && f.dir[d].flags & F_RST == 0 {
        f.extra_mut().dir[d].rst_ns = seg.now.max(1);
    }
    if seg.ts {
        f.dir[d].flags |= F_TS;
    }
    if !seg.syn {
        return;
    }
    let opts = rec.tcp_opts;
    let dir = &mut f.dir[d];
    // The same ISN again is the same attempt, re-sent on backoff.
    if dir.flags & (F_SYN | F_SEQ) == F_SYN | F_SEQ && rec.seq == dir.first_seq {
        dir.flags |= F_SYN_RETRIED;
    }
    dir.flags |= F_SYN;
    if seg.ack {
        dir.flags |= F_SYNACK;
        f.extra_mut().exchanges.syn_ack(seg.now);
    }
    let dir = &mut f.dir[d];
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
    if !seg.ack {
        f.initiator = d as u8;
    } else if f.dir[r].flags & F_SYN == 0 {
        f.initiator = r as u8;
    }
}

/// Data sent again on a timer (retransmission timeout, tail-loss probe):
/// it echoes whatever the peer sent last, however long the sender waited,
/// so it ends no probe. A resend answering a partial ACK comes one round
/// trip after it and may.
#[inline(always)]
fn resent_on_timer(f: &Flow, seg: &Segment) -> bool {
    let own = &f.dir[seg.d];
    seg.len > 0
        && !seg.syn
        && own.flags & F_SEQ != 0
        && seq::lt(seg.rec.seq, own.snd_max)
        && !prompted_by_partial_ack(f, seg.d, seg.rec.seq, seg.now)
}

/// This packet as the echo of the other direction's RTT probe.
#[inline(always)]
fn echo_peer_probe(f: &mut Flow, seg: &Segment) {
    let tsecr = (seg.ts && seg.ack).then_some(seg.rec.tsecr);
    let ack_no = (seg.ack && !seg.rst).then_some(seg.rec.ack);
    let data = seg.rec.payload_len > 0;
    let Some((us, kind)) = f.dir[seg.r]
        .probe
        .echo(seg.now_us, tsecr, ack_no, seg.ts, data)
    else {
        return;
    };
    let ex = f.extra_mut();
    // A FIN answered by the peer's own FIN waited for its application.
    let app_close = kind & P_FIN != 0 && seg.fin;
    if app_close || (kind & P_WAIT != 0 && !within_path_time(&ex.dir[seg.r], us)) {
        return;
    }
    ex.dir[seg.r].add_rtt(us);
    if kind & P_SYN != 0 && seg.syn && seg.ack {
        ex.hs_down_us = Some(us);
    }
    if kind & P_SYNACK != 0 && !seg.syn {
        ex.hs_up_us = Some(us);
    }
}

/// Whether the echo of a waiting probe ([`P_WAIT`]) came soon enough to be
/// the path's answer: within twice this part's smallest round trip plus
/// 1 ms. Later, the wait is the peer's application (pacing, think time,
/// idle) as likely as the path, and it is no sample.
fn within_path_time(part: &DirExtra, us: u32) -> bool {
    part.rtt
        .min_us()
        .is_some_and(|m| u64::from(us) <= 2 * u64::from(m) + 1000)
}

/// A keep-alive or zero-window probe: at most one byte, one below the
/// highest sequence, no SYN or FIN; it reports nothing and carries no
/// new data.
#[inline(always)]
fn is_probe(f: &Flow, seg: &Segment) -> bool {
    let own = &f.dir[seg.d];
    seg.rec.payload_len <= 1
        && !seg.syn
        && !seg.fin
        && own.flags & F_SEQ != 0
        && seg.rec.seq == own.snd_max.wrapping_sub(1)
}

/// Counts a probe as a zero-window probe while the peer's window is
/// closed, else as a keep-alive.
#[inline(always)]
fn count_probe(f: &mut Flow, seg: &Segment) {
    f.dir[seg.d].flags |= F_PROBE_SENT;
    let peer = &f.dir[seg.r];
    let zero = peer.flags & F_WIN != 0 && peer.window == 0;
    let ex = &mut f.extra_mut().dir[seg.d];
    if zero {
        ex.zero_window_probes = ex.zero_window_probes.saturating_add(1);
    } else {
        ex.keepalives = ex.keepalives.saturating_add(1);
    }
}

/// The advertised window: zero-window episodes and their duration.
#[inline(always)]
fn on_window(f: &mut Flow, seg: &Segment) {
    let (d, now, win) = (seg.d, seg.now, seg.rec.window);
    let dir = &f.dir[d];
    let prev = (dir.flags & F_WIN != 0).then_some(dir.window);
    if !seg.syn && !seg.fin {
        let (zero, episode) = window::zero_window(prev, win);
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
    dir.window = win;
    dir.flags |= F_WIN;
    if seg.syn {
        dir.flags |= F_WIN_SYN;
    } else {
        dir.flags &= !F_WIN_SYN;
    }
}

/// Whether an ACK that moved forward visibly makes the peer send at once,
/// so that the peer's next data answers it: data is still in flight past
/// the vantage point after it (the sender is clocked by ACKs) or it opens
/// a window the peer had filled. Otherwise (everything seen is
/// acknowledged, as always at the receiver) the probe waits for proof
/// ([`P_WAIT`]).
#[inline(always)]
fn prompts_data(f: &mut Flow, seg: &Segment, released: bool) -> bool {
    let peer = &mut f.dir[seg.r];
    peer.flags &= !F_WIN_BLOCKED;
    released || (peer.flags & F_SEQ != 0 && seq::lt(seg.rec.ack, peer.snd_max))
}

/// Starts this direction's RTT probe where the segment allows one.
#[inline(always)]
fn start_probe(f: &mut Flow, seg: &Segment, kind: DataKind, opens: bool, prompts: bool) {
    let rec = seg.rec;
    let probe_kind = match (seg.syn, seg.ack) {
        (true, false) => P_SYN,
        (true, true) => P_SYNACK,
        _ => 0,
    };
    let dir = &mut f.dir[seg.d];
    let ts_new = seg.ts && (dir.flags & F_TSVAL == 0 || rec.tsval != dir.last_tsval);
    match kind {
        DataKind::Retrans => {
            dir.probe.karn(rec.seq);
            if ts_new {
                // Timestamps name the transmission: re-probe on the retransmission.
                dir.probe
                    .start(seg.now_us, Some(rec.tsval), None, probe_kind);
            }
        }
        DataKind::New if !dir.probe.active() => {
            let end = seg.range().1;
            let bare_fin = if seg.fin && rec.payload_len == 0 {
                P_FIN
            } else {
                0
            };
            dir.probe.start(
                seg.now_us,
                ts_new.then_some(rec.tsval),
                Some(end),
                probe_kind | bare_fin,
            );
        }
        DataKind::Probe => {}
        _ if ts_new && !dir.probe.active() && rec.payload_len > 0 => {
            dir.probe
                .start(seg.now_us, Some(rec.tsval), None, probe_kind);
        }
        // A pure ACK is echoed only when the peer next sends: time it only
        // when it acknowledges new data into an open window, and on proof
        // that the peer sends at once (`prompts_data`, else `P_WAIT`); a
        // repeated ACK or a closed window waits on the peer's idle time.
        _ if ts_new && !dir.probe.active() && opens => {
            let wait = if prompts { 0 } else { P_WAIT };
            dir.probe
                .start(seg.now_us, Some(rec.tsval), None, probe_kind | wait);
        }
        _ => {}
    }
    if seg.ts {
        dir.last_tsval = rec.tsval;
        dir.flags |= F_TSVAL;
    }
}

/// The connection state after this segment.
#[inline(always)]
fn advance_state(f: &mut Flow, seg: &Segment) {
    let (d, r) = (seg.d, seg.r);
    let st = TcpState::from_u8(f.state);
    let next = if seg.rst {
        f.dir[d].flags |= F_RST;
        TcpState::Reset
    } else if seg.fin {
        f.dir[d].flags |= F_FIN;
        if f.dir[r].flags & F_FIN != 0 {
            TcpState::Closed
        } else {
            TcpState::Closing
        }
    } else {
        match (st, seg.syn, seg.ack) {
            (TcpState::None, true, false) => TcpState::SynSent,
            (TcpState::None | TcpState::SynSent, true, true) => TcpState::SynReceived,
            (TcpState::None, _, _) => TcpState::Established,
            (TcpState::SynReceived, false, true) => TcpState::Established,
            (s, _, _) => s,
        }
    };
    // After RST only a new SYN changes the state.
    if !matches!(st, TcpState::Reset) || seg.syn {
        f.state = next as u8;
    }
}

/// The acknowledgment side: this side acknowledges the other's data.
/// Returns whether the ACK number advanced. `not_dup`: the segment cannot
/// be a duplicate ACK (SYN, FIN, keep-alive).
#[inline(always)]
fn on_ack(f: &mut Flow, seg: &Segment, not_dup: bool) -> bool {
    let advanced = count_ack(f, seg, not_dup);
    read_sack(f, seg);
    if advanced {
        peer_data_acked(f, seg.r, seg.rec.ack, seg.now);
    }
    advanced
}

/// Cumulative ACK progress and RFC 5681 duplicate ACKs.
#[inline(always)]
fn count_ack(f: &mut Flow, seg: &Segment, not_dup: bool) -> bool {
    let (rec, ack) = (seg.rec, seg.rec.ack);
    let peer = &f.dir[seg.r];
    let outstanding = peer.flags & F_SEQ == 0 || seq::gt(peer.snd_max, ack);
    let dir = &mut f.dir[seg.d];
    if dir.flags & F_ACK == 0 {
        dir.last_ack = ack;
        dir.flags |= F_ACK;
        return true;
    }
    if seq::gt(ack, dir.last_ack) {
        dir.last_ack = ack;
        dir.dupack_run = 0;
        dir.ack_advances = dir.ack_advances.saturating_add(1);
        return true;
    }
    if ack == dir.last_ack
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
    false
}

/// SACK blocks: the bytes SACKed above the cumulative ACK (RFC 6675 loss
/// evidence) and D-SACKs that prove the peer's latest resend spurious.
#[inline(always)]
fn read_sack(f: &mut Flow, seg: &Segment) {
    let (rec, ack) = (seg.rec, seg.rec.ack);
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
            let ex = &mut f.extra_mut().dir[seg.r];
            if let Some(last) = ex.last_retx.as_mut() {
                if !last.spurious && seq::lt(l0, last.end) && seq::lt(last.start, r0) {
                    last.spurious = true;
                    ex.retrans_spurious = ex.retrans_spurious.saturating_add(1);
                }
            }
        }
    }
    if sacked_above > 0 {
        f.extra_mut().dir[seg.d].sacked_above = sacked_above;
    } else if let Some(ex) = f.extra.as_deref_mut() {
        ex.dir[seg.d].sacked_above = 0;
    }
}

/// Side `r`'s data is acknowledged up to `ack`: recovery, size probe,
/// stall run and holes move on.
#[inline(always)]
fn peer_data_acked(f: &mut Flow, r: usize, ack: u32, now: u64) {
    let Some(ex) = f.extra.as_deref_mut() else {
        return;
    };
    let rx = &mut ex.dir[r];
    rx.retrans_wait.progress(now);
    rx.partial_ack = rx.in_recovery.then_some(PartialAck { ack, at_ns: now });
    if rx.in_recovery && seq::ge(ack, rx.recovery_point) {
        rx.in_recovery = false;
    }
    if let Some(p) = rx.size_probe {
        if seq::ge(ack, p.end) {
            rx.max_acked_segment = rx.max_acked_segment.max(p.segment);
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

/// The data side: new data, a hole fill (late: a retransmission; early:
/// reordering), a keep-alive or probe, or a retransmission.
#[inline(always)]
fn on_data(f: &mut Flow, seg: &Segment) -> DataKind {
    let (d, (s, e), payload) = (seg.d, seg.range(), seg.rec.payload_len);
    let idx = f.dir[d].packets.saturating_sub(u64::from(seg.segs));
    let dir = &mut f.dir[d];
    if dir.flags & F_SEQ == 0 {
        dir.first_seq = s;
        dir.flags |= F_SEQ;
        new_data(f, seg, e);
        return DataKind::New;
    }
    let snd_max = dir.snd_max;
    if seq::ge(s, snd_max) {
        if seq::gt(s, snd_max) {
            let opener = seg.stamp();
            f.extra_mut().dir[d]
                .holes
                .open(snd_max, s, seg.now, idx, opener);
        }
        new_data(f, seg, e);
        return DataKind::New;
    }

    // Below the highest sequence seen: a hole fill, a keep-alive or probe,
    // or a retransmission of data that passed the vantage point before.
    let prompted = prompted_by_partial_ack(f, d, s, seg.now);
    let advance = seq::dist(snd_max, e);
    if advance > 0 {
        let dir = &mut f.dir[d];
        dir.snd_max = e;
        dir.goodput += u64::from(advance.min(payload));
    }
    if let Some(kind) = fill_hole(f, seg.rec, seg.d, seg.now, idx, prompted) {
        return kind;
    }
    if is_probe(f, seg) {
        count_probe(f, seg);
        return DataKind::Probe;
    }
    retransmission(
        f,
        seg.rec,
        seg.d,
        seg.now,
        Resend {
            late: false,
            prompted,
        },
    );
    DataKind::Retrans
}

/// Data above the highest sequence: goodput, window and segment size.
#[inline(always)]
fn new_data(f: &mut Flow, seg: &Segment, end: u32) {
    // Data sent when everything before it was acknowledged starts waiting
    // now, however long the connection was idle.
    let peer = &f.dir[seg.r];
    let idle = peer.flags & F_ACK != 0 && seq::ge(peer.last_ack, f.dir[seg.d].snd_max);
    if idle {
        if let Some(ex) = f.extra.as_deref_mut() {
            ex.dir[seg.d].retrans_wait.outstanding(seg.now);
        }
    }
    let dir = &mut f.dir[seg.d];
    dir.snd_max = end;
    dir.goodput += u64::from(seg.rec.payload_len);
    if seg.rec.payload_len > 0 {
        let client = usize::from(f.initiator) == seg.d;
        let x = &mut f.extra_mut().exchanges;
        if client {
            x.client_data(seg.now);
        } else {
            x.server_data(seg.now);
        }
    }
    window_full(f, seg.d, end);
    first_transmission(f, seg, end);
}

/// A segment filling a hole: a retransmission when it was sent after the
/// segment that opened the hole ([`sent_after`]), else reordering; when
/// the stamps do not tell, a retransmission when late (it came at least
/// one vantage-to-sender round trip after the hole opened, the other
/// direction's minimum RTT; without any RTT, after three duplicate ACKs
/// from the receiver; or in answer to a partial ACK).
/// `None` when it fills no hole. Off the common path, so it decodes the
/// segment again rather than making every segment's decoding escape.
#[inline(never)]
fn fill_hole(
    f: &mut Flow,
    rec: &PacketMeta,
    d: usize,
    now: u64,
    idx: u64,
    prompted: bool,
) -> Option<DataKind> {
    let seg = &Segment::new(rec, d, now, 0);
    let (d, r, (s, e)) = (seg.d, seg.r, seg.range());
    let fill = f
        .extra
        .as_deref_mut()
        .and_then(|ex| ex.dir[d].holes.fill(s, e))?;
    // First time these bytes pass the vantage point.
    f.dir[d].goodput += u64::from(fill.bytes.min(seg.rec.payload_len));
    let ref_us = f.extra.as_deref().and_then(|ex| ex.dir[r].rtt.min_us());
    let run = f
        .extra
        .as_deref()
        .map(|ex| ex.dir[d].ip_ids)
        .unwrap_or_default();
    let late = match sent_after(run, seg.stamp(), fill.opener) {
        Some(later) => later,
        None => {
            prompted
                || match ref_us {
                    Some(m) => seg.now.saturating_sub(fill.t_ns) >= u64::from(m) * 1000,
                    None => f.dir[r].dupack_run >= 3,
                }
        }
    };
    if late {
        retransmission(
            f,
            seg.rec,
            seg.d,
            seg.now,
            Resend {
                late: true,
                prompted,
            },
        );
        return Some(DataKind::Retrans);
    }
    let extent = u32::try_from(idx.saturating_sub(fill.idx)).unwrap_or(u32::MAX);
    let ex = &mut f.extra_mut().dir[d];
    ex.out_of_order = ex.out_of_order.saturating_add(seg.segs);
    ex.reorder_extent_max = ex.reorder_extent_max.max(extent);
    Some(DataKind::Other)
}

/// Whether a segment stamped `fill` was sent after the one stamped
/// `opener`, by the sender's own counters: a different TSval (a resend
/// carries a newer one), else, where the sender's IP IDs run in sequence,
/// a different IP ID. `None` when neither tells (same TSval millisecond,
/// no timestamps, IPv6 or random IDs): timing decides then.
fn sent_after(sender: IpIdRun, fill: Stamp, opener: Stamp) -> Option<bool> {
    if let (Some(a), Some(b)) = (fill.tsval, opener.tsval) {
        if a != b {
            return Some(seq::gt(a, b));
        }
    }
    (sender.sequential() && fill.ip_id != opener.ip_id)
        .then(|| fill.ip_id.wrapping_sub(opener.ip_id) < 0x8000)
}

/// Segment-size bookkeeping for data passing the vantage point for the first
/// time: the largest segment sent, and a size probe (one segment at a time,
/// larger than any acknowledged so far) whose acknowledgment proves that
/// segments of that size cross the path.
#[inline(always)]
fn first_transmission(f: &mut Flow, seg: &Segment, end: u32) {
    let payload = seg.rec.payload_len;
    if payload == 0 {
        return;
    }
    let size = payload.div_ceil(seg.segs);
    let ex = &mut f.extra_mut().dir[seg.d];
    ex.max_segment = ex.max_segment.max(size);
    if ex.size_probe.is_none() && size > ex.max_acked_segment {
        ex.size_probe = Some(SizeProbe {
            start: end.wrapping_sub(payload),
            end,
            segment: size,
        });
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
    let Some(p) = ex.dir[d].partial_ack else {
        return false;
    };
    let Some(m) = ex.dir[d ^ 1].rtt.min_us() else {
        return false;
    };
    let (m, since) = (u64::from(m) * 1000, now.saturating_sub(p.at_ns));
    // RTT samples are whole microseconds: allow one of rounding.
    p.ack == s && since + 1000 >= m && since <= 2 * m + 1_000_000
}

/// How a retransmission was recognised.
#[derive(Clone, Copy)]
struct Resend {
    /// It filled a hole late (the loss lay upstream of the vantage point).
    late: bool,
    /// It answered a partial ACK.
    prompted: bool,
}

/// Counts and classifies a retransmission (fast, timeout, PMTUD, spurious;
/// full-size and stall evidence). Off the common path, like [`fill_hole`].
#[inline(never)]
fn retransmission(f: &mut Flow, rec: &PacketMeta, d: usize, now: u64, how: Resend) {
    let seg = &Segment::new(rec, d, now, 0);
    let (d, r, (s, e), payload, segs, now) = (
        seg.d,
        seg.r,
        seg.range(),
        seg.rec.payload_len,
        seg.segs,
        seg.now,
    );
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
    let acked = !how.late && peer.flags & F_ACK != 0 && seq::le(e, peer.last_ack);
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
    // Data already acknowledged waits for nothing.
    if !acked {
        ex.retrans_wait.resend(now);
    }
    let fast = !pmtud && (peer_signalled || ex.in_recovery || how.prompted);
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
            ex.recovery_point = if how.prompted { e } else { snd_max };
        }
    }
    if acked {
        ex.retrans_spurious = ex.retrans_spurious.saturating_add(segs);
    }
    if how.late {
        ex.late_fills = ex.late_fills.saturating_add(segs);
    }
    // Karn: an acknowledgment of re-sent data says nothing about the size
    // of the first transmission.
    if let Some(p) = ex.size_probe {
        if seq::lt(s, p.end) && seq::gt(e, p.start) {
            ex.size_probe = None;
        }
    }
    let size = payload.div_ceil(segs);
    if payload > 0 && size >= ex.max_segment && size > ex.max_acked_segment {
        ex.full_size_retrans = ex.full_size_retrans.saturating_add(segs);
        if ex.full_size_retrans_first_ns == 0 {
            ex.full_size_retrans_first_ns = now.max(1);
        }
        ex.full_size_retrans_last_ns = now.max(1);
    }
    // Data already acknowledged cannot stall the connection.
    if !pmtud && !acked {
        extend_stall(ex, s, now);
    }
    ex.retrans_bytes += u64::from(payload);
    ex.last_retx = Some(Resent {
        start: s,
        end: e,
        spurious: acked,
    });
}

/// Another resend of the same data extends the stall run; other data
/// starts a new one.
fn extend_stall(ex: &mut DirExtra, s: u32, now: u64) {
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
    let Some(left) = window::left(peer.last_ack, peer.window, shift, end) else {
        return;
    };
    // Less than one more segment fits: the sender waits for the window.
    let segment = if peer.flags & F_MSS != 0 && peer.mss > 0 {
        u64::from(peer.mss)
    } else {
        1460
    };
    if left >= segment {
        return;
    }
    f.dir[d].flags |= F_WIN_BLOCKED;
    let ex = &mut f.extra_mut().dir[d];
    ex.window_limited = ex.window_limited.saturating_add(1);
    if left == 0 {
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

    /// With timestamps: `rec` sends TSval `tsval` and echoes `tsecr`.
    fn ts(mut m: PacketMeta, tsval: u32, tsecr: u32) -> PacketMeta {
        m.tcp_opts |= tcp_opts::TIMESTAMPS;
        m.tsval = tsval;
        m.tsecr = tsecr;
        m
    }

    /// A handshake with timestamps, the client's ACK at `ack_at`.
    fn ts_handshake(ack_at: u64) -> Vec<PacketMeta> {
        let mut syn = ts(rec(0, true, tf::SYN), 1, 0);
        syn.seq = 999;
        let mut synack = ts(rec(MS, false, tf::SYN | tf::ACK), 5, 1);
        synack.ack = 1000;
        let mut hs_ack = ts(rec(ack_at, true, tf::ACK), 1, 5);
        hs_ack.seq = 1000;
        hs_ack.ack = 1;
        vec![syn, synack, hs_ack]
    }

    /// A capture downstream of the sender (1 ms from the receiver, 10 ms
    /// from the sender): segment 11 passes before segment 10, which fills
    /// the hole `gap` later, stamped `tsval` and `ip_id`.
    fn hole_filled(gap: u64, tsval: u32, ip_id: u32) -> crate::flow::FlowSummary {
        let mut recs = ts_handshake(11 * MS);
        // Segments 0 .. 9 and 11 .. 15, sent 1 ms apart with sequential
        // IP IDs, TSval 10 + i.
        for i in (0..16).filter(|&i| i != 10) {
            let mut m = ts(data(12 * MS + u64::from(i) * MS, i), 10 + i, 5);
            m.ip_id = 100 + i;
            recs.push(m);
        }
        let mut fill = ts(data(23 * MS + gap, 10), tsval, 5);
        fill.ip_id = ip_id;
        recs.push(fill);
        for r in &mut recs {
            r.ttl = 60;
        }
        analyse(&recs)
    }

    #[test]
    fn a_fill_sent_before_the_opener_is_reordering_however_late() {
        // 30 ms after the hole opened (3 times the 10 ms the sender is
        // away): timing alone says a resend. It carries segment 10's own
        // stamps (TSval 20, IP ID 110), older than segment 11's: an
        // original overtaken on the way.
        let f = hole_filled(30 * MS, 20, 110);
        assert_eq!((f.retransmissions, f.out_of_order), (0, 1), "{f:#?}");
    }

    #[test]
    fn a_fill_sent_after_the_opener_is_a_resend_however_early() {
        // 0.5 ms after the hole opened, but stamped after every segment
        // before it (TSval 40; IP ID 140): sent again, not overtaken.
        let f = hole_filled(MS / 2, 40, 140);
        assert_eq!((f.retransmissions, f.out_of_order, f.late_fills), (1, 0, 1));
        // The opener's TSval (the same millisecond): the sequential IP ID
        // tells.
        let f = hole_filled(MS / 2, 21, 140);
        assert_eq!((f.retransmissions, f.out_of_order), (1, 0));
    }

    #[test]
    fn a_resend_on_timeout_is_no_rtt_sample() {
        // The server acknowledges the client's first write at 4 ms; the
        // second write is lost before the capture, and the client re-sends
        // it on its retransmission timeout, 200 ms on, echoing that ACK.
        let mut recs = ts_handshake(2 * MS);
        recs.push(ts(data(3 * MS, 0), 3, 5));
        let mut acked = ts(ack(4 * MS, 1, None), 7, 3);
        acked.window = 1000;
        recs.push(acked);
        // Sent before that ACK reached the client: they echo the SYN/ACK.
        recs.push(ts(data(5 * MS, 1), 5, 5));
        recs.push(ts(data(6 * MS, 2), 6, 5));
        recs.push(ts(data(206 * MS, 1), 206, 7));
        let f = analyse(&recs);
        assert_eq!(f.retransmissions, 1);
        let max = f.dst_to_src.rtt.max_ms.unwrap_or(0.0);
        assert!(
            max < 10.0,
            "the 202 ms timer wait is no RTT: {:?}",
            f.dst_to_src.rtt
        );
    }

    #[test]
    fn a_keepalive_answer_is_no_rtt_sample() {
        // The client's last write is never seen acknowledged (the capture
        // missed the ACK); 45 s later its keep-alive draws an ACK that
        // echoes TS.Recent, the write's TSval: 45 s of idle time.
        let mut recs = ts_handshake(2 * MS);
        let write = ts(data(3 * MS, 0), 3, 5);
        let mut keepalive = ts(rec(45_000 * MS, true, tf::ACK), 45_003, 5);
        keepalive.seq = 1000 + SEG - 1;
        keepalive.ack = 1;
        let answer = ts(ack(45_001 * MS, 1, None), 45_005, 3);
        recs.extend([write, keepalive, answer]);
        let f = analyse(&recs);
        assert_eq!(f.src_to_dst.keepalives, 1);
        assert_eq!(f.src_to_dst.rtt.samples, 1, "the SYN only");
        assert_eq!(f.rtt.max_ms, Some(2.0), "{:?}", f.rtt);
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
