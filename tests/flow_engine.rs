//! Flow engine against synthetic conversations with exactly known truth.

use std::net::IpAddr;

use phalanx_common::{ipproto, tcp_flags as tf, tcp_opts, PacketMeta, RecordKind};
use phalanx_daemon::analyze::{analyze_files, analyze_records, Report};
use phalanx_daemon::capture::frame::PayloadMode;
use phalanx_daemon::flow::{Flow, FlowConfig, FlowSummary, FlowTable};
use phalanx_daemon::synth::{self, DataDir, FlowTruth, TcpScenario};
use proptest::prelude::*;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn only_flow(r: &Report) -> &FlowSummary {
    assert_eq!(
        r.flows.len(),
        1,
        "expected exactly one flow, got {:#?}",
        r.flows
    );
    &r.flows[0]
}

/// Every count the generator knows must match exactly.
fn assert_counts(f: &FlowSummary, t: &FlowTruth) {
    let ctx = format!("flow {}:{} -> {}:{}", f.src, f.sport, f.dst, f.dport);
    assert_eq!(f.packets, t.packets, "{ctx}: packets");
    assert_eq!(f.bytes, t.bytes, "{ctx}: bytes");
    assert_eq!(f.goodput_bytes, t.goodput_bytes, "{ctx}: goodput");
    assert_eq!(
        f.retransmissions, t.retransmissions,
        "{ctx}: retransmissions"
    );
    assert_eq!(
        f.retrans_fast, t.retrans_fast,
        "{ctx}: fast retransmissions"
    );
    assert_eq!(
        f.retrans_timeout, t.retrans_timeout,
        "{ctx}: timeout retransmissions"
    );
    assert_eq!(f.retrans_spurious, 0, "{ctx}: no spurious retransmissions");
    assert_eq!(f.late_fills, t.late_fills, "{ctx}: late hole fills");
    assert_eq!(f.out_of_order, t.out_of_order, "{ctx}: out of order");
    assert_eq!(
        f.reorder_extent_max, t.reorder_extent_max,
        "{ctx}: reorder extent"
    );
    assert_eq!(f.dup_acks, t.dup_acks, "{ctx}: dup ACKs");
    assert_eq!(f.zero_windows, t.zero_windows, "{ctx}: zero windows");
    assert_eq!(f.window_full, 0, "{ctx}: window never full");
    assert_eq!(f.state, "closed", "{ctx}: closed by FIN both ways");
    let (c, s) = (t.client.expect("client"), t.server.expect("server"));
    assert_eq!(
        (f.src, f.sport, f.dst, f.dport),
        (c.0, c.1, s.0, s.1),
        "{ctx}: orientation"
    );
}

fn assert_handshake(f: &FlowSummary, t: &FlowTruth) {
    let h = f.handshake.expect("handshake seen");
    assert_eq!(
        h.downstream_ms,
        Some(ms(t.handshake_down_ns)),
        "SYN -> SYN/ACK"
    );
    assert_eq!(h.upstream_ms, Some(ms(t.handshake_up_ns)), "SYN/ACK -> ACK");
    assert_eq!(
        h.total_ms,
        Some(ms(t.handshake_down_ns + t.handshake_up_ns))
    );
}

fn run(sc: &TcpScenario) -> (Report, FlowTruth) {
    let g = synth::tcp_conversation(sc);
    let r = analyze_records(g.records, &FlowConfig::default());
    (r, g.truth[0].clone())
}

#[test]
fn clean_upload_with_timestamps_gives_exact_rtt() {
    let sc = TcpScenario::default();
    let (r, t) = run(&sc);
    let f = only_flow(&r);
    assert_counts(f, &t);
    assert_handshake(f, &t);
    let full = ms(sc.client_rtt_ns + sc.server_rtt_ns);
    // Every sample of each direction is exactly its part of the round trip.
    assert_eq!(f.src_to_dst.rtt.min_ms, Some(ms(sc.server_rtt_ns)));
    assert_eq!(f.src_to_dst.rtt.max_ms, Some(ms(sc.server_rtt_ns)));
    assert_eq!(f.dst_to_src.rtt.min_ms, Some(ms(sc.client_rtt_ns)));
    assert_eq!(f.dst_to_src.rtt.max_ms, Some(ms(sc.client_rtt_ns)));
    for v in [
        f.rtt.min_ms,
        f.rtt.avg_ms,
        f.rtt.p50_ms,
        f.rtt.p99_ms,
        f.rtt.max_ms,
    ] {
        assert_eq!(v, Some(full), "end-to-end RTT = both parts: {:?}", f.rtt);
    }
    assert!(
        f.rtt.samples >= 10,
        "several samples per direction: {:?}",
        f.rtt
    );
    assert_eq!(f.jitter_ms, Some(0.0), "constant RTT has no jitter");
    // The option: 1448-byte segments plus 12 bytes of timestamps.
    assert_eq!(f.mss.src, Some(1460));
    assert_eq!(f.mss.dst, Some(1460));
    assert_eq!(f.wscale.src, Some(7));
    assert!(f.timestamps && f.sack_permitted);
    assert_eq!(f.src_to_dst.packets, t.sender_packets);
}

#[test]
fn download_without_timestamps_ipv6_vlan_uses_karn_and_handshake() {
    let sc = TcpScenario {
        client: ("2001:db8::1".parse().expect("v6"), 50000),
        server: ("2001:db8::2".parse().expect("v6"), 443),
        vlan: (100, 7),
        data: DataDir::Download,
        timestamps: false,
        client_rtt_ns: 3_250_000,
        server_rtt_ns: 1_500_000,
        ..TcpScenario::default()
    };
    let (r, t) = run(&sc);
    let f = only_flow(&r);
    assert_counts(f, &t);
    assert_handshake(f, &t);
    assert_eq!(f.vlan, [100, 7]);
    assert_eq!(f.proto, "tcp");
    // Data direction (server -> client): every seq/ack sample is V <-> client.
    let d = &f.dst_to_src.rtt;
    assert_eq!((d.min_ms, d.max_ms), (Some(3.25), Some(3.25)), "{d:?}");
    // The client sends no data: its samples are the SYN and its FIN
    // (V <-> server), both exact.
    let c = &f.src_to_dst.rtt;
    assert_eq!(
        (c.samples, c.min_ms, c.max_ms),
        (2, Some(1.5), Some(1.5)),
        "{c:?}"
    );
    assert_eq!(f.rtt.min_ms, Some(4.75));
    assert_eq!(f.rtt.max_ms, Some(4.75));
    assert!(!f.timestamps);
}

#[test]
fn drops_before_the_vantage_point_are_late_fills_not_reordering() {
    for ts in [true, false] {
        let sc = TcpScenario {
            drop_before: vec![20, 55],
            timestamps: ts,
            ..TcpScenario::default()
        };
        let (r, t) = run(&sc);
        let f = only_flow(&r);
        assert_eq!((t.retransmissions, t.late_fills, t.retrans_fast), (2, 2, 2));
        assert_counts(f, &t);
        assert_eq!(f.out_of_order, 0, "a late fill is not reordering (ts {ts})");
        // The minimum is unaffected by recovery.
        assert_eq!(f.rtt.min_ms, Some(10.0), "ts {ts}");
    }
}

#[test]
fn drops_after_the_vantage_point_are_fast_retransmissions() {
    for sack in [true, false] {
        let sc = TcpScenario {
            drop_after: vec![3, 41, 77],
            sack,
            ..TcpScenario::default()
        };
        let (r, t) = run(&sc);
        let f = only_flow(&r);
        assert_eq!((t.retransmissions, t.retrans_fast, t.late_fills), (3, 3, 0));
        assert_counts(f, &t);
        assert_eq!(f.src_to_dst.retrans_bytes, 3 * 1448);
    }
}

#[test]
fn reordering_by_k_positions_is_out_of_order_with_extent_k() {
    for k in [1, 2] {
        let sc = TcpScenario {
            reorder: vec![(31, k)],
            ..TcpScenario::default()
        };
        let (r, t) = run(&sc);
        let f = only_flow(&r);
        assert_eq!(
            (t.out_of_order, t.reorder_extent_max, t.dup_acks),
            (1, k, k)
        );
        assert_counts(f, &t);
        assert_eq!(f.retransmissions, 0, "reordering is not loss (k {k})");
    }
}

#[test]
fn tail_drop_is_a_timeout_retransmission() {
    let sc = TcpScenario {
        drop_after: vec![99],
        ..TcpScenario::default()
    };
    let (r, t) = run(&sc);
    let f = only_flow(&r);
    assert_eq!((t.retrans_timeout, t.retrans_fast), (1, 0));
    assert_counts(f, &t);
}

#[test]
fn zero_window_episode_is_counted_once() {
    let sc = TcpScenario {
        zero_window: Some((45, 50_000_000)),
        ..TcpScenario::default()
    };
    let (r, t) = run(&sc);
    let f = only_flow(&r);
    assert_eq!(t.zero_windows, 1);
    assert_counts(f, &t);
    assert_eq!(f.dst_to_src.zero_window_packets, 1);
}

#[test]
fn many_flows_match_their_truth() {
    let g = synth::many_flows(&synth::ManyFlows {
        flows: 300,
        packets: 60_000,
        loss: 0.01,
        seed: 7,
        ..Default::default()
    });
    let r = analyze_records(g.records.iter().copied(), &FlowConfig::default());
    assert_eq!(r.flows.len(), g.truth.len(), "one flow per conversation");
    let mut lost = 0;
    for t in &g.truth {
        let c = t.client.expect("client");
        let f = r
            .flows
            .iter()
            .find(|f| f.src == c.0 && f.sport == c.1)
            .unwrap_or_else(|| panic!("flow of {c:?} missing"));
        assert_counts(f, t);
        lost += t.retransmissions;
    }
    assert!(lost > 50, "the scenario has losses ({lost})");
}

#[test]
fn capture_file_round_trip_gives_the_same_figures() {
    let sc = TcpScenario {
        drop_before: vec![12],
        drop_after: vec![60],
        reorder: vec![(33, 2)],
        vlan: (42, 0),
        ..TcpScenario::default()
    };
    let g = synth::tcp_conversation(&sc);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scenario.pcapng");
    let file = std::fs::File::create(&path).expect("create");
    synth::write_pcapng(
        &g.records,
        std::io::BufWriter::new(file),
        PayloadMode::HeadersOnly,
    )
    .expect("write pcapng");
    let from_file =
        analyze_files(std::slice::from_ref(&path), &FlowConfig::default()).expect("read back");
    let from_mem = analyze_records(g.records, &FlowConfig::default());
    let (a, b) = (only_flow(&from_file), only_flow(&from_mem));
    assert_counts(a, &g.truth[0]);
    assert_eq!(a, b, "file and memory must agree");
    assert_eq!(from_file.inputs[0].error, None);
}

#[test]
fn many_flows_match_their_truth_at_high_loss() {
    // 3% loss puts several losses in one recovery: partial ACKs, losses of
    // the highest segment sent, recoveries ending in a timeout.
    let mut lost = 0;
    for seed in 1..=20u64 {
        let g = synth::many_flows(&synth::ManyFlows {
            flows: 150,
            packets: 30_000,
            loss: 0.03,
            seed,
            ..Default::default()
        });
        let r = analyze_records(g.records.iter().copied(), &FlowConfig::default());
        assert_eq!(r.flows.len(), g.truth.len(), "seed {seed}: one flow each");
        for t in &g.truth {
            let c = t.client.expect("client");
            let f = r
                .flows
                .iter()
                .find(|f| f.src == c.0 && f.sport == c.1)
                .unwrap_or_else(|| panic!("seed {seed}: flow of {c:?} missing"));
            assert_counts(f, t);
            lost += t.retransmissions;
        }
    }
    assert!(lost > 2000, "the scenarios have losses ({lost})");
}

#[test]
fn random_scenarios_match_their_truth() {
    let mut rng = synth::XorShift::new(99);
    let (mut fast, mut timeout) = (0, 0);
    for k in 0..300 {
        let mut sc = TcpScenario {
            sack: rng.chance(0.5),
            timestamps: rng.chance(0.5),
            data: if rng.chance(0.5) {
                DataDir::Upload
            } else {
                DataDir::Download
            },
            client_rtt_ns: 200_000 + rng.below(30_000_000),
            server_rtt_ns: 200_000 + rng.below(50_000_000),
            // Below 90 segments: the generator's sender ignores the
            // receiver's window (1024 << 7 bytes), so none may be outstanding.
            segments: 30 + rng.below(60) as u32,
            window: 4 + rng.below(20) as u32,
            ..TcpScenario::default()
        };
        let loss = [0.01, 0.03, 0.08][k % 3];
        for i in 0..sc.segments {
            if rng.chance(loss) {
                if rng.chance(0.5) {
                    sc.drop_before.push(i);
                } else {
                    sc.drop_after.push(i);
                }
            }
        }
        let (r, t) = run(&sc);
        assert_counts(only_flow(&r), &t);
        fast += t.retrans_fast;
        timeout += t.retrans_timeout;
    }
    assert!(
        fast > 500 && timeout > 20,
        "both classes exercised ({fast} fast, {timeout} timeout)"
    );
}

fn ip4(d: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[192, 0, 2, d]);
    a
}

fn tcp(ts: u64, src: u8, dst: u8, sport: u16, dport: u16, flags: u8) -> PacketMeta {
    let mut m = PacketMeta::zeroed();
    m.ts_ns = ts;
    m.kind = RecordKind::Tcp as u8;
    m.ip_version = 4;
    m.l4_proto = ipproto::TCP;
    m.src_addr = ip4(src);
    m.dst_addr = ip4(dst);
    m.sport = sport;
    m.dport = dport;
    m.tcp_flags = flags;
    m.window = 1000;
    m.wire_len = 60;
    m
}

#[test]
fn vlans_split_flows_but_one_way_tagging_does_not() {
    let mut recs = Vec::new();
    for (i, vlan) in [0u16, 42, 43].into_iter().enumerate() {
        let mut m = tcp(i as u64, 1, 2, 1000, 80, tf::SYN);
        m.outer_vlan = vlan;
        recs.push(m);
        let mut m = tcp(10 + i as u64, 2, 1, 80, 1000, tf::SYN | tf::ACK);
        m.outer_vlan = vlan;
        recs.push(m);
    }
    let r = analyze_records(recs, &FlowConfig::default());
    assert_eq!(r.flows.len(), 3, "same 5-tuple on three VLANs");
    assert!(r
        .flows
        .iter()
        .all(|f| f.packets == 2 && f.state == "syn_received"));

    // Tagged one way only (a SPAN port that tags ingress): still one flow.
    let mut syn = tcp(0, 1, 2, 1000, 80, tf::SYN);
    syn.outer_vlan = 3136;
    let mut synack = tcp(5_000, 2, 1, 80, 1000, tf::SYN | tf::ACK);
    synack.ack = 1;
    let r = analyze_records([syn, synack], &FlowConfig::default());
    let f = only_flow(&r);
    assert_eq!(f.vlan, [3136, 0]);
    assert_eq!(f.dst_to_src.vlan, [0, 0]);
    assert_eq!(f.handshake.and_then(|h| h.downstream_ms), Some(0.005));
}

#[test]
fn table_is_bounded_and_expires_on_record_time() {
    let cfg = FlowConfig {
        max_flows: 3,
        syn_timeout_secs: 1,
        ..FlowConfig::default()
    };
    let mut t = FlowTable::new(cfg);
    for i in 0..5u16 {
        t.ingest(&tcp(u64::from(i), 1, 2, 1000 + i, 80, tf::SYN));
    }
    assert_eq!(t.len(), 3, "never more than max_flows");
    assert_eq!(t.stats().flows_evicted_full, 2, "oldest two evicted");
    let ports: Vec<u16> = t.snapshot().iter().map(|f| f.sport).collect();
    assert!(
        !ports.contains(&1000) && !ports.contains(&1001),
        "{ports:?}"
    );
    // Virtual time: a record 2 s later expires the SYN-state flows.
    t.ingest(&tcp(2_000_000_100, 3, 4, 5, 6, tf::ACK));
    assert_eq!(t.len(), 1, "only the new flow remains");
    assert_eq!(t.stats().flows_expired, 3);
    assert_eq!(t.expire(u64::MAX), 1);
    assert!(t.is_empty());
}

#[test]
fn an_idle_table_expires_when_its_clock_is_advanced() {
    // A live link gone quiet: no record comes to move the clock, the
    // daemon's record clock does. It never moves the clock back.
    let cfg = FlowConfig {
        syn_timeout_secs: 1,
        ..FlowConfig::default()
    };
    let mut t = FlowTable::new(cfg);
    t.ingest(&tcp(5_000_000_000, 1, 2, 1000, 80, tf::SYN));
    t.advance(4_000_000_000);
    assert_eq!((t.len(), t.now()), (1, 5_000_000_000), "never back");
    t.advance(5_900_000_000);
    assert_eq!(t.len(), 1, "idle 0.9 s of a 1 s timeout");
    t.advance(6_000_000_000);
    assert_eq!((t.len(), t.stats().flows_expired), (0, 1));
    assert_eq!(t.now(), 6_000_000_000);
}

#[test]
fn a_flow_seen_again_after_eviction_is_counted_in_a_new_flow() {
    // One slot: each new 5-tuple evicts the other and reuses its slot, so
    // nothing remembered about where a key lived may outlast its flow.
    let cfg = FlowConfig {
        max_flows: 1,
        ..FlowConfig::default()
    };
    let mut t = FlowTable::new(cfg);
    let a = |ts| tcp(ts, 1, 2, 1000, 80, tf::ACK);
    let b = |ts| tcp(ts, 3, 4, 2000, 80, tf::ACK);
    t.ingest(&a(1));
    t.ingest(&a(2));
    t.ingest(&b(3));
    t.ingest(&a(4));
    let flows = t.snapshot();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        flows[0].sport, 1000,
        "the last record's flow holds the slot"
    );
    assert_eq!(flows[0].packets, 1, "a fresh flow: one packet");
    assert_eq!(t.stats().flows_evicted_full, 2);
    assert_eq!(t.stats().flows_created, 3);
}

#[test]
fn a_syn_retried_on_linux_backoff_is_one_attempt() {
    // Linux (tcp_syn_retries = 6) re-sends an unanswered SYN 1, 3, 7, 15,
    // 31 and 63 s after the first: its last gap, 32 s, is longer than the
    // handshake timeout (30 s), so the attempt used to expire and come back
    // as a second flow with fewer retransmissions and a second finding.
    let t0 = 1_000_000_000_u64;
    let recs: Vec<PacketMeta> = [0_u64, 1, 3, 7, 15, 31, 63]
        .iter()
        .map(|s| {
            let mut m = tcp(t0 + s * 1_000_000_000, 1, 2, 40000, 443, tf::SYN);
            m.seq = 0x1234_5678;
            m
        })
        .collect();
    let r = analyze_records(recs.clone(), &FlowConfig::default());
    let f = only_flow(&r);
    assert_eq!(f.packets, 7, "one flow holds every SYN");
    assert_eq!(f.src_to_dst.retransmissions, 6, "every re-sent SYN counted");
    assert_eq!(f.state, "syn_sent");
    let unanswered: Vec<_> = r
        .findings
        .iter()
        .filter(|x| x.rule == "syn_unanswered")
        .collect();
    assert_eq!(
        unanswered.len(),
        1,
        "one attempt, one finding: {unanswered:?}"
    );

    // A flow whose SYN was never re-sent still leaves after the handshake
    // timeout, and a retried one after flows.syn_retry_timeout_secs.
    let mut t = FlowTable::new(FlowConfig::default());
    t.ingest(&recs[0]);
    t.ingest(&tcp(t0 + 31_000_000_000, 3, 4, 5, 6, tf::ACK));
    assert_eq!(t.stats().flows_expired, 1, "a lone SYN expires after 30 s");
    let mut t = FlowTable::new(FlowConfig::default());
    for m in &recs {
        t.ingest(m);
    }
    let after = |s: u64| tcp(t0 + (63 + s) * 1_000_000_000, 3, 4, 5, 6, tf::ACK);
    t.ingest(&after(129));
    assert_eq!(t.stats().flows_expired, 0, "within the retry timeout");
    t.ingest(&after(131));
    assert_eq!(t.stats().flows_expired, 1, "gone 130 s after its last SYN");
}

#[test]
fn a_super_frame_in_a_file_counts_as_the_segments_the_ring_reports() {
    // A host with TSO/GRO: tcpdump writes a 10-segment frame as one, where
    // the ring's record says segs = 10. One definition for both sources:
    // the receiver's MSS (1448, from its SYN/ACK) divides the payload.
    let t0 = 1_000_000_000_u64;
    let mut syn = tcp(t0, 1, 2, 40000, 80, tf::SYN);
    (syn.seq, syn.tcp_opts, syn.mss) = (100, tcp_opts::MSS, 1460);
    let mut synack = tcp(t0 + 1_000_000, 2, 1, 80, 40000, tf::SYN | tf::ACK);
    (synack.seq, synack.ack) = (5000, 101);
    (synack.tcp_opts, synack.mss) = (tcp_opts::MSS, 1448);
    let mut ack = tcp(t0 + 2_000_000, 1, 2, 40000, 80, tf::ACK);
    (ack.seq, ack.ack) = (101, 5001);
    let mut data = tcp(t0 + 3_000_000, 1, 2, 40000, 80, tf::ACK | tf::PSH);
    (data.seq, data.ack, data.payload_len) = (101, 5001, 14_480);
    data.wire_len = 14_480 + 54;
    let mut again = data;
    again.ts_ns += 300_000_000;
    let mut acked = tcp(t0 + 400_000_000, 2, 1, 80, 40000, tf::ACK);
    (acked.seq, acked.ack) = (5001, 101 + 14_480);
    let file = vec![syn, synack, ack, data, again, acked];
    let ring: Vec<PacketMeta> = file
        .iter()
        .map(|m| {
            let mut m = *m;
            if m.payload_len > 1448 {
                (m.segs, m.gso_size) = (10, 1448);
            }
            m
        })
        .collect();
    let from_file = analyze_records(file, &FlowConfig::default());
    let from_ring = analyze_records(ring, &FlowConfig::default());
    let f = only_flow(&from_file);
    assert_eq!(f.src_to_dst.packets, 22, "SYN, ACK and twice 10 segments");
    assert_eq!(f.src_to_dst.bytes, 60 * 2 + 2 * (14_480 + 10 * 54));
    assert_eq!(
        f.src_to_dst.retransmissions, 10,
        "the re-sent frame is 10 segments"
    );
    assert_eq!(
        serde_json::to_value(&from_file.flows).expect("json"),
        serde_json::to_value(&from_ring.flows).expect("json"),
        "a file and the ring give the same figures for the same packets"
    );
}

#[test]
fn a_super_frame_with_timestamps_is_cut_at_the_mss_less_the_options() {
    // Linux with timestamps sends 1448-byte segments to an MSS of 1460
    // (12 bytes of options in each): a 63,812-byte frame is 44 full
    // segments and a 100-byte one, 45 where the ring says gso_segs = 45
    // (dividing by the MSS option would say 44).
    let t0 = 1_000_000_000_u64;
    let stamped = |mut m: PacketMeta| {
        m.tcp_opts |= tcp_opts::TIMESTAMPS;
        (m.tsval, m.tsecr) = (7, 9);
        m
    };
    let mut syn = stamped(tcp(t0, 1, 2, 40000, 80, tf::SYN));
    (syn.seq, syn.mss) = (100, 1460);
    syn.tcp_opts |= tcp_opts::MSS;
    let mut synack = stamped(tcp(t0 + 1_000_000, 2, 1, 80, 40000, tf::SYN | tf::ACK));
    (synack.seq, synack.ack, synack.mss) = (5000, 101, 1460);
    synack.tcp_opts |= tcp_opts::MSS;
    let mut ack = stamped(tcp(t0 + 2_000_000, 1, 2, 40000, 80, tf::ACK));
    (ack.seq, ack.ack) = (101, 5001);
    let payload = 44 * 1448 + 100;
    let mut data = stamped(tcp(t0 + 3_000_000, 1, 2, 40000, 80, tf::ACK | tf::PSH));
    (data.seq, data.ack, data.payload_len) = (101, 5001, payload);
    let file = vec![syn, synack, ack, data];
    let mut ring = file.clone();
    (ring[3].segs, ring[3].gso_size) = (45, 1448);
    let from_file = analyze_records(file, &FlowConfig::default());
    let from_ring = analyze_records(ring, &FlowConfig::default());
    assert_eq!(only_flow(&from_file).src_to_dst.packets, 2 + 45);
    assert_eq!(
        serde_json::to_value(&from_file.flows).expect("json"),
        serde_json::to_value(&from_ring.flows).expect("json"),
        "a file and the ring give the same figures for the same packets"
    );
}

#[test]
fn port_reuse_after_close_starts_a_new_flow() {
    let mut recs = vec![
        tcp(0, 1, 2, 1000, 80, tf::SYN),
        tcp(1, 2, 1, 80, 1000, tf::SYN | tf::ACK),
        tcp(2, 1, 2, 1000, 80, tf::RST),
    ];
    let mut again = tcp(3, 1, 2, 1000, 80, tf::SYN);
    again.seq = 999_999;
    recs.push(again);
    let r = analyze_records(recs, &FlowConfig::default());
    assert_eq!(r.flows.len(), 2);
    assert_eq!(r.flows[0].state, "reset");
    assert_eq!(r.flows[0].rst_from, Some("src"));
    assert_eq!(r.flows[1].state, "syn_sent");
    assert!(r.flows[1].syn_unanswered);
    assert_eq!(r.stats.flows_restarted, 1);
}

#[test]
fn gso_records_count_their_segments() {
    let mut a = tcp(0, 1, 2, 1000, 80, tf::ACK);
    a.seq = 1;
    a.payload_len = 3 * 1000;
    a.segs = 3;
    a.wire_len = 3000 + 54;
    let r = analyze_records([a], &FlowConfig::default());
    let f = only_flow(&r);
    assert_eq!(f.packets, 3);
    assert_eq!(f.bytes, 3 * 1054, "headers repeated per segment");
    assert_eq!(f.goodput_bytes, 3000);
}

#[test]
fn icmp_errors_attach_to_the_quoted_flow() {
    let mut seg = tcp(0, 1, 2, 1000, 80, tf::ACK);
    seg.seq = 5000;
    seg.payload_len = 1460;
    let mut e = PacketMeta::zeroed();
    e.ts_ns = 10;
    e.kind = RecordKind::IcmpError as u8;
    e.ip_version = 4;
    e.l4_proto = ipproto::ICMP;
    e.src_addr = ip4(254);
    e.dst_addr = ip4(1);
    e.icmp_type = 3;
    e.icmp_code = 4;
    e.icmp_mtu = 1400;
    e.inner_proto = ipproto::TCP;
    e.inner_src = ip4(1);
    e.inner_dst = ip4(2);
    e.inner_sport = 1000;
    e.inner_dport = 80;
    e.inner_seq = 5000;
    let mut resend = seg;
    resend.ts_ns = 20;
    resend.payload_len = 1348;
    let r = analyze_records([seg, e, resend], &FlowConfig::default());
    let f = only_flow(&r);
    assert_eq!(f.icmp_errors, 1);
    assert_eq!(f.icmp[0].mtu, 1400);
    assert_eq!(f.icmp[0].from, IpAddr::from([192, 0, 2, 254]));
    assert_eq!((f.retransmissions, f.retrans_pmtud), (1, 1), "PMTUD resend");
    assert_eq!(r.stats.icmp_matched, 1);
}

#[test]
fn udp_jitter_follows_rfc3550() {
    let mut recs = Vec::new();
    // 20 ms constant-rate sender; packet 5 arrives 4 ms late.
    for i in 0..10u64 {
        let mut m = PacketMeta::zeroed();
        m.ts_ns = i * 20_000_000 + if i == 5 { 4_000_000 } else { 0 };
        m.kind = RecordKind::Udp as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::UDP;
        m.src_addr = ip4(1);
        m.dst_addr = ip4(2);
        m.sport = 5004;
        m.dport = 5004;
        m.wire_len = 214;
        recs.push(m);
    }
    let r = analyze_records(recs, &FlowConfig::default());
    let f = only_flow(&r);
    assert_eq!(
        (f.proto.to_string().as_str(), f.packets, f.bytes),
        ("udp", 10, 2140)
    );
    // Same recurrence computed by hand: D = spacing - mean spacing so far.
    let mut j = 0.0f64;
    let arrivals: Vec<f64> = (0..10)
        .map(|i| (i * 20) as f64 + if i == 5 { 4.0 } else { 0.0 })
        .collect();
    for i in 1..10 {
        let d = (arrivals[i] - arrivals[i - 1]) - (arrivals[i] - arrivals[0]) / i as f64;
        j += (d.abs() - j) / 16.0;
    }
    let got = f.jitter_ms.expect("jitter");
    assert!(
        (got - (j * 1000.0).round() / 1000.0).abs() < 1e-9,
        "{got} vs {j}"
    );
    assert_eq!(f.state, "active");
}

#[test]
fn idle_flow_memory_is_bounded() {
    assert!(
        std::mem::size_of::<Flow>() <= 232,
        "Flow grew to {} bytes",
        std::mem::size_of::<Flow>()
    );
    let n = 10_000u32;
    // A full table: the slab grows no further than max_flows.
    let mut t = FlowTable::new(FlowConfig {
        max_flows: n as usize,
        ..FlowConfig::default()
    });
    for i in 0..n {
        let mut m = tcp(
            u64::from(i),
            1,
            2,
            (i % 60000) as u16,
            (i / 60000) as u16,
            tf::SYN,
        );
        m.src_addr[4..8].copy_from_slice(&i.to_be_bytes());
        t.ingest(&m);
    }
    assert_eq!(t.len(), n as usize);
    let per_flow = t.memory_bytes() as f64 / f64::from(n);
    println!(
        "Flow {} bytes, Extra {} bytes, idle table cost {per_flow:.0} bytes/flow",
        std::mem::size_of::<Flow>(),
        std::mem::size_of::<phalanx_daemon::flow::state::Extra>()
    );
    assert!(per_flow <= 256.0, "{per_flow} bytes per idle flow");
}

fn arb_record() -> impl Strategy<Value = PacketMeta> {
    (
        (
            any::<u64>(),
            0u8..6,
            prop_oneof![Just(4u8), Just(6u8), any::<u8>()],
            any::<u8>(),
        ),
        (0u8..3, 0u8..3, 0u16..4, 0u16..4, any::<u8>(), any::<u8>()),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u32>(),
            any::<u16>(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            proptest::array::uniform6(any::<u32>()),
        ),
        (
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
        ),
    )
        .prop_map(|(a, b, c, d, e)| {
            let mut m = PacketMeta::zeroed();
            (m.ts_ns, m.kind, m.ip_version, m.l4_proto) = a;
            m.src_addr[0] = b.0;
            m.dst_addr[0] = b.1;
            m.sport = b.2;
            m.dport = b.3;
            m.tcp_flags = b.4;
            m.tcp_opts = b.5;
            (m.seq, m.ack, m.window, m.payload_len, m.segs) = c;
            (m.tsval, m.tsecr, m.sack_count, m.sack) = d;
            (
                m.icmp_type,
                m.inner_proto,
                m.wscale,
                m.inner_seq,
                m.wire_len,
            ) = e;
            m.inner_src[0] = b.1;
            m.inner_dst[0] = b.0;
            m.outer_vlan = u16::from(b.0 & 1);
            m
        })
}

proptest! {
    #[test]
    fn arbitrary_records_never_panic(recs in proptest::collection::vec(arb_record(), 1..200), max in 1usize..8) {
        let cfg = FlowConfig { max_flows: max, syn_timeout_secs: 0, ..FlowConfig::default() };
        let r = analyze_records(recs.iter().copied(), &cfg);
        prop_assert!(r.stats.records == recs.len() as u64);
        let _ = serde_json::to_string(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

#[test]
#[ignore = "timing: run with --release"]
fn engine_throughput() {
    let t0 = std::time::Instant::now();
    let g = synth::many_flows(&synth::ManyFlows::default());
    let gen = t0.elapsed();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut table = FlowTable::new(FlowConfig::default());
        let t = std::time::Instant::now();
        for r in &g.records {
            table.ingest(r);
        }
        best = best.min(t.elapsed().as_secs_f64());
        assert!(!table.is_empty());
        let per_flow = table.memory_bytes() as f64 / table.len() as f64;
        println!("memory per flow with state: {per_flow:.0} bytes");
    }
    println!(
        "generated {} records in {:?}; ingest {:.2} M records/s",
        g.records.len(),
        gen,
        g.records.len() as f64 / best / 1e6
    );
}
