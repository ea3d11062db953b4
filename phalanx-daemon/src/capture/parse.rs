//! User-space frame parser (etherparse) producing `PacketMeta` records.
//!
//! This is the only place in user space that decodes packet bytes: the file
//! reader and every other consumer of raw frames go through [`parse_frame`].
//! IP, extension headers, TCP, UDP and ICMP are decoded with etherparse; only
//! the small fixed link headers etherparse lacks (Linux SLL2, PPPoE session,
//! BSD null/loopback) or is too strict for (SLL rejects unknown ARPHRD types)
//! are read here by hand.

use etherparse::{
    icmpv4::DestUnreachableHeader, Ethernet2Slice, Icmpv4Slice, Icmpv4Type, Icmpv6Slice,
    Icmpv6Type, LaxIpSlice, SingleVlanSlice, TcpHeaderSlice, TcpOptionElement, TcpOptionReadError,
    TcpOptionsIterator, UdpHeaderSlice,
};
use phalanx_common::{
    ipproto, tcp_flags, tcp_opts, Direction, PacketMeta, RecordKind, IP_FLAG_DF,
    IP_FLAG_LATER_FRAGMENT, IP_FLAG_MF, MAX_SACK_BLOCKS,
};
use thiserror::Error;

/// Link-layer header type of a frame (tcpdump `LINKTYPE_*` registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// Ethernet II, optionally with 802.1Q / 802.1ad tags (LINKTYPE 1).
    Ethernet,
    /// Linux cooked capture v1 (LINKTYPE 113).
    LinuxSll,
    /// Linux cooked capture v2 (LINKTYPE 276).
    LinuxSll2,
    /// Raw IP, version taken from the first nibble (LINKTYPE 101, DLT 12 and 14).
    RawIp,
    /// Raw IPv4 (LINKTYPE 228).
    Ipv4,
    /// Raw IPv6 (LINKTYPE 229).
    Ipv6,
    /// BSD loopback with a host-order address family word (LINKTYPE 0).
    Null,
    /// OpenBSD loopback with a network-order address family word (LINKTYPE 108).
    Loop,
}

impl LinkType {
    /// Maps a pcap/pcapng link-type number to a supported link type.
    pub fn from_linktype(value: u32) -> Option<Self> {
        Some(match value {
            0 => Self::Null,
            1 => Self::Ethernet,
            12 | 14 | 101 => Self::RawIp,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }

    /// The canonical link-type number written to capture files.
    pub fn linktype(self) -> u32 {
        match self {
            Self::Null => 0,
            Self::Ethernet => 1,
            Self::RawIp => 101,
            Self::Loop => 108,
            Self::LinuxSll => 113,
            Self::Ipv4 => 228,
            Self::Ipv6 => 229,
            Self::LinuxSll2 => 276,
        }
    }
}

/// Why a frame produced no record.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A well-formed frame that does not carry IP (ARP, LLDP, PPPoE discovery, ...).
    #[error("not an IP packet (protocol {0:#06x})")]
    NotIp(u16),
    /// The frame ends before a header it announces is complete.
    #[error("{layer} header truncated")]
    Truncated {
        /// Header that was cut off.
        layer: &'static str,
    },
    /// A header holds values that cannot be decoded.
    #[error("malformed {layer} header: {reason}")]
    Malformed {
        /// Header that is malformed.
        layer: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ParseError {
    /// True for frames that are fine but simply not IP (counted apart from damage).
    pub fn is_not_ip(&self) -> bool {
        matches!(self, Self::NotIp(_))
    }
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
// Pre-standard QinQ outer tags still seen on older switches.
const ETH_QINQ_OLD1: u16 = 0x9100;
const ETH_QINQ_OLD2: u16 = 0x9200;
const ETH_PPPOE_SESSION: u16 = 0x8864;

/// Bytes of payload hashed into [`PacketMeta::payload_hash`].
pub const PAYLOAD_HASH_BYTES: usize = 64;

/// FNV-1a (32-bit) over the first [`PAYLOAD_HASH_BYTES`] bytes; 0 is reserved
/// for "no payload captured", so a hash that happens to be 0 becomes 1.
pub fn payload_hash(payload: &[u8]) -> u32 {
    if payload.is_empty() {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for &b in payload.iter().take(PAYLOAD_HASH_BYTES) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Parses one captured frame into a record.
///
/// `frame` holds the captured bytes (possibly cut at the snap length),
/// `wire_len` the frame's original length. Lengths in the record come from
/// the IP header, not from what was captured. Linux cooked headers carry the
/// packet direction and override `direction`.
pub fn parse_frame(
    link: LinkType,
    frame: &[u8],
    ts_ns: u64,
    ifindex: u32,
    direction: Direction,
    wire_len: u32,
) -> Result<PacketMeta, ParseError> {
    let mut meta = PacketMeta::zeroed();
    fill_frame(&mut meta, link, frame, ts_ns, ifindex, direction, wire_len)?;
    Ok(meta)
}

/// [`parse_frame`] into a record that is already zeroed (such as a slot
/// of a batch), so that the record is built where it is kept. On error the
/// record holds partial fields and is to be discarded.
pub(crate) fn fill_frame(
    meta: &mut PacketMeta,
    link: LinkType,
    frame: &[u8],
    ts_ns: u64,
    ifindex: u32,
    direction: Direction,
    wire_len: u32,
) -> Result<(), ParseError> {
    // A zero or too small original length means "unknown": use what was captured.
    let wire_len = wire_len.max(u32::try_from(frame.len()).unwrap_or(u32::MAX));
    meta.ts_ns = ts_ns;
    meta.ifindex = ifindex;
    meta.direction = direction as u8;
    meta.wire_len = wire_len;
    meta.segs = 1;

    let (ethertype, rest) = match link {
        LinkType::Ethernet => {
            let eth =
                Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| truncated("Ethernet"))?;
            (eth.ether_type().0, eth.payload_slice())
        }
        LinkType::LinuxSll => {
            let (hdr, rest) = frame.split_at_checked(16).ok_or(truncated("Linux SLL"))?;
            set_sll_direction(meta, u16::from_be_bytes([hdr[0], hdr[1]]));
            (u16::from_be_bytes([hdr[14], hdr[15]]), rest)
        }
        LinkType::LinuxSll2 => {
            let (hdr, rest) = frame.split_at_checked(20).ok_or(truncated("Linux SLL2"))?;
            set_sll_direction(meta, u16::from(hdr[10]));
            (u16::from_be_bytes([hdr[0], hdr[1]]), rest)
        }
        LinkType::RawIp => match frame.first().map(|b| b >> 4) {
            Some(4) => (ETH_IPV4, frame),
            Some(6) => (ETH_IPV6, frame),
            Some(v) => return Err(malformed("raw IP", format!("IP version {v}"))),
            None => return Err(truncated("raw IP")),
        },
        LinkType::Ipv4 => (ETH_IPV4, frame),
        LinkType::Ipv6 => (ETH_IPV6, frame),
        LinkType::Null | LinkType::Loop => {
            let (hdr, rest) = frame
                .split_first_chunk::<4>()
                .ok_or(truncated("loopback"))?;
            let hdr = *hdr;
            // DLT_NULL is in the capturing host's byte order, so accept both.
            let family = if link == LinkType::Loop {
                u32::from_be_bytes(hdr)
            } else {
                let le = u32::from_le_bytes(hdr);
                if le <= 0xffff {
                    le
                } else {
                    u32::from_be_bytes(hdr)
                }
            };
            let ethertype = match family {
                2 => ETH_IPV4,
                // AF_INET6 differs per OS: Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, macOS 30.
                10 | 24 | 28 | 30 => ETH_IPV6,
                other => return Err(ParseError::NotIp(other as u16)),
            };
            (ethertype, rest)
        }
    };
    let (ip, link_limit) = link_chain(meta, ethertype, rest)?;
    // Offset of the IP header in the frame: every slice above is a prefix of a suffix.
    let ip_offset = (ip.as_ptr() as usize).saturating_sub(frame.as_ptr() as usize);
    let mut ip_len_limit = wire_len.saturating_sub(ip_offset as u32);
    if let Some(limit) = link_limit {
        ip_len_limit = ip_len_limit.min(limit);
    }
    parse_ip(meta, ip, ip_len_limit)
}

fn truncated(layer: &'static str) -> ParseError {
    ParseError::Truncated { layer }
}

fn malformed(layer: &'static str, reason: impl ToString) -> ParseError {
    ParseError::Malformed {
        layer,
        reason: reason.to_string(),
    }
}

fn set_sll_direction(meta: &mut PacketMeta, packet_type: u16) {
    meta.direction = match packet_type {
        // host, broadcast, multicast, other host: all received on the interface
        0..=3 => Direction::Ingress as u8,
        4 => Direction::Egress as u8,
        _ => meta.direction,
    };
}

/// Walks VLAN tags and a PPPoE session header down to the IP header.
/// Returns the IP bytes and, when the link layer states it, how many bytes
/// of IP packet it carries.
fn link_chain<'a>(
    meta: &mut PacketMeta,
    mut ethertype: u16,
    mut rest: &'a [u8],
) -> Result<(&'a [u8], Option<u32>), ParseError> {
    let mut limit = None;
    loop {
        match ethertype {
            ETH_IPV4 | ETH_IPV6 => return Ok((rest, limit)),
            ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD1 | ETH_QINQ_OLD2 => {
                let tag = SingleVlanSlice::from_slice(rest).map_err(|_| truncated("VLAN"))?;
                let id = tag.vlan_identifier().value();
                // The record keeps the two outermost tags; deeper ones still count as seen.
                match meta.vlan_count {
                    0 => meta.outer_vlan = id,
                    1 => meta.inner_vlan = id,
                    _ => {}
                }
                meta.vlan_count = meta.vlan_count.saturating_add(1).min(2);
                ethertype = tag.ether_type().0;
                rest = tag.payload_slice();
            }
            ETH_PPPOE_SESSION => {
                // PPPoE session header (RFC 2516): ver/type, code, session id,
                // length; then the PPP protocol, one byte when compressed (odd).
                let hdr = rest.get(..7).ok_or(truncated("PPPoE"))?;
                if hdr[0] != 0x11 || hdr[1] != 0 {
                    return Err(malformed(
                        "PPPoE",
                        format!("version/type {:#04x} code {:#04x}", hdr[0], hdr[1]),
                    ));
                }
                let (proto, hdr_len) = if hdr[6] & 1 == 1 {
                    (u16::from(hdr[6]), 7)
                } else {
                    let b = rest.get(7).ok_or(truncated("PPP"))?;
                    (u16::from_be_bytes([hdr[6], *b]), 8)
                };
                ethertype = match proto {
                    0x0021 => ETH_IPV4,
                    0x0057 => ETH_IPV6,
                    other => return Err(ParseError::NotIp(other)),
                };
                rest = rest.get(hdr_len..).unwrap_or_default();
                // The PPPoE length bounds the IP packet: some access routers
                // leave a stale IP total length and the frame tail is padding.
                let ip_len =
                    usize::from(u16::from_be_bytes([hdr[4], hdr[5]])).saturating_sub(hdr_len - 6);
                rest = rest.get(..ip_len).unwrap_or(rest);
                limit = Some(ip_len as u32);
            }
            other => return Err(ParseError::NotIp(other)),
        }
    }
}

/// IP-level facts needed to decode the transport layer.
struct IpInfo {
    /// Transport segment length claimed by the IP header(s), extension headers excluded.
    l4_len: u32,
    later_fragment: bool,
}

/// `ip_len_limit` is the most IP bytes the frame can hold: its original
/// length past the link headers, or less when the link layer says so.
fn parse_ip(meta: &mut PacketMeta, ip_bytes: &[u8], ip_len_limit: u32) -> Result<(), ParseError> {
    let (ip, _ext_err) = LaxIpSlice::from_slice(ip_bytes).map_err(|e| match e {
        etherparse::err::ip::LaxHeaderSliceError::Len(_) => truncated("IP"),
        etherparse::err::ip::LaxHeaderSliceError::Content(c) => malformed("IP", c),
    })?;
    let payload = ip.payload();
    let info = match &ip {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            meta.ip_version = 4;
            meta.src_addr[..4].copy_from_slice(&h.source());
            meta.dst_addr[..4].copy_from_slice(&h.destination());
            meta.ip_id = u32::from(h.identification());
            meta.ip_len = h.total_len();
            meta.ttl = h.ttl();
            meta.tos = (h.dcp().value() << 2) | h.ecn().value();
            let later = h.fragments_offset().value() != 0;
            meta.ip_flags = flag(h.dont_fragment(), IP_FLAG_DF)
                | flag(h.more_fragments(), IP_FLAG_MF)
                | flag(later, IP_FLAG_LATER_FRAGMENT);
            let hdr_len = u32::from(h.ihl()) * 4;
            let exts_len = v4.extensions().auth.map_or(0, |a| a.slice().len() as u32);
            let total = u32::from(h.total_len());
            let ip_payload = if total >= hdr_len {
                total.min(ip_len_limit).saturating_sub(hdr_len)
            } else {
                // total_len unset (segmentation offload): trust the frame length.
                ip_len_limit.saturating_sub(hdr_len)
            };
            IpInfo {
                l4_len: ip_payload.saturating_sub(exts_len),
                later_fragment: later,
            }
        }
        LaxIpSlice::Ipv6(v6) => {
            let h = v6.header();
            meta.ip_version = 6;
            meta.src_addr = h.source();
            meta.dst_addr = h.destination();
            meta.ip_id = h.flow_label().value();
            meta.ip_len = h.payload_length().saturating_add(40);
            meta.ttl = h.hop_limit();
            meta.tos = h.traffic_class();
            let frag = v6_fragment(h.next_header().0, v6.extensions().slice());
            let later = frag.is_some_and(|f| f.offset != 0);
            meta.ip_flags |= flag(frag.is_some_and(|f| f.more), IP_FLAG_MF);
            meta.ip_flags |= flag(later, IP_FLAG_LATER_FRAGMENT);
            let exts_len = v6.extensions().slice().len() as u32;
            let ip_payload = if h.payload_length() != 0 {
                u32::from(h.payload_length()).min(ip_len_limit.saturating_sub(40))
            } else {
                // Jumbogram or offloaded segment: trust the frame length.
                ip_len_limit.saturating_sub(40)
            };
            IpInfo {
                l4_len: ip_payload.saturating_sub(exts_len),
                later_fragment: later,
            }
        }
    };
    meta.l4_proto = payload.ip_number.0;
    parse_transport(meta, payload.payload, &info)
}

fn flag(set: bool, bit: u8) -> u8 {
    if set {
        bit
    } else {
        0
    }
}

fn parse_transport(meta: &mut PacketMeta, l4: &[u8], info: &IpInfo) -> Result<(), ParseError> {
    if info.later_fragment {
        // No transport header in a non-first fragment.
        meta.kind = RecordKind::OtherIp as u8;
        meta.payload_len = info.l4_len;
        meta.payload_hash = payload_hash(l4);
        return Ok(());
    }
    match (meta.l4_proto, meta.ip_version) {
        (ipproto::TCP, _) => parse_tcp(meta, l4, info.l4_len),
        (ipproto::UDP, _) => {
            let udp = UdpHeaderSlice::from_slice(l4).map_err(|_| truncated("UDP"))?;
            meta.kind = RecordKind::Udp as u8;
            meta.sport = udp.source_port();
            meta.dport = udp.destination_port();
            meta.payload_len = info.l4_len.saturating_sub(8);
            meta.payload_hash = payload_hash(l4.get(8..).unwrap_or(&[]));
            Ok(())
        }
        (ipproto::ICMP, 4) => parse_icmpv4(meta, l4, info.l4_len),
        (ipproto::ICMPV6, 6) => parse_icmpv6(meta, l4, info.l4_len),
        _ => {
            meta.kind = RecordKind::OtherIp as u8;
            meta.payload_len = info.l4_len;
            meta.payload_hash = payload_hash(l4);
            Ok(())
        }
    }
}

fn parse_tcp(meta: &mut PacketMeta, l4: &[u8], l4_len: u32) -> Result<(), ParseError> {
    let tcp = TcpHeaderSlice::from_slice(l4).map_err(|e| match e {
        etherparse::err::tcp::HeaderSliceError::Len(_) => truncated("TCP"),
        etherparse::err::tcp::HeaderSliceError::Content(c) => malformed("TCP", c),
    })?;
    meta.kind = RecordKind::Tcp as u8;
    meta.sport = tcp.source_port();
    meta.dport = tcp.destination_port();
    meta.seq = tcp.sequence_number();
    meta.ack = tcp.acknowledgment_number();
    meta.window = tcp.window_size();
    meta.tcp_flags = flag(tcp.fin(), tcp_flags::FIN)
        | flag(tcp.syn(), tcp_flags::SYN)
        | flag(tcp.rst(), tcp_flags::RST)
        | flag(tcp.psh(), tcp_flags::PSH)
        | flag(tcp.ack(), tcp_flags::ACK)
        | flag(tcp.urg(), tcp_flags::URG)
        | flag(tcp.ece(), tcp_flags::ECE)
        | flag(tcp.cwr(), tcp_flags::CWR);
    parse_tcp_options(meta, tcp.options());
    let hdr_len = tcp.slice().len();
    meta.payload_len = l4_len.saturating_sub(hdr_len as u32);
    meta.payload_hash = payload_hash(l4.get(hdr_len..).unwrap_or(&[]));
    Ok(())
}

/// Fills MSS, window scale, SACK-permitted, SACK blocks and timestamps.
/// Unknown option kinds (TFO, MPTCP, MD5, ...) are skipped by their length;
/// a damaged list sets `tcp_opts::MALFORMED` and keeps what came before.
fn parse_tcp_options(meta: &mut PacketMeta, mut opts: &[u8]) {
    'restart: loop {
        let mut it = TcpOptionsIterator::from_slice(opts);
        loop {
            let before = it.rest();
            let Some(item) = it.next() else {
                return;
            };
            match item {
                Ok(TcpOptionElement::Noop) => {}
                Ok(TcpOptionElement::MaximumSegmentSize(mss)) => {
                    meta.mss = mss;
                    meta.tcp_opts |= tcp_opts::MSS;
                }
                Ok(TcpOptionElement::WindowScale(ws)) => {
                    meta.wscale = ws;
                    meta.tcp_opts |= tcp_opts::WSCALE;
                }
                Ok(TcpOptionElement::SelectiveAcknowledgementPermitted) => {
                    meta.tcp_opts |= tcp_opts::SACK_PERM;
                }
                Ok(TcpOptionElement::SelectiveAcknowledgement(first, more)) => {
                    meta.tcp_opts |= tcp_opts::SACK;
                    for (left, right) in core::iter::once(first).chain(more.into_iter().flatten()) {
                        let i = usize::from(meta.sack_count);
                        if i >= MAX_SACK_BLOCKS {
                            break;
                        }
                        meta.sack[2 * i] = left;
                        meta.sack[2 * i + 1] = right;
                        meta.sack_count += 1;
                    }
                }
                Ok(TcpOptionElement::Timestamp(val, ecr)) => {
                    meta.tsval = val;
                    meta.tsecr = ecr;
                    meta.tcp_opts |= tcp_opts::TIMESTAMPS;
                }
                Err(TcpOptionReadError::UnknownId(_)) => {
                    let len = before.get(1).map_or(0, |&l| usize::from(l));
                    match before.get(len..) {
                        Some(next) if len >= 2 => {
                            opts = next;
                            continue 'restart;
                        }
                        _ => {
                            meta.tcp_opts |= tcp_opts::MALFORMED;
                            return;
                        }
                    }
                }
                Err(_) => {
                    meta.tcp_opts |= tcp_opts::MALFORMED;
                    return;
                }
            }
        }
    }
}

/// Fragment header fields of an IPv6 packet.
#[derive(Clone, Copy)]
struct V6Fragment {
    offset: u16,
    more: bool,
}

/// Finds the fragment header in an IPv6 extension chain with checked reads.
/// etherparse's extension iterator trusts lengths it did not check when a lax
/// parse stopped inside the chain, so the chain is walked here instead.
fn v6_fragment(mut next: u8, mut rest: &[u8]) -> Option<V6Fragment> {
    // The chain was already bounded by etherparse; the walk only reads it.
    for _ in 0..16 {
        let len = match next {
            0 | 43 | 60 => (usize::from(*rest.get(1)?) + 1) * 8,
            44 => {
                let fo = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
                return Some(V6Fragment {
                    offset: fo >> 3,
                    more: fo & 1 != 0,
                });
            }
            51 => (usize::from(*rest.get(1)?) + 2) * 4,
            _ => return None,
        };
        next = *rest.first()?;
        rest = rest.get(len..)?;
    }
    None
}

fn parse_icmpv4(meta: &mut PacketMeta, l4: &[u8], l4_len: u32) -> Result<(), ParseError> {
    let icmp = Icmpv4Slice::from_slice(l4).map_err(|_| truncated("ICMP"))?;
    meta.icmp_type = icmp.type_u8();
    meta.icmp_code = icmp.code_u8();
    // Errors per RFC 792/1812: unreachable, source quench, redirect, time exceeded, parameter problem.
    let is_error = matches!(meta.icmp_type, 3 | 4 | 5 | 11 | 12);
    if let Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu,
    }) = icmp.icmp_type()
    {
        meta.icmp_mtu = u32::from(next_hop_mtu);
    }
    finish_icmp(meta, is_error, icmp.payload(), l4_len, icmp.header_len());
    Ok(())
}

fn parse_icmpv6(meta: &mut PacketMeta, l4: &[u8], l4_len: u32) -> Result<(), ParseError> {
    let icmp = Icmpv6Slice::from_slice(l4).map_err(|_| truncated("ICMPv6"))?;
    meta.icmp_type = icmp.type_u8();
    meta.icmp_code = icmp.code_u8();
    // Types below 128 are errors (RFC 4443).
    let is_error = meta.icmp_type < 128;
    if let Icmpv6Type::PacketTooBig { mtu } = icmp.icmp_type() {
        meta.icmp_mtu = mtu;
    }
    finish_icmp(meta, is_error, icmp.payload(), l4_len, icmp.header_len());
    Ok(())
}

fn finish_icmp(meta: &mut PacketMeta, is_error: bool, body: &[u8], l4_len: u32, hdr_len: usize) {
    meta.payload_len = l4_len.saturating_sub(hdr_len as u32);
    meta.payload_hash = payload_hash(body);
    if is_error {
        meta.kind = RecordKind::IcmpError as u8;
        parse_quoted(meta, body);
    } else {
        meta.kind = RecordKind::OtherIp as u8;
    }
}

/// Decodes the packet quoted in an ICMP error; quotes are usually cut short,
/// so whatever is present is kept and the rest stays zero.
fn parse_quoted(meta: &mut PacketMeta, quote: &[u8]) {
    let Ok((ip, _)) = LaxIpSlice::from_slice(quote) else {
        return;
    };
    let later_fragment = match &ip {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            meta.inner_src[..4].copy_from_slice(&h.source());
            meta.inner_dst[..4].copy_from_slice(&h.destination());
            h.fragments_offset().value() != 0
        }
        LaxIpSlice::Ipv6(v6) => {
            let h = v6.header();
            meta.inner_src = h.source();
            meta.inner_dst = h.destination();
            v6_fragment(h.next_header().0, v6.extensions().slice()).is_some_and(|f| f.offset != 0)
        }
    };
    let payload = ip.payload();
    meta.inner_proto = payload.ip_number.0;
    if later_fragment || !matches!(meta.inner_proto, ipproto::TCP | ipproto::UDP) {
        return;
    }
    // RFC 792 guarantees only 8 transport bytes, less than a TCP header, so
    // the ports and sequence number are read directly from their offsets.
    let l4 = payload.payload;
    if let Some(p) = l4.get(..4) {
        meta.inner_sport = u16::from_be_bytes([p[0], p[1]]);
        meta.inner_dport = u16::from_be_bytes([p[2], p[3]]);
    }
    if meta.inner_proto == ipproto::TCP {
        if let Some(s) = l4.get(4..8) {
            meta.inner_seq = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(rest);
        f
    }

    fn ipv4_tcp(tcp_opts: &[u8], payload: usize, total_len_extra: u16) -> Vec<u8> {
        let tcp_len = 20 + tcp_opts.len();
        let total = (20 + tcp_len + payload) as u16 + total_len_extra;
        let mut p = vec![
            0x45, 0x00, 0, 0, 0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&2000u32.to_be_bytes());
        tcp[12] = ((tcp_len / 4) as u8) << 4;
        tcp[13] = tcp_flags::ACK | tcp_flags::PSH;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(&tcp);
        p.extend_from_slice(tcp_opts);
        p.extend(std::iter::repeat_n(0xab, payload));
        p
    }

    fn parse_eth(frame: &[u8]) -> Result<PacketMeta, ParseError> {
        parse_frame(
            LinkType::Ethernet,
            frame,
            7,
            3,
            Direction::Unknown,
            frame.len() as u32,
        )
    }

    #[test]
    fn ipv6_chain_announcing_a_missing_auth_header_does_not_crash() {
        // IPv6 -> hop-by-hop (8 bytes) whose next header says AH (51), then
        // the packet ends: a lax parse keeps the hop-by-hop header only, and
        // etherparse's extension iterator would read the absent AH unchecked.
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, 0, 64];
        ip.extend_from_slice(&[0xfd; 32]);
        ip.extend_from_slice(&[51, 0, 1, 4, 0, 0, 0, 0]);
        let r = parse_frame(
            LinkType::RawIp,
            &ip,
            0,
            0,
            Direction::Unknown,
            ip.len() as u32,
        );
        if let Ok(m) = r {
            assert_eq!(m.ip_version, 6);
            assert_eq!(m.ip_flags & IP_FLAG_LATER_FRAGMENT, 0);
        }
    }

    #[test]
    fn arp_is_not_ip() {
        let err = parse_eth(&eth(0x0806, &[0; 28])).unwrap_err();
        assert!(
            err.is_not_ip(),
            "ARP must be reported as not-IP, got {err:?}"
        );
    }

    #[test]
    fn short_ethernet_is_truncated_not_not_ip() {
        let err = parse_eth(&[0u8; 10]).unwrap_err();
        assert!(!err.is_not_ip(), "a cut frame is damage, got {err:?}");
    }

    #[test]
    fn tcp_payload_len_comes_from_ip_header_when_snapped() {
        let full = eth(ETH_IPV4, &ipv4_tcp(&[], 1000, 0));
        let snapped = &full[..14 + 40 + 10];
        let m = parse_frame(
            LinkType::Ethernet,
            snapped,
            0,
            0,
            Direction::Unknown,
            full.len() as u32,
        )
        .expect("snapped TCP frame must parse");
        assert_eq!(m.payload_len, 1000, "payload length from IP total length");
        assert_eq!(m.wire_len, full.len() as u32);
        assert_eq!(
            m.payload_hash,
            payload_hash(&[0xab; 10]),
            "hash covers captured bytes only"
        );
        assert_eq!(m.ip_flags, IP_FLAG_DF);
        assert_eq!((m.sport, m.dport, m.seq, m.ack), (1234, 80, 1000, 2000));
        assert_eq!(m.tcp_flags, tcp_flags::ACK | tcp_flags::PSH);
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut f = eth(ETH_IPV4, &ipv4_tcp(&[], 0, 0));
        f.resize(60, 0);
        let m = parse_eth(&f).expect("padded frame parses");
        assert_eq!(m.payload_len, 0);
        assert_eq!(m.payload_hash, 0, "no payload bytes -> hash 0");
    }

    #[test]
    fn unknown_tcp_option_is_skipped_and_later_options_kept() {
        // TFO cookie (kind 34, len 10), then timestamps.
        let mut opts = vec![34, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        opts.extend_from_slice(&[1, 1, 1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        let m = parse_eth(&eth(ETH_IPV4, &ipv4_tcp(&opts, 0, 0))).unwrap();
        assert_eq!(
            m.tcp_opts,
            tcp_opts::TIMESTAMPS,
            "TFO must not be malformed"
        );
        assert_eq!((m.tsval, m.tsecr), (5, 6));
    }

    #[test]
    fn malformed_options_keep_what_parsed_before() {
        // MSS 1460, then a window scale option with a bad length.
        let opts = [2, 4, 0x05, 0xb4, 3, 7, 7, 0];
        let m = parse_eth(&eth(ETH_IPV4, &ipv4_tcp(&opts, 0, 0))).unwrap();
        assert_eq!(m.tcp_opts, tcp_opts::MSS | tcp_opts::MALFORMED);
        assert_eq!(m.mss, 1460);
    }

    #[test]
    fn four_sack_blocks_keep_three() {
        let mut opts = vec![1, 1, 5, 34];
        for i in 0..8u32 {
            opts.extend_from_slice(&(i * 100).to_be_bytes());
        }
        let m = parse_eth(&eth(ETH_IPV4, &ipv4_tcp(&opts, 0, 0))).unwrap();
        assert_eq!(m.sack_count as usize, MAX_SACK_BLOCKS);
        assert_eq!(m.sack, [0, 100, 200, 300, 400, 500]);
    }

    #[test]
    fn sll_packet_type_sets_direction() {
        let ip = ipv4_tcp(&[], 0, 0);
        for (pkttype, dir) in [(0u16, Direction::Ingress), (4, Direction::Egress)] {
            let mut f = vec![0u8; 16];
            f[0..2].copy_from_slice(&pkttype.to_be_bytes());
            f[14..16].copy_from_slice(&ETH_IPV4.to_be_bytes());
            f.extend_from_slice(&ip);
            let m = parse_frame(LinkType::LinuxSll, &f, 0, 0, Direction::Unknown, 0).unwrap();
            assert_eq!(m.direction, dir as u8, "SLL packet type {pkttype}");
            let mut f2 = vec![0u8; 20];
            f2[0..2].copy_from_slice(&ETH_IPV4.to_be_bytes());
            f2[10] = pkttype as u8;
            f2.extend_from_slice(&ip);
            let m = parse_frame(LinkType::LinuxSll2, &f2, 0, 0, Direction::Unknown, 0).unwrap();
            assert_eq!(m.direction, dir as u8, "SLL2 packet type {pkttype}");
            assert_eq!(m.kind, RecordKind::Tcp as u8);
        }
    }

    #[test]
    fn raw_and_null_links() {
        let ip = ipv4_tcp(&[], 3, 0);
        let m = parse_frame(LinkType::RawIp, &ip, 0, 0, Direction::Unknown, 0).unwrap();
        assert_eq!(m.payload_len, 3);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&ip);
        let m = parse_frame(LinkType::Null, &null, 0, 0, Direction::Unknown, 0).unwrap();
        assert_eq!(m.sport, 1234);
        let mut other = 7u32.to_le_bytes().to_vec();
        other.extend_from_slice(&ip);
        assert!(
            parse_frame(LinkType::Null, &other, 0, 0, Direction::Unknown, 0)
                .unwrap_err()
                .is_not_ip()
        );
    }

    #[test]
    fn pppoe_over_qinq() {
        let ip = ipv4_tcp(&[], 0, 0);
        let mut pppoe = vec![0x11, 0, 0, 1];
        pppoe.extend_from_slice(&((ip.len() + 2) as u16).to_be_bytes());
        pppoe.extend_from_slice(&[0x00, 0x21]);
        pppoe.extend_from_slice(&ip);
        let mut tags = vec![0x00, 0x0a, 0x81, 0x00, 0x00, 0x14, 0x88, 0x64];
        tags.extend_from_slice(&pppoe);
        let m = parse_eth(&eth(ETH_QINQ, &tags)).unwrap();
        assert_eq!((m.vlan_count, m.outer_vlan, m.inner_vlan), (2, 10, 20));
        assert_eq!(m.kind, RecordKind::Tcp as u8);
        // LCP inside the session is not IP.
        let mut lcp = pppoe.clone();
        lcp[6..8].copy_from_slice(&[0xc0, 0x21]);
        assert!(parse_eth(&eth(ETH_PPPOE_SESSION, &lcp))
            .unwrap_err()
            .is_not_ip());
    }

    #[test]
    fn hash_is_fnv1a() {
        // FNV-1a 32 of "a" is 0xe40c292c.
        assert_eq!(payload_hash(b"a"), 0xe40c_292c);
        assert_eq!(payload_hash(&[]), 0);
        assert_eq!(payload_hash(&[1; 100]), payload_hash(&[1; 64]));
    }

    const LINKS: [LinkType; 8] = [
        LinkType::Ethernet,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::RawIp,
        LinkType::Ipv4,
        LinkType::Ipv6,
        LinkType::Null,
        LinkType::Loop,
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            link in 0usize..8,
            wire_len in proptest::prelude::any::<u32>(),
        ) {
            let _ = parse_frame(LINKS[link], &bytes, 0, 0, Direction::Unknown, wire_len);
        }

        #[test]
        fn mutated_frames_never_panic(
            opts in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=40),
            flips in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..200,
            ethertype in proptest::sample::select(vec![ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_PPPOE_SESSION]),
        ) {
            // A valid frame with random TCP option bytes, then damaged: the
            // parser must return a record or an error, never panic.
            let mut opts = opts;
            opts.truncate(opts.len() / 4 * 4);
            let mut frame = eth(ethertype, &ipv4_tcp(&opts, 20, 0));
            for (at, val) in flips {
                let len = frame.len();
                if let Some(b) = frame.get_mut(at % len) {
                    *b = val;
                }
            }
            frame.truncate(cut.max(1));
            let _ = parse_frame(LinkType::Ethernet, &frame, 0, 0, Direction::Unknown, 0);
        }
    }
}
