//! RFC 3550 interarrival jitter estimator.
//!
//! RFC 3550 section 6.4.1: for consecutive packets i-1 and i with transit
//! times T, `D = T(i) - T(i-1)` and `J += (|D| - J) / 16`. Two inputs are
//! used (see the module docs of [`super`]): TCP feeds consecutive RTT
//! samples (a transit time measured on one clock, the vantage point's);
//! UDP feeds arrival times against the mean spacing so far, i.e. it
//! assumes a constant-rate sender, the case RFC 3550 jitter is meant for.

/// RFC 3550 running jitter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Jitter {
    /// Current estimate `J`, in nanoseconds.
    j_ns: f64,
    /// Number of `D` values folded in.
    n: u64,
}

impl Jitter {
    /// Folds in one transit-time difference `D` (nanoseconds).
    #[inline]
    pub fn update(&mut self, d_ns: f64) {
        self.j_ns += (d_ns.abs() - self.j_ns) / 16.0;
        self.n += 1;
    }

    /// The estimate in milliseconds, `None` before the first difference.
    pub fn ms(&self) -> Option<f64> {
        (self.n > 0).then_some(self.j_ns / 1e6)
    }

    /// The estimate in seconds, `None` before the first difference.
    #[inline]
    pub fn seconds(&self) -> Option<f64> {
        (self.n > 0).then_some(self.j_ns / 1e9)
    }

    /// Number of differences folded in so far.
    #[inline]
    pub fn count(&self) -> u64 {
        self.n
    }
}

/// Arrival-only jitter input for UDP: the expected spacing is the mean
/// spacing of all intervals so far, `D(i) = (R(i) - R(i-1)) - (R(i) - R(0)) / i`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ArrivalJitter {
    first_ns: u64,
    last_ns: u64,
    intervals: u64,
    /// The estimator.
    pub jitter: Jitter,
}

impl ArrivalJitter {
    /// Records one arrival at `ts_ns` (arrivals earlier than the previous
    /// one are ignored: records from several CPUs may interleave).
    #[inline]
    pub fn arrive(&mut self, ts_ns: u64, first: bool) {
        if first {
            self.first_ns = ts_ns;
            self.last_ns = ts_ns;
            return;
        }
        if ts_ns < self.last_ns {
            return;
        }
        self.intervals += 1;
        let spacing = (ts_ns - self.last_ns) as f64;
        let mean = (ts_ns - self.first_ns) as f64 / self.intervals as f64;
        self.jitter.update(spacing - mean);
        self.last_ns = ts_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_transit_has_zero_jitter() {
        let mut j = Jitter::default();
        assert_eq!(j.ms(), None);
        for _ in 0..10 {
            j.update(0.0);
        }
        assert_eq!(j.ms(), Some(0.0));
    }

    #[test]
    fn rfc3550_recurrence() {
        let mut j = Jitter::default();
        j.update(16e6);
        assert_eq!(j.ms(), Some(1.0), "16 ms / 16");
        j.update(-16e6);
        assert_eq!(j.ms(), Some(1.9375), "1 + (16 - 1)/16");
    }

    #[test]
    fn constant_rate_udp_has_zero_jitter() {
        let mut a = ArrivalJitter::default();
        for i in 0..50u64 {
            a.arrive(i * 20_000_000, i == 0);
        }
        assert_eq!(a.jitter.ms(), Some(0.0));
    }
}
