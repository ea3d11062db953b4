//! Clock offset between two observation points.
//!
//! Packets going downstream (upstream point U, then downstream point D)
//! show an apparent delay `t_D - t_U = d_fwd + o`, where `o` is D's clock
//! minus U's clock; packets of the same flows going back show
//! `t_U - t_D = d_rev - o`. Taking the minimum of each over many packets
//! removes queueing, leaving the propagation and forwarding floor; with a
//! floor that is the same both ways, `o = (min_fwd - min_rev) / 2` and the
//! floor is `(min_fwd + min_rev) / 2`. This is the NTP estimate applied to
//! passive captures: its error is half the asymmetry of the two floors.
//!
//! With traffic in one direction only the offset is not observable: a
//! negative minimum proves an offset of at least that much (the floor is
//! then taken as zero), otherwise the clocks are assumed synchronised.

use serde::Serialize;

/// How an offset was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMethod {
    /// From the minimum apparent delays of both directions.
    TwoWay,
    /// One direction only, and its minimum was negative: the offset that
    /// makes the smallest delay zero.
    OneWayFloor,
    /// No evidence of an offset: clocks taken as synchronised.
    Assumed,
}

/// Offset of a downstream point's clock relative to its upstream neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockEstimate {
    /// Downstream clock minus upstream clock (ns).
    pub offset_ns: i64,
    /// Estimated one-way delay floor of the link (ns, never negative).
    pub floor_ns: i64,
    /// How the offset was obtained.
    pub method: ClockMethod,
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Estimates the offset from `fwd_min` = min(t_D - t_U) over packets going
/// downstream and `rev_min` = min(t_U - t_D) over packets coming back.
pub fn estimate(fwd_min: Option<i64>, rev_min: Option<i64>) -> ClockEstimate {
    match (fwd_min, rev_min) {
        (Some(f), Some(r)) => {
            let (f, r) = (i128::from(f), i128::from(r));
            ClockEstimate {
                offset_ns: clamp((f - r) / 2),
                floor_ns: clamp((f + r) / 2).max(0),
                method: ClockMethod::TwoWay,
            }
        }
        (Some(f), None) if f < 0 => ClockEstimate {
            offset_ns: f,
            floor_ns: 0,
            method: ClockMethod::OneWayFloor,
        },
        (Some(f), None) => ClockEstimate {
            offset_ns: 0,
            floor_ns: f,
            method: ClockMethod::Assumed,
        },
        (None, Some(r)) if r < 0 => ClockEstimate {
            offset_ns: r.saturating_neg(),
            floor_ns: 0,
            method: ClockMethod::OneWayFloor,
        },
        (None, Some(r)) => ClockEstimate {
            offset_ns: 0,
            floor_ns: r,
            method: ClockMethod::Assumed,
        },
        (None, None) => ClockEstimate {
            offset_ns: 0,
            floor_ns: 0,
            method: ClockMethod::Assumed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_way_recovers_offset_and_floor() {
        // D is 17.3 s behind; floor 150 us each way.
        let o = -17_300_000_000i64;
        let e = estimate(Some(150_000 + o), Some(150_000 - o));
        assert_eq!(e.offset_ns, o);
        assert_eq!(e.floor_ns, 150_000);
        assert_eq!(e.method, ClockMethod::TwoWay);
    }

    #[test]
    fn asymmetric_floors_bias_by_half_the_difference() {
        let e = estimate(Some(300), Some(100));
        assert_eq!((e.offset_ns, e.floor_ns), (100, 200));
    }

    #[test]
    fn one_way() {
        assert_eq!(estimate(Some(-5_000), None).offset_ns, -5_000);
        assert_eq!(estimate(None, Some(-5_000)).offset_ns, 5_000);
        let e = estimate(Some(700), None);
        assert_eq!(
            (e.offset_ns, e.floor_ns, e.method),
            (0, 700, ClockMethod::Assumed)
        );
        assert_eq!(estimate(None, None).offset_ns, 0);
        // Garbage timestamps must not overflow.
        let e = estimate(Some(i64::MIN), Some(i64::MAX));
        assert!(e.floor_ns >= 0);
    }
}
