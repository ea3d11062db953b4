//! Flow engine benchmarks, from memory (no capture file, no kernel):
//!
//! - `engine/many_flows_mix`: records per second through [`FlowTable`] on
//!   the synthetic mix (10,000 conversations, ~1M records, 1% loss, TCP
//!   timestamps, a quarter IPv6). Goal: at least 5 M records/s per core.
//! - `engine/history_record`: records per second through the daemon's
//!   per-flow packet history (incident evidence), which sees every record
//!   the flow table sees.
//! - `engine/new_idle_flows`: records per second when every record opens a
//!   flow (a SYN scan), and the memory one idle tracked flow costs with one
//!   million of them in the table (printed; goal: at most 256 bytes).
//! - `daemon/*`: records per second through the live daemon's whole flow
//!   stage with its defaults (history, flow table, KPI metrics, stitch
//!   history), in the ring consumer's batches: one UDP flow of 64-byte
//!   datagrams (the live bench's small-packet load), one bulk TCP transfer
//!   with timestamps (data segments and their ACKs) and the synthetic mix.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use phalanx_common::{ipproto, tcp_flags, PacketMeta, RecordKind};
use phalanx_daemon::flow::history::{FlowHistory, HistoryBounds};
use phalanx_daemon::flow::{FlowConfig, FlowTable};
use phalanx_daemon::synth::{self, ManyFlows, TcpScenario};
use phalanx_daemon::{
    alerting::service as incidents, capture::ring::BATCH, config::Config, pipeline::Pipeline,
    stitch::live::LiveStitch,
};
use prometheus_client::registry::Registry;
use std::sync::Arc;

const IDLE_FLOWS: u32 = 1_000_000;

fn mix(c: &mut Criterion) {
    let g = synth::many_flows(&ManyFlows::default());
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.throughput(Throughput::Elements(g.records.len() as u64));
    group.bench_function("many_flows_mix", |b| {
        b.iter_batched(
            || FlowTable::new(FlowConfig::default()),
            |mut t| {
                for r in &g.records {
                    t.ingest(black_box(r));
                }
                // Returned, so dropping the table is not timed.
                t
            },
            BatchSize::PerIteration,
        );
    });
    // The daemon's defaults: 64 packets of each of 4,096 flows.
    let bounds = HistoryBounds {
        per_flow: 64,
        max_flows: 4096,
    };
    group.bench_function("history_record", |b| {
        b.iter_batched(
            || FlowHistory::new(bounds),
            |mut h| {
                for r in &g.records {
                    h.record(black_box(r));
                }
                h
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// The daemon's flow stage as `phalanx run` builds it from `cfg`.
fn stage(cfg: &Config) -> Pipeline {
    let live = LiveStitch::new(
        &cfg.stitch,
        cfg.history.peers(),
        "bench",
        &mut Registry::default(),
    )
    .expect("default stitch config");
    Pipeline::new(
        cfg,
        incidents::history(cfg.history.evidence()),
        Arc::new(live),
    )
}

/// `n` 64-byte datagrams of one IPv4 UDP flow, received 5 us apart.
fn udp_datagrams(n: u32) -> Vec<PacketMeta> {
    let mut m = PacketMeta::zeroed();
    m.kind = RecordKind::Udp as u8;
    m.ip_version = 4;
    m.l4_proto = ipproto::UDP;
    m.src_addr[..4].copy_from_slice(&[10, 77, 0, 1]);
    m.dst_addr[..4].copy_from_slice(&[10, 77, 0, 2]);
    m.sport = 40_000;
    m.dport = 5201;
    m.ttl = 64;
    m.payload_len = 64;
    m.wire_len = 106;
    m.segs = 1;
    (0..n)
        .map(|i| {
            let mut r = m;
            r.ts_ns = 1_700_000_000_000_000_000 + u64::from(i) * 5_000;
            r
        })
        .collect()
}

fn daemon(c: &mut Criterion) {
    let cfg = Config::default();
    let bulk = synth::tcp_conversation(&TcpScenario {
        segments: 500_000,
        window: 40,
        gap_ns: 2_000,
        sack: false,
        ..TcpScenario::default()
    })
    .records;
    let loads = [
        ("udp_one_flow", udp_datagrams(1_000_000)),
        ("tcp_bulk_one_flow", bulk),
        (
            "many_flows_mix",
            synth::many_flows(&ManyFlows::default()).records,
        ),
    ];
    let mut group = c.benchmark_group("daemon");
    group.sample_size(10);
    for (name, recs) in &loads {
        group.throughput(Throughput::Elements(recs.len() as u64));
        group.bench_function(*name, |b| {
            b.iter_batched(
                || stage(&cfg),
                |s| {
                    for batch in recs.chunks(BATCH) {
                        s.ingest(black_box(batch)).expect("not poisoned");
                    }
                    s
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// One SYN per flow, each from its own IPv4 address: nothing but table cost.
fn syns(n: u32) -> Vec<PacketMeta> {
    (0..n)
        .map(|i| {
            let mut m = PacketMeta::zeroed();
            m.ts_ns = u64::from(i);
            m.kind = RecordKind::Tcp as u8;
            m.ip_version = 4;
            m.l4_proto = ipproto::TCP;
            m.src_addr[..4].copy_from_slice(&(0x0a00_0000 | i).to_be_bytes());
            m.dst_addr[..4].copy_from_slice(&[192, 0, 2, 1]);
            m.sport = 40_000;
            m.dport = 443;
            m.tcp_flags = tcp_flags::SYN;
            m.window = 65_535;
            m.wire_len = 74;
            m
        })
        .collect()
}

fn idle(c: &mut Criterion) {
    let recs = syns(IDLE_FLOWS);
    let cfg = FlowConfig {
        max_flows: IDLE_FLOWS as usize,
        ..FlowConfig::default()
    };
    let mut t = FlowTable::new(cfg.clone());
    for r in &recs {
        t.ingest(r);
    }
    assert_eq!(t.len(), IDLE_FLOWS as usize, "every SYN is a tracked flow");
    println!(
        "engine/idle_flow_memory: {:.1} bytes per idle flow at {IDLE_FLOWS} flows \
         (Flow {} bytes; goal <= 256)",
        t.memory_bytes() as f64 / f64::from(IDLE_FLOWS),
        std::mem::size_of::<phalanx_daemon::flow::Flow>(),
    );
    drop(t);

    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(IDLE_FLOWS)));
    group.bench_function("new_idle_flows", |b| {
        b.iter_batched(
            || FlowTable::new(cfg.clone()),
            |mut t| {
                for r in &recs {
                    t.ingest(black_box(r));
                }
                t
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, mix, daemon, idle);
criterion_main!(benches);
