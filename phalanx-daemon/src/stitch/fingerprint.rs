//! Packet identity across observation points.
//!
//! A fingerprint hashes the header fields that routers forward unchanged:
//! addresses, protocol, ports, IPv4 identification or IPv6 flow label, and
//! for TCP sequence, acknowledgment, flags, payload length, timestamps and
//! SACK blocks (for ICMP errors: type, code, MTU and the quoted header).
//! TTL/hop limit, DSCP/ECN, checksums, VLAN tags, the TCP window and the MSS
//! option are left out: routers rewrite them (MSS clamping, VLAN changes).
//!
//! The payload hash is not part of the fingerprint: two points that captured
//! different amounts of payload (different snap lengths or header sizes)
//! hash different bytes of the same packet. The stitcher uses it to split
//! fingerprint collisions only between points whose hashes agree.
//!
//! The hash is FNV-1a 64 over a fixed byte layout, so fingerprints computed
//! by different builds or hosts compare equal.

use phalanx_common::{ipproto, tcp_opts, PacketMeta, RecordKind, MAX_SACK_BLOCKS};

use crate::flow::FlowKey;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Incremental FNV-1a 64.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(FNV_OFFSET)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
}

/// Fingerprint of a packet from the fields routers do not change.
pub fn fingerprint(m: &PacketMeta) -> u64 {
    let mut h = Fnv::new();
    let v6 = m.ip_version == 6;
    h.u8(m.ip_version);
    h.u8(m.kind);
    h.u8(m.l4_proto);
    if v6 {
        h.bytes(&m.src_addr);
        h.bytes(&m.dst_addr);
        h.u32(m.ip_id & 0x000f_ffff);
    } else {
        h.bytes(&m.src_addr[..4]);
        h.bytes(&m.dst_addr[..4]);
        h.u16(m.ip_id as u16);
    }
    match RecordKind::try_from(m.kind) {
        Ok(RecordKind::Tcp) => {
            h.u16(m.sport);
            h.u16(m.dport);
            h.u32(m.seq);
            h.u32(m.ack);
            h.u8(m.tcp_flags);
            h.u32(m.payload_len);
            if m.tcp_opts & tcp_opts::TIMESTAMPS != 0 {
                h.u32(m.tsval);
                h.u32(m.tsecr);
            }
            let n = usize::from(m.sack_count).min(MAX_SACK_BLOCKS);
            for v in m.sack.iter().take(2 * n) {
                h.u32(*v);
            }
        }
        Ok(RecordKind::Udp) => {
            h.u16(m.sport);
            h.u16(m.dport);
            h.u32(m.payload_len);
        }
        Ok(RecordKind::IcmpError) => {
            h.u8(m.icmp_type);
            h.u8(m.icmp_code);
            h.u32(m.icmp_mtu);
            h.u8(m.inner_proto);
            h.bytes(&m.inner_src);
            h.bytes(&m.inner_dst);
            h.u16(m.inner_sport);
            h.u16(m.inner_dport);
            h.u32(m.inner_seq);
        }
        Ok(RecordKind::OtherIp) | Err(_) => {
            h.u8(m.icmp_type);
            h.u8(m.icmp_code);
            h.u32(m.payload_len);
        }
    }
    h.0
}

/// Folds a payload hash into a fingerprint (0 = no payload seen: unchanged).
pub fn with_payload(fp: u64, payload_hash: u32) -> u64 {
    if payload_hash == 0 {
        return fp;
    }
    let mut h = Fnv(fp);
    h.u32(payload_hash);
    // Never collide with the plain fingerprint of the same packet.
    h.u8(0xa5);
    h.0
}

/// One packet as seen at one observation point: everything the stitcher
/// needs, and small enough for peer daemons to exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// Bidirectional flow the packet belongs to.
    pub flow: FlowKey,
    /// Direction within `flow` (0: from the flow key's side 0).
    pub dir: u8,
    /// Timestamp at this point, in this point's clock (ns).
    pub ts_ns: u64,
    /// [`fingerprint`] of the packet.
    pub fingerprint: u64,
    /// Payload hash as captured here (0 when no payload was seen).
    pub payload_hash: u32,
    /// TTL / hop limit as seen here.
    pub ttl: u8,
    /// TCP flags (0 for other protocols), to recognise connection openers.
    pub tcp_flags: u8,
}

impl Sighting {
    /// The sighting of a parsed packet.
    pub fn from_meta(m: &PacketMeta) -> Self {
        let ports = m.kind == RecordKind::Tcp as u8 || m.kind == RecordKind::Udp as u8;
        let (flow, dir) = FlowKey::of_record(m, ports);
        Self {
            flow,
            dir: dir as u8,
            ts_ns: m.ts_ns,
            fingerprint: fingerprint(m),
            payload_hash: m.payload_hash,
            ttl: m.ttl,
            tcp_flags: if m.l4_proto == ipproto::TCP {
                m.tcp_flags
            } else {
                0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_common::tcp_flags;

    fn seg() -> PacketMeta {
        let mut m = PacketMeta::zeroed();
        m.kind = RecordKind::Tcp as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::TCP;
        m.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        m.dst_addr[..4].copy_from_slice(&[10, 0, 1, 1]);
        m.sport = 40000;
        m.dport = 80;
        m.ip_id = 77;
        m.seq = 1000;
        m.ack = 5;
        m.tcp_flags = tcp_flags::ACK;
        m.payload_len = 1448;
        m.ttl = 64;
        m
    }

    #[test]
    fn router_rewrites_do_not_change_the_fingerprint() {
        let a = seg();
        let mut b = a;
        b.ttl = 63;
        b.tos = 0x2e << 2;
        b.vlan_count = 1;
        b.outer_vlan = 42;
        b.window = 9;
        b.mss = 1400;
        b.ts_ns = 12345;
        b.ifindex = 3;
        b.wire_len = 99;
        b.payload_hash = 7;
        assert_eq!(
            fingerprint(&a),
            fingerprint(&b),
            "only forwarded fields count"
        );
    }

    #[test]
    fn identity_fields_change_the_fingerprint() {
        let a = seg();
        let base = fingerprint(&a);
        let edits: [fn(&mut PacketMeta); 9] = [
            |m| m.ip_id = 78,
            |m| m.seq += 1,
            |m| m.ack += 1,
            |m| m.tcp_flags |= tcp_flags::PSH,
            |m| m.payload_len -= 1,
            |m| m.sport += 1,
            |m| m.dst_addr[3] = 2,
            |m| {
                m.tcp_opts = tcp_opts::TIMESTAMPS;
                m.tsval = 1;
            },
            |m| {
                m.sack_count = 1;
                m.sack[1] = 5;
            },
        ];
        for (i, e) in edits.iter().enumerate() {
            let mut b = a;
            e(&mut b);
            assert_ne!(
                fingerprint(&b),
                base,
                "edit {i} must change the fingerprint"
            );
        }
        assert_ne!(with_payload(base, 3), base);
        assert_eq!(with_payload(base, 0), base);
    }

    #[test]
    fn observation_direction_follows_the_flow_key() {
        let a = seg();
        let mut r = a;
        std::mem::swap(&mut r.src_addr, &mut r.dst_addr);
        std::mem::swap(&mut r.sport, &mut r.dport);
        let (oa, or) = (Sighting::from_meta(&a), Sighting::from_meta(&r));
        assert_eq!(oa.flow, or.flow);
        assert_ne!(oa.dir, or.dir);
    }
}
