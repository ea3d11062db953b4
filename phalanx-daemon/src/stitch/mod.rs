//! Multi-hop stitching: the same flows captured at several points of their
//! path, correlated packet by packet to say on which link packets were lost,
//! delayed, reordered or duplicated.
//!
//! [`stitch`] is a pure function from per-point [`Sighting`]s (one packet
//! as seen at one point) to a [`StitchReport`]; `phalanx stitch` feeds it
//! from capture files, and peer daemons ([`live`]) from the sightings they
//! exchange ([`peer`]) and keep ([`recorder`]).
//!
//! Steps: index each point's packets by flow and direction; keep the flows
//! seen at two points or more; order the points ([`path`]); for each pair of
//! neighbouring points and each direction of travel, estimate the clock
//! offset ([`clock`]) and match packets ([`link`]).

pub mod cli;
pub mod clock;
pub mod config;
pub mod fingerprint;
pub mod link;
pub mod live;
pub mod path;
pub mod peer;
pub mod recorder;
pub mod summary;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use serde::Serialize;
use thiserror::Error;

pub use cli::{run, HopSpec, StitchArgs};
pub use clock::{ClockEstimate, ClockMethod};
pub use fingerprint::{fingerprint, Sighting};
pub use link::DelayStats;

use crate::flow::FlowKey;
use link::{DirectionAtHop, LinkCounts};
use path::{FlowEvidence, PairEvidence};

/// The packets seen at one observation point.
#[derive(Clone, Debug, Default)]
pub struct HopCapture {
    /// Name of the point (unique among the hops).
    pub name: String,
    /// Packets in the order the point saw them.
    pub observations: Vec<Sighting>,
}

impl HopCapture {
    /// A hop from parsed records.
    pub fn from_records<'a>(
        name: impl Into<String>,
        records: impl IntoIterator<Item = &'a phalanx_common::PacketMeta>,
    ) -> Self {
        let mut split = WireSegments::default();
        let mut observations = Vec::new();
        for m in records {
            split.push(m, &mut observations);
        }
        Self {
            name: name.into(),
            observations,
        }
    }
}

/// Sightings of one point's records as the wire carries them: a TCP frame
/// that stands for several segments (a GSO record, or a capture file's
/// super-frame longer than a segment of the receiver's MSS less its
/// options, merged by TSO or GRO at the
/// capture host) is seen as those segments, the way other points see them.
/// Their payload hashes are dropped: the frame's covers other bytes.
#[derive(Debug, Default)]
pub struct WireSegments {
    /// Each side's MSS option, from its SYN: what its peer sends it.
    mss: HashMap<(FlowKey, usize), u32>,
}

impl WireSegments {
    /// Appends the sightings of `m` to `out`.
    pub fn push(&mut self, m: &phalanx_common::PacketMeta, out: &mut Vec<Sighting>) {
        use phalanx_common::{tcp_flags, tcp_opts, RecordKind};
        let Some((key, d, _)) = FlowKey::of(m).filter(|_| m.kind == RecordKind::Tcp as u8) else {
            out.push(Sighting::from_meta(m));
            return;
        };
        if m.tcp_flags & tcp_flags::SYN != 0 && m.tcp_opts & tcp_opts::MSS != 0 && m.mss > 0 {
            self.mss.insert((key, d), u32::from(m.mss));
        }
        let receiver_mss = self
            .mss
            .get(&(key, d ^ 1))
            .map(|&mss| m.wire_segment_size(mss));
        let (segs, size) = if m.segs > 1 {
            let size = if m.gso_size > 0 {
                u32::from(m.gso_size)
            } else {
                crate::capture::gso::gso_segment_size(
                    m.payload_len,
                    u32::from(m.segs),
                    receiver_mss,
                )
            };
            (u32::from(m.segs), size)
        } else {
            match receiver_mss {
                Some(mss) if m.payload_len > mss => (m.payload_len.div_ceil(mss), mss),
                _ => {
                    out.push(Sighting::from_meta(m));
                    return;
                }
            }
        };
        let frame = phalanx_common::PacketMeta {
            segs: u16::try_from(segs).unwrap_or(u16::MAX),
            ..*m
        };
        for seg in crate::capture::gso::gso_segments(&frame, size) {
            let mut o = Sighting::from_meta(&seg);
            o.payload_hash = 0;
            out.push(o);
        }
    }
}

/// Errors of the stitcher.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StitchError {
    /// Fewer than two observation points.
    #[error("stitching needs captures from at least two points, got {0}")]
    TooFewHops(usize),
    /// Two points share a name.
    #[error("hop name {0:?} is used twice")]
    DuplicateName(String),
    /// No flow was seen at more than one point.
    #[error("the captures share no flow: no 5-tuple appears in more than one of them")]
    NoSharedFlow,
    /// One point saw none of the flows the others saw.
    #[error("capture {0:?} shares no flow with the other captures")]
    HopSharesNoFlow(String),
}

/// Whether the hop order is inferred or given: how the stitcher orders the
/// hops, and the report's `order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderSource {
    /// From TTL decrements and timing.
    Inferred,
    /// As named by the caller.
    Given,
}

/// Direction of travel relative to the hop order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathDirection {
    /// From the first hop towards the last.
    Forward,
    /// From the last hop towards the first.
    Reverse,
}

/// One observation point in path order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopReport {
    /// Name of the point.
    pub name: String,
    /// Position along the path (0 = first).
    pub position: usize,
    /// Packets seen there.
    pub packets: u64,
    /// Flows seen there.
    pub flows: u64,
    /// Of those, flows also seen at another point (the ones stitched).
    pub shared_flows: u64,
    /// Packets whose fingerprint had already been seen there in the same
    /// flow and direction (retransmissions with identical headers, copies).
    pub collisions: u64,
    /// This point's clock minus the first point's clock (ms).
    pub clock_offset_ms: f64,
    /// The same in nanoseconds, for correcting timestamps.
    pub clock_offset_ns: i64,
}

/// One link (two neighbouring points) in one direction of travel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkReport {
    /// Upstream point for this direction.
    pub from: String,
    /// Downstream point.
    pub to: String,
    /// Direction of travel relative to the hop order.
    pub direction: PathDirection,
    /// Packets that left `from` (within the time `to` was capturing).
    pub packets: u64,
    /// Of those, packets that reached `to`.
    pub delivered: u64,
    /// Packets seen at `from` and never at `to`: lost on this link.
    pub lost: u64,
    /// Extra copies that reached `to` (duplicated on the link).
    pub duplicates: u64,
    /// Packets at `to` never seen at `from` (within the time `from` was capturing).
    pub unmatched: u64,
    /// Packets at `from` that would have reached `to` outside its capture, not counted.
    pub outside_window: u64,
    /// Packets that reached `to` after a packet that left `from` later.
    pub reordered: u64,
    /// One-way delay, offset-corrected (ms).
    pub delay_ms: DelayStats,
    /// `to`'s clock minus `from`'s clock (ms).
    pub clock_offset_ms: f64,
    /// How the offset was obtained.
    pub clock_method: ClockMethod,
    /// Flows seen at both points.
    pub flows: u64,
    /// Flows seen at `from` and at another point, but never at `to`
    /// (rerouted or blackholed; their packets are not counted as lost).
    pub flows_missing: u64,
    /// Whether payload hashes were comparable between the two points and
    /// used to tell packets apart.
    pub payload_hash: bool,
}

/// A stitched flow, oriented along the hop order: its endpoints and the
/// points that saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StitchedFlow {
    /// Sender of the forward direction.
    pub src: IpAddr,
    /// Receiver of the forward direction.
    pub dst: IpAddr,
    /// Source port of the forward direction.
    pub sport: u16,
    /// Destination port of the forward direction.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Points that saw it, in path order.
    pub hops: Vec<String>,
}

/// Result of stitching; `phalanx stitch --json` prints it as is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StitchReport {
    /// Whether the order was inferred or given.
    pub order: OrderSource,
    /// Points in path order.
    pub hops: Vec<HopReport>,
    /// Per neighbouring pair: the forward link, then the reverse one.
    pub links: Vec<LinkReport>,
    /// The stitched flows.
    pub flows: Vec<StitchedFlow>,
}

impl StitchReport {
    /// The link from one named point to another, if they are neighbours.
    pub fn link(&self, from: &str, to: &str) -> Option<&LinkReport> {
        self.links.iter().find(|l| l.from == from && l.to == to)
    }

    /// A point by name.
    pub fn hop(&self, name: &str) -> Option<&HopReport> {
        self.hops.iter().find(|h| h.name == name)
    }
}

/// [`FlowKey`] as a hash-map key (the flow module does not hash it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowId(FlowKey);

impl Hash for FlowId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash64());
    }
}

/// One flow direction at one point.
#[derive(Default)]
struct DirSeq {
    times: Vec<i64>,
    ttl: Vec<u8>,
    payload: Vec<u32>,
    /// `(fingerprint, index)` sorted.
    by_fp: Vec<(u64, u32)>,
    /// `(fingerprint with payload hash, index)` sorted.
    by_full: Vec<(u64, u32)>,
    /// A SYN without ACK was seen (the connection opener).
    syn: bool,
}

impl DirSeq {
    fn first(&self) -> Option<i64> {
        self.times.first().copied()
    }
    fn keys(&self, full: bool) -> &[(u64, u32)] {
        if full {
            &self.by_full
        } else {
            &self.by_fp
        }
    }
    fn side(&self, full: bool, span: (i64, i64)) -> DirectionAtHop<'_> {
        DirectionAtHop {
            times: &self.times,
            keys: self.keys(full),
            span,
        }
    }
}

struct HopIndex {
    name: String,
    packets: u64,
    span: (i64, i64),
    flows: HashMap<FlowId, [DirSeq; 2]>,
    collisions: u64,
}

fn ts(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl HopIndex {
    fn build(hop: HopCapture) -> Self {
        let mut flows: HashMap<FlowId, [DirSeq; 2]> = HashMap::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for o in &hop.observations {
            let t = ts(o.ts_ns);
            lo = lo.min(t);
            hi = hi.max(t);
            let seqs = flows.entry(FlowId(o.flow)).or_default();
            let s = &mut seqs[usize::from(o.dir & 1)];
            let idx = s.times.len() as u32;
            s.times.push(t);
            s.ttl.push(o.ttl);
            s.payload.push(o.payload_hash);
            s.by_fp.push((o.fingerprint, idx));
            s.by_full.push((
                fingerprint::with_payload(o.fingerprint, o.payload_hash),
                idx,
            ));
            let f = o.tcp_flags;
            use phalanx_common::tcp_flags::{ACK, SYN};
            if f & SYN != 0 && f & ACK == 0 {
                s.syn = true;
            }
        }
        let mut collisions = 0;
        for seqs in flows.values_mut() {
            for s in seqs.iter_mut() {
                s.by_fp.sort_unstable();
                s.by_full.sort_unstable();
                collisions += s.by_fp.windows(2).filter(|w| w[0].0 == w[1].0).count() as u64;
            }
        }
        if lo > hi {
            (lo, hi) = (0, 0);
        }
        Self {
            name: hop.name,
            packets: hop.observations.len() as u64,
            span: (lo, hi),
            flows,
            collisions,
        }
    }
}

/// A flow seen at two points or more.
struct SharedFlow {
    id: FlowId,
    /// Hops that saw it (indices into the hop list, ascending).
    at: Vec<usize>,
    /// Direction of the connection opener (or of the first packet).
    initiator: usize,
    /// Runs the path against its initiator direction.
    flipped: bool,
}

impl SharedFlow {
    /// The direction that travels the path forward (first hop to last).
    fn forward(&self) -> usize {
        self.initiator ^ usize::from(self.flipped)
    }
}

/// Decides per hop pair whether payload hashes are comparable: among the
/// packets matched one-to-one by fingerprint with a hash at both points,
/// most hashes must agree (they do not when the points captured different
/// numbers of payload bytes).
fn payload_comparable(a: &HopIndex, b: &HopIndex, flows: &[SharedFlow]) -> bool {
    let (mut both, mut equal) = (0u64, 0u64);
    for f in flows {
        let (Some(sa), Some(sb)) = (a.flows.get(&f.id), b.flows.get(&f.id)) else {
            continue;
        };
        for d in 0..2 {
            link::join(&sa[d].by_fp, &sb[d].by_fp, |x, y| {
                if let ([(_, i)], [(_, j)]) = (x, y) {
                    let (pa, pb) = (sa[d].payload[*i as usize], sb[d].payload[*j as usize]);
                    if pa != 0 && pb != 0 {
                        both += 1;
                        equal += u64::from(pa == pb);
                    }
                }
            });
        }
    }
    both > 0 && equal * 2 > both
}

fn median(v: &mut [i64]) -> Option<i64> {
    v.sort_unstable();
    link::percentile(v, 50.0)
}

/// Order evidence from the one-to-one matches of a flow at points `i`, `j`.
fn pair_evidence(a: &[DirSeq; 2], b: &[DirSeq; 2], initiator: usize, full: bool) -> PairEvidence {
    let mut e = PairEvidence::default();
    for (d, fwd) in [(initiator, true), (initiator ^ 1, false)] {
        let (sa, sb) = (&a[d], &b[d]);
        let mut deltas = Vec::new();
        link::join(sa.keys(full), sb.keys(full), |x, y| {
            if let ([(_, i)], [(_, j)]) = (x, y) {
                let (i, j) = (*i as usize, *j as usize);
                let (ti, tj) = (sa.times[i], sb.times[j]);
                // Forward: t_j - t_i; reverse: t_i - t_j (both "i first").
                deltas.push(if fwd {
                    tj.saturating_sub(ti)
                } else {
                    ti.saturating_sub(tj)
                });
                let (ttl_i, ttl_j) = (sa.ttl[i], sb.ttl[j]);
                let vote = match ttl_i.cmp(&ttl_j) {
                    std::cmp::Ordering::Greater => 1,
                    std::cmp::Ordering::Less => -1,
                    std::cmp::Ordering::Equal => 0,
                };
                e.ttl_votes += if fwd { vote } else { -vote };
            }
        });
        e.matched += deltas.len() as u64;
        let min = deltas.iter().copied().min();
        let med = median(&mut deltas);
        if fwd {
            (e.fwd_min, e.fwd_median) = (min, med);
        } else {
            (e.rev_min, e.rev_median) = (min, med);
        }
    }
    e
}

/// Stitches the points, inferring their order along the path.
pub fn stitch(hops: Vec<HopCapture>) -> Result<StitchReport, StitchError> {
    stitch_with(hops, OrderSource::Inferred)
}

/// Stitches the points in the order given (first = one end of the path).
pub fn stitch_in_order(hops: Vec<HopCapture>) -> Result<StitchReport, StitchError> {
    stitch_with(hops, OrderSource::Given)
}

/// The stitcher's steps; `source` says whether `hops` come in path order.
fn stitch_with(hops: Vec<HopCapture>, source: OrderSource) -> Result<StitchReport, StitchError> {
    check_hops(&hops)?;
    let idx: Vec<HopIndex> = hops.into_iter().map(HopIndex::build).collect();
    let mut flows = shared_flows(&idx)?;
    let full = payload_matrix(&idx, &flows);
    let order = order_hops(&idx, &mut flows, &full, source);
    let (links, hop_offset) = link_reports(&idx, &flows, &full, &order);
    Ok(StitchReport {
        order: source,
        hops: hop_reports(&idx, &flows, &order, &hop_offset),
        links,
        flows: stitched_flows(&idx, &flows, &order),
    })
}

/// At least two hops, no name twice.
fn check_hops(hops: &[HopCapture]) -> Result<(), StitchError> {
    let n = hops.len();
    if n < 2 {
        return Err(StitchError::TooFewHops(n));
    }
    for (i, h) in hops.iter().enumerate() {
        if hops[..i].iter().any(|o| o.name == h.name) {
            return Err(StitchError::DuplicateName(h.name.clone()));
        }
    }
    Ok(())
}

/// The flows seen at two hops or more, in a deterministic order, each with
/// its initiator direction; every hop must share one of them.
fn shared_flows(idx: &[HopIndex]) -> Result<Vec<SharedFlow>, StitchError> {
    let mut seen_at: HashMap<FlowId, Vec<usize>> = HashMap::new();
    for (h, hop) in idx.iter().enumerate() {
        for id in hop.flows.keys() {
            seen_at.entry(*id).or_default().push(h);
        }
    }
    let mut shared: Vec<(FlowId, Vec<usize>)> = seen_at
        .into_iter()
        .filter(|(_, at)| at.len() >= 2)
        .collect();
    if shared.is_empty() {
        return Err(StitchError::NoSharedFlow);
    }
    // The map's order is random; the report's must not be.
    shared.sort_by(|a, b| {
        let k = |f: &FlowId| (f.0.addr, f.0.port, f.0.proto, f.0.ip_version);
        k(&a.0).cmp(&k(&b.0))
    });
    for (h, hop) in idx.iter().enumerate() {
        if !shared.iter().any(|(_, at)| at.contains(&h)) {
            return Err(StitchError::HopSharesNoFlow(hop.name.clone()));
        }
    }
    Ok(shared
        .into_iter()
        .map(|(id, at)| SharedFlow {
            initiator: initiator(idx, &id, &at),
            id,
            at,
            flipped: false,
        })
        .collect())
}

/// Direction of the flow's connection opener (a SYN without ACK seen in
/// one direction only), else the direction seen first at the first hop
/// (of `at`) that has the flow.
fn initiator(idx: &[HopIndex], id: &FlowId, at: &[usize]) -> usize {
    let dirs = at.iter().filter_map(|&h| idx[h].flows.get(id));
    let syn = |d: usize| dirs.clone().any(|s| s[d].syn);
    match (syn(0), syn(1)) {
        (true, false) => 0,
        (false, true) => 1,
        _ => {
            let s = dirs.clone().next();
            let f0 = s.and_then(|s| s[0].first()).unwrap_or(i64::MAX);
            let f1 = s.and_then(|s| s[1].first()).unwrap_or(i64::MAX);
            usize::from(f1 < f0)
        }
    }
}

/// Per hop pair (symmetric), whether payload hashes are comparable.
fn payload_matrix(idx: &[HopIndex], flows: &[SharedFlow]) -> Vec<Vec<bool>> {
    let n = idx.len();
    let mut full = vec![vec![false; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let c = payload_comparable(&idx[i], &idx[j], flows);
            full[i][j] = c;
            full[j][i] = c;
        }
    }
    full
}

/// The hops in path order (as given, or inferred from every flow's
/// evidence), orienting each flow along it.
fn order_hops(
    idx: &[HopIndex],
    flows: &mut [SharedFlow],
    full: &[Vec<bool>],
    source: OrderSource,
) -> Vec<usize> {
    let n = idx.len();
    let evidence: Vec<FlowEvidence> = flows.iter().map(|f| flow_evidence(idx, f, full)).collect();
    let (order, flipped) = match source {
        OrderSource::Given => {
            let order: Vec<usize> = (0..n).collect();
            let flipped = path::orient(&order, &evidence);
            (order, flipped)
        }
        OrderSource::Inferred => path::infer_order(n, &evidence),
    };
    for (f, flip) in flows.iter_mut().zip(flipped) {
        f.flipped = flip;
    }
    tracing::debug!(order = ?order.iter().map(|&h| &idx[h].name).collect::<Vec<_>>(), "hop order");
    order
}

/// Order evidence of one flow from every pair of hops that saw it.
fn flow_evidence(idx: &[HopIndex], f: &SharedFlow, full: &[Vec<bool>]) -> FlowEvidence {
    let n = idx.len();
    let mut fe = FlowEvidence::default();
    for i in 0..n {
        for j in i + 1..n {
            if let (Some(a), Some(b)) = (idx[i].flows.get(&f.id), idx[j].flows.get(&f.id)) {
                fe.pairs
                    .push((i, j, pair_evidence(a, b, f.initiator, full[i][j])));
            }
        }
    }
    fe
}

/// Per pair of neighbouring hops the forward link, then the reverse one;
/// and each hop's clock minus the first hop's clock (ns).
fn link_reports(
    idx: &[HopIndex],
    flows: &[SharedFlow],
    full: &[Vec<bool>],
    order: &[usize],
) -> (Vec<LinkReport>, Vec<i64>) {
    let n = idx.len();
    let mut links = Vec::with_capacity(2 * (n - 1));
    let mut hop_offset = vec![0i64; n];
    for w in order.windows(2) {
        let (u, d) = (w[0], w[1]);
        let pair = Neighbours::measure(&idx[u], &idx[d], flows, full[u][d]);
        hop_offset[d] = hop_offset[u].saturating_add(pair.clock.offset_ns);
        links.push(pair.link(PathDirection::Forward, flows));
        links.push(pair.link(PathDirection::Reverse, flows));
    }
    (links, hop_offset)
}

/// Two neighbouring hops and what their shared flows say of the pair.
struct Neighbours<'a> {
    /// The hop nearer the start of the path.
    up: &'a HopIndex,
    /// The next hop.
    down: &'a HopIndex,
    /// Whether payload hashes are comparable between them.
    use_full: bool,
    /// `down`'s clock minus `up`'s.
    clock: ClockEstimate,
    /// Flows seen at both.
    both: u64,
    /// Flows seen (with another hop) at `up` only, and at `down` only.
    missing: [u64; 2],
}

impl<'a> Neighbours<'a> {
    /// Estimates the clock offset from one-to-one matches in both
    /// directions and counts the flows each hop saw without the other.
    fn measure(up: &'a HopIndex, down: &'a HopIndex, flows: &[SharedFlow], use_full: bool) -> Self {
        let (mut fwd_min, mut rev_min): (Option<i64>, Option<i64>) = (None, None);
        let mut both = 0u64;
        let mut missing = [0u64; 2];
        for f in flows {
            match (up.flows.get(&f.id), down.flows.get(&f.id)) {
                (Some(a), Some(b)) => {
                    both += 1;
                    let e = pair_evidence(a, b, f.forward(), use_full);
                    fwd_min = fwd_min.into_iter().chain(e.fwd_min).min();
                    rev_min = rev_min.into_iter().chain(e.rev_min).min();
                }
                (Some(_), None) => missing[0] += 1,
                (None, Some(_)) => missing[1] += 1,
                (None, None) => {}
            }
        }
        Self {
            up,
            down,
            use_full,
            clock: clock::estimate(fwd_min, rev_min),
            both,
            missing,
        }
    }

    /// The link in one direction of travel: every shared flow's packets matched.
    fn link(&self, dir: PathDirection, flows: &[SharedFlow]) -> LinkReport {
        let (from, to, ck, miss) = match dir {
            PathDirection::Forward => (self.up, self.down, self.clock, self.missing[0]),
            PathDirection::Reverse => {
                let reverse = ClockEstimate {
                    offset_ns: self.clock.offset_ns.saturating_neg(),
                    ..self.clock
                };
                (self.down, self.up, reverse, self.missing[1])
            }
        };
        let mut acc = LinkCounts::default();
        for f in flows {
            let d = match dir {
                PathDirection::Forward => f.forward(),
                PathDirection::Reverse => f.forward() ^ 1,
            };
            if let (Some(a), Some(b)) = (from.flows.get(&f.id), to.flows.get(&f.id)) {
                link::analyze_direction(
                    &a[d].side(self.use_full, from.span),
                    &b[d].side(self.use_full, to.span),
                    &ck,
                    &mut acc,
                );
            }
        }
        LinkReport {
            from: from.name.clone(),
            to: to.name.clone(),
            direction: dir,
            packets: acc.packets,
            delivered: acc.delivered,
            lost: acc.lost,
            duplicates: acc.duplicates,
            unmatched: acc.unmatched,
            outside_window: acc.outside_window,
            reordered: acc.reordered,
            delay_ms: DelayStats::from_ns(&mut acc.delays_ns),
            clock_offset_ms: ck.offset_ns as f64 / 1e6,
            clock_method: ck.method,
            flows: self.both,
            flows_missing: miss,
            payload_hash: self.use_full,
        }
    }
}

/// The hops in path order with their counts and clock offsets.
fn hop_reports(
    idx: &[HopIndex],
    flows: &[SharedFlow],
    order: &[usize],
    hop_offset: &[i64],
) -> Vec<HopReport> {
    order
        .iter()
        .enumerate()
        .map(|(pos, &h)| {
            let hop = &idx[h];
            HopReport {
                name: hop.name.clone(),
                position: pos,
                packets: hop.packets,
                flows: hop.flows.len() as u64,
                shared_flows: flows.iter().filter(|f| f.at.contains(&h)).count() as u64,
                collisions: hop.collisions,
                clock_offset_ms: hop_offset[h] as f64 / 1e6,
                clock_offset_ns: hop_offset[h],
            }
        })
        .collect()
}

/// The shared flows, oriented along the path, with the hops that saw them.
fn stitched_flows(idx: &[HopIndex], flows: &[SharedFlow], order: &[usize]) -> Vec<StitchedFlow> {
    flows
        .iter()
        .map(|f| {
            let k = f.id.0;
            let s = f.forward();
            StitchedFlow {
                src: k.ip(s),
                dst: k.ip(s ^ 1),
                sport: k.port[s],
                dport: k.port[s ^ 1],
                proto: k.proto,
                hops: order
                    .iter()
                    .filter(|h| f.at.contains(h))
                    .map(|&h| idx[h].name.clone())
                    .collect(),
            }
        })
        .collect()
}
