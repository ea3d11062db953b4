//! User-space conveniences for the shared types (feature `user`).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{FilterPrefix, FilterTuple, PacketMeta};

// SAFETY: every field is plain integer data and the struct has no implicit padding.
unsafe impl aya::Pod for PacketMeta {}
// SAFETY: as above; `_pad` is explicit.
unsafe impl aya::Pod for FilterTuple {}
// SAFETY: byte arrays only, no padding.
unsafe impl aya::Pod for FilterPrefix {}

/// Turns a 16-byte record address into an `IpAddr` given the IP version.
pub fn ip_from_bytes(version: u8, b: &[u8; 16]) -> IpAddr {
    if version == 4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// Turns an `IpAddr` into the 16-byte record form (IPv4 in the first 4 bytes).
pub fn ip_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl PacketMeta {
    /// Source address.
    pub fn src_ip(&self) -> IpAddr {
        ip_from_bytes(self.ip_version, &self.src_addr)
    }
    /// Destination address.
    pub fn dst_ip(&self) -> IpAddr {
        ip_from_bytes(self.ip_version, &self.dst_addr)
    }
    /// Decodes a record from raw ring-buffer bytes: a whole record, or its
    /// first [`crate::RING_SHORT_LEN`] bytes with the rest zero. `None` for
    /// any other length.
    pub fn from_bytes(buf: &[u8]) -> Option<Self> {
        const SHORT: usize = crate::RING_SHORT_LEN;
        if buf.len() >= core::mem::size_of::<Self>() {
            // SAFETY: length checked; PacketMeta is plain integers, so any
            // bytes are a valid value; read_unaligned copes with alignment.
            return Some(unsafe { core::ptr::read_unaligned(buf.as_ptr().cast::<Self>()) });
        }
        let head: &[u8; SHORT] = buf.try_into().ok()?;
        let mut m = Self::zeroed();
        // SAFETY: the head is the record's first SHORT bytes; a fixed-size
        // copy (no call) of plain integers.
        unsafe {
            core::ptr::write_unaligned((&mut m as *mut Self).cast::<[u8; SHORT]>(), *head);
        }
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_roundtrip() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(ip_from_bytes(4, &ip_to_bytes(ip)), ip);
    }

    #[test]
    fn decode_rejects_short_buffers() {
        assert!(PacketMeta::from_bytes(&[0u8; 10]).is_none());
        assert!(PacketMeta::from_bytes(&[0u8; crate::RING_SHORT_LEN + 8]).is_none());
    }

    fn as_bytes(m: &PacketMeta) -> std::vec::Vec<u8> {
        // SAFETY: PacketMeta is plain integers with explicit padding.
        unsafe {
            core::slice::from_raw_parts(
                (m as *const PacketMeta).cast::<u8>(),
                core::mem::size_of::<PacketMeta>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn short_ring_records_decode_to_the_whole_record() {
        let mut m = PacketMeta::zeroed();
        m.ts_ns = 7;
        m.src_addr[15] = 1;
        m.segs = 3;
        m.icmp_mtu = 1400;
        let bytes = as_bytes(&m);
        let short = PacketMeta::from_bytes(&bytes[..crate::RING_SHORT_LEN]);
        assert_eq!(short, Some(m), "the tail comes back zero");
        m.sack[5] = 9;
        m.inner_proto = 6;
        let bytes = as_bytes(&m);
        assert_eq!(PacketMeta::from_bytes(&bytes), Some(m));
        assert_ne!(
            PacketMeta::from_bytes(&bytes[..crate::RING_SHORT_LEN]),
            Some(m),
            "a short record has no tail"
        );
    }
}
