//! What one record changed in its flow, for consumers that aggregate the
//! engine's figures over many flows (the Prometheus exporter).
//!
//! [`FlowTable::ingest_observed`](super::FlowTable::ingest_observed) takes a
//! mark of the flow's counters before the record is applied and hands the
//! difference to a [`FlowObserver`]. Counters only grow, so the deltas of a
//! flow add up exactly to its final figures, whether or not the flow later
//! leaves the table.

use phalanx_common::PacketMeta;

use super::state::Flow;

/// One new sample of a per-direction estimator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Side of the canonical key whose packets the sample is about (an RTT
    /// sample of side `d` measures vantage point -> receiver of `d`'s
    /// packets -> vantage point).
    pub side: usize,
    /// Value in seconds.
    pub seconds: f64,
}

/// The changes one record made to its flow.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Delta {
    /// Side of the canonical key that sent the record.
    pub side: usize,
    /// Packets (GSO records count their segments).
    pub packets: u64,
    /// Frame bytes.
    pub bytes: u64,
    /// New retransmissions.
    pub retransmissions: u64,
    /// New out-of-order segments (reordering).
    pub out_of_order: u64,
    /// New duplicate ACKs.
    pub dup_acks: u64,
    /// New zero-window episodes.
    pub zero_windows: u64,
    /// RTT sample completed by this record.
    pub rtt: Option<Sample>,
    /// RFC 3550 jitter estimate after it was updated by this record.
    pub jitter: Option<Sample>,
    /// The server's answer time of an exchange this record completed
    /// (its first answer byte), seconds: as `latency.server_response_ms`,
    /// less the server side's round trip so far.
    pub server_response: Option<f64>,
    /// The client's pause before its first request, completed by this
    /// record, seconds: as `latency.client_think_ms`.
    pub client_think: Option<f64>,
}

/// Receives the changes of every record applied through
/// [`FlowTable::ingest_observed`](super::FlowTable::ingest_observed).
pub trait FlowObserver {
    /// Whether the table computes deltas for this observer at all.
    const ENABLED: bool = true;

    /// `tag` is the flow's slot for the observer's own use (0 on a new
    /// flow); the observer may store a small id there, e.g. the flow's
    /// metric group, to classify each flow once.
    fn on_record(&mut self, flow: &Flow, tag: &mut u16, rec: &PacketMeta, delta: &Delta);
}

/// Counters of a flow at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Mark {
    packets: [u64; 2],
    bytes: [u64; 2],
    retrans: u64,
    out_of_order: u64,
    dup_acks: u64,
    zero_windows: u64,
    rtt_samples: [u64; 2],
    jitter_updates: [u64; 2],
    responses: u64,
    paused: bool,
}

impl Mark {
    /// The flow's counters now.
    #[inline]
    pub(super) fn of(f: &Flow) -> Self {
        let mut m = Mark {
            packets: [f.dir[0].packets, f.dir[1].packets],
            bytes: [f.dir[0].bytes, f.dir[1].bytes],
            dup_acks: u64::from(f.dir[0].dup_acks) + u64::from(f.dir[1].dup_acks),
            ..Mark::default()
        };
        if let Some(ex) = f.extra.as_deref() {
            for (d, x) in ex.dir.iter().enumerate() {
                m.retrans += u64::from(x.retrans);
                m.out_of_order += u64::from(x.out_of_order);
                m.zero_windows += u64::from(x.zero_windows);
                m.rtt_samples[d] = x.rtt.count();
                m.jitter_updates[d] = x.rtt_jitter.count() + x.arrival.jitter.count();
            }
            m.responses = ex.exchanges.response_us.count();
            m.paused = ex.exchanges.first_pause_us.is_some();
        }
        m
    }

    /// What changed from `self` to the flow's state now; `side` sent the
    /// record.
    #[inline]
    pub(super) fn delta(&self, f: &Flow, side: usize) -> Delta {
        let now = Mark::of(f);
        let mut d = Delta {
            side,
            packets: now.packets[side] - self.packets[side],
            bytes: now.bytes[side] - self.bytes[side],
            retransmissions: now.retrans.saturating_sub(self.retrans),
            out_of_order: now.out_of_order.saturating_sub(self.out_of_order),
            dup_acks: now.dup_acks.saturating_sub(self.dup_acks),
            zero_windows: now.zero_windows.saturating_sub(self.zero_windows),
            rtt: None,
            jitter: None,
            server_response: None,
            client_think: None,
        };
        let Some(ex) = f.extra.as_deref() else {
            return d;
        };
        // The client's packets time the server side of the path, and the
        // other way round.
        let client = usize::from(f.initiator & 1);
        let less_path = |us: u32, side: usize| {
            let path = ex.dir[side].rtt.min_us().unwrap_or(0);
            f64::from(us.saturating_sub(path)) / 1e6
        };
        if now.responses > self.responses {
            d.server_response = Some(less_path(ex.exchanges.last_response_us, client));
        }
        if now.paused && !self.paused {
            let pause = ex.exchanges.first_pause_us.unwrap_or(0);
            d.client_think = Some(less_path(pause, client ^ 1));
        }
        for (s, x) in ex.dir.iter().enumerate() {
            if now.rtt_samples[s] > self.rtt_samples[s] {
                d.rtt = Some(Sample {
                    side: s,
                    seconds: f64::from(x.last_rtt_us) / 1e6,
                });
            }
            if now.jitter_updates[s] > self.jitter_updates[s] {
                let j = if x.rtt_jitter.count() > 0 {
                    x.rtt_jitter
                } else {
                    x.arrival.jitter
                };
                if let Some(seconds) = j.seconds() {
                    d.jitter = Some(Sample { side: s, seconds });
                }
            }
        }
        d
    }
}
