//! Bounded header parser shared by every program.
//!
//! Every read goes through `Packet::load`, whose helper checks bounds at run
//! time; every loop has a constant bound. Lengths come from the headers and
//! are validated before use, so a malformed packet ends in
//! `Error::Malformed` (counted) and never in a record with garbage.

use aya_ebpf::{helpers::bpf_loop, macros::map, maps::PerCpuArray};
use core::{ffi::c_void, mem::MaybeUninit};

use phalanx_common::{
    ipproto, tcp_opts, PacketMeta, RecordKind, IP_FLAG_DF, IP_FLAG_LATER_FRAGMENT, IP_FLAG_MF,
    MAX_SACK_BLOCKS,
};

use crate::Packet;

/// Why a packet produced no record.
pub(crate) enum Error {
    /// Not IPv4/IPv6 (ARP, LLDP, ...), or more VLAN tags than we follow.
    NotIp,
    /// Truncated or inconsistent headers.
    Malformed,
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: u32 = 14;
/// IPv6 extension headers followed before giving up on the transport header.
const MAX_EXT_HEADERS: usize = 6;
const TCP_MAX_OPTS: usize = 40;
/// Stack buffer for the options: the masked length (at most 60) must fit it
/// for the verifier, although the header format caps options at 40 bytes.
const TCP_OPT_BUF: usize = 64;

/// Header bytes with 8-byte alignment, so addresses are read as whole words.
/// (BPF has no memcpy: byte-slice copies become byte loops, ~4 insns a byte.)
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Hdr<const N: usize>([u8; N]);

impl<const N: usize> core::ops::Deref for Hdr<N> {
    type Target = [u8; N];
    fn deref(&self) -> &[u8; N] {
        &self.0
    }
}

/// Copies `words` u32 words from aligned header bytes at `from` to `to`.
#[inline(always)]
fn copy_words<const N: usize>(h: &Hdr<N>, from: usize, to: &mut [u8; 16], words: usize) {
    let src = h.0.as_ptr();
    let dst = to.as_mut_ptr();
    for w in 0..4 {
        if w >= words || from + 4 * w + 4 > N {
            break;
        }
        // SAFETY: bounds checked above; `from` is a multiple of 4 in an
        // 8-aligned buffer and `to` sits at a 16-byte-aligned record offset.
        unsafe {
            let v = core::ptr::read(src.add(from + 4 * w) as *const u32);
            core::ptr::write(dst.add(4 * w) as *mut u32, v);
        }
    }
}

/// Big-endian u16 at `i` of aligned header bytes, read as one half-word
/// (`i` is even: a constant at every call site).
#[inline(always)]
fn word16<const N: usize>(h: &Hdr<N>, i: usize) -> u16 {
    if i % 2 != 0 || i + 2 > N {
        return 0;
    }
    // SAFETY: in bounds and 2-aligned in an 8-aligned buffer (checked above).
    u16::from_be(unsafe { core::ptr::read(h.0.as_ptr().add(i) as *const u16) })
}

/// Big-endian u32 at `i` of aligned header bytes, read as one word (`i` is
/// a multiple of 4).
#[inline(always)]
fn word32<const N: usize>(h: &Hdr<N>, i: usize) -> u32 {
    if i % 4 != 0 || i + 4 > N {
        return 0;
    }
    // SAFETY: in bounds and 4-aligned in an 8-aligned buffer (checked above).
    u32::from_be(unsafe { core::ptr::read(h.0.as_ptr().add(i) as *const u32) })
}

/// Resets a record with word stores (a plain assignment compiles to a byte loop).
#[inline(always)]
pub(crate) fn zero_record(meta: &mut PacketMeta) {
    const WORDS: usize = core::mem::size_of::<PacketMeta>() / 8;
    let p = meta as *mut PacketMeta as *mut u64;
    for i in 0..WORDS {
        // SAFETY: PacketMeta is 8-aligned, WORDS * 8 bytes long, all-integer.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
    }
    meta.segs = 1;
}

#[inline(always)]
fn load<P: Packet, T: Copy>(pkt: &P, off: u32) -> Result<T, Error> {
    let mut v = MaybeUninit::<T>::uninit();
    if pkt.load(
        off,
        v.as_mut_ptr() as *mut c_void,
        core::mem::size_of::<T>() as u32,
    ) {
        // SAFETY: the helper filled all size_of::<T>() bytes; T is plain bytes.
        Ok(unsafe { v.assume_init() })
    } else {
        Err(Error::Malformed)
    }
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    match (b.get(i), b.get(i + 1)) {
        (Some(h), Some(l)) => u16::from_be_bytes([*h, *l]),
        _ => 0,
    }
}

#[inline(always)]
fn be32(b: &[u8], i: usize) -> u32 {
    (be16(b, i) as u32) << 16 | be16(b, i + 2) as u32
}

/// Fills `meta` from the packet; `ts_ns`, `ifindex`, `direction`, `wire_len`
/// and `segs` are already set by the caller.
#[inline(always)]
pub(crate) fn parse<P: Packet>(pkt: &P, meta: &mut PacketMeta) -> Result<(), Error> {
    if fast_ipv4(pkt, meta) {
        return Ok(());
    }
    let eth: [u8; 14] = load(pkt, 0)?;
    let mut ethertype = be16(&eth, 12);
    let mut off = ETH_HLEN;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: [u8; 4] = load(pkt, off)?;
        let vid = be16(&tag, 0) & 0x0fff;
        if meta.vlan_count == 0 {
            meta.outer_vlan = vid;
        } else {
            meta.inner_vlan = vid;
        }
        meta.vlan_count += 1;
        ethertype = be16(&tag, 2);
        off += 4;
    }
    let (l4_off, l3_end) = match ethertype {
        ETH_P_IP => ipv4(pkt, off, meta)?,
        ETH_P_IPV6 => ipv6(pkt, off, meta)?,
        _ => return Err(Error::NotIp),
    };
    if meta.ip_flags & IP_FLAG_LATER_FRAGMENT != 0 {
        meta.kind = RecordKind::OtherIp as u8;
        return Ok(());
    }
    match meta.l4_proto {
        ipproto::TCP => tcp(pkt, l4_off, l3_end, meta),
        ipproto::UDP => {
            let h: [u8; 8] = load(pkt, l4_off)?;
            meta.kind = RecordKind::Udp as u8;
            meta.sport = be16(&h, 0);
            meta.dport = be16(&h, 2);
            meta.payload_len = payload(pkt, meta, l4_off + 8, l3_end)?;
            Ok(())
        }
        ipproto::ICMP | ipproto::ICMPV6 => icmp(pkt, l4_off, l3_end, meta),
        _ => {
            meta.kind = RecordKind::OtherIp as u8;
            Ok(())
        }
    }
}

/// Bytes 2..66 of a frame: Ethernet from the source MAC on, IPv4 without
/// options, TCP with 12 option bytes (or UDP and the start of its payload).
/// Starting at byte 2 puts the addresses on 4-byte boundaries of the buffer
/// (whole-word copies).
const FAST_OFF: u32 = 2;
const FAST_LEN: usize = 64;
/// Buffer offsets of the headers in the fast layout.
const FAST_IP: usize = 12;
const FAST_L4: usize = 32;
const FAST_OPTS: usize = 52;

/// The layout of nearly every TCP packet a Linux host sends or receives
/// (untagged Ethernet, IPv4 without options, TCP without options or with
/// the aligned timestamp option alone), and of untagged IPv4 UDP, read with
/// one helper call instead of three or four plus an option walk. Anything
/// else, or anything odd, returns false before `meta` is touched and takes
/// the general path, which fills the same fields the same way. Fields are
/// read as aligned words: byte-wise reads made LLVM load and spill every
/// byte up front, which cost more than the loads and filled the stack.
#[inline(always)]
fn fast_ipv4<P: Packet>(pkt: &P, meta: &mut PacketMeta) -> bool {
    let len = pkt.len();
    if len < FAST_OFF + FAST_LEN as u32 {
        return false;
    }
    let mut b = MaybeUninit::<Hdr<FAST_LEN>>::uninit();
    if !pkt.load(FAST_OFF, b.as_mut_ptr() as *mut c_void, FAST_LEN as u32) {
        return false;
    }
    // SAFETY: the helper filled all FAST_LEN bytes.
    let b = unsafe { b.assume_init() };
    let ip = FAST_IP;
    let l4 = FAST_L4;
    let total = word16(&b, ip + 2) as u32;
    let frag = word16(&b, ip + 6);
    let proto = b.0[ip + 9];
    let doff = (b.0[l4 + 12] >> 4) as u32 * 4;
    let timestamps = doff == 32 && word32(&b, FAST_OPTS) == 0x0101_080a;
    let header = match proto {
        ipproto::TCP if doff == 20 || timestamps => doff,
        ipproto::UDP => 8,
        _ => return false,
    };
    if word16(&b, 10) != ETH_P_IP
        || b.0[ip] != 0x45
        || frag & 0x1fff != 0
        || (total != 0 && total < 20)
    {
        return false;
    }
    let segs = meta.segs;
    let data_off = ETH_HLEN + 20 + header;
    let end = if segs > 1 || total == 0 {
        len
    } else {
        ETH_HLEN + total
    };
    if end < data_off {
        return false;
    }
    meta.ip_version = 4;
    meta.tos = b.0[ip + 1];
    meta.ip_len = total as u16;
    meta.ip_id = word16(&b, ip + 4) as u32;
    if frag & 0x4000 != 0 {
        meta.ip_flags |= IP_FLAG_DF;
    }
    if frag & 0x2000 != 0 {
        meta.ip_flags |= IP_FLAG_MF;
    }
    meta.ttl = b.0[ip + 8];
    meta.l4_proto = proto;
    copy_words(&b, ip + 12, &mut meta.src_addr, 1);
    copy_words(&b, ip + 16, &mut meta.dst_addr, 1);
    meta.sport = word16(&b, l4);
    meta.dport = word16(&b, l4 + 2);
    meta.payload_len = end - data_off;
    if proto == ipproto::UDP {
        meta.kind = RecordKind::Udp as u8;
        return true;
    }
    meta.kind = RecordKind::Tcp as u8;
    meta.seq = word32(&b, l4 + 4);
    meta.ack = word32(&b, l4 + 8);
    meta.tcp_flags = b.0[l4 + 13];
    meta.window = word16(&b, l4 + 14);
    if timestamps {
        meta.tcp_opts = tcp_opts::TIMESTAMPS;
        meta.tsval = word32(&b, FAST_OPTS + 4);
        meta.tsecr = word32(&b, FAST_OPTS + 8);
    }
    true
}

/// Transport payload length: from the IP lengths, except for GSO
/// super-packets whose IP length describes one segment (or is 0 with BIG TCP).
#[inline(always)]
fn payload<P: Packet>(
    pkt: &P,
    meta: &PacketMeta,
    data_off: u32,
    l3_end: u32,
) -> Result<u32, Error> {
    let end = if meta.segs > 1 || meta.ip_len == 0 {
        pkt.len()
    } else {
        l3_end
    };
    if end < data_off {
        return Err(Error::Malformed);
    }
    Ok(end - data_off)
}

/// Returns (transport offset, end of the IP packet).
#[inline(always)]
fn ipv4<P: Packet>(pkt: &P, off: u32, meta: &mut PacketMeta) -> Result<(u32, u32), Error> {
    let h: Hdr<20> = load(pkt, off)?;
    if h[0] >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let ihl = ((h[0] & 0x0f) as u32) * 4;
    let total = be16(&h.0, 2) as u32;
    if ihl < 20 || (total != 0 && total < ihl) {
        return Err(Error::Malformed);
    }
    meta.ip_version = 4;
    meta.tos = h[1];
    meta.ip_len = total as u16;
    meta.ip_id = be16(&h.0, 4) as u32;
    let frag = be16(&h.0, 6);
    if frag & 0x4000 != 0 {
        meta.ip_flags |= IP_FLAG_DF;
    }
    if frag & 0x2000 != 0 {
        meta.ip_flags |= IP_FLAG_MF;
    }
    if frag & 0x1fff != 0 {
        meta.ip_flags |= IP_FLAG_LATER_FRAGMENT;
    }
    meta.ttl = h[8];
    meta.l4_proto = h[9];
    copy_words(&h, 12, &mut meta.src_addr, 1);
    copy_words(&h, 16, &mut meta.dst_addr, 1);
    Ok((off + ihl, off + total))
}

#[inline(always)]
fn ipv6<P: Packet>(pkt: &P, off: u32, meta: &mut PacketMeta) -> Result<(u32, u32), Error> {
    let h: Hdr<40> = load(pkt, off)?;
    if h[0] >> 4 != 6 {
        return Err(Error::Malformed);
    }
    meta.ip_version = 6;
    meta.tos = ((be16(&h.0, 0) >> 4) & 0xff) as u8;
    meta.ip_id = be32(&h.0, 0) & 0x000f_ffff;
    let plen = be16(&h.0, 4) as u32;
    meta.ip_len = if plen == 0 {
        0
    } else {
        (plen + 40).min(u16::MAX as u32) as u16
    };
    meta.ttl = h[7];
    copy_words(&h, 8, &mut meta.src_addr, 4);
    copy_words(&h, 24, &mut meta.dst_addr, 4);
    let mut next = h[6];
    let mut l4 = off + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // hop-by-hop, routing, destination options: (len + 1) * 8 bytes
            0 | 43 | 60 => {
                let e: [u8; 2] = load(pkt, l4)?;
                next = e[0];
                l4 += (e[1] as u32 + 1) * 8;
            }
            // fragment header: fixed 8 bytes
            44 => {
                let e: [u8; 8] = load(pkt, l4)?;
                next = e[0];
                let fo = be16(&e, 2);
                if fo & 0xfff8 != 0 {
                    meta.ip_flags |= IP_FLAG_LATER_FRAGMENT;
                }
                if fo & 1 != 0 {
                    meta.ip_flags |= IP_FLAG_MF;
                }
                l4 += 8;
            }
            // authentication header: (len + 2) * 4 bytes
            51 => {
                let e: [u8; 2] = load(pkt, l4)?;
                next = e[0];
                l4 += (e[1] as u32 + 2) * 4;
            }
            _ => break,
        }
    }
    meta.l4_proto = next;
    Ok((l4, off + 40 + plen))
}

#[inline(always)]
fn tcp<P: Packet>(pkt: &P, off: u32, l3_end: u32, meta: &mut PacketMeta) -> Result<(), Error> {
    let h: [u8; 20] = load(pkt, off)?;
    let words = (h[12] >> 4) as u32;
    if words < 5 {
        return Err(Error::Malformed);
    }
    let doff = words * 4;
    meta.kind = RecordKind::Tcp as u8;
    meta.sport = be16(&h, 0);
    meta.dport = be16(&h, 2);
    meta.seq = be32(&h, 4);
    meta.ack = be32(&h, 8);
    meta.tcp_flags = h[13];
    meta.window = be16(&h, 14);
    meta.payload_len = payload(pkt, meta, off + doff, l3_end)?;
    // The mask gives the verifier an unsigned bound (≤ 60) it can check
    // against the buffer; for a valid header it changes nothing.
    let opt_len = ((words - 5) * 4) & 0x3c;
    if opt_len == 0 {
        return Ok(());
    }
    let Some(walk) = PHX_OPT_WALK.get_ptr_mut(0) else {
        return Err(Error::Malformed);
    };
    // SAFETY: per-CPU slot, used only for the duration of this program run.
    let walk = unsafe { &mut *walk };
    walk.reset();
    walk.len = opt_len.min(TCP_MAX_OPTS as u32);
    if !pkt.load(off + 20, walk.opts.0.as_mut_ptr() as *mut c_void, opt_len) {
        return Err(Error::Malformed);
    }
    // Linux puts NOP, NOP, timestamps first on every segment: take it
    // directly and walk only what follows (SACK blocks, usually nothing).
    if walk.len >= 12 && walk.opts[..4] == [1, 1, 8, 10] {
        walk.flags = tcp_opts::TIMESTAMPS;
        walk.tsval = be32(&walk.opts.0, 4);
        walk.tsecr = be32(&walk.opts.0, 8);
        walk.pos = 12;
        sack_after_timestamps(walk);
    }
    tcp_options(walk, meta);
    Ok(())
}

/// State of the option walk. It lives in a per-CPU map value, not on the
/// stack, and the `bpf_loop` callback finds it by a map lookup: the verifier
/// tracks no values in map memory, so every iteration starts from the same
/// abstract state and the callback is checked about twice. Kept on the stack
/// (the flags, positions and SACK count all known constants), each distinct
/// combination is a state of its own, and with SACK blocks the walk passed
/// the verifier's 1M-instruction budget.
#[repr(C, align(8))]
struct OptWalk {
    opts: Hdr<TCP_OPT_BUF>,
    len: u32,
    pos: u32,
    flags: u8,
    wscale: u8,
    sack_count: u8,
    _pad: u8,
    mss: u16,
    _pad2: u16,
    tsval: u32,
    tsecr: u32,
    sack: [u32; 2 * MAX_SACK_BLOCKS],
}

/// The walk's per-CPU slot.
#[map(name = "PHX_OPT_WALK")]
static PHX_OPT_WALK: PerCpuArray<OptWalk> = PerCpuArray::with_max_entries(1, 0);

impl OptWalk {
    /// Zeroes everything after the option bytes, as words; the option bytes
    /// are overwritten by the load and read only below `len`.
    #[inline(always)]
    fn reset(&mut self) {
        const FROM: usize = TCP_OPT_BUF / 8;
        const WORDS: usize = core::mem::size_of::<OptWalk>() / 8;
        let p = self as *mut OptWalk as *mut u64;
        for i in FROM..WORDS {
            // SAFETY: OptWalk is 8-aligned and a whole number of words long.
            unsafe { core::ptr::write_volatile(p.add(i), 0) };
        }
    }
}

const _: () = assert!(core::mem::size_of::<OptWalk>() % 8 == 0);
const _: () = assert!(TCP_OPT_BUF % 8 == 0);

/// Linux's SACK layout after the timestamps: NOP, NOP, then the SACK option
/// ending the list. Its blocks sit at fixed 4-aligned offsets, so they are
/// read as words with no walk (the walk made a SACK ACK cost ~2.5x a plain
/// one). Any other layout is left to the walk.
#[inline(always)]
fn sack_after_timestamps(walk: &mut OptWalk) {
    if walk.len < 24 || word16(&walk.opts, 12) != 0x0101 || walk.opts[14] != 5 {
        return;
    }
    let olen = walk.opts[15] as u32;
    if olen < 10 || (olen - 2) % 8 != 0 || 14 + olen != walk.len {
        return;
    }
    let blocks = ((olen - 2) / 8) as usize;
    for b in 0..MAX_SACK_BLOCKS {
        if b >= blocks {
            break;
        }
        let l = word32(&walk.opts, 16 + 8 * b);
        let r = word32(&walk.opts, 20 + 8 * b);
        if let Some(slot) = walk.sack.get_mut(2 * b) {
            *slot = l;
        }
        if let Some(slot) = walk.sack.get_mut(2 * b + 1) {
            *slot = r;
        }
    }
    walk.flags |= tcp_opts::SACK;
    walk.sack_count = blocks.min(MAX_SACK_BLOCKS) as u8;
    walk.pos = walk.len;
}

/// Walks the option list from `walk.pos`; stops at the first inconsistency
/// and flags it.
#[inline(always)]
fn tcp_options(walk: &mut OptWalk, meta: &mut PacketMeta) {
    if walk.pos < walk.len {
        // SAFETY: `opt_step` takes no context; it finds the walk in its map.
        unsafe {
            bpf_loop(
                TCP_MAX_OPTS as u32,
                opt_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        }
    }
    meta.tcp_opts = walk.flags;
    meta.mss = walk.mss;
    meta.wscale = walk.wscale;
    meta.tsval = walk.tsval;
    meta.tsecr = walk.tsecr;
    meta.sack_count = walk.sack_count;
    for (d, v) in meta.sack.iter_mut().zip(walk.sack) {
        *d = v;
    }
}

#[inline(always)]
fn opt_byte(w: &OptWalk, i: usize) -> Option<u8> {
    if i >= TCP_MAX_OPTS || i as u32 >= w.len {
        return None;
    }
    w.opts.get(i).copied()
}

#[inline(always)]
fn opt_be16(w: &OptWalk, i: usize) -> u16 {
    u16::from_be_bytes([opt_byte(w, i).unwrap_or(0), opt_byte(w, i + 1).unwrap_or(0)])
}

#[inline(always)]
fn opt_be32(w: &OptWalk, i: usize) -> u32 {
    (opt_be16(w, i) as u32) << 16 | opt_be16(w, i + 2) as u32
}

/// One option per call; returns 1 to stop the loop.
extern "C" fn opt_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = PHX_OPT_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by `tcp` for the packet being parsed.
    let w = unsafe { &mut *w };
    let i = w.pos as usize;
    let Some(kind) = opt_byte(w, i) else {
        return 1;
    };
    match kind {
        0 => return 1,
        1 => {
            w.pos += 1;
            return 0;
        }
        _ => {}
    }
    let Some(olen) = opt_byte(w, i + 1) else {
        w.flags |= tcp_opts::MALFORMED;
        return 1;
    };
    let olen = olen as usize;
    if olen < 2 || i + olen > w.len as usize {
        w.flags |= tcp_opts::MALFORMED;
        return 1;
    }
    match (kind, olen) {
        (2, 4) => {
            w.flags |= tcp_opts::MSS;
            w.mss = opt_be16(w, i + 2);
        }
        (3, 3) => {
            w.flags |= tcp_opts::WSCALE;
            w.wscale = opt_byte(w, i + 2).unwrap_or(0);
        }
        (4, 2) => w.flags |= tcp_opts::SACK_PERM,
        (5, 10 | 18 | 26 | 34) => {
            w.flags |= tcp_opts::SACK;
            let blocks = ((olen - 2) / 8).min(MAX_SACK_BLOCKS);
            for b in 0..MAX_SACK_BLOCKS {
                if b >= blocks {
                    break;
                }
                let at = i + 2 + b * 8;
                let (l, r) = (opt_be32(w, at), opt_be32(w, at + 4));
                if let Some(slot) = w.sack.get_mut(2 * b) {
                    *slot = l;
                }
                if let Some(slot) = w.sack.get_mut(2 * b + 1) {
                    *slot = r;
                }
            }
            w.sack_count = blocks as u8;
        }
        (8, 10) => {
            w.flags |= tcp_opts::TIMESTAMPS;
            w.tsval = opt_be32(w, i + 2);
            w.tsecr = opt_be32(w, i + 6);
        }
        (2 | 3 | 4 | 5 | 8, _) => {
            w.flags |= tcp_opts::MALFORMED;
            return 1;
        }
        _ => {}
    }
    w.pos += olen as u32;
    0
}

/// ICMP/ICMPv6: errors carry the quoted packet's 5-tuple (and TCP seq), so a
/// frag-needed can be tied to its flow; other messages are plain records.
#[inline(always)]
fn icmp<P: Packet>(pkt: &P, off: u32, l3_end: u32, meta: &mut PacketMeta) -> Result<(), Error> {
    let h: [u8; 8] = load(pkt, off)?;
    meta.payload_len = payload(pkt, meta, off + 8, l3_end)?;
    let (ty, code) = (h[0], h[1]);
    // RFC 792/1812 errors: unreachable, source quench, redirect, time
    // exceeded, parameter problem; ICMPv6 (RFC 4443): types below 128.
    let is_error = if meta.l4_proto == ipproto::ICMP {
        matches!(ty, 3 | 4 | 5 | 11 | 12)
    } else {
        ty < 128
    };
    meta.kind = RecordKind::OtherIp as u8;
    meta.icmp_type = ty;
    meta.icmp_code = code;
    if !is_error {
        return Ok(());
    }
    meta.icmp_mtu = if meta.l4_proto == ipproto::ICMP {
        if ty == 3 && code == 4 {
            be16(&h, 6) as u32
        } else {
            0
        }
    } else if ty == 2 {
        be32(&h, 4)
    } else {
        0
    };
    meta.kind = RecordKind::IcmpError as u8;
    // The quoted packet is often cut short: take what is there.
    let inner = off + 8;
    let inner_l4 = if meta.l4_proto == ipproto::ICMP {
        let Ok(q) = load::<P, Hdr<20>>(pkt, inner) else {
            return Ok(());
        };
        meta.inner_proto = q[9];
        copy_words(&q, 12, &mut meta.inner_src, 1);
        copy_words(&q, 16, &mut meta.inner_dst, 1);
        inner + ((q[0] & 0x0f) as u32) * 4
    } else {
        let Ok(q) = load::<P, Hdr<40>>(pkt, inner) else {
            return Ok(());
        };
        meta.inner_proto = q[6];
        copy_words(&q, 8, &mut meta.inner_src, 4);
        copy_words(&q, 24, &mut meta.inner_dst, 4);
        inner + 40
    };
    if meta.inner_proto == ipproto::TCP || meta.inner_proto == ipproto::UDP {
        if let Ok(p) = load::<P, [u8; 8]>(pkt, inner_l4) {
            meta.inner_sport = be16(&p, 0);
            meta.inner_dport = be16(&p, 2);
            if meta.inner_proto == ipproto::TCP {
                meta.inner_seq = be32(&p, 4);
            }
        }
    }
    Ok(())
}
