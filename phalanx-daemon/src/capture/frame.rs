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
    let later = meta.ip_flags & IP_FLAG_LATER_FRAGMENT != 0;
    let v6_frag = v6 && meta.ip_flags & (IP_FLAG_MF | IP_FLAG_LATER_FRAGMENT) != 0;
    let frag_len = if v6_frag { Ipv6FragmentHeader::LEN } else { 0 };
    let ip_hdr_len = if v6 {
        Ipv6Header::LEN
    } else {
        Ipv4Header::MIN_LEN
    };
    // Both IPv4 total length and IPv6 payload length are 16-bit fields.
    let max_l4 = usize::from(u16::MAX) - if v6 { frag_len } else { ip_hdr_len };

    let src = meta.src_addr;
    let dst = meta.dst_addr;
    let checksum = Pseudo { v6, src, dst };
    let kind = RecordKind::try_from(meta.kind).unwrap_or(RecordKind::OtherIp);
    let (l4, l4_full_len) = if later {
        raw_payload(meta, mode, max_l4)
    } else {
        match kind {
            RecordKind::Tcp => tcp_segment(meta, mode, max_l4, &checksum),
            RecordKind::Udp => udp_datagram(meta, mode, max_l4, &checksum),
            RecordKind::IcmpError => icmp_message(meta, mode, max_l4, &checksum, quote(meta)),
            RecordKind::OtherIp if is_icmp(meta) => {
                icmp_message(meta, mode, max_l4, &checksum, Vec::new())
            }
            RecordKind::OtherIp => raw_payload(meta, mode, max_l4),
        }
    };

    let mut out = Vec::with_capacity(14 + 8 + ip_hdr_len + frag_len + l4.len());
    let tags = usize::from(meta.vlan_count.min(2));
    let ip_ethertype = if v6 { EtherType::IPV6 } else { EtherType::IPV4 };
    let first_type = match tags {
        0 => ip_ethertype,
        1 => EtherType::VLAN_TAGGED_FRAME,
        _ => EtherType::PROVIDER_BRIDGING,
    };
    out.extend_from_slice(
        &Ethernet2Header {
            source: mac_for(&src, v6),
            destination: mac_for(&dst, v6),
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
    let link_len = out.len();

    let l4_len16 = u16::try_from(l4_full_len).unwrap_or(u16::MAX);
    if v6 {
        let mut h = Ipv6Header {
            traffic_class: meta.tos,
            flow_label: Ipv6FlowLabel::try_new(meta.ip_id & 0x000f_ffff)
                .unwrap_or(Ipv6FlowLabel::ZERO),
            payload_length: l4_len16.saturating_add(frag_len as u16),
            next_header: IpNumber(meta.l4_proto),
            hop_limit: meta.ttl,
            source: src,
            destination: dst,
        };
        if v6_frag {
            h.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
            out.extend_from_slice(&h.to_bytes());
            let offset = if later { LATER_FRAGMENT_OFFSET } else { 0 };
            let frag = Ipv6FragmentHeader::new(
                IpNumber(meta.l4_proto),
                IpFragOffset::try_new(offset).unwrap_or(IpFragOffset::ZERO),
                meta.ip_flags & IP_FLAG_MF != 0,
                0,
            );
            out.extend_from_slice(&frag.to_bytes());
        } else {
            out.extend_from_slice(&h.to_bytes());
        }
    } else {
        let mut h = Ipv4Header {
            dscp: IpDscp::try_new(meta.tos >> 2).unwrap_or(IpDscp::ZERO),
            ecn: IpEcn::try_new(meta.tos & 0x3).unwrap_or(IpEcn::ZERO),
            total_len: l4_len16.saturating_add(Ipv4Header::MIN_LEN as u16),
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
    out.extend_from_slice(&l4);
    Built {
        bytes: out,
        full_len: link_len + ip_hdr_len + frag_len + l4_full_len,
    }
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
