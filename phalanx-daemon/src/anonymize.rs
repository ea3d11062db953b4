//! Prefix-preserving IP address anonymisation: Crypto-PAn (Xu, Fan, Ammar,
//! Moon, "Prefix-Preserving IP Address Anonymization", ICNP 2002), for
//! IPv4 as in the reference implementation and for IPv6 with its 128-bit
//! extension as the common implementations do it (Python `yacryptopan`,
//! Go `cryptopan`), so the same key gives the same addresses as those tools.
//!
//! Two addresses that share their first n bits map to two addresses that
//! share exactly their first n bits: subnets stay subnets (a /24 maps into
//! one /24), and nothing else about the addresses is kept. The mapping is
//! keyed: whoever holds the key can map addresses again; without it an
//! address is recovered only by recognising its host (a well-known server
//! by its traffic), which also tells the prefix it shares with others.
//!
//! `phalanx analyze`/`stitch` rewrite the records as they are read, so every
//! output built from them (flows, findings, pcapng) agrees; the daemon
//! rewrites the records and comments of its evidence files.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use phalanx_common::{PacketMeta, RecordKind};

/// Bytes of a key: the AES-128 key, then the pad.
pub const KEY_BYTES: usize = 32;

/// Mappings kept per address family before the cache starts over: bounds
/// the memory (a few MB) while a capture's repeated addresses stay cheap.
const CACHE_MAX: usize = 65_536;

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AnonymizeError {
    /// The file could not be read.
    #[error("anonymisation key {path}: {source}")]
    Read {
        /// Key file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The contents are not a key.
    #[error("anonymisation key {path}: {problem}; expected exactly 32 raw bytes, or 64 hex digits with an optional trailing newline (e.g. `openssl rand -hex 32`)")]
    Format {
        /// Key file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A Crypto-PAn mapping under one key, with a cache of recent results.
pub struct Anonymizer {
    cipher: Aes128,
    /// The encrypted second half of the key: the bits below each prefix.
    pad: u128,
    v4: HashMap<u32, u32, SeededFold>,
    v6: HashMap<u128, u128, SeededFold>,
}

impl fmt::Debug for Anonymizer {
    // Never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anonymizer")
            .field("cached_v4", &self.v4.len())
            .field("cached_v6", &self.v6.len())
            .finish_non_exhaustive()
    }
}

impl Anonymizer {
    /// The mapping of a 32-byte key: AES-128 key first, pad second.
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        let (k, p) = key.split_at(16);
        let cipher = Aes128::new(Block::from_slice(k));
        let mut pad = *Block::from_slice(p);
        cipher.encrypt_block(&mut pad);
        Self {
            cipher,
            pad: u128::from_be_bytes(pad.into()),
            v4: HashMap::with_hasher(SeededFold::new()),
            v6: HashMap::with_hasher(SeededFold::new()),
        }
    }

    /// Reads a key file: exactly 32 raw bytes, or 64 hex digits (optionally
    /// followed by a newline).
    pub fn from_key_file(path: &Path) -> Result<Self, AnonymizeError> {
        let bytes = std::fs::read(path).map_err(|source| AnonymizeError::Read {
            path: path.display().to_string(),
            source,
        })?;
        parse_key(&bytes)
            .map(|k| Self::new(&k))
            .map_err(|problem| AnonymizeError::Format {
                path: path.display().to_string(),
                problem,
            })
    }

    /// The anonymised address (of the same family).
    pub fn ip(&mut self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => IpAddr::V4(self.ipv4(a)),
            IpAddr::V6(a) => IpAddr::V6(self.ipv6(a)),
        }
    }

    /// The anonymised IPv4 address.
    pub fn ipv4(&mut self, a: Ipv4Addr) -> Ipv4Addr {
        let a = u32::from(a);
        if let Some(&m) = self.v4.get(&a) {
            return m.into();
        }
        // The flips are the low 32 bits: the truncation keeps them all.
        let m = a ^ self.flips(u128::from(a) << 96, 32) as u32;
        if self.v4.len() >= CACHE_MAX {
            self.v4.clear();
        }
        self.v4.insert(a, m);
        m.into()
    }

    /// The anonymised IPv6 address.
    pub fn ipv6(&mut self, a: Ipv6Addr) -> Ipv6Addr {
        let a = u128::from(a);
        if let Some(&m) = self.v6.get(&a) {
            return m.into();
        }
        let m = a ^ self.flips(a, 128);
        if self.v6.len() >= CACHE_MAX {
            self.v6.clear();
        }
        self.v6.insert(a, m);
        m.into()
    }

    /// Rewrites a record's addresses in place: source and destination, and
    /// for an ICMP error the addresses of the packet it quotes (so the error
    /// still matches its flow). `ip_version` 6 uses all 16 bytes, anything
    /// else the first 4, as the frame builder reads them.
    pub fn packet(&mut self, m: &mut PacketMeta) {
        let v6 = m.ip_version == 6;
        self.bytes(&mut m.src_addr, v6);
        self.bytes(&mut m.dst_addr, v6);
        if m.kind == RecordKind::IcmpError as u8 {
            self.bytes(&mut m.inner_src, v6);
            self.bytes(&mut m.inner_dst, v6);
        }
    }

    fn bytes(&mut self, a: &mut [u8; 16], v6: bool) {
        if v6 {
            *a = self.ipv6(Ipv6Addr::from(*a)).octets();
        } else {
            let v4 = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            a[..4].copy_from_slice(&self.ipv4(v4).octets());
        }
    }

    /// `text` with every IPv4 and IPv6 address in it anonymised (written as
    /// `Display` writes the result), for comments and summaries produced
    /// from the original addresses. An address is a run of hex digits, `:`
    /// and `.` starting at a word boundary, or its longest prefix that
    /// parses: `10.0.0.1:443` and `[2001:db8::1]:443` keep their ports, a
    /// sentence's final dot stays, and `1.5 s` or `12:30` are not addresses.
    /// A network (`10.1.0.0/16`) maps to the network of its anonymised
    /// address, host bits zero.
    pub fn text(&mut self, text: &str) -> String {
        let b = text.as_bytes();
        let part = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
        let mut out = String::with_capacity(text.len() + 16);
        let (mut i, mut copied) = (0, 0);
        while i < b.len() {
            let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || part(b[i - 1]));
            if !boundary || !part(b[i]) {
                i += 1;
                continue;
            }
            let mut end = i;
            while end < b.len() && part(b[end]) {
                end += 1;
            }
            // Runs are ASCII, so every index in them is a char boundary.
            let run = &text[i..end];
            let found = (1..=run.len().min(MAX_ADDR_CHARS))
                .rev()
                .find_map(|n| run[..n].parse::<IpAddr>().ok().map(|ip| (n, ip)));
            if let Some((n, ip)) = found {
                let mut anon = self.ip(ip);
                if let Some(len) = prefix_len(&text[i + n..]) {
                    // A length too long for the family leaves the address as is.
                    anon = match anon {
                        IpAddr::V4(a) => ipnet::Ipv4Net::new(a, len).map(|n| n.network().into()),
                        IpAddr::V6(a) => ipnet::Ipv6Net::new(a, len).map(|n| n.network().into()),
                    }
                    .unwrap_or(anon);
                }
                out.push_str(&text[copied..i]);
                out.push_str(&anon.to_string());
                copied = i + n;
            }
            i = end;
        }
        out.push_str(&text[copied..]);
        out
    }

    /// Crypto-PAn's one-time pad for an address left-aligned in `ext`, its
    /// first `bits` bits: bit `pos` (from the top) is the first bit of AES
    /// over the address's first `pos` bits followed by the pad's other
    /// bits. Returned in the low `bits` bits.
    ///
    /// The blocks depend on the original address only, so all are encrypted
    /// in one call (AES-NI works on several at once).
    fn flips(&self, ext: u128, bits: u32) -> u128 {
        let mut blocks = [Block::default(); 128];
        let n = bits as usize;
        for (pos, block) in (0..bits).zip(blocks.iter_mut()) {
            let prefix = u128::MAX.checked_shl(128 - pos).unwrap_or(0);
            *block = Block::from(((ext & prefix) | (self.pad & !prefix)).to_be_bytes());
        }
        self.cipher.encrypt_blocks(&mut blocks[..n]);
        blocks[..n]
            .iter()
            .fold(0, |r, b| (r << 1) | u128::from(b[0] >> 7))
    }
}

/// The cache's hasher: a folded multiply (as `foldhash` does it) from a
/// random seed. SipHash cost as much as the rest of the rewrite; the seed
/// keeps crafted addresses from piling into one bucket.
#[derive(Clone, Copy)]
struct SeededFold(u64);

impl SeededFold {
    fn new() -> Self {
        Self(RandomState::new().hash_one(0u8))
    }
}

impl BuildHasher for SeededFold {
    type Hasher = Fold;
    fn build_hasher(&self) -> Fold {
        Fold(self.0)
    }
}

/// The state of one [`SeededFold`] hash.
struct Fold(u64);

impl Fold {
    fn mix(&mut self, x: u64) {
        let p = u128::from(self.0 ^ x) * 0x9e37_79b9_7f4a_7c15;
        // Truncations on purpose: the two halves of the product, folded.
        self.0 = p as u64 ^ (p >> 64) as u64;
    }
}

impl Hasher for Fold {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.mix(x.into());
    }
    fn write_u128(&mut self, x: u128) {
        // Both halves: the truncation takes the low one.
        self.mix(x as u64);
        self.mix((x >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The prefix length of a `/N` at the start of `rest` (as after a network's
/// address), when it is one.
fn prefix_len(rest: &str) -> Option<u8> {
    let digits = rest.strip_prefix('/')?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The longest text form of an address (`ffff:…:255.255.255.255`).
const MAX_ADDR_CHARS: usize = 45;

/// The key in a key file's contents, or what is wrong with them.
fn parse_key(bytes: &[u8]) -> Result<[u8; KEY_BYTES], String> {
    if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(bytes) {
        return Ok(raw);
    }
    let text = bytes
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(bytes);
    if text.len() != 2 * KEY_BYTES {
        return Err(format!("{} bytes", bytes.len()));
    }
    let mut key = [0u8; KEY_BYTES];
    hex::decode_to_slice(text, &mut key).map_err(|e| format!("64 characters, not hex: {e}"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key of the sample shipped with the Crypto-PAn reference
    /// implementation (sample.cpp).
    const SAMPLE_KEY: [u8; 32] = [
        21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16, 216, 152, 143, 131,
        121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2,
    ];

    /// The addresses of the reference implementation's sample_trace_raw.dat
    /// and their anonymised forms in sample_trace_sanitized.dat (as listed,
    /// sorted and de-duplicated, in the test suites of Go `cryptopan` and
    /// Python `pycryptopan`/`yacryptopan`).
    const SAMPLE_V4: &[(&str, &str)] = &[
        ("128.11.68.132", "135.242.180.132"),
        ("129.118.74.4", "134.136.186.123"),
        ("130.132.252.244", "133.68.164.234"),
        ("141.223.7.43", "141.167.8.160"),
        ("141.233.145.108", "141.129.237.235"),
        ("152.163.225.39", "151.140.114.167"),
        ("156.29.3.236", "147.225.12.42"),
        ("165.247.96.84", "162.9.99.234"),
        ("166.107.77.190", "160.132.178.185"),
        ("192.102.249.13", "252.138.62.131"),
        ("192.215.32.125", "252.43.47.189"),
        ("192.233.80.103", "252.25.108.8"),
        ("192.41.57.43", "252.222.221.184"),
        ("193.150.244.223", "253.169.52.216"),
        ("195.205.63.100", "255.186.223.5"),
        ("198.200.171.101", "249.199.68.213"),
        ("198.26.132.101", "249.36.123.202"),
        ("198.36.213.5", "249.7.21.132"),
        ("198.51.77.238", "249.18.186.254"),
        ("199.217.79.101", "248.38.184.213"),
        ("202.49.198.20", "245.206.7.234"),
        ("203.12.160.252", "244.248.163.4"),
        ("204.184.162.189", "243.192.77.90"),
        ("204.202.136.230", "243.178.4.198"),
        ("204.29.20.4", "243.33.20.123"),
        ("205.178.38.67", "242.108.198.51"),
        ("205.188.147.153", "242.96.16.101"),
        ("205.188.248.25", "242.96.88.27"),
        ("205.245.121.43", "242.21.121.163"),
        ("207.105.49.5", "241.118.205.138"),
        ("207.135.65.238", "241.202.129.222"),
        ("207.155.9.214", "241.220.250.22"),
        ("207.188.7.45", "241.255.249.220"),
        ("207.25.71.27", "241.33.119.156"),
        ("207.33.151.131", "241.1.233.131"),
        ("208.147.89.59", "227.237.98.191"),
        ("208.234.120.210", "227.154.67.17"),
        ("208.28.185.184", "227.39.94.90"),
        ("208.52.56.122", "227.8.63.165"),
        ("209.12.231.7", "226.243.167.8"),
        ("209.238.72.3", "226.6.119.243"),
        ("209.246.74.109", "226.22.124.76"),
        ("209.68.60.238", "226.184.220.233"),
        ("209.85.249.6", "226.170.70.6"),
        ("212.120.124.31", "228.135.163.231"),
        ("212.146.8.236", "228.19.4.234"),
        ("212.186.227.154", "228.59.98.98"),
        ("212.204.172.118", "228.71.195.169"),
        ("212.206.130.201", "228.69.242.193"),
        ("216.148.237.145", "235.84.194.111"),
        ("216.157.30.252", "235.89.31.26"),
        ("216.184.159.48", "235.96.225.78"),
        ("216.227.10.221", "235.28.253.36"),
        ("216.254.18.172", "235.7.16.162"),
        ("216.32.132.250", "235.192.139.38"),
        ("216.35.217.178", "235.195.157.81"),
        ("24.0.250.221", "100.15.198.226"),
        ("24.13.62.231", "100.2.192.247"),
        ("24.14.213.138", "100.1.42.141"),
        ("24.5.0.80", "100.9.15.210"),
        ("24.7.198.88", "100.10.6.25"),
        ("24.94.26.44", "100.88.228.35"),
        ("38.15.67.68", "64.3.66.187"),
        ("4.3.88.225", "124.60.155.63"),
        ("63.14.55.111", "95.9.215.7"),
        ("63.195.241.44", "95.179.238.44"),
        ("63.97.7.140", "95.97.9.123"),
        ("64.14.118.196", "0.255.183.58"),
        ("64.34.154.117", "0.221.154.117"),
        ("64.39.15.238", "0.219.7.41"),
        ("10.185.25.118", "117.161.29.118"),
    ];

    /// IPv6 under the sample key, generated with Python `yacryptopan` 1.0.2
    /// (`CryptoPAn(key).anonymize(a)`); the first five are also the Go
    /// `cryptopan` test suite's.
    const SAMPLE_V6: &[(&str, &str)] = &[
        ("::1", "78ff:f001:9fc0:20df:8380:b1f1:704:ed"),
        ("::2", "78ff:f001:9fc0:20df:8380:b1f1:704:ef"),
        ("::ffff", "78ff:f001:9fc0:20df:8380:b1f1:704:f838"),
        ("2001:db8::1", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e"),
        ("2001:db8::2", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1c"),
        ("fe80::1", "cf7f:c0e:1fc3:da1c:70:b18e:f7f3:2101"),
        ("fe80::2", "cf7f:c0e:1fc3:da1c:70:b18e:f7f3:2102"),
        (
            "2001:db8:1:2::abcd",
            "4401:2bc:603e:23c2:ffff:e070:ee0f:147d",
        ),
        (
            "2606:4700:4700::1111",
            "4009:788c:3b3c:1ddc:1ff:8071:f900:cf2",
        ),
        ("::ffff:192.0.2.1", "78ff:f001:9fc0:20df:8380:7db:c808:def2"),
        ("ff02::1", "cef2:fc0c:1fff:dffe:ff8f:de7f:10f9:3f01"),
    ];

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn reference_vectors_ipv4() {
        let mut a = Anonymizer::new(&SAMPLE_KEY);
        for (raw, anon) in SAMPLE_V4 {
            assert_eq!(a.ip(ip(raw)), ip(anon), "{raw}");
        }
    }

    #[test]
    fn reference_vectors_ipv6() {
        let mut a = Anonymizer::new(&SAMPLE_KEY);
        for (raw, anon) in SAMPLE_V6 {
            assert_eq!(a.ip(ip(raw)), ip(anon), "{raw}");
        }
        // yacryptopan's own example: key bytes 0..32.
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut a = Anonymizer::new(&key);
        assert_eq!(a.ip(ip("192.0.2.1")), ip("2.90.93.17"));
        assert_eq!(
            a.ip(ip("2001:db8::1")),
            ip("dd92:2c44:3fc0:ff1e:7ff9:c7f0:8180:7e00")
        );
    }

    /// Bits in common at the top.
    fn common(a: u128, b: u128, bits: u32) -> u32 {
        ((a ^ b) << (128 - bits)).leading_zeros().min(bits)
    }

    proptest! {
        /// Two IPv4 addresses sharing exactly n leading bits map to two
        /// sharing exactly n leading bits.
        #[test]
        fn prefixes_are_preserved_v4(key in any::<[u8; 32]>(), x in any::<u32>(), n in 0u32..32, y in any::<u32>()) {
            // y keeps x's first n bits, differs in bit n, and is random below.
            let flip = 1u32 << (31 - n);
            let below = flip - 1;
            let y = (x & !(below | flip)) | (!x & flip) | (y & below);
            let mut a = Anonymizer::new(&key);
            let (ax, ay) = (a.ipv4(x.into()), a.ipv4(y.into()));
            prop_assert_eq!(common(x.into(), y.into(), 32), n);
            prop_assert_eq!(common(u32::from(ax).into(), u32::from(ay).into(), 32), n);
        }

        /// The same for IPv6 and its 128 bits.
        #[test]
        fn prefixes_are_preserved_v6(key in any::<[u8; 32]>(), x in any::<u128>(), n in 0u32..128, y in any::<u128>()) {
            let flip = 1u128 << (127 - n);
            let below = flip - 1;
            let y = (x & !(below | flip)) | (!x & flip) | (y & below);
            let mut a = Anonymizer::new(&key);
            let (ax, ay) = (a.ipv6(x.into()), a.ipv6(y.into()));
            prop_assert_eq!(common(x, y, 128), n);
            prop_assert_eq!(common(ax.into(), ay.into(), 128), n);
        }
    }

    #[test]
    fn same_address_same_result_across_cache_clears() {
        let mut a = Anonymizer::new(&SAMPLE_KEY);
        let probe4 = ip("128.11.68.132");
        let probe6 = ip("2001:db8::1");
        let (first4, first6) = (a.ip(probe4), a.ip(probe6));
        // Fill both caches past their bound: each clears once.
        for i in 0..CACHE_MAX as u32 + 10 {
            a.ipv4(Ipv4Addr::from(0x0a00_0000 + i));
            a.ipv6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i)));
        }
        assert!(a.v4.len() < CACHE_MAX && a.v6.len() < CACHE_MAX, "{a:?}");
        assert!(!a
            .v4
            .contains_key(&u32::from(Ipv4Addr::new(128, 11, 68, 132))));
        assert_eq!((a.ip(probe4), a.ip(probe6)), (first4, first6));
        // And from a cold mapping under the same key.
        let mut cold = Anonymizer::new(&SAMPLE_KEY);
        assert_eq!((cold.ip(probe4), cold.ip(probe6)), (first4, first6));
    }

    #[test]
    fn records_are_rewritten_by_family() {
        let mut a = Anonymizer::new(&SAMPLE_KEY);
        let mut m = PacketMeta {
            ip_version: 4,
            kind: RecordKind::IcmpError as u8,
            ..PacketMeta::zeroed()
        };
        m.src_addr[..4].copy_from_slice(&[128, 11, 68, 132]);
        m.dst_addr[..4].copy_from_slice(&[10, 185, 25, 118]);
        m.inner_src[..4].copy_from_slice(&[10, 185, 25, 118]);
        m.inner_dst[..4].copy_from_slice(&[24, 5, 0, 80]);
        a.packet(&mut m);
        assert_eq!(&m.src_addr[..4], &[135, 242, 180, 132]);
        assert_eq!(&m.dst_addr[..4], &[117, 161, 29, 118]);
        assert_eq!(
            &m.inner_src[..4],
            &[117, 161, 29, 118],
            "quoted like the flow"
        );
        assert_eq!(&m.inner_dst[..4], &[100, 9, 15, 210]);
        assert!(
            m.src_addr[4..].iter().all(|&b| b == 0),
            "IPv4 rest untouched"
        );

        let mut m = PacketMeta {
            ip_version: 6,
            kind: RecordKind::Tcp as u8,
            ..PacketMeta::zeroed()
        };
        m.src_addr = Ipv6Addr::from(1u128).octets();
        m.dst_addr = "2001:db8::2".parse::<Ipv6Addr>().expect("v6").octets();
        a.packet(&mut m);
        assert_eq!(
            IpAddr::from(m.src_addr),
            ip("78ff:f001:9fc0:20df:8380:b1f1:704:ed")
        );
        assert_eq!(
            IpAddr::from(m.dst_addr),
            ip("4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1c")
        );
        assert_eq!(m.inner_src, [0; 16], "no quoted packet: left alone");
    }

    #[test]
    fn addresses_in_text_are_rewritten() {
        let mut a = Anonymizer::new(&SAMPLE_KEY);
        assert_eq!(
            a.text(
                "128.11.68.132:51000 sent 3 SYNs to 10.185.25.118:443 and got no answer in 1.5 s."
            ),
            "135.242.180.132:51000 sent 3 SYNs to 117.161.29.118:443 and got no answer in 1.5 s."
        );
        assert_eq!(
            a.text("stall: [2001:db8::1]:443 from 4.3.88.225, at 12:30:05 (v1.2.3.4)"),
            "stall: [4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e]:443 from 124.60.155.63, at 12:30:05 (v1.2.3.4)"
        );
        assert_eq!(
            a.text("to 2001:db8::2."),
            "to 4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1c."
        );
        // Networks stay networks: host bits zero, prefix length kept.
        let anon24 = a.ipv4(Ipv4Addr::new(192, 215, 32, 0)).octets();
        assert_eq!(
            a.text("group svc-443/192.215.32.0/24, 2001:db8::/32"),
            format!(
                "group svc-443/{}.{}.{}.0/24, 4401:2bc::/32",
                anon24[0], anon24[1], anon24[2]
            )
        );
        let plain = "congestion: 12 of 300 re-sent (4.0 %), decade 2001, face";
        assert_eq!(a.text(plain), plain);
        assert_eq!(a.text("é 24.5.0.80 ü"), "é 100.9.15.210 ü");
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("key file");
            p
        };
        let probe = ip("128.11.68.132");
        let want = ip("135.242.180.132");
        let hex = hex::encode(SAMPLE_KEY);
        for (name, bytes) in [
            ("raw", SAMPLE_KEY.to_vec()),
            ("hex", hex.clone().into_bytes()),
            ("hex-nl", format!("{hex}\n").into_bytes()),
            ("hex-crlf", format!("{hex}\r\n").into_bytes()),
            ("hex-upper", hex.to_uppercase().into_bytes()),
        ] {
            let mut a = Anonymizer::from_key_file(&file(name, &bytes)).expect(name);
            assert_eq!(a.ip(probe), want, "{name}");
        }
        let err = |p: &Path| {
            Anonymizer::from_key_file(p)
                .expect_err("bad key")
                .to_string()
        };
        let short = file("short", b"0123456789abcdef\n");
        let e = err(&short);
        assert!(
            e.contains(&short.display().to_string()) && e.contains("17 bytes"),
            "{e}"
        );
        assert!(
            e.contains("32 raw bytes") && e.contains("64 hex digits"),
            "{e}"
        );
        let e = err(&file("raw-nl", &[SAMPLE_KEY.as_slice(), b"\n"].concat()));
        assert!(e.contains("33 bytes"), "a raw key has no newline: {e}");
        let e = err(&file("not-hex", "z".repeat(64).as_bytes()));
        assert!(e.contains("not hex"), "{e}");
        let e = err(&file("two-nl", format!("{hex}\n\n").as_bytes()));
        assert!(e.contains("66 bytes"), "{e}");
        let missing = dir.path().join("missing");
        let e = err(&missing);
        assert!(
            e.contains(&missing.display().to_string()) && e.contains("No such file"),
            "{e}"
        );
        // The key never shows in a debug print.
        let a = Anonymizer::new(&SAMPLE_KEY);
        assert!(!format!("{a:?}").contains("21"), "{a:?}");
    }
}
