//! Flow KPIs as Prometheus metrics, aggregated per flow group.
//!
//! The flow task applies every record through
//! [`FlowTable::ingest_observed`](crate::flow::FlowTable::ingest_observed)
//! with a [`FlowMetrics`] as observer: each record's changes (packets,
//! bytes, retransmissions, ..., a new RTT sample) are added to its flow's
//! group series (see [`super::groups`]). Counters therefore keep counting
//! after a flow leaves the table, and a series' counter equals the sum of
//! its flows' figures in `/api/v1/flows`.
//!
//! Families (all with labels `group`, `service`, `remote`):
//!
//! - `phalanx_flow_packets_total`, `phalanx_flow_bytes_total`, with
//!   `direction` `rx` (received by this host) or `tx` (sent by it);
//! - `phalanx_tcp_retransmissions_total`, `phalanx_tcp_out_of_order_total`
//!   (reordering), `phalanx_tcp_duplicate_acks_total`,
//!   `phalanx_tcp_zero_window_episodes_total` (engine definitions: see
//!   [`crate::flow`]);
//! - `phalanx_flow_rtt_seconds` (histogram of RTT samples) and
//!   `phalanx_flow_jitter_seconds` (histogram of the RFC 3550 jitter
//!   estimate after each update), with `direction` naming the probed
//!   packets: a `tx` sample times this host's packet to the remote end and
//!   its answer back (at an endpoint, the network round trip); an `rx`
//!   sample times the remote's packet to this host's answer (the local
//!   stack's share; on a router, the part of the path on the sending side);
//! - `phalanx_tcp_server_response_seconds` and
//!   `phalanx_tcp_client_think_seconds` (histograms, one observation per
//!   exchange and per connection: the flow's `latency` split, see
//!   [`crate::flow::latency`]).
//!
//! Plus table figures: `phalanx_flows_active`, `phalanx_flows_created_total`,
//! `phalanx_flows_evicted_total{reason="idle|table_full"}`, and
//! `phalanx_metrics_series` / `phalanx_metrics_overflow_flows_total` for the
//! series budget.

use std::sync::{Arc, Mutex};

use phalanx_common::{Direction, PacketMeta};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::groups::{effective_groups, Grouper, MetricsConfig, SeriesLabels};
use crate::flow::{Delta, Flow, FlowObserver, SharedTable, TableStats};

/// Upper bounds of the RTT histogram, seconds (100 us to 10 s).
pub const RTT_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Upper bounds of the jitter histogram, seconds (10 us to 1 s).
pub const JITTER_BUCKETS: [f64; 16] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

/// A histogram with fixed buckets, observed on the flow task's thread.
#[derive(Clone, Debug)]
struct Hist {
    /// Per bucket (not cumulative), the last one is `+Inf`.
    counts: [u64; 17],
    sum: f64,
    count: u64,
    /// Bucket of the latest value.
    last: u8,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: [0; 17],
            sum: 0.0,
            count: 0,
            last: 0,
        }
    }
}

impl Hist {
    fn observe(&mut self, bounds: &[f64; 16], v: f64) {
        // A running estimate (jitter after each packet) mostly stays in
        // its bucket: two predictable compares before a search.
        let last = usize::from(self.last);
        let i =
            if (last == 0 || bounds[last - 1] < v) && (last == bounds.len() || v <= bounds[last]) {
                last
            } else {
                let i = bounds.partition_point(|&b| b < v);
                self.last = i as u8;
                i
            };
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn buckets(&self, bounds: &[f64; 16]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            // prometheus-client writes `+Inf` for f64::MAX.
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts)
            .collect()
    }
}

/// Figures of one label set; index 0 is `rx`, 1 is `tx`.
#[derive(Clone, Debug, Default)]
struct Series {
    packets: [u64; 2],
    bytes: [u64; 2],
    retransmissions: u64,
    out_of_order: u64,
    dup_acks: u64,
    zero_windows: u64,
    rtt: [Hist; 2],
    jitter: [Hist; 2],
    server_response: [Hist; 1],
    client_think: [Hist; 1],
}

const DIRECTIONS: [&str; 2] = ["rx", "tx"];

/// Flow KPIs per group: the observer the flow task feeds.
#[derive(Debug)]
pub struct FlowMetrics {
    grouper: Grouper,
    series: Vec<Series>,
}

impl FlowMetrics {
    /// Empty figures for the `[metrics]` settings.
    pub fn new(cfg: &MetricsConfig) -> Self {
        Self {
            grouper: Grouper::new(&effective_groups(cfg)),
            series: Vec::new(),
        }
    }
}

impl FlowObserver for FlowMetrics {
    fn on_record(&mut self, flow: &Flow, tag: &mut u16, rec: &PacketMeta, d: &Delta) {
        let a = self.grouper.assign(flow, tag, rec, d.side);
        if a.series >= self.series.len() {
            self.series.resize_with(a.series + 1, Series::default);
        }
        let s = &mut self.series[a.series];
        let dir = usize::from(rec.direction == Direction::Egress as u8);
        s.packets[dir] += d.packets;
        s.bytes[dir] += d.bytes;
        s.retransmissions += d.retransmissions;
        s.out_of_order += d.out_of_order;
        s.dup_acks += d.dup_acks;
        s.zero_windows += d.zero_windows;
        // A sample about side `x`'s packets: `tx` when x is this host.
        if let Some(r) = d.rtt {
            s.rtt[usize::from(r.side == a.local_side)].observe(&RTT_BUCKETS, r.seconds);
        }
        if let Some(j) = d.jitter {
            s.jitter[usize::from(j.side == a.local_side)].observe(&JITTER_BUCKETS, j.seconds);
        }
        if let Some(v) = d.server_response {
            s.server_response[0].observe(&RTT_BUCKETS, v);
        }
        if let Some(v) = d.client_think {
            s.client_think[0].observe(&RTT_BUCKETS, v);
        }
    }
}

/// Scrape-time collector over [`FlowMetrics`] and the flow table.
pub struct KpiCollector {
    metrics: Arc<Mutex<FlowMetrics>>,
    flows: Arc<SharedTable>,
}

impl std::fmt::Debug for KpiCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KpiCollector")
    }
}

impl KpiCollector {
    /// Registers the flow KPI families in `registry`.
    pub fn register(
        registry: &mut Registry,
        metrics: Arc<Mutex<FlowMetrics>>,
        flows: Arc<SharedTable>,
    ) {
        registry.register_collector(Box::new(KpiCollector { metrics, flows }));
    }
}

fn labels(l: &SeriesLabels) -> [(&'static str, &str); 3] {
    [
        ("group", l.group.as_str()),
        ("service", l.service.as_str()),
        ("remote", l.remote.as_str()),
    ]
}

fn with_dir<'a>(l: &'a SeriesLabels, dir: &'static str) -> [(&'static str, &'a str); 4] {
    let [a, b, c] = labels(l);
    [a, b, c, ("direction", dir)]
}

/// One counter family over every series.
fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&SeriesLabels, &Series)],
    get: fn(&Series) -> u64,
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, s) in rows {
        let ls = labels(l);
        ConstCounter::new(get(s)).encode(fam.encode_family(&ls)?)?;
    }
    Ok(())
}

/// One per-direction counter family over every series.
fn dir_counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&SeriesLabels, &Series)],
    get: fn(&Series) -> [u64; 2],
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, s) in rows {
        for (i, v) in get(s).into_iter().enumerate() {
            let ls = with_dir(l, DIRECTIONS[i]);
            ConstCounter::new(v).encode(fam.encode_family(&ls)?)?;
        }
    }
    Ok(())
}

fn hist_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&SeriesLabels, &Series)],
    bounds: &[f64; 16],
    get: fn(&Series) -> &[Hist],
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (l, s) in rows {
        let hists = get(s);
        for (i, h) in hists.iter().enumerate() {
            // Two histograms are `rx` and `tx`; one has no direction.
            let (dir, plain) = (with_dir(l, DIRECTIONS[i % 2]), labels(l));
            let mut m = if hists.len() == 2 {
                fam.encode_family(&dir)?
            } else {
                fam.encode_family(&plain)?
            };
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum,
                h.count,
                &h.buckets(bounds),
                None,
            )?;
        }
    }
    Ok(())
}

fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
    gauge: bool,
) -> std::fmt::Result {
    if gauge {
        let g = ConstGauge::new(value as i64);
        g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
    } else {
        let c = ConstCounter::new(value);
        c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
    }
}

impl Collector for KpiCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copy under the locks, encode without them: a scrape must not stall
        // the flow task.
        let (labels_, series, overflowed) = match self.metrics.lock() {
            Ok(m) => (
                m.grouper.labels().to_vec(),
                m.series.clone(),
                m.grouper.overflowed_flows,
            ),
            Err(_) => return Ok(()),
        };
        let table = self.flows.read(|t| (t.len(), t.stats().clone())).ok();
        let rows: Vec<(&SeriesLabels, &Series)> = labels_.iter().zip(series.iter()).collect();
        encode_kpis(&mut enc, &rows)?;
        encode_series_budget(&mut enc, labels_.len() as u64, overflowed)?;
        if let Some((active, stats)) = table {
            encode_table(&mut enc, active as u64, &stats)?;
        }
        Ok(())
    }
}

/// The flow KPI families, one series per flow-group label set.
fn encode_kpis(enc: &mut DescriptorEncoder, rows: &[(&SeriesLabels, &Series)]) -> std::fmt::Result {
    dir_counter_family(
        enc,
        "phalanx_flow_packets",
        "Packets of tracked flows by flow group and direction (rx: received by this host, tx: sent by it).",
        rows,
        |s| s.packets,
    )?;
    dir_counter_family(
        enc,
        "phalanx_flow_bytes",
        "Frame bytes of tracked flows by flow group and direction.",
        rows,
        |s| s.bytes,
    )?;
    counter_family(
        enc,
        "phalanx_tcp_retransmissions",
        "TCP segments carrying data seen before, or filling a hole late (loss recovery).",
        rows,
        |s| s.retransmissions,
    )?;
    counter_family(
        enc,
        "phalanx_tcp_out_of_order",
        "TCP segments that filled a hole early: reordering, not loss.",
        rows,
        |s| s.out_of_order,
    )?;
    counter_family(
        enc,
        "phalanx_tcp_duplicate_acks",
        "TCP duplicate ACKs (RFC 5681 definition).",
        rows,
        |s| s.dup_acks,
    )?;
    counter_family(
        enc,
        "phalanx_tcp_zero_window_episodes",
        "TCP zero-window episodes: a receiver advertised a zero window after a non-zero one.",
        rows,
        |s| s.zero_windows,
    )?;
    hist_family(
        enc,
        "phalanx_flow_rtt_seconds",
        "RTT samples; direction tx: this host's packets to the remote end and the answer back, rx: the remote's packets to this host's answer.",
        rows,
        &RTT_BUCKETS,
        |s| &s.rtt,
    )?;
    hist_family(
        enc,
        "phalanx_flow_jitter_seconds",
        "RFC 3550 jitter estimate after each update (TCP: over consecutive RTT samples; UDP: over arrival spacing).",
        rows,
        &JITTER_BUCKETS,
        |s| &s.jitter,
    )?;
    hist_family(
        enc,
        "phalanx_tcp_server_response_seconds",
        "TCP server answer times: request's last segment to the answer's first byte, less the server side's round trip.",
        rows,
        &RTT_BUCKETS,
        |s| &s.server_response,
    )?;
    hist_family(
        enc,
        "phalanx_tcp_client_think_seconds",
        "TCP client pauses between the handshake and the first request, less the client side's round trip.",
        rows,
        &RTT_BUCKETS,
        |s| &s.client_think,
    )
}

/// How much of `metrics.series_budget` is spent.
fn encode_series_budget(
    enc: &mut DescriptorEncoder,
    series: u64,
    overflowed: u64,
) -> std::fmt::Result {
    single(
        enc,
        "phalanx_metrics_series",
        "Flow-group label sets in use (bounded by metrics.series_budget plus one overflow series per group).",
        series,
        true,
    )?;
    single(
        enc,
        "phalanx_metrics_overflow_flows",
        "Flows counted in an overflow series because metrics.series_budget was spent.",
        overflowed,
        false,
    )
}

/// The flow table: flows tracked, started and gone.
fn encode_table(enc: &mut DescriptorEncoder, active: u64, stats: &TableStats) -> std::fmt::Result {
    single(
        enc,
        "phalanx_flows_active",
        "Flows tracked now.",
        active,
        true,
    )?;
    single(
        enc,
        "phalanx_flows_created",
        "Flows the table started tracking.",
        stats.flows_created,
        false,
    )?;
    let mut fam = enc.encode_descriptor(
        "phalanx_flows_evicted",
        "Flows that left the table: idle past their timeout, or the longest idle when the table was full (flows.max_flows).",
        None,
        MetricType::Counter,
    )?;
    for (reason, v) in [
        ("idle", stats.flows_expired),
        ("table_full", stats.flows_evicted_full),
    ] {
        ConstCounter::new(v).encode(fam.encode_family(&[("reason", reason)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use phalanx_common::Direction;

    use super::*;
    use crate::flow::FlowConfig;
    use crate::metrics::groups::GroupConfig;
    use crate::synth::{self, TcpScenario};

    proptest::proptest! {
        #[test]
        fn buckets_match_a_plain_search(values in proptest::collection::vec(
            proptest::prop_oneof![
                0.0..2.0f64,
                proptest::sample::select(JITTER_BUCKETS.to_vec()),
                proptest::strategy::Just(f64::NAN),
            ],
            1..200,
        )) {
            let mut h = Hist::default();
            let mut want = [0u64; 17];
            for &v in &values {
                h.observe(&JITTER_BUCKETS, v);
                want[JITTER_BUCKETS.partition_point(|&b| b < v)] += 1;
            }
            proptest::prop_assert_eq!(h.counts, want);
        }
    }

    fn run(records: &[PacketMeta], cfg: &MetricsConfig) -> (FlowMetrics, crate::flow::FlowTable) {
        let mut m = FlowMetrics::new(cfg);
        let mut t = crate::flow::FlowTable::new(FlowConfig::default());
        t.keep_finished(true);
        for r in records {
            t.ingest_observed(r, &mut m);
        }
        (m, t)
    }

    fn total(m: &FlowMetrics, f: impl Fn(&Series) -> u64) -> u64 {
        m.series.iter().map(f).sum()
    }

    /// The answer and pause histograms hold the flow's `latency` figures:
    /// the client of `internet/cs_latency3` waits 1.345 s before asking.
    #[test]
    fn latency_histograms_hold_the_flows_split() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/pcaps/internet/cs_latency3.pcapng");
        let records: Vec<PacketMeta> = crate::capture::file::open(&path)
            .expect("vendored capture")
            .map(|r| r.expect("intact"))
            .collect();
        let (m, mut t) = run(&records, &MetricsConfig::default());
        let l = t.report_all().flows[0].latency.expect("TCP");
        let one = |h: &Hist| (h.count, (h.sum * 1e6).round() / 1e3);
        let s = &m.series[0];
        assert_eq!(
            one(&s.server_response[0]),
            (1, l.server_response_ms.expect("answer"))
        );
        assert_eq!(
            one(&s.client_think[0]),
            (1, l.client_think_ms.expect("pause"))
        );
        assert_eq!(l.client_think_ms, Some(1345.023));
    }

    /// The exported counters are the sums of the engine's per-flow figures,
    /// which the generator's truth pins down.
    #[test]
    fn series_add_up_to_the_generated_truth() {
        let g = synth::many_flows(&synth::ManyFlows {
            flows: 300,
            packets: 60_000,
            loss: 0.02,
            seed: 11,
            ..Default::default()
        });
        let (m, mut t) = run(&g.records, &MetricsConfig::default());
        let sum = |f: fn(&synth::FlowTruth) -> u64| g.truth.iter().map(f).sum::<u64>();
        assert_eq!(total(&m, |s| s.packets.iter().sum()), sum(|t| t.packets));
        assert_eq!(total(&m, |s| s.bytes.iter().sum()), sum(|t| t.bytes));
        let retrans = sum(|t| u64::from(t.retransmissions));
        assert!(retrans > 100, "the mix has losses ({retrans})");
        assert_eq!(total(&m, |s| s.retransmissions), retrans);
        assert_eq!(total(&m, |s| s.dup_acks), sum(|t| u64::from(t.dup_acks)));
        assert_eq!(
            total(&m, |s| s.out_of_order),
            sum(|t| u64::from(t.out_of_order))
        );
        // Flows that left the table (closed, idle) still count.
        let mut flows = t.snapshot();
        flows.extend(t.take_finished());
        assert_eq!(flows.len(), 300);
        let samples: u64 = flows.iter().map(|f| f.rtt.samples).sum();
        assert!(samples > 1000);
        assert_eq!(total(&m, |s| s.rtt.iter().map(|h| h.count).sum()), samples);
        // One group ("all") labelled by the service port: 80 only here.
        let services: std::collections::BTreeSet<_> = m
            .grouper
            .labels()
            .iter()
            .map(|l| l.service.clone())
            .collect();
        assert!(m.grouper.labels().iter().all(|l| l.group == "all"));
        assert_eq!(services.len(), m.grouper.labels().len());
    }

    fn conversation(client: [u8; 4], cport: u16, sport: u16, start_ns: u64) -> TcpScenario {
        TcpScenario {
            client: (IpAddr::from(client), cport),
            server: (IpAddr::from([10, 9, 0, 2]), sport),
            start_ns,
            segments: 20,
            drop_before: vec![5],
            ..TcpScenario::default()
        }
    }

    /// Groups, labels, the series budget and its overflow series; `rx`/`tx`
    /// from the records' hook direction, RTT samples split by whose
    /// packets were probed.
    #[test]
    fn groups_label_and_budget_overflow() {
        let convs = [
            conversation([10, 1, 1, 5], 40001, 80, 1_000_000_000),
            conversation([10, 1, 1, 6], 40002, 80, 2_000_000_000),
            conversation([10, 2, 2, 5], 40003, 443, 3_000_000_000),
            conversation([10, 3, 3, 5], 40004, 8443, 4_000_000_000),
            conversation([10, 4, 4, 5], 40005, 9000, 5_000_000_000),
        ];
        let mut records = Vec::new();
        let mut truths = Vec::new();
        for sc in &convs {
            let g = synth::tcp_conversation(sc);
            // The daemon runs on the client: its packets leave (egress).
            for mut r in g.records {
                r.direction = if r.sport == sc.client.1 {
                    Direction::Egress as u8
                } else {
                    Direction::Ingress as u8
                };
                records.push(r);
            }
            truths.extend(g.truth);
        }
        records.sort_by_key(|r| r.ts_ns);
        let cfg = MetricsConfig {
            series_budget: 2,
            groups: vec![GroupConfig {
                name: "web".into(),
                ports: vec![80, 443, 8443],
                remote: vec!["10.9.0.0/16".parse().expect("net")],
                label_service: true,
                remote_prefix_v4: 24,
                remote_prefix_v6: 64,
            }],
        };
        let (m, _) = run(&records, &cfg);
        let got: Vec<(String, String, String)> = m
            .grouper
            .labels()
            .iter()
            .map(|l| (l.group.clone(), l.service.clone(), l.remote.clone()))
            .collect();
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            got,
            vec![
                s("web", "80/tcp", "10.9.0.0/24"),
                s("web", "443/tcp", "10.9.0.0/24"),
                s("web", "other", "other"),
                s("other", "other", "other"),
            ],
            "the remote is the server (the daemon is on the clients)"
        );
        assert_eq!(m.grouper.overflowed_flows, 2);
        let packets = |i: usize| m.series[i].packets.iter().sum::<u64>();
        assert_eq!(packets(0), truths[0].packets + truths[1].packets);
        assert_eq!(packets(1), truths[2].packets);
        assert_eq!(packets(2), truths[3].packets);
        assert_eq!(packets(3), truths[4].packets);
        // Uploads: tx is the client's data, rx the server's ACKs.
        let tx: u64 = truths[..2].iter().map(|t| t.sender_packets).sum();
        assert_eq!(m.series[0].packets[1], tx);
        assert_eq!(m.series[0].retransmissions, 2);
        // tx samples time the client's packets to the server and back
        // (server_rtt 8 ms), rx samples the server's to the client (2 ms).
        let mean = |h: &Hist| h.sum / h.count as f64;
        let (rx, txh) = (&m.series[1].rtt[0], &m.series[1].rtt[1]);
        // The client's FIN, answered by the server's own FIN, is no sample.
        assert!(
            txh.count >= 2 && rx.count >= 2,
            "tx {} rx {}",
            txh.count,
            rx.count
        );
        assert!((mean(txh) - 0.008).abs() < 0.0005, "tx {}", mean(txh));
        assert!((mean(rx) - 0.002).abs() < 0.0005, "rx {}", mean(rx));
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Hist::default();
        for v in [0.0001, 0.00011, 20.0] {
            h.observe(&RTT_BUCKETS, v);
        }
        let b = h.buckets(&RTT_BUCKETS);
        assert_eq!(b[0], (0.0001, 1));
        assert_eq!(b[1], (0.00025, 1));
        assert_eq!(b[16], (f64::MAX, 1));
        assert_eq!(h.count, 3);
    }
}
