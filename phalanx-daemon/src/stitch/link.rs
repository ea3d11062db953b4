//! Per-link figures: what left the upstream point and what reached the
//! downstream one, for one direction of travel.
//!
//! Packets are matched by fingerprint. When a fingerprint occurs more than
//! once at a point (a retransmission with identical headers, or a copy the
//! network made), the occurrences are matched in order of appearance; if the
//! upstream point saw more of them, the ones lost are chosen by time (a
//! downstream copy matches the latest upstream copy that left before it),
//! and if the downstream point saw more, the surplus are duplicates made on
//! the link.

use serde::Serialize;

use super::clock::ClockEstimate;

/// Result of matching the occurrences of one fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupMatch {
    /// `(upstream occurrence, downstream occurrence)`.
    pub pairs: Vec<(usize, usize)>,
    /// Upstream occurrences that never arrived.
    pub lost: Vec<usize>,
    /// Downstream occurrences with no upstream counterpart.
    pub extra: Vec<usize>,
}

/// Matches the occurrences of one fingerprint, both lists in order of
/// appearance and both in the downstream clock.
pub fn match_group(up: &[i64], down: &[i64]) -> GroupMatch {
    let (a, b) = (up.len(), down.len());
    let mut m = GroupMatch::default();
    let mut i = 0;
    for (k, &d) in down.iter().enumerate() {
        let rem_down = b - k;
        // Skip (as lost) an upstream copy only while more copies remain
        // upstream than downstream and a later one also left before `d`.
        while i + 1 < a && a - i > rem_down && up[i + 1] <= d {
            m.lost.push(i);
            i += 1;
        }
        if i < a && !(up[i] > d && rem_down > a - i) {
            m.pairs.push((i, k));
            i += 1;
        } else {
            m.extra.push(k);
        }
    }
    m.lost.extend(i..a);
    m
}

/// Calls `f(upstream, downstream)` for every key of two `(key, index)`
/// lists sorted by key then index; either slice may be empty.
pub(crate) fn join<'a>(
    a: &'a [(u64, u32)],
    b: &'a [(u64, u32)],
    mut f: impl FnMut(&'a [(u64, u32)], &'a [(u64, u32)]),
) {
    let run = |s: &'a [(u64, u32)], at: usize| -> usize {
        let k = s[at].0;
        s[at..].iter().take_while(|e| e.0 == k).count()
    };
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let ka = a.get(i).map(|e| e.0);
        let kb = b.get(j).map(|e| e.0);
        match (ka, kb) {
            (Some(x), Some(y)) if x == y => {
                let (na, nb) = (run(a, i), run(b, j));
                f(&a[i..i + na], &b[j..j + nb]);
                i += na;
                j += nb;
            }
            (Some(x), Some(y)) if x < y => {
                let na = run(a, i);
                f(&a[i..i + na], &[]);
                i += na;
            }
            (Some(_), None) => {
                let na = run(a, i);
                f(&a[i..i + na], &[]);
                i += na;
            }
            (_, Some(_)) => {
                let nb = run(b, j);
                f(&[], &b[j..j + nb]);
                j += nb;
            }
            (None, None) => break,
        }
    }
}

/// Packets that arrived out of upstream order: a packet counts when a
/// packet that left after it upstream arrived before it downstream
/// (RFC 4737 reordering). `pairs` are `(upstream index, downstream index)`.
pub fn count_reordered(pairs: &mut [(u32, u32)]) -> u64 {
    pairs.sort_unstable_by_key(|p| p.1);
    let mut max_up = None;
    let mut n = 0;
    for &(u, _) in pairs.iter() {
        match max_up {
            Some(m) if u < m => n += 1,
            _ => max_up = Some(u),
        }
    }
    n
}

/// One flow direction at one point, for matching.
pub(crate) struct DirectionAtHop<'a> {
    /// Timestamps by observation index (this point's clock).
    pub times: &'a [i64],
    /// `(key, index)` sorted by key then index.
    pub keys: &'a [(u64, u32)],
    /// First and last timestamp of the whole capture at this point.
    pub span: (i64, i64),
}

/// Accumulated figures of one link direction.
#[derive(Clone, Debug, Default)]
pub(crate) struct LinkCounts {
    pub packets: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unmatched: u64,
    pub outside_window: u64,
    pub reordered: u64,
    pub delays_ns: Vec<i64>,
}

/// Matches one flow direction between an upstream and a downstream point.
pub(crate) fn analyze_direction(
    up: &DirectionAtHop<'_>,
    down: &DirectionAtHop<'_>,
    clock: &ClockEstimate,
    acc: &mut LinkCounts,
) {
    let o = clock.offset_ns;
    let fl = clock.floor_ns;
    let time = |s: &DirectionAtHop<'_>, idx: u32| s.times.get(idx as usize).copied().unwrap_or(0);
    let arrives_inside = |t_up: i64| {
        (down.span.0..=down.span.1).contains(&t_up.saturating_add(o).saturating_add(fl))
    };
    let left_inside = |t_down: i64| {
        (up.span.0..=up.span.1).contains(&t_down.saturating_sub(o).saturating_sub(fl))
    };
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut ut = Vec::new();
    let mut dt = Vec::new();
    join(up.keys, down.keys, |us, ds| {
        if ds.is_empty() {
            for &(_, u) in us {
                if arrives_inside(time(up, u)) {
                    acc.packets += 1;
                    acc.lost += 1;
                } else {
                    acc.outside_window += 1;
                }
            }
            return;
        }
        if us.is_empty() {
            for &(_, d) in ds {
                if left_inside(time(down, d)) {
                    acc.unmatched += 1;
                }
            }
            return;
        }
        ut.clear();
        ut.extend(us.iter().map(|&(_, u)| time(up, u).saturating_add(o)));
        dt.clear();
        dt.extend(ds.iter().map(|&(_, d)| time(down, d)));
        let m = match_group(&ut, &dt);
        for &(ui, di) in &m.pairs {
            let (u, d) = (us[ui].1, ds[di].1);
            pairs.push((u, d));
            acc.delays_ns.push(dt[di].saturating_sub(ut[ui]));
        }
        acc.packets += m.pairs.len() as u64;
        acc.delivered += m.pairs.len() as u64;
        for &li in &m.lost {
            if arrives_inside(time(up, us[li].1)) {
                acc.packets += 1;
                acc.lost += 1;
            } else {
                acc.outside_window += 1;
            }
        }
        acc.duplicates += m.extra.len() as u64;
    });
    acc.reordered += count_reordered(&mut pairs);
}

/// Distribution of one-way delays (ms); `None` without samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DelayStats {
    /// Matched packets the figures are computed from.
    pub samples: u64,
    /// Smallest delay.
    pub min: Option<f64>,
    /// Median (nearest rank).
    pub p50: Option<f64>,
    /// 99th percentile (nearest rank).
    pub p99: Option<f64>,
    /// Largest delay.
    pub max: Option<f64>,
    /// Mean delay.
    pub mean: Option<f64>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

impl DelayStats {
    /// Computes the distribution (sorts `delays_ns`).
    pub fn from_ns(delays_ns: &mut [i64]) -> Self {
        delays_ns.sort_unstable();
        let n = delays_ns.len();
        let sum: i128 = delays_ns.iter().map(|&d| i128::from(d)).sum();
        Self {
            samples: n as u64,
            min: delays_ns.first().map(|&d| ms(d)),
            p50: percentile(delays_ns, 50.0).map(ms),
            p99: percentile(delays_ns, 99.0).map(ms),
            max: delays_ns.last().map(|&d| ms(d)),
            mean: (n > 0).then(|| sum as f64 / n as f64 / 1e6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_original_matches_the_retransmission() {
        let m = match_group(&[0, 300_000_000], &[300_500_000]);
        assert_eq!(m.pairs, vec![(1, 0)]);
        assert_eq!(m.lost, vec![0]);
        assert!(m.extra.is_empty());
    }

    #[test]
    fn in_order_when_counts_agree_and_surplus_is_extra() {
        let m = match_group(&[0, 10], &[5, 12]);
        assert_eq!(m.pairs, vec![(0, 0), (1, 1)]);
        let m = match_group(&[0], &[5, 7]);
        assert_eq!((m.pairs, m.extra), (vec![(0, 0)], vec![1]));
        let m = match_group(&[100], &[5, 107]);
        assert_eq!(
            (m.pairs, m.extra),
            (vec![(0, 1)], vec![0]),
            "copy before the original left"
        );
        let m = match_group(&[0, 1, 2], &[]);
        assert_eq!(m.lost, vec![0, 1, 2]);
    }

    #[test]
    fn join_groups_keys() {
        let a = [(1, 0), (3, 1), (3, 4), (5, 2)];
        let b = [(2, 0), (3, 1), (5, 3), (5, 4), (9, 2)];
        let mut seen = Vec::new();
        join(&a, &b, |x, y| seen.push((x.len(), y.len())));
        assert_eq!(seen, vec![(1, 0), (0, 1), (2, 1), (1, 2), (0, 1)]);
    }

    #[test]
    fn reordering_counts_late_packets() {
        let mut p = vec![(0, 0), (2, 1), (1, 2), (3, 3)];
        assert_eq!(count_reordered(&mut p), 1);
        let mut p = vec![(0, 3), (1, 0), (2, 1), (3, 2)];
        assert_eq!(count_reordered(&mut p), 1, "one packet held back");
        assert_eq!(count_reordered(&mut []), 0);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let s = DelayStats::from_ns(&mut [3_000_000, 1_000_000, 2_000_000]);
        assert_eq!(
            (s.min, s.p50, s.max, s.mean),
            (Some(1.0), Some(2.0), Some(3.0), Some(2.0))
        );
    }
}
