//! Holes in one direction's sequence space, as seen at the vantage point.
//!
//! When a segment starts above the highest sequence seen so far, the bytes
//! in between have not passed the vantage point: a hole. A later segment
//! filling a hole was either reordered (arrives soon) or lost upstream of
//! the vantage point and retransmitted by the sender (arrives at least one
//! vantage-to-sender round trip after the hole opened). The caller makes
//! that call; this module keeps the holes with their opening time, what
//! the sender stamped on the packet that opened them (its IP ID and TSval:
//! a later-sent fill is a resend whatever the timing), and the packet
//! index at which they opened (for the RFC 4737 reorder extent).

use super::seq;

/// Holes tracked per direction; beyond this the oldest is forgotten (a
/// fill of a forgotten hole then counts as a retransmission, not as a late
/// fill). An unpaced sender at 2 % loss leaves more than 16 open at once.
pub const MAX_HOLES: usize = 64;

/// One missing sequence range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    /// First missing byte.
    pub start: u32,
    /// One past the last missing byte.
    pub end: u32,
    /// When the hole opened.
    pub t_ns: u64,
    /// Direction packet index of the packet that opened it.
    pub idx: u64,
    /// The stamps of the packet that opened it.
    pub opener: Stamp,
}

/// What the sender stamped on a packet: when it was sent, in the sender's
/// own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// IPv4 identification (low 16 bits; 0 for IPv6).
    pub ip_id: u16,
    /// TSval, when the packet carried the timestamp option.
    pub tsval: Option<u32>,
}

/// What a fill found: the earliest overlapped hole's opening time and
/// index, and how many missing bytes it supplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Bytes of the holes this fill covered.
    pub bytes: u32,
    /// When the (earliest) filled hole opened.
    pub t_ns: u64,
    /// Packet index at which it opened.
    pub idx: u64,
    /// The stamps of the packet that opened it.
    pub opener: Stamp,
}

/// The holes of one direction.
#[derive(Clone, Debug, Default)]
pub struct Holes {
    v: Vec<Hole>,
}

impl Holes {
    /// Opens the hole `[start, end)`.
    pub fn open(&mut self, start: u32, end: u32, t_ns: u64, idx: u64, opener: Stamp) {
        if self.v.capacity() == 0 {
            // Most flows never have more than a few holes open.
            self.v.reserve_exact(4);
        }
        if self.v.len() >= MAX_HOLES {
            // Forget the oldest: bounded state beats perfect recall.
            self.v.remove(0);
        }
        self.v.push(Hole {
            start,
            end,
            t_ns,
            idx,
            opener,
        });
    }

    /// Whether no hole is open.
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// Removes `[s, e)` from the holes; returns the earliest overlapped hole.
    pub fn fill(&mut self, s: u32, e: u32) -> Option<Fill> {
        let mut found: Option<Fill> = None;
        let mut i = 0;
        while i < self.v.len() {
            let h = self.v[i];
            if seq::lt(s, h.end) && seq::lt(h.start, e) {
                let covered = seq::dist(seq::max(s, h.start), seq::min(e, h.end));
                let bytes = found.map_or(0, |f| f.bytes).saturating_add(covered);
                found = Some(match found {
                    Some(f) if f.t_ns <= h.t_ns => Fill { bytes, ..f },
                    _ => Fill {
                        bytes,
                        t_ns: h.t_ns,
                        idx: h.idx,
                        opener: h.opener,
                    },
                });
                let left = seq::lt(h.start, s);
                let right = seq::lt(e, h.end);
                match (left, right) {
                    (true, true) => {
                        self.v[i].end = s;
                        // Bounded: at most one split per fill, MAX_HOLES + 1 holes.
                        if self.v.len() <= MAX_HOLES {
                            self.v.insert(i + 1, Hole { start: e, ..h });
                            i += 1;
                        }
                    }
                    (true, false) => self.v[i].end = s,
                    (false, true) => self.v[i].start = e,
                    (false, false) => {
                        self.v.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        found
    }

    /// Drops holes the receiver has acknowledged (the data reached it by a
    /// path the vantage point does not see).
    pub fn acked(&mut self, ack: u32) {
        self.v.retain(|h| seq::lt(ack, h.end));
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.v.capacity() * std::mem::size_of::<Hole>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_splits_and_reports_earliest() {
        let mut h = Holes::default();
        let opener = Stamp::default();
        h.open(100, 200, 5, 1, opener);
        h.open(300, 400, 9, 4, opener);
        let f = |bytes, t_ns, idx| {
            Some(Fill {
                bytes,
                t_ns,
                idx,
                opener,
            })
        };
        assert_eq!(h.fill(150, 160), f(10, 5, 1));
        assert_eq!(h.fill(150, 160), None, "already filled");
        assert_eq!(h.fill(190, 310), f(20, 5, 1), "10 + 10 bytes of two holes");
        assert_eq!(h.fill(100, 150), f(50, 5, 1));
        assert_eq!(h.fill(160, 190), f(30, 5, 1));
        assert_eq!(h.fill(310, 400), f(90, 9, 4));
        assert!(h.is_empty());
    }

    #[test]
    fn bounded_and_wraps() {
        let mut h = Holes::default();
        let base = u32::MAX - 1000;
        for i in 0..40u32 {
            let s = base.wrapping_add(i * 100);
            h.open(s, s.wrapping_add(50), u64::from(i), 0, Stamp::default());
        }
        assert!(h.v.len() <= MAX_HOLES);
        h.acked(base.wrapping_add(40 * 100));
        assert!(h.is_empty(), "all holes acked across the wrap");
    }
}
