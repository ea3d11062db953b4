//! Types shared by the Phalanx kernel programs and the daemon.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, `Copy`,
//! has explicit padding fields and carries tags as plain integers: the user
//! side converts them with `TryFrom`, never by transmuting bytes into enums.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
pub mod user;

/// Name of the ring buffer that carries [`PacketMeta`] records.
pub const MAP_EVENTS: &str = "PHX_EVENTS";
/// Name of the per-CPU counter array indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "PHX_COUNTERS";
/// Name of the exact 5-tuple filter hash map ([`FilterTuple`] -> `u32` rule id).
pub const MAP_FILTER_TUPLES: &str = "PHX_FILTER_TUPLES";
/// Name of the CIDR/port filter LPM trie ([`FilterPrefix`] -> `u32` rule id).
pub const MAP_FILTER_PREFIXES: &str = "PHX_FILTER_PREFIXES";
/// Name of the runtime settings array indexed by [`Setting`].
pub const MAP_SETTINGS: &str = "PHX_SETTINGS";
/// Name of the hash map of the interfaces the programs are attached to
/// (ifindex -> 1), so egress can tell a forwarded packet already recorded
/// on arrival.
pub const MAP_WATCHED: &str = "PHX_WATCHED";

/// Name of the XDP ingress program.
pub const PROG_XDP: &str = "phalanx_xdp";
/// Name of the TC (tcx) program for ingress.
pub const PROG_TC_INGRESS: &str = "phalanx_tc_ingress";
/// Name of the TC (tcx) program for egress.
pub const PROG_TC_EGRESS: &str = "phalanx_tc_egress";

/// Records (per CPU) between two looks at the ring's fill level; a look
/// that finds it at least 1/[`WAKEUP_FILL_DIVISOR`] full wakes the
/// consumer. Below that the daemon drains on its timer, so a wake-up (tens
/// of microseconds of CPU in a VM) is paid per ring fraction, not per batch.
pub const WAKEUP_CHECK_EVERY: u32 = 64;
/// See [`WAKEUP_CHECK_EVERY`].
pub const WAKEUP_FILL_DIVISOR: u64 = 4;

/// Record kind tag (first byte of a record's header).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A TCP segment; TCP fields are valid.
    Tcp = 1,
    /// A UDP datagram; ports and `payload_len` are valid.
    Udp = 2,
    /// An ICMP/ICMPv6 error quoting another packet; `icmp_*` and `inner_*` are valid.
    IcmpError = 3,
    /// Another IP packet (ICMP echo, other protocols): L3 fields only.
    OtherIp = 4,
}

/// Which way the packet crossed the interface.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received on the interface (XDP, tc ingress).
    Ingress = 0,
    /// Sent from the interface (tc egress).
    Egress = 1,
    /// Unknown: a capture file that does not record direction.
    Unknown = 2,
}

impl TryFrom<u8> for RecordKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::Tcp),
            2 => Ok(Self::Udp),
            3 => Ok(Self::IcmpError),
            4 => Ok(Self::OtherIp),
            other => Err(other),
        }
    }
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Self::Ingress),
            1 => Ok(Self::Egress),
            2 => Ok(Self::Unknown),
            other => Err(other),
        }
    }
}

/// IPv4 "don't fragment" bit in [`PacketMeta::ip_flags`].
pub const IP_FLAG_DF: u8 = 1;
/// IPv4 "more fragments" bit, or an IPv6 fragment header with M set.
pub const IP_FLAG_MF: u8 = 2;
/// A non-first fragment: no L4 header in this packet.
pub const IP_FLAG_LATER_FRAGMENT: u8 = 4;

/// TCP header flag bits as on the wire (`tcp_flags`).
pub mod tcp_flags {
    /// FIN
    pub const FIN: u8 = 0x01;
    /// SYN
    pub const SYN: u8 = 0x02;
    /// RST
    pub const RST: u8 = 0x04;
    /// PSH
    pub const PSH: u8 = 0x08;
    /// ACK
    pub const ACK: u8 = 0x10;
    /// URG
    pub const URG: u8 = 0x20;
    /// ECE (ECN echo)
    pub const ECE: u8 = 0x40;
    /// CWR (congestion window reduced)
    pub const CWR: u8 = 0x80;
}

/// Bits of [`PacketMeta::tcp_opts`]: which TCP options were present.
pub mod tcp_opts {
    /// MSS option present; value in `mss`.
    pub const MSS: u8 = 0x01;
    /// Window scale option present; value in `wscale`.
    pub const WSCALE: u8 = 0x02;
    /// SACK-permitted option present.
    pub const SACK_PERM: u8 = 0x04;
    /// Timestamps option present; values in `tsval`/`tsecr`.
    pub const TIMESTAMPS: u8 = 0x08;
    /// SACK blocks present; `sack_count` of them in `sack`.
    pub const SACK: u8 = 0x10;
    /// The option list was malformed; options before the damage are kept.
    pub const MALFORMED: u8 = 0x80;
}

/// IP protocol numbers used by the parsers.
pub mod ipproto {
    /// ICMP
    pub const ICMP: u8 = 1;
    /// TCP
    pub const TCP: u8 = 6;
    /// UDP
    pub const UDP: u8 = 17;
    /// ICMPv6
    pub const ICMPV6: u8 = 58;
}

/// Maximum SACK blocks carried per record (the option holds at most 4, 3 with timestamps).
pub const MAX_SACK_BLOCKS: usize = 3;

/// One packet's metadata: the only record type crossing the ring buffer, and
/// the record the file reader produces, so the flow engine sees one stream.
///
/// Addresses are 16 bytes; IPv4 uses the first 4 and zeroes the rest
/// (`ip_version` disambiguates). Multi-byte fields are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// Timestamp in nanoseconds (kernel: CLOCK_MONOTONIC; file: capture time since the epoch).
    pub ts_ns: u64,
    /// [`RecordKind`] tag.
    pub kind: u8,
    /// [`Direction`] tag.
    pub direction: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// IP protocol of the transport header (after IPv6 extension headers).
    pub l4_proto: u8,
    /// Interface index (kernel) or capture interface id (file).
    pub ifindex: u32,
    /// Source address.
    pub src_addr: [u8; 16],
    /// Destination address.
    pub dst_addr: [u8; 16],
    /// IPv4 identification, or IPv6 flow label.
    pub ip_id: u32,
    /// IPv4 total length, or IPv6 payload length + 40.
    pub ip_len: u16,
    /// TTL or hop limit.
    pub ttl: u8,
    /// DSCP (upper 6 bits) and ECN (lower 2 bits).
    pub tos: u8,
    /// `IP_FLAG_*` bits.
    pub ip_flags: u8,
    /// Number of VLAN tags (0..=2).
    pub vlan_count: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// `tcp_opts::*` bits.
    pub tcp_opts: u8,
    /// Outer VLAN id (0 when untagged).
    pub outer_vlan: u16,
    /// Inner VLAN id (0 unless QinQ).
    pub inner_vlan: u16,
    /// Source port (TCP/UDP).
    pub sport: u16,
    /// Destination port (TCP/UDP).
    pub dport: u16,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number.
    pub ack: u32,
    /// TCP window field as sent (unscaled).
    pub window: u16,
    /// TCP MSS option value.
    pub mss: u16,
    /// Transport payload length in bytes (whole GSO super-packet on tc).
    pub payload_len: u32,
    /// TCP window scale shift.
    pub wscale: u8,
    /// Number of valid SACK blocks in `sack`.
    pub sack_count: u8,
    /// Wire segments this record stands for (GSO segments on tc; else 1).
    pub segs: u16,
    /// TCP timestamp value.
    pub tsval: u32,
    /// TCP timestamp echo reply.
    pub tsecr: u32,
    /// Length of the frame as seen (bytes).
    pub wire_len: u32,
    /// Short hash of the first payload bytes (0 when payload was not seen).
    pub payload_hash: u32,
    /// Segment size of a GSO super-packet (`segs` > 1): every segment but
    /// the last carries this much payload. 0 when not known (files, XDP).
    pub gso_size: u16,
    /// ICMP/ICMPv6 type of an error record.
    pub icmp_type: u8,
    /// ICMP/ICMPv6 code of an error record.
    pub icmp_code: u8,
    /// Next-hop MTU (frag-needed) or MTU (packet too big).
    pub icmp_mtu: u32,
    // Fields below are zero in every record without SACK blocks that is not
    // an ICMP error: the ring carries such records without them
    // ([`RING_SHORT_LEN`]).
    /// SACK blocks as (left, right) pairs.
    pub sack: [u32; 2 * MAX_SACK_BLOCKS],
    /// Quoted packet's source address.
    pub inner_src: [u8; 16],
    /// Quoted packet's destination address.
    pub inner_dst: [u8; 16],
    /// Quoted packet's source port.
    pub inner_sport: u16,
    /// Quoted packet's destination port.
    pub inner_dport: u16,
    /// Quoted TCP sequence number.
    pub inner_seq: u32,
    /// Protocol of the packet quoted inside the ICMP error.
    pub inner_proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}

/// Bytes of a record the ring buffer carries when everything from `sack`
/// on is zero (no SACK blocks, not an ICMP error): nearly every record,
/// and 72 bytes fewer to write in the kernel and read in the daemon.
pub const RING_SHORT_LEN: usize = core::mem::offset_of!(PacketMeta, sack);

const _: () = assert!(core::mem::size_of::<PacketMeta>() == 184);
// A whole number of words: the kernel sends it as [u64; 14].
const _: () = assert!(RING_SHORT_LEN == 112);
const _: () = assert!(core::mem::align_of::<PacketMeta>() == 8);

impl PacketMeta {
    /// Whether everything from `sack` on is zero (no SACK blocks, not an
    /// ICMP error): the ring then carries the first [`RING_SHORT_LEN`]
    /// bytes only.
    #[inline(always)]
    pub fn tail_is_zero(&self) -> bool {
        self.sack_count == 0 && self.kind != RecordKind::IcmpError as u8
    }

    /// The payload of a full wire segment this record's sender cuts it
    /// into, given the receiver's MSS option: the MSS less the TCP options
    /// each segment carries, as Linux lays them out (timestamps 12 bytes
    /// with padding; SACK 4 plus 8 per block), the way its `mss_cache`
    /// does. At least 1.
    #[inline]
    pub fn wire_segment_size(&self, receiver_mss: u32) -> u32 {
        let ts = if self.tcp_opts & tcp_opts::TIMESTAMPS != 0 {
            12
        } else {
            0
        };
        let sack = if self.tcp_opts & tcp_opts::SACK != 0 {
            4 + 8 * u32::from(self.sack_count)
        } else {
            0
        };
        receiver_mss.saturating_sub(ts + sack).max(1)
    }

    /// An all-zero record (every field valid as "absent").
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            kind: 0,
            direction: 0,
            ip_version: 0,
            l4_proto: 0,
            ifindex: 0,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            ip_id: 0,
            ip_len: 0,
            ttl: 0,
            tos: 0,
            ip_flags: 0,
            vlan_count: 0,
            tcp_flags: 0,
            tcp_opts: 0,
            outer_vlan: 0,
            inner_vlan: 0,
            sport: 0,
            dport: 0,
            seq: 0,
            ack: 0,
            window: 0,
            mss: 0,
            payload_len: 0,
            wscale: 0,
            sack_count: 0,
            segs: 1,
            tsval: 0,
            tsecr: 0,
            wire_len: 0,
            payload_hash: 0,
            gso_size: 0,
            icmp_type: 0,
            icmp_code: 0,
            icmp_mtu: 0,
            sack: [0; 2 * MAX_SACK_BLOCKS],
            inner_src: [0; 16],
            inner_dst: [0; 16],
            inner_sport: 0,
            inner_dport: 0,
            inner_seq: 0,
            inner_proto: 0,
            _pad: [0; 7],
        }
    }
}

impl Default for PacketMeta {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Indices of the per-CPU counter array [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the programs ran on.
    Seen = 0,
    /// Packets parsed to a record (IP found).
    Parsed = 1,
    /// Parsed packets that matched the scope filters.
    Matched = 2,
    /// Records submitted to the ring buffer.
    Submitted = 3,
    /// Records lost because the ring buffer was full.
    RingFull = 4,
    /// Packets whose headers were malformed or truncated.
    ParseError = 5,
    /// Packets that were not IP (ARP, LLDP, ...).
    NotIp = 6,
    /// Forwarded packets leaving a watched interface that were recorded
    /// when they arrived on a watched interface (not recorded twice).
    Forwarded = 7,
}

/// Number of entries in [`MAP_COUNTERS`].
pub const COUNTER_COUNT: u32 = 8;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Seen,
        Counter::Parsed,
        Counter::Matched,
        Counter::Submitted,
        Counter::RingFull,
        Counter::ParseError,
        Counter::NotIp,
        Counter::Forwarded,
    ];
}

/// Indices of the settings array [`MAP_SETTINGS`] (runtime, changed without reload).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// 0: no filters, every TCP packet is in scope. 1: only packets matching a filter.
    FilterMode = 0,
    /// In filter mode, protocols whose every packet is in scope (rules that
    /// name a protocol alone), as [`SCOPE_ALL_TCP`] | [`SCOPE_ALL_UDP`]: one
    /// array read instead of the filter maps' lookups.
    WholeProtocols = 1,
    /// In filter mode, the filter-map lookups some rule can answer, as
    /// [`LOOKUP_TUPLES`] | [`LOOKUP_PORT`] | [`LOOKUP_ANY_PORT`]: a packet
    /// out of scope skips the lookups no rule could match (each costs a
    /// hash or a trie walk per packet).
    Lookups = 2,
}

/// Number of entries in [`MAP_SETTINGS`].
pub const SETTING_COUNT: u32 = 3;

/// [`Setting::Lookups`] bit: some rule names an exact flow.
pub const LOOKUP_TUPLES: u32 = 1;
/// [`Setting::Lookups`] bit: some CIDR/port rule names a port.
pub const LOOKUP_PORT: u32 = 2;
/// [`Setting::Lookups`] bit: some CIDR rule names no port.
pub const LOOKUP_ANY_PORT: u32 = 4;

/// [`Setting::WholeProtocols`] bit: every TCP packet is in scope.
pub const SCOPE_ALL_TCP: u32 = 1;
/// [`Setting::WholeProtocols`] bit: every UDP packet is in scope.
pub const SCOPE_ALL_UDP: u32 = 2;

/// Key of the exact 5-tuple filter map. The kernel looks a packet up in
/// both orientations, so one entry scopes both directions of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FilterTuple {
    /// Source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FilterTuple>() == 40);

/// Data part of an LPM-trie filter key: protocol, port, then the address
/// as IPv4-mapped IPv6, so one trie holds v4 and v6 rules. A rule with no
/// port uses port 0 and is found by a second lookup with port 0; a rule
/// with no address has a prefix of 24 bits (protocol + port only).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FilterPrefix {
    /// IP protocol.
    pub proto: u8,
    /// Port in network byte order, so prefixes compare bytewise.
    pub port_be: [u8; 2],
    /// Address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<FilterPrefix>() == 19);

/// Bits in a [`FilterPrefix`] before the address starts.
pub const FILTER_PREFIX_HEAD_BITS: u32 = 24;

impl FilterPrefix {
    /// Key for an endpoint: IPv4 addresses are mapped into `::ffff:0:0/96`.
    pub fn endpoint(proto: u8, port: u16, ip_version: u8, addr: &[u8; 16]) -> Self {
        let mut mapped = [0u8; 16];
        if ip_version == 4 {
            mapped[10] = 0xff;
            mapped[11] = 0xff;
            mapped[12] = addr[0];
            mapped[13] = addr[1];
            mapped[14] = addr[2];
            mapped[15] = addr[3];
        } else {
            mapped = *addr;
        }
        Self {
            proto,
            port_be: port.to_be_bytes(),
            addr: mapped,
        }
    }
}
