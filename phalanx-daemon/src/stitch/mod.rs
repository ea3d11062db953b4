//! Multi-hop stitching: the same flows captured at several points of their
//! path, correlated packet by packet to say on which link packets were lost,
//! delayed, reordered or duplicated.
//!
//! [`stitch`] is a pure function from per-point [`Observation`]s to a
//! [`StitchReport`]; `phalanx stitch` feeds it from capture files, and peer
//! daemons can feed it from the observations they exchange.
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

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use serde::Serialize;
use thiserror::Error;

pub use cli::{run, HopSpec, StitchArgs};
pub use clock::{ClockEstimate, ClockMethod};
pub use fingerprint::{fingerprint, Observation};
pub use link::DelayStats;

use crate::flow::FlowKey;
use link::{LinkCounts, Side};
use path::{FlowEvidence, PairEvidence};

/// The packets seen at one observation point.
#[derive(Clone, Debug, Default)]
pub struct HopCapture {
    /// Name of the point (unique among the hops).
    pub name: String,
    /// Packets in the order the point saw them.
    pub observations: Vec<Observation>,
}

impl HopCapture {
    /// A hop from parsed records.
    pub fn from_records<'a>(
        name: impl Into<String>,
        records: impl IntoIterator<Item = &'a phalanx_common::PacketMeta>,
    ) -> Self {
        Self {
            name: name.into(),
            observations: records.into_iter().map(Observation::from_meta).collect(),
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

/// Whether the hop order was inferred or given.
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

/// A stitched flow, oriented along the hop order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowReport {
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
    pub flows: Vec<FlowReport>,
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
    fn side(&self, full: bool, span: (i64, i64)) -> Side<'_> {
        Side {
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
    /// Direction of the connection opener (or of the first packet).
    initiator: usize,
    /// Runs the path against its initiator direction.
    flipped: bool,
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
    stitch_impl(hops, false)
}

/// Stitches the points in the order given (first = one end of the path).
pub fn stitch_in_order(hops: Vec<HopCapture>) -> Result<StitchReport, StitchError> {
    stitch_impl(hops, true)
}

fn stitch_impl(hops: Vec<HopCapture>, given: bool) -> Result<StitchReport, StitchError> {
    let n = hops.len();
    if n < 2 {
        return Err(StitchError::TooFewHops(n));
    }
    for (i, h) in hops.iter().enumerate() {
        if hops[..i].iter().any(|o| o.name == h.name) {
            return Err(StitchError::DuplicateName(h.name.clone()));
        }
    }
    let idx: Vec<HopIndex> = hops.into_iter().map(HopIndex::build).collect();

    // Flows seen at two points or more, in a deterministic order.
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
    shared.sort_by(|a, b| {
        let k = |f: &FlowId| (f.0.addr, f.0.port, f.0.proto, f.0.ip_version);
        k(&a.0).cmp(&k(&b.0))
    });
    for (h, hop) in idx.iter().enumerate() {
        if !shared.iter().any(|(_, at)| at.contains(&h)) {
            return Err(StitchError::HopSharesNoFlow(hop.name.clone()));
        }
    }
    let mut flows: Vec<SharedFlow> = shared
        .iter()
        .map(|(id, at)| {
            let dirs = at.iter().filter_map(|&h| idx[h].flows.get(id));
            let syn = |d: usize| dirs.clone().any(|s| s[d].syn);
            let initiator = match (syn(0), syn(1)) {
                (true, false) => 0,
                (false, true) => 1,
                _ => {
                    // The direction seen first at the first point that has the flow.
                    let s = dirs.clone().next();
                    let f0 = s.and_then(|s| s[0].first()).unwrap_or(i64::MAX);
                    let f1 = s.and_then(|s| s[1].first()).unwrap_or(i64::MAX);
                    usize::from(f1 < f0)
                }
            };
            SharedFlow {
                id: *id,
                initiator,
                flipped: false,
            }
        })
        .collect();

    // Payload hash comparability per pair.
    let mut full = vec![vec![false; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let c = payload_comparable(&idx[i], &idx[j], &flows);
            full[i][j] = c;
            full[j][i] = c;
        }
    }

    // Order.
    let evidence: Vec<FlowEvidence> = flows
        .iter()
        .map(|f| {
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
        })
        .collect();
    let order: Vec<usize> = if given {
        let order: Vec<usize> = (0..n).collect();
        for (f, flip) in flows.iter_mut().zip(path::orient(&order, &evidence)) {
            f.flipped = flip;
        }
        order
    } else {
        let (order, flipped) = path::infer_order(n, &evidence);
        for (f, flip) in flows.iter_mut().zip(flipped) {
            f.flipped = flip;
        }
        order
    };
    tracing::debug!(order = ?order.iter().map(|&h| &idx[h].name).collect::<Vec<_>>(), "hop order");

    // Links between neighbours.
    let mut links = Vec::with_capacity(2 * (n - 1));
    let mut hop_offset = vec![0i64; n];
    for w in order.windows(2) {
        let (u, d) = (w[0], w[1]);
        let (hu, hd) = (&idx[u], &idx[d]);
        let use_full = full[u][d];
        // Clock offset from one-to-one matches in both directions.
        let (mut fwd_min, mut rev_min): (Option<i64>, Option<i64>) = (None, None);
        let mut both = 0u64;
        let mut missing = [0u64; 2];
        for f in &flows {
            let fwd = f.initiator ^ usize::from(f.flipped);
            match (hu.flows.get(&f.id), hd.flows.get(&f.id)) {
                (Some(a), Some(b)) => {
                    both += 1;
                    let e = pair_evidence(a, b, fwd, use_full);
                    fwd_min = fwd_min.into_iter().chain(e.fwd_min).min();
                    rev_min = rev_min.into_iter().chain(e.rev_min).min();
                }
                (Some(_), None) => missing[0] += 1,
                (None, Some(_)) => missing[1] += 1,
                (None, None) => {}
            }
        }
        let clock = clock::estimate(fwd_min, rev_min);
        hop_offset[d] = hop_offset[u].saturating_add(clock.offset_ns);
        let reverse_clock = ClockEstimate {
            offset_ns: clock.offset_ns.saturating_neg(),
            ..clock
        };
        for (dir, from, to, ck, miss) in [
            (PathDirection::Forward, hu, hd, &clock, missing[0]),
            (PathDirection::Reverse, hd, hu, &reverse_clock, missing[1]),
        ] {
            let mut acc = LinkCounts::default();
            for f in &flows {
                let fwd = f.initiator ^ usize::from(f.flipped);
                let dd = if dir == PathDirection::Forward {
                    fwd
                } else {
                    fwd ^ 1
                };
                if let (Some(a), Some(b)) = (from.flows.get(&f.id), to.flows.get(&f.id)) {
                    link::analyze_direction(
                        &a[dd].side(use_full, from.span),
                        &b[dd].side(use_full, to.span),
                        ck,
                        &mut acc,
                    );
                }
            }
            links.push(LinkReport {
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
                flows: both,
                flows_missing: miss,
                payload_hash: use_full,
            });
        }
    }

    let hops_out = order
        .iter()
        .enumerate()
        .map(|(pos, &h)| {
            let hop = &idx[h];
            HopReport {
                name: hop.name.clone(),
                position: pos,
                packets: hop.packets,
                flows: hop.flows.len() as u64,
                shared_flows: shared.iter().filter(|(_, at)| at.contains(&h)).count() as u64,
                collisions: hop.collisions,
                clock_offset_ms: hop_offset[h] as f64 / 1e6,
                clock_offset_ns: hop_offset[h],
            }
        })
        .collect();
    let flows_out = flows
        .iter()
        .zip(&shared)
        .map(|(f, (_, at))| {
            let k = f.id.0;
            let s = f.initiator ^ usize::from(f.flipped);
            let ip = |a: &[u8; 16]| -> IpAddr {
                if k.ip_version == 6 {
                    IpAddr::from(*a)
                } else {
                    IpAddr::from([a[0], a[1], a[2], a[3]])
                }
            };
            FlowReport {
                src: ip(&k.addr[s]),
                dst: ip(&k.addr[s ^ 1]),
                sport: k.port[s],
                dport: k.port[s ^ 1],
                proto: k.proto,
                hops: order
                    .iter()
                    .filter(|h| at.contains(h))
                    .map(|&h| idx[h].name.clone())
                    .collect(),
            }
        })
        .collect();
    Ok(StitchReport {
        order: if given {
            OrderSource::Given
        } else {
            OrderSource::Inferred
        },
        hops: hops_out,
        links,
        flows: flows_out,
    })
}
