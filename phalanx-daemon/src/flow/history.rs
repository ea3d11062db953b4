//! Bounded recent-packet history per flow.
//!
//! Keeps, for each key, a ring of the last `per_flow` records, and at most
//! `max_flows` keys: when full, the key updated least recently is evicted.
//! Incident evidence reads it; the structure knows nothing of incidents, so
//! other consumers (multi-hop stitching) can keep their own history with
//! another key type.

use std::collections::VecDeque;
use std::hash::Hash;

use hashbrown::HashMap;
use phalanx_common::PacketMeta;
use serde::Deserialize;

use super::key::FlowKey;

/// `[history]`: the recent packets kept per flow, for incident evidence
/// (the records an incident writes as its pcapng) and, with a stitch key,
/// for peer daemons that ask about a flow.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Records kept per flow for incident evidence (the most recent ones).
    pub evidence_packets: usize,
    /// Flows whose recent records are kept for evidence.
    pub evidence_flows: usize,
    /// Packets kept per flow for peers (the most recent ones).
    pub peer_packets: usize,
    /// Flows whose recent packets are kept for peers.
    pub peer_flows: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            evidence_packets: 64,
            evidence_flows: 4096,
            peer_packets: 4096,
            peer_flows: 256,
        }
    }
}

impl HistoryConfig {
    /// Bounds of the evidence history.
    pub fn evidence(&self) -> HistoryBounds {
        HistoryBounds {
            per_flow: self.evidence_packets,
            max_flows: self.evidence_flows,
        }
    }

    /// Bounds of the history kept for peers.
    pub fn peers(&self) -> HistoryBounds {
        HistoryBounds {
            per_flow: self.peer_packets,
            max_flows: self.peer_flows,
        }
    }
}

/// Bounds of a [`FlowHistory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBounds {
    /// Records kept per key (the most recent ones).
    pub per_flow: usize,
    /// Keys kept at once.
    pub max_flows: usize,
}

/// Marks a slot whose key was evicted.
const VACANT: u64 = u64::MAX;
const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Entry<K, T> {
    key: K,
    /// Ring of the key's items: grows to `per_flow`, then the oldest (at
    /// `head`) is overwritten in place.
    items: Vec<T>,
    head: usize,
    /// Update stamp: position in the recency index, or `VACANT`.
    stamp: u64,
}

impl<K, T: Clone> Entry<K, T> {
    /// Copies `item` straight into its slot (a record is 176 bytes).
    #[inline]
    fn append(&mut self, item: &T, per_flow: usize) {
        if self.items.len() < per_flow {
            self.items.push(item.clone());
        } else {
            self.items[self.head].clone_from(item);
            self.head = if self.head + 1 == per_flow {
                0
            } else {
                self.head + 1
            };
        }
    }

    fn ordered(&self) -> impl Iterator<Item = &T> {
        self.items[self.head..]
            .iter()
            .chain(&self.items[..self.head])
    }
}

/// Last `per_flow` items of each of at most `max_flows` keys.
#[derive(Debug)]
pub struct FlowHistory<K = FlowKey, T = PacketMeta> {
    bounds: HistoryBounds,
    /// Entries by slot; evicted slots are reused with their allocations.
    slots: Vec<Entry<K, T>>,
    free: Vec<u32>,
    index: HashMap<K, u32>,
    /// (stamp, slot) of every update, oldest first. An item is live while
    /// its stamp is still the slot's; stale ones are skipped on eviction
    /// and compacted away. Appending here is what keeps a push O(1): an
    /// ordered index re-sorted on every record was the daemon's hottest path.
    recency: VecDeque<(u64, u32)>,
    /// Slot of the latest push. Its recency item is already the newest, so
    /// a run of items of one key (a burst of one flow) skips the index.
    last: u32,
    next_stamp: u64,
    evicted: u64,
}

impl<K: Eq + Hash + Clone, T: Clone> FlowHistory<K, T> {
    /// An empty history; zero bounds are raised to one.
    pub fn new(bounds: HistoryBounds) -> Self {
        Self {
            bounds: HistoryBounds {
                per_flow: bounds.per_flow.max(1),
                max_flows: bounds.max_flows.max(1),
            },
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            recency: VecDeque::new(),
            last: NIL,
            next_stamp: 0,
            evicted: 0,
        }
    }

    /// Appends `item` to `key`'s ring, dropping its oldest item when full.
    pub fn push(&mut self, key: K, item: &T) {
        let per_flow = self.bounds.per_flow;
        if let Some(e) = self.slots.get_mut(self.last as usize) {
            if e.key == key {
                e.append(item, per_flow);
                return;
            }
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(&slot) = self.index.get(&key) {
            let e = &mut self.slots[slot as usize];
            e.stamp = stamp;
            e.append(item, per_flow);
            self.recency.push_back((stamp, slot));
            self.last = slot;
            self.compact();
            return;
        }
        while self.index.len() >= self.bounds.max_flows {
            let Some((old_stamp, old)) = self.recency.pop_front() else {
                break;
            };
            let e = &mut self.slots[old as usize];
            if e.stamp == old_stamp {
                e.stamp = VACANT;
                e.items.clear();
                e.head = 0;
                self.index.remove(&e.key);
                self.free.push(old);
                self.evicted += 1;
            }
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                let e = &mut self.slots[slot as usize];
                e.key = key.clone();
                e.stamp = stamp;
                e.items.push(item.clone());
                slot
            }
            None => {
                let mut items = Vec::with_capacity(per_flow.min(16));
                items.push(item.clone());
                self.slots.push(Entry {
                    key: key.clone(),
                    items,
                    head: 0,
                    stamp,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        self.recency.push_back((stamp, slot));
        self.last = slot;
    }

    /// Drops stale recency items once they outnumber the live ones 3 to 1:
    /// memory stays bounded and the cost per push stays O(1) amortised.
    fn compact(&mut self) {
        if self.recency.len() <= 4 * self.index.len().max(64) {
            return;
        }
        let slots = &self.slots;
        self.recency
            .retain(|&(stamp, slot)| slots[slot as usize].stamp == stamp);
    }

    /// The items kept for `key`, oldest first.
    pub fn recent(&self, key: &K) -> Vec<T> {
        self.entry(key)
            .map(|e| e.ordered().cloned().collect())
            .unwrap_or_default()
    }

    /// The item pushed last for `key`.
    pub fn latest(&self, key: &K) -> Option<&T> {
        let e = self.entry(key)?;
        let i = if e.head == 0 { e.items.len() } else { e.head };
        e.items.get(i.checked_sub(1)?)
    }

    fn entry(&self, key: &K) -> Option<&Entry<K, T>> {
        self.index.get(key).map(|&slot| &self.slots[slot as usize])
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Keys evicted to respect `max_flows`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The bounds in force.
    pub fn bounds(&self) -> HistoryBounds {
        self.bounds
    }
}

impl FlowHistory<FlowKey, PacketMeta> {
    /// Records a packet under its flow, keyed as the flow table keys it: an
    /// ICMP error goes to the flow it quotes (it is that flow's evidence).
    pub fn record(&mut self, rec: &PacketMeta) {
        if let Some((key, _, _)) = FlowKey::of(rec) {
            self.push(key, rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_common::{ipproto, RecordKind};

    fn bounds(per_flow: usize, max_flows: usize) -> HistoryBounds {
        HistoryBounds {
            per_flow,
            max_flows,
        }
    }

    #[test]
    fn ring_keeps_the_last_n() {
        let mut h: FlowHistory<u32, u32> = FlowHistory::new(bounds(4, 10));
        for i in 0..10 {
            h.push(1, &i);
        }
        assert_eq!(h.recent(&1), vec![6, 7, 8, 9], "last 4 of 10, oldest first");
        assert!(h.recent(&2).is_empty());
    }

    #[test]
    fn evicts_the_least_recently_updated_flow() {
        let mut h: FlowHistory<u32, u32> = FlowHistory::new(bounds(2, 3));
        h.push(1, &0);
        h.push(2, &0);
        h.push(3, &0);
        h.push(1, &1); // 2 is now the least recently updated
        h.push(4, &0);
        assert_eq!(h.len(), 3);
        assert_eq!(h.evicted(), 1);
        assert!(h.recent(&2).is_empty(), "flow 2 evicted");
        assert_eq!(h.recent(&1), vec![0, 1]);
        for k in 5..1005 {
            h.push(k, &k);
        }
        assert_eq!(h.len(), 3, "never more than max_flows keys");
        assert_eq!(h.evicted(), 1001);
        assert_eq!(h.recency.len(), 3, "recency index stays in step");
        // Updates of one key leave stale recency items; they stay bounded.
        for i in 0..100_000 {
            h.push(1004, &i);
        }
        assert!(h.recency.len() <= 4 * 64 + 1, "stale items compacted");
        h.push(2000, &0);
        h.push(2001, &0);
        assert!(
            h.recent(&1004).len() == 2,
            "the most recently updated key survives"
        );
        assert!(
            h.recent(&1002).is_empty(),
            "the least recently updated one goes"
        );
    }

    proptest::proptest! {
        /// Against a plain model: a list of (key, last items), most recently
        /// updated last, trimmed from the front.
        #[test]
        fn matches_a_plain_model(
            per_flow in 1usize..5,
            max_flows in 1usize..4,
            pushes in proptest::collection::vec((0u8..6, 0u32..1000), 0..200),
        ) {
            let mut h: FlowHistory<u8, u32> = FlowHistory::new(bounds(per_flow, max_flows));
            let mut model: Vec<(u8, VecDeque<u32>)> = Vec::new();
            let mut evicted = 0;
            for &(k, v) in &pushes {
                h.push(k, &v);
                let mut items = match model.iter().position(|(mk, _)| *mk == k) {
                    Some(i) => model.remove(i).1,
                    None => {
                        if model.len() == max_flows {
                            model.remove(0);
                            evicted += 1;
                        }
                        VecDeque::new()
                    }
                };
                if items.len() == per_flow {
                    items.pop_front();
                }
                items.push_back(v);
                model.push((k, items));
                for key in 0u8..6 {
                    let want: Vec<u32> = model
                        .iter()
                        .find(|(mk, _)| *mk == key)
                        .map(|(_, i)| i.iter().copied().collect())
                        .unwrap_or_default();
                    proptest::prop_assert_eq!(h.latest(&key).copied(), want.last().copied());
                    proptest::prop_assert_eq!(h.recent(&key), want);
                }
                proptest::prop_assert_eq!(h.len(), model.len());
                proptest::prop_assert_eq!(h.evicted(), evicted);
            }
        }
    }

    #[test]
    fn records_are_keyed_like_the_flow_table() {
        let mut h = FlowHistory::new(bounds(8, 8));
        let mut a = PacketMeta {
            kind: RecordKind::Tcp as u8,
            ip_version: 4,
            l4_proto: ipproto::TCP,
            sport: 40000,
            dport: 80,
            ..PacketMeta::zeroed()
        };
        a.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        a.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut b = a;
        std::mem::swap(&mut b.src_addr, &mut b.dst_addr);
        std::mem::swap(&mut b.sport, &mut b.dport);
        // An ICMP error from a router quoting a's packet.
        let mut icmp = PacketMeta {
            kind: RecordKind::IcmpError as u8,
            ip_version: 4,
            l4_proto: ipproto::ICMP,
            inner_proto: ipproto::TCP,
            inner_src: a.src_addr,
            inner_dst: a.dst_addr,
            inner_sport: 40000,
            inner_dport: 80,
            ..PacketMeta::zeroed()
        };
        icmp.src_addr[..4].copy_from_slice(&[10, 0, 0, 254]);
        icmp.dst_addr = a.src_addr;
        h.record(&a);
        h.record(&b);
        h.record(&icmp);
        let (key, _, _) = FlowKey::of(&a).expect("tcp key");
        assert_eq!(
            h.len(),
            1,
            "both directions and the quoting ICMP error share a flow"
        );
        assert_eq!(h.recent(&key).len(), 3);
        h.record(&PacketMeta::zeroed());
        assert_eq!(h.len(), 1, "non-IP records are ignored");
    }
}
