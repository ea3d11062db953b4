//! Third-party captures in shared/pcaps analysed end to end.

use std::path::PathBuf;

use phalanx_daemon::analyze::{analyze_files, Report};
use phalanx_daemon::flow::FlowConfig;

fn pcap(name: &str) -> PathBuf {
    phalanx_lab::data::pcaps().join(name)
}

fn analyze(name: &str) -> Report {
    analyze_files(&[pcap(name)], &FlowConfig::default())
        .unwrap_or_else(|e| panic!("{name} must be readable: {e}"))
}

/// Our figures for the TCP flows of a capture.
#[derive(Debug, PartialEq)]
struct Pinned {
    packets: u64,
    retrans: u32,
    fast: u32,
    timeout: u32,
    pmtud: u32,
    spurious: u32,
    late_fills: u32,
    out_of_order: u32,
    dup_acks: u32,
    zero_windows: u32,
    rtt_samples: u64,
    rtt_p50_ms: Option<f64>,
}

#[allow(clippy::too_many_arguments)]
const fn pin(
    packets: u64,
    retrans: u32,
    fast: u32,
    timeout: u32,
    pmtud: u32,
    spurious: u32,
    late_fills: u32,
    out_of_order: u32,
    dup_acks: u32,
    zero_windows: u32,
    rtt_samples: u64,
    rtt_p50_ms: Option<f64>,
) -> Pinned {
    Pinned {
        packets,
        retrans,
        fast,
        timeout,
        pmtud,
        spurious,
        late_fills,
        out_of_order,
        dup_acks,
        zero_windows,
        rtt_samples,
        rtt_p50_ms,
    }
}

fn tcp_flows(r: &Report) -> Vec<Pinned> {
    r.flows
        .iter()
        .filter(|f| f.proto == "tcp")
        .map(|f| Pinned {
            packets: f.packets,
            retrans: f.retransmissions,
            fast: f.retrans_fast,
            timeout: f.retrans_timeout,
            pmtud: f.retrans_pmtud,
            spurious: f.retrans_spurious,
            late_fills: f.late_fills,
            out_of_order: f.out_of_order,
            dup_acks: f.dup_acks,
            zero_windows: f.zero_windows,
            rtt_samples: f.rtt.samples,
            rtt_p50_ms: f.rtt.p50_ms,
        })
        .collect()
}

/// RTT samples (see `flow::rtt`) leave out the echo of a pure ACK that
/// acknowledged everything in flight when it comes after more than twice
/// the part's round trip (the peer's application, not the path), and a
/// FIN answered by the peer's own FIN.
fn check(name: &str, expected: &[Pinned]) -> Report {
    let r = analyze(name);
    for i in &r.inputs {
        assert_eq!(i.error, None, "{name} reads without damage");
    }
    assert_eq!(tcp_flows(&r), expected, "{name}: pinned figures");
    r
}

#[test]
fn cs_mail_sender_client() {
    // tshark: no retransmissions, ack_rtt median 0.283 ms. Our RTT is the
    // end-to-end estimate (both sides of the vantage point summed), so it
    // is larger than tshark's one-sided data -> ACK time.
    let r = check(
        "cs_mail_sender_client_1.pcapng",
        &[pin(23, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, Some(0.608))],
    );
    let h = r.flows[0].handshake.expect("handshake");
    assert_eq!((h.downstream_ms, h.upstream_ms), (Some(0.223), Some(0.048)));
}

#[test]
fn cs_mail_sender_server() {
    // The same SMTP flow seen at the server, plus the server's own relay.
    check(
        "cs_mail_sender_server_2.pcapng",
        &[
            pin(23, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, Some(0.525)),
            pin(15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, Some(0.26)),
        ],
    );
}

#[test]
fn cs_tcp_dupack() {
    // Same as tshark: 3 duplicate ACKs, then a fast retransmission.
    // Captured at the receiver (its packets undecremented, the sender's
    // decremented): tshark's ack_rtt 0.010 ms is the local host's answer
    // (`answer_ms` 0.011); no packet of the receiver is ever answered in
    // the file, so the path's `rtt` is unknown.
    check(
        "cs_tcp_dupack.pcapng",
        &[pin(9, 1, 1, 0, 0, 0, 0, 0, 3, 0, 0, None)],
    );
}

#[test]
fn cs_tcp_retransmissions() {
    // Same as tshark: one segment re-sent 5 times on RTO with backoff.
    check(
        "cs_tcp_retransmissions.pcapng",
        &[pin(6, 5, 0, 5, 0, 0, 0, 0, 0, 0, 0, None)],
    );
}

#[test]
fn cs_tcp_zerowindowdead() {
    // tshark counts 4 zero-window packets; we count one zero-window
    // episode (the window never re-opens) and report the 4 packets in
    // zero_window_packets. The zero-length probes at snd_max - 1 are
    // zero-window probes, not duplicate ACKs (tshark agrees: 0 dup ACKs).
    // Captured at the receiver: tshark's ack_rtt 0.029 ms is its own
    // answer (`answer_ms`), and the path's `rtt` is never measured.
    let r = check(
        "cs_tcp_zerowindowdead.pcapng",
        &[pin(8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, None)],
    );
    let f = &r.flows[0];
    assert_eq!(
        f.src_to_dst.zero_window_probes + f.dst_to_src.zero_window_probes,
        3
    );
    assert_eq!(
        f.src_to_dst.zero_window_packets + f.dst_to_src.zero_window_packets,
        4
    );
}

#[test]
fn cs_tcp_zerowindowrecovery() {
    // Same as tshark: one zero window, then a window update.
    check(
        "cs_tcp_zerowindowrecovery.pcapng",
        &[pin(7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, None)],
    );
}

#[test]
fn sv_bug_3616_smtp_pmtud() {
    // tshark: 4 retransmissions + 1 out-of-order. That "out-of-order"
    // segment (frame 27, seq 151, 1452 bytes) re-sends data first sent in
    // frame 22 (1460 bytes), right after the ICMP frag-needed of frame 26:
    // data seen twice at one point is a re-send, not reordering. All 5 are
    // path-MTU resends (each follows a frag-needed quoting data in flight).
    // Captured at the client: `rtt` is its packets' round trip to the
    // server, 10 samples, median 342.351 ms (tshark's ack_rtt median over
    // both directions 342.183 ms).
    let r = check(
        "sv_bug-3616-smtp_pmtud.pcap",
        &[pin(53, 5, 0, 0, 5, 0, 0, 0, 0, 0, 10, Some(342.351))],
    );
    let f = r.flows.iter().find(|f| f.proto == "tcp").expect("tcp flow");
    assert_eq!(
        f.icmp_errors, 4,
        "4 frag-needed errors attached to the flow"
    );
    assert!(f.icmp.iter().all(|e| e.mtu == 1492));
    assert_eq!(
        r.flows.len(),
        3,
        "plus a DNS exchange and a NetBIOS broadcast"
    );
}

#[test]
fn sv_bug_4376_syn_retransmit_vlan() {
    // VLAN 3136 on the client's direction only: still one flow.
    // tshark: 18 retransmissions + 1 out-of-order (frame 51). Frame 51
    // re-sends seq 11585, first seen in frame 22, after the receiver SACKed
    // 13033- and repeated ACK 11585: a SACK-recovered fast retransmission
    // (loss after the vantage point), so we count 19.
    let r = check(
        "sv_bug-4376_syn_retransmit_vlan.pcap",
        &[pin(254, 19, 18, 1, 0, 0, 0, 0, 53, 0, 19, Some(0.001))],
    );
    assert_eq!(r.flows[0].vlan, [3136, 0]);
    assert_eq!(r.flows[0].dst_to_src.vlan, [0, 0]);
}

#[test]
fn sv_http_body_hook_ipv6() {
    // tshark: 2 retransmissions, 1 out-of-order, 2 "previous segment not
    // captured". The capture is downstream of the loss: frame 395 opens a
    // one-segment hole and frame 425 a two-segment hole; frames 519, 539
    // and 541 fill them 34-44 ms later, more than a round trip to the
    // sender (min 14.9 ms): all three are retransmissions (late fills).
    // tshark calls frame 541 out-of-order only because it follows 539 closely.
    // 2007 frames are 2008 packets: frame 139 carries 1664 bytes (a
    // 1750-byte frame, above Ethernet's MTU) to a client whose MSS is 1420,
    // a super-frame of two wire segments merged by GRO at the capture host,
    // counted as the ring would count it. Captured at the client: `rtt`
    // is its packets' round trip (the handshake's 14.85 ms, then ACKs
    // echoed by the server's data 15-39 ms later, median 30.852 ms); the
    // 688 samples of the client's own answer are `answer_ms` (0.135 ms).
    check(
        "sv_http-body-hook-01_ipv6.pcap",
        &[pin(2008, 3, 3, 0, 0, 0, 3, 0, 70, 0, 26, Some(30.852))],
    );
}

#[test]
fn zeek_tcprs_comp008() {
    // tshark: 49 retransmissions + 3 spurious, 10 out-of-order. Zeek's
    // TCPRS analyser (expected/ logs) finds 56 retransmissions and 3
    // reorderings, as we do: tshark's 7 other "out-of-order" segments
    // (frames 1100, 1197-1199, 1727, 2761, 2764) re-send data seen before,
    // SACK-recovered. Our 3 spurious ones are tshark's (frames 1191, 2089,
    // 3200: data already acknowledged); our 3 reordered ones are TCPRS's
    // (frames 609, 616, 2967). RTT median from the sketch: 150.59 ms, the
    // exact one of the same samples 151.148 ms (within the sketch's 0.8 %).
    // Three pure ACKs of everything sent, echoed 190-224 ms later by the
    // peer's next data on a part whose round trip is 0.033 ms, time the
    // peer's application: no samples. Neither are the 17 echoes by resends
    // on a retransmission timeout (the sender's timer, not the path).
    check(
        "zeek-tcprs_comp008.pcap",
        &[pin(3280, 56, 5, 51, 0, 3, 0, 3, 26, 0, 238, Some(150.591))],
    );
}

#[test]
fn zeek_pppoe_over_qinq() {
    // tshark: 23 retransmissions (12 spurious), 2 out-of-order, 13 dup ACKs.
    // Frames 57-58 re-send data first seen in frames 50-51: retransmissions,
    // not reordering (25 in all). Spurious: tshark's 12 plus frame 59, which
    // the D-SACK in frame 64 reports as a duplicate. Dup ACKs: tshark counts
    // every D-SACK ACK; RFC 5681 needs outstanding data and an unchanged
    // window, which leaves 4.
    check(
        "zeek_pppoe-over-qinq.pcap",
        &[pin(86, 25, 0, 25, 0, 13, 0, 0, 4, 0, 10, Some(413.708))],
    );
}

#[test]
fn zeek_vlan_collisions() {
    // One flow copied onto untagged, VLAN 42 and QinQ 10/20. tshark merges
    // them into one stream and sees every copy as a retransmission (18, 4
    // spurious, 1 dup ACK). With VLAN-aware keys they are three clean flows.
    // Captured at the client: `rtt` is the path's 69.1 ms (tshark's ack_rtt
    // median, 0.144 ms, is mostly the client's own answer).
    let r = check(
        "zeek_vlan-collisions.pcap",
        &[
            pin(14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, Some(69.131)),
            pin(14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, Some(69.131)),
            pin(14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, Some(69.131)),
        ],
    );
    let vlans: Vec<[u16; 2]> = r.flows.iter().map(|f| f.vlan).collect();
    assert_eq!(vlans, [[0, 0], [42, 0], [10, 20]]);
}

#[test]
fn every_capture_is_analysed_and_serialises() {
    let dir = phalanx_lab::data::pcaps();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("tests/data/pcaps exists") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".pcap") || name.ends_with(".pcapng")) {
            continue;
        }
        let r = analyze(&name);
        assert!(!r.flows.is_empty(), "{name} has flows");
        let json = serde_json::to_value(&r).expect("serialises");
        for key in [
            "src",
            "dst",
            "sport",
            "dport",
            "proto",
            "packets",
            "bytes",
            "rtt",
            "retransmissions",
            "dup_acks",
            "out_of_order",
            "zero_windows",
            "mss",
            "jitter_ms",
        ] {
            assert!(
                json["flows"][0].get(key).is_some(),
                "{name}: flow field {key}"
            );
        }
        for key in ["samples", "min_ms", "avg_ms", "p50_ms", "p99_ms", "max_ms"] {
            assert!(
                json["flows"][0]["rtt"].get(key).is_some(),
                "{name}: rtt.{key}"
            );
        }
        // Which findings each capture gives is pinned in rules_offline.rs;
        // here, the contract: every finding has these fields.
        for x in json["findings"].as_array().expect("findings array") {
            for key in ["rule", "severity", "flow", "summary", "evidence"] {
                assert!(x.get(key).is_some(), "{name}: finding field {key}");
            }
        }
        n += 1;
    }
    assert_eq!(n, 12, "all shared captures");
}

#[test]
fn lab_keepalive_idle_gives_no_idle_rtt() {
    // A client on a 0.03 ms veth path sends 100 bytes every 50 ms to a
    // server that only reads, idles 5 s with keep-alives every second
    // (TCP_KEEPIDLE 1 s), sends once more and closes. tshark's ack_rtt:
    // 0.007-0.035 ms for the data, 5.848 ms for the server's ACK of the
    // FIN (it waits for the server's application to close). The server's
    // pure ACKs are echoed only by the client's next write (50 ms of the
    // application's pacing) or by a keep-alive (1 s of idle time): neither
    // is a round trip, and neither is a bare FIN's answer.
    let r = analyze("lab/keepalive_idle.pcap");
    let f = &r.flows[0];
    assert_eq!(f.src_to_dst.keepalives, 5, "five keep-alives");
    assert_eq!(
        (f.src_to_dst.rtt.samples, f.dst_to_src.rtt.samples),
        (7, 2),
        "the SYN and six writes; the SYN/ACK and one ACK answered at once"
    );
    let max = f.rtt.max_ms.expect("rtt");
    assert!(max < 0.1, "no idle time in the RTT: max {max} ms");
    let jitter = f.jitter_ms.expect("jitter");
    assert!(jitter < 0.05, "no pacing in the jitter: {jitter} ms");
}

#[test]
fn lab_paced_download_rtt_is_the_path_not_the_application() {
    // client -- router -- server on veths, captured at the client: the
    // server writes 1000 bytes every 100 ms, 40 times. tshark's ack_rtt
    // (data -> the client's ACK): 0.005-0.053 ms. The client's ACKs are
    // echoed by the server's next write, 100 ms on: the application's
    // pacing, which the RTT used to report (p50 100.29 ms).
    let r = analyze("lab/paced_download_client.pcap");
    let f = &r.flows[0];
    assert_eq!(f.local_side, Some("src"), "TTL 64 here, 63 from the server");
    let (p50, max) = (f.rtt.p50_ms.expect("p50"), f.rtt.max_ms.expect("max"));
    assert!(max < 1.0, "the path's round trip, not 100 ms: {:?}", f.rtt);
    assert_eq!(
        f.rtt, f.src_to_dst.rtt,
        "at the client, rtt is its packets' round trip to the server"
    );
    assert!(p50 > 0.0);
    // The client's own answer to the server's data, apart.
    let answer = f.answer_ms.expect("answer time");
    assert_eq!(Some(answer), f.dst_to_src.rtt.p50_ms);
    assert_eq!(f.dst_to_src.rtt.samples, 41, "40 writes and the SYN/ACK");
    assert!(f.jitter_ms.expect("jitter") < 0.1);
}

#[test]
fn lab_router_any_capture_counts_each_packet_once() {
    // `tcpdump -i any` on the router: each of the 171 packets of a clean
    // 200,000-byte download appears on the way in (TTL 64) and on the way
    // out (TTL 63) with the same IP ID. tshark: 143 retransmissions and 28
    // duplicate ACKs; there were none.
    let r = analyze("lab/router_any_twice.pcap");
    let f = &r.flows[0];
    assert_eq!((f.packets, f.capture_duplicates), (171, 171));
    assert_eq!((f.retransmissions, f.dup_acks, f.out_of_order), (0, 0, 0));
    assert_eq!(f.goodput_bytes, 200_003, "the request and the download");
    assert_eq!(f.src_to_dst.ttl.changes, 0, "the first copy's TTL only");
    let i = &r.inputs[0];
    assert_eq!(
        (i.frames, i.capture_duplicates, i.capture_points),
        (342, 171, 2)
    );
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn expected_findings_are_exactly_these() {
    // tests/data/pcaps/EXPECTED.md: each capture's findings with the
    // reason they are right; every vendored capture has a row.
    let dir = phalanx_lab::data::pcaps();
    let table = std::fs::read_to_string(dir.join("EXPECTED.md")).expect("EXPECTED.md");
    let mut rows = std::collections::BTreeMap::new();
    for line in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| capture"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let mut want: Vec<String> = Vec::new();
        for f in cells[2].split(", ").filter(|f| *f != "-") {
            let (f, n) = match f.split_once(" ×") {
                Some((f, n)) => (f, n.parse::<usize>().expect("count")),
                None => (f, 1),
            };
            want.extend(std::iter::repeat_n(f.to_string(), n));
        }
        want.sort();
        rows.insert(cells[1].to_string(), want);
    }
    let mut files = Vec::new();
    for sub in ["", "internet", "lab"] {
        for e in std::fs::read_dir(dir.join(sub)).expect("folder") {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            if name.ends_with(".pcap") || name.ends_with(".pcapng") {
                files.push(if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                });
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        rows.keys().cloned().collect::<Vec<_>>(),
        "one EXPECTED.md row per capture"
    );
    for name in files {
        let mut got: Vec<String> = analyze(&name)
            .findings
            .iter()
            .map(|f| format!("{} ({})", f.rule, f.severity.as_str()))
            .collect();
        got.sort();
        assert_eq!(got, rows[&name], "{name}: findings");
    }
}
