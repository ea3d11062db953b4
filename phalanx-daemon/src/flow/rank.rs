//! Ranking flows by a KPI: the "worst flows" table of the HTTP API
//! (`/api/v1/flows?sort=retransmissions&limit=20`), which stands in for
//! per-flow metric labels.

use std::{cmp::Ordering, fmt, str::FromStr};

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

/// The `limit` flows with the largest values, largest first (ties: the
/// most recently active first, so the order is stable between calls).
pub fn top(mut flows: Vec<FlowSummary>, by: RankBy, limit: usize) -> Vec<FlowSummary> {
    let cmp = |a: &FlowSummary, b: &FlowSummary| -> Ordering {
        let (va, vb) = (by.value(a), by.value(b));
        match (va, vb) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
        .then(b.last_ts_ns.cmp(&a.last_ts_ns))
    };
    if limit > 0 && limit < flows.len() {
        flows.select_nth_unstable_by(limit - 1, cmp);
    }
    flows.truncate(limit);
    flows.sort_by(cmp);
    flows
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
}
