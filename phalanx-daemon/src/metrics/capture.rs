//! Prometheus metrics of the capture path.
//!
//! Kernel counters live in a per-CPU map; they are read and summed at scrape
//! time, so the exported values are exactly the map's, with no second copy.

use std::sync::{atomic::Ordering, Arc, Mutex};

use phalanx_common::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
    registry::Registry,
};

use crate::capture::{ebpf::Capture, ring::RingStats};

/// Name and help of each kernel counter, in `Counter::ALL` order.
const KERNEL_COUNTERS: [(&str, &str); Counter::ALL.len()] = [
    (
        "phalanx_kernel_packets_seen",
        "Packets the kernel programs ran on.",
    ),
    (
        "phalanx_kernel_packets_parsed",
        "Packets parsed into a record (IPv4/IPv6 found).",
    ),
    (
        "phalanx_kernel_packets_matched",
        "Parsed packets inside the capture scope (filters).",
    ),
    (
        "phalanx_kernel_records_submitted",
        "Records the kernel tried to put into the ring buffer.",
    ),
    (
        "phalanx_kernel_ring_full_drops",
        "Records lost because the ring buffer was full.",
    ),
    (
        "phalanx_kernel_parse_errors",
        "Packets with truncated or inconsistent headers.",
    ),
    (
        "phalanx_kernel_packets_not_ip",
        "Packets that were not IPv4/IPv6 (ARP, LLDP, ...).",
    ),
    (
        "phalanx_kernel_packets_forwarded",
        "Forwarded packets leaving a watched interface, already recorded on arrival at a watched interface (not recorded twice).",
    ),
];

/// Scrape-time collector over the kernel counters and the consumer's counters.
#[derive(Debug)]
pub struct CaptureCollector {
    capture: Arc<Mutex<Capture>>,
    ring: Arc<RingStats>,
}

impl CaptureCollector {
    /// Registers the capture metrics in `registry`.
    pub fn register(registry: &mut Registry, capture: Arc<Mutex<Capture>>, ring: Arc<RingStats>) {
        registry.register_collector(Box::new(CaptureCollector { capture, ring }));
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

impl Collector for CaptureCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = match self.capture.lock() {
            Ok(c) => c.counters().ok(),
            Err(_) => None,
        };
        if let Some(values) = values {
            for ((name, help), v) in KERNEL_COUNTERS.iter().zip(values) {
                counter(&mut enc, name, help, v)?;
            }
        }
        counter(
            &mut enc,
            "phalanx_capture_records_decoded",
            "Records the daemon read from the ring buffer.",
            self.ring.decoded.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "phalanx_capture_records_malformed",
            "Ring-buffer entries too short to be a record.",
            self.ring.malformed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "phalanx_capture_backlog_dropped",
            "Records dropped because the flow engine fell behind the ring buffer.",
            self.ring.backlog_dropped.load(Ordering::Relaxed),
        )
    }
}
