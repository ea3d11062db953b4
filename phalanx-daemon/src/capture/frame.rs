//! Synthesizes frames from records and writes them to pcapng/pcap files.
//!
//! [`build_frame`] is the inverse of [`parse_frame`](super::parse::parse_frame):
//! every field a record carries from the wire is encoded so that parsing the
//! frame gives the record back. It is used for synthetic test captures,
//! headers-only incident evidence and unified multi-hop captures.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpDscp, IpEcn,
    IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header,
    SingleVlanHeader, TcpHeader, TcpOptionElement, UdpHeader, VlanId, VlanPcp,
};
use pcap_file::pcap::{PcapHeader, PcapPacket};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use phalanx_common::{
    ipproto, tcp_flags, tcp_opts, Direction, PacketMeta, RecordKind, IP_FLAG_DF,
    IP_FLAG_LATER_FRAGMENT, IP_FLAG_MF, MAX_SACK_BLOCKS,
};
use thiserror::Error;

use super::parse::LinkType;

/// What to put after the headers of a synthesized frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadMode {
    /// `payload_len` zero bytes, so the frame is as long as the original.
    Zeroed,
    /// No payload bytes; IP and transport lengths still claim `payload_len`,
    /// so the frame reads like a capture with a short snap length.
    HeadersOnly,
}

/// Snap length declared by the writers (libpcap's maximum).
pub const SNAPLEN: u32 = 262_144;

/// An IPv6 fragment header laid out per RFC 8200 section 4.5: the offset in
/// the top 13 bits of bytes 2-3 and M in the lowest bit. (etherparse 0.19's
/// writer places the low offset bits and M elsewhere.)
fn v6_fragment_header(next: u8, offset: u16, more: bool) -> [u8; 8] {
    let word = (offset & 0x1fff) << 3 | u16::from(more);
    let [hi, lo] = word.to_be_bytes();
    [next, 0, hi, lo, 0, 0, 0, 0]
}

/// Fragment offset (in 8-byte units) written for records of non-first fragments.
const LATER_FRAGMENT_OFFSET: u16 = 185;

/// A synthesized frame and the length the full frame would have on the wire.
struct Built {
    bytes: Vec<u8>,
    full_len: usize,
}

/// Builds an Ethernet frame (with `vlan_count` tags) carrying the record's
/// IPv4/IPv6 header and its TCP (with the options present in the record),
/// UDP or ICMP (error with quoted header) segment, all checksums correct.
///
/// Records that cannot be encoded exactly are clamped: a payload that does
/// not fit a 64 KiB IP packet is shortened, and SACK blocks that do not fit
/// the 40-byte TCP option space are dropped from the end.
pub fn build_frame(meta: &PacketMeta, payload: PayloadMode) -> Vec<u8> {
    build(meta, payload).bytes
}

/// Length of the frame [`build_frame`] produces with [`PayloadMode::Zeroed`].
pub fn full_frame_len(meta: &PacketMeta) -> usize {
    build(meta, PayloadMode::HeadersOnly).full_len
}

fn build(meta: &PacketMeta, mode: PayloadMode) -> Built {
    let v6 = meta.ip_version == 6;
    let v6_frag = v6 && meta.ip_flags & (IP_FLAG_MF | IP_FLAG_LATER_FRAGMENT) != 0;
    let frag_len = if v6_frag { Ipv6FragmentHeader::LEN } else { 0 };
    let ip_hdr_len = if v6 {
        Ipv6Header::LEN
    } else {
        Ipv4Header::MIN_LEN
    };
    // Both IPv4 total length and IPv6 payload length are 16-bit fields.
    let max_l4 = usize::from(u16::MAX) - if v6 { frag_len } else { ip_hdr_len };
    let (l4, l4_full_len) = transport(meta, mode, max_l4);

    let mut out = Vec::with_capacity(14 + 8 + ip_hdr_len + frag_len + l4.len());
    push_link_header(&mut out, meta);
    let link_len = out.len();
    let l4_len16 = u16::try_from(l4_full_len).unwrap_or(u16::MAX);
    if v6 {
        push_ipv6_header(&mut out, meta, l4_len16, v6_frag);
    } else {
        push_ipv4_header(&mut out, meta, l4_len16);
    }
    out.extend_from_slice(&l4);
    Built {
        bytes: out,
        full_len: link_len + ip_hdr_len + frag_len + l4_full_len,
    }
}

/// The transport part (or, for a later fragment, raw payload) and its
/// length before any payload was left out.
fn transport(meta: &PacketMeta, mode: PayloadMode, max_l4: usize) -> (Vec<u8>, usize) {
    let checksum = Pseudo {
        v6: meta.ip_version == 6,
        src: meta.src_addr,
        dst: meta.dst_addr,
    };
    if meta.ip_flags & IP_FLAG_LATER_FRAGMENT != 0 {
        return raw_payload(meta, mode, max_l4);
    }
    match RecordKind::try_from(meta.kind).unwrap_or(RecordKind::OtherIp) {
        RecordKind::Tcp => tcp_segment(meta, mode, max_l4, &checksum),
        RecordKind::Udp => udp_datagram(meta, mode, max_l4, &checksum),
        RecordKind::IcmpError => icmp_message(meta, mode, max_l4, &checksum, quote(meta)),
        RecordKind::OtherIp if is_icmp(meta) => {
            icmp_message(meta, mode, max_l4, &checksum, Vec::new())
        }
        RecordKind::OtherIp => raw_payload(meta, mode, max_l4),
    }
}

/// Ethernet with the record's VLAN tags (none, 802.1Q, or QinQ).
fn push_link_header(out: &mut Vec<u8>, meta: &PacketMeta) {
    let v6 = meta.ip_version == 6;
    let tags = usize::from(meta.vlan_count.min(2));
    let ip_ethertype = if v6 { EtherType::IPV6 } else { EtherType::IPV4 };
    let first_type = match tags {
        0 => ip_ethertype,
        1 => EtherType::VLAN_TAGGED_FRAME,
        _ => EtherType::PROVIDER_BRIDGING,
    };
    out.extend_from_slice(
        &Ethernet2Header {
            source: mac_for(&meta.src_addr, v6),
            destination: mac_for(&meta.dst_addr, v6),
            ether_type: first_type,
        }
        .to_bytes(),
    );
    let vlan = |id: u16, next: EtherType| SingleVlanHeader {
        pcp: VlanPcp::ZERO,
        drop_eligible_indicator: false,
        vlan_id: VlanId::try_new(id & 0x0fff).unwrap_or(VlanId::ZERO),
        ether_type: next,
    };
    if tags == 1 {
        out.extend_from_slice(&vlan(meta.outer_vlan, ip_ethertype).to_bytes());
    } else if tags == 2 {
        out.extend_from_slice(&vlan(meta.outer_vlan, EtherType::VLAN_TAGGED_FRAME).to_bytes());
        out.extend_from_slice(&vlan(meta.inner_vlan, ip_ethertype).to_bytes());
    }
}

/// The IPv6 header, and a fragment header when the record is a fragment.
fn push_ipv6_header(out: &mut Vec<u8>, meta: &PacketMeta, l4_len: u16, fragment: bool) {
    let frag_len = if fragment { Ipv6FragmentHeader::LEN } else { 0 };
    let mut h = Ipv6Header {
        traffic_class: meta.tos,
        flow_label: Ipv6FlowLabel::try_new(meta.ip_id & 0x000f_ffff).unwrap_or(Ipv6FlowLabel::ZERO),
        payload_length: l4_len.saturating_add(frag_len as u16),
        next_header: IpNumber(meta.l4_proto),
        hop_limit: meta.ttl,
        source: meta.src_addr,
        destination: meta.dst_addr,
    };
    if !fragment {
        out.extend_from_slice(&h.to_bytes());
        return;
    }
    h.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
    out.extend_from_slice(&h.to_bytes());
    let later = meta.ip_flags & IP_FLAG_LATER_FRAGMENT != 0;
    let offset = if later { LATER_FRAGMENT_OFFSET } else { 0 };
    out.extend_from_slice(&v6_fragment_header(
        meta.l4_proto,
        offset,
        meta.ip_flags & IP_FLAG_MF != 0,
    ));
}

/// The IPv4 header with its checksum.
fn push_ipv4_header(out: &mut Vec<u8>, meta: &PacketMeta, l4_len: u16) {
    let (src, dst) = (meta.src_addr, meta.dst_addr);
    let later = meta.ip_flags & IP_FLAG_LATER_FRAGMENT != 0;
    let mut h = Ipv4Header {
        dscp: IpDscp::try_new(meta.tos >> 2).unwrap_or(IpDscp::ZERO),
        ecn: IpEcn::try_new(meta.tos & 0x3).unwrap_or(IpEcn::ZERO),
        total_len: l4_len.saturating_add(Ipv4Header::MIN_LEN as u16),
        identification: meta.ip_id as u16,
        dont_fragment: meta.ip_flags & IP_FLAG_DF != 0,
        more_fragments: meta.ip_flags & IP_FLAG_MF != 0,
        fragment_offset: if later {
            IpFragOffset::try_new(LATER_FRAGMENT_OFFSET).unwrap_or(IpFragOffset::ZERO)
        } else {
            IpFragOffset::ZERO
        },
        time_to_live: meta.ttl,
        protocol: IpNumber(meta.l4_proto),
        header_checksum: 0,
        source: [src[0], src[1], src[2], src[3]],
        destination: [dst[0], dst[1], dst[2], dst[3]],
        options: Default::default(),
    };
    h.header_checksum = h.calc_header_checksum();
    out.extend_from_slice(&h.to_bytes());
}

/// Addresses for transport checksums.
struct Pseudo {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
}

impl Pseudo {
    fn v4(a: &[u8; 16]) -> [u8; 4] {
        [a[0], a[1], a[2], a[3]]
    }
}

fn is_icmp(meta: &PacketMeta) -> bool {
    (meta.ip_version == 6 && meta.l4_proto == ipproto::ICMPV6)
        || (meta.ip_version != 6 && meta.l4_proto == ipproto::ICMP)
}

/// A locally administered MAC derived from the address, so that endpoints
/// stay distinguishable in Wireshark's Ethernet columns.
fn mac_for(addr: &[u8; 16], v6: bool) -> [u8; 6] {
    let b = if v6 { &addr[12..16] } else { &addr[0..4] };
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

fn clamp_payload(meta: &PacketMeta, hdr_len: usize, max_l4: usize) -> usize {
    (meta.payload_len as usize).min(max_l4.saturating_sub(hdr_len))
}

fn raw_payload(meta: &PacketMeta, mode: PayloadMode, max_l4: usize) -> (Vec<u8>, usize) {
    let len = clamp_payload(meta, 0, max_l4);
    let bytes = match mode {
        PayloadMode::Zeroed => vec![0; len],
        PayloadMode::HeadersOnly => Vec::new(),
    };
    (bytes, len)
}

/// TCP options in Linux's usual order, dropping SACK blocks until they fit.
fn tcp_options(meta: &PacketMeta) -> Vec<TcpOptionElement> {
    let o = meta.tcp_opts;
    let mut blocks: Vec<(u32, u32)> = (0..usize::from(meta.sack_count).min(MAX_SACK_BLOCKS))
        .map(|i| (meta.sack[2 * i], meta.sack[2 * i + 1]))
        .collect();
    loop {
        let mut el = Vec::new();
        if o & tcp_opts::MSS != 0 {
            el.push(TcpOptionElement::MaximumSegmentSize(meta.mss));
        }
        if o & tcp_opts::SACK_PERM != 0 {
            el.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
        }
        if o & tcp_opts::TIMESTAMPS != 0 {
            el.push(TcpOptionElement::Timestamp(meta.tsval, meta.tsecr));
        }
        if o & tcp_opts::WSCALE != 0 {
            el.push(TcpOptionElement::Noop);
            el.push(TcpOptionElement::WindowScale(meta.wscale));
        }
        if o & tcp_opts::SACK != 0 {
            if let Some((&first, rest)) = blocks.split_first() {
                let mut more = [None; 3];
                for (slot, b) in more.iter_mut().zip(rest) {
                    *slot = Some(*b);
                }
                el.push(TcpOptionElement::Noop);
                el.push(TcpOptionElement::Noop);
                el.push(TcpOptionElement::SelectiveAcknowledgement(first, more));
            }
        }
        let len: usize = el
            .iter()
            .map(|e| match e {
                TcpOptionElement::Noop => 1,
                TcpOptionElement::MaximumSegmentSize(_) => 4,
                TcpOptionElement::WindowScale(_) => 3,
                TcpOptionElement::SelectiveAcknowledgementPermitted => 2,
                TcpOptionElement::SelectiveAcknowledgement(_, more) => {
                    10 + 8 * more.iter().flatten().count()
                }
                TcpOptionElement::Timestamp(..) => 10,
            })
            .sum();
        if len <= 40 || blocks.pop().is_none() {
            return el;
        }
    }
}

fn tcp_segment(
    meta: &PacketMeta,
    mode: PayloadMode,
    max_l4: usize,
    ck: &Pseudo,
) -> (Vec<u8>, usize) {
    let mut h = TcpHeader::new(meta.sport, meta.dport, meta.seq, meta.window);
    h.acknowledgment_number = meta.ack;
    let f = meta.tcp_flags;
    h.fin = f & tcp_flags::FIN != 0;
    h.syn = f & tcp_flags::SYN != 0;
    h.rst = f & tcp_flags::RST != 0;
    h.psh = f & tcp_flags::PSH != 0;
    h.ack = f & tcp_flags::ACK != 0;
    h.urg = f & tcp_flags::URG != 0;
    h.ece = f & tcp_flags::ECE != 0;
    h.cwr = f & tcp_flags::CWR != 0;
    // tcp_options() keeps the list within the option space, so this cannot fail.
    if h.set_options(&tcp_options(meta)).is_err() {
        h.options = Default::default();
    }
    let hdr_len = h.header_len();
    let len = clamp_payload(meta, hdr_len, max_l4);
    let payload = vec![0u8; len];
    let sum = if ck.v6 {
        h.calc_checksum_ipv6_raw(ck.src, ck.dst, &payload)
    } else {
        h.calc_checksum_ipv4_raw(Pseudo::v4(&ck.src), Pseudo::v4(&ck.dst), &payload)
    };
    h.checksum = sum.unwrap_or(0);
    let mut out = h.to_bytes().to_vec();
    if mode == PayloadMode::Zeroed {
        out.extend_from_slice(&payload);
    }
    (out, hdr_len + len)
}

fn udp_datagram(
    meta: &PacketMeta,
    mode: PayloadMode,
    max_l4: usize,
    ck: &Pseudo,
) -> (Vec<u8>, usize) {
    let len = clamp_payload(meta, UdpHeader::LEN, max_l4);
    let payload = vec![0u8; len];
    let mut h = UdpHeader {
        source_port: meta.sport,
        destination_port: meta.dport,
        length: (UdpHeader::LEN + len) as u16,
        checksum: 0,
    };
    let sum = if ck.v6 {
        h.calc_checksum_ipv6_raw(ck.src, ck.dst, &payload)
    } else {
        h.calc_checksum_ipv4_raw(Pseudo::v4(&ck.src), Pseudo::v4(&ck.dst), &payload)
    };
    h.checksum = sum.unwrap_or(0);
    let mut out = h.to_bytes().to_vec();
    if mode == PayloadMode::Zeroed {
        out.extend_from_slice(&payload);
    }
    (out, UdpHeader::LEN + len)
}

/// The start of the packet an ICMP error quotes: its IP header and the first
/// 8 transport bytes (ports, and the sequence number for TCP).
fn quote(meta: &PacketMeta) -> Vec<u8> {
    let mut l4 = [0u8; 8];
    l4[0..2].copy_from_slice(&meta.inner_sport.to_be_bytes());
    l4[2..4].copy_from_slice(&meta.inner_dport.to_be_bytes());
    match meta.inner_proto {
        ipproto::TCP => l4[4..8].copy_from_slice(&meta.inner_seq.to_be_bytes()),
        ipproto::UDP => l4[4..6].copy_from_slice(&8u16.to_be_bytes()),
        _ => {}
    }
    let mut out = Vec::with_capacity(48);
    if meta.ip_version == 6 {
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: l4.len() as u16,
            next_header: IpNumber(meta.inner_proto),
            hop_limit: 64,
            source: meta.inner_src,
            destination: meta.inner_dst,
        };
        out.extend_from_slice(&h.to_bytes());
    } else {
        let s = meta.inner_src;
        let d = meta.inner_dst;
        let mut h = Ipv4Header {
            total_len: (Ipv4Header::MIN_LEN + l4.len()) as u16,
            dont_fragment: true,
            time_to_live: 64,
            protocol: IpNumber(meta.inner_proto),
            source: [s[0], s[1], s[2], s[3]],
            destination: [d[0], d[1], d[2], d[3]],
            ..Default::default()
        };
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
    }
    out.extend_from_slice(&l4);
    out
}

fn icmp_message(
    meta: &PacketMeta,
    mode: PayloadMode,
    max_l4: usize,
    ck: &Pseudo,
    quote: Vec<u8>,
) -> (Vec<u8>, usize) {
    let hdr_len = 8;
    let len = clamp_payload(meta, hdr_len, max_l4).max(quote.len());
    let mut body = quote;
    let quote_len = body.len();
    body.resize(len, 0);
    let mut rest = [0u8; 4];
    if ck.v6 {
        if meta.icmp_type == 2 {
            rest = meta.icmp_mtu.to_be_bytes();
        }
        let ty = Icmpv6Type::Unknown {
            type_u8: meta.icmp_type,
            code_u8: meta.icmp_code,
            bytes5to8: rest,
        };
        let h = Icmpv6Header::with_checksum(ty, ck.src, ck.dst, &body)
            .unwrap_or_else(|_| Icmpv6Header::new(ty));
        let mut out = h.to_bytes().to_vec();
        emit_body(&mut out, &body, quote_len, mode);
        (out, hdr_len + len)
    } else {
        if meta.icmp_type == 3 && meta.icmp_code == 4 {
            rest[2..4].copy_from_slice(&(meta.icmp_mtu as u16).to_be_bytes());
        }
        let ty = Icmpv4Type::Unknown {
            type_u8: meta.icmp_type,
            code_u8: meta.icmp_code,
            bytes5to8: rest,
        };
        let h = Icmpv4Header::with_checksum(ty, &body);
        let mut out = h.to_bytes().to_vec();
        emit_body(&mut out, &body, quote_len, mode);
        (out, hdr_len + len)
    }
}

/// Headers-only evidence keeps an ICMP error's quote: it is header data.
fn emit_body(out: &mut Vec<u8>, body: &[u8], quote_len: usize, mode: PayloadMode) {
    match mode {
        PayloadMode::Zeroed => out.extend_from_slice(body),
        PayloadMode::HeadersOnly => out.extend_from_slice(body.get(..quote_len).unwrap_or(body)),
    }
}

/// Errors of the capture writers.
#[derive(Debug, Error)]
pub enum WriteError {
    /// The underlying writer or the pcap encoder failed.
    #[error("writing capture: {0}")]
    Pcap(#[from] PcapError),
    /// A packet named an interface that was never declared.
    #[error("interface {0} was not declared")]
    UnknownInterface(u32),
}

/// pcapng writer: several named interfaces (one per capture point, so one
/// file can hold several hops), nanosecond timestamps, optional per-packet
/// comments, direction in `epb_flags`.
pub struct PcapngWriter<W: Write> {
    inner: pcap_file::pcapng::PcapNgWriter<W>,
    interfaces: u32,
}

impl<W: Write> PcapngWriter<W> {
    /// Starts a pcapng file (section header written immediately).
    pub fn new(writer: W) -> Result<Self, WriteError> {
        let inner = pcap_file::pcapng::PcapNgWriter::with_endianness(writer, Endianness::native())?;
        Ok(Self {
            inner,
            interfaces: 0,
        })
    }

    /// Declares an Ethernet interface; returns its id for the write calls.
    pub fn add_interface(&mut self, name: &str) -> Result<u32, WriteError> {
        self.add_interface_with_link(name, LinkType::Ethernet)
    }

    /// Declares an interface with another link type, for copying frames from
    /// captures that are not Ethernet.
    pub fn add_interface_with_link(
        &mut self,
        name: &str,
        link: LinkType,
    ) -> Result<u32, WriteError> {
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::from(link.linktype()),
            snaplen: SNAPLEN,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                // if_tsresol 9: timestamps in nanoseconds.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.inner.write_pcapng_block(idb)?;
        let id = self.interfaces;
        self.interfaces += 1;
        Ok(id)
    }

    /// Writes a record as a synthesized Ethernet frame; the original length
    /// is the record's `wire_len` or the full frame length, whichever is larger.
    pub fn write_record(
        &mut self,
        interface: u32,
        meta: &PacketMeta,
        payload: PayloadMode,
        comment: Option<&str>,
    ) -> Result<(), WriteError> {
        let built = build(meta, payload);
        let orig_len = (built.full_len as u32).max(meta.wire_len);
        let direction = Direction::try_from(meta.direction).unwrap_or(Direction::Unknown);
        self.write_frame(
            interface,
            meta.ts_ns,
            &built.bytes,
            orig_len,
            direction,
            comment,
        )
    }

    /// Writes a frame as captured (link type of the interface).
    pub fn write_frame(
        &mut self,
        interface: u32,
        ts_ns: u64,
        frame: &[u8],
        orig_len: u32,
        direction: Direction,
        comment: Option<&str>,
    ) -> Result<(), WriteError> {
        if interface >= self.interfaces {
            return Err(WriteError::UnknownInterface(interface));
        }
        let mut options = Vec::new();
        if let Some(c) = comment {
            options.push(EnhancedPacketOption::Comment(Cow::Borrowed(c)));
        }
        match direction {
            Direction::Ingress => options.push(EnhancedPacketOption::Flags(1)),
            Direction::Egress => options.push(EnhancedPacketOption::Flags(2)),
            Direction::Unknown => {}
        }
        let epb = EnhancedPacketBlock {
            interface_id: interface,
            // With if_tsresol 9 the tick count is the nanosecond count.
            timestamp: Duration::from_nanos(ts_ns),
            original_len: orig_len.max(frame.len() as u32),
            data: Cow::Borrowed(frame),
            options,
        };
        self.inner.write_pcapng_block(epb)?;
        Ok(())
    }

    /// Mutable access to the underlying writer (to flush it).
    pub fn get_mut(&mut self) -> &mut W {
        self.inner.get_mut()
    }

    /// Finishes and returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.inner.into_inner()
    }
}

/// Plain pcap writer (Ethernet, nanosecond timestamps) for tools that do not read pcapng.
pub struct PcapWriter<W: Write> {
    inner: pcap_file::pcap::PcapWriter<W>,
}

impl<W: Write> PcapWriter<W> {
    /// Starts a pcap file (file header written immediately).
    pub fn new(writer: W) -> Result<Self, WriteError> {
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::native(),
            ..Default::default()
        };
        let inner = pcap_file::pcap::PcapWriter::with_header(writer, header)?;
        Ok(Self { inner })
    }

    /// Writes a record as a synthesized Ethernet frame.
    pub fn write_record(
        &mut self,
        meta: &PacketMeta,
        payload: PayloadMode,
    ) -> Result<(), WriteError> {
        let built = build(meta, payload);
        let orig_len = (built.full_len as u32).max(meta.wire_len);
        self.write_frame(meta.ts_ns, &built.bytes, orig_len)
    }

    /// Writes an Ethernet frame as captured.
    pub fn write_frame(
        &mut self,
        ts_ns: u64,
        frame: &[u8],
        orig_len: u32,
    ) -> Result<(), WriteError> {
        let packet = PcapPacket::new(
            Duration::from_nanos(ts_ns),
            orig_len.max(frame.len() as u32),
            frame,
        );
        self.inner.write_packet(&packet)?;
        Ok(())
    }

    /// Finishes and returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.inner.into_writer()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capture::parse::{parse_frame, payload_hash};

    #[test]
    fn ipv6_fragment_header_follows_rfc_8200() {
        // Offset 185 (units of 8 bytes) with M set: 185 << 3 | 1 = 0x05c9.
        assert_eq!(
            v6_fragment_header(6, 185, true),
            [6, 0, 0x05, 0xc9, 0, 0, 0, 0]
        );
        assert_eq!(
            v6_fragment_header(17, 0, true),
            [17, 0, 0x00, 0x01, 0, 0, 0, 0]
        );
        assert_eq!(
            v6_fragment_header(6, 0x1fff, false),
            [6, 0, 0xff, 0xf8, 0, 0, 0, 0]
        );
    }
    use proptest::prelude::*;

    /// TCP option bytes `build_frame` lays out for a record.
    fn opt_space(o: u8, sack_count: u8) -> usize {
        let mut n = 0;
        if o & tcp_opts::MSS != 0 {
            n += 4;
        }
        if o & tcp_opts::SACK_PERM != 0 {
            n += 2;
        }
        if o & tcp_opts::TIMESTAMPS != 0 {
            n += 10;
        }
        if o & tcp_opts::WSCALE != 0 {
            n += 4;
        }
        if sack_count > 0 {
            n += 4 + 8 * usize::from(sack_count);
        }
        n
    }

    fn addr(v6: bool, bytes: [u8; 16]) -> [u8; 16] {
        let mut a = bytes;
        if !v6 {
            a[4..].fill(0);
        }
        a
    }

    prop_compose! {
        fn arb_ip()(v6 in any::<bool>(), src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
                    ttl in any::<u8>(), tos in any::<u8>(), id in any::<u32>(),
                    df in any::<bool>(), mf in any::<bool>(),
                    vlan_count in 0u8..=2, outer in 0u16..4096, inner in 0u16..4096,
                    ts_ns in any::<u64>(), ifindex in any::<u32>(), dir in 0u8..=2)
                    -> PacketMeta {
            let mut m = PacketMeta::zeroed();
            m.ts_ns = ts_ns;
            m.ifindex = ifindex;
            m.direction = dir;
            m.ip_version = if v6 { 6 } else { 4 };
            m.src_addr = addr(v6, src);
            m.dst_addr = addr(v6, dst);
            m.ttl = ttl;
            m.tos = tos;
            m.ip_id = if v6 { id & 0xf_ffff } else { id & 0xffff };
            m.ip_flags = if v6 { 0 } else { if df { IP_FLAG_DF } else { 0 } }
                | if mf { IP_FLAG_MF } else { 0 };
            m.vlan_count = vlan_count;
            m.outer_vlan = if vlan_count > 0 { outer } else { 0 };
            m.inner_vlan = if vlan_count > 1 { inner } else { 0 };
            m
        }
    }

    prop_compose! {
        fn arb_tcp()(base in arb_ip(), ports in any::<(u16, u16)>(), seq in any::<u32>(),
                     ack in any::<u32>(), window in any::<u16>(), flags in any::<u8>(),
                     opts in 0u8..16, mss in any::<u16>(), ws in any::<u8>(),
                     ts in any::<(u32, u32)>(), sacks in proptest::collection::vec(any::<(u32, u32)>(), 0..=3),
                     payload_len in 0u32..3000)
                     -> PacketMeta {
            let mut m = base;
            m.kind = RecordKind::Tcp as u8;
            m.l4_proto = ipproto::TCP;
            (m.sport, m.dport) = ports;
            m.seq = seq;
            m.ack = ack;
            m.window = window;
            m.tcp_flags = flags;
            m.tcp_opts = opts;
            let mut n = sacks.len() as u8;
            while opt_space(opts, n) > 40 {
                n -= 1;
            }
            if opts & tcp_opts::MSS != 0 { m.mss = mss; }
            if opts & tcp_opts::WSCALE != 0 { m.wscale = ws; }
            if opts & tcp_opts::TIMESTAMPS != 0 { (m.tsval, m.tsecr) = ts; }
            for (i, (l, r)) in sacks.iter().take(usize::from(n)).enumerate() {
                m.sack[2 * i] = *l;
                m.sack[2 * i + 1] = *r;
            }
            m.sack_count = n;
            if n > 0 { m.tcp_opts |= tcp_opts::SACK; }
            m.payload_len = payload_len;
            m
        }
    }

    prop_compose! {
        fn arb_udp()(base in arb_ip(), ports in any::<(u16, u16)>(), payload_len in 0u32..3000)
                     -> PacketMeta {
            let mut m = base;
            m.kind = RecordKind::Udp as u8;
            m.l4_proto = ipproto::UDP;
            (m.sport, m.dport) = ports;
            m.payload_len = payload_len;
            m
        }
    }

    prop_compose! {
        fn arb_icmp_error()(base in arb_ip(), which in 0usize..5, code in 0u8..16,
                            mtu in any::<u32>(), inner_proto in prop::sample::select(vec![6u8, 17, 1, 58, 47]),
                            isrc in any::<[u8; 16]>(), idst in any::<[u8; 16]>(),
                            iports in any::<(u16, u16)>(), iseq in any::<u32>(), extra in 0u32..600)
                            -> PacketMeta {
            let mut m = base;
            let v6 = m.ip_version == 6;
            m.kind = RecordKind::IcmpError as u8;
            m.l4_proto = if v6 { ipproto::ICMPV6 } else { ipproto::ICMP };
            let (ty, code) = if v6 {
                [(1, code % 7), (2, 0), (3, code % 2), (4, code % 3), (1, 4)][which]
            } else {
                [(3, code), (3, 4), (11, code % 2), (12, 0), (5, code % 4)][which]
            };
            m.icmp_type = ty;
            m.icmp_code = code;
            m.icmp_mtu = match (v6, ty, code) {
                (true, 2, _) => mtu,
                (false, 3, 4) => mtu & 0xffff,
                _ => 0,
            };
            m.inner_proto = inner_proto;
            m.inner_src = addr(v6, isrc);
            m.inner_dst = addr(v6, idst);
            if matches!(inner_proto, 6 | 17) {
                (m.inner_sport, m.inner_dport) = iports;
            }
            if inner_proto == 6 {
                m.inner_seq = iseq;
            }
            m.payload_len = if v6 { 48 } else { 28 } + extra;
            m
        }
    }

    prop_compose! {
        fn arb_other()(base in arb_ip(), echo in any::<bool>(), reply in any::<bool>(),
                       proto in prop::sample::select(vec![47u8, 89, 132, 253]),
                       later in any::<bool>(), any_proto in any::<u8>(), payload_len in 0u32..2000)
                       -> PacketMeta {
            let mut m = base;
            let v6 = m.ip_version == 6;
            m.kind = RecordKind::OtherIp as u8;
            if later {
                // A non-first fragment of anything; IPv6 needs the fragment header.
                m.ip_flags |= IP_FLAG_LATER_FRAGMENT;
                // Protocols etherparse reads as extension headers would not be the payload.
                let ext = if v6 {
                    matches!(any_proto, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
                } else {
                    any_proto == 51
                };
                m.l4_proto = if ext { ipproto::TCP } else { any_proto };
            } else if echo {
                m.l4_proto = if v6 { ipproto::ICMPV6 } else { ipproto::ICMP };
                m.icmp_type = match (v6, reply) {
                    (false, false) => 8,
                    (false, true) => 0,
                    (true, false) => 128,
                    (true, true) => 129,
                };
            } else {
                m.l4_proto = proto;
            }
            m.payload_len = payload_len;
            m
        }
    }

    fn arb_record() -> impl Strategy<Value = PacketMeta> {
        prop_oneof![arb_tcp(), arb_udp(), arb_icmp_error(), arb_other()]
    }

    fn reparse(frame: &[u8], m: &PacketMeta, wire_len: u32) -> PacketMeta {
        let dir = Direction::try_from(m.direction).unwrap_or(Direction::Unknown);
        match parse_frame(LinkType::Ethernet, frame, m.ts_ns, m.ifindex, dir, wire_len) {
            Ok(p) => p,
            Err(e) => panic!("built frame must parse: {e} for {m:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_inverts_build(m in arb_record()) {
            let frame = build_frame(&m, PayloadMode::Zeroed);
            let link_len = 14 + 4 * usize::from(m.vlan_count);
            prop_assert_eq!(frame.len(), full_frame_len(&m), "full length");
            let got = reparse(&frame, &m, frame.len() as u32);
            let mut want = m;
            want.wire_len = frame.len() as u32;
            want.ip_len = (frame.len() - link_len) as u16;
            want.payload_hash = got.payload_hash;
            prop_assert_eq!(got, want);
            if m.payload_len == 0 {
                prop_assert_eq!(got.payload_hash, 0, "no payload, no hash");
            } else {
                prop_assert_ne!(got.payload_hash, 0, "payload bytes were captured");
            }

            // Headers only: same record, lengths still from the IP header, no payload hash
            // (ICMP errors keep their quote, which is hashed).
            let short = build_frame(&m, PayloadMode::HeadersOnly);
            let got_short = reparse(&short, &m, frame.len() as u32);
            let mut want_short = want;
            want_short.payload_hash = got_short.payload_hash;
            prop_assert_eq!(got_short, want_short);
            if m.kind != RecordKind::IcmpError as u8 {
                prop_assert_eq!(got_short.payload_hash, 0);
                prop_assert!(short.len() + m.payload_len as usize == frame.len());
            }
        }
    }

    #[test]
    fn ipv6_fragment_header_has_rfc8200_layout() {
        let mut m = PacketMeta::zeroed();
        m.kind = RecordKind::Udp as u8;
        m.ip_version = 6;
        m.l4_proto = ipproto::UDP;
        m.ip_flags = IP_FLAG_MF;
        let f = build_frame(&m, PayloadMode::Zeroed);
        // Ethernet 14 + IPv6 40: first fragment, offset 0, M set.
        assert_eq!(&f[54..58], &[17, 0, 0x00, 0x01], "M is the lowest bit");
        m.ip_flags = IP_FLAG_LATER_FRAGMENT;
        let f = build_frame(&m, PayloadMode::Zeroed);
        let word = u16::from_be_bytes([f[56], f[57]]);
        assert_eq!(
            (word >> 3, word & 1),
            (LATER_FRAGMENT_OFFSET, 0),
            "offset in the top 13 bits"
        );
    }

    #[test]
    fn icmp_frag_needed_quotes_the_tcp_flow() {
        let mut m = PacketMeta::zeroed();
        m.kind = RecordKind::IcmpError as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::ICMP;
        m.src_addr[..4].copy_from_slice(&[192, 168, 1, 1]);
        m.dst_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        m.ttl = 63;
        m.icmp_type = 3;
        m.icmp_code = 4;
        m.icmp_mtu = 1492;
        m.inner_proto = ipproto::TCP;
        m.inner_src[..4].copy_from_slice(&[10, 0, 0, 1]);
        m.inner_dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        m.inner_sport = 40000;
        m.inner_dport = 443;
        m.inner_seq = 0xdead_beef;
        m.payload_len = 28;
        let frame = build_frame(&m, PayloadMode::Zeroed);
        let s = etherparse::SlicedPacket::from_ethernet(&frame).expect("etherparse reads it");
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = s.transport else {
            panic!("expected ICMPv4");
        };
        assert!(
            matches!(
                icmp.icmp_type(),
                Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: 1492
                    }
                )
            ),
            "frag-needed with MTU 1492"
        );
        let sum = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
        assert_eq!(icmp.checksum(), sum, "ICMP checksum");
        assert_eq!(payload_hash(&[]), 0);
    }

    #[test]
    fn checksums_are_valid() {
        let mut m = PacketMeta::zeroed();
        m.kind = RecordKind::Tcp as u8;
        m.ip_version = 6;
        m.l4_proto = ipproto::TCP;
        m.src_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        m.dst_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        m.tcp_opts = tcp_opts::TIMESTAMPS | tcp_opts::SACK;
        m.sack_count = 3;
        m.sack = [1, 2, 3, 4, 5, 6];
        m.payload_len = 100;
        let frame = build_frame(&m, PayloadMode::Zeroed);
        let s = etherparse::SlicedPacket::from_ethernet(&frame).expect("etherparse reads it");
        let Some(etherparse::TransportSlice::Tcp(tcp)) = s.transport else {
            panic!("expected TCP");
        };
        let sum = tcp
            .calc_checksum_ipv6(m.src_addr, m.dst_addr)
            .expect("checksum computes");
        assert_eq!(tcp.checksum(), sum, "TCP checksum over IPv6 pseudo-header");

        m.ip_version = 4;
        m.src_addr = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        m.dst_addr = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let frame = build_frame(&m, PayloadMode::Zeroed);
        let s = etherparse::SlicedPacket::from_ethernet(&frame).expect("etherparse reads it");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
            panic!("expected IPv4");
        };
        let h = ip.header().to_header();
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "IPv4 header checksum"
        );
        let Some(etherparse::TransportSlice::Tcp(tcp)) = s.transport else {
            panic!("expected TCP");
        };
        let sum = tcp
            .calc_checksum_ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .expect("checksum computes");
        assert_eq!(tcp.checksum(), sum, "TCP checksum over IPv4 pseudo-header");
    }

    #[test]
    fn too_many_sack_blocks_are_dropped_to_fit() {
        let mut m = PacketMeta::zeroed();
        m.kind = RecordKind::Tcp as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::TCP;
        m.tcp_opts = tcp_opts::MSS | tcp_opts::WSCALE | tcp_opts::TIMESTAMPS | tcp_opts::SACK;
        m.sack_count = 3;
        m.sack = [1, 2, 3, 4, 5, 6];
        let frame = build_frame(&m, PayloadMode::Zeroed);
        let got = parse_frame(LinkType::Ethernet, &frame, 0, 0, Direction::Unknown, 0)
            .expect("frame parses");
        // MSS 4 + NOP/WS 4 + TS 10 leave 22 bytes: NOP, NOP, kind, len and two blocks.
        assert_eq!(got.sack_count, 2, "the last block is dropped to fit");
        assert_eq!(&got.sack[..4], &[1, 2, 3, 4]);
    }

    #[test]
    fn writer_output_reads_back() {
        let mut m = PacketMeta::zeroed();
        m.kind = RecordKind::Udp as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::UDP;
        m.ts_ns = 1_700_000_000_123_456_789;
        m.payload_len = 10;
        m.direction = Direction::Egress as u8;
        let mut w = PcapngWriter::new(Vec::new()).expect("header");
        let a = w.add_interface("hop-a").expect("idb");
        let b = w.add_interface("hop-b").expect("idb");
        w.write_record(a, &m, PayloadMode::Zeroed, Some("first"))
            .expect("write");
        w.write_record(b, &m, PayloadMode::HeadersOnly, None)
            .expect("write");
        assert!(matches!(
            w.write_record(7, &m, PayloadMode::Zeroed, None),
            Err(WriteError::UnknownInterface(7))
        ));
        let bytes = w.into_inner();
        let recs: Vec<PacketMeta> = crate::capture::file::from_reader(std::io::Cursor::new(bytes))
            .expect("opens")
            .collect::<Result<_, _>>()
            .expect("reads");
        assert_eq!(recs.len(), 2);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.ts_ns, m.ts_ns, "nanosecond timestamps survive");
            assert_eq!(r.ifindex, i as u32, "interface id becomes ifindex");
            assert_eq!(
                r.direction,
                Direction::Egress as u8,
                "epb_flags carry direction"
            );
            assert_eq!(r.payload_len, 10);
            assert_eq!(
                r.wire_len,
                14 + 20 + 8 + 10,
                "original length is the full frame"
            );
        }

        let mut p = PcapWriter::new(Vec::new()).expect("header");
        p.write_record(&m, PayloadMode::Zeroed).expect("write");
        let recs: Vec<PacketMeta> =
            crate::capture::file::from_reader(std::io::Cursor::new(p.into_inner()))
                .expect("opens")
                .collect::<Result<_, _>>()
                .expect("reads");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].ts_ns, m.ts_ns);
    }
}
