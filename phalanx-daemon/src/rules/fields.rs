//! The fields custom rules may name: every scalar of a flow's JSON report.
//!
//! They are read off an example report whose optional values are all set
//! (a `null` would hide its field). The example is a struct literal, so a
//! field added to the report does not compile until it is listed here.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use crate::flow::key::Proto;
use crate::flow::{
    DirReport, FlowSummary, HandshakeReport, LatencyReport, PerSide, RttReport, StallReport,
    TtlReport,
};

use super::expr::Fields;

fn rtt() -> RttReport {
    RttReport {
        samples: 1,
        min_ms: Some(1.0),
        avg_ms: Some(1.0),
        p50_ms: Some(1.0),
        p99_ms: Some(1.0),
        max_ms: Some(1.0),
    }
}

fn dir() -> DirReport {
    DirReport {
        packets: 1,
        bytes: 1,
        goodput_bytes: 1,
        retransmissions: 1,
        retrans_fast: 1,
        retrans_timeout: 1,
        retrans_pmtud: 1,
        retrans_spurious: 1,
        late_fills: 1,
        retrans_bytes: 1,
        out_of_order: 1,
        reorder_extent_max: 1,
        dup_acks: 1,
        zero_windows: 1,
        zero_window_packets: 1,
        window_full: 1,
        window_limited: 1,
        capture_duplicates: 1,
        keepalives: 1,
        zero_window_probes: 1,
        mss: Some(1),
        wscale: Some(1),
        vlan: [0, 0],
        rtt: rtt(),
        jitter_ms: Some(1.0),
        syn: true,
        fin: true,
        rst: true,
        rst_ns: Some(1),
        syn_only: true,
        ack_advances: 1,
        ttl: TtlReport {
            first: 1,
            min: 1,
            max: 1,
            last: 1,
            changes: 1,
            first_change_ns: Some(1),
        },
        ce_packets: 1,
        srtt_ms: Some(1.0),
        zero_window_ms: 1.0,
        zero_window_open: true,
        zero_window_first_ns: Some(1),
        max_segment: 1,
        max_acked_segment: 1,
        full_size_retrans: 1,
        full_size_retrans_first_ns: Some(1),
        full_size_retrans_last_ns: Some(1),
        stall: StallReport {
            retransmissions: 1,
            rel_seq: 1,
            first_ns: Some(1),
            last_ns: Some(1),
            open: true,
        },
    }
}

/// A report with every optional value set.
fn example() -> FlowSummary {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    FlowSummary {
        src: ip,
        dst: ip,
        sport: 1,
        dport: 1,
        proto: Proto::TCP,
        vlan: [0, 0],
        first_ts_ns: 1,
        last_ts_ns: 1,
        duration_s: 1.0,
        packets: 1,
        bytes: 1,
        goodput_bytes: 1,
        goodput_bps: Some(1.0),
        rtt: rtt(),
        local_side: Some("src"),
        answer_ms: Some(1.0),
        retransmissions: 1,
        retrans_fast: 1,
        retrans_timeout: 1,
        retrans_pmtud: 1,
        retrans_spurious: 1,
        late_fills: 1,
        dup_acks: 1,
        out_of_order: 1,
        reorder_extent_max: 1,
        zero_windows: 1,
        window_full: 1,
        capture_duplicates: 1,
        mss: PerSide {
            src: Some(1),
            dst: Some(1),
        },
        wscale: PerSide {
            src: Some(1),
            dst: Some(1),
        },
        jitter_ms: Some(1.0),
        srtt_ms: Some(1.0),
        ce_packets: 1,
        handshake: Some(HandshakeReport {
            downstream_ms: Some(1.0),
            upstream_ms: Some(1.0),
            total_ms: Some(1.0),
        }),
        latency: Some(LatencyReport {
            client_network_ms: Some(1.0),
            server_network_ms: Some(1.0),
            server_response_ms: Some(1.0),
            client_think_ms: Some(1.0),
            retransmission_delay_ms: 1.0,
        }),
        state: "established",
        syn_unanswered: true,
        rst_from: Some("src"),
        timestamps: true,
        sack_permitted: true,
        icmp_errors: 1,
        icmp: Vec::new(),
        src_to_dst: dir(),
        dst_to_src: dir(),
    }
}

/// The fields of a flow report, with their types (built once).
pub fn flow_fields() -> &'static Fields {
    static FIELDS: OnceLock<Fields> = OnceLock::new();
    FIELDS.get_or_init(|| {
        // Serialising a plain struct of numbers, strings and options cannot
        // fail; an empty field set would only make every rule a config error.
        let v = serde_json::to_value(example()).unwrap_or_default();
        Fields::from_example(&v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::expr::Kind;

    #[test]
    fn nested_and_optional_fields_are_known() {
        let f = flow_fields();
        for (name, kind) in [
            ("retransmissions", Kind::Num),
            ("rtt.p99_ms", Kind::Num),
            ("src_to_dst.retransmissions", Kind::Num),
            ("dst_to_src.rtt.min_ms", Kind::Num),
            ("handshake.total_ms", Kind::Num),
            ("mss.src", Kind::Num),
            ("src_to_dst.ttl.changes", Kind::Num),
            ("state", Kind::Str),
            ("rst_from", Kind::Str),
            ("syn_unanswered", Kind::Bool),
            ("src", Kind::Str),
        ] {
            assert_eq!(f.kind(name), Some(kind), "{name}");
        }
        assert_eq!(f.kind("icmp"), None, "arrays are not addressable");
        assert_eq!(f.kind("rtt"), None, "objects are not values");
    }
}
