//! Copies of one packet captured at two points.
//!
//! `tcpdump -i any` on a router, a bridge or a container host, two taps
//! merged into one file, or a daemon attached to both interfaces a packet
//! is forwarded between, record every packet twice: once per capture
//! point, a few microseconds apart, the second copy with a TTL one lower
//! after a router. Counted as packets they are retransmissions and
//! duplicate ACKs that never happened (tcptrace's "hardware dups").
//!
//! A copy carries the fields no router changes (IP ID, sequence and
//! acknowledgment numbers, payload length, timestamps) of a recent
//! packet of the same direction, and either a different TTL (a router
//! between the two points) within [`WINDOW_NS`], or the same TTL and a set
//! IP ID within [`SAME_TTL_WINDOW_NS`]. A re-sent segment or a repeated
//! ACK is a new packet, but not always with a new IP ID (some stacks re-send
//! with the old one, 181 ms later in `zeek_pppoe-over-qinq.pcap`), and
//! without an IP ID (IPv6, or a stack that sends 0) nothing but the TTL
//! tells a copy from a repeat: so the same TTL needs a set IP ID and a gap
//! shorter than any re-send could follow.

use phalanx_common::PacketMeta;

/// Packets remembered, table-wide: copies come microseconds apart, so
/// the last thousand or so packets hold the original of nearly every copy
/// at a fixed cost (no per-flow state; 40 KB).
const SLOTS: usize = 1024;
/// How far apart two copies of one packet with different TTLs may be
/// captured, ns.
pub const WINDOW_NS: u64 = 200_000_000;
/// ... with the same TTL, ns.
pub const SAME_TTL_WINDOW_NS: u64 = 1_000_000;

/// One remembered packet: the fields a copy shares with it, when it
/// passed and its TTL.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: Key,
    at_ns: u64,
    ttl: u8,
    /// 0 for an empty slot, else 1 + the copies seen.
    seen: u8,
}

/// The fields no router changes that tell packets of one flow direction
/// apart, kept whole (a folded fingerprint let two segments of a bulk
/// upload with the same payload collide): sequence and acknowledgment
/// numbers, IP ID, payload length, TSval and TSecr, and the direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Key([u64; 3]);

impl Key {
    #[inline]
    fn of(flow: u32, rec: &PacketMeta) -> Self {
        Self([
            u64::from(rec.seq) << 32 | u64::from(rec.ack),
            u64::from(rec.ip_id as u16) << 48
                | u64::from(rec.payload_len & 0xffff) << 32
                | u64::from(rec.tsval),
            u64::from(flow) << 32 | u64::from(rec.tsecr),
        ])
    }

    /// Its slot.
    #[inline]
    fn slot(&self) -> usize {
        let [a, b, c] = self.0;
        ((a ^ b.rotate_left(21) ^ c.rotate_left(42)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54)
            as usize
            % SLOTS
    }
}

/// Recent packets (direct-mapped: a newer packet takes an older one's
/// slot).
#[derive(Clone, Debug)]
pub struct CopyCache {
    slots: Box<[Slot]>,
}

impl Default for CopyCache {
    fn default() -> Self {
        Self {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
        }
    }
}

impl CopyCache {
    /// Whether `rec`, of the flow and direction numbered `flow` (at most
    /// one live flow direction has a number), is a copy of a recent packet:
    /// then the number of copies of that packet seen so far (1 for the
    /// first copy). Otherwise it is remembered.
    #[inline]
    pub fn copy_of_recent(&mut self, flow: u32, rec: &PacketMeta) -> Option<u8> {
        let key = Key::of(flow, rec);
        let slot = &mut self.slots[key.slot()];
        if slot.key == key && slot.seen != 0 {
            let gap = rec.ts_ns.saturating_sub(slot.at_ns);
            let apart = if rec.ttl != slot.ttl {
                gap <= WINDOW_NS
            } else {
                rec.ip_id != 0 && gap <= SAME_TTL_WINDOW_NS
            };
            if apart {
                slot.seen = slot.seen.saturating_add(1);
                return Some(slot.seen - 1);
            }
        }
        *slot = Slot {
            key,
            at_ns: rec.ts_ns,
            ttl: rec.ttl,
            seen: 1,
        };
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn pkt(ip_id: u32, seq: u32, ttl: u8, ts_ns: u64) -> PacketMeta {
        let mut m = PacketMeta::zeroed();
        m.ip_id = ip_id;
        m.seq = seq;
        m.ttl = ttl;
        m.ts_ns = ts_ns;
        m.payload_len = 100;
        m
    }

    #[test]
    fn a_second_capture_point_is_a_copy_a_resend_is_not() {
        let mut c = CopyCache::default();
        let mut copy = |p: PacketMeta| c.copy_of_recent(42, &p);
        assert_eq!(copy(pkt(7, 1000, 64, 0)), None);
        assert_eq!(copy(pkt(7, 1000, 63, 20_000)), Some(1), "after the router");
        assert_eq!(copy(pkt(7, 1000, 62, 40_000)), Some(2), "a third point");
        assert_eq!(copy(pkt(9, 1000, 64, 300 * MS)), None, "re-sent: new IP ID");
        assert_eq!(copy(pkt(9, 1000, 63, 501 * MS)), None, "too long after");
        assert_eq!(copy(pkt(5, 1, 64, 1000 * MS)), None);
        assert_eq!(
            copy(pkt(5, 1, 64, 1000 * MS + 500_000)),
            Some(1),
            "two taps on one segment"
        );
        assert_eq!(
            copy(pkt(5, 1, 64, 1181 * MS)),
            None,
            "re-sent with the old IP ID"
        );
        let mut other = pkt(7, 1000, 63, 1181 * MS + 1);
        other.ip_id = 7;
        assert_eq!(c.copy_of_recent(43, &other), None, "another flow");
    }

    #[test]
    fn segments_of_one_upload_are_never_copies_of_each_other() {
        // A bulk upload of identical bytes: segments 1448 bytes apart with
        // IP IDs counting up, the same TSval and TSecr within a millisecond.
        let mut c = CopyCache::default();
        for k in 0..200_000u32 {
            let mut m = pkt(1000 + k, 1 + 1448 * k, 64, u64::from(k) * 1000);
            m.payload_len = 1448;
            m.tsval = 7 + k / 1000;
            m.tsecr = 3;
            assert_eq!(c.copy_of_recent(9, &m), None, "segment {k}");
        }
    }

    #[test]
    fn without_an_ip_id_only_another_ttl_proves_a_copy() {
        let mut c = CopyCache::default();
        assert_eq!(c.copy_of_recent(1, &pkt(0, 1, 64, 0)), None);
        assert_eq!(
            c.copy_of_recent(1, &pkt(0, 1, 64, 5)),
            None,
            "a repeated ACK"
        );
        assert_eq!(c.copy_of_recent(1, &pkt(0, 1, 63, 6)), Some(1));
    }
}
