//! Scope filters, held in maps so the daemon changes scope without a reload.
//!
//! With no filters (`Setting::FilterMode` = 0) every TCP packet is in scope,
//! plus ICMP errors that quote a TCP packet. Otherwise a packet is in scope
//! when its protocol is in scope whole (`Setting::WholeProtocols`), its
//! 5-tuple (either orientation) is in the exact map, or one of its
//! endpoints (address, port) falls under a CIDR/port rule of the trie. ICMP
//! errors are judged by the packet they quote. Lookups that no installed
//! rule can answer are skipped (`Setting::Lookups`).

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie},
};
use phalanx_common::{
    ipproto, FilterPrefix, FilterTuple, PacketMeta, RecordKind, Setting, FILTER_PREFIX_HEAD_BITS,
    LOOKUP_ANY_PORT, LOOKUP_PORT, LOOKUP_TUPLES, SCOPE_ALL_TCP, SCOPE_ALL_UDP, SETTING_COUNT,
};

/// Exact 5-tuples in scope.
#[map(name = "PHX_FILTER_TUPLES")]
static PHX_FILTER_TUPLES: HashMap<FilterTuple, u32> = HashMap::with_max_entries(4096, 0);

/// CIDR/port rules in scope.
#[map(name = "PHX_FILTER_PREFIXES")]
static PHX_FILTER_PREFIXES: LpmTrie<FilterPrefix, u32> =
    LpmTrie::with_max_entries(4096, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Runtime settings, indexed by `Setting`.
#[map(name = "PHX_SETTINGS")]
static PHX_SETTINGS: Array<u32> = Array::with_max_entries(SETTING_COUNT, 0);

const FULL_PREFIX: u32 = FILTER_PREFIX_HEAD_BITS + 128;

#[inline(always)]
fn endpoint_in_scope(lookups: u32, proto: u8, port: u16, version: u8, addr: &[u8; 16]) -> bool {
    if lookups & LOOKUP_PORT != 0 {
        let exact = Key::new(
            FULL_PREFIX,
            FilterPrefix::endpoint(proto, port, version, addr),
        );
        if PHX_FILTER_PREFIXES.get(&exact).is_some() {
            return true;
        }
    }
    if lookups & LOOKUP_ANY_PORT != 0 {
        let any_port = Key::new(FULL_PREFIX, FilterPrefix::endpoint(proto, 0, version, addr));
        return PHX_FILTER_PREFIXES.get(&any_port).is_some();
    }
    false
}

#[inline(always)]
fn tuple_in_scope(t: &mut FilterTuple) -> bool {
    // SAFETY: the value is copied out of the map immediately.
    if unsafe { PHX_FILTER_TUPLES.get(&*t) }.is_some() {
        return true;
    }
    core::mem::swap(&mut t.src, &mut t.dst);
    core::mem::swap(&mut t.sport, &mut t.dport);
    unsafe { PHX_FILTER_TUPLES.get(&*t) }.is_some()
}

/// Whether the record is in the operator's scope.
#[inline(always)]
pub(crate) fn matches(m: &PacketMeta) -> bool {
    let (proto, src, dst, sport, dport) = if m.kind == RecordKind::IcmpError as u8 {
        (
            m.inner_proto,
            &m.inner_src,
            &m.inner_dst,
            m.inner_sport,
            m.inner_dport,
        )
    } else {
        (m.l4_proto, &m.src_addr, &m.dst_addr, m.sport, m.dport)
    };
    let mode = PHX_SETTINGS
        .get(Setting::FilterMode as u32)
        .copied()
        .unwrap_or(0);
    if mode == 0 {
        return proto == ipproto::TCP
            && (m.kind == RecordKind::Tcp as u8 || m.kind == RecordKind::IcmpError as u8);
    }
    let whole = PHX_SETTINGS
        .get(Setting::WholeProtocols as u32)
        .copied()
        .unwrap_or(0);
    if (proto == ipproto::TCP && whole & SCOPE_ALL_TCP != 0)
        || (proto == ipproto::UDP && whole & SCOPE_ALL_UDP != 0)
    {
        return true;
    }
    let lookups = PHX_SETTINGS
        .get(Setting::Lookups as u32)
        .copied()
        .unwrap_or(0);
    if lookups & LOOKUP_TUPLES != 0 {
        let mut t = FilterTuple {
            src: *src,
            dst: *dst,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        };
        if tuple_in_scope(&mut t) {
            return true;
        }
    }
    endpoint_in_scope(lookups, proto, sport, m.ip_version, src)
        || endpoint_in_scope(lookups, proto, dport, m.ip_version, dst)
}
