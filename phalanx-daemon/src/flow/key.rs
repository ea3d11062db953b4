//! Canonical bidirectional flow key.
//!
//! Both directions of a conversation map to one key: the endpoint that sorts
//! lower (address, then port) is side 0. VLAN ids are not part of this key:
//! they are kept per direction in the flow and compared on lookup (see
//! [`super::table`]), which lets one 5-tuple exist as separate flows on
//! different VLANs while a flow tagged in one direction only (a SPAN port
//! that tags one way) still pairs up.

use phalanx_common::PacketMeta;

/// Canonical 5-tuple of a bidirectional flow (side 0 = lower endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    /// Address of side 0 (IPv4 in the first 4 bytes).
    pub addr: [[u8; 16]; 2],
    /// Port of side 0 and side 1 (0 for protocols without ports).
    pub port: [u16; 2],
    /// IP protocol.
    pub proto: u8,
    /// 4 or 6.
    pub ip_version: u8,
}

/// VLAN tags of one direction packed as `outer << 16 | inner` (0 = untagged).
pub type VlanTag = u32;

/// Packs the record's VLAN ids into a [`VlanTag`].
#[inline]
pub fn vlan_of(rec: &PacketMeta) -> VlanTag {
    (u32::from(rec.outer_vlan) << 16) | u32::from(rec.inner_vlan)
}

impl FlowKey {
    /// Builds the canonical key for a packet from `src:sport` to `dst:dport`
    /// and returns it with the packet's direction index (0: from side 0).
    #[inline]
    pub fn canonical(
        ip_version: u8,
        proto: u8,
        src: &[u8; 16],
        sport: u16,
        dst: &[u8; 16],
        dport: u16,
    ) -> (Self, usize) {
        if (src, sport) <= (dst, dport) {
            (
                Self {
                    addr: [*src, *dst],
                    port: [sport, dport],
                    proto,
                    ip_version,
                },
                0,
            )
        } else {
            (
                Self {
                    addr: [*dst, *src],
                    port: [dport, sport],
                    proto,
                    ip_version,
                },
                1,
            )
        }
    }

    /// Key and direction of a TCP/UDP/other-IP record (ports are zeroed
    /// for protocols without them so stray values cannot split a flow).
    #[inline]
    pub fn of_record(rec: &PacketMeta, has_ports: bool) -> (Self, usize) {
        let (sp, dp) = if has_ports {
            (rec.sport, rec.dport)
        } else {
            (0, 0)
        };
        Self::canonical(
            rec.ip_version,
            rec.l4_proto,
            &rec.src_addr,
            sp,
            &rec.dst_addr,
            dp,
        )
    }

    /// Key and direction of the packet quoted inside an ICMP error.
    #[inline]
    pub fn of_icmp_quote(rec: &PacketMeta) -> (Self, usize) {
        let ports = matches!(
            rec.inner_proto,
            phalanx_common::ipproto::TCP | phalanx_common::ipproto::UDP
        );
        let (sp, dp) = if ports {
            (rec.inner_sport, rec.inner_dport)
        } else {
            (0, 0)
        };
        Self::canonical(
            rec.ip_version,
            rec.inner_proto,
            &rec.inner_src,
            sp,
            &rec.inner_dst,
            dp,
        )
    }

    /// Fast 64-bit hash (multiply-xorshift over the key words); the flow
    /// table is keyed by it, so it must spread the high bits well.
    #[inline]
    pub fn hash64(&self) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let w = |b: &[u8; 16], i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(x)
        };
        let mut h = u64::from(self.port[0])
            | (u64::from(self.port[1]) << 16)
            | (u64::from(self.proto) << 32)
            | (u64::from(self.ip_version) << 40);
        for v in [
            w(&self.addr[0], 0),
            w(&self.addr[0], 8),
            w(&self.addr[1], 0),
            w(&self.addr[1], 8),
        ] {
            h = (h.rotate_left(23) ^ v).wrapping_mul(K);
        }
        h ^ (h >> 32)
    }
}

/// Hashes through [`FlowKey::hash64`]: one pass over the key's words
/// instead of a hasher call per field (flow histories key maps by it).
impl std::hash::Hash for FlowKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (k1, d1) = FlowKey::canonical(4, 6, &a, 40000, &b, 80);
        let (k2, d2) = FlowKey::canonical(4, 6, &b, 80, &a, 40000);
        assert_eq!(k1, k2, "reverse packet must map to the same key");
        assert_ne!(d1, d2, "and to the other direction");
        assert_eq!(k1.hash64(), k2.hash64());
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = [1u8; 16];
        let (k, d) = FlowKey::canonical(6, 17, &a, 9, &a, 5);
        assert_eq!((k.port, d), ([5, 9], 1));
    }
}
