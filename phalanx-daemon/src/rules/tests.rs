//! Every rule on synthetic flows with exactly known evidence, and the
//! healthy counterparts that must stay quiet.

use phalanx_common::{ipproto, tcp_flags as tf, tcp_opts, PacketMeta, RecordKind};
use serde_json::json;

use super::*;
use crate::flow::{FlowConfig, FlowTable};
use crate::synth::{self, DataDir, ManyFlows, TcpScenario};

const T0: u64 = 1_700_000_000_000_000_000;
const C0: u32 = 1_000;
const S0: u32 = 500_000;

fn at(ms: f64) -> u64 {
    T0 + (ms * 1e6).round() as u64
}

fn ip(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[10, 0, 0, last]);
    a
}

/// A TCP packet between client 10.0.0.1:`cport` and server 10.0.0.2:80.
fn pkt(
    ms: f64,
    from_client: bool,
    cport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    len: u32,
) -> PacketMeta {
    let mut m = PacketMeta::zeroed();
    m.ts_ns = at(ms);
    m.kind = RecordKind::Tcp as u8;
    m.ip_version = 4;
    m.l4_proto = ipproto::TCP;
    let (a, b, pa, pb) = if from_client {
        (ip(1), ip(2), cport, 80)
    } else {
        (ip(2), ip(1), 80, cport)
    };
    m.src_addr = a;
    m.dst_addr = b;
    m.sport = pa;
    m.dport = pb;
    m.tcp_flags = flags;
    m.seq = seq;
    m.ack = ack;
    m.payload_len = len;
    m.window = 1000;
    m.ttl = 64;
    m.segs = 1;
    m.wire_len = 54 + len;
    if flags & tf::SYN != 0 {
        m.tcp_opts = tcp_opts::MSS;
        m.mss = 1460;
    }
    m
}

/// SYN at 0, SYN/ACK at 0.1 ms, ACK at 20.1 ms (vantage point at the server).
fn handshake(cport: u16) -> Vec<PacketMeta> {
    vec![
        pkt(0.0, true, cport, tf::SYN, C0, 0, 0),
        pkt(0.1, false, cport, tf::SYN | tf::ACK, S0, C0 + 1, 0),
        pkt(20.1, true, cport, tf::ACK, C0 + 1, S0 + 1, 0),
    ]
}

fn run(recs: &[PacketMeta], cfg: &RulesConfig) -> (Vec<FlowSummary>, Vec<Finding>) {
    let mut t = FlowTable::new(FlowConfig::default());
    t.keep_finished(true);
    for r in recs {
        t.ingest(r);
    }
    let now = t.now();
    let flows = t.into_report().flows;
    let engine = RuleEngine::new(cfg).expect("valid rules");
    let findings = engine.evaluate(&flows, now);
    (flows, findings)
}

fn rules(f: &[Finding]) -> Vec<(&str, Severity)> {
    f.iter().map(|x| (x.rule.as_str(), x.severity)).collect()
}

#[test]
fn defaults_are_valid() {
    RuleEngine::new(&RulesConfig::default()).expect("documented defaults compile");
}

/// Download: request and a 300-byte header segment are acknowledged, then
/// three 1448-byte segments vanish beyond the vantage point and the first
/// is re-sent on RTO four times.
fn blackhole_download() -> Vec<PacketMeta> {
    let mut v = handshake(40000);
    let p = |ms, c, fl, s, a, l| pkt(ms, c, 40000, fl, s, a, l);
    v.push(p(20.2, true, tf::ACK | tf::PSH, C0 + 1, S0 + 1, 100));
    v.push(p(20.3, false, tf::ACK, S0 + 1, C0 + 101, 0));
    v.push(p(20.4, false, tf::ACK | tf::PSH, S0 + 1, C0 + 101, 300));
    v.push(p(40.4, true, tf::ACK, C0 + 101, S0 + 301, 0));
    for (i, ms) in [40.5, 40.6, 40.7].into_iter().enumerate() {
        v.push(p(
            ms,
            false,
            tf::ACK,
            S0 + 301 + 1448 * i as u32,
            C0 + 101,
            1448,
        ));
    }
    for ms in [240.5, 640.5, 1440.5, 3040.5] {
        v.push(p(ms, false, tf::ACK, S0 + 301, C0 + 101, 1448));
    }
    v
}

#[test]
fn pmtud_blackhole_fires_and_supersedes_the_stall() {
    let (flows, found) = run(&blackhole_download(), &RulesConfig::default());
    let d = &flows[0].dst_to_src;
    assert_eq!(
        (d.max_segment, d.max_acked_segment, d.full_size_retrans),
        (1448, 300, 4)
    );
    assert_eq!(
        d.stall.retransmissions, 4,
        "the stall is there, but superseded"
    );
    assert_eq!(rules(&found), [("pmtud_blackhole", Severity::Critical)]);
    let x = &found[0];
    assert_eq!(
        x.evidence,
        json!({
            "direction": "dst_to_src",
            "full_size_bytes": 1448,
            "full_size_retransmissions": 4,
            "largest_acked_segment": 300,
            "first_retransmission_ns": at(240.5),
            "last_retransmission_ns": at(3040.5),
            "span_s": 2.8,
            "receiver_mss": 1460,
            "icmp_too_big": 0,
            "still_unacknowledged": true,
        })
    );
    assert_eq!(
        x.summary,
        "10.0.0.2:80 re-sent full-size 1448-byte segments to 10.0.0.1:40000 4 times over 2.8 s \
         and none was ever acknowledged, while segments up to 300 bytes got through and no ICMP \
         \"packet too big\" came back: a path-MTU black hole beyond this host."
    );
    assert_eq!(x.flow.src, Some("10.0.0.1".parse().expect("ip")));
    assert_eq!((x.flow.sport, x.flow.dport), (Some(40000), 80));
}

#[test]
fn full_size_resends_that_reached_their_receiver_are_no_blackhole() {
    // The same packets captured on the client: its own packets carry the
    // initial TTL, the server's arrive 7 hops down. The server's
    // full-size re-sends were seen arriving here, so no hop dropped them
    // (a full queue upstream did, or the first copies): a stall, not a
    // black hole.
    let mut v = blackhole_download();
    for m in &mut v {
        if m.sport == 80 {
            m.ttl = 57;
        }
    }
    let (flows, found) = run(&v, &RulesConfig::default());
    assert_eq!(flows[0].local_side, Some("src"));
    assert_eq!(flows[0].dst_to_src.full_size_retrans, 4);
    assert_eq!(
        rules(&found),
        [("retransmission_stall", Severity::Critical)],
        "{found:#?}"
    );
}

#[test]
fn pmtud_with_icmp_is_reduced_not_blackhole() {
    let mut v = blackhole_download();
    v.truncate(10); // up to the three full-size segments
    let mut icmp = PacketMeta::zeroed();
    icmp.ts_ns = at(40.8);
    icmp.kind = RecordKind::IcmpError as u8;
    icmp.ip_version = 4;
    icmp.l4_proto = ipproto::ICMP;
    icmp.src_addr = ip(254);
    icmp.dst_addr = ip(2);
    icmp.icmp_type = 3;
    icmp.icmp_code = 4;
    icmp.icmp_mtu = 1280;
    icmp.inner_proto = ipproto::TCP;
    icmp.inner_src = ip(2);
    icmp.inner_dst = ip(1);
    icmp.inner_sport = 80;
    icmp.inner_dport = 40000;
    icmp.inner_seq = S0 + 301;
    v.push(icmp);
    let mut seq = S0 + 301;
    for (i, len) in [1240u32, 1240, 1240, 624].into_iter().enumerate() {
        v.push(pkt(
            40.9 + i as f64 * 0.01,
            false,
            40000,
            tf::ACK,
            seq,
            C0 + 101,
            len,
        ));
        seq += len;
    }
    v.push(pkt(61.0, true, 40000, tf::ACK, C0 + 101, seq, 0));
    let (flows, found) = run(&v, &RulesConfig::default());
    assert_eq!(flows[0].dst_to_src.retrans_pmtud, 4);
    assert_eq!(rules(&found), [("pmtud_reduced", Severity::Info)]);
    assert_eq!(
        found[0].evidence,
        json!({
            "direction": "dst_to_src",
            "mtu": 1280,
            "icmp_errors": 1,
            "reported_by": ["10.0.0.254"],
            "first_icmp_ns": at(40.8),
            "last_icmp_ns": at(40.8),
            "retrans_pmtud": 4,
            "max_segment": 1448,
        })
    );
    let mut cfg = RulesConfig::default();
    cfg.pmtud_blackhole.report_reduced = false;
    assert_eq!(run(&v, &cfg).1, [], "report_reduced = false silences it");
}

#[test]
fn bulk_loss_of_full_size_segments_is_not_a_blackhole() {
    let g = synth::tcp_conversation(&TcpScenario {
        drop_after: vec![20, 50],
        ..TcpScenario::default()
    });
    let (flows, found) = run(&g.records, &RulesConfig::default());
    let d = &flows[0].src_to_dst;
    assert_eq!(
        (d.max_segment, d.max_acked_segment, d.full_size_retrans),
        (1448, 1448, 0)
    );
    assert_eq!(d.retransmissions, 2);
    assert_eq!(found, []);
}

#[test]
fn healthy_flows_fire_nothing() {
    let g = synth::many_flows(&ManyFlows {
        flows: 200,
        packets: 40_000,
        loss: 0.0,
        ..ManyFlows::default()
    });
    let (flows, found) = run(&g.records, &RulesConfig::default());
    assert_eq!(flows.len(), 200);
    assert_eq!(found, [], "no fault, no finding");
}

#[test]
fn one_way_flow_is_asymmetric() {
    let sc = TcpScenario {
        segments: 1000,
        client_rtt_ns: 10_000_000,
        server_rtt_ns: 20_000_000,
        data: DataDir::Upload,
        ..TcpScenario::default()
    };
    let g = synth::tcp_conversation(&sc);
    let client = ip(1);
    let recs: Vec<PacketMeta> = g
        .records
        .into_iter()
        .filter(|r| r.src_addr == client)
        .collect();
    let (first, last) = (recs[0].ts_ns, recs[recs.len() - 1].ts_ns);
    let n = recs.len() as u64;
    let (_, found) = run(&recs, &RulesConfig::default());
    assert_eq!(rules(&found), [("asymmetric_path", Severity::Warning)]);
    assert_eq!(
        found[0].evidence,
        json!({
            "kind": "one_direction",
            "seen_direction": "src_to_dst",
            "packets": n,
            "reverse_packets": 0,
            "duration_s": r3(secs(first, last)),
            // The client's last ACK acknowledges the server's FIN.
            "ack_advances": 1,
            "handshake_completed_elsewhere": true,
            "first_ts_ns": first,
            "last_ts_ns": last,
        })
    );
}

#[test]
fn one_way_flow_without_proof_of_the_other_side_is_not_asymmetric() {
    // Picked up mid-stream: new data every 0.5 s, ACK number never moves.
    let recs: Vec<PacketMeta> = (0..12)
        .map(|i| {
            pkt(
                f64::from(i) * 500.0,
                true,
                40000,
                tf::ACK,
                C0 + 100 * i,
                S0,
                100,
            )
        })
        .collect();
    let (flows, found) = run(&recs, &RulesConfig::default());
    assert_eq!(flows[0].src_to_dst.packets, 12);
    assert_eq!(found, []);
}

#[test]
fn ttl_change_mid_flow_is_reported() {
    let g = synth::tcp_conversation(&TcpScenario::default());
    let server = ip(2);
    let mut recs = g.records;
    let half = recs.len() / 2;
    let mut changed_at = None;
    for r in recs.iter_mut().skip(half).filter(|r| r.src_addr == server) {
        r.ttl = 58;
        changed_at.get_or_insert(r.ts_ns);
    }
    let (_, found) = run(&recs, &RulesConfig::default());
    assert_eq!(rules(&found), [("asymmetric_path", Severity::Info)]);
    let e = &found[0].evidence;
    assert_eq!(e["direction"], "dst_to_src");
    assert_eq!(
        (
            &e["ttl_first"],
            &e["ttl_last"],
            &e["ttl_min"],
            &e["ttl_max"],
            &e["ttl_changes"]
        ),
        (&json!(64), &json!(58), &json!(58), &json!(64), &json!(1))
    );
    assert_eq!(
        e["first_change_ns"],
        json!(changed_at.expect("server packets"))
    );
    let mut cfg = RulesConfig::default();
    cfg.asymmetric_path.min_ttl_delta = 7;
    assert_eq!(
        run(&recs, &cfg).1,
        [],
        "a 6-hop change is below a delta of 7"
    );
}

#[test]
fn ttl_flaps_are_not_route_changes_and_never_read_from_x_to_x() {
    let g = synth::tcp_conversation(&TcpScenario::default());
    let server = ip(2);
    // One hop back and forth (ECMP paths, anycast nodes): below the delta.
    let mut recs = g.records.clone();
    for (i, r) in recs.iter_mut().filter(|r| r.src_addr == server).enumerate() {
        r.ttl = if i % 3 == 1 { 63 } else { 64 };
    }
    let (flows, found) = run(&recs, &RulesConfig::default());
    assert!(flows[0].dst_to_src.ttl.changes > 2, "the TTL did flap");
    assert_eq!(found, [], "a one-hop flap is no finding");
    // Four hops back and forth, ending where it began: reported as
    // alternating routes, with no "from 64 to 64".
    let mut recs = g.records;
    for (i, r) in recs.iter_mut().filter(|r| r.src_addr == server).enumerate() {
        r.ttl = if i % 3 == 1 { 60 } else { 64 };
    }
    let last = recs
        .iter()
        .rev()
        .find(|r| r.src_addr == server)
        .map(|r| r.ttl);
    assert_eq!(last, Some(64));
    let (_, found) = run(&recs, &RulesConfig::default());
    assert_eq!(rules(&found), [("asymmetric_path", Severity::Info)]);
    let text = &found[0].summary;
    assert!(text.contains("alternated between 60 and 64"), "{text}");
    assert!(!text.contains("from 64 to 64"), "{text}");
}

#[test]
fn a_handshake_from_another_initial_ttl_is_answered_elsewhere() {
    let g = synth::tcp_conversation(&TcpScenario::default());
    let server = ip(2);
    let mut recs = g.records;
    // The SYN/ACK sent with 255 (17 hops: 238), the rest with 64 (47).
    for r in recs.iter_mut().filter(|r| r.src_addr == server) {
        r.ttl = if r.tcp_flags & tf::SYN != 0 { 238 } else { 47 };
    }
    let (_, found) = run(&recs, &RulesConfig::default());
    assert_eq!(
        rules(&found),
        [("handshake_answered_elsewhere", Severity::Info)],
        "explained by the handshake, not reported as a route change"
    );
    let x = &found[0];
    assert_eq!(x.evidence["direction"], "dst_to_src");
    assert_eq!(
        (
            &x.evidence["handshake_initial_ttl"],
            &x.evidence["initial_ttl"]
        ),
        (&json!(255), &json!(64))
    );
    assert!(x.summary.contains("The SYN/ACK from 10.0.0.2:80 arrived with TTL 238 (sent with 255, 17 hops away) but its later packets with TTL 47 (sent with 64, 17 hops)"), "{}", x.summary);
    // The same initial TTL (a route change right after the handshake) is
    // a route change.
    for r in recs.iter_mut().filter(|r| r.src_addr == server) {
        r.ttl = if r.tcp_flags & tf::SYN != 0 { 60 } else { 47 };
    }
    let (_, found) = run(&recs, &RulesConfig::default());
    assert_eq!(rules(&found), [("asymmetric_path", Severity::Info)]);
}

/// Request/response exchanges without timestamps: RTT samples of the
/// client's direction are exactly the given ones; `ce` marks that many
/// server ACKs Congestion Experienced.
fn ping_pong(rtts_ms: &[f64], ce: usize) -> Vec<PacketMeta> {
    let mut v = Vec::new();
    let mut t = 0.0;
    for (i, rtt) in rtts_ms.iter().enumerate() {
        let seq = C0 + 100 * i as u32;
        v.push(pkt(t, true, 40000, tf::ACK | tf::PSH, seq, S0, 100));
        let mut a = pkt(t + rtt, false, 40000, tf::ACK, S0, seq + 100, 0);
        if i >= rtts_ms.len() - ce {
            a.tos = 3;
        }
        v.push(a);
        t += rtt + 1.0;
    }
    v
}

#[test]
fn congestion_needs_inflation_and_marks() {
    let mut rtts = vec![10.0; 8];
    rtts.extend([50.0; 12]);
    let (flows, found) = run(&ping_pong(&rtts, 3), &RulesConfig::default());
    let f = &flows[0];
    assert_eq!(
        (f.rtt.samples, f.rtt.min_ms, f.rtt.p50_ms),
        (20, Some(10.0), Some(50.0))
    );
    assert_eq!(f.ce_packets, 3);
    let mut srtt = 10_000u64;
    for _ in 0..12 {
        srtt = (srtt * 7 + 50_000) / 8;
    }
    assert_eq!(f.srtt_ms, Some(srtt as f64 / 1000.0));
    assert_eq!(rules(&found), [("congestion", Severity::Warning)]);
    assert_eq!(
        found[0].evidence,
        json!({
            "rtt_min_ms": 10.0,
            "rtt_p50_ms": 50.0,
            "rtt_p99_ms": 50.0,
            "srtt_ms": srtt as f64 / 1000.0,
            "rtt_samples": 20,
            "inflation_factor": 5.0,
            "retransmissions": 0,
            "ce_packets": 3,
            "latency": {
                "client_network_ms": null,
                "server_network_ms": 10.0,
                "server_response_ms": null,
                "client_think_ms": null,
                "retransmission_delay_ms": 0.0,
            },
            "first_ts_ns": f.first_ts_ns,
            "last_ts_ns": f.last_ts_ns,
        })
    );
    assert!(found[0]
        .summary
        .contains("rose to 50.0 ms (median), 5.0 times its 10.0 ms baseline"));
    // Inflation alone (no loss, no marks) and marks alone are not congestion.
    assert_eq!(run(&ping_pong(&rtts, 0), &RulesConfig::default()).1, []);
    assert_eq!(
        run(&ping_pong(&[10.0; 20], 5), &RulesConfig::default()).1,
        []
    );
}

#[test]
fn syn_unanswered_after_retries_or_timeout() {
    let syn = |ms| pkt(ms, true, 40000, tf::SYN, C0, 0, 0);
    let recs = [syn(0.0), syn(1000.0), syn(3000.0)];
    let (_, found) = run(&recs, &RulesConfig::default());
    assert_eq!(rules(&found), [("syn_unanswered", Severity::Warning)]);
    assert_eq!(
        found[0].evidence,
        json!({"syns": 3, "first_syn_ns": at(0.0), "last_syn_ns": at(3000.0), "waited_s": 3.0})
    );
    assert_eq!(
        found[0].summary,
        "10.0.0.1:40000 sent 3 SYNs to 10.0.0.2:80 and got no answer in 3.0 s: the server is down or a firewall drops the connection."
    );
    // Five SYNs are also four re-sends of the same sequence number: the
    // stall they would show is the unanswered SYN itself, reported once.
    let five = [
        syn(0.0),
        syn(1000.0),
        syn(3000.0),
        syn(7000.0),
        syn(15000.0),
    ];
    let (_, found) = run(&five, &RulesConfig::default());
    assert_eq!(rules(&found), [("syn_unanswered", Severity::Warning)]);
    // One SYN: nothing after 1 s, a finding once 3 s have passed.
    let mut t = FlowTable::new(FlowConfig::default());
    t.ingest(&syn(0.0));
    let flows = t.snapshot();
    let e = RuleEngine::default();
    assert_eq!(e.evaluate(&flows, at(1000.0)), []);
    let late = e.evaluate(&flows, at(5000.0));
    assert_eq!(late[0].evidence["waited_s"], json!(5.0));
    // Refused (RST) or answered: not unanswered.
    let refused = [
        syn(0.0),
        pkt(0.1, false, 40000, tf::RST | tf::ACK, 0, C0 + 1, 0),
        syn(1000.0),
    ];
    assert_eq!(run(&refused, &RulesConfig::default()).1, []);
    assert_eq!(run(&handshake(40000), &RulesConfig::default()).1, []);
}

#[test]
fn zero_window_episode_duration() {
    let sc = |pause_ms: u64| TcpScenario {
        zero_window: Some((30, pause_ms * 1_000_000)),
        ..TcpScenario::default()
    };
    let g = synth::tcp_conversation(&sc(800));
    let zero_at = g
        .records
        .iter()
        .find(|r| r.window == 0)
        .expect("zero window")
        .ts_ns;
    let (flows, found) = run(&g.records, &RulesConfig::default());
    assert_eq!(flows[0].dst_to_src.zero_window_ms, 800.0);
    assert_eq!(rules(&found), [("zero_window", Severity::Warning)]);
    assert_eq!(
        found[0].evidence,
        json!({
            "direction": "dst_to_src",
            "episodes": 1,
            "zero_window_ms": 800.0,
            "still_closed": false,
            "first_zero_window_ns": zero_at,
            "zero_window_packets": 1,
            "peer_zero_window_probes": 0,
        })
    );
    let g = synth::tcp_conversation(&sc(100));
    let (flows, found) = run(&g.records, &RulesConfig::default());
    assert_eq!(flows[0].dst_to_src.zero_windows, 1);
    assert_eq!(found, [], "100 ms is below the 500 ms threshold");
}

#[test]
fn retransmission_storm_ratio() {
    let drops: Vec<u32> = (0..15).map(|i| 5 + i * 6).collect();
    let g = synth::tcp_conversation(&TcpScenario {
        drop_after: drops,
        ..TcpScenario::default()
    });
    let truth = &g.truth[0];
    let (flows, found) = run(&g.records, &RulesConfig::default());
    let d = &flows[0].src_to_dst;
    assert_eq!(
        (d.retransmissions, d.packets),
        (truth.retransmissions, truth.sender_packets)
    );
    let ratio = f64::from(truth.retransmissions) / truth.sender_packets as f64;
    assert_eq!(rules(&found), [("retransmission_storm", Severity::Warning)]);
    let e = &found[0].evidence;
    assert_eq!(e["retransmissions"], json!(15));
    assert_eq!(e["packets"], json!(truth.sender_packets));
    assert_eq!(e["ratio"], json!(r3(ratio)));
    assert_eq!(e["fast"], json!(truth.retrans_fast));
    // Two losses in a hundred segments are not a storm.
    let g = synth::tcp_conversation(&TcpScenario {
        drop_after: vec![10, 60],
        ..TcpScenario::default()
    });
    assert_eq!(run(&g.records, &RulesConfig::default()).1, []);
}

fn stalled(acked_at: Option<f64>) -> Vec<PacketMeta> {
    let mut v = handshake(40000);
    for ms in [100.0, 300.0, 700.0, 1500.0, 3100.0] {
        v.push(pkt(ms, true, 40000, tf::ACK | tf::PSH, C0 + 1, S0 + 1, 500));
    }
    if let Some(ms) = acked_at {
        v.push(pkt(ms, false, 40000, tf::ACK, S0 + 1, C0 + 501, 0));
    }
    v
}

#[test]
fn retransmission_stall_open_and_recovered() {
    let (_, found) = run(&stalled(None), &RulesConfig::default());
    assert_eq!(
        rules(&found),
        [("retransmission_stall", Severity::Critical)]
    );
    assert_eq!(
        found[0].evidence,
        json!({
            "direction": "src_to_dst",
            "retransmissions": 4,
            // Relative to the SYN's sequence number, as Wireshark counts.
            "relative_seq": 1,
            "first_retransmission_ns": at(300.0),
            "last_retransmission_ns": at(3100.0),
            "span_s": 2.8,
            "still_unacknowledged": true,
            "peer_packets": 1,
        })
    );
    let (_, found) = run(&stalled(Some(3200.0)), &RulesConfig::default());
    assert_eq!(rules(&found), [("retransmission_stall", Severity::Warning)]);
    assert_eq!(found[0].evidence["still_unacknowledged"], json!(false));
    let mut cfg = RulesConfig::default();
    cfg.retransmission_stall.min_retransmissions = 5;
    assert_eq!(run(&stalled(None), &cfg).1, []);
}

fn refused(n: u16, spacing_ms: f64) -> Vec<PacketMeta> {
    refused_from(0, n, 0.0, spacing_ms)
}

/// `n` refused connections from port 40000 + `first`, from `start_ms` on.
fn refused_from(first: u16, n: u16, start_ms: f64, spacing_ms: f64) -> Vec<PacketMeta> {
    let mut v = Vec::new();
    for i in first..first + n {
        let t = start_ms + f64::from(i - first) * spacing_ms;
        v.push(pkt(t, true, 40000 + i, tf::SYN, C0, 0, 0));
        v.push(pkt(
            t + 0.5,
            false,
            40000 + i,
            tf::RST | tf::ACK,
            0,
            C0 + 1,
            0,
        ));
    }
    v
}

#[test]
fn rst_storm_across_flows() {
    let (flows, found) = run(&refused(12, 100.0), &RulesConfig::default());
    assert_eq!(flows.len(), 12);
    assert_eq!(rules(&found), [("rst_storm", Severity::Warning)]);
    let x = &found[0];
    assert_eq!((x.flow.src, x.flow.sport, x.flow.dport), (None, None, 80));
    assert_eq!(
        x.evidence,
        json!({
            "resets": 12,
            "reset_by_server": 12,
            "reset_by_client": 0,
            "client_addresses": 1,
            "first_rst_ns": at(0.5),
            "last_rst_ns": at(1100.5),
            "span_s": 1.1,
            "window_s": 10.0,
        })
    );
    assert_eq!(
        x.summary,
        "12 connections to 10.0.0.2:80 were reset within 1.1 s (12 by the server, 0 by clients, 1 client addresses)."
    );
    // The same resets 5 s apart: at most 3 in any 10 s window.
    assert_eq!(run(&refused(12, 5000.0), &RulesConfig::default()).1, []);
}

#[test]
fn rst_storm_keeps_an_early_storm_through_many_later_resets() {
    // Enough sparse resets after the storm that the rule drops the old
    // ones from memory: the storm's window is kept aside.
    let mut recs = refused(12, 100.0);
    recs.extend(refused_from(12, 5_000, 20_000.0, 6_000.0));
    let (_, found) = run(&recs, &RulesConfig::default());
    let storms: Vec<_> = found.iter().filter(|f| f.rule == "rst_storm").collect();
    assert_eq!(storms.len(), 1);
    assert_eq!(storms[0].evidence["resets"], 12);
    assert_eq!(
        storms[0].activity_ns,
        Some(at(20_000.0 + 4_999.0 * 6_000.0 + 0.5))
    );
}

#[test]
fn custom_rule_fires_with_rendered_summary_and_evidence() {
    let mut cfg = RulesConfig::default();
    cfg.retransmission_storm.enabled = false;
    cfg.custom.push(CustomRuleConfig::new(
        "lossy",
        "src_to_dst.retransmissions / src_to_dst.packets > 0.05 and rtt.min_ms > 5",
        Severity::Critical,
        "{src_to_dst.retransmissions} of {src_to_dst.packets} re-sent, min RTT {rtt.min_ms} ms",
    ));
    cfg.custom.push(CustomRuleConfig::new(
        "div_zero",
        "packets / (dup_acks - dup_acks) > 0 or not (1 / 0 < 1)",
        Severity::Info,
        "never",
    ));
    let g = synth::tcp_conversation(&TcpScenario {
        drop_after: (0..15).map(|i| 5 + i * 6).collect(),
        ..TcpScenario::default()
    });
    let (flows, found) = run(&g.records, &cfg);
    let d = &flows[0].src_to_dst;
    assert_eq!(rules(&found), [("lossy", Severity::Critical)]);
    assert_eq!(
        found[0].summary,
        format!("15 of {} re-sent, min RTT 10 ms", d.packets)
    );
    assert_eq!(
        found[0].evidence,
        json!({
            "src_to_dst.retransmissions": 15,
            "src_to_dst.packets": d.packets,
            "rtt.min_ms": 10.0,
            "first_ts_ns": flows[0].first_ts_ns,
            "last_ts_ns": flows[0].last_ts_ns,
        })
    );
}

#[test]
fn custom_rule_errors_name_rule_and_column() {
    let mut cfg = RulesConfig::default();
    cfg.custom.push(CustomRuleConfig::new(
        "slow",
        "retransmissions / packets > 0.05 and rtt.p98_ms > 200",
        Severity::Warning,
        "x",
    ));
    let e = RuleEngine::new(&cfg).expect_err("unknown field");
    assert_eq!(
        e.to_string(),
        "rules.custom \"slow\": condition, column 38: unknown field `rtt.p98_ms` (did you mean `rtt.p99_ms`?)"
    );
    cfg.custom[0] = CustomRuleConfig::new("slow", "packets > 1", Severity::Warning, "p {pakets}");
    let e = RuleEngine::new(&cfg).expect_err("unknown summary field");
    assert_eq!(
        e.to_string(),
        "rules.custom \"slow\": summary, column 4: unknown field `pakets` (did you mean `packets`?)"
    );
    cfg.custom[0] = CustomRuleConfig::new("congestion", "packets > 1", Severity::Warning, "x");
    assert!(
        RuleEngine::new(&cfg).is_err(),
        "built-in names are reserved"
    );
}

#[test]
fn sentences_keep_small_times_readable() {
    use super::{Ms, Times};
    assert_eq!(Ms(0.008).to_string(), "0.008 ms");
    assert_eq!(Ms(2.345).to_string(), "2.35 ms");
    assert_eq!(Ms(71.739).to_string(), "71.7 ms");
    assert_eq!(Times(4.96).to_string(), "5.0");
    assert_eq!(Times(8967.375).to_string(), "8967");
}

#[test]
fn registry_rows_match_their_settings() {
    for r in REGISTRY {
        assert_eq!(r.name, r.rule.table(), "a row is named after its table");
    }
    let mut names = BUILTIN_RULES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), BUILTIN_RULES.len(), "rule names are unique");
}

#[test]
fn every_builtin_rule_is_documented() {
    let doc = include_str!("mod.rs");
    for name in BUILTIN_RULES {
        assert!(
            doc.contains(&format!("//! | `{name}` |")),
            "{name} is missing from the table in the rules module's doc"
        );
    }
    for r in REGISTRY {
        assert!(
            crate::config::DOCUMENTED_DEFAULTS.contains(&format!("\n[rules.{}]\n", r.name)),
            "[rules.{}] is missing from config/phalanx.toml",
            r.name
        );
    }
}
