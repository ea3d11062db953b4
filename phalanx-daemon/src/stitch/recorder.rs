//! The per-flow history a daemon keeps for its stitch peers: each flow's
//! recent packets as [`Sighting`]s (~64 bytes each), bounded in packets per
//! flow and in flows, filled from the capture path one batch at a time.
//!
//! A TCP GSO record (tc sees the sender's super-packets before they are
//! segmented) is kept as the wire segments it becomes
//! ([`crate::capture::gso`]), so that it matches what points downstream see.

use std::sync::MutexGuard;

use phalanx_common::PacketMeta;

use super::Sighting;
use crate::capture::gso::{gso_segment_size, gso_segments};
use crate::flow::history::{FlowHistory, HistoryBounds};
use crate::flow::key::FlowKey;

/// Sightings kept for peers, and the last segment size seen per flow
/// direction (to split GSO records).
#[derive(Debug)]
pub(super) struct SightingHistory {
    sightings: FlowHistory<FlowKey, Sighting>,
    seg_size: FlowHistory<(FlowKey, u8), u32>,
}

impl SightingHistory {
    /// Keeps the last `per_flow` sightings of each of at most `flows` flows.
    pub(super) fn new(per_flow: usize, flows: usize) -> Self {
        Self {
            sightings: FlowHistory::new(HistoryBounds {
                per_flow,
                max_flows: flows,
            }),
            seg_size: FlowHistory::new(HistoryBounds {
                per_flow: 1,
                max_flows: flows.saturating_mul(2),
            }),
        }
    }

    /// The flow's sightings, oldest first.
    pub(super) fn recent(&self, key: &FlowKey) -> Vec<Sighting> {
        self.sightings.recent(key)
    }

    /// Adds one record: a GSO record as its wire segments, anything else as is.
    pub(super) fn record(&mut self, m: &PacketMeta) {
        if m.ip_version != 4 && m.ip_version != 6 {
            return;
        }
        let mut o = Sighting::from_meta(m);
        // Payload hashes are left out: a GSO record's hash covers the first
        // segment's bytes and its other segments get none, so the hashes of
        // one sender-side point would not compare with a downstream point's.
        o.payload_hash = 0;
        let tcp = m.kind == phalanx_common::RecordKind::Tcp as u8;
        if !tcp || m.segs <= 1 || m.payload_len == 0 {
            if tcp && m.payload_len > 0 {
                self.learn_segment_size(&o, m.payload_len);
            }
            self.sightings.push(o.flow, &o);
            return;
        }
        self.record_gso(m, &o);
    }

    /// A single segment's payload: the direction's segment size is at least that.
    fn learn_segment_size(&mut self, o: &Sighting, payload_len: u32) {
        let key = (o.flow, o.dir);
        let known = self.seg_size.latest(&key).copied().unwrap_or(0);
        self.seg_size.push(key, &known.max(payload_len));
    }

    /// A TCP GSO record `m` (sighted as `o`): kept as its wire segments.
    fn record_gso(&mut self, m: &PacketMeta, o: &Sighting) {
        let key = (o.flow, o.dir);
        let known = self.seg_size.latest(&key).copied();
        // tc records carry the kernel's own segment size; the inference
        // serves records without it.
        let size = if m.gso_size > 0 {
            u32::from(m.gso_size)
        } else {
            gso_segment_size(m.payload_len, u32::from(m.segs), known)
        };
        if known != Some(size)
            && (m.gso_size > 0 || m.payload_len.is_multiple_of(u32::from(m.segs)))
        {
            self.seg_size.push(key, &size);
        }
        for seg in gso_segments(m, size) {
            let mut so = Sighting::from_meta(&seg);
            so.payload_hash = 0;
            self.sightings.push(so.flow, &so);
        }
    }
}

/// The sighting history locked for writing a batch (nothing when no
/// history is kept); [`super::live::LiveStitch::try_history_writer`] hands
/// it out.
pub struct HistoryWriter<'a>(Option<MutexGuard<'a, SightingHistory>>);

impl<'a> HistoryWriter<'a> {
    /// A writer to a locked history, or one that drops every record.
    pub(super) fn new(history: Option<MutexGuard<'a, SightingHistory>>) -> Self {
        Self(history)
    }

    /// Adds a batch of records, as [`super::live::LiveStitch::record`] does.
    pub fn record(&mut self, batch: &[PacketMeta]) {
        if let Some(h) = &mut self.0 {
            for m in batch {
                h.record(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::synth::tcp_segment as seg;
    use std::sync::Mutex;

    use super::*;
    use crate::flow::history::HistoryConfig;

    /// A history sized as the daemon's default configuration sizes it.
    fn history() -> SightingHistory {
        let b = HistoryConfig::default().peers();
        SightingHistory::new(b.per_flow, b.max_flows)
    }

    /// Writes a batch as the capture path does.
    fn record(h: &Mutex<SightingHistory>, batch: &[PacketMeta]) {
        HistoryWriter::new(Some(h.lock().expect("history lock"))).record(batch);
    }

    fn recent(h: &Mutex<SightingHistory>, key: &FlowKey) -> Vec<Sighting> {
        h.lock().expect("history lock").recent(key)
    }

    #[test]
    fn gso_records_are_kept_as_their_wire_segments() {
        use phalanx_common::tcp_flags::{ACK, CWR, PSH};
        let mut m = seg(1000, 5);
        m.ip_id = 0xfffe;
        m.segs = 3;
        m.payload_len = 2996;
        m.tcp_flags = ACK | PSH | CWR;
        // Kept as segments; the size learnt from single segments is used.
        let l = Mutex::new(history());
        let mut single = seg(0, 1);
        single.payload_len = 1448;
        record(&l, &[single, m]);
        let key = Sighting::from_meta(&m).flow;
        let kept = recent(&l, &key);
        assert_eq!(
            kept.len(),
            4,
            "one single segment and three from the GSO record"
        );
        let fps: Vec<u64> = kept.iter().map(|o| o.fingerprint).collect();
        let want: Vec<u64> = std::iter::once(single)
            .chain(gso_segments(&m, 1448))
            .map(|s| super::super::fingerprint(&s))
            .collect();
        assert_eq!(fps, want, "fingerprints of the wire segments");
        assert!(kept.iter().all(|o| o.payload_hash == 0));
    }

    /// A record with the kernel's segment size splits exactly even when the
    /// last segment is short and no single segment taught the size.
    #[test]
    fn kernel_gso_size_splits_a_short_last_segment() {
        let l = Mutex::new(history());
        let mut m = seg(1000, 5);
        m.segs = 3;
        m.payload_len = 2996;
        m.gso_size = 1448;
        record(&l, &[m]);
        let key = Sighting::from_meta(&m).flow;
        let kept = recent(&l, &key);
        let want: Vec<u64> = gso_segments(&m, 1448)
            .map(|s| super::super::fingerprint(&s))
            .collect();
        assert_eq!(
            kept.iter().map(|o| o.fingerprint).collect::<Vec<_>>(),
            want,
            "segments of 1448, 1448 and 100 bytes, not three of 999"
        );
    }
}
