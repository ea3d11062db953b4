//! Capture input end to end: the third-party captures in `shared/pcaps`
//! (counts and specifics checked against tshark 4.0.17), damaged files,
//! compressed files, byte orders and timestamp resolutions, several pcapng
//! interfaces and link types, and files written by our own writer.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Cursor;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};
use phalanx_common::{ipproto, tcp_opts, Direction, PacketMeta, RecordKind};
use phalanx_daemon::capture::file::{self, CaptureReader, FileError, ReaderStats};
use phalanx_daemon::capture::frame::{build_frame, PayloadMode, PcapngWriter};
use proptest::prelude::*;

/// Packet counts from tshark 4.0.17 (table in shared/pcaps/README.md).
const TSHARK_PACKETS: &[(&str, u64)] = &[
    ("cs_mail_sender_client_1.pcapng", 23),
    ("cs_mail_sender_server_2.pcapng", 38),
    ("cs_tcp_dupack.pcapng", 9),
    ("cs_tcp_retransmissions.pcapng", 6),
    ("cs_tcp_zerowindowdead.pcapng", 8),
    ("cs_tcp_zerowindowrecovery.pcapng", 7),
    ("sv_bug-3616-smtp_pmtud.pcap", 60),
    ("sv_bug-4376_syn_retransmit_vlan.pcap", 254),
    ("sv_http-body-hook-01_ipv6.pcap", 2007),
    ("zeek-tcprs_comp008.pcap", 3280),
    ("zeek_pppoe-over-qinq.pcap", 86),
    ("zeek_vlan-collisions.pcap", 42),
];

/// The vendored third-party captures (`tests/data/pcaps`).
fn pcaps_dir() -> PathBuf {
    phalanx_lab::data::pcaps()
}

fn pcap_path(name: &str) -> PathBuf {
    pcaps_dir().join(name)
}

fn raw(name: &str) -> Vec<u8> {
    let p = pcap_path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Reads a whole capture, which must be undamaged.
fn read_ok(reader: CaptureReader) -> (Vec<PacketMeta>, ReaderStats) {
    let (recs, stats, err) = drain(reader);
    if let Some(e) = err {
        panic!("expected a clean read, got: {e}");
    }
    (recs, stats)
}

fn read_file(name: &str) -> (Vec<PacketMeta>, ReaderStats) {
    let r = file::open(&pcap_path(name)).unwrap_or_else(|e| panic!("open {name}: {e}"));
    read_ok(r)
}

/// Drains a reader; an error, if any, must be the last item.
fn drain(reader: CaptureReader) -> (Vec<PacketMeta>, ReaderStats, Option<FileError>) {
    let mut reader = reader;
    let mut recs = Vec::new();
    let mut err = None;
    for item in reader.by_ref() {
        assert!(err.is_none(), "the reader must end after its one error");
        match item {
            Ok(m) => recs.push(m),
            Err(e) => err = Some(e),
        }
    }
    (recs, reader.stats(), err)
}

fn read_bytes(
    bytes: Vec<u8>,
) -> Result<(Vec<PacketMeta>, ReaderStats, Option<FileError>), FileError> {
    file::CaptureReader::from_reader_named(Cursor::new(bytes), "mem.pcap").map(drain)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Byte ranges of the records (pcap) or blocks (pcapng) of an undamaged
/// file, and whether each one is a packet; the pcap file header is skipped.
fn units(bytes: &[u8]) -> Vec<(usize, usize, bool)> {
    let u32_at = |at: usize, le: bool| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut out = Vec::new();
    if bytes[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        let le = bytes[8..12] == [0x4d, 0x3c, 0x2b, 0x1a];
        let mut at = 0;
        while at < bytes.len() {
            let ty = u32_at(at, le);
            let len = u32_at(at + 4, le) as usize;
            out.push((at, at + len, matches!(ty, 2 | 3 | 6)));
            at += len;
        }
    } else {
        let le = bytes[0] == 0xd4 || bytes[0] == 0x4d;
        let mut at = 24;
        while at < bytes.len() {
            let len = 16 + u32_at(at + 8, le) as usize;
            out.push((at, at + len, true));
            at += len;
        }
    }
    out
}

/// Fields that survive a trip through `build_frame` (lengths are re-derived,
/// the payload is zeros, and interface/direction come from the new file).
fn wire_fields(m: &PacketMeta) -> PacketMeta {
    let mut m = *m;
    m.ip_len = 0;
    m.wire_len = 0;
    m.payload_hash = 0;
    m.ifindex = 0;
    m.direction = 0;
    m
}

#[test]
fn every_shared_capture_reads_cleanly_with_tshark_packet_counts() {
    let mut on_disk: BTreeSet<String> = std::fs::read_dir(pcaps_dir())
        .unwrap_or_else(|e| panic!("vendored captures in tests/data/pcaps: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    for &(name, packets) in TSHARK_PACKETS {
        assert!(on_disk.remove(name), "{name} is listed but missing");
        let (recs, stats) = read_file(name);
        assert_eq!(stats.frames, packets, "{name}: frames vs tshark");
        assert_eq!(
            stats.records + stats.not_ip,
            packets,
            "{name}: records + non-IP vs tshark"
        );
        assert_eq!(stats.malformed, 0, "{name}: no damaged frames");
        assert_eq!(stats.unsupported_link, 0, "{name}: link type supported");
        assert_eq!(recs.len() as u64, stats.records);
        // Every shared capture is all IP (tshark: eth/vlan/pppoe -> ip/ipv6).
        assert_eq!(stats.not_ip, 0, "{name}");
        assert!(
            recs.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
            "{name}: records come in file order"
        );
    }
    assert!(
        on_disk.is_empty(),
        "captures without expected counts: {on_disk:?}"
    );
}

#[test]
fn timestamps_are_exact_nanoseconds() {
    // tshark frame.time_epoch of the first packets.
    let (recs, _) = read_file("cs_tcp_dupack.pcapng");
    assert_eq!(recs[0].ts_ns, 1_236_095_711_960_416_000);
    assert_eq!(recs[1].ts_ns, 1_236_095_711_960_606_000);
    let (recs, _) = read_file("sv_bug-3616-smtp_pmtud.pcap");
    assert_eq!(recs[0].ts_ns, 1_254_722_767_492_060_000);
}

#[test]
fn vlan_3136_tags_one_direction() {
    let (recs, _) = read_file("sv_bug-4376_syn_retransmit_vlan.pcap");
    let tagged: Vec<_> = recs.iter().filter(|m| m.vlan_count > 0).collect();
    assert_eq!(tagged.len(), 106, "tshark: 106 frames with vlan.id == 3136");
    for m in &tagged {
        assert_eq!((m.vlan_count, m.outer_vlan, m.inner_vlan), (1, 3136, 0));
        assert_eq!(
            m.src_ip(),
            ip("10.38.251.146"),
            "only the client's side is tagged"
        );
    }
    assert_eq!(recs.len() - tagged.len(), 148);
    let syn = &recs[0];
    assert_eq!(
        syn.tcp_opts,
        tcp_opts::MSS | tcp_opts::WSCALE | tcp_opts::SACK_PERM | tcp_opts::TIMESTAMPS
    );
    assert_eq!((syn.mss, syn.wscale, syn.tsval), (1460, 7, 87_113_330));
}

#[test]
fn pppoe_over_qinq() {
    let (recs, _) = read_file("zeek_pppoe-over-qinq.pcap");
    assert_eq!(recs.len(), 86);
    for m in &recs {
        assert_eq!((m.vlan_count, m.outer_vlan, m.inner_vlan), (2, 3704, 2474));
        assert_eq!(m.kind, RecordKind::Tcp as u8);
        assert_eq!(m.ip_version, 4);
    }
    // Six ACKs carry an IP total length of 46 in a PPPoE payload of 42: the
    // PPPoE length wins (as in tshark), so they carry no data. tshark: 48 frames with tcp.len > 0.
    assert_eq!(recs.iter().filter(|m| m.payload_len > 0).count(), 48);
    let ack = &recs[18];
    assert_eq!((ack.ip_len, ack.payload_len), (46, 0));
    assert_eq!(recs[0].src_ip(), ip("1.1.1.1"));
    assert_eq!(
        (recs[0].sport, recs[0].dport, recs[0].mss),
        (20394, 443, 1440)
    );
}

#[test]
fn pmtud_frag_needed_quotes_the_smtp_flow() {
    let (recs, _) = read_file("sv_bug-3616-smtp_pmtud.pcap");
    let errors: Vec<_> = recs
        .iter()
        .filter(|m| m.kind == RecordKind::IcmpError as u8)
        .collect();
    assert_eq!(errors.len(), 4, "tshark: 4 ICMP frag-needed");
    let quoted: Vec<u32> = errors.iter().map(|m| m.inner_seq).collect();
    assert_eq!(
        quoted,
        [2_126_795_847, 2_126_797_307, 2_126_798_767, 2_126_800_227]
    );
    for e in &errors {
        assert_eq!((e.icmp_type, e.icmp_code, e.icmp_mtu), (3, 4, 1492));
        assert_eq!(e.src_ip(), ip("192.168.1.1"));
        assert_eq!(e.inner_proto, ipproto::TCP);
        assert_eq!(&e.inner_src[..4], &[10, 10, 1, 4]);
        assert_eq!(&e.inner_dst[..4], &[74, 53, 140, 153]);
        assert_eq!((e.inner_sport, e.inner_dport), (1470, 25));
        // The quoted segment is one the client sent at 1460 bytes.
        let sent = recs
            .iter()
            .filter(|m| m.kind == RecordKind::Tcp as u8 && m.sport == 1470 && m.seq == e.inner_seq)
            .map(|m| m.payload_len)
            .collect::<Vec<_>>();
        assert_eq!(
            sent.first(),
            Some(&1460),
            "quoted seq {} was sent",
            e.inner_seq
        );
    }
    // The first refused segment is resent at 1452 bytes (1492 - 40).
    assert_eq!(recs[26].seq, 2_126_795_847);
    assert_eq!(recs[26].payload_len, 1452);
    let udp = recs
        .iter()
        .filter(|m| m.kind == RecordKind::Udp as u8)
        .count();
    assert_eq!(udp, 3, "two DNS and one NetBIOS datagram");
}

#[test]
fn ipv6_http_download() {
    let (recs, _) = read_file("sv_http-body-hook-01_ipv6.pcap");
    assert!(recs
        .iter()
        .all(|m| m.ip_version == 6 && m.kind == RecordKind::Tcp as u8));
    let server = ip("2001:41d0:1:9598::1");
    assert_eq!(
        recs.iter()
            .filter(|m| m.src_ip() == server && m.sport == 80)
            .count(),
        1242
    );
    assert_eq!(recs.iter().filter(|m| m.sport == 59525).count(), 765);
    assert_eq!((recs[0].mss, recs[0].wscale, recs[0].ip_len), (1420, 7, 80));
    assert_eq!(
        recs.iter()
            .filter(|m| m.tcp_opts & tcp_opts::TIMESTAMPS != 0)
            .count(),
        2007
    );
    assert_eq!(
        recs.iter().filter(|m| m.sack_count > 0).count(),
        73,
        "tshark: 73 frames with SACK blocks"
    );
}

#[test]
fn vlan_collisions_keep_tags_apart() {
    let (recs, _) = read_file("zeek_vlan-collisions.pcap");
    let count = |c, o, i| {
        recs.iter()
            .filter(|m| (m.vlan_count, m.outer_vlan, m.inner_vlan) == (c, o, i))
            .count()
    };
    assert_eq!(count(0, 0, 0), 14, "untagged copy");
    assert_eq!(count(1, 42, 0), 14, "VLAN 42 copy");
    assert_eq!(count(2, 10, 20), 14, "QinQ 10/20 copy");
    // The three copies are the same flow: identical 5-tuple sets.
    let tuples = |c: u8| {
        recs.iter()
            .filter(|m| m.vlan_count == c)
            .map(|m| (m.src_addr, m.dst_addr, m.sport, m.dport, m.seq))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(tuples(0), tuples(1));
    assert_eq!(tuples(1), tuples(2));
}

#[test]
fn zstd_compressed_captures_read_identically() {
    for &(name, _) in TSHARK_PACKETS {
        let plain = raw(name);
        let (want, _) = read_file(name);
        let packed = zstd::encode_all(Cursor::new(&plain), 3).expect("compress");
        let r = CaptureReader::from_reader_named(Cursor::new(packed.clone()), name).expect("open");
        assert!(r.is_compressed());
        let (got, _) = read_ok(r);
        assert_eq!(got, want, "{name}: same records through zstd");
        if name == "sv_bug-3616-smtp_pmtud.pcap" {
            // Detected by magic, not by the file name.
            let dir = tempfile::tempdir().expect("tempdir");
            for file_name in ["a.pcap.zst", "b.pcap"] {
                let path = dir.path().join(file_name);
                std::fs::write(&path, &packed).expect("write");
                let (got, _) = read_ok(file::open(&path).expect("open"));
                assert_eq!(got, want, "{file_name}");
            }
        }
    }
}

/// Cuts each file inside a record header and inside packet data: the
/// records before the cut are returned, then one error naming the offset.
#[test]
fn truncated_files_yield_records_up_to_the_damage() {
    for name in [
        "sv_bug-3616-smtp_pmtud.pcap",
        "cs_mail_sender_server_2.pcapng",
    ] {
        let bytes = raw(name);
        let (all, _) = read_file(name);
        let us = units(&bytes);
        let packets_before = |at: usize| us.iter().filter(|u| u.2 && u.1 <= at).count();
        for &(start, end, _) in us.iter().skip(3).step_by(7) {
            for cut in [start + 6, start + 17, end - 1] {
                let cut_bytes = bytes[..cut].to_vec();
                let (recs, _, err) = read_bytes(cut_bytes.clone()).expect("header intact");
                let n = packets_before(cut);
                assert_eq!(
                    recs,
                    all[..n],
                    "{name} cut at {cut}: records before the cut"
                );
                let err = err.unwrap_or_else(|| panic!("{name} cut at {cut}: error expected"));
                assert!(matches!(err, FileError::Truncated { .. }), "{err}");
                assert_eq!(
                    err.offset(),
                    Some(start as u64),
                    "{name}: offset of the cut unit"
                );
                let msg = err.to_string();
                assert!(
                    msg.contains("mem.pcap") && msg.contains(&format!("byte offset {start}")),
                    "message names file and offset: {msg}"
                );
                // The same through zstd: offsets count decompressed bytes.
                let packed = zstd::encode_all(Cursor::new(&cut_bytes), 1).expect("compress");
                let (zrecs, _, zerr) = read_bytes(packed).expect("header intact");
                assert_eq!(zrecs, recs);
                let zerr = zerr.expect("error through zstd too");
                assert_eq!(zerr.offset(), Some(start as u64));
                assert!(zerr.to_string().contains("decompressed"), "{zerr}");
            }
        }
        // A cut inside the file header fails at open.
        let err = read_bytes(bytes[..10].to_vec()).expect_err("cut header");
        assert_eq!(err.offset(), Some(0), "{err}");
    }
}

#[test]
fn truncated_compressed_stream_is_an_error_not_a_short_read() {
    // Large enough for several zstd blocks, so records come out before the cut.
    let name = "sv_http-body-hook-01_ipv6.pcap";
    let (all, _) = read_file(name);
    let packed = zstd::encode_all(Cursor::new(raw(name)), 3).expect("compress");
    let cut = packed[..packed.len() * 6 / 10].to_vec();
    let (recs, _, err) = read_bytes(cut).expect("header intact");
    assert!(
        !recs.is_empty() && recs.len() < all.len(),
        "{} records",
        recs.len()
    );
    assert_eq!(recs, all[..recs.len()]);
    let err = err.expect("a cut zstd stream must end with an error");
    assert!(err.offset().is_some_and(|o| o > 0), "{err}");
    assert!(err.to_string().contains("decompressed"), "{err}");

    // Cut before the first block completes: nothing decodes, the open fails.
    let small =
        zstd::encode_all(Cursor::new(raw("zeek_vlan-collisions.pcap")), 3).expect("compress");
    let err = read_bytes(small[..small.len() / 2].to_vec()).expect_err("nothing decodes");
    assert!(matches!(err, FileError::Read { .. }), "{err}");
}

#[test]
fn corrupt_length_fields_are_reported_at_their_offset() {
    // pcap: a record claiming 4 GB of data.
    let mut bytes = raw("sv_bug-3616-smtp_pmtud.pcap");
    let us = units(&bytes);
    let (all, _) = read_file("sv_bug-3616-smtp_pmtud.pcap");
    let (start, _, _) = us[10];
    bytes[start + 8..start + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let (recs, _, err) = read_bytes(bytes).expect("header intact");
    assert_eq!(recs, all[..10]);
    let err = err.expect("corruption reported");
    assert!(matches!(err, FileError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("captured length 4294967280"),
        "{err}"
    );
    assert_eq!(err.offset(), Some(start as u64), "{err}");

    // pcapng: a block claiming 1 GB.
    let mut bytes = raw("cs_tcp_dupack.pcapng");
    let us = units(&bytes);
    let (start, _, _) = *us.iter().filter(|u| u.2).nth(4).expect("fifth packet");
    bytes[start + 4..start + 8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let (recs, _, err) = read_bytes(bytes).expect("header intact");
    assert_eq!(recs.len(), 4);
    let err = err.expect("corruption reported");
    assert!(matches!(err, FileError::Corrupt { .. }), "{err}");
    assert_eq!(err.offset(), Some(start as u64), "{err}");

    // pcapng: a block whose trailing length differs from its leading one.
    let mut bytes = raw("cs_mail_sender_server_2.pcapng");
    let us = units(&bytes);
    let (all, _) = read_file("cs_mail_sender_server_2.pcapng");
    let (k, &(start, end, _)) = us
        .iter()
        .enumerate()
        .filter(|(_, u)| u.2)
        .nth(5)
        .expect("sixth packet");
    bytes[end - 4] ^= 0x40;
    let (recs, _, err) = read_bytes(bytes).expect("header intact");
    assert_eq!(recs, all[..5], "packets before block {k}");
    let err = err.expect("corruption reported");
    assert!(matches!(err, FileError::Corrupt { .. }), "{err}");
    assert_eq!(err.offset(), Some(start as u64), "{err}");

    // pcapng: a packet for an interface that was never declared.
    let mut bytes = raw("cs_tcp_dupack.pcapng");
    let us = units(&bytes);
    let (start, _, _) = *us.iter().filter(|u| u.2).nth(2).expect("third packet");
    bytes[start + 8] = 9;
    let (recs, _, err) = read_bytes(bytes).expect("header intact");
    assert_eq!(recs.len(), 2);
    let err = err.expect("corruption reported");
    assert!(err.to_string().contains("undeclared interface 9"), "{err}");
    assert_eq!(err.offset(), Some(start as u64));
}

/// Rewrites a little-endian microsecond pcap as big-endian and/or nanosecond.
fn convert_pcap(bytes: &[u8], big: bool, nanos: bool) -> Vec<u8> {
    let rd = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let wr = |v: u32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&wr(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
    let ver = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    for v in [ver(4), ver(6)] {
        out.extend_from_slice(&if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        });
    }
    for at in [8, 12, 16, 20] {
        out.extend_from_slice(&wr(rd(at)));
    }
    let mut at = 24;
    while at < bytes.len() {
        let incl = rd(at + 8) as usize;
        let frac = if nanos { rd(at + 4) * 1000 } else { rd(at + 4) };
        for v in [rd(at), frac, rd(at + 8), rd(at + 12)] {
            out.extend_from_slice(&wr(v));
        }
        out.extend_from_slice(&bytes[at + 16..at + 16 + incl]);
        at += 16 + incl;
    }
    out
}

#[test]
fn pcap_byte_orders_and_resolutions_agree() {
    let name = "sv_bug-3616-smtp_pmtud.pcap";
    let bytes = raw(name);
    assert_eq!(bytes[0], 0xd4, "the original is little-endian microseconds");
    let (want, _) = read_file(name);
    for (big, nanos) in [(true, false), (false, true), (true, true)] {
        let (got, _, err) = read_bytes(convert_pcap(&bytes, big, nanos)).expect("open");
        assert!(err.is_none(), "big={big} nanos={nanos}: {err:?}");
        assert_eq!(got, want, "big={big} nanos={nanos}");
    }
}

/// One big-endian pcapng section with three interfaces of different link
/// types and timestamp resolutions, EPB direction flags and an SPB.
#[test]
fn pcapng_interfaces_link_types_and_resolutions() {
    let (recs, _) = read_file("sv_bug-3616-smtp_pmtud.pcap");
    let tcp = recs
        .iter()
        .find(|m| m.kind == RecordKind::Tcp as u8 && m.payload_len > 0)
        .expect("a data segment");
    let eth = build_frame(tcp, PayloadMode::Zeroed);
    let ip_only = eth[14..].to_vec();
    let mut sll = vec![0u8; 16];
    sll[0..2].copy_from_slice(&4u16.to_be_bytes()); // outgoing
    sll[2..4].copy_from_slice(&1u16.to_be_bytes());
    sll[14..16].copy_from_slice(&0x0800u16.to_be_bytes());
    sll.extend_from_slice(&ip_only);
    let mut arp = vec![0xffu8; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);

    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Big).expect("shb");
    let idb = |link: DataLink, resol: Option<u8>| InterfaceDescriptionBlock {
        linktype: link,
        snaplen: 0,
        options: resol
            .map(|r| vec![InterfaceDescriptionOption::IfTsResol(r)])
            .unwrap_or_default(),
    };
    w.write_pcapng_block(idb(DataLink::ETHERNET, None))
        .expect("idb0");
    w.write_pcapng_block(idb(DataLink::RAW, Some(9)))
        .expect("idb1");
    w.write_pcapng_block(idb(DataLink::LINUX_SLL, Some(0x80 | 20)))
        .expect("idb2");
    w.write_pcapng_block(idb(DataLink::from(147), None))
        .expect("idb3");
    let epb = |iface: u32, ticks: u64, data: &[u8], flags: Option<u32>| EnhancedPacketBlock {
        interface_id: iface,
        timestamp: Duration::from_nanos(ticks),
        original_len: data.len() as u32,
        data: Cow::Owned(data.to_vec()),
        options: flags
            .map(|f| vec![EnhancedPacketOption::Flags(f)])
            .unwrap_or_default(),
    };
    // 1.5 s in microseconds, nanoseconds and 2^-20 s units.
    w.write_pcapng_block(epb(0, 1_500_000, &eth, Some(1)))
        .expect("epb");
    w.write_pcapng_block(epb(1, 1_500_000_000, &ip_only, Some(2)))
        .expect("epb");
    w.write_pcapng_block(epb(2, 3 << 19, &sll, None))
        .expect("epb");
    w.write_pcapng_block(epb(0, 1, &arp, None)).expect("epb");
    w.write_pcapng_block(epb(3, 1, &eth, None)).expect("epb");
    w.write_pcapng_block(SimplePacketBlock {
        original_len: eth.len() as u32,
        data: Cow::Owned(eth.clone()),
    })
    .expect("spb");

    let (got, stats, err) = read_bytes(w.into_inner()).expect("open");
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        stats,
        ReaderStats {
            frames: 6,
            records: 4,
            not_ip: 1,
            malformed: 0,
            unsupported_link: 1
        }
    );
    let expect = [
        (0, 1_500_000_000, Direction::Ingress),
        (1, 1_500_000_000, Direction::Egress),
        (2, 1_500_000_000, Direction::Egress),
        (0, 0, Direction::Unknown),
    ];
    for (m, (iface, ts, dir)) in got.iter().zip(expect) {
        assert_eq!((m.ifindex, m.ts_ns, m.direction), (iface, ts, dir as u8));
        assert_eq!(
            wire_fields(m),
            wire_fields(&PacketMeta { ts_ns: ts, ..*tcp })
        );
    }
}

/// Every shared capture re-encoded through our pcapng writer (two named
/// interfaces, comments, full and headers-only) reads back to the same
/// wire fields.
#[test]
fn writer_round_trips_every_shared_capture() {
    for &(name, _) in TSHARK_PACKETS {
        let (recs, _) = read_file(name);
        for mode in [PayloadMode::Zeroed, PayloadMode::HeadersOnly] {
            let mut w = PcapngWriter::new(Vec::new()).expect("shb");
            let a = w.add_interface("hop-a").expect("idb");
            let b = w.add_interface("hop-b").expect("idb");
            for (i, m) in recs.iter().enumerate() {
                let iface = if i % 2 == 0 { a } else { b };
                let note = format!("record {i}");
                let comment = (i % 3 == 0).then_some(note.as_str());
                w.write_record(iface, m, mode, comment).expect("write");
            }
            let (got, stats, err) = read_bytes(w.into_inner()).expect("open");
            assert!(err.is_none(), "{name}: {err:?}");
            assert_eq!(stats.records, recs.len() as u64);
            for (i, (g, m)) in got.iter().zip(&recs).enumerate() {
                assert_eq!(
                    wire_fields(g),
                    wire_fields(m),
                    "{name} record {i} ({mode:?})"
                );
                assert_eq!(g.ifindex, (i % 2) as u32);
                assert!(g.wire_len >= m.wire_len, "original length kept");
            }
        }
    }
}

fn mutate(
    mut bytes: Vec<u8>,
    flips: &[(usize, u8)],
    cut: Option<usize>,
    insert: Option<(usize, Vec<u8>)>,
) -> Vec<u8> {
    let len = bytes.len();
    for &(at, v) in flips {
        bytes[at % len] = v;
    }
    if let Some((at, chunk)) = insert {
        let at = at % bytes.len();
        bytes.splice(at..at, chunk);
    }
    if let Some(c) = cut {
        bytes.truncate(c % (bytes.len() + 1));
    }
    bytes
}

const SMALL: &[&str] = &[
    "cs_mail_sender_client_1.pcapng",
    "cs_tcp_dupack.pcapng",
    "cs_tcp_zerowindowdead.pcapng",
    "sv_bug-3616-smtp_pmtud.pcap",
    "zeek_vlan-collisions.pcap",
    "zeek_pppoe-over-qinq.pcap",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Damaged real files never panic the reader; it ends with at most one error.
    #[test]
    fn mutated_real_files_never_panic(
        which in 0..SMALL.len(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..24),
        cut in proptest::option::of(any::<usize>()),
        insert in proptest::option::of((any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64))),
        compress in any::<bool>(),
    ) {
        let mut bytes = mutate(raw(SMALL[which]), &flips, cut, insert);
        if compress {
            bytes = zstd::encode_all(Cursor::new(bytes), 1).expect("compress");
        }
        if let Ok((recs, stats, _err)) = read_bytes(bytes) {
            prop_assert_eq!(recs.len() as u64, stats.records);
            prop_assert!(stats.records + stats.not_ip + stats.malformed + stats.unsupported_link <= stats.frames);
        }
    }

    /// A cut anywhere gives exactly the records that end before the cut.
    #[test]
    fn any_cut_gives_a_prefix(which in 0..SMALL.len(), cut in any::<usize>()) {
        let bytes = raw(SMALL[which]);
        let (all, _) = read_file(SMALL[which]);
        let us = units(&bytes);
        let cut = 24 + cut % (bytes.len() - 23);
        let n = us.iter().filter(|u| u.2 && u.1 <= cut).count();
        match read_bytes(bytes[..cut].to_vec()) {
            Ok((recs, _, err)) => {
                prop_assert_eq!(&recs[..], &all[..n]);
                let at_boundary = us.first().is_some_and(|u| u.0 == cut) || us.iter().any(|u| u.1 == cut);
                prop_assert_eq!(err.is_none(), at_boundary, "error iff the cut splits a unit");
            }
            Err(e) => {
                // Only a pcapng section header can be cut before any record.
                prop_assert_eq!(e.offset(), Some(0));
            }
        }
    }
}

#[test]
fn not_a_capture_is_rejected_with_the_file_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let err = file::open(&path).expect_err("a TOML file is no capture");
    assert!(err.to_string().contains("Cargo.toml"), "{err}");
    let err = file::open(Path::new("/nonexistent/x.pcap")).expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/x.pcap"), "{err}");
}
