//! Diagnosis rules end to end: shared captures through `analyze`, the
//! `[rules.*]` configuration, and the condition parser on arbitrary input.

use phalanx_daemon::analyze::{analyze_files, Report};
use phalanx_daemon::config::Config;
use phalanx_daemon::flow::FlowConfig;
use phalanx_daemon::rules::expr::{self, Fields};
use phalanx_daemon::rules::fields::flow_fields;
use phalanx_daemon::rules::{RuleEngine, Severity};
use proptest::prelude::*;
use serde_json::json;

fn analyze(name: &str) -> Report {
    let p = phalanx_lab::data::pcaps().join(name);
    analyze_files(&[p], &FlowConfig::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn rules(r: &Report) -> Vec<(&str, Severity)> {
    r.findings
        .iter()
        .map(|f| (f.rule.as_str(), f.severity))
        .collect()
}

#[test]
fn smtp_pmtud_is_reduced_not_a_blackhole() {
    // Four ICMP frag-needed (MTU 1492) from 192.168.1.1, five resends at
    // 1452 bytes, then the transfer completes.
    let r = analyze("sv_bug-3616-smtp_pmtud.pcap");
    assert_eq!(rules(&r), [("pmtud_reduced", Severity::Info)]);
    let f = &r.findings[0];
    assert_eq!(
        f.evidence,
        json!({
            "direction": "src_to_dst",
            "mtu": 1492,
            "icmp_errors": 4,
            "reported_by": ["192.168.1.1"],
            "first_icmp_ns": 1_254_722_770_695_115_000u64,
            "last_icmp_ns": 1_254_722_770_696_634_000u64,
            "retrans_pmtud": 5,
            "max_segment": 1460,
        })
    );
    assert_eq!(
        f.summary,
        "192.168.1.1 reported an MTU of 1492 bytes on the path from 10.10.1.4:1470 to \
         74.53.140.153:25 (4 ICMP errors) and 5 segments were re-sent at the smaller size: \
         path-MTU discovery worked."
    );
    let json = serde_json::to_value(&r).expect("serialises");
    let x = &json["findings"][0];
    for key in ["rule", "severity", "flow", "summary", "evidence"] {
        assert!(x.get(key).is_some(), "finding field {key}");
    }
    assert_eq!(
        x["flow"],
        json!({"src": "10.10.1.4", "dst": "74.53.140.153", "sport": 1470, "dport": 25, "proto": "tcp"})
    );
    assert_eq!(x["severity"], "info");
}

#[test]
fn a_syn_ack_from_another_device_is_a_handshake_answered_elsewhere() {
    // The server's SYN/ACK arrives with TTL 238 (sent with 255) and every
    // later server packet with TTL 47 (sent with 64): a middlebox answered
    // the handshake. Not a route change ("changed mid-flow from 238 to 47").
    let r = analyze("internet/cs_weather_broken.pcapng");
    assert_eq!(
        rules(&r),
        [("handshake_answered_elsewhere", Severity::Info)]
    );
    let e = &r.findings[0].evidence;
    assert_eq!(
        (
            &e["handshake_ttl"],
            &e["handshake_initial_ttl"],
            &e["ttl"],
            &e["initial_ttl"]
        ),
        (&json!(238), &json!(255), &json!(47), &json!(64))
    );
}

#[test]
fn a_printer_that_drains_slowly_is_a_slow_receiver_not_congestion() {
    // A print job to a LAN printer (handshake round trip 0.166 ms). The
    // printer advertises 4-8 KB windows; the client fills each (frames
    // 7-10, 12-15, ...: less than one 1460-byte segment left) and waits
    // 65-200 ms for every ACK (tshark ack_rtt median 141.9 ms): the
    // printer's pace. Its RTT inflation is no queue on the path, though
    // two timeout resends happen (frames 32, 51: the window re-opened late).
    let r = analyze("internet/cs_inconsistent_printer.pcapng");
    assert_eq!(rules(&r), [("slow_receiver", Severity::Warning)]);
    let e = &r.findings[0].evidence;
    assert_eq!(e["direction"], "src_to_dst");
    assert_eq!(e["path_rtt_ms"], 0.166);
    assert_eq!(
        (&e["window_limited"], &e["acknowledgments"]),
        (&json!(29), &json!(30))
    );
    assert!(e["ack_wait_p50_ms"].as_f64().expect("wait") > 100.0);
    assert_eq!(
        e["latency"]["server_network_ms"], 0.166,
        "the split travels with the finding"
    );
}

#[test]
fn where_the_time_goes_reads_path_server_or_client() {
    // The same HTTP request three times, captured at the client. tshark:
    // SYN -> SYN/ACK 30.107 / 878.530 / 23.790 ms; the client's request
    // 0.141 ms / 17 ms / 1.345 s after the SYN/ACK; the answer's first
    // byte 70.954 / 1171.094 / 62.303 ms after the request.
    let split = |name: &str| {
        let r = analyze(&format!("internet/{name}"));
        let l = r.flows[0].latency.expect("a TCP flow");
        let found: Vec<_> = r
            .findings
            .iter()
            .map(|f| (f.rule.clone(), f.evidence["dominant"].clone()))
            .collect();
        (l, found)
    };
    // Normal: 71 ms in all, nothing to say.
    let (l, found) = split("cs_latency1.pcapng");
    assert_eq!(
        (l.server_network_ms, l.client_network_ms),
        (Some(30.107), Some(0.075))
    );
    assert_eq!(l.server_response_ms, Some(40.847), "70.954 - 30.107");
    assert_eq!(l.client_think_ms, Some(0.066), "0.141 - 0.075");
    assert!(found.is_empty(), "{found:?}");
    // The path: an 878.5 ms round trip to the server.
    let (l, found) = split("cs_latency2.pcapng");
    assert_eq!(l.server_network_ms, Some(878.53));
    assert_eq!(found, [("latency_split".to_string(), json!("network"))]);
    // The client: 1.345 s before it sends its request.
    let (l, found) = split("cs_latency3.pcapng");
    assert_eq!(
        l.client_think_ms,
        Some(1345.023),
        "1.383707 - 0.023790 - 0.014894"
    );
    assert_eq!(l.server_response_ms, Some(38.513), "62.303 - 23.790");
    assert_eq!(found, [("latency_split".to_string(), json!("client"))]);
}

#[test]
fn zero_window_dead_is_receiver_limited() {
    // The receiver's window stays closed from frame 2 (0.000029 s) to its
    // last answer at 23.731553 s; the sender probes three times.
    let r = analyze("cs_tcp_zerowindowdead.pcapng");
    assert_eq!(rules(&r), [("zero_window", Severity::Warning)]);
    let e = &r.findings[0].evidence;
    assert_eq!(e["direction"], "dst_to_src");
    assert_eq!(e["episodes"], 1);
    assert_eq!(e["zero_window_ms"], 23731.524);
    assert_eq!(e["still_closed"], true);
    assert_eq!(e["zero_window_packets"], 4);
    assert_eq!(e["peer_zero_window_probes"], 3);
}

#[test]
fn rto_retransmissions_are_a_stall() {
    // One 648-byte segment re-sent 5 times with RTO backoff (0.206 s to
    // 9.211 s), never acknowledged; 6 packets are too few for a ratio and
    // one direction without proof of the other is not an asymmetric path.
    let r = analyze("cs_tcp_retransmissions.pcapng");
    assert_eq!(rules(&r), [("retransmission_stall", Severity::Critical)]);
    let e = &r.findings[0].evidence;
    assert_eq!(e["retransmissions"], 5);
    assert_eq!(e["span_s"], 9.005);
    assert_eq!(e["still_unacknowledged"], true);
    assert_eq!(e["peer_packets"], 0);
}

#[test]
fn healthy_captures_fire_nothing_beyond_info() {
    for name in [
        "cs_mail_sender_client_1.pcapng",
        "cs_mail_sender_server_2.pcapng",
        "cs_tcp_dupack.pcapng",
        "cs_tcp_zerowindowrecovery.pcapng",
        "zeek_vlan-collisions.pcap",
        "zeek-tcprs_comp008.pcap",
    ] {
        let r = analyze(name);
        let loud: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.severity > Severity::Info)
            .collect();
        assert!(loud.is_empty(), "{name}: {loud:#?}");
    }
}

#[test]
fn lossy_captures_are_named() {
    // 18 fast retransmissions of 148 server packets (12.2%).
    let r = analyze("sv_bug-4376_syn_retransmit_vlan.pcap");
    assert_eq!(rules(&r), [("retransmission_storm", Severity::Warning)]);
    assert_eq!(r.findings[0].evidence["retransmissions"], 18);
    // RTT 14.9 ms baseline, smoothed 32.8 ms at the end, 3 lost segments.
    let r = analyze("sv_http-body-hook-01_ipv6.pcap");
    assert_eq!(rules(&r), [("congestion", Severity::Warning)]);
    assert_eq!(r.findings[0].evidence["retransmissions"], 3);
    // Both directions lose data (spurious resends not counted), and the
    // server's final FIN+data is re-sent 4 times into silence (frames 83-86).
    let r = analyze("zeek_pppoe-over-qinq.pcap");
    assert_eq!(
        rules(&r),
        [
            ("retransmission_storm", Severity::Warning),
            ("retransmission_storm", Severity::Warning),
            ("retransmission_stall", Severity::Critical),
        ]
    );
}

#[test]
fn rules_config_is_validated_with_key_and_line() {
    let text = "[rules.congestion]\nenabled = true\nrtt_factor = 0.5\n";
    let msg = Config::from_toml(text, "t.toml")
        .expect_err("factor below 1")
        .to_string();
    assert_eq!(
        msg,
        "invalid config t.toml: rules.congestion.rtt_factor: must be a number > 1 (line 3)"
    );
    let text = "[flows]\nmax_flows = 10\n\n[[rules.custom]]\nname = \"slow\"\n\
                condition = \"retransmissions > 3 and rtt.p99 > 200\"\nsummary = \"x\"\n";
    let msg = Config::from_toml(text, "t.toml")
        .expect_err("unknown field")
        .to_string();
    assert_eq!(
        msg,
        "invalid config t.toml: rules.custom \"slow\": condition, column 25: unknown field \
         `rtt.p99` (did you mean `rtt.p99_ms`?) (line 6)"
    );
    let msg = Config::from_toml("[rules.zero_window]\nmin_duration = 1\n", "t.toml")
        .expect_err("unknown key")
        .to_string();
    assert!(
        msg.contains("min_duration") && msg.contains("line 2"),
        "{msg}"
    );
    let cfg = Config::from_toml(
        "[rules.rst_storm]\nmin_resets = 3\n[[rules.custom]]\nname = \"big\"\n\
         condition = \"bytes > 1e6\"\nseverity = \"info\"\nsummary = \"{bytes} bytes\"\n",
        "t.toml",
    )
    .expect("valid rules");
    assert_eq!(cfg.rules.rst_storm.min_resets, 3);
    assert_eq!(cfg.rules.custom[0].severity, Severity::Info);
    RuleEngine::new(&cfg.rules).expect("compiles");
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("packets".to_string()),
        Just("rtt.p99_ms".to_string()),
        Just("state".to_string()),
        Just("syn_unanswered".to_string()),
        Just("src_to_dst.retransmissions".to_string()),
        Just("\"reset\"".to_string()),
        Just("0".to_string()),
        Just("1.5e3".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("and".to_string()),
        Just("or".to_string()),
        Just("not".to_string()),
        Just("-".to_string()),
        Just("+".to_string()),
        Just("*".to_string()),
        Just("/".to_string()),
        Just("<".to_string()),
        Just(">=".to_string()),
        Just("==".to_string()),
        Just("!=".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,80}") {
        let fields: &Fields = flow_fields();
        if let Err(e) = expr::compile(&src, fields) {
            prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1,
                "column {} outside {src:?}", e.column);
        }
        if let Err(e) = expr::Template::compile(&src, fields) {
            prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1);
        }
    }

    #[test]
    fn token_soup_compiles_or_errors_and_evaluates_without_panic(
        toks in proptest::collection::vec(token(), 0..30),
        packets in any::<u32>(),
        p99 in proptest::option::of(-1e6f64..1e6),
    ) {
        let src = toks.join(" ");
        if let Ok(c) = expr::compile(&src, flow_fields()) {
            let flow = json!({
                "packets": packets, "rtt": {"p99_ms": p99}, "state": "reset",
                "syn_unanswered": false, "src_to_dst": {"retransmissions": 0}
            });
            let _ = c.holds(&flow);
        }
    }
}
