//! Hop order along the path.
//!
//! Evidence for "hop i is upstream of hop j" comes from the packets matched
//! at both, per flow, in the flow's initiator orientation (the direction of
//! its SYN, or of its first packet):
//!
//! 1. TTL / hop limit: a router decrements it, so the upstream copy of a
//!    packet has the larger value (compared per direction).
//! 2. Timing in both directions: with `f = min(t_j - t_i)` over packets going
//!    i -> j and `r = min(t_i - t_j)` over packets going back, `f + r` is the
//!    sum of the two delay floors, which does not depend on the clock offset
//!    and is positive exactly when i is upstream for the initiator direction.
//! 3. Timing in one direction only (median apparent delay): only right when
//!    the clocks are close; the last resort.
//!
//! Flows are aligned to each other (a flow opened from the far end runs the
//! path backwards), then each hop is ranked by how many hops it precedes.

/// What the packets of one flow matched at hops `i` and `j` say about their order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairEvidence {
    /// TTL votes: positive when i's copies carry larger TTLs going i -> j.
    pub ttl_votes: i64,
    /// Minimum of `t_j - t_i` over initiator-direction matches (ns).
    pub fwd_min: Option<i64>,
    /// Minimum of `t_i - t_j` over reverse-direction matches (ns).
    pub rev_min: Option<i64>,
    /// Median of `t_j - t_i` over initiator-direction matches (ns).
    pub fwd_median: Option<i64>,
    /// Median of `t_i - t_j` over reverse-direction matches (ns).
    pub rev_median: Option<i64>,
    /// Packets matched at both hops.
    pub matched: u64,
}

fn sign(v: i128) -> i8 {
    match v.cmp(&0) {
        std::cmp::Ordering::Greater => 1,
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
    }
}

impl PairEvidence {
    /// +1: i is upstream of j for the initiator direction; -1: downstream; 0: unknown.
    pub fn verdict(&self) -> i8 {
        if self.ttl_votes != 0 {
            return sign(i128::from(self.ttl_votes));
        }
        if let (Some(f), Some(r)) = (self.fwd_min, self.rev_min) {
            return sign(i128::from(f) + i128::from(r));
        }
        match (self.fwd_median, self.rev_median) {
            (Some(f), _) => sign(i128::from(f)),
            (None, Some(r)) => sign(i128::from(r)),
            (None, None) => 0,
        }
    }
}

/// The evidence of one flow: `(i, j, evidence)` with `i < j`.
#[derive(Clone, Debug, Default)]
pub struct FlowEvidence {
    /// Per hop pair.
    pub pairs: Vec<(usize, usize, PairEvidence)>,
}

impl FlowEvidence {
    fn weight(&self) -> u64 {
        self.pairs.iter().map(|p| p.2.matched).sum()
    }
}

/// Infers the hop order; returns it with, per flow, whether the flow runs
/// the path against its initiator direction.
pub fn infer_order(hops: usize, flows: &[FlowEvidence]) -> (Vec<usize>, Vec<bool>) {
    // prec[i][j] > 0: i precedes j (weighted by matched packets).
    let mut prec = vec![vec![0i128; hops]; hops];
    let mut flipped = vec![false; flows.len()];
    let mut by_weight: Vec<usize> = (0..flows.len()).collect();
    by_weight.sort_by_key(|&f| std::cmp::Reverse(flows[f].weight()));
    for f in by_weight {
        let valid = || {
            flows[f]
                .pairs
                .iter()
                .filter(|(i, j, _)| *i < hops && *j < hops)
        };
        let agreement: i128 = valid()
            .map(|(i, j, e)| i128::from(e.verdict()) * i128::from(sign(prec[*i][*j])))
            .sum();
        let s: i128 = if agreement < 0 { -1 } else { 1 };
        flipped[f] = agreement < 0;
        for (i, j, e) in valid() {
            let w = s * i128::from(e.verdict()) * i128::from(e.matched.max(1));
            prec[*i][*j] += w;
            prec[*j][*i] -= w;
        }
    }
    let score = |i: usize| -> i64 { prec[i].iter().map(|&v| i64::from(sign(v))).sum() };
    let mut order: Vec<usize> = (0..hops).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(score(i)), i));
    (order, flipped)
}

/// For a given hop order, whether each flow runs it against its initiator direction.
pub fn orient(order: &[usize], flows: &[FlowEvidence]) -> Vec<bool> {
    let mut pos = vec![usize::MAX; order.len()];
    for (p, &h) in order.iter().enumerate() {
        if let Some(slot) = pos.get_mut(h) {
            *slot = p;
        }
    }
    flows
        .iter()
        .map(|fe| {
            let agreement: i64 = fe
                .pairs
                .iter()
                .filter_map(|(i, j, e)| {
                    let (pi, pj) = (*pos.get(*i)?, *pos.get(*j)?);
                    let along = if pi < pj { 1 } else { -1 };
                    Some(along * i64::from(e.verdict()))
                })
                .sum();
            agreement < 0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ttl: i64, f: Option<i64>, r: Option<i64>) -> PairEvidence {
        PairEvidence {
            ttl_votes: ttl,
            fwd_min: f,
            rev_min: r,
            matched: 10,
            ..Default::default()
        }
    }

    #[test]
    fn two_way_timing_ignores_clock_offset() {
        // j is 20 s behind i; floors of 1 ms each way.
        let e = ev(
            0,
            Some(1_000_000 - 20_000_000_000),
            Some(1_000_000 + 20_000_000_000),
        );
        assert_eq!(e.verdict(), 1, "i upstream despite the offset");
        let e = ev(
            0,
            Some(-1_000_000 - 20_000_000_000),
            Some(-1_000_000 + 20_000_000_000),
        );
        assert_eq!(e.verdict(), -1);
        assert_eq!(ev(-3, Some(5), Some(5)).verdict(), -1, "TTL wins");
    }

    #[test]
    fn order_and_alignment() {
        // True order 2, 0, 1 for flow A; flow B was opened from the far end.
        let up = |i, j| {
            ev(
                0,
                Some(if i == 2 || (i, j) == (0, 1) { 1 } else { -3 }),
                Some(1),
            )
        };
        let a = FlowEvidence {
            pairs: vec![
                (0, 1, up(0, 1)),
                (0, 2, ev(-1, None, None)),
                (1, 2, ev(-2, None, None)),
            ],
        };
        let b = FlowEvidence {
            pairs: vec![(0, 1, ev(-1, None, None)), (0, 2, ev(1, None, None))],
        };
        let (order, flipped) = infer_order(3, &[a.clone(), b.clone()]);
        assert_eq!(order, vec![2, 0, 1]);
        assert_eq!(flipped, vec![false, true]);
        assert_eq!(orient(&[1, 0, 2], &[a, b]), vec![true, false]);
    }
}
