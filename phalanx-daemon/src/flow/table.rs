//! The bounded flow table: slab of flows, hash index, idle eviction.
//!
//! Flows live in a slab (`Vec<Flow>`) addressed by `u32`. The hash index
//! maps a canonical 5-tuple to the first flow of a short chain: one flow per
//! VLAN combination the 5-tuple was seen on. Each flow also sits on one of
//! four LRU lists, one per timeout class, so expiry walks only flows that
//! are due and the longest-idle flow is found in O(1) when the table is full.

use hashbrown::HashTable;
use phalanx_common::{ipproto, PacketMeta};
use serde::Serialize;

use super::config::FlowConfig;
use super::copies::CopyCache;
use super::jitter::ArrivalJitter;
use super::key::{vlan_of, FlowKey, RecordRole, VlanTag};
use super::observe::{FlowObserver, Mark};
use super::report::FlowSummary;
use super::state::{
    frame_bytes, track_ttl, Extra, Flow, IcmpEvent, TimeoutClass, MAX_ICMP_EVENTS, NIL, VACANT,
};
use super::tcp;

/// Record-time interval between expiry sweeps.
const EXPIRE_EVERY_NS: u64 = 100_000_000;

const CLASSES: [TimeoutClass; 5] = [
    TimeoutClass::Syn,
    TimeoutClass::Established,
    TimeoutClass::Closed,
    TimeoutClass::Udp,
    TimeoutClass::SynRetried,
];

/// Table counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// Records offered to the table.
    pub records: u64,
    /// Records ignored (unknown kind or IP version).
    pub ignored: u64,
    /// Flows created.
    pub flows_created: u64,
    /// Flows evicted after their idle timeout.
    pub flows_expired: u64,
    /// Flows evicted because the table was full.
    pub flows_evicted_full: u64,
    /// Flows finished because a new SYN reused the closed connection's ports.
    pub flows_restarted: u64,
    /// ICMP errors attached to the flow they quote.
    pub icmp_matched: u64,
    /// ICMP errors quoting no tracked flow.
    pub icmp_unmatched: u64,
    /// Largest number of flows tracked at once.
    pub peak_flows: u64,
    /// TCP records that were a second copy of a packet already seen (a
    /// capture at several points), not counted again.
    pub capture_duplicates: u64,
}

/// The observer of plain [`FlowTable::ingest`]: compiled away.
struct NoObserver;

impl FlowObserver for NoObserver {
    const ENABLED: bool = false;
    fn on_record(&mut self, _: &Flow, _: &mut u16, _: &PacketMeta, _: &super::observe::Delta) {}
}

/// Why a flow left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Expired,
    Full,
    Restart,
}

/// The bounded flow table.
pub struct FlowTable {
    cfg: FlowConfig,
    flows: Vec<Flow>,
    free: Vec<u32>,
    index: HashTable<u32>,
    /// The last key found in the index and its chain head: consecutive
    /// records mostly belong to one flow (a bulk transfer's data and ACKs),
    /// and they skip the hash and the probe. Cleared when a flow leaves
    /// (a new flow of a cached key chains behind the cached head).
    last: (FlowKey, u32),
    lru: [(u32, u32); CLASSES.len()],
    live: usize,
    now: u64,
    next_expire: u64,
    stats: TableStats,
    keep_finished: bool,
    finished: Vec<FlowSummary>,
    /// Recent packets, to recognise a second copy of one.
    copies: CopyCache,
    /// Most copies of one packet seen since [`Self::take_copies_peak`].
    copies_peak: u8,
}

impl FlowTable {
    /// An empty table with the given settings.
    pub fn new(cfg: FlowConfig) -> Self {
        Self {
            cfg,
            flows: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            last: (FlowKey::default(), NIL),
            lru: [(NIL, NIL); CLASSES.len()],
            live: 0,
            now: 0,
            next_expire: 0,
            stats: TableStats::default(),
            keep_finished: false,
            finished: Vec::new(),
            copies: CopyCache::default(),
            copies_peak: 0,
        }
    }

    /// Keep a summary of every flow that leaves the table (expired, evicted
    /// or restarted), for [`Self::take_finished`] and [`Self::into_report`].
    /// Off by default: the daemon exports live state and drops evicted flows.
    pub fn keep_finished(&mut self, on: bool) {
        self.keep_finished = on;
    }

    /// The settings.
    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// Flows currently tracked.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Latest record time seen, or moved on to by [`Self::advance`] (the
    /// table's virtual clock).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves the clock on to `now_ns` when no record has (an idle link in
    /// a live capture) and expires the flows idle since; never back.
    pub fn advance(&mut self, now_ns: u64) {
        if now_ns > self.now {
            self.now = now_ns;
            self.expire(now_ns);
        }
    }

    /// Applies one record. Never panics, whatever the record holds.
    #[inline]
    pub fn ingest(&mut self, rec: &PacketMeta) {
        self.ingest_observed(rec, &mut NoObserver);
    }

    /// Applies one record and tells `obs` what it changed in its flow
    /// (ICMP errors and ignored records change no counters it sees).
    #[inline]
    pub fn ingest_observed<O: FlowObserver>(&mut self, rec: &PacketMeta, obs: &mut O) {
        self.stats.records += 1;
        if rec.ts_ns > self.now {
            self.now = rec.ts_ns;
        }
        if self.now >= self.next_expire {
            self.expire(self.now);
            self.next_expire = self.now.saturating_add(EXPIRE_EVERY_NS);
        }
        match FlowKey::of(rec) {
            Some((key, d, RecordRole::Packet)) => self.on_packet(rec, key, d, obs),
            Some((key, d, RecordRole::IcmpError)) => self.on_icmp_error(rec, key, d),
            None => self.stats.ignored += 1,
        }
    }

    fn on_packet<O: FlowObserver>(
        &mut self,
        rec: &PacketMeta,
        key: FlowKey,
        d: usize,
        obs: &mut O,
    ) {
        let tcp = key.proto == ipproto::TCP;
        let vlan = vlan_of(rec);
        let mut i = match self.lookup(&key, d, vlan, true) {
            Some(i) => i,
            None => self.create(key, d, vlan, rec.ts_ns),
        };
        if tcp && tcp::is_new_connection(&self.flows[i as usize], d, rec) {
            self.finish(i, Exit::Restart);
            i = self.create(key, d, vlan, rec.ts_ns);
        }
        if tcp && self.copy_seen(i, d, rec) {
            return;
        }
        let f = &mut self.flows[i as usize];
        let inferred;
        let rec = match tcp.then(|| tcp::inferred_segments(f, d, rec)).flatten() {
            Some(segs) => {
                inferred = PacketMeta { segs, ..*rec };
                &inferred
            }
            None => rec,
        };
        let mark = O::ENABLED.then(|| Mark::of(f));
        let segs = u64::from(rec.segs.max(1));
        let first_in_dir = f.dir[d].packets == 0;
        f.dir[d].packets += segs;
        f.dir[d].bytes += frame_bytes(rec);
        f.last_ts = f.last_ts.max(rec.ts_ns);
        track_ttl(f, d, rec, first_in_dir);
        if rec.tos & 3 == 3 {
            let ex = &mut f.extra_mut().dir[d];
            ex.ce_packets = ex.ce_packets.saturating_add(segs as u32);
        }
        // Wrapping microseconds since the flow began: probe clock.
        let now_us = (rec.ts_ns.saturating_sub(f.first_ts) / 1000) as u32;
        if tcp {
            tcp::on_segment(f, d, rec, rec.ts_ns, now_us);
        } else if first_in_dir {
            // Datagram flows have no probes: the probe clock holds the
            // direction's first arrival until the jitter state exists.
            f.dir[d].probe.t_us = now_us;
        } else {
            let first_us = f.dir[d].probe.t_us;
            let ex = f.extra_mut();
            let a = &mut ex.dir[d].arrival;
            if *a == ArrivalJitter::default() {
                a.arrive(u64::from(first_us) * 1000, true);
            }
            a.arrive(u64::from(now_us) * 1000, false);
        }
        if let Some(mark) = mark {
            let delta = mark.delta(f, d);
            let mut tag = f.tag;
            obs.on_record(f, &mut tag, rec, &delta);
            f.tag = tag;
        }
        let class = f.timeout_class();
        if class as u8 != f.class {
            self.unlink(i);
            self.flows[i as usize].class = class as u8;
            self.link_tail(i);
        } else {
            self.touch(i);
        }
    }

    /// Whether the record is a second copy of a packet of flow `i` (another
    /// capture point, see [`super::copies`]): counted, and not seen again.
    #[inline]
    fn copy_seen(&mut self, i: u32, d: usize, rec: &PacketMeta) -> bool {
        let Some(n) = self.copies.copy_of_recent(i << 1 | d as u32, rec) else {
            return false;
        };
        let ex = &mut self.flows[i as usize].extra_mut().dir[d];
        ex.capture_duplicates = ex.capture_duplicates.saturating_add(1);
        self.stats.capture_duplicates += 1;
        self.copies_peak = self.copies_peak.max(n);
        true
    }

    /// The most copies of one packet seen since the last call, and resets
    /// it: a file in which every packet appears twice was captured at two
    /// points.
    pub fn take_copies_peak(&mut self) -> u8 {
        std::mem::take(&mut self.copies_peak)
    }

    fn on_icmp_error(&mut self, rec: &PacketMeta, key: FlowKey, d: usize) {
        // The error travels back towards the quoted packet's sender.
        let Some(i) = self.lookup(&key, d ^ 1, vlan_of(rec), false) else {
            self.stats.icmp_unmatched += 1;
            return;
        };
        self.stats.icmp_matched += 1;
        let ev = IcmpEvent {
            ts_ns: rec.ts_ns,
            from: rec.src_ip(),
            icmp_type: rec.icmp_type,
            code: rec.icmp_code,
            mtu: rec.icmp_mtu,
            quoted_dir: d as u8,
            quoted_seq: rec.inner_seq,
            snd_max_at: self.flows[i as usize].dir[d].snd_max,
        };
        let ex = self.flows[i as usize].extra_mut();
        ex.icmp_count = ex.icmp_count.saturating_add(1);
        if ex.icmp.len() < MAX_ICMP_EVENTS {
            ex.icmp.push(ev);
        }
    }

    /// First flow of the key's chain.
    #[inline]
    fn head(&mut self, key: &FlowKey) -> Option<u32> {
        if self.last.1 != NIL && self.last.0 == *key {
            return Some(self.last.1);
        }
        let flows = &self.flows;
        let head = *self
            .index
            .find(key.hash64(), |&i| flows[i as usize].key == *key)?;
        self.last = (*key, head);
        Some(head)
    }

    /// Finds the flow for `key` whose direction `d` is on `vlan`. With
    /// `attach`, a flow that has not yet seen direction `d` adopts it even
    /// on another VLAN (capture points that tag one direction only).
    fn lookup(&mut self, key: &FlowKey, d: usize, vlan: VlanTag, attach: bool) -> Option<u32> {
        let head = self.head(key)?;
        let mut i = head;
        while i != NIL {
            let f = &self.flows[i as usize];
            if f.vlan[d] == vlan {
                return Some(i);
            }
            i = f.chain;
        }
        if !attach {
            return None;
        }
        let mut i = head;
        while i != NIL {
            let f = &mut self.flows[i as usize];
            if f.dir[d].packets == 0 {
                f.vlan[d] = vlan;
                return Some(i);
            }
            i = f.chain;
        }
        None
    }

    fn create(&mut self, key: FlowKey, d: usize, vlan: VlanTag, ts: u64) -> u32 {
        if self.live >= self.cfg.max_flows.max(1) {
            self.evict_oldest();
        }
        let hash = key.hash64();
        let class = if key.proto == ipproto::TCP {
            TimeoutClass::Established
        } else {
            TimeoutClass::Udp
        };
        let flow = Flow::new(key, vlan, d, ts, class);
        let i = match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = flow;
                i
            }
            None => {
                if self.flows.len() == self.flows.capacity() {
                    // Double, but never past the bound: a full table keeps
                    // no spare slots (a slab slot is most of a flow's cost).
                    let bound = self.cfg.max_flows.max(self.flows.len() + 1);
                    let want = (self.flows.capacity() * 2).max(16).min(bound);
                    self.flows.reserve_exact(want - self.flows.len());
                }
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        let flows = &mut self.flows;
        match self.index.find(hash, |&h| flows[h as usize].key == key) {
            Some(&head) => {
                flows[i as usize].chain = flows[head as usize].chain;
                flows[head as usize].chain = i;
            }
            None => {
                self.index
                    .insert_unique(hash, i, |&h| flows[h as usize].key.hash64());
            }
        }
        self.link_tail(i);
        self.live += 1;
        self.stats.flows_created += 1;
        self.stats.peak_flows = self.stats.peak_flows.max(self.live as u64);
        i
    }

    fn evict_oldest(&mut self) {
        let mut best: Option<u32> = None;
        for (h, _) in self.lru {
            if h == NIL {
                continue;
            }
            if best.is_none_or(|b| self.flows[h as usize].last_ts < self.flows[b as usize].last_ts)
            {
                best = Some(h);
            }
        }
        if let Some(b) = best {
            self.finish(b, Exit::Full);
        }
    }

    /// Evicts every flow idle past its timeout at record time `now_ns`;
    /// returns how many left.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        for c in CLASSES {
            let timeout = self.cfg.timeout_ns(c);
            loop {
                let h = self.lru[c as usize].0;
                if h == NIL || self.flows[h as usize].last_ts.saturating_add(timeout) > now_ns {
                    break;
                }
                self.finish(h, Exit::Expired);
                n += 1;
            }
        }
        n
    }

    fn finish(&mut self, i: u32, why: Exit) {
        match why {
            Exit::Expired => self.stats.flows_expired += 1,
            Exit::Full => self.stats.flows_evicted_full += 1,
            Exit::Restart => self.stats.flows_restarted += 1,
        }
        if self.keep_finished {
            let s = FlowSummary::of(&self.flows[i as usize]);
            self.finished.push(s);
        }
        self.remove(i);
    }

    fn remove(&mut self, i: u32) {
        self.last.1 = NIL;
        self.unlink(i);
        let key = self.flows[i as usize].key;
        let chain = self.flows[i as usize].chain;
        let hash = key.hash64();
        let flows = &mut self.flows;
        if let Ok(mut entry) = self
            .index
            .find_entry(hash, |&h| flows[h as usize].key == key)
        {
            let head = *entry.get();
            if head == i {
                if chain == NIL {
                    entry.remove();
                } else {
                    *entry.get_mut() = chain;
                }
            } else {
                let mut p = head;
                while p != NIL {
                    let nx = flows[p as usize].chain;
                    if nx == i {
                        flows[p as usize].chain = chain;
                        break;
                    }
                    p = nx;
                }
            }
        }
        let f = &mut self.flows[i as usize];
        f.class = VACANT;
        f.extra = None;
        f.chain = NIL;
        self.free.push(i);
        self.live -= 1;
    }

    fn unlink(&mut self, i: u32) {
        let (c, prev, next) = {
            let f = &self.flows[i as usize];
            (f.class, f.prev, f.next)
        };
        if c == VACANT {
            return;
        }
        let list = &mut self.lru[c as usize];
        if prev == NIL {
            list.0 = next;
        } else {
            self.flows[prev as usize].next = next;
        }
        if next == NIL {
            list.1 = prev;
        } else {
            self.flows[next as usize].prev = prev;
        }
        let f = &mut self.flows[i as usize];
        f.prev = NIL;
        f.next = NIL;
    }

    fn link_tail(&mut self, i: u32) {
        let c = self.flows[i as usize].class as usize;
        let tail = self.lru[c].1;
        {
            let f = &mut self.flows[i as usize];
            f.prev = tail;
            f.next = NIL;
        }
        if tail == NIL {
            self.lru[c].0 = i;
        } else {
            self.flows[tail as usize].next = i;
        }
        self.lru[c].1 = i;
    }

    #[inline]
    fn touch(&mut self, i: u32) {
        let c = self.flows[i as usize].class as usize;
        if self.lru[c].1 != i {
            self.unlink(i);
            self.link_tail(i);
        }
    }

    /// Live flows.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> + '_ {
        self.flows.iter().filter(|f| f.class != VACANT)
    }

    /// Summaries of the live flows.
    pub fn snapshot(&self) -> Vec<FlowSummary> {
        self.iter().map(FlowSummary::of).collect()
    }

    /// Appends to `out` the summaries of up to `n` live flows in slots
    /// `from..`, each with its slot; returns the slot to go on from, or
    /// `None` when no slot is left. Slots are stable while a flow lives,
    /// so a scan taken in pieces visits each slot once.
    pub fn summaries_from(
        &self,
        from: u32,
        n: usize,
        out: &mut Vec<(u32, FlowSummary)>,
    ) -> Option<u32> {
        let mut taken = 0;
        for (i, f) in self.flows.iter().enumerate().skip(from as usize) {
            if taken == n {
                return Some(i as u32);
            }
            if f.class != VACANT {
                out.push((i as u32, FlowSummary::of(f)));
                taken += 1;
            }
        }
        None
    }

    /// Summaries of flows that left the table since the last call (only
    /// collected after [`Self::keep_finished`]).
    pub fn take_finished(&mut self) -> Vec<FlowSummary> {
        std::mem::take(&mut self.finished)
    }

    /// Every flow seen: the finished ones and the live ones, in order of
    /// their first packet.
    pub fn into_report(mut self) -> FlowReport {
        self.report_all()
    }

    /// [`Self::into_report`] without consuming the table, so that the
    /// caller chooses where its memory is freed. The finished flows are
    /// handed over (as by [`Self::take_finished`]); the live ones stay.
    pub fn report_all(&mut self) -> FlowReport {
        let mut flows = std::mem::take(&mut self.finished);
        // Summaries straight into their final place: no second copy.
        flows.reserve_exact(self.len());
        flows.extend(self.iter().map(FlowSummary::of));
        flows.sort_by_key(|f| f.first_ts_ns);
        FlowReport {
            flows,
            stats: self.stats.clone(),
        }
    }

    /// Memory held by the table: slab, index, free list and per-flow heap.
    pub fn memory_bytes(&self) -> usize {
        self.flows.capacity() * std::mem::size_of::<Flow>()
            + self.index.allocation_size()
            + self.free.capacity() * 4
            + self
                .iter()
                .map(|f| f.extra.as_deref().map_or(0, Extra::heap_bytes))
                .sum::<usize>()
    }
}

/// Flow summaries plus the table's counters.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    /// One entry per flow.
    pub flows: Vec<FlowSummary>,
    /// Table counters.
    pub stats: TableStats,
}
