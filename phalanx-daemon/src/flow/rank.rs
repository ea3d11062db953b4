//! Ranking flows by a KPI: the "worst flows" table of the HTTP API
//! (`/api/v1/flows?sort=retransmissions&limit=20`), which stands in for
//! per-flow metric labels.

use std::{cmp::Ordering, collections::BinaryHeap, fmt, str::FromStr};

use super::FlowSummary;

/// KPI a flow list is sorted by, largest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankBy {
    /// `retransmissions`.
    Retransmissions,
    /// `retransmission_rate`: retransmissions per packet.
    RetransmissionRate,
    /// `rtt`: the flow RTT's 99th percentile.
    Rtt,
    /// `srtt`: the smoothed (recent) RTT.
    Srtt,
    /// `jitter`.
    Jitter,
    /// `dup_acks`.
    DupAcks,
    /// `out_of_order`.
    OutOfOrder,
    /// `zero_windows`.
    ZeroWindows,
    /// `packets`.
    Packets,
    /// `bytes`.
    Bytes,
    /// `duration`.
    Duration,
    /// `last_seen`: most recent activity first.
    LastSeen,
}

const NAMES: [(&str, RankBy); 12] = [
    ("retransmissions", RankBy::Retransmissions),
    ("retransmission_rate", RankBy::RetransmissionRate),
    ("rtt", RankBy::Rtt),
    ("srtt", RankBy::Srtt),
    ("jitter", RankBy::Jitter),
    ("dup_acks", RankBy::DupAcks),
    ("out_of_order", RankBy::OutOfOrder),
    ("zero_windows", RankBy::ZeroWindows),
    ("packets", RankBy::Packets),
    ("bytes", RankBy::Bytes),
    ("duration", RankBy::Duration),
    ("last_seen", RankBy::LastSeen),
];

/// An unknown sort key; the message lists the valid ones.
#[derive(Debug, thiserror::Error)]
#[error("unknown sort key {0:?}; valid keys: {valid}", valid = NAMES.map(|(n, _)| n).join(", "))]
pub struct UnknownRankKey(pub String);

impl FromStr for RankBy {
    type Err = UnknownRankKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|&(_, k)| k)
            // Echo a bounded prefix: the key comes from a request.
            .ok_or_else(|| UnknownRankKey(s.chars().take(32).collect()))
    }
}

impl fmt::Display for RankBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = NAMES
            .iter()
            .find(|(_, k)| k == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl RankBy {
    /// The flow's value; flows without one (no RTT sample yet) rank last.
    pub fn value(self, f: &FlowSummary) -> Option<f64> {
        Some(match self {
            RankBy::Retransmissions => f64::from(f.retransmissions),
            RankBy::RetransmissionRate => {
                if f.packets == 0 {
                    return None;
                }
                f64::from(f.retransmissions) / f.packets as f64
            }
            RankBy::Rtt => f.rtt.p99_ms?,
            RankBy::Srtt => f.srtt_ms?,
            RankBy::Jitter => f.jitter_ms?,
            RankBy::DupAcks => f64::from(f.dup_acks),
            RankBy::OutOfOrder => f64::from(f.out_of_order),
            RankBy::ZeroWindows => f64::from(f.zero_windows),
            RankBy::Packets => f.packets as f64,
            RankBy::Bytes => f.bytes as f64,
            RankBy::Duration => f.duration_s,
            RankBy::LastSeen => f.last_ts_ns as f64,
        })
    }
}

/// Where a flow stands in a ranked list: its value, its last activity and
/// its slot in the table, the last tie-break, so no two flows tie.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    value: Option<f64>,
    /// A second key, larger first (see [`TopK::then_by`]); 0 without.
    then: u64,
    last_ts_ns: u64,
    slot: u32,
}

impl Position {
    /// Flow `f`'s position by `by`; `slot` tells apart flows otherwise equal.
    pub fn of(by: RankBy, slot: u32, f: &FlowSummary) -> Self {
        Self {
            value: by.value(f),
            then: 0,
            last_ts_ns: f.last_ts_ns,
            slot,
        }
    }

    /// Ranked order: the largest value first (no value last), then the
    /// most recently active, then the lower slot, so pages are stable.
    fn rank(&self, other: &Self) -> Ordering {
        match (self.value, other.value) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
        .then(other.then.cmp(&self.then))
        .then(other.last_ts_ns.cmp(&self.last_ts_ns))
        .then(self.slot.cmp(&other.slot))
    }
}

/// Where the next page of a flow list starts: a table slot, or for a list
/// ranked by a key, the position of the previous page's last flow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cursor {
    /// Table order, from this slot on.
    Slot(u32),
    /// Ranked by the key, after this position.
    After(RankBy, Position),
}

/// A cursor that is not one this API gave out.
#[derive(Debug, thiserror::Error)]
#[error("bad cursor: pass back the next_cursor of the previous page, with the same sort")]
pub struct BadCursor;

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Slot(s) => write!(f, "s{s}"),
            Cursor::After(by, p) => {
                write!(f, "{by}.")?;
                match p.value {
                    Some(v) => write!(f, "{:x}", v.to_bits())?,
                    None => f.write_str("n")?,
                }
                write!(f, ".{}.{}", p.last_ts_ns, p.slot)
            }
        }
    }
}

impl FromStr for Cursor {
    type Err = BadCursor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A ranked cursor has dots, and `srtt.…` starts with `s` too.
        if let Some(slot) = s.strip_prefix('s').filter(|r| !r.contains('.')) {
            return slot.parse().map(Cursor::Slot).map_err(|_| BadCursor);
        }
        let mut parts = s.split('.');
        let (Some(key), Some(value), Some(ts), Some(slot), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(BadCursor);
        };
        let value = match value {
            "n" => None,
            v => Some(f64::from_bits(
                u64::from_str_radix(v, 16).map_err(|_| BadCursor)?,
            )),
        };
        Ok(Cursor::After(
            key.parse().map_err(|_| BadCursor)?,
            Position {
                value,
                then: 0,
                last_ts_ns: ts.parse().map_err(|_| BadCursor)?,
                slot: slot.parse().map_err(|_| BadCursor)?,
            },
        ))
    }
}

/// A kept flow, ordered by rank (the heap's top is the one ranked last).
struct Kept(Position, FlowSummary);

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.rank(&other.0)
    }
}

/// The first `limit` flows by a key after a position, kept while the flows
/// are offered one at a time: memory for `limit` flows, however many are
/// offered.
pub struct TopK {
    by: RankBy,
    then: fn(&FlowSummary) -> u64,
    limit: usize,
    after: Option<Position>,
    kept: BinaryHeap<Kept>,
}

impl TopK {
    /// Keeps the first `limit` flows by `by` ranked after `after`.
    pub fn new(by: RankBy, limit: usize, after: Option<Position>) -> Self {
        Self {
            by,
            then: |_| 0,
            limit,
            after,
            kept: BinaryHeap::with_capacity(limit.min(1 << 16) + 1),
        }
    }

    /// Flows equal by the key are ranked by `then`, largest first, before
    /// their last activity.
    pub fn then_by(mut self, then: fn(&FlowSummary) -> u64) -> Self {
        self.then = then;
        self
    }

    /// Offers the flow in `slot`; copied only when it ranks among the kept.
    pub fn offer(&mut self, slot: u32, f: &FlowSummary) {
        let mut p = Position::of(self.by, slot, f);
        p.then = (self.then)(f);
        if self.after.is_some_and(|a| p.rank(&a) != Ordering::Greater) {
            return;
        }
        if self.kept.len() >= self.limit {
            match self.kept.peek() {
                Some(last) if p.rank(&last.0) == Ordering::Less => {}
                _ => return,
            }
        }
        self.kept.push(Kept(p, f.clone()));
        if self.kept.len() > self.limit {
            self.kept.pop();
        }
    }

    /// The kept flows, first ranked first, with their positions.
    pub fn into_sorted(self) -> Vec<(Position, FlowSummary)> {
        self.kept
            .into_sorted_vec()
            .into_iter()
            .map(|Kept(p, f)| (p, f))
            .collect()
    }
}

/// The `limit` flows with the largest values, largest first (ties: the
/// most recently active first, then the earlier in `flows`).
pub fn top(flows: &[FlowSummary], by: RankBy, limit: usize) -> Vec<FlowSummary> {
    let mut k = TopK::new(by, limit, None);
    for (i, f) in flows.iter().enumerate() {
        k.offer(i as u32, f);
    }
    k.into_sorted().into_iter().map(|(_, f)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_unknown_lists_valid_ones() {
        for (n, k) in NAMES {
            assert_eq!(n.parse::<RankBy>().ok(), Some(k));
            assert_eq!(k.to_string(), n);
        }
        let e = "retrans".parse::<RankBy>().expect_err("unknown");
        assert!(e
            .to_string()
            .contains("retransmissions, retransmission_rate"));
        // A request's 50 KB key is not echoed back whole.
        let e = "x".repeat(50_000).parse::<RankBy>().expect_err("unknown");
        assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
    }

    /// Flows of 1 to 7 packets, several tied on each count.
    fn flows() -> Vec<FlowSummary> {
        let mut t = crate::flow::FlowTable::new(crate::flow::FlowConfig::default());
        for port in 0..200u16 {
            for k in 0..=(port % 7) {
                t.ingest(&crate::flow::udp_record(1024 + port, 1_000 + u64::from(k)));
            }
        }
        t.snapshot()
    }

    #[test]
    fn ranked_pages_list_every_flow_once_in_rank_order() {
        let all = flows();
        let want: Vec<u16> = top(&all, RankBy::Packets, all.len())
            .iter()
            .map(|f| f.sport)
            .collect();
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let mut k = TopK::new(RankBy::Packets, 17, after);
            for (i, f) in all.iter().enumerate() {
                k.offer(i as u32, f);
            }
            let page = k.into_sorted();
            let Some((last, _)) = page.last() else { break };
            // The cursor goes out as text and comes back.
            let cursor = Cursor::After(RankBy::Packets, *last).to_string();
            let Ok(Cursor::After(_, p)) = cursor.parse() else {
                panic!("cursor {cursor} does not parse back");
            };
            after = Some(p);
            got.extend(page.iter().map(|(_, f)| f.sport));
        }
        assert_eq!(got, want);
        assert!(all[..7].windows(2).any(|w| w[0].packets != w[1].packets));
    }

    #[test]
    fn foreign_cursors_are_refused() {
        for bad in [
            "",
            "s",
            "sx",
            "rtt",
            "rtt.zz.1.2",
            "nope.n.1.2",
            "rtt.n.1.2.3",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        assert_eq!("s42".parse::<Cursor>().ok(), Some(Cursor::Slot(42)));
        // `srtt` starts like a slot cursor.
        assert!(matches!(
            "srtt.n.7.3".parse::<Cursor>(),
            Ok(Cursor::After(RankBy::Srtt, _))
        ));
    }
}
