//! GSO splitting: the wire segments of a TCP GSO super-packet record.
//!
//! tc sees a sender's GSO super-packets before they are segmented, as one
//! record with `segs` set; points downstream see the segments. Anything
//! that compares one point's packets with another's (multi-hop stitching)
//! turns such a record into the segments Linux's software segmentation
//! puts on the wire.

use phalanx_common::PacketMeta;

/// Segment size of a TCP GSO record without the kernel's `gso_size` (a
/// record from elsewhere than tc) of `payload` bytes in `segs` segments:
/// every segment but the last has the same size `g`, so
/// `(segs - 1) * g < payload <= segs * g`. The flow direction's known size
/// (its largest single segment, or an earlier GSO split) when it fits, else
/// `payload / segs` (exact when all segments are full, the usual case).
pub fn gso_segment_size(payload: u32, segs: u32, known: Option<u32>) -> u32 {
    let segs = segs.max(1);
    let lo = payload.div_ceil(segs);
    let hi = if segs > 1 {
        (payload.saturating_sub(1)) / (segs - 1)
    } else {
        payload
    };
    match known {
        Some(g) if (lo..=hi).contains(&g) => g,
        _ => lo,
    }
}

/// The wire segments of a TCP GSO record, as Linux's software segmentation
/// makes them: sequence numbers `size` apart, the IPv4 ID incremented per
/// segment, CWR on the first only, FIN and PSH on the last only, options
/// (timestamps, SACK) copied.
pub fn gso_segments(m: &PacketMeta, size: u32) -> impl Iterator<Item = PacketMeta> + '_ {
    use phalanx_common::tcp_flags::{CWR, FIN, PSH};
    let segs = u32::from(m.segs.max(1));
    let size = size.max(1);
    (0..segs).map_while(move |i| {
        let offset = i.checked_mul(size)?;
        if offset >= m.payload_len && i > 0 {
            return None;
        }
        let mut s = *m;
        s.segs = 1;
        s.seq = m.seq.wrapping_add(offset);
        s.payload_len = if i + 1 == segs {
            m.payload_len - offset
        } else {
            size.min(m.payload_len - offset)
        };
        if m.ip_version == 4 {
            s.ip_id = u32::from((m.ip_id as u16).wrapping_add(i as u16));
        }
        if i + 1 < segs {
            s.tcp_flags &= !(FIN | PSH);
        }
        if i > 0 {
            s.tcp_flags &= !CWR;
        }
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::tcp_segment as seg;

    #[test]
    fn gso_records_become_their_wire_segments() {
        use phalanx_common::tcp_flags::{ACK, CWR, PSH};
        assert_eq!(gso_segment_size(4344, 3, None), 1448, "all full");
        assert_eq!(gso_segment_size(2996, 3, Some(1448)), 1448, "short last");
        assert_eq!(
            gso_segment_size(2996, 3, Some(1600)),
            999,
            "known size cannot fit"
        );
        assert_eq!(gso_segment_size(2000, 2, Some(1448)), 1448);
        let mut m = seg(1000, 5);
        m.ip_id = 0xfffe;
        m.segs = 3;
        m.payload_len = 2996;
        m.tcp_flags = ACK | PSH | CWR;
        let v: Vec<PacketMeta> = gso_segments(&m, 1448).collect();
        assert_eq!(
            v.iter()
                .map(|s| (s.seq, s.payload_len, s.ip_id, s.tcp_flags, s.segs))
                .collect::<Vec<_>>(),
            vec![
                (1000, 1448, 0xfffe, ACK | CWR, 1),
                (2448, 1448, 0xffff, ACK, 1),
                (3896, 100, 0, ACK | PSH, 1),
            ]
        );
    }
}
