//! Phalanx kernel programs: XDP on ingress, TC (tcx) on ingress and egress.
//!
//! All three entry points share one bounded parser ([`parse`]) that reads
//! headers through the load-bytes helpers, so it works the same on XDP
//! buffers and on non-linear skbs (GSO super-packets on egress). The
//! programs are passive: they never drop or alter a packet, and every
//! outcome (parse error, ring buffer full, ...) is counted per CPU.
#![no_std]
#![no_main]

mod filter;
mod parse;

use aya_ebpf::{
    bindings::{
        xdp_action, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
        TC_ACT_UNSPEC,
    },
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use core::ffi::c_void;
use phalanx_common::{
    Counter, Direction, PacketMeta, COUNTER_COUNT, RING_SHORT_LEN, WAKEUP_CHECK_EVERY,
    WAKEUP_FILL_DIVISOR,
};

const RING_SHORT_WORDS: usize = RING_SHORT_LEN / 8;

/// Records to user space. Size is overridden at load time from the config.
#[map(name = "PHX_EVENTS")]
static PHX_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU outcome counters, indexed by `Counter`.
#[map(name = "PHX_COUNTERS")]
static PHX_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Interfaces the programs are attached to (ifindex -> 1), filled at attach.
#[map(name = "PHX_WATCHED")]
static PHX_WATCHED: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

/// Per-CPU scratch record: the 184-byte record does not belong on the 512-byte stack.
#[map(name = "PHX_SCRATCH")]
static PHX_SCRATCH: PerCpuArray<PacketMeta> = PerCpuArray::with_max_entries(1, 0);

/// Byte source the parser reads from.
pub(crate) trait Packet {
    /// Copies `len` bytes at `off` into `dst` (len ≤ dst size, checked by the helper).
    fn load(&self, off: u32, dst: *mut c_void, len: u32) -> bool;
    /// Length of the packet in bytes.
    fn len(&self) -> u32;
}

struct XdpPacket<'a>(&'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn load(&self, off: u32, dst: *mut c_void, len: u32) -> bool {
        // SAFETY: the helper checks `off + len` against the frame and writes at most `len` bytes.
        unsafe { bpf_xdp_load_bytes(self.0.ctx, off, dst, len) == 0 }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }
}

struct SkbPacket<'a>(&'a TcContext);

impl Packet for SkbPacket<'_> {
    #[inline(always)]
    fn load(&self, off: u32, dst: *mut c_void, len: u32) -> bool {
        // SAFETY: as above; the skb helper also copes with non-linear data.
        unsafe { bpf_skb_load_bytes(self.0.skb.skb as *const c_void, off, dst, len) == 0 }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }
}

#[inline(always)]
fn count(c: Counter) -> u64 {
    match PHX_COUNTERS.get_ptr_mut(c as u32) {
        Some(p) => {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe {
                *p += 1;
                *p
            }
        }
        None => 0,
    }
}

/// Parses, filters and submits one packet. Never fails the packet.
#[inline(always)]
fn capture<P: Packet>(
    pkt: &P,
    ifindex: u32,
    direction: Direction,
    (segs, gso_size): (u32, u32),
    vlan: Option<u16>,
) {
    count(Counter::Seen);
    let Some(meta) = PHX_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, used only for the duration of this program run.
    let meta = unsafe { &mut *meta };
    parse::zero_record(meta);
    meta.ts_ns = unsafe { bpf_ktime_get_ns() };
    meta.ifindex = ifindex;
    meta.direction = direction as u8;
    meta.wire_len = pkt.len();
    if segs > 1 {
        meta.segs = segs.min(u16::MAX as u32) as u16;
        meta.gso_size = gso_size.min(u16::MAX as u32) as u16;
    } else {
        meta.segs = 1;
    }
    // A tag the NIC (or veth) keeps out of band counts as the outer tag; tags
    // still in the bytes are parsed after it.
    if let Some(vid) = vlan {
        meta.vlan_count = 1;
        meta.outer_vlan = vid;
    }
    match parse::parse(pkt, meta) {
        Ok(()) => {}
        Err(parse::Error::NotIp) => {
            count(Counter::NotIp);
            return;
        }
        Err(parse::Error::Malformed) => {
            count(Counter::ParseError);
            return;
        }
    }
    count(Counter::Parsed);
    // Intact IP/TCP headers with a broken option list: the record is kept
    // (its seq/ack matter to the flow) with the options before the damage,
    // flagged, and counted.
    if meta.tcp_opts & phalanx_common::tcp_opts::MALFORMED != 0 {
        count(Counter::ParseError);
    }
    if !filter::matches(meta) {
        return;
    }
    count(Counter::Matched);
    let n = count(Counter::Submitted);
    // Wake the consumer when the ring fills up; its timer drains the rest.
    let flags = if n % WAKEUP_CHECK_EVERY as u64 == 0
        && PHX_EVENTS.query(BPF_RB_AVAIL_DATA as u64) * WAKEUP_FILL_DIVISOR
            >= PHX_EVENTS.query(BPF_RB_RING_SIZE as u64)
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // Without SACK blocks or a quoted packet the record's tail is zero: the
    // ring carries its head only, fewer cache lines to write here and to
    // read in the daemon.
    let sent = if meta.tail_is_zero() {
        // SAFETY: the head is the record's first RING_SHORT_LEN bytes, in
        // bounds and 8-aligned (asserted in phalanx-common).
        let head = unsafe { &*(meta as *const PacketMeta as *const [u64; RING_SHORT_WORDS]) };
        PHX_EVENTS.output::<[u64; RING_SHORT_WORDS]>(head, flags as u64)
    } else {
        PHX_EVENTS.output::<PacketMeta>(&*meta, flags as u64)
    };
    if sent.is_err() {
        count(Counter::RingFull);
    }
}

/// XDP ingress program.
#[xdp]
pub fn phalanx_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: ctx points at a valid xdp_md for the duration of the call.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    capture(&XdpPacket(&ctx), ifindex, Direction::Ingress, (1, 0), None);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn tc(ctx: &TcContext, direction: Direction) -> i32 {
    // SAFETY: ctx.skb points at a valid __sk_buff for the duration of the call.
    let skb = ctx.skb.skb;
    // vlan_proto is non-zero exactly when the stack holds a tag out of band.
    let (ifindex, segs, gso_size, vlan_proto, vlan_tci, arrived_on) = unsafe {
        (
            (*skb).ifindex,
            (*skb).gso_segs,
            (*skb).gso_size,
            (*skb).vlan_proto,
            (*skb).vlan_tci,
            (*skb).ingress_ifindex,
        )
    };
    // A router watching several interfaces would see each forwarded packet
    // twice, on arrival and on departure: the flow engine would take the
    // second copy for a retransmission. Locally sent packets arrived on
    // no interface (0).
    // SAFETY: the value is not kept past the lookup.
    if direction == Direction::Egress
        && arrived_on != 0
        && unsafe { PHX_WATCHED.get(&arrived_on) }.is_some()
    {
        count(Counter::Seen);
        count(Counter::Forwarded);
        return TC_ACT_UNSPEC;
    }
    let vlan = (vlan_proto != 0).then_some((vlan_tci & 0x0fff) as u16);
    capture(&SkbPacket(ctx), ifindex, direction, (segs, gso_size), vlan);
    // TCX_NEXT / "unspecified": let the next program and the stack decide.
    TC_ACT_UNSPEC
}

/// TC (tcx) ingress program.
#[classifier]
pub fn phalanx_tc_ingress(ctx: TcContext) -> i32 {
    tc(&ctx, Direction::Ingress)
}

/// TC (tcx) egress program.
#[classifier]
pub fn phalanx_tc_egress(ctx: TcContext) -> i32 {
    tc(&ctx, Direction::Egress)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the parser uses checked accessors only; no panic path is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
