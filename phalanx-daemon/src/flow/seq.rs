//! RFC 1982 serial-number arithmetic for 32-bit TCP sequence numbers and
//! timestamps: comparisons stay correct across wrap-around.

/// `a < b` in sequence space.
#[inline]
pub fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` in sequence space.
#[inline]
pub fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// `a > b` in sequence space.
#[inline]
pub fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}

/// `a >= b` in sequence space.
#[inline]
pub fn ge(a: u32, b: u32) -> bool {
    le(b, a)
}

/// The later of two sequence numbers.
#[inline]
pub fn max(a: u32, b: u32) -> u32 {
    if lt(a, b) {
        b
    } else {
        a
    }
}

/// The earlier of two sequence numbers.
#[inline]
pub fn min(a: u32, b: u32) -> u32 {
    if lt(a, b) {
        a
    } else {
        b
    }
}

/// Bytes from `a` forward to `b` (0 when `b` is not after `a`).
#[inline]
pub fn dist(a: u32, b: u32) -> u32 {
    if lt(a, b) {
        b.wrapping_sub(a)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_survive_wrap() {
        assert!(lt(u32::MAX - 5, 3), "sequence just below wrap is before 3");
        assert!(gt(3, u32::MAX - 5));
        assert!(le(7, 7) && ge(7, 7));
        assert_eq!(max(u32::MAX, 2), 2);
        assert_eq!(min(u32::MAX, 2), u32::MAX);
        assert_eq!(dist(u32::MAX - 1, 2), 4);
        assert_eq!(dist(10, 5), 0);
    }
}
