//! RTT sample statistics: count, sum, min, max and a quantile sketch.
//!
//! The first [`EXACT_SAMPLES`] samples are kept verbatim, so short flows
//! (and tests) get exact quantiles. Beyond that the samples move into a
//! sparse log-linear sketch (HDR histogram style: exact below
//! `EXACT_BELOW` µs, then `SUB_BUCKETS` equal buckets per power of two,
//! so a bucket's value is within 0.8 % of every sample in it) whose size
//! depends on the spread of the values, not on their number. A bucket index
//! is a shift and a mask away from its sample: no logarithm per sample.

/// Samples kept verbatim before switching to the sketch.
pub const EXACT_SAMPLES: usize = 64;

/// Bits of a sample kept below its leading one bit.
const SUB_BITS: u32 = 6;
/// Buckets per power of two.
const SUB_BUCKETS: u32 = 1 << SUB_BITS;
/// Samples below this many microseconds have a bucket each.
const EXACT_BELOW: u32 = 2 * SUB_BUCKETS;

/// Summary statistics of one series of RTT samples (microseconds).
#[derive(Clone, Debug, Default)]
pub struct SampleStats {
    count: u64,
    sum_us: u64,
    min_us: u32,
    max_us: u32,
    exact: Vec<u32>,
    /// (bucket index, count), sorted by index; empty while in exact mode.
    buckets: Vec<(u16, u32)>,
}

/// Quantile summary of a series (milliseconds), as reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub samples: u64,
    /// Smallest sample.
    pub min_ms: f64,
    /// Mean.
    pub avg_ms: f64,
    /// Median (nearest rank).
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

fn bucket_of(us: u32) -> u16 {
    if us < EXACT_BELOW {
        return us as u16;
    }
    // us >> shift keeps the leading one and SUB_BITS bits below it.
    let shift = (31 - us.leading_zeros()) - SUB_BITS;
    let top = us >> shift;
    (EXACT_BELOW + (shift - 1) * SUB_BUCKETS + (top - SUB_BUCKETS)) as u16
}

/// Midpoint of the samples a bucket holds.
fn bucket_value(i: u16) -> f64 {
    let i = u32::from(i);
    if i < EXACT_BELOW {
        return f64::from(i);
    }
    let k = i - EXACT_BELOW;
    let shift = k / SUB_BUCKETS + 1;
    let low = u64::from(SUB_BUCKETS + k % SUB_BUCKETS) << shift;
    let width = 1u64 << shift;
    low as f64 + (width - 1) as f64 / 2.0
}

impl SampleStats {
    /// Adds one sample.
    pub fn add(&mut self, us: u32) {
        if self.count == 0 {
            self.min_us = us;
            self.max_us = us;
        } else {
            self.min_us = self.min_us.min(us);
            self.max_us = self.max_us.max(us);
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(u64::from(us));
        if self.buckets.is_empty() && self.exact.len() < EXACT_SAMPLES {
            self.exact.push(us);
            return;
        }
        if self.buckets.is_empty() {
            let exact = std::mem::take(&mut self.exact);
            for v in exact {
                self.bucket_add(v);
            }
        }
        self.bucket_add(us);
    }

    fn bucket_add(&mut self, us: u32) {
        let b = bucket_of(us);
        match self.buckets.binary_search_by_key(&b, |e| e.0) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (b, 1)),
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest sample in microseconds, if any.
    pub fn min_us(&self) -> Option<u32> {
        (self.count > 0).then_some(self.min_us)
    }

    /// Nearest-rank quantile `q` in microseconds (`q` in 0..=1).
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if self.buckets.is_empty() {
            let mut v = self.exact.clone();
            v.sort_unstable();
            let i = usize::try_from(rank - 1).unwrap_or(0).min(v.len() - 1);
            return Some(f64::from(v[i]));
        }
        let mut seen = 0u64;
        for &(b, n) in &self.buckets {
            seen += u64::from(n);
            if seen >= rank {
                let v = bucket_value(b).clamp(f64::from(self.min_us), f64::from(self.max_us));
                return Some(v);
            }
        }
        Some(f64::from(self.max_us))
    }

    /// The reported summary, `None` without samples.
    pub fn summary(&self) -> Option<Summary> {
        if self.count == 0 {
            return None;
        }
        let ms = |us: f64| us / 1000.0;
        Some(Summary {
            samples: self.count,
            min_ms: ms(f64::from(self.min_us)),
            avg_ms: ms(self.sum_us as f64 / self.count as f64),
            p50_ms: ms(self.quantile_us(0.5).unwrap_or(0.0)),
            p99_ms: ms(self.quantile_us(0.99).unwrap_or(0.0)),
            max_ms: ms(f64::from(self.max_us)),
        })
    }

    /// Heap bytes held by the sketch.
    pub fn heap_bytes(&self) -> usize {
        self.exact.capacity() * 4 + self.buckets.capacity() * 8
    }
}

impl Summary {
    /// Component-wise sum of two summaries: the end-to-end estimate from the
    /// two parts of a round trip on either side of the vantage point.
    pub fn plus(self, o: Summary) -> Summary {
        Summary {
            samples: self.samples + o.samples,
            min_ms: self.min_ms + o.min_ms,
            avg_ms: self.avg_ms + o.avg_ms,
            p50_ms: self.p50_ms + o.p50_ms,
            p99_ms: self.p99_ms + o.p99_ms,
            max_ms: self.max_ms + o.max_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_quantiles_use_nearest_rank() {
        let mut s = SampleStats::default();
        for v in [40, 10, 30, 20] {
            s.add(v);
        }
        assert_eq!(s.quantile_us(0.5), Some(20.0), "lower median of 4");
        assert_eq!(s.quantile_us(0.99), Some(40.0));
        let m = s.summary().expect("has samples");
        assert_eq!(
            (m.samples, m.min_ms, m.max_ms, m.avg_ms),
            (4, 0.01, 0.04, 0.025)
        );
    }

    #[test]
    fn sketch_stays_within_its_accuracy() {
        let mut s = SampleStats::default();
        for v in 1..=10_000u32 {
            s.add(v * 10);
        }
        let p50 = s.quantile_us(0.5).expect("samples");
        let p99 = s.quantile_us(0.99).expect("samples");
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.008, "p50 {p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.008, "p99 {p99}");
        // 10^4 distinct samples: a bucket for each of the 12 below 128 µs,
        // at most 64 per power of two for the ten from 128 µs to 100 ms.
        assert!(s.buckets.len() <= 12 + 10 * SUB_BUCKETS as usize);
        assert!(s.heap_bytes() <= 8 * 1024, "sketch is compact");
        assert_eq!(s.min_us(), Some(10));
    }

    proptest::proptest! {
        #[test]
        fn sketch_counts_each_sample_in_its_own_bucket(
            values in proptest::collection::vec(
                proptest::prop_oneof![0..4u32, 95..105u32, proptest::num::u32::ANY],
                EXACT_SAMPLES + 1..400,
            )
        ) {
            let mut s = SampleStats::default();
            let mut want = std::collections::BTreeMap::new();
            for &v in &values {
                s.add(v);
                *want.entry(bucket_of(v)).or_insert(0u32) += 1;
            }
            let want: Vec<(u16, u32)> = want.into_iter().collect();
            proptest::prop_assert_eq!(&s.buckets, &want);
        }
    }

    #[test]
    fn buckets_are_ordered_and_their_values_within_accuracy() {
        // Every value up to 2^20, then both sides of every power of two and
        // a spread of values up to u32::MAX.
        let wide = (20..32).flat_map(|e| {
            let p = 1u64 << e;
            [p - 1, p, p + 1, p + p / 3, p + p / 2]
        });
        let values = (0..1u64 << 20)
            .chain(wide)
            .chain([u64::from(u32::MAX)])
            .map(|v| v as u32);
        let mut prev = (0u32, 0u16);
        for us in values {
            let b = bucket_of(us);
            assert!(b >= prev.1, "bucket of {us} below that of {}", prev.0);
            let v = bucket_value(b);
            if us < EXACT_BELOW {
                assert_eq!(v, f64::from(us), "small samples are exact");
            } else {
                let err = (v - f64::from(us)).abs() / f64::from(us);
                assert!(err < 0.008, "{us} -> {v} ({err})");
            }
            prev = (us, b);
        }
    }

    #[test]
    fn zero_and_huge_samples_do_not_panic() {
        let mut s = SampleStats::default();
        for i in 0..200 {
            s.add(if i % 2 == 0 { 0 } else { u32::MAX });
        }
        assert!(s.summary().is_some());
    }
}
