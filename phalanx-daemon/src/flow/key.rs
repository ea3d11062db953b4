//! Canonical bidirectional flow key, the protocol type and their text forms.
//!
//! Both directions of a conversation map to one key: the endpoint that sorts
//! lower (address, then port) is side 0. VLAN ids are not part of this key:
//! they are kept per direction in the flow and compared on lookup (see
//! [`super::table`]), which lets one 5-tuple exist as separate flows on
//! different VLANs while a flow tagged in one direction only (a SPAN port
//! that tags one way) still pairs up.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use phalanx_common::user::{ip_from_bytes, ip_to_bytes};
use phalanx_common::{ipproto, PacketMeta, RecordKind};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// What a record is to its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordRole {
    /// One of the flow's packets.
    Packet,
    /// An ICMP error quoting one of the flow's packets.
    IcmpError,
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

    /// The flow a record belongs to, as the flow table keys it, the
    /// direction in it of the packet the record describes (an ICMP error:
    /// the packet it quotes), and the record's role; `None` for a record of
    /// no flow (an unknown kind or IP version).
    #[inline]
    pub fn of(rec: &PacketMeta) -> Option<(Self, usize, RecordRole)> {
        if rec.ip_version != 4 && rec.ip_version != 6 {
            return None;
        }
        let (proto, ports) = match RecordKind::try_from(rec.kind).ok()? {
            RecordKind::Tcp => (ipproto::TCP, true),
            RecordKind::Udp => (ipproto::UDP, true),
            RecordKind::OtherIp => (rec.l4_proto, false),
            RecordKind::IcmpError => {
                let (key, d) = Self::of_icmp_quote(rec);
                return Some((key, d, RecordRole::IcmpError));
            }
        };
        let (mut key, d) = Self::of_record(rec, ports);
        key.proto = proto;
        Some((key, d, RecordRole::Packet))
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

/// An IP protocol number, written by name where it has one of ours
/// (`tcp`, `udp`, `icmp`, `icmpv6`) and as its number otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proto(pub u8);

impl Proto {
    /// TCP.
    pub const TCP: Self = Self(ipproto::TCP);
    /// UDP.
    pub const UDP: Self = Self(ipproto::UDP);

    const NAMES: [(u8, &'static str); 4] = [
        (ipproto::TCP, "tcp"),
        (ipproto::UDP, "udp"),
        (ipproto::ICMP, "icmp"),
        (ipproto::ICMPV6, "icmpv6"),
    ];

    /// The protocol's name, if it has one of ours.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, name)| *name)
    }
}

/// A protocol equals its name (`tcp`) or its number written out (`132`).
impl PartialEq<&str> for Proto {
    fn eq(&self, other: &&str) -> bool {
        other.parse::<Proto>().is_ok_and(|p| p == *self)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.pad(name),
            None => f.pad(&self.0.to_string()),
        }
    }
}

impl FromStr for Proto {
    type Err = String;
    /// A name (`tcp`, `udp`, `icmp`, `icmpv6`) or a protocol number.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(n, _)| Self(*n))
            .or_else(|| s.parse().ok().map(Self))
            .ok_or_else(|| format!("unknown protocol {s:?}"))
    }
}

impl Serialize for Proto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FlowKey {
    /// The address of a side.
    pub fn ip(&self, side: usize) -> IpAddr {
        ip_from_bytes(self.ip_version, &self.addr[side])
    }

    /// The address and port of a side.
    pub fn endpoint(&self, side: usize) -> SocketAddr {
        SocketAddr::new(self.ip(side), self.port[side])
    }

    /// The canonical key of a conversation between two endpoints, and the
    /// direction `a -> b` has in it.
    pub fn between(proto: Proto, a: SocketAddr, b: SocketAddr) -> (Self, usize) {
        Self::canonical(
            if a.is_ipv4() { 4 } else { 6 },
            proto.0,
            &ip_to_bytes(a.ip()),
            a.port(),
            &ip_to_bytes(b.ip()),
            b.port(),
        )
    }

    /// The protocol.
    pub fn protocol(&self) -> Proto {
        Proto(self.proto)
    }
}

/// `10.0.0.1:40000 <-> 10.0.0.2:80 tcp` (IPv6 in brackets).
impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} <-> {} {}",
            self.endpoint(0),
            self.endpoint(1),
            self.protocol()
        )
    }
}

/// A flow as JSON: the canonical endpoints (side 0 sorts lower).
#[derive(Serialize, Deserialize)]
struct FlowKeyJson {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: Proto,
}

impl Serialize for FlowKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FlowKeyJson {
            src: self.ip(0),
            dst: self.ip(1),
            sport: self.port[0],
            dport: self.port[1],
            proto: self.protocol(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for FlowKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = FlowKeyJson::deserialize(d)?;
        if f.src.is_ipv4() != f.dst.is_ipv4() {
            return Err(serde::de::Error::custom("flow mixes IPv4 and IPv6"));
        }
        // Kept as written: a stored key is already canonical.
        Ok(Self {
            addr: [ip_to_bytes(f.src), ip_to_bytes(f.dst)],
            port: [f.sport, f.dport],
            proto: f.proto.0,
            ip_version: if f.src.is_ipv4() { 4 } else { 6 },
        })
    }
}

/// A conversation between two endpoints, written `"SRC:PORT -> DST:PORT"`
/// (IPv6 as `[addr]:port`): scope filters and flow queries name flows so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    /// One endpoint.
    pub a: SocketAddr,
    /// The other endpoint.
    pub b: SocketAddr,
}

impl FlowSpec {
    /// The spec of a key, side 0 first.
    pub fn of(key: &FlowKey) -> Self {
        Self {
            a: key.endpoint(0),
            b: key.endpoint(1),
        }
    }

    /// The canonical key of this conversation over `proto`.
    pub fn key(&self, proto: Proto) -> FlowKey {
        FlowKey::between(proto, self.a, self.b).0
    }
}

impl FromStr for FlowSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once("->")
            .ok_or_else(|| format!("flow {s:?}: expected \"ADDR:PORT -> ADDR:PORT\""))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("flow {s:?}: {:?} is not ADDR:PORT ({e})", x.trim()))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a.is_ipv4() != b.is_ipv4() {
            return Err(format!("flow {s:?}: mixes IPv4 and IPv6"));
        }
        Ok(FlowSpec { a, b })
    }
}

impl fmt::Display for FlowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.a, self.b)
    }
}

impl<'de> Deserialize<'de> for FlowSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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
    fn text_forms_round_trip() {
        let spec: FlowSpec = "[2001:db8::2]:443 -> [2001:db8::1]:50000".parse().unwrap();
        let key = spec.key(Proto::TCP);
        assert_eq!(
            key.to_string(),
            "[2001:db8::1]:50000 <-> [2001:db8::2]:443 tcp",
            "side 0 sorts lower"
        );
        assert_eq!(FlowSpec::of(&key).key(Proto::TCP), key);
        let json = serde_json::to_value(key).unwrap();
        assert_eq!(json["proto"], "tcp");
        assert_eq!(json["dport"], 443);
        assert_eq!(serde_json::from_value::<FlowKey>(json).unwrap(), key);
        for (text, n) in [("udp", 17), ("icmp", 1), ("icmpv6", 58), ("132", 132)] {
            let p: Proto = text.parse().unwrap();
            assert_eq!((p.0, p.to_string()), (n, text.to_string()));
        }
        assert!("sctp".parse::<Proto>().is_err());
        assert!("10.0.0.1:1 -> [::1]:2".parse::<FlowSpec>().is_err());
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = [1u8; 16];
        let (k, d) = FlowKey::canonical(6, 17, &a, 9, &a, 5);
        assert_eq!((k.port, d), ([5, 9], 1));
    }
}
