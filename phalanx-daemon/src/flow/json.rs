//! Direct JSON encoding of flow summaries, for `phalanx analyze --json`.
//!
//! Produces exactly the bytes `serde_json::to_writer` produces for the
//! same value (keys in declaration order, compact, serde_json's number
//! formatting), without serde's per-key escaping scan: keys are constant
//! pre-quoted literals and numbers go straight into the buffer. Every
//! struct lists its fields exhaustively, so a field added to a report
//! struct fails to compile here until it is encoded too; the tests compare
//! the output with serde_json's.

use std::net::IpAddr;

use serde_json::ser::{CompactFormatter, Formatter as _};

use super::key::Proto;
use super::report::{
    DirReport, FlowSummary, HandshakeReport, LatencyReport, PerSide, RttReport, StallReport,
    TtlReport,
};
use super::state::IcmpEvent;

/// A value that appends its compact JSON form to a byte buffer.
pub trait WriteJson {
    /// Appends the JSON text of `self` to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

macro_rules! json_int {
    ($($t:ty => $m:ident),* $(,)?) => {$(
        impl WriteJson for $t {
            #[inline]
            fn write_json(&self, out: &mut Vec<u8>) {
                // Writing to a Vec cannot fail.
                let _ = CompactFormatter.$m(out, *self);
            }
        }
    )*};
}

json_int!(u8 => write_u8, u16 => write_u16, u32 => write_u32, u64 => write_u64);

impl WriteJson for bool {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl WriteJson for f64 {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        // serde_json writes NaN and infinities as null.
        if self.is_finite() {
            let _ = CompactFormatter.write_f64(out, *self);
        } else {
            out.extend_from_slice(b"null");
        }
    }
}

impl WriteJson for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        if self
            .bytes()
            .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
        {
            out.push(b'"');
            out.extend_from_slice(self.as_bytes());
            out.push(b'"');
        } else {
            let _ = serde_json::to_writer(&mut *out, self);
        }
    }
}

impl WriteJson for &str {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

impl WriteJson for String {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_str().write_json(out);
    }
}

impl WriteJson for Proto {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        match self.name() {
            Some(name) => name.write_json(out),
            None => self.to_string().write_json(out),
        }
    }
}

impl WriteJson for IpAddr {
    fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.push(b'"');
        match self {
            IpAddr::V4(a) => {
                let [p, q, r, s] = a.octets();
                p.write_json(out);
                out.push(b'.');
                q.write_json(out);
                out.push(b'.');
                r.write_json(out);
                out.push(b'.');
                s.write_json(out);
            }
            IpAddr::V6(a) => {
                let _ = write!(out, "{a}");
            }
        }
        out.push(b'"');
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            v.write_json(out);
        }
        out.push(b']');
    }
}

impl<T: WriteJson, const N: usize> WriteJson for [T; N] {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

/// Encodes a struct as an object of the listed fields, in the listed order
/// (which must be the declaration order, as serde's derive uses it). The
/// exhaustive destructuring makes a missing field a compile error.
macro_rules! json_struct {
    ($t:ident $(<$g:ident>)? { $first:ident $(, $field:ident)* $(,)? }) => {
        impl$(<$g: WriteJson>)? WriteJson for $t$(<$g>)? {
            fn write_json(&self, out: &mut Vec<u8>) {
                let $t { $first, $($field),* } = self;
                out.extend_from_slice(concat!("{\"", stringify!($first), "\":").as_bytes());
                $first.write_json(out);
                $(
                    out.extend_from_slice(concat!(",\"", stringify!($field), "\":").as_bytes());
                    $field.write_json(out);
                )*
                out.push(b'}');
            }
        }
    };
}

json_struct!(RttReport {
    samples,
    min_ms,
    avg_ms,
    p50_ms,
    p99_ms,
    max_ms
});

json_struct!(PerSide<T> { src, dst });

json_struct!(HandshakeReport {
    downstream_ms,
    upstream_ms,
    total_ms
});

json_struct!(LatencyReport {
    client_network_ms,
    server_network_ms,
    server_response_ms,
    client_think_ms,
    retransmission_delay_ms
});

json_struct!(TtlReport {
    first,
    min,
    max,
    last,
    changes,
    first_change_ns
});

json_struct!(StallReport {
    retransmissions,
    rel_seq,
    first_ns,
    last_ns,
    open
});

json_struct!(DirReport {
    packets,
    bytes,
    goodput_bytes,
    retransmissions,
    retrans_fast,
    retrans_timeout,
    retrans_pmtud,
    retrans_spurious,
    late_fills,
    retrans_bytes,
    out_of_order,
    reorder_extent_max,
    dup_acks,
    zero_windows,
    zero_window_packets,
    window_full,
    window_limited,
    keepalives,
    capture_duplicates,
    zero_window_probes,
    mss,
    wscale,
    vlan,
    rtt,
    jitter_ms,
    syn,
    fin,
    rst,
    rst_ns,
    syn_only,
    ack_advances,
    ttl,
    ce_packets,
    srtt_ms,
    zero_window_ms,
    zero_window_open,
    zero_window_first_ns,
    max_segment,
    max_acked_segment,
    full_size_retrans,
    full_size_retrans_first_ns,
    full_size_retrans_last_ns,
    stall,
});

json_struct!(FlowSummary {
    src,
    dst,
    sport,
    dport,
    proto,
    vlan,
    first_ts_ns,
    last_ts_ns,
    duration_s,
    packets,
    bytes,
    goodput_bytes,
    goodput_bps,
    rtt,
    local_side,
    answer_ms,
    retransmissions,
    retrans_fast,
    retrans_timeout,
    retrans_pmtud,
    retrans_spurious,
    late_fills,
    dup_acks,
    out_of_order,
    reorder_extent_max,
    zero_windows,
    window_full,
    capture_duplicates,
    mss,
    wscale,
    jitter_ms,
    srtt_ms,
    ce_packets,
    handshake,
    latency,
    state,
    syn_unanswered,
    rst_from,
    timestamps,
    sack_permitted,
    icmp_errors,
    icmp,
    src_to_dst,
    dst_to_src,
});

impl WriteJson for IcmpEvent {
    fn write_json(&self, out: &mut Vec<u8>) {
        // Rare, and with skipped and renamed fields: serde's encoding.
        let _ = serde_json::to_writer(&mut *out, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze_records;
    use crate::flow::FlowConfig;
    use crate::synth::{self, ManyFlows};

    fn same_as_serde<T: WriteJson + serde::Serialize + ?Sized>(v: &T) {
        let mut ours = Vec::new();
        v.write_json(&mut ours);
        let theirs = serde_json::to_vec(v).expect("serde_json");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    #[test]
    fn flows_encode_as_serde_does() {
        let g = synth::many_flows(&ManyFlows {
            packets: 20_000,
            flows: 200,
            loss: 0.02,
            timestamps: true,
            ..ManyFlows::default()
        });
        let rep = analyze_records(g.records, &FlowConfig::default());
        assert!(!rep.flows.is_empty());
        same_as_serde(rep.flows.as_slice());
    }

    #[test]
    fn edge_values_encode_as_serde_does() {
        for v in [
            0.0,
            -0.0,
            1.5,
            1e-9,
            1e21,
            123_456.789,
            f64::NAN,
            f64::INFINITY,
            f64::MIN,
        ] {
            same_as_serde(&v);
            same_as_serde(&Some(v));
        }
        same_as_serde(&None::<u64>);
        same_as_serde(&[u64::MAX, 0]);
        for s in ["tcp", "", "a\"b", "tab\there", "\u{7f}", "é", "\\"] {
            same_as_serde(s);
        }
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.1.2",
            "::",
            "fd00::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            same_as_serde(&ip);
        }
        let ev = IcmpEvent {
            ts_ns: 5,
            from: "192.0.2.1".parse().expect("address"),
            icmp_type: 3,
            code: 4,
            mtu: 1400,
            quoted_dir: 1,
            quoted_seq: 7,
            snd_max_at: 9,
        };
        same_as_serde(&vec![ev, ev]);
    }
}
