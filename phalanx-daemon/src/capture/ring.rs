//! Ring-buffer consumer: decodes records and hands them on, never blocking.
//!
//! The kernel wakes us when the ring is a sixteenth full; a timer drains
//! whatever is there in between (every record reaches the flow table
//! within `DRAIN_INTERVAL`). Records go to the flow task in batches through a
//! bounded channel; when that channel is full the batch is dropped and
//! counted rather than stalling the ring (which would make the kernel drop
//! silently-er, and unfairly). The flow task hands spent batches back, so
//! steady state allocates nothing.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use phalanx_common::PacketMeta;
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};
use tracing::warn;

/// How often the consumer drains without a wake-up. Each drain costs a
/// thread wake-up; at 5 ms they were most of an idle daemon's CPU.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// Records per batch handed to the flow task.
pub const BATCH: usize = 1024;

/// Consumer-side counters, shared with the metrics exporter.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Records decoded from the ring buffer.
    pub decoded: AtomicU64,
    /// Ring entries too short to be a record.
    pub malformed: AtomicU64,
    /// Records dropped because the flow task fell behind.
    pub backlog_dropped: AtomicU64,
}

/// Runs until `batches` is closed. Each batch is a `Vec<PacketMeta>`;
/// emptied batches coming back on `spent` are reused.
/// `ktime_offset_ns` turns kernel CLOCK_MONOTONIC times into wall-clock ns.
pub async fn consume(
    ring: RingBuf<MapData>,
    batches: mpsc::Sender<Vec<PacketMeta>>,
    mut spent: mpsc::Receiver<Vec<PacketMeta>>,
    stats: Arc<RingStats>,
    ktime_offset_ns: i64,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd and keeps it open and unchanged
    // for as long as the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Batcher {
        batch: Vec::with_capacity(BATCH),
        tx: &batches,
        spent: &mut spent,
        stats: &stats,
    };
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut out, ktime_offset_ns)?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain(fd.get_mut(), &mut out, ktime_offset_ns)?;
            }
            _ = batches.closed() => return Ok(()),
        }
    }
}

/// The batch being filled and where it goes.
struct Batcher<'a> {
    batch: Vec<PacketMeta>,
    tx: &'a mpsc::Sender<Vec<PacketMeta>>,
    spent: &'a mut mpsc::Receiver<Vec<PacketMeta>>,
    stats: &'a RingStats,
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Batcher<'_>, offset: i64) -> std::io::Result<()> {
    while let Some(item) = ring.next() {
        match PacketMeta::from_bytes(&item) {
            Some(mut m) => {
                m.ts_ns = m.ts_ns.wrapping_add_signed(offset);
                out.batch.push(m);
            }
            None => {
                out.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if out.batch.len() >= BATCH {
            out.flush()?;
        }
    }
    out.flush()
}

impl Batcher<'_> {
    fn flush(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // Counted per batch: an atomic add per record showed in profiles.
        self.stats
            .decoded
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        let next = match self.spent.try_recv() {
            Ok(b) if b.is_empty() => b,
            _ => Vec::with_capacity(BATCH),
        };
        let full = std::mem::replace(&mut self.batch, next);
        match self.tx.try_send(full) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(b)) => {
                let n = b.len() as u64;
                let before = self.stats.backlog_dropped.fetch_add(n, Ordering::Relaxed);
                if before == 0 {
                    warn!("flow task is behind; dropping records (counted in phalanx_capture_backlog_dropped_total)");
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "flow task stopped",
            )),
        }
    }
}

/// Offset from CLOCK_MONOTONIC (bpf_ktime_get_ns) to CLOCK_REALTIME, in ns.
pub fn ktime_offset_ns() -> i64 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-pointer; both clocks always exist on Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}
